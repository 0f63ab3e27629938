//! The records the pre-pass stages for the diff, one per run row: a keyed
//! row goes to the sort by key (its key hash, row number and payload hash),
//! a row without a key straight to the decisions (it is rejected whatever
//! the snapshot says). Fixed-size, so they sort in bounded memory
//! ([`super::sort`]).

use sha2::{Digest, Sha256};

use crate::mapping::convert::{Cell, ColumnReader};

use super::sort::Record;
use super::{KEY_HASH_BYTES, PAYLOAD_HASH_BYTES};

/// A key hash.
pub(super) type KeyHash = [u8; KEY_HASH_BYTES];
/// A payload hash.
pub(super) type PayloadHash = [u8; PAYLOAD_HASH_BYTES];

/// The hash of a row's key values, `None` when one is NULL or empty.
/// `text` is scratch space for values that are not text already.
pub(super) fn key_hash(
    readers: &[ColumnReader<'_>],
    row: usize,
    text: &mut String,
) -> Option<KeyHash> {
    let mut hasher = Sha256::new();
    for reader in readers {
        let value = match reader.cell(row) {
            Cell::Value(v) => v,
            Cell::Null | Cell::Unrepresentable(_) => return None,
        };
        let text: &str = if let crate::mapping::convert::Value::Str(s) = &value {
            s
        } else {
            *text = value.to_text();
            text
        };
        if text.trim().is_empty() {
            return None;
        }
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());
    }
    let mut key = [0u8; KEY_HASH_BYTES];
    key.copy_from_slice(&hasher.finalize()[..KEY_HASH_BYTES]);
    Some(key)
}

/// A row with a key, as the sort by key sees it. Ordered by key, then row:
/// the rows of a repeated key come out adjacent, in row order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Keyed {
    pub(super) key: KeyHash,
    pub(super) row: u64,
    /// The hash of its batches' content ids (zeros when not mapped).
    pub(super) payload: PayloadHash,
    /// Mapped; `false`: rejected by mapping (its key still counts, so it
    /// is neither "gone" nor alone when another row has the same key).
    pub(super) mapped: bool,
}

impl Record for Keyed {
    const SIZE: usize = KEY_HASH_BYTES + 8 + PAYLOAD_HASH_BYTES + 1;

    fn encode(&self, out: &mut [u8]) {
        let (key, rest) = out.split_at_mut(KEY_HASH_BYTES);
        key.copy_from_slice(&self.key);
        let (row, rest) = rest.split_at_mut(8);
        // Big-endian keeps the byte order of the encoding the sort order
        // (not relied on, but it makes run files readable).
        row.copy_from_slice(&self.row.to_be_bytes());
        let (payload, rest) = rest.split_at_mut(PAYLOAD_HASH_BYTES);
        payload.copy_from_slice(&self.payload);
        rest[0] = u8::from(self.mapped);
    }

    fn decode(bytes: &[u8]) -> Self {
        let mut key = [0u8; KEY_HASH_BYTES];
        key.copy_from_slice(&bytes[..KEY_HASH_BYTES]);
        let mut row = [0u8; 8];
        row.copy_from_slice(&bytes[KEY_HASH_BYTES..KEY_HASH_BYTES + 8]);
        let at = KEY_HASH_BYTES + 8;
        let mut payload = [0u8; PAYLOAD_HASH_BYTES];
        payload.copy_from_slice(&bytes[at..at + PAYLOAD_HASH_BYTES]);
        Self {
            key,
            row: u64::from_be_bytes(row),
            payload,
            mapped: bytes[at + PAYLOAD_HASH_BYTES] != 0,
        }
    }
}

/// The first [`PAYLOAD_HASH_BYTES`] of a row's payload digest.
pub(super) fn payload_hash(digest: &[u8]) -> PayloadHash {
    let mut payload = [0u8; PAYLOAD_HASH_BYTES];
    payload.copy_from_slice(&digest[..PAYLOAD_HASH_BYTES]);
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyed_record_round_trips_and_sorts_by_key_then_row() {
        let a = Keyed {
            key: [7; KEY_HASH_BYTES],
            row: 1 << 40,
            payload: [9; PAYLOAD_HASH_BYTES],
            mapped: true,
        };
        let mut bytes = vec![0u8; Keyed::SIZE];
        a.encode(&mut bytes);
        assert_eq!(Keyed::decode(&bytes), a);
        let b = Keyed {
            row: 3,
            mapped: false,
            ..a
        };
        b.encode(&mut bytes);
        assert_eq!(Keyed::decode(&bytes), b);
        assert!(b < a, "same key: the earlier row first");
        let c = Keyed {
            key: [6; KEY_HASH_BYTES],
            row: u64::MAX,
            ..a
        };
        assert!(c < b, "the key decides first");
    }
}
