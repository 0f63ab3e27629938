//! The `wsync` binary as a user meets it: the quickstart demo project, exit codes,
//! error messages that name what to fix, and secrets that never show.

use std::path::Path;

use crate::support::db;
use crate::support::project::{read_jsonl, TestProject};

/// Copy the repository's demo project (wsync.toml, sql/, schedules/, seed/) into
/// a temporary folder, as a new user's clone would have it.
pub(crate) fn demo_project() -> TestProject {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = TestProject::new(&std::fs::read_to_string(repo.join("wsync.toml")).unwrap());
    for folder in ["sql", "schedules", "seed"] {
        for entry in std::fs::read_dir(repo.join(folder)).unwrap() {
            let entry = entry.unwrap();
            let text = std::fs::read_to_string(entry.path()).unwrap();
            p.file(
                &format!("{folder}/{}", entry.file_name().to_string_lossy()),
                &text,
            );
        }
    }
    p
}

/// The value of one row of `wsync run`'s summary table.
fn figure(stdout: &str, name: &str) -> Option<String> {
    stdout.lines().find_map(|line| {
        let cells: Vec<&str> = line.trim_matches('│').split('┆').map(str::trim).collect();
        (cells.len() == 2 && cells[0] == name).then(|| cells[1].to_owned())
    })
}

#[test]
fn quickstart_runs_the_demo_as_a_dry_run() {
    let p = demo_project();
    let (code, stdout, stderr) = p.wsync(&["run", "demo_users"], &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Dry run of pipeline `demo_users`: success (only_read: nothing was sent, nothing recorded in the state store)"),
        "{stdout}"
    );
    assert_eq!(
        figure(&stdout, "records_extracted").as_deref(),
        Some("8"),
        "{stdout}"
    );
    assert_eq!(
        figure(&stdout, "records_mapped").as_deref(),
        Some("7"),
        "{stdout}"
    );
    assert_eq!(
        figure(&stdout, "batches_sent").as_deref(),
        Some("0"),
        "{stdout}"
    );

    // The would-be batches: 8 demo rows, one without any identity. The summary
    // names the files, in the dry run's own folder.
    let file_of = |label: &str| -> std::path::PathBuf {
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("no `{label}` line in {stdout}"));
        std::path::PathBuf::from(line.trim())
    };
    let batches_file = file_of("Would-be batches:");
    assert!(batches_file.starts_with(p.root().join(".wsync/runs/demo_users")));
    assert!(batches_file
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("dry-"));
    let batches = read_jsonl(&batches_file);
    assert_eq!(batches.len(), 7);
    let ada = &batches[0];
    assert_eq!(ada["environment"], "development");
    assert_eq!(ada["user_identities"]["customer_id"], "c-1001");
    assert_eq!(ada["user_identities"]["email"], "ada@example.com");
    assert_eq!(ada["user_attributes"]["$firstname"], "Ada");
    assert_eq!(ada["user_attributes"]["source_system"], "wsync-demo");
    assert!(
        ada["user_attributes"].get("updated_at").is_none(),
        "the iterator is not sent"
    );
    let rejected = read_jsonl(&file_of("Rejected rows:"));
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["reason"], "no_identity");
    assert_eq!(rejected[0]["values"]["$firstname"], "Anonymous");

    // only_read moves no watermark: a second run reads the same rows again.
    let (code, stdout, _) = p.wsync(&["run", "demo_users"], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        figure(&stdout, "records_extracted").as_deref(),
        Some("8"),
        "{stdout}"
    );

    // Dry runs are not run records: the report in the dry run's folder is.
    let (code, stdout, _) = p.wsync(&["runs"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("No runs recorded yet."), "{stdout}");
    let dry_runs: Vec<_> = std::fs::read_dir(p.root().join(".wsync/runs/demo_users"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dry_runs.len(), 2, "{dry_runs:?}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dry_runs[0].join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["rows_read"], 8);
    assert_eq!(report["rows_rejected"], 1);
}

#[test]
fn validate_and_preview_show_the_mapping_and_change_nothing() {
    let p = demo_project();
    let (code, stdout, stderr) = p.wsync(&["validate"], &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    for expected in [
        "user_identities.customer_id",
        "user_identities.email",
        "user_attributes.$firstname",
        "not sent (iterator)",
        "user_attributes.source_system",
    ] {
        assert!(stdout.contains(expected), "missing {expected}:\n{stdout}");
    }
    let (code, stdout, stderr) = p.wsync(&["preview", "demo_users", "--limit", "2"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let batches: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[1]["user_identities"]["customer_id"], "c-1002");
    // Preview records no run.
    let (_, stdout, _) = p.wsync(&["runs"], &[]);
    assert!(stdout.contains("No runs recorded yet"), "{stdout}");
}

#[test]
fn config_errors_exit_2_and_name_file_and_line() {
    let p = demo_project();
    p.file("schedules/broken.toml", "connection = \"demo\"\ndata_model = \"users\"\ninput_protection = \"only_read\"\nsync_mode = [\n");
    let (code, _, stderr) = p.wsync(&["validate"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("schedules/broken.toml:"), "{stderr}");

    let p = demo_project();
    let (code, _, stderr) = p.wsync(&["run", "nope"], &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("no pipeline `nope`") && stderr.contains("demo_users"),
        "{stderr}"
    );

    let p = demo_project();
    p.file(
        "wsync.toml",
        "[connections.demo]\ntype = \"postgres\"\nurl_env = \"WSYNC_TEST_SURELY_UNSET\"\n",
    );
    let (code, _, stderr) = p.wsync(&["validate"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("WSYNC_TEST_SURELY_UNSET"), "{stderr}");

    let (code, _, stderr) = p.wsync(&["frobnicate"], &[]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn a_model_that_is_not_a_single_select_is_refused() {
    let p = demo_project();
    p.model("users", "DELETE FROM customers");
    let (code, stdout, stderr) = p.wsync(&["run", "demo_users"], &[]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(stderr.contains("sql/users.sql"), "{stderr}");
    // Nothing ran: the demo warehouse still has its 8 customers.
    p.model(
        "users",
        "SELECT id AS customer_id, updated_at FROM customers",
    );
    let (code, stdout, _) = p.wsync(&["run", "demo_users"], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        figure(&stdout, "records_extracted").as_deref(),
        Some("8"),
        "{stdout}"
    );
}

#[test]
fn sql_errors_fail_the_run_with_the_database_message() {
    let p = demo_project();
    p.model(
        "users",
        "SELECT id AS customer_id, updated_at FROM no_such_table",
    );
    let (code, stdout, stderr) = p.wsync(&["run", "demo_users"], &[]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains("no_such_table"), "{stdout}");
    assert!(
        stdout.starts_with("Dry run of pipeline `demo_users`: failed"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_wrong_warehouse_password_is_reported_without_the_password() {
    if db::mysql().await.is_none() {
        return;
    }
    let password = "hunter2-wrong-pw";
    let url = db::mysql_url().replacen("mysql://root@", &format!("mysql://root:{password}@"), 1);
    let p =
        TestProject::new("[connections.my]\ntype = \"mysql\"\nurl_env = \"WSYNC_TEST_BAD_URL\"\n");
    p.model("m", "SELECT 1 AS customer_id");
    p.pipeline(
        "p",
        "connection = \"my\"\ndata_model = \"m\"\ninput_protection = \"only_read\"\n",
    );
    let (code, stdout, stderr) = p.wsync(
        &["--log", "trace", "run", "p"],
        &[("WSYNC_TEST_BAD_URL", url.as_str())],
    );
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(all.to_lowercase().contains("access denied"), "{all}");
    assert!(!all.contains(password), "{all}");
    let (code, stdout, stderr) = p.wsync(&["validate"], &[("WSYNC_TEST_BAD_URL", url.as_str())]);
    assert_eq!(code, 1);
    assert!(!stdout.contains(password) && !stderr.contains(password));
}

#[tokio::test]
async fn an_unsupported_column_type_names_the_column_and_the_cast() {
    let Some(pool) = db::postgres().await else {
        return;
    };
    let table = db::unique_table("cli_money");
    sqlx::query(&format!("CREATE TABLE {table} (id text, balance money)"))
        .execute(&pool)
        .await
        .unwrap();
    let p = TestProject::new(&format!(
        "[connections.pg]\ntype = \"postgres\"\nurl = \"{}\"\n",
        db::postgres_url()
    ));
    p.model(
        "m",
        &format!("SELECT id AS customer_id, balance FROM {table}"),
    );
    p.pipeline(
        "p",
        "connection = \"pg\"\ndata_model = \"m\"\ninput_protection = \"only_read\"\n",
    );
    let (code, stdout, stderr) = p.wsync(&["validate", "p"], &[]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("balance") && stdout.to_lowercase().contains("money"),
        "{stdout}"
    );
    assert!(
        stdout.contains("CAST(balance AS NUMERIC) AS balance"),
        "the cast that fixes it: {stdout}"
    );
}

#[test]
fn max_rejected_pct_gates_the_exit_code() {
    let p = demo_project();
    // The demo rejects 1 of 8 rows: 12.5%.
    let (code, stdout, _) = p.wsync(&["run", "demo_users", "--max-rejected-pct", "5"], &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("gate: 12.50% of the rows read were rejected, above the limit of 5%"),
        "{stdout}"
    );
    let (code, stdout, _) = p.wsync(&["run", "demo_users", "--max-rejected-pct", "20"], &[]);
    assert_eq!(code, 0, "{stdout}");
    // The pipeline setting gates too, and the flag overrides it.
    let pipeline = std::fs::read_to_string(p.root().join("schedules/demo_users.toml")).unwrap();
    p.pipeline(
        "demo_users",
        &pipeline.replace(
            "input_protection",
            "max_rejected_pct = 10\ninput_protection",
        ),
    );
    let (code, _, _) = p.wsync(&["run", "demo_users"], &[]);
    assert_eq!(code, 1);
    let (code, _, _) = p.wsync(&["run", "demo_users", "--max-rejected-pct", "50"], &[]);
    assert_eq!(code, 0);
    let (code, _, stderr) = p.wsync(&["run", "demo_users", "--max-rejected-pct", "150"], &[]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn status_pause_resume_and_backfill_as_a_user_meets_them() {
    let p = demo_project();
    let (code, _, stderr) = p.wsync(&["run", "demo_users"], &[]);
    assert_eq!(code, 0, "{stderr}");

    let status = |p: &TestProject| -> serde_json::Value {
        let (code, stdout, stderr) = p.wsync(&["status", "--json"], &[]);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str(stdout.lines().next().expect("one line")).unwrap()
    };
    let s = status(&p);
    assert_eq!(s["pipeline_id"], "demo_users");
    assert_eq!(s["input_protection"], "only_read");
    assert_eq!(s["status"], "active");
    assert_eq!(s["schedule"], "cron `0 6 * * *` Europe/Berlin");
    assert_eq!(
        s["latest_pipeline_run"],
        serde_json::Value::Null,
        "a dry run is not a run record"
    );
    // The next 06:00 in Berlin is 04:00 or 05:00 UTC.
    let next = s["next_run"].as_str().expect("next run");
    assert!(
        next.contains("T04:00:00") || next.contains("T05:00:00"),
        "{next}"
    );
    assert_eq!(
        s["watermark"],
        serde_json::Value::Null,
        "dry runs store none"
    );

    let (code, stdout, _) = p.wsync(&["pause", "demo_users"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("Paused `demo_users`"), "{stdout}");
    assert_eq!(status(&p)["status"], "paused");
    assert_eq!(status(&p)["next_run"], serde_json::Value::Null);
    let (code, _, stderr) = p.wsync(&["run", "demo_users"], &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("pipeline `demo_users` is paused (`wsync pause demo_users`; `wsync resume demo_users` undoes it)"),
        "{stderr}"
    );
    let (code, _, _) = p.wsync(&["resume", "demo_users"], &[]);
    assert_eq!(code, 0);
    assert_eq!(status(&p)["status"], "active");

    // A backfill of a range: the demo rows updated from 3 to 6 January (the
    // bounds are wall-clock times, `timestamp_ntz`).
    let (code, stdout, stderr) = p.wsync(
        &[
            "backfill",
            "demo_users",
            "--from",
            "2026-01-03T10:30:00",
            "--until",
            "2026-01-06 17:45:00",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Window: [2026-01-03T10:30:00, 2026-01-06T17:45:00)"),
        "{stdout}"
    );
    assert_eq!(
        figure(&stdout, "records_extracted").as_deref(),
        Some("3"),
        "{stdout}"
    );
    let (code, _, stderr) = p.wsync(
        &[
            "backfill",
            "demo_users",
            "--from",
            "soon",
            "--until",
            "later",
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--from `soon` is not a valid timestamp_ntz value"),
        "{stderr}"
    );
    let (_, stdout, _) = p.wsync(&["runs", "--json"], &[]);
    assert_eq!(stdout, "", "dry runs and dry backfills leave no run record");
}

/// `wsync run --write-batches` on a dry run writes every would-be batch, and
/// each one passes the fake Events API's checks (the rules mParticle applies),
/// as does every batch `wsync preview` prints.
#[test]
fn write_batches_and_preview_produce_batches_the_events_api_accepts() {
    let p = demo_project();
    let (code, stdout, stderr) = p.wsync(&["run", "demo_users", "--write-batches"], &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let path = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Would-be batches: "))
        .expect("the summary names the batches file");
    let batches = read_jsonl(Path::new(path));
    assert_eq!(batches.len(), 7, "the demo has 7 rows with an identity");
    for batch in &batches {
        crate::support::fake_mparticle::validate_batch(batch)
            .unwrap_or_else(|e| panic!("{e}: {batch}"));
    }
    let (code, stdout, _) = p.wsync(&["preview", "demo_users", "--limit", "3"], &[]);
    assert_eq!(code, 0);
    let previewed: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(previewed.len(), 3);
    for batch in &previewed {
        crate::support::fake_mparticle::validate_batch(batch)
            .unwrap_or_else(|e| panic!("{e}: {batch}"));
    }
    assert_eq!(
        previewed[..],
        batches[..3],
        "preview shows what the run would send"
    );
}

#[test]
fn backfill_with_swapped_bounds_is_a_usage_error() {
    let p = demo_project();
    let (code, stdout, stderr) = p.wsync(
        &[
            "backfill",
            "demo_users",
            "--from",
            "2026-11-05T00:00:00Z",
            "--until",
            "2026-11-02T00:00:00Z",
        ],
        &[],
    );
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("--from 2026-11-05T00:00:00Z is not before --until 2026-11-02T00:00:00Z"),
        "{stderr}"
    );
    // Equal bounds are an empty range too.
    let (code, _, stderr) = p.wsync(
        &[
            "backfill",
            "demo_users",
            "--from",
            "2026-11-02",
            "--until",
            "2026-11-02",
        ],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_limit_zero_is_a_usage_error_and_pages_show_every_run() {
    let fake =
        crate::support::fake_mparticle::FakeMparticle::start("runs-key", "runs-secret").await;
    let p = demo_project();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let wsync_toml = std::fs::read_to_string(repo.join("wsync.toml")).unwrap();
    p.file(
        "wsync.toml",
        &format!(
            "{wsync_toml}\n[feeds.fake]\nbase_url = \"{}\"\napi_key = \"runs-key\"\napi_secret = \"runs-secret\"\nrate_limit_per_sec = 0\n",
            fake.base_url()
        ),
    );
    let pipeline = std::fs::read_to_string(repo.join("schedules/demo_users.toml")).unwrap();
    p.file(
        "schedules/demo_users.toml",
        &pipeline
            .replace(
                "input_protection = \"only_read\"",
                "input_protection = \"create_and_update\"\nfeed = \"fake\"",
            )
            .replace("write_batches = true", ""),
    );
    for _ in 0..3 {
        let (code, stdout, stderr) = p.wsync(&["run", "demo_users"], &[]);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
    }
    let (code, stdout, stderr) = p.wsync(&["runs", "--limit", "0"], &[]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(!stdout.contains("No runs recorded yet"), "{stdout}");
    assert!(stderr.contains("--limit"), "{stderr}");

    let (code, stdout, _) = p.wsync(&["runs", "--limit", "2"], &[]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("Page 1 (2 run(s)); next page: --page 2"),
        "{stdout}"
    );
    let (code, stdout, _) = p.wsync(&["runs", "--limit", "2", "--page", "2"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("Page 2 (1 run(s))"), "{stdout}");
    let (_, stdout, _) = p.wsync(&["runs", "--limit", "2", "--page", "2", "--json"], &[]);
    let ids: Vec<i64> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["pipeline_run_id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, vec![1], "the oldest run is alone on page 2");
    let (code, stdout, _) = p.wsync(&["runs", "--limit", "2", "--page", "3"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("No runs on page 3"), "{stdout}");
    let (code, _, _) = p.wsync(&["runs", "--page", "0"], &[]);
    assert_eq!(code, 2);
    assert_eq!(
        fake.distinct_applied(),
        7,
        "the first run sent the 7 mappable rows"
    );
}

/// A model that one dialect reads as one SELECT (MySQL: `#` starts a comment)
/// is refused when the pipeline's own warehouse would run a second statement.
#[test]
fn a_model_is_checked_as_its_own_warehouse_reads_it() {
    let p = demo_project();
    p.model(
        "users",
        "SELECT id AS customer_id, updated_at FROM customers # ; DELETE FROM customers",
    );
    let (code, stdout, stderr) = p.wsync(&["validate"], &[]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(stderr.contains("as sqlite reads it"), "{stderr}");
    assert!(stderr.contains("schedules/demo_users.toml"), "{stderr}");
}
