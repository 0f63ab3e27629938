//! The acknowledgement log: which batches of a spool are done.
//!
//! A run delivers the spool's batches in order, packed into requests; a request
//! holds consecutive batches, so once its outcome is known (acknowledged, or
//! refused and stored as dead letters) the range from its first batch to its
//! last is done. Batches are named by (run row, part), which mapping the same
//! spool again reproduces exactly, so a run resuming the spool skips every
//! batch inside a logged range and re-sends only what was in flight.
//!
//! One line per request, `first_row first_part last_row last_part`, written
//! with one `write` each (it survives the process being killed) and fsynced at
//! most every [`SYNC_EVERY`] or [`SYNC_LINES`] lines (against power loss). A
//! torn last line is ignored on reading.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::SpoolError;

/// A batch's place in the run: (1-based row, 0-based part).
pub type BatchKey = (u64, u32);

/// Longest time between fsyncs of the log while requests complete.
pub const SYNC_EVERY: Duration = Duration::from_millis(200);
/// Most lines between fsyncs.
pub const SYNC_LINES: u32 = 32;

/// The appending end of the log.
#[derive(Debug)]
pub struct AckLog {
    path: PathBuf,
    file: File,
    unsynced: u32,
    last_sync: Instant,
}

impl AckLog {
    /// Open (creating) the log for appending.
    pub fn open(path: &Path) -> Result<Self, SpoolError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| SpoolError::Io {
                action: "open",
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
            file,
            unsynced: 0,
            last_sync: Instant::now(),
        })
    }

    /// Record that every batch from `first` to `last` (inclusive) is done.
    pub fn append(&mut self, first: BatchKey, last: BatchKey) -> Result<(), SpoolError> {
        let line = format!("{} {} {} {}\n", first.0, first.1, last.0, last.1);
        self.file
            .write_all(line.as_bytes())
            .map_err(|source| SpoolError::Io {
                action: "append to",
                path: self.path.clone(),
                source,
            })?;
        self.unsynced += 1;
        if self.unsynced >= SYNC_LINES || self.last_sync.elapsed() >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    /// Fsync what was appended.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.unsynced == 0 {
            return Ok(());
        }
        self.file.sync_data().map_err(|source| SpoolError::Io {
            action: "fsync",
            path: self.path.clone(),
            source,
        })?;
        self.unsynced = 0;
        self.last_sync = Instant::now();
        Ok(())
    }
}

impl Drop for AckLog {
    fn drop(&mut self) {
        let _ = self.sync();
    }
}

/// The done ranges of a spool, for lookups while delivering it again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckSet {
    /// Sorted, non-overlapping inclusive ranges.
    ranges: Vec<(BatchKey, BatchKey)>,
}

impl AckSet {
    /// Read the log at `path` (missing: nothing is done).
    pub fn load(path: &Path) -> Result<Self, SpoolError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(SpoolError::Io {
                    action: "read",
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let mut ranges = Vec::new();
        // Only complete lines count: a kill during a write leaves at most a
        // torn last line, whose request is then re-sent.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        for line in complete.lines() {
            let numbers: Vec<u64> = line
                .split_ascii_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            if let [r0, p0, r1, p1] = numbers[..] {
                let (Ok(p0), Ok(p1)) = (u32::try_from(p0), u32::try_from(p1)) else {
                    continue;
                };
                if (r0, p0) <= (r1, p1) {
                    ranges.push(((r0, p0), (r1, p1)));
                }
            }
        }
        Ok(Self::from_ranges(ranges))
    }

    /// A set of these ranges (any order, overlaps allowed).
    pub fn from_ranges(mut ranges: Vec<(BatchKey, BatchKey)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(BatchKey, BatchKey)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        Self { ranges: merged }
    }

    /// Whether the batch is done.
    pub fn contains(&self, key: BatchKey) -> bool {
        let i = self.ranges.partition_point(|(start, _)| *start <= key);
        i > 0 && key <= self.ranges[i - 1].1
    }

    /// Nothing is done.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Ranges held (after merging).
    pub fn len(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_ranges_are_found_and_gaps_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acks.log");
        {
            let mut log = AckLog::open(&path).unwrap();
            log.append((1, 0), (100, 0)).unwrap();
            log.append((201, 0), (300, 1)).unwrap();
            log.append((101, 0), (150, 0)).unwrap();
        }
        let set = AckSet::load(&path).unwrap();
        assert!(set.contains((1, 0)));
        assert!(set.contains((100, 0)));
        assert!(set.contains((150, 0)));
        assert!(!set.contains((150, 1)));
        assert!(!set.contains((151, 0)));
        assert!(!set.contains((200, 3)));
        assert!(set.contains((300, 1)));
        assert!(!set.contains((300, 2)));
        assert!(!set.contains((0, 0)));
        assert!(!set.contains((301, 0)));
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acks.log");
        std::fs::write(&path, "1 0 10 0\n11 0 2").unwrap();
        let set = AckSet::load(&path).unwrap();
        assert!(set.contains((10, 0)));
        assert!(!set.contains((11, 0)));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn overlapping_ranges_merge() {
        let set = AckSet::from_ranges(vec![((5, 0), (9, 0)), ((1, 0), (6, 0)), ((20, 0), (21, 0))]);
        assert_eq!(set.len(), 2);
        assert!(set.contains((7, 0)));
        assert!(AckSet::load(Path::new("/nonexistent/acks.log"))
            .unwrap()
            .is_empty());
    }
}
