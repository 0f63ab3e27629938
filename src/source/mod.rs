//! Warehouse sources: connect, probe the model's columns, and stream its rows as
//! Arrow record batches in bounded chunks.
//!
//! Each dialect has one SQL-type → Arrow-type table (see `types.rs`); a column of a
//! type outside it is refused with an error naming the column, its type and the
//! cast that fixes it. The model SQL is checked to be a single SELECT
//! (`guard.rs`) and wrapped as `SELECT * FROM (<model>) AS m WHERE …`.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use crate::config::model::IteratorDataType;

pub(crate) mod bigquery;
mod chunker;
mod decode;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub(crate) mod jwt;
mod pg_copy;
mod reader;
mod rows;
pub(crate) mod snowflake;
mod sql;
pub mod types;

pub use error::{SourceError, UnsupportedColumn};
pub use guard::{check_select_for, check_single_select, GuardError};
pub use reader::{ReadPath, Warehouse};

/// Idle time before TCP keepalive probes start on HTTP connections (Events
/// API, IDSync, Snowflake, BigQuery), and what PostgreSQL sessions ask the
/// server for (`tcp_keepalives_idle`): a peer that vanished without closing is
/// found within about a minute instead of hours.
pub const TCP_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(30);

/// Field metadata key holding the column's SQL type name as the database reported it.
pub const META_SQL_TYPE: &str = "wsync.sql_type";
/// Field metadata key holding the [`ColumnKind`] name (`decimal`, `json`, `uuid`, …).
pub const META_KIND: &str = "wsync.kind";

/// What a column holds, independent of dialect. Decides its Arrow type and how
/// mapping converts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnKind {
    /// Boolean → `Boolean`.
    Bool,
    /// 8/16/32/64-bit signed integer → `Int64`.
    Int,
    /// 64-bit unsigned integer (MySQL `BIGINT UNSIGNED`) → `UInt64`.
    UInt,
    /// 32-bit float → `Float32`.
    Float32,
    /// 64-bit float → `Float64`.
    Float64,
    /// Exact decimal → `Utf8` holding the exact decimal text (`-12.50`, `NaN`,
    /// `Infinity`, `-Infinity`).
    Decimal,
    /// Text → `Utf8`.
    Text,
    /// UUID → `Utf8` (lowercase hyphenated).
    Uuid,
    /// JSON/JSONB → `Utf8` holding compact JSON text.
    Json,
    /// Bytes → `Binary`.
    Bytes,
    /// Date → `Date32`.
    Date,
    /// Time of day → `Time64(Microsecond)`.
    Time,
    /// Timestamp without time zone → `Timestamp(Microsecond, None)`.
    Timestamp,
    /// Timestamp with time zone → `Timestamp(Microsecond, "UTC")`.
    TimestampTz,
    /// Array → `List` of the element kind (element kinds: every scalar kind above).
    List(Box<ColumnKind>),
}

impl ColumnKind {
    /// The Arrow type a column of this kind is decoded into.
    pub fn arrow_type(&self) -> DataType {
        match self {
            Self::Bool => DataType::Boolean,
            Self::Int => DataType::Int64,
            Self::UInt => DataType::UInt64,
            Self::Float32 => DataType::Float32,
            Self::Float64 => DataType::Float64,
            Self::Decimal | Self::Text | Self::Uuid | Self::Json => DataType::Utf8,
            Self::Bytes => DataType::Binary,
            Self::Date => DataType::Date32,
            Self::Time => DataType::Time64(TimeUnit::Microsecond),
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Self::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Self::List(inner) => {
                DataType::List(Arc::new(Field::new("item", inner.arrow_type(), true)))
            }
        }
    }

    /// Short name stored in the field metadata under [`META_KIND`].
    pub fn name(&self) -> String {
        match self {
            Self::Bool => "bool".into(),
            Self::Int => "int".into(),
            Self::UInt => "uint".into(),
            Self::Float32 => "float32".into(),
            Self::Float64 => "float64".into(),
            Self::Decimal => "decimal".into(),
            Self::Text => "text".into(),
            Self::Uuid => "uuid".into(),
            Self::Json => "json".into(),
            Self::Bytes => "bytes".into(),
            Self::Date => "date".into(),
            Self::Time => "time".into(),
            Self::Timestamp => "timestamp".into(),
            Self::TimestampTz => "timestamptz".into(),
            Self::List(inner) => format!("list<{}>", inner.name()),
        }
    }

    /// The kind [`ColumnKind::name`] gave this name (spool manifests store it).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "bool" => Self::Bool,
            "int" => Self::Int,
            "uint" => Self::UInt,
            "float32" => Self::Float32,
            "float64" => Self::Float64,
            "decimal" => Self::Decimal,
            "text" => Self::Text,
            "uuid" => Self::Uuid,
            "json" => Self::Json,
            "bytes" => Self::Bytes,
            "date" => Self::Date,
            "time" => Self::Time,
            "timestamp" => Self::Timestamp,
            "timestamptz" => Self::TimestampTz,
            other => {
                let inner = other.strip_prefix("list<")?.strip_suffix('>')?;
                Self::List(Box::new(Self::from_name(inner)?))
            }
        })
    }
}

/// One column of a model's result, as probed before any row is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// The column name (alias) exactly as the database returns it.
    pub name: String,
    /// The SQL type name as the database reports it (`INT8`, `TEXT[]`, `DECIMAL`, …).
    pub sql_type: String,
    /// How it is decoded.
    pub kind: ColumnKind,
    /// `(precision, scale)` of a [`ColumnKind::Decimal`] column whose type
    /// declares them (`NUMERIC(30,9)`), when the driver lets us learn them; `None`
    /// for an unconstrained decimal, an expression, or any other kind. Exports use
    /// it to write `Decimal128(p, s)`; the decoded Arrow type stays `Utf8`.
    pub decimal: Option<(u8, i8)>,
}

impl ColumnInfo {
    /// The Arrow field for this column (nullable), with [`META_SQL_TYPE`] and
    /// [`META_KIND`] metadata.
    pub fn arrow_field(&self) -> Field {
        let metadata = std::collections::HashMap::from([
            (META_SQL_TYPE.to_owned(), self.sql_type.clone()),
            (META_KIND.to_owned(), self.kind.name()),
        ]);
        Field::new(&self.name, self.kind.arrow_type(), true).with_metadata(metadata)
    }
}

/// A value of the incremental iterator column, used as a window bound and stored
/// as the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IteratorValue {
    /// For `timestamp_tz`.
    TimestampTz(DateTime<Utc>),
    /// For `timestamp_ntz`.
    Timestamp(NaiveDateTime),
    /// For `date`.
    Date(NaiveDate),
    /// For `timestamp_unixtime_s`, `timestamp_unixtime_ms` and `integer`.
    Integer(i64),
}

/// The iterator filter of an incremental run: `lower <= it AND it < upper`, rows
/// ordered by the iterator.
#[derive(Debug, Clone, PartialEq)]
pub struct IteratorFilter {
    /// Column name (alias) in the model.
    pub column: String,
    /// How bounds are typed.
    pub data_type: IteratorDataType,
    /// Inclusive lower bound; `None` = unbounded.
    pub lower: Option<IteratorValue>,
    /// Exclusive upper bound; `None` = unbounded.
    pub upper: Option<IteratorValue>,
}

/// What to read: the model SQL plus an optional window and row limit.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceQuery {
    /// The data model's name, for messages.
    pub model: String,
    /// The model's SELECT (already checked by [`guard::check_single_select`]).
    pub sql: String,
    /// Incremental window, if any.
    pub filter: Option<IteratorFilter>,
    /// `LIMIT` on the wrapped query (preview).
    pub limit: Option<u64>,
}

/// Name of the reserved last column of every extracted chunk: `Utf8`, NULL for a
/// row that decoded cleanly, else why one of its values could not be decoded
/// (`column `born`: infinite date cannot be sent: …`). The bad value itself is
/// NULL in its column. The row travels on with the chunk (through a spool, if
/// any) and the mapper rejects it with reason `invalid_value`; the column is never
/// sent, mapped or exported.
pub const REJECTED_COLUMN: &str = "__wsync_rejected";

/// The largest value (text, JSON, bytes, decimal text, one array's encoded
/// form) the reader keeps, in bytes. A larger value rejects its row
/// (`invalid_value`) and is skipped, never held: the largest thing mParticle
/// accepts is a 4096-character attribute, and a chunk must stay small whatever
/// the table holds.
pub const MAX_VALUE_BYTES: usize = 8 * 1024 * 1024;

/// A chunk is sent as soon as its values take this many bytes, even before it
/// has `chunk_rows` rows, so memory is bounded by bytes as well as rows.
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Array elements the reader keeps per value: one more than the 1000 entries a
/// list attribute may hold, so the mapper still sees that the list was too long
/// (and truncates or drops it as the pipeline's `limit_policy` says). The rest
/// are skipped. Arrays can only go to user attributes.
pub const MAX_LIST_ELEMENTS: usize = 1001;

/// Characters the reader keeps of a text element of an array: one more than the
/// 512 a list entry may hold, for the same reason.
pub const MAX_LIST_ELEMENT_CHARS: usize = 513;

/// Build the Arrow schema for probed columns.
pub fn arrow_schema(columns: &[ColumnInfo]) -> SchemaRef {
    Arc::new(arrow::datatypes::Schema::new(
        columns
            .iter()
            .map(ColumnInfo::arrow_field)
            .collect::<Vec<_>>(),
    ))
}

/// The schema of extracted chunks: the probed columns, then [`REJECTED_COLUMN`].
pub fn chunk_schema(columns: &[ColumnInfo]) -> SchemaRef {
    let mut fields: Vec<Field> = columns.iter().map(ColumnInfo::arrow_field).collect();
    fields.push(Field::new(REJECTED_COLUMN, DataType::Utf8, true));
    Arc::new(arrow::datatypes::Schema::new(fields))
}

/// The reasons column of a chunk ([`REJECTED_COLUMN`]), when `chunk` has one after
/// its `probed` columns.
pub fn rejected_reasons(chunk: &RecordBatch, probed: usize) -> Option<&arrow::array::StringArray> {
    if chunk.num_columns() != probed + 1 {
        return None;
    }
    if chunk.schema().field(probed).name() != REJECTED_COLUMN {
        return None;
    }
    chunk
        .column(probed)
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
}

/// Rows read so far arrive as record batches of at most the connection's
/// `chunk_rows` rows (fewer when they reach [`CHUNK_BYTES`]), with
/// [`REJECTED_COLUMN`] last.
pub type Chunk = RecordBatch;
