//! Step 3: everything that reads the outside world. Secrets come from
//! environment variables (`${VAR}`, `*_env`) and files (`*_file`); seed scripts
//! must exist; connection URLs, now known, must match their connection's type.
//!
//! Errors name the key and the variable or file, never a value: a message may end
//! up in CI logs, and the value is a password or an API secret.

use std::ffi::OsString;
use std::path::Path;

use super::error::ConfigError;
use super::locate::{relative_to, SourceFile};
use super::model::{
    BigQueryAuth, BigQuerySettings, CloudWarehouse, Connection, ConnectionKind, Feed, Project,
    SnowflakeAuth, SnowflakeSettings,
};
use super::resolver::{IdSyncSettings, ResolverSettings, SqlResolverSettings};
use super::validate::cloud::PendingCloud;
use super::validate::resolver::{PendingKind, PendingResolver};
use super::validate::{
    sqlite_url, url_scheme, Part, PendingConnection, PendingFeed, PendingSecret, SecretSource,
    Validated,
};
use crate::redact::Secret;
use crate::source::bigquery::ServiceAccountKey;
use crate::source::jwt::RsaKey;

/// Reads an environment variable (injected so tests need not touch the process
/// environment).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// Resolve every secret and finish the project. Errors go to `errors`; the
/// project is returned only when `errors` is empty at the end (it may already
/// hold validation errors, and then the resolve errors are added to them).
pub(crate) fn resolve(
    root: &Path,
    validated: Validated,
    wsync: &SourceFile,
    env: EnvLookup<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<Project> {
    let mut r = Resolver {
        root,
        file: wsync,
        env,
        errors,
    };
    let connections = validated
        .connections
        .into_iter()
        .filter_map(|c| r.connection(c))
        .map(|c| (c.name.clone(), c))
        .collect();
    let feeds = validated
        .feeds
        .into_iter()
        .filter_map(|f| r.feed(f))
        .map(|f| (f.name.clone(), f))
        .collect();
    let resolvers = validated
        .resolvers
        .into_iter()
        .filter_map(|(id, pending)| {
            let settings = resolver_settings(root, pending, env, &mut *errors)?;
            Some((id, settings))
        })
        .collect();
    if !errors.is_empty() {
        return None;
    }
    Some(Project {
        root: root.to_path_buf(),
        state: validated.state?,
        daemon: validated.daemon,
        connections,
        feeds,
        models: validated.models,
        pipelines: validated.pipelines,
        resolvers,
    })
}

/// A pipeline's `[resolver]` with its IDSync key and secret read; errors point
/// at the pipeline's file.
fn resolver_settings(
    root: &Path,
    pending: PendingResolver,
    env: EnvLookup<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<ResolverSettings> {
    let mut r = Resolver {
        root,
        file: &pending.file,
        env,
        errors,
    };
    match pending.kind {
        PendingKind::Sql {
            connection,
            data_model,
        } => Some(ResolverSettings::Sql(SqlResolverSettings {
            connection,
            data_model,
        })),
        PendingKind::IdSync {
            base_url,
            api_key,
            api_secret,
            request_timeout,
            delivery,
            cache_entries,
        } => {
            let key = r.secret(&api_key);
            let secret = r.secret(&api_secret);
            Some(ResolverSettings::IdSync(IdSyncSettings {
                base_url,
                api_key: Secret::new(key?),
                api_secret: Secret::new(secret?),
                request_timeout,
                delivery,
                cache_entries,
            }))
        }
    }
}

struct Resolver<'a> {
    root: &'a Path,
    file: &'a SourceFile,
    env: EnvLookup<'a>,
    errors: &'a mut Vec<ConfigError>,
}

/// Schemes safe to quote in a message: anything else might be part of a
/// secret pasted in the wrong place.
const KNOWN_SCHEMES: &[&str] = &[
    "postgres",
    "postgresql",
    "redshift",
    "mysql",
    "mariadb",
    "sqlite",
    "http",
    "https",
    "jdbc",
];

impl Resolver<'_> {
    fn push(&mut self, key_path: &str, message: impl Into<String>, hint: impl Into<String>) {
        self.errors
            .push(self.file.error(key_path, message, Some(hint.into())));
    }

    fn shown(&self, path: &Path) -> String {
        relative_to(self.root, path).display().to_string()
    }

    fn connection(&mut self, c: PendingConnection) -> Option<Connection> {
        let base = format!("connections.{}", c.name);
        if let Some(pending) = c.cloud {
            let cloud = self.cloud(pending);
            if !c.valid {
                return None;
            }
            let (cloud, url) = cloud?;
            return Some(Connection {
                name: c.name,
                kind: c.kind?,
                url: Secret::new(url),
                seed_sql: None,
                statement_timeout: c.statement_timeout,
                chunk_rows: c.chunk_rows,
                cloud: Some(cloud),
            });
        }
        let url = c.url.as_ref().and_then(|u| self.secret(u));
        let url = match (url, c.url.as_ref(), c.kind) {
            (Some(url), Some(pending), Some(kind)) => self.connection_url(kind, &url, pending),
            _ => None,
        };
        let seed_ok = match &c.seed_sql {
            Some(path) if !path.is_file() => {
                let shown = self.shown(path);
                self.push(
                    &format!("{base}.seed_sql"),
                    format!("seed script `{shown}` does not exist"),
                    "create it, fix the path (relative paths start at the project folder), or remove seed_sql",
                );
                false
            }
            _ => true,
        };
        if !(c.valid && seed_ok) {
            return None;
        }
        Some(Connection {
            name: c.name,
            kind: c.kind?,
            url: Secret::new(url?),
            seed_sql: c.seed_sql,
            statement_timeout: c.statement_timeout,
            chunk_rows: c.chunk_rows,
            cloud: None,
        })
    }

    /// Read the secrets of a `snowflake` or `bigquery` connection and check they
    /// are usable (a private key that parses, a service-account key with the
    /// fields a token needs). Returns the settings and the API host root.
    fn cloud(&mut self, pending: PendingCloud) -> Option<(CloudWarehouse, String)> {
        match pending {
            PendingCloud::Snowflake(p) => {
                let key = p.private_key.as_ref().map(|s| (s, self.secret(s)));
                let passphrase = p.passphrase.as_ref().and_then(|s| self.secret(s));
                let password = p.password.as_ref().map(|s| self.secret(s));
                let auth = match (key, password) {
                    (Some((pending_key, Some(pem))), _) => {
                        let pem = Secret::new(pem);
                        let passphrase = passphrase.map(Secret::new);
                        if let Err(problem) = RsaKey::from_pem(&pem, passphrase.as_ref()) {
                            self.push(
                                &pending_key.key_path,
                                problem,
                                "give the PKCS#8 PEM file made as the README shows (openssl pkcs8 -topk8 …)",
                            );
                            return None;
                        }
                        SnowflakeAuth::KeyPair {
                            private_key: pem,
                            passphrase,
                        }
                    }
                    (None, Some(Some(password))) => SnowflakeAuth::Password(Secret::new(password)),
                    _ => return None,
                };
                let url = p.base_url.clone();
                Some((
                    CloudWarehouse::Snowflake(SnowflakeSettings {
                        account: p.account,
                        user: p.user,
                        role: p.role,
                        warehouse: p.warehouse,
                        database: p.database,
                        schema: p.schema,
                        base_url: p.base_url,
                        auth,
                    }),
                    url,
                ))
            }
            PendingCloud::BigQuery(p) => {
                let auth = match &p.credentials {
                    None => BigQueryAuth::None,
                    Some(pending) => {
                        let text = Secret::new(self.secret(pending)?);
                        if let Err(problem) = ServiceAccountKey::parse(&text) {
                            self.push(
                                &pending.key_path,
                                problem,
                                "give the JSON key file downloaded for the service account (IAM → Service accounts → Keys)",
                            );
                            return None;
                        }
                        BigQueryAuth::ServiceAccount(text)
                    }
                };
                let url = p.base_url.clone();
                Some((
                    CloudWarehouse::BigQuery(BigQuerySettings {
                        project: p.project,
                        dataset: p.dataset,
                        location: p.location,
                        base_url: p.base_url,
                        maximum_bytes_billed: p.maximum_bytes_billed,
                        auth,
                    }),
                    url,
                ))
            }
        }
    }

    /// Check a resolved URL against the connection type and normalise it.
    fn connection_url(
        &mut self,
        kind: ConnectionKind,
        url: &str,
        pending: &PendingSecret,
    ) -> Option<String> {
        let origin = match &pending.source {
            SecretSource::Inline(_) => String::new(),
            SecretSource::Env(name) => format!(" (from environment variable `{name}`)"),
            SecretSource::File(path) => format!(" (from file `{}`)", self.shown(path)),
        };
        let (expected, example) = match kind {
            ConnectionKind::Postgres | ConnectionKind::Redshift => (
                &["postgres", "postgresql"][..],
                "postgres://user:${PGPASSWORD}@host:5432/db",
            ),
            ConnectionKind::MySql => (
                &["mysql", "mariadb"][..],
                "mysql://user:${MYSQL_PASSWORD}@host:3306/db",
            ),
            ConnectionKind::Sqlite => (&["sqlite"][..], "sqlite://warehouse.db"),
            // No URL: their settings are checked in `cloud`.
            ConnectionKind::Snowflake | ConnectionKind::BigQuery => return Some(url.to_owned()),
        };
        let hint = format!("use a URL like {example}, or change the connection's type");
        let scheme = url_scheme(url).map(str::to_ascii_lowercase);
        let Some(scheme) = scheme.filter(|s| expected.contains(&s.as_str())) else {
            let message = match url_scheme(url).map(str::to_ascii_lowercase) {
                Some(s) if KNOWN_SCHEMES.contains(&s.as_str()) => format!(
                    "the URL{origin} has scheme `{s}`, which does not fit connection type `{}`",
                    kind.as_str()
                ),
                _ => format!(
                    "the URL{origin} does not start with {}://",
                    expected.join(":// or ")
                ),
            };
            self.push(&pending.key_path, message, hint);
            return None;
        };
        let result = match kind {
            ConnectionKind::Sqlite => sqlite_url(url, self.root),
            _ => url::Url::parse(url)
                .map(|_| match scheme.as_str() {
                    // sqlx only knows mysql://; MariaDB speaks the same protocol.
                    "mariadb" => format!("mysql{}", &url[scheme.len()..]),
                    _ => url.to_owned(),
                })
                .map_err(|e| format!("the URL{origin} does not parse: {e}")),
        };
        result
            .map_err(|problem| self.push(&pending.key_path, problem, hint))
            .ok()
    }

    fn feed(&mut self, f: PendingFeed) -> Option<Feed> {
        let api_key = f.api_key.as_ref().and_then(|s| self.secret(s));
        let api_secret = f.api_secret.as_ref().and_then(|s| self.secret(s));
        if !f.valid {
            return None;
        }
        Some(Feed {
            name: f.name,
            base_url: f.base_url?,
            api_key: Secret::new(api_key?),
            api_secret: Secret::new(api_secret?),
            environment: f.environment,
            request_timeout: f.request_timeout,
            delivery: f.delivery,
        })
    }

    /// An environment variable, with its problem as `(message, hint)`.
    fn var(&self, name: &str) -> Result<String, (String, String)> {
        let hint = format!("set {name} in the environment wsync runs in (e.g. export {name}=...)");
        match (self.env)(name) {
            None => Err((format!("environment variable `{name}` is not set"), hint)),
            Some(value) => value.into_string().map_err(|_| {
                (
                    format!("environment variable `{name}` is not valid UTF-8"),
                    hint,
                )
            }),
        }
    }

    /// Read one secret; every problem is reported, the value never is.
    fn secret(&mut self, pending: &PendingSecret) -> Option<String> {
        let key_path = pending.key_path.as_str();
        match &pending.source {
            SecretSource::Inline(parts) => {
                let mut value = String::new();
                let mut ok = true;
                for part in parts {
                    match part {
                        Part::Literal(text) => value.push_str(text),
                        Part::Var(name) => match self.var(name) {
                            Ok(v) => value.push_str(&v),
                            Err((message, hint)) => {
                                self.push(key_path, message, hint);
                                ok = false;
                            }
                        },
                    }
                }
                if ok && value.trim().is_empty() {
                    self.push(
                        key_path,
                        "is empty",
                        "give it a value, e.g. \"${VARIABLE}\"",
                    );
                    return None;
                }
                ok.then_some(value)
            }
            SecretSource::Env(name) => match self.var(name) {
                Ok(v) if v.trim().is_empty() => {
                    self.push(
                        key_path,
                        format!("environment variable `{name}` is empty"),
                        format!("set {name} to the value in the environment wsync runs in"),
                    );
                    None
                }
                // Surrounding whitespace is never part of a key or URL; it comes
                // from `export X="$(cat file)"` and similar.
                Ok(v) => Some(v.trim().to_owned()),
                Err((message, hint)) => {
                    self.push(key_path, message, hint);
                    None
                }
            },
            SecretSource::File(path) => self.secret_file(key_path, path),
        }
    }

    fn secret_file(&mut self, key_path: &str, path: &Path) -> Option<String> {
        let shown = self.shown(path);
        match read_capped(path, MAX_SECRET_FILE_BYTES) {
            Ok(text) if text.len() > MAX_SECRET_FILE_BYTES => {
                self.push(
                    key_path,
                    format!("file `{shown}` is larger than {MAX_SECRET_FILE_BYTES} bytes"),
                    "a secret file holds one value (a key, a secret or a URL); check the path",
                );
                None
            }
            Ok(text) if text.trim().is_empty() => {
                self.push(
                    key_path,
                    format!("file `{shown}` is empty"),
                    "write the value into the file",
                );
                None
            }
            Ok(text) => Some(text.trim().to_owned()),
            Err(e) => {
                self.push(
                    key_path,
                    format!("cannot read file `{shown}`: {e}"),
                    "check the path (relative paths start at the project folder) and its permissions",
                );
                None
            }
        }
    }
}

/// The most of a `*_file` secret read: one value, never a whole disk (a path
/// such as `/dev/zero` must not hang validation).
const MAX_SECRET_FILE_BYTES: usize = 64 * 1024;

/// At most `cap + 1` bytes of `path` as text (so the caller can tell it was cut).
fn read_capped(path: &std::path::Path, cap: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::load_with_env;
    use crate::config::model::{BigQueryAuth, CloudWarehouse, SnowflakeAuth};

    /// A project with `wsync` as its wsync.toml plus `files`, loaded with `vars`.
    fn load(
        wsync: &str,
        files: &[(&str, &str)],
        vars: &[(&str, &str)],
    ) -> (tempfile::TempDir, Result<Project, Vec<String>>) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("wsync.toml"), wsync).expect("write");
        for (rel, text) in files {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        let env: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(*v)))
            .collect();
        let result = load_with_env(dir.path(), &|name| env.get(name).cloned())
            .map_err(|e| e.0.iter().map(ToString::to_string).collect());
        (dir, result)
    }

    const FEED: &str = "[feeds.f]\npod = \"US1\"\n";

    #[test]
    fn config_secret_file_is_read_up_to_a_bound() {
        let wsync = format!("{FEED}api_key_file = \"big.txt\"\napi_secret_file = \"/dev/zero\"\n");
        let big = "k".repeat(MAX_SECRET_FILE_BYTES + 1);
        let (_, result) = load(&wsync, &[("big.txt", &big)], &[]);
        let errors = result.expect_err("invalid");
        assert_eq!(errors.len(), 2, "{errors:?}");
        for e in &errors {
            assert!(e.contains("is larger than 65536 bytes"), "{e}");
        }
    }

    #[test]
    fn interpolation_and_escape() {
        let wsync =
            format!("{FEED}api_key = \"k-${{A}}-${{B}}-$${{C}}\"\napi_secret = \"${{S}}\"\n");
        let (_, result) = load(
            &wsync,
            &[],
            &[("A", "1"), ("B", "two"), ("S", "sec-value-xyz")],
        );
        let project = result.expect("valid");
        assert_eq!(project.feeds["f"].api_key.expose(), "k-1-two-${C}");
        assert_eq!(project.feeds["f"].api_secret.expose(), "sec-value-xyz");
        assert!(!format!("{:?}", project.feeds["f"]).contains("sec-value-xyz"));
    }

    #[test]
    fn missing_variables_are_each_reported_without_values() {
        let wsync = format!("{FEED}api_key = \"${{A}}:${{B}}\"\napi_secret_env = \"S\"\n");
        let (_, result) = load(&wsync, &[], &[("A", "value-of-a")]);
        assert_eq!(
            result.expect_err("invalid"),
            vec![
                "wsync.toml:3: feeds.f.api_key: environment variable `B` is not set\n  hint: set B in the environment wsync runs in (e.g. export B=...)",
                "wsync.toml:4: feeds.f.api_secret_env: environment variable `S` is not set\n  hint: set S in the environment wsync runs in (e.g. export S=...)",
            ]
        );
        let wsync = format!("{FEED}api_key = \"${{A}}${{B}}\"\napi_secret_env = \"S\"\n");
        let (_, result) = load(&wsync, &[], &[("A", ""), ("B", " "), ("S", "  ")]);
        assert_eq!(
            result.expect_err("invalid"),
            vec![
                "wsync.toml:3: feeds.f.api_key: is empty\n  hint: give it a value, e.g. \"${VARIABLE}\"",
                "wsync.toml:4: feeds.f.api_secret_env: environment variable `S` is empty\n  hint: set S to the value in the environment wsync runs in",
            ]
        );
    }

    #[test]
    fn secret_files_are_read_and_trimmed() {
        let wsync =
            format!("{FEED}api_key_file = \"secrets/key\"\napi_secret_file = \"secrets/none\"\n");
        let (_, result) = load(&wsync, &[("secrets/key", "  the-key\n")], &[]);
        let errors = result.expect_err("invalid");
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with(
                "wsync.toml:4: feeds.f.api_secret_file: cannot read file `secrets/none`: "
            ),
            "{}",
            errors[0]
        );
        let (_, result) = load(
            &wsync,
            &[("secrets/key", "  the-key\n"), ("secrets/none", "s\n")],
            &[],
        );
        let project = result.expect("valid");
        assert_eq!(project.feeds["f"].api_key.expose(), "the-key");
        assert_eq!(project.feeds["f"].api_secret.expose(), "s");
    }

    #[test]
    fn url_scheme_is_checked_after_resolving_without_printing_it() {
        let wsync = "[connections.a]\ntype = \"postgres\"\nurl_env = \"A\"\n\n[connections.b]\ntype = \"redshift\"\nurl_env = \"B\"\n\n[connections.c]\ntype = \"mysql\"\nurl = \"${C}\"\n";
        let (_, result) = load(
            wsync,
            &[],
            &[
                ("A", "mysql://u:pw-a@h/db"),
                ("B", "hunter2-not-a-url"),
                ("C", "postgres://u:pw-c@h/db"),
            ],
        );
        let errors = result.expect_err("invalid");
        assert_eq!(
            errors,
            vec![
                "wsync.toml:3: connections.a.url_env: the URL (from environment variable `A`) has scheme `mysql`, which does not fit connection type `postgres`\n  hint: use a URL like postgres://user:${PGPASSWORD}@host:5432/db, or change the connection's type",
                "wsync.toml:7: connections.b.url_env: the URL (from environment variable `B`) does not start with postgres:// or postgresql://\n  hint: use a URL like postgres://user:${PGPASSWORD}@host:5432/db, or change the connection's type",
                "wsync.toml:11: connections.c.url: the URL has scheme `postgres`, which does not fit connection type `mysql`\n  hint: use a URL like mysql://user:${MYSQL_PASSWORD}@host:3306/db, or change the connection's type",
            ]
        );
        for e in &errors {
            assert!(!e.contains("pw-") && !e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn urls_are_normalised() {
        let wsync = "[connections.m]\ntype = \"mariadb\"\nurl_env = \"M\"\n\n[connections.s]\ntype = \"sqlite\"\nurl_file = \"dsn\"\nseed_sql = \"seed.sql\"\n\n[connections.p]\ntype = \"postgres\"\nurl = \"postgresql://u@h/db\"\n";
        let (dir, result) = load(
            wsync,
            &[
                ("dsn", "sqlite:data/w.db?mode=rwc\n"),
                ("seed.sql", "CREATE TABLE t (x INT);"),
            ],
            &[("M", "mariadb://u:p@h:3306/db")],
        );
        let project = result.expect("valid");
        assert_eq!(project.connections["m"].kind, ConnectionKind::MySql);
        assert_eq!(
            project.connections["m"].url.expose(),
            "mysql://u:p@h:3306/db"
        );
        let root = dir.path().canonicalize().expect("canonical");
        let expected = format!("sqlite://{}/data/w.db?mode=rwc", project.root.display());
        assert_eq!(project.connections["s"].url.expose(), expected);
        assert_eq!(project.root.canonicalize().expect("canonical"), root);
        assert_eq!(
            project.connections["s"].seed_sql,
            Some(project.root.join("seed.sql"))
        );
        assert_eq!(project.connections["p"].url.expose(), "postgresql://u@h/db");
    }

    #[test]
    fn seed_script_must_exist() {
        let wsync = "[connections.s]\ntype = \"sqlite\"\nurl = \"sqlite://w.db\"\nseed_sql = \"seed/demo.sql\"\n";
        let (_, result) = load(wsync, &[], &[]);
        assert_eq!(
            result.expect_err("invalid"),
            vec!["wsync.toml:4: connections.s.seed_sql: seed script `seed/demo.sql` does not exist\n  hint: create it, fix the path (relative paths start at the project folder), or remove seed_sql"]
        );
    }

    #[test]
    fn secrets_are_resolved_even_when_other_keys_are_wrong() {
        let wsync = "[connections.a]\ntype = \"postgres\"\nurl_env = \"A\"\nchunk_rows = 0\n";
        let (_, result) = load(wsync, &[], &[]);
        let errors = result.expect_err("invalid");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("`A` is not set"));
        assert!(errors[1].contains("chunk_rows"));
    }

    /// A test-only key from `tests/fixtures/keys/`.
    fn key(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/keys/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture")
    }

    #[test]
    fn snowflake_connections_resolve_with_key_pair_or_password() {
        let wsync = "[connections.sf]\ntype = \"snowflake\"\naccount = \"MyOrg-Acct\"\nuser = \"wsync_reader\"\nrole = \"WSYNC_READ\"\nwarehouse = \"WH\"\ndatabase = \"DB\"\nschema = \"PUBLIC\"\nprivate_key_file = \"keys/rsa_key.p8\"\nprivate_key_passphrase_env = \"PP\"\n\n[connections.pw]\ntype = \"snowflake\"\naccount = \"xy12345.eu-west-1\"\nuser = \"u\"\npassword_env = \"SFPW\"\nbase_url = \"http://127.0.0.1:9/\"\n";
        let (_, result) = load(
            wsync,
            &[("keys/rsa_key.p8", &key("rsa_key_des3.p8"))],
            &[("PP", "test-passphrase-only"), ("SFPW", "pw-value-123")],
        );
        let project = result.expect("valid");
        let sf = &project.connections["sf"];
        assert_eq!(sf.kind, ConnectionKind::Snowflake);
        assert_eq!(sf.url.expose(), "https://myorg-acct.snowflakecomputing.com");
        let Some(CloudWarehouse::Snowflake(settings)) = &sf.cloud else {
            panic!("snowflake settings")
        };
        assert_eq!(settings.role.as_deref(), Some("WSYNC_READ"));
        assert!(matches!(
            settings.auth,
            SnowflakeAuth::KeyPair {
                passphrase: Some(_),
                ..
            }
        ));
        let debug = format!("{sf:?}");
        assert!(
            !debug.contains("ENCRYPTED") && !debug.contains("test-passphrase-only"),
            "{debug}"
        );
        let pw = &project.connections["pw"];
        assert_eq!(pw.url.expose(), "http://127.0.0.1:9");
        assert!(!format!("{pw:?}").contains("pw-value-123"));
    }

    #[test]
    fn snowflake_mistakes_are_each_named() {
        let wsync = "[connections.a]\ntype = \"snowflake\"\nurl = \"postgres://x\"\nproject = \"p\"\n\n[connections.b]\ntype = \"snowflake\"\naccount = \"https://b.snowflakecomputing.com\"\nuser = \"u\"\nprivate_key_env = \"K\"\npassword_env = \"P\"\n\n[connections.c]\ntype = \"postgres\"\nurl = \"postgres://h/db\"\naccount = \"x\"\n";
        let (_, result) = load(wsync, &[], &[]);
        assert_eq!(
            result.expect_err("invalid"),
            vec![
                "wsync.toml:1: connections.a.account: missing required key\n  hint: add account = \"myorg-myaccount\" (the account identifier, as in https://<account>.snowflakecomputing.com)",
                "wsync.toml:1: connections.a.user: missing required key\n  hint: add user = \"WSYNC_READER\"",
                "wsync.toml:1: connections.a.private_key_file: missing required key\n  hint: add private_key_file = \"rsa_key.p8\" for key-pair authentication (see the README), or password_env = \"VARIABLE\"",
                "wsync.toml:3: connections.a.url: `url` does not apply to snowflake connections\n  hint: remove it: a snowflake connection is set with account, user and private_key_file (or password_env)",
                "wsync.toml:4: connections.a.project: `project` does not apply to snowflake connections\n  hint: remove it: a snowflake connection is set with account, user and private_key_file (or password_env)",
                "wsync.toml:8: connections.b.account: `https://b.snowflakecomputing.com` is not an account identifier\n  hint: write only the identifier, e.g. \"myorg-myaccount\" or \"xy12345.eu-west-1\" (use base_url for a full host)",
                "wsync.toml:11: connections.b.password_env: both a private key and a password are set\n  hint: remove the password: key-pair authentication is the default and recommended one",
                "wsync.toml:16: connections.c.account: `account` does not apply to postgres connections\n  hint: remove it, or change the connection's type",
            ]
        );
    }

    #[test]
    fn snowflake_key_problems_name_the_key_not_its_value() {
        let wsync = "[connections.a]\ntype = \"snowflake\"\naccount = \"a\"\nuser = \"u\"\nprivate_key_file = \"k.p8\"\n\n[connections.b]\ntype = \"snowflake\"\naccount = \"a\"\nuser = \"u\"\nprivate_key_file = \"k.p8\"\nprivate_key_passphrase_env = \"PP\"\n";
        let (_, result) = load(
            wsync,
            &[("k.p8", &key("rsa_key_aes.p8"))],
            &[("PP", "wrong-passphrase-value")],
        );
        let errors = result.expect_err("invalid");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("wsync.toml:5: connections.a.private_key_file: the private key is encrypted but no passphrase is set"), "{}", errors[0]);
        assert!(errors[1].starts_with("wsync.toml:11: connections.b.private_key_file: cannot decrypt the private key: the passphrase is wrong"), "{}", errors[1]);
        assert!(
            !errors
                .iter()
                .any(|e| e.contains("wrong-passphrase-value") || e.contains("MII")),
            "{errors:?}"
        );
    }

    #[test]
    fn bigquery_connections_resolve_and_check_their_key() {
        let sa = serde_json::json!({
            "type": "service_account",
            "private_key": key("rsa_key.p8"),
            "client_email": "r@p.iam.gserviceaccount.com",
        })
        .to_string();
        let wsync = "[connections.bq]\ntype = \"bigquery\"\nproject = \"my-project\"\ndataset = \"crm\"\nlocation = \"EU\"\ncredentials_file = \"sa.json\"\nmaximum_bytes_billed = 1000000\n\n[connections.emu]\ntype = \"bigquery\"\nproject = \"p\"\nauth = \"none\"\nbase_url = \"http://127.0.0.1:9050\"\n";
        let (_, result) = load(wsync, &[("sa.json", &sa)], &[]);
        let project = result.expect("valid");
        let Some(CloudWarehouse::BigQuery(bq)) = &project.connections["bq"].cloud else {
            panic!("bigquery settings")
        };
        assert_eq!(bq.maximum_bytes_billed, 1_000_000);
        assert_eq!(bq.base_url, "https://bigquery.googleapis.com");
        assert!(!format!("{:?}", project.connections["bq"]).contains("PRIVATE"));
        let Some(CloudWarehouse::BigQuery(emu)) = &project.connections["emu"].cloud else {
            panic!("bigquery settings")
        };
        assert!(matches!(emu.auth, BigQueryAuth::None));
        assert_eq!(
            emu.maximum_bytes_billed,
            crate::config::model::DEFAULT_MAXIMUM_BYTES_BILLED
        );

        let wsync = "[connections.a]\ntype = \"bigquery\"\nauth = \"none\"\nmaximum_bytes_billed = -1\n\n[connections.b]\ntype = \"bigquery\"\nproject = \"p\"\ncredentials_env = \"SA\"\n";
        let (_, result) = load(
            wsync,
            &[],
            &[(
                "SA",
                "{\"type\": \"authorized_user\", \"refresh_token\": \"rt-secret\"}",
            )],
        );
        let errors = result.expect_err("invalid");
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(
            errors[0].contains("connections.a.project: missing required key"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].contains("connections.a.auth: auth = \"none\" is only for emulators"),
            "{}",
            errors[1]
        );
        assert!(
            errors[2].contains("connections.a.maximum_bytes_billed: must be more than 0 bytes"),
            "{}",
            errors[2]
        );
        assert!(
            errors[3].contains(
                "connections.b.credentials_env: the credentials are of type `authorized_user`"
            ),
            "{}",
            errors[3]
        );
        assert!(!errors.iter().any(|e| e.contains("rt-secret")));
    }
}
