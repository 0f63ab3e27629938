//! Cron expressions as users write them, turned into a [`cron::Schedule`].
//!
//! Users write standard cron: 5 fields (`minute hour day-of-month month
//! day-of-week`), optionally with seconds first (6 fields), and day-of-week
//! numbers 0–7 with 0 and 7 both Sunday. The `cron` crate wants 6 or 7 fields and
//! numbers days 1–7 from Sunday, so `0 9 * * 1-5` would silently mean Sunday to
//! Thursday there. [`parse`] translates; the scheduler must use it too, so that
//! what validation accepted is what runs.

use std::str::FromStr;

/// Parse a 5- or 6-field standard cron expression. The error says what is wrong
/// in words suitable for a config message.
pub fn parse(expression: &str) -> Result<cron::Schedule, String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let mut full: Vec<String> = match fields.len() {
        5 => std::iter::once("0")
            .chain(fields.iter().copied())
            .map(str::to_owned)
            .collect(),
        6 => fields.iter().map(|f| (*f).to_owned()).collect(),
        n => {
            return Err(format!(
                "has {n} fields; expected 5 (minute hour day-of-month month day-of-week) \
                 or 6 (seconds first)"
            ))
        }
    };
    full[5] = translate_day_of_week(&full[5]);
    cron::Schedule::from_str(&full.join(" ")).map_err(|e| format!("does not parse: {e}"))
}

/// Standard day-of-week numbers (0–7, Sunday = 0 and 7) to the `cron` crate's
/// (1–7, Sunday = 1). Names (`MON`), `*` and `?` pass through; numbers out of
/// range pass through unchanged so the crate reports them.
fn translate_day_of_week(field: &str) -> String {
    let day = |s: &str| -> Option<u32> { s.parse::<u32>().ok().filter(|n| *n <= 7) };
    let shift = |n: u32| if n == 7 { 1 } else { n + 1 };
    field
        .split(',')
        .map(|item| {
            let (base, step) = match item.split_once('/') {
                Some((base, step)) => (base, Some(step)),
                None => (item, None),
            };
            let translated = match base.split_once('-') {
                Some((a, b)) => match (day(a), day(b)) {
                    (Some(0), Some(7)) => "1-7".to_owned(),
                    // Friday-to-Sunday style ranges end on the crate's day 1.
                    (Some(a), Some(7)) if step.is_none() => format!("{}-7,1", a + 1),
                    (Some(a), Some(7)) => format!("{}-7", a + 1),
                    (Some(a), Some(b)) => format!("{}-{}", shift(a), shift(b)),
                    _ => base.to_owned(),
                },
                None => day(base).map_or_else(|| base.to_owned(), |n| shift(n).to_string()),
            };
            match step {
                Some(step) => format!("{translated}/{step}"),
                None => translated,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Utc, Weekday};

    fn next_weekdays(expr: &str) -> Vec<Weekday> {
        let schedule = parse(expr).expect("valid");
        let after = Utc
            .with_ymd_and_hms(2024, 1, 1, 12, 0, 0)
            .single()
            .expect("date"); // a Monday
        schedule
            .after(&after)
            .take(7)
            .map(|t| t.weekday())
            .collect()
    }

    #[test]
    fn five_and_six_fields_parse() {
        assert!(parse("0 */15 * * *").is_ok());
        assert!(parse("30 0 */15 * * *").is_ok());
        assert_eq!(
            parse("* * *").unwrap_err(),
            "has 3 fields; expected 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"
        );
        assert!(parse("61 * * * *")
            .unwrap_err()
            .starts_with("does not parse"));
    }

    #[test]
    fn day_of_week_uses_standard_numbering() {
        use Weekday::*;
        assert_eq!(next_weekdays("0 9 * * 0"), vec![Sun; 7]);
        assert_eq!(next_weekdays("0 9 * * 7"), vec![Sun; 7]);
        assert_eq!(
            next_weekdays("0 9 * * 1-5"),
            vec![Tue, Wed, Thu, Fri, Mon, Tue, Wed]
        );
        assert_eq!(
            next_weekdays("0 9 * * 5-7"),
            vec![Fri, Sat, Sun, Fri, Sat, Sun, Fri]
        );
        assert_eq!(next_weekdays("0 9 * * MON"), vec![Mon; 7]);
        assert_eq!(translate_day_of_week("0-6/2"), "1-7/2");
        assert_eq!(translate_day_of_week("*"), "*");
    }
}
