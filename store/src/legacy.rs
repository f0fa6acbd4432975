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
//! - 3: the current one ([`files::SNAPSHOT_VERSION`](crate::files::SNAPSHOT_VERSION)).
//!
//! Snapshot files say their format in their header, so each is read by its own layout.
//!
//! Log records do not say theirs. A frame holds exactly one record, and each layout's decode
//! must consume the whole payload, so an older record is never read as a current one, nor the
//! other way round:
//! - a record decodes as the current layout first. An older `JobCreated` stops where its
//!   `TaskConfig` stops (the config is the record's last field, so the record and the frame
//!   end with `finalization_wait_secs`), and the current layout then needs at least the four
//!   `Option` tags that follow: the payload runs out, the decode fails. A format-1
//!   `TaskUpserted` likewise ends before the current `preempted_by` tag;
//! - a current record always decodes as the current layout, so it never reaches the older
//!   ones. Had it reached them, it would still be refused: where an older layout reads a
//!   prefix of a current record (a current `JobCreated` read as format 2 stops before the
//!   four tags; a current `TaskUpserted` read as format 1 before `preempted_by`), bytes are
//!   left over, and a leftover byte fails the decode — this is why the whole frame must be
//!   consumed, as an `Option`'s tag is one byte that a shorter layout would otherwise ignore;
//! - what fails the current layout is tried as format 2, then as format 1. Every other
//!   record of both encodes exactly as its current form; a format-1 record that is whole as
//!   format 2 (all but `TaskUpserted`) means the same in both.
//!
//! Hence the rule for the next change: fields go at the end of the last field of a record
//! (as `TaskConfig` ends `JobCreated`), or the record needs a new variant.

use std::collections::BTreeMap;

use borealis_core::{Constraint, JobKey, Resources, TaskConfig, TaskId, TaskState, Tier};
use serde::Deserialize;

use crate::image::{JobImage, LogRecord, StateImage, TaskImage};

/// The snapshot format before quotas and `preempted_by`.
pub const SNAPSHOT_VERSION_1: u32 = 1;
/// The snapshot format before the job's service fields and host maintenance.
pub const SNAPSHOT_VERSION_2: u32 = 2;

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

impl From<JobImageV2> for JobImage {
    fn from(j: JobImageV2) -> JobImage {
        JobImage {
            key: j.key,
            config: j.config.into(),
            instances: j.instances,
            current: j.current,
            history: j.history,
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

impl From<TaskImageV1> for TaskImage {
    fn from(t: TaskImageV1) -> TaskImage {
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
            preempted_by: None,
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
    tasks: BTreeMap<TaskId, TaskImage>,
    quotas: BTreeMap<String, Resources>,
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
    TaskUpserted(TaskImage),
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

fn jobs_of(jobs: BTreeMap<JobKey, JobImageV2>) -> BTreeMap<JobKey, JobImage> {
    jobs.into_iter().map(|(k, j)| (k, j.into())).collect()
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
                jobs: jobs_of(image.jobs),
                tasks: image
                    .tasks
                    .into_iter()
                    .map(|(id, t)| (id, t.into()))
                    .collect(),
                quotas: BTreeMap::new(),
                hosts: BTreeMap::new(),
            })
        }
        SNAPSHOT_VERSION_2 => {
            decode_whole::<StateImageV2>(payload, "format-2 image").map(|image| StateImage {
                jobs: jobs_of(image.jobs),
                tasks: image.tasks,
                quotas: image.quotas,
                hosts: BTreeMap::new(),
            })
        }
        _ => return None,
    })
}

/// Decodes a whole record payload written in format 2 or 1 (see the module doc for why the
/// order and the whole-payload rule make this unambiguous); `None` when it is neither.
pub(crate) fn decode_record_legacy(payload: &[u8]) -> Option<LogRecord> {
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
            LogRecordV2::TaskUpserted(t) => LogRecord::TaskUpserted(t),
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
    use crate::image::HostImage;
    use crate::wal::decode_frame;
    use crate::Wal;
    use borealis_core::{
        HealthCheck, HealthChecker, HostMode, HttpLifecycle, PartitionPolicy, SlaPolicy,
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

    fn task_v2(id: u64, state: TaskState) -> TaskImage {
        TaskImage {
            preempted_by: Some(TaskId(99)),
            ..task_v1(id, state).into()
        }
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

    /// Appends current records, reopens, snapshots in the current format and reopens again:
    /// the state carries through each step, and the new snapshot is format 3.
    fn continue_in_the_current_format(dir: &std::path::Path, wal: Wal, mut image: StateImage) {
        let mut wal = wal;
        let new = [
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
        let (mut wal, recovery) = Wal::open(dir).unwrap();
        assert_eq!(recovery.image, image);
        wal.snapshot(&image).unwrap();
        drop(wal);
        let (_, recovery) = Wal::open(dir).unwrap();
        assert_eq!(recovery.image, image);
        let snapshot = std::fs::read(recovery.snapshot.expect("a snapshot")).unwrap();
        assert_eq!(
            u32::from_le_bytes(snapshot[8..12].try_into().unwrap()),
            crate::files::SNAPSHOT_VERSION
        );
        assert_eq!(crate::files::SNAPSHOT_VERSION, 3);
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
        assert_eq!(t.preempted_by, None);
        assert_eq!(t.ports, vec![("http".to_string(), 31_000)]);
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
        tasks.insert(TaskId(1), task_v2(1, TaskState::Running));
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
        let mut log = frame(&LogRecordV2::TaskUpserted(task_v2(1, TaskState::Killed)));
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
        assert_eq!(t.preempted_by, Some(TaskId(99)));
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

    /// Snapshots of every format decode to the same current image; the current one
    /// round-trips with the new fields set.
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
        let mut tasks_v2 = BTreeMap::new();
        tasks_v2.insert(TaskId(1), TaskImage::from(task_v1(1, TaskState::Running)));
        let v2 = snapshot_of(
            SNAPSHOT_VERSION_2,
            &StateImageV2 {
                jobs,
                tasks: tasks_v2,
                quotas: BTreeMap::new(),
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
            },
        );
        expected
            .tasks
            .insert(TaskId(1), task_v1(1, TaskState::Running).into());
        assert_eq!(decode_snapshot(&v1).unwrap(), expected);
        assert_eq!(decode_snapshot(&v2).unwrap(), expected);
        // A format-2 payload under a version-3 header is not a current image (the configs
        // end early), and says so rather than reading garbage.
        let mut mislabelled = v2.clone();
        mislabelled[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert!(decode_snapshot(&mislabelled).is_err());

        let mut current = expected;
        current.jobs.get_mut(&job()).unwrap().config = config_full();
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
        let bytes = encode_snapshot(&current).unwrap();
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 3);
        assert_eq!(decode_snapshot(&bytes).unwrap(), current);
        // A current payload under an older header is refused too (bytes left over).
        for version in [SNAPSHOT_VERSION_1, SNAPSHOT_VERSION_2] {
            let mut old = bytes.clone();
            old[8..12].copy_from_slice(&version.to_le_bytes());
            assert!(decode_snapshot(&old).is_err(), "as format {version}");
        }
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
        let cases: Vec<(Vec<u8>, LogRecord)> = vec![
            (frame(&job_created_v2), job_created.clone()),
            (frame(&job_created_v1), job_created.clone()),
            (
                frame(&LogRecordV1::TaskUpserted(task_v1(3, TaskState::Lost))),
                LogRecord::TaskUpserted(task_v1(3, TaskState::Lost).into()),
            ),
            (
                frame(&LogRecordV2::TaskUpserted(task_v2(3, TaskState::Lost))),
                LogRecord::TaskUpserted(task_v2(3, TaskState::Lost)),
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
                frame(&LogRecordV1::JobRemoved { key: job() }),
                LogRecord::JobRemoved { key: job() },
            ),
            (frame(&LogRecordV2::Commit), LogRecord::Commit),
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

        // Current records, whatever their new fields hold, are never read as older ones:
        // the older layouts leave bytes over. And they decode as themselves.
        let hosts = LogRecord::HostModeSet {
            host: "h1".into(),
            mode: HostMode::Scheduled,
            drain_deadline_unix_ms: 0,
        };
        let none_job = job_created.clone();
        let full_job = LogRecord::JobCreated {
            key: job(),
            instances: 4,
            config: config_full(),
        };
        let preempted = LogRecord::TaskUpserted(task_v2(3, TaskState::Preempting));
        for record in [none_job, full_job, hosts, preempted.clone()] {
            let bytes = postcard::to_stdvec(&record).unwrap();
            assert!(
                postcard::take_from_bytes::<LogRecordV2>(&bytes)
                    .map_or(true, |(_, rest)| !rest.is_empty())
                    || matches!(record, LogRecord::TaskUpserted(_)),
                "{record} reads whole as format 2"
            );
            assert!(
                postcard::take_from_bytes::<LogRecordV1>(&bytes)
                    .map_or(true, |(_, rest)| !rest.is_empty()),
                "{record} reads whole as format 1"
            );
            let framed = frame_of(bytes.clone());
            assert_eq!(decode_frame(&framed).unwrap(), (record, framed.len()));
        }
        // A current JobCreated is refused by the legacy reader (4 bytes over), as is a
        // current HostModeSet (no such variant before).
        assert!(decode_record_legacy(&current).is_none());
        let hosts = postcard::to_stdvec(&LogRecord::HostModeSet {
            host: "h".into(),
            mode: HostMode::Draining,
            drain_deadline_unix_ms: 5,
        })
        .unwrap();
        assert!(decode_record_legacy(&hosts).is_none());
        // A current TaskUpserted is one byte longer than its format-1 form (the tag).
        let preempted = postcard::to_stdvec(&preempted).unwrap();
        assert!(postcard::take_from_bytes::<LogRecordV1>(&preempted)
            .is_ok_and(|(_, rest)| rest.len() == 1 + 1));
        // An older record with a byte appended is nobody's: not current, not older.
        let mut padded = v2.clone();
        padded.push(0);
        assert!(postcard::from_bytes::<LogRecord>(&padded).is_err());
        assert!(decode_record_legacy(&padded).is_none());
    }
}
