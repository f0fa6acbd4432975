//! SLA arithmetic: which SLA a job's tasks are held to while maintenance removes them, whether
//! one more removal keeps it, and how long to wait before asking again.
//!
//! Aurora's model (`SlaManager`): a task is *active* when it has been RUNNING for at least the
//! policy's duration; a count policy needs at least `count` active instances left after the
//! removal, a percentage policy at least that share of the job's instances. A coordinator policy
//! is not arithmetic: the scheduler asks the job's coordinator, one request at a time.
//!
//! Everything here is pure: time arrives as microseconds (`*_us`), and the retry backoff has no
//! jitter (the caller may add some from its seeded source).

use std::fmt::Write as _;

use crate::model::{TaskConfig, Tier};
use crate::service::SlaPolicy;

const US_PER_SEC: u64 = 1_000_000;
/// A percentage in thousandths of a percent: 100 % is this many.
const PERCENT_MILLIS_WHOLE: u128 = 100_000;

/// The scheduler's SLA knobs, named after Aurora's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlaSettings {
    /// Jobs with fewer instances than this are not held to a count or percentage SLA (Aurora's
    /// `-min_required_instances_for_sla_check`): one of three instances is already a third of
    /// the job, so a percentage of it means little.
    pub min_required_instances: u32,
    /// The longest SLA window enforced, in seconds (Aurora's `-max_sla_duration_secs`); a
    /// policy asking for longer is held to this, so one job cannot stall maintenance for days.
    pub max_sla_duration_secs: u64,
}

impl Default for SlaSettings {
    /// Aurora's defaults: 20 instances, 2 hours.
    fn default() -> SlaSettings {
        SlaSettings {
            min_required_instances: 20,
            max_sla_duration_secs: 2 * 3600,
        }
    }
}

/// The SLA a job's tasks are actually held to, once the tier, the job's size and the
/// scheduler's cap are taken into account (see [`job_sla`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobSla<'a> {
    /// No SLA: tasks may be removed at once.
    None,
    /// At least `count` other instances active (RUNNING for `duration_us`) after a removal.
    Count { count: u32, duration_us: u64 },
    /// At least `percentage_millis` thousandths of a percent of the job's instances active
    /// (RUNNING for `duration_us`) after a removal.
    Percentage {
        percentage_millis: u32,
        duration_us: u64,
    },
    /// Ask the coordinator at `url`; the answer's JSON boolean `status_key` says whether the
    /// task may go.
    Coordinator { url: &'a str, status_key: &'a str },
}

/// The SLA a job's tasks are held to: its own policy; else, for the preferred tier,
/// [`SlaPolicy::DEFAULT`] (95% per 30 min); else none. Count/percentage (own or default) apply
/// only to jobs of at least `min_required_instances` instances, and never to preemptible or
/// revocable tiers (Aurora skips SLA for them); their duration is capped at
/// `max_sla_duration_secs`. A coordinator policy always applies.
///
/// A count above `instances` is kept as it is (Aurora accepts such a policy): the job then never
/// lets maintenance take a task, which is what its owner asked for.
pub fn job_sla<'a>(config: &'a TaskConfig, instances: u32, settings: &SlaSettings) -> JobSla<'a> {
    let default_policy;
    let policy = match &config.sla_policy {
        Some(SlaPolicy::Coordinator {
            coordinator_url,
            status_key,
        }) => {
            return JobSla::Coordinator {
                url: coordinator_url,
                status_key,
            }
        }
        Some(policy) => policy,
        None if config.tier == Tier::Preferred => {
            default_policy = SlaPolicy::DEFAULT;
            &default_policy
        }
        None => return JobSla::None,
    };
    let exempt_tier = matches!(config.tier, Tier::Preemptible | Tier::Revocable);
    if exempt_tier || instances < settings.min_required_instances {
        return JobSla::None;
    }
    let window_us = |duration_secs: u64| {
        duration_secs
            .min(settings.max_sla_duration_secs)
            .saturating_mul(US_PER_SEC)
    };
    match *policy {
        SlaPolicy::Count {
            count,
            duration_secs,
        } => JobSla::Count {
            count,
            duration_us: window_us(duration_secs),
        },
        SlaPolicy::Percentage {
            percentage_millis,
            duration_secs,
        } => JobSla::Percentage {
            percentage_millis,
            duration_us: window_us(duration_secs),
        },
        SlaPolicy::Coordinator { .. } => unreachable!("returned above"),
    }
}

/// Whether maintenance may remove a task now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlaVerdict {
    Allowed,
    /// Not now; `reason` is one line for operators, saying what the SLA needs and what it has.
    Denied {
        reason: String,
    },
}

/// Whether removing instance `candidate` keeps a count/percentage SLA: the instances other than
/// the candidate that are active (their current task RUNNING since at least `duration` before
/// `now_us`; `running_since_us[i]` is instance i's current task's RUNNING start, None when it is
/// not RUNNING) must be >= count, or >= percentage of `running_since_us.len()` (exact integer
/// arithmetic on millis). `JobSla::None` is always Allowed; `Coordinator` panics (the caller asks
/// the coordinator instead). The reason is one line for operators, e.g.
/// "SLA count 2 per 1800s: 1 other instance active".
///
/// A task RUNNING since after `now_us` (a clock that moved back across a leader change) is not
/// active: nothing says it has run at all. `candidate` must index `running_since_us`.
pub fn may_remove(
    sla: &JobSla<'_>,
    running_since_us: &[Option<u64>],
    candidate: usize,
    now_us: u64,
) -> SlaVerdict {
    let duration_us = match *sla {
        JobSla::None => return SlaVerdict::Allowed,
        JobSla::Coordinator { url, .. } => {
            panic!("a coordinator SLA is the coordinator's to answer ({url}), not arithmetic")
        }
        JobSla::Count { duration_us, .. } | JobSla::Percentage { duration_us, .. } => duration_us,
    };
    let total = running_since_us.len();
    assert!(
        candidate < total,
        "candidate instance {candidate} of a job of {total}"
    );
    let others_active = running_since_us
        .iter()
        .enumerate()
        .filter(|&(instance, since)| {
            instance != candidate && is_active(*since, duration_us, now_us)
        })
        .count();
    let window = duration_text(duration_us);
    match *sla {
        JobSla::Count { count, .. } => {
            if others_active as u64 >= u64::from(count) {
                SlaVerdict::Allowed
            } else {
                SlaVerdict::Denied {
                    reason: format!(
                        "SLA count {count} per {window}: {}",
                        instances_text(others_active, "active")
                    ),
                }
            }
        }
        JobSla::Percentage {
            percentage_millis, ..
        } => {
            // others / total >= p / 100_000, cross-multiplied; u128 holds any product.
            let kept = others_active as u128 * PERCENT_MILLIS_WHOLE;
            if kept >= u128::from(percentage_millis) * total as u128 {
                SlaVerdict::Allowed
            } else {
                let kept_millis = kept / total as u128;
                SlaVerdict::Denied {
                    reason: format!(
                        "SLA {}% per {window}: {} ({}%)",
                        percent_text(u64::from(percentage_millis)),
                        instances_text(others_active, &format!("of {total} active")),
                        percent_text(u64::try_from(kept_millis).expect("at most 100_000")),
                    ),
                }
            }
        }
        JobSla::None | JobSla::Coordinator { .. } => unreachable!("returned above"),
    }
}

/// Truncated binary backoff: `min_us * 2^attempt`, at most `max_us` (and never below min_us), no
/// overflow.
///
/// Used between a denied removal and the next try (Aurora's `-sla_aware_kill_retry_min_delay`
/// and `_max_delay`: 1 and 5 minutes). Aurora adds random jitter; core draws no randomness.
/// When `max_us < min_us` every attempt waits `min_us`.
pub fn backoff_us(attempt: u32, min_us: u64, max_us: u64) -> u64 {
    let factor = 1u64.checked_shl(attempt).unwrap_or(u64::MAX);
    min_us.saturating_mul(factor).min(max_us).max(min_us)
}

/// Whether an instance RUNNING since `since_us` has been so for `duration_us` at `now_us`.
fn is_active(since_us: Option<u64>, duration_us: u64, now_us: u64) -> bool {
    since_us
        .and_then(|since_us| now_us.checked_sub(since_us))
        .is_some_and(|ran_us| ran_us >= duration_us)
}

/// "1 other instance active", "3 other instances of 20 active".
fn instances_text(others: usize, rest: &str) -> String {
    let plural = if others == 1 { "" } else { "s" };
    format!("{others} other instance{plural} {rest}")
}

/// A window as the job file writes it (`1800s`), or in µs when it is not whole seconds.
fn duration_text(duration_us: u64) -> String {
    // Not `is_multiple_of`, which is newer than the workspace's rust-version.
    match (duration_us / US_PER_SEC, duration_us % US_PER_SEC) {
        (secs, 0) => format!("{secs}s"),
        _ => format!("{duration_us}us"),
    }
}

/// Thousandths of a percent as the job file writes the percentage: `99900` is `99.9`, `120000`
/// is `120`, `1` is `0.001`.
pub(crate) fn percent_text(millis: u64) -> String {
    let mut text = (millis / 1000).to_string();
    let fraction = millis % 1000;
    if fraction != 0 {
        let digits = format!("{fraction:03}");
        let _ = write!(text, ".{}", digits.trim_end_matches('0'));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobKey, Resources};
    use proptest::prelude::*;

    const SEC: u64 = US_PER_SEC;
    /// A "now" late enough that every test's RUNNING starts are in the past.
    const NOW: u64 = 1_000_000 * SEC;

    fn config(tier: Tier, sla_policy: Option<SlaPolicy>) -> TaskConfig {
        TaskConfig {
            job: JobKey::new("www", "prod", "hello").unwrap(),
            command: "true".into(),
            resources: Resources {
                cpu_millis: 100,
                ram_mib: 16,
                disk_mib: 16,
                ports: 0,
            },
            port_names: vec![],
            constraints: vec![],
            tier,
            priority: 0,
            production: tier == Tier::Preferred,
            is_service: true,
            max_task_failures: 1,
            finalization_wait_secs: 30,
            health_check: None,
            http_lifecycle: None,
            sla_policy,
            partition_policy: None,
        }
    }

    fn count(count: u32, duration_secs: u64) -> Option<SlaPolicy> {
        Some(SlaPolicy::Count {
            count,
            duration_secs,
        })
    }

    fn percentage(percentage_millis: u32, duration_secs: u64) -> Option<SlaPolicy> {
        Some(SlaPolicy::Percentage {
            percentage_millis,
            duration_secs,
        })
    }

    fn coordinator() -> Option<SlaPolicy> {
        Some(SlaPolicy::Coordinator {
            coordinator_url: "http://coord:8080/sla".into(),
            status_key: "drain".into(),
        })
    }

    #[test]
    fn settings_default_to_aurora_flags() {
        let settings = SlaSettings::default();
        assert_eq!(settings.min_required_instances, 20);
        assert_eq!(settings.max_sla_duration_secs, 7200);
    }

    #[test]
    fn job_sla_table() {
        use Tier::*;
        let settings = SlaSettings::default();
        let coord = JobSla::Coordinator {
            url: "http://coord:8080/sla",
            status_key: "drain",
        };
        let default_sla = JobSla::Percentage {
            percentage_millis: 95_000,
            duration_us: 1800 * SEC,
        };
        for (tier, policy, instances, expected) in [
            // A preferred job without a policy gets Aurora's default, once it is big enough.
            (Preferred, None, 20, default_sla),
            (Preferred, None, u32::MAX, default_sla),
            (Preferred, None, 19, JobSla::None),
            // Its own policy replaces the default.
            (
                Preferred,
                count(2, 1800),
                20,
                JobSla::Count {
                    count: 2,
                    duration_us: 1800 * SEC,
                },
            ),
            (
                Preferred,
                percentage(99_900, 3600),
                10_000,
                JobSla::Percentage {
                    percentage_millis: 99_900,
                    duration_us: 3600 * SEC,
                },
            ),
            // A count above the instances is kept: the job never lets a task go.
            (
                Preferred,
                count(50, 60),
                20,
                JobSla::Count {
                    count: 50,
                    duration_us: 60 * SEC,
                },
            ),
            // The window is capped at the scheduler's maximum.
            (
                Preferred,
                count(2, 30 * 24 * 3600),
                20,
                JobSla::Count {
                    count: 2,
                    duration_us: 7200 * SEC,
                },
            ),
            (Preferred, count(2, 1800), 19, JobSla::None),
            // Preemptible and revocable jobs are never held to counts or percentages.
            (Preemptible, None, 100, JobSla::None),
            (Revocable, None, 100, JobSla::None),
            (Preemptible, count(2, 1800), 100, JobSla::None),
            (Revocable, percentage(50_000, 60), 100, JobSla::None),
            // A coordinator always applies: tier and size do not matter.
            (Preferred, coordinator(), 1, coord),
            (Preemptible, coordinator(), 0, coord),
            (Revocable, coordinator(), 100, coord),
        ] {
            let config = config(tier, policy.clone());
            assert_eq!(
                job_sla(&config, instances, &settings),
                expected,
                "{tier:?} {policy:?} x{instances}"
            );
        }
    }

    #[test]
    fn job_sla_follows_the_settings() {
        let config = config(Tier::Preferred, count(1, 100));
        let small = SlaSettings {
            min_required_instances: 0,
            max_sla_duration_secs: 10,
        };
        assert_eq!(
            job_sla(&config, 0, &small),
            JobSla::Count {
                count: 1,
                duration_us: 10 * SEC
            }
        );
        let huge = SlaSettings {
            min_required_instances: 1,
            max_sla_duration_secs: u64::MAX,
        };
        let config = config_with_duration(u64::MAX);
        assert_eq!(
            job_sla(&config, 1, &huge),
            JobSla::Count {
                count: 1,
                duration_us: u64::MAX
            },
            "the window saturates rather than overflowing"
        );
    }

    fn config_with_duration(duration_secs: u64) -> TaskConfig {
        config(Tier::Preferred, count(1, duration_secs))
    }

    /// `n` instances RUNNING for an hour.
    fn running_for_an_hour(n: usize) -> Vec<Option<u64>> {
        vec![Some(NOW - 3600 * SEC); n]
    }

    #[track_caller]
    fn check(
        sla: JobSla<'_>,
        running: &[Option<u64>],
        candidate: usize,
        expected: Result<(), &str>,
    ) {
        let verdict = may_remove(&sla, running, candidate, NOW);
        match (verdict, expected) {
            (SlaVerdict::Allowed, Ok(())) => {}
            (SlaVerdict::Denied { reason }, Err(expected)) => {
                assert!(!reason.contains('\n'), "not one line: {reason}");
                assert_eq!(reason, expected);
            }
            (verdict, expected) => panic!("got {verdict:?}, want {expected:?}"),
        }
    }

    #[test]
    fn count_needs_that_many_other_active_instances() {
        let sla = JobSla::Count {
            count: 2,
            duration_us: 1800 * SEC,
        };
        let mut running = running_for_an_hour(3);
        check(sla, &running, 0, Ok(()));
        // The candidate's own state does not count for or against it.
        running[0] = None;
        check(sla, &running, 0, Ok(()));
        running[1] = None;
        check(
            sla,
            &running,
            0,
            Err("SLA count 2 per 1800s: 1 other instance active"),
        );
        check(
            sla,
            &running,
            2,
            Err("SLA count 2 per 1800s: 0 other instances active"),
        );
        running[2] = None;
        check(
            sla,
            &running,
            2,
            Err("SLA count 2 per 1800s: 0 other instances active"),
        );
    }

    #[test]
    fn a_count_above_the_instances_never_allows() {
        let sla = JobSla::Count {
            count: 3,
            duration_us: SEC,
        };
        check(
            sla,
            &running_for_an_hour(3),
            1,
            Err("SLA count 3 per 1s: 2 other instances active"),
        );
    }

    #[test]
    fn active_means_running_for_the_whole_window() {
        let sla = JobSla::Count {
            count: 1,
            duration_us: 1800 * SEC,
        };
        let denied = Err("SLA count 1 per 1800s: 0 other instances active");
        // Exactly the window is enough; a microsecond less is not.
        check(sla, &[None, Some(NOW - 1800 * SEC)], 0, Ok(()));
        check(sla, &[None, Some(NOW - 1800 * SEC + 1)], 0, denied);
        // Not RUNNING, or RUNNING since after now (the clock moved back): not active.
        check(sla, &[None, None], 0, denied);
        check(sla, &[None, Some(NOW + 1)], 0, denied);
        // A zero window: RUNNING at all is enough, even since this very instant.
        let zero = JobSla::Count {
            count: 1,
            duration_us: 0,
        };
        check(zero, &[None, Some(NOW)], 0, Ok(()));
        check(
            zero,
            &[None, Some(NOW + 1)],
            0,
            Err("SLA count 1 per 0s: 0 other instances active"),
        );
    }

    #[test]
    fn percentage_is_exact() {
        let sla = JobSla::Percentage {
            percentage_millis: 95_000,
            duration_us: 1800 * SEC,
        };
        let mut running = running_for_an_hour(20);
        // 19 of 20 left is exactly 95 %.
        check(sla, &running, 7, Ok(()));
        running[7] = None;
        check(
            sla,
            &running,
            8,
            Err("SLA 95% per 1800s: 18 other instances of 20 active (90%)"),
        );
        // Removing the inactive instance again leaves 19: allowed.
        check(sla, &running, 7, Ok(()));

        // 99.9 % of 10 000 instances: 9 990 must stay.
        let sla = JobSla::Percentage {
            percentage_millis: 99_900,
            duration_us: 3600 * SEC,
        };
        let mut running = running_for_an_hour(10_000);
        for down in running.iter_mut().take(9) {
            *down = None;
        }
        check(sla, &running, 9, Ok(()));
        running[9] = None;
        check(
            sla,
            &running,
            10,
            Err("SLA 99.9% per 3600s: 9989 other instances of 10000 active (99.89%)"),
        );

        // A third is not representable in thousandths: the shown share is rounded down.
        let sla = JobSla::Percentage {
            percentage_millis: 100_000,
            duration_us: SEC / 2,
        };
        check(
            sla,
            &[Some(0), Some(0), Some(0)],
            0,
            Err("SLA 100% per 500000us: 2 other instances of 3 active (66.666%)"),
        );
        // 100 % of a job of one: removing its only instance leaves 0 of 1.
        check(
            sla,
            &[Some(0)],
            0,
            Err("SLA 100% per 500000us: 0 other instances of 1 active (0%)"),
        );
    }

    #[test]
    fn no_sla_always_allows() {
        assert_eq!(may_remove(&JobSla::None, &[], 0, 0), SlaVerdict::Allowed);
        assert_eq!(
            may_remove(&JobSla::None, &[None, None], 1, NOW),
            SlaVerdict::Allowed
        );
    }

    #[test]
    #[should_panic(expected = "coordinator")]
    fn coordinator_is_not_arithmetic() {
        let sla = JobSla::Coordinator {
            url: "http://c",
            status_key: "drain",
        };
        may_remove(&sla, &[None], 0, NOW);
    }

    #[test]
    #[should_panic(expected = "candidate instance 2 of a job of 2")]
    fn candidate_must_be_an_instance() {
        let sla = JobSla::Count {
            count: 0,
            duration_us: 0,
        };
        may_remove(&sla, &[None, None], 2, NOW);
    }

    #[test]
    fn backoff_doubles_within_bounds() {
        let (min, max) = (60 * SEC, 300 * SEC);
        for (attempt, expected) in [
            (0, 60 * SEC),
            (1, 120 * SEC),
            (2, 240 * SEC),
            (3, 300 * SEC),
            (63, 300 * SEC),
            (64, 300 * SEC),
            (u32::MAX, 300 * SEC),
        ] {
            assert_eq!(backoff_us(attempt, min, max), expected, "attempt {attempt}");
        }
        // Saturates rather than overflowing.
        assert_eq!(backoff_us(2, u64::MAX / 2, u64::MAX), u64::MAX);
        assert_eq!(backoff_us(u32::MAX, 1, u64::MAX), u64::MAX);
        // A maximum below the minimum: the minimum wins.
        assert_eq!(backoff_us(0, 10, 5), 10);
        assert_eq!(backoff_us(9, 10, 5), 10);
        assert_eq!(backoff_us(9, 0, 5), 0);
    }

    #[test]
    fn percent_text_writes_the_job_files_number() {
        for (millis, text) in [
            (0, "0"),
            (1, "0.001"),
            (10, "0.01"),
            (95_000, "95"),
            (99_900, "99.9"),
            (99_990, "99.99"),
            (100_000, "100"),
            (100_001, "100.001"),
            (u64::from(u32::MAX), "4294967.295"),
        ] {
            assert_eq!(percent_text(millis), text);
        }
    }

    /// The job's instances: each RUNNING since some time around `now`, or not RUNNING.
    fn arb_job() -> impl Strategy<Value = (Vec<Option<u64>>, usize, u64, u64)> {
        let now = 1_000u64;
        (1usize..40)
            .prop_flat_map(move |n| {
                (
                    proptest::collection::vec(proptest::option::of(0..=now + 50), n),
                    0..n,
                    prop_oneof![0..=now + 100, Just(u64::MAX)],
                )
            })
            .prop_map(move |(running, candidate, duration)| (running, candidate, duration, now))
    }

    /// The active instances other than the candidate, counted the long way round: all active
    /// ones, less the candidate when it is one of them.
    fn others_active(running: &[Option<u64>], candidate: usize, duration: u64, now: u64) -> u64 {
        let active = |since: &Option<u64>| since.is_some_and(|s| s <= now && now - s >= duration);
        let all = running.iter().filter(|s| active(s)).count() as u64;
        all - u64::from(active(&running[candidate]))
    }

    proptest! {
        #[test]
        fn count_allows_exactly_when_enough_others_stay(
            (running, candidate, duration, now) in arb_job(),
            count in 0u32..45,
        ) {
            let sla = JobSla::Count { count, duration_us: duration };
            let allowed = may_remove(&sla, &running, candidate, now) == SlaVerdict::Allowed;
            let others = others_active(&running, candidate, duration, now);
            prop_assert_eq!(allowed, others >= u64::from(count), "{} others", others);
        }

        #[test]
        fn percentage_allows_exactly_when_enough_others_stay(
            (running, candidate, duration, now) in arb_job(),
            percentage_millis in prop_oneof![0u32..=100_000, Just(100_000), Just(1)],
        ) {
            let sla = JobSla::Percentage { percentage_millis, duration_us: duration };
            let allowed = may_remove(&sla, &running, candidate, now) == SlaVerdict::Allowed;
            let others = others_active(&running, candidate, duration, now);
            // The fewest instances that make up the percentage, rounded up.
            let needed = (u64::from(percentage_millis) * running.len() as u64).div_ceil(100_000);
            prop_assert_eq!(allowed, others >= needed, "{} others, {} needed", others, needed);
        }

        #[test]
        fn waiting_never_turns_an_allowed_removal_into_a_denied_one(
            (running, candidate, duration, now) in arb_job(),
            count in 0u32..45,
            later in 0u64..2_000,
        ) {
            let sla = JobSla::Count { count, duration_us: duration };
            if may_remove(&sla, &running, candidate, now) == SlaVerdict::Allowed {
                prop_assert_eq!(
                    may_remove(&sla, &running, candidate, now + later),
                    SlaVerdict::Allowed
                );
            }
        }

        #[test]
        fn backoff_is_monotone_and_bounded(
            attempt in prop_oneof![0u32..80, any::<u32>()],
            min_us in prop_oneof![0u64..1_000_000_000, any::<u64>()],
            max_us in prop_oneof![0u64..1_000_000_000_000, any::<u64>()],
        ) {
            let delay = backoff_us(attempt, min_us, max_us);
            prop_assert!(delay <= backoff_us(attempt.saturating_add(1), min_us, max_us));
            prop_assert!(delay >= min_us);
            prop_assert!(delay <= max_us.max(min_us));
            if attempt == 0 {
                prop_assert_eq!(delay, min_us);
            }
        }
    }
}
