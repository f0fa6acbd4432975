//! Reading what earlier builds wrote, so that an upgrade keeps the state.
//!
//! postcard is positional: a struct's fields are encoded in order with nothing to mark where
//! they end, so a field added at the end changes the format. Format 1 (before quotas and
//! preemption) differs from the current one in two places only:
//! - a task's image has no `preempted_by` (read as `None`);
//! - the state image has no `quotas` (read as none set).
//!
//! Snapshot files say their format (`files::SNAPSHOT_VERSION`). Log records do not, but a
//! frame holds exactly one record: a format-1 `TaskUpserted` ends before the current layout's
//! last field, so it never decodes as a current record, and decodes whole as a format-1 one;
//! every other format-1 record encodes exactly as its current form.

use std::collections::BTreeMap;

use borealis_core::{JobKey, TaskConfig, TaskId, TaskState};
use serde::Deserialize;

use crate::image::{JobImage, LogRecord, StateImage, TaskImage};

/// The snapshot format before quotas and `preempted_by`.
pub const SNAPSHOT_VERSION_1: u32 = 1;

/// [`TaskImage`] in format 1.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
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
    jobs: BTreeMap<JobKey, JobImage>,
    tasks: BTreeMap<TaskId, TaskImageV1>,
}

/// [`LogRecord`] in format 1: the same variants in the same order (postcard encodes the
/// variant index, not its name), up to `Commit`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
enum LogRecordV1 {
    JobCreated {
        key: JobKey,
        instances: u32,
        config: TaskConfig,
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

/// Decodes a format-1 snapshot payload (the bytes after the header).
pub(crate) fn decode_state_image_v1(payload: &[u8]) -> Result<StateImage, String> {
    match postcard::take_from_bytes::<StateImageV1>(payload) {
        Ok((image, [])) => Ok(StateImage {
            jobs: image.jobs,
            tasks: image
                .tasks
                .into_iter()
                .map(|(id, t)| (id, t.into()))
                .collect(),
            quotas: BTreeMap::new(),
        }),
        Ok((_, rest)) => Err(format!("{} trailing bytes after the image", rest.len())),
        Err(e) => Err(format!("undecodable format-1 image: {e}")),
    }
}

/// Decodes a whole record payload written in format 1; `None` when it is not one.
pub(crate) fn decode_record_v1(payload: &[u8]) -> Option<LogRecord> {
    let Ok((record, [])) = postcard::take_from_bytes::<LogRecordV1>(payload) else {
        return None;
    };
    Some(match record {
        LogRecordV1::JobCreated {
            key,
            instances,
            config,
        } => LogRecord::JobCreated {
            key,
            instances,
            config,
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
    use crate::files::{segment_name, snapshot_name, SNAPSHOT_HEADER_BYTES, SNAPSHOT_MAGIC};
    use crate::Wal;
    use borealis_core::{Resources, Tier};

    fn job() -> JobKey {
        "www/prod/hello".parse().unwrap()
    }

    fn config() -> TaskConfig {
        TaskConfig {
            job: job(),
            command: "true".into(),
            resources: Resources {
                cpu_millis: 100,
                ram_mib: 16,
                disk_mib: 16,
                ports: 0,
            },
            port_names: vec![],
            constraints: vec![],
            tier: Tier::Preferred,
            priority: 0,
            production: true,
            is_service: true,
            max_task_failures: 1,
            finalization_wait_secs: 5,
            health_check: None,
            http_lifecycle: None,
            sla_policy: None,
            partition_policy: None,
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

    fn frame(record: &LogRecordV1) -> Vec<u8> {
        let payload = postcard::to_stdvec(record).unwrap();
        let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        bytes
    }

    fn snapshot_v1(image: &StateImageV1) -> Vec<u8> {
        let payload = postcard::to_stdvec(image).unwrap();
        let mut bytes = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + payload.len());
        bytes.extend_from_slice(&SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&SNAPSHOT_VERSION_1.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        bytes
    }

    /// A shard dir an earlier build wrote (a format-1 snapshot and format-1 records after it)
    /// opens with its whole state; what is written afterwards is in the current format.
    #[test]
    fn a_format_1_shard_dir_recovers_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shard-0");
        std::fs::create_dir_all(&dir).unwrap();
        let mut jobs = BTreeMap::new();
        jobs.insert(
            job(),
            JobImage {
                key: job(),
                config: config(),
                instances: 1,
                current: vec![Some(TaskId(1))],
                history: vec![],
            },
        );
        let mut tasks = BTreeMap::new();
        tasks.insert(TaskId(1), task_v1(1, TaskState::Running));
        std::fs::write(
            dir.join(snapshot_name(2)),
            snapshot_v1(&StateImageV1 { jobs, tasks }),
        )
        .unwrap();
        let mut log = frame(&LogRecordV1::TaskUpserted(task_v1(1, TaskState::Finished)));
        log.extend(frame(&LogRecordV1::TaskEnded { id: TaskId(1) }));
        log.extend(frame(&LogRecordV1::Commit));
        std::fs::write(dir.join(segment_name(2)), &log).unwrap();

        let (mut wal, recovery) = Wal::open(&dir).unwrap();
        assert_eq!(recovery.records_replayed, 2);
        assert_eq!(recovery.cut, None);
        let mut image = recovery.image;
        let t = &image.tasks[&TaskId(1)];
        assert_eq!(t.state, TaskState::Finished);
        assert_eq!(t.preempted_by, None);
        assert_eq!(t.ports, vec![("http".to_string(), 31_000)]);
        assert_eq!(image.jobs[&job()].history, vec![TaskId(1)]);
        assert!(image.quotas.is_empty());
        image.check_invariants().unwrap();

        // New records after old ones, then a snapshot in the current format.
        let quota = LogRecord::QuotaSet {
            role: "www".into(),
            quota: Resources::ZERO,
        };
        image.apply(&quota).unwrap();
        wal.append(&quota);
        wal.commit().unwrap();
        drop(wal);
        let (mut wal, recovery) = Wal::open(&dir).unwrap();
        assert_eq!(recovery.image, image);
        wal.snapshot(&image).unwrap();
        drop(wal);
        assert_eq!(Wal::open(&dir).unwrap().1.image, image);
    }

    #[test]
    fn current_records_never_read_as_format_1() {
        // A current TaskUpserted is one byte longer than its format-1 form (the `None`).
        let v1 =
            postcard::to_stdvec(&LogRecordV1::TaskUpserted(task_v1(3, TaskState::Lost))).unwrap();
        let current =
            postcard::to_stdvec(&LogRecord::TaskUpserted(task_v1(3, TaskState::Lost).into()))
                .unwrap();
        assert_eq!(current.len(), v1.len() + 1);
        assert!(postcard::from_bytes::<LogRecord>(&v1).is_err());
        assert!(decode_record_v1(&current).is_none());
        // QuotaSet is not a format-1 record.
        let quota = postcard::to_stdvec(&LogRecord::QuotaSet {
            role: "r".into(),
            quota: Resources::ZERO,
        })
        .unwrap();
        assert!(decode_record_v1(&quota).is_none());
    }
}
