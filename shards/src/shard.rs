//! One shard: the jobs, tasks, agents and offers it owns, and its batched loop.
//!
//! Each round: wait for input, drain up to [`ROUND_INBOUND_MAX`] inbound items (frames from
//! its connections, batches from peers, ticks), apply them, place pending tasks against the
//! offers it owns (up to [`ROUND_PLACEMENTS_MAX`]), then flush: one write per connection and
//! one message batch per peer. State is owned by the loop and never shared.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use borealis_core::lifecycle::{self, Interruption, Reschedule, TaskEnd};
use borealis_core::placement::{AgentId, AttrId, CompiledTask, JobSpread, PlacementIndex, ValueId};
use borealis_core::{JobKey, Resources, TaskConfig, TaskId, TaskIdGen, TaskState};
use borealis_net::codec::{state_from_wire, task_config_from_wire};
use borealis_net::views::{
    ErrorCode, JobStatusView, JobSummaryView, TaskInfoView, TaskStatusReport,
};
use borealis_net::{wire, Encoder, FrameWriter};
use bytes::Bytes;
use glommio::channels::local_channel::LocalSender;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::metrics::{AttemptResult, Metrics, ShardMetrics};
use crate::msg::*;
use crate::policy;
use crate::SchedulerConfig;

#[path = "shard_ha.rs"]
mod ha_mode;
use borealis_store::image::{JobImage, LogRecord, StateImage, TaskImage, TaskImageRef};
use borealis_store::wal::Wal;
pub use ha_mode::Mode;
use ha_mode::PendingPersist;

/// Inbound items handled per round before placing and flushing.
pub const ROUND_INBOUND_MAX: usize = 256;
/// Placements attempted per round; the rest wait for the next round.
pub const ROUND_PLACEMENTS_MAX: usize = 16_384;
/// Log bytes after which a shard writes a snapshot (bounding replay time at restart).
const SNAPSHOT_LOG_BYTES: u64 = 256 << 20;
/// Blocked tasks put back into the queue per round after offers changed.
const BLOCKED_RETRY_MAX: usize = 4096;
/// Tasks of one job placed as one batch.
const PLACEMENT_BATCH_MAX: usize = 4096;
/// Offers lent per `Borrow`.
const LEND_OFFERS_MAX: usize = 64;
/// How often blocked pending tasks are retried when nothing else changed.
const BLOCKED_RETRY: Duration = Duration::from_millis(500);
/// Output a connection may have pending before it is dropped as not reading.
const CONN_PENDING_BYTES_MAX: usize = 64 << 20;
/// Agents that send nothing (not even a heartbeat) for this long are disconnected.
const AGENT_SILENCE_MAX: Duration = Duration::from_secs(30);
/// How often tasks stuck in transient states and silent agents are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);
/// Pause before asking peers again after a borrow that brought nothing placeable.
const BORROW_BACKOFF: Duration = Duration::from_millis(200);

const _: () = assert!(ROUND_INBOUND_MAX <= crate::INBOUND_QUEUE_MAX);

type JobIdx = usize;

/// Jobs in stable slots: a task keeps its job's index for life, and removing a job touches no
/// other job or task.
#[derive(Default)]
struct JobSlab {
    slots: Vec<Option<Job>>,
    vacant: Vec<JobIdx>,
    len: usize,
}

impl JobSlab {
    fn insert(&mut self, job: Job) -> JobIdx {
        self.len += 1;
        match self.vacant.pop() {
            Some(idx) => {
                debug_assert!(self.slots[idx].is_none());
                self.slots[idx] = Some(job);
                idx
            }
            None => {
                self.slots.push(Some(job));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, idx: JobIdx) -> Job {
        let job = self.slots[idx].take().expect("removing a live job");
        self.vacant.push(idx);
        self.len -= 1;
        job
    }

    fn len(&self) -> usize {
        self.len
    }

    fn iter(&self) -> impl Iterator<Item = &Job> {
        self.slots.iter().flatten()
    }
}

impl std::ops::Index<JobIdx> for JobSlab {
    type Output = Job;
    fn index(&self, idx: JobIdx) -> &Job {
        self.slots[idx].as_ref().expect("live job")
    }
}

impl std::ops::IndexMut<JobIdx> for JobSlab {
    fn index_mut(&mut self, idx: JobIdx) -> &mut Job {
        self.slots[idx].as_mut().expect("live job")
    }
}

/// A task's state as its agent reported it (a status update, or a task listed at
/// registration when `adopting`).
#[derive(Clone, Copy)]
struct Report<'a> {
    agent: AgentId,
    task_id: TaskId,
    state: TaskState,
    exit_code: i32,
    message: &'a str,
    sandbox: &'a str,
    adopting: bool,
}

/// An agent's name (its `agent_id`) and hostname.
#[derive(Debug)]
struct AgentNames {
    name: Arc<str>,
    hostname: Arc<str>,
}

struct Job {
    key: JobKey,
    key_text: Arc<str>,
    config: Arc<TaskConfig>,
    compiled: CompiledTask,
    spread: JobSpread,
    /// The current task of each instance (None once it is killed for good).
    current: Vec<Option<TaskId>>,
    /// Terminal tasks, oldest first, bounded by `history_max_per_job`.
    history: VecDeque<TaskId>,
    /// Instances that must not run again (killed by a user, or ad-hoc instances that ended
    /// for good): what a new leader needs to know, since task history is not in etcd.
    retired: Vec<bool>,
}

struct Task {
    id: TaskId,
    job: JobIdx,
    instance: u32,
    state: TaskState,
    agent: Option<AgentId>,
    /// The agent's name and hostname, kept for status after the agent is gone.
    host: Option<Arc<AgentNames>>,
    /// Resources consumed on `agent` (released when the task leaves it).
    holds: bool,
    failure_count: u32,
    consecutive_flaps: u32,
    entered_us: u64,
    running_since_us: Option<u64>,
    exit_code: i32,
    message: String,
    ports: Vec<(String, u16)>,
    sandbox: String,
    /// Killed by a user: never rescheduled.
    killed_by_user: bool,
    /// Restored from the log with an agent that has not reported it since the restart.
    awaiting_adoption: bool,
}

/// An agent whose connection this shard holds.
struct HomeAgent {
    conn: ConnId,
    name: Arc<str>,
    hostname: Arc<str>,
    attributes: Arc<borealis_core::Attributes>,
    total: Resources,
    port_ranges: Vec<(u16, u16)>,
    ports_in_use: HashMap<TaskId, Vec<u16>>,
    /// Where the offer is: in this shard's index, lent to a peer, or held back while adopted
    /// tasks are being confirmed.
    offer: OfferWhere,
    /// Resources released while the offer was lent; added back on return.
    released_while_lent: Resources,
    last_seen: Instant,
}

enum OfferWhere {
    Home,
    Lent,
    Adopting { waiting: usize, used: Resources },
}

struct Conn {
    out: LocalSender<Vec<u8>>,
    writer: FrameWriter,
    agent: Option<AgentId>,
    peer: std::net::SocketAddr,
}

/// A `ListJobs` scatter-gather in progress on this (the connection's) shard.
struct Gather {
    waiting: usize,
    jobs: Vec<JobSummaryView>,
    refused: bool,
}

pub struct Shard {
    id: ShardId,
    shard_count: usize,
    config: Arc<SchedulerConfig>,
    started: Instant,
    encoder: Encoder,
    ids: TaskIdGen,
    next_agent: u32,

    jobs: JobSlab,
    job_index: HashMap<JobKey, JobIdx>,
    tasks: HashMap<TaskId, Task>,
    tasks_by_agent: HashMap<AgentId, HashSet<TaskId>>,
    pending: VecDeque<TaskId>,
    /// Pending tasks that fit no offer this shard held when last tried, oldest first.
    blocked: VecDeque<TaskId>,
    /// Offers changed (new agent, release, return, loan): blocked tasks deserve a retry.
    offers_changed: bool,
    /// Terminal tasks in the order they ended, for pruning by age.
    ended: VecDeque<(u64, TaskId)>,
    throttled: BTreeMap<(u64, TaskId), ()>,
    last_blocked_retry: Instant,

    index: PlacementIndex,
    agent_names: HashMap<AgentId, Arc<AgentNames>>,
    /// Interned attributes of every agent whose offer this shard holds or has held for its
    /// tasks; limit-constraint spreads are kept with these, even after the offer moved on.
    agent_attr_ids: HashMap<AgentId, Vec<(AttrId, ValueId)>>,
    home_agents: HashMap<AgentId, HomeAgent>,
    borrowed: HashSet<AgentId>,
    borrow_outstanding: bool,
    /// No new `Borrow` before this instant (set after a fruitless one).
    next_borrow_at: Instant,
    /// Tasks placed since the last `Lend` arrived (tells whether lending helped).
    placed_since_lend: usize,
    next_lender: ShardId,
    last_sweep: Instant,

    conns: HashMap<ConnId, Conn>,
    metrics: Arc<Metrics>,
    /// The clock at the start of the current round (see `begin_round`).
    now_us: u64,
    /// The shard's write-ahead log (None: state is kept in memory only).
    wal: Option<Wal>,
    mode: Mode,
    /// Channels to the control thread (etcd leadership), when there is one.
    links: Option<crate::ha::ShardLinks>,
    next_token: u64,
    pending_persists: HashMap<u64, PendingPersist>,
    /// After taking the lead: when instances no agent reported get new tasks (0: done).
    install_deadline_us: u64,
    /// Restored tasks not reported by any agent by then are LOST.
    reconcile_deadline_us: u64,
    last_snapshot: Instant,
    /// The wall-clock interval slot of the last periodic backup.
    last_backup_slot: u64,
    /// The last operator backup request handled (its unix ms).
    last_backup_request: u64,
    /// Terminal statuses to acknowledge on each agent connection this shard holds, sent
    /// after the round's commit made them durable.
    pending_acks: HashMap<ConnId, Vec<(TaskId, TaskState)>>,
    /// Tasks per state (the `borealis_tasks` gauge).
    state_counts: [u64; TaskState::COUNT],
    /// Home agents whose offers are lent out.
    lent_out: usize,
    /// Scratch for `schedule` (kept to avoid allocating each round).
    run_tasks: Vec<TaskId>,
    run_agents: Vec<AgentId>,
    gathers: HashMap<(ConnId, u64), Gather>,
    outbox: Vec<PeerBatch>,
}

/// Microseconds since the shard started: the shard's clock for task timing.
fn now_us(started: Instant) -> u64 {
    started.elapsed().as_micros() as u64
}

impl Shard {
    /// Reads the clock once per round: every event of a round carries the round's time.
    pub fn begin_round(&mut self) {
        self.now_us = now_us(self.started);
    }

    /// Rebuilds the shard's jobs and tasks from its recovered image and takes its log.
    /// Tasks that were on an agent wait (up to the reconciliation grace) for the agent to
    /// report them; PENDING and THROTTLED tasks are queued again.
    pub fn restore(&mut self, image: StateImage, wal: Wal) {
        self.begin_round();
        let now = self.now_us;
        self.reconcile_deadline_us = now + self.config.reconciliation_grace_ms * 1000;
        let mut restored = 0usize;
        for (key, ji) in image.jobs {
            let JobImage {
                config,
                instances,
                current,
                history,
                ..
            } = ji;
            let compiled = self.index.compile(&config);
            let spread = JobSpread::new(&compiled);
            let key_text: Arc<str> = key.to_string().into();
            let mut slots = current;
            slots.resize(instances as usize, None);
            let job = self.jobs.insert(Job {
                key: key.clone(),
                key_text,
                config: Arc::new(config),
                compiled,
                spread,
                current: slots,
                history: history.into_iter().collect(),
                retired: vec![false; instances as usize],
            });
            self.job_index.insert(key, job);
        }
        for (id, ti) in image.tasks {
            let Some(&job) = self.job_index.get(&ti.job) else {
                tracing::warn!(task = %id, job = %ti.job, "restored task of an unknown job: dropped");
                continue;
            };
            let mut state = ti.state;
            if state == TaskState::Throttled {
                // Its penalty was in the past life: it may run now.
                state = TaskState::Pending;
            }
            let awaiting = state.is_active();
            let host = match (ti.agent_name, ti.hostname) {
                (Some(name), hostname) => Some(Arc::new(AgentNames {
                    hostname: hostname.unwrap_or_else(|| name.clone()).into(),
                    name: name.into(),
                })),
                _ => None,
            };
            self.tasks.insert(
                id,
                Task {
                    id,
                    job,
                    instance: ti.instance,
                    state,
                    agent: None,
                    host,
                    holds: false,
                    failure_count: ti.failure_count,
                    consecutive_flaps: ti.consecutive_flaps,
                    entered_us: now,
                    running_since_us: (state == TaskState::Running).then_some(now),
                    exit_code: ti.exit_code,
                    message: ti.message,
                    ports: ti.ports,
                    sandbox: ti.sandbox,
                    killed_by_user: ti.killed_by_user,
                    awaiting_adoption: awaiting,
                },
            );
            self.state_counts[state as usize] += 1;
            if state == TaskState::Pending {
                self.pending.push_back(id);
            } else if state.is_terminal() {
                self.ended.push_back((now, id));
            }
            restored += 1;
        }
        tracing::info!(
            shard = self.id,
            jobs = self.jobs.len(),
            tasks = restored,
            "state restored from the log"
        );
        self.wal = Some(wal);
    }

    /// The shard's whole state as a log image (for snapshots and backups).
    pub fn to_image(&self) -> StateImage {
        let mut image = StateImage::default();
        for job in self.jobs.iter() {
            image.jobs.insert(
                job.key.clone(),
                JobImage {
                    key: job.key.clone(),
                    config: (*job.config).clone(),
                    instances: job.current.len() as u32,
                    current: job.current.clone(),
                    history: job.history.iter().copied().collect(),
                },
            );
        }
        for id in self.tasks.keys() {
            if let Some(t) = self.task_image(*id) {
                image.tasks.insert(*id, t);
            }
        }
        image
    }

    /// Group commit: makes every record of this round durable with one write and one fsync,
    /// before the round's acknowledgements and launches leave. A failed commit is fatal:
    /// acknowledging what is not durable would break the contract.
    pub fn commit_log(&mut self) {
        let Some(wal) = &mut self.wal else {
            return;
        };
        if let Err(e) = wal.commit() {
            tracing::error!(shard = self.id, "cannot write the log, stopping: {e}");
            std::process::exit(70);
        }
    }

    /// Snapshots (bounding the log and the replay at restart) and backups, on their intervals.
    fn maybe_snapshot_and_backup(&mut self) {
        if self.wal.is_none() {
            return;
        }
        let log_bytes = self.wal.as_ref().map_or(0, Wal::bytes_since_snapshot);
        let snapshot_due = log_bytes >= SNAPSHOT_LOG_BYTES
            || (log_bytes > 0
                && self.last_snapshot.elapsed().as_millis() as u64
                    >= self.config.snapshot_interval_ms);
        // Backups are due per interval slot of the wall clock, so every shard writes the
        // same slot's folder; an operator's request (`POST /admin/backup`) names its own.
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let slot = unix_ms / self.config.backup_interval_ms.max(1);
        let requested = self
            .config
            .backup_requests
            .load(std::sync::atomic::Ordering::Relaxed);
        let backup_name = if requested != self.last_backup_request {
            self.last_backup_request = requested;
            Some(borealis_store::backup::backup_name(requested, 1000))
        } else if slot != self.last_backup_slot {
            self.last_backup_slot = slot;
            Some(borealis_store::backup::backup_name(
                slot * self.config.backup_interval_ms.max(1),
                self.config.backup_interval_ms.max(1),
            ))
        } else {
            None
        };
        let backup_due = backup_name.is_some();
        if !snapshot_due && !backup_due {
            return;
        }
        let image = self.to_image();
        if snapshot_due {
            self.last_snapshot = Instant::now();
            let wal = self.wal.as_mut().expect("checked");
            if let Err(e) = wal.snapshot(&image) {
                tracing::error!(shard = self.id, "cannot write a snapshot, stopping: {e}");
                std::process::exit(70);
            }
        }
        if let Some(name) = backup_name {
            match borealis_store::backup::write_backup(
                &self.config.backup_dir,
                &name,
                self.id,
                &image,
            ) {
                Ok(()) => tracing::info!(shard = self.id, backup = %name, "backup written"),
                Err(e) => tracing::error!(shard = self.id, backup = %name, "backup failed: {e}"),
            }
            if self.id == 0 {
                if let Err(e) = borealis_store::backup::prune_backups(
                    &self.config.backup_dir,
                    self.config.max_saved_backups,
                ) {
                    tracing::warn!("cannot prune old backups: {e}");
                }
            }
        }
    }

    /// After a restart, tasks no agent reported within the grace are LOST (and replaced).
    fn expire_unadopted(&mut self, now: u64) {
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
                shard = self.id,
                tasks = lost.len(),
                "tasks not reported by any agent since the restart are LOST"
            );
        }
        for id in lost {
            if let Some(t) = self.tasks.get_mut(&id) {
                t.awaiting_adoption = false;
            }
            self.transition(
                id,
                TaskState::Lost,
                "not reported by its agent after a scheduler restart",
            );
        }
    }
}

impl Shard {
    pub fn new(
        id: ShardId,
        shard_count: usize,
        config: Arc<SchedulerConfig>,
        metrics: Arc<Metrics>,
    ) -> Shard {
        let last_backup_slot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            / config.backup_interval_ms.max(1);
        let last_backup_request = config
            .backup_requests
            .load(std::sync::atomic::Ordering::Relaxed);
        Shard {
            id,
            shard_count,
            ids: TaskIdGen::new(config.epoch, id as u8),
            config,
            started: Instant::now(),
            encoder: Encoder::new(),
            next_agent: 1,
            jobs: JobSlab::default(),
            job_index: HashMap::default(),
            tasks: HashMap::default(),
            tasks_by_agent: HashMap::default(),
            pending: VecDeque::new(),
            blocked: VecDeque::new(),
            offers_changed: false,
            ended: VecDeque::new(),
            throttled: BTreeMap::new(),
            last_blocked_retry: Instant::now(),
            index: PlacementIndex::new(),
            agent_names: HashMap::default(),
            agent_attr_ids: HashMap::default(),
            home_agents: HashMap::default(),
            borrowed: HashSet::default(),
            borrow_outstanding: false,
            next_borrow_at: Instant::now(),
            placed_since_lend: 0,
            last_sweep: Instant::now(),
            next_lender: (id + 1) % shard_count.max(1),
            conns: HashMap::default(),
            metrics,
            now_us: 0,
            wal: None,
            mode: Mode::Embedded,
            links: None,
            next_token: 0,
            pending_persists: HashMap::default(),
            install_deadline_us: 0,
            reconcile_deadline_us: 0,
            last_snapshot: Instant::now(),
            last_backup_slot,
            last_backup_request,
            pending_acks: HashMap::default(),
            state_counts: [0; TaskState::COUNT],
            lent_out: 0,
            run_tasks: Vec::new(),
            run_agents: Vec::new(),
            gathers: HashMap::default(),
            outbox: (0..shard_count).map(|_| Vec::new()).collect(),
        }
    }

    fn owner_of(&self, key_text: &str) -> ShardId {
        (borealis_core::route_hash_str(key_text) % self.shard_count as u64) as ShardId
    }

    fn send(&mut self, to: ShardId, msg: PeerMsg) {
        if to == self.id {
            self.handle_peer(self.id, msg);
        } else {
            self.outbox[to].push(msg);
        }
    }

    /// Peer batches to send at the end of the round (taken by the loop).
    pub fn take_outbox(&mut self, to: ShardId) -> Option<PeerBatch> {
        if self.outbox[to].is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.outbox[to]))
        }
    }

    // ------------------------------------------------------------------ inbound dispatch

    pub fn handle(&mut self, item: Inbound) {
        match item {
            Inbound::Peer { from, batch } => {
                for msg in batch {
                    self.handle_peer(from, msg);
                }
            }
            Inbound::ConnOpened { conn, peer, out } => {
                tracing::debug!(shard = self.id, conn, %peer, "connection opened");
                self.conns.insert(
                    conn,
                    Conn {
                        out,
                        writer: FrameWriter::new(),
                        agent: None,
                        peer,
                    },
                );
            }
            Inbound::ConnMessages { conn, messages } => {
                self.metrics()
                    .messages_received_total
                    .add(messages.len() as u64);
                for bytes in messages {
                    if !self.conns.contains_key(&conn) {
                        break;
                    }
                    self.handle_conn_message(conn, bytes);
                }
            }
            Inbound::ConnClosed { conn, reason } => self.conn_closed(conn, &reason),
            Inbound::Tick => self.tick(),
        }
    }

    fn reply(&mut self, reply: ReplyTo, bytes: Vec<u8>) {
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

    fn write_conn(&mut self, conn: ConnId, message: &[u8]) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.writer.push(message);
        }
    }

    fn protocol_error(&mut self, conn: ConnId, what: &str) {
        self.metrics().protocol_errors_total.inc();
        if let Some(c) = self.conns.get(&conn) {
            tracing::error!(shard = self.id, peer = %c.peer, "protocol error, disconnecting: {what}");
        }
        // Dropping the sender ends the writer; the reader ends when the peer goes.
        if let Some(c) = self.conns.remove(&conn) {
            if let Some(agent) = c.agent {
                self.agent_disconnected(agent, what);
            }
        }
    }

    fn handle_conn_message(&mut self, conn: ConnId, bytes: Bytes) {
        // SAFETY: the connection's reader verified this buffer with `decode_message`.
        let message = unsafe { flatbuffers::root_unchecked::<wire::Message>(&bytes) };
        let is_agent = self.conns.get(&conn).and_then(|c| c.agent);
        use wire::Payload as P;
        if !self.acting() {
            match message.payload_type() {
                P::RegisterAgent | P::CreateJob | P::KillJob | P::QueryJob | P::ListJobs => {
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
                self.register_agent(conn, registration);
            }
            P::TaskStatus => {
                let Some(agent) = is_agent else {
                    return self.protocol_error(conn, "TaskStatus before RegisterAgent");
                };
                let status = message.payload_as_task_status().expect("type checked");
                let owner = self.owner_of(status.job_key());
                self.send(owner, PeerMsg::Status { agent, bytes });
            }
            P::Heartbeat => {
                if let Some(agent) = is_agent {
                    if let Some(a) = self.home_agents.get_mut(&agent) {
                        a.last_seen = Instant::now();
                    }
                }
            }
            P::CreateJob | P::KillJob | P::QueryJob => {
                let request_id = message.request_id();
                let key = match message.payload_type() {
                    P::CreateJob => message.payload_as_create_job().map(|m| m.job_key()),
                    P::KillJob => message.payload_as_kill_job().map(|m| m.job_key()),
                    _ => message.payload_as_query_job().map(|m| m.job_key()),
                }
                .expect("type checked");
                let owner = self.owner_of(key);
                let reply = ReplyTo {
                    shard: self.id,
                    conn,
                };
                let _ = request_id;
                self.send(owner, PeerMsg::Client { reply, bytes });
            }
            P::ListJobs => {
                let request_id = message.request_id();
                self.gathers.insert(
                    (conn, request_id),
                    Gather {
                        waiting: self.shard_count,
                        jobs: Vec::new(),
                        refused: false,
                    },
                );
                let reply = ReplyTo {
                    shard: self.id,
                    conn,
                };
                for shard in 0..self.shard_count {
                    self.send(shard, PeerMsg::ListJobs { reply, request_id });
                }
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
    fn close_conn(&mut self, conn: ConnId) {
        if let Some(mut c) = self.conns.remove(&conn) {
            if !c.writer.is_empty() {
                let _ = c.out.try_send(c.writer.take());
            }
        }
    }

    fn conn_closed(&mut self, conn: ConnId, reason: &str) {
        if let Some(c) = self.conns.remove(&conn) {
            tracing::debug!(shard = self.id, peer = %c.peer, "connection closed: {reason}");
            if let Some(agent) = c.agent {
                self.agent_disconnected(agent, reason);
            }
        }
        self.gathers.retain(|(c, _), _| *c != conn);
    }

    // ------------------------------------------------------------------ agents (home side)

    fn register_agent(&mut self, conn: ConnId, r: wire::RegisterAgent<'_>) {
        assert!(
            self.next_agent < (1 << AGENT_HOME_SHIFT),
            "agent numbers exhausted"
        );
        let agent = AgentId(((self.id as u32) << AGENT_HOME_SHIFT) | self.next_agent);
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
            shard = self.id,
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
                }),
                Err(e) => tracing::warn!(agent = %name, "ignoring reported task: {e}"),
            }
        }
        let adopting = reports.len();
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
                last_seen: Instant::now(),
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
    fn maybe_offer_adopted(&mut self, agent: AgentId) {
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
            a.offer = OfferWhere::Home;
            let (attributes, total) = (a.attributes.clone(), a.total);
            self.upsert_offer(agent, &attributes, total, free);
            self.retry_blocked();
        }
    }

    /// Puts an offer into this shard's index and remembers the agent's interned attributes.
    fn upsert_offer(
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

    fn agent_disconnected(&mut self, agent: AgentId, reason: &str) {
        let Some(a) = self.home_agents.remove(&agent) else {
            return;
        };
        tracing::warn!(shard = self.id, agent = %a.name, host = %a.hostname, "agent lost: {reason}");
        match a.offer {
            OfferWhere::Home => {
                self.index.remove_agent(agent);
            }
            OfferWhere::Lent => self.lent_out -= 1,
            OfferWhere::Adopting { .. } => {}
        }
        for shard in 0..self.shard_count {
            self.send(shard, PeerMsg::AgentLost { agent });
        }
    }

    fn assign_ports(
        &mut self,
        agent: AgentId,
        task_id: TaskId,
        names: &[String],
    ) -> Option<Vec<(String, u16)>> {
        let a = self.home_agents.get_mut(&agent)?;
        if names.is_empty() {
            return Some(Vec::new());
        }
        let used: HashSet<u16> = a.ports_in_use.values().flatten().copied().collect();
        let mut assigned = Vec::with_capacity(names.len());
        'outer: for (begin, end) in a.port_ranges.clone() {
            for port in begin..=end {
                if assigned.len() == names.len() {
                    break 'outer;
                }
                if !used.contains(&port) {
                    assigned.push(port);
                }
            }
        }
        if assigned.len() < names.len() {
            return None;
        }
        a.ports_in_use.insert(task_id, assigned.clone());
        Some(names.iter().cloned().zip(assigned).collect())
    }

    fn home_launch(
        &mut self,
        from: ShardId,
        agent: AgentId,
        task_id: TaskId,
        instance: u32,
        config: &TaskConfig,
    ) {
        let conn = self.home_agents.get(&agent).map(|a| a.conn);
        let ports = conn.and_then(|_| self.assign_ports(agent, task_id, &config.port_names));
        match (conn, ports) {
            (Some(conn), Some(ports)) => {
                // Encoded straight into the connection's frame (disjoint fields, no copy).
                let bytes = self.encoder.launch_task(task_id, instance, config, &ports);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.writer.push(bytes);
                }
                if !ports.is_empty() {
                    self.send(from, PeerMsg::PortsAssigned { task_id, ports });
                }
            }
            _ => self.send(from, PeerMsg::LaunchFailed { task_id }),
        }
    }

    fn home_release(&mut self, agent: AgentId, task_id: TaskId, resources: Resources) {
        let Some(a) = self.home_agents.get_mut(&agent) else {
            return;
        };
        a.ports_in_use.remove(&task_id);
        match &mut a.offer {
            OfferWhere::Home => {
                self.index.release(agent, &resources);
                self.retry_blocked();
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
        }
    }

    // ------------------------------------------------------------------ peer messages

    fn handle_peer(&mut self, from: ShardId, msg: PeerMsg) {
        match msg {
            PeerMsg::Client { reply, bytes } => self.handle_client(reply, bytes),
            PeerMsg::ClientReply { conn, bytes } => self.write_conn(conn, &bytes),
            PeerMsg::ListJobs { reply, request_id } => {
                let jobs = self.jobs.iter().map(|j| self.job_summary(j)).collect();
                let refused = !self.acting();
                self.send(
                    reply.shard,
                    PeerMsg::ListPart {
                        conn: reply.conn,
                        request_id,
                        jobs,
                        refused,
                    },
                );
            }
            PeerMsg::ListPart {
                conn,
                request_id,
                jobs,
                refused,
            } => {
                if let Some(g) = self.gathers.get_mut(&(conn, request_id)) {
                    g.jobs.extend(jobs);
                    g.refused |= refused;
                    g.waiting -= 1;
                    if g.waiting == 0 {
                        let mut g = self.gathers.remove(&(conn, request_id)).expect("present");
                        let bytes = if g.refused {
                            // A shard still taking (or leaving) the lead: no partial lists.
                            self.not_leader(request_id)
                        } else {
                            g.jobs.sort_by(|a, b| a.job_key.cmp(&b.job_key));
                            self.encoder.job_list(request_id, &g.jobs).to_vec()
                        };
                        self.write_conn(conn, &bytes);
                    }
                }
            }
            PeerMsg::Status { agent, bytes } => {
                // SAFETY: verified by the reader of the agent's connection.
                let message = unsafe { flatbuffers::root_unchecked::<wire::Message>(&bytes) };
                let s = message
                    .payload_as_task_status()
                    .expect("routed as TaskStatus");
                match state_from_wire(s.state()) {
                    Ok(state) => {
                        self.on_status(&Report {
                            agent,
                            task_id: TaskId(s.task_id()),
                            state,
                            exit_code: s.exit_code(),
                            message: s.message().unwrap_or_default(),
                            sandbox: s.sandbox().unwrap_or_default(),
                            adopting: false,
                        });
                    }
                    Err(e) => tracing::warn!("ignoring status: {e}"),
                }
            }
            PeerMsg::Adopt {
                agent,
                report,
                agent_name,
                hostname,
                attributes,
            } => {
                self.agent_names.insert(
                    agent,
                    Arc::new(AgentNames {
                        name: agent_name,
                        hostname,
                    }),
                );
                if !self.agent_attr_ids.contains_key(&agent) {
                    let ids = self.index.intern_attributes(&attributes);
                    self.agent_attr_ids.insert(agent, ids);
                }
                if self.is_ha() {
                    self.adopt_unknown(agent, &report);
                }
                let adopted = self.on_status(&Report {
                    agent,
                    task_id: report.task_id,
                    state: report.state,
                    exit_code: report.exit_code,
                    message: &report.message,
                    sandbox: &report.sandbox,
                    adopting: true,
                });
                self.send(
                    from,
                    PeerMsg::AdoptReply {
                        agent,
                        task_id: report.task_id,
                        adopted,
                    },
                );
            }
            PeerMsg::AdoptReply {
                agent,
                task_id,
                adopted,
            } => {
                if let Some(a) = self.home_agents.get_mut(&agent) {
                    if let OfferWhere::Adopting { waiting, used } = &mut a.offer {
                        *waiting -= 1;
                        if let Some((resources, ports)) = adopted {
                            *used = used.plus(&resources);
                            a.ports_in_use.insert(task_id, ports);
                        }
                    }
                    self.maybe_offer_adopted(agent);
                }
            }
            PeerMsg::Launch {
                agent,
                task_id,
                instance,
                config,
            } => self.home_launch(from, agent, task_id, instance, &config),
            PeerMsg::PortsAssigned { task_id, ports } => {
                if let Some(t) = self.tasks.get_mut(&task_id) {
                    t.ports = ports;
                    self.log_task(task_id);
                }
            }
            PeerMsg::StatusAck {
                agent,
                task_id,
                state,
            } => {
                if let Some(conn) = self.home_agents.get(&agent).map(|a| a.conn) {
                    self.pending_acks
                        .entry(conn)
                        .or_default()
                        .push((task_id, state));
                }
            }
            PeerMsg::LaunchFailed { task_id } => {
                self.transition(task_id, TaskState::Lost, "agent gone before launch");
            }
            PeerMsg::Kill {
                agent,
                task_id,
                job_key,
            } => {
                if let Some(conn) = self.home_agents.get(&agent).map(|a| a.conn) {
                    let bytes = self.encoder.kill_task(task_id, &job_key);
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.writer.push(bytes);
                    }
                }
            }
            PeerMsg::Release {
                agent,
                task_id,
                resources,
            } => self.home_release(agent, task_id, resources),
            PeerMsg::AgentLost { agent } => self.on_agent_lost(agent),
            PeerMsg::Borrow { demand } => self.lend(from, demand),
            PeerMsg::Lend { offers } => {
                self.borrow_outstanding = false;
                let got = offers.len();
                for o in offers {
                    self.agent_names.insert(
                        o.agent,
                        Arc::new(AgentNames {
                            name: o.agent_name.clone(),
                            hostname: o.hostname.clone(),
                        }),
                    );
                    self.upsert_offer(o.agent, &o.attributes, o.total, o.free);
                    self.borrowed.insert(o.agent);
                }
                self.placed_since_lend = 0;
                self.metrics().offers_borrowed_total.add(got as u64);
                if got > 0 {
                    self.retry_blocked();
                } else {
                    // This peer had nothing that fits: ask the next one, after a pause.
                    self.next_lender = self.next_peer(self.next_lender);
                    self.next_borrow_at = Instant::now() + BORROW_BACKOFF;
                }
            }
            PeerMsg::Return { agent, free } => {
                if let Some(a) = self.home_agents.get_mut(&agent) {
                    let free = free.plus(&a.released_while_lent);
                    a.released_while_lent = Resources::ZERO;
                    a.offer = OfferWhere::Home;
                    self.lent_out -= 1;
                    let (attributes, total) = (a.attributes.clone(), a.total);
                    self.upsert_offer(agent, &attributes, total, free);
                    self.retry_blocked();
                }
            }
        }
    }

    fn next_peer(&self, after: ShardId) -> ShardId {
        let mut next = (after + 1) % self.shard_count;
        if next == self.id {
            next = (next + 1) % self.shard_count;
        }
        next
    }

    fn lend(&mut self, to: ShardId, demand: Resources) {
        let mut offers = Vec::new();
        let candidates: Vec<AgentId> = self
            .home_agents
            .iter()
            .filter(|(_, a)| matches!(a.offer, OfferWhere::Home))
            .map(|(id, _)| *id)
            .collect();
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
            let a = self.home_agents.get_mut(&agent).expect("listed");
            a.offer = OfferWhere::Lent;
            self.lent_out += 1;
            offers.push(LentOffer {
                agent,
                agent_name: a.name.clone(),
                hostname: a.hostname.clone(),
                attributes: a.attributes.clone(),
                total: a.total,
                free,
            });
        }
        self.send(to, PeerMsg::Lend { offers });
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

    fn on_agent_lost(&mut self, agent: AgentId) {
        if self.borrowed.remove(&agent) {
            self.index.remove_agent(agent);
        }
        let mut tasks: Vec<TaskId> = self
            .tasks_by_agent
            .remove(&agent)
            .map(|set| set.into_iter().collect())
            .unwrap_or_default();
        tasks.sort();
        for task_id in tasks {
            if let Some(t) = self.tasks.get_mut(&task_id) {
                // The agent is gone with whatever the task held.
                t.holds = false;
            }
            self.transition(task_id, TaskState::Lost, "agent lost");
        }
        self.agent_names.remove(&agent);
        self.agent_attr_ids.remove(&agent);
    }

    // ------------------------------------------------------------------ client requests (job owner)

    fn handle_client(&mut self, reply: ReplyTo, bytes: Bytes) {
        // SAFETY: verified by the reader of the client's connection.
        let message = unsafe { flatbuffers::root_unchecked::<wire::Message>(&bytes) };
        let request_id = message.request_id();
        if !self.acting() {
            let refusal = self.not_leader(request_id);
            return self.reply(reply, refusal);
        }
        if self.is_ha() {
            // Under etcd leadership a change is acknowledged only once etcd has it.
            let desired = match message.payload_type() {
                wire::Payload::CreateJob => {
                    Some(self.desired_after_create(
                        message.payload_as_create_job().expect("type checked"),
                    ))
                }
                wire::Payload::KillJob => Some(
                    self.desired_after_kill(message.payload_as_kill_job().expect("type checked")),
                ),
                _ => None,
            };
            if let Some(desired) = desired {
                let result = desired.and_then(|(key, desired)| {
                    let pending = PendingPersist {
                        reply: Some(reply),
                        request_id,
                        bytes: Some(bytes.clone()),
                    };
                    self.persist(&key, Some(desired), pending)
                });
                if let Err((code, text)) = result {
                    let bytes = self.encoder.error(request_id, code, &text).to_vec();
                    self.reply(reply, bytes);
                }
                return;
            }
        }
        self.apply_client(reply, bytes);
    }

    /// The desired state a CreateJob would write, after every check `create_job` makes.
    fn desired_after_create(
        &self,
        c: wire::CreateJob<'_>,
    ) -> Result<(JobKey, crate::ha::DesiredJob), (ErrorCode, String)> {
        let (key, instances, config) = self.validate_create(c)?;
        Ok((
            key.clone(),
            crate::ha::DesiredJob {
                key,
                instances,
                config,
                retired: Vec::new(),
            },
        ))
    }

    /// The desired state a KillJob would write (its instances retired).
    fn desired_after_kill(
        &self,
        k: wire::KillJob<'_>,
    ) -> Result<(JobKey, crate::ha::DesiredJob), (ErrorCode, String)> {
        let (job, instances) = self.kill_targets(k)?;
        let mut desired = self.desired(job);
        desired.retired.extend(instances);
        desired.retired.sort_unstable();
        desired.retired.dedup();
        Ok((self.jobs[job].key.clone(), desired))
    }

    /// Applies a (verified, and where needed persisted) client request and replies.
    fn apply_client(&mut self, reply: ReplyTo, bytes: Bytes) {
        // SAFETY: verified by the reader of the client's connection.
        let message = unsafe { flatbuffers::root_unchecked::<wire::Message>(&bytes) };
        let request_id = message.request_id();
        let result = match message.payload_type() {
            wire::Payload::CreateJob => {
                self.create_job(message.payload_as_create_job().expect("type checked"))
            }
            wire::Payload::KillJob => {
                self.kill_job(message.payload_as_kill_job().expect("type checked"))
            }
            wire::Payload::QueryJob => {
                let key = message
                    .payload_as_query_job()
                    .expect("type checked")
                    .job_key();
                match key.parse::<JobKey>() {
                    Ok(key) => match self.job_index.get(&key) {
                        Some(&job) => {
                            let status = self.job_status(job);
                            Ok(self.encoder.job_status(request_id, &status).to_vec())
                        }
                        None => Err((ErrorCode::UnknownJob, format!("unknown job {key}"))),
                    },
                    Err(e) => Err((ErrorCode::InvalidRequest, e.to_string())),
                }
            }
            _ => Err((ErrorCode::InvalidRequest, "not a job request".into())),
        };
        let bytes = match result {
            Ok(bytes) if bytes.is_empty() => self.encoder.ack(request_id).to_vec(),
            Ok(bytes) => bytes,
            Err((code, text)) => self.encoder.error(request_id, code, &text).to_vec(),
        };
        self.reply(reply, bytes);
    }

    fn create_job(&mut self, c: wire::CreateJob<'_>) -> Result<Vec<u8>, (ErrorCode, String)> {
        let (key, instances, config) = self.validate_create(c)?;
        if let Some(&existing) = self.job_index.get(&key) {
            // Every instance of the old job has ended (checked): the new job replaces it.
            self.drop_job(existing);
        }
        let job = self.install_job(key.clone(), instances, config);
        self.log(&LogRecord::JobCreated {
            key: key.clone(),
            instances,
            config: (*self.jobs[job].config).clone(),
        });
        for instance in 0..instances {
            let id = self.new_task(job, instance, 0, 0);
            self.pending.push_back(id);
        }
        tracing::info!(shard = self.id, job = %key, instances, "job created");
        Ok(Vec::new())
    }

    /// Every check of a CreateJob, changing nothing.
    fn validate_create(
        &self,
        c: wire::CreateJob<'_>,
    ) -> Result<(JobKey, u32, TaskConfig), (ErrorCode, String)> {
        let key: JobKey = c
            .job_key()
            .parse()
            .map_err(|e: borealis_core::JobKeyError| (ErrorCode::InvalidRequest, e.to_string()))?;
        let instances = c.instances();
        if instances == 0 {
            return Err((
                ErrorCode::InvalidRequest,
                format!("job {key}: instances must be >= 1"),
            ));
        }
        if instances > self.config.max_tasks_per_job {
            return Err((
                ErrorCode::TooManyTasks,
                format!(
                    "job {key}: {instances} instances exceed --max-tasks-per-job {}",
                    self.config.max_tasks_per_job
                ),
            ));
        }
        let config = task_config_from_wire(key.clone(), c.config())
            .map_err(|e| (ErrorCode::InvalidRequest, format!("job {key}: {e}")))?;
        policy::validate_config(&config)
            .map_err(|e| (ErrorCode::InvalidRequest, format!("job {key}: {e}")))?;
        if let Some(&existing) = self.job_index.get(&key) {
            let live = self.jobs[existing]
                .current
                .iter()
                .flatten()
                .any(|t| self.tasks.get(t).is_some_and(|t| !t.state.is_terminal()));
            if live {
                return Err((ErrorCode::JobExists, format!("job {key} already exists")));
            }
        }
        Ok((key, instances, config))
    }

    /// Adds a job with no tasks yet.
    fn install_job(&mut self, key: JobKey, instances: u32, config: TaskConfig) -> JobIdx {
        let compiled = self.index.compile(&config);
        let spread = JobSpread::new(&compiled);
        let key_text: Arc<str> = key.to_string().into();
        let job = self.jobs.insert(Job {
            key: key.clone(),
            key_text,
            config: Arc::new(config),
            compiled,
            spread,
            current: vec![None; instances as usize],
            history: VecDeque::new(),
            retired: vec![false; instances as usize],
        });
        self.job_index.insert(key, job);
        job
    }

    /// Forgets a job whose tasks have all ended.
    fn drop_job(&mut self, job: JobIdx) {
        let removed_key = self.jobs[job].key.clone();
        let ids: Vec<TaskId> = self.jobs[job]
            .current
            .iter()
            .flatten()
            .chain(self.jobs[job].history.iter())
            .copied()
            .collect();
        for id in ids {
            if let Some(t) = self.tasks.remove(&id) {
                debug_assert!(t.state.is_terminal());
                self.state_counts[t.state as usize] -= 1;
            }
        }
        self.job_index.remove(&removed_key);
        self.jobs.remove(job);
        self.log(&LogRecord::JobRemoved { key: removed_key });
    }

    fn new_task(&mut self, job: JobIdx, instance: u32, failure_count: u32, flaps: u32) -> TaskId {
        let id = self.ids.next_id();
        let now = self.now_us;
        self.tasks.insert(
            id,
            Task {
                id,
                job,
                instance,
                state: TaskState::Pending,
                agent: None,
                host: None,
                holds: false,
                failure_count,
                consecutive_flaps: flaps,
                entered_us: now,
                running_since_us: None,
                exit_code: -1,
                message: String::new(),
                ports: Vec::new(),
                sandbox: String::new(),
                killed_by_user: false,
                awaiting_adoption: false,
            },
        );
        self.jobs[job].current[instance as usize] = Some(id);
        self.count_state(None, TaskState::Pending);
        self.log_task(id);
        id
    }

    fn log(&mut self, record: &LogRecord) {
        if let Some(wal) = &mut self.wal {
            wal.append(record);
        }
    }

    fn task_image(&self, id: TaskId) -> Option<TaskImage> {
        let t = self.tasks.get(&id)?;
        Some(TaskImage {
            id,
            job: self.jobs[t.job].key.clone(),
            instance: t.instance,
            state: t.state,
            agent_name: t.host.as_ref().map(|h| h.name.to_string()),
            hostname: t.host.as_ref().map(|h| h.hostname.to_string()),
            failure_count: t.failure_count,
            consecutive_flaps: t.consecutive_flaps,
            exit_code: t.exit_code,
            message: t.message.clone(),
            ports: t.ports.clone(),
            sandbox: t.sandbox.clone(),
            killed_by_user: t.killed_by_user,
        })
    }

    /// Logs every field of a task (new or changed), encoded from the task in place: no copy
    /// of its strings per transition.
    fn log_task(&mut self, id: TaskId) {
        let Some(wal) = &mut self.wal else {
            return;
        };
        let Some(t) = self.tasks.get(&id) else {
            return;
        };
        wal.append_task(&TaskImageRef {
            id,
            job: &self.jobs[t.job].key,
            instance: t.instance,
            state: t.state,
            agent_name: t.host.as_ref().map(|h| &*h.name),
            hostname: t.host.as_ref().map(|h| &*h.hostname),
            failure_count: t.failure_count,
            consecutive_flaps: t.consecutive_flaps,
            exit_code: t.exit_code,
            message: &t.message,
            ports: &t.ports,
            sandbox: &t.sandbox,
            killed_by_user: t.killed_by_user,
        });
    }

    fn metrics(&self) -> &ShardMetrics {
        &self.metrics.shards[self.id]
    }

    /// Keeps the per-state task counts (a gauge) and the transition counter.
    fn count_state(&mut self, from: Option<TaskState>, to: TaskState) {
        if let Some(from) = from {
            debug_assert!(self.state_counts[from as usize] > 0);
            self.state_counts[from as usize] -= 1;
        }
        self.state_counts[to as usize] += 1;
        self.metrics().transitions_total[to as usize].inc();
    }

    /// Publishes the gauges a scrape reads (end of each round: a few plain stores).
    pub fn publish_metrics(&self, inbound_queue_depth: usize) {
        let m = self.metrics();
        for (gauge, count) in m.tasks_by_state.iter().zip(self.state_counts) {
            gauge.set(count);
        }
        m.pending_by_reason[0].set(self.pending.len() as u64);
        m.pending_by_reason[1].set(self.blocked.len() as u64);
        m.pending_by_reason[2].set(self.throttled.len() as u64);
        m.offers_held.set(self.index.agent_count() as u64);
        m.offers_lent_out.set(self.lent_out as u64);
        m.agents_connected.set(self.home_agents.len() as u64);
        m.connections.set(self.conns.len() as u64);
        m.jobs.set(self.jobs.len() as u64);
        m.leading.set(u64::from(self.acting()));
        m.inbound_queue_depth.set(inbound_queue_depth as u64);
        m.peer_outbox_depth
            .set(self.outbox.iter().map(Vec::len).sum::<usize>() as u64);
    }

    fn kill_job(&mut self, k: wire::KillJob<'_>) -> Result<Vec<u8>, (ErrorCode, String)> {
        let (job, instances) = self.kill_targets(k)?;
        for instance in instances {
            self.jobs[job].retired[instance as usize] = true;
            let Some(task_id) = self.jobs[job].current[instance as usize] else {
                continue;
            };
            if let Some(t) = self.tasks.get_mut(&task_id) {
                t.killed_by_user = true;
            }
            self.transition(task_id, TaskState::Killing, "killed by user");
        }
        Ok(Vec::new())
    }

    /// The job and instances a KillJob names, after every check.
    fn kill_targets(
        &self,
        k: wire::KillJob<'_>,
    ) -> Result<(JobIdx, Vec<u32>), (ErrorCode, String)> {
        let key: JobKey = k
            .job_key()
            .parse()
            .map_err(|e: borealis_core::JobKeyError| (ErrorCode::InvalidRequest, e.to_string()))?;
        let Some(&job) = self.job_index.get(&key) else {
            return Err((ErrorCode::UnknownJob, format!("unknown job {key}")));
        };
        let count = self.jobs[job].current.len() as u32;
        let instances: Vec<u32> = match k.instances() {
            Some(list) if !list.is_empty() => list.iter().collect(),
            _ => (0..count).collect(),
        };
        if let Some(bad) = instances.iter().find(|&&i| i >= count) {
            return Err((
                ErrorCode::InvalidRequest,
                format!("job {key} has no instance {bad} (instances 0..{count})"),
            ));
        }
        Ok((job, instances))
    }

    fn job_summary(&self, job: &Job) -> JobSummaryView {
        let mut state_counts = [0u32; TaskState::COUNT];
        for id in job.current.iter().flatten().chain(job.history.iter()) {
            if let Some(t) = self.tasks.get(id) {
                state_counts[t.state as usize] += 1;
            }
        }
        JobSummaryView {
            job_key: job.key_text.to_string(),
            instances: job.current.len() as u32,
            is_service: job.config.is_service,
            state_counts,
        }
    }

    fn job_status(&self, job: JobIdx) -> JobStatusView {
        let j = &self.jobs[job];
        let mut tasks: Vec<TaskInfoView> = j
            .history
            .iter()
            .chain(j.current.iter().flatten())
            .filter_map(|id| self.tasks.get(id))
            .map(|t| {
                let (agent_id, hostname) = t
                    .host
                    .as_ref()
                    .map(|h| (h.name.to_string(), h.hostname.to_string()))
                    .unwrap_or_default();
                TaskInfoView {
                    task_id: t.id.0,
                    instance: t.instance,
                    state: Some(t.state),
                    agent_id,
                    hostname,
                    failure_count: t.failure_count,
                    exit_code: t.exit_code,
                    message: t.message.clone(),
                    ports: t.ports.clone(),
                    sandbox: t.sandbox.clone(),
                }
            })
            .collect();
        tasks.sort_by_key(|t| (t.instance, t.task_id));
        JobStatusView {
            job: self.job_summary(j),
            tasks,
        }
    }

    // ------------------------------------------------------------------ task lifecycle (job owner)

    /// Applies a status reported by an agent. Returns what an adopted task holds on the
    /// agent (for `Adopt`), `None` when the task was not adopted.
    fn on_status(&mut self, report: &Report<'_>) -> Option<(Resources, Vec<u16>)> {
        let adopted = self.apply_status(report);
        let Report {
            agent,
            task_id,
            state: reported,
            ..
        } = *report;
        if reported.is_terminal() {
            // Acknowledged whatever became of it: the agent stops re-reporting it. The ack
            // leaves only after this round's commit.
            self.send(
                agent_home(agent),
                PeerMsg::StatusAck {
                    agent,
                    task_id,
                    state: reported,
                },
            );
        }
        adopted
    }

    fn apply_status(&mut self, report: &Report<'_>) -> Option<(Resources, Vec<u16>)> {
        let Report {
            agent,
            task_id,
            state: reported,
            exit_code,
            message,
            sandbox,
            adopting,
        } = *report;
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
            return None;
        };
        if t.agent != Some(agent) {
            let placed = t.agent.is_some() || t.awaiting_adoption;
            // A restored task may also have ended while the scheduler was down: its agent's
            // report is the truth (it must not be marked LOST and run again).
            let ended_while_down = t.awaiting_adoption && reported.is_terminal();
            let adoptable = adopting
                && placed
                && !t.state.is_terminal()
                && (!reported.is_terminal() || ended_while_down);
            if !adoptable {
                if !reported.is_terminal() {
                    let key = self.jobs[t.job].key_text.clone();
                    self.kill_on_agent(agent, task_id, key);
                }
                return None;
            }
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
            t.holds = !ended_while_down;
            t.host = self.agent_names.get(&agent).cloned();
            self.log_task(task_id);
        }
        let t = self.tasks.get_mut(&task_id).expect("present");
        if !sandbox.is_empty() && t.sandbox.is_empty() {
            t.sandbox = sandbox.to_string();
        }
        if t.state.is_terminal() {
            if !reported.is_terminal() {
                let key = self.jobs[t.job].key_text.clone();
                self.kill_on_agent(agent, task_id, key);
            }
            return None;
        }
        if reported.is_terminal() {
            t.exit_code = exit_code;
            t.message.clear();
            t.message.push_str(message);
        }
        let resources = self.jobs[t.job].config.resources;
        let ports: Vec<u16> = t.ports.iter().map(|(_, p)| *p).collect();
        let next = policy::next_state(t.state, reported);
        if let Some(next) = next {
            self.transition(task_id, next, message);
        }
        if adopting {
            let t = self.tasks.get(&task_id)?;
            if !t.state.is_terminal() {
                return Some((resources, ports));
            }
        }
        None
    }

    /// Asks the agent's home shard to kill a task on it (a task the agent should not run).
    fn kill_on_agent(&mut self, agent: AgentId, task_id: TaskId, job_key: Arc<str>) {
        self.send(
            agent_home(agent),
            PeerMsg::Kill {
                agent,
                task_id,
                job_key,
            },
        );
    }

    /// Moves a task to `next` (when legal) and applies the consequences: resources, kills,
    /// rescheduling.
    fn transition(&mut self, task_id: TaskId, next: TaskState, why: &str) {
        let now = self.now_us;
        let Some(t) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let prev = t.state;
        if prev == next || !prev.can_transition_to(next) {
            tracing::debug!(task = %task_id, %prev, %next, "ignored transition");
            return;
        }
        t.state = next;
        t.entered_us = now;
        if (t.message.is_empty() || !next.is_terminal()) && t.message != why {
            // Reuses the string's buffer: no allocation per transition.
            t.message.clear();
            t.message.push_str(why);
        }
        if next == TaskState::Running {
            t.running_since_us = Some(now);
        }
        let job = t.job;
        let agent = t.agent;
        self.count_state(Some(prev), next);
        self.log_task(task_id);
        match next {
            TaskState::Killing
            | TaskState::Preempting
            | TaskState::Draining
            | TaskState::Restarting => {
                if let Some(agent) = agent {
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

    fn task_ended(&mut self, task_id: TaskId, prev: TaskState, now: u64) {
        let t = self.tasks.get_mut(&task_id).expect("present");
        let job = t.job;
        let instance = t.instance;
        if let Some(agent) = t.agent {
            if t.holds {
                t.holds = false;
                let resources = self.jobs[job].config.resources;
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
        let interruption = if t.killed_by_user {
            Interruption::UserKill
        } else if final_state == TaskState::Lost {
            // Losing the agent is not the task's fault: no flapping penalty.
            Interruption::Operator
        } else {
            Interruption::None
        };
        let config = &self.jobs[job].config;
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
        let decision = match outcome.reschedule {
            Reschedule::No => None,
            Reschedule::Now => Some((0, outcome.consecutive_flaps)),
            Reschedule::After { delay_ms } => Some((delay_ms, outcome.consecutive_flaps)),
        };
        if let Some(t) = self.tasks.get_mut(&task_id) {
            if t.failure_count != failure_count {
                t.failure_count = failure_count;
                self.log_task(task_id);
            }
        }
        // Retire into history.
        let j = &mut self.jobs[job];
        j.history.push_back(task_id);
        if j.current[instance as usize] == Some(task_id) {
            j.current[instance as usize] = None;
        }
        self.ended.push_back((now, task_id));
        self.log(&LogRecord::TaskEnded { id: task_id });
        self.prune_history_over_max(job, now);
        if decision.is_none() && self.is_ha() && !self.jobs[job].retired[instance as usize] {
            // Ended for good: a new leader must not start it again.
            self.jobs[job].retired[instance as usize] = true;
            let desired = self.desired(job);
            let key = self.jobs[job].key.clone();
            let pending = PendingPersist {
                reply: None,
                request_id: 0,
                bytes: None,
            };
            if let Err((_, e)) = self.persist(&key, Some(desired), pending) {
                tracing::error!(shard = self.id, job = %key, "cannot persist a retired instance: {e}");
            }
        }
        if let Some((delay_ms, flaps)) = decision {
            let id = self.new_task(job, instance, failure_count, flaps);
            if delay_ms == 0 {
                self.pending.push_back(id);
            } else {
                let t = self.tasks.get_mut(&id).expect("new");
                t.state = TaskState::Throttled;
                t.message = format!("throttled for {} ms (flapping)", delay_ms);
                self.throttled.insert((now + delay_ms * 1000, id), ());
                self.count_state(Some(TaskState::Pending), TaskState::Throttled);
                self.log_task(id);
            }
        }
    }

    /// Aurora's `history_max_per_job_threshold`: a job keeps at most that many terminal tasks,
    /// except those younger than `history_min_retention_threshold`.
    fn prune_history_over_max(&mut self, job: JobIdx, now: u64) {
        let min_retention_us = self.config.history_min_retention_ms * 1000;
        while self.jobs[job].history.len() > self.config.history_max_per_job {
            let oldest = *self.jobs[job].history.front().expect("non-empty");
            let ended_us = self.tasks.get(&oldest).map_or(0, |t| t.entered_us);
            if ended_us + min_retention_us > now {
                break;
            }
            self.jobs[job].history.pop_front();
            self.forget_task(oldest);
        }
    }

    fn forget_task(&mut self, task_id: TaskId) {
        self.log(&LogRecord::TaskForgotten { id: task_id });
        if let Some(t) = self.tasks.remove(&task_id) {
            debug_assert!(
                t.state.is_terminal(),
                "forgetting live task {task_id} in {}",
                t.state
            );
            self.state_counts[t.state as usize] -= 1;
        }
    }

    /// Aurora's `history_prune_threshold`: terminal tasks older than it are forgotten, and a
    /// job with no task left (live or ended) goes with them.
    fn prune_expired_history(&mut self, now: u64) {
        let threshold_us = self.config.history_prune_threshold_ms * 1000;
        while let Some(&(ended_us, task_id)) = self.ended.front() {
            if ended_us + threshold_us > now {
                break;
            }
            self.ended.pop_front();
            let Some(job) = self.tasks.get(&task_id).map(|t| t.job) else {
                continue; // pruned already (over the per-job maximum, or its job replaced)
            };
            // A job's history is in end order, so an expiring task is at its front.
            if self.jobs[job].history.front() != Some(&task_id) {
                continue;
            }
            self.jobs[job].history.pop_front();
            self.forget_task(task_id);
            let j = &self.jobs[job];
            if j.history.is_empty() && j.current.iter().all(Option::is_none) {
                tracing::debug!(job = %j.key, "every task of the job ended and was pruned");
                let key = j.key.clone();
                self.drop_job(job);
                if self.is_ha() {
                    // Nothing of the job is left: neither should its desired state be.
                    let pending = PendingPersist {
                        reply: None,
                        request_id: 0,
                        bytes: None,
                    };
                    if let Err((_, e)) = self.persist(&key, None, pending) {
                        tracing::warn!(job = %key, "cannot delete a pruned job's desired state: {e}");
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------------ placement

    /// Notes that offers changed; `schedule` then retries a bounded number of blocked tasks.
    fn retry_blocked(&mut self) {
        self.offers_changed = true;
    }

    /// Places pending tasks against the offers this shard owns. Returns how many were placed.
    pub fn schedule(&mut self) -> usize {
        if !self.acting() {
            return 0;
        }
        let mut placed = 0;
        let mut attempts = 0;
        let mut failed_jobs: HashSet<JobIdx> = HashSet::default();
        if std::mem::take(&mut self.offers_changed) {
            // Blocked tasks are the oldest: they go first, a bounded number per round.
            let n = self.blocked.len().min(BLOCKED_RETRY_MAX);
            for id in self.blocked.drain(..n).rev() {
                self.pending.push_front(id);
            }
        }
        let mut run = std::mem::take(&mut self.run_tasks);
        let mut agents = std::mem::take(&mut self.run_agents);
        while attempts < ROUND_PLACEMENTS_MAX {
            // Take the run of pending tasks of one job at the front of the queue: placing
            // them as one batch lets the index skip agents the job's limits already exclude.
            run.clear();
            let mut job = None;
            while run.len() < PLACEMENT_BATCH_MAX {
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
                if job.is_some_and(|j| j != t.job) {
                    break;
                }
                job = Some(t.job);
                run.push(task_id);
                self.pending.pop_front();
            }
            let Some(job) = job else {
                break;
            };
            attempts += run.len();
            if failed_jobs.contains(&job) {
                self.blocked.extend(run.iter().copied());
                continue;
            }
            agents.clear();
            let j = &mut self.jobs[job];
            let n = self
                .index
                .place_batch(&j.compiled, &mut j.spread, run.len(), &mut agents);
            debug_assert_eq!(n, agents.len());
            for (task_id, agent) in run.iter().zip(agents.iter()) {
                self.assign(*task_id, *agent);
            }
            placed += n;
            if n < run.len() {
                failed_jobs.insert(job);
                self.blocked.extend(run[n..].iter().copied());
            }
        }
        self.run_tasks = run;
        self.run_agents = agents;
        self.placed_since_lend += placed;
        let m = self.metrics();
        m.attempt(AttemptResult::Placed, placed as u64);
        m.attempt(AttemptResult::NoFit, (attempts - placed) as u64);
        if !self.borrowed.is_empty() && placed == 0 && self.placed_since_lend == 0 {
            // Borrowed offers did not help (constraints, not capacity): do not spin on them.
            self.next_borrow_at = Instant::now() + BORROW_BACKOFF;
            self.next_lender = self.next_peer(self.next_lender);
        }
        if !self.blocked.is_empty()
            && self.shard_count > 1
            && !self.borrow_outstanding
            && Instant::now() >= self.next_borrow_at
        {
            if let Some(t) = self.blocked.front().and_then(|id| self.tasks.get(id)) {
                let demand = self.jobs[t.job].config.resources;
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
    fn assign(&mut self, task_id: TaskId, agent: AgentId) {
        let now = self.now_us;
        let t = self.tasks.get_mut(&task_id).expect("pending task");
        debug_assert!(t.state.can_transition_to(TaskState::Assigned));
        t.state = TaskState::Assigned;
        let waited_us = now.saturating_sub(t.entered_us);
        t.entered_us = now;
        t.agent = Some(agent);
        t.holds = true;
        t.message.clear();
        t.host = self.agent_names.get(&agent).cloned();
        let (job, instance) = (t.job, t.instance);
        self.tasks_by_agent
            .entry(agent)
            .or_default()
            .insert(task_id);
        self.count_state(Some(TaskState::Pending), TaskState::Assigned);
        self.log_task(task_id);
        self.metrics()
            .placement_latency
            .observe_nanos(waited_us * 1000);
        let config = self.jobs[job].config.clone();
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

    // ------------------------------------------------------------------ timers

    fn tick(&mut self) {
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
            if let Some(t) = self.tasks.get_mut(&id) {
                if t.state == TaskState::Throttled {
                    t.state = TaskState::Pending;
                    t.entered_us = now;
                    t.message.clear();
                    self.pending.push_back(id);
                    self.count_state(Some(TaskState::Throttled), TaskState::Pending);
                    self.log_task(id);
                }
            }
        }
        if self.last_blocked_retry.elapsed() >= BLOCKED_RETRY {
            self.last_blocked_retry = Instant::now();
            self.retry_blocked();
        }
        if self.last_sweep.elapsed() >= SWEEP_INTERVAL {
            self.last_sweep = Instant::now();
            self.check_transient_timeouts(now);
            self.prune_expired_history(now);
            self.expire_unadopted(now);
            self.start_missing_instances();
            self.maybe_snapshot_and_backup();
            self.check_silent_agents();
        }
    }

    fn check_transient_timeouts(&mut self, now: u64) {
        let timeout = self.config.lifecycle.transient_task_state_timeout_ms;
        let stuck: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| {
                matches!(
                    t.state,
                    TaskState::Assigned
                        | TaskState::Starting
                        | TaskState::Killing
                        | TaskState::Preempting
                        | TaskState::Draining
                        | TaskState::Restarting
                ) && now.saturating_sub(t.entered_us) / 1000 > timeout
            })
            .map(|t| t.id)
            .collect();
        for id in stuck {
            let t = &self.tasks[&id];
            let next = if t.state == TaskState::Killing {
                TaskState::Killed
            } else {
                TaskState::Lost
            };
            self.transition(id, next, "timed out in a transient state");
        }
    }

    fn check_silent_agents(&mut self) {
        let silent: Vec<(AgentId, ConnId)> = self
            .home_agents
            .iter()
            .filter(|(_, a)| a.last_seen.elapsed() > AGENT_SILENCE_MAX)
            .map(|(id, a)| (*id, a.conn))
            .collect();
        for (_, conn) in silent {
            self.protocol_error(conn, "agent silent for too long");
        }
    }

    // ------------------------------------------------------------------ flush

    /// Writes each connection's batched frames (one queued write per connection per round).
    pub fn flush_connections(&mut self) {
        if !self.pending_acks.is_empty() {
            let mut acks = std::mem::take(&mut self.pending_acks);
            for (conn, list) in acks.drain() {
                let bytes = self.encoder.status_ack(&list);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.writer.push(bytes);
                }
            }
        }
        let mut dead = Vec::new();
        for (id, c) in self.conns.iter_mut() {
            if c.writer.is_empty() {
                continue;
            }
            if c.out.is_full() {
                // The writer is behind: keep accumulating here, within a bound.
                if c.writer.len_bytes() > CONN_PENDING_BYTES_MAX {
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

    /// Puts back a batch the peer's queue could not take; newer messages stay behind it.
    pub fn restore_outbox(&mut self, to: ShardId, mut batch: PeerBatch) {
        batch.append(&mut self.outbox[to]);
        self.outbox[to] = batch;
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}
