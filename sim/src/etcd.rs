//! The simulated etcd and the control thread of each scheduler instance (what
//! `cli/src/ha.rs` does against a real etcd): one leader at a time with a fence that only
//! grows, the desired-state map its fenced writes change, and each instance's persist
//! requests answered in order, after a delay, sometimes with a failure.

use std::collections::{BTreeMap, VecDeque};

use borealis_core::{JobKey, Resources};
use borealis_shards::ha::{
    DesiredJob, ShardLinks, ToControl, ToShard, PERSIST_QUEUE_MAX, TO_SHARD_QUEUE_MAX,
};

/// A scheduler instance's control thread: its ends of the shards' channels.
pub struct Control {
    pub to_shards: Vec<crossbeam::channel::Sender<ToShard>>,
    pub from_shards: tokio::sync::mpsc::Receiver<ToControl>,
}

impl Control {
    /// The channels for `shards` shards, as `cli/src/ha.rs::start` builds them.
    pub fn new(shards: usize) -> (Control, Vec<ShardLinks>) {
        let (to_control, from_shards) = tokio::sync::mpsc::channel::<ToControl>(PERSIST_QUEUE_MAX);
        let mut to_shards = Vec::with_capacity(shards);
        let mut links = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = crossbeam::channel::bounded::<ToShard>(TO_SHARD_QUEUE_MAX);
            to_shards.push(tx);
            links.push(ShardLinks {
                from_control: rx,
                to_control: to_control.clone(),
            });
        }
        (
            Control {
                to_shards,
                from_shards,
            },
            links,
        )
    }

    pub fn send(&self, shard: usize, msg: ToShard) {
        if let Some(tx) = self.to_shards.get(shard) {
            tx.try_send(msg).expect(
                "the simulation runs a shard's round whenever its control queue is not empty",
            );
        }
    }

    /// Whether a shard has control messages to poll.
    pub fn has_messages_for(&self, shard: usize) -> bool {
        self.to_shards.get(shard).is_some_and(|tx| !tx.is_empty())
    }
}

/// What a write changes.
// Like `ToControl`, which it mirrors: the common variant is the large one.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Change {
    /// A job's desired state (None: delete it).
    Job {
        key: JobKey,
        job: Option<DesiredJob>,
    },
    Quota {
        role: String,
        quota: Resources,
    },
    /// A host's maintenance mode (None: back in service).
    Host {
        host: String,
        image: Option<borealis_store::HostImage>,
    },
}

/// One shard's part of a new term: its desired jobs and the quotas of the roles it owns.
pub type LeadPart = (
    Vec<DesiredJob>,
    Vec<(String, Resources)>,
    Vec<(String, borealis_store::HostImage)>,
);

/// A persist request waiting for etcd.
#[derive(Debug)]
struct Write {
    shard: usize,
    token: u64,
    change: Change,
    /// The fence the writer's term had when it asked (None: it did not lead).
    fence: Option<i64>,
    due_us: u64,
}

/// The desired state and the election.
#[derive(Debug, Default)]
pub struct Etcd {
    /// The current term's fence (the leader key's create revision); grows with every election.
    pub fence: i64,
    /// The instance that leads, None while leadership is unknown.
    pub leader: Option<usize>,
    /// The last instance that led (a pause may end with the same term).
    pub last_leader: Option<usize>,
    pub desired: BTreeMap<String, DesiredJob>,
    pub quotas: BTreeMap<String, Resources>,
    pub hosts: BTreeMap<String, borealis_store::HostImage>,
    queues: BTreeMap<usize, VecDeque<Write>>,
    /// Slow mode: extra latency and failures until `slow_until_us`.
    pub slow_until_us: u64,
    pub slow_delay_ms: u64,
    pub fail_percent: u64,
    pub writes_applied: u64,
    pub writes_failed: u64,
}

impl Etcd {
    /// Queues a persist request; returns when it will be answered (µs).
    pub fn enqueue(
        &mut self,
        instance: usize,
        request: ToControl,
        now_us: u64,
        latency_us: u64,
    ) -> u64 {
        let (shard, token, change) = match request {
            ToControl::Persist {
                shard,
                token,
                key,
                job,
            } => (shard, token, Change::Job { key, job }),
            ToControl::PersistQuota {
                shard,
                token,
                role,
                quota,
            } => (shard, token, Change::Quota { role, quota }),
            ToControl::PersistHostMode {
                shard,
                token,
                host,
                image,
            } => (shard, token, Change::Host { host, image }),
        };
        let fence = (self.leader == Some(instance)).then_some(self.fence);
        let queue = self.queues.entry(instance).or_default();
        // One batch at a time, in order (the real persist worker): never before the previous.
        let due_us = queue
            .back()
            .map_or(now_us + latency_us, |w| w.due_us.max(now_us + latency_us));
        queue.push_back(Write {
            shard,
            token,
            change,
            fence,
            due_us,
        });
        due_us
    }

    /// Answers every write of `instance` that is due; `fail` decides injected failures.
    pub fn complete_due(
        &mut self,
        instance: usize,
        now_us: u64,
        mut fail: impl FnMut() -> bool,
    ) -> Vec<(usize, ToShard)> {
        let mut answers = Vec::new();
        let Some(queue) = self.queues.get_mut(&instance) else {
            return answers;
        };
        while queue.front().is_some_and(|w| w.due_us <= now_us) {
            let w = queue.pop_front().expect("checked");
            let leads = self.leader == Some(instance) && w.fence == Some(self.fence);
            let result = if !leads {
                Err("this scheduler is no longer the leader".to_string())
            } else if now_us < self.slow_until_us && fail() {
                Err("etcd: request timed out".to_string())
            } else {
                match w.change {
                    Change::Job {
                        key,
                        job: Some(job),
                    } => {
                        self.desired.insert(key.to_string(), job);
                    }
                    Change::Job { key, job: None } => {
                        self.desired.remove(&key.to_string());
                    }
                    Change::Quota { role, quota } => {
                        self.quotas.insert(role, quota);
                    }
                    Change::Host {
                        host,
                        image: Some(image),
                    } => {
                        self.hosts.insert(host, image);
                    }
                    Change::Host { host, image: None } => {
                        self.hosts.remove(&host);
                    }
                }
                Ok(())
            };
            if result.is_ok() {
                self.writes_applied += 1;
            } else {
                self.writes_failed += 1;
            }
            answers.push((
                w.shard,
                ToShard::Persisted {
                    token: w.token,
                    result,
                },
            ));
        }
        answers
    }

    pub fn in_flight(&self) -> bool {
        self.queues.values().any(|q| !q.is_empty())
    }

    /// The desired jobs and the quotas of each of `shards` shards (as `watch_leadership`
    /// partitions them: jobs by key, quotas by role).
    pub fn partition(&self, shards: usize) -> Vec<LeadPart> {
        let mut parts = vec![(Vec::new(), Vec::new(), Vec::new()); shards];
        for job in self.desired.values() {
            let shard =
                (borealis_core::route_hash_str(&job.key.to_string()) % shards as u64) as usize;
            parts[shard].0.push(job.clone());
        }
        for (role, quota) in &self.quotas {
            let shard = (borealis_core::route_hash_str(role) % shards as u64) as usize;
            parts[shard].1.push((role.clone(), *quota));
        }
        for (host, image) in &self.hosts {
            let shard = (borealis_core::route_hash_str(host) % shards as u64) as usize;
            parts[shard].2.push((host.clone(), *image));
        }
        parts
    }

    /// An election: a new term for `instance`.
    pub fn elect(&mut self, instance: usize) -> i64 {
        self.fence += 1;
        self.leader = Some(instance);
        self.last_leader = Some(instance);
        self.fence
    }
}
