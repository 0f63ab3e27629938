//! One pipeline run: extract → map → deliver → commit.
//!
//! Extraction runs concurrently with mapping and delivery, joined by a bounded
//! channel of Arrow record batches, so at most a few chunks are in memory
//! whatever the table size. The run record is written before the first query
//! and finished (with the watermark, for a successful incremental run) in one
//! state-store transaction at the end. A failure anywhere fails the run, keeps
//! the watermark where it was, and is recorded with its error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::clock::Clock;
use crate::config::model::{InputProtection, Pipeline, Project, SyncMode};
use crate::mapping::{MapStats, Mapper, MappingError, MappingPlan, RejectedRow};
use crate::sink::files::JsonlFile;
use crate::sink::{DeliveryError, EventsApiClient, PackedRequest, RequestPacker};
use crate::source::guard::check_single_select;
use crate::source::{ColumnInfo, IteratorFilter, SourceError, SourceQuery, Warehouse};
use crate::state::{
    DeadLetterKind, NewDeadLetter, RunCounts, RunOutcome, RunRecord, RunState, StateError,
    StateStore,
};
use crate::telemetry::events;

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
    /// A run file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
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
}

impl SyncContext {
    /// The pipeline with this id, or an error listing the ones that exist.
    pub fn pipeline(&self, id: &str) -> Result<&Pipeline, SyncError> {
        self.project
            .pipelines
            .get(id)
            .ok_or_else(|| SyncError::UnknownPipeline {
                id: id.to_owned(),
                available: self
                    .project
                    .pipelines
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
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
/// store down, SQL refused). Once recorded, a run that fails returns `Ok` with
/// `record.state == Failed` and the error in `record.error`.
pub async fn run(
    ctx: &SyncContext,
    pipeline_id: &str,
    run_type: &str,
) -> Result<RunReport, SyncError> {
    let pipeline = ctx.pipeline(pipeline_id)?.clone();
    if pipeline.input_protection == InputProtection::OnlyUpdate {
        return Err(SyncError::Unsupported {
            pipeline: pipeline.id.clone(),
            message: "input_protection = \"only_update\" needs a profile resolver, which this \
                      version does not have yet; nothing was sent. Use \"only_read\" to see what \
                      would be sent, or \"create_and_update\""
                .to_owned(),
        });
    }
    let model = &ctx.project.models[&pipeline.data_model];
    check_single_select(&model.sql).map_err(|e| SyncError::Refused {
        model: model.name.clone(),
        file: model.path.clone(),
        message: e.to_string(),
    })?;
    let dry_run = pipeline.input_protection == InputProtection::OnlyRead;
    let started = ctx.clock.now();

    // Window lower bound from the watermark (or `from`); the upper bound needs
    // the warehouse for integer iterators, so it is fixed after connecting.
    let watermark = ctx.state.watermark(&pipeline.id).await?;
    let lower = match &pipeline.sync_mode {
        SyncMode::Full => None,
        SyncMode::Incremental {
            iterator_data_type,
            from,
            ..
        } => match watermark.as_deref().or(from.as_deref()) {
            None => None,
            Some(text) => Some(window::parse(*iterator_data_type, text).ok_or_else(|| {
                SyncError::BadWatermark {
                    pipeline: pipeline.id.clone(),
                    value: text.to_owned(),
                    data_type: iterator_data_type.as_str(),
                }
            })?),
        },
    };
    let upper = match &pipeline.sync_mode {
        SyncMode::Incremental {
            iterator_data_type, ..
        } => window::upper_at(*iterator_data_type, started),
        SyncMode::Full => None,
    };
    let run_id = ctx
        .state
        .start_run(
            &pipeline.id,
            run_type,
            dry_run,
            started,
            (
                lower.as_ref().map(window::to_text),
                upper.as_ref().map(window::to_text),
            ),
        )
        .await?;

    let span = tracing::info_span!("run", pipeline = %pipeline.id, run_id);
    let mut attempt = Attempt::new(ctx, &pipeline, run_id, dry_run);
    let result = attempt.execute(lower, upper).instrument(span.clone()).await;
    let _entered = span.enter();
    attempt.finish(result).await
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
    run_id: i64,
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
}

impl<'a> Attempt<'a> {
    fn new(ctx: &'a SyncContext, pipeline: &'a Pipeline, run_id: i64, dry_run: bool) -> Self {
        let dir = ctx
            .project
            .state
            .runs_dir
            .join(&pipeline.id)
            .join(run_id.to_string());
        Self {
            ctx,
            pipeline,
            run_id,
            dry_run,
            stats: MapStats::default(),
            counts: RunCounts::default(),
            requests: 0,
            request_bytes: 0,
            rejected: JsonlFile::new(dir.join("rejected.jsonl")),
            would_be: dry_run.then(|| JsonlFile::new(dir.join("batches.jsonl"))),
            watermark: None,
            plan: None,
            samples: BTreeMap::new(),
        }
    }

    async fn execute(
        &mut self,
        lower: Option<crate::source::IteratorValue>,
        mut upper: Option<crate::source::IteratorValue>,
    ) -> Result<(), SyncError> {
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
            if filter.data_type == crate::config::model::IteratorDataType::Integer {
                let max = warehouse.max_iterator(&query).await?;
                upper = match (max, lower) {
                    (Some(crate::source::IteratorValue::Integer(m)), _) => {
                        Some(crate::source::IteratorValue::Integer(m.saturating_add(1)))
                    }
                    // An empty model: the window is empty and the watermark stays.
                    (_, lower) => lower,
                };
                query.filter = filter_for(lower, upper);
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
        self.plan = Some(plan.clone());
        let mapper = Mapper::new(plan, self.pipeline);
        let client = match (&self.pipeline.feed, self.dry_run) {
            (Some(feed), false) => Some(EventsApiClient::new(&project.feeds[feed])?),
            _ => None,
        };
        let chunk_rows = project.connections[&self.pipeline.connection].chunk_rows;

        let (tx, rx) = mpsc::channel::<RecordBatch>(CHANNEL_CHUNKS);
        let (extracted, consumed) = tokio::join!(
            warehouse.extract(&query, &columns, chunk_rows, tx),
            self.consume(rx, &mapper, client.as_ref())
        );
        // A delivery failure drops the receiver, which ends extraction early; the
        // delivery error is the one worth reporting.
        consumed?;
        self.counts.records_extracted = extracted?;
        if query.filter.is_some() && !self.dry_run {
            self.watermark = upper.as_ref().map(window::to_text);
        }
        Ok(())
    }

    async fn consume(
        &mut self,
        mut rx: mpsc::Receiver<RecordBatch>,
        mapper: &Mapper,
        client: Option<&EventsApiClient>,
    ) -> Result<(), SyncError> {
        let mut packer = RequestPacker::default();
        let mut next_row = 1u64;
        while let Some(chunk) = rx.recv().await {
            let mapped = mapper.map_chunk(&chunk, next_row, &mut self.stats)?;
            next_row += chunk.num_rows() as u64;
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
                self.ctx
                    .state
                    .add_dead_letters(
                        &self.pipeline.id,
                        self.run_id,
                        self.ctx.clock.now(),
                        &letters,
                    )
                    .await?;
                self.counts.dead_letters += letters.len() as u64;
            }
            for batch in &mapped.batches {
                if let Some(file) = self.would_be.as_mut() {
                    let path = file.path().to_owned();
                    file.write_line(&batch.json)
                        .map_err(|source| SyncError::File { path, source })?;
                }
                if let Some(request) = packer.push(batch) {
                    self.deliver(request, client).await?;
                }
            }
        }
        if let Some(request) = packer.take() {
            self.deliver(request, client).await?;
        }
        Ok(())
    }

    async fn deliver(
        &mut self,
        request: PackedRequest,
        client: Option<&EventsApiClient>,
    ) -> Result<(), SyncError> {
        if let Some(client) = client {
            let accepted = client.send(&request).await?;
            events::RequestAcknowledged {
                batches: request.batch_count,
                bytes: request.body.len(),
                status: accepted.status,
            }
            .emit();
            self.counts.batches_sent += request.batch_count as u64;
            self.counts.requests_sent += 1;
            self.counts.bytes_sent += request.body.len() as u64;
        }
        self.requests += 1;
        self.request_bytes += request.body.len() as u64;
        Ok(())
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
            ..
        } = self;
        let mut files = BTreeMap::new();
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

        let state = if error.is_some() {
            RunState::Failed
        } else {
            RunState::Success
        };
        let outcome = RunOutcome {
            state,
            counts: counts.clone(),
            files: serde_json::Value::Object(
                files
                    .iter()
                    .map(|(k, v)| {
                        (
                            (*k).to_owned(),
                            serde_json::Value::String(v.display().to_string()),
                        )
                    })
                    .collect(),
            ),
            error: error.clone(),
            watermark: if state == RunState::Success {
                watermark
            } else {
                None
            },
        };
        let now = ctx.clock.now();
        ctx.state
            .finish_run(run_id, &pipeline.id, now, &outcome)
            .await?;
        events::RunFinished {
            state: state.as_str(),
            records_extracted: counts.records_extracted,
            batches_sent: counts.batches_sent,
            rows_rejected: counts.rows_rejected,
            error: error.as_deref(),
        }
        .emit();
        let record = ctx
            .state
            .run(run_id)
            .await?
            .ok_or(SyncError::State(StateError::Query(
                sqlx::Error::RowNotFound,
            )))?;
        let mut report = RunReport {
            record,
            stats,
            requests,
            request_bytes,
            files,
            plan,
            samples,
        };
        // The report file is part of the audit trail; failing to write it does
        // not undo a run that already happened, so it is logged, not fatal.
        let path = ctx
            .project
            .state
            .runs_dir
            .join(&pipeline.id)
            .join(run_id.to_string())
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
