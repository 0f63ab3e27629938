//! The run's spool: the extract of one window, kept on local disk so that the
//! warehouse is read once, at its own speed, and delivery goes at the feed's.
//!
//! One pipeline has at most one spool, in `<spool_dir>/<pipeline>/` (the
//! pipeline lock keeps a second writer out):
//!
//! - `rows.arrows`: the extracted chunks as an Arrow IPC stream, zstd-compressed
//!   buffers, appended and flushed chunk by chunk so that delivery can read a
//!   chunk as soon as it is written ([`SpoolReader`] follows the writer);
//! - `manifest.json`: which run wrote it, for which window, from which
//!   configuration; rewritten atomically with `complete: true` and the totals
//!   when the extract ended, so a spool without that mark is one a crash cut
//!   short, and is discarded;
//! - `acks.log`: the acknowledged (or dead-lettered) batch ranges
//!   ([`acks`]), so that a run resuming the spool re-sends only what was in
//!   flight.
//!
//! A run that commits deletes its spool. A complete spool survives crashes and
//! failed runs until a run of the same pipeline resumes it, its configuration
//! changes, or it is older than `state.spool_max_age_secs`.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::source::{ColumnInfo, ColumnKind};

pub mod acks;
mod read;
mod write;

pub use acks::{AckLog, AckSet};
pub use read::SpoolReader;
pub use write::{SpoolProgress, SpoolWriter};

/// The rows file of a spool.
const ROWS_FILE: &str = "rows.arrows";
/// The manifest of a spool.
const MANIFEST_FILE: &str = "manifest.json";
/// The acknowledgement log of a spool.
const ACKS_FILE: &str = "acks.log";

/// A spool failure. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file of the spool could not be read or written.
    #[error("spool file {}: cannot {action}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The rows file is not a readable Arrow stream (cut short or corrupted).
    #[error("spool file {}: {message}; delete the folder to have the next run read the warehouse again", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Free disk under the spool folder fell below the configured floor.
    #[error(
        "only {free_mb} MB free under {} (state.min_free_disk_mb = {floor_mb}); \
         free some space or move state.spool_dir to a larger disk. Nothing was sent for this window",
        path.display()
    )]
    LowDisk {
        /// The folder checked.
        path: PathBuf,
        /// Free megabytes.
        free_mb: u64,
        /// The configured floor.
        floor_mb: u64,
    },
}

/// A column as the spool manifest keeps it, so a resumed run needs no probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpooledColumn {
    /// Column name.
    pub name: String,
    /// SQL type as the warehouse reported it.
    pub sql_type: String,
    /// [`ColumnKind::name`].
    pub kind: String,
    /// Declared decimal precision and scale.
    pub decimal: Option<(u8, i8)>,
}

impl SpooledColumn {
    /// The manifest form of a probed column.
    pub fn from_column(c: &ColumnInfo) -> Self {
        Self {
            name: c.name.clone(),
            sql_type: c.sql_type.clone(),
            kind: c.kind.name(),
            decimal: c.decimal,
        }
    }

    /// Back to a column (`None`: a kind this version does not know).
    pub fn to_column(&self) -> Option<ColumnInfo> {
        Some(ColumnInfo {
            name: self.name.clone(),
            sql_type: self.sql_type.clone(),
            kind: ColumnKind::from_name(&self.kind)?,
            decimal: self.decimal,
        })
    }
}

/// What a spool holds and where it came from. Stored as `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of the spool folder.
    pub version: u32,
    /// The run that extracted it.
    pub run_id: i64,
    /// That run's `run_type` (`manual`, `scheduled`, `backfill`).
    pub run_type: String,
    /// The latest run that delivered from the spool (the extracting run, or
    /// one that resumed it): once that run is recorded a success, a spool left
    /// behind by a crash before its removal is known to be done.
    pub delivering_run: Option<i64>,
    /// A backfill's bounds as the user wrote them (`--from`, `--until`).
    pub requested: Option<(String, String)>,
    /// When the extract started.
    pub created_at: DateTime<Utc>,
    /// Iterator window `[start, end)` as text (incremental pipelines).
    pub window_start: Option<String>,
    /// Upper bound of the window.
    pub window_end: Option<String>,
    /// The schedule interval the run covers.
    pub interval: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The watermark stored before the run (a run never moves it down).
    pub previous_watermark: Option<String>,
    /// Hash of the model SQL and the pipeline settings that shape batches: a
    /// spool written under other settings is not resumed.
    pub fingerprint: String,
    /// The model's columns, as probed.
    pub columns: Vec<SpooledColumn>,
    /// Set once the extract ended normally.
    pub complete: bool,
    /// Rows in the spool (final once complete).
    pub rows: u64,
    /// Chunks in the spool (final once complete).
    pub chunks: u64,
    /// Bytes of the rows file (final once complete).
    pub bytes: u64,
}

/// The current spool format.
pub const MANIFEST_VERSION: u32 = 1;

/// What `wsync status` shows of a pipeline's pending spool.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingSpool {
    /// The manifest.
    pub manifest: Manifest,
    /// The folder.
    pub dir: PathBuf,
    /// Batches ranges acknowledged so far (lines in the ack log).
    pub acknowledged_requests: u64,
    /// Size of the rows file now (grows while the extract runs).
    pub bytes_on_disk: u64,
    /// Rows known so far: the manifest's count once complete, else 0.
    pub rows_on_disk: u64,
}

/// One pipeline's spool folder.
#[derive(Debug, Clone)]
pub struct SpoolDir {
    dir: PathBuf,
}

impl SpoolDir {
    /// The spool folder of `pipeline` under `spool_dir`.
    pub fn new(spool_dir: &Path, pipeline: &str) -> Self {
        Self {
            dir: spool_dir.join(pipeline),
        }
    }

    /// The spool in the folder `dir` (a dry run's, under its run folder).
    pub fn at(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The rows file.
    pub fn rows_path(&self) -> PathBuf {
        self.dir.join(ROWS_FILE)
    }

    /// The acknowledgement log.
    pub fn acks_path(&self) -> PathBuf {
        self.dir.join(ACKS_FILE)
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }

    /// The manifest, if a spool is there. A manifest that cannot be parsed
    /// (written by another version, or damaged) reads as `Ok(None)` after a
    /// warning: the spool is then treated as absent and replaced.
    pub fn manifest(&self) -> Result<Option<Manifest>, SpoolError> {
        let path = self.manifest_path();
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SpoolError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        match serde_json::from_slice::<Manifest>(&text) {
            Ok(m) if m.version == MANIFEST_VERSION => Ok(Some(m)),
            Ok(m) => {
                tracing::warn!(path = %path.display(), version = m.version, "Spool written by another wsync version; it will be replaced.");
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Unreadable spool manifest; the spool will be replaced.");
                Ok(None)
            }
        }
    }

    /// The pending spool and how far its delivery got, for `wsync status`.
    pub fn pending(&self) -> Result<Option<PendingSpool>, SpoolError> {
        let Some(manifest) = self.manifest()? else {
            return Ok(None);
        };
        let acknowledged_requests = match fs::read(self.acks_path()) {
            Ok(bytes) => bytes.iter().filter(|b| **b == b'\n').count() as u64,
            Err(_) => 0,
        };
        let bytes_on_disk = fs::metadata(self.rows_path()).map_or(0, |m| m.len());
        Ok(Some(PendingSpool {
            rows_on_disk: manifest.rows,
            manifest,
            dir: self.dir.clone(),
            acknowledged_requests,
            bytes_on_disk,
        }))
    }

    /// Write `manifest` atomically (temporary file, fsync, rename, fsync of the
    /// folder): a crash leaves the old manifest or the new one, never half.
    pub fn write_manifest(&self, manifest: &Manifest) -> Result<(), SpoolError> {
        let path = self.manifest_path();
        let temp = self.dir.join(".manifest.json.tmp");
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| SpoolError::Io {
                action,
                path,
                source,
            }
        };
        fs::create_dir_all(&self.dir).map_err(io("create the folder", &self.dir))?;
        let body = serde_json::to_vec_pretty(manifest).map_err(|e| SpoolError::Io {
            action: "encode",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let mut file = fs::File::create(&temp).map_err(io("create", &temp))?;
        file.write_all(&body).map_err(io("write", &temp))?;
        file.sync_all().map_err(io("fsync", &temp))?;
        fs::rename(&temp, &path).map_err(io("rename into place", &path))?;
        sync_dir(&self.dir);
        Ok(())
    }

    /// Remove the spool (after a commit, or to start over). Missing is fine.
    pub fn remove(&self) -> Result<(), SpoolError> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SpoolError::Io {
                action: "remove",
                path: self.dir.clone(),
                source,
            }),
        }
    }

    /// Start a new spool: remove what was there, create the folder and write
    /// the (incomplete) manifest first, so a crash during the extract leaves a
    /// spool that is recognisably incomplete.
    pub fn create(&self, manifest: &Manifest) -> Result<(), SpoolError> {
        self.remove()?;
        self.write_manifest(manifest)
    }
}

/// Fsync a folder so a rename in it survives a crash (best effort: some
/// filesystems refuse to open folders for syncing).
fn sync_dir(dir: &Path) {
    if let Ok(handle) = fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

/// Free megabytes on the filesystem holding `path` (or its nearest existing
/// ancestor, since the spool folder may not exist yet).
pub fn free_mb(path: &Path) -> Option<u64> {
    let mut probe = path;
    while !probe.exists() {
        probe = probe.parent()?;
    }
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `stat` is a properly sized
    // out-parameter that statvfs fills on success; it is read only then.
    let rc = unsafe { libc::statvfs(c.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `stat`.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::useless_conversion)] // u32 on some targets
    let bytes = u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize));
    Some(bytes / (1024 * 1024))
}

/// Refuse to go on when free disk under `path` is below `floor_mb`.
pub fn check_free_disk(path: &Path, floor_mb: u64) -> Result<(), SpoolError> {
    if floor_mb == 0 {
        return Ok(());
    }
    match free_mb(path) {
        Some(free) if free < floor_mb => Err(SpoolError::LowDisk {
            path: path.to_owned(),
            free_mb: free,
            floor_mb,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            run_id: 7,
            run_type: "manual".into(),
            delivering_run: Some(7),
            requested: None,
            created_at: "2026-12-01T10:00:00Z".parse().unwrap(),
            window_start: Some("1".into()),
            window_end: Some("100".into()),
            interval: None,
            previous_watermark: None,
            fingerprint: "abc".into(),
            columns: vec![SpooledColumn {
                name: "tags".into(),
                sql_type: "TEXT[]".into(),
                kind: "list<text>".into(),
                decimal: None,
            }],
            complete: false,
            rows: 0,
            chunks: 0,
            bytes: 0,
        }
    }

    #[test]
    fn manifest_round_trips_and_remove_clears_the_folder() {
        let root = tempfile::tempdir().unwrap();
        let spool = SpoolDir::new(root.path(), "p1");
        assert_eq!(spool.manifest().unwrap(), None);
        spool.create(&manifest()).unwrap();
        assert_eq!(spool.manifest().unwrap(), Some(manifest()));
        let mut done = manifest();
        done.complete = true;
        done.rows = 10;
        spool.write_manifest(&done).unwrap();
        assert_eq!(spool.manifest().unwrap().unwrap().rows, 10);
        spool.remove().unwrap();
        assert!(!spool.path().exists());
        spool.remove().unwrap();
    }

    #[test]
    fn spooled_columns_round_trip_every_kind() {
        let kinds = [
            ColumnKind::Bool,
            ColumnKind::Int,
            ColumnKind::UInt,
            ColumnKind::Float32,
            ColumnKind::Float64,
            ColumnKind::Decimal,
            ColumnKind::Text,
            ColumnKind::Uuid,
            ColumnKind::Json,
            ColumnKind::Bytes,
            ColumnKind::Date,
            ColumnKind::Time,
            ColumnKind::Timestamp,
            ColumnKind::TimestampTz,
            ColumnKind::List(Box::new(ColumnKind::Decimal)),
        ];
        for kind in kinds {
            let column = ColumnInfo {
                name: "c".into(),
                sql_type: "T".into(),
                kind,
                decimal: Some((14, 2)),
            };
            let spooled = SpooledColumn::from_column(&column);
            assert_eq!(spooled.to_column(), Some(column));
        }
        let unknown = SpooledColumn {
            name: "c".into(),
            sql_type: "T".into(),
            kind: "list<hologram>".into(),
            decimal: None,
        };
        assert_eq!(unknown.to_column(), None);
    }

    #[test]
    fn a_damaged_manifest_reads_as_no_spool() {
        let root = tempfile::tempdir().unwrap();
        let spool = SpoolDir::new(root.path(), "p1");
        fs::create_dir_all(spool.path()).unwrap();
        fs::write(spool.path().join(MANIFEST_FILE), b"{not json").unwrap();
        assert_eq!(spool.manifest().unwrap(), None);
    }

    #[test]
    fn low_disk_floor_is_refused_with_the_folder_named() {
        let root = tempfile::tempdir().unwrap();
        assert!(free_mb(&root.path().join("not/yet/there")).is_some());
        check_free_disk(root.path(), 0).unwrap();
        let err = check_free_disk(root.path(), u64::MAX).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("state.min_free_disk_mb"), "{text}");
        assert!(text.contains(&root.path().display().to_string()), "{text}");
    }
}
