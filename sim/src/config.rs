//! The one place the simulation builds a [`SchedulerConfig`]: every field, with the CLI's
//! default unless the simulation has a reason (given at the field) to differ, and the policy
//! flags a scenario may set ([`SchedulerFlags`], through `Sim::settings`).

use std::path::PathBuf;
use std::sync::Arc;

use borealis_core::lifecycle::LifecyclePolicy;
use borealis_core::tier::TierConfig;
use borealis_shards::SchedulerConfig;

/// The scheduler's policy flags (Aurora's names, in milliseconds), as a scenario sets them:
/// `Sim::new(seed).settings(|s| s.preemption_delay_ms = 1_000)`. The defaults are what every
/// seeded run uses.
#[derive(Clone, Debug)]
pub struct SchedulerFlags {
    /// `--enable-preemptor`.
    pub enable_preemptor: bool,
    /// `--preemption-delay`.
    pub preemption_delay_ms: u64,
    /// `--preemption-slot-hold-time`.
    pub preemption_slot_hold_time_ms: u64,
    /// `--preemption-slot-search-interval` (searches start on the shards' 2 s sweep, so an
    /// interval below 2 s acts as 2 s).
    pub preemption_slot_search_interval_ms: u64,
    /// `--first-schedule-delay`.
    pub first_schedule_delay_ms: u64,
    /// `--initial-schedule-penalty`.
    pub initial_schedule_penalty_ms: u64,
    /// `--max-schedule-penalty`.
    pub max_schedule_penalty_ms: u64,
    /// `--flapping-task-threshold`.
    pub flapping_task_threshold_ms: u64,
    /// `--initial-flapping-task-delay`.
    pub initial_flapping_task_delay_ms: u64,
    /// `--max-flapping-task-delay`.
    pub max_flapping_task_delay_ms: u64,
    /// `--transient-task-state-timeout`.
    pub transient_task_state_timeout_ms: u64,
    /// `--tier-config` (parsed).
    pub tier_config: TierConfig,
    /// `--allowed-job-environments`.
    pub allowed_job_environments: String,
    /// `--max-tasks-per-job`.
    pub max_tasks_per_job: u32,
    /// `--max-schedule-attempts-per-sec` (0: unlimited).
    pub max_schedule_attempts_per_sec: f64,
    /// Drains, SLAs, kill retries, partitions, reconciliation.
    pub service: borealis_shards::ServiceSettings,
    /// Rolling updates and cron runs (`--cron-scheduling-max-batch-size`, `--cron-timezone`,
    /// ...): Aurora's defaults.
    pub changes: borealis_shards::ChangeSettings,
    /// Authentication and authorization (no TLS: the simulation's connections are its own).
    pub security: borealis_shards::SecuritySettings,
}

impl Default for SchedulerFlags {
    fn default() -> SchedulerFlags {
        let lifecycle = LifecyclePolicy::default();
        SchedulerFlags {
            enable_preemptor: true,
            // Seconds instead of Aurora's minutes (3 min, 5 min, 1 min) so that runs of a
            // minute or two of simulated time exercise preemption.
            preemption_delay_ms: 5_000,
            preemption_slot_hold_time_ms: 10_000,
            preemption_slot_search_interval_ms: 2_000,
            first_schedule_delay_ms: 1,
            initial_schedule_penalty_ms: lifecycle.initial_schedule_penalty_ms,
            max_schedule_penalty_ms: lifecycle.max_schedule_penalty_ms,
            flapping_task_threshold_ms: lifecycle.flapping_task_threshold_ms,
            initial_flapping_task_delay_ms: lifecycle.initial_flapping_task_delay_ms,
            max_flapping_task_delay_ms: lifecycle.max_flapping_task_delay_ms,
            transient_task_state_timeout_ms: lifecycle.transient_task_state_timeout_ms,
            tier_config: TierConfig::default(),
            allowed_job_environments: ALLOWED_JOB_ENVIRONMENTS.into(),
            max_tasks_per_job: 4000,
            max_schedule_attempts_per_sec: 0.0,
            service: sim_service_settings(),
            changes: borealis_shards::ChangeSettings::default(),
            security: borealis_shards::SecuritySettings::default(),
        }
    }
}

/// Aurora's service flags scaled from minutes to seconds, so that a run of a simulated minute
/// or two drains, retries SLA checks and kills, and reconciles several times; SLAs apply to
/// jobs of any size (Aurora's 20-instance floor would exempt every simulated job).
fn sim_service_settings() -> borealis_shards::ServiceSettings {
    borealis_shards::ServiceSettings {
        sla: borealis_core::sla::SlaSettings {
            min_required_instances: 1,
            max_sla_duration_secs: 7200,
        },
        sla_kill_retry_min_ms: 2_000,
        sla_kill_retry_max_ms: 8_000,
        initial_task_kill_retry_interval_ms: 5_000,
        partition_aware: false,
        reconciliation_initial_delay_ms: 10_000,
        reconciliation_explicit_interval_ms: 30_000,
        reconciliation_explicit_batch_size: 8,
        reconciliation_explicit_batch_interval_ms: 1_000,
        reconciliation_implicit_interval_ms: 40_000,
        reconciliation_schedule_spread_ms: 5_000,
    }
}

impl SchedulerFlags {
    pub fn lifecycle(&self) -> LifecyclePolicy {
        LifecyclePolicy {
            initial_schedule_penalty_ms: self.initial_schedule_penalty_ms,
            max_schedule_penalty_ms: self.max_schedule_penalty_ms,
            flapping_task_threshold_ms: self.flapping_task_threshold_ms,
            initial_flapping_task_delay_ms: self.initial_flapping_task_delay_ms,
            max_flapping_task_delay_ms: self.max_flapping_task_delay_ms,
            transient_task_state_timeout_ms: self.transient_task_state_timeout_ms,
        }
    }
}

/// What a simulated scheduler varies between runs.
#[derive(Clone, Debug)]
pub struct SimSchedulerSettings {
    pub shards: usize,
    /// The log's directory (embedded mode), None under etcd.
    pub data_dir: Option<PathBuf>,
    pub epoch: u32,
    pub reconciliation_grace_ms: u64,
    pub flags: SchedulerFlags,
}

/// Aurora's default `allowed_job_environments` (the CLI's `DEFAULT_ALLOWED_JOB_ENVIRONMENTS`).
pub const ALLOWED_JOB_ENVIRONMENTS: &str = r"^(prod|devel|test|staging\d*)$";

pub fn scheduler_config(settings: &SimSchedulerSettings) -> Arc<SchedulerConfig> {
    let scratch = settings.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let flags = &settings.flags;
    Arc::new(SchedulerConfig {
        // Never bound: the simulation hands the shards their connections itself.
        listen: "127.0.0.1:0".parse().expect("literal address"),
        shards: settings.shards,
        pin_shards: false,
        cluster_name: "sim".into(),
        max_tasks_per_job: flags.max_tasks_per_job,
        history_max_per_job: 100,
        // Two days and one hour: no simulated run lasts long enough to prune by age, so a job
        // an invariant looks for is never legitimately gone.
        history_prune_threshold_ms: 2 * 24 * 3600 * 1000,
        history_min_retention_ms: 3600 * 1000,
        lifecycle: flags.lifecycle(),
        epoch: settings.epoch,
        data_dir: settings.data_dir.clone(),
        backup_dir: scratch.join("backups"),
        // Backups are slots of the wall clock; the simulated wall clock never leaves the first
        // slot of a year-long interval, so no backup is written (they are not simulated).
        backup_interval_ms: 365 * 24 * 3600 * 1000,
        backup_requests: Default::default(),
        max_saved_backups: 48,
        // Shorter than the CLI's hour so that runs exercise snapshots and replay from them.
        snapshot_interval_ms: 20_000,
        reconciliation_grace_ms: settings.reconciliation_grace_ms,
        spin_before_park_us: 0,
        io_memory_bytes: 1 << 20,
        tier_config: flags.tier_config,
        enable_preemptor: flags.enable_preemptor,
        preemption_delay_ms: flags.preemption_delay_ms,
        preemption_slot_hold_time_ms: flags.preemption_slot_hold_time_ms,
        preemption_slot_search_interval_ms: flags.preemption_slot_search_interval_ms,
        first_schedule_delay_ms: flags.first_schedule_delay_ms,
        max_schedule_attempts_per_sec: flags.max_schedule_attempts_per_sec,
        allowed_job_environments: flags.allowed_job_environments.clone(),
        fault_panic_shard: None,
        service: flags.service.clone(),
        changes: flags.changes.clone(),
        security: flags.security.clone(),
        limits: borealis_shards::limits::Limits::default(),
    })
}
