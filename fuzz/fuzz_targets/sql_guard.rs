//! The single-SELECT guard never panics, and what it accepts for a dialect it
//! still accepts once trailing semicolons are stripped (the form wsync wraps
//! as `SELECT * FROM (<model>) AS m`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsync::config::model::ConnectionKind;
use wsync::source::guard::{check_select_for, check_single_select, strip_trailing_semicolon};

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let _ = check_single_select(sql);
    for kind in [
        ConnectionKind::Postgres,
        ConnectionKind::Redshift,
        ConnectionKind::MySql,
        ConnectionKind::Sqlite,
        ConnectionKind::Snowflake,
        ConnectionKind::BigQuery,
    ] {
        if check_select_for(sql, kind).is_ok() {
            let stripped = strip_trailing_semicolon(sql);
            assert!(
                check_select_for(stripped, kind).is_ok(),
                "accepted, but not once stripped ({kind:?}): {sql:?}"
            );
            assert!(!stripped.trim().is_empty());
        }
    }
});
