//! Draining, on the jobs' owners: every sweep, each of this shard's tasks on a draining host
//! leaves (DRAINING, killed, replaced elsewhere) when its job's SLA allows it (core's
//! `sla::job_sla` and `sla::may_remove`, or the job's coordinator, asked through the control
//! thread). A refused task is asked about again after a truncated binary backoff
//! (`--sla-aware-kill-retry-min-delay` doubling to `--sla-aware-kill-retry-max-delay`). A drain
//! whose timeout passed no longer waits. Tasks of one job are decided one after another on the
//! job's own shard, so each decision sees the ones before it.

use borealis_core::sla::{self, JobSla, SlaVerdict};
use borealis_net::views::HostBlockerView;

use super::maintenance::HOST_BLOCKERS_MAX;
use super::*;
use crate::coordinator::{CoordinatorAnswer, CoordinatorOutcome, CoordinatorRequest};

/// A task a drain could not move yet.
#[derive(Debug, Default)]
pub(super) struct DrainWait {
    /// Refusals so far (the backoff's exponent).
    attempts: u32,
    /// Not asked again before this (shard µs).
    next_us: u64,
    reason: String,
    /// A coordinator request in flight for it (its token).
    asking: Option<u64>,
}

impl Shard {
    /// The sweep: drains what may leave the draining hosts and reports each host's progress to
    /// its owner.
    pub(super) fn drain_hosts(&mut self) {
        let draining: BTreeMap<Arc<str>, (u64, bool)> = self
            .hosts
            .iter()
            .filter(|(_, s)| s.mode.drains())
            .map(|(h, s)| (h.clone(), (s.epoch, self.drain_forced(s))))
            .collect();
        if draining.is_empty() {
            self.drain_waits.clear();
            return;
        }
        let mut on_hosts: Vec<(Arc<str>, TaskId)> = self
            .tasks
            .values()
            .filter(|t| !t.state.is_terminal())
            .filter_map(|t| {
                let host = &t.host.as_ref()?.hostname;
                let (name, _) = draining.get_key_value(&**host)?;
                Some((name.clone(), t.id))
            })
            .collect();
        on_hosts.sort_unstable();
        let mut progress: BTreeMap<Arc<str>, (u32, Vec<HostBlockerView>)> = draining
            .keys()
            .map(|h| (h.clone(), (0, Vec::new())))
            .collect();
        let mut still_waiting: HashSet<TaskId> = HashSet::default();
        for (host, task_id) in on_hosts {
            let forced = draining[&host].1;
            let left = self.drain_task(&host, task_id, forced);
            let entry = progress.get_mut(&host).expect("every draining host");
            if let Some(blocker) = left {
                entry.0 += 1;
                if let Some(reason) = blocker {
                    still_waiting.insert(task_id);
                    if entry.1.len() < HOST_BLOCKERS_MAX {
                        let t = &self.tasks[&task_id];
                        entry.1.push(HostBlockerView {
                            task_id,
                            job_key: self.jobs[t.job].key_text.to_string(),
                            instance: t.instance,
                            reason,
                        });
                    }
                }
            }
        }
        self.drain_waits.retain(|id, _| still_waiting.contains(id));
        for (host, (active, blocked)) in progress {
            let epoch = draining[&host].0;
            let owner = self.owner_of(&host);
            self.send(
                owner,
                PeerMsg::HostProgress {
                    host,
                    epoch,
                    active,
                    blocked,
                },
            );
        }
    }

    /// Moves one task off a draining host if it may go. Returns None when it is gone (or was
    /// never active there), `Some(None)` when it is on its way out, `Some(Some(why))` when it
    /// waits for its job's SLA.
    fn drain_task(&mut self, host: &str, task_id: TaskId, forced: bool) -> Option<Option<String>> {
        let state = self.tasks.get(&task_id)?.state;
        let why = || format!("draining host {host} for maintenance");
        match state {
            TaskState::Assigned | TaskState::Starting => {
                // Not yet RUNNING: counts toward no SLA.
                self.drain_now(task_id, &why());
                Some(None)
            }
            TaskState::Partitioned => {
                // A system action does not wait for a partition to heal (the reference).
                self.transition(task_id, TaskState::Lost, "partitioned on a draining host");
                None
            }
            TaskState::Running if forced => {
                let why = format!("{} (the drain's timeout passed)", why());
                self.drain_now(task_id, &why);
                Some(None)
            }
            TaskState::Running => match self.may_drain(task_id) {
                Ok(()) => {
                    self.drain_now(task_id, &why());
                    Some(None)
                }
                Err(reason) => Some(Some(reason)),
            },
            _ if state.is_being_killed() => Some(None),
            _ => None,
        }
    }

    fn drain_now(&mut self, task_id: TaskId, why: &str) {
        self.metrics().drained_total.inc();
        self.transition(task_id, TaskState::Draining, why);
    }

    /// Whether a RUNNING task's job lets it go now; Err says why not (and when it is asked
    /// again, or that its coordinator is being asked).
    pub(super) fn may_drain(&mut self, task_id: TaskId) -> Result<(), String> {
        let now = self.now_us;
        if let Some(wait) = self.drain_waits.get(&task_id) {
            if wait.asking.is_some() || now < wait.next_us {
                return Err(wait.reason.clone());
            }
        }
        let t = &self.tasks[&task_id];
        let job = &self.jobs[t.job];
        let instances = job.current.len() as u32;
        let verdict = match sla::job_sla(&job.config, instances, &self.config.service.sla) {
            JobSla::Coordinator { url, status_key } => {
                let (url, status_key) = (url.to_string(), status_key.to_string());
                return self.ask_coordinator(task_id, url, status_key);
            }
            job_sla => {
                let running_since: Vec<Option<u64>> = job
                    .current
                    .iter()
                    .map(|id| {
                        id.and_then(|id| self.tasks.get(&id))
                            .filter(|t| t.state == TaskState::Running)
                            .and_then(|t| t.running_since_us)
                    })
                    .collect();
                sla::may_remove(&job_sla, &running_since, t.instance as usize, now)
            }
        };
        match verdict {
            SlaVerdict::Allowed => {
                self.drain_waits.remove(&task_id);
                Ok(())
            }
            SlaVerdict::Denied { reason } => Err(self.drain_refused(task_id, reason)),
        }
    }

    /// Records a refusal and when the task is asked about again; returns the reason shown.
    fn drain_refused(&mut self, task_id: TaskId, reason: String) -> String {
        let s = &self.config.service;
        let (min_us, max_us) = (
            s.sla_kill_retry_min_ms * 1000,
            s.sla_kill_retry_max_ms * 1000,
        );
        let now = self.now_us;
        let wait = self.drain_waits.entry(task_id).or_default();
        wait.next_us = now + sla::backoff_us(wait.attempts, min_us, max_us);
        wait.attempts = wait.attempts.saturating_add(1);
        wait.asking = None;
        wait.reason = reason;
        wait.reason.clone()
    }

    /// Hands the question to the coordinator service (one request in flight per task).
    fn ask_coordinator(
        &mut self,
        task_id: TaskId,
        url: String,
        status_key: String,
    ) -> Result<(), String> {
        let Some(links) = &self.coordinator else {
            return Err(
                self.drain_refused(task_id, "no coordinator service in this scheduler".into())
            );
        };
        let t = &self.tasks[&task_id];
        let job = &self.jobs[t.job];
        let task_key = format!("{}/{}/{}", self.config.cluster_name, job.key, t.instance);
        let countdown_ms = t
            .host
            .as_ref()
            .and_then(|h| self.hosts.get(&*h.hostname))
            .filter(|h| h.drain_deadline_unix_ms != 0)
            .map(|h| h.drain_deadline_unix_ms.saturating_sub(self.unix_ms));
        let body = coordinator_body(
            &task_key,
            countdown_ms,
            task_id,
            t.host.as_ref().map_or("", |h| &h.hostname),
            &job.key,
            t.instance,
            &t.ports,
            &job.config,
        );
        self.next_coordinator_token += 1;
        let token = self.next_coordinator_token;
        let request = CoordinatorRequest {
            shard: self.id.0,
            token,
            url,
            status_key,
            task_key,
            body,
        };
        if links.requests.try_send(request).is_err() {
            return Err(self.drain_refused(task_id, "the coordinator queue is full".into()));
        }
        self.coordinator_waits.insert(token, task_id);
        let wait = self.drain_waits.entry(task_id).or_default();
        wait.asking = Some(token);
        wait.reason = "asking the job's coordinator".into();
        Err(wait.reason.clone())
    }

    /// Answers from the coordinator service (each round).
    pub(super) fn poll_coordinator(&mut self) {
        let Some(links) = &self.coordinator else {
            return;
        };
        let answers: Vec<CoordinatorAnswer> = links.answers.try_iter().take(1024).collect();
        for answer in answers {
            self.coordinator_answered(answer);
        }
    }

    pub(super) fn coordinator_answered(&mut self, answer: CoordinatorAnswer) {
        let Some(task_id) = self.coordinator_waits.remove(&answer.token) else {
            return;
        };
        let asked = self
            .drain_waits
            .get(&task_id)
            .is_some_and(|w| w.asking == Some(answer.token));
        if !asked {
            return;
        }
        match answer.outcome {
            CoordinatorOutcome::Allowed => {
                self.drain_waits.remove(&task_id);
                // Still RUNNING on a host still draining? Then it goes now.
                let host = self
                    .tasks
                    .get(&task_id)
                    .filter(|t| t.state == TaskState::Running)
                    .and_then(|t| t.host.as_ref())
                    .map(|h| h.hostname.clone())
                    .filter(|h| self.hosts.get(&**h).is_some_and(|s| s.mode.drains()));
                if let Some(host) = host {
                    let why = format!("draining host {host} for maintenance (coordinator agreed)");
                    self.drain_now(task_id, &why);
                }
            }
            CoordinatorOutcome::Denied => {
                self.drain_refused(task_id, "the job's coordinator said no".into());
            }
            CoordinatorOutcome::Failed(why) => {
                self.drain_refused(
                    task_id,
                    format!("the job's coordinator did not answer: {why}"),
                );
            }
        }
    }
}

/// The coordinator's request body, as the reference describes it.
#[allow(clippy::too_many_arguments)]
fn coordinator_body(
    task_key: &str,
    countdown_ms: Option<u64>,
    task_id: TaskId,
    host: &str,
    job: &JobKey,
    instance: u32,
    ports: &[(String, u16)],
    config: &TaskConfig,
) -> String {
    let assigned_ports: serde_json::Map<String, serde_json::Value> = ports
        .iter()
        .map(|(name, port)| (name.clone(), serde_json::Value::from(*port)))
        .collect();
    serde_json::json!({
        // No timeout: the drain is never forced.
        "forceMaintenanceCountdownMs": countdown_ms.map_or(i64::MAX.to_string(), |ms| ms.to_string()),
        "task": task_key,
        "taskConfig": {
            "assignedTask": {
                "taskId": task_id.to_string(),
                "slaveHost": host,
                "task": {
                    "job": {
                        "role": job.role,
                        "environment": job.environment,
                        "name": job.name,
                    },
                    "tier": config.tier.as_str(),
                    "priority": config.priority,
                    "production": config.production,
                    "isService": config.is_service,
                },
                "assignedPorts": assigned_ports,
                "instanceId": instance,
            },
        },
    })
    .to_string()
}
