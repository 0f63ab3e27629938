//! A pipeline's status as `wsync status` and `GET /pipelines/{id}/status`
//! show it: protection, active/paused/running, schedule, last run, next run,
//! watermark and its lag. Shaped after mParticle's pipeline status.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::config::model::{Pipeline, Schedule, SyncMode};
use crate::state::{RunRecord, StateError, StateStore};

use super::plan;

/// One pipeline's status.
#[derive(Debug, Clone)]
pub struct PipelineStatus {
    /// Pipeline id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `create_and_update`, `only_read` or `only_update`.
    pub input_protection: &'static str,
    /// `user_attributes` or `events`.
    pub pipeline_type: &'static str,
    /// `active`, `paused`, `on demand` or `running (run N on host:pid:instance)`.
    pub status: String,
    /// Whether a live process runs it now.
    pub running: bool,
    /// Whether it is paused (file or command line).
    pub paused: bool,
    /// The schedule in a few words.
    pub schedule: String,
    /// The latest run.
    pub last: Option<RunRecord>,
    /// The end of its latest successful run.
    pub last_success: Option<DateTime<Utc>>,
    /// When it is next due (now, if due).
    pub next: Option<DateTime<Utc>>,
    /// The stored watermark.
    pub watermark: Option<String>,
    /// How far the watermark is behind now, in seconds (time iterators).
    pub watermark_lag_secs: Option<i64>,
    /// The spool waiting to be delivered (or being delivered), if any.
    pub spool: Option<SpoolStatus>,
}

/// A pipeline's pending spool, as `wsync status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolStatus {
    /// The run that extracted it.
    pub run_id: i64,
    /// Rows in it (so far, while the extract runs).
    pub rows: u64,
    /// Bytes of its rows file.
    pub bytes: u64,
    /// Seconds since its extract started.
    pub age_secs: i64,
    /// The extract finished (an incomplete spool is discarded by the next run).
    pub complete: bool,
    /// Requests whose outcome is logged.
    pub acknowledged_requests: u64,
}

/// The status of `pipeline` at `now`.
pub async fn pipeline_status(
    state: &StateStore,
    spool_dir: &std::path::Path,
    pipeline: &Pipeline,
    now: DateTime<Utc>,
) -> Result<PipelineStatus, StateError> {
    let dir = crate::sync::spool::SpoolDir::new(spool_dir, &pipeline.id);
    // An unreadable spool folder is not a reason to fail the status.
    let spool = dir.pending().ok().flatten().map(|p| SpoolStatus {
        run_id: p.manifest.run_id,
        rows: p.manifest.rows.max(p.rows_on_disk),
        bytes: p.manifest.bytes.max(p.bytes_on_disk),
        age_secs: (now - p.manifest.created_at).num_seconds(),
        complete: p.manifest.complete,
        acknowledged_requests: p.acknowledged_requests,
    });
    let running = state.lease_holder(&pipeline.id).await?;
    let paused = super::is_paused(state, pipeline).await?;
    let history = state.schedule_history(&pipeline.id).await?;
    let plan = plan::plan(pipeline, &history, now, now);
    let next = if plan.due.is_empty() {
        plan.next
    } else {
        Some(now)
    };
    let watermark = state.watermark(&pipeline.id).await?;
    let watermark_lag_secs = match (&pipeline.sync_mode, &watermark) {
        (
            SyncMode::Incremental {
                iterator_data_type,
                time_zone,
                ..
            },
            Some(text),
        ) => crate::sync::window::parse(*iterator_data_type, text).and_then(|w| {
            let now_value = crate::sync::window::upper_at(*iterator_data_type, *time_zone, now)?;
            crate::sync::window::seconds_between(*iterator_data_type, w, now_value)
        }),
        _ => None,
    };
    let status = match (&running, paused) {
        (Some(h), _) => format!("running (run {} on {})", h.run_id, h.holder),
        (None, true) => "paused".to_owned(),
        (None, false) if matches!(pipeline.schedule, Schedule::OnDemand) => "on demand".to_owned(),
        (None, false) => "active".to_owned(),
    };
    Ok(PipelineStatus {
        id: pipeline.id.clone(),
        name: pipeline.name.clone(),
        input_protection: pipeline.input_protection.as_str(),
        pipeline_type: pipeline.pipeline_type.as_str(),
        status,
        running: running.is_some(),
        paused,
        schedule: describe(&pipeline.schedule),
        last: state
            .runs(Some(&pipeline.id), 1, 0)
            .await?
            .into_iter()
            .next(),
        last_success: state.last_success(&pipeline.id).await?,
        next: if paused { None } else { next },
        watermark,
        watermark_lag_secs,
        spool,
    })
}

impl PipelineStatus {
    /// The JSON shape of `wsync status --json` and the HTTP API.
    pub fn to_json(&self) -> Value {
        json!({
            "pipeline_id": self.id,
            "name": self.name,
            "input_protection": self.input_protection,
            "pipeline_type": self.pipeline_type,
            "status": self.status,
            "paused": self.paused,
            "running": self.running,
            "schedule": self.schedule,
            "latest_pipeline_run": self.last.as_ref().map(run_json),
            "last_success": self.last_success.map(|t| t.to_rfc3339()),
            "next_run": self.next.map(|t| t.to_rfc3339()),
            "watermark": self.watermark,
            "watermark_lag_secs": self.watermark_lag_secs,
            "spool": self.spool.as_ref().map(|s| json!({
                "run_id": s.run_id,
                "rows": s.rows,
                "bytes": s.bytes,
                "age_secs": s.age_secs,
                "complete": s.complete,
                "acknowledged_requests": s.acknowledged_requests,
            })),
        })
    }
}

/// A run record as JSON, with mParticle's field names.
pub fn run_json(r: &RunRecord) -> Value {
    json!({
        "pipeline_run_id": r.id,
        "pipeline_id": r.pipeline_id,
        "pipeline_run_state": r.state.as_str(),
        "pipeline_run_type": r.run_type,
        "dry_run": r.dry_run,
        "start_date": r.start_date.to_rfc3339(),
        "end_date": r.end_date.map(|t| t.to_rfc3339()),
        "data_interval_start": r.data_interval_start,
        "data_interval_end": r.data_interval_end,
        "interval_start": r.interval.map(|i| i.0.to_rfc3339()),
        "interval_end": r.interval.map(|i| i.1.to_rfc3339()),
        "checkpoint": r.checkpoint,
        "resumed_from": r.resumed_from,
        "records_extracted": r.counts.records_extracted,
        "records_mapped": r.counts.records_mapped,
        "event_batches_generated": r.counts.event_batches_generated,
        "batches_sent": r.counts.batches_sent,
        "rows_rejected": r.counts.rows_rejected,
        "requests": r.counts.requests_sent,
        "bytes_sent": r.counts.bytes_sent,
        "retries": r.counts.retries,
        "responses_429": r.counts.responses_429,
        "responses_5xx": r.counts.responses_5xx,
        "timeouts": r.counts.timeouts,
        "rate_limit_wait_ms": r.counts.rate_limit_wait_ms,
        "dead_letters": r.counts.dead_letters,
        "rows_new": r.counts.rows_new,
        "rows_changed": r.counts.rows_changed,
        "rows_unchanged": r.counts.rows_unchanged,
        "rows_unset": r.counts.rows_unset,
        "files": r.files,
        "error": r.error,
    })
}

/// A schedule in a few words.
pub fn describe(schedule: &Schedule) -> String {
    match schedule {
        Schedule::Interval {
            frequency,
            start,
            end,
            ..
        } => {
            let mut text = format!(
                "{} from {}",
                frequency.as_str(),
                start.format("%Y-%m-%d %H:%M")
            );
            if let Some(end) = end {
                text.push_str(&format!(" until {}", end.format("%Y-%m-%d %H:%M")));
            }
            text
        }
        Schedule::Cron {
            expression,
            time_zone,
        } => format!("cron `{expression}` {time_zone}"),
        Schedule::Once => "once".to_owned(),
        Schedule::OnDemand => "on demand".to_owned(),
    }
}
