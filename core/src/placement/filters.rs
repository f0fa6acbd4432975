//! Feasibility filters: a task compiled once per job against an index's interner, the job's
//! spread for limit constraints, and the three filters placement chains (resources, value and
//! dedicated constraints, limits). Each filter is a free function so it can be tested alone.

use crate::model::{Constraint, Resources, DEDICATED_ATTRIBUTE};

use super::intern::{AttrId, FxHashMap, Interner, ValueId};

/// Every index interns [`DEDICATED_ATTRIBUTE`] first, so its id is a constant and the dedicated
/// check needs no lookup.
pub const DEDICATED_ATTR: AttrId = AttrId(0);

/// Read access to one agent's interned attributes. Implemented by the index (columnar, the hot
/// path) and by a plain slice of pairs (tests, agents this shard does not own).
pub trait AttributeLookup {
    /// The agent's value of `attr`, or `None` when the agent does not have the attribute.
    fn value(&self, attr: AttrId) -> Option<ValueId>;
}

impl AttributeLookup for [(AttrId, ValueId)] {
    fn value(&self, attr: AttrId) -> Option<ValueId> {
        self.iter()
            .find(|(name, _)| *name == attr)
            .map(|(_, value)| *value)
    }
}

/// A value constraint with its strings replaced by ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledValue {
    pub attr: AttrId,
    pub negated: bool,
    /// Sorted and deduplicated, so membership is a binary search.
    pub values: Box<[ValueId]>,
}

impl CompiledValue {
    #[inline]
    pub(super) fn admits(&self, agent_value: Option<ValueId>) -> bool {
        // Aurora: an agent lacking the attribute fails a plain constraint and passes a negated one.
        let listed = match agent_value {
            Some(value) => self.values.binary_search(&value).is_ok(),
            None => false,
        };
        listed != self.negated
    }
}

/// A limit constraint with its attribute name replaced by an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompiledLimit {
    pub attr: AttrId,
    pub limit: u32,
}

/// A task's resources and constraints compiled against one index's interner. Compile once per
/// job (all instances share the config), then placing an instance touches no string.
///
/// Ids are meaningful only for the index that compiled the task: a peer shard that borrows the
/// job's work compiles the config again against its own index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledTask {
    pub resources: Resources,
    pub values: Box<[CompiledValue]>,
    pub limits: Box<[CompiledLimit]>,
    /// `Some` when the task carries a non-negated value constraint on [`DEDICATED_ATTRIBUTE`]:
    /// the dedicated values it may run on (from its first such constraint; any further one is
    /// still enforced by `values`). Such a task goes only to dedicated agents; a task without
    /// one never goes to them.
    pub dedicated: Option<Box<[ValueId]>>,
}

impl CompiledTask {
    /// Interns every attribute name and value the constraints mention. Unknown values are
    /// interned rather than dropped: an agent registering later with that value must match.
    pub(crate) fn compile(
        attr_names: &mut Interner,
        attr_values: &mut Interner,
        resources: &Resources,
        constraints: &[Constraint],
    ) -> CompiledTask {
        let mut values = Vec::new();
        let mut limits = Vec::new();
        let mut dedicated = None;
        for constraint in constraints {
            match constraint {
                Constraint::Value {
                    attribute,
                    negated,
                    values: texts,
                } => {
                    let mut ids: Vec<ValueId> = texts
                        .iter()
                        .map(|text| ValueId(attr_values.intern(text)))
                        .collect();
                    ids.sort_unstable();
                    ids.dedup();
                    if attribute == DEDICATED_ATTRIBUTE && !negated && dedicated.is_none() {
                        dedicated = Some(ids.clone().into_boxed_slice());
                    }
                    values.push(CompiledValue {
                        attr: AttrId(attr_names.intern(attribute)),
                        negated: *negated,
                        values: ids.into_boxed_slice(),
                    });
                }
                Constraint::Limit { attribute, limit } => limits.push(CompiledLimit {
                    attr: AttrId(attr_names.intern(attribute)),
                    limit: *limit,
                }),
            }
        }
        CompiledTask {
            resources: *resources,
            values: values.into_boxed_slice(),
            limits: limits.into_boxed_slice(),
            dedicated,
        }
    }
}

/// Filter 1: the agent's free resources hold the task's request in every dimension.
#[inline]
pub fn fits_resources(free: &Resources, need: &Resources) -> bool {
    free.contains(need)
}

/// Filter 2: value constraints and the dedicated rule. A dedicated agent (one with a
/// [`DEDICATED_ATTRIBUTE`]) accepts only tasks that carry a non-negated dedicated constraint;
/// that constraint, like every value constraint, must then admit the agent's value. A task with
/// such a constraint fails on a non-dedicated agent through the constraint itself.
#[inline]
pub fn satisfies_constraints<A: AttributeLookup + ?Sized>(task: &CompiledTask, agent: &A) -> bool {
    if task.dedicated.is_none() && agent.value(DEDICATED_ATTR).is_some() {
        return false;
    }
    task.values
        .iter()
        .all(|constraint| constraint.admits(agent.value(constraint.attr)))
}

/// Filter 3: placing one more task of the job on this agent keeps every limit constraint: fewer
/// than `limit` of the job's active tasks share the agent's value of the attribute. An agent
/// lacking the attribute is infeasible (Aurora).
#[inline]
pub fn limit_ok<A: AttributeLookup + ?Sized>(
    task: &CompiledTask,
    spread: &JobSpread,
    agent: &A,
) -> bool {
    task.limits.iter().all(|limit| {
        debug_assert!(
            spread.tracks(limit.attr),
            "the job's spread does not track limit attribute {:?}: build it with JobSpread::new",
            limit.attr
        );
        match agent.value(limit.attr) {
            Some(value) => spread.count(limit.attr, value) < limit.limit,
            None => false,
        }
    })
}

/// How many of one job's active tasks sit on each value of the attributes its limit constraints
/// name ("2 on rack-3, 1 on rack-7"). The shard keeps one per job and calls
/// [`add`](JobSpread::add) when a task of the job is assigned and [`remove`](JobSpread::remove)
/// when it leaves its agent.
///
/// Only the tracked attributes are counted, so a job without limit constraints pays nothing.
/// When a job update changes which attributes it limits, rebuild the spread from the job's
/// active tasks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobSpread {
    /// Sorted, deduplicated; a handful at most.
    tracked: Vec<AttrId>,
    /// `(attr << 32) | value` to count; entries that drop to zero are removed so equal spreads
    /// compare equal.
    counts: FxHashMap<u64, u32>,
}

impl JobSpread {
    /// A spread tracking the attributes of `task`'s limit constraints.
    pub fn new(task: &CompiledTask) -> JobSpread {
        JobSpread::tracking(task.limits.iter().map(|limit| limit.attr))
    }

    pub fn tracking(attrs: impl IntoIterator<Item = AttrId>) -> JobSpread {
        let mut tracked: Vec<AttrId> = attrs.into_iter().collect();
        tracked.sort_unstable();
        tracked.dedup();
        JobSpread {
            tracked,
            counts: FxHashMap::default(),
        }
    }

    /// The attributes it counts (sorted).
    pub fn tracked(&self) -> &[AttrId] {
        &self.tracked
    }

    pub fn tracks(&self, attr: AttrId) -> bool {
        self.tracked.contains(&attr)
    }

    /// Every non-zero count as `(attribute, value, count)`, sorted (deterministic).
    pub fn entries(&self) -> Vec<(AttrId, ValueId, u32)> {
        let mut entries: Vec<(AttrId, ValueId, u32)> = self
            .counts
            .iter()
            .map(|(&slot, &count)| (AttrId((slot >> 32) as u32), ValueId(slot as u32), count))
            .collect();
        entries.sort_unstable();
        entries
    }

    /// Number of the job's active tasks on agents whose `attr` is `value`.
    #[inline]
    pub fn count(&self, attr: AttrId, value: ValueId) -> u32 {
        if self.counts.is_empty() {
            return 0;
        }
        self.counts.get(&key(attr, value)).copied().unwrap_or(0)
    }

    /// Counts one more task on an agent with these attributes. Use this form for an agent the
    /// index no longer (or never) held, with ids from
    /// [`PlacementIndex::intern_attributes`](super::PlacementIndex::intern_attributes).
    pub fn add_attributes(&mut self, attrs: &[(AttrId, ValueId)]) {
        for (attr, value) in attrs {
            if self.tracks(*attr) {
                *self.counts.entry(key(*attr, *value)).or_insert(0) += 1;
            }
        }
    }

    /// Counts one task less; panics when the count would go negative (a programmer error: a
    /// task removed that was never added).
    pub fn remove_attributes(&mut self, attrs: &[(AttrId, ValueId)]) {
        for (attr, value) in attrs {
            if self.tracks(*attr) {
                let slot = key(*attr, *value);
                let count = self
                    .counts
                    .get_mut(&slot)
                    .expect("JobSpread::remove of a task that was never added");
                *count -= 1;
                if *count == 0 {
                    self.counts.remove(&slot);
                }
            }
        }
    }

    /// Counts one more task on `agent`; false (and nothing counted) when the index does not
    /// hold the agent.
    pub fn add(&mut self, index: &super::PlacementIndex, agent: super::AgentId) -> bool {
        match index.attribute_ids(agent) {
            Some(attrs) => {
                self.add_attributes(attrs);
                true
            }
            None => false,
        }
    }

    /// Counts one task less on `agent`; false (and nothing changed) when the index does not
    /// hold the agent.
    pub fn remove(&mut self, index: &super::PlacementIndex, agent: super::AgentId) -> bool {
        match index.attribute_ids(agent) {
            Some(attrs) => {
                self.remove_attributes(attrs);
                true
            }
            None => false,
        }
    }
}

#[inline]
fn key(attr: AttrId, value: ValueId) -> u64 {
    (u64::from(attr.0) << 32) | u64::from(value.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Interners seeded like an index's: `dedicated` is attribute 0.
    struct Fixture {
        names: Interner,
        values: Interner,
    }

    impl Fixture {
        fn new() -> Fixture {
            let mut names = Interner::default();
            assert_eq!(names.intern(DEDICATED_ATTRIBUTE), DEDICATED_ATTR.0);
            Fixture {
                names,
                values: Interner::default(),
            }
        }

        fn task(&mut self, constraints: &[Constraint]) -> CompiledTask {
            CompiledTask::compile(
                &mut self.names,
                &mut self.values,
                &Resources::ZERO,
                constraints,
            )
        }

        fn agent(&mut self, attrs: &[(&str, &str)]) -> Vec<(AttrId, ValueId)> {
            attrs
                .iter()
                .map(|(name, value)| {
                    (
                        AttrId(self.names.intern(name)),
                        ValueId(self.values.intern(value)),
                    )
                })
                .collect()
        }
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

    fn res(cpu_millis: u32, ram_mib: u32, disk_mib: u32, ports: u16) -> Resources {
        Resources {
            cpu_millis,
            ram_mib,
            disk_mib,
            ports,
        }
    }

    fn check_fits(free: Resources, need: Resources, expected: bool) {
        assert_eq!(
            fits_resources(&free, &need),
            expected,
            "{free:?} ⊇ {need:?}"
        );
    }

    #[test]
    fn fits_resources_table() {
        check_fits(res(1000, 1024, 100, 2), res(1000, 1024, 100, 2), true);
        check_fits(res(1000, 1024, 100, 2), res(0, 0, 0, 0), true);
        check_fits(res(999, 1024, 100, 2), res(1000, 1024, 100, 2), false);
        check_fits(res(1000, 1023, 100, 2), res(1000, 1024, 100, 2), false);
        check_fits(res(1000, 1024, 99, 2), res(1000, 1024, 100, 2), false);
        check_fits(res(1000, 1024, 100, 1), res(1000, 1024, 100, 2), false);
    }

    fn check_constraints(constraints: &[Constraint], agent: &[(&str, &str)], expected: bool) {
        let mut fixture = Fixture::new();
        let task = fixture.task(constraints);
        let agent_ids = fixture.agent(agent);
        assert_eq!(
            satisfies_constraints(&task, agent_ids.as_slice()),
            expected,
            "{constraints:?} on {agent:?}"
        );
    }

    #[test]
    fn value_constraints_table() {
        let agent = [("host", "h1"), ("rack", "r1"), ("zone", "a")];
        check_constraints(&[], &agent, true);
        check_constraints(&[value("zone", false, &["a"])], &agent, true);
        check_constraints(&[value("zone", false, &["b", "a"])], &agent, true);
        check_constraints(&[value("zone", false, &["b"])], &agent, false);
        check_constraints(&[value("zone", false, &[])], &agent, false);
        check_constraints(&[value("rack", true, &["r1"])], &agent, false);
        check_constraints(&[value("rack", true, &["r2"])], &agent, true);
        check_constraints(&[value("rack", true, &[])], &agent, true);
        // All constraints must hold.
        check_constraints(
            &[value("zone", false, &["a"]), value("rack", true, &["r1"])],
            &agent,
            false,
        );
    }

    #[test]
    fn missing_attribute_fails_plain_and_passes_negated() {
        let agent = [("host", "h1")];
        check_constraints(&[value("zone", false, &["a"])], &agent, false);
        check_constraints(&[value("zone", true, &["a"])], &agent, true);
    }

    #[test]
    fn dedicated_table() {
        let dedicated = [("host", "h1"), ("dedicated", "db")];
        let shared = [("host", "h2")];
        // A dedicated agent refuses a task without a dedicated constraint.
        check_constraints(&[], &dedicated, false);
        check_constraints(&[value("host", false, &["h1"])], &dedicated, false);
        // It accepts the matching one, refuses another value.
        check_constraints(&[value("dedicated", false, &["db"])], &dedicated, true);
        check_constraints(&[value("dedicated", false, &["web"])], &dedicated, false);
        // A dedicated task never goes to a shared agent.
        check_constraints(&[value("dedicated", false, &["db"])], &shared, false);
        // A negated dedicated constraint does not open dedicated agents.
        check_constraints(&[value("dedicated", true, &["web"])], &dedicated, false);
        check_constraints(&[value("dedicated", true, &["web"])], &shared, true);
    }

    #[test]
    fn compile_records_dedicated_values() {
        let mut fixture = Fixture::new();
        let task = fixture.task(&[value("dedicated", false, &["db", "db"])]);
        let db = ValueId(fixture.values.get("db").unwrap());
        assert_eq!(task.dedicated.as_deref(), Some(&[db][..]));
        assert_eq!(task.values[0].values.len(), 1, "values deduplicated");
        assert!(fixture
            .task(&[value("dedicated", true, &["db"])])
            .dedicated
            .is_none());
        assert!(fixture.task(&[]).dedicated.is_none());
    }

    /// `placed` lists the agents already holding one task of the job each.
    fn check_limit(
        constraints: &[Constraint],
        placed: &[&[(&str, &str)]],
        agent: &[(&str, &str)],
        expected: bool,
    ) {
        let mut fixture = Fixture::new();
        let task = fixture.task(constraints);
        let mut spread = JobSpread::new(&task);
        for other in placed {
            let ids = fixture.agent(other);
            spread.add_attributes(&ids);
        }
        let agent_ids = fixture.agent(agent);
        assert_eq!(
            limit_ok(&task, &spread, agent_ids.as_slice()),
            expected,
            "{constraints:?} with {placed:?} on {agent:?}"
        );
    }

    #[test]
    fn limit_table() {
        let h1: &[(&str, &str)] = &[("host", "h1"), ("rack", "r1")];
        let h2: &[(&str, &str)] = &[("host", "h2"), ("rack", "r1")];
        let h3: &[(&str, &str)] = &[("host", "h3"), ("rack", "r2")];
        check_limit(&[], &[h1, h1], h1, true);
        check_limit(&[limit("host", 1)], &[], h1, true);
        check_limit(&[limit("host", 1)], &[h1], h1, false);
        check_limit(&[limit("host", 1)], &[h1], h2, true);
        check_limit(&[limit("rack", 2)], &[h1], h2, true);
        check_limit(&[limit("rack", 2)], &[h1, h2], h1, false);
        check_limit(&[limit("rack", 2)], &[h1, h2], h3, true);
        check_limit(&[limit("rack", 2), limit("host", 1)], &[h1], h2, true);
        check_limit(&[limit("rack", 1), limit("host", 1)], &[h1], h2, false);
        // Limit 0 admits nothing; a missing attribute is infeasible.
        check_limit(&[limit("host", 0)], &[], h1, false);
        check_limit(&[limit("zone", 5)], &[], h1, false);
    }

    #[test]
    fn spread_add_remove_roundtrip() {
        let mut fixture = Fixture::new();
        let task = fixture.task(&[limit("rack", 2)]);
        let agent = fixture.agent(&[("host", "h1"), ("rack", "r1")]);
        let empty = JobSpread::new(&task);
        let mut spread = empty.clone();
        spread.add_attributes(&agent);
        spread.add_attributes(&agent);
        assert_eq!(spread.count(agent[1].0, agent[1].1), 2);
        assert_eq!(spread.count(agent[0].0, agent[0].1), 0, "host is untracked");
        spread.remove_attributes(&agent);
        spread.remove_attributes(&agent);
        assert_eq!(spread, empty);
    }
}
