//! The `wsync` command line: clap definitions, dispatch, and the mapping of
//! outcomes to exit codes (0 ok, 1 a run or check failed, 2 bad config or usage).
//!
//! This is the only module that uses `anyhow`; library errors are typed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::ConfigErrors;
use crate::env_vars::EnvVars;
use crate::sync::SyncError;
use crate::telemetry::{self, LogFormat};

mod backfill;
mod daemon;
mod dead_letters;
mod export;
mod output;
mod pause;
mod preview;
mod progress;
mod run;
mod runs;
mod status;
mod validate;

/// wsync: sync warehouse rows to mParticle profiles.
#[derive(Debug, Parser)]
#[command(name = "wsync", version, about, long_about = None)]
pub struct Cli {
    /// Project folder holding wsync.toml, sql/ and schedules/.
    #[arg(long, global = true, env = EnvVars::WSYNC_CONFIG, default_value = ".")]
    pub config: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, env = EnvVars::WSYNC_LOG_FORMAT, value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `debug` or `wsync=debug` (default: `warn,wsync=info`).
    #[arg(long, global = true, env = EnvVars::WSYNC_LOG)]
    pub log: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the config, connect to each warehouse, probe each model (LIMIT 0) and
    /// show where every column goes.
    Validate(validate::Args),
    /// Print the first N batches a pipeline would send, as JSON. Sends nothing,
    /// records nothing.
    Preview(preview::Args),
    /// Run a pipeline once now and print a summary.
    Run(run::Args),
    /// Run every active pipeline on its schedule until SIGTERM or SIGINT.
    Daemon(daemon::Args),
    /// Show each pipeline's state, schedule, last run, next run and watermark.
    Status(status::Args),
    /// Stop scheduling a pipeline (recorded in the state store).
    Pause(pause::Args),
    /// Schedule a paused pipeline again.
    Resume(pause::Args),
    /// Replay a range of the iterator without moving the watermark.
    Backfill(backfill::Args),
    /// Show run history, newest first.
    Runs(runs::Args),
    /// Write a pipeline's model to one Parquet file (SQL types kept). Sends
    /// nothing, records nothing.
    Export(export::Args),
    /// Inspect or purge a pipeline's dead letters.
    #[command(name = "dead-letters")]
    DeadLetters(dead_letters::Args),
}

/// An error whose exit code is 2: the user must fix the config or the command line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Parse the command line, run, and turn the outcome into an exit code.
pub fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing to a closed pipe (`wsync runs | head`)
    // would panic. The default action ends the process quietly instead, as
    // `grep` or `ls` do.
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; it only
    // resets one signal disposition to the system default.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    telemetry::init(cli.log_format, cli.log.as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            report(&error);
            ExitCode::from(exit_code(&error))
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate(args) => validate::execute(&cli.config, args).await,
        Command::Preview(args) => preview::execute(&cli.config, args).await,
        Command::Run(args) => run::execute(&cli.config, args).await,
        Command::Daemon(args) => daemon::execute(&cli.config, args).await,
        Command::Status(args) => status::execute(&cli.config, args).await,
        Command::Pause(args) => pause::execute(&cli.config, args, true).await,
        Command::Resume(args) => pause::execute(&cli.config, args, false).await,
        Command::Backfill(args) => backfill::execute(&cli.config, args).await,
        Command::Runs(args) => runs::execute(&cli.config, args).await,
        Command::DeadLetters(args) => dead_letters::execute(&cli.config, args).await,
        Command::Export(args) => export::execute(&cli.config, args).await,
    }
}

/// Load the project, turning config errors into the error the CLI reports.
pub(crate) fn load(root: &std::path::Path) -> anyhow::Result<crate::config::model::Project> {
    Ok(crate::config::load(root)?)
}

/// Load the project, open its state store and build a run context whose
/// shutdown token is cancelled by SIGTERM or SIGINT. A second signal ends the
/// process at once (exit 130), for an operator who does not want to wait.
pub(crate) async fn context(root: &std::path::Path) -> anyhow::Result<crate::sync::SyncContext> {
    let project = load(root)?;
    let state = crate::state::StateStore::for_project(&project.state).await?;
    let ctx = crate::sync::SyncContext::new(
        std::sync::Arc::new(project),
        state,
        std::sync::Arc::new(crate::clock::SystemClock),
    );
    let token = ctx.shutdown.clone();
    tokio::spawn(async move {
        let mut signals = 0;
        while wait_for_signal().await {
            signals += 1;
            if signals > 1 {
                eprintln!(
                    "second signal: exiting now; the next run resumes from the spool (or the last checkpoint)"
                );
                std::process::exit(130);
            }
            token.cancel();
        }
    });
    Ok(ctx)
}

/// The next SIGTERM or SIGINT; `false` if signals cannot be received.
async fn wait_for_signal() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return false;
        };
        tokio::select! {
            _ = term.recv() => true,
            _ = int.recv() => true,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.is_ok()
    }
}

/// `error: …` then one `  caused by: …` line per source.
fn report(error: &anyhow::Error) {
    if let Some(config) = error.downcast_ref::<ConfigErrors>() {
        eprint!("error: {config}");
        return;
    }
    eprintln!("error: {error}");
    for cause in error.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

fn exit_code(error: &anyhow::Error) -> u8 {
    let usage = error.downcast_ref::<ConfigErrors>().is_some()
        || error.downcast_ref::<UsageError>().is_some()
        || matches!(
            error.downcast_ref::<SyncError>(),
            Some(
                SyncError::UnknownPipeline { .. }
                    | SyncError::Unsupported { .. }
                    | SyncError::BadBound { .. }
            )
        );
    if usage {
        2
    } else {
        1
    }
}
