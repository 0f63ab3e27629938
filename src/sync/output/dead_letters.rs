//! Rejected rows kept as dead letters in the state store (kind `row`), so an
//! operator sees them with `wsync dead-letters` after the run files are gone.
//! Batches the Events API refused are stored by the Events API output.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt as _;

use crate::clock::Clock;
use crate::state::{DeadLetterKind, NewDeadLetter, StateStore};
use crate::sync::SyncError;

use super::{RunEnd, RunOutput, Tally, Transformed};

/// Where a run stores its dead letters.
#[derive(Debug, Clone)]
pub struct DeadLetterStore {
    /// The state store.
    pub state: StateStore,
    /// Pipeline id.
    pub pipeline: String,
    /// Run id.
    pub run_id: i64,
    /// Time, for `created_at`.
    pub clock: Arc<dyn Clock>,
}

impl DeadLetterStore {
    /// Store `letters`; returns how many.
    pub async fn store(&self, letters: &[NewDeadLetter]) -> Result<u64, SyncError> {
        if letters.is_empty() {
            return Ok(0);
        }
        self.state
            .add_dead_letters(&self.pipeline, self.run_id, self.clock.now(), letters)
            .await?;
        Ok(letters.len() as u64)
    }
}

/// The rejected rows of a run, as dead letters.
#[derive(Debug)]
pub struct RowDeadLetters {
    store: DeadLetterStore,
    stored: u64,
}

impl RowDeadLetters {
    /// Store into `store`.
    pub fn new(store: DeadLetterStore) -> Self {
        Self { store, stored: 0 }
    }
}

impl RunOutput for RowDeadLetters {
    fn write<'a>(&'a mut self, chunk: &'a Transformed) -> BoxFuture<'a, Result<(), SyncError>> {
        async move {
            let letters: Vec<NewDeadLetter> = chunk
                .rejected
                .iter()
                .map(|r| NewDeadLetter {
                    kind: DeadLetterKind::Row,
                    reason: r.reason.as_str().to_owned(),
                    message: Some(format!("row {}: {}", r.row, r.detail)),
                    source_request_id: None,
                    payload: serde_json::Value::Object(r.values.clone()).to_string(),
                })
                .collect();
            self.stored += self.store.store(&letters).await?;
            Ok(())
        }
        .boxed()
    }

    fn finish<'a>(
        &'a mut self,
        _end: RunEnd,
        tally: &'a mut Tally,
    ) -> BoxFuture<'a, Result<(), SyncError>> {
        tally.counts.dead_letters += self.stored;
        async { Ok(()) }.boxed()
    }
}
