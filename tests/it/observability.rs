//! What an operator sees from `wsync daemon --log-format json`: every line is a
//! JSON object, every line of a run carries its pipeline and run ids (lines of
//! delivery tasks included), and known secrets (database password, feed key
//! and secret, API token) appear nowhere: not in logs, stdout, the state store,
//! run files or Parquet exports.

use std::process::Command;
use std::time::{Duration, Instant};

use wsync::state::{RunState, StateStore};

use crate::support::child::Drained;
use crate::support::db;
use crate::support::fake_mparticle::FakeMparticle;
use crate::support::project::TestProject;

const KEY: &str = "obs-key-71d0";
const SECRET: &str = "obs-feed-secret-3a7d";
const DB_PASSWORD: &str = "obs-db-pw-8c1e";
const TOKEN: &str = "obs-api-token-6f2b";

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_run_ids_and_no_secret_leaks_anywhere() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("obs");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (customer_id text, email text, updated_at timestamptz);
         INSERT INTO {table} SELECT 'c' || i, 'u' || i || '@example.com',
           timestamptz '2026-01-01' + i * interval '1 second' FROM generate_series(1, 500) AS i;"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let fake = FakeMparticle::start(KEY, SECRET).await;
    // A 503 and a 429 make the delivery tasks log retries.
    fake.respond_with_status_once(503);
    fake.respond_with_status_once(429);
    // Trust auth on the test server ignores the password; it must still never show.
    let url = db::postgres_url().replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{DB_PASSWORD}@"),
        1,
    );
    assert!(url.contains(DB_PASSWORD), "test URL shape changed: {url}");
    let p = TestProject::new(&format!(
        r#"
[connections.pg]
type = "postgres"
url = "{url}"
chunk_rows = 100

[feeds.fake]
base_url = "{base}"
api_key = "{KEY}"
api_secret_env = "OBS_FEED_SECRET"
retry_initial_backoff_ms = 1
rate_limit_per_sec = 0

[daemon]
checkpoint_rows = 100
http_bind = "127.0.0.1:0"
http_token_env = "OBS_API_TOKEN"
"#,
        base = fake.base_url(),
    ));
    p.model(
        "m",
        &format!("SELECT customer_id, email, updated_at FROM {table}"),
    );
    p.pipeline(
        "obs",
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

[export]
datasets = ["rows", "batches"]
"#,
    );
    // Debug logs pass the pipe's buffer quickly: drained while it runs.
    let daemon = Drained::spawn(
        Command::new(env!("CARGO_BIN_EXE_wsync"))
            .arg("--config")
            .arg(p.root())
            .args(["--log-format", "json", "--log", "debug", "daemon"])
            .env("OBS_FEED_SECRET", SECRET)
            .env("OBS_API_TOKEN", TOKEN),
    );
    let store = StateStore::open(&format!(
        "sqlite://{}",
        p.root().join(".wsync/state.db").display()
    ))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = store.runs(Some("obs"), 1, 0).await.unwrap();
        if runs.first().is_some_and(|r| r.state == RunState::Success) {
            break;
        }
        assert!(Instant::now() < deadline, "no successful run: {runs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.signal(libc::SIGTERM);
    let (status, stdout, stderr) = daemon.wait();
    assert_eq!(status.code(), Some(0));
    assert_eq!(fake.distinct_applied(), 500);

    // Every line is JSON; every line inside a run names the pipeline and run.
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let in_run: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["span"]["name"] == "run")
        .collect();
    let messages: Vec<&str> = in_run
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    // (A pipeline with an export takes no checkpoints.)
    for expected in [
        "Run started.",
        "Events API request failed; retrying.",
        "Request acknowledged.",
        "Run finished.",
    ] {
        assert!(
            messages.contains(&expected),
            "{expected} missing: {messages:?}"
        );
    }
    assert!(
        in_run
            .iter()
            .any(|l| l["level"] == "WARN" || l["level"] == "DEBUG"),
        "delivery task lines (retries) are inside the run span: {messages:?}"
    );
    for line in &in_run {
        assert_eq!(line["span"]["pipeline"], "obs", "{line}");
        assert!(line["span"]["run_id"].is_number(), "{line}");
    }
    // Operator-level lines outside any run are the daemon's own (debug lines of
    // the drivers, e.g. the state store's statements, may stand outside).
    for line in lines
        .iter()
        .filter(|l| l["span"].is_null() && l["level"] != "DEBUG" && l["level"] != "TRACE")
    {
        let m = line["message"].as_str().unwrap_or("");
        assert!(
            [
                "Daemon started.",
                "Daemon registered in the state store.",
                "HTTP API listening.",
                "Next run planned.",
                "Shutting down: no new runs; in-flight requests get the grace period."
            ]
            .contains(&m),
            "a line outside a run: {line}"
        );
    }

    // No secret anywhere.
    let mut haystacks = vec![("stderr".to_owned(), stderr.into_bytes())];
    haystacks.push(("stdout".to_owned(), stdout.into_bytes()));
    drop(store);
    for file in files_under(p.root()) {
        if file.extension().is_some_and(|e| e == "toml") {
            continue; // the config itself holds the URL and key, as the user wrote it
        }
        haystacks.push((file.display().to_string(), std::fs::read(&file).unwrap()));
    }
    assert!(
        haystacks.iter().any(|(name, _)| name.ends_with(".parquet")),
        "exports were written"
    );
    for (name, bytes) in &haystacks {
        for secret in [SECRET, DB_PASSWORD, TOKEN, KEY] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} found in {name}"
            );
        }
    }
}
