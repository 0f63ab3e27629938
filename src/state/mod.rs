//! The state store: run records, watermarks, checkpoints, dead letters, the
//! diff snapshot, and what several daemons share (pipeline leases, the
//! daemons' heartbeats, schedule claims, the feeds' send budget).
//!
//! Two backends behind one code path (sqlx's `Any` driver): SQLite, the
//! embedded default for one host, and PostgreSQL (`state.url =
//! "postgres://…"`), which several daemons on several hosts share. Every query
//! is written once in the SQL both speak (`$1` placeholders, `ON CONFLICT`,
//! `RETURNING`); the schema lives in `migrations/sqlite/` and
//! `migrations/postgres/`, the same versions in each backend's types, embedded
//! in the binary and applied when a store is opened.
//!
//! A run's outcome and its watermark are written in one transaction, so the
//! watermark can never move without the run that earned it being recorded as a
//! success; and every write of a run is conditioned on the fencing token of
//! the pipeline lease it holds (see [`leases`]), so a daemon that stalled past
//! its lease cannot commit stale work.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor as _, Row};

use crate::clock::{Clock, SystemClock};
use crate::redact::redact_url;

#[cfg(test)]
mod backfill_tests;
pub mod backfills;
pub mod budget;
pub mod daemons;
pub mod dead_letters;
pub mod leases;
mod runs;
pub mod snapshot;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

pub use backfills::{
    chunk_lease_key, BackfillStatus, Chunk, ChunkRef, ChunkState, ChunkStatus, NewBackfill,
    CHUNK_ATTEMPTS,
};
pub use budget::LearnedRate;
pub use daemons::{DaemonInfo, DaemonRegistration};
pub use dead_letters::{DeadLetter, DeadLetterKind, NewDeadLetter};
pub use leases::{LeaseHolder, DEFAULT_LEASE_TTL};
pub use snapshot::{DiffMeta, SnapshotCommit};

/// A state store failure.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be opened or migrated.
    #[error("cannot open the state store at {url}: {message}")]
    Open {
        /// Redacted URL.
        url: String,
        /// Cause.
        message: String,
    },
    /// A query failed.
    #[error("state store query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// The pipeline is running already (in this process or another one).
    #[error(
        "pipeline `{pipeline}` is already in progress ({}); wait for it to finish",
        holder_text(*run_id, since, holder)
    )]
    InProgress {
        /// Pipeline id.
        pipeline: String,
        /// The run holding the pipeline.
        run_id: i64,
        /// When it took the pipeline.
        since: String,
        /// The daemon or process running it (`host:pid:instance`).
        holder: String,
    },
    /// A backfill chunk cannot start: another run of it succeeded, or its
    /// backfill was cancelled or never existed.
    #[error("pipeline `{pipeline}`: chunk {chunk} of backfill {backfill} {reason}")]
    ChunkClosed {
        /// Pipeline id.
        pipeline: String,
        /// The backfill.
        backfill: i64,
        /// The chunk.
        chunk: i64,
        /// Why: `is done already`, `was cancelled`, `does not exist`.
        reason: &'static str,
    },
    /// The scheduled run was claimed by another daemon (it ran, or runs, there).
    #[error("pipeline `{pipeline}`: this scheduled run was already claimed by another daemon")]
    AlreadyClaimed {
        /// Pipeline id.
        pipeline: String,
    },
    /// The run's lease on its pipeline was taken over (this process stalled
    /// past the lease's expiry): nothing more of this run may be committed.
    #[error(
        "pipeline `{pipeline}`: run {run_id} lost its lease (fencing token {token}) to another \
         daemon, which resumes the pipeline from its last checkpoint; this run's work is not \
         committed"
    )]
    LeaseLost {
        /// Pipeline id.
        pipeline: String,
        /// The fenced run.
        run_id: i64,
        /// Its fencing token.
        token: i64,
    },
}

/// Run states, as mParticle names them, plus `interrupted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Waiting to start.
    Queued,
    /// In progress.
    Running,
    /// Finished; every batch acknowledged.
    Success,
    /// Stopped by an error.
    Failed,
    /// Cut off by a crash or shutdown.
    Interrupted,
}

impl RunState {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "success" => Self::Success,
            "interrupted" => Self::Interrupted,
            _ => Self::Failed,
        }
    }
}

/// Counters a finished run records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Rows read from the warehouse.
    pub records_extracted: u64,
    /// Rows turned into at least one batch.
    pub records_mapped: u64,
    /// Batches produced.
    pub event_batches_generated: u64,
    /// Batches acknowledged by the Events API.
    pub batches_sent: u64,
    /// Requests acknowledged.
    pub requests_sent: u64,
    /// Body bytes acknowledged.
    pub bytes_sent: u64,
    /// Rows rejected.
    pub rows_rejected: u64,
    /// Values left out.
    pub values_dropped: u64,
    /// Values truncated.
    pub values_truncated: u64,
    /// Requests re-sent after a retryable failure.
    pub retries: u64,
    /// 429 answers.
    pub responses_429: u64,
    /// 5xx answers.
    pub responses_5xx: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Time spent waiting on rate limits, in milliseconds.
    pub rate_limit_wait_ms: u64,
    /// Dead letters stored by the run (refused batches and rejected rows).
    pub dead_letters: u64,
    /// Diff: rows whose key was not in the snapshot (sent).
    pub rows_new: u64,
    /// Diff: rows whose payload differs from the snapshot's, or every known
    /// row after the snapshot was invalidated (sent).
    pub rows_changed: u64,
    /// Diff: rows identical to the snapshot (not sent).
    pub rows_unchanged: u64,
    /// Diff: keys gone from the model whose attributes were unset.
    pub rows_unset: u64,
}

/// A stored run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// Run id.
    pub id: i64,
    /// Pipeline id.
    pub pipeline_id: String,
    /// State.
    pub state: RunState,
    /// `manual`, `scheduled` or `backfill`.
    pub run_type: String,
    /// An `only_read` run.
    pub dry_run: bool,
    /// Start.
    pub start_date: DateTime<Utc>,
    /// End, once finished.
    pub end_date: Option<DateTime<Utc>>,
    /// Window start (iterator value as text).
    pub data_interval_start: Option<String>,
    /// Window end (iterator value as text).
    pub data_interval_end: Option<String>,
    /// Counters.
    pub counts: RunCounts,
    /// Files written, as a JSON object.
    pub files: serde_json::Value,
    /// Error, for failed runs.
    pub error: Option<String>,
    /// The schedule interval covered, for interval schedules.
    pub interval: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Iterator value below which every row was acknowledged (text).
    pub checkpoint: Option<String>,
    /// The run this one resumed.
    pub resumed_from: Option<i64>,
}

/// A run about to start.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// Pipeline id.
    pub pipeline_id: &'a str,
    /// `manual`, `scheduled` or `backfill`.
    pub run_type: &'a str,
    /// An `only_read` run.
    pub dry_run: bool,
    /// Start time.
    pub now: DateTime<Utc>,
    /// Iterator window `[start, end)` as text.
    pub window: (Option<String>, Option<String>),
    /// Schedule interval, for interval schedules.
    pub interval: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The run being resumed.
    pub resumed_from: Option<i64>,
    /// Scheduled runs: what the daemons' plan called this run (the latest
    /// scheduled run it follows and the interval or fire time), claimed once
    /// in the state store, so two daemons that both found it due run it once.
    pub claim: Option<&'a str>,
    /// The scheduled run the claim follows, when the plan saw it cut off:
    /// the run starts only if that one has not finished meanwhile (refused
    /// with [`StateError::AlreadyClaimed`] otherwise).
    pub claim_cut_off: Option<i64>,
    /// A chunk of a parallel backfill: the run holds the chunk's lease
    /// instead of the pipeline's, and starts only while the chunk is not done.
    pub chunk: Option<ChunkRef>,
}

/// Where the next run of a pipeline should start reading after an unfinished
/// run: that run's last checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The failed or interrupted run.
    pub run_id: i64,
    /// Its checkpoint (iterator text).
    pub checkpoint: String,
}

/// What the scheduler needs to know of a pipeline's past scheduled runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleHistory {
    /// Start of the latest scheduled run, whatever its outcome.
    pub last_scheduled_start: Option<DateTime<Utc>>,
    /// State of the latest scheduled run.
    pub last_scheduled_state: Option<RunState>,
    /// End of the latest schedule interval run successfully.
    pub last_interval_end: Option<DateTime<Utc>>,
    /// A scheduled run reached success or failed (a `once` pipeline is done).
    pub scheduled_outcome: bool,
    /// Id of the latest scheduled run (0 when none): part of the claim of the
    /// next one.
    pub last_scheduled_id: i64,
}

/// How a run ended, to be recorded.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Final state.
    pub state: RunState,
    /// Counters.
    pub counts: RunCounts,
    /// Files written.
    pub files: serde_json::Value,
    /// Error text.
    pub error: Option<String>,
    /// New watermark to store with the outcome (successful incremental runs only).
    pub watermark: Option<String>,
}

/// Which database a [`StateStore`] lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file: one host.
    Sqlite,
    /// A PostgreSQL database: any number of daemons on any hosts.
    Postgres,
}

/// How a store is opened beyond its URL.
#[derive(Debug, Clone)]
pub struct StateOptions {
    /// How long a pipeline lease lasts without a heartbeat (`state.lease_ttl_secs`).
    pub lease_ttl: Duration,
    /// The clock leases and heartbeats are judged by: wall time shared by
    /// every host (tests inject their own).
    pub clock: Arc<dyn Clock>,
}

impl Default for StateOptions {
    fn default() -> Self {
        Self {
            lease_ttl: DEFAULT_LEASE_TTL,
            clock: Arc::new(SystemClock),
        }
    }
}

/// The state store (cheap to clone: clones share the pool and the leases
/// this process holds).
#[derive(Debug, Clone)]
pub struct StateStore {
    pub(crate) pool: AnyPool,
    backend: Backend,
    sqlite_file: Option<PathBuf>,
    pub(crate) leases: Arc<leases::Held>,
    pub(crate) options: StateOptions,
}

impl StateStore {
    /// Open (creating a SQLite file and its folder if needed) and migrate,
    /// with the default lease settings.
    pub async fn open(url: &str) -> Result<Self, StateError> {
        Self::open_with(url, StateOptions::default()).await
    }

    /// Open the project's store (`[state]`: its URL and lease life).
    pub async fn for_project(
        config: &crate::config::model::StateConfig,
    ) -> Result<Self, StateError> {
        Self::open_with(
            config.url.expose(),
            StateOptions {
                lease_ttl: config.lease_ttl,
                ..StateOptions::default()
            },
        )
        .await
    }

    /// Open and migrate the store at `url`: `sqlite://…` or `postgres://…`.
    pub async fn open_with(url: &str, options: StateOptions) -> Result<Self, StateError> {
        let open_error = |message: String| StateError::Open {
            url: redact_url(url),
            message: scrub_url_password(&message, url),
        };
        sqlx::any::install_default_drivers();
        let lower = url.to_ascii_lowercase();
        let (backend, connect_url, sqlite_file) =
            if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
                (Backend::Postgres, url.to_owned(), None)
            } else {
                let file = sqlite_path(url)
                    .ok_or_else(|| open_error("not a sqlite:// or postgres:// URL".to_owned()))?;
                if let Some(parent) = file.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| open_error(e.to_string()))?;
                }
                (Backend::Sqlite, sqlite_connect_url(url), Some(file))
            };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets `wsync runs` read while a run writes; the
                        // busy timeout waits out another process's commit.
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&connect_url)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        // Two processes opening a new store at once (a daemon starting while
        // `wsync status` runs) race to apply the same migration; the loser's
        // CREATE fails once the winner commits. Applied migrations are skipped,
        // so trying again settles it.
        let mut attempt = 0;
        loop {
            let result = match backend {
                Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await,
                Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await,
            };
            match result {
                Ok(()) => break,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "State store migration raced; retrying.");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => return Err(open_error(e.to_string())),
            }
        }
        Ok(Self {
            pool,
            backend,
            sqlite_file,
            leases: Arc::default(),
            options,
        })
    }

    /// The time by the store's lease clock (wall time shared by every host).
    pub fn now(&self) -> DateTime<Utc> {
        self.options.clock.now()
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A write transaction. On SQLite it takes the write lock at `BEGIN`
    /// (waiting up to the busy timeout for it): a deferred transaction that
    /// reads first and writes later fails at once with "database is locked"
    /// when another writer committed in between (the busy timeout does not
    /// apply to that upgrade), which two pipelines starting together hit.
    /// PostgreSQL's row locks need no such care.
    pub(crate) async fn write_tx(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// The SQLite database file (`None` for PostgreSQL).
    pub fn file(&self) -> Option<&Path> {
        self.sqlite_file.as_deref()
    }

    /// Close every connection (tests that replace the file underneath).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// `message` (a driver's error, which may quote its URL) without the URL's
/// password, raw or percent-decoded.
fn scrub_url_password(message: &str, url: &str) -> String {
    let Some(raw) = url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
    else {
        return message.to_owned();
    };
    let decoded = percent_encoding::percent_decode_str(&raw)
        .decode_utf8_lossy()
        .into_owned();
    let (raw, decoded) = (
        crate::redact::Secret::new(raw),
        crate::redact::Secret::new(decoded),
    );
    crate::redact::scrub(message, &[&raw, &decoded])
}

/// The file of a `sqlite:` URL (`sqlite:///abs`, `sqlite://rel`, `sqlite:rel`),
/// without its query.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.get(..7).filter(|p| p.eq_ignore_ascii_case("sqlite:"))?;
    let rest = &url[rest.len()..];
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// The URL the SQLite driver opens: creating the file unless the URL says
/// how to open it.
fn sqlite_connect_url(url: &str) -> String {
    if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// Who holds a lease, for [`StateError::InProgress`]: a run, or (run id 0)
/// a daemon that took it between this process's read and write.
fn holder_text(run_id: i64, since: &str, holder: &str) -> String {
    if run_id == 0 {
        format!("{holder} took it a moment ago")
    } else {
        format!("run {run_id}, started {since} by {holder}")
    }
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map_or(DateTime::UNIX_EPOCH, |t| t.with_timezone(&Utc))
}

/// Unix milliseconds: how leases and heartbeats store instants, so every
/// backend compares them as numbers.
pub(crate) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// A row's column as `u64` (counters are stored as signed integers).
pub(crate) fn get_u64(row: &AnyRow, column: &str) -> Result<u64, sqlx::Error> {
    Ok(to_u64(row.try_get(column)?))
}
