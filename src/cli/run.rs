//! `wsync run PIPELINE`: one run now, then a summary table.

use std::path::Path;
use std::process::ExitCode;

use crate::state::RunState;
use crate::sync::{RunKind, RunReport};

use super::output::table;

/// Arguments of `wsync run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pipeline id (file stem under schedules/).
    pub pipeline: String,
    /// Exit 1 when more than this percentage of the rows read is rejected (a CI
    /// gate for `only_read` runs); overrides the pipeline's `max_rejected_pct`.
    #[arg(long, value_name = "P")]
    pub max_rejected_pct: Option<f64>,
    /// For an only_read run: also write the would-be batches to batches.jsonl
    /// (as the pipeline's `write_batches = true` does).
    #[arg(long)]
    pub write_batches: bool,
    /// For a pipeline with [diff]: send every row this run, as if the
    /// snapshot were empty (profiles changed outside the warehouse).
    #[arg(long)]
    pub full_resync: bool,
}

/// Run and print the summary; exit 1 when the run failed.
pub async fn execute(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let mut ctx = super::context(root).await?;
    ctx.write_batches = args.write_batches;
    ctx.full_resync = args.full_resync;
    let pipeline = ctx.pipeline(&args.pipeline)?;
    if crate::scheduler::is_paused(&ctx.state, pipeline).await? {
        return Err(super::UsageError(format!(
            "pipeline `{}` is paused ({}); resume it first, or replay a range with `wsync backfill`",
            pipeline.id,
            if pipeline.paused {
                format!("paused = true in {}", pipeline.path.display())
            } else {
                format!("`wsync pause {}`; `wsync resume {}` undoes it", pipeline.id, pipeline.id)
            }
        ))
        .into());
    }
    let gate = match args.max_rejected_pct {
        Some(p) if !(0.0..=100.0).contains(&p) => {
            return Err(super::UsageError(format!(
                "--max-rejected-pct must be between 0 and 100, not {p}"
            ))
            .into())
        }
        Some(p) => Some(p),
        None => ctx.pipeline(&args.pipeline)?.max_rejected_pct,
    };
    let progress = super::progress::Progress::start(
        std::sync::Arc::clone(&ctx.progress),
        &format!("run {}", args.pipeline),
    );
    let report = crate::sync::run(&ctx, &args.pipeline, RunKind::Manual).await;
    drop(progress);
    let report = report?;
    print_summary(&report);
    if report.record.state != RunState::Success {
        return Ok(ExitCode::from(1));
    }
    if let Some(limit) = gate {
        let pct = crate::sync::report::rejected_pct(&report);
        if pct > limit {
            println!(
                "gate: {pct:.2}% of the rows read were rejected, above the limit of {limit}%; exit 1"
            );
            return Ok(ExitCode::from(1));
        }
        println!("gate: {pct:.2}% of the rows read were rejected, within the limit of {limit}%");
    }
    Ok(ExitCode::SUCCESS)
}

/// The run's outcome as a table, then its files and error.
pub(crate) fn print_summary(report: &RunReport) {
    let r = &report.record;
    let c = &r.counts;
    if r.dry_run {
        println!(
            "Dry run of pipeline `{}`: {} (only_read: nothing was sent, nothing recorded in the state store)",
            r.pipeline_id,
            r.state.as_str()
        );
    } else {
        println!(
            "Run {} of pipeline `{}`: {}",
            r.id,
            r.pipeline_id,
            r.state.as_str()
        );
    }
    if let Some((start, end)) = r.interval {
        println!("Interval: [{}, {})", start.to_rfc3339(), end.to_rfc3339());
    }
    match (&report.spool, r.resumed_from) {
        (Some(spool), _) if spool.resumed_from.is_some() => println!(
            "Resumed the spool of run {} ({} rows; the warehouse was not queried; {} batches it had delivered were not sent again).",
            spool.resumed_from.unwrap_or_default(),
            spool.rows,
            spool.batches_already_done
        ),
        (_, Some(from)) => println!("Resumed run {from} from its checkpoint."),
        _ => {}
    }
    if let Some(reason) = report.diff.as_ref().and_then(|d| d.invalidated.as_deref()) {
        println!("Snapshot invalidated: {reason}; every row was sent.");
    }
    if let Some(checkpoint) = &r.checkpoint {
        if r.state != RunState::Success {
            println!("Checkpoint: {checkpoint} (the next run starts here)");
        }
    }
    if r.data_interval_start.is_some() || r.data_interval_end.is_some() {
        println!(
            "Window: [{}, {})",
            r.data_interval_start.as_deref().unwrap_or("-∞"),
            r.data_interval_end.as_deref().unwrap_or("+∞")
        );
    }
    let mut t = table(&["figure", "value"]);
    let request_label = if r.dry_run {
        "requests that would be sent"
    } else {
        "requests sent"
    };
    let rows: Vec<(String, String)> = vec![
        ("records_extracted".into(), c.records_extracted.to_string()),
        ("records_mapped".into(), c.records_mapped.to_string()),
        (
            "event_batches_generated".into(),
            c.event_batches_generated.to_string(),
        ),
        ("batches_sent".into(), c.batches_sent.to_string()),
        (
            request_label.into(),
            format!("{} ({} bytes)", report.requests, report.request_bytes),
        ),
        ("rows_rejected".into(), c.rows_rejected.to_string()),
        ("values_dropped".into(), c.values_dropped.to_string()),
        ("values_truncated".into(), c.values_truncated.to_string()),
    ];
    let mut rows = rows;
    if report.diff.is_some() {
        let would = if r.dry_run { " (would be sent)" } else { "" };
        rows.extend([
            (format!("rows_new{would}"), c.rows_new.to_string()),
            (format!("rows_changed{would}"), c.rows_changed.to_string()),
            (
                "rows_unchanged (not sent)".to_owned(),
                c.rows_unchanged.to_string(),
            ),
            ("rows_unset".to_owned(), c.rows_unset.to_string()),
        ]);
    }
    let rows = if r.dry_run {
        rows
    } else {
        let mut rows = rows;
        rows.extend([
            (
                "http requests (all attempts)".to_owned(),
                format!("{} ({} bytes)", c.requests_sent, c.bytes_sent),
            ),
            ("retries".to_owned(), c.retries.to_string()),
            ("429 answers".to_owned(), c.responses_429.to_string()),
            ("5xx answers".to_owned(), c.responses_5xx.to_string()),
            ("timeouts".to_owned(), c.timeouts.to_string()),
            (
                "rate-limit wait".to_owned(),
                format!("{:.1} s", c.rate_limit_wait_ms as f64 / 1000.0),
            ),
            ("dead letters stored".to_owned(), c.dead_letters.to_string()),
        ]);
        if let Some(spool) = &report.spool {
            rows.push((
                "spool".to_owned(),
                format!(
                    "{} rows, {} ({})",
                    spool.rows,
                    human_bytes(spool.bytes),
                    if spool.kept {
                        format!("kept at {} for the next run", spool.dir.display())
                    } else {
                        "deleted after the commit".to_owned()
                    }
                ),
            ));
        }
        rows
    };
    for (k, v) in rows {
        t.add_row(vec![k, v]);
    }
    if let Some(protection) = &report.protection {
        for (k, v) in protection.lines() {
            t.add_row(vec![k, v]);
        }
    }
    for (reason, n) in &report.stats.rows_rejected {
        t.add_row(vec![format!("  rejected: {reason}"), n.to_string()]);
    }
    let events = &report.stats.events;
    if events.recent + events.historical > 0 {
        t.add_row(vec![
            "events to /v2/bulkevents".to_owned(),
            format!(
                "{} in {} batches, {} requests",
                events.recent,
                events.recent_batches,
                report.requests - report.historical_requests
            ),
        ]);
        t.add_row(vec![
            "events to /v2/bulkevents/historical".to_owned(),
            format!(
                "{} in {} batches, {} requests",
                events.historical, events.historical_batches, report.historical_requests
            ),
        ]);
    }
    if report.stats.plan_flagged_rows > 0 {
        t.add_row(vec![
            "events flagged by the data plan".to_owned(),
            report.stats.plan_flagged_rows.to_string(),
        ]);
    }
    for (rule, n) in &report.stats.plan_violations {
        t.add_row(vec![format!("  data plan: {rule}"), n.to_string()]);
    }
    for (reason, n) in &report.stats.values_dropped {
        t.add_row(vec![format!("  dropped: {reason}"), n.to_string()]);
    }
    for (reason, n) in &report.stats.values_truncated {
        t.add_row(vec![format!("  truncated: {reason}"), n.to_string()]);
    }
    println!("{t}");
    if r.dry_run {
        print_columns(report);
    }
    for (reason, rows) in &report.samples {
        for row in rows {
            println!("  sample {reason}: row {}: {}", row.row, row.detail);
        }
    }
    for (rule, violations) in &report.stats.plan_samples {
        for v in violations {
            println!("  sample data plan {rule}: row {}: {}", v.row, v.detail);
        }
    }
    for (name, path) in &report.files {
        let what = match *name {
            "batches" => "Would-be batches",
            "rejected" => "Rejected rows",
            "skipped" => "Rows skipped by only_update (no profile)",
            "report" => "Report",
            other => other,
        };
        println!("{what}: {}", path.display());
    }
    if let Some(error) = &r.error {
        println!("error: {error}");
    }
}

/// `12.3 MB` style sizes for people.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Per column: where it goes, what it held, what limits did to it.
fn print_columns(report: &RunReport) {
    let Some(plan) = &report.plan else { return };
    let mut t = table(&[
        "column",
        "SQL type",
        "goes to",
        "nulls",
        "longest",
        "truncated",
        "dropped",
    ]);
    for (i, column) in plan.columns.iter().enumerate() {
        let stats = report.stats.columns.get(i).cloned().unwrap_or_default();
        let read = stats.values + stats.nulls;
        let null_share = if read == 0 {
            0.0
        } else {
            stats.nulls as f64 * 100.0 / read as f64
        };
        let destination = match &column.route {
            crate::mapping::plan::Route::Send(d) => crate::mapping::plan::destination_path(d),
            crate::mapping::plan::Route::Iterator => "not sent (iterator)".to_owned(),
            crate::mapping::plan::Route::Ignored => "not sent (ignored)".to_owned(),
        };
        t.add_row(vec![
            column.name.clone(),
            column.sql_type.clone(),
            destination,
            format!("{null_share:.1}%"),
            if stats.longest_chars > 0 {
                stats.longest_chars.to_string()
            } else {
                String::new()
            },
            stats.truncated.to_string(),
            stats.dropped.to_string(),
        ]);
    }
    println!("{t}");
}
