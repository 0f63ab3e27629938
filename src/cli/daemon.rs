//! `wsync daemon`: schedule every active pipeline until SIGTERM or SIGINT.

use std::path::Path;
use std::process::ExitCode;

use crate::scheduler::Daemon;

/// Arguments of `wsync daemon`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Run until a signal; exit 0 after running pipelines recorded where they stopped.
pub async fn execute(root: &Path, _args: Args) -> anyhow::Result<ExitCode> {
    let ctx = super::context(root).await?;
    Daemon::new(ctx).run().await?;
    Ok(ExitCode::SUCCESS)
}
