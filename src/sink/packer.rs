//! Packing batches into `/bulkevents` requests.
//!
//! Greedy: a request takes batches in order until the next one would break the
//! 100-batch limit or make the body reach 256 KiB. A single batch is at most
//! 128 KiB (the mapper guarantees it), so every batch fits in some request.

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
        let full = self.current.batch_count > 0
            && (self.current.batch_count >= self.max_batches || grown > self.max_body_bytes);
        let done = if full { self.take() } else { None };
        let body = &mut self.current.body;
        if self.current.batch_count == 0 {
            body.clear();
            body.push(b'[');
        } else {
            body.pop();
            body.push(b',');
        }
        body.extend_from_slice(&batch.json);
        body.push(b']');
        self.current.batch_count += 1;
        self.current
            .source_request_ids
            .push(batch.source_request_id.clone());
        self.current.last_row = self.current.last_row.max(batch.row);
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
    fn nothing_pushed_means_no_request() {
        assert_eq!(RequestPacker::default().take(), None);
    }
}
