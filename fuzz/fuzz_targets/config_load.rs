//! The config loader (TOML files → validated model) never panics, and what it
//! accepts is usable: cron schedules compute their next fire and the lag of an
//! incremental sync moves any watermark without overflow.
//!
//! Input: `wsync.toml`, `schedules/p.toml` and `sql/m.sql`, separated by NUL
//! bytes, written to a scratch project folder.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use chrono::{DateTime, NaiveDate, Utc};
use libfuzzer_sys::fuzz_target;
use wsync::config::model::{IteratorDataType, Schedule, SyncMode};
use wsync::source::IteratorValue;

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("wsync-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("schedules")).unwrap();
        std::fs::create_dir_all(dir.join("sql")).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\0');
    let wsync_toml = parts.next().unwrap_or("");
    let pipeline = parts.next().unwrap_or("");
    let model = parts.next().unwrap_or("SELECT 1");
    let dir = scratch();
    std::fs::write(dir.join("wsync.toml"), wsync_toml).unwrap();
    std::fs::write(dir.join("schedules/p.toml"), pipeline).unwrap();
    std::fs::write(dir.join("sql/m.sql"), model).unwrap();
    // Every `*_env` variable reads as set, so secrets never stop validation.
    let env = |_: &str| Some(std::ffi::OsString::from("fuzz-secret"));
    let Ok(project) = wsync::config::load_with_env(dir, &env) else {
        return;
    };
    let now = DateTime::<Utc>::from_timestamp(1_790_000_000, 0).unwrap();
    for p in project.pipelines.values() {
        if let Schedule::Cron {
            expression,
            time_zone,
        } = &p.schedule
        {
            let schedule = wsync::config::cron_expr::parse(expression).unwrap();
            let tz: chrono_tz::Tz = time_zone.parse().unwrap();
            if let Some(next) = wsync::scheduler::plan::cron_next(&schedule, tz, now) {
                assert!(next > now);
            }
        }
        if let SyncMode::Incremental {
            iterator_data_type,
            lag,
            ..
        } = &p.sync_mode
        {
            let value = match iterator_data_type {
                IteratorDataType::TimestampTz => IteratorValue::TimestampTz(now),
                IteratorDataType::TimestampNtz => IteratorValue::Timestamp(now.naive_utc()),
                IteratorDataType::Date => {
                    IteratorValue::Date(NaiveDate::from_ymd_opt(2026, 1, 1).unwrap())
                }
                _ => IteratorValue::Integer(0),
            };
            let _ = wsync::sync::window::minus_lag(*iterator_data_type, value, *lag);
        }
    }
});
