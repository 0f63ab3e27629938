//! The mParticle Events API client: `POST /v2/bulkevents` with HTTP Basic auth
//! (the feed's key and secret).
//!
//! Plain delivery: one attempt per request. A failure fails the run cleanly and
//! names the feed and what the server said; nothing here prints the key or secret.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, USER_AGENT};
use reqwest::StatusCode;

use crate::config::model::Feed;
use crate::redact::{scrub, Secret};
use crate::sink::PackedRequest;

/// `User-Agent` sent with every request.
pub const WSYNC_USER_AGENT: &str = concat!("wsync/", env!("CARGO_PKG_VERSION"));

/// Longest server message kept in an error.
const MAX_SERVER_MESSAGE: usize = 500;

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// 401 or 403: the credentials are wrong.
    #[error(
        "the Events API refused the credentials of feed `{feed}` (HTTP {status}): the api_key or api_secret is wrong; check `feeds.{feed}` in wsync.toml and the variables it reads"
    )]
    Unauthorized {
        /// Feed name.
        feed: String,
        /// 401 or 403.
        status: u16,
    },
    /// Any other non-2xx answer.
    #[error("the Events API answered HTTP {status} for feed `{feed}`: {message}")]
    Rejected {
        /// Feed name.
        feed: String,
        /// Status code.
        status: u16,
        /// What the server said (truncated).
        message: String,
    },
    /// No answer: connection refused or reset, DNS, TLS, or the request timed out.
    #[error("could not reach the Events API of feed `{feed}` at {url}: {message}")]
    Transport {
        /// Feed name.
        feed: String,
        /// The endpoint URL.
        url: String,
        /// What went wrong.
        message: String,
        /// Whether it was the request timeout.
        timed_out: bool,
    },
}

/// A client for one feed.
#[derive(Debug, Clone)]
pub struct EventsApiClient {
    http: reqwest::Client,
    feed: String,
    url: String,
    api_key: Secret,
    api_secret: Secret,
}

/// What a successful request returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The 2xx status (202 from mParticle).
    pub status: u16,
}

impl EventsApiClient {
    /// A client for `feed`, reusing connections across requests.
    pub fn new(feed: &Feed) -> Result<Self, DeliveryError> {
        let url = format!("{}/v2/bulkevents", feed.base_url);
        let http = reqwest::Client::builder()
            .timeout(feed.request_timeout)
            .connect_timeout(feed.request_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| DeliveryError::Transport {
                feed: feed.name.clone(),
                url: url.clone(),
                message: e.to_string(),
                timed_out: false,
            })?;
        Ok(Self {
            http,
            feed: feed.name.clone(),
            url,
            api_key: feed.api_key.clone(),
            api_secret: feed.api_secret.clone(),
        })
    }

    /// The endpoint URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Send one packed request.
    pub async fn send(&self, request: &PackedRequest) -> Result<Accepted, DeliveryError> {
        let response = self
            .http
            .post(&self.url)
            .basic_auth(self.api_key.expose(), Some(self.api_secret.expose()))
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, WSYNC_USER_AGENT)
            .body(request.body.clone())
            .send()
            .await
            .map_err(|e| self.transport(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Accepted {
                status: status.as_u16(),
            });
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(DeliveryError::Unauthorized {
                feed: self.feed.clone(),
                status: status.as_u16(),
            });
        }
        let body = response.text().await.unwrap_or_default();
        Err(DeliveryError::Rejected {
            feed: self.feed.clone(),
            status: status.as_u16(),
            message: self.server_message(&body),
        })
    }

    fn transport(&self, error: &reqwest::Error) -> DeliveryError {
        // The error chain carries the useful part ("connection refused").
        let mut message = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            message = format!("{message}: {cause}");
            source = cause.source();
        }
        DeliveryError::Transport {
            feed: self.feed.clone(),
            url: self.url.clone(),
            message: scrub(&message, &[&self.api_key, &self.api_secret]),
            timed_out: error.is_timeout(),
        }
    }

    /// mParticle's `{"errors":[{"message":…}]}` when present, else the raw body;
    /// truncated, and scrubbed in case the server echoes credentials.
    fn server_message(&self, body: &str) -> String {
        let from_json = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                let messages: Vec<String> = v["errors"]
                    .as_array()?
                    .iter()
                    .filter_map(|e| e["message"].as_str().map(str::to_owned))
                    .collect();
                (!messages.is_empty()).then(|| messages.join("; "))
            });
        let text = from_json.unwrap_or_else(|| body.trim().to_owned());
        let text = if text.is_empty() {
            "(empty response body)".to_owned()
        } else {
            text
        };
        let cut = crate::mapping::limits::truncate_chars(&text, MAX_SERVER_MESSAGE);
        scrub(cut, &[&self.api_key, &self.api_secret])
    }
}
