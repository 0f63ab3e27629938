//! The IDSync search client: `POST <identity host>/v1/search` with a platform
//! key and secret (HTTP Basic).
//!
//! Search, unlike `identify`, never creates a profile: it answers 200 with the
//! profile's `mpid`, or a not-found error (404 with mParticle's error body)
//! when no profile has these identities (`shared/spec/mparticle.md` §2).
//! Every other answer goes through the one retry policy
//! ([`crate::sink::retry::classify`]) exactly like a delivery: 429 waits (and
//! closes the shared gate), 5xx/408/timeouts/dropped connections back off with
//! full jitter within the attempts and the deadline, 401/403 stop the run. A
//! 404 *without* that error body means the host is wrong, which also stops the
//! run. Pacing reuses the Events API's [`RateLimiter`], counted in searches.
//! Nothing here logs or returns the key or secret.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use tokio::time::Instant;

use crate::config::model::Environment;
use crate::config::resolver::IdSyncSettings;
use crate::redact::{scrub, Secret};
use crate::sink::events_api::{read_body_capped, MAX_RESPONSE_BODY_BYTES, WSYNC_USER_AGENT};
use crate::sink::rate_limit::RateLimiter;
use crate::sink::retry::{classify, Action, Outcome, RetryPolicy};

use super::ResolveError;

/// Longest server message kept in an error or a skipped row's detail.
const MAX_MESSAGE: usize = 300;

/// What one search found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A profile with this MPID has the identities.
    Found(i64),
    /// No profile has them.
    NotFound,
    /// IDSync refused to search these identities (a 4xx such as 400 for a
    /// malformed value); the row cannot be checked, so it is treated as unmatched.
    Refused(String),
}

/// Counters over a run's searches.
#[derive(Debug, Default)]
pub struct SearchFigures {
    /// HTTP requests sent (every attempt).
    pub requests: AtomicU64,
    /// Re-sends after a 5xx, 408, timeout or dropped connection.
    pub retries: AtomicU64,
    /// 429 answers.
    pub responses_429: AtomicU64,
}

/// A client for one pipeline's IDSync resolver. Cheap to clone.
#[derive(Clone)]
pub struct IdSyncClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    url: String,
    api_key: Secret,
    api_secret: Secret,
    environment: Environment,
    policy: RetryPolicy,
    limiter: RateLimiter,
    pipeline: String,
    file: std::path::PathBuf,
    figures: SearchFigures,
}

impl std::fmt::Debug for IdSyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdSyncClient")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

impl IdSyncClient {
    /// A client for `settings`, searching in `environment`, for errors naming
    /// `pipeline` and its `file`.
    pub fn new(
        settings: &IdSyncSettings,
        environment: Environment,
        pipeline: &str,
        file: &std::path::Path,
    ) -> Result<Self, ResolveError> {
        let url = format!("{}/v1/search", settings.base_url);
        let http = reqwest::Client::builder()
            // A half-open connection is noticed by the OS, not only by the timeout.
            .tcp_keepalive(crate::source::TCP_KEEPALIVE)
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            // A redirect is a wrong `base_url`: never follow it with the secret.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ResolveError::IdSyncTransport {
                pipeline: pipeline.to_owned(),
                url: url.clone(),
                message: e.to_string(),
            })?;
        let d = &settings.delivery;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                url,
                api_key: settings.api_key.clone(),
                api_secret: settings.api_secret.clone(),
                environment,
                policy: RetryPolicy {
                    max_attempts: d.retry_max_attempts,
                    initial_backoff: d.retry_initial_backoff,
                    max_backoff: d.retry_max_backoff,
                    deadline: d.retry_deadline,
                },
                limiter: RateLimiter::new(
                    (d.rate_limit_per_sec > 0).then(|| f64::from(d.rate_limit_per_sec)),
                ),
                pipeline: pipeline.to_owned(),
                file: file.to_owned(),
                figures: SearchFigures::default(),
            }),
        })
    }

    /// The counters so far.
    pub fn figures(&self) -> &SearchFigures {
        &self.inner.figures
    }

    /// Search for the profile holding `known_identities` (IDSync names → values),
    /// retrying as the retry policy says.
    pub async fn search(
        &self,
        known_identities: &[(&str, String)],
    ) -> Result<Lookup, ResolveError> {
        let inner = &*self.inner;
        let body = serde_json::json!({
            "environment": inner.environment.as_str(),
            "known_identities": known_identities
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
                .collect::<serde_json::Map<_, _>>(),
        })
        .to_string();
        let mut failures = 0u32;
        let mut rate_limited = 0u32;
        let mut attempts = 0u32;
        let mut started: Option<Instant> = None;
        loop {
            inner.limiter.acquire(1).await;
            let first = *started.get_or_insert_with(Instant::now);
            attempts += 1;
            inner.figures.requests.fetch_add(1, Ordering::Relaxed);
            let answer = inner
                .http
                .post(&inner.url)
                .basic_auth(inner.api_key.expose(), Some(inner.api_secret.expose()))
                .header(CONTENT_TYPE, "application/json")
                .header(USER_AGENT, WSYNC_USER_AGENT)
                .body(body.clone())
                .send()
                .await;
            let (outcome, status, retry_after, text) = match answer {
                Err(e) => {
                    let outcome = if e.is_timeout() {
                        Outcome::TimedOut
                    } else {
                        Outcome::ConnectionFailed
                    };
                    (outcome, 0, None, self.scrubbed(&e.to_string()))
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    match read_body_capped(response, MAX_RESPONSE_BODY_BYTES).await {
                        Ok(text) => {
                            if let Some(lookup) = interpret(status, &text) {
                                inner.limiter.on_accepted(1, None);
                                return Ok(lookup);
                            }
                            let outcome = Outcome::Response {
                                status,
                                retry_after: None,
                            };
                            (outcome, status, retry_after, self.scrubbed(&text))
                        }
                        // The body broke off: as good as a dropped connection.
                        Err(e) => (
                            Outcome::ConnectionFailed,
                            0,
                            None,
                            self.scrubbed(&e.to_string()),
                        ),
                    }
                }
            };
            // `Outcome` borrows the header; rebuild it here where it lives.
            let outcome = match outcome {
                Outcome::Response { status, .. } => Outcome::Response {
                    status,
                    retry_after: retry_after.as_deref(),
                },
                other => other,
            };
            let cause = if status == 0 {
                text.clone()
            } else {
                format!("HTTP {status}: {}", short(&text))
            };
            match classify(outcome) {
                // A 2xx `interpret` did not understand: no usable MPID, so the
                // row is not proven to have a profile.
                Action::Success => {
                    return Ok(Lookup::Refused(format!(
                        "IDSync answered HTTP {status} without an mpid"
                    )))
                }
                Action::RateLimited(wait) => {
                    inner.limiter.on_rate_limited(wait, false);
                    inner.figures.responses_429.fetch_add(1, Ordering::Relaxed);
                    rate_limited += 1;
                    let pause = wait.unwrap_or_else(|| inner.policy.backoff(rate_limited));
                    self.check_deadline(first, pause, attempts, &cause)?;
                    tracing::info!(
                        wait_ms = pause.as_millis() as u64,
                        "Rate limited by IDSync; waiting."
                    );
                    // With Retry-After the shared gate holds every search.
                    if wait.is_none() {
                        tokio::time::sleep(pause).await;
                    }
                }
                Action::Retry(_) => {
                    failures += 1;
                    if failures >= inner.policy.max_attempts {
                        return Err(self.exhausted(first, attempts, cause));
                    }
                    let pause = inner.policy.backoff(failures);
                    self.check_deadline(first, pause, attempts, &cause)?;
                    tracing::warn!(
                        cause = %cause,
                        attempt = failures,
                        backoff_ms = pause.as_millis() as u64,
                        "IDSync search failed; retrying."
                    );
                    inner.figures.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pause).await;
                }
                Action::Fatal if status == 401 || status == 403 => {
                    return Err(ResolveError::IdSyncUnauthorized {
                        pipeline: inner.pipeline.clone(),
                        file: inner.file.clone(),
                        status,
                    })
                }
                Action::Fatal => {
                    return Err(ResolveError::IdSyncEndpoint {
                        pipeline: inner.pipeline.clone(),
                        file: inner.file.clone(),
                        url: inner.url.clone(),
                        status,
                        message: short(&text),
                    })
                }
                Action::Split | Action::Bisect | Action::Reject => {
                    return Ok(Lookup::Refused(format!(
                        "IDSync refused the search: {cause}"
                    )))
                }
            }
        }
    }

    fn scrubbed(&self, text: &str) -> String {
        scrub(text, &[&self.inner.api_key, &self.inner.api_secret])
    }

    fn check_deadline(
        &self,
        started: Instant,
        pause: Duration,
        attempts: u32,
        cause: &str,
    ) -> Result<(), ResolveError> {
        if started.elapsed() + pause > self.inner.policy.deadline {
            return Err(self.exhausted(started, attempts, cause.to_owned()));
        }
        Ok(())
    }

    fn exhausted(&self, started: Instant, attempts: u32, last_cause: String) -> ResolveError {
        ResolveError::IdSyncRetriesExhausted {
            pipeline: self.inner.pipeline.clone(),
            attempts,
            elapsed_secs: started.elapsed().as_secs_f64(),
            last_cause,
        }
    }
}

/// A search's answer when it is one: 200 with an `mpid` (a string or a number),
/// or IDSync's not-found error (404 with an `errors` body). `None` for anything
/// the retry policy must decide.
fn interpret(status: u16, text: &str) -> Option<Lookup> {
    let json: Option<serde_json::Value> = serde_json::from_str(text).ok();
    match status {
        200 => {
            let mpid = json.as_ref()?.get("mpid")?;
            let mpid = match mpid {
                serde_json::Value::String(s) => s.trim().parse::<i64>().ok(),
                serde_json::Value::Number(n) => n.as_i64(),
                _ => None,
            }?;
            Some(Lookup::Found(mpid))
        }
        404 if json.as_ref()?.get("errors").is_some() => Some(Lookup::NotFound),
        _ => None,
    }
}

/// A server message cut to [`MAX_MESSAGE`] characters, on one line.
fn short(text: &str) -> String {
    let line = text.replace(['\n', '\r'], " ");
    match line.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::DeliverySettings;
    use axum::http::{HeaderValue, StatusCode};
    use axum::response::IntoResponse;

    #[tokio::test]
    async fn idsync_does_not_follow_redirects() {
        // `/redirect` sends the search (and its secret) on to `/ok`, which would
        // answer with an MPID: never followed, a redirect stops the run.
        let app = axum::Router::new()
            .route(
                "/ok/v1/search",
                axum::routing::post(|| async { r#"{"mpid":"42"}"# }),
            )
            .route(
                "/redirect/v1/search",
                axum::routing::post(|| async {
                    let mut r = StatusCode::FOUND.into_response();
                    r.headers_mut()
                        .insert("location", HeaderValue::from_static("/ok/v1/search"));
                    r
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = |path: &str| {
            let settings = IdSyncSettings {
                base_url: format!("http://{addr}{path}"),
                api_key: Secret::new("k"),
                api_secret: Secret::new("s"),
                request_timeout: Duration::from_secs(5),
                delivery: DeliverySettings::default(),
                cache_entries: 0,
            };
            IdSyncClient::new(
                &settings,
                Environment::Development,
                "p",
                std::path::Path::new("schedules/p.toml"),
            )
            .unwrap()
        };
        let ids = [("email", "a@example.com".to_owned())];
        assert_eq!(client("/ok").search(&ids).await.unwrap(), Lookup::Found(42));
        let err = client("/redirect").search(&ids).await.unwrap_err();
        assert!(
            matches!(err, ResolveError::IdSyncEndpoint { status: 302, .. }),
            "{err}"
        );
    }

    #[test]
    fn answers_that_settle_a_search() {
        assert_eq!(
            interpret(
                200,
                r#"{"mpid":"-4264323795620010000","matched_identities":{}}"#
            ),
            Some(Lookup::Found(-4_264_323_795_620_010_000))
        );
        assert_eq!(interpret(200, r#"{"mpid":42}"#), Some(Lookup::Found(42)));
        assert_eq!(
            interpret(
                404,
                r#"{"errors":[{"code":"NOT_FOUND","message":"no user"}]}"#
            ),
            Some(Lookup::NotFound)
        );
        // A bare 404 is a wrong host or path, for the retry policy (fatal).
        assert_eq!(interpret(404, "<html>Not Found</html>"), None);
        assert_eq!(interpret(200, r#"{"context":null}"#), None);
        assert_eq!(interpret(503, r#"{"errors":[]}"#), None);
    }

    #[test]
    fn messages_are_cut_to_one_short_line() {
        assert_eq!(short("a\nb"), "a b");
        assert_eq!(short(&"x".repeat(400)).chars().count(), MAX_MESSAGE + 1);
    }
}
