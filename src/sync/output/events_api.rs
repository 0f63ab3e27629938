//! The Events API output: packs batches into requests, delivers them through
//! the feed's [`Deliverer`] (pacing, retries, bounded in flight), stores the
//! batches the server refused as dead letters, and records every finished
//! request in the spool's acknowledgement log.
//!
//! On a run that resumes a spool, batches the log already holds are skipped,
//! so only the requests that were in flight when the last run stopped go out
//! again (with the same `source_request_id`s, which mParticle dedupes).
//!
//! Incremental runs also commit a checkpoint as they go: the iterator value of
//! the last chunk all of whose rows are done. It is what the next run starts
//! from when the spool is gone (an extract cut short, or a spool too old).
//! Requests finish out of order, so "done" is the frontier below the oldest
//! request still in flight, never a row that merely was sent.
//!
//! In a dry run there is no deliverer: requests are packed and counted, which
//! is the forecast of what a real run would send.
//!
//! Event pipelines have two endpoints: historical batches (events older than
//! 30 days) are packed apart from the others and go to
//! `/v2/bulkevents/historical`, through the same deliverer (one pace, one
//! in-flight bound). The frontier counts both packers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;

use crate::config::model::IteratorDataType;
use crate::mapping::EncodedBatch;
use crate::sink::delivery::{Deliverer, RequestOutcome};
use crate::sink::{DeliveryError, PackedRequest, RequestPacker};
use crate::state::{DeadLetterKind, NewDeadLetter};
use crate::sync::spool::acks::BatchKey;
use crate::sync::spool::{AckLog, AckSet};
use crate::sync::{window, SyncError};
use crate::telemetry::events;
use crate::telemetry::progress::RunProgress;

use super::dead_letters::DeadLetterStore;
use super::{RunEnd, RunOutput, Tally, Transformed};
use crate::sync::redeliver::Superseded;

/// A request's dead letters of earlier runs that its batches supersede: the
/// batch's id, and the letters for the same profile.
type Supersedes = Vec<(String, Vec<i64>)>;

/// A finished request: its number, batch range, body size, the letters it
/// supersedes, and its outcome.
struct Finished {
    number: u64,
    first: BatchKey,
    last: BatchKey,
    bytes: usize,
    supersedes: Supersedes,
    result: Result<Result<RequestOutcome, DeliveryError>, JoinError>,
}

/// Where an incremental run commits checkpoints.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    /// The iterator column.
    pub column: String,
    /// Its type.
    pub data_type: IteratorDataType,
    /// Commit at most every this many rows.
    pub every_rows: u64,
}

/// What the output needs besides the deliverer.
#[derive(Debug)]
pub struct EventsApiSettings {
    /// Sends the requests; `None` in a dry run (count only).
    pub deliverer: Option<Deliverer>,
    /// Refused batches go here.
    pub dead_letters: Option<DeadLetterStore>,
    /// The spool's log of finished requests (runs that deliver from a spool).
    pub ack_log: Option<AckLog>,
    /// Batches already done by an earlier run of the same spool.
    pub already_done: AckSet,
    /// Dead letters of earlier runs, retired when a newer send to the same
    /// profile is acknowledged.
    pub superseded: Superseded,
    /// Checkpoints, for incremental runs that move the watermark.
    pub checkpoints: Option<Checkpoints>,
    /// Shutdown: in-flight requests get `grace` to finish, then are abandoned.
    pub shutdown: CancellationToken,
    /// How long in-flight requests may take once shutdown was asked.
    pub grace: Duration,
    /// Live counters.
    pub progress: Arc<RunProgress>,
    /// This run's share of its feed's budget, held while the output lives.
    pub budget: Option<crate::sync::budget::BudgetShare>,
}

/// The Events API as a run output.
pub struct EventsApi {
    settings: EventsApiSettings,
    /// One packer per endpoint: `/v2/bulkevents`, then `/historical`.
    packers: [RequestPacker; 2],
    /// First and last batch in each packer.
    pending: [Option<(BatchKey, BatchKey)>; 2],
    /// Dead letters each packer's batches supersede.
    pending_supersedes: [Supersedes; 2],
    in_flight: FuturesUnordered<BoxFuture<'static, Finished>>,
    /// How to stop each request still in flight, by number: a run that ends
    /// abandons them, and must not go on sending in the background.
    aborts: HashMap<u64, tokio::task::AbortHandle>,
    /// Requests submitted so far (their numbers).
    submitted: u64,
    /// First row of each request in flight (a multiset), for the frontier.
    in_flight_rows: BTreeMap<u64, u32>,
    /// Highest row handed to this output.
    last_row: u64,
    /// (last row of a chunk, iterator value of that row), oldest first.
    marks: VecDeque<(u64, String)>,
    /// The checkpoint committed last and the frontier row it stood for.
    committed: Option<(u64, String)>,
    requests: u64,
    /// Of which to `/v2/bulkevents/historical`.
    historical_requests: u64,
    request_bytes: u64,
    batches_acknowledged: u64,
    batches_skipped: u64,
    dead_letters: u64,
    /// Dead letters retired by newer sends.
    retired: u64,
    dead_rows: Vec<u64>,
}

impl std::fmt::Debug for EventsApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsApi")
            .field("requests", &self.requests)
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl EventsApi {
    /// A new output.
    pub fn new(settings: EventsApiSettings) -> Self {
        Self {
            settings,
            packers: [RequestPacker::default(), RequestPacker::default()],
            pending: [None, None],
            pending_supersedes: [Vec::new(), Vec::new()],
            in_flight: FuturesUnordered::new(),
            aborts: HashMap::new(),
            submitted: 0,
            in_flight_rows: BTreeMap::new(),
            last_row: 0,
            marks: VecDeque::new(),
            committed: None,
            requests: 0,
            historical_requests: 0,
            request_bytes: 0,
            batches_acknowledged: 0,
            batches_skipped: 0,
            dead_letters: 0,
            retired: 0,
            dead_rows: Vec::new(),
        }
    }

    fn push(
        &mut self,
        batch: &EncodedBatch,
    ) -> Option<(PackedRequest, BatchKey, BatchKey, Supersedes)> {
        let key = (batch.row, batch.part);
        let matched = self
            .settings
            .superseded
            .letters_for(&batch.json)
            .map(|ids| (batch.source_request_id.clone(), ids.to_vec()));
        let lane = usize::from(batch.historical);
        let full = self.packers[lane].push(batch);
        let range = self.pending[lane].take();
        self.pending[lane] = Some(match (&full, range) {
            (None, Some((first, _))) => (first, key),
            _ => (key, key),
        });
        let done = full.zip(range).map(|(r, (first, last))| {
            (
                r,
                first,
                last,
                std::mem::take(&mut self.pending_supersedes[lane]),
            )
        });
        self.pending_supersedes[lane].extend(matched);
        done
    }

    /// Hand a request to the deliverer (waiting for an in-flight slot: the
    /// backpressure that reaches the transform), or only count it in a dry run.
    async fn send(
        &mut self,
        request: PackedRequest,
        first: BatchKey,
        last: BatchKey,
        supersedes: Supersedes,
    ) -> Result<(), SyncError> {
        self.requests += 1;
        self.historical_requests += u64::from(request.historical);
        self.request_bytes += request.body.len() as u64;
        let Some(deliverer) = self.settings.deliverer.clone() else {
            return Ok(());
        };
        let bytes = request.body.len();
        // Counted before submitting: a request that never went out holds the
        // frontier back as much as one still in flight.
        *self.in_flight_rows.entry(first.0).or_default() += 1;
        // Waiting for a slot is where a run spends most of its time at the
        // feed's pace: shutdown must not wait behind the requests in flight.
        let shutdown = self.settings.shutdown.clone();
        let handle = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                return Err(SyncError::Interrupted { checkpoint: None });
            }
            handle = deliverer.submit(request) => handle?,
        };
        self.submitted += 1;
        let number = self.submitted;
        self.aborts.insert(number, handle.abort_handle());
        self.in_flight.push(
            handle
                .map(move |result| Finished {
                    number,
                    first,
                    last,
                    bytes,
                    supersedes,
                    result,
                })
                .boxed(),
        );
        self.collect_ready().await
    }

    /// Record every request that has finished, without waiting.
    async fn collect_ready(&mut self) -> Result<(), SyncError> {
        while let Some(Some(done)) = self.in_flight.next().now_or_never() {
            self.record(done).await?;
        }
        Ok(())
    }

    /// Record one finished request: acknowledged batches counted, refused ones
    /// stored as dead letters, then the range logged as done.
    async fn record(&mut self, finished: Finished) -> Result<(), SyncError> {
        let Finished {
            number,
            first,
            last,
            bytes,
            supersedes,
            result,
        } = finished;
        self.aborts.remove(&number);
        // A request that failed stays in the frontier's way: its rows were not
        // delivered, so no checkpoint may pass them.
        if matches!(result, Ok(Ok(_))) {
            if let Some(count) = self.in_flight_rows.get_mut(&first.0) {
                *count -= 1;
                if *count == 0 {
                    self.in_flight_rows.remove(&first.0);
                }
            }
        }
        let outcome = match result {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => return Err(SyncError::Delivery(e)),
            Err(join) => {
                return Err(SyncError::Internal(format!(
                    "a delivery task ended abnormally: {join}"
                )))
            }
        };
        events::RequestAcknowledged {
            batches: outcome.acknowledged.len(),
            bytes,
            status: 202,
        }
        .emit();
        let acknowledged = outcome.acknowledged.len() as u64;
        self.batches_acknowledged += acknowledged;
        self.settings.progress.add_batches(acknowledged);
        self.dead_rows
            .extend(outcome.dead_letters.iter().map(|d| d.row));
        if !outcome.dead_letters.is_empty() {
            let letters: Vec<NewDeadLetter> = outcome
                .dead_letters
                .iter()
                .map(|d| NewDeadLetter {
                    kind: DeadLetterKind::Batch,
                    reason: format!("http_{}", d.status),
                    message: Some(format!("row {}: {}", d.row, d.message)),
                    source_request_id: Some(d.source_request_id.clone()),
                    payload: String::from_utf8_lossy(&d.batch).into_owned(),
                })
                .collect();
            if let Some(store) = &self.settings.dead_letters {
                self.dead_letters += store.store(&letters).await?;
            }
        }
        if !supersedes.is_empty() {
            self.retire(&supersedes, &outcome.acknowledged).await?;
        }
        // Logged only once the outcome is stored: a crash in between re-sends
        // the request, which mParticle dedupes, rather than losing it.
        if let Some(log) = self.settings.ack_log.as_mut() {
            log.append(first, last)?;
        }
        Ok(())
    }

    /// Delete the dead letters whose profile a batch of this request updated
    /// with a newer value that was just acknowledged.
    async fn retire(
        &mut self,
        supersedes: &Supersedes,
        acknowledged: &[String],
    ) -> Result<(), SyncError> {
        let acknowledged: std::collections::HashSet<&str> =
            acknowledged.iter().map(String::as_str).collect();
        let ids: Vec<i64> = supersedes
            .iter()
            .filter(|(id, _)| acknowledged.contains(id.as_str()))
            .flat_map(|(_, letters)| letters.iter().copied())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        if let Some(store) = &self.settings.dead_letters {
            store.state.remove_dead_letters(&ids).await?;
            self.retired += ids.len() as u64;
        }
        Ok(())
    }

    /// Every row at or below this one is done (acknowledged or dead-lettered).
    fn frontier(&self) -> u64 {
        let oldest_in_flight = self.in_flight_rows.keys().next().copied();
        let oldest_pending = self
            .pending
            .iter()
            .flatten()
            .map(|(first, _)| first.0)
            .min();
        match (oldest_in_flight, oldest_pending) {
            (None, None) => self.last_row,
            (a, b) => a.into_iter().chain(b).min().unwrap_or(1).saturating_sub(1),
        }
    }

    /// Commit the checkpoint of the frontier when it moved `every_rows` past
    /// the last one (or whenever it moved, when `force`).
    async fn checkpoint(
        &mut self,
        tally: Option<&mut Tally>,
        force: bool,
    ) -> Result<(), SyncError> {
        let Some(every) = self.settings.checkpoints.as_ref().map(|c| c.every_rows) else {
            return Ok(());
        };
        let frontier = self.frontier();
        let since = self.committed.as_ref().map_or(0, |(row, _)| *row);
        if !force && frontier < since + every {
            return Ok(());
        }
        let mut value = None;
        while self.marks.front().is_some_and(|(row, _)| *row <= frontier) {
            value = self.marks.pop_front();
        }
        let Some((row, value)) = value else {
            return Ok(());
        };
        if let Some(store) = &self.settings.dead_letters {
            store.state.checkpoint(store.run_id, &value).await?;
        }
        events::CheckpointCommitted {
            value: &value,
            rows: row,
        }
        .emit();
        if let Some(tally) = tally {
            tally.checkpoint = Some(value.clone());
        }
        self.committed = Some((row, value));
        Ok(())
    }

    /// Wait for the requests in flight; once shutdown was asked, for at most
    /// the grace period, after which the rest are abandoned (they stay out of
    /// the log, so the next run sends them again).
    async fn drain(&mut self) -> Result<(), SyncError> {
        let shutdown = self.settings.shutdown.clone();
        let grace = self.settings.grace;
        let expired = async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::pin!(expired);
        let mut first_error = None;
        loop {
            tokio::select! {
                done = self.in_flight.next() => {
                    let Some(done) = done else { break };
                    if let Err(e) = self.record(done).await {
                        first_error.get_or_insert(e);
                    }
                }
                () = &mut expired => {
                    tracing::warn!(
                        abandoned = self.in_flight.len(),
                        "Shutdown grace period over; abandoning in-flight requests."
                    );
                    // Stopped, not just forgotten: their rows stay out of the
                    // log and behind the checkpoint, and go with the next run.
                    for (_, abort) in self.aborts.drain() {
                        abort.abort();
                    }
                    self.in_flight.clear();
                    break;
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl RunOutput for EventsApi {
    fn write<'a>(&'a mut self, chunk: &'a Transformed) -> BoxFuture<'a, Result<(), SyncError>> {
        async move {
            for batch in &chunk.batches {
                if self.settings.already_done.contains((batch.row, batch.part)) {
                    self.batches_skipped += 1;
                    continue;
                }
                if let Some((request, first, last, supersedes)) = self.push(batch) {
                    self.send(request, first, last, supersedes).await?;
                }
            }
            let rows = chunk.chunk.num_rows();
            if rows > 0 {
                self.last_row = chunk.first_row + rows as u64 - 1;
                if let Some(c) = &self.settings.checkpoints {
                    if let Some(v) =
                        window::value_in(&chunk.chunk, &c.column, rows - 1, c.data_type)
                    {
                        self.marks.push_back((self.last_row, window::to_text(&v)));
                    }
                }
            }
            self.collect_ready().await?;
            self.checkpoint(None, false).await
        }
        .boxed()
    }

    fn finish<'a>(
        &'a mut self,
        end: RunEnd,
        tally: &'a mut Tally,
    ) -> BoxFuture<'a, Result<(), SyncError>> {
        async move {
            // A run cut short leaves its last partial request to the next run
            // (from the spool); a complete one sends it.
            let mut result = Ok(());
            if end == RunEnd::Complete {
                for lane in 0..2 {
                    if let (Some(request), Some((first, last))) =
                        (self.packers[lane].take(), self.pending[lane])
                    {
                        self.pending[lane] = None;
                        let supersedes = std::mem::take(&mut self.pending_supersedes[lane]);
                        if result.is_ok() {
                            result = self.send(request, first, last, supersedes).await;
                        }
                    }
                }
            }
            let drained = self.drain().await;
            result = result.and(drained);
            if let Some(log) = self.settings.ack_log.as_mut() {
                if let Err(e) = log.sync() {
                    result = result.and(Err(e.into()));
                }
            }
            if let Err(e) = self.checkpoint(Some(tally), true).await {
                result = result.and(Err(e));
            }
            if let Some(d) = &self.settings.deliverer {
                let f = d.figures();
                let c = &mut tally.counts;
                c.requests_sent = f.requests;
                c.bytes_sent = f.bytes_sent;
                c.retries = f.retries;
                c.responses_429 = f.responses_429;
                c.responses_5xx = f.responses_5xx;
                c.timeouts = f.timeouts;
                c.rate_limit_wait_ms =
                    u64::try_from(f.rate_limit_wait.as_millis()).unwrap_or(u64::MAX);
            }
            tally.counts.batches_sent += self.batches_acknowledged;
            tally.counts.dead_letters += self.dead_letters;
            tally.requests += self.requests;
            tally.historical_requests += self.historical_requests;
            tally.request_bytes += self.request_bytes;
            tally.batches_already_done += self.batches_skipped;
            if self.retired > 0 {
                tracing::info!(
                    count = self.retired,
                    "Dead letters superseded by a newer acknowledged send of the same profile were deleted."
                );
            }
            tally.dead_lettered_rows.append(&mut self.dead_rows);
            if self.batches_skipped > 0 {
                tracing::info!(
                    batches = self.batches_skipped,
                    "Batches acknowledged by an earlier run of this spool were not sent again."
                );
            }
            result
        }
        .boxed()
    }
}
