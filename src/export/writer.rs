//! [`ParquetFile`]: one Parquet file, written under a temporary name and renamed
//! into place when complete.
//!
//! The temporary file is `.<name>.partial-<pid>` in the final file's folder: the
//! same filesystem, so the closing rename is atomic, and a dot name that globs
//! like `*.parquet` skip. [`ParquetFile::finish`] writes the footer, fsyncs the
//! file, renames it and fsyncs the folder, so after it returns the file is durable
//! under its final name, and before it nothing exists under that name. Dropping an
//! unfinished file removes the temporary file; a process killed outright leaves
//! it behind, and the next [`ParquetFile::create`] of the same final name removes
//! such leftovers of processes that are gone.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::ZstdLevel;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;

/// Failure writing an export file; every variant names the file or dataset.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A filesystem operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`create`, `fsync`, `rename to its final name`, …).
        action: &'static str,
        /// The file or folder concerned.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The Parquet writer refused a batch or could not finish the file.
    #[error("cannot write Parquet file {}: {source}", path.display())]
    Parquet {
        /// The final path of the file being written.
        path: PathBuf,
        /// The writer's error.
        source: ParquetError,
    },
    /// A value could not be turned into the dataset's columns.
    #[error("export dataset `{dataset}`: {message}")]
    Data {
        /// `rows`, `batches` or `rejected`.
        dataset: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The path template is invalid.
    #[error("export path template `{template}`: {message}")]
    Template {
        /// The template as configured.
        template: String,
        /// What was wrong.
        message: String,
    },
}

/// Column compression codec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// Zstandard at its default level: the best size for the CPU spent.
    #[default]
    Zstd,
    /// Snappy: faster, larger, read by every Parquet reader.
    Snappy,
    /// Uncompressed.
    None,
}

impl Compression {
    /// The parquet crate's codec.
    fn codec(self) -> parquet::basic::Compression {
        match self {
            Self::Zstd => parquet::basic::Compression::ZSTD(ZstdLevel::default()),
            Self::Snappy => parquet::basic::Compression::SNAPPY,
            Self::None => parquet::basic::Compression::UNCOMPRESSED,
        }
    }

    /// The name used in configuration (`zstd`, `snappy`, `none`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Snappy => "snappy",
            Self::None => "none",
        }
    }
}

/// How export files are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportOptions {
    /// Column compression.
    pub compression: Compression,
    /// Rows per row group. A row group is buffered (encoded) in memory until it is
    /// full, so this bounds the writer's memory; 0 is taken as 1.
    pub row_group_rows: usize,
}

impl ExportOptions {
    /// The default row-group size: large enough for good compression and fast
    /// scans, small enough that one buffered group of a wide table stays in the
    /// tens of megabytes.
    pub const DEFAULT_ROW_GROUP_ROWS: usize = 100_000;
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            compression: Compression::default(),
            row_group_rows: Self::DEFAULT_ROW_GROUP_ROWS,
        }
    }
}

/// A finished export file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedFile {
    /// Its final path.
    pub path: PathBuf,
    /// Data rows written.
    pub rows: u64,
    /// File size in bytes.
    pub bytes: u64,
}

/// A Parquet file being written; see the module doc for the guarantees.
#[derive(Debug)]
pub struct ParquetFile {
    /// Where the file goes when finished.
    final_path: PathBuf,
    /// Where it is written until then.
    temp_path: PathBuf,
    /// `None` once finished (or after a failed finish, which removes the temp file).
    writer: Option<ArrowWriter<File>>,
    /// Rows written so far.
    rows: u64,
}

impl ParquetFile {
    /// Start writing `final_path` (its folder is created if missing) with `schema`.
    /// Nothing appears under `final_path` until [`ParquetFile::finish`]; an
    /// existing file there is replaced at that moment.
    pub fn create(
        final_path: impl AsRef<Path>,
        schema: SchemaRef,
        options: &ExportOptions,
    ) -> Result<ParquetFile, ExportError> {
        let final_path = final_path.as_ref().to_path_buf();
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| ExportError::Io {
                action,
                path,
                source,
            }
        };
        let name = final_path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ExportError::Io {
                action: "create",
                path: final_path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
            })?
            .to_owned();
        let folder = match final_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&folder).map_err(io_err("create folder", &folder))?;
        remove_stale_partials(&folder, &name);
        let temp_path = folder.join(partial_name(&name, std::process::id()));
        let file = File::create(&temp_path).map_err(io_err("create", &temp_path))?;
        let properties = WriterProperties::builder()
            .set_compression(options.compression.codec())
            .set_max_row_group_row_count(Some(options.row_group_rows.max(1)))
            .set_created_by(format!("wsync {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = match ArrowWriter::try_new(file, schema, Some(properties)) {
            Ok(w) => w,
            Err(source) => {
                // Best effort: nothing was written worth keeping.
                let _ = std::fs::remove_file(&temp_path);
                return Err(ExportError::Parquet {
                    path: final_path,
                    source,
                });
            }
        };
        Ok(ParquetFile {
            final_path,
            temp_path,
            writer: Some(writer),
            rows: 0,
        })
    }

    /// The path the file will have once finished.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// The temporary path it is written to until then.
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Append `batch` (its schema must be the file's). Full row groups are encoded
    /// and written out as they fill.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ExportError> {
        let writer = self.writer.as_mut().ok_or_else(|| ExportError::Io {
            action: "write to",
            path: self.final_path.clone(),
            source: io::Error::other("the file is already finished"),
        })?;
        writer.write(batch).map_err(|source| ExportError::Parquet {
            path: self.final_path.clone(),
            source,
        })?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Write the footer, fsync, and rename the file to its final name (then fsync
    /// the folder so the rename survives a crash). On error the temporary file is
    /// removed and nothing is left under the final name.
    pub fn finish(mut self) -> Result<ExportedFile, ExportError> {
        let result = self.finish_inner();
        if result.is_err() {
            // Drop runs next and removes the temporary file.
            self.writer = None;
        }
        result
    }

    fn finish_inner(&mut self) -> Result<ExportedFile, ExportError> {
        let writer = self.writer.take().ok_or_else(|| ExportError::Io {
            action: "finish",
            path: self.final_path.clone(),
            source: io::Error::other("the file is already finished"),
        })?;
        let file = writer.into_inner().map_err(|source| ExportError::Parquet {
            path: self.final_path.clone(),
            source,
        })?;
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| ExportError::Io {
                action,
                path,
                source,
            }
        };
        file.sync_all().map_err(io_err("fsync", &self.temp_path))?;
        let bytes = file
            .metadata()
            .map_err(io_err("stat", &self.temp_path))?
            .len();
        drop(file);
        std::fs::rename(&self.temp_path, &self.final_path)
            .map_err(io_err("rename to its final name", &self.final_path))?;
        sync_folder(&self.final_path);
        Ok(ExportedFile {
            path: self.final_path.clone(),
            rows: self.rows,
            bytes,
        })
    }
}

impl Drop for ParquetFile {
    fn drop(&mut self) {
        // Unfinished, or a finish that failed before or at the rename: the partial
        // file must not linger. After a successful rename the temp path no longer
        // exists and this is a no-op.
        self.writer = None;
        if self.temp_path.exists() {
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

/// The temporary name of `name` for process `pid`.
fn partial_name(name: &str, pid: u32) -> String {
    format!(".{name}.partial-{pid}")
}

/// Remove `.<name>.partial-<pid>` files left in `folder` by processes that no
/// longer run (killed mid-export). Only Linux can tell a live pid cheaply
/// (`/proc/<pid>`); elsewhere leftovers are kept, as they are harmless.
fn remove_stale_partials(folder: &Path, name: &str) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let prefix = format!(".{name}.partial-");
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Fsync the folder holding `path` so a rename in it is durable. Best effort: not
/// every platform lets a folder be opened for this.
fn sync_folder(path: &Path) {
    if let Some(folder) = path.parent() {
        let folder = if folder.as_os_str().is_empty() {
            Path::new(".")
        } else {
            folder
        };
        if let Ok(dir) = File::open(folder) {
            let _ = dir.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..n))])
            .expect("batch")
    }

    #[test]
    fn finish_renames_and_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/out.parquet");
        let mut f = ParquetFile::create(&path, batch(0).schema(), &ExportOptions::default())
            .expect("create");
        assert!(!path.exists());
        assert!(f.temp_path().exists());
        f.write(&batch(10)).expect("write");
        let temp = f.temp_path().to_path_buf();
        let done = f.finish().expect("finish");
        assert_eq!(done.rows, 10);
        assert!(done.bytes > 0);
        assert_eq!(std::fs::metadata(&path).expect("final").len(), done.bytes);
        assert!(!temp.exists());
    }

    #[test]
    fn stale_partials_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        // No process has pid u32::MAX on Linux (pid_max is at most 2^22).
        let stale = dir.path().join(partial_name("a.parquet", u32::MAX));
        std::fs::write(&stale, b"junk").expect("write");
        let other = dir.path().join(partial_name("b.parquet", u32::MAX));
        std::fs::write(&other, b"junk").expect("write");
        let f = ParquetFile::create(
            dir.path().join("a.parquet"),
            batch(0).schema(),
            &ExportOptions::default(),
        )
        .expect("create");
        if cfg!(target_os = "linux") {
            assert!(!stale.exists());
        }
        assert!(other.exists(), "another file's partial is not touched");
        drop(f);
    }
}
