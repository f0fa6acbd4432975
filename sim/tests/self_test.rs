//! The simulation catches a bug planted in the real shard code: with
//! `InjectedBug::ForgetToChargeAgent` placement leaves agents' offers whole, and the
//! over-commit invariant must fail, naming itself, with the seed and a shrunk trace printed.

use borealis_core::Resources;
use borealis_shards::shard::InjectedBug;
use borealis_sim::{run_seed, JobConfig, RunOptions, Sim};

const INVARIANT: &str = "agent_not_overcommitted";

#[test]
fn forgetting_to_charge_agents_is_caught_with_its_seed() {
    let options = RunOptions {
        bug: Some(InjectedBug::ForgetToChargeAgent),
        ..RunOptions::default()
    };
    // Any seed that places a task trips it; look at the first few.
    let failure = (0..20)
        .find_map(|seed| run_seed(seed, &options, true).failure)
        .expect("the injected over-commit is detected");
    let report = failure.report();
    println!("{report}");
    assert_eq!(failure.violation.invariant, INVARIANT);
    assert_eq!(failure.shrunk_violation.invariant, INVARIANT);
    assert!(report.contains(&format!("seed {} FAILED", failure.seed)));
    assert!(report.contains(INVARIANT));
    assert!(
        failure.kept.len() < failure.trace.len(),
        "the trace was shrunk ({} of {} events)",
        failure.kept.len(),
        failure.trace.len()
    );
    // The shrunk trace replays to the same failure.
    let replayed = borealis_sim::replay(failure.seed, &options, &failure.kept);
    assert_eq!(
        replayed.failure.map(|(_, v)| v.invariant),
        Some(INVARIANT),
        "the printed trace reproduces the failure"
    );
}

#[test]
fn without_the_bug_the_same_seeds_pass_the_check() {
    for seed in 0..5 {
        let outcome = run_seed(seed, &RunOptions::default(), false);
        if let Some(f) = &outcome.failure {
            assert_ne!(f.violation.invariant, INVARIANT, "{}", f.report());
        }
    }
}

#[test]
fn the_builder_catches_it_at_the_first_placement() {
    let mut sim = Sim::new(1)
        .inject_bug(InjectedBug::ForgetToChargeAgent)
        .agent(
            "a1",
            Resources {
                cpu_millis: 1000,
                ram_mib: 1024,
                disk_mib: 1000,
                ports: 0,
            },
            &[],
        );
    let world = sim.world();
    let key: borealis_core::JobKey = "www/prod/x".parse().unwrap();
    let task = JobConfig::new(2, 1000, 128).task_config(&key);
    world.client_request(
        0,
        borealis_sim::clients::Request::Create {
            key: key.to_string(),
        },
        |e, id| e.create_job(id, 2, &task).to_vec(),
    );
    let result = world.advance(200);
    let violation = result.expect_err("two 1000-millicore tasks on a 1000-millicore agent");
    assert_eq!(violation.invariant, INVARIANT, "{violation}");
}
