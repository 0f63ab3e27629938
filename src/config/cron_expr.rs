//! Cron expressions as users write them, with standard cron semantics on top of
//! the `cron` crate.
//!
//! Users write standard cron: 5 fields (`minute hour day-of-month month
//! day-of-week`), optionally with seconds first (6 fields), and day-of-week
//! numbers 0–7 with 0 and 7 both Sunday. The `cron` crate differs from standard
//! cron in two ways, both handled here:
//!
//! - It numbers days 1–7 from Sunday, so `0 9 * * 1-5` would mean Sunday to
//!   Thursday there. [`parse`] expands the day-of-week field to the set of days
//!   it names (so `5-7/2` is Friday and Sunday) and hands the crate that list.
//! - It fires only when day-of-month **and** day-of-week match. Standard cron
//!   (POSIX, Vixie cron, croniter) fires when **either** matches if both are
//!   restricted (neither is written `*`). [`CronSchedule`] then keeps one crate
//!   schedule per day field and fires at the earlier of the two.
//!
//! The scheduler must use [`parse`] too, so that what validation accepted is what
//! runs. The reference table in `tests/data/cron_reference.tsv` (next fire times
//! computed by Python's croniter) checks both rules.

use std::str::FromStr;

use chrono::{DateTime, Utc};

/// A parsed cron expression with standard semantics.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    /// The expression as the crate runs it; when both day fields are
    /// restricted, the one with only the day-of-month restriction.
    primary: cron::Schedule,
    /// When both day fields are restricted: the one with only the day-of-week
    /// restriction. The schedule fires when either does.
    day_of_week: Option<cron::Schedule>,
}

impl CronSchedule {
    /// The first fire strictly after `after`, reading the expression against
    /// `after`'s clock as written (the scheduler passes local wall-clock times).
    pub fn next_after(&self, after: &DateTime<Utc>) -> Option<DateTime<Utc>> {
        let first = self.primary.after(after).next();
        let second = self
            .day_of_week
            .as_ref()
            .and_then(|s| s.after(after).next());
        match (first, second) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Parse a 5- or 6-field standard cron expression. The error says what is wrong
/// in words suitable for a config message.
pub fn parse(expression: &str) -> Result<CronSchedule, String> {
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
    let (fields_dom, fields_dow) = (full[3].clone(), full[5].clone());
    full[5] = translate_day_of_week(&full[5])?;
    let crate_parse = |fields: &[String]| {
        cron::Schedule::from_str(&fields.join(" ")).map_err(|e| format!("does not parse: {e}"))
    };
    let schedule = crate_parse(&full)?;
    // A day field is unrestricted only when written `*` (or `?`), as in
    // croniter: `1-31` or `*/2` restrict it.
    let written_star = |f: &str| f == "*" || f == "?";
    if written_star(&fields_dom) || written_star(&fields_dow) {
        return Ok(CronSchedule {
            primary: schedule,
            day_of_week: None,
        });
    }
    let mut dom_only = full.clone();
    dom_only[5] = "*".to_owned();
    let mut dow_only = full;
    dow_only[3] = "*".to_owned();
    Ok(CronSchedule {
        primary: crate_parse(&dom_only)?,
        day_of_week: Some(crate_parse(&dow_only)?),
    })
}

/// Standard day-of-week field (numbers 0–7 with Sunday = 0 and 7, names `MON`,
/// ranges, lists, steps, `*`, `?`) to the `cron` crate's: the list of the days it
/// names, numbered 1–7 from Sunday, or `*` for every day.
fn translate_day_of_week(field: &str) -> Result<String, String> {
    let mut days = [false; 7];
    for item in field.split(',') {
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => {
                let step = step
                    .parse::<usize>()
                    .ok()
                    .filter(|s| (1..=7).contains(s))
                    .ok_or_else(|| {
                        format!("has day-of-week step `{step}`; write a number from 1 to 7")
                    })?;
                (base, step)
            }
            None => (item, 1),
        };
        let (first, last) = match base {
            "*" | "?" => (0, 7),
            _ => match base.split_once('-') {
                Some((a, b)) => (day_number(a)?, day_number(b)?),
                // `1/2` runs to Saturday (`1-6/2`), as in croniter.
                None if item.contains('/') => (day_number(base)?, 6),
                None => {
                    let d = day_number(base)?;
                    (d, d)
                }
            },
        };
        if first > last {
            return Err(format!(
                "has day-of-week range `{base}` that goes backwards; write it as two ranges \
                 (e.g. `5-7,0-1` for Friday to Monday)"
            ));
        }
        for d in (first..=last).step_by(step) {
            days[d % 7] = true;
        }
    }
    if days.iter().all(|d| *d) {
        return Ok("*".to_owned());
    }
    Ok(days
        .iter()
        .enumerate()
        .filter(|(_, on)| **on)
        .map(|(d, _)| (d + 1).to_string())
        .collect::<Vec<_>>()
        .join(","))
}

/// A standard day-of-week number (0–7) or three-letter English name.
fn day_number(s: &str) -> Result<usize, String> {
    const NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
    if let Ok(n) = s.parse::<usize>() {
        return if n <= 7 {
            Ok(n)
        } else {
            Err(format!(
                "has day-of-week `{s}`; write 0–7 (0 and 7 are Sunday) or a name such as MON"
            ))
        };
    }
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            format!("has day-of-week `{s}`; write 0–7 (0 and 7 are Sunday) or a name such as MON")
        })
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
        let mut at = after;
        (0..7)
            .map(|_| {
                at = schedule.next_after(&at).expect("fires");
                at.weekday()
            })
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
        assert_eq!(translate_day_of_week("0-6/2").unwrap(), "1,3,5,7");
        assert_eq!(translate_day_of_week("*").unwrap(), "*");
        assert_eq!(translate_day_of_week("0-7").unwrap(), "*");
    }

    fn next_fires(expr: &str, from: &str, n: usize) -> Vec<String> {
        let schedule = parse(expr).expect("valid");
        let mut at = chrono::DateTime::parse_from_rfc3339(from)
            .expect("time")
            .with_timezone(&Utc);
        (0..n)
            .map(|_| {
                at = schedule.next_after(&at).expect("fires");
                at.format("%Y-%m-%d %a").to_string()
            })
            .collect()
    }

    #[test]
    fn cron_day_of_month_or_day_of_week() {
        // Both restricted: the 13th of any month, or any Friday (standard cron).
        assert_eq!(
            next_fires("0 0 13 * 5", "2026-11-01T00:00:00Z", 4),
            vec![
                "2026-11-06 Fri",
                "2026-11-13 Fri",
                "2026-11-20 Fri",
                "2026-11-27 Fri"
            ]
        );
        assert_eq!(
            next_fires("0 9 1 * 1", "2026-11-24T00:00:00Z", 3),
            vec!["2026-11-30 Mon", "2026-12-01 Tue", "2026-12-07 Mon"]
        );
        // One of them unrestricted: the other alone decides.
        assert_eq!(
            next_fires("0 9 * * 1", "2026-11-24T00:00:00Z", 2),
            vec!["2026-11-30 Mon", "2026-12-07 Mon"]
        );
        // `1-31` is a restriction (only `*` is not), so this is every day.
        assert_eq!(
            next_fires("0 9 1-31 * 1", "2026-11-24T00:00:00Z", 2),
            vec!["2026-11-24 Tue", "2026-11-25 Wed"]
        );
    }

    #[test]
    fn cron_day_of_week_step_keeps_sunday() {
        use Weekday::*;
        assert_eq!(
            next_weekdays("0 9 * * 5-7/2"),
            vec![Fri, Sun, Fri, Sun, Fri, Sun, Fri]
        );
        assert_eq!(translate_day_of_week("5-7/2").unwrap(), "1,6");
        assert_eq!(translate_day_of_week("sat-sun").unwrap_err(), "has day-of-week range `sat-sun` that goes backwards; write it as two ranges (e.g. `5-7,0-1` for Friday to Monday)");
        assert_eq!(translate_day_of_week("fri-7").unwrap(), "1,6,7");
        assert!(parse("0 9 * * 8").unwrap_err().contains("day-of-week `8`"));
        assert!(parse("0 9 * * 1/0").unwrap_err().contains("step"));
    }
}
