//! The daemon's HTTP API against a running daemon (scheduler loop and axum
//! server in this process, a real PostgreSQL, the fake Events API): status
//! codes and shapes, the bearer token, a trigger refused while its pipeline
//! runs, pause and resume, and `/metrics` parsed as Prometheus would, its
//! counters checked against the run's recorded figures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use wsync::redact::Secret;
use wsync::scheduler::Daemon;

use crate::support::db;
use crate::support::fake_mparticle::{FakeMparticle, Fault};
use crate::support::project::TestProject;

const KEY: &str = "api-key";
const SECRET: &str = "api-secret-9b1f";
const TOKEN: &str = "api-token-5e8a1c";

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn call(&self, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            "POST" => self.client.post(&url),
            _ => self.client.get(&url),
        };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, Some(TOKEN)).await
    }

    async fn post(&self, path: &str) -> (u16, Value) {
        self.call("POST", path, Some(TOKEN)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_status_trigger_pause_and_metrics_against_a_running_daemon() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("api_people");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (customer_id text, email text, updated_at timestamptz);
         INSERT INTO {table} SELECT 'c' || i, CASE WHEN i % 50 = 0 THEN NULL ELSE 'u' || i || '@example.com' END,
           timestamptz '2026-01-01' + i * interval '1 second'
         FROM generate_series(1, 300) AS i;
         INSERT INTO {table} VALUES (NULL, NULL, '2026-01-02');"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let fake = FakeMparticle::start(KEY, SECRET).await;
    // The first requests are slow, so the run is still going when triggered again.
    for _ in 0..3 {
        fake.push_fault(Fault::Slow {
            delay: Duration::from_millis(300),
        });
    }
    let p = TestProject::new(&format!(
        r#"
[connections.pg]
type = "postgres"
url = "{url}"
chunk_rows = 100

[feeds.fake]
base_url = "{base}"
api_key = "{KEY}"
api_secret = "{SECRET}"
rate_limit_per_sec = 0
max_in_flight = 1

[daemon]
checkpoint_rows = 100
"#,
        url = db::postgres_url(),
        base = fake.base_url(),
    ));
    p.model(
        "m",
        &format!("SELECT customer_id, email, updated_at FROM {table}"),
    );
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
    let loop_task = tokio::spawn(daemon.clone().run());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = wsync::api::router(ctx.clone(), daemon.clone(), Some(Secret::new(TOKEN)));
    let server = tokio::spawn(wsync::api::serve(listener, router, ctx.shutdown.clone()));
    let api = Api {
        base,
        client: reqwest::Client::new(),
    };

    // Health needs no token; everything else does.
    assert_eq!(api.call("GET", "/health", None).await.0, 200);
    assert_eq!(
        api.call("GET", "/ready", None).await,
        (200, serde_json::json!({"status": "ready"}))
    );
    let (code, body) = api.call("GET", "/pipelines", None).await;
    assert_eq!(code, 401);
    assert_eq!(
        body["message"],
        "send the token from daemon.http_token_env as `Authorization: Bearer <token>`"
    );
    assert_eq!(api.call("GET", "/pipelines", Some("wrong")).await.0, 401);

    let (code, body) = api.get("/pipelines").await;
    assert_eq!(code, 200);
    assert_eq!(body["pipelines"][0]["pipeline_id"], "od");
    assert_eq!(body["pipelines"][0]["status"], "on demand");
    let (code, body) = api.get("/pipelines/nope/status").await;
    assert_eq!(code, 404);
    assert_eq!(
        body["message"],
        "no pipeline `nope` in schedules/ (pipelines: od)"
    );
    assert_eq!(api.get("/nowhere").await.0, 404);

    // Trigger; a second trigger while it runs is refused.
    let (code, body) = api.post("/pipelines/od/trigger").await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = api.post("/pipelines/od/trigger").await;
    assert_eq!(code, 409);
    assert_eq!(
        body["message"],
        "pipeline `od` is already in progress; wait for its run to finish"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (_, s) = api.get("/pipelines/od/status").await;
        if s["latest_pipeline_run"]["pipeline_run_state"] == "success" && s["running"] == false {
            break s;
        }
        assert!(Instant::now() < deadline, "run did not finish: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let run = &status["latest_pipeline_run"];
    assert_eq!(run["records_extracted"], 301);
    assert_eq!(run["batches_sent"], 300);
    assert_eq!(run["rows_rejected"], 1, "the row with no identity");
    assert_eq!(run["pipeline_run_type"], "manual");
    assert!(status["watermark"].is_string());
    assert!(status["watermark_lag_secs"].as_i64().unwrap() < 60);

    let (code, page) = api.get("/pipelines/od/runs?page=1&page_size=1").await;
    assert_eq!(code, 200);
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["pipeline_run_id"], run["pipeline_run_id"]);
    assert_eq!(api.get("/pipelines/od/runs?page_size=0").await.0, 400);

    // /metrics, parsed as Prometheus parses it, agrees with the run record.
    let response = api
        .client
        .get(format!("{}/metrics", api.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = response.text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("{name} {labels:?} not in\n{text}"));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    let od = [("pipeline", "od")];
    assert_eq!(
        value(
            "wsync_runs_total",
            &[("pipeline", "od"), ("state", "success")]
        ),
        1.0
    );
    assert_eq!(value("wsync_rows_extracted_total", &od), 301.0);
    assert_eq!(value("wsync_rows_sent_total", &od), 300.0);
    assert_eq!(value("wsync_rows_rejected_total", &od), 1.0);
    assert_eq!(value("wsync_batches_sent_total", &od), 300.0);
    assert_eq!(value("wsync_responses_429_total", &od), 0.0);
    let requests = run["requests"].as_f64().unwrap();
    assert_eq!(
        value(
            "wsync_requests_total",
            &[("feed", "fake"), ("status", "202")]
        ),
        requests
    );
    assert_eq!(
        value("wsync_request_duration_seconds_count", &[("feed", "fake")]),
        requests
    );
    assert!(value("wsync_watermark_lag_seconds", &od) < 60.0);
    let last_success = value("wsync_last_success_timestamp_seconds", &od);
    assert!(last_success > 1.7e9, "{last_success}");

    // Pause: the trigger is refused and the status says so; resume undoes it.
    let (code, body) = api.post("/pipelines/od/pause").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("paused")));
    let (code, body) = api.post("/pipelines/od/trigger").await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        body["message"],
        "pipeline `od` is paused; resume it first (`wsync resume od`)"
    );
    let (code, body) = api.post("/pipelines/od/resume").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("on demand")));

    // Shutdown: the loop ends, the server stops.
    ctx.shutdown.cancel();
    loop_task.await.unwrap().unwrap();
    server.await.unwrap().unwrap();
    let counts: HashMap<String, usize> = fake.batches().iter().fold(HashMap::new(), |mut m, b| {
        *m.entry(b["user_identities"]["customer_id"].to_string())
            .or_default() += 1;
        m
    });
    assert_eq!(counts.len(), 300);
    assert!(counts.values().all(|n| *n == 1));
}

/// The HTTP API with no token (issue 16 item 15): on loopback it serves local
/// users and the daemon warns at start-up; a non-loopback bind without a token
/// is refused as a config error (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_without_token_warns_on_loopback_and_refuses_other_binds() {
    use crate::support::child::Drained;
    let p = crate::cli::demo_project();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let base_toml = std::fs::read_to_string(repo.join("wsync.toml")).unwrap();
    p.file(
        "wsync.toml",
        &format!("{base_toml}\n[daemon]\nhttp_bind = \"0.0.0.0:0\"\n"),
    );
    let (code, _, stderr) = p.wsync(&["daemon"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("daemon.http_bind") && stderr.contains("has no token"),
        "{stderr}"
    );

    p.file(
        "wsync.toml",
        &format!("{base_toml}\n[daemon]\nhttp_bind = \"127.0.0.1:0\"\n"),
    );
    let daemon = Drained::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_wsync"))
            .arg("--config")
            .arg(p.root())
            .arg("daemon"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let address = loop {
        let stderr = daemon.stderr_so_far();
        if let Some(at) = stderr.find("address=") {
            let rest = &stderr[at + "address=".len()..];
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            if stderr.contains("HTTP API has no token") {
                break rest[..end].to_owned();
            }
        }
        assert!(Instant::now() < deadline, "no start-up lines: {stderr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stderr = daemon.stderr_so_far();
    assert!(
        stderr.contains("any local user can trigger, pause and resume pipelines"),
        "{stderr}"
    );
    // No token needed on loopback: the API acts for any local user.
    let api = Api {
        base: format!("http://{address}"),
        client: reqwest::Client::new(),
    };
    assert_eq!(api.call("GET", "/pipelines", None).await.0, 200);
    let (code, body) = api.call("POST", "/pipelines/demo_users/pause", None).await;
    assert_eq!(code, 200, "{body}");
    daemon.signal(libc::SIGTERM);
    let (status, _, stderr) = daemon.wait();
    assert_eq!(status.code(), Some(0), "{stderr}");
}
