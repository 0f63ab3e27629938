//! `Warehouse` against the real MariaDB: every supported type with nasty values,
//! unsupported types, syntax errors, chunking, windows and the read-only session.

use arrow::array::{
    Array, BinaryArray, BooleanArray, Date32Array, Float32Array, Float64Array, Int64Array,
    StringArray, Time64MicrosecondArray, TimestampMicrosecondArray, UInt64Array,
};
use chrono::{NaiveDate, TimeZone, Utc};
use wsync::config::model::{ConnectionKind, IteratorDataType};
use wsync::source::{ColumnKind, IteratorFilter, IteratorValue, SourceError, Warehouse};

use crate::support::db::{self, connection, extract_all, one_batch, query, unique_table};

/// A pool for setup and a `Warehouse` for the code under test, or `None` to skip.
async fn setup() -> Option<(sqlx::MySqlPool, Warehouse)> {
    let pool = db::mysql().await?;
    let wh = Warehouse::connect(&connection(ConnectionKind::MySql, &db::mysql_url()))
        .await
        .expect("warehouse connect");
    Some((pool, wh))
}

/// Run a setup script (several statements) on the pool.
async fn exec(pool: &sqlx::MySqlPool, sql: &str) {
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
async fn source_mysql_every_supported_type() {
    let Some((pool, mut wh)) = setup().await else {
        return;
    };
    let t = unique_table("my_types");
    exec(
        &pool,
        &format!(
            r#"CREATE TABLE {t} (
                id INT, ti TINYINT, si SMALLINT, bi BIGINT, iu INT UNSIGNED, bu BIGINT UNSIGNED,
                bo BOOLEAN, f FLOAT, d DOUBLE, dec1 DECIMAL(30,9), dec2 DECIMAL(10,2),
                c CHAR(3), vc VARCHAR(6000), tx TEXT, lt LONGTEXT, e ENUM('a','b'), st SET('x','y'),
                bin VARBINARY(10), bl BLOB, dt DATE, tm TIME(6), dtm DATETIME(6), ts TIMESTAMP(6) NULL,
                y YEAR
            ) CHARACTER SET utf8mb4;
            SET time_zone = '+00:00';
            INSERT INTO {t} VALUES
            (1, -128, -32768, 9007199254740993, 4294967295, 18446744073709551615,
             1, 1.5, 1e308, 12345678901234567890.123456789, 12.50,
             'ab', REPEAT('é', 5000), 'Zoë 🎉 ''q'' "dq"\nline2', '', 'b', 'x,y',
             X'00FF10', X'', '2000-02-29', '23:59:59.999999', '2024-01-02 03:04:05.678901',
             '2024-01-02 03:04:05.5', 2024),
            (2, NULL, NULL, -9223372036854775808, NULL, NULL, 0, NULL, -0.5, -0.000000001, -0.01,
             NULL, NULL, NULL, NULL, NULL, '', NULL, NULL, '1970-01-01', '00:00:00', '1969-12-31 23:59:59',
             '1970-01-01 00:00:01', NULL);"#
        ),
    )
    .await;
    let q = query(
        "types",
        &format!("SELECT * FROM {t} ORDER BY id -- trailing comment"),
    );
    let (cols, rows, batches) = extract_all(&mut wh, &q, 1000).await.expect("extract");
    assert_eq!(rows, 2);
    let kind = |name: &str| cols.iter().find(|c| c.name == name).map(|c| c.kind.clone());
    assert_eq!(kind("bo"), Some(ColumnKind::Bool));
    assert_eq!(kind("iu"), Some(ColumnKind::Int));
    assert_eq!(kind("bu"), Some(ColumnKind::UInt));
    assert_eq!(kind("f"), Some(ColumnKind::Float32));
    assert_eq!(kind("dec1"), Some(ColumnKind::Decimal));
    assert_eq!(kind("e"), Some(ColumnKind::Text));
    assert_eq!(kind("bin"), Some(ColumnKind::Bytes));
    assert_eq!(kind("dtm"), Some(ColumnKind::Timestamp));
    assert_eq!(kind("ts"), Some(ColumnKind::TimestampTz));
    assert_eq!(kind("y"), Some(ColumnKind::Int));

    let b = one_batch(&batches);
    assert_eq!(col::<Int64Array>(&b, "ti").value(0), -128);
    assert_eq!(col::<Int64Array>(&b, "si").value(0), -32768);
    let bi = col::<Int64Array>(&b, "bi");
    assert_eq!(bi.value(0), 9_007_199_254_740_993);
    assert_eq!(bi.value(1), i64::MIN);
    assert_eq!(col::<Int64Array>(&b, "iu").value(0), 4_294_967_295);
    assert_eq!(col::<UInt64Array>(&b, "bu").value(0), u64::MAX);
    let bo = col::<BooleanArray>(&b, "bo");
    assert!(bo.value(0));
    assert!(!bo.value(1));
    assert_eq!(col::<Float32Array>(&b, "f").value(0), 1.5);
    assert!(col::<Float32Array>(&b, "f").is_null(1));
    let d = col::<Float64Array>(&b, "d");
    assert_eq!(d.value(0), 1e308);
    assert_eq!(d.value(1), -0.5);
    let dec1 = col::<StringArray>(&b, "dec1");
    assert_eq!(dec1.value(0), "12345678901234567890.123456789");
    assert_eq!(dec1.value(1), "-0.000000001");
    let dec2 = col::<StringArray>(&b, "dec2");
    assert_eq!(dec2.value(0), "12.50");
    assert_eq!(dec2.value(1), "-0.01");
    assert_eq!(col::<StringArray>(&b, "c").value(0), "ab");
    assert_eq!(col::<StringArray>(&b, "vc").value(0).chars().count(), 5000);
    let tx = col::<StringArray>(&b, "tx");
    assert_eq!(tx.value(0), "Zoë 🎉 'q' \"dq\"\nline2");
    assert!(tx.is_null(1));
    assert_eq!(col::<StringArray>(&b, "lt").value(0), "");
    assert_eq!(col::<StringArray>(&b, "e").value(0), "b");
    assert_eq!(col::<StringArray>(&b, "st").value(0), "x,y");
    assert_eq!(col::<BinaryArray>(&b, "bin").value(0), &[0x00, 0xff, 0x10]);
    assert_eq!(col::<BinaryArray>(&b, "bl").value(0), b"");
    let dt = col::<Date32Array>(&b, "dt");
    assert_eq!(dt.value(0), 11_016);
    assert_eq!(dt.value(1), 0);
    let tm = col::<Time64MicrosecondArray>(&b, "tm");
    assert_eq!(tm.value(0), 86_399_999_999);
    assert_eq!(tm.value(1), 0);
    let dtm = col::<TimestampMicrosecondArray>(&b, "dtm");
    assert_eq!(
        dtm.value(0),
        Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5)
            .unwrap()
            .timestamp_micros()
            + 678_901
    );
    assert_eq!(dtm.value(1), -1_000_000);
    let ts = col::<TimestampMicrosecondArray>(&b, "ts");
    assert_eq!(
        ts.value(0),
        Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5)
            .unwrap()
            .timestamp_micros()
            + 500_000
    );
    assert_eq!(ts.value(1), 1_000_000);
    assert_eq!(col::<Int64Array>(&b, "y").value(0), 2024);
    exec(&pool, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn source_mysql_unsupported_type_names_column_and_cast() {
    let Some((pool, mut wh)) = setup().await else {
        return;
    };
    let t = unique_table("my_bits");
    exec(&pool, &format!("CREATE TABLE {t} (id INT, flags BIT(3))")).await;
    let q = query(
        "bits",
        &format!("SELECT id, flags, POINT(1, 2) AS loc FROM {t}"),
    );
    let err = wh.probe(&q).await.expect_err("unsupported");
    let text = err.to_string();
    match &err {
        SourceError::UnsupportedType { columns, .. } => assert_eq!(columns.len(), 2, "{text}"),
        other => panic!("unexpected {other}"),
    }
    assert!(text.contains("`flags` has type BIT"), "{text}");
    assert!(text.contains("CAST(flags AS UNSIGNED) AS flags"), "{text}");
    assert!(text.contains("ST_AsText(loc) AS loc"), "{text}");
    exec(&pool, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn source_mysql_syntax_error_carries_database_message() {
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
            assert!(message.contains("syntax"), "{message}");
        }
        other => panic!("unexpected {other}"),
    }
    wh.ping().await.expect("ping");
}

#[tokio::test]
async fn source_mysql_chunking_and_empty() {
    let Some((_pool, mut wh)) = setup().await else {
        return;
    };
    let q = query("gen", "SELECT seq AS id FROM seq_1_to_2500");
    let (_, rows, batches) = extract_all(&mut wh, &q, 1000).await.expect("extract");
    assert_eq!(rows, 2500);
    assert_eq!(
        batches.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
        vec![1000, 1000, 500]
    );
    let q = query("none", "SELECT seq AS id FROM seq_1_to_10 WHERE seq < 0");
    let (_, rows, batches) = extract_all(&mut wh, &q, 1000).await.expect("extract");
    assert_eq!(rows, 0);
    assert!(batches.is_empty());
}

#[tokio::test]
async fn source_mysql_windows_include_lower_exclude_upper() {
    let Some((pool, mut wh)) = setup().await else {
        return;
    };
    let t = unique_table("my_window");
    exec(
        &pool,
        &format!(
            "CREATE TABLE {t} (id INT, ts TIMESTAMP NULL, d DATE);
             SET time_zone = '+00:00';
             INSERT INTO {t} VALUES
               (1, '2024-01-01 00:00:00', '2024-01-01'),
               (2, '2024-01-01 12:00:00', '2024-01-02'),
               (3, '2024-01-02 00:00:00', '2024-01-03'),
               (4, '2024-01-02 12:00:00', '2024-01-04');"
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
    let mut q = query("w", &format!("SELECT id, ts, d FROM {t}"));
    let ts = |d: u32, h: u32| {
        IteratorValue::TimestampTz(Utc.with_ymd_and_hms(2024, 1, d, h, 0, 0).unwrap())
    };
    q.filter = Some(IteratorFilter {
        column: "ts".into(),
        data_type: IteratorDataType::TimestampTz,
        lower: Some(ts(1, 12)),
        upper: Some(ts(2, 12)),
    });
    let (_, _, batches) = extract_all(&mut wh, &q, 100).await.expect("extract");
    assert_eq!(ids(&batches), vec![2, 3]);
    assert_eq!(wh.max_iterator(&q).await.expect("max"), Some(ts(2, 12)));

    let day = |d: u32| IteratorValue::Date(NaiveDate::from_ymd_opt(2024, 1, d).unwrap());
    q.filter = Some(IteratorFilter {
        column: "d".into(),
        data_type: IteratorDataType::Date,
        lower: Some(day(2)),
        upper: Some(day(4)),
    });
    let (_, _, batches) = extract_all(&mut wh, &q, 100).await.expect("extract");
    assert_eq!(ids(&batches), vec![2, 3]);

    q.filter = Some(IteratorFilter {
        column: "id".into(),
        data_type: IteratorDataType::Integer,
        lower: Some(IteratorValue::Integer(2)),
        upper: Some(IteratorValue::Integer(4)),
    });
    let (_, _, batches) = extract_all(&mut wh, &q, 100).await.expect("extract");
    assert_eq!(ids(&batches), vec![2, 3]);
    assert_eq!(
        wh.max_iterator(&q).await.expect("max"),
        Some(IteratorValue::Integer(4))
    );
    exec(&pool, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn source_mysql_session_is_read_only_utc() {
    let Some((pool, mut wh)) = setup().await else {
        return;
    };
    assert_eq!(
        wh.query_scalar_text("SELECT CAST(@@session.time_zone AS CHAR)")
            .await
            .expect("tz"),
        Some("+00:00".to_owned())
    );
    let t = unique_table("my_ro");
    exec(&pool, &format!("CREATE TABLE {t} (id INT)")).await;
    let err = wh
        .query_scalar_text(&format!("INSERT INTO {t} VALUES (1)"))
        .await
        .expect_err("read-only session");
    assert!(
        err.to_string().to_lowercase().contains("read only"),
        "{err}"
    );
    exec(&pool, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn source_mysql_statement_timeout() {
    let Some(_pool) = db::mysql().await else {
        return;
    };
    let mut conn = connection(ConnectionKind::MySql, &db::mysql_url());
    conn.statement_timeout = std::time::Duration::from_secs(1);
    let mut wh = Warehouse::connect(&conn).await.expect("connect");
    let err = extract_all(
        &mut wh,
        &query("slow", "SELECT SLEEP(5) AS x FROM seq_1_to_1"),
        10,
    )
    .await;
    // MariaDB's max_statement_time aborts the query; MySQL's max_execution_time
    // makes SLEEP return 1 early instead.
    match err {
        Err(SourceError::Timeout { seconds: 1, .. }) => {}
        Ok((_, rows, _)) => assert_eq!(rows, 1),
        Err(other) => panic!("unexpected {other}"),
    }
    wh.ping().await.expect("usable afterwards");
}
