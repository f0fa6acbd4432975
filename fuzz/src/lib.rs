//! What the fuzz targets share: the record format of the structured targets' inputs, the
//! generators that turn fuzz bytes into mostly-valid domain values (job configs, agent
//! registrations, statuses), the re-encoding of decoded messages (the codec round trip) and the
//! job files the seeds are built from.
//!
//! Inputs of `scheduler_messages` and `agent_messages` are sequences of records, `tag: u8`,
//! `len: u16 LE`, then `len` bytes (a length past the end takes the rest), so that the seed
//! generator can write real encoded messages into them byte for byte ([`TAG_RAW_CLIENT`]...)
//! next to structured operations ([`TAG_OP`]: the payload is read with `arbitrary`).

use arbitrary::{Arbitrary, Unstructured};
use borealis_core::cron::CollisionPolicy;
use borealis_core::update::{Command, UpdateSettings};
use borealis_core::{
    Constraint, HealthCheck, HealthChecker, HttpLifecycle, JobKey, MaintenanceOp, PartitionPolicy,
    Resources, SlaPolicy, TaskConfig, TaskId, TaskState, TaskUsage, Tier,
};
use borealis_net::views::{AgentRegistration, OwnedMessage, TaskStatusReport};
use borealis_net::Encoder;

// ----- records -----

/// A record whose payload is one wire message, sent as it is by a client.
pub const TAG_RAW_CLIENT: u8 = 0;
/// A record whose payload is one wire message, sent as it is by an agent.
pub const TAG_RAW_AGENT: u8 = 1;
/// A record whose payload is a structured operation (read with `arbitrary`).
pub const TAG_OP: u8 = 2;
/// Time passes: the payload's first four bytes (u32 LE) are milliseconds (scheduler target).
pub const TAG_ADVANCE: u8 = 3;
/// Every task the shards launched is reported in the state `payload[0]` names
/// (`TaskState as u8`, modulo the count) by the agent it runs on (scheduler target).
pub const TAG_REPORT_ALL: u8 = 4;
/// Tags are read modulo this.
pub const TAGS: u8 = 5;

/// The records of an input, in order.
pub fn records(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 3 {
        let tag = data[0] % TAGS;
        let len = usize::from(u16::from_le_bytes([data[1], data[2]]));
        let rest = &data[3..];
        let take = len.min(rest.len());
        out.push((tag, &rest[..take]));
        data = &rest[take..];
    }
    out
}

/// Appends one record (what the seed generator writes).
pub fn push_record(out: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    let len = u16::try_from(payload.len()).expect("a record's payload fits 64 KiB");
    out.push(tag);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
}

// ----- picks from small pools (so that operations meet each other) -----

/// Job keys: valid ones, one in an environment the scheduler's default pattern refuses, and a
/// few the key grammar refuses (built field by field, as a peer may send any text).
pub fn job_key(pick: u8) -> JobKey {
    const KEYS: &[(&str, &str, &str)] = &[
        ("www", "prod", "web"),
        ("www", "devel", "hello"),
        ("www", "prod", "cron"),
        ("ads", "staging2", "batch"),
        ("ads", "test", "svc"),
        ("db", "prod", "shard"),
        ("www", "qa", "unlisted_env"),
        ("..", ".", ".x"),
        ("", "prod", "empty_role"),
        ("www/x", "prod", "slash"),
        ("www", "prod", "name with space"),
    ];
    let (r, e, n) = KEYS[usize::from(pick) % KEYS.len()];
    JobKey {
        role: r.into(),
        environment: e.into(),
        name: n.into(),
    }
}

pub fn role(pick: u8) -> String {
    const ROLES: &[&str] = &["www", "ads", "db", "", "www/x", "nobody"];
    ROLES[usize::from(pick) % ROLES.len()].to_string()
}

pub fn host(pick: u8) -> String {
    const HOSTS: &[&str] = &["host-a", "host-b", "host-c", "", "host-a.example"];
    HOSTS[usize::from(pick) % HOSTS.len()].to_string()
}

fn attribute_name(pick: u8) -> String {
    const NAMES: &[&str] = &["host", "rack", "zone", "dedicated", ""];
    NAMES[usize::from(pick) % NAMES.len()].to_string()
}

fn attribute_value(pick: u8) -> String {
    const VALUES: &[&str] = &["r1", "r2", "z1", "www/web", "host-a", ""];
    VALUES[usize::from(pick) % VALUES.len()].to_string()
}

pub fn state(pick: u8) -> TaskState {
    TaskState::ALL[usize::from(pick) % TaskState::COUNT]
}

/// Short text: mostly from a pool, sometimes the fuzzer's own.
#[derive(Arbitrary, Debug, Clone)]
pub enum Text {
    Pool(u8),
    Own(String),
}

impl Text {
    pub fn get(&self, pool: &[&str]) -> String {
        match self {
            Text::Pool(i) => pool[usize::from(*i) % pool.len()].to_string(),
            Text::Own(s) => s.chars().take(200).collect(),
        }
    }
}

const COMMANDS: &[&str] = &["sim run", "echo hi", "sleep 1", " ", ""];
const PORT_NAMES: &[&str] = &["http", "health", "admin", "", "HTTP", "a-b"];
const SCHEDULES: &[&str] = &[
    "*/5 * * * *",
    "0 0 * * *",
    "@hourly",
    "@daily",
    "61 * * * *",
    "",
    "* * * * * *",
    "0 12 * * MON-FRI",
];

// ----- job configs -----

#[derive(Arbitrary, Debug, Clone)]
pub struct HealthGen {
    pub shell: bool,
    pub port: Text,
    pub endpoint: Text,
    pub expected_status: u16,
    pub initial: u8,
    pub interval: u8,
    pub timeout: u8,
    pub failures: u8,
    pub successes: u8,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum SlaGen {
    Count { count: u8, duration: u16 },
    Percentage { millis: u32, duration: u16 },
    Coordinator { url: Text, key: Text },
}

#[derive(Arbitrary, Debug, Clone)]
pub struct ConstraintGen {
    pub limit: bool,
    pub attribute: u8,
    pub negated: bool,
    pub values: Vec<u8>,
    pub bound: u8,
}

/// A job's config: small resources (so tasks fit the agents), the fields a job file sets.
#[derive(Arbitrary, Debug, Clone)]
pub struct ConfigGen {
    pub command: Text,
    pub cpu: u16,
    pub ram: u16,
    pub disk: u16,
    pub ports: Vec<Text>,
    pub constraints: Vec<ConstraintGen>,
    pub tier: u8,
    pub priority: i8,
    pub production: bool,
    pub service: bool,
    pub max_task_failures: i8,
    pub finalization_wait_secs: u8,
    pub health: Option<HealthGen>,
    pub lifecycle: Option<(Text, u8, u8)>,
    pub sla: Option<SlaGen>,
    pub partition: Option<(bool, u16)>,
}

impl ConfigGen {
    pub fn build(&self, job: JobKey) -> TaskConfig {
        let port_names: Vec<String> = self
            .ports
            .iter()
            .take(4)
            .map(|p| p.get(PORT_NAMES))
            .collect();
        TaskConfig {
            job,
            command: self.command.get(COMMANDS),
            resources: Resources {
                cpu_millis: u32::from(self.cpu % 4001),
                ram_mib: u32::from(self.ram % 4097),
                disk_mib: u32::from(self.disk % 4097),
                ports: port_names.len() as u16,
            },
            port_names,
            constraints: self
                .constraints
                .iter()
                .take(4)
                .map(|c| {
                    if c.limit {
                        Constraint::Limit {
                            attribute: attribute_name(c.attribute),
                            limit: u32::from(c.bound % 4),
                        }
                    } else {
                        Constraint::Value {
                            attribute: attribute_name(c.attribute),
                            negated: c.negated,
                            values: c
                                .values
                                .iter()
                                .take(4)
                                .map(|v| attribute_value(*v))
                                .collect(),
                        }
                    }
                })
                .collect(),
            tier: Tier::ALL[usize::from(self.tier) % Tier::ALL.len()],
            priority: i32::from(self.priority),
            production: self.production,
            is_service: self.service,
            max_task_failures: i32::from(self.max_task_failures),
            finalization_wait_secs: u32::from(self.finalization_wait_secs),
            health_check: self.health.as_ref().map(|h| HealthCheck {
                checker: if h.shell {
                    HealthChecker::Shell {
                        command: h.endpoint.get(COMMANDS),
                    }
                } else {
                    HealthChecker::Http {
                        port: h.port.get(PORT_NAMES),
                        endpoint: h.endpoint.get(&["/health", "health", "/", ""]),
                        expected_status: h.expected_status,
                    }
                },
                initial_interval_secs: u32::from(h.initial),
                interval_secs: u32::from(h.interval),
                timeout_secs: u32::from(h.timeout),
                max_consecutive_failures: u32::from(h.failures),
                min_consecutive_successes: u32::from(h.successes),
            }),
            http_lifecycle: self.lifecycle.as_ref().map(|(port, g, s)| HttpLifecycle {
                port: port.get(PORT_NAMES),
                graceful_shutdown_endpoint: "/quitquitquit".into(),
                shutdown_endpoint: "/abortabortabort".into(),
                graceful_shutdown_wait_secs: u32::from(*g),
                shutdown_wait_secs: u32::from(*s),
            }),
            sla_policy: self.sla.as_ref().map(|s| match s {
                SlaGen::Count { count, duration } => SlaPolicy::Count {
                    count: u32::from(*count),
                    duration_secs: u64::from(*duration),
                },
                SlaGen::Percentage { millis, duration } => SlaPolicy::Percentage {
                    percentage_millis: *millis % 120_000,
                    duration_secs: u64::from(*duration),
                },
                SlaGen::Coordinator { url, key } => SlaPolicy::Coordinator {
                    coordinator_url: url.get(&["http://127.0.0.1:1/sla", "ftp://x", ""]),
                    status_key: key.get(&["drain", ""]),
                },
            }),
            partition_policy: self.partition.map(|(reschedule, delay)| PartitionPolicy {
                reschedule,
                delay_secs: u64::from(delay),
            }),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub struct SettingsGen {
    pub batch_size: u8,
    pub max_per_instance_failures: u8,
    pub max_total_failures: u8,
    pub watch_secs: u8,
    pub rollback_on_failure: bool,
    pub wait_for_batch_completion: bool,
    pub pulse_interval_secs: Option<u8>,
    pub sla_aware: bool,
}

impl SettingsGen {
    pub fn build(&self) -> UpdateSettings {
        UpdateSettings {
            batch_size: u32::from(self.batch_size % 8),
            max_per_instance_failures: u32::from(self.max_per_instance_failures % 4),
            max_total_failures: u32::from(self.max_total_failures % 4),
            watch_secs: u32::from(self.watch_secs),
            rollback_on_failure: self.rollback_on_failure,
            wait_for_batch_completion: self.wait_for_batch_completion,
            pulse_interval_secs: self.pulse_interval_secs.map(u32::from),
            sla_aware: self.sla_aware,
        }
    }
}

pub fn maintenance_op(pick: u8) -> MaintenanceOp {
    [
        MaintenanceOp::Start,
        MaintenanceOp::Drain,
        MaintenanceOp::Status,
        MaintenanceOp::End,
    ][usize::from(pick) % 4]
}

pub fn update_command(pick: u8) -> Command {
    [
        Command::Pause,
        Command::Resume,
        Command::Abort,
        Command::Rollback,
        Command::Pulse,
    ][usize::from(pick) % 5]
}

pub fn schedule(text: &Text) -> String {
    text.get(SCHEDULES)
}

pub fn collision_policy(cancel_new: bool) -> CollisionPolicy {
    if cancel_new {
        CollisionPolicy::CancelNew
    } else {
        CollisionPolicy::KillExisting
    }
}

// ----- agents -----

#[derive(Arbitrary, Debug, Clone)]
pub struct AgentGen {
    pub name: u8,
    pub host: u8,
    pub cpu: u16,
    pub ram: u16,
    pub disk: u16,
    pub ports: u16,
    pub port_ranges: Vec<(u16, u16)>,
    pub attributes: Vec<(u8, u8)>,
    pub log_port: u16,
}

pub fn agent_name(pick: u8) -> String {
    const NAMES: &[&str] = &["agent-1", "agent-2", "agent-3", ""];
    NAMES[usize::from(pick) % NAMES.len()].into()
}

impl AgentGen {
    pub fn build(&self, tasks: Vec<TaskStatusReport>) -> AgentRegistration {
        AgentRegistration {
            agent_id: agent_name(self.name),
            hostname: host(self.host),
            resources: Resources {
                cpu_millis: u32::from(self.cpu) * 4,
                ram_mib: u32::from(self.ram),
                disk_mib: u32::from(self.disk),
                ports: self.ports,
            },
            port_ranges: self.port_ranges.iter().take(4).copied().collect(),
            attributes: self
                .attributes
                .iter()
                .take(6)
                .map(|(k, v)| (attribute_name(*k), attribute_value(*v)))
                .collect(),
            tasks,
            log_port: self.log_port,
        }
    }
}

/// A registration the seeds and the targets start from: an agent big enough for the
/// generated jobs, on a rack, with ports.
pub fn standard_agent(name: &str, host: &str, rack: &str) -> AgentRegistration {
    AgentRegistration {
        agent_id: name.into(),
        hostname: host.into(),
        resources: Resources {
            cpu_millis: 16_000,
            ram_mib: 32_768,
            disk_mib: 65_536,
            ports: 100,
        },
        port_ranges: vec![(31_000, 31_099)],
        attributes: vec![("host".into(), host.into()), ("rack".into(), rack.into())],
        tasks: Vec::new(),
        log_port: 0,
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub struct UsageGen {
    pub cpu_time_ms: u64,
    pub peak_memory_bytes: u64,
    pub disk_bytes: u64,
}

pub fn usage(u: &Option<UsageGen>) -> Option<TaskUsage> {
    u.as_ref().map(|u| TaskUsage {
        cpu_time_ms: u.cpu_time_ms,
        peak_memory_bytes: u.peak_memory_bytes,
        disk_bytes: u.disk_bytes,
    })
}

// ----- job files -----

/// The example job files (`examples/*.toml`) with the job key each is created under, as the
/// README's commands create them.
pub const EXAMPLES: &[(&str, &str, &str)] = &[
    (
        "hello.toml",
        "www/devel/hello",
        include_str!("../../examples/hello.toml"),
    ),
    (
        "service.toml",
        "www/prod/web",
        include_str!("../../examples/service.toml"),
    ),
    (
        "update.toml",
        "www/prod/web",
        include_str!("../../examples/update.toml"),
    ),
    (
        "cron.toml",
        "www/prod/cron",
        include_str!("../../examples/cron.toml"),
    ),
    (
        "maintained-service.toml",
        "www/prod/web",
        include_str!("../../examples/maintained-service.toml"),
    ),
];

/// Whether a job file's text sets the top-level `tier` key: the CLI's `names_tier`
/// (cli/src/client.rs), which decides `tier_explicit`.
pub fn names_tier(text: &str) -> bool {
    text.parse::<toml::Table>()
        .is_ok_and(|table| table.contains_key("tier"))
}

// ----- the codec round trip -----

/// Encodes `message` again with the real encoder, when the encoder can say everything the
/// owned view holds (None for a message the encoder cannot carry losslessly: see the arms).
/// The flag says whether the encoding carries `request_id`: the agent's and the scheduler's
/// messages to each other carry none (0).
pub fn reencode(
    e: &mut Encoder,
    request_id: u64,
    message: &OwnedMessage,
) -> Option<(Vec<u8>, bool)> {
    use OwnedMessage as M;
    let carries_id = !matches!(
        message,
        M::RegisterAgent(_)
            | M::TaskStatus(_)
            | M::AgentRegistered { .. }
            | M::Reconcile { .. }
            | M::Heartbeat { .. }
            | M::StatusAck(_)
    );
    let bytes = match message {
        M::RegisterAgent(r) => e.register_agent(r),
        M::TaskStatus(s) => e.task_status(s),
        M::Authenticate { token } => e.authenticate(request_id, token),
        M::ListAgents { after, limit } => e.list_agents_page(
            request_id,
            after
                .as_ref()
                .map(|(host, id)| (host.as_str(), id.as_str())),
            *limit,
        ),
        M::QueryTask { task_id } => e.query_task(request_id, *task_id),
        M::AgentRegistered { agent_id } => e.agent_registered(agent_id),
        M::Reconcile { task_ids } => e.reconcile(task_ids),
        M::Heartbeat { timestamp_ms } => e.heartbeat(*timestamp_ms),
        M::StatusAck(acks) => e.status_ack(acks),
        M::CreateJob {
            job_key,
            instances,
            config,
            tier_unset,
        } if *job_key == config.job => {
            e.create_job_spec(request_id, *instances, config, !tier_unset)
        }
        M::KillJob { job_key, instances } => e.kill_job(request_id, job_key, instances),
        M::QueryJob { job_key } => e.query_job(request_id, job_key),
        M::ListJobs { after, limit } => e.list_jobs_page(request_id, after, *limit),
        M::SetQuota { role, quota } if quota.ports == 0 => e.set_quota(request_id, role, quota),
        M::GetQuota { role } => e.get_quota(request_id, role),
        M::HostMaintenance {
            op,
            hosts,
            drain_timeout_secs,
        } => e.host_maintenance(request_id, *op, hosts, *drain_timeout_secs),
        M::RestartJob { job_key, instances } => e.restart_job(request_id, job_key, instances),
        M::UpdateCommand {
            job_key,
            command,
            message,
        } => e.update_command(request_id, job_key, *command, message),
        M::DescheduleCron { job_key } => e.deschedule_cron(request_id, job_key),
        M::StartCron { job_key } => e.start_cron(request_id, job_key),
        M::Ack => e.ack(request_id),
        M::Error {
            code,
            message,
            leader,
        } => e.error_with_leader(request_id, *code, message, leader.as_deref()),
        // Not carried losslessly on purpose or not compared here: a launch leaves out the
        // scheduler-only policies (SLA, partition), `ErrorCode::InvalidRequest` absorbs
        // unknown codes, and the answers' views hold fields the wire fills in defaults for.
        _ => return None,
    }
    .to_vec();
    Some((bytes, carries_id))
}

/// Reads a structured operation from a record's payload (`arbitrary`), None when it does not
/// make one.
pub fn op<'a, T: Arbitrary<'a>>(payload: &'a [u8]) -> Option<T> {
    T::arbitrary_take_rest(Unstructured::new(payload)).ok()
}

/// A scratch directory of this process for `name` (a log, an agent's work dir): under
/// `$BOREALIS_FUZZ_SCRATCH` when set (scripts/fuzz.sh gives each run its own, and removes only
/// that), else on tmpfs when there is one.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let base = match std::env::var_os("BOREALIS_FUZZ_SCRATCH") {
        Some(dir) => std::path::PathBuf::from(dir),
        None if std::path::Path::new("/dev/shm").is_dir() => "/dev/shm".into(),
        None => std::env::temp_dir(),
    };
    base.join(format!("borealis-fuzz-{name}-{}", std::process::id()))
}

/// A task id the scheduler never issued.
pub fn unknown_task(n: u64) -> TaskId {
    TaskId(0xdead_0000_0000_0000 | n)
}
