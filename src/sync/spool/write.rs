//! Appending extracted chunks to the spool's rows file.
//!
//! Each chunk is written as one IPC record batch message (zstd buffers) and the
//! file is flushed after it, then the chunk count is published on a watch
//! channel: a [`super::SpoolReader`] never reads past a chunk announced there,
//! so it can follow the writer on the same file without reading half a message.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::PathBuf;

use arrow::array::RecordBatch;
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_ipc::CompressionType;
use tokio::sync::watch;

use super::{SpoolDir, SpoolError};

/// How far the extract got: what a reader may read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolProgress {
    /// Chunks written and flushed.
    pub chunks: u64,
    /// Rows in those chunks.
    pub rows: u64,
    /// The extract ended (successfully or not): no more chunks will come.
    pub done: bool,
}

/// The writing end of a spool's rows file.
pub struct SpoolWriter {
    path: PathBuf,
    writer: Option<StreamWriter<BufWriter<File>>>,
    progress: watch::Sender<SpoolProgress>,
    /// Chunks written since free disk was last checked.
    since_disk_check: u32,
    min_free_mb: u64,
}

impl std::fmt::Debug for SpoolWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolWriter")
            .field("path", &self.path)
            .field("progress", &*self.progress.borrow())
            .finish_non_exhaustive()
    }
}

/// Free disk is checked every this many chunks (a `statvfs` call), so a
/// filling disk stops the extract with a clear error before the state store
/// beside it runs out of room.
const DISK_CHECK_EVERY_CHUNKS: u32 = 64;

impl SpoolWriter {
    /// A writer for `dir`'s rows file (created on the first chunk) and the
    /// channel its readers follow.
    pub fn new(dir: &SpoolDir, min_free_mb: u64) -> (Self, watch::Receiver<SpoolProgress>) {
        let (progress, rx) = watch::channel(SpoolProgress::default());
        (
            Self {
                path: dir.rows_path(),
                writer: None,
                progress,
                since_disk_check: 0,
                min_free_mb,
            },
            rx,
        )
    }

    fn io(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> SpoolError {
        let path = self.path.clone();
        move |source| SpoolError::Io {
            action,
            path,
            source,
        }
    }

    fn arrow(&self, action: &'static str) -> impl FnOnce(arrow::error::ArrowError) -> SpoolError {
        let path = self.path.clone();
        move |e| match e {
            arrow::error::ArrowError::IoError(_, source) => SpoolError::Io {
                action,
                path,
                source,
            },
            other => SpoolError::Io {
                action,
                path,
                source: std::io::Error::other(other.to_string()),
            },
        }
    }

    /// Append one chunk and make it visible to readers.
    pub fn write(&mut self, chunk: &RecordBatch) -> Result<(), SpoolError> {
        if chunk.num_rows() == 0 {
            return Ok(());
        }
        if self.since_disk_check == 0 {
            if let Some(dir) = self.path.parent() {
                super::check_free_disk(dir, self.min_free_mb)?;
            }
        }
        self.since_disk_check = (self.since_disk_check + 1) % DISK_CHECK_EVERY_CHUNKS;
        if self.writer.is_none() {
            let file = File::create(&self.path).map_err(self.io("create"))?;
            let options = IpcWriteOptions::default()
                .try_with_compression(Some(CompressionType::ZSTD))
                .map_err(self.arrow("configure"))?;
            let writer = StreamWriter::try_new_with_options(
                BufWriter::with_capacity(1 << 20, file),
                &chunk.schema(),
                options,
            )
            .map_err(self.arrow("write the schema of"))?;
            self.writer = Some(writer);
        }
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        let result = writer.write(chunk).and_then(|()| {
            writer
                .get_mut()
                .flush()
                .map_err(|e| arrow::error::ArrowError::IoError(e.to_string(), e))
        });
        result.map_err(self.arrow("append to"))?;
        let rows = chunk.num_rows() as u64;
        self.progress.send_modify(|p| {
            p.chunks += 1;
            p.rows += rows;
        });
        Ok(())
    }

    /// The progress so far.
    pub fn progress(&self) -> SpoolProgress {
        *self.progress.borrow()
    }

    /// End the stream, fsync the file, and tell readers no more chunks come.
    /// Returns the file's size in bytes.
    pub fn finish(mut self) -> Result<u64, SpoolError> {
        let bytes = match self.writer.take() {
            Some(mut writer) => {
                writer.finish().map_err(self.arrow("finish"))?;
                let file = writer
                    .into_inner()
                    .map_err(self.arrow("flush"))?
                    .into_inner()
                    .map_err(std::io::IntoInnerError::into_error)
                    .map_err(self.io("flush"))?;
                file.sync_all().map_err(self.io("fsync"))?;
                file.metadata().map_err(self.io("stat"))?.len()
            }
            None => 0,
        };
        self.progress.send_modify(|p| p.done = true);
        Ok(bytes)
    }

    /// Tell readers the extract stopped without finishing (the spool stays
    /// incomplete and is discarded by the next run).
    pub fn abandon(self) {
        self.progress.send_modify(|p| p.done = true);
    }
}
