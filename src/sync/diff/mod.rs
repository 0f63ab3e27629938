//! Snapshot diff (`[diff]` in a pipeline file): send only new and changed
//! rows.
//!
//! The **pre-pass** ([`Diff::stage`]) follows the spool as the extract writes
//! it (so it overlaps the warehouse read), maps every row (mapping is
//! deterministic) and writes, per run row, the hash of its key and of its
//! mapped payload into a staging SQLite database beside the run's files: one
//! statement per chunk, the hashes packed into blobs. The state file is
//! attached to it, so the snapshot is read in place (a PostgreSQL state
//! store's snapshot is first copied into a file of the same shape, a page of
//! keys at a time). [`Diff::classify`] then
//! decides every row in SQL: a key that is NULL or empty (`missing_key`), or
//! that repeats (`duplicate_key`), rejects its rows; the others are new,
//! changed or unchanged. Memory stays flat whatever the number of keys: the
//! staging database is on disk.
//!
//! The **delivery pass** ([`Diff::decisions`] and [`Diff::select`], called by
//! the transform) asks the staging database which rows of a chunk are sent or
//! rejected; a chunk with none is not mapped again (the pre-pass counted its
//! rows). The batches of new and changed rows are stamped with an id derived
//! from the key, its version and its payload, the rest are dropped. Rows
//! whose batches went out are marked `sent`; dead-lettered rows are unmarked
//! at the end; a successful run writes the rows still marked into the
//! snapshot in the transaction that records its outcome
//! ([`crate::state::StateStore::finish_run_with_snapshot`]). Keys gone from
//! the model are unset a page at a time ([`Diff::unset_page`]).
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
use crate::mapping::convert::ColumnReader;
use crate::mapping::{EncodedBatch, MapStats, Mapper, RejectReason, RejectedRow};
use crate::source::ColumnInfo;
use crate::state::{SnapshotCommit, StateStore};

use super::SyncError;

mod address;
mod snapshot;
mod stage;
mod unset;

use address::Address;
use stage::{key_hash, StagedChunk};

/// Bytes of a key hash.
const KEY_HASH_BYTES: usize = 16;
/// Bytes of a payload hash.
const PAYLOAD_HASH_BYTES: usize = 8;
/// The prefix every encoded batch starts with; the id follows.
const ID_PREFIX: &[u8] = b"{\"source_request_id\":\"";
/// Hex digits of a `source_request_id`.
const ID_HEX_LEN: usize = 32;

/// Rows per multi-row UPDATE of the staging database (one variable each, far
/// below SQLite's 32,766).
const ROWS_PER_UPDATE: usize = 2000;

/// Unset batches a page (see [`Diff::unset_page`]).
pub const UNSET_PAGE: usize = 1000;

/// The staging file of a run.
pub const STAGE_FILE: &str = "diff-stage.db";
/// A PostgreSQL state store's snapshot, copied beside the staging file for
/// the run (deleted with it).
pub const SNAPSHOT_COPY_FILE: &str = "diff-snapshot-copy.db";

/// Row states in the staging table.
mod row_state {
    /// Mapped, with a key.
    pub const KEYED: i64 = 0;
    /// Rejected by mapping (its key still counts, so it is not "gone").
    /// Staged from the letters `1` and `4` of a chunk's codes.
    #[allow(dead_code)] // written by the staging SQL, read as "not KEYED"
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
pub struct RowDecision {
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
    /// The identity names of the key columns when every one is an identity
    /// (else empty): enough to address a profile to unset.
    key_identities: Vec<&'static str>,
    /// The mapping counters of the pre-pass: those of the whole run, since
    /// mapping is deterministic and the delivery pass skips chunks.
    pub stats: MapStats,
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
               address BLOB, attrs TEXT); \
             CREATE TABLE gone (n INTEGER PRIMARY KEY, key_hash BLOB NOT NULL, \
               version INTEGER NOT NULL, address TEXT, address_bin BLOB, attrs TEXT NOT NULL, \
               sent INTEGER NOT NULL DEFAULT 0);",
        )
        .execute(&mut stage)
        .await
        .map_err(crate::state::StateError::from)?;
        match state.file() {
            Some(file) => snapshot::attach(&mut stage, file, &pipeline.id).await?,
            None => {
                snapshot::copy(
                    &mut stage,
                    state,
                    &pipeline.id,
                    &run_dir.join(SNAPSHOT_COPY_FILE),
                )
                .await?;
            }
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
            stats: MapStats::default(),
            key_identities: Vec::new(),
        })
    }

    /// Whether this run sends every row (first run, invalidation, resync).
    pub fn resyncs(&self) -> bool {
        self.reset.is_some()
    }

    /// The pre-pass: map every row of the spool as the extract writes it
    /// (`source` follows the spool, so this overlaps the warehouse read) and
    /// stage its key and payload hashes. The mapping counters of the whole
    /// run are kept: the delivery pass maps only the chunks that send or
    /// reject something.
    pub async fn stage(
        &mut self,
        mapper: &Mapper,
        source: &mut super::transform::ChunkSource,
    ) -> Result<(), SyncError> {
        self.key_identities = self.key_identities(mapper);
        let mut next_row = 1u64;
        while let Some(chunk) = source.next().await? {
            if self.schema.is_none() {
                self.schema = Some(chunk.schema());
            }
            let first_row = next_row;
            next_row += chunk.num_rows() as u64;
            let mapped = mapper.map_chunk(&chunk, first_row, &mut self.stats)?;
            let staged = self.hash_chunk(&chunk, first_row, &mapped.batches)?;
            staged.insert(&mut self.stage, first_row).await?;
        }
        self.rows_base = next_row - 1;
        Ok(())
    }

    /// The identity names the key columns are mapped to, when every one is.
    fn key_identities(&self, mapper: &Mapper) -> Vec<&'static str> {
        use crate::config::model::Destination;
        use crate::mapping::plan::Route;
        let names: Vec<&'static str> = self
            .key_columns
            .iter()
            .filter_map(|(i, _)| {
                let column = mapper.plan().columns.iter().find(|c| c.index == *i)?;
                match &column.route {
                    Route::Send(Destination::Identity(t)) => Some(t.as_str()),
                    _ => None,
                }
            })
            .collect();
        if names.len() == self.key_columns.len() {
            names
        } else {
            Vec::new()
        }
    }

    /// The complete spool has `rows` rows: the pre-pass must have staged
    /// exactly those (else the delivery pass would number rows it never
    /// decided).
    pub fn check_rows(&self, rows: u64) -> Result<(), SyncError> {
        if rows == self.rows_base {
            return Ok(());
        }
        Err(SyncError::Internal(format!(
            "the diff staged {} rows but the complete spool has {rows}",
            self.rows_base
        )))
    }

    /// The key and payload hashes of one mapped chunk's rows.
    fn hash_chunk(
        &self,
        chunk: &RecordBatch,
        first_row: u64,
        batches: &[EncodedBatch],
    ) -> Result<StagedChunk, SyncError> {
        let rows = chunk.num_rows();
        // Batches come in row order: each row's parts are contiguous.
        let mut payloads: Vec<Option<Sha256>> = vec![None; rows];
        let mut addresses: Vec<Option<Address>> = Vec::new();
        if self.unset {
            addresses.resize_with(rows, || None);
        }
        for batch in batches {
            let offset = usize::try_from(batch.row - first_row).unwrap_or(usize::MAX);
            let Some(slot) = payloads.get_mut(offset) else {
                continue;
            };
            slot.get_or_insert_with(Sha256::new)
                .update(batch.source_request_id.as_bytes());
            if let Some(a) = addresses.get_mut(offset) {
                a.get_or_insert_with(Address::default).add(batch);
            }
        }
        let readers = self
            .key_columns
            .iter()
            .map(|(i, c)| ColumnReader::new(&c.name, &c.kind, chunk.column(*i)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(crate::mapping::MappingError::from)?;
        let mut staged = StagedChunk::with_capacity(rows, self.unset);
        let mut text = String::new();
        for (offset, payload) in payloads.into_iter().enumerate() {
            let key = key_hash(&readers, offset, &mut text);
            let address = addresses.get_mut(offset).and_then(Option::take);
            staged.push(
                key,
                payload.map(Digest::finalize),
                address,
                &self.key_identities,
            );
        }
        Ok(staged)
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
                GROUP BY key_hash HAVING COUNT(*) > 1) AND state = {keyed};",
            dup = row_state::DUPLICATE_KEY,
            keyed = row_state::KEYED,
        ))
        .execute(&mut self.stage)
        .await
        .map_err(state_error)?;
        // The snapshot table itself, not the `snap` view: SQLite materializes
        // a view with a join before an UPDATE … FROM uses it.
        sqlx::query(&format!(
            "UPDATE rows SET \
               decision = CASE WHEN snap.payload_hash = rows.payload AND {resync} = 0 \
                 THEN {unchanged} ELSE {changed} END, \
               version = CASE WHEN snap.payload_hash = rows.payload AND {resync} = 0 \
                 THEN snap.version ELSE snap.version + 1 END \
               FROM st.diff_snapshot AS snap \
               WHERE snap.pipeline_id = $1 AND snap.key_hash = rows.key_hash \
               AND rows.state = {keyed}",
            keyed = row_state::KEYED,
            unchanged = decision::UNCHANGED,
            changed = decision::CHANGED,
        ))
        .bind(&self.pipeline_id)
        .execute(&mut self.stage)
        .await
        .map_err(state_error)?;
        sqlx::query("UPDATE rows SET decision = $1, version = 1 WHERE state = $2 AND decision = 0")
            .bind(decision::NEW)
            .bind(row_state::KEYED)
            .execute(&mut self.stage)
            .await
            .map_err(state_error)?;
        if self.unset {
            // Keys of the snapshot no row of this run has (rows rejected by
            // mapping still count as present). Ordered, so that a resumed
            // spool numbers them alike.
            let gone = sqlx::query(
                "INSERT INTO gone (key_hash, version, address, address_bin, attrs) \
                 SELECT key_hash, version, address, address_bin, attrs FROM snap \
                 WHERE (address IS NOT NULL OR address_bin IS NOT NULL) \
                 AND attrs IS NOT NULL AND attrs != '[]' \
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
                // row_state::REJECTED (or a keyed row left undecided: none).
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

    /// The decisions the delivery pass needs for rows `first_row..` (`rows`
    /// of them): only rows that are sent or rejected have one, so an empty
    /// answer means the chunk need not even be mapped.
    pub async fn decisions(
        &mut self,
        first_row: u64,
        rows: usize,
    ) -> Result<HashMap<u64, RowDecision>, SyncError> {
        let mut decided: HashMap<u64, RowDecision> = HashMap::new();
        if rows == 0 {
            return Ok(decided);
        }
        let last_row = first_row + rows as u64 - 1;
        let mut found = sqlx::query(
            "SELECT row, state, decision, version, key_hash, payload FROM rows \
             WHERE row BETWEEN $1 AND $2 AND (state != $3 OR decision IN ($4, $5))",
        )
        .bind(i64::try_from(first_row).unwrap_or(i64::MAX))
        .bind(i64::try_from(last_row).unwrap_or(i64::MAX))
        .bind(row_state::KEYED)
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
        Ok(decided)
    }

    /// The delivery pass over one mapped chunk (rows `first_row..`, decided
    /// by [`Diff::decisions`]): keep the batches of new and changed rows with
    /// their diff ids, drop the others, and turn rows with a missing or
    /// repeated key into rejected rows.
    #[allow(clippy::too_many_arguments)] // one chunk's parts, spelled out
    pub fn select(
        &self,
        mapper: &Mapper,
        chunk: &RecordBatch,
        first_row: u64,
        decided: &HashMap<u64, RowDecision>,
        batches: &mut Vec<EncodedBatch>,
        rejected: &mut Vec<RejectedRow>,
        stats: &mut MapStats,
    ) -> Result<(), SyncError> {
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
        for group in rows.chunks(ROWS_PER_UPDATE) {
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
        let copy = self.path.with_file_name(SNAPSHOT_COPY_FILE);
        for file in [&self.path, &copy] {
            if let Err(e) = remove_file(file) {
                tracing::warn!(error = %e, "Cannot delete a diff staging file.");
            }
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
