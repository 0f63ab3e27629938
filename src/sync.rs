//! One pipeline run.
