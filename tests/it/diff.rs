//! Snapshot diff (`[diff]`) against real PostgreSQL and the fake Events API:
//! only new and changed rows are sent; A → B → A arrives three times; a crash
//! between acknowledgement and commit loses nothing; a mapping change and
//! `--full-resync` send everything, and so does `full_resync_every` once it
//! has passed; duplicate and missing keys are rejected; an `only_read`
//! forecast equals the real run; `only_update` and dead letters keep unsent
//! rows out of the snapshot; the figures reach the HTTP API and `/metrics`.

use wsync::state::{RunState, StateStore};
use wsync::sync::{RunKind, RunReport, SyncContext};

use crate::support::db;
use crate::support::fake_mparticle::FakeMparticle;
use crate::support::project::TestProject;

const KEY: &str = "diff-key";
const SECRET: &str = "diff-secret-5c2e";

const PIPELINE: &str = r#"
connection = "pg"
data_model = "m"
feed = "fake"

[diff]
primary_key = ["customer_id"]
"#;

fn project(fake: &FakeMparticle, sql: &str, pipeline: &str) -> TestProject {
    let p = TestProject::new(&format!(
        r#"
[connections.pg]
type = "postgres"
url = "{url}"
chunk_rows = 10000

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
    p.model("m", sql);
    p.pipeline("p", pipeline);
    p
}

async fn create_table(pool: &sqlx::PgPool, table: &str, rows: u32) {
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (customer_id text, email text, plan text);
         INSERT INTO {table}
           SELECT 'c' || i, 'u' || i || '@example.com', 'basic'
           FROM generate_series(1, {rows}) AS i;"
    ))
    .execute(pool)
    .await
    .unwrap();
}

async fn exec(pool: &sqlx::PgPool, sql: &str) {
    sqlx::raw_sql(sql).execute(pool).await.unwrap();
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

/// (new, changed, unchanged, batches acknowledged) of a run.
fn figures(r: &RunReport) -> (u64, u64, u64, u64) {
    let c = &r.record.counts;
    (c.rows_new, c.rows_changed, c.rows_unchanged, c.batches_sent)
}

/// The `plan` attribute of the fake's profile with this customer id.
fn plan_of(fake: &FakeMparticle, customer: &str) -> Option<serde_json::Value> {
    fake.profiles()
        .into_iter()
        .find(|p| p.identities.get("customer_id") == Some(&serde_json::json!(customer)))
        .and_then(|p| p.attributes.get("plan").cloned())
}

fn state_url(p: &TestProject) -> String {
    format!("sqlite://{}", p.root().join(".wsync/state.db").display())
}

#[tokio::test]
async fn only_new_and_changed_rows_of_100k_are_sent() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    const ROWS: u64 = 100_000;
    let table = db::unique_table("diff_big");
    create_table(&pool, &table, ROWS as u32).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(
        &fake,
        &format!("SELECT customer_id, email, plan FROM {table}"),
        &format!("{PIPELINE}on_delete = \"unset_attributes\"\n"),
    );
    let ctx = p.context().await;

    let first = run(&ctx).await;
    assert_eq!(figures(&first), (ROWS, 0, 0, ROWS));
    assert_eq!(fake.distinct_applied(), ROWS as usize);
    assert_eq!(ctx.state.snapshot_keys("p").await.unwrap(), ROWS);

    let requests = fake.requests().len();
    let second = run(&ctx).await;
    assert_eq!(figures(&second), (0, 0, ROWS, 0));
    assert_eq!(
        fake.requests().len(),
        requests,
        "an unchanged model sends nothing"
    );

    exec(
        &pool,
        &format!(
            "UPDATE {table} SET plan = 'pro' WHERE substr(customer_id, 2)::int % 128 = 0 \
             AND substr(customer_id, 2)::int <= 99456"
        ),
    )
    .await;
    let third = run(&ctx).await;
    assert_eq!(figures(&third), (0, 777, ROWS - 777, 777));
    assert_eq!(fake.duplicates(), 0);
    assert_eq!(plan_of(&fake, "c128"), Some(serde_json::json!("pro")));

    // The run records, the JSON of `wsync runs` and report.json carry the figures.
    let json = wsync::scheduler::status::run_json(&third.record);
    assert_eq!(json["rows_changed"], 777);
    assert_eq!(json["rows_unchanged"], ROWS - 777);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&third.files["report"]).unwrap()).unwrap();
    assert_eq!(report["rows_changed"], 777);
    assert_eq!(report["rows_sent_or_would_be_sent"], 777);
    let stored = ctx.state.run(third.record.id).await.unwrap().unwrap();
    assert_eq!(stored.counts.rows_unchanged, ROWS - 777);

    // Ten rows leave the model: ten batches unset what they had sent.
    exec(
        &pool,
        &format!("DELETE FROM {table} WHERE substr(customer_id, 2)::int BETWEEN 1001 AND 1010"),
    )
    .await;
    let before = fake.batches().len();
    let fourth = run(&ctx).await;
    assert_eq!(fourth.record.counts.rows_unset, 10);
    assert_eq!(figures(&fourth), (0, 0, ROWS - 10, 10));
    let unset: Vec<_> = fake.batches()[before..].to_vec();
    assert_eq!(unset.len(), 10);
    for batch in &unset {
        assert_eq!(
            batch["deleted_user_attributes"],
            serde_json::json!(["plan"]),
            "{batch}"
        );
        // The key is an identity: it alone addresses the profile (what the
        // snapshot keeps per key, compactly).
        assert!(
            batch["user_identities"]["customer_id"].is_string(),
            "{batch}"
        );
        assert!(batch["user_identities"].get("email").is_none(), "{batch}");
    }
    assert_eq!(plan_of(&fake, "c1005"), None);
    assert_eq!(plan_of(&fake, "c1011"), Some(serde_json::json!("basic")));
    assert_eq!(ctx.state.snapshot_keys("p").await.unwrap(), ROWS - 10);
    // Unset once: the next run sends nothing.
    assert_eq!(figures(&run(&ctx).await), (0, 0, ROWS - 10, 0));
}

#[tokio::test]
async fn a_value_that_goes_a_b_a_arrives_three_times_and_ends_at_a() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("diff_aba");
    create_table(&pool, &table, 3).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(
        &fake,
        &format!("SELECT customer_id, email, plan FROM {table}"),
        PIPELINE,
    );
    let ctx = p.context().await;
    run(&ctx).await;
    assert_eq!(plan_of(&fake, "c1"), Some(serde_json::json!("basic")));
    exec(
        &pool,
        &format!("UPDATE {table} SET plan = 'pro' WHERE customer_id = 'c1'"),
    )
    .await;
    assert_eq!(figures(&run(&ctx).await), (0, 1, 2, 1));
    assert_eq!(plan_of(&fake, "c1"), Some(serde_json::json!("pro")));
    exec(
        &pool,
        &format!("UPDATE {table} SET plan = 'basic' WHERE customer_id = 'c1'"),
    )
    .await;
    assert_eq!(figures(&run(&ctx).await), (0, 1, 2, 1));
    assert_eq!(plan_of(&fake, "c1"), Some(serde_json::json!("basic")));
    let c1: Vec<_> = fake
        .batches()
        .into_iter()
        .filter(|b| b["user_identities"]["customer_id"] == "c1")
        .collect();
    assert_eq!(c1.len(), 3);
    assert_eq!(fake.duplicates(), 0, "each version has its own id");
}

#[tokio::test]
async fn a_crash_between_acknowledgement_and_commit_loses_nothing() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("diff_crash");
    create_table(&pool, &table, 200).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(
        &fake,
        &format!("SELECT customer_id, email, plan FROM {table}"),
        PIPELINE,
    );
    let ctx = p.context().await;
    run(&ctx).await;
    exec(
        &pool,
        &format!("UPDATE {table} SET plan = 'pro' WHERE customer_id IN ('c1', 'c2', 'c3')"),
    )
    .await;
    // The state store as it was before the next run: restoring it after the
    // run is a crash after every batch was acknowledged, before the commit.
    let backup = p.root().join("before.db");
    let raw = sqlx::SqlitePool::connect(&state_url(&p)).await.unwrap();
    sqlx::query("VACUUM INTO ?")
        .bind(backup.display().to_string())
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;
    let acknowledged = run(&ctx).await;
    assert_eq!(figures(&acknowledged), (0, 3, 197, 3));
    ctx.state.close().await;
    drop(ctx);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(p.root().join(format!(".wsync/state.db{suffix}")));
    }
    std::fs::rename(&backup, p.root().join(".wsync/state.db")).unwrap();

    let ctx = p.context().await;
    let again = run(&ctx).await;
    // Sent once more, with the same ids: mParticle applies them once.
    assert_eq!(figures(&again), (0, 3, 197, 3));
    assert_eq!(fake.duplicates(), 3);
    assert_eq!(plan_of(&fake, "c2"), Some(serde_json::json!("pro")));
    assert_eq!(figures(&run(&ctx).await), (0, 0, 200, 0));
}

// Multi-threaded: the fake must keep serving while this thread waits on the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_change_and_full_resync_send_every_row() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("diff_reset");
    create_table(&pool, &table, 50).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(
        &fake,
        &format!("SELECT customer_id, email, plan FROM {table}"),
        PIPELINE,
    );
    let ctx = p.context().await;
    run(&ctx).await;
    assert_eq!(figures(&run(&ctx).await), (0, 0, 50, 0));

    // A new mapping: every row is sent again, and the run says why.
    p.pipeline(
        "p",
        &format!(
            "{PIPELINE}\n[[mappings]]\nmapping_type = \"static\"\nvalue = \"warehouse\"\ndestination = \"user_attributes.source\"\n"
        ),
    );
    let ctx = p.context().await;
    let changed = run(&ctx).await;
    assert_eq!(figures(&changed), (0, 50, 0, 50));
    let why = changed.diff.as_ref().unwrap().invalidated.clone().unwrap();
    assert!(why.contains("mappings"), "{why}");
    assert_eq!(figures(&run(&ctx).await), (0, 0, 50, 0));

    // `wsync run --full-resync`.
    let mut resync = p.context().await;
    resync.full_resync = true;
    let forced = run(&resync).await;
    assert_eq!(figures(&forced), (0, 50, 0, 50));
    assert!(forced
        .diff
        .unwrap()
        .invalidated
        .unwrap()
        .contains("--full-resync"));
    assert_eq!(figures(&run(&ctx).await), (0, 0, 50, 0));
    assert_eq!(fake.duplicates(), 0, "every resend is a new version");

    // The CLI flag.
    let (code, stdout, stderr) = p.wsync(&["run", "p", "--full-resync"], &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("Snapshot invalidated"), "{stdout}");
}

#[tokio::test]
async fn duplicate_and_missing_keys_are_rejected_with_their_reasons() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("diff_keys");
    create_table(&pool, &table, 20).await;
    exec(
        &pool,
        &format!(
            "INSERT INTO {table} VALUES ('c5', 'dup@example.com', 'x'), \
             (NULL, 'null@example.com', 'x'), ('', 'empty@example.com', 'x')"
        ),
    )
    .await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(
        &fake,
        &format!("SELECT customer_id, email, plan FROM {table} ORDER BY email"),
        PIPELINE,
    );
    let ctx = p.context().await;
    let report = run(&ctx).await;
    let rejected = &report.stats.rows_rejected;
    assert_eq!(rejected.get("duplicate_key"), Some(&2));
    assert_eq!(rejected.get("missing_key"), Some(&2));
    assert_eq!(report.record.counts.rows_rejected, 4);
    assert_eq!(figures(&report), (19, 0, 0, 19));
    let text = std::fs::read_to_string(&report.files["rejected"]).unwrap();
    assert_eq!(text.matches("\"duplicate_key\"").count(), 2, "{text}");
    assert_eq!(text.matches("\"missing_key\"").count(), 2, "{text}");
    assert!(text.contains("dup@example.com"));

    // Above max_rejected_pct the run fails before anything is sent.
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(
        &fake,
        &format!("SELECT customer_id, email, plan FROM {table}"),
        &format!("max_rejected_pct = 10\n{PIPELINE}"),
    );
    let ctx = p.context().await;
    let failed = wsync::sync::run(&ctx, "p", RunKind::Manual).await.unwrap();
    assert_eq!(failed.record.state, RunState::Failed);
    let error = failed.record.error.clone().unwrap();
    assert!(error.contains("max_rejected_pct = 10"), "{error}");
    assert!(fake.requests().is_empty());
    assert_eq!(ctx.state.snapshot_keys("p").await.unwrap(), 0);
    let text = std::fs::read_to_string(&failed.files["rejected"]).unwrap();
    assert_eq!(text.lines().count(), 4);
}

#[tokio::test]
async fn a_primary_key_the_model_does_not_return_is_named() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("diff_nokey");
    create_table(&pool, &table, 2).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(&fake, &format!("SELECT email, plan FROM {table}"), PIPELINE);
    let ctx = p.context().await;
    let report = wsync::sync::run(&ctx, "p", RunKind::Manual).await.unwrap();
    let error = report.record.error.unwrap();
    assert!(
        error.contains("diff.primary_key names `customer_id`") && error.contains("email, plan"),
        "{error}"
    );
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn an_only_read_forecast_equals_the_real_run() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("diff_dry");
    create_table(&pool, &table, 300).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let sql = format!("SELECT customer_id, email, plan FROM {table}");
    let p = project(&fake, &sql, PIPELINE);
    let ctx = p.context().await;
    run(&ctx).await;
    exec(
        &pool,
        &format!(
            "UPDATE {table} SET plan = 'pro' WHERE customer_id IN ('c1', 'c2'); \
             INSERT INTO {table} VALUES ('c301', 'n@example.com', 'new')"
        ),
    )
    .await;
    // The same pipeline as a dry run.
    p.pipeline(
        "p",
        &PIPELINE.replace(
            "feed = \"fake\"",
            "feed = \"fake\"\ninput_protection = \"only_read\"",
        ),
    );
    let dry_ctx = p.context().await;
    let requests = fake.requests().len();
    let runs = dry_ctx.state.count_runs(Some("p")).await.unwrap();
    let dry = run(&dry_ctx).await;
    assert!(dry.record.dry_run);
    assert_eq!(figures(&dry), (1, 2, 298, 0));
    assert_eq!(dry.requests, 1, "three batches would go in one request");
    assert_eq!(fake.requests().len(), requests);
    assert_eq!(dry_ctx.state.count_runs(Some("p")).await.unwrap(), runs);
    assert_eq!(dry_ctx.state.snapshot_keys("p").await.unwrap(), 300);
    // Its spool and staging file are gone.
    assert!(!dry.spool.as_ref().unwrap().dir.exists());

    p.pipeline("p", PIPELINE);
    let real = run(&p.context().await).await;
    assert_eq!(figures(&real), (1, 2, 298, 3));
    assert_eq!(real.requests, dry.requests);
    let store = StateStore::open(&state_url(&p)).await.unwrap();
    assert_eq!(store.snapshot_keys("p").await.unwrap(), 301);
}

const INCREMENTAL: &str = r#"
connection = "pg"
data_model = "m"
feed = "fake"

[sync_mode]
type = "incremental"
iterator_field = "updated_at"
iterator_data_type = "timestamp_tz"
lag = 86400
"#;

async fn create_timed_table(pool: &sqlx::PgPool, table: &str, rows: u32) {
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (customer_id text, email text, plan text, updated_at timestamptz);
         INSERT INTO {table}
           SELECT 'c' || i, 'u' || i || '@example.com', 'basic',
                  now() - interval '1 hour' + i * interval '1 millisecond'
           FROM generate_series(1, {rows}) AS i;"
    ))
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn incremental_with_diff_skips_rows_re_read_under_lag() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("diff_incr");
    create_timed_table(&pool, &table, 40).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(
        &fake,
        &format!("SELECT customer_id, email, plan, updated_at FROM {table}"),
        &format!("{INCREMENTAL}\n[diff]\nprimary_key = [\"customer_id\"]\n"),
    );
    let ctx = p.context().await;
    assert_eq!(figures(&run(&ctx).await), (40, 0, 0, 40));
    // The day of lag re-reads every row: none changed, none is sent.
    exec(
        &pool,
        &format!("UPDATE {table} SET plan = 'pro', updated_at = now() WHERE customer_id = 'c7'"),
    )
    .await;
    assert_eq!(figures(&run(&ctx).await), (0, 1, 39, 1));
    assert_eq!(plan_of(&fake, "c7"), Some(serde_json::json!("pro")));
}

#[tokio::test]
async fn without_diff_an_incremental_a_b_a_gets_three_ids() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("nodiff_aba");
    create_timed_table(&pool, &table, 2).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(
        &fake,
        &format!("SELECT customer_id, email, plan, updated_at FROM {table}"),
        &INCREMENTAL.replace("lag = 86400\n", ""),
    );
    let ctx = p.context().await;
    run(&ctx).await;
    for plan in ["pro", "basic"] {
        exec(
            &pool,
            &format!(
                "UPDATE {table} SET plan = '{plan}', updated_at = now() WHERE customer_id = 'c1'"
            ),
        )
        .await;
        let r = run(&ctx).await;
        assert_eq!(r.record.counts.batches_sent, 1);
        assert_eq!(plan_of(&fake, "c1"), Some(serde_json::json!(plan)));
    }
    assert_eq!(fake.duplicates(), 0);
}

/// Move the snapshot's last full send back by `days` in the state store.
async fn resynced_days_ago(p: &TestProject, days: i64) {
    let raw = sqlx::SqlitePool::connect(&state_url(p)).await.unwrap();
    sqlx::query("UPDATE diff_pipelines SET resynced_at = $1 WHERE pipeline_id = 'p'")
        .bind((chrono::Utc::now() - chrono::Duration::days(days)).to_rfc3339())
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;
}

#[tokio::test]
async fn full_resync_every_sends_every_row_once_it_has_passed() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("diff_every");
    create_table(&pool, &table, 30).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(
        &fake,
        &format!("SELECT customer_id, email, plan FROM {table}"),
        &format!("{PIPELINE}full_resync_every = \"7d\"\n"),
    );
    let ctx = p.context().await;
    assert_eq!(figures(&run(&ctx).await), (30, 0, 0, 30));
    resynced_days_ago(&p, 6).await;
    assert_eq!(figures(&run(&ctx).await), (0, 0, 30, 0), "6 of 7 days");
    resynced_days_ago(&p, 8).await;
    let resync = run(&ctx).await;
    assert_eq!(figures(&resync), (0, 30, 0, 30));
    let why = resync.diff.as_ref().unwrap().invalidated.clone().unwrap();
    assert!(why.contains("diff.full_resync_every"), "{why}");
    // The full send restarted the period.
    assert_eq!(figures(&run(&ctx).await), (0, 0, 30, 0));
    assert_eq!(fake.duplicates(), 0, "a resync sends new versions");
}

#[tokio::test]
async fn only_update_with_diff_snapshots_only_rows_sent_to_existing_profiles() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("diff_upd");
    create_table(&pool, &table, 4).await;
    let known = db::unique_table("diff_upd_known");
    exec(
        &pool,
        &format!(
            "CREATE TABLE {known} (customer_id text, email text); \
             INSERT INTO {known} VALUES ('c1', NULL), ('c2', NULL);"
        ),
    )
    .await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    fake.seed_profile(1, &[("customer_id", "c1")], serde_json::json!({}));
    fake.seed_profile(2, &[("customer_id", "c2")], serde_json::json!({}));
    let p = project(
        &fake,
        &format!("SELECT customer_id, email, plan FROM {table}"),
        &PIPELINE.replace(
            "\n[diff]",
            "input_protection = \"only_update\"\n\n[resolver]\ntype = \"sql\"\n\
             data_model = \"known\"\n\n[diff]",
        ),
    );
    p.model("known", &format!("SELECT customer_id, email FROM {known}"));
    let ctx = p.context().await;
    // c3 and c4 have no profile: skipped, so not in the snapshot.
    assert_eq!(figures(&run(&ctx).await), (4, 0, 0, 2));
    assert_eq!(ctx.state.snapshot_keys("p").await.unwrap(), 2);
    assert_eq!(figures(&run(&ctx).await), (2, 0, 2, 0));
    // c3 gets a profile and c1 changes: both go out; c4 still waits.
    exec(
        &pool,
        &format!(
            "INSERT INTO {known} VALUES ('c3', NULL); \
             UPDATE {table} SET plan = 'pro' WHERE customer_id = 'c1';"
        ),
    )
    .await;
    fake.seed_profile(3, &[("customer_id", "c3")], serde_json::json!({}));
    assert_eq!(figures(&run(&ctx).await), (2, 1, 1, 2));
    assert_eq!(plan_of(&fake, "c1"), Some(serde_json::json!("pro")));
    assert_eq!(figures(&run(&ctx).await), (1, 0, 3, 0));
    assert_eq!(fake.profiles_created(), 0);
}

#[tokio::test]
async fn a_dead_lettered_row_is_not_snapshotted_and_goes_again_next_run() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("diff_dead");
    exec(
        &pool,
        &format!(
            "CREATE TABLE {table} (customer_id text, plan text, poison boolean); \
             INSERT INTO {table} SELECT 'c' || i, 'basic', i = 3 FROM generate_series(1, 5) AS i;"
        ),
    )
    .await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    fake.set_poison_rule(true);
    let p = project(
        &fake,
        &format!("SELECT customer_id, plan, poison FROM {table}"),
        &PIPELINE.replace("\n[diff]", "retry_dead_letters = false\n\n[diff]"),
    );
    let ctx = p.context().await;
    let first = wsync::sync::run(&ctx, "p", RunKind::Manual).await.unwrap();
    assert_eq!(figures(&first), (5, 0, 0, 4));
    assert_eq!(first.record.counts.dead_letters, 1);
    assert_eq!(ctx.state.snapshot_keys("p").await.unwrap(), 4);
    let refused = ctx.state.dead_letters("p", None, 10, 0).await.unwrap();
    assert_eq!(refused.len(), 1);

    // No longer refused: the row goes again, under the same id (it was
    // never applied), and only then joins the snapshot.
    fake.set_poison_rule(false);
    let second = run(&ctx).await;
    assert_eq!(figures(&second), (1, 0, 4, 1));
    let resent = fake.batches().last().cloned().unwrap();
    assert_eq!(resent["user_identities"]["customer_id"], "c3");
    assert_eq!(
        resent["source_request_id"].as_str(),
        refused[0].source_request_id.as_deref()
    );
    assert_eq!(ctx.state.snapshot_keys("p").await.unwrap(), 5);
    assert_eq!(figures(&run(&ctx).await), (0, 0, 5, 0));
    assert_eq!(fake.duplicates(), 0);
}

/// GET `path` of the daemon's API (no token configured: loopback).
async fn api_get(base: &str, path: &str) -> serde_json::Value {
    let response = reqwest::get(format!("{base}{path}")).await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "{path}");
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

/// Trigger a run through the API and wait until the `n`th run succeeded.
async fn trigger_and_wait(base: &str, n: u64) -> serde_json::Value {
    trigger_and_wait_with(base, n, "").await
}

async fn trigger_and_wait_with(base: &str, n: u64, query: &str) -> serde_json::Value {
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let response = client
            .post(format!("{base}/pipelines/p/trigger{query}"))
            .send()
            .await
            .unwrap();
        // The previous run's record can read `success` a moment before the
        // daemon lets go of the pipeline (409, already in progress): on a
        // loaded machine, ask again.
        if response.status().as_u16() != 409 || std::time::Instant::now() >= deadline {
            assert_eq!(response.status().as_u16(), 202);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    loop {
        let page = api_get(base, "/pipelines/p/runs?page=1&page_size=1").await;
        let run = &page["items"][0];
        if page["total"] == n && run["pipeline_run_state"] == "success" {
            return run.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no run {n}: {page}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

// Multi-threaded: the daemon, its API and the fake serve while the test polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_figures_reach_the_http_api_and_prometheus() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("diff_api");
    create_table(&pool, &table, 20).await;
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(
        &fake,
        &format!("SELECT customer_id, email, plan FROM {table}"),
        &PIPELINE.replace(
            "\n[diff]",
            "\n[schedule]\ntype = \"on_demand\"\n\n[diff]\non_delete = \"unset_attributes\"",
        ),
    );
    let ctx = p.context().await;
    let daemon = wsync::scheduler::Daemon::new(ctx.clone());
    let loop_task = tokio::spawn(daemon.clone().run());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = wsync::api::router(ctx.clone(), daemon.clone(), None);
    let server = tokio::spawn(wsync::api::serve(listener, router, ctx.shutdown.clone()));

    let first = trigger_and_wait(&base, 1).await;
    assert_eq!(first["rows_new"], 20, "{first}");
    exec(
        &pool,
        &format!(
            "UPDATE {table} SET plan = 'pro' WHERE customer_id IN ('c1', 'c2', 'c3'); \
             DELETE FROM {table} WHERE customer_id IN ('c19', 'c20');"
        ),
    )
    .await;
    let second = trigger_and_wait(&base, 2).await;
    for (figure, n) in [
        ("rows_new", 0),
        ("rows_changed", 3),
        ("rows_unchanged", 15),
        ("rows_unset", 2),
    ] {
        assert_eq!(second[figure], n, "{figure}: {second}");
    }

    let text = match api_get(&base, "/metrics").await {
        serde_json::Value::String(text) => text,
        other => panic!("{other}"),
    };
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    for (outcome, n) in [
        ("new", 20.0),
        ("changed", 3.0),
        ("unchanged", 15.0),
        ("unset", 2.0),
    ] {
        let sample = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "wsync_diff_rows_total"
                    && s.labels.get("pipeline") == Some("p")
                    && s.labels.get("outcome") == Some(outcome)
            })
            .unwrap_or_else(|| panic!("{outcome} not in\n{text}"));
        assert!(
            matches!(
                sample.value,
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) if v == n
            ),
            "{outcome}: {:?}",
            sample.value
        );
    }
    // A trigger can ask for a full resync: every known row goes again.
    let third = trigger_and_wait_with(&base, 3, "?full_resync=true").await;
    assert_eq!(third["rows_changed"], 18, "{third}");
    assert_eq!(third["rows_unchanged"], 0, "{third}");
    ctx.shutdown.cancel();
    loop_task.await.unwrap().unwrap();
    server.await.unwrap().unwrap();
}
