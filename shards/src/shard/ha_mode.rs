//! A shard under etcd leadership (`--etcd-endpoints`): following (refuse clients and agents,
//! hold nothing), taking the lead (install the desired jobs, adopt the tasks agents report,
//! and the quotas of the roles it owns, then start what is missing), and persisting job and
//! quota changes through the control thread before acknowledging them.

use super::*;
use crate::ha::{DesiredJob, ShardLinks, ToControl, ToShard};

/// Where this shard stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// No etcd: this scheduler always leads and persists to its own log.
    Embedded,
    /// Leads the term `fence` (etcd's revision of its election key): desired state lives in
    /// etcd.
    Leader { fence: i64 },
    /// Led the term `fence` until leadership became unsure (etcd unreachable): keeps its state
    /// but acts on nothing; resumes if the same term comes back.
    Paused { fence: i64 },
    /// Another scheduler leads (its client address), or none is known.
    Follower { leader: Option<Arc<str>> },
}

/// A client request waiting for its desired-state write.
pub(super) struct PendingPersist {
    pub reply: Option<ReplyTo>,
    pub request_id: u64,
    /// The verified request, applied once the write succeeded.
    pub bytes: Option<Bytes>,
    /// The quota reservation the request holds (settled once it is applied or refused).
    pub settle: Option<(String, u64)>,
    /// The job whose desired state this writes (None: a quota), one write per job in flight
    /// (see `desired`).
    pub key: Option<JobKey>,
}

impl Shard {
    /// The coordinator service's channels (see `crate::coordinator`).
    pub fn set_coordinator(&mut self, links: crate::coordinator::CoordinatorLinks) {
        self.coordinator = Some(links);
    }

    pub fn set_links(&mut self, links: ShardLinks) {
        self.links = Some(links);
        self.mode = Mode::Follower { leader: None };
    }

    pub(super) fn is_ha(&self) -> bool {
        self.links.is_some()
    }

    /// Applies whatever the control thread sent (never blocks).
    pub fn poll_control(&mut self) {
        let Some(links) = &self.links else {
            return;
        };
        let mut messages = Vec::new();
        while let Ok(m) = links.from_control.try_recv() {
            messages.push(m);
        }
        for m in messages {
            match m {
                ToShard::Lead {
                    fence,
                    jobs,
                    quotas,
                    hosts,
                } => self.take_lead(fence, jobs, quotas, hosts),
                ToShard::Follow { leader } => self.follow(leader.map(Into::into)),
                ToShard::Persisted { token, result } => self.persisted(token, result),
            }
        }
    }

    fn take_lead(
        &mut self,
        fence: i64,
        jobs: Vec<DesiredJob>,
        quotas: Vec<(String, Resources)>,
        hosts: Vec<(String, borealis_store::HostImage)>,
    ) {
        match self.mode {
            Mode::Leader { fence: f } if f == fence => return,
            Mode::Paused { fence: f } if f == fence => {
                tracing::info!(
                    shard = %self.id,
                    fence,
                    "leadership confirmed again: resuming"
                );
                self.mode = Mode::Leader { fence };
                return;
            }
            _ => {}
        }
        self.reset_state();
        self.mode = Mode::Leader { fence };
        // Terms are numbered by etcd (the fence only grows): ids issued in this term can
        // collide with no earlier leader's, whatever the clocks say.
        self.ids = TaskIdGen::new(fence as u32, self.id.0 as u8);
        let count = jobs.len();
        for d in jobs {
            let job = self.install_job(d.key, d.instances, d.config);
            for i in d.retired {
                self.retire_instance(job, i);
            }
            // etcd does not know which revision each live task runs (agents re-register
            // with tasks, not revisions): an update's in-flight instances are taken again,
            // which replaces a task that may be on either revision.
            let mut updates = d.updates;
            if let Some(u) = updates.last_mut().filter(|u| u.status.is_active()) {
                u.retake_in_flight();
            }
            self.restore_revs(job, d.revs, updates);
            if let Some(cron) = d.cron {
                let key = self.jobs[job].key.clone();
                self.install_cron(key, cron);
            }
            let j = &mut self.jobs[job];
            if let Some(u) = j.updates.last().filter(|u| u.status.is_active()) {
                for p in &u.instances {
                    match p.desired(u.status) {
                        Some(rev) if rev != j.head_rev => {
                            j.instance_revs.insert(p.instance, rev);
                        }
                        _ => {
                            j.instance_revs.remove(&p.instance);
                        }
                    }
                }
            }
        }
        let quota_count = quotas.len();
        for (role, quota) in quotas {
            self.book(&role).quota = Some(quota);
        }
        self.rebuild_quota_ledger();
        self.restore_hosts(
            hosts
                .into_iter()
                .map(|(host, h)| (host, h.mode, h.drain_deadline_unix_ms))
                .collect(),
        );
        // Agents re-register with their tasks during the grace; then what is missing starts.
        self.install_deadline_us = self.now_us + self.config.reconciliation_grace_ms * 1000;
        tracing::info!(
            shard = %self.id,
            jobs = count,
            quotas = quota_count,
            "leading: desired jobs and quotas installed"
        );
    }

    fn follow(&mut self, leader: Option<Arc<str>>) {
        if let (None, Mode::Leader { fence }) = (&leader, &self.mode) {
            // Unsure, not deposed: stop acting, keep the state for the same term.
            tracing::warn!(shard = %self.id, "leadership unsure: pausing");
            self.mode = Mode::Paused { fence: *fence };
            return;
        }
        if leader.is_none() && matches!(self.mode, Mode::Paused { .. }) {
            return;
        }
        let new_mode = Mode::Follower {
            leader: leader.clone(),
        };
        if self.mode == new_mode {
            return;
        }
        if matches!(self.mode, Mode::Leader { .. } | Mode::Paused { .. }) {
            tracing::warn!(shard = %self.id, leader = ?leader, "no longer leading: dropping all state");
        }
        self.reset_state();
        self.mode = new_mode;
    }

    /// True when this shard may act: place, launch, accept changes.
    pub(super) fn acting(&self) -> bool {
        matches!(self.mode, Mode::Embedded | Mode::Leader { .. })
    }

    /// Forgets every job, task, agent and connection (a follower holds nothing; agents and
    /// clients reconnect to the leader).
    fn reset_state(&mut self) {
        // Agents' connections go (they reconnect and re-register); clients' stay.
        self.conns.retain(|_, c| c.agent.is_none());
        self.jobs = JobSlab::default();
        self.job_index.clear();
        self.updating.clear();
        self.update_wake.clear();
        self.update_log_jobs.clear();
        self.cron_queue.clear();
        self.cron_starting.clear();
        self.tasks.clear();
        self.tasks_by_agent.clear();
        self.pending.clear();
        self.blocked_jobs.clear();
        self.changed_free_max = None;
        self.lent_free_max = None;
        // Creates waiting for a quota verdict will not get one: tell their clients.
        let waits: Vec<quotas::QuotaWait> = self.quota_waits.drain().map(|(_, w)| w).collect();
        for wait in waits {
            // SAFETY: verified by the reader of the client's connection.
            let message = unsafe { flatbuffers::root_unchecked::<wire::Message>(&wait.bytes) };
            let refusal = self.not_leader(message.request_id());
            self.reply(wait.reply, refusal);
        }
        self.searches.clear();
        self.slot_holds.clear();
        self.role_usage.clear();
        self.dirty_roles.clear();
        self.quota_settles.clear();
        self.quota_book.clear();
        self.deferred_checks.clear();
        self.usage_reported = vec![false; self.shard_count];
        self.throttled.clear();
        self.ended.clear();
        self.index = PlacementIndex::new();
        self.agent_names.clear();
        self.agent_attr_ids.clear();
        self.home_agents.clear();
        self.borrowed.clear();
        self.borrow_outstanding = false;
        self.gathers.clear();
        self.pending_acks.clear();
        self.pending_persists.clear();
        // Changes waiting for a job's write will not be made here: tell their clients.
        let writes: Vec<desired::JobWrites> = self.job_writes.drain().map(|(_, w)| w).collect();
        for w in writes {
            for (reply, bytes, _) in w.waiting_requests() {
                // SAFETY: verified by the reader of the client's connection.
                let message = unsafe { flatbuffers::root_unchecked::<wire::Message>(&bytes) };
                let refusal = self.not_leader(message.request_id());
                self.reply(reply, refusal);
            }
        }
        self.resync_later.clear();
        // Maintenance: the new term's hosts come with the lead; requests in flight are refused.
        self.hosts.clear();
        self.host_progress.clear();
        let host_waits: Vec<(ReplyTo, u64)> = self
            .host_acks
            .drain()
            .map(|(_, w)| w.into_reply())
            .collect();
        for (reply, request_id) in host_waits {
            let refusal = self.not_leader(request_id);
            self.send(
                reply.shard,
                PeerMsg::HostModesSet {
                    conn: reply.conn,
                    request_id,
                    refusal: Some(refusal),
                },
            );
        }
        self.drain_waits.clear();
        self.coordinator_waits.clear();
        self.host_persists.clear();
        self.lent_out = 0;
        self.state_counts = [0; TaskState::COUNT];
        self.install_deadline_us = 0;
    }

    /// After the grace that follows taking the lead: every instance that no agent reported
    /// and that is not retired gets a new PENDING task.
    pub(super) fn start_missing_instances(&mut self) {
        if self.install_deadline_us == 0 || self.now_us < self.install_deadline_us {
            return;
        }
        self.install_deadline_us = 0;
        let mut started = 0;
        let mut jobs: Vec<JobIdx> = self.job_index.values().copied().collect();
        // In slot order, not the map's: new task ids must not depend on hashing.
        jobs.sort_unstable();
        for job in jobs {
            for instance in 0..self.jobs[job].current.len() {
                if self.jobs[job].current[instance].is_none() && !self.jobs[job].retired[instance] {
                    self.new_task(job, instance as u32, 0, 0, 0);
                    started += 1;
                }
            }
        }
        tracing::info!(
            shard = %self.id,
            started,
            "reconciliation grace over: missing instances started"
        );
    }

    /// A task an agent reported that this (new) leader does not know: adopt it when its job
    /// wants that instance and nothing else runs it.
    pub(super) fn adopt_unknown(&mut self, agent: AgentId, report: &TaskStatusReport) {
        if !matches!(self.mode, Mode::Leader { .. }) || self.tasks.contains_key(&report.task_id) {
            return;
        }
        if !matches!(
            report.state,
            TaskState::Assigned | TaskState::Starting | TaskState::Running
        ) {
            return;
        }
        let Ok(key) = report.job_key.parse::<JobKey>() else {
            return;
        };
        let Some(&job) = self.job_index.get(&key) else {
            return;
        };
        let instance = report.instance as usize;
        let j = &self.jobs[job];
        if instance >= j.current.len() || j.current[instance].is_some() || j.retired[instance] {
            return;
        }
        let id = report.task_id;
        let now = self.now_us;
        self.tasks.insert(
            id,
            Task {
                id,
                job,
                instance: report.instance,
                rev: self.jobs[job].desired_rev(report.instance),
                state: report.state,
                agent: Some(agent),
                host: self.agent_names.get(&agent).cloned(),
                holds: true,
                failure_count: 0,
                consecutive_flaps: 0,
                entered_us: now,
                running_since_us: (report.state == TaskState::Running).then_some(now),
                exit_code: -1,
                message: String::new(),
                ports: Vec::new(),
                sandbox: report.sandbox.clone(),
                killed_by_user: false,
                awaiting_adoption: false,
                preempted_by: None,
                next_kill_retry_us: 0,
                kill_retries: 0,
                events: Vec::new(),
                // Adopted running: nothing measured yet.
                usage: None,
            },
        );
        self.jobs[job].current[instance] = Some(id);
        if let Some(ids) = self.agent_attr_ids.get(&agent) {
            self.jobs[job].spread.add_attributes(ids);
        }
        self.tasks_by_agent.entry(agent).or_default().insert(id);
        self.state_counts[report.state as usize] += 1;
        tracing::debug!(task = %id, job = %key, instance, "adopted a task its agent reported");
    }

    /// Sends a job's desired state to etcd (through the control thread); `reply` waits for it.
    pub(super) fn persist(
        &mut self,
        key: &JobKey,
        job: Option<DesiredJob>,
        pending: PendingPersist,
    ) -> Result<(), ClientError> {
        let request = |shard, token| ToControl::Persist {
            shard,
            token,
            key: key.clone(),
            job,
        };
        debug_assert!(
            !self.job_writes.contains_key(key),
            "one desired-state write per job in flight"
        );
        self.send_persist(request, pending)?;
        self.job_writes.insert(key.clone(), Default::default());
        Ok(())
    }

    /// Sends a role's quota to etcd (through the control thread); `reply` waits for it.
    pub(super) fn persist_quota(
        &mut self,
        role: &str,
        quota: Resources,
        pending: PendingPersist,
    ) -> Result<(), ClientError> {
        let request = |shard, token| ToControl::PersistQuota {
            shard,
            token,
            role: role.to_string(),
            quota,
        };
        self.send_persist(request, pending)
    }

    /// Hands a host's mode to the control thread for etcd; `ack`: the operator's change it
    /// belongs to, answered once etcd has it. Err: the control thread's queue is full.
    pub(super) fn send_host_persist(
        &mut self,
        host: &str,
        image: Option<borealis_store::HostImage>,
        ack: Option<u64>,
    ) -> Result<(), ClientError> {
        let Some(links) = &self.links else {
            return Ok(());
        };
        self.next_token += 1;
        let token = self.next_token;
        links
            .to_control
            .try_send(ToControl::PersistHostMode {
                shard: self.id.0,
                token,
                host: host.to_string(),
                image,
            })
            .map_err(|_| {
                ClientError::Overloaded("the etcd write queue is full; retry shortly".into())
            })?;
        self.host_persists.insert(token, ack);
        Ok(())
    }

    /// Hands a desired-state write (`request(shard, token)`) to the control thread.
    fn send_persist(
        &mut self,
        request: impl FnOnce(usize, u64) -> ToControl,
        pending: PendingPersist,
    ) -> Result<(), ClientError> {
        let Some(links) = &self.links else {
            return Ok(());
        };
        self.next_token += 1;
        let token = self.next_token;
        links
            .to_control
            .try_send(request(self.id.0, token))
            .map_err(|_| {
                ClientError::Overloaded(
                    "too many desired-state writes in flight; retry".to_string(),
                )
            })?;
        self.pending_persists.insert(token, pending);
        Ok(())
    }

    fn persisted(&mut self, token: u64, result: Result<(), String>) {
        if let Some(ack) = self.host_persists.remove(&token) {
            return self.host_mode_persisted(ack, result);
        }
        let Some(mut p) = self.pending_persists.remove(&token) else {
            return;
        };
        let done = p.key.take().map(|key| (key, result.is_ok()));
        self.apply_persisted(p, result);
        if let Some((key, ok)) = done {
            self.job_write_done(key, ok);
        }
    }

    /// What a done write releases: the client's request is applied (or refused).
    fn apply_persisted(&mut self, p: PendingPersist, result: Result<(), String>) {
        let Some(reply) = p.reply else {
            if let Err(e) = result {
                tracing::error!(shard = %self.id, "desired-state write failed: {e}");
            }
            return;
        };
        self.settle_quota(p.settle);
        match (result, p.bytes) {
            (Ok(()), Some(bytes)) => self.apply_client(reply, bytes),
            (Err(e), _) => {
                let bytes = self
                    .encoder
                    .error(
                        p.request_id,
                        ErrorCode::Internal,
                        &format!("not persisted: {e}"),
                    )
                    .to_vec();
                self.reply(reply, bytes);
            }
            (Ok(()), None) => {
                let bytes = self.encoder.ack(p.request_id).to_vec();
                self.reply(reply, bytes);
            }
        }
    }

    /// The desired state of a job as it stands (for a persist).
    pub(super) fn desired(&self, job: JobIdx) -> DesiredJob {
        let j = &self.jobs[job];
        DesiredJob {
            key: j.key.clone(),
            instances: j.current.len() as u32,
            config: (*j.config).clone(),
            retired: j
                .retired
                .iter()
                .enumerate()
                .filter(|(_, r)| **r)
                .map(|(i, _)| i as u32)
                .collect(),
            revs: self.job_revs(job),
            updates: j
                .updates
                .iter()
                .map(|u| {
                    let mut u = u.clone();
                    if u.status.is_terminal() {
                        u.instances.clear();
                    }
                    u
                })
                .collect(),
            cron: self.cron_image(job),
        }
    }

    /// Refusal of a follower: clients get the leader's address.
    pub(super) fn not_leader(&mut self, request_id: u64) -> Vec<u8> {
        let leader = match &self.mode {
            Mode::Follower { leader } => leader.clone(),
            _ => None,
        };
        let text = match &leader {
            Some(l) => format!("this scheduler is not the leader; the leader is {l}"),
            None => "this scheduler is not the leader and no leader is known".to_string(),
        };
        self.encoder
            .error_with_leader(request_id, ErrorCode::NotLeader, &text, leader.as_deref())
            .to_vec()
    }
}
