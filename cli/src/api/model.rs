//! The JSON shapes of the HTTP API (what `docs/http-api.md` lists and `/api/v1/openapi.json`
//! describes), and their conversions from the binary protocol's views.
//!
//! Conventions: times are unix milliseconds (`*_unix_ms`); resources are cores and MiB; task
//! ids are strings of 16 hex digits (a `u64` does not survive JavaScript's numbers); task
//! states, host modes and update statuses are Aurora's names.

use std::collections::BTreeMap;

use borealis_core::auth::{Permission, Principal};
use borealis_core::update::{InstanceProgress, JobUpdate, UpdateSettings};
use borealis_core::{Resources, TaskId, TaskState};
use borealis_net::views::{
    AgentInfoView, HostStatusView, JobSummaryView, QuotaView, TaskEventView, TaskInfoView,
    UpdateInfoView,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The error of every failed call: one line, and a machine-readable code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong, in one line (a bad field is named).
    pub error: String,
    /// `BadRequest`, `InvalidRequest`, `Unauthenticated`, `PermissionDenied`, `NotFound`,
    /// `UnknownJob`, `JobExists`, `QuotaExceeded`, `TooManyTasks`, `PayloadTooLarge`,
    /// `MethodNotAllowed`, `Overloaded`, `NotLeader`, `Unavailable` or `Internal`.
    pub code: String,
}

/// One page of a list: `total` counts what matched the filters, `items` holds at most the
/// page's `limit` of them from `offset` on.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub total: usize,
    pub offset: usize,
    pub items: Vec<T>,
}

/// Resources: `cpu` in cores, RAM and disk in MiB.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesJson {
    /// Cores (fractions allowed: 1.5).
    pub cpu: f64,
    pub ram_mib: u64,
    pub disk_mib: u64,
}

impl ResourcesJson {
    pub fn of(r: &Resources) -> ResourcesJson {
        ResourcesJson {
            cpu: f64::from(r.cpu_millis) / 1000.0,
            ram_mib: u64::from(r.ram_mib),
            disk_mib: u64::from(r.disk_mib),
        }
    }

    /// Sums, in u64 thousandths of a core and MiB (no overflow for any cluster).
    pub fn sum<'a>(all: impl Iterator<Item = &'a Resources>) -> ResourcesJson {
        let (mut cpu, mut ram, mut disk) = (0u64, 0u64, 0u64);
        for r in all {
            cpu += u64::from(r.cpu_millis);
            ram += u64::from(r.ram_mib);
            disk += u64::from(r.disk_mib);
        }
        ResourcesJson {
            cpu: cpu as f64 / 1000.0,
            ram_mib: ram,
            disk_mib: disk,
        }
    }
}

/// `GET /api/v1/whoami`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    /// Whether the scheduler checks tokens (`--auth-file`).
    pub auth: bool,
    /// The principal the token names; null without auth.
    pub principal: Option<String>,
    /// As the auth file writes them (`www:*`, `db:read`, `maintenance`, `admin`, `*`); `["*"]`
    /// without auth.
    pub permissions: Vec<String>,
}

impl WhoAmI {
    pub fn of(principal: Option<&Principal>) -> WhoAmI {
        match principal {
            None => WhoAmI {
                auth: false,
                principal: None,
                permissions: vec!["*".into()],
            },
            Some(p) => WhoAmI {
                auth: true,
                principal: Some(p.name.clone()),
                permissions: p.permissions.iter().map(permission_text).collect(),
            },
        }
    }
}

/// A permission as the auth file writes it.
pub fn permission_text(p: &Permission) -> String {
    match (&p.role, p.action) {
        (None, None) => "*".to_string(),
        (None, Some(a)) if a.is_cluster() => a.name().to_string(),
        (role, action) => format!(
            "{}:{}",
            role.as_deref().unwrap_or("*"),
            action.map_or("*", |a| a.name())
        ),
    }
}

/// Tasks per state name, listing only states that have tasks.
pub fn state_counts(counts: &[u32; TaskState::COUNT]) -> BTreeMap<String, u64> {
    TaskState::ALL
        .iter()
        .zip(counts)
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| (s.as_str().to_string(), u64::from(*n)))
        .collect()
}

/// A cron job's schedule.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CronJson {
    pub schedule: String,
    /// Null when not known.
    pub next_run_unix_ms: Option<u64>,
    /// `KILL_EXISTING`, `CANCEL_NEW` or `RUN_OVERLAP`.
    pub collision_policy: String,
}

/// A job's active update.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ActiveUpdate {
    pub id: u64,
    pub status: String,
}

/// A job: its key, instance count and tasks per state.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JobSummary {
    pub job_key: String,
    pub role: String,
    pub environment: String,
    pub name: String,
    pub instances: u32,
    pub is_service: bool,
    /// Tasks per state (states without tasks left out).
    pub tasks_by_state: BTreeMap<String, u64>,
    /// Null: not a cron job.
    pub cron: Option<CronJson>,
    /// Null: no active update.
    pub update: Option<ActiveUpdate>,
}

impl JobSummary {
    pub fn of(job: &JobSummaryView) -> JobSummary {
        let mut parts = job.job_key.splitn(3, '/');
        let mut part = || parts.next().unwrap_or_default().to_string();
        let (role, environment, name) = (part(), part(), part());
        JobSummary {
            job_key: job.job_key.clone(),
            role,
            environment,
            name,
            instances: job.instances,
            is_service: job.is_service,
            tasks_by_state: state_counts(&job.state_counts),
            cron: job.cron.as_ref().map(|c| CronJson {
                schedule: c.schedule.clone(),
                next_run_unix_ms: c.next_run_unix_ms,
                collision_policy: c.collision_policy.as_str().to_string(),
            }),
            update: job.update.map(|(id, status)| ActiveUpdate {
                id,
                status: status.as_str().to_string(),
            }),
        }
    }
}

/// A role: its jobs and their tasks per state.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RoleSummary {
    pub role: String,
    pub jobs: u64,
    pub tasks_by_state: BTreeMap<String, u64>,
}

/// Groups jobs by role, in role order.
pub fn roles_of(jobs: &[JobSummaryView]) -> Vec<RoleSummary> {
    let mut roles: BTreeMap<&str, (u64, [u64; TaskState::COUNT])> = BTreeMap::new();
    for job in jobs {
        let role = job.job_key.split('/').next().unwrap_or_default();
        let entry = roles.entry(role).or_insert((0, [0; TaskState::COUNT]));
        entry.0 += 1;
        for (sum, n) in entry.1.iter_mut().zip(&job.state_counts) {
            *sum += u64::from(*n);
        }
    }
    roles
        .into_iter()
        .map(|(role, (jobs, counts))| RoleSummary {
            role: role.to_string(),
            jobs,
            tasks_by_state: TaskState::ALL
                .iter()
                .zip(counts)
                .filter(|(_, n)| *n > 0)
                .map(|(s, n)| (s.as_str().to_string(), n))
                .collect(),
        })
        .collect()
}

/// One state change of a task.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TaskEvent {
    pub unix_ms: u64,
    pub state: String,
    pub message: String,
}

impl TaskEvent {
    fn of(e: &TaskEventView) -> TaskEvent {
        TaskEvent {
            unix_ms: e.unix_ms,
            state: state_name(e.state).to_string(),
            message: e.message.clone(),
        }
    }
}

/// What an ended task used, as its agent measured it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct TaskUsage {
    /// CPU time, user and system, in milliseconds.
    pub cpu_time_ms: u64,
    /// The most memory the task held at once (RSS and page cache charged to it), in bytes.
    pub peak_memory_bytes: u64,
    /// The sandbox's size when last measured, in bytes (0: not measured).
    pub disk_bytes: u64,
}

impl TaskUsage {
    fn of(u: &borealis_core::TaskUsage) -> TaskUsage {
        TaskUsage {
            cpu_time_ms: u.cpu_time_ms,
            peak_memory_bytes: u.peak_memory_bytes,
            disk_bytes: u.disk_bytes,
        }
    }
}

/// Where a task's output is read through this API.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct LogLinks {
    pub stdout: String,
    pub stderr: String,
}

/// An instance of a job: its task (the live one, else the latest) and that task's events.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Instance {
    pub instance: u32,
    /// 16 hex digits.
    pub task_id: String,
    pub state: String,
    /// Empty until the task is placed.
    pub agent_id: String,
    pub hostname: String,
    pub failure_count: u32,
    /// Null when the process has no exit code (still running, or killed by a signal).
    pub exit_code: Option<i32>,
    pub message: String,
    /// Named ports the agent assigned.
    pub ports: BTreeMap<String, u16>,
    /// The sandbox directory on the agent; empty when it has none yet.
    pub sandbox: String,
    /// Why a PENDING task is not placed yet; empty otherwise.
    pub pending_reason: String,
    /// The task that preempted this one (16 hex digits); null when none.
    pub preempted_by: Option<String>,
    /// What the task used, as its agent reported when it ended; null while it runs, and when
    /// the agent measured nothing.
    pub usage: Option<TaskUsage>,
    /// Milliseconds since the task's last state change; null without events.
    pub age_ms: Option<u64>,
    /// The task's latest state changes, oldest first.
    pub events: Vec<TaskEvent>,
    /// Null until the task is placed on an agent.
    pub logs: Option<LogLinks>,
}

pub fn task_id_text(id: u64) -> String {
    TaskId(id).to_string()
}

fn state_name(state: Option<TaskState>) -> &'static str {
    state.map_or("UNKNOWN", TaskState::as_str)
}

impl Instance {
    pub fn of(t: &TaskInfoView, now_ms: u64) -> Instance {
        let id = task_id_text(t.task_id);
        Instance {
            instance: t.instance,
            task_id: id.clone(),
            state: state_name(t.state).to_string(),
            agent_id: t.agent_id.clone(),
            hostname: t.hostname.clone(),
            failure_count: t.failure_count,
            exit_code: (t.exit_code != -1).then_some(t.exit_code),
            message: t.message.clone(),
            ports: t.ports.iter().cloned().collect(),
            sandbox: t.sandbox.clone(),
            pending_reason: t.pending_reason.clone(),
            preempted_by: t.preempted_by.map(task_id_text),
            usage: t.usage.as_ref().map(TaskUsage::of),
            age_ms: t.events.last().map(|e| now_ms.saturating_sub(e.unix_ms)),
            events: t.events.iter().map(TaskEvent::of).collect(),
            logs: (!t.agent_id.is_empty()).then(|| LogLinks {
                stdout: format!("/api/v1/tasks/{id}/logs/stdout"),
                stderr: format!("/api/v1/tasks/{id}/logs/stderr"),
            }),
        }
    }
}

/// Whether `a` is a better pick than `b` for its instance's current task: a live task beats
/// an ended one, then the newer (a job's tasks come from one shard's increasing ids).
fn newer_current(a: &TaskInfoView, b: &TaskInfoView) -> bool {
    let live = |t: &TaskInfoView| t.state.is_some_and(|s| !s.is_terminal());
    (live(a), a.task_id) > (live(b), b.task_id)
}

/// Each instance's current task, in instance order.
pub fn current_tasks(tasks: &[TaskInfoView]) -> Vec<&TaskInfoView> {
    let mut by_instance: BTreeMap<u32, &TaskInfoView> = BTreeMap::new();
    for t in tasks {
        match by_instance.get(&t.instance) {
            Some(best) if !newer_current(t, best) => {}
            _ => {
                by_instance.insert(t.instance, t);
            }
        }
    }
    by_instance.into_values().collect()
}

/// One instance's tasks: the current one and the others, newest first.
pub fn instance_history(
    tasks: &[TaskInfoView],
    instance: u32,
) -> Option<(&TaskInfoView, Vec<&TaskInfoView>)> {
    let mut mine: Vec<&TaskInfoView> = tasks.iter().filter(|t| t.instance == instance).collect();
    let current = mine
        .iter()
        .copied()
        .reduce(|best, t| if newer_current(t, best) { t } else { best })?;
    mine.retain(|t| t.task_id != current.task_id);
    mine.sort_by_key(|t| std::cmp::Reverse(t.task_id));
    Some((current, mine))
}

/// `GET /api/v1/jobs/{role}/{environment}/{name}`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JobDetail {
    pub job: JobSummary,
    /// One entry per instance (its current task), in instance order, paged.
    pub instances: Page<Instance>,
}

/// `GET .../instances/{instance}`: the instance and its earlier tasks.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InstanceDetail {
    pub job_key: String,
    pub instance: Instance,
    /// The instance's other tasks (ended ones the scheduler still keeps), newest first.
    pub history: Vec<Instance>,
}

/// `GET /api/v1/tasks/{task_id}`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TaskDetail {
    pub job_key: String,
    pub instance: Instance,
}

/// A registered agent.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Agent {
    pub agent_id: String,
    pub hostname: String,
    pub connected: bool,
    /// `NONE`, `SCHEDULED`, `DRAINING` or `DRAINED`.
    pub mode: String,
    pub total: ResourcesJson,
    pub used: ResourcesJson,
    pub active_tasks: u32,
    /// Attribute values; several values of one name are joined with `,`.
    pub attributes: BTreeMap<String, String>,
    /// `ip:port` of its log server; empty: it serves none.
    pub log_address: String,
}

impl Agent {
    pub fn of(a: &AgentInfoView) -> Agent {
        let mut attributes: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in &a.attributes {
            attributes
                .entry(k.clone())
                .and_modify(|all| {
                    all.push(',');
                    all.push_str(v);
                })
                .or_insert_with(|| v.clone());
        }
        Agent {
            agent_id: a.agent_id.clone(),
            hostname: a.hostname.clone(),
            connected: a.connected,
            mode: a.mode.as_str().to_string(),
            total: ResourcesJson::of(&a.total),
            used: ResourcesJson::of(&a.used),
            active_tasks: a.active_tasks,
            attributes,
            log_address: a.log_address.clone(),
        }
    }
}

/// The agents' counts in `GET /api/v1/cluster`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AgentCounts {
    pub total: u64,
    pub connected: u64,
    /// Agents per host mode (modes without agents left out).
    pub by_mode: BTreeMap<String, u64>,
}

/// The cluster's resources: what agents offer and what tasks use.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ClusterResources {
    pub total: ResourcesJson,
    pub used: ResourcesJson,
}

/// `GET /api/v1/cluster`: the overview page's numbers.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Cluster {
    pub cluster_name: String,
    pub agents: AgentCounts,
    pub resources: ClusterResources,
    /// Tasks per state over the jobs the caller may read.
    pub tasks_by_state: BTreeMap<String, u64>,
    pub jobs: u64,
    pub roles: u64,
    /// Tasks placed per second over about the last 10 seconds (measured by this scheduler).
    pub schedule_rate_per_sec: f64,
    /// Tasks placed since the scheduler started.
    pub tasks_placed_total: u64,
}

/// A task that keeps a draining host from being DRAINED.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HostBlocker {
    pub task_id: String,
    pub job_key: String,
    pub instance: u32,
    pub reason: String,
}

/// A host's maintenance status.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HostStatus {
    pub host: String,
    pub mode: String,
    pub active_tasks: u32,
    pub blocked: Vec<HostBlocker>,
    /// When the drain forces what is left; null: no timeout.
    pub drain_deadline_unix_ms: Option<u64>,
    /// The drain's timeout passed: it no longer waits for SLAs.
    pub forced: bool,
}

impl HostStatus {
    pub fn of(h: &HostStatusView) -> HostStatus {
        HostStatus {
            host: h.host.clone(),
            mode: h.mode.as_str().to_string(),
            active_tasks: h.active_tasks,
            blocked: h
                .blocked
                .iter()
                .map(|b| HostBlocker {
                    task_id: b.task_id.to_string(),
                    job_key: b.job_key.clone(),
                    instance: b.instance,
                    reason: b.reason.clone(),
                })
                .collect(),
            drain_deadline_unix_ms: (h.drain_deadline_ms != 0).then_some(h.drain_deadline_ms),
            forced: h.forced,
        }
    }
}

/// `GET /api/v1/quotas/{role}`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Quota {
    pub role: String,
    /// False: the role has no quota, and its production jobs are refused.
    pub quota_set: bool,
    /// Zero when `quota_set` is false.
    pub quota: ResourcesJson,
    /// What the role's production tasks hold.
    pub used: ResourcesJson,
}

impl Quota {
    pub fn of(q: &QuotaView) -> Quota {
        Quota {
            role: q.role.clone(),
            quota_set: q.quota_set,
            quota: ResourcesJson::of(&q.quota),
            used: ResourcesJson::of(&q.used),
        }
    }
}

/// An update in a list.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UpdateSummary {
    pub job_key: String,
    pub id: u64,
    pub status: String,
    pub active: bool,
    pub started_unix_ms: u64,
    pub updated_unix_ms: u64,
    /// Instances in the update's scope; null when the scheduler sent no per-instance progress
    /// (lists of every job's updates).
    pub instances_total: Option<u64>,
    /// Instances done (succeeded); null as for `instances_total`.
    pub instances_done: Option<u64>,
    pub in_flight: u32,
    /// Instances that failed in the current direction.
    pub failures: u32,
}

impl UpdateSummary {
    pub fn of(u: &UpdateInfoView) -> UpdateSummary {
        let up: &JobUpdate = &u.update;
        let detailed = !up.instances.is_empty();
        UpdateSummary {
            job_key: u.job_key.clone(),
            id: up.id,
            status: up.status.as_str().to_string(),
            active: up.status.is_active(),
            started_unix_ms: up.created_unix_ms,
            updated_unix_ms: up.updated_unix_ms,
            instances_total: detailed.then_some(up.instances.len() as u64),
            instances_done: detailed.then(|| {
                up.instances
                    .iter()
                    .filter(|p| p.phase == borealis_core::update::InstancePhase::Succeeded)
                    .count() as u64
            }),
            in_flight: u.in_flight,
            failures: up.failed_instances,
        }
    }
}

/// A job file's `[update]` section, as the update runs it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UpdateSettingsJson {
    pub batch_size: u32,
    pub max_per_instance_failures: u32,
    pub max_total_failures: u32,
    pub watch_secs: u32,
    pub rollback_on_failure: bool,
    pub wait_for_batch_completion: bool,
    /// Null: no pulses needed.
    pub pulse_interval_secs: Option<u32>,
    pub sla_aware: bool,
}

impl UpdateSettingsJson {
    fn of(s: &UpdateSettings) -> UpdateSettingsJson {
        UpdateSettingsJson {
            batch_size: s.batch_size,
            max_per_instance_failures: s.max_per_instance_failures,
            max_total_failures: s.max_total_failures,
            watch_secs: s.watch_secs,
            rollback_on_failure: s.rollback_on_failure,
            wait_for_batch_completion: s.wait_for_batch_completion,
            pulse_interval_secs: s.pulse_interval_secs,
            sla_aware: s.sla_aware,
        }
    }
}

/// One instance of an update's scope.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UpdateInstance {
    pub instance: u32,
    /// Null: the update adds the instance.
    pub from_rev: Option<u32>,
    /// Null: the update removes it.
    pub to_rev: Option<u32>,
    /// `WAITING`, `IN_FLIGHT`, `SUCCEEDED` or `FAILED`.
    pub phase: String,
    pub failures: u32,
    pub in_rollback: bool,
}

impl UpdateInstance {
    fn of(p: &InstanceProgress) -> UpdateInstance {
        UpdateInstance {
            instance: p.instance,
            from_rev: p.from,
            to_rev: p.to,
            phase: p.phase.as_str().to_string(),
            failures: p.failures,
            in_rollback: p.in_rollback,
        }
    }
}

/// A status change of an update.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UpdateEventJson {
    pub unix_ms: u64,
    pub status: String,
    pub message: String,
}

/// A configuration revision, as a job file.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UpdateConfig {
    pub rev: u32,
    pub job_file: String,
}

/// The unified diff of two revisions' job files (empty: the same).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UpdateDiff {
    pub from_rev: u32,
    pub to_rev: u32,
    pub diff: String,
}

/// `GET .../updates/{id}`: an update in detail.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UpdateDetail {
    pub summary: UpdateSummary,
    pub settings: UpdateSettingsJson,
    pub instances_before: u32,
    pub instances_after: u32,
    pub to_rev: u32,
    pub events: Vec<UpdateEventJson>,
    pub instances: Vec<UpdateInstance>,
    pub configs: Vec<UpdateConfig>,
    pub diffs: Vec<UpdateDiff>,
}

impl UpdateDetail {
    pub fn of(u: &UpdateInfoView) -> UpdateDetail {
        let up = &u.update;
        UpdateDetail {
            summary: UpdateSummary::of(u),
            settings: UpdateSettingsJson::of(&up.settings),
            instances_before: up.instances_before,
            instances_after: up.instances_after,
            to_rev: up.to_rev,
            events: up
                .events
                .iter()
                .map(|e| UpdateEventJson {
                    unix_ms: e.unix_ms,
                    status: e.status.as_str().to_string(),
                    message: e.message.clone(),
                })
                .collect(),
            instances: up.instances.iter().map(UpdateInstance::of).collect(),
            configs: u
                .configs
                .iter()
                .map(|(rev, config)| UpdateConfig {
                    rev: *rev,
                    job_file: crate::update::revision_job_file(up, *rev, config),
                })
                .collect(),
            diffs: crate::update::config_diffs(u)
                .into_iter()
                .map(|d| UpdateDiff {
                    from_rev: d.from_rev,
                    to_rev: d.to_rev,
                    diff: d.diff,
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------- request bodies

/// A job file, as `borealis job create` reads it (TOML).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobFileBody {
    /// The job file's text (see examples/hello.toml).
    pub job_file: String,
}

/// `POST .../restart`.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartBody {
    /// Instances to restart; null or absent: all.
    #[serde(default)]
    pub instances: Option<Vec<u32>>,
}

/// `POST .../updates`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartUpdateBody {
    /// The job file to update to (its `instances` is the count after the update, its
    /// `[update]` section the settings).
    pub job_file: String,
    /// Instances to update; null or absent: all.
    #[serde(default)]
    pub instances: Option<Vec<u32>>,
    /// Why: recorded in the update's first event.
    #[serde(default)]
    pub message: Option<String>,
}

/// `POST .../updates/{id}/{command}` (the body is optional).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCommandBody {
    /// Why: recorded in the update's event.
    #[serde(default)]
    pub message: Option<String>,
}

/// `POST /api/v1/maintenance/{op}`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceBody {
    /// Host names (1 to 1000).
    pub hosts: Vec<String>,
    /// Drain only: force what is left after this many seconds; null or absent: wait for ever.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

// ---------------------------------------------------------------- small answers

/// A job acted on.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JobAck {
    pub job_key: String,
}

/// Instances of a job acted on (kill, restart).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InstancesAck {
    pub job_key: String,
    /// The instances named; null: all of them.
    pub instances: Option<Vec<u32>>,
}

/// A cron job scheduled.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CronAck {
    pub job_key: String,
    pub instances: u32,
    pub cron: CronJson,
}

/// A backup requested.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BackupAck {
    /// The backup's name (every shard writes into it within seconds).
    pub backup: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: u64, instance: u32, state: TaskState) -> TaskInfoView {
        TaskInfoView {
            task_id: id,
            instance,
            state: Some(state),
            ..TaskInfoView::default()
        }
    }

    #[test]
    fn the_live_task_is_an_instances_current_one_else_the_newest() {
        let tasks = vec![
            task(5, 0, TaskState::Failed),
            task(3, 0, TaskState::Running),
            task(7, 1, TaskState::Finished),
            task(9, 1, TaskState::Failed),
            task(2, 2, TaskState::Pending),
        ];
        let current: Vec<u64> = current_tasks(&tasks).iter().map(|t| t.task_id).collect();
        assert_eq!(current, [3, 9, 2]);
        let (now, before) = instance_history(&tasks, 1).unwrap();
        assert_eq!(now.task_id, 9);
        assert_eq!(before.iter().map(|t| t.task_id).collect::<Vec<_>>(), [7]);
        assert!(instance_history(&tasks, 4).is_none());
    }

    #[test]
    fn an_instance_shows_ids_as_hex_and_no_exit_code_as_null() {
        let mut t = task(0xab, 3, TaskState::Running);
        t.exit_code = -1;
        t.agent_id = "a1".into();
        t.preempted_by = Some(0x10);
        t.events = vec![TaskEventView {
            unix_ms: 1_000,
            state: Some(TaskState::Running),
            message: "started".into(),
        }];
        let i = Instance::of(&t, 1_500);
        assert_eq!(i.task_id, "00000000000000ab");
        assert_eq!(i.exit_code, None);
        assert_eq!(i.preempted_by.as_deref(), Some("0000000000000010"));
        assert_eq!(i.age_ms, Some(500));
        assert_eq!(
            i.logs.unwrap().stderr,
            "/api/v1/tasks/00000000000000ab/logs/stderr"
        );
        t.agent_id.clear();
        t.exit_code = 0;
        let i = Instance::of(&t, 1_500);
        assert!(i.logs.is_none());
        assert_eq!(i.exit_code, Some(0));
        assert_eq!(i.usage, None);
        assert_eq!(
            serde_json::to_value(&i).unwrap()["usage"],
            serde_json::Value::Null
        );
        t.state = Some(TaskState::Finished);
        t.usage = Some(borealis_core::TaskUsage {
            cpu_time_ms: 1_234,
            peak_memory_bytes: 56 << 20,
            disk_bytes: 4096,
        });
        let i = Instance::of(&t, 1_500);
        assert_eq!(
            serde_json::to_value(&i).unwrap()["usage"],
            serde_json::json!({
                "cpu_time_ms": 1234,
                "peak_memory_bytes": 58_720_256,
                "disk_bytes": 4096
            })
        );
    }

    #[test]
    fn roles_sum_their_jobs() {
        let mut a = JobSummaryView {
            job_key: "www/prod/a".into(),
            ..JobSummaryView::default()
        };
        a.state_counts[TaskState::Running as usize] = 2;
        let mut b = a.clone();
        b.job_key = "www/prod/b".into();
        let c = JobSummaryView {
            job_key: "db/prod/c".into(),
            ..JobSummaryView::default()
        };
        let roles = roles_of(&[a, b, c]);
        assert_eq!(roles.len(), 2);
        assert_eq!(roles[0].role, "db");
        assert!(roles[0].tasks_by_state.is_empty());
        assert_eq!(roles[1].jobs, 2);
        assert_eq!(roles[1].tasks_by_state["RUNNING"], 4);
    }

    #[test]
    fn permissions_read_back_as_the_auth_file_writes_them() {
        let perms: Vec<String> = ["www:*", "db:read", "*:kill", "maintenance", "admin", "*"]
            .iter()
            .map(|t| permission_text(&Permission::parse(t).unwrap()))
            .collect();
        assert_eq!(
            perms,
            ["www:*", "db:read", "*:kill", "maintenance", "admin", "*"]
        );
    }

    #[test]
    fn resources_sum_without_overflow() {
        let big = Resources {
            cpu_millis: u32::MAX,
            ram_mib: u32::MAX,
            disk_mib: 1,
            ports: 0,
        };
        let sum = ResourcesJson::sum([big, big].iter());
        assert_eq!(sum.ram_mib, 2 * u64::from(u32::MAX));
        assert_eq!(sum.cpu, 2.0 * f64::from(u32::MAX) / 1000.0);
    }
}
