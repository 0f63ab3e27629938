//! Learning the account's Events API limit from the server's answers.
//!
//! Users rarely know their account's limit (mParticle's default is 270
//! batches/s, §3.3, but it varies by account), so the configured rate is only a
//! ceiling and [`LimitLearner`] finds the rate the account really takes:
//!
//! - **Direct estimate** from `X-mp-rate-limit-percentage-used` (`pct`): with
//!   `sent` the batches accepted over the last [`ESTIMATE_WINDOW`], the limit is
//!   at most `sent / (pct / 100)`. Against a counter over a one-second window
//!   this is the limit exactly; against a token bucket holding one second of
//!   batches (the test suite's fake) it can only overestimate, because the
//!   bucket's debt never exceeds what was taken in the last second. So the
//!   estimate is used as an upper bound: the rate drops to [`HEADROOM`] below it
//!   when it is lower than the rate. The first answer of a run already carries
//!   it (one request, a fresh window), which is how a run configured far above
//!   its account's limit settles before its second request leaves. When other
//!   senders use the same account, `pct` counts their use too and the estimate
//!   is this sender's share, which is what it should pace at.
//! - **Usage bands** (spec §3.4, "slow down above 80 %"): at or above
//!   [`HIGH_USAGE_PERCENT`] the rate shrinks by [`DECREASE_ON_HIGH_USAGE`];
//!   between [`LOW_USAGE_PERCENT`] and that it holds; below, or without the
//!   header, it climbs.
//! - **429**: the gate (Retry-After) is the limiter's; here the rate that drew
//!   the 429 is the batches accepted over the last [`OBSERVE_WINDOW`] since the
//!   previous gate opened (time spent blocked is not sending time), per second
//!   of that span but never per less than [`ESTIMATE_WINDOW`]. That
//!   observed rate is remembered as the ceiling and the rate restarts
//!   [`DECREASE_ON_429`] below it, once per [`DECREASE_COOLDOWN`] (answers to
//!   requests sent before the decrease say nothing about the new rate). With
//!   nothing observed (every request refused) it halves.
//! - **Acceleration 429** (`X-mp-rate-limit-exceeded: acceleration`, spec
//!   §3.4: "on acceleration, ramp up more slowly"): the rate rose faster than
//!   the account lets it, not above its speed limit. The remembered ceiling
//!   stays; the rate steps back [`DECREASE_ON_HIGH_USAGE`] and every later climb
//!   goes at half the pace it had (down to [`MIN_CLIMB_SCALE`] of
//!   [`MAX_CLIMB_PER_SEC`]) for the rest of the run.
//! - **Climb** (TCP CUBIC's "remember the ceiling"): after a push-back the
//!   target rate follows a cubic in time since the push-back, starting at the new
//!   rate: concave up to the remembered ceiling, reached after [`CUBIC_K`] (the
//!   clock starts when the Retry-After gate opens), flat around it, then convex
//!   above it (+[`PROBE_SHARE`] of the ceiling after another [`CUBIC_K`], faster
//!   later) so a limit that was raised is found again. The climb never steps
//!   faster than [`MAX_CLIMB_PER_SEC`] of the rate per second.
//!
//! The rate never exceeds the configured rate nor the budget share set with
//! [`LimitLearner::set_ceiling`], and never falls under [`MIN_RATE_SHARE`] of
//! the configured rate. What was learned is a [`LearnedLimit`] the caller can
//! persist and seed the next run with. Time is passed in (`tokio::time`), so
//! tests drive it without sleeping.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Window over which accepted batches are counted (the server's window).
pub const ESTIMATE_WINDOW: Duration = Duration::from_secs(1);
/// Longest window over which the rate that drew a 429 is measured: long enough
/// that whole requests of 100 batches do not make the figure jumpy.
pub const OBSERVE_WINDOW: Duration = Duration::from_secs(5);
/// Minimum time between two decreases of the rate.
pub const DECREASE_COOLDOWN: Duration = Duration::from_secs(1);
/// Time the cubic climb takes to return to the remembered ceiling.
pub const CUBIC_K: Duration = Duration::from_secs(20);
/// How far below the direct estimate the rate settles: covers the rounding of
/// the whole-percent header (±1.4 % at 37 %).
pub const HEADROOM: f64 = 0.02;
/// Multiplier taken off the observed rate on a 429.
pub const DECREASE_ON_429: f64 = 0.15;
/// Multiplier taken off the rate when usage is high.
pub const DECREASE_ON_HIGH_USAGE: f64 = 0.1;
/// Growth above the remembered ceiling one [`CUBIC_K`] after reaching it.
pub const PROBE_SHARE: f64 = 0.1;
/// Fastest climb, as a share of the rate per second.
pub const MAX_CLIMB_PER_SEC: f64 = 0.05;
/// The slowest climb after acceleration 429s, as a share of
/// [`MAX_CLIMB_PER_SEC`].
pub const MIN_CLIMB_SCALE: f64 = 0.125;
/// The floor, as a share of the configured rate.
pub const MIN_RATE_SHARE: f64 = 0.05;
/// Usage (percent) at or above which the rate shrinks.
pub const HIGH_USAGE_PERCENT: f64 = 80.0;
/// Usage (percent) below which the rate climbs.
pub const LOW_USAGE_PERCENT: f64 = 50.0;
/// Usage (percent) from which the direct estimate is trusted: below it one
/// percent of rounding is too large a share of the reading.
pub const ESTIMATE_MIN_PERCENT: f64 = 25.0;

/// What a run learned about its target's limit: persist it at the end of a run
/// and seed the next run with it ([`LimitLearner::seed`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LearnedLimit {
    /// The pacing rate the server's answers settled on, batches per second.
    pub rate: f64,
    /// When the server last pushed back or confirmed it (wall clock).
    pub learned_at: DateTime<Utc>,
}

/// One push-back and the cubic climb that follows it.
#[derive(Debug, Clone, Copy)]
struct Epoch {
    /// The remembered ceiling: the rate the server pushed back at.
    ceiling: f64,
    /// When the climb starts (a gate's end may be in the future).
    start: Instant,
    /// Share below the ceiling the climb starts from.
    depth: f64,
}

impl Epoch {
    /// The cubic target at `now`.
    fn target(&self, now: Instant) -> f64 {
        let t = now.saturating_duration_since(self.start).as_secs_f64() / CUBIC_K.as_secs_f64();
        if t < 1.0 {
            self.ceiling * (1.0 - self.depth * (1.0 - t).powi(3))
        } else {
            self.ceiling * (1.0 + PROBE_SHARE * (t - 1.0).powi(3))
        }
    }
}

/// Learns the sending rate one target takes (see the module docs).
#[derive(Debug, Clone)]
pub struct LimitLearner {
    configured: f64,
    share: Option<f64>,
    rate: f64,
    epoch: Option<Epoch>,
    /// (answer time, batches) of accepted requests within the window.
    accepted: VecDeque<(Instant, f64)>,
    /// When the last Retry-After gate opens (again).
    gate_end: Option<Instant>,
    last_decrease: Option<Instant>,
    last_update: Instant,
    /// When the first request was accepted.
    first_answer: Option<Instant>,
    /// Wall-clock time of the last server signal or of the seed.
    learned_at: Option<DateTime<Utc>>,
    /// Share of [`MAX_CLIMB_PER_SEC`] the climb may take: halved by each
    /// acceleration 429.
    climb_scale: f64,
}

impl LimitLearner {
    /// Starts at the configured rate (batches per second), which stays the ceiling.
    pub fn new(configured: f64, now: Instant) -> Self {
        Self {
            configured,
            share: None,
            rate: configured,
            epoch: None,
            accepted: VecDeque::new(),
            gate_end: None,
            last_decrease: None,
            last_update: now,
            first_answer: None,
            learned_at: None,
            climb_scale: 1.0,
        }
    }

    /// The configured rate (the hard ceiling).
    pub fn configured(&self) -> f64 {
        self.configured
    }

    /// The learned rate, batches per second, before the budget share.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The rate to pace at: the learned rate within the budget share.
    pub fn effective_rate(&self) -> f64 {
        self.share.map_or(self.rate, |share| self.rate.min(share))
    }

    /// The lowest rate it learns down to.
    pub fn min_rate(&self) -> f64 {
        self.configured * MIN_RATE_SHARE
    }

    /// The budget share (`None`: the whole configured rate). A share that is
    /// not a positive number is ignored.
    pub fn set_ceiling(&mut self, share: Option<f64>) {
        self.share = share.filter(|s| s.is_finite() && *s > 0.0);
    }

    /// The budget share in force.
    pub fn ceiling(&self) -> Option<f64> {
        self.share
    }

    /// Starts from what an earlier run learned, clamped to the configured rate;
    /// a rate that is not a positive number is ignored. The climb starts flat
    /// at the seed, so the run probes above it only slowly.
    pub fn seed(&mut self, learned: LearnedLimit, now: Instant) {
        if !(learned.rate.is_finite() && learned.rate > 0.0) {
            return;
        }
        self.rate = learned.rate.clamp(self.min_rate(), self.configured);
        self.epoch = Some(Epoch {
            ceiling: self.rate,
            start: now.checked_sub(CUBIC_K).unwrap_or(now),
            depth: 0.0,
        });
        self.last_update = now;
        self.learned_at = Some(learned.learned_at);
    }

    /// What was learned (`None` when the server never pushed back nor reported
    /// usage high enough to estimate the limit, and nothing was seeded). A rate
    /// probing less than [`PROBE_SHARE`] above the last push-back is not
    /// confirmed yet, so the push-back's rate is what the next run should start
    /// from; a rate that climbed further without trouble is the new knowledge.
    pub fn learned(&self) -> Option<LearnedLimit> {
        let rate = match self.epoch {
            Some(e) if self.rate <= e.ceiling * (1.0 + PROBE_SHARE) => self.rate.min(e.ceiling),
            _ => self.rate,
        };
        self.learned_at
            .map(|learned_at| LearnedLimit { rate, learned_at })
    }

    /// Batches accepted in the `window` ending `now` and since the last gate
    /// opened, and the time they were accepted over: from the window's start,
    /// the gate's end or the run's first answer, whichever is last.
    fn sent_in(&mut self, window: Duration, now: Instant) -> (f64, Duration) {
        let oldest = now.checked_sub(OBSERVE_WINDOW).unwrap_or(now);
        while self.accepted.front().is_some_and(|(at, _)| *at <= oldest) {
            self.accepted.pop_front();
        }
        let window_start = now.checked_sub(window).unwrap_or(now);
        let from = self.gate_end.map_or(window_start, |g| g.max(window_start));
        let sent = self
            .accepted
            .iter()
            .filter(|(at, _)| *at > window_start && *at >= from)
            .map(|(_, n)| n)
            .sum();
        let start = self.first_answer.map_or(from, |first| first.max(from));
        (sent, now.saturating_duration_since(start))
    }

    /// Batches accepted over the last [`ESTIMATE_WINDOW`] (the server's window).
    fn sent_in_window(&mut self, now: Instant) -> f64 {
        self.sent_in(ESTIMATE_WINDOW, now).0
    }

    /// The rate the server took lately, batches per second: over up to
    /// [`OBSERVE_WINDOW`] since the last gate opened, and never over less than
    /// [`ESTIMATE_WINDOW`] (a server's bucket lets a short burst through far
    /// above its limit; spread over its window the burst is the limit).
    fn observed_rate(&mut self, now: Instant) -> f64 {
        let (sent, span) = self.sent_in(OBSERVE_WINDOW, now);
        sent / span.clamp(ESTIMATE_WINDOW, OBSERVE_WINDOW).as_secs_f64()
    }

    /// Sets the rate after a push-back and starts a climb from it.
    fn push_back(&mut self, ceiling: f64, depth: f64, start: Instant) {
        self.rate = (ceiling * (1.0 - depth)).clamp(self.min_rate(), self.configured);
        self.epoch = Some(Epoch {
            ceiling,
            start,
            depth: 1.0 - self.rate / ceiling,
        });
        self.learned_at = Some(Utc::now());
    }

    /// A request of `batches` was accepted, with this usage header (percent) if any.
    pub fn on_accepted(&mut self, batches: usize, percentage_used: Option<f64>, now: Instant) {
        self.accepted.push_back((now, batches as f64));
        self.first_answer.get_or_insert(now);
        let percentage_used = percentage_used.filter(|p| p.is_finite() && *p >= 0.0);
        if let Some(p) = percentage_used.filter(|p| *p >= ESTIMATE_MIN_PERCENT) {
            let estimate = self.sent_in_window(now) / (p / 100.0);
            if estimate <= 0.0 {
                // Nothing counted since a gate opened: no estimate.
            } else if self.rate > estimate * (1.0 - HEADROOM) {
                self.push_back(estimate, HEADROOM, now);
            } else {
                // The server confirms the rate is within its limit.
                self.learned_at = Some(Utc::now());
            }
        }
        match percentage_used {
            Some(p) if p >= HIGH_USAGE_PERCENT => {
                if self.cooled_down(now) {
                    self.last_decrease = Some(now);
                    self.push_back(self.rate, DECREASE_ON_HIGH_USAGE, now);
                }
            }
            Some(p) if p >= LOW_USAGE_PERCENT => {}
            // Low usage, or a server that does not report it.
            _ => self.climb(now),
        }
        self.last_update = now;
    }

    /// A 429 arrived; `retry_after` is how long the server asked to wait;
    /// `acceleration` when it says the rate rose too fast
    /// (`X-mp-rate-limit-exceeded: acceleration`) rather than too high.
    pub fn on_rate_limited(
        &mut self,
        retry_after: Option<Duration>,
        acceleration: bool,
        now: Instant,
    ) {
        let observed = self.observed_rate(now);
        let gate_end = now + retry_after.unwrap_or(Duration::ZERO);
        self.gate_end = Some(self.gate_end.map_or(gate_end, |g| g.max(gate_end)));
        self.last_update = now;
        if !self.cooled_down(now) {
            return;
        }
        self.last_decrease = Some(now);
        if acceleration {
            // Not the limit: keep the ceiling, step back a little, ramp slower.
            self.climb_scale = (self.climb_scale * 0.5).max(MIN_CLIMB_SCALE);
            self.rate = (self.rate * (1.0 - DECREASE_ON_HIGH_USAGE))
                .clamp(self.min_rate(), self.configured);
            self.learned_at = Some(Utc::now());
            return;
        }
        if observed >= self.min_rate() {
            self.push_back(observed.min(self.rate), DECREASE_ON_429, gate_end);
        } else {
            // Nothing got through lately: no observation, halve blindly.
            self.push_back(self.rate, 0.5, gate_end);
        }
    }

    fn cooled_down(&self, now: Instant) -> bool {
        self.last_decrease
            .is_none_or(|at| now.saturating_duration_since(at) >= DECREASE_COOLDOWN)
    }

    /// Moves the rate up along the climb, no faster than [`MAX_CLIMB_PER_SEC`].
    fn climb(&mut self, now: Instant) {
        // Held back by the budget share, the server says nothing about a higher rate.
        if self.share.is_some_and(|share| self.rate >= share) {
            return;
        }
        let target = self.epoch.map_or(self.configured, |e| e.target(now));
        let dt = now
            .saturating_duration_since(self.last_update)
            .as_secs_f64();
        let step = self.rate * MAX_CLIMB_PER_SEC * self.climb_scale * dt;
        if target > self.rate {
            self.rate = target.min(self.rate + step).min(self.configured);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, secs: f64) -> Instant {
        start + Duration::from_secs_f64(secs)
    }

    #[test]
    fn the_first_answer_estimates_the_limit() {
        let start = Instant::now();
        let mut l = LimitLearner::new(1000.0, start);
        assert!(l.learned().is_none());
        // 100 batches took 37 % of the window: the limit is about 270.
        l.on_accepted(100, Some(37.0), start);
        let expected = 100.0 / 0.37 * (1.0 - HEADROOM);
        assert!((l.rate() - expected).abs() < 1e-9, "{}", l.rate());
        assert!(l.learned().is_some());
    }

    #[test]
    fn an_acceleration_429_keeps_the_ceiling_and_halves_the_climb() {
        let start = Instant::now();
        // Climbing freely towards the configured 1,000 from 500.
        let mut speed = LimitLearner::new(1000.0, start);
        speed.rate = 500.0;
        let (mut steady, mut accel) = (speed.clone(), speed.clone());
        accel.on_rate_limited(None, true, at(start, 1.0));
        assert!((accel.rate() - 450.0).abs() < 1e-9, "{}", accel.rate());
        // A speed 429 remembers a ceiling to climb back to; acceleration says
        // nothing about the ceiling, so none is invented.
        speed.on_rate_limited(None, false, at(start, 1.0));
        assert!(speed.epoch.is_some());
        assert!(accel.epoch.is_none());
        // At t = 2 s, no usage header: the steady one climbed 5 % a second
        // for 2 s, the accelerated one 2.5 % for the second since its 429.
        steady.on_accepted(100, None, at(start, 2.0));
        accel.on_accepted(100, None, at(start, 2.0));
        assert!((steady.rate() - 550.0).abs() < 1e-6, "{}", steady.rate());
        assert!((accel.rate() - 461.25).abs() < 1e-6, "{}", accel.rate());
        // Halved again with each one, down to the floor, never below.
        for i in 0..10 {
            accel.on_rate_limited(None, true, at(start, 3.0 + f64::from(i) * 2.0));
        }
        assert!((accel.climb_scale - MIN_CLIMB_SCALE).abs() < 1e-12);
        assert!(accel.rate() >= accel.min_rate());
    }

    #[test]
    fn low_usage_readings_do_not_lower_the_rate() {
        let start = Instant::now();
        let mut l = LimitLearner::new(270.0, start);
        // Steady at 270/s, a token bucket reads 37 % after each request: with
        // about 300 batches in the window that estimates 800, no effect.
        for i in 0..3 {
            l.on_accepted(100, None, at(start, f64::from(i) * 100.0 / 270.0));
        }
        for i in 3..30 {
            l.on_accepted(100, Some(37.0), at(start, f64::from(i) * 100.0 / 270.0));
        }
        assert!((l.rate() - 270.0).abs() < 1e-9);
        // Readings under the trusted range never estimate.
        l.on_accepted(100, Some(5.0), at(start, 12.0));
        assert!((l.rate() - 270.0).abs() < 1e-9);
    }

    #[test]
    fn a_429_backs_off_from_the_observed_rate_not_blindly() {
        let start = Instant::now();
        let mut l = LimitLearner::new(1000.0, start);
        // 300 batches accepted over the last second, then a 429.
        for i in 0..3 {
            l.on_accepted(100, None, at(start, 0.1 + f64::from(i) * 0.3));
        }
        l.on_rate_limited(Some(Duration::from_secs(1)), false, at(start, 1.0));
        assert!((l.rate() - 300.0 * (1.0 - DECREASE_ON_429)).abs() < 1e-9);
        // More 429s of requests already in flight: one decrease per cooldown.
        l.on_rate_limited(Some(Duration::from_secs(1)), false, at(start, 1.01));
        assert!((l.rate() - 255.0).abs() < 1e-9);
        // Nothing accepted since the gate: halve.
        l.on_rate_limited(Some(Duration::from_secs(1)), false, at(start, 2.5));
        assert!((l.rate() - 127.5).abs() < 1e-9);
    }

    #[test]
    fn the_climb_is_slow_near_the_remembered_ceiling() {
        let start = Instant::now();
        let mut l = LimitLearner::new(1000.0, start);
        for i in 0..3 {
            l.on_accepted(100, None, at(start, 0.1 + f64::from(i) * 0.3));
        }
        // Ceiling 300, restart at 255 once the 1 s gate opens.
        l.on_rate_limited(Some(Duration::from_secs(1)), false, at(start, 1.0));
        let mut rates = Vec::new();
        for i in 0..=80 {
            let secs = 2.0 + f64::from(i) * 0.5;
            l.on_accepted(100, Some(30.0), at(start, secs));
            rates.push((secs, l.rate()));
            if (l.rate() - 300.0) > 1.0 && l.rate() < 330.0 {
                // Probing just above the ceiling is not learned yet.
                assert!((l.learned().unwrap().rate - 300.0).abs() < 1e-9);
            }
        }
        let rate_at = |s: f64| rates.iter().find(|(t, _)| *t >= s).map_or(0.0, |(_, r)| *r);
        // Concave: most of the way back within half of K, then flat near 300.
        assert!(rate_at(12.0) > 290.0, "{}", rate_at(12.0));
        assert!(rate_at(21.0) <= 300.0 + 1e-9);
        assert!((rate_at(25.0) - 300.0).abs() < 1.0, "{}", rate_at(25.0));
        // Convex above it: probing for a raised limit.
        assert!(rate_at(42.0) > 305.0, "{}", rate_at(42.0));
    }

    #[test]
    fn high_usage_shrinks_once_per_cooldown_and_mid_usage_holds() {
        let start = Instant::now();
        let mut l = LimitLearner::new(100.0, start);
        // A train of high readings within one cooldown is one decrease (the
        // direct estimate, 100 batches / 85 % and up, stays above the rate).
        for i in 0..10 {
            l.on_accepted(100, Some(85.0), at(start, f64::from(i) * 0.01));
        }
        assert!((l.rate() - 90.0).abs() < 1e-9);
        l.on_accepted(100, Some(60.0), at(start, 5.0));
        assert!((l.rate() - 90.0).abs() < 1e-9, "50–80 % holds");
    }

    #[test]
    fn never_above_the_configured_rate_nor_under_the_floor() {
        let start = Instant::now();
        let mut l = LimitLearner::new(270.0, start);
        for i in 0..100 {
            l.on_rate_limited(None, false, at(start, f64::from(i) * 2.0));
        }
        assert!((l.rate() - 270.0 * MIN_RATE_SHARE).abs() < 1e-9);
        for i in 0..2000 {
            l.on_accepted(1, None, at(start, 200.0 + f64::from(i)));
            assert!(l.rate() <= 270.0);
        }
        assert!((l.rate() - 270.0).abs() < 1e-9);
    }

    #[test]
    fn a_seed_starts_the_run_at_the_learned_rate() {
        let start = Instant::now();
        let learned = LearnedLimit {
            rate: 270.0,
            learned_at: Utc::now(),
        };
        let mut l = LimitLearner::new(1000.0, start);
        l.seed(learned, start);
        assert!((l.rate() - 270.0).abs() < 1e-9);
        assert_eq!(l.learned(), Some(learned));
        // Above the configured rate: clamped; not a number: ignored.
        let mut l = LimitLearner::new(200.0, start);
        l.seed(learned, start);
        assert!((l.rate() - 200.0).abs() < 1e-9);
        l.seed(
            LearnedLimit {
                rate: f64::NAN,
                ..learned
            },
            start,
        );
        assert!((l.rate() - 200.0).abs() < 1e-9);
    }

    #[test]
    fn a_learned_limit_round_trips_through_json() {
        let learned = LearnedLimit {
            rate: 264.9,
            learned_at: Utc::now(),
        };
        let text = serde_json::to_string(&learned).unwrap();
        assert_eq!(
            serde_json::from_str::<LearnedLimit>(&text).unwrap(),
            learned
        );
    }

    #[test]
    fn the_budget_share_caps_the_effective_rate_only() {
        let start = Instant::now();
        let mut l = LimitLearner::new(1000.0, start);
        l.on_accepted(100, Some(37.0), start);
        let learned = l.rate();
        l.set_ceiling(Some(90.0));
        assert!((l.effective_rate() - 90.0).abs() < 1e-9);
        // Capped by the share, the learned rate does not climb on low usage.
        l.on_accepted(100, Some(10.0), at(start, 30.0));
        assert!((l.rate() - learned).abs() < 1e-9);
        // A share above the learned rate leaves the learned rate in force.
        l.set_ceiling(Some(500.0));
        assert!((l.effective_rate() - learned).abs() < 1e-9);
        l.set_ceiling(Some(0.0));
        assert_eq!(l.ceiling(), None);
    }
}
