//! Export path templates: rendering never panics, and no value (pipeline id,
//! window bounds) can climb out of the export folder: a `..` in the result
//! comes only from the template itself.
#![no_main]

use chrono::NaiveDate;
use libfuzzer_sys::fuzz_target;
use wsync::export::{render_path, Dataset, PathVars};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(4, '\0');
    let template = parts.next().unwrap_or("");
    let pipeline = parts.next().unwrap_or("p");
    let start = parts.next();
    let end = parts.next();
    let vars = PathVars {
        pipeline,
        run_id: "7",
        date: NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
        window_start: start,
        window_end: end,
        dataset: Dataset::Rows,
    };
    let Ok(path) = render_path(template, &vars) else {
        return;
    };
    if !template.contains("..") {
        assert!(
            !path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir)),
            "{template:?} rendered {path:?}"
        );
    }
});
