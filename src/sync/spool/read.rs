//! Reading a spool's rows file, chunk by chunk, while it is written or after.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use arrow::array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use tokio::sync::watch;

use super::{SpoolDir, SpoolError, SpoolProgress};

/// Reads the chunks of a spool in order. It never reads past the chunks its
/// progress channel announced, so it can follow a [`super::SpoolWriter`].
pub struct SpoolReader {
    path: PathBuf,
    progress: watch::Receiver<SpoolProgress>,
    reader: Option<StreamReader<BufReader<File>>>,
    read: u64,
}

impl std::fmt::Debug for SpoolReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolReader")
            .field("path", &self.path)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl SpoolReader {
    /// A reader following a writer's progress.
    pub fn follow(dir: &SpoolDir, progress: watch::Receiver<SpoolProgress>) -> Self {
        Self {
            path: dir.rows_path(),
            progress,
            reader: None,
            read: 0,
        }
    }

    /// A reader of a complete spool of `chunks` chunks.
    pub fn complete(dir: &SpoolDir, chunks: u64, rows: u64) -> Self {
        let (_, progress) = watch::channel(SpoolProgress {
            chunks,
            rows,
            done: true,
        });
        Self::follow(dir, progress)
    }

    fn corrupt(&self, message: impl Into<String>) -> SpoolError {
        SpoolError::Corrupt {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// The next chunk, waiting for the writer if it has not written it yet.
    /// `None` once the writer is done (or gone) and every chunk was read.
    pub async fn next(&mut self) -> Result<Option<RecordBatch>, SpoolError> {
        loop {
            let progress = *self.progress.borrow_and_update();
            if self.read < progress.chunks {
                return self.read_one().map(Some);
            }
            if progress.done {
                return Ok(None);
            }
            if self.progress.changed().await.is_err() {
                // The writer went away without saying it was done: whatever
                // ended the extract is reported by the extract itself.
                let progress = *self.progress.borrow();
                if self.read < progress.chunks {
                    continue;
                }
                return Ok(None);
            }
        }
    }

    fn read_one(&mut self) -> Result<RecordBatch, SpoolError> {
        if self.reader.is_none() {
            let file = File::open(&self.path).map_err(|source| SpoolError::Io {
                action: "open",
                path: self.path.clone(),
                source,
            })?;
            let reader = StreamReader::try_new(BufReader::with_capacity(1 << 20, file), None)
                .map_err(|e| self.corrupt(e.to_string()))?;
            self.reader = Some(reader);
        }
        let next = self.reader.as_mut().and_then(Iterator::next);
        match next {
            Some(Ok(chunk)) => {
                self.read += 1;
                Ok(chunk)
            }
            Some(Err(e)) => Err(self.corrupt(format!("chunk {}: {e}", self.read + 1))),
            None => Err(self.corrupt(format!(
                "ends after {} chunks, but {} were written",
                self.read,
                self.progress.borrow().chunks
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::super::{SpoolDir, SpoolWriter};
    use super::*;

    fn chunk(start: i64, n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let ids: Vec<i64> = (start..start + n).collect();
        let names: Vec<Option<String>> = ids
            .iter()
            .map(|i| (i % 3 != 0).then(|| format!("name-{i}")))
            .collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_reader_follows_the_writer_and_reads_every_chunk_back_exactly() {
        let root = tempfile::tempdir().unwrap();
        let dir = SpoolDir::new(root.path(), "p");
        std::fs::create_dir_all(dir.path()).unwrap();
        let (mut writer, progress) = SpoolWriter::new(&dir, 0);
        let mut reader = SpoolReader::follow(&dir, progress);
        let chunks: Vec<RecordBatch> = (0..5).map(|i| chunk(i * 100, 100)).collect();
        let expected = chunks.clone();
        let write = tokio::spawn(async move {
            for c in &chunks {
                writer.write(c).unwrap();
                tokio::task::yield_now().await;
            }
            writer.finish().unwrap()
        });
        let mut got = Vec::new();
        while let Some(c) = reader.next().await.unwrap() {
            got.push(c);
        }
        let bytes = write.await.unwrap();
        assert!(bytes > 0);
        assert_eq!(got, expected);
        // Read again from the finished file, as a resumed run does.
        let mut again = SpoolReader::complete(&dir, 5, 500);
        let mut n = 0;
        while let Some(c) = again.next().await.unwrap() {
            assert_eq!(c, expected[n]);
            n += 1;
        }
        assert_eq!(n, 5);
    }

    #[tokio::test]
    async fn a_spool_shorter_than_its_manifest_is_reported_corrupt() {
        let root = tempfile::tempdir().unwrap();
        let dir = SpoolDir::new(root.path(), "p");
        std::fs::create_dir_all(dir.path()).unwrap();
        let (mut writer, _) = SpoolWriter::new(&dir, 0);
        writer.write(&chunk(0, 10)).unwrap();
        writer.finish().unwrap();
        let mut reader = SpoolReader::complete(&dir, 2, 20);
        assert!(reader.next().await.unwrap().is_some());
        let err = reader.next().await.unwrap_err().to_string();
        assert!(
            err.contains("ends after 1 chunks, but 2 were written"),
            "{err}"
        );
        assert!(err.contains("rows.arrows"), "{err}");
    }
}
