//! Issue 16, data: values that used to change, vanish or fail a whole run, on the
//! real PostgreSQL and MariaDB. Each test is named after the defect it keeps
//! fixed: jsonb digits, one bad value failing the run, a model without an
//! identity, huge values, MySQL JSON/TIME/zero dates, and the nasty MariaDB table.

use std::fs::File;

use arrow::array::{
    Array, BinaryArray, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
    Time64MicrosecondArray, TimestampMicrosecondArray, UInt64Array,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::json;
use wsync::config::model::ConnectionKind;
use wsync::source::{ColumnKind, SourceQuery, Warehouse};
use wsync::state::RunState;

use crate::support::db::{self, connection, extract_all, one_batch, query, rejected_reasons};
use crate::support::fake_mparticle::FakeMparticle;
use crate::support::project::{read_jsonl, without_id, TestProject};

const KEY: &str = "hardening-key";
const SECRET: &str = "hardening-secret-5e1a";

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("column {name} has another type"))
}

/// Extract on both PostgreSQL read paths; both must give the same batches.
async fn pg_both_paths(q: &SourceQuery) -> Vec<RecordBatch> {
    let mut wh = Warehouse::connect(&connection(ConnectionKind::Postgres, &db::postgres_url()))
        .await
        .expect("connect");
    let (_, _, copy) = extract_all(&mut wh, q, 1000).await.expect("copy path");
    wh.set_pg_copy(false);
    let (_, _, rows) = extract_all(&mut wh, q, 1000).await.expect("row path");
    let (copy, rows) = (one_batch(&copy), one_batch(&rows));
    assert_eq!(copy.schema(), rows.schema());
    for (i, (a, b)) in copy.columns().iter().zip(rows.columns()).enumerate() {
        assert_eq!(a.to_data(), b.to_data(), "column {i}");
    }
    vec![copy]
}

#[tokio::test]
async fn jsonb_keeps_big_number_digits() {
    let Some(_pool) = db::postgres().await else {
        return;
    };
    let q = query(
        "docs",
        r#"SELECT '{"big": 123456789012345678901234567890, "tiny": 1.000000000000000000000000001, "e": 1.5}'::jsonb AS jb,
                  '{"z": 9007199254740993,  "a": [1.10, -0.0]}'::json AS j,
                  ARRAY['{"n": 123456789012345678901234567890}'::jsonb] AS jl"#,
    );
    let batches = pg_both_paths(&q).await;
    let b = &batches[0];
    assert_eq!(
        col::<StringArray>(b, "jb").value(0),
        r#"{"e":1.5,"big":123456789012345678901234567890,"tiny":1.000000000000000000000000001}"#
    );
    // `json` keeps its text: key order, trailing zeros and all.
    assert_eq!(
        col::<StringArray>(b, "j").value(0),
        r#"{"z":9007199254740993,"a":[1.10,-0.0]}"#
    );
    let list = b
        .column_by_name("jl")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::ListArray>()
        .unwrap()
        .value(0);
    let list = list.as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(list.value(0), r#"{"n":123456789012345678901234567890}"#);
    assert!(rejected_reasons(&batches).iter().all(Option::is_none));
}

/// A project on PostgreSQL that sends to `fake` and exports all three datasets.
fn pg_project(model: &str, fake: &FakeMparticle) -> TestProject {
    let p = TestProject::new(&format!(
        r#"
[connections.pg]
type = "postgres"
url = "{url}"

[feeds.fake]
base_url = "{base}"
api_key = "{KEY}"
api_secret = "{SECRET}"
retry_max_attempts = 2
retry_initial_backoff_ms = 1
rate_limit_per_sec = 0
"#,
        url = db::postgres_url(),
        base = fake.base_url(),
    ));
    p.model("people", model);
    p.pipeline(
        "people",
        r#"
connection = "pg"
data_model = "people"
feed = "fake"

[export]
path = "out/{run_id}/{dataset}.parquet"
compression = "zstd"
"#,
    );
    p
}

fn read_parquet(path: &std::path::Path) -> RecordBatch {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).expect("open"))
        .expect("parquet")
        .build()
        .expect("reader");
    let batches: Vec<RecordBatch> = reader.map(|b| b.expect("batch")).collect();
    one_batch(&batches)
}

#[tokio::test]
async fn one_bad_value_rejects_its_row_and_the_run_goes_on() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let t = db::unique_table("bad_values");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {t} (id int, customer_id text, born date, seen timestamptz, doc jsonb, bio text);
         INSERT INTO {t} VALUES
           (1, 'c1', '2000-01-01', '2024-01-01 00:00:00+00', '{{\"big\": 123456789012345678901234567890}}', 'ok'),
           (2, 'c2', 'infinity', NULL, NULL, NULL),
           (3, 'c3', NULL, '-infinity', NULL, NULL),
           (4, 'c4', NULL, NULL, NULL, repeat('x', 9 * 1024 * 1024)),
           (5, 'c5', '1999-12-31', NULL, '[]', 'fine');"
    ))
    .execute(&pool)
    .await
    .expect("setup");
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = pg_project(
        &format!("SELECT customer_id, born, seen, doc, bio FROM {t} ORDER BY id"),
        &fake,
    );
    let ctx = p.context().await;
    for round in 0..2 {
        // The second run meets the same rows: they are rejected again, never a failure.
        let report = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
            .await
            .expect("run");
        assert_eq!(
            report.record.state,
            RunState::Success,
            "round {round}: {:?}",
            report.record.error
        );
        let c = &report.record.counts;
        assert_eq!(
            (c.records_extracted, c.records_mapped, c.rows_rejected),
            (5, 2, 3)
        );
        let rejected = read_jsonl(&report.files["rejected"]);
        let summary: Vec<(u64, &str, &str)> = rejected
            .iter()
            .map(|r| {
                (
                    r["row"].as_u64().unwrap(),
                    r["reason"].as_str().unwrap(),
                    r["detail"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(summary.len(), 3, "{summary:?}");
        assert_eq!((summary[0].0, summary[0].1), (2, "invalid_value"));
        assert!(
            summary[0].2.starts_with("column `born`: infinite date"),
            "{summary:?}"
        );
        assert!(
            summary[1]
                .2
                .starts_with("column `seen`: infinite timestamp"),
            "{summary:?}"
        );
        assert!(
            summary[2]
                .2
                .starts_with("column `bio`: a value of 9437184 bytes"),
            "{summary:?}"
        );
        assert_eq!(rejected[0]["values"]["customer_id"], "c2");
        assert_eq!(rejected[0]["values"]["born"], serde_json::Value::Null);
    }
    // Kept as dead letters like any rejected row (the same row is kept once).
    assert_eq!(
        ctx.state.count_dead_letters("people").await.unwrap(),
        (0, 3)
    );

    let batches = fake.batches();
    assert_eq!(batches.len(), 4);
    assert_eq!(
        without_id(&batches[0]),
        json!({
            "environment": "development",
            "user_identities": {"customer_id": "c1"},
            "user_attributes": {
                "born": "2000-01-01",
                "seen": "2024-01-01T00:00:00Z",
                "doc": "{\"big\":123456789012345678901234567890}",
                "bio": "ok"
            }
        })
    );
    assert_eq!(
        without_id(&batches[1])["user_identities"],
        json!({"customer_id": "c5"})
    );

    // The rows dataset has every row read (the bad values NULL), the exact jsonb
    // text, and no reserved column.
    let rows = read_parquet(&p.root().join("out/1/rows.parquet"));
    assert_eq!(rows.num_rows(), 5);
    let names: Vec<String> = rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["customer_id", "born", "seen", "doc", "bio"]);
    assert_eq!(
        col::<StringArray>(&rows, "doc").value(0),
        "{\"big\":123456789012345678901234567890}"
    );
    assert!(col::<Date32Array>(&rows, "born").is_null(1));
    assert!(col::<StringArray>(&rows, "bio").is_null(3));
    let rejected = read_parquet(&p.root().join("out/1/rejected.parquet"));
    assert_eq!(
        col::<StringArray>(&rejected, "reason").value(0),
        "invalid_value"
    );
}

#[tokio::test]
async fn huge_values_are_bounded_on_both_read_paths() {
    let Some(_pool) = db::postgres().await else {
        return;
    };
    // 12 rows of 3 MiB text and 5,000-entry arrays: chunks are cut by bytes, the
    // arrays keep the 1001 entries the list limit needs, and a 9 MiB value
    // rejects its row instead of being held.
    let q = query(
        "huge",
        "SELECT g AS id, CASE WHEN g = 7 THEN repeat('y', 9 * 1024 * 1024) ELSE repeat('x', 3 * 1024 * 1024) END AS bio, \
         (SELECT array_agg(repeat('z', 600) || i) FROM generate_series(1, 5000) i) AS tags \
         FROM generate_series(1, 12) g",
    );
    let mut wh = Warehouse::connect(&connection(ConnectionKind::Postgres, &db::postgres_url()))
        .await
        .expect("connect");
    for copy in [true, false] {
        wh.set_pg_copy(copy);
        let (_, rows, batches) = extract_all(&mut wh, &q, 1000).await.expect("extract");
        assert_eq!(rows, 12, "copy {copy}");
        // A chunk is sent once its values reach 4 MiB: at most two rows of 3.5 MiB,
        // or three when one of them lost its value to the 8 MiB limit.
        assert!(
            batches.len() >= 5,
            "copy {copy}: chunks cut by bytes: {}",
            batches.len()
        );
        for b in &batches {
            assert!(
                b.num_rows() <= 3,
                "copy {copy}: {} rows of 3 MiB in a chunk",
                b.num_rows()
            );
            assert!(
                b.get_array_memory_size() < 12 * 1024 * 1024,
                "copy {copy}: a chunk of {} bytes",
                b.get_array_memory_size()
            );
        }
        let reasons = rejected_reasons(&batches);
        let rejected: Vec<usize> = (0..12).filter(|&i| reasons[i].is_some()).collect();
        assert_eq!(rejected, [6], "copy {copy}");
        assert!(
            reasons[6]
                .as_deref()
                .unwrap()
                .contains("column `bio`: a value of 9437184 bytes"),
            "{reasons:?}"
        );
        let all = one_batch(&batches);
        let tags = all
            .column_by_name("tags")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::ListArray>()
            .unwrap();
        let first = tags.value(0);
        let first = first.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(first.len(), 1001, "copy {copy}");
        assert_eq!(first.value(0).chars().count(), 513, "copy {copy}");
    }
    wh.ping().await.expect("usable afterwards");
}

#[tokio::test]
async fn model_without_identity_is_refused_by_validate_and_run() {
    let p = TestProject::new(
        "[connections.lite]\ntype = \"sqlite\"\nurl = \"sqlite://w.db\"\nseed_sql = \"seed.sql\"\n",
    );
    p.file(
        "seed.sql",
        "CREATE TABLE t (plan TEXT, ltv REAL); INSERT INTO t VALUES ('gold', 1.5);",
    );
    p.model("plans", "SELECT plan, ltv FROM t");
    p.pipeline(
        "plans",
        "connection = \"lite\"\ndata_model = \"plans\"\ninput_protection = \"only_read\"\n",
    );
    let (code, stdout, stderr) = p.wsync(&["validate"], &[]);
    assert_ne!(code, 0, "{stdout}\n{stderr}");
    let out = format!("{stdout}{stderr}");
    assert!(
        out.contains("data model `plans` has no identity column"),
        "{out}"
    );
    let (code, stdout, stderr) = p.wsync(&["run", "plans"], &[]);
    assert_ne!(code, 0, "{stdout}\n{stderr}");
    let out = format!("{stdout}{stderr}");
    assert!(out.contains("has no identity column"), "{out}");
}

#[tokio::test]
async fn mysql_nasty_table_every_value_checked() {
    let Some(pool) = db::mysql().await else {
        return;
    };
    let t = db::unique_table("my_nasty");
    let dec = "12345678901234567890123456789012345.123456789012345678901234567890";
    sqlx::raw_sql(&format!(
        r#"CREATE TABLE {t} (
            id INT, customer_id VARCHAR(10), j JSON, tm TIME(6), d DATE, dt DATETIME(6),
            bits BIT(8), st SET('a','b','c'), e ENUM('x','y'), y YEAR, bl BLOB,
            lat VARCHAR(20) CHARACTER SET latin1, u8 VARCHAR(20) CHARACTER SET utf8mb4,
            cs VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
            dec65 DECIMAL(65,30), bu BIGINT UNSIGNED, dmax DOUBLE, dmin DOUBLE
        ) CHARACTER SET utf8mb4;
        SET SESSION sql_mode = 'ALLOW_INVALID_DATES';
        INSERT INTO {t} VALUES
          (1, 'c1', '{{"big": 123456789012345678901234567890, "a": [1, 2]}}', '23:59:59.999999',
           '2024-02-29', '2024-01-02 03:04:05.678901', b'10100101', 'a,c', 'y', 2155, X'00FF10',
           'café', '🎉 Zoë', 'CaSe', '{dec}', 18446744073709551615,
           1.7976931348623157e308, -2.2250738585072014e-308),
          (2, 'c2', NULL, '-12:30:00', NULL, NULL, NULL, '', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
          (3, 'c3', NULL, '838:59:59', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
          (4, 'c4', NULL, NULL, '0000-00-00', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
          (5, 'c5', NULL, NULL, NULL, '2023-02-30 10:00:00', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
          (6, 'c6', NULL, NULL, '2024-00-10', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
          (7, 'c7', '[]', '-00:00:01', NULL, '0000-00-00 00:00:00', NULL, NULL, NULL, 0, '', '', '', '', 0, 0, 0, -0.0),
          (8, 'c8', NULL, '00:00:00', '1000-01-01', '9999-12-31 23:59:59.999999', b'0', 'b', 'x', 1901, NULL, NULL, NULL, NULL,
           '-0.000000000000000000000000000001', 0, 2.2250738585072014e-308, -1.7976931348623157e308);"#
    ))
    .execute(&pool)
    .await
    .expect("setup");
    let mut wh = Warehouse::connect(&connection(ConnectionKind::MySql, &db::mysql_url()))
        .await
        .expect("connect");
    // BIT has no Arrow type: the probe names it with its cast.
    let err = wh
        .probe(&query("nasty", &format!("SELECT * FROM {t}")))
        .await
        .expect_err("BIT refused");
    assert!(
        err.to_string().contains("CAST(bits AS UNSIGNED) AS bits"),
        "{err}"
    );
    let q = query(
        "nasty",
        &format!(
            "SELECT id, customer_id, j, tm, d, dt, CAST(bits AS UNSIGNED) AS bits, st, e, y, bl, lat, u8, cs, dec65, bu, dmax, dmin FROM {t} ORDER BY id"
        ),
    );
    let (cols, rows, batches) = extract_all(&mut wh, &q, 1000).await.expect("extract");
    assert_eq!(rows, 8);
    let kind = |name: &str| cols.iter().find(|c| c.name == name).map(|c| c.kind.clone());
    assert_eq!(kind("j"), Some(ColumnKind::Json), "{cols:?}");
    assert_eq!(
        kind("cs"),
        Some(ColumnKind::Text),
        "utf8mb4_bin text is text: {cols:?}"
    );
    assert_eq!(kind("bl"), Some(ColumnKind::Bytes));
    assert_eq!(kind("bu"), Some(ColumnKind::UInt));
    assert_eq!(kind("dec65"), Some(ColumnKind::Decimal));

    let reasons = rejected_reasons(&batches);
    let reason = |row: usize| reasons[row].clone().unwrap_or_default();
    assert_eq!(reasons[0], None);
    assert!(
        reason(1).starts_with("column `tm`: TIME -12:30:00 is not a time of day"),
        "{reasons:?}"
    );
    assert!(
        reason(2).starts_with("column `tm`: TIME 838:59:59 is not a time of day"),
        "{reasons:?}"
    );
    assert!(
        reason(3).starts_with("column `d`: a zero date (0000-00-00)"),
        "{reasons:?}"
    );
    assert!(
        reason(4).starts_with("column `dt`: 2023-02-30 is not a calendar date"),
        "{reasons:?}"
    );
    assert!(
        reason(5).starts_with("column `d`: 2024-00-10 is not a calendar date"),
        "{reasons:?}"
    );
    assert!(
        reason(6).contains("column `tm`: TIME -0:00:01"),
        "{reasons:?}"
    );
    assert!(
        reason(6).contains("column `dt`: a zero date"),
        "both bad values named: {reasons:?}"
    );
    assert_eq!(reasons[7], None);

    let b = one_batch(&batches);
    assert_eq!(
        col::<StringArray>(&b, "j").value(0),
        r#"{"big":123456789012345678901234567890,"a":[1,2]}"#
    );
    assert_eq!(col::<StringArray>(&b, "j").value(6), "[]");
    let tm = col::<Time64MicrosecondArray>(&b, "tm");
    assert_eq!(tm.value(0), 86_399_999_999);
    assert!(
        tm.is_null(1) && tm.is_null(2) && tm.is_null(6),
        "bad TIMEs are NULL"
    );
    assert_eq!(tm.value(7), 0);
    let d = col::<Date32Array>(&b, "d");
    assert_eq!(d.value(0), 19_782);
    assert!(d.is_null(3) && d.is_null(5));
    assert_eq!(d.value(7), -354_285);
    let dt = col::<TimestampMicrosecondArray>(&b, "dt");
    assert_eq!(dt.value(0), 1_704_164_645_678_901);
    assert!(dt.is_null(4) && dt.is_null(6));
    assert_eq!(dt.value(7), 253_402_300_799_999_999);
    // MariaDB types `CAST(bit AS UNSIGNED)` by its width: read whichever it is.
    let bits: Vec<u64> = match kind("bits") {
        Some(ColumnKind::UInt) => col::<UInt64Array>(&b, "bits").values().to_vec(),
        _ => col::<Int64Array>(&b, "bits")
            .iter()
            .map(|v| v.and_then(|v| u64::try_from(v).ok()).unwrap_or(u64::MAX))
            .collect(),
    };
    assert_eq!((bits[0], bits[7]), (165, 0));
    let st = col::<StringArray>(&b, "st");
    assert_eq!((st.value(0), st.value(1), st.value(7)), ("a,c", "", "b"));
    let e = col::<StringArray>(&b, "e");
    assert_eq!((e.value(0), e.value(7)), ("y", "x"));
    let y = col::<Int64Array>(&b, "y");
    assert_eq!((y.value(0), y.value(6), y.value(7)), (2155, 0, 1901));
    let bl = col::<BinaryArray>(&b, "bl");
    assert_eq!(
        (bl.value(0), bl.value(6)),
        (&[0x00, 0xff, 0x10][..], &b""[..])
    );
    assert_eq!(col::<StringArray>(&b, "lat").value(0), "café");
    assert_eq!(col::<StringArray>(&b, "u8").value(0), "🎉 Zoë");
    assert_eq!(col::<StringArray>(&b, "cs").value(0), "CaSe");
    let dec65 = col::<StringArray>(&b, "dec65");
    assert_eq!(dec65.value(0), dec);
    assert_eq!(dec65.value(6), "0.000000000000000000000000000000");
    assert_eq!(dec65.value(7), "-0.000000000000000000000000000001");
    let bu = col::<UInt64Array>(&b, "bu");
    assert_eq!((bu.value(0), bu.value(6)), (u64::MAX, 0));
    let dmax = col::<Float64Array>(&b, "dmax");
    assert_eq!(
        (dmax.value(0), dmax.value(7)),
        (f64::MAX, 2.2250738585072014e-308)
    );
    let dmin = col::<Float64Array>(&b, "dmin");
    assert_eq!(
        (dmin.value(0), dmin.value(7)),
        (-2.2250738585072014e-308, f64::MIN)
    );
    sqlx::raw_sql(&format!("DROP TABLE {t}"))
        .execute(&pool)
        .await
        .expect("drop");
}

/// A TCP proxy to `upstream` on 127.0.0.1 that stops passing bytes either way
/// once `frozen` is set, as a dropped peer or a NAT that forgot the connection
/// would: the sockets stay open, nothing arrives.
async fn freezing_proxy(
    upstream: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let frozen = Arc::new(AtomicBool::new(false));
    let flag = frozen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut to, flag) in [
                (
                    Box::new(cr) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    flag.clone(),
                ),
                (Box::new(sr) as _, Box::new(cw) as _, flag.clone()),
            ] {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = from.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        while flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    // Keep the other half open: a half-open peer never says goodbye.
                    std::future::pending::<()>().await;
                });
            }
        }
    });
    (addr, frozen)
}

#[tokio::test]
async fn half_open_connections_time_out() {
    let Some(_pool) = db::postgres().await else {
        return;
    };
    let mut url = url::Url::parse(&db::postgres_url()).expect("url");
    let upstream =
        std::net::SocketAddr::new("127.0.0.1".parse().expect("ip"), url.port().unwrap_or(5432));
    let (proxy, frozen) = freezing_proxy(upstream).await;
    url.set_port(Some(proxy.port())).expect("port");
    let mut conn = connection(ConnectionKind::Postgres, url.as_str());
    conn.statement_timeout = std::time::Duration::from_secs(1);
    let mut wh = Warehouse::connect(&conn).await.expect("connect");
    let q = query("stuck", "SELECT 1 AS id");
    let columns = wh.probe(&q).await.expect("probe");
    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    let started = std::time::Instant::now();
    let (tx, _rx) = tokio::sync::mpsc::channel(2);
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        wh.extract(&q, &columns, 10, tx),
    )
    .await
    .expect("the read must not hang")
    .expect_err("a dead connection fails the read");
    let waited = started.elapsed();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("sent nothing for 31s"), "{err}");
    assert!(
        waited >= std::time::Duration::from_secs(31) && waited < std::time::Duration::from_secs(90),
        "{waited:?}"
    );
}

#[tokio::test]
async fn mysql_huge_values_are_cut_on_the_server() {
    let Some(pool) = db::mysql().await else {
        return;
    };
    let t = db::unique_table("my_huge");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {t} (id INT, bio LONGTEXT, raw LONGBLOB, doc JSON) CHARACTER SET utf8mb4;
         INSERT INTO {t} VALUES (1, REPEAT('x', 9 * 1024 * 1024), 'ok', '[1]'),
           (2, REPEAT('y', 3 * 1024 * 1024), REPEAT('z', 9 * 1024 * 1024), '{{\"n\": 12345678901234567890123}}'),
           (3, 'small', X'00', NULL);"
    ))
    .execute(&pool)
    .await
    .expect("setup");
    let mut wh = Warehouse::connect(&connection(ConnectionKind::MySql, &db::mysql_url()))
        .await
        .expect("connect");
    let q = query(
        "huge",
        &format!("SELECT id, bio, raw, doc FROM {t} ORDER BY id"),
    );
    let (_, rows, batches) = extract_all(&mut wh, &q, 1000).await.expect("extract");
    assert_eq!(rows, 3);
    let reasons = rejected_reasons(&batches);
    assert_eq!(
        reasons[0].as_deref().unwrap_or_default(),
        "column `bio`: a value of 9437184 bytes is larger than the 8 MiB wsync reads (a user attribute holds at most 4096 characters): cut it in the model, e.g. LEFT(col, 4096)"
    );
    assert!(
        reasons[1]
            .as_deref()
            .unwrap_or_default()
            .starts_with("column `raw`: a value of 9437184 bytes"),
        "{reasons:?}"
    );
    assert_eq!(reasons[2], None);
    let b = one_batch(&batches);
    let bio = col::<StringArray>(&b, "bio");
    assert!(bio.is_null(0));
    assert_eq!(bio.value(1).len(), 3 * 1024 * 1024);
    assert_eq!(bio.value(2), "small");
    assert_eq!(
        col::<StringArray>(&b, "doc").value(1),
        r#"{"n":12345678901234567890123}"#
    );
    assert_eq!(col::<BinaryArray>(&b, "raw").value(2), [0u8]);
    sqlx::raw_sql(&format!("DROP TABLE {t}"))
        .execute(&pool)
        .await
        .expect("drop");
}
