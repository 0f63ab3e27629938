//! `wsync runs [PIPELINE]`: run history, newest first.

use std::path::Path;
use std::process::ExitCode;

use crate::state::StateStore;

use super::output::{ellipsize, table};

/// Arguments of `wsync runs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this pipeline's runs.
    pub pipeline: Option<String>,
    /// Runs per page (1 to 1000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Page number, from 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub page: u32,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Print the page.
pub async fn execute(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let project = super::load(root)?;
    if let Some(id) = &args.pipeline {
        crate::sync::find_pipeline(&project, id)?;
    }
    let state = StateStore::for_project(&project.state).await?;
    let offset = args.page.saturating_sub(1).saturating_mul(args.limit);
    let runs = state
        .runs(args.pipeline.as_deref(), args.limit, offset)
        .await?;
    if args.json {
        for r in &runs {
            let line = crate::scheduler::status::run_json(r);
            println!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() && args.page > 1 {
        println!(
            "No runs on page {} (--limit {} per page); try a lower --page.",
            args.page, args.limit
        );
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        println!(
            "No runs recorded yet. Start one with `wsync run PIPELINE`. (Dry runs of only_read \
             pipelines are not recorded here: their reports are under the runs folder, \
             .wsync/runs/<pipeline>/dry-<time>/.)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table(&[
        "run",
        "pipeline",
        "state",
        "started (UTC)",
        "secs",
        "window",
        "extracted",
        "mapped",
        "batches",
        "sent",
        "rejected",
        "error",
    ]);
    for r in &runs {
        let secs = r
            .end_date
            .map(|e| {
                format!(
                    "{:.1}",
                    (e - r.start_date).num_milliseconds() as f64 / 1000.0
                )
            })
            .unwrap_or_default();
        let window = match (&r.data_interval_start, &r.data_interval_end) {
            (None, None) => "full".to_owned(),
            (s, e) => format!(
                "[{}, {})",
                s.as_deref().unwrap_or("-∞"),
                e.as_deref().unwrap_or("+∞")
            ),
        };
        let state = match (r.dry_run, r.run_type.as_str()) {
            (true, _) => format!("{} (dry run)", r.state.as_str()),
            (false, "manual") => r.state.as_str().to_owned(),
            (false, other) => format!("{} ({other})", r.state.as_str()),
        };
        t.add_row(vec![
            r.id.to_string(),
            r.pipeline_id.clone(),
            state,
            r.start_date.format("%Y-%m-%d %H:%M:%S").to_string(),
            secs,
            window,
            r.counts.records_extracted.to_string(),
            r.counts.records_mapped.to_string(),
            r.counts.event_batches_generated.to_string(),
            r.counts.batches_sent.to_string(),
            r.counts.rows_rejected.to_string(),
            ellipsize(r.error.as_deref().unwrap_or(""), 60),
        ]);
    }
    println!("{t}");
    println!(
        "Page {} ({} run(s)); next page: --page {}",
        args.page,
        runs.len(),
        args.page + 1
    );
    Ok(ExitCode::SUCCESS)
}
