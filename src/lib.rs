//! wsync: a self-hosted warehouse-sync daemon for mParticle.
//!
//! It runs a SQL *data model* against a warehouse, maps every row to an mParticle
//! profile batch (identities, user attributes, device ids), applies the pipeline's
//! input protection and sends the batches to the Events API (`/v2/bulkevents`).
//!
//! # Layout
//!
//! - [`config`]: `wsync.toml`, `sql/*.sql` and `schedules/*.toml` parsed, then
//!   validated (every error at once, with file, key and line), then resolved
//!   (secrets from environment variables and files).
//! - [`source`]: warehouse connections (PostgreSQL/Redshift, MySQL/MariaDB, SQLite)
//!   streaming rows in bounded chunks as Arrow record batches; the SQL-type → Arrow
//!   type table per dialect; the single-SELECT guard.
//! - [`mapping`]: Arrow rows → mParticle batches: column classification, value
//!   conversion, mParticle's limits, deterministic `source_request_id`.
//! - [`sink`]: where batches go: request packing, the Events API client, and
//!   resilient delivery (one retry policy, pacing with a shared 429 gate, bounded
//!   requests in flight, splitting and bisecting); the JSONL run files.
//! - [`resolve`]: profile resolvers for input protection: IDSync search or a
//!   known-profiles model decides per row whether its profile exists, so
//!   `only_update` skips rows that would create one and `only_read` forecasts
//!   updates and creations.
//! - [`export`]: Parquet exports of a run's rows, batches and rejected rows,
//!   written under a temporary name and renamed when complete.
//! - [`state`]: the state store (SQLite): run records, watermarks, dead letters.
//! - [`sync`]: one pipeline run, extract → map → deliver → commit, its windows,
//!   exports and report.
//! - [`scheduler`]: `wsync daemon`: when runs are due (interval grids, cron in
//!   a zone, once), the pass that starts them, and pipeline status.
//! - [`api`]: the daemon's HTTP API (axum) and `/metrics`.
//! - [`cli`]: the `wsync` command line (the only place that uses `anyhow`).
//! - [`telemetry`]: tracing setup and the typed log events.
//! - [`clock`], [`redact`], [`env_vars`]: injected time, secret handling, and the
//!   registry of environment variables wsync reads.

pub mod api;
// Results (tables, JSON) are the command line's stdout; nothing else prints.
#[allow(clippy::print_stdout)]
pub mod cli;
pub mod clock;
pub mod config;
pub mod env_vars;
pub mod export;
pub mod mapping;
pub mod redact;
pub mod resolve;
pub mod scheduler;
pub mod sink;
pub mod source;
pub mod state;
pub mod sync;
pub mod telemetry;
