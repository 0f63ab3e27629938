//! What mapping produces and counts: encoded batches, rejected rows and
//! their reasons, and the per-run counters.

use std::collections::BTreeMap;

/// One batch, serialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBatch {
    /// 1-based row number within the run that produced it.
    pub row: u64,
    /// 0-based part, when a row needed several batches.
    pub part: u32,
    /// The batch's `source_request_id`.
    pub source_request_id: String,
    /// The batch JSON (an object), exactly as it will be sent.
    pub json: Vec<u8>,
    /// Event batches whose events are all older than 30 days go to
    /// `/v2/bulkevents/historical`; every other batch to `/v2/bulkevents`.
    pub historical: bool,
}

/// Why a whole row was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RejectReason {
    /// No user identity, no `mpid` and no device id: mParticle could not resolve a profile.
    NoIdentity,
    /// The `mpid` column held something that is not a 64-bit integer.
    InvalidMpid,
    /// Identities alone exceed the 128 KiB batch limit.
    BatchTooLarge,
    /// A value could not be read from the warehouse (invalid UTF-8 or JSON, an
    /// infinite or zero date, a value too large, …); the detail names the column.
    InvalidValue,
    /// Event pipelines: the row does not make a valid event (unknown event
    /// type, no event name, a value outside the schema's enum, …).
    InvalidEvent,
    /// Event pipelines: the event breaks the data plan, which blocks.
    DataPlan,
    /// Diff: a `diff.primary_key` column is NULL or empty.
    MissingKey,
    /// Diff: the key appears in more than one row of the model's result.
    DuplicateKey,
}

impl RejectReason {
    /// The reason's name in files and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoIdentity => "no_identity",
            Self::InvalidMpid => "invalid_mpid",
            Self::BatchTooLarge => "batch_too_large",
            Self::InvalidValue => "invalid_value",
            Self::InvalidEvent => "invalid_event",
            Self::DataPlan => "data_plan",
            Self::MissingKey => "missing_key",
            Self::DuplicateKey => "duplicate_key",
        }
    }
}

/// A row that was not sent, with everything needed to fix it at the source.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedRow {
    /// 1-based row number within the run.
    pub row: u64,
    /// Why.
    pub reason: RejectReason,
    /// Human detail.
    pub detail: String,
    /// The row's values by column name.
    pub values: serde_json::Map<String, serde_json::Value>,
}

/// Counters over a run's mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapStats {
    /// Rows seen.
    pub rows_read: u64,
    /// Rows that produced at least one batch.
    pub rows_mapped: u64,
    /// Rows rejected, by reason.
    pub rows_rejected: BTreeMap<&'static str, u64>,
    /// Batches produced.
    pub batches: u64,
    /// Values left out, by reason.
    pub values_dropped: BTreeMap<&'static str, u64>,
    /// Values cut to a limit, by reason.
    pub values_truncated: BTreeMap<&'static str, u64>,
    /// Per column of the plan, in plan order.
    pub columns: Vec<ColumnStats>,
    /// Event pipelines: events per endpoint.
    pub events: EventCounts,
    /// Event pipelines: data plan violations by rule (blocked or flagged).
    pub plan_violations: BTreeMap<&'static str, u64>,
    /// Events sent despite a violation (the plan only flags), counted once each.
    pub plan_flagged_rows: u64,
    /// The first few violations of each rule.
    pub plan_samples: BTreeMap<&'static str, Vec<crate::mapping::data_plan::Violation>>,
}

/// How many events a run mapped, by the endpoint their batch goes to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Events for `/v2/bulkevents`.
    pub recent: u64,
    /// Events older than 30 days, for `/v2/bulkevents/historical`.
    pub historical: u64,
    /// Event batches for `/v2/bulkevents`.
    pub recent_batches: u64,
    /// Event batches for `/v2/bulkevents/historical`.
    pub historical_batches: u64,
}

/// What one column held over a run, for reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnStats {
    /// Non-NULL values read.
    pub values: u64,
    /// NULLs read.
    pub nulls: u64,
    /// Longest text value, in characters (text-like columns only).
    pub longest_chars: usize,
    /// Values of this column truncated in sent rows.
    pub truncated: u64,
    /// Values of this column dropped in sent rows.
    pub dropped: u64,
}

impl MapStats {
    /// Total rejected rows.
    pub fn rejected_total(&self) -> u64 {
        self.rows_rejected.values().sum()
    }

    /// Total dropped values.
    pub fn dropped_total(&self) -> u64 {
        self.values_dropped.values().sum()
    }

    /// Total truncated values.
    pub fn truncated_total(&self) -> u64 {
        self.values_truncated.values().sum()
    }

    /// Add the counters of a part of a chunk mapped separately (see
    /// [`Mapper::map_chunk`]). Column values, NULLs and lengths are counted once
    /// per chunk before it is cut, so a part carries only its adjustments.
    pub(super) fn merge(&mut self, part: MapStats) {
        self.rows_read += part.rows_read;
        self.rows_mapped += part.rows_mapped;
        self.batches += part.batches;
        for (reason, n) in part.rows_rejected {
            *self.rows_rejected.entry(reason).or_default() += n;
        }
        for (reason, n) in part.values_dropped {
            *self.values_dropped.entry(reason).or_default() += n;
        }
        for (reason, n) in part.values_truncated {
            *self.values_truncated.entry(reason).or_default() += n;
        }
        self.plan_flagged_rows += part.plan_flagged_rows;
        self.events.recent += part.events.recent;
        self.events.historical += part.events.historical;
        for (rule, n) in part.plan_violations {
            *self.plan_violations.entry(rule).or_default() += n;
        }
        for (rule, samples) in part.plan_samples {
            let mine = self.plan_samples.entry(rule).or_default();
            let room = crate::mapping::data_plan::SAMPLES_PER_RULE.saturating_sub(mine.len());
            mine.extend(samples.into_iter().take(room));
        }
        for (mine, theirs) in self.columns.iter_mut().zip(part.columns) {
            mine.values += theirs.values;
            mine.nulls += theirs.nulls;
            mine.longest_chars = mine.longest_chars.max(theirs.longest_chars);
            mine.truncated += theirs.truncated;
            mine.dropped += theirs.dropped;
        }
    }

    pub(super) fn drop_value(&mut self, why: &'static str) {
        *self.values_dropped.entry(why).or_default() += 1;
    }

    pub(super) fn truncate_value(&mut self, why: &'static str) {
        *self.values_truncated.entry(why).or_default() += 1;
    }
}

/// The batches and rejected rows of one record batch.
#[derive(Debug, Default)]
pub struct MappedChunk {
    /// Batches, in row order.
    pub batches: Vec<EncodedBatch>,
    /// Rejected rows, in row order.
    pub rejected: Vec<RejectedRow>,
    /// Event pipelines: each mapped row's event, before grouping per user.
    pub(crate) events: Vec<crate::mapping::event::EventRow>,
}
