//! The run report: what a run read, sent (or would send), rejected and adjusted,
//! overall and per column. Written as `report.json` beside the run's other
//! files; for an `only_read` run it is the dry-run report, whose numbers are the
//! ones a `create_and_update` run of the same data produces.

use std::path::Path;

use serde_json::{json, Value};

use crate::config::model::Pipeline;
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
    json!({
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
        "protection": report.protection.as_ref().map(|p| p.to_json()),
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
    })
}

/// Write the report to `path` (pretty JSON).
pub fn write(report: &RunReport, pipeline: &Pipeline, path: &Path) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let text =
        serde_json::to_string_pretty(&to_json(report, pipeline)).map_err(std::io::Error::other)?;
    std::fs::write(path, text)
}

/// Percentage of rows read that were rejected (0 when nothing was read).
pub fn rejected_pct(report: &RunReport) -> f64 {
    let c = &report.record.counts;
    if c.records_extracted == 0 {
        0.0
    } else {
        c.rows_rejected as f64 * 100.0 / c.records_extracted as f64
    }
}
