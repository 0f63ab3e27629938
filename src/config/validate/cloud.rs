//! The keys of `snowflake` and `bigquery` connections: which apply to which
//! type, the required ones, and the choice of credentials. Pure, like the rest of
//! validation: secrets are only located here, [`crate::config::resolve`] reads them.

use std::path::Path;

use super::{check_base_url, secret, Ctx, PendingSecret};
use crate::config::model::{ConnectionKind, DEFAULT_MAXIMUM_BYTES_BILLED};
use crate::config::raw::RawConnection;

/// A `snowflake` or `bigquery` connection whose secrets are not read yet.
#[derive(Debug)]
pub(crate) enum PendingCloud {
    /// `type = "snowflake"`.
    Snowflake(PendingSnowflake),
    /// `type = "bigquery"`.
    BigQuery(PendingBigQuery),
}

/// A `snowflake` connection before its key or password is read.
#[derive(Debug)]
pub(crate) struct PendingSnowflake {
    /// Account identifier as written.
    pub account: String,
    /// Login name.
    pub user: String,
    /// Role.
    pub role: Option<String>,
    /// Virtual warehouse.
    pub warehouse: Option<String>,
    /// Database.
    pub database: Option<String>,
    /// Schema.
    pub schema: Option<String>,
    /// Host root without trailing slash.
    pub base_url: String,
    /// Where the PEM private key comes from (key-pair auth).
    pub private_key: Option<PendingSecret>,
    /// Where the key's passphrase comes from.
    pub passphrase: Option<PendingSecret>,
    /// Where the password comes from (password auth).
    pub password: Option<PendingSecret>,
}

/// A `bigquery` connection before its service-account key is read.
#[derive(Debug)]
pub(crate) struct PendingBigQuery {
    /// Project running the jobs.
    pub project: String,
    /// Default dataset.
    pub dataset: Option<String>,
    /// Job location.
    pub location: Option<String>,
    /// API root without trailing slash.
    pub base_url: String,
    /// Cost guard, in bytes.
    pub maximum_bytes_billed: u64,
    /// Where the service-account JSON key comes from; `None` = `auth = "none"`.
    pub credentials: Option<PendingSecret>,
}

/// Keys only a `snowflake` connection takes.
const SNOWFLAKE_ONLY: &[&str] = &[
    "account",
    "user",
    "role",
    "warehouse",
    "database",
    "schema",
    "private_key",
    "private_key_env",
    "private_key_file",
    "private_key_passphrase",
    "private_key_passphrase_env",
    "private_key_passphrase_file",
    "password",
    "password_env",
    "password_file",
];

/// Keys only a `bigquery` connection takes.
const BIGQUERY_ONLY: &[&str] = &[
    "project",
    "dataset",
    "location",
    "auth",
    "credentials",
    "credentials_env",
    "credentials_file",
    "maximum_bytes_billed",
];

/// Keys only the URL-based connections take.
const URL_ONLY: &[&str] = &["url", "url_env", "url_file"];

/// Which of the type-specific keys `raw` sets, in declaration order.
fn set_keys(raw: &RawConnection) -> Vec<&'static str> {
    let set = [
        ("url", raw.url.is_some()),
        ("url_env", raw.url_env.is_some()),
        ("url_file", raw.url_file.is_some()),
        ("base_url", raw.base_url.is_some()),
        ("account", raw.account.is_some()),
        ("user", raw.user.is_some()),
        ("role", raw.role.is_some()),
        ("warehouse", raw.warehouse.is_some()),
        ("database", raw.database.is_some()),
        ("schema", raw.schema.is_some()),
        ("private_key", raw.private_key.is_some()),
        ("private_key_env", raw.private_key_env.is_some()),
        ("private_key_file", raw.private_key_file.is_some()),
        (
            "private_key_passphrase",
            raw.private_key_passphrase.is_some(),
        ),
        (
            "private_key_passphrase_env",
            raw.private_key_passphrase_env.is_some(),
        ),
        (
            "private_key_passphrase_file",
            raw.private_key_passphrase_file.is_some(),
        ),
        ("password", raw.password.is_some()),
        ("password_env", raw.password_env.is_some()),
        ("password_file", raw.password_file.is_some()),
        ("project", raw.project.is_some()),
        ("dataset", raw.dataset.is_some()),
        ("location", raw.location.is_some()),
        ("auth", raw.auth.is_some()),
        ("credentials", raw.credentials.is_some()),
        ("credentials_env", raw.credentials_env.is_some()),
        ("credentials_file", raw.credentials_file.is_some()),
        ("maximum_bytes_billed", raw.maximum_bytes_billed.is_some()),
    ];
    set.iter().filter(|(_, on)| *on).map(|(k, _)| *k).collect()
}

/// Report every key set on `raw` that does not apply to connection type `kind`.
pub(super) fn check_keys_apply(
    ctx: &mut Ctx<'_>,
    base: &str,
    kind: ConnectionKind,
    raw: &RawConnection,
) {
    let (not_here, hint): (Vec<&str>, &str) = match kind {
        ConnectionKind::Snowflake => (
            [URL_ONLY, BIGQUERY_ONLY].concat(),
            "remove it: a snowflake connection is set with account, user and private_key_file (or password_env)",
        ),
        ConnectionKind::BigQuery => (
            [URL_ONLY, SNOWFLAKE_ONLY].concat(),
            "remove it: a bigquery connection is set with project and credentials_file",
        ),
        _ => (
            [SNOWFLAKE_ONLY, BIGQUERY_ONLY, &["base_url"]].concat(),
            "remove it, or change the connection's type",
        ),
    };
    for key in set_keys(raw) {
        if not_here.contains(&key) {
            ctx.push(
                &format!("{base}.{key}"),
                format!("`{key}` does not apply to {} connections", kind.as_str()),
                hint,
            );
        }
    }
}

/// Whether a cloud kind is meant.
pub(super) fn is_cloud(kind: Option<ConnectionKind>) -> bool {
    matches!(
        kind,
        Some(ConnectionKind::Snowflake | ConnectionKind::BigQuery)
    )
}

/// A required, non-blank text key.
fn required(
    ctx: &mut Ctx<'_>,
    base: &str,
    key: &str,
    value: Option<&String>,
    hint: &str,
) -> Option<String> {
    match value.map(|v| v.trim()) {
        Some(v) if !v.is_empty() => Some(v.to_owned()),
        Some(_) => {
            ctx.push(&format!("{base}.{key}"), "is empty", hint);
            None
        }
        None => {
            ctx.missing(&format!("{base}.{key}"), hint);
            None
        }
    }
}

/// An optional key that must not be blank when set.
fn optional(ctx: &mut Ctx<'_>, base: &str, key: &str, value: Option<&String>) -> Option<String> {
    match value.map(|v| v.trim()) {
        Some("") => {
            ctx.push(
                &format!("{base}.{key}"),
                "is empty",
                "give it a value, or remove it to use the default",
            );
            None
        }
        Some(v) => Some(v.to_owned()),
        None => None,
    }
}

/// A secret that may be left out entirely (then `None`, no error).
#[allow(clippy::too_many_arguments)] // the three spellings of one key, as `secret` takes them
fn optional_secret(
    ctx: &mut Ctx<'_>,
    root: &Path,
    base: &str,
    key: &str,
    inline: &Option<String>,
    env: &Option<String>,
    file: &Option<String>,
) -> Option<PendingSecret> {
    if inline.is_none() && env.is_none() && file.is_none() {
        return None;
    }
    secret(ctx, root, base, key, inline, env, file)
}

/// The `base_url` key, or `default` when absent.
fn base_url(
    ctx: &mut Ctx<'_>,
    base: &str,
    raw: Option<&String>,
    default: String,
    example: &str,
) -> Option<String> {
    match raw {
        None => Some(default),
        // Credentials (tokens, signed JWTs) go to it: the same loopback-only
        // rule for plain http as a feed's base_url.
        Some(url) => match check_base_url(url, false) {
            Ok(url) => Some(url),
            Err(problem) => {
                ctx.push(
                    &format!("{base}.base_url"),
                    problem,
                    format!("use an http:// or https:// URL such as \"{example}\", or remove it"),
                );
                None
            }
        },
    }
}

/// The keys of a `snowflake` connection.
pub(super) fn snowflake(
    ctx: &mut Ctx<'_>,
    root: &Path,
    base: &str,
    raw: &RawConnection,
) -> Option<PendingSnowflake> {
    let account = required(
        ctx,
        base,
        "account",
        raw.account.as_ref(),
        "add account = \"myorg-myaccount\" (the account identifier, as in https://<account>.snowflakecomputing.com)",
    );
    let account = account.and_then(|a| {
        let clean = a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if clean && !a.to_ascii_lowercase().ends_with("snowflakecomputing.com") {
            Some(a)
        } else {
            ctx.push(
                &format!("{base}.account"),
                format!("`{a}` is not an account identifier"),
                "write only the identifier, e.g. \"myorg-myaccount\" or \"xy12345.eu-west-1\" (use base_url for a full host)",
            );
            None
        }
    });
    let user = required(
        ctx,
        base,
        "user",
        raw.user.as_ref(),
        "add user = \"WSYNC_READER\"",
    );
    let role = optional(ctx, base, "role", raw.role.as_ref());
    let warehouse = optional(ctx, base, "warehouse", raw.warehouse.as_ref());
    let database = optional(ctx, base, "database", raw.database.as_ref());
    let schema = optional(ctx, base, "schema", raw.schema.as_ref());
    let default_host = account
        .as_deref()
        .map(|a| format!("https://{}.snowflakecomputing.com", a.to_ascii_lowercase()))
        .unwrap_or_default();
    let base_url = base_url(
        ctx,
        base,
        raw.base_url.as_ref(),
        default_host,
        "https://myorg-myaccount.privatelink.snowflakecomputing.com",
    );
    let private_key = optional_secret(
        ctx,
        root,
        base,
        "private_key",
        &raw.private_key,
        &raw.private_key_env,
        &raw.private_key_file,
    );
    let passphrase = optional_secret(
        ctx,
        root,
        base,
        "private_key_passphrase",
        &raw.private_key_passphrase,
        &raw.private_key_passphrase_env,
        &raw.private_key_passphrase_file,
    );
    let password = optional_secret(
        ctx,
        root,
        base,
        "password",
        &raw.password,
        &raw.password_env,
        &raw.password_file,
    );
    let key_set = raw.private_key.is_some()
        || raw.private_key_env.is_some()
        || raw.private_key_file.is_some();
    let password_set =
        raw.password.is_some() || raw.password_env.is_some() || raw.password_file.is_some();
    let passphrase_set = raw.private_key_passphrase.is_some()
        || raw.private_key_passphrase_env.is_some()
        || raw.private_key_passphrase_file.is_some();
    match (key_set, password_set) {
        (true, true) => ctx.push(
            &format!(
                "{base}.{}",
                if raw.password_env.is_some() {
                    "password_env"
                } else if raw.password_file.is_some() {
                    "password_file"
                } else {
                    "password"
                }
            ),
            "both a private key and a password are set",
            "remove the password: key-pair authentication is the default and recommended one",
        ),
        (false, false) => ctx.missing(
            &format!("{base}.private_key_file"),
            "add private_key_file = \"rsa_key.p8\" for key-pair authentication (see the README), or password_env = \"VARIABLE\"",
        ),
        _ => {}
    }
    if passphrase_set && !key_set {
        ctx.push(
            &format!("{base}.private_key_passphrase"),
            "a passphrase is set but no private key",
            "add private_key_file, or remove the passphrase",
        );
    }
    Some(PendingSnowflake {
        account: account?,
        user: user?,
        role,
        warehouse,
        database,
        schema,
        base_url: base_url?,
        private_key,
        passphrase,
        password,
    })
}

/// The keys of a `bigquery` connection.
pub(super) fn bigquery(
    ctx: &mut Ctx<'_>,
    root: &Path,
    base: &str,
    raw: &RawConnection,
) -> Option<PendingBigQuery> {
    let project = required(
        ctx,
        base,
        "project",
        raw.project.as_ref(),
        "add project = \"my-project\" (the project that runs and pays for the queries)",
    );
    let project = project.and_then(|p| {
        if p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            Some(p)
        } else {
            ctx.push(
                &format!("{base}.project"),
                format!("`{p}` is not a project id"),
                "use the project id (e.g. \"my-project-123\"), not its display name",
            );
            None
        }
    });
    let dataset = optional(ctx, base, "dataset", raw.dataset.as_ref());
    let location = optional(ctx, base, "location", raw.location.as_ref());
    let base_url = base_url(
        ctx,
        base,
        raw.base_url.as_ref(),
        "https://bigquery.googleapis.com".to_owned(),
        "https://bigquery.googleapis.com",
    );
    let maximum_bytes_billed = match raw.maximum_bytes_billed {
        None => DEFAULT_MAXIMUM_BYTES_BILLED,
        Some(n) if n > 0 => n.unsigned_abs(),
        Some(n) => {
            ctx.push(
                &format!("{base}.maximum_bytes_billed"),
                format!("must be more than 0 bytes, not {n}"),
                format!("the default is {DEFAULT_MAXIMUM_BYTES_BILLED} (100 GiB)"),
            );
            DEFAULT_MAXIMUM_BYTES_BILLED
        }
    };
    let anonymous = match raw.auth.as_deref() {
        None | Some("service_account") => false,
        Some("none") => {
            if raw.base_url.is_none() {
                ctx.push(
                    &format!("{base}.auth"),
                    "auth = \"none\" is only for emulators and proxies, and needs base_url",
                    "set base_url to the emulator's address, or use a service-account key (credentials_file)",
                );
            }
            true
        }
        Some(other) => {
            ctx.push(
                &format!("{base}.auth"),
                format!("`{other}` is not a valid bigquery auth"),
                "use one of: service_account, none",
            );
            false
        }
    };
    let credentials_set = raw.credentials.is_some()
        || raw.credentials_env.is_some()
        || raw.credentials_file.is_some();
    let credentials = if anonymous {
        if credentials_set {
            ctx.push(
                &format!("{base}.auth"),
                "auth = \"none\" but credentials are set",
                "remove one of them",
            );
        }
        None
    } else {
        secret(
            ctx,
            root,
            base,
            "credentials",
            &raw.credentials,
            &raw.credentials_env,
            &raw.credentials_file,
        )
    };
    Some(PendingBigQuery {
        project: project?,
        dataset,
        location,
        base_url: base_url?,
        maximum_bytes_billed,
        credentials,
    })
}
