//! The error collector every check writes to ([`Ctx`]), its helpers for
//! choices, numbers and durations, and the rule for item names.

#[allow(clippy::wildcard_imports)] // the sections share one namespace (see mod.rs)
use super::*;

/// Upper bound of `chunk_rows`: keeps one chunk's memory bounded.
pub(super) const MAX_CHUNK_ROWS: i64 = 100_000;
/// Upper bound of second counts that are timeouts, grace periods or backoffs
/// (one day).
pub(crate) const MAX_SHORT_SECS: u64 = 86_400;
/// Upper bound of `statement_timeout_secs` and `retry_deadline_secs` (one week;
/// PostgreSQL's `statement_timeout` stops at 24.8 days in milliseconds).
pub(crate) const MAX_LONG_SECS: u64 = 604_800;
/// Upper bound of `sync_mode.lag` (about 10 years in seconds); larger values
/// overflow date arithmetic.
pub(super) const MAX_LAG: i64 = 315_360_000;

/// Collects errors for one file.
pub(super) struct Ctx<'a> {
    pub(super) file: &'a SourceFile,
    pub(super) errors: &'a mut Vec<ConfigError>,
}

impl Ctx<'_> {
    pub(super) fn push(
        &mut self,
        key_path: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.errors
            .push(self.file.error(key_path, message, Some(hint.into())));
    }

    pub(super) fn missing(&mut self, key_path: &str, hint: impl Into<String>) {
        if !self.file.typo_targets.contains(key_path) {
            self.push(key_path, "missing required key", hint);
        }
    }

    /// Parse an enum-like string; `what` names it in the message.
    pub(super) fn choice<T: Copy + PartialEq>(
        &mut self,
        key_path: &str,
        value: &str,
        what: &str,
        options: &[(&'static str, T)],
    ) -> Option<T> {
        self.choice_with(key_path, value, what, options, false)
    }

    /// [`Ctx::choice`], optionally ignoring ASCII case.
    pub(super) fn choice_with<T: Copy + PartialEq>(
        &mut self,
        key_path: &str,
        value: &str,
        what: &str,
        options: &[(&'static str, T)],
        case_insensitive: bool,
    ) -> Option<T> {
        let found = options.iter().find(|(name, _)| {
            if case_insensitive {
                name.eq_ignore_ascii_case(value)
            } else {
                *name == value
            }
        });
        if let Some((_, v)) = found {
            return Some(*v);
        }
        // Aliases share a value with an earlier name; list only the first.
        let mut shown: Vec<&str> = Vec::new();
        for (i, (name, _)) in options.iter().enumerate() {
            let aliased = options[..i].iter().any(|(_, v)| *v == options[i].1);
            if !aliased {
                shown.push(name);
            }
        }
        let hint = match suggest::closest(value, options.iter().map(|(n, _)| *n)) {
            Some(best) => format!(
                "did you mean `{best}`? use one of: {}",
                suggest::list(&shown)
            ),
            None => format!("use one of: {}", suggest::list(&shown)),
        };
        self.push(key_path, format!("`{value}` is not a valid {what}"), hint);
        None
    }

    /// A number of seconds from 1 to `max`: a bound keeps every deadline computed
    /// from it (`Instant + Duration`, SQL `statement_timeout` in milliseconds)
    /// far from overflow.
    pub(super) fn seconds(
        &mut self,
        key_path: &str,
        value: Option<i64>,
        fallback: Duration,
        max: u64,
    ) -> Duration {
        match value {
            None => fallback,
            Some(n) if n > 0 && n.unsigned_abs() <= max => Duration::from_secs(n.unsigned_abs()),
            Some(n) => {
                self.push(
                    key_path,
                    format!("must be between 1 and {max} seconds, not {n}"),
                    format!("use e.g. {} (the default)", fallback.as_secs()),
                );
                fallback
            }
        }
    }

    /// An integer in `range` (inclusive), or `fallback` when absent.
    pub(super) fn int_in<T: TryFrom<i64> + Copy>(
        &mut self,
        key_path: &str,
        value: Option<i64>,
        fallback: T,
        range: std::ops::RangeInclusive<i64>,
        hint: &str,
    ) -> T {
        match value {
            None => fallback,
            Some(n) if range.contains(&n) => T::try_from(n).unwrap_or(fallback),
            Some(n) => {
                self.push(
                    key_path,
                    format!(
                        "must be between {} and {}, not {n}",
                        range.start(),
                        range.end()
                    ),
                    hint,
                );
                fallback
            }
        }
    }

    /// A chunk size in `1..=100000`.
    pub(super) fn chunk_rows(
        &mut self,
        key_path: &str,
        value: Option<i64>,
        fallback: usize,
    ) -> usize {
        match value {
            None => fallback,
            Some(n) if (1..=MAX_CHUNK_ROWS).contains(&n) => usize::try_from(n).unwrap_or(fallback),
            Some(n) => {
                self.push(
                    key_path,
                    format!("must be between 1 and {MAX_CHUNK_ROWS}, not {n}"),
                    "the default is 1000 rows",
                );
                fallback
            }
        }
    }
}

/// Whether `name` is a valid connection, feed or pipeline name.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(super) const NAME_HINT: &str = "names may only use letters, digits, `_` and `-`";
