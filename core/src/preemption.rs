//! Preemption: which running tasks on one agent to kill so that a pending production task fits
//! (Aurora's `PreemptionVictimFilter`), when a pending task may start looking, and how long a
//! found slot is held for it.
//!
//! The shard runs the search per agent over the agents it owns and keeps the first slot it
//! finds; this module only answers "on this agent, whom?". Pure and deterministic: equal inputs
//! give equal answers, ties broken by task id, and time arrives as `*_ms` arguments.

use crate::model::{Resources, TaskId};
use crate::placement::AgentId;

/// Aurora's `-preemption_delay` default (3 minutes): how long a task must have been PENDING
/// before it may preempt, so that ordinary churn frees room before anything is killed.
pub const PREEMPTION_DELAY_MS_DEFAULT: u64 = 3 * 60 * 1000;

/// Aurora's `-preemption_slot_hold_time` default (5 minutes): how long a found slot is kept for
/// its task before it is discarded and searched again.
pub const PREEMPTION_SLOT_HOLD_MS_DEFAULT: u64 = 5 * 60 * 1000;

/// The pending task looking for room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preemptor<'a> {
    /// Its job's role: same-role tasks of lower priority may make room for it.
    pub role: &'a str,
    /// Its priority, compared only against tasks of its own role.
    pub priority: i32,
    /// Only production tasks preempt (Aurora).
    pub production: bool,
    /// What it needs on the agent.
    pub demand: Resources,
}

/// An active task on the agent, a possible victim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The task, named in the answer.
    pub task_id: TaskId,
    /// Its job's role.
    pub role: &'a str,
    /// Its priority.
    pub priority: i32,
    /// Whether it is production work (never preempted for another role).
    pub production: bool,
    /// Whether its tier makes it preemptible (see
    /// [`TierConfig::is_preemptible`](crate::tier::TierConfig::is_preemptible)).
    pub preemptible: bool,
    /// What killing it gives back.
    pub resources: Resources,
}

/// Whether `preemptor` may kill `candidate`: only a production task preempts, and then a task
/// that is preemptible, or of the same role and lower priority. A production task of another
/// role is never a victim, whatever its tier says: one role's production work never pays for
/// another's.
pub fn is_victim(preemptor: &Preemptor, candidate: &Candidate) -> bool {
    if !preemptor.production {
        return false;
    }
    let same_role = candidate.role == preemptor.role;
    if candidate.production && !same_role {
        return false;
    }
    candidate.preemptible || (same_role && candidate.priority < preemptor.priority)
}

/// Resource totals, widened so the sum of many victims never saturates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Totals([u64; 4]);

impl Totals {
    fn of(resources: &Resources) -> Totals {
        Totals([
            u64::from(resources.cpu_millis),
            u64::from(resources.ram_mib),
            u64::from(resources.disk_mib),
            u64::from(resources.ports),
        ])
    }

    fn plus(self, other: Totals) -> Totals {
        Totals(std::array::from_fn(|i| self.0[i] + other.0[i]))
    }

    fn minus(self, other: Totals) -> Totals {
        Totals(std::array::from_fn(|i| self.0[i] - other.0[i]))
    }

    fn covers(self, need: Totals) -> bool {
        self.0.iter().zip(need.0).all(|(have, need)| *have >= need)
    }

    /// Whether adding `more` raises a dimension that is still short of `need`.
    fn helps(self, more: Totals, need: Totals) -> bool {
        (0..4).any(|i| self.0[i] < need.0[i] && more.0[i] > 0)
    }
}

/// The order victims are preferred in: non-production first, then lower priority, then smaller
/// (cpu, then ram, disk, ports), then lower task id so equal inputs give equal answers.
fn cost_key(candidate: &Candidate) -> (bool, i32, [u64; 4], TaskId) {
    (
        candidate.production,
        candidate.priority,
        Totals::of(&candidate.resources).0,
        candidate.task_id,
    )
}

/// The tasks to preempt on one agent so that `preemptor.demand` fits in `free` plus what they
/// release, or `None` when the task already fits in `free` (never preempt for a task that fits)
/// or when no set of [eligible](is_victim) victims makes room.
///
/// The search is Aurora's greedy one: eligible candidates in [cost order](cost_key) are added
/// while the demand does not fit (skipping any that release nothing still short), then, from
/// the costliest down, every victim whose removal still leaves the demand fitting is dropped.
/// The answer is therefore minimal: sparing any one victim would leave the task short. It lists
/// the victims cheapest first.
pub fn find_victims(
    preemptor: &Preemptor,
    free: &Resources,
    candidates: &[Candidate],
) -> Option<Vec<TaskId>> {
    let need = Totals::of(&preemptor.demand);
    let mut available = Totals::of(free);
    if available.covers(need) || !preemptor.production {
        return None;
    }
    let mut eligible: Vec<&Candidate> = candidates
        .iter()
        .filter(|candidate| is_victim(preemptor, candidate))
        .collect();
    eligible.sort_by_key(|candidate| cost_key(candidate));
    let mut victims: Vec<&Candidate> = Vec::new();
    for candidate in eligible {
        if available.covers(need) {
            break;
        }
        let released = Totals::of(&candidate.resources);
        if available.helps(released, need) {
            available = available.plus(released);
            victims.push(candidate);
        }
    }
    if !available.covers(need) {
        return None;
    }
    for index in (0..victims.len()).rev() {
        let without = available.minus(Totals::of(&victims[index].resources));
        if without.covers(need) {
            available = without;
            victims.remove(index);
        }
    }
    Some(victims.iter().map(|victim| victim.task_id).collect())
}

/// Whether a task PENDING since `pending_since_ms` may preempt at `now_ms`: it has waited at
/// least `preemption_delay_ms`. A clock that moved back counts as no wait.
pub fn eligible_for_preemption(
    pending_since_ms: u64,
    now_ms: u64,
    preemption_delay_ms: u64,
) -> bool {
    now_ms.saturating_sub(pending_since_ms) >= preemption_delay_ms
}

/// A slot found by preemption, held for its task while the victims die, so that the room they
/// free goes to the task that paid for it and not to whatever is placed next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotHold {
    /// The agent whose resources are held.
    pub agent: AgentId,
    /// The pending task they are held for.
    pub task: TaskId,
    /// When the hold lapses and the slot is searched for again.
    pub expires_ms: u64,
}

impl SlotHold {
    /// A hold made at `now_ms` lasting `hold_ms` (saturating at the end of time).
    pub fn new(agent: AgentId, task: TaskId, now_ms: u64, hold_ms: u64) -> SlotHold {
        SlotHold {
            agent,
            task,
            expires_ms: now_ms.saturating_add(hold_ms),
        }
    }

    /// Whether the hold has lapsed at `now_ms`; the expiry instant itself counts as lapsed.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn res(cpu_millis: u32, ram_mib: u32) -> Resources {
        Resources {
            cpu_millis,
            ram_mib,
            disk_mib: 0,
            ports: 0,
        }
    }

    const PROD_WWW: Preemptor<'static> = Preemptor {
        role: "www",
        priority: 5,
        production: true,
        demand: Resources {
            cpu_millis: 2000,
            ram_mib: 2048,
            disk_mib: 0,
            ports: 0,
        },
    };

    /// A candidate: id, role, priority, production (preemptible = !production, as the default
    /// tiers make it), resources.
    fn task(
        id: u64,
        role: &'static str,
        priority: i32,
        production: bool,
        resources: Resources,
    ) -> Candidate<'static> {
        Candidate {
            task_id: TaskId(id),
            role,
            priority,
            production,
            preemptible: !production,
            resources,
        }
    }

    #[track_caller]
    fn check(
        preemptor: &Preemptor,
        free: Resources,
        candidates: &[Candidate],
        expected: Option<&[u64]>,
    ) {
        let got = find_victims(preemptor, &free, candidates);
        let want = expected.map(|ids| ids.iter().map(|&id| TaskId(id)).collect::<Vec<_>>());
        assert_eq!(got, want, "{preemptor:?} free {free:?}");
    }

    #[test]
    fn find_victims_table() {
        let half = res(1000, 1024);
        let whole = res(2000, 2048);
        // Fits already: never preempt.
        check(&PROD_WWW, whole, &[task(1, "db", 0, false, whole)], None);
        // One non-production task of another role makes room.
        check(
            &PROD_WWW,
            res(0, 0),
            &[task(1, "db", 0, false, whole)],
            Some(&[1]),
        );
        // Free plus one victim is enough; the smallest sufficient one is not preferred over
        // cheaper-by-order ones, but nothing unneeded is kept.
        check(
            &PROD_WWW,
            half,
            &[
                task(1, "db", 0, false, half),
                task(2, "db", 0, false, whole),
            ],
            Some(&[1]),
        );
        // Non-production before production (same role), whatever the priorities.
        check(
            &PROD_WWW,
            res(0, 0),
            &[
                task(1, "www", 0, true, whole),
                task(2, "db", 9, false, whole),
            ],
            Some(&[2]),
        );
        // Lower priority first.
        check(
            &PROD_WWW,
            res(0, 0),
            &[
                task(1, "db", 3, false, whole),
                task(2, "db", 1, false, whole),
            ],
            Some(&[2]),
        );
        // Smaller first at equal priority, then the pruning drops what is not needed.
        check(
            &PROD_WWW,
            res(0, 0),
            &[
                task(1, "db", 0, false, whole),
                task(2, "db", 0, false, half),
                task(3, "db", 0, false, half),
            ],
            Some(&[2, 3]),
        );
        // Ties by task id.
        check(
            &PROD_WWW,
            res(0, 0),
            &[
                task(9, "db", 0, false, whole),
                task(4, "db", 0, false, whole),
            ],
            Some(&[4]),
        );
        // Greedy picks a small one first, then a big one makes it redundant: it is dropped.
        check(
            &PROD_WWW,
            res(0, 0),
            &[
                task(1, "db", 0, false, res(100, 100)),
                task(2, "db", 1, false, whole),
            ],
            Some(&[2]),
        );
        // A candidate that releases nothing still short is not taken.
        check(
            &PROD_WWW,
            res(2000, 0),
            &[
                task(1, "db", 0, false, res(4000, 0)),
                task(2, "db", 1, false, res(0, 2048)),
            ],
            Some(&[2]),
        );
        // Same role, lower priority production work is a victim; equal or higher is not.
        check(
            &PROD_WWW,
            res(0, 0),
            &[task(1, "www", 4, true, whole)],
            Some(&[1]),
        );
        check(
            &PROD_WWW,
            res(0, 0),
            &[task(1, "www", 5, true, whole)],
            None,
        );
        check(
            &PROD_WWW,
            res(0, 0),
            &[task(1, "www", 6, true, whole)],
            None,
        );
        // Production work of another role is never a victim, even at lower priority.
        check(
            &PROD_WWW,
            res(0, 0),
            &[task(1, "db", -100, true, whole)],
            None,
        );
        // Not enough even with every victim.
        check(
            &PROD_WWW,
            res(0, 0),
            &[
                task(1, "db", 0, false, half),
                task(2, "db", 0, false, res(500, 2048)),
                task(3, "db", 0, true, whole),
            ],
            None,
        );
        // A non-production task never preempts.
        let adhoc = Preemptor {
            production: false,
            ..PROD_WWW
        };
        check(&adhoc, res(0, 0), &[task(1, "db", 0, false, whole)], None);
        check(&adhoc, res(0, 0), &[task(1, "www", 0, true, whole)], None);
        // No candidates.
        check(&PROD_WWW, res(0, 0), &[], None);
        // Ports count too.
        let with_port = Preemptor {
            demand: Resources {
                ports: 1,
                ..res(0, 0)
            },
            ..PROD_WWW
        };
        check(
            &with_port,
            res(5000, 5000),
            &[
                task(1, "db", 0, false, res(1, 1)),
                task(
                    2,
                    "db",
                    1,
                    false,
                    Resources {
                        ports: 2,
                        ..res(0, 0)
                    },
                ),
            ],
            Some(&[2]),
        );
    }

    #[test]
    fn victim_eligibility_table() {
        let whole = res(1, 1);
        for (candidate, expected) in [
            (task(1, "db", 0, false, whole), true),
            (task(1, "db", 100, false, whole), true),
            (task(1, "www", 100, false, whole), true),
            (task(1, "www", 4, true, whole), true),
            (task(1, "www", 5, true, whole), false),
            (task(1, "db", 4, true, whole), false),
            // A production task in a preemptible tier: its own role may take it, others not.
            (
                Candidate {
                    preemptible: true,
                    ..task(1, "www", 9, true, whole)
                },
                true,
            ),
            (
                Candidate {
                    preemptible: true,
                    ..task(1, "db", 0, true, whole)
                },
                false,
            ),
        ] {
            assert_eq!(is_victim(&PROD_WWW, &candidate), expected, "{candidate:?}");
        }
    }

    #[test]
    fn preemption_delay_table() {
        for (since, now, delay, expected) in [
            (1_000, 1_000, 0, true),
            (1_000, 1_000, 1, false),
            (
                1_000,
                1_000 + PREEMPTION_DELAY_MS_DEFAULT - 1,
                PREEMPTION_DELAY_MS_DEFAULT,
                false,
            ),
            (
                1_000,
                1_000 + PREEMPTION_DELAY_MS_DEFAULT,
                PREEMPTION_DELAY_MS_DEFAULT,
                true,
            ),
            (5_000, 1_000, 10, false),
            (0, u64::MAX, u64::MAX, true),
        ] {
            assert_eq!(
                eligible_for_preemption(since, now, delay),
                expected,
                "{since} {now} {delay}"
            );
        }
    }

    #[test]
    fn slot_hold_expires_at_its_deadline() {
        let hold = SlotHold::new(
            AgentId(3),
            TaskId(7),
            1_000,
            PREEMPTION_SLOT_HOLD_MS_DEFAULT,
        );
        assert_eq!(hold.expires_ms, 1_000 + PREEMPTION_SLOT_HOLD_MS_DEFAULT);
        for (now, expected) in [
            (1_000, false),
            (hold.expires_ms - 1, false),
            (hold.expires_ms, true),
            (u64::MAX, true),
        ] {
            assert_eq!(hold.expired(now), expected, "{now}");
        }
        assert_eq!(
            SlotHold::new(AgentId(0), TaskId(0), u64::MAX - 1, 10).expires_ms,
            u64::MAX
        );
    }

    const ROLES: [&str; 2] = ["www", "db"];

    fn any_resources() -> impl Strategy<Value = Resources> {
        (0..4000u32, 0..4000u32, 0..100u32, 0..3u16).prop_map(
            |(cpu_millis, ram_mib, disk_mib, ports)| Resources {
                cpu_millis,
                ram_mib,
                disk_mib,
                ports,
            },
        )
    }

    fn any_candidates() -> impl Strategy<Value = Vec<Candidate<'static>>> {
        prop::collection::vec(
            (
                0..2usize,
                -2..3i32,
                any::<bool>(),
                any::<bool>(),
                any_resources(),
            ),
            0..10,
        )
        .prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(
                    |(i, (role, priority, production, preemptible, resources))| Candidate {
                        task_id: TaskId(i as u64 * 7 % 11),
                        role: ROLES[role],
                        priority,
                        production,
                        preemptible,
                        resources,
                    },
                )
                .collect()
        })
    }

    fn fits(free: &Resources, victims: &[&Candidate], demand: &Resources) -> bool {
        let released = victims.iter().fold(Totals::of(free), |sum, v| {
            sum.plus(Totals::of(&v.resources))
        });
        released.covers(Totals::of(demand))
    }

    proptest! {
        #[test]
        fn victims_are_eligible_sufficient_and_minimal(
            production in any::<bool>(),
            priority in -2..3i32,
            demand in any_resources(),
            free in any_resources(),
            candidates in any_candidates(),
        ) {
            let preemptor = Preemptor { role: "www", priority, production, demand };
            let result = find_victims(&preemptor, &free, &candidates);
            if Resources::contains(&free, &demand) {
                prop_assert_eq!(result, None);
                return Ok(());
            }
            let eligible: Vec<&Candidate> =
                candidates.iter().filter(|c| is_victim(&preemptor, c)).collect();
            match result {
                None => {
                    // Only when even every eligible victim together would not make room.
                    prop_assert!(!production || !fits(&free, &eligible, &demand));
                }
                Some(ids) => {
                    prop_assert!(production);
                    prop_assert!(!ids.is_empty());
                    let victims: Vec<&Candidate> = ids
                        .iter()
                        .map(|id| *eligible.iter().find(|c| c.task_id == *id).expect("eligible"))
                        .collect();
                    prop_assert!(fits(&free, &victims, &demand));
                    for spared in 0..victims.len() {
                        let mut fewer = victims.clone();
                        fewer.remove(spared);
                        prop_assert!(!fits(&free, &fewer, &demand), "victim {} is not needed", spared);
                    }
                }
            }
            // Deterministic: the same inputs in another order give the same answer.
            let mut reversed = candidates.clone();
            reversed.reverse();
            let distinct = {
                let mut ids: Vec<TaskId> = candidates.iter().map(|c| c.task_id).collect();
                ids.sort();
                ids.dedup();
                ids.len() == candidates.len()
            };
            if distinct {
                prop_assert_eq!(find_victims(&preemptor, &free, &reversed), find_victims(&preemptor, &free, &candidates));
            }
        }
    }
}
