//! Rolling job updates on the job's owner: starting one, operators' commands, and the drive
//! that each round takes instances to their new configuration revision and watches them (the
//! rules are core's `update`; this applies its actions to tasks).
//!
//! An instance moves when its desired revision changes: its live task on the other revision
//! is killed, and when it has ended `task_ended` starts the replacement on the desired
//! revision (fresh failure counts). An instance the update removes is retired and killed; one
//! it adds is un-retired and started. The job's revisions (`head_rev`, `others`,
//! `instance_revs`) and the update are logged at the end of each round they changed in.

use borealis_core::update::{Action, InstanceView, JobUpdate, UpdateSettings};
use borealis_net::views::UpdateInfoView;

use super::*;

/// Finished updates are looked at for pruning by age this often (Aurora's
/// `job_update_history_pruning_interval` default, 15 min).
pub(super) const UPDATE_PRUNE_INTERVAL_US: u64 = 15 * 60 * 1_000_000;
/// An updating job with nothing new is still stepped this often (watch and pulse timers).
const UPDATE_TIMER_US: u64 = 250_000;

/// A checked `StartUpdate`: everything needed to start it, computed without changing anything.
pub(super) struct UpdatePlan {
    job: JobIdx,
    key: JobKey,
    instances: u32,
    config: TaskConfig,
    /// The revision the update rolls to: an existing one when the config equals it.
    rev: Rev,
    settings: UpdateSettings,
    scope: Vec<u32>,
    message: String,
}

impl UpdatePlan {
    pub(super) fn role(&self) -> &str {
        &self.key.role
    }
}

impl Shard {
    /// Every check of a StartUpdate, changing nothing.
    pub(super) fn plan_update(&self, s: wire::StartUpdate<'_>) -> Result<UpdatePlan, ClientError> {
        let key: JobKey = s
            .job_key()
            .parse()
            .map_err(|e: borealis_core::JobKeyError| ClientError::InvalidRequest(e.to_string()))?;
        let Some(&job) = self.job_index.get(&key) else {
            return Err(ClientError::UnknownJob(key));
        };
        let j = &self.jobs[job];
        if j.cron.is_some() {
            return Err(ClientError::InvalidRequest(format!(
                "job {key} is a cron job: change it with `borealis cron schedule` (its next run \
                 uses the new config)"
            )));
        }
        if let Some(u) = j.active_update() {
            return Err(ClientError::UpdateActive {
                key,
                id: u.id,
                status: u.status,
            });
        }
        let instances = s.instances();
        if instances == 0 {
            return Err(ClientError::InvalidRequest(format!(
                "update of {key}: instances must be >= 1"
            )));
        }
        if instances > self.config.max_tasks_per_job {
            return Err(ClientError::TooManyTasks {
                key,
                instances,
                max: self.config.max_tasks_per_job,
            });
        }
        let config = self.config_from_wire(&key, s.config(), "update of")?;
        // What the job is (its tier, production, service kind) is not changed by an update:
        // its quota, preemption and lifecycle rules would change under running instances.
        let head = &j.config;
        for (field, old, new) in [
            ("tier", head.tier.as_str(), config.tier.as_str()),
            (
                "production",
                if head.production { "true" } else { "false" },
                if config.production { "true" } else { "false" },
            ),
            (
                "service",
                if head.is_service { "true" } else { "false" },
                if config.is_service { "true" } else { "false" },
            ),
        ] {
            if old != new {
                return Err(ClientError::InvalidRequest(format!(
                    "update of {key}: an update cannot change {field} ({old} -> {new}); kill \
                     the job and create it again"
                )));
            }
        }
        let settings = borealis_net::codec::update_settings_from_wire(s.settings());
        let current = j.current.len() as u32;
        let span = current.max(instances);
        let mut scope: Vec<u32> = match s.scope() {
            Some(list) if !list.is_empty() => list.iter().collect(),
            _ => (0..span).collect(),
        };
        scope.sort_unstable();
        scope.dedup();
        if let Some(bad) = scope.iter().find(|&&i| i >= span) {
            return Err(ClientError::InvalidRequest(format!(
                "update of {key}: no instance {bad} (instances 0..{span} before and after the \
                 update)"
            )));
        }
        settings
            .validate(
                scope.len() as u32,
                self.config.changes.max_update_instance_failures,
            )
            .map_err(|e| ClientError::InvalidRequest(format!("update of {key}: {e}")))?;
        let rev = if config == *j.config {
            j.head_rev
        } else if let Some((&rev, _)) = j.others.iter().find(|(_, v)| *v.config == config) {
            rev
        } else {
            j.others.keys().copied().max().unwrap_or(0).max(j.head_rev) + 1
        };
        Ok(UpdatePlan {
            job,
            key,
            instances,
            config,
            rev,
            settings,
            scope,
            message: s.message().unwrap_or("").to_string(),
        })
    }

    /// The desired state a StartUpdate would write, after every check (under etcd the
    /// update is written before it starts).
    pub(super) fn desired_after_start_update(
        &self,
        s: wire::StartUpdate<'_>,
    ) -> Result<(JobKey, crate::ha::DesiredJob), ClientError> {
        let plan = self.plan_update(s)?;
        let update = self.update_of_plan(&plan);
        let mut desired = self.desired(plan.job);
        if plan.rev != desired.revs.head {
            desired.revs.others.entry(plan.rev).or_insert(plan.config);
        }
        if plan.instances > desired.instances {
            desired.retired.extend(desired.instances..plan.instances);
            desired.instances = plan.instances;
        }
        desired.updates.push(update);
        Ok((plan.key, desired))
    }

    /// The desired state an UpdateCommand would write.
    pub(super) fn desired_after_update_command(
        &self,
        c: wire::UpdateCommand<'_>,
    ) -> Result<(JobKey, crate::ha::DesiredJob), ClientError> {
        let (job, update) = self.plan_update_command(c)?;
        let mut desired = self.desired(job);
        if let Some(last) = desired.updates.last_mut() {
            *last = update;
        }
        Ok((self.jobs[job].key.clone(), desired))
    }

    /// The update a plan starts (its id follows the job's last).
    fn update_of_plan(&self, plan: &UpdatePlan) -> JobUpdate {
        let j = &self.jobs[plan.job];
        let id = j.updates.last().map_or(1, |u| u.id + 1);
        let current = j.current.len() as u32;
        let scope = plan.scope.iter().map(|&i| {
            let exists = i < current && !j.retired[i as usize];
            (i, exists.then(|| j.desired_rev(i)))
        });
        let message = if plan.message.is_empty() {
            "started".to_string()
        } else {
            plan.message.clone()
        };
        JobUpdate::new(
            id,
            plan.key.to_string(),
            plan.settings,
            current,
            plan.instances,
            plan.rev,
            scope,
            self.unix_ms,
            message,
        )
    }

    /// What a production job's update asks of its role's quota beyond what the job holds.
    pub(super) fn update_extra_demand(&self, plan: &UpdatePlan) -> Option<Resources> {
        let j = &self.jobs[plan.job];
        if !j.counts_quota {
            return None;
        }
        let after = borealis_core::quota::job_demand(&plan.config.resources, plan.instances);
        let before = self.job_quota_use(plan.job);
        let extra = Resources {
            cpu_millis: after.cpu_millis.saturating_sub(before.cpu_millis),
            ram_mib: after.ram_mib.saturating_sub(before.ram_mib),
            disk_mib: after.disk_mib.saturating_sub(before.disk_mib),
            ports: 0,
        };
        (extra != Resources::ZERO).then_some(extra)
    }

    /// Starts a (checked) update: the new revision, the instance slots it adds, the update.
    pub(super) fn start_update(
        &mut self,
        request_id: u64,
        s: wire::StartUpdate<'_>,
    ) -> Result<Vec<u8>, ClientError> {
        let plan = self.plan_update(s)?;
        let update = self.update_of_plan(&plan);
        let job = plan.job;
        if plan.rev != self.jobs[job].head_rev && !self.jobs[job].others.contains_key(&plan.rev) {
            let compiled = self.index.compile(&plan.config);
            self.jobs[job].others.insert(
                plan.rev,
                Variant {
                    config: Arc::new(plan.config),
                    compiled,
                },
            );
            self.rebuild_spread(job);
        }
        let current = self.jobs[job].current.len() as u32;
        if plan.instances > current {
            // Slots for the instances it adds: retired until the update takes them.
            let j = &mut self.jobs[job];
            j.current.resize(plan.instances as usize, None);
            j.retired.resize(plan.instances as usize, true);
        }
        tracing::info!(
            shard = %self.id,
            job = %plan.key,
            update = update.id,
            rev = plan.rev,
            instances = plan.instances,
            "update started"
        );
        let j = &mut self.jobs[job];
        j.updates.push(update);
        j.revs_dirty = true;
        j.update_dirty = true;
        self.updating.insert(job);
        self.update_wake.insert(job);
        self.drive_update(job);
        let view = self.update_info_view(job, self.jobs[job].updates.len() - 1, false);
        Ok(self.encoder.update_info(request_id, &view).to_vec())
    }

    /// The job an update command or query names, and its active update's position.
    fn command_target(&self, job_key: &str) -> Result<(JobIdx, JobKey), ClientError> {
        let key: JobKey = job_key
            .parse()
            .map_err(|e: borealis_core::JobKeyError| ClientError::InvalidRequest(e.to_string()))?;
        let Some(&job) = self.job_index.get(&key) else {
            return Err(ClientError::UnknownJob(key));
        };
        Ok((job, key))
    }

    /// The update a command would leave (checked, changing nothing).
    pub(super) fn plan_update_command(
        &self,
        c: wire::UpdateCommand<'_>,
    ) -> Result<(JobIdx, JobUpdate), ClientError> {
        let (job, key) = self.command_target(c.job_key())?;
        let command = borealis_net::codec::update_op_from_wire(c.op())
            .map_err(|e| ClientError::InvalidRequest(e.to_string()))?;
        let Some(update) = self.jobs[job].active_update() else {
            let last = self.jobs[job]
                .updates
                .last()
                .map(|u| format!(" (its last, update {}, is {})", u.id, u.status))
                .unwrap_or_default();
            return Err(ClientError::InvalidRequest(format!(
                "job {key} has no active update to {}{last}",
                command.as_str()
            )));
        };
        let mut update = update.clone();
        update
            .command(
                command,
                self.now_us,
                self.unix_ms,
                c.message().unwrap_or("").to_string(),
            )
            .map_err(|e| ClientError::InvalidRequest(e.to_string()))?;
        Ok((job, update))
    }

    pub(super) fn update_command(
        &mut self,
        request_id: u64,
        c: wire::UpdateCommand<'_>,
    ) -> Result<Vec<u8>, ClientError> {
        let (job, update) = self.plan_update_command(c)?;
        let command = borealis_net::codec::update_op_from_wire(c.op()).expect("checked");
        tracing::info!(
            shard = %self.id,
            job = %self.jobs[job].key,
            update = update.id,
            command = command.as_str(),
            status = %update.status,
            "update command"
        );
        let j = &mut self.jobs[job];
        *j.updates.last_mut().expect("active") = update;
        j.update_dirty = true;
        self.update_wake.insert(job);
        self.drive_update(job);
        let pos = self.jobs[job].updates.len() - 1;
        let view = self.update_info_view(job, pos, false);
        Ok(self.encoder.update_info(request_id, &view).to_vec())
    }

    /// One job's updates (newest first), or one of them with `update_id`.
    pub(super) fn query_updates(
        &mut self,
        request_id: u64,
        q: wire::QueryUpdates<'_>,
    ) -> Result<Vec<u8>, ClientError> {
        let (job, key) = self.command_target(q.job_key().unwrap_or(""))?;
        let id = q.update_id();
        let positions: Vec<usize> = (0..self.jobs[job].updates.len())
            .rev()
            .filter(|&p| id == 0 || self.jobs[job].updates[p].id == id)
            .collect();
        if id != 0 && positions.is_empty() {
            return Err(ClientError::InvalidRequest(format!(
                "job {key} has no update {id}"
            )));
        }
        let views: Vec<UpdateInfoView> = positions
            .into_iter()
            .map(|p| self.update_info_view(job, p, q.details()))
            .collect();
        Ok(self.encoder.update_list(request_id, &views).to_vec())
    }

    /// Every active update of this shard's jobs (for a cluster-wide `update list`).
    pub(super) fn active_update_views(&self) -> Vec<UpdateInfoView> {
        self.updating
            .iter()
            .filter_map(|&job| {
                let j = &self.jobs[job];
                j.active_update()?;
                Some(self.update_info_view(job, j.updates.len() - 1, false))
            })
            .collect()
    }

    /// An update as the client sees it; `details` adds the configs of the revisions it names.
    pub(super) fn update_info_view(
        &self,
        job: JobIdx,
        pos: usize,
        details: bool,
    ) -> UpdateInfoView {
        let j = &self.jobs[job];
        let u = &j.updates[pos];
        let mut configs = Vec::new();
        if details {
            let mut revs: Vec<Rev> = u
                .instances
                .iter()
                .flat_map(|p| [p.from, p.to])
                .flatten()
                .collect();
            revs.sort_unstable();
            revs.dedup();
            for rev in revs {
                if rev == j.head_rev || j.others.contains_key(&rev) {
                    configs.push((rev, (**j.config_of(rev)).clone()));
                }
            }
        }
        let mut update = u.clone();
        if !details {
            update.instances.clear();
            update.events.truncate(0);
        }
        UpdateInfoView {
            job_key: j.key_text.to_string(),
            in_flight: u.in_flight() as u32,
            update,
            configs,
        }
    }

    /// Steps every updating job that needs it (a task of it changed, a command arrived, or
    /// its timers are due). Runs before placement, so replacements are placed in the round.
    pub(super) fn drive_updates(&mut self) {
        if self.updating.is_empty() {
            return;
        }
        let due = self.now_us >= self.next_update_timer_us;
        if due {
            self.next_update_timer_us = self.now_us + UPDATE_TIMER_US;
        }
        let jobs: Vec<JobIdx> = if due {
            self.updating.iter().copied().collect()
        } else {
            self.update_wake.iter().copied().collect()
        };
        self.update_wake.clear();
        for job in jobs {
            self.drive_update(job);
        }
    }

    /// One step of a job's active update, and its consequences.
    fn drive_update(&mut self, job: JobIdx) {
        if !self.acting() {
            return;
        }
        if self.jobs[job].active_update().is_none() {
            self.updating.remove(&job);
            return;
        }
        // Taken out while it steps (the closures read the shard), put back after.
        let mut update = self.jobs[job].updates.pop().expect("the active update");
        // What each instance of the scope does now.
        let views: Vec<InstanceView> = update
            .instances
            .iter()
            .map(|p| self.instance_view(job, p.instance))
            .collect();
        // The scope is in instance order: an instance's view is found by binary search.
        let order: Vec<u32> = update.instances.iter().map(|p| p.instance).collect();
        let at = |instance: u32| order.binary_search(&instance).expect("in the scope");
        // An SLA-aware update takes down at most one running instance per step, and only with
        // its job's SLA's leave (the drain machinery's check: count, percentage or
        // coordinator); the next step sees it down.
        let sla_aware = update.settings.sla_aware;
        let sla_leave = if sla_aware && update.status.is_progressing() {
            self.sla_leave(job, &update)
        } else {
            None
        };
        let mut sla_used = false;
        let mut actions = Vec::new();
        let changed = update.step(
            self.now_us,
            self.unix_ms,
            &mut |instance| views[at(instance)],
            &mut |instance| {
                if !sla_aware || views[at(instance)].running_since_us.is_none() {
                    return true; // not SLA-aware, or nothing up is taken down
                }
                if sla_leave == Some(instance) && !sla_used {
                    sla_used = true;
                    return true;
                }
                false
            },
            &mut actions,
        );
        let j = &mut self.jobs[job];
        j.updates.push(update);
        if changed {
            j.update_dirty = true;
        }
        for action in actions {
            self.apply_update_action(job, action);
        }
        let status = self.jobs[job].updates.last().expect("present").status;
        if status.is_terminal() {
            self.finish_update(job);
        }
    }

    /// The first instance (in the update's order) a step may take down under the job's SLA,
    /// if the SLA allows it now (asking the coordinator starts here and answers later).
    fn sla_leave(&mut self, job: JobIdx, update: &JobUpdate) -> Option<u32> {
        let back = update.status.is_rollback();
        let candidate = {
            let mut waiting = update.instances.iter().filter(|p| {
                p.phase == borealis_core::update::InstancePhase::Waiting && (!back || p.in_rollback)
            });
            if back {
                waiting.next_back()
            } else {
                waiting.next()
            }
        }?;
        let task = self.jobs[job]
            .current
            .get(candidate.instance as usize)
            .copied()??;
        let t = self.tasks.get(&task)?;
        if t.state != TaskState::Running {
            return Some(candidate.instance);
        }
        self.may_drain(task).ok().map(|()| candidate.instance)
    }

    /// What instance `instance` of `job` does now, for the updater.
    fn instance_view(&self, job: JobIdx, instance: u32) -> InstanceView {
        let j = &self.jobs[job];
        let live = j
            .current
            .get(instance as usize)
            .copied()
            .flatten()
            .and_then(|id| self.tasks.get(&id))
            .filter(|t| !t.state.is_terminal());
        InstanceView {
            live_rev: live.map(|t| t.rev),
            running_since_us: live
                .filter(|t| t.state == TaskState::Running)
                .and_then(|t| t.running_since_us),
        }
    }

    /// Applies one of the updater's actions: the instance's desired revision changes, and its
    /// task is replaced (or the instance removed, or added).
    fn apply_update_action(&mut self, job: JobIdx, action: Action) {
        let Action { instance, rev } = action;
        let update_id = self.jobs[job].updates.last().map_or(0, |u| u.id);
        let i = instance as usize;
        match rev {
            Some(rev) => {
                let j = &mut self.jobs[job];
                if rev == j.head_rev {
                    j.instance_revs.remove(&instance);
                } else {
                    j.instance_revs.insert(instance, rev);
                }
                j.revs_dirty = true;
                let current = j.current[i];
                let live = current
                    .and_then(|id| self.tasks.get(&id))
                    .filter(|t| !t.state.is_terminal())
                    .map(|t| (t.id, t.rev));
                match live {
                    // On it already; if it is being restarted (an earlier take of this
                    // update), its end starts the replacement on the desired revision.
                    Some((_, task_rev)) if task_rev == rev => {}
                    Some((task_id, _)) => {
                        // RESTARTING where it runs (its end is replaced, as Aurora restarts
                        // do), else KILLING (not placed yet: it ends at once); `task_ended`
                        // starts the replacement on the desired revision.
                        let why = format!("replaced by update {update_id} (revision {rev})");
                        if self.may_transition(task_id, TaskState::Restarting) {
                            self.transition(task_id, TaskState::Restarting, &why);
                        } else if self.may_transition(task_id, TaskState::Killing) {
                            self.transition(task_id, TaskState::Killing, &why);
                        }
                        // Otherwise it is being killed already; its end starts the new one.
                    }
                    None => {
                        // No live task: an instance the update adds back, or one that ended.
                        self.unretire_instance(job, instance);
                        self.new_task(job, instance, 0, 0, 0);
                    }
                }
            }
            None => {
                // Removed by the update: retired, and its task killed for good.
                let j = &mut self.jobs[job];
                j.instance_revs.remove(&instance);
                j.revs_dirty = true;
                self.retire_instance(job, instance);
                if let Some(task_id) = self.jobs[job].current[i] {
                    if self.may_transition(task_id, TaskState::Killing) {
                        if let Some(t) = self.tasks.get_mut(&task_id) {
                            t.killed_by_user = true;
                        }
                        let why = format!("removed by update {update_id}");
                        self.transition(task_id, TaskState::Killing, &why);
                    }
                }
            }
        }
    }

    /// Whether `task_id`'s change (`prev` -> `next`) is a failure of an instance its job's
    /// update is watching; counts it if so. Called for every transition of an updating job.
    pub(super) fn update_saw_transition(
        &mut self,
        task_id: TaskId,
        prev: TaskState,
        next: TaskState,
    ) {
        let Some(t) = self.tasks.get(&task_id) else {
            return;
        };
        let (job, instance, rev) = (t.job, t.instance, t.rev);
        if !self.updating.contains(&job) {
            return;
        }
        self.update_wake.insert(job);
        let is_service = self.jobs[job].config_of(rev).is_service;
        let (now, unix_ms) = (self.now_us, self.unix_ms);
        let Some(update) = self.jobs[job].active_update_mut() else {
            return;
        };
        let Some(p) = update.progress(instance) else {
            return;
        };
        if p.phase != borealis_core::update::InstancePhase::InFlight
            || p.desired(update.status) != Some(rev)
        {
            return;
        }
        let failed = match next {
            TaskState::Finished if !is_service => {
                update.task_finished(instance);
                false
            }
            // A restart's end (the updater's own replacement, or an operator's) is not the
            // configuration failing.
            _ if prev == TaskState::Restarting => false,
            _ if next.is_terminal() => true,
            // Leaving RUNNING on its own (a restart, a drain, a preemption) counts as well.
            _ => prev == TaskState::Running && !matches!(next, TaskState::Running),
        };
        if failed {
            update.task_failed(instance, now, unix_ms);
        }
        self.jobs[job].update_dirty = true;
    }

    /// An update reached a final status: the job's head follows it when every instance is on
    /// the new revision; revisions no instance or live task uses are dropped.
    fn finish_update(&mut self, job: JobIdx) {
        self.updating.remove(&job);
        self.update_log_jobs.insert(job);
        let j = &self.jobs[job];
        let u = j.updates.last().expect("the finished update");
        tracing::info!(
            shard = %self.id,
            job = %j.key,
            update = u.id,
            status = %u.status,
            "update finished"
        );
        let to = u.to_rev;
        let all_on_to = (0..j.current.len() as u32)
            .filter(|&i| !j.retired[i as usize])
            .all(|i| j.desired_rev(i) == to);
        if all_on_to && to != j.head_rev {
            self.set_head(job, to);
        }
        self.drop_unused_revs(job);
        self.prune_updates(job);
    }

    /// Makes `rev` the job's head revision (its config and policy).
    fn set_head(&mut self, job: JobIdx, rev: Rev) {
        self.forget_job_quota_use(job);
        let j = &mut self.jobs[job];
        let new = j.others.remove(&rev).expect("a kept revision");
        let old_config = std::mem::replace(&mut j.config, new.config);
        let old_compiled = std::mem::replace(&mut j.compiled, new.compiled);
        let old_rev = std::mem::replace(&mut j.head_rev, rev);
        j.others.insert(
            old_rev,
            Variant {
                config: old_config,
                compiled: old_compiled,
            },
        );
        // Instances that named the new head explicitly now follow it by default; those on
        // the old head must name it.
        let instances = j.current.len() as u32;
        for i in 0..instances {
            if j.retired[i as usize] {
                // Not running: an update that brings it back names its revision.
                j.instance_revs.remove(&i);
                continue;
            }
            match j.instance_revs.get(&i) {
                Some(&r) if r == rev => {
                    j.instance_revs.remove(&i);
                }
                None => {
                    j.instance_revs.insert(i, old_rev);
                }
                Some(_) => {}
            }
        }
        j.revs_dirty = true;
        self.count_job_quota_use(job);
    }

    /// Drops revisions no instance desires and no live task runs.
    fn drop_unused_revs(&mut self, job: JobIdx) {
        let j = &self.jobs[job];
        let mut used: std::collections::BTreeSet<Rev> = j.instance_revs.values().copied().collect();
        // The revisions the kept updates name stay, for `update info`'s config diff.
        for u in &j.updates {
            used.extend(u.instances.iter().flat_map(|p| [p.from, p.to]).flatten());
            used.insert(u.to_rev);
        }
        for id in j.current.iter().flatten() {
            if let Some(t) = self.tasks.get(id) {
                if !t.state.is_terminal() {
                    used.insert(t.rev);
                }
            }
        }
        // A task being killed may no longer be current (it ended here, its agent still runs
        // it): its revision stays while any task of the job holds resources.
        let unused: Vec<Rev> = j
            .others
            .keys()
            .copied()
            .filter(|r| !used.contains(r))
            .filter(|r| {
                !j.history.iter().any(|id| {
                    self.tasks
                        .get(id)
                        .is_some_and(|t| t.rev == *r && (t.holds || !t.state.is_terminal()))
                })
            })
            .collect();
        let j = &mut self.jobs[job];
        for rev in unused {
            // Terminal tasks of a dropped revision are shown with the head's config.
            j.others.remove(&rev);
            j.revs_dirty = true;
        }
        if j.revs_dirty {
            let head = j.head_rev;
            let ids: Vec<TaskId> = j.history.iter().copied().collect();
            let others: std::collections::BTreeSet<Rev> = j.others.keys().copied().collect();
            for id in ids {
                if let Some(t) = self.tasks.get_mut(&id) {
                    if t.rev != head && !others.contains(&t.rev) {
                        t.rev = head;
                        self.log_task(id);
                    }
                }
            }
        }
        self.rebuild_spread(job);
    }

    /// The sweep: every `UPDATE_PRUNE_INTERVAL_US`, finished updates past their age go.
    pub(super) fn prune_updates_by_age(&mut self) {
        if self.now_us < self.next_update_prune_us {
            return;
        }
        self.next_update_prune_us = self.now_us + UPDATE_PRUNE_INTERVAL_US;
        let jobs: Vec<JobIdx> = self
            .job_index
            .values()
            .copied()
            .filter(|&j| self.jobs[j].updates.iter().any(|u| u.status.is_terminal()))
            .collect();
        for job in jobs {
            self.prune_updates(job);
        }
    }

    /// Finished updates beyond `--job-update-history-per-job-threshold`, or older than
    /// `--job-update-history-pruning-threshold`, are forgotten.
    pub(super) fn prune_updates(&mut self, job: JobIdx) {
        let per_job = self.config.changes.update_history_per_job;
        let threshold_ms = self.config.changes.update_history_prune_threshold_ms;
        let unix_ms = self.unix_ms;
        loop {
            let j = &self.jobs[job];
            let finished = j.updates.iter().filter(|u| u.status.is_terminal()).count();
            let Some(oldest) = j.updates.iter().find(|u| u.status.is_terminal()) else {
                return;
            };
            let too_old = unix_ms.saturating_sub(oldest.updated_unix_ms) > threshold_ms;
            if finished <= per_job && !too_old {
                return;
            }
            let id = oldest.id;
            let key = j.key.clone();
            self.jobs[job].updates.retain(|u| u.id != id);
            self.log(&LogRecord::UpdateRemoved { key, id });
            self.drop_unused_revs(job);
            self.update_log_jobs.insert(job);
        }
    }

    /// Rebuilds the job's limit spread over every revision's limited attributes, from the
    /// agents of its live tasks (a new revision may limit other attributes).
    pub(super) fn rebuild_spread(&mut self, job: JobIdx) {
        let j = &self.jobs[job];
        let attrs: Vec<_> = j
            .compiled
            .limits
            .iter()
            .chain(j.others.values().flat_map(|v| v.compiled.limits.iter()))
            .map(|l| l.attr)
            .collect();
        let mut spread = borealis_core::placement::JobSpread::tracking(attrs);
        if spread.tracked() == j.spread.tracked() {
            return;
        }
        for id in j.current.iter().flatten().chain(j.history.iter()) {
            let Some(t) = self.tasks.get(id) else {
                continue;
            };
            if t.state.is_terminal() {
                continue;
            }
            if let Some(ids) = t.agent.and_then(|a| self.agent_attr_ids.get(&a)) {
                spread.add_attributes(ids);
            }
        }
        self.jobs[job].spread = spread;
    }

    /// The end of a round: the revisions and updates that changed are logged (and written
    /// to etcd under HA), once per job and round.
    pub(super) fn log_update_changes(&mut self) {
        if self.update_log_jobs.is_empty() && self.updating.is_empty() {
            return;
        }
        let jobs: Vec<JobIdx> = self
            .updating
            .iter()
            .copied()
            .chain(std::mem::take(&mut self.update_log_jobs))
            .collect();
        for job in jobs {
            let Some(j) = self.jobs.slots.get(job.0 as usize).and_then(Option::as_ref) else {
                continue;
            };
            if !j.revs_dirty && !j.update_dirty {
                continue;
            }
            if j.revs_dirty {
                let record = LogRecord::JobRevised {
                    key: j.key.clone(),
                    instances: j.current.len() as u32,
                    config: (*j.config).clone(),
                    revs: self.job_revs(job),
                };
                self.log(&record);
            }
            let j = &self.jobs[job];
            if j.update_dirty {
                if let Some(u) = j.updates.last() {
                    let record = LogRecord::UpdateSaved {
                        key: j.key.clone(),
                        update: u.clone(),
                    };
                    self.log(&record);
                }
            }
            let j = &mut self.jobs[job];
            j.revs_dirty = false;
            j.update_dirty = false;
            if self.is_ha() {
                let key = self.jobs[job].key.clone();
                self.write_job_desired(&key);
            }
        }
    }

    /// The job's revisions as the log keeps them.
    pub(super) fn job_revs(&self, job: JobIdx) -> borealis_store::image::JobRevs {
        let j = &self.jobs[job];
        borealis_store::image::JobRevs {
            head: j.head_rev,
            others: j
                .others
                .iter()
                .map(|(&rev, v)| (rev, (*v.config).clone()))
                .collect(),
            instance_revs: j.instance_revs.clone(),
        }
    }

    /// Restores a job's revisions and updates (from the log, or etcd).
    pub(super) fn restore_revs(
        &mut self,
        job: JobIdx,
        revs: borealis_store::image::JobRevs,
        updates: Vec<JobUpdate>,
    ) {
        let compiled: Vec<(Rev, Variant)> = revs
            .others
            .into_iter()
            .map(|(rev, config)| {
                let compiled = self.index.compile(&config);
                (
                    rev,
                    Variant {
                        config: Arc::new(config),
                        compiled,
                    },
                )
            })
            .collect();
        let j = &mut self.jobs[job];
        j.head_rev = revs.head;
        j.others = compiled.into_iter().collect();
        j.instance_revs = revs.instance_revs;
        j.updates = updates.into_iter().map(JobUpdate::restored).collect();
        if j.active_update().is_some() {
            self.updating.insert(job);
            self.update_wake.insert(job);
        }
        self.rebuild_spread(job);
    }
}
