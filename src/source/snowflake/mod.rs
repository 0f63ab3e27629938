//! Snowflake connections, spoken to with the protocol Snowflake's own drivers
//! use (see `client.rs`), so that `base_url` can point at PrivateLink, a proxy
//! or an emulator.
//!
//! - `auth.rs`: key-pair JWT (default) or password login.
//! - `client.rs`: login, query requests, polling, chunk downloads, retries.
//! - `types.rs`: the type table and the decoding of Arrow/JSON results.
//!
//! Session rules: `TIMEZONE = 'UTC'`, `STATEMENT_TIMEOUT_IN_SECONDS` from the
//! connection (in the login and in every query), autocommit. Snowflake has no
//! read-only session: as with Redshift, read-only is the single-SELECT guard plus
//! the role's grants (the README shows a role that can only read).
//!
//! Extraction reads the inline rows, then one chunk at a time with the next
//! chunk's download already under way, decoding straight into the chunk
//! builders: memory holds at most two downloaded chunks and one record batch.

use std::io::Cursor;
use std::time::Duration;

use arrow::ipc::reader::StreamReader;
use base64::Engine as _;
use chrono::{DateTime, NaiveDate};
use serde_json::{json, Value};

use super::chunker::Chunker;
use super::sql::{self, Bind, Dialect};
use super::{ColumnInfo, ColumnKind, IteratorFilter, IteratorValue, SourceError, SourceQuery};
use crate::config::model::{IteratorDataType, SnowflakeSettings};

mod auth;
mod client;
pub(crate) mod types;

pub(crate) use client::Client;
use client::QueryData;
use types::RowType;

/// One probed column: name, reported type, kind (or why not), decimal precision.
pub(crate) type Described = (
    String,
    String,
    Result<ColumnKind, super::types::Unsupported>,
    Option<(u8, i8)>,
);

/// Log in to Snowflake.
pub(crate) async fn connect(
    name: &str,
    settings: &SnowflakeSettings,
    statement_timeout: Duration,
) -> Result<Client, SourceError> {
    Client::connect(name, settings, statement_timeout).await
}

/// `SELECT 1`, described only: checks the session works without resuming
/// (and paying for) a suspended warehouse.
pub(crate) async fn ping(client: &mut Client) -> Result<(), SourceError> {
    client
        .query("<ping>", "SELECT 1", json!({}), true)
        .await
        .map(|_| ())
}

/// Describe the model without running it.
pub(crate) async fn probe(
    client: &mut Client,
    query: &SourceQuery,
) -> Result<Vec<Described>, SourceError> {
    let data = client
        .query(&query.model, &sql::base(&query.sql), json!({}), true)
        .await?;
    Ok(data
        .rowtype
        .iter()
        .map(|rt| match types::snowflake_kind(rt) {
            Ok((kind, decimal)) => (rt.name.clone(), rt.sql_type(), Ok(kind), decimal),
            Err(u) => (rt.name.clone(), rt.sql_type(), Err(u), None),
        })
        .collect())
}

/// The query with its iterator column spelled as the result names it:
/// Snowflake upper-cases unquoted aliases, while `iterator_field` is matched
/// case-insensitively everywhere else in wsync.
fn resolve_iterator(query: &SourceQuery, names: &[String]) -> SourceQuery {
    let mut query = query.clone();
    if let Some(filter) = &mut query.filter {
        if !names.contains(&filter.column) {
            let matches: Vec<&String> = names
                .iter()
                .filter(|n| n.eq_ignore_ascii_case(&filter.column))
                .collect();
            if let [only] = matches.as_slice() {
                filter.column = (*only).clone();
            }
        }
    }
    query
}

/// A window bound as a Snowflake typed binding (the encodings Snowflake's
/// drivers send: nanoseconds for timestamps, `"<ns> <offset+1440>"` for
/// `TIMESTAMP_TZ`, milliseconds for dates).
fn binding(bind: &Bind) -> Value {
    let nanos = |t: chrono::NaiveDateTime| {
        let t = t.and_utc();
        i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.timestamp_subsec_nanos())
    };
    match bind {
        Bind::TimestampTz(t) => {
            json!({"type": "TIMESTAMP_TZ", "value": format!("{} 1440", nanos(t.naive_utc()))})
        }
        Bind::Timestamp(t) => json!({"type": "TIMESTAMP_NTZ", "value": nanos(*t).to_string()}),
        Bind::Date(d) => {
            let millis = d
                .and_hms_opt(0, 0, 0)
                .map_or(0, |t| t.and_utc().timestamp_millis());
            json!({"type": "DATE", "value": millis.to_string()})
        }
        Bind::Int(i) => json!({"type": "FIXED", "value": i.to_string()}),
        Bind::Text(s) => json!({"type": "TEXT", "value": s}),
    }
}

/// The bindings object for `binds` (`{"1": …, "2": …}`).
fn bindings(binds: &[Bind]) -> Value {
    Value::Object(
        binds
            .iter()
            .enumerate()
            .map(|(i, b)| ((i + 1).to_string(), binding(b)))
            .collect(),
    )
}

/// Stream the model's rows into `chunker`.
pub(crate) async fn extract(
    client: &mut Client,
    query: &SourceQuery,
    columns: &[ColumnInfo],
    chunker: &mut Chunker,
) -> Result<(), SourceError> {
    let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
    let query = resolve_iterator(query, &names);
    let (sql, binds) = sql::wrap(Dialect::Snowflake, &query);
    let model = query.model.as_str();
    let data = client.query(model, &sql, bindings(&binds), false).await?;
    let changed = data.rowtype.len() != columns.len()
        || data
            .rowtype
            .iter()
            .zip(columns)
            .any(|(rt, c)| rt.name != c.name);
    if changed {
        return Err(SourceError::Decode {
            model: model.to_owned(),
            column: String::new(),
            row: 1,
            message: "the result's columns differ from the probe's: the model changed, run again"
                .to_owned(),
        });
    }
    read_result(client, model, &data, chunker).await
}

/// Decode the inline rows and every chunk of `data` into `chunker`. Stops early
/// (without error) when the receiver is gone.
async fn read_result(
    client: &Client,
    model: &str,
    data: &QueryData,
    chunker: &mut Chunker,
) -> Result<(), SourceError> {
    let json = data.format.as_deref() == Some("json");
    let rowtype = &data.rowtype;
    let inline_more = if json {
        decode_json_rows(data.rowset.as_deref().unwrap_or_default(), rowtype, chunker).await?
    } else {
        match data.rowset_base64.as_deref().filter(|s| !s.is_empty()) {
            Some(b64) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| {
                        query_error(model, format!("the inline rows are not base64: {e}"))
                    })?;
                decode_arrow(&bytes, rowtype, model, chunker).await?
            }
            None => true,
        }
    };
    if !inline_more {
        return Ok(());
    }
    let headers = data.download_headers();
    let total = data.chunks.len();
    // One download ahead of the decoding: bounded memory, no idle network.
    let mut next = data
        .chunks
        .first()
        .map(|c| tokio::spawn(client.download(c, &headers)));
    for index in 0..total {
        let Some(current) = next.take() else { break };
        next = data
            .chunks
            .get(index + 1)
            .map(|c| tokio::spawn(client.download(c, &headers)));
        let bytes = current
            .await
            .map_err(|e| query_error(model, format!("a chunk download stopped: {e}")))?
            .map_err(|f| SourceError::Query {
                model: model.to_owned(),
                message: format!(
                    "result chunk {} of {total}: {}",
                    index + 1,
                    client.scrub(&f.message)
                ),
                retryable: f.retryable,
            })?;
        let more = if json {
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                query_error(model, format!("result chunk {} is not UTF-8", index + 1))
            })?;
            let rows: Vec<Vec<Option<String>>> = serde_json::from_str(&format!("[{text}]"))
                .map_err(|e| {
                    query_error(
                        model,
                        format!("result chunk {} is not JSON rows: {e}", index + 1),
                    )
                })?;
            decode_json_rows(&rows, rowtype, chunker).await?
        } else {
            decode_arrow(&bytes, rowtype, model, chunker).await?
        };
        if !more {
            if let Some(pending) = next.take() {
                pending.abort();
            }
            return Ok(());
        }
    }
    Ok(())
}

/// A [`SourceError::Query`] that is not worth retrying.
fn query_error(model: &str, message: String) -> SourceError {
    SourceError::Query {
        model: model.to_owned(),
        message,
        retryable: false,
    }
}

/// Decode an Arrow IPC stream into `chunker`; `false` = the receiver is gone.
async fn decode_arrow(
    bytes: &[u8],
    rowtype: &[RowType],
    model: &str,
    chunker: &mut Chunker,
) -> Result<bool, SourceError> {
    let reader = StreamReader::try_new(Cursor::new(bytes), None)
        .map_err(|e| query_error(model, format!("the result is not an Arrow stream: {e}")))?;
    for batch in reader {
        let batch =
            batch.map_err(|e| query_error(model, format!("cannot read an Arrow batch: {e}")))?;
        chunker.check_width(batch.num_columns())?;
        for row in 0..batch.num_rows() {
            for (i, rt) in rowtype.iter().enumerate() {
                if let Err(m) =
                    types::append_arrow(&mut chunker.builders[i], batch.column(i), row, rt)
                {
                    chunker.reject_value(i, &m);
                }
            }
            if !chunker.row_done(0).await? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Decode JSON result rows into `chunker`; `false` = the receiver is gone.
async fn decode_json_rows(
    rows: &[Vec<Option<String>>],
    rowtype: &[RowType],
    chunker: &mut Chunker,
) -> Result<bool, SourceError> {
    for row in rows {
        chunker.check_width(row.len())?;
        for (i, rt) in rowtype.iter().enumerate() {
            if let Err(m) = types::append_text(&mut chunker.builders[i], row[i].as_deref(), rt) {
                chunker.reject_value(i, &m);
            }
        }
        if !chunker.row_done(0).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `MAX(<iterator>)` over the whole model.
pub(crate) async fn max_iterator(
    client: &mut Client,
    query: &SourceQuery,
    filter: &IteratorFilter,
) -> Result<Option<IteratorValue>, SourceError> {
    let described = probe(client, query).await?;
    let names: Vec<String> = described.into_iter().map(|d| d.0).collect();
    let resolved = resolve_iterator(query, &names);
    let filter = resolved.filter.as_ref().unwrap_or(filter);
    let sql = sql::max_iterator(Dialect::Snowflake, &resolved, filter);
    let kind = match filter.data_type {
        IteratorDataType::TimestampTz => ColumnKind::TimestampTz,
        IteratorDataType::TimestampNtz => ColumnKind::Timestamp,
        IteratorDataType::Date => ColumnKind::Date,
        _ => ColumnKind::Int,
    };
    let array = first_value(client, &query.model, &sql, &kind, &filter.column).await?;
    let Some(array) = array else { return Ok(None) };
    use arrow::array::{Array as _, AsArray as _};
    if array.is_null(0) {
        return Ok(None);
    }
    let decode_err = |message: &str| SourceError::Decode {
        model: query.model.clone(),
        column: filter.column.clone(),
        row: 1,
        message: message.to_owned(),
    };
    Ok(Some(match kind {
        ColumnKind::TimestampTz | ColumnKind::Timestamp => {
            let micros = array
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(0);
            let t = DateTime::from_timestamp_micros(micros)
                .ok_or_else(|| decode_err("timestamp out of range"))?;
            if kind == ColumnKind::TimestampTz {
                IteratorValue::TimestampTz(t)
            } else {
                IteratorValue::Timestamp(t.naive_utc())
            }
        }
        ColumnKind::Date => {
            let days = array
                .as_primitive::<arrow::datatypes::Date32Type>()
                .value(0);
            let epoch =
                NaiveDate::from_ymd_opt(1970, 1, 1).ok_or_else(|| decode_err("bad epoch"))?;
            IteratorValue::Date(
                epoch
                    .checked_add_signed(chrono::Duration::days(i64::from(days)))
                    .ok_or_else(|| decode_err("date out of range"))?,
            )
        }
        _ => IteratorValue::Integer(array.as_primitive::<arrow::datatypes::Int64Type>().value(0)),
    }))
}

/// Run `sql` and decode the first column of its first row as `kind` into a
/// one-element array; `None` when there is no row.
async fn first_value(
    client: &mut Client,
    model: &str,
    sql: &str,
    kind: &ColumnKind,
    column: &str,
) -> Result<Option<arrow::array::ArrayRef>, SourceError> {
    let info = ColumnInfo {
        name: column.to_owned(),
        sql_type: String::new(),
        kind: kind.clone(),
        decimal: None,
    };
    let data = client.query(model, sql, json!({}), false).await?;
    let Some(rt) = data.rowtype.first().cloned() else {
        return Ok(None);
    };
    let data = QueryData {
        rowtype: vec![rt],
        ..data
    };
    // One row, one column: a chunker of one row, read back.
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let mut chunker = Chunker::new(model, std::slice::from_ref(&info), 1, tx);
    // Only the first row matters; the receiver is dropped after it.
    let reading = async {
        let result = read_result(client, model, &data, &mut chunker).await;
        drop(chunker);
        result
    };
    let (result, batch) = tokio::join!(reading, async {
        let batch = rx.recv().await;
        drop(rx);
        batch
    });
    match batch {
        Some(batch) => Ok(Some(batch.column(0).clone())),
        None => result.map(|()| None),
    }
}

/// The first column of the first row of `sql`, as text (diagnostics and tests).
pub(crate) async fn scalar_text(
    client: &mut Client,
    sql: &str,
) -> Result<Option<String>, SourceError> {
    let array = first_value(client, "<diagnostic>", sql, &ColumnKind::Text, "value").await?;
    use arrow::array::{Array as _, AsArray as _};
    Ok(array.and_then(|a| (!a.is_null(0)).then(|| a.as_string::<i32>().value(0).to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_use_snowflake_encodings() {
        let t = NaiveDate::from_ymd_opt(2024, 1, 2)
            .and_then(|d| d.and_hms_micro_opt(3, 4, 5, 6))
            .unwrap();
        let b = bindings(&[
            Bind::TimestampTz(t.and_utc()),
            Bind::Timestamp(t),
            Bind::Date(t.date()),
            Bind::Int(-7),
        ]);
        assert_eq!(
            b["1"],
            json!({"type": "TIMESTAMP_TZ", "value": "1704164645000006000 1440"})
        );
        assert_eq!(
            b["2"],
            json!({"type": "TIMESTAMP_NTZ", "value": "1704164645000006000"})
        );
        assert_eq!(b["3"], json!({"type": "DATE", "value": "1704153600000"}));
        assert_eq!(b["4"], json!({"type": "FIXED", "value": "-7"}));
    }

    #[test]
    fn iterator_resolves_to_the_result_spelling() {
        let query = SourceQuery {
            model: "m".into(),
            sql: "select 1".into(),
            filter: Some(IteratorFilter {
                column: "updated_at".into(),
                data_type: IteratorDataType::Integer,
                lower: None,
                upper: None,
            }),
            limit: None,
        };
        let names = vec!["ID".to_owned(), "UPDATED_AT".to_owned()];
        assert_eq!(
            resolve_iterator(&query, &names).filter.unwrap().column,
            "UPDATED_AT"
        );
        // An exact match always wins; an ambiguous one is left alone.
        let names = vec!["updated_at".to_owned(), "UPDATED_AT".to_owned()];
        assert_eq!(
            resolve_iterator(&query, &names).filter.unwrap().column,
            "updated_at"
        );
    }
}
