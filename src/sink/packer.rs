//! Packing batches into `/bulkevents` requests.
//!
//! Greedy: a request takes batches in order until the next one would break the
//! 100-batch limit or make the body reach 256 KiB. A single batch is at most
//! 128 KiB (the mapper guarantees it), so every batch fits in some request.
//!
//! A request remembers where each batch sits in its body, so delivery can split
//! it (413) or bisect it (400) into smaller requests without mapping rows again.

use std::ops::Range;

use crate::mapping::limits::{MAX_BATCHES_PER_REQUEST, MAX_REQUEST_BYTES};
use crate::mapping::EncodedBatch;

/// One request body: a JSON array of batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedRequest {
    /// The body bytes.
    pub body: Vec<u8>,
    /// Batches in it.
    pub batch_count: usize,
    /// Their `source_request_id`s, in order.
    pub source_request_ids: Vec<String>,
    /// Highest run row number among its batches.
    pub last_row: u64,
    /// Byte range of each batch's JSON within `body`, in order.
    pub spans: Vec<Range<usize>>,
    /// Run row number of each batch, in order.
    pub rows: Vec<u64>,
    /// Goes to `/v2/bulkevents/historical` (its batches are all historical).
    pub historical: bool,
}

impl PackedRequest {
    /// A request holding these batches, in this order.
    pub fn from_batches<'a>(batches: impl IntoIterator<Item = &'a EncodedBatch>) -> Self {
        let mut request = empty();
        for batch in batches {
            request.historical = batch.historical;
            request.append(&batch.json, &batch.source_request_id, batch.row);
        }
        request
    }

    /// The JSON of batch `index` (as sent).
    pub fn batch_json(&self, index: usize) -> &[u8] {
        &self.body[self.spans[index].clone()]
    }

    /// A new request holding the batches at `indices` (a sub-range), with its own body.
    pub fn slice(&self, indices: Range<usize>) -> Self {
        let mut request = empty();
        request.historical = self.historical;
        for i in indices {
            request.append(
                self.batch_json(i),
                &self.source_request_ids[i],
                self.rows[i],
            );
        }
        request
    }

    /// The two halves of a request of at least two batches (the first half is the
    /// smaller one when the count is odd), or `None` for a single batch.
    pub fn halves(&self) -> Option<(Self, Self)> {
        if self.batch_count < 2 {
            return None;
        }
        let mid = self.batch_count / 2;
        Some((self.slice(0..mid), self.slice(mid..self.batch_count)))
    }

    /// Appends one batch: the body is `[` + batches joined by `,` + `]`.
    fn append(&mut self, json: &[u8], source_request_id: &str, row: u64) {
        let body = &mut self.body;
        if self.batch_count == 0 {
            body.clear();
            body.push(b'[');
        } else {
            body.pop();
            body.push(b',');
        }
        let start = body.len();
        body.extend_from_slice(json);
        self.spans.push(start..body.len());
        body.push(b']');
        self.batch_count += 1;
        self.source_request_ids.push(source_request_id.to_owned());
        self.rows.push(row);
        self.last_row = self.last_row.max(row);
    }
}

/// Accumulates batches and hands out full requests.
#[derive(Debug)]
pub struct RequestPacker {
    max_batches: usize,
    max_body_bytes: usize,
    current: PackedRequest,
}

impl Default for RequestPacker {
    fn default() -> Self {
        Self::new(MAX_BATCHES_PER_REQUEST, MAX_REQUEST_BYTES - 1)
    }
}

impl RequestPacker {
    /// A packer with custom limits (`max_body_bytes` inclusive).
    pub fn new(max_batches: usize, max_body_bytes: usize) -> Self {
        Self {
            max_batches,
            max_body_bytes,
            current: empty(),
        }
    }

    /// Add a batch; returns the previous request when this batch did not fit in it.
    pub fn push(&mut self, batch: &EncodedBatch) -> Option<PackedRequest> {
        // Body = `[` + batches joined by `,` + `]`.
        let grown = self.current.body.len() + batch.json.len() + 1;
        // A request goes to one endpoint: historical batches never share one
        // with recent ones.
        let full = self.current.batch_count > 0
            && (self.current.batch_count >= self.max_batches
                || grown > self.max_body_bytes
                || self.current.historical != batch.historical);
        let done = if full { self.take() } else { None };
        self.current.historical = batch.historical;
        self.current
            .append(&batch.json, &batch.source_request_id, batch.row);
        done
    }

    /// The request being filled, if it holds any batch.
    pub fn take(&mut self) -> Option<PackedRequest> {
        if self.current.batch_count == 0 {
            return None;
        }
        Some(std::mem::replace(&mut self.current, empty()))
    }
}

fn empty() -> PackedRequest {
    PackedRequest {
        body: b"[]".to_vec(),
        batch_count: 0,
        source_request_ids: Vec::new(),
        last_row: 0,
        spans: Vec::new(),
        rows: Vec::new(),
        historical: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(row: u64, size: usize) -> EncodedBatch {
        // A valid JSON object of exactly `size` bytes.
        let pad = "x".repeat(size - r#"{"p":""}"#.len());
        EncodedBatch {
            row,
            part: 0,
            source_request_id: format!("id{row}"),
            json: format!(r#"{{"p":"{pad}"}}"#).into_bytes(),
            historical: false,
        }
    }

    fn pack(batches: &[EncodedBatch], packer: &mut RequestPacker) -> Vec<PackedRequest> {
        let mut out: Vec<_> = batches.iter().filter_map(|b| packer.push(b)).collect();
        out.extend(packer.take());
        out
    }

    #[test]
    fn at_most_100_batches_per_request() {
        let batches: Vec<_> = (1..=250).map(|r| batch(r, 100)).collect();
        let requests = pack(&batches, &mut RequestPacker::default());
        let counts: Vec<_> = requests.iter().map(|r| r.batch_count).collect();
        assert_eq!(counts, vec![100, 100, 50]);
        for r in &requests {
            let v: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v.len(), r.batch_count);
        }
        assert_eq!(requests[2].last_row, 250);
    }

    #[test]
    fn bodies_stay_below_256_kib() {
        let batches: Vec<_> = (1..=10).map(|r| batch(r, 100_000)).collect();
        let requests = pack(&batches, &mut RequestPacker::default());
        assert!(requests.iter().all(|r| r.body.len() < MAX_REQUEST_BYTES));
        assert_eq!(requests.iter().map(|r| r.batch_count).sum::<usize>(), 10);
        assert_eq!(requests[0].batch_count, 2);
        // Two 128 KiB batches cannot share a request.
        let big: Vec<_> = (1..=3).map(|r| batch(r, 128 * 1024)).collect();
        let requests = pack(&big, &mut RequestPacker::default());
        assert_eq!(requests.len(), 3);
    }

    #[test]
    fn halves_and_slices_rebuild_exact_bodies() {
        let batches: Vec<_> = (1..=5).map(|r| batch(r, 20 + r as usize)).collect();
        let whole = PackedRequest::from_batches(&batches);
        for (i, b) in batches.iter().enumerate() {
            assert_eq!(whole.batch_json(i), b.json.as_slice());
        }
        let (a, b) = whole.halves().unwrap();
        assert_eq!(a, PackedRequest::from_batches(&batches[..2]));
        assert_eq!(b, PackedRequest::from_batches(&batches[2..]));
        assert_eq!(b.source_request_ids, ["id3", "id4", "id5"]);
        assert_eq!((a.last_row, b.last_row), (2, 5));
        let v: Vec<serde_json::Value> = serde_json::from_slice(&b.body).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(whole.slice(4..5).halves(), None);
        // The packer and from_batches agree.
        let mut packer = RequestPacker::default();
        assert_eq!(pack(&batches, &mut packer), vec![whole]);
    }

    #[test]
    fn historical_batches_never_share_a_request_with_recent_ones() {
        let mut batches: Vec<_> = (1..=4).map(|r| batch(r, 50)).collect();
        batches[2].historical = true;
        batches[3].historical = true;
        let requests = pack(&batches, &mut RequestPacker::default());
        let shape: Vec<_> = requests
            .iter()
            .map(|r| (r.batch_count, r.historical))
            .collect();
        assert_eq!(shape, [(2, false), (2, true)]);
        assert!(requests[1].halves().unwrap().0.historical);
    }

    #[test]
    fn nothing_pushed_means_no_request() {
        assert_eq!(RequestPacker::default().take(), None);
    }
}
