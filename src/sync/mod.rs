//! One pipeline run, as stages with one direction of flow:
//!
//! 1. **plan** (`plan`): the iterator window (watermark, lag, the checkpoint
//!    of an unfinished run, backfill bounds or a [`backfill`] chunk's), or the
//!    pipeline's pending spool;
//! 2. **extract → spool** (`extract`, [`spool`]): the warehouse is read at
//!    its own speed into a local spool and the connection closed, whatever
//!    delivery is doing;
//! 3. **transform** (`transform`): chunks mapped to batches, input
//!    protection applied ([`diff`]: only new and changed rows go on);
//! 4. **deliver** ([`output`], set up by `prepare`): every output takes each
//!    transformed chunk: the Events API, the JSONL run files, dead letters,
//!    Parquet exports;
//! 5. **commit** ([`commit`]): the outcome and the watermark in one state-store
//!    transaction, then the spool is deleted and the report written.
//!
//! The watermark moves only when every batch of the window was acknowledged or
//! dead-lettered. A run killed at any instant resumes: from its complete spool
//! (no second warehouse query; only requests that were in flight are re-sent),
//! else from its last checkpoint.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::Instrument;

use crate::clock::Clock;
use crate::config::model::{InputProtection, Pipeline, Project, SyncMode};
use crate::mapping::{MapStats, Mapper, MappingPlan, RejectedRow};
use crate::sink::delivery::{Deliverer, DeliveryConfig};
use crate::sink::retry::RetryPolicy;
use crate::sink::EventsApiClient;
use crate::state::{RunRecord, StateStore};
use crate::telemetry::events;

pub mod backfill;
pub mod budget;
pub mod commit;
pub mod diff;
mod error;
mod extract;
pub mod inspect;
pub mod output;
mod plan;
mod prepare;
mod record;
pub mod redeliver;
pub mod report;
pub mod spool;
mod transform;
pub mod window;

pub use error::SyncError;
pub use inspect::{export_once, preview, probe, Probe};
pub use redeliver::Redelivered;

use extract::Extract;
use output::{RunEnd, RunOutput, Tally};
use plan::WindowPlan;
use spool::{Manifest, SpoolDir};

/// What a finished run reports back (also for failed runs).
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The stored record, as finished.
    pub record: RunRecord,
    /// Mapping counters by reason.
    pub stats: MapStats,
    /// Requests that were (or, in a dry run, would have been) sent.
    pub requests: u64,
    /// Of which to `/v2/bulkevents/historical` (event pipelines).
    pub historical_requests: u64,
    /// Their body bytes.
    pub request_bytes: u64,
    /// Files written.
    pub files: BTreeMap<&'static str, PathBuf>,
    /// The mapping used, once the model was probed.
    pub plan: Option<MappingPlan>,
    /// The first few rejected rows of each reason.
    pub samples: BTreeMap<&'static str, Vec<RejectedRow>>,
    /// What input protection did, when the pipeline has a resolver.
    pub protection: Option<crate::resolve::ProtectionSummary>,
    /// The run's spool, when it delivered from one.
    pub spool: Option<SpoolSummary>,
    /// The snapshot diff, for diff pipelines.
    pub diff: Option<DiffSummary>,
}

/// What the snapshot diff did, for the run summary and `report.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffSummary {
    /// The key columns.
    pub primary_key: Vec<String>,
    /// Why every row was sent this run (the snapshot was invalidated).
    pub invalidated: Option<String>,
}

/// What a run's spool held, for the run summary and `report.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSummary {
    /// Its folder (deleted once the run committed).
    pub dir: PathBuf,
    /// Rows spooled.
    pub rows: u64,
    /// Bytes of the rows file.
    pub bytes: u64,
    /// The earlier run whose spool this run resumed (no warehouse query).
    pub resumed_from: Option<i64>,
    /// Batches not sent again because that earlier run had delivered them.
    pub batches_already_done: u64,
    /// Whether the spool is still on disk (the run did not commit).
    pub kept: bool,
    /// How long the warehouse connection was open, connect to close (zero
    /// when the spool was resumed).
    pub warehouse_session: std::time::Duration,
}

/// Shared services a run needs.
#[derive(Debug, Clone)]
pub struct SyncContext {
    /// The validated project.
    pub project: Arc<Project>,
    /// The state store.
    pub state: StateStore,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Cancelled on SIGTERM/SIGINT: runs stop reading, let in-flight requests
    /// finish within `[daemon] shutdown_grace_secs`, and record a checkpoint.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Prometheus metrics of this process.
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// Live counters of the run in progress (progress bars).
    pub progress: Arc<crate::telemetry::progress::RunProgress>,
    /// Dry runs write their would-be batches even if the pipeline does not
    /// ask (`wsync run --write-batches`).
    pub write_batches: bool,
    /// Diff pipelines send every row this run (`wsync run --full-resync`).
    pub full_resync: bool,
}

/// What starts a run and which window it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunKind {
    /// `wsync run` or a trigger: from the watermark (or an unfinished run's
    /// checkpoint) to now.
    Manual,
    /// Started by the schedule. Interval schedules pass the interval whose end
    /// is the run's upper bound.
    Scheduled {
        /// `[start, end)` of the schedule interval.
        interval: Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>,
        /// The scheduled run this one follows (0: the first), as the daemon's
        /// plan saw it. Only one scheduled run can follow a given one: the
        /// state store's claim on it makes a plan two daemons made from the
        /// same history start once (`None`: no claim, e.g. tests).
        after: Option<i64>,
        /// The plan saw that run cut off (running with an expired lease, or
        /// interrupted) and this run resumes its fire: it starts only if that
        /// run still has not finished, since a run the plan saw running may
        /// have committed its fire meanwhile.
        after_cut_off: bool,
    },
    /// `wsync backfill`: replay `[from, until)` (as the user wrote them) without
    /// moving the watermark.
    Backfill {
        /// Inclusive lower bound.
        from: String,
        /// Exclusive upper bound.
        until: String,
        /// A chunk of a parallel backfill ([`backfill`]): the run holds the
        /// chunk's lease and spool, so it runs beside the pipeline's own runs
        /// and the backfill's other chunks.
        chunk: Option<crate::state::ChunkRef>,
    },
}

impl RunKind {
    /// The stored `run_type`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Scheduled { .. } => "scheduled",
            Self::Backfill { .. } => "backfill",
        }
    }
}

impl SyncContext {
    /// A context with the system clock's peer services and its own shutdown token.
    pub fn new(project: Arc<Project>, state: StateStore, clock: Arc<dyn Clock>) -> Self {
        Self {
            project,
            state,
            clock,
            shutdown: tokio_util::sync::CancellationToken::new(),
            metrics: Arc::default(),
            progress: Arc::default(),
            write_batches: false,
            full_resync: false,
        }
    }

    /// The pipeline with this id, or an error listing the ones that exist.
    pub fn pipeline(&self, id: &str) -> Result<&Pipeline, SyncError> {
        find_pipeline(&self.project, id)
    }
}

/// The pipeline with this id in `project`, or an error listing the ones that exist.
pub fn find_pipeline<'p>(project: &'p Project, id: &str) -> Result<&'p Pipeline, SyncError> {
    project
        .pipelines
        .get(id)
        .ok_or_else(|| SyncError::UnknownPipeline {
            id: id.to_owned(),
            available: project
                .pipelines
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// What kind of run this is, decided once from the pipeline and how it was
/// started: everything else asks this, not the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunMode {
    /// `only_read`: sends nothing, records nothing in the state store.
    pub dry_run: bool,
    /// Sends to a feed (and so extracts into a spool first).
    pub delivers: bool,
    /// A success stores the window's end as the watermark (not backfills).
    pub moves_watermark: bool,
    /// Commits checkpoints that a later run resumes from: the pipeline's own
    /// runs, and the chunks of a parallel backfill (a plain backfill is
    /// simply asked for again).
    pub checkpoints: bool,
    /// Holds the pipeline's own lease (every run but a backfill chunk's): only
    /// such a run re-sends the pipeline's dead letters, which no other run of
    /// the pipeline can be doing at the same time.
    pub holds_pipeline: bool,
}

impl RunMode {
    /// The mode of a run of `pipeline` started as `kind`.
    pub fn of(pipeline: &Pipeline, kind: &RunKind) -> Self {
        let dry_run = pipeline.input_protection == InputProtection::OnlyRead;
        Self {
            dry_run,
            delivers: !dry_run && pipeline.feed.is_some(),
            moves_watermark: !dry_run && !matches!(kind, RunKind::Backfill { .. }),
            checkpoints: !dry_run && !matches!(kind, RunKind::Backfill { chunk: None, .. }),
            holds_pipeline: !matches!(kind, RunKind::Backfill { chunk: Some(_), .. }),
        }
    }
}

/// The mapper of a run of `pipeline`: events older than 30 days before
/// `as_of` are historical, and a data plan document, when the pipeline names
/// one, is loaded (relative to the project) and checked against every event.
pub fn mapper_for(
    project: &Project,
    pipeline: &Pipeline,
    plan: MappingPlan,
    as_of: chrono::DateTime<chrono::Utc>,
) -> Result<Mapper, SyncError> {
    let mapper = Mapper::new(plan, pipeline).as_of(as_of);
    let Some(data_plan) = &pipeline.data_plan else {
        return Ok(mapper);
    };
    let Some(document) = &data_plan.document else {
        return Ok(mapper);
    };
    let loaded = crate::mapping::data_plan::DataPlan::load(
        &project.root.join(document),
        data_plan.plan_version,
    )
    .map_err(|message| SyncError::DataPlan {
        pipeline: pipeline.id.clone(),
        message,
    })?;
    Ok(mapper.with_data_plan(
        Arc::new(loaded),
        data_plan.violations == crate::config::model::PlanViolations::Block,
    ))
}

/// The deliverer for a feed's settings.
pub fn deliverer_for(feed: &crate::config::model::Feed) -> Result<Deliverer, SyncError> {
    let d = &feed.delivery;
    let config = DeliveryConfig {
        rate_per_sec: (d.rate_limit_per_sec > 0).then(|| f64::from(d.rate_limit_per_sec)),
        max_in_flight: d.max_in_flight,
        gzip: d.gzip,
        retry: RetryPolicy {
            max_attempts: d.retry_max_attempts,
            initial_backoff: d.retry_initial_backoff,
            max_backoff: d.retry_max_backoff,
            deadline: d.retry_deadline,
        },
    };
    Ok(Deliverer::new(EventsApiClient::new(feed)?, config))
}

/// `wsync dead-letters retry`: re-send a pipeline's dead-lettered batches now.
/// Returns (delivered, still refused). Delivered ones are removed; refused ones
/// stay with one more attempt counted.
pub async fn retry_dead_letters_now(
    ctx: &SyncContext,
    pipeline_id: &str,
) -> Result<(u64, u64), SyncError> {
    let pipeline = ctx.pipeline(pipeline_id)?;
    let Some(feed) = &pipeline.feed else {
        return Err(SyncError::Unsupported {
            pipeline: pipeline.id.clone(),
            message: "it has no feed to send to; purge its dead letters or add a feed".to_owned(),
        });
    };
    let deliverer = deliverer_for(&ctx.project.feeds[feed])?;
    let done = redeliver::redeliver(&ctx.state, &pipeline.id, &deliverer).await?;
    Ok((done.delivered, done.refused))
}

/// The run as recorded: its id and where its files go.
#[derive(Debug, Clone)]
pub(crate) struct RunIds {
    /// The state store's run id (0 for a dry run, which has no record).
    pub id: i64,
    /// The run's folder name under runs_dir/<pipeline>/ and `{run_id}` in
    /// export paths: the id, or `dry-<start time>`.
    pub key: String,
    /// `runs_dir/<pipeline>/<key>/`.
    pub dir: PathBuf,
}

/// Run `pipeline_id` once now and record it.
///
/// `Err` means the run could not be recorded at all (unknown pipeline, state
/// store down, SQL refused, already in progress, too little disk). Once
/// recorded, a run that fails returns `Ok` with `record.state == Failed` (or
/// `Interrupted` on shutdown) and the error in `record.error`.
pub async fn run(
    ctx: &SyncContext,
    pipeline_id: &str,
    kind: RunKind,
) -> Result<RunReport, SyncError> {
    let pipeline = ctx.pipeline(pipeline_id)?.clone();
    let mode = RunMode::of(&pipeline, &kind);
    let started = ctx.clock.now();

    // 1. Plan: deliver the pipeline's pending spool, or read a new window.
    let spool = mode
        .delivers
        .then(|| backfill::spool_dir(&ctx.project.state.spool_dir, &pipeline.id, &kind));
    let fingerprint = plan::fingerprint(&ctx.project, &pipeline);
    let pending = match &spool {
        Some(dir) => plan::pending_spool(ctx, &kind, dir, &fingerprint, started).await?,
        None => None,
    };
    let after = match &kind {
        RunKind::Scheduled {
            after,
            after_cut_off,
            ..
        } => (*after, *after_cut_off),
        _ => (None, false),
    };
    let (window, kind) = match &pending {
        Some(m) => (
            WindowPlan::from_manifest(&pipeline, m)?,
            kind_of(m, &kind, after),
        ),
        None => (
            plan::plan_window(ctx, &pipeline, &kind, started).await?,
            kind,
        ),
    };
    if let (Some(dir), None) = (&spool, &pending) {
        // A new extract needs room; a resumed spool is already on disk.
        spool::check_free_disk(dir.path(), ctx.project.state.min_free_disk_mb)?;
    }
    let started_run = record::start(ctx, &pipeline, mode, &kind, started, &window).await?;
    let record::Started {
        ids,
        dry_record,
        span,
    } = started_run;
    record::announce(&span, pending.as_ref(), &window);
    // A dry run of a diff pipeline spools too (into its run folder): the diff
    // needs the whole snapshot before it decides the first row.
    let spool = spool.or_else(|| {
        (mode.dry_run && pipeline.diff.is_some()).then(|| SpoolDir::at(ids.dir.join("spool")))
    });
    let spool = spool.map(|dir| {
        let plan = match pending {
            Some(mut m) => {
                m.delivering_run = Some(ids.id);
                SpoolPlan::Resume(m)
            }
            None => SpoolPlan::Fresh(record::new_manifest(
                ids.id,
                &kind,
                started,
                &window,
                fingerprint,
            )),
        };
        (dir, plan)
    });
    let mut attempt = Attempt {
        ctx,
        pipeline: &pipeline,
        mode,
        ids,
        tally: Tally::default(),
        plan: None,
        stats: MapStats::default(),
        protection: None,
        spool: None,
        watermark: None,
        redelivered: 0,
        diff: None,
    };
    let result = attempt
        .execute(window, spool)
        .instrument(span.clone())
        .await;
    commit::finish(attempt, result, dry_record)
        .instrument(span)
        .await
}

/// The kind of run whose spool is being resumed: it finishes that run's work
/// (a scheduled one under the claim the scheduler asked for, a backfill
/// chunk's under the chunk's lease: its spool is the chunk's own).
fn kind_of(m: &Manifest, asked: &RunKind, (after, after_cut_off): (Option<i64>, bool)) -> RunKind {
    let chunk = match asked {
        RunKind::Backfill { chunk, .. } => *chunk,
        _ => None,
    };
    match (m.run_type.as_str(), &m.requested) {
        ("backfill", Some((from, until))) => RunKind::Backfill {
            from: from.clone(),
            until: until.clone(),
            chunk,
        },
        ("scheduled", _) => RunKind::Scheduled {
            interval: m.interval,
            after,
            after_cut_off,
        },
        _ => RunKind::Manual,
    }
}

impl RunIds {
    fn new(ctx: &SyncContext, pipeline: &Pipeline, id: i64, key: String) -> Self {
        let dir = ctx.project.state.runs_dir.join(&pipeline.id).join(&key);
        Self { id, key, dir }
    }
}

/// A spool to write, or one to resume.
#[derive(Debug)]
pub(crate) enum SpoolPlan {
    /// Extract into a new spool with this (incomplete) manifest.
    Fresh(Manifest),
    /// Deliver the rest of this complete spool.
    Resume(Manifest),
}

/// One recorded run while it executes.
pub(crate) struct Attempt<'a> {
    pub ctx: &'a SyncContext,
    pub pipeline: &'a Pipeline,
    pub mode: RunMode,
    pub ids: RunIds,
    /// What the outputs recorded.
    pub tally: Tally,
    /// The mapping used, once the columns are known.
    pub plan: Option<MappingPlan>,
    /// Mapping counters.
    pub stats: MapStats,
    /// What input protection did.
    pub protection: Option<crate::resolve::ProtectionSummary>,
    /// The spool delivered from.
    pub spool: Option<SpoolSummary>,
    /// A successful run stores this as the watermark.
    pub watermark: Option<String>,
    /// Dead-lettered batches of earlier runs delivered by this one.
    pub redelivered: u64,
    /// The snapshot diff, for diff pipelines once the spool is complete.
    pub diff: Option<diff::Diff>,
}

impl Attempt<'_> {
    async fn execute(
        &mut self,
        window: WindowPlan,
        spool: Option<(SpoolDir, SpoolPlan)>,
    ) -> Result<(), SyncError> {
        let ctx = self.ctx;
        let pipeline = self.pipeline;
        // 2. Extract → spool (or resume the spool).
        // Event ages are measured from when the rows were read, so mapping a
        // resumed spool again gives the same batches.
        let as_of = match &spool {
            Some((_, SpoolPlan::Resume(m))) => m.created_at,
            _ => ctx.clock.now(),
        };
        let (mut extract, dir) = self.open_extract(&window, spool).await?;
        events::RunStarted {
            window_start: extract.lower.as_ref().map(window::to_text).as_deref(),
            window_end: extract.upper.as_ref().map(window::to_text).as_deref(),
            dry_run: self.mode.dry_run,
        }
        .emit();

        // 3. Transform, and 4. the outputs it feeds.
        let plan = match MappingPlan::new(&extract.columns, pipeline) {
            Ok(plan) => plan,
            Err(e) => {
                let _ = extract.wait(true).await;
                return Err(e.into());
            }
        };
        self.plan = Some(plan.clone());
        let mapper = match mapper_for(&ctx.project, pipeline, plan.clone(), as_of) {
            Ok(mapper) => mapper,
            Err(e) => {
                let _ = extract.wait(true).await;
                return Err(e);
            }
        };
        if let Some(settings) = &pipeline.diff {
            match self
                .diff_prepass(&mut extract, dir.as_ref(), &mapper, settings)
                .await
            {
                Ok(diff) => self.diff = Some(diff),
                Err(e) => {
                    let _ = extract.wait(true).await;
                    return Err(e);
                }
            }
        }
        let prepared = self.prepare(&extract, &plan, dir.as_ref()).await;
        let (mut outputs, protection) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                let _ = extract.wait(true).await;
                return Err(e);
            }
        };
        let mut transform = transform::Transform::new(mapper, protection);
        if let Some(diff) = self.diff.take() {
            transform = transform.with_diff(diff);
        }
        let mut flowed = flow(ctx, self.ids.id, &mut extract, &mut transform, &mut outputs).await;
        if flowed.is_ok() {
            if let Some(diff) = transform.diff.as_mut() {
                flowed = unset_gone_keys(diff, &mut outputs).await;
            }
        }
        self.diff = transform.diff.take();

        self.conclude(extract, transform, outputs, flowed, &window)
            .await
    }

    /// Stage 2: start the extract into the spool, or resume the spool.
    async fn open_extract(
        &mut self,
        window: &WindowPlan,
        spool: Option<(SpoolDir, SpoolPlan)>,
    ) -> Result<(Extract, Option<SpoolDir>), SyncError> {
        let (ctx, pipeline) = (self.ctx, self.pipeline);
        let summary = |dir: &SpoolDir, resumed: Option<&Manifest>| SpoolSummary {
            dir: dir.path().to_owned(),
            rows: resumed.map_or(0, |m| m.rows),
            bytes: resumed.map_or(0, |m| m.bytes),
            resumed_from: resumed.map(|m| m.run_id),
            batches_already_done: 0,
            kept: true,
            warehouse_session: std::time::Duration::ZERO,
        };
        Ok(match spool {
            Some((dir, SpoolPlan::Resume(m))) => {
                // Noted first: once this run commits, the spool is known done
                // even if a crash keeps it from being deleted.
                dir.write_manifest(&m)?;
                self.spool = Some(summary(&dir, Some(&m)));
                (Extract::resume(&dir, &m, window)?, Some(dir))
            }
            Some((dir, SpoolPlan::Fresh(m))) => {
                self.spool = Some(summary(&dir, None));
                let extract = Extract::start(ctx, pipeline, window, Some((dir.clone(), m))).await?;
                (extract, Some(dir))
            }
            None => (Extract::start(ctx, pipeline, window, None).await?, None),
        })
    }

    /// After the flow: wait for (or stop) the extract, finish every output,
    /// and decide the run's result and watermark.
    async fn conclude(
        &mut self,
        mut extract: Extract,
        transform: transform::Transform,
        mut outputs: Vec<Box<dyn RunOutput>>,
        flowed: Result<(), SyncError>,
        window: &WindowPlan,
    ) -> Result<(), SyncError> {
        let (ctx, pipeline) = (self.ctx, self.pipeline);
        // The extract is over, or is stopped: on shutdown, and when the flow
        // failed and nobody reads the stream any more. A spooled extract that
        // outlives a failed delivery is finished, so the next run resumes the
        // spool instead of reading the warehouse again.
        let stop = flowed.is_err() && (ctx.shutdown.is_cancelled() || !extract.is_spooled());
        let extracted = extract.wait(stop).await;
        let end = match (&flowed, &extracted) {
            (Ok(()), Ok(e)) if !e.interrupted => RunEnd::Complete,
            _ => RunEnd::Cut,
        };
        let mut finished = Ok(());
        for output in &mut outputs {
            let r = output.finish(end, &mut self.tally).await;
            finished = finished.and(r);
        }
        let (stats, protection) = transform.finish();
        self.stats = stats;
        self.protection = protection.map(|(summary, file)| {
            match file {
                Ok(Some(path)) => {
                    self.tally.files.insert("skipped", path);
                }
                Ok(None) => {}
                Err(e) => self.tally.errors.push(e.to_string()),
            }
            summary
        });
        if let Some(s) = self.spool.as_mut() {
            s.batches_already_done = self.tally.batches_already_done;
            if let Ok(e) = &extracted {
                s.rows = s.rows.max(e.rows);
                s.bytes = s.bytes.max(e.spool_bytes);
                s.warehouse_session = e.session;
            }
        }
        let stopped = ctx.shutdown.is_cancelled()
            || matches!(flowed, Err(SyncError::Interrupted { .. }))
            || extracted.as_ref().is_ok_and(|e| e.interrupted);
        // The first failure is the one worth reporting: a delivery failure
        // stops the extract, whose own error would only say so.
        let extracted = match (flowed, extracted, finished) {
            (Err(e), _, _) if !matches!(e, SyncError::Interrupted { .. }) => return Err(e),
            (_, Err(e), _) => return Err(e),
            (_, Ok(_), Err(e)) => return Err(e),
            (_, Ok(extracted), Ok(())) => extracted,
        };
        if stopped {
            return Err(SyncError::Interrupted {
                checkpoint: self.tally.checkpoint.clone(),
            });
        }
        if let Some(blocked) = self.diff.as_ref().and_then(|d| d.blocked.clone()) {
            return Err(SyncError::Unsupported {
                pipeline: pipeline.id.clone(),
                message: blocked,
            });
        }
        self.tally.counts.records_extracted = extracted.rows;
        if pipeline_is_incremental(pipeline) && self.mode.moves_watermark {
            // Never store a watermark below the one a previous run earned.
            self.watermark = extract
                .upper
                .filter(|u| window.previous.is_none_or(|p| *u >= p))
                .as_ref()
                .map(window::to_text);
        }
        Ok(())
    }

    /// The diff pre-pass: stage every row's key and payload hashes as the
    /// extract writes the spool, then, once it is complete, classify them
    /// against the snapshot.
    async fn diff_prepass(
        &mut self,
        extract: &mut Extract,
        dir: Option<&SpoolDir>,
        mapper: &Mapper,
        settings: &crate::config::model::DiffSettings,
    ) -> Result<diff::Diff, SyncError> {
        let ctx = self.ctx;
        let pipeline = self.pipeline;
        let Some(dir) = dir else {
            return Err(SyncError::Unsupported {
                pipeline: pipeline.id.clone(),
                message: "[diff] needs a feed (or input_protection = \"only_read\"); \
                          export-only pipelines send nothing to diff"
                    .to_owned(),
            });
        };
        let mut diff = diff::Diff::open(
            &ctx.state,
            pipeline,
            settings,
            &extract.columns,
            &diff::snapshot_fingerprint(&ctx.project, pipeline),
            &self.ids.dir,
            ctx.full_resync,
            ctx.clock.now(),
        )
        .await?;
        let staged = async {
            // The source follows the spool as the extract writes it (or
            // reads a resumed one); `complete_spool` then rewinds it for the
            // delivery pass.
            diff.stage(mapper, &mut extract.source).await?;
            let manifest = extract.complete_spool(dir).await?;
            diff.check_rows(manifest.rows)?;
            diff.classify(pipeline.max_rejected_pct).await
        }
        .await;
        if let Err(e) = staged {
            diff.close().await;
            return Err(e);
        }
        if let Some(reason) = diff.reset.as_deref().filter(|r| !r.is_empty()) {
            events::SnapshotInvalidated { reason }.emit();
        }
        let c = diff.counts;
        events::DiffComputed {
            new: c.new,
            changed: c.changed,
            unchanged: c.unchanged,
            unset: c.unset,
            duplicate_keys: c.duplicate_keys,
            missing_keys: c.missing_keys,
        }
        .emit();
        Ok(diff)
    }
}

fn pipeline_is_incremental(pipeline: &Pipeline) -> bool {
    matches!(pipeline.sync_mode, SyncMode::Incremental { .. })
}

/// `on_delete = "unset_attributes"`: after the last row, the batches that
/// unset the attributes of keys gone from the model go to every output, a
/// page at a time.
async fn unset_gone_keys(
    diff: &mut diff::Diff,
    outputs: &mut [Box<dyn RunOutput>],
) -> Result<(), SyncError> {
    let mut after = 0;
    while let Some((end, page)) = diff.unset_page(after).await? {
        after = end;
        for output in outputs.iter_mut() {
            output.write(&page).await?;
        }
    }
    Ok(())
}

/// Move every chunk from the source through the transform to every output.
/// Stops reading on shutdown, and when the heartbeat found the run's lease
/// taken over by another daemon (nothing more of it could be committed).
async fn flow(
    ctx: &SyncContext,
    run_id: i64,
    extract: &mut Extract,
    transform: &mut transform::Transform,
    outputs: &mut [Box<dyn RunOutput>],
) -> Result<(), SyncError> {
    let shutdown = ctx.shutdown.clone();
    loop {
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Err(SyncError::Interrupted { checkpoint: None }),
            next = extract.source.next() => next?,
        };
        let Some(chunk) = next else { return Ok(()) };
        if let Some(lost) = ctx.state.lease_lost(run_id) {
            return Err(SyncError::State(lost));
        }
        ctx.progress.add_rows(chunk.num_rows() as u64);
        let transformed = transform.chunk(chunk).await?;
        for output in outputs.iter_mut() {
            output.write(&transformed).await?;
        }
    }
}
