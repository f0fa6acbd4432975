//! Placement: pending tasks against the offers this shard owns, and lending offers between
//! shards (borrow, lend, return).

use super::*;

/// Raises `max` to `free` in every dimension.
fn max_each(max: &mut Option<Resources>, free: Resources) {
    let max = max.get_or_insert(Resources::ZERO);
    max.cpu_millis = max.cpu_millis.max(free.cpu_millis);
    max.ram_mib = max.ram_mib.max(free.ram_mib);
    max.disk_mib = max.disk_mib.max(free.disk_mib);
    max.ports = max.ports.max(free.ports);
}

impl Shard {
    pub(super) fn next_peer(&self, after: ShardId) -> ShardId {
        let mut next = (after.0 + 1) % self.shard_count;
        if next == self.id.0 {
            next = (next + 1) % self.shard_count;
        }
        ShardId(next)
    }

    /// A home agent's offer (out of the index already) goes to a peer: the loan it travels as.
    pub(super) fn mark_lent(&mut self, agent: AgentId, free: Resources) -> LentOffer {
        let a = self.home_agents.get_mut(&agent).expect("a home agent");
        a.offer = OfferWhere::Lent;
        self.lent_out += 1;
        LentOffer {
            agent,
            agent_name: a.name.clone(),
            hostname: a.hostname.clone(),
            attributes: a.attributes.clone(),
            total: a.total,
            free,
        }
    }

    pub(super) fn lend(&mut self, to: ShardId, demand: Resources) {
        let mut offers = Vec::new();
        let mut candidates: Vec<AgentId> = self
            .home_agents
            .iter()
            .filter(|(_, a)| matches!(a.offer, OfferWhere::Home))
            .map(|(id, _)| *id)
            .collect();
        // In agent order, not the map's: which offers are lent must not depend on hashing.
        candidates.sort_unstable();
        for agent in candidates {
            if offers.len() == LEND_OFFERS_MAX {
                break;
            }
            let Some(free) = self.index.free(agent) else {
                continue;
            };
            if !free.contains(&demand) {
                continue;
            }
            self.index.remove_agent(agent);
            offers.push(self.mark_lent(agent, free));
        }
        self.send(
            to,
            PeerMsg::Lend {
                offers,
                reserved_for: None,
            },
        );
    }

    /// Gives every borrowed offer back to its home (end of each round).
    pub fn return_borrowed(&mut self) {
        if self.borrowed.is_empty() {
            return;
        }
        let borrowed: Vec<AgentId> = self.borrowed.drain().collect();
        for agent in borrowed {
            if let Some(free) = self.index.remove_agent(agent) {
                self.send(agent_home(agent), PeerMsg::Return { agent, free });
            }
        }
    }

    /// Notes that an offer changed and how much it now has free: blocked jobs whose demand fits
    /// what changed are retried before their penalty ends (see `schedule`).
    pub(super) fn retry_blocked(&mut self, free: Resources) {
        max_each(&mut self.changed_free_max, free);
    }

    /// Puts a job that could not place all its tasks under Aurora's schedule penalty: its
    /// remaining tasks wait `--initial-schedule-penalty`, doubling with each failed attempt
    /// up to `--max-schedule-penalty` (core's `schedule_penalty_ms`).
    fn block_job(&mut self, job: JobIdx, tasks: &[TaskId]) {
        let now = self.now_us;
        let j = &mut self.jobs[job];
        j.blocked.extend_from_slice(tasks);
        let newly_blocked = j.blocked_due_us == 0;
        if newly_blocked {
            j.schedule_failures = j.schedule_failures.saturating_add(1);
            let penalty_ms =
                lifecycle::schedule_penalty_ms(&self.config.lifecycle, j.schedule_failures);
            j.blocked_due_us = now + penalty_ms.max(1) * 1000;
            self.blocked_jobs.insert((j.blocked_due_us, job));
        }
        // Explaining visits every agent: at most once per initial penalty per job, however
        // often offers that changed bring the job back early.
        let explain_every_us = self.config.lifecycle.initial_schedule_penalty_ms.max(1) * 1000;
        let j = &mut self.jobs[job];
        if newly_blocked
            && (j.explained_us == 0 || elapsed_us(now, j.explained_us) >= explain_every_us)
        {
            j.explained_us = now.max(1);
            self.explain_pending(job);
        }
    }

    /// Puts a blocked job's tasks back at the front of the queue (they are the oldest).
    fn unblock_job(&mut self, job: JobIdx) -> usize {
        let j = &mut self.jobs[job];
        self.blocked_jobs.remove(&(j.blocked_due_us, job));
        j.blocked_due_us = 0;
        let tasks = std::mem::take(&mut j.blocked);
        let n = tasks.len();
        for id in tasks.into_iter().rev() {
            self.pending.push_front(id);
        }
        n
    }

    /// Blocked jobs due for another attempt: those whose penalty ended, then (a bounded number)
    /// those whose demand fits an offer that changed since. Aurora retries only when the
    /// penalty ends, since Mesos re-offers in bulk; Borealis sees every release, so a job that
    /// now fits a changed offer is tried at once — without resetting its penalty.
    fn retry_due_jobs(&mut self) {
        let now = self.now_us;
        let mut retried = 0;
        while retried < BLOCKED_RETRY_MAX {
            let Some(&(due, job)) = self.blocked_jobs.first() else {
                break;
            };
            if due > now {
                break;
            }
            // Its penalty ended: it may borrow once more.
            self.jobs[job].lend_tried = false;
            retried += self.unblock_job(job);
        }
        if let Some(changed) = self.changed_free_max.take() {
            let fitting: Vec<JobIdx> = self
                .blocked_jobs
                .iter()
                .map(|&(_, job)| job)
                .filter(|&job| changed.contains(&self.jobs[job].config.resources))
                .take(BLOCKED_RETRY_MAX)
                .collect();
            for job in fitting {
                if retried >= BLOCKED_RETRY_MAX {
                    break;
                }
                retried += self.unblock_job(job);
            }
        }
        // Offers lent by a peer: each blocked job tries them once per penalty (a peer lends
        // what fits the demand, not the constraints, so a constraint-blocked job would
        // otherwise retry at every loan: found by the simulation).
        if let Some(lent) = self.lent_free_max.take() {
            let fitting: Vec<JobIdx> = self
                .blocked_jobs
                .iter()
                .map(|&(_, job)| job)
                .filter(|&job| {
                    !self.jobs[job].lend_tried && lent.contains(&self.jobs[job].config.resources)
                })
                .take(BLOCKED_RETRY_MAX)
                .collect();
            for job in fitting {
                if retried >= BLOCKED_RETRY_MAX {
                    break;
                }
                self.jobs[job].lend_tried = true;
                retried += self.unblock_job(job);
            }
        }
    }

    /// Notes an offer a peer lent and what it has free (see `retry_due_jobs`).
    pub(super) fn retry_blocked_lent(&mut self, free: Resources) {
        max_each(&mut self.lent_free_max, free);
    }

    /// Placement attempts this round may make: `ROUND_PLACEMENTS_MAX`, and with Aurora's
    /// `--max-schedule-attempts-per-sec` set (> 0), what its token bucket holds: the rate split
    /// evenly over the shards, refilled by the clock, holding at most one second's worth.
    fn attempt_budget(&mut self) -> usize {
        let rate = self.config.max_schedule_attempts_per_sec;
        if rate <= 0.0 {
            return ROUND_PLACEMENTS_MAX;
        }
        let per_shard = (rate / self.shard_count as f64).max(1.0);
        let elapsed_s = elapsed_us(self.now_us, self.attempts_refilled_us) as f64 / 1e6;
        self.attempts_refilled_us = self.now_us;
        self.attempt_tokens = (self.attempt_tokens + elapsed_s * per_shard).min(per_shard);
        (self.attempt_tokens as usize).min(ROUND_PLACEMENTS_MAX)
    }

    fn spend_attempts(&mut self, attempts: usize) {
        if self.config.max_schedule_attempts_per_sec > 0.0 {
            self.attempt_tokens = (self.attempt_tokens - attempts as f64).max(0.0);
        }
    }

    /// Places pending tasks against the offers this shard owns. Returns how many were placed.
    pub fn schedule(&mut self) -> usize {
        if !self.acting() {
            return 0;
        }
        let mut placed = 0;
        let mut attempts = 0;
        let mut failed_jobs: HashSet<JobIdx> = HashSet::default();
        self.retry_due_jobs();
        let first_delay_us = self.config.first_schedule_delay_ms * 1000;
        let now = self.now_us;
        let attempts_max = self.attempt_budget();
        let mut run = std::mem::take(&mut self.run_tasks);
        let mut agents = std::mem::take(&mut self.run_agents);
        while attempts < attempts_max {
            // Take the run of pending tasks of one job at the front of the queue: placing
            // them as one batch lets the index skip agents the job's limits already exclude.
            run.clear();
            let mut job = None;
            while run.len() < PLACEMENT_BATCH_MAX && attempts + run.len() < attempts_max {
                let Some(&task_id) = self.pending.front() else {
                    break;
                };
                let Some(t) = self.tasks.get(&task_id) else {
                    self.pending.pop_front();
                    continue;
                };
                if t.state != TaskState::Pending {
                    self.pending.pop_front();
                    continue;
                }
                // Aurora's `--first-schedule-delay`: the queue is in PENDING-entry order, so
                // everything behind a task still in its delay is younger.
                if t.entered_us + first_delay_us > now {
                    break;
                }
                // One revision per batch: it places against one compiled config.
                if job.is_some_and(|j| j != (t.job, t.rev)) {
                    break;
                }
                job = Some((t.job, t.rev));
                run.push(task_id);
                self.pending.pop_front();
            }
            let Some((job, rev)) = job else {
                break;
            };
            attempts += run.len();
            if failed_jobs.contains(&job) {
                self.block_job(job, &run);
                continue;
            }
            agents.clear();
            let j = &mut self.jobs[job];
            let compiled = if rev == j.head_rev {
                &j.compiled
            } else {
                &j.others
                    .get(&rev)
                    .expect("a revision the job keeps")
                    .compiled
            };
            let n = self
                .index
                .place_batch(compiled, &mut j.spread, run.len(), &mut agents);
            debug_assert_eq!(n, agents.len());
            for (task_id, agent) in run.iter().zip(agents.iter()) {
                #[cfg(feature = "sim")]
                if self.injected_bug == Some(audit::InjectedBug::ForgetToChargeAgent) {
                    let need = self.jobs[job].config_of(rev).resources;
                    self.index.release(*agent, &need);
                }
                self.assign(*task_id, *agent);
            }
            placed += n;
            if n < run.len() {
                failed_jobs.insert(job);
                self.block_job(job, &run[n..]);
            } else if self.jobs[job].blocked.is_empty() {
                // Placed: the penalty starts over. The last explanation is kept (shown only
                // while the job is blocked), so a job blocked again within the explanation's
                // rate limit still says why. It may try a loan again the next time it is
                // blocked (an update's next batch), not only after a penalty ended (found by
                // the update benchmark: each batch that needed a loan waited out a penalty).
                self.jobs[job].schedule_failures = 0;
                self.jobs[job].lend_tried = false;
            }
        }
        self.run_tasks = run;
        self.run_agents = agents;
        self.spend_attempts(attempts);
        self.placed_since_lend += placed;
        let m = self.metrics();
        m.attempt(AttemptResult::Placed, placed as u64);
        m.attempt(AttemptResult::NoFit, (attempts - placed) as u64);
        if !self.borrowed.is_empty() && placed == 0 && self.placed_since_lend == 0 {
            // Borrowed offers did not help (constraints, not capacity): do not spin on them.
            self.next_borrow_at_us = self.now_us + us(BORROW_BACKOFF);
            self.next_lender = self.next_peer(self.next_lender);
        }
        if !self.blocked_jobs.is_empty()
            && self.shard_count > 1
            && !self.borrow_outstanding
            && self.now_us >= self.next_borrow_at_us
        {
            // For the first blocked job that has not tried a loan since its last penalty.
            let asking = self
                .blocked_jobs
                .iter()
                .map(|&(_, job)| job)
                .find(|&job| !self.jobs[job].lend_tried);
            if let Some(job) = asking {
                let demand = self.jobs[job].config.resources;
                self.borrow_outstanding = true;
                let lender = if self.next_lender == self.id {
                    self.next_peer(self.id)
                } else {
                    self.next_lender
                };
                self.send(lender, PeerMsg::Borrow { demand });
            }
        }
        placed
    }

    /// Applies a placement the index made (it already consumed the resources and counted
    /// the agent in the job's spread): ASSIGNED, then the launch goes to the agent's home.
    pub(super) fn assign(&mut self, task_id: TaskId, agent: AgentId) {
        let now = self.now_us;
        let waited_us = now.saturating_sub(self.tasks[&task_id].entered_us);
        self.set_state(task_id, TaskState::Assigned);
        let t = self.tasks.get_mut(&task_id).expect("pending task");
        t.agent = Some(agent);
        t.holds = true;
        t.message.clear();
        t.host = self.agent_names.get(&agent).cloned();
        let (job, instance, rev) = (t.job, t.instance, t.rev);
        self.tasks_by_agent
            .entry(agent)
            .or_default()
            .insert(task_id);
        self.log_task(task_id);
        self.metrics()
            .placement_latency
            .observe_nanos(waited_us * 1000);
        let config = self.jobs[job].config_of(rev).clone();
        let home = agent_home(agent);
        if home == self.id {
            self.home_launch(self.id, agent, task_id, instance, &config);
        } else {
            self.send(
                home,
                PeerMsg::Launch {
                    agent,
                    task_id,
                    instance,
                    config,
                },
            );
        }
    }
}
