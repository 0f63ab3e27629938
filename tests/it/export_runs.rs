//! Exports as users run them: an export-only pipeline, an export beside a dry
//! run, and the one-off `wsync export`; files read back with the parquet crate.

use std::fs::File;

use arrow::array::Array as _;
use arrow::datatypes::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::support::project::TestProject;

const SEED: &str =
    "CREATE TABLE people (id TEXT, email TEXT, score REAL, joined DATE, seen_at DATETIME NOT NULL);
INSERT INTO people VALUES ('a', 'a@x.io', 1.5, '2024-01-02', '2024-05-01 10:00:00'),
  ('b', NULL, NULL, NULL, '2024-05-02 10:00:00'), (NULL, NULL, 2.0, NULL, '2024-05-03 10:00:00');";

fn project(pipeline: &str) -> TestProject {
    let p = TestProject::new(
        "[connections.lite]\ntype = \"sqlite\"\nurl = \"sqlite://w.db\"\nseed_sql = \"seed.sql\"\n",
    );
    p.file("seed.sql", SEED);
    p.model(
        "people",
        "SELECT id AS customer_id, email, score, joined, seen_at FROM people",
    );
    p.pipeline("people", pipeline);
    p
}

/// Every row of a Parquet file (concatenated) and the codec of each column chunk.
fn read_all(
    path: &std::path::Path,
) -> (arrow::array::RecordBatch, Vec<parquet::basic::Compression>) {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    let codecs = builder
        .metadata()
        .row_groups()
        .iter()
        .flat_map(|g| g.columns().iter().map(|c| c.compression()))
        .collect();
    let schema = builder.schema().clone();
    let batches: Vec<_> = builder.build().unwrap().map(|b| b.unwrap()).collect();
    (
        arrow::compute::concat_batches(&schema, &batches).unwrap(),
        codecs,
    )
}

fn strings<'a>(b: &'a arrow::array::RecordBatch, name: &str) -> Vec<Option<&'a str>> {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap_or_else(|| panic!("{name} is not text"))
        .iter()
        .collect()
}

fn read(path: &std::path::Path) -> (arrow::datatypes::SchemaRef, usize) {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    let schema = reader.schema().clone();
    let rows = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
    (schema, rows)
}

#[test]
fn an_export_only_pipeline_writes_all_three_datasets_and_lists_them_in_the_run() {
    let p = project(
        "connection = \"lite\"\ndata_model = \"people\"\n\n[sync_mode]\ntype = \"incremental\"\niterator_field = \"seen_at\"\niterator_data_type = \"timestamp_ntz\"\n\n[export]\npath = \"out/{pipeline}/{run_id}/{dataset}.parquet\"\ncompression = \"snappy\"\n",
    );
    let (code, stdout, stderr) = p.wsync(&["run", "people"], &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let dir = p.root().join("out/people/1");
    let (schema, rows) = read(&dir.join("rows.parquet"));
    assert_eq!(rows, 3);
    assert_eq!(
        schema.field_with_name("seen_at").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, None)
    );
    assert_eq!(
        schema.field_with_name("joined").unwrap().data_type(),
        &DataType::Date32
    );
    let (schema, rows) = read(&dir.join("batches.parquet"));
    assert_eq!(rows, 2);
    assert!(
        schema
            .field_with_name("user_identities.customer_id")
            .is_ok(),
        "{schema:?}"
    );
    let (_, rows) = read(&dir.join("rejected.parquet"));
    assert_eq!(rows, 1);
    // Values and types, not only counts; every column chunk in the configured codec.
    let (rows_data, codecs) = read_all(&dir.join("rows.parquet"));
    assert!(!codecs.is_empty());
    assert!(
        codecs
            .iter()
            .all(|c| *c == parquet::basic::Compression::SNAPPY),
        "{codecs:?}"
    );
    assert_eq!(
        strings(&rows_data, "customer_id"),
        [Some("a"), Some("b"), None]
    );
    assert_eq!(strings(&rows_data, "email"), [Some("a@x.io"), None, None]);
    let score = rows_data
        .column_by_name("score")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::Float64Array>()
        .unwrap();
    assert_eq!(score.value(0), 1.5);
    assert!(score.is_null(1));
    assert_eq!(score.value(2), 2.0);
    let (sent, codecs) = read_all(&dir.join("batches.parquet"));
    assert!(codecs
        .iter()
        .all(|c| *c == parquet::basic::Compression::SNAPPY));
    assert_eq!(
        strings(&sent, "user_identities.customer_id"),
        [Some("a"), Some("b")]
    );
    assert_eq!(
        sent.schema()
            .field_with_name("user_attributes.score")
            .unwrap()
            .data_type(),
        &DataType::Float64,
        "numbers are stored as the numbers that were sent"
    );
    assert_eq!(
        strings(&sent, "user_attributes.joined"),
        [Some("2024-01-02"), None]
    );
    let (rejected, _) = read_all(&dir.join("rejected.parquet"));
    assert_eq!(strings(&rejected, "reason"), [Some("no_identity")]);
    let values: serde_json::Value =
        serde_json::from_str(strings(&rejected, "values")[0].unwrap()).unwrap();
    assert_eq!(values["score"], 2.0);
    // No temporary file is left beside them.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");

    // The run record lists the files with rows and bytes; the watermark moved,
    // so the next run exports nothing new.
    let (_, runs, _) = p.wsync(&["runs", "--json"], &[]);
    let run: serde_json::Value = serde_json::from_str(runs.lines().next().unwrap()).unwrap();
    let exports = run["files"]["exports"].as_array().unwrap();
    assert_eq!(exports.len(), 3);
    assert_eq!(exports[0]["dataset"], "rows");
    assert_eq!(exports[0]["rows"], 3);
    assert!(exports[0]["bytes"].as_u64().unwrap() > 0);
    let (code, _, _) = p.wsync(&["run", "people"], &[]);
    assert_eq!(code, 0);
    assert_eq!(read(&p.root().join("out/people/2/rows.parquet")).1, 0);
}

#[test]
fn an_only_read_run_exports_a_snapshot_beside_its_report() {
    let p = project(
        "connection = \"lite\"\ndata_model = \"people\"\ninput_protection = \"only_read\"\n\n[export]\ndatasets = [\"rows\"]\n",
    );
    let (code, stdout, _) = p.wsync(&["run", "people"], &[]);
    assert_eq!(code, 0, "{stdout}");
    // A dry run's `{run_id}` is its folder name, `dry-<start time>`.
    let runs: Vec<_> = std::fs::read_dir(p.root().join("exports/people"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("dry-"));
    assert_eq!(read(&runs[0].join("rows.parquet")).1, 3);
    let (data, codecs) = read_all(&runs[0].join("rows.parquet"));
    assert!(
        codecs
            .iter()
            .all(|c| matches!(c, parquet::basic::Compression::ZSTD(_))),
        "zstd is the default: {codecs:?}"
    );
    assert_eq!(strings(&data, "customer_id"), [Some("a"), Some("b"), None]);
    assert!(!runs[0].join("batches.parquet").exists());
}

#[test]
fn wsync_export_writes_one_file_and_records_nothing() {
    let p = project(
        "connection = \"lite\"\ndata_model = \"people\"\ninput_protection = \"only_read\"\n",
    );
    let out = p.root().join("snap/people.parquet");
    let (code, stdout, stderr) = p.wsync(
        &[
            "export",
            "people",
            "--out",
            out.to_str().unwrap(),
            "--compression",
            "none",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("Exported 3 row(s)"), "{stdout}");
    let (schema, rows) = read(&out);
    assert_eq!(rows, 3);
    assert_eq!(schema.fields().len(), 5);
    let (data, codecs) = read_all(&out);
    assert!(codecs
        .iter()
        .all(|c| *c == parquet::basic::Compression::UNCOMPRESSED));
    assert_eq!(strings(&data, "email"), [Some("a@x.io"), None, None]);
    let (_, runs, _) = p.wsync(&["runs"], &[]);
    assert!(runs.contains("No runs recorded yet"), "{runs}");
}
