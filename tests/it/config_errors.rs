//! `wsync::config::load` end to end: real project folders in temp dirs, the exact
//! error text users see, and the model a valid project becomes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use wsync::config::model::{
    ConnectionKind, Destination, Environment, Frequency, InputProtection, IteratorDataType,
    LimitPolicy, Mapping, NullPolicy, Schedule, StaticValue, SyncMode,
};
use wsync::config::{load_with_env, ConfigErrors};
use wsync::mapping::identity::IdentityType;

/// A project folder holding `files` (path, contents).
fn project(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, text) in files {
        write(dir.path(), path, text);
    }
    dir
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

/// Copy `tests/fixtures/config/NAME` into a temp dir.
fn fixture(name: &str) -> TempDir {
    fn copy(from: &Path, to: &Path) {
        for entry in std::fs::read_dir(from).expect("read fixture") {
            let entry = entry.expect("entry");
            let target = to.join(entry.file_name());
            if entry.path().is_dir() {
                std::fs::create_dir_all(&target).expect("mkdir");
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).expect("copy");
            }
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name);
    copy(&src, dir.path());
    dir
}

fn env_of(vars: &[(&str, &str)]) -> HashMap<String, OsString> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), OsString::from(*v)))
        .collect()
}

/// The rendered errors of loading `root` with `vars` as the whole environment.
fn errors(root: &Path, vars: &[(&str, &str)]) -> String {
    let env = env_of(vars);
    match load_with_env(root, &|name| env.get(name).cloned()) {
        Ok(_) => panic!("expected errors"),
        Err(ConfigErrors(errors)) => ConfigErrors(errors).to_string(),
    }
}

const MINIMAL_WSYNC: &str = r#"[connections.pg]
type = "postgres"
url_env = "PG_URL"

[feeds.main]
pod = "US1"
api_key_env = "MP_KEY"
api_secret_env = "MP_SECRET"
"#;

/// Every secret the valid fixture needs.
const FIXTURE_ENV: &[(&str, &str)] = &[
    ("WSYNC_IT_PGPASSWORD", "pg-pass-123"),
    (
        "WSYNC_IT_MARIA_URL",
        "mariadb://app:maria-pass-456@127.0.0.1:3306/dw",
    ),
    ("WSYNC_IT_MP_KEY", "mp-key-789"),
    ("WSYNC_IT_MP_SECRET", "mp-secret-abc"),
];

/// The rendered errors for `files`, with `vars` as the environment.
fn errors_of(files: &[(&str, &str)], vars: &[(&str, &str)]) -> String {
    let dir = project(files);
    errors(dir.path(), vars)
}

const USERS_SQL: (&str, &str) = ("sql/users.sql", "SELECT id AS customer_id FROM users;\n");

const MINIMAL_ENV: &[(&str, &str)] = &[
    ("PG_URL", "postgres://app:pg-secret-1@db/dw"),
    ("MP_KEY", "mp-key-2"),
    ("MP_SECRET", "mp-secret-3"),
];

#[test]
fn malformed_toml_is_reported_with_its_line_and_other_files_still_checked() {
    let text = errors_of(
        &[
            ("wsync.toml", MINIMAL_WSYNC),
            USERS_SQL,
            (
                "schedules/a.toml",
                "connection = \"pg\"\nfeed = \"main\"\ndata_model = users\ninput_protection = \"only_read\"\n",
            ),
            (
                "schedules/b.toml",
                "connection = \"pg\"\ndata_model = \"users\"\nfeed = \"main\"\ninput_protection = \"only_reed\"\n",
            ),
        ],
        MINIMAL_ENV,
    );
    assert_eq!(
        text,
        r#"2 configuration errors:
- schedules/a.toml:3: invalid string; expected `"`, `'`
  hint: fix the TOML syntax at this line (see https://toml.io)
- schedules/b.toml:4: input_protection: `only_reed` is not a valid input protection
  hint: did you mean `only_read`? use one of: create_and_update, only_update, only_read
"#
    );
}

#[test]
fn malformed_wsync_toml_line() {
    let text = errors_of(
        &[(
            "wsync.toml",
            "[state]\nurl = \"sqlite://x.db\"\n\n[connections.pg\ntype = \"sqlite\"\n",
        )],
        &[],
    );
    assert_eq!(
        text,
        "1 configuration error:\n- wsync.toml:4: invalid table header; expected `.`, `]`\n  hint: fix the TOML syntax at this line (see https://toml.io)\n"
    );
}

#[test]
fn errors_in_wsync_toml_and_two_pipelines_are_reported_together() {
    let text = errors_of(
        &[
            (
                "wsync.toml",
                "[defaults]\nenvironment = \"prod\"\nchunk_rows = 0\n\n[connections.pg]\ntype = \"postgres\"\nurl_env = \"PG_URL\"\n\n[feeds.main]\npod = \"US1\"\napi_key_env = \"MP_KEY\"\napi_secret_env = \"MP_SECRET\"\n",
            ),
            USERS_SQL,
            (
                "schedules/a.toml",
                "connection = \"pgg\"\ndata_model = \"users\"\nfeed = \"main\"\ninput_protection = \"create_and_update\"\n\n[schedule]\ntype = \"cron\"\nexpression = \"0 * * *\"\n",
            ),
            (
                "schedules/b.toml",
                "connection = \"pg\"\ndata_model = \"orders\"\ninput_protection = \"only_update\"\n\n[[mappings]]\nmapping_type = \"column\"\nsource = \"a\"\ndestination = \"user_identities.emial\"\n",
            ),
        ],
        MINIMAL_ENV,
    );
    assert_eq!(
        text,
        r#"8 configuration errors:
- wsync.toml:2: defaults.environment: `prod` is not a valid environment
  hint: did you mean `production`? use one of: development, production
- wsync.toml:3: defaults.chunk_rows: must be between 1 and 100000, not 0
  hint: the default is 1000 rows
- schedules/a.toml:1: connection: connection `pgg` is not defined in wsync.toml
  hint: did you mean `pg`? available: pg
- schedules/a.toml:8: schedule.expression: cron expression `0 * * *` has 4 fields; expected 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)
  hint: write 5 fields: minute hour day-of-month month day-of-week, e.g. "0 */15 * * *"
- schedules/b.toml: feed: missing required key
  hint: add feed = "NAME" (available: main), set input_protection = "only_read" for a dry run, or add an [export] section for an export-only pipeline
- schedules/b.toml:2: data_model: data model `orders` not found
  hint: create sql/orders.sql (available: users)
- schedules/b.toml:3: input_protection: only_update needs a [resolver] to tell existing profiles from new ones
  hint: add [resolver] with type = "idsync" (IDSync search with a platform key) or type = "sql" (a model listing the identities of known profiles); see the README's resolver section
- schedules/b.toml:8: mappings[0].destination: `emial` is not an mParticle identity type
  hint: did you mean `email`? use one of: customer_id, email, facebook, twitter, google, microsoft, yahoo, facebook_custom_audience_id, other, other_id_2, other_id_3, other_id_4, other_id_5, other_id_6, other_id_7, other_id_8, other_id_9, other_id_10, mobile_number, phone_number_2, phone_number_3, alias
"#
    );
}

#[test]
fn unknown_keys_are_all_reported_with_suggestions() {
    let text = errors_of(
        &[
            (
                "wsync.toml",
                "[state]\nurl = \"sqlite://state.db\"\nrun_dir = \"runs\"\n\n[connections.pg]\ntyp = \"postgres\"\nurl_env = \"PG_URL\"\nchunk_row = 10\n",
            ),
            USERS_SQL,
            (
                "schedules/a.toml",
                "conection = \"pg\"\ndata_model = \"users\"\ninput_protection = \"only_read\"\n\n[sync_mode]\ntype = \"incremental\"\niterator_feild = \"updated_at\"\niterator_data_type = \"timestamp_tz\"\n\n[[mappings]]\nmapping_type = \"ignore\"\nsource = \"x\"\ncolour = \"red\"\n",
            ),
        ],
        MINIMAL_ENV,
    );
    // A typo of a required key is reported once, as the typo (not also as "missing").
    assert_eq!(
        text,
        r#"6 configuration errors:
- wsync.toml:3: state.run_dir: unknown key `run_dir`
  hint: did you mean `runs_dir`? valid keys in `state`: url, url_env, runs_dir, spool_dir, spool_max_age_secs, min_free_disk_mb, lease_ttl_secs
- wsync.toml:6: connections.pg.typ: unknown key `typ`
  hint: did you mean `type`? valid keys in `connections.pg`: type, url, url_env, url_file, seed_sql, statement_timeout_secs, chunk_rows, base_url, account, user, role, warehouse, database, schema, private_key, private_key_env, private_key_file, private_key_passphrase, private_key_passphrase_env, private_key_passphrase_file, password, password_env, password_file, project, dataset, location, auth, credentials, credentials_env, credentials_file, maximum_bytes_billed
- wsync.toml:8: connections.pg.chunk_row: unknown key `chunk_row`
  hint: did you mean `chunk_rows`? valid keys in `connections.pg`: type, url, url_env, url_file, seed_sql, statement_timeout_secs, chunk_rows, base_url, account, user, role, warehouse, database, schema, private_key, private_key_env, private_key_file, private_key_passphrase, private_key_passphrase_env, private_key_passphrase_file, password, password_env, password_file, project, dataset, location, auth, credentials, credentials_env, credentials_file, maximum_bytes_billed
- schedules/a.toml:1: conection: unknown key `conection`
  hint: did you mean `connection`? valid keys at the top level: name, connection, data_model, feed, environment, input_protection, null_policy, limit_policy, paused, sync_mode, schedule, mappings, retry_dead_letters, max_rejected_pct, write_batches, export, resolver, pipeline_type, data_plan, diff
- schedules/a.toml:7: sync_mode.iterator_feild: unknown key `iterator_feild`
  hint: did you mean `iterator_field`? valid keys in `sync_mode`: type, iterator_field, iterator_data_type, from, lag, iterator_time_zone
- schedules/a.toml:13: mappings[0].colour: unknown key `colour`
  hint: remove it; valid keys in `mappings[0]`: mapping_type, source, destination, value
"#
    );
}

#[test]
fn type_errors_name_key_and_line_and_other_files_are_still_checked() {
    let text = errors_of(
        &[
            ("wsync.toml", "[feeds.main]\npod = [\"US1\"]\n"),
            USERS_SQL,
            (
                "schedules/a.toml",
                "connection = \"pg\"\ndata_model = \"users\"\ninput_protection = \"only_read\"\n\n[schedule]\ntype = \"daily\"\n",
            ),
            (
                "schedules/b.toml",
                "connection = \"pg\"\ndata_model = \"users\"\ninput_protection = \"only_read\"\nmappings = \"none\"\n",
            ),
        ],
        &[],
    );
    assert_eq!(
        text,
        r#"3 configuration errors:
- wsync.toml:2: feeds.main.pod: invalid type: array, expected a string
  hint: fix the value's type at this line
- schedules/a.toml:6: schedule.type: `daily` is not a valid schedule type
  hint: use one of: interval, cron, once, on_demand
- schedules/b.toml:4: mappings: invalid type: string "none", expected an array
  hint: fix the value's type at this line
"#
    );
}

#[test]
fn missing_env_var_is_named_and_no_secret_value_is_printed() {
    let dir = fixture("valid");
    write(dir.path(), "secrets/mp_secret", "file-secret-def\n");
    let env: Vec<(&str, &str)> = FIXTURE_ENV
        .iter()
        .copied()
        .filter(|(k, _)| *k != "WSYNC_IT_MP_KEY")
        .collect();
    let text = errors(dir.path(), &env);
    assert_eq!(
        text,
        "1 configuration error:\n- wsync.toml:27: feeds.main.api_key: environment variable `WSYNC_IT_MP_KEY` is not set\n  hint: set WSYNC_IT_MP_KEY in the environment wsync runs in (e.g. export WSYNC_IT_MP_KEY=...)\n"
    );
    for secret in [
        "pg-pass-123",
        "maria-pass-456",
        "mp-secret-abc",
        "file-secret-def",
        "literal-key",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

#[test]
fn wrong_url_from_env_is_reported_without_its_value() {
    let text = errors_of(
        &[("wsync.toml", MINIMAL_WSYNC)],
        &[
            ("PG_URL", "mysql://app:pg-secret-1@db/dw"),
            ("MP_KEY", "mp-key-2"),
            ("MP_SECRET", "mp-secret-3"),
        ],
    );
    assert_eq!(
        text,
        "1 configuration error:\n- wsync.toml:3: connections.pg.url_env: the URL (from environment variable `PG_URL`) has scheme `mysql`, which does not fit connection type `postgres`\n  hint: use a URL like postgres://user:${PGPASSWORD}@host:5432/db, or change the connection's type\n"
    );
    assert!(!text.contains("pg-secret-1"));
}

#[test]
fn wrong_enum_value() {
    let text = errors_of(
        &[
            ("wsync.toml", MINIMAL_WSYNC),
            USERS_SQL,
            (
                "schedules/a.toml",
                "connection = \"pg\"\ndata_model = \"users\"\nfeed = \"main\"\ninput_protection = \"create_and_update\"\nnull_policy = \"ignore\"\n\n[sync_mode]\ntype = \"incremental\"\niterator_field = \"updated_at\"\niterator_data_type = \"timestamp_tzz\"\n",
            ),
        ],
        MINIMAL_ENV,
    );
    assert_eq!(
        text,
        r#"2 configuration errors:
- schedules/a.toml:5: null_policy: `ignore` is not a valid null policy
  hint: use one of: skip, delete
- schedules/a.toml:10: sync_mode.iterator_data_type: `timestamp_tzz` is not a valid iterator data type
  hint: did you mean `timestamp_tz`? use one of: timestamp_tz, timestamp_ntz, date, timestamp_unixtime_s, timestamp_unixtime_ms, integer
"#
    );
}

#[test]
fn unknown_connection_reference() {
    let text = errors_of(
        &[
            ("wsync.toml", MINIMAL_WSYNC),
            USERS_SQL,
            (
                "schedules/a.toml",
                "connection = \"warehouse\"\ndata_model = \"users\"\nfeed = \"main\"\ninput_protection = \"create_and_update\"\n",
            ),
        ],
        MINIMAL_ENV,
    );
    assert_eq!(
        text,
        "1 configuration error:\n- schedules/a.toml:1: connection: connection `warehouse` is not defined in wsync.toml\n  hint: add [connections.warehouse] to wsync.toml (available: pg)\n"
    );
}

#[test]
fn missing_wsync_toml_is_one_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    // `load` itself (process environment): nothing is read before this check.
    let text = match wsync::config::load(dir.path()) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    };
    let shown = std::path::absolute(dir.path()).expect("absolute");
    assert_eq!(
        text.replace(&shown.display().to_string(), "<dir>"),
        "1 configuration error:\n- wsync.toml: no wsync.toml in <dir>: this is not a wsync project folder\n  hint: run wsync from the project folder (the one holding wsync.toml, sql/ and schedules/), or pass --config DIR\n"
    );
}

#[test]
fn valid_project_loads_with_expected_values() {
    let dir = fixture("valid");
    write(dir.path(), "secrets/mp_secret", "file-secret-def\n");
    let env = env_of(FIXTURE_ENV);
    let project = match load_with_env(dir.path(), &|name| env.get(name).cloned()) {
        Ok(project) => project,
        Err(e) => panic!("{e}"),
    };
    let root = std::path::absolute(dir.path()).expect("absolute");
    assert_eq!(project.root, root);
    assert_eq!(
        project.state.url.expose(),
        format!("sqlite://{}/.wsync/state.db", root.display())
    );
    assert_eq!(project.state.runs_dir, root.join(".wsync/runs"));

    // Connections: interpolation, mariadb rewrite, sqlite made absolute, defaults.
    let pg = &project.connections["warehouse"];
    assert_eq!(pg.kind, ConnectionKind::Postgres);
    assert_eq!(
        pg.url.expose(),
        "postgres://app:pg-pass-123@db.example:5432/dw?sslmode=require"
    );
    assert_eq!(pg.statement_timeout.as_secs(), 60);
    assert_eq!(pg.chunk_rows, 500, "from [defaults]");
    let maria = &project.connections["maria"];
    assert_eq!(maria.kind, ConnectionKind::MySql);
    assert_eq!(
        maria.url.expose(),
        "mysql://app:maria-pass-456@127.0.0.1:3306/dw"
    );
    assert_eq!(maria.statement_timeout.as_secs(), 300, "built-in default");
    let demo = &project.connections["demo"];
    assert_eq!(demo.kind, ConnectionKind::Sqlite);
    assert_eq!(
        demo.url.expose(),
        format!("sqlite://{}/demo.db?mode=rwc", root.display())
    );
    assert_eq!(demo.seed_sql, Some(root.join("seed/demo.sql")));
    assert!(
        !format!("{pg:?}").contains("pg-pass-123"),
        "Debug hides secrets"
    );

    // Feeds: pod base_url, base_url override, secrets from all three sources.
    let main = &project.feeds["main"];
    assert_eq!(main.base_url, "https://s2s.us1.mparticle.com");
    assert_eq!(main.api_key.expose(), "mp-key-789");
    assert_eq!(main.api_secret.expose(), "file-secret-def");
    assert_eq!(main.environment, Environment::Production);
    assert_eq!(main.request_timeout.as_secs(), 30);
    let local = &project.feeds["local"];
    assert_eq!(local.base_url, "http://127.0.0.1:9999");
    assert_eq!(local.api_key.expose(), "literal-key");
    assert_eq!(local.api_secret.expose(), "mp-secret-abc");
    assert_eq!(
        local.environment,
        Environment::Development,
        "from [defaults]"
    );
    assert_eq!(local.request_timeout.as_secs(), 5);

    // Models: trimmed, one trailing semicolon removed.
    assert_eq!(
        project.models["users"].sql,
        "SELECT id AS customer_id, email, first_name, updated_at FROM users"
    );
    assert_eq!(project.models["one"].sql, "SELECT 1 AS customer_id");
    assert_eq!(project.models["users"].path, root.join("sql/users.sql"));

    // Pipelines.
    assert_eq!(project.pipelines.len(), 3);
    let users = &project.pipelines["users"];
    assert_eq!(users.name, "Users to mParticle");
    assert_eq!(users.path, root.join("schedules/users.toml"));
    assert_eq!(users.connection, "warehouse");
    assert_eq!(users.data_model, "users");
    assert_eq!(users.feed.as_deref(), Some("main"));
    assert_eq!(users.environment, Environment::Production, "from feed main");
    assert_eq!(users.input_protection, InputProtection::CreateAndUpdate);
    assert_eq!(users.null_policy, NullPolicy::Delete, "from [defaults]");
    assert_eq!(
        users.limit_policy,
        LimitPolicy::Truncate,
        "built-in default"
    );
    assert!(!users.paused);
    assert_eq!(
        users.sync_mode,
        SyncMode::Incremental {
            iterator_field: "updated_at".into(),
            iterator_data_type: IteratorDataType::TimestampTz,
            from: Some("2024-01-01T00:00:00Z".into()),
            lag: 0,
            time_zone: chrono_tz::UTC,
        }
    );
    match &users.schedule {
        Schedule::Cron {
            expression,
            time_zone,
        } => {
            assert_eq!(expression, "0 9 * * 1-5");
            assert_eq!(time_zone, "Europe/Berlin");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        users.mappings,
        vec![
            Mapping::Column {
                source: "first_name".into(),
                destination: Destination::Attribute("$firstname".into()),
            },
            Mapping::Static {
                value: StaticValue::Integer(8_004_211_113_417_232_015),
                destination: Destination::Mpid,
            },
            Mapping::Static {
                value: StaticValue::String("warehouse".into()),
                destination: Destination::Attribute("source".into()),
            },
            Mapping::Ignore {
                source: "email".into()
            },
        ]
    );

    let dry = &project.pipelines["dry-run"];
    assert_eq!(dry.name, "dry-run", "name defaults to the id");
    assert_eq!(dry.feed, None);
    assert_eq!(dry.input_protection, InputProtection::OnlyRead);
    assert_eq!(
        dry.environment,
        Environment::Development,
        "no feed: from [defaults]"
    );
    assert!(dry.paused);
    assert_eq!(dry.sync_mode, SyncMode::Full);
    match &dry.schedule {
        Schedule::Interval {
            frequency,
            start,
            end,
            ..
        } => {
            assert_eq!(*frequency, Frequency::Daily);
            assert_eq!(start.to_rfc3339(), "2024-01-01T01:00:00+00:00");
            assert_eq!(*end, None);
        }
        other => panic!("{other:?}"),
    }

    let local = &project.pipelines["local"];
    assert_eq!(
        local.environment,
        Environment::Development,
        "from feed local"
    );
    assert_eq!(local.input_protection, InputProtection::OnlyUpdate);
    assert_eq!(local.limit_policy, LimitPolicy::Reject);
    assert!(matches!(local.schedule, Schedule::OnDemand));
    assert!(local.mappings.is_empty());
}

#[test]
fn identity_destinations_in_a_loaded_project() {
    let dir = project(&[
        ("wsync.toml", MINIMAL_WSYNC),
        USERS_SQL,
        (
            "schedules/a.toml",
            "connection = \"pg\"\ndata_model = \"users\"\ninput_protection = \"only_read\"\n\n[[mappings]]\nmapping_type = \"column\"\nsource = \"mail\"\ndestination = \"user_identities.email\"\n",
        ),
    ]);
    let env = env_of(MINIMAL_ENV);
    let project = load_with_env(dir.path(), &|name| env.get(name).cloned()).expect("valid");
    assert_eq!(
        project.pipelines["a"].mappings,
        vec![Mapping::Column {
            source: "mail".into(),
            destination: Destination::Identity(IdentityType::Email)
        }]
    );
}
