//! Sizing several daemons (not a timed test): N `wsync daemon` processes on
//! one PostgreSQL state store, P small pipelines on a 10-second cron, for a
//! fixed time. Prints how many of the fires ran and the state store's load
//! (transactions per second, from `pg_stat_database`, and rows written in
//! wsync's tables, from `pg_stat_user_tables` of the bench's own schema).
//!
//! Run with `cargo bench --bench daemons -- [DAEMONS] [PIPELINES] [SECONDS]`
//! (defaults 3, 100, 60). Needs the local PostgreSQL (`WSYNC_TEST_PG_URL`,
//! default `postgres://postgres@127.0.0.1:5432/test`).

// Benchmarks fail loudly and print what they measure; the library's lint
// discipline (Cargo.toml [lints]) is for the product's code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::pedantic,
    missing_docs
)]

#[allow(dead_code)]
#[path = "../tests/it/support/fake_mparticle.rs"]
mod fake_mparticle;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_mparticle::FakeMparticle;
use sqlx::Connection as _;

const KEY: &str = "bench-key";
const SECRET: &str = "bench-secret-d41c";

fn pg_url() -> String {
    std::env::var("WSYNC_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn write_project(dir: &std::path::Path, state: &str, fake: &str, pipelines: usize, table: &str) {
    std::fs::create_dir_all(dir.join("sql")).unwrap();
    std::fs::create_dir_all(dir.join("schedules")).unwrap();
    std::fs::write(
        dir.join("wsync.toml"),
        format!(
            r#"
[state]
url = "{state}"

[connections.pg]
type = "postgres"
url = "{pg}"

[feeds.fake]
base_url = "{fake}"
api_key = "{KEY}"
api_secret = "{SECRET}"
rate_limit_per_sec = 0

[daemon]
max_concurrent_runs = 4
http_bind = ""
"#,
            pg = pg_url()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("sql/m.sql"),
        format!("SELECT customer_id, plan FROM {table}"),
    )
    .unwrap();
    for i in 0..pipelines {
        std::fs::write(
            dir.join(format!("schedules/p{i:03}.toml")),
            r#"
connection = "pg"
data_model = "m"
feed = "fake"

[sync_mode]
type = "full"

[schedule]
type = "cron"
expression = "*/10 * * * * *"
"#,
        )
        .unwrap();
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let daemons: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(3);
    let pipelines: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(60);

    let mut admin = sqlx::PgConnection::connect(&pg_url()).await.unwrap();
    let schema = format!("wsync_bench_{}", std::process::id());
    let table = format!("{schema}_rows");
    sqlx::raw_sql(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
         DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} AS SELECT 'c' || i AS customer_id, 'gold' AS plan
           FROM generate_series(1, 5) AS i;"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let state = format!("{}?options=-c%20search_path%3D{schema}", pg_url());
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let dirs: Vec<tempfile::TempDir> = (0..daemons).map(|_| tempfile::tempdir().unwrap()).collect();
    for dir in &dirs {
        write_project(dir.path(), &state, &fake.base_url(), pipelines, &table);
    }
    let xacts = || async {
        let mut c = sqlx::PgConnection::connect(&pg_url()).await.unwrap();
        let n: i64 = sqlx::query_scalar(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        n
    };
    let before = xacts().await;
    let start = Instant::now();
    let mut children: Vec<Child> = dirs
        .iter()
        .map(|d| {
            Command::new(env!("CARGO_BIN_EXE_wsync"))
                .arg("--config")
                .arg(d.path())
                .arg("daemon")
                .env("WSYNC_LOG_FORMAT", "json")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.path().join("daemon.log")).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    for c in &children {
        // SAFETY: the pid is our child's; SIGTERM asks it to stop cleanly.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    for c in &mut children {
        c.wait().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = xacts().await;

    let rows: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT pipeline_id, state FROM {schema}.pipeline_runs"
    ))
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
    for (_, state) in &rows {
        *by_state.entry(state.clone()).or_default() += 1;
    }
    let writes: i64 = sqlx::query_scalar(&format!(
        "SELECT COALESCE(SUM(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint \
         FROM pg_stat_user_tables WHERE schemaname = '{schema}'"
    ))
    .fetch_one(&mut admin)
    .await
    .unwrap();
    // Fires due in the measured time: one every 10 s per pipeline.
    let fires = (elapsed / 10.0).floor() as usize * pipelines;
    println!("{daemons} daemons, {pipelines} pipelines on a 10 s cron, {elapsed:.0} s");
    println!(
        "  runs: {} ({:?}); fires due about {fires}: {:.0} % ran",
        rows.len(),
        by_state,
        100.0 * rows.len() as f64 / fires.max(1) as f64
    );
    println!(
        "  state store: {:.0} transactions/s in the database (every client), {:.0} rows written/s in wsync's tables",
        (after - before) as f64 / elapsed,
        writes as f64 / elapsed
    );
    println!(
        "  per run: {:.1} rows written in the state store",
        writes as f64 / rows.len().max(1) as f64
    );
    // Why scheduled runs did not start (a fire another daemon ran is the
    // expected one), over every daemon's log.
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for d in &dirs {
        let log = std::fs::read_to_string(d.path().join("daemon.log")).unwrap_or_default();
        for line in log.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["message"] == "Scheduled run not started." {
                let reason = v["reason"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(90)
                    .collect();
                *reasons.entry(reason).or_default() += 1;
            }
        }
    }
    println!("  scheduled runs not started, by reason: {reasons:?}");
    sqlx::raw_sql(&format!(
        "DROP SCHEMA {schema} CASCADE; DROP TABLE {table};"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
}
