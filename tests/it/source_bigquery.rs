//! `Warehouse` on BigQuery: against bqemulator (types, windows, paging, errors)
//! and an in-process fake of the API and of Google's token endpoint (service
//! account token exchange and refresh, jobs that are still running, the cost
//! guard, retries, timeouts, secrets).
//!
//! bqemulator spells some values differently from BigQuery (`nan`, NUMERIC
//! padded to 9 decimals, `0E-9`, TIMESTAMP always as integer microseconds);
//! wsync normalises both spellings to the same values, so the assertions here
//! hold for real BigQuery too.

use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, BinaryArray, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray,
    Time64MicrosecondArray, TimestampMicrosecondArray,
};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::NaiveDate;
use serde_json::{json, Value};
use wsync::config::model::{BigQueryAuth, IteratorDataType};
use wsync::redact::Secret;
use wsync::source::{ColumnKind, IteratorFilter, IteratorValue, SourceError, Warehouse};

use crate::support::db::{extract_all, one_batch, query};
use crate::support::emulators::{
    bigquery_connection, bigquery_exec, bigquery_settings, bqemulator_url, reachable, test_key,
    unique_name,
};

fn col<'a, T: 'static>(b: &'a arrow::array::RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("column {name} has another type"))
}

/// A fresh dataset on bqemulator with `statements` run, and a warehouse on it.
async fn emulator(prefix: &str, statements: &[&str]) -> Option<(String, Warehouse)> {
    if !reachable("bqemulator", &bqemulator_url()).await {
        return None;
    }
    let dataset = unique_name(prefix);
    // `{ds}` in a statement stands for the dataset.
    let statements: Vec<String> = statements
        .iter()
        .map(|s| s.replace("{ds}", &dataset))
        .collect();
    let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
    bigquery_exec(&dataset, &statements).await;
    let wh = Warehouse::connect(&bigquery_connection(bigquery_settings(
        &bqemulator_url(),
        &dataset,
    )))
    .await
    .expect("connect to bqemulator");
    Some((dataset, wh))
}

#[tokio::test]
async fn source_bigquery_emulator_every_supported_type() {
    let Some((ds, mut wh)) = emulator(
        "bq_types",
        &[
            "CREATE TABLE {ds}.t (id INT64, n NUMERIC, z NUMERIC, f FLOAT64, g FLOAT64, b BOOL, s STRING, bts BYTES, d DATE, dt DATETIME, tm TIME, ts TIMESTAMP, j JSON, arr ARRAY<INT64>, st STRUCT<a INT64, b STRING>)",
            "INSERT INTO {ds}.t VALUES (9007199254740993, 12.5, 0, CAST('nan' AS FLOAT64), CAST('-inf' AS FLOAT64), TRUE, 'Zoë 🎉 \"q\"', b'abc', DATE '2000-02-29', DATETIME '2024-01-02 03:04:05.123456', TIME '03:04:05.5', TIMESTAMP '2024-01-02 03:04:05.123456+00', JSON '{\"a\": 1, \"b\": [true, null]}', [1, 2], STRUCT(1 AS a, 'x' AS b))",
            "INSERT INTO {ds}.t (id) VALUES (2)",
        ],
    )
    .await
    else {
        return;
    };
    // Qualified: bqemulator ignores the request's defaultDataset (BigQuery honours it).
    let q = query(
        "types",
        &format!("SELECT * FROM {ds}.t ORDER BY id DESC -- trailing comment"),
    );
    let (cols, rows, batches) = extract_all(&mut wh, &q, 1000).await.expect("extract");
    assert_eq!(rows, 2);
    let kind = |name: &str| cols.iter().find(|c| c.name == name).map(|c| c.kind.clone());
    assert_eq!(kind("id"), Some(ColumnKind::Int));
    assert_eq!(kind("n"), Some(ColumnKind::Decimal));
    assert_eq!(kind("ts"), Some(ColumnKind::TimestampTz));
    assert_eq!(kind("dt"), Some(ColumnKind::Timestamp));
    assert_eq!(kind("arr"), Some(ColumnKind::Json));
    assert_eq!(kind("st"), Some(ColumnKind::Json));
    assert_eq!(
        cols.iter().find(|c| c.name == "arr").unwrap().sql_type,
        "ARRAY<INT64>"
    );
    assert_eq!(
        cols.iter().find(|c| c.name == "n").unwrap().decimal,
        Some((38, 9))
    );
    let b = one_batch(&batches);
    assert_eq!(col::<Int64Array>(&b, "id").value(0), 9_007_199_254_740_993);
    assert_eq!(
        col::<StringArray>(&b, "n").value(0),
        "12.5",
        "BigQuery's spelling, whatever the emulator pads"
    );
    assert_eq!(col::<StringArray>(&b, "z").value(0), "0");
    assert!(col::<Float64Array>(&b, "f").value(0).is_nan());
    assert_eq!(col::<Float64Array>(&b, "g").value(0), f64::NEG_INFINITY);
    assert!(col::<BooleanArray>(&b, "b").value(0));
    assert_eq!(col::<StringArray>(&b, "s").value(0), "Zoë 🎉 \"q\"");
    assert_eq!(col::<BinaryArray>(&b, "bts").value(0), b"abc");
    assert_eq!(
        col::<Date32Array>(&b, "d").value(0),
        i32::try_from(
            (NaiveDate::from_ymd_opt(2000, 2, 29).unwrap()
                - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
            .num_days()
        )
        .unwrap()
    );
    let t = NaiveDate::from_ymd_opt(2024, 1, 2)
        .unwrap()
        .and_hms_micro_opt(3, 4, 5, 123_456)
        .unwrap();
    assert_eq!(
        col::<TimestampMicrosecondArray>(&b, "dt").value(0),
        t.and_utc().timestamp_micros()
    );
    assert_eq!(
        col::<TimestampMicrosecondArray>(&b, "ts").value(0),
        t.and_utc().timestamp_micros()
    );
    assert_eq!(
        col::<Time64MicrosecondArray>(&b, "tm").value(0),
        11_045_500_000
    );
    let json_text = col::<StringArray>(&b, "j").value(0);
    assert_eq!(
        serde_json::from_str::<Value>(json_text).unwrap(),
        json!({"a": 1, "b": [true, null]})
    );
    assert_eq!(col::<StringArray>(&b, "arr").value(0), "[1,2]");
    assert_eq!(
        col::<StringArray>(&b, "st").value(0),
        "{\"a\":1,\"b\":\"x\"}"
    );
    // The Parquet `rows` export keeps the types: NUMERIC as Decimal128(38,9).
    let exported = wsync::export::rows_batch(&b, &cols).expect("rows export");
    let n = exported.column_by_name("n").unwrap();
    assert_eq!(
        n.data_type(),
        &arrow::datatypes::DataType::Decimal128(38, 9)
    );
    assert_eq!(
        n.as_any()
            .downcast_ref::<arrow::array::Decimal128Array>()
            .unwrap()
            .value(0),
        12_500_000_000
    );
    // Row 2: NULL scalars; the array is `[]`, BigQuery's own rule (an ARRAY is never NULL).
    for name in [
        "n", "z", "f", "g", "b", "s", "bts", "d", "dt", "tm", "ts", "j", "st",
    ] {
        assert!(b.column_by_name(name).unwrap().is_null(1), "{name} is NULL");
    }
    assert_eq!(col::<StringArray>(&b, "arr").value(1), "[]");
}

#[tokio::test]
async fn source_bigquery_emulator_windows_paging_and_max() {
    let Some((ds, mut wh)) = emulator(
        "bq_window",
        &["CREATE TABLE {ds}.ev AS SELECT x AS id, TIMESTAMP_ADD(TIMESTAMP '2024-01-01 00:00:00+00', INTERVAL x SECOND) AS seen_at, DATE_ADD(DATE '2024-01-01', INTERVAL MOD(x, 10) DAY) AS day_of FROM UNNEST(GENERATE_ARRAY(1, 25000)) AS x"],
    )
    .await
    else {
        return;
    };
    // Every row, over three pages of at most 10,000 rows, in batches of 4,096.
    let all = query(
        "ev",
        &format!("SELECT id, seen_at, day_of FROM {ds}.ev ORDER BY id"),
    );
    let (_, rows, batches) = extract_all(&mut wh, &all, 4096).await.expect("extract all");
    assert_eq!(rows, 25_000);
    assert!(batches.iter().all(|b| b.num_rows() <= 4096));
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| col::<Int64Array>(b, "id").values().to_vec())
        .collect();
    assert_eq!(
        ids,
        (1..=25_000).collect::<Vec<i64>>(),
        "no page lost or repeated"
    );

    let mut q = query("ev", &format!("SELECT id, seen_at, day_of FROM {ds}.ev"));
    q.filter = Some(IteratorFilter {
        column: "id".into(),
        data_type: IteratorDataType::Integer,
        lower: Some(IteratorValue::Integer(10)),
        upper: Some(IteratorValue::Integer(13)),
    });
    let (_, rows, batches) = extract_all(&mut wh, &q, 1000).await.expect("window");
    assert_eq!(rows, 3);
    assert_eq!(
        col::<Int64Array>(&one_batch(&batches), "id")
            .values()
            .to_vec(),
        vec![10, 11, 12]
    );
    assert_eq!(
        wh.max_iterator(&q).await.expect("max"),
        Some(IteratorValue::Integer(25_000))
    );

    let at = |s: i64| chrono::DateTime::from_timestamp(1_704_067_200 + s, 0).unwrap();
    q.filter = Some(IteratorFilter {
        column: "seen_at".into(),
        data_type: IteratorDataType::TimestampTz,
        lower: Some(IteratorValue::TimestampTz(at(24_998))),
        upper: None,
    });
    let (_, rows, _) = extract_all(&mut wh, &q, 1000).await.expect("ts window");
    assert_eq!(rows, 3);
    assert_eq!(
        wh.max_iterator(&q).await.expect("max ts"),
        Some(IteratorValue::TimestampTz(at(25_000)))
    );
    q.filter = Some(IteratorFilter {
        column: "day_of".into(),
        data_type: IteratorDataType::Date,
        lower: None,
        upper: Some(IteratorValue::Date(
            NaiveDate::from_ymd_opt(2024, 1, 2).unwrap(),
        )),
    });
    let (_, rows, _) = extract_all(&mut wh, &q, 1000).await.expect("date window");
    assert_eq!(rows, 2_500);
    let mut limited = query("ev", &format!("SELECT id FROM {ds}.ev ORDER BY id"));
    limited.limit = Some(7);
    let (_, rows, _) = extract_all(&mut wh, &limited, 1000).await.expect("limit");
    assert_eq!(rows, 7);
}

#[tokio::test]
async fn source_bigquery_emulator_errors_name_the_model() {
    let Some((_, mut wh)) = emulator("bq_errors", &[]).await else {
        return;
    };
    let err = wh
        .probe(&query("missing", "SELECT * FROM no_such_table"))
        .await
        .expect_err("not found");
    let text = err.to_string();
    assert!(
        text.contains("model `missing`") && text.contains("no_such_table"),
        "{text}"
    );
    assert!(!err.is_retryable());
    let err = wh
        .probe(&query("geo", "SELECT ST_GEOGPOINT(1, 2) AS g"))
        .await;
    if let Err(SourceError::UnsupportedType { columns, .. }) = &err {
        assert_eq!(columns[0].fix, "ST_ASTEXT(g) AS g");
    }
    assert_eq!(
        wh.query_scalar_text("SELECT 'ok' AS v")
            .await
            .expect("scalar"),
        Some("ok".to_owned())
    );
    wh.ping().await.expect("ping");
    assert!(
        wh.bytes_estimate().is_some(),
        "the dry run's estimate is kept"
    );
}

/// What the fake API and token endpoint saw.
#[derive(Default)]
struct FakeBq {
    tokens_issued: u32,
    assertions: Vec<String>,
    bearers: Vec<String>,
    queries: Vec<Value>,
    result_calls: u32,
    fail_first_query: bool,
    estimate: u64,
    job_timeout: bool,
}

#[derive(Clone)]
struct Fake(Arc<Mutex<FakeBq>>);

async fn token(State(fake): State<Fake>, body: String) -> Response {
    let mut s = fake.0.lock().unwrap();
    s.tokens_issued += 1;
    let assertion = url::form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == "assertion")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    s.assertions.push(assertion);
    // A token that is already inside the refresh margin: the next call refreshes.
    axum::Json(json!({"access_token": format!("ya29.SECRET-{}", s.tokens_issued), "expires_in": 30, "token_type": "Bearer"})).into_response()
}

fn bearer(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn schema() -> Value {
    json!({"fields": [{"name": "id", "type": "INTEGER", "mode": "NULLABLE"}, {"name": "amount", "type": "NUMERIC", "mode": "NULLABLE"}]})
}

async fn queries(State(fake): State<Fake>, headers: HeaderMap, body: String) -> Response {
    let mut s = fake.0.lock().unwrap();
    s.bearers.push(bearer(&headers));
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    s.queries.push(body.clone());
    if body["dryRun"] == true {
        return axum::Json(json!({"schema": schema(), "totalBytesProcessed": s.estimate.to_string(), "jobComplete": true, "jobReference": {"projectId": "p"}})).into_response();
    }
    if s.fail_first_query {
        s.fail_first_query = false;
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": {"code": 503, "message": "backend busy", "errors": [{"reason": "backendError"}]}}))).into_response();
    }
    axum::Json(json!({"jobComplete": false, "jobReference": {"projectId": "p", "jobId": "job_1", "location": "EU"}})).into_response()
}

async fn results(State(fake): State<Fake>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let mut s = fake.0.lock().unwrap();
    s.bearers.push(bearer(&headers));
    s.result_calls += 1;
    if s.job_timeout {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": {"code": 400, "message": "Job timed out after 30s", "errors": [{"reason": "timeout"}]}}))).into_response();
    }
    let query = uri.query().unwrap_or_default().to_owned();
    assert!(query.contains("location=EU"), "{query}");
    if s.result_calls == 1 {
        return axum::Json(json!({"jobComplete": false, "jobReference": {"projectId": "p", "jobId": "job_1", "location": "EU"}})).into_response();
    }
    if query.contains("pageToken=page2") {
        return axum::Json(json!({"jobComplete": true, "schema": schema(), "rows": [{"f": [{"v": "3"}, {"v": "0E-9"}]}], "jobReference": {"projectId": "p", "jobId": "job_1"}})).into_response();
    }
    axum::Json(json!({"jobComplete": true, "schema": schema(), "rows": [{"f": [{"v": "1"}, {"v": "12.500000000"}]}, {"f": [{"v": null}, {"v": "-1.5"}]}], "pageToken": "page2", "jobReference": {"projectId": "p", "jobId": "job_1"}})).into_response()
}

/// The fake on a free port; returns its root and state.
async fn start_fake() -> (String, Arc<Mutex<FakeBq>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(Mutex::new(FakeBq {
        estimate: 1_000,
        ..FakeBq::default()
    }));
    let router = Router::new()
        .route("/token", post(token))
        .route("/bigquery/v2/projects/p/queries", post(queries))
        .route("/bigquery/v2/projects/p/queries/job_1", get(results))
        .with_state(Fake(state.clone()));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (base, state)
}

/// A connection to the fake with a service-account key whose token URI is the fake's.
fn fake_connection(base: &str, maximum_bytes_billed: u64) -> wsync::config::model::Connection {
    let key = json!({
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "kid-1",
        "private_key": test_key("rsa_key.p8"),
        "client_email": "reader@p.iam.gserviceaccount.com",
        "token_uri": format!("{base}/token"),
    });
    let mut settings = bigquery_settings(base, "ds");
    settings.project = "p".into();
    settings.location = Some("EU".into());
    settings.maximum_bytes_billed = maximum_bytes_billed;
    settings.auth = BigQueryAuth::ServiceAccount(Secret::new(key.to_string()));
    bigquery_connection(settings)
}

#[tokio::test]
async fn source_bigquery_service_account_polling_paging_in_process() {
    let (base, state) = start_fake().await;
    state.lock().unwrap().fail_first_query = true;
    let conn = fake_connection(&base, 10_000);
    assert!(!format!("{conn:?}").contains("PRIVATE KEY"));
    let mut wh = Warehouse::connect(&conn).await.expect("connect");
    assert!(!format!("{wh:?}").contains("SECRET"));
    let (_, rows, batches) = extract_all(&mut wh, &query("m", "SELECT id, amount FROM x"), 1000)
        .await
        .expect("extract");
    assert_eq!(rows, 3);
    let b = one_batch(&batches);
    let amount = col::<StringArray>(&b, "amount");
    assert_eq!(
        (amount.value(0), amount.value(1), amount.value(2)),
        ("12.5", "-1.5", "0")
    );
    assert!(col::<Int64Array>(&b, "id").is_null(1));
    let s = state.lock().unwrap();
    // Every API call carried a bearer token; the 30 s token was refreshed.
    assert!(
        s.bearers
            .iter()
            .all(|b| b.starts_with("Bearer ya29.SECRET-")),
        "{:?}",
        s.bearers
    );
    assert!(s.tokens_issued >= 2, "refreshed: {}", s.tokens_issued);
    let claims: Value = {
        use base64::Engine as _;
        let part = s.assertions[0].split('.').nth(1).unwrap().to_owned();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(claims["iss"], "reader@p.iam.gserviceaccount.com");
    assert_eq!(claims["aud"], format!("{base}/token"));
    // The real query carries the cost guard, the location, the timeout and typed
    // options; the dry run came first.
    let real = s.queries.iter().find(|q| q["dryRun"] == false).unwrap();
    assert_eq!(real["maximumBytesBilled"], "10000");
    assert_eq!(real["location"], "EU");
    assert_eq!(real["jobTimeoutMs"], "30000");
    assert_eq!(real["defaultDataset"]["datasetId"], "ds");
    assert_eq!(s.queries[0]["dryRun"], true);
    assert!(s.result_calls >= 3, "polled, then paged");
}

#[tokio::test]
async fn source_bigquery_cost_guard_and_timeout_in_process() {
    let (base, state) = start_fake().await;
    state.lock().unwrap().estimate = 5_000_000;
    let mut wh = Warehouse::connect(&fake_connection(&base, 1_000_000))
        .await
        .expect("connect");
    let err = wh
        .probe(&query("big", "SELECT id, amount FROM x"))
        .await
        .expect_err("over the guard");
    let text = err.to_string();
    assert!(
        text.contains("5000000")
            && text.contains("maximum_bytes_billed")
            && text.contains("test_bigquery"),
        "{text}"
    );
    assert!(!text.contains("SECRET"), "{text}");
    assert!(
        state
            .lock()
            .unwrap()
            .queries
            .iter()
            .all(|q| q["dryRun"] == true),
        "nothing ran"
    );

    state.lock().unwrap().estimate = 10;
    state.lock().unwrap().job_timeout = true;
    let err = extract_all(&mut wh, &query("slow", "SELECT id, amount FROM x"), 1000)
        .await
        .expect_err("timeout");
    assert!(
        matches!(err, SourceError::Timeout { seconds: 30, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn source_bigquery_wsync_validate_prints_types_and_the_estimate_then_dry_runs() {
    if !reachable("bqemulator", &bqemulator_url()).await {
        return;
    }
    let dataset = unique_name("bq_cli");
    let create = format!("CREATE TABLE {dataset}.users (customer_id STRING, email STRING, ltv NUMERIC, updated_at TIMESTAMP)");
    let insert = format!("INSERT INTO {dataset}.users VALUES ('c1', 'a@example.com', 12.5, TIMESTAMP '2024-01-02 00:00:00+00'), ('c2', NULL, 0, TIMESTAMP '2024-01-03 00:00:00+00')");
    bigquery_exec(&dataset, &[&create, &insert]).await;
    let p = crate::support::project::TestProject::new(&format!(
        "[connections.bq]\ntype = \"bigquery\"\nproject = \"wsync-test\"\ndataset = \"{dataset}\"\nauth = \"none\"\nbase_url = \"{}\"\nmaximum_bytes_billed = 1000000000\n",
        bqemulator_url()
    ));
    p.model(
        "users",
        &format!("SELECT customer_id, email, ltv, updated_at FROM {dataset}.users"),
    );
    p.pipeline(
        "bq_users",
        "connection = \"bq\"\ndata_model = \"users\"\ninput_protection = \"only_read\"\n",
    );
    let (code, stdout, stderr) = p.wsync(&["validate"], &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("NUMERIC") && stdout.contains("TIMESTAMP"),
        "{stdout}"
    );
    assert!(
        stdout.contains("bigquery dry run: the model processes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("maximum_bytes_billed is 953.7 MiB (1000000000 bytes)"),
        "{stdout}"
    );
    let (code, stdout, stderr) = p.wsync(&["run", "bq_users"], &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("records_extracted"), "{stdout}");
}
