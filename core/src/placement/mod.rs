//! Placement: choosing an agent for a task, fast, over the offers one shard owns.
//!
//! The chain, each stage a small function tested alone:
//! 1. **Candidate source** ([`PlacementIndex`]): the task's pool (shared, or the dedicated pools
//!    it names), then the buckets of agents whose free cpu/ram class can hold it, tightest first.
//! 2. **Feasibility filters** ([`fits_resources`], [`satisfies_constraints`], [`limit_ok`]).
//! 3. **Scoring** ([`score_binpack`]) over at most [`CANDIDATES_MAX`] feasible agents, ties to
//!    the lowest [`AgentId`].
//! 4. **Consume** the task's resources on the winner, moving it to its new bucket.
//!
//! When nothing fits, [`PlacementIndex::explain`] says why, agent by agent ([`PendingReasons`]).
//!
//! A placement costs a bounded number of agent checks in the common case, not a scan of the
//! cluster. When few agents are feasible the search goes on until it finds one or runs out, so
//! `place` returns `None` exactly when no agent in the index can take the task.
//!
//! Typical shard use, once per job and round:
//! ```
//! use borealis_core::placement::{AgentId, JobSpread, PlacementIndex};
//! use borealis_core::{Constraint, Resources};
//!
//! let mut index = PlacementIndex::new();
//! let size = Resources { cpu_millis: 4000, ram_mib: 8192, disk_mib: 10_000, ports: 10 };
//! for host in 0..4u64 {
//!     let attributes = vec![("host".to_string(), format!("h{host}"))];
//!     index.upsert_agent(AgentId(host), &attributes, size, size);
//! }
//! let need = Resources { cpu_millis: 1000, ram_mib: 1024, disk_mib: 0, ports: 1 };
//! let task = index.compile_parts(&need, &[Constraint::Limit { attribute: "host".into(), limit: 1 }]);
//! let mut spread = JobSpread::new(&task);
//! let mut placed = Vec::new();
//! assert_eq!(index.place_batch(&task, &mut spread, 5, &mut placed), 4, "one per host");
//! ```
//!
//! Pure and deterministic: no IO, clocks or randomness, and no hash-map order reaches a result.

mod explain;
mod filters;
mod index;
mod intern;
mod named;
mod score;
mod search;

#[cfg(test)]
mod tests;

pub use explain::{PendingReasonKind, PendingReasons, Reason, ResourceKind, TaskReason};
pub use filters::{
    fits_resources, limit_ok, satisfies_constraints, AttributeLookup, CompiledLimit, CompiledTask,
    CompiledValue, JobSpread, DEDICATED_ATTR,
};
pub use index::{AgentId, AgentOffer, LentAgent, PlacementIndex};
pub use intern::{AttrId, Interner, ValueId};
pub use score::{score_binpack, SCORE_DIMENSION_FULL};
pub use search::{CANDIDATES_MAX, EXAMINED_SOFT_MAX};
