//! End to end on PostgreSQL: every supported type and the nasty values, through
//! mapping and delivery to the fake Events API, asserting the exact JSON received
//! and the exact rejected rows; then incremental windows, a failing request, and
//! wrong credentials.

use serde_json::json;
use wsync::state::RunState;

use crate::support::db;
use crate::support::fake_mparticle::FakeMparticle;
use crate::support::project::{read_jsonl, without_id, TestProject};

const KEY: &str = "pg-test-key";
const SECRET: &str = "pg-test-secret-7d3f9a";

fn project(table: &str, feed_url: &str, secret: &str) -> TestProject {
    let p = TestProject::new(&format!(
        r#"
[connections.pg]
type = "postgres"
url = "{url}"

[feeds.fake]
base_url = "{feed_url}"
api_key = "{KEY}"
api_secret = "{secret}"
# Fast failures for the tests: two attempts, a millisecond of backoff, no pacing.
retry_max_attempts = 2
retry_initial_backoff_ms = 1
rate_limit_per_sec = 0
"#,
        url = db::postgres_url(),
    ));
    p.model(
        "people",
        &format!(
            "SELECT customer_id, email, i2, i4, i8, f4, f8, num, num_s, flag, name, vc, ch, data, d, tm, ts, tstz, u, j, jb, tags, ints, updated_at\nFROM {table} -- trailing comment"
        ),
    );
    p.pipeline(
        "people",
        r#"
connection = "pg"
data_model = "people"
feed = "fake"

[sync_mode]
type = "incremental"
iterator_field = "updated_at"
iterator_data_type = "timestamp_tz"
"#,
    );
    p
}

async fn create_table(pool: &sqlx::PgPool, table: &str) {
    sqlx::query(&format!(
        "CREATE TABLE {table} (
            customer_id text, email text, i2 smallint, i4 integer, i8 bigint, f4 real,
            f8 double precision, num numeric, num_s numeric(12,2), flag boolean, name text,
            vc varchar(10), ch char(3), data bytea, d date, tm time, ts timestamp,
            tstz timestamptz, u uuid, j json, jb jsonb, tags text[], ints int4[],
            updated_at timestamptz NOT NULL)"
    ))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(&format!(
        "INSERT INTO {table} VALUES
         ('c1', 'ünï-🎉@example.com', -32768, 2147483647, 9007199254740993, 1.1, 'NaN',
          12345678901234567890.123456789, 12.50, true, E'quote \" and '' newline\\n tab\\t',
          'short', 'ab', '\\x00ff', '2024-02-29', '12:34:56.789', '2024-05-01 12:30:00',
          '2024-05-01 12:30:00.123456+02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
          '{{\"b\": 1, \"a\": [1,2]}}', '{{\"b\": 1, \"a\": [1, 2]}}',
          (SELECT array_agg('t' || g) FROM generate_series(1, 1500) g), '{{1,NULL,3}}',
          now() - interval '3 hours'),
         ('c2', NULL, NULL, NULL, -9007199254740992, NULL, 'Infinity', 'NaN', NULL, NULL,
          repeat('x', 5000), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
          NULL, now() - interval '2 hours'),
         (NULL, NULL, 7, NULL, NULL, NULL, '-Infinity', NULL, NULL, false, 'no identity', NULL,
          NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
          now() - interval '1 hour')"
    ))
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn every_type_and_nasty_value_reaches_the_fake_exactly() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("sync_pg");
    create_table(&pool, &table).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(&table, &fake.base_url(), SECRET);
    let ctx = p.context().await;

    let report = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(
        report.record.state,
        RunState::Success,
        "{:?}",
        report.record.error
    );

    let batches = fake.batches();
    assert_eq!(batches.len(), 2);
    let tags: Vec<String> = (1..=1000).map(|i| format!("t{i}")).collect();
    assert_eq!(
        without_id(&batches[0]),
        json!({
            "environment": "development",
            "user_identities": {"customer_id": "c1", "email": "ünï-🎉@example.com"},
            "user_attributes": {
                "i2": -32768,
                "i4": 2147483647,
                "i8": "9007199254740993",
                "f4": 1.1,
                "num": "12345678901234567890.123456789",
                "num_s": 12.5,
                "flag": true,
                "name": "quote \" and ' newline\n tab\t",
                "vc": "short",
                "ch": "ab ",
                "data": "AP8=",
                "d": "2024-02-29",
                "tm": "12:34:56.789000",
                "ts": "2024-05-01T12:30:00Z",
                "tstz": "2024-05-01T10:30:00.123456Z",
                "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                "j": "{\"b\":1,\"a\":[1,2]}",
                "jb": "{\"a\":[1,2],\"b\":1}",
                "tags": tags,
                "ints": ["1", "3"]
            }
        })
    );
    assert_eq!(
        without_id(&batches[1]),
        json!({
            "environment": "development",
            "user_identities": {"customer_id": "c2"},
            "user_attributes": {"i8": -9007199254740992_i64, "name": "x".repeat(4096)}
        })
    );

    // One request, accepted; the counters match what the fake saw.
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].status, 202);
    let c = &report.record.counts;
    assert_eq!(
        (
            c.records_extracted,
            c.records_mapped,
            c.event_batches_generated,
            c.batches_sent,
            c.rows_rejected
        ),
        (3, 2, 2, 2, 1)
    );
    assert_eq!(
        report.stats.values_dropped.get("non_finite_number"),
        Some(&3)
    );
    assert_eq!(report.stats.values_dropped.get("list_null_entry"), Some(&1));
    assert_eq!(report.stats.values_truncated.get("list_too_long"), Some(&1));
    assert_eq!(
        report.stats.values_truncated.get("value_too_long"),
        Some(&1)
    );

    // The rejected row is kept with its reason and its values.
    let rejected = read_jsonl(&report.files["rejected"]);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["row"], 3);
    assert_eq!(rejected[0]["reason"], "no_identity");
    assert_eq!(rejected[0]["values"]["i2"], 7);
    assert_eq!(rejected[0]["values"]["name"], "no identity");
    assert_eq!(
        rejected[0]["values"]["customer_id"],
        serde_json::Value::Null
    );

    assert_eq!(
        ctx.state.count_dead_letters("people").await.unwrap(),
        (0, 1)
    );

    // The watermark moved to the run's window end.
    let watermark = ctx.state.watermark("people").await.unwrap();
    assert_eq!(watermark, report.record.data_interval_end);
    assert!(watermark.is_some());
}

#[tokio::test]
async fn incremental_runs_send_only_new_rows_and_failures_keep_the_watermark() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("sync_pg_inc");
    create_table(&pool, &table).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(&table, &fake.base_url(), SECRET);
    let ctx = p.context().await;

    let first = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(first.record.state, RunState::Success);
    assert_eq!(fake.batches().len(), 2);
    let watermark = ctx.state.watermark("people").await.unwrap();

    // Nothing new: an empty window, nothing sent, watermark moves on.
    let second = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(second.record.counts.records_extracted, 0);
    assert_eq!(fake.batches().len(), 2);
    assert_eq!(second.record.data_interval_start, watermark);

    // A new row, and a server that keeps failing: once retries are exhausted the
    // run fails and the watermark stays.
    sqlx::query(&format!(
        "INSERT INTO {table} (customer_id, name, updated_at) VALUES ('c9', 'new', now())"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let before = ctx.state.watermark("people").await.unwrap();
    fake.respond_with_status_once(503);
    fake.respond_with_status_once(503);
    let failed = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(failed.record.state, RunState::Failed);
    assert_eq!(failed.record.counts.responses_5xx, 2);
    assert_eq!(failed.record.counts.retries, 1);
    let error = failed.record.error.clone().unwrap();
    assert!(
        error.contains("HTTP 503") && error.contains("feed `fake`"),
        "{error}"
    );
    assert_eq!(ctx.state.watermark("people").await.unwrap(), before);

    // The next run sends the row that failed.
    let retry = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(retry.record.state, RunState::Success);
    let batches = fake.batches();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[2]["user_identities"]["customer_id"], "c9");
    assert_eq!(batches[2]["user_attributes"]["name"], "new");
}

// Multi-threaded: the fake must keep serving while this thread waits on the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_fails_the_run_without_leaking_it() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("sync_pg_auth");
    create_table(&pool, &table).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let wrong = "wrong-secret-0451";
    let p = project(&table, &fake.base_url(), wrong);
    let ctx = p.context().await;

    let report = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(report.record.state, RunState::Failed);
    let error = report.record.error.unwrap();
    assert!(
        error.contains("feed `fake`") && error.contains("api_key or api_secret is wrong"),
        "{error}"
    );
    assert!(!error.contains(wrong));
    assert!(fake.batches().is_empty());
    assert_eq!(ctx.state.watermark("people").await.unwrap(), None);

    // Through the binary: exit 1, and the secret appears nowhere in its output.
    let (code, stdout, stderr) = p.wsync(&["--log", "debug", "run", "people"], &[]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains("failed"), "{stdout}");
    assert!(
        stdout.contains("api_key or api_secret is wrong"),
        "{stdout}"
    );
    assert!(!stdout.contains(wrong) && !stderr.contains(wrong));
}

#[tokio::test]
async fn an_only_read_report_matches_the_real_run_that_follows() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("sync_pg_dry");
    create_table(&pool, &table).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(&table, &fake.base_url(), SECRET);
    p.pipeline(
        "people_dry",
        r#"
connection = "pg"
data_model = "people"
input_protection = "only_read"
write_batches = true

[sync_mode]
type = "incremental"
iterator_field = "updated_at"
iterator_data_type = "timestamp_tz"
"#,
    );
    let ctx = p.context().await;
    // Some content a dry run could disturb.
    ctx.state
        .set_paused("elsewhere", true, chrono::Utc::now())
        .await
        .unwrap();
    // The database file and its write-ahead log, byte for byte.
    let store_bytes = || {
        ["state.db", "state.db-wal"]
            .map(|f| std::fs::read(p.root().join(".wsync").join(f)).unwrap_or_default())
    };
    let store_before = store_bytes();

    let dry = wsync::sync::run(&ctx, "people_dry", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(dry.record.state, RunState::Success);
    assert!(dry.record.dry_run);
    assert!(
        store_bytes() == store_before,
        "a dry run leaves the state store byte for byte unchanged"
    );
    assert_eq!(dry.record.id, 0, "no run record");
    let report_file = dry.files["report"].clone();
    assert!(
        report_file
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("dry-"),
        "{}",
        report_file.display()
    );
    assert!(fake.requests().is_empty(), "a dry run sends nothing");
    assert_eq!(
        ctx.state.watermark("people_dry").await.unwrap(),
        None,
        "and moves nothing"
    );
    assert_eq!(
        ctx.state.count_dead_letters("people_dry").await.unwrap(),
        (0, 0)
    );
    let would_be = read_jsonl(&dry.files["batches"]);

    let real = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(real.record.state, RunState::Success);
    let (d, r) = (&dry.record.counts, &real.record.counts);
    assert_eq!(
        (
            d.records_extracted,
            d.records_mapped,
            d.event_batches_generated,
            d.rows_rejected
        ),
        (
            r.records_extracted,
            r.records_mapped,
            r.event_batches_generated,
            r.rows_rejected
        )
    );
    assert_eq!(
        (dry.requests, dry.request_bytes),
        (real.requests, real.request_bytes)
    );
    assert_eq!(dry.stats.values_dropped, real.stats.values_dropped);
    assert_eq!(dry.stats.values_truncated, real.stats.values_truncated);
    assert_eq!(dry.stats.columns, real.stats.columns);
    assert_eq!(r.batches_sent, d.event_batches_generated);

    // The would-be batches are the batches the fake then received, apart from the
    // pipeline id that goes into source_request_id.
    let received: Vec<_> = fake.batches().iter().map(without_id).collect();
    let predicted: Vec<_> = would_be.iter().map(without_id).collect();
    assert_eq!(predicted, received);

    // The report file carries the per-column figures.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dry.files["report"]).unwrap()).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["rows_read"], 3);
    assert_eq!(report["rejected_by_reason"]["no_identity"]["count"], 1);
    assert_eq!(
        report["rejected_by_reason"]["no_identity"]["samples"][0]["row"],
        3
    );
    let name = report["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["column"] == "name")
        .unwrap();
    assert_eq!(name["longest_chars"], 5000);
    assert_eq!(name["truncated"], 1);
    assert_eq!(name["destination"], "user_attributes.name");
}

#[tokio::test]
async fn a_poison_batch_is_dead_lettered_and_every_good_batch_delivered() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("sync_pg_poison");
    sqlx::query(&format!(
        "CREATE TABLE {table} (customer_id text, poison boolean, updated_at timestamptz NOT NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(&format!(
        "INSERT INTO {table} SELECT 'p' || g, g = 150, now() - interval '1 hour' FROM generate_series(1, 250) g"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let fake = FakeMparticle::start(KEY, SECRET).await;
    fake.set_poison_rule(true);
    let p = project(&table, &fake.base_url(), SECRET);
    p.model(
        "people",
        &format!("SELECT customer_id, poison, updated_at FROM {table}"),
    );
    let ctx = p.context().await;

    // A transient 503 on the way is retried, not fatal.
    fake.respond_with_status_once(503);
    let report = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(
        report.record.state,
        RunState::Success,
        "{:?}",
        report.record.error
    );
    let c = &report.record.counts;
    assert_eq!(
        (
            c.records_extracted,
            c.event_batches_generated,
            c.batches_sent
        ),
        (250, 250, 249)
    );
    assert_eq!((c.responses_5xx, c.retries, c.dead_letters), (1, 1, 1));
    let ids: std::collections::HashSet<String> = fake
        .batches()
        .iter()
        .map(|b| {
            b["user_identities"]["customer_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 249);
    assert!(!ids.contains("p150"));

    let letters = ctx.state.dead_letters("people", None, 10, 0).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "http_400");
    assert!(
        letters[0].payload.contains("\"p150\""),
        "{}",
        letters[0].payload
    );
    assert!(
        letters[0]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("poison"),
        "{:?}",
        letters[0].message
    );

    // `wsync dead-letters retry`: still refused, so kept with one more attempt.
    let (delivered, refused) = wsync::sync::retry_dead_letters_now(&ctx, "people")
        .await
        .unwrap();
    assert_eq!((delivered, refused), (0, 1));
    let letters = ctx.state.dead_letters("people", None, 10, 0).await.unwrap();
    assert_eq!(letters[0].attempts, 2);

    // The next run re-sends it first; once the server accepts it, it is gone.
    fake.set_poison_rule(false);
    let next = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(next.record.state, RunState::Success);
    assert_eq!(next.record.counts.batches_sent, 1);
    assert_eq!(
        ctx.state.count_dead_letters("people").await.unwrap(),
        (0, 0)
    );
    assert!(fake
        .batches()
        .iter()
        .any(|b| b["user_identities"]["customer_id"] == "p150"));
}

/// The delivery issue's headline, through the whole engine: a 50,000-row sync
/// against a fake answering 10 % 429, 5 % 503 and dropping 2 % of connections
/// after applying them delivers every good row, applies each once, and
/// dead-letters exactly the poison rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50k_row_sync_survives_a_fault_storm() {
    use crate::support::fake_mparticle::FaultMix;

    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("sync_pg_storm");
    sqlx::query(&format!(
        "CREATE TABLE {table} AS SELECT 'u' || g AS customer_id, g % 997 = 0 AS poison, \
         g AS score, now() - interval '1 hour' AS updated_at FROM generate_series(1, 50000) g"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let fake = FakeMparticle::start(KEY, SECRET).await;
    fake.set_poison_rule(true);
    fake.set_fault_mix(Some(FaultMix {
        seed: 42,
        rate_limited: 0.10,
        retry_after_secs: None,
        unavailable: 0.05,
        dropped_after_apply: 0.02,
    }));
    let p = TestProject::new(&format!(
        r#"
[connections.pg]
type = "postgres"
url = "{url}"

[feeds.fake]
base_url = "{base}"
api_key = "{KEY}"
api_secret = "{SECRET}"
rate_limit_per_sec = 0
max_in_flight = 8
retry_max_attempts = 20
retry_initial_backoff_ms = 1
retry_max_backoff_secs = 1
request_timeout_secs = 5
"#,
        url = db::postgres_url(),
        base = fake.base_url(),
    ));
    p.model(
        "people",
        &format!("SELECT customer_id, poison, score, updated_at FROM {table}"),
    );
    p.pipeline(
        "people",
        "connection = \"pg\"\ndata_model = \"people\"\nfeed = \"fake\"\n\n[sync_mode]\ntype = \"incremental\"\niterator_field = \"updated_at\"\niterator_data_type = \"timestamp_tz\"\n",
    );
    let ctx = p.context().await;
    let report = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(
        report.record.state,
        RunState::Success,
        "{:?}",
        report.record.error
    );

    let poison = 50_000 / 997;
    let c = &report.record.counts;
    assert_eq!(c.records_extracted, 50_000);
    assert_eq!(c.batches_sent, 50_000 - poison);
    assert_eq!(c.dead_letters, poison);
    assert!(
        c.responses_429 > 0 && c.responses_5xx > 0 && c.retries > 0,
        "{c:?}"
    );
    // Every good row applied, each once (re-sent batches keep their id).
    assert_eq!(
        fake.distinct_applied(),
        usize::try_from(50_000 - poison).unwrap()
    );
    let letters = ctx
        .state
        .dead_letters("people", None, 1000, 0)
        .await
        .unwrap();
    assert_eq!(letters.len(), usize::try_from(poison).unwrap());
    assert!(letters
        .iter()
        .all(|l| l.reason == "http_400" && l.payload.contains("\"poison\":true")));
    assert!(ctx.state.watermark("people").await.unwrap().is_some());
}
