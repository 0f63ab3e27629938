//! `[schedule]`: interval, cron, once or on demand, with time zones and instants.

#[allow(clippy::wildcard_imports)] // the sections share one namespace (see mod.rs)
use super::*;

pub(super) const FREQUENCIES: &[(&str, Frequency)] = &[
    ("hourly", Frequency::Hourly),
    ("daily", Frequency::Daily),
    ("weekly", Frequency::Weekly),
    ("monthly", Frequency::Monthly),
];

/// `[schedule] type`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ScheduleKind {
    Interval,
    Cron,
    Once,
    OnDemand,
}
pub(super) const SCHEDULE_KINDS: &[(&str, ScheduleKind)] = &[
    ("interval", ScheduleKind::Interval),
    ("cron", ScheduleKind::Cron),
    ("once", ScheduleKind::Once),
    ("on_demand", ScheduleKind::OnDemand),
];

pub(super) fn validate_schedule(ctx: &mut Ctx<'_>, raw: &RawSchedule) -> Schedule {
    let kind = if let Some(k) = &raw.kind {
        ctx.choice("schedule.type", k, "schedule type", SCHEDULE_KINDS)
    } else {
        ctx.missing(
            "schedule.type",
            "add type = \"interval\", \"cron\", \"once\" or \"on_demand\"",
        );
        None
    };
    let Some(kind) = kind else {
        return Schedule::OnDemand;
    };
    let (name, valid) = match kind {
        ScheduleKind::Interval => (
            "interval",
            "interval schedules use frequency, start, end and catch_up_days",
        ),
        ScheduleKind::Cron => ("cron", "cron schedules use expression and time_zone"),
        ScheduleKind::Once => ("once", "once schedules take no other keys"),
        ScheduleKind::OnDemand => ("on_demand", "on_demand schedules take no other keys"),
    };
    let kind_text = format!("schedule type {name}");
    let interval = kind == ScheduleKind::Interval;
    let cron = kind == ScheduleKind::Cron;
    let present = [
        ("frequency", raw.frequency.is_some(), interval),
        ("start", raw.start.is_some(), interval),
        ("end", raw.end.is_some(), interval),
        ("catch_up_days", raw.catch_up_days.is_some(), interval),
        ("expression", raw.expression.is_some(), cron),
        ("time_zone", raw.time_zone.is_some(), cron),
    ];
    for (key, set, allowed) in present {
        if set && !allowed {
            not_for(ctx, &format!("schedule.{key}"), key, &kind_text, valid);
        }
    }
    match kind {
        ScheduleKind::Interval => {
            let frequency = if let Some(f) = &raw.frequency {
                ctx.choice("schedule.frequency", f, "frequency", FREQUENCIES)
            } else {
                ctx.missing(
                    "schedule.frequency",
                    "add frequency = \"hourly\", \"daily\", \"weekly\" or \"monthly\"",
                );
                None
            };
            let start = if let Some(v) = &raw.start {
                instant(ctx, "schedule.start", v)
            } else {
                ctx.missing(
                    "schedule.start",
                    "add start = \"2024-01-01T00:00:00Z\" (the first run and the grid's anchor)",
                );
                None
            };
            let end = raw
                .end
                .as_ref()
                .and_then(|v| instant(ctx, "schedule.end", v));
            if let (Some(start), Some(end)) = (start, end) {
                if end <= start {
                    ctx.push(
                        "schedule.end",
                        "must be after start",
                        "move end later than start, or remove it",
                    );
                }
            }
            let catch_up_days = raw.catch_up_days.map(|_| {
                ctx.int_in(
                    "schedule.catch_up_days",
                    raw.catch_up_days,
                    0u32,
                    0..=36_600,
                    "use a number of days from 0 (no catch-up) to 36600",
                )
            });
            Schedule::Interval {
                frequency: frequency.unwrap_or(Frequency::Daily),
                start: start.unwrap_or_default(),
                end,
                catch_up_days,
            }
        }
        ScheduleKind::Cron => {
            let expression = if let Some(e) = &raw.expression {
                if let Err(problem) = crate::config::cron_expr::parse(e) {
                    ctx.push("schedule.expression", format!("cron expression `{e}` {problem}"), "write 5 fields: minute hour day-of-month month day-of-week, e.g. \"0 */15 * * *\"");
                }
                e.clone()
            } else {
                ctx.missing(
                    "schedule.expression",
                    "add expression = \"0 * * * *\" (minute hour day-of-month month day-of-week)",
                );
                String::new()
            };
            let time_zone = raw.time_zone.clone().unwrap_or_else(|| "UTC".to_owned());
            self::time_zone(ctx, "schedule.time_zone", &time_zone);
            Schedule::Cron {
                expression,
                time_zone,
            }
        }
        ScheduleKind::Once => Schedule::Once,
        ScheduleKind::OnDemand => Schedule::OnDemand,
    }
}

/// An IANA time zone, or an error with the closest name.
pub(super) fn time_zone(ctx: &mut Ctx<'_>, key_path: &str, name: &str) -> chrono_tz::Tz {
    if let Ok(tz) = chrono_tz::Tz::from_str(name) {
        return tz;
    }
    let names = chrono_tz::TZ_VARIANTS.iter().map(|t| t.name());
    let hint = match suggest::closest(name, names) {
        Some(best) => format!("did you mean `{best}`?"),
        None => "use an IANA zone name such as \"UTC\" or \"Europe/Berlin\"".to_owned(),
    };
    ctx.push(key_path, format!("`{name}` is not a known time zone"), hint);
    chrono_tz::UTC
}

/// An RFC 3339 instant (string or TOML offset date-time).
pub(super) fn instant(
    ctx: &mut Ctx<'_>,
    key_path: &str,
    value: &toml::Value,
) -> Option<DateTime<Utc>> {
    let text = scalar_text(ctx, key_path, value)?;
    if let Ok(t) = DateTime::parse_from_rfc3339(&text) {
        Some(t.with_timezone(&Utc))
    } else {
        ctx.push(
            key_path,
            format!("`{text}` is not an RFC 3339 timestamp"),
            "write a date, time and offset, e.g. \"2024-01-01T00:00:00Z\"",
        );
        None
    }
}
