//! Several `wsync daemon` processes on one PostgreSQL state store, as on
//! several hosts (each with its own project folder, spool and run files):
//! every scheduled run starts once across them, a daemon SIGKILLed mid-run
//! has its pipeline resumed by another once its lease expires, and a daemon
//! stopped (SIGSTOP) past its lease cannot commit when it comes back.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use wsync::state::{RunState, StateStore};

use crate::support::child::Drained;
use crate::support::db;
use crate::support::fake_mparticle::FakeMparticle;
use crate::support::project::TestProject;

pub(crate) const KEY: &str = "daemons-key";
pub(crate) const SECRET: &str = "daemons-secret-4c1d";
/// Short leases, so a dead daemon's pipelines move within seconds.
const LEASE_TTL_SECS: u64 = 3;

/// One daemon's project folder: the same pipelines and state store as the
/// others, its own spool and run files (another host's disk).
pub(crate) fn project(
    fake: &FakeMparticle,
    state: &str,
    rate: u32,
    pipelines: &[(String, String)],
) -> TestProject {
    let p = TestProject::new(&format!(
        r#"
[state]
url = "{state}"
lease_ttl_secs = {LEASE_TTL_SECS}

[connections.pg]
type = "postgres"
url = "{url}"
chunk_rows = 200

[feeds.fake]
base_url = "{base}"
api_key = "{KEY}"
api_secret = "{SECRET}"
retry_initial_backoff_ms = 1
rate_limit_per_sec = {rate}

[daemon]
max_concurrent_runs = 4
checkpoint_rows = 200
shutdown_grace_secs = 5
http_bind = ""
"#,
        url = db::postgres_url(),
        base = fake.base_url(),
    ));
    for (id, table) in pipelines {
        p.model(id, &format!("SELECT customer_id, plan FROM {table}"));
    }
    p
}

fn pipeline_toml(id: &str, schedule: &str) -> String {
    format!(
        r#"
connection = "pg"
data_model = "{id}"
feed = "fake"

[sync_mode]
type = "full"

[schedule]
{schedule}
"#
    )
}

async fn create_table(pool: &sqlx::PgPool, table: &str, rows: u32) {
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (customer_id text, plan text);
         INSERT INTO {table} SELECT '{table}-c' || i, 'gold' FROM generate_series(1, {rows}) AS i;"
    ))
    .execute(pool)
    .await
    .unwrap();
}

/// A table of `rows` customers whose `updated_at` are one second apart from
/// 2026-01-01T00:00:00Z plus `first` seconds (an incremental model's rows).
pub(crate) async fn timed_table(pool: &sqlx::PgPool, table: &str, first: u32, rows: u32) {
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (customer_id text, plan text, updated_at timestamptz);
         INSERT INTO {table} SELECT '{table}-c' || i, 'gold',
           timestamptz '2026-01-01T00:00:00Z' + i * interval '1 second'
         FROM generate_series({first}, {last}) AS i;",
        last = first + rows - 1
    ))
    .execute(pool)
    .await
    .unwrap();
}

pub(crate) fn spawn_daemon(p: &TestProject) -> Drained {
    Drained::spawn(
        Command::new(env!("CARGO_BIN_EXE_wsync"))
            .arg("--config")
            .arg(p.root())
            .arg("daemon")
            .env("WSYNC_LOG", "wsync=info"),
    )
}

/// Customer ids the fake received for `table`.
pub(crate) fn delivered(fake: &FakeMparticle, table: &str) -> HashSet<String> {
    fake.batches()
        .iter()
        .filter_map(|b| {
            b["user_identities"]["customer_id"]
                .as_str()
                .map(str::to_owned)
        })
        .filter(|c| c.starts_with(&format!("{table}-c")))
        .collect()
}

/// Wait until `check` holds, or fail after `limit` saying what was awaited.
async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// 30 pipelines firing every 5 seconds on three daemons: each fire runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_run_every_scheduled_fire_exactly_once() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let (state, schema) = db::state_schema(&pool).await;
    let mut pipelines = Vec::new();
    for i in 0..30 {
        let table = db::unique_table(&format!("dm{i}"));
        create_table(&pool, &table, 5).await;
        pipelines.push((format!("p{i:02}"), table));
    }
    let projects: Vec<TestProject> = (0..3)
        .map(|_| {
            let p = project(&fake, &state, 0, &pipelines);
            for (id, _) in &pipelines {
                p.pipeline(
                    id,
                    &pipeline_toml(id, "type = \"cron\"\nexpression = \"*/5 * * * * *\""),
                );
            }
            p
        })
        .collect();
    let mut daemons: Vec<Drained> = projects.iter().map(spawn_daemon).collect();
    let store = StateStore::open(&state).await.unwrap();
    // About six fires per pipeline.
    tokio::time::sleep(Duration::from_secs(32)).await;
    for d in &daemons {
        d.signal(libc::SIGTERM);
    }
    let mut logs = Vec::new();
    for d in daemons.drain(..) {
        let (status, _, err) = d.wait();
        assert!(status.success(), "a daemon failed: {err}");
        logs.push(err);
    }
    let mut per_daemon: BTreeMap<String, u64> = BTreeMap::new();
    for daemon in store.daemons().await.unwrap() {
        per_daemon.insert(daemon.id.clone(), 0);
    }
    assert_eq!(per_daemon.len(), 3, "three daemons registered");
    let mut total = 0;
    for (id, table) in &pipelines {
        let runs = store.runs(Some(id), 100, 0).await.unwrap();
        let scheduled: Vec<_> = runs.iter().filter(|r| r.run_type == "scheduled").collect();
        assert!(
            scheduled.len() >= 2,
            "{id}: only {} scheduled runs in 32 s of a 5 s cron",
            scheduled.len()
        );
        // Each 5-second fire slot holds one successful run at most: a fire
        // two daemons both found due ran once. (A run whose lease expired
        // under load is taken over and ends interrupted, fenced; the
        // takeover is the same fire's one run.)
        let mut slots = HashSet::new();
        for r in &scheduled {
            assert!(
                matches!(r.state, RunState::Success | RunState::Interrupted),
                "{id}: run {} ended {:?}: {:?}",
                r.id,
                r.state,
                r.error
            );
            if r.state == RunState::Success {
                assert!(
                    slots.insert(r.start_date.timestamp() / 5),
                    "{id}: two runs succeeded for one fire: {:?}",
                    scheduled
                        .iter()
                        .map(|r| (r.id, r.start_date, r.state))
                        .collect::<Vec<_>>()
                );
            }
        }
        total += scheduled.len();
        assert_eq!(delivered(&fake, table).len(), 5, "{id}: every row arrived");
    }
    // The claims table holds one row per scheduled run: none claimed twice.
    let claims: i64 =
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}.schedule_claims", schema))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(claims as usize, total);
    // The work spread: every daemon ran some of it.
    let holders = logs
        .iter()
        .filter(|log| log.contains("Run finished."))
        .count();
    assert_eq!(holders, 3, "each daemon ran pipelines");
}

/// A daemon SIGKILLed mid-run: another takes the pipeline over once the
/// lease expires and finishes it from the killed run's checkpoint; no row is
/// lost and the rows before the checkpoint are not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemons_pipeline_resumes_on_another_after_its_lease_expires() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let (state, _) = db::state_schema(&pool).await;
    let table = db::unique_table("dm_kill");
    timed_table(&pool, &table, 1, 3000).await;
    let pipelines = vec![("slow".to_owned(), table.clone())];
    // 3,000 rows at 300 batches/s: about ten seconds of sending, with a
    // checkpoint every 200 rows.
    let incremental = r#"
connection = "pg"
data_model = "slow"
feed = "fake"

[sync_mode]
type = "incremental"
iterator_field = "updated_at"
iterator_data_type = "timestamp_tz"

[schedule]
type = "once"
"#;
    let projects: Vec<TestProject> = (0..2)
        .map(|_| {
            let p = project(&fake, &state, 300, &pipelines);
            p.model(
                "slow",
                &format!("SELECT customer_id, plan, updated_at FROM {table}"),
            );
            p.pipeline("slow", incremental);
            p
        })
        .collect();
    let store = StateStore::open(&state).await.unwrap();
    let mut first = spawn_daemon(&projects[0]);
    wait_for(
        "a checkpoint past a third of the rows",
        Duration::from_secs(60),
        || async {
            store
                .runs(Some("slow"), 1, 0)
                .await
                .unwrap()
                .first()
                .and_then(|r| r.checkpoint.clone())
                .is_some_and(|c| c.as_str() >= "2026-01-01T00:16:40")
        },
    )
    .await;
    first.kill();
    let killed_run = store.runs(Some("slow"), 1, 0).await.unwrap()[0].clone();
    assert_eq!(killed_run.state, RunState::Running);
    let sent_before = fake.batches().len();
    let second = spawn_daemon(&projects[1]);
    wait_for(
        "the second daemon to finish the pipeline",
        Duration::from_secs(90),
        || async {
            store
                .runs(Some("slow"), 1, 0)
                .await
                .unwrap()
                .first()
                .is_some_and(|r| r.state == RunState::Success)
        },
    )
    .await;
    second.signal(libc::SIGTERM);
    let (status, _, err) = second.wait();
    assert!(status.success(), "{err}");
    let runs = store.runs(Some("slow"), 10, 0).await.unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1].id, killed_run.id);
    assert_eq!(runs[1].state, RunState::Interrupted);
    assert_eq!(runs[0].state, RunState::Success);
    assert_eq!(
        runs[0].resumed_from,
        Some(killed_run.id),
        "resumed from the checkpoint"
    );
    assert_eq!(delivered(&fake, &table).len(), 3000, "no row lost");
    // Only the rows from the checkpoint on were read and sent again.
    let resent = fake.batches().len() - sent_before;
    assert!(
        runs[0].counts.records_extracted < 2500 && resent < 2500,
        "the takeover re-read {} rows and sent {resent}",
        runs[0].counts.records_extracted
    );
}

/// A daemon stopped (SIGSTOP) past its lease and continued (SIGCONT) after
/// another daemon took its pipeline over commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_daemon_cannot_commit_after_its_lease_was_taken() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let (state, _) = db::state_schema(&pool).await;
    let table = db::unique_table("dm_stall");
    create_table(&pool, &table, 2000).await;
    let pipelines = vec![("stall".to_owned(), table.clone())];
    let projects: Vec<TestProject> = (0..2)
        .map(|_| {
            let p = project(&fake, &state, 300, &pipelines);
            p.pipeline("stall", &pipeline_toml("stall", "type = \"once\""));
            p
        })
        .collect();
    let store = StateStore::open(&state).await.unwrap();
    let first = spawn_daemon(&projects[0]);
    wait_for(
        "the first run to start sending",
        Duration::from_secs(60),
        || async { delivered(&fake, &table).len() >= 300 },
    )
    .await;
    let stalled_run = store.runs(Some("stall"), 1, 0).await.unwrap()[0].id;
    first.signal(libc::SIGSTOP);
    let second = spawn_daemon(&projects[1]);
    wait_for(
        "the second daemon to take over and finish",
        Duration::from_secs(90),
        || async {
            store
                .runs(Some("stall"), 1, 0)
                .await
                .unwrap()
                .first()
                .is_some_and(|r| r.id != stalled_run && r.state == RunState::Success)
        },
    )
    .await;
    let taken = store.run(stalled_run).await.unwrap().unwrap();
    assert_eq!(taken.state, RunState::Interrupted);
    // The stalled daemon wakes up with its run half done, and stops.
    first.signal(libc::SIGCONT);
    tokio::time::sleep(Duration::from_secs(2 * LEASE_TTL_SECS)).await;
    first.signal(libc::SIGTERM);
    second.signal(libc::SIGTERM);
    let (_, _, first_log) = first.wait();
    let _ = second.wait();
    assert!(
        first_log.contains("lost its lease") || first_log.contains("taken over"),
        "the stalled daemon said why it stopped: {first_log}"
    );
    // Nothing of the stalled run was committed over the new run's work.
    let after = store.run(stalled_run).await.unwrap().unwrap();
    assert_eq!(after.state, RunState::Interrupted, "{:?}", after.error);
    let latest = store.runs(Some("stall"), 1, 0).await.unwrap()[0].clone();
    assert_eq!(latest.state, RunState::Success);
    assert_ne!(latest.id, stalled_run);
    assert_eq!(delivered(&fake, &table).len(), 2000);
}

/// Two daemons, each running its own pipeline to the same feed configured
/// at 270 batches/s (the fake accepts everything, so only the senders' own
/// pacing counts): together they send at most 270 batches/s + 5 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_one_feeds_budget() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let (state, _) = db::state_schema(&pool).await;
    let mut daemons = Vec::new();
    let mut projects = Vec::new();
    let mut tables = Vec::new();
    for name in ["left", "right"] {
        let table = db::unique_table(&format!("dm_budget_{name}"));
        create_table(&pool, &table, 2500).await;
        let pipelines = vec![(name.to_owned(), table.clone())];
        let p = project(&fake, &state, 270, &pipelines);
        p.pipeline(name, &pipeline_toml(name, "type = \"once\""));
        projects.push(p);
        tables.push(table);
    }
    for p in &projects {
        daemons.push(spawn_daemon(p));
    }
    wait_for(
        "both pipelines to be delivered",
        Duration::from_secs(120),
        || async { tables.iter().all(|t| delivered(&fake, t).len() == 2500) },
    )
    .await;
    for d in &daemons {
        d.signal(libc::SIGTERM);
    }
    for d in daemons {
        let (status, _, err) = d.wait();
        assert!(status.success(), "{err}");
    }
    // The rate over the time both sent, leaving out each sender's first
    // second (its bucket starts with one request's burst, before it has
    // seen the other sender).
    let requests: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.status == 202)
        .collect();
    let start = requests.first().unwrap().received_at + Duration::from_secs(2);
    let end = requests.last().unwrap().received_at;
    let batches: usize = requests
        .iter()
        .filter(|r| r.received_at > start)
        .map(|r| r.batch_count)
        .sum();
    let secs = (end - start).as_secs_f64();
    let rate = batches as f64 / secs;
    eprintln!("two daemons together: {batches} batches in {secs:.1} s = {rate:.1}/s");
    assert!(
        secs > 10.0,
        "they sent for {secs:.1} s only: did they share?"
    );
    assert!(rate <= 270.0 * 1.05, "together {rate:.1} batches/s");
}
