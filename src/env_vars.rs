//! Every environment variable wsync itself reads, in one place.
//!
//! (Variables named in a project's config, such as `${MP_API_SECRET}`, are the
//! user's own and are not listed here.)

/// Registry of wsync's environment variable names.
pub struct EnvVars;

impl EnvVars {
    /// Project folder, same as `--config`.
    pub const WSYNC_CONFIG: &'static str = "WSYNC_CONFIG";
    /// Log filter in `tracing` `EnvFilter` syntax, e.g. `wsync=debug`.
    pub const WSYNC_LOG: &'static str = "WSYNC_LOG";
    /// Log format: `text` (default) or `json`.
    pub const WSYNC_LOG_FORMAT: &'static str = "WSYNC_LOG_FORMAT";
}
