//! Rows → mParticle batches.
pub mod identity;
