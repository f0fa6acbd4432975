//! The scheduler's settings: what the CLI's flags (Aurora's names, meanings and defaults
//! where Aurora has them) and the simulation hand [`crate::start`].

use std::net::SocketAddr;
use std::sync::Arc;

use crate::{audit_log, limits};

/// The scheduler's settings (flag names follow Aurora's where they exist).
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Address for agents and clients.
    pub listen: SocketAddr,
    pub shards: usize,
    /// Pin shard `i` to CPU `i % cores`.
    pub pin_shards: bool,
    pub cluster_name: String,
    pub max_tasks_per_job: u32,
    pub history_max_per_job: usize,
    /// Terminal tasks older than this are pruned (Aurora: `history_prune_threshold`).
    pub history_prune_threshold_ms: u64,
    /// Per-job pruning spares terminal tasks younger than this
    /// (Aurora: `history_min_retention_threshold`).
    pub history_min_retention_ms: u64,
    pub lifecycle: borealis_core::lifecycle::LifecyclePolicy,
    /// Mixed into task ids so ids of different scheduler runs never collide.
    pub epoch: u32,
    /// Durable state (write-ahead log and snapshots per shard); None keeps state in memory.
    pub data_dir: Option<std::path::PathBuf>,
    /// Where backups go (Aurora: `backup_dir`).
    pub backup_dir: std::path::PathBuf,
    /// Aurora: `backup_interval`.
    pub backup_interval_ms: u64,
    /// An operator's backup request (Aurora: performBackup): the request's unix ms, written by
    /// the control plane, read by every shard on its next sweep.
    pub backup_requests: Arc<std::sync::atomic::AtomicU64>,
    /// Aurora: `max_saved_backups`.
    pub max_saved_backups: usize,
    /// Aurora: `dlog_snapshot_interval`.
    pub snapshot_interval_ms: u64,
    /// After a restart, how long tasks restored on an agent wait for it to report them before
    /// they are LOST and replaced.
    pub reconciliation_grace_ms: u64,
    /// How long an idle shard spins before it parks (DESIGN.md: ~50 µs cut ping-pong latency
    /// from 57 to 13 µs); 0 parks at once, leaving the core to other processes.
    pub spin_before_park_us: u64,
    /// io_uring buffer memory per shard (DESIGN.md: set it explicitly; >= 512 KiB).
    pub io_memory_bytes: usize,
    /// Aurora: `tier_config`: the tiers file, parsed and checked at startup (default: Aurora's
    /// stock tiers).
    pub tier_config: borealis_core::tier::TierConfig,
    /// Aurora: `enable_preemptor` (default true).
    pub enable_preemptor: bool,
    /// Aurora: `preemption_delay` (3 min): how long a task must be pending before it may
    /// preempt others.
    pub preemption_delay_ms: u64,
    /// Aurora: `preemption_slot_hold_time` (5 min): how long a found preemption slot is held.
    pub preemption_slot_hold_time_ms: u64,
    /// Aurora: `preemption_slot_search_interval` (1 min).
    pub preemption_slot_search_interval_ms: u64,
    /// Aurora: `first_schedule_delay` (1 ms): wait before a new PENDING task's first attempt.
    pub first_schedule_delay_ms: u64,
    /// Aurora: `max_schedule_attempts_per_sec`; 0 means unlimited (Borealis' default, see the
    /// flag).
    pub max_schedule_attempts_per_sec: f64,
    /// Aurora: `allowed_job_environments`, a regular expression (the CLI checks it compiles).
    pub allowed_job_environments: String,
    /// Fault injection for the fail-stop tests (`BOREALIS_FAULT_PANIC_SHARD`, see
    /// [`FaultPanic`]); None, as always outside those tests, injects nothing.
    pub fault_panic_shard: Option<FaultPanic>,
    /// Drains under SLAs, kill retries, partitions and reconciliation.
    pub service: ServiceSettings,
    /// Rolling updates and cron jobs.
    pub changes: ChangeSettings,
    /// TLS, authentication and the audit log.
    pub security: SecuritySettings,
    /// Bounds on what peers may make the scheduler hold (`limits`).
    pub limits: limits::Limits,
}

/// An injected programmer error, to test fail-stop for real (ARCHITECTURE.md, "Fail-stop and
/// restart after a crash"): shard `shard` panics on its first round at least `after_ms` after
/// it started, with a message saying the fault was injected. Set by the environment variable
/// [`FaultPanic::ENV`] (or the hidden flag `--fault-panic-shard`) as `SHARD[:MS]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultPanic {
    pub shard: usize,
    pub after_ms: u64,
}

impl FaultPanic {
    /// The environment variable that arms it.
    pub const ENV: &'static str = "BOREALIS_FAULT_PANIC_SHARD";

    /// `SHARD` or `SHARD:MS` (MS: milliseconds after the shard started, default 0).
    pub fn parse(text: &str) -> Result<FaultPanic, String> {
        let bad = || format!("{text:?} is not SHARD or SHARD:MS (a shard id, milliseconds)");
        let (shard, after_ms) = match text.trim().split_once(':') {
            Some((shard, ms)) => (shard, ms.parse().map_err(|_| bad())?),
            None => (text.trim(), 0),
        };
        Ok(FaultPanic {
            shard: shard.parse().map_err(|_| bad())?,
            after_ms,
        })
    }
}

/// Who may connect and what they may do (issue 10). The default is the embedded,
/// zero-config one: plain TCP, no authentication, no audit log.
#[derive(Clone, Debug, Default)]
pub struct SecuritySettings {
    /// `--tls-cert`, `--tls-key`, `--tls-ca`: every connection to the client/agent port is
    /// TLS; an agent must present a certificate of the CA to register, and a peer that
    /// presented one may never act as a client.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `--auth-file`: a client must authenticate with a token before any request, and each
    /// request is authorized per role and action.
    pub auth: Option<Arc<borealis_core::auth::AuthPolicy>>,
    /// `--audit-log`: every accepted mutation, one JSON line each.
    pub audit: Option<audit_log::AuditLog>,
}

/// How jobs change: rolling updates and cron runs (Aurora's flags, same meanings and defaults).
#[derive(Clone, Debug)]
pub struct ChangeSettings {
    /// `--job-update-history-per-job-threshold` (10): finished updates kept per job.
    pub update_history_per_job: usize,
    /// `--job-update-history-pruning-threshold` (30 days): finished updates older than this
    /// are pruned.
    pub update_history_prune_threshold_ms: u64,
    /// `--max-update-instance-failures` (20,000): the most failures one update may record
    /// (`max_per_instance_failures` × instances).
    pub max_update_instance_failures: u32,
    /// `--cron-timezone` (GMT).
    pub cron_timezone: borealis_core::cron::CronTimezone,
    /// `--cron-start-initial-backoff` (5 s) and `--cron-start-max-backoff` (1 min): waits
    /// while a previous run is being killed.
    pub cron_start_initial_backoff_ms: u64,
    pub cron_start_max_backoff_ms: u64,
    /// `--cron-scheduling-max-batch-size` (10): cron triggers handled per tick and shard.
    pub cron_scheduling_max_batch_size: usize,
}

impl Default for ChangeSettings {
    fn default() -> ChangeSettings {
        ChangeSettings {
            update_history_per_job: 10,
            update_history_prune_threshold_ms: 30 * 24 * 3600 * 1000,
            max_update_instance_failures: 20_000,
            cron_timezone: borealis_core::cron::CronTimezone::default(),
            cron_start_initial_backoff_ms: 5_000,
            cron_start_max_backoff_ms: 60_000,
            cron_scheduling_max_batch_size: 10,
        }
    }
}

/// How the scheduler keeps services up through maintenance and faults (Aurora's flags, same
/// meanings and defaults).
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    /// `--min-required-instances-for-sla-check` (20), `--max-sla-duration-secs` (2 h).
    pub sla: borealis_core::sla::SlaSettings,
    /// `--sla-aware-kill-retry-min-delay` (1 min): the first wait before a drain asks a job's SLA
    /// again for a task it refused; doubling up to `--sla-aware-kill-retry-max-delay` (5 min).
    pub sla_kill_retry_min_ms: u64,
    pub sla_kill_retry_max_ms: u64,
    /// `--initial-task-kill-retry-interval` (5 s): a kill not answered is sent again after this,
    /// doubling up to `--transient-task-state-timeout`.
    pub initial_task_kill_retry_interval_ms: u64,
    /// `--partition-aware` (false): a lost agent's RUNNING tasks go PARTITIONED (and their
    /// job's partition policy decides when they are LOST) instead of LOST at once.
    pub partition_aware: bool,
    /// `--reconciliation-initial-delay` (1 min).
    pub reconciliation_initial_delay_ms: u64,
    /// `--reconciliation-explicit-interval` (60 min).
    pub reconciliation_explicit_interval_ms: u64,
    /// `--reconciliation-explicit-batch-size` (1000).
    pub reconciliation_explicit_batch_size: usize,
    /// `--reconciliation-explicit-batch-interval` (5 s).
    pub reconciliation_explicit_batch_interval_ms: u64,
    /// `--reconciliation-implicit-interval` (60 min).
    pub reconciliation_implicit_interval_ms: u64,
    /// `--reconciliation-schedule-spread` (30 min): implicit rounds start this long after the
    /// explicit ones.
    pub reconciliation_schedule_spread_ms: u64,
}

impl Default for ServiceSettings {
    /// Aurora's defaults.
    fn default() -> ServiceSettings {
        const MIN: u64 = 60_000;
        ServiceSettings {
            sla: borealis_core::sla::SlaSettings::default(),
            sla_kill_retry_min_ms: MIN,
            sla_kill_retry_max_ms: 5 * MIN,
            initial_task_kill_retry_interval_ms: 5_000,
            partition_aware: false,
            reconciliation_initial_delay_ms: MIN,
            reconciliation_explicit_interval_ms: 60 * MIN,
            reconciliation_explicit_batch_size: 1000,
            reconciliation_explicit_batch_interval_ms: 5_000,
            reconciliation_implicit_interval_ms: 60 * MIN,
            reconciliation_schedule_spread_ms: 30 * MIN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_parse() {
        assert_eq!(
            FaultPanic::parse("1:3000"),
            Ok(FaultPanic {
                shard: 1,
                after_ms: 3000
            })
        );
        assert_eq!(
            FaultPanic::parse("0"),
            Ok(FaultPanic {
                shard: 0,
                after_ms: 0
            })
        );
        for bad in ["", "x", "1:", ":5", "1:2:3", "-1", "0:-5"] {
            assert!(FaultPanic::parse(bad).is_err(), "{bad:?}");
        }
    }
}
