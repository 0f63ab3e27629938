//! When runs are due: pure functions of a pipeline's schedule, its run history
//! and the time, so every rule here is tested on a clock the test controls.
//!
//! - **Interval** schedules lay a grid `start + k·frequency` (months keep the
//!   anchor's day, clamped to the month's last day: Jan 31, Feb 28, Mar 31). The
//!   interval `[b(k), b(k+1))` is due once it has ended; missed intervals are
//!   caught up oldest first, but none that started before mParticle's catch-up
//!   limit (hourly 7 days, daily 6 months, weekly 3 years, monthly 5 years, or
//!   `catch_up_days`). Rows of skipped intervals are not lost: the first run's
//!   lower bound is still the watermark. A full sync or an integer sequence has
//!   no use for one run per interval, so its catch-up is one run; so is a dry
//!   run's (`only_read`).
//! - **Cron** fires at each wall-clock time the expression names in its zone. A
//!   time that does not exist (spring forward) fires at the end of the gap; a
//!   time that occurs twice (fall back) fires at both occurrences, so an hourly
//!   expression keeps its pace (as croniter does; a run is idempotent).
//!   Fires missed while the daemon was down are coalesced into one run.
//! - **Once** runs until one scheduled run has succeeded or failed.
//! - A scheduled run cut off (crash, shutdown) is due again at once, to resume
//!   from its checkpoint. A failed interval run is retried at the next grid
//!   boundary, together with the interval that then ends.

use chrono::{DateTime, Duration, LocalResult, Months, TimeZone, Utc};
use chrono_tz::Tz;

use crate::config::model::{Frequency, Pipeline, Schedule, SyncMode};
use crate::state::{RunState, ScheduleHistory};

/// A schedule interval `[start, end)`.
pub type Interval = (DateTime<Utc>, DateTime<Utc>);

/// What the scheduler should do for one pipeline now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Runs due now, oldest first; `None` for schedules without intervals.
    pub due: Vec<Option<Interval>>,
    /// When the pipeline is next due, if ever (after `due` has run).
    pub next: Option<DateTime<Utc>>,
}

/// The plan for `pipeline` at `now`. `daemon_started` anchors a cron schedule
/// that has never run (its first run is the first fire after the daemon started).
pub fn plan(
    pipeline: &Pipeline,
    history: &ScheduleHistory,
    daemon_started: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Plan {
    // A run still marked running here belongs to no live process (the caller
    // skips pipelines that are running): it was cut off like an interrupted one.
    let cut_off = matches!(
        history.last_scheduled_state,
        Some(RunState::Interrupted | RunState::Running)
    );
    match &pipeline.schedule {
        Schedule::OnDemand => Plan::default(),
        Schedule::Once => {
            if history.scheduled_outcome {
                Plan::default()
            } else {
                Plan {
                    due: vec![None],
                    next: None,
                }
            }
        }
        Schedule::Cron {
            expression,
            time_zone,
        } => {
            let (Ok(schedule), Ok(tz)) = (
                crate::config::cron_expr::parse(expression),
                time_zone.parse::<Tz>(),
            ) else {
                // Validation refuses both; nothing to schedule if it did not.
                return Plan::default();
            };
            let base = history.last_scheduled_start.unwrap_or(daemon_started);
            let fire = cron_next(&schedule, tz, base);
            if cut_off || fire.is_some_and(|f| f <= now) {
                Plan {
                    due: vec![None],
                    next: cron_next(&schedule, tz, now),
                }
            } else {
                Plan {
                    due: Vec::new(),
                    next: fire,
                }
            }
        }
        Schedule::Interval {
            frequency,
            start,
            end,
            catch_up_days,
        } => {
            let grid = Grid {
                start: *start,
                frequency: *frequency,
                end: *end,
            };
            // A dry run has no watermark to carry forward, so one run over the
            // missed intervals shows as much as one per interval would.
            let one_run = pipeline.input_protection
                == crate::config::model::InputProtection::OnlyRead
                || match &pipeline.sync_mode {
                    SyncMode::Full => true,
                    SyncMode::Incremental {
                        iterator_data_type, ..
                    } => *iterator_data_type == crate::config::model::IteratorDataType::Integer,
                };
            // After a failure, wait for the next boundary instead of retrying
            // in a loop.
            if history.last_scheduled_state == Some(RunState::Failed) {
                if let Some(failed_at) = history.last_scheduled_start {
                    let retry = grid.boundary(grid.index_after(failed_at));
                    if retry > now {
                        return Plan {
                            due: Vec::new(),
                            next: grid.clip(retry),
                        };
                    }
                }
            }
            let done = history
                .last_interval_end
                .map_or(0, |e| grid.index_at_or_after(e));
            let earliest = catch_up_floor(*frequency, *catch_up_days, now);
            let first = done.max(grid.index_at_or_after(earliest));
            let mut due = Vec::new();
            let mut k = first;
            while let Some(interval) = grid.interval(k).filter(|(_, e)| *e <= now) {
                due.push(interval);
                k += 1;
            }
            let next = grid.interval(k).map(|(_, e)| e);
            if one_run && due.len() > 1 {
                let merged = (due[0].0, due[due.len() - 1].1);
                due = vec![merged];
            }
            Plan {
                due: due.into_iter().map(Some).collect(),
                next,
            }
        }
    }
}

/// The interval grid of an interval schedule.
#[derive(Debug, Clone, Copy)]
struct Grid {
    start: DateTime<Utc>,
    frequency: Frequency,
    end: Option<DateTime<Utc>>,
}

impl Grid {
    /// `start + k·frequency` (months from the anchor, day clamped).
    fn boundary(&self, k: u32) -> DateTime<Utc> {
        let step = |d: Duration| {
            self.start
                .checked_add_signed(d * i32::try_from(k).unwrap_or(i32::MAX))
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        };
        match self.frequency {
            Frequency::Hourly => step(Duration::hours(1)),
            Frequency::Daily => step(Duration::days(1)),
            Frequency::Weekly => step(Duration::weeks(1)),
            Frequency::Monthly => self
                .start
                .checked_add_months(Months::new(k))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    /// The k-th interval, clipped to `end`; `None` once it would start at or
    /// after `end`.
    fn interval(&self, k: u32) -> Option<Interval> {
        let (a, b) = (self.boundary(k), self.boundary(k.saturating_add(1)));
        match self.end {
            Some(end) if a >= end => None,
            Some(end) => Some((a, b.min(end))),
            None => Some((a, b)),
        }
    }

    /// A boundary, or `end` when the grid stops first; `None` past the end.
    fn clip(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.end {
            Some(end) if at > end => None,
            _ => Some(at),
        }
    }

    /// The first k with `boundary(k) >= t` (0 when `t` is before the start).
    fn index_at_or_after(&self, t: DateTime<Utc>) -> u32 {
        if t <= self.start {
            return 0;
        }
        let mut k = self.estimate(t);
        while k > 0 && self.boundary(k - 1) >= t {
            k -= 1;
        }
        while self.boundary(k) < t {
            k += 1;
        }
        k
    }

    /// The first k with `boundary(k) > t`.
    fn index_after(&self, t: DateTime<Utc>) -> u32 {
        let k = self.index_at_or_after(t);
        if self.boundary(k) == t {
            k + 1
        } else {
            k
        }
    }

    /// A k close to where `t` falls, so the searches above take a few steps.
    fn estimate(&self, t: DateTime<Utc>) -> u32 {
        let secs = (t - self.start).num_seconds().max(0);
        let per = match self.frequency {
            Frequency::Hourly => 3_600,
            Frequency::Daily => 86_400,
            Frequency::Weekly => 604_800,
            // 28 days: never past the answer, a handful of steps short.
            Frequency::Monthly => 28 * 86_400,
        };
        u32::try_from(secs / per).unwrap_or(u32::MAX - 1)
    }
}

/// Intervals starting before this instant are not caught up.
fn catch_up_floor(frequency: Frequency, days: Option<u32>, now: DateTime<Utc>) -> DateTime<Utc> {
    let floor = match (days, frequency) {
        (Some(days), _) => now.checked_sub_signed(Duration::days(i64::from(days))),
        (None, Frequency::Hourly) => now.checked_sub_signed(Duration::days(7)),
        (None, Frequency::Daily) => now.checked_sub_months(Months::new(6)),
        (None, Frequency::Weekly) => now.checked_sub_months(Months::new(36)),
        (None, Frequency::Monthly) => now.checked_sub_months(Months::new(60)),
    };
    floor.unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The first fire strictly after `after`, by wall-clock time in `tz` (see the
/// module notes for the daylight-saving rules).
pub fn cron_next(
    schedule: &crate::config::cron_expr::CronSchedule,
    tz: Tz,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    // The expression is matched against local wall-clock times, which the
    // `cron` crate walks when given them as if they were UTC. Every local time
    // maps to one instant, two (a repeated hour) or, in a gap, the end of it.
    // Across a fall-back change local time runs backwards by `shift`, so the walk
    // starts that much before `after` and keeps the earliest instant after it.
    let offset = |t: DateTime<Utc>| {
        i64::from(
            chrono::Offset::fix(&tz.offset_from_utc_datetime(&t.naive_utc())).local_minus_utc(),
        )
    };
    let shift = Duration::seconds((offset(after) - offset(after + Duration::hours(3))).max(0));
    let mut local = after.with_timezone(&tz).naive_local() - shift;
    let mut best: Option<DateTime<Utc>> = None;
    for _ in 0..10_000 {
        let next_local = schedule
            .next_after(&Utc.from_utc_datetime(&local))?
            .naive_utc();
        if let Some(b) = best {
            if next_local > b.with_timezone(&tz).naive_local() + shift {
                break;
            }
        }
        let instants: Vec<DateTime<Utc>> = match tz.from_local_datetime(&next_local) {
            LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
            LocalResult::Ambiguous(a, b) => vec![a.with_timezone(&Utc), b.with_timezone(&Utc)],
            // In a spring-forward gap: the first minute that exists after it.
            LocalResult::None => (1..=24 * 60)
                .find_map(|m| {
                    tz.from_local_datetime(&(next_local + Duration::minutes(m)))
                        .earliest()
                        .map(|t| t - Duration::seconds(i64::from(chrono::Timelike::second(&t))))
                })
                .map(|t| t.with_timezone(&Utc))
                .into_iter()
                .collect(),
        };
        for instant in instants {
            if instant > after && best.is_none_or(|b| instant < b) {
                best = Some(instant);
            }
        }
        local = next_local;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::IteratorDataType;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn pipeline(schedule: Schedule, sync_mode: SyncMode) -> Pipeline {
        let mut p = crate::mapping::plan::tests::pipeline(Vec::new(), sync_mode);
        p.schedule = schedule;
        p
    }

    fn incremental() -> SyncMode {
        SyncMode::Incremental {
            iterator_field: "updated_at".into(),
            iterator_data_type: IteratorDataType::TimestampTz,
            from: None,
            lag: 0,
            time_zone: chrono_tz::UTC,
        }
    }

    fn interval(frequency: Frequency, start: &str, end: Option<&str>) -> Schedule {
        Schedule::Interval {
            frequency,
            start: t(start),
            end: end.map(t),
            catch_up_days: None,
        }
    }

    fn succeeded(interval_end: &str) -> ScheduleHistory {
        ScheduleHistory {
            last_scheduled_start: Some(t(interval_end)),
            last_scheduled_state: Some(RunState::Success),
            last_interval_end: Some(t(interval_end)),
            scheduled_outcome: true,
            last_scheduled_id: 0,
        }
    }

    #[test]
    fn hourly_three_hours_twenty_late_catches_up_three_exact_windows() {
        let p = pipeline(
            interval(Frequency::Hourly, "2026-03-01T06:00:00Z", None),
            incremental(),
        );
        let now = t("2026-03-01T09:20:00Z");
        let plan = plan(&p, &ScheduleHistory::default(), now, now);
        assert_eq!(
            plan.due,
            vec![
                Some((t("2026-03-01T06:00:00Z"), t("2026-03-01T07:00:00Z"))),
                Some((t("2026-03-01T07:00:00Z"), t("2026-03-01T08:00:00Z"))),
                Some((t("2026-03-01T08:00:00Z"), t("2026-03-01T09:00:00Z"))),
            ]
        );
        assert_eq!(plan.next, Some(t("2026-03-01T10:00:00Z")));
        // Once those ran, only the next hour is pending.
        let after = super::plan(&p, &succeeded("2026-03-01T09:00:00Z"), now, now);
        assert!(after.due.is_empty());
        assert_eq!(after.next, Some(t("2026-03-01T10:00:00Z")));
    }

    #[test]
    fn full_sync_catch_up_is_one_run_over_the_missed_intervals() {
        let p = pipeline(
            interval(Frequency::Hourly, "2026-03-01T06:00:00Z", None),
            SyncMode::Full,
        );
        let now = t("2026-03-01T09:20:00Z");
        let plan = plan(&p, &ScheduleHistory::default(), now, now);
        assert_eq!(
            plan.due,
            vec![Some((t("2026-03-01T06:00:00Z"), t("2026-03-01T09:00:00Z")))]
        );
    }

    #[test]
    fn monthly_anchored_on_the_31st_keeps_the_31st_where_it_exists() {
        let p = pipeline(
            interval(Frequency::Monthly, "2026-01-31T00:00:00Z", None),
            incremental(),
        );
        let now = t("2026-05-01T00:00:00Z");
        let plan = plan(&p, &ScheduleHistory::default(), now, now);
        assert_eq!(
            plan.due,
            vec![
                Some((t("2026-01-31T00:00:00Z"), t("2026-02-28T00:00:00Z"))),
                Some((t("2026-02-28T00:00:00Z"), t("2026-03-31T00:00:00Z"))),
                Some((t("2026-03-31T00:00:00Z"), t("2026-04-30T00:00:00Z"))),
            ]
        );
        assert_eq!(plan.next, Some(t("2026-05-31T00:00:00Z")));
        let later = super::plan(&p, &succeeded("2026-03-31T00:00:00Z"), now, now);
        assert_eq!(
            later.due,
            vec![Some((t("2026-03-31T00:00:00Z"), t("2026-04-30T00:00:00Z")))]
        );
    }

    #[test]
    fn end_clips_the_last_interval_and_stops_the_schedule() {
        let p = pipeline(
            interval(
                Frequency::Daily,
                "2026-03-01T00:00:00Z",
                Some("2026-03-03T12:00:00Z"),
            ),
            incremental(),
        );
        let now = t("2026-03-10T00:00:00Z");
        let plan = plan(&p, &ScheduleHistory::default(), now, now);
        assert_eq!(plan.due.len(), 3);
        assert_eq!(
            plan.due[2],
            Some((t("2026-03-03T00:00:00Z"), t("2026-03-03T12:00:00Z")))
        );
        assert_eq!(plan.next, None);
        let done = super::plan(&p, &succeeded("2026-03-03T12:00:00Z"), now, now);
        assert_eq!(done, Plan::default());
    }

    #[test]
    fn catch_up_is_bounded_by_the_frequency_limit_or_the_setting() {
        let now = t("2026-03-20T00:30:00Z");
        let p = pipeline(
            interval(Frequency::Hourly, "2026-01-01T00:00:00Z", None),
            incremental(),
        );
        let plan = plan(&p, &ScheduleHistory::default(), now, now);
        // Seven days back is 00:30 on the 13th: the hour that began at 00:00
        // started before the limit, so 01:00 on the 13th is the first.
        assert_eq!(plan.due.len(), 7 * 24 - 1, "hourly: 7 days");
        assert_eq!(
            plan.due[0],
            Some((t("2026-03-13T01:00:00Z"), t("2026-03-13T02:00:00Z")))
        );
        let mut p = p;
        p.schedule = Schedule::Interval {
            frequency: Frequency::Daily,
            start: t("2020-01-01T00:00:00Z"),
            end: None,
            catch_up_days: Some(2),
        };
        let plan = super::plan(&p, &ScheduleHistory::default(), now, now);
        // Two days back is 00:30 on the 18th, after the 18th's interval began.
        assert_eq!(
            plan.due,
            vec![Some((t("2026-03-19T00:00:00Z"), t("2026-03-20T00:00:00Z")))]
        );
    }

    #[test]
    fn a_failed_interval_waits_for_the_next_boundary_and_a_cut_off_one_resumes() {
        let p = pipeline(
            interval(Frequency::Hourly, "2026-03-01T06:00:00Z", None),
            incremental(),
        );
        let failed = ScheduleHistory {
            last_scheduled_start: Some(t("2026-03-01T07:00:05Z")),
            last_scheduled_state: Some(RunState::Failed),
            last_interval_end: Some(t("2026-03-01T06:00:00Z")),
            scheduled_outcome: true,
            last_scheduled_id: 0,
        };
        let at = t("2026-03-01T07:30:00Z");
        let plan = plan(&p, &failed, at, at);
        assert!(plan.due.is_empty());
        assert_eq!(plan.next, Some(t("2026-03-01T08:00:00Z")));
        let at = t("2026-03-01T08:00:00Z");
        assert_eq!(super::plan(&p, &failed, at, at).due.len(), 2);
        let interrupted = ScheduleHistory {
            last_scheduled_state: Some(RunState::Interrupted),
            ..failed
        };
        let at = t("2026-03-01T07:30:00Z");
        assert_eq!(
            super::plan(&p, &interrupted, at, at).due,
            vec![Some((t("2026-03-01T06:00:00Z"), t("2026-03-01T07:00:00Z")))]
        );
    }

    #[test]
    fn once_runs_until_an_outcome_is_recorded_across_restarts() {
        let p = pipeline(Schedule::Once, incremental());
        let now = t("2026-03-01T00:00:00Z");
        assert_eq!(
            plan(&p, &ScheduleHistory::default(), now, now).due,
            vec![None]
        );
        let cut_off = ScheduleHistory {
            last_scheduled_start: Some(now),
            last_scheduled_state: Some(RunState::Interrupted),
            last_interval_end: None,
            scheduled_outcome: false,
            last_scheduled_id: 0,
        };
        assert_eq!(plan(&p, &cut_off, now, now).due, vec![None]);
        let done = ScheduleHistory {
            last_scheduled_state: Some(RunState::Success),
            scheduled_outcome: true,
            ..cut_off
        };
        assert_eq!(plan(&p, &done, now, now), Plan::default());
        let on_demand = pipeline(Schedule::OnDemand, incremental());
        assert_eq!(
            plan(&on_demand, &ScheduleHistory::default(), now, now),
            Plan::default()
        );
    }

    fn fires(expression: &str, zone: &str, from: &str, n: usize) -> Vec<String> {
        let schedule = crate::config::cron_expr::parse(expression).unwrap();
        let tz: Tz = zone.parse().unwrap();
        let mut at = t(from);
        (0..n)
            .map(|_| {
                at = cron_next(&schedule, tz, at).unwrap();
                at.to_rfc3339()
            })
            .collect()
    }

    #[test]
    fn cron_in_berlin_across_both_daylight_saving_changes() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-03-27T12:00:00Z", 3),
            vec![
                "2026-03-28T01:30:00+00:00", // 02:30 CET
                "2026-03-29T01:00:00+00:00", // the gap's end, 03:00 CEST
                "2026-03-30T00:30:00+00:00", // 02:30 CEST
            ]
        );
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-10-23T12:00:00Z", 4),
            vec![
                "2026-10-24T00:30:00+00:00", // 02:30 CEST
                "2026-10-25T00:30:00+00:00", // the first 02:30
                "2026-10-25T01:30:00+00:00", // the second 02:30
                "2026-10-26T01:30:00+00:00", // 02:30 CET
            ]
        );
        // Hourly in the zone: 9:00 every weekday (standard day numbers).
        assert_eq!(
            fires("0 9 * * 1-5", "Europe/Berlin", "2026-10-23T12:00:00Z", 2),
            vec!["2026-10-26T08:00:00+00:00", "2026-10-27T08:00:00+00:00"]
        );
        // Six fields: seconds first.
        assert_eq!(
            fires("30 0 12 * * *", "UTC", "2026-10-23T12:00:00Z", 1),
            vec!["2026-10-23T12:00:30+00:00"]
        );
    }

    #[test]
    fn cron_runs_at_the_next_fire_coalesces_missed_ones_and_resumes_cut_off_runs() {
        let p = pipeline(
            Schedule::Cron {
                expression: "0 * * * *".into(),
                time_zone: "UTC".into(),
            },
            incremental(),
        );
        let started = t("2026-03-01T06:10:00Z");
        let fresh = plan(&p, &ScheduleHistory::default(), started, started);
        assert!(fresh.due.is_empty(), "no run at start-up");
        assert_eq!(fresh.next, Some(t("2026-03-01T07:00:00Z")));
        let ran = ScheduleHistory {
            last_scheduled_start: Some(t("2026-03-01T07:00:01Z")),
            last_scheduled_state: Some(RunState::Success),
            last_interval_end: None,
            scheduled_outcome: true,
            last_scheduled_id: 0,
        };
        let later = t("2026-03-01T10:30:00Z");
        let plan1 = plan(&p, &ran, started, later);
        assert_eq!(plan1.due, vec![None], "three missed fires, one run");
        assert_eq!(plan1.next, Some(t("2026-03-01T11:00:00Z")));
        let cut_off = ScheduleHistory {
            last_scheduled_state: Some(RunState::Interrupted),
            ..ran
        };
        let soon = t("2026-03-01T07:05:00Z");
        assert_eq!(plan(&p, &cut_off, soon, soon).due, vec![None]);
    }

    /// Next fire times from a reference implementation (Python's croniter 7.0.0)
    /// for expressions × zones × start times, many across daylight-saving changes
    /// (Berlin, New York, Sydney, both directions), 8 fires each.
    #[test]
    fn cron_matches_croniter_reference_table() {
        let table = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/cron_reference.tsv"
        ));
        let mut checked = 0;
        let mut wrong = Vec::new();
        for line in table
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let cols: Vec<&str> = line.split('\t').collect();
            let [expression, zone, after, expected] = cols[..] else {
                panic!("bad line: {line}");
            };
            let schedule = crate::config::cron_expr::parse(expression).unwrap();
            let tz: Tz = zone.parse().unwrap();
            let mut at = t(after);
            let got: Vec<String> = expected
                .split(',')
                .map(|_| {
                    at = cron_next(&schedule, tz, at).unwrap();
                    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
                })
                .collect();
            if got.join(",") != expected {
                wrong.push(format!(
                    "{expression} | {zone} | {after}\n  want {expected}\n  got  {}",
                    got.join(",")
                ));
            }
            checked += 1;
        }
        assert!(checked > 1000, "{checked}");
        assert!(
            wrong.is_empty(),
            "{} of {checked} differ:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }
}
