//! Per-run JSONL files: rejected rows and would-be batches.
//!
//! Files are created only when there is something to write, buffered, and
//! flushed when the run ends, so an empty run leaves no empty files behind.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::mapping::RejectedRow;

/// A lazily created, buffered JSON-lines file.
#[derive(Debug)]
pub struct JsonlFile {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    lines: u64,
}

impl JsonlFile {
    /// A file that will be created at `path` on the first line.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            writer: None,
            lines: 0,
        }
    }

    /// Where it is (or would be) written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Append one line (`line` must not contain a newline).
    pub fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.writer.is_none() {
            if let Some(parent) = self.path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            self.writer = Some(BufWriter::new(File::create(&self.path)?));
        }
        if let Some(w) = self.writer.as_mut() {
            w.write_all(line)?;
            w.write_all(b"\n")?;
        }
        self.lines += 1;
        Ok(())
    }

    /// Append a rejected row as `{"row":…,"reason":…,"detail":…,"values":{…}}`.
    pub fn write_rejected(&mut self, rejected: &RejectedRow) -> std::io::Result<()> {
        let line = serde_json::json!({
            "row": rejected.row,
            "reason": rejected.reason.as_str(),
            "detail": rejected.detail,
            "values": rejected.values,
        });
        self.write_line(line.to_string().as_bytes())
    }

    /// Flush and close; returns the path if anything was written.
    pub fn finish(mut self) -> std::io::Result<Option<PathBuf>> {
        match self.writer.take() {
            Some(mut w) => {
                w.flush()?;
                w.get_ref().sync_all()?;
                Ok(Some(self.path))
            }
            None => Ok(None),
        }
    }
}
