//! Borealis core: the pure, deterministic heart of the scheduler.
//!
//! Architecture invariant: this crate does no IO, spawns no threads, reads no clock and draws no
//! randomness. Time and seeds are passed in by the caller. It knows nothing of glommio, tokio,
//! etcd or flatbuffers; the shards runtime and the wire crate translate to and from these types.

pub mod auth;
pub mod cron;
pub mod jobfile;
pub mod lifecycle;
pub mod maintenance;
pub mod model;
pub mod placement;
pub mod ports;
pub mod preemption;
pub mod quota;
pub mod service;
pub mod sla;
pub mod state;
pub mod tier;
pub mod update;
pub mod validate;

pub use maintenance::{HostMode, MaintenanceOp};
pub use model::*;
pub use quota::{check_quota, counts_against_quota, job_demand, Quota, QuotaError, QuotaLedger};
pub use service::{HealthCheck, HealthChecker, HttpLifecycle, PartitionPolicy, SlaPolicy};
pub use sla::{JobSla, SlaSettings, SlaVerdict};
pub use state::{TaskState, TaskUsage};
pub use tier::{TierConfig, TierConfigError, TierSettings};
pub use validate::{validate_task_config, ConfigError};
