//! The state store: run records and incremental watermarks, in SQLite.
//!
//! The schema lives in `migrations/` and is embedded in the binary; opening a
//! store applies any migration it has not seen. A run's outcome and its
//! watermark are written in one transaction, so the watermark can never move
//! without the run that earned it being recorded as a success.

use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

use crate::redact::redact_url;

pub mod dead_letters;
pub mod snapshot;

pub use dead_letters::{DeadLetter, DeadLetterKind, NewDeadLetter};
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
        "pipeline `{pipeline}` is already in progress (run {run_id}, started {since} by process {pid}); \
         wait for it to finish"
    )]
    InProgress {
        /// Pipeline id.
        pipeline: String,
        /// The run holding the pipeline.
        run_id: i64,
        /// When it took the pipeline.
        since: String,
        /// The process running it.
        pid: i64,
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
}

/// The run holding a pipeline's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// Run id.
    pub run_id: i64,
    /// Process id.
    pub pid: i64,
    /// When taken.
    pub since: String,
    /// Taken by this very process (same pid and instance token).
    pub own: bool,
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

/// The SQLite state store.
#[derive(Debug, Clone)]
pub struct StateStore {
    pub(crate) pool: SqlitePool,
}

impl StateStore {
    /// Open (creating the file and its folder if needed) and migrate.
    pub async fn open(url: &str) -> Result<Self, StateError> {
        let open_error = |message: String| StateError::Open {
            url: redact_url(url),
            message,
        };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| open_error(e.to_string()))?
            .create_if_missing(true)
            // WAL lets `wsync runs` read while a run writes.
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(10));
        if let Some(parent) = Path::new(options.get_filename()).parent() {
            std::fs::create_dir_all(parent).map_err(|e| open_error(e.to_string()))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        // Two processes opening a new store at once (a daemon starting while
        // `wsync status` runs) race to apply the same migration; the loser's
        // CREATE fails once the winner commits. Applied migrations are skipped,
        // so trying again settles it.
        let mut attempt = 0;
        loop {
            match sqlx::migrate!("./migrations").run(&pool).await {
                Ok(()) => break,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "State store migration raced; retrying.");
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => return Err(open_error(e.to_string())),
            }
        }
        Ok(Self { pool })
    }

    /// A write transaction that takes SQLite's write lock at `BEGIN` (waiting up
    /// to the busy timeout for it). A deferred transaction that reads first and
    /// writes later fails at once with "database is locked" when another writer
    /// committed in between (the busy timeout does not apply to that upgrade):
    /// two pipelines starting together under `max_concurrent_runs` hit it.
    pub(crate) async fn write_tx(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// The database file.
    pub fn file(&self) -> std::path::PathBuf {
        self.pool.connect_options().get_filename().to_owned()
    }

    /// Close every connection (tests that replace the file underneath).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Record a new run as `running` and take the pipeline's lock.
    ///
    /// Refused with [`StateError::InProgress`] while a live process holds the
    /// lock. A lock left by a process that is gone (a crash, SIGKILL) is taken
    /// over, and that process's run, still marked `running`, becomes
    /// `interrupted`.
    pub async fn start_run(&self, run: &NewRun<'_>) -> Result<i64, StateError> {
        let mut tx = self.write_tx().await?;
        let holder = sqlx::query(
            "SELECT run_id, pid, instance, acquired_at FROM pipeline_locks WHERE pipeline_id = ?",
        )
        .bind(run.pipeline_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = holder {
            let pid: i64 = row.try_get("pid")?;
            let instance: String = row.try_get("instance")?;
            if process_alive(pid, &instance) {
                return Err(StateError::InProgress {
                    pipeline: run.pipeline_id.to_owned(),
                    run_id: row.try_get("run_id")?,
                    since: row.try_get("acquired_at")?,
                    pid,
                });
            }
        }
        sqlx::query(
            "UPDATE pipeline_runs SET state = 'interrupted', end_date = ?, \
             error = 'the process running it stopped before recording an outcome' \
             WHERE pipeline_id = ? AND state = 'running'",
        )
        .bind(run.now.to_rfc3339())
        .bind(run.pipeline_id)
        .execute(&mut *tx)
        .await?;
        let id = sqlx::query(
            "INSERT INTO pipeline_runs (pipeline_id, state, run_type, dry_run, start_date, \
             data_interval_start, data_interval_end, interval_start, interval_end, resumed_from) \
             VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(run.pipeline_id)
        .bind(run.run_type)
        .bind(run.dry_run)
        .bind(run.now.to_rfc3339())
        .bind(&run.window.0)
        .bind(&run.window.1)
        .bind(run.interval.map(|i| i.0.to_rfc3339()))
        .bind(run.interval.map(|i| i.1.to_rfc3339()))
        .bind(run.resumed_from)
        .fetch_one(&mut *tx)
        .await?
        .get::<i64, _>(0);
        let me = this_process();
        sqlx::query(
            "INSERT INTO pipeline_locks (pipeline_id, run_id, pid, instance, acquired_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (pipeline_id) DO UPDATE SET run_id = excluded.run_id, \
             pid = excluded.pid, instance = excluded.instance, acquired_at = excluded.acquired_at",
        )
        .bind(run.pipeline_id)
        .bind(id)
        .bind(me.pid)
        .bind(&me.instance)
        .bind(run.now.to_rfc3339())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Commit a run's checkpoint: every row of its window whose iterator is
    /// below `value` was acknowledged (or dead-lettered).
    pub async fn checkpoint(&self, run_id: i64, value: &str) -> Result<(), StateError> {
        sqlx::query("UPDATE pipeline_runs SET checkpoint = ? WHERE id = ?")
            .bind(value)
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The checkpoint the next run of a pipeline resumes from: that of its latest
    /// non-dry, non-backfill run, when that run did not succeed.
    pub async fn resume_point(&self, pipeline_id: &str) -> Result<Option<ResumePoint>, StateError> {
        let row = sqlx::query(
            "SELECT id, state, checkpoint FROM pipeline_runs WHERE pipeline_id = ? AND dry_run = 0 \
             AND run_type != 'backfill' ORDER BY id DESC LIMIT 1",
        )
        .bind(pipeline_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let state = RunState::parse(row.try_get("state")?);
        let checkpoint: Option<String> = row.try_get("checkpoint")?;
        Ok(match (state, checkpoint) {
            (RunState::Success, _) | (_, None) => None,
            (_, Some(checkpoint)) => Some(ResumePoint {
                run_id: row.try_get("id")?,
                checkpoint,
            }),
        })
    }

    /// The past scheduled runs of a pipeline, as the scheduler needs them.
    pub async fn schedule_history(&self, pipeline_id: &str) -> Result<ScheduleHistory, StateError> {
        let row = sqlx::query(
            "SELECT \
               (SELECT start_date FROM pipeline_runs WHERE pipeline_id = ?1 AND run_type = 'scheduled' \
                  ORDER BY id DESC LIMIT 1) AS last_start, \
               (SELECT state FROM pipeline_runs WHERE pipeline_id = ?1 AND run_type = 'scheduled' \
                  ORDER BY id DESC LIMIT 1) AS last_state, \
               (SELECT interval_end FROM pipeline_runs WHERE pipeline_id = ?1 AND run_type = 'scheduled' \
                  AND state = 'success' AND interval_end IS NOT NULL ORDER BY id DESC LIMIT 1) AS interval_end, \
               (SELECT COUNT(*) FROM pipeline_runs WHERE pipeline_id = ?1 AND run_type = 'scheduled' \
                  AND state IN ('success', 'failed')) AS outcomes",
        )
        .bind(pipeline_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(ScheduleHistory {
            last_scheduled_start: row
                .try_get::<Option<String>, _>("last_start")?
                .as_deref()
                .map(parse_time),
            last_scheduled_state: row
                .try_get::<Option<String>, _>("last_state")?
                .as_deref()
                .map(RunState::parse),
            last_interval_end: row
                .try_get::<Option<String>, _>("interval_end")?
                .as_deref()
                .map(parse_time),
            scheduled_outcome: row.try_get::<i64, _>("outcomes")? > 0,
        })
    }

    /// Pause or resume a pipeline from the command line.
    pub async fn set_paused(
        &self,
        pipeline_id: &str,
        paused: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO pipeline_state (pipeline_id, paused, changed_at) VALUES (?, ?, ?) \
             ON CONFLICT (pipeline_id) DO UPDATE SET paused = excluded.paused, changed_at = excluded.changed_at",
        )
        .bind(pipeline_id)
        .bind(paused)
        .bind(now.to_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether a pipeline was paused from the command line.
    pub async fn paused(&self, pipeline_id: &str) -> Result<bool, StateError> {
        Ok(
            sqlx::query_scalar::<_, bool>(
                "SELECT paused FROM pipeline_state WHERE pipeline_id = ?",
            )
            .bind(pipeline_id)
            .fetch_optional(&self.pool)
            .await?
            .unwrap_or(false),
        )
    }

    /// The live run holding a pipeline, if any (a lock left by a dead process is
    /// not reported).
    pub async fn lock_holder(&self, pipeline_id: &str) -> Result<Option<LockHolder>, StateError> {
        let row = sqlx::query(
            "SELECT run_id, pid, instance, acquired_at FROM pipeline_locks WHERE pipeline_id = ?",
        )
        .bind(pipeline_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let pid: i64 = row.try_get("pid")?;
        let instance: String = row.try_get("instance")?;
        if !process_alive(pid, &instance) {
            return Ok(None);
        }
        let me = this_process();
        Ok(Some(LockHolder {
            run_id: row.try_get("run_id")?,
            pid,
            since: row.try_get("acquired_at")?,
            own: pid == me.pid && instance == me.instance,
        }))
    }

    /// Release the lock this process holds on `pipeline_id`, if any, for a run
    /// that ended without recording an outcome (it panicked, or `finish_run`
    /// failed: a busy or full disk). That run, if still `running`, ends `failed`
    /// with `reason`; its checkpoint stays, so the next run resumes from it.
    /// Returns the released run's id. Only the caller knows that no run of the
    /// pipeline is in progress in this process: a live run's lock looks alike.
    pub async fn release_own_lock(
        &self,
        pipeline_id: &str,
        now: DateTime<Utc>,
        reason: &str,
    ) -> Result<Option<i64>, StateError> {
        let me = this_process();
        let mut tx = self.write_tx().await?;
        let run_id: Option<i64> = sqlx::query_scalar(
            "SELECT run_id FROM pipeline_locks WHERE pipeline_id = ? AND pid = ? AND instance = ?",
        )
        .bind(pipeline_id)
        .bind(me.pid)
        .bind(&me.instance)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(run_id) = run_id else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE pipeline_runs SET state = 'failed', end_date = ?, error = ? \
             WHERE id = ? AND state = 'running'",
        )
        .bind(now.to_rfc3339())
        .bind(reason)
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM pipeline_locks WHERE pipeline_id = ? AND run_id = ?")
            .bind(pipeline_id)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(run_id))
    }

    /// Record a run's outcome and, in the same transaction, its watermark.
    pub async fn finish_run(
        &self,
        run_id: i64,
        pipeline_id: &str,
        now: DateTime<Utc>,
        outcome: &RunOutcome,
    ) -> Result<(), StateError> {
        self.finish_run_with_snapshot(run_id, pipeline_id, now, outcome, None)
            .await
    }

    /// [`Self::finish_run`], with the diff snapshot of the rows this run had
    /// acknowledged written in the same transaction: a crash before the commit
    /// leaves the snapshot as it was (the rows are sent once more, with the
    /// same ids), never marks an unsent change as synced.
    pub async fn finish_run_with_snapshot(
        &self,
        run_id: i64,
        pipeline_id: &str,
        now: DateTime<Utc>,
        outcome: &RunOutcome,
        snapshot: Option<SnapshotCommit<'_>>,
    ) -> Result<(), StateError> {
        let c = &outcome.counts;
        let mut tx = self.write_tx().await?;
        if let Some(snapshot) = snapshot {
            snapshot::write(&mut tx, pipeline_id, now, snapshot).await?;
        }
        sqlx::query(
            "UPDATE pipeline_runs SET state = ?, end_date = ?, records_extracted = ?, \
             records_mapped = ?, event_batches_generated = ?, batches_sent = ?, requests_sent = ?, \
             bytes_sent = ?, rows_rejected = ?, values_dropped = ?, values_truncated = ?, files = ?, \
             error = ?, retries = ?, responses_429 = ?, responses_5xx = ?, timeouts = ?, \
             rate_limit_wait_ms = ?, dead_letters = ?, rows_new = ?, rows_changed = ?, \
             rows_unchanged = ?, rows_unset = ? WHERE id = ?",
        )
        .bind(outcome.state.as_str())
        .bind(now.to_rfc3339())
        .bind(to_i64(c.records_extracted))
        .bind(to_i64(c.records_mapped))
        .bind(to_i64(c.event_batches_generated))
        .bind(to_i64(c.batches_sent))
        .bind(to_i64(c.requests_sent))
        .bind(to_i64(c.bytes_sent))
        .bind(to_i64(c.rows_rejected))
        .bind(to_i64(c.values_dropped))
        .bind(to_i64(c.values_truncated))
        .bind(outcome.files.to_string())
        .bind(&outcome.error)
        .bind(to_i64(c.retries))
        .bind(to_i64(c.responses_429))
        .bind(to_i64(c.responses_5xx))
        .bind(to_i64(c.timeouts))
        .bind(to_i64(c.rate_limit_wait_ms))
        .bind(to_i64(c.dead_letters))
        .bind(to_i64(c.rows_new))
        .bind(to_i64(c.rows_changed))
        .bind(to_i64(c.rows_unchanged))
        .bind(to_i64(c.rows_unset))
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        if let Some(watermark) = &outcome.watermark {
            sqlx::query(
                "INSERT INTO watermarks (pipeline_id, value, run_id, updated_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (pipeline_id) DO UPDATE SET value = excluded.value, \
                 run_id = excluded.run_id, updated_at = excluded.updated_at",
            )
            .bind(pipeline_id)
            .bind(watermark)
            .bind(run_id)
            .bind(now.to_rfc3339())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM pipeline_locks WHERE pipeline_id = ? AND run_id = ?")
            .bind(pipeline_id)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// When the pipeline's latest successful run ended.
    pub async fn last_success(
        &self,
        pipeline_id: &str,
    ) -> Result<Option<DateTime<Utc>>, StateError> {
        let end: Option<Option<String>> = sqlx::query_scalar(
            "SELECT end_date FROM pipeline_runs WHERE pipeline_id = ? AND state = 'success' \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(pipeline_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(end.flatten().as_deref().map(parse_time))
    }

    /// The number of runs, optionally of one pipeline (for paging).
    pub async fn count_runs(&self, pipeline_id: Option<&str>) -> Result<u64, StateError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pipeline_runs WHERE (?1 IS NULL OR pipeline_id = ?1)",
        )
        .bind(pipeline_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(to_u64(n))
    }

    /// The stored watermark of a pipeline.
    pub async fn watermark(&self, pipeline_id: &str) -> Result<Option<String>, StateError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM watermarks WHERE pipeline_id = ?")
                .bind(pipeline_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Runs, newest first, optionally of one pipeline.
    pub async fn runs(
        &self,
        pipeline_id: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<RunRecord>, StateError> {
        let rows = sqlx::query(
            "SELECT * FROM pipeline_runs WHERE (?1 IS NULL OR pipeline_id = ?1) \
             ORDER BY id DESC LIMIT ?2 OFFSET ?3",
        )
        .bind(pipeline_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    /// One run by id.
    pub async fn run(&self, run_id: i64) -> Result<Option<RunRecord>, StateError> {
        let row = sqlx::query("SELECT * FROM pipeline_runs WHERE id = ?")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(record).transpose()
    }
}

/// This process, as recorded in the locks it takes.
struct ProcessId {
    pid: i64,
    instance: String,
}

fn this_process() -> &'static ProcessId {
    static ME: std::sync::OnceLock<ProcessId> = std::sync::OnceLock::new();
    ME.get_or_init(|| ProcessId {
        pid: i64::from(std::process::id()),
        instance: uuid::Uuid::new_v4().to_string(),
    })
}

/// Whether the process that took a lock still runs. Our own pid counts only with
/// our own instance token: a container restarted as pid 1 must not see its
/// previous life's lock as its own.
fn process_alive(pid: i64, instance: &str) -> bool {
    let me = this_process();
    if pid == me.pid {
        return instance == me.instance;
    }
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists and may be
        // signalled; nothing is sent.
        let rc = unsafe { libc::kill(pid, 0) };
        let exists = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        // After a crash the pid may have been reused by an unrelated program;
        // where /proc tells, only a wsync process (or a test binary linking
        // it) counts as the holder.
        if !exists {
            return false;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return true;
        };
        // Empty: a zombie (killed, not yet reaped) or a kernel thread.
        if cmd.is_empty() {
            return false;
        }
        let cmd = String::from_utf8_lossy(&cmd);
        let own_name = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        cmd.contains("wsync") || own_name.is_some_and(|n| cmd.contains(&n))
    }
    #[cfg(not(unix))]
    {
        true
    }
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map_or(DateTime::UNIX_EPOCH, |t| t.with_timezone(&Utc))
}

fn record(row: &sqlx::sqlite::SqliteRow) -> Result<RunRecord, StateError> {
    Ok(RunRecord {
        id: row.try_get("id")?,
        pipeline_id: row.try_get("pipeline_id")?,
        state: RunState::parse(row.try_get("state")?),
        run_type: row.try_get("run_type")?,
        dry_run: row.try_get("dry_run")?,
        start_date: parse_time(row.try_get("start_date")?),
        end_date: row
            .try_get::<Option<String>, _>("end_date")?
            .as_deref()
            .map(parse_time),
        data_interval_start: row.try_get("data_interval_start")?,
        data_interval_end: row.try_get("data_interval_end")?,
        counts: RunCounts {
            records_extracted: to_u64(row.try_get("records_extracted")?),
            records_mapped: to_u64(row.try_get("records_mapped")?),
            event_batches_generated: to_u64(row.try_get("event_batches_generated")?),
            batches_sent: to_u64(row.try_get("batches_sent")?),
            requests_sent: to_u64(row.try_get("requests_sent")?),
            bytes_sent: to_u64(row.try_get("bytes_sent")?),
            rows_rejected: to_u64(row.try_get("rows_rejected")?),
            values_dropped: to_u64(row.try_get("values_dropped")?),
            values_truncated: to_u64(row.try_get("values_truncated")?),
            retries: to_u64(row.try_get("retries")?),
            responses_429: to_u64(row.try_get("responses_429")?),
            responses_5xx: to_u64(row.try_get("responses_5xx")?),
            timeouts: to_u64(row.try_get("timeouts")?),
            rate_limit_wait_ms: to_u64(row.try_get("rate_limit_wait_ms")?),
            dead_letters: to_u64(row.try_get("dead_letters")?),
            rows_new: to_u64(row.try_get("rows_new")?),
            rows_changed: to_u64(row.try_get("rows_changed")?),
            rows_unchanged: to_u64(row.try_get("rows_unchanged")?),
            rows_unset: to_u64(row.try_get("rows_unset")?),
        },
        files: serde_json::from_str(row.try_get::<&str, _>("files")?)
            .unwrap_or(serde_json::Value::Null),
        error: row.try_get("error")?,
        interval: match (
            row.try_get::<Option<String>, _>("interval_start")?,
            row.try_get::<Option<String>, _>("interval_end")?,
        ) {
            (Some(a), Some(b)) => Some((parse_time(&a), parse_time(&b))),
            _ => None,
        },
        checkpoint: row.try_get("checkpoint")?,
        resumed_from: row.try_get("resumed_from")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn run_lifecycle_and_watermark_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("nested/state.db").display());
        let store = StateStore::open(&url).await.unwrap();
        let t0 = DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let new_run = |window: (Option<String>, Option<String>)| NewRun {
            pipeline_id: "p",
            run_type: "manual",
            dry_run: false,
            now: t0,
            window,
            interval: None,
            resumed_from: None,
        };
        let stale = store.start_run(&new_run((None, None))).await.unwrap();
        // Our own live run holds the pipeline.
        let busy = store.start_run(&new_run((None, None))).await.unwrap_err();
        assert!(
            busy.to_string().contains("already in progress (run 1"),
            "{busy}"
        );
        // A crashed process's lock is taken over.
        sqlx::query("UPDATE pipeline_locks SET instance = 'gone'")
            .execute(&store.pool)
            .await
            .unwrap();
        store.checkpoint(stale, "a0").await.unwrap();
        assert_eq!(
            store.resume_point("p").await.unwrap(),
            Some(ResumePoint {
                run_id: stale,
                checkpoint: "a0".into()
            })
        );
        let id = store
            .start_run(&new_run((Some("a".into()), Some("b".into()))))
            .await
            .unwrap();
        assert_eq!(
            store.run(stale).await.unwrap().unwrap().state,
            RunState::Interrupted
        );
        let outcome = RunOutcome {
            state: RunState::Success,
            counts: RunCounts {
                records_extracted: 5,
                batches_sent: 4,
                ..RunCounts::default()
            },
            files: serde_json::json!({"rejected": "x.jsonl"}),
            error: None,
            watermark: Some("b".into()),
        };
        store.finish_run(id, "p", t0, &outcome).await.unwrap();
        assert_eq!(store.watermark("p").await.unwrap().as_deref(), Some("b"));
        assert_eq!(store.resume_point("p").await.unwrap(), None);
        assert_eq!(store.lock_holder("p").await.unwrap(), None);
        let runs = store.runs(Some("p"), 10, 0).await.unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].id, id);
        assert_eq!(runs[0].state, RunState::Success);
        assert_eq!(runs[0].counts.records_extracted, 5);
        assert_eq!(runs[0].data_interval_end.as_deref(), Some("b"));
        assert_eq!(runs[0].files["rejected"], "x.jsonl");
        assert!(store.runs(Some("other"), 10, 0).await.unwrap().is_empty());
        // Reopening applies no migration twice.
        drop(store);
        let again = StateStore::open(&url).await.unwrap();
        assert_eq!(again.runs(None, 10, 0).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn stuck_lock_of_this_process_is_released_and_its_run_failed() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        let store = StateStore::open(&url).await.unwrap();
        let t0 = DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let run = NewRun {
            pipeline_id: "p",
            run_type: "scheduled",
            dry_run: false,
            now: t0,
            window: (None, None),
            interval: None,
            resumed_from: None,
        };
        assert_eq!(store.release_own_lock("p", t0, "x").await.unwrap(), None);
        // A run whose finish never came (a panic, SQLITE_BUSY at finish_run).
        let stuck = store.start_run(&run).await.unwrap();
        store.checkpoint(stuck, "c1").await.unwrap();
        let holder = store.lock_holder("p").await.unwrap().unwrap();
        assert!(holder.own, "{holder:?}");
        assert!(store.start_run(&run).await.is_err(), "still locked");
        let released = store
            .release_own_lock("p", t0, "the run panicked")
            .await
            .unwrap();
        assert_eq!(released, Some(stuck));
        assert_eq!(store.lock_holder("p").await.unwrap(), None);
        let record = store.run(stuck).await.unwrap().unwrap();
        assert_eq!(record.state, RunState::Failed);
        assert_eq!(record.error.as_deref(), Some("the run panicked"));
        // The checkpoint survives for the next run to resume from.
        assert_eq!(
            store.resume_point("p").await.unwrap(),
            Some(ResumePoint {
                run_id: stuck,
                checkpoint: "c1".into()
            })
        );
        assert!(store.start_run(&run).await.is_ok(), "free again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_run_starts_do_not_fail_with_database_locked() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        let store = StateStore::open(&url).await.unwrap();
        let ids: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
        let starts = ids.iter().map(|id| {
            let store = store.clone();
            async move {
                store
                    .start_run(&NewRun {
                        pipeline_id: id,
                        run_type: "scheduled",
                        dry_run: false,
                        now: Utc::now(),
                        window: (None, None),
                        interval: None,
                        resumed_from: None,
                    })
                    .await
            }
        });
        for result in futures::future::join_all(starts).await {
            result.unwrap();
        }
        assert_eq!(store.runs(None, 20, 0).await.unwrap().len(), 12);
    }
}
