//! A pipeline's `[resolver]` section: how `only_update` (and a forecasting
//! `only_read` dry run) finds out whether a row's profile already exists.
//!
//! ```toml
//! [resolver]
//! type = "idsync"                   # IDSync search: never creates a profile
//! pod = "US1"                       # or base_url = "https://proxy.internal"
//! api_key_env = "MP_PLATFORM_KEY"   # a platform key, not the feed's key
//! api_secret_env = "MP_PLATFORM_SECRET"
//!
//! [resolver]
//! type = "sql"                      # known profiles from the warehouse
//! data_model = "known_profiles"     # sql/known_profiles.sql: identity columns only
//! connection = "warehouse"          # default: the pipeline's connection
//! ```
//!
//! This file holds the raw section as read from TOML and the validated,
//! resolved settings; validation lives in `validate::resolver`, secrets are read
//! in `config::resolve`. Kept apart from the pipeline struct so the resolver can
//! be added without touching every place a pipeline is built.

use std::time::Duration;

use serde::Deserialize;

use super::model::{DeliverySettings, Pod};
use crate::redact::Secret;

/// `[resolver]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table")]
pub(crate) struct RawResolver {
    /// `idsync` or `sql`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// idsync: the pod whose IDSync host to ask.
    pub pod: Option<String>,
    /// idsync: an IDSync host root instead of a pod's (`/v1/search` is appended).
    pub base_url: Option<String>,
    /// idsync: accept an `http://` `base_url` to a host other than this machine
    /// (the key and secret then travel in clear text).
    pub allow_insecure_http: Option<bool>,
    /// idsync: the platform API key, inline (`${VAR}` expanded).
    pub api_key: Option<String>,
    /// idsync: environment variable holding the key.
    pub api_key_env: Option<String>,
    /// idsync: file holding the key.
    pub api_key_file: Option<String>,
    /// idsync: the platform API secret, inline.
    pub api_secret: Option<String>,
    /// idsync: environment variable holding the secret.
    pub api_secret_env: Option<String>,
    /// idsync: file holding the secret.
    pub api_secret_file: Option<String>,
    /// idsync: timeout of one search, seconds.
    pub request_timeout_secs: Option<i64>,
    /// idsync: searches per second; 0 turns pacing off.
    pub rate_limit_per_sec: Option<i64>,
    /// idsync: searches in flight at once.
    pub max_in_flight: Option<i64>,
    /// idsync: attempts per search (as `feeds.*.retry_max_attempts`).
    pub retry_max_attempts: Option<i64>,
    /// idsync: first backoff, milliseconds.
    pub retry_initial_backoff_ms: Option<i64>,
    /// idsync: longest backoff, seconds.
    pub retry_max_backoff_secs: Option<i64>,
    /// idsync: give up on one search after this many seconds.
    pub retry_deadline_secs: Option<i64>,
    /// idsync: identity sets remembered for the run.
    pub cache_entries: Option<i64>,
    /// sql: the model (`sql/NAME.sql`) returning the identities of known profiles.
    pub data_model: Option<String>,
    /// sql: the connection to run it on (default: the pipeline's).
    pub connection: Option<String>,
}

/// A validated, resolved `[resolver]`.
#[derive(Debug, Clone)]
pub enum ResolverSettings {
    /// IDSync `POST /v1/search`.
    IdSync(IdSyncSettings),
    /// A warehouse query listing the identities of known profiles.
    Sql(SqlResolverSettings),
}

impl ResolverSettings {
    /// `idsync` or `sql`, as in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::IdSync(_) => "idsync",
            Self::Sql(_) => "sql",
        }
    }

    /// One line for `wsync validate` and summaries; never shows a secret.
    pub fn describe(&self) -> String {
        match self {
            Self::IdSync(s) => format!(
                "idsync (search at {}/v1/search, {} in flight, {})",
                s.base_url,
                s.delivery.max_in_flight,
                if s.delivery.rate_limit_per_sec == 0 {
                    "no pacing".to_owned()
                } else {
                    format!("{}/s", s.delivery.rate_limit_per_sec)
                }
            ),
            Self::Sql(s) => format!(
                "sql (model `{}` on connection `{}`)",
                s.data_model, s.connection
            ),
        }
    }
}

/// How to reach IDSync.
#[derive(Debug, Clone)]
pub struct IdSyncSettings {
    /// Host root without trailing slash; `/v1/search` is appended.
    pub base_url: String,
    /// Platform API key (HTTP Basic user). Feed keys are refused by IDSync.
    pub api_key: Secret,
    /// Platform API secret (HTTP Basic password).
    pub api_secret: Secret,
    /// Timeout of one search.
    pub request_timeout: Duration,
    /// Pacing, concurrency and retries, with the same meaning and defaults as a
    /// feed's (`gzip` is unused): IDSync answers are classified by the one retry
    /// policy.
    pub delivery: DeliverySettings,
    /// Identity sets remembered for the run (found or not), bounding memory.
    pub cache_entries: usize,
}

/// Where the known profiles come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlResolverSettings {
    /// Connection name (exists).
    pub connection: String,
    /// Model name (exists).
    pub data_model: String,
}

/// Default number of identity sets the IDSync resolver remembers per run.
pub const DEFAULT_CACHE_ENTRIES: usize = 100_000;

/// Default searches per second: a conservative share of an account's budget,
/// since IDSync's own limit is not published per account.
pub const DEFAULT_IDSYNC_RATE_PER_SEC: u32 = 100;

/// The IDSync host root of a pod. US1 is `identity.mparticle.com`
/// (`shared/spec/mparticle.md` §2); the other pods follow mParticle's
/// `identity.<pod>.mparticle.com` naming, the way their Events API hosts follow
/// `s2s.<pod>.mparticle.com`.
pub fn idsync_base_url(pod: Pod) -> &'static str {
    match pod {
        Pod::Us1 => "https://identity.mparticle.com",
        Pod::Us2 => "https://identity.us2.mparticle.com",
        Pod::Eu1 => "https://identity.eu1.mparticle.com",
        Pod::Au1 => "https://identity.au1.mparticle.com",
    }
}
