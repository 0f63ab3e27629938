//! Step 1: the files as written. Serde structs that mirror `wsync.toml` and
//! `schedules/*.toml` key for key, plus reading the project folder.
//!
//! Every field is optional here, and enum-like values stay strings, so that
//! validation (not serde, which stops at the first problem) can report every
//! missing key and bad value with its own message. Keys serde does not know are
//! collected with `serde_ignored` and reported all together.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::Deserialize;

use super::error::ConfigError;
use super::locate::{render_path, Segment, SourceFile};
use super::suggest;

/// `wsync.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table")]
pub(crate) struct RawWsync {
    /// `[state]`: where run records and watermarks live.
    pub state: Option<RawState>,
    /// `[defaults]`: values every connection, feed and pipeline inherits.
    pub defaults: Option<RawDefaults>,
    /// `[connections.NAME]`: warehouses.
    pub connections: BTreeMap<String, RawConnection>,
    /// `[feeds.NAME]`: mParticle input feeds.
    pub feeds: BTreeMap<String, RawFeed>,
    /// `[daemon]`: how runs are carried out and scheduled.
    pub daemon: Option<RawDaemon>,
}

/// `[daemon]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table")]
pub(crate) struct RawDaemon {
    /// Runs of different pipelines at the same time.
    pub max_concurrent_runs: Option<i64>,
    /// Time in-flight requests get to finish on SIGTERM/SIGINT, in seconds.
    pub shutdown_grace_secs: Option<i64>,
    /// Rows between checkpoints of an incremental run.
    pub checkpoint_rows: Option<i64>,
    /// Address of the HTTP API (`host:port`); `""` turns it off.
    pub http_bind: Option<String>,
    /// Environment variable holding the HTTP API's bearer token.
    pub http_token_env: Option<String>,
}

/// `[state]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table")]
pub(crate) struct RawState {
    /// State store URL: `sqlite:` (relative paths resolve against the root)
    /// or `postgres://`.
    pub url: Option<String>,
    /// Name of an environment variable holding the state store URL (keeps a
    /// PostgreSQL password out of the file).
    pub url_env: Option<String>,
    /// Folder for per-run files; relative paths resolve against the root.
    pub runs_dir: Option<String>,
    /// Folder for pipelines' spools; relative paths resolve against the root.
    pub spool_dir: Option<String>,
    /// A spool older than this is discarded and its window read again.
    pub spool_max_age_secs: Option<i64>,
    /// A run refuses to start (and an extract stops) below this much free disk
    /// under the spool folder, in MB; 0 turns the check off.
    pub min_free_disk_mb: Option<i64>,
    /// How long a pipeline lease lasts without a heartbeat, in seconds.
    pub lease_ttl_secs: Option<i64>,
}

/// `[defaults]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table")]
pub(crate) struct RawDefaults {
    /// `development` or `production`.
    pub environment: Option<String>,
    /// `skip` or `delete`.
    pub null_policy: Option<String>,
    /// `truncate` or `reject`.
    pub limit_policy: Option<String>,
    /// Server-side limit for one query, in seconds.
    pub statement_timeout_secs: Option<i64>,
    /// Rows per streamed chunk.
    pub chunk_rows: Option<i64>,
    /// Timeout for one Events API request, in seconds.
    pub request_timeout_secs: Option<i64>,
}

/// `[connections.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table")]
pub(crate) struct RawConnection {
    /// `postgres`, `redshift`, `mysql` (alias `mariadb`) or `sqlite`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Connection URL, with `${VAR}` expanded.
    pub url: Option<String>,
    /// Name of an environment variable holding the URL.
    pub url_env: Option<String>,
    /// Path of a file holding the URL (trimmed).
    pub url_file: Option<String>,
    /// SQLite only: script that creates the database on first use.
    pub seed_sql: Option<String>,
    /// Server-side limit for one query, in seconds.
    pub statement_timeout_secs: Option<i64>,
    /// Rows per streamed chunk.
    pub chunk_rows: Option<i64>,
    /// Snowflake and BigQuery: API host root overriding the default (tests,
    /// PrivateLink, emulators).
    pub base_url: Option<String>,
    /// Snowflake: account identifier (`myorg-myaccount`, `xy12345.eu-west-1`).
    pub account: Option<String>,
    /// Snowflake: login name.
    pub user: Option<String>,
    /// Snowflake: role to use.
    pub role: Option<String>,
    /// Snowflake: virtual warehouse to run queries on.
    pub warehouse: Option<String>,
    /// Snowflake: database.
    pub database: Option<String>,
    /// Snowflake: schema.
    pub schema: Option<String>,
    /// Snowflake: PEM private key for key-pair auth, with `${VAR}` expanded.
    pub private_key: Option<String>,
    /// Snowflake: environment variable holding the PEM private key.
    pub private_key_env: Option<String>,
    /// Snowflake: file holding the PEM private key (`rsa_key.p8`).
    pub private_key_file: Option<String>,
    /// Snowflake: passphrase of an encrypted private key, with `${VAR}` expanded.
    pub private_key_passphrase: Option<String>,
    /// Snowflake: environment variable holding the private key's passphrase.
    pub private_key_passphrase_env: Option<String>,
    /// Snowflake: file holding the private key's passphrase.
    pub private_key_passphrase_file: Option<String>,
    /// Snowflake: password (instead of a key pair), with `${VAR}` expanded.
    pub password: Option<String>,
    /// Snowflake: environment variable holding the password.
    pub password_env: Option<String>,
    /// Snowflake: file holding the password.
    pub password_file: Option<String>,
    /// BigQuery: project that runs (and pays for) the query jobs.
    pub project: Option<String>,
    /// BigQuery: default dataset for unqualified table names.
    pub dataset: Option<String>,
    /// BigQuery: location (region) the jobs run in.
    pub location: Option<String>,
    /// BigQuery: `service_account` (default) or `none` (emulators, with `base_url`).
    pub auth: Option<String>,
    /// BigQuery: service-account JSON key, with `${VAR}` expanded.
    pub credentials: Option<String>,
    /// BigQuery: environment variable holding the service-account JSON key.
    pub credentials_env: Option<String>,
    /// BigQuery: file holding the service-account JSON key.
    pub credentials_file: Option<String>,
    /// BigQuery: refuse queries that would process more bytes than this.
    pub maximum_bytes_billed: Option<i64>,
}

/// `[feeds.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table")]
pub(crate) struct RawFeed {
    /// `US1`, `US2`, `EU1` or `AU1` (any case).
    pub pod: Option<String>,
    /// Host root overriding the pod's (tests, proxies).
    pub base_url: Option<String>,
    /// Accept an `http://` `base_url` to a host other than this machine (the key
    /// and secret then travel in clear text).
    pub allow_insecure_http: Option<bool>,
    /// API key, with `${VAR}` expanded.
    pub api_key: Option<String>,
    /// Environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// File holding the API key (trimmed).
    pub api_key_file: Option<String>,
    /// API secret, with `${VAR}` expanded.
    pub api_secret: Option<String>,
    /// Environment variable holding the API secret.
    pub api_secret_env: Option<String>,
    /// File holding the API secret (trimmed).
    pub api_secret_file: Option<String>,
    /// Default environment for pipelines sending to this feed.
    pub environment: Option<String>,
    /// Timeout for one Events API request, in seconds.
    pub request_timeout_secs: Option<i64>,
    /// Pace: batches per second sent to this feed (mParticle's default account
    /// limit is 270); 0 turns pacing off.
    pub rate_limit_per_sec: Option<i64>,
    /// Requests in flight at once.
    pub max_in_flight: Option<i64>,
    /// Compress request bodies with gzip.
    pub gzip: Option<bool>,
    /// Attempts per request for retryable failures (429 waits do not count).
    pub retry_max_attempts: Option<i64>,
    /// First backoff, in milliseconds (exponential, full jitter).
    pub retry_initial_backoff_ms: Option<i64>,
    /// Longest backoff, in seconds.
    pub retry_max_backoff_secs: Option<i64>,
    /// Give up on a request after this many seconds of retrying.
    pub retry_deadline_secs: Option<i64>,
}

/// `schedules/ID.toml`: one pipeline.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table")]
pub(crate) struct RawPipeline {
    /// Human name; defaults to the id.
    pub name: Option<String>,
    /// Connection name.
    pub connection: Option<String>,
    /// Data model name (`sql/NAME.sql`).
    pub data_model: Option<String>,
    /// Feed name; required unless `input_protection = "only_read"`.
    pub feed: Option<String>,
    /// `development` or `production`.
    pub environment: Option<String>,
    /// `create_and_update`, `only_update` or `only_read`.
    pub input_protection: Option<String>,
    /// `skip` or `delete`.
    pub null_policy: Option<String>,
    /// `truncate` or `reject`.
    pub limit_policy: Option<String>,
    /// Paused pipelines are not scheduled.
    pub paused: Option<bool>,
    /// `[sync_mode]`.
    pub sync_mode: Option<RawSyncMode>,
    /// `[schedule]`.
    pub schedule: Option<RawSchedule>,
    /// `[[mappings]]`, in file order.
    pub mappings: Vec<RawMapping>,
    /// Re-send the dead-lettered batches of earlier runs first.
    pub retry_dead_letters: Option<bool>,
    /// Fail the run (exit 1) when more than this percentage of rows is rejected.
    pub max_rejected_pct: Option<f64>,
    /// `only_read`: also write the would-be batches to `batches.jsonl`.
    pub write_batches: Option<bool>,
    /// `[export]`: Parquet files written by each run.
    pub export: Option<RawExport>,
    /// `[resolver]`: how `only_update` finds existing profiles.
    pub resolver: Option<super::resolver::RawResolver>,
    /// `user_attributes` (default) or `events`.
    pub pipeline_type: Option<String>,
    /// `data_plan = { plan_id, plan_version, document, violations }`.
    pub data_plan: Option<RawDataPlan>,
    /// `[diff]`: send only new and changed rows.
    pub diff: Option<RawDiff>,
}

/// `data_plan`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table")]
pub(crate) struct RawDataPlan {
    /// The plan id.
    pub plan_id: Option<String>,
    /// The plan version (an integer).
    pub plan_version: Option<i64>,
    /// A data plan document (JSON), relative to the project.
    pub document: Option<String>,
    /// `flag` (default) or `block`.
    pub violations: Option<String>,
}

/// `[diff]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table")]
pub(crate) struct RawDiff {
    /// Result columns that identify a row.
    pub primary_key: Option<Vec<String>>,
    /// `ignore` or `unset_attributes`.
    pub on_delete: Option<String>,
    /// Send every row again after this long (`"7d"`, `"12h"`, `"30m"` or seconds).
    pub full_resync_every: Option<toml::Value>,
}

/// `[export]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table")]
pub(crate) struct RawExport {
    /// Path template, relative to the project; `{pipeline}`, `{run_id}`, `{date}`,
    /// `{window_start}`, `{window_end}`, `{dataset}`.
    pub path: Option<String>,
    /// Which of `rows`, `batches`, `rejected` to write.
    pub datasets: Option<Vec<String>>,
    /// `zstd`, `snappy` or `none`.
    pub compression: Option<String>,
    /// Rows per Parquet row group.
    pub row_group_rows: Option<i64>,
}

/// `[sync_mode]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table")]
pub(crate) struct RawSyncMode {
    /// `full` or `incremental`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Incremental only: the column driving the window.
    pub iterator_field: Option<String>,
    /// Incremental only: how to read the iterator.
    pub iterator_data_type: Option<String>,
    /// Incremental only: first lower bound (a string, an integer or a TOML date/time).
    pub from: Option<toml::Value>,
    /// Incremental only: margin re-read below the watermark (seconds, or values
    /// for an integer sequence).
    pub lag: Option<i64>,
    /// Incremental only: zone of `timestamp_ntz` and `date` iterators.
    pub iterator_time_zone: Option<String>,
}

/// `[schedule]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table")]
pub(crate) struct RawSchedule {
    /// `interval`, `cron`, `once` or `on_demand`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Interval only: `hourly`, `daily`, `weekly` or `monthly`.
    pub frequency: Option<String>,
    /// Interval only: RFC 3339 anchor (string or TOML offset date-time).
    pub start: Option<toml::Value>,
    /// Interval only: RFC 3339 end (string or TOML offset date-time).
    pub end: Option<toml::Value>,
    /// Cron only: 5 or 6 fields.
    pub expression: Option<String>,
    /// Cron only: IANA zone, default `UTC`.
    pub time_zone: Option<String>,
    /// Interval only: how far back missed intervals are caught up, in days.
    pub catch_up_days: Option<i64>,
}

/// `[[mappings]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table")]
pub(crate) struct RawMapping {
    /// `column`, `static` or `ignore`.
    pub mapping_type: Option<String>,
    /// Column name (column, ignore).
    pub source: Option<String>,
    /// Destination path (column, static).
    pub destination: Option<String>,
    /// Constant (static).
    pub value: Option<toml::Value>,
}

/// The project as read from disk, each file parsed as far as it would go.
pub(crate) struct RawProject {
    /// `wsync.toml`; `raw` is `None` when it did not parse.
    pub wsync: Parsed<RawWsync>,
    /// `sql/*.sql`, sorted by name.
    pub models: Vec<RawModel>,
    /// `schedules/*.toml`, sorted by id.
    pub pipelines: Vec<(String, Parsed<RawPipeline>)>,
}

/// A parsed TOML file.
pub(crate) struct Parsed<T> {
    /// The file, for lines in messages.
    pub file: SourceFile,
    /// The values; `None` when the file has a syntax or type error (already reported).
    pub raw: Option<T>,
}

/// One `sql/NAME.sql` file.
pub(crate) struct RawModel {
    /// File stem.
    pub name: String,
    /// The file (text included).
    pub file: SourceFile,
}

/// Read `wsync.toml` (which must exist: the caller checked), `sql/*.sql` and
/// `schedules/*.toml` below `root`. Read, syntax, type and unknown-key problems
/// go to `errors`; files that failed still appear, with `raw: None`.
pub(crate) fn read_project(root: &Path, errors: &mut Vec<ConfigError>) -> RawProject {
    let wsync = read_toml::<RawWsync>(root, Path::new("wsync.toml"), errors);
    let models = list_dir(root, "sql", "sql", errors)
        .into_iter()
        .filter_map(|(name, rel)| {
            let text = read_text(root, &rel, errors)?;
            Some(RawModel {
                name,
                file: SourceFile::plain(rel, text),
            })
        })
        .collect();
    let pipelines = list_dir(root, "schedules", "toml", errors)
        .into_iter()
        .map(|(id, rel)| (id, read_toml::<RawPipeline>(root, &rel, errors)))
        .collect();
    RawProject {
        wsync,
        models,
        pipelines,
    }
}

/// `(stem, relative path)` of every `*.ext` file in `root/dir`, sorted. A missing
/// folder is simply empty (a project may have no pipelines yet).
fn list_dir(
    root: &Path,
    dir: &str,
    ext: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<(String, std::path::PathBuf)> {
    let entries = match std::fs::read_dir(root.join(dir)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            errors.push(ConfigError {
                file: dir.into(),
                key_path: String::new(),
                line: None,
                message: format!("cannot list folder: {e}"),
                hint: Some("check the folder's permissions".to_owned()),
            });
            return Vec::new();
        }
    };
    let mut found: Vec<(String, std::path::PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|e| e == ext))
        .filter_map(|path| {
            let stem = path.file_stem()?.to_str()?.to_owned();
            let name = path.file_name()?.to_owned();
            Some((stem, Path::new(dir).join(name)))
        })
        .collect();
    found.sort();
    found
}

/// The text of `root/rel`, or an error naming it.
fn read_text(root: &Path, rel: &Path, errors: &mut Vec<ConfigError>) -> Option<String> {
    match std::fs::read_to_string(root.join(rel)) {
        Ok(text) => Some(text),
        Err(e) => {
            errors.push(ConfigError {
                file: rel.to_path_buf(),
                key_path: String::new(),
                line: None,
                message: format!("cannot read file: {e}"),
                hint: Some("check that the file is readable UTF-8 text".to_owned()),
            });
            None
        }
    }
}

/// Read and deserialize one TOML file, reporting syntax, type and unknown-key errors.
fn read_toml<T: DeserializeOwned + ValidKeys>(
    root: &Path,
    rel: &Path,
    errors: &mut Vec<ConfigError>,
) -> Parsed<T> {
    let Some(text) = read_text(root, rel, errors) else {
        return Parsed {
            file: SourceFile::plain(rel, String::new()),
            raw: None,
        };
    };
    let mut file = SourceFile::toml(rel, text);
    let raw = parse_toml::<T>(&mut file, errors);
    Parsed { file, raw }
}

/// Deserialize `file`'s text into `T`, reporting every unknown key and the first
/// syntax or type error (serde cannot go on after one) with its line.
pub(crate) fn parse_toml<T: DeserializeOwned + ValidKeys>(
    file: &mut SourceFile,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let mut unknown: Vec<Vec<Segment>> = Vec::new();
    let result: Result<T, toml::de::Error> =
        serde_ignored::deserialize(toml::Deserializer::new(file.text()), |path| {
            let mut segments = Vec::new();
            segments_of(&path, &mut segments);
            unknown.push(segments);
        });
    for segments in unknown {
        let (error, target) = unknown_key_error::<T>(file, &segments);
        errors.push(error);
        file.typo_targets.extend(target);
    }
    match result {
        Ok(raw) => Some(raw),
        Err(e) => {
            let offset = e.span().map(|s| s.start);
            let key_path = offset.map(|o| file.key_path_at(o)).unwrap_or_default();
            // Syntax errors and type errors read the same to the user: fix this spot.
            let hint = if file.is_toml() {
                "fix the value's type at this line"
            } else {
                "fix the TOML syntax at this line (see https://toml.io)"
            };
            errors.push(ConfigError {
                file: file.rel.clone(),
                key_path,
                line: offset.map(|o| file.line_of_offset(o)),
                // serde names Rust types; users write TOML.
                message: e
                    .message()
                    .trim()
                    .replace("expected i64", "expected an integer")
                    .replace("expected a sequence", "expected an array")
                    .replace("invalid type: sequence,", "invalid type: array,")
                    .replace("expected a map", "expected a table")
                    .replace("invalid type: map,", "invalid type: table,")
                    // One line per error: the renderer indents only the hint.
                    .replace('\n', "; "),
                hint: Some(hint.to_owned()),
            });
            None
        }
    }
}

/// Convert a `serde_ignored` path into our segments.
fn segments_of(path: &serde_ignored::Path<'_>, out: &mut Vec<Segment>) {
    use serde_ignored::Path as P;
    match path {
        P::Root => {}
        P::Seq { parent, index } => {
            segments_of(parent, out);
            out.push(Segment::Index(*index));
        }
        P::Map { parent, key } => {
            segments_of(parent, out);
            out.push(Segment::Key(key.clone()));
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            segments_of(parent, out);
        }
    }
}

/// The "unknown key" error for `segments`, with the closest valid key when one
/// is similar; also returns that key's path.
fn unknown_key_error<T: ValidKeys>(
    file: &SourceFile,
    segments: &[Segment],
) -> (ConfigError, Option<String>) {
    let key_path = render_path(segments);
    let (parent, last) = match segments.split_last() {
        Some((Segment::Key(last), parent)) => (parent, last.as_str()),
        _ => (segments, ""),
    };
    let valid = T::valid_keys(parent);
    let where_ = if parent.is_empty() {
        "at the top level".to_owned()
    } else {
        format!("in `{}`", render_path(parent))
    };
    let best = suggest::closest(last, valid.iter().copied());
    let hint = match best {
        Some(best) => format!(
            "did you mean `{best}`? valid keys {where_}: {}",
            suggest::list(&valid)
        ),
        None => format!("remove it; valid keys {where_}: {}", suggest::list(&valid)),
    };
    let target = best.map(|best| {
        let mut path = parent.to_vec();
        path.push(Segment::Key(best.to_owned()));
        render_path(&path)
    });
    (
        file.error(&key_path, format!("unknown key `{last}`"), Some(hint)),
        target,
    )
}

/// Which keys are valid below a given parent path of a file type.
pub(crate) trait ValidKeys {
    /// The valid keys of the table at `parent` (empty when unknown).
    fn valid_keys(parent: &[Segment]) -> Vec<&'static str>;
}

impl ValidKeys for RawWsync {
    fn valid_keys(parent: &[Segment]) -> Vec<&'static str> {
        match parent {
            [] => fields_of::<RawWsync>(),
            [Segment::Key(k)] if k == "state" => fields_of::<RawState>(),
            [Segment::Key(k)] if k == "defaults" => fields_of::<RawDefaults>(),
            [Segment::Key(k)] if k == "daemon" => fields_of::<RawDaemon>(),
            [Segment::Key(k), _] if k == "connections" => fields_of::<RawConnection>(),
            [Segment::Key(k), _] if k == "feeds" => fields_of::<RawFeed>(),
            _ => Vec::new(),
        }
    }
}

impl ValidKeys for RawPipeline {
    fn valid_keys(parent: &[Segment]) -> Vec<&'static str> {
        match parent {
            [] => fields_of::<RawPipeline>(),
            [Segment::Key(k)] if k == "sync_mode" => fields_of::<RawSyncMode>(),
            [Segment::Key(k)] if k == "schedule" => fields_of::<RawSchedule>(),
            [Segment::Key(k)] if k == "resolver" => fields_of::<super::resolver::RawResolver>(),
            [Segment::Key(k)] if k == "data_plan" => fields_of::<RawDataPlan>(),
            [Segment::Key(k)] if k == "diff" => fields_of::<RawDiff>(),
            [Segment::Key(k), Segment::Index(_)] if k == "mappings" => fields_of::<RawMapping>(),
            _ => Vec::new(),
        }
    }
}

/// The field names serde's derive gives a struct, read by asking it to
/// deserialize from a deserializer that only records them. This keeps the
/// suggestion lists in step with the structs without a second, hand-kept list.
fn fields_of<'de, T: Deserialize<'de>>() -> Vec<&'static str> {
    struct Recorder<'a>(&'a mut Vec<&'static str>);

    impl<'de> de::Deserializer<'de> for Recorder<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("field recorder"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.extend_from_slice(fields);
            Err(de::Error::custom("field recorder"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }

    let mut fields = Vec::new();
    // The error is the expected way out: the recorder never yields a value.
    let _ = T::deserialize(Recorder(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: DeserializeOwned + ValidKeys>(text: &str) -> (Option<T>, Vec<String>) {
        let mut file = SourceFile::toml("f.toml", text.to_owned());
        let mut errors = Vec::new();
        let raw = parse_toml::<T>(&mut file, &mut errors);
        (raw, errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn field_lists_come_from_the_structs() {
        assert_eq!(
            fields_of::<RawState>(),
            vec![
                "url",
                "url_env",
                "runs_dir",
                "spool_dir",
                "spool_max_age_secs",
                "min_free_disk_mb",
                "lease_ttl_secs"
            ]
        );
        assert_eq!(
            fields_of::<RawSyncMode>(),
            vec![
                "type",
                "iterator_field",
                "iterator_data_type",
                "from",
                "lag",
                "iterator_time_zone"
            ]
        );
    }

    #[test]
    fn every_unknown_key_is_reported_with_a_suggestion() {
        let (raw, errors) = parse::<RawPipeline>(
            "connection = \"pg\"\nconection = \"x\"\n\n[sync_mode]\ntype = \"incremental\"\niterator_feild = \"u\"\n\n[[mappings]]\nsorce = \"a\"\n",
        );
        assert!(raw.is_some());
        assert_eq!(
            errors,
            vec![
                "f.toml:2: conection: unknown key `conection`\n  hint: did you mean `connection`? valid keys at the top level: name, connection, data_model, feed, environment, input_protection, null_policy, limit_policy, paused, sync_mode, schedule, mappings, retry_dead_letters, max_rejected_pct, write_batches, export, resolver, pipeline_type, data_plan, diff",
                "f.toml:6: sync_mode.iterator_feild: unknown key `iterator_feild`\n  hint: did you mean `iterator_field`? valid keys in `sync_mode`: type, iterator_field, iterator_data_type, from, lag, iterator_time_zone",
                "f.toml:9: mappings[0].sorce: unknown key `sorce`\n  hint: did you mean `source`? valid keys in `mappings[0]`: mapping_type, source, destination, value",
            ]
        );
    }

    #[test]
    fn unknown_key_without_a_close_match() {
        let (_, errors) = parse::<RawWsync>("[connections.pg]\ntype = \"sqlite\"\nwhatever = 1\n");
        assert_eq!(
            errors,
            vec!["f.toml:3: connections.pg.whatever: unknown key `whatever`\n  hint: remove it; valid keys in `connections.pg`: type, url, url_env, url_file, seed_sql, statement_timeout_secs, chunk_rows, base_url, account, user, role, warehouse, database, schema, private_key, private_key_env, private_key_file, private_key_passphrase, private_key_passphrase_env, private_key_passphrase_file, password, password_env, password_file, project, dataset, location, auth, credentials, credentials_env, credentials_file, maximum_bytes_billed"]
        );
    }

    #[test]
    fn syntax_error_has_its_line() {
        let (raw, errors) = parse::<RawWsync>("[state]\nurl = \"x\"\nruns_dir = \n");
        assert!(raw.is_none());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("f.toml:3: "), "{}", errors[0]);
    }

    #[test]
    fn type_error_names_the_key_and_line() {
        let (raw, errors) = parse::<RawWsync>("[defaults]\nchunk_rows = \"many\"\n");
        assert!(raw.is_none());
        assert_eq!(
            errors,
            vec!["f.toml:2: defaults.chunk_rows: invalid type: string \"many\", expected an integer\n  hint: fix the value's type at this line"]
        );
        let (_, errors) = parse::<RawWsync>("state = \"sqlite://x\"\n");
        assert_eq!(
            errors,
            vec!["f.toml:1: state: invalid type: string \"sqlite://x\", expected a table\n  hint: fix the value's type at this line"]
        );
    }
}
