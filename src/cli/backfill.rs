//! `wsync backfill PIPELINE --from T --until T`: replay `[from, until)` of the
//! iterator as one recorded run that leaves the watermark where it is.

use std::path::Path;
use std::process::ExitCode;

use crate::config::model::SyncMode;
use crate::state::RunState;
use crate::sync::window::parse_bound;
use crate::sync::RunKind;

/// Arguments of `wsync backfill`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pipeline id (file stem under schedules/).
    pub pipeline: String,
    /// Inclusive lower bound, in the iterator's form (or an RFC 3339 instant for
    /// time iterators).
    #[arg(long, value_name = "T")]
    pub from: String,
    /// Exclusive upper bound, in the same forms.
    #[arg(long, value_name = "T")]
    pub until: String,
}

/// Run the backfill and print its summary; exit 1 when it failed.
pub async fn execute(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let ctx = super::context(root).await?;
    let pipeline = ctx.pipeline(&args.pipeline)?;
    if pipeline.sync_mode == SyncMode::Full {
        return Err(super::UsageError(format!(
            "pipeline `{}` is a full sync: every run reads the whole model, so there is no range \
             to replay; use `wsync run {}`",
            pipeline.id, pipeline.id
        ))
        .into());
    }
    if let SyncMode::Incremental {
        iterator_data_type,
        time_zone,
        ..
    } = &pipeline.sync_mode
    {
        // Unparsable bounds are reported by the run with the iterator's forms;
        // here only their order: `[from, until)` with from ≥ until is empty, and
        // a "successful" empty backfill would hide the typo.
        let parse = |text: &str| parse_bound(*iterator_data_type, *time_zone, text);
        if let (Some(from), Some(until)) = (parse(&args.from), parse(&args.until)) {
            if from >= until {
                return Err(super::UsageError(format!(
                    "--from {} is not before --until {}: the range [from, until) is empty; \
                     swap them",
                    args.from, args.until
                ))
                .into());
            }
        }
    }
    let progress = super::progress::Progress::start(
        std::sync::Arc::clone(&ctx.progress),
        &format!("backfill {}", args.pipeline),
    );
    let report = crate::sync::run(
        &ctx,
        &args.pipeline,
        RunKind::Backfill {
            from: args.from,
            until: args.until,
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
