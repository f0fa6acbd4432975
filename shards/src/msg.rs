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

/// Index of a shard, `0..shard_count`.
pub type ShardId = usize;

/// A connection, unique within its shard.
pub type ConnId = u64;

/// Where a client's response goes: the connection's shard and the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    pub shard: ShardId,
    pub conn: ConnId,
}

/// The home shard of an agent is the shard that holds its connection; it is encoded in the
/// agent's number so any shard can route to it without a lookup.
pub const AGENT_HOME_SHIFT: u32 = 24;

pub fn agent_home(agent: AgentId) -> ShardId {
    (agent.0 >> AGENT_HOME_SHIFT) as ShardId
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
    Client { reply: ReplyTo, bytes: Bytes },
    /// A finished response to write on a connection of the receiving shard.
    ClientReply { conn: ConnId, bytes: Vec<u8> },
    /// Scatter part of `ListJobs`: answer with this shard's jobs.
    ListJobs { reply: ReplyTo, request_id: u64 },
    /// Gather part of `ListJobs`.
    ListPart {
        conn: ConnId,
        request_id: u64,
        jobs: Vec<JobSummaryView>,
        /// The part's shard does not lead (yet): the list would be partial.
        refused: bool,
    },
    /// A verified `TaskStatus` message from `agent` for a job the receiver owns.
    Status { agent: AgentId, bytes: Bytes },
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
    LaunchFailed { task_id: TaskId },
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
    AgentLost { agent: AgentId },
    /// The sender has pending work that fits nothing it owns: lend it offers that fit `demand`.
    Borrow { demand: Resources },
    /// Answer to `Borrow` (possibly empty). Ownership of these offers moves to the receiver.
    Lend { offers: Vec<LentOffer> },
    /// A borrowed offer goes back to its home with what is left of it.
    Return { agent: AgentId, free: Resources },
}

pub type PeerBatch = Vec<PeerMsg>;

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
        out: glommio::channels::local_channel::LocalSender<Vec<u8>>,
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
