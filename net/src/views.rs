//! Owned forms of the wire messages, for peers off the hot path (the agent, the CLI, tests).
//! The scheduler's shards do not use these: they read the flatbuffers in place.

use borealis_core::cron::CollisionPolicy;
use borealis_core::update::{Command, JobUpdate, Rev, UpdateSettings, UpdateStatus};
use borealis_core::{
    Attributes, HostMode, JobKey, MaintenanceOp, Resources, TaskConfig, TaskId, TaskState,
    TaskUsage,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskStatusReport {
    pub task_id: TaskId,
    pub job_key: String,
    pub instance: u32,
    pub state: TaskState,
    /// The process's exit code, -1 when it has none (not exited, or killed by a signal).
    pub exit_code: i32,
    pub message: String,
    pub timestamp_ms: u64,
    /// The task's sandbox directory on the agent (empty when it has none yet).
    pub sandbox: String,
    /// What the task used (with a terminal status, when the agent measured it).
    pub usage: Option<TaskUsage>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRegistration {
    pub agent_id: String,
    pub hostname: String,
    pub resources: Resources,
    /// Inclusive port ranges the agent may hand to tasks.
    pub port_ranges: Vec<(u16, u16)>,
    pub attributes: Attributes,
    /// Every task the agent knows (after a reconnect: what it still runs or has finished).
    pub tasks: Vec<TaskStatusReport>,
    /// The port of the agent's HTTP sandbox server (task logs); 0: it serves none.
    pub log_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchView {
    pub task_id: TaskId,
    pub job_key: JobKey,
    pub instance: u32,
    pub config: TaskConfig,
    pub ports: Vec<(String, u16)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TaskInfoView {
    pub task_id: u64,
    pub instance: u32,
    pub state: Option<TaskState>,
    pub agent_id: String,
    pub hostname: String,
    pub failure_count: u32,
    pub exit_code: i32,
    pub message: String,
    pub ports: Vec<(String, u16)>,
    pub sandbox: String,
    /// Why a PENDING task is not placed yet (empty otherwise, or when the scheduler does not
    /// say).
    pub pending_reason: String,
    /// The task that preempted this one (wire: 0 means none).
    pub preempted_by: Option<u64>,
    /// The task's latest state changes, oldest first.
    pub events: Vec<TaskEventView>,
    /// What the task used, as its agent reported with its terminal status.
    pub usage: Option<TaskUsage>,
}

/// One registered agent (the answer to `ListAgents` lists them).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AgentInfoView {
    pub agent_id: String,
    pub hostname: String,
    pub total: Resources,
    pub used: Resources,
    pub active_tasks: u32,
    pub connected: bool,
    pub mode: HostMode,
    pub attributes: Vec<(String, String)>,
    /// `ip:port` of its HTTP sandbox server; empty: none.
    pub log_address: String,
}

/// One state change of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskEventView {
    pub unix_ms: u64,
    pub state: Option<TaskState>,
    pub message: String,
}

/// A role's quota and what its production tasks use of it (the answer to `GetQuota`).
/// `ports` is 0 in both: quotas do not count ports.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct QuotaView {
    pub role: String,
    /// Zero when `quota_set` is false.
    pub quota: Resources,
    pub used: Resources,
    /// False: the role has no quota, and its production jobs are refused.
    pub quota_set: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct JobSummaryView {
    pub job_key: String,
    pub instances: u32,
    pub is_service: bool,
    /// Tasks per state, indexed by `TaskState as usize`.
    pub state_counts: [u32; TaskState::COUNT],
    /// Set for a cron job: its schedule, next run and collision policy.
    pub cron: Option<CronSummaryView>,
    /// The job's active update, if any: its id and status.
    pub update: Option<(u64, UpdateStatus)>,
}

/// A cron job's schedule as a job summary carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronSummaryView {
    /// The five-field schedule (or shortcut), as the job file gave it.
    pub schedule: String,
    /// When it runs next (unix ms; wire: 0 means not known).
    pub next_run_unix_ms: Option<u64>,
    pub collision_policy: CollisionPolicy,
}

/// One job update, as `UpdateInfo` carries it (the answer to `StartUpdate`, `UpdateCommand`,
/// and each entry of `UpdateList`). `update.job` is `job_key`; `update`'s transient fields
/// (`last_pulse_us`, `watching`) are left default. Without details `update.instances`,
/// `update.events` and `configs` are empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateInfoView {
    pub job_key: String,
    pub update: JobUpdate,
    /// Instances taken and not settled (known without details too).
    pub in_flight: u32,
    /// Every revision named by `update.instances` (from and to), with its config.
    pub configs: Vec<(Rev, TaskConfig)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobStatusView {
    pub job: JobSummaryView,
    pub tasks: Vec<TaskInfoView>,
}

/// Puts together job statuses that come in parts ([`OwnedMessage::JobStatusPart`]s, then the
/// last as an [`OwnedMessage::JobStatus`], all with the request's id), for any number of
/// requests in flight.
#[derive(Debug, Default)]
pub struct JobStatusParts {
    partial: std::collections::HashMap<u64, JobStatusView>,
}

impl JobStatusParts {
    /// Takes one decoded message of `request_id`. A part with more to come is kept (`None`);
    /// the last part comes back as the whole status (the first part's summary, every part's
    /// tasks in order); anything else comes back as it is (and ends the request's parts).
    pub fn feed(&mut self, request_id: u64, message: OwnedMessage) -> Option<OwnedMessage> {
        match message {
            OwnedMessage::JobStatusPart(part) => {
                match self.partial.entry(request_id) {
                    std::collections::hash_map::Entry::Occupied(mut e) => {
                        e.get_mut().tasks.extend(part.tasks);
                    }
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(part);
                    }
                }
                None
            }
            OwnedMessage::JobStatus(last) => Some(OwnedMessage::JobStatus(
                match self.partial.remove(&request_id) {
                    Some(mut whole) => {
                        whole.tasks.extend(last.tasks);
                        whole
                    }
                    None => last,
                },
            )),
            other => {
                self.partial.remove(&request_id);
                Some(other)
            }
        }
    }

    /// True when no request has parts waiting for their last.
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }
}

/// A task that keeps a draining host from being DRAINED, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostBlockerView {
    pub task_id: TaskId,
    pub job_key: String,
    pub instance: u32,
    pub reason: String,
}

/// A host's maintenance status (the answer to `HostMaintenance`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostStatusView {
    pub host: String,
    pub mode: HostMode,
    /// Active tasks still on the host (draining hosts, as last counted).
    pub active_tasks: u32,
    /// Tasks the drain waits for, with the reason (at most a few per host).
    pub blocked: Vec<HostBlockerView>,
    /// When the drain forces what is left (unix ms; 0: no timeout).
    pub drain_deadline_ms: u64,
    /// The drain's timeout passed and it no longer waits for SLAs.
    pub forced: bool,
}

/// The machine-readable code of an error response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    UnknownJob,
    JobExists,
    TooManyTasks,
    Internal,
    Overloaded,
    /// This scheduler does not lead; `OwnedMessage::Error::leader` names the one that does.
    NotLeader,
    /// The request would take a role's production jobs over its quota (or the role has none).
    QuotaExceeded,
    /// No valid credentials (a client without a token, an agent without a certificate).
    Unauthenticated,
    /// Authenticated, but the principal may not do this.
    PermissionDenied,
}

/// Any message, decoded into owned values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedMessage {
    RegisterAgent(AgentRegistration),
    TaskStatus(TaskStatusReport),
    /// A client's token (the first request on a connection to a scheduler with auth).
    Authenticate {
        token: String,
    },
    /// A page of agents: those after `after` (hostname, agent_id; exclusive; None: from the
    /// first), at most `limit` (0: the scheduler's default).
    ListAgents {
        after: Option<(String, String)>,
        limit: u32,
    },
    /// A page of agents in (hostname, agent_id) order; `next`: the last of them, to ask for
    /// the next page after (None: there are no more).
    AgentList {
        agents: Vec<AgentInfoView>,
        next: Option<(String, String)>,
    },
    QueryTask {
        task_id: u64,
    },
    AgentRegistered {
        agent_id: String,
    },
    LaunchTask(LaunchView),
    KillTask {
        task_id: TaskId,
    },
    Reconcile {
        task_ids: Vec<TaskId>,
    },
    Heartbeat {
        timestamp_ms: u64,
    },
    /// The scheduler durably recorded each task in the paired state (scheduler -> agent).
    StatusAck(Vec<(TaskId, TaskState)>),
    CreateJob {
        job_key: JobKey,
        instances: u32,
        config: TaskConfig,
        /// The job file named no tier: the scheduler picks it from its tier config
        /// (`config.tier` is then the default). See `codec::tier_unset`.
        tier_unset: bool,
    },
    KillJob {
        job_key: JobKey,
        instances: Vec<u32>,
    },
    QueryJob {
        job_key: JobKey,
    },
    /// A page of jobs: those whose key sorts after `after` (exclusive; empty: from the first),
    /// at most `limit` (0: the scheduler's default).
    ListJobs {
        after: String,
        limit: u32,
    },
    /// Sets `role`'s quota; `quota.ports` is not carried (always 0).
    SetQuota {
        role: String,
        quota: Resources,
    },
    GetQuota {
        role: String,
    },
    QuotaInfo(QuotaView),
    HostMaintenance {
        op: MaintenanceOp,
        hosts: Vec<String>,
        /// Drain only: force what is left after this long (0: never).
        drain_timeout_secs: u64,
    },
    HostStatusList(Vec<HostStatusView>),
    RestartJob {
        job_key: JobKey,
        instances: Vec<u32>,
    },
    /// Starts a rolling update of the job to `config` with `instances` instances, over `scope`
    /// (empty: every instance).
    StartUpdate {
        job_key: JobKey,
        instances: u32,
        config: TaskConfig,
        /// The job file named no tier (see `codec::tier_unset`).
        tier_unset: bool,
        settings: UpdateSettings,
        scope: Vec<u32>,
        message: String,
    },
    /// A command on the job's active update.
    UpdateCommand {
        job_key: JobKey,
        command: Command,
        message: String,
    },
    /// One job's updates (`job_key` set) or every job's; `update_id` 0: all of them.
    QueryUpdates {
        job_key: Option<JobKey>,
        update_id: u64,
        details: bool,
    },
    UpdateInfo(UpdateInfoView),
    UpdateList(Vec<UpdateInfoView>),
    /// Schedules (or replaces) a cron job.
    ScheduleCron {
        job_key: JobKey,
        instances: u32,
        config: TaskConfig,
        /// The job file named no tier (see `codec::tier_unset`).
        tier_unset: bool,
        schedule: String,
        collision_policy: CollisionPolicy,
    },
    DescheduleCron {
        job_key: JobKey,
    },
    StartCron {
        job_key: JobKey,
    },
    /// A job's status, or the last part of one that came in parts.
    JobStatus(JobStatusView),
    /// A part of a big job's status that more parts follow (wire: `JobStatus.more`): the job's
    /// summary and the next slice of its tasks. [`JobStatusParts`] puts them together.
    JobStatusPart(JobStatusView),
    /// A page of jobs in key order; `next`: the last key of it, to ask for the next page after
    /// (empty: there are no more).
    JobList {
        jobs: Vec<JobSummaryView>,
        next: String,
    },
    Ack,
    Error {
        code: ErrorCode,
        message: String,
        /// With `NotLeader`: the leader's client address, when one is known.
        leader: Option<String>,
    },
}
