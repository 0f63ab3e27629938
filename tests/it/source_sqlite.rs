//! `Warehouse` against SQLite files: seeding, type table, dynamic values,
//! chunking and timestamp windows over mixed text formats.

use arrow::array::{
    Array, BinaryArray, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use chrono::{NaiveDate, TimeZone, Utc};
use wsync::config::model::{ConnectionKind, IteratorDataType};
use wsync::source::{ColumnKind, IteratorFilter, IteratorValue, SourceError, Warehouse};

use crate::support::db::{connection, extract_all, one_batch, query};

/// A fresh seeded SQLite warehouse in a temp dir.
async fn seeded(seed: &str) -> (tempfile::TempDir, Warehouse) {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed_path = dir.path().join("seed.sql");
    std::fs::write(&seed_path, seed).expect("write seed");
    let db = dir.path().join(".wsync").join("demo.db");
    let mut conn = connection(
        ConnectionKind::Sqlite,
        &format!("sqlite://{}", db.display()),
    );
    conn.seed_sql = Some(seed_path);
    let wh = Warehouse::connect(&conn).await.expect("connect");
    assert!(db.exists());
    (dir, wh)
}

#[tokio::test]
async fn source_sqlite_describe_of_expression_columns() {
    let (_dir, mut wh) = seeded("CREATE TABLE t (x INTEGER);").await;
    let q = query("expr", "SELECT 'a' AS x, 1 AS y, 1.5 AS z, NULL AS n");
    let cols = wh.probe(&q).await.expect("probe");
    let found: Vec<(&str, &str)> = cols
        .iter()
        .map(|c| (c.name.as_str(), c.sql_type.as_str()))
        .collect();
    // What sqlx 0.8 reports for expression columns (see `types::sqlite_kind`).
    assert_eq!(
        found,
        vec![
            ("x", "TEXT"),
            ("y", "INTEGER"),
            ("z", "REAL"),
            ("n", "NULL")
        ]
    );
    let (_, rows, batches) = extract_all(&mut wh, &q, 10).await.expect("extract");
    assert_eq!(rows, 1);
    let b = one_batch(&batches);
    let n = b
        .column(3)
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("n is text");
    assert!(n.is_null(0));
}

#[tokio::test]
async fn source_sqlite_types_and_values() {
    let seed = "
        CREATE TABLE users (
            id INTEGER PRIMARY KEY, name TEXT, score REAL, active BOOLEAN, born DATE,
            seen DATETIME, balance DECIMAL(20,2), doc JSON, raw BLOB, big BIGINT
        );
        INSERT INTO users VALUES
          (1, 'Zoë 🎉 ''quoted''\nline', 1.5, 1, '2000-02-29', '2024-01-02 03:04:05.678',
           12.5, '{\"a\": [1, 2]}', X'00FF', 9007199254740993),
          (2, NULL, NULL, 0, NULL, '2024-01-02T03:04:05+02:00', NULL, NULL, NULL, -1),
          (3, 42, 7, 'true', '2024-05-06', 1700000000, 3, '[]', 'txt', NULL);
    ";
    let (_dir, mut wh) = seeded(seed).await;
    let q = query("users", "SELECT * FROM users ORDER BY id");
    let (cols, rows, batches) = extract_all(&mut wh, &q, 1000).await.expect("extract");
    assert_eq!(rows, 3);
    let kinds: Vec<ColumnKind> = cols.iter().map(|c| c.kind.clone()).collect();
    assert_eq!(
        kinds,
        vec![
            ColumnKind::Int,
            ColumnKind::Text,
            ColumnKind::Float64,
            ColumnKind::Bool,
            ColumnKind::Date,
            ColumnKind::Timestamp,
            // sqlx does not parse `DECIMAL(20,2)` or `JSON`; it falls back to the
            // type inferred from the query plan (see `types::sqlite_kind`).
            ColumnKind::Float64,
            ColumnKind::Text,
            ColumnKind::Bytes,
            ColumnKind::Int,
        ]
    );
    let b = one_batch(&batches);
    let name = b
        .column(1)
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("name");
    assert_eq!(name.value(0), "Zoë 🎉 'quoted'\nline");
    assert!(name.is_null(1));
    assert_eq!(name.value(2), "42");
    let score = b
        .column(2)
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("score");
    assert_eq!(score.value(0), 1.5);
    assert_eq!(score.value(2), 7.0);
    let active = b
        .column(3)
        .as_any()
        .downcast_ref::<BooleanArray>()
        .expect("active");
    assert!(active.value(0));
    assert!(!active.value(1));
    assert!(active.value(2));
    let born = b
        .column(4)
        .as_any()
        .downcast_ref::<Date32Array>()
        .expect("born");
    assert_eq!(born.value(0), 11_016); // 2000-02-29
    let seen = b
        .column(5)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .expect("seen");
    assert_eq!(
        seen.value(0),
        Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5)
            .unwrap()
            .timestamp_micros()
            + 678_000
    );
    // The offset is applied: 03:04:05+02:00 is 01:04:05 UTC.
    assert_eq!(
        seen.value(1),
        Utc.with_ymd_and_hms(2024, 1, 2, 1, 4, 5)
            .unwrap()
            .timestamp_micros()
    );
    // Integers are Unix seconds.
    assert_eq!(seen.value(2), 1_700_000_000_000_000);
    let balance = b
        .column(6)
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("balance");
    assert_eq!(balance.value(0), 12.5);
    assert_eq!(balance.value(2), 3.0);
    let doc = b
        .column(7)
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("doc");
    assert_eq!(doc.value(0), r#"{"a": [1, 2]}"#);
    let raw = b
        .column(8)
        .as_any()
        .downcast_ref::<BinaryArray>()
        .expect("raw");
    assert_eq!(raw.value(0), &[0x00, 0xFF]);
    assert_eq!(raw.value(2), b"txt");
    let big = b
        .column(9)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("big");
    assert_eq!(big.value(0), 9_007_199_254_740_993);
    assert!(big.is_null(2));
}

#[tokio::test]
async fn source_sqlite_bad_value_rejects_its_row_naming_the_column() {
    let seed =
        "CREATE TABLE t (id INTEGER, n INTEGER); INSERT INTO t VALUES (1, 1), (2, 'abc'), (3, 3);";
    let (_dir, mut wh) = seeded(seed).await;
    let (_, rows, batches) = extract_all(&mut wh, &query("t", "SELECT * FROM t ORDER BY id"), 10)
        .await
        .expect("one bad value does not fail the read");
    assert_eq!(rows, 3);
    let reasons = crate::support::db::rejected_reasons(&batches);
    assert_eq!(reasons[0], None);
    assert_eq!(
        reasons[1].as_deref(),
        Some("column `n`: text \"abc\" is not an integer")
    );
    assert_eq!(reasons[2], None);
    let n = batches[0]
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("n");
    assert!(n.is_null(1), "the bad value is NULL");
    assert_eq!(n.value(2), 3);
}

#[tokio::test]
async fn source_sqlite_chunking_and_empty_result() {
    let seed = "
        CREATE TABLE n (i INTEGER);
        WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2500)
        INSERT INTO n SELECT x FROM c;
    ";
    let (_dir, mut wh) = seeded(seed).await;
    let (_, rows, batches) = extract_all(&mut wh, &query("n", "SELECT i FROM n ORDER BY i"), 1000)
        .await
        .expect("extract");
    assert_eq!(rows, 2500);
    let sizes: Vec<usize> = batches.iter().map(|b| b.num_rows()).collect();
    assert_eq!(sizes, vec![1000, 1000, 500]);
    let (_, rows, batches) = extract_all(&mut wh, &query("n", "SELECT i FROM n WHERE i < 0"), 1000)
        .await
        .expect("extract");
    assert_eq!(rows, 0);
    assert!(batches.is_empty());
}

#[tokio::test]
async fn source_sqlite_windows_compare_normalised_timestamps() {
    let seed = "
        CREATE TABLE e (id INTEGER, ts DATETIME, d DATE);
        INSERT INTO e VALUES
          (1, '2024-01-01 00:00:00', '2024-01-01'),
          (2, '2024-01-01T12:00:00.000', '2024-01-02'),
          (3, '2024-01-02 00:00:00+00:00', '2024-01-03'),
          (4, '2024-01-02 12:00:00', '2024-01-04');
    ";
    let (_dir, mut wh) = seeded(seed).await;
    let ts = |d: u32, h: u32| {
        IteratorValue::TimestampTz(Utc.with_ymd_and_hms(2024, 1, d, h, 0, 0).unwrap())
    };
    let mut q = query("e", "SELECT * FROM e");
    q.filter = Some(IteratorFilter {
        column: "ts".into(),
        data_type: IteratorDataType::TimestampTz,
        lower: Some(ts(1, 12)),
        upper: Some(ts(2, 12)),
    });
    let (_, _, batches) = extract_all(&mut wh, &q, 100).await.expect("extract");
    let b = one_batch(&batches);
    let ids = b
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("ids");
    assert_eq!(ids.values().to_vec(), vec![2, 3]);
    assert_eq!(wh.max_iterator(&q).await.expect("max"), Some(ts(2, 12)));

    let day = |d: u32| IteratorValue::Date(NaiveDate::from_ymd_opt(2024, 1, d).unwrap());
    q.filter = Some(IteratorFilter {
        column: "d".into(),
        data_type: IteratorDataType::Date,
        lower: Some(day(2)),
        upper: Some(day(4)),
    });
    let (_, _, batches) = extract_all(&mut wh, &q, 100).await.expect("extract");
    let ids = one_batch(&batches)
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("ids")
        .clone();
    assert_eq!(ids.values().to_vec(), vec![2, 3]);
}

#[tokio::test]
async fn source_sqlite_is_read_only_and_guarded() {
    let (_dir, mut wh) = seeded("CREATE TABLE t (id INTEGER);").await;
    let err = wh
        .probe(&query("evil", "SELECT 1; DROP TABLE t"))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, SourceError::RefusedSql { line: 1, .. }),
        "{err}"
    );
    // The connection itself is read-only, whatever slips past the guard.
    let err = wh
        .query_scalar_text("INSERT INTO t VALUES (1) RETURNING 'x'")
        .await
        .expect_err("read-only");
    assert!(err.to_string().contains("readonly"), "{err}");
}

#[tokio::test]
async fn source_sqlite_seed_failure_removes_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed_path = dir.path().join("seed.sql");
    std::fs::write(
        &seed_path,
        "CREATE TABLE t (id INTEGER); INSERT INTO nope VALUES (1);",
    )
    .expect("write");
    let db = dir.path().join("demo.db");
    let mut conn = connection(
        ConnectionKind::Sqlite,
        &format!("sqlite://{}", db.display()),
    );
    conn.seed_sql = Some(seed_path);
    let err = Warehouse::connect(&conn).await.expect_err("seed fails");
    assert!(matches!(err, SourceError::Seed { .. }), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(!db.exists());
}

/// Two runs opening a not-yet-seeded SQLite warehouse at once (a daemon's
/// first pass) both get the seeded database; neither sees it half made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_opens_seed_the_database_once() {
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed.sql");
        std::fs::write(
            &seed,
            "CREATE TABLE people (id INTEGER); INSERT INTO people VALUES (1), (2), (3);",
        )
        .unwrap();
        let mut conn = connection(
            ConnectionKind::Sqlite,
            &format!("sqlite://{}", dir.path().join("wh.db").display()),
        );
        conn.seed_sql = Some(seed);
        let (a, b) = tokio::join!(Warehouse::connect(&conn), Warehouse::connect(&conn));
        for mut wh in [a.unwrap(), b.unwrap()] {
            let (_, rows, _) = extract_all(&mut wh, &query("people", "SELECT id FROM people"), 10)
                .await
                .unwrap();
            assert_eq!(rows, 3);
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("seeding"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
