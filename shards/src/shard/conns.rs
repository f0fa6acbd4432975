//! The shard's connections: what a client's or agent's message asks for (dispatch), replies,
//! and the round's flush (one coalesced write per connection).

use super::*;

impl Shard {
    pub(super) fn reply(&mut self, reply: ReplyTo, bytes: Vec<u8>) {
        if reply.shard == self.id {
            self.write_conn(reply.conn, &bytes);
        } else {
            self.send(
                reply.shard,
                PeerMsg::ClientReply {
                    conn: reply.conn,
                    bytes,
                },
            );
        }
    }

    pub(super) fn write_conn(&mut self, conn: ConnId, message: &[u8]) {
        if !self.pending_audits.is_empty() {
            self.audit_answer(conn, message);
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Err(e) = c.writer.push(message) {
            // A reply no frame can carry (every reply that can grow is paged or split, so this
            // is a bug to fix, never a panic): the peer gets an error naming its size instead.
            self.metrics().replies_too_large_total.inc();
            let request_id = borealis_net::decode_message(message).map_or(0, |m| m.request_id());
            tracing::error!(shard = %self.id, request_id, "reply not sent: {e}");
            let what = format!("the reply to request {request_id} is too large to send: {e}");
            let err = self
                .encoder
                .error(request_id, ErrorCode::Internal, &what)
                .to_vec();
            if let Some(c) = self.conns.get_mut(&conn) {
                let _ = c.writer.push(&err);
            }
        }
    }

    pub(super) fn protocol_error(&mut self, conn: ConnId, what: &str) {
        self.metrics().protocol_errors_total.inc();
        if let Some(c) = self.conns.get(&conn) {
            tracing::error!(shard = %self.id, peer = %c.peer, "protocol error, disconnecting: {what}");
        }
        // Dropping the sender ends the writer; the reader ends when the peer goes.
        if let Some(c) = self.conns.remove(&conn) {
            if let Some(agent) = c.agent {
                self.agent_disconnected(agent, what);
            }
        }
    }

    pub(super) fn handle_conn_message(&mut self, conn: ConnId, bytes: Bytes) {
        // SAFETY: the connection's reader verified this buffer with `decode_message`.
        let message = unsafe { flatbuffers::root_unchecked::<wire::Message>(&bytes) };
        let is_agent = self.conns.get(&conn).and_then(|c| c.agent);
        use wire::Payload as P;
        // Who the peer is comes first, in every mode: a follower checks tokens too (clients
        // authenticate before they learn who leads), and refuses what a peer may not ask.
        match message.payload_type() {
            P::Authenticate => {
                let token = message
                    .payload_as_authenticate()
                    .map(|a| a.token())
                    .unwrap_or_default();
                return self.authenticate(conn, message.request_id(), token);
            }
            P::RegisterAgent => {
                if !self.admit_agent(conn, message.request_id()) {
                    return;
                }
            }
            P::TaskStatus | P::Heartbeat => {}
            _ => {
                if !self.authorize(conn, &message) {
                    return;
                }
            }
        }
        if !self.acting() {
            match message.payload_type() {
                P::RegisterAgent
                | P::CreateJob
                | P::KillJob
                | P::QueryJob
                | P::ListJobs
                | P::SetQuota
                | P::GetQuota
                | P::HostMaintenance
                | P::RestartJob
                | P::StartUpdate
                | P::UpdateCommand
                | P::QueryUpdates
                | P::ScheduleCron
                | P::DescheduleCron
                | P::StartCron
                | P::ListAgents
                | P::QueryTask => {
                    let refusal = self.not_leader(message.request_id());
                    self.write_conn(conn, &refusal);
                    if message.payload_type() == P::RegisterAgent {
                        // Agents go on to the next scheduler address (or the leader named).
                        self.close_conn(conn);
                    }
                    return;
                }
                // A paused leader keeps learning what its agents report.
                _ if matches!(self.mode, Mode::Paused { .. }) => {}
                _ => return,
            }
        }
        match message.payload_type() {
            P::RegisterAgent => {
                if is_agent.is_some() {
                    return self.protocol_error(conn, "RegisterAgent twice on one connection");
                }
                let registration = message.payload_as_register_agent().expect("type checked");
                self.register_agent(conn, message.request_id(), registration);
            }
            P::TaskStatus => {
                let Some(agent) = is_agent else {
                    return self.protocol_error(conn, "TaskStatus before RegisterAgent");
                };
                let status = message.payload_as_task_status().expect("type checked");
                if let Ok(state) = state_from_wire(status.state()) {
                    if state.is_terminal() {
                        self.release_dying(agent, TaskId(status.task_id()));
                    }
                }
                let owner = if status.job_key().is_empty() {
                    // An agent's answer to reconciliation about a task it does not know
                    // (LOST) names no job: its owner is whoever launched it here.
                    match self
                        .home_agents
                        .get(&agent)
                        .and_then(|a| a.running.get(&TaskId(status.task_id())))
                    {
                        Some(r) => r.owner,
                        None => return,
                    }
                } else {
                    self.owner_of(status.job_key())
                };
                self.send(owner, PeerMsg::Status { agent, bytes });
            }
            P::Heartbeat => {
                if let Some(agent) = is_agent {
                    if let Some(a) = self.home_agents.get_mut(&agent) {
                        a.last_seen_us = self.now_us;
                    }
                }
            }
            P::HostMaintenance => {
                if is_agent.is_some() {
                    return self.protocol_error(conn, "HostMaintenance from an agent");
                }
                let m = message.payload_as_host_maintenance().expect("type checked");
                self.host_maintenance(conn, m, message.request_id());
            }
            P::QueryUpdates
                if message
                    .payload_as_query_updates()
                    .and_then(|q| q.job_key())
                    .is_none_or(str::is_empty) =>
            {
                self.gather(conn, message.request_id(), GatherOf::Updates, None);
            }
            P::CreateJob
            | P::KillJob
            | P::QueryJob
            | P::SetQuota
            | P::GetQuota
            | P::RestartJob
            | P::StartUpdate
            | P::UpdateCommand
            | P::QueryUpdates
            | P::ScheduleCron
            | P::DescheduleCron
            | P::StartCron => {
                // Job requests go to the job's owner, quota requests to the role's quota
                // owner: both route on the text (`route_hash_str`).
                let key = match message.payload_type() {
                    P::CreateJob => message.payload_as_create_job().map(|m| m.job_key()),
                    P::KillJob => message.payload_as_kill_job().map(|m| m.job_key()),
                    P::SetQuota => message.payload_as_set_quota().map(|m| m.role()),
                    P::GetQuota => message.payload_as_get_quota().map(|m| m.role()),
                    P::RestartJob => message.payload_as_restart_job().map(|m| m.job_key()),
                    P::StartUpdate => message.payload_as_start_update().map(|m| m.job_key()),
                    P::UpdateCommand => message.payload_as_update_command().map(|m| m.job_key()),
                    P::QueryUpdates => message.payload_as_query_updates().and_then(|m| m.job_key()),
                    P::ScheduleCron => message.payload_as_schedule_cron().map(|m| m.job_key()),
                    P::DescheduleCron => message.payload_as_deschedule_cron().map(|m| m.job_key()),
                    P::StartCron => message.payload_as_start_cron().map(|m| m.job_key()),
                    _ => message.payload_as_query_job().map(|m| m.job_key()),
                }
                .expect("type checked");
                if matches!(
                    message.payload_type(),
                    P::CreateJob | P::StartUpdate | P::ScheduleCron
                ) && bytes.len() > crate::limits::TASK_CONFIG_BYTES_MAX
                {
                    // Every launch carries the configuration: bounded here, a launch always
                    // fits a frame, and a job's tasks cannot make the shard's output huge.
                    let what = format!(
                        "job {key}: the configuration is {} bytes on the wire, more than the \
                         {} allowed (shorten the command, environment or constraints)",
                        bytes.len(),
                        crate::limits::TASK_CONFIG_BYTES_MAX
                    );
                    let err = self
                        .encoder
                        .error(message.request_id(), ErrorCode::InvalidRequest, &what)
                        .to_vec();
                    return self.write_conn(conn, &err);
                }
                let owner = self.owner_of(key);
                let reply = ReplyTo {
                    shard: self.id,
                    conn,
                };
                self.send(owner, PeerMsg::Client { reply, bytes });
            }
            P::ListJobs => {
                let paging = Self::paging_of(&message);
                self.gather(conn, message.request_id(), GatherOf::Jobs, paging);
            }
            P::ListAgents => {
                let paging = Self::paging_of(&message);
                self.gather(conn, message.request_id(), GatherOf::Agents, paging);
            }
            P::QueryTask => {
                let task_id = message
                    .payload_as_query_task()
                    .expect("type checked")
                    .task_id();
                self.gather(
                    conn,
                    message.request_id(),
                    GatherOf::Task(TaskId(task_id)),
                    None,
                );
            }
            other => {
                let what = format!(
                    "unexpected message {:?} from a client or agent",
                    other.variant_name().unwrap_or("unknown")
                );
                let request_id = message.request_id();
                let err = self
                    .encoder
                    .error(request_id, ErrorCode::InvalidRequest, &what)
                    .to_vec();
                self.write_conn(conn, &err);
                self.protocol_error(conn, &what);
            }
        }
    }

    /// Flushes what is queued for the connection, then drops it (its writer closes the socket).
    pub(super) fn close_conn(&mut self, conn: ConnId) {
        if let Some(mut c) = self.conns.remove(&conn) {
            if !c.writer.is_empty() {
                let _ = c.out.try_send(c.writer.take());
            }
        }
    }

    pub(super) fn conn_closed(&mut self, conn: ConnId, reason: &str) {
        if let Some(c) = self.conns.remove(&conn) {
            tracing::debug!(shard = %self.id, peer = %c.peer, "connection closed: {reason}");
            if let Some(agent) = c.agent {
                self.agent_disconnected(agent, reason);
            }
        }
        self.gathers.retain(|(c, _), _| *c != conn);
        self.host_requests.retain(|(c, _), _| *c != conn);
        self.pending_audits.retain(|(c, _), _| *c != conn);
    }

    /// Writes each connection's batched frames (one queued write per connection per round).
    pub fn flush_connections(&mut self) {
        if !self.pending_acks.is_empty() {
            let mut acks = std::mem::take(&mut self.pending_acks);
            for (conn, list) in acks.drain() {
                let Some(c) = self.conns.get_mut(&conn) else {
                    continue;
                };
                // A round may acknowledge millions of statuses (an agent's flood, each one
                // answered): one StatusAck per slice keeps every message far below a frame.
                for slice in list.chunks(STATUS_ACKS_PER_MESSAGE_MAX) {
                    let bytes = self.encoder.status_ack(slice);
                    if let Err(e) = c.writer.push(bytes) {
                        tracing::error!(shard = %self.id, "status ack not sent: {e}");
                    }
                }
            }
        }
        let mut dead = Vec::new();
        for (id, c) in self.conns.iter_mut() {
            if c.writer.is_empty() {
                continue;
            }
            if c.out.is_full() {
                // The writer is behind: keep accumulating here, within a bound (what is held
                // here and what is queued to the writer).
                if c.writer.len_bytes() + c.out.queued_bytes() > CONN_PENDING_BYTES_MAX {
                    dead.push(*id);
                }
                continue;
            }
            let bytes = c.writer.take();
            if c.out.try_send(bytes).is_err() {
                dead.push(*id);
            }
        }
        for conn in dead {
            self.protocol_error(conn, "peer is not reading (too much output pending)");
        }
    }
}
