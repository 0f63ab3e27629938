//! Pacing for one Events API target: a token bucket counted in batches, a shared
//! "blocked until" gate, and adaptive rate (AIMD).
//!
//! - The bucket refills at the current rate (default 270 batches/s, mParticle's
//!   default account limit, §3.3) and holds at most [`BURST_BATCHES`]. A request
//!   of `n` batches takes `n` tokens and may drive the bucket into debt; it then
//!   waits until the debt is paid. So a request bigger than the burst still goes,
//!   and concurrent senders queue in reservation order.
//! - A 429 with `Retry-After` closes the gate for every sender to the host until
//!   then, the way mParticle's Java SDK keeps a global "blocked until" instant.
//! - The rate halves on a 429 and shrinks by a tenth when
//!   `X-mp-rate-limit-percentage-used` reaches 80 %, at most once per
//!   [`DECREASE_COOLDOWN`] (answers to requests sent before the decrease say
//!   nothing about the new rate); it grows by 2 % of the configured rate per
//!   answer below 50 % (or without the header), and never exceeds the configured
//!   rate nor falls under 5 % of it.
//!
//! Time is `tokio::time`, so tests drive it with `tokio::time::pause()`.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// mParticle's default throughput per account, in batches per second (§3.3).
pub const DEFAULT_RATE_PER_SEC: f64 = 270.0;
/// Bucket capacity in batches: one full request may leave at once after an
/// idle spell, and no more, so a fresh start cannot overshoot the server's
/// window by much.
pub const BURST_BATCHES: f64 = 100.0;
/// Minimum time between two decreases of the rate.
pub const DECREASE_COOLDOWN: Duration = Duration::from_secs(1);

/// Usage (percent) at or above which the rate shrinks.
const HIGH_USAGE_PERCENT: f64 = 80.0;
/// Usage (percent) below which the rate grows.
const LOW_USAGE_PERCENT: f64 = 50.0;
/// Multiplier on a 429.
const DECREASE_ON_RATE_LIMITED: f64 = 0.5;
/// Multiplier on high usage.
const DECREASE_ON_HIGH_USAGE: f64 = 0.9;
/// Additive increase per low-usage answer, as a share of the configured rate.
const INCREASE_SHARE: f64 = 0.02;
/// The floor, as a share of the configured rate.
const MIN_RATE_SHARE: f64 = 0.05;

/// Additive-increase, multiplicative-decrease control of the sending rate.
#[derive(Debug, Clone)]
pub struct Aimd {
    max: f64,
    rate: f64,
    last_decrease: Option<Instant>,
}

impl Aimd {
    /// Starts at the configured rate (batches per second), which is also the ceiling.
    pub fn new(max_rate: f64) -> Self {
        Self {
            max: max_rate,
            rate: max_rate,
            last_decrease: None,
        }
    }

    /// The current rate, batches per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The lowest rate it will go to.
    pub fn min_rate(&self) -> f64 {
        self.max * MIN_RATE_SHARE
    }

    /// A 429 arrived.
    pub fn on_rate_limited(&mut self, now: Instant) {
        self.decrease(DECREASE_ON_RATE_LIMITED, now);
    }

    /// A request was accepted, with this usage header (percent) if any.
    pub fn on_accepted(&mut self, percentage_used: Option<f64>, now: Instant) {
        match percentage_used {
            Some(p) if p >= HIGH_USAGE_PERCENT => self.decrease(DECREASE_ON_HIGH_USAGE, now),
            Some(p) if p >= LOW_USAGE_PERCENT => {}
            // Low usage, or a server that does not report it: creep back up.
            _ => self.rate = (self.rate + self.max * INCREASE_SHARE).min(self.max),
        }
    }

    fn decrease(&mut self, factor: f64, now: Instant) {
        if self
            .last_decrease
            .is_some_and(|at| now.duration_since(at) < DECREASE_COOLDOWN)
        {
            return;
        }
        self.last_decrease = Some(now);
        self.rate = (self.rate * factor).max(self.min_rate());
    }
}

/// A token bucket counted in batches that may go into debt (see the module docs).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    burst: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens.
    pub fn new(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            burst,
            updated: now,
        }
    }

    /// Tokens now (negative while in debt).
    pub fn tokens(&self) -> f64 {
        self.tokens
    }

    /// Adds what `rate` earned since the last update, up to the burst.
    pub fn refill(&mut self, rate: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + rate * elapsed).min(self.burst);
        self.updated = now;
    }

    /// Takes `n` tokens and returns how long the caller must wait before sending.
    #[must_use]
    pub fn reserve(&mut self, n: f64, rate: f64, now: Instant) -> Duration {
        self.refill(rate, now);
        self.tokens -= n;
        if self.tokens >= 0.0 || rate <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }

    /// Drops any saved-up tokens (after a 429 nothing should burst out).
    pub fn empty(&mut self, rate: f64, now: Instant) {
        self.refill(rate, now);
        self.tokens = self.tokens.min(0.0);
    }
}

/// Bucket and rate together, under one lock.
#[derive(Debug)]
struct Pacer {
    bucket: TokenBucket,
    aimd: Aimd,
}

/// Pacing shared by every sender to one target.
#[derive(Debug)]
pub struct RateLimiter {
    /// `None`: no pacing (only the gate).
    pacer: Option<Mutex<Pacer>>,
    /// Nobody sends before this instant.
    gate: Mutex<Option<Instant>>,
}

/// Locks a mutex even if a panicking thread poisoned it: the data is plain numbers.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RateLimiter {
    /// A limiter at `rate_per_sec` batches per second, or only the gate when `None`
    /// (or not a positive number).
    pub fn new(rate_per_sec: Option<f64>) -> Self {
        let now = Instant::now();
        let pacer = rate_per_sec
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|rate| {
                Mutex::new(Pacer {
                    bucket: TokenBucket::new(BURST_BATCHES, now),
                    aimd: Aimd::new(rate),
                })
            });
        Self {
            pacer,
            gate: Mutex::new(None),
        }
    }

    /// The current adaptive rate, batches per second (`None` without pacing).
    pub fn current_rate(&self) -> Option<f64> {
        self.pacer.as_ref().map(|p| lock(p).aimd.rate())
    }

    /// When the gate opens, if a 429 closed it and it is still closed.
    pub fn blocked_until(&self) -> Option<Instant> {
        (*lock(&self.gate)).filter(|t| *t > Instant::now())
    }

    /// Waits for the gate and for `batches` tokens; returns the time spent waiting.
    pub async fn acquire(&self, batches: usize) -> Duration {
        let start = Instant::now();
        self.wait_for_gate().await;
        if let Some(pacer) = &self.pacer {
            let wait = {
                let mut p = lock(pacer);
                let rate = p.aimd.rate();
                p.bucket.reserve(batches as f64, rate, Instant::now())
            };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            // A 429 may have closed the gate while this sender waited for tokens.
            self.wait_for_gate().await;
        }
        start.elapsed()
    }

    async fn wait_for_gate(&self) {
        while let Some(until) = self.blocked_until() {
            tokio::time::sleep_until(until).await;
        }
    }

    /// A 429 arrived: slow down, drop saved-up tokens, and with a `Retry-After`
    /// close the gate for every sender until then.
    pub fn on_rate_limited(&self, retry_after: Option<Duration>) {
        let now = Instant::now();
        if let Some(wait) = retry_after {
            let mut gate = lock(&self.gate);
            let until = now + wait;
            *gate = Some(gate.map_or(until, |t| t.max(until)));
        }
        if let Some(pacer) = &self.pacer {
            let mut p = lock(pacer);
            let rate = p.aimd.rate();
            // Settle tokens at the old rate before the rate changes.
            p.bucket.empty(rate, now);
            p.aimd.on_rate_limited(now);
        }
    }

    /// A request was accepted; `percentage_used` is `X-mp-rate-limit-percentage-used`.
    pub fn on_accepted(&self, percentage_used: Option<f64>) {
        if let Some(pacer) = &self.pacer {
            let now = Instant::now();
            let mut p = lock(pacer);
            let rate = p.aimd.rate();
            p.bucket.refill(rate, now);
            p.aimd.on_accepted(percentage_used, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_bursts_then_paces() {
        let limiter = RateLimiter::new(Some(200.0));
        let start = Instant::now();
        // The burst (100) goes at once.
        assert_eq!(limiter.acquire(100).await, Duration::ZERO);
        // 100 more: half a second of debt at 200/s.
        assert_eq!(ms(limiter.acquire(100).await), 500);
        assert_eq!(ms(limiter.acquire(20).await), 100);
        assert_eq!(ms(start.elapsed()), 600);
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_up_to_the_burst_only() {
        let limiter = RateLimiter::new(Some(100.0));
        assert_eq!(limiter.acquire(100).await, Duration::ZERO);
        tokio::time::sleep(Duration::from_secs(10)).await;
        // Ten idle seconds earned 1000 tokens but the bucket holds 100.
        assert_eq!(limiter.acquire(100).await, Duration::ZERO);
        assert_eq!(ms(limiter.acquire(50).await), 500);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_senders_queue_in_reservation_order() {
        let limiter = std::sync::Arc::new(RateLimiter::new(Some(100.0)));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let l = std::sync::Arc::clone(&limiter);
            tasks.push(tokio::spawn(async move {
                l.acquire(50).await;
                start.elapsed()
            }));
        }
        let mut done = Vec::new();
        for t in tasks {
            done.push(ms(t.await.unwrap()));
        }
        done.sort_unstable();
        assert_eq!(done, [0, 0, 500, 1000]);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_closes_the_gate_for_everyone() {
        let limiter = RateLimiter::new(None);
        assert_eq!(limiter.acquire(1).await, Duration::ZERO);
        limiter.on_rate_limited(Some(Duration::from_secs(2)));
        assert!(limiter.blocked_until().is_some());
        // A shorter Retry-After does not reopen it early.
        limiter.on_rate_limited(Some(Duration::from_secs(1)));
        assert_eq!(ms(limiter.acquire(1).await), 2000);
        assert_eq!(limiter.blocked_until(), None);
        assert_eq!(limiter.acquire(1).await, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_empties_the_bucket_and_halves_the_rate() {
        let limiter = RateLimiter::new(Some(100.0));
        limiter.on_rate_limited(None);
        assert_eq!(limiter.current_rate(), Some(50.0));
        // No saved-up burst after a 429: 10 batches at 50/s.
        assert_eq!(ms(limiter.acquire(10).await), 200);
    }

    #[test]
    fn aimd_stays_within_its_bounds() {
        let start = Instant::now();
        let mut aimd = Aimd::new(270.0);
        // Many 429s, each past the cooldown: down to the floor, never below.
        for i in 0..100 {
            aimd.on_rate_limited(start + DECREASE_COOLDOWN * i);
        }
        assert!((aimd.rate() - 270.0 * MIN_RATE_SHARE).abs() < 1e-9);
        // Low usage: back up to the configured rate, never above.
        for i in 0..1000 {
            aimd.on_accepted(Some(10.0), start + Duration::from_secs(200 + i));
        }
        assert!((aimd.rate() - 270.0).abs() < 1e-9);
        aimd.on_accepted(None, start + Duration::from_secs(2000));
        assert!((aimd.rate() - 270.0).abs() < 1e-9);
    }

    #[test]
    fn aimd_decreases_once_per_cooldown_and_holds_mid_usage() {
        let start = Instant::now();
        let mut aimd = Aimd::new(100.0);
        // A train of high-usage answers within one cooldown is one decrease.
        for i in 0..10 {
            aimd.on_accepted(Some(85.0), start + Duration::from_millis(i * 10));
        }
        assert!((aimd.rate() - 90.0).abs() < 1e-9);
        aimd.on_accepted(Some(60.0), start + Duration::from_secs(5));
        assert!((aimd.rate() - 90.0).abs() < 1e-9, "50–80 % holds");
        aimd.on_accepted(Some(20.0), start + Duration::from_secs(6));
        assert!((aimd.rate() - 92.0).abs() < 1e-9, "additive increase");
        aimd.on_rate_limited(start + Duration::from_secs(7));
        assert!((aimd.rate() - 46.0).abs() < 1e-9);
    }
}
