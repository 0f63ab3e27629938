//! Errors raised while connecting to a warehouse or reading from it.

/// A source failure. Messages name the connection, model, column or row involved
/// and never contain a password (URLs are redacted).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Placeholder until the source module lands.
    #[error("{0}")]
    Other(String),
}
