//! Peak memory of a `rows` Parquet export from PostgreSQL.
//!
//! Creates (once) a ~10-column table of N rows with `generate_series`, extracts it
//! through `wsync::source::Warehouse` and writes the `rows` dataset with
//! `ParquetFile`, then prints rows, seconds, file bytes and the process's peak
//! resident memory (`VmHWM`). Memory should stay flat as N grows: the source sends
//! bounded chunks and the writer flushes row groups as they fill.
//!
//! ```text
//! cargo bench --bench export_memory            # 1,000,000 rows
//! cargo bench --bench export_memory -- 5000000 # any row count
//! ```
//!
//! The database is `WSYNC_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! Not a timed test: the figures are for reading, nothing is asserted.

// Tests and benchmarks fail loudly and print what they measure; the library's
// lint discipline (Cargo.toml [lints]) is for the product's code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::pedantic,
    missing_docs
)]

use std::time::{Duration, Instant};

use wsync::config::model::{Connection, ConnectionKind};
use wsync::export::{ExportOptions, ParquetFile, RowsDataset};
use wsync::redact::Secret;
use wsync::source::{SourceQuery, Warehouse};

/// Rows per extracted chunk, as a connection's default `chunk_rows`.
const CHUNK_ROWS: usize = 10_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; the first numeric argument is the row count.
    let rows: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.replace('_', "").parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(rows))
}

async fn run(rows: u64) -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("WSYNC_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let table = format!("bench_export_{rows}");
    let pool = sqlx::PgPool::connect(&url).await?;
    let exists: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = '{table}'"
    ))
    .fetch_optional(&pool)
    .await?;
    if exists.unwrap_or(0) == 0 {
        eprintln!("creating {table} ({rows} rows)…");
        sqlx::raw_sql(&format!(
            "CREATE TABLE {table} AS SELECT
                g::int8 AS id,
                'user' || g || '@example.com' AS email,
                (g % 1000)::int4 AS bucket,
                (g * 1.37)::float8 AS ltv,
                round((g * 0.01)::numeric, 2)::numeric(14,2) AS balance,
                (g % 2 = 0) AS vip,
                md5(g::text) AS token,
                DATE '2020-01-01' + (g % 1500)::int AS signup_date,
                TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * INTERVAL '1 second' AS updated_at,
                ARRAY['tag' || (g % 7), 'tag' || (g % 11)] AS tags
             FROM generate_series(1, {rows}) AS g"
        ))
        .execute(&pool)
        .await?;
    }
    pool.close().await;

    let connection = Connection {
        name: "bench".into(),
        kind: ConnectionKind::Postgres,
        url: Secret::new(&url),
        seed_sql: None,
        statement_timeout: Duration::from_secs(3600),
        chunk_rows: CHUNK_ROWS,
        cloud: None,
    };
    let query = SourceQuery {
        model: "bench".into(),
        sql: format!("SELECT * FROM {table}"),
        filter: None,
        limit: None,
    };
    let mut warehouse = Warehouse::connect(&connection).await?;
    let columns = warehouse.probe(&query).await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("rows.parquet");
    let rss_before = peak_rss_kib();
    let started = Instant::now();

    let mut dataset = RowsDataset::new(&columns);
    let types: Vec<String> = dataset
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    let mut file = ParquetFile::create(&path, dataset.schema(), &ExportOptions::default())?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    // Parquet encoding is CPU work: it runs on a blocking thread while the
    // extraction streams on the runtime.
    let writer = tokio::task::spawn_blocking(move || {
        while let Some(chunk) = rx.blocking_recv() {
            file.write(&dataset.convert(&chunk)?)?;
        }
        file.finish()
    });
    let read = warehouse.extract(&query, &columns, CHUNK_ROWS, tx).await?;
    let done = writer.await??;
    let seconds = started.elapsed().as_secs_f64();

    println!("export_memory: table {table}, {} columns", columns.len());
    println!("columns:        {}", types.join(", "));
    println!("rows read:      {read}");
    println!("rows written:   {}", done.rows);
    println!("seconds:        {seconds:.2}");
    println!("rows/second:    {:.0}", done.rows as f64 / seconds);
    println!(
        "file bytes:     {} ({:.1} MiB, zstd)",
        done.bytes,
        done.bytes as f64 / 1_048_576.0
    );
    println!(
        "peak RSS:       {} KiB ({:.1} MiB); before export {} KiB",
        peak_rss_kib(),
        peak_rss_kib() as f64 / 1024.0,
        rss_before
    );
    Ok(())
}

/// `VmHWM` (peak resident set) from `/proc/self/status`, in KiB; 0 if unknown.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
