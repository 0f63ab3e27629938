//! Live counters of the run in progress, read by the progress bar of an
//! interactive `wsync run` (and zeroed when a run starts). Atomics, so the
//! run never waits for whoever reads them.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The progress bar on the terminal, if one is drawn: log lines suspend it so
/// the two do not garble each other.
static ACTIVE_BAR: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// Make `bar` (or none) the one log lines make way for.
pub fn set_active_bar(bar: Option<indicatif::ProgressBar>) {
    *ACTIVE_BAR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = bar;
}

/// stderr for the log subscriber: writes around the active progress bar.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE_BAR
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

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
