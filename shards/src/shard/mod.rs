//! One shard: the jobs, tasks, agents and offers it owns, and its batched loop.
//!
//! Each round: wait for input, drain up to [`ROUND_INBOUND_MAX`] inbound items (frames from
//! its connections, batches from peers, ticks), apply them, place pending tasks against the
//! offers it owns (up to [`ROUND_PLACEMENTS_MAX`]), then flush: one write per connection and
//! one message batch per peer. State is owned by the loop and never shared.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use borealis_core::lifecycle::{self, Reschedule, TaskEnd};
use borealis_core::placement::{AgentId, AttrId, CompiledTask, JobSpread, PlacementIndex, ValueId};
use borealis_core::tier::TierConfig;
use borealis_core::update::Rev;
use borealis_core::{JobKey, Resources, TaskConfig, TaskId, TaskIdGen, TaskState, TaskUsage};
use borealis_net::codec::{state_from_wire, task_config_from_wire};
use borealis_net::views::{
    ErrorCode, JobStatusView, JobSummaryView, TaskEventView, TaskInfoView, TaskStatusReport,
};
use borealis_net::{wire, Encoder, FrameWriter};
use bytes::Bytes;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::metrics::{AttemptResult, Metrics, ShardMetrics};
use crate::msg::*;
use crate::SchedulerConfig;

mod access;
mod agents;
mod audit;
mod conns;
mod cron;
mod desired;
mod drains;
mod durability;
mod errors;
mod gather;
mod ha_mode;
mod history;
mod jobs;
mod maintenance;
mod offers;
mod peers;
mod pending;
mod preemption;
mod quotas;
mod reconcile;
mod replies;
mod task_lifecycle;
mod timers;
mod updates;
#[cfg(feature = "sim")]
pub use audit::InjectedBug;
pub use audit::{AgentAudit, JobAudit, ShardAudit, TaskAudit, Transition};
use borealis_store::image::{JobImage, LogRecord, StateImage, TaskImage, TaskImageRef};
use borealis_store::wal::Wal;
pub use errors::ClientError;
pub use ha_mode::Mode;
use ha_mode::PendingPersist;
pub use maintenance::HostState;
pub use preemption::{RunningTask, SlotOffer, SlotQuery};

/// Inbound items handled per round before placing and flushing.
pub const ROUND_INBOUND_MAX: usize = 256;
/// Placements attempted per round; the rest wait for the next round.
pub const ROUND_PLACEMENTS_MAX: usize = 16_384;
/// Log bytes after which a shard writes a snapshot (bounding replay time at restart).
const SNAPSHOT_LOG_BYTES: u64 = 256 << 20;
/// Blocked tasks put back into the queue per round after offers changed.
const BLOCKED_RETRY_MAX: usize = 4096;
/// Tasks of one job placed as one batch.
const PLACEMENT_BATCH_MAX: usize = 4096;
/// Offers lent per `Borrow`.
const LEND_OFFERS_MAX: usize = 64;
/// Messages queued for one peer shard past which the shard stops reading its connections
/// (`Shard::takes_conn_input`); one round adds at most what `ROUND_INBOUND_MAX` items make.
pub const PEER_OUTBOX_MAX: usize = 1 << 20;
/// What one blocked task id spaces the next walk for `borealis_pending_tasks` by. A walk
/// visits about 6 M ids a second (500,000 blocked jobs took ~80 ms), so it takes under 2% of
/// the shard's time; 500,000 blocked tasks are counted every 5 s.
const REASONS_WALK_US_PER_TASK: u64 = 10;
/// Statuses one StatusAck acknowledges (~9 bytes each: 0.6 MiB a message).
pub const STATUS_ACKS_PER_MESSAGE_MAX: usize = 65_536;
/// Output a connection may have pending before it is dropped as not reading.
const CONN_PENDING_BYTES_MAX: usize = 64 << 20;
/// Agents that send nothing (not even a heartbeat) for this long are disconnected.
const AGENT_SILENCE_MAX: Duration = Duration::from_secs(30);
/// How often tasks stuck in transient states and silent agents are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);
/// Pause before asking peers again after a borrow that brought nothing placeable.
const BORROW_BACKOFF: Duration = Duration::from_millis(200);

const _: () = assert!(ROUND_INBOUND_MAX <= crate::INBOUND_QUEUE_MAX);

/// A job's slot in its shard's [`JobSlab`]: stable for the job's life, reused after it.
/// Meaningful only on the shard that issued it (never sent to another).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct JobIdx(u32);

/// Jobs in stable slots: a task keeps its job's index for life, and removing a job touches no
/// other job or task.
#[derive(Default)]
struct JobSlab {
    slots: Vec<Option<Job>>,
    vacant: Vec<JobIdx>,
    len: usize,
    /// Every job by its key's text, in key order (`ListJobs` pages walk it; see `gather`).
    /// Kept here, by `insert` and `remove`, so every way a job comes and goes keeps it.
    by_key: BTreeMap<Arc<str>, JobIdx>,
}

impl JobSlab {
    fn insert(&mut self, job: Job) -> JobIdx {
        let key = job.key_text.clone();
        let idx = self.insert_slot(job);
        let before = self.by_key.insert(key, idx);
        debug_assert!(before.is_none(), "two live jobs of one key");
        idx
    }

    fn insert_slot(&mut self, job: Job) -> JobIdx {
        self.len += 1;
        match self.vacant.pop() {
            Some(idx) => {
                debug_assert!(self.slots[idx.0 as usize].is_none());
                self.slots[idx.0 as usize] = Some(job);
                idx
            }
            None => {
                self.slots.push(Some(job));
                JobIdx(u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 jobs a shard"))
            }
        }
    }

    fn remove(&mut self, idx: JobIdx) -> Job {
        let job = self.slots[idx.0 as usize]
            .take()
            .expect("removing a live job");
        self.by_key.remove(&job.key_text);
        self.vacant.push(idx);
        self.len -= 1;
        job
    }

    fn len(&self) -> usize {
        self.len
    }
}

impl std::ops::Index<JobIdx> for JobSlab {
    type Output = Job;
    fn index(&self, idx: JobIdx) -> &Job {
        self.slots[idx.0 as usize].as_ref().expect("live job")
    }
}

impl std::ops::IndexMut<JobIdx> for JobSlab {
    fn index_mut(&mut self, idx: JobIdx) -> &mut Job {
        self.slots[idx.0 as usize].as_mut().expect("live job")
    }
}

/// A task's state as its agent reported it (a status update, or a task listed at
/// registration when `adopting`).
#[derive(Clone, Copy)]
struct Report<'a> {
    agent: AgentId,
    task_id: TaskId,
    state: TaskState,
    exit_code: i32,
    message: &'a str,
    sandbox: &'a str,
    adopting: bool,
    /// What the task used, when the agent says (with a terminal status).
    usage: Option<TaskUsage>,
}

/// A task's usage as the agent's wire status (or registration) carries it.
fn usage_from_wire(u: &wire::TaskUsage) -> TaskUsage {
    TaskUsage {
        cpu_time_ms: u.cpu_time_ms(),
        peak_memory_bytes: u.peak_memory_bytes(),
        disk_bytes: u.disk_bytes(),
    }
}

/// An agent's name (its `agent_id`) and hostname.
#[derive(Debug)]
struct AgentNames {
    name: Arc<str>,
    hostname: Arc<str>,
}

/// A configuration revision of a job other than its head, compiled for placement.
struct Variant {
    config: Arc<TaskConfig>,
    compiled: CompiledTask,
}

struct Job {
    key: JobKey,
    key_text: Arc<str>,
    /// The job's head configuration (revision `head_rev`): what its instances run unless
    /// `instance_revs` says otherwise, and whose policy (tier, SLA, partition) the job follows.
    config: Arc<TaskConfig>,
    compiled: CompiledTask,
    head_rev: Rev,
    /// Other revisions that an instance desires, a live task runs (updates in progress, or
    /// left mixed by an aborted or failed one), or a kept update names (for its diff).
    others: BTreeMap<Rev, Variant>,
    /// Instances whose desired revision is not the head.
    instance_revs: BTreeMap<u32, Rev>,
    /// The job's updates, oldest first; an active one is the last.
    updates: Vec<borealis_core::update::JobUpdate>,
    /// The revisions or the active update changed this round (logged at its end).
    revs_dirty: bool,
    update_dirty: bool,
    /// A cron job's schedule and template (see `cron`).
    cron: Option<Box<cron::CronJob>>,
    spread: JobSpread,
    /// The current task of each instance (None once it is killed for good).
    current: Vec<Option<TaskId>>,
    /// Terminal tasks, oldest first, bounded by `history_max_per_job`.
    history: VecDeque<TaskId>,
    /// Instances that must not run again (killed by a user, or ad-hoc instances that ended
    /// for good): what a new leader needs to know, since task history is not in etcd.
    retired: Vec<bool>,
    /// Placement attempts that failed in a row (the schedule penalty's exponent).
    schedule_failures: u32,
    /// PENDING tasks that found no offer, waiting out the penalty.
    blocked: Vec<TaskId>,
    /// When the blocked tasks are tried again (shard µs; 0: not blocked).
    blocked_due_us: u64,
    /// Why the job's PENDING tasks are not placed, from the last failed attempt.
    pending_reason: Option<String>,
    /// Its coarse kind (the metric's label).
    pending_kind: Option<borealis_core::placement::PendingReasonKind>,
    /// The explanation being gathered from the other shards.
    explaining: pending::Explaining,
    /// When the job's last failed attempt was explained (0: never).
    explained_us: u64,
    /// It was retried against offers a peer lent since its penalty last ended.
    lend_tried: bool,
    /// Production work of a tier that counts against its role's quota.
    counts_quota: bool,
    /// Instances not retired (what the job holds against its quota, per task).
    unretired: u32,
}

impl Job {
    fn new(
        key: JobKey,
        config: TaskConfig,
        compiled: CompiledTask,
        current: Vec<Option<TaskId>>,
        history: VecDeque<TaskId>,
        tiers: &TierConfig,
    ) -> Job {
        let spread = JobSpread::new(&compiled);
        let instances = current.len();
        let counts_quota = borealis_core::quota::counts_against_quota(&config, tiers);

        Job {
            key_text: key.to_string().into(),
            key,
            config: Arc::new(config),
            compiled,
            head_rev: 0,
            others: BTreeMap::new(),
            instance_revs: BTreeMap::new(),
            updates: Vec::new(),
            revs_dirty: false,
            update_dirty: false,
            cron: None,
            spread,
            current,
            history,
            retired: vec![false; instances],
            unretired: instances as u32,
            schedule_failures: 0,
            blocked: Vec::new(),
            blocked_due_us: 0,
            pending_reason: None,
            pending_kind: None,
            explaining: pending::Explaining::default(),
            explained_us: 0,
            lend_tried: false,
            counts_quota,
        }
    }
}

impl Job {
    /// The configuration of revision `rev` (the head, or one of the others).
    fn config_of(&self, rev: Rev) -> &Arc<TaskConfig> {
        if rev == self.head_rev {
            &self.config
        } else {
            &self
                .others
                .get(&rev)
                .expect("a revision the job keeps")
                .config
        }
    }

    /// The revision instance `instance` should run.
    fn desired_rev(&self, instance: u32) -> Rev {
        self.instance_revs
            .get(&instance)
            .copied()
            .unwrap_or(self.head_rev)
    }

    /// The job's active update, if any.
    fn active_update(&self) -> Option<&borealis_core::update::JobUpdate> {
        self.updates.last().filter(|u| u.status.is_active())
    }

    fn active_update_mut(&mut self) -> Option<&mut borealis_core::update::JobUpdate> {
        self.updates.last_mut().filter(|u| u.status.is_active())
    }
}

struct Task {
    id: TaskId,
    job: JobIdx,
    instance: u32,
    /// The job's configuration revision this task runs.
    rev: Rev,
    state: TaskState,
    agent: Option<AgentId>,
    /// The agent's name and hostname, kept for status after the agent is gone.
    host: Option<Arc<AgentNames>>,
    /// Resources consumed on `agent` (released when the task leaves it).
    holds: bool,
    failure_count: u32,
    consecutive_flaps: u32,
    entered_us: u64,
    running_since_us: Option<u64>,
    exit_code: i32,
    message: String,
    ports: Vec<(String, u16)>,
    sandbox: String,
    /// Killed by a user: never rescheduled.
    killed_by_user: bool,
    /// Restored from the log with an agent that has not reported it since the restart.
    awaiting_adoption: bool,
    /// The production task this one was preempted for.
    preempted_by: Option<TaskId>,
    /// Being killed: when the kill is sent again if the agent has not answered (0: never).
    next_kill_retry_us: u64,
    kill_retries: u32,
    /// The latest state changes, oldest first, at most [`TASK_EVENTS_MAX`] (not logged: a
    /// restored task's events start at its restore).
    events: Vec<TaskEvent>,
    /// What the task used, as its agent reported with its terminal status (logged); `None`
    /// before that, and when the agent measured nothing. A later report without a usage
    /// leaves it as it is.
    usage: Option<TaskUsage>,
}

/// Most state changes a task remembers for `job status` and the UI (Aurora keeps every one;
/// the bound keeps 100,000 tasks' memory fixed).
pub const TASK_EVENTS_MAX: usize = 12;

/// One state change of a task.
struct TaskEvent {
    unix_ms: u64,
    state: TaskState,
    message: Box<str>,
}

/// An agent whose connection this shard holds.
struct HomeAgent {
    conn: ConnId,
    name: Arc<str>,
    hostname: Arc<str>,
    attributes: Arc<borealis_core::Attributes>,
    total: Resources,
    port_ranges: Vec<(u16, u16)>,
    ports_in_use: HashMap<TaskId, Vec<u16>>,
    /// Where the offer is: in this shard's index, lent to a peer, or held back while adopted
    /// tasks are being confirmed.
    offer: OfferWhere,
    /// Resources released while the offer was lent; added back on return.
    released_while_lent: Resources,
    /// The tasks running on it, for preemption searches (a hash map: a search sorts what it
    /// weighs; launches and ends only insert and remove).
    running: HashMap<TaskId, preemption::RunningTask>,
    /// Tasks it reported at registration that the scheduler refused and is killing: they hold
    /// their resources on it until it reports them ended.
    dying: BTreeMap<TaskId, Resources>,
    /// When the agent last sent anything (shard clock, µs).
    last_seen_us: u64,
    /// Its HTTP sandbox server (task logs): the connection's IP and the port it registered.
    log_address: Option<std::net::SocketAddr>,
}

enum OfferWhere {
    Home,
    Lent,
    Adopting {
        waiting: usize,
        used: Resources,
    },
    /// Out of placement, held for a preemptor while its victims end (see `preemption`).
    Held {
        preemptor: TaskId,
        owner: ShardId,
        demand: Resources,
        /// What is free so far (released victims add to it).
        free: Resources,
        expires_us: u64,
    },
    /// Out of placement while the agent's host is under maintenance, with what is free.
    Parked {
        free: Resources,
    },
}

struct Conn {
    out: Box<dyn ConnOut>,
    writer: FrameWriter,
    agent: Option<AgentId>,
    peer: std::net::SocketAddr,
    /// What the peer proved in the TLS handshake.
    identity: borealis_net::tls::PeerIdentity,
    /// The client principal its token authenticated (`Authenticate`), with `--auth-file`.
    principal: Option<Arc<borealis_core::auth::Principal>>,
}

pub struct Shard {
    id: ShardId,
    shard_count: usize,
    config: Arc<SchedulerConfig>,
    encoder: Encoder,
    ids: TaskIdGen,
    next_agent: u64,

    jobs: JobSlab,
    job_index: HashMap<JobKey, JobIdx>,
    tasks: HashMap<TaskId, Task>,
    tasks_by_agent: HashMap<AgentId, HashSet<TaskId>>,
    pending: VecDeque<TaskId>,
    /// Jobs whose pending tasks found no offer, by when they are tried again.
    blocked_jobs: std::collections::BTreeSet<(u64, JobIdx)>,
    /// The most any offer that changed this round has free (per dimension): blocked jobs
    /// that fit it are retried early.
    changed_free_max: Option<Resources>,
    /// The same for offers peers lent this round (each job tries a loan once per penalty).
    lent_free_max: Option<Resources>,
    /// Terminal tasks in the order they ended, for pruning by age.
    ended: VecDeque<(u64, TaskId)>,
    throttled: BTreeMap<(u64, TaskId), ()>,

    index: PlacementIndex,
    agent_names: HashMap<AgentId, Arc<AgentNames>>,
    /// Interned attributes of every agent whose offer this shard holds or has held for its
    /// tasks; limit-constraint spreads are kept with these, even after the offer moved on.
    agent_attr_ids: HashMap<AgentId, Vec<(AttrId, ValueId)>>,
    home_agents: HashMap<AgentId, HomeAgent>,
    borrowed: HashSet<AgentId>,
    borrow_outstanding: bool,
    /// No new `Borrow` before this instant (set after a fruitless one).
    next_borrow_at_us: u64,
    /// Tasks placed since the last `Lend` arrived (tells whether lending helped).
    placed_since_lend: usize,
    next_lender: ShardId,
    last_sweep_us: u64,

    conns: HashMap<ConnId, Conn>,
    metrics: Arc<Metrics>,
    /// The clock at the start of the current round (see `begin_round`): monotonic µs.
    now_us: u64,
    /// The wall clock at the start of the current round (unix ms), for backup slots.
    unix_ms: u64,
    /// The shard's write-ahead log (None: state is kept in memory only).
    wal: Option<Wal>,
    mode: Mode,
    /// Channels to the control thread (etcd leadership), when there is one.
    links: Option<crate::ha::ShardLinks>,
    next_token: u64,
    pending_persists: HashMap<u64, PendingPersist>,
    /// Jobs with a desired-state write in flight (see `desired`).
    job_writes: HashMap<JobKey, desired::JobWrites>,
    /// Jobs whose write failed, with the acknowledgements waiting for it (retried by the sweep).
    resync_later: BTreeMap<JobKey, Vec<desired::Ack>>,
    /// After taking the lead: when instances no agent reported get new tasks (0: done).
    install_deadline_us: u64,
    /// Restored tasks not reported by any agent by then are LOST.
    reconcile_deadline_us: u64,
    last_snapshot_us: u64,
    /// The wall-clock interval slot of the last periodic backup.
    last_backup_slot: u64,
    /// The last operator backup request handled (its unix ms).
    last_backup_request: u64,
    /// Terminal statuses to acknowledge on each agent connection this shard holds, sent
    /// after the round's commit made them durable.
    pending_acks: HashMap<ConnId, Vec<(TaskId, TaskState)>>,
    /// Tasks per state (the `borealis_tasks` gauge).
    state_counts: [u64; TaskState::COUNT],
    /// Home agents whose offers are lent out.
    lent_out: usize,
    /// Scratch for `schedule` (kept to avoid allocating each round).
    run_tasks: Vec<TaskId>,
    run_agents: Vec<AgentId>,
    gathers: gather::Gathers,
    /// Accepted-looking mutations awaiting their answer, for the audit log (see `access`).
    pending_audits: HashMap<(ConnId, u64), crate::audit_log::AuditEntry>,
    outbox: Vec<PeerBatch>,
    /// Numbers the why-pending requests this shard sends (see `pending`).
    next_explain_epoch: u64,
    /// The tier configuration (`--tier-config`).
    tiers: TierConfig,
    /// `--allowed-job-environments`.
    allowed_environments: regex::Regex,
    // Quotas (see `quotas`), as a job owner:
    quota_waits: HashMap<u64, quotas::QuotaWait>,
    next_quota_token: u64,
    /// What this shard's production jobs hold, per role.
    role_usage: BTreeMap<String, Resources>,
    dirty_roles: std::collections::BTreeSet<String>,
    quota_settles: Vec<(String, u64)>,
    usage_snapshot_due: bool,
    // ... and as the quota owner of the roles that route here:
    quota_book: BTreeMap<String, quotas::RoleBook>,
    usage_reported: Vec<bool>,
    deferred_checks: VecDeque<(ShardId, Arc<str>, u64, Resources)>,
    // Preemption (see `preemption`): searches this shard started, by token,
    searches: BTreeMap<u64, preemption::Search>,
    next_search_token: u64,
    /// this shard's tasks with a claimed slot (until when),
    slot_holds: HashMap<TaskId, u64>,
    last_preemption_search_us: u64,
    /// `--max-schedule-attempts-per-sec`: the token bucket and when it was last refilled.
    attempt_tokens: f64,
    attempts_refilled_us: u64,
    /// When `borealis_pending_tasks` by reason was last computed (0: never).
    last_reasons_published_us: u64,
    /// Blocked task ids the last walk for `borealis_pending_tasks` visited (it spaces the next).
    reasons_walk_cost: u64,
    // Host maintenance (see `maintenance`): every host not in NONE, as its owner announced it,
    hosts: BTreeMap<Arc<str>, maintenance::HostState>,
    /// as an owner: draining hosts' progress, changes waiting for every shard to apply them,
    host_progress: BTreeMap<Arc<str>, maintenance::HostProgress>,
    host_acks: HashMap<u64, maintenance::HostAckWait>,
    /// Host modes being written to etcd (persist token -> the change's ack token).
    host_persists: HashMap<u64, Option<u64>>,
    next_host_token: u64,
    next_host_epoch: u64,
    /// and this shard's clients' requests waiting for the owners.
    host_requests: HashMap<(ConnId, u64), maintenance::HostRequest>,
    // Drains (see `drains`): tasks waiting for their SLA,
    drain_waits: HashMap<TaskId, drains::DrainWait>,
    /// the coordinator service's links, and its requests in flight by token.
    coordinator: Option<crate::coordinator::CoordinatorLinks>,
    coordinator_waits: HashMap<u64, TaskId>,
    next_coordinator_token: u64,
    /// Explicit and implicit reconciliation with this shard's agents (see `reconcile`).
    reconciliation: reconcile::Reconciliation,
    // Rolling updates (see `updates`): jobs with an active update,
    updating: std::collections::BTreeSet<JobIdx>,
    /// those to step this round (a task of theirs changed, or a command arrived),
    update_wake: std::collections::BTreeSet<JobIdx>,
    /// when every updating job is stepped again (watch and pulse timers),
    next_update_timer_us: u64,
    /// when finished updates are next pruned by age,
    next_update_prune_us: u64,
    /// and jobs whose revisions or updates changed outside an active update (to log).
    update_log_jobs: std::collections::BTreeSet<JobIdx>,
    // Cron jobs (see `cron`): by next trigger (unix ms),
    cron_queue: std::collections::BTreeSet<(u64, JobIdx)>,
    /// and those whose run waits for the previous one to be killed.
    cron_starting: std::collections::BTreeSet<JobIdx>,
    /// Every transition, when the simulation asked for them (`record_transitions`).
    transition_log: Option<Vec<Transition>>,
    #[cfg(feature = "sim")]
    injected_bug: Option<audit::InjectedBug>,
}

/// The time a round runs at. The runtime reads the real clocks once per round; the
/// simulation passes a fake one. The shard reads no clock of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundClock {
    /// Monotonic microseconds (any origin; never goes back).
    pub mono_us: u64,
    /// The wall clock, unix milliseconds (backup slots only).
    pub unix_ms: u64,
}

fn elapsed_us(now_us: u64, since_us: u64) -> u64 {
    now_us.saturating_sub(since_us)
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

impl Shard {
    /// Sets the round's clock: every event of a round carries the round's time.
    pub fn begin_round(&mut self, clock: RoundClock) {
        debug_assert!(clock.mono_us >= self.now_us, "the shard clock went back");
        self.now_us = clock.mono_us.max(self.now_us);
        self.unix_ms = clock.unix_ms;
    }

    pub fn new(
        id: ShardId,
        shard_count: usize,
        config: Arc<SchedulerConfig>,
        metrics: Arc<Metrics>,
        clock: RoundClock,
    ) -> Shard {
        let tiers = config.tier_config;
        let allowed_environments = regex::Regex::new(&config.allowed_job_environments)
            .expect("--allowed-job-environments is checked at startup");
        let last_backup_slot = clock.unix_ms / config.backup_interval_ms.max(1);
        let last_backup_request = config
            .backup_requests
            .load(std::sync::atomic::Ordering::Relaxed);
        let reconciliation = reconcile::Reconciliation::new(clock.mono_us, &config.service);
        Shard {
            id,
            shard_count,
            ids: TaskIdGen::new(config.epoch, id.0 as u8),
            config,
            encoder: Encoder::new(),
            next_agent: 1,
            jobs: JobSlab::default(),
            job_index: HashMap::default(),
            tasks: HashMap::default(),
            tasks_by_agent: HashMap::default(),
            pending: VecDeque::new(),
            blocked_jobs: std::collections::BTreeSet::new(),
            changed_free_max: None,
            lent_free_max: None,
            ended: VecDeque::new(),
            throttled: BTreeMap::new(),
            index: PlacementIndex::new(),
            agent_names: HashMap::default(),
            agent_attr_ids: HashMap::default(),
            home_agents: HashMap::default(),
            borrowed: HashSet::default(),
            borrow_outstanding: false,
            next_borrow_at_us: clock.mono_us,
            placed_since_lend: 0,
            last_sweep_us: clock.mono_us,
            next_lender: ShardId((id.0 + 1) % shard_count.max(1)),
            conns: HashMap::default(),
            metrics,
            now_us: clock.mono_us,
            unix_ms: clock.unix_ms,
            wal: None,
            mode: Mode::Embedded,
            links: None,
            next_token: 0,
            pending_persists: HashMap::default(),
            job_writes: HashMap::default(),
            resync_later: BTreeMap::new(),
            install_deadline_us: 0,
            reconcile_deadline_us: 0,
            last_snapshot_us: clock.mono_us,
            last_backup_slot,
            last_backup_request,
            pending_acks: HashMap::default(),
            state_counts: [0; TaskState::COUNT],
            lent_out: 0,
            run_tasks: Vec::new(),
            run_agents: Vec::new(),
            gathers: gather::Gathers::default(),
            pending_audits: HashMap::default(),
            outbox: (0..shard_count).map(|_| Vec::new()).collect(),
            next_explain_epoch: 0,
            tiers,
            allowed_environments,
            quota_waits: HashMap::default(),
            next_quota_token: 0,
            role_usage: BTreeMap::new(),
            dirty_roles: Default::default(),
            quota_settles: Vec::new(),
            usage_snapshot_due: true,
            quota_book: BTreeMap::new(),
            usage_reported: vec![false; shard_count],
            deferred_checks: VecDeque::new(),
            searches: BTreeMap::new(),
            next_search_token: 0,
            slot_holds: HashMap::default(),
            last_preemption_search_us: clock.mono_us,
            attempt_tokens: 0.0,
            attempts_refilled_us: clock.mono_us,
            last_reasons_published_us: 0,
            reasons_walk_cost: 0,
            hosts: BTreeMap::new(),
            host_progress: BTreeMap::new(),
            host_acks: HashMap::default(),
            host_persists: HashMap::default(),
            next_host_token: 0,
            next_host_epoch: 0,
            host_requests: HashMap::default(),
            drain_waits: HashMap::default(),
            coordinator: None,
            coordinator_waits: HashMap::default(),
            next_coordinator_token: 0,
            reconciliation,
            updating: Default::default(),
            update_wake: Default::default(),
            next_update_timer_us: 0,
            next_update_prune_us: 0,
            update_log_jobs: Default::default(),
            cron_queue: Default::default(),
            cron_starting: Default::default(),
            transition_log: None,
            #[cfg(feature = "sim")]
            injected_bug: None,
        }
    }

    fn owner_of(&self, key_text: &str) -> ShardId {
        ShardId((borealis_core::route_hash_str(key_text) % self.shard_count as u64) as usize)
    }

    fn send(&mut self, to: ShardId, msg: PeerMsg) {
        if to == self.id {
            self.handle_peer(self.id, msg);
        } else {
            self.outbox[to.0].push(msg);
        }
    }

    /// Peer batches to send at the end of the round (taken by the loop).
    pub fn take_outbox(&mut self, to: ShardId) -> Option<PeerBatch> {
        if self.outbox[to.0].is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.outbox[to.0]))
        }
    }

    pub fn handle(&mut self, item: Inbound) {
        match item {
            Inbound::Peer { from, batch } => {
                for msg in batch {
                    self.handle_peer(from, msg);
                }
            }
            Inbound::ConnOpened {
                conn,
                peer,
                identity,
                out,
            } => {
                tracing::debug!(shard = %self.id, %conn, %peer, ?identity, "connection opened");
                self.conns.insert(
                    conn,
                    Conn {
                        out,
                        writer: FrameWriter::new(),
                        agent: None,
                        peer,
                        identity,
                        principal: None,
                    },
                );
            }
            Inbound::ConnMessages { conn, messages } => {
                self.metrics()
                    .messages_received_total
                    .add(messages.len() as u64);
                for bytes in messages {
                    if !self.conns.contains_key(&conn) {
                        break;
                    }
                    self.handle_conn_message(conn, bytes);
                }
            }
            Inbound::ConnClosed { conn, reason } => self.conn_closed(conn, &reason),
            Inbound::Tick => self.tick(),
        }
    }

    fn metrics(&self) -> &ShardMetrics {
        &self.metrics.shards[self.id.0]
    }

    /// Keeps the per-state task counts (a gauge) and the transition counter.
    fn count_state(&mut self, from: Option<TaskState>, to: TaskState) {
        if let Some(from) = from {
            debug_assert!(self.state_counts[from as usize] > 0);
            self.state_counts[from as usize] -= 1;
        }
        self.state_counts[to as usize] += 1;
        self.metrics().transitions_total[to as usize].inc();
    }

    /// Publishes the gauges a scrape reads (end of each round: a few plain stores).
    pub fn publish_metrics(&mut self, inbound_queue_depth: usize) {
        // Pending tasks by reason walk the blocked jobs: at most every 100 ms, not per round,
        // and spaced by what the last walk visited (`REASONS_WALK_US_PER_TASK` each), so that
        // with a million blocked tasks the walk stays a sliver of the shard's time (found
        // listing a million jobs: walked every 100 ms, it took 84% of an idle shard).
        let interval_us = (self.reasons_walk_cost * REASONS_WALK_US_PER_TASK).max(100_000);
        if self.last_reasons_published_us == 0
            || elapsed_us(self.now_us, self.last_reasons_published_us) >= interval_us
        {
            self.last_reasons_published_us = self.now_us.max(1);
            self.reasons_walk_cost = self.publish_pending_by_reason();
        }
        let m = self.metrics();
        for (gauge, count) in m.tasks_by_state.iter().zip(self.state_counts) {
            gauge.set(count);
        }
        m.offers_held.set(self.index.agent_count() as u64);
        m.offers_lent_out.set(self.lent_out as u64);
        m.agents_connected.set(self.home_agents.len() as u64);
        m.connections.set(self.conns.len() as u64);
        m.jobs.set(self.jobs.len() as u64);
        m.leading.set(u64::from(self.acting()));
        m.inbound_queue_depth.set(inbound_queue_depth as u64);
        m.gathers_in_flight.set(self.gathers.len() as u64);
        m.peer_outbox_depth
            .set(self.outbox.iter().map(Vec::len).sum::<usize>() as u64);
    }

    /// The end of a round, after its inbound items were handled: place pending tasks, give
    /// borrowed offers back, make the round durable (one commit), then flush the connections.
    /// Nothing of the round leaves before the commit: acknowledgements, launches and answers
    /// are written to the connections here, peer batches are taken by the caller after it.
    pub fn end_round(&mut self) {
        self.poll_coordinator();
        self.drive_updates();
        self.schedule();
        self.return_borrowed();
        self.flush_quota_usage();
        self.log_update_changes();
        self.commit_log();
        self.flush_connections();
    }

    /// Puts back a batch the peer's queue could not take; newer messages stay behind it.
    pub fn restore_outbox(&mut self, to: ShardId, mut batch: PeerBatch) {
        batch.append(&mut self.outbox[to.0]);
        self.outbox[to.0] = batch;
    }

    /// False while a peer is so far behind that this shard's messages for it pile up past
    /// [`PEER_OUTBOX_MAX`]: the loop then stops taking input from connections (what makes
    /// messages for peers) until the peer catches up. Input from peers is always taken, so two
    /// shards behind each other still drain.
    pub fn takes_conn_input(&self) -> bool {
        self.outbox.iter().all(|o| o.len() <= PEER_OUTBOX_MAX)
    }

    /// The `borealis_pending_tasks` gauge: queued tasks, blocked ones by the kind of their
    /// job's last explanation, throttled ones. Returns how many blocked task ids it visited.
    fn publish_pending_by_reason(&self) -> u64 {
        use crate::metrics::pending_reason_index;
        let mut by_reason = [0u64; crate::metrics::PENDING_REASONS.len()];
        let blocked = |id: &TaskId| {
            self.tasks
                .get(id)
                .is_some_and(|t| t.state == TaskState::Pending)
        };
        // The queue may still hold a few tasks killed since they were queued (dropped at the
        // next attempt): its length is close enough, and walking it would cost more.
        by_reason[0] = self.pending.len() as u64;
        let mut visited = 0u64;
        for &(_, job) in &self.blocked_jobs {
            let j = &self.jobs[job];
            visited += j.blocked.len() as u64 + 1;
            by_reason[pending_reason_index(j.pending_kind)] +=
                j.blocked.iter().filter(|id| blocked(id)).count() as u64;
        }
        by_reason
            [pending_reason_index(Some(borealis_core::placement::PendingReasonKind::Throttled))] +=
            self.throttled.len() as u64;
        for (gauge, count) in self.metrics().pending_by_reason.iter().zip(by_reason) {
            gauge.set(count);
        }
        visited
    }

    /// Work to do without waiting for input: pending tasks, unless the attempt rate limit
    /// (`--max-schedule-attempts-per-sec`) has no attempt left (the next tick refills it).
    pub fn has_pending(&self) -> bool {
        // A shard that does not act (a follower, a paused leader) places nothing: waiting
        // for input instead of spinning (found by the simulation).
        self.acting()
            && !self.pending.is_empty()
            && (self.config.max_schedule_attempts_per_sec <= 0.0 || self.attempt_tokens >= 1.0)
    }
}
