//! The run's spool against real PostgreSQL and the fake Events API: the
//! warehouse session ends before a paced delivery does; SIGKILL during
//! delivery resumes from the spool with no second query and re-sends only
//! what was in flight; SIGKILL during the extract starts over; a stale spool
//! is read again; too little disk refuses the run and changes nothing.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wsync::clock::{Clock as _, ManualClock};
use wsync::state::{RunState, StateStore};
use wsync::sync::{RunKind, SyncContext};

use crate::support::db;
use crate::support::fake_mparticle::FakeMparticle;
use crate::support::project::TestProject;

const KEY: &str = "spool-key";
const SECRET: &str = "spool-secret-77a1";

fn project(fake: &FakeMparticle, table_sql: &str, feed: &str, extra: &str) -> TestProject {
    let p = TestProject::new(&format!(
        r#"
[connections.pg]
type = "postgres"
url = "{url}"
chunk_rows = 1000
statement_timeout_secs = 5

[feeds.fake]
base_url = "{base}"
api_key = "{KEY}"
api_secret = "{SECRET}"
retry_initial_backoff_ms = 1
{feed}

[daemon]
shutdown_grace_secs = 10
{extra}
"#,
        url = db::postgres_url(),
        base = fake.base_url(),
    ));
    p.model("m", table_sql);
    p.pipeline(
        "big",
        r#"
connection = "pg"
data_model = "m"
feed = "fake"

[sync_mode]
type = "incremental"
iterator_field = "updated_at"
iterator_data_type = "timestamp_tz"
"#,
    );
    p
}

async fn create_table(pool: &sqlx::PgPool, table: &str, rows: u32) {
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (customer_id text, email text, updated_at timestamptz);
         INSERT INTO {table}
           SELECT 'c' || i, 'u' || i || '@example.com',
                  timestamptz '2026-01-01T00:00:00Z' + i * interval '1 millisecond'
           FROM generate_series(1, {rows}) AS i;"
    ))
    .execute(pool)
    .await
    .unwrap();
}

/// Sequential scans of `table` so far, once every finished session's
/// statistics have reached the collector (read until two reads agree).
async fn scans(pool: &sqlx::PgPool, table: &str) -> i64 {
    let mut last = -1;
    for _ in 0..20 {
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut *conn)
            .await
            .unwrap();
        let n: i64 = sqlx::query_scalar(
            "SELECT COALESCE(seq_scan, 0) FROM pg_stat_user_tables WHERE relname = $1",
        )
        .bind(table)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if n == last {
            return n;
        }
        last = n;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    last
}

/// Sessions other than ours whose last query mentions `table`.
async fn sessions_on(pool: &sqlx::PgPool, table: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query LIKE $1",
    )
    .bind(format!("%{table}%"))
    .fetch_one(pool)
    .await
    .unwrap()
}

fn spawn(p: &TestProject, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_wsync"))
        .arg("--config")
        .arg(p.root())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn wsync")
}

fn manifest(p: &TestProject) -> Option<serde_json::Value> {
    let text = std::fs::read(p.root().join(".wsync/spool/big/manifest.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

async fn store(p: &TestProject) -> StateStore {
    StateStore::open(&format!(
        "sqlite://{}",
        p.root().join(".wsync/state.db").display()
    ))
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warehouse_session_ends_long_before_a_paced_delivery_does() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    const ROWS: usize = 20_000;
    let table = db::unique_table("spool_paced");
    create_table(&pool, &table, ROWS as u32).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    // The account's limit, enforced by the fake and respected by the feed:
    // delivery takes about 74 s, far past the 5 s statement timeout.
    fake.set_rate_limit(Some(270.0));
    let p = project(
        &fake,
        &format!("SELECT customer_id, email, updated_at FROM {table}"),
        "rate_limit_per_sec = 270",
        "",
    );
    let ctx = p.context().await;
    let run = {
        let ctx = ctx.clone();
        // A run's future is not `Send` (see scheduler::spawn): its own thread.
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            runtime.block_on(wsync::sync::run(&ctx, "big", RunKind::Manual))
        })
    };
    let started = Instant::now();
    // Delivery starts only once rows are spooled, so by the time one row has
    // landed the session existed; the extract may be too quick to be seen.
    let gone_at = loop {
        let applied = fake.distinct_applied();
        if applied > 0 && sessions_on(&pool, &table).await == 0 {
            break applied;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the warehouse session stayed open for 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        gone_at < ROWS / 4,
        "the session closed only after {gone_at} of {ROWS} rows were delivered"
    );
    let report = run.await.unwrap().unwrap();
    assert_eq!(
        report.record.state,
        RunState::Success,
        "{:?}",
        report.record.error
    );
    assert!(
        started.elapsed() > Duration::from_secs(30),
        "delivery was paced"
    );
    assert_eq!(fake.distinct_applied(), ROWS);
    assert_eq!(report.record.counts.responses_429, 0);
    let spool = report.spool.unwrap();
    assert_eq!(spool.rows, ROWS as u64);
    assert!(spool.bytes > 0 && !spool.kept && !spool.dir.exists());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report.files["report"]).unwrap()).unwrap();
    assert_eq!(json["spool"]["rows"], ROWS as u64);
    assert_eq!(json["spool"]["bytes"], spool.bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_delivery_resumes_from_the_spool_without_a_second_query() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    const ROWS: usize = 20_000;
    let table = db::unique_table("spool_kill");
    create_table(&pool, &table, ROWS as u32).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    // About 5 s of delivery: the extract is long done when the kills land.
    let p = project(
        &fake,
        &format!("SELECT customer_id, email, updated_at FROM {table}"),
        "rate_limit_per_sec = 4000",
        "",
    );
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    eprintln!("spool kill test seed {seed}");
    let baseline = scans(&pool, &table).await;
    let mut after_first = None;
    for round in 0..3 {
        let before = (fake.distinct_applied(), fake.duplicates());
        let target = before.0 + rng.usize(3_000..5_000);
        let mut child = spawn(&p, &["run", "big"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while fake.distinct_applied() < target {
            assert!(Instant::now() < deadline, "round {round}: too slow");
            assert!(
                child.try_wait().unwrap().is_none(),
                "round {round}: the run ended before the kill"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let m = manifest(&p).expect("a spool during delivery");
        assert_eq!(m["complete"], true, "the extract had finished");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if round == 0 {
            after_first = Some(scans(&pool, &table).await);
            assert!(after_first > Some(baseline), "the first run read the table");
        } else {
            // Re-sent: only requests that were in flight (4 × 100 batches).
            let resent = fake.duplicates() - before.1;
            assert!(resent <= 4 * 100, "round {round}: {resent} batches re-sent");
        }
        eprintln!("round {round}: killed at {}", fake.distinct_applied());
    }
    let before = fake.duplicates();
    let (code, stdout, stderr) = p.wsync(&["run", "big"], &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("Resumed the spool of run 1"), "{stdout}");
    assert!(fake.duplicates() - before <= 4 * 100);
    assert_eq!(
        scans(&pool, &table).await,
        after_first.unwrap(),
        "runs that resumed the spool ran no model query"
    );
    assert_eq!(fake.distinct_applied(), ROWS);
    assert_eq!(fake.batches().len(), ROWS + fake.duplicates());
    assert!(
        manifest(&p).is_none(),
        "the committed run deleted the spool"
    );
    let runs = store(&p).await.runs(Some("big"), 10, 0).await.unwrap();
    assert_eq!(runs[0].state, RunState::Success);
    assert_eq!(runs[0].counts.records_extracted, ROWS as u64);
    let watermark = store(&p).await.watermark("big").await.unwrap();
    assert!(watermark.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_the_extract_discards_the_spool_and_starts_over() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    const ROWS: usize = 3_000;
    let table = db::unique_table("spool_slow_extract");
    create_table(&pool, &table, ROWS as u32).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    // 2 ms a row: a 6 s extract, with chunks of 100 rows spooled as it goes.
    let p = project(
        &fake,
        &format!(
            "SELECT customer_id, email, updated_at FROM {table} \
             WHERE length(pg_sleep(0.002)::text) >= 0"
        ),
        "rate_limit_per_sec = 0",
        "",
    );
    p.file(
        "wsync.toml",
        &std::fs::read_to_string(p.root().join("wsync.toml"))
            .unwrap()
            .replace("chunk_rows = 1000", "chunk_rows = 100")
            .replace("statement_timeout_secs = 5", "statement_timeout_secs = 60"),
    );
    // A full sync: no ORDER BY, so rows (and spool chunks) come as the slow
    // scan makes them.
    p.pipeline(
        "big",
        "connection = \"pg\"\ndata_model = \"m\"\nfeed = \"fake\"\n",
    );
    let mut child = spawn(&p, &["run", "big"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bytes =
            std::fs::metadata(p.root().join(".wsync/spool/big/rows.arrows")).map_or(0, |m| m.len());
        if bytes > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing spooled in 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(manifest(&p).unwrap()["complete"], false);

    // `wsync status` shows the unfinished spool.
    let (code, stdout, _) = p.wsync(&["status"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("extract not finished"), "{stdout}");

    let (code, stdout, stderr) = p.wsync(&["run", "big"], &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("Pending spool discarded") && stderr.contains("did not finish"),
        "{stderr}"
    );
    assert!(!stdout.contains("Resumed the spool"), "{stdout}");
    assert_eq!(fake.distinct_applied(), ROWS);
    assert_eq!(fake.batches().len(), ROWS + fake.duplicates());
    let runs = store(&p).await.runs(Some("big"), 10, 0).await.unwrap();
    assert_eq!(runs[0].state, RunState::Success);
    assert_eq!(runs[0].counts.records_extracted as usize, ROWS);
    assert_eq!(runs[0].resumed_from, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_past_its_age_limit_is_discarded_and_the_window_read_again() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("spool_stale");
    create_table(&pool, &table, 500).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(
        &fake,
        &format!("SELECT customer_id, email, updated_at FROM {table}"),
        "rate_limit_per_sec = 0\nretry_max_attempts = 1",
        "",
    );
    let clock = ManualClock::new("2026-02-01T00:00:00Z".parse().unwrap());
    let ctx = SyncContext {
        clock: Arc::new(clock.clone()),
        ..p.context().await
    };
    // The first request is refused: the run fails with its spool complete.
    fake.respond_with_status_once(401);
    let failed = wsync::sync::run(&ctx, "big", RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(failed.record.state, RunState::Failed);
    assert!(failed.spool.as_ref().unwrap().kept);
    let status = wsync::scheduler::status::pipeline_status(
        &ctx.state,
        &ctx.project.state.spool_dir,
        &ctx.project.pipelines["big"],
        clock.now(),
    )
    .await
    .unwrap();
    let pending = status.spool.expect("status shows the pending spool");
    assert_eq!((pending.rows, pending.complete), (500, true));
    assert!(pending.bytes > 0);
    let scanned = scans(&pool, &table).await;

    // A day and an hour later the spool is too old to send.
    clock.advance(chrono::Duration::hours(25));
    let again = wsync::sync::run(&ctx, "big", RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(
        again.record.state,
        RunState::Success,
        "{:?}",
        again.record.error
    );
    assert_eq!(again.spool.as_ref().unwrap().resumed_from, None);
    assert!(
        scans(&pool, &table).await > scanned,
        "the window was read again"
    );
    assert_eq!(again.record.counts.records_extracted, 500);
    assert_eq!(fake.distinct_applied(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_disk_refuses_the_run_and_changes_nothing() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("spool_disk");
    create_table(&pool, &table, 100).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(
        &fake,
        &format!("SELECT customer_id, email, updated_at FROM {table}"),
        "rate_limit_per_sec = 0",
        "",
    );
    let toml = std::fs::read_to_string(p.root().join("wsync.toml")).unwrap();
    p.file(
        "wsync.toml",
        &format!("{toml}\n[state]\nmin_free_disk_mb = 100000000\n"),
    );
    let (code, stdout, stderr) = p.wsync(&["run", "big"], &[]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("state.min_free_disk_mb = 100000000")
            && stderr.contains(".wsync/spool/big"),
        "{stderr}"
    );
    let state = store(&p).await;
    assert_eq!(state.count_runs(Some("big")).await.unwrap(), 0);
    assert_eq!(state.watermark("big").await.unwrap(), None);
    assert!(fake.batches().is_empty());

    // A spool folder that cannot be used: refused, with the place named;
    // nothing sent, nothing recorded.
    p.file(
        "wsync.toml",
        &format!("{toml}\n[state]\nspool_dir = \"not-a-folder\"\n"),
    );
    p.file("not-a-folder", "a file where the spool folder should be");
    let (code, stdout, stderr) = p.wsync(&["run", "big"], &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stderr.contains("not-a-folder/big"), "{stderr}");
    assert_eq!(state.count_runs(Some("big")).await.unwrap(), 0);
    assert_eq!(state.watermark("big").await.unwrap(), None);
    assert!(fake.batches().is_empty());
}

/// Issue 16, item 7: a shutdown whose grace ends before the server answers
/// must not checkpoint the rows of the abandoned requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_shorter_than_a_response_loses_no_row() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    const ROWS: usize = 1_000;
    let table = db::unique_table("spool_grace");
    create_table(&pool, &table, ROWS as u32).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(
        &fake,
        &format!("SELECT customer_id, email, updated_at FROM {table}"),
        "rate_limit_per_sec = 0",
        "checkpoint_rows = 100",
    );
    p.file(
        "wsync.toml",
        &std::fs::read_to_string(p.root().join("wsync.toml"))
            .unwrap()
            .replace("chunk_rows = 1000", "chunk_rows = 100")
            .replace("shutdown_grace_secs = 10", "shutdown_grace_secs = 1"),
    );
    // Three requests land at once; the next ones take 3 s, past the grace.
    for _ in 0..3 {
        fake.push_fault(wsync_fault(Duration::ZERO));
    }
    for _ in 0..7 {
        fake.push_fault(wsync_fault(Duration::from_secs(3)));
    }
    let ctx = p.context().await;
    let run = {
        let ctx = ctx.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            runtime.block_on(wsync::sync::run(&ctx, "big", RunKind::Manual))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.distinct_applied() < 300 {
        assert!(Instant::now() < deadline, "the first requests did not land");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    ctx.shutdown.cancel();
    let asked = Instant::now();
    let stopped = run.await.unwrap().unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "stopped within the 1 s grace, not after the 3 s responses: {:?}",
        asked.elapsed()
    );
    assert_eq!(stopped.record.state, RunState::Interrupted);
    assert_eq!(fake.distinct_applied(), 300);
    // The checkpoint, if the acknowledged requests were recorded before the
    // grace ran out, covers them at most (row 300's value): never the rows of
    // the abandoned ones.
    if let Some(text) = stopped.record.checkpoint.as_deref() {
        let checkpoint: chrono::DateTime<chrono::Utc> = text.parse().unwrap();
        let row_300: chrono::DateTime<chrono::Utc> = "2026-01-01T00:00:00.300Z".parse().unwrap();
        assert!(
            checkpoint <= row_300,
            "checkpoint {checkpoint} passes unacknowledged rows"
        );
    }

    // Without the spool the next run reads from the checkpoint: every row
    // arrives all the same.
    // The abandoned requests were stopped, not left sending in the background.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fake.distinct_applied(), 300);
    std::fs::remove_dir_all(p.root().join(".wsync/spool/big")).unwrap();
    let ctx = p.context().await;
    let resumed = wsync::sync::run(&ctx, "big", RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(
        resumed.record.state,
        RunState::Success,
        "{:?}",
        resumed.record.error
    );
    if stopped.record.checkpoint.is_some() {
        assert_eq!(resumed.record.resumed_from, Some(stopped.record.id));
    }
    assert_eq!(fake.distinct_applied(), ROWS);
}

fn wsync_fault(delay: Duration) -> crate::support::fake_mparticle::Fault {
    crate::support::fake_mparticle::Fault::Slow { delay }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wsync_run_under_sigterm_stops_and_the_next_run_finishes_from_the_spool() {
    stop_wsync_run_and_finish(libc::SIGTERM).await;
}

/// Ctrl-C at a terminal: the same clean stop as SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wsync_run_under_sigint_stops_and_the_next_run_finishes_from_the_spool() {
    stop_wsync_run_and_finish(libc::SIGINT).await;
}

async fn stop_wsync_run_and_finish(signal: libc::c_int) {
    let Some(pool) = db::postgres().await else {
        return;
    };
    const ROWS: usize = 10_000;
    let table = db::unique_table("spool_term");
    create_table(&pool, &table, ROWS as u32).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(
        &fake,
        &format!("SELECT customer_id, email, updated_at FROM {table}"),
        "rate_limit_per_sec = 2000",
        "",
    );
    let child = Command::new(env!("CARGO_BIN_EXE_wsync"))
        .arg("--config")
        .arg(p.root())
        .args(["run", "big"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.distinct_applied() < 2_000 {
        assert!(Instant::now() < deadline, "2000 rows did not land");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("interrupted"), "{stdout}");
    assert!(
        stdout.contains("kept at"),
        "the summary says where the spool is: {stdout}"
    );
    assert!(fake.distinct_applied() < ROWS);
    let (code, stdout, stderr) = p.wsync(&["run", "big"], &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("Resumed the spool of run 1"), "{stdout}");
    assert_eq!(fake.distinct_applied(), ROWS);
    assert!(
        fake.duplicates() <= 4 * 100,
        "{} re-sent",
        fake.duplicates()
    );
}
