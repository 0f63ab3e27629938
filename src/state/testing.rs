//! Test support: the same state test on both backends. SQLite in a temporary
//! folder, and PostgreSQL (`WSYNC_TEST_PG_URL`, default the local test
//! database) in a schema of its own, so tests running in parallel never see
//! each other's rows. An unreachable PostgreSQL fails the test under `CI`
//! and is skipped (with a line saying so) elsewhere.

use std::sync::Arc;

use super::{StateOptions, StateStore};

/// A store under test, with what keeps it alive.
pub(crate) struct TestStore {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// The store.
    pub store: StateStore,
    /// Its URL (to open a second store on the same data, as another process would).
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh store on every reachable backend.
pub(crate) async fn stores() -> Vec<TestStore> {
    stores_with(StateOptions::default()).await
}

/// [`stores`], opened with `options`.
pub(crate) async fn stores_with(options: StateOptions) -> Vec<TestStore> {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    let mut out = vec![TestStore {
        backend: "sqlite",
        store: StateStore::open_with(&url, options.clone())
            .await
            .expect("open sqlite"),
        url,
        _dir: Some(dir),
    }];
    if let Some(url) = postgres_schema().await {
        out.push(TestStore {
            backend: "postgres",
            store: StateStore::open_with(&url, options)
                .await
                .expect("open postgres"),
            url,
            _dir: None,
        });
    }
    out
}

/// The URL of a new, empty schema on the test PostgreSQL.
pub(crate) async fn postgres_schema() -> Option<String> {
    use sqlx::Connection as _;
    let base = std::env::var("WSYNC_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let mut conn = match sqlx::PgConnection::connect(&base).await {
        Ok(c) => c,
        Err(e) => {
            let ci = std::env::var("CI").is_ok_and(|v| {
                !["", "0", "false", "no", "off"].contains(&v.trim().to_ascii_lowercase().as_str())
            });
            assert!(!ci, "PostgreSQL for the state tests is unreachable: {e}");
            eprintln!("skipping the PostgreSQL state store: unreachable ({e})");
            return None;
        }
    };
    // Schemas of earlier test runs (named by their creation second) go
    // after an hour, so the test database does not grow without end.
    let now = chrono::Utc::now().timestamp();
    let old: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'wsync_state_%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    for name in old {
        let born = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(now);
        if now - born > 3600 {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .execute(&mut conn)
                .await;
        }
    }
    let schema = format!("wsync_state_{now}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .expect("create schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

/// A lease clock the test moves by hand, and hour-long leases (the
/// heartbeat, every third of that in real time, never renews during a test).
pub(crate) fn manual_clock() -> (crate::clock::ManualClock, StateOptions) {
    let clock = crate::clock::ManualClock::new(chrono::Utc::now());
    let options = StateOptions {
        clock: Arc::new(clock.clone()),
        lease_ttl: std::time::Duration::from_secs(3600),
    };
    (clock, options)
}
