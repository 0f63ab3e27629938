//! Where batches go.
