//! Client requests for the jobs this shard owns: create, kill, query, and the checks that
//! come before any change.

use super::*;

impl Shard {
    pub(super) fn handle_client(&mut self, reply: ReplyTo, bytes: Bytes) {
        // SAFETY: verified by the reader of the client's connection.
        let message = unsafe { flatbuffers::root_unchecked::<wire::Message>(&bytes) };
        let request_id = message.request_id();
        if !self.acting() {
            let refusal = self.not_leader(request_id);
            return self.reply(reply, refusal);
        }
        if let Some(s) = message.payload_as_start_update() {
            // An update that grows a production job asks its role's quota for the difference.
            match self.plan_update(s) {
                Err(e) => {
                    let bytes = self
                        .encoder
                        .error(request_id, e.code(), &e.to_string())
                        .to_vec();
                    return self.reply(reply, bytes);
                }
                Ok(plan) => {
                    if let Some(extra) = self.update_extra_demand(&plan) {
                        let role = plan.role().to_string();
                        return self.request_quota(reply, bytes, request_id, &role, extra);
                    }
                }
            }
        }
        if let Some(c) = message.payload_as_schedule_cron() {
            // A production cron job's runs are admitted against its role's quota when it is
            // scheduled (its template's demand), as a create is.
            match self.validate_cron(c) {
                Err(e) => {
                    let bytes = self
                        .encoder
                        .error(request_id, e.code(), &e.to_string())
                        .to_vec();
                    return self.reply(reply, bytes);
                }
                Ok((key, image)) => {
                    if borealis_core::quota::counts_against_quota(&image.config, &self.tiers) {
                        let demand = borealis_core::quota::job_demand(
                            &image.config.resources,
                            image.instances,
                        );
                        return self.request_quota(reply, bytes, request_id, &key.role, demand);
                    }
                }
            }
        }
        if let Some(c) = message.payload_as_create_job() {
            // Every other check first; then production work asks its role's quota owner.
            match self.validate_create(c) {
                Err(e) => {
                    let bytes = self
                        .encoder
                        .error(request_id, e.code(), &e.to_string())
                        .to_vec();
                    return self.reply(reply, bytes);
                }
                Ok((key, instances, config)) => {
                    if borealis_core::quota::counts_against_quota(&config, &self.tiers) {
                        let demand = borealis_core::quota::job_demand(&config.resources, instances);
                        return self.request_quota(reply, bytes, request_id, &key.role, demand);
                    }
                }
            }
        }
        self.admit_client(reply, bytes, None);
    }

    /// A request past its checks (and quota, holding the reservation `settle`): under etcd
    /// leadership its change is written to etcd first, else it is applied now.
    pub(super) fn admit_client(
        &mut self,
        reply: ReplyTo,
        bytes: Bytes,
        mut settle: Option<(String, u64)>,
    ) {
        // SAFETY: verified by the reader of the client's connection.
        let message = unsafe { flatbuffers::root_unchecked::<wire::Message>(&bytes) };
        let request_id = message.request_id();
        if self.is_ha() {
            // Under etcd leadership a change is acknowledged only once etcd has it.
            if let Some(q) = message.payload_as_set_quota() {
                let result = super::quotas::quota_from_wire(q).and_then(|(role, quota)| {
                    let pending = PendingPersist {
                        reply: Some(reply),
                        request_id,
                        bytes: Some(bytes.clone()),
                        settle: None,
                        key: None,
                    };
                    self.persist_quota(role, quota, pending)
                });
                self.settle_quota(settle);
                if let Err(e) = result {
                    let bytes = self
                        .encoder
                        .error(request_id, e.code(), &e.to_string())
                        .to_vec();
                    self.reply(reply, bytes);
                }
                return;
            }
            // One write per job in flight: a change of a job being written waits for it.
            let key = match message.payload_type() {
                wire::Payload::CreateJob => message.payload_as_create_job().map(|c| c.job_key()),
                wire::Payload::KillJob => message.payload_as_kill_job().map(|k| k.job_key()),
                wire::Payload::StartUpdate => {
                    message.payload_as_start_update().map(|s| s.job_key())
                }
                wire::Payload::UpdateCommand => {
                    message.payload_as_update_command().map(|c| c.job_key())
                }
                wire::Payload::ScheduleCron => {
                    message.payload_as_schedule_cron().map(|c| c.job_key())
                }
                wire::Payload::DescheduleCron => {
                    message.payload_as_deschedule_cron().map(|c| c.job_key())
                }
                _ => None,
            }
            .and_then(|text| text.parse::<JobKey>().ok());
            if let Some(key) = key {
                if self.wait_for_job_write(&key, reply, &bytes, &mut settle) {
                    return;
                }
            }
            let desired = match message.payload_type() {
                wire::Payload::CreateJob => {
                    Some(self.desired_after_create(
                        message.payload_as_create_job().expect("type checked"),
                    ))
                }
                wire::Payload::KillJob => Some(
                    self.desired_after_kill(message.payload_as_kill_job().expect("type checked")),
                ),
                wire::Payload::StartUpdate => Some(self.desired_after_start_update(
                    message.payload_as_start_update().expect("type checked"),
                )),
                wire::Payload::UpdateCommand => Some(self.desired_after_update_command(
                    message.payload_as_update_command().expect("type checked"),
                )),
                wire::Payload::ScheduleCron => Some(self.desired_after_schedule_cron(
                    message.payload_as_schedule_cron().expect("type checked"),
                )),
                wire::Payload::DescheduleCron => Some(self.desired_after_deschedule_cron(
                    message.payload_as_deschedule_cron().expect("type checked"),
                )),
                _ => None,
            };
            if let Some(desired) = desired {
                let settle_on_error = settle.clone();
                let result = desired.and_then(|(key, desired)| {
                    let pending = PendingPersist {
                        reply: Some(reply),
                        request_id,
                        bytes: Some(bytes.clone()),
                        settle,
                        key: Some(key.clone()),
                    };
                    self.persist(&key, Some(desired), pending)
                });
                if let Err(e) = result {
                    self.settle_quota(settle_on_error);
                    let bytes = self
                        .encoder
                        .error(request_id, e.code(), &e.to_string())
                        .to_vec();
                    self.reply(reply, bytes);
                }
                return;
            }
        }
        self.apply_client(reply, bytes);
        self.settle_quota(settle);
    }

    /// The desired state a CreateJob would write, after every check `create_job` makes.
    pub(super) fn desired_after_create(
        &self,
        c: wire::CreateJob<'_>,
    ) -> Result<(JobKey, crate::ha::DesiredJob), ClientError> {
        let (key, instances, config) = self.validate_create(c)?;
        Ok((
            key.clone(),
            crate::ha::DesiredJob {
                key,
                instances,
                config,
                retired: Vec::new(),
                revs: Default::default(),
                updates: Vec::new(),
                cron: None,
            },
        ))
    }

    /// The desired state a KillJob would write (its instances retired).
    pub(super) fn desired_after_kill(
        &self,
        k: wire::KillJob<'_>,
    ) -> Result<(JobKey, crate::ha::DesiredJob), ClientError> {
        let (job, instances) = self.kill_targets(k)?;
        let mut desired = self.desired(job);
        desired.retired.extend(instances);
        desired.retired.sort_unstable();
        desired.retired.dedup();
        Ok((self.jobs[job].key.clone(), desired))
    }

    /// Applies a (verified, and where needed persisted) client request and replies.
    pub(super) fn apply_client(&mut self, reply: ReplyTo, bytes: Bytes) {
        // SAFETY: verified by the reader of the client's connection.
        let message = unsafe { flatbuffers::root_unchecked::<wire::Message>(&bytes) };
        let request_id = message.request_id();
        let result = match message.payload_type() {
            wire::Payload::CreateJob => {
                self.create_job(message.payload_as_create_job().expect("type checked"))
            }
            wire::Payload::KillJob => {
                self.kill_job(message.payload_as_kill_job().expect("type checked"))
            }
            wire::Payload::RestartJob => {
                self.restart_job(message.payload_as_restart_job().expect("type checked"))
            }
            wire::Payload::StartUpdate => self.start_update(
                request_id,
                message.payload_as_start_update().expect("type checked"),
            ),
            wire::Payload::UpdateCommand => self.update_command(
                request_id,
                message.payload_as_update_command().expect("type checked"),
            ),
            wire::Payload::ScheduleCron => {
                self.schedule_cron(message.payload_as_schedule_cron().expect("type checked"))
            }
            wire::Payload::DescheduleCron => {
                self.deschedule_cron(message.payload_as_deschedule_cron().expect("type checked"))
            }
            wire::Payload::StartCron => {
                self.start_cron(message.payload_as_start_cron().expect("type checked"))
            }
            wire::Payload::QueryUpdates => self.query_updates(
                request_id,
                message.payload_as_query_updates().expect("type checked"),
            ),
            wire::Payload::SetQuota => {
                self.set_quota(message.payload_as_set_quota().expect("type checked"))
            }
            wire::Payload::GetQuota => {
                let role = message.payload_as_get_quota().expect("type checked").role();
                Ok(self.get_quota(request_id, role))
            }
            wire::Payload::QueryJob => {
                let key = message
                    .payload_as_query_job()
                    .expect("type checked")
                    .job_key();
                match key.parse::<JobKey>() {
                    Ok(key) => match self.job_index.get(&key) {
                        Some(&job) => {
                            // As many messages as its size takes (issue 12), in one go.
                            let parts = self.job_status_parts(request_id, job);
                            return self.reply_parts(reply, parts);
                        }
                        None => Err(ClientError::UnknownJob(key)),
                    },
                    Err(e) => Err(ClientError::InvalidRequest(e.to_string())),
                }
            }
            _ => Err(ClientError::InvalidRequest("not a job request".into())),
        };
        let bytes = match result {
            Ok(bytes) if bytes.is_empty() => self.encoder.ack(request_id).to_vec(),
            Ok(bytes) => bytes,
            Err(e) => self
                .encoder
                .error(request_id, e.code(), &e.to_string())
                .to_vec(),
        };
        self.reply(reply, bytes);
    }

    pub(super) fn create_job(&mut self, c: wire::CreateJob<'_>) -> Result<Vec<u8>, ClientError> {
        let (key, instances, config) = self.validate_create(c)?;
        if let Some(&existing) = self.job_index.get(&key) {
            // Every instance of the old job has ended (checked): the new job replaces it.
            self.drop_job(existing);
        }
        let job = self.install_job(key.clone(), instances, config);
        self.log(&LogRecord::JobCreated {
            key: key.clone(),
            instances,
            config: (*self.jobs[job].config).clone(),
        });
        for instance in 0..instances {
            self.new_task(job, instance, 0, 0, 0);
        }
        tracing::info!(shard = %self.id, job = %key, instances, "job created");
        Ok(Vec::new())
    }

    /// Every check of a CreateJob, changing nothing.
    pub(super) fn validate_create(
        &self,
        c: wire::CreateJob<'_>,
    ) -> Result<(JobKey, u32, TaskConfig), ClientError> {
        let instances = c.instances();
        let key = self.check_new_job(c.job_key(), instances, "job")?;
        let config = self.config_from_wire(&key, c.config(), "job")?;
        if let Some(&existing) = self.job_index.get(&key) {
            if self.jobs[existing].cron.is_some() {
                return Err(ClientError::InvalidRequest(format!(
                    "job {key} is a cron job: change it with `borealis cron schedule`, or \
                     `borealis cron deschedule` it first"
                )));
            }
            if let Some(u) = self.jobs[existing].active_update() {
                return Err(ClientError::UpdateActive {
                    key,
                    id: u.id,
                    status: u.status,
                });
            }
            let live = self.jobs[existing]
                .current
                .iter()
                .flatten()
                .any(|t| self.tasks.get(t).is_some_and(|t| !t.state.is_terminal()));
            if live {
                return Err(ClientError::JobExists(key));
            }
        }
        Ok((key, instances, config))
    }

    /// The key and instance count of a job to create (or a cron job to schedule), checked:
    /// a valid key in an allowed environment, 1..=`--max-tasks-per-job` instances. Errors
    /// name `what` and the key.
    pub(super) fn check_new_job(
        &self,
        job_key: &str,
        instances: u32,
        what: &str,
    ) -> Result<JobKey, ClientError> {
        let key: JobKey = job_key
            .parse()
            .map_err(|e: borealis_core::JobKeyError| ClientError::InvalidRequest(e.to_string()))?;
        if instances == 0 {
            return Err(ClientError::InvalidRequest(format!(
                "{what} {key}: instances must be >= 1"
            )));
        }
        if instances > self.config.max_tasks_per_job {
            return Err(ClientError::TooManyTasks {
                key,
                instances,
                max: self.config.max_tasks_per_job,
            });
        }
        if !self.allowed_environments.is_match(&key.environment) {
            return Err(ClientError::InvalidRequest(format!(
                "{what} {key}: environment {:?} is not allowed (--allowed-job-environments {})",
                key.environment,
                self.allowed_environments.as_str()
            )));
        }
        let share = crate::limits::Limits::per_shard(self.config.limits.max_jobs, self.shard_count);
        if !self.job_index.contains_key(&key) && self.jobs.len() >= share {
            return Err(ClientError::JobLimit {
                key,
                max: self.config.limits.max_jobs,
                share,
            });
        }
        Ok(key)
    }

    /// A task config off the wire for `key`, its tier resolved (a job file that names none
    /// gets the tier config's, Aurora's `default`) and checked; errors name `what` and the key
    /// (`job www/prod/web: ...`, `update of ...`, `cron job ...`).
    pub(super) fn config_from_wire(
        &self,
        key: &JobKey,
        wire_config: wire::TaskConfig<'_>,
        what: &str,
    ) -> Result<TaskConfig, ClientError> {
        let refuse = |e: String| ClientError::InvalidRequest(format!("{what} {key}: {e}"));
        let mut config =
            task_config_from_wire(key.clone(), wire_config).map_err(|e| refuse(e.to_string()))?;
        let explicit = (!borealis_net::codec::tier_unset(wire_config)).then_some(config.tier);
        config.tier = self.tiers.resolve(explicit, config.production);
        self.tiers
            .validate(config.tier, config.production)
            .map_err(|e| refuse(e.to_string()))?;
        borealis_core::validate::validate_task_config(&config)
            .map_err(|e| refuse(e.to_string()))?;
        Ok(config)
    }

    /// Adds a job with no tasks yet.
    pub(super) fn install_job(
        &mut self,
        key: JobKey,
        instances: u32,
        config: TaskConfig,
    ) -> JobIdx {
        let compiled = self.index.compile(&config);
        let job = self.jobs.insert(Job::new(
            key.clone(),
            config,
            compiled,
            vec![None; instances as usize],
            VecDeque::new(),
            &self.tiers,
        ));
        self.job_index.insert(key, job);
        self.count_job_quota_use(job);
        job
    }

    /// Forgets a job whose tasks have all ended.
    pub(super) fn drop_job(&mut self, job: JobIdx) {
        let removed_key = self.jobs[job].key.clone();
        self.updating.remove(&job);
        self.update_wake.remove(&job);
        self.update_log_jobs.remove(&job);
        self.cron_starting.remove(&job);
        if let Some(next) = self.jobs[job]
            .cron
            .as_ref()
            .and_then(|c| c.next_run_unix_ms)
        {
            self.cron_queue.remove(&(next, job));
        }
        let ids: Vec<TaskId> = self.jobs[job]
            .current
            .iter()
            .flatten()
            .chain(self.jobs[job].history.iter())
            .copied()
            .collect();
        for id in ids {
            if let Some(t) = self.tasks.remove(&id) {
                debug_assert!(t.state.is_terminal());
                self.state_counts[t.state as usize] -= 1;
            }
        }
        self.forget_job_quota_use(job);
        self.job_index.remove(&removed_key);
        let due = self.jobs[job].blocked_due_us;
        self.blocked_jobs.remove(&(due, job));
        self.jobs.remove(job);
        self.log(&LogRecord::JobRemoved { key: removed_key });
    }

    /// Creates an instance's next task: INIT, then PENDING, or THROTTLED for `throttle_ms`
    /// (a flapping task's replacement), through the table like every other change.
    pub(super) fn new_task(
        &mut self,
        job: JobIdx,
        instance: u32,
        failure_count: u32,
        flaps: u32,
        throttle_ms: u64,
    ) -> TaskId {
        let id = self.ids.next_id();
        let now = self.now_us;
        let rev = self.jobs[job].desired_rev(instance);
        self.tasks.insert(
            id,
            Task {
                id,
                job,
                instance,
                rev,
                state: TaskState::Init,
                agent: None,
                host: None,
                holds: false,
                failure_count,
                consecutive_flaps: flaps,
                entered_us: now,
                running_since_us: None,
                exit_code: -1,
                message: String::new(),
                ports: Vec::new(),
                sandbox: String::new(),
                killed_by_user: false,
                awaiting_adoption: false,
                preempted_by: None,
                next_kill_retry_us: 0,
                kill_retries: 0,
                events: Vec::new(),
                usage: None,
            },
        );
        self.jobs[job].current[instance as usize] = Some(id);
        self.count_state(None, TaskState::Init);
        if throttle_ms == 0 {
            self.set_state(id, TaskState::Pending);
            self.pending.push_back(id);
        } else {
            // Aurora: the replacement of a flapping task waits THROTTLED (INIT -> THROTTLED).
            self.set_state(id, TaskState::Throttled);
            let t = self.tasks.get_mut(&id).expect("new");
            t.message = format!("throttled for {throttle_ms} ms (flapping)");
            self.throttled
                .insert((self.now_us + throttle_ms * 1000, id), ());
        }
        self.log_task(id);
        id
    }

    pub(super) fn kill_job(&mut self, k: wire::KillJob<'_>) -> Result<Vec<u8>, ClientError> {
        let (job, instances) = self.kill_targets(k)?;
        for instance in instances {
            self.retire_instance(job, instance);
            let Some(task_id) = self.jobs[job].current[instance as usize] else {
                continue;
            };
            if !self.may_transition(task_id, TaskState::Killing) {
                continue; // already being killed
            }
            if let Some(t) = self.tasks.get_mut(&task_id) {
                t.killed_by_user = true;
            }
            self.transition(task_id, TaskState::Killing, "killed by user");
        }
        Ok(Vec::new())
    }

    /// Aurora's `restartShards`: each named instance's task on an agent goes RESTARTING, is
    /// killed, and is replaced (an instance not running now is left as it is). Batching and
    /// watching are the client's, as Aurora's `job restart` is.
    pub(super) fn restart_job(&mut self, r: wire::RestartJob<'_>) -> Result<Vec<u8>, ClientError> {
        let (job, instances) = self.instance_targets(r.job_key(), r.instances())?;
        for instance in instances {
            let Some(task_id) = self.jobs[job].current[instance as usize] else {
                continue;
            };
            let state = self.tasks[&task_id].state;
            if matches!(
                state,
                TaskState::Assigned | TaskState::Starting | TaskState::Running
            ) {
                self.transition(task_id, TaskState::Restarting, "restarted by user");
            }
        }
        Ok(Vec::new())
    }

    /// The job and instances a KillJob names, after every check.
    pub(super) fn kill_targets(
        &self,
        k: wire::KillJob<'_>,
    ) -> Result<(JobIdx, Vec<u32>), ClientError> {
        self.instance_targets(k.job_key(), k.instances())
    }

    /// A job and instances a request names (none: all of them), after every check.
    fn instance_targets(
        &self,
        key: &str,
        instances: Option<flatbuffers::Vector<'_, u32>>,
    ) -> Result<(JobIdx, Vec<u32>), ClientError> {
        let key: JobKey = key
            .parse()
            .map_err(|e: borealis_core::JobKeyError| ClientError::InvalidRequest(e.to_string()))?;
        let Some(&job) = self.job_index.get(&key) else {
            return Err(ClientError::UnknownJob(key));
        };
        if let Some(u) = self.jobs[job].active_update() {
            return Err(ClientError::UpdateActive {
                key,
                id: u.id,
                status: u.status,
            });
        }
        let count = self.jobs[job].current.len() as u32;
        let instances: Vec<u32> = match instances {
            Some(list) if !list.is_empty() => list.iter().collect(),
            _ => (0..count).collect(),
        };
        if let Some(bad) = instances.iter().find(|&&i| i >= count) {
            return Err(ClientError::InvalidRequest(format!(
                "job {key} has no instance {bad} (instances 0..{count})"
            )));
        }
        Ok((job, instances))
    }

    /// This shard's part of a `ListJobs` page: its first `limit` jobs whose keys sort after
    /// `after` (exclusive) that `scope` shows, in key order, walked from the key index (a
    /// range, never a sort), and whether it has more. A reader of named roles only walks
    /// those roles' ranges (the keys of a role share its `role/` prefix, so each is one range
    /// of the index); one that may read every role walks every key.
    pub(super) fn job_summaries(
        &self,
        after: Option<&str>,
        limit: usize,
        scope: &ReadScope,
    ) -> (Vec<JobSummaryView>, bool) {
        use std::ops::Bound;
        let reads_every_role = |p: &borealis_core::auth::Principal| {
            // A grant of every role grants all of them alike: ask it of any one.
            p.permissions.iter().any(|perm| {
                perm.role.is_none()
                    && borealis_core::auth::Principal {
                        name: String::new(),
                        permissions: vec![perm.clone()],
                    }
                    .may_read("any")
            })
        };
        // The key prefixes to walk, in key order (None: every key). A role with a '/' names
        // no job's role; without it no prefix is a prefix of another, so the ranges are
        // disjoint and in the prefixes' order.
        let prefixes: Vec<Option<String>> = match scope {
            ReadScope::Principal(p) if !reads_every_role(p) => {
                let mut roles: Vec<String> = p
                    .permissions
                    .iter()
                    .filter_map(|perm| perm.role.as_deref())
                    .filter(|role| !role.contains('/'))
                    .map(|role| format!("{role}/"))
                    .collect();
                roles.sort_unstable();
                roles.dedup();
                roles.into_iter().map(Some).collect()
            }
            _ => vec![None],
        };
        let mut page = Vec::new();
        for prefix in &prefixes {
            let start = match (after, prefix.as_deref()) {
                (Some(a), Some(p)) if a >= p => Bound::Excluded(a),
                (_, Some(p)) => Bound::Included(p),
                (Some(a), None) => Bound::Excluded(a),
                (None, None) => Bound::Unbounded,
            };
            for (key, &job) in self.jobs.by_key.range::<str, _>((start, Bound::Unbounded)) {
                if prefix.as_deref().is_some_and(|p| !key.starts_with(p)) {
                    break;
                }
                if !scope.allows(super::access::role_of(key)) {
                    continue;
                }
                if page.len() == limit {
                    return (page, true);
                }
                page.push(self.job_summary(&self.jobs[job]));
            }
        }
        (page, false)
    }

    pub(super) fn job_summary(&self, job: &Job) -> JobSummaryView {
        let mut state_counts = [0u32; TaskState::COUNT];
        for id in job.current.iter().flatten().chain(job.history.iter()) {
            if let Some(t) = self.tasks.get(id) {
                state_counts[t.state as usize] += 1;
            }
        }
        JobSummaryView {
            job_key: job.key_text.to_string(),
            instances: job.current.len() as u32,
            is_service: job.config.is_service,
            state_counts,
            cron: self.cron_summary(job),
            update: job.active_update().map(|u| (u.id, u.status)),
        }
    }

    /// Why a task waits: for a PENDING task, its job's last failed attempt (or that none was
    /// made yet); for a THROTTLED one, its delay.
    fn pending_reason_of(&self, job: &Job, t: &Task) -> String {
        match t.state {
            TaskState::Pending => match &job.pending_reason {
                Some(reason) if job.blocked_due_us != 0 => reason.clone(),
                _ => "waiting for the next scheduling round".into(),
            },
            TaskState::Throttled => t.message.clone(),
            _ => String::new(),
        }
    }

    /// A job's status (the answer to `QueryJob`) as the messages that carry it: its summary
    /// and every task by (instance, task id), in parts of at most about
    /// `JOB_STATUS_PART_BYTES` (issue 12). Each task's view is built as it is encoded.
    pub(super) fn job_status_parts(&mut self, request_id: u64, job: JobIdx) -> Vec<Vec<u8>> {
        let j = &self.jobs[job];
        let mut tasks: Vec<&Task> = j
            .history
            .iter()
            .chain(j.current.iter().flatten())
            .filter_map(|id| self.tasks.get(id))
            .collect();
        tasks.sort_by_key(|t| (t.instance, t.id));
        let summary = self.job_summary(j);
        // The encoder is this shard's; the views borrow the rest of it meanwhile.
        let mut encoder = std::mem::take(&mut self.encoder);
        let parts = encoder.job_status_parts(
            request_id,
            &summary,
            tasks.into_iter().map(|t| self.task_info(j, t)),
            borealis_net::codec::JOB_STATUS_PART_BYTES,
        );
        self.encoder = encoder;
        parts
    }

    /// One task as a job's status shows it.
    pub(super) fn task_info(&self, j: &Job, t: &Task) -> TaskInfoView {
        let (agent_id, hostname) = t
            .host
            .as_ref()
            .map(|h| (h.name.to_string(), h.hostname.to_string()))
            .unwrap_or_default();
        TaskInfoView {
            task_id: t.id.0,
            instance: t.instance,
            state: Some(t.state),
            agent_id,
            hostname,
            failure_count: t.failure_count,
            exit_code: t.exit_code,
            message: t.message.clone(),
            ports: t.ports.clone(),
            sandbox: t.sandbox.clone(),
            usage: t.usage,
            pending_reason: self.pending_reason_of(j, t),
            preempted_by: t.preempted_by.map(|p| p.0),
            events: t
                .events
                .iter()
                .map(|e| TaskEventView {
                    unix_ms: e.unix_ms,
                    state: Some(e.state),
                    message: e.message.to_string(),
                })
                .collect(),
        }
    }

    /// The job status of just one task (the answer to `QueryTask`), if this shard owns it.
    pub(super) fn task_status(&self, id: TaskId) -> Option<JobStatusView> {
        let t = self.tasks.get(&id)?;
        let j = &self.jobs[t.job];
        Some(JobStatusView {
            job: self.job_summary(j),
            tasks: vec![self.task_info(j, t)],
        })
    }
}
