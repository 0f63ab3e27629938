//! Step 2: raw structs to the validated model. Pure: no environment, no file
//! system (secrets and file existence are [`super::resolve`]'s job).
//!
//! Every check pushes its error and carries on with a fallback value, so one run
//! reports every problem in every file. An item (connection, feed, pipeline) is
//! only built when its own checks all passed.
//!
//! # Layout
//!
//! - `project.rs`: the entry point ([`validate`]) and its output ([`Validated`]).
//! - `context.rs`: the error collector and its parsing helpers.
//! - `settings.rs`: `[defaults]`, `[daemon]`, `[state]`.
//! - `connection.rs`, `cloud.rs`: `[connections.NAME]` (`cloud.rs`: Snowflake, BigQuery).
//! - `feed.rs`: `[feeds.NAME]`.
//! - `secrets.rs`: `KEY` / `KEY_env` / `KEY_file` and `${VAR}` templates.
//! - `pipeline.rs`, `sync_mode.rs`, `schedule.rs`, `mappings.rs`: `schedules/*.toml`.
//! - `resolver.rs`: a pipeline's `[resolver]`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use super::error::ConfigError;
use super::locate::SourceFile;
use super::model::{
    ConnectionKind, DaemonSettings, DataModel, DataPlanRef, DeliverySettings, Destination,
    DiffSettings, Environment, EventField, ExportCompression, ExportDataset, ExportSettings,
    Frequency, InputProtection, IteratorDataType, LimitPolicy, Mapping, NullPolicy, OnDelete,
    Pipeline, PipelineType, PlanViolations, Pod, Schedule, StateConfig, StaticValue, SyncMode,
};
use super::raw::{
    RawConnection, RawDaemon, RawDataPlan, RawDefaults, RawDiff, RawExport, RawFeed, RawMapping,
    RawPipeline, RawProject, RawSchedule, RawState, RawSyncMode,
};
use super::suggest;
use crate::mapping::identity::{DeviceIdType, IdentityType};
use crate::redact::Secret;

// One file per section of the configuration. The sections share one namespace:
// each glob-imports this module (these imports and its siblings' items), so a
// helper such as `Ctx` or `secret` is written once and used by every section.
mod connection;
mod context;
mod feed;
mod mappings;
mod pipeline;
mod project;
mod schedule;
mod secrets;
mod settings;
mod sync_mode;

pub(crate) mod cloud;
pub(crate) mod resolver;
#[cfg(test)]
mod tests;

// Each section uses a different part of the others; the tests use them all.
#[allow(unused_imports, clippy::wildcard_imports)]
use {
    connection::*, context::*, feed::*, mappings::*, pipeline::*, project::*, schedule::*,
    secrets::*, settings::*, sync_mode::*,
};

pub(crate) use connection::PendingConnection;
pub(crate) use feed::PendingFeed;
pub(crate) use project::{validate, Validated};
pub(crate) use secrets::{Part, PendingSecret, SecretSource};
pub(crate) use settings::{join_clean, sqlite_url, url_scheme};
