//! End to end on MariaDB/MySQL: the dialect's types and nasty values through
//! mapping and delivery to the fake Events API, asserting the exact JSON.

use serde_json::json;
use wsync::state::RunState;

use crate::support::db;
use crate::support::fake_mparticle::FakeMparticle;
use crate::support::project::{read_jsonl, without_id, TestProject};

const KEY: &str = "my-test-key";
const SECRET: &str = "my-test-secret-91bc";

#[tokio::test]
async fn mysql_types_and_nasty_values_reach_the_fake_exactly() {
    let Some(pool) = db::mysql().await else {
        return;
    };
    let table = db::unique_table("sync_my");
    sqlx::query(&format!(
        "CREATE TABLE {table} (
            id INT PRIMARY KEY, customerid VARCHAR(64), Email VARCHAR(255), flag TINYINT(1),
            small SMALLINT, big BIGINT, ubig BIGINT UNSIGNED, f FLOAT, dbl DOUBLE,
            price DECIMAL(30,9), cents DECIMAL(10,2), note TEXT, raw BLOB, d DATE, t TIME,
            dt DATETIME(6), ts TIMESTAMP(6) NULL, doc JSON, updated_id BIGINT NOT NULL
         ) CHARACTER SET utf8mb4"
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("SET time_zone = '+00:00'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!(
        "INSERT INTO {table} VALUES
         (1, 'm1', 'émoji-🎉@example.com', 1, -5, 9007199254740993, 18446744073709551615, 1.5,
          0.1, 123456789012345678901.123456789, 12.50, 'line1\\nline2 \"quoted\" ''single''',
          X'00FF', '2024-02-29', '12:34:56', '2024-05-01 12:30:00.250000',
          '2024-05-01 12:30:00', '{{\"b\": [1, 2], \"a\": null}}', 10),
         (2, NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'orphan', NULL, NULL,
          NULL, NULL, NULL, NULL, 20)"
    ))
    .execute(&pool)
    .await
    .unwrap();

    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = TestProject::new(&format!(
        r#"
[connections.my]
type = "mariadb"
url = "{url}"

[feeds.fake]
base_url = "{base}"
api_key = "{KEY}"
api_secret = "{SECRET}"
environment = "production"
"#,
        url = db::mysql_url(),
        base = fake.base_url(),
    ));
    p.model(
        "people",
        // MariaDB's JSON is LONGTEXT with a binary collation, which the server
        // reports as a blob: read as such (`doc_raw`) it is still sent as compact
        // JSON text; cast to CHAR (`doc`) it is plain text, sent as stored.
        &format!("SELECT customerid, Email, flag, small, big, ubig, f, dbl, price, cents, note, raw, d, t, dt, ts, CAST(doc AS CHAR) AS doc, doc AS doc_raw, updated_id FROM {table};"),
    );
    p.pipeline(
        "people",
        r#"
connection = "my"
data_model = "people"
feed = "fake"

[sync_mode]
type = "incremental"
iterator_field = "updated_id"
iterator_data_type = "integer"
"#,
    );
    let ctx = p.context().await;
    let report = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(
        report.record.state,
        RunState::Success,
        "{:?}",
        report.record.error
    );

    let batches = fake.batches();
    assert_eq!(batches.len(), 1);
    assert_eq!(
        without_id(&batches[0]),
        json!({
            "environment": "production",
            "user_identities": {"customer_id": "m1", "email": "émoji-🎉@example.com"},
            "user_attributes": {
                "flag": true,
                "small": -5,
                "big": "9007199254740993",
                "ubig": "18446744073709551615",
                "f": 1.5,
                "dbl": 0.1,
                "price": "123456789012345678901.123456789",
                "cents": 12.5,
                "note": "line1\nline2 \"quoted\" 'single'",
                "raw": "AP8=",
                "d": "2024-02-29",
                "t": "12:34:56",
                "dt": "2024-05-01T12:30:00.250Z",
                "ts": "2024-05-01T12:30:00Z",
                "doc": "{\"b\": [1, 2], \"a\": null}",
                "doc_raw": "{\"b\":[1,2],\"a\":null}"
            }
        })
    );
    let rejected = read_jsonl(&report.files["rejected"]);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["reason"], "no_identity");
    assert_eq!(rejected[0]["values"]["note"], "orphan");

    // Integer iterator: the window ended just past the highest id at run start.
    assert_eq!(
        ctx.state.watermark("people").await.unwrap().as_deref(),
        Some("21")
    );
    sqlx::query(&format!(
        "INSERT INTO {table} (id, customerid, updated_id) VALUES (3, 'm3', 21)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let second = wsync::sync::run(&ctx, "people", wsync::sync::RunKind::Manual)
        .await
        .unwrap();
    assert_eq!(second.record.state, RunState::Success);
    assert_eq!(second.record.counts.records_extracted, 1);
    assert_eq!(
        fake.batches()[1]["user_identities"],
        json!({"customer_id": "m3"})
    );
}
