//! Parquet exports: the `rows` dataset of a PostgreSQL table with every supported
//! type and the nasty values read back and compared column by column and value by
//! value; the `batches` and `rejected` datasets round-tripped; every compression
//! option; row groups flushed as they fill; and an export dropped or killed
//! mid-way leaving nothing under the final name.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, ArrayRef, BinaryArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
    Int64Array, ListArray, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{NaiveDate, TimeZone, Utc};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::ParquetMetaData;
use wsync::config::model::{
    ConnectionKind, Environment, InputProtection, LimitPolicy, NullPolicy, Pipeline, Schedule,
    SyncMode,
};
use wsync::export::{
    BatchesDataset, Compression, ExportOptions, ParquetFile, RejectedDataset, RowsDataset,
};
use wsync::mapping::batch::{MapStats, Mapper};
use wsync::mapping::plan::MappingPlan;
use wsync::source::{ColumnInfo, ColumnKind, Warehouse, META_SQL_TYPE};

use crate::support::db::{self, connection, query, unique_table};

/// Read a Parquet file back: its batches (concatenated) and its metadata.
fn read_back(path: &Path) -> (RecordBatch, Arc<ParquetMetaData>) {
    let file = std::fs::File::open(path).expect("open parquet");
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet reader");
    let metadata = builder.metadata().clone();
    let schema = builder.schema().clone();
    let batches = builder
        .build()
        .expect("reader")
        .collect::<Result<Vec<_>, _>>()
        .expect("read batches");
    let all = arrow::compute::concat_batches(&schema, &batches).expect("concat");
    (all, metadata)
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("column {name} has another type"))
}

/// The files in `dir` (names), sorted.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn export_rows_every_type_round_trips_from_postgres() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let mut wh = Warehouse::connect(&connection(ConnectionKind::Postgres, &db::postgres_url()))
        .await
        .expect("warehouse connect");
    let t = unique_table("export_types");
    sqlx::raw_sql(&format!(
        r#"CREATE TABLE {t} (
            id int8, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8,
            n30 numeric(30,9), n12 numeric(12,2), n numeric,
            b bool, tx text, vc varchar(10), ch char(3), by bytea, d date, tm time,
            ts timestamp, tz timestamptz, u uuid, j json, jb jsonb, arr text[], ints int8[]
        );
        INSERT INTO {t} VALUES
        (1, -32768, 2147483647, 9007199254740993, 'NaN', 'Infinity',
         123456789012345678901.123456789, 12.50, 'NaN',
         true, E'Zoë 🎉 ''q'' "dq"\nline2', 'abc', 'ab', '\x00ff10', '2000-02-29', '23:59:59.999999',
         '2024-01-02 03:04:05.678901', '2024-01-02 03:04:05+02', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
         '{{"b": 1,  "a": [1, 2]}}', '{{"z": null, "a": "é"}}', ARRAY['x', NULL, 'y'], ARRAY[1, NULL, 9223372036854775807]),
        (2, NULL, NULL, -9223372036854775808, '-Infinity', '-Infinity',
         -0.000000001, -0.01, 'Infinity',
         false, repeat('é', 5000), NULL, NULL, '', '1970-01-01', '00:00:00',
         '1969-12-31 23:59:59', '1970-01-01 00:00:00+00', NULL,
         'null', '[]', (SELECT array_agg('v' || g) FROM generate_series(1, 1500) g), '{{}}'),
        (3, NULL, NULL, NULL, 1.5, '-0',
         'NaN', NULL, '-Infinity',
         NULL, '', NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (4, NULL, NULL, NULL, NULL, NULL,
         -999999999999999999999.999999999, 9999999999.99, 12345678901234567890.123456789,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
        "#
    ))
    .execute(&pool)
    .await
    .expect("setup sql");

    // An expression of a constrained type has no table origin: it stays text.
    let q = query(
        "types",
        &format!("SELECT *, n12 * 2 AS n12_expr FROM {t} ORDER BY id"),
    );
    let columns = wh.probe(&q).await.expect("probe");
    let decimal = |name: &str| columns.iter().find(|c| c.name == name).map(|c| c.decimal);
    assert_eq!(decimal("n30"), Some(Some((30, 9))));
    assert_eq!(decimal("n12"), Some(Some((12, 2))));
    assert_eq!(decimal("n"), Some(None), "unconstrained numeric");
    assert_eq!(decimal("n12_expr"), Some(None), "expression");
    assert_eq!(decimal("i8"), Some(None));

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("exports/types/rows.parquet");
    let mut dataset = RowsDataset::new(&columns);
    let mut file =
        ParquetFile::create(&path, dataset.schema(), &ExportOptions::default()).expect("create");
    // Chunks of 2 rows: the file is written in several pieces.
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let write = async {
        let mut chunks = Vec::new();
        while let Some(chunk) = rx.recv().await {
            file.write(&dataset.convert(&chunk).expect("convert"))
                .expect("write");
            chunks.push(chunk);
        }
        chunks
    };
    let (rows, chunks) = tokio::join!(wh.extract(&q, &columns, 2, tx), write);
    assert_eq!(rows.expect("extract"), 4);
    assert_eq!(chunks.len(), 2);
    assert_eq!(dataset.decimals_nulled(), 1, "n30 = NaN in row 3");
    assert!(!path.exists(), "nothing under the final name before finish");
    let done = file.finish().expect("finish");
    assert_eq!(done.rows, 4);
    assert_eq!(done.path, path);
    assert_eq!(done.bytes, std::fs::metadata(&path).expect("stat").len());
    assert_eq!(files_in(path.parent().expect("folder")), ["rows.parquet"]);

    let (b, _) = read_back(&path);
    let source = db::one_batch(&chunks);
    assert_eq!(b.num_rows(), 4);

    // Schema: every type, and the SQL type metadata.
    let schema = b.schema();
    let ty = |name: &str| {
        schema
            .field_with_name(name)
            .expect(name)
            .data_type()
            .clone()
    };
    assert_eq!(ty("n30"), DataType::Decimal128(30, 9));
    assert_eq!(ty("n12"), DataType::Decimal128(12, 2));
    assert_eq!(ty("n"), DataType::Utf8);
    assert_eq!(ty("n12_expr"), DataType::Utf8);
    assert_eq!(
        ty("tz"),
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(ty("ts"), DataType::Timestamp(TimeUnit::Microsecond, None));
    assert_eq!(ty("d"), DataType::Date32);
    assert_eq!(ty("tm"), DataType::Time64(TimeUnit::Microsecond));
    for int in ["id", "i2", "i4", "i8"] {
        assert_eq!(ty(int), DataType::Int64, "{int}");
    }
    assert_eq!(ty("f4"), DataType::Float32);
    assert_eq!(ty("f8"), DataType::Float64);
    assert_eq!(ty("b"), DataType::Boolean);
    for text in ["tx", "vc", "ch", "u", "j", "jb"] {
        assert_eq!(ty(text), DataType::Utf8, "{text}");
    }
    assert_eq!(ty("by"), DataType::Binary);
    assert_eq!(
        ty("arr"),
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
    );
    assert_eq!(
        ty("ints"),
        DataType::List(Arc::new(Field::new("item", DataType::Int64, true)))
    );
    let sql_type = |name: &str| {
        schema
            .field_with_name(name)
            .expect(name)
            .metadata()
            .get(META_SQL_TYPE)
            .cloned()
    };
    assert_eq!(sql_type("n30").as_deref(), Some("NUMERIC"));
    assert_eq!(sql_type("tz").as_deref(), Some("TIMESTAMPTZ"));
    assert_eq!(sql_type("arr").as_deref(), Some("TEXT[]"));
    assert_eq!(b.schema().as_ref(), dataset.schema().as_ref());

    // Values: every column that keeps the source type is identical to what was
    // extracted (NaN and -0 compared bit for bit).
    for (i, field) in schema.fields().iter().enumerate() {
        if matches!(field.data_type(), DataType::Decimal128(..)) {
            continue;
        }
        assert_eq!(
            b.column(i).as_ref(),
            source.column(i).as_ref(),
            "column {}",
            field.name()
        );
    }
    // … and one by one, the nasty ones.
    let n30 = col::<Decimal128Array>(&b, "n30");
    assert_eq!(n30.value(0), 123_456_789_012_345_678_901_123_456_789);
    assert_eq!(n30.value_as_string(0), "123456789012345678901.123456789");
    assert_eq!(n30.value(1), -1);
    assert!(n30.is_null(2), "NaN cannot be a Decimal128");
    assert_eq!(n30.value_as_string(3), "-999999999999999999999.999999999");
    let n12 = col::<Decimal128Array>(&b, "n12");
    assert_eq!(n12.value(0), 1250);
    assert_eq!(n12.value_as_string(0), "12.50");
    assert_eq!(n12.value(1), -1);
    assert!(n12.is_null(2), "SQL NULL");
    assert_eq!(n12.value(3), 999_999_999_999);
    let n = col::<StringArray>(&b, "n");
    assert_eq!(
        (0..4).map(|i| n.value(i)).collect::<Vec<_>>(),
        [
            "NaN",
            "Infinity",
            "-Infinity",
            "12345678901234567890.123456789"
        ]
    );
    assert_eq!(col::<StringArray>(&b, "n12_expr").value(0), "25.00");
    let i8 = col::<Int64Array>(&b, "i8");
    assert_eq!(i8.value(0), 9_007_199_254_740_993);
    assert_eq!(i8.value(1), i64::MIN);
    assert!(i8.is_null(2));
    let f4 = col::<Float32Array>(&b, "f4");
    assert!(f4.value(0).is_nan());
    assert_eq!(f4.value(1), f32::NEG_INFINITY);
    let f8 = col::<Float64Array>(&b, "f8");
    assert_eq!(f8.value(0), f64::INFINITY);
    assert_eq!(f8.value(1), f64::NEG_INFINITY);
    assert!(f8.value(2) == 0.0 && f8.value(2).is_sign_negative());
    let tx = col::<StringArray>(&b, "tx");
    assert_eq!(tx.value(0), "Zoë 🎉 'q' \"dq\"\nline2");
    assert_eq!(tx.value(1).chars().count(), 5000);
    assert_eq!(tx.value(2), "");
    assert!(tx.is_null(3));
    assert_eq!(col::<StringArray>(&b, "ch").value(0), "ab ");
    assert_eq!(col::<BinaryArray>(&b, "by").value(0), [0x00, 0xff, 0x10]);
    assert_eq!(col::<BinaryArray>(&b, "by").value(1), b"");
    let d = col::<Date32Array>(&b, "d");
    assert_eq!(
        d.value_as_date(0),
        Some(NaiveDate::from_ymd_opt(2000, 2, 29).expect("date"))
    );
    assert_eq!(d.value(1), 0);
    let tz = col::<TimestampMicrosecondArray>(&b, "tz");
    assert_eq!(
        tz.value(0),
        Utc.with_ymd_and_hms(2024, 1, 2, 1, 4, 5)
            .single()
            .expect("ts")
            .timestamp_micros()
    );
    let ts = col::<TimestampMicrosecondArray>(&b, "ts");
    assert_eq!(ts.value(0) % 1_000_000, 678_901);
    assert_eq!(ts.value(1), -1_000_000);
    assert_eq!(
        col::<StringArray>(&b, "u").value(0),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    );
    assert_eq!(col::<StringArray>(&b, "j").value(0), r#"{"b":1,"a":[1,2]}"#);
    assert_eq!(col::<StringArray>(&b, "jb").value(1), "[]");
    let arr = col::<ListArray>(&b, "arr");
    assert_eq!(arr.value_length(0), 3);
    assert!(arr.value(0).is_null(1));
    let long = arr.value(1);
    let long = long
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("strings");
    // The reader keeps the 1001 entries the 1000-entry list limit needs.
    assert_eq!(long.len(), 1001);
    assert_eq!(long.value(1000), "v1001");
    let ints = col::<ListArray>(&b, "ints");
    let first = ints.value(0);
    let first = first.as_any().downcast_ref::<Int64Array>().expect("ints");
    assert_eq!(first.value(2), i64::MAX);
    assert_eq!(ints.value_length(1), 0);
    assert!(ints.is_null(2));

    sqlx::raw_sql(&format!("DROP TABLE {t}"))
        .execute(&pool)
        .await
        .expect("drop");
}

/// A pipeline with implicit mappings, as a config file would give.
fn pipeline(null_policy: NullPolicy) -> Pipeline {
    Pipeline {
        id: "users".into(),
        name: "users".into(),
        path: PathBuf::from("schedules/users.toml"),
        connection: "wh".into(),
        data_model: "users".into(),
        feed: None,
        environment: Environment::Development,
        sync_mode: SyncMode::Full,
        schedule: Schedule::OnDemand,
        paused: false,
        input_protection: InputProtection::CreateAndUpdate,
        null_policy,
        limit_policy: LimitPolicy::Truncate,
        mappings: Vec::new(),
        retry_dead_letters: true,
        write_batches: false,
        max_rejected_pct: None,
        diff: None,
        export: None,
        pipeline_type: Default::default(),
        data_plan: None,
    }
}

fn column(name: &str, sql_type: &str, kind: ColumnKind) -> ColumnInfo {
    ColumnInfo {
        name: name.into(),
        sql_type: sql_type.into(),
        kind,
        decimal: None,
    }
}

#[test]
fn export_batches_and_rejected_round_trip() {
    let columns = vec![
        column("email", "TEXT", ColumnKind::Text),
        column("mpid", "INT8", ColumnKind::Int),
        column("ios_idfv", "UUID", ColumnKind::Uuid),
        column("ltv", "FLOAT8", ColumnKind::Float64),
        column("big", "INT8", ColumnKind::Int),
        column("vip", "BOOL", ColumnKind::Bool),
        column("name", "TEXT", ColumnKind::Text),
        column(
            "tags",
            "TEXT[]",
            ColumnKind::List(Box::new(ColumnKind::Text)),
        ),
    ];
    let schema = wsync::source::arrow_schema(&columns);
    let tags = {
        let mut b = arrow::array::ListBuilder::new(arrow::array::StringBuilder::new());
        b.values().append_value("a");
        b.values().append_value("b \"c\"");
        b.append(true);
        b.append(false);
        b.append(false);
        b.values().append_value("x");
        b.append(true);
        b.finish()
    };
    let chunk = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![
                Some("zoë@example.com"),
                None,
                None,
                Some("b@example.com"),
            ])) as ArrayRef,
            Arc::new(Int64Array::from(vec![None, Some(42), None, None])),
            Arc::new(StringArray::from(vec![
                None,
                Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                None,
                None,
            ])),
            Arc::new(Float64Array::from(vec![Some(12.5), None, Some(1.0), None])),
            Arc::new(Int64Array::from(vec![
                Some(9_007_199_254_740_993),
                None,
                None,
                Some(-1),
            ])),
            Arc::new(arrow::array::BooleanArray::from(vec![
                Some(true),
                Some(false),
                None,
                None,
            ])),
            Arc::new(StringArray::from(vec![
                Some("Zoë 🎉 'q' \"dq\"\nline2"),
                None,
                Some("no id"),
                Some(""),
            ])),
            Arc::new(tags),
        ],
    )
    .expect("chunk");
    let pipeline = pipeline(NullPolicy::Delete);
    let plan = MappingPlan::new(&columns, &pipeline).expect("plan");
    let mapper = Mapper::new(plan.clone(), &pipeline);
    let mut stats = MapStats::default();
    let mapped = mapper.map_chunk(&chunk, 1, &mut stats).expect("map");
    assert_eq!(mapped.batches.len(), 3);
    assert_eq!(mapped.rejected.len(), 1);

    let dir = tempfile::tempdir().expect("tempdir");
    // Batches: 2 rows per record batch, so the file gets a full and a partial one.
    let mut dataset = BatchesDataset::new(&plan, 2);
    let path = dir.path().join("batches.parquet");
    let mut file =
        ParquetFile::create(&path, dataset.schema(), &ExportOptions::default()).expect("create");
    let mut yielded = 0;
    for batch in &mapped.batches {
        if let Some(rb) = dataset.push(batch).expect("push") {
            assert_eq!(rb.num_rows(), 2);
            yielded += 1;
            file.write(&rb).expect("write");
        }
    }
    assert_eq!(yielded, 1);
    let rest = dataset.flush().expect("flush").expect("one left");
    assert_eq!(rest.num_rows(), 1);
    file.write(&rest).expect("write");
    assert!(dataset.flush().expect("flush").is_none());
    assert_eq!(file.finish().expect("finish").rows, 3);

    let (b, _) = read_back(&path);
    let schema = b.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "source_request_id",
            "row",
            "part",
            "environment",
            "mpid",
            "user_identities.email",
            "device_info.ios_idfv",
            "user_attributes.ltv",
            "user_attributes.big",
            "user_attributes.vip",
            "user_attributes.name",
            "user_attributes.tags",
            "deleted_user_attributes",
        ]
    );
    let ids = col::<StringArray>(&b, "source_request_id");
    let rows = col::<UInt64Array>(&b, "row");
    let parts = col::<UInt32Array>(&b, "part");
    for (i, batch) in mapped.batches.iter().enumerate() {
        assert_eq!(ids.value(i), batch.source_request_id);
        assert_eq!(rows.value(i), batch.row);
        assert_eq!(parts.value(i), batch.part);
    }
    assert_eq!(rows.values().to_vec(), [1, 2, 4]);
    assert_eq!(
        col::<StringArray>(&b, "environment").value(0),
        "development"
    );
    let mpid = col::<Int64Array>(&b, "mpid");
    assert!(mpid.is_null(0));
    assert_eq!(mpid.value(1), 42);
    let email = col::<StringArray>(&b, "user_identities.email");
    assert_eq!(email.value(0), "zoë@example.com");
    assert!(email.is_null(1));
    assert_eq!(
        col::<StringArray>(&b, "device_info.ios_idfv").value(1),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    );
    // Attribute columns keep the type that was sent (issue 16).
    let field_type = |name: &str| {
        b.schema()
            .field_with_name(&format!("user_attributes.{name}"))
            .expect("field")
            .data_type()
            .clone()
    };
    assert_eq!(field_type("ltv"), DataType::Float64);
    assert_eq!(field_type("big"), DataType::Int64);
    assert_eq!(field_type("vip"), DataType::Boolean);
    assert_eq!(field_type("name"), DataType::Utf8);
    assert_eq!(
        field_type("tags"),
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
    );
    let ltv = col::<Float64Array>(&b, "user_attributes.ltv");
    let big = col::<Int64Array>(&b, "user_attributes.big");
    let vip = col::<arrow::array::BooleanArray>(&b, "user_attributes.vip");
    let names = col::<StringArray>(&b, "user_attributes.name");
    let tags = col::<ListArray>(&b, "user_attributes.tags");
    assert_eq!(ltv.value(0), 12.5);
    assert!(ltv.is_null(1));
    // Beyond 2^53 it travels as a digit string, and is stored as the exact integer.
    assert_eq!(big.value(0), 9_007_199_254_740_993);
    assert_eq!(big.value(2), -1);
    assert!(vip.value(0));
    assert!(!vip.value(1));
    assert_eq!(names.value(0), "Zoë 🎉 'q' \"dq\"\nline2");
    assert_eq!(names.value(2), "");
    let tags0 = tags.value(0);
    let tags0: Vec<&str> = tags0
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("strings")
        .iter()
        .flatten()
        .collect();
    assert_eq!(tags0, ["a", "b \"c\""]);
    // Every attribute of every batch is in its column, as sent, and nothing else is.
    for (i, batch) in mapped.batches.iter().enumerate() {
        let json: serde_json::Value = serde_json::from_slice(&batch.json).expect("json");
        let sent = json
            .get("user_attributes")
            .and_then(|a| a.as_object())
            .cloned()
            .unwrap_or_default();
        let stored = |attribute: &str| -> Option<serde_json::Value> {
            let column = b.column_by_name(&format!("user_attributes.{attribute}"))?;
            if column.is_null(i) {
                return None;
            }
            Some(match attribute {
                "ltv" => serde_json::json!(ltv.value(i)),
                "big" if big.value(i).unsigned_abs() > 1 << 53 => {
                    serde_json::json!(big.value(i).to_string())
                }
                "big" => serde_json::json!(big.value(i)),
                "vip" => serde_json::json!(vip.value(i)),
                "name" => serde_json::json!(names.value(i)),
                _ => {
                    let entries = tags.value(i);
                    let entries = entries
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .expect("strings");
                    serde_json::json!(entries.iter().flatten().collect::<Vec<_>>())
                }
            })
        };
        for attribute in ["ltv", "big", "vip", "name", "tags"] {
            assert_eq!(
                stored(attribute),
                sent.get(attribute).cloned(),
                "batch {i} attribute {attribute}"
            );
        }
    }
    // NULL policy `delete`: row 2's NULL attributes are listed as deleted.
    let deleted = col::<ListArray>(&b, "deleted_user_attributes");
    assert_eq!(deleted.value_length(0), 0);
    let row2 = deleted.value(1);
    let row2 = row2
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("strings");
    let row2: Vec<&str> = row2.iter().flatten().collect();
    assert_eq!(row2, ["ltv", "big", "name", "tags"]);

    // Rejected rows.
    let mut rejected = RejectedDataset::new(1000);
    let path = dir.path().join("rejected.parquet");
    let mut file =
        ParquetFile::create(&path, rejected.schema(), &ExportOptions::default()).expect("create");
    for r in &mapped.rejected {
        assert!(rejected.push(r).expect("push").is_none());
    }
    file.write(&rejected.flush().expect("flush").expect("rows"))
        .expect("write");
    assert_eq!(file.finish().expect("finish").rows, 1);
    let (b, _) = read_back(&path);
    let r = &mapped.rejected[0];
    assert_eq!(col::<UInt64Array>(&b, "row").value(0), 3);
    assert_eq!(col::<StringArray>(&b, "reason").value(0), "no_identity");
    assert_eq!(col::<StringArray>(&b, "detail").value(0), r.detail);
    let values: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(col::<StringArray>(&b, "values").value(0)).expect("values json");
    assert_eq!(values, r.values);
    assert_eq!(values.get("ltv"), Some(&serde_json::json!(1.0)));
    assert_eq!(values.get("name"), Some(&serde_json::json!("no id")));
}

/// A two-column batch of `rows` rows starting at `start`.
fn numbered(start: i64, rows: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("s", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(start..start + rows)),
            Arc::new(StringArray::from_iter_values(
                (start..start + rows).map(|i| format!("value {i} ✓")),
            )),
        ],
    )
    .expect("batch")
}

#[test]
fn export_every_compression_is_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = numbered(0, 5000);
    for compression in [Compression::Zstd, Compression::Snappy, Compression::None] {
        let path = dir.path().join(format!("{}.parquet", compression.as_str()));
        let options = ExportOptions {
            compression,
            ..ExportOptions::default()
        };
        let mut file = ParquetFile::create(&path, data.schema(), &options).expect("create");
        file.write(&data).expect("write");
        file.finish().expect("finish");
        let (b, metadata) = read_back(&path);
        assert_eq!(b, data, "{compression:?}");
        let codec = metadata.row_group(0).column(0).compression();
        let expected = match compression {
            Compression::Zstd => "ZSTD",
            Compression::Snappy => "SNAPPY",
            Compression::None => "UNCOMPRESSED",
        };
        assert!(codec.to_string().starts_with(expected), "{codec}");
    }
}

#[test]
fn export_row_groups_flush_as_they_fill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("groups.parquet");
    let options = ExportOptions {
        row_group_rows: 1000,
        ..ExportOptions::default()
    };
    let mut file = ParquetFile::create(&path, numbered(0, 0).schema(), &options).expect("create");
    // Batches that do not line up with row groups.
    let mut start = 0;
    while start < 3000 {
        let n = 700.min(3000 - start);
        file.write(&numbered(start, n)).expect("write");
        start += n;
    }
    assert_eq!(file.finish().expect("finish").rows, 3000);
    let (b, metadata) = read_back(&path);
    assert_eq!(metadata.num_row_groups(), 3);
    for g in metadata.row_groups() {
        assert_eq!(g.num_rows(), 1000);
    }
    assert_eq!(b, numbered(0, 3000));
}

#[test]
fn export_dropped_mid_way_leaves_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rows.parquet");
    let mut file = ParquetFile::create(
        &path,
        numbered(0, 0).schema(),
        &ExportOptions {
            row_group_rows: 100,
            ..ExportOptions::default()
        },
    )
    .expect("create");
    for i in 0..10 {
        file.write(&numbered(i * 150, 150)).expect("write");
    }
    assert!(file.temp_path().exists());
    assert!(!path.exists());
    drop(file);
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
}

/// Set in the child process of [`export_killed_mid_way_leaves_no_file`]: the
/// folder to write into.
const CHILD_DIR_VAR: &str = "WSYNC_TEST_EXPORT_CHILD_DIR";

/// Not a test on its own: the child process of
/// [`export_killed_mid_way_leaves_no_file`], which writes forever until killed.
#[test]
fn export_child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR_VAR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let options = ExportOptions {
        row_group_rows: 100,
        ..ExportOptions::default()
    };
    let mut file = ParquetFile::create(dir.join("rows.parquet"), numbered(0, 0).schema(), &options)
        .expect("create");
    let mut start = 0;
    for _ in 0..50 {
        file.write(&numbered(start, 150)).expect("write");
        start += 150;
    }
    // Row groups of 100 flush as they fill: the 7,500 rows written so far reach
    // the temporary file (past any write buffer), none the final name.
    let partial = dir.join(format!(".rows.parquet.partial-{}", std::process::id()));
    let on_disk = std::fs::metadata(&partial).expect("partial file").len();
    assert!(on_disk > 0, "row groups reach the disk before the end");
    assert!(
        !dir.join("rows.parquet").exists(),
        "nothing under the final name yet"
    );
    std::fs::write(dir.join("ready"), b"").expect("ready marker");
    loop {
        file.write(&numbered(start, 150)).expect("write");
        start += 150;
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn export_killed_mid_way_leaves_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "export::export_child_writer", "--nocapture"])
        .env(CHILD_DIR_VAR, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.path().join("ready").exists() {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("child writer exited early: {status}");
        }
        assert!(Instant::now() < deadline, "child writer never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill child");
    child.wait().expect("reap child");
    let left = files_in(dir.path());
    assert!(
        !left.iter().any(|n| n == "rows.parquet"),
        "a killed export left its final file: {left:?}"
    );
    let partial = format!(".rows.parquet.partial-{}", child.id());
    assert!(left.contains(&partial), "{left:?}");

    // The next export of the same file clears the dead process's leftover.
    let mut file = ParquetFile::create(
        dir.path().join("rows.parquet"),
        numbered(0, 0).schema(),
        &ExportOptions::default(),
    )
    .expect("create");
    file.write(&numbered(0, 10)).expect("write");
    file.finish().expect("finish");
    assert_eq!(files_in(dir.path()), ["ready", "rows.parquet"]);
}
