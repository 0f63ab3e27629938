//! Input protection with profile resolvers, end to end on PostgreSQL: an
//! `only_update` run creates no profile and updates exactly the existing ones
//! (IDSync and SQL resolvers), an `only_read` forecast matches what
//! `create_and_update` then does, the IDSync key never leaks, IDSync failures
//! are retried, and `[resolver]` config errors name file, line and fix.

use std::sync::Arc;

use serde_json::{json, Value};
use wsync::state::RunState;

use crate::support::db;
use crate::support::fake_mparticle::FakeMparticle;
use crate::support::project::{read_jsonl, TestProject};

const FEED_KEY: &str = "protect-feed-key";
const FEED_SECRET: &str = "protect-feed-secret-51c2";
const PLATFORM_KEY: &str = "protect-platform-key";
const PLATFORM_SECRET: &str = "idsync-platform-secret-9f8e7d";

/// Seeded profiles: c1 known by customer id, b@x known by email only.
const MPID_C1: i64 = 111_111;
const MPID_B: i64 = 222_222;

/// Rows: two of existing profiles (one of them twice), two of new people, the
/// last of which appears twice with different values.
async fn create_people(pool: &sqlx::PgPool, table: &str) {
    sqlx::query(&format!(
        "CREATE TABLE {table} (n int, customer_id text, email text, plan text)"
    ))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(&format!(
        "INSERT INTO {table} VALUES
         (1, 'c1', 'a@x', 'gold'),
         (2, 'c2', 'b@x', 'silver'),
         (3, 'c3', 'c@x', 'bronze'),
         (4, 'c1', 'a@x', 'platinum'),
         (5, 'c4', 'd@x', 'tin'),
         (6, 'c4', 'd@x', 'lead')"
    ))
    .execute(pool)
    .await
    .unwrap();
}

fn seed(fake: &FakeMparticle) {
    fake.seed_profile(MPID_C1, &[("customer_id", "c1")], json!({"plan": "old"}));
    fake.seed_profile(MPID_B, &[("email", "b@x")], json!({"keep": true}));
}

/// The `[resolver]` section for `kind`.
fn resolver_toml(kind: &str, fake_url: &str) -> String {
    match kind {
        "idsync" => format!(
            "[resolver]\ntype = \"idsync\"\nbase_url = \"{fake_url}\"\napi_key_file = \"secrets/platform_key\"\napi_secret_file = \"secrets/platform_secret\"\nretry_max_attempts = 4\nretry_initial_backoff_ms = 1\nrate_limit_per_sec = 0\n"
        ),
        _ => "[resolver]\ntype = \"sql\"\ndata_model = \"known_profiles\"\n".to_owned(),
    }
}

fn pipeline_toml(protection: &str, resolver: &str) -> String {
    format!(
        "connection = \"pg\"\ndata_model = \"people\"\nfeed = \"fake\"\ninput_protection = \"{protection}\"\n\n{resolver}"
    )
}

fn project(table: &str, known: &str, fake: &FakeMparticle, platform_secret: &str) -> TestProject {
    let p = TestProject::new(&format!(
        r#"
[connections.pg]
type = "postgres"
url = "{url}"

[feeds.fake]
base_url = "{feed_url}"
api_key = "{FEED_KEY}"
api_secret = "{FEED_SECRET}"
retry_max_attempts = 2
retry_initial_backoff_ms = 1
rate_limit_per_sec = 0
"#,
        url = db::postgres_url(),
        feed_url = fake.base_url(),
    ));
    p.model(
        "people",
        &format!("SELECT customer_id, email, plan FROM {table} ORDER BY n"),
    );
    p.model(
        "known_profiles",
        &format!("SELECT customer_id, email FROM {known}"),
    );
    p.file("secrets/platform_key", &format!("{PLATFORM_KEY}\n"));
    p.file("secrets/platform_secret", &format!("{platform_secret}\n"));
    p
}

async fn known_profiles_table(pool: &sqlx::PgPool) -> String {
    // What mParticle's warehouse output would hold for the two seeded profiles.
    let known = db::unique_table("known");
    sqlx::query(&format!(
        "CREATE TABLE {known} (customer_id text, email text)"
    ))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(&format!(
        "INSERT INTO {known} VALUES ('c1', NULL), (NULL, 'b@x'), ('c99', 'gone@x')"
    ))
    .execute(pool)
    .await
    .unwrap();
    known
}

/// Checks shared by both resolvers after an only_update run of the people rows.
fn assert_only_existing_updated(fake: &FakeMparticle, report: &wsync::sync::RunReport) {
    assert_eq!(
        report.record.state,
        RunState::Success,
        "{:?}",
        report.record.error
    );
    assert_eq!(fake.profiles_created(), 0, "only_update created a profile");
    let profiles = fake.profiles();
    assert_eq!(profiles.len(), 2, "{profiles:?}");
    let c1 = fake.profile(MPID_C1).unwrap();
    assert_eq!(c1.updates, 2);
    assert_eq!(c1.attributes["plan"], "platinum", "the latest value wins");
    assert_eq!(c1.identities["email"], "a@x");
    let b = fake.profile(MPID_B).unwrap();
    assert_eq!(b.updates, 1);
    assert_eq!(b.attributes["plan"], "silver");
    assert_eq!(b.attributes["keep"], true);
    assert_eq!(b.identities["customer_id"], "c2");
    // Only the three rows of existing profiles went out.
    let sent: Vec<String> = fake
        .batches()
        .iter()
        .map(|b| {
            b["user_identities"]["customer_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(sent, ["c1", "c2", "c1"]);

    let protection = report.protection.as_ref().expect("protection summary");
    assert_eq!(protection.rows_checked, 6);
    assert_eq!(protection.rows_updated, 3);
    assert_eq!(protection.skipped_no_profile, 3);
    let skipped = read_jsonl(&report.files["skipped"]);
    let rows: Vec<u64> = skipped.iter().map(|l| l["row"].as_u64().unwrap()).collect();
    assert_eq!(rows, [3, 5, 6]);
    assert!(skipped.iter().all(|l| l["reason"] == "skipped_no_profile"));
    assert_eq!(
        skipped[0]["identities"],
        json!({"customer_id": "c3", "email": "c@x"})
    );
    let report_json: Value =
        serde_json::from_str(&std::fs::read_to_string(&report.files["report"]).unwrap()).unwrap();
    assert_eq!(report_json["protection"]["skipped_no_profile"], 3);
    assert_eq!(report_json["rows_sent_or_would_be_sent"], 3);
    assert_eq!(report_json["rows_rejected"], 0);
}

#[tokio::test]
async fn only_update_with_idsync_creates_nothing_and_updates_the_matching_profiles() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("protect_idsync");
    create_people(&pool, &table).await;
    let known = known_profiles_table(&pool).await;
    let fake = FakeMparticle::start(FEED_KEY, FEED_SECRET).await;
    fake.enable_idsync(PLATFORM_KEY, PLATFORM_SECRET);
    seed(&fake);
    let p = project(&table, &known, &fake, PLATFORM_SECRET);
    p.pipeline(
        "people",
        &pipeline_toml("only_update", &resolver_toml("idsync", &fake.base_url())),
    );
    let ctx = p.context().await;

    let report = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_only_existing_updated(&fake, &report);

    // Every batch sent carries the MPID IDSync found.
    let mpids: Vec<i64> = fake
        .batches()
        .iter()
        .map(|b| b["mpid"].as_i64().unwrap())
        .collect();
    assert_eq!(mpids, [MPID_C1, MPID_B, MPID_C1]);
    // One search per distinct identity set (rows 1 and 4, and 5 and 6, share
    // theirs), in IDSync's names, with the platform key.
    let searches = fake.searches();
    assert_eq!(searches.len(), 4, "{searches:?}");
    assert!(searches.iter().all(|s| s
        .known_identities
        .as_ref()
        .is_some_and(|k| k.get("customerid").is_some() && k.get("customer_id").is_none())));
    let protection = report.protection.as_ref().unwrap();
    assert_eq!(protection.searches, 4);
    assert_eq!(protection.mpids_added, 3);
    assert_eq!(
        protection.cache_hits, 0,
        "duplicates within one chunk are asked once"
    );
}

#[tokio::test]
async fn only_update_with_the_sql_resolver_creates_nothing_and_updates_the_matching_profiles() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("protect_sql");
    create_people(&pool, &table).await;
    let known = known_profiles_table(&pool).await;
    let fake = FakeMparticle::start(FEED_KEY, FEED_SECRET).await;
    seed(&fake);
    let p = project(&table, &known, &fake, PLATFORM_SECRET);
    p.pipeline(
        "people",
        &pipeline_toml("only_update", &resolver_toml("sql", "")),
    );
    let ctx = p.context().await;

    let report = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_only_existing_updated(&fake, &report);
    assert!(fake.searches().is_empty());
    assert!(fake.batches().iter().all(|b| b.get("mpid").is_none()));
    assert_eq!(report.protection.as_ref().unwrap().known_identities, 4);
}

#[tokio::test]
async fn only_read_forecast_equals_what_create_and_update_then_does() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    for kind in ["idsync", "sql"] {
        let table = db::unique_table("protect_forecast");
        create_people(&pool, &table).await;
        let known = known_profiles_table(&pool).await;
        let fake = FakeMparticle::start(FEED_KEY, FEED_SECRET).await;
        fake.enable_idsync(PLATFORM_KEY, PLATFORM_SECRET);
        seed(&fake);
        let p = project(&table, &known, &fake, PLATFORM_SECRET);
        let resolver = resolver_toml(kind, &fake.base_url());
        p.pipeline("people", &pipeline_toml("only_read", &resolver));
        let ctx = p.context().await;

        let dry = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
            .await
            .unwrap();
        assert_eq!(
            dry.record.state,
            RunState::Success,
            "{:?}",
            dry.record.error
        );
        assert!(fake.requests().is_empty(), "{kind}: a dry run sent batches");
        let forecast = dry.protection.clone().expect("forecast");
        // c1 twice, b@x, then c3 new, c4 new and c4 again (now known).
        assert_eq!(
            (forecast.would_update, forecast.would_create),
            (4, 2),
            "{kind}"
        );
        let report_json: Value =
            serde_json::from_str(&std::fs::read_to_string(&dry.files["report"]).unwrap()).unwrap();
        assert_eq!(report_json["protection"]["would_create"], 2, "{kind}");

        p.pipeline("people", &pipeline_toml("create_and_update", &resolver));
        let ctx = p.context().await;
        let real = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
            .await
            .unwrap();
        assert_eq!(
            real.record.state,
            RunState::Success,
            "{:?}",
            real.record.error
        );
        assert_eq!(
            fake.profiles_created() as u64,
            forecast.would_create,
            "{kind}"
        );
        assert_eq!(
            fake.profile_updates() as u64,
            forecast.would_update,
            "{kind}"
        );
        assert!(
            real.protection.is_none(),
            "create_and_update needs no lookups"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idsync_secret_never_appears_in_logs_errors_or_run_records() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("protect_secret");
    create_people(&pool, &table).await;
    let known = known_profiles_table(&pool).await;
    let fake = FakeMparticle::start(FEED_KEY, FEED_SECRET).await;
    fake.enable_idsync(PLATFORM_KEY, PLATFORM_SECRET);
    seed(&fake);

    // A good run through the binary, with debug logs.
    let p = Arc::new(project(&table, &known, &fake, PLATFORM_SECRET));
    p.pipeline(
        "people",
        &pipeline_toml("only_update", &resolver_toml("idsync", &fake.base_url())),
    );
    let runner = Arc::clone(&p);
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        runner.wsync(&["--log", "debug", "run", "people"], &[])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("skipped_no_profile"), "{stdout}");
    assert!(stdout.contains("only_update via idsync"), "{stdout}");
    let runner = Arc::clone(&p);
    let (code, validate, stderr) =
        tokio::task::spawn_blocking(move || runner.wsync(&["validate", "people"], &[]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{validate}\n{stderr}");
    assert!(
        validate.contains("protection: only_update: each row is looked up with idsync"),
        "{validate}"
    );
    let mut seen = format!("{stdout}{stderr}{validate}");

    // A run with the wrong secret fails before sending anything, saying which
    // keys to fix, and without echoing either secret.
    let wrong = "wrong-platform-secret-0a1b2c";
    p.file("secrets/platform_secret", wrong);
    let runner = Arc::clone(&p);
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        runner.wsync(&["--log", "debug", "run", "people"], &[])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("IDSync refused the resolver's credentials (HTTP 403)")
            && stdout.contains("resolver.api_secret"),
        "{stdout}"
    );
    let batches_before = fake.batches().len();
    assert_eq!(batches_before, 3, "the failed run sent nothing");
    seen.push_str(&stdout);
    seen.push_str(&stderr);

    // Run records, run files and reports.
    let ctx = p.context().await;
    for run in ctx.state.runs(Some("people"), 10, 0).await.unwrap() {
        seen.push_str(&format!("{run:?}"));
    }
    for entry in walk(&p.root().join(".wsync")) {
        if entry.extension().is_none_or(|e| e != "db") {
            seen.push_str(&std::fs::read_to_string(&entry).unwrap_or_default());
        } else {
            seen.push_str(&String::from_utf8_lossy(&std::fs::read(&entry).unwrap()));
        }
    }
    for secret in [PLATFORM_SECRET, wrong] {
        assert!(!seen.contains(secret), "`{secret}` leaked");
    }
    assert!(seen.contains("IDSync refused"), "the error was recorded");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn idsync_outages_are_retried_like_deliveries() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("protect_retry");
    create_people(&pool, &table).await;
    let known = known_profiles_table(&pool).await;
    let fake = FakeMparticle::start(FEED_KEY, FEED_SECRET).await;
    fake.enable_idsync(PLATFORM_KEY, PLATFORM_SECRET);
    seed(&fake);
    for status in [503, 429, 502] {
        fake.push_idsync_fault(status);
    }
    let p = project(&table, &known, &fake, PLATFORM_SECRET);
    p.pipeline(
        "people",
        &pipeline_toml("only_update", &resolver_toml("idsync", &fake.base_url())),
    );
    let ctx = p.context().await;
    let report = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_only_existing_updated(&fake, &report);
    let protection = report.protection.as_ref().unwrap();
    assert_eq!((protection.search_retries, protection.search_429), (2, 1));
    assert_eq!(
        protection.searches, 7,
        "4 identity sets + 3 answered by faults"
    );

    // Past the attempts, the run fails and sends nothing more.
    let fake2 = FakeMparticle::start(FEED_KEY, FEED_SECRET).await;
    fake2.enable_idsync(PLATFORM_KEY, PLATFORM_SECRET);
    // Four searches run at once, four attempts each: with 16 failures queued,
    // one of them is bound to exhaust its attempts.
    for _ in 0..16 {
        fake2.push_idsync_fault(503);
    }
    let p2 = project(&table, &known, &fake2, PLATFORM_SECRET);
    p2.pipeline(
        "people",
        &pipeline_toml("only_update", &resolver_toml("idsync", &fake2.base_url())),
    );
    let ctx2 = p2.context().await;
    let failed = wsync::sync::run(&ctx2, "people", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(failed.record.state, RunState::Failed);
    let error = failed.record.error.unwrap_or_default();
    assert!(
        error.contains("gave up on an IDSync search after 4 attempts"),
        "{error}"
    );
    assert!(fake2.batches().is_empty());
}

/// The config errors of a project with this pipeline file.
fn config_errors(pipeline: &str) -> String {
    let p = TestProject::new(
        "[connections.pg]\ntype = \"postgres\"\nurl = \"postgres://x@127.0.0.1/db\"\n\n[feeds.main]\npod = \"US1\"\napi_key = \"k\"\napi_secret = \"s\"\n",
    );
    p.model("people", "SELECT 1 AS customer_id");
    p.model("known", "SELECT 1 AS customer_id");
    p.pipeline("p", pipeline);
    match wsync::config::load(p.root()) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn resolver_config_errors_name_file_line_and_fix() {
    const HEAD: &str = "connection = \"pg\"\ndata_model = \"people\"\nfeed = \"main\"\ninput_protection = \"only_update\"\n";
    let text = config_errors(HEAD);
    assert!(
        text.contains("schedules/p.toml:4: input_protection: only_update needs a [resolver]"),
        "{text}"
    );

    let text = config_errors(&format!("{HEAD}\n[resolver]\ntype = \"idsink\"\n"));
    assert!(
        text.contains("schedules/p.toml:7: resolver.type: `idsink` is not a valid resolver type\n  hint: did you mean `idsync`?"),
        "{text}"
    );

    let text = config_errors(&format!(
        "{HEAD}\n[resolver]\ntype = \"sql\"\ndata_model = \"knwon\"\npod = \"US1\"\nconection = \"pg\"\n"
    ));
    for expected in [
        "schedules/p.toml:8: resolver.data_model: data model `knwon` not found\n  hint: did you mean `known`?",
        "schedules/p.toml:9: resolver.pod: `pod` is a setting of type = \"idsync\", not of type = \"sql\"",
        "schedules/p.toml:10: resolver.conection: unknown key `conection`\n  hint: did you mean `connection`?",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }

    let text = config_errors(&format!(
        "{HEAD}\n[resolver]\ntype = \"sql\"\ndata_model = \"people\"\n"
    ));
    assert!(
        text.contains("resolver.data_model: `people` is the pipeline's own model"),
        "{text}"
    );

    let text = config_errors(&format!(
        "{HEAD}\n[resolver]\ntype = \"idsync\"\npod = \"US1\"\nbase_url = \"http://x\"\napi_key_env = \"WSYNC_TEST_UNSET_PLATFORM_KEY\"\nmax_in_flight = 0\n"
    ));
    for expected in [
        "schedules/p.toml:9: resolver.base_url: `pod` and `base_url` are both set",
        "schedules/p.toml:6: resolver.api_secret: missing required key",
        "schedules/p.toml:11: resolver.max_in_flight: must be between 1 and 64, not 0",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }

    // Secrets are read from the environment, and a missing one is reported at
    // its key in the pipeline file, never with a value.
    let text = config_errors(&format!(
        "{HEAD}\n[resolver]\ntype = \"idsync\"\npod = \"EU1\"\napi_key_env = \"WSYNC_TEST_UNSET_PLATFORM_KEY\"\napi_secret = \"${{WSYNC_TEST_UNSET_PLATFORM_SECRET}}\"\n"
    ));
    for expected in [
        "schedules/p.toml:9: resolver.api_key_env: environment variable `WSYNC_TEST_UNSET_PLATFORM_KEY` is not set",
        "schedules/p.toml:10: resolver.api_secret: environment variable `WSYNC_TEST_UNSET_PLATFORM_SECRET` is not set",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert_eq!(text.matches("schedules/p.toml").count(), 2, "{text}");
}

#[tokio::test]
async fn the_fake_profile_store_and_idsync_search_behave_as_the_spec_says() {
    let fake = FakeMparticle::start(FEED_KEY, FEED_SECRET).await;
    fake.enable_idsync(PLATFORM_KEY, PLATFORM_SECRET);
    fake.seed_profile(7, &[("customer_id", "c1")], json!({"a": 1, "b": 2}));
    let http = reqwest::Client::new();
    let search = |auth: Option<(&str, &str)>, body: Value| {
        let mut request = http
            .post(format!("{}/v1/search", fake.base_url()))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some((k, s)) = auth {
            request = request.basic_auth(k, Some(s));
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    let platform = Some((PLATFORM_KEY, PLATFORM_SECRET));
    let body = |ids: Value| json!({"environment": "development", "known_identities": ids});

    assert_eq!(search(None, body(json!({"customerid": "c1"}))).await.0, 401);
    let feed_key = Some((FEED_KEY, FEED_SECRET));
    assert_eq!(
        search(feed_key, body(json!({"customerid": "c1"}))).await.0,
        403
    );
    let (status, answer) = search(platform, body(json!({"customer_id": "c1"}))).await;
    assert_eq!(status, 400, "Events API names are not IDSync's: {answer}");
    let (status, answer) = search(platform, body(json!({"customerid": "c1"}))).await;
    assert_eq!((status, &answer["mpid"]), (200, &json!("7")));
    let (status, answer) = search(platform, body(json!({"email": "nobody@x"}))).await;
    assert_eq!(status, 404);
    assert_eq!(answer["errors"][0]["code"], "NOT_FOUND");
    assert_eq!(fake.profiles_created(), 0, "search never creates");

    // Batches: resolve by identity, by mpid, or create; latest value wins; deletes remove.
    let batches = json!([
        {"source_request_id": "r1", "environment": "development",
         "user_identities": {"customer_id": "c1", "email": "a@x"},
         "user_attributes": {"a": 10}, "deleted_user_attributes": ["b"]},
        {"source_request_id": "r2", "environment": "development", "mpid": 7,
         "user_attributes": {"a": 11}},
        {"source_request_id": "r3", "environment": "development",
         "user_identities": {"email": "new@x"}, "user_attributes": {"a": 1}},
        // A re-sent id is applied once.
        {"source_request_id": "r3", "environment": "development",
         "user_identities": {"email": "new@x"}, "user_attributes": {"a": 1}},
    ]);
    let status = http
        .post(format!("{}/v2/bulkevents", fake.base_url()))
        .basic_auth(FEED_KEY, Some(FEED_SECRET))
        .header("content-type", "application/json")
        .body(batches.to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 202);
    let seeded = fake.profile(7).unwrap();
    assert_eq!(
        seeded.attributes,
        json!({"a": 11}).as_object().cloned().unwrap()
    );
    assert_eq!(seeded.identities["email"], "a@x");
    assert_eq!(seeded.updates, 2);
    assert_eq!(fake.profiles_created(), 1);
    let (status, answer) = search(platform, body(json!({"email": "new@x"}))).await;
    assert_eq!(status, 200);
    let created = fake
        .profile(answer["mpid"].as_str().unwrap().parse().unwrap())
        .unwrap();
    assert!(created.created_by_batch);
    assert_eq!(created.updates, 0);
}
