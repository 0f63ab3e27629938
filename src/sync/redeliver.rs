//! Re-sending dead-lettered batches: at the start of a run (when the pipeline
//! keeps `retry_dead_letters`), and on demand with `wsync dead-letters retry`.
//! One routine for both: delivered letters are removed, refused ones stay with
//! one more attempt counted.
//!
//! A dead letter must never overwrite a newer value: once a later send of the
//! same profile (the same identities) is acknowledged, the older letter is
//! *superseded* and deleted ([`Superseded`]), so neither the next run nor
//! `wsync dead-letters retry` replays stale attributes over fresh ones.

use std::collections::{HashMap, HashSet};

use crate::mapping::EncodedBatch;
use crate::sink::delivery::Deliverer;
use crate::sink::RequestPacker;
use crate::state::{DeadLetterKind, StateStore};

use super::SyncError;

/// Dead-lettered batches re-sent at once, at most.
pub const MAX_DEAD_LETTER_RETRIES: u32 = 10_000;

/// What a re-send did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Redelivered {
    /// Letters acknowledged now, and removed.
    pub delivered: u64,
    /// Letters refused again (attempts counted up).
    pub refused: u64,
}

/// Re-send `pipeline`'s dead-lettered batches through `deliverer`.
pub async fn redeliver(
    state: &StateStore,
    pipeline: &str,
    deliverer: &Deliverer,
) -> Result<Redelivered, SyncError> {
    let letters = state
        .dead_letters(
            pipeline,
            Some(DeadLetterKind::Batch),
            MAX_DEAD_LETTER_RETRIES,
            0,
        )
        .await?;
    if letters.is_empty() {
        return Ok(Redelivered::default());
    }
    tracing::info!(count = letters.len(), "Re-sending dead-lettered batches.");
    let mut packer = RequestPacker::default();
    let mut handles = Vec::new();
    let mut submit_error = None;
    for letter in &letters {
        let batch = EncodedBatch {
            row: 0,
            part: 0,
            source_request_id: letter.source_request_id.clone().unwrap_or_default(),
            json: letter.payload.clone().into_bytes(),
            // An event batch keeps its endpoint: one whose events are all
            // older than 30 days goes to the historical one again.
            historical: crate::mapping::event::is_historical_batch(
                letter.payload.as_bytes(),
                chrono::Utc::now().timestamp_millis(),
            ),
        };
        if let Some(request) = packer.push(&batch) {
            match deliverer.submit(request).await {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    submit_error = Some(SyncError::Delivery(e));
                    break;
                }
            }
        }
    }
    if submit_error.is_none() {
        if let Some(request) = packer.take() {
            match deliverer.submit(request).await {
                Ok(handle) => handles.push(handle),
                Err(e) => submit_error = Some(SyncError::Delivery(e)),
            }
        }
    }
    // Every submitted request's outcome is recorded, even after an error.
    let mut delivered = HashSet::new();
    let mut refused = HashMap::new();
    let mut first_error = submit_error;
    for handle in handles {
        match handle.await {
            Ok(Ok(outcome)) => {
                delivered.extend(outcome.acknowledged);
                for d in outcome.dead_letters {
                    refused.insert(
                        d.source_request_id,
                        format!("HTTP {}: {}", d.status, d.message),
                    );
                }
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(SyncError::Delivery(e));
            }
            Err(e) => {
                first_error.get_or_insert(SyncError::Internal(format!(
                    "a delivery task ended abnormally: {e}"
                )));
            }
        }
    }
    let mut removed = Vec::new();
    let mut bumped = Vec::new();
    for letter in &letters {
        let Some(id) = &letter.source_request_id else {
            continue;
        };
        if delivered.contains(id) {
            removed.push(letter.id);
        } else if let Some(message) = refused.remove(id) {
            bumped.push((letter.id, message));
        }
    }
    state.remove_dead_letters(&removed).await?;
    state.bump_dead_letters(&bumped).await?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(Redelivered {
            delivered: removed.len() as u64,
            refused: bumped.len() as u64,
        }),
    }
}

/// Who a batch is for: its identities, device ids and mpid, hashed and sorted.
/// `None` for JSON that is not a batch.
pub fn profile_key(batch_json: &[u8]) -> Option<Vec<u128>> {
    let ids = crate::resolve::RowIdentities::from_batch(batch_json).ok()?;
    let mut key: Vec<u128> = ids.key_hashes().collect();
    if key.is_empty() {
        return None;
    }
    key.sort_unstable();
    Some(key)
}

/// The pipeline's batch dead letters by the profile they are for, so that a
/// newer acknowledged send to that profile can retire them.
#[derive(Debug, Default)]
pub struct Superseded {
    by_profile: HashMap<Vec<u128>, Vec<i64>>,
}

impl Superseded {
    /// Load the dead letters left after the run's re-send.
    pub async fn load(state: &StateStore, pipeline: &str) -> Result<Self, SyncError> {
        let letters = state
            .dead_letters(
                pipeline,
                Some(DeadLetterKind::Batch),
                MAX_DEAD_LETTER_RETRIES,
                0,
            )
            .await?;
        let mut by_profile: HashMap<Vec<u128>, Vec<i64>> = HashMap::new();
        for letter in letters {
            if let Some(key) = profile_key(letter.payload.as_bytes()) {
                by_profile.entry(key).or_default().push(letter.id);
            }
        }
        Ok(Self { by_profile })
    }

    /// Nothing to retire: batches need not be looked at.
    pub fn is_empty(&self) -> bool {
        self.by_profile.is_empty()
    }

    /// The letters a send of `batch_json` would retire once acknowledged.
    pub fn letters_for(&self, batch_json: &[u8]) -> Option<&[i64]> {
        if self.by_profile.is_empty() {
            return None;
        }
        let key = profile_key(batch_json)?;
        self.by_profile.get(&key).map(Vec::as_slice)
    }
}
