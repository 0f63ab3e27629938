//! The steps of `benches/pipeline.rs` on a few thousand rows, so the benchmark
//! cannot rot: the same table and model (`benches/pipeline_table.sql`,
//! `benches/pipeline_model.sql`), a dry run, a Parquet export and a push to the
//! fake Events API with pacing off. Asserts outcomes (rows, batches, requests,
//! bytes, files), never timing.

use std::fs::File;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use wsync::state::RunState;

use crate::support::db;
use crate::support::fake_mparticle::FakeMparticle;
use crate::support::project::{read_jsonl, TestProject};

const KEY: &str = "smoke-key";
const SECRET: &str = "smoke-secret";
/// Enough rows for several chunks (of 1,000) and requests (of 100 batches),
/// and for mapping to cut chunks across threads.
const ROWS: u64 = 3_500;

#[tokio::test]
async fn benchmark_steps_on_a_small_table() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("perf_smoke");
    let create = include_str!("../../benches/pipeline_table.sql")
        .replace("{table}", &table)
        .replace("{rows}", &ROWS.to_string());
    sqlx::raw_sql(&create)
        .execute(&pool)
        .await
        .expect("create table");

    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = TestProject::new(&format!(
        "[connections.wh]\ntype = \"postgres\"\nurl = \"{url}\"\n\n\
         [feeds.sink]\nbase_url = \"{feed}\"\napi_key = \"{KEY}\"\napi_secret = \"{SECRET}\"\nrate_limit_per_sec = 0\n",
        url = db::postgres_url(),
        feed = fake.base_url(),
    ));
    p.model(
        "bench",
        &include_str!("../../benches/pipeline_model.sql").replace("{table}", &table),
    );
    p.pipeline(
        "bench_dry",
        "connection = \"wh\"\ndata_model = \"bench\"\ninput_protection = \"only_read\"\nwrite_batches = true\n",
    );
    p.pipeline(
        "bench_push",
        "connection = \"wh\"\ndata_model = \"bench\"\nfeed = \"sink\"\nretry_dead_letters = false\n",
    );
    let ctx = p.context().await;

    // Dry run: every row mapped, packed and written to batches.jsonl; nothing sent.
    let dry = wsync::sync::run(&ctx, "bench_dry", wsync::sync::RunKind::Manual)
        .await
        .expect("dry run");
    assert_eq!(
        dry.record.state,
        RunState::Success,
        "{:?}",
        dry.record.error
    );
    assert_eq!(dry.record.counts.records_extracted, ROWS);
    assert_eq!(dry.record.counts.records_mapped, ROWS);
    assert_eq!(dry.record.counts.event_batches_generated, ROWS);
    assert_eq!(dry.record.counts.rows_rejected, 0);
    assert_eq!(dry.requests, ROWS.div_ceil(100));
    let lines = read_jsonl(&dry.files["batches"]);
    assert_eq!(lines.len() as u64, ROWS);
    assert_eq!(lines[41]["user_identities"]["customer_id"], "c000000042");
    assert_eq!(lines[41]["user_attributes"]["tags"][1], "tag9");
    assert!(fake.batches().is_empty(), "a dry run sends nothing");

    // Parquet export of the model.
    let out = p.root().join("export.parquet");
    let exported = wsync::sync::export_once(
        &ctx.project,
        ctx.pipeline("bench_dry").expect("pipeline"),
        &out,
        wsync::export::Compression::Zstd,
        &wsync::telemetry::progress::RunProgress::default(),
    )
    .await
    .expect("export");
    assert_eq!(exported.rows, ROWS);
    assert_eq!(std::fs::metadata(&out).expect("file").len(), exported.bytes);
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(File::open(&out).expect("open")).expect("parquet");
    assert_eq!(reader.metadata().file_metadata().num_rows() as u64, ROWS);
    assert_eq!(reader.schema().fields().len(), 15);

    // Push: the same batches, byte for byte, reach the fake.
    let push = wsync::sync::run(&ctx, "bench_push", wsync::sync::RunKind::Manual)
        .await
        .expect("push");
    assert_eq!(
        push.record.state,
        RunState::Success,
        "{:?}",
        push.record.error
    );
    assert_eq!(push.record.counts.batches_sent, ROWS);
    assert_eq!(push.requests, dry.requests);
    assert_eq!(push.request_bytes, dry.request_bytes);
    assert_eq!(fake.batches().len() as u64, ROWS);
    assert_eq!(fake.duplicates(), 0);

    sqlx::raw_sql(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await
        .expect("drop");
}
