//! Errors raised while connecting to a warehouse or reading from it.
//!
//! Every message names what failed (connection, model, column, row) and says what
//! to do. None contains a secret: URLs go through [`redact_url`] and driver text
//! through [`scrub`] before they are stored here.

use std::path::PathBuf;

use crate::redact::{redact_url, scrub, Secret};

/// One column whose SQL type has no Arrow mapping, with the cast that fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedColumn {
    /// Column name as the database returns it.
    pub column: String,
    /// The SQL type as the database reports it.
    pub sql_type: String,
    /// A concrete expression for the model, e.g. `CAST(balance AS NUMERIC) AS balance`.
    pub fix: String,
}

/// Render unsupported columns as `` `a` (MONEY): cast it in the model: `…`; `b` … ``.
fn list_unsupported(columns: &[UnsupportedColumn]) -> String {
    columns
        .iter()
        .map(|c| {
            format!(
                "column `{}` has type {}: cast it in the model: `{}`",
                c.column, c.sql_type, c.fix
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a decode error is about: `` column `x` at row 5 `` or, for a fault of
/// the whole row (its width, the stream), `row 5`.
fn what(column: &str, row: u64) -> String {
    if column.is_empty() {
        format!("row {row}")
    } else {
        format!("column `{column}` at row {row}")
    }
}

/// A source failure. Messages name the connection, model, column or row involved
/// and never contain a password (URLs are redacted, driver text is scrubbed).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The database could not be reached or refused the login or session setup.
    #[error("cannot connect to `{connection}` at {url}: {cause} (check the host, port, credentials and sslmode in the connection url)")]
    Connect {
        /// Connection name.
        connection: String,
        /// The URL with its password masked.
        url: String,
        /// Driver message, scrubbed of the password.
        cause: String,
        /// Whether it was an I/O or pool-timeout class failure.
        retryable: bool,
    },
    /// A warehouse spoken to over HTTPS (Snowflake, BigQuery) refused the login
    /// or could not be reached; `cause` says what to check.
    #[error("cannot log in to `{connection}` at {url}: {cause}")]
    Login {
        /// Connection name.
        connection: String,
        /// The API host root (it holds no secret).
        url: String,
        /// What went wrong and what to check, scrubbed of every secret.
        cause: String,
        /// Whether it was a transient failure (I/O, 429, 5xx).
        retryable: bool,
    },
    /// The model is not a single read-only SELECT.
    #[error("model `{model}` refused at line {line}: {message}")]
    RefusedSql {
        /// Model name.
        model: String,
        /// 1-based line in the model file.
        line: usize,
        /// What was found and how to fix it.
        message: String,
    },
    /// One or more columns have a SQL type wsync cannot read.
    #[error("model `{model}` returns columns wsync cannot read: {}", list_unsupported(.columns))]
    UnsupportedType {
        /// Model name.
        model: String,
        /// Every offending column, in result order.
        columns: Vec<UnsupportedColumn>,
    },
    /// The database rejected or failed the query (syntax errors land here).
    #[error("query for model `{model}` failed: {message}")]
    Query {
        /// Model name.
        model: String,
        /// The database's message, scrubbed.
        message: String,
        /// Whether it was an I/O or pool-timeout class failure.
        retryable: bool,
    },
    /// A row or value could not be read (a value that cannot be converted to its
    /// column's Arrow type rejects only its row; this fails the read). `column`
    /// is empty when the fault is the row's, not one value's.
    #[error("model `{model}`: cannot decode {}: {message}", what(.column, *.row))]
    Decode {
        /// Model name.
        model: String,
        /// Column name.
        column: String,
        /// 1-based row number within this extraction.
        row: u64,
        /// What went wrong.
        message: String,
    },
    /// The server cancelled the query at the connection's statement timeout.
    #[error("query for model `{model}` exceeded the statement timeout of {seconds}s: add a filter or an index, or raise `statement_timeout` on the connection")]
    Timeout {
        /// Model name.
        model: String,
        /// The configured limit.
        seconds: u64,
    },
    /// The SQLite seed script could not be read or run.
    #[error("cannot seed the sqlite database from {}: {message} (fix the script or remove `seed_sql`; the half-created database file was removed)", .file.display())]
    Seed {
        /// The seed SQL file.
        file: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl SourceError {
    /// Whether trying again later might succeed: only I/O failures and pool
    /// timeouts. A statement timeout is not retryable: the same query against the
    /// same data would time out again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { retryable, .. }
            | Self::Login { retryable, .. }
            | Self::Query { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// A connect failure from a driver error.
    pub(crate) fn connect(connection: &str, url: &Secret, err: &sqlx::Error) -> Self {
        Self::Connect {
            connection: connection.to_owned(),
            url: redact_url(url.expose()),
            cause: scrub_url_secrets(&err.to_string(), url).to_lowercase_first(),
            retryable: is_transient(err),
        }
    }
}

/// `text` with the URL, its password (raw and percent-decoded) and any
/// `password=` query value replaced by `****`: drivers may echo any of them.
pub(crate) fn scrub_url_secrets(text: &str, url: &Secret) -> String {
    let mut secrets = vec![url.clone()];
    if let Ok(parsed) = url::Url::parse(url.expose()) {
        if let Some(password) = parsed.password() {
            secrets.push(Secret::new(password));
            if let Ok(decoded) = percent_decode(password) {
                secrets.push(Secret::new(decoded));
            }
        }
        for (key, value) in parsed.query_pairs() {
            if matches!(
                key.to_ascii_lowercase().as_str(),
                "password" | "pass" | "pwd" | "sslpassword" | "token"
            ) {
                secrets.push(Secret::new(value.into_owned()));
            }
        }
    }
    let refs: Vec<&Secret> = secrets.iter().collect();
    scrub(text, &refs)
}

/// Percent-decode a URL component.
fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                // Two hex digits always fit in a byte.
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out)
}

/// Whether a driver error is of the I/O / pool-timeout class.
pub(crate) fn is_transient(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed
    )
}

/// Lowercase the first character of driver text so messages read as one sentence.
pub(crate) trait LowercaseFirst {
    /// The text with its first character lowercased.
    fn to_lowercase_first(&self) -> String;
}

impl LowercaseFirst for str {
    fn to_lowercase_first(&self) -> String {
        let mut chars = self.chars();
        match chars.next() {
            Some(first) => first.to_lowercase().chain(chars).collect(),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_error_redacts_password() {
        let url = Secret::new("postgres://app:hunter22@db:5432/w");
        let err = sqlx::Error::Protocol("password hunter22 rejected".into());
        let e = SourceError::connect("main", &url, &err);
        let text = e.to_string();
        assert!(!text.contains("hunter22"), "{text}");
        assert!(text.contains("postgres://app:****@db:5432/w"), "{text}");
        assert!(!e.is_retryable());
    }

    #[test]
    fn unsupported_lists_every_column_with_its_cast() {
        let e = SourceError::UnsupportedType {
            model: "users".into(),
            columns: vec![
                UnsupportedColumn {
                    column: "balance".into(),
                    sql_type: "MONEY".into(),
                    fix: "CAST(balance AS NUMERIC) AS balance".into(),
                },
                UnsupportedColumn {
                    column: "age".into(),
                    sql_type: "INTERVAL".into(),
                    fix: "EXTRACT(EPOCH FROM age) AS age".into(),
                },
            ],
        };
        let text = e.to_string();
        assert!(text.contains("`balance` has type MONEY: cast it in the model: `CAST(balance AS NUMERIC) AS balance`"), "{text}");
        assert!(text.contains("EXTRACT(EPOCH FROM age) AS age"), "{text}");
    }

    #[test]
    fn io_errors_are_retryable() {
        let e = SourceError::Query {
            model: "m".into(),
            message: "x".into(),
            retryable: is_transient(&sqlx::Error::PoolTimedOut),
        };
        assert!(e.is_retryable());
    }
}
