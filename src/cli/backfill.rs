//! `wsync backfill PIPELINE --from T --until T`: replay `[from, until)` of the
//! iterator as one recorded run that leaves the watermark where it is; with
//! `--chunks N`, as N chunks that this process and every daemon on the state
//! store run in parallel (see [`crate::sync::backfill`]).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::model::SyncMode;
use crate::state::{BackfillStatus, ChunkState, RunState};
use crate::sync::backfill::ChunkOutcome;
use crate::sync::window::parse_bound;
use crate::sync::{RunKind, SyncContext};

use super::output::{ellipsize, table};
use super::UsageError;

/// Arguments of `wsync backfill`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("action").args(["pipeline", "resume", "cancel", "list"]).required(true)))]
pub struct Args {
    /// Pipeline id (file stem under schedules/).
    #[arg(requires_all = ["from", "until"])]
    pub pipeline: Option<String>,
    /// Inclusive lower bound, in the iterator's form (or an RFC 3339 instant for
    /// time iterators).
    #[arg(long, value_name = "T", requires = "pipeline")]
    pub from: Option<String>,
    /// Exclusive upper bound, in the same forms.
    #[arg(long, value_name = "T", requires = "pipeline")]
    pub until: Option<String>,
    /// Cut the range into N equal chunks that run in parallel: in this
    /// process (`--workers` at once) and in every daemon on the state store
    /// with a free slot.
    #[arg(long, value_name = "N", requires = "pipeline", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub chunks: Option<u32>,
    /// Chunks this process runs at once (default: `[daemon]
    /// max_concurrent_runs`).
    #[arg(long, value_name = "W", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: Option<u32>,
    /// Only record the chunked backfill and print its id: the daemons run it.
    #[arg(long)]
    pub detach: bool,
    /// Try a chunked backfill's failed chunks again (their attempts are
    /// reset, a cancellation lifted), then work on it as `--chunks` does.
    #[arg(long, value_name = "ID")]
    pub resume: Option<i64>,
    /// Cancel a chunked backfill: no chunk of it starts any more; running
    /// chunks finish.
    #[arg(long, value_name = "ID")]
    pub cancel: Option<i64>,
    /// List the chunked backfills and where their chunks stand.
    #[arg(long)]
    pub list: bool,
    /// With --list: one JSON object per backfill.
    #[arg(long, requires = "list")]
    pub json: bool,
}

/// Run the backfill and print its summary; exit 1 when it failed.
pub async fn execute(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let ctx = super::context(root).await?;
    if args.list {
        return list(&ctx, args.json).await;
    }
    if let Some(id) = args.cancel {
        return cancel(&ctx, id).await;
    }
    if let Some(id) = args.resume {
        let Some(status) = ctx.state.backfill(id).await? else {
            return Err(unknown(id).into());
        };
        let open = ctx.state.retry_backfill(id).await?;
        println!(
            "backfill {id} of {}: {open} chunk(s) of {} to go",
            status.pipeline_id,
            status.chunks.len()
        );
        return work(&ctx, id, &args).await;
    }
    let (Some(pipeline_id), Some(from), Some(until)) = (&args.pipeline, &args.from, &args.until)
    else {
        return Err(UsageError("give PIPELINE --from T --until T".to_owned()).into());
    };
    check_bounds(&ctx, pipeline_id, from, until)?;
    if let Some(chunks) = args.chunks {
        let id = crate::sync::backfill::enqueue(&ctx, pipeline_id, from, until, chunks).await?;
        let status = ctx.state.backfill(id).await?.ok_or_else(|| unknown(id))?;
        println!(
            "backfill {id} of {pipeline_id}: [{from}, {until}) in {} chunk(s)",
            status.chunks.len()
        );
        if args.detach {
            println!(
                "recorded; the daemons on this state store run its chunks (`wsync backfill --list` \
                 shows them, `wsync backfill --resume {id}` works on it from here)"
            );
            return Ok(ExitCode::SUCCESS);
        }
        return work(&ctx, id, &args).await;
    }
    if args.detach || args.workers.is_some() {
        return Err(UsageError("--detach and --workers go with --chunks N".to_owned()).into());
    }
    let progress = super::progress::Progress::start(
        Arc::clone(&ctx.progress),
        &format!("backfill {pipeline_id}"),
    );
    let report = crate::sync::run(
        &ctx,
        pipeline_id,
        RunKind::Backfill {
            from: from.clone(),
            until: until.clone(),
            chunk: None,
        },
    )
    .await;
    drop(progress);
    let report = report?;
    super::run::print_summary(&report);
    Ok(if report.record.state == RunState::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A full sync has no range; `[from, until)` with from ≥ until is empty, and
/// a "successful" empty backfill would hide the typo. Unparsable bounds are
/// reported by the run (or the enqueue) with the iterator's forms.
fn check_bounds(
    ctx: &SyncContext,
    pipeline_id: &str,
    from: &str,
    until: &str,
) -> Result<(), UsageError> {
    let pipeline = ctx
        .pipeline(pipeline_id)
        .map_err(|e| UsageError(e.to_string()))?;
    let SyncMode::Incremental {
        iterator_data_type,
        time_zone,
        ..
    } = &pipeline.sync_mode
    else {
        return Err(UsageError(format!(
            "pipeline `{}` is a full sync: every run reads the whole model, so there is no range \
             to replay; use `wsync run {}`",
            pipeline.id, pipeline.id
        )));
    };
    let parse = |text: &str| parse_bound(*iterator_data_type, *time_zone, text);
    if let (Some(a), Some(b)) = (parse(from), parse(until)) {
        if a >= b {
            return Err(UsageError(format!(
                "--from {from} is not before --until {until}: the range [from, until) is empty; \
                 swap them"
            )));
        }
    }
    Ok(())
}

/// Work on backfill `id` here until no chunk is pending or running, printing
/// each chunk this process ran; exit 1 unless every chunk is done.
async fn work(ctx: &SyncContext, id: i64, args: &Args) -> anyhow::Result<ExitCode> {
    let workers = args
        .workers
        .map_or(ctx.project.daemon.max_concurrent_runs, |w| w as usize);
    let on_chunk = Arc::new(|outcome: &ChunkOutcome| match outcome {
        ChunkOutcome::Ran(chunk, report) => {
            let r = &report.record;
            println!(
                "  chunk {} [{}, {}): run #{} {} · {} read, {} sent{}",
                chunk.id.chunk,
                chunk.from,
                chunk.until,
                r.id,
                r.state.as_str(),
                r.counts.records_extracted,
                r.counts.batches_sent,
                r.error
                    .as_deref()
                    .map(|e| format!(" · {}", ellipsize(e, 100)))
                    .unwrap_or_default()
            );
        }
        ChunkOutcome::Failed(chunk, e) => {
            println!("  chunk {} could not run: {e}", chunk.id.chunk);
        }
        ChunkOutcome::Idle | ChunkOutcome::Lost => {}
    });
    let status = crate::sync::backfill::work(ctx, id, workers, on_chunk).await?;
    print_status(&status);
    Ok(if status.count(ChunkState::Done) == status.chunks.len() {
        ExitCode::SUCCESS
    } else {
        if ctx.shutdown.is_cancelled() {
            println!(
                "stopped: the daemons on this state store go on with it, or `wsync backfill \
                 --resume {id}` does (interrupted chunks resume from their spool or checkpoint)"
            );
        } else {
            println!(
                "not every chunk is done: `wsync backfill --resume {id}` tries the failed ones again"
            );
        }
        ExitCode::from(1)
    })
}

async fn cancel(ctx: &SyncContext, id: i64) -> anyhow::Result<ExitCode> {
    if ctx.state.backfill(id).await?.is_none() {
        return Err(unknown(id).into());
    }
    if ctx.state.cancel_backfill(id, ctx.clock.now()).await? {
        println!("backfill {id} cancelled: no chunk of it starts any more; running chunks finish");
    } else {
        println!("backfill {id} was cancelled already");
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(ctx: &SyncContext, json: bool) -> anyhow::Result<ExitCode> {
    let all = ctx.state.backfills(false, 100).await?;
    if json {
        for b in &all {
            println!("{}", serde_json::to_string(b)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!("no chunked backfill recorded");
    }
    for b in &all {
        print_status(b);
    }
    Ok(ExitCode::SUCCESS)
}

/// A backfill's head line, then one line per chunk.
pub fn print_status(b: &BackfillStatus) {
    println!("{}", headline(b));
    let mut t = table(&[
        "chunk", "from", "until", "state", "run", "ran on", "read", "sent", "error",
    ]);
    for c in &b.chunks {
        t.add_row(vec![
            c.chunk.to_string(),
            c.from.clone(),
            c.until.clone(),
            match c.failed_attempts {
                0 => c.state.as_str().to_owned(),
                n => format!("{} ({n} failed)", c.state.as_str()),
            },
            c.run_id.map_or_else(|| "-".to_owned(), |r| format!("#{r}")),
            c.holder.clone().unwrap_or_else(|| "-".to_owned()),
            c.rows.to_string(),
            c.batches_sent.to_string(),
            c.error
                .as_deref()
                .map_or_else(|| "-".to_owned(), |e| ellipsize(e, 60)),
        ]);
    }
    println!("{t}");
}

/// `backfill 3 of orders [a, b): 5 of 8 chunks done, 2 running, 1 pending`.
pub fn headline(b: &BackfillStatus) -> String {
    let mut parts = vec![format!(
        "{} of {} chunks done",
        b.count(ChunkState::Done),
        b.chunks.len()
    )];
    for state in [
        ChunkState::Running,
        ChunkState::Pending,
        ChunkState::Failed,
        ChunkState::Cancelled,
    ] {
        let n = b.count(state);
        if n > 0 {
            parts.push(format!("{n} {}", state.as_str()));
        }
    }
    format!(
        "backfill {} of {} [{}, {}): {}",
        b.id,
        b.pipeline_id,
        b.from,
        b.until,
        parts.join(", ")
    )
}

fn unknown(id: i64) -> UsageError {
    UsageError(format!(
        "no chunked backfill {id} on this state store; `wsync backfill --list` shows them"
    ))
}
