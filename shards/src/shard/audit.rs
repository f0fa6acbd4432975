//! A read-only view of a shard's state for the deterministic simulation's invariant checks,
//! and the log of every transition the shard made (recorded only when asked for).
//!
//! Nothing here changes the shard; the runtime never calls it.

use super::*;

/// One task as the shard holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskAudit {
    pub id: TaskId,
    pub job: JobKey,
    pub instance: u32,
    pub state: TaskState,
    pub agent: Option<AgentId>,
    /// Whether the task's resources are counted as used on `agent`.
    pub holds: bool,
    pub resources: Resources,
    pub production: bool,
    /// The current task of its instance (not history).
    pub current: bool,
    /// When it became RUNNING (shard µs), while it is RUNNING.
    pub running_since_us: Option<u64>,
    /// The host it is (or was last) on.
    pub hostname: Option<String>,
    /// The job's configuration revision it runs, and that revision's command.
    pub rev: Rev,
    pub command: String,
}

/// An agent whose connection this shard holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentAudit {
    pub agent: AgentId,
    pub name: String,
    pub total: Resources,
    /// Free resources as this shard's placement index holds them, when the offer is here.
    pub free_here: Option<Resources>,
    /// The offer is lent to another shard.
    pub lent: bool,
    /// Adopted tasks are still being confirmed: no offer yet.
    pub adopting: bool,
    /// Resources released while the offer was lent (added back on its return).
    pub released_while_lent: Resources,
    /// Held for a preemptor (out of placement): what is free of it so far.
    pub held_free: Option<Resources>,
    /// Out of placement while its host is under maintenance: what is free of it.
    pub parked_free: Option<Resources>,
}

/// A job as the shard holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobAudit {
    pub key: JobKey,
    pub instances: u32,
    pub current: Vec<Option<TaskId>>,
    pub resources: Resources,
    pub production: bool,
    /// Instances that must not run again.
    pub retired: Vec<bool>,
    /// What the job holds against its role's quota (zero when it does not count).
    pub quota_use: Resources,
    /// Its SLA policy as declared.
    pub sla_policy: Option<borealis_core::SlaPolicy>,
    /// Its head revision, each instance's desired revision, and every revision it keeps with
    /// that revision's command.
    pub head_rev: Rev,
    pub desired_revs: Vec<Rev>,
    pub revisions: BTreeMap<Rev, String>,
    /// Its latest update (active or finished).
    pub update: Option<borealis_core::update::JobUpdate>,
    /// The revisions its kept updates name (from, to).
    pub named_revs: std::collections::BTreeSet<Rev>,
    /// A cron job's next trigger (unix ms).
    pub cron_next_run_unix_ms: Option<u64>,
}

/// Everything a shard holds that an invariant can be stated over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardAudit {
    pub shard: ShardId,
    pub acting: bool,
    pub tasks: Vec<TaskAudit>,
    pub jobs: Vec<JobAudit>,
    pub home_agents: Vec<AgentAudit>,
    /// Offers in this shard's index that belong to other shards' agents (borrowed).
    pub borrowed: Vec<(AgentId, Resources)>,
    /// The per-state counts the shard keeps for its gauge.
    pub state_counts: [u64; TaskState::COUNT],
    /// The quotas of the roles this shard owns (as the quota owner), by role.
    pub quotas: Vec<(String, Resources)>,
    /// Preemption: (victim, preemptor) of every task this shard preempted.
    pub preempted: Vec<(TaskId, TaskId)>,
    /// Every host not in NONE, as this shard's copy has it: (host, mode, active tasks).
    pub hosts: Vec<(String, borealis_core::HostMode, u32)>,
}

/// A transition the shard made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub task: TaskId,
    pub from: TaskState,
    pub to: TaskState,
}

impl Shard {
    /// The shard's state, sorted by id so that equal states compare equal.
    pub fn audit(&self) -> ShardAudit {
        let mut tasks: Vec<TaskAudit> = self
            .tasks
            .values()
            .map(|t| {
                let job = &self.jobs[t.job];
                TaskAudit {
                    id: t.id,
                    job: job.key.clone(),
                    instance: t.instance,
                    state: t.state,
                    agent: t.agent,
                    holds: t.holds,
                    resources: job.config_of(t.rev).resources,
                    production: job.config.production,
                    current: job.current.get(t.instance as usize) == Some(&Some(t.id)),
                    running_since_us: t.running_since_us.filter(|_| t.state == TaskState::Running),
                    hostname: t.host.as_ref().map(|h| h.hostname.to_string()),
                    rev: t.rev,
                    command: job.config_of(t.rev).command.clone(),
                }
            })
            .collect();
        tasks.sort_by_key(|t| t.id);
        let mut jobs: Vec<JobAudit> = self
            .job_index
            .values()
            .map(|&idx| {
                let j = &self.jobs[idx];
                JobAudit {
                    key: j.key.clone(),
                    instances: j.current.len() as u32,
                    current: j.current.clone(),
                    resources: j.config.resources,
                    production: j.config.production,
                    retired: j.retired.clone(),
                    quota_use: self.job_quota_use(idx),
                    sla_policy: j.config.sla_policy.clone(),
                    head_rev: j.head_rev,
                    desired_revs: (0..j.current.len() as u32)
                        .map(|i| j.desired_rev(i))
                        .collect(),
                    revisions: std::iter::once((j.head_rev, j.config.command.clone()))
                        .chain(j.others.iter().map(|(&r, v)| (r, v.config.command.clone())))
                        .collect(),
                    update: j.updates.last().cloned(),
                    named_revs: j
                        .updates
                        .iter()
                        .flat_map(|u| {
                            u.instances
                                .iter()
                                .flat_map(|p| [p.from, p.to])
                                .chain([Some(u.to_rev)])
                        })
                        .flatten()
                        .collect(),
                    cron_next_run_unix_ms: j.cron.as_ref().and_then(|c| c.next_run_unix_ms),
                }
            })
            .collect();
        jobs.sort_by(|a, b| a.key.cmp(&b.key));
        let mut home_agents: Vec<AgentAudit> = self
            .home_agents
            .iter()
            .map(|(id, a)| AgentAudit {
                agent: *id,
                name: a.name.to_string(),
                total: a.total,
                free_here: matches!(a.offer, OfferWhere::Home)
                    .then(|| self.index.free(*id))
                    .flatten(),
                lent: matches!(a.offer, OfferWhere::Lent),
                adopting: matches!(a.offer, OfferWhere::Adopting { .. }),
                released_while_lent: a.released_while_lent,
                held_free: match a.offer {
                    OfferWhere::Held { free, .. } => Some(free),
                    _ => None,
                },
                parked_free: match a.offer {
                    OfferWhere::Parked { free } => Some(free),
                    _ => None,
                },
            })
            .collect();
        home_agents.sort_by_key(|a| a.agent);
        let mut borrowed: Vec<(AgentId, Resources)> = self
            .borrowed
            .iter()
            .filter_map(|id| self.index.free(*id).map(|free| (*id, free)))
            .collect();
        borrowed.sort_by_key(|(id, _)| *id);
        ShardAudit {
            shard: self.id,
            acting: self.acting(),
            tasks,
            jobs,
            home_agents,
            borrowed,
            state_counts: self.state_counts,
            quotas: self
                .quota_book
                .iter()
                .filter_map(|(role, book)| book.quota.map(|q| (role.clone(), q)))
                .collect(),
            preempted: {
                let mut preempted: Vec<(TaskId, TaskId)> = self
                    .tasks
                    .values()
                    .filter_map(|t| t.preempted_by.map(|p| (t.id, p)))
                    .collect();
                preempted.sort_unstable();
                preempted
            },
            hosts: self
                .hosts
                .iter()
                .map(|(h, s)| (h.to_string(), s.mode, s.active))
                .collect(),
        }
    }

    /// Starts recording every transition (for the simulation's legality check).
    pub fn record_transitions(&mut self) {
        self.transition_log = Some(Vec::new());
    }

    /// The transitions made since the last call.
    pub fn take_transitions(&mut self) -> Vec<Transition> {
        self.transition_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Whether the round's work is all done: nothing pending to place and nothing queued for
    /// a peer or a connection (the simulation's quiescence test).
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && self.outbox.iter().all(Vec::is_empty)
            && self.pending_acks.is_empty()
            && self.conns.values().all(|c| c.writer.is_empty())
    }
}

/// Bugs the simulation injects to prove its invariants catch them (never in a real build).
#[cfg(feature = "sim")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedBug {
    /// Placement forgets to charge the agent: agents get over-committed.
    ForgetToChargeAgent,
}

#[cfg(feature = "sim")]
impl Shard {
    /// Turns an injected bug on (the simulation's self-test).
    pub fn inject_bug(&mut self, bug: InjectedBug) {
        self.injected_bug = Some(bug);
    }
}
