//! Why a task is pending: for every agent in the index, the first filter that refuses it.
//!
//! Placement answers only "where?", and `None` says nothing a user can act on. This module
//! answers "why not?" the way Aurora's scheduler page does (`insufficient ram on 812 agents;
//! limit rack:2 reached on 40 agents`), so `job status` can say whether to shrink the task, relax
//! a constraint or wait.
//!
//! [`PlacementIndex::explain`] visits every agent the index holds exactly once (O(agents x
//! constraints), no allocation per agent); it is for the occasional status query, not for the
//! placement hot path. Each shard explains against its own offers; shards own disjoint offers, so
//! their [`PendingReasons`] add up with [`merge`](PendingReasons::merge). Reasons that are not
//! about agents (quota, throttling, preemption) come from the caller through
//! [`with`](PendingReasons::with).

use std::cmp::Reverse;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::filters::{AttributeLookup, CompiledTask, JobSpread, DEDICATED_ATTR};
use super::index::{ColumnView, PlacementIndex, POOL_NONE};

/// A resource dimension an agent may be short of, in the order they are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceKind {
    /// Free cpu.
    Cpu,
    /// Free ram.
    Ram,
    /// Free disk.
    Disk,
    /// Free ports.
    Ports,
}

impl ResourceKind {
    /// The dimension's name in reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Cpu => "cpu",
            ResourceKind::Ram => "ram",
            ResourceKind::Disk => "disk",
            ResourceKind::Ports => "ports",
        }
    }
}

/// Why one agent cannot take the task: the first filter that refused it, checked in the order
/// of the variants.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// The agent is dedicated, and not to a value the job names (`not dedicated for role`).
    NotDedicated,
    /// The agent fails the job's value constraint on `attribute`, or lacks the attribute a
    /// limit constraint counts by (`constraint ATTR unmet`).
    ConstraintUnmet {
        /// The constraint's attribute.
        attribute: String,
    },
    /// The job already has `limit` active tasks on the agent's value of `attribute`
    /// (`limit ATTR:N reached`).
    LimitReached {
        /// The limit's attribute.
        attribute: String,
        /// The limit.
        limit: u32,
    },
    /// The agent's free resources are short in this dimension (the first short one in cpu,
    /// ram, disk, ports order): `insufficient ram`.
    Insufficient(ResourceKind),
}

impl Reason {
    /// The coarse kind, for a metric label.
    pub fn kind(&self) -> PendingReasonKind {
        match self {
            Reason::NotDedicated => PendingReasonKind::Dedicated,
            Reason::ConstraintUnmet { .. } => PendingReasonKind::Constraint,
            Reason::LimitReached { .. } => PendingReasonKind::Limit,
            Reason::Insufficient(_) => PendingReasonKind::Resources,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotDedicated => f.write_str("not dedicated for role"),
            Reason::ConstraintUnmet { attribute } => write!(f, "constraint {attribute} unmet"),
            Reason::LimitReached { attribute, limit } => {
                write!(f, "limit {attribute}:{limit} reached")
            }
            Reason::Insufficient(kind) => write!(f, "insufficient {}", kind.as_str()),
        }
    }
}

/// A reason a task is pending that is about the task, not about any agent; the caller adds it
/// with [`PendingReasons::with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskReason {
    /// Its role's production quota would be exceeded.
    QuotaExceeded,
    /// It is THROTTLED (flapping) or serving a scheduling penalty.
    Throttled,
    /// It has found victims and waits for them to die.
    WaitingForPreemption,
}

impl TaskReason {
    /// The coarse kind, for a metric label.
    pub fn kind(self) -> PendingReasonKind {
        match self {
            TaskReason::QuotaExceeded => PendingReasonKind::Quota,
            TaskReason::Throttled => PendingReasonKind::Throttled,
            TaskReason::WaitingForPreemption => PendingReasonKind::Preemption,
        }
    }
}

impl fmt::Display for TaskReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskReason::QuotaExceeded => "quota exceeded",
            TaskReason::Throttled => "throttled",
            TaskReason::WaitingForPreemption => "waiting for preemption slot",
        })
    }
}

/// The coarse reason a task is pending, one label value per variant, so a metric of pending
/// tasks by reason has a small fixed set of series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PendingReasonKind {
    /// Agents are short of cpu, ram, disk or ports.
    Resources,
    /// Agents fail a value constraint.
    Constraint,
    /// Agents have reached a limit constraint.
    Limit,
    /// Agents are dedicated to other work.
    Dedicated,
    /// The role is out of quota.
    Quota,
    /// The task is throttled.
    Throttled,
    /// The task waits for preemption.
    Preemption,
    /// There are no agents at all.
    NoAgents,
}

impl PendingReasonKind {
    /// The Prometheus label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PendingReasonKind::Resources => "resources",
            PendingReasonKind::Constraint => "constraint",
            PendingReasonKind::Limit => "limit",
            PendingReasonKind::Dedicated => "dedicated",
            PendingReasonKind::Quota => "quota",
            PendingReasonKind::Throttled => "throttled",
            PendingReasonKind::Preemption => "preemption",
            PendingReasonKind::NoAgents => "no_agents",
        }
    }
}

/// Why a task is pending: how many agents each [`Reason`] refused it on, how many were looked
/// at and how many could take it, plus the caller's [`TaskReason`]s.
///
/// Normalized, so equal explanations compare equal however they were assembled: reasons are
/// sorted by count (descending) then text, with no zero counts and no repeats, and task reasons
/// are sorted and distinct. It serializes as it is (serde) for shards to send each other;
/// deserializing normalizes again, so a peer's message cannot break the order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Unnormalized")]
pub struct PendingReasons {
    examined: u32,
    feasible: u32,
    counts: Vec<(Reason, u32)>,
    task_reasons: Vec<TaskReason>,
}

/// [`PendingReasons`]' fields as they arrive, before normalization.
#[derive(Deserialize)]
struct Unnormalized {
    examined: u32,
    feasible: u32,
    counts: Vec<(Reason, u32)>,
    task_reasons: Vec<TaskReason>,
}

impl From<Unnormalized> for PendingReasons {
    fn from(raw: Unnormalized) -> PendingReasons {
        let mut reasons = PendingReasons {
            examined: raw.examined,
            feasible: raw.feasible,
            counts: raw.counts,
            task_reasons: raw.task_reasons,
        };
        reasons.normalize();
        reasons
    }
}

impl PendingReasons {
    /// No agents examined and no reasons: what a shard with no offers contributes.
    pub fn new() -> PendingReasons {
        PendingReasons::default()
    }

    /// Agents examined (all agents of every index merged in).
    pub fn examined(&self) -> u32 {
        self.examined
    }

    /// Agents that could take the task now; non-zero means it waits for something other than
    /// an agent (its turn, a penalty, a [`TaskReason`]).
    pub fn feasible(&self) -> u32 {
        self.feasible
    }

    /// Each reason with the number of agents it refused the task on, most common first.
    pub fn counts(&self) -> &[(Reason, u32)] {
        &self.counts
    }

    /// The caller's reasons, sorted.
    pub fn task_reasons(&self) -> &[TaskReason] {
        &self.task_reasons
    }

    /// Adds a reason that is about the task rather than an agent.
    pub fn with(mut self, reason: TaskReason) -> PendingReasons {
        if let Err(at) = self.task_reasons.binary_search(&reason) {
            self.task_reasons.insert(at, reason);
        }
        self
    }

    /// Adds another index's explanation of the same task (another shard's offers): counts add
    /// up, since shards own disjoint agents, and task reasons unite.
    pub fn merge(&mut self, other: &PendingReasons) {
        self.examined = self.examined.saturating_add(other.examined);
        self.feasible = self.feasible.saturating_add(other.feasible);
        self.counts.extend(other.counts.iter().cloned());
        self.task_reasons.extend(other.task_reasons.iter().copied());
        self.normalize();
    }

    /// The most telling coarse reason: a task reason first (quota, then throttling, then
    /// preemption), else the reason refusing the most agents, else [`NoAgents`] when there are
    /// none; `None` when agents could take the task and nothing else holds it back.
    ///
    /// [`NoAgents`]: PendingReasonKind::NoAgents
    pub fn kind(&self) -> Option<PendingReasonKind> {
        if let Some(reason) = self.task_reasons.first() {
            return Some(reason.kind());
        }
        if let Some((reason, _)) = self.counts.first() {
            return Some(reason.kind());
        }
        (self.examined == 0).then_some(PendingReasonKind::NoAgents)
    }

    /// Sorts and combines repeats; see the type's docs.
    fn normalize(&mut self) {
        let mut counts = std::mem::take(&mut self.counts);
        counts.sort_by(|a, b| a.0.cmp(&b.0));
        for (reason, count) in counts {
            match self.counts.last_mut() {
                Some((last, total)) if *last == reason => *total = total.saturating_add(count),
                _ => self.counts.push((reason, count)),
            }
        }
        self.counts.retain(|(_, count)| *count > 0);
        self.counts
            .sort_by_cached_key(|(reason, count)| (Reverse(*count), reason.to_string()));
        self.task_reasons.sort_unstable();
        self.task_reasons.dedup();
    }
}

impl fmt::Display for PendingReasons {
    /// `quota exceeded; insufficient ram on 812 agents; limit rack:2 reached on 40 agents`;
    /// `no agents` for an empty cluster; `fits on N agents` last when some could take it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let agents = |count: u32| if count == 1 { "agent" } else { "agents" };
        let mut parts: Vec<String> = self.task_reasons.iter().map(ToString::to_string).collect();
        if self.examined == 0 {
            parts.push("no agents".to_string());
        }
        for (reason, count) in &self.counts {
            parts.push(format!("{reason} on {count} {}", agents(*count)));
        }
        if self.feasible > 0 {
            parts.push(format!(
                "fits on {} {}",
                self.feasible,
                agents(self.feasible)
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Where an agent's veto is counted during a scan, before reasons get their strings.
#[derive(Clone, Copy)]
enum Veto {
    Dedicated,
    /// Index into the task's value constraints.
    Value(usize),
    /// Index into the task's limits: the agent lacks the attribute.
    LimitAttributeMissing(usize),
    /// Index into the task's limits: the limit is reached.
    Limit(usize),
    Resource(ResourceKind),
}

impl PlacementIndex {
    /// Explains why `task` (compiled by this index) cannot be placed: visits every agent once
    /// and counts the first filter refusing it, in this order: dedicated to others, a value
    /// constraint (per attribute), a limit (per attribute and limit), then resources (the first
    /// short one of cpu, ram, disk, ports). An agent nothing refuses counts as
    /// [`feasible`](PendingReasons::feasible).
    ///
    /// Agrees with placement: `feasible() == 0` exactly when [`pick`](PlacementIndex::pick)
    /// finds nothing.
    pub fn explain(&self, task: &CompiledTask, spread: &JobSpread) -> PendingReasons {
        let values = task.values.len();
        let limits = task.limits.len();
        // Dedicated, values, limit attributes missing, limits reached, four resources.
        let mut tally = vec![0u32; 1 + values + 2 * limits + 4];
        let slot_of = |veto: Veto| match veto {
            Veto::Dedicated => 0,
            Veto::Value(i) => 1 + i,
            Veto::LimitAttributeMissing(i) => 1 + values + i,
            Veto::Limit(i) => 1 + values + limits + i,
            Veto::Resource(kind) => 1 + values + 2 * limits + kind as usize,
        };
        let mut reasons = PendingReasons::new();
        for (slot, record) in self.slots.iter().enumerate() {
            if record.pool == POOL_NONE {
                continue;
            }
            reasons.examined += 1;
            let view = ColumnView {
                columns: &self.columns,
                slot,
            };
            match first_veto(task, spread, &record.free, &view) {
                Some(veto) => tally[slot_of(veto)] += 1,
                None => reasons.feasible += 1,
            }
        }
        let name = |attr: super::AttrId| self.names.resolve(attr.0).to_string();
        let mut push = |veto: Veto, reason: Reason| {
            let count = tally[slot_of(veto)];
            if count > 0 {
                reasons.counts.push((reason, count));
            }
        };
        push(Veto::Dedicated, Reason::NotDedicated);
        for (i, value) in task.values.iter().enumerate() {
            let attribute = name(value.attr);
            push(Veto::Value(i), Reason::ConstraintUnmet { attribute });
        }
        for (i, limit) in task.limits.iter().enumerate() {
            let attribute = name(limit.attr);
            push(
                Veto::LimitAttributeMissing(i),
                Reason::ConstraintUnmet {
                    attribute: attribute.clone(),
                },
            );
            push(
                Veto::Limit(i),
                Reason::LimitReached {
                    attribute,
                    limit: limit.limit,
                },
            );
        }
        for kind in [
            ResourceKind::Cpu,
            ResourceKind::Ram,
            ResourceKind::Disk,
            ResourceKind::Ports,
        ] {
            push(Veto::Resource(kind), Reason::Insufficient(kind));
        }
        reasons.normalize();
        reasons
    }
}

/// The first filter refusing the agent, in [`PlacementIndex::explain`]'s order.
fn first_veto<A: AttributeLookup + ?Sized>(
    task: &CompiledTask,
    spread: &JobSpread,
    free: &crate::model::Resources,
    agent: &A,
) -> Option<Veto> {
    if let Some(value) = agent.value(DEDICATED_ATTR) {
        let open = task
            .dedicated
            .as_deref()
            .is_some_and(|allowed| allowed.binary_search(&value).is_ok());
        if !open {
            return Some(Veto::Dedicated);
        }
    }
    if let Some(i) = task
        .values
        .iter()
        .position(|constraint| !constraint.admits(agent.value(constraint.attr)))
    {
        return Some(Veto::Value(i));
    }
    for (i, limit) in task.limits.iter().enumerate() {
        match agent.value(limit.attr) {
            None => return Some(Veto::LimitAttributeMissing(i)),
            Some(value) if spread.count(limit.attr, value) >= limit.limit => {
                return Some(Veto::Limit(i))
            }
            Some(_) => {}
        }
    }
    let need = &task.resources;
    let short = [
        (free.cpu_millis < need.cpu_millis, ResourceKind::Cpu),
        (free.ram_mib < need.ram_mib, ResourceKind::Ram),
        (free.disk_mib < need.disk_mib, ResourceKind::Disk),
        (free.ports < need.ports, ResourceKind::Ports),
    ];
    short
        .into_iter()
        .find(|(short, _)| *short)
        .map(|(_, kind)| Veto::Resource(kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attributes, Constraint, Resources};
    use crate::placement::{fits_resources, limit_ok, satisfies_constraints, AgentId};
    use proptest::prelude::*;

    fn res(cpu_millis: u32, ram_mib: u32, disk_mib: u32, ports: u16) -> Resources {
        Resources {
            cpu_millis,
            ram_mib,
            disk_mib,
            ports,
        }
    }

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn value(attribute: &str, negated: bool, values: &[&str]) -> Constraint {
        Constraint::Value {
            attribute: attribute.to_string(),
            negated,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn limit(attribute: &str, limit: u32) -> Constraint {
        Constraint::Limit {
            attribute: attribute.to_string(),
            limit,
        }
    }

    /// One agent: attributes and free resources (capacity is the same as free).
    type Agent<'a> = (&'a [(&'a str, &'a str)], Resources);

    /// Explains `need` with `constraints` over `agents`, after the job's tasks in `placed`
    /// (indexes into `agents`) are counted in its spread, and compares the rendering.
    #[track_caller]
    fn check(
        agents: &[Agent],
        placed: &[usize],
        need: Resources,
        constraints: &[Constraint],
        expected: &str,
    ) {
        let mut index = PlacementIndex::new();
        for (id, (pairs, free)) in agents.iter().enumerate() {
            index.upsert_agent(AgentId(id as u64), &attrs(pairs), *free, *free);
        }
        let task = index.compile_parts(&need, constraints);
        let mut spread = JobSpread::new(&task);
        for &agent in placed {
            assert!(spread.add(&index, AgentId(agent as u64)));
        }
        let reasons = index.explain(&task, &spread);
        assert_eq!(reasons.to_string(), expected, "{constraints:?}");
        assert_eq!(reasons.examined() as usize, agents.len());
        let counted: u32 = reasons.counts().iter().map(|(_, count)| count).sum();
        assert_eq!(counted + reasons.feasible(), reasons.examined());
        assert_eq!(
            reasons.feasible() == 0,
            index.pick(&task, &spread).is_none()
        );
    }

    const BIG: Resources = Resources {
        cpu_millis: 4000,
        ram_mib: 4096,
        disk_mib: 4096,
        ports: 4,
    };

    #[test]
    fn explain_table() {
        let a: &[(&str, &str)] = &[("host", "a"), ("rack", "r1"), ("zone", "z1")];
        let b: &[(&str, &str)] = &[("host", "b"), ("rack", "r1"), ("zone", "z2")];
        let c: &[(&str, &str)] = &[("host", "c"), ("rack", "r2")];
        let db: &[(&str, &str)] = &[("host", "d"), ("dedicated", "db")];
        let web: &[(&str, &str)] = &[("host", "w"), ("dedicated", "web")];
        let small = res(1000, 1024, 1024, 1);
        check(&[], &[], small, &[], "no agents");
        check(&[(a, BIG)], &[], small, &[], "fits on 1 agent");
        // Resources: the first short dimension, in cpu, ram, disk, ports order.
        check(
            &[
                (a, res(999, 0, 0, 0)),
                (b, res(1000, 1023, 0, 0)),
                (c, res(1000, 1024, 1023, 0)),
                (a, res(1000, 1024, 1024, 0)),
                (b, res(1000, 1000, 1024, 1)),
            ],
            &[],
            small,
            &[],
            "insufficient ram on 2 agents; insufficient cpu on 1 agent; insufficient disk on 1 agent; insufficient ports on 1 agent",
        );
        // Dedicated agents refuse a job without the matching dedicated constraint, before anything else.
        check(
            &[(db, res(0, 0, 0, 0)), (a, BIG)],
            &[],
            small,
            &[],
            "not dedicated for role on 1 agent; fits on 1 agent",
        );
        check(
            &[(db, BIG), (web, BIG), (a, BIG)],
            &[],
            small,
            &[value("dedicated", false, &["db"])],
            "constraint dedicated unmet on 1 agent; not dedicated for role on 1 agent; fits on 1 agent",
        );
        // Value constraints: per attribute, the first failing one counted.
        check(
            &[(a, BIG), (b, BIG), (c, res(0, 0, 0, 0))],
            &[],
            small,
            &[value("zone", false, &["z1"]), value("rack", true, &["r1"])],
            "constraint zone unmet on 2 agents; constraint rack unmet on 1 agent",
        );
        // Limits: reached on a value with `limit` tasks; an agent lacking the attribute fails it
        // as a constraint. Constraints come before limits, limits before resources.
        check(
            &[
                (a, BIG),
                (b, res(0, 0, 0, 0)),
                (c, res(0, 0, 0, 0)),
                (c, BIG),
            ],
            &[0, 1],
            small,
            &[limit("rack", 2), limit("zone", 1)],
            "constraint zone unmet on 2 agents; limit rack:2 reached on 2 agents",
        );
        check(
            &[(a, BIG), (b, BIG)],
            &[0],
            small,
            &[limit("zone", 1)],
            "limit zone:1 reached on 1 agent; fits on 1 agent",
        );
        // Ties sort by text.
        check(
            &[(a, res(0, 0, 0, 0)), (b, BIG)],
            &[],
            small,
            &[value("zone", false, &["z1"])],
            "constraint zone unmet on 1 agent; insufficient cpu on 1 agent",
        );
    }

    #[test]
    fn task_reasons_and_merging() {
        let mut index = PlacementIndex::new();
        index.upsert_agent(AgentId(1), &attrs(&[("host", "a")]), BIG, res(0, 0, 0, 0));
        index.upsert_agent(
            AgentId(2),
            &attrs(&[("host", "b")]),
            BIG,
            res(0, 4096, 0, 0),
        );
        let task = index.compile_parts(&res(1, 1, 0, 0), &[]);
        let spread = JobSpread::new(&task);
        let mine = index.explain(&task, &spread);
        assert_eq!(mine.to_string(), "insufficient cpu on 2 agents");
        assert_eq!(mine.kind(), Some(PendingReasonKind::Resources));

        let mut other_shard = PlacementIndex::new();
        other_shard.upsert_agent(AgentId(3), &attrs(&[("host", "c")]), BIG, res(1, 0, 0, 0));
        other_shard.upsert_agent(AgentId(4), &attrs(&[("host", "d")]), BIG, BIG);
        let task = other_shard.compile_parts(&res(1, 1, 0, 0), &[]);
        let theirs = other_shard
            .explain(&task, &JobSpread::new(&task))
            .with(TaskReason::Throttled);

        let mut merged = mine.clone().with(TaskReason::QuotaExceeded);
        merged.merge(&theirs);
        merged.merge(&PendingReasons::new().with(TaskReason::QuotaExceeded));
        assert_eq!(
            merged.to_string(),
            "quota exceeded; throttled; insufficient cpu on 2 agents; insufficient ram on 1 agent; fits on 1 agent"
        );
        assert_eq!(merged.examined(), 4);
        assert_eq!(merged.kind(), Some(PendingReasonKind::Quota));
        // Merging is order-independent.
        let mut other_way = theirs.clone();
        other_way.merge(&mine.clone().with(TaskReason::QuotaExceeded));
        assert_eq!(other_way, merged);

        assert_eq!(
            PendingReasons::new().kind(),
            Some(PendingReasonKind::NoAgents)
        );
        assert_eq!(
            PendingReasons::new()
                .with(TaskReason::WaitingForPreemption)
                .to_string(),
            "waiting for preemption slot; no agents"
        );
        let nothing = other_shard.compile_parts(&res(0, 0, 0, 0), &[]);
        let fits = other_shard.explain(&nothing, &JobSpread::default());
        assert_eq!(fits.kind(), None);
    }

    #[test]
    fn kinds_have_distinct_labels() {
        let kinds = [
            PendingReasonKind::Resources,
            PendingReasonKind::Constraint,
            PendingReasonKind::Limit,
            PendingReasonKind::Dedicated,
            PendingReasonKind::Quota,
            PendingReasonKind::Throttled,
            PendingReasonKind::Preemption,
            PendingReasonKind::NoAgents,
        ];
        let mut labels: Vec<&str> = kinds.iter().map(|kind| kind.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), kinds.len());
        for (reason, kind) in [
            (TaskReason::QuotaExceeded, PendingReasonKind::Quota),
            (TaskReason::Throttled, PendingReasonKind::Throttled),
            (
                TaskReason::WaitingForPreemption,
                PendingReasonKind::Preemption,
            ),
        ] {
            assert_eq!(reason.kind(), kind);
        }
        assert_eq!(Reason::NotDedicated.kind(), PendingReasonKind::Dedicated);
    }

    #[test]
    fn serde_roundtrip_normalizes() {
        let reasons = PendingReasons {
            examined: 9,
            feasible: 1,
            counts: vec![
                (Reason::Insufficient(ResourceKind::Ram), 5),
                (
                    Reason::LimitReached {
                        attribute: "rack".into(),
                        limit: 2,
                    },
                    3,
                ),
            ],
            task_reasons: vec![TaskReason::QuotaExceeded],
        };
        let text = serde_json::to_string(&reasons).unwrap();
        assert_eq!(
            serde_json::from_str::<PendingReasons>(&text).unwrap(),
            reasons
        );
        // A peer's unsorted, repeated counts come back normalized.
        let messy = r#"{"examined":9,"feasible":0,"counts":[["NotDedicated",1],[{"Insufficient":"Cpu"},2],["NotDedicated",2],["NotDedicated",0]],"task_reasons":["Throttled","QuotaExceeded","Throttled"]}"#;
        let parsed: PendingReasons = serde_json::from_str(messy).unwrap();
        assert_eq!(
            parsed.to_string(),
            "quota exceeded; throttled; not dedicated for role on 3 agents; insufficient cpu on 2 agents"
        );
    }

    fn any_agent() -> impl Strategy<Value = (Attributes, Resources)> {
        let pair = |name: &'static str, values: &'static [&'static str]| {
            prop::option::of(prop::sample::select(values))
                .prop_map(move |v| v.map(|v| (name.to_string(), v.to_string())))
        };
        (
            pair("rack", &["r1", "r2", "r3"]),
            pair("zone", &["z1", "z2"]),
            pair("dedicated", &["db", "web"]),
            (0..3u32, 0..3u32, 0..2u32, 0..2u16),
        )
            .prop_map(|(rack, zone, dedicated, (c, r, d, p))| {
                let attributes = [rack, zone, dedicated].into_iter().flatten().collect();
                (attributes, res(c * 500, r * 512, d * 512, p))
            })
    }

    fn any_constraints() -> impl Strategy<Value = Vec<Constraint>> {
        let one = prop_oneof![
            (
                prop::sample::select(&["rack", "zone", "dedicated", "host"][..]),
                any::<bool>(),
                prop::sample::subsequence(&["r1", "z1", "db", "web"][..], 0..3)
            )
                .prop_map(|(attribute, negated, values)| value(attribute, negated, &values)),
            (prop::sample::select(&["rack", "zone"][..]), 0..3u32)
                .prop_map(|(attribute, n)| limit(attribute, n)),
        ];
        prop::collection::vec(one, 0..3)
    }

    proptest! {
        #[test]
        fn explain_agrees_with_the_filters(
            agents in prop::collection::vec(any_agent(), 0..12),
            placed in prop::collection::vec(0..12usize, 0..4),
            need in (0..3u32, 0..3u32, 0..2u32, 0..2u16),
            constraints in any_constraints(),
        ) {
            let mut index = PlacementIndex::new();
            for (id, (attributes, free)) in agents.iter().enumerate() {
                index.upsert_agent(AgentId(id as u64), attributes, *free, *free);
            }
            let need = res(need.0 * 500, need.1 * 512, need.2 * 512, need.3);
            let task = index.compile_parts(&need, &constraints);
            let mut spread = JobSpread::new(&task);
            for agent in placed.into_iter().filter(|&a| a < agents.len()) {
                spread.add(&index, AgentId(agent as u64));
            }
            let reasons = index.explain(&task, &spread);
            let feasible = index
                .agents()
                .filter(|offer| {
                    let ids = index.attribute_ids(offer.id).unwrap();
                    fits_resources(&offer.free, &need)
                        && satisfies_constraints(&task, ids)
                        && limit_ok(&task, &spread, ids)
                })
                .count();
            prop_assert_eq!(reasons.examined() as usize, agents.len());
            prop_assert_eq!(reasons.feasible() as usize, feasible);
            let counted: u32 = reasons.counts().iter().map(|(_, count)| count).sum();
            prop_assert_eq!(counted as usize + feasible, agents.len());
            prop_assert_eq!(feasible == 0, index.pick(&task, &spread).is_none());
            let sorted = reasons.counts().windows(2).all(|w| {
                (Reverse(w[0].1), w[0].0.to_string()) < (Reverse(w[1].1), w[1].0.to_string())
            });
            prop_assert!(sorted);
        }
    }
}
