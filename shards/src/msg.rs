//! Messages between shards and from a shard's own connection tasks to its loop.
//!
//! Every cross-shard message travels in a [`PeerBatch`]: one channel operation per peer per
//! round, whatever the number of messages. Payloads that came off the wire stay as the
//! verified flatbuffer bytes (`Bytes` slices of the read buffer): zero-copy routing.

use std::sync::Arc;

use borealis_core::placement::AgentId;
use borealis_core::{Attributes, Resources, TaskConfig, TaskId};
use borealis_net::views::{JobSummaryView, TaskStatusReport};
use bytes::Bytes;

/// What kind of cluster-wide question a client asked (the connection's dispatcher names it;
/// the gathering shard adds the request's paging and the reader's scope: [`GatherAsk`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatherOf {
    /// Its jobs' summaries.
    Jobs,
    /// Its active updates.
    Updates,
    /// Its home agents.
    Agents,
    /// The task with this id, with its job, if the shard owns it.
    Task(TaskId),
}

/// Whose jobs a cluster-wide list may show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadScope {
    /// Every role's (no `--auth-file`).
    All,
    /// Those of the roles this principal may read (`Principal::may_read`).
    Principal(Arc<borealis_core::auth::Principal>),
}

impl ReadScope {
    /// Whether a job of `role` may be shown.
    pub fn allows(&self, role: &str) -> bool {
        match self {
            ReadScope::All => true,
            ReadScope::Principal(p) => p.may_read(role),
        }
    }
}

/// What a scatter-gather asks every shard for (see `shard::gather`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatherAsk {
    /// Its first `limit` jobs the scope shows whose keys sort after `after`, in key order.
    Jobs {
        after: Option<Arc<str>>,
        limit: usize,
        scope: ReadScope,
    },
    /// Its active updates the scope shows (at most one more than a list holds).
    Updates { scope: ReadScope },
    /// Its first `limit` home agents after `after` (hostname, agent id), in that order.
    Agents {
        after: Option<(Arc<str>, Arc<str>)>,
        limit: usize,
    },
    /// The task with this id, with its job, if the shard owns it.
    Task(TaskId),
}

/// One shard's part of a scatter-gather (only the field of its `GatherAsk` is filled).
#[derive(Debug, Default)]
pub struct GatherPart {
    pub jobs: Vec<JobSummaryView>,
    pub updates: Vec<borealis_net::views::UpdateInfoView>,
    pub agents: Vec<borealis_net::views::AgentInfoView>,
    pub task: Option<borealis_net::views::JobStatusView>,
    /// The shard has more than it sent (past the page's limit).
    pub more: bool,
}

/// Index of a shard, `0..shard_count`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub usize);

impl ShardId {
    /// Every shard of `shard_count`, in order.
    pub fn all(shard_count: usize) -> impl Iterator<Item = ShardId> {
        (0..shard_count).map(ShardId)
    }
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A connection, unique within its shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a client's response goes: the connection's shard and the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    pub shard: ShardId,
    pub conn: ConnId,
}

/// The home shard of an agent is the shard that holds its connection; it is encoded in the
/// agent's number (the top byte: at most 256 shards) so any shard can route to it without a
/// lookup. The 56 bits below count the shard's registrations: at a million a second they last
/// two thousand years, so a number is never reused.
pub const AGENT_HOME_SHIFT: u32 = 56;

pub fn agent_home(agent: AgentId) -> ShardId {
    ShardId((agent.0 >> AGENT_HOME_SHIFT) as usize)
}

/// An agent's offer as it moves between shards.
#[derive(Clone, Debug)]
pub struct LentOffer {
    pub agent: AgentId,
    pub agent_name: Arc<str>,
    pub hostname: Arc<str>,
    pub attributes: Arc<Attributes>,
    pub total: Resources,
    pub free: Resources,
}

/// One message between shards.
#[derive(Debug)]
pub enum PeerMsg {
    /// A client request for a job this shard owns; `bytes` is the verified message.
    Client {
        reply: ReplyTo,
        bytes: Bytes,
    },
    /// A finished response to write on a connection of the receiving shard.
    ClientReply {
        conn: ConnId,
        bytes: Vec<u8>,
    },
    /// Scatter part of a cluster-wide question (`ListJobs`, a cluster-wide `QueryUpdates`,
    /// `ListAgents`, `QueryTask`): answer with this shard's part.
    Gather {
        reply: ReplyTo,
        request_id: u64,
        of: GatherAsk,
    },
    /// Gather part: one shard's answer.
    GatherPart {
        conn: ConnId,
        request_id: u64,
        part: GatherPart,
        /// The part's shard does not lead (yet): the answer would be partial.
        refused: bool,
    },
    /// A verified `TaskStatus` message from `agent` for a job the receiver owns.
    Status {
        agent: AgentId,
        bytes: Bytes,
    },
    /// A task an agent reported on (re-)registration; the job's owner adopts or rejects it.
    Adopt {
        agent: AgentId,
        report: TaskStatusReport,
        /// Who the agent is, so the owner can show it and count it in limit constraints.
        agent_name: Arc<str>,
        hostname: Arc<str>,
        attributes: Arc<Attributes>,
    },
    /// The owner's answer to `Adopt`: the resources and ports the task holds when adopted.
    AdoptReply {
        agent: AgentId,
        task_id: TaskId,
        adopted: Option<(Resources, Vec<u16>)>,
        /// Refused but still running there, being killed: what it holds until it ends.
        killed: Option<Resources>,
        /// What a preemption search needs to know of the adopted task.
        running: Option<crate::shard::RunningTask>,
    },
    /// Launch on an agent whose connection the receiver holds. The receiver assigns the
    /// port numbers and answers with `PortsAssigned` (or `LaunchFailed`).
    Launch {
        agent: AgentId,
        task_id: TaskId,
        instance: u32,
        config: Arc<TaskConfig>,
    },
    PortsAssigned {
        task_id: TaskId,
        ports: Vec<(String, u16)>,
    },
    /// A terminal status the job's owner made durable: acknowledge it to the agent.
    StatusAck {
        agent: AgentId,
        task_id: TaskId,
        state: borealis_core::TaskState,
    },
    /// The agent is gone: the task was not launched.
    LaunchFailed {
        task_id: TaskId,
    },
    /// Kill a task on an agent whose connection the receiver holds.
    Kill {
        agent: AgentId,
        task_id: TaskId,
        job_key: Arc<str>,
    },
    /// A task left the agent: its resources and ports are free again.
    Release {
        agent: AgentId,
        task_id: TaskId,
        resources: Resources,
    },
    /// The agent's connection closed: its tasks are LOST.
    AgentLost {
        agent: AgentId,
    },
    /// The sender has pending work that fits nothing it owns: lend it offers that fit `demand`.
    Borrow {
        demand: Resources,
    },
    /// Answer to `Borrow` (possibly empty). Ownership of these offers moves to the receiver.
    /// With `reserved_for`, not an answer: a held preemption slot is ready for that task.
    Lend {
        offers: Vec<LentOffer>,
        reserved_for: Option<TaskId>,
    },
    /// Preemption: find the best slot among your agents for this task.
    SlotSearch(crate::shard::SlotQuery),
    /// The answer to `SlotSearch`; `fits`: the task fits an agent without preemption.
    SlotFound {
        token: u64,
        slot: Option<crate::shard::SlotOffer>,
        fits: bool,
    },
    /// Hold this agent for the preemptor and have these victims preempted.
    SlotClaim {
        agent: AgentId,
        task_id: TaskId,
        demand: Resources,
        victims: Vec<(TaskId, ShardId)>,
        hold_ms: u64,
    },
    /// Preempt this task (of a job the receiver owns) for `preemptor`.
    Preempt {
        task_id: TaskId,
        preemptor: TaskId,
    },
    /// A borrowed offer goes back to its home with what is left of it.
    Return {
        agent: AgentId,
        free: Resources,
    },
    /// Why pending: explain why the sender's job fits none of the receiver's offers. The
    /// job's limit spread travels by attribute and value names (interned ids are per shard).
    Explain {
        job_key: Arc<str>,
        epoch: u64,
        config: Arc<TaskConfig>,
        spread: Vec<(String, String, u32)>,
    },
    /// Quota: may the sender's new production job hold `demand` of `role`'s quota? The
    /// receiver owns the role's quota; it reserves the demand when it answers yes.
    QuotaCheck {
        role: Arc<str>,
        token: u64,
        demand: Resources,
    },
    /// The answer to `QuotaCheck`: Err carries the refusal (resource, quota, use, request).
    QuotaVerdict {
        token: u64,
        result: Result<(), String>,
    },
    /// The sender's production jobs of `role` now hold `used`; its reservations `settled`
    /// are done with.
    QuotaUsage {
        role: Arc<str>,
        used: Resources,
        settled: Vec<u64>,
    },
    /// Everything the sender's production jobs hold of the roles the receiver owns (after
    /// a restart, a new lead, or on request).
    UsageSnapshot {
        usage: Vec<(Arc<str>, Resources)>,
    },
    /// Send me a `UsageSnapshot` (this shard rebuilds its quota ledger).
    UsageRequest,
    /// The answer to `Explain`.
    Explained {
        job_key: Arc<str>,
        epoch: u64,
        reasons: borealis_core::placement::PendingReasons,
    },
    /// Maintenance: set these hosts' modes (the receiver owns them), for a client of the
    /// sender; answered with `HostModesSet` once every shard applied the change.
    SetHostModes {
        reply: ReplyTo,
        request_id: u64,
        op: borealis_core::MaintenanceOp,
        hosts: Vec<Arc<str>>,
        drain_deadline_unix_ms: u64,
    },
    /// The owner's answer to `SetHostModes` (`refusal`: the error to send the client).
    HostModesSet {
        conn: ConnId,
        request_id: u64,
        refusal: Option<Vec<u8>>,
    },
    /// The owner announces a host's mode (None: back in service) or drain progress; with
    /// `ack`, answer `HostUpdateApplied` once applied.
    HostUpdate {
        host: Arc<str>,
        state: Option<crate::shard::HostState>,
        ack: Option<u64>,
    },
    HostUpdateApplied {
        token: u64,
    },
    /// To a draining host's owner: the sender's tasks still active on it, and some that wait
    /// for their job's SLA, as of the host's `epoch`.
    HostProgress {
        host: Arc<str>,
        epoch: u64,
        active: u32,
        blocked: Vec<borealis_net::views::HostBlockerView>,
    },
}

pub type PeerBatch = Vec<PeerMsg>;

/// Where a connection's output goes: the socket writer's bounded queue in the runtime, a
/// captured queue in the simulation. The shard only ever asks whether it is full and hands
/// over one coalesced write.
pub trait ConnOut: std::fmt::Debug {
    /// The writer is behind: keep accumulating in the shard (within its bound).
    fn is_full(&self) -> bool;
    /// Queues one write; `Err` when the writer is gone or full (the connection is dropped).
    fn try_send(&self, bytes: Vec<u8>) -> Result<(), Vec<u8>>;
    /// Bytes queued to the writer and not yet written to the socket.
    fn queued_bytes(&self) -> usize {
        0
    }
}

impl ConnOut for glommio::channels::local_channel::LocalSender<Vec<u8>> {
    fn is_full(&self) -> bool {
        glommio::channels::local_channel::LocalSender::is_full(self)
    }

    fn try_send(&self, bytes: Vec<u8>) -> Result<(), Vec<u8>> {
        glommio::channels::local_channel::LocalSender::try_send(self, bytes).map_err(|e| match e {
            glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(bytes))
            | glommio::GlommioError::Closed(glommio::ResourceType::Channel(bytes)) => bytes,
            _ => Vec::new(),
        })
    }
}

/// What a shard's loop receives.
#[derive(Debug)]
pub enum Inbound {
    Peer {
        from: ShardId,
        batch: PeerBatch,
    },
    ConnOpened {
        conn: ConnId,
        peer: std::net::SocketAddr,
        /// What the peer proved in the TLS handshake (`Plain` without TLS).
        identity: borealis_net::tls::PeerIdentity,
        out: Box<dyn ConnOut>,
    },
    /// Verified messages of one or more frames from a connection.
    ConnMessages {
        conn: ConnId,
        messages: Vec<Bytes>,
    },
    ConnClosed {
        conn: ConnId,
        reason: String,
    },
    Tick,
}
