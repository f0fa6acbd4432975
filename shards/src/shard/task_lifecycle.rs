//! The task lifecycle on the job's owner: agents' reports, transitions through the table and
//! their side effects (kills, releases, rescheduling).

use super::*;

/// What became of a task an agent reported at registration.
#[derive(Debug)]
pub(super) enum AdoptOutcome {
    /// Adopted: it holds these resources and ports on the agent.
    Adopted {
        resources: Resources,
        ports: Vec<u16>,
    },
    /// Refused while it still runs there (it ended or moved here; the kill is on its way): it
    /// holds these resources on the agent until the agent reports it ended.
    Killed { resources: Resources },
    /// Refused, holding nothing known (an ended report, or an unknown job).
    Nothing,
}

impl Shard {
    /// Applies a status reported by an agent. Returns what an adopted task holds on the
    /// agent (for `Adopt`), `None` when the task was not adopted.
    pub(super) fn on_status(&mut self, report: &Report<'_>) -> AdoptOutcome {
        let adopted = self.apply_status(report);
        let Report {
            agent,
            task_id,
            state: reported,
            ..
        } = *report;
        if reported.is_terminal() {
            // Acknowledged whatever became of it: the agent stops re-reporting it. The ack
            // leaves only after this round's commit, and under etcd only once the instance's
            // retirement (if it ended for good) is in etcd.
            let key = self
                .tasks
                .get(&task_id)
                .map(|t| self.jobs[t.job].key.clone());
            self.ack_terminal(key.as_ref(), (agent, task_id, reported));
        }
        adopted
    }

    pub(super) fn apply_status(&mut self, report: &Report<'_>) -> AdoptOutcome {
        let Report {
            agent,
            task_id,
            state: reported,
            exit_code,
            message,
            sandbox,
            adopting,
            usage,
        } = *report;
        // Only an end says what the task used; a report without a usage keeps what is known.
        let usage = usage.filter(|_| reported.is_terminal());
        // What an agent says is kept within bounds (a peer's string is never stored whole).
        let message = crate::limits::bounded(message, crate::limits::STATUS_MESSAGE_BYTES_MAX);
        let sandbox = crate::limits::bounded(sandbox, crate::limits::SANDBOX_PATH_BYTES_MAX);
        if matches!(message, std::borrow::Cow::Owned(_))
            || matches!(sandbox, std::borrow::Cow::Owned(_))
        {
            self.metrics().peer_strings_truncated_total.inc();
        }
        let (message, sandbox) = (message.as_ref(), sandbox.as_ref());
        let Some(t) = self.tasks.get_mut(&task_id) else {
            if !reported.is_terminal() {
                tracing::info!(task = %task_id, "agent reports an unknown task: killing it");
                self.send(
                    agent_home(agent),
                    PeerMsg::Kill {
                        agent,
                        task_id,
                        job_key: "".into(),
                    },
                );
            }
            return AdoptOutcome::Nothing;
        };
        // The agent the task was placed on (or restored on), by its stable name: agent
        // numbers change with every registration, names do not.
        let placed_elsewhere = match (&t.host, self.agent_names.get(&agent)) {
            (Some(placed_on), Some(reporter)) => placed_on.name != reporter.name,
            _ => false,
        };
        let decision = lifecycle::adoption(
            t.agent == Some(agent),
            adopting,
            t.agent.is_some(),
            placed_elsewhere,
            t.awaiting_adoption,
            t.state,
            reported,
        );
        match decision {
            lifecycle::Adoption::Apply => {}
            lifecycle::Adoption::Refuse { kill } => {
                if placed_elsewhere {
                    tracing::warn!(
                        task = %task_id,
                        reporter = ?self.agent_names.get(&agent).map(|n| n.name.clone()),
                        placed_on = ?t.host.as_ref().map(|h| h.name.clone()),
                        kill,
                        "refused an agent's claim to a task placed on another agent"
                    );
                }
                if !kill {
                    return AdoptOutcome::Nothing;
                }
                let (key, resources) = (
                    self.jobs[t.job].key_text.clone(),
                    self.jobs[t.job].config_of(t.rev).resources,
                );
                self.kill_on_agent(agent, task_id, key);
                return AdoptOutcome::Killed { resources };
            }
            lifecycle::Adoption::Adopt { holds } => {
                // The agent reconnected under a new number (or the scheduler restarted): move the
                // task to it.
                // The job's spread counts the task where it now is.
                if let Some(old) = t.agent.replace(agent) {
                    if let Some(set) = self.tasks_by_agent.get_mut(&old) {
                        set.remove(&task_id);
                    }
                    if let Some(ids) = self.agent_attr_ids.get(&old) {
                        self.jobs[t.job].spread.remove_attributes(ids);
                    }
                }
                if let Some(ids) = self.agent_attr_ids.get(&agent) {
                    self.jobs[t.job].spread.add_attributes(ids);
                }
                t.awaiting_adoption = false;
                self.tasks_by_agent
                    .entry(agent)
                    .or_default()
                    .insert(task_id);
                // A task that ended while the scheduler was down holds nothing any more; its end
                // is applied below.
                t.holds = holds;
                t.host = self.agent_names.get(&agent).cloned();
                let killing = t.state.is_being_killed();
                let key = self.jobs[t.job].key_text.clone();
                self.log_task(task_id);
                if killing && !reported.is_terminal() {
                    // Being killed when the scheduler went down: the kill may never have
                    // reached the agent, so it is sent again (found by the simulation).
                    self.kill_on_agent(agent, task_id, key);
                }
            }
        }
        let t = self.tasks.get_mut(&task_id).expect("present");
        if !sandbox.is_empty() && t.sandbox.is_empty() {
            t.sandbox = sandbox.to_string();
        }
        if t.state.is_terminal() {
            if reported.is_terminal() {
                // Ended here first (LOST when its agent went, say): the agent's end still
                // says what the run used, once.
                if usage.is_some() && t.usage.is_none() {
                    t.usage = usage;
                    self.log_task(task_id);
                }
                return AdoptOutcome::Nothing;
            }
            // Ended here (LOST when its agent went), still running there: kill it, and count
            // what it holds until it is gone, or its room is given twice.
            let (key, resources) = (
                self.jobs[t.job].key_text.clone(),
                self.jobs[t.job].config_of(t.rev).resources,
            );
            self.kill_on_agent(agent, task_id, key);
            return AdoptOutcome::Killed { resources };
        }
        let used = usage.is_some() && t.usage != usage;
        if used {
            t.usage = usage;
        }
        if reported.is_terminal() {
            t.exit_code = exit_code;
            // A task the scheduler was killing keeps why (`killed by user`, `preempted by
            // production task ...`); other ends say what the agent saw.
            let killing = t.state.is_being_killed();
            if !killing || t.message.is_empty() {
                t.message.clear();
                t.message.push_str(message);
            }
        }
        let resources = self.jobs[t.job].config_of(t.rev).resources;
        let ports: Vec<u16> = t.ports.iter().map(|(_, p)| *p).collect();
        let next = lifecycle::next_state_on_report(t.state, reported);
        if let Some(next) = next {
            self.transition(task_id, next, message);
        } else if used {
            self.log_task(task_id);
        }
        if adopting {
            if let Some(t) = self.tasks.get(&task_id) {
                if !t.state.is_terminal() {
                    return AdoptOutcome::Adopted { resources, ports };
                }
            }
        }
        AdoptOutcome::Nothing
    }

    /// Asks the agent's home shard to kill a task on it (a task the agent should not run).
    pub(super) fn kill_on_agent(&mut self, agent: AgentId, task_id: TaskId, job_key: Arc<str>) {
        self.send(
            agent_home(agent),
            PeerMsg::Kill {
                agent,
                task_id,
                job_key,
            },
        );
    }

    /// The one place a task's state changes. The edge must be in the table: asking for an
    /// illegal one is a programmer error (callers acting on possibly stale input check
    /// `can_transition_to` first). Keeps the per-state counts, stamps the time, and records
    /// the transition for the simulation. Returns the previous state; logging is the caller's.
    pub(super) fn set_state(&mut self, task_id: TaskId, next: TaskState) -> TaskState {
        let now = self.now_us;
        let unix_ms = self.unix_ms;
        let t = self
            .tasks
            .get_mut(&task_id)
            .expect("a state change of a known task");
        let prev = t.state;
        assert!(
            prev.can_transition_to(next),
            "illegal transition of task {task_id}: {prev} -> {next}"
        );
        t.state = next;
        t.entered_us = now;
        if t.events.len() >= TASK_EVENTS_MAX {
            t.events.remove(0);
        }
        t.events.push(TaskEvent {
            unix_ms,
            state: next,
            message: Box::from(""),
        });
        if next == TaskState::Running {
            t.running_since_us = Some(now);
        }
        if let Some(log) = &mut self.transition_log {
            log.push(Transition {
                task: task_id,
                from: prev,
                to: next,
            });
        }
        self.count_state(Some(prev), next);
        prev
    }

    /// Whether `task_id` exists and may move to `next` now (for requests that can be stale:
    /// a report or a timer about a task that has moved on since).
    pub(super) fn may_transition(&self, task_id: TaskId, next: TaskState) -> bool {
        self.tasks
            .get(&task_id)
            .is_some_and(|t| t.state.can_transition_to(next))
    }

    /// Moves a task to `next` (a legal edge) and applies the consequences: resources, kills,
    /// rescheduling.
    pub(super) fn transition(&mut self, task_id: TaskId, next: TaskState, why: &str) {
        let now = self.now_us;
        let prev = self.set_state(task_id, next);
        let t = self.tasks.get_mut(&task_id).expect("just changed");
        if !why.is_empty() {
            if let Some(event) = t.events.last_mut() {
                event.message = Box::from(why);
            }
        }
        if (t.message.is_empty() || !next.is_terminal()) && t.message != why {
            // Reuses the string's buffer: no allocation per transition.
            t.message.clear();
            t.message.push_str(why);
        }
        let job = t.job;
        let agent = t.agent;
        self.log_task(task_id);
        if !self.updating.is_empty() {
            self.update_saw_transition(task_id, prev, next);
        }
        match next {
            _ if next.is_being_killed() => {
                if let Some(agent) = agent {
                    let retry_us = self.config.service.initial_task_kill_retry_interval_ms * 1000;
                    let t = self.tasks.get_mut(&task_id).expect("just changed");
                    t.next_kill_retry_us = now + retry_us.max(1);
                    t.kill_retries = 0;
                    let key = self.jobs[job].key_text.clone();
                    self.send(
                        agent_home(agent),
                        PeerMsg::Kill {
                            agent,
                            task_id,
                            job_key: key,
                        },
                    );
                } else {
                    // Nothing runs anywhere: the kill is immediate.
                    self.transition(task_id, TaskState::Killed, why);
                }
                return;
            }
            _ => {}
        }
        if next.is_terminal() {
            self.task_ended(task_id, prev, now);
        }
    }

    pub(super) fn task_ended(&mut self, task_id: TaskId, prev: TaskState, now: u64) {
        let t = self.tasks.get_mut(&task_id).expect("present");
        let job = t.job;
        let instance = t.instance;
        if let Some(agent) = t.agent {
            if t.holds {
                t.holds = false;
                let resources = self.jobs[job].config_of(t.rev).resources;
                self.send(
                    agent_home(agent),
                    PeerMsg::Release {
                        agent,
                        task_id,
                        resources,
                    },
                );
            }
            if let Some(set) = self.tasks_by_agent.get_mut(&agent) {
                set.remove(&task_id);
                if set.is_empty() {
                    self.tasks_by_agent.remove(&agent);
                }
            }
            if let Some(ids) = self.agent_attr_ids.get(&agent) {
                self.jobs[job].spread.remove_attributes(ids);
            }
        }
        let t = self.tasks.get(&task_id).expect("present");
        let final_state = t.state;
        // Losing the agent is not the task's fault (no flapping penalty); a user's kill is
        // never replaced; preemption and drains fold in through the previous state.
        let interruption = lifecycle::end_interruption(t.killed_by_user, final_state);
        let config = self.jobs[job].config_of(t.rev);
        let outcome = lifecycle::on_terminal(
            &self.config.lifecycle,
            &TaskEnd {
                previous_state: prev,
                final_state,
                interruption,
                is_service: config.is_service,
                max_task_failures: config.max_task_failures,
                prior_failures: t.failure_count,
                ran_for_ms: t
                    .running_since_us
                    .map(|since| now.saturating_sub(since) / 1000),
                prior_consecutive_flaps: t.consecutive_flaps,
            },
        );
        let failure_count = outcome.failures;
        let mut decision = match outcome.reschedule {
            Reschedule::No => None,
            Reschedule::Now => Some((0, outcome.consecutive_flaps)),
            Reschedule::After { delay_ms } => Some((delay_ms, outcome.consecutive_flaps)),
        };
        // An update moved the instance to another revision: the replacement starts at once
        // on it, with fresh counts (its failures are the new configuration's).
        let j = &self.jobs[job];
        if t.rev != j.desired_rev(instance) && !j.retired[instance as usize] {
            decision = Some((0, 0));
        }
        if let Some(t) = self.tasks.get_mut(&task_id) {
            if t.failure_count != failure_count {
                t.failure_count = failure_count;
                self.log_task(task_id);
            }
        }
        // Retire into history.
        self.jobs[job].history.push_back(task_id);
        if self.jobs[job].current[instance as usize] == Some(task_id) {
            self.jobs[job].current[instance as usize] = None;
        }
        self.ended.push_back((now, task_id));
        self.log(&LogRecord::TaskEnded { id: task_id });
        self.prune_history_over_max(job, now);
        // Ended for good: it no longer holds quota, and a new leader must not start it again.
        if decision.is_none() && self.retire_instance(job, instance) && self.is_ha() {
            let key = self.jobs[job].key.clone();
            self.write_job_desired(&key);
        }
        if let Some((delay_ms, flaps)) = decision {
            let fresh = self.tasks[&task_id].rev != self.jobs[job].desired_rev(instance);
            let failures = if fresh { 0 } else { failure_count };
            self.new_task(job, instance, failures, flaps, delay_ms);
        }
    }
}
