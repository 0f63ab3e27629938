//! Resilient delivery of packed requests: pacing, bounded concurrency, retries,
//! splitting and bisecting, dead letters, and the run's delivery figures.
//!
//! Layers, outermost first (code-models convention 10):
//!
//! 1. **concurrency**: a semaphore of `max_in_flight` permits, taken by
//!    [`Deliverer::deliver`] / [`Deliverer::submit`] for the whole life of one
//!    packed request, retries and halves included. Callers that submit faster
//!    than the server accepts wait here: that is the backpressure that keeps
//!    memory flat. [`Deliverer::drain`] takes every permit: the barrier before a
//!    checkpoint is committed.
//! 2. **rate limit**: before *every* attempt (retries too, so a 429 storm cannot
//!    be answered with a retry storm) the sender waits for the shared gate and
//!    for tokens in the bucket ([`crate::sink::rate_limit`]).
//! 3. **retry**: one loop applying [`crate::sink::retry::classify`].
//! 4. **timeout**: the HTTP client's per-request timeout.
//!
//! A retried body is byte-for-byte the one sent before, so its batches keep their
//! `source_request_id`s and mParticle applies a batch the server already took
//! (the connection dropped after it applied) only once.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn, Instrument};

use crate::sink::events_api::{DeliveryError, EventsApiClient, RawResponse};
use crate::sink::rate_limit::{LearnedLimit, RateLimiter, DEFAULT_RATE_PER_SEC};
use crate::sink::retry::{classify, Action, Outcome, RetryPolicy, RetryReason};
use crate::sink::PackedRequest;

/// Default bound on requests in flight: at 270 batches/s and ~100 batches per
/// request a few concurrent requests already cover the round trip.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;

/// How delivery behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeliveryConfig {
    /// Batches per second allowed to the target: the ceiling of the rate the
    /// limiter learns; `None` disables pacing (the 429 gate still applies).
    /// Default 270, mParticle's default (§3.3).
    pub rate_per_sec: Option<f64>,
    /// Packed requests being delivered at once (at least 1). Default 4.
    pub max_in_flight: usize,
    /// Send bodies with `Content-Encoding: gzip`. Default off.
    pub gzip: bool,
    /// Attempts, backoff and deadline.
    pub retry: RetryPolicy,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            rate_per_sec: Some(DEFAULT_RATE_PER_SEC),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            gzip: false,
            retry: RetryPolicy::default(),
        }
    }
}

/// A batch the server refused, isolated on its own: not retried, kept for the
/// operator (the dead-letter store is the caller's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The batch's `source_request_id`.
    pub source_request_id: String,
    /// Run row number of the batch.
    pub row: u64,
    /// The batch JSON, exactly as sent.
    pub batch: Vec<u8>,
    /// The HTTP status that refused it.
    pub status: u16,
    /// What the server said (truncated, credentials scrubbed).
    pub message: String,
}

/// What became of one packed request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestOutcome {
    /// `source_request_id`s of the batches the server accepted.
    pub acknowledged: Vec<String>,
    /// Batches the server refused (400 after bisecting, 413 on a single batch,
    /// other 4xx).
    pub dead_letters: Vec<DeadLetter>,
    /// Batches in the request.
    pub batch_count: usize,
    /// Highest run row number in the request (for checkpoints).
    pub last_row: u64,
}

/// Delivery counters, shared by every sender; read them with [`DeliveryFigures::snapshot`].
#[derive(Debug, Default)]
pub struct DeliveryFigures {
    requests: AtomicU64,
    retries: AtomicU64,
    responses_429: AtomicU64,
    responses_5xx: AtomicU64,
    timeouts: AtomicU64,
    connection_failures: AtomicU64,
    bytes_sent: AtomicU64,
    batches_acknowledged: AtomicU64,
    dead_letters: AtomicU64,
    rate_limit_wait_micros: AtomicU64,
}

/// The delivery figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FiguresSnapshot {
    /// HTTP requests sent (every attempt, halves included).
    pub requests: u64,
    /// Re-sends after a 5xx, 408, timeout or connection failure (429s not included).
    pub retries: u64,
    /// 429 answers.
    pub responses_429: u64,
    /// 5xx answers.
    pub responses_5xx: u64,
    /// Attempts that hit the request timeout.
    pub timeouts: u64,
    /// Attempts with no answer: refused, reset or closed connections.
    pub connection_failures: u64,
    /// Body bytes sent, every attempt counted (compressed size with gzip).
    pub bytes_sent: u64,
    /// Batches the server accepted (a batch re-sent after a dropped
    /// connection counts once).
    pub batches_acknowledged: u64,
    /// Batches refused and kept as dead letters.
    pub dead_letters: u64,
    /// Time senders spent waiting on the rate limit (gate, bucket and 429
    /// backoffs), summed over concurrent senders.
    pub rate_limit_wait: Duration,
}

impl DeliveryFigures {
    /// The current values.
    pub fn snapshot(&self) -> FiguresSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FiguresSnapshot {
            requests: get(&self.requests),
            retries: get(&self.retries),
            responses_429: get(&self.responses_429),
            responses_5xx: get(&self.responses_5xx),
            timeouts: get(&self.timeouts),
            connection_failures: get(&self.connection_failures),
            bytes_sent: get(&self.bytes_sent),
            batches_acknowledged: get(&self.batches_acknowledged),
            dead_letters: get(&self.dead_letters),
            rate_limit_wait: Duration::from_micros(get(&self.rate_limit_wait_micros)),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn add_wait(&self, wait: Duration) {
        let micros = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        Self::add(&self.rate_limit_wait_micros, micros);
    }
}

/// How one body's attempts ended, short of an error.
enum Sent {
    /// 2xx.
    Accepted,
    /// Refused as it is: split it, bisect it, or dead-letter it.
    Refused {
        action: Action,
        status: u16,
        message: String,
    },
}

/// Sees every HTTP attempt (metrics): the feed, the status (`None` when no
/// answer came: timeout, reset) and how long it took.
pub trait RequestObserver: Send + Sync {
    /// One attempt ended.
    fn observe(&self, feed: &str, status: Option<u16>, elapsed: Duration);
}

struct Inner {
    client: EventsApiClient,
    observer: Option<Arc<dyn RequestObserver>>,
    config: DeliveryConfig,
    limiter: RateLimiter,
    permits: Arc<Semaphore>,
    permit_count: u32,
    figures: DeliveryFigures,
    /// The first fatal error (401/403/404/…): once set, nothing more is sent.
    fatal: Mutex<Option<DeliveryError>>,
}

/// Delivers packed requests to one feed. Cheap to clone; clones share pacing,
/// the in-flight bound and the figures.
#[derive(Clone)]
pub struct Deliverer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("feed", &self.inner.client.feed())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Deliverer {
    /// A deliverer sending through `client` (which holds the connection pool
    /// and the request timeout).
    pub fn new(client: EventsApiClient, config: DeliveryConfig) -> Self {
        let permit_count = u32::try_from(config.max_in_flight.max(1)).unwrap_or(u32::MAX);
        Self {
            inner: Arc::new(Inner {
                limiter: RateLimiter::new(config.rate_per_sec),
                permits: Arc::new(Semaphore::new(permit_count as usize)),
                permit_count,
                client,
                observer: None,
                config,
                figures: DeliveryFigures::default(),
                fatal: Mutex::new(None),
            }),
        }
    }

    /// The same deliverer reporting every attempt to `observer`. Call before
    /// cloning or submitting.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn RequestObserver>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.observer = Some(observer);
        }
        self
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &DeliveryConfig {
        &self.inner.config
    }

    /// The figures so far.
    pub fn figures(&self) -> FiguresSnapshot {
        self.inner.figures.snapshot()
    }

    /// The rate paced at now, batches per second (`None` without pacing): what
    /// the limiter learned of the account's limit, within the configured rate
    /// and the budget share.
    pub fn current_rate(&self) -> Option<f64> {
        self.inner.limiter.current_rate()
    }

    /// Starts pacing from what an earlier run learned of the feed's limit (the
    /// state store keeps it per feed). Call before submitting.
    pub fn seed_learned_limit(&self, learned: LearnedLimit) {
        self.inner.limiter.seed(learned);
    }

    /// What this run learned of the feed's limit, to persist for the next run.
    pub fn learned_limit(&self) -> Option<LearnedLimit> {
        self.inner.limiter.learned()
    }

    /// Caps the rate at this deliverer's share of the account's budget (`None`:
    /// the configured rate only); the rate paced at is the lower of the learned
    /// rate and the share. Senders already waiting are re-timed.
    pub fn set_ceiling(&self, share: Option<f64>) {
        self.inner.limiter.set_ceiling(share);
    }

    /// The fatal error that stopped delivery, if any.
    pub fn fatal_error(&self) -> Option<DeliveryError> {
        self.inner
            .fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Delivers one packed request on the calling task, waiting first for an
    /// in-flight slot. `Err` means the run must stop: a fatal answer (401/403:
    /// wrong key or secret; 404/405/501: wrong endpoint) or retries exhausted;
    /// the request's batches are then neither acknowledged nor dead letters.
    pub async fn deliver(&self, request: PackedRequest) -> Result<RequestOutcome, DeliveryError> {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| self.closed())?;
        self.run(request).await
    }

    /// Waits for an in-flight slot, then delivers the request on a new task and
    /// returns its handle. Awaiting `submit` is the backpressure: it returns only
    /// when fewer than `max_in_flight` requests are being delivered.
    pub async fn submit(
        &self,
        request: PackedRequest,
    ) -> Result<JoinHandle<Result<RequestOutcome, DeliveryError>>, DeliveryError> {
        self.check_fatal()?;
        let permit = Arc::clone(&self.inner.permits)
            .acquire_owned()
            .await
            .map_err(|_| self.closed())?;
        let this = self.clone();
        // The task keeps the caller's span, so its log lines carry the
        // pipeline and run ids too.
        Ok(tokio::spawn(
            async move {
                let _permit = permit;
                this.run(request).await
            }
            .in_current_span(),
        ))
    }

    /// Waits until no request is in flight (takes every permit, then gives them
    /// back): call it before committing a checkpoint. Requests submitted while
    /// it waits queue behind it.
    pub async fn drain(&self) {
        // The semaphore is never closed, so this only waits.
        let _all = self
            .inner
            .permits
            .acquire_many(self.inner.permit_count)
            .await;
    }

    fn closed(&self) -> DeliveryError {
        self.fatal_error()
            .unwrap_or_else(|| DeliveryError::Transport {
                feed: self.inner.client.feed().to_owned(),
                url: self.inner.client.url().to_owned(),
                message: "delivery was shut down".to_owned(),
                timed_out: false,
            })
    }

    fn check_fatal(&self) -> Result<(), DeliveryError> {
        match self.fatal_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The request, then its halves as the server demands, depth first so the
    /// acknowledged ids stay in request order.
    async fn run(&self, request: PackedRequest) -> Result<RequestOutcome, DeliveryError> {
        let feed = self.inner.client.feed();
        let mut outcome = RequestOutcome {
            batch_count: request.batch_count,
            last_row: request.last_row,
            ..RequestOutcome::default()
        };
        let mut pending = vec![request];
        while let Some(part) = pending.pop() {
            match self.send_with_retries(&part).await? {
                Sent::Accepted => outcome.acknowledged.extend(part.source_request_ids),
                Sent::Refused {
                    action,
                    status,
                    message,
                } => {
                    if matches!(action, Action::Split | Action::Bisect) {
                        if let Some((first, second)) = part.halves() {
                            debug!(
                                feed,
                                status,
                                batches = part.batch_count,
                                "Request refused; resending it in halves."
                            );
                            pending.push(second);
                            pending.push(first);
                            continue;
                        }
                    }
                    warn!(
                        feed,
                        status,
                        batches = part.batch_count,
                        message = %message,
                        "Events API refused batches; keeping them as dead letters."
                    );
                    DeliveryFigures::add(&self.inner.figures.dead_letters, part.batch_count as u64);
                    for i in 0..part.batch_count {
                        outcome.dead_letters.push(DeadLetter {
                            source_request_id: part.source_request_ids[i].clone(),
                            row: part.rows[i],
                            batch: part.batch_json(i).to_vec(),
                            status,
                            message: message.clone(),
                        });
                    }
                }
            }
        }
        Ok(outcome)
    }

    /// The body to send: gzip-compressed when configured.
    fn encode(&self, part: &PackedRequest) -> (Vec<u8>, bool) {
        if !self.inner.config.gzip {
            return (part.body.clone(), false);
        }
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        match encoder
            .write_all(&part.body)
            .and_then(|()| encoder.finish())
        {
            Ok(compressed) => (compressed, true),
            // Writing to memory does not fail; if it ever did, plain JSON still works.
            Err(_) => (part.body.clone(), false),
        }
    }

    /// One body through the retry loop.
    async fn send_with_retries(&self, part: &PackedRequest) -> Result<Sent, DeliveryError> {
        let inner = &*self.inner;
        let figures = &inner.figures;
        let policy = inner.config.retry;
        let feed = inner.client.feed();
        let (body, gzip) = self.encode(part);
        let mut sent = 0u32;
        let mut failures = 0u32;
        let mut rate_limited = 0u32;
        let mut first_sent: Option<Instant> = None;
        loop {
            self.check_fatal()?;
            figures.add_wait(inner.limiter.acquire(part.batch_count).await);
            let started = *first_sent.get_or_insert_with(Instant::now);
            sent += 1;
            DeliveryFigures::add(&figures.requests, 1);
            DeliveryFigures::add(&figures.bytes_sent, body.len() as u64);

            let attempt_started = Instant::now();
            let answer = inner
                .client
                .post_to(part.historical, body.clone(), gzip)
                .await;
            if let Some(observer) = &inner.observer {
                observer.observe(
                    inner.client.feed(),
                    answer.as_ref().ok().map(|r| r.status),
                    attempt_started.elapsed(),
                );
            }
            let (action, response) = match answer {
                Ok(response) => {
                    if (500..600).contains(&response.status) {
                        DeliveryFigures::add(&figures.responses_5xx, 1);
                    }
                    let action = classify(Outcome::Response {
                        status: response.status,
                        retry_after: response.retry_after.as_deref(),
                    });
                    (action, Some(response))
                }
                Err(DeliveryError::Transport { timed_out, .. }) => {
                    let outcome = if timed_out {
                        DeliveryFigures::add(&figures.timeouts, 1);
                        Outcome::TimedOut
                    } else {
                        DeliveryFigures::add(&figures.connection_failures, 1);
                        Outcome::ConnectionFailed
                    };
                    (classify(outcome), None)
                }
                Err(other) => return Err(other),
            };
            let status = response.as_ref().map_or(0, |r| r.status);
            let message = response.as_ref().map(|r| r.message.clone());

            match action {
                Action::Success => {
                    inner.limiter.on_accepted(
                        part.batch_count,
                        response.as_ref().and_then(|r| r.rate_limit_percentage_used),
                    );
                    DeliveryFigures::add(&figures.batches_acknowledged, part.batch_count as u64);
                    return Ok(Sent::Accepted);
                }
                Action::RateLimited(retry_after) => {
                    let limit = response
                        .as_ref()
                        .and_then(|r: &RawResponse| r.rate_limit_exceeded.clone())
                        .unwrap_or_default();
                    // Close the gate before the counter shows the 429.
                    inner
                        .limiter
                        .on_rate_limited(retry_after, limit.eq_ignore_ascii_case("acceleration"));
                    DeliveryFigures::add(&figures.responses_429, 1);
                    rate_limited += 1;
                    let wait = retry_after.unwrap_or_else(|| policy.backoff(rate_limited));
                    self.check_deadline(started, wait, sent, "HTTP 429 (rate limited)")?;
                    info!(
                        feed,
                        wait_ms = wait.as_millis() as u64,
                        retry_after = retry_after.is_some(),
                        limit = %limit,
                        batches = part.batch_count,
                        "Rate limited by the Events API; waiting."
                    );
                    // With Retry-After the shared gate holds this sender (and
                    // every other) in `acquire`; without, only this one backs off.
                    if retry_after.is_none() {
                        tokio::time::sleep(wait).await;
                        figures.add_wait(wait);
                    }
                }
                Action::Retry(reason) => {
                    failures += 1;
                    let cause = describe(reason, message.as_deref());
                    if failures >= policy.max_attempts {
                        return Err(self.exhausted(started, sent, cause));
                    }
                    let wait = policy.backoff(failures);
                    self.check_deadline(started, wait, sent, &cause)?;
                    warn!(
                        feed,
                        cause = %cause,
                        attempt = failures,
                        backoff_ms = wait.as_millis() as u64,
                        batches = part.batch_count,
                        "Events API request failed; retrying."
                    );
                    DeliveryFigures::add(&figures.retries, 1);
                    tokio::time::sleep(wait).await;
                }
                Action::Fatal => {
                    let error = if status == 401 || status == 403 {
                        inner.client.unauthorized(status)
                    } else {
                        inner.client.rejected(status, message.unwrap_or_default())
                    };
                    error!(
                        feed,
                        status, "Events API refused the feed; stopping delivery."
                    );
                    let mut fatal = inner.fatal.lock().unwrap_or_else(PoisonError::into_inner);
                    return Err(fatal.get_or_insert(error).clone());
                }
                Action::Split | Action::Bisect | Action::Reject => {
                    return Ok(Sent::Refused {
                        action,
                        status,
                        message: message.unwrap_or_default(),
                    });
                }
            }
        }
    }

    fn check_deadline(
        &self,
        started: Instant,
        wait: Duration,
        sent: u32,
        cause: &str,
    ) -> Result<(), DeliveryError> {
        if started.elapsed() + wait > self.inner.config.retry.deadline {
            return Err(self.exhausted(started, sent, cause.to_owned()));
        }
        Ok(())
    }

    fn exhausted(&self, started: Instant, sent: u32, cause: String) -> DeliveryError {
        let error = DeliveryError::RetriesExhausted {
            feed: self.inner.client.feed().to_owned(),
            attempts: sent,
            elapsed_secs: started.elapsed().as_secs_f64(),
            last_cause: self.inner.client.scrub(&cause),
        };
        error!(error = %error, "Giving up on a request.");
        error
    }
}

/// A retry cause for logs and errors: the reason, and the server's words if any.
fn describe(reason: RetryReason, message: Option<&str>) -> String {
    match message {
        Some(m) if !m.is_empty() => format!("{reason}: {m}"),
        _ => reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{Environment, Feed};
    use crate::mapping::EncodedBatch;
    use crate::redact::Secret;

    /// A server answering 400 to any request holding a batch with `"bad":true`,
    /// 202 otherwise; returns its base URL.
    async fn picky_server() -> String {
        use axum::http::StatusCode;
        async fn bulk(body: axum::body::Bytes) -> (StatusCode, String) {
            let batches: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
            if batches.iter().any(|b| b["bad"] == true) {
                let message = r#"{"errors":[{"code":"BAD_REQUEST","message":"bad batch"}]}"#;
                (StatusCode::BAD_REQUEST, message.to_owned())
            } else {
                (StatusCode::ACCEPTED, String::new())
            }
        }
        let app = axum::Router::new().route("/v2/bulkevents", axum::routing::post(bulk));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn deliverer(base_url: String) -> Deliverer {
        let feed = Feed {
            name: "unit".to_owned(),
            base_url,
            api_key: Secret::new("k"),
            api_secret: Secret::new("s"),
            environment: Environment::Development,
            request_timeout: Duration::from_secs(5),
            delivery: crate::config::model::DeliverySettings::default(),
        };
        let config = DeliveryConfig {
            rate_per_sec: None,
            ..DeliveryConfig::default()
        };
        Deliverer::new(EventsApiClient::new(&feed).unwrap(), config)
    }

    fn request(count: u64, bad: &[u64]) -> PackedRequest {
        let batches: Vec<EncodedBatch> = (0..count)
            .map(|row| EncodedBatch {
                row,
                part: 0,
                source_request_id: format!("id{row}"),
                json: format!(r#"{{"row":{row},"bad":{}}}"#, bad.contains(&row)).into_bytes(),
                historical: false,
            })
            .collect();
        PackedRequest::from_batches(&batches)
    }

    #[tokio::test]
    async fn bisect_isolates_exactly_the_bad_indices() {
        let deliverer = deliverer(picky_server().await);
        for bad in [
            vec![],
            vec![0],
            vec![36],
            vec![0, 17, 18, 36],
            (0..37).collect(),
        ] {
            let outcome = deliverer.deliver(request(37, &bad)).await.unwrap();
            let dead: Vec<u64> = outcome.dead_letters.iter().map(|d| d.row).collect();
            assert_eq!(dead, bad);
            let good: Vec<String> = (0..37)
                .filter(|r| !bad.contains(r))
                .map(|r| format!("id{r}"))
                .collect();
            assert_eq!(outcome.acknowledged, good, "in request order");
            assert!(outcome
                .dead_letters
                .iter()
                .all(|d| d.status == 400 && d.message == "bad batch"));
            for d in &outcome.dead_letters {
                assert_eq!(
                    d.batch,
                    format!(r#"{{"row":{},"bad":true}}"#, d.row).into_bytes()
                );
            }
        }
    }

    #[tokio::test]
    async fn one_bad_batch_costs_about_two_requests_per_halving() {
        let deliverer = deliverer(picky_server().await);
        deliverer.deliver(request(100, &[42])).await.unwrap();
        // 1 + 2 per level over ceil(log2(100)) = 7 levels.
        assert!(
            deliverer.figures().requests <= 15,
            "{:?}",
            deliverer.figures()
        );
    }
}
