//! Agents whose connections this shard holds (their home): registration and adoption of the
//! tasks they report, their offers, port numbers, launches, releases, and their loss.

use super::*;

impl Shard {
    pub(super) fn register_agent(
        &mut self,
        conn: ConnId,
        request_id: u64,
        r: wire::RegisterAgent<'_>,
    ) {
        if let Err(why) = registration_in_bounds(&r) {
            let why = format!("agent registration refused: {why}");
            if let Some(c) = self.conns.get(&conn) {
                tracing::warn!(shard = %self.id, peer = %c.peer, "{why}");
            }
            let bytes = self
                .encoder
                .error(request_id, ErrorCode::InvalidRequest, &why)
                .to_vec();
            self.write_conn(conn, &bytes);
            return self.close_conn(conn);
        }
        debug_assert!(self.next_agent < (1 << AGENT_HOME_SHIFT));
        let agent = AgentId(((self.id.0 as u64) << AGENT_HOME_SHIFT) | self.next_agent);
        self.next_agent += 1;
        let attributes: borealis_core::Attributes = r
            .attributes()
            .iter()
            .flatten()
            .map(|a| (a.key().to_string(), a.value().to_string()))
            .collect();
        let total = borealis_net::codec::resources_from_wire(r.resources());
        let name: Arc<str> = r.agent_id().into();
        let hostname: Arc<str> = r.hostname().into();
        let port_ranges: Vec<(u16, u16)> = r
            .port_ranges()
            .iter()
            .flatten()
            .filter(|p| p.begin() <= p.end())
            .map(|p| (p.begin(), p.end()))
            .collect();
        tracing::info!(
            shard = %self.id,
            agent = %name,
            host = %hostname,
            ?total,
            "agent registered"
        );
        let mut reports = Vec::new();
        for t in r.tasks().iter().flatten() {
            match state_from_wire(t.state()) {
                Ok(state) => reports.push(TaskStatusReport {
                    task_id: TaskId(t.task_id()),
                    job_key: t.job_key().to_string(),
                    instance: t.instance(),
                    state,
                    exit_code: t.exit_code(),
                    message: t.message().unwrap_or_default().to_string(),
                    timestamp_ms: t.timestamp_ms(),
                    sandbox: t.sandbox().unwrap_or_default().to_string(),
                    usage: t.usage().map(usage_from_wire),
                }),
                Err(e) => tracing::warn!(agent = %name, "ignoring reported task: {e}"),
            }
        }
        let adopting = reports.len();
        let log_address = match (r.log_port(), self.conns.get(&conn)) {
            (0, _) | (_, None) => None,
            (port, Some(c)) => Some(std::net::SocketAddr::new(c.peer.ip(), port)),
        };
        self.home_agents.insert(
            agent,
            HomeAgent {
                conn,
                name: name.clone(),
                hostname: hostname.clone(),
                attributes: Arc::new(attributes),
                total,
                port_ranges,
                ports_in_use: HashMap::default(),
                offer: OfferWhere::Adopting {
                    waiting: adopting,
                    used: Resources::ZERO,
                },
                released_while_lent: Resources::ZERO,
                running: HashMap::default(),
                dying: BTreeMap::new(),
                last_seen_us: self.now_us,
                log_address,
            },
        );
        self.agent_names.insert(
            agent,
            Arc::new(AgentNames {
                name: name.clone(),
                hostname,
            }),
        );
        if let Some(c) = self.conns.get_mut(&conn) {
            c.agent = Some(agent);
        }
        let ack = self.encoder.agent_registered(&name).to_vec();
        self.write_conn(conn, &ack);
        for report in reports {
            let owner = self.owner_of(&report.job_key);
            let a = &self.home_agents[&agent];
            let msg = PeerMsg::Adopt {
                agent,
                report,
                agent_name: a.name.clone(),
                hostname: a.hostname.clone(),
                attributes: a.attributes.clone(),
            };
            self.send(owner, msg);
        }
        self.maybe_offer_adopted(agent);
    }

    /// Puts an agent's offer into the index once every task it reported is confirmed.
    pub(super) fn maybe_offer_adopted(&mut self, agent: AgentId) {
        let Some(a) = self.home_agents.get_mut(&agent) else {
            return;
        };
        if let OfferWhere::Adopting { waiting: 0, used } = a.offer {
            let free = if a.total.contains(&used) {
                a.total.minus(&used)
            } else {
                tracing::warn!(agent = %a.name, "adopted tasks exceed the agent's resources");
                Resources::ZERO
            };
            self.offer_home(agent, free);
        }
    }

    /// Puts an offer into this shard's index and remembers the agent's interned attributes.
    pub(super) fn upsert_offer(
        &mut self,
        agent: AgentId,
        attributes: &borealis_core::Attributes,
        total: Resources,
        free: Resources,
    ) {
        self.index.upsert_agent(agent, attributes, total, free);
        if let Some(ids) = self.index.attribute_ids(agent) {
            self.agent_attr_ids.insert(agent, ids.to_vec());
        }
    }

    pub(super) fn agent_disconnected(&mut self, agent: AgentId, reason: &str) {
        let Some(a) = self.home_agents.remove(&agent) else {
            return;
        };
        tracing::warn!(shard = %self.id, agent = %a.name, host = %a.hostname, "agent lost: {reason}");
        match a.offer {
            OfferWhere::Home => {
                self.index.remove_agent(agent);
            }
            OfferWhere::Lent => self.lent_out -= 1,
            OfferWhere::Adopting { .. } | OfferWhere::Held { .. } | OfferWhere::Parked { .. } => {}
        }
        for shard in ShardId::all(self.shard_count) {
            self.send(shard, PeerMsg::AgentLost { agent });
        }
    }

    pub(super) fn assign_ports(
        &mut self,
        agent: AgentId,
        task_id: TaskId,
        names: &[String],
    ) -> Option<Vec<(String, u16)>> {
        let a = self.home_agents.get_mut(&agent)?;
        if names.is_empty() {
            return Some(Vec::new());
        }
        let used: std::collections::BTreeSet<u16> =
            a.ports_in_use.values().flatten().copied().collect();
        let assigned = borealis_core::ports::assign_ports(&a.port_ranges, &used, names.len())?;
        a.ports_in_use.insert(task_id, assigned.clone());
        Some(names.iter().cloned().zip(assigned).collect())
    }

    pub(super) fn home_launch(
        &mut self,
        from: ShardId,
        agent: AgentId,
        task_id: TaskId,
        instance: u32,
        config: &Arc<TaskConfig>,
    ) {
        let conn = self.home_agents.get(&agent).map(|a| a.conn);
        let ports = conn.and_then(|_| self.assign_ports(agent, task_id, &config.port_names));
        match (conn, ports) {
            (Some(conn), Some(ports)) => {
                // Encoded straight into the connection's frame (disjoint fields, no copy).
                let bytes = self.encoder.launch_task(task_id, instance, config, &ports);
                if let Some(c) = self.conns.get_mut(&conn) {
                    // Configs are bounded at create (`TASK_CONFIG_BYTES_MAX`), so a launch
                    // always fits; were one not to, the task fails to launch rather than
                    // stopping the shard.
                    if let Err(e) = c.writer.push(bytes) {
                        tracing::error!(shard = %self.id, %task_id, "launch not sent: {e}");
                        if let Some(a) = self.home_agents.get_mut(&agent) {
                            a.ports_in_use.remove(&task_id);
                        }
                        self.send(from, PeerMsg::LaunchFailed { task_id });
                        return;
                    }
                }
                let running = preemption::RunningTask::of(from, config, &self.tiers);
                if let Some(a) = self.home_agents.get_mut(&agent) {
                    a.running.insert(task_id, running);
                }
                if !ports.is_empty() {
                    self.send(from, PeerMsg::PortsAssigned { task_id, ports });
                }
            }
            _ => self.send(from, PeerMsg::LaunchFailed { task_id }),
        }
    }

    /// A task refused at registration and being killed has ended on its agent: its room is
    /// free again.
    pub(super) fn release_dying(&mut self, agent: AgentId, task_id: TaskId) {
        let Some(resources) = self
            .home_agents
            .get_mut(&agent)
            .and_then(|a| a.dying.remove(&task_id))
        else {
            return;
        };
        self.home_release(agent, task_id, resources);
    }

    pub(super) fn home_release(&mut self, agent: AgentId, task_id: TaskId, resources: Resources) {
        let Some(a) = self.home_agents.get_mut(&agent) else {
            return;
        };
        a.ports_in_use.remove(&task_id);
        a.running.remove(&task_id);
        match &mut a.offer {
            OfferWhere::Home => {
                self.index.release(agent, &resources);
                let free = self.index.free(agent).unwrap_or(resources);
                self.retry_blocked(free);
            }
            OfferWhere::Lent => {
                a.released_while_lent = a.released_while_lent.plus(&resources);
            }
            OfferWhere::Adopting { used, .. } => {
                // A task released before adoption finished: it no longer counts as used.
                if used.contains(&resources) {
                    *used = used.minus(&resources);
                }
            }
            OfferWhere::Held { free, .. } => {
                *free = free.plus(&resources);
                self.maybe_release_hold(agent);
            }
            OfferWhere::Parked { free } => *free = free.plus(&resources),
        }
    }

    pub(super) fn check_silent_agents(&mut self) {
        let mut silent: Vec<(AgentId, ConnId)> = self
            .home_agents
            .iter()
            .filter(|(_, a)| elapsed_us(self.now_us, a.last_seen_us) > us(AGENT_SILENCE_MAX))
            .map(|(id, a)| (*id, a.conn))
            .collect();
        silent.sort_unstable();
        for (_, conn) in silent {
            self.protocol_error(conn, "agent silent for too long");
        }
    }

    pub(super) fn on_agent_lost(&mut self, agent: AgentId) {
        if self.borrowed.remove(&agent) {
            self.index.remove_agent(agent);
        }
        let mut tasks: Vec<TaskId> = self
            .tasks_by_agent
            .remove(&agent)
            .map(|set| set.into_iter().collect())
            .unwrap_or_default();
        tasks.sort();
        let partition_aware = self.config.service.partition_aware;
        for task_id in tasks {
            let Some(t) = self.tasks.get_mut(&task_id) else {
                continue;
            };
            // The agent is gone with whatever the task held.
            t.holds = false;
            match lifecycle::on_agent_lost(t.state, partition_aware) {
                Some(TaskState::Partitioned) => {
                    // Waits for its agent (or its job's partition policy). It no longer counts
                    // in its job's spread: it is on no agent this shard knows.
                    let job = t.job;
                    if let Some(ids) = self.agent_attr_ids.get(&agent) {
                        self.jobs[job].spread.remove_attributes(ids);
                    }
                    self.set_state(task_id, TaskState::Partitioned);
                    let t = self.tasks.get_mut(&task_id).expect("present");
                    t.message.clear();
                    t.message.push_str("agent partitioned away");
                    self.log_task(task_id);
                }
                Some(next) if self.may_transition(task_id, next) => {
                    self.transition(task_id, next, "agent lost");
                }
                _ => {}
            }
        }
        if partition_aware {
            // A job whose policy does not wait: LOST now rather than at the next sweep.
            self.expire_partitions();
        }
        self.agent_names.remove(&agent);
        self.agent_attr_ids.remove(&agent);
    }
}

/// Whether a registration's strings and lists are within the bounds an agent may register
/// with (`limits`); the error names the field, its size and the bound.
fn registration_in_bounds(r: &wire::RegisterAgent<'_>) -> Result<(), String> {
    use crate::limits::{AGENT_ATTRIBUTES_MAX, AGENT_PORT_RANGES_MAX, AGENT_TEXT_BYTES_MAX};
    let text = |what: &str, value: &str| {
        if value.len() > AGENT_TEXT_BYTES_MAX {
            Err(format!(
                "{what} is {} bytes, more than the {AGENT_TEXT_BYTES_MAX} allowed",
                value.len()
            ))
        } else {
            Ok(())
        }
    };
    text("agent_id", r.agent_id())?;
    text("hostname", r.hostname())?;
    let attributes = r.attributes().map_or(0, |a| a.len());
    if attributes > AGENT_ATTRIBUTES_MAX {
        return Err(format!(
            "{attributes} attributes, more than the {AGENT_ATTRIBUTES_MAX} allowed"
        ));
    }
    for a in r.attributes().iter().flatten() {
        text("an attribute's name", a.key())?;
        text(
            &format!(
                "attribute {:?}'s value",
                crate::limits::bounded(a.key(), 64)
            ),
            a.value(),
        )?;
    }
    let ranges = r.port_ranges().map_or(0, |p| p.len());
    if ranges > AGENT_PORT_RANGES_MAX {
        return Err(format!(
            "{ranges} port ranges, more than the {AGENT_PORT_RANGES_MAX} allowed"
        ));
    }
    Ok(())
}
