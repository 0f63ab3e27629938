//! Stage 4's setup: the outputs a run writes each transformed chunk to
//! (rejected rows, dead letters, the Events API with its share of the feed's
//! budget, JSONL batches, Parquet exports) and the input protection the
//! transform applies.

use std::sync::Arc;

use crate::config::model::SyncMode;
use crate::mapping::MappingPlan;
use crate::sink::delivery::RequestObserver;

use super::extract::Extract;
use super::output::{self, RunOutput};
use super::spool::{self, SpoolDir};
use super::{budget, deliverer_for, redeliver, window, Attempt, SyncError};

impl Attempt<'_> {
    /// The outputs of this run and its input protection; dead letters of
    /// earlier runs are re-sent first.
    pub(super) async fn prepare(
        &mut self,
        extract: &Extract,
        plan: &MappingPlan,
        spool: Option<&SpoolDir>,
    ) -> Result<(Vec<Box<dyn RunOutput>>, Option<crate::resolve::Protection>), SyncError> {
        let ctx = self.ctx;
        let pipeline = self.pipeline;
        let project = &ctx.project;
        let mut outputs: Vec<Box<dyn RunOutput>> = vec![
            Box::new(output::files::RejectedSamples::default()),
            Box::new(output::files::RejectedFile::new(
                self.ids.dir.join("rejected.jsonl"),
            )),
        ];
        let store = output::dead_letters::DeadLetterStore {
            state: ctx.state.clone(),
            pipeline: pipeline.id.clone(),
            run_id: self.ids.id,
            clock: Arc::clone(&ctx.clock),
        };
        // A dry run moves nothing, dead letters included.
        if !self.mode.dry_run {
            outputs.push(Box::new(output::dead_letters::RowDeadLetters::new(
                store.clone(),
            )));
        }
        if self.mode.dry_run && (pipeline.write_batches || ctx.write_batches) {
            outputs.push(Box::new(output::files::BatchesFile::new(
                self.ids.dir.join("batches.jsonl"),
            )));
        }
        if let Some(settings) = &pipeline.export {
            let (start, end) = (
                extract.lower.as_ref().map(window::to_text),
                extract.upper.as_ref().map(window::to_text),
            );
            let exports = output::parquet::RunExports::create(
                &output::parquet::ExportTarget {
                    settings,
                    root: &project.root,
                    pipeline: &pipeline.id,
                    run_id: &self.ids.key,
                    date: ctx.clock.now().date_naive(),
                    window: (start.as_deref(), end.as_deref()),
                },
                &extract.columns,
                plan,
            )?;
            outputs.push(Box::new(output::parquet::ParquetExports::new(exports)));
        }
        let protection = crate::resolve::Protection::open(project, pipeline, &self.ids.dir).await?;
        if let Some(events) = self.events_output(spool, store).await? {
            outputs.push(events);
        }
        Ok((outputs, protection))
    }

    /// The Events API output: delivering (dead letters of earlier runs re-sent
    /// first), or, in a dry run, packing and counting what would be sent.
    /// `None` for pipelines that send nothing (export only).
    async fn events_output(
        &mut self,
        spool: Option<&SpoolDir>,
        store: output::dead_letters::DeadLetterStore,
    ) -> Result<Option<Box<dyn RunOutput>>, SyncError> {
        let (ctx, pipeline) = (self.ctx, self.pipeline);
        let project = &ctx.project;
        let deliverer = match (&pipeline.feed, self.mode.delivers) {
            (Some(feed), true) => Some(
                deliverer_for(&project.feeds[feed])?
                    .with_observer(Arc::clone(&ctx.metrics) as Arc<dyn RequestObserver>),
            ),
            _ => None,
        };
        // The feed's budget is shared with every other run sending to it, on
        // any daemon, for as long as this output lives.
        let budget = match (&deliverer, &pipeline.feed) {
            (Some(d), Some(feed)) => {
                budget::join(&ctx.state, &project.feeds[feed], self.ids.id, d).await
            }
            _ => None,
        };
        let blocked = self.diff.as_ref().is_some_and(|d| d.blocked.is_some());
        let redeliver = pipeline.retry_dead_letters && self.mode.holds_pipeline;
        if let (Some(d), true, false) = (&deliverer, redeliver, blocked) {
            let done = redeliver::redeliver(&ctx.state, &pipeline.id, d).await?;
            self.redelivered = done.delivered;
            self.tally.counts.batches_sent += done.delivered;
        }
        // Requests are packed (and, in a dry run, counted) for every pipeline
        // with a feed or a dry run; export-only pipelines send nothing.
        if deliverer.is_some() || self.mode.dry_run {
            let checkpoints = match &pipeline.sync_mode {
                SyncMode::Incremental {
                    iterator_field,
                    iterator_data_type,
                    ..
                } if self.mode.checkpoints && pipeline.export.is_none() => {
                    Some(output::events_api::Checkpoints {
                        column: iterator_field.clone(),
                        data_type: *iterator_data_type,
                        every_rows: project.daemon.checkpoint_rows,
                    })
                }
                _ => None,
            };
            let superseded = match &deliverer {
                Some(_) => redeliver::Superseded::load(&ctx.state, &pipeline.id).await?,
                None => redeliver::Superseded::default(),
            };
            let (ack_log, already_done) = match spool {
                Some(dir) if deliverer.is_some() => (
                    Some(spool::AckLog::open(&dir.acks_path())?),
                    spool::AckSet::load(&dir.acks_path())?,
                ),
                _ => (None, spool::AckSet::default()),
            };
            return Ok(Some(Box::new(output::events_api::EventsApi::new(
                output::events_api::EventsApiSettings {
                    dead_letters: deliverer.is_some().then_some(store),
                    deliverer,
                    ack_log,
                    already_done,
                    superseded,
                    checkpoints: checkpoints.filter(|_| !self.mode.dry_run),
                    shutdown: ctx.shutdown.clone(),
                    grace: project.daemon.shutdown_grace,
                    progress: Arc::clone(&ctx.progress),
                    budget,
                },
            ))));
        }
        Ok(None)
    }
}
