//! Cluster-wide questions a client asks one shard: every shard's jobs (`ListJobs`), active
//! updates (a cluster-wide `QueryUpdates`), agents (`ListAgents`), or the one task of an id
//! (`QueryTask`). The connection's shard scatters the question to every shard (itself
//! included), gathers the parts, and answers once all are in — filtered to the roles the
//! connection's principal may read.

use borealis_core::HostMode;
use borealis_net::views::AgentInfoView;

use super::access::role_of;
use super::*;

/// A scatter-gather in progress on this (the connection's) shard.
pub(super) struct Gather {
    of: GatherOf,
    waiting: usize,
    part: GatherPart,
    refused: bool,
}

impl Shard {
    /// Starts a scatter-gather of `of` over every shard.
    pub(super) fn gather(&mut self, conn: ConnId, request_id: u64, of: GatherOf) {
        self.gathers.insert(
            (conn, request_id),
            Gather {
                of,
                waiting: self.shard_count,
                part: GatherPart::default(),
                refused: false,
            },
        );
        let reply = ReplyTo {
            shard: self.id,
            conn,
        };
        for shard in ShardId::all(self.shard_count) {
            self.send(
                shard,
                PeerMsg::Gather {
                    reply,
                    request_id,
                    of,
                },
            );
        }
    }

    /// This shard's part of a scatter-gather.
    pub(super) fn gather_part(&mut self, reply: ReplyTo, request_id: u64, of: GatherOf) {
        let part = match of {
            GatherOf::Jobs => GatherPart {
                jobs: self.job_summaries(),
                ..GatherPart::default()
            },
            GatherOf::Updates => GatherPart {
                updates: self.active_update_views(),
                ..GatherPart::default()
            },
            GatherOf::Agents => GatherPart {
                agents: self.agent_views(),
                ..GatherPart::default()
            },
            GatherOf::Task(id) => GatherPart {
                task: self.task_status(id),
                ..GatherPart::default()
            },
        };
        let refused = !self.acting();
        self.send(
            reply.shard,
            PeerMsg::GatherPart {
                conn: reply.conn,
                request_id,
                part,
                refused,
            },
        );
    }

    /// A part arrived; answers once every shard's is in.
    pub(super) fn gather_arrived(
        &mut self,
        conn: ConnId,
        request_id: u64,
        part: GatherPart,
        refused: bool,
    ) {
        let Some(g) = self.gathers.get_mut(&(conn, request_id)) else {
            return;
        };
        g.part.jobs.extend(part.jobs);
        g.part.updates.extend(part.updates);
        g.part.agents.extend(part.agents);
        if part.task.is_some() {
            g.part.task = part.task;
        }
        g.refused |= refused;
        g.waiting -= 1;
        if g.waiting > 0 {
            return;
        }
        let Gather {
            of,
            mut part,
            refused,
            ..
        } = self.gathers.remove(&(conn, request_id)).expect("present");
        let bytes = if refused {
            // A shard still taking (or leaving) the lead: no partial answers.
            self.not_leader(request_id)
        } else {
            match of {
                GatherOf::Jobs => {
                    part.jobs
                        .retain(|j| self.may_read(conn, role_of(&j.job_key)));
                    part.jobs.sort_by(|a, b| a.job_key.cmp(&b.job_key));
                    self.encoder.job_list(request_id, &part.jobs).to_vec()
                }
                GatherOf::Updates => {
                    part.updates
                        .retain(|u| self.may_read(conn, role_of(&u.job_key)));
                    part.updates.sort_by(|a, b| a.job_key.cmp(&b.job_key));
                    self.encoder.update_list(request_id, &part.updates).to_vec()
                }
                GatherOf::Agents => {
                    part.agents.sort_by(|a, b| {
                        (&a.hostname, &a.agent_id).cmp(&(&b.hostname, &b.agent_id))
                    });
                    self.encoder.agent_list(request_id, &part.agents).to_vec()
                }
                GatherOf::Task(id) => match part.task {
                    None => self
                        .encoder
                        .error(
                            request_id,
                            ErrorCode::UnknownJob,
                            &format!("unknown task {id} (no job of this scheduler has it)"),
                        )
                        .to_vec(),
                    Some(status) => {
                        let role = role_of(&status.job.job_key).to_string();
                        if self.may_read(conn, &role) {
                            self.encoder.job_status(request_id, &status).to_vec()
                        } else {
                            let why = self.read_denied(conn, &role);
                            self.encoder
                                .error(request_id, ErrorCode::PermissionDenied, &why)
                                .to_vec()
                        }
                    }
                },
            }
        };
        self.write_conn(conn, &bytes);
    }

    /// This shard's home agents, as `ListAgents` shows them.
    fn agent_views(&self) -> Vec<AgentInfoView> {
        self.home_agents
            .values()
            .map(|a| {
                let mut used = Resources::ZERO;
                for r in a.running.values() {
                    used = used.plus(&r.config.resources);
                }
                for r in a.dying.values() {
                    used = used.plus(r);
                }
                let mode = self
                    .hosts
                    .get(a.hostname.as_ref())
                    .map_or(HostMode::None, |h| h.mode);
                AgentInfoView {
                    agent_id: a.name.to_string(),
                    hostname: a.hostname.to_string(),
                    total: a.total,
                    used,
                    active_tasks: a.running.len() as u32,
                    connected: true,
                    mode,
                    attributes: a.attributes.iter().cloned().collect(),
                    log_address: a.log_address.map(|s| s.to_string()).unwrap_or_default(),
                }
            })
            .collect()
    }
}
