//! Pacing for one Events API target: a token bucket counted in batches, a shared
//! "blocked until" gate, and a rate learned from the server's answers.
//!
//! - The bucket refills at the current rate and holds at most
//!   [`BURST_BATCHES`]. A request of `n` batches takes `n` tokens and may drive
//!   the bucket into debt; it then waits until the debt is paid. So a request
//!   bigger than the burst still goes, and concurrent senders queue in
//!   reservation order. A waiter's place is counted in batches, not in time: when
//!   the rate drops while it waits, it waits longer (without that, requests queued
//!   at a run's configured rate would all leave before the first answer could
//!   slow them down).
//! - A 429 with `Retry-After` closes the gate for every sender to the host until
//!   then, the way mParticle's Java SDK keeps a global "blocked until" instant.
//! - The rate is [`LimitLearner`]'s: the configured rate is only a ceiling, the
//!   learner finds the account's limit from 429s, `Retry-After` and
//!   `X-mp-rate-limit-percentage-used`, and a budget coordinator may cap it
//!   further with [`RateLimiter::set_ceiling`]. [`RateLimiter::seed`] and
//!   [`RateLimiter::learned`] carry what was learned from one run to the next.
//!
//! Time is `tokio::time`, so tests drive it with `tokio::time::pause()`.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

pub use crate::sink::limit_learner::{LearnedLimit, LimitLearner};

/// mParticle's default throughput per account, in batches per second (§3.3).
pub const DEFAULT_RATE_PER_SEC: f64 = 270.0;
/// Bucket capacity in batches: one full request may leave at once after an
/// idle spell, and no more, so a fresh start cannot overshoot the server's
/// window by much.
pub const BURST_BATCHES: f64 = 100.0;

/// A token bucket counted in batches that may go into debt (see the module
/// docs). Kept as two running totals, batches earned and batches reserved, so a
/// reservation is a place in line that stays valid when the rate changes.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    earned: f64,
    reserved: f64,
    burst: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens.
    pub fn new(burst: f64, now: Instant) -> Self {
        Self {
            earned: burst,
            reserved: 0.0,
            burst,
            updated: now,
        }
    }

    /// Tokens now (negative while in debt).
    pub fn tokens(&self) -> f64 {
        self.earned - self.reserved
    }

    /// Adds what `rate` earned since the last update, up to the burst.
    pub fn refill(&mut self, rate: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.earned = (self.earned + rate * elapsed).min(self.reserved + self.burst);
        self.updated = now;
    }

    /// Takes `n` tokens; returns the place in line (see [`TokenBucket::wait_for`]).
    #[must_use]
    pub fn reserve(&mut self, n: f64, rate: f64, now: Instant) -> f64 {
        self.refill(rate, now);
        self.reserved += n;
        self.reserved
    }

    /// How long the holder of `place` must still wait at `rate`.
    pub fn wait_for(&mut self, place: f64, rate: f64, now: Instant) -> Duration {
        self.refill(rate, now);
        let missing = place - self.earned;
        if missing <= 0.0 || rate <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / rate)
        }
    }

    /// Drops any saved-up tokens (after a 429 nothing should burst out).
    pub fn empty(&mut self, rate: f64, now: Instant) {
        self.refill(rate, now);
        self.earned = self.earned.min(self.reserved);
    }
}

/// Bucket and rate together, under one lock.
#[derive(Debug)]
struct Pacer {
    bucket: TokenBucket,
    learner: LimitLearner,
}

impl Pacer {
    /// Settles the tokens earned at the current rate before the rate changes.
    fn settle(&mut self, now: Instant) {
        let rate = self.learner.effective_rate();
        self.bucket.refill(rate, now);
    }
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
    /// A limiter at `rate_per_sec` batches per second (the ceiling of what it
    /// learns), or only the gate when `None` (or not a positive number).
    pub fn new(rate_per_sec: Option<f64>) -> Self {
        let now = Instant::now();
        let pacer = rate_per_sec
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|rate| {
                Mutex::new(Pacer {
                    bucket: TokenBucket::new(BURST_BATCHES, now),
                    learner: LimitLearner::new(rate, now),
                })
            });
        Self {
            pacer,
            gate: Mutex::new(None),
        }
    }

    /// The rate paced at now, batches per second: the learned rate within the
    /// budget share (`None` without pacing).
    pub fn current_rate(&self) -> Option<f64> {
        self.pacer
            .as_ref()
            .map(|p| lock(p).learner.effective_rate())
    }

    /// Starts from what an earlier run learned (no effect without pacing).
    pub fn seed(&self, learned: LearnedLimit) {
        if let Some(pacer) = &self.pacer {
            let now = Instant::now();
            let mut p = lock(pacer);
            p.settle(now);
            p.learner.seed(learned, now);
        }
    }

    /// What was learned so far, to persist for the next run (`None` without
    /// pacing, or when the server gave nothing to learn from and nothing was seeded).
    pub fn learned(&self) -> Option<LearnedLimit> {
        self.pacer.as_ref().and_then(|p| lock(p).learner.learned())
    }

    /// Caps the rate at this sender's share of the account's budget (`None`:
    /// the configured rate only). Takes effect for waiting senders too. A
    /// share that is not a positive number is ignored; without pacing there is
    /// nothing to cap.
    pub fn set_ceiling(&self, share: Option<f64>) {
        if let Some(pacer) = &self.pacer {
            let mut p = lock(pacer);
            p.settle(Instant::now());
            p.learner.set_ceiling(share);
        }
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
            let place = {
                let mut p = lock(pacer);
                let rate = p.learner.effective_rate();
                p.bucket.reserve(batches as f64, rate, Instant::now())
            };
            loop {
                let wait = {
                    let mut p = lock(pacer);
                    let rate = p.learner.effective_rate();
                    p.bucket.wait_for(place, rate, Instant::now())
                };
                if wait.is_zero() {
                    break;
                }
                // Wakes at the time the rate of now promises; a lower rate by
                // then means another turn.
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
    /// close the gate for every sender until then. `acceleration`: the server
    /// said the rate rose too fast, not too high (see the learner).
    pub fn on_rate_limited(&self, retry_after: Option<Duration>, acceleration: bool) {
        let now = Instant::now();
        if let Some(wait) = retry_after {
            let mut gate = lock(&self.gate);
            let until = now + wait;
            *gate = Some(gate.map_or(until, |t| t.max(until)));
        }
        if let Some(pacer) = &self.pacer {
            let mut p = lock(pacer);
            let rate = p.learner.effective_rate();
            p.bucket.empty(rate, now);
            p.learner.on_rate_limited(retry_after, acceleration, now);
        }
    }

    /// A request of `batches` was accepted; `percentage_used` is
    /// `X-mp-rate-limit-percentage-used`.
    pub fn on_accepted(&self, batches: usize, percentage_used: Option<f64>) {
        if let Some(pacer) = &self.pacer {
            let now = Instant::now();
            let mut p = lock(pacer);
            p.settle(now);
            p.learner.on_accepted(batches, percentage_used, now);
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
        limiter.on_rate_limited(Some(Duration::from_secs(2)), false);
        assert!(limiter.blocked_until().is_some());
        // A shorter Retry-After does not reopen it early.
        limiter.on_rate_limited(Some(Duration::from_secs(1)), false);
        assert_eq!(ms(limiter.acquire(1).await), 2000);
        assert_eq!(limiter.blocked_until(), None);
        assert_eq!(limiter.acquire(1).await, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_empties_the_bucket_and_halves_the_rate() {
        let limiter = RateLimiter::new(Some(100.0));
        limiter.on_rate_limited(None, false);
        assert_eq!(limiter.current_rate(), Some(50.0));
        // No saved-up burst after a 429: 10 batches at 50/s.
        assert_eq!(ms(limiter.acquire(10).await), 200);
    }

    /// The test suite's fake account limit (`take_rate_tokens` in
    /// `tests/it/support/fake_mparticle.rs`): a bucket holding one second of
    /// batches; 429 with `Retry-After` (whole seconds, at least 1) when short,
    /// else the share of the bucket in use.
    struct Server {
        rate: f64,
        tokens: f64,
        updated: Instant,
        send_pct: bool,
    }

    enum Answer {
        Accepted(Option<f64>),
        RateLimited(Duration),
    }

    impl Server {
        fn new(rate: f64) -> Self {
            Self {
                rate,
                tokens: rate,
                updated: Instant::now(),
                send_pct: true,
            }
        }

        fn take(&mut self, n: f64) -> Answer {
            let now = Instant::now();
            let earned = self.rate * now.duration_since(self.updated).as_secs_f64();
            self.tokens = (self.tokens + earned).min(self.rate);
            self.updated = now;
            if self.tokens < n {
                let wait = ((n - self.tokens) / self.rate).ceil().max(1.0);
                return Answer::RateLimited(Duration::from_secs_f64(wait));
            }
            self.tokens -= n;
            let used = ((self.rate - self.tokens) / self.rate * 100.0).round();
            Answer::Accepted(self.send_pct.then_some(used))
        }
    }

    /// What one simulated stretch of sending did.
    #[derive(Default)]
    struct Run {
        accepted: f64,
        requests: u32,
        refused: u32,
        /// (seconds since the stretch began, rate paced at) after every answer.
        rates: Vec<(f64, f64)>,
    }

    /// The figures and the rate every 5 s, for failure messages.
    impl std::fmt::Debug for Run {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "accepted {} in {} requests, {} refused; rates:",
                self.accepted, self.requests, self.refused
            )?;
            let mut next = 0.0;
            for (t, r) in &self.rates {
                if *t >= next {
                    write!(f, " {t:.0}s={r:.1}")?;
                    next += 5.0;
                }
            }
            Ok(())
        }
    }

    /// One sender pushing 100-batch requests for `secs` (answers are instant).
    async fn send_for(limiter: &RateLimiter, server: &mut Server, secs: u64) -> Run {
        let start = Instant::now();
        let mut run = Run::default();
        while start.elapsed() < Duration::from_secs(secs) {
            limiter.acquire(100).await;
            run.requests += 1;
            match server.take(100.0) {
                Answer::Accepted(pct) => {
                    run.accepted += 100.0;
                    limiter.on_accepted(100, pct);
                }
                Answer::RateLimited(wait) => {
                    run.refused += 1;
                    limiter.on_rate_limited(Some(wait), false);
                }
            }
            let rate = limiter.current_rate().unwrap();
            run.rates.push((start.elapsed().as_secs_f64(), rate));
        }
        run
    }

    fn max_rate_after(run: &Run, secs: f64) -> f64 {
        run.rates
            .iter()
            .filter(|(t, _)| *t >= secs)
            .map(|(_, r)| *r)
            .fold(0.0, f64::max)
    }

    fn min_rate_after(run: &Run, secs: f64) -> f64 {
        run.rates
            .iter()
            .filter(|(t, _)| *t >= secs)
            .map(|(_, r)| *r)
            .fold(f64::INFINITY, f64::min)
    }

    #[tokio::test(start_paused = true)]
    async fn converges_from_1000_to_a_270_limit_and_stays_in_band() {
        let limiter = RateLimiter::new(Some(1000.0));
        let mut server = Server::new(270.0);
        let run = send_for(&limiter, &mut server, 120).await;
        assert!(run.refused * 50 <= run.requests, "{run:?}");
        let utilisation = run.accepted / 120.0 / 270.0;
        assert!(utilisation >= 0.95, "utilisation {utilisation}");
        // From the first answers on, the rate stays within 10 % of the limit.
        assert!(min_rate_after(&run, 1.0) >= 0.9 * 270.0, "{run:?}");
        assert!(max_rate_after(&run, 1.0) <= 1.1 * 270.0, "{run:?}");
        let learned = limiter.learned().unwrap();
        assert!((0.9 * 270.0..=1.1 * 270.0).contains(&learned.rate));
    }

    /// Four senders in flight with 20 ms answers, as the Deliverer sends: the
    /// three requests queued at the configured 1,000/s behind the first are
    /// re-timed by its answer, so not even the start draws a 429.
    #[tokio::test(start_paused = true)]
    async fn four_senders_in_flight_learn_the_limit_before_a_429() {
        use std::sync::{Arc, Mutex as StdMutex};
        let limiter = Arc::new(RateLimiter::new(Some(1000.0)));
        let server = Arc::new(StdMutex::new(Server::new(270.0)));
        let tally = Arc::new(StdMutex::new((0.0_f64, 0_u32)));
        let start = Instant::now();
        let mut senders = Vec::new();
        for _ in 0..4 {
            let (limiter, server, tally) = (limiter.clone(), server.clone(), tally.clone());
            senders.push(tokio::spawn(async move {
                while start.elapsed() < Duration::from_secs(60) {
                    limiter.acquire(100).await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let answer = server.lock().unwrap().take(100.0);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    match answer {
                        Answer::Accepted(pct) => {
                            tally.lock().unwrap().0 += 100.0;
                            limiter.on_accepted(100, pct);
                        }
                        Answer::RateLimited(wait) => {
                            tally.lock().unwrap().1 += 1;
                            limiter.on_rate_limited(Some(wait), false);
                        }
                    }
                }
            }));
        }
        for sender in senders {
            sender.await.unwrap();
        }
        let (accepted, refused) = *tally.lock().unwrap();
        assert_eq!(refused, 0);
        let utilisation = accepted / start.elapsed().as_secs_f64() / 270.0;
        assert!(utilisation >= 0.95, "utilisation {utilisation}");
    }

    /// Two daemons, each configured at 1,000/s with four senders in flight,
    /// pushing to one 270/s account without a budget coordinator: the usage
    /// header counts both, so each learns a share and together they use the
    /// limit with hardly a 429.
    #[tokio::test(start_paused = true)]
    async fn two_daemons_share_one_account_through_the_usage_header() {
        use std::sync::{Arc, Mutex as StdMutex};
        let server = Arc::new(StdMutex::new(Server::new(270.0)));
        let tally = Arc::new(StdMutex::new(vec![(0.0_f64, 0_u32); 2]));
        let start = Instant::now();
        let mut senders = Vec::new();
        for d in 0..2 {
            let limiter = Arc::new(RateLimiter::new(Some(1000.0)));
            for _ in 0..4 {
                let (limiter, server, tally) = (limiter.clone(), server.clone(), tally.clone());
                senders.push(tokio::spawn(async move {
                    while start.elapsed() < Duration::from_secs(120) {
                        limiter.acquire(100).await;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        let answer = server.lock().unwrap().take(100.0);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        match answer {
                            Answer::Accepted(pct) => {
                                tally.lock().unwrap()[d].0 += 100.0;
                                limiter.on_accepted(100, pct);
                            }
                            Answer::RateLimited(wait) => {
                                tally.lock().unwrap()[d].1 += 1;
                                limiter.on_rate_limited(Some(wait), false);
                            }
                        }
                    }
                    limiter.current_rate().unwrap()
                }));
            }
        }
        let mut rates = Vec::new();
        for sender in senders {
            rates.push(sender.await.unwrap());
        }
        let t = tally.lock().unwrap().clone();
        let accepted = t[0].0 + t[1].0;
        let refused = t[0].1 + t[1].1;
        let utilisation = accepted / start.elapsed().as_secs_f64() / 270.0;
        assert!((0.95..=1.05).contains(&utilisation), "{t:?} {utilisation}");
        assert!(f64::from(refused * 50) <= accepted / 100.0, "{t:?}");
        // Each got a real share, neither starved.
        assert!(t[0].0.min(t[1].0) >= 0.25 * accepted, "{t:?} {rates:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn converges_without_the_usage_header_from_429s_alone() {
        let limiter = RateLimiter::new(Some(1000.0));
        let mut server = Server::new(270.0);
        server.send_pct = false;
        let run = send_for(&limiter, &mut server, 120).await;
        // A few 429s find the limit; the slow climb keeps them rare after that.
        let late = send_for(&limiter, &mut server, 120).await;
        assert!(run.refused <= 10, "{run:?}");
        assert!(late.refused * 50 <= late.requests, "{late:?}");
        assert!(late.accepted / 120.0 >= 0.85 * 270.0, "{late:?}");
        assert!(max_rate_after(&late, 0.0) <= 1.2 * 270.0, "{late:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn finds_a_raised_limit_again() {
        let limiter = RateLimiter::new(Some(1000.0));
        let mut server = Server::new(270.0);
        let first = send_for(&limiter, &mut server, 60).await;
        assert!(limiter.current_rate().unwrap() <= 1.1 * 270.0, "{first:?}");
        // The account's limit doubles: within a minute and a half the rate is
        // near it, and the next minute uses it.
        server.rate = 540.0;
        let climb = send_for(&limiter, &mut server, 90).await;
        assert!(limiter.current_rate().unwrap() >= 0.85 * 540.0, "{climb:?}");
        let late = send_for(&limiter, &mut server, 60).await;
        assert!(late.accepted / 60.0 >= 0.9 * 540.0, "{late:?}");
        assert!(max_rate_after(&late, 0.0) <= 1.1 * 540.0, "{late:?}");
        assert!(climb.refused + late.refused <= 2, "{climb:?} {late:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn never_above_the_configured_rate() {
        let limiter = RateLimiter::new(Some(300.0));
        let mut server = Server::new(5000.0);
        let run = send_for(&limiter, &mut server, 60).await;
        assert_eq!(run.refused, 0);
        assert!(max_rate_after(&run, 0.0) <= 300.0);
        // The first 100 batches leave at once (the burst), the rest at 300/s.
        assert!(run.accepted <= 300.0 * 60.0 + 200.0, "{run:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_seeded_run_starts_at_the_learned_rate() {
        let limiter = RateLimiter::new(Some(1000.0));
        assert!(limiter.learned().is_none());
        let seed = LearnedLimit {
            rate: 270.0,
            learned_at: chrono::Utc::now(),
        };
        limiter.seed(seed);
        assert_eq!(limiter.current_rate(), Some(270.0));
        assert_eq!(limiter.learned(), Some(seed));
        // Paced at 270 from the first request: 100 burst + 270 in the next second.
        let start = Instant::now();
        for _ in 0..4 {
            limiter.acquire(100).await;
        }
        let secs = start.elapsed().as_secs_f64();
        assert!((secs - 300.0 / 270.0).abs() < 0.01, "{secs}");
        let mut server = Server::new(270.0);
        let run = send_for(&limiter, &mut server, 60).await;
        assert_eq!(run.refused, 0, "{run:?}");
        assert!(run.accepted / 60.0 >= 0.95 * 270.0, "{run:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_ceiling_caps_waiting_senders_and_lifts_back_to_the_learned_rate() {
        let limiter = std::sync::Arc::new(RateLimiter::new(Some(1000.0)));
        limiter.seed(LearnedLimit {
            rate: 270.0,
            learned_at: chrono::Utc::now(),
        });
        // Three daemons share the account's 270: this one gets 90.
        limiter.set_ceiling(Some(90.0));
        assert_eq!(limiter.current_rate(), Some(90.0));
        let start = Instant::now();
        limiter.acquire(100).await; // the burst
        assert_eq!(ms(limiter.acquire(90).await), 1000);
        // A waiter queued at 90/s is re-timed when the share shrinks to 45.
        let waiter = {
            let l = std::sync::Arc::clone(&limiter);
            tokio::spawn(async move { l.acquire(90).await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        limiter.set_ceiling(Some(45.0));
        // 45 batches earned in the first half second, 45 more at 45/s.
        assert_eq!(ms(waiter.await.unwrap()), 1500);
        // The share goes away: back to the learned rate, not the configured 1000.
        limiter.set_ceiling(None);
        assert_eq!(limiter.current_rate(), Some(270.0));
        assert_eq!(ms(start.elapsed()), 2500);
        // A share above the learned rate leaves the learned rate in force.
        limiter.set_ceiling(Some(500.0));
        assert_eq!(limiter.current_rate(), Some(270.0));
    }
}
