//! Named scenarios through the builder API. Every step of each also checks every invariant
//! (a violation panics with the invariant's name).

use borealis_core::{Resources, TaskState};
use borealis_sim::{CrashPoint, Event, JobConfig, Sim, TaskPlan};

fn res(cpu_millis: u32, ram_mib: u32) -> Resources {
    Resources {
        cpu_millis,
        ram_mib,
        disk_mib: 10_000,
        ports: 0,
    }
}

fn running(states: &[(u32, TaskState)]) -> usize {
    states
        .iter()
        .filter(|(_, s)| *s == TaskState::Running)
        .count()
}

#[test]
fn a_job_placed_on_two_shards_agents() {
    // The seed picks which shard accepts each agent's connection: take one where they differ.
    let mut sim = (0..64)
        .map(|seed| {
            let mut sim = Sim::new(seed)
                .shards(2)
                .agent("a1", res(1000, 4096), &[("rack", "r1")])
                .agent("a2", res(1000, 4096), &[("rack", "r2")]);
            let homes = sim.agent_homes();
            (sim, homes)
        })
        .find(|(_, homes)| homes[0].1 != homes[1].1)
        .expect("some seed puts the agents on different shards")
        .0;
    // Each agent fits one instance: the job's owner places one on an agent of the other
    // shard by borrowing its offer.
    sim.create_job("www/prod/hello", JobConfig::new(2, 1000, 128))
        .unwrap();
    sim.run_until_quiet();
    let states = sim.job_states("www/prod/hello");
    assert_eq!(
        states,
        vec![(0, TaskState::Running), (1, TaskState::Running)]
    );
    assert_eq!(sim.agent_tasks("a1").len(), 1);
    assert_eq!(sim.agent_tasks("a2").len(), 1);
}

#[test]
fn agent_lost_tasks_lost_and_replaced() {
    let mut sim = Sim::new(2)
        .shards(2)
        .agent("a1", res(1000, 4096), &[])
        .agent("a2", res(1000, 4096), &[]);
    sim.create_job("www/prod/svc", JobConfig::new(1, 1000, 128).service())
        .unwrap();
    sim.run_until_quiet();
    let on_a1 = !sim.agent_tasks("a1").is_empty();
    let (lost, other) = if on_a1 { ("a1", "a2") } else { ("a2", "a1") };
    sim.disconnect_agent(lost, 20_000);
    sim.advance(2_000);
    let states = sim.job_states("www/prod/svc");
    assert!(
        states.contains(&(0, TaskState::Lost)),
        "the lost agent's task is LOST: {states:?}"
    );
    assert_eq!(running(&states), 1, "{states:?}");
    assert_eq!(
        sim.agent_tasks(other).len(),
        1,
        "replaced on the other agent"
    );
    // The agent comes back still running the old task: the scheduler kills it.
    sim.run_until_quiet();
    let old = sim.agent_tasks(lost);
    assert!(
        old.iter().all(|(_, t)| t.state == TaskState::Killed),
        "{old:?}"
    );
}

#[test]
fn crash_mid_round_keeps_acknowledged_creates() {
    // One shard: the round that reads a create is the round that commits it.
    let mut sim = Sim::new(3).agent("a1", res(4000, 8192), &[]);
    sim.create_job("www/prod/acked", JobConfig::new(2, 500, 128))
        .unwrap();
    sim.run_until_quiet();
    // A create in flight when the scheduler dies between its round's appends and commit: it
    // was never acknowledged, and it is gone.
    sim.send_create_job("www/prod/lost", JobConfig::new(1, 500, 128));
    sim.crash(0, CrashPoint::BeforeCommit, 1);
    // A create whose round committed before the crash: never acknowledged, but durable.
    sim.send_create_job("www/prod/durable", JobConfig::new(1, 500, 128));
    sim.crash(0, CrashPoint::AfterCommit, 2);
    // (and the scheduler came back with two shards: the log was re-partitioned)
    sim.run_until_quiet();
    let acked = sim.job_states("www/prod/acked");
    assert_eq!(running(&acked), 2, "{acked:?}");
    assert!(
        matches!(sim.job_status("www/prod/lost"), Err(e) if e.contains("UnknownJob")),
        "the uncommitted create is lost"
    );
    assert_eq!(running(&sim.job_states("www/prod/durable")), 1);
}

#[test]
fn restart_into_more_shards_repartitions_and_adopts() {
    let mut sim = Sim::new(4).agent("a1", res(8000, 16384), &[]);
    for i in 0..4 {
        sim.create_job(
            &format!("r{i}/prod/j"),
            JobConfig::new(2, 500, 128).service(),
        )
        .unwrap();
    }
    sim.run_until_quiet();
    let before: Vec<_> = sim
        .agent_tasks("a1")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    sim.crash(0, CrashPoint::BetweenRounds, 4);
    sim.run_until_quiet();
    let after: Vec<_> = sim
        .agent_tasks("a1")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(before, after, "the same tasks were adopted, none replaced");
    for i in 0..4 {
        assert_eq!(running(&sim.job_states(&format!("r{i}/prod/j"))), 2);
    }
}

#[test]
fn lost_acks_and_garbled_statuses_change_nothing() {
    let mut sim = Sim::new(5).shards(3).agent("a1", res(8000, 16384), &[]);
    sim.step(&Event::LoseAcks { agent: 0, count: 3 });
    sim.step(&Event::GarbleStatuses {
        agent: 0,
        duplicate: true,
        reorder: true,
        ms: 60_000,
    });
    sim.create_job(
        "batch/test/once",
        JobConfig::new(3, 500, 128)
            .max_task_failures(0)
            .plan(TaskPlan::FinishAfter(1_000)),
    )
    .unwrap();
    sim.advance(5_000);
    sim.run_until_quiet();
    let states = sim.job_states("batch/test/once");
    assert_eq!(
        states,
        vec![
            (0, TaskState::Finished),
            (1, TaskState::Finished),
            (2, TaskState::Finished)
        ]
    );
    // Every end was acknowledged in the end (terminal_statuses_acked held at quiet).
    assert!(sim.agent_tasks("a1").iter().all(|(_, t)| t.acked));
}

#[test]
fn kill_is_acknowledged_and_stays_killed_across_a_crash() {
    let mut sim = Sim::new(6).shards(2).agent("a1", res(4000, 8192), &[]);
    sim.create_job("www/prod/k", JobConfig::new(3, 500, 128).service())
        .unwrap();
    sim.run_until_quiet();
    sim.kill_job("www/prod/k", &[1]).unwrap();
    sim.run_until_quiet();
    sim.crash_and_recover();
    sim.run_until_quiet();
    let states = sim.job_states("www/prod/k");
    assert!(states.contains(&(1, TaskState::Killed)), "{states:?}");
    assert_eq!(running(&states), 2, "{states:?}");
}

/// What the agent measured of each ended task reaches the job's status with its end, stays
/// through repeated and garbled reports, and survives a crash (it is in the log); a task that
/// has not ended has none.
#[test]
fn ended_tasks_usage_reaches_their_status_and_survives_a_crash() {
    let mut sim = Sim::new(8).shards(2).agent("a1", res(4000, 8192), &[]);
    sim.step(&Event::LoseAcks { agent: 0, count: 2 });
    sim.step(&Event::GarbleStatuses {
        agent: 0,
        duplicate: true,
        reorder: false,
        ms: 60_000,
    });
    sim.create_job(
        "batch/test/used",
        JobConfig::new(2, 1000, 256)
            .max_task_failures(0)
            .plan(TaskPlan::FinishAfter(1_500)),
    )
    .unwrap();
    sim.create_job("www/prod/runs", JobConfig::new(1, 500, 128).service())
        .unwrap();
    sim.advance(5_000);
    sim.run_until_quiet();
    let measured: std::collections::BTreeMap<u64, borealis_core::TaskUsage> = sim
        .agent_tasks("a1")
        .into_iter()
        .filter_map(|(id, t)| Some((id.0, t.usage?)))
        .collect();
    let check = |sim: &mut Sim| {
        let status = sim.job_status("batch/test/used").unwrap();
        assert_eq!(status.tasks.len(), 2, "{:?}", status.tasks);
        for t in &status.tasks {
            assert_eq!(t.state, Some(TaskState::Finished), "{t:?}");
            let usage = t.usage.expect("a finished task's usage");
            assert_eq!(Some(&usage), measured.get(&t.task_id), "{t:?}");
            // About 1.5 s of running on one core at most; below its 256 MiB.
            assert!(usage.cpu_time_ms <= 1_600, "{usage:?}");
            assert!(usage.peak_memory_bytes > 0, "{usage:?}");
            assert!(usage.peak_memory_bytes < 256 << 20, "{usage:?}");
        }
        let live = sim.job_status("www/prod/runs").unwrap();
        assert!(live.tasks.iter().all(|t| t.usage.is_none()), "{live:?}");
    };
    check(&mut sim);
    sim.crash_and_recover();
    sim.run_until_quiet();
    check(&mut sim);
}

#[test]
fn ha_new_leader_adopts_the_running_tasks() {
    let mut sim = Sim::new(7)
        .ha()
        .shards(2)
        .agent("a1", res(4000, 8192), &[])
        .agent("a2", res(4000, 8192), &[]);
    sim.create_job("www/prod/ha", JobConfig::new(4, 500, 128).service())
        .unwrap();
    sim.run_until_quiet();
    let mut before: Vec<_> = ["a1", "a2"]
        .iter()
        .flat_map(|a| sim.agent_tasks(a))
        .map(|(id, _)| id)
        .collect();
    before.sort();
    sim.leader_loss(500, 1);
    sim.run_until_quiet();
    let status = sim.job_status("www/prod/ha").unwrap();
    let mut after: Vec<_> = status
        .tasks
        .iter()
        .filter(|t| t.state == Some(TaskState::Running))
        .map(|t| borealis_core::TaskId(t.task_id))
        .collect();
    after.sort();
    assert_eq!(before, after, "the new leader adopted every running task");
}

#[test]
fn ha_follower_refuses_clients_with_the_leaders_address() {
    let mut sim = Sim::new(8).ha().agent("a1", res(4000, 8192), &[]);
    sim.create_job("www/prod/x", JobConfig::new(1, 500, 128))
        .unwrap();
    sim.leader_loss(0, 1);
    // The client still talks to instance 0: refused and told where the leader is; the
    // builder retries there, as the CLI does.
    sim.run_until_quiet();
    assert!(sim.job_status("www/prod/x").is_ok());
    let refusals = sim.world().stats.requests_refused;
    assert!(refusals >= 1, "the follower refused at least once");
}

#[test]
fn the_same_seed_runs_the_same() {
    let options = borealis_sim::RunOptions::default();
    for seed in [1, 2, 3] {
        let a = borealis_sim::run_seed(seed, &options, false);
        let b = borealis_sim::run_seed(seed, &options, false);
        assert_eq!(a.stats, b.stats, "seed {seed}");
        assert_ne!(a.stats.fingerprint, 0);
    }
}
