//! Placement throughput: 100,000 tasks of mixed constraints onto 1,000 and 10,000 agents.
//!
//! Run: `cargo bench -p borealis-bench --bench placement`. Each measured iteration starts from a
//! fresh copy of the cluster (copied outside the timing) and places every job the way a shard
//! round does: compile the job once, then `place_batch` its instances. Before timing, one run is
//! verified on the workload's strings (all tasks placed, nothing over-committed, every
//! constraint kept), so the number measures correct placements.
//!
//! Shapes: `place_batch` (one batch per job, what a shard round does), `place_batch_tiers_quotas`
//! (the same with each job's tier resolved and validated and production jobs checked against
//! and charged to their role's quota, as a shard admits them), and
//! `place_interleaved` (one `place` call per task, round-robin over jobs: the cost without the
//! batch's parking of rejected agents, and with jobs competing for the same agents).

use std::time::Duration;

use borealis_bench::placement::{
    build_index, flatten, place_all, place_all_with_policy, place_interleaved, quotas_for, verify,
    workload,
};
use borealis_core::placement::{AgentId, JobSpread, PlacementIndex};
use borealis_core::Constraint;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TASK_COUNT: usize = 100_000;
const SEED: u64 = 0x_b0_7e_a1_15;

fn placement(c: &mut Criterion) {
    let mut group = c.benchmark_group("placement");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(TASK_COUNT as u64));
    for agent_count in [1_000, 10_000] {
        let workload = workload(agent_count, TASK_COUNT, SEED);
        let prototype = build_index(&workload);

        let mut checked = prototype.clone();
        let mut placed = Vec::with_capacity(TASK_COUNT);
        place_all(&mut checked, &workload, &mut placed);
        if let Err(why) = verify(&workload, &placed) {
            panic!("placement onto {agent_count} agents is wrong, not timing it: {why}");
        }
        checked.check_invariants();

        group.bench_with_input(
            BenchmarkId::new("place_batch", format!("{agent_count}_agents")),
            &workload,
            |b, workload| {
                b.iter_batched_ref(
                    || prototype.clone(),
                    |index| place_all(index, workload, &mut placed),
                    BatchSize::LargeInput,
                );
            },
        );
        assert_eq!(placed.len(), TASK_COUNT, "a timed run placed fewer tasks");

        // The same placements with tiers and quotas on (issue 7's admission per job).
        let tiers = borealis_core::tier::TierConfig::default();
        let quotas = quotas_for(&workload);
        let mut checked = prototype.clone();
        let ledger = place_all_with_policy(&mut checked, &workload, &tiers, &quotas, &mut placed);
        if let Err(why) = verify(&workload, &placed) {
            panic!("placement with tiers and quotas onto {agent_count} agents is wrong: {why}");
        }
        assert!(ledger.iter().count() > 0, "production jobs were charged");
        group.bench_with_input(
            BenchmarkId::new("place_batch_tiers_quotas", format!("{agent_count}_agents")),
            &workload,
            |b, workload| {
                b.iter_batched_ref(
                    || prototype.clone(),
                    |index| place_all_with_policy(index, workload, &tiers, &quotas, &mut placed),
                    BatchSize::LargeInput,
                );
            },
        );
        assert_eq!(placed.len(), TASK_COUNT, "a timed run placed fewer tasks");

        let mut checked = prototype.clone();
        let mut per_job = Vec::new();
        place_interleaved(&mut checked, &workload, &mut per_job);
        if let Err(why) = verify(&workload, &flatten(&per_job)) {
            panic!(
                "interleaved placement onto {agent_count} agents is wrong, not timing it: {why}"
            );
        }
        group.bench_with_input(
            BenchmarkId::new("place_interleaved", format!("{agent_count}_agents")),
            &workload,
            |b, workload| {
                b.iter_batched_ref(
                    || prototype.clone(),
                    |index| place_interleaved(index, workload, &mut per_job),
                    BatchSize::LargeInput,
                );
            },
        );
    }
    group.finish();
}

/// Aurora gives every job an implicit `host` limit of 1, so one large job spread over thousands
/// of hosts is the common case, and the one where a naive search turns quadratic: its own
/// earlier hosts are the tightest, so scanned first, and all rejected.
fn one_per_host_job(c: &mut Criterion) {
    const INSTANCES: usize = 5_000;
    let mut group = c.benchmark_group("placement");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(INSTANCES as u64));
    let workload = workload(10_000, TASK_COUNT, SEED);
    let prototype = build_index(&workload);
    let job = &workload.jobs[0];
    let host_limit = [Constraint::Limit {
        attribute: "host".to_string(),
        limit: 1,
    }];
    let run = |index: &mut PlacementIndex, placed: &mut Vec<AgentId>| {
        placed.clear();
        let task = index.compile_parts(&job.resources, &host_limit);
        let mut spread = JobSpread::new(&task);
        index.place_batch(&task, &mut spread, INSTANCES, placed)
    };
    let mut checked = prototype.clone();
    let mut placed = Vec::with_capacity(INSTANCES);
    assert_eq!(run(&mut checked, &mut placed), INSTANCES);
    let mut hosts = placed.clone();
    hosts.sort_unstable();
    hosts.dedup();
    assert_eq!(hosts.len(), INSTANCES, "one instance per host");
    checked.check_invariants();
    group.bench_function("one_per_host_job_5000/10000_agents", |b| {
        b.iter_batched_ref(
            || prototype.clone(),
            |index| run(index, &mut placed),
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, placement, one_per_host_job);
criterion_main!(benches);
