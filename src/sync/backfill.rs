//! Parallel backfills: `[from, until)` cut into chunks that every process on
//! the state store runs side by side.
//!
//! [`enqueue`] checks the bounds, cuts the range into equal parts of the
//! iterator and records them ([`crate::state::backfills`]). Each chunk is then
//! an ordinary backfill run of its own range ([`RunKind::Backfill`] with the
//! chunk), under the chunk's own lease and in its own spool folder, so chunks
//! run at once on several daemons and beside the pipeline's scheduled runs
//! (a backfill never moves the watermark). Whoever has a free slot takes the
//! next chunk ([`run_next_chunk`]): the daemons, and the `wsync backfill` that
//! asked for it ([`work`]). A chunk stopped part way (a crash, SIGKILL, a
//! shutdown) is taken over once its lease expires and resumes from its
//! checkpoint; its spool, left on the host that died, is swept there later
//! ([`sweep_spools`]).
//!
//! Chunks send through the feed's shared budget like any run, so a backfill
//! on eight daemons sends no faster than the account allows: it finishes
//! sooner only when the warehouse, not the budget, was the bound.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::model::SyncMode;
use crate::source::IteratorValue;
use crate::state::{BackfillStatus, Chunk, ChunkRef, NewBackfill, StateError};

use super::spool::SpoolDir;
use super::{window, RunKind, RunReport, SyncContext, SyncError};

/// The folder under `state.spool_dir` holding the chunks' spools, one folder
/// per pipeline (a pipeline's own spool is `<spool_dir>/<pipeline>/`; a
/// pipeline id is a file stem and never starts with a dot).
const CHUNK_SPOOLS: &str = ".backfill";

/// How long [`work`] waits before looking again when every open chunk is
/// held by another process.
const POLL: Duration = Duration::from_secs(1);

/// How long a process leaves a chunk whose run failed before trying it again:
/// a warehouse down for a moment would otherwise use up the chunk's attempts
/// in seconds.
pub const RETRY_PAUSE: Duration = Duration::from_secs(30);

/// The spool folder of a run of `kind`: a chunk's own, else the pipeline's.
pub fn spool_dir(spool_dir: &Path, pipeline: &str, kind: &RunKind) -> SpoolDir {
    match kind {
        RunKind::Backfill {
            chunk: Some(chunk), ..
        } => SpoolDir::at(chunk_spool_path(spool_dir, pipeline, *chunk)),
        _ => SpoolDir::new(spool_dir, pipeline),
    }
}

fn chunk_spool_path(spool_dir: &Path, pipeline: &str, chunk: ChunkRef) -> PathBuf {
    spool_dir
        .join(CHUNK_SPOOLS)
        .join(pipeline)
        .join(format!("{}-{}", chunk.backfill, chunk.chunk))
}

/// Check `[from, until)` for `pipeline_id`, cut it into `chunks` parts and
/// record the backfill; returns its id.
pub async fn enqueue(
    ctx: &SyncContext,
    pipeline_id: &str,
    from: &str,
    until: &str,
    chunks: u32,
) -> Result<i64, SyncError> {
    let pipeline = ctx.pipeline(pipeline_id)?;
    let SyncMode::Incremental {
        iterator_data_type,
        time_zone,
        ..
    } = &pipeline.sync_mode
    else {
        return Err(SyncError::Unsupported {
            pipeline: pipeline.id.clone(),
            message: "it is a full sync: there is no iterator range to cut into chunks".to_owned(),
        });
    };
    if pipeline.input_protection == crate::config::model::InputProtection::OnlyRead {
        return Err(SyncError::Unsupported {
            pipeline: pipeline.id.clone(),
            message: "it is `only_read`: its dry runs record nothing in the state store, so \
                      chunks could not be tracked across processes; backfill it without --chunks"
                .to_owned(),
        });
    }
    let data_type = *iterator_data_type;
    let bound = |which: &'static str, text: &str| {
        window::parse_bound(data_type, *time_zone, text).ok_or_else(|| SyncError::BadBound {
            pipeline: pipeline.id.clone(),
            which,
            value: text.to_owned(),
            data_type: data_type.as_str(),
            hint: super::plan::bound_hint(data_type),
        })
    };
    let (lower, upper) = (bound("--from", from)?, bound("--until", until)?);
    let parts = split(lower, upper, chunks).ok_or_else(|| SyncError::Unsupported {
        pipeline: pipeline.id.clone(),
        message: format!("--from {from} is not before --until {until}: there is nothing to cut"),
    })?;
    let text: Vec<(String, String)> = parts
        .iter()
        .map(|(a, b)| (window::to_text(a), window::to_text(b)))
        .collect();
    Ok(ctx
        .state
        .create_backfill(&NewBackfill {
            pipeline_id: &pipeline.id,
            requested: (from, until),
            chunks: &text,
            now: ctx.clock.now(),
        })
        .await?)
}

/// `[lower, upper)` cut into at most `n` contiguous, non-empty, equal parts
/// (the last may be shorter): by microseconds for timestamps, days for
/// dates, values for numbers. `None` when the range is empty.
pub fn split(
    lower: IteratorValue,
    upper: IteratorValue,
    n: u32,
) -> Option<Vec<(IteratorValue, IteratorValue)>> {
    let (start, end) = (ordinal(lower), ordinal(upper));
    if start >= end {
        return None;
    }
    let width = end - start;
    let n = i128::from(n.max(1)).min(width);
    // Ceiling division: n parts of `step` cover the range; the last is cut
    // at `end`.
    let step = (width + n - 1) / n;
    let mut parts = Vec::new();
    let mut at = start;
    while at < end {
        let next = (at + step).min(end);
        parts.push((from_ordinal(lower, at)?, from_ordinal(lower, next)?));
        at = next;
    }
    Some(parts)
}

/// A value as a position on a line (microseconds, days, the integer).
fn ordinal(value: IteratorValue) -> i128 {
    match value {
        IteratorValue::TimestampTz(t) => i128::from(t.timestamp_micros()),
        IteratorValue::Timestamp(t) => i128::from(t.and_utc().timestamp_micros()),
        IteratorValue::Date(d) => i128::from(chrono::Datelike::num_days_from_ce(&d)),
        IteratorValue::Integer(i) => i128::from(i),
    }
}

/// The value of the same kind as `like` at position `at`.
fn from_ordinal(like: IteratorValue, at: i128) -> Option<IteratorValue> {
    let at = i64::try_from(at).ok()?;
    Some(match like {
        IteratorValue::TimestampTz(_) => {
            IteratorValue::TimestampTz(chrono::DateTime::from_timestamp_micros(at)?)
        }
        IteratorValue::Timestamp(_) => {
            IteratorValue::Timestamp(chrono::DateTime::from_timestamp_micros(at)?.naive_utc())
        }
        IteratorValue::Date(_) => {
            let days = i32::try_from(at).ok()?;
            IteratorValue::Date(chrono::NaiveDate::from_num_days_from_ce_opt(days)?)
        }
        IteratorValue::Integer(_) => IteratorValue::Integer(at),
    })
}

/// Chunks a process is running (or gave up on), shared by its workers.
#[derive(Debug, Default)]
pub struct ChunkSet(Mutex<HashSet<ChunkRef>>);

impl ChunkSet {
    /// Add `chunk`; `false` when it was there already.
    pub fn insert(&self, chunk: ChunkRef) -> bool {
        lock(&self.0).insert(chunk)
    }

    /// Remove `chunk`.
    pub fn remove(&self, chunk: ChunkRef) {
        lock(&self.0).remove(&chunk);
    }
}

/// Chunks a process leaves alone for now: until an instant (a failed run's
/// [`RETRY_PAUSE`]), or for good (a run that could not even start).
#[derive(Debug, Default)]
pub struct ChunkHold(Mutex<HashMap<ChunkRef, Option<tokio::time::Instant>>>);

impl ChunkHold {
    /// Leave `chunk` alone until `until` (`None`: for the life of the process).
    pub fn hold(&self, chunk: ChunkRef, until: Option<tokio::time::Instant>) {
        lock(&self.0).insert(chunk, until);
    }

    /// Whether `chunk` is left alone now.
    pub fn holds(&self, chunk: ChunkRef) -> bool {
        lock(&self.0)
            .get(&chunk)
            .is_some_and(|until| until.is_none_or(|t| tokio::time::Instant::now() < t))
    }

    /// Whether `chunk` is left alone for good.
    pub fn refused(&self, chunk: ChunkRef) -> bool {
        matches!(lock(&self.0).get(&chunk), Some(None))
    }
}

/// What [`run_next_chunk`] did.
#[derive(Debug)]
pub enum ChunkOutcome {
    /// No chunk could be started now (none open, or every open one is held).
    Idle,
    /// Another process took the chunk first, or it closed meanwhile: look again.
    Lost,
    /// The chunk's run ended (its report says how).
    Ran(Chunk, Box<RunReport>),
    /// The chunk's run could not start or record its outcome.
    Failed(Chunk, SyncError),
}

/// Take the first chunk this process can start (of backfill `only`, or of
/// any backfill of a pipeline this project knows; not one of `skip`) and run
/// it.
pub async fn run_next_chunk(
    ctx: &SyncContext,
    only: Option<i64>,
    busy: &ChunkSet,
    skip: &ChunkHold,
) -> Result<ChunkOutcome, SyncError> {
    let Some(chunk) = next_chunk(ctx, only, busy, |c| skip.holds(c.id)).await? else {
        return Ok(ChunkOutcome::Idle);
    };
    let result = run_chunk(ctx, &chunk).await;
    busy.remove(chunk.id);
    Ok(match result {
        Ok(report) => ChunkOutcome::Ran(chunk, Box::new(report)),
        Err(SyncError::State(StateError::InProgress { .. } | StateError::ChunkClosed { .. })) => {
            ChunkOutcome::Lost
        }
        Err(e) => ChunkOutcome::Failed(chunk, e),
    })
}

/// The first claimable chunk not already being run by this process and not
/// `skip`ped, marked busy.
pub async fn next_chunk(
    ctx: &SyncContext,
    only: Option<i64>,
    busy: &ChunkSet,
    skip: impl Fn(&Chunk) -> bool,
) -> Result<Option<Chunk>, SyncError> {
    let candidates = ctx.state.claimable_chunks(only, 64).await?;
    Ok(candidates
        .into_iter()
        .filter(|c| ctx.project.pipelines.contains_key(&c.pipeline_id) && !skip(c))
        .find(|c| busy.insert(c.id)))
}

/// Run one chunk now (fails with `InProgress` when another process holds it,
/// `ChunkClosed` when it is done or cancelled).
pub async fn run_chunk(ctx: &SyncContext, chunk: &Chunk) -> Result<RunReport, SyncError> {
    super::run(
        ctx,
        &chunk.pipeline_id,
        RunKind::Backfill {
            from: chunk.from.clone(),
            until: chunk.until.clone(),
            chunk: Some(chunk.id),
        },
    )
    .await
}

/// Run chunks of backfill `id` with `workers` at once in this process (each
/// on a thread of its own, as the daemon runs pipelines), alongside whichever
/// daemons take chunks too, until no chunk is pending or running anywhere
/// (or shutdown). `on_chunk` hears of every chunk this process ran.
pub async fn work(
    ctx: &SyncContext,
    id: i64,
    workers: usize,
    on_chunk: Arc<dyn Fn(&ChunkOutcome) + Send + Sync>,
) -> Result<BackfillStatus, SyncError> {
    let busy: Arc<ChunkSet> = Arc::default();
    let held: Arc<ChunkHold> = Arc::default();
    let runtime = tokio::runtime::Handle::current();
    let mut threads = Vec::new();
    for _ in 0..workers.max(1) {
        let sets = (Arc::clone(&busy), Arc::clone(&held));
        let (ctx, runtime, on_chunk) = (ctx.clone(), runtime.clone(), Arc::clone(&on_chunk));
        threads.push(tokio::task::spawn_blocking(move || {
            runtime.block_on(worker(ctx, id, sets, on_chunk))
        }));
    }
    let mut first_error = None;
    for thread in threads {
        let result = thread
            .await
            .map_err(|e| SyncError::Internal(format!("a backfill worker ended abnormally: {e}")))
            .and_then(|r| r);
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    sweep_spools(ctx).await;
    ctx.state
        .backfill(id)
        .await?
        .ok_or_else(|| SyncError::Internal(format!("backfill {id} vanished from the state store")))
}

/// One worker of [`work`]: chunk after chunk, then wait for the chunks held
/// elsewhere (a holder that dies leaves its chunk claimable once its lease
/// expires, and this worker takes it). A chunk whose run failed waits
/// [`RETRY_PAUSE`]; one whose run could not even start here (its SQL
/// refused, no disk) is not tried again by this process: the error was
/// printed, and retrying would only repeat it.
async fn worker(
    ctx: SyncContext,
    id: i64,
    (busy, held): (Arc<ChunkSet>, Arc<ChunkHold>),
    on_chunk: Arc<dyn Fn(&ChunkOutcome) + Send + Sync>,
) -> Result<(), SyncError> {
    while !ctx.shutdown.is_cancelled() {
        match run_next_chunk(&ctx, Some(id), &busy, &held).await? {
            ChunkOutcome::Idle => {
                let Some(status) = ctx.state.backfill(id).await? else {
                    return Ok(());
                };
                let waiting = status.chunks.iter().any(|c| {
                    c.state == crate::state::ChunkState::Running
                        || (c.state == crate::state::ChunkState::Pending
                            && !held.refused(ChunkRef {
                                backfill: id,
                                chunk: c.chunk,
                            }))
                });
                if !waiting {
                    return Ok(());
                }
                tokio::select! {
                    () = ctx.shutdown.cancelled() => {}
                    () = tokio::time::sleep(POLL) => {}
                }
            }
            ChunkOutcome::Lost => {}
            ChunkOutcome::Failed(chunk, e) => {
                held.hold(chunk.id, None);
                on_chunk(&ChunkOutcome::Failed(chunk, e));
            }
            ChunkOutcome::Ran(chunk, report) => {
                if report.record.state == crate::state::RunState::Failed {
                    held.hold(chunk.id, Some(tokio::time::Instant::now() + RETRY_PAUSE));
                }
                on_chunk(&ChunkOutcome::Ran(chunk, report));
            }
        }
    }
    Ok(())
}

/// Delete this host's chunk spools whose chunk no longer needs them (done,
/// cancelled, given up, or gone from the store). A spool whose chunk is still
/// open stays: a run of the chunk on this host resumes it. Best effort: a
/// failure is logged and the next sweep tries again.
pub async fn sweep_spools(ctx: &SyncContext) {
    let root = ctx.project.state.spool_dir.join(CHUNK_SPOOLS);
    let Ok(pipelines) = std::fs::read_dir(&root) else {
        return;
    };
    for pipeline in pipelines.flatten() {
        let Ok(spools) = std::fs::read_dir(pipeline.path()) else {
            continue;
        };
        for spool in spools.flatten() {
            let name = spool.file_name().to_string_lossy().into_owned();
            let Some(chunk) = parse_chunk_dir(&name) else {
                continue;
            };
            let open = match ctx.state.backfill(chunk.backfill).await {
                Ok(Some(status)) => status.chunks.iter().any(|c| {
                    c.chunk == chunk.chunk
                        && matches!(
                            c.state,
                            crate::state::ChunkState::Pending | crate::state::ChunkState::Running
                        )
                }),
                Ok(None) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot check a backfill chunk's spool.");
                    continue;
                }
            };
            if !open {
                // Another task's sweep may have deleted it first.
                let removed = match std::fs::remove_dir_all(spool.path()) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    other => other,
                };
                if let Err(e) = removed {
                    tracing::warn!(path = %spool.path().display(), error = %e,
                        "Cannot delete a finished backfill chunk's spool.");
                }
            }
        }
    }
}

/// `<backfill>-<chunk>`, a chunk spool folder's name.
fn parse_chunk_dir(name: &str) -> Option<ChunkRef> {
    let (b, c) = name.split_once('-')?;
    Some(ChunkRef {
        backfill: b.parse().ok()?,
        chunk: c.parse().ok()?,
    })
}

/// A mutex that stays usable after a panic elsewhere (the set is plain state).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone, Utc};

    fn text(parts: &[(IteratorValue, IteratorValue)]) -> Vec<(String, String)> {
        parts
            .iter()
            .map(|(a, b)| (window::to_text(a), window::to_text(b)))
            .collect()
    }

    #[test]
    fn timestamps_split_into_contiguous_equal_parts() {
        let a = IteratorValue::TimestampTz(Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap());
        let b = IteratorValue::TimestampTz(Utc.with_ymd_and_hms(2024, 1, 5, 0, 0, 0).unwrap());
        let parts = split(a, b, 4).unwrap();
        assert_eq!(
            text(&parts),
            vec![
                ("2024-01-01T00:00:00Z".into(), "2024-01-02T00:00:00Z".into()),
                ("2024-01-02T00:00:00Z".into(), "2024-01-03T00:00:00Z".into()),
                ("2024-01-03T00:00:00Z".into(), "2024-01-04T00:00:00Z".into()),
                ("2024-01-04T00:00:00Z".into(), "2024-01-05T00:00:00Z".into()),
            ]
        );
    }

    #[test]
    fn a_range_shorter_than_the_chunks_gets_one_chunk_per_value() {
        let a = IteratorValue::Date(NaiveDate::from_ymd_opt(2024, 2, 27).unwrap());
        let b = IteratorValue::Date(NaiveDate::from_ymd_opt(2024, 3, 1).unwrap());
        let parts = split(a, b, 10).unwrap();
        assert_eq!(
            text(&parts),
            vec![
                ("2024-02-27".into(), "2024-02-28".into()),
                ("2024-02-28".into(), "2024-02-29".into()),
                ("2024-02-29".into(), "2024-03-01".into()),
            ]
        );
    }

    #[test]
    fn integers_split_with_a_shorter_last_part_and_no_gap() {
        let parts = split(IteratorValue::Integer(-5), IteratorValue::Integer(5), 3).unwrap();
        assert_eq!(
            parts,
            vec![
                (IteratorValue::Integer(-5), IteratorValue::Integer(-1)),
                (IteratorValue::Integer(-1), IteratorValue::Integer(3)),
                (IteratorValue::Integer(3), IteratorValue::Integer(5)),
            ]
        );
        assert_eq!(
            split(IteratorValue::Integer(5), IteratorValue::Integer(5), 3),
            None
        );
    }

    #[test]
    fn naive_timestamps_keep_their_wall_clock_form() {
        let at = |h| {
            IteratorValue::Timestamp(
                NaiveDate::from_ymd_opt(2024, 1, 1)
                    .unwrap()
                    .and_hms_opt(h, 0, 0)
                    .unwrap(),
            )
        };
        let parts = split(at(0), at(3), 3).unwrap();
        assert_eq!(parts[1], (at(1), at(2)));
        assert_eq!(window::to_text(&parts[2].1), "2024-01-01T03:00:00");
    }

    #[test]
    fn a_held_chunk_is_left_alone_until_its_pause_ends_or_for_good() {
        let held = ChunkHold::default();
        let (a, b, c) = (
            ChunkRef {
                backfill: 1,
                chunk: 0,
            },
            ChunkRef {
                backfill: 1,
                chunk: 1,
            },
            ChunkRef {
                backfill: 1,
                chunk: 2,
            },
        );
        let now = tokio::time::Instant::now();
        held.hold(a, Some(now + RETRY_PAUSE));
        held.hold(b, Some(now - Duration::from_millis(1)));
        held.hold(c, None);
        assert!(
            held.holds(a) && !held.refused(a),
            "paused after a failed run"
        );
        assert!(!held.holds(b), "its pause is over");
        assert!(held.holds(c) && held.refused(c), "its run could not start");
        assert!(!held.holds(ChunkRef {
            backfill: 2,
            chunk: 0
        }));
    }

    #[test]
    fn chunk_spool_folders_name_their_chunk() {
        let chunk = ChunkRef {
            backfill: 12,
            chunk: 3,
        };
        let path = chunk_spool_path(Path::new("/s"), "orders", chunk);
        assert_eq!(path, Path::new("/s/.backfill/orders/12-3"));
        assert_eq!(parse_chunk_dir("12-3"), Some(chunk));
        assert_eq!(parse_chunk_dir("orders"), None);
    }
}
