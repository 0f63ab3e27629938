//! `Warehouse` on Snowflake: against fakesnow (the protocol, Arrow results,
//! types, windows, errors) and against the in-process fake in
//! `support::fake_snowflake` (remote chunks, polling, NULL timestamps, retries,
//! timeouts, refused logins and what never leaks).

use arrow::array::{
    Array, BinaryArray, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray,
    Time64MicrosecondArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use base64::Engine as _;
use chrono::NaiveDate;
use wsync::config::model::IteratorDataType;
use wsync::source::{ColumnKind, IteratorFilter, IteratorValue, SourceError, Warehouse};

use crate::support::db::{extract_all, one_batch, query};
use crate::support::emulators::{
    fakesnow_url, reachable, snowflake_connection, snowflake_exec, snowflake_settings, unique_name,
};
use crate::support::fake_snowflake::{self, CHUNK_KEY, SESSION_TOKEN};

fn col<'a, T: 'static>(b: &'a arrow::array::RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("column {name} has another type"))
}

/// A fresh database on fakesnow with `statements` run in it, and a warehouse on it.
async fn fakesnow(prefix: &str, statements: &[&str]) -> Option<(String, Warehouse)> {
    if !reachable("fakesnow", &fakesnow_url()).await {
        return None;
    }
    let database = unique_name(prefix).to_uppercase();
    snowflake_exec(&database, statements).await;
    let wh = Warehouse::connect(&snowflake_connection(snowflake_settings(
        &fakesnow_url(),
        &database,
    )))
    .await
    .expect("connect to fakesnow");
    Some((database, wh))
}

#[tokio::test]
async fn source_snowflake_fakesnow_every_supported_type() {
    let Some((_, mut wh)) = fakesnow(
        "sf_types",
        &[
            "CREATE TABLE t (a NUMBER(10,0), b NUMBER(38,0), c NUMBER(10,2), f FLOAT, v VARCHAR, bo BOOLEAN, d DATE, tm TIME, ntz TIMESTAMP_NTZ, tz TIMESTAMP_TZ, va VARIANT, ob OBJECT, ar ARRAY, bi BINARY)",
            "INSERT INTO t SELECT 1, 1234567890123456789, -12.5, 1.5, 'Zoë 🎉 \"q\"', TRUE, '2000-02-29', '03:04:05.123456', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.123456+02:00'::TIMESTAMP_TZ, PARSE_JSON('{\"a\": 12345678901234567890123, \"b\": [1, 2]}'), OBJECT_CONSTRUCT('k', 1), ARRAY_CONSTRUCT(1, 'x'), TO_BINARY('00ff10', 'HEX')",
            "INSERT INTO t (a) VALUES (2)",
        ],
    )
    .await
    else {
        return;
    };
    let q = query("types", "SELECT * FROM t ORDER BY a -- trailing comment");
    let (cols, rows, batches) = extract_all(&mut wh, &q, 1000).await.expect("extract");
    assert_eq!(rows, 2);
    let kind = |name: &str| cols.iter().find(|c| c.name == name).map(|c| c.kind.clone());
    assert_eq!(kind("A"), Some(ColumnKind::Int));
    assert_eq!(
        kind("B"),
        Some(ColumnKind::Decimal),
        "NUMBER(38,0) can exceed Int64"
    );
    assert_eq!(kind("C"), Some(ColumnKind::Decimal));
    assert_eq!(kind("F"), Some(ColumnKind::Float64));
    assert_eq!(kind("NTZ"), Some(ColumnKind::Timestamp));
    assert_eq!(kind("TZ"), Some(ColumnKind::TimestampTz));
    assert_eq!(kind("VA"), Some(ColumnKind::Json));
    assert_eq!(kind("BI"), Some(ColumnKind::Bytes));
    let c_info = cols.iter().find(|c| c.name == "C").expect("C");
    assert_eq!(c_info.sql_type, "NUMBER(10,2)");
    assert_eq!(c_info.decimal, Some((10, 2)));
    let b = one_batch(&batches);
    assert_eq!(col::<Int64Array>(&b, "A").value(0), 1);
    assert_eq!(col::<StringArray>(&b, "B").value(0), "1234567890123456789");
    assert_eq!(col::<StringArray>(&b, "C").value(0), "-12.50");
    assert_eq!(col::<Float64Array>(&b, "F").value(0), 1.5);
    assert_eq!(col::<StringArray>(&b, "V").value(0), "Zoë 🎉 \"q\"");
    assert!(col::<BooleanArray>(&b, "BO").value(0));
    assert_eq!(
        col::<Date32Array>(&b, "D").value(0),
        i32::try_from(
            (NaiveDate::from_ymd_opt(2000, 2, 29).unwrap()
                - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
            .num_days()
        )
        .unwrap()
    );
    assert_eq!(
        col::<Time64MicrosecondArray>(&b, "TM").value(0),
        11_045_123_456
    );
    let ntz = NaiveDate::from_ymd_opt(2024, 1, 2)
        .unwrap()
        .and_hms_micro_opt(3, 4, 5, 123_456)
        .unwrap();
    assert_eq!(
        col::<TimestampMicrosecondArray>(&b, "NTZ").value(0),
        ntz.and_utc().timestamp_micros()
    );
    // The instant (fakesnow turns the offset into UTC itself, as the issue notes).
    assert_eq!(
        col::<TimestampMicrosecondArray>(&b, "TZ").value(0),
        ntz.and_utc().timestamp_micros() - 2 * 3_600_000_000
    );
    assert_eq!(
        b.schema().field_with_name("TZ").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    let variant = col::<StringArray>(&b, "VA").value(0);
    assert!(
        variant.contains("12345678901234567890123"),
        "digits kept: {variant}"
    );
    assert!(
        !variant.contains('\n') && !variant.contains(": "),
        "compact: {variant}"
    );
    assert_eq!(col::<BinaryArray>(&b, "BI").value(0), &[0x00, 0xff, 0x10]);
    // The Parquet `rows` export keeps the types: decimals as Decimal128(p,s).
    let rows = wsync::export::rows_batch(&b, &cols).expect("rows export");
    let c = rows.column_by_name("C").unwrap();
    assert_eq!(c.data_type(), &DataType::Decimal128(10, 2));
    assert_eq!(
        c.as_any()
            .downcast_ref::<arrow::array::Decimal128Array>()
            .unwrap()
            .value(0),
        -1250
    );
    assert_eq!(
        rows.column_by_name("B").unwrap().data_type(),
        &DataType::Decimal128(38, 0)
    );
    assert_eq!(
        rows.column_by_name("NTZ").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, None)
    );
    // Row 2: every other column NULL, timestamps included (the launcher patches
    // fakesnow's missing validity mask).
    for name in [
        "B", "C", "F", "V", "BO", "D", "TM", "NTZ", "TZ", "VA", "OB", "AR", "BI",
    ] {
        assert!(b.column_by_name(name).unwrap().is_null(1), "{name} is NULL");
    }
}

#[tokio::test]
async fn source_snowflake_fakesnow_windows_chunks_and_max() {
    let Some((_, mut wh)) = fakesnow(
        "sf_window",
        &[
            "CREATE TABLE ev (id NUMBER(18,0), seen_at TIMESTAMP_NTZ, day_of DATE, seen_tz TIMESTAMP_TZ)",
            "INSERT INTO ev SELECT column1, column2::TIMESTAMP_NTZ, column3::DATE, (column2 || '+00:00')::TIMESTAMP_TZ FROM VALUES (1, '2024-01-01 00:00:00', '2024-01-01'), (2, '2024-01-02 00:00:00', '2024-01-02'), (3, '2024-01-03 00:00:00', '2024-01-03'), (4, '2024-01-04 00:00:00', '2024-01-04'), (5, '2024-01-05 00:00:00', '2024-01-05')",
        ],
    )
    .await
    else {
        return;
    };
    // The iterator named as in the config (lower case) finds Snowflake's `ID`.
    let mut q = query("ev", "SELECT id, seen_at, day_of, seen_tz FROM ev");
    q.filter = Some(IteratorFilter {
        column: "id".into(),
        data_type: IteratorDataType::Integer,
        lower: Some(IteratorValue::Integer(2)),
        upper: Some(IteratorValue::Integer(5)),
    });
    let (_, rows, batches) = extract_all(&mut wh, &q, 2).await.expect("extract");
    assert_eq!(rows, 3);
    assert_eq!(
        batches.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
        vec![2, 1]
    );
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| col::<Int64Array>(b, "ID").values().to_vec())
        .collect();
    assert_eq!(ids, vec![2, 3, 4]);
    assert_eq!(
        wh.max_iterator(&q).await.expect("max"),
        Some(IteratorValue::Integer(5))
    );

    let day = |d: u32| {
        NaiveDate::from_ymd_opt(2024, 1, d)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
    };
    q.filter = Some(IteratorFilter {
        column: "SEEN_AT".into(),
        data_type: IteratorDataType::TimestampNtz,
        lower: Some(IteratorValue::Timestamp(day(3))),
        upper: None,
    });
    let (_, rows, _) = extract_all(&mut wh, &q, 1000).await.expect("extract ts");
    assert_eq!(rows, 3);
    assert_eq!(
        wh.max_iterator(&q).await.expect("max ts"),
        Some(IteratorValue::Timestamp(day(5)))
    );
    q.filter = Some(IteratorFilter {
        column: "seen_tz".into(),
        data_type: IteratorDataType::TimestampTz,
        lower: Some(IteratorValue::TimestampTz(day(2).and_utc())),
        upper: Some(IteratorValue::TimestampTz(day(4).and_utc())),
    });
    let (_, rows, _) = extract_all(&mut wh, &q, 1000).await.expect("extract tz");
    assert_eq!(rows, 2);
    assert_eq!(
        wh.max_iterator(&q).await.expect("max tz"),
        Some(IteratorValue::TimestampTz(day(5).and_utc()))
    );
    q.filter = Some(IteratorFilter {
        column: "day_of".into(),
        data_type: IteratorDataType::Date,
        lower: None,
        upper: Some(IteratorValue::Date(day(2).date())),
    });
    let (_, rows, _) = extract_all(&mut wh, &q, 1000).await.expect("extract date");
    assert_eq!(rows, 1);
    assert_eq!(
        wh.max_iterator(&q).await.expect("max date"),
        Some(IteratorValue::Date(day(5).date()))
    );
    // LIMIT (preview).
    let mut limited = query("ev", "SELECT id FROM ev ORDER BY id");
    limited.limit = Some(2);
    let (_, rows, _) = extract_all(&mut wh, &limited, 1000).await.expect("limit");
    assert_eq!(rows, 2);
}

#[tokio::test]
async fn source_snowflake_fakesnow_errors_name_the_model() {
    let Some((_, mut wh)) = fakesnow("sf_errors", &[]).await else {
        return;
    };
    let err = wh
        .probe(&query("broken", "SELECT FROM nowhere_at_all"))
        .await
        .expect_err("bad sql");
    let text = err.to_string();
    assert!(text.contains("model `broken`"), "{text}");
    assert!(!err.is_retryable());
    let err = wh
        .probe(&query("writer", "DELETE FROM t"))
        .await
        .expect_err("refused");
    assert!(matches!(err, SourceError::RefusedSql { .. }), "{err}");
    assert_eq!(
        wh.query_scalar_text("SELECT 'ok' AS v")
            .await
            .expect("scalar"),
        Some("ok".to_owned())
    );
    wh.ping().await.expect("ping");
}

#[tokio::test]
async fn source_snowflake_chunks_polling_and_nulls_in_process() {
    let fake = fake_snowflake::start().await;
    let conn = snowflake_connection(snowflake_settings(&fake.base_url, "DB"));
    let mut wh = Warehouse::connect(&conn).await.expect("connect");
    let q = query("events", "SELECT * FROM events");
    let (cols, rows, batches) = extract_all(&mut wh, &q, 3).await.expect("extract");
    assert_eq!(rows, 7, "2 inline + 3 + 2 from the chunks");
    assert_eq!(
        cols.iter().map(|c| c.kind.clone()).collect::<Vec<_>>(),
        vec![
            ColumnKind::Int,
            ColumnKind::Timestamp,
            ColumnKind::Decimal,
            ColumnKind::Text
        ]
    );
    assert!(
        batches.iter().all(|b| b.num_rows() <= 3),
        "bounded by chunk_rows"
    );
    let b = one_batch(&batches);
    let ids = col::<Int64Array>(&b, "ID");
    assert_eq!(
        (0..7)
            .map(|i| (!ids.is_null(i)).then(|| ids.value(i)))
            .collect::<Vec<_>>(),
        vec![Some(1), Some(2), Some(3), None, Some(5), Some(6), Some(7)]
    );
    let ts = col::<TimestampMicrosecondArray>(&b, "TS");
    assert_eq!(ts.value(0), 1_700_000_000_123_456);
    assert!(
        ts.is_null(1) && ts.is_null(2) && ts.is_null(6),
        "NULL timestamps stay NULL, never the epoch"
    );
    assert_eq!(ts.value(3), -500_000, "before the epoch: -1 s + 0.5 s");
    assert_eq!(ts.value(5), 86_400_000_001);
    let n = col::<StringArray>(&b, "N");
    assert_eq!(n.value(0), "12.50");
    assert_eq!(n.value(2), "-0.05");
    assert_eq!(n.value(4), "1000.00");
    assert_eq!(n.value(6), "0.01");
    assert_eq!(col::<StringArray>(&b, "S").value(3), "é");

    let state = fake.state.lock().unwrap();
    assert!(state.polls >= 3, "the running query was polled");
    assert!(
        state
            .chunk_requests
            .iter()
            .all(|(_, key)| key.as_deref() == Some(CHUNK_KEY)),
        "chunk headers sent"
    );
    assert_eq!(
        state.chunk_requests.iter().filter(|(c, _)| *c == 2).count(),
        2,
        "a 503 is retried"
    );
    // The statement timeout travels with every query.
    let query_body = state.queries.last().unwrap();
    assert_eq!(query_body["parameters"]["STATEMENT_TIMEOUT_IN_SECONDS"], 30);
}

#[tokio::test]
async fn source_snowflake_login_sends_a_key_pair_jwt() {
    let fake = fake_snowflake::start().await;
    let conn = snowflake_connection(snowflake_settings(&fake.base_url, "DB"));
    let wh = Warehouse::connect(&conn).await.expect("connect");
    // Closing ends the session on the server before a run delivers.
    wh.close().await;
    let state = fake.state.lock().unwrap();
    assert_eq!(state.session_deletes, 1);
    let data = &state.logins[0]["data"];
    assert_eq!(data["AUTHENTICATOR"], "SNOWFLAKE_JWT");
    assert_eq!(data["LOGIN_NAME"], "wsync_reader");
    assert_eq!(data["ACCOUNT_NAME"], "WSYNC-TEST");
    assert!(data.get("PASSWORD").is_none());
    let token = data["TOKEN"].as_str().expect("jwt");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).expect("payload"))
            .expect("base64url"),
    )
    .expect("claims");
    let fingerprint = std::fs::read_to_string(format!(
        "{}/tests/fixtures/keys/rsa_key.fingerprint",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    assert_eq!(
        claims["iss"],
        format!("WSYNC-TEST.WSYNC_READER.SHA256:{}", fingerprint.trim())
    );
    assert_eq!(claims["sub"], "WSYNC-TEST.WSYNC_READER");
    assert_eq!(data["SESSION_PARAMETERS"]["TIMEZONE"], "UTC");
}

#[tokio::test]
async fn source_snowflake_refused_login_and_timeout_leak_no_secret() {
    let fake = fake_snowflake::start().await;
    fake.state.lock().unwrap().refuse_login = Some("390144");
    let settings = snowflake_settings(&fake.base_url, "DB");
    let pem = match &settings.auth {
        wsync::config::model::SnowflakeAuth::KeyPair { private_key, .. } => {
            private_key.expose().to_owned()
        }
        wsync::config::model::SnowflakeAuth::Password(_) => unreachable!(),
    };
    let conn = snowflake_connection(settings);
    let debug = format!("{conn:?}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    let err = Warehouse::connect(&conn).await.expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("`test_snowflake`") && text.contains("390144"),
        "{text}"
    );
    assert!(
        text.contains("RSA_PUBLIC_KEY"),
        "says what to check: {text}"
    );
    let jwt = fake.state.lock().unwrap().logins[0]["data"]["TOKEN"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!text.contains(&jwt), "the echoed JWT is scrubbed: {text}");
    let body: String = pem.lines().nth(1).unwrap().to_owned();
    assert!(!text.contains(&body) && !format!("{err:?}").contains(&body));

    fake.state.lock().unwrap().refuse_login = None;
    fake.state.lock().unwrap().fail_query = Some("000630");
    let mut wh = Warehouse::connect(&conn).await.expect("connect");
    assert!(!format!("{wh:?}").contains(SESSION_TOKEN));
    let err = wh
        .probe(&query("slow", "SELECT 1"))
        .await
        .expect_err("timeout");
    assert!(
        matches!(err, SourceError::Timeout { seconds: 30, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn source_snowflake_wsync_validate_and_dry_run_with_a_key_file() {
    let Some((database, _)) = fakesnow(
        "sf_cli",
        &[
            "CREATE TABLE users (customer_id VARCHAR, email VARCHAR, ltv NUMBER(10,2), updated_at TIMESTAMP_NTZ)",
            "INSERT INTO users VALUES ('c1', 'a@example.com', 12.5, '2024-01-02 00:00:00'), ('c2', NULL, 0, NULL)",
        ],
    )
    .await
    else {
        return;
    };
    let p = crate::support::project::TestProject::new(&format!(
        "[connections.sf]\ntype = \"snowflake\"\naccount = \"wsync-test\"\nuser = \"wsync_reader\"\ndatabase = \"{database}\"\nschema = \"PUBLIC\"\nprivate_key_file = \"keys/rsa_key.p8\"\nprivate_key_passphrase_env = \"SF_KEY_PASSPHRASE\"\nbase_url = \"{}\"\n",
        fakesnow_url()
    ));
    p.file(
        "keys/rsa_key.p8",
        &crate::support::emulators::test_key("rsa_key_des3.p8"),
    );
    p.model(
        "users",
        "SELECT customer_id AS \"customer_id\", email AS \"email\", ltv AS \"ltv\", updated_at AS \"updated_at\" FROM users",
    );
    p.pipeline(
        "sf_users",
        "connection = \"sf\"\ndata_model = \"users\"\ninput_protection = \"only_read\"\n",
    );
    let env = [("SF_KEY_PASSPHRASE", "test-passphrase-only")];
    let (code, stdout, stderr) = p.wsync(&["validate"], &env);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("NUMBER(10,2)") && stdout.contains("TIMESTAMP_NTZ"),
        "{stdout}"
    );
    let (code, stdout, stderr) = p.wsync(&["run", "sf_users"], &env);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("records_extracted"), "{stdout}");
    assert!(!stdout.contains("test-passphrase-only") && !stderr.contains("test-passphrase-only"));
    // A wrong passphrase is a config error (exit 2) that names the key, not the value.
    let (code, stdout, stderr) = p.wsync(&["validate"], &[("SF_KEY_PASSPHRASE", "nope-not-it")]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("connections.sf.private_key_file")
            && stderr.contains("passphrase is wrong"),
        "{stderr}"
    );
    assert!(!stderr.contains("nope-not-it"), "{stderr}");
}

#[tokio::test]
async fn source_snowflake_json_results_and_an_expired_session_in_process() {
    let fake = fake_snowflake::start().await;
    {
        let mut state = fake.state.lock().unwrap();
        state.json_results = true;
        state.expire_session_once = true;
    }
    let conn = snowflake_connection(snowflake_settings(&fake.base_url, "DB"));
    let mut wh = Warehouse::connect(&conn).await.expect("connect");
    let (_, rows, batches) = extract_all(&mut wh, &query("events", "SELECT * FROM events"), 1000)
        .await
        .expect("extract");
    assert_eq!(rows, 4);
    let b = one_batch(&batches);
    let ids = col::<Int64Array>(&b, "ID");
    assert_eq!((ids.value(0), ids.value(2)), (1, 3));
    assert!(ids.is_null(3));
    let ts = col::<TimestampMicrosecondArray>(&b, "TS");
    assert_eq!(ts.value(0), 1_700_000_000_123_456);
    assert!(ts.is_null(1) && ts.is_null(3));
    assert_eq!(ts.value(2), -500_000);
    let n = col::<StringArray>(&b, "N");
    assert_eq!(
        (n.value(0), n.value(2), n.value(3)),
        ("12.50", "-0.05", "1000.00")
    );
    assert_eq!(col::<StringArray>(&b, "S").value(3), "é");
    let state = fake.state.lock().unwrap();
    assert_eq!(
        state.logins.len(),
        2,
        "logged in again after the session expired"
    );
    // The SSE-C key from `qrmk` went with the chunk download.
    assert!(state
        .chunk_requests
        .iter()
        .any(|(c, key)| *c == 3 && key.as_deref() == Some(CHUNK_KEY)));
}
