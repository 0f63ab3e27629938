//! The row → batch encoder.
//!
//! For each row: collect identities, `mpid`, device ids and attributes in column
//! order; apply the NULL policy and the limits; reject the row if it has nothing
//! to resolve a profile by; split the attributes over as many batches as the
//! 100-attribute and 128 KiB limits need (every part carries the same identities);
//! write each part as JSON and stamp it with a `source_request_id` derived from
//! the pipeline id and the part's content, so the same row always yields the same
//! id and mParticle applies a re-sent batch once.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write as _;

use arrow::array::{Array as _, RecordBatch};
use sha2::{Digest, Sha256};

use crate::config::model::{
    Destination, Environment, LimitPolicy, NullPolicy, Pipeline, StaticValue,
};
use crate::mapping::convert::{int_value, Cell, ColumnReader, Value};
use crate::mapping::identity::{is_uuid, DeviceIdType, IdentityType};
use crate::mapping::json::{write_str, write_value};
use crate::mapping::limits::{self, reason};
use crate::mapping::plan::{MappingPlan, Route};
use crate::mapping::MappingError;

/// Length of the hex `source_request_id` (128 bits).
const ID_HEX_LEN: usize = 32;
/// Bytes the `"source_request_id":"…",` member adds to a batch.
const ID_MEMBER_BYTES: usize = r#""source_request_id":"","#.len() + ID_HEX_LEN;

/// One batch, serialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBatch {
    /// 1-based row number within the run that produced it.
    pub row: u64,
    /// 0-based part, when a row needed several batches.
    pub part: u32,
    /// The batch's `source_request_id`.
    pub source_request_id: String,
    /// The batch JSON (an object), exactly as it will be sent.
    pub json: Vec<u8>,
    /// Event batches whose events are all older than 30 days go to
    /// `/v2/bulkevents/historical`; every other batch to `/v2/bulkevents`.
    pub historical: bool,
}

/// Why a whole row was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RejectReason {
    /// No user identity, no `mpid` and no device id: mParticle could not resolve a profile.
    NoIdentity,
    /// The `mpid` column held something that is not a 64-bit integer.
    InvalidMpid,
    /// Identities alone exceed the 128 KiB batch limit.
    BatchTooLarge,
    /// A value could not be read from the warehouse (invalid UTF-8 or JSON, an
    /// infinite or zero date, a value too large, …); the detail names the column.
    InvalidValue,
    /// Event pipelines: the row does not make a valid event (unknown event
    /// type, no event name, a value outside the schema's enum, …).
    InvalidEvent,
    /// Event pipelines: the event breaks the data plan, which blocks.
    DataPlan,
    /// Diff: a `diff.primary_key` column is NULL or empty.
    MissingKey,
    /// Diff: the key appears in more than one row of the model's result.
    DuplicateKey,
}

impl RejectReason {
    /// The reason's name in files and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoIdentity => "no_identity",
            Self::InvalidMpid => "invalid_mpid",
            Self::BatchTooLarge => "batch_too_large",
            Self::InvalidValue => "invalid_value",
            Self::InvalidEvent => "invalid_event",
            Self::DataPlan => "data_plan",
            Self::MissingKey => "missing_key",
            Self::DuplicateKey => "duplicate_key",
        }
    }
}

/// A row that was not sent, with everything needed to fix it at the source.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedRow {
    /// 1-based row number within the run.
    pub row: u64,
    /// Why.
    pub reason: RejectReason,
    /// Human detail.
    pub detail: String,
    /// The row's values by column name.
    pub values: serde_json::Map<String, serde_json::Value>,
}

/// Counters over a run's mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapStats {
    /// Rows seen.
    pub rows_read: u64,
    /// Rows that produced at least one batch.
    pub rows_mapped: u64,
    /// Rows rejected, by reason.
    pub rows_rejected: BTreeMap<&'static str, u64>,
    /// Batches produced.
    pub batches: u64,
    /// Values left out, by reason.
    pub values_dropped: BTreeMap<&'static str, u64>,
    /// Values cut to a limit, by reason.
    pub values_truncated: BTreeMap<&'static str, u64>,
    /// Per column of the plan, in plan order.
    pub columns: Vec<ColumnStats>,
    /// Event pipelines: events per endpoint.
    pub events: EventCounts,
    /// Event pipelines: data plan violations by rule (blocked or flagged).
    pub plan_violations: BTreeMap<&'static str, u64>,
    /// Events sent despite a violation (the plan only flags), counted once each.
    pub plan_flagged_rows: u64,
    /// The first few violations of each rule.
    pub plan_samples: BTreeMap<&'static str, Vec<crate::mapping::data_plan::Violation>>,
}

/// How many events a run mapped, by the endpoint their batch goes to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Events for `/v2/bulkevents`.
    pub recent: u64,
    /// Events older than 30 days, for `/v2/bulkevents/historical`.
    pub historical: u64,
    /// Event batches for `/v2/bulkevents`.
    pub recent_batches: u64,
    /// Event batches for `/v2/bulkevents/historical`.
    pub historical_batches: u64,
}

/// What one column held over a run, for reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnStats {
    /// Non-NULL values read.
    pub values: u64,
    /// NULLs read.
    pub nulls: u64,
    /// Longest text value, in characters (text-like columns only).
    pub longest_chars: usize,
    /// Values of this column truncated in sent rows.
    pub truncated: u64,
    /// Values of this column dropped in sent rows.
    pub dropped: u64,
}

impl MapStats {
    /// Total rejected rows.
    pub fn rejected_total(&self) -> u64 {
        self.rows_rejected.values().sum()
    }

    /// Total dropped values.
    pub fn dropped_total(&self) -> u64 {
        self.values_dropped.values().sum()
    }

    /// Total truncated values.
    pub fn truncated_total(&self) -> u64 {
        self.values_truncated.values().sum()
    }

    /// Add the counters of a part of a chunk mapped separately (see
    /// [`Mapper::map_chunk`]). Column values, NULLs and lengths are counted once
    /// per chunk before it is cut, so a part carries only its adjustments.
    fn merge(&mut self, part: MapStats) {
        self.rows_read += part.rows_read;
        self.rows_mapped += part.rows_mapped;
        self.batches += part.batches;
        for (reason, n) in part.rows_rejected {
            *self.rows_rejected.entry(reason).or_default() += n;
        }
        for (reason, n) in part.values_dropped {
            *self.values_dropped.entry(reason).or_default() += n;
        }
        for (reason, n) in part.values_truncated {
            *self.values_truncated.entry(reason).or_default() += n;
        }
        self.plan_flagged_rows += part.plan_flagged_rows;
        self.events.recent += part.events.recent;
        self.events.historical += part.events.historical;
        for (rule, n) in part.plan_violations {
            *self.plan_violations.entry(rule).or_default() += n;
        }
        for (rule, samples) in part.plan_samples {
            let mine = self.plan_samples.entry(rule).or_default();
            let room = crate::mapping::data_plan::SAMPLES_PER_RULE.saturating_sub(mine.len());
            mine.extend(samples.into_iter().take(room));
        }
        for (mine, theirs) in self.columns.iter_mut().zip(part.columns) {
            mine.values += theirs.values;
            mine.nulls += theirs.nulls;
            mine.longest_chars = mine.longest_chars.max(theirs.longest_chars);
            mine.truncated += theirs.truncated;
            mine.dropped += theirs.dropped;
        }
    }

    fn drop_value(&mut self, why: &'static str) {
        *self.values_dropped.entry(why).or_default() += 1;
    }

    fn truncate_value(&mut self, why: &'static str) {
        *self.values_truncated.entry(why).or_default() += 1;
    }
}

/// The batches and rejected rows of one record batch.
#[derive(Debug, Default)]
pub struct MappedChunk {
    /// Batches, in row order.
    pub batches: Vec<EncodedBatch>,
    /// Rejected rows, in row order.
    pub rejected: Vec<RejectedRow>,
    /// Event pipelines: each mapped row's event, before grouping per user.
    pub(crate) events: Vec<crate::mapping::event::EventRow>,
}

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

    fn map_row<'a>(
        &'a self,
        readers: &[ColumnReader<'a>],
        row: usize,
    ) -> Result<RowParts<'a>, (RejectReason, String)> {
        let mut parts = RowParts::default();
        for (index, (column, reader)) in self.plan.columns.iter().zip(readers).enumerate() {
            let Route::Send(destination) = &column.route else {
                continue;
            };
            // Tag this column's adjustments, whichever way the match below exits.
            let tag = |parts: &mut RowParts<'_>| {
                let missing = parts.adjustments.len() - parts.adjustment_columns.len();
                parts
                    .adjustment_columns
                    .extend(std::iter::repeat_n(Some(index), missing));
            };
            match reader.cell(row) {
                Cell::Null => {
                    if let (Destination::Attribute(name), NullPolicy::Delete) =
                        (destination, self.null_policy)
                    {
                        if let Some(name) = self.attribute_name(name, &mut parts.adjustments) {
                            parts.deleted.push(name);
                        }
                    }
                }
                Cell::Unrepresentable(_) => parts
                    .adjustments
                    .push(Adjustment::Dropped(reason::NON_FINITE_NUMBER)),
                Cell::Value(value) => {
                    let left_out = reader.list_elements_left_out(row);
                    for _ in 0..left_out {
                        parts
                            .adjustments
                            .push(Adjustment::Dropped(reason::LIST_NULL_ENTRY));
                    }
                    let placed = self.place(destination, value, &column.name, &mut parts);
                    tag(&mut parts);
                    placed?;
                }
            }
            tag(&mut parts);
        }
        for (destination, value) in &self.plan.statics {
            let value = match value {
                StaticValue::String(s) => Value::Str(Cow::Borrowed(s.as_str())),
                StaticValue::Integer(i) => int_value(*i),
                StaticValue::Float(f) => Value::Float(*f),
                StaticValue::Bool(b) => Value::Bool(*b),
            };
            self.place(destination, value, "static mapping", &mut parts)?;
            let missing = parts.adjustments.len() - parts.adjustment_columns.len();
            parts
                .adjustment_columns
                .extend(std::iter::repeat_n(None, missing));
        }
        if parts.identities.is_empty() && parts.mpid.is_none() && parts.devices.is_empty() {
            return Err((
                RejectReason::NoIdentity,
                "no user identity, mpid or device id: every one was NULL or empty".to_owned(),
            ));
        }
        Ok(parts)
    }

    fn place<'a>(
        &'a self,
        destination: &'a Destination,
        value: Value<'a>,
        column: &str,
        parts: &mut RowParts<'a>,
    ) -> Result<(), (RejectReason, String)> {
        match destination {
            Destination::Identity(t) => {
                let text = value.to_text();
                if !text.is_empty() {
                    parts.identities.push((*t, text));
                }
            }
            Destination::Device(t) => {
                let text = value.to_text();
                if t.requires_uuid() && !text.is_empty() && !is_uuid(&text) {
                    parts
                        .adjustments
                        .push(Adjustment::Dropped(reason::INVALID_DEVICE_ID));
                } else if !text.is_empty() {
                    parts.devices.push((*t, text));
                }
            }
            Destination::Mpid => {
                let text = value.to_text();
                let mpid = match value {
                    Value::Int(i) => Some(i),
                    Value::Str(s) => s.trim().parse::<i64>().ok(),
                    _ => None,
                };
                match mpid {
                    Some(m) => parts.mpid = Some(m),
                    None => {
                        return Err((
                            RejectReason::InvalidMpid,
                            format!("column `{column}`: `{text}` is not a 64-bit integer mpid"),
                        ))
                    }
                }
            }
            Destination::Attribute(name) => {
                let Some(name) = self.attribute_name(name, &mut parts.adjustments) else {
                    return Ok(());
                };
                if let Some(value) = self.limit_value(value, &mut parts.adjustments) {
                    parts.attributes.push((name, value));
                }
            }
            Destination::Event(field) => {
                if let Some(value) = self.limit_value(value, &mut parts.adjustments) {
                    parts.event_fields.push((*field, value));
                }
            }
            Destination::EventAttribute(name) => {
                let Some(name) = self.attribute_name(name, &mut parts.adjustments) else {
                    return Ok(());
                };
                match value {
                    // The schema's event attribute values are scalars.
                    Value::List(_) => parts
                        .adjustments
                        .push(Adjustment::Dropped(reason::LIST_IN_EVENT_ATTRIBUTE)),
                    value => {
                        if let Some(value) = self.limit_value(value, &mut parts.adjustments) {
                            parts.event_attributes.push((name, value));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The attribute name after the 256-character limit, or `None` when the
    /// policy drops it.
    fn attribute_name<'a>(
        &self,
        name: &'a str,
        adjustments: &mut Vec<Adjustment>,
    ) -> Option<Cow<'a, str>> {
        if !limits::exceeds_chars(name, limits::MAX_ATTRIBUTE_NAME_CHARS) {
            return Some(Cow::Borrowed(name));
        }
        match self.limit_policy {
            LimitPolicy::Truncate => {
                adjustments.push(Adjustment::Truncated(reason::NAME_TOO_LONG));
                Some(Cow::Borrowed(limits::truncate_chars(
                    name,
                    limits::MAX_ATTRIBUTE_NAME_CHARS,
                )))
            }
            LimitPolicy::Reject => {
                adjustments.push(Adjustment::Dropped(reason::NAME_TOO_LONG));
                None
            }
        }
    }

    /// The value after the string and list limits, or `None` when the policy drops it.
    fn limit_value<'a>(
        &self,
        value: Value<'a>,
        adjustments: &mut Vec<Adjustment>,
    ) -> Option<Value<'a>> {
        let truncate = self.limit_policy == LimitPolicy::Truncate;
        match value {
            Value::Str(s) if limits::exceeds_chars(&s, limits::MAX_ATTRIBUTE_VALUE_CHARS) => {
                if truncate {
                    adjustments.push(Adjustment::Truncated(reason::VALUE_TOO_LONG));
                    let cut = limits::truncate_chars(&s, limits::MAX_ATTRIBUTE_VALUE_CHARS);
                    Some(Value::Str(Cow::Owned(cut.to_owned())))
                } else {
                    adjustments.push(Adjustment::Dropped(reason::VALUE_TOO_LONG));
                    None
                }
            }
            Value::List(mut items) => {
                if items.len() > limits::MAX_LIST_ENTRIES {
                    if !truncate {
                        adjustments.push(Adjustment::Dropped(reason::LIST_TOO_LONG));
                        return None;
                    }
                    adjustments.push(Adjustment::Truncated(reason::LIST_TOO_LONG));
                    items.truncate(limits::MAX_LIST_ENTRIES);
                }
                for item in &mut items {
                    if limits::exceeds_chars(item, limits::MAX_LIST_ENTRY_CHARS) {
                        if !truncate {
                            adjustments.push(Adjustment::Dropped(reason::LIST_ENTRY_TOO_LONG));
                            return None;
                        }
                        adjustments.push(Adjustment::Truncated(reason::LIST_ENTRY_TOO_LONG));
                        let cut = limits::truncate_chars(item, limits::MAX_LIST_ENTRY_CHARS).len();
                        item.truncate(cut);
                    }
                }
                Some(Value::List(items))
            }
            other => Some(other),
        }
    }

    /// Write the row as one or more batches. `scratch` is reused from row to row
    /// so a row costs only the allocations of the batches it returns.
    fn encode(
        &self,
        parts: &RowParts<'_>,
        row: u64,
        salt: Option<&str>,
        stats: &mut MapStats,
        scratch: &mut Scratch,
    ) -> Result<Vec<EncodedBatch>, (RejectReason, String)> {
        let Scratch {
            head,
            first,
            members,
        } = scratch;
        // Members every part carries: environment, mpid, user identities.
        head.clear();
        head.extend_from_slice(b"\"environment\":");
        write_str(head, self.environment.as_str());
        if let Some(mpid) = parts.mpid {
            // `write!` into a Vec cannot fail.
            let _ = write!(head, ",\"mpid\":{mpid}");
        }
        if !parts.identities.is_empty() {
            head.extend_from_slice(b",\"user_identities\":{");
            write_members(
                head,
                parts
                    .identities
                    .iter()
                    .map(|(t, v)| (t.as_str(), v.as_str())),
            );
            head.push(b'}');
        }
        head.extend_from_slice(&self.context);
        // Members only the first part carries: device ids and deletions.
        first.clear();
        if parts
            .devices
            .iter()
            .any(|(t, _)| *t != DeviceIdType::MpDeviceId)
        {
            first.extend_from_slice(b",\"device_info\":{");
            write_members(
                first,
                parts
                    .devices
                    .iter()
                    .filter(|(t, _)| *t != DeviceIdType::MpDeviceId)
                    .map(|(t, v)| (t.as_str(), v.as_str())),
            );
            first.push(b'}');
        }
        if let Some((_, id)) = parts
            .devices
            .iter()
            .find(|(t, _)| *t == DeviceIdType::MpDeviceId)
        {
            first.extend_from_slice(b",\"mp_deviceid\":");
            write_str(first, id);
        }
        if !parts.deleted.is_empty() {
            first.extend_from_slice(b",\"deleted_user_attributes\":[");
            for (i, name) in parts.deleted.iter().enumerate() {
                if i > 0 {
                    first.push(b',');
                }
                write_str(first, name);
            }
            first.push(b']');
        }

        const ATTRS_OPEN: &[u8] = b",\"user_attributes\":{";
        // `{` + head + `}` + the id member + an empty attribute object.
        let fixed = 2 + head.len() + ID_MEMBER_BYTES + ATTRS_OPEN.len() + 1;
        if fixed + first.len() > limits::MAX_BATCH_BYTES {
            return Err((
                RejectReason::BatchTooLarge,
                format!(
                    "identities and device ids alone take {} bytes; a batch may take {}",
                    fixed + first.len(),
                    limits::MAX_BATCH_BYTES
                ),
            ));
        }

        // Greedy split: fill each part up to 100 attributes and 128 KiB. Every
        // part's members are one range of `members`, written in place.
        members.clear();
        let mut part_ranges: Vec<(usize, usize)> = vec![(0, 0)];
        let mut part_counts = vec![0usize];
        for (name, value) in &parts.attributes {
            let start = members.len();
            write_str(members, name);
            members.push(b':');
            write_value(members, value);
            let member_len = members.len() - start;
            if fixed + member_len > limits::MAX_BATCH_BYTES {
                members.truncate(start);
                stats.drop_value(reason::ATTRIBUTE_TOO_LARGE);
                continue;
            }
            let current = part_ranges.len() - 1;
            let first_extra = if current == 0 { first.len() } else { 0 };
            let used = fixed + first_extra + (start - part_ranges[current].0);
            let fits = part_counts[current] < limits::MAX_ATTRIBUTES_PER_BATCH
                && used + 1 + member_len <= limits::MAX_BATCH_BYTES;
            if !fits {
                part_ranges.push((start, start));
                part_counts.push(0);
            } else if part_counts[current] > 0 {
                members.insert(start, b',');
            }
            let current = part_ranges.len() - 1;
            part_ranges[current].1 = members.len();
            part_counts[current] += 1;
        }

        let mut batches = Vec::with_capacity(part_ranges.len());
        for (part, &(from, to)) in part_ranges.iter().enumerate() {
            let attrs = &members[from..to];
            let first = if part == 0 { &first[..] } else { &[][..] };
            // The id hashes the batch as it would read without it:
            // `{` head first [attributes] `}`, fed to the hash piece by piece.
            let mut hasher = id_hasher(&self.pipeline_id);
            if let Some(salt) = salt {
                // After a 0xff byte, which no JSON text starts with: an id
                // with an iterator value never equals one without.
                hasher.update([0xffu8]);
                hasher.update((salt.len() as u64).to_le_bytes());
                hasher.update(salt.as_bytes());
            }
            hasher.update(b"{");
            hasher.update(&head[..]);
            hasher.update(first);
            if !attrs.is_empty() {
                hasher.update(ATTRS_OPEN);
                hasher.update(attrs);
                hasher.update(b"}");
            }
            hasher.update(b"}");
            let id = id_hex(hasher);
            let mut json = Vec::with_capacity(
                ID_MEMBER_BYTES + 2 + head.len() + first.len() + ATTRS_OPEN.len() + attrs.len() + 2,
            );
            json.extend_from_slice(b"{\"source_request_id\":\"");
            json.extend_from_slice(id.as_bytes());
            json.extend_from_slice(b"\",");
            json.extend_from_slice(head);
            json.extend_from_slice(first);
            if !attrs.is_empty() {
                json.extend_from_slice(ATTRS_OPEN);
                json.extend_from_slice(attrs);
                json.push(b'}');
            }
            json.push(b'}');
            batches.push(EncodedBatch {
                row,
                part: u32::try_from(part).unwrap_or(u32::MAX),
                source_request_id: id,
                json,
                historical: false,
            });
        }
        Ok(batches)
    }
}

/// Buffers [`Mapper::encode`] reuses from row to row.
#[derive(Default)]
struct Scratch {
    /// Members every part carries.
    head: Vec<u8>,
    /// Members only the first part carries.
    first: Vec<u8>,
    /// Every part's attribute members, one range per part.
    members: Vec<u8>,
}

pub(crate) fn write_members<'a>(
    out: &mut Vec<u8>,
    members: impl Iterator<Item = (&'a str, &'a str)>,
) {
    for (i, (key, value)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, key);
        out.push(b':');
        write_str(out, value);
    }
}

/// The deterministic id of a batch: the first 128 bits of
/// `sha256(pipeline_id ‖ 0x00 ‖ batch JSON without the id)`, in hex. The same
/// pipeline and the same row content always give the same id. (Incremental
/// pipelines also hash the row's iterator value, and `[diff]` pipelines
/// replace the id: see the README's `source_request_id` rule.)
pub fn source_request_id(pipeline_id: &str, body: &[u8]) -> String {
    let mut hasher = id_hasher(pipeline_id);
    hasher.update(body);
    id_hex(hasher)
}

/// The hash of [`source_request_id`] with the pipeline id fed in.
pub(crate) fn id_hasher(pipeline_id: &str) -> Sha256 {
    let mut hasher = Sha256::new();
    hasher.update(pipeline_id.as_bytes());
    hasher.update([0u8]);
    hasher
}

/// The first 128 bits of the hash, in hex.
pub(crate) fn id_hex(hasher: Sha256) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = hasher.finalize();
    // By hand rather than `hex::encode`, which collects the text char by char;
    // this runs once per batch.
    let mut out = String::with_capacity(ID_HEX_LEN);
    for byte in &digest[..ID_HEX_LEN / 2] {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, Float64Array, Int64Array, ListBuilder, StringArray, StringBuilder,
    };
    use arrow::datatypes::Schema;
    use serde_json::json;

    use super::*;
    use crate::config::model::{Mapping, SyncMode};
    use crate::source::{ColumnInfo, ColumnKind};

    fn pipeline() -> Pipeline {
        Pipeline {
            id: "users".into(),
            name: "users".into(),
            path: "schedules/users.toml".into(),
            connection: "wh".into(),
            data_model: "users".into(),
            feed: None,
            environment: Environment::Production,
            sync_mode: SyncMode::Full,
            schedule: crate::config::model::Schedule::OnDemand,
            paused: false,
            input_protection: crate::config::model::InputProtection::CreateAndUpdate,
            null_policy: NullPolicy::Skip,
            limit_policy: LimitPolicy::Truncate,
            mappings: vec![],
            retry_dead_letters: true,
            write_batches: false,
            max_rejected_pct: None,
            diff: None,
            export: None,
            pipeline_type: Default::default(),
            data_plan: None,
        }
    }

    fn run(
        p: &Pipeline,
        columns: Vec<(ColumnInfo, ArrayRef)>,
    ) -> (Vec<serde_json::Value>, Vec<RejectedRow>, MapStats) {
        let infos: Vec<ColumnInfo> = columns.iter().map(|(c, _)| c.clone()).collect();
        let schema = crate::source::arrow_schema(&infos);
        let chunk = RecordBatch::try_new(
            Arc::new(Schema::new(schema.fields().clone())),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap();
        let plan = MappingPlan::new(&infos, p).unwrap();
        let mapper = Mapper::new(plan, p);
        let mut stats = MapStats::default();
        let out = mapper.map_chunk(&chunk, 1, &mut stats).unwrap();
        let batches = out
            .batches
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_slice(&b.json).unwrap();
                assert_eq!(v["source_request_id"], json!(b.source_request_id));
                v
            })
            .collect();
        (batches, out.rejected, stats)
    }

    fn text(name: &str, values: Vec<Option<&str>>) -> (ColumnInfo, ArrayRef) {
        (
            ColumnInfo {
                name: name.into(),
                sql_type: "TEXT".into(),
                kind: ColumnKind::Text,
                decimal: None,
            },
            Arc::new(StringArray::from(values)),
        )
    }

    fn strip_id(mut v: serde_json::Value) -> serde_json::Value {
        v.as_object_mut().unwrap().remove("source_request_id");
        v
    }

    #[test]
    fn source_request_id_is_hex_of_the_sha256_prefix() {
        let id = source_request_id("p", b"{}");
        let digest = Sha256::digest(b"p\0{}");
        assert_eq!(id, hex::encode(&digest[..16]));
    }

    #[test]
    fn chunk_cut_across_threads_maps_exactly_like_one_pass() {
        let p = pipeline();
        let n = 3 * MIN_ROWS_PER_PART + 17;
        let ids: Vec<Option<String>> = (0..n)
            .map(|i| (i % 5 != 0).then(|| format!("c{i}")))
            .collect();
        let long: Vec<Option<String>> = (0..n)
            .map(|i| (i % 7 == 0).then(|| "é".repeat(4097 + i)))
            .collect();
        let floats: Vec<f64> = (0..n)
            .map(|i| if i % 3 == 0 { f64::NAN } else { i as f64 * 0.1 })
            .collect();
        let info = |name: &str, kind: ColumnKind| ColumnInfo {
            name: name.into(),
            sql_type: "X".into(),
            kind,
            decimal: None,
        };
        let infos = vec![
            info("customer_id", ColumnKind::Text),
            info("bio", ColumnKind::Text),
            info("score", ColumnKind::Float64),
        ];
        let chunk = RecordBatch::try_new(
            crate::source::arrow_schema(&infos),
            vec![
                Arc::new(StringArray::from(ids)) as ArrayRef,
                Arc::new(StringArray::from(long)),
                Arc::new(Float64Array::from(floats)),
            ],
        )
        .unwrap();
        let mapper = Mapper::new(MappingPlan::new(&infos, &p).unwrap(), &p);
        assert!(parallel_parts(n) >= 1);

        let mut parallel_stats = MapStats::default();
        let parallel = mapper.map_chunk(&chunk, 11, &mut parallel_stats).unwrap();

        let readers = mapper
            .plan
            .columns
            .iter()
            .map(|c| ColumnReader::new(&c.name, &c.kind, chunk.column(c.index)).unwrap())
            .collect::<Vec<_>>();
        let mut single_stats = MapStats::default();
        column_stats(&mapper.plan, &chunk, &mut single_stats);
        let single = mapper.map_rows(&readers, None, 0..n, 11, &mut single_stats);

        assert_eq!(parallel.batches, single.batches);
        assert_eq!(parallel.rejected, single.rejected);
        assert_eq!(parallel_stats, single_stats);
        assert_eq!(parallel_stats.rows_read, n as u64);
        assert_eq!(parallel_stats.rejected_total(), n.div_ceil(5) as u64);
        assert!(parallel_stats.truncated_total() > 0);
        assert!(parallel_stats.dropped_total() > 0);
    }

    #[test]
    fn maps_identities_attributes_and_rejects_rows_without_identity() {
        let p = pipeline();
        let (batches, rejected, stats) = run(
            &p,
            vec![
                text("customerid", vec![Some("c1"), None]),
                text("email", vec![Some("a@b.c"), Some("")]),
                (
                    ColumnInfo {
                        name: "ltv".into(),
                        sql_type: "FLOAT8".into(),
                        kind: ColumnKind::Float64,
                        decimal: None,
                    },
                    Arc::new(Float64Array::from(vec![f64::NAN, f64::INFINITY])),
                ),
                (
                    ColumnInfo {
                        name: "big".into(),
                        sql_type: "INT8".into(),
                        kind: ColumnKind::Int,
                        decimal: None,
                    },
                    Arc::new(Int64Array::from(vec![Some(9_007_199_254_740_993), None])),
                ),
            ],
        );
        assert_eq!(batches.len(), 1);
        assert_eq!(
            strip_id(batches[0].clone()),
            json!({
                "environment": "production",
                "user_identities": {"customer_id": "c1", "email": "a@b.c"},
                "user_attributes": {"big": "9007199254740993"}
            })
        );
        assert_eq!(
            stats.values_dropped.get(reason::NON_FINITE_NUMBER),
            Some(&1)
        );
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].row, 2);
        assert_eq!(rejected[0].reason, RejectReason::NoIdentity);
        assert_eq!(
            serde_json::Value::Object(rejected[0].values.clone()),
            json!({"customerid": null, "email": "", "ltv": "NaN or Infinity", "big": null})
        );
        assert_eq!(stats.rows_mapped, 1);
        assert_eq!(stats.rejected_total(), 1);
    }

    #[test]
    fn rows_the_reader_could_not_decode_are_rejected_as_invalid_value() {
        let p = pipeline();
        let infos = vec![
            ColumnInfo {
                name: "email".into(),
                sql_type: "TEXT".into(),
                kind: ColumnKind::Text,
                decimal: None,
            },
            ColumnInfo {
                name: "born".into(),
                sql_type: "DATE".into(),
                kind: ColumnKind::Date,
                decimal: None,
            },
        ];
        let chunk = RecordBatch::try_new(
            crate::source::chunk_schema(&infos),
            vec![
                Arc::new(StringArray::from(vec![Some("a@x.io"), Some("b@x.io")])) as ArrayRef,
                Arc::new(arrow::array::Date32Array::from(vec![Some(0), None])),
                Arc::new(StringArray::from(vec![
                    None,
                    Some("column `born`: infinite date cannot be sent"),
                ])),
            ],
        )
        .unwrap();
        let mapper = Mapper::new(MappingPlan::new(&infos, &p).unwrap(), &p);
        let mut stats = MapStats::default();
        let out = mapper.map_chunk(&chunk, 7, &mut stats).unwrap();
        assert_eq!(out.batches.len(), 1);
        assert_eq!(out.rejected.len(), 1);
        let r = &out.rejected[0];
        assert_eq!(r.row, 8);
        assert_eq!(r.reason, RejectReason::InvalidValue);
        assert_eq!(r.reason.as_str(), "invalid_value");
        assert_eq!(r.detail, "column `born`: infinite date cannot be sent");
        assert_eq!(
            serde_json::Value::Object(r.values.clone()),
            json!({"email": "b@x.io", "born": null}),
            "the reserved column is not one of the row's values"
        );
        assert_eq!(stats.rows_rejected.get("invalid_value"), Some(&1));
        assert_eq!(stats.rows_read, 2);
    }

    #[test]
    fn null_policy_delete_lists_deleted_attributes() {
        let mut p = pipeline();
        p.null_policy = NullPolicy::Delete;
        let (batches, _, _) = run(
            &p,
            vec![text("email", vec![Some("x@y.z")]), text("plan", vec![None])],
        );
        assert_eq!(batches[0]["deleted_user_attributes"], json!(["plan"]));
        assert!(batches[0].get("user_attributes").is_none());
    }

    #[test]
    fn ids_are_deterministic_and_content_based() {
        let p = pipeline();
        let a = run(
            &p,
            vec![text(
                "email",
                vec![Some("x@y.z"), Some("x@y.z"), Some("w@y.z")],
            )],
        )
        .0;
        assert_eq!(a[0]["source_request_id"], a[1]["source_request_id"]);
        assert_ne!(a[0]["source_request_id"], a[2]["source_request_id"]);
        let mut other = pipeline();
        other.id = "other".into();
        let b = run(&other, vec![text("email", vec![Some("x@y.z")])]).0;
        assert_ne!(a[0]["source_request_id"], b[0]["source_request_id"]);
    }

    #[test]
    fn more_than_100_attributes_split_with_same_identities() {
        let p = pipeline();
        let mut columns = vec![text("email", vec![Some("x@y.z")])];
        for i in 0..250 {
            columns.push(text(&format!("a{i}"), vec![Some("v")]));
        }
        let (batches, _, stats) = run(&p, columns);
        assert_eq!(batches.len(), 3);
        let counts: Vec<usize> = batches
            .iter()
            .map(|b| b["user_attributes"].as_object().unwrap().len())
            .collect();
        assert_eq!(counts, vec![100, 100, 50]);
        for b in &batches {
            assert_eq!(b["user_identities"], json!({"email": "x@y.z"}));
        }
        assert_eq!(stats.batches, 3);
        assert_eq!(stats.rows_mapped, 1);
    }

    #[test]
    fn batches_stay_under_128_kib() {
        let p = pipeline();
        let long = "x".repeat(4096);
        let mut columns = vec![text("email", vec![Some("x@y.z")])];
        for i in 0..60 {
            columns.push(text(&format!("a{i}"), vec![Some(long.as_str())]));
        }
        let infos: Vec<_> = columns.iter().map(|(c, _)| c.clone()).collect();
        let chunk = RecordBatch::try_new(
            crate::source::arrow_schema(&infos),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap();
        let mapper = Mapper::new(MappingPlan::new(&infos, &p).unwrap(), &p);
        let mut stats = MapStats::default();
        let out = mapper.map_chunk(&chunk, 1, &mut stats).unwrap();
        assert_eq!(out.batches.len(), 2);
        for b in &out.batches {
            assert!(b.json.len() <= limits::MAX_BATCH_BYTES, "{}", b.json.len());
        }
        let total: usize = out
            .batches
            .iter()
            .map(|b| {
                serde_json::from_slice::<serde_json::Value>(&b.json).unwrap()["user_attributes"]
                    .as_object()
                    .unwrap()
                    .len()
            })
            .sum();
        assert_eq!(total, 60);
    }

    #[test]
    fn limits_truncate_or_reject() {
        let long_value = "é".repeat(5000);
        let long_name = "n".repeat(300);
        let mut list = ListBuilder::new(StringBuilder::new());
        for i in 0..1500 {
            list.values().append_value(if i == 0 {
                "y".repeat(600)
            } else {
                i.to_string()
            });
        }
        list.append(true);
        let list: ArrayRef = Arc::new(list.finish());
        let columns = || {
            vec![
                text("email", vec![Some("x@y.z")]),
                text("bio", vec![Some(long_value.as_str())]),
                text(&long_name, vec![Some("v")]),
                (
                    ColumnInfo {
                        name: "tags".into(),
                        sql_type: "TEXT[]".into(),
                        kind: ColumnKind::List(Box::new(ColumnKind::Text)),
                        decimal: None,
                    },
                    list.clone(),
                ),
            ]
        };
        let p = pipeline();
        let (batches, _, stats) = run(&p, columns());
        let attrs = batches[0]["user_attributes"].as_object().unwrap();
        assert_eq!(attrs["bio"].as_str().unwrap().chars().count(), 4096);
        assert!(attrs.contains_key(&"n".repeat(256)));
        let tags = attrs["tags"].as_array().unwrap();
        assert_eq!(tags.len(), 1000);
        assert_eq!(tags[0].as_str().unwrap().len(), 512);
        assert_eq!(stats.truncated_total(), 4);
        // Per column: `bio` (plan column 1) read once, 5000 characters, truncated once.
        assert_eq!(
            stats.columns[1],
            ColumnStats {
                values: 1,
                nulls: 0,
                longest_chars: 5000,
                truncated: 1,
                dropped: 0
            }
        );
        assert_eq!(
            stats.columns[3].truncated, 2,
            "tags: list and entry truncated"
        );

        let mut p = pipeline();
        p.limit_policy = LimitPolicy::Reject;
        let (batches, _, stats) = run(&p, columns());
        assert!(batches[0].get("user_attributes").is_none());
        assert_eq!(stats.dropped_total(), 3);
        assert_eq!(stats.values_dropped.get(reason::LIST_TOO_LONG), Some(&1));
    }

    #[test]
    fn malformed_uuid_device_ids_are_dropped() {
        let p = pipeline();
        let (batches, rejected, stats) = run(
            &p,
            vec![
                text("email", vec![Some("x@y.z"), None]),
                text(
                    "ios_idfv",
                    vec![
                        Some("not-a-uuid"),
                        Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                    ],
                ),
                text("push_token", vec![Some("tok"), None]),
            ],
        );
        assert_eq!(
            strip_id(batches[0].clone()),
            json!({"environment": "production", "user_identities": {"email": "x@y.z"}, "device_info": {"push_token": "tok"}})
        );
        assert_eq!(
            strip_id(batches[1].clone()),
            json!({"environment": "production", "device_info": {"ios_idfv": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}})
        );
        assert!(rejected.is_empty());
        assert_eq!(
            stats.values_dropped.get(reason::INVALID_DEVICE_ID),
            Some(&1)
        );
    }

    #[test]
    fn mpid_and_statics() {
        let mut p = pipeline();
        p.mappings = vec![Mapping::Static {
            value: StaticValue::String("warehouse".into()),
            destination: Destination::Attribute("source".into()),
        }];
        let (batches, rejected, _) = run(&p, vec![text("mpid", vec![Some("-8765"), Some("abc")])]);
        assert_eq!(
            strip_id(batches[0].clone()),
            json!({"environment": "production", "mpid": -8765, "user_attributes": {"source": "warehouse"}})
        );
        assert_eq!(rejected[0].reason, RejectReason::InvalidMpid);
        assert!(rejected[0].detail.contains("`abc` is not a 64-bit integer"));
    }
}
