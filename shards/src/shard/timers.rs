//! What the shard does on its ticks: throttled tasks whose delay ended, blocked retries, and
//! the sweep (transient timeouts, history pruning, unadopted tasks, snapshots, silent agents,
//! kill retries, partitions, drains, reconciliation).

use super::*;

impl Shard {
    pub(super) fn tick(&mut self) {
        let now = self.now_us;
        // Throttled tasks whose penalty expired become PENDING.
        let due: Vec<(u64, TaskId)> = self
            .throttled
            .range(..(now + 1, TaskId(0)))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            self.throttled.remove(&key);
            let id = key.1;
            // Killed while throttled: nothing to do.
            if self.tasks.get(&id).map(|t| t.state) == Some(TaskState::Throttled) {
                self.set_state(id, TaskState::Pending);
                self.tasks.get_mut(&id).expect("present").message.clear();
                self.pending.push_back(id);
                self.log_task(id);
            }
        }
        self.tick_crons();
        if elapsed_us(now, self.last_sweep_us) >= us(SWEEP_INTERVAL) {
            self.last_sweep_us = now;
            self.check_transient_timeouts(now);
            self.prune_expired_history(now);
            self.prune_updates_by_age();
            self.expire_unadopted(now);
            self.start_missing_instances();
            self.maybe_snapshot_and_backup();
            self.check_silent_agents();
            self.expire_slot_holds();
            self.retry_job_writes();
            self.search_preemption_slots();
            self.retry_kills();
            if self.acting() {
                self.expire_partitions();
                self.drain_hosts();
                self.reconcile_agents();
            }
        }
    }

    /// Aurora's `--transient-task-state-timeout`: a task too long in a transient state
    /// (core's `transient_timed_out`) gives up: KILLING becomes KILLED, the others LOST.
    pub(super) fn check_transient_timeouts(&mut self, now: u64) {
        let policy = self.config.lifecycle;
        let now_ms = now / 1000;
        let mut stuck: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| {
                lifecycle::transient_timed_out(&policy, t.state, t.entered_us / 1000, now_ms)
            })
            .map(|t| t.id)
            .collect();
        stuck.sort();
        for id in stuck {
            let next = lifecycle::transient_timeout_target(self.tasks[&id].state);
            self.transition(id, next, "timed out in a transient state");
        }
    }

    /// After a restart, tasks no agent reported within the grace are LOST (and replaced).
    pub(super) fn expire_unadopted(&mut self, now: u64) {
        if self.reconcile_deadline_us == 0 || now < self.reconcile_deadline_us {
            return;
        }
        self.reconcile_deadline_us = 0;
        let mut lost: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| t.awaiting_adoption)
            .map(|t| t.id)
            .collect();
        lost.sort();
        if !lost.is_empty() {
            tracing::warn!(
                shard = %self.id,
                tasks = lost.len(),
                "tasks not reported by any agent since the restart are LOST"
            );
        }
        for id in lost {
            if let Some(t) = self.tasks.get_mut(&id) {
                t.awaiting_adoption = false;
            }
            if self.may_transition(id, TaskState::Lost) {
                self.transition(
                    id,
                    TaskState::Lost,
                    "not reported by its agent after a scheduler restart",
                );
            }
        }
    }
}
