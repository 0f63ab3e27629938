//! Crash safety through the real binary: `wsync run` SIGKILLed at random points
//! of a 200,000-row PostgreSQL sync, restarted each time, must deliver every row
//! with each `source_request_id` applied once; `wsync daemon` stopped with
//! SIGTERM mid-run exits 0, records the run as interrupted at a checkpoint, and
//! the next start resumes it.

use std::process::Command;
use std::time::{Duration, Instant};

use wsync::state::{RunState, StateStore};

use crate::support::child::Drained;
use crate::support::db;
use crate::support::fake_mparticle::FakeMparticle;
use crate::support::project::TestProject;

const KEY: &str = "kill-key";
const SECRET: &str = "kill-secret-0e5b";

fn wsync_toml(fake: &FakeMparticle, extra: &str) -> String {
    format!(
        r#"
[connections.pg]
type = "postgres"
url = "{url}"
chunk_rows = 1000

[feeds.fake]
base_url = "{base}"
api_key = "{KEY}"
api_secret = "{SECRET}"
retry_initial_backoff_ms = 1
{extra}

[daemon]
checkpoint_rows = 5000
shutdown_grace_secs = 10
http_bind = "127.0.0.1:0"
"#,
        url = db::postgres_url(),
        base = fake.base_url(),
    )
}

fn project(fake: &FakeMparticle, table: &str, schedule: &str, extra: &str) -> TestProject {
    let p = TestProject::new(&wsync_toml(fake, extra));
    p.model(
        "m",
        &format!("SELECT customer_id, email, updated_at FROM {table}"),
    );
    p.pipeline(
        "big",
        &format!(
            r#"
connection = "pg"
data_model = "m"
feed = "fake"

[sync_mode]
type = "incremental"
iterator_field = "updated_at"
iterator_data_type = "timestamp_tz"

[schedule]
{schedule}
"#
        ),
    );
    p
}

/// `rows` rows; every 10 consecutive rows share one `updated_at`, so
/// checkpoints fall inside groups of equal iterator values.
async fn create_table(pool: &sqlx::PgPool, table: &str, rows: u32) {
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (customer_id text, email text, updated_at timestamptz);
         INSERT INTO {table}
           SELECT 'c' || i, 'u' || i || '@example.com',
                  timestamptz '2026-01-01T00:00:00Z' + (i / 10) * interval '1 millisecond'
           FROM generate_series(1, {rows}) AS i;"
    ))
    .execute(pool)
    .await
    .unwrap();
}

/// `wsync ARGS` with stdout and stderr drained while it runs, so its logs can
/// never fill a pipe and block it.
fn spawn(p: &TestProject, args: &[&str]) -> Drained {
    Drained::spawn(
        Command::new(env!("CARGO_BIN_EXE_wsync"))
            .arg("--config")
            .arg(p.root())
            .args(args),
    )
}

async fn state(p: &TestProject) -> StateStore {
    StateStore::open(&format!(
        "sqlite://{}",
        p.root().join(".wsync/state.db").display()
    ))
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_no_row_and_applies_each_batch_once() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    const ROWS: usize = 200_000;
    let table = db::unique_table("kill_big");
    create_table(&pool, &table, ROWS as u32).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(
        &fake,
        &table,
        "type = \"on_demand\"",
        "rate_limit_per_sec = 0",
    );
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    eprintln!("kill test seed {seed}");

    // Three kills, each once a random further share of the rows has landed.
    let mut kills = 0;
    for round in 0..3u32 {
        let before = fake.distinct_applied();
        let target = before + rng.usize(5_000..40_000);
        let mut child = spawn(&p, &["run", "big"]);
        let landed = {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                if fake.distinct_applied() >= target {
                    break true;
                }
                if child.try_wait().is_some() || Instant::now() > deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        child.kill(); // SIGKILL
        child.wait();
        if landed {
            kills += 1;
        }
        eprintln!(
            "round {round}: killed at {} distinct rows applied",
            fake.distinct_applied()
        );
    }
    assert!(kills >= 2, "the run finished before it could be killed");

    // Restart until done.
    let (code, _, stderr) = p.wsync(&["run", "big"], &[]);
    assert_eq!(code, 0, "{stderr}");

    assert_eq!(fake.distinct_applied(), ROWS, "every row reached the fake");
    let ids = fake.applied_ids();
    assert_eq!(ids.len(), ROWS);
    let batches = fake.batches();
    // Every batch is one row; each distinct id was applied once, the rest were
    // re-sends of rows at or after a checkpoint, carrying the same id.
    assert_eq!(batches.len(), ROWS + fake.duplicates());
    let customers: std::collections::HashSet<&str> = batches
        .iter()
        .map(|b| b["user_identities"]["customer_id"].as_str().unwrap())
        .collect();
    assert_eq!(customers.len(), ROWS);
    assert!(
        fake.duplicates() < ROWS / 2,
        "resumed from checkpoints, not from the start: {} re-sent",
        fake.duplicates()
    );

    let store = state(&p).await;
    let runs = store.runs(Some("big"), 10, 0).await.unwrap();
    assert_eq!(runs[0].state, RunState::Success);
    assert!(
        runs.iter().any(|r| r.resumed_from.is_some()),
        "a run resumed from a checkpoint"
    );
    assert!(runs[1..]
        .iter()
        .all(|r| r.state == RunState::Interrupted || r.state == RunState::Success));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_interrupts_the_daemon_cleanly_and_the_next_start_resumes() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    const ROWS: usize = 20_000;
    let table = db::unique_table("kill_term");
    create_table(&pool, &table, ROWS as u32).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    // 2000 batches (rows) per second: a run of about 10 s.
    let slow = project(
        &fake,
        &table,
        "type = \"once\"",
        "rate_limit_per_sec = 2000",
    );
    let mut daemon = spawn(&slow, &["daemon"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.distinct_applied() < 6_000 {
        if Instant::now() > deadline || daemon.try_wait().is_some() {
            daemon.kill();
            let (_, _, stderr) = daemon.wait();
            panic!(
                "6000 rows not applied ({}): {stderr}",
                fake.distinct_applied(),
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    daemon.signal(libc::SIGTERM);
    let (status, _, stderr) = daemon.wait();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "within the grace period"
    );
    assert!(stderr.contains("Shutting down"), "{stderr}");

    let store = state(&slow).await;
    let first = store.runs(Some("big"), 1, 0).await.unwrap().remove(0);
    assert_eq!(first.state, RunState::Interrupted, "{:?}", first.error);
    assert_eq!(first.run_type, "scheduled");
    let checkpoint = first.checkpoint.clone().expect("a checkpoint");
    assert!(fake.distinct_applied() < ROWS);

    // Next start (full speed): the `once` run is resumed and finished.
    let fast = slow;
    fast.file("wsync.toml", &wsync_toml(&fake, "rate_limit_per_sec = 0"));
    let daemon = spawn(&fast, &["daemon"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let resumed = loop {
        let last = store.runs(Some("big"), 1, 0).await.unwrap().remove(0);
        if last.id != first.id && last.state == RunState::Success {
            break last;
        }
        assert!(Instant::now() < deadline, "no successful resume: {last:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(resumed.resumed_from, Some(first.id));
    assert_eq!(resumed.run_type, "scheduled");
    // Delivered from the interrupted run's spool: its window, not the
    // checkpoint's, and only what was in flight at SIGTERM went out twice.
    assert_eq!(resumed.data_interval_start, first.data_interval_start);
    assert!(checkpoint.as_str() > "2026", "{checkpoint}");
    assert!(
        fake.duplicates() <= 4 * 100,
        "{} re-sent",
        fake.duplicates()
    );
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait().0.code(), Some(0));
    // Read once the daemon is gone: the report is written just after the
    // run's record is committed.
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            fast.root()
                .join(format!(".wsync/runs/big/{}/report.json", resumed.id)),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(report["spool"]["resumed_from_run"], first.id);
    assert_eq!(report["spool"]["rows"], ROWS as u64);
    assert_eq!(fake.distinct_applied(), ROWS);
    assert_eq!(fake.batches().len(), ROWS + fake.duplicates());
    // `once` is done: a third start runs nothing.
    let runs_before = store.runs(Some("big"), 10, 0).await.unwrap().len();
    let daemon = spawn(&fast, &["daemon"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait().0.code(), Some(0));
    assert_eq!(
        store.runs(Some("big"), 10, 0).await.unwrap().len(),
        runs_before
    );
}
