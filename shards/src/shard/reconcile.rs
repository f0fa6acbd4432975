//! Keeping the scheduler and its agents in agreement (Aurora's reconciliation), on the agents'
//! home shard, plus the retries of kills nobody answered and the expiry of partitions, on the
//! jobs' owners.
//!
//! - Explicit: every `--reconciliation-explicit-interval` the home asks each agent for the
//!   status of the tasks it believes the agent runs, `--reconciliation-explicit-batch-size`
//!   tasks every `--reconciliation-explicit-batch-interval`. The agent answers each (a task it
//!   does not know as LOST, which the owner replaces).
//! - Implicit: every `--reconciliation-implicit-interval` the home asks each agent for
//!   everything it runs; a task the scheduler does not believe in (unknown, ended, or moved) is
//!   killed by its owner.
//!
//! Both start `--reconciliation-initial-delay` after the shard starts (implicit rounds a
//! further `--reconciliation-schedule-spread` later). The answers are ordinary status updates.

use super::*;

/// Where explicit reconciliation stands on this shard.
#[derive(Debug, Default)]
pub(super) struct Reconciliation {
    /// When the next explicit round starts (shard µs).
    next_explicit_us: u64,
    /// When the next implicit round starts.
    next_implicit_us: u64,
    /// The current explicit round's remaining requests, in agent order.
    queue: VecDeque<(AgentId, Vec<TaskId>)>,
    /// When the next batch of the round goes out.
    next_batch_us: u64,
}

impl Reconciliation {
    pub(super) fn new(start_us: u64, s: &crate::ServiceSettings) -> Reconciliation {
        let first = start_us + s.reconciliation_initial_delay_ms * 1000;
        Reconciliation {
            next_explicit_us: first,
            next_implicit_us: first + s.reconciliation_schedule_spread_ms * 1000,
            queue: VecDeque::new(),
            next_batch_us: 0,
        }
    }
}

impl Shard {
    /// The sweep's part: starts rounds that are due and sends the next explicit batch.
    pub(super) fn reconcile_agents(&mut self) {
        let now = self.now_us;
        let s = self.config.service.clone();
        if now >= self.reconciliation.next_implicit_us {
            self.reconciliation.next_implicit_us =
                now + s.reconciliation_implicit_interval_ms.max(1) * 1000;
            let mut agents: Vec<(AgentId, ConnId)> = self
                .home_agents
                .iter()
                .map(|(id, a)| (*id, a.conn))
                .collect();
            agents.sort_unstable();
            tracing::debug!(shard = %self.id, agents = agents.len(), "implicit reconciliation");
            for (_, conn) in agents {
                let bytes = self.encoder.reconcile(&[]).to_vec();
                self.write_conn(conn, &bytes);
            }
            self.metrics().reconciliations_total[1].inc();
        }
        if now >= self.reconciliation.next_explicit_us && self.reconciliation.queue.is_empty() {
            self.reconciliation.next_explicit_us =
                now + s.reconciliation_explicit_interval_ms.max(1) * 1000;
            let batch = s.reconciliation_explicit_batch_size.max(1);
            let mut agents: Vec<AgentId> = self.home_agents.keys().copied().collect();
            agents.sort_unstable();
            for agent in agents {
                let mut tasks: Vec<TaskId> =
                    self.home_agents[&agent].running.keys().copied().collect();
                tasks.sort_unstable();
                for chunk in tasks.chunks(batch) {
                    self.reconciliation.queue.push_back((agent, chunk.to_vec()));
                }
            }
            self.reconciliation.next_batch_us = now;
            self.metrics().reconciliations_total[0].inc();
        }
        if self.reconciliation.queue.is_empty() || now < self.reconciliation.next_batch_us {
            return;
        }
        // One batch: up to the batch size of task ids, across agents in order.
        let mut budget = s.reconciliation_explicit_batch_size.max(1);
        while budget > 0 {
            let Some((agent, mut tasks)) = self.reconciliation.queue.pop_front() else {
                break;
            };
            if tasks.len() > budget {
                let rest = tasks.split_off(budget);
                self.reconciliation.queue.push_front((agent, rest));
            }
            budget -= tasks.len();
            // Tasks that left the agent since the round started are not asked about.
            let Some(a) = self.home_agents.get(&agent) else {
                continue;
            };
            tasks.retain(|t| a.running.contains_key(t));
            if tasks.is_empty() {
                continue;
            }
            let conn = a.conn;
            let bytes = self.encoder.reconcile(&tasks).to_vec();
            self.write_conn(conn, &bytes);
        }
        self.reconciliation.next_batch_us =
            now + s.reconciliation_explicit_batch_interval_ms * 1000;
    }

    /// Kills nobody answered are sent again: after `--initial-task-kill-retry-interval`,
    /// doubling, up to `--transient-task-state-timeout` (which ends the kill anyway).
    pub(super) fn retry_kills(&mut self) {
        let being_killed: u64 = [
            TaskState::Killing,
            TaskState::Restarting,
            TaskState::Preempting,
            TaskState::Draining,
        ]
        .iter()
        .map(|s| self.state_counts[*s as usize])
        .sum();
        if being_killed == 0 {
            // The common case: no walk over every task.
            return;
        }
        let now = self.now_us;
        let mut due: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| t.state.is_being_killed() && t.agent.is_some())
            .filter(|t| t.next_kill_retry_us != 0 && now >= t.next_kill_retry_us)
            .map(|t| t.id)
            .collect();
        due.sort_unstable();
        let initial_us = self.config.service.initial_task_kill_retry_interval_ms * 1000;
        let max_us = self.config.lifecycle.transient_task_state_timeout_ms * 1000;
        for task_id in due {
            let t = self.tasks.get_mut(&task_id).expect("present");
            t.kill_retries = t.kill_retries.saturating_add(1);
            t.next_kill_retry_us = now
                + borealis_core::sla::backoff_us(
                    t.kill_retries,
                    initial_us,
                    max_us.max(initial_us),
                );
            let (agent, job) = (t.agent.expect("filtered"), t.job);
            let key = self.jobs[job].key_text.clone();
            tracing::debug!(task = %task_id, "kill not answered: sending it again");
            self.metrics().kill_retries_total.inc();
            self.kill_on_agent(agent, task_id, key);
        }
    }

    /// PARTITIONED tasks whose job's partition policy says they have waited long enough are
    /// LOST (and replaced).
    pub(super) fn expire_partitions(&mut self) {
        if self.state_counts[TaskState::Partitioned as usize] == 0 {
            return;
        }
        let now = self.now_us;
        let mut due: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| t.state == TaskState::Partitioned)
            .filter(|t| {
                let policy = self.jobs[t.job].config.partition_policy.as_ref();
                lifecycle::partition_deadline_us(policy, t.entered_us).is_some_and(|d| now >= d)
            })
            .map(|t| t.id)
            .collect();
        due.sort_unstable();
        for task_id in due {
            self.transition(
                task_id,
                TaskState::Lost,
                "partitioned for longer than its job's partition policy allows",
            );
        }
    }
}
