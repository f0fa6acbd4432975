//! How the shard's state becomes durable: restoring from the recovered log, the log records of
//! each change, the round's group commit, snapshots and backups.

use super::*;

impl Shard {
    /// Rebuilds the shard's jobs and tasks from its recovered image and takes its log.
    /// Tasks that were on an agent wait (up to the reconciliation grace) for the agent to
    /// report them; PENDING and THROTTLED tasks are queued again.
    pub fn restore(&mut self, image: StateImage, wal: Wal) {
        let now = self.now_us;
        self.reconcile_deadline_us = now + self.config.reconciliation_grace_ms * 1000;
        let mut restored = 0usize;
        for (role, quota) in image.quotas {
            self.book(&role).quota = Some(quota);
        }
        let hosts = image
            .hosts
            .into_iter()
            .map(|(host, h)| (host, h.mode, h.drain_deadline_unix_ms))
            .collect();
        self.restore_hosts(hosts);
        for (key, ji) in image.jobs {
            let JobImage {
                config,
                instances,
                current,
                history,
                revs,
                updates,
                cron,
                ..
            } = ji;
            let compiled = self.index.compile(&config);
            let mut slots = current;
            slots.resize(instances as usize, None);
            // In the log an instance without a current task ended for good (or was killed).
            let retired: Vec<bool> = slots.iter().map(Option::is_none).collect();
            let mut j = Job::new(
                key.clone(),
                config,
                compiled,
                slots,
                history.into_iter().collect(),
                &self.tiers,
            );
            j.unretired = retired.iter().filter(|r| !**r).count() as u32;
            j.retired = retired;
            let job = self.jobs.insert(j);
            self.job_index.insert(key, job);
            self.restore_revs(job, revs, updates);
            if let Some(cron) = cron {
                self.install_cron(self.jobs[job].key.clone(), cron);
            }
        }
        for (id, ti) in image.tasks {
            let Some(&job) = self.job_index.get(&ti.job) else {
                tracing::warn!(task = %id, job = %ti.job, "restored task of an unknown job: dropped");
                continue;
            };
            let mut state = ti.state;
            if state == TaskState::Throttled {
                // Its penalty was in the past life: it may run now.
                state = TaskState::Pending;
            }
            let awaiting = state.is_active();
            // A user killed it (it may still be KILLING, so current): its instance is retired,
            // and holds no quota (found by the simulation).
            let instance = ti.instance as usize;
            if ti.killed_by_user && self.jobs[job].current.get(instance) == Some(&Some(id)) {
                let j = &mut self.jobs[job];
                if !j.retired[instance] {
                    j.retired[instance] = true;
                    j.unretired -= 1;
                }
            }
            let host = match (ti.agent_name, ti.hostname) {
                (Some(name), hostname) => Some(Arc::new(AgentNames {
                    hostname: hostname.unwrap_or_else(|| name.clone()).into(),
                    name: name.into(),
                })),
                _ => None,
            };
            self.tasks.insert(
                id,
                Task {
                    id,
                    job,
                    instance: ti.instance,
                    rev: ti.rev,
                    state,
                    agent: None,
                    host,
                    holds: false,
                    failure_count: ti.failure_count,
                    consecutive_flaps: ti.consecutive_flaps,
                    entered_us: now,
                    running_since_us: (state == TaskState::Running).then_some(now),
                    exit_code: ti.exit_code,
                    message: ti.message,
                    ports: ti.ports,
                    sandbox: ti.sandbox,
                    killed_by_user: ti.killed_by_user,
                    awaiting_adoption: awaiting,
                    preempted_by: ti.preempted_by,
                    next_kill_retry_us: 0,
                    kill_retries: 0,
                    events: Vec::new(),
                    usage: ti.usage,
                },
            );
            self.state_counts[state as usize] += 1;
            if state == TaskState::Pending {
                self.pending.push_back(id);
            } else if state.is_terminal() {
                self.ended.push_back((now, id));
            }
            restored += 1;
        }
        tracing::info!(
            shard = %self.id,
            jobs = self.jobs.len(),
            tasks = restored,
            "state restored from the log"
        );
        self.rebuild_quota_ledger();
        self.wal = Some(wal);
    }

    /// The shard's whole state as a log image (for snapshots and backups).
    pub fn to_image(&self) -> StateImage {
        let mut image = StateImage::default();
        for (role, book) in &self.quota_book {
            if let Some(quota) = book.quota {
                image.quotas.insert(role.clone(), quota);
            }
        }
        for (host, mode, drain_deadline_unix_ms) in self.owned_host_images() {
            image.hosts.insert(
                host,
                borealis_store::image::HostImage {
                    mode,
                    drain_deadline_unix_ms,
                },
            );
        }
        for &idx in self.job_index.values() {
            let job = &self.jobs[idx];
            image.jobs.insert(
                job.key.clone(),
                JobImage {
                    key: job.key.clone(),
                    config: (*job.config).clone(),
                    instances: job.current.len() as u32,
                    current: job.current.clone(),
                    history: job.history.iter().copied().collect(),
                    revs: self.job_revs(idx),
                    updates: job.updates.clone(),
                    cron: self.cron_image(idx),
                },
            );
        }
        for id in self.tasks.keys() {
            if let Some(t) = self.task_image(*id) {
                image.tasks.insert(*id, t);
            }
        }
        image
    }

    /// Group commit: makes every record of this round durable with one write and one fsync,
    /// before the round's acknowledgements and launches leave. A failed commit is fatal:
    /// acknowledging what is not durable would break the contract.
    pub fn commit_log(&mut self) {
        let Some(wal) = &mut self.wal else {
            return;
        };
        if let Err(e) = wal.commit() {
            tracing::error!(shard = %self.id, "cannot write the log, stopping: {e}");
            std::process::exit(70);
        }
    }

    /// Snapshots (bounding the log and the replay at restart) and backups, on their intervals.
    pub(super) fn maybe_snapshot_and_backup(&mut self) {
        if self.wal.is_none() {
            return;
        }
        let log_bytes = self.wal.as_ref().map_or(0, Wal::bytes_since_snapshot);
        let snapshot_due = log_bytes >= SNAPSHOT_LOG_BYTES
            || (log_bytes > 0
                && elapsed_us(self.now_us, self.last_snapshot_us) / 1000
                    >= self.config.snapshot_interval_ms);
        // Backups are due per interval slot of the wall clock, so every shard writes the
        // same slot's folder; an operator's request (`POST /admin/backup`) names its own.
        let unix_ms = self.unix_ms;
        let slot = unix_ms / self.config.backup_interval_ms.max(1);
        let requested = self
            .config
            .backup_requests
            .load(std::sync::atomic::Ordering::Relaxed);
        let backup_name = if requested != self.last_backup_request {
            self.last_backup_request = requested;
            Some(borealis_store::backup::backup_name(requested, 1000))
        } else if slot != self.last_backup_slot {
            self.last_backup_slot = slot;
            Some(borealis_store::backup::backup_name(
                slot * self.config.backup_interval_ms.max(1),
                self.config.backup_interval_ms.max(1),
            ))
        } else {
            None
        };
        let backup_due = backup_name.is_some();
        if !snapshot_due && !backup_due {
            return;
        }
        let image = self.to_image();
        if snapshot_due {
            self.last_snapshot_us = self.now_us;
            let wal = self.wal.as_mut().expect("checked");
            if let Err(e) = wal.snapshot(&image) {
                tracing::error!(shard = %self.id, "cannot write a snapshot, stopping: {e}");
                std::process::exit(70);
            }
        }
        if let Some(name) = backup_name {
            match borealis_store::backup::write_backup(
                &self.config.backup_dir,
                &name,
                self.id.0,
                &image,
            ) {
                Ok(()) => tracing::info!(shard = %self.id, backup = %name, "backup written"),
                Err(e) => tracing::error!(shard = %self.id, backup = %name, "backup failed: {e}"),
            }
            if self.id == ShardId(0) {
                if let Err(e) = borealis_store::backup::prune_backups(
                    &self.config.backup_dir,
                    self.config.max_saved_backups,
                ) {
                    tracing::warn!("cannot prune old backups: {e}");
                }
            }
        }
    }

    pub(super) fn log(&mut self, record: &LogRecord) {
        if let Some(wal) = &mut self.wal {
            wal.append(record);
        }
    }

    pub(super) fn task_image(&self, id: TaskId) -> Option<TaskImage> {
        let t = self.tasks.get(&id)?;
        Some(TaskImage {
            id,
            job: self.jobs[t.job].key.clone(),
            instance: t.instance,
            state: t.state,
            agent_name: t.host.as_ref().map(|h| h.name.to_string()),
            hostname: t.host.as_ref().map(|h| h.hostname.to_string()),
            failure_count: t.failure_count,
            consecutive_flaps: t.consecutive_flaps,
            exit_code: t.exit_code,
            message: t.message.clone(),
            ports: t.ports.clone(),
            sandbox: t.sandbox.clone(),
            killed_by_user: t.killed_by_user,
            preempted_by: t.preempted_by,
            rev: t.rev,
            usage: t.usage,
        })
    }

    /// Logs every field of a task (new or changed), encoded from the task in place: no copy
    /// of its strings per transition.
    pub(super) fn log_task(&mut self, id: TaskId) {
        let Some(wal) = &mut self.wal else {
            return;
        };
        let Some(t) = self.tasks.get(&id) else {
            return;
        };
        wal.append_task(&TaskImageRef {
            id,
            job: &self.jobs[t.job].key,
            instance: t.instance,
            state: t.state,
            agent_name: t.host.as_ref().map(|h| &*h.name),
            hostname: t.host.as_ref().map(|h| &*h.hostname),
            failure_count: t.failure_count,
            consecutive_flaps: t.consecutive_flaps,
            exit_code: t.exit_code,
            message: &t.message,
            ports: &t.ports,
            sandbox: &t.sandbox,
            killed_by_user: t.killed_by_user,
            preempted_by: t.preempted_by,
            rev: t.rev,
            usage: t.usage,
        });
    }
}
