//! The Aurora task state machine: one transition table.
//!
//! The legal edges follow Apache Aurora's `TaskStateMachine` (without its `DELETED` pseudo-state,
//! which Borealis does not model). They are written once, in the private `TRANSITIONS`, as a list
//! of targets per state; every other question about legality is answered from that list, so the
//! state machine cannot drift apart from itself. What a task's arrival in a state *causes*
//! (rescheduling, throttling, timeouts) lives in [`crate::lifecycle`].

use serde::{Deserialize, Serialize};

/// What a task used, as its agent measured it: from the task's cgroups under isolation (every
/// process of the task), else from the task's process and the children it waited for
/// (`getrusage`). Reported with the task's terminal status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskUsage {
    /// CPU time, user and system, in milliseconds.
    pub cpu_time_ms: u64,
    /// The most memory the task held at once (RSS and page cache charged to it), in bytes.
    pub peak_memory_bytes: u64,
    /// The sandbox's size when last measured, in bytes (0: not measured).
    pub disk_bytes: u64,
}

/// A task's state. The numeric values are the wire values (`net/schema/borealis.fbs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum TaskState {
    /// Created but not yet queued; it exists only for the instant before PENDING or THROTTLED.
    Init = 0,
    /// Waiting for an offer that fits; only tasks in this state are placed.
    Pending = 1,
    /// Held back for a penalty (a flapping task) before it may become PENDING.
    Throttled = 2,
    /// Placed on an agent and a launch sent, but not acknowledged yet.
    Assigned = 3,
    /// The agent accepted the launch and is preparing the sandbox.
    Starting = 4,
    /// The task's command is running.
    Running = 5,
    /// Terminal: the command exited successfully.
    Finished = 6,
    /// Terminal: the command failed.
    Failed = 7,
    /// A user asked to kill the task; waiting for the agent to confirm.
    Killing = 8,
    /// Terminal: the task was killed.
    Killed = 9,
    /// Being killed so that a replacement can run (`job restart`).
    Restarting = 10,
    /// Being killed to make room for a higher-priority production task.
    Preempting = 11,
    /// Being killed because its agent is going into maintenance.
    Draining = 12,
    /// Its agent is unreachable, so its real state is unknown.
    Partitioned = 13,
    /// Terminal: the task vanished (its agent died, or it stayed in a transient state too long).
    Lost = 14,
}

/// A set of states, one bit per wire value; `u16` holds all fifteen.
type StateSet = u16;

/// The legal transitions, as the list of targets for each state, indexed by wire value.
///
/// This is the single source of truth of the state machine. Terminal states have no targets,
/// and no state lists itself: a self-transition is a no-op for the caller to drop, never an edge.
const TRANSITIONS: [&[TaskState]; TaskState::COUNT] = {
    use TaskState::*;
    [
        /* Init */ &[Pending, Throttled],
        /* Pending */ &[Assigned, Killing],
        /* Throttled */ &[Pending, Killing],
        /* Assigned */
        &[
            Starting, Running, Finished, Failed, Killing, Killed, Restarting, Preempting, Draining,
            Lost,
        ],
        /* Starting */
        &[
            Running,
            Finished,
            Failed,
            Killing,
            Killed,
            Restarting,
            Preempting,
            Draining,
            Partitioned,
            Lost,
        ],
        /* Running */
        &[
            Finished,
            Failed,
            Killing,
            Killed,
            Restarting,
            Preempting,
            Draining,
            Partitioned,
            Lost,
        ],
        /* Finished */ &[],
        /* Failed */ &[],
        /* Killing */ &[Finished, Failed, Killed, Partitioned, Lost],
        /* Killed */ &[],
        /* Restarting */ &[Finished, Failed, Killing, Killed, Partitioned, Lost],
        /* Preempting */ &[Finished, Failed, Killing, Killed, Partitioned, Lost],
        /* Draining */ &[Finished, Failed, Killing, Killed, Partitioned, Lost],
        // A partitioned task may come back in whatever state its agent reports.
        /* Partitioned */
        &[
            Assigned, Starting, Running, Finished, Failed, Killing, Restarting, Preempting,
            Draining, Lost,
        ],
        /* Lost */ &[],
    ]
};

/// [`TRANSITIONS`] as bit sets, computed at compile time so that a legality check is one load
/// and one mask on the hot path of every status update.
const TRANSITION_SETS: [StateSet; TaskState::COUNT] = {
    let mut sets = [0; TaskState::COUNT];
    let mut from = 0;
    while from < TaskState::COUNT {
        let targets = TRANSITIONS[from];
        let mut i = 0;
        while i < targets.len() {
            let to = targets[i] as usize;
            assert!(to != from, "a self-transition is not an edge");
            sets[from] |= 1 << to;
            i += 1;
        }
        from += 1;
    }
    sets
};

// The table's invariants, checked by the compiler: terminal states have no way out.
const _: () = {
    assert!(TRANSITION_SETS[TaskState::Finished as usize] == 0);
    assert!(TRANSITION_SETS[TaskState::Failed as usize] == 0);
    assert!(TRANSITION_SETS[TaskState::Killed as usize] == 0);
    assert!(TRANSITION_SETS[TaskState::Lost as usize] == 0);
    assert!(TaskState::COUNT <= StateSet::BITS as usize);
};

impl TaskState {
    /// How many states there are; the wire values are `0..COUNT`.
    pub const COUNT: usize = 15;
    /// Every state, in wire-value order, so that `ALL[s as usize] == s`.
    pub const ALL: [TaskState; TaskState::COUNT] = [
        TaskState::Init,
        TaskState::Pending,
        TaskState::Throttled,
        TaskState::Assigned,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Finished,
        TaskState::Failed,
        TaskState::Killing,
        TaskState::Killed,
        TaskState::Restarting,
        TaskState::Preempting,
        TaskState::Draining,
        TaskState::Partitioned,
        TaskState::Lost,
    ];

    /// Decodes a wire value; `None` for a value no state has, so a bad frame is an error, not a
    /// panic.
    pub fn from_u8(value: u8) -> Option<TaskState> {
        TaskState::ALL.get(usize::from(value)).copied()
    }

    /// The state's name as Aurora spells it, upper case; [`TaskState::parse`] reads it back.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Init => "INIT",
            TaskState::Pending => "PENDING",
            TaskState::Throttled => "THROTTLED",
            TaskState::Assigned => "ASSIGNED",
            TaskState::Starting => "STARTING",
            TaskState::Running => "RUNNING",
            TaskState::Finished => "FINISHED",
            TaskState::Failed => "FAILED",
            TaskState::Killing => "KILLING",
            TaskState::Killed => "KILLED",
            TaskState::Restarting => "RESTARTING",
            TaskState::Preempting => "PREEMPTING",
            TaskState::Draining => "DRAINING",
            TaskState::Partitioned => "PARTITIONED",
            TaskState::Lost => "LOST",
        }
    }

    /// FINISHED, FAILED, KILLED and LOST: a task never leaves them.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished | TaskState::Failed | TaskState::Killed | TaskState::Lost
        )
    }

    /// Whether the state machine allows `self -> next`.
    ///
    /// Self-transitions are not legal: an agent repeating a status is a no-op the caller drops
    /// before asking, and treating it as an edge would hide double-processing bugs.
    pub fn can_transition_to(self, next: TaskState) -> bool {
        TRANSITION_SETS[self as usize] & (1 << next as usize) != 0
    }

    /// The states `self` may move to, in wire-value order; empty for a terminal state.
    pub fn successors(self) -> impl Iterator<Item = TaskState> {
        TaskState::ALL
            .into_iter()
            .filter(move |&next| self.can_transition_to(next))
    }

    /// Being ended by the scheduler (KILLING, PREEMPTING, DRAINING, RESTARTING): whatever end
    /// its agent reports, the task is KILLED, and the reason it is being ended is kept.
    pub fn is_being_killed(self) -> bool {
        matches!(
            self,
            TaskState::Killing
                | TaskState::Preempting
                | TaskState::Draining
                | TaskState::Restarting
        )
    }

    /// Whether the task occupies, or may occupy, resources on an agent: ASSIGNED, STARTING,
    /// RUNNING, KILLING, RESTARTING, PREEMPTING, DRAINING and PARTITIONED.
    ///
    /// These are the tasks whose resources an agent's accounting must keep reserved. A
    /// PARTITIONED task counts because its agent may still be running it. Note that Aurora's
    /// `ACTIVE_STATES` also contains PENDING and THROTTLED; here those are [`is_pending`].
    ///
    /// [`is_pending`]: TaskState::is_pending
    pub fn is_active(self) -> bool {
        matches!(
            self,
            TaskState::Assigned
                | TaskState::Starting
                | TaskState::Running
                | TaskState::Killing
                | TaskState::Restarting
                | TaskState::Preempting
                | TaskState::Draining
                | TaskState::Partitioned
        )
    }

    /// Whether the task is alive but not yet on an agent: INIT, PENDING or THROTTLED.
    ///
    /// Every state is exactly one of pending, [active](TaskState::is_active) or
    /// [terminal](TaskState::is_terminal). Only PENDING tasks are placed; INIT and THROTTLED
    /// are pending too because they still count toward the job's instances waiting to run.
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            TaskState::Init | TaskState::Pending | TaskState::Throttled
        )
    }

    /// Reads a state name, ignoring ASCII case, so that CLI users may type `running`.
    pub fn parse(name: &str) -> Option<TaskState> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(name))
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The specification, written by hand apart from [`TRANSITIONS`]: one row per `from` state,
    /// one column per `to` state, both in wire-value order; `X` is legal, `.` is not.
    const SPEC: &str = "
        from         INIT PEND THRO ASSI STAR RUNN FINI FAIL KLNG KLED REST PREE DRAI PART LOST
        INIT         .    X    X    .    .    .    .    .    .    .    .    .    .    .    .
        PENDING      .    .    .    X    .    .    .    .    X    .    .    .    .    .    .
        THROTTLED    .    X    .    .    .    .    .    .    X    .    .    .    .    .    .
        ASSIGNED     .    .    .    .    X    X    X    X    X    X    X    X    X    .    X
        STARTING     .    .    .    .    .    X    X    X    X    X    X    X    X    X    X
        RUNNING      .    .    .    .    .    .    X    X    X    X    X    X    X    X    X
        FINISHED     .    .    .    .    .    .    .    .    .    .    .    .    .    .    .
        FAILED       .    .    .    .    .    .    .    .    .    .    .    .    .    .    .
        KILLING      .    .    .    .    .    .    X    X    .    X    .    .    .    X    X
        KILLED       .    .    .    .    .    .    .    .    .    .    .    .    .    .    .
        RESTARTING   .    .    .    .    .    .    X    X    X    X    .    .    .    X    X
        PREEMPTING   .    .    .    .    .    .    X    X    X    X    .    .    .    X    X
        DRAINING     .    .    .    .    .    .    X    X    X    X    .    .    .    X    X
        PARTITIONED  .    .    .    X    X    X    X    X    X    .    X    X    X    .    X
        LOST         .    .    .    .    .    .    .    .    .    .    .    .    .    .    .
    ";

    #[track_caller]
    fn check(from: TaskState, to: TaskState, expected: bool) {
        assert_eq!(
            from.can_transition_to(to),
            expected,
            "{from} -> {to}: expected {}",
            if expected { "legal" } else { "illegal" }
        );
    }

    #[test]
    fn every_pair_matches_the_spec() {
        let mut rows = SPEC.lines().map(str::trim).filter(|line| !line.is_empty());
        let header = rows.next().expect("header row");
        assert!(header.starts_with("from"));
        let mut checked = 0;
        let mut legal = 0;
        for (row, from) in rows.zip(TaskState::ALL) {
            let mut cells = row.split_whitespace();
            assert_eq!(
                TaskState::parse(cells.next().unwrap()),
                Some(from),
                "row {row}"
            );
            let cells: Vec<&str> = cells.collect();
            assert_eq!(cells.len(), TaskState::COUNT, "row {row}");
            for (cell, to) in cells.into_iter().zip(TaskState::ALL) {
                let expected = match cell {
                    "X" => true,
                    "." => false,
                    other => panic!("bad cell {other:?} in row {row}"),
                };
                check(from, to, expected);
                checked += 1;
                legal += usize::from(expected);
            }
        }
        assert_eq!(checked, TaskState::COUNT * TaskState::COUNT);
        assert_eq!(
            legal, 68,
            "the number of edges changed; update the spec on purpose"
        );
    }

    #[test]
    fn successors_agree_with_can_transition_to() {
        for from in TaskState::ALL {
            let successors: Vec<TaskState> = from.successors().collect();
            let expected: Vec<TaskState> = TaskState::ALL
                .into_iter()
                .filter(|&to| from.can_transition_to(to))
                .collect();
            assert_eq!(successors, expected, "{from}");
            assert_eq!(successors.is_empty(), from.is_terminal(), "{from}");
        }
    }

    #[test]
    fn no_self_transitions() {
        for state in TaskState::ALL {
            check(state, state, false);
        }
    }

    #[test]
    fn nothing_returns_to_init() {
        for from in TaskState::ALL {
            check(from, TaskState::Init, false);
        }
    }

    #[test]
    fn every_state_is_reachable_from_init() {
        let mut reached = 1u16 << TaskState::Init as usize;
        let mut frontier = vec![TaskState::Init];
        while let Some(state) = frontier.pop() {
            for next in state.successors() {
                if reached & (1 << next as usize) == 0 {
                    reached |= 1 << next as usize;
                    frontier.push(next);
                }
            }
        }
        assert_eq!(reached, (1 << TaskState::COUNT) - 1);
    }

    /// Every live state can end, so no task can be stuck forever by the table alone.
    #[test]
    fn every_state_can_reach_a_terminal_state() {
        for start in TaskState::ALL {
            let mut seen = 0u16;
            let mut frontier = vec![start];
            let mut ends = false;
            while let Some(state) = frontier.pop() {
                ends |= state.is_terminal();
                for next in state.successors() {
                    if seen & (1 << next as usize) == 0 {
                        seen |= 1 << next as usize;
                        frontier.push(next);
                    }
                }
            }
            assert!(ends, "{start} cannot end");
        }
    }

    #[test]
    fn pending_active_and_terminal_partition_the_states() {
        for state in TaskState::ALL {
            let kinds = [state.is_pending(), state.is_active(), state.is_terminal()];
            assert_eq!(
                kinds.iter().filter(|&&kind| kind).count(),
                1,
                "{state}: {kinds:?}"
            );
        }
    }

    #[test]
    fn wire_values_and_names_round_trip() {
        for (value, state) in TaskState::ALL.into_iter().enumerate() {
            assert_eq!(state as usize, value);
            assert_eq!(TaskState::from_u8(value as u8), Some(state));
            assert_eq!(TaskState::parse(state.as_str()), Some(state));
            assert_eq!(state.to_string(), state.as_str());
        }
        assert_eq!(TaskState::from_u8(TaskState::COUNT as u8), None);
    }

    #[test]
    fn parse_ignores_case_and_rejects_strangers() {
        assert_eq!(TaskState::parse("running"), Some(TaskState::Running));
        assert_eq!(
            TaskState::parse("Partitioned"),
            Some(TaskState::Partitioned)
        );
        assert_eq!(TaskState::parse("kIlLiNg"), Some(TaskState::Killing));
        assert_eq!(TaskState::parse(""), None);
        assert_eq!(TaskState::parse(" RUNNING"), None);
        assert_eq!(TaskState::parse("DELETED"), None);
        assert_eq!(TaskState::parse("RUN"), None);
    }

    /// Flips the case of every other letter, so parsing is tried on mixed-case names.
    fn mixed_case(name: &str) -> String {
        name.chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
            .collect()
    }

    proptest! {
        /// A random walk from INIT over legal edges only: every step is legal, every state on
        /// the way names itself and parses back, and once terminal the task has nowhere to go.
        #[test]
        fn random_walks_follow_the_table(choices in prop::collection::vec(any::<usize>(), 0..64)) {
            let mut state = TaskState::Init;
            for choice in choices {
                prop_assert_eq!(TaskState::parse(state.as_str()), Some(state));
                prop_assert_eq!(TaskState::parse(&mixed_case(state.as_str())), Some(state));
                prop_assert_eq!(TaskState::from_u8(state as u8), Some(state));
                let successors: Vec<TaskState> = state.successors().collect();
                if state.is_terminal() {
                    prop_assert!(successors.is_empty());
                    for next in TaskState::ALL {
                        prop_assert!(!state.can_transition_to(next));
                    }
                    break;
                }
                prop_assert!(!successors.is_empty(), "{} is a dead end", state);
                let next = successors[choice % successors.len()];
                prop_assert!(state.can_transition_to(next));
                prop_assert_ne!(next, state);
                state = next;
            }
        }
    }
}
