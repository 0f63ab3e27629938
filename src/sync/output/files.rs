//! The JSONL run files: `rejected.jsonl` (every run) and `batches.jsonl` (the
//! would-be batches of a dry run, when asked), under `runs_dir/<pipeline>/<run>/`.

use futures::future::BoxFuture;
use futures::FutureExt as _;

use crate::sink::files::JsonlFile;

use super::{RunEnd, RunOutput, Tally, Transformed};
use crate::sync::SyncError;

/// Rejected rows kept per reason for the run report.
const SAMPLES_PER_REASON: usize = 3;

/// Close `file` and note it in `tally` under `name` when it has lines.
fn close(name: &'static str, file: Option<JsonlFile>, tally: &mut Tally) {
    let Some(file) = file else { return };
    let path = file.path().to_owned();
    match file.finish() {
        Ok(Some(written)) => {
            tally.files.insert(name, written);
        }
        Ok(None) => {}
        Err(e) => tally
            .errors
            .push(format!("cannot write {}: {e}", path.display())),
    }
}

/// `rejected.jsonl`, plus the report's samples of each reason.
#[derive(Debug)]
pub struct RejectedFile {
    file: Option<JsonlFile>,
}

impl RejectedFile {
    /// Written at `path` once a row is rejected.
    pub fn new(path: std::path::PathBuf) -> Self {
        Self {
            file: Some(JsonlFile::new(path)),
        }
    }
}

impl RunOutput for RejectedFile {
    fn write<'a>(&'a mut self, chunk: &'a Transformed) -> BoxFuture<'a, Result<(), SyncError>> {
        let result = (|| {
            let Some(file) = self.file.as_mut() else {
                return Ok(());
            };
            for rejected in &chunk.rejected {
                file.write_rejected(rejected)
                    .map_err(|source| SyncError::File {
                        path: file.path().to_owned(),
                        source,
                    })?;
            }
            Ok(())
        })();
        async move { result }.boxed()
    }

    fn finish<'a>(
        &'a mut self,
        _end: RunEnd,
        tally: &'a mut Tally,
    ) -> BoxFuture<'a, Result<(), SyncError>> {
        close("rejected", self.file.take(), tally);
        async { Ok(()) }.boxed()
    }
}

/// Samples of rejected rows for the report (a few per reason).
#[derive(Debug, Default)]
pub struct RejectedSamples {
    samples: std::collections::BTreeMap<&'static str, Vec<crate::mapping::RejectedRow>>,
}

impl RunOutput for RejectedSamples {
    fn write<'a>(&'a mut self, chunk: &'a Transformed) -> BoxFuture<'a, Result<(), SyncError>> {
        for rejected in &chunk.rejected {
            let samples = self.samples.entry(rejected.reason.as_str()).or_default();
            if samples.len() < SAMPLES_PER_REASON {
                samples.push(rejected.clone());
            }
        }
        async { Ok(()) }.boxed()
    }

    fn finish<'a>(
        &'a mut self,
        _end: RunEnd,
        tally: &'a mut Tally,
    ) -> BoxFuture<'a, Result<(), SyncError>> {
        tally.samples = std::mem::take(&mut self.samples);
        async { Ok(()) }.boxed()
    }
}

/// `batches.jsonl`: every batch a dry run would send, one per line. Asked for
/// by the pipeline or `--write-batches`: at ~440 bytes a row, writing them
/// costs a dry run more than mapping does.
#[derive(Debug)]
pub struct BatchesFile {
    file: Option<JsonlFile>,
}

impl BatchesFile {
    /// Written at `path`.
    pub fn new(path: std::path::PathBuf) -> Self {
        Self {
            file: Some(JsonlFile::new(path)),
        }
    }
}

impl RunOutput for BatchesFile {
    fn write<'a>(&'a mut self, chunk: &'a Transformed) -> BoxFuture<'a, Result<(), SyncError>> {
        let result = (|| {
            let Some(file) = self.file.as_mut() else {
                return Ok(());
            };
            for batch in &chunk.batches {
                file.write_line(&batch.json)
                    .map_err(|source| SyncError::File {
                        path: file.path().to_owned(),
                        source,
                    })?;
            }
            Ok(())
        })();
        async move { result }.boxed()
    }

    fn finish<'a>(
        &'a mut self,
        _end: RunEnd,
        tally: &'a mut Tally,
    ) -> BoxFuture<'a, Result<(), SyncError>> {
        close("batches", self.file.take(), tally);
        async { Ok(()) }.boxed()
    }
}
