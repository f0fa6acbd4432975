//! Cron jobs on the job's owner (Aurora's `CronJobManager`): a cron job is a job whose
//! instances are retired between runs, with a schedule and a template (instances and config).
//!
//! At each trigger (`--cron-timezone`, the wall clock of the round) a run starts: every
//! instance of the template gets a new task. When the previous run is still active the
//! collision policy decides: `KILL_EXISTING` kills it and starts the new run once its tasks
//! ended (checked again after `--cron-start-initial-backoff`, doubling up to
//! `--cron-start-max-backoff`); `CANCEL_NEW` skips the trigger. At most
//! `--cron-scheduling-max-batch-size` triggers are handled per tick and shard; the rest wait
//! for the next tick.
//!
//! Missed triggers: the next trigger is computed from the time a schedule is set, and again
//! from the time a scheduler restarts or takes the lead (core's `first_trigger_on_start`). A
//! trigger that fell while no scheduler ran is not run at all, so none is ever run twice.

use borealis_core::cron::{first_trigger_on_start, start_backoff_ms, CollisionPolicy, CronSpec};
use borealis_store::image::CronImage;

use super::*;

/// A job's cron schedule and template, and where its next run stands.
pub(super) struct CronJob {
    pub(super) spec: CronSpec,
    /// The template's instance count and config (the job's head is set to it at each run).
    pub(super) instances: u32,
    pub(super) config: Arc<TaskConfig>,
    /// The next trigger (unix ms; None: the schedule has no next time).
    pub(super) next_run_unix_ms: Option<u64>,
    /// A run waiting for the previous one to be killed: attempts so far and when it checks
    /// again (shard µs).
    pub(super) starting: Option<(u32, u64)>,
    /// Runs started and triggers skipped (CANCEL_NEW), for `job list`.
    pub(super) runs: u64,
    pub(super) skipped: u64,
}

impl Shard {
    /// `ScheduleCron`: checks, then schedules (or replaces) the cron job.
    pub(super) fn schedule_cron(
        &mut self,
        c: wire::ScheduleCron<'_>,
    ) -> Result<Vec<u8>, ClientError> {
        let (key, image) = self.validate_cron(c)?;
        self.install_cron(key.clone(), image.clone());
        self.log(&LogRecord::CronSet {
            key: key.clone(),
            cron: Some(image),
        });
        tracing::info!(shard = %self.id, job = %key, "cron job scheduled");
        Ok(Vec::new())
    }

    /// Every check of a ScheduleCron, changing nothing.
    pub(super) fn validate_cron(
        &self,
        c: wire::ScheduleCron<'_>,
    ) -> Result<(JobKey, CronImage), ClientError> {
        let instances = c.instances();
        let key = self.check_new_job(c.job_key(), instances, "cron job")?;
        let schedule = borealis_core::cron::CronSchedule::parse(c.schedule())
            .map_err(|e| ClientError::InvalidRequest(format!("cron job {key}: {e}")))?;
        let collision_policy =
            borealis_net::codec::collision_policy_from_wire(c.collision_policy())
                .map_err(|e| ClientError::InvalidRequest(format!("cron job {key}: {e}")))?;
        let config = self.config_from_wire(&key, c.config(), "cron job")?;
        if config.is_service {
            return Err(ClientError::InvalidRequest(format!(
                "cron job {key}: a cron job cannot be a service"
            )));
        }
        if let Some(&job) = self.job_index.get(&key) {
            let j = &self.jobs[job];
            if j.cron.is_none() && self.job_is_live(job) {
                return Err(ClientError::InvalidRequest(format!(
                    "job {key} is running and is not a cron job: kill it before scheduling it"
                )));
            }
            if j.cron.is_some() && j.config.production != config.production {
                return Err(ClientError::InvalidRequest(format!(
                    "cron job {key}: a schedule cannot change production; deschedule it first"
                )));
            }
        }
        Ok((
            key,
            CronImage {
                instances,
                config,
                spec: CronSpec {
                    schedule,
                    collision_policy,
                },
            },
        ))
    }

    /// The desired state a ScheduleCron would write (under etcd, before it applies).
    pub(super) fn desired_after_schedule_cron(
        &self,
        c: wire::ScheduleCron<'_>,
    ) -> Result<(JobKey, crate::ha::DesiredJob), ClientError> {
        let (key, image) = self.validate_cron(c)?;
        let mut desired = match self.job_index.get(&key) {
            Some(&job) => self.desired(job),
            None => crate::ha::DesiredJob {
                key: key.clone(),
                instances: image.instances,
                config: image.config.clone(),
                retired: (0..image.instances).collect(),
                revs: Default::default(),
                updates: Vec::new(),
                cron: None,
            },
        };
        desired.cron = Some(image);
        Ok((key, desired))
    }

    /// The desired state a DescheduleCron would write (the job itself goes once applied,
    /// when nothing of it is live).
    pub(super) fn desired_after_deschedule_cron(
        &self,
        c: wire::DescheduleCron<'_>,
    ) -> Result<(JobKey, crate::ha::DesiredJob), ClientError> {
        let job = self.cron_target(c.job_key())?;
        let mut desired = self.desired(job);
        desired.cron = None;
        Ok((self.jobs[job].key.clone(), desired))
    }

    /// Whether any current task of the job is live.
    pub(super) fn job_is_live(&self, job: JobIdx) -> bool {
        self.jobs[job]
            .current
            .iter()
            .flatten()
            .any(|t| self.tasks.get(t).is_some_and(|t| !t.state.is_terminal()))
    }

    /// Makes the job a cron job (creating it with every instance retired if it does not
    /// exist); its next trigger is computed from now.
    pub(super) fn install_cron(&mut self, key: JobKey, image: CronImage) {
        let job = match self.job_index.get(&key) {
            Some(&job) => job,
            None => {
                let job = self.install_job(key.clone(), image.instances, image.config.clone());
                for i in 0..image.instances {
                    self.retire_instance(job, i);
                }
                self.log(&LogRecord::JobCreated {
                    key: key.clone(),
                    instances: image.instances,
                    config: image.config.clone(),
                });
                job
            }
        };
        self.unqueue_cron(job);
        let next = first_trigger_on_start(
            &image.spec.schedule,
            self.unix_ms,
            &self.config.changes.cron_timezone,
        );
        let (runs, skipped, starting) = self.jobs[job]
            .cron
            .as_ref()
            .map_or((0, 0, None), |c| (c.runs, c.skipped, c.starting));
        self.jobs[job].cron = Some(Box::new(CronJob {
            spec: image.spec,
            instances: image.instances,
            config: Arc::new(image.config),
            next_run_unix_ms: next,
            starting,
            runs,
            skipped,
        }));
        if let Some(next) = next {
            self.cron_queue.insert((next, job));
        }
    }

    fn unqueue_cron(&mut self, job: JobIdx) {
        if let Some(next) = self.jobs[job]
            .cron
            .as_ref()
            .and_then(|c| c.next_run_unix_ms)
        {
            self.cron_queue.remove(&(next, job));
        }
    }

    /// `DescheduleCron`: the schedule goes; a run in progress finishes as a plain job, and a
    /// job with nothing live is forgotten.
    pub(super) fn deschedule_cron(
        &mut self,
        c: wire::DescheduleCron<'_>,
    ) -> Result<Vec<u8>, ClientError> {
        let job = self.cron_target(c.job_key())?;
        self.unqueue_cron(job);
        self.jobs[job].cron = None;
        let key = self.jobs[job].key.clone();
        self.log(&LogRecord::CronSet {
            key: key.clone(),
            cron: None,
        });
        if !self.job_is_live(job) {
            self.drop_job(job);
            if self.is_ha() {
                self.write_job_desired(&key);
            }
        }
        tracing::info!(shard = %self.id, job = %key, "cron job descheduled");
        Ok(Vec::new())
    }

    /// `StartCron`: a run now, as if the schedule triggered.
    pub(super) fn start_cron(&mut self, c: wire::StartCron<'_>) -> Result<Vec<u8>, ClientError> {
        let job = self.cron_target(c.job_key())?;
        self.trigger_cron(job, "started by operator");
        Ok(Vec::new())
    }

    pub(super) fn cron_target(&self, job_key: &str) -> Result<JobIdx, ClientError> {
        let key: JobKey = job_key
            .parse()
            .map_err(|e: borealis_core::JobKeyError| ClientError::InvalidRequest(e.to_string()))?;
        match self.job_index.get(&key) {
            Some(&job) if self.jobs[job].cron.is_some() => Ok(job),
            Some(_) => Err(ClientError::InvalidRequest(format!(
                "job {key} is not a cron job"
            ))),
            None => Err(ClientError::UnknownJob(key)),
        }
    }

    /// The tick: due triggers (at most `--cron-scheduling-max-batch-size`), and runs waiting
    /// for their previous run to be killed.
    pub(super) fn tick_crons(&mut self) {
        if !self.acting() || (self.cron_queue.is_empty() && self.cron_starting.is_empty()) {
            return;
        }
        let batch = self.config.changes.cron_scheduling_max_batch_size.max(1);
        let due: Vec<(u64, JobIdx)> = self
            .cron_queue
            .range(..(self.unix_ms + 1, JobIdx(0)))
            .take(batch)
            .copied()
            .collect();
        for (at, job) in due {
            self.cron_queue.remove(&(at, job));
            let next = self.jobs[job].cron.as_ref().and_then(|c| {
                c.spec
                    .schedule
                    .next_after(at.max(self.unix_ms), &self.config.changes.cron_timezone)
            });
            if let Some(c) = self.jobs[job].cron.as_mut() {
                c.next_run_unix_ms = next;
            }
            if let Some(next) = next {
                self.cron_queue.insert((next, job));
            }
            self.trigger_cron(job, "triggered by its schedule");
        }
        let now = self.now_us;
        let waiting: Vec<JobIdx> = self
            .cron_starting
            .iter()
            .copied()
            .filter(|&job| {
                self.jobs[job]
                    .cron
                    .as_ref()
                    .and_then(|c| c.starting)
                    .is_some_and(|(_, at)| at <= now)
            })
            .collect();
        for job in waiting {
            self.continue_cron_start(job);
        }
    }

    /// A trigger (or `cron start`): run now, or apply the collision policy.
    fn trigger_cron(&mut self, job: JobIdx, why: &str) {
        let Some(c) = self.jobs[job].cron.as_ref() else {
            return;
        };
        if c.starting.is_some() {
            return; // a run is already waiting for the previous one to end
        }
        let policy = c.spec.collision_policy;
        if !self.job_is_live(job) {
            return self.start_cron_run(job, why);
        }
        match policy {
            CollisionPolicy::CancelNew => {
                let c = self.jobs[job].cron.as_mut().expect("cron");
                c.skipped += 1;
                tracing::info!(
                    shard = %self.id,
                    job = %self.jobs[job].key,
                    "cron run skipped: the previous run is still active (CANCEL_NEW)"
                );
            }
            CollisionPolicy::KillExisting => {
                self.kill_cron_run(job);
                let initial = self.config.changes.cron_start_initial_backoff_ms;
                let c = self.jobs[job].cron.as_mut().expect("cron");
                c.starting = Some((0, self.now_us + initial * 1000));
                self.cron_starting.insert(job);
                tracing::info!(
                    shard = %self.id,
                    job = %self.jobs[job].key,
                    "cron run waits: killing the previous run (KILL_EXISTING)"
                );
            }
        }
    }

    /// Kills the live tasks of a cron job's run (retired: they are not replaced).
    fn kill_cron_run(&mut self, job: JobIdx) {
        let instances = self.jobs[job].current.len() as u32;
        for instance in 0..instances {
            self.retire_instance(job, instance);
            let Some(task_id) = self.jobs[job].current[instance as usize] else {
                continue;
            };
            if !self.may_transition(task_id, TaskState::Killing) {
                continue;
            }
            if let Some(t) = self.tasks.get_mut(&task_id) {
                t.killed_by_user = true;
            }
            self.transition(task_id, TaskState::Killing, "killed for a new cron run");
        }
        if self.is_ha() {
            let key = self.jobs[job].key.clone();
            self.write_job_desired(&key);
        }
    }

    /// A run waiting for its predecessor: start it once nothing is live, else back off.
    fn continue_cron_start(&mut self, job: JobIdx) {
        if !self.job_is_live(job) {
            self.cron_starting.remove(&job);
            if let Some(c) = self.jobs[job].cron.as_mut() {
                c.starting = None;
            }
            return self.start_cron_run(job, "started after the previous run was killed");
        }
        let s = &self.config.changes;
        let (initial, max) = (s.cron_start_initial_backoff_ms, s.cron_start_max_backoff_ms);
        let now = self.now_us;
        if let Some(c) = self.jobs[job].cron.as_mut() {
            let attempts = c.starting.map_or(0, |(a, _)| a) + 1;
            c.starting = Some((
                attempts,
                now + start_backoff_ms(initial, max, attempts) * 1000,
            ));
        }
    }

    /// Starts a run: the job takes the template (config, instance count) and every instance
    /// gets a new task.
    fn start_cron_run(&mut self, job: JobIdx, why: &str) {
        let c = self.jobs[job].cron.as_ref().expect("cron");
        let (instances, config) = (c.instances, c.config.clone());
        if *self.jobs[job].config != *config || self.jobs[job].current.len() as u32 != instances {
            // A new template: the job is installed anew (its ended tasks go with the old one).
            let key = self.jobs[job].key.clone();
            self.unqueue_cron(job);
            self.cron_starting.remove(&job);
            let cron = self.jobs[job].cron.take();
            self.drop_job(job);
            let new = self.install_job(key.clone(), instances, (*config).clone());
            self.log(&LogRecord::JobCreated {
                key: key.clone(),
                instances,
                config: (*config).clone(),
            });
            if let Some(next) = cron.as_ref().and_then(|c| c.next_run_unix_ms) {
                self.cron_queue.insert((next, new));
            }
            self.jobs[new].cron = cron;
            let image = self.cron_image(new);
            self.log(&LogRecord::CronSet { key, cron: image });
            return self.launch_cron_run(new, why);
        }
        self.launch_cron_run(job, why);
    }

    fn launch_cron_run(&mut self, job: JobIdx, why: &str) {
        let instances = self.jobs[job].current.len() as u32;
        for instance in 0..instances {
            self.unretire_instance(job, instance);
            self.new_task(job, instance, 0, 0, 0);
        }
        if let Some(c) = self.jobs[job].cron.as_mut() {
            c.runs += 1;
        }
        if self.is_ha() {
            let key = self.jobs[job].key.clone();
            self.write_job_desired(&key);
        }
        tracing::info!(shard = %self.id, job = %self.jobs[job].key, instances, "cron run: {why}");
    }

    /// The cron state as the log and etcd keep it.
    pub(super) fn cron_image(&self, job: JobIdx) -> Option<CronImage> {
        self.jobs[job].cron.as_ref().map(|c| CronImage {
            instances: c.instances,
            config: (*c.config).clone(),
            spec: c.spec.clone(),
        })
    }

    /// What `job list` says of a cron job.
    pub(super) fn cron_summary(&self, job: &Job) -> Option<borealis_net::views::CronSummaryView> {
        job.cron
            .as_ref()
            .map(|c| borealis_net::views::CronSummaryView {
                schedule: c.spec.schedule.as_str().to_string(),
                next_run_unix_ms: c.next_run_unix_ms,
                collision_policy: c.spec.collision_policy,
            })
    }
}
