//! The Aurora task state machine: one transition table.

use serde::{Deserialize, Serialize};

/// A task's state. The numeric values are the wire values (`net/schema/borealis.fbs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum TaskState {
    Init = 0,
    Pending = 1,
    Throttled = 2,
    Assigned = 3,
    Starting = 4,
    Running = 5,
    Finished = 6,
    Failed = 7,
    Killing = 8,
    Killed = 9,
    Restarting = 10,
    Preempting = 11,
    Draining = 12,
    Partitioned = 13,
    Lost = 14,
}

impl TaskState {
    pub const COUNT: usize = 15;
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

    pub fn from_u8(value: u8) -> Option<TaskState> {
        TaskState::ALL.get(usize::from(value)).copied()
    }

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
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
