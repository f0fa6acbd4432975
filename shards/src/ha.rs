//! The shards' side of high availability: messages between the control thread (etcd
//! election and desired-state store, on tokio) and the shards (glommio). Neither side ever
//! blocks on the other: the control thread sends through bounded channels the shards poll each
//! round; shards hand persist requests to the control thread with `try_send` and go on.

use borealis_core::{JobKey, Resources, TaskConfig};
use serde::{Deserialize, Serialize};

/// Requests in flight from one shard to the control thread.
pub const PERSIST_QUEUE_MAX: usize = 4096;
/// Control messages queued for one shard.
pub const TO_SHARD_QUEUE_MAX: usize = 64;

/// A job as the desired state in etcd holds it: what the next leader needs to rebuild it.
/// Per-task runtime state is not here: it comes back from the agents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredJob {
    pub key: JobKey,
    pub instances: u32,
    pub config: TaskConfig,
    /// Instances that must not run again: killed by a user, or ad-hoc instances that ended
    /// for good.
    pub retired: Vec<u32>,
    /// Its configuration revisions (`config` is `revs.head`); absent in what builds before
    /// rolling updates wrote: one revision, 0.
    #[serde(default)]
    pub revs: borealis_store::image::JobRevs,
    /// Its updates, oldest first (finished ones without per-instance progress, to keep the
    /// value small).
    #[serde(default)]
    pub updates: Vec<borealis_core::update::JobUpdate>,
    /// A cron job's schedule and template.
    #[serde(default)]
    pub cron: Option<borealis_store::image::CronImage>,
}

/// Control thread → shard.
#[derive(Debug)]
pub enum ToShard {
    /// This scheduler leads: the shard's partition of the desired jobs, and the quotas of the
    /// roles it owns (`route_hash_str(role) % shards`).
    Lead {
        fence: i64,
        jobs: Vec<DesiredJob>,
        quotas: Vec<(String, Resources)>,
        /// The maintenance modes of the hosts it owns (`route_hash_str(host) % shards`).
        hosts: Vec<(String, borealis_store::HostImage)>,
    },
    /// Another scheduler leads (its client address): drop everything, refuse clients and
    /// agents. With `None` (leadership unknown) a leader pauses and keeps its state.
    Follow { leader: Option<String> },
    /// The answer to a `Persist`, `PersistQuota` or `PersistHostMode` request.
    Persisted {
        token: u64,
        result: Result<(), String>,
    },
}

/// Shard → control thread.
// `Persist` dominates the size on purpose: it is the common request, and boxing its job would
// cost an allocation per write to save a little queue space on the rare `PersistQuota`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ToControl {
    /// Write (or, with `None`, delete) a job's desired state, fenced on this leader's term.
    Persist {
        shard: usize,
        token: u64,
        key: JobKey,
        job: Option<DesiredJob>,
    },
    /// Write a role's quota (`{prefix}/quotas/{role}`), fenced on this leader's term.
    PersistQuota {
        shard: usize,
        token: u64,
        role: String,
        quota: Resources,
    },
    /// Write a host's maintenance mode (`{prefix}/hosts/{host}`; None: back in service, the
    /// key is deleted), fenced on this leader's term.
    PersistHostMode {
        shard: usize,
        token: u64,
        host: String,
        image: Option<borealis_store::HostImage>,
    },
}

/// One shard's ends of the channels.
#[derive(Debug)]
pub struct ShardLinks {
    pub from_control: crossbeam::channel::Receiver<ToShard>,
    pub to_control: tokio::sync::mpsc::Sender<ToControl>,
}
