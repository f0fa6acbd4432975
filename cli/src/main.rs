//! `borealis`: the scheduler, the agent, the job client and `up` (both on this machine).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod api;
mod certs;
mod client;
mod coordinator;
mod cron;
mod ha;
mod host;
mod http;
mod limits;
mod logs;
mod restart;
mod security;
mod ui;
mod up;
mod update;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};

/// The port `borealis scheduler` and `borealis up` listen on and clients dial by default.
pub const DEFAULT_PORT: u16 = 6070;

#[derive(Parser, Debug)]
#[command(
    name = "borealis",
    version,
    about = "Borealis: a thread-per-core cluster scheduler in the lineage of Apache Aurora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the scheduler.
    Scheduler(Box<SchedulerArgs>),
    /// Run an agent that offers this machine's resources and runs tasks.
    Agent(Box<borealis_agent::AgentCommand>),
    /// Create, inspect and kill jobs.
    Job {
        /// The scheduler to talk to.
        #[arg(long, global = true, default_value = client::DEFAULT_SCHEDULER)]
        scheduler: String,
        #[command(flatten)]
        conn: security::ClientFlags,
        #[command(subcommand)]
        command: client::JobCommand,
    },
    /// Set and show roles' quotas.
    Quota {
        /// The scheduler to talk to.
        #[arg(long, global = true, default_value = client::DEFAULT_SCHEDULER)]
        scheduler: String,
        #[command(flatten)]
        conn: security::ClientFlags,
        #[command(subcommand)]
        command: client::QuotaCommand,
    },
    /// Host maintenance: start, drain (under the jobs' SLAs), status, end.
    Host {
        /// The scheduler to talk to.
        #[arg(long, global = true, default_value = client::DEFAULT_SCHEDULER)]
        scheduler: String,
        #[command(flatten)]
        conn: security::ClientFlags,
        #[command(subcommand)]
        command: host::HostCommand,
    },
    /// Rolling updates of jobs: start, pause, resume, abort, rollback, pulse, list, info.
    Update {
        /// The scheduler to talk to.
        #[arg(long, global = true, default_value = client::DEFAULT_SCHEDULER)]
        scheduler: String,
        #[command(flatten)]
        conn: security::ClientFlags,
        #[command(subcommand)]
        command: update::UpdateCommand,
    },
    /// Cron jobs: schedule, deschedule, start a run now.
    Cron {
        /// The scheduler to talk to.
        #[arg(long, global = true, default_value = client::DEFAULT_SCHEDULER)]
        scheduler: String,
        #[command(flatten)]
        conn: security::ClientFlags,
        #[command(subcommand)]
        command: cron::CronCommand,
    },
    /// Run a scheduler (embedded storage, no etcd) and one local agent in this process.
    #[command(mut_arg("http_port", |a| a.default_value(up::UP_HTTP_PORT_TEXT)))]
    Up(Box<up::UpArgs>),
    /// A task's output: `task logs TASK_ID` reads it from the agent that runs it.
    Task {
        /// The scheduler to talk to.
        #[arg(long, global = true, default_value = client::DEFAULT_SCHEDULER)]
        scheduler: String,
        #[command(flatten)]
        conn: security::ClientFlags,
        #[command(subcommand)]
        command: logs::TaskCommand,
    },
    /// Operator commands that work on a scheduler's data directory.
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 30s, 5min, 1h: {e}"))
}

/// A duration that must be more than zero (Aurora's `[must be > 0]`).
fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("{text:?} must be more than 0")),
        d => Ok(d),
    }
}

/// Aurora's default `allowed_job_environments`.
pub const DEFAULT_ALLOWED_JOB_ENVIRONMENTS: &str = r"^(prod|devel|test|staging\d*)$";

/// `--allowed-job-environments`: kept as text (the shards compile it), refused here unless it
/// compiles.
fn parse_environments_regex(text: &str) -> Result<String, String> {
    regex::Regex::new(text)
        .map(|_| text.to_string())
        .map_err(|e| {
            format!(
                "not a valid regular expression: {}",
                one_line(&e.to_string())
            )
        })
}

/// `--max-schedule-attempts-per-sec`: a rate >= 0 (0: unlimited).
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate >= 0 (attempts per second; 0: unlimited)"
        )),
    }
}

/// `--cron-timezone`: GMT, UTC or an IANA zone name, refused here unless it is one.
fn parse_cron_timezone(text: &str) -> Result<borealis_core::cron::CronTimezone, String> {
    borealis_core::cron::CronTimezone::parse(text).map_err(|e| e.reason().to_string())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads `--tier-config`: the file's text, which must be JSON. Errors name the file.
fn read_tier_config(path: &std::path::Path) -> anyhow::Result<borealis_core::tier::TierConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read tier config {}: {}",
            path.display(),
            client::io_reason(&e)
        )
    })?;
    borealis_core::tier::TierConfig::parse_json(&text)
        .map_err(|e| anyhow::anyhow!("tier config {}: {e}", path.display()))
}

/// Scheduler flags. Names, meanings and defaults follow Aurora's where Aurora has the flag.
#[derive(Args, Debug, Clone)]
pub struct SchedulerArgs {
    /// The ip address to listen on. If not set, the scheduler listens on all interfaces.
    #[arg(long)]
    pub ip: Option<IpAddr>,
    /// Port for agents and clients.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// The port to start an HTTP server on (0 picks a free port).
    #[arg(long, default_value_t = 0)]
    pub http_port: u16,
    /// Directory for durable state: a write-ahead log and snapshots per shard.
    #[arg(long, default_value = "borealis-data")]
    pub data_dir: PathBuf,
    /// Keep all state in memory: no log, no snapshots, nothing survives a restart. For
    /// benchmarks that measure the cost of durability.
    #[arg(long)]
    pub in_memory: bool,
    /// Directory to store backups under (default: DATA_DIR/backups).
    #[arg(long)]
    pub backup_dir: Option<PathBuf>,
    /// Minimum interval on which to write a storage backup.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub backup_interval: Duration,
    /// Maximum number of backups to retain before deleting the oldest backups.
    #[arg(long, default_value_t = 48)]
    pub max_saved_backups: usize,
    /// How often each shard snapshots its state and truncates its log (also after 256 MiB).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub dlog_snapshot_interval: Duration,
    /// After a restart, how long tasks restored on an agent wait for the agent to report them
    /// before they are LOST and replaced.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub reconciliation_grace: Duration,
    /// Name to identify the cluster being served.
    #[arg(long, default_value = "local")]
    pub cluster_name: String,
    /// Number of shards (one thread per core); default: this machine's cores.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    pub no_pin: bool,
    /// Maximum number of allowed tasks in a single job.
    #[arg(long, default_value_t = 4000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tasks_per_job: u32,
    /// Maximum number of terminated tasks to retain in a job history.
    #[arg(long, default_value_t = 100)]
    pub history_max_per_job_threshold: usize,
    /// Time after which the scheduler will prune terminated task history.
    #[arg(long, default_value = "2days", value_parser = parse_duration)]
    pub history_prune_threshold: Duration,
    /// Minimum guaranteed time for task history retention before any pruning is attempted.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub history_min_retention_threshold: Duration,
    /// The amount of time after which to treat a task stuck in a transient state as LOST.
    #[arg(long, default_value = "5min", value_parser = parse_duration)]
    pub transient_task_state_timeout: Duration,
    /// Initial delay before rescheduling a task that has failed to schedule.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub initial_schedule_penalty: Duration,
    /// Maximum delay between attempts to schedule a PENDING task.
    #[arg(long, default_value = "1min", value_parser = parse_duration)]
    pub max_schedule_penalty: Duration,
    /// A task that repeatedly runs for less than this time is considered to be flapping.
    #[arg(long, default_value = "5min", value_parser = parse_duration)]
    pub flapping_task_threshold: Duration,
    /// Initial amount of time to wait before attempting to schedule a flapping task.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub initial_flapping_task_delay: Duration,
    /// Maximum delay between attempts to schedule a flapping task.
    #[arg(long, default_value = "5min", value_parser = parse_duration)]
    pub max_flapping_task_delay: Duration,
    /// etcd endpoints (comma-separated URLs): high availability. Schedulers campaign for
    /// leadership; desired state lives in etcd; the embedded log is not used.
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of this scheduler cluster in etcd (default: /borealis/CLUSTER_NAME).
    #[arg(long)]
    pub etcd_prefix: Option<String>,
    /// TTL of the etcd lease behind leadership: a dead leader is replaced after about this.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub etcd_lease_ttl: Duration,
    /// After leading for this duration, the scheduler steps down and campaigns again.
    #[arg(long, default_value = "1day", value_parser = parse_duration)]
    pub max_leading_duration: Duration,
    /// The client address other schedulers name as the leader (default: --ip:--port).
    #[arg(long)]
    pub advertise: Option<String>,
    /// How long an idle shard spins before parking, in microseconds (0: park at once).
    #[arg(long, default_value_t = 50)]
    pub spin_before_park_us: u64,
    /// io_uring memory per shard, in KiB (at least 512).
    #[arg(long, default_value_t = 1024)]
    pub io_memory_kib: usize,
    /// Configuration file defining supported task tiers, task traits and behaviors (Aurora's
    /// JSON format). Without it: Aurora's stock tiers.
    #[arg(long, value_name = "PATH")]
    pub tier_config: Option<PathBuf>,
    /// Enable the preemptor and preemption (`--enable-preemptor=false` turns it off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub enable_preemptor: bool,
    /// Time interval after which a pending task becomes eligible to preempt other tasks.
    #[arg(long, default_value = "3min", value_parser = parse_duration)]
    pub preemption_delay: Duration,
    /// Time to hold a preemption slot found before it is discarded.
    #[arg(long, default_value = "5min", value_parser = parse_duration)]
    pub preemption_slot_hold_time: Duration,
    /// Time interval between pending task preemption slot searches.
    #[arg(long, default_value = "1min", value_parser = parse_duration)]
    pub preemption_slot_search_interval: Duration,
    /// Initial amount of time to wait before first attempting to schedule a PENDING task.
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    pub first_schedule_delay: Duration,
    /// Maximum number of scheduling attempts to make per second (0: unlimited).
    ///
    /// Accepted with Aurora's meaning, but Borealis defaults to 0 (unlimited) rather than
    /// Aurora's 40.0: its batched scheduling rounds place tens of thousands of tasks per
    /// second, and a 40/s cap would throttle that.
    #[arg(long, default_value = "0", value_parser = parse_rate)]
    pub max_schedule_attempts_per_sec: f64,
    /// Regular expression describing the environments that are allowed to be used by jobs.
    #[arg(long, default_value = DEFAULT_ALLOWED_JOB_ENVIRONMENTS,
          value_parser = parse_environments_regex)]
    pub allowed_job_environments: String,
    /// Whether a lost agent's RUNNING tasks go PARTITIONED (their job's partition policy then
    /// decides when they are LOST and replaced) rather than LOST at once.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true")]
    pub partition_aware: bool,
    /// Minimum number of instances required for a job to be eligible for SLA check. This does
    /// not apply to jobs that have a coordinator SLA policy.
    #[arg(long, default_value_t = 20)]
    pub min_required_instances_for_sla_check: u32,
    /// Maximum duration window for which SLA requirements are to be satisfied. This does not
    /// apply to jobs that have a coordinator SLA policy.
    #[arg(long, default_value = "2h", value_parser = parse_duration)]
    pub max_sla_duration_secs: Duration,
    /// The minimum amount of time to wait before retrying an SLA-aware kill (using a truncated
    /// binary backoff).
    #[arg(long, default_value = "1min", value_parser = parse_positive_duration)]
    pub sla_aware_kill_retry_min_delay: Duration,
    /// The maximum amount of time to wait before retrying an SLA-aware kill (using a truncated
    /// binary backoff).
    #[arg(long, default_value = "5min", value_parser = parse_positive_duration)]
    pub sla_aware_kill_retry_max_delay: Duration,
    /// Timeout interval for communicating with a coordinator.
    #[arg(long, default_value = "1min", value_parser = parse_positive_duration)]
    pub sla_coordinator_timeout: Duration,
    /// Maximum number of coordinators that can be contacted in parallel.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_parallel_coordinated_maintenance: u32,
    /// When killing a task, retry after this delay if the agent has not answered, backing off
    /// up to --transient-task-state-timeout.
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    pub initial_task_kill_retry_interval: Duration,
    /// Initial amount of time to delay task reconciliation after scheduler start up.
    #[arg(long, default_value = "1min", value_parser = parse_duration)]
    pub reconciliation_initial_delay: Duration,
    /// Interval on which the scheduler asks agents for the status of every non-terminal task
    /// it believes they run.
    #[arg(long, default_value = "60min", value_parser = parse_positive_duration)]
    pub reconciliation_explicit_interval: Duration,
    /// Number of tasks in a single batch request sent to an agent for explicit reconciliation.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub reconciliation_explicit_batch_size: u32,
    /// Interval between explicit batch reconciliation requests.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub reconciliation_explicit_batch_interval: Duration,
    /// Interval on which the scheduler asks agents for the status of every task they run.
    #[arg(long, default_value = "60min", value_parser = parse_positive_duration)]
    pub reconciliation_implicit_interval: Duration,
    /// Difference between explicit and implicit reconciliation intervals intended to create a
    /// non-overlapping task reconciliation schedule.
    #[arg(long, default_value = "30min", value_parser = parse_duration)]
    pub reconciliation_schedule_spread: Duration,
    /// Maximum number of completed job updates to retain in a job update history.
    #[arg(long, default_value_t = 10)]
    pub job_update_history_per_job_threshold: usize,
    /// Job update history pruning threshold: completed updates older than this are pruned.
    #[arg(long, default_value = "30days", value_parser = parse_duration)]
    pub job_update_history_pruning_threshold: Duration,
    /// Upper limit on the number of failures allowed during a job update. This helps cap
    /// potentially unbounded entries into storage.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_update_instance_failures: u32,
    /// TimeZone to use for cron predictions (GMT, UTC or an IANA name such as
    /// America/New_York).
    #[arg(long, default_value = borealis_core::cron::CRON_TIMEZONE_DEFAULT,
          value_parser = parse_cron_timezone)]
    pub cron_timezone: borealis_core::cron::CronTimezone,
    /// Initial backoff delay while waiting for a previous cron run to be killed.
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    pub cron_start_initial_backoff: Duration,
    /// Max backoff delay while waiting for a previous cron run to be killed.
    #[arg(long, default_value = "1min", value_parser = parse_positive_duration)]
    pub cron_start_max_backoff: Duration,
    /// The maximum number of triggered cron jobs that can be processed in a batch.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub cron_scheduling_max_batch_size: u32,
    /// Fault injection, for the fail-stop tests only (ARCHITECTURE.md, "Fail-stop and restart
    /// after a crash"): `SHARD[:MS]` makes that shard panic on its first round MS ms (default
    /// 0) after it started. Hidden; also read from BOREALIS_FAULT_PANIC_SHARD.
    #[arg(long, hide = true, env = "BOREALIS_FAULT_PANIC_SHARD",
          value_parser = borealis_shards::FaultPanic::parse)]
    pub fault_panic_shard: Option<borealis_shards::FaultPanic>,
    #[command(flatten)]
    pub security: security::SecurityArgs,
    #[command(flatten)]
    pub limits: limits::LimitArgs,
}

impl SchedulerArgs {
    /// `--shards`, or one per core.
    fn shard_count(&self) -> usize {
        self.shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The HA settings, when `--etcd-endpoints` is given.
    pub fn ha_config(&self) -> Option<ha::HaConfig> {
        if self.etcd_endpoints.is_empty() {
            return None;
        }
        let advertise = self.advertise.clone().unwrap_or_else(|| {
            let ip = self.ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            let ip = if ip.is_unspecified() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                ip
            };
            SocketAddr::new(ip, self.port).to_string()
        });
        let mut election = borealis_control::ElectionConfig::new(
            self.etcd_endpoints.clone(),
            self.etcd_prefix
                .clone()
                .unwrap_or_else(|| format!("/borealis/{}", self.cluster_name)),
            advertise,
        );
        election.lease_ttl_secs = self.etcd_lease_ttl.as_secs().max(2) as i64;
        election.max_leading = self.max_leading_duration;
        Some(ha::HaConfig {
            election,
            shards: self.shard_count(),
        })
    }

    /// Starts the scheduler (and, with etcd, its control thread) and its HTTP endpoint.
    pub fn start(&self) -> anyhow::Result<(borealis_shards::Scheduler, SocketAddr)> {
        let security = self.security.resolve()?;
        self.security.check_exposure(self.ip, &security)?;
        let mut config = self.to_config_with(&security)?;
        let metrics = borealis_shards::metrics::Metrics::new(config.shards, &config.cluster_name);
        if let Some(path) = &self.security.audit_log {
            config.security.audit = Some(borealis_shards::audit_log::AuditLog::open(
                path,
                metrics.audit_dropped_total.clone(),
            )?);
        }
        let (links, view) = match self.ha_config() {
            Some(ha_config) => {
                let (links, view) = ha::start(ha_config, metrics.clone())?;
                (Some(links), Some(view))
            }
            None => (None, None),
        };
        let backup_requests = config.backup_requests.clone();
        let audit = config.security.audit.clone();
        anyhow::ensure!(
            self.sla_aware_kill_retry_min_delay <= self.sla_aware_kill_retry_max_delay,
            "--sla-aware-kill-retry-min-delay must not exceed --sla-aware-kill-retry-max-delay"
        );
        let mut scheduler = borealis_shards::start_with_metrics(config, links, metrics)?;
        let service = scheduler
            .coordinator
            .take()
            .expect("a new scheduler has its coordinator service");
        coordinator::start(
            service,
            self.max_parallel_coordinated_maintenance as usize,
            self.sla_coordinator_timeout,
        )?;
        let http = http::serve(http::HttpSettings {
            ip: self.ip,
            port: self.http_port,
            metrics: scheduler.metrics.clone(),
            leadership: view,
            backup_requests,
            scheduler_addr: http::dial_addr(scheduler.addr),
            tls: security.tls.clone(),
            auth: security.auth.clone(),
            audit: audit.clone(),
            cluster_name: self.cluster_name.clone(),
        })?;
        Ok((scheduler, http))
    }

    /// The shards' settings. Fails when `--tier-config` cannot be read or is not JSON, or
    /// when `--cron-start-initial-backoff` exceeds `--cron-start-max-backoff`.
    #[cfg(test)]
    pub fn to_config(&self) -> anyhow::Result<borealis_shards::SchedulerConfig> {
        self.to_config_with(&self.security.resolve()?)
    }

    /// The shards' settings, with the security flags already resolved (no audit log yet: it
    /// needs the metrics).
    fn to_config_with(
        &self,
        security: &security::Security,
    ) -> anyhow::Result<borealis_shards::SchedulerConfig> {
        let ms = |d: Duration| d.as_millis() as u64;
        anyhow::ensure!(
            self.cron_start_initial_backoff <= self.cron_start_max_backoff,
            "--cron-start-initial-backoff must not exceed --cron-start-max-backoff"
        );
        let lifecycle = borealis_core::lifecycle::LifecyclePolicy {
            initial_schedule_penalty_ms: ms(self.initial_schedule_penalty),
            max_schedule_penalty_ms: ms(self.max_schedule_penalty),
            flapping_task_threshold_ms: ms(self.flapping_task_threshold),
            initial_flapping_task_delay_ms: ms(self.initial_flapping_task_delay),
            max_flapping_task_delay_ms: ms(self.max_flapping_task_delay),
            transient_task_state_timeout_ms: ms(self.transient_task_state_timeout),
        };
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        let tier_config = self
            .tier_config
            .as_deref()
            .map(read_tier_config)
            .transpose()?
            .unwrap_or_default();
        Ok(borealis_shards::SchedulerConfig {
            listen: SocketAddr::new(
                self.ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                self.port,
            ),
            shards: self.shard_count(),
            pin_shards: !self.no_pin,
            cluster_name: self.cluster_name.clone(),
            max_tasks_per_job: self.max_tasks_per_job,
            history_max_per_job: self.history_max_per_job_threshold,
            history_prune_threshold_ms: ms(self.history_prune_threshold),
            history_min_retention_ms: ms(self.history_min_retention_threshold),
            lifecycle,
            epoch,
            io_memory_bytes: self.io_memory_kib * 1024,
            spin_before_park_us: self.spin_before_park_us,
            // Under etcd the desired state lives there and task state comes back from agents.
            data_dir: (self.etcd_endpoints.is_empty() && !self.in_memory)
                .then(|| self.data_dir.clone()),
            backup_dir: self
                .backup_dir
                .clone()
                .unwrap_or_else(|| self.data_dir.join("backups")),
            backup_interval_ms: ms(self.backup_interval),
            backup_requests: Default::default(),
            max_saved_backups: self.max_saved_backups,
            snapshot_interval_ms: ms(self.dlog_snapshot_interval),
            reconciliation_grace_ms: ms(self.reconciliation_grace),
            tier_config,
            enable_preemptor: self.enable_preemptor,
            preemption_delay_ms: ms(self.preemption_delay),
            preemption_slot_hold_time_ms: ms(self.preemption_slot_hold_time),
            preemption_slot_search_interval_ms: ms(self.preemption_slot_search_interval),
            first_schedule_delay_ms: ms(self.first_schedule_delay),
            max_schedule_attempts_per_sec: self.max_schedule_attempts_per_sec,
            allowed_job_environments: self.allowed_job_environments.clone(),
            fault_panic_shard: self.fault_panic_shard,
            service: borealis_shards::ServiceSettings {
                sla: borealis_core::sla::SlaSettings {
                    min_required_instances: self.min_required_instances_for_sla_check,
                    max_sla_duration_secs: self.max_sla_duration_secs.as_secs(),
                },
                sla_kill_retry_min_ms: ms(self.sla_aware_kill_retry_min_delay),
                sla_kill_retry_max_ms: ms(self.sla_aware_kill_retry_max_delay),
                initial_task_kill_retry_interval_ms: ms(self.initial_task_kill_retry_interval),
                partition_aware: self.partition_aware,
                reconciliation_initial_delay_ms: ms(self.reconciliation_initial_delay),
                reconciliation_explicit_interval_ms: ms(self.reconciliation_explicit_interval),
                reconciliation_explicit_batch_size: self.reconciliation_explicit_batch_size
                    as usize,
                reconciliation_explicit_batch_interval_ms: ms(
                    self.reconciliation_explicit_batch_interval
                ),
                reconciliation_implicit_interval_ms: ms(self.reconciliation_implicit_interval),
                reconciliation_schedule_spread_ms: ms(self.reconciliation_schedule_spread),
            },
            changes: borealis_shards::ChangeSettings {
                update_history_per_job: self.job_update_history_per_job_threshold,
                update_history_prune_threshold_ms: ms(self.job_update_history_pruning_threshold),
                max_update_instance_failures: self.max_update_instance_failures,
                cron_timezone: self.cron_timezone,
                cron_start_initial_backoff_ms: ms(self.cron_start_initial_backoff),
                cron_start_max_backoff_ms: ms(self.cron_start_max_backoff),
                cron_scheduling_max_batch_size: self.cron_scheduling_max_batch_size as usize,
            },
            security: borealis_shards::SecuritySettings {
                tls: security.server_tls.clone(),
                auth: security.auth.clone(),
                audit: None,
            },
            limits: self.limits.to_limits(),
        })
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BOREALIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Raises the open-file limit to its hard maximum: a scheduler holds a socket per agent.
fn raise_open_file_limit() {
    // SAFETY: plain system calls on a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let wanted = limit.rlim_max;
            limit.rlim_cur = wanted;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("cannot raise the open-file limit to {wanted}");
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Scheduler(args) => {
            init_logging();
            raise_open_file_limit();
            let (scheduler, _http) = args.start()?;
            scheduler.wait()
        }
        Command::Agent(args) => {
            init_logging();
            borealis_agent::run((*args).into_args())
        }
        Command::Job {
            scheduler,
            conn,
            command,
        } => {
            client::set_default_options(conn.options()?);
            client::run_job_command(&scheduler, command)
        }
        Command::Quota {
            scheduler,
            conn,
            command,
        } => {
            client::set_default_options(conn.options()?);
            client::run_quota_command(&scheduler, command)
        }
        Command::Host {
            scheduler,
            conn,
            command,
        } => {
            client::set_default_options(conn.options()?);
            host::run(&scheduler, command)
        }
        Command::Update {
            scheduler,
            conn,
            command,
        } => {
            client::set_default_options(conn.options()?);
            update::run(&scheduler, command)
        }
        Command::Cron {
            scheduler,
            conn,
            command,
        } => {
            client::set_default_options(conn.options()?);
            cron::run(&scheduler, command)
        }
        Command::Task {
            scheduler,
            conn,
            command,
        } => {
            let options = conn.options()?;
            client::set_default_options(options.clone());
            logs::run(&scheduler, command, options)
        }
        Command::Admin { command } => admin::run(command),
        Command::Up(args) => {
            init_logging();
            raise_open_file_limit();
            up::run(*args)
        }
    }
}

/// Fail-stop (ARCHITECTURE.md, "Fail-stop and restart after a crash"): a panic on any thread is
/// a programmer error, after which the process cannot be trusted to do its job (a dead shard
/// leaves its jobs and agents unserved while the rest answers as if all were well; a dead agent
/// thread, its tasks unsupervised). So the whole process stops: the panic is logged (message,
/// location, thread) straight to stderr and through tracing, the default hook prints it too
/// (with a backtrace under RUST_BACKTRACE), and the process aborts: a non-zero exit (SIGABRT)
/// for its supervisor to restart it, and recovery runs. Installed first thing in `main`, so it
/// covers every thread of every command (a client command's panic is a bug just the same).
fn install_fail_stop_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("<unnamed>");
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("<a non-string panic payload>");
        let location = info
            .location()
            .map_or_else(|| "<unknown location>".to_string(), |l| l.to_string());
        // Straight to stderr first: the log may not be set up, or be what panicked.
        {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "borealis: fatal: thread '{thread}' panicked at {location}: {message}; aborting the process (fail-stop)"
            );
        }
        tracing::error!(
            thread,
            %location,
            "panic: {message}; aborting the process (fail-stop)"
        );
        default_hook(info);
        std::process::abort();
    }));
}

fn main() -> ExitCode {
    install_fail_stop_hook();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler_args(flags: &[&str]) -> Result<SchedulerArgs, clap::Error> {
        let argv = ["borealis", "scheduler"].iter().chain(flags).copied();
        match Cli::try_parse_from(argv)?.command {
            Command::Scheduler(args) => Ok(*args),
            other => panic!("{other:?}"),
        }
    }

    fn config(flags: &[&str]) -> borealis_shards::SchedulerConfig {
        scheduler_args(flags).unwrap().to_config().unwrap()
    }

    #[test]
    fn preemption_and_tier_flags_take_auroras_defaults() {
        let c = config(&[]);
        assert_eq!(c.tier_config, borealis_core::tier::TierConfig::default());
        assert!(c.enable_preemptor);
        assert_eq!(c.preemption_delay_ms, 180_000);
        assert_eq!(c.preemption_slot_hold_time_ms, 300_000);
        assert_eq!(c.preemption_slot_search_interval_ms, 60_000);
        assert_eq!(c.first_schedule_delay_ms, 1);
        // Borealis' own default: unlimited.
        assert_eq!(c.max_schedule_attempts_per_sec, 0.0);
        assert_eq!(
            c.allowed_job_environments,
            r"^(prod|devel|test|staging\d*)$"
        );
    }

    #[test]
    fn preemption_and_tier_flags_are_read() {
        let c = config(&[
            "--enable-preemptor=false",
            "--preemption-delay",
            "10s",
            "--preemption-slot-hold-time=2min",
            "--preemption-slot-search-interval",
            "500ms",
            "--first-schedule-delay",
            "0s",
            "--max-schedule-attempts-per-sec",
            "40.0",
            "--allowed-job-environments",
            "^(prod|qa)$",
        ]);
        assert!(!c.enable_preemptor);
        assert_eq!(c.preemption_delay_ms, 10_000);
        assert_eq!(c.preemption_slot_hold_time_ms, 120_000);
        assert_eq!(c.preemption_slot_search_interval_ms, 500);
        assert_eq!(c.first_schedule_delay_ms, 0);
        assert_eq!(c.max_schedule_attempts_per_sec, 40.0);
        assert_eq!(c.allowed_job_environments, "^(prod|qa)$");
        // A bare flag turns it on, as do the other spellings.
        for flags in [
            &["--enable-preemptor"][..],
            &["--enable-preemptor=true"],
            &["--enable-preemptor", "true", "--port", "1"],
        ] {
            assert!(config(flags).enable_preemptor, "{flags:?}");
        }
        assert!(!config(&["--enable-preemptor", "false"]).enable_preemptor);
    }

    #[test]
    fn bad_flag_values_are_refused_at_startup() {
        for flags in [
            &["--allowed-job-environments", "^(prod"][..],
            &["--max-schedule-attempts-per-sec=-1"],
            &["--max-schedule-attempts-per-sec", "NaN"],
            &["--enable-preemptor=maybe"],
            &["--preemption-delay", "soon"],
        ] {
            let error = scheduler_args(flags).unwrap_err().to_string();
            let flag = flags[0].split('=').next().unwrap();
            assert!(error.contains(flag), "{flags:?}: {error}");
        }
        let error = scheduler_args(&["--allowed-job-environments", "^(prod"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a valid regular expression"), "{error}");
    }

    #[test]
    fn update_and_cron_flags_take_auroras_defaults() {
        let c = config(&[]).changes;
        assert_eq!(c.update_history_per_job, 10);
        assert_eq!(c.update_history_prune_threshold_ms, 30 * 24 * 3600 * 1000);
        assert_eq!(c.max_update_instance_failures, 20_000);
        assert_eq!(c.cron_timezone.as_str(), "GMT");
        assert_eq!(c.cron_start_initial_backoff_ms, 5_000);
        assert_eq!(c.cron_start_max_backoff_ms, 60_000);
        assert_eq!(c.cron_scheduling_max_batch_size, 10);
        // The same as the shards' own defaults.
        let d = borealis_shards::ChangeSettings::default();
        assert_eq!(
            (
                c.update_history_per_job,
                c.update_history_prune_threshold_ms,
                c.max_update_instance_failures,
                c.cron_timezone,
                c.cron_start_initial_backoff_ms,
                c.cron_start_max_backoff_ms,
                c.cron_scheduling_max_batch_size
            ),
            (
                d.update_history_per_job,
                d.update_history_prune_threshold_ms,
                d.max_update_instance_failures,
                d.cron_timezone,
                d.cron_start_initial_backoff_ms,
                d.cron_start_max_backoff_ms,
                d.cron_scheduling_max_batch_size
            )
        );
    }

    #[test]
    fn update_and_cron_flags_are_read() {
        let c = config(&[
            "--job-update-history-per-job-threshold",
            "3",
            "--job-update-history-pruning-threshold=2days",
            "--max-update-instance-failures",
            "50",
            "--cron-timezone",
            "America/New_York",
            "--cron-start-initial-backoff",
            "1s",
            "--cron-start-max-backoff=2min",
            "--cron-scheduling-max-batch-size",
            "25",
        ])
        .changes;
        assert_eq!(c.update_history_per_job, 3);
        assert_eq!(c.update_history_prune_threshold_ms, 2 * 24 * 3600 * 1000);
        assert_eq!(c.max_update_instance_failures, 50);
        assert_eq!(c.cron_timezone.as_str(), "America/New_York");
        assert_eq!(c.cron_start_initial_backoff_ms, 1_000);
        assert_eq!(c.cron_start_max_backoff_ms, 120_000);
        assert_eq!(c.cron_scheduling_max_batch_size, 25);
        assert_eq!(
            config(&["--cron-timezone", "UTC"])
                .changes
                .cron_timezone
                .as_str(),
            "UTC"
        );
        // No history kept is allowed (Aurora's threshold has no lower bound).
        assert_eq!(
            config(&["--job-update-history-per-job-threshold", "0"])
                .changes
                .update_history_per_job,
            0
        );
    }

    #[test]
    fn bad_update_and_cron_flags_are_refused_at_startup() {
        for flags in [
            &["--job-update-history-per-job-threshold=-1"][..],
            &["--job-update-history-pruning-threshold", "a month"],
            &["--max-update-instance-failures", "0"],
            &["--max-update-instance-failures", "many"],
            &["--cron-timezone", "Mars/Olympus_Mons"],
            &["--cron-timezone", "gmt"],
            &["--cron-start-initial-backoff", "0s"],
            &["--cron-start-max-backoff", "soon"],
            &["--cron-scheduling-max-batch-size", "0"],
        ] {
            let error = scheduler_args(flags).unwrap_err().to_string();
            let flag = flags[0].split('=').next().unwrap();
            assert!(error.contains(flag), "{flags:?}: {error}");
        }
        let error = scheduler_args(&["--cron-timezone", "Mars/Olympus_Mons"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown time zone"), "{error}");
        let error = scheduler_args(&[
            "--cron-start-initial-backoff",
            "2min",
            "--cron-start-max-backoff",
            "1min",
        ])
        .unwrap()
        .to_config()
        .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "--cron-start-initial-backoff must not exceed --cron-start-max-backoff"
        );
    }

    #[test]
    fn the_tier_config_file_is_read_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("tiers.json");
        let text = r#"{"default": "preferred", "tiers": {
            "preferred": {"revocable": false, "preemptible": false},
            "preemptible": {"revocable": false, "preemptible": true},
            "revocable": {"revocable": true, "preemptible": true}}}"#;
        std::fs::write(&good, text).unwrap();
        let c = config(&["--tier-config", good.to_str().unwrap()]);
        assert_eq!(c.tier_config.default_tier(), borealis_core::Tier::Preferred);

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        let error = scheduler_args(&["--tier-config", bad.to_str().unwrap()])
            .unwrap()
            .to_config()
            .unwrap_err();
        assert!(
            format!("{error:#}").starts_with(&format!("tier config {}: ", bad.display())),
            "{error:#}"
        );
        let missing = dir.path().join("missing.json");
        let error = scheduler_args(&["--tier-config", missing.to_str().unwrap()])
            .unwrap()
            .to_config()
            .unwrap_err();
        assert!(
            format!("{error:#}")
                == format!(
                    "cannot read tier config {}: No such file or directory",
                    missing.display()
                ),
            "{error:#}"
        );
    }

    #[test]
    fn up_takes_the_scheduler_flags_too() {
        let cli = Cli::try_parse_from([
            "borealis",
            "up",
            "--enable-preemptor=false",
            "--first-schedule-delay",
            "5ms",
        ])
        .unwrap();
        let Command::Up(args) = cli.command else {
            panic!("not up");
        };
        assert!(!args.scheduler.enable_preemptor);
        assert_eq!(
            args.scheduler.first_schedule_delay,
            Duration::from_millis(5)
        );
        // `up` serves its UI on a fixed port; `scheduler` keeps Aurora's default (0: any).
        assert_eq!(args.scheduler.http_port, up::UP_HTTP_PORT);
        assert_eq!(scheduler_args(&[]).unwrap().http_port, 0);
        let cli = Cli::try_parse_from(["borealis", "up", "--http-port", "9000"]).unwrap();
        let Command::Up(args) = cli.command else {
            panic!("not up");
        };
        assert_eq!(args.scheduler.http_port, 9000);
    }

    #[test]
    fn the_fault_injection_flag_is_hidden_and_parsed() {
        assert_eq!(config(&[]).fault_panic_shard, None);
        assert_eq!(
            config(&["--fault-panic-shard", "1:3000"]).fault_panic_shard,
            Some(borealis_shards::FaultPanic {
                shard: 1,
                after_ms: 3000
            })
        );
        assert_eq!(
            config(&["--fault-panic-shard=0"]).fault_panic_shard,
            Some(borealis_shards::FaultPanic {
                shard: 0,
                after_ms: 0
            })
        );
        for bad in ["x", "0:soon", "-1:5", ""] {
            let error = scheduler_args(&[&format!("--fault-panic-shard={bad}")])
                .unwrap_err()
                .to_string();
            assert!(error.contains("SHARD or SHARD:MS"), "{bad:?}: {error}");
        }
        let mut help = Vec::new();
        <Cli as clap::CommandFactory>::command()
            .find_subcommand_mut("scheduler")
            .unwrap()
            .write_long_help(&mut help)
            .unwrap();
        let help = String::from_utf8(help).unwrap();
        assert!(help.contains("--max-tasks-per-job"), "{help}");
        assert!(
            !help.contains("fault-panic") && !help.contains("FAULT"),
            "{help}"
        );
    }

    #[test]
    fn client_commands_take_a_token_and_a_ca() {
        let cli = Cli::try_parse_from([
            "borealis",
            "job",
            "list",
            "--token",
            "0123456789abcdef0123",
            "--tls-ca",
            "/etc/borealis/ca.pem",
        ])
        .unwrap();
        let Command::Job { conn, .. } = cli.command else {
            panic!("not job");
        };
        assert_eq!(conn.token.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(
            conn.tls_ca.as_deref(),
            Some(std::path::Path::new("/etc/borealis/ca.pem"))
        );
        // A missing CA file is named.
        let error = conn.options().unwrap_err();
        assert!(
            format!("{error:#}").contains("/etc/borealis/ca.pem"),
            "{error:#}"
        );
    }

    #[test]
    fn quota_commands_parse() {
        let cli = Cli::try_parse_from([
            "borealis", "quota", "set", "www", "--cpu", "1.5", "--ram", "4GiB", "--disk", "10GiB",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Quota {
                command: client::QuotaCommand::Set { .. },
                ..
            }
        ));
        let cli = Cli::try_parse_from([
            "borealis",
            "quota",
            "get",
            "www",
            "--json",
            "--scheduler",
            "h:1",
        ])
        .unwrap();
        match cli.command {
            Command::Quota {
                scheduler,
                command: client::QuotaCommand::Get { role, json },
                ..
            } => assert_eq!(
                (scheduler.as_str(), role.as_str(), json),
                ("h:1", "www", true)
            ),
            other => panic!("{other:?}"),
        }
        // All three resources are required.
        assert!(Cli::try_parse_from(["borealis", "quota", "set", "www", "--cpu", "1"]).is_err());
    }
}
