//! Stage 1's second half: the run recorded before anything is read. A
//! sending run gets a record (and the pipeline's lease, and for a scheduled
//! run its claim) in the state store; a
//! dry run leaves the state store exactly as it was and is recorded by its
//! report under `runs_dir/<pipeline>/dry-<start time>/`.

use chrono::{DateTime, Utc};

use crate::config::model::Pipeline;
use crate::state::{NewRun, RunCounts, RunRecord, RunState};
use crate::telemetry::events;

use super::plan::WindowPlan;
use super::spool::{self, Manifest};
use super::{window, RunIds, RunKind, RunMode, SyncContext, SyncError};

/// A run that has started.
pub(crate) struct Started {
    /// Its ids and folder.
    pub ids: RunIds,
    /// A dry run's record, kept here instead of in the state store.
    pub dry_record: Option<RunRecord>,
    /// The span its log lines carry (pipeline and run id).
    pub span: tracing::Span,
}

/// The window as stored text.
fn window_text(window: &WindowPlan) -> (Option<String>, Option<String>) {
    (
        window.lower.as_ref().map(window::to_text),
        window.upper.as_ref().map(window::to_text),
    )
}

/// The schedule interval a run of this kind covers.
fn interval_of(kind: &RunKind) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    match kind {
        RunKind::Scheduled { interval, .. } => *interval,
        _ => None,
    }
}

/// Record the run (and take the pipeline's lock), or make a dry run's record.
pub(crate) async fn start(
    ctx: &SyncContext,
    pipeline: &Pipeline,
    mode: RunMode,
    kind: &RunKind,
    started: DateTime<Utc>,
    window: &WindowPlan,
) -> Result<Started, SyncError> {
    let text = window_text(window);
    let interval = interval_of(kind);
    if mode.dry_run {
        let key = format!("dry-{}", started.format("%Y%m%dT%H%M%S%.6fZ"));
        let record = RunRecord {
            id: 0,
            pipeline_id: pipeline.id.clone(),
            state: RunState::Running,
            run_type: kind.as_str().to_owned(),
            dry_run: true,
            start_date: started,
            end_date: None,
            data_interval_start: text.0,
            data_interval_end: text.1,
            counts: RunCounts::default(),
            files: serde_json::Value::Null,
            error: None,
            interval,
            checkpoint: None,
            resumed_from: window.resumed_from,
        };
        let span = tracing::info_span!("run", pipeline = %pipeline.id, run_id = %key);
        return Ok(Started {
            ids: RunIds::new(ctx, pipeline, 0, key),
            dry_record: Some(record),
            span,
        });
    }
    let claim = match kind {
        RunKind::Scheduled {
            after: Some(after), ..
        } => Some(format!("after:{after}")),
        _ => None,
    };
    let id = ctx
        .state
        .start_run(&NewRun {
            pipeline_id: &pipeline.id,
            run_type: kind.as_str(),
            dry_run: false,
            now: started,
            window: text,
            interval,
            resumed_from: window.resumed_from,
            claim: claim.as_deref(),
            claim_cut_off: match kind {
                RunKind::Scheduled {
                    after: Some(after),
                    after_cut_off: true,
                    ..
                } => Some(*after),
                _ => None,
            },
            chunk: match kind {
                RunKind::Backfill { chunk, .. } => *chunk,
                _ => None,
            },
        })
        .await?;
    Ok(Started {
        ids: RunIds::new(ctx, pipeline, id, id.to_string()),
        dry_record: None,
        span: tracing::info_span!("run", pipeline = %pipeline.id, run_id = id),
    })
}

/// Say where the run starts: a resumed spool, or an unfinished run's checkpoint.
pub(crate) fn announce(span: &tracing::Span, pending: Option<&Manifest>, window: &WindowPlan) {
    let _entered = span.enter();
    let text = window_text(window);
    match pending {
        Some(m) => events::SpoolResumed {
            run_id: m.run_id,
            rows: m.rows,
            window: (text.0.as_deref(), text.1.as_deref()),
        }
        .emit(),
        None => {
            if let (Some(from), Some(lower)) = (window.resumed_from, &text.0) {
                events::RunResumed {
                    resumed_from: from,
                    checkpoint: lower,
                }
                .emit();
            }
        }
    }
}

/// The manifest a new spool starts with (incomplete; the extract completes it).
pub(crate) fn new_manifest(
    run_id: i64,
    kind: &RunKind,
    started: DateTime<Utc>,
    window: &WindowPlan,
    fingerprint: String,
) -> Manifest {
    let text = window_text(window);
    Manifest {
        version: spool::MANIFEST_VERSION,
        run_id,
        run_type: kind.as_str().to_owned(),
        delivering_run: Some(run_id),
        requested: match kind {
            RunKind::Backfill { from, until, .. } => Some((from.clone(), until.clone())),
            _ => None,
        },
        created_at: started,
        window_start: text.0,
        window_end: text.1,
        interval: interval_of(kind),
        previous_watermark: window.previous.as_ref().map(window::to_text),
        fingerprint,
        columns: Vec::new(),
        complete: false,
        rows: 0,
        chunks: 0,
        bytes: 0,
    }
}
