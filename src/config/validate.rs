//! Step 2: raw structs to the validated model. Pure: no environment, no file
//! system (secrets and file existence are [`super::resolve`]'s job).
//!
//! Every check pushes its error and carries on with a fallback value, so one run
//! reports every problem in every file. An item (connection, feed, pipeline) is
//! only built when its own checks all passed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use super::error::ConfigError;
use super::locate::SourceFile;
use super::model::{
    ConnectionKind, DaemonSettings, DataModel, DeliverySettings, Destination, Environment,
    ExportCompression, ExportDataset, ExportSettings, Frequency, InputProtection, IteratorDataType,
    LimitPolicy, Mapping, NullPolicy, Pipeline, Pod, Schedule, StateConfig, StaticValue, SyncMode,
};
use super::raw::{
    RawConnection, RawDaemon, RawDefaults, RawExport, RawFeed, RawMapping, RawPipeline, RawProject,
    RawSchedule, RawState, RawSyncMode,
};
use super::suggest;
use crate::mapping::identity::{DeviceIdType, IdentityType};
use crate::redact::Secret;

pub(crate) mod resolver;

/// mParticle's limit on a user attribute name.
const MAX_ATTRIBUTE_NAME_CHARS: usize = 256;
/// Upper bound of second counts that are timeouts, grace periods or backoffs
/// (one day).
pub(crate) const MAX_SHORT_SECS: u64 = 86_400;
/// Upper bound of `statement_timeout_secs` and `retry_deadline_secs` (one week;
/// PostgreSQL's `statement_timeout` stops at 24.8 days in milliseconds).
pub(crate) const MAX_LONG_SECS: u64 = 604_800;
/// Upper bound of `sync_mode.lag` (about 10 years in seconds); larger values
/// overflow date arithmetic.
const MAX_LAG: i64 = 315_360_000;
/// Upper bound of `chunk_rows`: keeps one chunk's memory bounded.
const MAX_CHUNK_ROWS: i64 = 100_000;

const ENVIRONMENTS: &[(&str, Environment)] = &[
    ("development", Environment::Development),
    ("production", Environment::Production),
];
const NULL_POLICIES: &[(&str, NullPolicy)] =
    &[("skip", NullPolicy::Skip), ("delete", NullPolicy::Delete)];
const LIMIT_POLICIES: &[(&str, LimitPolicy)] = &[
    ("truncate", LimitPolicy::Truncate),
    ("reject", LimitPolicy::Reject),
];
const CONNECTION_KINDS: &[(&str, ConnectionKind)] = &[
    ("postgres", ConnectionKind::Postgres),
    ("redshift", ConnectionKind::Redshift),
    ("mysql", ConnectionKind::MySql),
    ("mariadb", ConnectionKind::MySql),
    ("sqlite", ConnectionKind::Sqlite),
];
const PODS: &[(&str, Pod)] = &[
    ("US1", Pod::Us1),
    ("US2", Pod::Us2),
    ("EU1", Pod::Eu1),
    ("AU1", Pod::Au1),
];
const INPUT_PROTECTIONS: &[(&str, InputProtection)] = &[
    ("create_and_update", InputProtection::CreateAndUpdate),
    ("only_update", InputProtection::OnlyUpdate),
    ("only_read", InputProtection::OnlyRead),
];
const ITERATOR_TYPES: &[(&str, IteratorDataType)] = &[
    ("timestamp_tz", IteratorDataType::TimestampTz),
    ("timestamp_ltz", IteratorDataType::TimestampTz),
    ("timestamp", IteratorDataType::TimestampTz),
    ("timestamp_ntz", IteratorDataType::TimestampNtz),
    ("datetime", IteratorDataType::TimestampNtz),
    ("date", IteratorDataType::Date),
    ("timestamp_unixtime_s", IteratorDataType::UnixSeconds),
    ("timestamp_unixtime_ms", IteratorDataType::UnixMillis),
    ("integer", IteratorDataType::Integer),
];
const FREQUENCIES: &[(&str, Frequency)] = &[
    ("hourly", Frequency::Hourly),
    ("daily", Frequency::Daily),
    ("weekly", Frequency::Weekly),
    ("monthly", Frequency::Monthly),
];

/// `[sync_mode] type`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SyncKind {
    Full,
    Incremental,
}
const SYNC_KINDS: &[(&str, SyncKind)] = &[
    ("full", SyncKind::Full),
    ("incremental", SyncKind::Incremental),
];

/// `[schedule] type`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ScheduleKind {
    Interval,
    Cron,
    Once,
    OnDemand,
}
const SCHEDULE_KINDS: &[(&str, ScheduleKind)] = &[
    ("interval", ScheduleKind::Interval),
    ("cron", ScheduleKind::Cron),
    ("once", ScheduleKind::Once),
    ("on_demand", ScheduleKind::OnDemand),
];

/// `mapping_type`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MappingKind {
    Column,
    Static,
    Ignore,
}
const MAPPING_KINDS: &[(&str, MappingKind)] = &[
    ("column", MappingKind::Column),
    ("static", MappingKind::Static),
    ("ignore", MappingKind::Ignore),
];

/// Built-in values of `[defaults]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Defaults {
    /// Environment of feeds and pipelines that set none.
    pub environment: Environment,
    /// NULL handling of pipelines that set none.
    pub null_policy: NullPolicy,
    /// Over-limit handling of pipelines that set none.
    pub limit_policy: LimitPolicy,
    /// Query limit of connections that set none.
    pub statement_timeout: Duration,
    /// Chunk size of connections that set none.
    pub chunk_rows: usize,
    /// HTTP timeout of feeds that set none.
    pub request_timeout: Duration,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            environment: Environment::Development,
            null_policy: NullPolicy::Skip,
            limit_policy: LimitPolicy::Truncate,
            statement_timeout: Duration::from_secs(300),
            chunk_rows: 1000,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// One piece of a `${VAR}` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    /// Text taken as written (`$${` already unescaped).
    Literal(String),
    /// The value of an environment variable.
    Var(String),
}

/// Where a secret comes from, not yet read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SecretSource {
    /// Written in the file, possibly with `${VAR}` parts.
    Inline(Vec<Part>),
    /// The whole value of an environment variable.
    Env(String),
    /// The trimmed contents of a file (absolute path).
    File(PathBuf),
}

/// A secret to resolve, with the key path its errors are reported at.
#[derive(Debug, Clone)]
pub(crate) struct PendingSecret {
    /// The key that was set (`connections.pg.url_env`).
    pub key_path: String,
    /// Where the value comes from.
    pub source: SecretSource,
}

/// A connection whose URL is not resolved yet.
#[derive(Debug)]
pub(crate) struct PendingConnection {
    /// Table name.
    pub name: String,
    /// Dialect, when `type` was valid.
    pub kind: Option<ConnectionKind>,
    /// URL source, when exactly one was given and well-formed.
    pub url: Option<PendingSecret>,
    /// Absolute path of the seed script (existence checked in resolve).
    pub seed_sql: Option<PathBuf>,
    /// Query limit.
    pub statement_timeout: Duration,
    /// Chunk size.
    pub chunk_rows: usize,
    /// Whether every check on this connection passed.
    pub valid: bool,
}

/// A feed whose credentials are not resolved yet.
#[derive(Debug)]
pub(crate) struct PendingFeed {
    /// Table name.
    pub name: String,
    /// Host root without trailing slash.
    pub base_url: Option<String>,
    /// API key source.
    pub api_key: Option<PendingSecret>,
    /// API secret source.
    pub api_secret: Option<PendingSecret>,
    /// Default environment of its pipelines.
    pub environment: Environment,
    /// HTTP timeout.
    pub request_timeout: Duration,
    /// Pacing and retries.
    pub delivery: DeliverySettings,
    /// Whether every check on this feed passed.
    pub valid: bool,
}

/// Validation's output: final models and pipelines, connections and feeds
/// awaiting their secrets.
#[derive(Debug)]
pub(crate) struct Validated {
    /// State store settings, when valid.
    pub state: Option<StateConfig>,
    /// `[daemon]` settings.
    pub daemon: DaemonSettings,
    /// Connections by name order.
    pub connections: Vec<PendingConnection>,
    /// Feeds by name order.
    pub feeds: Vec<PendingFeed>,
    /// Data models that are valid.
    pub models: BTreeMap<String, DataModel>,
    /// Pipelines that are valid.
    pub pipelines: BTreeMap<String, Pipeline>,
    /// `[resolver]`s of valid pipelines, by pipeline id, secrets not yet read.
    pub resolvers: BTreeMap<String, resolver::PendingResolver>,
}

/// Collects errors for one file.
struct Ctx<'a> {
    file: &'a SourceFile,
    errors: &'a mut Vec<ConfigError>,
}

impl Ctx<'_> {
    fn push(&mut self, key_path: &str, message: impl Into<String>, hint: impl Into<String>) {
        self.errors
            .push(self.file.error(key_path, message, Some(hint.into())));
    }

    fn missing(&mut self, key_path: &str, hint: impl Into<String>) {
        if !self.file.typo_targets.contains(key_path) {
            self.push(key_path, "missing required key", hint);
        }
    }

    /// Parse an enum-like string; `what` names it in the message.
    fn choice<T: Copy + PartialEq>(
        &mut self,
        key_path: &str,
        value: &str,
        what: &str,
        options: &[(&'static str, T)],
    ) -> Option<T> {
        self.choice_with(key_path, value, what, options, false)
    }

    /// [`Ctx::choice`], optionally ignoring ASCII case.
    fn choice_with<T: Copy + PartialEq>(
        &mut self,
        key_path: &str,
        value: &str,
        what: &str,
        options: &[(&'static str, T)],
        case_insensitive: bool,
    ) -> Option<T> {
        let found = options.iter().find(|(name, _)| {
            if case_insensitive {
                name.eq_ignore_ascii_case(value)
            } else {
                *name == value
            }
        });
        if let Some((_, v)) = found {
            return Some(*v);
        }
        // Aliases share a value with an earlier name; list only the first.
        let mut shown: Vec<&str> = Vec::new();
        for (i, (name, _)) in options.iter().enumerate() {
            let aliased = options[..i].iter().any(|(_, v)| *v == options[i].1);
            if !aliased {
                shown.push(name);
            }
        }
        let hint = match suggest::closest(value, options.iter().map(|(n, _)| *n)) {
            Some(best) => format!(
                "did you mean `{best}`? use one of: {}",
                suggest::list(&shown)
            ),
            None => format!("use one of: {}", suggest::list(&shown)),
        };
        self.push(key_path, format!("`{value}` is not a valid {what}"), hint);
        None
    }

    /// A number of seconds from 1 to `max`: a bound keeps every deadline computed
    /// from it (`Instant + Duration`, SQL `statement_timeout` in milliseconds)
    /// far from overflow.
    fn seconds(
        &mut self,
        key_path: &str,
        value: Option<i64>,
        fallback: Duration,
        max: u64,
    ) -> Duration {
        match value {
            None => fallback,
            Some(n) if n > 0 && n.unsigned_abs() <= max => Duration::from_secs(n.unsigned_abs()),
            Some(n) => {
                self.push(
                    key_path,
                    format!("must be between 1 and {max} seconds, not {n}"),
                    format!("use e.g. {} (the default)", fallback.as_secs()),
                );
                fallback
            }
        }
    }

    /// An integer in `range` (inclusive), or `fallback` when absent.
    fn int_in<T: TryFrom<i64> + Copy>(
        &mut self,
        key_path: &str,
        value: Option<i64>,
        fallback: T,
        range: std::ops::RangeInclusive<i64>,
        hint: &str,
    ) -> T {
        match value {
            None => fallback,
            Some(n) if range.contains(&n) => T::try_from(n).unwrap_or(fallback),
            Some(n) => {
                self.push(
                    key_path,
                    format!(
                        "must be between {} and {}, not {n}",
                        range.start(),
                        range.end()
                    ),
                    hint,
                );
                fallback
            }
        }
    }

    /// A chunk size in `1..=100000`.
    fn chunk_rows(&mut self, key_path: &str, value: Option<i64>, fallback: usize) -> usize {
        match value {
            None => fallback,
            Some(n) if (1..=MAX_CHUNK_ROWS).contains(&n) => usize::try_from(n).unwrap_or(fallback),
            Some(n) => {
                self.push(
                    key_path,
                    format!("must be between 1 and {MAX_CHUNK_ROWS}, not {n}"),
                    "the default is 1000 rows",
                );
                fallback
            }
        }
    }
}

/// Whether `name` is a valid connection, feed or pipeline name.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

const NAME_HINT: &str = "names may only use letters, digits, `_` and `-`";

/// Validate the whole project. Errors go to `errors`.
pub(crate) fn validate(root: &Path, raw: &RawProject, errors: &mut Vec<ConfigError>) -> Validated {
    let mut out = Validated {
        state: None,
        daemon: DaemonSettings::default(),
        connections: Vec::new(),
        feeds: Vec::new(),
        models: BTreeMap::new(),
        pipelines: BTreeMap::new(),
        resolvers: BTreeMap::new(),
    };
    let mut defaults = Defaults::default();
    let mut feed_environments: BTreeMap<String, Environment> = BTreeMap::new();
    let mut names = Names::default();

    if let Some(wsync) = &raw.wsync.raw {
        let mut ctx = Ctx {
            file: &raw.wsync.file,
            errors: &mut *errors,
        };
        defaults = validate_defaults(&mut ctx, wsync.defaults.as_ref());
        out.state = validate_state(&mut ctx, root, wsync.state.as_ref());
        out.daemon = validate_daemon(&mut ctx, wsync.daemon.as_ref());
        for (name, c) in &wsync.connections {
            out.connections
                .push(validate_connection(&mut ctx, root, &defaults, name, c));
        }
        for (name, f) in &wsync.feeds {
            let feed = validate_feed(&mut ctx, root, &defaults, name, f);
            feed_environments.insert(name.clone(), feed.environment);
            out.feeds.push(feed);
        }
        names.connections = Some(wsync.connections.keys().cloned().collect());
        names.feeds = Some(feed_environments.clone());
    }

    for model in &raw.models {
        let before = errors.len();
        let sql = model_sql(model.file.text());
        if sql.is_empty() {
            errors.push(model.file.file_error(
                None,
                "data model is empty",
                Some("write one SELECT statement in this file".to_owned()),
            ));
        }
        names.models.insert(model.name.clone());
        if errors.len() == before {
            out.models.insert(
                model.name.clone(),
                DataModel {
                    name: model.name.clone(),
                    path: root.join(&model.file.rel),
                    sql,
                },
            );
        }
    }

    for (id, parsed) in &raw.pipelines {
        let Some(pipeline) = &parsed.raw else {
            continue;
        };
        let mut ctx = Ctx {
            file: &parsed.file,
            errors: &mut *errors,
        };
        let before = ctx.errors.len();
        let validated = validate_pipeline(&mut ctx, root, &defaults, &names, id, pipeline);
        let resolver = resolver::validate_resolver(
            &mut ctx,
            root,
            &names,
            &validated,
            pipeline.resolver.as_ref(),
        );
        if ctx.errors.len() == before {
            out.resolvers.extend(resolver.map(|r| (id.clone(), r)));
            out.pipelines.insert(id.clone(), validated);
        }
    }
    out
}

/// The SQL of a model file: surrounding whitespace and one trailing `;` removed.
pub(crate) fn model_sql(text: &str) -> String {
    let trimmed = text.trim();
    trimmed
        .strip_suffix(';')
        .unwrap_or(trimmed)
        .trim()
        .to_owned()
}

/// What pipelines may refer to. `None` when `wsync.toml` did not parse, in
/// which case references are not checked (that would only add noise).
#[derive(Default)]
struct Names {
    connections: Option<Vec<String>>,
    feeds: Option<BTreeMap<String, Environment>>,
    models: BTreeSet<String>,
}

fn validate_defaults(ctx: &mut Ctx<'_>, raw: Option<&RawDefaults>) -> Defaults {
    let mut d = Defaults::default();
    let Some(raw) = raw else { return d };
    if let Some(v) = &raw.environment {
        d.environment = ctx
            .choice("defaults.environment", v, "environment", ENVIRONMENTS)
            .unwrap_or(d.environment);
    }
    if let Some(v) = &raw.null_policy {
        d.null_policy = ctx
            .choice("defaults.null_policy", v, "null policy", NULL_POLICIES)
            .unwrap_or(d.null_policy);
    }
    if let Some(v) = &raw.limit_policy {
        d.limit_policy = ctx
            .choice("defaults.limit_policy", v, "limit policy", LIMIT_POLICIES)
            .unwrap_or(d.limit_policy);
    }
    d.statement_timeout = ctx.seconds(
        "defaults.statement_timeout_secs",
        raw.statement_timeout_secs,
        d.statement_timeout,
        MAX_LONG_SECS,
    );
    d.chunk_rows = ctx.chunk_rows("defaults.chunk_rows", raw.chunk_rows, d.chunk_rows);
    d.request_timeout = ctx.seconds(
        "defaults.request_timeout_secs",
        raw.request_timeout_secs,
        d.request_timeout,
        MAX_SHORT_SECS,
    );
    d
}

fn validate_daemon(ctx: &mut Ctx<'_>, raw: Option<&RawDaemon>) -> DaemonSettings {
    let d = DaemonSettings::default();
    let Some(raw) = raw else { return d };
    let settings = DaemonSettings {
        max_concurrent_runs: ctx.int_in(
            "daemon.max_concurrent_runs",
            raw.max_concurrent_runs,
            d.max_concurrent_runs,
            1..=64,
            "use a number from 1 to 64; the default is 2",
        ),
        shutdown_grace: ctx.seconds(
            "daemon.shutdown_grace_secs",
            raw.shutdown_grace_secs,
            d.shutdown_grace,
            MAX_SHORT_SECS,
        ),
        checkpoint_rows: ctx.int_in(
            "daemon.checkpoint_rows",
            raw.checkpoint_rows,
            d.checkpoint_rows,
            1..=100_000_000,
            "use a row count such as 50000 (the default)",
        ),
        http_bind: match raw.http_bind.as_deref().map(str::trim) {
            None => d.http_bind,
            Some("") => None,
            Some(text) => match text.parse() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    ctx.push(
                        "daemon.http_bind",
                        format!("`{text}` is not an address and port"),
                        "write e.g. \"127.0.0.1:9184\", or \"\" to turn the HTTP API off",
                    );
                    d.http_bind
                }
            },
        },
        http_token_env: raw.http_token_env.clone(),
    };
    // Without a token the API lets anyone who reaches it trigger, pause and
    // resume pipelines: fine for this machine's users only (warned at start-up),
    // never for the network.
    if let Some(addr) = settings.http_bind {
        if !addr.ip().is_loopback() && settings.http_token_env.is_none() {
            ctx.push(
                "daemon.http_bind",
                format!(
                    "`{addr}` is reachable from other machines, and the HTTP API has no token \
                     (daemon.http_token_env is not set): anyone who reaches it could trigger, \
                     pause and resume pipelines"
                ),
                "set http_token_env = \"WSYNC_API_TOKEN\" (and export that variable), or bind \
                 to 127.0.0.1",
            );
        }
    }
    settings
}

const DEFAULT_STATE_URL: &str = "sqlite://.wsync/state.db";
const DEFAULT_RUNS_DIR: &str = ".wsync/runs";

fn validate_state(ctx: &mut Ctx<'_>, root: &Path, raw: Option<&RawState>) -> Option<StateConfig> {
    let url = raw
        .and_then(|s| s.url.as_deref())
        .unwrap_or(DEFAULT_STATE_URL);
    let runs_dir = raw
        .and_then(|s| s.runs_dir.as_deref())
        .unwrap_or(DEFAULT_RUNS_DIR);
    let url = if url_scheme(url).is_some_and(|s| s.eq_ignore_ascii_case("sqlite")) {
        match sqlite_url(url, root) {
            Ok(url) => Some(url),
            Err(problem) => {
                ctx.push("state.url", problem, STATE_URL_HINT);
                None
            }
        }
    } else {
        ctx.push(
            "state.url",
            "only SQLite state stores are supported for now",
            STATE_URL_HINT,
        );
        None
    };
    if runs_dir.trim().is_empty() {
        ctx.push(
            "state.runs_dir",
            "is empty",
            "use e.g. \".wsync/runs\" or remove it",
        );
        return None;
    }
    Some(StateConfig {
        url: Secret::new(url?),
        runs_dir: join_clean(root, Path::new(runs_dir)),
    })
}

const STATE_URL_HINT: &str =
    "use a SQLite URL such as \"sqlite://.wsync/state.db\" (relative to the project folder) or \"sqlite:///abs/path.db\"";

/// The scheme of `url` (`postgres` in `postgres://…`), if it has a well-formed one.
pub(crate) fn url_scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    (first_ok && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))).then_some(scheme)
}

/// A SQLite URL (`sqlite://rel.db`, `sqlite:rel.db`, `sqlite:///abs.db`, with an
/// optional `?query`) as `sqlite://` + absolute path + query. Relative paths
/// resolve against `root`. The error never quotes the URL (it may come from a secret).
pub(crate) fn sqlite_url(url: &str, root: &Path) -> Result<String, String> {
    let rest = url
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("sqlite:"))
        .and_then(|_| url.get(7..))
        .ok_or_else(|| "is not a sqlite: URL".to_owned())?;
    let (path, query) = match rest.find('?') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = path.strip_prefix("//").unwrap_or(path);
    if path.is_empty() {
        return Err("the SQLite URL has no database path".to_owned());
    }
    let absolute = join_clean(root, Path::new(path));
    let absolute = absolute
        .to_str()
        .ok_or_else(|| "the SQLite database path is not valid UTF-8".to_owned())?;
    Ok(format!("sqlite://{absolute}{query}"))
}

/// `rel` against `root` (unless absolute), without `.` components.
pub(crate) fn join_clean(root: &Path, rel: &Path) -> PathBuf {
    root.join(rel)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

fn validate_connection(
    ctx: &mut Ctx<'_>,
    root: &Path,
    defaults: &Defaults,
    name: &str,
    raw: &RawConnection,
) -> PendingConnection {
    let before = ctx.errors.len();
    let base = format!("connections.{name}");
    if !valid_name(name) {
        ctx.push(
            &base,
            format!("`{name}` is not a valid connection name"),
            NAME_HINT,
        );
    }
    let kind = match &raw.kind {
        Some(k) => ctx.choice(
            &format!("{base}.type"),
            k,
            "connection type",
            CONNECTION_KINDS,
        ),
        None => {
            ctx.missing(
                &format!("{base}.type"),
                "add type = \"postgres\", \"redshift\", \"mysql\" or \"sqlite\"",
            );
            None
        }
    };
    let url = secret(
        ctx,
        root,
        &base,
        "url",
        &raw.url,
        &raw.url_env,
        &raw.url_file,
    );
    let seed_sql = match (&raw.seed_sql, kind) {
        (None, _) => None,
        (Some(_), Some(k)) if k != ConnectionKind::Sqlite => {
            ctx.push(
                &format!("{base}.seed_sql"),
                format!(
                    "seed_sql only applies to sqlite connections, not {}",
                    k.as_str()
                ),
                "remove it",
            );
            None
        }
        (Some(path), _) if path.trim().is_empty() => {
            ctx.push(
                &format!("{base}.seed_sql"),
                "is empty",
                "give the path of a SQL script, or remove it",
            );
            None
        }
        (Some(path), _) => Some(join_clean(root, Path::new(path))),
    };
    let statement_timeout = ctx.seconds(
        &format!("{base}.statement_timeout_secs"),
        raw.statement_timeout_secs,
        defaults.statement_timeout,
        MAX_LONG_SECS,
    );
    let chunk_rows = ctx.chunk_rows(
        &format!("{base}.chunk_rows"),
        raw.chunk_rows,
        defaults.chunk_rows,
    );
    PendingConnection {
        name: name.to_owned(),
        kind,
        url,
        seed_sql,
        statement_timeout,
        chunk_rows,
        valid: ctx.errors.len() == before,
    }
}

fn validate_feed(
    ctx: &mut Ctx<'_>,
    root: &Path,
    defaults: &Defaults,
    name: &str,
    raw: &RawFeed,
) -> PendingFeed {
    let before = ctx.errors.len();
    let base = format!("feeds.{name}");
    if !valid_name(name) {
        ctx.push(
            &base,
            format!("`{name}` is not a valid feed name"),
            NAME_HINT,
        );
    }
    let base_url = match (&raw.pod, &raw.base_url) {
        (Some(pod), None) => {
            // Pods are often written in lower case (`us1`).
            ctx.choice_with(&format!("{base}.pod"), pod, "pod", PODS, true)
                .map(|p| p.base_url().to_owned())
        }
        (None, Some(url)) => match check_base_url(url, raw.allow_insecure_http.unwrap_or(false)) {
            Ok(url) => Some(url),
            Err(problem) => {
                ctx.push(&format!("{base}.base_url"), problem, BASE_URL_HINT);
                None
            }
        },
        (Some(_), Some(_)) => {
            ctx.push(
                &format!("{base}.base_url"),
                "set either pod or base_url, not both",
                "remove one of them",
            );
            None
        }
        (None, None) => {
            ctx.missing(
                &format!("{base}.pod"),
                "add pod = \"US1\" (US1, US2, EU1 or AU1), or base_url for a test server",
            );
            None
        }
    };
    let api_key = secret(
        ctx,
        root,
        &base,
        "api_key",
        &raw.api_key,
        &raw.api_key_env,
        &raw.api_key_file,
    );
    let api_secret = secret(
        ctx,
        root,
        &base,
        "api_secret",
        &raw.api_secret,
        &raw.api_secret_env,
        &raw.api_secret_file,
    );
    let environment = match &raw.environment {
        Some(v) => ctx
            .choice(
                &format!("{base}.environment"),
                v,
                "environment",
                ENVIRONMENTS,
            )
            .unwrap_or(defaults.environment),
        None => defaults.environment,
    };
    let request_timeout = ctx.seconds(
        &format!("{base}.request_timeout_secs"),
        raw.request_timeout_secs,
        defaults.request_timeout,
        MAX_SHORT_SECS,
    );
    let d = DeliverySettings::default();
    let delivery = DeliverySettings {
        rate_limit_per_sec: ctx.int_in(
            &format!("{base}.rate_limit_per_sec"),
            raw.rate_limit_per_sec,
            d.rate_limit_per_sec,
            0..=100_000,
            "mParticle's default account limit is 270 batches per second; 0 turns pacing off",
        ),
        max_in_flight: ctx.int_in(
            &format!("{base}.max_in_flight"),
            raw.max_in_flight,
            d.max_in_flight,
            1..=64,
            "the default is 4",
        ),
        gzip: raw.gzip.unwrap_or(d.gzip),
        retry_max_attempts: ctx.int_in(
            &format!("{base}.retry_max_attempts"),
            raw.retry_max_attempts,
            d.retry_max_attempts,
            1..=100,
            "the default is 8",
        ),
        retry_initial_backoff: Duration::from_millis(ctx.int_in(
            &format!("{base}.retry_initial_backoff_ms"),
            raw.retry_initial_backoff_ms,
            250,
            1..=60_000,
            "the default is 250 ms",
        )),
        retry_max_backoff: ctx.seconds(
            &format!("{base}.retry_max_backoff_secs"),
            raw.retry_max_backoff_secs,
            d.retry_max_backoff,
            MAX_SHORT_SECS,
        ),
        retry_deadline: ctx.seconds(
            &format!("{base}.retry_deadline_secs"),
            raw.retry_deadline_secs,
            d.retry_deadline,
            MAX_LONG_SECS,
        ),
    };
    PendingFeed {
        name: name.to_owned(),
        base_url,
        api_key,
        api_secret,
        environment,
        request_timeout,
        delivery,
        valid: ctx.errors.len() == before,
    }
}

/// An http(s) URL with a host, returned without trailing slashes. Plain
/// `http://` carries the API key and secret in clear text, so it is refused
/// unless the host is a loopback address (`127.0.0.0/8`, `::1`, `localhost`)
/// or the user opted in with `allow_insecure_http = true`.
fn check_base_url(raw: &str, allow_insecure_http: bool) -> Result<String, String> {
    let parsed = url::Url::parse(raw).map_err(|e| format!("`{raw}` is not a valid URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{raw}` is not an http or https URL"));
    }
    let loopback = match parsed.host() {
        None => return Err(format!("`{raw}` has no host")),
        Some(url::Host::Domain("")) => return Err(format!("`{raw}` has no host")),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
    };
    if parsed.scheme() == "http" && !loopback && !allow_insecure_http {
        return Err(format!(
            "`{raw}` is plain http to a host that is not this machine: the API key and secret \
             would travel in clear text"
        ));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

/// The hint for a refused `base_url`.
const BASE_URL_HINT: &str =
    "use an https:// URL such as \"https://s2s.us1.mparticle.com\" (http:// \
     only to 127.0.0.1 or localhost, or with allow_insecure_http = true)";

/// Exactly one of `KEY`, `KEY_env`, `KEY_file` under `base`.
fn secret(
    ctx: &mut Ctx<'_>,
    root: &Path,
    base: &str,
    key: &str,
    inline: &Option<String>,
    env: &Option<String>,
    file: &Option<String>,
) -> Option<PendingSecret> {
    let keys = [key.to_owned(), format!("{key}_env"), format!("{key}_file")];
    let set: Vec<usize> = [inline.is_some(), env.is_some(), file.is_some()]
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.then_some(i))
        .collect();
    let one_of = format!("set exactly one of {}, {} or {}", keys[0], keys[1], keys[2]);
    match set.as_slice() {
        [] => {
            ctx.missing(
                &format!("{base}.{key}"),
                format!("{one_of} (e.g. {}_env = \"VARIABLE\")", key),
            );
            None
        }
        [_, second, ..] => {
            ctx.push(
                &format!("{base}.{}", keys[*second]),
                format!("`{}` and `{}` are both set", keys[set[0]], keys[*second]),
                one_of,
            );
            None
        }
        [0] => {
            let key_path = format!("{base}.{key}");
            let value = inline.as_deref().unwrap_or_default();
            match parse_template(value) {
                Ok(parts) => Some(PendingSecret {
                    key_path,
                    source: SecretSource::Inline(parts),
                }),
                Err(problem) => {
                    ctx.push(&key_path, problem, "write ${NAME} to insert environment variable NAME, and $${ for a literal ${");
                    None
                }
            }
        }
        [1] => {
            let key_path = format!("{base}.{key}_env");
            let name = env.as_deref().unwrap_or_default();
            if valid_env_name(name) {
                Some(PendingSecret {
                    key_path,
                    source: SecretSource::Env(name.to_owned()),
                })
            } else {
                ctx.push(
                    &key_path,
                    format!("`{name}` is not a valid environment variable name"),
                    "use letters, digits and `_`, not starting with a digit (e.g. MP_API_SECRET)",
                );
                None
            }
        }
        _ => {
            let key_path = format!("{base}.{key}_file");
            let path = file.as_deref().unwrap_or_default();
            if path.trim().is_empty() {
                ctx.push(
                    &key_path,
                    "is empty",
                    "give the path of the file holding the value",
                );
                None
            } else {
                Some(PendingSecret {
                    key_path,
                    source: SecretSource::File(join_clean(root, Path::new(path))),
                })
            }
        }
    }
}

/// Whether `name` is a portable environment variable name.
fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Split `${VAR}` references out of a value; `$${` is a literal `${`. Messages
/// never quote the value, which is a secret or holds one.
pub(crate) fn parse_template(value: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        literal.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            literal.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| "has a `${` without a closing `}`".to_owned())?;
            let name = &tail[..end];
            if !valid_env_name(name) {
                return Err("has a `${…}` that is not a valid environment variable name".to_owned());
            }
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Var(name.to_owned()));
            rest = &tail[end + 1..];
        } else {
            literal.push('$');
            rest = &after[1..];
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(parts)
}

fn validate_pipeline(
    ctx: &mut Ctx<'_>,
    root: &Path,
    defaults: &Defaults,
    names: &Names,
    id: &str,
    raw: &RawPipeline,
) -> Pipeline {
    if !valid_name(id) {
        ctx.errors.push(ctx.file.file_error(
            None,
            format!("`{id}` is not a valid pipeline id (the file name is the id)"),
            Some(format!("rename the file; {NAME_HINT}")),
        ));
    }
    let connection = reference(
        ctx,
        "connection",
        raw.connection.as_deref(),
        names.connections.as_deref(),
        |n| format!("add [connections.{n}] to wsync.toml"),
    );
    let data_model = match raw.data_model.as_deref() {
        None => {
            ctx.missing(
                "data_model",
                format!(
                    "add data_model = \"NAME\" for sql/NAME.sql (available: {})",
                    model_list(names)
                ),
            );
            String::new()
        }
        Some(m) => {
            if !names.models.contains(m) {
                let hint = match suggest::closest(m, names.models.iter().map(String::as_str)) {
                    Some(best) => {
                        format!("did you mean `{best}`? available: {}", model_list(names))
                    }
                    None => format!("create sql/{m}.sql (available: {})", model_list(names)),
                };
                ctx.push("data_model", format!("data model `{m}` not found"), hint);
            }
            m.to_owned()
        }
    };
    // Create & Update is mParticle's default protection level, and the issue's.
    let input_protection = match &raw.input_protection {
        Some(v) => ctx.choice("input_protection", v, "input protection", INPUT_PROTECTIONS),
        None => Some(InputProtection::CreateAndUpdate),
    };
    let feed_names: Option<Vec<String>> = names.feeds.as_ref().map(|f| f.keys().cloned().collect());
    let export = raw.export.as_ref().map(|e| validate_export(ctx, e));
    let feed = match (&raw.feed, input_protection) {
        (None, Some(InputProtection::OnlyRead)) | (None, None) => None,
        // An export-only pipeline: reads and writes Parquet, sends nothing.
        (None, Some(_)) if export.is_some() => None,
        (None, Some(_)) => {
            ctx.missing(
                "feed",
                format!(
                    "add feed = \"NAME\" (available: {}), set input_protection = \"only_read\" for a dry run, or add an [export] section for an export-only pipeline",
                    feed_names.as_deref().map(suggest::list).unwrap_or_default()
                ),
            );
            None
        }
        (Some(f), _) => reference(ctx, "feed", Some(f), feed_names.as_deref(), |n| {
            format!("add [feeds.{n}] to wsync.toml")
        }),
    };
    let environment = match &raw.environment {
        Some(v) => ctx.choice("environment", v, "environment", ENVIRONMENTS),
        None => None,
    }
    .or_else(|| {
        feed.as_ref()
            .and_then(|f| names.feeds.as_ref()?.get(f).copied())
    })
    .unwrap_or(defaults.environment);
    let null_policy = raw
        .null_policy
        .as_ref()
        .and_then(|v| ctx.choice("null_policy", v, "null policy", NULL_POLICIES))
        .unwrap_or(defaults.null_policy);
    let limit_policy = raw
        .limit_policy
        .as_ref()
        .and_then(|v| ctx.choice("limit_policy", v, "limit policy", LIMIT_POLICIES))
        .unwrap_or(defaults.limit_policy);
    let sync_mode = raw
        .sync_mode
        .as_ref()
        .map_or(SyncMode::Full, |s| validate_sync_mode(ctx, s));
    let schedule = raw
        .schedule
        .as_ref()
        .map_or(Schedule::OnDemand, |s| validate_schedule(ctx, s));
    let iterator = match &sync_mode {
        SyncMode::Incremental { iterator_field, .. } => Some(iterator_field.as_str()),
        SyncMode::Full => None,
    };
    let mappings = validate_mappings(ctx, &raw.mappings, iterator);
    Pipeline {
        id: id.to_owned(),
        name: raw.name.clone().unwrap_or_else(|| id.to_owned()),
        path: root.join(&ctx.file.rel),
        connection: connection.unwrap_or_default(),
        data_model,
        feed,
        environment,
        sync_mode,
        schedule,
        paused: raw.paused.unwrap_or(false),
        input_protection: input_protection.unwrap_or(InputProtection::OnlyRead),
        null_policy,
        limit_policy,
        mappings,
        retry_dead_letters: raw.retry_dead_letters.unwrap_or(true),
        write_batches: match raw.write_batches {
            Some(true) if input_protection.is_some_and(|p| p != InputProtection::OnlyRead) => {
                ctx.push(
                    "write_batches",
                    "only applies to only_read pipelines",
                    "remove it, or set input_protection = \"only_read\" for a dry run",
                );
                false
            }
            other => other.unwrap_or(false),
        },
        max_rejected_pct: match raw.max_rejected_pct {
            Some(p) if !(0.0..=100.0).contains(&p) => {
                ctx.push(
                    "max_rejected_pct",
                    format!("must be a percentage between 0 and 100, not {p}"),
                    "e.g. max_rejected_pct = 1.5",
                );
                None
            }
            other => other,
        },
        export,
    }
}

/// `[export]`: path template, datasets, compression, row group size.
fn validate_export(ctx: &mut Ctx<'_>, raw: &RawExport) -> ExportSettings {
    const DATASETS: &[(&str, ExportDataset)] = &[
        ("rows", ExportDataset::Rows),
        ("batches", ExportDataset::Batches),
        ("rejected", ExportDataset::Rejected),
    ];
    const COMPRESSIONS: &[(&str, ExportCompression)] = &[
        ("zstd", ExportCompression::Zstd),
        ("snappy", ExportCompression::Snappy),
        ("none", ExportCompression::None),
    ];
    let path = raw
        .path
        .clone()
        .unwrap_or_else(|| "exports/{pipeline}/{run_id}/{dataset}.parquet".to_owned());
    if !path.contains("{dataset}") {
        ctx.push(
            "export.path",
            format!("`{path}` has no `{{dataset}}`, so the datasets would overwrite each other"),
            "put {dataset} in the file name, e.g. \"exports/{pipeline}/{run_id}/{dataset}.parquet\"",
        );
    }
    if !path.contains("{run_id}") {
        ctx.push(
            "export.path",
            format!("`{path}` has no `{{run_id}}`, so every run would overwrite the last one"),
            "put {run_id} in the path, e.g. \"exports/{pipeline}/{run_id}/{dataset}.parquet\"",
        );
    }
    let mut datasets = Vec::new();
    match &raw.datasets {
        None => {
            datasets = vec![
                ExportDataset::Rows,
                ExportDataset::Batches,
                ExportDataset::Rejected,
            ]
        }
        Some(list) => {
            for (i, name) in list.iter().enumerate() {
                if let Some(d) =
                    ctx.choice(&format!("export.datasets[{i}]"), name, "dataset", DATASETS)
                {
                    if !datasets.contains(&d) {
                        datasets.push(d);
                    }
                }
            }
            if list.is_empty() {
                ctx.push(
                    "export.datasets",
                    "is empty",
                    "list at least one of \"rows\", \"batches\", \"rejected\"",
                );
            }
        }
    }
    let compression = match &raw.compression {
        Some(c) => ctx
            .choice("export.compression", c, "compression", COMPRESSIONS)
            .unwrap_or(ExportCompression::Zstd),
        None => ExportCompression::Zstd,
    };
    let row_group_rows = ctx.int_in(
        "export.row_group_rows",
        raw.row_group_rows,
        100_000usize,
        1..=10_000_000,
        "the default is 100000 rows; smaller groups use less memory",
    );
    ExportSettings {
        path,
        datasets,
        compression,
        row_group_rows,
    }
}

fn model_list(names: &Names) -> String {
    suggest::list(&names.models.iter().collect::<Vec<_>>())
}

/// A required reference to a connection or feed. `available` is `None` when
/// `wsync.toml` did not parse (then the name is taken as is).
fn reference(
    ctx: &mut Ctx<'_>,
    key: &str,
    value: Option<&str>,
    available: Option<&[String]>,
    create: impl Fn(&str) -> String,
) -> Option<String> {
    let list = available.map(suggest::list).unwrap_or_default();
    let Some(value) = value else {
        ctx.missing(key, format!("add {key} = \"NAME\" (available: {list})"));
        return None;
    };
    if let Some(available) = available {
        if !available.iter().any(|a| a == value) {
            let hint = match suggest::closest(value, available.iter().map(String::as_str)) {
                Some(best) => format!("did you mean `{best}`? available: {list}"),
                None => format!("{} (available: {list})", create(value)),
            };
            ctx.push(
                key,
                format!("{key} `{value}` is not defined in wsync.toml"),
                hint,
            );
        }
    }
    Some(value.to_owned())
}

/// A `from`/`start`/`end` value: a string, or a TOML integer or date-time written bare.
fn scalar_text(ctx: &mut Ctx<'_>, key_path: &str, value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        other => {
            ctx.push(
                key_path,
                format!("expected a string, found {}", other.type_str()),
                "quote the value",
            );
            None
        }
    }
}

fn not_for(ctx: &mut Ctx<'_>, key_path: &str, key: &str, kind: &str, valid: &str) {
    ctx.push(
        key_path,
        format!("`{key}` does not apply to {kind}"),
        format!("remove it ({valid})"),
    );
}

fn validate_sync_mode(ctx: &mut Ctx<'_>, raw: &RawSyncMode) -> SyncMode {
    let kind = match &raw.kind {
        Some(k) => ctx.choice("sync_mode.type", k, "sync mode", SYNC_KINDS),
        None => {
            ctx.missing(
                "sync_mode.type",
                "add type = \"full\" or type = \"incremental\"",
            );
            None
        }
    };
    match kind {
        None => SyncMode::Full,
        Some(SyncKind::Full) => {
            let valid = "full sync takes no other keys; incremental sync uses them";
            if raw.iterator_field.is_some() {
                not_for(
                    ctx,
                    "sync_mode.iterator_field",
                    "iterator_field",
                    "full sync",
                    valid,
                );
            }
            if raw.iterator_data_type.is_some() {
                not_for(
                    ctx,
                    "sync_mode.iterator_data_type",
                    "iterator_data_type",
                    "full sync",
                    valid,
                );
            }
            if raw.from.is_some() {
                not_for(ctx, "sync_mode.from", "from", "full sync", valid);
            }
            if raw.lag.is_some() {
                not_for(ctx, "sync_mode.lag", "lag", "full sync", valid);
            }
            if raw.iterator_time_zone.is_some() {
                not_for(
                    ctx,
                    "sync_mode.iterator_time_zone",
                    "iterator_time_zone",
                    "full sync",
                    valid,
                );
            }
            SyncMode::Full
        }
        Some(SyncKind::Incremental) => {
            let iterator_field = match raw.iterator_field.as_deref().map(str::trim) {
                Some(f) if !f.is_empty() => f.to_owned(),
                Some(_) => {
                    ctx.push(
                        "sync_mode.iterator_field",
                        "is empty",
                        "name the column that grows with each change, e.g. \"updated_at\"",
                    );
                    String::new()
                }
                None => {
                    ctx.missing("sync_mode.iterator_field", "add iterator_field = \"updated_at\" (the column that grows with each change)");
                    String::new()
                }
            };
            let data_type = match &raw.iterator_data_type {
                Some(t) => ctx.choice(
                    "sync_mode.iterator_data_type",
                    t,
                    "iterator data type",
                    ITERATOR_TYPES,
                ),
                None => {
                    ctx.missing("sync_mode.iterator_data_type", "add iterator_data_type = \"timestamp_tz\" (or timestamp_ntz, date, timestamp_unixtime_s, timestamp_unixtime_ms, integer)");
                    None
                }
            };
            let from = raw
                .from
                .as_ref()
                .and_then(|v| scalar_text(ctx, "sync_mode.from", v));
            if let (Some(from), Some(t)) = (&from, data_type) {
                if let Err(hint) = check_from(from, t) {
                    ctx.push(
                        "sync_mode.from",
                        format!("`{from}` is not a valid {} value", t.as_str()),
                        hint,
                    );
                }
            }
            let lag = match raw.lag {
                None => 0,
                Some(n) if (0..=MAX_LAG).contains(&n) => n,
                Some(n) => {
                    ctx.push(
                        "sync_mode.lag",
                        format!("must be between 0 and {MAX_LAG}, not {n}"),
                        "lag is how much to re-read below the watermark: seconds for time \
                         iterators, values for an integer sequence",
                    );
                    0
                }
            };
            let time_zone = match &raw.iterator_time_zone {
                None => chrono_tz::UTC,
                Some(name) => {
                    if !matches!(
                        data_type,
                        Some(IteratorDataType::TimestampNtz | IteratorDataType::Date) | None
                    ) {
                        ctx.push(
                            "sync_mode.iterator_time_zone",
                            "only applies to timestamp_ntz and date iterators",
                            "remove it: the other iterator types carry their own zone or none",
                        );
                    }
                    time_zone(ctx, "sync_mode.iterator_time_zone", name)
                }
            };
            SyncMode::Incremental {
                iterator_field,
                iterator_data_type: data_type.unwrap_or(IteratorDataType::Integer),
                from,
                lag,
                time_zone,
            }
        }
    }
}

/// Whether `from` parses for the iterator type; the error is the hint.
fn check_from(from: &str, t: IteratorDataType) -> Result<(), String> {
    let ok = match t {
        IteratorDataType::TimestampTz => DateTime::parse_from_rfc3339(from).is_ok(),
        IteratorDataType::TimestampNtz => ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
            .iter()
            .any(|f| NaiveDateTime::parse_from_str(from, f).is_ok()),
        IteratorDataType::Date => NaiveDate::parse_from_str(from, "%Y-%m-%d").is_ok(),
        IteratorDataType::UnixSeconds
        | IteratorDataType::UnixMillis
        | IteratorDataType::Integer => from.trim().parse::<i64>().is_ok(),
    };
    if ok {
        return Ok(());
    }
    Err(match t {
        IteratorDataType::TimestampTz => {
            "write an RFC 3339 timestamp with offset, e.g. \"2024-01-01T00:00:00Z\""
        }
        IteratorDataType::TimestampNtz => {
            "write a timestamp without offset, e.g. \"2024-01-01 00:00:00\""
        }
        IteratorDataType::Date => "write a date, e.g. \"2024-01-01\"",
        IteratorDataType::UnixSeconds => "write whole seconds since 1970, e.g. 1704067200",
        IteratorDataType::UnixMillis => "write whole milliseconds since 1970, e.g. 1704067200000",
        IteratorDataType::Integer => "write an integer, e.g. 0",
    }
    .to_owned())
}

fn validate_schedule(ctx: &mut Ctx<'_>, raw: &RawSchedule) -> Schedule {
    let kind = match &raw.kind {
        Some(k) => ctx.choice("schedule.type", k, "schedule type", SCHEDULE_KINDS),
        None => {
            ctx.missing(
                "schedule.type",
                "add type = \"interval\", \"cron\", \"once\" or \"on_demand\"",
            );
            None
        }
    };
    let Some(kind) = kind else {
        return Schedule::OnDemand;
    };
    let (name, valid) = match kind {
        ScheduleKind::Interval => (
            "interval",
            "interval schedules use frequency, start, end and catch_up_days",
        ),
        ScheduleKind::Cron => ("cron", "cron schedules use expression and time_zone"),
        ScheduleKind::Once => ("once", "once schedules take no other keys"),
        ScheduleKind::OnDemand => ("on_demand", "on_demand schedules take no other keys"),
    };
    let kind_text = format!("schedule type {name}");
    let interval = kind == ScheduleKind::Interval;
    let cron = kind == ScheduleKind::Cron;
    let present = [
        ("frequency", raw.frequency.is_some(), interval),
        ("start", raw.start.is_some(), interval),
        ("end", raw.end.is_some(), interval),
        ("catch_up_days", raw.catch_up_days.is_some(), interval),
        ("expression", raw.expression.is_some(), cron),
        ("time_zone", raw.time_zone.is_some(), cron),
    ];
    for (key, set, allowed) in present {
        if set && !allowed {
            not_for(ctx, &format!("schedule.{key}"), key, &kind_text, valid);
        }
    }
    match kind {
        ScheduleKind::Interval => {
            let frequency = match &raw.frequency {
                Some(f) => ctx.choice("schedule.frequency", f, "frequency", FREQUENCIES),
                None => {
                    ctx.missing(
                        "schedule.frequency",
                        "add frequency = \"hourly\", \"daily\", \"weekly\" or \"monthly\"",
                    );
                    None
                }
            };
            let start = match &raw.start {
                Some(v) => instant(ctx, "schedule.start", v),
                None => {
                    ctx.missing("schedule.start", "add start = \"2024-01-01T00:00:00Z\" (the first run and the grid's anchor)");
                    None
                }
            };
            let end = raw
                .end
                .as_ref()
                .and_then(|v| instant(ctx, "schedule.end", v));
            if let (Some(start), Some(end)) = (start, end) {
                if end <= start {
                    ctx.push(
                        "schedule.end",
                        "must be after start",
                        "move end later than start, or remove it",
                    );
                }
            }
            let catch_up_days = raw.catch_up_days.map(|_| {
                ctx.int_in(
                    "schedule.catch_up_days",
                    raw.catch_up_days,
                    0u32,
                    0..=36_600,
                    "use a number of days from 0 (no catch-up) to 36600",
                )
            });
            Schedule::Interval {
                frequency: frequency.unwrap_or(Frequency::Daily),
                start: start.unwrap_or_default(),
                end,
                catch_up_days,
            }
        }
        ScheduleKind::Cron => {
            let expression = match &raw.expression {
                Some(e) => {
                    if let Err(problem) = super::cron_expr::parse(e) {
                        ctx.push("schedule.expression", format!("cron expression `{e}` {problem}"), "write 5 fields: minute hour day-of-month month day-of-week, e.g. \"0 */15 * * *\"");
                    }
                    e.clone()
                }
                None => {
                    ctx.missing("schedule.expression", "add expression = \"0 * * * *\" (minute hour day-of-month month day-of-week)");
                    String::new()
                }
            };
            let time_zone = raw.time_zone.clone().unwrap_or_else(|| "UTC".to_owned());
            self::time_zone(ctx, "schedule.time_zone", &time_zone);
            Schedule::Cron {
                expression,
                time_zone,
            }
        }
        ScheduleKind::Once => Schedule::Once,
        ScheduleKind::OnDemand => Schedule::OnDemand,
    }
}

/// An IANA time zone, or an error with the closest name.
fn time_zone(ctx: &mut Ctx<'_>, key_path: &str, name: &str) -> chrono_tz::Tz {
    if let Ok(tz) = chrono_tz::Tz::from_str(name) {
        return tz;
    }
    let names = chrono_tz::TZ_VARIANTS.iter().map(|t| t.name());
    let hint = match suggest::closest(name, names) {
        Some(best) => format!("did you mean `{best}`?"),
        None => "use an IANA zone name such as \"UTC\" or \"Europe/Berlin\"".to_owned(),
    };
    ctx.push(key_path, format!("`{name}` is not a known time zone"), hint);
    chrono_tz::UTC
}

/// An RFC 3339 instant (string or TOML offset date-time).
fn instant(ctx: &mut Ctx<'_>, key_path: &str, value: &toml::Value) -> Option<DateTime<Utc>> {
    let text = scalar_text(ctx, key_path, value)?;
    match DateTime::parse_from_rfc3339(&text) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(_) => {
            ctx.push(
                key_path,
                format!("`{text}` is not an RFC 3339 timestamp"),
                "write a date, time and offset, e.g. \"2024-01-01T00:00:00Z\"",
            );
            None
        }
    }
}

fn validate_mappings(
    ctx: &mut Ctx<'_>,
    raw: &[RawMapping],
    iterator: Option<&str>,
) -> Vec<Mapping> {
    let mut out = Vec::new();
    // Lower-cased source column → index of the mapping that claimed it.
    let mut sources: BTreeMap<String, usize> = BTreeMap::new();
    for (i, m) in raw.iter().enumerate() {
        let base = format!("mappings[{i}]");
        let kind = match &m.mapping_type {
            Some(k) => ctx.choice(
                &format!("{base}.mapping_type"),
                k,
                "mapping type",
                MAPPING_KINDS,
            ),
            None => {
                ctx.missing(
                    &format!("{base}.mapping_type"),
                    "add mapping_type = \"column\", \"static\" or \"ignore\"",
                );
                None
            }
        };
        let Some(kind) = kind else { continue };
        let (kind_text, valid, wants_source, wants_destination, wants_value) = match kind {
            MappingKind::Column => (
                "column mappings",
                "column mappings use source and destination",
                true,
                true,
                false,
            ),
            MappingKind::Static => (
                "static mappings",
                "static mappings use value and destination",
                false,
                true,
                true,
            ),
            MappingKind::Ignore => (
                "ignore mappings",
                "ignore mappings use source only",
                true,
                false,
                false,
            ),
        };
        for (key, set, wanted) in [
            ("source", m.source.is_some(), wants_source),
            ("destination", m.destination.is_some(), wants_destination),
            ("value", m.value.is_some(), wants_value),
        ] {
            if set && !wanted {
                not_for(ctx, &format!("{base}.{key}"), key, kind_text, valid);
            } else if !set && wanted {
                let example = match key {
                    "source" => "source = \"column_name\"",
                    "destination" => "destination = \"user_attributes.name\"",
                    _ => "value = \"constant\"",
                };
                ctx.missing(&format!("{base}.{key}"), format!("add {example}"));
            }
        }
        let source = if wants_source {
            m.source.as_deref()
        } else {
            None
        };
        if let Some(source) = source {
            let key_path = format!("{base}.source");
            if source.trim().is_empty() {
                ctx.push(&key_path, "is empty", "name a column of the data model");
            } else if iterator.is_some_and(|it| it.eq_ignore_ascii_case(source)) {
                ctx.push(
                    &key_path,
                    format!("`{source}` is the sync's iterator_field, which is never sent, so it cannot be mapped or ignored"),
                    "remove this mapping, or select the column a second time under another alias",
                );
            } else if let Some(first) = sources.get(&source.to_lowercase()) {
                let line = ctx.file.line(&format!("mappings[{first}].source"));
                let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
                ctx.push(
                    &key_path,
                    format!("column `{source}` is already used by mappings[{first}]{at}"),
                    "keep one mapping per column; select it under another alias to send it twice",
                );
            } else {
                sources.insert(source.to_lowercase(), i);
            }
        }
        let destination = if wants_destination {
            m.destination.as_deref().and_then(|d| {
                parse_destination(d)
                    .map_err(|(message, hint)| {
                        ctx.push(&format!("{base}.destination"), message, hint)
                    })
                    .ok()
            })
        } else {
            None
        };
        let value = if wants_value {
            m.value
                .as_ref()
                .and_then(|v| static_value(ctx, &format!("{base}.value"), v, destination.as_ref()))
        } else {
            None
        };
        match (kind, source, destination, value) {
            (MappingKind::Column, Some(s), Some(d), _) => out.push(Mapping::Column {
                source: s.to_owned(),
                destination: d,
            }),
            (MappingKind::Static, _, Some(d), Some(v)) => out.push(Mapping::Static {
                value: v,
                destination: d,
            }),
            (MappingKind::Ignore, Some(s), _, _) => out.push(Mapping::Ignore {
                source: s.to_owned(),
            }),
            _ => {}
        }
    }
    out
}

const DESTINATION_HINT: &str =
    "use user_attributes.<name>, user_identities.<identity>, device_info.<device id> or mpid";

/// A destination path; the error is `(message, hint)`.
pub(crate) fn parse_destination(path: &str) -> Result<Destination, (String, String)> {
    if path == "mpid" {
        return Ok(Destination::Mpid);
    }
    let Some((section, name)) = path.split_once('.') else {
        return Err((
            format!("`{path}` is not a destination"),
            DESTINATION_HINT.to_owned(),
        ));
    };
    match section {
        "user_attributes" => {
            let count = name.chars().count();
            if name.is_empty() {
                Err((
                    "the user attribute name is empty".to_owned(),
                    "write user_attributes.<name>".to_owned(),
                ))
            } else if count > MAX_ATTRIBUTE_NAME_CHARS {
                Err((
                    format!("the user attribute name is {count} characters long; mParticle allows at most {MAX_ATTRIBUTE_NAME_CHARS}"),
                    "use a shorter name".to_owned(),
                ))
            } else {
                Ok(Destination::Attribute(name.to_owned()))
            }
        }
        "user_identities" => IdentityType::from_destination(name)
            .map(Destination::Identity)
            .ok_or_else(|| {
                let all: Vec<&str> = IdentityType::all()
                    .into_iter()
                    .map(IdentityType::as_str)
                    .collect();
                (
                    format!("`{name}` is not an mParticle identity type"),
                    choices_hint(name, &all),
                )
            }),
        "device_info" => DeviceIdType::from_column(name)
            .map(Destination::Device)
            .ok_or_else(|| {
                let all: Vec<&str> = DeviceIdType::ALL
                    .into_iter()
                    .map(DeviceIdType::as_str)
                    .collect();
                (
                    format!("`{name}` is not an mParticle device id"),
                    choices_hint(name, &all),
                )
            }),
        _ => Err((
            format!("`{path}` is not a destination"),
            DESTINATION_HINT.to_owned(),
        )),
    }
}

fn choices_hint(value: &str, all: &[&str]) -> String {
    match suggest::closest(value, all.iter().copied()) {
        Some(best) => format!("did you mean `{best}`? use one of: {}", suggest::list(all)),
        None => format!("use one of: {}", suggest::list(all)),
    }
}

fn static_value(
    ctx: &mut Ctx<'_>,
    key_path: &str,
    value: &toml::Value,
    destination: Option<&Destination>,
) -> Option<StaticValue> {
    let parsed = match value {
        toml::Value::String(s) => StaticValue::String(s.clone()),
        toml::Value::Integer(i) => StaticValue::Integer(*i),
        toml::Value::Float(f) if f.is_finite() => StaticValue::Float(*f),
        toml::Value::Float(_) => {
            ctx.push(
                key_path,
                "must be a finite number",
                "JSON has no NaN or infinity; use a string or a number",
            );
            return None;
        }
        toml::Value::Boolean(b) => StaticValue::Bool(*b),
        other => {
            ctx.push(
                key_path,
                format!(
                    "a static value must be a string, integer, float or boolean, not {}",
                    other.type_str()
                ),
                "quote it to send it as a string",
            );
            return None;
        }
    };
    if destination == Some(&Destination::Mpid) && !matches!(parsed, StaticValue::Integer(_)) {
        ctx.push(
            key_path,
            "mpid must be an integer",
            "write the mpid unquoted, e.g. value = 8004211113417232015",
        );
        return None;
    }
    Some(parsed)
}

#[cfg(test)]
mod tests {
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
    fn check(
        wsync: &str,
        pipelines: &[(&str, &str)],
        with_hints: bool,
    ) -> (Validated, Vec<String>) {
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
            errors[0]
                .contains("feeds.main.rate_limit_per_sec: must be between 0 and 100000, not -1"),
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
                "wsync.toml:3: connections.bad name.type: `postgress` is not a valid connection type\n  hint: did you mean `postgres`? use one of: postgres, redshift, mysql, sqlite",
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
    fn config_plain_http_base_url_needs_loopback_or_opt_in() {
        let feeds = |url: &str, opt_in: &str| {
            format!(
                "[feeds.f]\nbase_url = \"{url}\"\napi_key = \"k\"\napi_secret = \"s\"\n{opt_in}"
            )
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
    fn state_must_be_sqlite() {
        let (v, errors) = check("[state]\nurl = \"postgres://h/db\"\n", &[], false);
        assert_eq!(
            errors,
            vec!["wsync.toml:2: state.url: only SQLite state stores are supported for now"]
        );
        assert!(v.state.is_none());
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
        let (_, with_hints) = check(WSYNC, &[("p", "connection = \"pgg\"\ndata_model = \"orders\"\ninput_protection = \"only_update\"\n")], true);
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
        assert!(errors[0].starts_with("schedules/p.toml:7: schedule.expression: cron expression `0 25 * * *` does not parse"), "{}", errors[0]);
        assert_eq!(
            errors[1],
            "schedules/p.toml:8: schedule.time_zone: `Europe/Berln` is not a known time zone"
        );
        assert_eq!(errors[2], "schedules/p.toml:9: schedule.frequency: `frequency` does not apply to schedule type cron");
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
}
