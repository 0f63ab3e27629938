//! Where batches go.
//!
//! - [`packer`] groups encoded batches into `/bulkevents` request bodies within
//!   mParticle's limits (≤ 100 batches, < 256 KiB), remembering where each batch
//!   sits so a request can be split.
//! - [`events_api`] posts one request body and returns the raw answer.
//! - [`retry`] is the one retry policy: classification of every answer, and
//!   exponential backoff with full jitter.
//! - [`rate_limit`] paces senders: token bucket, shared 429 gate, and the rate
//!   [`limit_learner`] learns from the server's answers (the account's limit).
//! - [`delivery`] puts them together: the [`Deliverer`] delivers packed requests
//!   with bounded concurrency, retries, splitting and bisecting, and returns
//!   what was acknowledged and what became a dead letter.
//! - [`files`] writes the per-run JSONL files: rejected rows, and the would-be
//!   batches of an `only_read` run.

pub mod delivery;
pub mod events_api;
pub mod files;
pub mod limit_learner;
pub mod packer;
pub mod rate_limit;
pub mod retry;

pub use delivery::{
    DeadLetter, Deliverer, DeliveryConfig, DeliveryFigures, FiguresSnapshot, RequestOutcome,
};
pub use events_api::{DeliveryError, EventsApiClient, RawResponse};
pub use packer::{PackedRequest, RequestPacker};
pub use retry::RetryPolicy;
