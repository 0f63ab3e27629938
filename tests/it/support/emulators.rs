//! The warehouse emulators on 127.0.0.1 (started by `tests/emulators/start.sh`,
//! which `.ci/run` calls): fakesnow for Snowflake, bqemulator for BigQuery.
//!
//! As with the databases in `db.rs`: an unreachable emulator makes a test print
//! `skipping: …` and return on a developer machine, and fail under `CI=true`.
//! Setup statements (DDL, inserts) go through small raw clients here, because
//! `Warehouse` only runs single SELECTs.

use std::time::Duration;

use serde_json::{json, Value};
use wsync::config::model::{
    BigQueryAuth, BigQuerySettings, CloudWarehouse, Connection, ConnectionKind, SnowflakeAuth,
    SnowflakeSettings,
};
use wsync::redact::Secret;

/// fakesnow's root: `WSYNC_TEST_FAKESNOW_URL` or `http://127.0.0.1:18645`.
pub fn fakesnow_url() -> String {
    std::env::var("WSYNC_TEST_FAKESNOW_URL").unwrap_or_else(|_| "http://127.0.0.1:18645".to_owned())
}

/// bqemulator's root: `WSYNC_TEST_BQEMULATOR_URL` or `http://127.0.0.1:18650`.
pub fn bqemulator_url() -> String {
    std::env::var("WSYNC_TEST_BQEMULATOR_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:18650".to_owned())
}

/// Whether `url`'s host:port accepts a TCP connection; in CI an emulator that
/// does not is a failure, elsewhere a skip.
pub async fn reachable(what: &str, url: &str) -> bool {
    let parsed = url::Url::parse(url).expect("emulator url");
    let addr = format!(
        "{}:{}",
        parsed.host_str().unwrap_or("127.0.0.1"),
        parsed.port_or_known_default().unwrap_or(80)
    );
    let result = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(&addr),
    )
    .await;
    match result {
        Ok(Ok(_)) => true,
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_owned(),
            };
            if super::db::ci_is_truthy(std::env::var("CI").ok().as_deref()) {
                panic!("{what} at {url} is unreachable ({why}); CI is set, so this test fails instead of skipping (start it with tests/emulators/start.sh)");
            }
            eprintln!("skipping: {what} at {url} is unreachable ({why}); start it with tests/emulators/start.sh");
            false
        }
    }
}

/// The test key (PKCS#8 PEM) under `tests/fixtures/keys/`.
pub fn test_key(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/keys/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("test key")
}

/// Snowflake settings for `base_url`, key-pair auth with the test key.
pub fn snowflake_settings(base_url: &str, database: &str) -> SnowflakeSettings {
    SnowflakeSettings {
        account: "wsync-test".into(),
        user: "wsync_reader".into(),
        role: Some("WSYNC_READ".into()),
        warehouse: Some("WSYNC_WH".into()),
        database: Some(database.into()),
        schema: Some("PUBLIC".into()),
        base_url: base_url.trim_end_matches('/').to_owned(),
        auth: SnowflakeAuth::KeyPair {
            private_key: Secret::new(test_key("rsa_key.p8")),
            passphrase: None,
        },
    }
}

/// A `snowflake` connection with `settings`.
pub fn snowflake_connection(settings: SnowflakeSettings) -> Connection {
    Connection {
        name: "test_snowflake".into(),
        kind: ConnectionKind::Snowflake,
        url: Secret::new(settings.base_url.clone()),
        seed_sql: None,
        statement_timeout: Duration::from_secs(30),
        chunk_rows: 1000,
        cloud: Some(CloudWarehouse::Snowflake(settings)),
    }
}

/// Run setup statements on fakesnow (one session, in order), creating and
/// using `database`. Panics with the emulator's message on failure.
pub async fn snowflake_exec(database: &str, statements: &[&str]) {
    let http = reqwest::Client::new();
    let base = fakesnow_url();
    let login = post_json(
        &http,
        &format!("{base}/session/v1/login-request"),
        None,
        &json!({"data": {"LOGIN_NAME": "setup", "ACCOUNT_NAME": "SETUP", "SESSION_PARAMETERS": {}}}),
    )
    .await;
    let token = login["data"]["token"].as_str().expect("token").to_owned();
    let mut all = vec![
        format!("CREATE DATABASE IF NOT EXISTS {database}"),
        format!("USE DATABASE {database}"),
        "CREATE SCHEMA IF NOT EXISTS PUBLIC".to_owned(),
        "USE SCHEMA PUBLIC".to_owned(),
    ];
    all.extend(statements.iter().map(|s| (*s).to_owned()));
    for (i, sql) in all.iter().enumerate() {
        let answer = post_json(
            &http,
            &format!("{base}/queries/v1/query-request?requestId={i}"),
            Some(format!("Snowflake Token=\"{token}\"")),
            &json!({"sqlText": sql, "asyncExec": false, "sequenceId": i + 1}),
        )
        .await;
        assert_eq!(answer["success"], true, "setup `{sql}` failed: {answer}");
    }
}

/// BigQuery settings for the emulator (`auth = "none"`), default dataset `dataset`.
pub fn bigquery_settings(base_url: &str, dataset: &str) -> BigQuerySettings {
    BigQuerySettings {
        project: "wsync-test".into(),
        dataset: Some(dataset.into()),
        location: None,
        base_url: base_url.trim_end_matches('/').to_owned(),
        maximum_bytes_billed: wsync::config::model::DEFAULT_MAXIMUM_BYTES_BILLED,
        auth: BigQueryAuth::None,
    }
}

/// A `bigquery` connection with `settings`.
pub fn bigquery_connection(settings: BigQuerySettings) -> Connection {
    Connection {
        name: "test_bigquery".into(),
        kind: ConnectionKind::BigQuery,
        url: Secret::new(settings.base_url.clone()),
        seed_sql: None,
        statement_timeout: Duration::from_secs(30),
        chunk_rows: 1000,
        cloud: Some(CloudWarehouse::BigQuery(settings)),
    }
}

/// Create `dataset` on bqemulator (if needed) and run setup statements.
pub async fn bigquery_exec(dataset: &str, statements: &[&str]) {
    let http = reqwest::Client::new();
    let base = format!("{}/bigquery/v2/projects/wsync-test", bqemulator_url());
    let created = http
        .post(format!("{base}/datasets"))
        .header("Content-Type", "application/json")
        .body(
            json!({"datasetReference": {"projectId": "wsync-test", "datasetId": dataset}})
                .to_string(),
        )
        .send()
        .await
        .expect("create dataset");
    assert!(
        created.status().is_success() || created.status().as_u16() == 409,
        "create dataset: {}",
        created.status()
    );
    for sql in statements {
        let answer = post_json(
            &http,
            &format!("{base}/queries"),
            None,
            &json!({"query": sql, "useLegacySql": false}),
        )
        .await;
        assert!(
            answer.get("error").is_none() && answer.get("errors").is_none(),
            "setup `{sql}` failed: {answer}"
        );
    }
}

/// POST `body` as JSON and read the JSON answer.
async fn post_json(
    http: &reqwest::Client,
    url: &str,
    authorization: Option<String>,
    body: &Value,
) -> Value {
    let mut request = http
        .post(url)
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(a) = authorization {
        request = request.header("Authorization", a);
    }
    let bytes = request
        .send()
        .await
        .expect("request")
        .bytes()
        .await
        .expect("body");
    serde_json::from_slice(&bytes).expect("json answer")
}

/// A database/dataset name unique to this call (letters, digits, `_`).
pub fn unique_name(prefix: &str) -> String {
    super::db::unique_table(prefix)
}
