//! One pipeline run: extract → map → deliver → checkpoint → commit.
//!
//! Extraction runs concurrently with mapping and delivery, joined by a bounded
//! channel of Arrow record batches, so at most a few chunks are in memory
//! whatever the table size. The run record is written before the first query
//! and finished (with the watermark, for a successful incremental run) in one
//! state-store transaction at the end. A failure anywhere fails the run, keeps
//! the watermark where it was, and is recorded with its error.
//!
//! Incremental rows arrive in iterator order, so every `checkpoint_rows` rows
//! the run waits for its in-flight requests and commits the last iterator value
//! read: every row below it is acknowledged. A run cut off (SIGKILL, shutdown,
//! failure) leaves that checkpoint, and the next run of the pipeline starts
//! there instead of at the watermark. Rows equal to the checkpoint are read
//! again; they carry the same content-derived `source_request_id`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::clock::Clock;
use crate::config::model::{InputProtection, IteratorDataType, Pipeline, Project, SyncMode};
use crate::mapping::EncodedBatch;
use crate::mapping::{MapStats, Mapper, MappingError, MappingPlan, RejectedRow};
use crate::sink::delivery::{Deliverer, DeliveryConfig, RequestObserver, RequestOutcome};
use crate::sink::files::JsonlFile;
use crate::sink::retry::RetryPolicy;
use crate::sink::{DeliveryError, EventsApiClient, PackedRequest, RequestPacker};
use crate::source::guard::check_single_select;
use crate::source::{
    ColumnInfo, IteratorFilter, IteratorValue, SourceError, SourceQuery, Warehouse,
};
use crate::state::{
    DeadLetterKind, NewDeadLetter, NewRun, RunCounts, RunOutcome, RunRecord, RunState, StateError,
    StateStore,
};
use crate::telemetry::events;

pub mod exports;
pub mod report;
pub mod window;

/// Chunks buffered between the extractor and the mapper. Two keep the database
/// busy while one chunk is mapped, without letting memory follow the table size.
const CHANNEL_CHUNKS: usize = 2;

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// No pipeline of that id.
    #[error("no pipeline `{id}` in schedules/ (pipelines: {available})")]
    UnknownPipeline {
        /// Requested id.
        id: String,
        /// Existing ids.
        available: String,
    },
    /// The model SQL is not a single SELECT.
    #[error("{}: data model `{model}` was refused: {message}", file.display())]
    Refused {
        /// Model name.
        model: String,
        /// The `.sql` file.
        file: PathBuf,
        /// What the guard found.
        message: String,
    },
    /// The pipeline asks for something this version cannot do safely.
    #[error("pipeline `{pipeline}`: {message}")]
    Unsupported {
        /// Pipeline id.
        pipeline: String,
        /// What and what to do instead.
        message: String,
    },
    /// Warehouse failure.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Mapping failure.
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// Events API failure.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// State store failure.
    #[error(transparent)]
    State(#[from] StateError),
    /// A Parquet export failed.
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    /// Input protection could not resolve profiles.
    #[error(transparent)]
    Resolve(#[from] crate::resolve::ResolveError),
    /// A wsync bug surfaced at run time (a task panicked).
    #[error("internal error: {0}")]
    Internal(String),
    /// A run file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The run stopped on shutdown; its checkpoint is where the next one starts.
    #[error("stopped by shutdown before the window was finished; the next run resumes from {}", checkpoint.as_deref().unwrap_or("the start of the window"))]
    Interrupted {
        /// The last committed checkpoint.
        checkpoint: Option<String>,
    },
    /// A backfill bound does not parse for the iterator's type.
    #[error("pipeline `{pipeline}`: {which} `{value}` is not a valid {data_type} value; {hint}")]
    BadBound {
        /// Pipeline id.
        pipeline: String,
        /// `--from` or `--until`.
        which: &'static str,
        /// What was given.
        value: String,
        /// The iterator type.
        data_type: &'static str,
        /// How to write one.
        hint: &'static str,
    },
    /// A stored watermark does not parse for the iterator's type (someone changed
    /// `iterator_data_type` after runs were recorded).
    #[error(
        "pipeline `{pipeline}`: stored watermark `{value}` is not a valid {data_type} value; \
         the iterator type changed since the last run. Reset it by backfilling, or restore the old type"
    )]
    BadWatermark {
        /// Pipeline id.
        pipeline: String,
        /// Stored text.
        value: String,
        /// Expected type.
        data_type: &'static str,
    },
}

/// What a finished run reports back (also for failed runs).
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The stored record, as finished.
    pub record: RunRecord,
    /// Mapping counters by reason.
    pub stats: MapStats,
    /// Requests that were (or, in a dry run, would have been) sent.
    pub requests: u64,
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
}

/// Rejected rows kept per reason for the run report.
const SAMPLES_PER_REASON: usize = 3;

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
    },
    /// `wsync backfill`: replay `[from, until)` (as the user wrote them) without
    /// moving the watermark.
    Backfill {
        /// Inclusive lower bound.
        from: String,
        /// Exclusive upper bound.
        until: String,
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

/// A pipeline's model, probed and planned: what `validate` shows.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The model's columns.
    pub columns: Vec<ColumnInfo>,
    /// Where each goes.
    pub plan: MappingPlan,
}

/// Check the model SQL, connect, probe the columns (no rows read) and plan the mapping.
pub async fn probe(project: &Project, pipeline: &Pipeline) -> Result<Probe, SyncError> {
    let (mut warehouse, query) = open(project, pipeline, None).await?;
    let columns = warehouse.probe(&query).await?;
    let plan = MappingPlan::new(&columns, pipeline)?;
    Ok(Probe { columns, plan })
}

/// The first `limit` batches the pipeline would send (rows beyond the first
/// `limit` are not read). Sends nothing, records nothing.
pub async fn preview(
    project: &Project,
    pipeline: &Pipeline,
    limit: u64,
) -> Result<(Vec<serde_json::Value>, MapStats), SyncError> {
    let (mut warehouse, mut query) = open(project, pipeline, None).await?;
    query.limit = Some(limit);
    let columns = warehouse.probe(&query).await?;
    let mapper = Mapper::new(MappingPlan::new(&columns, pipeline)?, pipeline);
    let chunk_rows = project.connections[&pipeline.connection].chunk_rows;
    let (tx, mut rx) = mpsc::channel::<RecordBatch>(CHANNEL_CHUNKS);
    let mut stats = MapStats::default();
    let mut batches = Vec::new();
    let consume = async {
        let mut next_row = 1;
        while let Some(chunk) = rx.recv().await {
            let mapped = mapper.map_chunk(&chunk, next_row, &mut stats)?;
            next_row += chunk.num_rows() as u64;
            for b in mapped.batches {
                if batches.len() as u64 >= limit {
                    break;
                }
                batches.push(serde_json::from_slice(&b.json).unwrap_or(serde_json::Value::Null));
            }
        }
        Ok::<_, SyncError>(())
    };
    let (extracted, consumed) =
        tokio::join!(warehouse.extract(&query, &columns, chunk_rows, tx), consume);
    extracted?;
    consumed?;
    Ok((batches, stats))
}

/// Run `pipeline_id` once now and record it.
///
/// `Err` means the run could not be recorded at all (unknown pipeline, state
/// store down, SQL refused, already in progress). Once recorded, a run that
/// fails returns `Ok` with `record.state == Failed` (or `Interrupted` on
/// shutdown) and the error in `record.error`.
pub async fn run(
    ctx: &SyncContext,
    pipeline_id: &str,
    kind: RunKind,
) -> Result<RunReport, SyncError> {
    let pipeline = ctx.pipeline(pipeline_id)?.clone();
    // Refused before a run record exists: a model that is not a single SELECT is
    // a config error, not a failed run.
    let model = &ctx.project.models[&pipeline.data_model];
    check_single_select(&model.sql).map_err(|e| SyncError::Refused {
        model: model.name.clone(),
        file: model.path.clone(),
        message: e.to_string(),
    })?;
    let dry_run = pipeline.input_protection == InputProtection::OnlyRead;
    let started = ctx.clock.now();
    let window = plan_window(ctx, &pipeline, &kind, started).await?;
    let window_text = (
        window.lower.as_ref().map(window::to_text),
        window.upper.as_ref().map(window::to_text),
    );
    let interval = match &kind {
        RunKind::Scheduled { interval } => *interval,
        _ => None,
    };
    // A dry run leaves the state store exactly as it was: it is recorded by its
    // report under runs_dir/<pipeline>/dry-<start time>/, not as a run record.
    let (run_id, run_key, span) = if dry_run {
        let key = format!("dry-{}", started.format("%Y%m%dT%H%M%S%.6fZ"));
        let span = tracing::info_span!("run", pipeline = %pipeline.id, run_id = %key);
        (0, key, span)
    } else {
        let id = ctx
            .state
            .start_run(&NewRun {
                pipeline_id: &pipeline.id,
                run_type: kind.as_str(),
                dry_run,
                now: started,
                window: window_text.clone(),
                interval,
                resumed_from: window.resumed_from,
            })
            .await?;
        let span = tracing::info_span!("run", pipeline = %pipeline.id, run_id = id);
        (id, id.to_string(), span)
    };
    if let (Some(from), Some(lower)) = (window.resumed_from, &window.lower) {
        let _entered = span.enter();
        events::RunResumed {
            resumed_from: from,
            checkpoint: &window::to_text(lower),
        }
        .emit();
    }
    let mut attempt = Attempt::new(ctx, &pipeline, run_id, run_key, dry_run);
    attempt.dry_record = dry_run.then(|| RunRecord {
        id: 0,
        pipeline_id: pipeline.id.clone(),
        state: RunState::Running,
        run_type: kind.as_str().to_owned(),
        dry_run: true,
        start_date: started,
        end_date: None,
        data_interval_start: window_text.0,
        data_interval_end: window_text.1,
        counts: RunCounts::default(),
        files: serde_json::Value::Null,
        error: None,
        interval,
        checkpoint: None,
        resumed_from: window.resumed_from,
    });
    // Backfills replay a range: they neither move the watermark nor leave a
    // checkpoint for the next scheduled run.
    attempt.moves_watermark = !dry_run && !matches!(kind, RunKind::Backfill { .. });
    let result = attempt.execute(window).instrument(span.clone()).await;
    attempt.finish(result).instrument(span).await
}

/// The iterator window a run will read, before the warehouse is asked (an
/// integer sequence's upper bound is fixed after connecting).
#[derive(Debug, Clone, PartialEq)]
struct WindowPlan {
    lower: Option<IteratorValue>,
    upper: Option<IteratorValue>,
    /// The unfinished run whose checkpoint is the lower bound.
    resumed_from: Option<i64>,
    /// The stored watermark: a run never moves it down.
    previous: Option<IteratorValue>,
}

/// Where a run starts and ends reading. See the module notes.
async fn plan_window(
    ctx: &SyncContext,
    pipeline: &Pipeline,
    kind: &RunKind,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<WindowPlan, SyncError> {
    let SyncMode::Incremental {
        iterator_data_type: data_type,
        from,
        lag,
        time_zone,
        ..
    } = &pipeline.sync_mode
    else {
        return Ok(WindowPlan {
            lower: None,
            upper: None,
            resumed_from: None,
            previous: None,
        });
    };
    let (data_type, zone) = (*data_type, *time_zone);
    if let RunKind::Backfill { from, until } = kind {
        let bound = |which: &'static str, text: &str| {
            window::parse_bound(data_type, zone, text).ok_or_else(|| SyncError::BadBound {
                pipeline: pipeline.id.clone(),
                which,
                value: text.to_owned(),
                data_type: data_type.as_str(),
                hint: bound_hint(data_type),
            })
        };
        return Ok(WindowPlan {
            lower: Some(bound("--from", from)?),
            upper: Some(bound("--until", until)?),
            resumed_from: None,
            previous: None,
        });
    }
    let parse_stored = |text: &str| {
        window::parse(data_type, text).ok_or_else(|| SyncError::BadWatermark {
            pipeline: pipeline.id.clone(),
            value: text.to_owned(),
            data_type: data_type.as_str(),
        })
    };
    let watermark = match ctx.state.watermark(&pipeline.id).await? {
        Some(text) => Some(parse_stored(&text)?),
        None => None,
    };
    // Lag re-reads a margin below the watermark for rows committed late; the
    // first window starts at `from` as written.
    let mut lower = match (watermark, from) {
        (Some(w), _) => Some(window::minus_lag(data_type, w, *lag)),
        (None, Some(from)) => Some(parse_stored(from)?),
        (None, None) => None,
    };
    let mut resumed_from = None;
    if let Some(point) = ctx.state.resume_point(&pipeline.id).await? {
        let checkpoint = parse_stored(&point.checkpoint)?;
        // A checkpoint at or below the watermark adds nothing.
        if watermark.is_none_or(|w| checkpoint > w) {
            lower = Some(checkpoint);
            resumed_from = Some(point.run_id);
        }
    }
    let upper_at = match kind {
        RunKind::Scheduled {
            interval: Some((_, end)),
        } => *end,
        _ => now,
    };
    Ok(WindowPlan {
        lower,
        upper: window::upper_at(data_type, zone, upper_at),
        resumed_from,
        previous: watermark,
    })
}

/// How to write a bound of this iterator type on the command line.
fn bound_hint(data_type: IteratorDataType) -> &'static str {
    match data_type {
        IteratorDataType::TimestampTz => "write an RFC 3339 instant, e.g. 2024-01-01T00:00:00Z",
        IteratorDataType::TimestampNtz => {
            "write 2024-01-01T00:00:00 (wall clock in iterator_time_zone) or an RFC 3339 instant"
        }
        IteratorDataType::Date => "write a date, e.g. 2024-01-01, or an RFC 3339 instant",
        IteratorDataType::UnixSeconds | IteratorDataType::UnixMillis => {
            "write the number, or an RFC 3339 instant"
        }
        IteratorDataType::Integer => "write an integer",
    }
}

/// Connect and build the query for a pipeline, with an optional iterator filter.
async fn open(
    project: &Project,
    pipeline: &Pipeline,
    filter: Option<IteratorFilter>,
) -> Result<(Warehouse, SourceQuery), SyncError> {
    let model = &project.models[&pipeline.data_model];
    check_single_select(&model.sql).map_err(|e| SyncError::Refused {
        model: model.name.clone(),
        file: model.path.clone(),
        message: e.to_string(),
    })?;
    let connection = &project.connections[&pipeline.connection];
    let warehouse = Warehouse::connect(connection).await?;
    let query = SourceQuery {
        model: model.name.clone(),
        sql: model.sql.clone(),
        filter,
        limit: None,
    };
    Ok((warehouse, query))
}

/// The mutable state of one recorded run.
struct Attempt<'a> {
    ctx: &'a SyncContext,
    pipeline: &'a Pipeline,
    /// The state store's run id (0 for a dry run, which has no record).
    run_id: i64,
    /// The run's folder name under runs_dir/<pipeline>/ and `{run_id}` in
    /// export paths: the id, or `dry-<start time>`.
    run_key: String,
    /// A dry run's record, kept here instead of in the state store.
    dry_record: Option<RunRecord>,
    dry_run: bool,
    stats: MapStats,
    counts: RunCounts,
    requests: u64,
    request_bytes: u64,
    rejected: JsonlFile,
    would_be: Option<JsonlFile>,
    watermark: Option<String>,
    plan: Option<MappingPlan>,
    samples: BTreeMap<&'static str, Vec<RejectedRow>>,
    deliverer: Option<Deliverer>,
    /// `source_request_id`s acknowledged so far.
    acknowledged_ids: Vec<String>,
    /// Dead-lettered batches of earlier runs delivered by this one.
    dead_letters_redelivered: u64,
    /// Parquet exports being written.
    exports: Option<exports::RunExports>,
    /// Export files finished by a successful run: (dataset, file).
    exported: Vec<(&'static str, crate::export::ExportedFile)>,
    /// A successful run stores its upper bound as the watermark.
    moves_watermark: bool,
    /// Checkpoints are taken on this column (incremental, non-dry runs without
    /// an export: an export file is all of one window or nothing).
    checkpoint_on: Option<(String, IteratorDataType)>,
    /// Iterator value of the last row handed to delivery.
    last_value: Option<IteratorValue>,
    /// Rows read since the last checkpoint.
    rows_since_checkpoint: u64,
    /// The last committed checkpoint.
    checkpoint: Option<String>,
    /// The resolver-backed input protection (only_update, or an only_read forecast).
    protection: Option<crate::resolve::Protection>,
}

/// A request being delivered: its body size and its task.
type InFlight = (
    usize,
    tokio::task::JoinHandle<Result<RequestOutcome, DeliveryError>>,
);

/// Dead-lettered batches re-sent at the start of one run, at most.
const MAX_DEAD_LETTER_RETRIES: u32 = 10_000;

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

impl<'a> Attempt<'a> {
    fn new(
        ctx: &'a SyncContext,
        pipeline: &'a Pipeline,
        run_id: i64,
        run_key: String,
        dry_run: bool,
    ) -> Self {
        let dir = ctx.project.state.runs_dir.join(&pipeline.id).join(&run_key);
        Self {
            ctx,
            pipeline,
            run_id,
            run_key,
            dry_record: None,
            dry_run,
            stats: MapStats::default(),
            counts: RunCounts::default(),
            requests: 0,
            request_bytes: 0,
            rejected: JsonlFile::new(dir.join("rejected.jsonl")),
            // Asked for by the pipeline or `--write-batches`: at ~440 bytes a
            // row, writing them costs a dry run more than mapping does.
            would_be: (dry_run && (pipeline.write_batches || ctx.write_batches))
                .then(|| JsonlFile::new(dir.join("batches.jsonl"))),
            watermark: None,
            plan: None,
            samples: BTreeMap::new(),
            deliverer: None,
            acknowledged_ids: Vec::new(),
            dead_letters_redelivered: 0,
            exports: None,
            exported: Vec::new(),
            moves_watermark: !dry_run,
            checkpoint_on: None,
            last_value: None,
            rows_since_checkpoint: 0,
            checkpoint: None,
            protection: None,
        }
    }

    async fn execute(&mut self, plan: WindowPlan) -> Result<(), SyncError> {
        let WindowPlan {
            lower,
            mut upper,
            previous,
            ..
        } = plan;
        let project = &self.ctx.project;
        let filter_for = |lower, upper| match &self.pipeline.sync_mode {
            SyncMode::Full => None,
            SyncMode::Incremental {
                iterator_field,
                iterator_data_type,
                ..
            } => Some(IteratorFilter {
                column: iterator_field.clone(),
                data_type: *iterator_data_type,
                lower,
                upper,
            }),
        };
        let (mut warehouse, mut query) =
            open(project, self.pipeline, filter_for(lower, upper)).await?;

        // Integer sequences: the window ends just past the highest value present
        // now, so rows inserted during the run wait for the next one.
        if let Some(filter) = &query.filter {
            if filter.data_type == IteratorDataType::Integer && upper.is_none() {
                let max = warehouse.max_iterator(&query).await?;
                upper = match (max, lower) {
                    (Some(IteratorValue::Integer(m)), _) => {
                        Some(IteratorValue::Integer(m.saturating_add(1)))
                    }
                    // An empty model: the window is empty and the watermark stays.
                    (_, lower) => lower,
                };
            }
        }
        // A window that ends before it starts (an interval already covered by a
        // manual run) reads nothing and moves nothing.
        if let (Some(l), Some(u)) = (lower, upper) {
            if u < l {
                upper = Some(l);
            }
        }
        query.filter = filter_for(lower, upper);
        if let SyncMode::Incremental {
            iterator_field,
            iterator_data_type,
            ..
        } = &self.pipeline.sync_mode
        {
            if self.moves_watermark && self.pipeline.export.is_none() {
                self.checkpoint_on = Some((iterator_field.clone(), *iterator_data_type));
            }
        }

        events::RunStarted {
            window_start: lower.as_ref().map(window::to_text).as_deref(),
            window_end: upper.as_ref().map(window::to_text).as_deref(),
            dry_run: self.dry_run,
        }
        .emit();

        let columns = warehouse.probe(&query).await?;
        let plan = MappingPlan::new(&columns, self.pipeline)?;
        if let Some(settings) = &self.pipeline.export {
            let run_id = self.run_key.clone();
            let (start, end) = (
                lower.as_ref().map(window::to_text),
                upper.as_ref().map(window::to_text),
            );
            self.exports = Some(exports::RunExports::create(
                &exports::ExportTarget {
                    settings,
                    root: &project.root,
                    pipeline: &self.pipeline.id,
                    run_id: &run_id,
                    date: self.ctx.clock.now().date_naive(),
                    window: (start.as_deref(), end.as_deref()),
                },
                &columns,
                &plan,
            )?);
        }
        self.plan = Some(plan.clone());
        let run_dir = (project.state.runs_dir.join(&self.pipeline.id)).join(&self.run_key);
        self.protection =
            crate::resolve::Protection::open(project, self.pipeline, &run_dir).await?;
        let mapper = Mapper::new(plan, self.pipeline);
        self.deliverer = match (&self.pipeline.feed, self.dry_run) {
            (Some(feed), false) => Some(
                deliverer_for(&project.feeds[feed])?
                    .with_observer(Arc::clone(&self.ctx.metrics) as Arc<dyn RequestObserver>),
            ),
            _ => None,
        };
        let deliverer = self.deliverer.clone();
        if let (Some(d), true) = (&deliverer, self.pipeline.retry_dead_letters) {
            self.retry_dead_letters(d).await?;
        }
        let chunk_rows = project.connections[&self.pipeline.connection].chunk_rows;

        let (tx, rx) = mpsc::channel::<RecordBatch>(CHANNEL_CHUNKS);
        let shutdown = self.ctx.shutdown.clone();
        // On shutdown the query is abandoned at once (dropping it closes the
        // cursor); what was read is delivered and checkpointed by `consume`.
        let extract = async {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => None,
                r = warehouse.extract(&query, &columns, chunk_rows, tx) => Some(r),
            }
        };
        let (extracted, consumed) =
            tokio::join!(extract, self.consume(rx, &mapper, deliverer.as_ref()));
        // A delivery failure drops the receiver, which ends extraction early; the
        // delivery error is the one worth reporting.
        consumed?;
        let Some(extracted) = extracted else {
            return Err(SyncError::Interrupted {
                checkpoint: self.checkpoint.clone(),
            });
        };
        self.counts.records_extracted = extracted?;
        if let Some(exports) = self.exports.take() {
            self.exported = exports.finish()?;
        }
        if query.filter.is_some() && self.moves_watermark {
            // Never store a watermark below the one a previous run earned.
            self.watermark = upper
                .filter(|u| previous.is_none_or(|p| *u >= p))
                .as_ref()
                .map(window::to_text);
        }
        Ok(())
    }

    async fn consume(
        &mut self,
        rx: mpsc::Receiver<RecordBatch>,
        mapper: &Mapper,
        deliverer: Option<&Deliverer>,
    ) -> Result<(), SyncError> {
        let mut in_flight = Vec::new();
        let result = self
            .consume_chunks(rx, mapper, deliverer, &mut in_flight)
            .await;
        // Whatever happened, wait for the requests already on the wire so their
        // outcome (acknowledged or dead letter) is recorded.
        let drained = self.drain(&mut in_flight).await;
        let stopped = matches!(result, Err(SyncError::Interrupted { .. }));
        match drained {
            // Everything read was delivered: on a stop, that is the checkpoint.
            Ok(true) if stopped || self.ctx.shutdown.is_cancelled() => {
                self.commit_checkpoint().await?;
            }
            Ok(true) => {}
            Ok(false) => {
                return Err(SyncError::Interrupted {
                    checkpoint: self.checkpoint.clone(),
                })
            }
            Err(e) => return result.and(Err(e)),
        }
        match result {
            Err(SyncError::Interrupted { .. }) => Err(SyncError::Interrupted {
                checkpoint: self.checkpoint.clone(),
            }),
            other => other,
        }
    }

    /// Wait for every in-flight request. `Ok(false)` when shutdown's grace ran
    /// out first: the rest are abandoned and the checkpoint stays where it was.
    async fn drain(&mut self, in_flight: &mut Vec<InFlight>) -> Result<bool, SyncError> {
        let shutdown = self.ctx.shutdown.clone();
        let grace = self.ctx.project.daemon.shutdown_grace;
        let expired = async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        let finished = tokio::select! {
            r = self.reap(in_flight, true) => Some(r),
            () = expired => None,
        };
        match finished {
            Some(r) => r.map(|()| true),
            None => {
                tracing::warn!(
                    abandoned = in_flight.len(),
                    "Shutdown grace period over; abandoning in-flight requests."
                );
                for (_, handle) in in_flight.drain(..) {
                    handle.abort();
                }
                Ok(false)
            }
        }
    }

    /// Record the last value read as the checkpoint (every request up to it is
    /// acknowledged: the caller drained them).
    async fn commit_checkpoint(&mut self) -> Result<(), SyncError> {
        let Some(value) = self.last_value.as_ref().map(window::to_text) else {
            return Ok(());
        };
        if self.checkpoint.as_deref() == Some(value.as_str()) {
            return Ok(());
        }
        self.ctx.state.checkpoint(self.run_id, &value).await?;
        events::CheckpointCommitted {
            value: &value,
            rows: self.stats.rows_read,
        }
        .emit();
        self.checkpoint = Some(value);
        self.rows_since_checkpoint = 0;
        Ok(())
    }

    async fn consume_chunks(
        &mut self,
        mut rx: mpsc::Receiver<RecordBatch>,
        mapper: &Mapper,
        deliverer: Option<&Deliverer>,
        in_flight: &mut Vec<InFlight>,
    ) -> Result<(), SyncError> {
        let mut packer = RequestPacker::default();
        let mut next_row = 1u64;
        let shutdown = self.ctx.shutdown.clone();
        loop {
            let chunk = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    // Stop reading; what was read goes out and is checkpointed.
                    if let Some(request) = packer.take() {
                        self.deliver(request, deliverer, in_flight).await?;
                    }
                    return Err(SyncError::Interrupted { checkpoint: None });
                }
                chunk = rx.recv() => chunk,
            };
            let Some(chunk) = chunk else { break };
            self.ctx.progress.add_rows(chunk.num_rows() as u64);
            let mut mapped = mapper.map_chunk(&chunk, next_row, &mut self.stats)?;
            next_row += chunk.num_rows() as u64;
            // Input protection: rows of no existing profile leave here, before
            // anything is exported, written or packed.
            if let Some(protection) = self.protection.as_mut() {
                protection.apply(&mut mapped.batches).await?;
            }
            if let Some(exports) = self.exports.as_mut() {
                exports.chunk(&chunk)?;
                for batch in &mapped.batches {
                    exports.batch(batch)?;
                }
                for rejected in &mapped.rejected {
                    exports.rejected(rejected)?;
                }
            }
            for rejected in &mapped.rejected {
                let samples = self.samples.entry(rejected.reason.as_str()).or_default();
                if samples.len() < SAMPLES_PER_REASON {
                    samples.push(rejected.clone());
                }
                let path = self.rejected.path().to_owned();
                self.rejected
                    .write_rejected(rejected)
                    .map_err(|source| SyncError::File { path, source })?;
            }
            // A dry run moves nothing, dead letters included.
            if !self.dry_run && !mapped.rejected.is_empty() {
                let letters: Vec<NewDeadLetter> = mapped
                    .rejected
                    .iter()
                    .map(|r| NewDeadLetter {
                        kind: DeadLetterKind::Row,
                        reason: r.reason.as_str().to_owned(),
                        message: Some(format!("row {}: {}", r.row, r.detail)),
                        source_request_id: None,
                        payload: serde_json::Value::Object(r.values.clone()).to_string(),
                    })
                    .collect();
                self.store_dead_letters(&letters).await?;
            }
            for batch in &mapped.batches {
                if let Some(file) = self.would_be.as_mut() {
                    let path = file.path().to_owned();
                    file.write_line(&batch.json)
                        .map_err(|source| SyncError::File { path, source })?;
                }
                if let Some(request) = packer.push(batch) {
                    self.deliver(request, deliverer, in_flight).await?;
                }
            }
            self.after_chunk(&chunk, &mut packer, deliverer, in_flight)
                .await?;
        }
        if let Some(request) = packer.take() {
            self.deliver(request, deliverer, in_flight).await?;
        }
        Ok(())
    }

    /// Note the chunk's last iterator value and, every `checkpoint_rows` rows,
    /// flush, wait for every request and commit the checkpoint.
    async fn after_chunk(
        &mut self,
        chunk: &RecordBatch,
        packer: &mut RequestPacker,
        deliverer: Option<&Deliverer>,
        in_flight: &mut Vec<InFlight>,
    ) -> Result<(), SyncError> {
        let Some((column, data_type)) = &self.checkpoint_on else {
            return Ok(());
        };
        let rows = chunk.num_rows();
        if rows == 0 {
            return Ok(());
        }
        if let Some(value) = window::value_in(chunk, column, rows - 1, *data_type) {
            self.last_value = Some(value);
        }
        self.rows_since_checkpoint += rows as u64;
        if self.rows_since_checkpoint < self.ctx.project.daemon.checkpoint_rows {
            return Ok(());
        }
        if let Some(request) = packer.take() {
            self.deliver(request, deliverer, in_flight).await?;
        }
        if !self.drain(in_flight).await? {
            return Err(SyncError::Interrupted {
                checkpoint: self.checkpoint.clone(),
            });
        }
        self.commit_checkpoint().await
    }

    /// Hand a request to the deliverer (waiting for an in-flight slot: the
    /// backpressure that reaches the extractor), or only count it in a dry run.
    async fn deliver(
        &mut self,
        request: PackedRequest,
        deliverer: Option<&Deliverer>,
        in_flight: &mut Vec<InFlight>,
    ) -> Result<(), SyncError> {
        self.requests += 1;
        self.request_bytes += request.body.len() as u64;
        let Some(deliverer) = deliverer else {
            return Ok(());
        };
        let bytes = request.body.len();
        in_flight.push((bytes, deliverer.submit(request).await?));
        // Only the dead-letter retry reads acknowledged ids; kept for every new
        // row they grew with the table (~70 MB per million rows).
        self.acknowledged_ids.clear();
        self.reap(in_flight, false).await
    }

    /// Record the outcome of finished requests (all of them when `all`, waiting).
    /// The first delivery error is returned after every outcome was recorded.
    async fn reap(&mut self, in_flight: &mut Vec<InFlight>, all: bool) -> Result<(), SyncError> {
        let mut first_error = None;
        let mut i = 0;
        while i < in_flight.len() {
            if !all && !in_flight[i].1.is_finished() {
                i += 1;
                continue;
            }
            // Awaited in place: if the wait is abandoned (shutdown grace over),
            // the task is still in the list to be aborted.
            let joined = (&mut in_flight[i].1).await;
            let (bytes, _) = in_flight.swap_remove(i);
            match joined {
                Ok(Ok(outcome)) => {
                    events::RequestAcknowledged {
                        batches: outcome.acknowledged.len(),
                        bytes,
                        status: 202,
                    }
                    .emit();
                    self.counts.batches_sent += outcome.acknowledged.len() as u64;
                    self.ctx
                        .progress
                        .add_batches(outcome.acknowledged.len() as u64);
                    self.acknowledged_ids.extend(outcome.acknowledged);
                    let letters: Vec<NewDeadLetter> = outcome
                        .dead_letters
                        .iter()
                        .map(|d| NewDeadLetter {
                            kind: DeadLetterKind::Batch,
                            reason: format!("http_{}", d.status),
                            message: Some(format!("row {}: {}", d.row, d.message)),
                            source_request_id: Some(d.source_request_id.clone()),
                            payload: String::from_utf8_lossy(&d.batch).into_owned(),
                        })
                        .collect();
                    if let Err(e) = self.store_dead_letters(&letters).await {
                        first_error.get_or_insert(e);
                    }
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(SyncError::Delivery(e));
                }
                Err(join) => {
                    first_error.get_or_insert(SyncError::Internal(format!(
                        "a delivery task ended abnormally: {join}"
                    )));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn store_dead_letters(&mut self, letters: &[NewDeadLetter]) -> Result<(), SyncError> {
        if letters.is_empty() {
            return Ok(());
        }
        self.ctx
            .state
            .add_dead_letters(
                &self.pipeline.id,
                self.run_id,
                self.ctx.clock.now(),
                letters,
            )
            .await?;
        self.counts.dead_letters += letters.len() as u64;
        Ok(())
    }

    /// Re-send the batches earlier runs left as dead letters, before the new rows.
    /// Those acknowledged now are removed; those refused again stay (their
    /// attempt count goes up).
    async fn retry_dead_letters(&mut self, deliverer: &Deliverer) -> Result<(), SyncError> {
        let letters = self
            .ctx
            .state
            .dead_letters(
                &self.pipeline.id,
                Some(DeadLetterKind::Batch),
                MAX_DEAD_LETTER_RETRIES,
                0,
            )
            .await?;
        if letters.is_empty() {
            return Ok(());
        }
        tracing::info!(
            count = letters.len(),
            "Re-sending dead-lettered batches first."
        );
        let batches: Vec<EncodedBatch> = letters
            .iter()
            .map(|l| EncodedBatch {
                row: 0,
                part: 0,
                source_request_id: l.source_request_id.clone().unwrap_or_default(),
                json: l.payload.clone().into_bytes(),
            })
            .collect();
        let mut packer = RequestPacker::default();
        let mut in_flight = Vec::new();
        let before = self.acknowledged_ids.len();
        let mut result = Ok(());
        for batch in &batches {
            if let Some(request) = packer.push(batch) {
                result = self.deliver_retry(request, deliverer, &mut in_flight).await;
                if result.is_err() {
                    break;
                }
            }
        }
        if result.is_ok() {
            if let Some(request) = packer.take() {
                result = self.deliver_retry(request, deliverer, &mut in_flight).await;
            }
        }
        let drained = self.reap(&mut in_flight, true).await;
        let delivered: std::collections::HashSet<&String> =
            self.acknowledged_ids[before..].iter().collect();
        let ids: Vec<i64> = letters
            .iter()
            .filter(|l| {
                l.source_request_id
                    .as_ref()
                    .is_some_and(|id| delivered.contains(id))
            })
            .map(|l| l.id)
            .collect();
        self.ctx.state.remove_dead_letters(&ids).await?;
        self.dead_letters_redelivered += ids.len() as u64;
        result.and(drained)
    }

    async fn deliver_retry(
        &mut self,
        request: PackedRequest,
        deliverer: &Deliverer,
        in_flight: &mut Vec<InFlight>,
    ) -> Result<(), SyncError> {
        let bytes = request.body.len();
        in_flight.push((bytes, deliverer.submit(request).await?));
        self.reap(in_flight, false).await
    }

    /// Close the files, record the outcome (and watermark), report.
    async fn finish(self, result: Result<(), SyncError>) -> Result<RunReport, SyncError> {
        let Self {
            ctx,
            pipeline,
            run_id,
            stats,
            mut counts,
            requests,
            request_bytes,
            rejected,
            would_be,
            watermark,
            plan,
            samples,
            deliverer,
            dead_letters_redelivered,
            exported,
            protection,
            run_key,
            dry_record,
            ..
        } = self;
        if let Some(d) = &deliverer {
            let f = d.figures();
            counts.requests_sent = f.requests;
            counts.bytes_sent = f.bytes_sent;
            counts.retries = f.retries;
            counts.responses_429 = f.responses_429;
            counts.responses_5xx = f.responses_5xx;
            counts.timeouts = f.timeouts;
            counts.rate_limit_wait_ms =
                u64::try_from(f.rate_limit_wait.as_millis()).unwrap_or(u64::MAX);
        }
        if dead_letters_redelivered > 0 {
            tracing::info!(
                count = dead_letters_redelivered,
                "Dead-lettered batches delivered."
            );
        }
        let mut files = BTreeMap::new();
        let interrupted = matches!(result, Err(SyncError::Interrupted { .. }));
        let mut error = result.err().map(|e| e.to_string());
        let mut close = |name: &'static str, file: JsonlFile| {
            let path = file.path().to_owned();
            match file.finish() {
                Ok(Some(written)) => {
                    files.insert(name, written);
                }
                Ok(None) => {}
                Err(e) => {
                    error.get_or_insert(format!("cannot write {}: {e}", path.display()));
                }
            }
        };
        close("rejected", rejected);
        if let Some(file) = would_be {
            close("batches", file);
        }
        let protection = protection.map(|p| {
            let (summary, file) = p.finish();
            match file {
                Ok(Some(path)) => {
                    files.insert("skipped", path);
                }
                Ok(None) => {}
                Err(e) => {
                    error.get_or_insert(e.to_string());
                }
            }
            summary
        });
        let mut export_files = Vec::new();
        for (dataset, file) in &exported {
            files.insert(
                match *dataset {
                    "rows" => "export_rows",
                    "batches" => "export_batches",
                    _ => "export_rejected",
                },
                file.path.clone(),
            );
            export_files.push(serde_json::json!({
                "dataset": dataset, "path": file.path.display().to_string(),
                "rows": file.rows, "bytes": file.bytes,
            }));
        }

        counts.records_mapped = stats.rows_mapped;
        counts.event_batches_generated = stats.batches;
        counts.rows_rejected = stats.rejected_total();
        counts.values_dropped = stats.dropped_total();
        counts.values_truncated = stats.truncated_total();
        if counts.records_extracted == 0 {
            counts.records_extracted = stats.rows_read;
        }
        for (reason, count) in &stats.values_dropped {
            events::ValuesAdjusted {
                action: "dropped",
                reason,
                count: *count,
            }
            .emit();
        }
        for (reason, count) in &stats.values_truncated {
            events::ValuesAdjusted {
                action: "truncated",
                reason,
                count: *count,
            }
            .emit();
        }
        if let Some(path) = files.get("rejected") {
            for (reason, count) in &stats.rows_rejected {
                events::RowsRejected {
                    reason,
                    count: *count,
                    file: &path.display().to_string(),
                }
                .emit();
            }
        }

        let state = match (&error, interrupted) {
            (None, _) => RunState::Success,
            (Some(_), true) => RunState::Interrupted,
            (Some(_), false) => RunState::Failed,
        };
        let outcome = RunOutcome {
            state,
            counts: counts.clone(),
            files: {
                let mut map: serde_json::Map<String, serde_json::Value> = files
                    .iter()
                    .map(|(k, v)| {
                        (
                            (*k).to_owned(),
                            serde_json::Value::String(v.display().to_string()),
                        )
                    })
                    .collect();
                if !export_files.is_empty() {
                    map.insert("exports".to_owned(), serde_json::Value::Array(export_files));
                }
                serde_json::Value::Object(map)
            },
            error: error.clone(),
            watermark: if state == RunState::Success {
                watermark
            } else {
                None
            },
        };
        let now = ctx.clock.now();
        if dry_record.is_none() {
            ctx.state
                .finish_run(run_id, &pipeline.id, now, &outcome)
                .await?;
        }
        events::RunFinished {
            state: state.as_str(),
            records_extracted: counts.records_extracted,
            batches_sent: counts.batches_sent,
            rows_rejected: counts.rows_rejected,
            error: error.as_deref(),
        }
        .emit();
        let record = match dry_record {
            Some(mut record) => {
                record.state = state;
                record.end_date = Some(now);
                record.counts = counts.clone();
                record.files = outcome.files.clone();
                record.error = error.clone();
                record
            }
            None => ctx
                .state
                .run(run_id)
                .await?
                .ok_or(SyncError::State(StateError::Query(
                    sqlx::Error::RowNotFound,
                )))?,
        };
        ctx.metrics.run_finished(
            &record,
            protection.as_ref().map_or(0, |p| p.skipped_no_profile),
        );
        let mut report = RunReport {
            record,
            stats,
            requests,
            request_bytes,
            files,
            plan,
            samples,
            protection,
        };
        // The report file is part of the audit trail; failing to write it does
        // not undo a run that already happened, so it is logged, not fatal.
        let path = ctx
            .project
            .state
            .runs_dir
            .join(&pipeline.id)
            .join(&run_key)
            .join("report.json");
        match report::write(&report, pipeline, &path) {
            Ok(()) => {
                report.files.insert("report", path);
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "Cannot write the run report.")
            }
        }
        Ok(report)
    }
}

/// `wsync export`: the whole model (no window) as one Parquet file of the `rows`
/// dataset at `out`. Sends nothing and records nothing.
pub async fn export_once(
    project: &Project,
    pipeline: &Pipeline,
    out: &std::path::Path,
    compression: crate::export::Compression,
    progress: &crate::telemetry::progress::RunProgress,
) -> Result<crate::export::ExportedFile, SyncError> {
    let (mut warehouse, query) = open(project, pipeline, None).await?;
    let columns = warehouse.probe(&query).await?;
    let mut data = crate::export::RowsDataset::new(&columns);
    let options = crate::export::ExportOptions {
        compression,
        ..crate::export::ExportOptions::default()
    };
    let mut file = crate::export::ParquetFile::create(out, data.schema(), &options)?;
    let chunk_rows = project.connections[&pipeline.connection].chunk_rows;
    let (tx, mut rx) = mpsc::channel::<RecordBatch>(CHANNEL_CHUNKS);
    let write = async {
        while let Some(chunk) = rx.recv().await {
            progress.add_rows(chunk.num_rows() as u64);
            file.write(&data.convert(&chunk)?)?;
        }
        Ok::<_, SyncError>(())
    };
    let (extracted, written) =
        tokio::join!(warehouse.extract(&query, &columns, chunk_rows, tx), write);
    written?;
    extracted?;
    Ok(file.finish()?)
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
    let letters = ctx
        .state
        .dead_letters(
            &pipeline.id,
            Some(DeadLetterKind::Batch),
            MAX_DEAD_LETTER_RETRIES,
            0,
        )
        .await?;
    let batches: Vec<EncodedBatch> = letters
        .iter()
        .map(|l| EncodedBatch {
            row: 0,
            part: 0,
            source_request_id: l.source_request_id.clone().unwrap_or_default(),
            json: l.payload.clone().into_bytes(),
        })
        .collect();
    let mut packer = RequestPacker::default();
    let mut handles = Vec::new();
    for batch in &batches {
        if let Some(request) = packer.push(batch) {
            handles.push(deliverer.submit(request).await?);
        }
    }
    if let Some(request) = packer.take() {
        handles.push(deliverer.submit(request).await?);
    }
    let mut delivered = std::collections::HashSet::new();
    let mut refused = Vec::new();
    let mut first_error = None;
    for handle in handles {
        match handle.await {
            Ok(Ok(outcome)) => {
                delivered.extend(outcome.acknowledged);
                refused.extend(outcome.dead_letters);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(SyncError::Delivery(e));
            }
            Err(e) => {
                first_error.get_or_insert(SyncError::Internal(e.to_string()));
            }
        }
    }
    let mut removed = Vec::new();
    let mut bumped = Vec::new();
    for letter in &letters {
        let Some(id) = &letter.source_request_id else {
            continue;
        };
        if delivered.contains(id) {
            removed.push(letter.id);
        } else if let Some(r) = refused.iter().find(|r| &r.source_request_id == id) {
            bumped.push((letter.id, format!("HTTP {}: {}", r.status, r.message)));
        }
    }
    ctx.state.remove_dead_letters(&removed).await?;
    ctx.state.bump_dead_letters(&bumped).await?;
    match first_error {
        Some(e) => Err(e),
        None => Ok((removed.len() as u64, bumped.len() as u64)),
    }
}
