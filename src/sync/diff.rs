//! Snapshot diff (`[diff]` in a pipeline file): send only new and changed
//! rows.
//!
//! Runs of a diff pipeline read the complete spool twice. The **pre-pass**
//! ([`Diff::stage`]) maps every row (mapping is deterministic) and writes, per
//! run row, the hash of its key and of its mapped payload into a staging
//! SQLite database beside the run's files, to which the state file is
//! attached so the snapshot is read in place (a PostgreSQL state store's
//! snapshot is copied in, a page of keys at a time). [`Diff::classify`] then decides
//! every row in SQL: a key that is NULL or empty (`missing_key`), or that
//! repeats (`duplicate_key`), rejects its rows; the others are new, changed or
//! unchanged. Memory stays
//! flat whatever the number of keys: the staging database is on disk.
//!
//! The **delivery pass** ([`Diff::select`], called by the transform) keeps the
//! batches of new and changed rows, stamps each with an id derived from the
//! key, its version and its payload, and drops the rest. Rows whose batches
//! went out are marked `sent`; dead-lettered rows are unmarked at the end;
//! a successful run writes the rows still marked into the snapshot in the
//! transaction that records its outcome
//! ([`crate::state::StateStore::finish_run_with_snapshot`]).
//!
//! ## `source_request_id` under diff
//!
//! `sha256("wsync-diff" ‖ pipeline ‖ key hash ‖ version ‖ payload hash ‖
//! part)`, first 128 bits in hex. The version of a key is the snapshot's plus
//! one when its payload is sent again. The snapshot moves only when a run
//! commits, so a resumed spool, a retry or a re-send after a crash gives the
//! same version and payload, hence the same id (mParticle applies it once);
//! a value that goes A → B → A is sent with versions 1, 2, 3, so three ids.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use futures::TryStreamExt as _;
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection as _, Row as _, SqliteConnection};

use crate::config::model::{DiffSettings, OnDelete, Pipeline, SyncMode};
use crate::mapping::convert::{Cell, ColumnReader};
use crate::mapping::{EncodedBatch, MapStats, Mapper, RejectReason, RejectedRow};
use crate::source::ColumnInfo;
use crate::state::{SnapshotCommit, StateStore};

use super::spool::{Manifest, SpoolDir, SpoolReader};
use super::SyncError;

/// Bytes of a key hash.
const KEY_HASH_BYTES: usize = 16;
/// Bytes of a payload hash.
const PAYLOAD_HASH_BYTES: usize = 8;
/// The prefix every encoded batch starts with; the id follows.
const ID_PREFIX: &[u8] = b"{\"source_request_id\":\"";
/// Hex digits of a `source_request_id`.
const ID_HEX_LEN: usize = 32;

/// Rows per multi-row INSERT into the staging database (6 values each, far
/// below SQLite's 32,766 variables).
const ROWS_PER_INSERT: usize = 500;

/// The staging file of a run.
pub const STAGE_FILE: &str = "diff-stage.db";

/// Row states in the staging table.
mod row_state {
    /// Mapped, with a key.
    pub const KEYED: i64 = 0;
    /// Rejected by mapping (its key still counts, so it is not "gone").
    pub const REJECTED: i64 = 1;
    /// Its key is NULL or empty.
    pub const MISSING_KEY: i64 = 2;
    /// Its key repeats in the snapshot.
    pub const DUPLICATE_KEY: i64 = 3;
}

/// Decisions in the staging table.
mod decision {
    /// Not in the snapshot: sent.
    pub const NEW: i64 = 1;
    /// Payload differs (or the snapshot was invalidated): sent.
    pub const CHANGED: i64 = 2;
    /// Same payload: not sent.
    pub const UNCHANGED: i64 = 3;
}

/// What the diff decided, for the run's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffCounts {
    /// Rows whose key was not in the snapshot.
    pub new: u64,
    /// Rows whose payload changed (every known row after an invalidation).
    pub changed: u64,
    /// Rows identical to the snapshot: not sent.
    pub unchanged: u64,
    /// Keys gone from the model whose attributes were unset.
    pub unset: u64,
    /// Rows rejected as `duplicate_key`.
    pub duplicate_keys: u64,
    /// Rows rejected as `missing_key`.
    pub missing_keys: u64,
    /// Rows rejected by mapping (seen in the pre-pass).
    pub mapping_rejected: u64,
    /// Rows in the snapshot.
    pub rows: u64,
}

/// One row's decision, as the delivery pass needs it.
#[derive(Debug, Clone)]
struct RowDecision {
    state: i64,
    decision: i64,
    version: i64,
    key_hash: Vec<u8>,
    payload: Vec<u8>,
}

/// The diff of one run.
#[derive(Debug)]
pub struct Diff {
    pipeline_id: String,
    key_columns: Vec<(usize, ColumnInfo)>,
    path: PathBuf,
    stage: SqliteConnection,
    /// The mapping fingerprint the snapshot is kept under.
    pub fingerprint: String,
    /// Why every row is sent this run, if it is.
    pub reset: Option<String>,
    /// What was decided.
    pub counts: DiffCounts,
    /// More rows were rejected than `max_rejected_pct` allows: nothing is
    /// sent, the rejected rows are still written.
    pub blocked: Option<String>,
    /// `on_delete = "unset_attributes"` (full sync mode).
    unset: bool,
    /// The batches' `environment`.
    environment: String,
    /// The spool's schema (for the empty chunk that carries unset batches).
    schema: Option<arrow::datatypes::SchemaRef>,
    /// Rows in the spool: unset batches are numbered after them.
    rows_base: u64,
}

impl Diff {
    /// Open the run's staging database (in `run_dir`) and copy the
    /// pipeline's snapshot into it. Fails when a key column is not among the
    /// model's columns.
    #[allow(clippy::too_many_arguments)] // the run's context, spelled out
    pub async fn open(
        state: &StateStore,
        pipeline: &Pipeline,
        settings: &DiffSettings,
        columns: &[ColumnInfo],
        fingerprint: &str,
        run_dir: &Path,
        full_resync: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Self, SyncError> {
        let key_columns = key_columns(pipeline, settings, columns)?;
        let meta = state.diff_meta(&pipeline.id).await?;
        let reset = match &meta {
            _ if full_resync => Some("a full resync was asked (--full-resync)".to_owned()),
            None => None,
            Some(m) if m.fingerprint != fingerprint => Some(
                "the model SQL, the mappings or the input protection changed since the snapshot \
                 was taken"
                    .to_owned(),
            ),
            Some(m) => settings.full_resync_every.and_then(|every| {
                let since = (now - m.resynced_at).to_std().unwrap_or_default();
                (since >= every).then(|| {
                    format!(
                        "diff.full_resync_every ({}s) has passed since the last full send at {}",
                        every.as_secs(),
                        m.resynced_at.to_rfc3339()
                    )
                })
            }),
        };
        std::fs::create_dir_all(run_dir).map_err(|source| SyncError::File {
            path: run_dir.to_owned(),
            source,
        })?;
        let path = run_dir.join(STAGE_FILE);
        remove_file(&path)?;
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            // A throwaway file: a crash restages it from the spool.
            .journal_mode(SqliteJournalMode::Off)
            .synchronous(SqliteSynchronous::Off);
        let mut stage = SqliteConnection::connect_with(&options)
            .await
            .map_err(crate::state::StateError::from)?;
        sqlx::raw_sql(
            "CREATE TABLE rows (row INTEGER PRIMARY KEY, key_hash BLOB, payload BLOB, \
               state INTEGER NOT NULL, decision INTEGER NOT NULL DEFAULT 0, \
               version INTEGER NOT NULL DEFAULT 0, sent INTEGER NOT NULL DEFAULT 0, \
               address TEXT, attrs TEXT); \
             CREATE TABLE gone (n INTEGER PRIMARY KEY, key_hash BLOB NOT NULL, \
               version INTEGER NOT NULL, address TEXT NOT NULL, attrs TEXT NOT NULL, \
               sent INTEGER NOT NULL DEFAULT 0);",
        )
        .execute(&mut stage)
        .await
        .map_err(crate::state::StateError::from)?;
        match state.file() {
            Some(file) => attach_snapshot(&mut stage, file, &pipeline.id).await?,
            None => copy_snapshot(&mut stage, state, &pipeline.id).await?,
        }
        Ok(Self {
            pipeline_id: pipeline.id.clone(),
            key_columns,
            path,
            stage,
            fingerprint: fingerprint.to_owned(),
            reset: reset.or_else(|| meta.is_none().then(String::new)),
            counts: DiffCounts::default(),
            blocked: None,
            unset: settings.on_delete == OnDelete::UnsetAttributes
                && matches!(pipeline.sync_mode, SyncMode::Full),
            environment: pipeline.environment.as_str().to_owned(),
            schema: None,
            rows_base: 0,
        })
    }

    /// Whether this run sends every row (first run, invalidation, resync).
    pub fn resyncs(&self) -> bool {
        self.reset.is_some()
    }

    /// The pre-pass: map every row of the complete spool and stage its key
    /// and payload hashes.
    pub async fn stage(
        &mut self,
        mapper: &Mapper,
        dir: &SpoolDir,
        manifest: &Manifest,
    ) -> Result<(), SyncError> {
        let mut reader = SpoolReader::complete(dir, manifest.chunks, manifest.rows);
        self.rows_base = manifest.rows;
        let mut next_row = 1u64;
        while let Some(chunk) = reader.next().await? {
            if self.schema.is_none() {
                self.schema = Some(chunk.schema());
            }
            let first_row = next_row;
            next_row += chunk.num_rows() as u64;
            let mut stats = MapStats::default();
            let mapped = mapper.map_chunk(&chunk, first_row, &mut stats)?;
            let mut payloads: HashMap<u64, Sha256> = HashMap::with_capacity(mapped.batches.len());
            let mut addresses: HashMap<u64, Address> = HashMap::new();
            for batch in &mapped.batches {
                payloads
                    .entry(batch.row)
                    .or_default()
                    .update(batch.source_request_id.as_bytes());
                if self.unset {
                    addresses.entry(batch.row).or_default().add(batch);
                }
            }
            let readers = self
                .key_columns
                .iter()
                .map(|(i, c)| ColumnReader::new(&c.name, &c.kind, chunk.column(*i)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(crate::mapping::MappingError::from)?;
            let mut staged = Vec::with_capacity(chunk.num_rows());
            for offset in 0..chunk.num_rows() {
                let row = first_row + offset as u64;
                let key = key_hash(&readers, offset);
                let (state, payload) = match (payloads.remove(&row), &key) {
                    (None, _) => (row_state::REJECTED, None),
                    (Some(_), None) => (row_state::MISSING_KEY, None),
                    (Some(h), Some(_)) => (
                        row_state::KEYED,
                        Some(h.finalize()[..PAYLOAD_HASH_BYTES].to_vec()),
                    ),
                };
                let (address, attrs) = match addresses.remove(&row) {
                    Some(a) if state == row_state::KEYED => a.finish(),
                    _ => (None, None),
                };
                staged.push((row, key, payload, state, address, attrs));
            }
            let mut tx = self.stage.begin().await.map_err(state_error)?;
            // Many rows a statement: one statement costs more than its rows.
            for group in staged.chunks(ROWS_PER_INSERT) {
                let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO rows (row, key_hash, payload, state, address, attrs) ",
                );
                insert.push_values(
                    group,
                    |mut b, (row, key, payload, state, address, attrs)| {
                        b.push_bind(i64::try_from(*row).unwrap_or(i64::MAX))
                            .push_bind(key.clone())
                            .push_bind(payload.clone())
                            .push_bind(*state)
                            .push_bind(address.clone())
                            .push_bind(attrs.clone());
                    },
                );
                insert
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(state_error)?;
            }
            tx.commit().await.map_err(state_error)?;
        }
        Ok(())
    }

    /// Decide every staged row: rejected keys, then new / changed /
    /// unchanged against the snapshot. `max_rejected_pct` blocks sending
    /// when more rows than that are rejected in all.
    pub async fn classify(&mut self, max_rejected_pct: Option<f64>) -> Result<(), SyncError> {
        let resync = i64::from(self.resyncs());
        sqlx::raw_sql(&format!(
            "CREATE INDEX rows_by_key ON rows (key_hash); \
             UPDATE rows SET state = {dup} WHERE key_hash IN \
               (SELECT key_hash FROM rows WHERE key_hash IS NOT NULL \
                GROUP BY key_hash HAVING COUNT(*) > 1) AND state = {keyed}; \
             UPDATE rows SET \
               decision = CASE WHEN snap.payload = rows.payload AND {resync} = 0 \
                 THEN {unchanged} ELSE {changed} END, \
               version = CASE WHEN snap.payload = rows.payload AND {resync} = 0 \
                 THEN snap.version ELSE snap.version + 1 END \
               FROM snap WHERE snap.key_hash = rows.key_hash AND rows.state = {keyed}; \
             UPDATE rows SET decision = {new}, version = 1 \
               WHERE state = {keyed} AND decision = 0;",
            dup = row_state::DUPLICATE_KEY,
            keyed = row_state::KEYED,
            unchanged = decision::UNCHANGED,
            changed = decision::CHANGED,
            new = decision::NEW,
        ))
        .execute(&mut self.stage)
        .await
        .map_err(state_error)?;
        if self.unset {
            // Keys of the snapshot no row of this run has (rows rejected by
            // mapping still count as present). Ordered, so that a resumed
            // spool numbers them alike.
            let gone = sqlx::query(
                "INSERT INTO gone (key_hash, version, address, attrs) \
                 SELECT key_hash, version, address, attrs FROM snap \
                 WHERE address IS NOT NULL AND attrs IS NOT NULL AND attrs != '[]' \
                 AND NOT EXISTS (SELECT 1 FROM rows WHERE rows.key_hash = snap.key_hash) \
                 ORDER BY key_hash",
            )
            .execute(&mut self.stage)
            .await
            .map_err(state_error)?;
            self.counts.unset = gone.rows_affected();
        }
        let rows =
            sqlx::query("SELECT state, decision, COUNT(*) FROM rows GROUP BY state, decision")
                .fetch_all(&mut self.stage)
                .await
                .map_err(state_error)?;
        let mut c = DiffCounts {
            unset: self.counts.unset,
            ..DiffCounts::default()
        };
        for r in rows {
            let (state, decided, n): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
            let n = u64::try_from(n).unwrap_or(0);
            c.rows += n;
            match (state, decided) {
                (row_state::KEYED, decision::NEW) => c.new += n,
                (row_state::KEYED, decision::CHANGED) => c.changed += n,
                (row_state::KEYED, decision::UNCHANGED) => c.unchanged += n,
                (row_state::MISSING_KEY, _) => c.missing_keys += n,
                (row_state::DUPLICATE_KEY, _) => c.duplicate_keys += n,
                _ => c.mapping_rejected += n,
            }
        }
        self.counts = c;
        let rejected = c.missing_keys + c.duplicate_keys + c.mapping_rejected;
        if let Some(limit) = max_rejected_pct {
            #[allow(clippy::cast_precision_loss)] // a percentage
            let pct = if c.rows == 0 {
                0.0
            } else {
                rejected as f64 * 100.0 / c.rows as f64
            };
            if pct > limit {
                self.blocked = Some(format!(
                    "{pct:.2}% of the rows were rejected ({rejected} of {}: duplicate_key {}, \
                     missing_key {}, mapping {}), above max_rejected_pct = {limit}; nothing was \
                     sent; the rows are in rejected.jsonl",
                    c.rows, c.duplicate_keys, c.missing_keys, c.mapping_rejected
                ));
            }
        }
        Ok(())
    }

    /// The delivery pass over one mapped chunk (rows `first_row..`): keep the
    /// batches of new and changed rows with their diff ids, drop the others,
    /// and turn rows with a missing or repeated key into rejected rows.
    pub async fn select(
        &mut self,
        mapper: &Mapper,
        chunk: &RecordBatch,
        first_row: u64,
        batches: &mut Vec<EncodedBatch>,
        rejected: &mut Vec<RejectedRow>,
        stats: &mut MapStats,
    ) -> Result<(), SyncError> {
        let rows = chunk.num_rows() as u64;
        if rows == 0 {
            return Ok(());
        }
        let last_row = first_row + rows - 1;
        let mut decided: HashMap<u64, RowDecision> = HashMap::new();
        // Only the rows that are sent or rejected here: an unchanged row has
        // no entry, so its batches are dropped without being read back.
        let mut found = sqlx::query(
            "SELECT row, state, decision, version, key_hash, payload FROM rows \
             WHERE row BETWEEN ? AND ? AND (state IN (?, ?) OR decision IN (?, ?))",
        )
        .bind(i64::try_from(first_row).unwrap_or(i64::MAX))
        .bind(i64::try_from(last_row).unwrap_or(i64::MAX))
        .bind(row_state::MISSING_KEY)
        .bind(row_state::DUPLICATE_KEY)
        .bind(decision::NEW)
        .bind(decision::CHANGED)
        .fetch(&mut self.stage);
        while let Some(r) = found.try_next().await.map_err(state_error)? {
            decided.insert(
                u64::try_from(r.get::<i64, _>(0)).unwrap_or(0),
                RowDecision {
                    state: r.get(1),
                    decision: r.get(2),
                    version: r.get(3),
                    key_hash: r.get::<Option<Vec<u8>>, _>(4).unwrap_or_default(),
                    payload: r.get::<Option<Vec<u8>>, _>(5).unwrap_or_default(),
                },
            );
        }
        drop(found);
        let blocked = self.blocked.is_some();
        let mut dropped_rows: Vec<(u64, RejectReason)> = Vec::new();
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
            if blocked || !matches!(d.decision, decision::NEW | decision::CHANGED) {
                return false;
            }
            let id = diff_id(&self.pipeline_id, d, batch.part);
            set_id(batch, id);
            true
        });
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

    /// The unset batches of keys gone from the model (`unset_attributes`),
    /// numbered after the spool's rows, in an empty chunk for the outputs;
    /// they are marked sent. `None` when there are none (or nothing may be
    /// sent).
    pub async fn unset_chunk(&mut self) -> Result<Option<super::output::Transformed>, SyncError> {
        let Some(schema) = self.schema.clone() else {
            return Ok(None);
        };
        if !self.unset || self.blocked.is_some() || self.counts.unset == 0 {
            return Ok(None);
        }
        let rows = sqlx::query("SELECT n, key_hash, version, address, attrs FROM gone ORDER BY n")
            .fetch_all(&mut self.stage)
            .await
            .map_err(state_error)?;
        let mut batches = Vec::with_capacity(rows.len());
        for r in rows {
            let n: i64 = r.get(0);
            let key_hash: Vec<u8> = r.get(1);
            let version: i64 = r.get(2);
            let address: String = r.get(3);
            let attrs: String = r.get(4);
            let mut hasher = Sha256::new();
            hasher.update(b"wsync-diff-unset\0");
            hasher.update(self.pipeline_id.as_bytes());
            hasher.update([0u8]);
            hasher.update(&key_hash);
            hasher.update((version + 1).to_le_bytes());
            let id = hex::encode(&hasher.finalize()[..ID_HEX_LEN / 2]);
            let mut batch = serde_json::Map::new();
            batch.insert(
                "source_request_id".into(),
                serde_json::Value::String(id.clone()),
            );
            batch.insert(
                "environment".into(),
                serde_json::Value::String(self.environment.clone()),
            );
            if let Ok(serde_json::Value::Object(members)) = serde_json::from_str(&address) {
                batch.extend(members);
            }
            let names: serde_json::Value =
                serde_json::from_str(&attrs).unwrap_or(serde_json::Value::Null);
            batch.insert("deleted_user_attributes".into(), names);
            batches.push(EncodedBatch {
                row: self.rows_base + u64::try_from(n).unwrap_or(0),
                part: 0,
                source_request_id: id,
                json: serde_json::to_vec(&batch)
                    .map_err(|e| SyncError::Internal(format!("an unset batch: {e}")))?,
                historical: false,
            });
        }
        sqlx::query("UPDATE gone SET sent = 1")
            .execute(&mut self.stage)
            .await
            .map_err(state_error)?;
        Ok(Some(super::output::Transformed {
            first_row: self.rows_base + 1,
            chunk: RecordBatch::new_empty(schema),
            batches,
            rejected: Vec::new(),
        }))
    }

    /// Mark the rows whose batches are about to go out (after input
    /// protection) as sent.
    pub async fn mark_sent(&mut self, batches: &[EncodedBatch]) -> Result<(), SyncError> {
        if batches.is_empty() {
            return Ok(());
        }
        let mut rows: Vec<i64> = batches
            .iter()
            .map(|b| i64::try_from(b.row).unwrap_or(i64::MAX))
            .collect();
        rows.dedup();
        let mut tx = self.stage.begin().await.map_err(state_error)?;
        for group in rows.chunks(ROWS_PER_INSERT * 4) {
            let mut update =
                sqlx::QueryBuilder::<sqlx::Sqlite>::new("UPDATE rows SET sent = 1 WHERE row IN (");
            let mut list = update.separated(", ");
            for row in group {
                list.push_bind(*row);
            }
            update.push(")");
            update
                .build()
                .execute(&mut *tx)
                .await
                .map_err(state_error)?;
        }
        tx.commit().await.map_err(state_error)?;
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

    /// What the commit writes into the snapshot.
    pub fn commit(&mut self) -> SnapshotCommit<'_> {
        SnapshotCommit {
            fingerprint: &self.fingerprint,
            resynced: self.reset.is_some(),
            stage: &mut self.stage,
        }
    }

    /// Close and delete the staging database.
    pub async fn close(self) {
        let _ = self.stage.close().await;
        if let Err(e) = remove_file(&self.path) {
            tracing::warn!(error = %e, "Cannot delete the diff staging file.");
        }
    }

    fn key_names(&self) -> String {
        self.key_columns
            .iter()
            .map(|(_, c)| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Read the snapshot in place: the SQLite state file attached to the
/// staging connection (read-only in spirit: nothing here writes to it).
async fn attach_snapshot(
    stage: &mut SqliteConnection,
    file: &Path,
    pipeline_id: &str,
) -> Result<(), SyncError> {
    sqlx::query("ATTACH DATABASE ? AS st")
        .bind(file.display().to_string())
        .execute(&mut *stage)
        .await
        .map_err(state_error)?;
    sqlx::raw_sql(&format!(
        "CREATE TEMP VIEW snap AS SELECT s.key_hash AS key_hash, s.payload_hash AS payload, \
           s.version AS version, s.address AS address, a.names AS attrs \
         FROM st.diff_snapshot s LEFT JOIN st.diff_attribute_sets a ON a.id = s.attribute_set \
         WHERE s.pipeline_id = '{}'",
        pipeline_id.replace('\'', "''")
    ))
    .execute(&mut *stage)
    .await
    .map_err(state_error)?;
    Ok(())
}

/// Copy the snapshot from a remote state store (PostgreSQL) into the staging
/// file, a page of keys at a time, so memory stays flat.
async fn copy_snapshot(
    stage: &mut SqliteConnection,
    state: &StateStore,
    pipeline_id: &str,
) -> Result<(), SyncError> {
    const PAGE: u32 = 20_000;
    sqlx::raw_sql(
        "CREATE TABLE snap (key_hash BLOB PRIMARY KEY, payload BLOB NOT NULL, \
           version INTEGER NOT NULL, address TEXT, attrs TEXT) WITHOUT ROWID;",
    )
    .execute(&mut *stage)
    .await
    .map_err(state_error)?;
    let mut after = Vec::new();
    loop {
        let page = state.snapshot_page(pipeline_id, &after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after.clone_from(&last.key_hash);
        let mut tx = stage.begin().await.map_err(state_error)?;
        for group in page.chunks(ROWS_PER_INSERT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO snap (key_hash, payload, version, address, attrs) ",
            );
            insert.push_values(group, |mut b, r| {
                b.push_bind(r.key_hash.clone())
                    .push_bind(r.payload_hash.clone())
                    .push_bind(r.version)
                    .push_bind(r.address.clone())
                    .push_bind(r.attrs.clone());
            });
            insert
                .build()
                .execute(&mut *tx)
                .await
                .map_err(state_error)?;
        }
        tx.commit().await.map_err(state_error)?;
        if page.len() < PAGE as usize {
            break;
        }
    }
    Ok(())
}

/// The key columns' positions among the model's `columns` (exact name
/// first, then ignoring case); an error naming the first one missing.
pub fn key_columns(
    pipeline: &Pipeline,
    settings: &DiffSettings,
    columns: &[ColumnInfo],
) -> Result<Vec<(usize, ColumnInfo)>, SyncError> {
    let mut found = Vec::with_capacity(settings.primary_key.len());
    for key in &settings.primary_key {
        let index = columns.iter().position(|c| c.name == *key).or_else(|| {
            columns
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(key))
        });
        let Some(index) = index else {
            return Err(SyncError::Unsupported {
                pipeline: pipeline.id.clone(),
                message: format!(
                    "{}: diff.primary_key names `{key}`, which the model does not return \
                     (its columns: {}); fix the key or add the column to the SELECT",
                    pipeline.path.display(),
                    columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        };
        found.push((index, columns[index].clone()));
    }
    Ok(found)
}

/// What the snapshot of a pipeline is kept under: the model SQL, the
/// mappings and policies that shape payloads, the input protection and the
/// key. An `only_read` dry run counts as `create_and_update`, so that a
/// pipeline switched to `only_read` forecasts against its real snapshot.
/// The connection and feed are left out (a new feed: `--full-resync`).
pub fn snapshot_fingerprint(
    project: &crate::config::model::Project,
    pipeline: &Pipeline,
) -> String {
    use crate::config::model::InputProtection;
    let model = &project.models[&pipeline.data_model];
    let protection = match pipeline.input_protection {
        InputProtection::OnlyRead => InputProtection::CreateAndUpdate,
        other => other,
    };
    let mut hash = Sha256::new();
    for part in [
        model.sql.as_str(),
        &format!("{:?}", pipeline.environment),
        &format!("{:?}", pipeline.sync_mode),
        &format!("{protection:?}"),
        &format!("{:?}", pipeline.null_policy),
        &format!("{:?}", pipeline.limit_policy),
        &format!("{:?}", pipeline.mappings),
        &format!("{:?}", pipeline.diff.as_ref().map(|d| &d.primary_key)),
    ] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(hash.finalize())
}

/// How to reach a row's profile again, and the attributes it was sent: what
/// `unset_attributes` keeps per key.
#[derive(Default)]
struct Address {
    members: Option<serde_json::Map<String, serde_json::Value>>,
    names: std::collections::BTreeSet<String>,
}

impl Address {
    /// Take one batch (part) of the row.
    fn add(&mut self, batch: &EncodedBatch) {
        let Ok(serde_json::Value::Object(v)) = serde_json::from_slice(&batch.json) else {
            return;
        };
        if let Some(serde_json::Value::Object(attrs)) = v.get("user_attributes") {
            self.names.extend(attrs.keys().cloned());
        }
        if self.members.is_none() {
            let members = ["mpid", "user_identities", "device_info", "mp_deviceid"]
                .into_iter()
                .filter_map(|k| v.get(k).map(|m| (k.to_owned(), m.clone())))
                .collect();
            self.members = Some(members);
        }
    }

    /// (address JSON, attribute names JSON).
    fn finish(self) -> (Option<String>, Option<String>) {
        let address = self
            .members
            .map(|m| serde_json::Value::Object(m).to_string());
        let names = serde_json::to_string(&self.names).ok();
        (address, names)
    }
}

/// The hash of a row's key values, `None` when one is NULL or empty.
fn key_hash(readers: &[ColumnReader<'_>], row: usize) -> Option<Vec<u8>> {
    let mut hasher = Sha256::new();
    for reader in readers {
        let text = match reader.cell(row) {
            Cell::Value(v) => v.to_text(),
            Cell::Null | Cell::Unrepresentable(_) => return None,
        };
        if text.trim().is_empty() {
            return None;
        }
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());
    }
    Some(hasher.finalize()[..KEY_HASH_BYTES].to_vec())
}

/// The `source_request_id` of one part of a diffed row.
fn diff_id(pipeline_id: &str, d: &RowDecision, part: u32) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"wsync-diff\0");
    hasher.update(pipeline_id.as_bytes());
    hasher.update([0u8]);
    hasher.update(&d.key_hash);
    hasher.update(d.version.to_le_bytes());
    hasher.update(&d.payload);
    hasher.update(part.to_le_bytes());
    hex::encode(&hasher.finalize()[..ID_HEX_LEN / 2])
}

/// Put `id` in place of the batch's content id (same length, same place).
fn set_id(batch: &mut EncodedBatch, id: String) {
    let at = ID_PREFIX.len();
    if batch.json.starts_with(ID_PREFIX)
        && batch.json.len() > at + ID_HEX_LEN
        && id.len() == ID_HEX_LEN
    {
        batch.json[at..at + ID_HEX_LEN].copy_from_slice(id.as_bytes());
        batch.source_request_id = id;
    }
}

fn state_error(e: sqlx::Error) -> SyncError {
    SyncError::State(crate::state::StateError::Query(e))
}

fn remove_file(path: &Path) -> Result<(), SyncError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SyncError::File {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_id_replaces_the_content_id_in_place() {
        let mut batch = EncodedBatch {
            historical: false,
            row: 1,
            part: 0,
            source_request_id: "0".repeat(32),
            json: format!(
                "{{\"source_request_id\":\"{}\",\"environment\":\"development\"}}",
                "0".repeat(32)
            )
            .into_bytes(),
        };
        let d = RowDecision {
            state: row_state::KEYED,
            decision: decision::NEW,
            version: 1,
            key_hash: vec![1; 16],
            payload: vec![2; 8],
        };
        let id = diff_id("p", &d, 0);
        set_id(&mut batch, id.clone());
        let v: serde_json::Value = serde_json::from_slice(&batch.json).unwrap();
        assert_eq!(v["source_request_id"], serde_json::json!(id));
        assert_eq!(batch.source_request_id, id);
        // A new version, another part or another payload: another id.
        let v2 = RowDecision {
            version: 2,
            ..d.clone()
        };
        assert_ne!(diff_id("p", &v2, 0), id);
        assert_ne!(diff_id("p", &d, 1), id);
        let p2 = RowDecision {
            payload: vec![3; 8],
            ..d.clone()
        };
        assert_ne!(diff_id("p", &p2, 0), id);
        assert_eq!(diff_id("p", &d, 0), id);
    }
}
