//! Steps and time: applying an event, advancing the clock through timers and ticks, the
//! invariant checks after each step, and settling into a quiet cluster.

use super::*;

impl World {
    // ----- time -----

    /// Lets `ms` of simulated time pass, firing timers and ticks in order.
    pub fn advance(&mut self, ms: u64) -> Result<(), Violation> {
        let target = self.now_us + ms * 1000;
        // Whatever is queued now is handled now.
        self.run_rounds();
        loop {
            self.result()?;
            let next_timer = self.timers.keys().next().map(|k| k.0);
            let next = next_timer.map_or(self.next_tick_us, |t| t.min(self.next_tick_us));
            if next > target {
                break;
            }
            self.now_us = self.now_us.max(next);
            self.rounds_this_step = 0;
            if next_timer == Some(next) {
                let key = *self.timers.keys().next().expect("present");
                let timer = self.timers.remove(&key).expect("present");
                self.fire(timer);
            } else {
                self.next_tick_us += TICK_US;
                for i in 0..self.instances.len() {
                    if self.instances[i].up {
                        if let Some(c) = self.instances[i].coordinator.as_mut() {
                            if let Err(v) = c.pump(next) {
                                self.fail(v);
                            }
                        }
                    }
                }
                for i in 0..self.instances.len() {
                    for s in 0..self.instances[i].inbound.len() {
                        self.push_inbound(i, s, Inbound::Tick);
                    }
                }
            }
            self.run_rounds();
            if std::mem::take(&mut self.dirty) {
                self.check();
            }
        }
        self.now_us = target;
        self.stats.simulated_ms = (self.now_us - 1_000_000) / 1000;
        self.result()
    }

    pub(super) fn fire(&mut self, timer: Timer) {
        let now_ms = self.now_ms();
        if !matches!(timer, Timer::Heartbeat { .. }) {
            self.log(|| format!("timer {timer:?}"));
        }
        match timer {
            Timer::Agent {
                agent,
                incarnation,
                timer,
            } => {
                if self.agents[agent].incarnation != incarnation {
                    return;
                }
                let timers = self.agents[agent].on_timer(timer, now_ms);
                for (delay_ms, timer) in timers {
                    self.arm(
                        delay_ms * 1000,
                        Timer::Agent {
                            agent,
                            incarnation,
                            timer,
                        },
                    );
                }
                self.flush_agent(agent);
                self.dirty = true;
            }
            Timer::Connect { agent, incarnation } => {
                if self.agents[agent].incarnation == incarnation {
                    self.connect_agent(agent);
                }
            }
            Timer::Heartbeat { agent, session } => {
                if self.agents[agent].session() == Some(session) {
                    if let Some(&key) = self.agent_conns.get(&agent) {
                        let bytes = self.encoder.heartbeat(now_ms).to_vec();
                        self.send_on(key, &[bytes]);
                    }
                    self.arm(HEARTBEAT_MS * 1000, Timer::Heartbeat { agent, session });
                }
            }
            Timer::AgentBack { agent, incarnation } => {
                let a = &mut self.agents[agent];
                if a.incarnation == incarnation && !a.alive {
                    a.alive = true;
                    self.connect_agent(agent);
                }
            }
            Timer::Restart { shards } => {
                if !self.instances[0].up {
                    self.boot(0, shards);
                    self.dirty = true;
                }
            }
            Timer::Elect { next, same_term } => {
                if self.etcd.as_ref().is_some_and(|e| e.leader.is_none()) {
                    self.elect(next, same_term);
                    self.dirty = true;
                }
            }
            Timer::Etcd { instance } => {
                let now = self.now_us;
                let fail_percent = self.etcd.as_ref().map_or(0, |e| e.fail_percent);
                let rng = &mut self.rng;
                let answers = match self.etcd.as_mut() {
                    Some(etcd) => etcd.complete_due(instance, now, || rng.percent(fail_percent)),
                    None => Vec::new(),
                };
                if let Some(c) = &self.instances[instance].control {
                    for (shard, answer) in answers {
                        self.log(|| format!("etcd answers {instance}/{shard}: {answer:?}"));
                        c.send(shard, answer);
                    }
                }
                self.dirty = true;
            }
        }
    }

    // ----- events -----

    /// One step: the event, the rounds it causes, the invariants.
    pub fn apply(&mut self, event: &Event) -> Result<(), Violation> {
        self.result()?;
        self.log(|| format!("EVENT {event:?}"));
        self.stats.events += 1;
        self.rounds_this_step = 0;
        let n_agents = self.agents.len().max(1);
        let n_clients = self.clients.len().max(1);
        match event {
            Event::Advance { ms } => return self.advance(*ms).and_then(|()| self.check_now()),
            Event::AgentStart { agent } => self.start_agent(agent % n_agents),
            Event::AgentDisconnect { agent, down_ms } => {
                self.disconnect_agent(agent % n_agents, *down_ms)
            }
            Event::AgentRestart { agent, down_ms } => {
                self.restart_agent(agent % n_agents, *down_ms)
            }
            Event::LoseAcks { agent, count } => self.agents[agent % n_agents].lose_acks += count,
            Event::GarbleStatuses {
                agent,
                duplicate,
                reorder,
                ms,
            } => {
                let until = self.now_us + ms * 1000;
                let a = &mut self.agents[agent % n_agents];
                a.garble_until_us = until;
                a.garble_duplicate = *duplicate;
                a.garble_reorder = *reorder;
            }
            Event::CreateJob { client, key, job } => {
                if let Ok(job_key) = key.parse::<borealis_core::JobKey>() {
                    let config = job.task_config(&job_key);
                    let (instances, explicit) = (job.instances, job.tier_explicit);
                    self.client_request(
                        client % n_clients,
                        Request::Create { key: key.clone() },
                        |e, id| e.create_job_spec(id, instances, &config, explicit).to_vec(),
                    );
                }
            }
            Event::KillJob {
                client,
                key,
                instances,
            } => {
                if let Ok(job_key) = key.parse::<borealis_core::JobKey>() {
                    self.client_request(
                        client % n_clients,
                        Request::Kill {
                            key: key.clone(),
                            instances: instances.clone(),
                        },
                        |e, id| e.kill_job(id, &job_key, instances).to_vec(),
                    );
                }
            }
            Event::QueryJob { client, key } => {
                if let Ok(job_key) = key.parse::<borealis_core::JobKey>() {
                    self.client_request(
                        client % n_clients,
                        Request::Query { key: key.clone() },
                        |e, id| e.query_job(id, &job_key).to_vec(),
                    );
                }
            }
            Event::SetQuota {
                client,
                role,
                cpu_millis,
                ram_mib,
                disk_mib,
            } => {
                let quota = borealis_core::Resources {
                    cpu_millis: *cpu_millis,
                    ram_mib: *ram_mib,
                    disk_mib: *disk_mib,
                    ports: 0,
                };
                self.client_request(
                    client % n_clients,
                    Request::SetQuota { role: role.clone() },
                    |e, id| e.set_quota(id, role, &quota).to_vec(),
                );
            }
            Event::ClientDisconnect { client } => {
                if let Some(key) = self.clients[client % n_clients].conn {
                    self.drop_conn(key, true);
                }
            }
            Event::ListJobs { client } => {
                let acked_before = self.ledger.acked_creates.iter().cloned().collect();
                self.client_request(
                    client % n_clients,
                    Request::List { acked_before },
                    |e, id| e.list_jobs(id).to_vec(),
                );
            }
            Event::Crash {
                after_rounds,
                point,
                down_ms,
                restart_shards,
            } => {
                if self.cfg.mode == Mode::Embedded
                    && self.instances[0].up
                    && self.pending_crash.is_none()
                {
                    self.pending_crash = Some(PendingCrash {
                        rounds_left: *after_rounds,
                        point: *point,
                        down_ms: *down_ms,
                        restart_shards: *restart_shards,
                    });
                    if *after_rounds == 0 && *point == CrashPoint::BetweenRounds {
                        self.crash_now();
                    }
                }
            }
            Event::LeaderLoss {
                pause_ms,
                next,
                same_term,
            } => self.leader_loss(*pause_ms, *next, *same_term),
            Event::SlowEtcd {
                delay_ms,
                fail_percent,
                ms,
            } => {
                let until = self.now_us + ms * 1000;
                if let Some(etcd) = self.etcd.as_mut() {
                    etcd.slow_until_us = until;
                    etcd.slow_delay_ms = *delay_ms;
                    etcd.fail_percent = *fail_percent;
                }
            }
            Event::Settle => return self.settle(),
        }
        self.run_rounds();
        self.check_now()
    }

    pub(super) fn check_now(&mut self) -> Result<(), Violation> {
        self.dirty = false;
        self.check();
        self.result()
    }

    /// Every instance's shards, audited.
    pub fn audits(&self) -> Vec<InstanceAudit> {
        self.instances
            .iter()
            .enumerate()
            .map(|(i, inst)| InstanceAudit {
                instance: i,
                up: inst.up,
                shards: inst.shards.iter().map(Shard::audit).collect(),
            })
            .collect()
    }

    pub(super) fn check(&mut self) {
        if self.failed.is_some() {
            return;
        }
        self.stats.checks += 1;
        let audits = self.audits();
        if !self.ledger.reviving.is_empty() {
            self.ledger
                .note_updates_landed(|key| super::net::latest_update_id(&audits, key));
        }
        let ended = invariants::newly_ended_instances(&audits, &self.ledger);
        self.ledger.ended_instances.extend(ended);
        let view = View {
            instances: &audits,
            agents: &self.agents,
            ledger: &self.ledger,
            etcd: self.etcd.as_ref(),
            now_us: self.now_us,
            crashes: self.stats.crashes,
            elections: self.stats.elections,
        };
        let result = self.checker.step(&view);
        let counts = self.checker.quota_counts;
        self.stats.quota_admitted = counts.admitted;
        self.stats.quota_released = counts.released;
        self.stats.over_quota_checks = counts.over_quota;
        if let Err(v) = result {
            self.fail(v);
        }
    }

    /// Whether nothing is in flight anywhere and every agent is registered with the leader.
    pub(super) fn quiet(&self) -> bool {
        let leader = match &self.etcd {
            Some(etcd) => match etcd.leader {
                Some(l) => l,
                None => return false,
            },
            None => 0,
        };
        if self.etcd.as_ref().is_some_and(Etcd::in_flight) {
            return false;
        }
        if self.timers.values().any(Timer::unsettling) {
            return false;
        }
        for (i, inst) in self.instances.iter().enumerate() {
            if !inst.up {
                return false;
            }
            for s in 0..inst.shards.len() {
                if !inst.inbound[s].is_empty()
                    || !inst.shards[s].is_idle()
                    || inst.control.as_ref().is_some_and(|c| c.has_messages_for(s))
                {
                    return false;
                }
            }
            if i == leader {
                // The leader acts, and no offer is held for a preemptor (a hold resolves when
                // its victims end, or expires).
                let settled = inst.shards.iter().all(|s| {
                    let audit = s.audit();
                    audit.acting && audit.home_agents.iter().all(|a| a.held_free.is_none())
                });
                if !settled {
                    return false;
                }
            }
        }
        self.agents
            .iter()
            .enumerate()
            .filter(|(_, a)| a.alive)
            .all(|(idx, a)| {
                a.is_registered()
                    && !a.busy()
                    && self.agent_conns.get(&idx).is_some_and(|k| k.0 == leader)
            })
    }

    /// Heals every fault, waits (simulated) until the cluster is quiet past the
    /// reconciliation grace, and checks the quiet invariants.
    pub fn settle(&mut self) -> Result<(), Violation> {
        self.result()?;
        self.crash_now();
        for a in &mut self.agents {
            a.lose_acks = 0;
            a.garble_until_us = 0;
        }
        if let Some(etcd) = self.etcd.as_mut() {
            etcd.slow_until_us = 0;
            if etcd.leader.is_none()
                && !self
                    .timers
                    .values()
                    .any(|t| matches!(t, Timer::Elect { .. }))
            {
                let next = etcd.last_leader.unwrap_or(0);
                self.elect(next, true);
            }
        }
        let deadline = self.now_us + SETTLE_MAX_US;
        let grace_us = self.cfg.reconciliation_grace_ms * 1000 + SWEEP_US + TICK_US;
        // Quiet means quiet for a whole sweep: a shard retries some work on its sweep (a failed
        // desired-state write) that nothing outside it can see as pending.
        let mut quiet_since: Option<u64> = None;
        loop {
            self.advance(100)?;
            let since = self.instances.iter().map(|i| i.since_us).max().unwrap_or(0);
            if self.quiet() {
                let from = *quiet_since.get_or_insert(self.now_us);
                if self.now_us >= since + grace_us && self.now_us >= from + SWEEP_US + TICK_US {
                    break;
                }
            } else {
                quiet_since = None;
            }
            if self.now_us > deadline {
                return Err(Violation::new(
                    "quiescence_reached",
                    format!(
                        "the cluster did not settle within {} s of simulated time",
                        SETTLE_MAX_US / 1_000_000
                    ),
                ));
            }
        }
        self.stats.checks += 1;
        let audits = self.audits();
        let view = View {
            instances: &audits,
            agents: &self.agents,
            ledger: &self.ledger,
            etcd: self.etcd.as_ref(),
            now_us: self.now_us,
            crashes: self.stats.crashes,
            elections: self.stats.elections,
        };
        if let Err(v) = invariants::quiet(&view) {
            self.fail(v);
        }
        self.result()
    }
}
