//! Per-run JSONL files: rejected rows and would-be batches, and the atomic write
//! the run report uses.
//!
//! Files are created only when there is something to write, buffered, and
//! flushed when the run ends, so an empty run leaves no empty files behind.
//! Like the Parquet exports, every file is written under a temporary name in
//! its final folder (`.<name>.partial-<pid>`), fsynced, then renamed: a reader
//! (or a crash) never sees half a file under the final name.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::mapping::RejectedRow;

/// A lazily created, buffered JSON-lines file.
#[derive(Debug)]
pub struct JsonlFile {
    path: PathBuf,
    /// Where the lines go until [`JsonlFile::finish`] renames it to `path`.
    temp_path: PathBuf,
    writer: Option<BufWriter<File>>,
    lines: u64,
}

/// The temporary name of `path` for this process, in the same folder (so the
/// rename stays on one file system).
fn temp_path_of(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// Fsync `file`, rename `temp` to `path`, then fsync the folder so the rename
/// itself survives a crash.
fn commit(file: &File, temp: &Path, path: &Path) -> std::io::Result<()> {
    file.sync_all()?;
    std::fs::rename(temp, path)?;
    if let Some(folder) = path.parent().filter(|f| !f.as_os_str().is_empty()) {
        if let Ok(dir) = File::open(folder) {
            // Not every file system can fsync a directory; the data is safe.
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// Write `bytes` to `path` atomically: a temporary file in the same folder,
/// fsynced, then renamed over `path`. Creates the folder when missing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|f| !f.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let temp = temp_path_of(path);
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        commit(&file, &temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

impl JsonlFile {
    /// A file that will be created at `path` on the first line.
    pub fn new(path: PathBuf) -> Self {
        Self {
            temp_path: temp_path_of(&path),
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
            self.writer = Some(BufWriter::new(File::create(&self.temp_path)?));
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

    /// Flush, fsync and rename the file to its final name; returns the path if
    /// anything was written.
    pub fn finish(mut self) -> std::io::Result<Option<PathBuf>> {
        match self.writer.take() {
            Some(w) => {
                let file = w
                    .into_inner()
                    .map_err(std::io::IntoInnerError::into_error)?;
                commit(&file, &self.temp_path, &self.path)?;
                Ok(Some(self.path.clone()))
            }
            None => Ok(None),
        }
    }
}

impl Drop for JsonlFile {
    fn drop(&mut self) {
        // Never finished (or the finish failed): no partial file lingers. After
        // a successful rename the temporary path no longer exists.
        if self.writer.take().is_some() || self.temp_path.exists() {
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn jsonl_files_are_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/rejected.jsonl");
        let mut file = JsonlFile::new(path.clone());
        file.write_line(b"{\"row\":1}").unwrap();
        file.write_line(b"{\"row\":2}").unwrap();
        // Until finished, only a hidden temporary file exists.
        assert!(!path.exists());
        assert_eq!(
            names(&dir.path().join("run")),
            vec![format!(".rejected.jsonl.partial-{}", std::process::id())]
        );
        assert_eq!(file.finish().unwrap(), Some(path.clone()));
        assert_eq!(names(&dir.path().join("run")), vec!["rejected.jsonl"]);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"row\":1}\n{\"row\":2}\n"
        );
        // An unfinished file (a run that panicked) leaves nothing behind.
        let mut dropped = JsonlFile::new(dir.path().join("run/batches.jsonl"));
        dropped.write_line(b"{}").unwrap();
        drop(dropped);
        assert_eq!(names(&dir.path().join("run")), vec!["rejected.jsonl"]);
    }

    #[test]
    fn report_json_is_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/report.json");
        write_atomic(&path, b"{\"v\":1}").unwrap();
        write_atomic(&path, b"{\"v\":2}").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"v\":2}");
        assert_eq!(names(&dir.path().join("a")), vec!["report.json"]);
    }
}
