//! Run records: a run starts (taking its pipeline's lease and, when
//! scheduled, its claim), checkpoints as batches are acknowledged, and
//! finishes with its outcome, its watermark and its diff snapshot in one
//! transaction; plus the queries `wsync runs`, the API and the scheduler read.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{
    get_u64, leases, parse_time, snapshot, to_i64, NewRun, ResumePoint, RunCounts, RunOutcome,
    RunRecord, RunState, ScheduleHistory, SnapshotCommit, StateError, StateStore,
};

impl StateStore {
    /// Record a new run as `running`, take the pipeline's lease and, for a
    /// scheduled run, its claim.
    ///
    /// Refused with [`StateError::InProgress`] while a live holder has the
    /// lease, and with [`StateError::AlreadyClaimed`] when another daemon
    /// claimed the same scheduled run. An expired lease (its holder crashed or
    /// stalled) is taken over with the next fencing token, and the runs still
    /// marked `running` become `interrupted`.
    pub async fn start_run(&self, run: &NewRun<'_>) -> Result<i64, StateError> {
        let key = match run.chunk {
            Some(chunk) => super::chunk_lease_key(run.pipeline_id, chunk),
            None => run.pipeline_id.to_owned(),
        };
        let mut tx = self.write_tx().await?;
        let token = leases::acquire(self, &mut tx, &key).await?;
        if let Some(cut_off) = run.claim_cut_off {
            // Under the lease: the run the plan saw cut off can no longer
            // commit, so what it ended as is final. A run the plan saw
            // running that committed its fire before the lease changed hands
            // needs no second run.
            let state: Option<String> =
                sqlx::query_scalar("SELECT state FROM pipeline_runs WHERE id = $1")
                    .bind(cut_off)
                    .fetch_optional(&mut *tx)
                    .await?;
            if matches!(state.as_deref(), Some("success" | "failed")) {
                return Err(StateError::AlreadyClaimed {
                    pipeline: run.pipeline_id.to_owned(),
                });
            }
        }
        if let Some(chunk) = run.chunk {
            // Checked under the chunk's lease: a run that succeeds must hold
            // it, so no success can slip in between this check and the commit.
            chunk_open(&mut tx, run.pipeline_id, chunk).await?;
        }
        sqlx::query(
            "UPDATE pipeline_runs SET state = 'interrupted', end_date = $1, \
             error = 'the process running it stopped before recording an outcome' \
             WHERE pipeline_id = $2 AND state = 'running' \
             AND COALESCE(lease_key, pipeline_id) = $3",
        )
        .bind(run.now.to_rfc3339())
        .bind(run.pipeline_id)
        .bind(&key)
        .execute(&mut *tx)
        .await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO pipeline_runs (pipeline_id, state, run_type, dry_run, start_date, \
             data_interval_start, data_interval_end, interval_start, interval_end, resumed_from, \
             fencing_token, lease_key, backfill_id, backfill_chunk, holder) \
             VALUES ($1, 'running', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             RETURNING id",
        )
        .bind(run.pipeline_id)
        .bind(run.run_type)
        .bind(i64::from(run.dry_run))
        .bind(run.now.to_rfc3339())
        .bind(&run.window.0)
        .bind(&run.window.1)
        .bind(run.interval.map(|i| i.0.to_rfc3339()))
        .bind(run.interval.map(|i| i.1.to_rfc3339()))
        .bind(run.resumed_from)
        .bind(token)
        .bind(run.chunk.map(|_| key.clone()))
        .bind(run.chunk.map(|c| c.backfill))
        .bind(run.chunk.map(|c| c.chunk))
        .bind(&leases::this_process().id)
        .fetch_one(&mut *tx)
        .await?;
        if let Some(claim) = run.claim {
            let claimed = sqlx::query(
                "INSERT INTO schedule_claims (pipeline_id, due_key, run_id, claimed_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (pipeline_id, due_key) DO NOTHING",
            )
            .bind(run.pipeline_id)
            .bind(claim)
            .bind(id)
            .bind(run.now.to_rfc3339())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if claimed == 0 {
                // Rolled back: the lease and the run record go with it.
                return Err(StateError::AlreadyClaimed {
                    pipeline: run.pipeline_id.to_owned(),
                });
            }
        }
        sqlx::query("UPDATE pipeline_leases SET run_id = $1 WHERE pipeline_id = $2")
            .bind(id)
            .bind(&key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.leases.hold(&key, id, token);
        Ok(id)
    }

    /// Commit a run's checkpoint: every row of its window whose iterator is
    /// below `value` was acknowledged (or dead-lettered). Fenced: refused with
    /// [`StateError::LeaseLost`] once another daemon took the pipeline over.
    pub async fn checkpoint(&self, run_id: i64, value: &str) -> Result<(), StateError> {
        let mut tx = self.write_tx().await?;
        leases::verify(&mut tx, run_id).await?;
        sqlx::query("UPDATE pipeline_runs SET checkpoint = $1 WHERE id = $2")
            .bind(value)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The checkpoint the next run of a pipeline resumes from: that of its latest
    /// non-dry, non-backfill run, when that run did not succeed.
    pub async fn resume_point(&self, pipeline_id: &str) -> Result<Option<ResumePoint>, StateError> {
        let row = sqlx::query(
            "SELECT id, state, checkpoint FROM pipeline_runs WHERE pipeline_id = $1 AND dry_run = 0 \
             AND run_type != 'backfill' ORDER BY id DESC LIMIT 1",
        )
        .bind(pipeline_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map_or(Ok(None), resume_point_of)
    }

    /// The latest run of a pipeline that read its own window (not a dry run,
    /// not a backfill).
    pub async fn latest_window_run(&self, pipeline_id: &str) -> Result<Option<i64>, StateError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM pipeline_runs WHERE pipeline_id = $1 AND dry_run = 0 \
             AND run_type != 'backfill' ORDER BY id DESC LIMIT 1",
        )
        .bind(pipeline_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The past scheduled runs of a pipeline, as the scheduler needs them.
    pub async fn schedule_history(&self, pipeline_id: &str) -> Result<ScheduleHistory, StateError> {
        let last = sqlx::query(
            "SELECT id, start_date, state FROM pipeline_runs WHERE pipeline_id = $1 \
             AND run_type = 'scheduled' ORDER BY id DESC LIMIT 1",
        )
        .bind(pipeline_id)
        .fetch_optional(&self.pool)
        .await?;
        let interval_end: Option<String> = sqlx::query_scalar(
            "SELECT interval_end FROM pipeline_runs WHERE pipeline_id = $1 \
             AND run_type = 'scheduled' AND state = 'success' AND interval_end IS NOT NULL \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(pipeline_id)
        .fetch_optional(&self.pool)
        .await?;
        let outcomes: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pipeline_runs WHERE pipeline_id = $1 \
             AND run_type = 'scheduled' AND state IN ('success', 'failed')",
        )
        .bind(pipeline_id)
        .fetch_one(&self.pool)
        .await?;
        let mut history = ScheduleHistory {
            last_interval_end: interval_end.as_deref().map(parse_time),
            scheduled_outcome: outcomes > 0,
            ..ScheduleHistory::default()
        };
        if let Some(last) = last {
            history.last_scheduled_id = last.try_get("id")?;
            history.last_scheduled_start = Some(parse_time(last.try_get("start_date")?));
            history.last_scheduled_state = Some(RunState::parse(last.try_get("state")?));
        }
        Ok(history)
    }

    /// Pause or resume a pipeline from the command line.
    pub async fn set_paused(
        &self,
        pipeline_id: &str,
        paused: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO pipeline_state (pipeline_id, paused, changed_at) VALUES ($1, $2, $3) \
             ON CONFLICT (pipeline_id) DO UPDATE SET paused = excluded.paused, \
             changed_at = excluded.changed_at",
        )
        .bind(pipeline_id)
        .bind(i64::from(paused))
        .bind(now.to_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether a pipeline was paused from the command line.
    pub async fn paused(&self, pipeline_id: &str) -> Result<bool, StateError> {
        let paused: Option<i64> =
            sqlx::query_scalar("SELECT paused FROM pipeline_state WHERE pipeline_id = $1")
                .bind(pipeline_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(paused.is_some_and(|p| p != 0))
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
    /// same ids), never marks an unsent change as synced. Fenced like
    /// [`Self::checkpoint`]; the lease is released with the commit.
    pub async fn finish_run_with_snapshot(
        &self,
        run_id: i64,
        pipeline_id: &str,
        now: DateTime<Utc>,
        outcome: &RunOutcome,
        snapshot: Option<SnapshotCommit<'_>>,
    ) -> Result<(), StateError> {
        let mut tx = self.write_tx().await?;
        leases::verify(&mut tx, run_id).await?;
        if let Some(snapshot) = snapshot {
            snapshot::write(&mut tx, pipeline_id, now, snapshot).await?;
        }
        record_outcome(&mut tx, run_id, now, outcome).await?;
        if let Some(watermark) = &outcome.watermark {
            sqlx::query(
                "INSERT INTO watermarks (pipeline_id, value, run_id, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (pipeline_id) DO UPDATE SET \
                 value = excluded.value, run_id = excluded.run_id, updated_at = excluded.updated_at",
            )
            .bind(pipeline_id)
            .bind(watermark)
            .bind(run_id)
            .bind(now.to_rfc3339())
            .execute(&mut *tx)
            .await?;
        }
        leases::release(&mut tx, run_id).await?;
        tx.commit().await?;
        self.leases.drop_run(run_id);
        Ok(())
    }

    /// When the pipeline's latest successful run ended.
    pub async fn last_success(
        &self,
        pipeline_id: &str,
    ) -> Result<Option<DateTime<Utc>>, StateError> {
        let end: Option<Option<String>> = sqlx::query_scalar(
            "SELECT end_date FROM pipeline_runs WHERE pipeline_id = $1 AND state = 'success' \
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
            "SELECT COUNT(*) FROM pipeline_runs WHERE ($1 IS NULL OR pipeline_id = $1)",
        )
        .bind(pipeline_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(super::to_u64(n))
    }

    /// The stored watermark of a pipeline.
    pub async fn watermark(&self, pipeline_id: &str) -> Result<Option<String>, StateError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM watermarks WHERE pipeline_id = $1")
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
            "SELECT * FROM pipeline_runs WHERE ($1 IS NULL OR pipeline_id = $1) \
             ORDER BY id DESC LIMIT $2 OFFSET $3",
        )
        .bind(pipeline_id)
        .bind(i64::from(limit))
        .bind(i64::from(offset))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    /// One run by id.
    pub async fn run(&self, run_id: i64) -> Result<Option<RunRecord>, StateError> {
        let row = sqlx::query("SELECT * FROM pipeline_runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(record).transpose()
    }
}

/// The outcome columns of a finished run.
async fn record_outcome(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    run_id: i64,
    now: DateTime<Utc>,
    outcome: &RunOutcome,
) -> Result<(), StateError> {
    let c = &outcome.counts;
    sqlx::query(
        "UPDATE pipeline_runs SET state = $1, end_date = $2, records_extracted = $3, \
         records_mapped = $4, event_batches_generated = $5, batches_sent = $6, requests_sent = $7, \
         bytes_sent = $8, rows_rejected = $9, values_dropped = $10, values_truncated = $11, \
         files = $12, error = $13, retries = $14, responses_429 = $15, responses_5xx = $16, \
         timeouts = $17, rate_limit_wait_ms = $18, dead_letters = $19, rows_new = $20, \
         rows_changed = $21, rows_unchanged = $22, rows_unset = $23 WHERE id = $24",
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A stored run from its row.
fn record(row: &AnyRow) -> Result<RunRecord, StateError> {
    Ok(RunRecord {
        id: row.try_get("id")?,
        pipeline_id: row.try_get("pipeline_id")?,
        state: RunState::parse(row.try_get("state")?),
        run_type: row.try_get("run_type")?,
        dry_run: row.try_get::<i64, _>("dry_run")? != 0,
        start_date: parse_time(row.try_get("start_date")?),
        end_date: row
            .try_get::<Option<String>, _>("end_date")?
            .as_deref()
            .map(parse_time),
        data_interval_start: row.try_get("data_interval_start")?,
        data_interval_end: row.try_get("data_interval_end")?,
        counts: counts(row)?,
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

/// The resume point a run's row (`id`, `state`, `checkpoint`) leaves: its
/// checkpoint, unless it succeeded.
pub(super) fn resume_point_of(row: &AnyRow) -> Result<Option<ResumePoint>, StateError> {
    let checkpoint: Option<String> = row.try_get("checkpoint")?;
    Ok(match (RunState::parse(row.try_get("state")?), checkpoint) {
        (RunState::Success, _) | (_, None) => None,
        (_, Some(checkpoint)) => Some(ResumePoint {
            run_id: row.try_get("id")?,
            checkpoint,
        }),
    })
}

/// Refuse to start a run of `chunk` when one of its runs succeeded, or its
/// backfill was cancelled (or is unknown).
async fn chunk_open(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    pipeline_id: &str,
    chunk: super::ChunkRef,
) -> Result<(), StateError> {
    let closed = |reason| StateError::ChunkClosed {
        pipeline: pipeline_id.to_owned(),
        backfill: chunk.backfill,
        chunk: chunk.chunk,
        reason,
    };
    let cancelled: Option<Option<String>> = sqlx::query_scalar(
        "SELECT b.cancelled_at FROM backfills b JOIN backfill_chunks c ON c.backfill_id = b.id \
         WHERE b.id = $1 AND c.chunk = $2 AND b.pipeline_id = $3",
    )
    .bind(chunk.backfill)
    .bind(chunk.chunk)
    .bind(pipeline_id)
    .fetch_optional(&mut **tx)
    .await?;
    match cancelled {
        None => return Err(closed("does not exist")),
        Some(Some(_)) => return Err(closed("was cancelled")),
        Some(None) => {}
    }
    let done: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pipeline_runs WHERE backfill_id = $1 AND backfill_chunk = $2 \
         AND state = 'success'",
    )
    .bind(chunk.backfill)
    .bind(chunk.chunk)
    .fetch_one(&mut **tx)
    .await?;
    if done > 0 {
        return Err(closed("is done already"));
    }
    Ok(())
}

/// A stored run's counters.
fn counts(row: &AnyRow) -> Result<RunCounts, sqlx::Error> {
    Ok(RunCounts {
        records_extracted: get_u64(row, "records_extracted")?,
        records_mapped: get_u64(row, "records_mapped")?,
        event_batches_generated: get_u64(row, "event_batches_generated")?,
        batches_sent: get_u64(row, "batches_sent")?,
        requests_sent: get_u64(row, "requests_sent")?,
        bytes_sent: get_u64(row, "bytes_sent")?,
        rows_rejected: get_u64(row, "rows_rejected")?,
        values_dropped: get_u64(row, "values_dropped")?,
        values_truncated: get_u64(row, "values_truncated")?,
        retries: get_u64(row, "retries")?,
        responses_429: get_u64(row, "responses_429")?,
        responses_5xx: get_u64(row, "responses_5xx")?,
        timeouts: get_u64(row, "timeouts")?,
        rate_limit_wait_ms: get_u64(row, "rate_limit_wait_ms")?,
        dead_letters: get_u64(row, "dead_letters")?,
        rows_new: get_u64(row, "rows_new")?,
        rows_changed: get_u64(row, "rows_changed")?,
        rows_unchanged: get_u64(row, "rows_unchanged")?,
        rows_unset: get_u64(row, "rows_unset")?,
    })
}
