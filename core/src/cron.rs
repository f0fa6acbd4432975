//! Cron jobs (Aurora's `cron_schedule`): schedules, the time zone they are read in, what happens
//! when a run is still going at the next trigger, and when a restarted scheduler runs next.
//!
//! Everything here is pure: the current time is always a parameter, in unix milliseconds, and
//! no function reads a clock. Parsing and evaluation are [`croner`]'s; this module holds it to
//! the classic grammar and gives errors that name the problem.
//!
//! # Schedules
//!
//! A [`CronSchedule`] is the classic five fields, `minute hour day-of-month month day-of-week`,
//! each `*`, a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n` (from `a` to the field's
//! maximum), or a comma-separated list of these. Months may be named `JAN`..`DEC` and days of
//! the week `SUN`..`SAT` (any case); day of week 0 and 7 are both Sunday. The shortcuts
//! `@yearly` (= `@annually`), `@monthly`, `@weekly`, `@daily` (= `@midnight`) and `@hourly` are
//! accepted. A seconds or years field, `@reboot`, and the non-classic extensions `L`, `W`, `#`
//! and `?` are refused, as is a schedule that can never fire (`0 0 30 2 *`). When both
//! day-of-month and day-of-week are restricted (neither is `*`), a day matches when either
//! matches, as in classic cron: `0 0 13 * FRI` fires on every 13th and on every Friday.
//!
//! # Time zones and daylight saving
//!
//! A schedule is read in wall-clock time of a [`CronTimezone`] (Aurora's `-cron_timezone`,
//! default GMT). Across a daylight-saving change [`CronSchedule::next_after`] does what croner
//! does:
//! - *spring forward* (a wall-clock hour does not exist): a trigger in the gap fires once, at
//!   the first instant after the gap. In America/New_York on 2026-03-08 the clocks jump from
//!   02:00 EST to 03:00 EDT, so `30 2 * * *` fires at 03:00 EDT that day;
//! - *fall back* (a wall-clock hour happens twice): a trigger in the repeated hour fires once,
//!   at its first (daylight) occurrence, never again in the repeat. In America/New_York on
//!   2026-11-01 the clocks go back from 02:00 EDT to 01:00 EST, so `30 1 * * *` fires at
//!   01:30 EDT only; likewise `* * * * *` does not fire during the repeated hour (01:00 to
//!   01:59 EST), its next trigger after 01:59 EDT being 02:00 EST.
//!
//! # Missed triggers
//!
//! A scheduler that was down through one or more trigger times does not run them when it comes
//! back, not even once: its next run is the first trigger strictly after it started
//! ([`first_trigger_on_start`]). This is Aurora's (Quartz's "do nothing" misfire instruction).
//! Hence a trigger is never run twice, whatever crashes happen around it: once its time has
//! passed no restart will pick it again (given a clock that does not step back). The price is
//! that a trigger that fell while the scheduler was down, or while it was starting, is lost.
//!
//! # Collisions
//!
//! A trigger that fires while the job's previous run still has active tasks is settled by the
//! job's [`CollisionPolicy`]: kill the previous run and start the new one once it is gone
//! (polling with [`start_backoff_ms`]), or skip the new run.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Aurora's `-cron_scheduling_max_batch_size`: cron runs started per scheduling batch.
pub const CRON_SCHEDULING_MAX_BATCH_SIZE_DEFAULT: u32 = 10;
/// Aurora's `-cron_start_initial_backoff`: the first wait for a killed run to be gone (5 s).
pub const CRON_START_INITIAL_BACKOFF_MS_DEFAULT: u64 = 5_000;
/// Aurora's `-cron_start_max_backoff`: the longest such wait (1 min).
pub const CRON_START_MAX_BACKOFF_MS_DEFAULT: u64 = 60_000;
/// Aurora's `-cron_timezone`: the zone schedules are read in.
pub const CRON_TIMEZONE_DEFAULT: &str = "GMT";

/// The field list every five-field error message names.
const FIELDS: &str = "minute hour day-of-month month day-of-week";

/// Why a schedule, a time zone or a collision policy was refused. `Display` is one line that
/// names the setting, the text given, and the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// A bad `cron_schedule`.
    #[error("cron_schedule {text:?}: {reason}")]
    Schedule { text: String, reason: String },
    /// A bad time zone.
    #[error("cron_timezone {text:?}: {reason}")]
    Timezone { text: String, reason: String },
    /// A bad `cron_collision_policy`.
    #[error("cron_collision_policy {text:?}: {reason}")]
    CollisionPolicy { text: String, reason: String },
}

impl CronError {
    /// The text that was refused.
    pub fn text(&self) -> &str {
        match self {
            CronError::Schedule { text, .. }
            | CronError::Timezone { text, .. }
            | CronError::CollisionPolicy { text, .. } => text,
        }
    }

    /// What is wrong with it, without the setting's name and text.
    pub fn reason(&self) -> &str {
        match self {
            CronError::Schedule { reason, .. }
            | CronError::Timezone { reason, .. }
            | CronError::CollisionPolicy { reason, .. } => reason,
        }
    }
}

/// A parsed cron schedule (see the [module docs](self) for the grammar). It keeps the text it
/// was parsed from: `Display`, [`as_str`](Self::as_str) and serde give it back unchanged, and
/// two schedules are equal when their texts are (`@daily` is not equal to `0 0 * * *`).
#[derive(Clone)]
pub struct CronSchedule {
    text: String,
    cron: croner::Cron,
}

impl CronSchedule {
    /// Parses a five-field schedule or a shortcut such as `@daily`.
    pub fn parse(text: &str) -> Result<CronSchedule, CronError> {
        let error = |reason: String| CronError::Schedule {
            text: text.to_string(),
            reason,
        };
        let normalized = normalize(text).map_err(error)?;
        // `normalize` hands croner only numbers, `*`, `,`, `-` and `/`, each in range, so this
        // fails only if croner and `normalize` disagree on the grammar.
        let cron = croner::Cron::new(&normalized)
            .parse()
            .map_err(|e| error(e.to_string()))?;
        Ok(CronSchedule {
            text: text.to_string(),
            cron,
        })
    }

    /// The text the schedule was parsed from.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first trigger time strictly after `after_unix_ms`, in unix milliseconds, reading the
    /// schedule in `tz` (daylight-saving changes as the [module docs](self) describe). None when
    /// there is none: past croner's search limit (the year 5000), or past what a unix
    /// millisecond `i64` holds.
    pub fn next_after(&self, after_unix_ms: u64, tz: &CronTimezone) -> Option<u64> {
        let after_ms = i64::try_from(after_unix_ms).ok()?;
        // Triggers fall on whole minutes, so the first one after the whole second containing
        // `after_ms` is the first one after `after_ms`; croner keeps sub-seconds otherwise.
        let start = DateTime::<Utc>::from_timestamp(after_ms.div_euclid(1000), 0)?;
        let mut from = start.with_timezone(&tz.tz);
        // Croner searches wall-clock time and maps a repeated wall-clock time to its first
        // instant. From inside a fall-back repeat, that instant can lie before `after_ms`: the
        // trigger already fired in the first pass, so search on from it. A repeat is at most a
        // few hours, so a day of minutes is more retries than a schedule can need.
        for _ in 0..24 * 60 {
            let next = self.cron.find_next_occurrence(&from, false).ok()?;
            let next_ms = next.timestamp_millis();
            if next_ms > after_ms {
                return u64::try_from(next_ms).ok();
            }
            from = next;
        }
        None
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for CronSchedule {}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CronSchedule").field(&self.text).finish()
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for CronSchedule {
    type Err = CronError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        CronSchedule::parse(text)
    }
}

impl Serialize for CronSchedule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for CronSchedule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        CronSchedule::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One of the five fields: its name, bounds, and the names its values may have.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const FIVE_FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &MONTH_NAMES,
    },
    Field {
        name: "day-of-week",
        min: 0,
        max: 7,
        names: &WEEKDAY_NAMES,
    },
];

/// The most days each month can have (February in a leap year).
const MONTH_DAYS_MAX: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// `text` as five numeric fields for croner: shortcuts expanded, names replaced by numbers,
/// every value checked against its field. The error is the reason only.
fn normalize(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!(
            "empty schedule: expected 5 fields ({FIELDS}) or a shortcut such as @daily"
        ));
    }
    if let Some(shortcut) = trimmed.strip_prefix('@') {
        return match shortcut.to_ascii_lowercase().as_str() {
            "yearly" | "annually" => Ok("0 0 1 1 *".into()),
            "monthly" => Ok("0 0 1 * *".into()),
            "weekly" => Ok("0 0 * * 0".into()),
            "daily" | "midnight" => Ok("0 0 * * *".into()),
            "hourly" => Ok("0 * * * *".into()),
            "reboot" => Err("@reboot is not supported: a cron job runs on a schedule, \
                             not when the scheduler starts"
                .into()),
            _ => Err(format!(
                "unknown shortcut @{shortcut}: expected one of @yearly, @annually, @monthly, \
                 @weekly, @daily, @midnight, @hourly"
            )),
        };
    }
    let parts: Vec<&str> = trimmed.split_whitespace().collect();
    if parts.len() != FIVE_FIELDS.len() {
        let extra = match parts.len() {
            6 | 7 => " (a seconds or years field is not supported)",
            _ => "",
        };
        return Err(format!(
            "expected 5 fields ({FIELDS}), found {}{extra}",
            parts.len()
        ));
    }
    let mut numeric = Vec::with_capacity(parts.len());
    let mut masks = [0u64; 5];
    for (index, (part, field)) in parts.iter().zip(&FIVE_FIELDS).enumerate() {
        let (text, mask) = normalize_field(field, part)?;
        numeric.push(text);
        masks[index] = mask;
    }
    // With day-of-week `*` only day-of-month picks days; refuse days no chosen month has (a
    // restricted day-of-week always matches some day, under either-matches).
    if numeric[4] == "*" {
        let fires = (1..=12u32).any(|month| {
            masks[3] & (1 << month) != 0
                && (1..=MONTH_DAYS_MAX[month as usize - 1]).any(|day| masks[2] & (1 << day) != 0)
        });
        if !fires {
            return Err(format!(
                "never fires: day-of-month {} does not occur in month {}",
                parts[2], parts[3]
            ));
        }
    }
    Ok(numeric.join(" "))
}

/// One field as croner's numeric text, and the set of values it selects (bit `v` for `v`).
fn normalize_field(field: &Field, part: &str) -> Result<(String, u64), String> {
    let mut items = Vec::new();
    let mut mask = 0u64;
    for item in part.split(',') {
        if item.is_empty() {
            return Err(format!("{} {part:?} has an empty list item", field.name));
        }
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => (base, Some(step)),
            None => (item, None),
        };
        let step = match step {
            None => None,
            Some(step) => {
                let width = field.max - field.min + 1;
                match step.parse::<u32>() {
                    Ok(n) if (1..=width).contains(&n) => Some(n),
                    _ => {
                        return Err(format!(
                            "{} step {step:?} in {item:?} must be a number from 1 to {width}",
                            field.name
                        ))
                    }
                }
            }
        };
        let (first, last, text) = if base == "*" {
            (field.min, field.max, "*".to_string())
        } else if let Some((a, b)) = base.split_once('-') {
            let start = value(field, a, false)?;
            let end = value(field, b, true)?;
            if start > end {
                return Err(format!(
                    "{} range {base:?} runs backwards (a range may not wrap around)",
                    field.name
                ));
            }
            (start, end, format!("{start}-{end}"))
        } else {
            let v = value(field, base, false)?;
            // `a/n` runs from `a` to the field's maximum.
            let last = if step.is_some() { field.max } else { v };
            (v, last, v.to_string())
        };
        let step_by = step.unwrap_or(1);
        let mut v = first;
        while v <= last {
            mask |= 1 << v;
            v += step_by;
        }
        items.push(match step {
            Some(n) => format!("{text}/{n}"),
            None => text,
        });
    }
    if field.name == "day-of-week" && mask & (1 << 7) != 0 {
        // 7 is Sunday, as 0 is.
        mask |= 1;
    }
    Ok((items.join(","), mask))
}

/// A number or name of `field`, in range. A Sunday ending a range (`FRI-SUN`) is 7, so the
/// range does not run backwards.
fn value(field: &Field, text: &str, range_end: bool) -> Result<u32, String> {
    let number = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Digits too many for a u32 are out of range all the same.
        Some(text.parse::<u32>().unwrap_or(u32::MAX))
    } else {
        None
    };
    let v = match number {
        Some(v) => v,
        None => {
            let upper = text.to_ascii_uppercase();
            match field.names.iter().position(|n| *n == upper) {
                Some(i) if field.names.len() == 7 && i == 0 && range_end => 7,
                Some(i) => field.min + i as u32,
                None => {
                    let expected = match field.names.first() {
                        Some(first) => format!(
                            "a number or a name {first}-{}",
                            field.names[field.names.len() - 1]
                        ),
                        None => "a number".to_string(),
                    };
                    let extension = if text.contains(['L', 'l', 'W', 'w', '#', '?']) {
                        " (the extensions L, W, # and ? are not supported)"
                    } else {
                        ""
                    };
                    return Err(format!(
                        "{} {text:?} is not {expected}{extension}",
                        field.name
                    ));
                }
            }
        }
    };
    if v < field.min || v > field.max {
        return Err(format!(
            "{} {text} is out of range {}-{}",
            field.name, field.min, field.max
        ));
    }
    Ok(v)
}

/// The time zone schedules are read in: GMT, UTC or an IANA name such as `America/New_York`
/// (exact case, as the IANA database spells it). The default is GMT, Aurora's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CronTimezone {
    tz: Tz,
}

impl CronTimezone {
    /// The zone named `name`.
    pub fn parse(name: &str) -> Result<CronTimezone, CronError> {
        name.parse::<Tz>()
            .map(|tz| CronTimezone { tz })
            .map_err(|_| CronError::Timezone {
                text: name.to_string(),
                reason: "unknown time zone: expected GMT, UTC or an IANA name such as \
                         America/New_York"
                    .into(),
            })
    }

    /// The zone's name, as the IANA database spells it.
    pub fn as_str(&self) -> &'static str {
        self.tz.name()
    }
}

impl Default for CronTimezone {
    fn default() -> Self {
        CronTimezone { tz: Tz::GMT }
    }
}

impl fmt::Display for CronTimezone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CronTimezone {
    type Err = CronError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        CronTimezone::parse(name)
    }
}

impl Serialize for CronTimezone {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CronTimezone {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        CronTimezone::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What a trigger does while the job's previous run still has active tasks (Aurora's
/// `CronCollisionPolicy`; its deprecated `RUN_OVERLAP` is not supported).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CollisionPolicy {
    /// Kill the previous run's tasks, then start the new run once they are gone. The default.
    #[default]
    KillExisting,
    /// Skip the new run; the previous one goes on.
    CancelNew,
}

impl CollisionPolicy {
    /// `KILL_EXISTING` or `CANCEL_NEW`.
    pub fn parse(text: &str) -> Result<CollisionPolicy, CronError> {
        match text {
            "KILL_EXISTING" => Ok(CollisionPolicy::KillExisting),
            "CANCEL_NEW" => Ok(CollisionPolicy::CancelNew),
            "RUN_OVERLAP" => Err(CronError::CollisionPolicy {
                text: text.to_string(),
                reason: "RUN_OVERLAP is deprecated in Aurora and not supported: \
                         use CANCEL_NEW or KILL_EXISTING"
                    .into(),
            }),
            _ => Err(CronError::CollisionPolicy {
                text: text.to_string(),
                reason: "expected KILL_EXISTING or CANCEL_NEW".into(),
            }),
        }
    }

    /// The policy's name, as [`parse`](Self::parse) reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            CollisionPolicy::KillExisting => "KILL_EXISTING",
            CollisionPolicy::CancelNew => "CANCEL_NEW",
        }
    }
}

impl fmt::Display for CollisionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CollisionPolicy {
    type Err = CronError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        CollisionPolicy::parse(text)
    }
}

impl Serialize for CollisionPolicy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CollisionPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        CollisionPolicy::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A cron job's settings: when it runs, and what a trigger does while a run is still going.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronSpec {
    /// When the job runs.
    pub schedule: CronSchedule,
    /// What a trigger does while the previous run still has active tasks.
    #[serde(default)]
    pub collision_policy: CollisionPolicy,
}

/// How long to wait, after killing the previous run, before checking again whether it is gone
/// and the new run may start (Aurora's truncated binary backoff): `initial_ms` at attempt 0,
/// doubling with each attempt, never more than `max_ms` (nor overflowing, for any attempt).
pub fn start_backoff_ms(initial_ms: u64, max_ms: u64, attempt: u32) -> u64 {
    // From attempt 64 on the factor no longer fits; it saturates, as the product does.
    let factor = 1u64.checked_shl(attempt).unwrap_or(u64::MAX);
    initial_ms.saturating_mul(factor).min(max_ms)
}

/// When a scheduler that starts (or restarts) at `now_unix_ms` first runs a cron job: the first
/// trigger strictly after `now_unix_ms`. Triggers missed while it was down are not run, not even
/// once (see the [module docs](self)), so none is ever run twice.
pub fn first_trigger_on_start(
    schedule: &CronSchedule,
    now_unix_ms: u64,
    tz: &CronTimezone,
) -> Option<u64> {
    schedule.next_after(now_unix_ms, tz)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike};
    use proptest::prelude::*;

    fn schedule(text: &str) -> CronSchedule {
        CronSchedule::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn tz(name: &str) -> CronTimezone {
        CronTimezone::parse(name).unwrap()
    }

    /// Unix ms of a UTC time.
    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> u64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .unwrap()
            .timestamp_millis() as u64
    }

    /// The first `n` triggers after `from`, in GMT, as (month, day, hour, minute).
    fn triggers(text: &str, from: u64, n: usize) -> Vec<(u32, u32, u32, u32)> {
        let schedule = schedule(text);
        let gmt = CronTimezone::default();
        let mut at = from;
        (0..n)
            .map(|_| {
                at = schedule.next_after(at, &gmt).expect("a next trigger");
                let t = DateTime::<Utc>::from_timestamp_millis(at as i64).unwrap();
                (t.month(), t.day(), t.hour(), t.minute())
            })
            .collect()
    }

    /// 2026-01-01 was a Thursday.
    fn new_year() -> u64 {
        utc(2026, 1, 1, 0, 0, 0)
    }

    #[test]
    fn minute_ranges_steps_and_lists() {
        let at = new_year() - 1;
        let minutes = |text: &str, n| {
            triggers(text, at, n)
                .into_iter()
                .map(|(_, _, h, m)| (h, m))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            minutes("1-5 * * * *", 6),
            [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 1)]
        );
        assert_eq!(
            minutes("*/15 * * * *", 5),
            [(0, 0), (0, 15), (0, 30), (0, 45), (1, 0)]
        );
        assert_eq!(
            minutes("0-30/10 * * * *", 5),
            [(0, 0), (0, 10), (0, 20), (0, 30), (1, 0)]
        );
        assert_eq!(minutes("50/5 * * * *", 3), [(0, 50), (0, 55), (1, 50)]);
        assert_eq!(
            minutes("5,10,50 * * * *", 4),
            [(0, 5), (0, 10), (0, 50), (1, 5)]
        );
        assert_eq!(
            minutes("0,30-31,45/10 9,17 * * *", 6),
            [(9, 0), (9, 30), (9, 31), (9, 45), (9, 55), (17, 0)]
        );
        assert_eq!(
            minutes("0 */6 * * *", 5),
            [(0, 0), (6, 0), (12, 0), (18, 0), (0, 0)]
        );
    }

    #[test]
    fn names_and_days() {
        // From Thursday 2026-01-01: weekdays skip Saturday 3rd and Sunday 4th.
        let days = |text: &str, n| {
            triggers(text, new_year(), n)
                .into_iter()
                .map(|(mo, d, _, _)| (mo, d))
                .collect::<Vec<_>>()
        };
        assert_eq!(days("0 9 * * MON-FRI", 4), [(1, 1), (1, 2), (1, 5), (1, 6)]);
        assert_eq!(days("0 9 * * mon-fri", 4), days("0 9 * * 1-5", 4));
        assert_eq!(days("0 9 * * SAT-SUN", 3), [(1, 3), (1, 4), (1, 10)]);
        assert_eq!(days("0 9 * * 7", 2), [(1, 4), (1, 11)]);
        assert_eq!(days("0 9 * * SUN,wed", 3), [(1, 4), (1, 7), (1, 11)]);
        assert_eq!(days("0 0 1 JAN *", 2), [(1, 1), (1, 1)]);
        assert_eq!(days("0 0 1 MAR-may/2 *", 3), [(3, 1), (5, 1), (3, 1)]);
        assert_eq!(days("0 0 29 FEB *", 1), [(2, 29)]);
        // Both day fields restricted: either matches (the 13th, or a Friday).
        assert_eq!(days("0 0 13 * FRI", 4), [(1, 2), (1, 9), (1, 13), (1, 16)]);
    }

    #[test]
    fn leap_day_waits_for_a_leap_year() {
        let next = schedule("0 0 29 2 *")
            .next_after(new_year(), &CronTimezone::default())
            .unwrap();
        assert_eq!(next, utc(2028, 2, 29, 0, 0, 0));
    }

    #[test]
    fn shortcuts() {
        // 2026-01-01 00:00 was a Thursday; each shortcut's first trigger after 00:00:01.
        let from = new_year() + 1000;
        let gmt = CronTimezone::default();
        for (shortcut, expanded, first) in [
            ("@yearly", "0 0 1 1 *", utc(2027, 1, 1, 0, 0, 0)),
            ("@annually", "0 0 1 1 *", utc(2027, 1, 1, 0, 0, 0)),
            ("@monthly", "0 0 1 * *", utc(2026, 2, 1, 0, 0, 0)),
            ("@weekly", "0 0 * * 0", utc(2026, 1, 4, 0, 0, 0)),
            ("@daily", "0 0 * * *", utc(2026, 1, 2, 0, 0, 0)),
            ("@midnight", "0 0 * * *", utc(2026, 1, 2, 0, 0, 0)),
            ("@hourly", "0 * * * *", utc(2026, 1, 1, 1, 0, 0)),
            ("@DAILY", "0 0 * * *", utc(2026, 1, 2, 0, 0, 0)),
        ] {
            let s = schedule(shortcut);
            assert_eq!(s.as_str(), shortcut);
            assert_eq!(s.next_after(from, &gmt), Some(first), "{shortcut}");
            assert_eq!(
                triggers(shortcut, from, 5),
                triggers(expanded, from, 5),
                "{shortcut}"
            );
        }
    }

    #[test]
    fn rejected_schedules() {
        let fields = "expected 5 fields (minute hour day-of-month month day-of-week)";
        for (text, message) in [
            (
                "* * *",
                format!("cron_schedule \"* * *\": {fields}, found 3"),
            ),
            (
                "* * * *",
                format!("cron_schedule \"* * * *\": {fields}, found 4"),
            ),
            (
                "0 * * * * *",
                format!(
                    "cron_schedule \"0 * * * * *\": {fields}, found 6 \
                     (a seconds or years field is not supported)"
                ),
            ),
            (
                "0 0 12 * * ? 2026",
                format!(
                    "cron_schedule \"0 0 12 * * ? 2026\": {fields}, found 7 \
                     (a seconds or years field is not supported)"
                ),
            ),
            (
                "",
                format!(
                    "cron_schedule \"\": empty schedule: {fields} or a shortcut such as @daily"
                ),
            ),
            (
                "  ",
                format!(
                    "cron_schedule \"  \": empty schedule: {fields} or a shortcut such as @daily"
                ),
            ),
            (
                "@reboot",
                "cron_schedule \"@reboot\": @reboot is not supported: a cron job runs on a \
                 schedule, not when the scheduler starts"
                    .into(),
            ),
            (
                "@often",
                "cron_schedule \"@often\": unknown shortcut @often: expected one of @yearly, \
                 @annually, @monthly, @weekly, @daily, @midnight, @hourly"
                    .into(),
            ),
            (
                "61 * * * *",
                "cron_schedule \"61 * * * *\": minute 61 is out of range 0-59".into(),
            ),
            (
                "99999999999 * * * *",
                "cron_schedule \"99999999999 * * * *\": minute 99999999999 is out of range 0-59"
                    .into(),
            ),
            (
                "0 24 * * *",
                "cron_schedule \"0 24 * * *\": hour 24 is out of range 0-23".into(),
            ),
            (
                "0 0 0 * *",
                "cron_schedule \"0 0 0 * *\": day-of-month 0 is out of range 1-31".into(),
            ),
            (
                "0 0 * 13 *",
                "cron_schedule \"0 0 * 13 *\": month 13 is out of range 1-12".into(),
            ),
            (
                "0 0 * * 8",
                "cron_schedule \"0 0 * * 8\": day-of-week 8 is out of range 0-7".into(),
            ),
            (
                "5-1 * * * *",
                "cron_schedule \"5-1 * * * *\": minute range \"5-1\" runs backwards \
                 (a range may not wrap around)"
                    .into(),
            ),
            (
                "0 0 * * SAT-MON",
                "cron_schedule \"0 0 * * SAT-MON\": day-of-week range \"SAT-MON\" runs \
                 backwards (a range may not wrap around)"
                    .into(),
            ),
            (
                "*/0 * * * *",
                "cron_schedule \"*/0 * * * *\": minute step \"0\" in \"*/0\" must be a number \
                 from 1 to 60"
                    .into(),
            ),
            (
                "*/x * * * *",
                "cron_schedule \"*/x * * * *\": minute step \"x\" in \"*/x\" must be a number \
                 from 1 to 60"
                    .into(),
            ),
            (
                "1,,2 * * * *",
                "cron_schedule \"1,,2 * * * *\": minute \"1,,2\" has an empty list item".into(),
            ),
            (
                "*-5 * * * *",
                "cron_schedule \"*-5 * * * *\": minute \"*\" is not a number".into(),
            ),
            (
                "MON * * * *",
                "cron_schedule \"MON * * * *\": minute \"MON\" is not a number".into(),
            ),
            (
                "0 0 * MON *",
                "cron_schedule \"0 0 * MON *\": month \"MON\" is not a number or a name \
                 JAN-DEC"
                    .into(),
            ),
            (
                "0 0 * * FOO",
                "cron_schedule \"0 0 * * FOO\": day-of-week \"FOO\" is not a number or a name \
                 SUN-SAT"
                    .into(),
            ),
            (
                "0 0 L * *",
                "cron_schedule \"0 0 L * *\": day-of-month \"L\" is not a number \
                 (the extensions L, W, # and ? are not supported)"
                    .into(),
            ),
            (
                "0 0 15W * *",
                "cron_schedule \"0 0 15W * *\": day-of-month \"15W\" is not a number \
                 (the extensions L, W, # and ? are not supported)"
                    .into(),
            ),
            (
                "0 0 * * 5#3",
                "cron_schedule \"0 0 * * 5#3\": day-of-week \"5#3\" is not a number or a name \
                 SUN-SAT (the extensions L, W, # and ? are not supported)"
                    .into(),
            ),
            (
                "0 0 ? * MON",
                "cron_schedule \"0 0 ? * MON\": day-of-month \"?\" is not a number \
                 (the extensions L, W, # and ? are not supported)"
                    .into(),
            ),
            (
                "-1 * * * *",
                "cron_schedule \"-1 * * * *\": minute \"\" is not a number".into(),
            ),
            (
                "0 0 30 2 *",
                "cron_schedule \"0 0 30 2 *\": never fires: day-of-month 30 does not occur in \
                 month 2"
                    .into(),
            ),
            (
                "0 0 31 APR,JUN,SEP,NOV *",
                "cron_schedule \"0 0 31 APR,JUN,SEP,NOV *\": never fires: day-of-month 31 \
                 does not occur in month APR,JUN,SEP,NOV"
                    .into(),
            ),
        ] {
            let error = CronSchedule::parse(text).expect_err(text);
            assert_eq!(error.to_string(), message);
            assert!(!message.contains('\n'));
            assert_eq!(error.text(), text);
        }
        // Never-matching days are fine once a weekday may match instead.
        schedule("0 0 30 2 MON");
    }

    #[test]
    fn text_display_and_serde() {
        let s = schedule("*/5  9-17 * * MON-FRI");
        assert_eq!(s.as_str(), "*/5  9-17 * * MON-FRI");
        assert_eq!(s.to_string(), "*/5  9-17 * * MON-FRI");
        assert_eq!(
            "*/5  9-17 * * MON-FRI".parse::<CronSchedule>(),
            Ok(s.clone())
        );
        assert_ne!(schedule("@daily"), schedule("0 0 * * *"));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"*/5  9-17 * * MON-FRI\"");
        assert_eq!(serde_json::from_str::<CronSchedule>(&json).unwrap(), s);
        let bad = serde_json::from_str::<CronSchedule>("\"61 * * * *\"").unwrap_err();
        assert!(
            bad.to_string().contains("minute 61 is out of range 0-59"),
            "{bad}"
        );
        assert_eq!(format!("{s:?}"), "CronSchedule(\"*/5  9-17 * * MON-FRI\")");

        let spec = CronSpec {
            schedule: schedule("@hourly"),
            collision_policy: CollisionPolicy::CancelNew,
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(
            json,
            r#"{"schedule":"@hourly","collision_policy":"CANCEL_NEW"}"#
        );
        assert_eq!(serde_json::from_str::<CronSpec>(&json).unwrap(), spec);
        assert_eq!(
            serde_json::from_str::<CronSpec>(r#"{"schedule":"@hourly"}"#).unwrap(),
            CronSpec {
                schedule: schedule("@hourly"),
                collision_policy: CollisionPolicy::KillExisting,
            }
        );
        assert!(serde_json::from_str::<CronSpec>(r#"{"schedule":"@reboot"}"#).is_err());
    }

    #[test]
    fn next_after_is_strictly_after() {
        let gmt = CronTimezone::default();
        let hourly = schedule("0 * * * *");
        let ten = utc(2026, 5, 1, 10, 0, 0);
        let eleven = utc(2026, 5, 1, 11, 0, 0);
        assert_eq!(hourly.next_after(ten - 1, &gmt), Some(ten));
        assert_eq!(hourly.next_after(ten, &gmt), Some(eleven));
        assert_eq!(hourly.next_after(ten + 1, &gmt), Some(eleven));
        assert_eq!(hourly.next_after(ten + 999, &gmt), Some(eleven));
        assert_eq!(hourly.next_after(eleven - 1, &gmt), Some(eleven));

        let minutely = schedule("* * * * *");
        let mut at = ten - 1;
        for minute in 0..=120u64 {
            at = minutely.next_after(at, &gmt).unwrap();
            assert_eq!(at, ten + minute * 60_000);
        }
        assert_eq!(minutely.next_after(ten + 59_999, &gmt), Some(ten + 60_000));
        assert_eq!(minutely.next_after(0, &gmt), Some(60_000));

        // Year boundary and month lengths.
        let yearly = schedule("@yearly");
        assert_eq!(
            yearly.next_after(utc(2026, 12, 31, 23, 59, 59), &gmt),
            Some(utc(2027, 1, 1, 0, 0, 0))
        );
        assert_eq!(
            schedule("0 0 31 * *").next_after(utc(2026, 4, 1, 0, 0, 0), &gmt),
            Some(utc(2026, 5, 31, 0, 0, 0))
        );
    }

    #[test]
    fn next_after_without_a_next_time() {
        let gmt = CronTimezone::default();
        assert_eq!(schedule("* * * * *").next_after(u64::MAX, &gmt), None);
        assert_eq!(
            schedule("* * * * *").next_after(i64::MAX as u64, &gmt),
            None
        );
        // Croner stops searching at the year 5000.
        assert_eq!(
            schedule("@yearly").next_after(utc(5000, 6, 1, 0, 0, 0), &gmt),
            None
        );
    }

    #[test]
    fn timezones() {
        assert_eq!(CronTimezone::default().as_str(), "GMT");
        assert_eq!(CronTimezone::default(), tz(CRON_TIMEZONE_DEFAULT));
        assert_eq!(tz("UTC").as_str(), "UTC");
        assert_eq!(tz("America/New_York").to_string(), "America/New_York");
        assert_eq!(
            "Asia/Kolkata".parse::<CronTimezone>().unwrap().as_str(),
            "Asia/Kolkata"
        );
        for bad in ["Mars/Olympus", "", "america/new_york", "EST5EDT "] {
            let error = CronTimezone::parse(bad).expect_err(bad);
            assert_eq!(
                error.to_string(),
                format!(
                    "cron_timezone {bad:?}: unknown time zone: expected GMT, UTC or an IANA \
                     name such as America/New_York"
                )
            );
        }
        let json = serde_json::to_string(&tz("Europe/Paris")).unwrap();
        assert_eq!(json, "\"Europe/Paris\"");
        assert_eq!(
            serde_json::from_str::<CronTimezone>(&json).unwrap(),
            tz("Europe/Paris")
        );
        assert!(serde_json::from_str::<CronTimezone>("\"Nowhere\"").is_err());

        let nine = schedule("0 9 * * *");
        let winter = utc(2026, 1, 15, 0, 0, 0);
        let summer = utc(2026, 7, 15, 0, 0, 0);
        let at = |zone: &str, from| nine.next_after(from, &tz(zone));
        assert_eq!(at("GMT", winter), Some(utc(2026, 1, 15, 9, 0, 0)));
        assert_eq!(at("UTC", summer), Some(utc(2026, 7, 15, 9, 0, 0)));
        assert_eq!(
            at("America/New_York", winter),
            Some(utc(2026, 1, 15, 14, 0, 0))
        );
        assert_eq!(
            at("America/New_York", summer),
            Some(utc(2026, 7, 15, 13, 0, 0))
        );
        assert_eq!(at("Asia/Kolkata", winter), Some(utc(2026, 1, 15, 3, 30, 0)));
        // 09:00 in Tokyo on the 15th is 00:00 GMT, not after; next is the 16th.
        assert_eq!(at("Asia/Tokyo", winter), Some(utc(2026, 1, 16, 0, 0, 0)));
    }

    #[test]
    fn spring_forward_gap() {
        // America/New_York, 2026-03-08: 02:00 EST (07:00Z) becomes 03:00 EDT.
        let ny = tz("America/New_York");
        let half_past_two = schedule("30 2 * * *");
        let midnight = utc(2026, 3, 8, 5, 0, 0);
        let gap_end = utc(2026, 3, 8, 7, 0, 0);
        // The 02:30 that does not exist fires once, at 03:00 EDT.
        assert_eq!(half_past_two.next_after(midnight, &ny), Some(gap_end));
        assert_eq!(half_past_two.next_after(gap_end - 1, &ny), Some(gap_end));
        // Then 02:30 EDT the next day.
        assert_eq!(
            half_past_two.next_after(gap_end, &ny),
            Some(utc(2026, 3, 9, 6, 30, 0))
        );
        // Every quarter hour: 01:45 EST, then 03:00 EDT, 03:15 EDT.
        let quarters = schedule("*/15 * * * *");
        let quarter_to_two = utc(2026, 3, 8, 6, 45, 0);
        assert_eq!(quarters.next_after(quarter_to_two, &ny), Some(gap_end));
        assert_eq!(
            quarters.next_after(gap_end, &ny),
            Some(utc(2026, 3, 8, 7, 15, 0))
        );
    }

    #[test]
    fn fall_back_repeat() {
        // America/New_York, 2026-11-01: 02:00 EDT (06:00Z) becomes 01:00 EST; 01:00-01:59
        // happens at 05:00Z-05:59Z (EDT) and again at 06:00Z-06:59Z (EST).
        let ny = tz("America/New_York");
        let half_past_one = schedule("30 1 * * *");
        let first = utc(2026, 11, 1, 5, 30, 0);
        let next_day = utc(2026, 11, 2, 6, 30, 0);
        assert_eq!(
            half_past_one.next_after(utc(2026, 11, 1, 4, 0, 0), &ny),
            Some(first)
        );
        // Fires once: not again at 01:30 EST (06:30Z), whether asked after the first pass or
        // from inside the repeat.
        assert_eq!(half_past_one.next_after(first, &ny), Some(next_day));
        assert_eq!(
            half_past_one.next_after(utc(2026, 11, 1, 6, 10, 0), &ny),
            Some(next_day)
        );
        assert_eq!(
            half_past_one.next_after(utc(2026, 11, 1, 6, 30, 0), &ny),
            Some(next_day)
        );
        // Every minute: the repeated hour does not fire; 01:59 EDT, then 02:00 EST.
        let minutely = schedule("* * * * *");
        let last_daylight = utc(2026, 11, 1, 5, 59, 0);
        let two_standard = utc(2026, 11, 1, 7, 0, 0);
        assert_eq!(minutely.next_after(last_daylight, &ny), Some(two_standard));
        assert_eq!(
            minutely.next_after(utc(2026, 11, 1, 6, 20, 0), &ny),
            Some(two_standard)
        );
    }

    #[test]
    fn collision_policies() {
        assert_eq!(CollisionPolicy::default(), CollisionPolicy::KillExisting);
        for policy in [CollisionPolicy::KillExisting, CollisionPolicy::CancelNew] {
            assert_eq!(CollisionPolicy::parse(policy.as_str()), Ok(policy));
            assert_eq!(policy.to_string().parse::<CollisionPolicy>(), Ok(policy));
            let json = serde_json::to_string(&policy).unwrap();
            assert_eq!(json, format!("\"{}\"", policy.as_str()));
            assert_eq!(
                serde_json::from_str::<CollisionPolicy>(&json).unwrap(),
                policy
            );
        }
        assert_eq!(
            CollisionPolicy::parse("RUN_OVERLAP")
                .unwrap_err()
                .to_string(),
            "cron_collision_policy \"RUN_OVERLAP\": RUN_OVERLAP is deprecated in Aurora and \
             not supported: use CANCEL_NEW or KILL_EXISTING"
        );
        for bad in ["kill_existing", "", "KILL"] {
            assert_eq!(
                CollisionPolicy::parse(bad).unwrap_err().to_string(),
                format!("cron_collision_policy {bad:?}: expected KILL_EXISTING or CANCEL_NEW")
            );
        }
        assert!(serde_json::from_str::<CollisionPolicy>("\"RUN_OVERLAP\"").is_err());
    }

    #[test]
    fn backoff_doubles_and_saturates() {
        let (initial, max) = (
            CRON_START_INITIAL_BACKOFF_MS_DEFAULT,
            CRON_START_MAX_BACKOFF_MS_DEFAULT,
        );
        let waits: Vec<u64> = (0..6).map(|a| start_backoff_ms(initial, max, a)).collect();
        assert_eq!(waits, [5_000, 10_000, 20_000, 40_000, 60_000, 60_000]);
        for attempt in [31, 32, 63, 64, 65, 1000, u32::MAX] {
            assert_eq!(start_backoff_ms(initial, max, attempt), max);
            assert_eq!(start_backoff_ms(u64::MAX, u64::MAX, attempt), u64::MAX);
            assert_eq!(start_backoff_ms(0, max, attempt), 0);
        }
        assert_eq!(start_backoff_ms(1, u64::MAX, 63), 1 << 63);
        assert_eq!(start_backoff_ms(3, u64::MAX, 63), u64::MAX);
        // An initial wait above the cap is held to the cap.
        assert_eq!(start_backoff_ms(90_000, max, 0), max);
    }

    #[test]
    fn missed_triggers_are_not_run_on_start() {
        let gmt = CronTimezone::default();
        let daily = schedule("@daily");
        // Down from before Monday's midnight until Wednesday 12:00: the next run is Thursday.
        let started = utc(2026, 1, 7, 12, 0, 0);
        assert_eq!(
            first_trigger_on_start(&daily, started, &gmt),
            Some(utc(2026, 1, 8, 0, 0, 0))
        );
        // Restarted exactly at a trigger (it may have run before the crash): not again.
        let midnight = utc(2026, 1, 8, 0, 0, 0);
        assert_eq!(
            first_trigger_on_start(&daily, midnight, &gmt),
            Some(utc(2026, 1, 9, 0, 0, 0))
        );
        assert_eq!(
            first_trigger_on_start(&daily, midnight, &gmt),
            daily.next_after(midnight, &gmt)
        );
    }

    const PROPERTY_SCHEDULES: [&str; 8] = [
        "* * * * *",
        "*/15 * * * *",
        "30 2 * * *",
        "30 1 * * *",
        "0 9-17 * * MON-FRI",
        "0 0 13 * FRI",
        "@monthly",
        "0 0 29 2 *",
    ];
    const PROPERTY_ZONES: [&str; 4] = [
        "GMT",
        "America/New_York",
        "Australia/Lord_Howe",
        "Asia/Kolkata",
    ];

    proptest! {
        /// Each next trigger is strictly after its input, nothing fires in between (asking
        /// just before it gives it again), the one after it is later still, and a later
        /// input never gives an earlier trigger.
        #[test]
        fn next_after_is_strictly_increasing(
            text in prop::sample::select(PROPERTY_SCHEDULES.to_vec()),
            zone in prop::sample::select(PROPERTY_ZONES.to_vec()),
            // 2000-01-01 .. 2100-01-01.
            at in 946_684_800_000u64..4_102_444_800_000,
            later in 0u64..10_000_000_000,
        ) {
            let s = schedule(text);
            let zone = tz(zone);
            let next = s.next_after(at, &zone).expect("a next trigger");
            prop_assert!(next > at);
            prop_assert_eq!(s.next_after(next - 1, &zone), Some(next));
            let after = s.next_after(next, &zone).expect("a next trigger");
            prop_assert!(after > next);
            let from_later = s.next_after(at + later, &zone).expect("a next trigger");
            prop_assert!(from_later >= next);
            prop_assert!(from_later > at + later);
        }

        /// The same, within hours of a daylight-saving change (where a uniform time rarely
        /// falls): New York's of 2026, and Lord Howe's half-hour ones.
        #[test]
        fn next_after_is_strictly_increasing_across_dst(
            text in prop::sample::select(PROPERTY_SCHEDULES.to_vec()),
            (zone, change) in prop::sample::select(vec![
                ("America/New_York", utc(2026, 3, 8, 7, 0, 0)),
                ("America/New_York", utc(2026, 11, 1, 6, 0, 0)),
                ("Australia/Lord_Howe", utc(2026, 4, 4, 15, 0, 0)),
                ("Australia/Lord_Howe", utc(2026, 10, 3, 15, 30, 0)),
            ]),
            offset in 0u64..8 * 3_600_000,
            later in 0u64..3 * 3_600_000,
        ) {
            let s = schedule(text);
            let zone = tz(zone);
            let at = change - 4 * 3_600_000 + offset;
            let next = s.next_after(at, &zone).expect("a next trigger");
            prop_assert!(next > at);
            prop_assert_eq!(s.next_after(next - 1, &zone), Some(next));
            let after = s.next_after(next, &zone).expect("a next trigger");
            prop_assert!(after > next);
            let from_later = s.next_after(at + later, &zone).expect("a next trigger");
            prop_assert!(from_later >= next);
            prop_assert!(from_later > at + later);
        }
    }
}
