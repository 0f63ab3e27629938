//! A row's parts written as JSON batches: split over the attribute and size
//! limits, each part stamped with its `source_request_id`.

use std::io::Write as _;

use sha2::{Digest, Sha256};

use crate::mapping::identity::DeviceIdType;
use crate::mapping::json::{write_str, write_value};
use crate::mapping::limits::{self, reason};

use super::{EncodedBatch, MapStats, Mapper, RejectReason, RowParts, ID_HEX_LEN, ID_MEMBER_BYTES};

impl Mapper {
    /// Write the row as one or more batches. `scratch` is reused from row to row
    /// so a row costs only the allocations of the batches it returns.
    pub(super) fn encode(
        &self,
        parts: &RowParts<'_>,
        row: u64,
        salt: Option<&str>,
        stats: &mut MapStats,
        scratch: &mut Scratch,
    ) -> Result<Vec<EncodedBatch>, (RejectReason, String)> {
        let Scratch {
            head,
            first,
            members,
        } = scratch;
        // Members every part carries: environment, mpid, user identities.
        head.clear();
        head.extend_from_slice(b"\"environment\":");
        write_str(head, self.environment.as_str());
        if let Some(mpid) = parts.mpid {
            // `write!` into a Vec cannot fail.
            let _ = write!(head, ",\"mpid\":{mpid}");
        }
        if !parts.identities.is_empty() {
            head.extend_from_slice(b",\"user_identities\":{");
            write_members(
                head,
                parts
                    .identities
                    .iter()
                    .map(|(t, v)| (t.as_str(), v.as_str())),
            );
            head.push(b'}');
        }
        head.extend_from_slice(&self.context);
        // Members only the first part carries: device ids and deletions.
        first.clear();
        if parts
            .devices
            .iter()
            .any(|(t, _)| *t != DeviceIdType::MpDeviceId)
        {
            first.extend_from_slice(b",\"device_info\":{");
            write_members(
                first,
                parts
                    .devices
                    .iter()
                    .filter(|(t, _)| *t != DeviceIdType::MpDeviceId)
                    .map(|(t, v)| (t.as_str(), v.as_str())),
            );
            first.push(b'}');
        }
        if let Some((_, id)) = parts
            .devices
            .iter()
            .find(|(t, _)| *t == DeviceIdType::MpDeviceId)
        {
            first.extend_from_slice(b",\"mp_deviceid\":");
            write_str(first, id);
        }
        if !parts.deleted.is_empty() {
            first.extend_from_slice(b",\"deleted_user_attributes\":[");
            for (i, name) in parts.deleted.iter().enumerate() {
                if i > 0 {
                    first.push(b',');
                }
                write_str(first, name);
            }
            first.push(b']');
        }

        const ATTRS_OPEN: &[u8] = b",\"user_attributes\":{";
        // `{` + head + `}` + the id member + an empty attribute object.
        let fixed = 2 + head.len() + ID_MEMBER_BYTES + ATTRS_OPEN.len() + 1;
        if fixed + first.len() > limits::MAX_BATCH_BYTES {
            return Err((
                RejectReason::BatchTooLarge,
                format!(
                    "identities and device ids alone take {} bytes; a batch may take {}",
                    fixed + first.len(),
                    limits::MAX_BATCH_BYTES
                ),
            ));
        }

        // Greedy split: fill each part up to 100 attributes and 128 KiB. Every
        // part's members are one range of `members`, written in place.
        members.clear();
        let mut part_ranges: Vec<(usize, usize)> = vec![(0, 0)];
        let mut part_counts = vec![0usize];
        for (name, value) in &parts.attributes {
            let start = members.len();
            write_str(members, name);
            members.push(b':');
            write_value(members, value);
            let member_len = members.len() - start;
            if fixed + member_len > limits::MAX_BATCH_BYTES {
                members.truncate(start);
                stats.drop_value(reason::ATTRIBUTE_TOO_LARGE);
                continue;
            }
            let current = part_ranges.len() - 1;
            let first_extra = if current == 0 { first.len() } else { 0 };
            let used = fixed + first_extra + (start - part_ranges[current].0);
            let fits = part_counts[current] < limits::MAX_ATTRIBUTES_PER_BATCH
                && used + 1 + member_len <= limits::MAX_BATCH_BYTES;
            if !fits {
                part_ranges.push((start, start));
                part_counts.push(0);
            } else if part_counts[current] > 0 {
                members.insert(start, b',');
            }
            let current = part_ranges.len() - 1;
            part_ranges[current].1 = members.len();
            part_counts[current] += 1;
        }

        let mut batches = Vec::with_capacity(part_ranges.len());
        for (part, &(from, to)) in part_ranges.iter().enumerate() {
            let attrs = &members[from..to];
            let first = if part == 0 { &first[..] } else { &[][..] };
            // The id hashes the batch as it would read without it:
            // `{` head first [attributes] `}`, fed to the hash piece by piece.
            let mut hasher = id_hasher(&self.pipeline_id);
            if let Some(salt) = salt {
                // After a 0xff byte, which no JSON text starts with: an id
                // with an iterator value never equals one without.
                hasher.update([0xffu8]);
                hasher.update((salt.len() as u64).to_le_bytes());
                hasher.update(salt.as_bytes());
            }
            hasher.update(b"{");
            hasher.update(&head[..]);
            hasher.update(first);
            if !attrs.is_empty() {
                hasher.update(ATTRS_OPEN);
                hasher.update(attrs);
                hasher.update(b"}");
            }
            hasher.update(b"}");
            let id = id_hex(hasher);
            let mut json = Vec::with_capacity(
                ID_MEMBER_BYTES + 2 + head.len() + first.len() + ATTRS_OPEN.len() + attrs.len() + 2,
            );
            json.extend_from_slice(b"{\"source_request_id\":\"");
            json.extend_from_slice(id.as_bytes());
            json.extend_from_slice(b"\",");
            json.extend_from_slice(head);
            json.extend_from_slice(first);
            if !attrs.is_empty() {
                json.extend_from_slice(ATTRS_OPEN);
                json.extend_from_slice(attrs);
                json.push(b'}');
            }
            json.push(b'}');
            batches.push(EncodedBatch {
                row,
                part: u32::try_from(part).unwrap_or(u32::MAX),
                source_request_id: id,
                json,
                historical: false,
            });
        }
        Ok(batches)
    }
}

/// Buffers [`Mapper::encode`] reuses from row to row.
#[derive(Default)]
pub(super) struct Scratch {
    /// Members every part carries.
    head: Vec<u8>,
    /// Members only the first part carries.
    first: Vec<u8>,
    /// Every part's attribute members, one range per part.
    members: Vec<u8>,
}

pub(crate) fn write_members<'a>(
    out: &mut Vec<u8>,
    members: impl Iterator<Item = (&'a str, &'a str)>,
) {
    for (i, (key, value)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, key);
        out.push(b':');
        write_str(out, value);
    }
}

/// The deterministic id of a batch: the first 128 bits of
/// `sha256(pipeline_id ‖ 0x00 ‖ batch JSON without the id)`, in hex. The same
/// pipeline and the same row content always give the same id. (Incremental
/// pipelines also hash the row's iterator value, and `[diff]` pipelines
/// replace the id: see the README's `source_request_id` rule.)
pub fn source_request_id(pipeline_id: &str, body: &[u8]) -> String {
    let mut hasher = id_hasher(pipeline_id);
    hasher.update(body);
    id_hex(hasher)
}

/// The hash of [`source_request_id`] with the pipeline id fed in.
pub(crate) fn id_hasher(pipeline_id: &str) -> Sha256 {
    let mut hasher = Sha256::new();
    hasher.update(pipeline_id.as_bytes());
    hasher.update([0u8]);
    hasher
}

/// The first 128 bits of the hash, in hex.
pub(crate) fn id_hex(hasher: Sha256) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = hasher.finalize();
    // By hand rather than `hex::encode`, which collects the text char by char;
    // this runs once per batch.
    let mut out = String::with_capacity(ID_HEX_LEN);
    for byte in &digest[..ID_HEX_LEN / 2] {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}
