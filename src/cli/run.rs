//! `wsync run PIPELINE`: one run now, then a summary table.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::clock::SystemClock;
use crate::state::{RunState, StateStore};
use crate::sync::{RunReport, SyncContext};

use super::output::table;

/// Arguments of `wsync run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pipeline id (file stem under schedules/).
    pub pipeline: String,
}

/// Run and print the summary; exit 1 when the run failed.
pub async fn execute(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let project = super::load(root)?;
    let state = StateStore::open(project.state.url.expose()).await?;
    let ctx = SyncContext {
        project: Arc::new(project),
        state,
        clock: Arc::new(SystemClock),
    };
    let report = crate::sync::run(&ctx, &args.pipeline, "manual").await?;
    print_summary(&report);
    if report.record.state == RunState::Success {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}

fn print_summary(report: &RunReport) {
    let r = &report.record;
    let c = &r.counts;
    let mode = if r.dry_run {
        " (only_read: nothing was sent)"
    } else {
        ""
    };
    println!(
        "Run {} of pipeline `{}`: {}{mode}",
        r.id,
        r.pipeline_id,
        r.state.as_str()
    );
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
    for (k, v) in rows {
        t.add_row(vec![k, v]);
    }
    for (reason, n) in &report.stats.rows_rejected {
        t.add_row(vec![format!("  rejected: {reason}"), n.to_string()]);
    }
    for (reason, n) in &report.stats.values_dropped {
        t.add_row(vec![format!("  dropped: {reason}"), n.to_string()]);
    }
    for (reason, n) in &report.stats.values_truncated {
        t.add_row(vec![format!("  truncated: {reason}"), n.to_string()]);
    }
    println!("{t}");
    for (name, path) in &report.files {
        let what = match *name {
            "batches" => "Would-be batches",
            "rejected" => "Rejected rows",
            other => other,
        };
        println!("{what}: {}", path.display());
    }
    if let Some(error) = &r.error {
        println!("error: {error}");
    }
}
