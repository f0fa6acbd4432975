//! Builders for every message and the verified decode of one.

use borealis_core::cron::CollisionPolicy;
use borealis_core::update::{
    Command, InstancePhase, InstanceProgress, JobUpdate, Rev, UpdateEvent, UpdateSettings,
    UpdateStatus,
};
use borealis_core::{
    Constraint, HealthCheck, HealthChecker, HostMode, HttpLifecycle, JobKey, MaintenanceOp,
    PartitionPolicy, Resources, SlaPolicy, TaskConfig, TaskId, TaskState, TaskUsage, Tier,
};
use flatbuffers::{FlatBufferBuilder, WIPOffset};

use crate::views::*;
use crate::wire;

/// Jobs (or agents) a `ListJobs` (`ListAgents`) page holds when the request names no limit.
pub const LIST_PAGE_DEFAULT: u32 = 1_000;
/// The most a page holds; a larger limit is clamped to it (not refused: a client that pages
/// on `next` gets everything either way). 10,000 of the largest job summaries (386-byte keys,
/// a cron schedule) encode to about 6 MiB, well under a frame.
pub const LIST_PAGE_MAX: u32 = 10_000;
/// Encoded bytes after which a page ends before its limit (agents' attributes are not bounded
/// in number or length): `next` says where it ended.
pub const LIST_PAGE_BYTES_MAX: usize = 8 << 20;
/// Encoded bytes after which a job status goes on in another part (`JobStatus.more`).
pub const JOB_STATUS_PART_BYTES: usize = 4 << 20;
/// The most active updates a cluster-wide `QueryUpdates` lists (more is refused: one job's
/// are asked for by its key). 10,000 without details encode to about 5 MiB at most.
pub const UPDATES_LIST_MAX: usize = 10_000;

/// The page size a request's `limit` asks for: 0 is [`LIST_PAGE_DEFAULT`], more than
/// [`LIST_PAGE_MAX`] is [`LIST_PAGE_MAX`].
pub fn page_limit(limit: u32) -> usize {
    match limit {
        0 => LIST_PAGE_DEFAULT as usize,
        n => n.min(LIST_PAGE_MAX) as usize,
    }
}

/// At least what a summary adds to an encoded `JobList` (its table, strings and counts, and
/// its offset in the vector), for cutting pages by bytes.
pub fn job_summary_bytes(j: &JobSummaryView) -> usize {
    200 + j.job_key.len() + j.cron.as_ref().map_or(0, |c| c.schedule.len())
}

/// At least what an agent adds to an encoded `AgentList`.
pub fn agent_info_bytes(a: &AgentInfoView) -> usize {
    200 + a.agent_id.len()
        + a.hostname.len()
        + a.log_address.len()
        + a.attributes
            .iter()
            .map(|(k, v)| 48 + k.len() + v.len())
            .sum::<usize>()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("invalid field {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
}

/// Verifies a message's flatbuffer (bounds, offsets, required fields) and returns a zero-copy
/// reader over it. Everything read through the result afterwards is in bounds.
pub fn decode_message(bytes: &[u8]) -> Result<wire::Message<'_>, WireError> {
    let opts = flatbuffers::VerifierOptions {
        max_depth: 32,
        max_tables: 1_000_000,
        max_apparent_size: crate::FRAME_BYTES_MAX,
        ignore_missing_null_terminator: false,
    };
    let message = flatbuffers::root_with_opts::<wire::Message>(&opts, bytes)
        .map_err(|e| WireError::Malformed(one_line(&e.to_string())))?;
    if message.payload_type().0 > wire::Payload::ENUM_MAX {
        return Err(WireError::UnknownType(message.payload_type().0));
    }
    if message.payload_type() == wire::Payload::NONE {
        return Err(WireError::UnknownType(0));
    }
    Ok(message)
}

/// The verifier's messages span several lines; logs and errors want one.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn state_to_wire(state: TaskState) -> wire::TaskState {
    wire::TaskState(state as u8)
}

pub fn state_from_wire(state: wire::TaskState) -> Result<TaskState, WireError> {
    TaskState::from_u8(state.0).ok_or_else(|| WireError::InvalidField {
        field: "state",
        reason: format!("unknown task state {}", state.0),
    })
}

fn tier_to_wire(tier: Tier) -> wire::Tier {
    match tier {
        Tier::Preferred => wire::Tier::Preferred,
        Tier::Preemptible => wire::Tier::Preemptible,
        Tier::Revocable => wire::Tier::Revocable,
    }
}

fn tier_from_wire(tier: wire::Tier) -> Result<Tier, WireError> {
    match tier {
        wire::Tier::Preferred => Ok(Tier::Preferred),
        wire::Tier::Preemptible => Ok(Tier::Preemptible),
        wire::Tier::Revocable => Ok(Tier::Revocable),
        other => Err(WireError::InvalidField {
            field: "tier",
            reason: format!("unknown tier {}", other.0),
        }),
    }
}

pub fn resources_to_wire(r: &Resources) -> wire::Resources {
    wire::Resources::new(r.cpu_millis, r.ram_mib, r.disk_mib, r.ports)
}

pub fn resources_from_wire(r: &wire::Resources) -> Resources {
    Resources {
        cpu_millis: r.cpu_millis(),
        ram_mib: r.ram_mib(),
        disk_mib: r.disk_mib(),
        ports: r.ports(),
    }
}

fn parse_job_key(text: &str) -> Result<JobKey, WireError> {
    text.parse()
        .map_err(|e: borealis_core::JobKeyError| WireError::InvalidField {
            field: "job_key",
            reason: e.to_string(),
        })
}

/// Whether a wire task config says its job file named no tier, so the scheduler resolves the
/// tier from its tier config (`tier` then holds the default, `Preferred`). Older clients never
/// set it: their `tier` is always the one asked for.
pub fn tier_unset(c: wire::TaskConfig<'_>) -> bool {
    c.tier_unset()
}

/// Reads a wire task config into the core type (used when a job is created, not per task).
/// The tier is `c.tier()` as sent; see [`tier_unset`] for whether the client chose it.
pub fn task_config_from_wire(
    job: JobKey,
    c: wire::TaskConfig<'_>,
) -> Result<TaskConfig, WireError> {
    let mut constraints = Vec::new();
    for constraint in c.constraints().iter().flatten() {
        if let Some(v) = constraint.kind_as_value_constraint() {
            constraints.push(Constraint::Value {
                attribute: v.attribute().to_string(),
                negated: v.negated(),
                values: v.values().iter().flatten().map(str::to_string).collect(),
            });
        } else if let Some(l) = constraint.kind_as_limit_constraint() {
            constraints.push(Constraint::Limit {
                attribute: l.attribute().to_string(),
                limit: l.limit(),
            });
        } else {
            return Err(WireError::InvalidField {
                field: "constraints",
                reason: "unknown constraint kind".into(),
            });
        }
    }
    Ok(TaskConfig {
        job,
        command: c.command().to_string(),
        resources: resources_from_wire(c.resources()),
        port_names: c
            .port_names()
            .iter()
            .flatten()
            .map(str::to_string)
            .collect(),
        constraints,
        tier: tier_from_wire(c.tier())?,
        priority: c.priority(),
        production: c.production(),
        is_service: c.is_service(),
        max_task_failures: c.max_task_failures(),
        finalization_wait_secs: c.finalization_wait_secs(),
        health_check: c.health_check().map(health_check_from_wire).transpose()?,
        http_lifecycle: c.http_lifecycle().map(|h| HttpLifecycle {
            port: h.port().to_string(),
            graceful_shutdown_endpoint: h.graceful_shutdown_endpoint().to_string(),
            shutdown_endpoint: h.shutdown_endpoint().to_string(),
            graceful_shutdown_wait_secs: h.graceful_shutdown_wait_secs(),
            shutdown_wait_secs: h.shutdown_wait_secs(),
        }),
        sla_policy: c.sla_policy().map(sla_policy_from_wire).transpose()?,
        partition_policy: c.partition_policy().map(|p| PartitionPolicy {
            reschedule: p.reschedule(),
            delay_secs: p.delay_secs(),
        }),
    })
}

fn health_check_from_wire(h: wire::HealthCheck<'_>) -> Result<HealthCheck, WireError> {
    let checker = if let Some(http) = h.checker_as_http_health_check() {
        HealthChecker::Http {
            port: http.port().to_string(),
            endpoint: http.endpoint().to_string(),
            expected_status: http.expected_status(),
        }
    } else if let Some(shell) = h.checker_as_shell_health_check() {
        HealthChecker::Shell {
            command: shell.command().to_string(),
        }
    } else {
        return Err(WireError::InvalidField {
            field: "health_check",
            reason: "unknown health checker kind".into(),
        });
    };
    Ok(HealthCheck {
        checker,
        initial_interval_secs: h.initial_interval_secs(),
        interval_secs: h.interval_secs(),
        timeout_secs: h.timeout_secs(),
        max_consecutive_failures: h.max_consecutive_failures(),
        min_consecutive_successes: h.min_consecutive_successes(),
    })
}

fn sla_policy_from_wire(p: wire::SlaPolicy<'_>) -> Result<SlaPolicy, WireError> {
    if let Some(c) = p.kind_as_count_sla() {
        Ok(SlaPolicy::Count {
            count: c.count(),
            duration_secs: c.duration_secs(),
        })
    } else if let Some(c) = p.kind_as_percentage_sla() {
        Ok(SlaPolicy::Percentage {
            percentage_millis: c.percentage_millis(),
            duration_secs: c.duration_secs(),
        })
    } else if let Some(c) = p.kind_as_coordinator_sla() {
        Ok(SlaPolicy::Coordinator {
            coordinator_url: c.coordinator_url().to_string(),
            status_key: c.status_key().to_string(),
        })
    } else {
        Err(WireError::InvalidField {
            field: "sla_policy",
            reason: "unknown SLA policy kind".into(),
        })
    }
}

fn task_status_from_wire(s: wire::TaskStatus<'_>) -> Result<TaskStatusReport, WireError> {
    Ok(TaskStatusReport {
        task_id: TaskId(s.task_id()),
        job_key: s.job_key().to_string(),
        instance: s.instance(),
        state: state_from_wire(s.state())?,
        exit_code: s.exit_code(),
        message: s.message().unwrap_or_default().to_string(),
        timestamp_ms: s.timestamp_ms(),
        sandbox: s.sandbox().unwrap_or_default().to_string(),
        usage: s.usage().map(usage_from_wire),
    })
}

fn usage_from_wire(u: &wire::TaskUsage) -> TaskUsage {
    TaskUsage {
        cpu_time_ms: u.cpu_time_ms(),
        peak_memory_bytes: u.peak_memory_bytes(),
        disk_bytes: u.disk_bytes(),
    }
}

fn usage_to_wire(u: &TaskUsage) -> wire::TaskUsage {
    wire::TaskUsage::new(u.cpu_time_ms, u.peak_memory_bytes, u.disk_bytes)
}

fn ports_from_wire(
    ports: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<wire::AssignedPort<'_>>>>,
) -> Vec<(String, u16)> {
    ports
        .iter()
        .flatten()
        .map(|p| (p.name().to_string(), p.port()))
        .collect()
}

fn task_info_from_wire(t: wire::TaskInfo<'_>) -> TaskInfoView {
    TaskInfoView {
        task_id: t.task_id(),
        instance: t.instance(),
        state: TaskState::from_u8(t.state().0),
        agent_id: t.agent_id().unwrap_or_default().to_string(),
        hostname: t.hostname().unwrap_or_default().to_string(),
        failure_count: t.failure_count(),
        exit_code: t.exit_code(),
        message: t.message().unwrap_or_default().to_string(),
        ports: ports_from_wire(t.ports()),
        sandbox: t.sandbox().unwrap_or_default().to_string(),
        pending_reason: t.pending_reason().unwrap_or_default().to_string(),
        preempted_by: Some(t.preempted_by()).filter(|&id| id != 0),
        events: t
            .events()
            .iter()
            .flatten()
            .map(|e| TaskEventView {
                unix_ms: e.unix_ms(),
                state: TaskState::from_u8(e.state().0),
                message: e.message().unwrap_or_default().to_string(),
            })
            .collect(),
        usage: t.usage().map(usage_from_wire),
    }
}

/// A quota's resources: absent reads as zero; quotas do not count ports.
fn quota_resources_from_wire(r: Option<&wire::Resources>) -> Resources {
    r.map(|r| Resources {
        ports: 0,
        ..resources_from_wire(r)
    })
    .unwrap_or_default()
}

fn job_summary_from_wire(j: wire::JobSummary<'_>) -> Result<JobSummaryView, WireError> {
    let mut state_counts = [0u32; TaskState::COUNT];
    for (i, n) in j
        .state_counts()
        .iter()
        .flatten()
        .enumerate()
        .take(TaskState::COUNT)
    {
        state_counts[i] = n;
    }
    let cron = match j.cron_schedule() {
        Some(schedule) => Some(CronSummaryView {
            schedule: schedule.to_string(),
            next_run_unix_ms: Some(j.cron_next_run_unix_ms()).filter(|&ms| ms != 0),
            collision_policy: collision_policy_from_wire(j.cron_collision_policy())?,
        }),
        None => None,
    };
    let update = if j.has_update() {
        Some((j.update_id(), update_status_from_wire(j.update_status())?))
    } else {
        None
    };
    Ok(JobSummaryView {
        job_key: j.job_key().to_string(),
        instances: j.instances(),
        is_service: j.is_service(),
        state_counts,
        cron,
        update,
    })
}

pub fn update_status_to_wire(status: UpdateStatus) -> wire::UpdateStatus {
    match status {
        UpdateStatus::RollingForward => wire::UpdateStatus::RollingForward,
        UpdateStatus::RollingBack => wire::UpdateStatus::RollingBack,
        UpdateStatus::RollForwardPaused => wire::UpdateStatus::RollForwardPaused,
        UpdateStatus::RollBackPaused => wire::UpdateStatus::RollBackPaused,
        UpdateStatus::RollForwardAwaitingPulse => wire::UpdateStatus::RollForwardAwaitingPulse,
        UpdateStatus::RollBackAwaitingPulse => wire::UpdateStatus::RollBackAwaitingPulse,
        UpdateStatus::RolledForward => wire::UpdateStatus::RolledForward,
        UpdateStatus::RolledBack => wire::UpdateStatus::RolledBack,
        UpdateStatus::Aborted => wire::UpdateStatus::Aborted,
        UpdateStatus::Error => wire::UpdateStatus::Error,
        UpdateStatus::Failed => wire::UpdateStatus::Failed,
    }
}

/// An update status off the wire; a value this build does not know is an error.
pub fn update_status_from_wire(status: wire::UpdateStatus) -> Result<UpdateStatus, WireError> {
    Ok(match status {
        wire::UpdateStatus::RollingForward => UpdateStatus::RollingForward,
        wire::UpdateStatus::RollingBack => UpdateStatus::RollingBack,
        wire::UpdateStatus::RollForwardPaused => UpdateStatus::RollForwardPaused,
        wire::UpdateStatus::RollBackPaused => UpdateStatus::RollBackPaused,
        wire::UpdateStatus::RollForwardAwaitingPulse => UpdateStatus::RollForwardAwaitingPulse,
        wire::UpdateStatus::RollBackAwaitingPulse => UpdateStatus::RollBackAwaitingPulse,
        wire::UpdateStatus::RolledForward => UpdateStatus::RolledForward,
        wire::UpdateStatus::RolledBack => UpdateStatus::RolledBack,
        wire::UpdateStatus::Aborted => UpdateStatus::Aborted,
        wire::UpdateStatus::Error => UpdateStatus::Error,
        wire::UpdateStatus::Failed => UpdateStatus::Failed,
        other => {
            return Err(WireError::InvalidField {
                field: "update_status",
                reason: format!("unknown update status {}", other.0),
            })
        }
    })
}

pub fn instance_phase_to_wire(phase: InstancePhase) -> wire::InstancePhase {
    match phase {
        InstancePhase::Waiting => wire::InstancePhase::Waiting,
        InstancePhase::InFlight => wire::InstancePhase::InFlight,
        InstancePhase::Succeeded => wire::InstancePhase::Succeeded,
        InstancePhase::Failed => wire::InstancePhase::Failed,
    }
}

pub fn instance_phase_from_wire(phase: wire::InstancePhase) -> Result<InstancePhase, WireError> {
    match phase {
        wire::InstancePhase::Waiting => Ok(InstancePhase::Waiting),
        wire::InstancePhase::InFlight => Ok(InstancePhase::InFlight),
        wire::InstancePhase::Succeeded => Ok(InstancePhase::Succeeded),
        wire::InstancePhase::Failed => Ok(InstancePhase::Failed),
        other => Err(WireError::InvalidField {
            field: "phase",
            reason: format!("unknown instance phase {}", other.0),
        }),
    }
}

pub fn update_op_to_wire(command: Command) -> wire::UpdateOp {
    match command {
        Command::Pause => wire::UpdateOp::Pause,
        Command::Resume => wire::UpdateOp::Resume,
        Command::Abort => wire::UpdateOp::Abort,
        Command::Rollback => wire::UpdateOp::Rollback,
        Command::Pulse => wire::UpdateOp::Pulse,
    }
}

/// An update command off the wire; a value this build does not know is an error.
pub fn update_op_from_wire(op: wire::UpdateOp) -> Result<Command, WireError> {
    match op {
        wire::UpdateOp::Pause => Ok(Command::Pause),
        wire::UpdateOp::Resume => Ok(Command::Resume),
        wire::UpdateOp::Abort => Ok(Command::Abort),
        wire::UpdateOp::Rollback => Ok(Command::Rollback),
        wire::UpdateOp::Pulse => Ok(Command::Pulse),
        other => Err(WireError::InvalidField {
            field: "op",
            reason: format!("unknown update operation {}", other.0),
        }),
    }
}

pub fn collision_policy_to_wire(policy: CollisionPolicy) -> wire::CollisionPolicy {
    match policy {
        CollisionPolicy::KillExisting => wire::CollisionPolicy::KillExisting,
        CollisionPolicy::CancelNew => wire::CollisionPolicy::CancelNew,
    }
}

/// A cron collision policy off the wire; a value this build does not know is an error.
pub fn collision_policy_from_wire(
    policy: wire::CollisionPolicy,
) -> Result<CollisionPolicy, WireError> {
    match policy {
        wire::CollisionPolicy::KillExisting => Ok(CollisionPolicy::KillExisting),
        wire::CollisionPolicy::CancelNew => Ok(CollisionPolicy::CancelNew),
        other => Err(WireError::InvalidField {
            field: "collision_policy",
            reason: format!("unknown cron collision policy {}", other.0),
        }),
    }
}

/// Update settings off the wire, as sent (`pulse_interval_secs` 0: none). Not validated: the
/// scheduler holds them to [`UpdateSettings::validate`].
pub fn update_settings_from_wire(s: wire::UpdateSettings<'_>) -> UpdateSettings {
    UpdateSettings {
        batch_size: s.batch_size(),
        max_per_instance_failures: s.max_per_instance_failures(),
        max_total_failures: s.max_total_failures(),
        watch_secs: s.watch_secs(),
        rollback_on_failure: s.rollback_on_failure(),
        wait_for_batch_completion: s.wait_for_batch_completion(),
        pulse_interval_secs: Some(s.pulse_interval_secs()).filter(|&secs| secs != 0),
        sla_aware: s.sla_aware(),
    }
}

/// A revision of `UpdateInstance`: -1 is none, anything else must be a `Rev`.
fn rev_from_wire(rev: i64, field: &'static str) -> Result<Option<Rev>, WireError> {
    match rev {
        -1 => Ok(None),
        rev => Rev::try_from(rev)
            .map(Some)
            .map_err(|_| WireError::InvalidField {
                field,
                reason: format!("revision {rev} is out of range"),
            }),
    }
}

fn rev_to_wire(rev: Option<Rev>) -> i64 {
    rev.map_or(-1, i64::from)
}

fn update_info_from_wire(u: wire::UpdateInfo<'_>) -> Result<UpdateInfoView, WireError> {
    let job_key = u.job_key().to_string();
    let mut instances = Vec::new();
    for i in u.instances().iter().flatten() {
        instances.push(InstanceProgress {
            instance: i.instance(),
            from: rev_from_wire(i.from_rev(), "from_rev")?,
            to: rev_from_wire(i.to_rev(), "to_rev")?,
            phase: instance_phase_from_wire(i.phase())?,
            failures: i.failures(),
            in_rollback: i.in_rollback(),
        });
    }
    let mut events = Vec::new();
    for e in u.events().iter().flatten() {
        events.push(UpdateEvent {
            unix_ms: e.unix_ms(),
            status: update_status_from_wire(e.status())?,
            message: e.message().unwrap_or_default().to_string(),
        });
    }
    let mut configs = Vec::new();
    if let Some(wire_configs) = u.configs() {
        let job = parse_job_key(&job_key)?;
        for c in wire_configs.iter() {
            configs.push((c.rev(), task_config_from_wire(job.clone(), c.config())?));
        }
    }
    let update = JobUpdate {
        id: u.update_id(),
        job: job_key.clone(),
        settings: u
            .settings()
            .map(update_settings_from_wire)
            .unwrap_or_default(),
        status: update_status_from_wire(u.status())?,
        instances_before: u.instances_before(),
        instances_after: u.instances_after(),
        to_rev: u.to_rev(),
        instances,
        failed_instances: u.failed_instances(),
        created_unix_ms: u.created_unix_ms(),
        updated_unix_ms: u.updated_unix_ms(),
        events,
        last_pulse_us: None,
        watching: Vec::new(),
    };
    Ok(UpdateInfoView {
        job_key,
        update,
        in_flight: u.in_flight(),
        configs,
    })
}

/// Decodes any message into owned values, returning its request id too.
pub fn maintenance_op_from_wire(op: wire::MaintenanceOp) -> Result<MaintenanceOp, WireError> {
    match op {
        wire::MaintenanceOp::Start => Ok(MaintenanceOp::Start),
        wire::MaintenanceOp::Drain => Ok(MaintenanceOp::Drain),
        wire::MaintenanceOp::Status => Ok(MaintenanceOp::Status),
        wire::MaintenanceOp::End => Ok(MaintenanceOp::End),
        other => Err(WireError::InvalidField {
            field: "op",
            reason: format!("unknown maintenance operation {}", other.0),
        }),
    }
}

fn maintenance_op_to_wire(op: MaintenanceOp) -> wire::MaintenanceOp {
    match op {
        MaintenanceOp::Start => wire::MaintenanceOp::Start,
        MaintenanceOp::Drain => wire::MaintenanceOp::Drain,
        MaintenanceOp::Status => wire::MaintenanceOp::Status,
        MaintenanceOp::End => wire::MaintenanceOp::End,
    }
}

pub fn host_mode_from_wire(mode: wire::HostMode) -> Result<HostMode, WireError> {
    HostMode::from_u8(mode.0).ok_or_else(|| WireError::InvalidField {
        field: "mode",
        reason: format!("unknown host mode {}", mode.0),
    })
}

pub fn host_mode_to_wire(mode: HostMode) -> wire::HostMode {
    wire::HostMode(mode as u8)
}

fn health_check_to_wire(
    fbb: &mut FlatBufferBuilder<'static>,
    h: &HealthCheck,
) -> WIPOffset<wire::HealthCheck<'static>> {
    let (checker_type, checker) = match &h.checker {
        HealthChecker::Http {
            port,
            endpoint,
            expected_status,
        } => {
            let port = fbb.create_string(port);
            let endpoint = fbb.create_string(endpoint);
            let http = wire::HttpHealthCheck::create(
                fbb,
                &wire::HttpHealthCheckArgs {
                    port: Some(port),
                    endpoint: Some(endpoint),
                    expected_status: *expected_status,
                },
            );
            (wire::HealthChecker::HttpHealthCheck, http.as_union_value())
        }
        HealthChecker::Shell { command } => {
            let command = fbb.create_string(command);
            let shell = wire::ShellHealthCheck::create(
                fbb,
                &wire::ShellHealthCheckArgs {
                    command: Some(command),
                },
            );
            (
                wire::HealthChecker::ShellHealthCheck,
                shell.as_union_value(),
            )
        }
    };
    wire::HealthCheck::create(
        fbb,
        &wire::HealthCheckArgs {
            checker_type,
            checker: Some(checker),
            initial_interval_secs: h.initial_interval_secs,
            interval_secs: h.interval_secs,
            timeout_secs: h.timeout_secs,
            max_consecutive_failures: h.max_consecutive_failures,
            min_consecutive_successes: h.min_consecutive_successes,
        },
    )
}

fn sla_policy_to_wire(
    fbb: &mut FlatBufferBuilder<'static>,
    p: &SlaPolicy,
) -> WIPOffset<wire::SlaPolicy<'static>> {
    let (kind_type, kind) = match p {
        SlaPolicy::Count {
            count,
            duration_secs,
        } => (
            wire::SlaKind::CountSla,
            wire::CountSla::create(
                fbb,
                &wire::CountSlaArgs {
                    count: *count,
                    duration_secs: *duration_secs,
                },
            )
            .as_union_value(),
        ),
        SlaPolicy::Percentage {
            percentage_millis,
            duration_secs,
        } => (
            wire::SlaKind::PercentageSla,
            wire::PercentageSla::create(
                fbb,
                &wire::PercentageSlaArgs {
                    percentage_millis: *percentage_millis,
                    duration_secs: *duration_secs,
                },
            )
            .as_union_value(),
        ),
        SlaPolicy::Coordinator {
            coordinator_url,
            status_key,
        } => {
            let url = fbb.create_string(coordinator_url);
            let key = fbb.create_string(status_key);
            (
                wire::SlaKind::CoordinatorSla,
                wire::CoordinatorSla::create(
                    fbb,
                    &wire::CoordinatorSlaArgs {
                        coordinator_url: Some(url),
                        status_key: Some(key),
                    },
                )
                .as_union_value(),
            )
        }
    };
    wire::SlaPolicy::create(
        fbb,
        &wire::SlaPolicyArgs {
            kind_type,
            kind: Some(kind),
        },
    )
}

/// The agents of an `AgentList`.
fn agent_infos_from_wire(
    agents: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<wire::AgentInfo<'_>>>>,
) -> Result<Vec<AgentInfoView>, WireError> {
    agents
        .iter()
        .flatten()
        .map(|a| {
            Ok(AgentInfoView {
                agent_id: a.agent_id().to_string(),
                hostname: a.hostname().to_string(),
                total: a.total().map(resources_from_wire).unwrap_or_default(),
                used: a.used().map(resources_from_wire).unwrap_or_default(),
                active_tasks: a.active_tasks(),
                connected: a.connected(),
                mode: host_mode_from_wire(a.mode())?,
                attributes: a
                    .attributes()
                    .iter()
                    .flatten()
                    .map(|x| (x.key().to_string(), x.value().to_string()))
                    .collect(),
                log_address: a.log_address().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

pub fn to_owned(message: wire::Message<'_>) -> Result<(u64, OwnedMessage), WireError> {
    use wire::Payload as P;
    let owned = match message.payload_type() {
        P::RegisterAgent => {
            let r = message.payload_as_register_agent().expect("type checked");
            let mut tasks = Vec::new();
            for t in r.tasks().iter().flatten() {
                tasks.push(task_status_from_wire(t)?);
            }
            OwnedMessage::RegisterAgent(AgentRegistration {
                agent_id: r.agent_id().to_string(),
                hostname: r.hostname().to_string(),
                resources: resources_from_wire(r.resources()),
                port_ranges: r
                    .port_ranges()
                    .iter()
                    .flatten()
                    .map(|p| (p.begin(), p.end()))
                    .collect(),
                attributes: r
                    .attributes()
                    .iter()
                    .flatten()
                    .map(|a| (a.key().to_string(), a.value().to_string()))
                    .collect(),
                tasks,
                log_port: r.log_port(),
            })
        }
        P::Authenticate => OwnedMessage::Authenticate {
            token: message
                .payload_as_authenticate()
                .expect("type checked")
                .token()
                .to_string(),
        },
        P::TaskStatus => OwnedMessage::TaskStatus(task_status_from_wire(
            message.payload_as_task_status().expect("type checked"),
        )?),
        P::AgentRegistered => OwnedMessage::AgentRegistered {
            agent_id: message
                .payload_as_agent_registered()
                .expect("type checked")
                .agent_id()
                .to_string(),
        },
        P::LaunchTask => {
            let l = message.payload_as_launch_task().expect("type checked");
            let job_key = parse_job_key(l.job_key())?;
            OwnedMessage::LaunchTask(LaunchView {
                task_id: TaskId(l.task_id()),
                config: task_config_from_wire(job_key.clone(), l.config())?,
                job_key,
                instance: l.instance(),
                ports: ports_from_wire(l.ports()),
            })
        }
        P::KillTask => OwnedMessage::KillTask {
            task_id: TaskId(
                message
                    .payload_as_kill_task()
                    .expect("type checked")
                    .task_id(),
            ),
        },
        P::Reconcile => OwnedMessage::Reconcile {
            task_ids: message
                .payload_as_reconcile()
                .expect("type checked")
                .task_ids()
                .iter()
                .flatten()
                .map(TaskId)
                .collect(),
        },
        P::Heartbeat => OwnedMessage::Heartbeat {
            timestamp_ms: message
                .payload_as_heartbeat()
                .expect("type checked")
                .timestamp_ms(),
        },
        P::StatusAck => {
            let a = message.payload_as_status_ack().expect("type checked");
            let task_ids = a.task_ids().unwrap_or_default();
            let states = a.states().unwrap_or_default();
            if task_ids.len() != states.len() {
                return Err(WireError::InvalidField {
                    field: "states",
                    reason: format!("{} task ids but {} states", task_ids.len(), states.len()),
                });
            }
            let mut acks = Vec::with_capacity(task_ids.len());
            for (task_id, state) in task_ids.iter().zip(states.iter()) {
                acks.push((TaskId(task_id), state_from_wire(state)?));
            }
            OwnedMessage::StatusAck(acks)
        }
        P::CreateJob => {
            let c = message.payload_as_create_job().expect("type checked");
            let job_key = parse_job_key(c.job_key())?;
            OwnedMessage::CreateJob {
                config: task_config_from_wire(job_key.clone(), c.config())?,
                job_key,
                instances: c.instances(),
                tier_unset: tier_unset(c.config()),
            }
        }
        P::KillJob => {
            let k = message.payload_as_kill_job().expect("type checked");
            OwnedMessage::KillJob {
                job_key: parse_job_key(k.job_key())?,
                instances: k.instances().iter().flatten().collect(),
            }
        }
        P::QueryJob => OwnedMessage::QueryJob {
            job_key: parse_job_key(
                message
                    .payload_as_query_job()
                    .expect("type checked")
                    .job_key(),
            )?,
        },
        P::ListJobs => {
            let l = message.payload_as_list_jobs().expect("type checked");
            OwnedMessage::ListJobs {
                after: l.after().unwrap_or_default().to_string(),
                limit: l.limit(),
            }
        }
        P::ListAgents => {
            let l = message.payload_as_list_agents().expect("type checked");
            OwnedMessage::ListAgents {
                after: l.after_agent_id().map(|id| {
                    (
                        l.after_hostname().unwrap_or_default().to_string(),
                        id.to_string(),
                    )
                }),
                limit: l.limit(),
            }
        }
        P::QueryTask => OwnedMessage::QueryTask {
            task_id: message
                .payload_as_query_task()
                .expect("type checked")
                .task_id(),
        },
        P::AgentList => {
            let l = message.payload_as_agent_list().expect("type checked");
            OwnedMessage::AgentList {
                agents: agent_infos_from_wire(l.agents())?,
                next: l.next_agent_id().map(|id| {
                    (
                        l.next_hostname().unwrap_or_default().to_string(),
                        id.to_string(),
                    )
                }),
            }
        }
        P::SetQuota => {
            let q = message.payload_as_set_quota().expect("type checked");
            OwnedMessage::SetQuota {
                role: q.role().to_string(),
                quota: Resources {
                    cpu_millis: q.cpu_millis(),
                    ram_mib: q.ram_mib(),
                    disk_mib: q.disk_mib(),
                    ports: 0,
                },
            }
        }
        P::GetQuota => OwnedMessage::GetQuota {
            role: message
                .payload_as_get_quota()
                .expect("type checked")
                .role()
                .to_string(),
        },
        P::QuotaInfo => {
            let q = message.payload_as_quota_info().expect("type checked");
            OwnedMessage::QuotaInfo(QuotaView {
                role: q.role().to_string(),
                quota: quota_resources_from_wire(q.quota()),
                used: quota_resources_from_wire(q.used()),
                quota_set: q.quota_set(),
            })
        }
        P::JobStatus => {
            let s = message.payload_as_job_status().expect("type checked");
            let tasks = s
                .tasks()
                .iter()
                .flatten()
                .map(task_info_from_wire)
                .collect();
            let status = JobStatusView {
                job: job_summary_from_wire(s.job())?,
                tasks,
            };
            if s.more() {
                OwnedMessage::JobStatusPart(status)
            } else {
                OwnedMessage::JobStatus(status)
            }
        }
        P::JobList => {
            let l = message.payload_as_job_list().expect("type checked");
            OwnedMessage::JobList {
                jobs: l
                    .jobs()
                    .iter()
                    .flatten()
                    .map(job_summary_from_wire)
                    .collect::<Result<_, _>>()?,
                next: l.next().unwrap_or_default().to_string(),
            }
        }
        P::HostMaintenance => {
            let m = message.payload_as_host_maintenance().expect("type checked");
            OwnedMessage::HostMaintenance {
                op: maintenance_op_from_wire(m.op())?,
                hosts: m.hosts().iter().flatten().map(str::to_string).collect(),
                drain_timeout_secs: m.drain_timeout_secs(),
            }
        }
        P::HostStatusList => {
            let l = message.payload_as_host_status_list().expect("type checked");
            let mut hosts = Vec::new();
            for h in l.hosts().iter().flatten() {
                hosts.push(HostStatusView {
                    host: h.host().to_string(),
                    mode: host_mode_from_wire(h.mode())?,
                    active_tasks: h.active_tasks(),
                    blocked: h
                        .blocked()
                        .iter()
                        .flatten()
                        .map(|b| HostBlockerView {
                            task_id: TaskId(b.task_id()),
                            job_key: b.job_key().to_string(),
                            instance: b.instance(),
                            reason: b.reason().unwrap_or_default().to_string(),
                        })
                        .collect(),
                    drain_deadline_ms: h.drain_deadline_ms(),
                    forced: h.forced(),
                });
            }
            OwnedMessage::HostStatusList(hosts)
        }
        P::RestartJob => {
            let r = message.payload_as_restart_job().expect("type checked");
            OwnedMessage::RestartJob {
                job_key: parse_job_key(r.job_key())?,
                instances: r.instances().iter().flatten().collect(),
            }
        }
        P::StartUpdate => {
            let u = message.payload_as_start_update().expect("type checked");
            let job_key = parse_job_key(u.job_key())?;
            OwnedMessage::StartUpdate {
                config: task_config_from_wire(job_key.clone(), u.config())?,
                tier_unset: tier_unset(u.config()),
                job_key,
                instances: u.instances(),
                settings: update_settings_from_wire(u.settings()),
                scope: u.scope().iter().flatten().collect(),
                message: u.message().unwrap_or_default().to_string(),
            }
        }
        P::UpdateCommand => {
            let c = message.payload_as_update_command().expect("type checked");
            OwnedMessage::UpdateCommand {
                job_key: parse_job_key(c.job_key())?,
                command: update_op_from_wire(c.op())?,
                message: c.message().unwrap_or_default().to_string(),
            }
        }
        P::QueryUpdates => {
            let q = message.payload_as_query_updates().expect("type checked");
            let job_key = match q.job_key() {
                Some(key) if !key.is_empty() => Some(parse_job_key(key)?),
                _ => None,
            };
            OwnedMessage::QueryUpdates {
                job_key,
                update_id: q.update_id(),
                details: q.details(),
            }
        }
        P::UpdateInfo => OwnedMessage::UpdateInfo(update_info_from_wire(
            message.payload_as_update_info().expect("type checked"),
        )?),
        P::UpdateList => {
            let l = message.payload_as_update_list().expect("type checked");
            let mut updates = Vec::new();
            for u in l.updates().iter().flatten() {
                updates.push(update_info_from_wire(u)?);
            }
            OwnedMessage::UpdateList(updates)
        }
        P::ScheduleCron => {
            let c = message.payload_as_schedule_cron().expect("type checked");
            let job_key = parse_job_key(c.job_key())?;
            OwnedMessage::ScheduleCron {
                config: task_config_from_wire(job_key.clone(), c.config())?,
                tier_unset: tier_unset(c.config()),
                job_key,
                instances: c.instances(),
                schedule: c.schedule().to_string(),
                collision_policy: collision_policy_from_wire(c.collision_policy())?,
            }
        }
        P::DescheduleCron => OwnedMessage::DescheduleCron {
            job_key: parse_job_key(
                message
                    .payload_as_deschedule_cron()
                    .expect("type checked")
                    .job_key(),
            )?,
        },
        P::StartCron => OwnedMessage::StartCron {
            job_key: parse_job_key(
                message
                    .payload_as_start_cron()
                    .expect("type checked")
                    .job_key(),
            )?,
        },
        P::Ack => OwnedMessage::Ack,
        P::Error => {
            let e = message.payload_as_error().expect("type checked");
            let code = match e.code() {
                wire::ErrorCode::UnknownJob => ErrorCode::UnknownJob,
                wire::ErrorCode::JobExists => ErrorCode::JobExists,
                wire::ErrorCode::TooManyTasks => ErrorCode::TooManyTasks,
                wire::ErrorCode::Internal => ErrorCode::Internal,
                wire::ErrorCode::Overloaded => ErrorCode::Overloaded,
                wire::ErrorCode::NotLeader => ErrorCode::NotLeader,
                wire::ErrorCode::QuotaExceeded => ErrorCode::QuotaExceeded,
                wire::ErrorCode::Unauthenticated => ErrorCode::Unauthenticated,
                wire::ErrorCode::PermissionDenied => ErrorCode::PermissionDenied,
                _ => ErrorCode::InvalidRequest,
            };
            OwnedMessage::Error {
                code,
                message: e.message().to_string(),
                leader: e.leader().map(str::to_string),
            }
        }
        other => return Err(WireError::UnknownType(other.0)),
    };
    Ok((message.request_id(), owned))
}

/// Builds messages into one reused flatbuffer builder. Each method returns the finished
/// message's bytes, valid until the next call; push them into a [`crate::FrameWriter`].
pub struct Encoder {
    fbb: FlatBufferBuilder<'static>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

type Payload = WIPOffset<flatbuffers::UnionWIPOffset>;

impl Encoder {
    pub fn new() -> Encoder {
        Encoder {
            fbb: FlatBufferBuilder::with_capacity(4096),
        }
    }

    /// Direct access for hot-path callers that build a message field by field.
    pub fn builder(&mut self) -> &mut FlatBufferBuilder<'static> {
        &mut self.fbb
    }

    /// Finishes a message whose payload was built with [`Encoder::builder`].
    pub fn finish_message(
        &mut self,
        request_id: u64,
        route_key: Option<&str>,
        payload_type: wire::Payload,
        payload: Payload,
    ) -> &[u8] {
        let route_key = route_key.map(|k| self.fbb.create_string(k));
        let message = wire::Message::create(
            &mut self.fbb,
            &wire::MessageArgs {
                request_id,
                route_key,
                payload_type,
                payload: Some(payload),
            },
        );
        self.fbb.finish(message, None);
        self.fbb.finished_data()
    }

    fn begin(&mut self) {
        self.fbb.reset();
    }

    /// A wire task config; `tier_unset`: see [`tier_unset`].
    /// A wire task config; `tier_unset`: see [`tier_unset`]. `for_agent`: a launch, which
    /// leaves out what only the scheduler reads (the SLA and partition policies).
    fn task_config(
        &mut self,
        c: &TaskConfig,
        tier_unset: bool,
        for_agent: bool,
    ) -> WIPOffset<wire::TaskConfig<'static>> {
        let fbb = &mut self.fbb;
        let health_check = c
            .health_check
            .as_ref()
            .map(|h| health_check_to_wire(fbb, h));
        let http_lifecycle = c.http_lifecycle.as_ref().map(|h| {
            let port = fbb.create_string(&h.port);
            let graceful = fbb.create_string(&h.graceful_shutdown_endpoint);
            let shutdown = fbb.create_string(&h.shutdown_endpoint);
            wire::HttpLifecycle::create(
                fbb,
                &wire::HttpLifecycleArgs {
                    port: Some(port),
                    graceful_shutdown_endpoint: Some(graceful),
                    shutdown_endpoint: Some(shutdown),
                    graceful_shutdown_wait_secs: h.graceful_shutdown_wait_secs,
                    shutdown_wait_secs: h.shutdown_wait_secs,
                },
            )
        });
        let (sla_policy, partition_policy) = if for_agent {
            (None, None)
        } else {
            let sla = c.sla_policy.as_ref().map(|p| sla_policy_to_wire(fbb, p));
            let partition = c.partition_policy.map(|p| {
                wire::PartitionPolicy::create(
                    fbb,
                    &wire::PartitionPolicyArgs {
                        reschedule: p.reschedule,
                        delay_secs: p.delay_secs,
                    },
                )
            });
            (sla, partition)
        };
        let command = fbb.create_string(&c.command);
        let names: Vec<_> = c.port_names.iter().map(|n| fbb.create_string(n)).collect();
        let port_names = fbb.create_vector(&names);
        let mut constraints = Vec::with_capacity(c.constraints.len());
        for constraint in &c.constraints {
            let (kind_type, kind) = match constraint {
                Constraint::Value {
                    attribute,
                    negated,
                    values,
                } => {
                    let attribute = fbb.create_string(attribute);
                    let values: Vec<_> = values.iter().map(|v| fbb.create_string(v)).collect();
                    let values = fbb.create_vector(&values);
                    let v = wire::ValueConstraint::create(
                        fbb,
                        &wire::ValueConstraintArgs {
                            attribute: Some(attribute),
                            negated: *negated,
                            values: Some(values),
                        },
                    );
                    (wire::ConstraintKind::ValueConstraint, v.as_union_value())
                }
                Constraint::Limit { attribute, limit } => {
                    let attribute = fbb.create_string(attribute);
                    let l = wire::LimitConstraint::create(
                        fbb,
                        &wire::LimitConstraintArgs {
                            attribute: Some(attribute),
                            limit: *limit,
                        },
                    );
                    (wire::ConstraintKind::LimitConstraint, l.as_union_value())
                }
            };
            constraints.push(wire::Constraint::create(
                fbb,
                &wire::ConstraintArgs {
                    kind_type,
                    kind: Some(kind),
                },
            ));
        }
        let constraints = fbb.create_vector(&constraints);
        let resources = resources_to_wire(&c.resources);
        wire::TaskConfig::create(
            fbb,
            &wire::TaskConfigArgs {
                command: Some(command),
                resources: Some(&resources),
                port_names: Some(port_names),
                constraints: Some(constraints),
                tier: tier_to_wire(c.tier),
                priority: c.priority,
                production: c.production,
                is_service: c.is_service,
                max_task_failures: c.max_task_failures,
                finalization_wait_secs: c.finalization_wait_secs,
                tier_unset,
                health_check,
                http_lifecycle,
                sla_policy,
                partition_policy,
            },
        )
    }

    fn task_status_table(&mut self, s: &TaskStatusReport) -> WIPOffset<wire::TaskStatus<'static>> {
        let job_key = self.fbb.create_string(&s.job_key);
        let message = self.fbb.create_string(&s.message);
        let sandbox = self.fbb.create_string(&s.sandbox);
        wire::TaskStatus::create(
            &mut self.fbb,
            &wire::TaskStatusArgs {
                task_id: s.task_id.0,
                job_key: Some(job_key),
                instance: s.instance,
                state: state_to_wire(s.state),
                exit_code: s.exit_code,
                message: Some(message),
                timestamp_ms: s.timestamp_ms,
                sandbox: Some(sandbox),
                usage: s.usage.as_ref().map(usage_to_wire).as_ref(),
            },
        )
    }

    fn ports(
        &mut self,
        ports: &[(String, u16)],
    ) -> WIPOffset<
        flatbuffers::Vector<'static, flatbuffers::ForwardsUOffset<wire::AssignedPort<'static>>>,
    > {
        let mut offsets = Vec::with_capacity(ports.len());
        for (name, port) in ports {
            let name = self.fbb.create_string(name);
            offsets.push(wire::AssignedPort::create(
                &mut self.fbb,
                &wire::AssignedPortArgs {
                    name: Some(name),
                    port: *port,
                },
            ));
        }
        self.fbb.create_vector(&offsets)
    }

    pub fn register_agent(&mut self, r: &AgentRegistration) -> &[u8] {
        self.begin();
        let agent_id = self.fbb.create_string(&r.agent_id);
        let hostname = self.fbb.create_string(&r.hostname);
        let ranges: Vec<_> = r
            .port_ranges
            .iter()
            .map(|(begin, end)| {
                wire::PortRange::create(
                    &mut self.fbb,
                    &wire::PortRangeArgs {
                        begin: *begin,
                        end: *end,
                    },
                )
            })
            .collect();
        let port_ranges = self.fbb.create_vector(&ranges);
        let mut attrs = Vec::with_capacity(r.attributes.len());
        for (k, v) in &r.attributes {
            let key = self.fbb.create_string(k);
            let value = self.fbb.create_string(v);
            attrs.push(wire::Attribute::create(
                &mut self.fbb,
                &wire::AttributeArgs {
                    key: Some(key),
                    value: Some(value),
                },
            ));
        }
        let attributes = self.fbb.create_vector(&attrs);
        let statuses: Vec<_> = r.tasks.iter().map(|t| self.task_status_table(t)).collect();
        let tasks = self.fbb.create_vector(&statuses);
        let resources = resources_to_wire(&r.resources);
        let payload = wire::RegisterAgent::create(
            &mut self.fbb,
            &wire::RegisterAgentArgs {
                agent_id: Some(agent_id),
                hostname: Some(hostname),
                resources: Some(&resources),
                port_ranges: Some(port_ranges),
                attributes: Some(attributes),
                tasks: Some(tasks),
                log_port: r.log_port,
            },
        );
        self.finish_message(
            0,
            None,
            wire::Payload::RegisterAgent,
            payload.as_union_value(),
        )
    }

    pub fn task_status(&mut self, s: &TaskStatusReport) -> &[u8] {
        self.begin();
        let payload = self.task_status_table(s);
        // The route key is the job key, already in the table; the router reads it from there.
        self.finish_message(0, None, wire::Payload::TaskStatus, payload.as_union_value())
    }

    pub fn agent_registered(&mut self, agent_id: &str) -> &[u8] {
        self.begin();
        let agent_id = self.fbb.create_string(agent_id);
        let payload = wire::AgentRegistered::create(
            &mut self.fbb,
            &wire::AgentRegisteredArgs {
                agent_id: Some(agent_id),
            },
        );
        self.finish_message(
            0,
            None,
            wire::Payload::AgentRegistered,
            payload.as_union_value(),
        )
    }

    pub fn launch_task(
        &mut self,
        task_id: TaskId,
        instance: u32,
        config: &TaskConfig,
        ports: &[(String, u16)],
    ) -> &[u8] {
        self.begin();
        let job_key = self.fbb.create_string(&config.job.to_string());
        let config_offset = self.task_config(config, false, true);
        let ports = self.ports(ports);
        let payload = wire::LaunchTask::create(
            &mut self.fbb,
            &wire::LaunchTaskArgs {
                task_id: task_id.0,
                job_key: Some(job_key),
                instance,
                config: Some(config_offset),
                ports: Some(ports),
            },
        );
        self.finish_message(0, None, wire::Payload::LaunchTask, payload.as_union_value())
    }

    pub fn kill_task(&mut self, task_id: TaskId, job_key: &str) -> &[u8] {
        self.begin();
        let job_key = self.fbb.create_string(job_key);
        let payload = wire::KillTask::create(
            &mut self.fbb,
            &wire::KillTaskArgs {
                task_id: task_id.0,
                job_key: Some(job_key),
            },
        );
        self.finish_message(0, None, wire::Payload::KillTask, payload.as_union_value())
    }

    pub fn reconcile(&mut self, task_ids: &[TaskId]) -> &[u8] {
        self.begin();
        let ids: Vec<u64> = task_ids.iter().map(|t| t.0).collect();
        let task_ids = self.fbb.create_vector(&ids);
        let payload = wire::Reconcile::create(
            &mut self.fbb,
            &wire::ReconcileArgs {
                task_ids: Some(task_ids),
            },
        );
        self.finish_message(0, None, wire::Payload::Reconcile, payload.as_union_value())
    }

    pub fn heartbeat(&mut self, timestamp_ms: u64) -> &[u8] {
        self.begin();
        let payload = wire::Heartbeat::create(&mut self.fbb, &wire::HeartbeatArgs { timestamp_ms });
        self.finish_message(0, None, wire::Payload::Heartbeat, payload.as_union_value())
    }

    /// Acknowledges that the scheduler durably recorded each task in the paired state.
    pub fn status_ack(&mut self, acks: &[(TaskId, TaskState)]) -> &[u8] {
        self.begin();
        let ids: Vec<u64> = acks.iter().map(|(t, _)| t.0).collect();
        let states: Vec<wire::TaskState> = acks.iter().map(|(_, s)| state_to_wire(*s)).collect();
        let task_ids = self.fbb.create_vector(&ids);
        let states = self.fbb.create_vector(&states);
        let payload = wire::StatusAck::create(
            &mut self.fbb,
            &wire::StatusAckArgs {
                task_ids: Some(task_ids),
                states: Some(states),
            },
        );
        self.finish_message(0, None, wire::Payload::StatusAck, payload.as_union_value())
    }

    /// Creates a job whose tier is `config.tier`, as asked (`create_job_spec` with
    /// `tier_explicit`).
    pub fn create_job(&mut self, request_id: u64, instances: u32, config: &TaskConfig) -> &[u8] {
        self.create_job_spec(request_id, instances, config, true)
    }

    /// Creates a job. `tier_explicit` false: the job file named no tier, and the scheduler
    /// resolves it from its tier config (`config.tier` is then sent but only as the default);
    /// the message carries `tier_unset` (see [`tier_unset`]).
    pub fn create_job_spec(
        &mut self,
        request_id: u64,
        instances: u32,
        config: &TaskConfig,
        tier_explicit: bool,
    ) -> &[u8] {
        self.begin();
        let key = config.job.to_string();
        let job_key = self.fbb.create_string(&key);
        let config_offset = self.task_config(config, !tier_explicit, false);
        let payload = wire::CreateJob::create(
            &mut self.fbb,
            &wire::CreateJobArgs {
                job_key: Some(job_key),
                instances,
                config: Some(config_offset),
            },
        );
        self.finish_message(
            request_id,
            Some(&key),
            wire::Payload::CreateJob,
            payload.as_union_value(),
        )
    }

    pub fn kill_job(&mut self, request_id: u64, job_key: &JobKey, instances: &[u32]) -> &[u8] {
        self.begin();
        let key = job_key.to_string();
        let job_key = self.fbb.create_string(&key);
        let instances = self.fbb.create_vector(instances);
        let payload = wire::KillJob::create(
            &mut self.fbb,
            &wire::KillJobArgs {
                job_key: Some(job_key),
                instances: Some(instances),
            },
        );
        self.finish_message(
            request_id,
            Some(&key),
            wire::Payload::KillJob,
            payload.as_union_value(),
        )
    }

    pub fn query_job(&mut self, request_id: u64, job_key: &JobKey) -> &[u8] {
        self.begin();
        let key = job_key.to_string();
        let job_key = self.fbb.create_string(&key);
        let payload = wire::QueryJob::create(
            &mut self.fbb,
            &wire::QueryJobArgs {
                job_key: Some(job_key),
            },
        );
        self.finish_message(
            request_id,
            Some(&key),
            wire::Payload::QueryJob,
            payload.as_union_value(),
        )
    }

    /// The first page of jobs, of the scheduler's default size.
    pub fn list_jobs(&mut self, request_id: u64) -> &[u8] {
        self.list_jobs_page(request_id, "", 0)
    }

    /// A page of jobs: those whose key sorts after `after` (exclusive; empty: from the first),
    /// at most `limit` (0: [`LIST_PAGE_DEFAULT`]; at most [`LIST_PAGE_MAX`]).
    pub fn list_jobs_page(&mut self, request_id: u64, after: &str, limit: u32) -> &[u8] {
        self.begin();
        let after = (!after.is_empty()).then(|| self.fbb.create_string(after));
        let payload = wire::ListJobs::create(&mut self.fbb, &wire::ListJobsArgs { after, limit });
        self.finish_message(
            request_id,
            None,
            wire::Payload::ListJobs,
            payload.as_union_value(),
        )
    }

    /// Sets `role`'s quota (`quota.ports` is not carried). Routed on the role.
    pub fn set_quota(&mut self, request_id: u64, role: &str, quota: &Resources) -> &[u8] {
        self.begin();
        let role_offset = self.fbb.create_string(role);
        let payload = wire::SetQuota::create(
            &mut self.fbb,
            &wire::SetQuotaArgs {
                role: Some(role_offset),
                cpu_millis: quota.cpu_millis,
                ram_mib: quota.ram_mib,
                disk_mib: quota.disk_mib,
            },
        );
        self.finish_message(
            request_id,
            Some(role),
            wire::Payload::SetQuota,
            payload.as_union_value(),
        )
    }

    /// Asks for `role`'s quota and use. Routed on the role.
    pub fn get_quota(&mut self, request_id: u64, role: &str) -> &[u8] {
        self.begin();
        let role_offset = self.fbb.create_string(role);
        let payload = wire::GetQuota::create(
            &mut self.fbb,
            &wire::GetQuotaArgs {
                role: Some(role_offset),
            },
        );
        self.finish_message(
            request_id,
            Some(role),
            wire::Payload::GetQuota,
            payload.as_union_value(),
        )
    }

    /// The answer to `GetQuota`. Ports are not carried (sent as 0).
    pub fn quota_info(&mut self, request_id: u64, info: &QuotaView) -> &[u8] {
        self.begin();
        let role = self.fbb.create_string(&info.role);
        let without_ports =
            |r: &Resources| wire::Resources::new(r.cpu_millis, r.ram_mib, r.disk_mib, 0);
        let quota = without_ports(&info.quota);
        let used = without_ports(&info.used);
        let payload = wire::QuotaInfo::create(
            &mut self.fbb,
            &wire::QuotaInfoArgs {
                role: Some(role),
                quota: Some(&quota),
                used: Some(&used),
                quota_set: info.quota_set,
            },
        );
        self.finish_message(
            request_id,
            None,
            wire::Payload::QuotaInfo,
            payload.as_union_value(),
        )
    }

    fn job_summary(&mut self, j: &JobSummaryView) -> WIPOffset<wire::JobSummary<'static>> {
        let job_key = self.fbb.create_string(&j.job_key);
        let counts = self.fbb.create_vector(&j.state_counts);
        let cron_schedule = j.cron.as_ref().map(|c| self.fbb.create_string(&c.schedule));
        let (update_id, update_status) = j.update.unwrap_or((0, UpdateStatus::RollingForward));
        wire::JobSummary::create(
            &mut self.fbb,
            &wire::JobSummaryArgs {
                job_key: Some(job_key),
                instances: j.instances,
                is_service: j.is_service,
                state_counts: Some(counts),
                cron_schedule,
                cron_next_run_unix_ms: j
                    .cron
                    .as_ref()
                    .and_then(|c| c.next_run_unix_ms)
                    .unwrap_or(0),
                cron_collision_policy: collision_policy_to_wire(
                    j.cron
                        .as_ref()
                        .map_or(CollisionPolicy::KillExisting, |c| c.collision_policy),
                ),
                update_id,
                update_status: update_status_to_wire(update_status),
                has_update: j.update.is_some(),
            },
        )
    }

    fn task_info(&mut self, t: &TaskInfoView) -> WIPOffset<wire::TaskInfo<'static>> {
        let agent_id = self.fbb.create_string(&t.agent_id);
        let hostname = self.fbb.create_string(&t.hostname);
        let message = self.fbb.create_string(&t.message);
        let sandbox = self.fbb.create_string(&t.sandbox);
        let pending_reason =
            (!t.pending_reason.is_empty()).then(|| self.fbb.create_string(&t.pending_reason));
        let ports = self.ports(&t.ports);
        let events = (!t.events.is_empty()).then(|| {
            let mut offsets = Vec::with_capacity(t.events.len());
            for e in &t.events {
                let message = (!e.message.is_empty()).then(|| self.fbb.create_string(&e.message));
                offsets.push(wire::TaskEvent::create(
                    &mut self.fbb,
                    &wire::TaskEventArgs {
                        unix_ms: e.unix_ms,
                        state: state_to_wire(e.state.unwrap_or(TaskState::Init)),
                        message,
                    },
                ));
            }
            self.fbb.create_vector(&offsets)
        });
        wire::TaskInfo::create(
            &mut self.fbb,
            &wire::TaskInfoArgs {
                task_id: t.task_id,
                instance: t.instance,
                state: state_to_wire(t.state.unwrap_or(TaskState::Init)),
                agent_id: Some(agent_id),
                hostname: Some(hostname),
                failure_count: t.failure_count,
                exit_code: t.exit_code,
                message: Some(message),
                ports: Some(ports),
                sandbox: Some(sandbox),
                pending_reason,
                preempted_by: t.preempted_by.unwrap_or(0),
                events,
                usage: t.usage.as_ref().map(usage_to_wire).as_ref(),
            },
        )
    }

    /// A job's status as one message (whatever its size: see [`Encoder::job_status_parts`]).
    pub fn job_status(&mut self, request_id: u64, status: &JobStatusView) -> &[u8] {
        self.begin();
        let job = self.job_summary(&status.job);
        let mut tasks = Vec::with_capacity(status.tasks.len());
        for t in &status.tasks {
            tasks.push(self.task_info(t));
        }
        let tasks = self.fbb.create_vector(&tasks);
        let payload = wire::JobStatus::create(
            &mut self.fbb,
            &wire::JobStatusArgs {
                job: Some(job),
                tasks: Some(tasks),
                more: false,
            },
        );
        self.finish_message(
            request_id,
            None,
            wire::Payload::JobStatus,
            payload.as_union_value(),
        )
    }

    /// A job's status as the messages that carry it: one, or (once its tasks encode to more
    /// than `part_bytes`) several, each with the job's summary and the next tasks in order,
    /// `more` set on all but the last. A part ends after the task that takes it past
    /// `part_bytes`, so it is at most that plus one task. `tasks` is read once, in order (the
    /// caller can build each task's view as it goes).
    pub fn job_status_parts<T: std::borrow::Borrow<TaskInfoView>>(
        &mut self,
        request_id: u64,
        job: &JobSummaryView,
        tasks: impl IntoIterator<Item = T>,
        part_bytes: usize,
    ) -> Vec<Vec<u8>> {
        let mut tasks = tasks.into_iter().peekable();
        let mut parts = Vec::new();
        loop {
            self.begin();
            let mut offsets = Vec::new();
            for t in tasks.by_ref() {
                offsets.push(self.task_info(t.borrow()));
                if self.fbb.unfinished_data().len() >= part_bytes {
                    break;
                }
            }
            let more = tasks.peek().is_some();
            let summary = self.job_summary(job);
            let offsets = self.fbb.create_vector(&offsets);
            let payload = wire::JobStatus::create(
                &mut self.fbb,
                &wire::JobStatusArgs {
                    job: Some(summary),
                    tasks: Some(offsets),
                    more,
                },
            );
            parts.push(
                self.finish_message(
                    request_id,
                    None,
                    wire::Payload::JobStatus,
                    payload.as_union_value(),
                )
                .to_vec(),
            );
            if !more {
                return parts;
            }
        }
    }

    /// A list of jobs that is the whole answer (no next page).
    pub fn job_list(&mut self, request_id: u64, jobs: &[JobSummaryView]) -> &[u8] {
        self.job_list_page(request_id, jobs, "")
    }

    /// A page of jobs; `next`: the key to ask for the next page after (empty: no more).
    pub fn job_list_page(&mut self, request_id: u64, jobs: &[JobSummaryView], next: &str) -> &[u8] {
        self.begin();
        let summaries: Vec<_> = jobs.iter().map(|j| self.job_summary(j)).collect();
        let jobs = self.fbb.create_vector(&summaries);
        let next = (!next.is_empty()).then(|| self.fbb.create_string(next));
        let payload = wire::JobList::create(
            &mut self.fbb,
            &wire::JobListArgs {
                jobs: Some(jobs),
                next,
            },
        );
        self.finish_message(
            request_id,
            None,
            wire::Payload::JobList,
            payload.as_union_value(),
        )
    }

    pub fn host_maintenance(
        &mut self,
        request_id: u64,
        op: MaintenanceOp,
        hosts: &[String],
        drain_timeout_secs: u64,
    ) -> &[u8] {
        self.begin();
        let names: Vec<_> = hosts.iter().map(|h| self.fbb.create_string(h)).collect();
        let hosts = self.fbb.create_vector(&names);
        let payload = wire::HostMaintenance::create(
            &mut self.fbb,
            &wire::HostMaintenanceArgs {
                op: maintenance_op_to_wire(op),
                hosts: Some(hosts),
                drain_timeout_secs,
            },
        );
        self.finish_message(
            request_id,
            None,
            wire::Payload::HostMaintenance,
            payload.as_union_value(),
        )
    }

    pub fn host_status_list(&mut self, request_id: u64, hosts: &[HostStatusView]) -> &[u8] {
        self.begin();
        let mut tables = Vec::with_capacity(hosts.len());
        for h in hosts {
            let host = self.fbb.create_string(&h.host);
            let mut blocked = Vec::with_capacity(h.blocked.len());
            for b in &h.blocked {
                let job_key = self.fbb.create_string(&b.job_key);
                let reason = self.fbb.create_string(&b.reason);
                blocked.push(wire::HostBlocker::create(
                    &mut self.fbb,
                    &wire::HostBlockerArgs {
                        task_id: b.task_id.0,
                        job_key: Some(job_key),
                        instance: b.instance,
                        reason: Some(reason),
                    },
                ));
            }
            let blocked = self.fbb.create_vector(&blocked);
            tables.push(wire::HostStatus::create(
                &mut self.fbb,
                &wire::HostStatusArgs {
                    host: Some(host),
                    mode: host_mode_to_wire(h.mode),
                    active_tasks: h.active_tasks,
                    blocked: Some(blocked),
                    drain_deadline_ms: h.drain_deadline_ms,
                    forced: h.forced,
                },
            ));
        }
        let hosts = self.fbb.create_vector(&tables);
        let payload = wire::HostStatusList::create(
            &mut self.fbb,
            &wire::HostStatusListArgs { hosts: Some(hosts) },
        );
        self.finish_message(
            request_id,
            None,
            wire::Payload::HostStatusList,
            payload.as_union_value(),
        )
    }

    /// The first page of agents, of the scheduler's default size.
    pub fn list_agents(&mut self, request_id: u64) -> &[u8] {
        self.list_agents_page(request_id, None, 0)
    }

    /// A page of agents: those after `after` (hostname, agent_id; exclusive; None: from the
    /// first), at most `limit` (0: [`LIST_PAGE_DEFAULT`]; at most [`LIST_PAGE_MAX`]).
    pub fn list_agents_page(
        &mut self,
        request_id: u64,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> &[u8] {
        self.begin();
        let (after_hostname, after_agent_id) = match after {
            Some((host, id)) => (
                Some(self.fbb.create_string(host)),
                Some(self.fbb.create_string(id)),
            ),
            None => (None, None),
        };
        let payload = wire::ListAgents::create(
            &mut self.fbb,
            &wire::ListAgentsArgs {
                after_hostname,
                after_agent_id,
                limit,
            },
        );
        self.finish_message(
            request_id,
            None,
            wire::Payload::ListAgents,
            payload.as_union_value(),
        )
    }

    pub fn query_task(&mut self, request_id: u64, task_id: u64) -> &[u8] {
        self.begin();
        let payload = wire::QueryTask::create(&mut self.fbb, &wire::QueryTaskArgs { task_id });
        self.finish_message(
            request_id,
            None,
            wire::Payload::QueryTask,
            payload.as_union_value(),
        )
    }

    /// A list of agents that is the whole answer (no next page).
    pub fn agent_list(&mut self, request_id: u64, agents: &[AgentInfoView]) -> &[u8] {
        self.agent_list_page(request_id, agents, None)
    }

    /// A page of agents; `next`: the (hostname, agent_id) to ask for the next page after
    /// (None: no more).
    pub fn agent_list_page(
        &mut self,
        request_id: u64,
        agents: &[AgentInfoView],
        next: Option<(&str, &str)>,
    ) -> &[u8] {
        self.begin();
        let mut tables = Vec::with_capacity(agents.len());
        for a in agents {
            let agent_id = self.fbb.create_string(&a.agent_id);
            let hostname = self.fbb.create_string(&a.hostname);
            let mut attrs = Vec::with_capacity(a.attributes.len());
            for (k, v) in &a.attributes {
                let key = self.fbb.create_string(k);
                let value = self.fbb.create_string(v);
                attrs.push(wire::Attribute::create(
                    &mut self.fbb,
                    &wire::AttributeArgs {
                        key: Some(key),
                        value: Some(value),
                    },
                ));
            }
            let attributes = self.fbb.create_vector(&attrs);
            let log_address =
                (!a.log_address.is_empty()).then(|| self.fbb.create_string(&a.log_address));
            let total = resources_to_wire(&a.total);
            let used = resources_to_wire(&a.used);
            tables.push(wire::AgentInfo::create(
                &mut self.fbb,
                &wire::AgentInfoArgs {
                    agent_id: Some(agent_id),
                    hostname: Some(hostname),
                    total: Some(&total),
                    used: Some(&used),
                    active_tasks: a.active_tasks,
                    connected: a.connected,
                    mode: host_mode_to_wire(a.mode),
                    attributes: Some(attributes),
                    log_address,
                },
            ));
        }
        let agents = self.fbb.create_vector(&tables);
        let (next_hostname, next_agent_id) = match next {
            Some((host, id)) => (
                Some(self.fbb.create_string(host)),
                Some(self.fbb.create_string(id)),
            ),
            None => (None, None),
        };
        let payload = wire::AgentList::create(
            &mut self.fbb,
            &wire::AgentListArgs {
                agents: Some(agents),
                next_hostname,
                next_agent_id,
            },
        );
        self.finish_message(
            request_id,
            None,
            wire::Payload::AgentList,
            payload.as_union_value(),
        )
    }

    pub fn restart_job(&mut self, request_id: u64, job_key: &JobKey, instances: &[u32]) -> &[u8] {
        self.begin();
        let key_text = job_key.to_string();
        let key = self.fbb.create_string(&key_text);
        let instances = self.fbb.create_vector(instances);
        let payload = wire::RestartJob::create(
            &mut self.fbb,
            &wire::RestartJobArgs {
                job_key: Some(key),
                instances: Some(instances),
            },
        );
        self.finish_message(
            request_id,
            Some(&key_text),
            wire::Payload::RestartJob,
            payload.as_union_value(),
        )
    }

    fn update_settings(&mut self, s: &UpdateSettings) -> WIPOffset<wire::UpdateSettings<'static>> {
        wire::UpdateSettings::create(
            &mut self.fbb,
            &wire::UpdateSettingsArgs {
                batch_size: s.batch_size,
                max_per_instance_failures: s.max_per_instance_failures,
                max_total_failures: s.max_total_failures,
                watch_secs: s.watch_secs,
                rollback_on_failure: s.rollback_on_failure,
                wait_for_batch_completion: s.wait_for_batch_completion,
                pulse_interval_secs: s.pulse_interval_secs.unwrap_or(0),
                sla_aware: s.sla_aware,
            },
        )
    }

    /// A message string, left out when empty (absent reads as empty).
    fn optional_string(&mut self, text: &str) -> Option<WIPOffset<&'static str>> {
        (!text.is_empty()).then(|| self.fbb.create_string(text))
    }

    /// Starts a rolling update whose tier is `config.tier`, as asked (`start_update_spec`
    /// with `tier_explicit`).
    #[allow(clippy::too_many_arguments)]
    pub fn start_update(
        &mut self,
        request_id: u64,
        job_key: &JobKey,
        instances: u32,
        config: &TaskConfig,
        settings: &UpdateSettings,
        scope: &[u32],
        message: &str,
    ) -> &[u8] {
        self.start_update_spec(
            request_id, job_key, instances, config, true, settings, scope, message,
        )
    }

    /// Starts a rolling update of `job_key` to `config` with `instances` instances, over
    /// `scope` (empty: every instance). `tier_explicit` false: the job file named no tier (see
    /// [`Encoder::create_job_spec`]). Routed on the job key.
    #[allow(clippy::too_many_arguments)]
    pub fn start_update_spec(
        &mut self,
        request_id: u64,
        job_key: &JobKey,
        instances: u32,
        config: &TaskConfig,
        tier_explicit: bool,
        settings: &UpdateSettings,
        scope: &[u32],
        message: &str,
    ) -> &[u8] {
        self.begin();
        let key_text = job_key.to_string();
        let key = self.fbb.create_string(&key_text);
        let config = self.task_config(config, !tier_explicit, false);
        let settings = self.update_settings(settings);
        let scope = self.fbb.create_vector(scope);
        let message = self.optional_string(message);
        let payload = wire::StartUpdate::create(
            &mut self.fbb,
            &wire::StartUpdateArgs {
                job_key: Some(key),
                instances,
                config: Some(config),
                settings: Some(settings),
                scope: Some(scope),
                message,
            },
        );
        self.finish_message(
            request_id,
            Some(&key_text),
            wire::Payload::StartUpdate,
            payload.as_union_value(),
        )
    }

    /// A command on the job's active update. Routed on the job key.
    pub fn update_command(
        &mut self,
        request_id: u64,
        job_key: &JobKey,
        op: Command,
        message: &str,
    ) -> &[u8] {
        self.begin();
        let key_text = job_key.to_string();
        let key = self.fbb.create_string(&key_text);
        let message = self.optional_string(message);
        let payload = wire::UpdateCommand::create(
            &mut self.fbb,
            &wire::UpdateCommandArgs {
                job_key: Some(key),
                op: update_op_to_wire(op),
                message,
            },
        );
        self.finish_message(
            request_id,
            Some(&key_text),
            wire::Payload::UpdateCommand,
            payload.as_union_value(),
        )
    }

    /// Asks for one job's updates (routed on its key) or, with `job_key` None, every job's.
    /// `update_id` 0: all of them; `details`: with per-instance progress, events and configs.
    pub fn query_updates(
        &mut self,
        request_id: u64,
        job_key: Option<&JobKey>,
        update_id: u64,
        details: bool,
    ) -> &[u8] {
        self.begin();
        let key_text = job_key.map(JobKey::to_string);
        let key = key_text.as_deref().map(|k| self.fbb.create_string(k));
        let payload = wire::QueryUpdates::create(
            &mut self.fbb,
            &wire::QueryUpdatesArgs {
                job_key: key,
                update_id,
                details,
            },
        );
        self.finish_message(
            request_id,
            key_text.as_deref(),
            wire::Payload::QueryUpdates,
            payload.as_union_value(),
        )
    }

    fn update_info_table(&mut self, view: &UpdateInfoView) -> WIPOffset<wire::UpdateInfo<'static>> {
        let u = &view.update;
        let job_key = self.fbb.create_string(&view.job_key);
        let settings = self.update_settings(&u.settings);
        let mut instances = Vec::with_capacity(u.instances.len());
        for p in &u.instances {
            instances.push(wire::UpdateInstance::create(
                &mut self.fbb,
                &wire::UpdateInstanceArgs {
                    instance: p.instance,
                    from_rev: rev_to_wire(p.from),
                    to_rev: rev_to_wire(p.to),
                    phase: instance_phase_to_wire(p.phase),
                    failures: p.failures,
                    in_rollback: p.in_rollback,
                },
            ));
        }
        let instances = self.fbb.create_vector(&instances);
        let mut events = Vec::with_capacity(u.events.len());
        for e in &u.events {
            let message = self.optional_string(&e.message);
            events.push(wire::UpdateEventInfo::create(
                &mut self.fbb,
                &wire::UpdateEventInfoArgs {
                    unix_ms: e.unix_ms,
                    status: update_status_to_wire(e.status),
                    message,
                },
            ));
        }
        let events = self.fbb.create_vector(&events);
        let mut configs = Vec::with_capacity(view.configs.len());
        for (rev, config) in &view.configs {
            let config = self.task_config(config, false, false);
            configs.push(wire::RevisionConfig::create(
                &mut self.fbb,
                &wire::RevisionConfigArgs {
                    rev: *rev,
                    config: Some(config),
                },
            ));
        }
        let configs = self.fbb.create_vector(&configs);
        wire::UpdateInfo::create(
            &mut self.fbb,
            &wire::UpdateInfoArgs {
                job_key: Some(job_key),
                update_id: u.id,
                status: update_status_to_wire(u.status),
                settings: Some(settings),
                instances_before: u.instances_before,
                instances_after: u.instances_after,
                to_rev: u.to_rev,
                failed_instances: u.failed_instances,
                in_flight: view.in_flight,
                created_unix_ms: u.created_unix_ms,
                updated_unix_ms: u.updated_unix_ms,
                instances: Some(instances),
                events: Some(events),
                configs: Some(configs),
            },
        )
    }

    /// One update: the answer to `StartUpdate` and `UpdateCommand`. Carries the view's
    /// instances, events and configs as they are (empty ones for a summary).
    pub fn update_info(&mut self, request_id: u64, update: &UpdateInfoView) -> &[u8] {
        self.begin();
        let payload = self.update_info_table(update);
        self.finish_message(
            request_id,
            None,
            wire::Payload::UpdateInfo,
            payload.as_union_value(),
        )
    }

    /// The answer to `QueryUpdates`.
    pub fn update_list(&mut self, request_id: u64, updates: &[UpdateInfoView]) -> &[u8] {
        self.begin();
        let tables: Vec<_> = updates.iter().map(|u| self.update_info_table(u)).collect();
        let updates = self.fbb.create_vector(&tables);
        let payload = wire::UpdateList::create(
            &mut self.fbb,
            &wire::UpdateListArgs {
                updates: Some(updates),
            },
        );
        self.finish_message(
            request_id,
            None,
            wire::Payload::UpdateList,
            payload.as_union_value(),
        )
    }

    /// Schedules (or replaces) a cron job whose tier is `config.tier`, as asked
    /// (`schedule_cron_spec` with `tier_explicit`).
    pub fn schedule_cron(
        &mut self,
        request_id: u64,
        job_key: &JobKey,
        instances: u32,
        config: &TaskConfig,
        schedule: &str,
        policy: CollisionPolicy,
    ) -> &[u8] {
        self.schedule_cron_spec(
            request_id, job_key, instances, config, true, schedule, policy,
        )
    }

    /// Schedules (or replaces) a cron job: at each trigger of `schedule`, `instances` of
    /// `config` run. `tier_explicit` false: the job file named no tier (see
    /// [`Encoder::create_job_spec`]). Routed on the job key.
    #[allow(clippy::too_many_arguments)]
    pub fn schedule_cron_spec(
        &mut self,
        request_id: u64,
        job_key: &JobKey,
        instances: u32,
        config: &TaskConfig,
        tier_explicit: bool,
        schedule: &str,
        policy: CollisionPolicy,
    ) -> &[u8] {
        self.begin();
        let key_text = job_key.to_string();
        let key = self.fbb.create_string(&key_text);
        let config = self.task_config(config, !tier_explicit, false);
        let schedule = self.fbb.create_string(schedule);
        let payload = wire::ScheduleCron::create(
            &mut self.fbb,
            &wire::ScheduleCronArgs {
                job_key: Some(key),
                instances,
                config: Some(config),
                schedule: Some(schedule),
                collision_policy: collision_policy_to_wire(policy),
            },
        );
        self.finish_message(
            request_id,
            Some(&key_text),
            wire::Payload::ScheduleCron,
            payload.as_union_value(),
        )
    }

    /// Removes a cron job's schedule (a running run is left alone). Routed on the job key.
    pub fn deschedule_cron(&mut self, request_id: u64, job_key: &JobKey) -> &[u8] {
        self.begin();
        let key_text = job_key.to_string();
        let key = self.fbb.create_string(&key_text);
        let payload = wire::DescheduleCron::create(
            &mut self.fbb,
            &wire::DescheduleCronArgs { job_key: Some(key) },
        );
        self.finish_message(
            request_id,
            Some(&key_text),
            wire::Payload::DescheduleCron,
            payload.as_union_value(),
        )
    }

    /// Runs a cron job now (its collision policy applies). Routed on the job key.
    pub fn start_cron(&mut self, request_id: u64, job_key: &JobKey) -> &[u8] {
        self.begin();
        let key_text = job_key.to_string();
        let key = self.fbb.create_string(&key_text);
        let payload =
            wire::StartCron::create(&mut self.fbb, &wire::StartCronArgs { job_key: Some(key) });
        self.finish_message(
            request_id,
            Some(&key_text),
            wire::Payload::StartCron,
            payload.as_union_value(),
        )
    }

    /// A client's credentials (see `Authenticate` in the schema).
    pub fn authenticate(&mut self, request_id: u64, token: &str) -> &[u8] {
        self.begin();
        let token = self.fbb.create_string(token);
        let payload = wire::Authenticate::create(
            &mut self.fbb,
            &wire::AuthenticateArgs { token: Some(token) },
        );
        self.finish_message(
            request_id,
            None,
            wire::Payload::Authenticate,
            payload.as_union_value(),
        )
    }

    pub fn ack(&mut self, request_id: u64) -> &[u8] {
        self.begin();
        let payload = wire::Ack::create(&mut self.fbb, &wire::AckArgs {});
        self.finish_message(
            request_id,
            None,
            wire::Payload::Ack,
            payload.as_union_value(),
        )
    }

    pub fn error(&mut self, request_id: u64, code: ErrorCode, message: &str) -> &[u8] {
        self.error_with_leader(request_id, code, message, None)
    }

    /// An error that names the leader (with [`ErrorCode::NotLeader`]).
    pub fn error_with_leader(
        &mut self,
        request_id: u64,
        code: ErrorCode,
        message: &str,
        leader: Option<&str>,
    ) -> &[u8] {
        self.begin();
        let message = self.fbb.create_string(message);
        let code = match code {
            ErrorCode::InvalidRequest => wire::ErrorCode::InvalidRequest,
            ErrorCode::UnknownJob => wire::ErrorCode::UnknownJob,
            ErrorCode::JobExists => wire::ErrorCode::JobExists,
            ErrorCode::TooManyTasks => wire::ErrorCode::TooManyTasks,
            ErrorCode::Internal => wire::ErrorCode::Internal,
            ErrorCode::Overloaded => wire::ErrorCode::Overloaded,
            ErrorCode::NotLeader => wire::ErrorCode::NotLeader,
            ErrorCode::QuotaExceeded => wire::ErrorCode::QuotaExceeded,
            ErrorCode::Unauthenticated => wire::ErrorCode::Unauthenticated,
            ErrorCode::PermissionDenied => wire::ErrorCode::PermissionDenied,
        };
        let leader = leader.map(|l| self.fbb.create_string(l));
        let payload = wire::Error::create(
            &mut self.fbb,
            &wire::ErrorArgs {
                code,
                message: Some(message),
                leader,
            },
        );
        self.finish_message(
            request_id,
            None,
            wire::Payload::Error,
            payload.as_union_value(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_config() -> TaskConfig {
        TaskConfig {
            job: "www/prod/hello".parse().unwrap(),
            command: "echo hi".into(),
            resources: Resources {
                cpu_millis: 250,
                ram_mib: 64,
                disk_mib: 16,
                ports: 1,
            },
            port_names: vec!["http".into()],
            constraints: vec![
                Constraint::Value {
                    attribute: "rack".into(),
                    negated: true,
                    values: vec!["r1".into()],
                },
                Constraint::Limit {
                    attribute: "host".into(),
                    limit: 1,
                },
            ],
            tier: Tier::Preemptible,
            priority: 3,
            production: false,
            is_service: true,
            max_task_failures: 2,
            finalization_wait_secs: 5,
            health_check: Some(HealthCheck::with_defaults(HealthChecker::Http {
                port: "http".into(),
                endpoint: "/health".into(),
                expected_status: 200,
            })),
            http_lifecycle: Some(HttpLifecycle {
                port: "http".into(),
                ..HttpLifecycle::default()
            }),
            sla_policy: Some(SlaPolicy::Count {
                count: 2,
                duration_secs: 60,
            }),
            partition_policy: Some(PartitionPolicy {
                reschedule: false,
                delay_secs: 30,
            }),
        }
    }

    fn roundtrip(bytes: &[u8]) -> (u64, OwnedMessage) {
        to_owned(decode_message(bytes).unwrap()).unwrap()
    }

    #[test]
    fn create_job_roundtrips_and_carries_route_key() {
        let mut enc = Encoder::new();
        let config = sample_config();
        let bytes = enc.create_job(7, 20, &config).to_vec();
        assert_eq!(
            decode_message(&bytes).unwrap().route_key(),
            Some("www/prod/hello")
        );
        assert_eq!(
            roundtrip(&bytes),
            (
                7,
                OwnedMessage::CreateJob {
                    job_key: config.job.clone(),
                    instances: 20,
                    config,
                    tier_unset: false,
                }
            )
        );
    }

    #[test]
    fn maintenance_and_restart_roundtrip() {
        let mut enc = Encoder::new();
        let hosts = vec!["h1".to_string(), "h2.example.com".to_string()];
        let bytes = enc
            .host_maintenance(4, MaintenanceOp::Drain, &hosts, 600)
            .to_vec();
        assert_eq!(
            roundtrip(&bytes),
            (
                4,
                OwnedMessage::HostMaintenance {
                    op: MaintenanceOp::Drain,
                    hosts,
                    drain_timeout_secs: 600,
                }
            )
        );
        let status = vec![HostStatusView {
            host: "h1".into(),
            mode: HostMode::Draining,
            active_tasks: 3,
            blocked: vec![HostBlockerView {
                task_id: TaskId(7),
                job_key: "www/prod/web".into(),
                instance: 2,
                reason: "SLA".into(),
            }],
            drain_deadline_ms: 1_700_000_000_000,
            forced: true,
        }];
        let bytes = enc.host_status_list(5, &status).to_vec();
        assert_eq!(roundtrip(&bytes), (5, OwnedMessage::HostStatusList(status)));
        let key: JobKey = "www/prod/web".parse().unwrap();
        let bytes = enc.restart_job(6, &key, &[0, 3]).to_vec();
        let message = decode_message(&bytes).unwrap();
        assert_eq!(message.route_key(), Some("www/prod/web"));
        assert_eq!(
            roundtrip(&bytes),
            (
                6,
                OwnedMessage::RestartJob {
                    job_key: key,
                    instances: vec![0, 3],
                }
            )
        );
    }

    #[test]
    fn launch_and_status_roundtrip() {
        let mut enc = Encoder::new();
        let config = sample_config();
        let ports = vec![("http".to_string(), 31_000)];
        let bytes = enc.launch_task(TaskId(9), 3, &config, &ports).to_vec();
        match roundtrip(&bytes).1 {
            OwnedMessage::LaunchTask(l) => {
                assert_eq!(l.task_id, TaskId(9));
                assert_eq!(l.instance, 3);
                // A launch carries what the agent reads, not the scheduler's policies.
                let for_agent = TaskConfig {
                    sla_policy: None,
                    partition_policy: None,
                    ..config.clone()
                };
                assert_eq!(l.config, for_agent);
                assert!(l.config.health_check.is_some() && l.config.http_lifecycle.is_some());
                assert_eq!(l.ports, ports);
            }
            other => panic!("{other:?}"),
        }
        let status = TaskStatusReport {
            task_id: TaskId(9),
            job_key: "www/prod/hello".into(),
            instance: 3,
            state: TaskState::Failed,
            exit_code: 2,
            message: "exit 2".into(),
            timestamp_ms: 42,
            sandbox: "/tmp/s".into(),
            usage: Some(TaskUsage {
                cpu_time_ms: 1_234,
                peak_memory_bytes: 56 << 20,
                disk_bytes: 4096,
            }),
        };
        assert_eq!(
            roundtrip(enc.task_status(&status)).1,
            OwnedMessage::TaskStatus(status)
        );
    }

    #[test]
    fn register_roundtrips() {
        let mut enc = Encoder::new();
        let reg = AgentRegistration {
            agent_id: "a1".into(),
            hostname: "h1".into(),
            resources: Resources {
                cpu_millis: 4000,
                ram_mib: 8192,
                disk_mib: 10_000,
                ports: 100,
            },
            port_ranges: vec![(31_000, 31_099)],
            attributes: vec![("rack".into(), "r1".into())],
            tasks: vec![],
            log_port: 8080,
        };
        assert_eq!(
            roundtrip(enc.register_agent(&reg)).1,
            OwnedMessage::RegisterAgent(reg)
        );
    }

    #[test]
    fn status_ack_roundtrips() {
        let mut enc = Encoder::new();
        let acks = vec![
            (TaskId(1), TaskState::Finished),
            (TaskId(u64::MAX), TaskState::Running),
            (TaskId(7), TaskState::Lost),
        ];
        let bytes = enc.status_ack(&acks).to_vec();
        let message = decode_message(&bytes).unwrap();
        assert_eq!(message.payload_type(), wire::Payload::StatusAck);
        assert_eq!(message.route_key(), None);
        assert_eq!(roundtrip(&bytes), (0, OwnedMessage::StatusAck(acks)));
        assert_eq!(
            roundtrip(enc.status_ack(&[])).1,
            OwnedMessage::StatusAck(vec![])
        );
        // Vectors left out read as empty.
        let bytes = {
            let fbb = enc.builder();
            fbb.reset();
            let payload = wire::StatusAck::create(fbb, &wire::StatusAckArgs::default());
            enc.finish_message(0, None, wire::Payload::StatusAck, payload.as_union_value())
                .to_vec()
        };
        assert_eq!(roundtrip(&bytes).1, OwnedMessage::StatusAck(vec![]));
    }

    /// A StatusAck built by hand from raw vectors.
    fn raw_status_ack(enc: &mut Encoder, task_ids: &[u64], states: &[u8]) -> Vec<u8> {
        let fbb = enc.builder();
        fbb.reset();
        let task_ids = fbb.create_vector(task_ids);
        let states: Vec<wire::TaskState> = states.iter().map(|&s| wire::TaskState(s)).collect();
        let states = fbb.create_vector(&states);
        let payload = wire::StatusAck::create(
            fbb,
            &wire::StatusAckArgs {
                task_ids: Some(task_ids),
                states: Some(states),
            },
        );
        enc.finish_message(0, None, wire::Payload::StatusAck, payload.as_union_value())
            .to_vec()
    }

    #[test]
    fn status_ack_with_mismatched_vectors_is_invalid() {
        let mut enc = Encoder::new();
        let finished = TaskState::Finished as u8;
        for (ids, states) in [
            (&[1u64, 2][..], &[finished][..]),
            (&[1u64][..], &[finished, finished][..]),
            (&[][..], &[finished][..]),
        ] {
            let bytes = raw_status_ack(&mut enc, ids, states);
            match to_owned(decode_message(&bytes).unwrap()) {
                Err(WireError::InvalidField { field, .. }) => assert_eq!(field, "states"),
                other => panic!("{other:?}"),
            }
        }
        // An unknown state is invalid too, not a silent skip.
        let bytes = raw_status_ack(&mut enc, &[1], &[200]);
        assert!(matches!(
            to_owned(decode_message(&bytes).unwrap()),
            Err(WireError::InvalidField { field: "state", .. })
        ));
    }

    #[test]
    fn create_job_spec_carries_tier_unset() {
        let mut enc = Encoder::new();
        let config = sample_config();
        for (tier_explicit, expected) in [(true, false), (false, true)] {
            let bytes = enc.create_job_spec(8, 2, &config, tier_explicit).to_vec();
            let message = decode_message(&bytes).unwrap();
            assert_eq!(message.route_key(), Some("www/prod/hello"));
            let wire_config = message.payload_as_create_job().unwrap().config();
            assert_eq!(tier_unset(wire_config), expected);
            // The tier is sent either way; the config reads back unchanged.
            assert_eq!(
                task_config_from_wire(config.job.clone(), wire_config).unwrap(),
                config
            );
            assert_eq!(
                roundtrip(&bytes),
                (
                    8,
                    OwnedMessage::CreateJob {
                        job_key: config.job.clone(),
                        instances: 2,
                        config: config.clone(),
                        tier_unset: expected,
                    }
                )
            );
        }
        // `create_job` is the explicit form, and launches never say "unset".
        let bytes = enc.create_job(1, 1, &config).to_vec();
        assert!(!tier_unset(
            decode_message(&bytes)
                .unwrap()
                .payload_as_create_job()
                .unwrap()
                .config()
        ));
        let bytes = enc.launch_task(TaskId(1), 0, &config, &[]).to_vec();
        assert!(!tier_unset(
            decode_message(&bytes)
                .unwrap()
                .payload_as_launch_task()
                .unwrap()
                .config()
        ));
    }

    #[test]
    fn a_config_without_tier_unset_reads_as_explicit() {
        // What an older client builds: no tier_unset field at all.
        let mut enc = Encoder::new();
        let bytes = {
            let fbb = enc.builder();
            fbb.reset();
            let job_key = fbb.create_string("www/prod/hello");
            let command = fbb.create_string("true");
            let resources = wire::Resources::new(100, 16, 16, 0);
            let config = wire::TaskConfig::create(
                fbb,
                &wire::TaskConfigArgs {
                    command: Some(command),
                    resources: Some(&resources),
                    tier: wire::Tier::Revocable,
                    ..Default::default()
                },
            );
            let payload = wire::CreateJob::create(
                fbb,
                &wire::CreateJobArgs {
                    job_key: Some(job_key),
                    instances: 1,
                    config: Some(config),
                },
            );
            enc.finish_message(3, None, wire::Payload::CreateJob, payload.as_union_value())
                .to_vec()
        };
        match roundtrip(&bytes).1 {
            OwnedMessage::CreateJob {
                config, tier_unset, ..
            } => {
                assert!(!tier_unset);
                assert_eq!(config.tier, Tier::Revocable);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn set_and_get_quota_roundtrip_and_route_on_the_role() {
        let mut enc = Encoder::new();
        let quota = Resources {
            cpu_millis: 4000,
            ram_mib: 8192,
            disk_mib: 10_240,
            ports: 0,
        };
        let bytes = enc.set_quota(11, "www", &quota).to_vec();
        let message = decode_message(&bytes).unwrap();
        assert_eq!(message.payload_type(), wire::Payload::SetQuota);
        assert_eq!(message.route_key(), Some("www"));
        assert_eq!(
            roundtrip(&bytes),
            (
                11,
                OwnedMessage::SetQuota {
                    role: "www".into(),
                    quota
                }
            )
        );
        // Ports are not part of a quota.
        let with_ports = Resources { ports: 9, ..quota };
        assert_eq!(
            roundtrip(enc.set_quota(12, "www", &with_ports)).1,
            OwnedMessage::SetQuota {
                role: "www".into(),
                quota
            }
        );
        // A zero quota is a quota.
        assert_eq!(
            roundtrip(enc.set_quota(13, "batch", &Resources::ZERO)).1,
            OwnedMessage::SetQuota {
                role: "batch".into(),
                quota: Resources::ZERO
            }
        );

        let bytes = enc.get_quota(14, "www").to_vec();
        let message = decode_message(&bytes).unwrap();
        assert_eq!(message.payload_type(), wire::Payload::GetQuota);
        assert_eq!(message.route_key(), Some("www"));
        assert_eq!(
            roundtrip(&bytes),
            (14, OwnedMessage::GetQuota { role: "www".into() })
        );
    }

    #[test]
    fn quota_info_roundtrips() {
        let mut enc = Encoder::new();
        let info = QuotaView {
            role: "www".into(),
            quota: Resources {
                cpu_millis: 4000,
                ram_mib: 8192,
                disk_mib: 10_240,
                ports: 0,
            },
            used: Resources {
                cpu_millis: 1500,
                ram_mib: 3072,
                disk_mib: 0,
                ports: 0,
            },
            quota_set: true,
        };
        let bytes = enc.quota_info(15, &info).to_vec();
        assert_eq!(decode_message(&bytes).unwrap().route_key(), None);
        assert_eq!(
            roundtrip(&bytes),
            (15, OwnedMessage::QuotaInfo(info.clone()))
        );
        let unset = QuotaView {
            role: "batch".into(),
            quota: Resources::ZERO,
            used: Resources {
                cpu_millis: 250,
                ..Resources::ZERO
            },
            quota_set: false,
        };
        assert_eq!(
            roundtrip(enc.quota_info(16, &unset)).1,
            OwnedMessage::QuotaInfo(unset)
        );
        // Absent quota and used read as zero.
        let bytes = {
            let fbb = enc.builder();
            fbb.reset();
            let role = fbb.create_string("r");
            let payload = wire::QuotaInfo::create(
                fbb,
                &wire::QuotaInfoArgs {
                    role: Some(role),
                    ..Default::default()
                },
            );
            enc.finish_message(17, None, wire::Payload::QuotaInfo, payload.as_union_value())
                .to_vec()
        };
        assert_eq!(
            roundtrip(&bytes).1,
            OwnedMessage::QuotaInfo(QuotaView {
                role: "r".into(),
                ..QuotaView::default()
            })
        );
    }

    #[test]
    fn job_status_carries_pending_reason_and_preemptor() {
        let mut enc = Encoder::new();
        let task = |instance: u32, state, reason: &str, preempted_by| TaskInfoView {
            task_id: 100 + u64::from(instance),
            instance,
            state: Some(state),
            agent_id: String::new(),
            hostname: String::new(),
            failure_count: 0,
            exit_code: -1,
            message: String::new(),
            ports: vec![],
            sandbox: String::new(),
            pending_reason: reason.into(),
            preempted_by,
            events: vec![TaskEventView {
                unix_ms: 1_700_000_000_000 + u64::from(instance),
                state: Some(state),
                message: reason.into(),
            }],
            usage: (state == TaskState::Finished).then_some(TaskUsage {
                cpu_time_ms: 7,
                peak_memory_bytes: 1 << 20,
                disk_bytes: 0,
            }),
        };
        let status = JobStatusView {
            job: JobSummaryView {
                job_key: "www/prod/hello".into(),
                instances: 3,
                is_service: true,
                state_counts: [0; TaskState::COUNT],
                cron: None,
                update: None,
            },
            tasks: vec![
                task(0, TaskState::Pending, "Insufficient: ram", None),
                task(1, TaskState::Killed, "", Some(0xfeed_0000_0001)),
                task(2, TaskState::Running, "", None),
            ],
        };
        assert_eq!(
            roundtrip(enc.job_status(21, &status)),
            (21, OwnedMessage::JobStatus(status))
        );
    }

    #[test]
    fn quota_exceeded_roundtrips() {
        let mut enc = Encoder::new();
        assert_eq!(
            roundtrip(enc.error(5, ErrorCode::QuotaExceeded, "over quota")).1,
            OwnedMessage::Error {
                code: ErrorCode::QuotaExceeded,
                message: "over quota".into(),
                leader: None
            }
        );
    }

    #[test]
    fn appended_type_numbers_stay_put() {
        // Older peers know these numbers: appending must not renumber anything.
        assert_eq!(wire::Payload::StatusAck.0, 16);
        assert_eq!(wire::Payload::SetQuota.0, 17);
        assert_eq!(wire::Payload::GetQuota.0, 18);
        assert_eq!(wire::Payload::QuotaInfo.0, 19);
        assert_eq!(wire::ErrorCode::NotLeader.0, 7);
        assert_eq!(wire::ErrorCode::QuotaExceeded.0, 8);
    }

    #[test]
    fn garbage_is_a_clean_error() {
        assert!(decode_message(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3]).is_err());
        assert!(decode_message(&[]).is_err());
    }
}
