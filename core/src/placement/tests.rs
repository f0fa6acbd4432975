//! Placement through the whole chain: fixtures through one `check` helper, then properties
//! against a brute-force reference that works on the original strings.

use proptest::prelude::*;

use super::*;
use crate::model::{Attributes, Constraint, Resources};

fn res(cpu_millis: u32, ram_mib: u32) -> Resources {
    Resources {
        cpu_millis,
        ram_mib,
        disk_mib: 0,
        ports: 0,
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

/// One agent of a fixture: id, attributes, capacity, free.
type AgentFixture<'a> = (u32, &'a [(&'a str, &'a str)], Resources, Resources);

/// Places `count` instances of one job on a fresh index and compares the chosen agents.
fn check(
    agents: &[AgentFixture],
    need: Resources,
    constraints: &[Constraint],
    count: usize,
    expected: &[u32],
) {
    let mut index = PlacementIndex::new();
    for (id, pairs, total, free) in agents {
        index.upsert_agent(AgentId(u64::from(*id)), &attrs(pairs), *total, *free);
    }
    let task = index.compile_parts(&need, constraints);
    let mut spread = JobSpread::new(&task);
    let mut placed = Vec::new();
    let count_placed = index.place_batch(&task, &mut spread, count, &mut placed);
    let placed: Vec<u32> = placed.iter().map(|id| id.0 as u32).collect();
    assert_eq!(
        placed, expected,
        "need {need:?} constraints {constraints:?}"
    );
    assert_eq!(count_placed, expected.len());
    index.check_invariants();
}

const HOST_A: &[(&str, &str)] = &[("host", "a"), ("rack", "r1"), ("zone", "z1")];
const HOST_B: &[(&str, &str)] = &[("host", "b"), ("rack", "r1"), ("zone", "z2")];
const HOST_C: &[(&str, &str)] = &[("host", "c"), ("rack", "r2"), ("zone", "z1")];
const HOST_DB: &[(&str, &str)] = &[("host", "d"), ("rack", "r2"), ("dedicated", "db")];

#[test]
fn prefers_the_agent_left_most_used() {
    let big = res(8000, 16384);
    check(
        &[
            (1, HOST_A, big, big),
            (2, HOST_B, big, res(2000, 4096)),
            (3, HOST_C, big, res(4000, 8192)),
        ],
        res(1000, 1024),
        &[],
        1,
        &[2],
    );
}

#[test]
fn equal_scores_go_to_the_lowest_id() {
    let size = res(4000, 4096);
    check(
        &[
            (7, HOST_A, size, size),
            (3, HOST_B, size, size),
            (5, HOST_C, size, size),
        ],
        res(1000, 1024),
        &[],
        1,
        &[3],
    );
}

#[test]
fn packs_one_agent_before_opening_the_next() {
    let size = res(2000, 2048);
    check(
        &[(1, HOST_A, size, size), (2, HOST_B, size, size)],
        res(1000, 1024),
        &[],
        5,
        &[1, 1, 2, 2],
    );
}

#[test]
fn nothing_fits_places_nothing() {
    let size = res(1000, 1024);
    check(&[(1, HOST_A, size, size)], res(1001, 1), &[], 1, &[]);
    check(&[(1, HOST_A, size, size)], res(1, 1025), &[], 1, &[]);
    check(&[], res(1, 1), &[], 1, &[]);
}

#[test]
fn value_constraints_route() {
    let size = res(4000, 4096);
    let agents: &[AgentFixture] = &[
        (1, HOST_A, size, size),
        (2, HOST_B, size, size),
        (3, HOST_C, size, size),
    ];
    check(
        agents,
        res(1000, 1024),
        &[value("zone", false, &["z2"])],
        2,
        &[2, 2],
    );
    check(
        agents,
        res(1000, 1024),
        &[value("rack", true, &["r1"])],
        1,
        &[3],
    );
    check(
        agents,
        res(1000, 1024),
        &[value("zone", false, &["z3"])],
        1,
        &[],
    );
}

#[test]
fn dedicated_agents_take_only_their_jobs() {
    let size = res(4000, 4096);
    let agents: &[AgentFixture] = &[(1, HOST_DB, size, size), (2, HOST_A, size, res(1000, 1024))];
    // The shared job fills agent 2 and never touches the idle dedicated agent.
    check(agents, res(1000, 1024), &[], 2, &[2]);
    check(
        agents,
        res(1000, 1024),
        &[value("dedicated", false, &["db"])],
        5,
        &[1, 1, 1, 1],
    );
    check(
        agents,
        res(1000, 1024),
        &[value("dedicated", false, &["web"])],
        1,
        &[],
    );
}

#[test]
fn limits_spread_the_job() {
    let size = res(8000, 8192);
    let agents: &[AgentFixture] = &[
        (1, HOST_A, size, size),
        (2, HOST_B, size, size),
        (3, HOST_C, size, size),
    ];
    check(agents, res(1000, 1024), &[limit("host", 1)], 5, &[1, 2, 3]);
    check(agents, res(1000, 1024), &[limit("rack", 1)], 5, &[1, 3]);
    check(
        agents,
        res(1000, 1024),
        &[limit("rack", 2)],
        5,
        &[1, 1, 3, 3],
    );
    check(
        agents,
        res(1000, 1024),
        &[limit("zone", 1), limit("host", 1)],
        5,
        &[1, 2],
    );
}

#[test]
fn limit_on_missing_attribute_is_infeasible() {
    let size = res(8000, 8192);
    check(
        &[(1, HOST_DB, size, size)],
        res(1, 1),
        &[value("dedicated", false, &["db"]), limit("zone", 9)],
        1,
        &[],
    );
}

#[test]
fn search_goes_past_the_soft_bound_when_nothing_is_feasible() {
    // Many tight agents in zone z1 and one in z2 behind them: the z2 task must still be placed.
    let mut index = PlacementIndex::new();
    let small = res(2000, 2048);
    for id in 0..(EXAMINED_SOFT_MAX * 4) {
        let pairs = attrs(&[("host", &format!("h{id}")), ("zone", "z1")]);
        index.upsert_agent(AgentId(id as u64), &pairs, small, small);
    }
    let big = res(64_000, 65_536);
    index.upsert_agent(
        AgentId(9999),
        &attrs(&[("host", "x"), ("zone", "z2")]),
        big,
        big,
    );
    let task = index.compile_parts(&res(1000, 1024), &[value("zone", false, &["z2"])]);
    assert_eq!(
        index.place(&task, &JobSpread::new(&task)),
        Some(AgentId(9999))
    );
}

#[test]
fn upsert_replaces_and_remove_returns_free() {
    let mut index = PlacementIndex::new();
    let size = res(4000, 4096);
    index.upsert_agent(AgentId(1), &attrs(HOST_A), size, size);
    index.consume(AgentId(1), &res(1000, 1000));
    assert_eq!(index.free(AgentId(1)), Some(res(3000, 3096)));
    // Re-registration as a dedicated agent moves it to the dedicated pool.
    index.upsert_agent(AgentId(1), &attrs(HOST_DB), size, res(2000, 2000));
    index.check_invariants();
    let plain = index.compile_parts(&res(1, 1), &[]);
    assert_eq!(index.pick(&plain, &JobSpread::default()), None);
    assert_eq!(index.attributes(AgentId(1)), Some(attrs(HOST_DB)));
    assert_eq!(index.agent_count(), 1);
    assert_eq!(index.remove_agent(AgentId(1)), Some(res(2000, 2000)));
    assert_eq!(index.remove_agent(AgentId(1)), None);
    assert_eq!(index.agent_count(), 0);
    index.check_invariants();
}

#[test]
fn lending_roundtrip_recreates_the_offer() {
    let mut lender = PlacementIndex::new();
    let size = res(4000, 4096);
    lender.upsert_agent(AgentId(1), &attrs(HOST_A), size, res(3000, 2048));
    lender.upsert_agent(AgentId(2), &attrs(HOST_B), size, size);
    let offers: Vec<AgentId> = lender.agents().map(|offer| offer.id).collect();
    assert_eq!(offers, [AgentId(1), AgentId(2)]);
    let lent = lender.take_agent_for_lending(AgentId(1)).unwrap();
    assert_eq!(lent.attributes, attrs(HOST_A));
    assert_eq!((lent.total, lent.free), (size, res(3000, 2048)));
    assert_eq!(lender.agent_count(), 1);

    let mut borrower = PlacementIndex::new();
    borrower.upsert_agent(lent.id, &lent.attributes, lent.total, lent.free);
    assert_eq!(borrower.free(AgentId(1)), Some(res(3000, 2048)));
    lender.check_invariants();
    borrower.check_invariants();
}

#[test]
fn spread_counts_agents_by_id() {
    let mut index = PlacementIndex::new();
    let size = res(4000, 4096);
    index.upsert_agent(AgentId(1), &attrs(HOST_A), size, size);
    index.upsert_agent(AgentId(2), &attrs(HOST_B), size, size);
    let task = index.compile_parts(&res(1, 1), &[limit("rack", 1)]);
    let mut spread = JobSpread::new(&task);
    assert!(spread.add(&index, AgentId(1)));
    assert_eq!(
        index.pick(&task, &spread),
        None,
        "both agents are on rack r1"
    );
    assert!(spread.remove(&index, AgentId(1)));
    assert!(index.pick(&task, &spread).is_some());
    assert!(!spread.add(&index, AgentId(42)));
}

// ---------------------------------------------------------------------------------------------
// Properties against a brute-force reference.

/// The reference's view of a job's constraints, on strings.
fn reference_feasible(
    need: &Resources,
    constraints: &[Constraint],
    agent: &Attributes,
    free: &Resources,
    job_agents: &[&Attributes],
) -> bool {
    let get = |attrs: &Attributes, name: &str| -> Option<String> {
        attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    if !free.contains(need) {
        return false;
    }
    let carries_dedicated = constraints.iter().any(|c| {
        matches!(c, Constraint::Value { attribute, negated: false, .. } if attribute == crate::model::DEDICATED_ATTRIBUTE)
    });
    if get(agent, crate::model::DEDICATED_ATTRIBUTE).is_some() && !carries_dedicated {
        return false;
    }
    constraints.iter().all(|constraint| match constraint {
        Constraint::Value {
            attribute,
            negated,
            values,
        } => {
            let listed = get(agent, attribute).is_some_and(|v| values.contains(&v));
            listed != *negated
        }
        Constraint::Limit { attribute, limit } => match get(agent, attribute) {
            None => false,
            Some(mine) => {
                let same = job_agents
                    .iter()
                    .filter(|other| get(other, attribute).as_ref() == Some(&mine))
                    .count();
                (same as u32) < *limit
            }
        },
    })
}

#[derive(Clone, Debug)]
struct AgentSpec {
    attributes: Attributes,
    total: Resources,
}

#[derive(Clone, Debug)]
struct JobSpec {
    need: Resources,
    constraints: Vec<Constraint>,
}

#[derive(Clone, Debug)]
enum Op {
    /// `batched`: one `place_batch` call rather than `count` calls of `place`.
    Place {
        job: usize,
        count: usize,
        batched: bool,
    },
    Remove {
        job: usize,
        which: usize,
    },
}

fn agent_spec(host: usize) -> impl Strategy<Value = AgentSpec> {
    (
        0..3usize,
        prop::option::of(0..2usize),
        prop::option::weighted(0.25, prop::sample::select(vec!["db", "web"])),
        1..=8u32,
        1..=8u32,
        0..3u16,
    )
        .prop_map(move |(rack, zone, dedicated, cpu_cores, ram_gib, ports)| {
            let mut attributes = vec![
                ("host".to_string(), format!("h{host}")),
                ("rack".to_string(), format!("r{rack}")),
            ];
            if let Some(zone) = zone {
                attributes.push(("zone".to_string(), format!("z{zone}")));
            }
            if let Some(dedicated) = dedicated {
                attributes.push(("dedicated".to_string(), dedicated.to_string()));
            }
            AgentSpec {
                attributes,
                total: Resources {
                    cpu_millis: cpu_cores * 1000,
                    ram_mib: ram_gib * 1024,
                    disk_mib: 1000,
                    ports,
                },
            }
        })
}

fn constraint() -> impl Strategy<Value = Constraint> {
    prop_oneof![
        (
            any::<bool>(),
            prop::sample::subsequence(vec!["z0", "z1", "z2"], 0..=2)
        )
            .prop_map(|(negated, values)| value("zone", negated, &values)),
        (
            any::<bool>(),
            prop::sample::subsequence(vec!["r0", "r1", "r2"], 0..=2)
        )
            .prop_map(|(negated, values)| value("rack", negated, &values)),
        prop::sample::subsequence(vec!["db", "web"], 1..=2).prop_map(|values| value(
            "dedicated",
            false,
            &values
        )),
        (prop::sample::select(vec!["host", "rack", "zone"]), 0..3u32)
            .prop_map(|(attribute, n)| limit(attribute, n)),
    ]
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    (
        100..3000u32,
        100..3000u32,
        0..200u32,
        0..2u16,
        prop::collection::vec(constraint(), 0..3),
    )
        .prop_map(
            |(cpu_millis, ram_mib, disk_mib, ports, constraints)| JobSpec {
                need: Resources {
                    cpu_millis,
                    ram_mib,
                    disk_mib,
                    ports,
                },
                constraints,
            },
        )
}

fn scenario() -> impl Strategy<Value = (Vec<AgentSpec>, Vec<JobSpec>, Vec<Op>)> {
    (1..12usize)
        .prop_flat_map(|agents| (0..agents).map(agent_spec).collect::<Vec<_>>())
        .prop_flat_map(|agents| {
            let ops = prop::collection::vec(
                prop_oneof![
                    3 => (0..4usize, 1..6usize, any::<bool>())
                        .prop_map(|(job, count, batched)| Op::Place { job, count, batched }),
                    1 => (0..4usize, any::<usize>()).prop_map(|(job, which)| Op::Remove { job, which }),
                ],
                1..30,
            );
            (Just(agents), prop::collection::vec(job_spec(), 4), ops)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// (a) no over-commit, (b) every placement satisfies its constraints and limits, (c) `None`
    /// (or a short batch) only when the brute-force scan finds no feasible agent. Through both
    /// `place` and `place_batch`.
    #[test]
    fn placements_match_the_reference((agents, jobs, ops) in scenario()) {
        let mut index = PlacementIndex::new();
        for (id, agent) in agents.iter().enumerate() {
            index.upsert_agent(AgentId(id as u64), &agent.attributes, agent.total, agent.total);
        }
        let compiled: Vec<CompiledTask> =
            jobs.iter().map(|job| index.compile_parts(&job.need, &job.constraints)).collect();
        let mut spreads: Vec<JobSpread> = compiled.iter().map(JobSpread::new).collect();
        // The model: every running task as (job, agent).
        let mut running: Vec<Vec<usize>> = vec![Vec::new(); jobs.len()];
        let mut model_free: Vec<Resources> = agents.iter().map(|a| a.total).collect();

        for op in ops {
            match op {
                Op::Place { job, count, batched } => {
                    let mut chosen_agents = Vec::new();
                    if batched {
                        index.place_batch(&compiled[job], &mut spreads[job], count, &mut chosen_agents);
                    } else {
                        for _ in 0..count {
                            let Some(agent) = index.place(&compiled[job], &spreads[job]) else { break };
                            prop_assert!(spreads[job].add(&index, agent));
                            chosen_agents.push(agent);
                        }
                    }
                    // Replay the choices on the model, checking each against the reference.
                    for AgentId(chosen) in &chosen_agents {
                        let chosen = *chosen as usize;
                        let job_agents: Vec<&Attributes> =
                            running[job].iter().map(|&a| &agents[a].attributes).collect();
                        prop_assert!(
                            reference_feasible(&jobs[job].need, &jobs[job].constraints,
                                &agents[chosen].attributes, &model_free[chosen], &job_agents),
                            "chose infeasible agent {}", chosen);
                        model_free[chosen] = model_free[chosen].minus(&jobs[job].need);
                        running[job].push(chosen);
                    }
                    // Fewer than asked: then nothing may be feasible any more.
                    if chosen_agents.len() < count {
                        let job_agents: Vec<&Attributes> =
                            running[job].iter().map(|&a| &agents[a].attributes).collect();
                        let feasible: Vec<usize> = (0..agents.len())
                            .filter(|&a| reference_feasible(
                                &jobs[job].need, &jobs[job].constraints,
                                &agents[a].attributes, &model_free[a], &job_agents))
                            .collect();
                        prop_assert!(feasible.is_empty(),
                            "placed {} of {} but {:?} are feasible", chosen_agents.len(), count, feasible);
                    }
                }
                Op::Remove { job, which } => {
                    if running[job].is_empty() {
                        continue;
                    }
                    let position = which % running[job].len();
                    let agent = running[job].remove(position);
                    index.release(AgentId(agent as u64), &jobs[job].need);
                    prop_assert!(spreads[job].remove(&index, AgentId(agent as u64)));
                    model_free[agent] = model_free[agent].plus(&jobs[job].need);
                }
            }
            for (a, free) in model_free.iter().enumerate() {
                prop_assert_eq!(index.free(AgentId(a as u64)), Some(*free));
                prop_assert!(agents[a].total.contains(free), "agent {} over-committed", a);
            }
            index.check_invariants();
        }
    }

    /// (d) consuming and releasing the same resources restores the index: every agent's free
    /// resources, and the membership of every bucket.
    #[test]
    fn consume_release_roundtrip(
        agents in (1..12usize).prop_flat_map(|n| (0..n).map(agent_spec).collect::<Vec<_>>()),
        takes in prop::collection::vec((any::<usize>(), 0..4000u32, 0..4000u32), 1..20),
    ) {
        let mut index = PlacementIndex::new();
        for (id, agent) in agents.iter().enumerate() {
            index.upsert_agent(AgentId(id as u64), &agent.attributes, agent.total, agent.total);
        }
        let before = canonical(&index);
        let mut taken = Vec::new();
        for (which, cpu_millis, ram_mib) in takes {
            let agent = AgentId((which % agents.len()) as u64);
            let free = index.free(agent).unwrap();
            let take = res(cpu_millis.min(free.cpu_millis), ram_mib.min(free.ram_mib));
            index.consume(agent, &take);
            taken.push((agent, take));
        }
        index.check_invariants();
        for (agent, take) in taken.iter().rev() {
            index.release(*agent, take);
        }
        index.check_invariants();
        prop_assert_eq!(canonical(&index), before);
    }
}

/// The index's observable state independent of the order inside buckets: each agent's offer and
/// each pool's buckets as sorted id lists.
fn canonical(index: &PlacementIndex) -> (Vec<AgentOffer>, Vec<Vec<Vec<u64>>>) {
    let offers = index.agents().collect();
    let pools = index
        .pools
        .iter()
        .map(|pool| {
            pool.buckets
                .iter()
                .map(|members| {
                    let mut ids: Vec<u64> = members
                        .iter()
                        .map(|&slot| index.slots[slot as usize].id.0)
                        .collect();
                    ids.sort_unstable();
                    ids
                })
                .collect()
        })
        .collect();
    (offers, pools)
}
