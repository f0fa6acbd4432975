//! Reading what earlier builds wrote, so that an upgrade keeps the state.
//!
//! postcard is positional: a struct's fields are encoded in order with nothing to mark where
//! they end, so a field added at the end changes the format. The formats:
//! - 1: before quotas and preemption: a task's image has no `preempted_by` (read as `None`),
//!   the state image has no `quotas` (read as none set);
//! - 2: before services and maintenance: a [`TaskConfig`] ends at `finalization_wait_secs`
//!   (no `health_check`, `http_lifecycle`, `sla_policy`, `partition_policy`: read as `None`),
//!   the state image has no `hosts` (read as every host in service). Format 1's `TaskConfig`
//!   is format 2's;
//! - 3: before rolling updates: a task's image ends at `preempted_by` (no `rev`: read as
//!   revision 0), a job's image ends at `history` (no `revs`, `updates`: read as
//!   `JobRevs::default()`, i.e. head revision 0 and nothing else, and no updates). Format 2's
//!   task image is format 3's;
//! - 4: before tasks' resource usage: a task's image ends at `rev` (no `usage`: read as
//!   `None`). Everything else is as now: format 4 added jobs' `revs`, `updates` and `cron`, and
//!   the records `JobRevised`, `UpdateSaved`, `UpdateRemoved`, `CronSet`. Format 3's task image
//!   is format 4's without `rev`;
//! - 5: the current one ([`files::SNAPSHOT_VERSION`](crate::files::SNAPSHOT_VERSION)).
//!
//! Snapshot files say their format in their header, so each is read by its own layout.
//!
//! Log records do not say theirs. A frame holds exactly one record, and each layout's decode
//! must consume the whole payload, so an older record is never read as a current one, nor the
//! other way round:
//! - a record decodes as the current layout first. An older `JobCreated` of format 1 or 2
//!   stops where its `TaskConfig` stops (the config is the record's last field, so the record
//!   and the frame end with `finalization_wait_secs`), and the current layout then needs at
//!   least the four `Option` tags that follow: the payload runs out, the decode fails. An
//!   older `TaskUpserted` likewise ends before the current task image's last fields (the
//!   image is the record's only field): one of format 4 before the `usage` tag, one of format
//!   2 or 3 before `rev`, one of format 1 before the `preempted_by` tag. Every other format-4
//!   record is byte for byte a current one (format 5 changed only the task image), and decodes
//!   as itself;
//! - a current record always decodes as the current layout, so it never reaches the older
//!   ones. Had it reached them, it would still be refused: where an older layout reads a
//!   prefix of a current record (a current `JobCreated` read as format 2 stops before the
//!   four tags; a current `TaskUpserted` read as format 4 before `usage`, as format 3 or 2
//!   before `rev`, as format 1 before `preempted_by`), bytes are left over, and a leftover
//!   byte fails the decode — this is why the whole frame must be consumed, as an `Option`'s
//!   tag or a small `rev` is one byte that a shorter layout would otherwise ignore. The
//!   variants format 4 added (`JobRevised`, `UpdateSaved`, `UpdateRemoved`, `CronSet`) have
//!   indexes no layout before 4 has;
//! - what fails the current layout is tried as format 4, then 3, then 2, then 1, and a record
//!   that is whole in more than one of these layouts means the same in each: format 4 differs
//!   from format 5 only in the task image (so only a `TaskUpserted` reaches it, and a format-3
//!   one runs out before `rev`); format 3 differs from format 2 only in `TaskConfig` (a
//!   format-2 `JobCreated` runs out as format 3), and from format 4 only in the task image
//!   (and format 4's new variants); a format-1 record that is whole as format 2 or 3 (all but
//!   `TaskUpserted`) encodes exactly as its later forms.
//!
//! Hence the rule for the next change: fields go at the end of the last field of a record
//! (as `TaskConfig` ends `JobCreated`, and `usage` ends the task image of `TaskUpserted`), or
//! the record needs a new variant.

use std::collections::BTreeMap;

use borealis_core::update::{JobUpdate, Rev};
use borealis_core::{Constraint, HostMode, JobKey, Resources, TaskConfig, TaskId, TaskState, Tier};
use serde::Deserialize;

use crate::image::{CronImage, HostImage, JobImage, JobRevs, LogRecord, StateImage, TaskImage};

/// The snapshot format before quotas and `preempted_by`.
pub const SNAPSHOT_VERSION_1: u32 = 1;
/// The snapshot format before the job's service fields and host maintenance.
pub const SNAPSHOT_VERSION_2: u32 = 2;
/// The snapshot format before configuration revisions and rolling updates.
pub const SNAPSHOT_VERSION_3: u32 = 3;
/// The snapshot format before tasks' resource usage.
pub const SNAPSHOT_VERSION_4: u32 = 4;

/// [`TaskConfig`] in formats 1 and 2.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize, Clone))]
struct TaskConfigV2 {
    job: JobKey,
    command: String,
    resources: Resources,
    port_names: Vec<String>,
    constraints: Vec<Constraint>,
    tier: Tier,
    priority: i32,
    production: bool,
    is_service: bool,
    max_task_failures: i32,
    finalization_wait_secs: u32,
}

impl From<TaskConfigV2> for TaskConfig {
    fn from(c: TaskConfigV2) -> TaskConfig {
        TaskConfig {
            job: c.job,
            command: c.command,
            resources: c.resources,
            port_names: c.port_names,
            constraints: c.constraints,
            tier: c.tier,
            priority: c.priority,
            production: c.production,
            is_service: c.is_service,
            max_task_failures: c.max_task_failures,
            finalization_wait_secs: c.finalization_wait_secs,
            health_check: None,
            http_lifecycle: None,
            sla_policy: None,
            partition_policy: None,
        }
    }
}

/// [`JobImage`] in formats 1 and 2.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize, Clone))]
struct JobImageV2 {
    key: JobKey,
    config: TaskConfigV2,
    instances: u32,
    current: Vec<Option<TaskId>>,
    history: Vec<TaskId>,
}

impl From<JobImageV2> for JobImageV3 {
    fn from(j: JobImageV2) -> JobImageV3 {
        JobImageV3 {
            key: j.key,
            config: j.config.into(),
            instances: j.instances,
            current: j.current,
            history: j.history,
        }
    }
}

/// [`JobImage`] in format 3: no revisions, no updates.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize, Clone))]
struct JobImageV3 {
    key: JobKey,
    config: TaskConfig,
    instances: u32,
    current: Vec<Option<TaskId>>,
    history: Vec<TaskId>,
}

impl From<JobImageV3> for JobImage {
    fn from(j: JobImageV3) -> JobImage {
        JobImage {
            key: j.key,
            config: j.config,
            instances: j.instances,
            current: j.current,
            history: j.history,
            revs: JobRevs::default(),
            updates: Vec::new(),
            cron: None,
        }
    }
}

/// [`TaskImage`] in format 1.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize, Clone))]
struct TaskImageV1 {
    id: TaskId,
    job: JobKey,
    instance: u32,
    state: TaskState,
    agent_name: Option<String>,
    hostname: Option<String>,
    failure_count: u32,
    consecutive_flaps: u32,
    exit_code: i32,
    message: String,
    ports: Vec<(String, u16)>,
    sandbox: String,
    killed_by_user: bool,
}

impl From<TaskImageV1> for TaskImageV3 {
    fn from(t: TaskImageV1) -> TaskImageV3 {
        TaskImageV3 {
            id: t.id,
            job: t.job,
            instance: t.instance,
            state: t.state,
            agent_name: t.agent_name,
            hostname: t.hostname,
            failure_count: t.failure_count,
            consecutive_flaps: t.consecutive_flaps,
            exit_code: t.exit_code,
            message: t.message,
            ports: t.ports,
            sandbox: t.sandbox,
            killed_by_user: t.killed_by_user,
            preempted_by: None,
        }
    }
}

impl From<TaskImageV1> for TaskImage {
    fn from(t: TaskImageV1) -> TaskImage {
        TaskImageV3::from(t).into()
    }
}

/// [`TaskImage`] in formats 2 and 3: no `rev`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize, Clone))]
struct TaskImageV3 {
    id: TaskId,
    job: JobKey,
    instance: u32,
    state: TaskState,
    agent_name: Option<String>,
    hostname: Option<String>,
    failure_count: u32,
    consecutive_flaps: u32,
    exit_code: i32,
    message: String,
    ports: Vec<(String, u16)>,
    sandbox: String,
    killed_by_user: bool,
    preempted_by: Option<TaskId>,
}

impl From<TaskImageV3> for TaskImage {
    fn from(t: TaskImageV3) -> TaskImage {
        TaskImage {
            id: t.id,
            job: t.job,
            instance: t.instance,
            state: t.state,
            agent_name: t.agent_name,
            hostname: t.hostname,
            failure_count: t.failure_count,
            consecutive_flaps: t.consecutive_flaps,
            exit_code: t.exit_code,
            message: t.message,
            ports: t.ports,
            sandbox: t.sandbox,
            killed_by_user: t.killed_by_user,
            preempted_by: t.preempted_by,
            rev: 0,
            usage: None,
        }
    }
}

/// [`TaskImage`] in format 4: no `usage`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize, Clone))]
struct TaskImageV4 {
    id: TaskId,
    job: JobKey,
    instance: u32,
    state: TaskState,
    agent_name: Option<String>,
    hostname: Option<String>,
    failure_count: u32,
    consecutive_flaps: u32,
    exit_code: i32,
    message: String,
    ports: Vec<(String, u16)>,
    sandbox: String,
    killed_by_user: bool,
    preempted_by: Option<TaskId>,
    rev: Rev,
}

impl From<TaskImageV4> for TaskImage {
    fn from(t: TaskImageV4) -> TaskImage {
        TaskImage {
            id: t.id,
            job: t.job,
            instance: t.instance,
            state: t.state,
            agent_name: t.agent_name,
            hostname: t.hostname,
            failure_count: t.failure_count,
            consecutive_flaps: t.consecutive_flaps,
            exit_code: t.exit_code,
            message: t.message,
            ports: t.ports,
            sandbox: t.sandbox,
            killed_by_user: t.killed_by_user,
            preempted_by: t.preempted_by,
            rev: t.rev,
            usage: None,
        }
    }
}

/// [`StateImage`] in format 1.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct StateImageV1 {
    jobs: BTreeMap<JobKey, JobImageV2>,
    tasks: BTreeMap<TaskId, TaskImageV1>,
}

/// [`StateImage`] in format 2.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct StateImageV2 {
    jobs: BTreeMap<JobKey, JobImageV2>,
    tasks: BTreeMap<TaskId, TaskImageV3>,
    quotas: BTreeMap<String, Resources>,
}

/// [`StateImage`] in format 3.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct StateImageV3 {
    jobs: BTreeMap<JobKey, JobImageV3>,
    tasks: BTreeMap<TaskId, TaskImageV3>,
    quotas: BTreeMap<String, Resources>,
    hosts: BTreeMap<String, HostImage>,
}

/// [`StateImage`] in format 4: the current jobs, quotas and hosts, tasks without `usage`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct StateImageV4 {
    jobs: BTreeMap<JobKey, JobImage>,
    tasks: BTreeMap<TaskId, TaskImageV4>,
    quotas: BTreeMap<String, Resources>,
    hosts: BTreeMap<String, HostImage>,
}

/// [`LogRecord`] in format 1: the same variants in the same order (postcard encodes the
/// variant index, not its name), up to `Commit`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
enum LogRecordV1 {
    JobCreated {
        key: JobKey,
        instances: u32,
        config: TaskConfigV2,
    },
    JobRemoved {
        key: JobKey,
    },
    TaskUpserted(TaskImageV1),
    TaskEnded {
        id: TaskId,
    },
    TaskForgotten {
        id: TaskId,
    },
    Commit,
}

/// [`LogRecord`] in format 2: the same variants in the same order, up to `QuotaSet`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
enum LogRecordV2 {
    JobCreated {
        key: JobKey,
        instances: u32,
        config: TaskConfigV2,
    },
    JobRemoved {
        key: JobKey,
    },
    TaskUpserted(TaskImageV3),
    TaskEnded {
        id: TaskId,
    },
    TaskForgotten {
        id: TaskId,
    },
    Commit,
    QuotaSet {
        role: String,
        quota: Resources,
    },
}

/// [`LogRecord`] in format 3: the same variants in the same order, up to `HostModeSet`.
// Unboxed like `LogRecord` (a `Box<T>` would encode as the `T` anyway): one lives only while
// a legacy frame is converted.
#[allow(clippy::large_enum_variant)]
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
enum LogRecordV3 {
    JobCreated {
        key: JobKey,
        instances: u32,
        config: TaskConfig,
    },
    JobRemoved {
        key: JobKey,
    },
    TaskUpserted(TaskImageV3),
    TaskEnded {
        id: TaskId,
    },
    TaskForgotten {
        id: TaskId,
    },
    Commit,
    QuotaSet {
        role: String,
        quota: Resources,
    },
    HostModeSet {
        host: String,
        mode: HostMode,
        drain_deadline_unix_ms: u64,
    },
}

/// [`LogRecord`] in format 4: the same variants in the same order, every one but
/// `TaskUpserted` (whose task image has no `usage`) the same as now.
#[allow(clippy::large_enum_variant)]
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
enum LogRecordV4 {
    JobCreated {
        key: JobKey,
        instances: u32,
        config: TaskConfig,
    },
    JobRemoved {
        key: JobKey,
    },
    TaskUpserted(TaskImageV4),
    TaskEnded {
        id: TaskId,
    },
    TaskForgotten {
        id: TaskId,
    },
    Commit,
    QuotaSet {
        role: String,
        quota: Resources,
    },
    HostModeSet {
        host: String,
        mode: HostMode,
        drain_deadline_unix_ms: u64,
    },
    JobRevised {
        key: JobKey,
        instances: u32,
        config: TaskConfig,
        revs: JobRevs,
    },
    UpdateSaved {
        key: JobKey,
        update: JobUpdate,
    },
    UpdateRemoved {
        key: JobKey,
        id: u64,
    },
    CronSet {
        key: JobKey,
        cron: Option<CronImage>,
    },
}

fn jobs_of<J: Into<JobImage>>(jobs: BTreeMap<JobKey, J>) -> BTreeMap<JobKey, JobImage> {
    jobs.into_iter().map(|(k, j)| (k, j.into())).collect()
}

fn jobs_of_v2(jobs: BTreeMap<JobKey, JobImageV2>) -> BTreeMap<JobKey, JobImage> {
    jobs.into_iter()
        .map(|(k, j)| (k, JobImageV3::from(j).into()))
        .collect()
}

fn tasks_of<T: Into<TaskImage>>(tasks: BTreeMap<TaskId, T>) -> BTreeMap<TaskId, TaskImage> {
    tasks.into_iter().map(|(id, t)| (id, t.into())).collect()
}

/// Decodes the whole of `payload` as a `T`, or says why not.
fn decode_whole<'a, T: Deserialize<'a>>(payload: &'a [u8], what: &str) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} trailing bytes after the {what}", rest.len())),
        Err(e) => Err(format!("undecodable {what}: {e}")),
    }
}

/// Decodes a snapshot payload (the bytes after the header) of an older format `version`;
/// `None` when this module does not know that format.
pub(crate) fn decode_state_image(
    version: u32,
    payload: &[u8],
) -> Option<Result<StateImage, String>> {
    Some(match version {
        SNAPSHOT_VERSION_1 => {
            decode_whole::<StateImageV1>(payload, "format-1 image").map(|image| StateImage {
                jobs: jobs_of_v2(image.jobs),
                tasks: tasks_of(image.tasks),
                quotas: BTreeMap::new(),
                hosts: BTreeMap::new(),
            })
        }
        SNAPSHOT_VERSION_2 => {
            decode_whole::<StateImageV2>(payload, "format-2 image").map(|image| StateImage {
                jobs: jobs_of_v2(image.jobs),
                tasks: tasks_of(image.tasks),
                quotas: image.quotas,
                hosts: BTreeMap::new(),
            })
        }
        SNAPSHOT_VERSION_3 => {
            decode_whole::<StateImageV3>(payload, "format-3 image").map(|image| StateImage {
                jobs: jobs_of(image.jobs),
                tasks: tasks_of(image.tasks),
                quotas: image.quotas,
                hosts: image.hosts,
            })
        }
        SNAPSHOT_VERSION_4 => {
            decode_whole::<StateImageV4>(payload, "format-4 image").map(|image| StateImage {
                jobs: image.jobs,
                tasks: tasks_of(image.tasks),
                quotas: image.quotas,
                hosts: image.hosts,
            })
        }
        _ => return None,
    })
}

/// Decodes a whole record payload written in format 4, 3, 2 or 1 (see the module doc for why
/// the order and the whole-payload rule make this unambiguous); `None` when it is none of
/// them.
pub(crate) fn decode_record_legacy(payload: &[u8]) -> Option<LogRecord> {
    if let Ok(record) = decode_whole::<LogRecordV4>(payload, "format-4 record") {
        return Some(match record {
            LogRecordV4::JobCreated {
                key,
                instances,
                config,
            } => LogRecord::JobCreated {
                key,
                instances,
                config,
            },
            LogRecordV4::JobRemoved { key } => LogRecord::JobRemoved { key },
            LogRecordV4::TaskUpserted(t) => LogRecord::TaskUpserted(t.into()),
            LogRecordV4::TaskEnded { id } => LogRecord::TaskEnded { id },
            LogRecordV4::TaskForgotten { id } => LogRecord::TaskForgotten { id },
            LogRecordV4::Commit => LogRecord::Commit,
            LogRecordV4::QuotaSet { role, quota } => LogRecord::QuotaSet { role, quota },
            LogRecordV4::HostModeSet {
                host,
                mode,
                drain_deadline_unix_ms,
            } => LogRecord::HostModeSet {
                host,
                mode,
                drain_deadline_unix_ms,
            },
            LogRecordV4::JobRevised {
                key,
                instances,
                config,
                revs,
            } => LogRecord::JobRevised {
                key,
                instances,
                config,
                revs,
            },
            LogRecordV4::UpdateSaved { key, update } => LogRecord::UpdateSaved { key, update },
            LogRecordV4::UpdateRemoved { key, id } => LogRecord::UpdateRemoved { key, id },
            LogRecordV4::CronSet { key, cron } => LogRecord::CronSet { key, cron },
        });
    }
    if let Ok(record) = decode_whole::<LogRecordV3>(payload, "format-3 record") {
        return Some(match record {
            LogRecordV3::JobCreated {
                key,
                instances,
                config,
            } => LogRecord::JobCreated {
                key,
                instances,
                config,
            },
            LogRecordV3::JobRemoved { key } => LogRecord::JobRemoved { key },
            LogRecordV3::TaskUpserted(t) => LogRecord::TaskUpserted(t.into()),
            LogRecordV3::TaskEnded { id } => LogRecord::TaskEnded { id },
            LogRecordV3::TaskForgotten { id } => LogRecord::TaskForgotten { id },
            LogRecordV3::Commit => LogRecord::Commit,
            LogRecordV3::QuotaSet { role, quota } => LogRecord::QuotaSet { role, quota },
            LogRecordV3::HostModeSet {
                host,
                mode,
                drain_deadline_unix_ms,
            } => LogRecord::HostModeSet {
                host,
                mode,
                drain_deadline_unix_ms,
            },
        });
    }
    if let Ok(record) = decode_whole::<LogRecordV2>(payload, "format-2 record") {
        return Some(match record {
            LogRecordV2::JobCreated {
                key,
                instances,
                config,
            } => LogRecord::JobCreated {
                key,
                instances,
                config: config.into(),
            },
            LogRecordV2::JobRemoved { key } => LogRecord::JobRemoved { key },
            LogRecordV2::TaskUpserted(t) => LogRecord::TaskUpserted(t.into()),
            LogRecordV2::TaskEnded { id } => LogRecord::TaskEnded { id },
            LogRecordV2::TaskForgotten { id } => LogRecord::TaskForgotten { id },
            LogRecordV2::Commit => LogRecord::Commit,
            LogRecordV2::QuotaSet { role, quota } => LogRecord::QuotaSet { role, quota },
        });
    }
    let record = decode_whole::<LogRecordV1>(payload, "format-1 record").ok()?;
    Some(match record {
        LogRecordV1::JobCreated {
            key,
            instances,
            config,
        } => LogRecord::JobCreated {
            key,
            instances,
            config: config.into(),
        },
        LogRecordV1::JobRemoved { key } => LogRecord::JobRemoved { key },
        LogRecordV1::TaskUpserted(t) => LogRecord::TaskUpserted(t.into()),
        LogRecordV1::TaskEnded { id } => LogRecord::TaskEnded { id },
        LogRecordV1::TaskForgotten { id } => LogRecord::TaskForgotten { id },
        LogRecordV1::Commit => LogRecord::Commit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::{
        decode_snapshot, encode_snapshot, segment_name, snapshot_name, SNAPSHOT_HEADER_BYTES,
        SNAPSHOT_MAGIC,
    };
    use crate::wal::decode_frame;
    use crate::Wal;
    use borealis_core::update::{UpdateSettings, UpdateStatus};
    use borealis_core::{
        HealthCheck, HealthChecker, HttpLifecycle, PartitionPolicy, SlaPolicy, TaskUsage,
    };

    fn job() -> JobKey {
        "www/prod/hello".parse().unwrap()
    }

    /// A format-2 config with something in every field, so that each decodes in its place.
    fn config_v2() -> TaskConfigV2 {
        TaskConfigV2 {
            job: job(),
            command: "true".into(),
            resources: Resources {
                cpu_millis: 100,
                ram_mib: 16,
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
            tier: Tier::Preferred,
            priority: -3,
            production: true,
            is_service: true,
            max_task_failures: -1,
            finalization_wait_secs: 5,
        }
    }

    /// `config_v2` as the current build reads it.
    fn config() -> TaskConfig {
        config_v2().into()
    }

    /// `config` with every new field set.
    fn config_full() -> TaskConfig {
        TaskConfig {
            health_check: Some(HealthCheck::with_defaults(HealthChecker::Http {
                port: "http".into(),
                endpoint: "/health".into(),
                expected_status: 200,
            })),
            http_lifecycle: Some(HttpLifecycle::default()),
            sla_policy: Some(SlaPolicy::DEFAULT),
            partition_policy: Some(PartitionPolicy::default()),
            ..config()
        }
    }

    fn job_v2(instances: u32, current: Vec<Option<TaskId>>) -> JobImageV2 {
        JobImageV2 {
            key: job(),
            config: config_v2(),
            instances,
            current,
            history: vec![],
        }
    }

    fn task_v1(id: u64, state: TaskState) -> TaskImageV1 {
        TaskImageV1 {
            id: TaskId(id),
            job: job(),
            instance: 0,
            state,
            agent_name: Some("a1".into()),
            hostname: Some("h1".into()),
            failure_count: 1,
            consecutive_flaps: 0,
            exit_code: -1,
            message: "m".into(),
            ports: vec![("http".into(), 31_000)],
            sandbox: "/sb".into(),
            killed_by_user: false,
        }
    }

    /// A format-2 (and format-3) task image, with a preemptor.
    fn task_v3(id: u64, state: TaskState) -> TaskImageV3 {
        TaskImageV3 {
            preempted_by: Some(TaskId(99)),
            ..task_v1(id, state).into()
        }
    }

    /// `task_v3` in the current layout, on revision `rev`, with no usage.
    fn task(id: u64, state: TaskState, rev: Rev) -> TaskImage {
        TaskImage {
            rev,
            ..task_v3(id, state).into()
        }
    }

    /// `task` in format 4 (no usage).
    fn task_v4(id: u64, state: TaskState, rev: Rev) -> TaskImageV4 {
        let t = task(id, state, rev);
        TaskImageV4 {
            id: t.id,
            job: t.job,
            instance: t.instance,
            state: t.state,
            agent_name: t.agent_name,
            hostname: t.hostname,
            failure_count: t.failure_count,
            consecutive_flaps: t.consecutive_flaps,
            exit_code: t.exit_code,
            message: t.message,
            ports: t.ports,
            sandbox: t.sandbox,
            killed_by_user: t.killed_by_user,
            preempted_by: t.preempted_by,
            rev: t.rev,
        }
    }

    /// A usage with something (beyond one byte's varint) in every field.
    fn usage() -> TaskUsage {
        TaskUsage {
            cpu_time_ms: 1_234,
            peak_memory_bytes: 56 << 20,
            disk_bytes: 7 << 30,
        }
    }

    /// `task` with `usage()`, as a task that ended on an agent reporting it.
    fn task_used(id: u64, state: TaskState, rev: Rev) -> TaskImage {
        TaskImage {
            usage: Some(usage()),
            ..task(id, state, rev)
        }
    }

    /// A format-3 job image: the current config, no revisions.
    fn job_v3(instances: u32, current: Vec<Option<TaskId>>) -> JobImageV3 {
        JobImageV3 {
            key: job(),
            config: config_full(),
            instances,
            current,
            history: vec![],
        }
    }

    /// An update of `job()` in its durable form (what a decode gives: no transient fields).
    fn update(id: u64, status: UpdateStatus) -> JobUpdate {
        let mut update = JobUpdate::new(
            id,
            job().to_string(),
            UpdateSettings::default(),
            2,
            3,
            id as Rev,
            [(0, Some(0)), (1, Some(0)), (2, None)],
            1_700_000_000_000 + id,
            format!("update {id}"),
        );
        update.status = status;
        update.watching.clear();
        update
    }

    fn frame_of(payload: Vec<u8>) -> Vec<u8> {
        let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        bytes
    }

    fn frame<T: serde::Serialize>(record: &T) -> Vec<u8> {
        frame_of(postcard::to_stdvec(record).unwrap())
    }

    fn snapshot_of<T: serde::Serialize>(version: u32, image: &T) -> Vec<u8> {
        let payload = postcard::to_stdvec(image).unwrap();
        let mut bytes = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + payload.len());
        bytes.extend_from_slice(&SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        bytes
    }

    /// Appends current records (the format-4 ones among them: a revision, an update, a task
    /// on the new revision; and format 5's: a task ended with its usage), reopens, snapshots
    /// in the current format and reopens again: the state carries through each step, and the
    /// new snapshot is format 5.
    fn continue_in_the_current_format(dir: &std::path::Path, wal: Wal, mut image: StateImage) {
        let mut wal = wal;
        let old = &image.jobs[&job()];
        let grown = old.instances + 1;
        let new = [
            LogRecord::JobRevised {
                key: job(),
                instances: grown,
                config: TaskConfig {
                    command: "serve --v2".into(),
                    ..config_full()
                },
                revs: JobRevs {
                    head: 1,
                    others: [(0, old.config.clone())].into(),
                    instance_revs: [(0, 0)].into(),
                },
            },
            LogRecord::UpdateSaved {
                key: job(),
                update: update(1, UpdateStatus::RollingForward),
            },
            LogRecord::TaskUpserted(TaskImage {
                instance: grown - 1,
                ..task(7, TaskState::Pending, 1)
            }),
            LogRecord::TaskUpserted(TaskImage {
                instance: grown - 1,
                ..task_used(7, TaskState::Finished, 1)
            }),
            LogRecord::TaskEnded { id: TaskId(7) },
            LogRecord::QuotaSet {
                role: "www".into(),
                quota: Resources::ZERO,
            },
            LogRecord::HostModeSet {
                host: "h1".into(),
                mode: HostMode::Draining,
                drain_deadline_unix_ms: 1_800_000_000_000,
            },
            LogRecord::JobCreated {
                key: "www/prod/other".parse().unwrap(),
                instances: 1,
                config: TaskConfig {
                    job: "www/prod/other".parse().unwrap(),
                    ..config_full()
                },
            },
        ];
        for record in &new {
            image.apply(record).unwrap();
            wal.append(record);
        }
        wal.commit().unwrap();
        drop(wal);
        image.check_invariants().unwrap();
        let (mut wal, recovery) = Wal::open(dir).unwrap();
        assert_eq!(recovery.image, image);
        let revised = &recovery.image.jobs[&job()];
        assert_eq!((revised.revs.head, revised.instances), (1, grown));
        assert_eq!(
            revised.updates,
            vec![update(1, UpdateStatus::RollingForward)]
        );
        assert_eq!(recovery.image.tasks[&TaskId(7)].rev, 1);
        assert_eq!(recovery.image.tasks[&TaskId(7)].usage, Some(usage()));
        wal.snapshot(&image).unwrap();
        drop(wal);
        let (_, recovery) = Wal::open(dir).unwrap();
        assert_eq!(recovery.image, image);
        assert_eq!(recovery.image.tasks[&TaskId(7)].usage, Some(usage()));
        let snapshot = std::fs::read(recovery.snapshot.expect("a snapshot")).unwrap();
        assert_eq!(
            u32::from_le_bytes(snapshot[8..12].try_into().unwrap()),
            crate::files::SNAPSHOT_VERSION
        );
        assert_eq!(crate::files::SNAPSHOT_VERSION, 5);
    }

    /// A shard dir an earlier build wrote (a format-1 snapshot and format-1 records after it)
    /// opens with its whole state; what is written afterwards is in the current format.
    #[test]
    fn a_format_1_shard_dir_recovers_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shard-0");
        std::fs::create_dir_all(&dir).unwrap();
        let mut jobs = BTreeMap::new();
        jobs.insert(job(), job_v2(1, vec![Some(TaskId(1))]));
        let mut tasks = BTreeMap::new();
        tasks.insert(TaskId(1), task_v1(1, TaskState::Running));
        std::fs::write(
            dir.join(snapshot_name(2)),
            snapshot_of(SNAPSHOT_VERSION_1, &StateImageV1 { jobs, tasks }),
        )
        .unwrap();
        let other: JobKey = "www/prod/batch".parse().unwrap();
        let mut log = frame(&LogRecordV1::TaskUpserted(task_v1(1, TaskState::Finished)));
        log.extend(frame(&LogRecordV1::TaskEnded { id: TaskId(1) }));
        log.extend(frame(&LogRecordV1::JobCreated {
            key: other.clone(),
            instances: 2,
            config: TaskConfigV2 {
                job: other.clone(),
                ..config_v2()
            },
        }));
        log.extend(frame(&LogRecordV1::Commit));
        std::fs::write(dir.join(segment_name(2)), &log).unwrap();

        let (wal, recovery) = Wal::open(&dir).unwrap();
        assert_eq!(recovery.records_replayed, 3);
        assert_eq!(recovery.cut, None);
        let image = recovery.image;
        let t = &image.tasks[&TaskId(1)];
        assert_eq!(t.state, TaskState::Finished);
        assert_eq!((t.preempted_by, t.rev), (None, 0));
        assert_eq!(t.ports, vec![("http".to_string(), 31_000)]);
        assert_eq!(image.jobs[&job()].revs, JobRevs::default());
        assert!(image.jobs[&job()].updates.is_empty());
        assert_eq!(image.jobs[&job()].history, vec![TaskId(1)]);
        assert_eq!(image.jobs[&job()].config, config());
        assert_eq!(image.jobs[&job()].config.health_check, None);
        assert_eq!(
            image.jobs[&other].config,
            TaskConfig {
                job: other.clone(),
                ..config()
            }
        );
        assert_eq!(image.jobs[&other].current, vec![None, None]);
        assert!(image.quotas.is_empty());
        assert!(image.hosts.is_empty());
        image.check_invariants().unwrap();
        continue_in_the_current_format(&dir, wal, image);
    }

    /// The same for the previous build (format 2: quotas and preemptors, but no service
    /// fields in the configs and no hosts).
    #[test]
    fn a_format_2_shard_dir_recovers_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shard-0");
        std::fs::create_dir_all(&dir).unwrap();
        let mut jobs = BTreeMap::new();
        jobs.insert(job(), job_v2(2, vec![Some(TaskId(1)), None]));
        let mut tasks = BTreeMap::new();
        tasks.insert(TaskId(1), task_v3(1, TaskState::Running));
        let mut quotas = BTreeMap::new();
        quotas.insert(
            "www".to_string(),
            Resources {
                cpu_millis: 4000,
                ram_mib: 8192,
                disk_mib: 1024,
                ports: 0,
            },
        );
        std::fs::write(
            dir.join(snapshot_name(2)),
            snapshot_of(
                SNAPSHOT_VERSION_2,
                &StateImageV2 {
                    jobs,
                    tasks,
                    quotas: quotas.clone(),
                },
            ),
        )
        .unwrap();
        let other: JobKey = "batch/devel/crunch".parse().unwrap();
        let mut log = frame(&LogRecordV2::TaskUpserted(task_v3(1, TaskState::Killed)));
        log.extend(frame(&LogRecordV2::TaskEnded { id: TaskId(1) }));
        log.extend(frame(&LogRecordV2::QuotaSet {
            role: "batch".into(),
            quota: Resources::ZERO,
        }));
        log.extend(frame(&LogRecordV2::JobCreated {
            key: other.clone(),
            instances: 3,
            config: TaskConfigV2 {
                job: other.clone(),
                tier: Tier::Revocable,
                ..config_v2()
            },
        }));
        log.extend(frame(&LogRecordV2::Commit));
        std::fs::write(dir.join(segment_name(2)), &log).unwrap();

        let (wal, recovery) = Wal::open(&dir).unwrap();
        assert_eq!(recovery.records_replayed, 4);
        assert_eq!(recovery.cut, None);
        let image = recovery.image;
        let t = &image.tasks[&TaskId(1)];
        assert_eq!(t.state, TaskState::Killed);
        assert_eq!((t.preempted_by, t.rev), (Some(TaskId(99)), 0));
        assert_eq!(image.jobs[&job()].history, vec![TaskId(1)]);
        assert_eq!(image.jobs[&job()].config, config());
        let c = &image.jobs[&other].config;
        assert_eq!((c.job.clone(), c.tier), (other.clone(), Tier::Revocable));
        assert_eq!(
            (
                &c.health_check,
                &c.http_lifecycle,
                &c.sla_policy,
                &c.partition_policy
            ),
            (&None, &None, &None, &None)
        );
        assert_eq!(image.quotas["www"], quotas["www"]);
        assert_eq!(image.quotas["batch"], Resources::ZERO);
        assert!(image.hosts.is_empty());
        image.check_invariants().unwrap();
        continue_in_the_current_format(&dir, wal, image);
    }

    /// The same for the build before rolling updates (format 3: service configs and hosts,
    /// but no revisions, no updates, no task revision): every task reads as revision 0 and
    /// every job at head revision 0.
    #[test]
    fn a_format_3_shard_dir_recovers_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shard-0");
        std::fs::create_dir_all(&dir).unwrap();
        let mut jobs = BTreeMap::new();
        jobs.insert(job(), job_v3(2, vec![Some(TaskId(1)), None]));
        let mut tasks = BTreeMap::new();
        tasks.insert(TaskId(1), task_v3(1, TaskState::Running));
        let mut hosts = BTreeMap::new();
        hosts.insert(
            "h9".to_string(),
            HostImage {
                mode: HostMode::Drained,
                drain_deadline_unix_ms: 3,
            },
        );
        let mut quotas = BTreeMap::new();
        quotas.insert("www".to_string(), Resources::ZERO);
        std::fs::write(
            dir.join(snapshot_name(2)),
            snapshot_of(
                SNAPSHOT_VERSION_3,
                &StateImageV3 {
                    jobs,
                    tasks,
                    quotas,
                    hosts,
                },
            ),
        )
        .unwrap();
        let other: JobKey = "www/prod/web".parse().unwrap();
        let mut log = frame(&LogRecordV3::TaskUpserted(task_v3(1, TaskState::Failed)));
        log.extend(frame(&LogRecordV3::TaskEnded { id: TaskId(1) }));
        log.extend(frame(&LogRecordV3::TaskUpserted(TaskImageV3 {
            preempted_by: None,
            ..task_v3(2, TaskState::Running)
        })));
        log.extend(frame(&LogRecordV3::HostModeSet {
            host: "h8".into(),
            mode: HostMode::Scheduled,
            drain_deadline_unix_ms: 0,
        }));
        log.extend(frame(&LogRecordV3::JobCreated {
            key: other.clone(),
            instances: 1,
            config: TaskConfig {
                job: other.clone(),
                ..config_full()
            },
        }));
        log.extend(frame(&LogRecordV3::Commit));
        std::fs::write(dir.join(segment_name(2)), &log).unwrap();

        let (wal, recovery) = Wal::open(&dir).unwrap();
        assert_eq!(recovery.records_replayed, 5);
        assert_eq!(recovery.cut, None);
        let image = recovery.image;
        assert_eq!(image.tasks[&TaskId(1)], task(1, TaskState::Failed, 0));
        assert_eq!(
            image.tasks[&TaskId(2)],
            TaskImage {
                preempted_by: None,
                ..task(2, TaskState::Running, 0)
            }
        );
        let j = &image.jobs[&job()];
        assert_eq!(
            (&j.history, &j.current, &j.config),
            (
                &vec![TaskId(1)],
                &vec![Some(TaskId(2)), None],
                &config_full()
            )
        );
        assert_eq!((&j.revs, j.updates.len()), (&JobRevs::default(), 0));
        assert_eq!(image.jobs[&other].config.job, other);
        assert_eq!(image.quotas["www"], Resources::ZERO);
        assert_eq!(image.hosts.len(), 2);
        assert_eq!(image.hosts["h9"].mode, HostMode::Drained);
        assert_eq!(image.hosts["h8"].mode, HostMode::Scheduled);
        image.check_invariants().unwrap();
        continue_in_the_current_format(&dir, wal, image);
    }

    /// The same for the build before tasks' resource usage (format 4: revisions, updates,
    /// task revisions, but no usage): every task reads with no usage, everything else as it
    /// was written.
    #[test]
    fn a_format_4_shard_dir_recovers_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shard-0");
        std::fs::create_dir_all(&dir).unwrap();
        let revs = JobRevs {
            head: 1,
            others: [(0, config())].into(),
            instance_revs: [(1, 0)].into(),
        };
        let mut jobs = BTreeMap::new();
        jobs.insert(
            job(),
            JobImage {
                key: job(),
                config: config_full(),
                instances: 2,
                current: vec![Some(TaskId(1)), None],
                history: vec![],
                revs: revs.clone(),
                updates: vec![],
                cron: None,
            },
        );
        let mut tasks = BTreeMap::new();
        tasks.insert(TaskId(1), task_v4(1, TaskState::Running, 1));
        let mut hosts = BTreeMap::new();
        hosts.insert(
            "h9".to_string(),
            HostImage {
                mode: HostMode::Draining,
                drain_deadline_unix_ms: 11,
            },
        );
        std::fs::write(
            dir.join(snapshot_name(2)),
            snapshot_of(
                SNAPSHOT_VERSION_4,
                &StateImageV4 {
                    jobs,
                    tasks,
                    quotas: [("www".to_string(), Resources::ZERO)].into(),
                    hosts,
                },
            ),
        )
        .unwrap();
        let mut log = frame(&LogRecordV4::TaskUpserted(task_v4(
            1,
            TaskState::Finished,
            1,
        )));
        log.extend(frame(&LogRecordV4::TaskEnded { id: TaskId(1) }));
        log.extend(frame(&LogRecordV4::TaskUpserted(TaskImageV4 {
            instance: 1,
            preempted_by: None,
            ..task_v4(2, TaskState::Running, 0)
        })));
        log.extend(frame(&LogRecordV4::UpdateSaved {
            key: job(),
            update: update(1, UpdateStatus::RollForwardPaused),
        }));
        log.extend(frame(&LogRecordV4::Commit));
        std::fs::write(dir.join(segment_name(2)), &log).unwrap();

        let (wal, recovery) = Wal::open(&dir).unwrap();
        assert_eq!(recovery.records_replayed, 4);
        assert_eq!(recovery.cut, None);
        let image = recovery.image;
        assert_eq!(image.tasks[&TaskId(1)], task(1, TaskState::Finished, 1));
        assert_eq!(image.tasks[&TaskId(1)].usage, None);
        assert_eq!(
            image.tasks[&TaskId(2)],
            TaskImage {
                instance: 1,
                preempted_by: None,
                ..task(2, TaskState::Running, 0)
            }
        );
        let j = &image.jobs[&job()];
        assert_eq!(
            (&j.history, &j.current, &j.config, &j.revs),
            (
                &vec![TaskId(1)],
                &vec![None, Some(TaskId(2))],
                &config_full(),
                &revs
            )
        );
        assert_eq!(j.updates, vec![update(1, UpdateStatus::RollForwardPaused)]);
        assert_eq!(image.quotas["www"], Resources::ZERO);
        assert_eq!(image.hosts["h9"].mode, HostMode::Draining);
        image.check_invariants().unwrap();
        continue_in_the_current_format(&dir, wal, image);
    }

    /// Snapshots of every format decode to the same current image; the current one
    /// round-trips with the new fields set, and no payload is read under another header.
    #[test]
    fn snapshots_of_each_format_decode() {
        let mut jobs = BTreeMap::new();
        jobs.insert(job(), job_v2(1, vec![Some(TaskId(1))]));
        let mut tasks_v1 = BTreeMap::new();
        tasks_v1.insert(TaskId(1), task_v1(1, TaskState::Running));
        let v1 = snapshot_of(
            SNAPSHOT_VERSION_1,
            &StateImageV1 {
                jobs: jobs.clone(),
                tasks: tasks_v1,
            },
        );
        let mut tasks_v3 = BTreeMap::new();
        tasks_v3.insert(TaskId(1), TaskImageV3::from(task_v1(1, TaskState::Running)));
        let v2 = snapshot_of(
            SNAPSHOT_VERSION_2,
            &StateImageV2 {
                jobs: jobs.clone(),
                tasks: tasks_v3.clone(),
                quotas: BTreeMap::new(),
            },
        );
        let v3 = snapshot_of(
            SNAPSHOT_VERSION_3,
            &StateImageV3 {
                jobs: jobs
                    .clone()
                    .into_iter()
                    .map(|(k, j)| (k, j.into()))
                    .collect(),
                tasks: tasks_v3,
                quotas: BTreeMap::new(),
                hosts: BTreeMap::new(),
            },
        );
        let mut tasks_v4 = BTreeMap::new();
        let mut task_v4_1 = task_v4(1, TaskState::Running, 0);
        task_v4_1.preempted_by = None;
        tasks_v4.insert(TaskId(1), task_v4_1);
        let v4 = snapshot_of(
            SNAPSHOT_VERSION_4,
            &StateImageV4 {
                jobs: jobs
                    .into_iter()
                    .map(|(k, j)| (k, JobImageV3::from(j).into()))
                    .collect(),
                tasks: tasks_v4,
                quotas: BTreeMap::new(),
                hosts: BTreeMap::new(),
            },
        );
        let mut expected = StateImage::default();
        expected.jobs.insert(
            job(),
            JobImage {
                key: job(),
                config: config(),
                instances: 1,
                current: vec![Some(TaskId(1))],
                history: vec![],
                revs: JobRevs::default(),
                updates: vec![],
                cron: None,
            },
        );
        expected
            .tasks
            .insert(TaskId(1), task_v1(1, TaskState::Running).into());
        assert_eq!(expected.tasks[&TaskId(1)].rev, 0);
        assert_eq!(expected.tasks[&TaskId(1)].usage, None);
        for (version, bytes) in [(1, &v1), (2, &v2), (3, &v3), (4, &v4)] {
            assert_eq!(
                decode_snapshot(bytes),
                Ok(expected.clone()),
                "format {version}"
            );
        }
        // A payload under the next version's header is not that format's image (format 2's
        // configs end early; format 3's jobs end before their revisions; format 4's tasks
        // before their usage), and says so rather than reading garbage.
        for (older, newer) in [(&v2, 3u32), (&v3, 4), (&v4, 5)] {
            let mut mislabelled = older.clone();
            mislabelled[8..12].copy_from_slice(&newer.to_le_bytes());
            assert!(decode_snapshot(&mislabelled).is_err(), "as format {newer}");
        }

        let mut current = expected;
        let j = current.jobs.get_mut(&job()).unwrap();
        j.config = config_full();
        j.instances = 3;
        j.current = vec![Some(TaskId(1)), None, None];
        j.revs = JobRevs {
            head: 2,
            others: [(1, config())].into(),
            instance_revs: [(0, 1), (2, 1)].into(),
        };
        j.updates = vec![
            update(1, UpdateStatus::RolledBack),
            update(2, UpdateStatus::RollForwardPaused),
        ];
        let t = current.tasks.get_mut(&TaskId(1)).unwrap();
        t.rev = 1;
        t.state = TaskState::Finished;
        t.usage = Some(usage());
        current.jobs.get_mut(&job()).unwrap().current[0] = None;
        current.jobs.get_mut(&job()).unwrap().history = vec![TaskId(1)];
        current.hosts.insert(
            "h1".into(),
            HostImage {
                mode: HostMode::Scheduled,
                drain_deadline_unix_ms: 0,
            },
        );
        current.hosts.insert(
            "h2".into(),
            HostImage {
                mode: HostMode::Drained,
                drain_deadline_unix_ms: 17,
            },
        );
        current.check_invariants().unwrap();
        let bytes = encode_snapshot(&current).unwrap();
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 5);
        let decoded = decode_snapshot(&bytes).unwrap();
        assert_eq!(decoded, current);
        assert_eq!(decoded.tasks[&TaskId(1)].usage, Some(usage()));
        // A current payload under an older header is refused too.
        for version in [
            SNAPSHOT_VERSION_1,
            SNAPSHOT_VERSION_2,
            SNAPSHOT_VERSION_3,
            SNAPSHOT_VERSION_4,
        ] {
            let mut old = bytes.clone();
            old[8..12].copy_from_slice(&version.to_le_bytes());
            assert!(decode_snapshot(&old).is_err(), "as format {version}");
        }
        // Even the plainest current image (every new field at its default) is no format-3 or
        // format-4 one: the defaults are bytes an older reader finds left over.
        let mut plain = current;
        for j in plain.jobs.values_mut() {
            (j.revs, j.updates) = (JobRevs::default(), vec![]);
        }
        plain
            .tasks
            .values_mut()
            .for_each(|t| (t.rev, t.usage) = (0, None));
        plain.hosts.clear();
        for version in [SNAPSHOT_VERSION_3, SNAPSHOT_VERSION_4] {
            let mut old = encode_snapshot(&plain).unwrap();
            old[8..12].copy_from_slice(&version.to_le_bytes());
            assert!(decode_snapshot(&old).is_err(), "as format {version}");
        }
    }

    /// The records format 4 added, in the current layout.
    fn format_4_records() -> Vec<LogRecord> {
        vec![
            LogRecord::TaskUpserted(task(3, TaskState::Running, 0)),
            LogRecord::TaskUpserted(task(3, TaskState::Running, 300)),
            LogRecord::TaskUpserted(TaskImage {
                preempted_by: None,
                ..task(3, TaskState::Running, 1)
            }),
            LogRecord::JobRevised {
                key: job(),
                instances: 5,
                config: config_full(),
                revs: JobRevs {
                    head: 3,
                    others: [(1, config()), (2, config_full())].into(),
                    instance_revs: [(4, 1)].into(),
                },
            },
            LogRecord::JobRevised {
                key: job(),
                instances: 0,
                config: config(),
                revs: JobRevs::default(),
            },
            LogRecord::UpdateSaved {
                key: job(),
                update: update(1, UpdateStatus::RollingBack),
            },
            LogRecord::UpdateRemoved { key: job(), id: 0 },
            LogRecord::UpdateRemoved {
                key: job(),
                id: u64::MAX,
            },
        ]
    }

    /// The records format 5 changed: task images with a usage, and one without.
    fn format_5_records() -> Vec<LogRecord> {
        vec![
            LogRecord::TaskUpserted(task_used(3, TaskState::Finished, 0)),
            LogRecord::TaskUpserted(task_used(3, TaskState::Failed, 300)),
            LogRecord::TaskUpserted(TaskImage {
                usage: Some(TaskUsage::default()),
                ..task(3, TaskState::Killed, 1)
            }),
            LogRecord::TaskUpserted(TaskImage {
                usage: Some(TaskUsage {
                    cpu_time_ms: u64::MAX,
                    peak_memory_bytes: u64::MAX,
                    disk_bytes: u64::MAX,
                }),
                ..task(3, TaskState::Finished, 1)
            }),
            LogRecord::TaskUpserted(task(3, TaskState::Running, 2)),
        ]
    }

    /// Every older record decodes, through the frame reader, as the current record it means,
    /// and no current record is taken for an older one.
    #[test]
    fn records_of_each_format_decode_as_what_they_mean() {
        let job_created_v2 = LogRecordV2::JobCreated {
            key: job(),
            instances: 4,
            config: config_v2(),
        };
        let job_created_v1 = LogRecordV1::JobCreated {
            key: job(),
            instances: 4,
            config: config_v2(),
        };
        let job_created = LogRecord::JobCreated {
            key: job(),
            instances: 4,
            config: config(),
        };
        let hosts_v3 = LogRecordV3::HostModeSet {
            host: "h1".into(),
            mode: HostMode::Drained,
            drain_deadline_unix_ms: 9,
        };
        let cases: Vec<(Vec<u8>, LogRecord)> = vec![
            (frame(&job_created_v2), job_created.clone()),
            (frame(&job_created_v1), job_created.clone()),
            (
                frame(&LogRecordV3::JobCreated {
                    key: job(),
                    instances: 4,
                    config: config_full(),
                }),
                LogRecord::JobCreated {
                    key: job(),
                    instances: 4,
                    config: config_full(),
                },
            ),
            (
                frame(&LogRecordV1::TaskUpserted(task_v1(3, TaskState::Lost))),
                LogRecord::TaskUpserted(task_v1(3, TaskState::Lost).into()),
            ),
            (
                frame(&LogRecordV2::TaskUpserted(task_v3(3, TaskState::Lost))),
                LogRecord::TaskUpserted(task(3, TaskState::Lost, 0)),
            ),
            (
                frame(&LogRecordV3::TaskUpserted(task_v3(3, TaskState::Lost))),
                LogRecord::TaskUpserted(task(3, TaskState::Lost, 0)),
            ),
            (
                frame(&LogRecordV4::TaskUpserted(task_v4(3, TaskState::Lost, 0))),
                LogRecord::TaskUpserted(task(3, TaskState::Lost, 0)),
            ),
            (
                frame(&LogRecordV4::TaskUpserted(task_v4(
                    3,
                    TaskState::Finished,
                    300,
                ))),
                LogRecord::TaskUpserted(task(3, TaskState::Finished, 300)),
            ),
            (
                frame(&LogRecordV4::UpdateRemoved { key: job(), id: 7 }),
                LogRecord::UpdateRemoved { key: job(), id: 7 },
            ),
            (
                frame(&LogRecordV4::CronSet {
                    key: job(),
                    cron: None,
                }),
                LogRecord::CronSet {
                    key: job(),
                    cron: None,
                },
            ),
            (
                frame(&LogRecordV2::QuotaSet {
                    role: "r".into(),
                    quota: Resources::ZERO,
                }),
                LogRecord::QuotaSet {
                    role: "r".into(),
                    quota: Resources::ZERO,
                },
            ),
            (
                frame(&hosts_v3),
                LogRecord::HostModeSet {
                    host: "h1".into(),
                    mode: HostMode::Drained,
                    drain_deadline_unix_ms: 9,
                },
            ),
            (
                frame(&LogRecordV1::JobRemoved { key: job() }),
                LogRecord::JobRemoved { key: job() },
            ),
            (frame(&LogRecordV2::Commit), LogRecord::Commit),
            (frame(&LogRecordV3::Commit), LogRecord::Commit),
        ];
        for (bytes, expected) in cases {
            let (record, len) = decode_frame(&bytes).unwrap();
            assert_eq!((record, len), (expected, bytes.len()));
        }

        // An older JobCreated ends where its config ends: four bytes (the `None` tags) short
        // of the current layout, which therefore cannot read it.
        let v2 = postcard::to_stdvec(&job_created_v2).unwrap();
        assert_eq!(postcard::to_stdvec(&job_created_v1).unwrap(), v2);
        let current = postcard::to_stdvec(&job_created).unwrap();
        assert_eq!(current.len(), v2.len() + 4);
        assert_eq!(current[..v2.len()], v2[..]);
        assert!(postcard::from_bytes::<LogRecord>(&v2).is_err());
        let v1_task =
            postcard::to_stdvec(&LogRecordV1::TaskUpserted(task_v1(3, TaskState::Lost))).unwrap();
        assert!(postcard::from_bytes::<LogRecord>(&v1_task).is_err());
        // A format-3 TaskUpserted (byte for byte a format-2 one) ends where its task's
        // `preempted_by` ends: one byte (a `rev` of 0) short of the current layout.
        let v3_task =
            postcard::to_stdvec(&LogRecordV3::TaskUpserted(task_v3(3, TaskState::Lost))).unwrap();
        assert_eq!(
            postcard::to_stdvec(&LogRecordV2::TaskUpserted(task_v3(3, TaskState::Lost))).unwrap(),
            v3_task
        );
        let current_task =
            postcard::to_stdvec(&LogRecord::TaskUpserted(task(3, TaskState::Lost, 0))).unwrap();
        assert_eq!(current_task.len(), v3_task.len() + 2);
        assert_eq!(current_task[..v3_task.len()], v3_task[..]);
        assert!(postcard::from_bytes::<LogRecord>(&v3_task).is_err());
        // A format-4 TaskUpserted ends where its task's `rev` ends: one byte (the `None` tag
        // of `usage`) short of the current layout.
        let v4_task =
            postcard::to_stdvec(&LogRecordV4::TaskUpserted(task_v4(3, TaskState::Lost, 0)))
                .unwrap();
        assert_eq!(v4_task.len(), v3_task.len() + 1);
        assert_eq!(current_task.len(), v4_task.len() + 1);
        assert_eq!(current_task[..v4_task.len()], v4_task[..]);
        assert!(postcard::from_bytes::<LogRecord>(&v4_task).is_err());
        assert!(postcard::take_from_bytes::<LogRecordV3>(&v4_task)
            .is_ok_and(|(_, rest)| rest.len() == 1));

        // Current records, whatever their new fields hold, are never read as older ones:
        // the older layouts leave bytes over, or have no such variant. And they decode as
        // themselves.
        let hosts = LogRecord::HostModeSet {
            host: "h1".into(),
            mode: HostMode::Scheduled,
            drain_deadline_unix_ms: 0,
        };
        let full_job = LogRecord::JobCreated {
            key: job(),
            instances: 4,
            config: config_full(),
        };
        let mut currents = vec![job_created.clone(), full_job, hosts];
        currents.extend(format_4_records());
        currents.extend(format_5_records());
        for record in currents {
            let bytes = postcard::to_stdvec(&record).unwrap();
            let is_task = matches!(record, LogRecord::TaskUpserted(_));
            let is_new = is_task
                || matches!(
                    record,
                    LogRecord::JobRevised { .. }
                        | LogRecord::UpdateSaved { .. }
                        | LogRecord::UpdateRemoved { .. }
                        | LogRecord::CronSet { .. }
                );
            assert!(
                postcard::take_from_bytes::<LogRecordV4>(&bytes)
                    .map_or(true, |(_, rest)| !rest.is_empty())
                    || !is_task,
                "{record} reads whole as format 4"
            );
            assert!(
                postcard::take_from_bytes::<LogRecordV3>(&bytes)
                    .map_or(true, |(_, rest)| !rest.is_empty())
                    || !is_new,
                "{record} reads whole as format 3"
            );
            assert!(
                postcard::take_from_bytes::<LogRecordV2>(&bytes)
                    .map_or(true, |(_, rest)| !rest.is_empty()),
                "{record} reads whole as format 2"
            );
            assert!(
                postcard::take_from_bytes::<LogRecordV1>(&bytes)
                    .map_or(true, |(_, rest)| !rest.is_empty()),
                "{record} reads whole as format 1"
            );
            // The records format 5 kept as they were (all but `TaskUpserted`) are format-4
            // records too, meaning the same; a current `TaskUpserted` is no older record.
            let legacy = decode_record_legacy(&bytes);
            if is_task {
                assert!(legacy.is_none(), "{record}");
            } else {
                assert_eq!(legacy.as_ref(), Some(&record));
            }
            let framed = frame_of(bytes.clone());
            assert_eq!(decode_frame(&framed).unwrap(), (record, framed.len()));
        }
        // A current JobCreated is 4 bytes over as format 2; a current HostModeSet is no
        // format-2 record (no such variant before 3).
        assert!(postcard::take_from_bytes::<LogRecordV2>(&current)
            .is_ok_and(|(_, rest)| rest.len() == 4));
        let hosts = postcard::to_stdvec(&LogRecord::HostModeSet {
            host: "h".into(),
            mode: HostMode::Draining,
            drain_deadline_unix_ms: 5,
        })
        .unwrap();
        assert!(postcard::take_from_bytes::<LogRecordV2>(&hosts).is_err());
        // A current TaskUpserted is four bytes longer than its format-1 form (the tag, the
        // preemptor's id, the revision, the usage's tag), two longer than its format-3 form,
        // one longer than its format-4 form; with a usage, that usage's varints longer still.
        assert!(postcard::take_from_bytes::<LogRecordV1>(&current_task)
            .is_ok_and(|(_, rest)| rest.len() == 1 + 1 + 1 + 1));
        assert!(postcard::take_from_bytes::<LogRecordV3>(&current_task)
            .is_ok_and(|(_, rest)| rest.len() == 2));
        assert!(postcard::take_from_bytes::<LogRecordV4>(&current_task)
            .is_ok_and(|(_, rest)| rest.len() == 1));
        let used_task =
            postcard::to_stdvec(&LogRecord::TaskUpserted(task_used(3, TaskState::Lost, 0)))
                .unwrap();
        assert_eq!(used_task[..v4_task.len()], v4_task[..]);
        assert!(postcard::take_from_bytes::<LogRecordV4>(&used_task)
            .is_ok_and(|(_, rest)| rest.len() > 1 && rest[0] == 1));
        // An older record with a byte appended is nobody's: not current, not older.
        let mut padded = v2.clone();
        padded.push(0);
        assert!(postcard::from_bytes::<LogRecord>(&padded).is_err());
        assert!(decode_record_legacy(&padded).is_none());
        // (A format-3 TaskUpserted with a byte appended is a format-4 one, that byte where
        // format 4 has `rev`; with a zero byte more, a current one, with no usage. Frames hold
        // what one build wrote, so it never is.)
        let mut padded = v3_task.clone();
        padded.push(5);
        assert!(postcard::from_bytes::<LogRecord>(&padded).is_err());
        assert_eq!(
            decode_record_legacy(&padded),
            Some(LogRecord::TaskUpserted(task(3, TaskState::Lost, 5)))
        );
        padded.push(0);
        assert_eq!(
            postcard::from_bytes::<LogRecord>(&padded).unwrap(),
            LogRecord::TaskUpserted(task(3, TaskState::Lost, 5))
        );
        assert!(decode_record_legacy(&padded).is_none());
    }
}
