//! Live counters of the run in progress, read by the progress bar of an
//! interactive `wsync run` (and zeroed when a run starts). Atomics, so the
//! run never waits for whoever reads them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Rows read and batches acknowledged so far.
#[derive(Debug, Default)]
pub struct RunProgress {
    rows_read: AtomicU64,
    batches_acknowledged: AtomicU64,
}

impl RunProgress {
    /// Count rows read.
    pub fn add_rows(&self, n: u64) {
        self.rows_read.fetch_add(n, Ordering::Relaxed);
    }

    /// Count batches acknowledged.
    pub fn add_batches(&self, n: u64) {
        self.batches_acknowledged.fetch_add(n, Ordering::Relaxed);
    }

    /// (rows read, batches acknowledged).
    pub fn get(&self) -> (u64, u64) {
        (
            self.rows_read.load(Ordering::Relaxed),
            self.batches_acknowledged.load(Ordering::Relaxed),
        )
    }
}
