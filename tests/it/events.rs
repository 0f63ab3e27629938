//! Event pipelines end to end on PostgreSQL: custom and commerce events
//! grouped into each user's batch, historical routing by age, stable
//! `source_message_id`s across re-sends, data plan violations counted in a dry
//! run, a plan that blocks; and the fake's event checks.

use serde_json::{json, Value};
use wsync::state::RunState;

use crate::support::db;
use crate::support::fake_mparticle::{
    validate_batch, validate_historical, Endpoint, FakeMparticle,
};
use crate::support::project::TestProject;

const KEY: &str = "events-key";
const SECRET: &str = "events-secret-51c";

fn project(feed_url: &str) -> TestProject {
    TestProject::new(&format!(
        r#"
[connections.pg]
type = "postgres"
url = "{url}"

[feeds.fake]
base_url = "{feed_url}"
api_key = "{KEY}"
api_secret = "{SECRET}"
retry_max_attempts = 2
retry_initial_backoff_ms = 1
rate_limit_per_sec = 0
"#,
        url = db::postgres_url(),
    ))
}

/// `app_events`: two users' custom events, one row without identity; the
/// event ages in days are given per row.
async fn custom_events_table(pool: &sqlx::PgPool, ages_days: [i64; 4]) -> String {
    let table = db::unique_table("events_custom");
    sqlx::query(&format!(
        "CREATE TABLE {table} (customer_id text, email text, event_name text,
            custom_event_type text, occurred_at timestamptz NOT NULL, plan text, seats int)"
    ))
    .execute(pool)
    .await
    .unwrap();
    let [a, b, c, d] = ages_days;
    sqlx::query(&format!(
        "INSERT INTO {table} VALUES
         ('u1', 'u1@x', 'Renewal', 'transaction', now() - interval '{a} days', 'gold', 3),
         ('u2', NULL, 'Login', 'navigation', now() - interval '{b} days', NULL, NULL),
         ('u1', 'u1@x', 'Login', 'navigation', now() - interval '{c} days', 'gold', NULL),
         (NULL, NULL, 'Login', 'navigation', now() - interval '{d} days', NULL, NULL)"
    ))
    .execute(pool)
    .await
    .unwrap();
    table
}

fn custom_pipeline(p: &TestProject, table: &str, protection: &str, extra: &str) {
    p.model(
        "app_events",
        &format!(
            "SELECT customer_id, email, event_name, custom_event_type, occurred_at AS event_timestamp, plan, seats, occurred_at FROM {table}"
        ),
    );
    p.pipeline(
        "app_events",
        &format!(
            r#"
connection = "pg"
data_model = "app_events"
feed = "fake"
pipeline_type = "events"
input_protection = "{protection}"
{extra}

[sync_mode]
type = "incremental"
iterator_field = "occurred_at"
iterator_data_type = "timestamp_tz"
"#
        ),
    );
}

fn report_json(report: &wsync::sync::RunReport) -> Value {
    serde_json::from_str(&std::fs::read_to_string(&report.files["report"]).unwrap()).unwrap()
}

#[tokio::test]
async fn custom_events_go_into_each_users_batch() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = custom_events_table(&pool, [1, 1, 2, 1]).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(&fake.base_url());
    custom_pipeline(&p, &table, "create_and_update", "");
    let ctx = p.context().await;
    let report = wsync::sync::run(&ctx, "app_events", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(
        report.record.state,
        RunState::Success,
        "{:?}",
        report.record.error
    );

    let batches = fake.batches();
    assert_eq!(batches.len(), 2, "{batches:#?}");
    let u1 = &batches[0];
    assert_eq!(
        u1["user_identities"],
        json!({"customer_id": "u1", "email": "u1@x"})
    );
    let events = u1["events"].as_array().unwrap();
    // Event time order (incremental windows are read by the iterator): u1's
    // older Login first, then the Renewal.
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["data"]["event_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Login", "Renewal"]);
    let renewal = &events[1];
    assert_eq!(renewal["event_type"], "custom_event");
    assert_eq!(renewal["data"]["custom_event_type"], "transaction");
    assert_eq!(
        renewal["data"]["custom_attributes"],
        json!({"plan": "gold", "seats": 3})
    );
    let ms = renewal["data"]["timestamp_unixtime_ms"].as_i64().unwrap();
    let stored: i64 = sqlx::query_scalar(&format!(
        "SELECT floor(extract(epoch FROM occurred_at) * 1000)::int8 FROM {table} WHERE event_name = 'Renewal'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(ms, stored, "exact to the millisecond");
    assert!(batches[1]["user_identities"]["customer_id"] == "u2");
    assert!(batches.iter().all(|b| b.get("user_attributes").is_none()));

    let r = report_json(&report);
    assert_eq!(r["rows_rejected"], 1);
    assert_eq!(r["rejected_by_reason"]["no_identity"]["count"], 1);
    assert_eq!(r["batches"], 2);
    assert_eq!(r["events"]["bulkevents"]["events"], 3);
    assert_eq!(r["events"]["historical"]["events"], 0);
    assert!(fake.requests().iter().all(|q| q.endpoint == Endpoint::Bulk));
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains(r#"wsync_events_total{pipeline="app_events",endpoint="bulkevents"} 3"#),
        "{metrics}"
    );
    let status = wsync::scheduler::status::pipeline_status(
        &ctx.state,
        &ctx.project.state.spool_dir,
        ctx.pipeline("app_events").unwrap(),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(status.to_json()["pipeline_type"], "events");
}

#[tokio::test]
async fn commerce_events_send_the_purchase() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("events_purchases");
    sqlx::query(&format!(
        "CREATE TABLE {table} (customer_id text, order_id text, revenue numeric(10,2),
            currency text, items jsonb, ordered_at timestamptz NOT NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(&format!(
        "INSERT INTO {table} VALUES
         ('c1', 'o-1', 59.90, 'EUR', '[{{\"id\": \"sku-1\", \"name\": \"Hat\", \"price\": 29.95, \"quantity\": 2}}]', now() - interval '1 day'),
         ('c1', 'o-2', 10.00, 'EUR', '[]', now() - interval '2 hours'),
         ('c2', 'o-3', 5.50, 'USD', '[{{\"id\": 7}}]', now() - interval '1 hour')"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(&fake.base_url());
    p.model(
        "purchases",
        &format!(
            "SELECT customer_id, 'commerce_event' AS event_type, 'purchase' AS product_action,
                    order_id AS transaction_id, revenue, currency AS currency_code,
                    items AS products, ordered_at AS event_timestamp, ordered_at
             FROM {table}"
        ),
    );
    p.pipeline(
        "purchases",
        r#"
connection = "pg"
data_model = "purchases"
feed = "fake"
pipeline_type = "events"
data_plan = { plan_id = "commerce_plan", plan_version = 3 }

[sync_mode]
type = "incremental"
iterator_field = "ordered_at"
iterator_data_type = "timestamp_tz"
"#,
    );
    let ctx = p.context().await;
    let report = wsync::sync::run(&ctx, "purchases", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(
        report.record.state,
        RunState::Success,
        "{:?}",
        report.record.error
    );
    let batches = fake.batches();
    assert_eq!(batches.len(), 1, "{batches:#?}");
    let c1 = &batches[0];
    assert_eq!(
        c1["context"],
        json!({"data_plan": {"plan_id": "commerce_plan", "plan_version": 3}})
    );
    let events = c1["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event_type"], "commerce_event");
    assert_eq!(events[0]["data"]["currency_code"], "EUR");
    assert_eq!(
        events[0]["data"]["product_action"],
        json!({"action": "purchase", "transaction_id": "o-1", "total_amount": 59.9,
               "products": [{"id": "sku-1", "name": "Hat", "price": 29.95, "quantity": 2}]})
    );
    // c2's product id is a number: the schema's Product.id is a string.
    let r = report_json(&report);
    assert_eq!(r["rejected_by_reason"]["invalid_event"]["count"], 1);
    let sample = r["rejected_by_reason"]["invalid_event"]["samples"][0]["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(sample.contains("products[0].id"), "{sample}");
}

#[tokio::test]
async fn old_events_go_to_the_historical_endpoint() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    // u1: 45 and 2 days old; u2: 40 days old.
    let table = custom_events_table(&pool, [45, 40, 2, 1]).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(&fake.base_url());
    custom_pipeline(
        &p,
        &table,
        "create_and_update",
        "[export]\npath = \"exports/{run_id}/{dataset}.parquet\"\ndatasets = [\"batches\"]\n",
    );
    let ctx = p.context().await;
    let report = wsync::sync::run(&ctx, "app_events", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(
        report.record.state,
        RunState::Success,
        "{:?}",
        report.record.error
    );
    let requests = fake.requests();
    let historical: usize = requests
        .iter()
        .filter(|q| q.endpoint == Endpoint::Historical)
        .map(|q| q.batch_count)
        .sum();
    let recent: usize = requests
        .iter()
        .filter(|q| q.endpoint == Endpoint::Bulk)
        .map(|q| q.batch_count)
        .sum();
    assert_eq!((historical, recent), (2, 1), "{requests:#?}");
    assert!(requests.iter().all(|q| q.status == 202));
    let r = report_json(&report);
    assert_eq!(
        r["events"],
        json!({
            "bulkevents": {"events": 1, "batches": 1, "requests": 1},
            "historical": {"events": 2, "batches": 2, "requests": 1},
        })
    );

    // The `batches` export has each batch's endpoint and events.
    let path = p
        .root()
        .join(format!("exports/{}/batches.parquet", report.record.id));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&path).unwrap(),
    )
    .unwrap();
    let parts: Vec<_> = reader.build().unwrap().map(|b| b.unwrap()).collect();
    let data = arrow::compute::concat_batches(&parts[0].schema(), &parts).unwrap();
    let column = |name: &str| data.column_by_name(name).unwrap().clone();
    let historical: Vec<Option<bool>> = column("historical")
        .as_any()
        .downcast_ref::<arrow::array::BooleanArray>()
        .unwrap()
        .iter()
        .collect();
    // Incremental windows are read in iterator (event time) order: u1's old
    // Renewal, u2's Login, then u1's recent Login.
    assert_eq!(historical, [Some(true), Some(true), Some(false)]);
    let counts: Vec<Option<u32>> = column("event_count")
        .as_any()
        .downcast_ref::<arrow::array::UInt32Array>()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(counts, [Some(1), Some(1), Some(1)]);
    let events = column("events");
    let events = events
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    let first: Value = serde_json::from_str(events.value(0)).unwrap();
    assert_eq!(first[0]["data"]["event_name"], "Renewal");
    assert!(data.column_by_name("user_identities.customer_id").is_some());
}

#[tokio::test]
async fn source_message_ids_are_stable_across_resends() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = custom_events_table(&pool, [3, 2, 1, 1]).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(&fake.base_url());
    custom_pipeline(&p, &table, "create_and_update", "");
    let ctx = p.context().await;
    let ids = |batches: &[Value]| -> Vec<String> {
        batches
            .iter()
            .flat_map(|b| b["events"].as_array().unwrap().clone())
            .map(|e| e["data"]["source_message_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = wsync::sync::run(&ctx, "app_events", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(first.record.state, RunState::Success);
    let sent = fake.batches();
    // The same window again (a backfill re-sends it without moving the watermark).
    let again = wsync::sync::run(
        &ctx,
        "app_events",
        wsync::sync::RunKind::Backfill {
            from: "2000-01-01T00:00:00Z".into(),
            until: "2100-01-01T00:00:00Z".into(),
            chunk: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        again.record.state,
        RunState::Success,
        "{:?}",
        again.record.error
    );
    let all = fake.batches();
    assert_eq!(all.len(), 2 * sent.len());
    assert_eq!(ids(&sent), ids(&all[sent.len()..]));
    assert_eq!(sent, all[sent.len()..].to_vec(), "byte-identical batches");
    assert_eq!(fake.duplicates(), sent.len());
}

#[tokio::test]
async fn a_failed_run_resumes_its_spool_with_the_same_event_batches() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = custom_events_table(&pool, [45, 40, 2, 1]).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(&fake.base_url());
    custom_pipeline(&p, &table, "create_and_update", "");
    let ctx = p.context().await;
    // The first request is refused: the run fails with its spool complete.
    fake.respond_with_status_once(401);
    let failed = wsync::sync::run(&ctx, "app_events", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(failed.record.state, RunState::Failed);
    assert!(failed.spool.as_ref().unwrap().kept);
    let resumed = wsync::sync::run(&ctx, "app_events", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(
        resumed.record.state,
        RunState::Success,
        "{:?}",
        resumed.record.error
    );
    assert_eq!(
        resumed.spool.as_ref().unwrap().resumed_from,
        Some(failed.record.id)
    );
    // Every batch arrived once, historical ones on the historical endpoint.
    assert_eq!(fake.distinct_applied(), 3);
    let accepted = |endpoint: Endpoint| -> usize {
        fake.requests()
            .iter()
            .filter(|q| q.endpoint == endpoint && q.status == 202)
            .map(|q| q.batch_count)
            .sum()
    };
    let total = accepted(Endpoint::Historical) + accepted(Endpoint::Bulk);
    assert_eq!(total - fake.duplicates(), 3);
    assert!(accepted(Endpoint::Historical) >= 2);
    let r = report_json(&resumed);
    assert_eq!(r["events"]["historical"]["events"], 2);
    assert_eq!(r["events"]["bulkevents"]["events"], 1);
}

#[tokio::test]
async fn only_update_sends_events_of_existing_users_only() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = custom_events_table(&pool, [3, 2, 1, 1]).await;
    let known = db::unique_table("events_known");
    for statement in [
        format!("CREATE TABLE {known} (customer_id text, email text)"),
        format!("INSERT INTO {known} VALUES ('u1', NULL)"),
    ] {
        sqlx::query(&statement).execute(&pool).await.unwrap();
    }
    let fake = FakeMparticle::start(KEY, SECRET).await;
    fake.seed_profile(7, &[("customer_id", "u1")], json!({}));
    let p = project(&fake.base_url());
    p.model(
        "known_profiles",
        &format!("SELECT customer_id, email FROM {known}"),
    );
    custom_pipeline(
        &p,
        &table,
        "only_update",
        "[resolver]\ntype = \"sql\"\ndata_model = \"known_profiles\"\n",
    );
    let ctx = p.context().await;
    let report = wsync::sync::run(&ctx, "app_events", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(
        report.record.state,
        RunState::Success,
        "{:?}",
        report.record.error
    );
    let batches = fake.batches();
    assert_eq!(batches.len(), 1, "{batches:#?}");
    assert_eq!(batches[0]["user_identities"]["customer_id"], "u1");
    assert_eq!(batches[0]["events"].as_array().unwrap().len(), 2);
    assert_eq!(fake.profiles_created(), 0);
    assert_eq!(fake.profile(7).unwrap().updates, 1);
    // Input protection counts event batches (one per user here).
    let r = report_json(&report);
    assert_eq!(r["protection"]["skipped_no_profile"], 1, "{r:#}");
}

const PLAN_DOCUMENT: &str = r#"{
  "data_plan_id": "app_plan",
  "data_plan_name": "App plan",
  "data_plan_versions": [
    {"version": 1, "version_document": {"data_points": [
      {"description": "Renewal",
       "match": {"type": "custom_event", "criteria": {"event_name": "Renewal", "custom_event_type": "transaction"}},
       "validator": {"type": "json_schema", "definition": {"properties": {"data": {"properties": {
         "custom_attributes": {"additionalProperties": false, "required": ["plan", "seats"],
           "properties": {"plan": {"type": "string", "enum": ["silver", "platinum"]},
                          "seats": {"type": "string"}}}}}}}}},
      {"description": "Login",
       "match": {"type": "custom_event", "criteria": {"event_name": "Login", "custom_event_type": "navigation"}},
       "validator": {"type": "json_schema", "definition": {"properties": {"data": {"properties": {
         "custom_attributes": {"required": ["plan"], "properties": {"plan": {"type": "string"}}}}}}}}}
    ]}}
  ]
}"#;

#[tokio::test]
async fn a_dry_run_counts_each_kind_of_data_plan_violation() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = custom_events_table(&pool, [3, 2, 1, 1]).await;
    sqlx::query(&format!(
        "INSERT INTO {table} VALUES ('u3', NULL, 'Signup', 'other', now() - interval '1 day', NULL, NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(&fake.base_url());
    p.file("plans/app.json", PLAN_DOCUMENT);
    custom_pipeline(
        &p,
        &table,
        "only_read",
        r#"data_plan = { plan_id = "app_plan", plan_version = 1, document = "plans/app.json" }"#,
    );
    let ctx = p.context().await;
    let report = wsync::sync::run(&ctx, "app_events", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(
        report.record.state,
        RunState::Success,
        "{:?}",
        report.record.error
    );
    assert!(fake.requests().is_empty(), "a dry run sends nothing");
    // Renewal of u1: plan `gold` not allowed, seats an integer not a string.
    // Login of u1: fine. Login of u2: `plan` missing. Signup of u3: unplanned.
    let r = report_json(&report);
    let plan = &r["data_plan"];
    let counts: Vec<(String, u64)> = plan["violations"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        counts,
        [
            ("missing_attribute".to_owned(), 1),
            ("unplanned_event".to_owned(), 1),
            ("value_not_allowed".to_owned(), 1),
            ("wrong_type".to_owned(), 1),
        ]
    );
    assert_eq!(plan["events_flagged"], 3);
    assert_eq!(plan["violations_policy"], "flag");
    let sample = &plan["violations"]["unplanned_event"]["samples"][0];
    assert!(
        sample["detail"].as_str().unwrap().contains("`Signup`"),
        "{sample}"
    );
    assert!(sample["row"].as_u64().is_some());
    assert_eq!(r["rows_rejected"], 1, "only the row without identity");

    // The gate counts flagged events: 3 flagged + 1 rejected of 5 rows = 80%.
    let (code, out, err) = p.wsync(&["run", "app_events", "--max-rejected-pct", "50"], &[]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("80.00%"), "{out}");
    assert!(out.contains("data plan: unplanned_event"), "{out}");
    // `wsync validate PIPELINE` checks every would-be event too.
    let (code, out, err) = p.wsync(&["validate", "app_events"], &[]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("pipeline_type: events"), "{out}");
    assert!(out.contains("3 break the plan"), "{out}");
    assert!(out.contains("wrong_type: 1"), "{out}");
}

#[tokio::test]
async fn a_blocking_plan_rejects_the_events_that_break_it() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = custom_events_table(&pool, [3, 2, 1, 1]).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(&fake.base_url());
    p.file("plans/app.json", PLAN_DOCUMENT);
    custom_pipeline(
        &p,
        &table,
        "create_and_update",
        r#"data_plan = { plan_id = "app_plan", document = "plans/app.json", violations = "block" }"#,
    );
    let ctx = p.context().await;
    let report = wsync::sync::run(&ctx, "app_events", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(
        report.record.state,
        RunState::Success,
        "{:?}",
        report.record.error
    );
    let batches = fake.batches();
    let sent: Vec<&str> = batches
        .iter()
        .flat_map(|b| b["events"].as_array().unwrap())
        .map(|e| e["data"]["event_name"].as_str().unwrap())
        .collect();
    assert_eq!(sent, ["Login"], "{batches:#?}");
    // No plan_version: mParticle uses the latest.
    assert_eq!(
        batches[0]["context"],
        json!({"data_plan": {"plan_id": "app_plan"}})
    );
    let r = report_json(&report);
    assert_eq!(r["rejected_by_reason"]["data_plan"]["count"], 2);
    assert_eq!(r["data_plan"]["events_flagged"], 0);
}

#[test]
fn the_fake_refuses_events_the_schema_forbids() {
    let batch = |event: Value| {
        json!({"environment": "development", "user_identities": {"customer_id": "c"},
               "events": [event]})
    };
    let id = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    let good = json!({"event_type": "custom_event",
        "data": {"event_name": "x", "custom_event_type": "other", "source_message_id": id,
                 "timestamp_unixtime_ms": 1, "custom_attributes": {"a": 1}}});
    validate_batch(&batch(good.clone())).unwrap();
    let commerce = json!({"event_type": "commerce_event",
        "data": {"product_action": {"action": "purchase", "total_amount": 1.5,
                 "products": [{"id": "s", "price": 2}]}}});
    validate_batch(&batch(commerce)).unwrap();
    let wrong = |path: &str, value: Value| {
        let mut event = good.clone();
        let pointer: Vec<&str> = path.split('/').collect();
        let (last, parents) = pointer.split_last().unwrap();
        let mut at = &mut event;
        for p in parents {
            at = &mut at[*p];
        }
        at[*last] = value;
        validate_batch(&batch(event)).unwrap_err()
    };
    assert!(wrong("event_type", json!("click")).contains("EventType"));
    assert!(wrong("data/custom_event_type", json!("shopping")).contains("enum"));
    assert!(wrong("data/custom_event_type", Value::Null).contains("custom_event_type"));
    assert!(wrong("data/event_name", json!(7)).contains("event_name"));
    assert!(wrong("data/timestamp_unixtime_ms", json!("2024-01-01")).contains("Integer"));
    assert!(wrong("data/source_message_id", json!("row-1")).contains("Uuid"));
    assert!(wrong("data/custom_attributes", json!({"a": [1]})).contains("scalar"));
    for bad in [
        json!({"event_type": "commerce_event", "data": {}}),
        json!({"event_type": "commerce_event", "data": {"product_action": {"action": "buy"}}}),
        json!({"event_type": "commerce_event", "data": {"product_action": {"action": "purchase", "total_amount": "9"}}}),
        json!({"event_type": "commerce_event", "data": {"product_action": {"action": "purchase", "products": [{"id": 7}]}}}),
        json!({"event_type": "screen_view", "data": {"event_name": "Home"}}),
    ] {
        assert!(validate_batch(&batch(bad.clone())).is_err(), "{bad}");
    }
    assert!(
        validate_batch(&json!({"environment": "development", "mpid": 1,
        "context": {"data_plan": {"plan_version": 2}}}))
        .unwrap_err()
        .contains("plan_id")
    );
    // The historical endpoint: events, each with a timestamp at least 72 h old.
    assert!(validate_historical(&batch(good.clone())).is_ok());
    assert!(validate_historical(&json!({"environment": "development"})).is_err());
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut recent = good;
    recent["data"]["timestamp_unixtime_ms"] = json!(now_ms - 3_600_000);
    assert!(validate_historical(&batch(recent))
        .unwrap_err()
        .contains("72 hours"));
}
