//! wsync's integration tests: one binary, one module per area.
//!
//! Database tests talk to the real PostgreSQL and MariaDB on 127.0.0.1 (see
//! `support::db`); the Events API is the in-process fake in
//! `support::fake_mparticle`.

// Tests and benchmarks fail loudly and print what they measure; the library's
// lint discipline (Cargo.toml [lints]) is for the product's code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::pedantic,
    missing_docs
)]

mod api;
mod backfill;
mod cli;
mod config_errors;
mod daemons;
mod data_hardening;
mod delivery;
mod diff;
mod events;
mod export;
mod export_runs;
mod fake_selftest;
mod hardening;
mod kill;
mod mapping_props;
mod observability;
mod perf_smoke;
mod protect;
mod scheduler;
mod source_bigquery;
mod source_mysql;
mod source_pg_copy;
mod source_postgres;
mod source_snowflake;
mod source_sqlite;
mod spool;
mod state_postgres;
mod support;
mod sync_mysql;
mod sync_postgres;
mod sync_sqlite;
