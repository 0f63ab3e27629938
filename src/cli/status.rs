//! `wsync status`: per pipeline, its protection, whether it is active, paused
//! or running, its schedule, last run, next run time, watermark and how far the
//! watermark lags behind now.

use std::path::Path;
use std::process::ExitCode;

use chrono::{DateTime, Utc};

use crate::clock::Clock;
use crate::config::model::{Pipeline, Schedule, SyncMode};
use crate::scheduler::plan;
use crate::state::{RunRecord, StateStore};

use super::output::{ellipsize, table};

/// Arguments of `wsync status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object per pipeline instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One pipeline's status.
struct Status<'a> {
    pipeline: &'a Pipeline,
    state: String,
    last: Option<RunRecord>,
    next: Option<DateTime<Utc>>,
    watermark: Option<String>,
    lag_secs: Option<i64>,
}

/// Print the status of every pipeline.
pub async fn execute(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let project = super::load(root)?;
    let state = StateStore::open(project.state.url.expose()).await?;
    let now = crate::clock::SystemClock.now();
    let mut rows = Vec::new();
    for pipeline in project.pipelines.values() {
        rows.push(status_of(&state, pipeline, now).await?);
    }
    if args.json {
        for s in &rows {
            let line = serde_json::json!({
                "pipeline_id": s.pipeline.id,
                "input_protection": s.pipeline.input_protection.as_str(),
                "status": s.state,
                "schedule": describe(&s.pipeline.schedule),
                "latest_pipeline_run": s.last.as_ref().map(|r| serde_json::json!({
                    "pipeline_run_id": r.id,
                    "pipeline_run_state": r.state.as_str(),
                    "pipeline_run_type": r.run_type,
                    "start_date": r.start_date.to_rfc3339(),
                    "end_date": r.end_date.map(|t| t.to_rfc3339()),
                    "data_interval_start": r.data_interval_start,
                    "data_interval_end": r.data_interval_end,
                    "records_extracted": r.counts.records_extracted,
                    "batches_sent": r.counts.batches_sent,
                    "rows_rejected": r.counts.rows_rejected,
                    "checkpoint": r.checkpoint,
                    "error": r.error,
                })),
                "next_run": s.next.map(|t| t.to_rfc3339()),
                "watermark": s.watermark,
                "watermark_lag_secs": s.lag_secs,
            });
            println!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table(&[
        "pipeline",
        "protection",
        "status",
        "schedule",
        "last run",
        "next run (UTC)",
        "watermark",
        "lag",
    ]);
    for s in &rows {
        let last = s.last.as_ref().map_or_else(
            || "never".to_owned(),
            |r| {
                let mut text = format!(
                    "#{} {} {} · {} read, {} sent",
                    r.id,
                    r.state.as_str(),
                    r.start_date.format("%Y-%m-%d %H:%M"),
                    r.counts.records_extracted,
                    r.counts.batches_sent,
                );
                if let Some(e) = &r.error {
                    text.push_str(&format!(" · {}", ellipsize(e, 60)));
                }
                text
            },
        );
        t.add_row(vec![
            s.pipeline.id.clone(),
            s.pipeline.input_protection.as_str().to_owned(),
            s.state.clone(),
            describe(&s.pipeline.schedule),
            last,
            s.next.map_or_else(
                || "-".to_owned(),
                |n| n.format("%Y-%m-%d %H:%M:%S").to_string(),
            ),
            s.watermark.clone().unwrap_or_else(|| "-".to_owned()),
            s.lag_secs.map_or_else(|| "-".to_owned(), human_duration),
        ]);
    }
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

async fn status_of<'a>(
    state: &StateStore,
    pipeline: &'a Pipeline,
    now: DateTime<Utc>,
) -> anyhow::Result<Status<'a>> {
    let running = state.lock_holder(&pipeline.id).await?;
    let paused = pipeline.paused || state.paused(&pipeline.id).await?;
    let history = state.schedule_history(&pipeline.id).await?;
    let plan = plan::plan(pipeline, &history, now, now);
    let next = if !plan.due.is_empty() {
        Some(now)
    } else {
        plan.next
    };
    let watermark = state.watermark(&pipeline.id).await?;
    let lag_secs = match (&pipeline.sync_mode, &watermark) {
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
        (Some(h), _) => format!("running (run {}, pid {})", h.run_id, h.pid),
        (None, true) => "paused".to_owned(),
        (None, false) if matches!(pipeline.schedule, Schedule::OnDemand) => "on demand".to_owned(),
        (None, false) => "active".to_owned(),
    };
    Ok(Status {
        pipeline,
        state: status,
        last: state
            .runs(Some(&pipeline.id), 1, 0)
            .await?
            .into_iter()
            .next(),
        next: if paused { None } else { next },
        watermark,
        lag_secs,
    })
}

/// A schedule in a few words.
fn describe(schedule: &Schedule) -> String {
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

/// `93784` → `1d 2h 3m`.
fn human_duration(secs: i64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    match (d, h) {
        (0, 0) => format!("{m}m"),
        (0, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h {m}m"),
    }
}
