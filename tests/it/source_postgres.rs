//! `Warehouse` against the real PostgreSQL: every supported type with nasty
//! values, unsupported types, syntax errors, chunking, windows and read-only.

use arrow::array::{
    Array, BinaryArray, BooleanArray, Date32Array, Float32Array, Float64Array, Int64Array,
    ListArray, StringArray, Time64MicrosecondArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use chrono::{NaiveDate, TimeZone, Utc};
use wsync::config::model::{ConnectionKind, IteratorDataType};
use wsync::source::{ColumnKind, IteratorFilter, IteratorValue, SourceError, Warehouse};

use crate::support::db::{self, connection, extract_all, one_batch, query, unique_table};

/// A pool for setup and a `Warehouse` for the code under test, or `None` to skip.
async fn setup() -> Option<(sqlx::PgPool, Warehouse)> {
    let pool = db::postgres().await?;
    let wh = Warehouse::connect(&connection(ConnectionKind::Postgres, &db::postgres_url()))
        .await
        .expect("warehouse connect");
    Some((pool, wh))
}

/// Run a setup script (several statements) on the pool.
async fn exec(pool: &sqlx::PgPool, sql: &str) {
    sqlx::raw_sql(sql).execute(pool).await.expect("setup sql");
}

fn col<'a, T: 'static>(b: &'a arrow::array::RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("column {name} has another type"))
}

#[tokio::test]
async fn source_postgres_every_supported_type() {
    let Some((pool, mut wh)) = setup().await else {
        return;
    };
    let t = unique_table("pg_types");
    exec(
        &pool,
        &format!(
            r#"CREATE TABLE {t} (
                id int8, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, n numeric, n2 numeric(10,2),
                b bool, tx text, vc varchar(10), ch char(3), by bytea, d date, tm time,
                ts timestamp, tz timestamptz, u uuid, j json, jb jsonb, arr text[], ints int8[]
            );
            INSERT INTO {t} VALUES
            (1, -32768, 2147483647, 9007199254740993, 'NaN', 'Infinity', 'NaN', 12.50,
             true, E'Zoë 🎉 ''q'' "dq"\nline2', 'abc', 'ab', '\x00ff10', '2000-02-29', '23:59:59.999999',
             '2024-01-02 03:04:05.678901', '2024-01-02 03:04:05+02', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
             '{{"b": 1,  "a": [1, 2]}}', '{{"z": null, "a": "é"}}', ARRAY['x', NULL, 'y'], ARRAY[1, NULL, 9223372036854775807]),
            (2, NULL, NULL, -9223372036854775808, '-Infinity', '-Infinity', 'Infinity', NULL,
             false, repeat('é', 5000), NULL, NULL, '', '1970-01-01', '00:00:00',
             '1969-12-31 23:59:59', '1970-01-01 00:00:00+00', NULL,
             'null', '[]', (SELECT array_agg('v' || g) FROM generate_series(1, 1500) g), '{{}}'),
            (3, NULL, NULL, NULL, 1.5, '-0', '-Infinity', 0,
             NULL, '', NULL, NULL, NULL, NULL, NULL,
             NULL, NULL, NULL, NULL, NULL, NULL, NULL),
            (4, NULL, NULL, NULL, NULL, NULL, 12345678901234567890.123456789, -0.01,
             NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
            "#
        ),
    )
    .await;
    let q = query(
        "types",
        &format!("SELECT * FROM {t} ORDER BY id -- trailing comment"),
    );
    let (cols, rows, batches) = extract_all(&mut wh, &q, 1000).await.expect("extract");
    assert_eq!(rows, 4);
    let kind = |name: &str| cols.iter().find(|c| c.name == name).map(|c| c.kind.clone());
    assert_eq!(kind("i2"), Some(ColumnKind::Int));
    assert_eq!(kind("f4"), Some(ColumnKind::Float32));
    assert_eq!(kind("n"), Some(ColumnKind::Decimal));
    assert_eq!(kind("ch"), Some(ColumnKind::Text));
    assert_eq!(kind("tz"), Some(ColumnKind::TimestampTz));
    assert_eq!(kind("u"), Some(ColumnKind::Uuid));
    assert_eq!(kind("jb"), Some(ColumnKind::Json));
    assert_eq!(
        kind("arr"),
        Some(ColumnKind::List(Box::new(ColumnKind::Text)))
    );
    assert_eq!(
        cols.iter()
            .find(|c| c.name == "arr")
            .map(|c| c.sql_type.as_str()),
        Some("TEXT[]")
    );

    let b = one_batch(&batches);
    assert_eq!(
        b.schema().field_with_name("tz").expect("tz").data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    let i2 = col::<Int64Array>(&b, "i2");
    assert_eq!(i2.value(0), -32768);
    assert!(i2.is_null(1));
    assert_eq!(col::<Int64Array>(&b, "i4").value(0), 2_147_483_647);
    let i8 = col::<Int64Array>(&b, "i8");
    assert_eq!(i8.value(0), 9_007_199_254_740_993);
    assert_eq!(i8.value(1), i64::MIN);
    let f4 = col::<Float32Array>(&b, "f4");
    assert!(f4.value(0).is_nan());
    assert_eq!(f4.value(1), f32::NEG_INFINITY);
    assert_eq!(f4.value(2), 1.5);
    let f8 = col::<Float64Array>(&b, "f8");
    assert_eq!(f8.value(0), f64::INFINITY);
    assert_eq!(f8.value(1), f64::NEG_INFINITY);
    assert!(f8.value(2).is_sign_negative());
    let n = col::<StringArray>(&b, "n");
    assert_eq!(n.value(0), "NaN");
    assert_eq!(n.value(1), "Infinity");
    assert_eq!(n.value(2), "-Infinity");
    assert_eq!(n.value(3), "12345678901234567890.123456789");
    let n2 = col::<StringArray>(&b, "n2");
    assert_eq!(n2.value(0), "12.50");
    assert!(n2.is_null(1));
    assert_eq!(n2.value(2), "0.00");
    assert_eq!(n2.value(3), "-0.01");
    let bo = col::<BooleanArray>(&b, "b");
    assert!(bo.value(0));
    assert!(!bo.value(1));
    assert!(bo.is_null(2));
    let tx = col::<StringArray>(&b, "tx");
    assert_eq!(tx.value(0), "Zoë 🎉 'q' \"dq\"\nline2");
    assert_eq!(tx.value(1).chars().count(), 5000);
    assert_eq!(tx.value(2), "");
    assert!(tx.is_null(3));
    assert_eq!(col::<StringArray>(&b, "vc").value(0), "abc");
    assert_eq!(col::<StringArray>(&b, "ch").value(0), "ab ");
    let by = col::<BinaryArray>(&b, "by");
    assert_eq!(by.value(0), &[0x00, 0xff, 0x10]);
    assert_eq!(by.value(1), b"");
    let d = col::<Date32Array>(&b, "d");
    assert_eq!(d.value(0), 11_016);
    assert_eq!(d.value(1), 0);
    let tm = col::<Time64MicrosecondArray>(&b, "tm");
    assert_eq!(tm.value(0), 86_399_999_999);
    assert_eq!(tm.value(1), 0);
    let ts = col::<TimestampMicrosecondArray>(&b, "ts");
    assert_eq!(
        ts.value(0),
        Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5)
            .unwrap()
            .timestamp_micros()
            + 678_901
    );
    assert_eq!(ts.value(1), -1_000_000);
    let tz = col::<TimestampMicrosecondArray>(&b, "tz");
    assert_eq!(
        tz.value(0),
        Utc.with_ymd_and_hms(2024, 1, 2, 1, 4, 5)
            .unwrap()
            .timestamp_micros()
    );
    assert_eq!(tz.value(1), 0);
    let u = col::<StringArray>(&b, "u");
    assert_eq!(u.value(0), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert!(u.is_null(1));
    let j = col::<StringArray>(&b, "j");
    // `json` keeps its text (key order included), only whitespace goes.
    assert_eq!(j.value(0), r#"{"b":1,"a":[1,2]}"#);
    assert_eq!(j.value(1), "null");
    let jb = col::<StringArray>(&b, "jb");
    assert_eq!(jb.value(0), r#"{"a":"é","z":null}"#);
    assert_eq!(jb.value(1), "[]");

    let arr = col::<ListArray>(&b, "arr");
    let first = arr.value(0);
    let first = first
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("text list");
    assert_eq!(first.len(), 3);
    assert_eq!(first.value(0), "x");
    assert!(first.is_null(1));
    assert_eq!(first.value(2), "y");
    let big = arr.value(1);
    let big = big
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("text list");
    // The reader keeps the 1001 entries the 1000-entry list limit needs.
    assert_eq!(big.len(), 1001);
    assert_eq!(big.value(1000), "v1001");
    assert!(arr.is_null(2));
    let ints = col::<ListArray>(&b, "ints");
    let first = ints.value(0);
    let first = first
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("int list");
    assert_eq!(first.value(2), i64::MAX);
    assert!(first.is_null(1));
    assert_eq!(ints.value(1).len(), 0);
    exec(&pool, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn source_postgres_unsupported_types_name_column_and_cast() {
    let Some((_pool, mut wh)) = setup().await else {
        return;
    };
    let q = query(
        "money",
        "SELECT 1 AS id, '12.34'::money AS balance, interval '1 day' AS age, '127.0.0.1'::inet AS ip",
    );
    let err = wh.probe(&q).await.expect_err("unsupported");
    let text = err.to_string();
    match &err {
        SourceError::UnsupportedType { columns, .. } => assert_eq!(columns.len(), 3),
        other => panic!("unexpected {other}"),
    }
    assert!(text.contains("`balance` has type MONEY"), "{text}");
    assert!(
        text.contains("CAST(balance AS NUMERIC) AS balance"),
        "{text}"
    );
    assert!(text.contains("EXTRACT(EPOCH FROM age) AS age"), "{text}");
    assert!(text.contains("CAST(ip AS TEXT) AS ip"), "{text}");
}

#[tokio::test]
async fn source_postgres_syntax_error_carries_database_message() {
    let Some((_pool, mut wh)) = setup().await else {
        return;
    };
    let err = wh
        .probe(&query("broken", "SELECT 1 AS a FORM nowhere"))
        .await
        .expect_err("syntax");
    match &err {
        SourceError::Query { model, message, .. } => {
            assert_eq!(model, "broken");
            assert!(message.contains("syntax error"), "{message}");
        }
        other => panic!("unexpected {other}"),
    }
    // The connection is still usable after the failed transaction.
    wh.ping().await.expect("ping");
    let (_, rows, _) = extract_all(&mut wh, &query("ok", "SELECT 1 AS a"), 10)
        .await
        .expect("extract");
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn source_postgres_chunking_and_empty() {
    let Some((_pool, mut wh)) = setup().await else {
        return;
    };
    let q = query(
        "gen",
        "SELECT g AS id, 'row ' || g AS label FROM generate_series(1, 2500) g",
    );
    let (_, rows, batches) = extract_all(&mut wh, &q, 1000).await.expect("extract");
    assert_eq!(rows, 2500);
    assert_eq!(
        batches.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
        vec![1000, 1000, 500]
    );
    let last = &batches[2];
    let ids = last
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("ids");
    assert_eq!(ids.value(499), 2500);

    let q = query(
        "none",
        "SELECT g AS id FROM generate_series(1, 10) g WHERE g < 0",
    );
    let (cols, rows, batches) = extract_all(&mut wh, &q, 1000).await.expect("extract");
    assert_eq!(cols.len(), 1);
    assert_eq!(rows, 0);
    assert!(batches.is_empty());
}

#[tokio::test]
async fn source_postgres_dropped_receiver_stops_early() {
    let Some((_pool, mut wh)) = setup().await else {
        return;
    };
    let q = query("gen", "SELECT g AS id FROM generate_series(1, 100000) g");
    let cols = wh.probe(&q).await.expect("probe");
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let reader = async {
        let first = rx.recv().await;
        drop(rx);
        first
    };
    let (rows, first) = tokio::join!(wh.extract(&q, &cols, 100, tx), reader);
    let rows = rows.expect("stops without error");
    assert!(first.is_some());
    assert!(rows < 100_000, "read {rows} rows");
    wh.ping().await.expect("usable afterwards");
}

#[tokio::test]
async fn source_postgres_windows_include_lower_exclude_upper() {
    let Some((pool, mut wh)) = setup().await else {
        return;
    };
    let t = unique_table("pg_window");
    exec(
        &pool,
        &format!(
            "CREATE TABLE {t} (id int4, tz timestamptz, d date);
             INSERT INTO {t} VALUES
               (1, '2024-01-01 00:00:00+00', '2024-01-01'),
               (2, '2024-01-01 12:00:00+00', '2024-01-02'),
               (3, '2024-01-02 00:00:00+00', '2024-01-03'),
               (4, '2024-01-02 12:00:00+00', '2024-01-04');"
        ),
    )
    .await;
    let ids = |batches: &[arrow::array::RecordBatch]| -> Vec<i64> {
        if batches.is_empty() {
            return vec![];
        }
        let b = one_batch(batches);
        b.column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("ids")
            .values()
            .to_vec()
    };
    let mut q = query("w", &format!("SELECT id, tz, d FROM {t}"));
    let tz = |d: u32, h: u32| {
        IteratorValue::TimestampTz(Utc.with_ymd_and_hms(2024, 1, d, h, 0, 0).unwrap())
    };
    q.filter = Some(IteratorFilter {
        column: "tz".into(),
        data_type: IteratorDataType::TimestampTz,
        lower: Some(tz(1, 12)),
        upper: Some(tz(2, 12)),
    });
    let (_, _, batches) = extract_all(&mut wh, &q, 100).await.expect("extract");
    assert_eq!(ids(&batches), vec![2, 3]);
    assert_eq!(wh.max_iterator(&q).await.expect("max"), Some(tz(2, 12)));

    let day = |d: u32| IteratorValue::Date(NaiveDate::from_ymd_opt(2024, 1, d).unwrap());
    q.filter = Some(IteratorFilter {
        column: "d".into(),
        data_type: IteratorDataType::Date,
        lower: Some(day(2)),
        upper: Some(day(4)),
    });
    let (_, _, batches) = extract_all(&mut wh, &q, 100).await.expect("extract");
    assert_eq!(ids(&batches), vec![2, 3]);
    assert_eq!(wh.max_iterator(&q).await.expect("max"), Some(day(4)));

    q.filter = Some(IteratorFilter {
        column: "id".into(),
        data_type: IteratorDataType::Integer,
        lower: Some(IteratorValue::Integer(2)),
        upper: None,
    });
    q.limit = Some(2);
    let (_, _, batches) = extract_all(&mut wh, &q, 100).await.expect("extract");
    assert_eq!(ids(&batches), vec![2, 3]);
    assert_eq!(
        wh.max_iterator(&q).await.expect("max"),
        Some(IteratorValue::Integer(4))
    );
    exec(&pool, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn source_postgres_queries_run_read_only() {
    let Some((pool, mut wh)) = setup().await else {
        return;
    };
    assert_eq!(
        wh.query_scalar_text("SHOW transaction_read_only")
            .await
            .expect("show"),
        Some("on".to_owned())
    );
    assert_eq!(
        wh.query_scalar_text("SHOW TimeZone").await.expect("show"),
        Some("UTC".to_owned())
    );
    assert_eq!(
        wh.query_scalar_text("SHOW statement_timeout")
            .await
            .expect("show"),
        Some("30s".to_owned())
    );
    // A write hidden in a function call is refused by the database itself.
    let t = unique_table("pg_ro");
    exec(
        &pool,
        &format!(
            "CREATE TABLE {t} (id int);
             CREATE FUNCTION {t}_w() RETURNS int LANGUAGE sql AS $$ INSERT INTO {t} VALUES (1) RETURNING id $$;"
        ),
    )
    .await;
    let err = extract_all(
        &mut wh,
        &query("sneaky", &format!("SELECT {t}_w() AS x")),
        10,
    )
    .await
    .expect_err("read-only");
    assert!(err.to_string().contains("read-only transaction"), "{err}");
    exec(&pool, &format!("DROP FUNCTION {t}_w(); DROP TABLE {t}")).await;
}

#[tokio::test]
async fn source_postgres_bad_password_is_redacted() {
    let Some((_pool, _wh)) = setup().await else {
        return;
    };
    let conn = connection(
        ConnectionKind::Postgres,
        "postgres://nobody_here:supersecret99@127.0.0.1:1/test",
    );
    let err = Warehouse::connect(&conn).await.expect_err("cannot connect");
    let text = err.to_string();
    assert!(!text.contains("supersecret99"), "{text}");
    assert!(text.contains("nobody_here:****@127.0.0.1:1"), "{text}");
    assert!(
        err.is_retryable(),
        "connection refused is an i/o error: {text}"
    );
}

#[tokio::test]
async fn source_postgres_statement_timeout() {
    let Some(_pool) = db::postgres().await else {
        return;
    };
    let mut conn = connection(ConnectionKind::Postgres, &db::postgres_url());
    conn.statement_timeout = std::time::Duration::from_secs(1);
    let mut wh = Warehouse::connect(&conn).await.expect("connect");
    let err = extract_all(&mut wh, &query("slow", "SELECT pg_sleep(5)::text AS x"), 10)
        .await
        .expect_err("timeout");
    assert!(
        matches!(err, SourceError::Timeout { seconds: 1, .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
    wh.ping().await.expect("usable afterwards");
}

/// TLS to the warehouse: `sslmode=require` reads over TLS (the server's own
/// view of the session says so), `sslmode=disable` does not, and a
/// certificate that cannot be verified is a clear connection error without
/// the URL's password.
#[tokio::test]
async fn tls_to_the_warehouse_follows_the_url() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let server_tls: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&pool)
        .await
        .unwrap();
    if server_tls != "on" {
        assert!(
            std::env::var("CI").is_err(),
            "the test PostgreSQL has TLS off; CI needs it on"
        );
        eprintln!("skipping: the test PostgreSQL has TLS off");
        return;
    }
    let base = db::postgres_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let model = "SELECT ssl::text AS tls FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    for (mode, expected) in [("require", "true"), ("disable", "false")] {
        let url = format!("{base}{sep}sslmode={mode}");
        let mut wh = Warehouse::connect(&connection(ConnectionKind::Postgres, &url))
            .await
            .unwrap_or_else(|e| panic!("sslmode={mode}: {e}"));
        let (_, _, batches) = extract_all(&mut wh, &query("tls", model), 10)
            .await
            .unwrap();
        let tls = col::<StringArray>(&batches[0], "tls");
        assert_eq!(tls.value(0), expected, "sslmode={mode}");
    }
    // A root certificate the server's certificate was not signed by.
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("root.crt");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args([
            "-nodes",
            "-subj",
            "/CN=wsync-bogus-ca",
            "-days",
            "1",
            "-keyout",
        ])
        .arg(dir.path().join("root.key"))
        .arg("-out")
        .arg(&bogus)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let with_password = base.replacen(
        "postgres://postgres@",
        "postgres://postgres:hunter2-secret@",
        1,
    );
    let url = format!(
        "{with_password}{sep}sslmode=verify-full&sslrootcert={}",
        bogus.display()
    );
    let err = Warehouse::connect(&connection(ConnectionKind::Postgres, &url))
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("hunter2-secret"), "{err}");
    assert!(err.contains("test_postgres"), "names the connection: {err}");
}

/// Issue 16, item 9: a PostgreSQL session asks the server to probe its TCP
/// connection, so a session whose client vanished does not linger.
#[tokio::test]
async fn postgres_sessions_ask_for_tcp_keepalive() {
    let Some((_pool, mut wh)) = setup().await else {
        return;
    };
    let model = "SELECT current_setting('tcp_keepalives_idle') AS idle, \
                 current_setting('tcp_keepalives_count') AS probes";
    let (_, _, batches) = extract_all(&mut wh, &query("keepalive", model), 10)
        .await
        .unwrap();
    // Over TCP the server reports the setting; over a Unix socket it is 0.
    assert_eq!(col::<StringArray>(&batches[0], "idle").value(0), "30");
    assert_eq!(col::<StringArray>(&batches[0], "probes").value(0), "3");
}
