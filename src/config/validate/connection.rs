//! `[connections.NAME]`: the type, the URL (or, for `snowflake`/`bigquery`, the
//! keys in [`super::cloud`]), and the per-connection limits.

#[allow(clippy::wildcard_imports)] // the sections share one namespace (see mod.rs)
use super::*;

pub(super) const CONNECTION_KINDS: &[(&str, ConnectionKind)] = &[
    ("postgres", ConnectionKind::Postgres),
    ("redshift", ConnectionKind::Redshift),
    ("mysql", ConnectionKind::MySql),
    ("mariadb", ConnectionKind::MySql),
    ("sqlite", ConnectionKind::Sqlite),
    ("snowflake", ConnectionKind::Snowflake),
    ("bigquery", ConnectionKind::BigQuery),
];

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
    /// Settings of a `snowflake` or `bigquery` connection.
    pub cloud: Option<cloud::PendingCloud>,
    /// Whether every check on this connection passed.
    pub valid: bool,
}

pub(super) fn validate_connection(
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
    let kind = if let Some(k) = &raw.kind {
        ctx.choice(
            &format!("{base}.type"),
            k,
            "connection type",
            CONNECTION_KINDS,
        )
    } else {
        ctx.missing(
            &format!("{base}.type"),
            "add type = \"postgres\", \"redshift\", \"mysql\", \"sqlite\", \"snowflake\" or \"bigquery\"",
        );
        None
    };
    if let Some(kind) = kind {
        cloud::check_keys_apply(ctx, &base, kind, raw);
    }
    let url = if cloud::is_cloud(kind) {
        None
    } else {
        secret(
            ctx,
            root,
            &base,
            "url",
            &raw.url,
            &raw.url_env,
            &raw.url_file,
        )
    };
    let cloud = match kind {
        Some(ConnectionKind::Snowflake) => {
            cloud::snowflake(ctx, root, &base, raw).map(cloud::PendingCloud::Snowflake)
        }
        Some(ConnectionKind::BigQuery) => {
            cloud::bigquery(ctx, root, &base, raw).map(cloud::PendingCloud::BigQuery)
        }
        _ => None,
    };
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
        cloud,
        valid: ctx.errors.len() == before,
    }
}
