//! Secrets that cannot leak by accident.
//!
//! [`Secret`] holds a resolved secret (an API secret, a connection URL with a
//! password). Its `Debug` and `Display` never show the value; code that really
//! needs it calls [`Secret::expose`], which is easy to grep for. [`redact_url`]
//! masks the password part of a URL for messages.

use std::fmt;

/// A resolved secret value. Shown as `****` everywhere except through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plain value, for the one place that must send it (a connect call, an auth header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// A URL with its password (and any `password=` query parameter) replaced by `****`,
/// safe to print. Input that does not parse as a URL is replaced whole, because we
/// cannot tell which part of it is secret.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("****"));
            }
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let secret = matches!(
                        k.to_ascii_lowercase().as_str(),
                        "password" | "pass" | "pwd" | "sslpassword" | "token"
                    );
                    (
                        k.into_owned(),
                        if secret {
                            "****".to_owned()
                        } else {
                            v.into_owned()
                        },
                    )
                })
                .collect();
            if !pairs.is_empty() {
                url.query_pairs_mut().clear().extend_pairs(pairs);
            }
            url.to_string()
        }
        Err(_) => "<unparseable url>".to_owned(),
    }
}

/// Replace every occurrence of each secret in `text` by `****`. Used on error text
/// that comes from a driver or a server and might echo a secret back.
pub fn scrub(text: &str, secrets: &[&Secret]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        let value = secret.expose();
        // Very short values would mask unrelated text and are not worth hiding.
        if value.len() >= 4 {
            out = out.replace(value, "****");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "Secret(****)");
        assert_eq!(format!("{s}"), "****");
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn url_password_is_masked() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.example:5432/warehouse?sslmode=require"),
            "postgres://app:****@db.example:5432/warehouse?sslmode=require"
        );
        assert_eq!(
            redact_url("mysql://root@127.0.0.1/test?password=abc"),
            "mysql://root@127.0.0.1/test?password=****"
        );
        assert_eq!(redact_url("not a url with pass"), "<unparseable url>");
    }

    #[test]
    fn scrub_removes_secret_from_text() {
        let s = Secret::new("topsecret");
        assert_eq!(scrub("auth topsecret failed", &[&s]), "auth **** failed");
    }
}
