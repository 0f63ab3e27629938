//! Test databases (filled in by the source work).
