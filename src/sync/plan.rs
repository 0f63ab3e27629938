//! Planning a run before the warehouse is asked: which iterator window it
//! reads (watermark, lag, checkpoint of an unfinished run, backfill bounds),
//! and whether a pending spool is resumed instead.

use crate::config::model::{IteratorDataType, Pipeline, SyncMode};
use crate::source::IteratorValue;

use super::spool::{Manifest, SpoolDir};
use super::{window, RunKind, SyncContext, SyncError};

/// The iterator window a run will read, before the warehouse is asked (an
/// integer sequence's upper bound is fixed after connecting).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WindowPlan {
    pub lower: Option<IteratorValue>,
    pub upper: Option<IteratorValue>,
    /// The unfinished run whose checkpoint is the lower bound.
    pub resumed_from: Option<i64>,
    /// The stored watermark: a run never moves it down.
    pub previous: Option<IteratorValue>,
}

/// Where a run starts and ends reading. See the module notes.
pub(crate) async fn plan_window(
    ctx: &SyncContext,
    pipeline: &Pipeline,
    kind: &RunKind,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<WindowPlan, SyncError> {
    let SyncMode::Incremental {
        iterator_data_type: data_type,
        from,
        lag,
        time_zone,
        ..
    } = &pipeline.sync_mode
    else {
        return Ok(WindowPlan {
            lower: None,
            upper: None,
            resumed_from: None,
            previous: None,
        });
    };
    let (data_type, zone) = (*data_type, *time_zone);
    if let RunKind::Backfill { from, until, chunk } = kind {
        let bound = |which: &'static str, text: &str| {
            window::parse_bound(data_type, zone, text).ok_or_else(|| SyncError::BadBound {
                pipeline: pipeline.id.clone(),
                which,
                value: text.to_owned(),
                data_type: data_type.as_str(),
                hint: bound_hint(data_type),
            })
        };
        let mut lower = bound("--from", from)?;
        let mut resumed_from = None;
        // A chunk whose last run stopped part way resumes from its checkpoint
        // (on whichever host takes it over), as a pipeline's runs do.
        if let Some(chunk) = chunk {
            let point = ctx.state.chunk_resume_point(*chunk).await?;
            if let Some(point) = point {
                let checkpoint = window::parse(data_type, &point.checkpoint).ok_or_else(|| {
                    SyncError::BadWatermark {
                        pipeline: pipeline.id.clone(),
                        value: point.checkpoint.clone(),
                        data_type: data_type.as_str(),
                    }
                })?;
                if checkpoint > lower {
                    lower = checkpoint;
                    resumed_from = Some(point.run_id);
                }
            }
        }
        return Ok(WindowPlan {
            lower: Some(lower),
            upper: Some(bound("--until", until)?),
            resumed_from,
            previous: None,
        });
    }
    let parse_stored = |text: &str| {
        window::parse(data_type, text).ok_or_else(|| SyncError::BadWatermark {
            pipeline: pipeline.id.clone(),
            value: text.to_owned(),
            data_type: data_type.as_str(),
        })
    };
    let watermark = match ctx.state.watermark(&pipeline.id).await? {
        Some(text) => Some(parse_stored(&text)?),
        None => None,
    };
    // Lag re-reads a margin below the watermark for rows committed late; the
    // first window starts at `from` as written.
    let mut lower = match (watermark, from) {
        (Some(w), _) => Some(window::minus_lag(data_type, w, *lag)),
        (None, Some(from)) => Some(parse_stored(from)?),
        (None, None) => None,
    };
    let mut resumed_from = None;
    if let Some(point) = ctx.state.resume_point(&pipeline.id).await? {
        let checkpoint = parse_stored(&point.checkpoint)?;
        // A checkpoint at or below the watermark adds nothing.
        if watermark.is_none_or(|w| checkpoint > w) {
            lower = Some(checkpoint);
            resumed_from = Some(point.run_id);
        }
    }
    let upper_at = match kind {
        RunKind::Scheduled {
            interval: Some((_, end)),
            ..
        } => *end,
        _ => now,
    };
    Ok(WindowPlan {
        lower,
        upper: window::upper_at(data_type, zone, upper_at),
        resumed_from,
        previous: watermark,
    })
}

/// How to write a bound of this iterator type on the command line.
pub(crate) fn bound_hint(data_type: IteratorDataType) -> &'static str {
    match data_type {
        IteratorDataType::TimestampTz => "write an RFC 3339 instant, e.g. 2024-01-01T00:00:00Z",
        IteratorDataType::TimestampNtz => {
            "write 2024-01-01T00:00:00 (wall clock in iterator_time_zone) or an RFC 3339 instant"
        }
        IteratorDataType::Date => "write a date, e.g. 2024-01-01, or an RFC 3339 instant",
        IteratorDataType::UnixSeconds | IteratorDataType::UnixMillis => {
            "write the number, or an RFC 3339 instant"
        }
        IteratorDataType::Integer => "write an integer",
    }
}

/// Hash of what shapes a spool's rows and their batches: the model SQL, the
/// connection, and the pipeline settings that mapping and protection read.
/// A spool written under another fingerprint is not resumed. The schedule and
/// `paused` are left out: changing them does not change what was read.
pub(crate) fn fingerprint(project: &crate::config::model::Project, pipeline: &Pipeline) -> String {
    use sha2::{Digest, Sha256};
    let model = &project.models[&pipeline.data_model];
    let mut hash = Sha256::new();
    for part in [
        model.sql.as_str(),
        pipeline.connection.as_str(),
        pipeline.feed.as_deref().unwrap_or(""),
        &format!("{:?}", pipeline.environment),
        &format!("{:?}", pipeline.sync_mode),
        &format!("{:?}", pipeline.input_protection),
        &format!("{:?}", pipeline.null_policy),
        &format!("{:?}", pipeline.limit_policy),
        &format!("{:?}", pipeline.mappings),
    ] {
        hash.update(part.len().to_le_bytes());
        hash.update(part.as_bytes());
    }
    // Event pipelines and data plans change the batches a spool maps to; only
    // hashed when set, so the spools of user-data pipelines stay resumable.
    if pipeline.pipeline_type != crate::config::model::PipelineType::UserAttributes
        || pipeline.data_plan.is_some()
    {
        let part = format!("{:?} {:?}", pipeline.pipeline_type, pipeline.data_plan);
        hash.update(part.len().to_le_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(hash.finalize())
}

/// A pending spool this run will deliver, or `None` (any unusable spool is
/// removed here, with the reason logged).
pub(crate) async fn pending_spool(
    ctx: &SyncContext,
    kind: &RunKind,
    dir: &SpoolDir,
    fingerprint: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Manifest>, SyncError> {
    let Some(manifest) = dir.manifest()? else {
        // Leftovers without a manifest (a crash before it was written).
        dir.remove()?;
        return Ok(None);
    };
    let max_age = ctx.project.state.spool_max_age;
    let age = now - manifest.created_at;
    let committed = match manifest.delivering_run {
        Some(id) => ctx
            .state
            .run(id)
            .await?
            .is_some_and(|r| r.state == crate::state::RunState::Success),
        None => false,
    };
    // Another daemon (another host, its own spool folder) ran the pipeline
    // after this spool's run: this spool's rows are older than what it sent.
    let overtaken = match (manifest.run_type.as_str(), manifest.delivering_run) {
        ("backfill", _) | (_, None) => None,
        (_, Some(id)) => {
            let pipeline = dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            ctx.state
                .latest_window_run(&pipeline)
                .await?
                .filter(|latest| *latest > id)
        }
    };
    let discard = if !manifest.complete {
        Some(
            "its extract did not finish (the process stopped while reading the warehouse)"
                .to_owned(),
        )
    } else if committed {
        Some("the run that delivered it already committed".to_owned())
    } else if let Some(latest) = overtaken {
        Some(format!(
            "the pipeline ran since (run {latest}, on another daemon): its rows are older than \
             what that run sent"
        ))
    } else if manifest.fingerprint != fingerprint {
        Some(
            "the model SQL or the pipeline's mapping settings changed since it was written"
                .to_owned(),
        )
    } else if age.to_std().is_ok_and(|a| a > max_age) {
        Some(format!(
            "it is {} h old, past state.spool_max_age_secs ({} h): its data is too old to send",
            age.num_hours(),
            max_age.as_secs() / 3600
        ))
    } else {
        None
    };
    if let Some(reason) = discard {
        crate::telemetry::events::SpoolDiscarded {
            run_id: manifest.run_id,
            rows: manifest.rows,
            reason: &reason,
        }
        .emit();
        dir.remove()?;
        return Ok(None);
    }
    // A backfill asks for its own window: it resumes only its own spool, and
    // leaves another run's undelivered spool for `wsync run` to finish.
    if let RunKind::Backfill { from, until, .. } = kind {
        let same = manifest.run_type == "backfill"
            && manifest.requested.as_ref() == Some(&(from.clone(), until.clone()));
        if !same {
            return Err(SyncError::Unsupported {
                pipeline: dir
                    .path()
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                message: format!(
                    "run {} left {} rows spooled and not yet delivered (window {} to {}); \
                     `wsync run` delivers them first, then run this backfill again",
                    manifest.run_id,
                    manifest.rows,
                    manifest.window_start.as_deref().unwrap_or("the start"),
                    manifest.window_end.as_deref().unwrap_or("the end"),
                ),
            });
        }
    }
    Ok(Some(manifest))
}

impl WindowPlan {
    /// The window of a spool being resumed.
    pub(crate) fn from_manifest(pipeline: &Pipeline, m: &Manifest) -> Result<Self, SyncError> {
        let SyncMode::Incremental {
            iterator_data_type: data_type,
            ..
        } = &pipeline.sync_mode
        else {
            return Ok(Self {
                lower: None,
                upper: None,
                resumed_from: Some(m.run_id),
                previous: None,
            });
        };
        let parse = |text: &Option<String>| -> Result<Option<IteratorValue>, SyncError> {
            text.as_deref()
                .map(|t| {
                    window::parse(*data_type, t).ok_or_else(|| SyncError::BadWatermark {
                        pipeline: pipeline.id.clone(),
                        value: t.to_owned(),
                        data_type: data_type.as_str(),
                    })
                })
                .transpose()
        };
        Ok(Self {
            lower: parse(&m.window_start)?,
            upper: parse(&m.window_end)?,
            resumed_from: Some(m.run_id),
            previous: parse(&m.previous_watermark)?,
        })
    }
}
