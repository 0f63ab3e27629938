//! Stages 1 and 2, extract → spool: read the model's window from the warehouse
//! at the warehouse's speed and write it to the pipeline's spool, then close
//! the connection, whatever delivery is doing.
//!
//! The extract runs on its own task, so the transform can follow the spool as
//! it grows; delivery's pace never reaches the warehouse, and
//! `statement_timeout_secs` bounds only the warehouse's own work. Runs that send
//! nothing (dry runs, export-only pipelines) stream straight to the transform
//! instead: they have no pace to decouple from and nothing to resume.
//!
//! A run resuming a complete spool does not connect at all: its columns and
//! window come from the spool's manifest.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use arrow::array::RecordBatch;

use crate::config::model::{IteratorDataType, Pipeline, Project, SyncMode};
use crate::source::{ColumnInfo, IteratorFilter, IteratorValue, SourceQuery, Warehouse};

use super::plan::WindowPlan;
use super::spool::{Manifest, SpoolDir, SpoolReader, SpoolWriter, SpooledColumn};
use super::transform::ChunkSource;
use super::{window, SyncContext, SyncError};

/// Chunks buffered between the extractor and its consumer (the spool writer or
/// the transform). Two keep the database busy while one chunk is handled,
/// without letting memory follow the table size.
const CHANNEL_CHUNKS: usize = 2;

/// How the extract ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extracted {
    /// Rows read (from the warehouse, or from the spool when resumed).
    pub rows: u64,
    /// Bytes of the spool's rows file (0 without a spool).
    pub spool_bytes: u64,
    /// Stopped by shutdown before the end.
    pub interrupted: bool,
    /// From connecting to closing the warehouse connection (zero when resumed).
    pub session: std::time::Duration,
}

/// An extract under way.
#[derive(Debug)]
pub struct Extract {
    /// The model's columns.
    pub columns: Vec<ColumnInfo>,
    /// The window actually read (an integer iterator's upper bound is fixed
    /// once connected).
    pub lower: Option<IteratorValue>,
    /// Upper bound.
    pub upper: Option<IteratorValue>,
    /// Where the transform reads.
    pub source: ChunkSource,
    task: Option<(JoinHandle<Result<Extracted, SyncError>>, CancellationToken)>,
    resumed: Option<Extracted>,
}

impl Extract {
    /// Resume a complete spool: no warehouse, columns and window from the
    /// manifest.
    pub fn resume(
        dir: &SpoolDir,
        manifest: &Manifest,
        plan: &WindowPlan,
    ) -> Result<Self, SyncError> {
        let columns = manifest
            .columns
            .iter()
            .map(SpooledColumn::to_column)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                SyncError::Spool(super::spool::SpoolError::Corrupt {
                    path: dir.path().to_owned(),
                    message: "its manifest names a column type this version does not know".into(),
                })
            })?;
        Ok(Self {
            columns,
            lower: plan.lower,
            upper: plan.upper,
            source: ChunkSource::Spool(Box::new(SpoolReader::complete(
                dir,
                manifest.chunks,
                manifest.rows,
            ))),
            task: None,
            resumed: Some(Extracted {
                rows: manifest.rows,
                spool_bytes: manifest.bytes,
                interrupted: false,
                session: std::time::Duration::ZERO,
            }),
        })
    }

    /// Connect, fix the window, probe the columns (no rows read) and start
    /// reading on a task of its own: into `spool` when given (its manifest
    /// written first, marked complete at the end), else into a channel.
    pub async fn start(
        ctx: &SyncContext,
        pipeline: &Pipeline,
        plan: &WindowPlan,
        spool: Option<(SpoolDir, Manifest)>,
    ) -> Result<Self, SyncError> {
        let project = &ctx.project;
        let connected = std::time::Instant::now();
        let (lower, mut upper) = (plan.lower, plan.upper);
        let (mut warehouse, mut query) =
            open(project, pipeline, filter_for(pipeline, lower, upper)).await?;
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
        query.filter = filter_for(pipeline, lower, upper);
        let columns = warehouse.probe(&query).await?;
        let chunk_rows = project.connections[&pipeline.connection].chunk_rows;
        let stop = ctx.shutdown.child_token();
        let (tx, rx) = mpsc::channel::<RecordBatch>(CHANNEL_CHUNKS);
        let (source, task) = if let Some((dir, mut manifest)) = spool {
            manifest.window_end = upper.as_ref().map(window::to_text);
            manifest.columns = columns.iter().map(SpooledColumn::from_column).collect();
            dir.create(&manifest)?;
            let (writer, progress) = SpoolWriter::new(&dir, project.state.min_free_disk_mb);
            let reader = SpoolReader::follow(&dir, progress);
            let job = SpoolJob {
                warehouse,
                query,
                columns: columns.clone(),
                chunk_rows,
                dir,
                manifest,
                writer,
                stop: stop.clone(),
                connected,
            };
            let task = on_own_thread(move || spool_task(job, (tx, rx)));
            (ChunkSource::Spool(Box::new(reader)), task)
        } else {
            let stop = stop.clone();
            let columns = columns.clone();
            let task = on_own_thread(move || {
                stream_task(warehouse, query, columns, chunk_rows, tx, stop, connected)
            });
            (ChunkSource::Stream(rx), task)
        };
        Ok(Self {
            columns,
            lower,
            upper,
            source,
            task: Some((task, stop)),
            resumed: None,
        })
    }

    /// Wait until the spool is complete, then read it from its first chunk
    /// (the snapshot diff needs every row before the first is sent). Returns
    /// the complete manifest.
    pub async fn complete_spool(&mut self, dir: &SpoolDir) -> Result<Manifest, SyncError> {
        if self.resumed.is_none() {
            let extracted = self.wait(false).await?;
            if extracted.interrupted {
                return Err(SyncError::Interrupted { checkpoint: None });
            }
            self.resumed = Some(extracted);
        }
        let manifest = dir.manifest()?.filter(|m| m.complete).ok_or_else(|| {
            SyncError::Internal(format!(
                "the spool in {} is not complete after its extract ended",
                dir.path().display()
            ))
        })?;
        self.source = ChunkSource::Spool(Box::new(SpoolReader::complete(
            dir,
            manifest.chunks,
            manifest.rows,
        )));
        Ok(manifest)
    }

    /// Whether chunks go through the spool (else straight to the transform).
    pub fn is_spooled(&self) -> bool {
        matches!(self.source, ChunkSource::Spool(_))
    }

    /// Wait for the extract to end. With `stop`, it is stopped first (the run
    /// failed downstream): the spool stays incomplete and is discarded by the
    /// next run.
    pub async fn wait(&mut self, stop: bool) -> Result<Extracted, SyncError> {
        if let Some(resumed) = self.resumed {
            return Ok(resumed);
        }
        let Some((task, token)) = self.task.take() else {
            return Err(SyncError::Internal("the extract was awaited twice".into()));
        };
        if stop {
            token.cancel();
        }
        task.await
            .map_err(|e| SyncError::Internal(format!("the extract task ended abnormally: {e}")))?
    }
}

/// Drive the future `make` builds on a thread of its own, on the shared
/// runtime. The extract then never waits for the transform's CPU work; and a
/// future that reads through sqlx is not provably `Send` for every lifetime
/// (rust-lang/rust#102211), so it is built where it runs instead of spawned.
fn on_own_thread<F, Fut>(make: F) -> JoinHandle<Result<Extracted, SyncError>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Extracted, SyncError>>,
{
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || runtime.block_on(make()))
}

/// The iterator filter of an incremental pipeline for a window.
fn filter_for(
    pipeline: &Pipeline,
    lower: Option<IteratorValue>,
    upper: Option<IteratorValue>,
) -> Option<IteratorFilter> {
    match &pipeline.sync_mode {
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
    }
}

/// Connect and build the query for a pipeline, with an optional iterator filter.
pub(crate) async fn open(
    project: &Project,
    pipeline: &Pipeline,
    filter: Option<IteratorFilter>,
) -> Result<(Warehouse, SourceQuery), SyncError> {
    // The model was checked to be one SELECT when the project was loaded.
    let model = &project.models[&pipeline.data_model];
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

/// Read into the channel until the end, shutdown or the receiver leaving.
/// `None` when stopped.
async fn read(
    warehouse: &mut Warehouse,
    query: &SourceQuery,
    columns: &[ColumnInfo],
    chunk_rows: usize,
    tx: mpsc::Sender<RecordBatch>,
    stop: &CancellationToken,
) -> Option<Result<u64, SyncError>> {
    let reading = warehouse.extract(query, columns, chunk_rows, tx);
    // On shutdown the query is abandoned at once (dropping it closes the cursor).
    tokio::select! {
        biased;
        () = stop.cancelled() => None,
        r = reading => Some(r.map_err(SyncError::from)),
    }
}

async fn stream_task(
    mut warehouse: Warehouse,
    query: SourceQuery,
    columns: Vec<ColumnInfo>,
    chunk_rows: usize,
    tx: mpsc::Sender<RecordBatch>,
    stop: CancellationToken,
    connected: std::time::Instant,
) -> Result<Extracted, SyncError> {
    let result = read(&mut warehouse, &query, &columns, chunk_rows, tx, &stop).await;
    warehouse.close().await;
    let session = connected.elapsed();
    match result {
        None => Ok(Extracted {
            rows: 0,
            spool_bytes: 0,
            interrupted: true,
            session,
        }),
        Some(r) => r.map(|rows| Extracted {
            rows,
            spool_bytes: 0,
            interrupted: false,
            session,
        }),
    }
}

/// What the spooling extract task owns.
struct SpoolJob {
    warehouse: Warehouse,
    query: SourceQuery,
    columns: Vec<ColumnInfo>,
    chunk_rows: usize,
    dir: SpoolDir,
    manifest: Manifest,
    writer: SpoolWriter,
    stop: CancellationToken,
    connected: std::time::Instant,
}

async fn spool_task(
    job: SpoolJob,
    (tx, mut rx): (mpsc::Sender<RecordBatch>, mpsc::Receiver<RecordBatch>),
) -> Result<Extracted, SyncError> {
    let SpoolJob {
        mut warehouse,
        query,
        columns,
        chunk_rows,
        dir,
        mut manifest,
        mut writer,
        stop,
        connected,
    } = job;
    // Compressing and writing happen on a blocking thread, beside the reads.
    let writing = tokio::task::spawn_blocking(move || {
        while let Some(chunk) = rx.blocking_recv() {
            if let Err(e) = writer.write(&chunk) {
                return (writer, Some(e));
            }
        }
        (writer, None)
    });
    let result = read(&mut warehouse, &query, &columns, chunk_rows, tx, &stop).await;
    // The warehouse's part is over: close before the spool is even finished.
    warehouse.close().await;
    let session = connected.elapsed();
    let writer = match writing.await {
        Ok((writer, None)) => writer,
        // A write failure ends the extract (the channel closed); it is the
        // error worth reporting.
        Ok((writer, Some(e))) => {
            writer.abandon();
            return Err(e.into());
        }
        Err(e) => {
            return Err(SyncError::Internal(format!(
                "the spool writer ended abnormally: {e}"
            )))
        }
    };
    match result {
        None => {
            writer.abandon();
            Ok(Extracted {
                rows: 0,
                spool_bytes: 0,
                interrupted: true,
                session,
            })
        }
        Some(Err(e)) => {
            writer.abandon();
            Err(e)
        }
        Some(Ok(rows)) => {
            let progress = writer.progress();
            let bytes = writer.finish()?;
            manifest.complete = true;
            manifest.rows = progress.rows;
            manifest.chunks = progress.chunks;
            manifest.bytes = bytes;
            dir.write_manifest(&manifest)?;
            Ok(Extracted {
                rows,
                spool_bytes: bytes,
                interrupted: false,
                session,
            })
        }
    }
}
