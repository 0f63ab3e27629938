//! `wsync daemon`: runs every active pipeline on its schedule until shutdown.
//!
//! Each pass ([`Daemon::tick`]) asks [`plan::plan`] what is due for every
//! pipeline that is not paused and not running, and starts one task per due
//! pipeline that carries out its runs oldest first (a catch-up stops at the
//! first run that does not succeed). Runs of different pipelines overlap up to
//! `[daemon] max_concurrent_runs`; one pipeline never runs twice at once,
//! inside this process (the task set) or across processes (the state store's
//! lock). On shutdown no run starts, running ones stop at their next chunk,
//! deliver what they read within the grace period, record a checkpoint and end
//! `interrupted`; the next start resumes them.
//!
//! Slots the schedules leave free take chunks of parallel backfills
//! (`wsync backfill --chunks`, see [`crate::sync::backfill`]), one chunk a
//! slot, under each chunk's own lease.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::FutureExt;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::config::model::InputProtection;
use crate::state::{RunState, ScheduleHistory, StateError};
use crate::sync::{backfill, RunKind, SyncContext, SyncError};
use crate::telemetry::events;

pub mod plan;
pub mod status;

/// Longest sleep between passes, so `wsync pause`/`resume` from another
/// process and a wall-clock jump are noticed without a signal.
const MAX_SLEEP: std::time::Duration = std::time::Duration::from_secs(30);

/// How often an idle daemon looks for backfill chunks it could take.
const CHUNK_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the daemon could not do something.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The pipeline is running already.
    #[error("pipeline `{0}` is already in progress; wait for its run to finish")]
    AlreadyRunning(String),
    /// The pipeline is paused.
    #[error("pipeline `{0}` is paused; resume it first (`wsync resume {0}`)")]
    Paused(String),
    /// No such pipeline, or the run was refused.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// State store failure.
    #[error(transparent)]
    State(#[from] StateError),
}

/// The scheduler of one process.
#[derive(Debug, Clone)]
pub struct Daemon {
    ctx: SyncContext,
    started: DateTime<Utc>,
    running: Arc<Mutex<BTreeMap<String, JoinHandle<()>>>>,
    permits: Arc<Semaphore>,
    /// Woken when a pipeline's task ends, so the next pass need not wait.
    wake: Arc<Notify>,
    /// Pipelines whose last scheduled run could not even start (refused SQL,
    /// a bad watermark): not retried before this time, so a broken pipeline
    /// costs one log line per few minutes, not one per pass.
    hold: Arc<Mutex<BTreeMap<String, DateTime<Utc>>>>,
    /// The schedule history of `only_read` pipelines, whose dry runs leave no
    /// record in the state store: kept for the life of the process.
    dry: Arc<Mutex<BTreeMap<String, ScheduleHistory>>>,
    /// Backfill chunks this daemon has picked and not finished.
    chunks: Arc<backfill::ChunkSet>,
}

/// How long a pipeline whose run could not start is left alone.
const HOLD_AFTER_REFUSAL: chrono::Duration = chrono::Duration::minutes(5);

impl Daemon {
    /// A daemon over `ctx`; its clock's current time anchors cron schedules
    /// that never ran.
    pub fn new(ctx: SyncContext) -> Self {
        let started = ctx.clock.now();
        let permits = Arc::new(Semaphore::new(ctx.project.daemon.max_concurrent_runs));
        Self {
            ctx,
            started,
            running: Arc::default(),
            permits,
            wake: Arc::default(),
            hold: Arc::default(),
            dry: Arc::default(),
            chunks: Arc::default(),
        }
    }

    /// Whether `pipeline` is paused, in its file or from the command line.
    pub async fn is_paused(&self, pipeline: &str) -> Result<bool, SchedulerError> {
        Ok(is_paused(&self.ctx.state, self.ctx.pipeline(pipeline)?).await?)
    }

    /// Pipelines with a task in this process.
    pub fn running(&self) -> Vec<String> {
        self.lock_running().keys().cloned().collect()
    }

    /// One pass: start what is due now. Returns the earliest next due time.
    pub async fn tick(&self) -> Result<Option<DateTime<Utc>>, SchedulerError> {
        self.reap_finished();
        let now = self.ctx.clock.now();
        let mut earliest: Option<DateTime<Utc>> = None;
        for (id, pipeline) in &self.ctx.project.pipelines {
            if self.ctx.shutdown.is_cancelled() {
                break;
            }
            if self.lock_running().contains_key(id) || self.is_paused(id).await? {
                continue;
            }
            if self.held(id).is_some_and(|until| now < until) {
                continue;
            }
            // Another process (`wsync run`, another daemon) holds it: not
            // ours to plan now, but look again when its lease would expire
            // (its holder may be dead). A lease of this process with no task
            // running the pipeline is stuck (its run panicked, or recording
            // its outcome failed): release it.
            if let Some(holder) = self.ctx.state.lease_holder(id).await? {
                if !holder.own {
                    let expiry = holder.expires_at + chrono::Duration::milliseconds(100);
                    earliest = Some(earliest.map_or(expiry, |e| e.min(expiry)));
                    continue;
                }
                // Looked again after the read: a trigger may have started the
                // pipeline since the check above, and its task (in the set
                // before it takes the lease) holds a live lease, not a stuck one.
                if self.lock_running().contains_key(id) {
                    continue;
                }
                self.release_stuck_lock(id).await?;
            }
            let history = if pipeline.input_protection == InputProtection::OnlyRead {
                lock(&self.dry).get(id).cloned().unwrap_or_default()
            } else {
                self.ctx.state.schedule_history(id).await?
            };
            let plan = plan::plan(pipeline, &history, self.started, now);
            if let Some(next) = plan.next {
                events::NextRunPlanned {
                    pipeline: id,
                    at: &next.to_rfc3339(),
                }
                .emit();
                earliest = Some(earliest.map_or(next, |e| e.min(next)));
            }
            if !plan.due.is_empty() {
                let runs = plan
                    .due
                    .into_iter()
                    .map(|interval| RunKind::Scheduled {
                        interval,
                        after: Some(history.last_scheduled_id),
                        after_cut_off: matches!(
                            history.last_scheduled_state,
                            Some(RunState::Running | RunState::Interrupted)
                        ),
                    })
                    .collect();
                self.spawn(id.clone(), runs);
            }
        }
        if let Err(e) = self.start_backfill_chunks().await {
            tracing::error!(error = %e, "Cannot look for backfill chunks to run.");
        }
        Ok(earliest)
    }

    /// Fill the slots the schedules left free with chunks of parallel
    /// backfills (`wsync backfill --chunks`), one chunk per slot. Schedules
    /// go first: every task of this daemon (a pipeline's, which may still be
    /// waiting for its permit, or a chunk's) counts as a slot taken.
    async fn start_backfill_chunks(&self) -> Result<(), SchedulerError> {
        self.reap_finished();
        let max = self.ctx.project.daemon.max_concurrent_runs;
        while !self.ctx.shutdown.is_cancelled() && self.lock_running().len() < max {
            // Fewer tasks than slots: a permit is free, and stays this
            // chunk's (taken here, not in the task, so that it is not counted
            // free twice).
            let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                return Ok(());
            };
            let now = self.ctx.clock.now();
            let held = |c: &crate::state::Chunk| {
                let key = crate::state::chunk_lease_key(&c.pipeline_id, c.id);
                self.held(&key).is_some_and(|until| now < until)
            };
            let Some(chunk) = backfill::next_chunk(&self.ctx, None, &self.chunks, held).await?
            else {
                return Ok(());
            };
            self.spawn_chunk(chunk, permit);
        }
        Ok(())
    }

    /// Run one backfill chunk on a thread of its own (as [`Self::spawn_with`]
    /// does for a pipeline), keyed in the task set by the chunk's lease key.
    fn spawn_chunk(&self, chunk: crate::state::Chunk, permit: tokio::sync::OwnedSemaphorePermit) {
        let ctx = self.ctx.clone();
        let (wake, busy, hold) = (
            Arc::clone(&self.wake),
            Arc::clone(&self.chunks),
            Arc::clone(&self.hold),
        );
        let key = crate::state::chunk_lease_key(&chunk.pipeline_id, chunk.id);
        let task_key = key.clone();
        let runtime = tokio::runtime::Handle::current();
        let mut running = self.lock_running();
        let handle = tokio::task::spawn_blocking(move || {
            runtime.block_on(async move {
                let result = AssertUnwindSafe(backfill::run_chunk(&ctx, &chunk))
                    .catch_unwind()
                    .await;
                if let Ok(Ok(report)) = &result {
                    if report.record.state == RunState::Failed {
                        let pause = chrono::Duration::from_std(backfill::RETRY_PAUSE)
                            .unwrap_or_default();
                        lock(&hold).insert(key.clone(), ctx.clock.now() + pause);
                    }
                }
                let stuck = match &result {
                    Ok(Ok(_)) => None,
                    Ok(Err(SyncError::State(
                        StateError::InProgress { .. } | StateError::ChunkClosed { .. },
                    ))) => None,
                    Ok(Err(e)) => Some(format!("the run ended without recording an outcome: {e}")),
                    Err(panic) => Some(format!("the run panicked: {}", panic_message(panic.as_ref()))),
                };
                if let Some(reason) = stuck {
                    tracing::error!(pipeline = %chunk.pipeline_id, backfill = chunk.id.backfill,
                        chunk = chunk.id.chunk, reason = %reason, "Backfill chunk did not finish.");
                    if let Err(e) = release_stuck_lock(&ctx, &key, &reason).await {
                        tracing::error!(lease = %key, error = %e, "Cannot release the chunk's lease.");
                    }
                    // Not picked again at once: the same refusal would follow.
                    lock(&hold).insert(key.clone(), ctx.clock.now() + HOLD_AFTER_REFUSAL);
                }
                busy.remove(chunk.id);
                backfill::sweep_spools(&ctx).await;
                drop(permit);
                wake.notify_one();
            });
        });
        running.insert(task_key, handle);
    }

    /// Start an on-demand run of `pipeline` now (refused while it runs or is
    /// paused).
    pub async fn trigger(&self, pipeline: &str) -> Result<(), SchedulerError> {
        self.trigger_with(pipeline, false).await
    }

    /// [`Self::trigger`]; with `full_resync`, a `[diff]` pipeline sends every
    /// row this run, as `wsync run --full-resync` does.
    pub async fn trigger_with(
        &self,
        pipeline: &str,
        full_resync: bool,
    ) -> Result<(), SchedulerError> {
        self.ctx.pipeline(pipeline)?;
        // Paused first: that is the answer whatever else is going on (a run
        // of the pipeline may still be closing out on its thread).
        if self.is_paused(pipeline).await? {
            return Err(SchedulerError::Paused(pipeline.to_owned()));
        }
        self.reap_finished();
        if self.lock_running().contains_key(pipeline) {
            return Err(SchedulerError::AlreadyRunning(pipeline.to_owned()));
        }
        match self.ctx.state.lease_holder(pipeline).await? {
            // A pass may have started it since the check above (see `tick`).
            Some(holder) if holder.own && self.lock_running().contains_key(pipeline) => {
                return Err(SchedulerError::AlreadyRunning(pipeline.to_owned()));
            }
            Some(holder) if holder.own => self.release_stuck_lock(pipeline).await?,
            Some(_) => return Err(SchedulerError::AlreadyRunning(pipeline.to_owned())),
            None => {}
        }
        self.spawn_with(pipeline.to_owned(), vec![RunKind::Manual], full_resync);
        Ok(())
    }

    /// Pass after pass until shutdown, then wait for the running pipelines to
    /// stop (they observe the same shutdown token).
    pub async fn run(self) -> Result<(), SchedulerError> {
        let scheduled = self
            .ctx
            .project
            .pipelines
            .values()
            .filter(|p| {
                !p.paused && !matches!(p.schedule, crate::config::model::Schedule::OnDemand)
            })
            .count();
        events::DaemonStarted {
            scheduled,
            pipelines: self.ctx.project.pipelines.len(),
        }
        .emit();
        // A full pass when something is due or a task ended; in between, a
        // look for backfill chunks every CHUNK_POLL (one cheap query), so a
        // new backfill or a chunk whose holder died is taken up within
        // seconds without planning every pipeline that often.
        let mut full_pass = true;
        let mut next_pass = self.ctx.clock.now();
        while !self.ctx.shutdown.is_cancelled() {
            if full_pass || self.ctx.clock.now() >= next_pass {
                let next = match self.tick().await {
                    Ok(next) => next,
                    Err(e) => {
                        // The state store may be briefly locked or the disk
                        // full; try again on the next pass rather than stopping.
                        tracing::error!(error = %e, "Scheduling pass failed.");
                        None
                    }
                };
                let longest = self.ctx.clock.now()
                    + chrono::Duration::from_std(MAX_SLEEP).unwrap_or_default();
                next_pass = next.map_or(longest, |n| n.min(longest));
            } else if let Err(e) = self.start_backfill_chunks().await {
                tracing::error!(error = %e, "Cannot look for backfill chunks to run.");
            }
            let wait = (next_pass - self.ctx.clock.now())
                .to_std()
                .unwrap_or_default()
                .min(CHUNK_POLL);
            full_pass = tokio::select! {
                () = self.ctx.shutdown.cancelled() => false,
                () = tokio::time::sleep(wait) => false,
                () = self.wake.notified() => true,
            };
        }
        self.reap_finished();
        let handles: Vec<JoinHandle<()>> = {
            let mut running = self.lock_running();
            events::ShutdownRequested {
                running: running.len(),
                grace_secs: self.ctx.project.daemon.shutdown_grace.as_secs(),
            }
            .emit();
            std::mem::take(&mut *running).into_values().collect()
        };
        for handle in handles {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "A pipeline task ended abnormally.");
            }
        }
        Ok(())
    }

    /// Wait until no pipeline task of this daemon runs (tests, and `once`
    /// daemons that want to exit when idle).
    pub async fn wait_idle(&self) {
        // The tasks stay in `running` until they end: a pass running meanwhile
        // must still see them (it would take their live lock for a stuck one).
        loop {
            self.reap_finished();
            if self.lock_running().is_empty() {
                return;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
            }
        }
    }

    fn spawn(&self, pipeline: String, runs: Vec<RunKind>) {
        self.spawn_with(pipeline, runs, false);
    }

    fn spawn_with(&self, pipeline: String, runs: Vec<RunKind>, full_resync: bool) {
        let mut ctx = self.ctx.clone();
        ctx.full_resync = full_resync;
        let permits = Arc::clone(&self.permits);
        let wake = Arc::clone(&self.wake);
        let hold = Arc::clone(&self.hold);
        let dry = Arc::clone(&self.dry);
        let id = pipeline.clone();
        // Each pipeline's runs get a thread of their own, driven by the shared
        // runtime: a run's future is not provably `Send` for every lifetime
        // (rustc through sqlx's executor bounds), and a thread per running
        // pipeline also maps rows of different pipelines in parallel.
        let runtime = tokio::runtime::Handle::current();
        // Held until the handle is in the set: a pass must never see the run's
        // lock (taken as soon as the task starts) without its task, or it would
        // release a live lock as stuck. The task never touches this set.
        let mut running = self.lock_running();
        let handle = tokio::task::spawn_blocking(move || {
            runtime.block_on(async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                // Each run of a catch-up follows the one before it.
                let mut after = None;
                for mut kind in runs {
                    if let (
                        RunKind::Scheduled {
                            after: claim,
                            after_cut_off,
                            ..
                        },
                        Some(prev),
                    ) = (&mut kind, after)
                    {
                        *claim = Some(prev);
                        *after_cut_off = false;
                    }
                    if ctx.shutdown.is_cancelled() {
                        break;
                    }
                    // The wait for a slot may have been long: when another
                    // daemon ran this fire (or runs the pipeline) meanwhile,
                    // give the slot back at the cost of two reads instead of
                    // a run's start.
                    if taken_meanwhile(&ctx, &id, &kind).await {
                        break;
                    }
                    let interval = match &kind {
                        RunKind::Scheduled { interval, .. } => *interval,
                        _ => None,
                    };
                    let scheduled = matches!(kind, RunKind::Scheduled { .. });
                    // A panic in a run must not end this task with the
                    // pipeline's lock still held by the live daemon.
                    let result = match AssertUnwindSafe(crate::sync::run(&ctx, &id, kind))
                        .catch_unwind()
                        .await
                    {
                        Ok(result) => result,
                        Err(panic) => {
                            let message = panic_message(panic.as_ref());
                            tracing::error!(
                                pipeline = %id,
                                panic = %message,
                                "Run panicked; releasing its lock."
                            );
                            let reason = format!("the run panicked: {message}");
                            if let Err(e) = release_stuck_lock(&ctx, &id, &reason).await {
                                // The next pass tries again.
                                tracing::error!(pipeline = %id, error = %e, "Cannot release the pipeline lock.");
                            }
                            lock(&hold).insert(id.clone(), ctx.clock.now() + HOLD_AFTER_REFUSAL);
                            break;
                        }
                    };
                    // An error after the run started (recording its outcome
                    // failed) may leave this process's lock behind.
                    if let Err(e) = &result {
                        if !matches!(
                            e,
                            SyncError::State(
                                StateError::InProgress { .. } | StateError::AlreadyClaimed { .. }
                            )
                        ) {
                            let reason = format!("the run ended without recording an outcome: {e}");
                            if let Err(e) = release_stuck_lock(&ctx, &id, &reason).await {
                                tracing::error!(pipeline = %id, error = %e, "Cannot release the pipeline lock.");
                            }
                        }
                    }
                    if let Ok(report) = &result {
                        after = Some(report.record.id);
                    }
                    if let (Ok(report), true) = (&result, scheduled) {
                        if report.record.dry_run {
                            let mut dry = lock(&dry);
                            let h = dry.entry(id.clone()).or_default();
                            h.last_scheduled_start = Some(report.record.start_date);
                            h.last_scheduled_state = Some(report.record.state);
                            h.scheduled_outcome |=
                                matches!(report.record.state, RunState::Success | RunState::Failed);
                            if report.record.state == RunState::Success {
                                h.last_interval_end = interval.map(|i| i.1).or(h.last_interval_end);
                            }
                        }
                    }
                    match result {
                        Ok(report) if report.record.state == RunState::Success => {}
                        // A failed or interrupted run ends the catch-up; the plan
                        // decides when to try again.
                        Ok(_) => break,
                        Err(SyncError::State(StateError::InProgress { .. })) => {
                            events::RunNotStarted {
                                pipeline: &id,
                                reason: "already in progress in another process",
                            }
                            .emit();
                            break;
                        }
                        Err(SyncError::State(StateError::AlreadyClaimed { .. })) => {
                            events::RunNotStarted {
                                pipeline: &id,
                                reason: "another daemon took this scheduled run",
                            }
                            .emit();
                            break;
                        }
                        Err(e) => {
                            events::RunNotStarted {
                                pipeline: &id,
                                reason: &e.to_string(),
                            }
                            .emit();
                            lock(&hold).insert(id.clone(), ctx.clock.now() + HOLD_AFTER_REFUSAL);
                            break;
                        }
                    }
                }
                wake.notify_one();
            });
        });
        running.insert(pipeline, handle);
    }

    /// Release the lock this process holds on `pipeline` although no task of
    /// this daemon runs it, and log it. Callers check that no task runs it.
    async fn release_stuck_lock(&self, pipeline: &str) -> Result<(), StateError> {
        release_stuck_lock(&self.ctx, pipeline, STUCK_LOCK_REASON).await
    }

    fn held(&self, pipeline: &str) -> Option<DateTime<Utc>> {
        lock(&self.hold).get(pipeline).copied()
    }

    /// Forget tasks that ended.
    fn reap_finished(&self) {
        self.lock_running().retain(|_, h| !h.is_finished());
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, JoinHandle<()>>> {
        lock(&self.running)
    }
}

/// Whether `pipeline` is paused: `paused = true` in its file, or `wsync pause`
/// (or the API) recorded in the state store.
pub async fn is_paused(
    state: &crate::state::StateStore,
    pipeline: &crate::config::model::Pipeline,
) -> Result<bool, StateError> {
    Ok(pipeline.paused || state.paused(&pipeline.id).await?)
}

/// The error recorded on a run whose lock a scheduling pass found stuck.
const STUCK_LOCK_REASON: &str =
    "the run ended without recording an outcome (it panicked, or the state store refused the \
     outcome); its lock was released";

/// Release `pipeline`'s lock if this process holds it, and log when it did.
async fn release_stuck_lock(
    ctx: &SyncContext,
    pipeline: &str,
    reason: &str,
) -> Result<(), StateError> {
    if let Some(run_id) = ctx
        .state
        .release_own_lease(pipeline, ctx.clock.now(), reason)
        .await?
    {
        tracing::warn!(
            pipeline,
            run_id,
            reason,
            "Released a pipeline lock left by a run that ended without recording an outcome."
        );
    }
    Ok(())
}

/// Whether a scheduled run planned before waiting for a slot is now another
/// daemon's: the pipeline is leased elsewhere, or a scheduled run followed
/// the one this run was to follow. Errors say "no": the run's own start
/// decides then.
async fn taken_meanwhile(ctx: &SyncContext, pipeline: &str, kind: &RunKind) -> bool {
    let RunKind::Scheduled {
        after: Some(after), ..
    } = kind
    else {
        return false;
    };
    if let Ok(Some(holder)) = ctx.state.lease_holder(pipeline).await {
        if !holder.own {
            return true;
        }
    }
    ctx.state
        .schedule_history(pipeline)
        .await
        .is_ok_and(|h| h.last_scheduled_id != *after)
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// A mutex that stays usable after a panic elsewhere (the data is plain state).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
