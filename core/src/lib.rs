//! Borealis core: the pure, deterministic heart of the scheduler.
//!
//! Architecture invariant: this crate does no IO, spawns no threads, reads no clock and draws no
//! randomness. Time and seeds are passed in by the caller. It knows nothing of glommio, tokio,
//! etcd or flatbuffers; the shards runtime and the wire crate translate to and from these types.

pub mod jobfile;
pub mod lifecycle;
pub mod model;
pub mod placement;
pub mod state;

pub use model::*;
pub use state::TaskState;
