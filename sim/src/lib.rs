//! The deterministic simulation of the whole scheduler, after TigerBeetle's VOPR.
//!
//! The real shard logic (`borealis_shards::shard::Shard`, not a re-implementation) runs on one
//! thread against a fake clock. Simulated agents and clients speak the real wire protocol
//! (frames built and verified by `borealis_net`), a seeded schedule injects faults, the
//! invariants are checked after every step, and a failing seed is printed with the shortest
//! trace that still reproduces it.
//!
//! Layout, one responsibility per module:
//! - [`rng`]: the only randomness (xoshiro256** streams from one seed, a stateless mixer).
//! - [`config`]: the one `SchedulerConfig` the simulation builds.
//! - [`wire`]: connections as the shards see them (`ConnOut`), framing and verification.
//! - [`world`]: the world and its driver (rounds, timers, ticks, connections, crashes,
//!   elections).
//! - [`agents`], [`clients`]: the simulated agents and clients; the ledger of what the
//!   scheduler acknowledged.
//! - [`etcd`]: the simulated etcd and control threads (HA mode).
//! - [`faults`]: what a seed means: the cluster and the trace of workload and faults.
//! - [`invariants`]: the checks.
//! - [`trace`], [`run`]: events, running seeds, shrinking failing traces, reports.
//! - [`sim`]: the builder API for named scenarios.
//!
//! Architecture invariant: nothing here reads a clock, an OS random source or a hash map's
//! iteration order; a run is a pure function of its seed and trace (`BTreeMap` and `Vec`
//! only). API boundary: the shards' public API with the `sim` feature, `borealis_net`'s
//! encoder and decoder, `borealis_shards::recover`.

pub mod agents;
pub mod clients;
pub mod config;
pub mod etcd;
pub mod faults;
pub mod invariants;
pub mod rng;
pub mod run;
pub mod sim;
pub mod trace;
pub mod wire;
pub mod world;

pub use agents::{AgentSpec, TaskPlan};
pub use clients::JobConfig;
pub use faults::RunOptions;
pub use invariants::Violation;
pub use run::{replay, run_seed, Failure, SeedOutcome};
pub use sim::Sim;
pub use trace::Event;
pub use world::{Mode, World, WorldConfig};
