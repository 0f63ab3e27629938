//! Dead letters: rows rejected before sending and batches the Events API
//! refused, kept per pipeline with reason, run id and time until they are
//! retried or purged.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{parse_time, StateError, StateStore};

/// What a dead letter holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterKind {
    /// A batch the Events API refused; it can be re-sent as is.
    Batch,
    /// A row rejected before sending; it needs a fix at the source.
    Row,
}

impl DeadLetterKind {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Batch => "batch",
            Self::Row => "row",
        }
    }
}

/// A dead letter to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeadLetter {
    /// Batch or row.
    pub kind: DeadLetterKind,
    /// Short reason (`http_400`, `no_identity`, …).
    pub reason: String,
    /// The server's message or the rejection detail.
    pub message: Option<String>,
    /// The batch's id, for batches.
    pub source_request_id: Option<String>,
    /// The batch JSON, or the row's values as JSON.
    pub payload: String,
}

/// A stored dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Row id.
    pub id: i64,
    /// Pipeline id.
    pub pipeline_id: String,
    /// The run that produced it.
    pub run_id: i64,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// Batch or row.
    pub kind: DeadLetterKind,
    /// Short reason.
    pub reason: String,
    /// Detail.
    pub message: Option<String>,
    /// Batch id.
    pub source_request_id: Option<String>,
    /// Batch JSON or row values.
    pub payload: String,
    /// Delivery attempts so far.
    pub attempts: i64,
}

impl StateStore {
    /// Store dead letters of a run.
    pub async fn add_dead_letters(
        &self,
        pipeline_id: &str,
        run_id: i64,
        now: DateTime<Utc>,
        letters: &[NewDeadLetter],
    ) -> Result<(), StateError> {
        let mut tx = self.write_tx().await?;
        for letter in letters {
            let content_key = match &letter.source_request_id {
                Some(id) => id.clone(),
                None => {
                    crate::mapping::batch::source_request_id(pipeline_id, letter.payload.as_bytes())
                }
            };
            sqlx::query(
                "INSERT INTO dead_letters (pipeline_id, run_id, created_at, kind, reason, message, \
                 source_request_id, payload, content_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (pipeline_id, kind, content_key) DO UPDATE SET \
                 run_id = excluded.run_id, reason = excluded.reason, message = excluded.message, \
                 attempts = dead_letters.attempts + 1",
            )
            .bind(pipeline_id)
            .bind(run_id)
            .bind(now.to_rfc3339())
            .bind(letter.kind.as_str())
            .bind(&letter.reason)
            .bind(&letter.message)
            .bind(&letter.source_request_id)
            .bind(&letter.payload)
            .bind(content_key)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Dead letters of a pipeline, oldest first; only batches when `kind` says so.
    pub async fn dead_letters(
        &self,
        pipeline_id: &str,
        kind: Option<DeadLetterKind>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<DeadLetter>, StateError> {
        let rows = sqlx::query(
            "SELECT * FROM dead_letters WHERE pipeline_id = $1 AND ($2 IS NULL OR kind = $2) \
             ORDER BY id LIMIT $3 OFFSET $4",
        )
        .bind(pipeline_id)
        .bind(kind.map(DeadLetterKind::as_str))
        .bind(i64::from(limit))
        .bind(i64::from(offset))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    id: row.try_get("id")?,
                    pipeline_id: row.try_get("pipeline_id")?,
                    run_id: row.try_get("run_id")?,
                    created_at: parse_time(row.try_get("created_at")?),
                    kind: if row.try_get::<&str, _>("kind")? == "batch" {
                        DeadLetterKind::Batch
                    } else {
                        DeadLetterKind::Row
                    },
                    reason: row.try_get("reason")?,
                    message: row.try_get("message")?,
                    source_request_id: row.try_get("source_request_id")?,
                    payload: row.try_get("payload")?,
                    attempts: row.try_get("attempts")?,
                })
            })
            .collect()
    }

    /// Count dead letters of a pipeline by kind: (batches, rows).
    pub async fn count_dead_letters(&self, pipeline_id: &str) -> Result<(u64, u64), StateError> {
        let row = sqlx::query(
            "SELECT COUNT(CASE WHEN kind = 'batch' THEN 1 END), \
             COUNT(CASE WHEN kind = 'row' THEN 1 END) FROM dead_letters WHERE pipeline_id = $1",
        )
        .bind(pipeline_id)
        .fetch_one(&self.pool)
        .await?;
        let batches: i64 = row.try_get(0)?;
        let rows: i64 = row.try_get(1)?;
        Ok((
            u64::try_from(batches).unwrap_or(0),
            u64::try_from(rows).unwrap_or(0),
        ))
    }

    /// Remove delivered dead letters.
    pub async fn remove_dead_letters(&self, ids: &[i64]) -> Result<(), StateError> {
        let mut tx = self.write_tx().await?;
        for id in ids {
            sqlx::query("DELETE FROM dead_letters WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Record another failed attempt on dead letters that were retried and refused again.
    pub async fn bump_dead_letters(&self, refused: &[(i64, String)]) -> Result<(), StateError> {
        let mut tx = self.write_tx().await?;
        for (id, message) in refused {
            sqlx::query(
                "UPDATE dead_letters SET attempts = attempts + 1, message = $1 WHERE id = $2",
            )
            .bind(message)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Delete every dead letter of a pipeline; returns how many.
    pub async fn purge_dead_letters(&self, pipeline_id: &str) -> Result<u64, StateError> {
        Ok(
            sqlx::query("DELETE FROM dead_letters WHERE pipeline_id = $1")
                .bind(pipeline_id)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn store_list_count_bump_remove_purge() {
        for t in crate::state::testing::stores().await {
            check(&t.store).await;
        }
    }

    async fn check(store: &StateStore) {
        let now = Utc::now();
        let letters = vec![
            NewDeadLetter {
                kind: DeadLetterKind::Batch,
                reason: "http_400".into(),
                message: Some("bad attribute".into()),
                source_request_id: Some("abc".into()),
                payload: "{}".into(),
            },
            NewDeadLetter {
                kind: DeadLetterKind::Row,
                reason: "no_identity".into(),
                message: None,
                source_request_id: None,
                payload: "{\"x\":1}".into(),
            },
        ];
        store.add_dead_letters("p", 6, now, &letters).await.unwrap();
        // The same letters from a later run are the same dead letters, tried again.
        store.add_dead_letters("p", 7, now, &letters).await.unwrap();
        assert_eq!(store.count_dead_letters("p").await.unwrap(), (1, 1));
        let batches = store
            .dead_letters("p", Some(DeadLetterKind::Batch), 10, 0)
            .await
            .unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].run_id, 7);
        assert_eq!(batches[0].source_request_id.as_deref(), Some("abc"));
        assert_eq!(batches[0].attempts, 2);
        store
            .bump_dead_letters(&[(batches[0].id, "still bad".into())])
            .await
            .unwrap();
        let all = store.dead_letters("p", None, 10, 0).await.unwrap();
        assert_eq!(all[0].attempts, 3);
        assert_eq!(all[0].message.as_deref(), Some("still bad"));
        store.remove_dead_letters(&[all[0].id]).await.unwrap();
        assert_eq!(store.count_dead_letters("p").await.unwrap(), (0, 1));
        assert_eq!(store.purge_dead_letters("p").await.unwrap(), 1);
        assert_eq!(store.count_dead_letters("other").await.unwrap(), (0, 0));
    }
}
