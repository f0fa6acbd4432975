//! Every message the scheduler accepts from a peer, through the real shard handlers.
//!
//! As the deterministic simulation does (sim/src/world), the target runs the real
//! `borealis_shards::shard::Shard`s of one scheduler (1 to 3 shards, the simulation's
//! `SchedulerConfig`) in-process on a fake clock. Four connections are open (clients on the
//! first and last shard, agents on the first and second), the agents registered. Each input
//! record then delivers messages on a connection (`Inbound::ConnMessages`, exactly what the
//! connection reader hands a shard) and runs shard rounds as the runtime does (`begin_round`,
//! `poll_control`, a bounded batch of `handle`, `end_round`, `publish_metrics`, peer batches
//! routed to their shards) until the shards are idle:
//! - raw records: the payload as one message, delivered only when it passes `decode_message`
//!   (the reader in shards/src/conn.rs delivers nothing else);
//! - structured records (`arbitrary`): mostly-valid requests built with the real `Encoder`
//!   (creates, kills, restarts, queries, quotas, maintenance, updates, cron, authentication),
//!   agent traffic (registrations, statuses of tasks the shards launched and of unknown ones,
//!   heartbeats), messages no peer may send, connections closing, and time passing (ticks,
//!   sweeps, timeouts).
//!
//! What the shards write is read as a peer reads it; launches teach the target task ids to
//! report on. Checked: nothing panics (debug assertions on); every transition the shards record
//! is legal; everything the shards write decodes (`decode_message` and `to_owned`); with the
//! write-ahead log on (a header bit), the log the input produced recovers, and the recovered
//! shards run a round.
#![no_main]

use std::collections::VecDeque;
use std::net::SocketAddr;

use arbitrary::Arbitrary;
use borealis_core::{JobKey, TaskId};
use borealis_fuzz::*;
use borealis_net::codec::to_owned;
use borealis_net::frame::split_messages;
use borealis_net::views::{ErrorCode, OwnedMessage, TaskStatusReport};
use borealis_net::{decode_message, wire, Encoder, FrameDecoder};
use borealis_shards::ha::{ToShard, TO_SHARD_QUEUE_MAX};
use borealis_shards::metrics::Metrics;
use borealis_shards::msg::{ConnId, Inbound, ShardId};
use borealis_shards::shard::{RoundClock, Shard, ROUND_INBOUND_MAX};
use borealis_sim::config::{scheduler_config, SchedulerFlags, SimSchedulerSettings};
use borealis_sim::etcd::{Control, Etcd};
use borealis_sim::wire::{SharedPipe, SimConnOut};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

/// Connection slots: 0 and 2 clients, 1 and 3 agents.
const SLOTS: usize = 4;
/// Rounds one settle may take (the shards may keep pending tasks they cannot place yet).
const SETTLE_ROUNDS_MAX: usize = 64;
/// Records one input may hold (bounds an input's time).
const RECORDS_MAX: usize = 256;
const UNIX_EPOCH_MS: u64 = 1_700_000_000_000;

#[derive(Arbitrary, Debug)]
struct StatusGen {
    task: u8,
    known: bool,
    state: u8,
    exit_code: i8,
    message: Text,
    sandbox: Text,
    job: Option<u8>,
    instance: Option<u8>,
    usage: Option<UsageGen>,
    timestamp: u32,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Create {
        slot: u8,
        job: u8,
        instances: u8,
        config: ConfigGen,
        tier_explicit: bool,
    },
    Kill {
        slot: u8,
        job: u8,
        instances: Vec<u8>,
    },
    Restart {
        slot: u8,
        job: u8,
        instances: Vec<u8>,
    },
    Query {
        slot: u8,
        job: u8,
    },
    ListJobs {
        slot: u8,
        /// A page after this job key (None: from the first), of at most `limit` jobs.
        after: Option<u8>,
        limit: u8,
    },
    ListAgents {
        slot: u8,
        /// A page after this (hostname, agent id) (None: from the first).
        after: Option<(u8, u8)>,
        limit: u8,
    },
    QueryTask {
        slot: u8,
        task: u8,
        known: bool,
    },
    SetQuota {
        slot: u8,
        role: u8,
        cpu: u16,
        ram: u16,
        disk: u16,
    },
    GetQuota {
        slot: u8,
        role: u8,
    },
    Maintenance {
        slot: u8,
        op: u8,
        hosts: Vec<u8>,
        timeout: u8,
    },
    StartUpdate {
        slot: u8,
        job: u8,
        instances: u8,
        config: ConfigGen,
        tier_explicit: bool,
        settings: SettingsGen,
        scope: Vec<u8>,
        message: Text,
    },
    UpdateCommand {
        slot: u8,
        job: u8,
        command: u8,
        message: Text,
    },
    QueryUpdates {
        slot: u8,
        job: Option<u8>,
        update_id: u8,
        details: bool,
    },
    ScheduleCron {
        slot: u8,
        job: u8,
        instances: u8,
        config: ConfigGen,
        tier_explicit: bool,
        schedule: Text,
        cancel_new: bool,
    },
    DescheduleCron {
        slot: u8,
        job: u8,
    },
    StartCron {
        slot: u8,
        job: u8,
    },
    Authenticate {
        slot: u8,
        token: Text,
    },
    Register {
        slot: u8,
        agent: AgentGen,
        tasks: Vec<StatusGen>,
    },
    RegisterStandard {
        slot: u8,
    },
    Status {
        slot: u8,
        status: StatusGen,
    },
    /// Every task launched on an agent reported in one state (moves many tasks along).
    ReportAll {
        state: u8,
    },
    Heartbeat {
        slot: u8,
        timestamp_ms: u64,
    },
    /// A message no client or agent may send the scheduler.
    Unexpected {
        slot: u8,
        kind: u8,
    },
    /// Several operations' messages in one delivery (one `ConnMessages`).
    Burst {
        slot: u8,
        jobs: Vec<u8>,
    },
    Advance {
        exp: u8,
        frac: u8,
    },
    Close {
        slot: u8,
    },
    /// HA mode: an election (a new term for this scheduler, or the same term again after a
    /// pause), leadership lost (another scheduler leads, or none is known), etcd failing or
    /// answering again.
    Elect {
        same_term: bool,
    },
    Follow {
        other_leads: bool,
    },
    EtcdFails {
        failing: bool,
    },
}

/// HA mode: the control thread's channels and a simulated etcd (the simulation's), answering
/// every persist at once (or failing it).
struct Ha {
    control: Control,
    etcd: Etcd,
    /// Answers waiting for room in a shard's bounded control queue.
    backlog: Vec<VecDeque<ToShard>>,
}

struct Slot {
    shard: usize,
    conn: u64,
    pipe: SharedPipe,
    decoder: FrameDecoder,
}

/// A task the shards launched on an agent (what the agent would know).
#[derive(Clone)]
struct Known {
    id: TaskId,
    job_key: String,
    instance: u32,
    slot: usize,
}

struct Harness {
    shards: Vec<Shard>,
    inbound: Vec<VecDeque<Inbound>>,
    stalled: Vec<bool>,
    slots: Vec<Slot>,
    next_conn: u64,
    now_us: u64,
    known: Vec<Known>,
    encoder: Encoder,
    next_request: u64,
    settle_each: bool,
    ha: Option<Ha>,
}

fn clock(now_us: u64) -> RoundClock {
    RoundClock {
        mono_us: now_us,
        unix_ms: UNIX_EPOCH_MS + now_us / 1000,
    }
}

impl Harness {
    fn new(
        shard_count: usize,
        flags: SchedulerFlags,
        data_dir: Option<&std::path::Path>,
        ha: bool,
    ) -> Harness {
        let mut epoch = 1;
        let recovered = data_dir.map(|dir| {
            borealis_shards::recover(dir, shard_count, &mut epoch)
                .expect("a fresh data dir recovers")
        });
        let config = scheduler_config(&SimSchedulerSettings {
            shards: shard_count,
            data_dir: data_dir.map(|d| d.to_path_buf()),
            epoch,
            reconciliation_grace_ms: 10_000,
            flags,
        });
        let metrics = Metrics::new(shard_count, &config.cluster_name);
        let now_us = 1_000_000;
        let mut shards: Vec<Shard> = (0..shard_count)
            .map(|id| {
                Shard::new(
                    ShardId(id),
                    shard_count,
                    config.clone(),
                    metrics.clone(),
                    clock(now_us),
                )
            })
            .collect();
        if let Some(recovered) = recovered {
            for (shard, (image, wal)) in shards.iter_mut().zip(recovered) {
                shard.restore(image, wal);
            }
        }
        for shard in &mut shards {
            shard.record_transitions();
        }
        let ha = ha.then(|| {
            let (control, links) = Control::new(shard_count);
            for (shard, links) in shards.iter_mut().zip(links) {
                shard.set_links(links);
            }
            Ha {
                control,
                etcd: Etcd::default(),
                backlog: (0..shard_count).map(|_| VecDeque::new()).collect(),
            }
        });
        let mut h = Harness {
            shards,
            inbound: (0..shard_count).map(|_| VecDeque::new()).collect(),
            stalled: vec![false; shard_count],
            slots: Vec::new(),
            next_conn: 1,
            now_us,
            known: Vec::new(),
            encoder: Encoder::new(),
            next_request: 1,
            settle_each: true,
            ha,
        };
        for slot in 0..SLOTS {
            let shard = match slot {
                0 => 0,
                1 => 0,
                2 => shard_count - 1,
                _ => 1 % shard_count,
            };
            let pipe = SharedPipe::default();
            h.slots.push(Slot {
                shard,
                conn: 0,
                pipe,
                decoder: FrameDecoder::new(),
            });
            h.open(slot);
        }
        h
    }

    fn open(&mut self, slot: usize) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let pipe = SharedPipe::default();
        let s = &mut self.slots[slot];
        s.conn = conn;
        s.pipe = pipe.clone();
        s.decoder = FrameDecoder::new();
        let shard = s.shard;
        let peer = SocketAddr::from(([10, 1, 0, slot as u8 + 1], 40_000));
        self.push(
            shard,
            Inbound::ConnOpened {
                conn: ConnId(conn),
                peer,
                identity: borealis_net::tls::PeerIdentity::Plain,
                out: Box::new(SimConnOut::new(pipe)),
            },
        );
    }

    fn push(&mut self, shard: usize, item: Inbound) {
        self.inbound[shard].push_back(item);
        self.stalled[shard] = false;
    }

    /// Delivers messages on a slot's connection, as its reader would: only what verifies.
    fn deliver(&mut self, slot: usize, messages: Vec<Vec<u8>>) {
        let slot = slot % SLOTS;
        let verified: Vec<Bytes> = messages
            .into_iter()
            .filter(|m| !m.is_empty() && decode_message(m).is_ok())
            .map(Bytes::from)
            .collect();
        if verified.is_empty() {
            return;
        }
        let (shard, conn) = (self.slots[slot].shard, self.slots[slot].conn);
        self.push(
            shard,
            Inbound::ConnMessages {
                conn: ConnId(conn),
                messages: verified,
            },
        );
        if self.settle_each {
            self.settle();
        }
    }

    fn request_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    /// Runs rounds until no shard has anything to do (or the bound).
    fn settle(&mut self) {
        for _ in 0..SETTLE_ROUNDS_MAX {
            let mut any = false;
            for s in 0..self.shards.len() {
                let control = self
                    .ha
                    .as_ref()
                    .is_some_and(|ha| !ha.backlog[s].is_empty() || ha.control.has_messages_for(s));
                if control
                    || !self.inbound[s].is_empty()
                    || (self.shards[s].has_pending() && !self.stalled[s])
                {
                    self.round(s);
                    any = true;
                }
            }
            if !any {
                return;
            }
        }
    }

    fn round(&mut self, s: usize) {
        let shard_count = self.shards.len();
        let shard = &mut self.shards[s];
        shard.begin_round(clock(self.now_us));
        shard.poll_control();
        let take = self.inbound[s].len().min(ROUND_INBOUND_MAX);
        for item in self.inbound[s].drain(..take) {
            shard.handle(item);
        }
        shard.end_round();
        shard.publish_metrics(self.inbound[s].len());
        let mut produced = false;
        for peer in 0..shard_count {
            if peer == s {
                continue;
            }
            if let Some(batch) = self.shards[s].take_outbox(ShardId(peer)) {
                produced = true;
                self.push(
                    peer,
                    Inbound::Peer {
                        from: ShardId(s),
                        batch,
                    },
                );
            }
        }
        produced |= self.answer_persists();
        let transitions = self.shards[s].take_transitions();
        for t in &transitions {
            assert!(
                t.from.can_transition_to(t.to),
                "shard {s}: illegal transition of task {}: {} -> {}",
                t.task,
                t.from,
                t.to
            );
        }
        produced |= !transitions.is_empty();
        for slot in 0..SLOTS {
            if self.slots[slot].shard == s {
                produced |= self.read_output(slot);
            }
        }
        self.stalled[s] = self.shards[s].has_pending() && !produced;
    }

    /// Reads what the shard wrote to a slot's connection, as the peer would; a dropped
    /// connection is closed on the peer's side and opened again.
    fn read_output(&mut self, slot: usize) -> bool {
        let (writes, dropped) = {
            let mut pipe = self.slots[slot].pipe.borrow_mut();
            (std::mem::take(&mut pipe.writes), pipe.dropped)
        };
        let any = !writes.is_empty() || dropped;
        for w in writes {
            self.slots[slot].decoder.extend(&w);
            loop {
                let frame = match self.slots[slot].decoder.next_frame() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => panic!("a shard wrote a bad frame: {e}"),
                };
                let parts = split_messages(frame)
                    .unwrap_or_else(|e| panic!("a shard wrote a bad frame: {e}"));
                for part in parts {
                    let message = decode_message(&part)
                        .unwrap_or_else(|e| panic!("a shard wrote an unverifiable message: {e}"));
                    let kill_key = (message.payload_type() == wire::Payload::KillTask).then(|| {
                        message
                            .payload_as_kill_task()
                            .and_then(|k| k.job_key())
                            .unwrap_or_default()
                            .to_string()
                    });
                    let (_, owned) = to_owned(message)
                        .unwrap_or_else(|e| panic!("a shard wrote an undecodable message: {e}"));
                    self.learn(slot, owned, kill_key);
                }
            }
        }
        if dropped {
            let (shard, conn) = (self.slots[slot].shard, self.slots[slot].conn);
            self.push(
                shard,
                Inbound::ConnClosed {
                    conn: ConnId(conn),
                    reason: "peer closed the connection".into(),
                },
            );
            self.open(slot);
        }
        any
    }

    fn learn(&mut self, slot: usize, message: OwnedMessage, kill_key: Option<String>) {
        const KNOWN_MAX: usize = 512;
        let known = match message {
            OwnedMessage::LaunchTask(l) => Known {
                id: l.task_id,
                job_key: l.job_key.to_string(),
                instance: l.instance,
                slot,
            },
            OwnedMessage::KillTask { task_id } => Known {
                id: task_id,
                job_key: kill_key.unwrap_or_default(),
                instance: 0,
                slot,
            },
            _ => return,
        };
        if self.known.len() < KNOWN_MAX && !self.known.iter().any(|k| k.id == known.id) {
            self.known.push(known);
        }
    }

    /// HA: etcd takes the shards' persist requests and answers them (at once).
    fn answer_persists(&mut self) -> bool {
        let Some(ha) = self.ha.as_mut() else {
            return false;
        };
        let mut any = false;
        while let Ok(request) = ha.control.from_shards.try_recv() {
            ha.etcd.enqueue(0, request, self.now_us, 0);
            any = true;
        }
        for (shard, answer) in ha.etcd.complete_due(0, self.now_us, || true) {
            ha.backlog[shard].push_back(answer);
        }
        self.flush_control();
        any
    }

    /// Moves what fits of the control backlog into the shards' control queues.
    fn flush_control(&mut self) {
        let Some(ha) = self.ha.as_mut() else {
            return;
        };
        for (shard, backlog) in ha.backlog.iter_mut().enumerate() {
            let tx = &ha.control.to_shards[shard];
            while tx.len() < TO_SHARD_QUEUE_MAX {
                let Some(m) = backlog.pop_front() else {
                    break;
                };
                tx.try_send(m).expect("room was checked");
            }
            if !backlog.is_empty() || !tx.is_empty() {
                self.stalled[shard] = false;
            }
        }
    }

    /// HA: this scheduler leads a new term (or the same term again, after a pause).
    fn elect(&mut self, same_term: bool) {
        let n = self.shards.len();
        let Some(ha) = self.ha.as_mut() else {
            return;
        };
        if same_term && ha.etcd.fence > 0 && ha.etcd.last_leader == Some(0) {
            ha.etcd.leader = Some(0);
            let fence = ha.etcd.fence;
            for backlog in &mut ha.backlog {
                backlog.push_back(ToShard::Lead {
                    fence,
                    jobs: Vec::new(),
                    quotas: Vec::new(),
                    hosts: Vec::new(),
                });
            }
        } else {
            let fence = ha.etcd.elect(0);
            for (backlog, (jobs, quotas, hosts)) in ha.backlog.iter_mut().zip(ha.etcd.partition(n))
            {
                backlog.push_back(ToShard::Lead {
                    fence,
                    jobs,
                    quotas,
                    hosts,
                });
            }
        }
        self.flush_control();
        self.settle();
    }

    /// HA: leadership lost: another scheduler leads (a new term), or none is known (a pause).
    fn follow(&mut self, other_leads: bool) {
        let Some(ha) = self.ha.as_mut() else {
            return;
        };
        let leader = if other_leads {
            ha.etcd.elect(1);
            Some("10.0.0.2:4300".to_string())
        } else {
            ha.etcd.leader = None;
            None
        };
        for backlog in &mut ha.backlog {
            backlog.push_back(ToShard::Follow {
                leader: leader.clone(),
            });
        }
        self.flush_control();
        self.settle();
    }

    fn advance(&mut self, us: u64) {
        self.now_us += us;
        for s in 0..self.shards.len() {
            self.push(s, Inbound::Tick);
        }
        self.settle();
    }

    fn status(&self, g: &StatusGen) -> TaskStatusReport {
        let known = (g.known && !self.known.is_empty())
            .then(|| self.known[usize::from(g.task) % self.known.len()].clone());
        let (task_id, job_key, instance) = match &known {
            Some(k) => (k.id, k.job_key.clone(), k.instance),
            None => (
                unknown_task(u64::from(g.task)),
                job_key(g.task).to_string(),
                0,
            ),
        };
        TaskStatusReport {
            task_id,
            job_key: g.job.map_or(job_key, |j| job_key_text(j)),
            instance: g.instance.map_or(instance, u32::from),
            state: state(g.state),
            exit_code: i32::from(g.exit_code),
            message: g.message.get(&["", "exited", "OOM killed"]),
            timestamp_ms: UNIX_EPOCH_MS + u64::from(g.timestamp),
            sandbox: g.sandbox.get(&["", "/w/sandboxes/www/prod/web/0/x"]),
            usage: usage(&g.usage),
        }
    }

    fn encode(&mut self, op: &Op) -> Option<(usize, Vec<Vec<u8>>)> {
        let id = self.request_id();
        let e = &mut self.encoder;
        let one = |slot: &u8, bytes: &[u8]| Some((usize::from(*slot), vec![bytes.to_vec()]));
        match op {
            Op::Create {
                slot,
                job,
                instances,
                config,
                tier_explicit,
            } => {
                let key = job_key(*job);
                let config = config.build(key);
                one(
                    slot,
                    e.create_job_spec(id, u32::from(*instances % 9), &config, *tier_explicit),
                )
            }
            Op::Kill {
                slot,
                job,
                instances,
            } => {
                let instances: Vec<u32> = instances
                    .iter()
                    .take(16)
                    .map(|&i| u32::from(i % 12))
                    .collect();
                one(slot, e.kill_job(id, &job_key(*job), &instances))
            }
            Op::Restart {
                slot,
                job,
                instances,
            } => {
                let instances: Vec<u32> = instances
                    .iter()
                    .take(16)
                    .map(|&i| u32::from(i % 12))
                    .collect();
                one(slot, e.restart_job(id, &job_key(*job), &instances))
            }
            Op::Query { slot, job } => one(slot, e.query_job(id, &job_key(*job))),
            Op::ListJobs { slot, after, limit } => {
                let after = after.map(|j| job_key(j).to_string()).unwrap_or_default();
                one(slot, e.list_jobs_page(id, &after, u32::from(*limit % 8)))
            }
            Op::ListAgents { slot, after, limit } => {
                let after = after.map(|(h, a)| (host(h), agent_name(a)));
                one(
                    slot,
                    e.list_agents_page(
                        id,
                        after.as_ref().map(|(h, a)| (h.as_str(), a.as_str())),
                        u32::from(*limit % 8),
                    ),
                )
            }
            Op::QueryTask { slot, task, known } => {
                let task_id = if *known && !self.known.is_empty() {
                    self.known[usize::from(*task) % self.known.len()].id
                } else {
                    unknown_task(u64::from(*task))
                };
                one(slot, e.query_task(id, task_id.0))
            }
            Op::SetQuota {
                slot,
                role: r,
                cpu,
                ram,
                disk,
            } => {
                let quota = borealis_core::Resources {
                    cpu_millis: u32::from(*cpu) * 4,
                    ram_mib: u32::from(*ram),
                    disk_mib: u32::from(*disk),
                    ports: 0,
                };
                one(slot, e.set_quota(id, &role(*r), &quota))
            }
            Op::GetQuota { slot, role: r } => one(slot, e.get_quota(id, &role(*r))),
            Op::Maintenance {
                slot,
                op,
                hosts,
                timeout,
            } => {
                let hosts: Vec<String> = hosts.iter().take(4).map(|&h| host(h)).collect();
                one(
                    slot,
                    e.host_maintenance(id, maintenance_op(*op), &hosts, u64::from(*timeout)),
                )
            }
            Op::StartUpdate {
                slot,
                job,
                instances,
                config,
                tier_explicit,
                settings,
                scope,
                message,
            } => {
                let key = job_key(*job);
                let config = config.build(key.clone());
                let scope: Vec<u32> = scope.iter().take(8).map(|&i| u32::from(i % 12)).collect();
                one(
                    slot,
                    e.start_update_spec(
                        id,
                        &key,
                        u32::from(*instances % 9),
                        &config,
                        *tier_explicit,
                        &settings.build(),
                        &scope,
                        &message.get(&["", "roll v2"]),
                    ),
                )
            }
            Op::UpdateCommand {
                slot,
                job,
                command,
                message,
            } => one(
                slot,
                e.update_command(
                    id,
                    &job_key(*job),
                    update_command(*command),
                    &message.get(&[""]),
                ),
            ),
            Op::QueryUpdates {
                slot,
                job,
                update_id,
                details,
            } => {
                let key = job.map(job_key);
                one(
                    slot,
                    e.query_updates(id, key.as_ref(), u64::from(*update_id % 4), *details),
                )
            }
            Op::ScheduleCron {
                slot,
                job,
                instances,
                config,
                tier_explicit,
                schedule: s,
                cancel_new,
            } => {
                let key = job_key(*job);
                let config = config.build(key.clone());
                one(
                    slot,
                    e.schedule_cron_spec(
                        id,
                        &key,
                        u32::from(*instances % 9),
                        &config,
                        *tier_explicit,
                        &schedule(s),
                        collision_policy(*cancel_new),
                    ),
                )
            }
            Op::DescheduleCron { slot, job } => one(slot, e.deschedule_cron(id, &job_key(*job))),
            Op::StartCron { slot, job } => one(slot, e.start_cron(id, &job_key(*job))),
            Op::Authenticate { slot, token } => {
                one(slot, e.authenticate(id, &token.get(&["secret", ""])))
            }
            Op::Register { slot, agent, tasks } => {
                let tasks: Vec<TaskStatusReport> =
                    tasks.iter().take(16).map(|t| self.status(t)).collect();
                let registration = agent.build(tasks);
                Some((
                    usize::from(*slot),
                    vec![self.encoder.register_agent(&registration).to_vec()],
                ))
            }
            Op::RegisterStandard { slot } => {
                let slot = usize::from(*slot) % SLOTS;
                Some((
                    slot,
                    vec![self.encoder.register_agent(&standard_for(slot)).to_vec()],
                ))
            }
            Op::Status { slot, status } => {
                let report = self.status(status);
                let slot = if status.known && !self.known.is_empty() {
                    self.known[usize::from(status.task) % self.known.len()].slot
                } else {
                    usize::from(*slot)
                };
                Some((slot, vec![self.encoder.task_status(&report).to_vec()]))
            }
            Op::ReportAll { .. }
            | Op::Advance { .. }
            | Op::Close { .. }
            | Op::Burst { .. }
            | Op::Elect { .. }
            | Op::Follow { .. }
            | Op::EtcdFails { .. } => None,
            Op::Heartbeat { slot, timestamp_ms } => one(slot, e.heartbeat(*timestamp_ms)),
            Op::Unexpected { slot, kind } => {
                let bytes = match kind % 10 {
                    0 => e
                        .launch_task(TaskId(1), 0, &small_config(job_key(0)), &[])
                        .to_vec(),
                    1 => e.kill_task(TaskId(1), "www/prod/web").to_vec(),
                    2 => e.reconcile(&[TaskId(1)]).to_vec(),
                    3 => e
                        .status_ack(&[(TaskId(1), borealis_core::TaskState::Finished)])
                        .to_vec(),
                    4 => e.agent_registered("agent-1").to_vec(),
                    5 => e.ack(id).to_vec(),
                    6 => e.error(id, ErrorCode::Internal, "no").to_vec(),
                    7 => e.job_list(id, &[]).to_vec(),
                    8 => e.host_status_list(id, &[]).to_vec(),
                    _ => e.update_list(id, &[]).to_vec(),
                };
                Some((usize::from(*slot), vec![bytes]))
            }
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::ReportAll { state: s } => {
                let state = state(s);
                let mut by_slot: Vec<Vec<Vec<u8>>> = vec![Vec::new(); SLOTS];
                for k in self.known.clone() {
                    let report = TaskStatusReport {
                        task_id: k.id,
                        job_key: k.job_key.clone(),
                        instance: k.instance,
                        state,
                        exit_code: if state == borealis_core::TaskState::Failed {
                            1
                        } else {
                            0
                        },
                        message: String::new(),
                        timestamp_ms: UNIX_EPOCH_MS + self.now_us / 1000,
                        sandbox: String::new(),
                        usage: None,
                    };
                    by_slot[k.slot].push(self.encoder.task_status(&report).to_vec());
                }
                for (slot, messages) in by_slot.into_iter().enumerate() {
                    self.deliver(slot, messages);
                }
            }
            Op::Advance { exp, frac } => {
                // 1 ms to ~9 minutes, log-spread.
                let ms = (1u64 << (exp % 20)) + u64::from(frac);
                self.advance(ms * 1000);
            }
            Op::Elect { same_term } => self.elect(same_term),
            Op::Follow { other_leads } => self.follow(other_leads),
            Op::EtcdFails { failing } => {
                if let Some(ha) = self.ha.as_mut() {
                    // `complete_due` fails every write while slow (its failure draw is `true`).
                    ha.etcd.slow_until_us = if failing { u64::MAX } else { 0 };
                }
            }
            Op::Close { slot } => {
                let slot = usize::from(slot) % SLOTS;
                let (shard, conn) = (self.slots[slot].shard, self.slots[slot].conn);
                self.push(
                    shard,
                    Inbound::ConnClosed {
                        conn: ConnId(conn),
                        reason: "peer closed the connection".into(),
                    },
                );
                self.open(slot);
                if self.settle_each {
                    self.settle();
                }
            }
            Op::Burst { slot, jobs } => {
                let mut messages = Vec::new();
                for &j in jobs.iter().take(32) {
                    let id = self.request_id();
                    let key = job_key(j);
                    messages.push(match j % 4 {
                        0 => self.encoder.query_job(id, &key).to_vec(),
                        1 => self.encoder.kill_job(id, &key, &[]).to_vec(),
                        2 => self.encoder.list_jobs(id).to_vec(),
                        _ => self.encoder.create_job(id, 2, &small_config(key)).to_vec(),
                    });
                }
                self.deliver(usize::from(slot), messages);
            }
            other => {
                if let Some((slot, messages)) = self.encode(&other) {
                    self.deliver(slot, messages);
                }
            }
        }
    }
}

fn job_key_text(pick: u8) -> String {
    job_key(pick).to_string()
}

fn standard_for(slot: usize) -> borealis_net::views::AgentRegistration {
    if slot % 2 == 1 && slot >= 2 {
        standard_agent("agent-2", "host-b", "r2")
    } else {
        standard_agent("agent-1", "host-a", "r1")
    }
}

/// A small valid job that fits the standard agents.
fn small_config(job: JobKey) -> borealis_core::TaskConfig {
    borealis_core::TaskConfig {
        job,
        command: "sim run".into(),
        resources: borealis_core::Resources {
            cpu_millis: 250,
            ram_mib: 64,
            disk_mib: 64,
            ports: 0,
        },
        port_names: Vec::new(),
        constraints: Vec::new(),
        tier: borealis_core::Tier::Preferred,
        priority: 0,
        production: false,
        is_service: false,
        max_task_failures: 1,
        finalization_wait_secs: 1,
        health_check: None,
        http_lifecycle: None,
        sla_policy: None,
        partition_policy: None,
    }
}

/// Prints the error events of the shards' durability code (`shard/durability.rs`), and only
/// those: a shard that cannot write its log says why there and then exits the process (exit
/// status 70), which libFuzzer reports as "fuzz target exited". Everything else the shards log
/// is disabled at its call site (no cost).
struct DurabilityErrors;

impl DurabilityErrors {
    fn wanted(metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() == tracing::Level::ERROR
            && metadata
                .target()
                .starts_with("borealis_shards::shard::durability")
    }
}

struct Line(String);

impl tracing::field::Visit for Line {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl tracing::Subscriber for DurabilityErrors {
    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if Self::wanted(metadata) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        Self::wanted(metadata)
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = Line(String::new());
        event.record(&mut line);
        eprintln!(
            "{} {}:{}",
            event.metadata().target(),
            event.metadata().level(),
            line.0
        );
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

fuzz_target!(|data: &[u8]| {
    static LOGGING: std::sync::Once = std::sync::Once::new();
    LOGGING.call_once(|| {
        let _ = tracing::subscriber::set_global_default(DurabilityErrors);
    });
    let [header, modes, rest @ ..] = data else {
        return;
    };
    let (header, modes) = (*header, *modes);
    let ha = modes & 1 != 0;
    let ha_starts_following = modes & 2 != 0;
    let shard_count = 1 + usize::from(header & 3) % 3;
    // Under etcd there is no log (the desired state is etcd's).
    let with_log = header & 4 != 0 && !ha;
    let settle_each = header & 8 == 0;
    let register = header & 16 == 0;
    let mut flags = SchedulerFlags::default();
    flags.service.partition_aware = header & 32 != 0;
    flags.enable_preemptor = header & 64 == 0;
    if header & 128 != 0 {
        flags.max_schedule_attempts_per_sec = 40.0;
    }

    let dir = scratch_dir("scheduler");
    if with_log {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cannot create the log directory");
    }
    let mut h = Harness::new(
        shard_count,
        flags.clone(),
        with_log.then_some(dir.as_path()),
        ha,
    );
    h.settle_each = settle_each;
    if ha && !ha_starts_following {
        h.elect(false);
    }
    if register {
        for slot in [1, 3] {
            let bytes = h.encoder.register_agent(&standard_for(slot)).to_vec();
            h.deliver(slot, vec![bytes]);
        }
    }
    h.settle();
    for (tag, payload) in records(rest).into_iter().take(RECORDS_MAX) {
        match tag {
            TAG_RAW_CLIENT => h.deliver(0, vec![payload.to_vec()]),
            TAG_RAW_AGENT => h.deliver(1, vec![payload.to_vec()]),
            TAG_ADVANCE => {
                let mut ms = [0u8; 4];
                let n = payload.len().min(4);
                ms[..n].copy_from_slice(&payload[..n]);
                // At most an hour at once.
                h.advance(u64::from(u32::from_le_bytes(ms) % 3_600_000 + 1) * 1000);
            }
            TAG_REPORT_ALL => h.apply(Op::ReportAll {
                state: payload.first().copied().unwrap_or(0),
            }),
            _ => {
                if let Some(op) = borealis_fuzz::op::<Op>(payload) {
                    h.apply(op);
                }
            }
        }
    }
    h.settle();
    // The shards' state survives a restart: what they logged recovers, and runs.
    if with_log {
        let now_us = h.now_us;
        drop(h);
        let mut epoch = 2;
        let recovered = borealis_shards::recover(&dir, shard_count, &mut epoch)
            .unwrap_or_else(|e| panic!("the log does not recover: {e:#}"));
        let config = scheduler_config(&SimSchedulerSettings {
            shards: shard_count,
            data_dir: Some(dir.clone()),
            epoch,
            reconciliation_grace_ms: 10_000,
            flags,
        });
        let metrics = Metrics::new(shard_count, &config.cluster_name);
        for (id, (image, wal)) in recovered.into_iter().enumerate() {
            let mut shard = Shard::new(
                ShardId(id),
                shard_count,
                config.clone(),
                metrics.clone(),
                clock(now_us),
            );
            shard.restore(image, wal);
            shard.begin_round(clock(now_us + 1));
            shard.handle(Inbound::Tick);
            shard.end_round();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
});
