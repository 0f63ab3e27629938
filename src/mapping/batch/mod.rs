//! The row → batch encoder.
//!
//! For each row: collect identities, `mpid`, device ids and attributes in column
//! order; apply the NULL policy and the limits; reject the row if it has nothing
//! to resolve a profile by; split the attributes over as many batches as the
//! 100-attribute and 128 KiB limits need (every part carries the same identities);
//! write each part as JSON and stamp it with a `source_request_id` derived from
//! the pipeline id and the part's content, so the same row always yields the same
//! id and mParticle applies a re-sent batch once.
//!
//! `row` routes a row's cells, `encode` writes its batches, `outcome`
//! holds what comes out and the counters.

use std::borrow::Cow;
use std::io::Write as _;

use arrow::array::{Array as _, RecordBatch};

use crate::config::model::{Environment, LimitPolicy, NullPolicy, Pipeline};
use crate::mapping::convert::{Cell, ColumnReader, Value};
use crate::mapping::identity::{DeviceIdType, IdentityType};
use crate::mapping::json::write_str;
use crate::mapping::plan::{MappingPlan, Route};
use crate::mapping::MappingError;

mod encode;
mod outcome;
mod row;
#[cfg(test)]
mod tests;

pub use encode::source_request_id;
use encode::Scratch;
pub(crate) use encode::{id_hasher, id_hex, write_members};
pub use outcome::{
    ColumnStats, EncodedBatch, EventCounts, MapStats, MappedChunk, RejectReason, RejectedRow,
};

/// Length of the hex `source_request_id` (128 bits).
const ID_HEX_LEN: usize = 32;
/// Bytes the `"source_request_id":"…",` member adds to a batch.
const ID_MEMBER_BYTES: usize = r#""source_request_id":"","#.len() + ID_HEX_LEN;

/// Encodes rows of a model into batches for one pipeline.
#[derive(Debug, Clone)]
pub struct Mapper {
    plan: MappingPlan,
    pub(crate) pipeline_id: String,
    environment: Environment,
    null_policy: NullPolicy,
    limit_policy: LimitPolicy,
    /// `,"context":{"data_plan":{…}}` when the pipeline names a data plan,
    /// else empty: every batch carries it.
    pub(crate) context: Vec<u8>,
    /// Event pipelines: events before this instant (ms since 1970) are
    /// historical. Fixed per spool, so mapping it again gives the same batches.
    pub(crate) historical_before_ms: i64,
    /// Event pipelines: the data plan document events are checked against.
    pub(crate) data_plan: Option<std::sync::Arc<crate::mapping::data_plan::DataPlan>>,
    /// Whether a violation rejects the row (`block`) or is only counted.
    pub(crate) plan_blocks: bool,
    /// Position in the plan's columns of the iterator whose value goes into
    /// the ids (incremental pipelines without `[diff]`).
    id_iterator: Option<usize>,
}

/// One row's pieces before encoding.
#[derive(Default)]
pub(crate) struct RowParts<'a> {
    pub(crate) identities: Vec<(IdentityType, String)>,
    pub(crate) mpid: Option<i64>,
    pub(crate) devices: Vec<(DeviceIdType, String)>,
    attributes: Vec<(Cow<'a, str>, Value<'a>)>,
    deleted: Vec<Cow<'a, str>>,
    /// Event pipelines: event fields.
    pub(crate) event_fields: Vec<(crate::config::model::EventField, Value<'a>)>,
    /// Event pipelines: event custom attributes.
    pub(crate) event_attributes: Vec<(Cow<'a, str>, Value<'a>)>,
    /// Values dropped or truncated in this row; counted only if the row is sent,
    /// so a rejected row's values do not inflate the counters.
    pub(crate) adjustments: Vec<Adjustment>,
    /// The plan column of each adjustment (`None` for static mappings).
    pub(crate) adjustment_columns: Vec<Option<usize>>,
}

/// One value dropped or truncated, by reason.
#[derive(Clone, Copy)]
pub(crate) enum Adjustment {
    Dropped(&'static str),
    Truncated(&'static str),
}

impl Mapper {
    /// A mapper for `pipeline` over a planned model.
    pub fn new(plan: MappingPlan, pipeline: &Pipeline) -> Self {
        let mut context = Vec::new();
        if let Some(plan) = &pipeline.data_plan {
            context.extend_from_slice(b",\"context\":{\"data_plan\":{\"plan_id\":");
            write_str(&mut context, &plan.plan_id);
            if let Some(version) = plan.plan_version {
                // `write!` into a Vec cannot fail.
                let _ = write!(context, ",\"plan_version\":{version}");
            }
            context.extend_from_slice(b"}}");
        }
        // A row re-read at a new iterator value is a new version: its id must
        // differ from the earlier send's even if the content is back to an
        // earlier value. Diff pipelines derive ids from the key's version
        // instead (and must hash the content alone).
        let id_iterator = if pipeline.diff.is_none() {
            plan.columns
                .iter()
                .position(|c| matches!(c.route, Route::Iterator))
        } else {
            None
        };
        Self {
            id_iterator,
            plan,
            pipeline_id: pipeline.id.clone(),
            environment: pipeline.environment,
            null_policy: pipeline.null_policy,
            limit_policy: pipeline.limit_policy,
            context,
            historical_before_ms: chrono::Utc::now().timestamp_millis()
                - crate::mapping::event::HISTORICAL_AGE_MS,
            data_plan: None,
            plan_blocks: false,
        }
    }

    /// Event pipelines: events older than 30 days before `as_of` are
    /// historical. A run passes the time its spool was made, so a resumed
    /// spool maps to the same batches.
    #[must_use]
    pub fn as_of(mut self, as_of: chrono::DateTime<chrono::Utc>) -> Self {
        self.historical_before_ms =
            as_of.timestamp_millis() - crate::mapping::event::HISTORICAL_AGE_MS;
        self
    }

    /// Event pipelines: check every event against this data plan; `blocks`
    /// rejects the rows of events that break it, else they are only counted.
    #[must_use]
    pub fn with_data_plan(
        mut self,
        plan: std::sync::Arc<crate::mapping::data_plan::DataPlan>,
        blocks: bool,
    ) -> Self {
        self.data_plan = Some(plan);
        self.plan_blocks = blocks;
        self
    }

    /// The environment batches are tagged with.
    pub(crate) fn environment(&self) -> Environment {
        self.environment
    }

    /// The plan in use.
    pub fn plan(&self) -> &MappingPlan {
        &self.plan
    }

    /// Map every row of `chunk`; `first_row` is the 1-based run row number of its
    /// first row.
    pub fn map_chunk(
        &self,
        chunk: &RecordBatch,
        first_row: u64,
        stats: &mut MapStats,
    ) -> Result<MappedChunk, MappingError> {
        let readers = self
            .plan
            .columns
            .iter()
            .map(|c| ColumnReader::new(&c.name, &c.kind, chunk.column(c.index)))
            .collect::<Result<Vec<_>, _>>()?;
        column_stats(&self.plan, chunk, stats);
        // Rows the reader could not decode carry their reason in the reserved
        // last column (see `source::REJECTED_COLUMN`).
        let reasons = crate::source::rejected_reasons(chunk, self.plan.columns.len())
            .filter(|r| r.null_count() < r.len());
        let rows = chunk.num_rows();
        let parts = parallel_parts(rows);
        if parts <= 1 {
            let mut out = self.map_rows(&readers, reasons, 0..rows, first_row, stats);
            self.group_chunk_events(&mut out, stats);
            return Ok(out);
        }
        // Rows are independent, so the chunk is cut into contiguous ranges mapped
        // on scoped threads and joined in order: the output is exactly that of one
        // pass, and a run's consumer keeps every core busy while it maps.
        let per_part = rows.div_ceil(parts);
        let ranges: Vec<std::ops::Range<usize>> = (0..parts)
            .map(|p| (p * per_part)..((p + 1) * per_part).min(rows))
            .filter(|r| !r.is_empty())
            .collect();
        let readers = &readers;
        let columns = self.plan.columns.len();
        let mapped: Vec<(MappedChunk, MapStats)> = std::thread::scope(|scope| {
            let run = move |range: std::ops::Range<usize>| {
                let mut part_stats = MapStats {
                    columns: vec![ColumnStats::default(); columns],
                    ..MapStats::default()
                };
                let out = self.map_rows(readers, reasons, range, first_row, &mut part_stats);
                (out, part_stats)
            };
            let mut rest = ranges[1..]
                .iter()
                .map(|r| {
                    let r = r.clone();
                    scope.spawn(move || run(r))
                })
                .collect::<Vec<_>>();
            let mut all = vec![run(ranges[0].clone())];
            for handle in rest.drain(..) {
                // A panic in a mapping thread is a wsync bug: surface it as one.
                all.push(
                    handle
                        .join()
                        .unwrap_or_else(|e| std::panic::resume_unwind(e)),
                );
            }
            all
        });
        let mut out = MappedChunk::default();
        for (part, part_stats) in mapped {
            out.batches.extend(part.batches);
            out.rejected.extend(part.rejected);
            out.events.extend(part.events);
            stats.merge(part_stats);
        }
        self.group_chunk_events(&mut out, stats);
        Ok(out)
    }

    /// A row's values by column name as JSON, as the rejected-rows file
    /// shows them (for rows rejected after mapping, by the diff).
    pub fn row_values_of(
        &self,
        chunk: &RecordBatch,
        row: usize,
    ) -> Result<serde_json::Map<String, serde_json::Value>, MappingError> {
        let readers = self
            .plan
            .columns
            .iter()
            .map(|c| ColumnReader::new(&c.name, &c.kind, chunk.column(c.index)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(row_values(&self.plan, &readers, row))
    }

    /// Map `rows` of a chunk (the single-threaded pass of [`Self::map_chunk`]).
    fn map_rows(
        &self,
        readers: &[ColumnReader<'_>],
        reasons: Option<&arrow::array::StringArray>,
        rows: std::ops::Range<usize>,
        first_row: u64,
        stats: &mut MapStats,
    ) -> MappedChunk {
        let events = self.plan.pipeline_type == crate::config::model::PipelineType::Events;
        let mut out = MappedChunk {
            batches: Vec::with_capacity(if events { 0 } else { rows.len() }),
            rejected: Vec::new(),
            events: Vec::new(),
        };
        let mut scratch = Scratch::default();
        for row in rows {
            let row_number = first_row + row as u64;
            stats.rows_read += 1;
            if let Some(reason) = reasons.filter(|r| r.is_valid(row)).map(|r| r.value(row)) {
                out.rejected.push(self.reject(
                    readers,
                    row,
                    row_number,
                    RejectReason::InvalidValue,
                    reason.to_owned(),
                    stats,
                ));
                continue;
            }
            match self.map_row(readers, row) {
                Ok(mut parts) => match self.encode_row(
                    events,
                    &mut parts,
                    row_number,
                    self.id_salt(readers, row).as_deref(),
                    stats,
                    &mut scratch,
                    &mut out.events,
                ) {
                    Ok(batches) => {
                        for (adjustment, column) in
                            parts.adjustments.iter().zip(&parts.adjustment_columns)
                        {
                            let column = column.and_then(|c| stats.columns.get_mut(c));
                            match *adjustment {
                                Adjustment::Dropped(why) => {
                                    if let Some(c) = column {
                                        c.dropped += 1;
                                    }
                                    stats.drop_value(why);
                                }
                                Adjustment::Truncated(why) => {
                                    if let Some(c) = column {
                                        c.truncated += 1;
                                    }
                                    stats.truncate_value(why);
                                }
                            }
                        }
                        stats.rows_mapped += 1;
                        stats.batches += batches.len() as u64;
                        out.batches.extend(batches);
                    }
                    Err((reason, detail)) => {
                        out.rejected
                            .push(self.reject(readers, row, row_number, reason, detail, stats));
                    }
                },
                Err((reason, detail)) => {
                    out.rejected
                        .push(self.reject(readers, row, row_number, reason, detail, stats));
                }
            }
        }
        out
    }

    /// A profile row's batches, or (event pipelines) its event, kept in
    /// `events` for grouping; the row's batches are then none yet.
    #[allow(clippy::too_many_arguments)] // the encoder's state, passed down as encode takes it
    fn encode_row(
        &self,
        events: bool,
        parts: &mut RowParts<'_>,
        row: u64,
        salt: Option<&str>,
        stats: &mut MapStats,
        scratch: &mut Scratch,
        event_rows: &mut Vec<crate::mapping::event::EventRow>,
    ) -> Result<Vec<EncodedBatch>, (RejectReason, String)> {
        if events {
            event_rows.push(self.encode_event(parts, row, stats)?);
            Ok(Vec::new())
        } else {
            self.encode(parts, row, salt, stats, scratch)
        }
    }

    /// The iterator value of `row` as the ids include it, if they do.
    fn id_salt(&self, readers: &[ColumnReader<'_>], row: usize) -> Option<String> {
        let reader = readers.get(self.id_iterator?)?;
        match reader.cell(row) {
            Cell::Value(v) => Some(v.to_text()),
            Cell::Null | Cell::Unrepresentable(_) => None,
        }
    }

    pub(crate) fn reject(
        &self,
        readers: &[ColumnReader<'_>],
        row: usize,
        row_number: u64,
        reason: RejectReason,
        detail: String,
        stats: &mut MapStats,
    ) -> RejectedRow {
        *stats.rows_rejected.entry(reason.as_str()).or_default() += 1;
        RejectedRow {
            row: row_number,
            reason,
            detail,
            values: row_values(&self.plan, readers, row),
        }
    }
}

/// Rows below which a chunk is mapped on the calling thread alone: a scoped
/// thread costs some microseconds to start, a row a few.
const MIN_ROWS_PER_PART: usize = 256;

/// Into how many parts to cut a chunk of `rows` rows: one per core, each of at
/// least [`MIN_ROWS_PER_PART`] rows.
fn parallel_parts(rows: usize) -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES
        .get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    cores.min(rows / MIN_ROWS_PER_PART).max(1)
}

/// Column-wise counts for a chunk: NULLs from the Arrow null bitmaps and the
/// longest text value from the offsets, so no per-row work is added.
fn column_stats(plan: &MappingPlan, chunk: &RecordBatch, stats: &mut MapStats) {
    use arrow::array::{Array, AsArray};
    if stats.columns.len() != plan.columns.len() {
        stats.columns = vec![ColumnStats::default(); plan.columns.len()];
    }
    for (column, out) in plan.columns.iter().zip(stats.columns.iter_mut()) {
        let array = chunk.column(column.index);
        let nulls = array.null_count() as u64;
        out.nulls += nulls;
        out.values += array.len() as u64 - nulls;
        if let Some(text) = array.as_string_opt::<i32>() {
            let offsets = text.value_offsets();
            let longest = (0..text.len())
                .max_by_key(|&i| offsets[i + 1] - offsets[i])
                .filter(|&i| !text.is_null(i));
            if let Some(i) = longest {
                out.longest_chars = out.longest_chars.max(text.value(i).chars().count());
            }
        }
    }
}

/// A row's values by column name as JSON, for the rejected-rows file.
pub(crate) fn row_values(
    plan: &MappingPlan,
    readers: &[ColumnReader<'_>],
    row: usize,
) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::Value as J;
    plan.columns
        .iter()
        .zip(readers)
        .map(|(column, reader)| {
            let value = match reader.cell(row) {
                Cell::Null => J::Null,
                Cell::Unrepresentable(_) => J::String("NaN or Infinity".to_owned()),
                Cell::Value(Value::Bool(b)) => J::Bool(b),
                Cell::Value(Value::Int(i)) => J::from(i),
                Cell::Value(Value::Float(f)) => {
                    serde_json::Number::from_f64(f).map_or(J::Null, J::Number)
                }
                Cell::Value(Value::Str(s)) => J::String(s.into_owned()),
                Cell::Value(Value::List(items)) => {
                    J::Array(items.into_iter().map(J::String).collect())
                }
            };
            (column.name.clone(), value)
        })
        .collect()
}
