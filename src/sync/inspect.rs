//! Reading a model without a run: `validate`'s probe, `preview` and
//! `wsync export`. Nothing is sent or recorded.

use arrow::array::RecordBatch;
use tokio::sync::mpsc;

use crate::config::model::{Pipeline, Project};
use crate::mapping::{MapStats, MappingPlan};
use crate::source::ColumnInfo;

use super::extract::open;
use super::SyncError;

/// Chunks buffered between the extractor and the consumer.
const CHANNEL_CHUNKS: usize = 2;

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
    if let Some(settings) = &pipeline.diff {
        super::diff::key_columns(pipeline, settings, &columns)?;
    }
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
    let mapper = super::mapper_for(
        project,
        pipeline,
        MappingPlan::new(&columns, pipeline)?,
        chrono::Utc::now(),
    )?;
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

/// `wsync validate PIPELINE` for an event pipeline with a data plan document:
/// map every row of the model (no window) and check each event against the
/// plan. Sends nothing, records nothing; the counters say what a run would
/// reject or flag.
pub async fn check_events(project: &Project, pipeline: &Pipeline) -> Result<MapStats, SyncError> {
    let (mut warehouse, query) = open(project, pipeline, None).await?;
    let columns = warehouse.probe(&query).await?;
    let mapper = super::mapper_for(
        project,
        pipeline,
        MappingPlan::new(&columns, pipeline)?,
        chrono::Utc::now(),
    )?;
    let chunk_rows = project.connections[&pipeline.connection].chunk_rows;
    let (tx, mut rx) = mpsc::channel::<RecordBatch>(CHANNEL_CHUNKS);
    let mut stats = MapStats::default();
    let consume = async {
        let mut next_row = 1;
        while let Some(chunk) = rx.recv().await {
            mapper.map_chunk(&chunk, next_row, &mut stats)?;
            next_row += chunk.num_rows() as u64;
        }
        Ok::<_, SyncError>(())
    };
    let (extracted, consumed) =
        tokio::join!(warehouse.extract(&query, &columns, chunk_rows, tx), consume);
    extracted?;
    consumed?;
    Ok(stats)
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
