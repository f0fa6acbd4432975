//! The durable state image of a shard and the log records that change it. Pure: no IO.
//!
//! The image is what a snapshot holds and what recovery rebuilds; the records are what the log
//! holds between snapshots. [`StateImage::apply`] is the only way a record changes an image, so
//! the in-memory model used by the tests and the replay done at recovery cannot drift apart.
//!
//! Rules (checked by `apply`, stated by [`StateImage::check_invariants`]):
//! - every task belongs to an existing job and has `instance < job.instances`;
//! - `job.current[i]`, when set, is a task of that job with instance `i`;
//! - `job.history` holds terminal tasks of that job, each once, never one that is also current;
//! - a non-terminal task is its instance's current task;
//! - no host entry is in mode NONE (that mode is the absence of an entry);
//! - a job's revisions ([`JobRevs`]): `others` never holds `head` (`config` is `head`'s
//!   config); every instance in `instance_revs` is `< instances` and its revision is `head` or
//!   a key of `others`; every live (non-terminal) task of the job runs `head` or a key of
//!   `others`;
//! - a job's updates: each names the job (`update.job == key.to_string()`), their ids are
//!   strictly increasing (oldest first), and at most one is active (not terminal): the last.
//!
//! A terminal task may be current (upserted terminal, `TaskEnded` not logged yet), in history,
//! or in neither (created terminal and not ended yet). A terminal task's `rev` is not checked:
//! a revision no instance or live task uses any more leaves `others`, and the ended tasks that
//! ran it keep its number.
//!
//! The image holds only the durable part of a [`JobUpdate`]: `UpdateSaved` stores the update
//! with its `#[serde(skip)]` fields (`last_pulse_us`, `watching`) cleared, as a decode makes
//! them, so an image built by `apply` equals the one recovery reads back.
//!
//! Quotas (`StateImage::quotas`, set by [`LogRecord::QuotaSet`]) are independent of jobs: a
//! role's quota lives on shard `route_hash_str(role) % shards` (see [`shard_of_role`]).
//! Host maintenance modes (`StateImage::hosts`, set by [`LogRecord::HostModeSet`]) are too: a
//! host's entry lives on shard `route_hash_str(host) % shards` (see [`shard_of_host`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use borealis_core::update::{JobUpdate, Rev};
use borealis_core::{
    route_hash_str, HostMode, JobKey, Resources, TaskConfig, TaskId, TaskState, TaskUsage,
};
use serde::{Deserialize, Serialize};

/// Most instances a job may have in the image. Bounds the `current` vector a single record can
/// make us allocate, so a corrupt-but-checksummed or hostile record cannot exhaust memory.
pub const INSTANCES_MAX: u32 = 1 << 20;

/// Every durable field of one task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskImage {
    pub id: TaskId,
    pub job: JobKey,
    pub instance: u32,
    pub state: TaskState,
    pub agent_name: Option<String>,
    pub hostname: Option<String>,
    pub failure_count: u32,
    pub consecutive_flaps: u32,
    pub exit_code: i32,
    pub message: String,
    pub ports: Vec<(String, u16)>,
    pub sandbox: String,
    pub killed_by_user: bool,
    /// The task that preempted this one (Aurora: a PREEMPTING task's preemptor).
    pub preempted_by: Option<TaskId>,
    /// The configuration revision the task runs (see [`JobRevs`]); 0 for tasks of format 3
    /// and before.
    pub rev: Rev,
    /// What the task used, as its agent reported with its terminal status (format 5); `None`
    /// until then, for tasks whose agent reports none, and for tasks of format 4 and before.
    /// New fields go at the end: the encoding is positional (see `crate::legacy` for older
    /// records).
    pub usage: Option<TaskUsage>,
}

/// A [`TaskImage`] of borrowed fields. It serializes exactly like a `TaskImage` (postcard
/// encodes fields in order, and `&str`/`&[T]` like `String`/`Vec<T>`), so the log reads it back
/// as one.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct TaskImageRef<'a> {
    pub id: TaskId,
    pub job: &'a JobKey,
    pub instance: u32,
    pub state: TaskState,
    pub agent_name: Option<&'a str>,
    pub hostname: Option<&'a str>,
    pub failure_count: u32,
    pub consecutive_flaps: u32,
    pub exit_code: i32,
    pub message: &'a str,
    pub ports: &'a [(String, u16)],
    pub sandbox: &'a str,
    pub killed_by_user: bool,
    pub preempted_by: Option<TaskId>,
    pub rev: Rev,
    pub usage: Option<TaskUsage>,
}

/// `LogRecord::TaskUpserted` of a borrowed image (see [`TaskImageRef`]).
pub struct TaskUpsertRef<'a, 'b>(pub &'b TaskImageRef<'a>);

/// The variant index of `TaskUpserted` in [`LogRecord`]: the encodings must agree.
const TASK_UPSERTED_VARIANT: u32 = 2;

impl Serialize for TaskUpsertRef<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_variant(
            "LogRecord",
            TASK_UPSERTED_VARIANT,
            "TaskUpserted",
            self.0,
        )
    }
}

impl fmt::Display for TaskUpsertRef<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TaskUpserted(task {} of {} instance {} in {})",
            self.0.id,
            self.0.job,
            self.0.instance,
            self.0.state.as_str()
        )
    }
}

/// A job: its configuration (revisions), which of its tasks are current and which have ended,
/// and its rolling updates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobImage {
    pub key: JobKey,
    /// The configuration of revision `revs.head`.
    pub config: TaskConfig,
    pub instances: u32,
    /// The current task of each instance (`instances` entries).
    pub current: Vec<Option<TaskId>>,
    /// Ended tasks, oldest first.
    pub history: Vec<TaskId>,
    /// The job's configuration revisions and each instance's desired one. Appended after
    /// `history` (format 4): the snapshot encoding is positional.
    pub revs: JobRevs,
    /// The job's updates, oldest first, ids strictly increasing; at most one is active (not
    /// terminal), and it is the last. Only their durable fields (see the module doc).
    pub updates: Vec<JobUpdate>,
    /// A cron job's schedule and template (format 4). A cron job's instances are retired
    /// between runs.
    pub cron: Option<CronImage>,
}

/// A cron job's schedule and the template each run starts (instances of `config`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronImage {
    pub instances: u32,
    pub config: TaskConfig,
    pub spec: borealis_core::cron::CronSpec,
}

/// A job's configuration revisions: `JobImage::config` is revision `head`; `others` are
/// revisions some instance or live task still uses; `instance_revs` are the instances whose
/// desired revision is not `head` (sparse).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRevs {
    pub head: Rev,
    /// Never holds `head` (its config is `JobImage::config`).
    pub others: BTreeMap<Rev, TaskConfig>,
    pub instance_revs: BTreeMap<u32, Rev>,
}

impl JobRevs {
    /// `rev` is `head` or one of `others`: its configuration is known.
    pub fn knows(&self, rev: Rev) -> bool {
        rev == self.head || self.others.contains_key(&rev)
    }

    /// Instance `instance`'s desired revision: its `instance_revs` entry, else `head`.
    pub fn desired(&self, instance: u32) -> Rev {
        self.instance_revs
            .get(&instance)
            .copied()
            .unwrap_or(self.head)
    }

    /// What is wrong with these revisions for a job of `instances` instances, if anything.
    fn problem(&self, instances: u32) -> Option<String> {
        if self.others.contains_key(&self.head) {
            return Some(format!(
                "revision {} is the head and also among the other revisions",
                self.head
            ));
        }
        for (&instance, &rev) in &self.instance_revs {
            if instance >= instances {
                return Some(format!(
                    "instance {instance} has a desired revision but the job has {instances} \
                     instances"
                ));
            }
            if !self.knows(rev) {
                return Some(format!(
                    "instance {instance} wants revision {rev}, which is neither the head ({}) \
                     nor another known revision",
                    self.head
                ));
            }
        }
        None
    }
}

/// A shard's whole durable state. Ordered maps so that encoding, comparison and iteration are
/// deterministic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateImage {
    pub jobs: BTreeMap<JobKey, JobImage>,
    pub tasks: BTreeMap<TaskId, TaskImage>,
    /// Each role's quota (Aurora's `ResourceAggregate` per role), as last set. A role absent
    /// here has no quota. Appended after the tasks: the snapshot encoding is positional.
    pub quotas: BTreeMap<String, Resources>,
    /// Each host in maintenance (any mode but [`HostMode::None`]), by host name. A host absent
    /// here is in service. Appended last: the snapshot encoding is positional.
    pub hosts: BTreeMap<String, HostImage>,
}

/// A host's durable maintenance state (Aurora's `HostStatus`, plus when a drain gives up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostImage {
    /// Never [`HostMode::None`] inside a [`StateImage`]: `HostModeSet` to `None` removes the
    /// entry.
    pub mode: HostMode,
    /// Unix ms at which a drain stops waiting for SLAs and moves the host's tasks off anyway;
    /// 0: no drain timeout.
    pub drain_deadline_unix_ms: u64,
}

/// One change to a [`StateImage`], as written to the log.
///
/// The variant order is part of the on-disk format (postcard encodes the variant index):
/// append new variants at the end, never reorder.
// `JobCreated` (its `TaskConfig`) is twice the size of the next variant. Left unboxed on
// purpose: records are built on the stack and dropped once encoded, the shards log tasks
// through the borrowed `TaskUpsertRef`, and only replay holds records a while (one round's).
// Boxing would not change the encoding (postcard writes a `Box<T>` as the `T`).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogRecord {
    /// Creates a job at revision 0 (`JobRevs::default()`) with no updates; replaces an
    /// existing job of that key, whose tasks, revisions and updates are dropped.
    JobCreated {
        key: JobKey,
        instances: u32,
        config: TaskConfig,
    },
    /// The job, its revisions, its updates and all its tasks are forgotten.
    JobRemoved { key: JobKey },
    /// A new task, or every field of a changed one. When the task is not terminal it becomes
    /// its instance's current task, and its `rev` must be one its job knows.
    TaskUpserted(TaskImage),
    /// Moves the (terminal) task from its instance's current slot, if it is there, to the end
    /// of its job's history.
    TaskEnded { id: TaskId },
    /// Removes the task from its job (history, or current) and from the tasks.
    TaskForgotten { id: TaskId },
    /// Ends a round: the log writes one after the records of each `Wal::commit`, and recovery
    /// applies a round's records only once it has read this marker, so a round is all or
    /// nothing. Changes nothing in the image. Only the log writes it (`Wal::append` ignores it).
    Commit,
    /// Sets (or replaces) `role`'s quota. A zero quota is a quota (Aurora: `quota_set`).
    QuotaSet { role: String, quota: Resources },
    /// Sets (or replaces) `host`'s maintenance mode; [`HostMode::None`] (back in service)
    /// removes the host's entry, whatever `drain_deadline_unix_ms` says.
    HostModeSet {
        host: String,
        mode: HostMode,
        /// See [`HostImage::drain_deadline_unix_ms`].
        drain_deadline_unix_ms: u64,
    },
    /// Sets the job's head configuration (`config`, revision `revs.head`), its revisions
    /// (replaced whole) and its instance count. The count may grow (the new instances have no
    /// current task) but not shrink. Afterwards every instance in `revs.instance_revs` is
    /// below `instances` and wants a known revision (`head` or one of `others`), and every
    /// live task of the job runs a known revision.
    JobRevised {
        key: JobKey,
        instances: u32,
        config: TaskConfig,
        revs: JobRevs,
    },
    /// Inserts or replaces (matched by `update.id`) one of the job's updates: an id above the
    /// job's last appends, an existing id replaces that update in place. A second active
    /// update, or an active one that is not the last, is refused.
    UpdateSaved { key: JobKey, update: JobUpdate },
    /// Forgets one of the job's finished updates (pruning); an active one cannot be.
    UpdateRemoved { key: JobKey, id: u64 },
    /// Sets (Some) or removes (None) the job's cron schedule and template.
    CronSet {
        key: JobKey,
        cron: Option<CronImage>,
    },
}

impl fmt::Display for LogRecord {
    /// A short description for errors: the variant and what it names, never the whole payload.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogRecord::JobCreated { key, instances, .. } => {
                write!(f, "JobCreated({key}, {instances} instances)")
            }
            LogRecord::JobRemoved { key } => write!(f, "JobRemoved({key})"),
            LogRecord::TaskUpserted(t) => write!(
                f,
                "TaskUpserted(task {} of {} instance {} in {})",
                t.id,
                t.job,
                t.instance,
                t.state.as_str()
            ),
            LogRecord::TaskEnded { id } => write!(f, "TaskEnded(task {id})"),
            LogRecord::TaskForgotten { id } => write!(f, "TaskForgotten(task {id})"),
            LogRecord::Commit => write!(f, "Commit"),
            LogRecord::QuotaSet { role, .. } => write!(f, "QuotaSet({role})"),
            LogRecord::HostModeSet { host, mode, .. } => write!(f, "HostModeSet({host}, {mode})"),
            LogRecord::JobRevised {
                key,
                instances,
                revs,
                ..
            } => write!(
                f,
                "JobRevised({key}, revision {}, {instances} instances)",
                revs.head
            ),
            LogRecord::UpdateSaved { key, update } => write!(
                f,
                "UpdateSaved(update {} of {key} in {})",
                update.id, update.status
            ),
            LogRecord::UpdateRemoved { key, id } => {
                write!(f, "UpdateRemoved(update {id} of {key})")
            }
            LogRecord::CronSet { key, cron } => match cron {
                Some(c) => write!(f, "CronSet({key}, {:?})", c.spec.schedule.as_str()),
                None => write!(f, "CronSet({key}, descheduled)"),
            },
        }
    }
}

/// A record that does not fit the image it is applied to. The image is left unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply {record}: {reason}")]
pub struct ApplyError {
    /// The record, described (see `LogRecord`'s `Display`).
    pub record: String,
    /// What was inconsistent.
    pub reason: String,
}

impl StateImage {
    /// Applies one record. Checks everything before changing anything, so on error the image
    /// is as it was; never panics, whatever the record.
    pub fn apply(&mut self, record: &LogRecord) -> Result<(), ApplyError> {
        let fail = |reason: String| ApplyError {
            record: record.to_string(),
            reason,
        };
        match record {
            LogRecord::JobCreated {
                key,
                instances,
                config,
            } => {
                if *instances > INSTANCES_MAX {
                    return Err(fail(format!(
                        "{instances} instances is over the limit of {INSTANCES_MAX}"
                    )));
                }
                if config.job != *key {
                    return Err(fail(format!(
                        "the config belongs to job {}, not {key}",
                        config.job
                    )));
                }
                if self.jobs.contains_key(key) {
                    self.drop_tasks_of(key);
                }
                self.jobs.insert(
                    key.clone(),
                    JobImage {
                        key: key.clone(),
                        config: config.clone(),
                        instances: *instances,
                        current: vec![None; *instances as usize],
                        history: Vec::new(),
                        revs: JobRevs::default(),
                        updates: Vec::new(),
                        cron: None,
                    },
                );
            }
            LogRecord::JobRemoved { key } => {
                if !self.jobs.contains_key(key) {
                    return Err(fail(format!("job {key} does not exist")));
                }
                self.drop_tasks_of(key);
                self.jobs.remove(key);
            }
            LogRecord::TaskUpserted(task) => {
                let Some(job) = self.jobs.get(&task.job) else {
                    return Err(fail(format!("job {} does not exist", task.job)));
                };
                let Some(slot) = job.current.get(task.instance as usize) else {
                    return Err(fail(format!(
                        "instance {} is out of range: job {} has {} instances",
                        task.instance, task.job, job.instances
                    )));
                };
                if let Some(old) = self.tasks.get(&task.id) {
                    if old.job != task.job || old.instance != task.instance {
                        return Err(fail(format!(
                            "task {} already exists as instance {} of {}",
                            task.id, old.instance, old.job
                        )));
                    }
                }
                if !task.state.is_terminal() {
                    if !job.revs.knows(task.rev) {
                        return Err(fail(format!(
                            "revision {} is neither the head ({}) nor another known revision \
                             of {}",
                            task.rev, job.revs.head, task.job
                        )));
                    }
                    if let Some(other) = slot.filter(|other| *other != task.id) {
                        return Err(fail(format!(
                            "instance {} already has a current task {other} (end it first)",
                            task.instance
                        )));
                    }
                    // A task in history has ended; it cannot come back to life.
                    if self.tasks.contains_key(&task.id) && job.history.contains(&task.id) {
                        return Err(fail(format!(
                            "task {} has ended and cannot become {}",
                            task.id,
                            task.state.as_str()
                        )));
                    }
                }
                let terminal = task.state.is_terminal();
                let job = self.jobs.get_mut(&task.job).expect("checked above");
                if !terminal {
                    job.current[task.instance as usize] = Some(task.id);
                }
                self.tasks.insert(task.id, task.clone());
            }
            LogRecord::TaskEnded { id } => {
                let Some(task) = self.tasks.get(id) else {
                    return Err(fail(format!("task {id} does not exist")));
                };
                if !task.state.is_terminal() {
                    return Err(fail(format!(
                        "task {id} is {}, not terminal",
                        task.state.as_str()
                    )));
                }
                let Some(job) = self.jobs.get_mut(&task.job) else {
                    return Err(fail(format!("its job {} does not exist", task.job)));
                };
                if job.history.contains(id) {
                    return Err(fail(format!("task {id} has already ended")));
                }
                if let Some(slot) = job.current.get_mut(task.instance as usize) {
                    if *slot == Some(*id) {
                        *slot = None;
                    }
                }
                job.history.push(*id);
            }
            LogRecord::TaskForgotten { id } => {
                let Some(task) = self.tasks.get(id) else {
                    return Err(fail(format!("task {id} does not exist")));
                };
                if let Some(job) = self.jobs.get_mut(&task.job) {
                    job.history.retain(|h| h != id);
                    if let Some(slot) = job.current.get_mut(task.instance as usize) {
                        if *slot == Some(*id) {
                            *slot = None;
                        }
                    }
                }
                self.tasks.remove(id);
            }
            LogRecord::Commit => {}
            // Any role applies: the scheduler validates requests, and the record's size is
            // bounded by the log's record limit.
            LogRecord::QuotaSet { role, quota } => {
                self.quotas.insert(role.clone(), *quota);
            }
            // Any host applies, as any role does for quotas: the scheduler validates names.
            LogRecord::HostModeSet {
                host,
                mode,
                drain_deadline_unix_ms,
            } => {
                if *mode == HostMode::None {
                    self.hosts.remove(host);
                } else {
                    self.hosts.insert(
                        host.clone(),
                        HostImage {
                            mode: *mode,
                            drain_deadline_unix_ms: *drain_deadline_unix_ms,
                        },
                    );
                }
            }
            LogRecord::JobRevised {
                key,
                instances,
                config,
                revs,
            } => {
                let Some(job) = self.jobs.get(key) else {
                    return Err(fail(format!("job {key} does not exist")));
                };
                if *instances > INSTANCES_MAX {
                    return Err(fail(format!(
                        "{instances} instances is over the limit of {INSTANCES_MAX}"
                    )));
                }
                if (*instances as usize) < job.current.len() {
                    return Err(fail(format!(
                        "the job has {} instances: a revision cannot shrink it to {instances}",
                        job.current.len()
                    )));
                }
                if config.job != *key {
                    return Err(fail(format!(
                        "the config belongs to job {}, not {key}",
                        config.job
                    )));
                }
                if let Some(problem) = revs.problem(*instances) {
                    return Err(fail(problem));
                }
                // Live tasks are current (see the rules above): only those slots need a look.
                for id in job.current.iter().flatten() {
                    let Some(task) = self.tasks.get(id) else {
                        continue;
                    };
                    if !task.state.is_terminal() && !revs.knows(task.rev) {
                        return Err(fail(format!(
                            "live task {id} runs revision {}, which is neither the new head \
                             ({}) nor another revision kept",
                            task.rev, revs.head
                        )));
                    }
                }
                let job = self.jobs.get_mut(key).expect("checked above");
                job.config = config.clone();
                job.instances = *instances;
                job.current.resize(*instances as usize, None);
                job.revs = revs.clone();
            }
            LogRecord::UpdateSaved { key, update } => {
                let Some(job) = self.jobs.get(key) else {
                    return Err(fail(format!("job {key} does not exist")));
                };
                if update.job != key.to_string() {
                    return Err(fail(format!(
                        "the update belongs to job {:?}, not {key}",
                        update.job
                    )));
                }
                let active = !update.status.is_terminal();
                let position = job.updates.iter().position(|u| u.id == update.id);
                let last = job.updates.len().checked_sub(1);
                match position {
                    Some(i) if active && Some(i) != last => {
                        return Err(fail(format!(
                            "update {} is not the job's last ({} is): it cannot be active",
                            update.id,
                            job.updates[job.updates.len() - 1].id
                        )));
                    }
                    Some(_) => {}
                    None => {
                        if let Some(newest) = job.updates.last() {
                            if update.id <= newest.id {
                                return Err(fail(format!(
                                    "update id {} is not above the job's last update {}",
                                    update.id, newest.id
                                )));
                            }
                            if !newest.status.is_terminal() {
                                return Err(fail(format!(
                                    "update {} of the job is still active ({})",
                                    newest.id, newest.status
                                )));
                            }
                        }
                    }
                }
                let mut durable = update.clone();
                durable.last_pulse_us = None;
                durable.watching = Vec::new();
                let job = self.jobs.get_mut(key).expect("checked above");
                match position {
                    Some(i) => job.updates[i] = durable,
                    None => job.updates.push(durable),
                }
            }
            LogRecord::UpdateRemoved { key, id } => {
                let Some(job) = self.jobs.get(key) else {
                    return Err(fail(format!("job {key} does not exist")));
                };
                let Some(i) = job.updates.iter().position(|u| u.id == *id) else {
                    return Err(fail(format!("job {key} has no update {id}")));
                };
                let status = job.updates[i].status;
                if !status.is_terminal() {
                    return Err(fail(format!(
                        "update {id} is {status}: an active update cannot be removed"
                    )));
                }
                self.jobs
                    .get_mut(key)
                    .expect("checked above")
                    .updates
                    .remove(i);
            }
            LogRecord::CronSet { key, cron } => {
                let Some(job) = self.jobs.get(key) else {
                    return Err(fail(format!("job {key} does not exist")));
                };
                if let Some(c) = cron {
                    if c.config.job != *key {
                        return Err(fail(format!(
                            "the template's config is of job {}, not {key}",
                            c.config.job
                        )));
                    }
                    if c.instances == 0 || c.instances > INSTANCES_MAX {
                        return Err(fail(format!(
                            "a template of {} instances (1 to {INSTANCES_MAX})",
                            c.instances
                        )));
                    }
                }
                let _ = job;
                self.jobs.get_mut(key).expect("checked above").cron = cron.clone();
            }
        }
        Ok(())
    }

    /// Removes every task of job `key` from `tasks` (its job entry is left to the caller).
    ///
    /// Scans all tasks rather than only the job's current and history: a task created terminal
    /// and not yet ended is in neither, and must not outlive its job. Jobs are created and
    /// removed rarely compared with task transitions, so the scan is the simpler, safe choice.
    fn drop_tasks_of(&mut self, key: &JobKey) {
        self.tasks.retain(|_, t| t.job != *key);
    }

    /// Splits the image by the scheduler's routing: job `k` goes to shard
    /// `route_hash_str(k.to_string()) % shards` (its revisions and updates are part of its
    /// `JobImage`), each task goes with its job, role `r`'s quota goes to shard
    /// `route_hash_str(r) % shards`, and host `h`'s maintenance entry to shard
    /// `route_hash_str(h) % shards`.
    ///
    /// Panics when `shards` is 0 (a caller's bug: there is nowhere to put the state).
    pub fn partition(self, shards: usize) -> Vec<StateImage> {
        assert!(shards > 0, "partition into 0 shards");
        let mut parts: Vec<StateImage> = (0..shards).map(|_| StateImage::default()).collect();
        for (key, job) in self.jobs {
            parts[shard_of(&key, shards)].jobs.insert(key, job);
        }
        for (id, task) in self.tasks {
            parts[shard_of(&task.job, shards)].tasks.insert(id, task);
        }
        for (role, quota) in self.quotas {
            parts[shard_of_role(&role, shards)]
                .quotas
                .insert(role, quota);
        }
        for (host, entry) in self.hosts {
            parts[shard_of_host(&host, shards)]
                .hosts
                .insert(host, entry);
        }
        parts
    }

    /// Unites images. Parts from one `partition` are disjoint; where two parts hold the same
    /// job or task, the later part wins (see `crate::recover_all` for the checked merge).
    pub fn merge(parts: Vec<StateImage>) -> StateImage {
        let mut merged = StateImage::default();
        for part in parts {
            merged.jobs.extend(part.jobs);
            merged.tasks.extend(part.tasks);
            merged.quotas.extend(part.quotas);
            merged.hosts.extend(part.hosts);
        }
        merged
    }

    /// Checks the rules in this module's documentation; the error lists what is wrong.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for (key, job) in &self.jobs {
            if job.key != *key {
                problems.push(format!("job under {key} has key {}", job.key));
            }
            if job.current.len() != job.instances as usize {
                problems.push(format!(
                    "job {key} has {} instances but {} current slots",
                    job.instances,
                    job.current.len()
                ));
            }
            for (instance, id) in job.current.iter().enumerate() {
                let Some(id) = id else { continue };
                match self.tasks.get(id) {
                    None => problems.push(format!("job {key} instance {instance}: no task {id}")),
                    Some(t) if t.job != *key || t.instance as usize != instance => {
                        problems.push(format!(
                            "job {key} instance {instance}: task {id} is instance {} of {}",
                            t.instance, t.job
                        ))
                    }
                    Some(_) => {}
                }
            }
            let mut seen = BTreeSet::new();
            for id in &job.history {
                if !seen.insert(*id) {
                    problems.push(format!("job {key}: task {id} is in history twice"));
                }
                match self.tasks.get(id) {
                    None => problems.push(format!("job {key} history: no task {id}")),
                    Some(t) if t.job != *key => {
                        problems.push(format!("job {key} history: task {id} is of {}", t.job))
                    }
                    Some(t) if !t.state.is_terminal() => problems.push(format!(
                        "job {key} history: task {id} is {}",
                        t.state.as_str()
                    )),
                    Some(t) if job.current.get(t.instance as usize) == Some(&Some(*id)) => {
                        problems.push(format!("job {key}: task {id} is current and in history"))
                    }
                    Some(_) => {}
                }
            }
            if let Some(problem) = job.revs.problem(job.instances) {
                problems.push(format!("job {key}: {problem}"));
            }
            let text = key.to_string();
            for (i, update) in job.updates.iter().enumerate() {
                if update.job != text {
                    problems.push(format!(
                        "job {key}: update {} belongs to job {:?}",
                        update.id, update.job
                    ));
                }
                if let Some(previous) = i.checked_sub(1).map(|p| &job.updates[p]) {
                    if previous.id >= update.id {
                        problems.push(format!(
                            "job {key}: update {} comes after update {}",
                            update.id, previous.id
                        ));
                    }
                }
                if !update.status.is_terminal() && i + 1 != job.updates.len() {
                    problems.push(format!(
                        "job {key}: update {} is {} but not the last",
                        update.id, update.status
                    ));
                }
            }
        }
        for (host, entry) in &self.hosts {
            if entry.mode == HostMode::None {
                problems.push(format!("host {host} has an entry in mode NONE"));
            }
        }
        for (id, task) in &self.tasks {
            if task.id != *id {
                problems.push(format!("task under {id} has id {}", task.id));
            }
            let Some(job) = self.jobs.get(&task.job) else {
                problems.push(format!("task {id}: its job {} does not exist", task.job));
                continue;
            };
            if task.instance >= job.instances {
                problems.push(format!(
                    "task {id}: instance {} of a job with {} instances",
                    task.instance, job.instances
                ));
            } else if !task.state.is_terminal()
                && job.current.get(task.instance as usize) != Some(&Some(*id))
            {
                problems.push(format!(
                    "task {id} is {} but not the current task of its instance",
                    task.state.as_str()
                ));
            }
            if !task.state.is_terminal() && !job.revs.knows(task.rev) {
                problems.push(format!(
                    "task {id} is {} on revision {}, which its job does not know",
                    task.state.as_str(),
                    task.rev
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// The shard that owns job `key` among `shards`: the scheduler's routing.
pub fn shard_of(key: &JobKey, shards: usize) -> usize {
    (route_hash_str(&key.to_string()) % shards as u64) as usize
}

/// The shard that owns role `role`'s quota among `shards`: the scheduler routes `SetQuota` and
/// `GetQuota` on the role text, as it routes job requests on the job key text.
pub fn shard_of_role(role: &str, shards: usize) -> usize {
    (route_hash_str(role) % shards as u64) as usize
}

/// The shard that owns host `host`'s maintenance entry among `shards`: the scheduler routes
/// maintenance requests on the host name, as it routes quotas on the role.
pub fn shard_of_host(host: &str, shards: usize) -> usize {
    (route_hash_str(host) % shards as u64) as usize
}
