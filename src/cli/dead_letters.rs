//! `wsync dead-letters list|retry|purge PIPELINE`: rows rejected before sending and
//! batches the Events API refused, kept until retried or purged.

use std::path::Path;
use std::process::ExitCode;

use crate::state::{DeadLetterKind, StateStore};

use super::output::{ellipsize, table};

/// Arguments of `wsync dead-letters`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// Dead-letter actions.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Show a pipeline's dead letters, oldest first.
    List {
        /// Pipeline id.
        pipeline: String,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON lines (with the full payload) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-send a pipeline's refused batches now (rejected rows need a fix at
    /// the source and are not re-sent).
    Retry {
        /// Pipeline id.
        pipeline: String,
    },
    /// Delete all of a pipeline's dead letters.
    Purge {
        /// Pipeline id.
        pipeline: String,
    },
}

/// Run the action.
pub async fn execute(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let project = super::load(root)?;
    let pipeline = match &args.action {
        Action::List { pipeline, .. } | Action::Retry { pipeline } | Action::Purge { pipeline } => {
            pipeline.clone()
        }
    };
    crate::sync::find_pipeline(&project, &pipeline)?;
    let state = StateStore::for_project(&project.state).await?;
    match args.action {
        Action::List { limit, json, .. } => {
            let letters = state.dead_letters(&pipeline, None, limit, 0).await?;
            if json {
                for l in &letters {
                    let payload: serde_json::Value =
                        serde_json::from_str(&l.payload).unwrap_or(serde_json::Value::Null);
                    println!(
                        "{}",
                        serde_json::json!({
                            "id": l.id, "run_id": l.run_id, "created_at": l.created_at.to_rfc3339(),
                            "kind": l.kind.as_str(), "reason": l.reason, "message": l.message,
                            "source_request_id": l.source_request_id, "attempts": l.attempts,
                            "payload": payload,
                        })
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let (batches, rows) = state.count_dead_letters(&pipeline).await?;
            println!("Pipeline `{pipeline}`: {batches} refused batch(es), {rows} rejected row(s).");
            if letters.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = table(&[
                "id",
                "run",
                "stored (UTC)",
                "kind",
                "reason",
                "attempts",
                "detail",
            ]);
            for l in &letters {
                t.add_row(vec![
                    l.id.to_string(),
                    l.run_id.to_string(),
                    l.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    l.kind.as_str().to_owned(),
                    l.reason.clone(),
                    l.attempts.to_string(),
                    ellipsize(l.message.as_deref().unwrap_or(""), 70),
                ]);
            }
            println!("{t}");
            if letters.iter().any(|l| l.kind == DeadLetterKind::Row) {
                println!("Rejected rows need a fix in the warehouse or the model; `--json` shows their values.");
            }
        }
        Action::Retry { .. } => {
            let ctx = crate::sync::SyncContext::new(
                std::sync::Arc::new(project),
                state,
                std::sync::Arc::new(crate::clock::SystemClock),
            );
            let (delivered, refused) = crate::sync::retry_dead_letters_now(&ctx, &pipeline).await?;
            println!(
                "Pipeline `{pipeline}`: {delivered} dead-lettered batch(es) delivered and removed, {refused} refused again and kept."
            );
            if refused > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Action::Purge { .. } => {
            let n = state.purge_dead_letters(&pipeline).await?;
            println!("Purged {n} dead letter(s) of pipeline `{pipeline}`.");
        }
    }
    Ok(ExitCode::SUCCESS)
}
