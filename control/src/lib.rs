//! Borealis's control plane against etcd: leadership (etcd's election API, a kept-alive lease,
//! fencing) and the desired-state store.
//!
//! Runs on the scheduler's control thread (tokio) only — `etcd-client` must never be driven
//! from a glommio executor. Shards see leadership through [`LeaderView`] (lock-free reads).
//!
//! - [`run_election`] campaigns and publishes [`Leadership`] into a [`LeaderView`].
//! - [`DesiredStore`] writes fenced batches (≤ 128 operations a txn) of jobs, per-role quotas
//!   and hosts' maintenance states, and loads everything (`load_desired`: all at one
//!   revision).
//!
//! # Integration
//! - Start `run_election` on the control runtime with a shutdown future; hand clones of the
//!   `LeaderView` to the shards and the HTTP thread (`/leaderhealth` = `http_status()`).
//! - Act as leader (place, launch, kill, accept mutations) only while `Leader`. `Follower`:
//!   refuse mutations and point clients at `leader`. `Unknown`: pause the same way, but keep
//!   state and connections — it may turn back into `Leader` with the *same* fence (a short
//!   etcd stall while the lease stayed alive), and then the shard simply resumes.
//! - `fence_revision` names a leadership term (the create revision of the leader's election
//!   key; etcd revisions only grow, so a later term has a larger fence). A `Leader` with a
//!   fence different from the last one seen is a new term: `load_all`, then reconcile with
//!   agents as after a failover. Everything the previous leader committed is in that read;
//!   nothing it sends afterwards can commit.
//! - Pass the current fence to every `put_batch`. `StoreError::Fenced` means the term is over:
//!   stop acting as leader at once (the view follows within a keep-alive period).

mod election;
mod store;
mod view;

pub use election::{
    run_election, ElectionConfig, DEFAULT_LEASE_TTL_SECS, DEFAULT_MAX_LEADING, MIN_LEASE_TTL_SECS,
};
pub use store::{
    DesiredSnapshot, DesiredStore, Space, SpaceOp, StoreError, StoreOp, DEFAULT_STORE_TIMEOUT,
    MAX_TXN_BYTES, MAX_TXN_OPS,
};
pub use view::{LeaderView, Leadership};

/// Re-exported so callers can build a shared [`etcd_client::Client`] for [`DesiredStore::new`].
pub use etcd_client;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid election config: {0}")]
    InvalidConfig(String),
}
