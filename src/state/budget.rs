//! The feeds' shared send budget: a feed's configured rate is a ceiling for
//! the whole account, so every run sending to it registers as a sender
//! (renewed while it sends) and takes an equal share of the rate; and what
//! the limiter learned of the account's real limit is kept per feed, so the
//! next run starts there.
//!
//! Feeds are named by a hash of their host and API key (see
//! `sync::budget`), never by the key.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{millis, StateError, StateStore};

/// The account limit learned for a feed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearnedRate {
    /// Batches per second.
    pub rate: f64,
    /// When it was learned.
    pub learned_at: DateTime<Utc>,
}

impl StateStore {
    /// Renew `sender` (a run of some daemon) as a sender to `feed` until
    /// `ttl` from now, and return how many senders it has now (this one
    /// included).
    pub async fn feed_senders(
        &self,
        feed: &str,
        sender: &str,
        ttl: std::time::Duration,
    ) -> Result<u32, StateError> {
        let now = millis(self.options.clock.now());
        let until = now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        sqlx::query(
            "INSERT INTO feed_senders (feed, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (feed, holder) DO UPDATE SET expires_at = excluded.expires_at",
        )
        .bind(feed)
        .bind(sender)
        .bind(until)
        .execute(&self.pool)
        .await?;
        // Old rows of senders long gone: a bounded table.
        sqlx::query("DELETE FROM feed_senders WHERE expires_at < $1")
            .bind(now - 3_600_000)
            .execute(&self.pool)
            .await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM feed_senders WHERE feed = $1 AND expires_at > $2",
        )
        .bind(feed)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(u32::try_from(n.max(1)).unwrap_or(u32::MAX))
    }

    /// Stop counting `sender` as a sender to `feed`.
    pub async fn leave_feed(&self, feed: &str, sender: &str) -> Result<(), StateError> {
        sqlx::query("DELETE FROM feed_senders WHERE feed = $1 AND holder = $2")
            .bind(feed)
            .bind(sender)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The limit learned for `feed`, if any.
    pub async fn learned_rate(&self, feed: &str) -> Result<Option<LearnedRate>, StateError> {
        let row = sqlx::query("SELECT rate, learned_at FROM feed_limits WHERE feed = $1")
            .bind(feed)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(LearnedRate {
                rate: r.try_get("rate")?,
                learned_at: super::parse_time(r.try_get("learned_at")?),
            })
        })
        .transpose()
    }

    /// Remember the limit learned for `feed`.
    pub async fn set_learned_rate(
        &self,
        feed: &str,
        learned: LearnedRate,
    ) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO feed_limits (feed, rate, learned_at) VALUES ($1, $2, $3) \
             ON CONFLICT (feed) DO UPDATE SET rate = excluded.rate, learned_at = excluded.learned_at",
        )
        .bind(feed)
        .bind(learned.rate)
        .bind(learned.learned_at.to_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
