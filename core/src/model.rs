//! The domain model, in Aurora's vocabulary: job keys, task configurations, resources,
//! constraints, agents and their attributes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest accepted role, environment or job name, in bytes.
pub const JOB_KEY_PART_LEN_MAX: usize = 128;

/// A job's identity: `role/environment/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobKey {
    pub role: String,
    pub environment: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobKeyError {
    #[error("job key {0:?} must have the form role/environment/name")]
    Shape(String),
    #[error(
        "job key {key:?}: {part} must be 1..={JOB_KEY_PART_LEN_MAX} characters of [A-Za-z0-9_.-]"
    )]
    Part { key: String, part: &'static str },
}

impl JobKey {
    pub fn new(role: &str, environment: &str, name: &str) -> Result<JobKey, JobKeyError> {
        let key = JobKey {
            role: role.to_string(),
            environment: environment.to_string(),
            name: name.to_string(),
        };
        for (part, value) in [("role", role), ("environment", environment), ("name", name)] {
            if !job_key_part_valid(value) {
                return Err(JobKeyError::Part {
                    key: key.to_string(),
                    part,
                });
            }
        }
        Ok(key)
    }

    /// A stable 64-bit hash (FNV-1a over the `role/env/name` text) used to route a job to its
    /// owning shard. Stable across processes and releases: it must never depend on a seed.
    pub fn route_hash(&self) -> u64 {
        route_hash_str(&self.to_string())
    }
}

/// FNV-1a 64 of a job key's canonical text. `net` routes on the text without building a
/// [`JobKey`], so both sides must use this one function.
pub fn route_hash_str(canonical_key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in canonical_key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Whether `part` is a valid role, environment or job name; shared with
/// [`validate_task_config`](crate::validate::validate_task_config), which re-checks keys that
/// arrive already built (from the wire) rather than through [`JobKey::new`].
pub(crate) fn job_key_part_valid(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= JOB_KEY_PART_LEN_MAX
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.role, self.environment, self.name)
    }
}

impl FromStr for JobKey {
    type Err = JobKeyError;
    fn from_str(text: &str) -> Result<JobKey, JobKeyError> {
        let mut parts = text.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(role), Some(env), Some(name), None) => JobKey::new(role, env, name),
            _ => Err(JobKeyError::Shape(text.to_string())),
        }
    }
}

/// A task's id. Unique for the life of a cluster: the issuing shard mixes its index and a
/// per-boot epoch into the id (see [`TaskIdGen`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Issues task ids: a caller-supplied `epoch` (e.g. boot time in seconds) in the top 32 bits,
/// the issuing shard's index in the next 8, a counter in the low 24. When the counter wraps the
/// epoch is bumped, so ids from one generator are unique and increasing.
#[derive(Clone, Debug)]
pub struct TaskIdGen {
    epoch: u32,
    shard: u8,
    counter: u32,
}

impl TaskIdGen {
    const COUNTER_BITS: u32 = 24;

    pub fn new(epoch: u32, shard: u8) -> TaskIdGen {
        TaskIdGen {
            epoch,
            shard,
            counter: 0,
        }
    }

    pub fn next_id(&mut self) -> TaskId {
        if self.counter == 1 << Self::COUNTER_BITS {
            self.counter = 0;
            self.epoch = self.epoch.wrapping_add(1);
        }
        let id = (u64::from(self.epoch) << 32)
            | (u64::from(self.shard) << Self::COUNTER_BITS)
            | u64::from(self.counter);
        self.counter += 1;
        TaskId(id)
    }
}

/// Index of an instance within its job, `0..instance_count`.
pub type InstanceId = u32;

/// Scalar resources. Integers in base-ish units so arithmetic is exact and deterministic:
/// cpu in thousandths of a core, ram and disk in MiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u32,
    pub ram_mib: u32,
    pub disk_mib: u32,
    /// Number of ports (the names live in the task's config; the numbers come from the agent).
    pub ports: u16,
}

impl Resources {
    pub const ZERO: Resources = Resources {
        cpu_millis: 0,
        ram_mib: 0,
        disk_mib: 0,
        ports: 0,
    };

    /// True when `need` fits within `self` in every dimension.
    #[inline]
    pub fn contains(&self, need: &Resources) -> bool {
        self.cpu_millis >= need.cpu_millis
            && self.ram_mib >= need.ram_mib
            && self.disk_mib >= need.disk_mib
            && self.ports >= need.ports
    }

    /// `self - other`; panics (a programmer error) if `other` does not fit.
    #[inline]
    pub fn minus(&self, other: &Resources) -> Resources {
        assert!(
            self.contains(other),
            "resource underflow: {self:?} - {other:?}"
        );
        Resources {
            cpu_millis: self.cpu_millis - other.cpu_millis,
            ram_mib: self.ram_mib - other.ram_mib,
            disk_mib: self.disk_mib - other.disk_mib,
            ports: self.ports - other.ports,
        }
    }

    #[inline]
    pub fn plus(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            ram_mib: self.ram_mib.saturating_add(other.ram_mib),
            disk_mib: self.disk_mib.saturating_add(other.disk_mib),
            ports: self.ports.saturating_add(other.ports),
        }
    }
}

/// A scheduling constraint on an agent attribute (Aurora's `Constraint`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Constraint {
    /// The agent's `attribute` must (or, when `negated`, must not) have one of `values`.
    /// A value constraint on the attribute `dedicated` also opens dedicated agents to the job.
    Value {
        attribute: String,
        negated: bool,
        values: Vec<String>,
    },
    /// At most `limit` active tasks of this job per distinct value of `attribute`
    /// ("at most 2 per rack").
    Limit { attribute: String, limit: u32 },
}

/// The attribute that reserves agents for the jobs that name it in a value constraint.
pub const DEDICATED_ATTRIBUTE: &str = "dedicated";

/// Aurora's tiers: `preferred` (production, not preemptible), `preemptible`, `revocable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    #[default]
    Preferred,
    Preemptible,
    Revocable,
}

impl Tier {
    /// Every tier Borealis supports, in declaration order, so that tier tables can be complete
    /// by construction and iterate deterministically.
    pub const ALL: [Tier; 3] = [Tier::Preferred, Tier::Preemptible, Tier::Revocable];

    /// The tier's name as job files and the tier configuration spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Preferred => "preferred",
            Tier::Preemptible => "preemptible",
            Tier::Revocable => "revocable",
        }
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Tier, String> {
        match s {
            "preferred" => Ok(Tier::Preferred),
            "preemptible" => Ok(Tier::Preemptible),
            "revocable" => Ok(Tier::Revocable),
            other => Err(format!(
                "unknown tier {other:?} (expected preferred, preemptible or revocable)"
            )),
        }
    }
}

/// Everything the scheduler and the agent need to know to place and run one instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskConfig {
    pub job: JobKey,
    /// The shell command the agent runs (`sh -c`).
    pub command: String,
    pub resources: Resources,
    /// Named ports; the agent assigns numbers and exports them as `BOREALIS_PORT_<NAME>`.
    pub port_names: Vec<String>,
    pub constraints: Vec<Constraint>,
    pub tier: Tier,
    pub priority: i32,
    pub production: bool,
    /// A service is restarted whenever it terminates, however it terminates.
    pub is_service: bool,
    /// Failures allowed per instance before it stays FAILED; -1 means unlimited, 0 means 1 run.
    pub max_task_failures: i32,
    /// Seconds between SIGTERM and SIGKILL when killing.
    pub finalization_wait_secs: u32,
    /// When set, the agent reports RUNNING only once the task is healthy, and kills it when it
    /// becomes unhealthy.
    #[serde(default)]
    pub health_check: Option<crate::service::HealthCheck>,
    /// When set, a kill first asks the task to stop over HTTP.
    #[serde(default)]
    pub http_lifecycle: Option<crate::service::HttpLifecycle>,
    /// What maintenance must leave of the job (None: the tier's default, see [`crate::sla`]).
    #[serde(default)]
    pub sla_policy: Option<crate::service::SlaPolicy>,
    /// What a partition does to the job's tasks under `--partition-aware` (None: LOST at once).
    #[serde(default)]
    pub partition_policy: Option<crate::service::PartitionPolicy>,
}

/// An agent's attributes, in registration order (`host`, `rack`, `zone`, `dedicated`, ...).
pub type Attributes = Vec<(String, String)>;
