//! An external sort of fixed-size records, so that the diff handles any
//! number of rows in bounded memory.
//!
//! Records are collected in memory up to [`RUN_RECORDS`]; a full run is
//! sorted and written to its own file. At the end, a sort that never filled a
//! run is served from memory; otherwise the runs are merged k-way (a binary
//! heap over one buffered reader per run). More than [`MAX_FAN_IN`] runs are
//! first merged a group at a time into longer runs, so the number of open
//! files stays bounded too. Memory is therefore at most one run of records
//! plus one read buffer per merged run, whatever the number of records.
//!
//! The run files are the sorter's own (in the directory it is given) and are
//! deleted as soon as they are merged or the sorted stream is dropped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Records a run holds before it is sorted and written out. Runs of the
/// diff's records (33 and 42 bytes) stay under 6 MB.
pub(super) const RUN_RECORDS: usize = 1 << 17;

/// The most runs merged at once (one open file and buffer each).
const MAX_FAN_IN: usize = 64;

/// Bytes of read buffer per run being merged.
const READ_BUFFER: usize = 64 * 1024;

/// A record of fixed size, ordered as it must come out.
pub(super) trait Record: Ord + Copy {
    /// Bytes of its encoding.
    const SIZE: usize;
    /// Write it into `out` (exactly `SIZE` bytes).
    fn encode(&self, out: &mut [u8]);
    /// Read it back from `bytes` (exactly `SIZE` bytes).
    fn decode(bytes: &[u8]) -> Self;
}

/// Collects records, then yields them sorted.
pub(super) struct Sorter<R: Record> {
    dir: PathBuf,
    name: &'static str,
    run_records: usize,
    pending: Vec<R>,
    runs: Vec<PathBuf>,
    files_made: usize,
}

impl<R: Record> std::fmt::Debug for Sorter<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sorter")
            .field("name", &self.name)
            .field("pending", &self.pending.len())
            .field("runs", &self.runs.len())
            .finish_non_exhaustive()
    }
}

impl<R: Record> Sorter<R> {
    /// A sorter writing its runs into `dir` (which must exist), named after
    /// `name`.
    pub(super) fn new(dir: &Path, name: &'static str) -> Self {
        Self::with_run_records(dir, name, RUN_RECORDS)
    }

    /// The same with another run size (tests use tiny runs).
    pub(super) fn with_run_records(dir: &Path, name: &'static str, run_records: usize) -> Self {
        Self {
            dir: dir.to_owned(),
            name,
            run_records: run_records.max(1),
            pending: Vec::new(),
            runs: Vec::new(),
            files_made: 0,
        }
    }

    /// Add a record.
    pub(super) fn push(&mut self, record: R) -> io::Result<()> {
        if self.pending.len() >= self.run_records {
            self.spill()?;
        }
        if self.pending.capacity() == 0 {
            self.pending.reserve_exact(self.run_records);
        }
        self.pending.push(record);
        Ok(())
    }

    /// Sort the records in memory and write them as the next run.
    fn spill(&mut self) -> io::Result<()> {
        self.pending.sort_unstable();
        let path = self.next_path();
        let mut out = BufWriter::with_capacity(READ_BUFFER, File::create(&path)?);
        let mut bytes = vec![0u8; R::SIZE];
        for record in self.pending.drain(..) {
            record.encode(&mut bytes);
            out.write_all(&bytes)?;
        }
        out.into_inner().map_err(io::IntoInnerError::into_error)?;
        self.runs.push(path);
        Ok(())
    }

    fn next_path(&mut self) -> PathBuf {
        self.files_made += 1;
        self.dir
            .join(format!("{}-{}.run", self.name, self.files_made))
    }

    /// Every record, sorted.
    pub(super) fn finish(mut self) -> io::Result<Sorted<R>> {
        if self.runs.is_empty() {
            let mut records = std::mem::take(&mut self.pending);
            records.sort_unstable();
            return Ok(Sorted::Memory(records.into_iter()));
        }
        if !self.pending.is_empty() {
            self.spill()?;
        }
        // The run buffer is no longer needed while merging.
        self.pending = Vec::new();
        while self.runs.len() > MAX_FAN_IN {
            let group: Vec<PathBuf> = self.runs.drain(..MAX_FAN_IN).collect();
            let path = self.next_path();
            let mut merge = Merge::<R>::open(group)?;
            let mut out = BufWriter::with_capacity(READ_BUFFER, File::create(&path)?);
            let mut bytes = vec![0u8; R::SIZE];
            while let Some(record) = merge.next_record()? {
                record.encode(&mut bytes);
                out.write_all(&bytes)?;
            }
            out.into_inner().map_err(io::IntoInnerError::into_error)?;
            self.runs.push(path);
        }
        Ok(Sorted::Merge(Merge::open(std::mem::take(&mut self.runs))?))
    }
}

impl<R: Record> Drop for Sorter<R> {
    fn drop(&mut self) {
        for path in &self.runs {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The sorted records.
pub(super) enum Sorted<R: Record> {
    /// Fewer than a run: sorted in memory.
    Memory(std::vec::IntoIter<R>),
    /// Merged from run files.
    Merge(Merge<R>),
}

impl<R: Record> std::fmt::Debug for Sorted<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory(records) => write!(f, "Sorted::Memory({} left)", records.len()),
            Self::Merge(m) => write!(f, "Sorted::Merge({} runs)", m.paths.len()),
        }
    }
}

impl<R: Record> Sorted<R> {
    /// No records at all.
    pub(super) fn empty() -> Self {
        Self::Memory(Vec::new().into_iter())
    }
}

impl<R: Record> Iterator for Sorted<R> {
    type Item = io::Result<R>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Memory(records) => records.next().map(Ok),
            Self::Merge(merge) => merge.next_record().transpose(),
        }
    }
}

/// A k-way merge of sorted run files (deleted when it is dropped).
pub(super) struct Merge<R: Record> {
    paths: Vec<PathBuf>,
    readers: Vec<BufReader<File>>,
    /// The smallest unread record of each run still open, with its run.
    heap: BinaryHeap<Reverse<(R, usize)>>,
    bytes: Vec<u8>,
}

impl<R: Record> Merge<R> {
    fn open(paths: Vec<PathBuf>) -> io::Result<Self> {
        let mut merge = Self {
            readers: Vec::with_capacity(paths.len()),
            heap: BinaryHeap::with_capacity(paths.len()),
            bytes: vec![0u8; R::SIZE],
            paths,
        };
        for (run, path) in merge.paths.iter().enumerate() {
            merge
                .readers
                .push(BufReader::with_capacity(READ_BUFFER, File::open(path)?));
            if let Some(record) = read_record(&mut merge.readers[run], &mut merge.bytes)? {
                merge.heap.push(Reverse((record, run)));
            }
        }
        Ok(merge)
    }

    fn next_record(&mut self) -> io::Result<Option<R>> {
        let Some(Reverse((record, run))) = self.heap.pop() else {
            return Ok(None);
        };
        if let Some(next) = read_record(&mut self.readers[run], &mut self.bytes)? {
            self.heap.push(Reverse((next, run)));
        }
        Ok(Some(record))
    }
}

impl<R: Record> Drop for Merge<R> {
    fn drop(&mut self) {
        self.readers.clear();
        for path in &self.paths {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The next record of a run, `None` at its end.
fn read_record<R: Record>(reader: &mut BufReader<File>, bytes: &mut [u8]) -> io::Result<Option<R>> {
    match reader.read_exact(bytes) {
        Ok(()) => Ok(Some(R::decode(bytes))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key that repeats, and a sequence number that keeps records apart.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    struct Pair(u32, u32);

    impl Record for Pair {
        const SIZE: usize = 8;
        fn encode(&self, out: &mut [u8]) {
            out[..4].copy_from_slice(&self.0.to_be_bytes());
            out[4..].copy_from_slice(&self.1.to_be_bytes());
        }
        fn decode(bytes: &[u8]) -> Self {
            let (a, b) = bytes.split_at(4);
            Self(
                u32::from_be_bytes(a.try_into().unwrap()),
                u32::from_be_bytes(b.try_into().unwrap()),
            )
        }
    }

    fn shuffled(n: u32) -> Vec<Pair> {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut v: Vec<Pair> = (0..n).map(|i| Pair(i % 1000, i)).collect();
        rng.shuffle(&mut v);
        v
    }

    fn sort(records: &[Pair], run_records: usize, dir: &Path) -> Vec<Pair> {
        let mut sorter = Sorter::with_run_records(dir, "t", run_records);
        for r in records {
            sorter.push(*r).unwrap();
        }
        sorter.finish().unwrap().map(Result::unwrap).collect()
    }

    fn files_in(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn fewer_records_than_a_run_are_sorted_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let records = shuffled(500);
        let mut expected = records.clone();
        expected.sort();
        assert_eq!(sort(&records, 1000, dir.path()), expected);
        assert_eq!(files_in(dir.path()), 0);
        assert_eq!(sort(&[], 1000, dir.path()), Vec::new());
    }

    #[test]
    fn runs_are_merged_in_order_and_their_files_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let records = shuffled(10_007);
        let mut expected = records.clone();
        expected.sort();
        // 101 runs: more than MAX_FAN_IN, so a first merge pass runs too.
        let sorted = sort(&records, 100, dir.path());
        assert_eq!(sorted.len(), 10_007);
        assert_eq!(sorted, expected);
        assert_eq!(files_in(dir.path()), 0, "run files left behind");
    }

    #[test]
    fn equal_keys_from_different_runs_come_out_adjacent() {
        let dir = tempfile::tempdir().unwrap();
        // Key 5 in the first and the last of four runs, among others.
        let mut records = vec![Pair(5, 1), Pair(9, 2), Pair(1, 3)];
        records.extend([Pair(2, 4), Pair(8, 5), Pair(3, 6)]);
        records.extend([Pair(7, 7), Pair(4, 8), Pair(6, 9)]);
        records.extend([Pair(5, 10), Pair(0, 11)]);
        let sorted = sort(&records, 3, dir.path());
        let keys: Vec<u32> = sorted.iter().map(|p| p.0).collect();
        assert_eq!(keys, vec![0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9]);
        let fives: Vec<u32> = sorted.iter().filter(|p| p.0 == 5).map(|p| p.1).collect();
        assert_eq!(fives, vec![1, 10]);
    }

    #[test]
    fn a_sorter_dropped_unfinished_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut sorter = Sorter::with_run_records(dir.path(), "t", 10);
        for r in shuffled(55) {
            sorter.push(r).unwrap();
        }
        assert!(files_in(dir.path()) > 0);
        drop(sorter);
        assert_eq!(files_in(dir.path()), 0);
        // And a merge dropped half-read.
        let mut sorter = Sorter::with_run_records(dir.path(), "t", 10);
        for r in shuffled(55) {
            sorter.push(r).unwrap();
        }
        let mut sorted = sorter.finish().unwrap();
        assert_eq!(sorted.next().unwrap().unwrap(), Pair(0, 0));
        drop(sorted);
        assert_eq!(files_in(dir.path()), 0);
    }
}
