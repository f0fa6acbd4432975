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

use borealis_core::TaskState;
use borealis_net::views::{ErrorCode, OwnedMessage};
use borealis_net::Encoder;
use borealis_shards::ha::ToShard;
use borealis_shards::metrics::Metrics;
use borealis_shards::msg::Inbound;
use borealis_shards::shard::{InjectedBug, RoundClock, Shard, ROUND_INBOUND_MAX};

use crate::agents::{AgentSpec, AgentTimer, Link, SimAgent, HEARTBEAT_MS};
use crate::clients::{Ledger, Reply, Request, SimClient};
use crate::config::{scheduler_config, SimSchedulerSettings};
use crate::etcd::{Control, Etcd};
use crate::invariants::{self, Checker, InstanceAudit, View, Violation};
use crate::rng::Rng;
use crate::trace::Event;
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
                })
                .collect(),
            etcd: (cfg.mode == Mode::Ha).then(Etcd::default),
            conns: BTreeMap::new(),
            agent_conns: BTreeMap::new(),
            next_conn: 1,
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

    fn fail(&mut self, v: Violation) {
        if self.failed.is_none() {
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

    // ----- scheduler processes -----

    /// Starts instance `i` with `shards` shards: recovery from its log (embedded), or a
    /// follower waiting for the control thread (HA).
    fn boot(&mut self, i: usize, shards: usize) {
        let recovered = match &self.data_dir {
            Some(dir) => match borealis_shards::recover(&dir.0, shards, &mut self.epoch) {
                Ok(r) => r.into_iter().map(Some).collect(),
                Err(e) => {
                    self.fail(Violation::new("recovery_succeeds", format!("{e:#}")));
                    return;
                }
            },
            None => (0..shards).map(|_| None).collect::<Vec<_>>(),
        };
        let config = scheduler_config(&SimSchedulerSettings {
            shards,
            data_dir: self.data_dir.as_ref().map(|d| d.0.clone()),
            epoch: self.epoch,
            reconciliation_grace_ms: self.cfg.reconciliation_grace_ms,
        });
        self.epoch += 1;
        let metrics = Metrics::new(shards, &config.cluster_name);
        let (control, links) = match self.cfg.mode {
            Mode::Ha => {
                let (control, links) = Control::new(shards);
                (Some(control), links.into_iter().map(Some).collect())
            }
            Mode::Embedded => (None, (0..shards).map(|_| None).collect::<Vec<_>>()),
        };
        let clock = self.clock();
        let mut list = Vec::with_capacity(shards);
        for (id, (restored, links)) in recovered.into_iter().zip(links).enumerate() {
            let mut shard = Shard::new(id, shards, config.clone(), metrics.clone(), clock);
            if let Some((image, wal)) = restored {
                shard.restore(image, wal);
            }
            if let Some(links) = links {
                shard.set_links(links);
            }
            shard.record_transitions();
            if let Some(bug) = self.cfg.bug {
                shard.inject_bug(bug);
            }
            list.push(shard);
        }
        let inst = &mut self.instances[i];
        inst.shards = list;
        inst.inbound = (0..shards).map(|_| VecDeque::new()).collect();
        inst.stalled = vec![false; shards];
        inst.shard_count = shards;
        inst.control = control;
        inst.up = true;
        inst.since_us = self.now_us;
    }

    /// kill -9 of the embedded scheduler: the shards in `mid_round` die between a round's
    /// appends and its commit; every connection breaks.
    fn crash(&mut self, mid_round: &[usize], down_ms: u64, restart_shards: usize) {
        if self.cfg.mode != Mode::Embedded || !self.instances[0].up {
            return;
        }
        self.stats.crashes += 1;
        let clock = self.clock();
        let take = self.rng.range(1, ROUND_INBOUND_MAX as u64) as usize;
        let inst = &mut self.instances[0];
        for &s in mid_round {
            if s < inst.shard_count && !inst.inbound[s].is_empty() {
                let shard = &mut inst.shards[s];
                shard.begin_round(clock);
                shard.poll_control();
                for _ in 0..take {
                    match inst.inbound[s].pop_front() {
                        Some(item) => shard.handle(item),
                        None => break,
                    }
                }
                // No end_round: what the round appended never reaches the disk.
            }
        }
        inst.shards.clear();
        inst.inbound.clear();
        inst.stalled.clear();
        inst.up = false;
        let keys: Vec<ConnKey> = self.conns.keys().filter(|k| k.0 == 0).copied().collect();
        for key in keys {
            self.drop_conn(key, false);
        }
        self.arm(
            down_ms * 1000,
            Timer::Restart {
                shards: restart_shards.clamp(1, 4),
            },
        );
    }

    /// The etcd election makes `next` lead (same term after a pause, or a new term).
    fn elect(&mut self, next: usize, same_term: bool) {
        let Some(etcd) = self.etcd.as_mut() else {
            return;
        };
        self.stats.elections += 1;
        let n = self.instances.len();
        if same_term && etcd.last_leader == Some(next) && etcd.fence > 0 {
            // The same term came back after a pause (`watch_leadership`: Lead with no jobs).
            etcd.leader = Some(next);
            let fence = etcd.fence;
            if let Some(c) = &self.instances[next].control {
                for s in 0..self.instances[next].shard_count {
                    c.send(
                        s,
                        ToShard::Lead {
                            fence,
                            jobs: Vec::new(),
                            quotas: Vec::new(),
                        },
                    );
                }
            }
            return;
        }
        let fence = etcd.elect(next);
        let parts = etcd.partition(self.instances[next].shard_count);
        for i in 0..n {
            let inst = &mut self.instances[i];
            let Some(c) = &inst.control else { continue };
            if i == next {
                for (s, (jobs, quotas)) in parts.iter().enumerate() {
                    c.send(
                        s,
                        ToShard::Lead {
                            fence,
                            jobs: jobs.clone(),
                            quotas: quotas.clone(),
                        },
                    );
                }
                inst.since_us = self.now_us;
            } else {
                for s in 0..inst.shard_count {
                    c.send(
                        s,
                        ToShard::Follow {
                            leader: Some(instance_address(next)),
                        },
                    );
                }
            }
        }
    }

    fn leader_loss(&mut self, pause_ms: u64, next: usize, same_term: bool) {
        let Some(etcd) = self.etcd.as_mut() else {
            return;
        };
        let Some(old) = etcd.leader.take() else {
            return;
        };
        if let Some(c) = &self.instances[old].control {
            for s in 0..self.instances[old].shard_count {
                c.send(s, ToShard::Follow { leader: None });
            }
        }
        let next = next % self.instances.len();
        self.arm(pause_ms * 1000, Timer::Elect { next, same_term });
    }

    // ----- rounds -----

    fn ready(&self, i: usize, s: usize) -> bool {
        let inst = &self.instances[i];
        inst.up
            && (!inst.inbound[s].is_empty()
                || (inst.shards[s].has_pending() && !inst.stalled[s])
                || inst.control.as_ref().is_some_and(|c| c.has_messages_for(s)))
    }

    /// Runs rounds until no shard has anything to do.
    fn run_rounds(&mut self) {
        loop {
            if self.failed.is_some() {
                return;
            }
            let mut ready = Vec::new();
            for i in 0..self.instances.len() {
                for s in 0..self.instances[i].shards.len() {
                    if self.ready(i, s) {
                        ready.push((i, s));
                    }
                }
            }
            if ready.is_empty() {
                return;
            }
            let (i, s) = *self.rng.pick(&ready);
            self.round(i, s);
            self.rounds_this_step += 1;
            if self.rounds_this_step > STEP_ROUNDS_MAX {
                self.fail(Violation::new(
                    "rounds_terminate",
                    format!("{STEP_ROUNDS_MAX} rounds in one step without the shards going idle"),
                ));
            }
        }
    }

    fn push_inbound(&mut self, i: usize, s: usize, item: Inbound) {
        let inst = &mut self.instances[i];
        if !inst.up || s >= inst.inbound.len() {
            return;
        }
        inst.inbound[s].push_back(item);
        inst.stalled[s] = false;
    }

    fn round(&mut self, i: usize, s: usize) {
        self.stats.rounds += 1;
        let clock = self.clock();
        let take = if self.instances[i].inbound[s].len() <= 1 {
            1
        } else {
            self.rng.range(1, ROUND_INBOUND_MAX as u64) as usize
        };
        let inst = &mut self.instances[i];
        let shard = &mut inst.shards[s];
        shard.begin_round(clock);
        shard.poll_control();
        for _ in 0..take {
            match inst.inbound[s].pop_front() {
                Some(item) => shard.handle(item),
                None => break,
            }
        }
        shard.end_round();
        let mut produced = false;
        for peer in 0..inst.shard_count {
            if peer == s {
                continue;
            }
            if let Some(batch) = inst.shards[s].take_outbox(peer) {
                produced = true;
                inst.inbound[peer].push_back(Inbound::Peer { from: s, batch });
                inst.stalled[peer] = false;
            }
        }
        let transitions = inst.shards[s].take_transitions();
        if let Err(v) = self.checker.transitions(s, &transitions) {
            self.fail(v);
        }
        // The control thread takes the persist requests (HA).
        let mut requests = Vec::new();
        if let Some(c) = self.instances[i].control.as_mut() {
            while let Ok(r) = c.from_shards.try_recv() {
                requests.push(r);
            }
        }
        for r in requests {
            produced = true;
            let slow = self
                .etcd
                .as_ref()
                .is_some_and(|e| self.now_us < e.slow_until_us);
            let latency = if slow {
                let d = self.etcd.as_ref().map_or(0, |e| e.slow_delay_ms) * 1000;
                self.rng.range(d / 2, d.max(1))
            } else {
                self.rng.range(ETCD_LATENCY_US.0, ETCD_LATENCY_US.1)
            };
            let now = self.now_us;
            if let Some(etcd) = self.etcd.as_mut() {
                let due = etcd.enqueue(i, r, now, latency);
                self.arm(due - now, Timer::Etcd { instance: i });
            }
        }
        produced |= self.deliver_outputs(i, s);
        let inst = &mut self.instances[i];
        if inst.up && s < inst.shards.len() {
            inst.stalled[s] = inst.shards[s].has_pending() && !produced && transitions.is_empty();
        }
        if produced || !transitions.is_empty() {
            self.dirty = true;
        }
    }

    // ----- connections -----

    fn open_conn(&mut self, i: usize, s: usize, endpoint: Endpoint) -> ConnKey {
        let conn = self.next_conn;
        self.next_conn += 1;
        let key = (i, s, conn);
        let pipe: SharedPipe = Default::default();
        let peer: SocketAddr = match endpoint {
            Endpoint::Agent(a) => {
                SocketAddr::from(([10, 1, (a / 250) as u8, (a % 250 + 1) as u8], 40_000))
            }
            Endpoint::Client(c) => SocketAddr::from(([10, 2, 0, (c % 250 + 1) as u8], 50_000)),
        };
        self.conns.insert(
            key,
            Conn {
                endpoint,
                pipe: pipe.clone(),
                reader: OutputReader::default(),
            },
        );
        self.push_inbound(
            i,
            s,
            Inbound::ConnOpened {
                conn,
                peer,
                out: Box::new(SimConnOut::new(pipe)),
            },
        );
        key
    }

    fn send_on(&mut self, key: ConnKey, messages: &[Vec<u8>]) {
        if messages.is_empty() || !self.conns.contains_key(&key) {
            return;
        }
        self.stats.messages_to_shards += messages.len() as u64;
        let messages = verified(messages);
        self.push_inbound(
            key.0,
            key.1,
            Inbound::ConnMessages {
                conn: key.2,
                messages,
            },
        );
    }

    /// The connection is gone: its peer learns it, and the shard's reader reports it (when
    /// `tell_shard`: the shard may already have dropped it, or be dead).
    fn drop_conn(&mut self, key: ConnKey, tell_shard: bool) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        if tell_shard {
            self.push_inbound(
                key.0,
                key.1,
                Inbound::ConnClosed {
                    conn: key.2,
                    reason: "peer closed the connection".into(),
                },
            );
        }
        match conn.endpoint {
            Endpoint::Agent(a) => {
                if self.agent_conns.get(&a) == Some(&key) {
                    self.agent_conns.remove(&a);
                }
                let agent = &mut self.agents[a];
                if agent.session() == Some(key.2) {
                    agent.on_disconnected();
                    if agent.alive {
                        let delay = agent.next_backoff_ms();
                        let incarnation = agent.incarnation;
                        self.arm(
                            delay * 1000,
                            Timer::Connect {
                                agent: a,
                                incarnation,
                            },
                        );
                    }
                }
            }
            Endpoint::Client(c) => {
                let client = &mut self.clients[c];
                if client.conn == Some(key) {
                    client.on_disconnected();
                }
            }
        }
    }

    /// Hands what shard (i, s) wrote to its connections' peers. Returns whether there was any.
    fn deliver_outputs(&mut self, i: usize, s: usize) -> bool {
        let keys: Vec<ConnKey> = self
            .conns
            .range((i, s, 0)..=(i, s, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        let mut any = false;
        for key in keys {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let (writes, dropped) = {
                let mut pipe = conn.pipe.borrow_mut();
                (std::mem::take(&mut pipe.writes), pipe.dropped)
            };
            let mut received = Vec::new();
            for w in &writes {
                match conn.reader.read(w) {
                    Ok(mut r) => received.append(&mut r),
                    Err(e) => {
                        self.fail(Violation::new("shard_output_decodes", e));
                        return true;
                    }
                }
            }
            let endpoint = conn.endpoint;
            if !received.is_empty() {
                any = true;
                self.stats.messages_from_shards += received.len() as u64;
                match endpoint {
                    Endpoint::Agent(a) => self.agent_receive(a, key, received),
                    Endpoint::Client(c) => self.client_receive(c, received),
                }
            }
            if dropped {
                any = true;
                self.drop_conn(key, true);
            }
        }
        any
    }

    // ----- agents -----

    fn agent_receive(&mut self, a: usize, key: ConnKey, received: Vec<crate::wire::Received>) {
        if self.agents[a].session() != Some(key.2) {
            return;
        }
        let now_ms = self.now_ms();
        for r in received {
            let timers = match r.message {
                OwnedMessage::AgentRegistered { .. } => {
                    self.agents[a].on_registered();
                    Vec::new()
                }
                OwnedMessage::LaunchTask(launch) => self.agents[a].on_launch(launch, now_ms),
                OwnedMessage::KillTask { task_id } => {
                    let job_key = r.kill_job_key.unwrap_or_default();
                    self.agents[a].on_kill(task_id, &job_key, now_ms)
                }
                OwnedMessage::StatusAck(acks) => {
                    let agent = &mut self.agents[a];
                    let lost = agent.lose_acks > 0;
                    if !lost {
                        for (id, state) in &acks {
                            if state.is_terminal() {
                                let (job, instance) = agent
                                    .tasks
                                    .get(id)
                                    .map(|t| (t.job_key.clone(), t.instance))
                                    .unwrap_or_default();
                                self.ledger
                                    .acked_terminals
                                    .insert(*id, (*state, job, instance));
                            }
                        }
                    }
                    self.agents[a].on_status_ack(&acks)
                }
                OwnedMessage::Error {
                    code: ErrorCode::NotLeader,
                    leader,
                    ..
                } => {
                    let n = self.instances.len();
                    let agent = &mut self.agents[a];
                    agent.target = leader
                        .as_deref()
                        .and_then(|l| instance_of_address(l, n))
                        .unwrap_or((agent.target + 1) % n);
                    Vec::new()
                }
                _ => Vec::new(),
            };
            let incarnation = self.agents[a].incarnation;
            for (delay_ms, timer) in timers {
                self.arm(
                    delay_ms * 1000,
                    Timer::Agent {
                        agent: a,
                        incarnation,
                        timer,
                    },
                );
            }
        }
        self.flush_agent(a);
    }

    fn flush_agent(&mut self, a: usize) {
        let now = self.now_us;
        let statuses = self.agents[a].take_outbox(now, &mut self.rng);
        let Some(&key) = self.agent_conns.get(&a) else {
            return;
        };
        if statuses.is_empty() {
            return;
        }
        let messages: Vec<Vec<u8>> = statuses
            .iter()
            .map(|s| self.encoder.task_status(s).to_vec())
            .collect();
        self.send_on(key, &messages);
    }

    fn connect_agent(&mut self, a: usize) {
        let agent = &self.agents[a];
        if !agent.alive || agent.link != Link::Down {
            return;
        }
        let n = self.instances.len();
        let target = agent.target % n;
        if !self.instances[target].up {
            let agent = &mut self.agents[a];
            agent.target = (target + 1) % n;
            let delay = agent.next_backoff_ms();
            let incarnation = agent.incarnation;
            self.arm(
                delay * 1000,
                Timer::Connect {
                    agent: a,
                    incarnation,
                },
            );
            return;
        }
        let s = self.rng.below(self.instances[target].shard_count as u64) as usize;
        let key = self.open_conn(target, s, Endpoint::Agent(a));
        self.agent_conns.insert(a, key);
        let agent = &mut self.agents[a];
        agent.link = Link::Up {
            session: key.2,
            registered: false,
        };
        let registration = agent.registration();
        let bytes = self.encoder.register_agent(&registration).to_vec();
        self.send_on(key, &[bytes]);
        self.arm(
            HEARTBEAT_MS * 1000,
            Timer::Heartbeat {
                agent: a,
                session: key.2,
            },
        );
    }

    fn start_agent(&mut self, a: usize) {
        let agent = &mut self.agents[a];
        if agent.alive || agent.incarnation > 0 {
            return;
        }
        agent.alive = true;
        agent.target = 0;
        if let Some(etcd) = &self.etcd {
            agent.target = etcd.leader.unwrap_or(0);
        }
        self.connect_agent(a);
    }

    fn disconnect_agent(&mut self, a: usize, down_ms: u64) {
        let Some(&key) = self.agent_conns.get(&a) else {
            return;
        };
        self.conns.remove(&key);
        self.agent_conns.remove(&a);
        self.push_inbound(
            key.0,
            key.1,
            Inbound::ConnClosed {
                conn: key.2,
                reason: "simulated network failure".into(),
            },
        );
        let agent = &mut self.agents[a];
        agent.on_disconnected();
        let incarnation = agent.incarnation;
        self.arm(
            down_ms * 1000,
            Timer::Connect {
                agent: a,
                incarnation,
            },
        );
    }

    fn restart_agent(&mut self, a: usize, down_ms: u64) {
        if !self.agents[a].alive {
            return;
        }
        if let Some(key) = self.agent_conns.remove(&a) {
            self.conns.remove(&key);
            self.push_inbound(
                key.0,
                key.1,
                Inbound::ConnClosed {
                    conn: key.2,
                    reason: "agent died".into(),
                },
            );
        }
        let agent = &mut self.agents[a];
        agent.die();
        let incarnation = agent.incarnation;
        self.arm(
            down_ms * 1000,
            Timer::AgentBack {
                agent: a,
                incarnation,
            },
        );
    }

    // ----- clients -----

    /// Sends a client request (connecting first); returns its request id.
    pub fn client_request(
        &mut self,
        c: usize,
        request: Request,
        encode: impl FnOnce(&mut Encoder, u64) -> Vec<u8>,
    ) -> u64 {
        let id = self.clients[c].request_id();
        let n = self.instances.len();
        let target = self.clients[c].target % n;
        if let Some(key) = self.clients[c].conn {
            if key.0 != target {
                self.drop_conn(key, true);
            }
        }
        if self.clients[c].conn.is_none() {
            if !self.instances[target].up {
                self.clients[c].replies.insert(id, Reply::Lost);
                self.clients[c].target = (target + 1) % n;
                return id;
            }
            let s = self.rng.below(self.instances[target].shard_count as u64) as usize;
            let key = self.open_conn(target, s, Endpoint::Client(c));
            self.clients[c].conn = Some(key);
        }
        if let Request::Create { key, .. } = &request {
            self.ledger.note_create_sent(key);
        }
        let key = self.clients[c].conn.expect("connected");
        let bytes = encode(&mut self.encoder, id);
        self.clients[c].in_flight.insert(id, request);
        self.send_on(key, &[bytes]);
        id
    }

    fn client_receive(&mut self, c: usize, received: Vec<crate::wire::Received>) {
        for r in received {
            let Some(request) = self.clients[c].in_flight.remove(&r.request_id) else {
                continue;
            };
            if let OwnedMessage::Error {
                code: ErrorCode::NotLeader,
                leader,
                ..
            } = &r.message
            {
                let n = self.instances.len();
                let client = &mut self.clients[c];
                client.target = leader
                    .as_deref()
                    .and_then(|l| instance_of_address(l, n))
                    .unwrap_or((client.target + 1) % n);
            }
            match self.ledger.on_reply(&request, &r.message) {
                Ok(reply) => {
                    self.clients[c].replies.insert(r.request_id, reply);
                }
                Err(v) => self.fail(v),
            }
        }
    }

    pub fn reply(&self, c: usize, id: u64) -> Option<&Reply> {
        self.clients[c].replies.get(&id)
    }

    // ----- time -----

    /// Lets `ms` of simulated time pass, firing timers and ticks in order.
    pub fn advance(&mut self, ms: u64) -> Result<(), Violation> {
        let target = self.now_us + ms * 1000;
        loop {
            self.result()?;
            let next_timer = self.timers.keys().next().map(|k| k.0);
            let next = next_timer.map_or(self.next_tick_us, |t| t.min(self.next_tick_us));
            if next > target {
                break;
            }
            self.now_us = self.now_us.max(next);
            self.rounds_this_step = 0;
            if next_timer == Some(next) {
                let key = *self.timers.keys().next().expect("present");
                let timer = self.timers.remove(&key).expect("present");
                self.fire(timer);
            } else {
                self.next_tick_us += TICK_US;
                for i in 0..self.instances.len() {
                    for s in 0..self.instances[i].inbound.len() {
                        self.push_inbound(i, s, Inbound::Tick);
                    }
                }
            }
            self.run_rounds();
            if std::mem::take(&mut self.dirty) {
                self.check();
            }
        }
        self.now_us = target;
        self.stats.simulated_ms = (self.now_us - 1_000_000) / 1000;
        self.result()
    }

    fn fire(&mut self, timer: Timer) {
        let now_ms = self.now_ms();
        match timer {
            Timer::Agent {
                agent,
                incarnation,
                timer,
            } => {
                if self.agents[agent].incarnation != incarnation {
                    return;
                }
                let timers = self.agents[agent].on_timer(timer, now_ms);
                for (delay_ms, timer) in timers {
                    self.arm(
                        delay_ms * 1000,
                        Timer::Agent {
                            agent,
                            incarnation,
                            timer,
                        },
                    );
                }
                self.flush_agent(agent);
                self.dirty = true;
            }
            Timer::Connect { agent, incarnation } => {
                if self.agents[agent].incarnation == incarnation {
                    self.connect_agent(agent);
                }
            }
            Timer::Heartbeat { agent, session } => {
                if self.agents[agent].session() == Some(session) {
                    if let Some(&key) = self.agent_conns.get(&agent) {
                        let bytes = self.encoder.heartbeat(now_ms).to_vec();
                        self.send_on(key, &[bytes]);
                    }
                    self.arm(HEARTBEAT_MS * 1000, Timer::Heartbeat { agent, session });
                }
            }
            Timer::AgentBack { agent, incarnation } => {
                let a = &mut self.agents[agent];
                if a.incarnation == incarnation && !a.alive {
                    a.alive = true;
                    self.connect_agent(agent);
                }
            }
            Timer::Restart { shards } => {
                if !self.instances[0].up {
                    self.boot(0, shards);
                    self.dirty = true;
                }
            }
            Timer::Elect { next, same_term } => {
                if self.etcd.as_ref().is_some_and(|e| e.leader.is_none()) {
                    self.elect(next, same_term);
                    self.dirty = true;
                }
            }
            Timer::Etcd { instance } => {
                let now = self.now_us;
                let fail_percent = self.etcd.as_ref().map_or(0, |e| e.fail_percent);
                let rng = &mut self.rng;
                let answers = match self.etcd.as_mut() {
                    Some(etcd) => etcd.complete_due(instance, now, || rng.percent(fail_percent)),
                    None => Vec::new(),
                };
                if let Some(c) = &self.instances[instance].control {
                    for (shard, answer) in answers {
                        c.send(shard, answer);
                    }
                }
                self.dirty = true;
            }
        }
    }

    // ----- events -----

    /// One step: the event, the rounds it causes, the invariants.
    pub fn apply(&mut self, event: &Event) -> Result<(), Violation> {
        self.result()?;
        self.stats.events += 1;
        self.rounds_this_step = 0;
        let n_agents = self.agents.len().max(1);
        let n_clients = self.clients.len().max(1);
        match event {
            Event::Advance { ms } => return self.advance(*ms).and_then(|()| self.check_now()),
            Event::AgentStart { agent } => self.start_agent(agent % n_agents),
            Event::AgentDisconnect { agent, down_ms } => {
                self.disconnect_agent(agent % n_agents, *down_ms)
            }
            Event::AgentRestart { agent, down_ms } => {
                self.restart_agent(agent % n_agents, *down_ms)
            }
            Event::LoseAcks { agent, count } => self.agents[agent % n_agents].lose_acks += count,
            Event::GarbleStatuses {
                agent,
                duplicate,
                reorder,
                ms,
            } => {
                let until = self.now_us + ms * 1000;
                let a = &mut self.agents[agent % n_agents];
                a.garble_until_us = until;
                a.garble_duplicate = *duplicate;
                a.garble_reorder = *reorder;
            }
            Event::CreateJob { client, key, job } => {
                if let Ok(job_key) = key.parse::<borealis_core::JobKey>() {
                    let config = job.task_config(&job_key);
                    let instances = job.instances;
                    self.client_request(
                        client % n_clients,
                        Request::Create { key: key.clone() },
                        |e, id| e.create_job(id, instances, &config).to_vec(),
                    );
                }
            }
            Event::KillJob {
                client,
                key,
                instances,
            } => {
                if let Ok(job_key) = key.parse::<borealis_core::JobKey>() {
                    self.client_request(
                        client % n_clients,
                        Request::Kill {
                            key: key.clone(),
                            instances: instances.clone(),
                        },
                        |e, id| e.kill_job(id, &job_key, instances).to_vec(),
                    );
                }
            }
            Event::QueryJob { client, key } => {
                if let Ok(job_key) = key.parse::<borealis_core::JobKey>() {
                    self.client_request(
                        client % n_clients,
                        Request::Query { key: key.clone() },
                        |e, id| e.query_job(id, &job_key).to_vec(),
                    );
                }
            }
            Event::ListJobs { client } => {
                let acked_before = self.ledger.acked_creates.iter().cloned().collect();
                self.client_request(
                    client % n_clients,
                    Request::List { acked_before },
                    |e, id| e.list_jobs(id).to_vec(),
                );
            }
            Event::Crash {
                mid_round,
                down_ms,
                restart_shards,
            } => self.crash(mid_round, *down_ms, *restart_shards),
            Event::LeaderLoss {
                pause_ms,
                next,
                same_term,
            } => self.leader_loss(*pause_ms, *next, *same_term),
            Event::SlowEtcd {
                delay_ms,
                fail_percent,
                ms,
            } => {
                let until = self.now_us + ms * 1000;
                if let Some(etcd) = self.etcd.as_mut() {
                    etcd.slow_until_us = until;
                    etcd.slow_delay_ms = *delay_ms;
                    etcd.fail_percent = *fail_percent;
                }
            }
            Event::Settle => return self.settle(),
        }
        self.run_rounds();
        self.check_now()
    }

    fn check_now(&mut self) -> Result<(), Violation> {
        self.dirty = false;
        self.check();
        self.result()
    }

    /// Every instance's shards, audited.
    pub fn audits(&self) -> Vec<InstanceAudit> {
        self.instances
            .iter()
            .enumerate()
            .map(|(i, inst)| InstanceAudit {
                instance: i,
                up: inst.up,
                shards: inst.shards.iter().map(Shard::audit).collect(),
            })
            .collect()
    }

    fn check(&mut self) {
        if self.failed.is_some() {
            return;
        }
        self.stats.checks += 1;
        let audits = self.audits();
        let ended = invariants::newly_ended_instances(&audits, &self.ledger);
        self.ledger.ended_instances.extend(ended);
        let view = View {
            instances: &audits,
            agents: &self.agents,
            ledger: &self.ledger,
            etcd: self.etcd.as_ref(),
        };
        if let Err(v) = self.checker.step(&view) {
            self.fail(v);
        }
    }

    /// Whether nothing is in flight anywhere and every agent is registered with the leader.
    fn quiet(&self) -> bool {
        let leader = match &self.etcd {
            Some(etcd) => match etcd.leader {
                Some(l) => l,
                None => return false,
            },
            None => 0,
        };
        if self.etcd.as_ref().is_some_and(Etcd::in_flight) {
            return false;
        }
        if self.timers.values().any(Timer::unsettling) {
            return false;
        }
        for (i, inst) in self.instances.iter().enumerate() {
            if !inst.up {
                return false;
            }
            for s in 0..inst.shards.len() {
                if !inst.inbound[s].is_empty()
                    || !inst.shards[s].is_idle()
                    || inst.control.as_ref().is_some_and(|c| c.has_messages_for(s))
                {
                    return false;
                }
            }
            if i == leader && !inst.shards.iter().all(|s| s.audit().acting) {
                return false;
            }
        }
        self.agents
            .iter()
            .enumerate()
            .filter(|(_, a)| a.alive)
            .all(|(idx, a)| {
                a.is_registered()
                    && !a.busy()
                    && self.agent_conns.get(&idx).is_some_and(|k| k.0 == leader)
            })
    }

    /// Heals every fault, waits (simulated) until the cluster is quiet past the
    /// reconciliation grace, and checks the quiet invariants.
    pub fn settle(&mut self) -> Result<(), Violation> {
        self.result()?;
        for a in &mut self.agents {
            a.lose_acks = 0;
            a.garble_until_us = 0;
        }
        if let Some(etcd) = self.etcd.as_mut() {
            etcd.slow_until_us = 0;
            if etcd.leader.is_none()
                && !self
                    .timers
                    .values()
                    .any(|t| matches!(t, Timer::Elect { .. }))
            {
                let next = etcd.last_leader.unwrap_or(0);
                self.elect(next, true);
            }
        }
        let deadline = self.now_us + SETTLE_MAX_US;
        let grace_us = self.cfg.reconciliation_grace_ms * 1000 + SWEEP_US + TICK_US;
        loop {
            self.advance(100)?;
            let since = self.instances.iter().map(|i| i.since_us).max().unwrap_or(0);
            if self.now_us >= since + grace_us && self.quiet() {
                break;
            }
            if self.now_us > deadline {
                return Err(Violation::new(
                    "quiescence_reached",
                    format!(
                        "the cluster did not settle within {} s of simulated time",
                        SETTLE_MAX_US / 1_000_000
                    ),
                ));
            }
        }
        self.stats.checks += 1;
        let audits = self.audits();
        let view = View {
            instances: &audits,
            agents: &self.agents,
            ledger: &self.ledger,
            etcd: self.etcd.as_ref(),
        };
        if let Err(v) = invariants::quiet(&view) {
            self.fail(v);
        }
        self.result()
    }

    // ----- read access for the builder and the reports -----

    pub fn agents(&self) -> &[SimAgent] {
        &self.agents
    }

    pub fn agent_index(&self, name: &str) -> Option<usize> {
        self.agents.iter().position(|a| a.spec.name == name)
    }

    pub fn is_up(&self) -> bool {
        self.instances.iter().any(|i| i.up)
    }

    /// Task states across the acting instance (for tests).
    pub fn task_states(&self) -> Vec<(String, u32, TaskState)> {
        self.audits()
            .iter()
            .filter(|i| i.acting())
            .flat_map(|i| i.shards.iter().flat_map(|s| s.tasks.iter()))
            .map(|t| (t.job.to_string(), t.instance, t.state))
            .collect()
    }
}
