//! One send budget per feed, shared by every run of every daemon.
//!
//! mParticle limits an account, not a connection: two runs sending to one
//! feed at its configured rate would together send twice the account's
//! limit. So a run that delivers registers as a sender to its feed in the
//! state store (renewed every [`REFRESH`], forgotten [`SENDER_TTL`] after its
//! last renewal, so a crashed sender's share comes back within seconds) and
//! paces at the feed's configured rate divided by the number of live
//! senders. Each sender's limiter still learns from the server's answers
//! (`X-mp-rate-limit-percentage-used`, 429s) and paces at the lower of what
//! it learned and its share.
//!
//! What a feed's only sender learned of the account's limit is kept in the
//! state store, so the next run starts there instead of at the configured
//! rate (a value older than [`LEARNED_MAX_AGE`] is not trusted).

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::model::Feed;
use crate::sink::limit_learner::LearnedLimit;
use crate::sink::Deliverer;
use crate::state::{LearnedRate, StateStore};

/// How often a sender renews itself and re-reads how many senders share.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long a sender counts without a renewal.
pub const SENDER_TTL: Duration = Duration::from_secs(5);
/// A learned limit older than this is not used to seed a run.
pub const LEARNED_MAX_AGE: chrono::Duration = chrono::Duration::days(7);
/// How often a sole sender saves what it learned while it runs.
const SAVE_EVERY: u32 = 30;

/// A run's place in its feed's budget; dropping it leaves the budget.
#[derive(Debug)]
pub struct BudgetShare {
    stop: CancellationToken,
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The name a feed's budget and learned limit are kept under: a hash of its
/// host and API key, never the key itself.
pub fn feed_key(base_url: &str, api_key: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"wsync-feed\0");
    h.update(base_url.as_bytes());
    h.update(b"\0");
    h.update(api_key.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// Join `feed`'s budget for run `run_id`, delivering through `deliverer`:
/// seed it with the limit learned earlier, set its share, and keep both up to
/// date until the returned share is dropped. `None` when the feed is not
/// paced (`rate_limit_per_sec = 0`). A state store that does not answer
/// costs only the sharing (the run paces at the configured rate), never the run.
pub async fn join(
    state: &StateStore,
    feed: &Feed,
    run_id: i64,
    deliverer: &Deliverer,
) -> Option<BudgetShare> {
    let configured = f64::from(feed.delivery.rate_limit_per_sec);
    if configured <= 0.0 {
        return None;
    }
    let key = feed_key(&feed.base_url, feed.api_key.expose());
    let sender = format!("{}:run{run_id}", crate::state::leases::process_id());
    match state.learned_rate(&key).await {
        Ok(Some(learned)) if state.now() - learned.learned_at < LEARNED_MAX_AGE => {
            deliverer.seed_learned_limit(LearnedLimit {
                rate: learned.rate,
                learned_at: learned.learned_at,
            });
            tracing::debug!(
                rate = learned.rate,
                "Pacing starts at the limit learned earlier."
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "Cannot read the feed's learned limit."),
    }
    let senders = refresh(state, &key, &sender, configured, deliverer, 1).await;
    let stop = CancellationToken::new();
    let task_stop = stop.clone();
    let (state, deliverer) = (state.clone(), deliverer.clone());
    tokio::spawn(async move {
        let mut senders = senders;
        let mut beats = 0u32;
        loop {
            tokio::select! {
                () = task_stop.cancelled() => break,
                () = tokio::time::sleep(REFRESH) => {}
            }
            senders = refresh(&state, &key, &sender, configured, &deliverer, senders).await;
            beats += 1;
            if beats % SAVE_EVERY == 0 {
                save_learned(&state, &key, senders, &deliverer).await;
            }
        }
        save_learned(&state, &key, senders, &deliverer).await;
        if let Err(e) = state.leave_feed(&key, &sender).await {
            tracing::debug!(error = %e, "Cannot leave the feed's budget; it expires.");
        }
    });
    Some(BudgetShare { stop })
}

/// Renew this sender and set its share; returns the number of senders
/// (`last`, and the share unchanged, when the state store does not answer).
async fn refresh(
    state: &StateStore,
    key: &str,
    sender: &str,
    configured: f64,
    deliverer: &Deliverer,
    last: u32,
) -> u32 {
    match state.feed_senders(key, sender, SENDER_TTL).await {
        Ok(n) => {
            deliverer.set_ceiling((n > 1).then(|| configured / f64::from(n)));
            n
        }
        Err(e) => {
            tracing::warn!(error = %e, "Cannot renew the feed's budget share; keeping the last one.");
            last
        }
    }
}

/// Keep what the limiter learned, when it was the feed's only sender (a
/// shared sender learns its share, not the account's limit).
async fn save_learned(state: &StateStore, key: &str, senders: u32, deliverer: &Deliverer) {
    if senders != 1 {
        return;
    }
    if let Some(learned) = deliverer.learned_limit() {
        let learned = LearnedRate {
            rate: learned.rate,
            learned_at: learned.learned_at,
        };
        if let Err(e) = state.set_learned_rate(key, learned).await {
            tracing::debug!(error = %e, "Cannot save the feed's learned limit.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feed_key_names_host_and_key_without_showing_the_key() {
        let a = feed_key("https://s2s.us1.mparticle.com", "us1-abcdef");
        assert_eq!(a.len(), 32);
        assert!(!a.contains("abcdef"));
        assert_eq!(a, feed_key("https://s2s.us1.mparticle.com", "us1-abcdef"));
        assert_ne!(a, feed_key("https://s2s.eu1.mparticle.com", "us1-abcdef"));
        assert_ne!(a, feed_key("https://s2s.us1.mparticle.com", "us1-other"));
    }
}
