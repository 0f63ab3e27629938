//! JSON in and out: `compact_json` (json/jsonb columns) accepts exactly the
//! valid JSON texts and keeps their meaning and digits; the batch writer's
//! string literals parse back to the string written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsync::mapping::json::write_str;
use wsync::source::fuzzing::compact_json;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut literal = Vec::new();
    write_str(&mut literal, text);
    let back: String = serde_json::from_slice(&literal).expect("a JSON string literal");
    assert_eq!(back, text);

    let valid = serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok();
    match compact_json(text) {
        Ok(compact) => {
            assert!(valid, "accepted invalid JSON {text:?}");
            let a: serde_json::Value = serde_json::from_str(text).expect("valid");
            let b: serde_json::Value = serde_json::from_str(&compact).expect("compact is JSON");
            assert_eq!(a, b, "{text:?} → {compact:?}");
            // Every digit of every number is still there.
            let digits = |s: &str| s.bytes().filter(u8::is_ascii_digit).count();
            assert_eq!(digits(text), digits(&compact));
        }
        Err(_) => assert!(!valid, "refused valid JSON {text:?}"),
    }
});
