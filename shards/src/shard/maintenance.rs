//! Host maintenance: each host's mode, owned by shard `route_hash(host) % shards`, which logs
//! it (and, under etcd, persists it) and announces every change to every shard. Each shard
//! keeps the whole map: its home agents on a host under maintenance are out of placement, it
//! drains its own tasks on draining hosts (`drains`), and it answers `status` from its copy.
//!
//! A change is acknowledged to the operator only once every shard has applied it: from then on
//! no shard places a task on the host (an offer lent before the change is refused on arrival).
//! Drain progress flows back: every sweep, each shard tells the host's owner how many of its
//! tasks are still active on each draining host and which wait for their job's SLA; the owner
//! merges the reports, shares the totals, and marks the host DRAINED once every shard reports
//! none left.

use borealis_core::maintenance::validate_hostname;
use borealis_core::{HostMode, MaintenanceOp};
use borealis_net::views::{HostBlockerView, HostStatusView};

use super::*;

/// Hosts one maintenance request may name.
pub const HOSTS_PER_REQUEST_MAX: usize = 1024;
/// Blockers a shard reports per host, and a host's status shows.
pub(super) const HOST_BLOCKERS_MAX: usize = 16;

/// A host not in NONE, as its owner announced it (every shard keeps every such host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostState {
    pub mode: HostMode,
    /// When a drain forces what is left (unix ms; 0: never).
    pub drain_deadline_unix_ms: u64,
    /// Bumped by the owner at each mode change: progress of an older epoch is ignored.
    pub epoch: u64,
    /// Active tasks still on the host, and some that wait for their SLA (draining hosts).
    pub active: u32,
    pub blocked: Vec<HostBlockerView>,
}

/// The owner's view of a draining host's progress: each shard's last report for this epoch.
#[derive(Debug, Default)]
pub(super) struct HostProgress {
    epoch: u64,
    reports: Vec<Option<(u32, Vec<HostBlockerView>)>>,
}

/// A maintenance request of this shard's client, waiting for the hosts' owners.
#[derive(Debug)]
pub(super) struct HostRequest {
    waiting: usize,
    hosts: Vec<Arc<str>>,
}

/// A change the owner announced, waiting for every shard to apply it before it answers.
#[derive(Debug)]
pub(super) struct HostAckWait {
    waiting: usize,
    reply: ReplyTo,
    request_id: u64,
}

impl HostAckWait {
    pub(super) fn into_reply(self) -> (ReplyTo, u64) {
        (self.reply, self.request_id)
    }
}

impl Shard {
    /// A client's `HostMaintenance`: status is answered from this shard's copy; changes go to
    /// the hosts' owners, and are answered once every owner has them applied everywhere.
    pub(super) fn host_maintenance(
        &mut self,
        conn: ConnId,
        m: wire::HostMaintenance<'_>,
        request_id: u64,
    ) {
        let op = match borealis_net::codec::maintenance_op_from_wire(m.op()) {
            Ok(op) => op,
            Err(e) => return self.refuse_host_request(conn, request_id, &e.to_string()),
        };
        let mut hosts: Vec<Arc<str>> = Vec::new();
        for (i, host) in m.hosts().iter().flatten().enumerate() {
            if i == HOSTS_PER_REQUEST_MAX {
                let why = format!("hosts: at most {HOSTS_PER_REQUEST_MAX} hosts per request");
                return self.refuse_host_request(conn, request_id, &why);
            }
            if let Err(e) = validate_hostname(host) {
                return self.refuse_host_request(conn, request_id, &format!("hosts[{i}]: {e}"));
            }
            hosts.push(host.into());
        }
        hosts.sort_unstable();
        hosts.dedup();
        if op == MaintenanceOp::Status {
            let status = self.host_statuses(&hosts, hosts.is_empty());
            let bytes = self.encoder.host_status_list(request_id, &status).to_vec();
            return self.write_conn(conn, &bytes);
        }
        if hosts.is_empty() {
            let why = format!("hosts: name at least one host to {}", op.as_str());
            return self.refuse_host_request(conn, request_id, &why);
        }
        let timeout_secs = m.drain_timeout_secs();
        if op != MaintenanceOp::Drain && timeout_secs != 0 {
            return self.refuse_host_request(
                conn,
                request_id,
                "drain_timeout_secs: only a drain takes a timeout",
            );
        }
        let deadline = if op == MaintenanceOp::Drain && timeout_secs > 0 {
            self.unix_ms
                .saturating_add(timeout_secs.saturating_mul(1000))
        } else {
            0
        };
        let mut by_owner: BTreeMap<ShardId, Vec<Arc<str>>> = BTreeMap::new();
        for host in &hosts {
            by_owner
                .entry(self.owner_of(host))
                .or_default()
                .push(host.clone());
        }
        self.host_requests.insert(
            (conn, request_id),
            HostRequest {
                waiting: by_owner.len(),
                hosts,
            },
        );
        let reply = ReplyTo {
            shard: self.id,
            conn,
        };
        for (owner, hosts) in by_owner {
            self.send(
                owner,
                PeerMsg::SetHostModes {
                    reply,
                    request_id,
                    op,
                    hosts,
                    drain_deadline_unix_ms: deadline,
                },
            );
        }
    }

    fn refuse_host_request(&mut self, conn: ConnId, request_id: u64, why: &str) {
        let bytes = self
            .encoder
            .error(request_id, ErrorCode::InvalidRequest, why)
            .to_vec();
        self.write_conn(conn, &bytes);
    }

    /// Each host's status from this shard's copy (`all`: every host not in NONE).
    fn host_statuses(&self, hosts: &[Arc<str>], all: bool) -> Vec<HostStatusView> {
        let names: Vec<Arc<str>> = if all {
            self.hosts.keys().cloned().collect()
        } else {
            hosts.to_vec()
        };
        names
            .iter()
            .map(|host| match self.hosts.get(host) {
                Some(h) => HostStatusView {
                    host: host.to_string(),
                    mode: h.mode,
                    active_tasks: h.active,
                    blocked: h.blocked.clone(),
                    drain_deadline_ms: h.drain_deadline_unix_ms,
                    forced: self.drain_forced(h),
                },
                None => HostStatusView {
                    host: host.to_string(),
                    mode: HostMode::None,
                    active_tasks: 0,
                    blocked: Vec::new(),
                    drain_deadline_ms: 0,
                    forced: false,
                },
            })
            .collect()
    }

    /// A drain whose timeout passed: what is left leaves without waiting for SLAs.
    pub(super) fn drain_forced(&self, h: &HostState) -> bool {
        h.drain_deadline_unix_ms != 0 && h.mode.drains() && self.unix_ms >= h.drain_deadline_unix_ms
    }

    /// The owner applies an operator's change to its hosts: logged, announced to every shard,
    /// answered once all have applied it.
    pub(super) fn set_host_modes(
        &mut self,
        reply: ReplyTo,
        request_id: u64,
        op: MaintenanceOp,
        hosts: Vec<Arc<str>>,
        drain_deadline_unix_ms: u64,
    ) {
        if !self.acting() {
            let bytes = self.not_leader(request_id);
            return self.send(
                reply.shard,
                PeerMsg::HostModesSet {
                    conn: reply.conn,
                    request_id,
                    refusal: Some(bytes),
                },
            );
        }
        self.next_host_token += 1;
        let token = self.next_host_token;
        let mut changes = Vec::new();
        for host in hosts {
            debug_assert_eq!(
                self.owner_of(&host),
                self.id,
                "a host's mode is set by its owner"
            );
            let current = self.hosts.get(&host).map_or(HostMode::None, |h| h.mode);
            let next = match op {
                // Announcing maintenance leaves a drain as it is.
                MaintenanceOp::Start if current == HostMode::None => HostMode::Scheduled,
                MaintenanceOp::Start => current,
                MaintenanceOp::Drain => HostMode::Draining,
                MaintenanceOp::End => HostMode::None,
                MaintenanceOp::Status => unreachable!("status changes nothing"),
            };
            let deadline = if next == HostMode::Draining {
                drain_deadline_unix_ms
            } else {
                0
            };
            let unchanged = self.hosts.get(&host).map_or(next == HostMode::None, |h| {
                h.mode == next && h.drain_deadline_unix_ms == deadline
            });
            if !unchanged {
                changes.push((host, next, deadline));
            }
        }
        if changes.is_empty() {
            return self.send(
                reply.shard,
                PeerMsg::HostModesSet {
                    conn: reply.conn,
                    request_id,
                    refusal: None,
                },
            );
        }
        // Every shard applies each change; under etcd, etcd has each one too. The wait is in
        // place before the first change: this shard applies its own at once.
        let per_change = self.shard_count + usize::from(self.is_ha());
        self.host_acks.insert(
            token,
            HostAckWait {
                waiting: changes.len() * per_change,
                reply,
                request_id,
            },
        );
        for (host, next, deadline) in changes {
            self.change_host_mode(&host, next, deadline, Some(token));
        }
    }

    /// The owner changes a host's mode: logs it and announces it to every shard (itself too).
    pub(super) fn change_host_mode(
        &mut self,
        host: &Arc<str>,
        mode: HostMode,
        drain_deadline_unix_ms: u64,
        ack: Option<u64>,
    ) {
        tracing::info!(shard = %self.id, %host, %mode, "host maintenance");
        self.log(&LogRecord::HostModeSet {
            host: host.to_string(),
            mode,
            drain_deadline_unix_ms,
        });
        self.persist_host_mode(host, mode, drain_deadline_unix_ms, ack);
        self.next_host_epoch += 1;
        let state = (mode != HostMode::None).then(|| HostState {
            mode,
            drain_deadline_unix_ms,
            epoch: self.next_host_epoch,
            active: 0,
            blocked: Vec::new(),
        });
        self.host_progress.remove(host);
        if mode == HostMode::Draining {
            self.host_progress.insert(
                host.clone(),
                HostProgress {
                    epoch: self.next_host_epoch,
                    reports: vec![None; self.shard_count],
                },
            );
        }
        self.announce_host(host, state, ack);
    }

    fn announce_host(&mut self, host: &Arc<str>, state: Option<HostState>, ack: Option<u64>) {
        for shard in ShardId::all(self.shard_count) {
            self.send(
                shard,
                PeerMsg::HostUpdate {
                    host: host.clone(),
                    state: state.clone(),
                    ack,
                },
            );
        }
    }

    /// Every shard: a host's mode changed (or its drain progress did).
    pub(super) fn host_update(
        &mut self,
        from: ShardId,
        host: Arc<str>,
        state: Option<HostState>,
        ack: Option<u64>,
    ) {
        let schedulable = state.as_ref().is_none_or(|s| s.mode.schedulable());
        let was_schedulable = self.host_schedulable(&host);
        match state {
            Some(state) => {
                self.hosts.insert(host.clone(), state);
            }
            None => {
                self.hosts.remove(&host);
            }
        }
        if schedulable != was_schedulable {
            self.host_schedulable_changed(&host, schedulable);
        }
        if let Some(token) = ack {
            self.send(from, PeerMsg::HostUpdateApplied { token });
        }
    }

    /// Takes the host's agents out of placement (or puts them back): home agents' offers, and
    /// offers borrowed from their homes, which go back now.
    fn host_schedulable_changed(&mut self, host: &str, schedulable: bool) {
        let mut homes: Vec<AgentId> = self
            .home_agents
            .iter()
            .filter(|(_, a)| &*a.hostname == host)
            .map(|(id, _)| *id)
            .collect();
        homes.sort_unstable();
        for agent in homes {
            if schedulable {
                self.unpark_offer(agent);
            } else {
                self.park_offer(agent);
            }
        }
        if !schedulable {
            let mut borrowed: Vec<AgentId> = self
                .borrowed
                .iter()
                .filter(|a| {
                    self.agent_names
                        .get(a)
                        .is_some_and(|n| &*n.hostname == host)
                })
                .copied()
                .collect();
            borrowed.sort_unstable();
            for agent in borrowed {
                self.borrowed.remove(&agent);
                if let Some(free) = self.index.remove_agent(agent) {
                    self.send(agent_home(agent), PeerMsg::Return { agent, free });
                }
            }
        }
    }

    /// Whether new tasks may go to this host.
    pub(super) fn host_schedulable(&self, host: &str) -> bool {
        self.hosts.get(host).is_none_or(|s| s.mode.schedulable())
    }

    /// A home agent's offer leaves placement while its host is under maintenance.
    fn park_offer(&mut self, agent: AgentId) {
        let Some(a) = self.home_agents.get_mut(&agent) else {
            return;
        };
        match a.offer {
            OfferWhere::Home => {
                let free = self.index.remove_agent(agent).unwrap_or(Resources::ZERO);
                a.offer = OfferWhere::Parked { free };
            }
            OfferWhere::Held { free, .. } => {
                // The hold is dropped: the preemptor searches again elsewhere.
                a.offer = OfferWhere::Parked { free };
            }
            // A lent offer is parked when it comes back; an adopting one once adopted.
            OfferWhere::Lent | OfferWhere::Adopting { .. } | OfferWhere::Parked { .. } => {}
        }
    }

    fn unpark_offer(&mut self, agent: AgentId) {
        let Some(a) = self.home_agents.get_mut(&agent) else {
            return;
        };
        if let OfferWhere::Parked { free } = a.offer {
            self.offer_home(agent, free);
        }
    }

    /// A home agent's offer, with `free` resources, comes back to this shard: into placement,
    /// or parked when its host is under maintenance.
    pub(super) fn offer_home(&mut self, agent: AgentId, free: Resources) {
        let Some(hostname) = self.home_agents.get(&agent).map(|a| a.hostname.clone()) else {
            return;
        };
        let schedulable = self.host_schedulable(&hostname);
        let a = self.home_agents.get_mut(&agent).expect("present");
        if !schedulable {
            a.offer = OfferWhere::Parked { free };
            return;
        }
        a.offer = OfferWhere::Home;
        let (attributes, total) = (a.attributes.clone(), a.total);
        self.upsert_offer(agent, &attributes, total, free);
        self.retry_blocked(free);
    }

    /// The owner: a shard applied an announced change.
    pub(super) fn host_update_applied(&mut self, token: u64) {
        let Some(wait) = self.host_acks.get_mut(&token) else {
            return;
        };
        wait.waiting -= 1;
        if wait.waiting > 0 {
            return;
        }
        let wait = self.host_acks.remove(&token).expect("present");
        self.send(
            wait.reply.shard,
            PeerMsg::HostModesSet {
                conn: wait.reply.conn,
                request_id: wait.request_id,
                refusal: None,
            },
        );
    }

    /// The client's shard: an owner has its part of the request applied everywhere.
    pub(super) fn host_modes_set(
        &mut self,
        conn: ConnId,
        request_id: u64,
        refusal: Option<Vec<u8>>,
    ) {
        let Some(request) = self.host_requests.get_mut(&(conn, request_id)) else {
            return;
        };
        if let Some(bytes) = refusal {
            self.host_requests.remove(&(conn, request_id));
            return self.write_conn(conn, &bytes);
        }
        request.waiting -= 1;
        if request.waiting > 0 {
            return;
        }
        let request = self
            .host_requests
            .remove(&(conn, request_id))
            .expect("present");
        let status = self.host_statuses(&request.hosts, false);
        let bytes = self.encoder.host_status_list(request_id, &status).to_vec();
        self.write_conn(conn, &bytes);
    }

    /// The owner: a shard's count of its tasks still on a draining host.
    pub(super) fn host_progress(
        &mut self,
        from: ShardId,
        host: Arc<str>,
        epoch: u64,
        active: u32,
        blocked: Vec<HostBlockerView>,
    ) {
        let Some(progress) = self.host_progress.get_mut(&host) else {
            return;
        };
        if progress.epoch != epoch {
            return;
        }
        progress.reports[from.0] = Some((active, blocked));
        if progress.reports.iter().any(Option::is_none) {
            return;
        }
        let total: u32 = progress.reports.iter().flatten().map(|(n, _)| *n).sum();
        let mut blockers: Vec<HostBlockerView> = progress
            .reports
            .iter()
            .flatten()
            .flat_map(|(_, b)| b.iter().cloned())
            .collect();
        blockers.sort_by_key(|b| b.task_id);
        blockers.truncate(HOST_BLOCKERS_MAX);
        let Some(state) = self.hosts.get(&host) else {
            return;
        };
        if total == 0 && state.mode == HostMode::Draining {
            tracing::info!(shard = %self.id, %host, "host drained");
            let deadline = state.drain_deadline_unix_ms;
            return self.change_host_mode(&host, HostMode::Drained, deadline, None);
        }
        if state.active != total || state.blocked != blockers {
            let mut state = state.clone();
            state.active = total;
            state.blocked = blockers;
            self.announce_host(&host, Some(state), None);
        }
    }

    /// After a restart (or on taking the lead): the hosts this shard owns, announced to all.
    pub(super) fn restore_hosts(&mut self, hosts: Vec<(String, HostMode, u64)>) {
        for (host, mode, deadline) in hosts {
            if mode == HostMode::None {
                continue;
            }
            let host: Arc<str> = host.into();
            self.next_host_epoch += 1;
            let state = HostState {
                mode,
                drain_deadline_unix_ms: deadline,
                epoch: self.next_host_epoch,
                active: 0,
                blocked: Vec::new(),
            };
            if mode == HostMode::Draining {
                self.host_progress.insert(
                    host.clone(),
                    HostProgress {
                        epoch: self.next_host_epoch,
                        reports: vec![None; self.shard_count],
                    },
                );
            }
            self.announce_host(&host, Some(state), None);
        }
    }

    /// The hosts this shard owns, as the log and etcd keep them (for snapshots).
    pub(super) fn owned_host_images(&self) -> Vec<(String, HostMode, u64)> {
        self.hosts
            .iter()
            .filter(|(host, _)| self.owner_of(host) == self.id)
            .map(|(host, s)| (host.to_string(), s.mode, s.drain_deadline_unix_ms))
            .collect()
    }
}

impl Shard {
    /// Under etcd, a host's mode is written there too; a change an operator asked for is
    /// answered only once etcd has it (one more acknowledgement to wait for).
    fn persist_host_mode(&mut self, host: &str, mode: HostMode, deadline: u64, ack: Option<u64>) {
        if !self.is_ha() {
            return;
        }
        let image = (mode != HostMode::None).then_some(borealis_store::HostImage {
            mode,
            drain_deadline_unix_ms: deadline,
        });
        if let Err(e) = self.send_host_persist(host, image, ack) {
            tracing::error!(shard = %self.id, %host, "cannot write the host's mode to etcd: {e}");
            if let Some(token) = ack {
                self.host_mode_persisted(Some(token), Err(e.to_string()));
            }
        }
    }

    /// etcd has a host's mode (or refused it).
    pub(super) fn host_mode_persisted(&mut self, ack: Option<u64>, result: Result<(), String>) {
        let Some(token) = ack else {
            if let Err(e) = result {
                tracing::error!(shard = %self.id, "host mode write to etcd failed: {e}");
            }
            return;
        };
        match result {
            Ok(()) => self.host_update_applied(token),
            Err(e) => {
                let Some(wait) = self.host_acks.remove(&token) else {
                    return;
                };
                let bytes = self
                    .encoder
                    .error(
                        wait.request_id,
                        ErrorCode::Internal,
                        &format!("the host maintenance change may not be in etcd: {e}"),
                    )
                    .to_vec();
                self.send(
                    wait.reply.shard,
                    PeerMsg::HostModesSet {
                        conn: wait.reply.conn,
                        request_id: wait.request_id,
                        refusal: Some(bytes),
                    },
                );
            }
        }
    }
}
