//! Snapshot diff (`[diff]` in a pipeline file): send only new and changed
//! rows.
//!
//! The **pre-pass** ([`Diff::stage`]) follows the spool as the extract writes
//! it (so it overlaps the warehouse read), maps every row (mapping is
//! deterministic) and stages, per run row, a fixed-size record: the hash of
//! its key, its row number and the hash of its mapped payload (the content
//! ids of its batches). Records go to an external sort by key
//! (`sort`: bounded runs in memory, spilled to files beside the run's
//! files and merged k-way), rows without a key straight to the decisions.
//! [`Diff::classify`] then merge-joins the sorted rows with the snapshot read
//! in key order (`classify`): a key that is NULL or empty
//! (`missing_key`), or that repeats (`duplicate_key`: its rows are adjacent
//! after the sort), rejects its rows; the others are new, changed or
//! unchanged. The snapshot is read in place from the SQLite state file,
//! attached to the run's staging database (a PostgreSQL state store's
//! snapshot is first copied into a file of the same shape, a page of keys at
//! a time).
//!
//! Memory stays flat whatever the number of rows: at most one sort run
//! (`sort::RUN_RECORDS` records: ~5 MB of keys, ~6 MB of decisions),
//! one read buffer per run being merged (64 KiB, at most 64 runs
//! at once), one snapshot page and one chunk's decisions. Disk: 33 bytes per
//! row for the sort by key, 42 per sent or rejected row for the decisions,
//! both deleted as soon as they are merged and read.
//!
//! The **delivery pass** ([`Diff::next_chunk`] and [`Diff::select`], called
//! by the transform) reads the decisions, sorted by row, as the chunks go
//! by: unchanged rows have no record, and a chunk with none is not mapped
//! again (the pre-pass counted its rows). The batches of new and changed
//! rows are stamped with an id derived from the key, its version and its
//! payload, the rest are dropped. Rows whose batches went out are written to
//! the staging table `rows` as sent; dead-lettered rows are unmarked at the
//! end; a successful run writes the rows still marked into the snapshot in
//! the transaction that records its outcome
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

use std::iter::Peekable;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection as _, SqliteConnection};

use crate::config::model::{DiffSettings, OnDelete, Pipeline, SyncMode};
use crate::mapping::convert::ColumnReader;
use crate::mapping::{EncodedBatch, MapStats, Mapper};
use crate::source::ColumnInfo;
use crate::state::{SnapshotCommit, StateStore};

use super::SyncError;

mod address;
mod classify;
mod deliver;
mod snapshot;
mod sort;
mod stage;
mod unset;

use deliver::{ChunkAddresses, ChunkDecisions, Decided};
use sort::{Sorted, Sorter};
use stage::{key_hash, payload_hash, Keyed};

/// Bytes of a key hash.
const KEY_HASH_BYTES: usize = 16;
/// Bytes of a payload hash.
const PAYLOAD_HASH_BYTES: usize = 8;
/// The prefix every encoded batch starts with; the id follows.
const ID_PREFIX: &[u8] = b"{\"source_request_id\":\"";
/// Hex digits of a `source_request_id`.
const ID_HEX_LEN: usize = 32;

/// Unset batches a page (see [`Diff::unset_page`]).
pub const UNSET_PAGE: usize = 1000;

/// The staging file of a run.
pub const STAGE_FILE: &str = "diff-stage.db";
/// A PostgreSQL state store's snapshot, copied beside the staging file for
/// the run (deleted with it).
pub const SNAPSHOT_COPY_FILE: &str = "diff-snapshot-copy.db";
/// The folder of the diff's sort runs, beside the staging file.
pub const SORT_DIR: &str = "diff-sort";

/// Row states of a decision.
mod row_state {
    /// Mapped, with a key.
    pub const KEYED: u8 = 0;
    /// Rejected by mapping (its key still counts, so it is not "gone").
    pub const REJECTED: u8 = 1;
    /// Its key is NULL or empty.
    pub const MISSING_KEY: u8 = 2;
    /// Its key repeats in the run's rows.
    pub const DUPLICATE_KEY: u8 = 3;
}

/// Decisions of a keyed row (unchanged rows have no record).
mod decision {
    /// Not in the snapshot: sent.
    pub const NEW: u8 = 1;
    /// Payload differs (or the snapshot was invalidated): sent.
    pub const CHANGED: u8 = 2;
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
    /// Where the sorts spill their runs (deleted with the staging file).
    sort_dir: PathBuf,
    /// The pre-pass's keyed rows, to be sorted by key.
    keys: Option<Sorter<Keyed>>,
    /// The sent and rejected rows, to be sorted by row.
    decided: Option<Sorter<Decided>>,
    /// The delivery pass's cursor over the decisions, by row.
    cursor: Peekable<Sorted<Decided>>,
    /// The decisions of the chunk being delivered.
    current: ChunkDecisions,
    /// The addresses of its sent rows (`unset_attributes`).
    addresses: ChunkAddresses,
}

impl Diff {
    /// Open the run's staging database (in `run_dir`), attach the
    /// pipeline's snapshot to it (a copy, for a PostgreSQL state store) and
    /// prepare the sorts. Fails when a key column is not among the
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
        let (path, stage) = open_stage(state, &pipeline.id, run_dir).await?;
        let sort_dir = run_dir.join(SORT_DIR);
        remove_dir(&sort_dir)?;
        std::fs::create_dir_all(&sort_dir).map_err(|source| SyncError::File {
            path: sort_dir.clone(),
            source,
        })?;
        Ok(Self {
            keys: Some(Sorter::new(&sort_dir, "keys")),
            decided: Some(Sorter::new(&sort_dir, "decided")),
            cursor: Sorted::empty().peekable(),
            current: ChunkDecisions::new(),
            addresses: ChunkAddresses::new(),
            sort_dir,
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
            self.stage_chunk(&chunk, first_row, &mapped.batches)?;
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

    /// Stage the key and payload hashes of one mapped chunk's rows.
    fn stage_chunk(
        &mut self,
        chunk: &RecordBatch,
        first_row: u64,
        batches: &[EncodedBatch],
    ) -> Result<(), SyncError> {
        let rows = chunk.num_rows();
        // Batches come in row order: each row's parts are contiguous.
        let mut payloads: Vec<Option<Sha256>> = vec![None; rows];
        for batch in batches {
            let offset = usize::try_from(batch.row - first_row).unwrap_or(usize::MAX);
            if let Some(slot) = payloads.get_mut(offset) {
                slot.get_or_insert_with(Sha256::new)
                    .update(batch.source_request_id.as_bytes());
            }
        }
        let readers = self
            .key_columns
            .iter()
            .map(|(i, c)| ColumnReader::new(&c.name, &c.kind, chunk.column(*i)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(crate::mapping::MappingError::from)?;
        let (Some(keys), Some(decided)) = (self.keys.as_mut(), self.decided.as_mut()) else {
            return Err(SyncError::Internal(
                "the diff staged rows after classifying".to_owned(),
            ));
        };
        let mut text = String::new();
        for (offset, payload) in payloads.into_iter().enumerate() {
            let row = first_row + offset as u64;
            let key = key_hash(&readers, offset, &mut text);
            let mapped = payload.is_some();
            let payload = payload.map_or([0; PAYLOAD_HASH_BYTES], |p| payload_hash(&p.finalize()));
            let pushed = if let Some(key) = key {
                keys.push(Keyed {
                    key,
                    row,
                    payload,
                    mapped,
                })
            } else {
                // No key: rejected whatever the snapshot says, as
                // `missing_key` when mapped, else for its mapping reason.
                let state = if mapped {
                    self.counts.missing_keys += 1;
                    row_state::MISSING_KEY
                } else {
                    self.counts.mapping_rejected += 1;
                    row_state::REJECTED
                };
                decided.push(Decided::rejected(row, state, [0; KEY_HASH_BYTES], payload))
            };
            pushed.map_err(|e| sort_file_error(&self.sort_dir, e))?;
        }
        Ok(())
    }

    /// Decide every staged row: rejected keys, then new / changed /
    /// unchanged against the snapshot (a merge join, see `classify.rs`).
    /// `max_rejected_pct` blocks sending when more rows than that are
    /// rejected in all.
    pub async fn classify(&mut self, max_rejected_pct: Option<f64>) -> Result<(), SyncError> {
        let (Some(keys), Some(mut decided)) = (self.keys.take(), self.decided.take()) else {
            return Err(SyncError::Internal("the diff classified twice".to_owned()));
        };
        let keys = keys
            .finish()
            .map_err(|e| sort_file_error(&self.sort_dir, e))?;
        let resync = self.resyncs();
        let mut c = DiffCounts {
            rows: self.rows_base,
            missing_keys: self.counts.missing_keys,
            mapping_rejected: self.counts.mapping_rejected,
            ..DiffCounts::default()
        };
        classify::Merge::new(&self.pipeline_id, resync, self.unset, &mut c, &mut decided)
            .run(&mut self.stage, keys)
            .await?;
        self.cursor = decided
            .finish()
            .map_err(|e| sort_file_error(&self.sort_dir, e))?
            .peekable();
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
        // Drop the sorts' open run files before their folder.
        let sort_dir = self.sort_dir.clone();
        drop(self.cursor);
        drop(self.keys);
        drop(self.decided);
        if let Err(e) = remove_dir(&sort_dir) {
            tracing::warn!(error = %e, "Cannot delete the diff's sort folder.");
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

/// The run's staging database (in `run_dir`, created afresh) with the
/// pipeline's snapshot attached as `st` (a copy, for a PostgreSQL state
/// store).
async fn open_stage(
    state: &StateStore,
    pipeline_id: &str,
    run_dir: &Path,
) -> Result<(PathBuf, SqliteConnection), SyncError> {
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
    // `rows`: the rows whose batches went out (the commit's input).
    sqlx::raw_sql(
        "CREATE TABLE rows (row INTEGER PRIMARY KEY, key_hash BLOB NOT NULL, \
           payload BLOB NOT NULL, version INTEGER NOT NULL, \
           sent INTEGER NOT NULL DEFAULT 1, address BLOB, attrs TEXT); \
         CREATE TABLE gone (n INTEGER PRIMARY KEY, key_hash BLOB NOT NULL, \
           version INTEGER NOT NULL, address TEXT, address_bin BLOB, attrs TEXT NOT NULL, \
           sent INTEGER NOT NULL DEFAULT 0);",
    )
    .execute(&mut stage)
    .await
    .map_err(crate::state::StateError::from)?;
    match state.file() {
        Some(file) => snapshot::attach(&mut stage, file, pipeline_id).await?,
        None => {
            snapshot::copy(
                &mut stage,
                state,
                pipeline_id,
                &run_dir.join(SNAPSHOT_COPY_FILE),
            )
            .await?;
        }
    }
    Ok((path, stage))
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
fn diff_id(pipeline_id: &str, d: &Decided, part: u32) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"wsync-diff\0");
    hasher.update(pipeline_id.as_bytes());
    hasher.update([0u8]);
    hasher.update(d.key);
    hasher.update(d.version.to_le_bytes());
    hasher.update(d.payload);
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

/// A sort's run file could not be written or read.
fn sort_file_error(dir: &Path, source: std::io::Error) -> SyncError {
    SyncError::File {
        path: dir.to_owned(),
        source,
    }
}

fn remove_dir(path: &Path) -> Result<(), SyncError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SyncError::File {
            path: path.to_owned(),
            source,
        }),
    }
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
        let d = Decided {
            row: 1,
            state: row_state::KEYED,
            decision: decision::NEW,
            version: 1,
            key: [1; 16],
            payload: [2; 8],
        };
        let id = diff_id("p", &d, 0);
        set_id(&mut batch, id.clone());
        let v: serde_json::Value = serde_json::from_slice(&batch.json).unwrap();
        assert_eq!(v["source_request_id"], serde_json::json!(id));
        assert_eq!(batch.source_request_id, id);
        // A new version, another part or another payload: another id.
        let v2 = Decided { version: 2, ..d };
        assert_ne!(diff_id("p", &v2, 0), id);
        assert_ne!(diff_id("p", &d, 1), id);
        let p2 = Decided {
            payload: [3; 8],
            ..d
        };
        assert_ne!(diff_id("p", &p2, 0), id);
        assert_eq!(diff_id("p", &d, 0), id);
    }
}
