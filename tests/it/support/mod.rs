//! Shared test harness: real databases and the fake mParticle server.
#![allow(dead_code)]

pub mod child;
pub mod db;
pub mod emulators;
pub mod fake_mparticle;
pub mod fake_snowflake;
pub mod project;
