//! The one place the simulation builds a [`SchedulerConfig`]: every field, with the CLI's
//! default unless the simulation has a reason (given at the field) to differ.

use std::path::PathBuf;
use std::sync::Arc;

use borealis_core::lifecycle::LifecyclePolicy;
use borealis_shards::SchedulerConfig;

/// What a simulated scheduler varies between runs.
#[derive(Clone, Debug)]
pub struct SimSchedulerSettings {
    pub shards: usize,
    /// The log's directory (embedded mode), None under etcd.
    pub data_dir: Option<PathBuf>,
    pub epoch: u32,
    pub reconciliation_grace_ms: u64,
}

/// Aurora's default `allowed_job_environments` (the CLI's `DEFAULT_ALLOWED_JOB_ENVIRONMENTS`).
pub const ALLOWED_JOB_ENVIRONMENTS: &str = r"^(prod|devel|test|staging\d*)$";

pub fn scheduler_config(settings: &SimSchedulerSettings) -> Arc<SchedulerConfig> {
    let scratch = settings.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    Arc::new(SchedulerConfig {
        // Never bound: the simulation hands the shards their connections itself.
        listen: "127.0.0.1:0".parse().expect("literal address"),
        shards: settings.shards,
        pin_shards: false,
        cluster_name: "sim".into(),
        max_tasks_per_job: 4000,
        history_max_per_job: 100,
        // Two days and one hour: no simulated run lasts long enough to prune by age, so a job
        // an invariant looks for is never legitimately gone.
        history_prune_threshold_ms: 2 * 24 * 3600 * 1000,
        history_min_retention_ms: 3600 * 1000,
        lifecycle: LifecyclePolicy::default(),
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
        tier_config: Default::default(),
        enable_preemptor: true,
        // Seconds instead of Aurora's minutes (3 min, 5 min, 1 min) so that runs of a minute
        // or two of simulated time exercise preemption.
        preemption_delay_ms: 5_000,
        preemption_slot_hold_time_ms: 10_000,
        preemption_slot_search_interval_ms: 2_000,
        first_schedule_delay_ms: 1,
        max_schedule_attempts_per_sec: 0.0,
        allowed_job_environments: ALLOWED_JOB_ENVIRONMENTS.into(),
    })
}
