//! Snowflake login: the key-pair JWT and the login request body.
//!
//! Key-pair JWT, as Snowflake documents it ("Key-pair authentication and
//! key-pair rotation", "Using key-pair authentication" in the SQL API guide):
//! RS256, `iss` = `<ACCOUNT>.<USER>.SHA256:<fingerprint>`, `sub` =
//! `<ACCOUNT>.<USER>`, `iat` now, `exp` at most one hour later. `ACCOUNT` is the
//! account identifier in upper case without any region or cloud suffix (the part
//! before the first `.`), `USER` the login name in upper case, and the
//! fingerprint the base64 SHA-256 of the public key's DER encoding.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::config::model::{SnowflakeAuth, SnowflakeSettings};
use crate::redact::Secret;
use crate::source::jwt::RsaKey;

/// How long a login JWT is valid: it is used once, right away.
const JWT_LIFETIME_SECS: i64 = 120;

/// The account part of a JWT: upper case, without `.region.cloud`.
pub(crate) fn jwt_account(account: &str) -> String {
    account
        .split('.')
        .next()
        .unwrap_or(account)
        .to_ascii_uppercase()
}

/// The signed key-pair JWT for `account`/`user` issued at `now`.
pub(crate) fn key_pair_jwt(
    key: &RsaKey,
    account: &str,
    user: &str,
    now: DateTime<Utc>,
) -> Result<Secret, String> {
    let qualified = format!("{}.{}", jwt_account(account), user.to_ascii_uppercase());
    let fingerprint = key.public_key_fingerprint()?;
    let iat = now.timestamp();
    let claims = json!({
        "iss": format!("{qualified}.{fingerprint}"),
        "sub": qualified,
        "iat": iat,
        "exp": iat + JWT_LIFETIME_SECS,
    });
    key.sign(&claims, None)
}

/// The `data` of a login request. `token` is the JWT for key-pair auth; the
/// password comes from `settings`. Session parameters: UTC, the statement
/// timeout, and Arrow results.
pub(crate) fn login_body(
    settings: &SnowflakeSettings,
    token: Option<&Secret>,
    statement_timeout_secs: u64,
) -> Value {
    let mut data = json!({
        "CLIENT_APP_ID": "wsync",
        "CLIENT_APP_VERSION": env!("CARGO_PKG_VERSION"),
        "ACCOUNT_NAME": jwt_account(&settings.account),
        "LOGIN_NAME": settings.user,
        "CLIENT_ENVIRONMENT": {"APPLICATION": "wsync"},
        "SESSION_PARAMETERS": {
            "TIMEZONE": "UTC",
            "STATEMENT_TIMEOUT_IN_SECONDS": statement_timeout_secs,
            "PYTHON_CONNECTOR_QUERY_RESULT_FORMAT": "ARROW",
            "AUTOCOMMIT": true,
        },
    });
    match (&settings.auth, token) {
        (SnowflakeAuth::KeyPair { .. }, Some(token)) => {
            data["AUTHENTICATOR"] = json!("SNOWFLAKE_JWT");
            data["TOKEN"] = json!(token.expose());
        }
        (SnowflakeAuth::Password(password), _) => {
            data["PASSWORD"] = json!(password.expose());
        }
        (SnowflakeAuth::KeyPair { .. }, None) => {}
    }
    json!({ "data": data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::jwt::{decode_claims, tests::fixture};

    #[test]
    fn jwt_claims_follow_snowflakes_key_pair_format() {
        let key = RsaKey::from_pem(&Secret::new(fixture("rsa_key.p8")), None).unwrap();
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let token = key_pair_jwt(&key, "xy12345.eu-west-1.aws", "wsync_reader", now).unwrap();
        let claims = decode_claims(token.expose());
        let fingerprint = fixture("rsa_key.fingerprint");
        assert_eq!(
            claims["iss"],
            format!("XY12345.WSYNC_READER.SHA256:{}", fingerprint.trim())
        );
        assert_eq!(claims["sub"], "XY12345.WSYNC_READER");
        assert_eq!(claims["iat"], 1_700_000_000);
        let exp = claims["exp"].as_i64().unwrap();
        assert!(exp > 1_700_000_000 && exp <= 1_700_000_000 + 3600, "{exp}");
        assert_eq!(jwt_account("myorg-myaccount"), "MYORG-MYACCOUNT");
    }
}
