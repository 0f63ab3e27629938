//! `wsync pause PIPELINE` / `wsync resume PIPELINE`: stop and restart a
//! pipeline's schedule, recorded in the state store (a running daemon notices
//! within 30 seconds). A run in progress is not stopped.

use std::path::Path;
use std::process::ExitCode;

use crate::clock::Clock;

/// Arguments of `wsync pause` and `wsync resume`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pipeline id (file stem under schedules/).
    pub pipeline: String,
}

/// Record the pause (`pause = true`) or its end.
pub async fn execute(root: &Path, args: Args, pause: bool) -> anyhow::Result<ExitCode> {
    let project = super::load(root)?;
    let pipeline = crate::sync::find_pipeline(&project, &args.pipeline)?;
    let state = crate::state::StateStore::for_project(&project.state).await?;
    if !pause && pipeline.paused {
        return Err(super::UsageError(format!(
            "pipeline `{}` is paused in its file; remove `paused = true` from {}",
            pipeline.id,
            pipeline.path.display()
        ))
        .into());
    }
    state
        .set_paused(&pipeline.id, pause, crate::clock::SystemClock.now())
        .await?;
    if pause {
        println!(
            "Paused `{}`: no scheduled run starts until `wsync resume {}`.",
            pipeline.id, pipeline.id
        );
    } else {
        println!(
            "Resumed `{}`: missed intervals are caught up on the daemon's next pass.",
            pipeline.id
        );
    }
    Ok(ExitCode::SUCCESS)
}
