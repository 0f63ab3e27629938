//! `wsync preview PIPELINE --limit N`.

use std::path::Path;
use std::process::ExitCode;

/// Arguments of `wsync preview`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pipeline id (file stem under schedules/).
    pub pipeline: String,
    /// How many batches to show.
    #[arg(long, default_value_t = 10)]
    pub limit: u64,
}

/// Print the first batches as a JSON array on stdout; counters on stderr.
pub async fn execute(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let project = super::load(root)?;
    let pipeline = crate::sync::find_pipeline(&project, &args.pipeline)?;
    let (batches, stats) = crate::sync::preview(&project, pipeline, args.limit).await?;
    println!("{}", serde_json::to_string_pretty(&batches)?);
    eprintln!(
        "{} batch(es) from {} row(s) read; {} row(s) would be rejected, {} value(s) dropped, {} truncated",
        batches.len(),
        stats.rows_read,
        stats.rejected_total(),
        stats.dropped_total(),
        stats.truncated_total()
    );
    Ok(ExitCode::SUCCESS)
}
