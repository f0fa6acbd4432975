//! High availability end to end: a real etcd (`/usr/bin/etcd`, from scripts/setup.sh) on
//! loopback, three real `borealis scheduler` processes campaigning through it, and agents that
//! list all three. Build the binary first: `cargo build -p borealis`.
//!
//! Timing: leases of 2 s (`--etcd-lease-ttl 2s`) and a reconciliation grace of 3 s. Every wait
//! is bounded; the measured failover times are printed (`cargo test -- --nocapture`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use borealis_net::views::{ErrorCode, OwnedMessage};
use borealis_tests::{
    field, holds_for, instance, job_toml, processes_with, raw_list_jobs, running_by_instance,
    sandboxes_of, tasks, tasks_in, AgentSpec, HaCluster,
};
use serde_json::Value;

/// The lease TTL the schedulers run with.
const TTL: Duration = Duration::from_secs(2);
/// How much later than the TTL a failover may complete: etcd expires leases on its own
/// schedule (checked every 500 ms), then the survivors campaign and a follower hears of the
/// winner from a watch.
const FAILOVER_MARGIN: Duration = Duration::from_secs(6);
/// The reconciliation grace the schedulers run with.
const GRACE: Duration = Duration::from_secs(3);

fn ha_flags() -> [&'static str; 4] {
    ["--etcd-lease-ttl", "2s", "--reconciliation-grace", "3s"]
}

/// Something unique to put in task commands, to find their processes.
fn marker(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("ha-{test}-{}-{nanos}", std::process::id())
}

/// The job keys of a `job list --json`, sorted.
fn job_keys(jobs: &[Value]) -> Vec<String> {
    let mut keys: Vec<String> = jobs
        .iter()
        .map(|j| j["job_key"].as_str().unwrap_or_default().to_string())
        .collect();
    keys.sort();
    keys
}

/// Polls `job list --json` through `scheduler` until it lists exactly `expected` (bounded by
/// `within`); returns how long that took. Answers on the way that differ (an error, a partial
/// list right after a leader took over) are printed, not failures.
fn wait_jobs_listed(
    cluster: &HaCluster,
    scheduler: &str,
    expected: &[&str],
    within: Duration,
) -> Duration {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        let output = cluster.cli(scheduler, &["job", "list", "--json"]);
        let answer = if output.status.success() {
            match serde_json::from_slice::<Vec<Value>>(&output.stdout) {
                Ok(jobs) => {
                    let keys = job_keys(&jobs);
                    if keys == expected {
                        if !seen.is_empty() {
                            eprintln!(
                                "job list --scheduler {scheduler} became complete after {:?}; \
                                 before: {seen:#?}",
                                start.elapsed()
                            );
                        }
                        return start.elapsed();
                    }
                    format!("listed {keys:?}")
                }
                Err(e) => format!("not JSON: {e}"),
            }
        } else {
            borealis_tests::describe(&output)
        };
        let answer = format!("{:?}: {answer}", start.elapsed());
        if seen.last() != Some(&answer) {
            seen.push(answer);
        }
        if start.elapsed() >= within {
            panic!("job list never showed {expected:?} within {within:?}: {seen:#?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fails when an instance has more than one task that has not ended.
fn assert_one_live_task_per_instance(status: &Value) {
    let mut live: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for task in tasks(status) {
        let state = field(task, "state");
        if !matches!(state, "FINISHED" | "FAILED" | "KILLED" | "LOST") {
            live.entry(instance(task))
                .or_default()
                .push(field(task, "task_id"));
        }
    }
    for (instance, ids) in live {
        assert!(
            ids.len() <= 1,
            "instance {instance} has {} live tasks {ids:?}: {status:#}",
            ids.len()
        );
    }
}

#[test]
fn three_schedulers_one_leader_followers_redirect() {
    let mut cluster = HaCluster::start(3, &ha_flags());
    let (leader, took) = cluster.wait_settled_leader(Duration::from_secs(20));
    eprintln!("first election: scheduler {leader} leads after {took:?}");
    let codes = cluster.health_codes();
    assert_eq!(
        codes.iter().filter(|c| **c == Some(200)).count(),
        1,
        "{codes:?}"
    );
    assert_eq!(
        codes.iter().filter(|c| **c == Some(503)).count(),
        2,
        "{codes:?}"
    );
    let leader_addr = cluster.schedulers[leader].addr();
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    // A job created through a follower lands on the leader.
    let follower_addr = cluster.schedulers[followers[0]].addr();
    cluster.create_job(
        &follower_addr,
        "www/prod/redirected",
        &job_toml(1, "sleep 30", ""),
    );
    for scheduler in [&leader_addr, &follower_addr] {
        assert_eq!(
            job_keys(&cluster.list_json(scheduler)),
            ["www/prod/redirected"],
            "job list via {scheduler}"
        );
    }
    // Via the other follower, and via a list whose first address is a follower.
    let other_follower = cluster.schedulers[followers[1]].addr();
    assert_eq!(
        job_keys(&cluster.list_json(&other_follower)),
        ["www/prod/redirected"]
    );
    let list = format!("{other_follower},{follower_addr},{leader_addr}");
    assert_eq!(job_keys(&cluster.list_json(&list)), ["www/prod/redirected"]);

    // A raw request to a follower: NotLeader naming the leader. To the leader: the answer.
    for &f in &followers {
        match raw_list_jobs(&cluster.schedulers[f].addr()) {
            OwnedMessage::Error {
                code: ErrorCode::NotLeader,
                leader: Some(named),
                message,
            } => {
                assert_eq!(
                    named, leader_addr,
                    "follower {f} names the leader ({message})"
                );
            }
            other => panic!("follower {f} answered ListJobs with {other:?}"),
        }
    }
    match raw_list_jobs(&leader_addr) {
        OwnedMessage::JobList { jobs, .. } => assert_eq!(jobs.len(), 1, "{jobs:?}"),
        other => panic!("the leader answered ListJobs with {other:?}"),
    }
}

#[test]
fn leader_kill9_failover_adopts_running_tasks() {
    let mut cluster = HaCluster::start(3, &ha_flags());
    let (leader, _) = cluster.wait_settled_leader(Duration::from_secs(20));
    cluster.start_agent(AgentSpec::new("a1", "h1"), leader);
    cluster.start_agent(AgentSpec::new("a2", "h2"), leader);
    let all = cluster.all_addrs();

    let marker = marker("failover");
    let service = "www/prod/service";
    let adhoc = "www/prod/adhoc";
    cluster.create_job(
        &all,
        service,
        &job_toml(
            3,
            &format!(": {marker}; while true; do sleep 1; done"),
            "service = true\nfinalization_wait_secs = 1",
        ),
    );
    cluster.create_job(&all, adhoc, &job_toml(2, "echo done", ""));

    let running: BTreeMap<u64, String> = cluster.wait_for(
        &all,
        service,
        "3 RUNNING instances",
        Duration::from_secs(20),
        |status| {
            let by_instance = running_by_instance(status, 3)?;
            Some(
                by_instance
                    .into_iter()
                    .map(|(i, t)| (i, field(t, "task_id").to_string()))
                    .collect(),
            )
        },
    );
    cluster.wait_for(
        &all,
        adhoc,
        "2 FINISHED instances",
        Duration::from_secs(20),
        |status| (tasks_in(status, "FINISHED").len() == 2).then_some(()),
    );
    let service_processes = processes_with(&marker);
    assert_eq!(service_processes.len(), 3, "{service_processes:?}");
    let sandboxes_before: Vec<_> = cluster
        .agents
        .iter()
        .map(|a| (sandboxes_of(a, service), sandboxes_of(a, adhoc)))
        .collect();
    let service_sandboxes: usize = sandboxes_before.iter().map(|(s, _)| s.len()).sum();
    let adhoc_sandboxes: usize = sandboxes_before.iter().map(|(_, a)| a.len()).sum();
    assert_eq!((service_sandboxes, adhoc_sandboxes), (3, 2));

    // kill -9 the leader.
    let killed_at = Instant::now();
    cluster.schedulers[leader].proc.kill9();
    let (new_leader, failover) = cluster.wait_settled_leader(TTL + FAILOVER_MARGIN);
    assert_ne!(new_leader, leader);
    eprintln!(
        "failover: scheduler {leader} killed; scheduler {new_leader} leads after {failover:?} \
         (lease TTL {TTL:?})"
    );
    let codes = cluster.health_codes();
    assert_eq!(
        codes.iter().filter(|c| **c == Some(200)).count(),
        1,
        "{codes:?}"
    );
    let new_addr = cluster.schedulers[new_leader].addr();

    // The agents come back to the new leader within the grace, with their tasks.
    cluster.wait_agents_registered(new_leader, &[0, 1], GRACE + TTL + FAILOVER_MARGIN);
    eprintln!(
        "agents registered with the new leader {:?} after the kill",
        killed_at.elapsed()
    );
    wait_jobs_listed(&cluster, &all, &[adhoc, service], Duration::from_secs(5));

    // After the grace: the same tasks run, none was started again, nothing else runs.
    let settle = (killed_at + failover + GRACE + Duration::from_secs(1))
        .saturating_duration_since(Instant::now());
    std::thread::sleep(settle);
    holds_for(Duration::from_secs(3), Duration::from_millis(500), || {
        let status = cluster
            .try_status_json(&new_addr, service)
            .unwrap_or_else(|e| panic!("status of {service}: {e}"));
        assert_one_live_task_per_instance(&status);
        let by_instance = running_by_instance(&status, 3)
            .unwrap_or_else(|| panic!("not one RUNNING task per instance: {status:#}"));
        let ids: BTreeMap<u64, String> = by_instance
            .into_iter()
            .map(|(i, t)| (i, field(t, "task_id").to_string()))
            .collect();
        assert_eq!(
            ids, running,
            "the RUNNING tasks were adopted, not replaced: {status:#}"
        );
        assert_eq!(
            processes_with(&marker),
            service_processes,
            "the service's processes are the same three"
        );
        let adhoc_status = cluster
            .try_status_json(&new_addr, adhoc)
            .unwrap_or_else(|e| panic!("status of {adhoc}: {e}"));
        for task in tasks(&adhoc_status) {
            assert_eq!(
                field(task, "state"),
                "FINISHED",
                "the finished ad-hoc job runs again: {adhoc_status:#}"
            );
        }
        let sandboxes_now: Vec<_> = cluster
            .agents
            .iter()
            .map(|a| (sandboxes_of(a, service), sandboxes_of(a, adhoc)))
            .collect();
        assert_eq!(sandboxes_now, sandboxes_before, "no new sandbox");
    });
}

#[test]
fn etcd_down_means_no_leader_then_recovers() {
    let mut cluster = HaCluster::start(3, &ha_flags());
    let (leader, _) = cluster.wait_settled_leader(Duration::from_secs(20));
    let all = cluster.all_addrs();
    cluster.create_job(&all, "www/prod/before", &job_toml(1, "sleep 30", ""));
    cluster.create_job(&all, "www/test/also", &job_toml(2, "sleep 30", ""));

    // etcd stops answering: nobody may claim to lead.
    cluster.etcd.pause();
    let paused_at = Instant::now();
    let no_leader = cluster.wait_all_health(502, TTL + FAILOVER_MARGIN);
    eprintln!(
        "etcd paused (leader was scheduler {leader}): every /leaderhealth is 502 after \
         {no_leader:?}"
    );
    // And stays so while etcd is away, past the time the leader's lease would have run out.
    holds_for(
        TTL + Duration::from_secs(1),
        Duration::from_millis(250),
        || {
            let codes = cluster.health_codes();
            assert!(
                codes.iter().all(|c| *c == Some(502)),
                "a scheduler claims to know a leader while etcd is paused: {codes:?}"
            );
        },
    );
    let output = cluster.cli(&all, &["job", "list"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success() && stderr.trim().lines().count() == 1,
        "job list without a leader: {}",
        borealis_tests::describe(&output)
    );
    assert!(
        stderr.contains("no leader is known"),
        "job list without a leader: {stderr}"
    );

    // etcd back: one leader again, with the jobs.
    cluster.etcd.resume();
    let (new_leader, recovered) = cluster.wait_settled_leader(Duration::from_secs(20));
    eprintln!(
        "etcd resumed after {:?} paused: scheduler {new_leader} leads after {recovered:?}",
        paused_at.elapsed().saturating_sub(recovered)
    );
    wait_jobs_listed(
        &cluster,
        &all,
        &["www/prod/before", "www/test/also"],
        Duration::from_secs(5),
    );

    // etcd killed and restarted on the same data dir and ports: the same.
    cluster.etcd.kill();
    let no_leader = cluster.wait_all_health(502, TTL + FAILOVER_MARGIN);
    eprintln!("etcd killed: every /leaderhealth is 502 after {no_leader:?}");
    let restarted_at = Instant::now();
    cluster.etcd.restart();
    let (new_leader, recovered) = cluster.wait_settled_leader(Duration::from_secs(20));
    eprintln!(
        "etcd restarted: scheduler {new_leader} leads {recovered:?} after etcd is healthy again \
         ({:?} after the restart began)",
        restarted_at.elapsed()
    );
    wait_jobs_listed(
        &cluster,
        &all,
        &["www/prod/before", "www/test/also"],
        Duration::from_secs(5),
    );
}

/// One role per shard of a scheduler with `shards` shards (a role's quota lives on shard
/// `route_hash_str(role) % shards`).
fn roles_on_each_shard(shards: u64) -> Vec<String> {
    let mut roles: Vec<Option<String>> = vec![None; shards as usize];
    for i in 0.. {
        let role = format!("role{i}");
        let shard = (borealis_core::route_hash_str(&role) % shards) as usize;
        roles[shard].get_or_insert(role);
        if roles.iter().all(Option::is_some) {
            return roles.into_iter().flatten().collect();
        }
    }
    unreachable!()
}

/// `quota get ROLE --json` through `scheduler`, polled until it answers (bounded by `within`):
/// right after a failover the new leader's shards may not have taken the lead yet.
fn wait_quota(cluster: &HaCluster, scheduler: &str, role: &str, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        let output = cluster.cli(scheduler, &["quota", "get", role, "--json"]);
        if output.status.success() {
            return serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
                panic!(
                    "quota get --json is not JSON ({e}): {}",
                    borealis_tests::describe(&output)
                )
            });
        }
        if start.elapsed() >= within {
            panic!(
                "quota get {role} never answered within {within:?}: {}",
                borealis_tests::describe(&output)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn quotas_are_durable_in_etcd_across_a_failover() {
    let mut cluster = HaCluster::start(2, &ha_flags());
    let (leader, _) = cluster.wait_settled_leader(Duration::from_secs(20));
    let leader_addr = cluster.schedulers[leader].addr();
    // The schedulers run 2 shards: one role whose quota lives on each.
    let roles = roles_on_each_shard(2);
    let expected = |i: usize| serde_json::json!({"cpu": 0.5, "ram_mib": 256 * (i as u64 + 1), "disk_mib": 1024});
    for (i, role) in roles.iter().enumerate() {
        let ram = format!("{}MiB", 256 * (i + 1));
        cluster.cli_ok(
            &leader_addr,
            &[
                "quota", "set", role, "--cpu", "0.5", "--ram", &ram, "--disk", "1GiB",
            ],
        );
        let info = wait_quota(&cluster, &leader_addr, role, Duration::from_secs(5));
        assert_eq!(info["quota_set"], true, "{info}");
        assert_eq!(info["quota"], expected(i), "{info}");
    }

    // kill -9 the leader: its successor loads the quotas from etcd with the jobs.
    cluster.schedulers[leader].proc.kill9();
    let (new_leader, failover) = cluster.wait_settled_leader(TTL + FAILOVER_MARGIN);
    assert_ne!(new_leader, leader);
    eprintln!("quota failover: scheduler {new_leader} leads after {failover:?}");
    let new_addr = cluster.schedulers[new_leader].addr();
    for (i, role) in roles.iter().enumerate() {
        let info = wait_quota(&cluster, &new_addr, role, Duration::from_secs(10));
        assert_eq!(info["role"], role.as_str(), "{info}");
        assert_eq!(
            info["quota_set"], true,
            "the new leader lost the quota: {info}"
        );
        assert_eq!(info["quota"], expected(i), "{info}");
    }
    let unset = wait_quota(&cluster, &new_addr, "nobody", Duration::from_secs(5));
    assert_eq!(unset["quota_set"], false, "{unset}");

    // The loaded quota is the one enforced: 2 x 0.1 cpu fits in 0.5, 4 more do not.
    let role = &roles[0];
    cluster.create_job(
        &new_addr,
        &format!("{role}/prod/small"),
        &job_toml(2, "sleep 30", "production = true"),
    );
    let path = cluster.dir().join("big.toml");
    std::fs::write(&path, job_toml(4, "sleep 30", "production = true")).expect("write job");
    let output = cluster.cli(
        &new_addr,
        &[
            "job",
            "create",
            &format!("{role}/prod/big"),
            &path.display().to_string(),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("quota exceeded"),
        "a create over the loaded quota: {}",
        borealis_tests::describe(&output)
    );
}
