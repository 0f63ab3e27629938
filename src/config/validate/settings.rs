//! `[defaults]`, `[daemon]` and `[state]`: the project-wide settings, and the
//! state-store URL rules (SQLite paths resolve against the project folder).

#[allow(clippy::wildcard_imports)] // the sections share one namespace (see mod.rs)
use super::*;

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

pub(super) fn validate_defaults(ctx: &mut Ctx<'_>, raw: Option<&RawDefaults>) -> Defaults {
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

pub(super) fn validate_daemon(ctx: &mut Ctx<'_>, raw: Option<&RawDaemon>) -> DaemonSettings {
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
            Some(text) => {
                if let Ok(addr) = text.parse() {
                    Some(addr)
                } else {
                    ctx.push(
                        "daemon.http_bind",
                        format!("`{text}` is not an address and port"),
                        "write e.g. \"127.0.0.1:9184\", or \"\" to turn the HTTP API off",
                    );
                    d.http_bind
                }
            }
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

pub(super) const DEFAULT_STATE_URL: &str = "sqlite://.wsync/state.db";
pub(super) const DEFAULT_RUNS_DIR: &str = ".wsync/runs";
pub(super) const DEFAULT_SPOOL_DIR: &str = ".wsync/spool";
/// A day: a spool older than that holds data too stale to send.
pub(super) const DEFAULT_SPOOL_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Enough for the state store to commit and a small spool to be written.
pub(super) const DEFAULT_MIN_FREE_DISK_MB: u64 = 256;

pub(super) fn validate_state(
    ctx: &mut Ctx<'_>,
    root: &Path,
    raw: Option<&RawState>,
) -> Option<StateConfig> {
    let from_env = match (
        raw.and_then(|s| s.url.as_deref()),
        raw.and_then(|s| s.url_env.as_deref()),
    ) {
        (Some(_), Some(_)) => {
            ctx.push(
                "state.url_env",
                "is set together with state.url",
                "keep one of them: url_env names a variable holding the URL",
            );
            return None;
        }
        (None, Some(var)) => match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => Some(value),
            _ => {
                ctx.push(
                    "state.url_env",
                    format!("the environment variable `{var}` is not set or empty"),
                    format!("export {var}=postgres://user:password@host/db (or a sqlite:// URL)"),
                );
                return None;
            }
        },
        _ => None,
    };
    let url = from_env
        .as_deref()
        .or_else(|| raw.and_then(|s| s.url.as_deref()))
        .unwrap_or(DEFAULT_STATE_URL);
    let runs_dir = raw
        .and_then(|s| s.runs_dir.as_deref())
        .unwrap_or(DEFAULT_RUNS_DIR);
    // Name the key the URL came from.
    let url_key = if from_env.is_some() {
        "state.url_env"
    } else {
        "state.url"
    };
    let scheme = url_scheme(url).map(str::to_ascii_lowercase);
    let url = match scheme.as_deref() {
        Some("sqlite") => match sqlite_url(url, root) {
            Ok(url) => Some(url),
            Err(problem) => {
                ctx.push(url_key, problem, STATE_URL_HINT);
                None
            }
        },
        Some("postgres" | "postgresql") if url::Url::parse(url).is_ok_and(|u| u.has_host()) => {
            Some(url.to_owned())
        }
        Some("postgres" | "postgresql") => {
            ctx.push(
                url_key,
                "is not a valid PostgreSQL URL (it needs a host)",
                STATE_URL_HINT,
            );
            None
        }
        // The scheme only: the rest may hold a password.
        other => {
            ctx.push(
                url_key,
                format!(
                    "has the scheme `{}`; the state store is SQLite or PostgreSQL",
                    other.unwrap_or("(none)")
                ),
                STATE_URL_HINT,
            );
            None
        }
    };
    let spool_dir = raw
        .and_then(|s| s.spool_dir.as_deref())
        .unwrap_or(DEFAULT_SPOOL_DIR);
    let spool_max_age = ctx.seconds(
        "state.spool_max_age_secs",
        raw.and_then(|s| s.spool_max_age_secs),
        DEFAULT_SPOOL_MAX_AGE,
        MAX_LONG_SECS,
    );
    let min_free_disk_mb = ctx.int_in(
        "state.min_free_disk_mb",
        raw.and_then(|s| s.min_free_disk_mb),
        DEFAULT_MIN_FREE_DISK_MB,
        0..=100_000_000,
        "use megabytes such as 256 (the default), or 0 to turn the check off",
    );
    let lease_ttl = ctx.seconds(
        "state.lease_ttl_secs",
        raw.and_then(|s| s.lease_ttl_secs),
        crate::state::DEFAULT_LEASE_TTL,
        3600,
    );
    for (key, value, example) in [
        ("state.runs_dir", runs_dir, ".wsync/runs"),
        ("state.spool_dir", spool_dir, ".wsync/spool"),
    ] {
        if value.trim().is_empty() {
            ctx.push(
                key,
                "is empty",
                format!("use e.g. \"{example}\" or remove it"),
            );
            return None;
        }
    }
    Some(StateConfig {
        url: Secret::new(url?),
        runs_dir: join_clean(root, Path::new(runs_dir)),
        spool_dir: join_clean(root, Path::new(spool_dir)),
        spool_max_age,
        min_free_disk_mb,
        lease_ttl,
    })
}

pub(super) const STATE_URL_HINT: &str =
    "use a SQLite URL such as \"sqlite://.wsync/state.db\" (relative to the project folder) for one host, or \"postgres://user@host/db\" (password in url_env, PGPASSWORD or ~/.pgpass) for several daemons";

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
