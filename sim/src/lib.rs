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
//! - [`config`]: the one `SchedulerConfig` the simulation builds, and the policy flags a
//!   scenario may set ([`SchedulerFlags`]).
//! - [`wire`]: connections as the shards see them (`ConnOut`), framing and verification.
//! - [`world`]: the world and its driver (rounds, timers, ticks, connections, crashes,
//!   elections).
//! - [`agents`], [`clients`]: the simulated agents and clients; the ledger of what the
//!   scheduler acknowledged.
//! - [`etcd`]: the simulated etcd and control threads (HA mode).
//! - [`faults`]: what a seed means: the cluster and the trace of workload and faults.
//! - [`invariants`]: the checks.
//! - [`trace`], [`run`]: events, running seeds, shrinking failing traces, reports.
//! - [`sim`]: the builder API for named scenarios (scheduler flags per scenario, quotas,
//!   tiers, the history of transitions and policy messages between shards).
//!
//! Faults ([`faults::trace`]): agents losing their connection and returning (re-registering
//! with every task they know), dying with their tasks, losing `StatusAck`s (they report the
//! ends again), duplicating and reordering their status updates; clients dropping their
//! connection; the embedded scheduler crashing between rounds, between a round's appends and
//! its commit, or after its commit before its output left, then recovering its log (possibly
//! into another shard count); in HA mode leadership lost (a pause in the same term, or a new
//! term on either instance) and etcd answering persists late or failing them.
//!
//! Invariants ([`invariants`]), after every step: agents never over-committed; every task on
//! one shard, its job's owner, with consistent `current` slots and state counts; every
//! transition legal and no terminal state left; at most one live task per instance; one acting
//! instance; acknowledged creates exist, acknowledged kills stay killed, ends acknowledged to
//! agents stay ends, instances ended for good stay ended (also in etcd's desired state);
//! quotas never exceeded (a role's production use, summed over every shard, within its quota;
//! below a lowered quota it may stay but not grow); a create refused for quota left nothing;
//! an active job update has at most `batch_size` instances in flight and moves (changes the
//! desired revision of) only the instances it has taken.
//! Once
//! quiet (past the reconciliation grace): exact accounting, no instance running twice on the
//! agents, agents and scheduler agree on every task, kills completed, every end acknowledged,
//! followers empty.
//!
//! Reading one run: `SIM_LOG=1 cargo run -p borealis-sim --release -- --seed N [--keep ..]`
//! prints every event, message, timer and persist.
//!
//! Architecture invariant: nothing here reads a clock, an OS random source or a hash map's
//! iteration order; a run is a pure function of its seed and trace (`BTreeMap` and `Vec`
//! only). API boundary: the shards' public API with the `sim` feature, `borealis_net`'s
//! encoder and decoder, `borealis_shards::recover`.

pub mod agents;
pub mod clients;
pub mod config;
pub mod coordinator;
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
pub use clients::{JobConfig, Reply};
pub use config::SchedulerFlags;
pub use faults::RunOptions;
pub use invariants::Violation;
pub use run::{replay, run_seed, Failure, SeedOutcome};
pub use sim::Sim;
pub use trace::{CrashPoint, Event};
pub use world::{History, Mode, PeerRecord, TransitionRecord, World, WorldConfig};
