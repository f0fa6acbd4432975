//! Shared test helpers: valid record sequences (as proptest strategies), and small builders.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::path::Path;

use borealis_core::update::{JobUpdate, Rev, UpdateEvent, UpdateSettings, UpdateStatus};
use borealis_core::{
    HealthCheck, HealthChecker, HostMode, HttpLifecycle, JobKey, PartitionPolicy, Resources,
    SlaPolicy, TaskConfig, TaskId, TaskState, Tier,
};
use borealis_store::image::{JobRevs, LogRecord, StateImage, TaskImage};
use proptest::prelude::*;

pub fn key(i: usize) -> JobKey {
    JobKey::new(&format!("role{}", i % 3), "prod", &format!("job{i}")).expect("valid key")
}

pub fn config(key: &JobKey) -> TaskConfig {
    TaskConfig {
        job: key.clone(),
        command: format!("run {key}"),
        resources: Resources {
            cpu_millis: 500,
            ram_mib: 128,
            disk_mib: 64,
            ports: 1,
        },
        port_names: vec!["http".into()],
        constraints: Vec::new(),
        tier: Tier::Preferred,
        priority: 0,
        production: true,
        is_service: true,
        max_task_failures: 3,
        finalization_wait_secs: 5,
        health_check: None,
        http_lifecycle: None,
        sla_policy: None,
        partition_policy: None,
    }
}

/// `config(key)` with every service field set (health check, HTTP lifecycle, SLA, partition
/// policy), so that the encodings carry them.
pub fn service_config(key: &JobKey) -> TaskConfig {
    TaskConfig {
        health_check: Some(HealthCheck::with_defaults(HealthChecker::Shell {
            command: format!("check {key}"),
        })),
        http_lifecycle: Some(HttpLifecycle::default()),
        sla_policy: Some(SlaPolicy::Count {
            count: 1,
            duration_secs: 60,
        }),
        partition_policy: Some(PartitionPolicy {
            reschedule: false,
            delay_secs: 30,
        }),
        ..config(key)
    }
}

pub fn job_created(key: &JobKey, instances: u32) -> LogRecord {
    LogRecord::JobCreated {
        key: key.clone(),
        instances,
        config: config(key),
    }
}

pub fn task(id: u64, job: &JobKey, instance: u32, state: TaskState) -> TaskImage {
    TaskImage {
        id: TaskId(id),
        job: job.clone(),
        instance,
        state,
        agent_name: None,
        hostname: None,
        failure_count: 0,
        consecutive_flaps: 0,
        exit_code: -1,
        message: String::new(),
        ports: Vec::new(),
        sandbox: String::new(),
        killed_by_user: false,
        preempted_by: None,
        rev: 0,
        usage: None,
    }
}

/// A new update of `job` (ROLLING_FORWARD) to revision `to_rev` over instances `0..instances`,
/// each from revision 0, in its durable form: the transient fields a decode drops are empty.
pub fn job_update(id: u64, job: &JobKey, instances: u32, to_rev: Rev) -> JobUpdate {
    let mut update = JobUpdate::new(
        id,
        job.to_string(),
        UpdateSettings::default(),
        instances,
        instances,
        to_rev,
        (0..instances).map(|i| (i, Some(0))),
        1_700_000_000_000 + id,
        format!("update {id}"),
    );
    update.watching.clear();
    update
}

/// `update` with status `status`.
pub fn with_status(mut update: JobUpdate, status: UpdateStatus) -> JobUpdate {
    update.status = status;
    update
}

pub fn update_saved(job: &JobKey, update: JobUpdate) -> LogRecord {
    LogRecord::UpdateSaved {
        key: job.clone(),
        update,
    }
}

/// `JobRevised` of `job` to head `head` (its config's command names the revision).
pub fn job_revised(
    job: &JobKey,
    instances: u32,
    head: Rev,
    others: &[Rev],
    instance_revs: &[(u32, Rev)],
) -> LogRecord {
    LogRecord::JobRevised {
        key: job.clone(),
        instances,
        config: config_at(job, head),
        revs: JobRevs {
            head,
            others: others.iter().map(|&r| (r, config_at(job, r))).collect(),
            instance_revs: instance_revs.iter().copied().collect(),
        },
    }
}

/// `config(job)` for revision `rev` (0 is `config(job)` itself).
pub fn config_at(job: &JobKey, rev: Rev) -> TaskConfig {
    if rev == 0 {
        return config(job);
    }
    TaskConfig {
        command: format!("run {job} at revision {rev}"),
        ..config(job)
    }
}

/// A quota of `cpu_millis`, and ram and disk that go with it.
pub fn quota(cpu_millis: u32) -> Resources {
    Resources {
        cpu_millis,
        ram_mib: cpu_millis.saturating_mul(2),
        disk_mib: cpu_millis.saturating_mul(4),
        ports: 0,
    }
}

pub fn quota_set(role: &str, cpu_millis: u32) -> LogRecord {
    LogRecord::QuotaSet {
        role: role.to_string(),
        quota: quota(cpu_millis),
    }
}

pub fn host_mode_set(host: &str, mode: HostMode, drain_deadline_unix_ms: u64) -> LogRecord {
    LogRecord::HostModeSet {
        host: host.to_string(),
        mode,
        drain_deadline_unix_ms,
    }
}

/// Applies records to an empty image, panicking on the first that does not apply.
pub fn image_of(records: &[LogRecord]) -> StateImage {
    let mut image = StateImage::default();
    for record in records {
        image
            .apply(record)
            .unwrap_or_else(|e| panic!("generated record does not apply: {e}"));
    }
    image
}

/// An abstract step; [`interpret`] turns steps into records valid for the image so far.
#[derive(Clone, Debug)]
pub enum Step {
    CreateJob {
        job: u8,
        instances: u8,
    },
    RemoveJob {
        job: u8,
    },
    NewTask {
        job: u8,
        instance: u8,
        state: u8,
    },
    Update {
        pick: u16,
        state: u8,
        text: u8,
    },
    End {
        pick: u16,
    },
    Forget {
        pick: u16,
    },
    SetQuota {
        role: u8,
        cpu: u8,
    },
    SetHostMode {
        host: u8,
        mode: u8,
        deadline: u8,
    },
    /// A new head revision; `keep` picks the instances that stay on their revision.
    Revise {
        job: u8,
        grow: u8,
        keep: u8,
    },
    /// Progresses an active update (mostly that of the next job that has one), rewrites a
    /// finished one, or starts a new one.
    SaveUpdate {
        job: u8,
        pick: u8,
    },
    /// Prunes the oldest update of the job (or of the next one), ending it first if active.
    RemoveUpdate {
        job: u8,
    },
}

const JOBS: u8 = 5;

pub fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..JOBS, 1u8..5).prop_map(|(job, instances)| Step::CreateJob { job, instances }),
        1 => (0..JOBS).prop_map(|job| Step::RemoveJob { job }),
        12 => (0..JOBS, 0u8..5, any::<u8>())
            .prop_map(|(job, instance, state)| Step::NewTask { job, instance, state }),
        12 => (any::<u16>(), any::<u8>(), any::<u8>())
            .prop_map(|(pick, state, text)| Step::Update { pick, state, text }),
        9 => any::<u16>().prop_map(|pick| Step::End { pick }),
        6 => any::<u16>().prop_map(|pick| Step::Forget { pick }),
        2 => (0u8..6, any::<u8>()).prop_map(|(role, cpu)| Step::SetQuota { role, cpu }),
        2 => (0u8..8, any::<u8>(), any::<u8>())
            .prop_map(|(host, mode, deadline)| Step::SetHostMode { host, mode, deadline }),
        2 => (0..JOBS, any::<u8>(), any::<u8>())
            .prop_map(|(job, grow, keep)| Step::Revise { job, grow, keep }),
        5 => (0..JOBS, any::<u8>()).prop_map(|(job, pick)| Step::SaveUpdate { job, pick }),
        2 => (0..JOBS).prop_map(|job| Step::RemoveUpdate { job }),
    ]
}

/// A sequence of valid records, up to about `steps` long.
pub fn records(steps: usize) -> impl Strategy<Value = Vec<LogRecord>> {
    proptest::collection::vec(step(), 0..steps).prop_map(|steps| interpret(&steps))
}

/// Turns steps into records that apply in order (steps that fit nothing are skipped).
pub fn interpret(steps: &[Step]) -> Vec<LogRecord> {
    let mut image = StateImage::default();
    let mut out = Vec::new();
    let mut next_id = 1u64;
    let emit = |image: &mut StateImage, record: LogRecord, out: &mut Vec<LogRecord>| {
        image
            .apply(&record)
            .unwrap_or_else(|e| panic!("interpret made an invalid record: {e}"));
        out.push(record);
    };
    for step in steps {
        match *step {
            Step::CreateJob { job, instances } => {
                // Every other creation declares the service fields.
                let key = key(job.into());
                let config = if (job ^ instances) % 2 == 0 {
                    service_config(&key)
                } else {
                    config(&key)
                };
                let record = LogRecord::JobCreated {
                    key,
                    instances: instances.into(),
                    config,
                };
                emit(&mut image, record, &mut out);
            }
            Step::RemoveJob { job } => {
                let key = key(job.into());
                if image.jobs.contains_key(&key) {
                    emit(&mut image, LogRecord::JobRemoved { key }, &mut out);
                }
            }
            Step::NewTask {
                job,
                instance,
                state,
            } => {
                let key = key(job.into());
                if !image.jobs.contains_key(&key) {
                    emit(&mut image, job_created(&key, 3), &mut out);
                }
                let j = &image.jobs[&key];
                let instance = u32::from(instance) % j.instances;
                let state = TaskState::ALL[usize::from(state) % TaskState::COUNT];
                if !state.is_terminal() && j.current[instance as usize].is_some() {
                    continue; // the instance is busy: end its task first
                }
                let mut t = task(next_id, &key, instance, state);
                t.rev = j.revs.desired(instance);
                t.message = format!("new in {}", state.as_str());
                next_id += 1;
                emit(&mut image, LogRecord::TaskUpserted(t), &mut out);
            }
            Step::Update { pick, state, text } => {
                let Some(t) = nth_task(&image, pick) else {
                    continue;
                };
                let mut t = t.clone();
                let state = TaskState::ALL[usize::from(state) % TaskState::COUNT];
                let ended = image.jobs[&t.job].history.contains(&t.id);
                let slot = image.jobs[&t.job].current[t.instance as usize];
                if !state.is_terminal() && (ended || slot.is_some_and(|c| c != t.id)) {
                    continue;
                }
                if !state.is_terminal() && !image.jobs[&t.job].revs.knows(t.rev) {
                    continue; // its revision is gone: it cannot come back to life
                }
                t.state = state;
                t.failure_count += 1;
                t.message = format!("update {text}");
                t.agent_name = Some(format!("agent{}", text % 4));
                t.hostname = Some(format!("host{}", text % 4));
                t.ports = vec![("http".into(), 31_000 + u16::from(text))];
                t.sandbox = format!("/sandbox/{}", t.id);
                t.exit_code = i32::from(text) - 100;
                t.killed_by_user = text % 2 == 0;
                t.preempted_by = (text % 3 == 0).then_some(TaskId(u64::from(text) << 40 | 1));
                emit(&mut image, LogRecord::TaskUpserted(t), &mut out);
            }
            Step::End { pick } => {
                let Some(t) = nth_task(&image, pick) else {
                    continue;
                };
                let id = t.id;
                if image.jobs[&t.job].history.contains(&id) {
                    continue;
                }
                if !t.state.is_terminal() {
                    let mut t = t.clone();
                    t.state = TaskState::Finished;
                    t.exit_code = 0;
                    emit(&mut image, LogRecord::TaskUpserted(t), &mut out);
                }
                emit(&mut image, LogRecord::TaskEnded { id }, &mut out);
            }
            Step::Forget { pick } => {
                // Mostly the oldest ended task, as history pruning does; sometimes any task.
                let oldest = image.jobs.values().find_map(|j| j.history.first().copied());
                let id = match (oldest, nth_task(&image, pick)) {
                    (Some(id), _) if pick % 4 != 0 => id,
                    (_, Some(t)) => t.id,
                    (_, None) => continue,
                };
                emit(&mut image, LogRecord::TaskForgotten { id }, &mut out);
            }
            Step::SetQuota { role, cpu } => {
                // Roles of the generated jobs and others; a zero quota is a quota too.
                let role = format!("role{role}");
                emit(&mut image, quota_set(&role, u32::from(cpu) * 250), &mut out);
            }
            Step::SetHostMode {
                host,
                mode,
                deadline,
            } => {
                // NONE about a quarter of the time: it removes the host's entry.
                let mode = HostMode::ALL[usize::from(mode) % HostMode::ALL.len()];
                let deadline = u64::from(deadline) * 1_000_000_000;
                emit(
                    &mut image,
                    host_mode_set(&format!("host{host}"), mode, deadline),
                    &mut out,
                );
            }
            Step::Revise { job, grow, keep } => {
                let key = key(job.into());
                if !image.jobs.contains_key(&key) {
                    emit(&mut image, job_created(&key, 3), &mut out);
                }
                let j = &image.jobs[&key];
                let newest = j.revs.others.keys().next_back().copied();
                let head = newest.map_or(j.revs.head, |r| r.max(j.revs.head)) + 1;
                let instances = j.instances + u32::from(grow % 2);
                let instance_revs: BTreeMap<u32, Rev> = (0..instances)
                    .filter(|i| keep >> (i % 8) & 1 == 1)
                    .map(|i| (i, j.revs.desired(i)))
                    .collect();
                // Keep exactly the revisions still used: desired ones and live tasks' ones.
                let live = j
                    .current
                    .iter()
                    .flatten()
                    .map(|id| &image.tasks[id])
                    .filter(|t| !t.state.is_terminal())
                    .map(|t| t.rev);
                let config_of = |rev: Rev| {
                    if rev == j.revs.head {
                        j.config.clone()
                    } else {
                        j.revs.others[&rev].clone()
                    }
                };
                let others = instance_revs
                    .values()
                    .copied()
                    .chain(live)
                    .map(|rev| (rev, config_of(rev)))
                    .collect();
                let record = LogRecord::JobRevised {
                    key: key.clone(),
                    instances,
                    config: if grow % 4 < 2 {
                        config_at(&key, head)
                    } else {
                        TaskConfig {
                            command: format!("serve {key} at revision {head}"),
                            ..service_config(&key)
                        }
                    },
                    revs: JobRevs {
                        head,
                        others,
                        instance_revs,
                    },
                };
                emit(&mut image, record, &mut out);
            }
            Step::SaveUpdate { job, pick } => {
                // Mostly the job of the next active update, so that updates also end.
                let active = (0..JOBS)
                    .map(|i| key(usize::from((job + i) % JOBS)))
                    .find(|k| {
                        image
                            .jobs
                            .get(k)
                            .and_then(|j| j.updates.last())
                            .is_some_and(|u| !u.status.is_terminal())
                    });
                let key = match active {
                    Some(k) if pick % 4 != 1 => k,
                    _ => key(job.into()),
                };
                if !image.jobs.contains_key(&key) {
                    emit(&mut image, job_created(&key, 3), &mut out);
                }
                let j = &image.jobs[&key];
                let status = UpdateStatus::ALL[usize::from(pick) % UpdateStatus::ALL.len()];
                let update = match j.updates.last() {
                    Some(active) if !active.status.is_terminal() => {
                        let mut u = active.clone();
                        u.status = status;
                        u.failed_instances = u32::from(pick % 3);
                        u.updated_unix_ms += 1_000;
                        u.events.push(UpdateEvent {
                            unix_ms: u.updated_unix_ms,
                            status,
                            message: format!("to {status}"),
                        });
                        u
                    }
                    Some(_) if pick % 4 == 0 => {
                        // A finished one rewritten in place (its audit trail grew).
                        let mut u = j.updates[usize::from(pick) % j.updates.len()].clone();
                        u.events.push(UpdateEvent {
                            unix_ms: u.updated_unix_ms,
                            status: u.status,
                            message: format!("note {pick}"),
                        });
                        u
                    }
                    newest => {
                        let id = newest.map_or(1, |u| u.id + 1 + u64::from(pick % 2));
                        let mut u = JobUpdate::new(
                            id,
                            key.to_string(),
                            UpdateSettings {
                                batch_size: u32::from(pick % 3) + 1,
                                ..UpdateSettings::default()
                            },
                            j.instances,
                            j.instances,
                            j.revs.head,
                            (0..j.instances).map(|i| (i, Some(j.revs.desired(i)))),
                            1_700_000_000_000 + id,
                            format!("update {id}"),
                        );
                        u.watching.clear();
                        if pick % 3 == 0 {
                            u.status = status; // saved again only once it ended, or never
                        }
                        u
                    }
                };
                emit(&mut image, update_saved(&key, update), &mut out);
            }
            Step::RemoveUpdate { job } => {
                // The oldest update of this job, or of the next job that has one; ended
                // first (ROLLED_FORWARD) when it is active, as `End` ends a live task.
                let found = (0..JOBS).find_map(|i| {
                    let key = key(usize::from((job + i) % JOBS));
                    let oldest = image.jobs.get(&key)?.updates.first()?.clone();
                    Some((key, oldest))
                });
                let Some((key, mut oldest)) = found else {
                    continue;
                };
                if !oldest.status.is_terminal() {
                    oldest.status = UpdateStatus::RolledForward;
                    emit(&mut image, update_saved(&key, oldest.clone()), &mut out);
                }
                let id = oldest.id;
                emit(&mut image, LogRecord::UpdateRemoved { key, id }, &mut out);
            }
        }
    }
    out
}

fn nth_task(image: &StateImage, pick: u16) -> Option<&TaskImage> {
    if image.tasks.is_empty() {
        return None;
    }
    image
        .tasks
        .values()
        .nth(usize::from(pick) % image.tasks.len())
}

/// Every file under `dir` (relative path and contents), sorted: for "nothing changed" checks.
pub fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.push((rel(root, &path) + "/", Vec::new()));
            walk(root, &path, out);
        } else {
            out.push((rel(root, &path), std::fs::read(&path).expect("read")));
        }
    }
}

fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .expect("under root")
        .display()
        .to_string()
}
