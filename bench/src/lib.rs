//! Workloads for the benchmarks in `benches/`, and the checks that a benchmark run did what it
//! claims before it is timed. Deterministic: every workload comes from a seed.

pub mod placement {
    //! A cluster of agents with host/rack/zone attributes (some dedicated) and a stream of jobs
    //! with mixed constraints, sized so that every task fits.

    use borealis_core::placement::{AgentId, JobSpread, PlacementIndex};
    use borealis_core::{Attributes, Constraint, Resources, DEDICATED_ATTRIBUTE};

    /// Instances per job: jobs are placed with one `place_batch` each.
    pub const INSTANCES_PER_JOB: usize = 50;
    /// Hosts per rack; racks map onto three zones.
    pub const HOSTS_PER_RACK: usize = 40;
    pub const ZONE_COUNT: usize = 3;
    /// One agent in this many is dedicated (alternately to `db` and `gpu`).
    pub const DEDICATED_EVERY: usize = 20;
    /// Share of capacity (cpu and ram) the tasks ask for, in percent. High enough that the index
    /// must skip full agents, low enough that every task fits despite fragmentation.
    pub const FILL_PERCENT: u64 = 50;

    /// SplitMix64: a tiny, seeded, reproducible generator (no dependency, no global state).
    #[derive(Clone, Debug)]
    pub struct SplitMix64(u64);

    impl SplitMix64 {
        pub fn new(seed: u64) -> SplitMix64 {
            SplitMix64(seed)
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform in `0..bound` (bias negligible for the small bounds used here).
        pub fn below(&mut self, bound: u64) -> u64 {
            self.next_u64() % bound
        }
    }

    #[derive(Clone, Debug)]
    pub struct AgentSpec {
        pub id: AgentId,
        pub attributes: Attributes,
        pub total: Resources,
    }

    /// What kind of constraints a job carries; the mix is fixed by `JobKind::for_job`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum JobKind {
        Plain,
        InZone,
        NotOnRacks,
        TwoPerRack,
        OnePerHost,
        ZoneOnePerHost,
        Dedicated,
    }

    impl JobKind {
        /// Out of every 20 jobs: 8 plain, 3 in one zone, 3 avoiding two racks, 2 at most two per
        /// rack, 2 at most one per host, 1 in one zone and one per host, 1 dedicated.
        fn for_job(job: usize) -> JobKind {
            match job % 20 {
                0..=7 => JobKind::Plain,
                8..=10 => JobKind::InZone,
                11..=13 => JobKind::NotOnRacks,
                14 | 15 => JobKind::TwoPerRack,
                16 | 17 => JobKind::OnePerHost,
                18 => JobKind::ZoneOnePerHost,
                _ => JobKind::Dedicated,
            }
        }
    }

    #[derive(Clone, Debug)]
    pub struct JobSpec {
        pub kind: JobKind,
        pub resources: Resources,
        pub constraints: Vec<Constraint>,
        pub instances: usize,
    }

    #[derive(Clone, Debug)]
    pub struct Workload {
        pub agents: Vec<AgentSpec>,
        pub jobs: Vec<JobSpec>,
    }

    impl Workload {
        pub fn task_count(&self) -> usize {
            self.jobs.iter().map(|job| job.instances).sum()
        }
    }

    fn attribute(name: &str, value: String) -> (String, String) {
        (name.to_string(), value)
    }

    fn value(attribute: &str, negated: bool, values: Vec<String>) -> Constraint {
        Constraint::Value {
            attribute: attribute.to_string(),
            negated,
            values,
        }
    }

    fn limit(attribute: &str, limit: u32) -> Constraint {
        Constraint::Limit {
            attribute: attribute.to_string(),
            limit,
        }
    }

    /// `agent_count` agents and `task_count` tasks (a multiple of [`INSTANCES_PER_JOB`]).
    pub fn workload(agent_count: usize, task_count: usize, seed: u64) -> Workload {
        assert!(task_count.is_multiple_of(INSTANCES_PER_JOB));
        let mut rng = SplitMix64::new(seed);
        let rack_count = agent_count.div_ceil(HOSTS_PER_RACK);
        let mut agents = Vec::with_capacity(agent_count);
        for host in 0..agent_count {
            let rack = host / HOSTS_PER_RACK;
            let size = 1 + rng.below(4) as u32; // 16, 32, 48 or 64 cores
            let ram_per_core_gib = 2 + rng.below(5) as u32; // 2..=6 GiB per core
            let mut attributes = vec![
                attribute("host", format!("host-{host}")),
                attribute("rack", format!("rack-{rack}")),
                attribute("zone", format!("zone-{}", rack % ZONE_COUNT)),
            ];
            if host % DEDICATED_EVERY == DEDICATED_EVERY - 1 {
                let pool = if (host / DEDICATED_EVERY).is_multiple_of(2) {
                    "db"
                } else {
                    "gpu"
                };
                attributes.push(attribute(DEDICATED_ATTRIBUTE, pool.to_string()));
            }
            agents.push(AgentSpec {
                id: AgentId(host as u64),
                attributes,
                total: Resources {
                    cpu_millis: size * 16_000,
                    ram_mib: size * 16 * ram_per_core_gib * 1024,
                    disk_mib: 1 << 20,
                    ports: 1000,
                },
            });
        }

        // Size tasks so the whole workload asks for FILL_PERCENT of the cluster in cpu and ram.
        let cpu_total: u64 = agents.iter().map(|a| u64::from(a.total.cpu_millis)).sum();
        let ram_total: u64 = agents.iter().map(|a| u64::from(a.total.ram_mib)).sum();
        // Task sizes are base * {1, 2, 3, 4} / 2, whose mean is 1.25 * base.
        let cpu_base = cpu_total * FILL_PERCENT / 100 * 4 / 5 / task_count as u64;
        let ram_base = ram_total * FILL_PERCENT / 100 * 4 / 5 / task_count as u64;

        let job_count = task_count / INSTANCES_PER_JOB;
        let mut jobs = Vec::with_capacity(job_count);
        for job in 0..job_count {
            let kind = JobKind::for_job(job);
            let cpu_factor = 1 + rng.below(4);
            let ram_factor = 1 + rng.below(4);
            let zone = format!("zone-{}", rng.below(ZONE_COUNT as u64));
            let racks = vec![
                format!("rack-{}", rng.below(rack_count as u64)),
                format!("rack-{}", rng.below(rack_count as u64)),
            ];
            let dedicated = if job % 40 == 19 { "db" } else { "gpu" };
            let constraints = match kind {
                JobKind::Plain => vec![],
                JobKind::InZone => vec![value("zone", false, vec![zone])],
                JobKind::NotOnRacks => vec![value("rack", true, racks)],
                JobKind::TwoPerRack => vec![limit("rack", 2)],
                JobKind::OnePerHost => vec![limit("host", 1)],
                JobKind::ZoneOnePerHost => vec![value("zone", false, vec![zone]), limit("host", 1)],
                JobKind::Dedicated => vec![value(
                    DEDICATED_ATTRIBUTE,
                    false,
                    vec![dedicated.to_string()],
                )],
            };
            jobs.push(JobSpec {
                kind,
                resources: Resources {
                    cpu_millis: (cpu_base * cpu_factor / 2).max(1) as u32,
                    ram_mib: (ram_base * ram_factor / 2).max(1) as u32,
                    disk_mib: 100,
                    ports: 1,
                },
                constraints,
                instances: INSTANCES_PER_JOB,
            });
        }
        Workload { agents, jobs }
    }

    /// An index holding every agent of the workload, all resources free.
    pub fn build_index(workload: &Workload) -> PlacementIndex {
        let mut index = PlacementIndex::new();
        for agent in &workload.agents {
            index.upsert_agent(agent.id, &agent.attributes, agent.total, agent.total);
        }
        index
    }

    /// Places every job in order, the way a shard's round does: compile once per job, then one
    /// batch for its instances. Returns the chosen agents, job after job.
    pub fn place_all(index: &mut PlacementIndex, workload: &Workload, placed: &mut Vec<AgentId>) {
        placed.clear();
        for job in &workload.jobs {
            let task = index.compile_parts(&job.resources, &job.constraints);
            let mut spread = JobSpread::new(&task);
            index.place_batch(&task, &mut spread, job.instances, placed);
        }
    }

    /// Roles the policy workload spreads its jobs over.
    pub const POLICY_ROLES: usize = 16;

    /// [`place_all`] with issue 7's admission policy on, as a shard applies it to each job
    /// before placing it: the job's tier resolved and validated against the tier config
    /// (every other job production in `preferred`, the rest in the config's default), and each
    /// production job checked against its role's quota and charged to a ledger. Every quota is
    /// large enough that all jobs are admitted, so the placements equal `place_all`'s.
    pub fn place_all_with_policy(
        index: &mut PlacementIndex,
        workload: &Workload,
        tiers: &borealis_core::tier::TierConfig,
        quotas: &[Resources],
        placed: &mut Vec<AgentId>,
    ) -> borealis_core::quota::QuotaLedger {
        use borealis_core::quota;
        placed.clear();
        let roles: Vec<String> = (0..POLICY_ROLES).map(|r| format!("role{r}")).collect();
        let mut ledger = quota::QuotaLedger::new();
        for (i, job) in workload.jobs.iter().enumerate() {
            let production = i % 2 == 0;
            let tier = tiers.resolve(None, production);
            tiers
                .validate(tier, production)
                .expect("the workload's tiers are valid");
            let role = &roles[i % POLICY_ROLES];
            if production && !tiers.settings(tier).preemptible {
                let demand = quota::job_demand(&job.resources, job.instances as u32);
                ledger
                    .check(role, Some(&quotas[i % POLICY_ROLES]), &demand)
                    .expect("the quotas admit the workload");
                ledger.add(role, &demand);
            }
            let task = index.compile_parts(&job.resources, &job.constraints);
            let mut spread = JobSpread::new(&task);
            index.place_batch(&task, &mut spread, job.instances, placed);
        }
        ledger
    }

    /// Quotas that admit all of `workload`'s production jobs (twice what they ask for).
    pub fn quotas_for(workload: &Workload) -> Vec<Resources> {
        let mut quotas = vec![Resources::ZERO; POLICY_ROLES];
        for (i, job) in workload.jobs.iter().enumerate() {
            let demand = borealis_core::quota::job_demand(&job.resources, job.instances as u32);
            let q = &mut quotas[i % POLICY_ROLES];
            *q = q.plus(&demand).plus(&demand);
        }
        quotas
    }

    /// Places the same tasks one `place` call at a time, round-robin over the jobs (one instance
    /// of each job per round), the way a shard that interleaves jobs would. `placed[job]`
    /// receives the job's agents; [`flatten`] turns them into [`verify`]'s order.
    pub fn place_interleaved(
        index: &mut PlacementIndex,
        workload: &Workload,
        placed: &mut Vec<Vec<AgentId>>,
    ) {
        let mut jobs: Vec<_> = workload
            .jobs
            .iter()
            .map(|job| {
                let task = index.compile_parts(&job.resources, &job.constraints);
                let spread = JobSpread::new(&task);
                (task, spread)
            })
            .collect();
        placed.clear();
        placed.resize_with(jobs.len(), Vec::new);
        let rounds = workload
            .jobs
            .iter()
            .map(|job| job.instances)
            .max()
            .unwrap_or(0);
        for round in 0..rounds {
            for (job, (task, spread)) in jobs.iter_mut().enumerate() {
                if round >= workload.jobs[job].instances {
                    continue;
                }
                if let Some(agent) = index.place(task, spread) {
                    spread.add(index, agent);
                    placed[job].push(agent);
                }
            }
        }
    }

    /// Per-job placements, job after job, as [`place_all`] produces them. A job that placed
    /// fewer than its instances makes the total short, which [`verify`] reports.
    pub fn flatten(per_job: &[Vec<AgentId>]) -> Vec<AgentId> {
        per_job.iter().flatten().copied().collect()
    }

    /// Checks a run of [`place_all`] from scratch, on the workload's strings rather than on the
    /// index: every task placed, no agent over-committed, every constraint and limit kept.
    pub fn verify(workload: &Workload, placed: &[AgentId]) -> Result<(), String> {
        if placed.len() != workload.task_count() {
            return Err(format!(
                "placed {} of {} tasks",
                placed.len(),
                workload.task_count()
            ));
        }
        let mut used = vec![Resources::ZERO; workload.agents.len()];
        let mut next = 0;
        for (job_index, job) in workload.jobs.iter().enumerate() {
            let agents = &placed[next..next + job.instances];
            next += job.instances;
            for agent in agents {
                let spec = &workload.agents[agent.0 as usize];
                used[agent.0 as usize] = used[agent.0 as usize].plus(&job.resources);
                check_constraints(job, spec, agents, workload)
                    .map_err(|why| format!("job {job_index} on agent {}: {why}", agent.0))?;
            }
        }
        for (spec, used) in workload.agents.iter().zip(&used) {
            if !spec.total.contains(used) {
                return Err(format!(
                    "agent {} over-committed: {used:?} > {:?}",
                    spec.id.0, spec.total
                ));
            }
        }
        Ok(())
    }

    fn get<'a>(attributes: &'a Attributes, name: &str) -> Option<&'a str> {
        attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn check_constraints(
        job: &JobSpec,
        agent: &AgentSpec,
        job_agents: &[AgentId],
        workload: &Workload,
    ) -> Result<(), String> {
        let dedicated_job = job.kind == JobKind::Dedicated;
        if get(&agent.attributes, DEDICATED_ATTRIBUTE).is_some() != dedicated_job {
            return Err("dedicated rule broken".to_string());
        }
        for constraint in &job.constraints {
            match constraint {
                Constraint::Value {
                    attribute,
                    negated,
                    values,
                } => {
                    let listed = get(&agent.attributes, attribute)
                        .is_some_and(|mine| values.iter().any(|v| v == mine));
                    if listed == *negated {
                        return Err(format!("{constraint:?} broken"));
                    }
                }
                Constraint::Limit { attribute, limit } => {
                    let mine =
                        get(&agent.attributes, attribute).ok_or("limit attribute missing")?;
                    let same = job_agents
                        .iter()
                        .filter(|other| {
                            get(&workload.agents[other.0 as usize].attributes, attribute)
                                == Some(mine)
                        })
                        .count();
                    if same > *limit as usize {
                        return Err(format!("{constraint:?} broken: {same} on {mine}"));
                    }
                }
            }
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn small_workload_places_everything_correctly() {
            for (agent_count, task_count) in [(1000, 10_000), (2000, 20_000)] {
                let workload = workload(agent_count, task_count, 7);
                let mut index = build_index(&workload);
                let mut placed = Vec::new();
                place_all(&mut index, &workload, &mut placed);
                verify(&workload, &placed).unwrap();
                index.check_invariants();

                let mut index = build_index(&workload);
                let mut per_job = Vec::new();
                place_interleaved(&mut index, &workload, &mut per_job);
                verify(&workload, &flatten(&per_job)).unwrap();
                index.check_invariants();
            }
        }

        #[test]
        fn verify_catches_a_broken_run() {
            let workload = workload(200, 1000, 7);
            let mut index = build_index(&workload);
            let mut placed = Vec::new();
            place_all(&mut index, &workload, &mut placed);
            let mut short = placed.clone();
            short.pop();
            assert!(verify(&workload, &short).is_err());
            // Everything on agent 0 over-commits it and breaks the limits.
            let piled = vec![AgentId(0); placed.len()];
            assert!(verify(&workload, &piled).is_err());
        }
    }
}
