//! Borealis's control plane against etcd: leadership (etcd's election API, a kept-alive lease,
//! fencing) and the desired-state store.
//!
//! Runs on the scheduler's control thread (tokio) only — `etcd-client` must never be driven
//! from a glommio executor. Shards see leadership through [`LeaderView`] (lock-free reads).
//!
//! - [`run_election`] campaigns and publishes [`Leadership`] into a [`LeaderView`].
//! - [`DesiredStore`] writes fenced batches (≤ 128 operations a txn) and loads everything.

mod election;
mod store;
mod view;

pub use election::{
    run_election, ElectionConfig, DEFAULT_LEASE_TTL_SECS, DEFAULT_MAX_LEADING, MIN_LEASE_TTL_SECS,
};
pub use store::{
    DesiredStore, StoreError, StoreOp, DEFAULT_STORE_TIMEOUT, MAX_TXN_BYTES, MAX_TXN_OPS,
};
pub use view::{LeaderView, Leadership};

/// Re-exported so callers can build a shared [`etcd_client::Client`] for [`DesiredStore::new`].
pub use etcd_client;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid election config: {0}")]
    InvalidConfig(String),
}
