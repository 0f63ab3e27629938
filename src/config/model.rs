//! Validated configuration: the types the rest of wsync works with.
//!
//! Everything here has already been checked (names resolved, enums parsed, paths
//! exist) and every secret has been resolved from its environment variable or file.
//! Nothing downstream re-validates; if a value is here, it is usable.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::mapping::identity::{DeviceIdType, IdentityType};
use crate::redact::Secret;

/// A whole validated project: `wsync.toml`, every `sql/*.sql` model and every
/// `schedules/*.toml` pipeline.
#[derive(Debug, Clone)]
pub struct Project {
    /// The folder the project was loaded from; relative paths resolve against it.
    pub root: PathBuf,
    /// Where run records and watermarks live.
    pub state: StateConfig,
    /// How runs are carried out and scheduled.
    pub daemon: DaemonSettings,
    /// Warehouse connections by name.
    pub connections: BTreeMap<String, Connection>,
    /// mParticle input feeds by name.
    pub feeds: BTreeMap<String, Feed>,
    /// Data models (one SELECT each) by name (the file stem under `sql/`).
    pub models: BTreeMap<String, DataModel>,
    /// Pipelines by id (the file stem under `schedules/`).
    pub pipelines: BTreeMap<String, Pipeline>,
    /// Profile resolvers (`[resolver]`) by pipeline id; pipelines without one are absent.
    pub resolvers: BTreeMap<String, super::resolver::ResolverSettings>,
}

/// `[daemon]`: how runs are carried out and scheduled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSettings {
    /// Runs of different pipelines at the same time (a pipeline never overlaps itself).
    pub max_concurrent_runs: usize,
    /// On SIGTERM/SIGINT, how long in-flight requests get to finish.
    pub shutdown_grace: std::time::Duration,
    /// Rows between checkpoints of an incremental run.
    pub checkpoint_rows: u64,
    /// Where the daemon's HTTP API listens; `None` = off.
    pub http_bind: Option<std::net::SocketAddr>,
    /// Environment variable whose value every API request must present as
    /// `Authorization: Bearer …` (except /health and /ready).
    pub http_token_env: Option<String>,
}

/// The HTTP API's default address: loopback only.
pub const DEFAULT_HTTP_BIND: &str = "127.0.0.1:9184";

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            max_concurrent_runs: 2,
            shutdown_grace: std::time::Duration::from_secs(30),
            checkpoint_rows: 50_000,
            http_bind: DEFAULT_HTTP_BIND.parse().ok(),
            http_token_env: None,
        }
    }
}

/// The state store: run history and watermarks.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// SQLite database URL, e.g. `sqlite:///abs/path/.wsync/state.db`, or a
    /// PostgreSQL URL shared by several daemons.
    pub url: Secret,
    /// Folder for per-run files (rejected rows, would-be batches).
    pub runs_dir: PathBuf,
    /// Folder holding each pipeline's spool (`<spool_dir>/<pipeline>/`).
    pub spool_dir: PathBuf,
    /// A pending spool older than this is discarded and its window read again,
    /// so stale data is never sent days later. Default 24 h.
    pub spool_max_age: std::time::Duration,
    /// Free disk (MB) under `spool_dir` below which a run does not start and an
    /// extract stops. 0 turns the check off. Default 256.
    pub min_free_disk_mb: u64,
    /// How long a pipeline lease lasts without a heartbeat (default 30 s): a
    /// daemon that dies holding a pipeline frees it after this long.
    pub lease_ttl: std::time::Duration,
}

/// Which SQL dialect and wire protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    /// PostgreSQL.
    Postgres,
    /// Amazon Redshift, spoken to through the PostgreSQL protocol (no COPY, no
    /// read-only transactions).
    Redshift,
    /// MySQL or MariaDB.
    MySql,
    /// SQLite file.
    Sqlite,
    /// Snowflake, through its REST protocol (login, query, Arrow result chunks).
    Snowflake,
    /// Google BigQuery, through its REST API (`jobs.query`, `jobs.getQueryResults`).
    BigQuery,
}

impl ConnectionKind {
    /// The name used in config files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Redshift => "redshift",
            Self::MySql => "mysql",
            Self::Sqlite => "sqlite",
            Self::Snowflake => "snowflake",
            Self::BigQuery => "bigquery",
        }
    }
}

/// A warehouse connection.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Name of the `[connections.NAME]` table.
    pub name: String,
    /// Dialect.
    pub kind: ConnectionKind,
    /// Connection URL; may hold a password, so it is a [`Secret`]. For
    /// `snowflake` and `bigquery` it is the API host root (no secret in it), and
    /// the settings are in [`Connection::cloud`].
    pub url: Secret,
    /// SQL file run once to create a SQLite warehouse that does not exist yet
    /// (the quickstart's demo data). Only for `sqlite`.
    pub seed_sql: Option<PathBuf>,
    /// Server-side limit for one query.
    pub statement_timeout: Duration,
    /// Rows per Arrow record batch (the unit of streaming).
    pub chunk_rows: usize,
    /// Settings of a `snowflake` or `bigquery` connection; `None` for the kinds
    /// that connect with a URL.
    pub cloud: Option<CloudWarehouse>,
}

/// The settings of a warehouse spoken to over HTTPS instead of a SQL wire protocol.
#[derive(Debug, Clone)]
pub enum CloudWarehouse {
    /// `type = "snowflake"`.
    Snowflake(SnowflakeSettings),
    /// `type = "bigquery"`.
    BigQuery(BigQuerySettings),
}

/// A `snowflake` connection.
#[derive(Debug, Clone)]
pub struct SnowflakeSettings {
    /// Account identifier as written (`myorg-myaccount`, `xy12345.eu-west-1`).
    pub account: String,
    /// Login name.
    pub user: String,
    /// Role to use; `None` = the user's default role.
    pub role: Option<String>,
    /// Virtual warehouse to run queries on; `None` = the user's default.
    pub warehouse: Option<String>,
    /// Database; `None` = the user's default.
    pub database: Option<String>,
    /// Schema; `None` = the user's default.
    pub schema: Option<String>,
    /// Host root (`https://<account>.snowflakecomputing.com` or the `base_url`
    /// override), without trailing slash.
    pub base_url: String,
    /// How to log in.
    pub auth: SnowflakeAuth,
}

/// How a `snowflake` connection logs in.
#[derive(Debug, Clone)]
pub enum SnowflakeAuth {
    /// Key-pair authentication: a JWT signed with the user's RSA private key.
    KeyPair {
        /// The PKCS#8 (or PKCS#1) PEM text, possibly encrypted.
        private_key: Secret,
        /// Passphrase of an encrypted key.
        passphrase: Option<Secret>,
    },
    /// Password authentication (being retired by Snowflake for human users).
    Password(Secret),
}

/// The default `maximum_bytes_billed` of a `bigquery` connection: 100 GiB.
pub const DEFAULT_MAXIMUM_BYTES_BILLED: u64 = 100 * 1024 * 1024 * 1024;

/// A `bigquery` connection.
#[derive(Debug, Clone)]
pub struct BigQuerySettings {
    /// Project that runs (and pays for) the query jobs.
    pub project: String,
    /// Default dataset for unqualified table names; `None` = none.
    pub dataset: Option<String>,
    /// Location (region) the jobs run in; `None` = BigQuery decides.
    pub location: Option<String>,
    /// API root (`https://bigquery.googleapis.com` or the `base_url` override),
    /// without trailing slash.
    pub base_url: String,
    /// Refuse to run a query estimated (or billed) above this many bytes.
    pub maximum_bytes_billed: u64,
    /// How requests are authorised.
    pub auth: BigQueryAuth,
}

/// How a `bigquery` connection authorises its requests.
#[derive(Debug, Clone)]
pub enum BigQueryAuth {
    /// A service-account JSON key: a signed JWT is exchanged for an OAuth token.
    ServiceAccount(Secret),
    /// No credentials (`auth = "none"`): only for emulators and authenticating
    /// proxies, so only allowed together with `base_url`.
    None,
}

/// mParticle data centre ("pod").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pod {
    /// `s2s.us1.mparticle.com`
    Us1,
    /// `s2s.us2.mparticle.com`
    Us2,
    /// `s2s.eu1.mparticle.com`
    Eu1,
    /// `s2s.au1.mparticle.com`
    Au1,
}

impl Pod {
    /// The Events API host root for this pod (paths such as `/v2/bulkevents` are appended).
    pub fn base_url(self) -> &'static str {
        match self {
            Self::Us1 => "https://s2s.us1.mparticle.com",
            Self::Us2 => "https://s2s.us2.mparticle.com",
            Self::Eu1 => "https://s2s.eu1.mparticle.com",
            Self::Au1 => "https://s2s.au1.mparticle.com",
        }
    }
}

/// mParticle environment a batch is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// `development`
    Development,
    /// `production`
    Production,
}

impl Environment {
    /// The value of the batch's `environment` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Production => "production",
        }
    }
}

/// An mParticle input feed: where batches go and how to authenticate.
#[derive(Debug, Clone)]
pub struct Feed {
    /// Name of the `[feeds.NAME]` table.
    pub name: String,
    /// Host root, either a pod's or a `base_url` override (no trailing slash).
    pub base_url: String,
    /// Server-to-server API key (HTTP Basic user).
    pub api_key: Secret,
    /// Server-to-server API secret (HTTP Basic password).
    pub api_secret: Secret,
    /// Default environment for pipelines using this feed.
    pub environment: Environment,
    /// Timeout for one HTTP request.
    pub request_timeout: Duration,
    /// Pacing, concurrency and retries.
    pub delivery: DeliverySettings,
}

/// How requests to a feed are paced and retried.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliverySettings {
    /// Batches per second; 0 = no pacing.
    pub rate_limit_per_sec: u32,
    /// Requests in flight at once.
    pub max_in_flight: usize,
    /// Gzip request bodies.
    pub gzip: bool,
    /// Attempts per request for retryable failures.
    pub retry_max_attempts: u32,
    /// First backoff.
    pub retry_initial_backoff: Duration,
    /// Longest backoff.
    pub retry_max_backoff: Duration,
    /// Total time a request may spend retrying.
    pub retry_deadline: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            rate_limit_per_sec: 270,
            max_in_flight: 4,
            gzip: false,
            retry_max_attempts: 8,
            retry_initial_backoff: Duration::from_millis(250),
            retry_max_backoff: Duration::from_secs(30),
            retry_deadline: Duration::from_secs(900),
        }
    }
}

/// A Parquet dataset a run can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExportDataset {
    /// The extracted rows, SQL types kept.
    Rows,
    /// The mapped batches, identities and attributes as columns.
    Batches,
    /// The rejected rows with their reason.
    Rejected,
}

impl ExportDataset {
    /// The config spelling (also `{dataset}` in path templates).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rows => "rows",
            Self::Batches => "batches",
            Self::Rejected => "rejected",
        }
    }
}

/// Parquet compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportCompression {
    /// zstd (default).
    Zstd,
    /// Snappy.
    Snappy,
    /// None.
    None,
}

/// A pipeline's `[export]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// Path template, relative to the project root unless absolute.
    pub path: String,
    /// Datasets to write, without duplicates.
    pub datasets: Vec<ExportDataset>,
    /// Codec.
    pub compression: ExportCompression,
    /// Rows per row group.
    pub row_group_rows: usize,
}

/// A data model: one SELECT statement.
#[derive(Debug, Clone)]
pub struct DataModel {
    /// Model name (file stem).
    pub name: String,
    /// Path of the `.sql` file.
    pub path: PathBuf,
    /// The SELECT, with any trailing semicolon and surrounding whitespace removed.
    pub sql: String,
}

/// What a run may do to mParticle profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputProtection {
    /// Send every valid row (may create profiles).
    CreateAndUpdate,
    /// Never create a profile: rows matching no profile are skipped.
    OnlyUpdate,
    /// Exact dry run: nothing is sent, nothing moves.
    OnlyRead,
}

impl InputProtection {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateAndUpdate => "create_and_update",
            Self::OnlyUpdate => "only_update",
            Self::OnlyRead => "only_read",
        }
    }
}

/// Type of the incremental iterator column, as mParticle names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IteratorDataType {
    /// Timestamp with time zone (`timestamptz`, MySQL `TIMESTAMP`).
    TimestampTz,
    /// Timestamp without time zone (`timestamp`, MySQL `DATETIME`), read as UTC.
    TimestampNtz,
    /// Calendar date.
    Date,
    /// Integer seconds since the Unix epoch.
    UnixSeconds,
    /// Integer milliseconds since the Unix epoch.
    UnixMillis,
    /// A monotonically increasing integer (a sequence or an id).
    Integer,
}

impl IteratorDataType {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TimestampTz => "timestamp_tz",
            Self::TimestampNtz => "timestamp_ntz",
            Self::Date => "date",
            Self::UnixSeconds => "timestamp_unixtime_s",
            Self::UnixMillis => "timestamp_unixtime_ms",
            Self::Integer => "integer",
        }
    }
}

/// Full or incremental extraction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncMode {
    /// Re-read the whole model every run.
    Full,
    /// Read only rows whose iterator lies in the run's window.
    Incremental {
        /// Column (alias) of the model that drives the window; never sent.
        iterator_field: String,
        /// How to compare and store its values.
        iterator_data_type: IteratorDataType,
        /// Lower bound of the very first window; unbounded when absent.
        from: Option<String>,
        /// Margin re-read below the watermark: seconds for time-like iterators,
        /// values for an integer sequence. 0 = none.
        lag: i64,
        /// Zone in which `timestamp_ntz` and `date` iterator values are read.
        time_zone: chrono_tz::Tz,
    },
}

/// Interval frequency (mParticle's `schedule.frequency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frequency {
    /// Every hour from `start`.
    Hourly,
    /// Every day from `start`.
    Daily,
    /// Every week from `start`.
    Weekly,
    /// Every month from `start` (clamped to the month's last day).
    Monthly,
}

impl Frequency {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hourly => "hourly",
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
        }
    }
}

/// When a pipeline runs.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// On the interval grid anchored at `start`.
    Interval {
        /// Grid step.
        frequency: Frequency,
        /// Anchor and first window start.
        start: DateTime<Utc>,
        /// No run after this instant.
        end: Option<DateTime<Utc>>,
        /// How far back missed intervals are caught up, in days; `None` =
        /// mParticle's limit for the frequency.
        catch_up_days: Option<u32>,
    },
    /// A cron expression evaluated in a time zone.
    Cron {
        /// The expression as written (5 or 6 fields).
        expression: String,
        /// IANA zone name.
        time_zone: String,
    },
    /// Once, as soon as possible.
    Once,
    /// Only when triggered.
    OnDemand,
}

/// What to do with a SQL NULL in an attribute column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NullPolicy {
    /// Leave the attribute out of the batch.
    Skip,
    /// Add the attribute name to `deleted_user_attributes`.
    Delete,
}

/// What to do with a value over one of mParticle's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitPolicy {
    /// Cut the value to the limit (counted).
    Truncate,
    /// Drop the value (counted).
    Reject,
}

/// Where a mapped value goes in the batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// `user_identities.<type>`
    Identity(IdentityType),
    /// `device_info.<type>`
    Device(DeviceIdType),
    /// `mpid`
    Mpid,
    /// `user_attributes.<name>`
    Attribute(String),
    /// An event field (`events[].event_type`, `events[].data.event_name`, …);
    /// event pipelines only.
    Event(EventField),
    /// `events[].data.custom_attributes.<name>`; event pipelines only.
    EventAttribute(String),
}

/// The event fields a row can fill, named as in mParticle's batch schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventField {
    /// `events[].event_type`: `custom_event`, `commerce_event` or `screen_view`.
    EventType,
    /// `events[].data.event_name`.
    EventName,
    /// `events[].data.custom_event_type`.
    CustomEventType,
    /// `events[].data.timestamp_unixtime_ms`, from a timestamp, date or
    /// integer (milliseconds) column.
    Timestamp,
    /// `events[].data.source_message_id`: the column's value made a UUID.
    SourceMessageId,
    /// `events[].data.screen_name`.
    ScreenName,
    /// `events[].data.currency_code` (commerce).
    CurrencyCode,
    /// `events[].data.product_action.action` (commerce).
    ProductAction,
    /// `events[].data.product_action.transaction_id` (commerce).
    TransactionId,
    /// `events[].data.product_action.total_amount` (commerce: revenue).
    TotalAmount,
    /// `events[].data.product_action.tax_amount` (commerce).
    TaxAmount,
    /// `events[].data.product_action.shipping_amount` (commerce).
    ShippingAmount,
    /// `events[].data.product_action.products`: a JSON array of products.
    Products,
}

impl EventField {
    /// Every field, in the order they are written.
    pub const ALL: [EventField; 13] = [
        Self::EventType,
        Self::EventName,
        Self::CustomEventType,
        Self::Timestamp,
        Self::SourceMessageId,
        Self::ScreenName,
        Self::CurrencyCode,
        Self::ProductAction,
        Self::TransactionId,
        Self::TotalAmount,
        Self::TaxAmount,
        Self::ShippingAmount,
        Self::Products,
    ];

    /// The field's path in a batch (`events[].data.event_name`).
    pub fn path(self) -> &'static str {
        match self {
            Self::EventType => "events[].event_type",
            Self::EventName => "events[].data.event_name",
            Self::CustomEventType => "events[].data.custom_event_type",
            Self::Timestamp => "events[].data.timestamp_unixtime_ms",
            Self::SourceMessageId => "events[].data.source_message_id",
            Self::ScreenName => "events[].data.screen_name",
            Self::CurrencyCode => "events[].data.currency_code",
            Self::ProductAction => "events[].data.product_action.action",
            Self::TransactionId => "events[].data.product_action.transaction_id",
            Self::TotalAmount => "events[].data.product_action.total_amount",
            Self::TaxAmount => "events[].data.product_action.tax_amount",
            Self::ShippingAmount => "events[].data.product_action.shipping_amount",
            Self::Products => "events[].data.product_action.products",
        }
    }

    /// The field a column of this name fills by convention (case-insensitive):
    /// the field's own name, plus `revenue` for `total_amount` and
    /// `event_timestamp` for `timestamp_unixtime_ms`.
    pub fn from_column(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        Some(match lower.as_str() {
            "event_type" => Self::EventType,
            "event_name" => Self::EventName,
            "custom_event_type" => Self::CustomEventType,
            "timestamp_unixtime_ms" | "event_timestamp" => Self::Timestamp,
            "source_message_id" => Self::SourceMessageId,
            "screen_name" => Self::ScreenName,
            "currency_code" => Self::CurrencyCode,
            "product_action" => Self::ProductAction,
            "transaction_id" => Self::TransactionId,
            "total_amount" | "revenue" => Self::TotalAmount,
            "tax_amount" => Self::TaxAmount,
            "shipping_amount" => Self::ShippingAmount,
            "products" => Self::Products,
            _ => return None,
        })
    }

    /// The field at a destination path, `None` if it is not one.
    pub fn from_path(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.path() == path)
    }
}

/// One explicit field transformation.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapping {
    /// Send column `source` to `destination` instead of its implicit place.
    Column {
        /// Column name as returned by the model (matched case-insensitively).
        source: String,
        /// Where it goes.
        destination: Destination,
    },
    /// Put a constant value at `destination` on every batch.
    Static {
        /// The constant (a TOML string, number or boolean).
        value: StaticValue,
        /// Where it goes.
        destination: Destination,
    },
    /// Do not send column `source`.
    Ignore {
        /// Column name (matched case-insensitively).
        source: String,
    },
}

/// A constant written by a static mapping.
#[derive(Debug, Clone, PartialEq)]
pub enum StaticValue {
    /// A string.
    String(String),
    /// An integer.
    Integer(i64),
    /// A float (finite).
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl std::fmt::Display for StaticValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::String(s) => write!(f, "{s:?}"),
            Self::Integer(i) => write!(f, "{i}"),
            Self::Float(x) => write!(f, "{x}"),
            Self::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Pipeline id: the file stem under `schedules/`.
    pub id: String,
    /// Human name.
    pub name: String,
    /// The file it came from.
    pub path: PathBuf,
    /// Connection name (exists in [`Project::connections`]).
    pub connection: String,
    /// Data model name (exists in [`Project::models`]).
    pub data_model: String,
    /// Feed name; `None` only for `only_read` pipelines.
    pub feed: Option<String>,
    /// Environment batches are tagged with.
    pub environment: Environment,
    /// Full or incremental.
    pub sync_mode: SyncMode,
    /// When it runs.
    pub schedule: Schedule,
    /// Paused pipelines are not scheduled (manual runs still work).
    pub paused: bool,
    /// What runs may do to profiles.
    pub input_protection: InputProtection,
    /// NULL handling.
    pub null_policy: NullPolicy,
    /// Over-limit value handling.
    pub limit_policy: LimitPolicy,
    /// Explicit field transformations, in file order.
    pub mappings: Vec<Mapping>,
    /// Re-send dead-lettered batches of earlier runs at the start of a run.
    pub retry_dead_letters: bool,
    /// Fail the run when more than this percentage of rows is rejected.
    pub max_rejected_pct: Option<f64>,
    /// `only_read`: also write the would-be batches as `batches.jsonl`.
    pub write_batches: bool,
    /// Parquet exports, if configured.
    pub export: Option<ExportSettings>,
    /// What its rows are: user data (profiles) or events.
    pub pipeline_type: PipelineType,
    /// The data plan its batches name in `context.data_plan`, if any.
    pub data_plan: Option<DataPlanRef>,
    /// Snapshot diff: send only new and changed rows (`[diff]`).
    pub diff: Option<DiffSettings>,
}

/// What a pipeline's rows are, with mParticle's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PipelineType {
    /// `user_attributes` (the default): each row is a profile update.
    #[default]
    UserAttributes,
    /// `events`: each row is one event of a user.
    Events,
}

impl PipelineType {
    /// The name in files and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserAttributes => "user_attributes",
            Self::Events => "events",
        }
    }
}

/// `data_plan = { plan_id, plan_version, document, violations }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPlanRef {
    /// The plan's id (`context.data_plan.plan_id`).
    pub plan_id: String,
    /// Its version; `None` lets mParticle use the latest.
    pub plan_version: Option<u32>,
    /// A data plan document (JSON as mParticle's editor exports it), relative
    /// to the project, against which events are checked before sending.
    pub document: Option<PathBuf>,
    /// What to do with an event that breaks the document's plan.
    pub violations: PlanViolations,
}

/// What happens to an event that breaks the data plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlanViolations {
    /// Sent anyway, counted and reported (the default).
    #[default]
    Flag,
    /// Rejected: the row is not sent, with reason `data_plan`.
    Block,
}

/// `[diff]`: what identifies a row, and what to do when one disappears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffSettings {
    /// Result columns whose values identify a row (at least one).
    pub primary_key: Vec<String>,
    /// What a row gone from the model does.
    pub on_delete: OnDelete,
    /// Send every row again once this long has passed since the last full
    /// send (profiles changed outside the warehouse).
    pub full_resync_every: Option<std::time::Duration>,
}

/// What a key that left the model does (full sync mode only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    /// Nothing: the profile keeps what was last sent.
    Ignore,
    /// Send a batch with `deleted_user_attributes` listing the attributes
    /// last sent for the key, addressed by the identities last sent.
    UnsetAttributes,
}

impl Pipeline {
    /// A pipeline with no feed that writes exports: it reads and exports, sends nothing.
    pub fn export_only(&self) -> bool {
        self.feed.is_none()
            && self.export.is_some()
            && self.input_protection != InputProtection::OnlyRead
    }
}
