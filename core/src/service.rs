//! What a job declares about keeping its service healthy, in Aurora's vocabulary: how the agent
//! checks its health (`HealthCheckConfig`), how it is asked to stop (`HttpLifecycleConfig`), how
//! many of its instances maintenance may take away at once (`SlaPolicy`), and what happens to
//! its tasks when their agent is partitioned away (`PartitionPolicy`).
//!
//! These are plain data carried in [`TaskConfig`](crate::TaskConfig); the defaults are
//! Aurora's. Their bounds are [`validate_task_config`](crate::validate_task_config)'s; the
//! decisions made with them are [`crate::sla`]'s and [`crate::lifecycle`]'s.

use serde::{Deserialize, Serialize};

/// How the agent decides that a task is healthy (Aurora's `HealthCheckConfig`). A task with a
/// health check is reported RUNNING only once it has passed `min_consecutive_successes` checks
/// in a row; after that, `max_consecutive_failures + 1` failures in a row make it unhealthy and
/// it is killed, ending FAILED with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HealthCheck {
    pub checker: HealthChecker,
    /// Seconds after the task starts during which failed checks do not count (Aurora:
    /// `initial_interval_secs`, default 15). A task not healthy by the end of this grace plus
    /// `max_consecutive_failures` further intervals is unhealthy.
    pub initial_interval_secs: u32,
    /// Seconds between checks (default 10).
    pub interval_secs: u32,
    /// Seconds a check may take before it counts as failed (default 1).
    pub timeout_secs: u32,
    /// Failures in a row tolerated before the task is unhealthy (default 0).
    pub max_consecutive_failures: u32,
    /// Successes in a row needed before the task is healthy (default 1).
    pub min_consecutive_successes: u32,
}

/// What one health check does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HealthChecker {
    /// `GET http://127.0.0.1:<port>/<endpoint>`; healthy when it answers `expected_status`.
    Http {
        /// One of the task's named ports (default `health`).
        port: String,
        /// The path, starting with `/` (default `/health`).
        endpoint: String,
        /// The status code that means healthy (default 200).
        expected_status: u16,
    },
    /// `sh -c <command>` in the task's sandbox, with its environment; healthy when it exits 0.
    Shell { command: String },
}

impl HealthCheck {
    pub const DEFAULT_INITIAL_INTERVAL_SECS: u32 = 15;
    pub const DEFAULT_INTERVAL_SECS: u32 = 10;
    pub const DEFAULT_TIMEOUT_SECS: u32 = 1;
    pub const DEFAULT_MAX_CONSECUTIVE_FAILURES: u32 = 0;
    pub const DEFAULT_MIN_CONSECUTIVE_SUCCESSES: u32 = 1;
    pub const DEFAULT_HTTP_PORT: &'static str = "health";
    pub const DEFAULT_HTTP_ENDPOINT: &'static str = "/health";
    pub const DEFAULT_EXPECTED_STATUS: u16 = 200;

    /// A check with Aurora's default timings.
    pub fn with_defaults(checker: HealthChecker) -> HealthCheck {
        HealthCheck {
            checker,
            initial_interval_secs: Self::DEFAULT_INITIAL_INTERVAL_SECS,
            interval_secs: Self::DEFAULT_INTERVAL_SECS,
            timeout_secs: Self::DEFAULT_TIMEOUT_SECS,
            max_consecutive_failures: Self::DEFAULT_MAX_CONSECUTIVE_FAILURES,
            min_consecutive_successes: Self::DEFAULT_MIN_CONSECUTIVE_SUCCESSES,
        }
    }
}

/// How a task is asked to stop before it is signalled (Aurora's `HttpLifecycleConfig`). The
/// kill sequence: POST `graceful_shutdown_endpoint`, wait `graceful_shutdown_wait_secs`; POST
/// `shutdown_endpoint`, wait `shutdown_wait_secs`; SIGTERM, wait `finalization_wait_secs`;
/// SIGKILL. A step is skipped once the task's processes are gone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HttpLifecycle {
    /// One of the task's named ports (default `health`).
    pub port: String,
    /// Default `/quitquitquit`.
    pub graceful_shutdown_endpoint: String,
    /// Default `/abortabortabort`.
    pub shutdown_endpoint: String,
    /// Default 5.
    pub graceful_shutdown_wait_secs: u32,
    /// Default 5.
    pub shutdown_wait_secs: u32,
}

impl Default for HttpLifecycle {
    fn default() -> HttpLifecycle {
        HttpLifecycle {
            port: "health".to_string(),
            graceful_shutdown_endpoint: "/quitquitquit".to_string(),
            shutdown_endpoint: "/abortabortabort".to_string(),
            graceful_shutdown_wait_secs: 5,
            shutdown_wait_secs: 5,
        }
    }
}

/// The least a job must keep while maintenance removes its tasks (Aurora's `SlaPolicy`). A task
/// is *active* when it has been RUNNING for at least the policy's duration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SlaPolicy {
    /// At least `count` active instances (Aurora's `CountSlaPolicy`).
    Count { count: u32, duration_secs: u64 },
    /// At least `percentage` of the instances active (Aurora's `PercentageSlaPolicy`), kept
    /// exactly as thousandths of a percent: 99.9 % is `99_900`.
    Percentage {
        percentage_millis: u32,
        duration_secs: u64,
    },
    /// Ask the job's coordinator before removing a task (Aurora's `CoordinatorSlaPolicy`): an
    /// HTTP POST to `coordinator_url`; the answer's JSON field `status_key` (a boolean) says
    /// whether the task may go.
    Coordinator {
        coordinator_url: String,
        status_key: String,
    },
}

impl SlaPolicy {
    /// Aurora's default SLA for preferred-tier jobs that declare none: 95 % active per 30 min.
    pub const DEFAULT: SlaPolicy = SlaPolicy::Percentage {
        percentage_millis: 95_000,
        duration_secs: 30 * 60,
    };
    /// The coordinator's default answer field.
    pub const DEFAULT_STATUS_KEY: &'static str = "drain";
}

/// What happens to a job's RUNNING tasks whose agent is partitioned away, when the scheduler
/// runs with `--partition-aware` (Aurora's `PartitionPolicy`). Without a policy a partitioned
/// task is LOST (and replaced) at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartitionPolicy {
    /// Replace the task once `delay_secs` have passed (default true). False: wait out the
    /// partition for as long as it lasts.
    pub reschedule: bool,
    /// Seconds a task stays PARTITIONED before it is LOST and replaced (default 0).
    pub delay_secs: u64,
}

impl Default for PartitionPolicy {
    fn default() -> PartitionPolicy {
        PartitionPolicy {
            reschedule: true,
            delay_secs: 0,
        }
    }
}
