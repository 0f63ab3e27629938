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

mod chunker;
mod decode;
pub mod error;
pub mod guard;
mod pg_copy;
mod reader;
mod sql;
pub mod types;

pub use error::{SourceError, UnsupportedColumn};
pub use guard::{check_select_for, check_single_select, GuardError};
pub use reader::{ReadPath, Warehouse};

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

/// Build the Arrow schema for probed columns.
pub fn arrow_schema(columns: &[ColumnInfo]) -> SchemaRef {
    Arc::new(arrow::datatypes::Schema::new(
        columns
            .iter()
            .map(ColumnInfo::arrow_field)
            .collect::<Vec<_>>(),
    ))
}

/// Rows read so far arrive as record batches of at most the connection's
/// `chunk_rows` rows.
pub type Chunk = RecordBatch;
