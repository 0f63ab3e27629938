//! Test databases: the real PostgreSQL and MariaDB on 127.0.0.1.
//!
//! Each helper returns a small pool, or `None` (after printing `skipping: …`) when
//! the server is unreachable on a developer machine. With `CI` set to any truthy
//! value (`true`, `1`, `yes`, anything but empty, `0`, `false`, `no` or `off`),
//! as CI services set it, an unreachable server is a test failure, never a
//! silent skip. Tests run in parallel, so every
//! test creates its own tables through [`unique_table`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wsync::config::model::{Connection, ConnectionKind};
use wsync::redact::Secret;

/// PostgreSQL URL: `WSYNC_TEST_PG_URL` or `postgres://postgres@127.0.0.1:5432/test`.
pub fn postgres_url() -> String {
    std::env::var("WSYNC_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// MariaDB/MySQL URL: `WSYNC_TEST_MYSQL_URL` or `mysql://root@127.0.0.1:3306/test`.
pub fn mysql_url() -> String {
    std::env::var("WSYNC_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// Whether we run in CI, where a missing database must fail the test.
fn in_ci() -> bool {
    ci_is_truthy(std::env::var("CI").ok().as_deref())
}

/// Whether a `CI` value means "in CI": any value but empty, `0`, `false`, `no`
/// or `off` (in any case). CI services set `true` (GitHub, GitLab) or `1`.
pub fn ci_is_truthy(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        let v = v.trim();
        !(v.is_empty()
            || ["0", "false", "no", "off"]
                .iter()
                .any(|f| v.eq_ignore_ascii_case(f)))
    })
}

/// Panic in CI, otherwise print a skip line; the caller then returns `None`.
fn unreachable_db(what: &str, url: &str, err: &sqlx::Error) {
    let url = wsync::redact::redact_url(url);
    if in_ci() {
        panic!("{what} at {url} is unreachable ({err}); CI is set, so this test fails instead of skipping");
    }
    eprintln!("skipping: {what} at {url} is unreachable ({err})");
}

/// A pool on the test PostgreSQL, or `None` when it is unreachable outside CI.
pub async fn postgres() -> Option<sqlx::PgPool> {
    let url = postgres_url();
    match sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
    {
        Ok(pool) => Some(pool),
        Err(e) => {
            unreachable_db("postgresql", &url, &e);
            None
        }
    }
}

/// A new, empty schema on the test PostgreSQL to use as a wsync state store:
/// (its URL, its name). Schemas left by earlier test runs (named by their
/// creation second) are dropped after an hour, so the test database does not
/// grow run after run.
pub async fn state_schema(pool: &sqlx::PgPool) -> (String, String) {
    let now = chrono::Utc::now().timestamp();
    let old: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'wsync_it_%'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    for name in old {
        let born = name.split('_').nth(2).and_then(|s| s.parse::<i64>().ok());
        if born.is_some_and(|b| now - b > 3600) {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .execute(pool)
                .await;
        }
    }
    let schema = format!("wsync_it_{now}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(pool)
        .await
        .expect("create schema");
    (
        format!("{}?options=-c%20search_path%3D{schema}", postgres_url()),
        schema,
    )
}

/// A pool on the test MariaDB, or `None` when it is unreachable outside CI.
pub async fn mysql() -> Option<sqlx::MySqlPool> {
    let url = mysql_url();
    match sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
    {
        Ok(pool) => Some(pool),
        Err(e) => {
            unreachable_db("mariadb", &url, &e);
            None
        }
    }
}

/// A table name unique to this test process and call, e.g. `t_users_4711_3`, so
/// parallel tests (and parallel test runs) never share a table.
pub fn unique_table(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("t_{prefix}_{}_{n}_{nanos}", std::process::id())
}

/// A validated-config `Connection` for tests.
pub fn connection(kind: ConnectionKind, url: &str) -> Connection {
    Connection {
        name: format!("test_{}", kind.as_str()),
        kind,
        url: Secret::new(url),
        seed_sql: None,
        statement_timeout: Duration::from_secs(30),
        chunk_rows: 1000,
        cloud: None,
    }
}

/// A full-table query on `sql` for model `name`.
pub fn query(name: &str, sql: &str) -> wsync::source::SourceQuery {
    wsync::source::SourceQuery {
        model: name.to_owned(),
        sql: sql.to_owned(),
        filter: None,
        limit: None,
    }
}

/// Probe then extract `query` with `chunk_rows`, collecting every batch.
pub async fn extract_all(
    warehouse: &mut wsync::source::Warehouse,
    query: &wsync::source::SourceQuery,
    chunk_rows: usize,
) -> Result<
    (
        Vec<wsync::source::ColumnInfo>,
        u64,
        Vec<arrow::array::RecordBatch>,
    ),
    wsync::source::SourceError,
> {
    let columns = warehouse.probe(query).await?;
    // A small channel, so the test also exercises back-pressure.
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let collect = async {
        let mut batches = Vec::new();
        while let Some(b) = rx.recv().await {
            batches.push(b);
        }
        batches
    };
    let (rows, batches) = tokio::join!(warehouse.extract(query, &columns, chunk_rows, tx), collect);
    Ok((columns, rows?, batches))
}

/// The single batch of a small result, concatenated if needed.
pub fn one_batch(batches: &[arrow::array::RecordBatch]) -> arrow::array::RecordBatch {
    assert!(!batches.is_empty(), "expected at least one batch");
    arrow::compute::concat_batches(&batches[0].schema(), batches).expect("concat batches")
}

/// The reserved reasons column of extracted batches, row by row: `Some(reason)`
/// for a row the reader rejected.
pub fn rejected_reasons(batches: &[arrow::array::RecordBatch]) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            let column = b
                .column_by_name(wsync::source::REJECTED_COLUMN)
                .expect("every chunk carries the reasons column");
            let reasons = column
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .expect("reasons are text");
            reasons
                .iter()
                .map(|r| r.map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn ci_any_truthy_value_makes_an_unreachable_database_fail() {
    for on in ["true", "1", "TRUE", "yes", "on", "woodpecker"] {
        assert!(ci_is_truthy(Some(on)), "{on}");
    }
    for off in [
        None,
        Some(""),
        Some("0"),
        Some("false"),
        Some("False"),
        Some("no"),
        Some("off"),
    ] {
        assert!(!ci_is_truthy(off), "{off:?}");
    }
}
