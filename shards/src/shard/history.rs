//! Terminal task history: per-job bounds and pruning by age (Aurora's history thresholds).

use super::*;

impl Shard {
    /// Aurora's `history_max_per_job_threshold`: a job keeps at most that many terminal tasks,
    /// except those younger than `history_min_retention_threshold`.
    pub(super) fn prune_history_over_max(&mut self, job: JobIdx, now: u64) {
        let min_retention_us = self.config.history_min_retention_ms * 1000;
        while self.jobs[job].history.len() > self.config.history_max_per_job {
            let oldest = *self.jobs[job].history.front().expect("non-empty");
            let ended_us = self.tasks.get(&oldest).map_or(0, |t| t.entered_us);
            if ended_us + min_retention_us > now {
                break;
            }
            self.jobs[job].history.pop_front();
            self.forget_task(oldest);
        }
    }

    pub(super) fn forget_task(&mut self, task_id: TaskId) {
        self.log(&LogRecord::TaskForgotten { id: task_id });
        if let Some(t) = self.tasks.remove(&task_id) {
            debug_assert!(
                t.state.is_terminal(),
                "forgetting live task {task_id} in {}",
                t.state
            );
            self.state_counts[t.state as usize] -= 1;
        }
    }

    /// Aurora's `history_prune_threshold`: terminal tasks older than it are forgotten, and a
    /// job with no task left (live or ended) goes with them.
    pub(super) fn prune_expired_history(&mut self, now: u64) {
        let threshold_us = self.config.history_prune_threshold_ms * 1000;
        while let Some(&(ended_us, task_id)) = self.ended.front() {
            if ended_us + threshold_us > now {
                break;
            }
            self.ended.pop_front();
            let Some(job) = self.tasks.get(&task_id).map(|t| t.job) else {
                continue; // pruned already (over the per-job maximum, or its job replaced)
            };
            // A job's history is in end order, so an expiring task is at its front.
            if self.jobs[job].history.front() != Some(&task_id) {
                continue;
            }
            self.jobs[job].history.pop_front();
            self.forget_task(task_id);
            let j = &self.jobs[job];
            if j.history.is_empty() && j.current.iter().all(Option::is_none) {
                tracing::debug!(job = %j.key, "every task of the job ended and was pruned");
                let key = j.key.clone();
                self.drop_job(job);
                if self.is_ha() {
                    // Nothing of the job is left: neither should its desired state be.
                    self.write_job_desired(&key);
                }
            }
        }
    }
}
