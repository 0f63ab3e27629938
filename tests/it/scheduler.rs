//! The scheduler and incremental windows end to end on PostgreSQL, on an
//! injected clock: interval catch-up with exact windows, pause/resume, window
//! boundaries (rows equal to the watermark, rows written during a run, wall-clock
//! iterators in a non-UTC zone, unix milliseconds, lag), checkpoints that split
//! rows of one iterator value, backfills, and triggers refused while running.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use wsync::clock::{Clock, ManualClock};
use wsync::scheduler::{Daemon, SchedulerError};
use wsync::state::RunState;
use wsync::sync::{RunKind, SyncContext};

use crate::support::db;
use crate::support::fake_mparticle::{FakeMparticle, Fault};
use crate::support::project::TestProject;

const KEY: &str = "sched-key";
const SECRET: &str = "sched-secret-41c2";

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A project on the test PostgreSQL with one feed to `fake`; `extra` goes into
/// wsync.toml (e.g. a `[daemon]` table).
fn project(fake: &FakeMparticle, extra: &str) -> TestProject {
    TestProject::new(&format!(
        r#"
[connections.pg]
type = "postgres"
url = "{url}"
chunk_rows = 10

[feeds.fake]
base_url = "{base}"
api_key = "{KEY}"
api_secret = "{SECRET}"
retry_max_attempts = 2
retry_initial_backoff_ms = 1
rate_limit_per_sec = 0
{extra}
"#,
        url = db::postgres_url(),
        base = fake.base_url(),
    ))
}

/// The same context on a clock the test moves.
async fn on_clock(p: &TestProject, clock: &ManualClock) -> SyncContext {
    let ctx = p.context().await;
    SyncContext {
        clock: Arc::new(clock.clone()),
        ..ctx
    }
}

/// `customer_id`s the fake received, in order.
fn received(fake: &FakeMparticle) -> Vec<String> {
    fake.batches()
        .iter()
        .map(|b| {
            b["user_identities"]["customer_id"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hourly_catch_up_runs_exact_windows_oldest_first_and_honours_pause() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("sched_hourly");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (customer_id text, updated_at timestamptz);
         INSERT INTO {table} VALUES
           ('a', '2026-03-01T06:10:00Z'), ('b', '2026-03-01T06:50:00Z'),
           ('c', '2026-03-01T07:00:00Z'), ('d', '2026-03-01T07:30:00Z'),
           ('e', '2026-03-01T08:59:59.999999Z'),
           ('f', '2026-03-01T09:00:00Z'), ('g', '2026-03-01T09:10:00Z');"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(&fake, "");
    p.model("m", &format!("SELECT customer_id, updated_at FROM {table}"));
    p.pipeline(
        "hourly",
        r#"
connection = "pg"
data_model = "m"
feed = "fake"

[sync_mode]
type = "incremental"
iterator_field = "updated_at"
iterator_data_type = "timestamp_tz"
from = "2026-03-01T06:00:00Z"

[schedule]
type = "interval"
frequency = "hourly"
start = "2026-03-01T06:00:00Z"
"#,
    );
    // Three hours and twenty minutes after the start.
    let clock = ManualClock::new(t("2026-03-01T09:20:00Z"));
    let ctx = on_clock(&p, &clock).await;
    let daemon = Daemon::new(ctx.clone());
    let next = daemon.tick().await.unwrap();
    assert_eq!(next, Some(t("2026-03-01T10:00:00Z")));
    daemon.wait_idle().await;

    let mut runs = ctx.state.runs(Some("hourly"), 10, 0).await.unwrap();
    runs.reverse();
    let shape: Vec<_> = runs
        .iter()
        .map(|r| {
            (
                r.run_type.as_str(),
                r.state,
                r.interval.map(|(a, b)| (a.to_rfc3339(), b.to_rfc3339())),
                r.data_interval_start.clone(),
                r.data_interval_end.clone(),
                r.counts.records_extracted,
            )
        })
        .collect();
    let iv = |a: &str, b: &str| Some((t(a).to_rfc3339(), t(b).to_rfc3339()));
    let s = |x: &str| Some(x.to_owned());
    assert_eq!(
        shape,
        vec![
            (
                "scheduled",
                RunState::Success,
                iv("2026-03-01T06:00:00Z", "2026-03-01T07:00:00Z"),
                s("2026-03-01T06:00:00Z"),
                s("2026-03-01T07:00:00Z"),
                2
            ),
            (
                "scheduled",
                RunState::Success,
                iv("2026-03-01T07:00:00Z", "2026-03-01T08:00:00Z"),
                s("2026-03-01T07:00:00Z"),
                s("2026-03-01T08:00:00Z"),
                2
            ),
            (
                "scheduled",
                RunState::Success,
                iv("2026-03-01T08:00:00Z", "2026-03-01T09:00:00Z"),
                s("2026-03-01T08:00:00Z"),
                s("2026-03-01T09:00:00Z"),
                1
            ),
        ]
    );
    assert_eq!(received(&fake), ["a", "b", "c", "d", "e"]);

    // Nothing more is due before 10:00.
    clock.set(t("2026-03-01T09:59:00Z"));
    daemon.tick().await.unwrap();
    daemon.wait_idle().await;
    assert_eq!(
        ctx.state.runs(Some("hourly"), 10, 0).await.unwrap().len(),
        3
    );

    // Paused: 10:00 passes without a run; resumed: it is caught up.
    ctx.state
        .set_paused("hourly", true, clock.now())
        .await
        .unwrap();
    clock.set(t("2026-03-01T10:00:00Z"));
    assert_eq!(
        daemon.tick().await.unwrap(),
        None,
        "paused: nothing planned"
    );
    daemon.wait_idle().await;
    assert_eq!(
        ctx.state.runs(Some("hourly"), 10, 0).await.unwrap().len(),
        3
    );
    assert!(matches!(
        daemon.trigger("hourly").await,
        Err(SchedulerError::Paused(_))
    ));
    ctx.state
        .set_paused("hourly", false, clock.now())
        .await
        .unwrap();
    daemon.tick().await.unwrap();
    daemon.wait_idle().await;
    let last = &ctx.state.runs(Some("hourly"), 1, 0).await.unwrap()[0];
    assert_eq!(
        last.interval,
        Some((t("2026-03-01T09:00:00Z"), t("2026-03-01T10:00:00Z")))
    );
    assert_eq!(received(&fake), ["a", "b", "c", "d", "e", "f", "g"]);
    assert_eq!(fake.duplicates(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boundaries_wall_clock_zone_unix_ms_lag_and_rows_written_during_a_run() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let ntz = db::unique_table("sched_ntz");
    let ms = db::unique_table("sched_ms");
    // 16:00 UTC on 1 July is 12:00 in New York (EDT).
    sqlx::raw_sql(&format!(
        "CREATE TABLE {ntz} (customer_id text, local_ts timestamp);
         INSERT INTO {ntz} VALUES ('n1', '2026-07-01 11:59:59.999999'),
           ('n2', '2026-07-01 12:00:00'), ('n3', '2026-07-01 15:00:00');
         CREATE TABLE {ms} (customer_id text, ts_ms bigint);
         INSERT INTO {ms} VALUES ('m1', 1782921599999), ('m2', 1782921600000);"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(&fake, "");
    p.model("ntz", &format!("SELECT customer_id, local_ts FROM {ntz}"));
    p.model("ms", &format!("SELECT customer_id, ts_ms FROM {ms}"));
    p.pipeline(
        "ntz",
        r#"
connection = "pg"
data_model = "ntz"
feed = "fake"

[sync_mode]
type = "incremental"
iterator_field = "local_ts"
iterator_data_type = "timestamp_ntz"
iterator_time_zone = "America/New_York"
lag = 3600
"#,
    );
    p.pipeline(
        "ms",
        r#"
connection = "pg"
data_model = "ms"
feed = "fake"

[sync_mode]
type = "incremental"
iterator_field = "ts_ms"
iterator_data_type = "timestamp_unixtime_ms"
"#,
    );
    let clock = ManualClock::new(t("2026-07-01T16:00:00Z"));
    let ctx = on_clock(&p, &clock).await;

    // Read in New York time: 15:00 local is after 12:00 local, though before
    // 16:00 UTC; 12:00:00 itself equals the upper bound and waits.
    let first = wsync::sync::run(&ctx, "ntz", RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(
        first.record.state,
        RunState::Success,
        "{:?}",
        first.record.error
    );
    assert_eq!(
        first.record.data_interval_end.as_deref(),
        Some("2026-07-01T12:00:00")
    );
    assert_eq!(received(&fake), ["n1"]);
    assert_eq!(
        ctx.state.watermark("ntz").await.unwrap().as_deref(),
        Some("2026-07-01T12:00:00")
    );

    // A row written while a run is in progress with a value at or after the
    // run's upper bound is the next run's: simulate it by writing between runs
    // a value equal to the bound just stored.
    sqlx::query(&format!(
        "INSERT INTO {ntz} VALUES ('n4', '2026-07-01 12:00:00')"
    ))
    .execute(&pool)
    .await
    .unwrap();
    clock.set(t("2026-07-01T20:00:00Z")); // 16:00 in New York
    let second = wsync::sync::run(&ctx, "ntz", RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(second.record.state, RunState::Success);
    // lag = 3600: the window starts an hour below the watermark, so n1 is read
    // again (same source_request_id, applied once), and every row equal to the
    // old watermark is read exactly once.
    assert_eq!(
        second.record.data_interval_start.as_deref(),
        Some("2026-07-01T11:00:00")
    );
    let got: BTreeSet<String> = received(&fake).into_iter().collect();
    assert_eq!(
        got,
        ["n1", "n2", "n3", "n4"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert_eq!(fake.duplicates(), 1, "only n1 was re-read, by the lag");

    // Unix milliseconds: the bound is the clock's millisecond; the row at it waits.
    clock.set(t("2026-07-01T16:00:00Z"));
    let m = wsync::sync::run(&ctx, "ms", RunKind::Manual).await.unwrap();
    assert_eq!(m.record.data_interval_end.as_deref(), Some("1782921600000"));
    assert_eq!(m.record.counts.records_extracted, 1);
    clock.set(t("2026-07-01T16:00:01Z"));
    let m2 = wsync::sync::run(&ctx, "ms", RunKind::Manual).await.unwrap();
    assert_eq!(
        m2.record.data_interval_start.as_deref(),
        Some("1782921600000")
    );
    assert_eq!(m2.record.counts.records_extracted, 1);
    let ms_rows: Vec<String> = received(&fake)
        .into_iter()
        .filter(|c| c.starts_with('m'))
        .collect();
    assert_eq!(ms_rows, ["m1", "m2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_resumes_from_its_spool_and_without_it_from_its_checkpoint() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("sched_ckpt");
    // 100 rows share one iterator value, 150 the next: chunks of 10 and
    // requests of 100 batches split the second group.
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (customer_id text, updated_at timestamptz);
         INSERT INTO {table}
           SELECT 'r' || lpad(i::text, 3, '0'),
                  CASE WHEN i <= 100 THEN timestamptz '2026-01-01T00:00:00Z'
                       ELSE timestamptz '2026-01-01T00:00:01Z' END
           FROM generate_series(1, 250) AS i;"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let fake = FakeMparticle::start(KEY, SECRET).await;
    // One request at a time: the faults below meet the requests in the order
    // they were sent, whatever the load.
    let p = project(&fake, "max_in_flight = 1\n[daemon]\ncheckpoint_rows = 10\n");
    p.model("m", &format!("SELECT customer_id, updated_at FROM {table}"));
    p.pipeline(
        "p",
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
    let clock = ManualClock::new(t("2026-02-01T00:00:00Z"));
    let ctx = on_clock(&p, &clock).await;
    // Two requests (rows 1-200) land, the third is refused with 401, which
    // stops the run.
    fake.push_fault(Fault::Slow {
        delay: std::time::Duration::ZERO,
    });
    fake.push_fault(Fault::Slow {
        delay: std::time::Duration::ZERO,
    });
    fake.respond_with_status_once(401);
    let failed = wsync::sync::run(&ctx, "p", RunKind::Manual).await.unwrap();
    assert_eq!(failed.record.state, RunState::Failed);
    assert_eq!(
        failed.record.checkpoint.as_deref(),
        Some("2026-01-01T00:00:01Z"),
        "rows 1-200 acknowledged: the last whole chunk below them holds the second value"
    );
    assert_eq!(fake.distinct_applied(), 200);
    assert_eq!(ctx.state.watermark("p").await.unwrap(), None);
    let spool = failed.spool.clone().expect("a delivering run spools");
    assert!(spool.kept, "a failed run keeps its spool");
    assert_eq!(spool.rows, 250);

    // The next run delivers the rest from the spool: no query, nothing
    // acknowledged is sent again.
    let resumed = wsync::sync::run(&ctx, "p", RunKind::Manual).await.unwrap();
    assert_eq!(
        resumed.record.state,
        RunState::Success,
        "{:?}",
        resumed.record.error
    );
    assert_eq!(resumed.record.resumed_from, Some(failed.record.id));
    let resumed_spool = resumed.spool.clone().unwrap();
    assert_eq!(resumed_spool.resumed_from, Some(failed.record.id));
    assert_eq!(resumed_spool.batches_already_done, 200);
    assert!(!resumed_spool.kept, "a committed run deletes its spool");
    assert!(!resumed_spool.dir.exists());
    assert_eq!(resumed.record.counts.batches_sent, 50);
    assert_eq!(fake.distinct_applied(), 250);
    assert_eq!(fake.duplicates(), 0);
    assert_eq!(
        ctx.state.watermark("p").await.unwrap().as_deref(),
        Some("2026-02-01T00:00:00Z")
    );

    // Without its spool (lost, or too old) a failed run is resumed from its
    // checkpoint: the rows of the checkpoint's value are read again and come
    // back with the same source_request_id.
    sqlx::raw_sql(&format!(
        "UPDATE {table} SET customer_id = 'x' || customer_id, \
         updated_at = updated_at + interval '40 days'"
    ))
    .execute(&pool)
    .await
    .unwrap();
    clock.set(t("2026-03-01T00:00:00Z"));
    fake.push_fault(Fault::Slow {
        delay: std::time::Duration::ZERO,
    });
    fake.push_fault(Fault::Slow {
        delay: std::time::Duration::ZERO,
    });
    fake.respond_with_status_once(401);
    let failed = wsync::sync::run(&ctx, "p", RunKind::Manual).await.unwrap();
    assert_eq!(failed.record.state, RunState::Failed);
    assert_eq!(
        failed.record.checkpoint.as_deref(),
        Some("2026-02-10T00:00:01Z")
    );
    std::fs::remove_dir_all(&failed.spool.unwrap().dir).unwrap();
    let before = fake.duplicates();
    let resumed = wsync::sync::run(&ctx, "p", RunKind::Manual).await.unwrap();
    assert_eq!(resumed.record.state, RunState::Success);
    assert_eq!(resumed.record.resumed_from, Some(failed.record.id));
    assert_eq!(
        resumed.record.data_interval_start.as_deref(),
        Some("2026-02-10T00:00:01Z")
    );
    assert_eq!(resumed.record.counts.records_extracted, 150);
    assert_eq!(
        fake.duplicates() - before,
        100,
        "rows 101-200 re-read and deduped"
    );

    // A backfill replays a range and leaves the watermark alone.
    let backfill = wsync::sync::run(
        &ctx,
        "p",
        RunKind::Backfill {
            from: "2026-02-10T00:00:01Z".into(),
            until: "2026-02-11T00:00:00Z".into(),
            chunk: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(backfill.record.state, RunState::Success);
    assert_eq!(backfill.record.run_type, "backfill");
    assert_eq!(backfill.record.counts.records_extracted, 150);
    assert_eq!(
        ctx.state.watermark("p").await.unwrap().as_deref(),
        Some("2026-03-01T00:00:00Z")
    );
    let bad = wsync::sync::run(
        &ctx,
        "p",
        RunKind::Backfill {
            from: "last tuesday".into(),
            until: "2026-01-02T00:00:00Z".into(),
            chunk: None,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        bad.to_string(),
        "pipeline `p`: --from `last tuesday` is not a valid timestamp_tz value; write an RFC 3339 instant, e.g. 2024-01-01T00:00:00Z"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_is_refused_while_the_pipeline_runs_and_shutdown_interrupts_it() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("sched_trigger");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (customer_id text, updated_at timestamptz);
         INSERT INTO {table} SELECT 'r' || i, timestamptz '2026-01-01' + i * interval '1 second'
           FROM generate_series(1, 2000) AS i;"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let fake = FakeMparticle::start(KEY, SECRET).await;
    // Slow: every request waits, so the run is still going when triggered again.
    for _ in 0..40 {
        fake.push_fault(Fault::Slow {
            delay: std::time::Duration::from_millis(300),
        });
    }
    let p = project(
        &fake,
        "[daemon]\ncheckpoint_rows = 10\nshutdown_grace_secs = 5\n",
    );
    p.model("m", &format!("SELECT customer_id, updated_at FROM {table}"));
    p.pipeline(
        "od",
        r#"
connection = "pg"
data_model = "m"
feed = "fake"

[sync_mode]
type = "incremental"
iterator_field = "updated_at"
iterator_data_type = "timestamp_tz"

[schedule]
type = "on_demand"
"#,
    );
    let ctx = p.context().await;
    let daemon = Daemon::new(ctx.clone());
    assert_eq!(
        daemon.tick().await.unwrap(),
        None,
        "on demand: never planned"
    );
    daemon.trigger("od").await.unwrap();
    // Wait until the run has a checkpoint, then trigger again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let runs = ctx.state.runs(Some("od"), 1, 0).await.unwrap();
        if runs.first().is_some_and(|r| r.checkpoint.is_some()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint in 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let again = daemon.trigger("od").await.unwrap_err();
    assert_eq!(
        again.to_string(),
        "pipeline `od` is already in progress; wait for its run to finish"
    );
    ctx.shutdown.cancel();
    daemon.wait_idle().await;
    let run = &ctx.state.runs(Some("od"), 1, 0).await.unwrap()[0];
    assert_eq!(run.state, RunState::Interrupted, "{:?}", run.error);
    let checkpoint = run.checkpoint.clone().expect("checkpoint");
    assert!(
        run.error.as_deref().unwrap_or("").contains(&checkpoint),
        "{:?}",
        run.error
    );
    assert!(fake.distinct_applied() < 2000, "stopped before the end");

    // The next run resumes the spool and finishes the table.
    let ctx2 = p.context().await;
    let resumed = wsync::sync::run(&ctx2, "od", RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(resumed.record.state, RunState::Success);
    assert_eq!(resumed.record.resumed_from, Some(run.id));
    assert_eq!(fake.distinct_applied(), 2000);
    assert!(
        fake.duplicates() <= 4 * 100,
        "{} re-sent",
        fake.duplicates()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_pipeline_runs_once_per_fire_although_it_leaves_no_record() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("sched_dry");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (customer_id text, updated_at timestamptz);
         INSERT INTO {table} VALUES ('a', '2026-03-01T00:00:00Z');"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(&fake, "");
    p.model("m", &format!("SELECT customer_id, updated_at FROM {table}"));
    p.pipeline(
        "dry",
        r#"
connection = "pg"
data_model = "m"
input_protection = "only_read"

[sync_mode]
type = "incremental"
iterator_field = "updated_at"
iterator_data_type = "timestamp_tz"

[schedule]
type = "cron"
expression = "0 * * * *"
"#,
    );
    let clock = ManualClock::new(t("2026-03-01T06:10:00Z"));
    let ctx = on_clock(&p, &clock).await;
    let daemon = Daemon::new(ctx.clone());
    let dry_runs = || {
        std::fs::read_dir(p.root().join(".wsync/runs/dry"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(
        daemon.tick().await.unwrap(),
        Some(t("2026-03-01T07:00:00Z"))
    );
    clock.set(t("2026-03-01T07:00:00Z"));
    daemon.tick().await.unwrap();
    daemon.wait_idle().await;
    assert_eq!(dry_runs(), 1);
    // Its report is its record; the would-be batches are written only when asked.
    let dir = std::fs::read_dir(p.root().join(".wsync/runs/dry"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(dir.join("report.json").exists());
    assert!(!dir.join("batches.jsonl").exists());
    // The same fire does not run again, though the state store has no record.
    clock.set(t("2026-03-01T07:00:01Z"));
    assert_eq!(
        daemon.tick().await.unwrap(),
        Some(t("2026-03-01T08:00:00Z"))
    );
    daemon.wait_idle().await;
    assert_eq!(dry_runs(), 1);
    assert!(ctx.state.runs(None, 10, 0).await.unwrap().is_empty());
    clock.set(t("2026-03-01T08:00:00Z"));
    daemon.tick().await.unwrap();
    daemon.wait_idle().await;
    assert_eq!(dry_runs(), 2);
    assert!(fake.requests().is_empty());
}

/// Issue 16 item 8: a run of this daemon that panicked, or whose outcome the
/// state store refused, left the pipeline's lock held by the live process. The
/// daemon must release it (and say so), not skip the pipeline silently and
/// answer 409 to every trigger until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_lock_after_a_panicked_run_is_released() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("sched_stuck");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (customer_id text, updated_at timestamptz);
         INSERT INTO {table} VALUES ('a', '2026-03-01T00:00:00Z'), ('b', '2026-03-01T00:00:01Z');"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(&fake, "");
    p.model("m", &format!("SELECT customer_id, updated_at FROM {table}"));
    p.pipeline(
        "stuck",
        r#"
connection = "pg"
data_model = "m"
feed = "fake"

[sync_mode]
type = "incremental"
iterator_field = "updated_at"
iterator_data_type = "timestamp_tz"

[schedule]
type = "once"
"#,
    );
    let ctx = p.context().await;
    // What a panicked run leaves: a `running` record and this process's lock.
    let stuck = ctx
        .state
        .start_run(&wsync::state::NewRun {
            pipeline_id: "stuck",
            run_type: "manual",
            dry_run: false,
            now: ctx.clock.now(),
            window: (None, None),
            interval: None,
            resumed_from: None,
            claim: None,
            claim_cut_off: None,
            chunk: None,
        })
        .await
        .unwrap();
    let daemon = Daemon::new(ctx.clone());
    // The pass releases the lock and plans the `once` run.
    daemon.tick().await.unwrap();
    daemon.wait_idle().await;
    assert_eq!(ctx.state.lease_holder("stuck").await.unwrap(), None);
    let runs = ctx.state.runs(Some("stuck"), 10, 0).await.unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1].id, stuck);
    assert_eq!(runs[1].state, RunState::Failed);
    assert!(
        runs[1]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("ended without recording an outcome"),
        "{:?}",
        runs[1].error
    );
    assert_eq!(runs[0].state, RunState::Success, "{:?}", runs[0].error);
    assert_eq!(fake.distinct_applied(), 2);

    // A trigger is not refused with 409 by a stuck lock either.
    ctx.state
        .start_run(&wsync::state::NewRun {
            pipeline_id: "stuck",
            run_type: "manual",
            dry_run: false,
            now: ctx.clock.now(),
            window: (None, None),
            interval: None,
            resumed_from: None,
            claim: None,
            claim_cut_off: None,
            chunk: None,
        })
        .await
        .unwrap();
    daemon.trigger("stuck").await.unwrap();
    daemon.wait_idle().await;
    let runs = ctx.state.runs(Some("stuck"), 10, 0).await.unwrap();
    assert_eq!(runs.len(), 4);
    assert_eq!(runs[0].state, RunState::Success, "{:?}", runs[0].error);
    assert_eq!(runs[1].state, RunState::Failed);
}
