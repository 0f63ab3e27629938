//! The three export datasets and their Arrow schemas.
//!
//! **`rows`**: the extracted rows with their SQL types kept. It is the source's
//! record batch, column for column, except where Parquet can hold a truer type
//! than the decode step's:
//!
//! | column kind                                  | source Arrow type      | export Arrow type                  |
//! |----------------------------------------------|------------------------|------------------------------------|
//! | decimal with declared `(p, s)`, `p ≤ 38`      | `Utf8` (exact text)    | `Decimal128(p, s)`                  |
//! | decimal without (unconstrained, expression, MySQL, `p > 38`) | `Utf8` | `Utf8` (exact text)           |
//! | timestamp with time zone                     | `Timestamp(µs, "UTC")` | `Timestamp(µs, "UTC")`             |
//! | timestamp without                            | `Timestamp(µs)`        | `Timestamp(µs)`                    |
//! | date                                         | `Date32`               | `Date32`                           |
//! | time                                         | `Time64(µs)`           | `Time64(µs)`                       |
//! | integers (`int2`/`int4`/`int8`, …)            | `Int64`                | `Int64`                            |
//! | `BIGINT UNSIGNED`                            | `UInt64`               | `UInt64`                           |
//! | `float4` / `float8`                          | `Float32` / `Float64`  | same (NaN and ±Infinity kept)      |
//! | boolean                                      | `Boolean`              | `Boolean`                          |
//! | text, uuid                                   | `Utf8`                 | `Utf8`                             |
//! | json / jsonb                                 | `Utf8` (compact JSON)  | `Utf8` JSON text                   |
//! | bytes                                        | `Binary`               | `Binary`                           |
//! | arrays                                       | `List<element>`        | `List<element>` (decimal elements stay `Utf8`) |
//!
//! An unconstrained decimal stays text because no single `Decimal128(p, s)` holds
//! every value such a column may hold (PostgreSQL allows 131072 digits before the
//! point and 16383 after); picking one would round or drop values silently, while
//! the text is exact and every reader can cast it. A `NaN`/`±Infinity` (which
//! `Decimal128` cannot hold) or an out-of-range value in a constrained column
//! becomes null and is counted ([`RowsDataset::decimals_nulled`]). Every field
//! keeps the source's `wsync.sql_type` and `wsync.kind` metadata. The reserved
//! last column of extracted chunks (`source::REJECTED_COLUMN`, why a row could
//! not be read) is not exported: such a row is in the dataset with its bad value
//! null, and in the `rejected` dataset with its reason.
//!
//! **`batches`**: one row per mapped batch: `source_request_id`, `row`, `part`,
//! `environment`, `mpid`, then one column per destination of the mapping plan
//! (`user_identities.<type>`, `device_info.<type>`, `mp_deviceid`,
//! `user_attributes.<name>`; static mappings included), and
//! `deleted_user_attributes` (`List<Utf8>`). Each destination column has the type
//! of what is sent there, so the dataset can be queried as sent:
//!
//! | sent from                                     | column type   |
//! |-----------------------------------------------|---------------|
//! | boolean column, boolean static                 | `Boolean`     |
//! | integer column, integer static                 | `Int64` (also the values beyond ±2^53 that travel as digit strings) |
//! | `BIGINT UNSIGNED`                              | `UInt64` (likewise) |
//! | float column, float static                     | `Float64`     |
//! | array column                                   | `List<Utf8>` (the list attribute's entries) |
//! | identities, device ids, every other column     | `Utf8` (the string sent; a decimal sent as a number holds its JSON text) |
//!
//! A destination a batch does not carry is null.
//!
//! **`rejected`**: `row`, `reason`, `detail` and `values` (the row as a JSON
//! object text).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Decimal128Builder, Float64Builder, Int64Builder, ListBuilder,
    RecordBatch, StringArray, StringBuilder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::ExportError;
use crate::config::model::{Destination, StaticValue};
use crate::mapping::batch::{EncodedBatch, RejectedRow};
use crate::mapping::identity::DeviceIdType;
use crate::mapping::limits;
use crate::mapping::plan::{destination_path, MappingPlan, Route};
use crate::source::{ColumnInfo, ColumnKind};

/// The largest precision `Decimal128` holds.
const MAX_DECIMAL128_PRECISION: u8 = 38;

/// The `Decimal128(p, s)` a column is exported as, if any (see the module doc).
fn export_decimal(column: &ColumnInfo) -> Option<(u8, i8)> {
    match (&column.kind, column.decimal) {
        (ColumnKind::Decimal, Some((p, s)))
            if (1..=MAX_DECIMAL128_PRECISION).contains(&p) && i16::from(s) <= i16::from(p) =>
        {
            Some((p, s))
        }
        _ => None,
    }
}

/// The `rows` dataset's schema for probed `columns`.
pub fn rows_schema(columns: &[ColumnInfo]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| {
                let field = c.arrow_field();
                match export_decimal(c) {
                    Some((p, s)) => field.with_data_type(DataType::Decimal128(p, s)),
                    None => field,
                }
            })
            .collect::<Vec<_>>(),
    ))
}

/// Convert one extracted chunk to the `rows` schema (see [`RowsDataset`] to also
/// count the decimals that could not be represented).
pub fn rows_batch(chunk: &RecordBatch, columns: &[ColumnInfo]) -> Result<RecordBatch, ExportError> {
    RowsDataset::new(columns).convert(chunk)
}

/// Converts extracted chunks to the `rows` dataset.
#[derive(Debug, Clone)]
pub struct RowsDataset {
    /// The export schema.
    schema: SchemaRef,
    /// Per column, the decimal type it is parsed into, if any.
    decimals: Vec<Option<(u8, i8)>>,
    /// Constrained-decimal values written as null (NaN, ±Infinity, out of range).
    nulled: u64,
}

impl RowsDataset {
    /// The dataset for probed `columns` (the extracted chunks' columns, in order).
    pub fn new(columns: &[ColumnInfo]) -> Self {
        Self {
            schema: rows_schema(columns),
            decimals: columns.iter().map(export_decimal).collect(),
            nulled: 0,
        }
    }

    /// The export schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Decimal values written as null so far because `Decimal128` cannot hold
    /// them (`NaN`, `±Infinity`, or out of the declared range).
    pub fn decimals_nulled(&self) -> u64 {
        self.nulled
    }

    /// Convert one chunk. Columns without a truer export type are shared, not
    /// copied.
    pub fn convert(&mut self, chunk: &RecordBatch) -> Result<RecordBatch, ExportError> {
        let data_err = |message: String| ExportError::Data {
            dataset: "rows",
            message,
        };
        // The reserved reasons column of extracted chunks is never exported.
        let chunk = &if crate::source::rejected_reasons(chunk, self.decimals.len()).is_some() {
            let mut projected = chunk.clone();
            projected.remove_column(self.decimals.len());
            projected
        } else {
            chunk.clone()
        };
        if chunk.num_columns() != self.decimals.len() {
            return Err(data_err(format!(
                "a chunk has {} columns, the probed model {}",
                chunk.num_columns(),
                self.decimals.len()
            )));
        }
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(chunk.num_columns());
        for (i, decimal) in self.decimals.iter().enumerate() {
            let column = chunk.column(i);
            let Some((precision, scale)) = *decimal else {
                arrays.push(column.clone());
                continue;
            };
            let text = column
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| {
                    data_err(format!(
                        "column `{}` is a decimal but arrived as {}",
                        self.schema.field(i).name(),
                        column.data_type()
                    ))
                })?;
            let mut builder = Decimal128Builder::with_capacity(text.len());
            for value in text {
                match value {
                    None => builder.append_null(),
                    Some(v) => {
                        if let Some(unscaled) = parse_decimal(v, precision, scale) {
                            builder.append_value(unscaled);
                        } else {
                            self.nulled += 1;
                            builder.append_null();
                        }
                    }
                }
            }
            let array = builder
                .finish()
                .with_precision_and_scale(precision, scale)
                .map_err(|e| data_err(e.to_string()))?;
            arrays.push(Arc::new(array));
        }
        RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| data_err(e.to_string()))
    }
}

/// The unscaled `i128` of decimal text (`-12.50`, `123`, `.5`) at `scale`, if it
/// fits `precision` digits exactly: `None` for `NaN`/`Infinity`, malformed text,
/// more digits than the precision, or non-zero digits beyond the scale (a value is
/// never rounded).
pub fn parse_decimal(text: &str, precision: u8, scale: i8) -> Option<i128> {
    let text = text.trim();
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part
        .bytes()
        .chain(frac_part.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // value = D × 10^-frac_len, so the unscaled value is D × 10^(scale - frac_len).
    let frac_len = i64::try_from(frac_part.len()).ok()?;
    let shift = i64::from(scale) - frac_len;
    let total = int_part.len() + frac_part.len();
    // Digits beyond the scale must all be zero: they are dropped, not rounded.
    let drop = usize::try_from(-shift.min(0)).ok()?;
    let keep = total.saturating_sub(drop);
    let mut unscaled: i128 = 0;
    for (i, b) in int_part.bytes().chain(frac_part.bytes()).enumerate() {
        let d = i128::from(b - b'0');
        if i < keep {
            unscaled = unscaled.checked_mul(10)?.checked_add(d)?;
        } else if d != 0 {
            return None;
        }
    }
    if shift > 0 {
        let factor = 10i128.checked_pow(u32::try_from(shift).ok()?)?;
        unscaled = unscaled.checked_mul(factor)?;
    }
    if unscaled >= 10i128.checked_pow(u32::from(precision))? {
        return None;
    }
    Some(if negative { -unscaled } else { unscaled })
}

/// The parts of a batch JSON the `batches` dataset reads.
#[derive(Deserialize)]
struct BatchJson<'a> {
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    mpid: Option<i64>,
    #[serde(default)]
    user_identities: HashMap<String, String>,
    #[serde(default)]
    device_info: HashMap<String, String>,
    #[serde(default)]
    mp_deviceid: Option<String>,
    #[serde(default, borrow)]
    user_attributes: HashMap<String, &'a RawValue>,
    #[serde(default)]
    deleted_user_attributes: Vec<String>,
    #[serde(default, borrow)]
    events: Option<&'a RawValue>,
}

/// Event pipelines: the event columns of the `batches` dataset.
#[derive(Debug)]
struct EventColumns {
    /// Sent to `/v2/bulkevents/historical`.
    historical: arrow::array::BooleanBuilder,
    /// Events in the batch.
    count: UInt32Builder,
    /// The batch's `events` array, JSON exactly as sent.
    events: StringBuilder,
}

/// Builds the `batches` dataset from encoded batches.
#[derive(Debug)]
pub struct BatchesDataset {
    schema: SchemaRef,
    /// Rows per record batch yielded.
    batch_rows: usize,
    /// Identity type name → index into `values`.
    identities: HashMap<String, usize>,
    /// Device id type name (inside `device_info`) → index into `values`.
    devices: HashMap<String, usize>,
    /// Index of `mp_deviceid` in `values`, if the plan sends it.
    mp_deviceid: Option<usize>,
    /// Attribute name as sent (full and, if different, limit-truncated) → index.
    attributes: HashMap<String, usize>,
    source_request_id: StringBuilder,
    row: UInt64Builder,
    part: UInt32Builder,
    environment: StringBuilder,
    mpid: Int64Builder,
    /// One builder per destination column, in schema order.
    values: Vec<SentBuilder>,
    deleted: ListBuilder<StringBuilder>,
    /// Event pipelines only (user-data exports keep their schema).
    events: Option<EventColumns>,
    /// Rows buffered in the builders.
    pending: usize,
    /// Scratch: this batch's value per destination column.
    scratch: Vec<Option<Sent>>,
}

/// One destination's value in a batch, as read from the batch JSON.
#[derive(Debug, Clone)]
enum Sent {
    /// A string value (identities and device ids).
    Str(String),
    /// An attribute's JSON text, exactly as sent.
    Json(String),
}

/// The builder of one destination column, typed by what is sent there.
#[derive(Debug)]
enum SentBuilder {
    Text(StringBuilder),
    Int(Int64Builder),
    UInt(UInt64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    List(ListBuilder<StringBuilder>),
}

impl SentBuilder {
    /// The builder for a destination fed from a column of `kind`, or a static.
    fn for_source(source: SentFrom<'_>) -> Self {
        match source {
            SentFrom::Column(ColumnKind::Bool) | SentFrom::Static(StaticValue::Bool(_)) => {
                Self::Bool(BooleanBuilder::new())
            }
            SentFrom::Column(ColumnKind::Int) | SentFrom::Static(StaticValue::Integer(_)) => {
                Self::Int(Int64Builder::new())
            }
            SentFrom::Column(ColumnKind::UInt) => Self::UInt(UInt64Builder::new()),
            SentFrom::Column(ColumnKind::Float32 | ColumnKind::Float64)
            | SentFrom::Static(StaticValue::Float(_)) => Self::Float(Float64Builder::new()),
            SentFrom::Column(ColumnKind::List(_)) => {
                Self::List(ListBuilder::new(StringBuilder::new()))
            }
            SentFrom::Column(_) | SentFrom::Static(StaticValue::String(_)) | SentFrom::Text => {
                Self::Text(StringBuilder::new())
            }
        }
    }

    fn data_type(&self) -> DataType {
        match self {
            Self::Text(_) => DataType::Utf8,
            Self::Int(_) => DataType::Int64,
            Self::UInt(_) => DataType::UInt64,
            Self::Float(_) => DataType::Float64,
            Self::Bool(_) => DataType::Boolean,
            Self::List(_) => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        }
    }

    /// Append one batch's value (`None` = not carried). A value whose JSON does
    /// not have the column's type is an error (the plan and the mapper disagree).
    fn append(&mut self, value: Option<Sent>) -> Result<(), String> {
        let Some(value) = value else {
            match self {
                Self::Text(b) => b.append_null(),
                Self::Int(b) => b.append_null(),
                Self::UInt(b) => b.append_null(),
                Self::Float(b) => b.append_null(),
                Self::Bool(b) => b.append_null(),
                Self::List(b) => b.append(false),
            }
            return Ok(());
        };
        let json = match value {
            Sent::Str(s) => {
                if let Self::Text(b) = self {
                    b.append_value(s);
                    return Ok(());
                }
                return Err(format!(
                    "a string `{s}` where a {} was expected",
                    self.data_type()
                ));
            }
            Sent::Json(json) => json,
        };
        // Numbers beyond what a double holds exactly travel as digit strings.
        let unquoted = || -> Result<String, String> {
            if json.starts_with('"') {
                serde_json::from_str::<String>(&json).map_err(|e| e.to_string())
            } else {
                Ok(json.clone())
            }
        };
        let expected = self.data_type();
        let wrong = |e: &dyn std::fmt::Display| format!("`{json}` is not a {expected}: {e}");
        match self {
            Self::Text(b) => b.append_value(unquoted()?),
            Self::Int(b) => b.append_value(unquoted()?.parse::<i64>().map_err(|e| wrong(&e))?),
            Self::UInt(b) => b.append_value(unquoted()?.parse::<u64>().map_err(|e| wrong(&e))?),
            Self::Float(b) => b.append_value(json.parse::<f64>().map_err(|e| wrong(&e))?),
            Self::Bool(b) => b.append_value(json.parse::<bool>().map_err(|e| wrong(&e))?),
            Self::List(b) => {
                let items: Vec<String> = serde_json::from_str(&json).map_err(|e| wrong(&e))?;
                for item in items {
                    b.values().append_value(item);
                }
                b.append(true);
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Text(b) => Arc::new(b.finish()),
            Self::Int(b) => Arc::new(b.finish()),
            Self::UInt(b) => Arc::new(b.finish()),
            Self::Float(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
            Self::List(b) => Arc::new(b.finish()),
        }
    }
}

/// What feeds a destination column of the `batches` dataset.
#[derive(Clone, Copy)]
enum SentFrom<'a> {
    /// A column of this kind, sent as an attribute.
    Column(&'a ColumnKind),
    /// A static mapping.
    Static(&'a StaticValue),
    /// A string by definition (identities, device ids).
    Text,
}

impl BatchesDataset {
    /// The dataset for `plan` (every destination of its columns and statics
    /// becomes a column), yielding record batches of `batch_rows` rows (0 is
    /// taken as 1).
    pub fn new(plan: &MappingPlan, batch_rows: usize) -> Self {
        let destinations = plan
            .columns
            .iter()
            .filter_map(|c| match &c.route {
                Route::Send(d) => Some((d, SentFrom::Column(&c.kind))),
                Route::Iterator | Route::Ignored => None,
            })
            .chain(plan.statics.iter().map(|(d, v)| (d, SentFrom::Static(v))))
            // Event fields are not columns of this dataset yet (see README).
            .filter(|(d, _)| {
                !matches!(
                    d,
                    Destination::Mpid | Destination::Event(_) | Destination::EventAttribute(_)
                )
            });
        let mut fields = vec![
            Field::new("source_request_id", DataType::Utf8, false),
            Field::new("row", DataType::UInt64, false),
            Field::new("part", DataType::UInt32, false),
            Field::new("environment", DataType::Utf8, true),
            Field::new("mpid", DataType::Int64, true),
        ];
        let (mut identities, mut devices, mut attributes) =
            (HashMap::new(), HashMap::new(), HashMap::new());
        let mut mp_deviceid = None;
        let mut count = 0;
        let mut values = Vec::new();
        for (destination, from) in destinations {
            let index = count;
            match destination {
                Destination::Identity(t) => {
                    identities.insert(t.as_str().to_owned(), index);
                }
                Destination::Device(DeviceIdType::MpDeviceId) => mp_deviceid = Some(index),
                Destination::Device(t) => {
                    devices.insert(t.as_str().to_owned(), index);
                }
                Destination::Attribute(name) => {
                    // The mapper cuts over-long names (limit policy `truncate`);
                    // the batch then carries the cut name.
                    let cut = limits::truncate_chars(name, limits::MAX_ATTRIBUTE_NAME_CHARS);
                    attributes.insert(cut.to_owned(), index);
                    attributes.insert(name.clone(), index);
                }
                Destination::Mpid | Destination::Event(_) | Destination::EventAttribute(_) => {
                    continue
                }
            }
            let builder = SentBuilder::for_source(match destination {
                Destination::Attribute(_) => from,
                _ => SentFrom::Text,
            });
            fields.push(Field::new(
                destination_path(destination),
                builder.data_type(),
                true,
            ));
            values.push(builder);
            count += 1;
        }
        fields.push(Field::new(
            "deleted_user_attributes",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ));
        let events =
            (plan.pipeline_type == crate::config::model::PipelineType::Events).then(|| {
                fields.extend([
                    Field::new("historical", DataType::Boolean, false),
                    Field::new("event_count", DataType::UInt32, false),
                    Field::new("events", DataType::Utf8, false),
                ]);
                EventColumns {
                    historical: arrow::array::BooleanBuilder::new(),
                    count: UInt32Builder::new(),
                    events: StringBuilder::new(),
                }
            });
        Self {
            schema: Arc::new(Schema::new(fields)),
            batch_rows: batch_rows.max(1),
            identities,
            devices,
            mp_deviceid,
            attributes,
            source_request_id: StringBuilder::new(),
            row: UInt64Builder::new(),
            part: UInt32Builder::new(),
            environment: StringBuilder::new(),
            mpid: Int64Builder::new(),
            values,
            deleted: ListBuilder::new(StringBuilder::new()),
            events,
            pending: 0,
            scratch: vec![None; count],
        }
    }

    /// The dataset's schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Add one batch; returns a record batch when `batch_rows` rows are buffered.
    /// A batch naming a destination the plan does not have is an error (the plan
    /// and the mapper disagree).
    pub fn push(&mut self, batch: &EncodedBatch) -> Result<Option<RecordBatch>, ExportError> {
        let data_err = |message: String| ExportError::Data {
            dataset: "batches",
            message,
        };
        let parsed: BatchJson<'_> = serde_json::from_slice(&batch.json).map_err(|e| {
            data_err(format!(
                "batch of row {} part {} is not valid batch JSON: {e}",
                batch.row, batch.part
            ))
        })?;
        let unknown = |what: &str, name: &str| {
            data_err(format!(
                "batch of row {} carries {what} `{name}`, which the mapping plan does not send",
                batch.row
            ))
        };
        for (name, value) in parsed.user_identities {
            let i = *self
                .identities
                .get(&name)
                .ok_or_else(|| unknown("user identity", &name))?;
            self.scratch[i] = Some(Sent::Str(value));
        }
        for (name, value) in parsed.device_info {
            let i = *self
                .devices
                .get(&name)
                .ok_or_else(|| unknown("device id", &name))?;
            self.scratch[i] = Some(Sent::Str(value));
        }
        if let Some(value) = parsed.mp_deviceid {
            let i = self
                .mp_deviceid
                .ok_or_else(|| unknown("device id", "mp_deviceid"))?;
            self.scratch[i] = Some(Sent::Str(value));
        }
        for (name, raw) in parsed.user_attributes {
            let i = *self
                .attributes
                .get(&name)
                .ok_or_else(|| unknown("user attribute", &name))?;
            self.scratch[i] = Some(Sent::Json(raw.get().to_owned()));
        }
        self.source_request_id
            .append_value(&batch.source_request_id);
        self.row.append_value(batch.row);
        self.part.append_value(batch.part);
        self.environment.append_option(parsed.environment);
        self.mpid.append_option(parsed.mpid);
        for (i, (builder, value)) in self
            .values
            .iter_mut()
            .zip(self.scratch.iter_mut())
            .enumerate()
        {
            builder.append(value.take()).map_err(|m| {
                data_err(format!(
                    "batch of row {} part {}: `{}`: {m}",
                    batch.row,
                    batch.part,
                    self.schema.field(5 + i).name()
                ))
            })?;
        }
        for name in &parsed.deleted_user_attributes {
            self.deleted.values().append_value(name);
        }
        self.deleted.append(true);
        if let Some(columns) = self.events.as_mut() {
            let events = parsed.events.map_or("[]", RawValue::get);
            let count = serde_json::from_str::<Vec<&RawValue>>(events)
                .map_err(|e| data_err(format!("batch of row {}: events: {e}", batch.row)))?
                .len();
            columns.historical.append_value(batch.historical);
            columns
                .count
                .append_value(u32::try_from(count).unwrap_or(u32::MAX));
            columns.events.append_value(events);
        }
        self.pending += 1;
        if self.pending >= self.batch_rows {
            self.flush()
        } else {
            Ok(None)
        }
    }

    /// The buffered rows as a record batch, or `None` when there are none. Call
    /// once more after the last [`BatchesDataset::push`].
    pub fn flush(&mut self) -> Result<Option<RecordBatch>, ExportError> {
        if self.pending == 0 {
            return Ok(None);
        }
        self.pending = 0;
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(self.source_request_id.finish()),
            Arc::new(self.row.finish()),
            Arc::new(self.part.finish()),
            Arc::new(self.environment.finish()),
            Arc::new(self.mpid.finish()),
        ];
        arrays.extend(self.values.iter_mut().map(SentBuilder::finish));
        arrays.push(Arc::new(self.deleted.finish()));
        if let Some(columns) = self.events.as_mut() {
            arrays.push(Arc::new(columns.historical.finish()));
            arrays.push(Arc::new(columns.count.finish()));
            arrays.push(Arc::new(columns.events.finish()));
        }
        RecordBatch::try_new(self.schema.clone(), arrays)
            .map(Some)
            .map_err(|e| ExportError::Data {
                dataset: "batches",
                message: e.to_string(),
            })
    }
}

/// Builds the `rejected` dataset from rejected rows.
#[derive(Debug)]
pub struct RejectedDataset {
    schema: SchemaRef,
    batch_rows: usize,
    row: UInt64Builder,
    reason: StringBuilder,
    detail: StringBuilder,
    values: StringBuilder,
    pending: usize,
}

impl RejectedDataset {
    /// The dataset, yielding record batches of `batch_rows` rows (0 is taken as 1).
    pub fn new(batch_rows: usize) -> Self {
        Self {
            schema: Arc::new(Schema::new(vec![
                Field::new("row", DataType::UInt64, false),
                Field::new("reason", DataType::Utf8, false),
                Field::new("detail", DataType::Utf8, false),
                Field::new("values", DataType::Utf8, false),
            ])),
            batch_rows: batch_rows.max(1),
            row: UInt64Builder::new(),
            reason: StringBuilder::new(),
            detail: StringBuilder::new(),
            values: StringBuilder::new(),
            pending: 0,
        }
    }

    /// The dataset's schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Add one rejected row; returns a record batch when `batch_rows` rows are
    /// buffered.
    pub fn push(&mut self, rejected: &RejectedRow) -> Result<Option<RecordBatch>, ExportError> {
        let values = serde_json::to_string(&rejected.values).map_err(|e| ExportError::Data {
            dataset: "rejected",
            message: format!("row {}: {e}", rejected.row),
        })?;
        self.row.append_value(rejected.row);
        self.reason.append_value(rejected.reason.as_str());
        self.detail.append_value(&rejected.detail);
        self.values.append_value(values);
        self.pending += 1;
        if self.pending >= self.batch_rows {
            self.flush()
        } else {
            Ok(None)
        }
    }

    /// The buffered rows as a record batch, or `None` when there are none. Call
    /// once more after the last [`RejectedDataset::push`].
    pub fn flush(&mut self) -> Result<Option<RecordBatch>, ExportError> {
        if self.pending == 0 {
            return Ok(None);
        }
        self.pending = 0;
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(self.row.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.detail.finish()),
            Arc::new(self.values.finish()),
        ];
        RecordBatch::try_new(self.schema.clone(), arrays)
            .map(Some)
            .map_err(|e| ExportError::Data {
                dataset: "rejected",
                message: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_exactly_or_not_at_all() {
        assert_eq!(parse_decimal("12.50", 12, 2), Some(1250));
        assert_eq!(parse_decimal("-0.01", 10, 2), Some(-1));
        assert_eq!(parse_decimal("12.5", 12, 2), Some(1250));
        assert_eq!(parse_decimal("7", 5, 2), Some(700));
        assert_eq!(parse_decimal(".5", 5, 2), Some(50));
        assert_eq!(parse_decimal("12.500", 12, 2), Some(1250));
        assert_eq!(parse_decimal("12.501", 12, 2), None, "never rounded");
        assert_eq!(
            parse_decimal("123456789012345678901.123456789", 30, 9),
            Some(123_456_789_012_345_678_901_123_456_789)
        );
        assert_eq!(parse_decimal("1000.00", 5, 2), None, "out of precision");
        assert_eq!(parse_decimal("999.99", 5, 2), Some(99_999));
        assert_eq!(parse_decimal("12300", 5, -2), Some(123));
        assert_eq!(parse_decimal("12345", 5, -2), None);
        for bad in [
            "NaN",
            "Infinity",
            "-Infinity",
            "",
            "-",
            ".",
            "1e5",
            "1.2.3",
            "--1",
        ] {
            assert_eq!(parse_decimal(bad, 30, 9), None, "{bad}");
        }
        let max = "9".repeat(38);
        assert_eq!(parse_decimal(&max, 38, 0), Some(10i128.pow(38) - 1));
        assert_eq!(parse_decimal(&format!("{max}9"), 38, 0), None);
    }
}
