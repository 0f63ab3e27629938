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

pub use dead_letters::{DeadLetter, DeadLetterKind, NewDeadLetter};

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
    /// `manual` or `scheduled`.
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
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        Ok(Self { pool })
    }

    /// Record a new run as `running`. Any run of the same pipeline still marked
    /// `running` was cut off (its process is gone) and becomes `interrupted`.
    pub async fn start_run(
        &self,
        pipeline_id: &str,
        run_type: &str,
        dry_run: bool,
        now: DateTime<Utc>,
        window: (Option<String>, Option<String>),
    ) -> Result<i64, StateError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE pipeline_runs SET state = 'interrupted', end_date = ?, \
             error = 'the process running it stopped before recording an outcome' \
             WHERE pipeline_id = ? AND state = 'running'",
        )
        .bind(now.to_rfc3339())
        .bind(pipeline_id)
        .execute(&mut *tx)
        .await?;
        let id = sqlx::query(
            "INSERT INTO pipeline_runs (pipeline_id, state, run_type, dry_run, start_date, \
             data_interval_start, data_interval_end) VALUES (?, 'running', ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(pipeline_id)
        .bind(run_type)
        .bind(dry_run)
        .bind(now.to_rfc3339())
        .bind(window.0)
        .bind(window.1)
        .fetch_one(&mut *tx)
        .await?
        .get::<i64, _>(0);
        tx.commit().await?;
        Ok(id)
    }

    /// Record a run's outcome and, in the same transaction, its watermark.
    pub async fn finish_run(
        &self,
        run_id: i64,
        pipeline_id: &str,
        now: DateTime<Utc>,
        outcome: &RunOutcome,
    ) -> Result<(), StateError> {
        let c = &outcome.counts;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE pipeline_runs SET state = ?, end_date = ?, records_extracted = ?, \
             records_mapped = ?, event_batches_generated = ?, batches_sent = ?, requests_sent = ?, \
             bytes_sent = ?, rows_rejected = ?, values_dropped = ?, values_truncated = ?, files = ?, \
             error = ?, retries = ?, responses_429 = ?, responses_5xx = ?, timeouts = ?, \
             rate_limit_wait_ms = ?, dead_letters = ? WHERE id = ?",
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
        tx.commit().await?;
        Ok(())
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

fn to_i64(v: u64) -> i64 {
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
        },
        files: serde_json::from_str(row.try_get::<&str, _>("files")?)
            .unwrap_or(serde_json::Value::Null),
        error: row.try_get("error")?,
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
        let stale = store
            .start_run("p", "manual", false, t0, (None, None))
            .await
            .unwrap();
        let id = store
            .start_run(
                "p",
                "manual",
                false,
                t0,
                (Some("a".into()), Some("b".into())),
            )
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
}
