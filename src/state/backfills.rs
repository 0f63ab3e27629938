//! Backfills cut into chunks that several processes run in parallel.
//!
//! `wsync backfill --chunks N` records the backfill and its chunks (ranges of
//! the iterator) here; then any process with a free slot (every daemon on the
//! store, and the `wsync backfill` that asked) takes a chunk by starting a run
//! under the chunk's own lease (key `<pipeline>/backfill/<id>/<chunk>`). The
//! lease is the claim: two processes that pick the same chunk race for it
//! exactly as two daemons race for a pipeline, and the loser picks another.
//!
//! A chunk's state is read from its runs, never stored beside them: it is
//! done once one of its runs succeeded (which the run's own commit recorded,
//! fenced by the chunk's lease), running while a live lease holds it, and
//! failed once [`CHUNK_ATTEMPTS`] of its runs failed. A run that was
//! interrupted (shutdown, a crash) does not count as an attempt; the next run
//! of the chunk resumes from its checkpoint.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::leases::this_process;
use super::{get_u64, millis, parse_time, to_u64, ResumePoint, RunState, StateError, StateStore};

/// Failed runs after which a chunk is given up (until `wsync backfill
/// --resume`): a chunk that fails three times is broken, not unlucky.
pub const CHUNK_ATTEMPTS: u64 = 3;

/// One chunk of one backfill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// The backfill's id.
    pub backfill: i64,
    /// The chunk's index within it (0-based).
    pub chunk: i64,
}

/// The lease key of a chunk: its pipeline's id (a file stem, so never holding
/// a `/`) and the chunk, so it never names a pipeline.
pub fn chunk_lease_key(pipeline_id: &str, r: ChunkRef) -> String {
    format!("{pipeline_id}/backfill/{}/{}", r.backfill, r.chunk)
}

/// A backfill to record.
#[derive(Debug, Clone)]
pub struct NewBackfill<'a> {
    /// Its pipeline.
    pub pipeline_id: &'a str,
    /// `--from` and `--until` as the user wrote them.
    pub requested: (&'a str, &'a str),
    /// The chunks' `[from, until)`, in the iterator's stored form, in order.
    pub chunks: &'a [(String, String)],
    /// When it was asked for.
    pub now: DateTime<Utc>,
}

/// A chunk a process can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Which chunk.
    pub id: ChunkRef,
    /// Its pipeline.
    pub pipeline_id: String,
    /// Inclusive lower bound (stored form).
    pub from: String,
    /// Exclusive upper bound (stored form).
    pub until: String,
}

/// Where a chunk stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkState {
    /// Waiting for a process with a free slot.
    Pending,
    /// A run holds its lease.
    Running,
    /// One of its runs succeeded.
    Done,
    /// [`CHUNK_ATTEMPTS`] runs failed; `wsync backfill --resume` tries again.
    Failed,
    /// The backfill was cancelled before the chunk was done.
    Cancelled,
}

impl ChunkState {
    /// The name `wsync backfill` and the API print.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A chunk as `wsync backfill` and the API show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChunkStatus {
    /// Index within the backfill.
    pub chunk: i64,
    /// Inclusive lower bound.
    pub from: String,
    /// Exclusive upper bound.
    pub until: String,
    /// Where it stands.
    pub state: ChunkState,
    /// Its latest run.
    pub run_id: Option<i64>,
    /// The process that started its latest run (`host:pid:instance`).
    pub holder: Option<String>,
    /// Failed runs that count against it.
    pub failed_attempts: u64,
    /// Rows read by its successful run.
    pub rows: u64,
    /// Batches acknowledged by its successful run.
    pub batches_sent: u64,
    /// The latest failed run's error.
    pub error: Option<String>,
}

/// A backfill and its chunks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackfillStatus {
    /// Its id.
    pub id: i64,
    /// Its pipeline.
    pub pipeline_id: String,
    /// `--from` as written.
    pub from: String,
    /// `--until` as written.
    pub until: String,
    /// When it was asked for.
    pub created_at: DateTime<Utc>,
    /// The process that asked (`host:pid:instance`).
    pub created_by: String,
    /// When it was cancelled.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Its chunks, in order.
    pub chunks: Vec<ChunkStatus>,
}

impl BackfillStatus {
    /// Chunks in `state`.
    pub fn count(&self, state: ChunkState) -> usize {
        self.chunks.iter().filter(|c| c.state == state).count()
    }

    /// No chunk is pending or running: every chunk is done, failed or
    /// cancelled.
    pub fn finished(&self) -> bool {
        self.chunks
            .iter()
            .all(|c| !matches!(c.state, ChunkState::Pending | ChunkState::Running))
    }
}

impl StateStore {
    /// Record a backfill and its chunks; returns its id.
    pub async fn create_backfill(&self, new: &NewBackfill<'_>) -> Result<i64, StateError> {
        let mut tx = self.write_tx().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO backfills (pipeline_id, from_bound, until_bound, chunks, created_at, \
             created_by) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(new.pipeline_id)
        .bind(new.requested.0)
        .bind(new.requested.1)
        .bind(i64::try_from(new.chunks.len()).unwrap_or(i64::MAX))
        .bind(new.now.to_rfc3339())
        .bind(&this_process().id)
        .fetch_one(&mut *tx)
        .await?;
        for (i, (from, until)) in new.chunks.iter().enumerate() {
            let chunk = ChunkRef {
                backfill: id,
                chunk: i64::try_from(i).unwrap_or(i64::MAX),
            };
            sqlx::query(
                "INSERT INTO backfill_chunks (backfill_id, chunk, lease_key, from_bound, \
                 until_bound) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(chunk.chunk)
            .bind(chunk_lease_key(new.pipeline_id, chunk))
            .bind(from)
            .bind(until)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// Chunks a process could start now (oldest backfill first, in chunk
    /// order), at most `limit`, optionally of one backfill: not done, not
    /// cancelled, not held by a live lease, and with attempts left. Taking
    /// one is starting its run ([`StateStore::start_run`] with the chunk),
    /// which fails for all but one of the processes that try.
    pub async fn claimable_chunks(
        &self,
        only: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Chunk>, StateError> {
        let rows = sqlx::query(
            "SELECT c.backfill_id, c.chunk, c.from_bound, c.until_bound, b.pipeline_id \
             FROM backfill_chunks c JOIN backfills b ON b.id = c.backfill_id \
             WHERE b.cancelled_at IS NULL AND ($1 IS NULL OR b.id = $1) \
             AND NOT EXISTS (SELECT 1 FROM pipeline_runs r WHERE r.backfill_id = c.backfill_id \
               AND r.backfill_chunk = c.chunk AND r.state = 'success') \
             AND (SELECT COUNT(*) FROM pipeline_runs r WHERE r.backfill_id = c.backfill_id \
               AND r.backfill_chunk = c.chunk AND r.state = 'failed' \
               AND r.id > c.retry_after_run) < $2 \
             AND NOT EXISTS (SELECT 1 FROM pipeline_leases l WHERE l.pipeline_id = c.lease_key \
               AND l.holder != '' AND l.expires_at > $3) \
             ORDER BY c.backfill_id, c.chunk LIMIT $4",
        )
        .bind(only)
        .bind(i64::try_from(CHUNK_ATTEMPTS).unwrap_or(i64::MAX))
        .bind(millis(self.options.clock.now()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut chunks = Vec::with_capacity(rows.len());
        for row in rows {
            let id = ChunkRef {
                backfill: row.try_get("backfill_id")?,
                chunk: row.try_get("chunk")?,
            };
            chunks.push(Chunk {
                id,
                pipeline_id: row.try_get("pipeline_id")?,
                from: row.try_get("from_bound")?,
                until: row.try_get("until_bound")?,
            });
        }
        Ok(chunks)
    }

    /// Where the chunk's next run starts: the checkpoint of its latest run,
    /// when that run did not succeed (read by the run itself, on whichever
    /// host took the chunk).
    pub async fn chunk_resume_point(
        &self,
        id: ChunkRef,
    ) -> Result<Option<ResumePoint>, StateError> {
        let row = sqlx::query(
            "SELECT id, state, checkpoint FROM pipeline_runs WHERE backfill_id = $1 \
             AND backfill_chunk = $2 ORDER BY id DESC LIMIT 1",
        )
        .bind(id.backfill)
        .bind(id.chunk)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map_or(Ok(None), super::runs::resume_point_of)
    }

    /// Backfills, newest first, at most `limit`: all of them, or only those
    /// with chunks still pending or running (read without looking at the
    /// finished ones, so a store with years of backfills answers as fast).
    pub async fn backfills(
        &self,
        open_only: bool,
        limit: u32,
    ) -> Result<Vec<BackfillStatus>, StateError> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM backfills b WHERE $1 = 0 OR (b.cancelled_at IS NULL AND EXISTS \
             (SELECT 1 FROM backfill_chunks c WHERE c.backfill_id = b.id AND NOT EXISTS \
              (SELECT 1 FROM pipeline_runs r WHERE r.backfill_id = c.backfill_id \
               AND r.backfill_chunk = c.chunk AND r.state = 'success'))) \
             ORDER BY id DESC LIMIT $2",
        )
        .bind(i64::from(open_only))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut all = Vec::new();
        for id in ids {
            if let Some(status) = self.backfill(id).await? {
                if !open_only || !status.finished() {
                    all.push(status);
                }
            }
        }
        Ok(all)
    }

    /// One backfill and where each of its chunks stands.
    pub async fn backfill(&self, id: i64) -> Result<Option<BackfillStatus>, StateError> {
        let Some(head) = sqlx::query("SELECT * FROM backfills WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let cancelled_at: Option<String> = head.try_get("cancelled_at")?;
        let now = millis(self.options.clock.now());
        let chunk_rows = sqlx::query(
            "SELECT c.chunk, c.from_bound, c.until_bound, c.retry_after_run, \
             (SELECT COUNT(*) FROM pipeline_leases l WHERE l.pipeline_id = c.lease_key \
               AND l.holder != '' AND l.expires_at > $2) AS leased \
             FROM backfill_chunks c WHERE c.backfill_id = $1 ORDER BY c.chunk",
        )
        .bind(id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let runs = sqlx::query(
            "SELECT id, backfill_chunk, state, error, records_extracted, batches_sent, holder \
             FROM pipeline_runs WHERE backfill_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let mut chunks = Vec::with_capacity(chunk_rows.len());
        for row in chunk_rows {
            let index: i64 = row.try_get("chunk")?;
            let retry_after: i64 = row.try_get("retry_after_run")?;
            let mut status = ChunkStatus {
                chunk: index,
                from: row.try_get("from_bound")?,
                until: row.try_get("until_bound")?,
                state: ChunkState::Pending,
                run_id: None,
                holder: None,
                failed_attempts: 0,
                rows: 0,
                batches_sent: 0,
                error: None,
            };
            let mut done = false;
            for run in runs
                .iter()
                .filter(|r| r.try_get::<i64, _>("backfill_chunk").ok() == Some(index))
            {
                let run_id: i64 = run.try_get("id")?;
                status.run_id = Some(run_id);
                status.holder = run.try_get("holder")?;
                match RunState::parse(run.try_get("state")?) {
                    RunState::Success => {
                        done = true;
                        status.rows = get_u64(run, "records_extracted")?;
                        status.batches_sent = get_u64(run, "batches_sent")?;
                    }
                    RunState::Failed if run_id > retry_after => {
                        status.failed_attempts += 1;
                        status.error = run.try_get("error")?;
                    }
                    _ => {}
                }
            }
            status.state = if done {
                ChunkState::Done
            } else if row.try_get::<i64, _>("leased")? > 0 {
                ChunkState::Running
            } else if cancelled_at.is_some() {
                ChunkState::Cancelled
            } else if status.failed_attempts >= CHUNK_ATTEMPTS {
                ChunkState::Failed
            } else {
                ChunkState::Pending
            };
            chunks.push(status);
        }
        Ok(Some(BackfillStatus {
            id,
            pipeline_id: head.try_get("pipeline_id")?,
            from: head.try_get("from_bound")?,
            until: head.try_get("until_bound")?,
            created_at: parse_time(head.try_get("created_at")?),
            created_by: head.try_get("created_by")?,
            cancelled_at: cancelled_at.as_deref().map(parse_time),
            chunks,
        }))
    }

    /// Cancel a backfill: no chunk of it starts from now on (running ones
    /// finish). A chunk run whose process died (its lease lapsed) would never
    /// be taken over now, so its record ends `interrupted` here instead of
    /// staying `running`. Returns whether it existed and was not cancelled
    /// already.
    pub async fn cancel_backfill(&self, id: i64, now: DateTime<Utc>) -> Result<bool, StateError> {
        let mut tx = self.write_tx().await?;
        let changed = sqlx::query(
            "UPDATE backfills SET cancelled_at = $1 WHERE id = $2 AND cancelled_at IS NULL",
        )
        .bind(now.to_rfc3339())
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE pipeline_runs SET state = 'interrupted', end_date = $1, \
             error = 'the process running it stopped before recording an outcome' \
             WHERE backfill_id = $2 AND state = 'running' AND NOT EXISTS \
             (SELECT 1 FROM pipeline_leases l WHERE l.pipeline_id = pipeline_runs.lease_key \
              AND l.holder != '' AND l.expires_at > $3)",
        )
        .bind(now.to_rfc3339())
        .bind(id)
        .bind(millis(self.options.clock.now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(changed > 0)
    }

    /// Give a backfill's failed chunks their attempts back (and lift a
    /// cancellation): they are claimable again. Returns how many chunks were
    /// not done.
    pub async fn retry_backfill(&self, id: i64) -> Result<u64, StateError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("UPDATE backfills SET cancelled_at = NULL WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let latest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(id) FROM pipeline_runs WHERE backfill_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query("UPDATE backfill_chunks SET retry_after_run = $1 WHERE backfill_id = $2")
            .bind(latest.unwrap_or(0))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM backfill_chunks c WHERE c.backfill_id = $1 AND NOT EXISTS \
             (SELECT 1 FROM pipeline_runs r WHERE r.backfill_id = c.backfill_id \
              AND r.backfill_chunk = c.chunk AND r.state = 'success')",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(to_u64(open))
    }
}
