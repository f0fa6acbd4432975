//! What a task's arrival in a state causes: whether an ended task is replaced, how long a
//! replacement is held back, how long an unplaceable task waits, when a task stuck in a
//! transient state is given up as LOST, and what a lost agent connection does to its tasks
//! (LOST, or PARTITIONED until the job's partition policy gives up on them).
//!
//! These rules follow Apache Aurora (`TaskStateMachine`'s side effects, `RescheduleCalculator`,
//! `TaskGroups` and `TaskTimeout`). They are pure functions of their inputs, so the shard can call
//! them while applying a status update and the simulation can replay them exactly: time arrives as
//! `*_ms` arguments (`*_us` for partition deadlines, as the shard's clock), and Aurora's random
//! jitter on backoffs is left out on purpose.
//!
//! Where Borealis departs from Aurora it says so at the rule, with the reason.

use serde::{Deserialize, Serialize};

use crate::service::PartitionPolicy;
use crate::state::TaskState;

/// The scheduler's lifecycle knobs, all in milliseconds, named after Aurora's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LifecyclePolicy {
    /// How long a PENDING task waits after its first failed placement attempt.
    pub initial_schedule_penalty_ms: u64,
    /// The cap on the placement backoff, so an unplaceable task is still retried now and then.
    pub max_schedule_penalty_ms: u64,
    /// A run shorter than this is a flap: the task is crash-looping and is throttled.
    pub flapping_task_threshold_ms: u64,
    /// How long the replacement of a first flap stays THROTTLED.
    pub initial_flapping_task_delay_ms: u64,
    /// The cap on the THROTTLED delay, however long the task has been flapping.
    pub max_flapping_task_delay_ms: u64,
    /// How long a task may sit in a [transient state](TRANSIENT_STATES) before it is LOST.
    pub transient_task_state_timeout_ms: u64,
}

impl Default for LifecyclePolicy {
    /// Aurora's defaults: 1 s, 1 min, 5 min, 30 s, 5 min, 5 min.
    fn default() -> Self {
        const SECOND_MS: u64 = 1_000;
        const MINUTE_MS: u64 = 60 * SECOND_MS;
        LifecyclePolicy {
            initial_schedule_penalty_ms: SECOND_MS,
            max_schedule_penalty_ms: MINUTE_MS,
            flapping_task_threshold_ms: 5 * MINUTE_MS,
            initial_flapping_task_delay_ms: 30 * SECOND_MS,
            max_flapping_task_delay_ms: 5 * MINUTE_MS,
            transient_task_state_timeout_ms: 5 * MINUTE_MS,
        }
    }
}

/// Whether an ended task gets a replacement, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reschedule {
    /// The instance stays ended.
    No,
    /// A replacement goes straight to PENDING.
    Now,
    /// A replacement waits in THROTTLED for `delay_ms`, then becomes PENDING. `delay_ms` is never
    /// zero: a zero delay is [`Reschedule::Now`], so the shard never arms a timer for nothing.
    After {
        /// How long the replacement stays THROTTLED.
        delay_ms: u64,
    },
}

impl Reschedule {
    /// The state the replacement moves to out of INIT, or `None` when there is no replacement.
    pub fn replacement_state(self) -> Option<TaskState> {
        match self {
            Reschedule::No => None,
            Reschedule::Now => Some(TaskState::Pending),
            Reschedule::After { .. } => Some(TaskState::Throttled),
        }
    }
}

/// Whether someone outside the task ended it on purpose, which a task remembers for the rest of
/// its life because a later state (PARTITIONED, say) hides how it got there.
///
/// The order matters: a user's kill outranks an operator's interruption.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Interruption {
    /// Nothing outside the task has acted on it.
    #[default]
    None,
    /// The scheduler or an operator is replacing it: it has been RESTARTING, PREEMPTING or
    /// DRAINING. Its end is not the task's fault, so it is neither a failure nor a flap.
    Operator,
    /// A user killed it: it has been KILLING. Its end is final.
    UserKill,
}

impl Interruption {
    /// The interruption after the task enters `state`, for the shard to store on every
    /// transition.
    pub fn after(self, state: TaskState) -> Interruption {
        match state {
            TaskState::Killing => Interruption::UserKill,
            TaskState::Restarting | TaskState::Preempting | TaskState::Draining => {
                self.max(Interruption::Operator)
            }
            _ => self,
        }
    }
}

/// Everything the rules need to know about a task that has just reached a terminal state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskEnd {
    /// The state the task left; `previous_state.can_transition_to(final_state)` must hold.
    pub previous_state: TaskState,
    /// The terminal state it reached.
    pub final_state: TaskState,
    /// What acted on the task during its life, before this end. `previous_state` is folded in
    /// by [`on_terminal`], so a caller that does not track it still gets the direct cases right.
    pub interruption: Interruption,
    /// A service is replaced however it ends, except by a user's kill.
    pub is_service: bool,
    /// The job's failure budget per instance; -1 means unlimited. 0 and 1 both mean one run, as
    /// in Aurora; values below -1 are rejected by job validation and here also mean one run.
    pub max_task_failures: i32,
    /// Failures of this instance counted before this end (carried over from its ancestors).
    pub prior_failures: u32,
    /// How long the task had been RUNNING when it ended, counted from its latest entry into
    /// RUNNING; `None` when it never ran, which counts as a run of zero.
    pub ran_for_ms: Option<u64>,
    /// How many of this instance's immediately preceding runs flapped in a row.
    pub prior_consecutive_flaps: u32,
}

/// The decision for an ended task, with the counters its replacement inherits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TerminalOutcome {
    /// Whether, and when, the instance is replaced.
    pub reschedule: Reschedule,
    /// The instance's failure count including this end.
    pub failures: u32,
    /// Consecutive flaps including this end; 0 when this run did not flap, which is what resets
    /// the flapping penalty after one stable run.
    pub consecutive_flaps: u32,
}

/// Whether this end spends one of the instance's failures: a FAILED reached on the task's own,
/// from ASSIGNED, STARTING, RUNNING or PARTITIONED.
///
/// A task that fails while being restarted, preempted, drained or killed was going away anyway,
/// so Aurora does not hold that against the job's failure budget, and neither do we.
pub fn counts_as_failure(previous_state: TaskState, final_state: TaskState) -> bool {
    final_state == TaskState::Failed
        && matches!(
            previous_state,
            TaskState::Assigned | TaskState::Starting | TaskState::Running | TaskState::Partitioned
        )
}

/// Whether this run flapped: it ended after running less than the flapping threshold, on its own.
///
/// A task interrupted by a user or an operator did not crash, so it is never a flap. Aurora counts
/// RESTARTING, DRAINING and KILLING as interruptions but not PREEMPTING; we count PREEMPTING too,
/// because a preempted task lost its place to a more important one, which says nothing about it.
pub fn is_flap(policy: &LifecyclePolicy, end: &TaskEnd) -> bool {
    let interruption = end.interruption.after(end.previous_state);
    interruption == Interruption::None
        && end.ran_for_ms.unwrap_or(0) < policy.flapping_task_threshold_ms
}

/// Decides what follows a task's arrival in a terminal state.
///
/// Aurora's rules, in order:
/// - a task a user killed (it was ever KILLING) is never replaced;
/// - a task ending while RESTARTING, PREEMPTING or DRAINING is always replaced, service or not,
///   since the replacement is the point of those states;
/// - otherwise LOST and KILLED (killed by the agent, not by a user) are replaced;
/// - FINISHED is replaced for a service only;
/// - FAILED is replaced for a service, and for an ad-hoc job while its failures stay below
///   `max_task_failures`.
///
/// A replacement of a run that [flapped](is_flap) waits in THROTTLED for
/// [`flapping_delay_ms`]; any other replacement is PENDING at once.
///
/// One departure: Aurora does not replace a service that reaches FINISHED from PARTITIONED; we do,
/// because a service that ends must come back however its agent reported the end.
pub fn on_terminal(policy: &LifecyclePolicy, end: &TaskEnd) -> TerminalOutcome {
    debug_assert!(end.final_state.is_terminal(), "{end:?}");
    debug_assert!(
        end.previous_state.can_transition_to(end.final_state),
        "{end:?}"
    );
    let interruption = end.interruption.after(end.previous_state);
    let failed_on_its_own = counts_as_failure(end.previous_state, end.final_state);
    let failures = end
        .prior_failures
        .saturating_add(u32::from(failed_on_its_own));
    let flapped = is_flap(policy, end);
    let consecutive_flaps = if flapped {
        end.prior_consecutive_flaps.saturating_add(1)
    } else {
        0
    };

    let replace = match (end.previous_state, end.final_state) {
        _ if interruption == Interruption::UserKill => false,
        (_, final_state) if !final_state.is_terminal() => false,
        (TaskState::Restarting | TaskState::Preempting | TaskState::Draining, _) => true,
        (
            TaskState::Assigned | TaskState::Starting | TaskState::Running | TaskState::Partitioned,
            final_state,
        ) => match final_state {
            TaskState::Lost | TaskState::Killed => true,
            TaskState::Finished => end.is_service,
            TaskState::Failed => end.is_service || within_failure_budget(end, failures),
            _ => false,
        },
        // No other state reaches a terminal state; the debug assertion above catches the caller.
        _ => false,
    };

    let reschedule = if !replace {
        Reschedule::No
    } else if flapped {
        match flapping_delay_ms(policy, consecutive_flaps) {
            0 => Reschedule::Now,
            delay_ms => Reschedule::After { delay_ms },
        }
    } else {
        Reschedule::Now
    };
    TerminalOutcome {
        reschedule,
        failures,
        consecutive_flaps,
    }
}

/// Whether an ad-hoc instance that has now failed `failures` times may run again.
fn within_failure_budget(end: &TaskEnd, failures: u32) -> bool {
    const UNLIMITED: i32 = -1;
    end.max_task_failures == UNLIMITED || i64::from(failures) < i64::from(end.max_task_failures)
}

/// How long the replacement of a task that has flapped `consecutive_flaps` times in a row stays
/// THROTTLED: 0 for no flap, then the initial delay doubling per flap, capped at the maximum.
pub fn flapping_delay_ms(policy: &LifecyclePolicy, consecutive_flaps: u32) -> u64 {
    match consecutive_flaps {
        0 => 0,
        flaps => truncated_binary_backoff_ms(
            policy.initial_flapping_task_delay_ms,
            policy.max_flapping_task_delay_ms,
            flaps - 1,
        ),
    }
}

/// How long a PENDING task waits before its next placement attempt after `failed_attempts`
/// attempts found no offer: 0 before any failure, then the initial penalty doubling per failure,
/// capped at the maximum so that a task that cannot fit today is still tried every minute.
pub fn schedule_penalty_ms(policy: &LifecyclePolicy, failed_attempts: u32) -> u64 {
    match failed_attempts {
        0 => 0,
        attempts => truncated_binary_backoff_ms(
            policy.initial_schedule_penalty_ms,
            policy.max_schedule_penalty_ms,
            attempts - 1,
        ),
    }
}

/// `initial_ms * 2^doublings`, capped at `max_ms`, saturating rather than overflowing.
///
/// Aurora's `TruncatedBinaryBackoff` adds up to 100% random jitter to each step; we leave it out,
/// since core draws no randomness, and the shard may add jitter from its seeded source.
fn truncated_binary_backoff_ms(initial_ms: u64, max_ms: u64, doublings: u32) -> u64 {
    let factor = 1u64.checked_shl(doublings).unwrap_or(u64::MAX);
    initial_ms.saturating_mul(factor).min(max_ms)
}

/// The states a task should pass through quickly, each waiting on an agent's answer; a task that
/// stays in one longer than [`LifecyclePolicy::transient_task_state_timeout_ms`] is LOST.
///
/// Aurora's `TaskTimeout` leaves STARTING out (a sandbox may take long to fetch); Borealis's
/// agent reports RUNNING as soon as the command is spawned, so a long STARTING means a stuck agent.
/// PARTITIONED is not here: how long a partition is waited out is the job's partition policy.
pub const TRANSIENT_STATES: [TaskState; 6] = [
    TaskState::Assigned,
    TaskState::Starting,
    TaskState::Killing,
    TaskState::Restarting,
    TaskState::Preempting,
    TaskState::Draining,
];

/// Whether `state` is one of the [`TRANSIENT_STATES`].
pub fn is_transient(state: TaskState) -> bool {
    TRANSIENT_STATES.contains(&state)
}

/// When a task that entered `state` at `entered_ms` times out, so the shard can arm one timer;
/// `None` for a state that never times out.
pub fn transient_deadline_ms(
    policy: &LifecyclePolicy,
    state: TaskState,
    entered_ms: u64,
) -> Option<u64> {
    is_transient(state).then(|| entered_ms.saturating_add(policy.transient_task_state_timeout_ms))
}

/// Whether a task that entered `state` at `entered_ms` has, at `now_ms`, been there too long and
/// must become LOST.
///
/// The deadline itself counts as timed out, as Aurora's timer fires at it. A `now_ms` before
/// `entered_ms` (a clock that moved back across a leader change) is not a timeout.
pub fn transient_timed_out(
    policy: &LifecyclePolicy,
    state: TaskState,
    entered_ms: u64,
    now_ms: u64,
) -> bool {
    transient_deadline_ms(policy, state, entered_ms)
        .is_some_and(|deadline_ms| now_ms >= deadline_ms)
}

/// The state a task in `current` moves to when its agent reports `reported`; `None` when the
/// report changes nothing (stale, duplicate, or an edge the state machine does not have).
///
/// The agent knows only STARTING, RUNNING and how the process ended; the scheduler knows why it
/// is ending. So:
/// - STARTING is taken from ASSIGNED, RUNNING from ASSIGNED or STARTING; a late STARTING or
///   RUNNING after that (or while the task is being killed) changes nothing;
/// - any end (FINISHED, FAILED, KILLED, LOST) of a task the scheduler is killing (KILLING,
///   PREEMPTING, DRAINING, RESTARTING) is KILLED: the kill worked, however the process exited;
/// - any other end is taken as reported.
///
/// A PARTITIONED task whose agent is back takes whatever the agent reports: STARTING or RUNNING
/// (it kept running through the partition), or how it ended, LOST included (the agent does not
/// know the task). The one exception is KILLED, for which the table has no edge out of
/// PARTITIONED: it becomes LOST, which [`on_terminal`] treats alike (replaced, unless a user
/// killed it), where ignoring the report would leave a task its agent says is gone PARTITIONED,
/// for ever under a policy that never reschedules.
///
/// Every answer is a legal edge of the state machine: a report that would need an edge the
/// table lacks (an end of a task already ended) changes nothing.
pub fn next_state_on_report(current: TaskState, reported: TaskState) -> Option<TaskState> {
    use TaskState::*;
    let killing = current.is_being_killed();
    let next = match reported {
        Starting if matches!(current, Assigned | Partitioned) => Starting,
        Running if matches!(current, Assigned | Starting | Partitioned) => Running,
        Finished | Failed | Killed | Lost if killing => Killed,
        Killed if current == Partitioned => Lost,
        Finished | Failed | Killed | Lost => reported,
        _ => return None,
    };
    current.can_transition_to(next).then_some(next)
}

/// What a task on an agent becomes when the agent's connection is lost: without partition
/// awareness LOST; with it, RUNNING becomes PARTITIONED and every other active state LOST (the
/// reference: tasks in transient states go straight to LOST). None for states not on an agent
/// (PENDING, THROTTLED, INIT, terminal).
///
/// A task already PARTITIONED stays so under partition awareness (None: its
/// [deadline](partition_deadline_us) stands); without it (the scheduler restarted without
/// `--partition-aware`) it is LOST, as every other task.
///
/// Aurora only partitions what runs: a task being started, killed, restarted, preempted or
/// drained is LOST at once, so that no one's action waits on a partition that may never heal.
pub fn on_agent_lost(state: TaskState, partition_aware: bool) -> Option<TaskState> {
    let next = match state {
        _ if !state.is_active() => return None,
        TaskState::Running if partition_aware => TaskState::Partitioned,
        TaskState::Partitioned if partition_aware => return None,
        _ => TaskState::Lost,
    };
    debug_assert!(state.can_transition_to(next), "{state} -> {next}");
    Some(next)
}

/// When a PARTITIONED task becomes LOST: `partitioned_at_us + delay` when the job's policy
/// reschedules (no policy: at once, i.e. `partitioned_at_us`), None when it never does (waits
/// for the agent).
///
/// The deadline saturates at `u64::MAX` rather than overflowing. At the deadline the task is
/// LOST, and [`on_terminal`] replaces it as any lost task.
pub fn partition_deadline_us(
    policy: Option<&PartitionPolicy>,
    partitioned_at_us: u64,
) -> Option<u64> {
    const US_PER_SEC: u64 = 1_000_000;
    match policy {
        None => Some(partitioned_at_us),
        Some(policy) if policy.reschedule => {
            Some(partitioned_at_us.saturating_add(policy.delay_secs.saturating_mul(US_PER_SEC)))
        }
        Some(_) => None,
    }
}

/// What the scheduler does with a task an agent reports on a connection other than the one the
/// task was placed through (the agent reconnected under a new number, or the scheduler
/// restarted), or at registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// The report belongs to the task as placed: apply it.
    Apply,
    /// Move the task to the reporting agent, then apply the report (`holds`: whether it still
    /// holds resources there, false for a task that ended while the scheduler was down).
    Adopt { holds: bool },
    /// Not this task's agent: refuse the report, and kill the task there when it is running.
    Refuse { kill: bool },
}

/// The adoption rule. A report from the agent the task is on is applied. Otherwise only an
/// agent's (re-)registration may adopt: a task that was placed (or restored from the log and
/// awaiting its agent), is not terminal, and is reported running — or reported ended, when it was
/// restored awaiting adoption (its end while the scheduler was down is the truth: it must not be
/// marked LOST and run again) or is PARTITIONED (its end while its agent was away is the truth,
/// LOST included: the agent does not know it). Never a task the scheduler placed on (or
/// restored on) an agent of another name (`placed_elsewhere`): an agent's registration may
/// claim only its own tasks, or any agent could take over (and run twice) another's. Anything
/// else is refused, and a non-terminal report is killed on that agent, so no instance runs
/// twice.
pub fn adoption(
    same_agent: bool,
    adopting: bool,
    placed: bool,
    placed_elsewhere: bool,
    awaiting_adoption: bool,
    current: TaskState,
    reported: TaskState,
) -> Adoption {
    if same_agent {
        return Adoption::Apply;
    }
    let away = awaiting_adoption || current == TaskState::Partitioned;
    let ended_while_away = away && reported.is_terminal();
    let adoptable = adopting
        && !placed_elsewhere
        && (placed || awaiting_adoption)
        && !current.is_terminal()
        && (!reported.is_terminal() || ended_while_away);
    if adoptable {
        Adoption::Adopt {
            holds: !ended_while_away,
        }
    } else {
        Adoption::Refuse {
            kill: !reported.is_terminal(),
        }
    }
}

/// The [`Interruption`] to pass to [`on_terminal`] for a task that has just ended in
/// `final_state`, for a caller that remembers only whether a user killed it.
///
/// A user's kill is [`Interruption::UserKill`] (never replaced). A LOST task is
/// [`Interruption::Operator`]: losing its agent is not the task's fault, so it is neither a
/// failure nor a flap. Anything else is [`Interruption::None`] here; a task preempted, drained
/// or restarted (PREEMPTING, DRAINING or RESTARTING before KILLED) still counts as an operator
/// interruption, because [`on_terminal`] folds the previous state in with
/// [`Interruption::after`]. A caller that tracks the interruption on every transition (so it
/// survives a PARTITIONED in between) should pass that instead.
pub fn end_interruption(killed_by_user: bool, final_state: TaskState) -> Interruption {
    if killed_by_user {
        Interruption::UserKill
    } else if final_state == TaskState::Lost {
        Interruption::Operator
    } else {
        Interruption::None
    }
}

/// Where a task that stayed too long in a [transient state](TRANSIENT_STATES) goes: a task
/// being killed by a user is KILLED (the user asked for it to end, so it is not replaced as if it
/// vanished); any other is LOST, so it is replaced. For a state that is not transient (it never
/// times out, so the shard never asks) the answer is LOST.
pub fn transient_timeout_target(state: TaskState) -> TaskState {
    match state {
        TaskState::Killing => TaskState::Killed,
        _ => TaskState::Lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use TaskState::*;

    #[test]
    fn adoption_rule() {
        let check = |same, adopting, placed, awaiting, current, reported, expected| {
            assert_eq!(
                adoption(same, adopting, placed, false, awaiting, current, reported),
                expected,
                "same {same} adopting {adopting} placed {placed} awaiting {awaiting} \
                 {current} reported {reported}"
            );
        };
        // Another agent's registration claiming a task placed (or restored) on an agent of
        // another name: refused, and killed there while it runs, whatever its state.
        for (placed, awaiting) in [(true, false), (false, true)] {
            for current in [Assigned, Starting, Running, Partitioned] {
                for (reported, kill) in [(Running, true), (Starting, true), (Finished, false)] {
                    assert_eq!(
                        adoption(false, true, placed, true, awaiting, current, reported),
                        Adoption::Refuse { kill },
                        "{current} reported {reported} awaiting {awaiting}"
                    );
                }
            }
        }
        // The task's own agent: applied, whatever it says.
        check(true, false, true, false, Running, Finished, Adoption::Apply);
        // Re-registration adopts a placed, live task reported running.
        check(
            false,
            true,
            true,
            false,
            Running,
            Running,
            Adoption::Adopt { holds: true },
        );
        // A restored task that ended while the scheduler was down: adopted, holding nothing.
        check(
            false,
            true,
            false,
            true,
            Running,
            Finished,
            Adoption::Adopt { holds: false },
        );
        // A placed task reported ended by another agent: refused, nothing to kill.
        check(
            false,
            true,
            true,
            false,
            Running,
            Finished,
            Adoption::Refuse { kill: false },
        );
        // Not at registration (a stray status), or a PENDING task: refused and killed there.
        check(
            false,
            false,
            true,
            false,
            Running,
            Running,
            Adoption::Refuse { kill: true },
        );
        check(
            false,
            true,
            false,
            false,
            Pending,
            Running,
            Adoption::Refuse { kill: true },
        );
        // A PARTITIONED task's agent re-registers: running, it is adopted holding what it
        // held; ended (or unknown to the agent, LOST), its end is adopted, holding nothing.
        check(
            false,
            true,
            true,
            false,
            Partitioned,
            Running,
            Adoption::Adopt { holds: true },
        );
        check(
            false,
            true,
            true,
            false,
            Partitioned,
            Starting,
            Adoption::Adopt { holds: true },
        );
        for ended in [Finished, Failed, Killed, Lost] {
            check(
                false,
                true,
                true,
                false,
                Partitioned,
                ended,
                Adoption::Adopt { holds: false },
            );
        }
        // Its own agent's report is applied as any.
        check(
            true,
            false,
            true,
            false,
            Partitioned,
            Running,
            Adoption::Apply,
        );
        // Not at registration: a stray report about a partitioned task is refused.
        check(
            false,
            false,
            true,
            false,
            Partitioned,
            Running,
            Adoption::Refuse { kill: true },
        );
        check(
            false,
            false,
            true,
            false,
            Partitioned,
            Finished,
            Adoption::Refuse { kill: false },
        );
        // A task already ended here: a running report is killed.
        check(
            false,
            true,
            true,
            false,
            Killed,
            Running,
            Adoption::Refuse { kill: true },
        );
    }

    const MINUTE_MS: u64 = 60_000;

    /// A run long enough not to flap under the default policy.
    const STABLE_RUN_MS: u64 = 60 * MINUTE_MS;

    /// An ad-hoc task that ran stably, with failures to spare; each test changes what it is about.
    fn end(previous_state: TaskState, final_state: TaskState) -> TaskEnd {
        TaskEnd {
            previous_state,
            final_state,
            interruption: Interruption::None,
            is_service: false,
            max_task_failures: 3,
            prior_failures: 0,
            ran_for_ms: Some(STABLE_RUN_MS),
            prior_consecutive_flaps: 0,
        }
    }

    fn service(previous_state: TaskState, final_state: TaskState) -> TaskEnd {
        TaskEnd {
            is_service: true,
            ..end(previous_state, final_state)
        }
    }

    #[track_caller]
    fn check(end: TaskEnd, expected: Reschedule) {
        let outcome = on_terminal(&LifecyclePolicy::default(), &end);
        assert_eq!(outcome.reschedule, expected, "{end:?}");
    }

    /// The rescheduling spec for stable runs with failures to spare, written by hand: one row
    /// per previous state, columns FINISHED FAILED KILLED LOST, first for an ad-hoc job then for
    /// a service. `R` is rescheduled now, `.` is not, `-` is an illegal edge.
    const SPEC: &str = "
        previous      adhoc: FIN FAIL KLED LOST   service: FIN FAIL KLED LOST
        ASSIGNED             .   R    R    R               R   R    R    R
        STARTING             .   R    R    R               R   R    R    R
        RUNNING              .   R    R    R               R   R    R    R
        PARTITIONED          .   R    -    R               R   R    -    R
        KILLING              .   .    .    .               .   .    .    .
        RESTARTING           R   R    R    R               R   R    R    R
        PREEMPTING           R   R    R    R               R   R    R    R
        DRAINING             R   R    R    R               R   R    R    R
    ";

    #[test]
    fn every_terminal_edge_matches_the_spec() {
        const FINALS: [TaskState; 4] = [Finished, Failed, Killed, Lost];
        let mut covered = Vec::new();
        let mut rows = SPEC.lines().map(str::trim).filter(|line| !line.is_empty());
        assert!(rows.next().unwrap().starts_with("previous"));
        for row in rows {
            let mut cells = row.split_whitespace();
            let previous = TaskState::parse(cells.next().unwrap()).unwrap();
            let cells: Vec<&str> = cells.collect();
            assert_eq!(cells.len(), 2 * FINALS.len(), "row {row}");
            for (i, cell) in cells.into_iter().enumerate() {
                let final_state = FINALS[i % FINALS.len()];
                let is_service = i >= FINALS.len();
                let legal = previous.can_transition_to(final_state);
                let expected = match cell {
                    "R" => Reschedule::Now,
                    "." => Reschedule::No,
                    "-" => {
                        assert!(!legal, "{previous} -> {final_state} is legal; spec it");
                        continue;
                    }
                    other => panic!("bad cell {other:?} in row {row}"),
                };
                assert!(legal, "{previous} -> {final_state} is illegal; mark it -");
                let case = TaskEnd {
                    is_service,
                    ..end(previous, final_state)
                };
                check(case, expected);
                covered.push((previous, final_state));
            }
        }
        // Every legal edge into a terminal state has a row, once per job kind.
        for previous in TaskState::ALL {
            for next in previous.successors().filter(|next| next.is_terminal()) {
                let times = covered.iter().filter(|&&e| e == (previous, next)).count();
                assert_eq!(times, 2, "{previous} -> {next} is not in the spec");
            }
        }
    }

    #[test]
    fn adhoc_finished_stays_finished() {
        check(end(Running, Finished), Reschedule::No);
    }

    #[test]
    fn service_finished_is_rescheduled() {
        check(service(Running, Finished), Reschedule::Now);
    }

    #[test]
    fn service_finished_out_of_a_partition_is_rescheduled_unlike_aurora() {
        check(service(Partitioned, Finished), Reschedule::Now);
    }

    #[test]
    fn adhoc_failure_is_retried_while_below_the_limit() {
        for (prior_failures, expected) in [
            (0, Reschedule::Now),
            (1, Reschedule::Now),
            (2, Reschedule::No),
        ] {
            let case = TaskEnd {
                prior_failures,
                ..end(Running, Failed)
            };
            check(case, expected);
        }
    }

    #[test]
    fn adhoc_failure_exhaustion_stays_failed_and_counts() {
        let case = TaskEnd {
            prior_failures: 2,
            ..end(Running, Failed)
        };
        let outcome = on_terminal(&LifecyclePolicy::default(), &case);
        assert_eq!(outcome.reschedule, Reschedule::No);
        assert_eq!(outcome.failures, 3);
    }

    #[test]
    fn adhoc_failure_with_unlimited_retries_is_always_rescheduled() {
        for prior_failures in [0, 1, 1_000_000, u32::MAX] {
            let case = TaskEnd {
                max_task_failures: -1,
                prior_failures,
                ..end(Running, Failed)
            };
            check(case, Reschedule::Now);
        }
    }

    #[test]
    fn failure_counter_saturates_instead_of_wrapping() {
        let case = TaskEnd {
            max_task_failures: -1,
            prior_failures: u32::MAX,
            ..end(Running, Failed)
        };
        assert_eq!(
            on_terminal(&LifecyclePolicy::default(), &case).failures,
            u32::MAX
        );
    }

    #[test]
    fn max_task_failures_zero_one_and_below_minus_one_all_mean_one_run() {
        for max_task_failures in [0, 1, -2, i32::MIN] {
            let case = TaskEnd {
                max_task_failures,
                ..end(Running, Failed)
            };
            check(case, Reschedule::No);
        }
        let two_runs = TaskEnd {
            max_task_failures: 2,
            ..end(Running, Failed)
        };
        check(two_runs, Reschedule::Now);
    }

    #[test]
    fn service_ignores_the_failure_limit() {
        let case = TaskEnd {
            max_task_failures: 1,
            prior_failures: 50,
            ..service(Running, Failed)
        };
        check(case, Reschedule::Now);
    }

    #[test]
    fn service_killed_by_user_stays_killed() {
        check(service(Killing, Killed), Reschedule::No);
        check(service(Killing, Lost), Reschedule::No);
        check(service(Killing, Failed), Reschedule::No);
    }

    #[test]
    fn user_kill_is_final_even_through_a_partition() {
        for final_state in [Lost, Failed, Finished] {
            let case = TaskEnd {
                interruption: Interruption::UserKill,
                ..service(Partitioned, final_state)
            };
            check(case, Reschedule::No);
        }
    }

    #[test]
    fn lost_is_rescheduled_even_for_adhoc() {
        check(end(Running, Lost), Reschedule::Now);
        check(end(Assigned, Lost), Reschedule::Now);
        check(end(Partitioned, Lost), Reschedule::Now);
    }

    #[test]
    fn killed_by_the_agent_is_rescheduled() {
        check(end(Running, Killed), Reschedule::Now);
    }

    #[test]
    fn killed_after_preempting_draining_or_restarting_is_rescheduled() {
        for previous in [Preempting, Draining, Restarting] {
            check(end(previous, Killed), Reschedule::Now);
        }
    }

    #[test]
    fn finished_while_draining_is_rescheduled_even_for_adhoc() {
        check(end(Draining, Finished), Reschedule::Now);
    }

    #[test]
    fn failure_while_restarting_ignores_and_spares_the_budget() {
        let case = TaskEnd {
            prior_failures: 10,
            ..end(Restarting, Failed)
        };
        let outcome = on_terminal(&LifecyclePolicy::default(), &case);
        assert_eq!(outcome.reschedule, Reschedule::Now);
        assert_eq!(outcome.failures, 10);
    }

    #[test]
    fn only_own_failures_count() {
        for previous in TaskState::ALL {
            for final_state in TaskState::ALL {
                let expected = final_state == Failed
                    && matches!(previous, Assigned | Starting | Running | Partitioned);
                assert_eq!(
                    counts_as_failure(previous, final_state),
                    expected,
                    "{previous} -> {final_state}"
                );
            }
        }
    }

    #[test]
    fn flapping_task_is_throttled() {
        let case = TaskEnd {
            ran_for_ms: Some(10_000),
            ..service(Running, Failed)
        };
        let outcome = on_terminal(&LifecyclePolicy::default(), &case);
        assert_eq!(outcome.reschedule, Reschedule::After { delay_ms: 30_000 });
        assert_eq!(outcome.consecutive_flaps, 1);
    }

    #[test]
    fn flapping_delay_doubles_per_consecutive_flap_up_to_the_cap() {
        for (prior_consecutive_flaps, delay_ms) in [
            (0, 30_000),
            (1, 60_000),
            (2, 120_000),
            (3, 240_000),
            (4, 300_000),
            (5, 300_000),
            (1_000, 300_000),
            (u32::MAX, 300_000),
        ] {
            let case = TaskEnd {
                ran_for_ms: Some(1),
                prior_consecutive_flaps,
                ..service(Running, Finished)
            };
            check(case, Reschedule::After { delay_ms });
        }
    }

    #[test]
    fn never_running_counts_as_a_flap() {
        let case = TaskEnd {
            ran_for_ms: None,
            ..end(Starting, Lost)
        };
        check(case, Reschedule::After { delay_ms: 30_000 });
    }

    #[test]
    fn run_of_exactly_the_threshold_is_not_a_flap() {
        let threshold_ms = LifecyclePolicy::default().flapping_task_threshold_ms;
        let at = TaskEnd {
            ran_for_ms: Some(threshold_ms),
            ..service(Running, Finished)
        };
        check(at, Reschedule::Now);
        let just_under = TaskEnd {
            ran_for_ms: Some(threshold_ms - 1),
            ..at
        };
        check(just_under, Reschedule::After { delay_ms: 30_000 });
    }

    #[test]
    fn interrupted_task_never_flaps() {
        for previous in [Restarting, Preempting, Draining] {
            let case = TaskEnd {
                ran_for_ms: Some(1),
                prior_consecutive_flaps: 7,
                ..end(previous, Killed)
            };
            let outcome = on_terminal(&LifecyclePolicy::default(), &case);
            assert_eq!(outcome.reschedule, Reschedule::Now, "{previous}");
            assert_eq!(outcome.consecutive_flaps, 0, "{previous}");
        }
    }

    #[test]
    fn operator_interruption_before_a_partition_is_not_a_flap() {
        let case = TaskEnd {
            interruption: Interruption::Operator,
            ran_for_ms: Some(1),
            ..end(Partitioned, Lost)
        };
        check(case, Reschedule::Now);
    }

    #[test]
    fn stable_run_resets_the_flap_count() {
        let case = TaskEnd {
            prior_consecutive_flaps: 9,
            ..service(Running, Failed)
        };
        let outcome = on_terminal(&LifecyclePolicy::default(), &case);
        assert_eq!(outcome.reschedule, Reschedule::Now);
        assert_eq!(outcome.consecutive_flaps, 0);
    }

    #[test]
    fn zero_flapping_delay_reschedules_now() {
        let policy = LifecyclePolicy {
            initial_flapping_task_delay_ms: 0,
            ..LifecyclePolicy::default()
        };
        let case = TaskEnd {
            ran_for_ms: Some(1),
            ..service(Running, Failed)
        };
        assert_eq!(on_terminal(&policy, &case).reschedule, Reschedule::Now);
    }

    #[test]
    fn flap_that_is_not_rescheduled_still_counts() {
        let case = TaskEnd {
            ran_for_ms: Some(1),
            prior_consecutive_flaps: 2,
            ..end(Running, Finished)
        };
        let outcome = on_terminal(&LifecyclePolicy::default(), &case);
        assert_eq!(outcome.reschedule, Reschedule::No);
        assert_eq!(outcome.consecutive_flaps, 3);
    }

    #[test]
    fn replacement_starts_pending_or_throttled() {
        assert_eq!(Reschedule::No.replacement_state(), None);
        assert_eq!(Reschedule::Now.replacement_state(), Some(Pending));
        assert_eq!(
            Reschedule::After { delay_ms: 1 }.replacement_state(),
            Some(Throttled)
        );
        for state in [Pending, Throttled] {
            assert!(Init.can_transition_to(state));
        }
    }

    #[test]
    fn interruption_remembers_the_strongest_cause() {
        use Interruption as I;
        for (before, entered, after) in [
            (I::None, Running, I::None),
            (I::None, Restarting, I::Operator),
            (I::None, Preempting, I::Operator),
            (I::None, Draining, I::Operator),
            (I::None, Killing, I::UserKill),
            (I::Operator, Partitioned, I::Operator),
            (I::Operator, Killing, I::UserKill),
            (I::UserKill, Draining, I::UserKill),
            (I::UserKill, Lost, I::UserKill),
        ] {
            assert_eq!(before.after(entered), after, "{before:?} + {entered}");
        }
    }

    #[track_caller]
    fn check_penalty(policy: &LifecyclePolicy, failed_attempts: u32, expected_ms: u64) {
        assert_eq!(
            schedule_penalty_ms(policy, failed_attempts),
            expected_ms,
            "after {failed_attempts} failed attempts"
        );
    }

    #[test]
    fn schedule_penalty_doubles_from_initial_to_max() {
        let policy = LifecyclePolicy::default();
        for (failed_attempts, expected_ms) in [
            (0, 0),
            (1, 1_000),
            (2, 2_000),
            (3, 4_000),
            (6, 32_000),
            (7, 60_000),
            (64, 60_000),
            (65, 60_000),
            (u32::MAX, 60_000),
        ] {
            check_penalty(&policy, failed_attempts, expected_ms);
        }
    }

    #[test]
    fn schedule_penalty_initial_above_max_is_capped() {
        let policy = LifecyclePolicy {
            initial_schedule_penalty_ms: 5 * MINUTE_MS,
            ..LifecyclePolicy::default()
        };
        check_penalty(&policy, 1, MINUTE_MS);
    }

    #[test]
    fn schedule_penalty_zero_initial_stays_zero() {
        let policy = LifecyclePolicy {
            initial_schedule_penalty_ms: 0,
            ..LifecyclePolicy::default()
        };
        check_penalty(&policy, 1, 0);
        check_penalty(&policy, u32::MAX, 0);
    }

    #[test]
    fn schedule_penalty_saturates_instead_of_overflowing() {
        let policy = LifecyclePolicy {
            initial_schedule_penalty_ms: u64::MAX / 2,
            max_schedule_penalty_ms: u64::MAX,
            ..LifecyclePolicy::default()
        };
        check_penalty(&policy, 3, u64::MAX);
    }

    #[track_caller]
    fn check_timeout(state: TaskState, entered_ms: u64, now_ms: u64, expected: bool) {
        assert_eq!(
            transient_timed_out(&LifecyclePolicy::default(), state, entered_ms, now_ms),
            expected,
            "{state} entered at {entered_ms}, now {now_ms}"
        );
    }

    #[test]
    fn transient_states_time_out_at_the_deadline() {
        let timeout_ms = LifecyclePolicy::default().transient_task_state_timeout_ms;
        for state in TRANSIENT_STATES {
            check_timeout(state, 1_000, 1_000, false);
            check_timeout(state, 1_000, 1_000 + timeout_ms - 1, false);
            check_timeout(state, 1_000, 1_000 + timeout_ms, true);
            check_timeout(state, 1_000, u64::MAX, true);
        }
    }

    #[test]
    fn steady_states_never_time_out() {
        for state in TaskState::ALL.into_iter().filter(|&s| !is_transient(s)) {
            check_timeout(state, 0, u64::MAX, false);
            assert_eq!(
                transient_deadline_ms(&LifecyclePolicy::default(), state, 0),
                None
            );
        }
        for state in [Pending, Throttled, Running, Partitioned, Lost] {
            assert!(!is_transient(state), "{state}");
        }
    }

    #[test]
    fn clock_moving_back_is_not_a_timeout() {
        check_timeout(Assigned, 10 * MINUTE_MS, 0, false);
    }

    #[test]
    fn deadline_near_the_end_of_time_saturates() {
        let policy = LifecyclePolicy::default();
        assert_eq!(
            transient_deadline_ms(&policy, Killing, u64::MAX - 1),
            Some(u64::MAX)
        );
        check_timeout(Killing, u64::MAX - 1, u64::MAX - 1, false);
    }

    /// The timeout's consequence must be a legal edge, or the shard could not apply it.
    #[test]
    fn every_transient_state_can_become_lost() {
        for state in TRANSIENT_STATES {
            assert!(state.is_active(), "{state}");
            assert!(state.can_transition_to(Lost), "{state}");
        }
    }

    #[track_caller]
    fn check_report(current: TaskState, reported: TaskState, expected: Option<TaskState>) {
        assert_eq!(
            next_state_on_report(current, reported),
            expected,
            "{current} reported as {reported}"
        );
        if let Some(next) = expected {
            assert!(
                current.can_transition_to(next),
                "{current} -> {next} must be legal"
            );
        }
    }

    #[test]
    fn agent_reports_map_onto_the_state_machine() {
        check_report(Assigned, Starting, Some(Starting));
        check_report(Assigned, Running, Some(Running));
        check_report(Starting, Running, Some(Running));
        check_report(Running, Finished, Some(Finished));
        check_report(Running, Failed, Some(Failed));
        check_report(Running, Lost, Some(Lost));
        check_report(Starting, Failed, Some(Failed));
        // Any end of a task being killed, preempted, drained or restarted is KILLED.
        for killing in [Killing, Preempting, Draining, Restarting] {
            for end in [Finished, Failed, Killed, Lost] {
                check_report(killing, end, Some(Killed));
            }
            // A late RUNNING does not undo the kill.
            check_report(killing, Running, None);
        }
        // Stale or duplicate reports change nothing.
        check_report(Running, Starting, None);
        check_report(Running, Running, None);
        check_report(Starting, Starting, None);
        // Ends the state machine has no edge for change nothing either.
        check_report(Partitioned, Failed, Some(Failed));
        check_report(Pending, Finished, None);
        check_report(Finished, Lost, None);
        check_report(Killed, Killed, None);
    }

    /// A PARTITIONED task whose agent is back takes the agent's word for what became of it.
    #[test]
    fn partitioned_task_takes_its_returning_agents_report() {
        check_report(Partitioned, Starting, Some(Starting));
        check_report(Partitioned, Running, Some(Running));
        check_report(Partitioned, Finished, Some(Finished));
        check_report(Partitioned, Failed, Some(Failed));
        // The agent does not know the task.
        check_report(Partitioned, Lost, Some(Lost));
        // The table has no PARTITIONED -> KILLED: the task is gone all the same.
        check_report(Partitioned, Killed, Some(Lost));
        // Not reports an agent makes; nothing changes.
        for reported in [
            Init,
            Pending,
            Throttled,
            Assigned,
            Partitioned,
            Killing,
            Draining,
        ] {
            check_report(Partitioned, reported, None);
        }
    }

    /// What the end of a PARTITIONED task leads to: replaced when it was lost or killed on its
    /// agent, unless a user killed it before the partition.
    #[test]
    fn partitioned_ends_are_replaced_as_their_reports_say() {
        for (reported, interruption, expected) in [
            (Lost, Interruption::None, Reschedule::Now),
            (Killed, Interruption::None, Reschedule::Now),
            (Failed, Interruption::None, Reschedule::Now),
            (Finished, Interruption::None, Reschedule::No),
            (Killed, Interruption::UserKill, Reschedule::No),
            (Lost, Interruption::Operator, Reschedule::Now),
        ] {
            let final_state = next_state_on_report(Partitioned, reported).unwrap();
            let case = TaskEnd {
                interruption,
                ..end(Partitioned, final_state)
            };
            check(case, expected);
        }
    }

    /// Aurora reschedules drained and restarted tasks although they were killed; a user's kill
    /// is final. Through the whole path: the agent's report, then the end's decision.
    #[test]
    fn killed_while_draining_or_restarting_is_replaced_unlike_a_user_kill() {
        for (previous, expected) in [
            (Draining, Reschedule::Now),
            (Restarting, Reschedule::Now),
            (Preempting, Reschedule::Now),
            (Killing, Reschedule::No),
        ] {
            for reported in [Killed, Finished, Failed, Lost] {
                let final_state = next_state_on_report(previous, reported);
                assert_eq!(final_state, Some(Killed), "{previous} reported {reported}");
                for is_service in [false, true] {
                    // A short run: a drain or restart is still not a flap, so not throttled.
                    let case = TaskEnd {
                        interruption: end_interruption(previous == Killing, Killed),
                        is_service,
                        ran_for_ms: Some(1),
                        ..end(previous, Killed)
                    };
                    check(case, expected);
                }
            }
        }
    }

    #[test]
    fn agent_loss_partitions_only_running_tasks() {
        for state in TaskState::ALL {
            let expected_unaware = state.is_active().then_some(Lost);
            let expected_aware = match state {
                Running => Some(Partitioned),
                Partitioned => None,
                _ => expected_unaware,
            };
            assert_eq!(on_agent_lost(state, false), expected_unaware, "{state}");
            assert_eq!(on_agent_lost(state, true), expected_aware, "{state} aware");
            for next in [on_agent_lost(state, false), on_agent_lost(state, true)]
                .into_iter()
                .flatten()
            {
                assert!(state.can_transition_to(next), "{state} -> {next}");
            }
        }
        // Spelled out: transient states go straight to LOST, and nothing off an agent moves.
        for state in [
            Assigned, Starting, Killing, Restarting, Preempting, Draining,
        ] {
            assert_eq!(on_agent_lost(state, true), Some(Lost), "{state}");
        }
        for state in [Init, Pending, Throttled, Finished, Failed, Killed, Lost] {
            assert_eq!(on_agent_lost(state, true), None, "{state}");
            assert_eq!(on_agent_lost(state, false), None, "{state}");
        }
        assert_eq!(on_agent_lost(Partitioned, false), Some(Lost));
    }

    #[test]
    fn partition_deadlines() {
        let policy = |reschedule, delay_secs| PartitionPolicy {
            reschedule,
            delay_secs,
        };
        const AT: u64 = 5_000_000;
        for (policy, expected) in [
            // No policy: LOST at once, Aurora's default.
            (None, Some(AT)),
            (Some(policy(true, 0)), Some(AT)),
            (Some(policy(true, 30)), Some(AT + 30_000_000)),
            (Some(policy(true, u64::MAX)), Some(u64::MAX)),
            // Never rescheduled: waits out the partition.
            (Some(policy(false, 0)), None),
            (Some(policy(false, 30)), None),
        ] {
            assert_eq!(
                partition_deadline_us(policy.as_ref(), AT),
                expected,
                "{policy:?}"
            );
        }
        assert_eq!(
            partition_deadline_us(Some(&policy(true, 1)), u64::MAX - 1),
            Some(u64::MAX)
        );
        assert_eq!(
            partition_deadline_us(Some(&PartitionPolicy::default()), AT),
            Some(AT)
        );
    }

    #[test]
    fn every_report_answer_is_a_legal_edge() {
        for current in TaskState::ALL {
            for reported in TaskState::ALL {
                if let Some(next) = next_state_on_report(current, reported) {
                    assert!(
                        current.can_transition_to(next),
                        "{current} + {reported} -> {next}"
                    );
                }
            }
        }
    }

    #[test]
    fn end_interruption_table() {
        use Interruption as I;
        for (killed_by_user, final_state, expected) in [
            (true, Killed, I::UserKill),
            (true, Lost, I::UserKill),
            (true, Finished, I::UserKill),
            (false, Lost, I::Operator),
            (false, Killed, I::None),
            (false, Finished, I::None),
            (false, Failed, I::None),
        ] {
            assert_eq!(
                end_interruption(killed_by_user, final_state),
                expected,
                "user {killed_by_user} {final_state}"
            );
        }
    }

    /// What `end_interruption` feeds `on_terminal` with: preempted, drained and restarted tasks
    /// are operator interruptions through their previous state, lost ones through the rule.
    #[test]
    fn end_interruption_drives_on_terminal() {
        for (previous, final_state, killed_by_user, expected) in [
            (Preempting, Killed, false, Reschedule::Now),
            (Draining, Killed, false, Reschedule::Now),
            (Restarting, Killed, false, Reschedule::Now),
            (Killing, Killed, true, Reschedule::No),
            // A short run lost with its agent is not a flap.
            (Running, Lost, false, Reschedule::Now),
            // A short run that failed on its own is.
            (
                Running,
                Failed,
                false,
                Reschedule::After { delay_ms: 30_000 },
            ),
        ] {
            let case = TaskEnd {
                interruption: end_interruption(killed_by_user, final_state),
                ran_for_ms: Some(1),
                ..end(previous, final_state)
            };
            check(case, expected);
        }
    }

    #[test]
    fn transient_timeout_targets() {
        for (state, expected) in [
            (Killing, Killed),
            (Assigned, Lost),
            (Starting, Lost),
            (Restarting, Lost),
            (Preempting, Lost),
            (Draining, Lost),
        ] {
            assert_eq!(transient_timeout_target(state), expected, "{state}");
        }
        for state in TRANSIENT_STATES {
            let target = transient_timeout_target(state);
            assert!(state.can_transition_to(target), "{state} -> {target}");
            assert!(target.is_terminal(), "{target}");
        }
    }

    fn any_policy() -> impl Strategy<Value = LifecyclePolicy> {
        let ms = || prop_oneof![0..10 * MINUTE_MS, any::<u64>()];
        (ms(), ms(), ms(), ms(), ms(), ms()).prop_map(|(a, b, c, d, e, f)| LifecyclePolicy {
            initial_schedule_penalty_ms: a,
            max_schedule_penalty_ms: b,
            flapping_task_threshold_ms: c,
            initial_flapping_task_delay_ms: d,
            max_flapping_task_delay_ms: e,
            transient_task_state_timeout_ms: f,
        })
    }

    /// Any legal edge into a terminal state, with any history and counters.
    fn any_end() -> impl Strategy<Value = TaskEnd> {
        let edges: Vec<(TaskState, TaskState)> = TaskState::ALL
            .into_iter()
            .flat_map(|from| from.successors().map(move |to| (from, to)))
            .filter(|(_, to)| to.is_terminal())
            .collect();
        let interruption = prop_oneof![
            Just(Interruption::None),
            Just(Interruption::Operator),
            Just(Interruption::UserKill),
        ];
        (
            prop::sample::select(edges),
            interruption,
            any::<bool>(),
            prop_oneof![-1..5i32, any::<i32>()],
            prop_oneof![0..5u32, any::<u32>()],
            prop::option::of(prop_oneof![0..10 * MINUTE_MS, any::<u64>()]),
            prop_oneof![0..8u32, any::<u32>()],
        )
            .prop_map(
                |(
                    (previous_state, final_state),
                    interruption,
                    is_service,
                    max_task_failures,
                    prior_failures,
                    ran_for_ms,
                    prior_consecutive_flaps,
                )| TaskEnd {
                    previous_state,
                    final_state,
                    interruption,
                    is_service,
                    max_task_failures,
                    prior_failures,
                    ran_for_ms,
                    prior_consecutive_flaps,
                },
            )
    }

    proptest! {
        #[test]
        fn schedule_penalty_is_monotone_and_capped(
            policy in any_policy(),
            attempts in prop_oneof![0..80u32, any::<u32>()],
        ) {
            let penalty_ms = schedule_penalty_ms(&policy, attempts);
            let next_ms = schedule_penalty_ms(&policy, attempts.saturating_add(1));
            prop_assert!(penalty_ms <= next_ms);
            prop_assert!(penalty_ms <= policy.max_schedule_penalty_ms);
            if attempts >= 1 {
                let floor_ms =
                    policy.initial_schedule_penalty_ms.min(policy.max_schedule_penalty_ms);
                prop_assert!(penalty_ms >= floor_ms);
            }
        }

        #[test]
        fn flapping_delay_is_monotone_and_capped(
            policy in any_policy(),
            flaps in prop_oneof![0..80u32, any::<u32>()],
        ) {
            let delay_ms = flapping_delay_ms(&policy, flaps);
            prop_assert!(delay_ms <= flapping_delay_ms(&policy, flaps.saturating_add(1)));
            prop_assert!(delay_ms <= policy.max_flapping_task_delay_ms);
        }

        #[test]
        fn terminal_outcome_keeps_its_promises(policy in any_policy(), end in any_end()) {
            let outcome = on_terminal(&policy, &end);
            let interruption = end.interruption.after(end.previous_state);
            if interruption == Interruption::UserKill {
                prop_assert_eq!(outcome.reschedule, Reschedule::No);
            }
            if let Reschedule::After { delay_ms } = outcome.reschedule {
                prop_assert!(delay_ms > 0);
                prop_assert!(delay_ms <= policy.max_flapping_task_delay_ms);
                prop_assert!(outcome.consecutive_flaps > 0);
            }
            if outcome.consecutive_flaps > 0 && outcome.reschedule != Reschedule::No {
                let throttled = matches!(outcome.reschedule, Reschedule::After { .. });
                let delay_ms = flapping_delay_ms(&policy, outcome.consecutive_flaps);
                prop_assert_eq!(throttled, delay_ms > 0);
            }
            let counted = u32::from(counts_as_failure(end.previous_state, end.final_state));
            prop_assert_eq!(outcome.failures, end.prior_failures.saturating_add(counted));
            if end.is_service && interruption != Interruption::UserKill {
                prop_assert_ne!(outcome.reschedule, Reschedule::No);
            }
            let uninterrupted = interruption == Interruption::None;
            if !end.is_service && end.final_state == Finished && uninterrupted {
                prop_assert_eq!(outcome.reschedule, Reschedule::No);
            }
        }

        #[test]
        fn once_timed_out_a_task_stays_timed_out(
            policy in any_policy(),
            state in prop::sample::select(TaskState::ALL.to_vec()),
            entered_ms in any::<u64>(),
            now_ms in any::<u64>(),
            later_by_ms in any::<u64>(),
        ) {
            if transient_timed_out(&policy, state, entered_ms, now_ms) {
                prop_assert!(is_transient(state));
                let later_ms = now_ms.saturating_add(later_by_ms);
                prop_assert!(transient_timed_out(&policy, state, entered_ms, later_ms));
            }
        }
    }
}
