//! The mParticle Events API client: `POST /v2/bulkevents` (and, for event
//! batches older than 30 days, `/v2/bulkevents/historical`) with HTTP Basic
//! auth (the feed's key and secret).
//!
//! The client makes one attempt and returns what the server said
//! ([`EventsApiClient::post`] → [`RawResponse`]); the retry policy
//! ([`crate::sink::retry`]) and the [`crate::sink::delivery::Deliverer`] decide
//! what to do with it. [`EventsApiClient::send`] is the plain one-attempt path.
//! Nothing here prints the key or secret.

use std::time::Duration;

use reqwest::header::{
    HeaderMap, CONTENT_ENCODING, CONTENT_TYPE, LOCATION, RETRY_AFTER, USER_AGENT,
};
use reqwest::StatusCode;

use crate::config::model::Feed;
use crate::redact::{scrub, Secret};
use crate::sink::PackedRequest;

/// `User-Agent` sent with every request.
pub const WSYNC_USER_AGENT: &str = concat!("wsync/", env!("CARGO_PKG_VERSION"));

/// Longest server message kept in an error.
const MAX_SERVER_MESSAGE: usize = 500;

/// mParticle's proactive pacing header on throttled accounts (§3.4): the highest
/// usage, in percent, across its speed and acceleration limits.
pub const RATE_LIMIT_PERCENTAGE_USED: &str = "x-mp-rate-limit-percentage-used";
/// On a 429, which limit was hit (`org|account|app|feed|workspace|acceleration`).
pub const RATE_LIMIT_EXCEEDED: &str = "x-mp-rate-limit-exceeded";

/// Why a request was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// A non-2xx answer that stops the run: from [`EventsApiClient::send`], any;
    /// from the `Deliverer`, a wrong endpoint (404, 405, 501).
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
    /// A retryable failure (5xx, 408, timeout, connection, 429) kept recurring
    /// until the attempts or the deadline ran out. Nothing of the request is lost:
    /// the run fails before its checkpoint and the next run sends it again.
    #[error(
        "gave up on a request to the Events API of feed `{feed}` after {attempts} attempts in {elapsed_secs:.1} s: {last_cause}"
    )]
    RetriesExhausted {
        /// Feed name.
        feed: String,
        /// Requests sent for this body.
        attempts: u32,
        /// Time since the first attempt.
        elapsed_secs: f64,
        /// The last failure.
        last_cause: String,
    },
}

/// One answer of the Events API, before any policy looked at it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawResponse {
    /// HTTP status code.
    pub status: u16,
    /// The `Retry-After` header, as sent (seconds or an HTTP-date).
    pub retry_after: Option<String>,
    /// `X-mp-rate-limit-percentage-used`, when present and numeric.
    pub rate_limit_percentage_used: Option<f64>,
    /// `X-mp-rate-limit-exceeded` on a 429: which limit was hit.
    pub rate_limit_exceeded: Option<String>,
    /// What the server said: mParticle's error messages, else the body
    /// (truncated, credentials scrubbed); empty for a 2xx.
    pub message: String,
}

/// A client for one feed.
#[derive(Debug, Clone)]
pub struct EventsApiClient {
    http: reqwest::Client,
    feed: String,
    url: String,
    historical_url: String,
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
            // A half-open connection is noticed by the OS, not only by the timeout.
            .tcp_keepalive(crate::source::TCP_KEEPALIVE)
            .timeout(feed.request_timeout)
            .connect_timeout(feed.request_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            // A redirect is a wrong `base_url`, never an acknowledgement: following
            // one to a page that answers 200 would count the batches as sent.
            .redirect(reqwest::redirect::Policy::none())
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
            historical_url: format!("{url}/historical"),
            url,
            api_key: feed.api_key.clone(),
            api_secret: feed.api_secret.clone(),
        })
    }

    /// The endpoint URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The feed's name (for errors and logs).
    pub fn feed(&self) -> &str {
        &self.feed
    }

    /// One attempt: POST `body` (already gzip-compressed when `gzip`) and return
    /// whatever the server answered. `Err` is always [`DeliveryError::Transport`]:
    /// no answer at all (refused, reset, closed before the response, timeout).
    pub async fn post(&self, body: Vec<u8>, gzip: bool) -> Result<RawResponse, DeliveryError> {
        self.post_to(false, body, gzip).await
    }

    /// [`Self::post`] to `/v2/bulkevents/historical` when `historical`
    /// (events older than 30 days), else to `/v2/bulkevents`.
    pub async fn post_to(
        &self,
        historical: bool,
        body: Vec<u8>,
        gzip: bool,
    ) -> Result<RawResponse, DeliveryError> {
        let url = if historical {
            &self.historical_url
        } else {
            &self.url
        };
        let mut builder = self
            .http
            .post(url)
            .basic_auth(self.api_key.expose(), Some(self.api_secret.expose()))
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, WSYNC_USER_AGENT);
        if gzip {
            builder = builder.header(CONTENT_ENCODING, "gzip");
        }
        let response = builder
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        // Reading the body to its end also returns the connection to the pool;
        // a body beyond the cap is cut (that connection is then closed).
        let text = match read_body_capped(response, MAX_RESPONSE_BODY_BYTES).await {
            Ok(text) => text,
            // A 2xx whose body broke off was still accepted: the status is what counts.
            Err(_) if status.is_success() => String::new(),
            Err(e) => return Err(self.transport(&e)),
        };
        Ok(RawResponse {
            status: status.as_u16(),
            retry_after: header_text(&headers, RETRY_AFTER.as_str()),
            rate_limit_percentage_used: header_text(&headers, RATE_LIMIT_PERCENTAGE_USED)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite()),
            rate_limit_exceeded: header_text(&headers, RATE_LIMIT_EXCEEDED),
            message: if status.is_success() {
                String::new()
            } else if status.is_redirection() {
                format!(
                    "redirected to `{}`; redirects are not followed: set base_url to the Events \
                     API host itself",
                    self.scrub(&header_text(&headers, LOCATION.as_str()).unwrap_or_default())
                )
            } else {
                self.server_message(&text)
            },
        })
    }

    /// Send one packed request, once, uncompressed: any non-2xx answer is an error.
    /// The [`crate::sink::delivery::Deliverer`] is the resilient path.
    pub async fn send(&self, request: &PackedRequest) -> Result<Accepted, DeliveryError> {
        let response = self.post(request.body.clone(), false).await?;
        let status = response.status;
        if (200..300).contains(&status) {
            return Ok(Accepted { status });
        }
        if status == StatusCode::UNAUTHORIZED.as_u16() || status == StatusCode::FORBIDDEN.as_u16() {
            return Err(self.unauthorized(status));
        }
        Err(self.rejected(status, response.message))
    }

    /// The error for a 401 or 403.
    pub(crate) fn unauthorized(&self, status: u16) -> DeliveryError {
        DeliveryError::Unauthorized {
            feed: self.feed.clone(),
            status,
        }
    }

    /// The error for any other refusal that stops the run.
    pub(crate) fn rejected(&self, status: u16, message: String) -> DeliveryError {
        DeliveryError::Rejected {
            feed: self.feed.clone(),
            status,
            message,
        }
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

    /// Scrubs the feed's credentials from any text bound for a log or error.
    pub(crate) fn scrub(&self, text: &str) -> String {
        scrub(text, &[&self.api_key, &self.api_secret])
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

/// The most of a response body wsync reads (error messages, IDSync answers):
/// a misbehaving server or proxy cannot make a run hold a large body in memory.
pub(crate) const MAX_RESPONSE_BODY_BYTES: usize = 64 * 1024;

/// At most `cap` bytes of `response`'s body, as (lossy) UTF-8 text.
pub(crate) async fn read_body_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<String, reqwest::Error> {
    let mut body: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap.saturating_sub(body.len());
        if chunk.len() >= room {
            body.extend_from_slice(&chunk[..room]);
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A header's value as text, if present and visible ASCII.
fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{DeliverySettings, Environment};
    use crate::sink::retry::{classify, Action, Outcome};
    use axum::http::{HeaderValue, StatusCode as AxumStatus};
    use axum::response::IntoResponse;

    /// A loopback server with `/ok` (200), `/redirect` (307 to `/ok`) and
    /// `/huge` (500 with a 4 MiB body).
    async fn server() -> String {
        let app = axum::Router::new()
            .route("/ok/v2/bulkevents", axum::routing::post(|| async { "{}" }))
            .route(
                "/redirect/v2/bulkevents",
                axum::routing::post(|| async {
                    let mut r = AxumStatus::TEMPORARY_REDIRECT.into_response();
                    r.headers_mut()
                        .insert("location", HeaderValue::from_static("/ok/v2/bulkevents"));
                    r
                }),
            )
            .route(
                "/huge/v2/bulkevents",
                axum::routing::post(|| async {
                    (AxumStatus::INTERNAL_SERVER_ERROR, "x".repeat(4 << 20))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn client(base_url: String) -> EventsApiClient {
        EventsApiClient::new(&Feed {
            name: "unit".to_owned(),
            base_url,
            api_key: Secret::new("k"),
            api_secret: Secret::new("s"),
            environment: Environment::Development,
            request_timeout: Duration::from_secs(5),
            delivery: DeliverySettings::default(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn events_api_does_not_follow_redirects() {
        let base = server().await;
        let ok = client(format!("{base}/ok"))
            .post(b"{}".to_vec(), false)
            .await;
        assert_eq!(ok.unwrap().status, 200);
        let answer = client(format!("{base}/redirect"))
            .post(b"{}".to_vec(), false)
            .await
            .unwrap();
        assert_eq!(
            answer.status, 307,
            "the redirect itself, not the 200 behind it"
        );
        assert!(
            answer.message.contains("/ok/v2/bulkevents") && answer.message.contains("base_url"),
            "{}",
            answer.message
        );
        let action = classify(Outcome::Response {
            status: answer.status,
            retry_after: None,
        });
        assert_eq!(action, Action::Fatal, "a redirect is never acknowledged");
    }

    #[tokio::test]
    async fn error_bodies_are_read_up_to_a_cap() {
        let base = server().await;
        let response = reqwest::Client::new()
            .post(format!("{base}/huge/v2/bulkevents"))
            .send()
            .await
            .unwrap();
        let body = read_body_capped(response, MAX_RESPONSE_BODY_BYTES)
            .await
            .unwrap();
        assert_eq!(body.len(), MAX_RESPONSE_BODY_BYTES);
        let answer = client(format!("{base}/huge"))
            .post(b"{}".to_vec(), false)
            .await
            .unwrap();
        assert_eq!(answer.status, 500);
        assert!(
            answer.message.len() <= MAX_SERVER_MESSAGE * 4,
            "{}",
            answer.message.len()
        );
    }
}
