//! The world and its driver: the real shards of one scheduler (two under etcd), a fake clock,
//! the simulated network between them and the agents and clients, and the loop that runs
//! shard rounds until nothing is in flight.
//!
//! One thread, no clock, no hash-map order: the same seed and trace give the same run. A step
//! is one event and every round it causes; the invariants are checked after each step, and
//! after each timer that made anything happen while time advances.
//!
//! A round is exactly the runtime's (`borealis_shards::run_shard`): `begin_round`,
//! `poll_control`, a bounded batch of `handle`, `end_round`, then each peer's batch is taken
//! and queued to that peer. Which ready shard runs next, and how many of its queued items a
//! round takes, are drawn from the seed: that is the interleaving the simulation explores.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;

use borealis_net::views::{ErrorCode, OwnedMessage};
use borealis_net::Encoder;
use borealis_shards::ha::ToShard;
use borealis_shards::metrics::Metrics;
use borealis_shards::msg::Inbound;
use borealis_shards::msg::{ConnId, ShardId};
use borealis_shards::shard::{InjectedBug, RoundClock, Shard, ROUND_INBOUND_MAX};

use crate::agents::{AgentSpec, AgentTimer, Link, SimAgent, HEARTBEAT_MS};
use crate::clients::{Ledger, Reply, Request, SimClient};
use crate::config::{scheduler_config, SchedulerFlags, SimSchedulerSettings};
use crate::etcd::{Control, Etcd};
use crate::invariants::{self, Checker, InstanceAudit, View, Violation};
use crate::rng::Rng;
use crate::trace::{CrashPoint, Event};
use crate::wire::{verified, OutputReader, SharedPipe, SimConnOut};

/// The runtime's tick period (`borealis_shards::TICK`).
pub const TICK_US: u64 = 50_000;
/// Most rounds one step may take before the run is declared stuck (a livelock).
const STEP_ROUNDS_MAX: u64 = 200_000;
/// Longest a settle may take (simulated) before the cluster is declared unable to quiesce.
/// Above the transient-state timeout (5 min), so a stuck task is resolved (or caught) first.
const SETTLE_MAX_US: u64 = 7 * 60 * 1_000_000;
/// The shards' sweep period (`SWEEP_INTERVAL`): the grace is enforced on a sweep.
const SWEEP_US: u64 = 2_000_000;
/// The simulated wall clock at time zero.
const UNIX_EPOCH_MS: u64 = 1_700_000_000_000;
/// Latency of a healthy etcd write.
const ETCD_LATENCY_US: (u64, u64) = (1_000, 20_000);

/// The world's key of a connection: (scheduler instance, shard, connection id).
pub type ConnKey = (usize, usize, u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One scheduler with its write-ahead log.
    Embedded,
    /// Two schedulers under a simulated etcd.
    Ha,
}

/// What a world is made of (fixed for a run; a seed derives one, the builder builds one).
#[derive(Clone, Debug)]
pub struct WorldConfig {
    pub seed: u64,
    pub mode: Mode,
    pub shards: usize,
    pub reconciliation_grace_ms: u64,
    pub agents: Vec<AgentSpec>,
    pub clients: usize,
    pub bug: Option<InjectedBug>,
    /// The scheduler's policy flags.
    pub flags: SchedulerFlags,
    /// A simulated SLA coordinator serving the shards (None: no coordinator service).
    pub coordinator: Option<crate::coordinator::CoordinatorScript>,
}

/// Counters for the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub rounds: u64,
    pub messages_to_shards: u64,
    pub messages_from_shards: u64,
    pub crashes: u64,
    pub elections: u64,
    pub checks: u64,
    pub simulated_ms: u64,
    pub creates_acked: u64,
    pub requests_refused: u64,
    pub launches: u64,
    /// Creates refused for quota.
    pub quota_refusals: u64,
    /// Production jobs that appeared holding quota, jobs whose quota use went down, and
    /// checks that found a role above its (lowered) quota.
    pub quota_admitted: u64,
    pub quota_released: u64,
    pub over_quota_checks: u64,
    /// Reconciliation requests the agents answered; tasks drained off hosts under maintenance.
    pub reconciliations: u64,
    pub drains: u64,
    /// FNV-1a over every message the shards received and sent, in order: equal runs have
    /// equal fingerprints (the determinism test compares them).
    pub fingerprint: u64,
}

impl Stats {
    /// Adds another run's counters (the fingerprint is not summed).
    pub fn add(&mut self, other: &Stats) {
        self.events += other.events;
        self.rounds += other.rounds;
        self.messages_to_shards += other.messages_to_shards;
        self.messages_from_shards += other.messages_from_shards;
        self.crashes += other.crashes;
        self.elections += other.elections;
        self.checks += other.checks;
        self.simulated_ms += other.simulated_ms;
        self.creates_acked += other.creates_acked;
        self.requests_refused += other.requests_refused;
        self.launches += other.launches;
        self.quota_refusals += other.quota_refusals;
        self.quota_admitted += other.quota_admitted;
        self.quota_released += other.quota_released;
        self.over_quota_checks += other.over_quota_checks;
        self.reconciliations += other.reconciliations;
        self.drains += other.drains;
    }
}

fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    let mut h = if hash == 0 {
        0xcbf2_9ce4_8422_2325
    } else {
        hash
    };
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A transition a shard made, with when (simulated ms, see [`World::sim_ms`]) and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitionRecord {
    pub at_ms: u64,
    pub instance: usize,
    pub shard: usize,
    pub task: borealis_core::TaskId,
    pub from: borealis_core::TaskState,
    pub to: borealis_core::TaskState,
}

/// A policy message one shard sent another (a shard's messages to itself are handled inline
/// and never seen): `what` is a one-line summary, e.g. `Explain www/prod/x`,
/// `Preempt 0001.. by 0002..`, `QuotaCheck www`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRecord {
    pub at_ms: u64,
    pub instance: usize,
    pub from: usize,
    pub to: usize,
    pub what: String,
}

/// What a scenario can look back on (kept only when asked for: [`World::keep_history`]).
#[derive(Clone, Debug, Default)]
pub struct History {
    pub transitions: Vec<TransitionRecord>,
    pub peer_messages: Vec<PeerRecord>,
}

/// The one-line summary of a policy message between shards (None: not a policy message).
fn describe_peer(m: &borealis_shards::msg::PeerMsg) -> Option<String> {
    use borealis_shards::msg::PeerMsg;
    Some(match m {
        PeerMsg::Explain { job_key, .. } => format!("Explain {job_key}"),
        PeerMsg::Explained {
            job_key, reasons, ..
        } => format!("Explained {job_key}: {reasons}"),
        PeerMsg::QuotaCheck { role, demand, .. } => format!(
            "QuotaCheck {role} cpu={} ram={} disk={}",
            demand.cpu_millis, demand.ram_mib, demand.disk_mib
        ),
        PeerMsg::QuotaVerdict { result, .. } => match result {
            Ok(()) => "QuotaVerdict admitted".to_string(),
            Err(e) => format!("QuotaVerdict refused: {e}"),
        },
        PeerMsg::SlotSearch(query) => format!("SlotSearch {}", query.task_id),
        PeerMsg::SlotFound { slot, fits, .. } => format!(
            "SlotFound fits={fits} victims={:?}",
            slot.as_ref().map(|s| s
                .victims
                .iter()
                .map(|(v, _)| v.to_string())
                .collect::<Vec<_>>())
        ),
        PeerMsg::SlotClaim {
            task_id, victims, ..
        } => format!(
            "SlotClaim {task_id} victims={:?}",
            victims
                .iter()
                .map(|(v, _)| v.to_string())
                .collect::<Vec<_>>()
        ),
        PeerMsg::Preempt { task_id, preemptor } => format!("Preempt {task_id} by {preemptor}"),
        PeerMsg::Borrow { .. } => "Borrow".to_string(),
        PeerMsg::Lend {
            offers,
            reserved_for,
        } => match reserved_for {
            Some(t) => format!("Lend {} reserved for {t}", offers.len()),
            None => format!("Lend {}", offers.len()),
        },
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Agent(usize),
    Client(usize),
}

struct Conn {
    endpoint: Endpoint,
    pipe: SharedPipe,
    reader: OutputReader,
}

/// One scheduler process.
struct Instance {
    shards: Vec<Shard>,
    inbound: Vec<VecDeque<Inbound>>,
    /// The shard's last round made no progress with its pending tasks (a follower keeps them,
    /// a task waits out its first-schedule delay): it waits for input, as the runtime would
    /// have spun until the clock moved.
    stalled: Vec<bool>,
    up: bool,
    shard_count: usize,
    control: Option<Control>,
    /// When its current life (or term) began: the reconciliation grace runs from here.
    since_us: u64,
    /// Its coordinator service, when the world has a coordinator.
    coordinator: Option<crate::coordinator::SimCoordinator>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Timer {
    Agent {
        agent: usize,
        incarnation: u64,
        timer: AgentTimer,
    },
    Connect {
        agent: usize,
        incarnation: u64,
    },
    Heartbeat {
        agent: usize,
        session: u64,
    },
    AgentBack {
        agent: usize,
        incarnation: u64,
    },
    Restart {
        shards: usize,
    },
    Elect {
        next: usize,
        same_term: bool,
    },
    Etcd {
        instance: usize,
    },
}

impl Timer {
    /// Timers that mean the cluster is not settled yet.
    fn unsettling(&self) -> bool {
        matches!(
            self,
            Timer::Connect { .. }
                | Timer::AgentBack { .. }
                | Timer::Restart { .. }
                | Timer::Elect { .. }
                | Timer::Etcd { .. }
        )
    }
}

/// A per-run directory for the log, removed when the run ends.
struct DataDir(PathBuf);

impl DataDir {
    fn new(seed: u64) -> DataDir {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("borealis-sim-{}-{seed}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cannot create the simulation's data dir");
        DataDir(dir)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct World {
    pub cfg: WorldConfig,
    /// What coordinators of earlier scheduler lives saw.
    coordinator_seen: crate::coordinator::CoordinatorStats,
    rng: Rng,
    now_us: u64,
    next_tick_us: u64,
    timers: BTreeMap<(u64, u64), Timer>,
    timer_seq: u64,
    instances: Vec<Instance>,
    etcd: Option<Etcd>,
    conns: BTreeMap<ConnKey, Conn>,
    agent_conns: BTreeMap<usize, ConnKey>,
    next_conn: u64,
    agents: Vec<SimAgent>,
    clients: Vec<SimClient>,
    pub ledger: Ledger,
    checker: Checker,
    data_dir: Option<DataDir>,
    epoch: u32,
    encoder: Encoder,
    pub stats: Stats,
    /// The first violation: the run stops there.
    failed: Option<Violation>,
    /// Something happened since the last check (a round produced output or transitions).
    dirty: bool,
    rounds_this_step: u64,
    /// `SIM_LOG=1`: print every event, message and timer (for reading one seed's run).
    verbose: bool,
    /// A crash armed to land after some more rounds.
    pending_crash: Option<PendingCrash>,
    /// Transitions and policy messages, for scenarios (None in seeded runs: not kept).
    history: Option<History>,
}

#[derive(Clone, Copy, Debug)]
struct PendingCrash {
    rounds_left: u32,
    point: CrashPoint,
    down_ms: u64,
    restart_shards: usize,
}

fn instance_address(instance: usize) -> String {
    format!("10.0.0.{}:4300", instance + 1)
}

fn instance_of_address(address: &str, instances: usize) -> Option<usize> {
    (0..instances).find(|&i| instance_address(i) == address)
}

impl World {
    pub fn new(cfg: WorldConfig) -> World {
        assert!((1..=4).contains(&cfg.shards), "1 to 4 shards");
        let instances = match cfg.mode {
            Mode::Embedded => 1,
            Mode::Ha => 2,
        };
        let agents = cfg
            .agents
            .iter()
            .map(|spec| SimAgent::new(spec.clone(), cfg.seed))
            .collect();
        let clients = (0..cfg.clients).map(|_| SimClient::default()).collect();
        let mut world = World {
            rng: Rng::stream(cfg.seed, "world"),
            now_us: 1_000_000,
            next_tick_us: 1_000_000 + TICK_US,
            timers: BTreeMap::new(),
            timer_seq: 0,
            instances: (0..instances)
                .map(|_| Instance {
                    shards: Vec::new(),
                    inbound: Vec::new(),
                    stalled: Vec::new(),
                    up: false,
                    shard_count: cfg.shards,
                    control: None,
                    since_us: 0,
                    coordinator: None,
                })
                .collect(),
            etcd: (cfg.mode == Mode::Ha).then(Etcd::default),
            conns: BTreeMap::new(),
            agent_conns: BTreeMap::new(),
            next_conn: 1,
            coordinator_seen: Default::default(),
            agents,
            clients,
            ledger: Ledger::default(),
            checker: Checker::default(),
            data_dir: (cfg.mode == Mode::Embedded).then(|| DataDir::new(cfg.seed)),
            epoch: 1,
            encoder: Encoder::new(),
            stats: Stats::default(),
            failed: None,
            dirty: false,
            rounds_this_step: 0,
            verbose: std::env::var_os("SIM_LOG").is_some_and(|v| v != "0"),
            pending_crash: None,
            history: None,
            cfg,
        };
        for i in 0..instances {
            let shards = world.cfg.shards;
            world.boot(i, shards);
        }
        if world.cfg.mode == Mode::Ha {
            world.elect(0, false);
        }
        world
    }

    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    fn clock(&self) -> RoundClock {
        RoundClock {
            mono_us: self.now_us,
            unix_ms: UNIX_EPOCH_MS + self.now_us / 1000,
        }
    }

    fn now_ms(&self) -> u64 {
        UNIX_EPOCH_MS + self.now_us / 1000
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.verbose {
            eprintln!("[{:>9.3}s] {}", self.now_us as f64 / 1e6, what());
        }
    }

    fn fail(&mut self, v: Violation) {
        if self.failed.is_none() {
            self.log(|| format!("VIOLATION {v}"));
            self.failed = Some(v);
        }
    }

    fn result(&self) -> Result<(), Violation> {
        match &self.failed {
            Some(v) => Err(v.clone()),
            None => Ok(()),
        }
    }

    fn arm(&mut self, delay_us: u64, timer: Timer) {
        self.timer_seq += 1;
        self.timers
            .insert((self.now_us + delay_us, self.timer_seq), timer);
    }

    // ----- read access for the builder and the reports -----

    /// What the simulated coordinator saw, over every scheduler instance and life.
    pub fn coordinator_stats(&self) -> crate::coordinator::CoordinatorStats {
        let mut total = self.coordinator_seen.clone();
        for c in self.instances.iter().filter_map(|i| i.coordinator.as_ref()) {
            total.add(&c.stats);
        }
        total
    }

    pub fn agents(&self) -> &[SimAgent] {
        &self.agents
    }

    pub fn agent_index(&self, name: &str) -> Option<usize> {
        self.agents.iter().position(|a| a.spec.name == name)
    }

    /// Simulated milliseconds (the clock starts at 1 000): what history records carry.
    pub fn sim_ms(&self) -> u64 {
        self.now_us / 1000
    }

    /// From now on, keep every transition and policy message between shards.
    pub fn keep_history(&mut self) {
        self.history.get_or_insert_with(History::default);
    }

    /// What was kept since [`World::keep_history`] (empty when it was not called).
    pub fn history(&self) -> &History {
        static EMPTY: History = History {
            transitions: Vec::new(),
            peer_messages: Vec::new(),
        };
        self.history.as_ref().unwrap_or(&EMPTY)
    }
}

mod net;
mod processes;
mod rounds;
mod steps;
