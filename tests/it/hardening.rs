//! Settings and commands issue 16 found untested, on SQLite and the fake Events
//! API (no server needed): `wsync dead-letters retry`, `retry_dead_letters =
//! false`, `retry_deadline_secs` and `daemon.max_concurrent_runs`.

use std::time::{Duration, Instant};

use wsync::scheduler::Daemon;
use wsync::state::RunState;
use wsync::sync::RunKind;

use crate::support::fake_mparticle::{FakeMparticle, Fault};
use crate::support::project::TestProject;

const KEY: &str = "hard-key";
const SECRET: &str = "hard-secret-5d1c";

/// A SQLite warehouse with `people(customer_id, poison, seq)`: 4 rows, the
/// second one poisoned (the fake's poison rule refuses it with a 400).
fn project(fake: &FakeMparticle, feed_extra: &str, pipeline_extra: &str) -> TestProject {
    let p = TestProject::new(&format!(
        r#"
[connections.lite]
type = "sqlite"
url = "sqlite://warehouse.db"
seed_sql = "seed.sql"

[feeds.fake]
base_url = "{base}"
api_key = "{KEY}"
api_secret = "{SECRET}"
rate_limit_per_sec = 0
{feed_extra}
"#,
        base = fake.base_url()
    ));
    p.file(
        "seed.sql",
        "CREATE TABLE people (customer_id TEXT, poison BOOLEAN, seq INTEGER NOT NULL);
         INSERT INTO people VALUES ('h1', 0, 1), ('h2', 1, 2), ('h3', 0, 3), ('h4', 0, 4);",
    );
    p.model("people", "SELECT customer_id, poison, seq FROM people");
    for id in ["people", "people2"] {
        p.pipeline(
            id,
            &format!(
                r#"
connection = "lite"
data_model = "people"
feed = "fake"
{pipeline_extra}

[sync_mode]
type = "incremental"
iterator_field = "seq"
iterator_data_type = "integer"

[schedule]
type = "once"
"#
            ),
        );
    }
    p
}

fn dead_letters(p: &TestProject) -> Vec<serde_json::Value> {
    let (code, stdout, stderr) = p.wsync(&["dead-letters", "list", "people", "--json"], &[]);
    assert_eq!(code, 0, "{stderr}");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_retry_and_retry_dead_letters_false() {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    fake.set_poison_rule(true);
    let p = project(&fake, "", "retry_dead_letters = false");
    let (code, stdout, stderr) = p.wsync(&["run", "people"], &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(fake.distinct_applied(), 3, "the poisoned row is refused");
    assert_eq!(dead_letters(&p).len(), 1);

    // retry_dead_letters = false: the next run does not re-send it.
    fake.set_poison_rule(false);
    let requests = fake.requests().len();
    let (code, _, stderr) = p.wsync(&["run", "people"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        fake.requests().len(),
        requests,
        "nothing sent: no new rows, no re-send"
    );
    assert_eq!(dead_letters(&p).len(), 1, "still kept");

    // `wsync dead-letters retry` re-sends it now, and removes it once delivered.
    let (code, stdout, stderr) = p.wsync(&["dead-letters", "retry", "people"], &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(fake.distinct_applied(), 4);
    assert!(dead_letters(&p).is_empty());
    let customers: Vec<String> = fake
        .batches()
        .iter()
        .map(|b| {
            b["user_identities"]["customer_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        customers.iter().filter(|c| *c == "h2").count(),
        1,
        "{customers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_deadline_secs_gives_up_on_a_failing_request() {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    for _ in 0..500 {
        fake.respond_with_status_once(503);
    }
    // Many attempts allowed, backoffs of up to 1 s: only the deadline stops it.
    let p = project(
        &fake,
        "retry_max_attempts = 100\nretry_initial_backoff_ms = 300\nretry_max_backoff_secs = 1\nretry_deadline_secs = 2",
        "",
    );
    let ctx = p.context().await;
    let started = Instant::now();
    let report = wsync::sync::run(&ctx, "people", RunKind::Manual)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(report.record.state, RunState::Failed);
    assert!(elapsed < Duration::from_secs(60), "{elapsed:?}");
    let attempts = fake.requests().len();
    assert!(
        (2..100).contains(&attempts),
        "stopped by the deadline, not by the attempts: {attempts}"
    );
    let error = report.record.error.unwrap_or_default();
    assert!(error.contains("503"), "{error}");
    assert_eq!(fake.distinct_applied(), 0);
    assert_eq!(ctx.state.watermark("people").await.unwrap(), None);
}

/// The most runs marked running at once while a daemon runs both pipelines
/// (both `once`, so both are due at its first pass).
async fn most_at_once(p: &TestProject) -> usize {
    let ctx = p.context().await;
    let daemon = Daemon::new(ctx.clone());
    daemon.tick().await.unwrap();
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = ctx.state.runs(None, 10, 0).await.unwrap();
        let running = runs.iter().filter(|r| r.state == RunState::Running).count();
        most = most.max(running);
        let done = runs.iter().filter(|r| r.state == RunState::Success).count();
        if done == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{runs:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    daemon.wait_idle().await;
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_runs_bounds_runs_in_flight() {
    for (limit, expected) in [(2, 2), (1, 1)] {
        let fake = FakeMparticle::start(KEY, SECRET).await;
        // Every request is slow, so both runs would overlap if allowed to.
        for _ in 0..8 {
            fake.push_fault(Fault::Slow {
                delay: Duration::from_millis(400),
            });
        }
        let p = project(
            &fake,
            &format!("\n[daemon]\nmax_concurrent_runs = {limit}"),
            "",
        );
        assert_eq!(
            most_at_once(&p).await,
            expected,
            "max_concurrent_runs = {limit}"
        );
        // Each pipeline sends the 4 rows under its own source_request_ids.
        assert_eq!(fake.distinct_applied(), 8);
    }
}
