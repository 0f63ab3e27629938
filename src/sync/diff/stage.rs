//! Staging a chunk's rows for the diff: key hashes, payload hashes and (for
//! `unset_attributes`) addresses, packed so one statement writes a chunk.

use sha2::{Digest, Sha256};
use sqlx::SqliteConnection;

use crate::mapping::convert::{Cell, ColumnReader};

use super::address::Address;
use super::{state_error, KEY_HASH_BYTES, PAYLOAD_HASH_BYTES};
use crate::sync::SyncError;

/// The hash of a row's key values, `None` when one is NULL or empty.
/// `text` is scratch space for values that are not text already.
pub(super) fn key_hash(
    readers: &[ColumnReader<'_>],
    row: usize,
    text: &mut String,
) -> Option<[u8; 16]> {
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

/// One chunk's rows, packed so that a single statement stages them all:
/// fixed-size hashes in two blobs, one state letter per row, and (only with
/// `unset_attributes`) a JSON array of what unsetting needs. One statement
/// a chunk instead of many binds a row keeps sqlx out of the per-row cost.
pub(super) struct StagedChunk {
    /// Per row: `0` keyed, `1` rejected by mapping (key present), `2`
    /// missing key, `4` rejected by mapping without a key.
    codes: String,
    /// 16 bytes a row (zeros when it has no key).
    keys: Vec<u8>,
    /// 8 bytes a row (zeros when it has no payload).
    payloads: Vec<u8>,
    /// Per row `[address, attribute names]` or `null`; `None` unless the
    /// pipeline unsets attributes.
    extras: Option<Vec<serde_json::Value>>,
}

impl StagedChunk {
    pub(super) fn with_capacity(rows: usize, unset: bool) -> Self {
        Self {
            codes: String::with_capacity(rows),
            keys: Vec::with_capacity(rows * KEY_HASH_BYTES),
            payloads: Vec::with_capacity(rows * PAYLOAD_HASH_BYTES),
            extras: unset.then(|| Vec::with_capacity(rows)),
        }
    }

    /// The next row: its key hash, the hash of its batches' content ids
    /// (`None`: rejected by mapping) and, for unsetting, its address.
    pub(super) fn push(
        &mut self,
        key: Option<[u8; KEY_HASH_BYTES]>,
        payload: Option<impl AsRef<[u8]>>,
        address: Option<Address>,
        key_identities: &[&str],
    ) {
        let code = match (&payload, &key) {
            (Some(_), Some(_)) => '0',
            (None, Some(_)) => '1',
            (Some(_), None) => '2',
            (None, None) => '4',
        };
        self.codes.push(code);
        self.keys
            .extend_from_slice(&key.unwrap_or([0; KEY_HASH_BYTES]));
        match &payload {
            Some(p) => self
                .payloads
                .extend_from_slice(&p.as_ref()[..PAYLOAD_HASH_BYTES]),
            None => self.payloads.extend_from_slice(&[0; PAYLOAD_HASH_BYTES]),
        }
        if let Some(extras) = self.extras.as_mut() {
            let extra = match address {
                Some(a) if code == '0' => {
                    let (address, attrs) = a.finish(key_identities);
                    serde_json::json!([address.map(hex::encode), attrs])
                }
                _ => serde_json::Value::Null,
            };
            extras.push(extra);
        }
    }

    /// Stage the rows, numbered from `first_row`.
    pub(super) async fn insert(
        self,
        stage: &mut SqliteConnection,
        first_row: u64,
    ) -> Result<(), SyncError> {
        let rows = self.codes.len();
        if rows == 0 {
            return Ok(());
        }
        // json_each numbers the rows (its `key` is the 0-based index) and
        // carries the variable-length part; substr cuts the fixed ones.
        let extras = match self.extras {
            Some(extras) => serde_json::Value::Array(extras).to_string(),
            None => format!("[{}null]", "null,".repeat(rows - 1)),
        };
        sqlx::query(
            "INSERT INTO rows (row, key_hash, payload, state, address, attrs) \
             SELECT $1 + j.key, \
               CASE WHEN substr($2, j.key + 1, 1) IN ('0', '1') \
                 THEN substr($3, j.key * 16 + 1, 16) END, \
               CASE WHEN substr($2, j.key + 1, 1) = '0' THEN substr($4, j.key * 8 + 1, 8) END, \
               CASE substr($2, j.key + 1, 1) WHEN '4' THEN 1 \
                 ELSE CAST(substr($2, j.key + 1, 1) AS INTEGER) END, \
               unhex(j.value ->> 0), j.value ->> 1 \
             FROM json_each($5) AS j",
        )
        .bind(i64::try_from(first_row).unwrap_or(i64::MAX))
        .bind(self.codes)
        .bind(self.keys)
        .bind(self.payloads)
        .bind(extras)
        .execute(stage)
        .await
        .map_err(state_error)?;
        Ok(())
    }
}
