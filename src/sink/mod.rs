//! Where batches go.
//!
//! - [`packer`] groups encoded batches into `/bulkevents` request bodies within
//!   mParticle's limits (≤ 100 batches, < 256 KiB).
//! - [`events_api`] posts request bodies to the Events API.
//! - [`files`] writes the per-run JSONL files: rejected rows, and the would-be
//!   batches of an `only_read` run.

pub mod events_api;
pub mod files;
pub mod packer;

pub use events_api::{DeliveryError, EventsApiClient};
pub use packer::{PackedRequest, RequestPacker};
