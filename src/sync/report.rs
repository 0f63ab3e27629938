//! The run report: what a run read, sent (or would send), rejected and adjusted,
//! overall and per column. Written as `report.json` beside the run's other
//! files; for an `only_read` run it is the dry-run report, whose numbers are the
//! ones a `create_and_update` run of the same data produces.

use std::path::Path;

use serde_json::{json, Value};

use crate::config::model::{Pipeline, PipelineType, PlanViolations};
use crate::mapping::plan::{destination_path, Route};
use crate::sync::RunReport;

/// The report as JSON.
pub fn to_json(report: &RunReport, pipeline: &Pipeline) -> Value {
    let r = &report.record;
    let c = &r.counts;
    let rejected: serde_json::Map<String, Value> = report
        .stats
        .rows_rejected
        .iter()
        .map(|(reason, count)| {
            let samples: Vec<Value> = report
                .samples
                .get(reason)
                .map(|rows| {
                    rows.iter()
                        .map(|row| json!({"row": row.row, "detail": row.detail, "values": row.values}))
                        .collect()
                })
                .unwrap_or_default();
            ((*reason).to_owned(), json!({"count": count, "samples": samples}))
        })
        .collect();
    let columns: Vec<Value> = report
        .plan
        .iter()
        .flat_map(|plan| plan.columns.iter())
        .enumerate()
        .map(|(i, column)| {
            let stats = report.stats.columns.get(i).cloned().unwrap_or_default();
            let read = stats.values + stats.nulls;
            let destination = match &column.route {
                Route::Send(d) => destination_path(d),
                Route::Iterator => "not sent (iterator)".to_owned(),
                Route::Ignored => "not sent (ignore mapping)".to_owned(),
            };
            json!({
                "column": column.name,
                "sql_type": column.sql_type,
                "arrow_type": column.kind.arrow_type().to_string(),
                "destination": destination,
                "values": stats.values,
                "nulls": stats.nulls,
                "null_share": if read == 0 { 0.0 } else { stats.nulls as f64 / read as f64 },
                "longest_chars": stats.longest_chars,
                "truncated": stats.truncated,
                "dropped": stats.dropped,
            })
        })
        .collect();
    let mut out = json!({
        "pipeline_id": r.pipeline_id,
        "pipeline_run_id": r.id,
        "pipeline_run_state": r.state.as_str(),
        "input_protection": pipeline.input_protection.as_str(),
        "dry_run": r.dry_run,
        "data_interval_start": r.data_interval_start,
        "data_interval_end": r.data_interval_end,
        "rows_read": c.records_extracted,
        // Rows `only_update` skipped were mapped but never sent.
        "rows_sent_or_would_be_sent": c.records_mapped
            .saturating_sub(c.rows_unchanged)
            .saturating_sub(report.protection.as_ref().map_or(0, |p| p.skipped_no_profile)),
        "rows_new": c.rows_new,
        "rows_changed": c.rows_changed,
        "rows_unchanged": c.rows_unchanged,
        "rows_unset": c.rows_unset,
        "diff": report.diff.as_ref().map(|d| json!({
            "snapshot_invalidated": d.invalidated,
            "primary_key": d.primary_key,
        })),
        "rows_rejected": c.rows_rejected,
        "rejected_by_reason": rejected,
        "batches": c.event_batches_generated,
        "batches_acknowledged": c.batches_sent,
        "requests": report.requests,
        "request_bytes": report.request_bytes,
        "values_dropped": report.stats.values_dropped,
        "values_truncated": report.stats.values_truncated,
        "columns": columns,
        "protection": report.protection.as_ref().map(super::super::resolve::ProtectionSummary::to_json),
        "spool": report.spool.as_ref().map(|s| json!({
            "dir": s.dir.display().to_string(),
            "rows": s.rows,
            "bytes": s.bytes,
            "bytes_per_row": if s.rows == 0 { 0.0 } else { s.bytes as f64 / s.rows as f64 },
            "resumed_from_run": s.resumed_from,
            "batches_already_delivered": s.batches_already_done,
            "kept": s.kept,
            "warehouse_session_secs": s.warehouse_session.as_secs_f64(),
        })),
        "error": r.error,
    });
    // Event pipelines only, so user-data reports read as before.
    if pipeline.pipeline_type == PipelineType::Events {
        if let Value::Object(map) = &mut out {
            map.insert("pipeline_type".to_owned(), json!("events"));
            map.insert("events".to_owned(), events_json(report));
            if let Some(plan) = &pipeline.data_plan {
                map.insert("data_plan".to_owned(), data_plan_json(report, plan));
            }
        }
    }
    out
}

/// Where the events went: `/v2/bulkevents` or `/v2/bulkevents/historical`.
fn events_json(report: &RunReport) -> Value {
    let e = &report.stats.events;
    json!({
        "bulkevents": {
            "events": e.recent,
            "batches": e.recent_batches,
            "requests": report.requests - report.historical_requests,
        },
        "historical": {
            "events": e.historical,
            "batches": e.historical_batches,
            "requests": report.historical_requests,
        },
    })
}

/// Data plan violations by rule, with samples.
fn data_plan_json(report: &RunReport, plan: &crate::config::model::DataPlanRef) -> Value {
    let violations: serde_json::Map<String, Value> = report
        .stats
        .plan_violations
        .iter()
        .map(|(rule, count)| {
            let samples: Vec<Value> = report
                .stats
                .plan_samples
                .get(rule)
                .map(|s| {
                    s.iter()
                        .map(|v| json!({"row": v.row, "detail": v.detail}))
                        .collect()
                })
                .unwrap_or_default();
            (
                (*rule).to_owned(),
                json!({"count": count, "samples": samples}),
            )
        })
        .collect();
    json!({
        "plan_id": plan.plan_id,
        "plan_version": plan.plan_version,
        "document": plan.document.as_ref().map(|d| d.display().to_string()),
        "violations_policy": match plan.violations {
            PlanViolations::Flag => "flag",
            PlanViolations::Block => "block",
        },
        "events_flagged": report.stats.plan_flagged_rows,
        "violations": violations,
    })
}

/// Write the report to `path` (pretty JSON), atomically: a reader or a crash
/// never sees half a report.
pub fn write(report: &RunReport, pipeline: &Pipeline, path: &Path) -> std::io::Result<()> {
    let text =
        serde_json::to_string_pretty(&to_json(report, pipeline)).map_err(std::io::Error::other)?;
    crate::sink::files::write_atomic(path, text.as_bytes())
}

/// Percentage of rows read that were rejected (0 when nothing was read).
pub fn rejected_pct(report: &RunReport) -> f64 {
    let c = &report.record.counts;
    // Events a data plan only flags count too: the gate is how a dry run
    // fails CI on plan violations.
    let rejected = c.rows_rejected + report.stats.plan_flagged_rows;
    if c.records_extracted == 0 {
        0.0
    } else {
        rejected as f64 * 100.0 / c.records_extracted as f64
    }
}
