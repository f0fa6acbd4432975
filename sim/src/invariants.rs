//! The invariants, checked after every step (a step: one event and the rounds it causes),
//! and the stricter ones that hold only once the cluster is quiet.
//!
//! Each check reads the shards' audits (`Shard::audit`), the simulated agents and the
//! [`Ledger`] of what was acknowledged; none changes anything but the checker's memory of
//! the last states it saw. A violation names its invariant (a stable string the tests match)
//! and says what broke it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use borealis_core::placement::AgentId;
use borealis_core::{JobKey, Resources, TaskId, TaskState};
use borealis_shards::shard::{ShardAudit, Transition};

use crate::agents::SimAgent;
use crate::clients::Ledger;
use crate::etcd::Etcd;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name (stable: tests and reports match on it).
    pub invariant: &'static str,
    pub detail: String,
}

impl Violation {
    pub fn new(invariant: &'static str, detail: impl Into<String>) -> Violation {
        Violation {
            invariant,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// Every invariant's name, for reports.
pub const ALL: &[&str] = &[
    "agent_not_overcommitted",
    "task_on_one_shard",
    "state_counts_agree",
    "transition_legal",
    "terminal_is_final",
    "instance_active_once",
    "acked_create_exists",
    "acked_kill_stays_killed",
    "acked_terminal_is_terminal",
    "ended_instance_stays_ended",
    "single_leader",
    "quotas_never_exceeded",
    "refused_create_absent",
    "update_within_batch",
    "update_moves_only_what_it_took",
    "agent_accounting_exact_when_quiet",
    "instance_runs_once_on_agents",
    "agents_agree_with_scheduler",
    "kill_completes",
    "terminal_statuses_acked",
    "follower_holds_nothing",
    "client_reply_well_formed",
    "shard_output_decodes",
    "rounds_terminate",
    "recovery_succeeds",
    "quiescence_reached",
    "no_panic",
];

/// One scheduler instance's shards, audited.
#[derive(Clone, Debug)]
pub struct InstanceAudit {
    pub instance: usize,
    /// The process runs (false between a crash and its restart).
    pub up: bool,
    pub shards: Vec<ShardAudit>,
}

impl InstanceAudit {
    /// Whether this instance acts (embedded, or leading under etcd).
    pub fn acting(&self) -> bool {
        self.up && self.shards.iter().any(|s| s.acting)
    }

    fn agent_names(&self) -> BTreeMap<AgentId, &str> {
        self.shards
            .iter()
            .flat_map(|s| s.home_agents.iter())
            .map(|a| (a.agent, a.name.as_str()))
            .collect()
    }
}

/// Everything a check reads.
pub struct View<'a> {
    pub instances: &'a [InstanceAudit],
    pub agents: &'a [SimAgent],
    pub ledger: &'a Ledger,
    pub etcd: Option<&'a Etcd>,
    /// The simulated clock (µs).
    pub now_us: u64,
    /// Crashes of the embedded scheduler so far (its state was recovered from its log).
    pub crashes: u64,
    /// Elections so far (HA: a new leader rebuilt its state from etcd, or the leader resumed
    /// after a pause).
    pub elections: u64,
}

/// How long (simulated) an admitted production create may take to land after the quota
/// check that admitted it, under etcd: a quota lowered meanwhile does not make it wrong. The
/// create is written to etcd first (slow etcd: seconds; a create waits behind its job's
/// write in flight). An embedded scheduler admits and creates in the same instant, within
/// one step, so there only the quota of the previous check counts.
pub const QUOTA_ADMISSION_WINDOW_US: u64 = 60_000_000;

/// What the quota check remembers of one role.
#[derive(Debug, Default)]
struct RoleMemory {
    /// The quota and use at the last check.
    quota: Resources,
    used: Resources,
    /// The highest use (per dimension) since the quota last changed.
    peak: Resources,
    /// The quotas and uses of recent checks (when each stopped being current, µs), newest
    /// last, kept for [`QUOTA_ADMISSION_WINDOW_US`].
    recent: VecDeque<(u64, Resources, Resources)>,
}

/// Quota traffic seen by the checker (for the seeds' summary).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaCounts {
    /// Production jobs that appeared holding quota.
    pub admitted: u64,
    /// Jobs whose quota use went down (instances killed or ended for good, jobs replaced).
    pub released: u64,
    /// Checks where a role's use was above its quota (lowered below the use).
    pub over_quota: u64,
}

/// The checker's memory between steps: the last state of every task it saw, per instance,
/// and per role the quotas and uses it saw.
#[derive(Debug, Default)]
pub struct Checker {
    last_states: BTreeMap<(usize, TaskId), TaskState>,
    roles: BTreeMap<String, RoleMemory>,
    /// What each production job held at the last check.
    job_use: BTreeMap<JobKey, Resources>,
    /// (crashes, elections) at the last quota check.
    lives: (u64, u64),
    pub quota_counts: QuotaCounts,
}

fn ensure(
    ok: bool,
    invariant: &'static str,
    detail: impl FnOnce() -> String,
) -> Result<(), Violation> {
    if ok {
        Ok(())
    } else {
        Err(Violation::new(invariant, detail()))
    }
}

/// Whether `to` can follow `from` through legal transitions (zero or more).
fn reachable(from: TaskState, to: TaskState) -> bool {
    let mut seen = 1u32 << from as u32;
    let mut frontier = vec![from];
    while let Some(s) = frontier.pop() {
        if s == to {
            return true;
        }
        for next in s.successors() {
            if seen & (1 << next as u32) == 0 {
                seen |= 1 << next as u32;
                frontier.push(next);
            }
        }
    }
    false
}

impl Checker {
    /// Every transition a shard recorded is an edge of the table.
    pub fn transitions(&self, shard: usize, transitions: &[Transition]) -> Result<(), Violation> {
        for t in transitions {
            ensure(t.from.can_transition_to(t.to), "transition_legal", || {
                format!("shard {shard}: task {} went {} -> {}", t.task, t.from, t.to)
            })?;
        }
        Ok(())
    }

    /// An instance restarted with nothing of its former shards' memory (HA reset): forget
    /// what was seen there.
    pub fn forget_instance(&mut self, instance: usize) {
        self.last_states.retain(|(i, _), _| *i != instance);
    }

    /// The invariants that hold after every step.
    pub fn step(&mut self, view: &View<'_>) -> Result<(), Violation> {
        for inst in view.instances.iter().filter(|i| i.up) {
            agent_not_overcommitted(inst)?;
            task_on_one_shard(inst)?;
            state_counts_agree(inst)?;
            instance_active_once(inst)?;
            self.terminal_is_final(inst)?;
        }
        ensure(
            view.instances.iter().filter(|i| i.acting()).count() <= 1,
            "single_leader",
            || "more than one scheduler instance acts".into(),
        )?;
        // Quotas: the acting instance, once every shard of it acts (under etcd the shards
        // take the lead one by one; half of them would show jobs without their quotas).
        if let Some(inst) = view
            .instances
            .iter()
            .find(|i| i.acting() && i.shards.iter().all(|s| s.acting))
        {
            let lives = (view.crashes, view.elections);
            let before = std::mem::replace(&mut self.lives, lives);
            let since = Restarted {
                crash: before.0 != lives.0,
                election: before.1 != lives.1,
            };
            let window_us = if view.etcd.is_some() {
                QUOTA_ADMISSION_WINDOW_US
            } else {
                0
            };
            self.quotas_never_exceeded(inst, view.now_us, window_us, since)?;
        }
        for inst in view.instances.iter().filter(|i| i.acting()) {
            updates_within_bounds(inst)?;
        }
        acked_facts(view)?;
        ended_instances_stay_ended(view)?;
        Ok(())
    }

    fn terminal_is_final(&mut self, inst: &InstanceAudit) -> Result<(), Violation> {
        let mut seen = BTreeSet::new();
        for shard in &inst.shards {
            for t in &shard.tasks {
                seen.insert(t.id);
                let key = (inst.instance, t.id);
                if let Some(&before) = self.last_states.get(&key) {
                    ensure(
                        before == t.state || reachable(before, t.state),
                        "terminal_is_final",
                        || {
                            format!(
                                "instance {} shard {}: task {} of {}/{} was {before}, is now {}{}",
                                inst.instance,
                                shard.shard,
                                t.id,
                                t.job,
                                t.instance,
                                t.state,
                                if before.is_terminal() {
                                    " (a terminal state was left)"
                                } else {
                                    " (not reachable)"
                                }
                            )
                        },
                    )?;
                }
                self.last_states.insert(key, t.state);
            }
        }
        self.last_states
            .retain(|(i, id), _| *i != inst.instance || seen.contains(id));
        Ok(())
    }
}

/// Per agent: what its tasks hold (on every shard) plus its free offer (wherever it is)
/// never exceeds its total.
fn agent_not_overcommitted(inst: &InstanceAudit) -> Result<(), Violation> {
    let (held, free) = holdings(inst);
    let mut homes = BTreeSet::new();
    for shard in &inst.shards {
        for a in &shard.home_agents {
            ensure(homes.insert(a.agent), "agent_not_overcommitted", || {
                format!("agent {} ({}) has two home shards", a.agent.0, a.name)
            })?;
            let h = held.get(&a.agent).copied().unwrap_or(Resources::ZERO);
            let f = free.get(&a.agent).copied().unwrap_or(Resources::ZERO);
            let used = h.plus(&f);
            ensure(a.total.contains(&used), "agent_not_overcommitted", || {
                format!(
                    "instance {} agent {} ({}) on shard {}: tasks hold {h:?} and its offer is {f:?} \
                     (lent: {}, adopting: {}, held: {:?}), together over its total {:?}",
                    inst.instance,
                    a.agent.0,
                    a.name,
                    shard.shard,
                    a.lent,
                    a.adopting,
                    a.held_free,
                    a.total
                )
            })?;
        }
    }
    Ok(())
}

/// What each agent's tasks hold, and each agent's free resources wherever they are.
fn holdings(inst: &InstanceAudit) -> (BTreeMap<AgentId, Resources>, BTreeMap<AgentId, Resources>) {
    let mut held: BTreeMap<AgentId, Resources> = BTreeMap::new();
    let mut free: BTreeMap<AgentId, Resources> = BTreeMap::new();
    for shard in &inst.shards {
        for t in shard.tasks.iter().filter(|t| t.holds) {
            if let Some(agent) = t.agent {
                let e = held.entry(agent).or_insert(Resources::ZERO);
                *e = e.plus(&t.resources);
            }
        }
        for a in &shard.home_agents {
            let e = free.entry(a.agent).or_insert(Resources::ZERO);
            *e = e
                .plus(&a.free_here.unwrap_or(Resources::ZERO))
                .plus(&a.held_free.unwrap_or(Resources::ZERO))
                .plus(&a.parked_free.unwrap_or(Resources::ZERO))
                .plus(&a.released_while_lent);
        }
        for (agent, f) in &shard.borrowed {
            let e = free.entry(*agent).or_insert(Resources::ZERO);
            *e = e.plus(f);
        }
    }
    (held, free)
}

/// Every task is on exactly one shard, the owner of its job, and its job agrees that it is
/// (or is not) the instance's current task.
fn task_on_one_shard(inst: &InstanceAudit) -> Result<(), Violation> {
    let n = inst.shards.len() as u64;
    let mut where_: BTreeMap<TaskId, usize> = BTreeMap::new();
    for shard in &inst.shards {
        let jobs: BTreeMap<&JobKey, &borealis_shards::shard::JobAudit> =
            shard.jobs.iter().map(|j| (&j.key, j)).collect();
        for j in &shard.jobs {
            let owner = (borealis_core::route_hash_str(&j.key.to_string()) % n) as usize;
            ensure(owner == shard.shard.0, "task_on_one_shard", || {
                format!(
                    "job {} is on shard {} but shard {owner} owns it",
                    j.key, shard.shard
                )
            })?;
        }
        let tasks: BTreeMap<TaskId, &borealis_shards::shard::TaskAudit> =
            shard.tasks.iter().map(|t| (t.id, t)).collect();
        for t in &shard.tasks {
            if let Some(other) = where_.insert(t.id, shard.shard.0) {
                return Err(Violation::new(
                    "task_on_one_shard",
                    format!("task {} is on shards {other} and {}", t.id, shard.shard),
                ));
            }
            let key = &t.job;
            let Some(job) = jobs.get(key) else {
                return Err(Violation::new(
                    "task_on_one_shard",
                    format!(
                        "task {} on shard {} belongs to no job there ({key})",
                        t.id, shard.shard
                    ),
                ));
            };
            let current = job.current.get(t.instance as usize) == Some(&Some(t.id));
            ensure(current == t.current, "task_on_one_shard", || {
                format!(
                    "task {} of {key}: audit says current={}, the job says {current}",
                    t.id, t.current
                )
            })?;
        }
        for j in &shard.jobs {
            for (i, slot) in j.current.iter().enumerate() {
                if let Some(id) = slot {
                    let ok = tasks
                        .get(id)
                        .is_some_and(|t| t.instance as usize == i && t.job == j.key);
                    ensure(ok, "task_on_one_shard", || {
                        format!(
                            "job {} instance {i}: its current task {id} is not on its shard",
                            j.key
                        )
                    })?;
                }
            }
        }
    }
    Ok(())
}

fn state_counts_agree(inst: &InstanceAudit) -> Result<(), Violation> {
    for shard in &inst.shards {
        let mut counts = [0u64; TaskState::COUNT];
        for t in &shard.tasks {
            counts[t.state as usize] += 1;
        }
        ensure(counts == shard.state_counts, "state_counts_agree", || {
            let diff: Vec<String> = TaskState::ALL
                .iter()
                .filter(|s| counts[**s as usize] != shard.state_counts[**s as usize])
                .map(|s| {
                    format!(
                        "{s}: {} tasks, gauge {}",
                        counts[*s as usize], shard.state_counts[*s as usize]
                    )
                })
                .collect();
            format!(
                "instance {} shard {}: {}",
                inst.instance,
                shard.shard,
                diff.join(", ")
            )
        })?;
    }
    Ok(())
}

/// At most one task per job instance is not terminal (pending or active) in the scheduler.
fn instance_active_once(inst: &InstanceAudit) -> Result<(), Violation> {
    let mut live: BTreeMap<(&JobKey, u32), TaskId> = BTreeMap::new();
    for shard in &inst.shards {
        for t in shard.tasks.iter().filter(|t| !t.state.is_terminal()) {
            if let Some(other) = live.insert((&t.job, t.instance), t.id) {
                return Err(Violation::new(
                    "instance_active_once",
                    format!(
                        "instance {}: {}/{} has two live tasks, {other} and {} ({})",
                        inst.instance, t.job, t.instance, t.id, t.state
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Every active update of the acting instance's jobs (on the shards that act) stays within
/// its bounds:
/// - `update_within_batch`: at most `batch_size` instances are taken and not settled
///   (`InstancePhase::InFlight`), so no more instances are down because of it;
/// - `update_moves_only_what_it_took`: each instance of its scope has the desired revision the
///   update's progress says (`InstanceProgress::desired`): one it has not taken keeps what it
///   had (forward: its `from`), one it took wants its target, and one it wants not running (an
///   instance it adds and has not taken yet, or one it removed) is retired.
pub fn updates_within_bounds(inst: &InstanceAudit) -> Result<(), Violation> {
    for shard in inst.shards.iter().filter(|s| s.acting) {
        for j in &shard.jobs {
            let Some(u) = j.update.as_ref().filter(|u| u.status.is_active()) else {
                continue;
            };
            let in_flight = u.in_flight();
            ensure(
                in_flight <= u.settings.batch_size as usize,
                "update_within_batch",
                || {
                    let taken: Vec<u32> = u
                        .instances
                        .iter()
                        .filter(|p| p.phase == borealis_core::update::InstancePhase::InFlight)
                        .map(|p| p.instance)
                        .collect();
                    format!(
                        "instance {}: update {} of {} ({}) has {in_flight} instances in flight                          {taken:?}, over its batch_size {}",
                        inst.instance, u.id, j.key, u.status, u.settings.batch_size
                    )
                },
            )?;
            for p in &u.instances {
                let i = p.instance as usize;
                let want = p.desired(u.status);
                let retired = j.retired.get(i).copied().unwrap_or(true);
                let has = if retired {
                    None
                } else {
                    j.desired_revs.get(i).copied()
                };
                let ok = match want {
                    None => retired,
                    Some(rev) => j.desired_revs.get(i) == Some(&rev),
                };
                ensure(ok, "update_moves_only_what_it_took", || {
                    format!(
                        "instance {}: update {} of {} ({}) wants {}/{} on revision {want:?}                          (phase {}, from {:?}, to {:?}, in rollback {}), the job desires                          {has:?} for it (head {}, retired {retired})",
                        inst.instance,
                        u.id,
                        j.key,
                        u.status,
                        j.key,
                        p.instance,
                        p.phase.as_str(),
                        p.from,
                        p.to,
                        p.in_rollback,
                        j.head_rev
                    )
                })?;
            }
        }
    }
    Ok(())
}

/// Every role's quota (gathered from the shards that own them) and what its production jobs
/// hold of it (summed over every shard's jobs), ports not metered.
pub fn quota_ledger(shards: &[ShardAudit]) -> BTreeMap<String, (Option<Resources>, Resources)> {
    let mut roles: BTreeMap<String, (Option<Resources>, Resources)> = BTreeMap::new();
    for shard in shards {
        for (role, quota) in &shard.quotas {
            let entry = &mut roles.entry(role.clone()).or_default().0;
            let q = Resources { ports: 0, ..*quota };
            *entry = Some(entry.map_or(q, |e| max_each(&e, &q)));
        }
        for job in &shard.jobs {
            let entry = &mut roles.entry(job.key.role.clone()).or_default().1;
            *entry = entry.plus(&Resources {
                ports: 0,
                ..job.quota_use
            });
        }
    }
    roles
}

fn max_each(a: &Resources, b: &Resources) -> Resources {
    Resources {
        cpu_millis: a.cpu_millis.max(b.cpu_millis),
        ram_mib: a.ram_mib.max(b.ram_mib),
        disk_mib: a.disk_mib.max(b.disk_mib),
        ports: a.ports.max(b.ports),
    }
}

/// What happened to the acting scheduler since the last quota check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restarted {
    /// It crashed and recovered its log.
    pub crash: bool,
    /// Leadership changed hands (or paused and resumed).
    pub election: bool,
}

impl Checker {
    /// Quotas are never exceeded: per role, what its production jobs hold (every shard's
    /// `JobAudit::quota_use`) stays within its quota (`ShardAudit::quotas`, on the role's quota
    /// owner); a role without a quota holds nothing.
    ///
    /// Aurora lets an operator lower a quota below the current use: then the use may stay
    /// above the quota, but must not grow while it is. Two things may still raise it, and are
    /// allowed: creates admitted before the quota changed, landing within `window_us`
    /// ([`QUOTA_ADMISSION_WINDOW_US`] under etcd; embedded: since the last check), up to the
    /// quotas in force in that window, and, when
    /// leadership changed since the last check (HA), use the role had before (an instance's
    /// retirement whose etcd write had not landed is undone; the agent's re-report retires
    /// it again) up to its peak under this quota. A crash of the embedded scheduler allows
    /// nothing: its log holds exactly what was acknowledged, and a check only ever sees
    /// committed rounds, so the recovered use is never above what the last checks saw.
    pub fn quotas_never_exceeded(
        &mut self,
        inst: &InstanceAudit,
        now_us: u64,
        window_us: u64,
        since: Restarted,
    ) -> Result<(), Violation> {
        let restarted = since.election;
        // Traffic counters (jobs appearing with quota use, jobs releasing some).
        let mut job_use: BTreeMap<JobKey, Resources> = BTreeMap::new();
        for job in inst.shards.iter().flat_map(|s| s.jobs.iter()) {
            if job.quota_use != Resources::ZERO {
                job_use.insert(job.key.clone(), job.quota_use);
            }
        }
        for (key, used) in &job_use {
            match self.job_use.get(key) {
                None => self.quota_counts.admitted += 1,
                Some(before) if !used.contains(before) => self.quota_counts.released += 1,
                Some(_) => {}
            }
        }
        self.quota_counts.released += self
            .job_use
            .keys()
            .filter(|k| !job_use.contains_key(*k))
            .count() as u64;
        self.job_use = job_use;

        let ledger = quota_ledger(&inst.shards);
        let horizon = now_us.saturating_sub(window_us);
        let roles: BTreeSet<String> = ledger.keys().chain(self.roles.keys()).cloned().collect();
        for role in roles {
            let (quota, used) = ledger.get(&role).copied().unwrap_or_default();
            let memory = self.roles.entry(role.clone()).or_default();
            let q = quota.unwrap_or(Resources::ZERO);
            // The last check's state stops being current now.
            if memory.quota != q || memory.used != used {
                memory.recent.push_back((now_us, memory.quota, memory.used));
            }
            while memory.recent.front().is_some_and(|e| e.0 < horizon) {
                memory.recent.pop_front();
            }
            if !q.contains(&used) {
                self.quota_counts.over_quota += 1;
                // Growing while above the quota: only by what the rules above allow.
                let mut allowed = memory.used;
                for (_, old_quota, old_used) in &memory.recent {
                    if *old_quota != q {
                        allowed = max_each(&allowed, old_quota);
                    }
                    if restarted {
                        allowed = max_each(&allowed, old_used);
                    }
                }
                if restarted {
                    allowed = max_each(&allowed, &memory.peak);
                }
                ensure(allowed.contains(&used), "quotas_never_exceeded", || {
                    let show = |r: &Resources| {
                        format!("cpu {} ram {} disk {}", r.cpu_millis, r.ram_mib, r.disk_mib)
                    };
                    format!(
                        "instance {}: role {role}'s production jobs hold {} against its quota \
                         {} ({}); at the last check they held {} under quota {}{}",
                        inst.instance,
                        show(&used),
                        show(&q),
                        if quota.is_some() {
                            "set"
                        } else {
                            "none set: it should hold nothing"
                        },
                        show(&memory.used),
                        show(&memory.quota),
                        match (since.crash, since.election) {
                            (true, _) => " (the scheduler restarted from its log since)",
                            (_, true) => " (leadership changed since)",
                            _ => "",
                        }
                    )
                })?;
            }
            memory.peak = if q != memory.quota {
                used
            } else {
                max_each(&memory.peak, &used)
            };
            memory.quota = q;
            memory.used = used;
        }
        Ok(())
    }
}

/// What was acknowledged stays: created jobs exist, killed instances stay killed, ends
/// acknowledged to agents stay ends.
fn acked_facts(view: &View<'_>) -> Result<(), Violation> {
    let ledger = view.ledger;
    for inst in view.instances.iter().filter(|i| i.acting()) {
        let jobs: BTreeMap<String, &borealis_shards::shard::JobAudit> = inst
            .shards
            .iter()
            .flat_map(|s| s.jobs.iter())
            .map(|j| (j.key.to_string(), j))
            .collect();
        let tasks: BTreeMap<TaskId, &borealis_shards::shard::TaskAudit> = inst
            .shards
            .iter()
            .flat_map(|s| s.tasks.iter())
            .map(|t| (t.id, t))
            .collect();
        for key in ledger.acked_creates.iter().filter(|k| ledger.tracks(k)) {
            ensure(jobs.contains_key(key), "acked_create_exists", || {
                format!(
                    "instance {}: job {key} was acknowledged created but is gone",
                    inst.instance
                )
            })?;
        }
        for key in ledger.refused_creates.iter().filter(|k| ledger.tracks(k)) {
            ensure(!jobs.contains_key(key), "refused_create_absent", || {
                format!(
                    "instance {}: job {key} was refused for quota, yet it exists",
                    inst.instance
                )
            })?;
        }
        for (key, job) in &jobs {
            if !ledger.tracks(key) {
                continue;
            }
            for i in ledger.killed_instances(key, job.instances) {
                if let Some(Some(id)) = job.current.get(i as usize) {
                    let state = tasks.get(id).map(|t| t.state);
                    ensure(
                        matches!(state, Some(TaskState::Killing | TaskState::Killed)),
                        "acked_kill_stays_killed",
                        || {
                            format!(
                            "instance {}: {key}/{i} was acknowledged killed, its current task {id} is {state:?}",
                            inst.instance
                        )
                        },
                    )?;
                }
            }
        }
    }
    for inst in view.instances.iter().filter(|i| i.up) {
        for shard in &inst.shards {
            for t in &shard.tasks {
                if let Some((acked, _, _)) = ledger.acked_terminals.get(&t.id) {
                    ensure(t.state.is_terminal(), "acked_terminal_is_terminal", || {
                        format!(
                            "instance {} shard {}: task {} of {}/{} was acknowledged {acked} to its agent, is {}",
                            inst.instance, shard.shard, t.id, t.job, t.instance, t.state
                        )
                    })?;
                }
            }
        }
    }
    if let Some(etcd) = view.etcd {
        for key in ledger.acked_creates.iter().filter(|k| ledger.tracks(k)) {
            let Some(desired) = etcd.desired.get(key) else {
                return Err(Violation::new(
                    "acked_create_exists",
                    format!("job {key} was acknowledged created but etcd's desired state lacks it"),
                ));
            };
            let killed = ledger.killed_instances(key, desired.instances);
            if let Some(i) = killed.iter().find(|i| !desired.retired.contains(i)) {
                return Err(Violation::new(
                    "acked_kill_stays_killed",
                    format!("{key}/{i} was acknowledged killed but etcd's desired state does not retire it"),
                ));
            }
        }
    }
    Ok(())
}

/// The instances the scheduler shows ended for good after an acknowledged end, not noted
/// yet: no current task, and the instance's newest task ended with a status acked to its
/// agent (or a kill acked to a client); not those an update sent or under way may start
/// again (an update adds back instances that ended).
pub fn newly_ended_instances(instances: &[InstanceAudit], ledger: &Ledger) -> Vec<(String, u32)> {
    let mut ended = Vec::new();
    for inst in instances.iter().filter(|i| i.acting()) {
        for shard in &inst.shards {
            let mut newest: BTreeMap<(&JobKey, u32), &borealis_shards::shard::TaskAudit> =
                BTreeMap::new();
            for t in &shard.tasks {
                let e = newest.entry((&t.job, t.instance)).or_insert(t);
                if t.id > e.id {
                    *e = t;
                }
            }
            for j in &shard.jobs {
                let key = j.key.to_string();
                if !ledger.tracks(&key) {
                    continue;
                }
                let update = j.update.as_ref().filter(|u| u.status.is_active());
                let reviving = ledger.reviving.get(&key).map(|(_, set)| set);
                for (i, slot) in j.current.iter().enumerate() {
                    let i = i as u32;
                    if slot.is_some() || ledger.ended_instances.contains(&(key.clone(), i)) {
                        continue;
                    }
                    // An update sent, or one under way, may start it again.
                    let may_return = reviving.is_some_and(|set| set.contains(&i))
                        || update
                            .and_then(|u| u.progress(i))
                            .is_some_and(|p| p.to.is_some());
                    if may_return {
                        continue;
                    }
                    let Some(t) = newest.get(&(&j.key, i)) else {
                        continue;
                    };
                    let acked = ledger
                        .acked_terminals
                        .get(&t.id)
                        .is_some_and(|(s, _, _)| *s == t.state)
                        || ledger.killed_instances(&key, j.instances).contains(&i);
                    if t.state.is_terminal() && acked {
                        ended.push((key.clone(), i));
                    }
                }
            }
        }
    }
    ended
}

fn ended_instances_stay_ended(view: &View<'_>) -> Result<(), Violation> {
    let ledger = view.ledger;
    if ledger.ended_instances.is_empty() {
        return Ok(());
    }
    // The ended instances by job key (few), so that tasks are not turned into strings.
    let mut ended: BTreeMap<JobKey, BTreeSet<u32>> = BTreeMap::new();
    for (key, i) in &ledger.ended_instances {
        if let Ok(k) = key.parse::<JobKey>() {
            ended.entry(k).or_default().insert(*i);
        }
    }
    for inst in view.instances.iter().filter(|i| i.acting()) {
        for shard in &inst.shards {
            for t in shard.tasks.iter().filter(|t| !t.state.is_terminal()) {
                if !ended
                    .get(&t.job)
                    .is_some_and(|set| set.contains(&t.instance))
                {
                    continue;
                }
                let key = t.job.to_string();
                if ledger.tracks(&key) {
                    return Err(Violation::new(
                        "ended_instance_stays_ended",
                        format!(
                            "instance {}: {key}/{} ended for good (acknowledged), yet task {} is {}",
                            inst.instance, t.instance, t.id, t.state
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The invariants of a quiet cluster: nothing in flight, every agent connected and
/// registered with the leader, the reconciliation grace over.
pub fn quiet(view: &View<'_>) -> Result<(), Violation> {
    let ledger = view.ledger;
    for inst in view.instances.iter().filter(|i| i.up && !i.acting()) {
        let held: usize = inst
            .shards
            .iter()
            .map(|s| s.tasks.len() + s.jobs.len())
            .sum();
        ensure(held == 0, "follower_holds_nothing", || {
            format!(
                "instance {} follows but holds {held} jobs and tasks",
                inst.instance
            )
        })?;
    }
    let Some(leader) = view.instances.iter().find(|i| i.acting()) else {
        return Err(Violation::new(
            "quiescence_reached",
            "no scheduler instance acts",
        ));
    };
    let (held, _) = holdings(leader);
    for shard in &leader.shards {
        for a in &shard.home_agents {
            let h = held.get(&a.agent).copied().unwrap_or(Resources::ZERO);
            // In placement, or parked while its host is under maintenance: exact either way.
            let free = a.free_here.or(a.parked_free);
            let exact = !a.lent && !a.adopting && free.is_some_and(|f| f.plus(&h) == a.total);
            ensure(exact, "agent_accounting_exact_when_quiet", || {
                format!(
                    "agent {} ({}) on shard {}: tasks hold {h:?}, offer {:?} (lent: {}, adopting: {}, \
                     released while lent {:?}); total {:?}",
                    a.agent.0, a.name, shard.shard, a.free_here, a.lent, a.adopting,
                    a.released_while_lent, a.total
                )
            })?;
        }
        for t in &shard.tasks {
            ensure(t.state != TaskState::Killing, "kill_completes", || {
                format!(
                    "task {} of {}/{} is still KILLING in a quiet cluster: its agent was never told to kill it",
                    t.id, t.job, t.instance
                )
            })?;
        }
    }
    let names = leader.agent_names();
    let sched: BTreeMap<TaskId, &borealis_shards::shard::TaskAudit> = leader
        .shards
        .iter()
        .flat_map(|s| s.tasks.iter())
        .map(|t| (t.id, t))
        .collect();
    let mut running: BTreeMap<(String, u32), (&str, TaskId)> = BTreeMap::new();
    for agent in view.agents.iter().filter(|a| a.alive) {
        let mut used = Resources::ZERO;
        for (id, t) in agent.live_tasks() {
            used = used.plus(&t.resources);
            if let Some((other, other_id)) =
                running.insert((t.job_key.clone(), t.instance), (&agent.spec.name, *id))
            {
                return Err(Violation::new(
                    "instance_runs_once_on_agents",
                    format!(
                        "{}/{} runs on {other} (task {other_id}) and on {} (task {id})",
                        t.job_key, t.instance, agent.spec.name
                    ),
                ));
            }
            let known = sched.get(id).is_some_and(|s| {
                s.state.is_active()
                    && s.agent.and_then(|a| names.get(&a).copied())
                        == Some(agent.spec.name.as_str())
            });
            ensure(known, "agents_agree_with_scheduler", || {
                format!(
                    "{} runs task {id} of {}/{} ({}), the scheduler has it as {:?}",
                    agent.spec.name,
                    t.job_key,
                    t.instance,
                    t.state,
                    sched
                        .get(id)
                        .map(|s| (s.state, s.agent.and_then(|a| names.get(&a).copied())))
                )
            })?;
            let key = t.job_key.clone();
            if ledger.tracks(&key) {
                let killed = ledger
                    .acked_kills
                    .get(&key)
                    .is_some_and(|k| k.contains(&t.instance) || k.contains(&u32::MAX));
                ensure(!killed, "acked_kill_stays_killed", || {
                    format!(
                        "{key}/{} was acknowledged killed, {} runs it (task {id})",
                        t.instance, agent.spec.name
                    )
                })?;
                ensure(
                    !ledger.ended_instances.contains(&(key.clone(), t.instance)),
                    "ended_instance_stays_ended",
                    || {
                        format!(
                            "{key}/{} ended for good, {} runs it again (task {id})",
                            t.instance, agent.spec.name
                        )
                    },
                )?;
            }
        }
        ensure(
            agent.spec.resources.contains(&used),
            "agent_not_overcommitted",
            || {
                format!(
                    "{} runs tasks using {used:?}, over its resources {:?}",
                    agent.spec.name, agent.spec.resources
                )
            },
        )?;
        if agent.is_registered() {
            if let Some((id, t)) = agent.tasks.iter().find(|(_, t)| !t.is_live() && !t.acked) {
                return Err(Violation::new(
                    "terminal_statuses_acked",
                    format!(
                        "{} still waits for the ack of task {id}'s {} in a quiet cluster",
                        agent.spec.name, t.state
                    ),
                ));
            }
        }
    }
    for t in sched.values().filter(|t| t.state.is_active()) {
        let Some(name) = t.agent.and_then(|a| names.get(&a).copied()) else {
            return Err(Violation::new(
                "agents_agree_with_scheduler",
                format!(
                    "task {} of {}/{} is {} on no connected agent",
                    t.id, t.job, t.instance, t.state
                ),
            ));
        };
        let runs = view
            .agents
            .iter()
            .any(|a| a.spec.name == name && a.tasks.get(&t.id).is_some_and(|x| x.is_live()));
        ensure(runs, "agents_agree_with_scheduler", || {
            format!(
                "the scheduler has task {} of {}/{} {} on {name}, which does not run it",
                t.id, t.job, t.instance, t.state
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use borealis_shards::shard::JobAudit;

    fn cpu(cpu_millis: u32) -> Resources {
        Resources {
            cpu_millis,
            ..Resources::ZERO
        }
    }

    /// One acting instance of two shards: `quota` of role `www` on shard 0 (None: unset),
    /// and jobs of `www` holding `uses` spread over both shards.
    fn instance(quota: Option<u32>, uses: &[u32]) -> InstanceAudit {
        let mut shards = vec![
            ShardAudit {
                shard: borealis_shards::msg::ShardId(0),
                acting: true,
                ..ShardAudit::default()
            },
            ShardAudit {
                shard: borealis_shards::msg::ShardId(1),
                acting: true,
                ..ShardAudit::default()
            },
        ];
        if let Some(q) = quota {
            shards[0].quotas.push(("www".into(), cpu(q)));
        }
        for (i, used) in uses.iter().enumerate() {
            shards[i % 2].jobs.push(JobAudit {
                key: format!("www/prod/j{i}").parse().unwrap(),
                instances: 1,
                current: vec![None],
                resources: cpu(*used),
                production: true,
                retired: vec![false],
                quota_use: cpu(*used),
                sla_policy: None,
                head_rev: 0,
                desired_revs: vec![0],
                revisions: [(0, "sim run".to_string())].into_iter().collect(),
                update: None,
                named_revs: Default::default(),
                cron_next_run_unix_ms: None,
            });
        }
        InstanceAudit {
            instance: 0,
            up: true,
            shards,
        }
    }

    fn check(
        checker: &mut Checker,
        at_s: u64,
        quota: Option<u32>,
        uses: &[u32],
        window_s: u64,
        since: Restarted,
    ) -> Result<(), &'static str> {
        checker
            .quotas_never_exceeded(
                &instance(quota, uses),
                at_s * 1_000_000,
                window_s * 1_000_000,
                since,
            )
            .map_err(|v| v.invariant)
    }

    const CALM: Restarted = Restarted {
        crash: false,
        election: false,
    };

    #[test]
    fn use_summed_over_shards_stays_within_the_quota() {
        let mut c = Checker::default();
        assert_eq!(check(&mut c, 1, Some(1000), &[400, 600], 0, CALM), Ok(()));
        assert_eq!(
            check(&mut c, 2, Some(1000), &[400, 600, 1], 0, CALM),
            Err("quotas_never_exceeded")
        );
    }

    #[test]
    fn a_role_without_a_quota_holds_nothing() {
        let mut c = Checker::default();
        assert_eq!(check(&mut c, 1, None, &[], 0, CALM), Ok(()));
        assert_eq!(
            check(&mut c, 2, None, &[100], 0, CALM),
            Err("quotas_never_exceeded")
        );
    }

    #[test]
    fn a_lowered_quota_lets_use_stay_but_not_grow() {
        let mut c = Checker::default();
        assert_eq!(check(&mut c, 1, Some(2000), &[1000, 500], 0, CALM), Ok(()));
        // Lowered below the use: it stays, and may shrink.
        assert_eq!(check(&mut c, 2, Some(500), &[1000, 500], 0, CALM), Ok(()));
        assert_eq!(check(&mut c, 3, Some(500), &[1000], 0, CALM), Ok(()));
        // Growing back while above: refused work was admitted.
        assert_eq!(
            check(&mut c, 4, Some(500), &[1000, 100], 0, CALM),
            Err("quotas_never_exceeded")
        );
    }

    #[test]
    fn a_create_admitted_before_the_quota_was_lowered_may_land_after() {
        // Embedded: within the step that lowered the quota.
        let mut c = Checker::default();
        assert_eq!(check(&mut c, 1, Some(2000), &[1000], 0, CALM), Ok(()));
        assert_eq!(check(&mut c, 1, Some(500), &[1000, 800], 0, CALM), Ok(()));
        assert_eq!(
            check(&mut c, 2, Some(500), &[1000, 800, 1], 0, CALM),
            Err("quotas_never_exceeded")
        );
        // Never beyond the quota it was admitted under.
        let mut c = Checker::default();
        assert_eq!(check(&mut c, 1, Some(2000), &[1000], 0, CALM), Ok(()));
        assert_eq!(
            check(&mut c, 1, Some(500), &[1000, 1200], 0, CALM),
            Err("quotas_never_exceeded")
        );
        // Under etcd: within the admission window, not after it.
        let mut c = Checker::default();
        assert_eq!(check(&mut c, 1, Some(2000), &[1000], 60, CALM), Ok(()));
        assert_eq!(check(&mut c, 2, Some(500), &[1000], 60, CALM), Ok(()));
        assert_eq!(check(&mut c, 10, Some(500), &[1000, 800], 60, CALM), Ok(()));
        assert_eq!(
            check(&mut c, 100, Some(500), &[1000, 800, 100], 60, CALM),
            Err("quotas_never_exceeded")
        );
    }

    #[test]
    fn a_new_leader_may_bring_back_use_it_had_not_a_crash() {
        let election = Restarted {
            crash: false,
            election: true,
        };
        let crash = Restarted {
            crash: true,
            election: false,
        };
        for (since, expected) in [(election, Ok(())), (crash, Err("quotas_never_exceeded"))] {
            let mut c = Checker::default();
            assert_eq!(check(&mut c, 1, Some(2000), &[1000, 500], 0, CALM), Ok(()));
            assert_eq!(check(&mut c, 2, Some(500), &[1000, 500], 0, CALM), Ok(()));
            // An instance ended for good: its retirement...
            assert_eq!(check(&mut c, 3, Some(500), &[1000], 0, CALM), Ok(()));
            // ... undone by the state rebuilt after a restart.
            assert_eq!(
                check(&mut c, 4, Some(500), &[1000, 500], 0, since),
                expected
            );
        }
    }

    /// One acting shard with a 4-instance job on revision 1 updating to revision 2 (batch 2),
    /// whose instances 0 and 1 the update took: the job desires revision 2 for them.
    fn updating() -> InstanceAudit {
        use borealis_core::update::{InstancePhase, JobUpdate, UpdateSettings};
        let settings = UpdateSettings {
            batch_size: 2,
            ..UpdateSettings::default()
        };
        let scope = (0..4).map(|i| (i, Some(1)));
        let mut u = JobUpdate::new(
            1,
            "www/prod/j".into(),
            settings,
            4,
            4,
            2,
            scope,
            0,
            "".into(),
        );
        u.instances[0].phase = InstancePhase::InFlight;
        u.instances[1].phase = InstancePhase::InFlight;
        let mut inst = instance(None, &[]);
        inst.shards[0].jobs.push(JobAudit {
            key: "www/prod/j".parse().unwrap(),
            instances: 4,
            current: vec![None; 4],
            resources: cpu(100),
            production: false,
            retired: vec![false; 4],
            quota_use: Resources::ZERO,
            sla_policy: None,
            head_rev: 1,
            desired_revs: vec![2, 2, 1, 1],
            revisions: [(1, "sim run".to_string()), (2, "sim run v2".to_string())]
                .into_iter()
                .collect(),
            update: Some(u),
            named_revs: [1, 2].into_iter().collect(),
            cron_next_run_unix_ms: None,
        });
        inst
    }

    fn update_check(inst: &InstanceAudit) -> Result<(), &'static str> {
        updates_within_bounds(inst).map_err(|v| v.invariant)
    }

    #[test]
    fn an_update_within_its_batch_passes() {
        assert_eq!(update_check(&updating()), Ok(()));
    }

    #[test]
    fn an_update_past_its_batch_is_caught() {
        use borealis_core::update::InstancePhase;
        let mut inst = updating();
        let job = &mut inst.shards[0].jobs[0];
        job.update.as_mut().unwrap().instances[2].phase = InstancePhase::InFlight;
        job.desired_revs[2] = 2;
        assert_eq!(update_check(&inst), Err("update_within_batch"));
        // A finished update is not held to it.
        let job = &mut inst.shards[0].jobs[0];
        job.update.as_mut().unwrap().status = borealis_core::update::UpdateStatus::Aborted;
        assert_eq!(update_check(&inst), Ok(()));
    }

    #[test]
    fn an_update_moving_an_instance_it_has_not_taken_is_caught() {
        let mut inst = updating();
        inst.shards[0].jobs[0].desired_revs[3] = 2;
        assert_eq!(update_check(&inst), Err("update_moves_only_what_it_took"));
        // Nor may an instance it took stay behind.
        let mut inst = updating();
        inst.shards[0].jobs[0].desired_revs[0] = 1;
        assert_eq!(update_check(&inst), Err("update_moves_only_what_it_took"));
    }

    #[test]
    fn an_instance_the_update_removes_must_be_retired() {
        use borealis_core::update::InstancePhase;
        let mut inst = updating();
        let job = &mut inst.shards[0].jobs[0];
        let u = job.update.as_mut().unwrap();
        u.instances[3].to = None; // 4 -> 3 instances
        u.instances[3].phase = InstancePhase::Waiting;
        assert_eq!(
            update_check(&inst),
            Ok(()),
            "not taken yet: it keeps revision 1"
        );
        let job = &mut inst.shards[0].jobs[0];
        job.update.as_mut().unwrap().instances[1].phase = InstancePhase::Succeeded;
        job.update.as_mut().unwrap().instances[3].phase = InstancePhase::InFlight;
        assert_eq!(update_check(&inst), Err("update_moves_only_what_it_took"));
        inst.shards[0].jobs[0].retired[3] = true;
        assert_eq!(update_check(&inst), Ok(()));
    }

    #[test]
    fn reachability_follows_the_table() {
        assert!(reachable(TaskState::Pending, TaskState::Running));
        assert!(reachable(TaskState::Running, TaskState::Killed));
        assert!(!reachable(TaskState::Running, TaskState::Pending));
        assert!(!reachable(TaskState::Finished, TaskState::Running));
    }
}
