//! Validation of whole projects: every error of every file, each at its key.

use super::*;
use crate::config::raw::{parse_toml, Parsed, RawModel};

const ROOT: &str = "/proj";

const WSYNC: &str = r#"
[defaults]
environment = "production"

[connections.pg]
type = "postgres"
url_env = "PG"

[feeds.main]
pod = "us1"
api_key_env = "K"
api_secret_env = "S"

[feeds.dev]
base_url = "http://127.0.0.1:9999/"
api_key = "k"
api_secret = "s"
environment = "development"
"#;

fn project(wsync: &str, pipelines: &[(&str, &str)]) -> (RawProject, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let mut file = SourceFile::toml("wsync.toml", wsync.to_owned());
    let raw = parse_toml(&mut file, &mut errors);
    let pipelines = pipelines
        .iter()
        .map(|(id, text)| {
            let mut file = SourceFile::toml(format!("schedules/{id}.toml"), (*text).to_owned());
            let raw = parse_toml(&mut file, &mut errors);
            ((*id).to_owned(), Parsed { file, raw })
        })
        .collect();
    let models = vec![RawModel {
        name: "users".to_owned(),
        file: SourceFile::plain("sql/users.sql", "SELECT 1;".to_owned()),
    }];
    (
        RawProject {
            wsync: Parsed { file, raw },
            models,
            pipelines,
        },
        errors,
    )
}

/// Validate and render errors as `file:line: key: message` (hints dropped
/// unless `with_hints`).
fn check(wsync: &str, pipelines: &[(&str, &str)], with_hints: bool) -> (Validated, Vec<String>) {
    let (raw, mut errors) = project(wsync, pipelines);
    let v = validate(Path::new(ROOT), &raw, &mut errors);
    crate::config::sort_errors(&mut errors);
    let rendered = errors
        .iter()
        .map(|e| {
            let s = e.to_string();
            if with_hints {
                s
            } else {
                s.split("\n  hint:").next().unwrap_or_default().to_owned()
            }
        })
        .collect();
    (v, rendered)
}

fn pipeline_errors(body: &str) -> Vec<String> {
    check(WSYNC, &[("p", body)], false).1
}

const HEAD: &str = "connection = \"pg\"\ndata_model = \"users\"\nfeed = \"main\"\ninput_protection = \"create_and_update\"\n";

#[test]
fn export_section_and_export_only_pipelines() {
    let body = "connection = \"pg\"\ndata_model = \"users\"\n[export]\ndatasets = [\"rows\", \"rejected\", \"rows\"]\ncompression = \"snappy\"\nrow_group_rows = 5000\n";
    let (v, errors) = check(WSYNC, &[("p", body)], false);
    assert_eq!(errors, Vec::<String>::new());
    let p = &v.pipelines["p"];
    assert!(p.export_only());
    let export = p.export.as_ref().unwrap();
    assert_eq!(
        export.datasets,
        vec![ExportDataset::Rows, ExportDataset::Rejected]
    );
    assert_eq!(export.compression, ExportCompression::Snappy);
    assert_eq!(export.row_group_rows, 5000);
    assert_eq!(export.path, "exports/{pipeline}/{run_id}/{dataset}.parquet");

    let errors = pipeline_errors(&format!("{HEAD}[export]\npath = \"out/{{pipeline}}.parquet\"\ndatasets = [\"everything\"]\ncompression = \"lz4\"\nrow_group_rows = 0\n"));
    assert_eq!(
        errors,
        vec![
            "schedules/p.toml:6: export.path: `out/{pipeline}.parquet` has no `{dataset}`, so the datasets would overwrite each other",
            "schedules/p.toml:6: export.path: `out/{pipeline}.parquet` has no `{run_id}`, so every run would overwrite the last one",
            "schedules/p.toml:7: export.datasets[0]: `everything` is not a valid dataset",
            "schedules/p.toml:8: export.compression: `lz4` is not a valid compression",
            "schedules/p.toml:9: export.row_group_rows: must be between 1 and 10000000, not 0",
        ]
    );
}

#[test]
fn delivery_knobs_are_range_checked() {
    let wsync = WSYNC.replace(
        "[feeds.main]",
        "[feeds.main]\nrate_limit_per_sec = -1\nmax_in_flight = 100\ngzip = true\nretry_max_attempts = 0\n",
    );
    let (_, errors) = check(&wsync, &[("p", HEAD)], false);
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0].contains("feeds.main.rate_limit_per_sec: must be between 0 and 100000, not -1"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("feeds.main.max_in_flight: must be between 1 and 64, not 100"),
        "{errors:?}"
    );
    assert!(
        errors[2].contains("feeds.main.retry_max_attempts: must be between 1 and 100, not 0"),
        "{errors:?}"
    );
}

#[test]
fn valid_wsync_and_inheritance() {
    let (v, errors) = check(WSYNC, &[("p", HEAD), ("q", "connection = \"pg\"\ndata_model = \"users\"\nfeed = \"dev\"\ninput_protection = \"only_update\"\n\n[resolver]\ntype = \"idsync\"\npod = \"EU1\"\napi_key_env = \"K\"\napi_secret_env = \"S\"\n"), ("r", "connection = \"pg\"\ndata_model = \"users\"\ninput_protection = \"only_read\"\n")], false);
    assert_eq!(errors, Vec::<String>::new());
    let state = v.state.expect("state");
    assert_eq!(state.url.expose(), "sqlite:///proj/.wsync/state.db");
    assert_eq!(state.runs_dir, PathBuf::from("/proj/.wsync/runs"));
    assert_eq!(
        v.feeds[0].base_url.as_deref(),
        Some("http://127.0.0.1:9999")
    );
    assert_eq!(
        v.feeds[1].base_url.as_deref(),
        Some("https://s2s.us1.mparticle.com")
    );
    assert_eq!(
        v.feeds[1].environment,
        Environment::Production,
        "from [defaults]"
    );
    assert_eq!(
        v.pipelines["p"].environment,
        Environment::Production,
        "from feed main"
    );
    assert_eq!(
        v.pipelines["q"].environment,
        Environment::Development,
        "from feed dev"
    );
    assert_eq!(
        v.pipelines["r"].environment,
        Environment::Production,
        "from [defaults]"
    );
    assert_eq!(v.pipelines["r"].feed, None);
    assert_eq!(v.pipelines["p"].name, "p");
    assert!(matches!(v.pipelines["p"].schedule, Schedule::OnDemand));
    assert_eq!(v.pipelines["p"].sync_mode, SyncMode::Full);
    assert_eq!(v.connections[0].statement_timeout, Duration::from_secs(300));
    assert_eq!(v.connections[0].chunk_rows, 1000);
    assert!(v.connections[0].valid);
}

#[test]
fn defaults_ranges() {
    let (_, errors) = check(
        "[defaults]\nchunk_rows = 0\nstatement_timeout_secs = -1\nrequest_timeout_secs = 0\nnull_policy = \"drop\"\n",
        &[],
        false,
    );
    assert_eq!(
        errors,
        vec![
            "wsync.toml:2: defaults.chunk_rows: must be between 1 and 100000, not 0",
            "wsync.toml:3: defaults.statement_timeout_secs: must be between 1 and 604800 seconds, not -1",
            "wsync.toml:4: defaults.request_timeout_secs: must be between 1 and 86400 seconds, not 0",
            "wsync.toml:5: defaults.null_policy: `drop` is not a valid null policy",
        ]
    );
}

#[test]
fn connection_rules() {
    let (v, errors) = check(
        r#"
[connections."bad name"]
type = "postgress"
url = "x"
url_env = "Y"

[connections.none]
type = "mysql"
seed_sql = "seed.sql"

[connections.env]
type = "sqlite"
url_env = "1BAD"
"#,
        &[],
        true,
    );
    assert_eq!(
        errors,
        vec![
            "wsync.toml:2: connections.bad name: `bad name` is not a valid connection name\n  hint: names may only use letters, digits, `_` and `-`",
            "wsync.toml:3: connections.bad name.type: `postgress` is not a valid connection type\n  hint: did you mean `postgres`? use one of: postgres, redshift, mysql, sqlite, snowflake, bigquery",
            "wsync.toml:5: connections.bad name.url_env: `url` and `url_env` are both set\n  hint: set exactly one of url, url_env or url_file",
            "wsync.toml:7: connections.none.url: missing required key\n  hint: set exactly one of url, url_env or url_file (e.g. url_env = \"VARIABLE\")",
            "wsync.toml:9: connections.none.seed_sql: seed_sql only applies to sqlite connections, not mysql\n  hint: remove it",
            "wsync.toml:13: connections.env.url_env: `1BAD` is not a valid environment variable name\n  hint: use letters, digits and `_`, not starting with a digit (e.g. MP_API_SECRET)",
        ]
    );
    assert!(v.connections.iter().all(|c| !c.valid));
}

#[test]
fn feed_rules() {
    let (_, errors) = check(
        r#"
[feeds.a]
pod = "US3"
base_url = "http://x"
api_key_env = "K"
api_secret_env = "S"

[feeds.b]
pod = "EU2"
api_key_env = "K"
api_secret_env = "S"
api_secret_file = "s.txt"
environment = "prod"

[feeds.c]
base_url = "ftp://example.com"
api_key = "${UNCLOSED"
api_secret = "x"
"#,
        &[],
        true,
    );
    assert_eq!(
        errors,
        vec![
            "wsync.toml:4: feeds.a.base_url: set either pod or base_url, not both\n  hint: remove one of them",
            "wsync.toml:9: feeds.b.pod: `EU2` is not a valid pod\n  hint: did you mean `EU1`? use one of: US1, US2, EU1, AU1",
            "wsync.toml:12: feeds.b.api_secret_file: `api_secret_env` and `api_secret_file` are both set\n  hint: set exactly one of api_secret, api_secret_env or api_secret_file",
            "wsync.toml:13: feeds.b.environment: `prod` is not a valid environment\n  hint: did you mean `production`? use one of: development, production",
            "wsync.toml:16: feeds.c.base_url: `ftp://example.com` is not an http or https URL\n  hint: use an https:// URL such as \"https://s2s.us1.mparticle.com\" (http:// only to 127.0.0.1 or localhost, or with allow_insecure_http = true)",
            "wsync.toml:17: feeds.c.api_key: has a `${` without a closing `}`\n  hint: write ${NAME} to insert environment variable NAME, and $${ for a literal ${",
        ]
    );
}

#[test]
fn state_is_sqlite_or_postgres() {
    let (v, errors) = check("[state]\nurl = \"mysql://u:hunter22@h/db\"\n", &[], false);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(
            "wsync.toml:2: state.url: has the scheme `mysql`; the state store is SQLite or PostgreSQL"
        ),
        "{errors:?}"
    );
    assert!(!errors[0].contains("hunter22"), "{errors:?}");
    assert!(v.state.is_none());
    let (v, errors) = check(
        "[state]\nurl = \"postgres://wsync@db.internal/wsync\"\nlease_ttl_secs = 10\n",
        &[],
        false,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let state = v.state.expect("state");
    assert_eq!(state.url.expose(), "postgres://wsync@db.internal/wsync");
    assert_eq!(state.lease_ttl, std::time::Duration::from_secs(10));
    let (_, errors) = check(
        "[state]\nurl_env = \"WSYNC_TEST_SURELY_UNSET_VAR\"\n",
        &[],
        false,
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(
            "state.url_env: the environment variable `WSYNC_TEST_SURELY_UNSET_VAR` is not set"
        ),
        "{errors:?}"
    );
    let (_, errors) = check("[state]\nlease_ttl_secs = 0\n", &[], false);
    assert_eq!(
        errors,
        vec!["wsync.toml:2: state.lease_ttl_secs: must be between 1 and 3600 seconds, not 0"]
    );
    let (v, _) = check(
        "[state]\nurl = \"sqlite:///var/lib/wsync.db?mode=rwc\"\nruns_dir = \"/tmp/runs\"\n",
        &[],
        false,
    );
    let state = v.state.expect("state");
    assert_eq!(state.url.expose(), "sqlite:///var/lib/wsync.db?mode=rwc");
    assert_eq!(state.runs_dir, PathBuf::from("/tmp/runs"));
}

#[test]
fn sqlite_url_forms() {
    let root = Path::new("/proj");
    assert_eq!(
        sqlite_url("sqlite://data/w.db", root).as_deref(),
        Ok("sqlite:///proj/data/w.db")
    );
    assert_eq!(
        sqlite_url("sqlite:w.db?mode=ro", root).as_deref(),
        Ok("sqlite:///proj/w.db?mode=ro")
    );
    assert_eq!(
        sqlite_url("sqlite:///abs/w.db", root).as_deref(),
        Ok("sqlite:///abs/w.db")
    );
    assert_eq!(
        sqlite_url("sqlite://./w.db", root).as_deref(),
        Ok("sqlite:///proj/w.db")
    );
    assert_eq!(
        sqlite_url("sqlite://", root),
        Err("the SQLite URL has no database path".to_owned())
    );
    assert!(sqlite_url("postgres://x", root).is_err());
}

#[test]
fn templates() {
    assert_eq!(
        parse_template("a${B}c$${D}$e"),
        Ok(vec![
            Part::Literal("a".into()),
            Part::Var("B".into()),
            Part::Literal("c${D}$e".into())
        ])
    );
    assert_eq!(parse_template(""), Ok(vec![]));
    assert_eq!(
        parse_template("${}").unwrap_err(),
        "has a `${…}` that is not a valid environment variable name"
    );
    assert_eq!(
        parse_template("pw${X").unwrap_err(),
        "has a `${` without a closing `}`"
    );
}

#[test]
fn pipeline_references() {
    let errors = pipeline_errors("connection = \"pgg\"\ndata_model = \"user\"\nfeed = \"nope\"\ninput_protection = \"create_and_update\"\n");
    assert_eq!(
        errors,
        vec![
            "schedules/p.toml:1: connection: connection `pgg` is not defined in wsync.toml",
            "schedules/p.toml:2: data_model: data model `user` not found",
            "schedules/p.toml:3: feed: feed `nope` is not defined in wsync.toml",
        ]
    );
    let (_, with_hints) = check(
        WSYNC,
        &[(
            "p",
            "connection = \"pgg\"\ndata_model = \"orders\"\ninput_protection = \"only_update\"\n",
        )],
        true,
    );
    assert_eq!(
        with_hints,
        vec![
            "schedules/p.toml: feed: missing required key\n  hint: add feed = \"NAME\" (available: dev, main), set input_protection = \"only_read\" for a dry run, or add an [export] section for an export-only pipeline",
            "schedules/p.toml:1: connection: connection `pgg` is not defined in wsync.toml\n  hint: did you mean `pg`? available: pg",
            "schedules/p.toml:2: data_model: data model `orders` not found\n  hint: create sql/orders.sql (available: users)",
            "schedules/p.toml:3: input_protection: only_update needs a [resolver] to tell existing profiles from new ones\n  hint: add [resolver] with type = \"idsync\" (IDSync search with a platform key) or type = \"sql\" (a model listing the identities of known profiles); see the README's resolver section",
        ]
    );
    let errors = pipeline_errors("");
    assert_eq!(
        errors,
        vec![
            "schedules/p.toml: connection: missing required key",
            "schedules/p.toml: data_model: missing required key",
            "schedules/p.toml: feed: missing required key",
        ]
    );
}

#[test]
fn references_are_not_checked_when_wsync_toml_is_broken() {
    let (_, errors) = check("[state\n", &[("p", "connection = \"x\"\ndata_model = \"users\"\nfeed = \"y\"\ninput_protection = \"only_read\"\n")], false);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("wsync.toml:1: "));
}

#[test]
fn bad_pipeline_id() {
    let (_, errors) = check(WSYNC, &[("has space", HEAD)], false);
    assert_eq!(errors, vec!["schedules/has space.toml: `has space` is not a valid pipeline id (the file name is the id)"]);
}

#[test]
fn sync_mode_rules() {
    let errors = pipeline_errors(&format!("{HEAD}[sync_mode]\ntype = \"incremental\"\n"));
    assert_eq!(
        errors,
        vec![
            "schedules/p.toml:5: sync_mode.iterator_field: missing required key",
            "schedules/p.toml:5: sync_mode.iterator_data_type: missing required key",
        ]
    );
    let errors = pipeline_errors(&format!("{HEAD}[sync_mode]\ntype = \"full\"\niterator_field = \"u\"\niterator_data_type = \"date\"\nfrom = \"x\"\n"));
    assert_eq!(
        errors,
        vec![
            "schedules/p.toml:7: sync_mode.iterator_field: `iterator_field` does not apply to full sync",
            "schedules/p.toml:8: sync_mode.iterator_data_type: `iterator_data_type` does not apply to full sync",
            "schedules/p.toml:9: sync_mode.from: `from` does not apply to full sync",
        ]
    );
    let errors = pipeline_errors(&format!("{HEAD}[sync_mode]\ntype = \"incremental\"\niterator_field = \"u\"\niterator_data_type = \"timestamp_tzz\"\n"));
    assert_eq!(errors, vec!["schedules/p.toml:8: sync_mode.iterator_data_type: `timestamp_tzz` is not a valid iterator data type"]);
}

#[test]
fn from_must_parse_for_its_type() {
    let cases: &[(&str, &str, bool)] = &[
        ("timestamp_tz", "\"2024-01-01T00:00:00Z\"", true),
        ("timestamp_ltz", "2024-01-01T00:00:00+02:00", true),
        ("timestamp_tz", "\"2024-01-01 00:00:00\"", false),
        ("timestamp_ntz", "\"2024-01-01 00:00:00.5\"", true),
        ("datetime", "2024-01-01T00:00:00", true),
        ("timestamp_ntz", "\"2024-01-01\"", false),
        ("date", "2024-01-01", true),
        ("date", "\"01/01/2024\"", false),
        ("timestamp_unixtime_s", "1704067200", true),
        ("timestamp_unixtime_ms", "\"1704067200000\"", true),
        ("integer", "\"ten\"", false),
        ("integer", "1.5", false),
    ];
    for (t, from, ok) in cases {
        let errors = pipeline_errors(&format!("{HEAD}[sync_mode]\ntype = \"incremental\"\niterator_field = \"u\"\niterator_data_type = \"{t}\"\nfrom = {from}\n"));
        assert_eq!(errors.is_empty(), *ok, "{t} {from}: {errors:?}");
    }
    let (v, _) = check(WSYNC, &[("p", &format!("{HEAD}[sync_mode]\ntype = \"incremental\"\niterator_field = \"u\"\niterator_data_type = \"timestamp\"\nfrom = 2024-01-01T00:00:00Z\n"))], false);
    assert_eq!(
        v.pipelines["p"].sync_mode,
        SyncMode::Incremental {
            iterator_field: "u".into(),
            iterator_data_type: IteratorDataType::TimestampTz,
            from: Some("2024-01-01T00:00:00Z".into()),
            lag: 0,
            time_zone: chrono_tz::UTC,
        }
    );
}

#[test]
fn daemon_lag_zone_and_catch_up_settings() {
    let errors = pipeline_errors(&format!("{HEAD}[sync_mode]\ntype = \"incremental\"\niterator_field = \"u\"\niterator_data_type = \"timestamp_tz\"\nlag = -5\niterator_time_zone = \"Mars/Olympus\"\n[schedule]\ntype = \"interval\"\nfrequency = \"daily\"\nstart = \"2024-01-01T00:00:00Z\"\ncatch_up_days = -1\n"));
    assert_eq!(
        errors,
        vec![
            "schedules/p.toml:9: sync_mode.lag: must be between 0 and 315360000, not -5",
            "schedules/p.toml:10: sync_mode.iterator_time_zone: only applies to timestamp_ntz and date iterators",
            "schedules/p.toml:10: sync_mode.iterator_time_zone: `Mars/Olympus` is not a known time zone",
            "schedules/p.toml:15: schedule.catch_up_days: must be between 0 and 36600, not -1",
        ]
    );
    assert_eq!(
        pipeline_errors(&format!("{HEAD}write_batches = true\n")),
        vec!["schedules/p.toml:5: write_batches: only applies to only_read pipelines"]
    );
    let errors = pipeline_errors(&format!("{HEAD}[sync_mode]\ntype = \"full\"\nlag = 5\n[schedule]\ntype = \"cron\"\nexpression = \"0 * * * *\"\ncatch_up_days = 3\n"));
    assert_eq!(
        errors,
        vec![
            "schedules/p.toml:7: sync_mode.lag: `lag` does not apply to full sync",
            "schedules/p.toml:11: schedule.catch_up_days: `catch_up_days` does not apply to schedule type cron",
        ]
    );
    let (v, errors) = check(
        &format!("{WSYNC}\n[daemon]\nmax_concurrent_runs = 4\nshutdown_grace_secs = 5\ncheckpoint_rows = 1000\n"),
        &[("p", &format!("{HEAD}[sync_mode]\ntype = \"incremental\"\niterator_field = \"u\"\niterator_data_type = \"timestamp_ntz\"\nlag = 600\niterator_time_zone = \"Europe/Berlin\"\n"))],
        false,
    );
    assert_eq!(errors, Vec::<String>::new());
    assert_eq!(
        v.daemon,
        DaemonSettings {
            max_concurrent_runs: 4,
            shutdown_grace: Duration::from_secs(5),
            checkpoint_rows: 1000,
            ..DaemonSettings::default()
        }
    );
    assert!(matches!(
        v.pipelines["p"].sync_mode,
        SyncMode::Incremental {
            lag: 600,
            time_zone: chrono_tz::Europe::Berlin,
            ..
        }
    ));
    let (_, errors) = check(
        &format!("{WSYNC}\n[daemon]\nmax_concurrent_runs = 0\nshutdown_grace_secs = 0\n"),
        &[],
        false,
    );
    assert_eq!(
        errors,
        vec![
            "wsync.toml:21: daemon.max_concurrent_runs: must be between 1 and 64, not 0",
            "wsync.toml:22: daemon.shutdown_grace_secs: must be between 1 and 86400 seconds, not 0",
        ]
    );
}

#[test]
fn schedule_rules() {
    let errors = pipeline_errors(&format!("{HEAD}[schedule]\ntype = \"interval\"\nfrequency = \"daily\"\nstart = \"2024-02-01T00:00:00Z\"\nend = 2024-01-01T00:00:00Z\ntime_zone = \"UTC\"\n"));
    assert_eq!(
        errors,
        vec![
            "schedules/p.toml:9: schedule.end: must be after start",
            "schedules/p.toml:10: schedule.time_zone: `time_zone` does not apply to schedule type interval",
        ]
    );
    let errors = pipeline_errors(&format!("{HEAD}[schedule]\ntype = \"cron\"\nexpression = \"0 25 * * *\"\ntime_zone = \"Europe/Berln\"\nfrequency = \"daily\"\n"));
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0].starts_with(
            "schedules/p.toml:7: schedule.expression: cron expression `0 25 * * *` does not parse"
        ),
        "{}",
        errors[0]
    );
    assert_eq!(
        errors[1],
        "schedules/p.toml:8: schedule.time_zone: `Europe/Berln` is not a known time zone"
    );
    assert_eq!(
        errors[2],
        "schedules/p.toml:9: schedule.frequency: `frequency` does not apply to schedule type cron"
    );
    let errors = pipeline_errors(&format!(
        "{HEAD}[schedule]\ntype = \"interval\"\nstart = \"yesterday\"\n"
    ));
    assert_eq!(
        errors,
        vec![
            "schedules/p.toml:5: schedule.frequency: missing required key",
            "schedules/p.toml:7: schedule.start: `yesterday` is not an RFC 3339 timestamp",
        ]
    );
    let (v, errors) = check(WSYNC, &[("p", &format!("{HEAD}[schedule]\ntype = \"interval\"\nfrequency = \"weekly\"\nstart = \"2024-01-01T01:00:00+01:00\"\n"))], false);
    assert!(errors.is_empty(), "{errors:?}");
    match &v.pipelines["p"].schedule {
        Schedule::Interval {
            frequency,
            start,
            end,
            ..
        } => {
            assert_eq!(*frequency, Frequency::Weekly);
            assert_eq!(start.to_rfc3339(), "2024-01-01T00:00:00+00:00");
            assert_eq!(*end, None);
        }
        other => panic!("{other:?}"),
    }
    let errors = pipeline_errors(&format!(
        "{HEAD}[schedule]\ntype = \"once\"\nexpression = \"x\"\n"
    ));
    assert_eq!(errors, vec!["schedules/p.toml:7: schedule.expression: `expression` does not apply to schedule type once"]);
}

#[test]
fn mapping_rules() {
    let long = "a".repeat(257);
    let body = format!(
        r#"{HEAD}
[sync_mode]
type = "incremental"
iterator_field = "updated_at"
iterator_data_type = "timestamp_tz"

[[mappings]]
mapping_type = "column"
source = "a"
destination = "user_identities.emial"
value = 1

[[mappings]]
mapping_type = "static"
source = "b"
destination = "mpid"
value = "123"

[[mappings]]
mapping_type = "ignore"
source = "A"

[[mappings]]
mapping_type = "column"
source = "Updated_At"
destination = "user_attributes.x"

[[mappings]]
mapping_type = "column"
source = "c"
destination = "user_attributes.{long}"

[[mappings]]
mapping_type = "column"
source = "d"
destination = "device_info.idfa"

[[mappings]]
mapping_type = "column"
source = "e"
destination = "attributes.x"

[[mappings]]
mapping_type = "static"
destination = "user_attributes."
value = nan

[[mappings]]
mapping_type = "ignore"

[[mappings]]
mapping_type = "copy"
"#
    );
    let errors = pipeline_errors(&body);
    assert_eq!(
        errors,
        vec![
            "schedules/p.toml:14: mappings[0].destination: `emial` is not an mParticle identity type",
            "schedules/p.toml:15: mappings[0].value: `value` does not apply to column mappings",
            "schedules/p.toml:19: mappings[1].source: `source` does not apply to static mappings",
            "schedules/p.toml:21: mappings[1].value: mpid must be an integer",
            "schedules/p.toml:25: mappings[2].source: column `A` is already used by mappings[0] (line 13)",
            "schedules/p.toml:29: mappings[3].source: `Updated_At` is the sync's iterator_field, which is never sent, so it cannot be mapped or ignored",
            "schedules/p.toml:35: mappings[4].destination: the user attribute name is 257 characters long; mParticle allows at most 256",
            "schedules/p.toml:40: mappings[5].destination: `idfa` is not an mParticle device id",
            "schedules/p.toml:45: mappings[6].destination: `attributes.x` is not a destination",
            "schedules/p.toml:49: mappings[7].destination: the user attribute name is empty",
            "schedules/p.toml:50: mappings[7].value: must be a finite number",
            "schedules/p.toml:52: mappings[8].source: missing required key",
            "schedules/p.toml:56: mappings[9].mapping_type: `copy` is not a valid mapping type",
        ]
    );
}

#[test]
fn mappings_parse() {
    let body = format!(
        r#"{HEAD}
[[mappings]]
mapping_type = "column"
source = "Email_Address"
destination = "user_identities.email"

[[mappings]]
mapping_type = "column"
source = "idfv"
destination = "device_info.IOS_IDFV"

[[mappings]]
mapping_type = "static"
destination = "user_attributes.score"
value = 1.5

[[mappings]]
mapping_type = "static"
destination = "user_attributes.vip"
value = true

[[mappings]]
mapping_type = "ignore"
source = "internal"
"#
    );
    let (v, errors) = check(WSYNC, &[("p", &body)], false);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        v.pipelines["p"].mappings,
        vec![
            Mapping::Column {
                source: "Email_Address".into(),
                destination: Destination::Identity(IdentityType::Email)
            },
            Mapping::Column {
                source: "idfv".into(),
                destination: Destination::Device(DeviceIdType::IosIdfv)
            },
            Mapping::Static {
                value: StaticValue::Float(1.5),
                destination: Destination::Attribute("score".into())
            },
            Mapping::Static {
                value: StaticValue::Bool(true),
                destination: Destination::Attribute("vip".into())
            },
            Mapping::Ignore {
                source: "internal".into()
            },
        ]
    );
}

#[test]
fn destinations() {
    assert_eq!(parse_destination("mpid"), Ok(Destination::Mpid));
    assert_eq!(
        parse_destination("user_identities.customerid"),
        Ok(Destination::Identity(IdentityType::CustomerId))
    );
    assert_eq!(
        parse_destination("user_identities.other_id_10"),
        Ok(Destination::Identity(IdentityType::OtherId(10)))
    );
    assert_eq!(
        parse_destination("user_attributes.$firstname"),
        Ok(Destination::Attribute("$firstname".into()))
    );
    assert_eq!(
        parse_destination("user_attributes.a.b"),
        Ok(Destination::Attribute("a.b".into()))
    );
    let (message, hint) = parse_destination("user_identities.emial").unwrap_err();
    assert_eq!(message, "`emial` is not an mParticle identity type");
    assert!(
        hint.starts_with("did you mean `email`? use one of: customer_id, email, "),
        "{hint}"
    );
    assert!(parse_destination("MPID").is_err());
}

#[test]
fn model_sql_is_trimmed() {
    assert_eq!(model_sql("\n  SELECT 1 ;\n\n"), "SELECT 1");
    assert_eq!(model_sql("SELECT ';';;"), "SELECT ';';");
    assert_eq!(model_sql(" ; "), "");
}

#[test]
fn config_plain_http_base_url_needs_loopback_or_opt_in() {
    let feeds = |url: &str, opt_in: &str| {
        format!("[feeds.f]\nbase_url = \"{url}\"\napi_key = \"k\"\napi_secret = \"s\"\n{opt_in}")
    };
    for url in [
        "https://proxy.internal",
        "http://127.0.0.1:9999",
        "http://127.8.0.1",
        "http://[::1]:80/",
        "http://localhost:8080",
        "http://LOCALHOST",
    ] {
        assert_eq!(
            check(&feeds(url, ""), &[], false).1,
            Vec::<String>::new(),
            "{url}"
        );
    }
    for url in [
        "http://proxy.internal",
        "http://10.0.0.5:8080",
        "http://[fe80::1]/",
    ] {
        let errors = check(&feeds(url, ""), &[], false).1;
        assert_eq!(
            errors,
            vec![format!("wsync.toml:2: feeds.f.base_url: `{url}` is plain http to a host that is not this machine: the API key and secret would travel in clear text")]
        );
        let errors = check(&feeds(url, "allow_insecure_http = true\n"), &[], false).1;
        assert_eq!(errors, Vec::<String>::new(), "{url} with the opt-in");
    }
    // The resolver's base_url follows the same rule.
    let body = format!("{HEAD}[resolver]\ntype = \"idsync\"\nbase_url = \"http://idsync.internal\"\napi_key = \"k\"\napi_secret = \"s\"\n");
    let errors = pipeline_errors(&body);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("resolver.base_url") && e.contains("clear text")),
        "{errors:?}"
    );
    let body = body.replace("[resolver]\n", "[resolver]\nallow_insecure_http = true\n");
    let errors = pipeline_errors(&body);
    assert!(
        !errors.iter().any(|e| e.contains("resolver.base_url")),
        "{errors:?}"
    );
}

#[test]
fn config_durations_and_numbers_are_bounded() {
    let (_, errors) = check(
        r#"
[defaults]
statement_timeout_secs = 99999999999
request_timeout_secs = 86401

[daemon]
shutdown_grace_secs = 9223372036854775807

[feeds.f]
base_url = "http://127.0.0.1:1"
api_key = "k"
api_secret = "s"
retry_deadline_secs = 604801
retry_max_backoff_secs = 0
"#,
        &[],
        false,
    );
    assert_eq!(
        errors,
        vec![
            "wsync.toml:3: defaults.statement_timeout_secs: must be between 1 and 604800 seconds, not 99999999999",
            "wsync.toml:4: defaults.request_timeout_secs: must be between 1 and 86400 seconds, not 86401",
            "wsync.toml:7: daemon.shutdown_grace_secs: must be between 1 and 86400 seconds, not 9223372036854775807",
            "wsync.toml:13: feeds.f.retry_deadline_secs: must be between 1 and 604800 seconds, not 604801",
            "wsync.toml:14: feeds.f.retry_max_backoff_secs: must be between 1 and 86400 seconds, not 0",
        ]
    );
}

#[test]
fn config_huge_lag_is_refused_not_a_panic() {
    let body = format!("{HEAD}[sync_mode]\ntype = \"incremental\"\niterator_field = \"updated_at\"\niterator_data_type = \"timestamp_tz\"\nlag = 9223372036854775807\n");
    let errors = pipeline_errors(&body);
    assert_eq!(
        errors,
        vec!["schedules/p.toml:9: sync_mode.lag: must be between 0 and 315360000, not 9223372036854775807"]
    );
}

#[test]
fn api_non_loopback_bind_needs_a_token() {
    let daemon = |extra: &str| format!("[daemon]\n{extra}");
    for ok in [
        "http_bind = \"127.0.0.1:9184\"\n",
        "http_bind = \"[::1]:9184\"\n",
        "http_bind = \"\"\n",
        "http_bind = \"0.0.0.0:9184\"\nhttp_token_env = \"T\"\n",
    ] {
        assert_eq!(
            check(&daemon(ok), &[], false).1,
            Vec::<String>::new(),
            "{ok}"
        );
    }
    for bind in ["0.0.0.0:9184", "10.1.2.3:80", "[::]:9184"] {
        let errors = check(&daemon(&format!("http_bind = \"{bind}\"\n")), &[], false).1;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("wsync.toml:2: daemon.http_bind: `")
                && errors[0].contains("has no token"),
            "{errors:?}"
        );
    }
}

#[test]
fn pipeline_type_and_data_plan() {
    let (v, errors) = check(WSYNC, &[("p", HEAD)], false);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(v.pipelines["p"].pipeline_type, PipelineType::UserAttributes);
    assert_eq!(v.pipelines["p"].data_plan, None);

    let body = format!(
        "{HEAD}pipeline_type = \"events\"\ndata_plan = {{ plan_id = \"shop\", plan_version = 2, document = \"plans/shop.json\", violations = \"block\" }}\n\n[[mappings]]\nmapping_type = \"column\"\nsource = \"order_total\"\ndestination = \"events[].data.product_action.total_amount\"\n\n[[mappings]]\nmapping_type = \"static\"\nvalue = \"commerce_event\"\ndestination = \"events[].event_type\"\n"
    );
    let (v, errors) = check(WSYNC, &[("p", &body)], false);
    assert!(errors.is_empty(), "{errors:?}");
    let p = &v.pipelines["p"];
    assert_eq!(p.pipeline_type, PipelineType::Events);
    assert_eq!(
        p.data_plan,
        Some(DataPlanRef {
            plan_id: "shop".into(),
            plan_version: Some(2),
            document: Some(PathBuf::from("plans/shop.json")),
            violations: PlanViolations::Block,
        })
    );
    assert_eq!(
        p.mappings[0],
        Mapping::Column {
            source: "order_total".into(),
            destination: Destination::Event(EventField::TotalAmount)
        }
    );

    let errors = pipeline_errors(&format!(
        "{HEAD}pipeline_type = \"event\"\ndata_plan = {{ plan_version = 0, violations = \"block\" }}\n\n[[mappings]]\nmapping_type = \"column\"\nsource = \"x\"\ndestination = \"events[].data.event_name\"\n"
    ));
    assert_eq!(
        errors,
        [
            "schedules/p.toml:5: pipeline_type: `event` is not a valid pipeline type",
            "schedules/p.toml:6: data_plan.plan_id: missing required key",
            "schedules/p.toml:6: data_plan.plan_version: must be a version number of 1 or more, not 0",
            "schedules/p.toml:6: data_plan.violations: `block` needs a data plan document to check events against",
            "schedules/p.toml:11: mappings[0].destination: event fields can only be written by an event pipeline",
        ]
    );
    let errors = pipeline_errors(&format!(
        "{HEAD}pipeline_type = \"events\"\n\n[[mappings]]\nmapping_type = \"column\"\nsource = \"x\"\ndestination = \"user_attributes.x\"\n\n[[mappings]]\nmapping_type = \"column\"\nsource = \"y\"\ndestination = \"events[].data.nope\"\n"
    ));
    assert_eq!(
        errors,
        [
            "schedules/p.toml:10: mappings[0].destination: an event pipeline sends events, not user attributes",
            "schedules/p.toml:15: mappings[1].destination: `events[].data.nope` is not an event field wsync can fill",
        ]
    );
}

#[test]
fn diff_section() {
    let body = format!(
        "{HEAD}[diff]\nprimary_key = [\"customer_id\", \"region\"]\non_delete = \"unset_attributes\"\nfull_resync_every = \"7d\"\n"
    );
    let (v, errors) = check(WSYNC, &[("p", &body)], false);
    assert_eq!(errors, Vec::<String>::new());
    let diff = v.pipelines["p"].diff.clone().unwrap();
    assert_eq!(diff.primary_key, vec!["customer_id", "region"]);
    assert_eq!(diff.on_delete, OnDelete::UnsetAttributes);
    assert_eq!(
        diff.full_resync_every,
        Some(Duration::from_secs(7 * 86_400))
    );

    for (every, expected) in [("43200", 43_200), ("\"12h\"", 43_200), ("\"90m\"", 5_400)] {
        let body = format!("{HEAD}[diff]\nprimary_key = [\"id\"]\nfull_resync_every = {every}\n");
        let (v, errors) = check(WSYNC, &[("p", &body)], false);
        assert_eq!(errors, Vec::<String>::new(), "{every}");
        let diff = v.pipelines["p"].diff.clone().unwrap();
        assert_eq!(diff.full_resync_every, Some(Duration::from_secs(expected)));
        assert_eq!(diff.on_delete, OnDelete::Ignore);
    }

    let errors = pipeline_errors(&format!(
        "{HEAD}[diff]\nprimary_key = [\"id\", \"ID\"]\non_delete = \"remove\"\nfull_resync_every = \"7 fortnights\"\nprimay = 1\n"
    ));
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("schedules/p.toml:6: diff.primary_key: `ID` is listed twice")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("diff.on_delete: `remove` is not a valid on_delete policy")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(
            |e| e.contains("diff.full_resync_every: `7 fortnights`: unknown unit `fortnights`")
        ),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("diff.primay: unknown key `primay`")),
        "{errors:?}"
    );

    let errors = pipeline_errors(&format!("{HEAD}[diff]\nfull_resync_every = 60\n"));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("diff.primary_key: missing required key")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("diff.full_resync_every: 60 seconds is out of range")),
        "{errors:?}"
    );

    let errors = pipeline_errors(&format!(
        "{HEAD}[sync_mode]\ntype = \"incremental\"\niterator_field = \"updated_at\"\niterator_data_type = \"timestamp_tz\"\n[diff]\nprimary_key = [\"updated_at\"]\non_delete = \"unset_attributes\"\n"
    ));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("`updated_at` is the iterator field"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("`unset_attributes` needs sync_mode.type = \"full\""),
        "{errors:?}"
    );
}
