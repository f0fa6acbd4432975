//! A job's limit spread by attribute and value names instead of interned ids: interned ids are
//! private to one index, so a spread that travels to another shard (why-pending asks every
//! shard to explain a job's failed attempt) goes by name and is re-interned on arrival.

use super::{CompiledTask, JobSpread, PlacementIndex, ValueId};

impl PlacementIndex {
    /// `spread`'s counts as `(attribute, value, count)` names, sorted.
    pub fn spread_named(&self, spread: &JobSpread) -> Vec<(String, String, u32)> {
        spread
            .entries()
            .into_iter()
            .map(|(attr, value, count)| {
                (
                    self.names.resolve(attr.0).to_string(),
                    self.values.resolve(value.0).to_string(),
                    count,
                )
            })
            .collect()
    }

    /// A spread for `task` (compiled by this index) with the counts `named` gives, interned
    /// here. Names of attributes the task does not limit are ignored.
    pub fn spread_from_named(
        &mut self,
        task: &CompiledTask,
        named: &[(String, String, u32)],
    ) -> JobSpread {
        let mut spread = JobSpread::new(task);
        for (attr, value, count) in named {
            let attr = self.intern_name(attr);
            let value = ValueId(self.values.intern(value));
            for _ in 0..*count {
                spread.add_attributes(&[(attr, value)]);
            }
        }
        spread
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::AgentId;
    use crate::{Constraint, Resources};

    #[test]
    fn a_spread_travels_by_name_between_indexes() {
        let size = Resources {
            cpu_millis: 1000,
            ram_mib: 1024,
            disk_mib: 0,
            ports: 0,
        };
        let limit = [Constraint::Limit {
            attribute: "rack".into(),
            limit: 2,
        }];
        let mut here = PlacementIndex::new();
        // Ids differ between the indexes: "zone" is interned first here only.
        here.intern_attributes(&vec![("zone".into(), "z1".into())]);
        for (id, rack) in [(1, "r1"), (2, "r1"), (3, "r2")] {
            here.upsert_agent(AgentId(id), &vec![("rack".into(), rack.into())], size, size);
        }
        let task = here.compile_parts(&size, &limit);
        let mut spread = JobSpread::new(&task);
        for id in [1, 2, 3] {
            assert!(spread.add(&here, AgentId(id)));
        }
        let named = here.spread_named(&spread);
        assert_eq!(
            named,
            vec![
                ("rack".into(), "r1".into(), 2),
                ("rack".into(), "r2".into(), 1)
            ]
        );
        let mut there = PlacementIndex::new();
        there.upsert_agent(AgentId(9), &vec![("rack".into(), "r1".into())], size, size);
        let task_there = there.compile_parts(&size, &limit);
        let spread_there = there.spread_from_named(&task_there, &named);
        assert_eq!(there.spread_named(&spread_there), named);
        // The limit is reached on r1 there too: nothing placeable.
        assert_eq!(there.pick(&task_there, &spread_there), None);
    }
}
