//! End-to-end throughput and memory of a run, against `psql \copy` as the yardstick.
//!
//! For each row count it creates (once, then reuses) a 15-column PostgreSQL table
//! `bench_pipeline_<rows>` (ids, emails, names, ints, a `numeric(14,2)`, floats,
//! bools, a `text[]`, a `timestamptz` and a `date`), then measures, each as a
//! separate child process so its peak RSS is its own (`wait4`'s `ru_maxrss`):
//!
//! 1. `psql -c "\copy (SELECT * FROM t) TO /dev/null"`: the yardstick;
//! 2. a dry run (`input_protection = "only_read"`): extract, map, convert,
//!    validate, pack and serialize every batch (the would-be batches are not
//!    written to a file: that is opt-in, `write_batches = true`);
//! 3. a Parquet export of the model (`wsync export`, zstd);
//! 4. a push to a local sink: an HTTP server in this (parent) process that reads
//!    every `/v2/bulkevents` body and answers 202, with pacing off
//!    (`rate_limit_per_sec = 0`). The run extracts into its spool and delivers
//!    from it; its outcome adds how long the warehouse session lasted (connect
//!    to close) and the spool's size.
//!
//! 5. a snapshot diff (`[diff] primary_key = ["customer_id"]`) of the same
//!    push pipeline: a first run sends every row and builds the snapshot (not
//!    measured), then a run over the unchanged table is measured: it must send
//!    no request.
//!
//! Each is printed with its seconds, its ratio to the yardstick of the same run,
//! and its peak RSS. Steps 2–4 run the library's `sync::run` / `sync::export_once`
//! exactly as the `wsync` binary does (a multi-threaded tokio runtime).
//!
//! ```text
//! cargo bench --bench pipeline                      # 1,000,000 rows
//! cargo bench --bench pipeline -- 1000000 5000000   # both sizes, one after the other
//! WSYNC_BENCH_ROWS=5000000 cargo bench --bench pipeline
//! cargo bench --bench pipeline -- diff               # only psql and step 5
//! ```
//!
//! The database is `WSYNC_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`);
//! `psql` must be on the `PATH`. Nothing is asserted: the figures are for reading
//! (and for BENCHMARKS.md). `tests/it/perf_smoke.rs` runs the same steps on a few
//! thousand rows and checks their outcomes, so this file cannot rot unnoticed.

// Tests and benchmarks fail loudly and print what they measure; the library's
// lint discipline (Cargo.toml [lints]) is for the product's code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::pedantic,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Environment variable that turns this binary into a measured child step.
const CHILD_ENV: &str = "WSYNC_BENCH_CHILD";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        return child(&mode);
    }
    // `cargo bench` passes `--bench`; every numeric argument is a row count;
    // `diff` measures only the yardstick and step 5.
    let only_diff = std::env::args().skip(1).any(|a| a == "diff");
    let mut sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.replace('_', "").parse().ok())
        .collect();
    if sizes.is_empty() {
        sizes.push(
            std::env::var("WSYNC_BENCH_ROWS")
                .ok()
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or(1_000_000),
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // The sink lives in this process so the measured children pay only for wsync.
    let sink = runtime.block_on(start_sink())?;
    let url = std::env::var("WSYNC_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    println!("machine: {} cores, {}", cores(), cpu_model());
    for rows in sizes {
        let table = runtime.block_on(ensure_table(&url, rows))?;
        let project = tempfile::Builder::new()
            .prefix("wsync-bench-")
            .tempdir_in(std::env::temp_dir())?;
        write_project(project.path(), &table, sink.port)?;
        // Warm the table into the page cache and shared buffers so the first
        // measured step does not pay for the disk.
        measure_psql(&url, &table)?;
        let psql = measure_psql(&url, &table)?;
        let skipped = || Measured {
            seconds: f64::NAN,
            peak_rss_kib: 0,
            outcome: "skipped (diff only)".to_owned(),
        };
        let (dry, export, push) = if only_diff {
            (skipped(), skipped(), skipped())
        } else {
            (
                measure_child("dry", project.path(), &url)?,
                measure_child("export", project.path(), &url)?,
                measure_child("push", project.path(), &url)?,
            )
        };
        let sunk = sink.take();
        let first = measure_child("diff", project.path(), &url)?;
        let _ = sink.take();
        let diff = measure_child("diff", project.path(), &url)?;
        let unchanged = sink.take();
        println!();
        println!("rows: {rows} (table {table}, 15 columns)");
        println!(
            "{:<34} {:>8} {:>7} {:>10}  outcome",
            "step", "seconds", "ratio", "peak RSS"
        );
        for (name, m) in [
            ("psql \\copy to /dev/null", &psql),
            ("wsync dry run (only_read)", &dry),
            ("wsync export (parquet, zstd)", &export),
            ("wsync push to local sink (202)", &push),
            ("wsync diff run, first (all new)", &first),
            ("wsync diff run, nothing changed", &diff),
        ] {
            println!(
                "{:<34} {:>8.2} {:>6.2}x {:>7.1} MiB  {}",
                name,
                m.seconds,
                m.seconds / psql.seconds,
                m.peak_rss_kib as f64 / 1024.0,
                m.outcome
            );
        }
        println!(
            "sink: {} requests, {} batches, {} body bytes",
            sunk.requests, sunk.batches, sunk.bytes
        );
        println!(
            "sink during the unchanged diff run: {} requests, {} batches",
            unchanged.requests, unchanged.batches
        );
    }
    Ok(())
}

/// One measured child process.
struct Measured {
    seconds: f64,
    peak_rss_kib: i64,
    outcome: String,
}

/// Run `cmd` to completion and read its own resource usage with `wait4`.
fn run_measured(mut cmd: Command) -> Result<Measured, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = i32::try_from(child.id())?;
    // Read stdout on a thread so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let mut status = 0;
    // SAFETY: `rusage` is plain data; wait4 fills it for the child we spawned.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child `pid`; the pointers are valid for the call.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    if waited != pid {
        return Err(format!("wait4 failed: {}", std::io::Error::last_os_error()).into());
    }
    let out = reader.join().unwrap_or_default();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(format!("child failed (status {status}): {out}").into());
    }
    Ok(Measured {
        seconds,
        // Linux reports ru_maxrss in KiB.
        peak_rss_kib: usage.ru_maxrss,
        outcome: out.trim().to_owned(),
    })
}

fn measure_psql(url: &str, table: &str) -> Result<Measured, Box<dyn std::error::Error>> {
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c"])
        .arg(format!("\\copy (SELECT * FROM {table}) TO /dev/null"));
    run_measured(cmd)
}

fn measure_child(
    mode: &str,
    project: &Path,
    url: &str,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(CHILD_ENV, mode)
        .env("WSYNC_BENCH_PROJECT", project)
        .env("WSYNC_BENCH_PG_URL", url);
    run_measured(cmd)
}

/// The SQL that creates the benchmark table (shared with `tests/it/perf_smoke.rs`).
fn table_sql(table: &str, rows: u64) -> String {
    include_str!("pipeline_table.sql")
        .replace("{table}", table)
        .replace("{rows}", &rows.to_string())
}

/// Create `bench_pipeline_<rows>` unless it exists.
async fn ensure_table(url: &str, rows: u64) -> Result<String, Box<dyn std::error::Error>> {
    let table = format!("bench_pipeline_{rows}");
    let pool = sqlx::PgPool::connect(url).await?;
    let exists: i64 =
        sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = $1")
            .bind(&table)
            .fetch_one(&pool)
            .await?;
    if exists == 0 {
        eprintln!("creating {table} ({rows} rows)…");
        sqlx::raw_sql(&table_sql(&table, rows))
            .execute(&pool)
            .await?;
    }
    pool.close().await;
    Ok(table)
}

/// A wsync project with a dry-run pipeline and a push pipeline over `table`.
fn write_project(root: &Path, table: &str, sink_port: u16) -> std::io::Result<()> {
    std::fs::create_dir_all(root.join("sql"))?;
    std::fs::create_dir_all(root.join("schedules"))?;
    std::fs::write(
        root.join("wsync.toml"),
        format!(
            "[connections.wh]\ntype = \"postgres\"\nurl_env = \"WSYNC_BENCH_PG_URL\"\nstatement_timeout_secs = 3600\n\n\
             [feeds.sink]\nbase_url = \"http://127.0.0.1:{sink_port}\"\napi_key = \"bench\"\napi_secret = \"bench\"\nrate_limit_per_sec = 0\n"
        ),
    )?;
    std::fs::write(
        root.join("sql").join("bench.sql"),
        include_str!("pipeline_model.sql").replace("{table}", table),
    )?;
    std::fs::write(
        root.join("schedules").join("bench_dry.toml"),
        "connection = \"wh\"\ndata_model = \"bench\"\ninput_protection = \"only_read\"\n",
    )?;
    std::fs::write(
        root.join("schedules").join("bench_push.toml"),
        "connection = \"wh\"\ndata_model = \"bench\"\nfeed = \"sink\"\ninput_protection = \"create_and_update\"\nretry_dead_letters = false\n",
    )?;
    std::fs::write(
        root.join("schedules").join("bench_diff.toml"),
        "connection = \"wh\"\ndata_model = \"bench\"\nfeed = \"sink\"\nretry_dead_letters = false\n\n[diff]\nprimary_key = [\"customer_id\"]\n",
    )?;
    Ok(())
}

/// The measured step, in the child process.
fn child(mode: &str) -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("WSYNC_BENCH_PROJECT")?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let project = wsync::config::load(&root).map_err(|e| e.to_string())?;
        let state = wsync::state::StateStore::open(project.state.url.expose()).await?;
        let ctx = wsync::sync::SyncContext::new(
            Arc::new(project),
            state,
            Arc::new(wsync::clock::SystemClock),
        );
        match mode {
            "export" => {
                let pipeline = ctx.pipeline("bench_dry")?;
                let out = root.join("export.parquet");
                let file = wsync::sync::export_once(
                    &ctx.project,
                    pipeline,
                    &out,
                    wsync::export::Compression::Zstd,
                    &wsync::telemetry::progress::RunProgress::default(),
                )
                .await?;
                println!("{} rows, {} file bytes", file.rows, file.bytes);
                std::fs::remove_file(&out)?;
            }
            "dry" | "push" | "diff" => {
                let id = match mode {
                    "dry" => "bench_dry",
                    "push" => "bench_push",
                    _ => "bench_diff",
                };
                let report = wsync::sync::run(&ctx, id, wsync::sync::RunKind::Manual).await?;
                let c = &report.record.counts;
                if let Some(error) = &report.record.error {
                    return Err(format!("run failed: {error}").into());
                }
                println!(
                    "{} rows, {} batches, {} requests, {} bytes",
                    c.records_extracted,
                    c.event_batches_generated,
                    report.requests,
                    report.request_bytes
                );
                if report.diff.is_some() {
                    println!(
                        "; diff: {} new, {} changed, {} unchanged",
                        c.rows_new, c.rows_changed, c.rows_unchanged
                    );
                }
                if let Some(spool) = &report.spool {
                    // Read by the parent: how long the warehouse was held, and
                    // what the spool cost on disk.
                    println!(
                        "; warehouse session {:.2} s; spool {} bytes ({:.1} B/row)",
                        spool.warehouse_session.as_secs_f64(),
                        spool.bytes,
                        spool.bytes as f64 / spool.rows.max(1) as f64
                    );
                }
                // Remove the multi-GB batches.jsonl of the dry run right away.
                let _ = std::fs::remove_dir_all(ctx.project.state.runs_dir.join(id));
            }
            other => return Err(format!("unknown child mode {other}").into()),
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// What the local sink received.
#[derive(Default)]
struct Sunk {
    requests: u64,
    batches: u64,
    bytes: u64,
}

/// The local sink: a port and its counters.
struct Sink {
    port: u16,
    counters: Arc<std::sync::Mutex<Sunk>>,
}

impl Sink {
    /// The counters so far, reset.
    fn take(&self) -> Sunk {
        std::mem::take(&mut *self.counters.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// An Events API stand-in that reads each body, counts its batches and answers
/// 202 with an empty body, as mParticle does.
async fn start_sink() -> Result<Sink, Box<dyn std::error::Error>> {
    use axum::routing::post;
    let counters = Arc::new(std::sync::Mutex::new(Sunk::default()));
    let state = counters.clone();
    let app = axum::Router::new().route(
        "/v2/bulkevents",
        post(move |body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                // Batches are top-level objects of the array; each starts with
                // `{"source_request_id"`, which a cheap scan can count.
                let batches = body
                    .windows(21)
                    .filter(|w| w == b"{\"source_request_id\":")
                    .count() as u64;
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                s.requests += 1;
                s.batches += batches;
                s.bytes += body.len() as u64;
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    // Give the server a moment to start accepting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(Sink { port, counters })
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".to_owned())
}
