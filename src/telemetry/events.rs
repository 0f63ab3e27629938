//! Typed log events. Each event is a struct whose `emit` writes exactly one log
//! line with a fixed message and fixed field names, so operators can search for
//! them and later issues can attach metrics in one place.

use tracing::{info, warn};

/// A run began. (Pipeline id and run id come from the run's span.)
pub struct RunStarted<'a> {
    /// Window start, if incremental.
    pub window_start: Option<&'a str>,
    /// Window end, if incremental.
    pub window_end: Option<&'a str>,
    /// `only_read` run.
    pub dry_run: bool,
}

impl RunStarted<'_> {
    /// Write the line.
    pub fn emit(&self) {
        info!(
            window_start = self.window_start,
            window_end = self.window_end,
            dry_run = self.dry_run,
            "Run started."
        );
    }
}

/// A request was acknowledged by the Events API.
pub struct RequestAcknowledged {
    /// Batches in it.
    pub batches: usize,
    /// Body bytes.
    pub bytes: usize,
    /// HTTP status.
    pub status: u16,
}

impl RequestAcknowledged {
    /// Write the line.
    pub fn emit(&self) {
        tracing::debug!(
            batches = self.batches,
            bytes = self.bytes,
            status = self.status,
            "Request acknowledged."
        );
    }
}

/// Values were dropped or truncated while mapping.
pub struct ValuesAdjusted<'a> {
    /// `dropped` or `truncated`.
    pub action: &'a str,
    /// Reason counter name.
    pub reason: &'a str,
    /// How many.
    pub count: u64,
}

impl ValuesAdjusted<'_> {
    /// Write the line.
    pub fn emit(&self) {
        warn!(
            action = self.action,
            reason = self.reason,
            count = self.count,
            "Values adjusted to fit mParticle."
        );
    }
}

/// Rows were rejected.
pub struct RowsRejected<'a> {
    /// Reason.
    pub reason: &'a str,
    /// How many.
    pub count: u64,
    /// Where they were written.
    pub file: &'a str,
}

impl RowsRejected<'_> {
    /// Write the line.
    pub fn emit(&self) {
        warn!(
            reason = self.reason,
            count = self.count,
            file = self.file,
            "Rows rejected."
        );
    }
}

/// A run ended.
pub struct RunFinished<'a> {
    /// Final state.
    pub state: &'a str,
    /// Rows read.
    pub records_extracted: u64,
    /// Batches acknowledged.
    pub batches_sent: u64,
    /// Rows rejected.
    pub rows_rejected: u64,
    /// Error, if failed.
    pub error: Option<&'a str>,
}

impl RunFinished<'_> {
    /// Write the line.
    pub fn emit(&self) {
        match self.error {
            None => info!(
                state = self.state,
                records_extracted = self.records_extracted,
                batches_sent = self.batches_sent,
                rows_rejected = self.rows_rejected,
                "Run finished."
            ),
            Some(error) => tracing::error!(
                state = self.state,
                records_extracted = self.records_extracted,
                batches_sent = self.batches_sent,
                rows_rejected = self.rows_rejected,
                error,
                "Run failed."
            ),
        }
    }
}

/// A checkpoint was committed: every row below `value` is acknowledged.
pub struct CheckpointCommitted<'a> {
    /// The iterator value.
    pub value: &'a str,
    /// Rows read by the run so far.
    pub rows: u64,
}

impl CheckpointCommitted<'_> {
    /// Write the line.
    pub fn emit(&self) {
        tracing::debug!(
            checkpoint = self.value,
            rows = self.rows,
            "Checkpoint committed."
        );
    }
}

/// A run picks up where an unfinished one stopped.
pub struct RunResumed<'a> {
    /// The failed or interrupted run.
    pub resumed_from: i64,
    /// Its checkpoint, the new run's lower bound.
    pub checkpoint: &'a str,
}

impl RunResumed<'_> {
    /// Write the line.
    pub fn emit(&self) {
        info!(
            resumed_from = self.resumed_from,
            checkpoint = self.checkpoint,
            "Resuming from the checkpoint of an unfinished run."
        );
    }
}

/// The daemon started.
pub struct DaemonStarted {
    /// Pipelines it schedules (not paused, not on demand).
    pub scheduled: usize,
    /// Pipelines it knows.
    pub pipelines: usize,
}

impl DaemonStarted {
    /// Write the line.
    pub fn emit(&self) {
        info!(
            scheduled = self.scheduled,
            pipelines = self.pipelines,
            "Daemon started."
        );
    }
}

/// A pipeline's next run time, as planned.
pub struct NextRunPlanned<'a> {
    /// Pipeline id.
    pub pipeline: &'a str,
    /// When (RFC 3339).
    pub at: &'a str,
}

impl NextRunPlanned<'_> {
    /// Write the line.
    pub fn emit(&self) {
        tracing::debug!(pipeline = self.pipeline, at = self.at, "Next run planned.");
    }
}

/// A scheduled run could not start (already running, paused, refused).
pub struct RunNotStarted<'a> {
    /// Pipeline id.
    pub pipeline: &'a str,
    /// Why.
    pub reason: &'a str,
}

impl RunNotStarted<'_> {
    /// Write the line.
    pub fn emit(&self) {
        warn!(
            pipeline = self.pipeline,
            reason = self.reason,
            "Scheduled run not started."
        );
    }
}

/// SIGTERM or SIGINT: no new run starts; running ones stop at their next chunk.
pub struct ShutdownRequested {
    /// Runs in progress.
    pub running: usize,
    /// Grace for in-flight requests, in seconds.
    pub grace_secs: u64,
}

impl ShutdownRequested {
    /// Write the line.
    pub fn emit(&self) {
        info!(
            running = self.running,
            grace_secs = self.grace_secs,
            "Shutting down: no new runs; in-flight requests get the grace period."
        );
    }
}

/// How far a long run has got (every few seconds when stderr is not a terminal).
pub struct RunProgressed {
    /// Rows read so far.
    pub rows: u64,
    /// Batches acknowledged so far.
    pub batches: u64,
    /// Rows per second since the start.
    pub rows_per_sec: u64,
}

impl RunProgressed {
    /// Write the line.
    pub fn emit(&self) {
        info!(
            rows = self.rows,
            batches = self.batches,
            rows_per_sec = self.rows_per_sec,
            "Progress."
        );
    }
}

/// A pending spool was not resumed and was removed.
pub struct SpoolDiscarded<'a> {
    /// The run that extracted it.
    pub run_id: i64,
    /// Rows it held.
    pub rows: u64,
    /// Why.
    pub reason: &'a str,
}

impl SpoolDiscarded<'_> {
    /// Write the line (a warning: the window is read from the warehouse again).
    pub fn emit(&self) {
        tracing::warn!(
            spool_run_id = self.run_id,
            rows = self.rows,
            reason = self.reason,
            "Pending spool discarded; the window is read again."
        );
    }
}

/// A run resumed the spool of an earlier run instead of querying the warehouse.
pub struct SpoolResumed<'a> {
    /// The run that extracted it.
    pub run_id: i64,
    /// Rows in it.
    pub rows: u64,
    /// Its window, as text.
    pub window: (Option<&'a str>, Option<&'a str>),
}

impl SpoolResumed<'_> {
    /// Write the line.
    pub fn emit(&self) {
        tracing::info!(
            spool_run_id = self.run_id,
            rows = self.rows,
            window_start = self.window.0,
            window_end = self.window.1,
            "Resuming the spool of an earlier run; the warehouse is not queried."
        );
    }
}

/// The snapshot diff of a `[diff]` pipeline decided every row of the run.
pub struct DiffComputed {
    /// Rows whose key was not in the snapshot.
    pub new: u64,
    /// Rows whose payload changed.
    pub changed: u64,
    /// Rows not sent: identical to the snapshot.
    pub unchanged: u64,
    /// Keys gone from the model whose attributes are unset.
    pub unset: u64,
    /// Rows rejected as `duplicate_key`.
    pub duplicate_keys: u64,
    /// Rows rejected as `missing_key`.
    pub missing_keys: u64,
}

impl DiffComputed {
    /// Write the line.
    pub fn emit(&self) {
        info!(
            new = self.new,
            changed = self.changed,
            unchanged = self.unchanged,
            unset = self.unset,
            duplicate_keys = self.duplicate_keys,
            missing_keys = self.missing_keys,
            "Snapshot diff computed."
        );
    }
}

/// A `[diff]` pipeline's snapshot does not apply to this run: every row is sent.
pub struct SnapshotInvalidated<'a> {
    /// Why (a mapping change, `--full-resync`, `full_resync_every`).
    pub reason: &'a str,
}

impl SnapshotInvalidated<'_> {
    /// Write the line.
    pub fn emit(&self) {
        warn!(
            reason = self.reason,
            "Snapshot invalidated; every row is sent this run."
        );
    }
}
