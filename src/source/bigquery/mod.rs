//! BigQuery connections, through the REST API (`jobs.query` and
//! `jobs.getQueryResults` paging). The Storage Read API (Arrow over gRPC) is not
//! used yet: the REST pages are decoded into the same Arrow builders.
//!
//! - `auth.rs`: service-account key → signed JWT → OAuth token, refreshed.
//! - `client.rs`: the calls, the paging and the retries.
//! - `types.rs`: the type table and the decoding of row values.
//!
//! Cost guard: every query first runs as a dry run (free); a query whose
//! estimate is above the connection's `maximum_bytes_billed` is refused before
//! it runs, and the real query carries the same limit, so BigQuery itself
//! refuses to bill more. The probe is a dry run too, so `wsync validate` reads
//! no rows and costs nothing; it keeps the estimate for `validate` to print.
//!
//! Rows arrive a page at a time (at most [`client::PAGE_ROWS`]); memory holds
//! one page and one record batch.

use std::time::Duration;

use serde_json::{json, Value};

use super::chunker::Chunker;
use super::snowflake::Described;
use super::sql::{self, Bind, Dialect};
use super::{ColumnInfo, IteratorFilter, IteratorValue, SourceError, SourceQuery};
use crate::config::model::{BigQuerySettings, IteratorDataType};

mod auth;
mod client;
pub(crate) mod types;

pub(crate) use auth::ServiceAccountKey;
pub(crate) use client::Client;
use client::{Failure, QueryAnswer};

/// Open a BigQuery connection (fetches the first token).
pub(crate) async fn connect(
    name: &str,
    settings: &BigQuerySettings,
    statement_timeout: Duration,
) -> Result<Client, SourceError> {
    Client::connect(name, settings, statement_timeout).await
}

/// A failure as a [`SourceError`] for `model`.
fn query_error(client: &Client, model: &str, f: Failure) -> SourceError {
    if f.timeout {
        return SourceError::Timeout {
            model: model.to_owned(),
            seconds: client.statement_timeout.as_secs(),
        };
    }
    SourceError::Query {
        model: model.to_owned(),
        message: format!("bigquery: {}", f.message),
        retryable: f.retryable,
    }
}

/// A dry run of `SELECT 1`.
pub(crate) async fn ping(client: &mut Client) -> Result<(), SourceError> {
    client
        .query("SELECT 1", Vec::new(), true)
        .await
        .map(|_| ())
        .map_err(|f| query_error(client, "<ping>", f))
}

/// A dry run of `sql`: the schema and the bytes estimate, refused above the
/// cost guard.
async fn dry_run(
    client: &mut Client,
    model: &str,
    sql: &str,
    parameters: Vec<Value>,
) -> Result<QueryAnswer, SourceError> {
    let answer = client
        .query(sql, parameters, true)
        .await
        .map_err(|f| query_error(client, model, f))?;
    let estimate = answer
        .total_bytes_processed
        .as_deref()
        .and_then(|b| b.parse::<u64>().ok());
    client.last_estimate = estimate;
    if let Some(bytes) = estimate {
        let limit = client.settings.maximum_bytes_billed;
        if bytes > limit {
            return Err(SourceError::Query {
                model: model.to_owned(),
                message: format!(
                    "bigquery estimates the query processes {bytes} bytes, above the connection's maximum_bytes_billed of {limit}: filter or partition the model, or raise maximum_bytes_billed on connection `{}`",
                    client.name
                ),
                retryable: false,
            });
        }
    }
    Ok(answer)
}

/// Describe the model with a dry run (no rows read, nothing billed).
pub(crate) async fn probe(
    client: &mut Client,
    query: &SourceQuery,
) -> Result<Vec<Described>, SourceError> {
    let answer = dry_run(client, &query.model, &sql::base(&query.sql), Vec::new()).await?;
    let fields = answer.schema.map(|s| s.fields).unwrap_or_default();
    Ok(fields
        .iter()
        .map(|f| match types::bigquery_kind(f) {
            Ok((kind, decimal)) => (f.name.clone(), f.sql_type(), Ok(kind), decimal),
            Err(u) => (f.name.clone(), f.sql_type(), Err(u), None),
        })
        .collect())
}

/// A window bound as a positional query parameter.
fn parameter(bind: &Bind) -> Value {
    let (kind, value) = match bind {
        Bind::TimestampTz(t) => (
            "TIMESTAMP",
            t.format("%Y-%m-%d %H:%M:%S%.6f+00:00").to_string(),
        ),
        Bind::Timestamp(t) => ("DATETIME", t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()),
        Bind::Date(d) => ("DATE", d.format("%Y-%m-%d").to_string()),
        Bind::Int(i) => ("INT64", i.to_string()),
        Bind::Text(s) => ("STRING", s.clone()),
    };
    json!({"parameterType": {"type": kind}, "parameterValue": {"value": value}})
}

/// Run `sql` and hand every page's rows to `each` (which returns `false` to
/// stop), waiting for the job and following page tokens.
async fn run_pages(
    client: &mut Client,
    model: &str,
    sql: &str,
    parameters: Vec<Value>,
    mut each: impl AsyncFnMut(&[types::Field], &QueryAnswer) -> Result<bool, SourceError>,
) -> Result<(), SourceError> {
    dry_run(client, model, sql, parameters.clone()).await?;
    let mut answer = client
        .query(sql, parameters, false)
        .await
        .map_err(|f| query_error(client, model, f))?;
    let job = answer.job_reference.clone();
    let started = std::time::Instant::now();
    let deadline = client.statement_timeout + Duration::from_secs(60);
    let mut fields = answer.schema.take().map(|s| s.fields).unwrap_or_default();
    loop {
        if answer.job_complete == Some(false) {
            if started.elapsed() > deadline {
                return Err(SourceError::Timeout {
                    model: model.to_owned(),
                    seconds: client.statement_timeout.as_secs(),
                });
            }
            let Some(job) = &job else {
                return Err(query_error(
                    client,
                    model,
                    Failure {
                        message: "an unfinished job came back without a job reference".to_owned(),
                        retryable: false,
                        timeout: false,
                    },
                ));
            };
            answer = client
                .results(job, None)
                .await
                .map_err(|f| query_error(client, model, f))?;
            if let Some(schema) = answer.schema.take() {
                fields = schema.fields;
            }
            continue;
        }
        if !each(&fields, &answer).await? {
            return Ok(());
        }
        let (Some(token), Some(job)) = (answer.page_token.clone(), &job) else {
            return Ok(());
        };
        answer = client
            .results(job, Some(&token))
            .await
            .map_err(|f| query_error(client, model, f))?;
        if let Some(schema) = answer.schema.take() {
            fields = schema.fields;
        }
    }
}

/// Stream the model's rows into `chunker`.
pub(crate) async fn extract(
    client: &mut Client,
    query: &SourceQuery,
    columns: &[ColumnInfo],
    chunker: &mut Chunker,
) -> Result<(), SourceError> {
    let (sql, binds) = sql::wrap(Dialect::BigQuery, query);
    let parameters: Vec<Value> = binds.iter().map(parameter).collect();
    let model = query.model.clone();
    let expected: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
    run_pages(client, &model, &sql, parameters, async |fields, answer| {
        if fields.len() != expected.len() || fields.iter().zip(&expected).any(|(f, n)| &f.name != n)
        {
            return Err(SourceError::Decode {
                model: model.clone(),
                column: String::new(),
                row: chunker.rows() + 1,
                message:
                    "the result's columns differ from the probe's: the model changed, run again"
                        .to_owned(),
            });
        }
        for row in &answer.rows {
            chunker.check_width(row.f.len())?;
            for (i, (cell, field)) in row.f.iter().zip(fields).enumerate() {
                if let Err(m) = types::append(&mut chunker.builders[i], &cell.v, field) {
                    chunker.reject_value(i, &m);
                }
            }
            if !chunker.row_done(0).await? {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await
}

/// The first cell of the first row of `sql`, as BigQuery sent it.
async fn first_cell(
    client: &mut Client,
    model: &str,
    sql: &str,
) -> Result<Option<Value>, SourceError> {
    let mut first = None;
    run_pages(client, model, sql, Vec::new(), async |_, answer| {
        first = answer
            .rows
            .first()
            .and_then(|r| r.f.first())
            .map(|c| c.v.clone());
        Ok(false)
    })
    .await?;
    Ok(first.filter(|v| !v.is_null()))
}

/// `MAX(<iterator>)` over the whole model.
pub(crate) async fn max_iterator(
    client: &mut Client,
    query: &SourceQuery,
    filter: &IteratorFilter,
) -> Result<Option<IteratorValue>, SourceError> {
    let sql = sql::max_iterator(Dialect::BigQuery, query, filter);
    let Some(cell) = first_cell(client, &query.model, &sql).await? else {
        return Ok(None);
    };
    let text = cell.as_str().unwrap_or_default();
    let decode_err = |message: String| SourceError::Decode {
        model: query.model.clone(),
        column: filter.column.clone(),
        row: 1,
        message,
    };
    Ok(Some(match filter.data_type {
        IteratorDataType::TimestampTz => {
            let micros = types::timestamp_micros(text).map_err(decode_err)?;
            IteratorValue::TimestampTz(
                chrono::DateTime::from_timestamp_micros(micros)
                    .ok_or_else(|| decode_err("timestamp out of range".to_owned()))?,
            )
        }
        // A DATETIME, or a TIMESTAMP read as its UTC wall time.
        IteratorDataType::TimestampNtz => {
            if let Ok(t) = types::parse_datetime(text) {
                IteratorValue::Timestamp(t)
            } else {
                let micros = types::timestamp_micros(text).map_err(decode_err)?;
                IteratorValue::Timestamp(
                    chrono::DateTime::from_timestamp_micros(micros)
                        .ok_or_else(|| decode_err("timestamp out of range".to_owned()))?
                        .naive_utc(),
                )
            }
        }
        IteratorDataType::Date => IteratorValue::Date(types::parse_date(text).map_err(decode_err)?),
        _ => IteratorValue::Integer(
            text.parse::<i64>()
                .map_err(|_| decode_err(format!("`{text}` is not an INT64")))?,
        ),
    }))
}

/// The first column of the first row of `sql`, as text (diagnostics and tests).
pub(crate) async fn scalar_text(
    client: &mut Client,
    sql: &str,
) -> Result<Option<String>, SourceError> {
    let cell = first_cell(client, "<diagnostic>", sql).await?;
    Ok(cell.map(|v| match v {
        Value::String(s) => s,
        other => other.to_string(),
    }))
}

/// The bytes estimate of the last dry run (probe), for `wsync validate`.
pub(crate) fn last_estimate(client: &Client) -> Option<u64> {
    client.last_estimate
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    #[test]
    fn parameters_are_typed() {
        let t = NaiveDate::from_ymd_opt(2024, 1, 2)
            .and_then(|d| d.and_hms_micro_opt(3, 4, 5, 6))
            .unwrap();
        assert_eq!(
            parameter(&Bind::TimestampTz(t.and_utc())),
            json!({"parameterType": {"type": "TIMESTAMP"}, "parameterValue": {"value": "2024-01-02 03:04:05.000006+00:00"}})
        );
        assert_eq!(
            parameter(&Bind::Timestamp(t))["parameterValue"]["value"],
            "2024-01-02 03:04:05.000006"
        );
        assert_eq!(parameter(&Bind::Int(5))["parameterType"]["type"], "INT64");
    }
}
