//! A project whose state store is PostgreSQL (`state.url = "postgres://…"`):
//! runs, watermarks, dead letters and the diff snapshot (copied into the
//! run's staging file a page at a time) behave as on SQLite, through the
//! library and through the CLI, and the store's password never shows.

use wsync::state::RunState;
use wsync::sync::{RunKind, RunReport, SyncContext};

use crate::support::db;
use crate::support::fake_mparticle::FakeMparticle;
use crate::support::project::TestProject;

const KEY: &str = "pgstate-key";
const SECRET: &str = "pgstate-secret-7a1f";

fn project(fake: &FakeMparticle, state: &str, table: &str) -> TestProject {
    let p = TestProject::new(&format!(
        r#"
[state]
url = "{state}"

[connections.pg]
type = "postgres"
url = "{url}"
chunk_rows = 100

[feeds.fake]
base_url = "{base}"
api_key = "{KEY}"
api_secret = "{SECRET}"
rate_limit_per_sec = 0
retry_initial_backoff_ms = 1
"#,
        url = db::postgres_url(),
        base = fake.base_url(),
    ));
    p.model("m", &format!("SELECT customer_id, plan FROM {table}"));
    p.pipeline(
        "p",
        r#"
connection = "pg"
data_model = "m"
feed = "fake"

[diff]
primary_key = ["customer_id"]
on_delete = "unset_attributes"
"#,
    );
    p
}

async fn run(ctx: &SyncContext) -> RunReport {
    let report = wsync::sync::run(ctx, "p", RunKind::Manual).await.unwrap();
    assert_eq!(
        report.record.state,
        RunState::Success,
        "{:?}",
        report.record.error
    );
    report
}

#[tokio::test]
async fn a_postgres_state_store_runs_diffs_and_lists_like_sqlite() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("pgstate");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (customer_id text, plan text);
         INSERT INTO {table} SELECT 'c' || i, 'basic' FROM generate_series(1, 25000) AS i;"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let (state, _) = db::state_schema(&pool).await;
    let p = project(&fake, &state, &table);
    let ctx = p.context().await;
    assert_eq!(ctx.state.backend(), wsync::state::Backend::Postgres);
    assert!(ctx.state.file().is_none());

    let first = run(&ctx).await;
    assert_eq!(first.record.counts.rows_new, 25_000);
    assert_eq!(first.record.counts.batches_sent, 25_000);
    assert_eq!(ctx.state.snapshot_keys("p").await.unwrap(), 25_000);
    // Nothing changed: the snapshot (more than one page of it) is copied in
    // and every row is unchanged.
    let second = run(&ctx).await;
    assert_eq!(second.record.counts.rows_unchanged, 25_000);
    assert_eq!(second.record.counts.batches_sent, 0);
    // 7 rows change, 3 go away.
    sqlx::raw_sql(&format!(
        "UPDATE {table} SET plan = 'gold' WHERE customer_id IN ('c1','c2','c3','c4','c5','c6','c7');
         DELETE FROM {table} WHERE customer_id IN ('c100','c200','c300');"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let third = run(&ctx).await;
    let c = &third.record.counts;
    assert_eq!(
        (c.rows_changed, c.rows_unset, c.rows_unchanged),
        (7, 3, 24_990)
    );
    assert_eq!(c.batches_sent, 10);
    assert_eq!(ctx.state.snapshot_keys("p").await.unwrap(), 24_997);

    // The CLI reads the same store.
    let (code, out, err) = p.wsync(&["runs", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains("\"rows_changed\":7"), "{out}");
    let (code, out, err) = p.wsync(&["status"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("#3 success"), "{out}");

    // A store that cannot be opened (here: no such database, and a
    // password in the URL, given through state.url_env) is a clear error
    // that does not show the password.
    let bad = state
        .replace("postgres://postgres@", "postgres://postgres:Sekr1t-pw@")
        .replace("/test?", "/no_such_database_here?");
    let toml = std::fs::read_to_string(p.root().join("wsync.toml")).unwrap();
    std::fs::write(
        p.root().join("wsync.toml"),
        toml.replace(
            &format!("url = \"{state}\""),
            "url_env = \"WSYNC_TEST_BAD_STATE_URL\"",
        ),
    )
    .unwrap();
    let (code, _, err) = p.wsync(&["runs"], &[("WSYNC_TEST_BAD_STATE_URL", &bad)]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot open the state store"), "{err}");
    assert!(!err.contains("Sekr1t-pw"), "{err}");
}

/// What a feed's only sender learned of the account's limit is kept in the
/// state store (per feed, never under its key) for the next run to start at.
#[tokio::test]
async fn the_learned_account_limit_is_kept_for_the_next_run() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("pgstate_learn");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (customer_id text, plan text);
         INSERT INTO {table} SELECT 'c' || i, 'basic' FROM generate_series(1, 1500) AS i;"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let fake = FakeMparticle::start(KEY, SECRET).await;
    fake.set_rate_limit(Some(270.0));
    let (state, schema) = db::state_schema(&pool).await;
    let p = project(&fake, &state, &table);
    // A user who does not know the account's limit.
    let toml = std::fs::read_to_string(p.root().join("wsync.toml")).unwrap();
    std::fs::write(
        p.root().join("wsync.toml"),
        toml.replace("rate_limit_per_sec = 0", "rate_limit_per_sec = 1000"),
    )
    .unwrap();
    let ctx = p.context().await;
    let first = run(&ctx).await;
    assert_eq!(first.record.counts.batches_sent, 1500);
    let feed = &ctx.project.feeds["fake"];
    let key = wsync::sync::budget::feed_key(&feed.base_url, feed.api_key.expose());
    let learned = ctx
        .state
        .learned_rate(&key)
        .await
        .unwrap()
        .expect("a learned limit was kept");
    assert!(
        (200.0..=300.0).contains(&learned.rate),
        "learned {} batches/s of a 270/s account",
        learned.rate
    );
    let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT feed FROM {}.feed_limits", schema))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows, vec![key]);
    assert!(!rows[0].contains(KEY));
}
