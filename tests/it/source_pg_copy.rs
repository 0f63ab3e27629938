//! The PostgreSQL `COPY … (FORMAT binary)` fast path against the row protocol on
//! the real PostgreSQL: the same Arrow arrays chunk by chunk for every supported
//! type and nasty value; windows with inlined bounds; Redshift staying on the
//! row protocol; and the connection staying usable after a COPY that was refused,
//! abandoned or failed mid-stream.

use arrow::array::RecordBatch;
use chrono::{NaiveDate, TimeZone, Utc};
use wsync::config::model::{ConnectionKind, IteratorDataType};
use wsync::source::{IteratorFilter, IteratorValue, ReadPath, SourceError, Warehouse};

use crate::support::db::{self, connection, extract_all, query, unique_table};

async fn warehouse(kind: ConnectionKind) -> Warehouse {
    Warehouse::connect(&connection(kind, &db::postgres_url()))
        .await
        .expect("warehouse connect")
}

/// Extract `q` with COPY on, then off; check which path ran; return both.
async fn both_paths(
    wh: &mut Warehouse,
    q: &wsync::source::SourceQuery,
    chunk_rows: usize,
) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
    wh.set_pg_copy(true);
    let (_, copy_rows, copy) = extract_all(wh, q, chunk_rows).await.expect("copy path");
    assert_eq!(wh.last_read_path(), Some(ReadPath::Copy));
    wh.set_pg_copy(false);
    let (_, row_rows, rows) = extract_all(wh, q, chunk_rows).await.expect("row path");
    assert_eq!(wh.last_read_path(), Some(ReadPath::Rows));
    wh.set_pg_copy(true);
    assert_eq!(copy_rows, row_rows);
    (copy, rows)
}

fn assert_same_chunks(copy: &[RecordBatch], rows: &[RecordBatch]) {
    assert_eq!(copy.len(), rows.len(), "chunk count");
    for (i, (c, r)) in copy.iter().zip(rows).enumerate() {
        assert_eq!(c.schema(), r.schema(), "chunk {i} schema");
        for (j, (a, b)) in c.columns().iter().zip(r.columns()).enumerate() {
            // `ArrayData` equality compares values and validity, and treats NaN
            // payloads bit for bit, so NaN matches NaN.
            assert_eq!(
                a.to_data(),
                b.to_data(),
                "chunk {i} column {}",
                c.schema().field(j).name()
            );
        }
    }
}

#[tokio::test]
async fn copy_and_row_paths_build_identical_chunks_for_every_type() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let t = unique_table("pg_copy_types");
    sqlx::raw_sql(&format!(
        r#"CREATE DOMAIN {t}_d AS int4;
        CREATE TYPE {t}_e AS ENUM ('red', 'green');
        CREATE TABLE {t} (
            id int8, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, n numeric, n2 numeric(10,2),
            b bool, tx text, vc varchar(10), ch char(3), nm name, by bytea, d date, tm time,
            ts timestamp, tz timestamptz, u uuid, j json, jb jsonb, arr text[], ints int8[],
            fl float8[], nums numeric[], dates date[], tss timestamptz[], bools bool[],
            grid int4[], dom {t}_d, en {t}_e, ens {t}_e[]
        );
        INSERT INTO {t} VALUES
        (1, -32768, 2147483647, 9007199254740993, 'NaN', 'Infinity', 'NaN', 12.50,
         true, E'Zoë 🎉 ''q'' "dq"\nline2\ttab\\', 'abc', 'ab', 'pg_class', '\x00ff10', '2000-02-29',
         '23:59:59.999999', '2024-01-02 03:04:05.678901', '2024-01-02 03:04:05+02',
         'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '{{"b": 1,  "a": [1, 2]}}', '{{"z": null, "a": "é"}}',
         ARRAY['x', NULL, 'y'], ARRAY[1, NULL, 9223372036854775807], ARRAY['NaN', '-Infinity', 1.5]::float8[],
         ARRAY[1.10, NULL, 'NaN', -0.000001]::numeric[], ARRAY['4713-01-01 BC', '9999-12-31']::date[],
         ARRAY['2024-01-01 00:00:00+00', NULL]::timestamptz[], ARRAY[true, NULL, false],
         '{{{{1,2}},{{3,4}}}}', 7, 'red', ARRAY['green', 'red']::{t}_e[]),
        (2, NULL, NULL, -9223372036854775808, '-Infinity', '-Infinity', 'Infinity', NULL,
         false, repeat('é', 5000), NULL, NULL, NULL, '', '1970-01-01', '00:00:00',
         '1969-12-31 23:59:59', '1970-01-01 00:00:00+00', NULL, 'null', '[]',
         (SELECT array_agg('v' || g) FROM generate_series(1, 1500) g), '{{}}', '{{}}', '{{}}', NULL, NULL,
         '{{}}', '{{}}', NULL, 'green', '{{}}'),
        (3, 0, 0, 0, -0.0, '-0', '-Infinity', 0, NULL, '', '', '   ', '', NULL, '4713-01-01 BC',
         NULL, '4713-01-01 00:00:00 BC', '0001-01-01 00:00:00+00', NULL, NULL, NULL, ARRAY[''],
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (4, NULL, -2147483648, 1, 3.4028235e38, 1.7976931348623157e308,
         12345678901234567890.123456789, -0.01, NULL, NULL, NULL, NULL, NULL, NULL, '5874897-12-31',
         '12:00:00.000001', '200000-12-31 23:59:59.999999', '200000-12-31 23:59:59.999999+00',
         '00000000-0000-0000-0000-000000000000', '"\u00e9"', '{{"a": {{"b": [true, 1.5e300]}}}}',
         NULL, NULL, NULL, ARRAY[99999999999999999999999.99999999]::numeric[], NULL, NULL, NULL,
         NULL, -1, NULL, NULL),
        (5, NULL, NULL, NULL, 1.17549435e-38, 5e-324, 0.000000000000000000000000001, 99999999.99,
         NULL, NULL, NULL, NULL, NULL, NULL, '9999-12-31', NULL, '2000-01-01 00:00:00',
         '1999-12-31 23:59:59.999999+00', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL);
        INSERT INTO {t} (id, i4, tx, n, tz, arr)
        SELECT g, g, 'row ' || g, g * 1.5, TIMESTAMPTZ '2024-01-01' + g * INTERVAL '1 minute',
               ARRAY['a' || g, NULL]
        FROM generate_series(6, 40) g;"#
    ))
    .execute(&pool)
    .await
    .expect("setup");

    let mut wh = warehouse(ConnectionKind::Postgres).await;
    let q = query("types", &format!("SELECT * FROM {t} ORDER BY id"));
    // Chunks of 3 rows: 14 chunks, the last one partial.
    let (copy, rows) = both_paths(&mut wh, &q, 3).await;
    assert_eq!(copy.len(), 14);
    assert_eq!(copy.iter().map(RecordBatch::num_rows).sum::<usize>(), 40);
    assert_same_chunks(&copy, &rows);

    // One big chunk too, so no chunk boundary hides a difference.
    let (copy, rows) = both_paths(&mut wh, &q, 1000).await;
    assert_eq!(copy.len(), 1);
    assert_same_chunks(&copy, &rows);

    sqlx::raw_sql(&format!(
        "DROP TABLE {t}; DROP TYPE {t}_e; DROP DOMAIN {t}_d"
    ))
    .execute(&pool)
    .await
    .expect("cleanup");
}

#[tokio::test]
async fn copy_windows_select_the_same_rows_as_bound_parameters() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let t = unique_table("pg_copy_window");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {t} (id int8, tz timestamptz, ts timestamp, d date);
         INSERT INTO {t}
         SELECT g, TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * INTERVAL '1.5 second',
                TIMESTAMP '1999-12-31 23:59:59' + g * INTERVAL '0.25 second',
                DATE '2023-12-25' + g
         FROM generate_series(1, 50) g;"
    ))
    .execute(&pool)
    .await
    .expect("setup");
    let mut wh = warehouse(ConnectionKind::Postgres).await;
    let mut q = query("w", &format!("SELECT * FROM {t}"));
    let micro = |s: i64, us: u32| {
        Utc.timestamp_opt(1_704_067_200 + s, us * 1000 + 999)
            .single()
            .expect("time")
    };
    let filters = [
        (
            IteratorDataType::TimestampTz,
            Some(IteratorValue::TimestampTz(micro(6, 0))),
            Some(IteratorValue::TimestampTz(micro(30, 500_000))),
        ),
        (
            IteratorDataType::TimestampNtz,
            NaiveDate::from_ymd_opt(1999, 12, 31)
                .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 999_999_500))
                .map(IteratorValue::Timestamp),
            None,
        ),
        (
            IteratorDataType::Date,
            None,
            NaiveDate::from_ymd_opt(2024, 1, 10).map(IteratorValue::Date),
        ),
        (
            IteratorDataType::Integer,
            Some(IteratorValue::Integer(-5)),
            Some(IteratorValue::Integer(17)),
        ),
    ];
    for (data_type, lower, upper) in filters {
        let column = match data_type {
            IteratorDataType::TimestampTz => "tz",
            IteratorDataType::TimestampNtz => "ts",
            IteratorDataType::Date => "d",
            _ => "id",
        };
        q.filter = Some(IteratorFilter {
            column: column.into(),
            data_type,
            lower,
            upper,
        });
        let (copy, rows) = both_paths(&mut wh, &q, 7).await;
        assert!(!copy.is_empty(), "{column}: some rows");
        assert_same_chunks(&copy, &rows);
    }
    sqlx::raw_sql(&format!("DROP TABLE {t}"))
        .execute(&pool)
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn redshift_connections_read_through_the_row_protocol() {
    let Some(_pool) = db::postgres().await else {
        return;
    };
    // The local PostgreSQL stands in for Redshift: same protocol, no COPY TO STDOUT.
    let mut wh = warehouse(ConnectionKind::Redshift).await;
    wh.set_pg_copy(true);
    let q = query("gen", "SELECT g AS id FROM generate_series(1, 5) g");
    let (_, rows, _) = extract_all(&mut wh, &q, 2).await.expect("extract");
    assert_eq!(rows, 5);
    assert_eq!(wh.last_read_path(), Some(ReadPath::Rows));
}

#[tokio::test]
async fn connection_stays_usable_after_refused_and_failed_copies() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let mut wh = warehouse(ConnectionKind::Postgres).await;

    // Refused before any row (the table vanished after the probe): the database's
    // message, and the next read works on the replaced connection.
    let t = unique_table("pg_copy_gone");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {t} (id int8); INSERT INTO {t} VALUES (1)"
    ))
    .execute(&pool)
    .await
    .expect("setup");
    let q = query("gone", &format!("SELECT id FROM {t}"));
    let columns = wh.probe(&q).await.expect("probe");
    sqlx::raw_sql(&format!("DROP TABLE {t}"))
        .execute(&pool)
        .await
        .expect("drop");
    let (tx, _rx) = tokio::sync::mpsc::channel(2);
    let err = wh.extract(&q, &columns, 10, tx).await.expect_err("gone");
    assert!(
        matches!(&err, SourceError::Query { message, .. } if message.contains("does not exist")),
        "{err}"
    );
    assert_eq!(wh.last_read_path(), Some(ReadPath::Copy));
    let ok = query("gen", "SELECT g AS id FROM generate_series(1, 2500) g");
    let (_, rows, _) = extract_all(&mut wh, &ok, 1000)
        .await
        .expect("after refusal");
    assert_eq!(rows, 2500);
    assert_eq!(wh.last_read_path(), Some(ReadPath::Copy), "COPY stays on");

    // A value that cannot be decoded, deep in the stream, rejects its row only:
    // the column is named in the row's reason and the read goes on.
    let bad = query(
        "bad",
        "SELECT g AS id, CASE WHEN g = 30000 THEN TIMESTAMP 'infinity' \
         ELSE TIMESTAMP '2024-01-01' END AS ts FROM generate_series(1, 60000) g",
    );
    let (_, rows, batches) = extract_all(&mut wh, &bad, 1000)
        .await
        .expect("one bad value does not fail the read");
    assert_eq!(rows, 60000);
    let reasons = db::rejected_reasons(&batches);
    let rejected: Vec<usize> = (0..reasons.len())
        .filter(|&i| reasons[i].is_some())
        .collect();
    assert_eq!(rejected, [29999]);
    let reason = reasons[29999].as_deref().unwrap_or_default();
    assert!(
        reason.starts_with("column `ts`: infinite timestamp"),
        "{reason}"
    );
    let (_, rows, _) = extract_all(&mut wh, &ok, 1000)
        .await
        .expect("after a rejected row");
    assert_eq!(rows, 2500);

    // A server error mid-stream (division by zero at row 40000) is the database's.
    let boom = query(
        "boom",
        "SELECT g AS id, 1 / (g - 40000) AS x FROM generate_series(1, 50000) g",
    );
    let err = extract_all(&mut wh, &boom, 1000).await.expect_err("boom");
    assert!(err.to_string().contains("division by zero"), "{err}");
    wh.ping().await.expect("usable afterwards");
    let (_, rows, _) = extract_all(&mut wh, &ok, 1000)
        .await
        .expect("after server error");
    assert_eq!(rows, 2500);
}
