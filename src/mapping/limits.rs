//! mParticle's per-batch limits (Default Service Limits; spec §3.3, §4) and the
//! helpers that enforce them before anything is sent.

/// User attributes per batch.
pub const MAX_ATTRIBUTES_PER_BATCH: usize = 100;
/// Unique attributes per event (event pipelines; the attributes after the
/// 100th, in column order, are dropped).
pub const MAX_ATTRIBUTES_PER_EVENT: usize = 100;
/// Characters in a user attribute name.
pub const MAX_ATTRIBUTE_NAME_CHARS: usize = 256;
/// Characters in a user attribute string value.
pub const MAX_ATTRIBUTE_VALUE_CHARS: usize = 4096;
/// Entries in a list attribute.
pub const MAX_LIST_ENTRIES: usize = 1000;
/// Characters in one list entry.
pub const MAX_LIST_ENTRY_CHARS: usize = 512;
/// Bytes of one serialized batch (128 KiB).
pub const MAX_BATCH_BYTES: usize = 128 * 1024;
/// Batches in one `/bulkevents` request.
pub const MAX_BATCHES_PER_REQUEST: usize = 100;
/// A request body must be strictly smaller than this (256 KiB).
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Counter names for values that were dropped or truncated; they appear in run
/// summaries and the README.
pub mod reason {
    /// NaN or ±Infinity (floats, decimals, list elements).
    pub const NON_FINITE_NUMBER: &str = "non_finite_number";
    /// Attribute name over 256 characters.
    pub const NAME_TOO_LONG: &str = "name_too_long";
    /// String value over 4096 characters.
    pub const VALUE_TOO_LONG: &str = "value_too_long";
    /// List over 1000 entries.
    pub const LIST_TOO_LONG: &str = "list_too_long";
    /// List entry over 512 characters.
    pub const LIST_ENTRY_TOO_LONG: &str = "list_entry_too_long";
    /// NULL element inside an array (lists cannot hold nulls).
    pub const LIST_NULL_ENTRY: &str = "list_null_entry";
    /// A list value mapped to an event attribute (the schema allows scalars only).
    pub const LIST_IN_EVENT_ATTRIBUTE: &str = "list_in_event_attribute";
    /// An event field that does not apply to the row's event type (a product
    /// action on a custom event, …).
    pub const NOT_FOR_EVENT_TYPE: &str = "not_for_event_type";
    /// An event attribute beyond the 100 an event may carry.
    pub const TOO_MANY_EVENT_ATTRIBUTES: &str = "too_many_event_attributes";
    /// A device id the Events API requires to be a UUID that is not one.
    pub const INVALID_DEVICE_ID: &str = "invalid_device_id";
    /// One attribute alone larger than a batch may be.
    pub const ATTRIBUTE_TOO_LARGE: &str = "attribute_exceeds_batch_size";
}

/// Number of characters (Unicode scalar values) in `s`.
pub fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// `s` cut to at most `max` characters (never inside a character).
pub fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((byte, _)) => &s[..byte],
        None => s,
    }
}

/// Whether `s` has more than `max` characters, without counting all of a long string.
pub fn exceeds_chars(s: &str, max: usize) -> bool {
    // A string of at most `max` bytes cannot have more than `max` characters.
    s.len() > max && s.char_indices().nth(max).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_counts_characters_not_bytes() {
        let s = "é".repeat(10);
        assert_eq!(truncate_chars(&s, 4), "éééé");
        assert!(exceeds_chars(&s, 9));
        assert!(!exceeds_chars(&s, 10));
        assert_eq!(char_len("🎉a"), 2);
        assert_eq!(truncate_chars("ab", 5), "ab");
    }
}
