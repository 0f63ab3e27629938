//! The delivery pass of the diff: which rows of a chunk go out (and under
//! which ids), which are rejected, and which were sent.
//!
//! The classification leaves one [`Decided`] record per row that is sent or
//! rejected, sorted by row; unchanged rows, the bulk of a quiet day, have
//! none. The transform reads the chunks in row order, so the decisions are a
//! forward cursor over that sorted stream: a chunk whose rows have no record
//! is not even mapped. Rows whose batches go out are written to the staging
//! database's `rows` table (key, payload hash, version and, for
//! `unset_attributes`, the address gathered from the row's batches before
//! input protection), which the commit copies into the snapshot.

use std::collections::HashMap;

use arrow::array::RecordBatch;

use crate::mapping::{EncodedBatch, MapStats, Mapper, RejectReason, RejectedRow};

use super::address::Address;
use super::sort::Record;
use super::stage::{KeyHash, PayloadHash};
use super::{decision, diff_id, row_state, set_id, state_error, Diff};
use super::{KEY_HASH_BYTES, PAYLOAD_HASH_BYTES};
use crate::sync::SyncError;

/// Rows per multi-row INSERT of sent rows (6 variables each, far below
/// SQLite's 32,766).
const ROWS_PER_INSERT: usize = 1000;

/// One row's decision, as the delivery pass needs it: ordered by row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Decided {
    pub(super) row: u64,
    /// A [`row_state`].
    pub(super) state: u8,
    /// A [`decision`] (0 for rejected rows).
    pub(super) decision: u8,
    /// The key's version if the row is sent.
    pub(super) version: i64,
    pub(super) key: KeyHash,
    pub(super) payload: PayloadHash,
}

impl Decided {
    /// A row rejected whatever the snapshot says.
    pub(super) fn rejected(row: u64, state: u8, key: KeyHash, payload: PayloadHash) -> Self {
        Self {
            row,
            state,
            decision: 0,
            version: 0,
            key,
            payload,
        }
    }

    fn sends(&self) -> bool {
        self.state == row_state::KEYED && matches!(self.decision, decision::NEW | decision::CHANGED)
    }
}

impl Record for Decided {
    const SIZE: usize = 8 + 1 + 1 + 8 + KEY_HASH_BYTES + PAYLOAD_HASH_BYTES;

    fn encode(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.row.to_be_bytes());
        out[8] = self.state;
        out[9] = self.decision;
        out[10..18].copy_from_slice(&self.version.to_le_bytes());
        out[18..18 + KEY_HASH_BYTES].copy_from_slice(&self.key);
        out[18 + KEY_HASH_BYTES..].copy_from_slice(&self.payload);
    }

    fn decode(bytes: &[u8]) -> Self {
        let mut row = [0u8; 8];
        row.copy_from_slice(&bytes[..8]);
        let mut version = [0u8; 8];
        version.copy_from_slice(&bytes[10..18]);
        let mut key = [0u8; KEY_HASH_BYTES];
        key.copy_from_slice(&bytes[18..18 + KEY_HASH_BYTES]);
        let mut payload = [0u8; PAYLOAD_HASH_BYTES];
        payload.copy_from_slice(&bytes[18 + KEY_HASH_BYTES..Self::SIZE]);
        Self {
            row: u64::from_be_bytes(row),
            state: bytes[8],
            decision: bytes[9],
            version: i64::from_le_bytes(version),
            key,
            payload,
        }
    }
}

impl Diff {
    /// Load the decisions of rows `first_row..` (`rows` of them), the next
    /// chunk of the delivery pass: `false` when none of its rows is sent or
    /// rejected, so the chunk need not even be mapped.
    pub fn next_chunk(&mut self, first_row: u64, rows: usize) -> Result<bool, SyncError> {
        self.current.clear();
        self.addresses.clear();
        let end = first_row + rows as u64;
        loop {
            match self.cursor.peek() {
                None => break,
                Some(Ok(d)) if d.row >= end => break,
                Some(_) => {}
            }
            let Some(d) = self.cursor.next().transpose().map_err(sort_error)? else {
                break;
            };
            // Rows before the chunk belong to chunks already passed.
            if d.row >= first_row {
                self.current.insert(d.row, d);
            }
        }
        Ok(!self.current.is_empty())
    }

    /// The delivery pass over one mapped chunk (rows `first_row..`, loaded
    /// by [`Diff::next_chunk`]): keep the batches of new and changed rows
    /// with their diff ids, drop the others, and turn rows with a missing or
    /// repeated key into rejected rows.
    #[allow(clippy::too_many_arguments)] // one chunk's parts, spelled out
    pub fn select(
        &mut self,
        mapper: &Mapper,
        chunk: &RecordBatch,
        first_row: u64,
        batches: &mut Vec<EncodedBatch>,
        rejected: &mut Vec<RejectedRow>,
        stats: &mut MapStats,
    ) -> Result<(), SyncError> {
        let blocked = self.blocked.is_some();
        let mut dropped_rows: Vec<(u64, RejectReason)> = Vec::new();
        let decided = &self.current;
        batches.retain_mut(|batch| {
            let Some(d) = decided.get(&batch.row) else {
                return false;
            };
            let reason = match d.state {
                row_state::MISSING_KEY => Some(RejectReason::MissingKey),
                row_state::DUPLICATE_KEY => Some(RejectReason::DuplicateKey),
                _ => None,
            };
            if let Some(reason) = reason {
                stats.batches = stats.batches.saturating_sub(1);
                if dropped_rows.last().is_none_or(|(r, _)| *r != batch.row) {
                    dropped_rows.push((batch.row, reason));
                }
                return false;
            }
            if blocked || !d.sends() {
                return false;
            }
            set_id(batch, diff_id(&self.pipeline_id, d, batch.part));
            true
        });
        if self.unset {
            // Gathered here, before input protection (which may add an
            // mpid): the address kept is what the row's own batches carry.
            for batch in batches.iter() {
                self.addresses.entry(batch.row).or_default().add(batch);
            }
        }
        for (row, reason) in dropped_rows {
            stats.rows_mapped = stats.rows_mapped.saturating_sub(1);
            *stats.rows_rejected.entry(reason.as_str()).or_default() += 1;
            let offset = usize::try_from(row - first_row).unwrap_or(0);
            rejected.push(RejectedRow {
                row,
                reason,
                detail: match reason {
                    RejectReason::MissingKey => {
                        format!("diff.primary_key ({}) is NULL or empty", self.key_names())
                    }
                    _ => format!(
                        "diff.primary_key ({}) repeats within the model's result; every row with \
                         this key is rejected",
                        self.key_names()
                    ),
                },
                values: mapper.row_values_of(chunk, offset)?,
            });
        }
        rejected.sort_by_key(|r| r.row);
        Ok(())
    }

    /// Record the rows whose batches are about to go out (after input
    /// protection) as sent, with what the snapshot keeps of them.
    pub async fn mark_sent(&mut self, batches: &[EncodedBatch]) -> Result<(), SyncError> {
        let mut rows: Vec<u64> = batches.iter().map(|b| b.row).collect();
        rows.dedup();
        let mut sent = Vec::with_capacity(rows.len());
        for row in rows {
            let Some(d) = self.current.get(&row) else {
                continue;
            };
            let (address, attrs) = match self.addresses.remove(&row) {
                Some(a) => a.finish(&self.key_identities),
                None => (None, None),
            };
            sent.push((*d, address, attrs));
        }
        for group in sent.chunks(ROWS_PER_INSERT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT OR REPLACE INTO rows (row, key_hash, payload, version, address, attrs) ",
            );
            insert.push_values(group, |mut b, (d, address, attrs)| {
                b.push_bind(i64::try_from(d.row).unwrap_or(i64::MAX))
                    .push_bind(d.key.to_vec())
                    .push_bind(d.payload.to_vec())
                    .push_bind(d.version)
                    .push_bind(address.clone())
                    .push_bind(attrs.clone());
            });
            insert
                .build()
                .execute(&mut self.stage)
                .await
                .map_err(state_error)?;
        }
        Ok(())
    }

    /// Rows some batch of which was dead-lettered: not synced, so the next
    /// run sends them again.
    pub async fn unmark(&mut self, rows: &[u64]) -> Result<(), SyncError> {
        for row in rows {
            let (sql, n) = if *row > self.rows_base {
                (
                    "UPDATE gone SET sent = 0 WHERE n = ?",
                    *row - self.rows_base,
                )
            } else {
                ("UPDATE rows SET sent = 0 WHERE row = ?", *row)
            };
            sqlx::query(sql)
                .bind(i64::try_from(n).unwrap_or(i64::MAX))
                .execute(&mut self.stage)
                .await
                .map_err(state_error)?;
        }
        Ok(())
    }
}

/// The diff's sorted records cannot be read (a run file failed).
pub(super) fn sort_error(e: std::io::Error) -> SyncError {
    SyncError::Internal(format!("the diff's sorted rows cannot be read: {e}"))
}

/// The decisions of one chunk's rows that are sent or rejected, by row.
pub(super) type ChunkDecisions = HashMap<u64, Decided>;
/// The addresses of a chunk's sent rows (`unset_attributes`).
pub(super) type ChunkAddresses = HashMap<u64, Address>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_round_trips_and_sorts_by_row() {
        let d = Decided {
            row: 42,
            state: row_state::KEYED,
            decision: decision::CHANGED,
            version: 7,
            key: [3; KEY_HASH_BYTES],
            payload: [4; PAYLOAD_HASH_BYTES],
        };
        let mut bytes = vec![0u8; Decided::SIZE];
        d.encode(&mut bytes);
        assert_eq!(Decided::decode(&bytes), d);
        assert!(d.sends());
        let r = Decided::rejected(41, row_state::DUPLICATE_KEY, [9; KEY_HASH_BYTES], [0; 8]);
        r.encode(&mut bytes);
        assert_eq!(Decided::decode(&bytes), r);
        assert!(!r.sends());
        assert!(r < d, "ordered by row, whatever the key");
    }
}
