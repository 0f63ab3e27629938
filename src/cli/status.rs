//! `wsync status`: per pipeline, its protection, whether it is active, paused
//! or running, its schedule, last run, next run time, watermark and how far the
//! watermark lags behind now.

use std::path::Path;
use std::process::ExitCode;

use crate::clock::Clock;
use crate::scheduler::status::pipeline_status;
use crate::state::StateStore;

use super::output::{ellipsize, table};

/// Arguments of `wsync status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object per pipeline instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Print the status of every pipeline.
pub async fn execute(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let project = super::load(root)?;
    let state = StateStore::for_project(&project.state).await?;
    let now = crate::clock::SystemClock.now();
    let mut rows = Vec::new();
    for pipeline in project.pipelines.values() {
        rows.push(pipeline_status(&state, &project.state.spool_dir, pipeline, now).await?);
    }
    let daemons = state.daemons().await?;
    let backfills = state.backfills(true, 100).await?;
    if args.json {
        for s in &rows {
            println!("{}", s.to_json());
        }
        for d in &daemons {
            println!("{}", serde_json::json!({ "daemon": d }));
        }
        for b in &backfills {
            println!("{}", serde_json::json!({ "backfill": b }));
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
        "spool",
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
            s.id.clone(),
            s.input_protection.to_owned(),
            s.status.clone(),
            s.schedule.clone(),
            last,
            s.next.map_or_else(
                || "-".to_owned(),
                |n| n.format("%Y-%m-%d %H:%M:%S").to_string(),
            ),
            s.watermark.clone().unwrap_or_else(|| "-".to_owned()),
            s.watermark_lag_secs
                .map_or_else(|| "-".to_owned(), human_duration),
            s.spool.as_ref().map_or_else(
                || "-".to_owned(),
                |p| {
                    format!(
                        "{} rows, {}, {} old{}",
                        p.rows,
                        super::run::human_bytes(p.bytes),
                        human_duration(p.age_secs.max(0)),
                        if p.complete {
                            ""
                        } else {
                            " (extract not finished)"
                        }
                    )
                },
            ),
        ]);
    }
    println!("{t}");
    if !daemons.is_empty() {
        print_daemons(&daemons, now);
    }
    if !backfills.is_empty() {
        println!("\nBackfills in progress (`wsync backfill --list` for their chunks):");
        for b in &backfills {
            println!("  {}", super::backfill::headline(b));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The daemons heard from in the last day.
fn print_daemons(daemons: &[crate::state::DaemonInfo], now: chrono::DateTime<chrono::Utc>) {
    let mut t = table(&[
        "daemon",
        "host",
        "state",
        "heartbeat",
        "runs held",
        "started",
    ]);
    for d in daemons {
        t.add_row(vec![
            d.id.clone(),
            d.host.clone(),
            if d.alive { "alive" } else { "gone" }.to_owned(),
            format!("{}s ago", (now - d.heartbeat_at).num_seconds().max(0)),
            format!("{} of {}", d.runs_held, d.max_concurrent_runs),
            d.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        ]);
    }
    println!("\nDaemons on this state store:\n{t}");
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
