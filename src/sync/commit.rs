//! Stage 5, commit: record the run's outcome (and, for a successful
//! incremental run, its watermark) in one state-store transaction, then delete
//! the spool it delivered, log the figures and write `report.json`.
//!
//! The spool is deleted only after the commit: a crash between the two leaves
//! a spool whose delivering run is recorded a success, which the next run
//! recognises and deletes without sending anything.

use std::collections::BTreeMap;

use crate::state::{RunOutcome, RunRecord, RunState, StateError};
use crate::telemetry::events;

use super::spool::SpoolDir;
use super::{report, Attempt, RunReport, SyncError};

/// Close out `attempt` after `result`, record it and report.
pub(crate) async fn finish(
    attempt: Attempt<'_>,
    result: Result<(), SyncError>,
    dry_record: Option<RunRecord>,
) -> Result<RunReport, SyncError> {
    let Attempt {
        ctx,
        pipeline,
        ids,
        mut tally,
        plan,
        stats,
        protection,
        mut spool,
        watermark,
        redelivered,
        mut diff,
        ..
    } = attempt;
    if redelivered > 0 {
        tracing::info!(count = redelivered, "Dead-lettered batches delivered.");
    }
    let interrupted = matches!(result, Err(SyncError::Interrupted { .. }));
    let mut error = result.err().map(|e| e.to_string());
    if error.is_none() {
        if let Some(first) = tally.errors.first() {
            error = Some(first.clone());
        }
    }
    let mut counts = std::mem::take(&mut tally.counts);
    let diff_summary = diff.as_ref().map(|d| super::DiffSummary {
        primary_key: pipeline
            .diff
            .as_ref()
            .map(|s| s.primary_key.clone())
            .unwrap_or_default(),
        invalidated: d.reset.clone().filter(|r| !r.is_empty()),
    });
    if let Some(d) = &diff {
        counts.rows_new = d.counts.new;
        counts.rows_changed = d.counts.changed;
        counts.rows_unchanged = d.counts.unchanged;
        counts.rows_unset = d.counts.unset;
    }
    counts.records_mapped = stats.rows_mapped;
    counts.event_batches_generated = stats.batches;
    counts.rows_rejected = stats.rejected_total();
    counts.values_dropped = stats.dropped_total();
    counts.values_truncated = stats.truncated_total();
    if counts.records_extracted == 0 {
        counts.records_extracted = stats.rows_read;
    }
    emit_adjustments(&stats, &tally.files);

    let state = match (&error, interrupted) {
        (None, _) => RunState::Success,
        (Some(_), true) => RunState::Interrupted,
        (Some(_), false) => RunState::Failed,
    };
    let files = files_json(&tally);
    let outcome = RunOutcome {
        state,
        counts: counts.clone(),
        files,
        error: error.clone(),
        watermark: if state == RunState::Success {
            watermark
        } else {
            None
        },
    };
    let now = ctx.clock.now();
    if dry_record.is_none() {
        // The snapshot moves only with a success: every batch was then
        // acknowledged or dead-lettered (dead-lettered rows are left out).
        let snapshot = match diff.as_mut() {
            Some(d) if state == RunState::Success => {
                d.unmark(&tally.dead_lettered_rows).await?;
                Some(d.commit())
            }
            _ => None,
        };
        ctx.state
            .finish_run_with_snapshot(ids.id, &pipeline.id, now, &outcome, snapshot)
            .await?;
    }
    if let Some(d) = diff {
        d.close().await;
    }
    // Committed: the spool has done its work.
    if let Some(s) = spool.as_mut() {
        // A dry run's spool (diff pipelines) served this run only.
        if state == RunState::Success || dry_record.is_some() {
            match SpoolDir::at(s.dir.clone()).remove() {
                Ok(()) => s.kept = false,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot delete the delivered spool; the next run will.");
                }
            }
        }
    }
    events::RunFinished {
        state: state.as_str(),
        records_extracted: counts.records_extracted,
        batches_sent: counts.batches_sent,
        rows_rejected: counts.rows_rejected,
        error: error.as_deref(),
    }
    .emit();
    let record = match dry_record {
        Some(mut record) => {
            record.state = state;
            record.end_date = Some(now);
            record.counts = counts.clone();
            record.files = outcome.files.clone();
            record.error = error.clone();
            record
        }
        None => ctx
            .state
            .run(ids.id)
            .await?
            .ok_or(SyncError::State(StateError::Query(
                sqlx::Error::RowNotFound,
            )))?,
    };
    if pipeline.pipeline_type == crate::config::model::PipelineType::Events {
        ctx.metrics.events_mapped(&pipeline.id, stats.events);
    }
    ctx.metrics.run_finished(
        &record,
        protection.as_ref().map_or(0, |p| p.skipped_no_profile),
    );
    let mut report = RunReport {
        record,
        stats,
        requests: tally.requests,
        historical_requests: tally.historical_requests,
        request_bytes: tally.request_bytes,
        files: tally.files,
        plan,
        samples: tally.samples,
        protection,
        spool,
        diff: diff_summary,
    };
    // The report file is part of the audit trail; failing to write it does
    // not undo a run that already happened, so it is logged, not fatal.
    let path = ids.dir.join("report.json");
    match report::write(&report, pipeline, &path) {
        Ok(()) => {
            report.files.insert("report", path);
        }
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "Cannot write the run report.");
        }
    }
    Ok(report)
}

/// The run record's `files` object: each file by name, plus the exports.
fn files_json(tally: &super::output::Tally) -> serde_json::Value {
    let mut map: serde_json::Map<String, serde_json::Value> = tally
        .files
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                serde_json::Value::String(v.display().to_string()),
            )
        })
        .collect();
    if !tally.exports.is_empty() {
        let exports = tally
            .exports
            .iter()
            .map(|(dataset, file)| {
                serde_json::json!({
                    "dataset": dataset, "path": file.path.display().to_string(),
                    "rows": file.rows, "bytes": file.bytes,
                })
            })
            .collect();
        map.insert("exports".to_owned(), serde_json::Value::Array(exports));
    }
    serde_json::Value::Object(map)
}

/// Log what mapping dropped, truncated and rejected, by reason.
fn emit_adjustments(
    stats: &crate::mapping::MapStats,
    files: &BTreeMap<&'static str, std::path::PathBuf>,
) {
    for (reason, count) in &stats.values_dropped {
        events::ValuesAdjusted {
            action: "dropped",
            reason,
            count: *count,
        }
        .emit();
    }
    for (reason, count) in &stats.values_truncated {
        events::ValuesAdjusted {
            action: "truncated",
            reason,
            count: *count,
        }
        .emit();
    }
    if let Some(path) = files.get("rejected") {
        for (reason, count) in &stats.rows_rejected {
            events::RowsRejected {
                reason,
                count: *count,
                file: &path.display().to_string(),
            }
            .emit();
        }
    }
}
