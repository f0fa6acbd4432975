//! Issue 8's rules in the simulation, one named scenario each (seeded; every invariant is
//! checked after every step, and these scenarios check their own rule every 50 ms tick):
//! a rolling drain of 30% of the hosts never takes a job below its count or percentage SLA;
//! the coordinator gets at most one request at a time; a partition that heals leaves exactly
//! one active task per instance; a drain with a timeout finishes.
//!
//! Sim agents' hostnames are `<name>.sim`. The shards sweep (drains, progress) every 2 s.

use borealis_core::{
    Constraint, HostMode, MaintenanceOp, PartitionPolicy, Resources, SlaPolicy, TaskState,
};
use borealis_sim::{JobConfig, Sim};

const TICK_MS: u64 = 50;

fn res(cpu_millis: u32) -> Resources {
    Resources {
        cpu_millis,
        ram_mib: 4096,
        disk_mib: 10_000,
        ports: 0,
    }
}

/// At most one instance of the job per host.
fn one_per_host() -> Constraint {
    Constraint::Limit {
        attribute: "host".into(),
        limit: 1,
    }
}

fn cluster(seed: u64, agents: usize, shards: usize) -> Sim {
    let mut sim = Sim::new(seed).shards(shards);
    for i in 0..agents {
        sim = sim.agent(&format!("h{i}"), res(4000), &[]);
    }
    sim
}

/// Instances whose current task has been RUNNING for at least `duration_ms`, by job.
fn active(sim: &mut Sim, job: &str, duration_ms: u64) -> u32 {
    let now_us = sim.now_ms() * 1000;
    let audits = sim.audits();
    let acting = audits
        .iter()
        .find(|i| i.acting())
        .expect("one acting instance");
    acting
        .shards
        .iter()
        .flat_map(|s| s.tasks.iter())
        .filter(|t| t.current && t.job.to_string() == job)
        .filter(|t| {
            t.running_since_us
                .is_some_and(|since| now_us.saturating_sub(since) >= duration_ms * 1000)
        })
        .count() as u32
}

/// Active tasks on `host`.
fn tasks_on(sim: &mut Sim, host: &str) -> usize {
    sim.audits()
        .iter()
        .filter(|i| i.acting())
        .flat_map(|i| i.shards.iter())
        .flat_map(|s| s.tasks.iter())
        .filter(|t| !t.state.is_terminal() && t.hostname.as_deref() == Some(host))
        .count()
}

fn host_mode(sim: &mut Sim, host: &str) -> (HostMode, u32, bool) {
    let status = sim
        .host_maintenance(MaintenanceOp::Status, &[host], 0)
        .expect("status");
    (status[0].mode, status[0].active_tasks, status[0].forced)
}

/// Advances tick by tick until `host` is DRAINED (at most `limit_ms`), calling `check` at
/// every tick.
fn drain_until_drained(sim: &mut Sim, host: &str, limit_ms: u64, mut check: impl FnMut(&mut Sim)) {
    let mut waited = 0;
    loop {
        sim.advance(TICK_MS);
        waited += TICK_MS;
        check(sim);
        if waited % 1000 == 0 && host_mode(sim, host).0 == HostMode::Drained {
            return;
        }
        assert!(
            waited < limit_ms,
            "{host} not DRAINED within {limit_ms} ms: {:?}",
            host_mode(sim, host)
        );
    }
}

#[test]
fn rolling_drain_of_30_percent_keeps_every_count_and_percentage_sla() {
    let mut waited_for_sla = false;
    for seed in 0..6 {
        let mut sim = cluster(seed, 10, 3);
        let count = JobConfig::new(5, 500, 256)
            .service()
            .constraint(one_per_host())
            .sla(SlaPolicy::Count {
                count: 4,
                duration_secs: 3,
            });
        let percentage = JobConfig::new(5, 500, 256)
            .service()
            .constraint(one_per_host())
            .sla(SlaPolicy::Percentage {
                percentage_millis: 60_000,
                duration_secs: 3,
            });
        sim.create_job("www/prod/count", count).unwrap();
        sim.create_job("www/prod/pct", percentage).unwrap();
        sim.advance(5_000);
        assert_eq!(active(&mut sim, "www/prod/count", 3_000), 5);
        assert_eq!(active(&mut sim, "www/prod/pct", 3_000), 5);
        // 30% of the hosts, one after another: each drained, then back in service. The hosts
        // drained are the three that run the most of the two jobs.
        let mut on: Vec<(usize, String)> = (0..10)
            .map(|i| format!("h{i}.sim"))
            .map(|h| (tasks_on(&mut sim, &h), h))
            .collect();
        on.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let chosen: Vec<String> = on.iter().take(3).map(|(_, h)| h.clone()).collect();
        let moved: usize = on.iter().take(3).map(|(n, _)| n).sum();
        assert!(
            moved >= 3,
            "seed {seed}: the drained hosts run {moved} tasks"
        );
        let hosts: Vec<&str> = chosen.iter().map(String::as_str).collect();
        let status = sim
            .host_maintenance(MaintenanceOp::Drain, &hosts, 0)
            .unwrap();
        assert!(status.iter().all(|h| h.mode == HostMode::Draining));
        for host in &hosts {
            drain_until_drained(&mut sim, host, 120_000, |sim| {
                let c = active(sim, "www/prod/count", 3_000);
                assert!(c >= 4, "seed {seed}: the count SLA (4 active) fell to {c}");
                let p = active(sim, "www/prod/pct", 3_000);
                assert!(
                    p >= 3,
                    "seed {seed}: the percentage SLA (60% of 5) fell to {p}"
                );
                let status = sim.host_maintenance(MaintenanceOp::Status, &[], 0).unwrap();
                waited_for_sla |= status
                    .iter()
                    .flat_map(|h| h.blocked.iter())
                    .any(|b| b.reason.contains("SLA"));
            });
            // Nothing of either job is left there.
            assert_eq!(
                tasks_on(&mut sim, host),
                0,
                "seed {seed}: tasks left on drained {host}"
            );
        }
        let status = sim.host_maintenance(MaintenanceOp::End, &hosts, 0).unwrap();
        assert!(status.iter().all(|h| h.mode == HostMode::None));
        // Replacements that found no room while the hosts were out wait out their schedule
        // penalty (at most --max-schedule-penalty, 1 min) before they look again.
        sim.advance(61_000);
        sim.run_until_quiet();
        for job in ["www/prod/count", "www/prod/pct"] {
            let running = sim
                .job_states(job)
                .iter()
                .filter(|(_, s)| *s == TaskState::Running)
                .count();
            assert_eq!(
                running,
                5,
                "seed {seed}: {job} ends with every instance running: {:?}",
                sim.job_status(job).unwrap().tasks
            );
        }
    }
    assert!(
        waited_for_sla,
        "no drain of any seed ever waited for an SLA"
    );
}

#[test]
fn a_host_under_maintenance_gets_no_new_tasks() {
    let mut sim = cluster(1, 2, 2);
    sim.host_maintenance(MaintenanceOp::Start, &["h0.sim"], 0)
        .unwrap();
    sim.create_job("www/prod/new", JobConfig::new(4, 500, 128))
        .unwrap();
    sim.run_until_quiet();
    let audits = sim.audits();
    let hosts: Vec<String> = audits
        .iter()
        .flat_map(|i| i.shards.iter())
        .flat_map(|s| s.tasks.iter())
        .filter_map(|t| t.hostname.clone())
        .collect();
    assert_eq!(hosts.len(), 4);
    assert!(hosts.iter().all(|h| h == "h1.sim"), "{hosts:?}");
    assert_eq!(host_mode(&mut sim, "h0.sim").0, HostMode::Scheduled);
}

#[test]
fn the_coordinator_gets_one_request_at_a_time() {
    let mut sim = cluster(2, 6, 2)
        .coordinator(2, 300)
        .settings(|s| s.service.sla_kill_retry_min_ms = 500);
    let job = || {
        JobConfig::new(3, 500, 128)
            .service()
            .constraint(one_per_host())
            .sla(SlaPolicy::Coordinator {
                coordinator_url: "http://coordinator.sim/sla".into(),
                status_key: "drain".into(),
            })
    };
    sim.create_job("www/prod/store", job()).unwrap();
    sim.create_job("www/prod/cache", job()).unwrap();
    sim.advance(3_000);
    // Every host that runs something drains at once: the coordinator serializes them.
    let hosts = ["h0.sim", "h1.sim", "h2.sim"];
    sim.host_maintenance(MaintenanceOp::Drain, &hosts, 0)
        .unwrap();
    let mut waited = 0;
    while hosts
        .iter()
        .any(|h| host_mode(&mut sim, h).0 != HostMode::Drained)
    {
        sim.advance(500);
        waited += 500;
        assert!(
            waited < 180_000,
            "not drained: {:?}",
            sim.coordinator_stats()
        );
    }
    let stats = sim.coordinator_stats();
    assert_eq!(stats.max_in_flight_per_url, 1, "{stats:?}");
    assert!(stats.denied >= 2 && stats.allowed >= 1, "{stats:?}");
    sim.run_until_quiet();
}

#[test]
fn a_partition_that_heals_leaves_one_active_task_per_instance() {
    for seed in 0..3 {
        let mut sim = cluster(seed, 3, 2).settings(|s| s.service.partition_aware = true);
        let waits = JobConfig::new(2, 500, 128)
            .service()
            .constraint(one_per_host())
            .partition(PartitionPolicy {
                reschedule: true,
                delay_secs: 5,
            });
        sim.create_job("www/prod/waits", waits).unwrap();
        sim.advance(2_000);
        let before = sim.job_status("www/prod/waits").unwrap();
        let task = before
            .tasks
            .iter()
            .find(|t| t.state == Some(TaskState::Running))
            .cloned()
            .expect("a running task");
        let agent = task.agent_id.clone();
        // Short partition: back before the policy's delay; the same task runs on.
        sim.disconnect_agent(&agent, 1_000);
        sim.advance(200);
        let states = sim.job_states("www/prod/waits");
        assert!(
            states.contains(&(task.instance, TaskState::Partitioned)),
            "seed {seed}: {states:?}"
        );
        sim.advance(3_000);
        let after = sim.job_status("www/prod/waits").unwrap();
        let same = after
            .tasks
            .iter()
            .find(|t| t.task_id == task.task_id)
            .unwrap();
        assert_eq!(same.state, Some(TaskState::Running), "seed {seed}");
        // Long partition: LOST after 5 s and replaced; the agent's copy is killed on return.
        sim.disconnect_agent(&agent, 9_000);
        sim.advance(7_000);
        let lost = sim.job_status("www/prod/waits").unwrap();
        let old = lost
            .tasks
            .iter()
            .find(|t| t.task_id == task.task_id)
            .unwrap();
        assert_eq!(old.state, Some(TaskState::Lost), "seed {seed}");
        sim.run_until_quiet();
        let running: Vec<(u32, TaskState)> = sim
            .job_states("www/prod/waits")
            .into_iter()
            .filter(|(_, s)| !s.is_terminal())
            .collect();
        assert_eq!(running.len(), 2, "seed {seed}: {running:?}");
        assert!(running.iter().all(|(_, s)| *s == TaskState::Running));
        // The quiet invariants also held: no instance runs twice on the agents.
    }
}

#[test]
fn a_drain_with_a_timeout_finishes() {
    let mut sim = cluster(3, 4, 2);
    // Every instance must stay active: the SLA never lets one go.
    let strict = JobConfig::new(3, 500, 128)
        .service()
        .constraint(one_per_host())
        .sla(SlaPolicy::Count {
            count: 3,
            duration_secs: 1,
        });
    sim.create_job("www/prod/strict", strict).unwrap();
    sim.advance(3_000);
    let host = sim
        .job_status("www/prod/strict")
        .unwrap()
        .tasks
        .iter()
        .find(|t| t.state == Some(TaskState::Running))
        .map(|t| t.hostname.clone())
        .unwrap();
    sim.host_maintenance(MaintenanceOp::Drain, &[&host], 10)
        .unwrap();
    sim.advance(6_000);
    let (mode, active_tasks, forced) = host_mode(&mut sim, &host);
    assert_eq!((mode, active_tasks, forced), (HostMode::Draining, 1, false));
    let status = sim
        .host_maintenance(MaintenanceOp::Status, &[&host], 0)
        .unwrap();
    assert!(
        status[0]
            .blocked
            .iter()
            .any(|b| b.reason.contains("SLA count 3")),
        "{status:?}"
    );
    drain_until_drained(&mut sim, &host, 30_000, |_| {});
    let (_, _, forced) = host_mode(&mut sim, &host);
    assert!(forced, "the status says the drain was forced");
    sim.run_until_quiet();
}
