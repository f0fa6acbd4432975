//! The simulated network: connections between the shards and the agents and clients, what
//! each side sends, and what the shards' output makes the agents and clients do.

use super::*;

impl World {
    // ----- connections -----

    pub(super) fn open_conn(&mut self, i: usize, s: usize, endpoint: Endpoint) -> ConnKey {
        let conn = self.next_conn;
        self.next_conn += 1;
        let key = (i, s, conn);
        let pipe: SharedPipe = Default::default();
        let peer: SocketAddr = match endpoint {
            Endpoint::Agent(a) => {
                SocketAddr::from(([10, 1, (a / 250) as u8, (a % 250 + 1) as u8], 40_000))
            }
            Endpoint::Client(c) => SocketAddr::from(([10, 2, 0, (c % 250 + 1) as u8], 50_000)),
        };
        self.conns.insert(
            key,
            Conn {
                endpoint,
                pipe: pipe.clone(),
                reader: OutputReader::default(),
            },
        );
        self.push_inbound(
            i,
            s,
            Inbound::ConnOpened {
                conn: ConnId(conn),
                peer,
                identity: borealis_net::tls::PeerIdentity::Plain,
                out: Box::new(SimConnOut::new(pipe)),
            },
        );
        key
    }

    pub(super) fn send_on(&mut self, key: ConnKey, messages: &[Vec<u8>]) {
        if messages.is_empty() || !self.conns.contains_key(&key) {
            return;
        }
        self.stats.messages_to_shards += messages.len() as u64;
        for m in messages {
            self.stats.fingerprint = fnv(self.stats.fingerprint, m);
        }
        if self.verbose {
            for m in messages {
                if let Ok(msg) = borealis_net::decode_message(m) {
                    if let Ok((id, owned)) = borealis_net::codec::to_owned(msg) {
                        self.log(|| format!("-> {key:?} #{id} {}", short(&owned)));
                    }
                }
            }
        }
        let messages = verified(messages);
        self.push_inbound(
            key.0,
            key.1,
            Inbound::ConnMessages {
                conn: ConnId(key.2),
                messages,
            },
        );
    }

    /// The connection is gone: its peer learns it, and the shard's reader reports it (when
    /// `tell_shard`: the shard may already have dropped it, or be dead).
    pub(super) fn drop_conn(&mut self, key: ConnKey, tell_shard: bool) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        if tell_shard {
            self.push_inbound(
                key.0,
                key.1,
                Inbound::ConnClosed {
                    conn: ConnId(key.2),
                    reason: "peer closed the connection".into(),
                },
            );
        }
        match conn.endpoint {
            Endpoint::Agent(a) => {
                if self.agent_conns.get(&a) == Some(&key) {
                    self.agent_conns.remove(&a);
                }
                let agent = &mut self.agents[a];
                if agent.session() == Some(key.2) {
                    agent.on_disconnected();
                    if agent.alive {
                        let delay = agent.next_backoff_ms();
                        let incarnation = agent.incarnation;
                        self.arm(
                            delay * 1000,
                            Timer::Connect {
                                agent: a,
                                incarnation,
                            },
                        );
                    }
                }
            }
            Endpoint::Client(c) => {
                let client = &mut self.clients[c];
                if client.conn == Some(key) {
                    client.on_disconnected();
                }
            }
        }
    }

    /// Hands what shard (i, s) wrote to its connections' peers. Returns whether there was any.
    pub(super) fn deliver_outputs(&mut self, i: usize, s: usize) -> bool {
        let keys: Vec<ConnKey> = self
            .conns
            .range((i, s, 0)..=(i, s, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        let mut any = false;
        for key in keys {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let (writes, dropped) = {
                let mut pipe = conn.pipe.borrow_mut();
                (std::mem::take(&mut pipe.writes), pipe.dropped)
            };
            let mut received = Vec::new();
            for w in &writes {
                self.stats.fingerprint = fnv(self.stats.fingerprint, w);
                match conn.reader.read(w) {
                    Ok(mut r) => received.append(&mut r),
                    Err(e) => {
                        self.fail(Violation::new("shard_output_decodes", e));
                        return true;
                    }
                }
            }
            let endpoint = conn.endpoint;
            for r in &received {
                self.log(|| {
                    format!(
                        "<- {key:?} {endpoint:?} #{} {}",
                        r.request_id,
                        short(&r.message)
                    )
                });
            }
            if !received.is_empty() {
                any = true;
                self.stats.messages_from_shards += received.len() as u64;
                match endpoint {
                    Endpoint::Agent(a) => self.agent_receive(a, key, received),
                    Endpoint::Client(c) => self.client_receive(c, received),
                }
            }
            if dropped {
                any = true;
                self.drop_conn(key, true);
            }
        }
        any
    }

    // ----- agents -----

    pub(super) fn agent_receive(
        &mut self,
        a: usize,
        key: ConnKey,
        received: Vec<crate::wire::Received>,
    ) {
        if self.agents[a].session() != Some(key.2) {
            return;
        }
        let now_ms = self.now_ms();
        for r in received {
            let timers = match r.message {
                OwnedMessage::AgentRegistered { .. } => {
                    self.agents[a].on_registered();
                    Vec::new()
                }
                OwnedMessage::LaunchTask(launch) => {
                    self.stats.launches += 1;
                    self.agents[a].on_launch(launch, now_ms)
                }
                OwnedMessage::Reconcile { task_ids } => {
                    self.stats.reconciliations += 1;
                    self.agents[a].on_reconcile(&task_ids);
                    Vec::new()
                }
                OwnedMessage::KillTask { task_id } => {
                    let job_key = r.kill_job_key.unwrap_or_default();
                    self.agents[a].on_kill(task_id, &job_key, now_ms)
                }
                OwnedMessage::StatusAck(acks) => {
                    let agent = &mut self.agents[a];
                    let lost = agent.lose_acks > 0;
                    if !lost {
                        for (id, state) in &acks {
                            if state.is_terminal() {
                                let (job, instance) = agent
                                    .tasks
                                    .get(id)
                                    .map(|t| (t.job_key.clone(), t.instance))
                                    .unwrap_or_default();
                                self.ledger
                                    .acked_terminals
                                    .insert(*id, (*state, job, instance));
                            }
                        }
                    }
                    self.agents[a].on_status_ack(&acks)
                }
                OwnedMessage::Error {
                    code: ErrorCode::NotLeader,
                    leader,
                    ..
                } => {
                    let n = self.instances.len();
                    let agent = &mut self.agents[a];
                    agent.target = leader
                        .as_deref()
                        .and_then(|l| instance_of_address(l, n))
                        .unwrap_or((agent.target + 1) % n);
                    Vec::new()
                }
                _ => Vec::new(),
            };
            let incarnation = self.agents[a].incarnation;
            for (delay_ms, timer) in timers {
                self.arm(
                    delay_ms * 1000,
                    Timer::Agent {
                        agent: a,
                        incarnation,
                        timer,
                    },
                );
            }
        }
        self.flush_agent(a);
    }

    pub(super) fn flush_agent(&mut self, a: usize) {
        let now = self.now_us;
        let statuses = self.agents[a].take_outbox(now, &mut self.rng);
        let Some(&key) = self.agent_conns.get(&a) else {
            return;
        };
        if statuses.is_empty() {
            return;
        }
        let messages: Vec<Vec<u8>> = statuses
            .iter()
            .map(|s| self.encoder.task_status(s).to_vec())
            .collect();
        self.send_on(key, &messages);
    }

    pub(super) fn connect_agent(&mut self, a: usize) {
        let agent = &self.agents[a];
        if !agent.alive || agent.link != Link::Down {
            return;
        }
        let n = self.instances.len();
        let target = agent.target % n;
        if !self.instances[target].up {
            let agent = &mut self.agents[a];
            agent.target = (target + 1) % n;
            let delay = agent.next_backoff_ms();
            let incarnation = agent.incarnation;
            self.arm(
                delay * 1000,
                Timer::Connect {
                    agent: a,
                    incarnation,
                },
            );
            return;
        }
        let s = self.rng.below(self.instances[target].shard_count as u64) as usize;
        let key = self.open_conn(target, s, Endpoint::Agent(a));
        self.agent_conns.insert(a, key);
        let agent = &mut self.agents[a];
        agent.link = Link::Up {
            session: key.2,
            registered: false,
        };
        let registration = agent.registration();
        let bytes = self.encoder.register_agent(&registration).to_vec();
        self.send_on(key, &[bytes]);
        self.arm(
            HEARTBEAT_MS * 1000,
            Timer::Heartbeat {
                agent: a,
                session: key.2,
            },
        );
    }

    pub(super) fn start_agent(&mut self, a: usize) {
        let agent = &mut self.agents[a];
        if agent.alive || agent.incarnation > 0 {
            return;
        }
        agent.alive = true;
        agent.target = 0;
        if let Some(etcd) = &self.etcd {
            agent.target = etcd.leader.unwrap_or(0);
        }
        self.connect_agent(a);
    }

    pub(super) fn disconnect_agent(&mut self, a: usize, down_ms: u64) {
        let Some(&key) = self.agent_conns.get(&a) else {
            return;
        };
        self.conns.remove(&key);
        self.agent_conns.remove(&a);
        self.push_inbound(
            key.0,
            key.1,
            Inbound::ConnClosed {
                conn: ConnId(key.2),
                reason: "simulated network failure".into(),
            },
        );
        let agent = &mut self.agents[a];
        agent.on_disconnected();
        let incarnation = agent.incarnation;
        self.arm(
            down_ms * 1000,
            Timer::Connect {
                agent: a,
                incarnation,
            },
        );
    }

    pub(super) fn restart_agent(&mut self, a: usize, down_ms: u64) {
        if !self.agents[a].alive {
            return;
        }
        if let Some(key) = self.agent_conns.remove(&a) {
            self.conns.remove(&key);
            self.push_inbound(
                key.0,
                key.1,
                Inbound::ConnClosed {
                    conn: ConnId(key.2),
                    reason: "agent died".into(),
                },
            );
        }
        let agent = &mut self.agents[a];
        agent.die();
        let incarnation = agent.incarnation;
        self.arm(
            down_ms * 1000,
            Timer::AgentBack {
                agent: a,
                incarnation,
            },
        );
    }

    // ----- clients -----

    /// Sends a client request (connecting first); returns its request id.
    /// Client `c` authenticates each new connection with `token` from now on; its current
    /// connection is closed, so the next request opens (and authenticates) a new one.
    pub fn set_client_token(&mut self, c: usize, token: Option<&str>) {
        if let Some(key) = self.clients[c].conn.take() {
            self.drop_conn(key, true);
        }
        self.clients[c].token = token.map(str::to_string);
    }

    pub fn client_request(
        &mut self,
        c: usize,
        request: Request,
        encode: impl FnOnce(&mut Encoder, u64) -> Vec<u8>,
    ) -> u64 {
        let id = self.clients[c].request_id();
        let n = self.instances.len();
        let target = self.clients[c].target % n;
        if let Some(key) = self.clients[c].conn {
            if key.0 != target {
                self.drop_conn(key, true);
            }
        }
        if self.clients[c].conn.is_none() {
            if !self.instances[target].up {
                self.clients[c].replies.insert(id, Reply::Lost);
                self.clients[c].target = (target + 1) % n;
                return id;
            }
            let s = self.rng.below(self.instances[target].shard_count as u64) as usize;
            let key = self.open_conn(target, s, Endpoint::Client(c));
            self.clients[c].conn = Some(key);
            if let Some(token) = self.clients[c].token.clone() {
                // Its answer (not in flight) is skipped; the shard reads the connection in
                // order, so the request below is the authenticated principal's.
                let auth_id = self.clients[c].request_id();
                let bytes = self.encoder.authenticate(auth_id, &token).to_vec();
                self.send_on(key, &[bytes]);
            }
        }
        match &request {
            Request::Create { key } => self.ledger.note_create_sent(key),
            Request::StartUpdate {
                key,
                instances,
                scope,
            } => {
                let latest = latest_update_id(&self.audits(), key).unwrap_or(0);
                self.ledger.note_update_sent(key, *instances, scope, latest);
            }
            Request::ScheduleCron { key } => self.ledger.note_cron_sent(key),
            _ => {}
        }
        let key = self.clients[c].conn.expect("connected");
        let bytes = encode(&mut self.encoder, id);
        self.clients[c].in_flight.insert(id, request);
        self.send_on(key, &[bytes]);
        id
    }

    pub(super) fn client_receive(&mut self, c: usize, received: Vec<crate::wire::Received>) {
        for r in received {
            let Some(request) = self.clients[c].in_flight.remove(&r.request_id) else {
                continue;
            };
            if let OwnedMessage::Error {
                code: ErrorCode::NotLeader,
                leader,
                ..
            } = &r.message
            {
                let n = self.instances.len();
                let client = &mut self.clients[c];
                client.target = leader
                    .as_deref()
                    .and_then(|l| instance_of_address(l, n))
                    .unwrap_or((client.target + 1) % n);
            }
            match self.ledger.on_reply(&request, &r.message) {
                Ok(reply) => {
                    match (&request, &reply) {
                        (Request::Create { .. }, Reply::Ack) => self.stats.creates_acked += 1,
                        (
                            Request::Create { .. },
                            Reply::Error {
                                code: ErrorCode::QuotaExceeded,
                                ..
                            },
                        ) => {
                            self.stats.requests_refused += 1;
                            self.stats.quota_refusals += 1;
                        }
                        (_, Reply::Error { .. }) => self.stats.requests_refused += 1,
                        _ => {}
                    }
                    self.clients[c].replies.insert(r.request_id, reply);
                }
                Err(v) => self.fail(v),
            }
        }
    }

    pub fn reply(&self, c: usize, id: u64) -> Option<&Reply> {
        self.clients[c].replies.get(&id)
    }
}

/// The id of `key`'s latest update as the acting instance holds it (0: none); None when no
/// acting shard holds the job.
pub(super) fn latest_update_id(
    audits: &[crate::invariants::InstanceAudit],
    key: &str,
) -> Option<u64> {
    let key: borealis_core::JobKey = key.parse().ok()?;
    audits
        .iter()
        .filter(|i| i.acting())
        .flat_map(|i| i.shards.iter())
        .filter(|s| s.acting)
        .flat_map(|s| s.jobs.iter())
        .find(|j| j.key == key)
        .map(|j| j.update.as_ref().map_or(0, |u| u.id))
}

/// One line for a message in the log.
fn short(m: &OwnedMessage) -> String {
    match m {
        OwnedMessage::RegisterAgent(r) => format!(
            "RegisterAgent {} tasks {:?}",
            r.agent_id,
            r.tasks
                .iter()
                .map(|t| (t.task_id.to_string(), t.state))
                .collect::<Vec<_>>()
        ),
        OwnedMessage::TaskStatus(s) => format!(
            "TaskStatus {} {}/{} {}",
            s.task_id, s.job_key, s.instance, s.state
        ),
        OwnedMessage::LaunchTask(l) => {
            format!("LaunchTask {} {}/{}", l.task_id, l.job_key, l.instance)
        }
        OwnedMessage::CreateJob {
            job_key, instances, ..
        } => format!("CreateJob {job_key} x{instances}"),
        OwnedMessage::JobStatus(s) => format!(
            "JobStatus {} {:?}",
            s.job.job_key,
            s.tasks
                .iter()
                .map(|t| (t.instance, t.task_id, t.state))
                .collect::<Vec<_>>()
        ),
        other => {
            let text = format!("{other:?}");
            text.chars().take(200).collect()
        }
    }
}
