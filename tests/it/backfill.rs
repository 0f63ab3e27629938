//! Parallel backfills (`wsync backfill --chunks`): the chunks of one backfill
//! run at once on every process sharing a PostgreSQL state store; a daemon
//! SIGKILLed mid-chunk has its chunks taken over once their leases expire and
//! resumed from their checkpoints, no row lost and no chunk done twice.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::Duration;

use sqlx::Row;
use wsync::state::{ChunkState, RunState, StateStore};

use crate::daemons::{delivered, project, spawn_daemon, timed_table};
use crate::support::db;
use crate::support::fake_mparticle::FakeMparticle;
use crate::support::project::TestProject;

const PIPELINE: &str = r#"
connection = "pg"
data_model = "orders"
feed = "fake"

[sync_mode]
type = "incremental"
iterator_field = "updated_at"
iterator_data_type = "timestamp_tz"

[schedule]
type = "on_demand"
"#;

fn wsync(p: &TestProject, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wsync"))
        .arg("--config")
        .arg(p.root())
        .args(args)
        .env("WSYNC_LOG", "wsync=warn")
        .output()
        .unwrap()
}

/// A project on the embedded SQLite store, reading PostgreSQL, sending to
/// `fake` with no rate limit, `slots` runs at once.
fn local_project(fake: &FakeMparticle, slots: u32) -> TestProject {
    TestProject::new(&format!(
        r#"
[connections.pg]
type = "postgres"
url = "{url}"

[feeds.fake]
base_url = "{base}"
api_key = "{key}"
api_secret = "{secret}"
rate_limit_per_sec = 0

[daemon]
max_concurrent_runs = {slots}
http_bind = ""
"#,
        url = db::postgres_url(),
        base = fake.base_url(),
        key = crate::daemons::KEY,
        secret = crate::daemons::SECRET,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_backfill_spreads_over_processes_and_survives_a_killed_daemon() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let fake = FakeMparticle::start(crate::daemons::KEY, crate::daemons::SECRET).await;
    let (state, schema) = db::state_schema(&pool).await;
    let table = db::unique_table("bf_chunks");
    // 6,000 rows, one a second: six chunks of 1,000 rows over the range.
    timed_table(&pool, &table, 0, 6000).await;
    // Three hosts' project folders: daemon A, daemon B, and the one the
    // backfill is asked from.
    let projects: Vec<TestProject> = (0..3)
        .map(|_| {
            let p = project(&fake, &state, 400, &[]);
            p.model(
                "orders",
                &format!("SELECT customer_id, plan, updated_at FROM {table}"),
            );
            p.pipeline("orders", PIPELINE);
            p
        })
        .collect();
    let range = [
        "--from",
        "2026-01-01T00:00:00Z",
        "--until",
        "2026-01-01T01:40:00Z",
    ];
    let mut args = vec!["backfill", "orders"];
    args.extend(range);
    args.extend(["--chunks", "6", "--detach"]);
    let asked = wsync(&projects[2], &args);
    let said = String::from_utf8_lossy(&asked.stdout).into_owned();
    assert!(
        asked.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&asked.stderr)
    );
    assert!(said.contains("in 6 chunk(s)"), "{said}");
    let store = StateStore::open(&state).await.unwrap();
    let id = store.backfills(false, 100).await.unwrap()[0].id;

    // Daemon A takes four chunks at once (max_concurrent_runs = 4) and is
    // killed once one of them has a checkpoint.
    let mut a = spawn_daemon(&projects[0]);
    let start = std::time::Instant::now();
    while !store
        .runs(Some("orders"), 20, 0)
        .await
        .unwrap()
        .iter()
        .any(|r| r.state == RunState::Running && r.checkpoint.is_some())
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no chunk with a checkpoint on daemon A after 60 s: {}",
            a.stderr_so_far()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill();
    let killed: Vec<i64> = store
        .runs(Some("orders"), 20, 0)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.state == RunState::Running)
        .map(|r| r.id)
        .collect();
    assert!(!killed.is_empty());

    // Daemon B (one slot, so that it cannot take every chunk left before
    // the CLI starts) and this host's `wsync backfill --resume` share what is
    // left.
    let toml = std::fs::read_to_string(projects[1].root().join("wsync.toml")).unwrap();
    projects[1].file(
        "wsync.toml",
        &toml.replace("max_concurrent_runs = 4", "max_concurrent_runs = 1"),
    );
    let b = spawn_daemon(&projects[1]);
    let b_holder = format!("%:{}:%", b.id());
    let start = std::time::Instant::now();
    loop {
        let taken: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {schema}.pipeline_runs WHERE backfill_id = $1 AND holder LIKE $2"
        ))
        .bind(id)
        .bind(&b_holder)
        .fetch_one(&pool)
        .await
        .unwrap();
        if taken > 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "daemon B took no chunk: {}",
            b.stderr_so_far()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let root = projects[2].root().to_owned();
    let resumed = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_wsync"))
            .arg("--config")
            .arg(root)
            .args(["backfill", "--resume", &id.to_string(), "--workers", "2"])
            .env("WSYNC_LOG", "wsync=warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&resumed.stdout).into_owned();
    assert!(
        resumed.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(said.contains("6 of 6 chunks done"), "{said}");
    b.signal(libc::SIGTERM);
    let (status, _, err) = b.wait();
    assert!(status.success(), "{err}");

    let backfill = store.backfill(id).await.unwrap().unwrap();
    assert!(
        backfill.chunks.iter().all(|c| c.state == ChunkState::Done),
        "{backfill:?}"
    );
    let read: u64 = backfill.chunks.iter().map(|c| c.rows).sum();
    assert!(
        read < 6000,
        "a resumed chunk reads from its checkpoint, not its whole range: {read} rows read"
    );
    // Every chunk succeeded exactly once; the killed runs were interrupted
    // and their chunks resumed from their checkpoints.
    let runs = sqlx::query(&format!(
        "SELECT id, backfill_chunk, state, resumed_from, holder FROM {schema}.pipeline_runs \
         WHERE backfill_id = $1 ORDER BY id"
    ))
    .bind(id)
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut successes: BTreeMap<i64, u32> = BTreeMap::new();
    let mut holders = HashSet::new();
    let mut resumed_killed = 0;
    for r in &runs {
        let state: String = r.get("state");
        let run_id: i64 = r.get("id");
        if killed.contains(&run_id) {
            assert_eq!(state, "interrupted", "killed run {run_id}");
        }
        if state == "success" {
            *successes.entry(r.get("backfill_chunk")).or_default() += 1;
            holders.insert(r.get::<String, _>("holder"));
            let from: Option<i64> = r.get("resumed_from");
            if from.is_some_and(|f| killed.contains(&f)) {
                resumed_killed += 1;
            }
        }
    }
    assert_eq!(
        successes,
        (0..6).map(|c| (c, 1)).collect::<BTreeMap<i64, u32>>(),
        "one success per chunk"
    );
    assert!(
        resumed_killed >= 1,
        "a killed chunk resumed from its checkpoint"
    );
    assert!(
        holders.len() >= 2,
        "the chunks left were shared by daemon B and the CLI: {holders:?}"
    );
    assert_eq!(delivered(&fake, &table).len(), 6000, "no row lost");
}

#[tokio::test]
async fn bad_chunked_backfills_are_refused_with_what_to_do() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let fake = FakeMparticle::start(crate::daemons::KEY, crate::daemons::SECRET).await;
    let (state, _) = db::state_schema(&pool).await;
    let p = project(&fake, &state, 400, &[]);
    p.model("orders", "SELECT 'c1' AS customer_id, now() AS updated_at");
    p.pipeline("orders", PIPELINE);
    let out = wsync(
        &p,
        &[
            "backfill",
            "orders",
            "--from",
            "yesterday",
            "--until",
            "2026-01-02T00:00:00Z",
            "--chunks",
            "4",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--from") && err.contains("RFC 3339"), "{err}");
    assert!(wsync(&p, &["backfill", "--list"]).status.success());
    let out = wsync(&p, &["backfill", "--resume", "999"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no chunked backfill 999"), "{err}");
    let out = wsync(
        &p,
        &["backfill", "orders", "--from", "2026-01-01T00:00:00Z"],
    );
    assert_eq!(out.status.code(), Some(2));
    let out = wsync(&p, &["backfill", "--list"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no chunked backfill"));
}

/// In one process on the embedded SQLite store: a daemon pass fills its free
/// slots with chunks, `wsync backfill --list` and `GET /backfills` show them
/// done, and each row went out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_pass_fills_its_free_slots_with_chunks() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let fake = FakeMparticle::start(crate::daemons::KEY, crate::daemons::SECRET).await;
    let table = db::unique_table("bf_slots");
    timed_table(&pool, &table, 0, 900).await;
    let p = local_project(&fake, 2);
    p.model(
        "orders",
        &format!("SELECT customer_id, plan, updated_at FROM {table}"),
    );
    p.pipeline("orders", PIPELINE);
    let ctx = p.context().await;
    let id = wsync::sync::backfill::enqueue(
        &ctx,
        "orders",
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:15:00Z",
        3,
    )
    .await
    .unwrap();
    let daemon = wsync::scheduler::Daemon::new(ctx.clone());
    // Each pass takes one chunk per free slot (two), and a finished chunk
    // frees its slot for the next pass.
    for _ in 0..10 {
        daemon.tick().await.unwrap();
        daemon.wait_idle().await;
        if ctx.state.backfill(id).await.unwrap().unwrap().finished() {
            break;
        }
    }
    let status = ctx.state.backfill(id).await.unwrap().unwrap();
    assert_eq!(
        status
            .chunks
            .iter()
            .map(|c| (c.state, c.rows))
            .collect::<Vec<_>>(),
        vec![(ChunkState::Done, 300); 3],
        "{status:?}"
    );
    assert_eq!(delivered(&fake, &table).len(), 900);
    assert_eq!(fake.batches().len(), 900, "each row sent once");
    // The chunks' spools are gone once they committed.
    let spools = ctx.project.state.spool_dir.join(".backfill").join("orders");
    let left: Vec<_> = std::fs::read_dir(&spools)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");

    let listed = wsync(&p, &["backfill", "--list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains(&format!(
            "backfill {id} of orders [2026-01-01T00:00:00Z, 2026-01-01T00:15:00Z): 3 of 3 chunks done"
        )),
        "{text}"
    );
    let router = wsync::api::router(ctx.clone(), daemon.clone(), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(wsync::api::serve(listener, router, ctx.shutdown.clone()));
    let text = reqwest::get(format!("{base}/backfills"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    let chunks = &body["backfills"][0]["chunks"];
    assert_eq!(body["backfills"][0]["id"], id);
    assert_eq!(chunks[2]["state"], "done", "{body}");
    assert_eq!(chunks[2]["from"], "2026-01-01T00:10:00Z");
    assert_eq!(chunks[2]["rows"], 300);
    ctx.shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// Measurement (BENCHMARKS.md, "Parallel backfills"), not run by default:
/// `cargo test --test it backfill::measure_ -- --ignored --nocapture`. A
/// warehouse-bound backfill (the model costs 1 ms of server time a row, as a
/// heavy join per range would) read as one run and as 4 chunks on 4 workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it by name"]
async fn measure_a_warehouse_bound_backfill_plain_and_in_chunks() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let fake = FakeMparticle::start(crate::daemons::KEY, crate::daemons::SECRET).await;
    let table = db::unique_table("bf_measure");
    timed_table(&pool, &table, 0, 4000).await;
    let p = local_project(&fake, 4);
    // Declared immutable so that the window's filter is pushed below it, as
    // it is below a real warehouse's joins: a chunk pays for its rows only.
    sqlx::raw_sql(&format!(
        "CREATE OR REPLACE FUNCTION {table}_slow(t text) RETURNS text LANGUAGE plpgsql \
         IMMUTABLE AS $$ BEGIN PERFORM pg_sleep(0.001); RETURN t; END $$;"
    ))
    .execute(&pool)
    .await
    .unwrap();
    p.model(
        "orders",
        &format!("SELECT {table}_slow(customer_id) AS customer_id, plan, updated_at FROM {table}"),
    );
    p.pipeline("orders", PIPELINE);
    let range = [
        "--from",
        "2026-01-01T00:00:00Z",
        "--until",
        "2026-01-01T02:00:00Z",
    ];
    let mut plain = vec!["backfill", "orders"];
    plain.extend(range);
    let started = std::time::Instant::now();
    let out = wsync(&p, &plain);
    let plain_secs = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut chunked = plain.clone();
    chunked.extend(["--chunks", "4", "--workers", "4"]);
    let started = std::time::Instant::now();
    let out = wsync(&p, &chunked);
    let chunked_secs = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fake.batches().len(), 8000, "each run sent every row");
    println!(
        "4,000 rows at 1 ms of warehouse time each: one run {plain_secs:.2} s, \
         4 chunks on 4 workers {chunked_secs:.2} s ({:.2}x)",
        plain_secs / chunked_secs
    );
}
