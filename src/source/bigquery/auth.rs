//! BigQuery service-account authentication: the JSON key's private key signs a
//! JWT (RS256, `iss` = the service account's email, `scope`, `aud` = the token
//! URI, one hour), which Google's OAuth endpoint exchanges for an access token
//! (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`). The token is
//! refreshed a minute before it expires.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use crate::redact::Secret;
use crate::source::jwt::RsaKey;

/// The OAuth scope requested: running query jobs needs BigQuery's scope; what
/// the account may read is decided by its IAM roles (see the README).
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
/// Google's token endpoint, used when the key file names none.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// Refresh this long before the token expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The fields of a service-account JSON key that a token needs.
#[derive(Clone)]
pub(crate) struct ServiceAccountKey {
    /// `client_email`.
    pub client_email: String,
    /// `private_key_id` (the JWT's `kid`).
    pub private_key_id: Option<String>,
    /// `token_uri`.
    pub token_uri: String,
    /// The parsed `private_key`.
    key: RsaKey,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

/// The JSON key file as Google writes it (only the fields used).
#[derive(Deserialize)]
struct RawKey {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key_id: Option<String>,
    private_key: Option<String>,
    token_uri: Option<String>,
}

impl ServiceAccountKey {
    /// Parse a service-account JSON key. Errors name the missing or bad field,
    /// never a value.
    pub(crate) fn parse(text: &Secret) -> Result<Self, String> {
        let raw: RawKey = serde_json::from_str(text.expose()).map_err(|e| {
            format!(
                "the credentials are not a JSON key file (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        match raw.kind.as_deref() {
            Some("service_account") => {}
            Some(other) => {
                return Err(format!(
                    "the credentials are of type `{other}`, not `service_account`: create a key for a service account"
                ))
            }
            None => return Err("the credentials have no `type`: expected a service-account JSON key".to_owned()),
        }
        let client_email = raw
            .client_email
            .filter(|e| !e.is_empty())
            .ok_or("the credentials have no `client_email`")?;
        let pem = raw
            .private_key
            .filter(|k| !k.is_empty())
            .ok_or("the credentials have no `private_key`")?;
        let key = RsaKey::from_pem(&Secret::new(pem), None)
            .map_err(|e| format!("the credentials' private_key: {e}"))?;
        Ok(Self {
            client_email,
            private_key_id: raw.private_key_id,
            token_uri: raw
                .token_uri
                .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned()),
            key,
        })
    }

    /// The signed assertion for the token request.
    pub(crate) fn assertion(&self, now: chrono::DateTime<chrono::Utc>) -> Result<Secret, String> {
        let iat = now.timestamp();
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + 3600,
        });
        self.key.sign(&claims, self.private_key_id.as_deref())
    }
}

/// An access token and when to refresh it.
#[derive(Clone)]
pub(crate) struct AccessToken {
    /// The bearer token.
    pub token: Secret,
    /// Refresh after this instant.
    pub refresh_at: Instant,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(****)")
    }
}

/// The token endpoint's answer.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<u64>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Exchange a fresh assertion for an access token. The error is
/// `(message, retryable)`.
pub(crate) async fn fetch_token(
    http: &reqwest::Client,
    key: &ServiceAccountKey,
) -> Result<AccessToken, (String, bool)> {
    let assertion = key.assertion(chrono::Utc::now()).map_err(|e| (e, false))?;
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
        .append_pair("assertion", assertion.expose())
        .finish();
    let response = http
        .post(&key.token_uri)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .timeout(Duration::from_secs(30))
        .body(body)
        .send()
        .await
        .map_err(|e| {
            (
                format!("the token request failed: {}", e.without_url()),
                true,
            )
        })?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| {
        (
            format!("reading the token answer failed: {}", e.without_url()),
            true,
        )
    })?;
    let answer: TokenAnswer = serde_json::from_slice(&bytes).map_err(|_| {
        (
            format!("the token endpoint answered HTTP {status} without JSON"),
            status.is_server_error(),
        )
    })?;
    match (answer.access_token, status.is_success()) {
        (Some(token), true) if !token.is_empty() => {
            let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600));
            Ok(AccessToken {
                token: Secret::new(token),
                refresh_at: Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN),
            })
        }
        _ => Err((
            format!(
                "the token endpoint refused the service account `{}`: {} {}",
                key.client_email,
                answer.error.unwrap_or_else(|| format!("HTTP {status}")),
                answer.error_description.unwrap_or_default()
            )
            .trim_end()
            .to_owned(),
            status.is_server_error() || status.as_u16() == 429,
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::source::jwt::{decode_claims, tests::fixture};

    /// A service-account key file around the test key, with `token_uri`.
    pub(crate) fn key_json(token_uri: &str) -> String {
        json!({
            "type": "service_account",
            "project_id": "wsync-test",
            "private_key_id": "abc123",
            "private_key": fixture("rsa_key.p8"),
            "client_email": "reader@wsync-test.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": token_uri,
        })
        .to_string()
    }

    #[test]
    fn assertion_claims() {
        let key =
            ServiceAccountKey::parse(&Secret::new(key_json("http://127.0.0.1:1/token"))).unwrap();
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let claims = decode_claims(key.assertion(now).unwrap().expose());
        assert_eq!(claims["iss"], "reader@wsync-test.iam.gserviceaccount.com");
        assert_eq!(claims["aud"], "http://127.0.0.1:1/token");
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(claims["exp"], 1_700_003_600);
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn bad_keys_are_named_not_echoed() {
        let err = ServiceAccountKey::parse(&Secret::new(
            "{\"type\": \"authorized_user\", \"refresh_token\": \"tok-secret\"}",
        ))
        .unwrap_err();
        assert!(err.contains("authorized_user"), "{err}");
        assert!(!err.contains("tok-secret"), "{err}");
        let err = ServiceAccountKey::parse(&Secret::new("not json tok-secret")).unwrap_err();
        assert!(!err.contains("tok-secret"), "{err}");
        let err = ServiceAccountKey::parse(&Secret::new(
            "{\"type\": \"service_account\", \"client_email\": \"a@b\"}",
        ))
        .unwrap_err();
        assert!(err.contains("private_key"), "{err}");
    }
}
