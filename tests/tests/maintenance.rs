//! End-to-end: host maintenance and restarts with the real scheduler, agents and CLI. A drain
//! of a host whose job has a real HTTP coordinator (a test server on 127.0.0.1) that says no,
//! then yes: no task leaves before yes, `host maintenance status` shows the progress, and the
//! coordinator never sees two requests at once; a count SLA lets two drained hosts go one after
//! the other; `job restart` replaces every instance in batches. Build the binary first: `cargo build -p borealis`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use borealis_tests::{
    describe, expect_one_line_error, field, holds_for, instance, job_toml, run_borealis, tasks,
    tasks_in, wait_until, AgentSpec, Cluster, POLL,
};
use serde_json::Value;

const FAST_SLA: &[&str] = &[
    "--min-required-instances-for-sla-check",
    "1",
    "--sla-aware-kill-retry-min-delay",
    "1s",
    "--sla-aware-kill-retry-max-delay",
    "1s",
];

/// A coordinator: answers `{"drain": <allow>}`, records each request's target and body, and
/// the most requests it ever handled at once.
struct Coordinator {
    url: String,
    allow: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
    max_concurrent: Arc<AtomicUsize>,
}

impl Coordinator {
    fn start() -> Coordinator {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/sla", listener.local_addr().unwrap());
        let allow = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let max_concurrent = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (a, r, m) = (allow.clone(), requests.clone(), max_concurrent.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten().take(10_000) {
                let (a, r, m, f) = (a.clone(), r.clone(), m.clone(), in_flight.clone());
                std::thread::spawn(move || {
                    let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap_or(0);
                    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                            break;
                        }
                        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length.min(1 << 20)];
                    let _ = reader.read_exact(&mut body);
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    r.lock().unwrap().push((target, body));
                    // Slow enough that overlapping requests would be seen.
                    std::thread::sleep(Duration::from_millis(200));
                    let answer = format!("{{\"drain\": {}}}", a.load(Ordering::SeqCst));
                    let mut stream = stream;
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    f.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Coordinator {
            url,
            allow,
            requests,
            max_concurrent,
        }
    }
}

fn host_status(cluster: &Cluster, host: &str) -> Value {
    let out = cluster.cli_ok(&["host", "maintenance", "status", host, "--json"]);
    let json: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    json["hosts"][0].clone()
}

fn wait_host(cluster: &Cluster, host: &str, mode: &str, timeout: Duration) -> Value {
    let started = Instant::now();
    loop {
        let status = host_status(cluster, host);
        if status["mode"] == mode {
            return status;
        }
        assert!(started.elapsed() < timeout, "{host} not {mode}: {status}");
        std::thread::sleep(POLL);
    }
}

fn running_on(status: &Value, instance_no: u64) -> Option<String> {
    tasks(status)
        .iter()
        .find(|t| instance(t) == instance_no && field(t, "state") == "RUNNING")
        .map(|t| field(t, "hostname").to_string())
}

#[test]
fn a_drain_waits_for_the_coordinator_and_status_shows_it() {
    let coordinator = Coordinator::start();
    let agents = [
        AgentSpec::new("a1", "host-1"),
        AgentSpec::new("a2", "host-2"),
        AgentSpec::new("a3", "host-3"),
    ];
    let cluster = Cluster::start_with(FAST_SLA, &agents);
    let extra = format!(
        "service = true\n\n[[constraints]]\nattribute = \"host\"\nlimit = 1\n\n\
         [sla_policy]\ntype = \"coordinator\"\ncoordinator_url = \"{}\"\nstatus_key = \"drain\"\n",
        coordinator.url
    );
    let job = "www/prod/store";
    cluster.create_job(job, &job_toml(2, "sleep 600", &extra));
    let status = cluster.wait_for(job, "2 instances RUNNING", Duration::from_secs(30), |s| {
        (running_on(s, 0).is_some() && running_on(s, 1).is_some()).then(|| s.clone())
    });
    let host = running_on(&status, 0).unwrap();
    let task0 = tasks(&status)
        .iter()
        .find(|t| instance(t) == 0)
        .map(|t| field(t, "task_id").to_string())
        .unwrap();
    let drained = cluster.cli_ok(&["host", "maintenance", "drain", &host]);
    assert!(drained.contains("DRAINING"), "{drained}");

    // The coordinator says no: the task stays, and status says why.
    holds_for(Duration::from_secs(4), POLL, || {
        let s = cluster.status_json(job);
        assert_eq!(running_on(&s, 0).as_deref(), Some(host.as_str()), "{s}");
    });
    let status = host_status(&cluster, &host);
    assert_eq!(status["mode"], "DRAINING", "{status}");
    assert_eq!(status["active_tasks"], 1, "{status}");
    let reason = status["blocked"][0]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(reason.contains("coordinator"), "{status}");
    assert!(coordinator.requests.lock().unwrap().len() >= 2);

    // Yes: the task leaves, is replaced on another host, and the host is DRAINED.
    coordinator.allow.store(true, Ordering::SeqCst);
    let status = wait_host(&cluster, &host, "DRAINED", Duration::from_secs(30));
    assert_eq!(status["active_tasks"], 0, "{status}");
    cluster.wait_for(
        job,
        "instance 0 replaced elsewhere",
        Duration::from_secs(30),
        |s| running_on(s, 0).filter(|h| *h != host),
    );
    let s = cluster.status_json(job);
    let old = tasks(&s)
        .iter()
        .find(|t| field(t, "task_id") == task0)
        .unwrap();
    assert_eq!(field(old, "state"), "KILLED", "{s}");
    assert!(field(old, "message").contains("coordinator agreed"), "{s}");

    let requests = coordinator.requests.lock().unwrap().clone();
    let (target, body) = requests.last().unwrap();
    assert_eq!(
        target, "/sla?task=local%2Fwww%2Fprod%2Fstore%2F0",
        "{requests:?}"
    );
    assert_eq!(body["task"], "local/www/prod/store/0");
    assert_eq!(
        body["taskConfig"]["assignedTask"]["slaveHost"],
        host.as_str()
    );
    assert!(body["forceMaintenanceCountdownMs"].is_string(), "{body}");
    assert_eq!(coordinator.max_concurrent.load(Ordering::SeqCst), 1);

    // Back in service.
    let ended = cluster.cli_ok(&["host", "maintenance", "end", &host]);
    assert!(ended.contains("NONE"), "{ended}");
    assert_eq!(host_status(&cluster, &host)["mode"], "NONE");
    let all = cluster.cli_ok(&["host", "maintenance", "status"]);
    assert_eq!(all, "no host is under maintenance\n");
    let pinned = format!("[[constraints]]\nattribute = \"host\"\nvalues = [\"{host}\"]\n");
    cluster.create_job("www/prod/after", &job_toml(1, "sleep 600", &pinned));
    cluster.wait_for(
        "www/prod/after",
        &format!("a new job RUNNING on {host} once its maintenance ended"),
        Duration::from_secs(30),
        |s| running_on(s, 0).filter(|h| *h == host),
    );
}

/// Hosts' modes, active counts and first blocker's reason ("" when none) from one
/// `host maintenance status --json`.
fn hosts_status(cluster: &Cluster, hosts: &[&str]) -> Vec<(String, u64, String)> {
    let mut args = vec!["host", "maintenance", "status"];
    args.extend(hosts);
    args.push("--json");
    let out = cluster.cli_ok(&args);
    let json: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let listed = json["hosts"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), hosts.len(), "{out}");
    hosts
        .iter()
        .map(|host| {
            let h = listed
                .iter()
                .find(|h| h["host"] == *host)
                .unwrap_or_else(|| panic!("{host} not in {out}"));
            let mode = h["mode"].as_str().unwrap_or("").to_string();
            let reason = h["blocked"][0]["reason"].as_str().unwrap_or("").to_string();
            (mode, h["active_tasks"].as_u64().unwrap_or(u64::MAX), reason)
        })
        .collect()
}

#[test]
fn a_count_sla_drain_of_two_hosts_keeps_two_instances_running() {
    let agents = [
        AgentSpec::new("a1", "host-1"),
        AgentSpec::new("a2", "host-2"),
        AgentSpec::new("a3", "host-3"),
    ];
    let mut cluster = Cluster::start_with(FAST_SLA, &agents);
    let job = "www/prod/count";
    // Preferred: the stock tier config's default (preemptible) is exempt from SLAs, as in Aurora.
    let extra = "service = true\ntier = \"preferred\"\n\n[[constraints]]\nattribute = \"host\"\nlimit = 1\n\n\
                 [sla_policy]\ntype = \"count\"\ncount = 2\nduration_secs = 1\n";
    cluster.create_job(job, &job_toml(3, "sleep 600", extra));
    let status = cluster.wait_for(job, "3 instances RUNNING", Duration::from_secs(30), |s| {
        (0..3)
            .all(|i| running_on(s, i).is_some())
            .then(|| s.clone())
    });
    // Room for the two replacements (one task of the job per host).
    cluster.start_agent(AgentSpec::new("a4", "host-4"));
    cluster.start_agent(AgentSpec::new("a5", "host-5"));
    let (h0, h1) = (
        running_on(&status, 0).unwrap(),
        running_on(&status, 1).unwrap(),
    );
    let hosts = [h0.as_str(), h1.as_str()];
    let drained = cluster.cli_ok(&["host", "maintenance", "drain", &h0, &h1]);
    assert_eq!(drained.matches("DRAINING").count(), 2, "{drained}");

    // Each poll: the job keeps 2 RUNNING; the hosts' remaining tasks only go down.
    let mut remaining_seen: Vec<u64> = Vec::new();
    let mut one_drained_seen = false;
    // The second task waits for the first one's replacement to have run for 1 s.
    let mut sla_wait_seen = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = cluster.status_json(job);
        let running = tasks_in(&s, "RUNNING").len();
        assert!(
            running >= 2,
            "{running} instances RUNNING during the drain: {s}"
        );
        let modes = hosts_status(&cluster, &hosts);
        for (mode, _, reason) in &modes {
            assert!(mode == "DRAINING" || mode == "DRAINED", "{modes:?}");
            sla_wait_seen |= reason.contains("SLA count 2 per 1s");
        }
        let drained = modes.iter().filter(|(m, _, _)| m == "DRAINED").count();
        one_drained_seen |= drained == 1;
        // A DRAINING host reports 0 only before its first progress report: unknown yet.
        let known = modes.iter().all(|(m, n, _)| m == "DRAINED" || *n > 0);
        if known {
            let remaining: u64 = modes
                .iter()
                .map(|(m, n, _)| if m == "DRAINED" { 0 } else { *n })
                .sum();
            if let Some(&last) = remaining_seen.last() {
                assert!(
                    remaining <= last,
                    "remaining tasks went up: {remaining_seen:?} then {remaining}"
                );
            }
            remaining_seen.push(remaining);
        }
        if drained == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hosts were not DRAINED within 60s: {modes:?}\n{s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        sla_wait_seen,
        "no poll showed a task waiting for the count SLA: {remaining_seen:?}"
    );
    assert!(
        one_drained_seen,
        "the hosts drained one after the other, so some poll saw one DRAINED: {remaining_seen:?}"
    );
    assert!(
        remaining_seen.iter().any(|&n| n >= 1) && remaining_seen.last() == Some(&0),
        "{remaining_seen:?}"
    );
    // All three run again, none on a drained host.
    let s = cluster.wait_for(
        job,
        "3 instances RUNNING again",
        Duration::from_secs(30),
        |s| {
            (0..3)
                .all(|i| running_on(s, i).is_some())
                .then(|| s.clone())
        },
    );
    for i in 0..3 {
        let on = running_on(&s, i).unwrap();
        assert!(
            !hosts.contains(&on.as_str()),
            "instance {i} on drained {on}: {s}"
        );
    }
}

#[test]
fn job_restart_replaces_every_instance_in_batches() {
    let agents = [
        AgentSpec::new("a1", "host-1"),
        AgentSpec::new("a2", "host-2"),
    ];
    let cluster = Cluster::start(&agents);
    let job = "www/prod/web";
    cluster.create_job(job, &job_toml(4, "sleep 600", "service = true"));
    let before = cluster.wait_for(job, "4 RUNNING", Duration::from_secs(30), |s| {
        (0..4)
            .all(|i| running_on(s, i).is_some())
            .then(|| s.clone())
    });
    let old_ids: Vec<String> = tasks(&before)
        .iter()
        .map(|t| field(t, "task_id").to_string())
        .collect();
    let addr = cluster.addr();
    let restart = std::thread::spawn(move || {
        run_borealis(&[
            "job",
            "restart",
            job,
            "--batch-size",
            "2",
            "--watch-secs",
            "1",
            "--max-wait",
            "60s",
            "--scheduler",
            &addr,
        ])
    });
    // While it runs, at most one batch (2 instances) is without a RUNNING task, and the
    // batches go one after the other: for a while, 0-1 run new tasks and 2-3 the old ones.
    let is_old = |t: &str| old_ids.iter().any(|id| id == t);
    let mut first_batch_only_seen = false;
    wait_until(
        "job restart to finish",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            let s = cluster.status_json(job);
            let down = (0..4).filter(|&i| running_on(&s, i).is_none()).count();
            assert!(down <= 2, "{down} instances without a RUNNING task: {s}");
            let running_id = |i: u64| {
                tasks(&s)
                    .iter()
                    .find(|t| instance(t) == i && field(t, "state") == "RUNNING")
                    .map(|t| field(t, "task_id").to_string())
            };
            first_batch_only_seen |=
                (0..4).all(|i| running_id(i).is_some_and(|id| is_old(&id) == (i >= 2)));
            restart.is_finished().then_some(())
        },
    );
    let output = restart.join().expect("the restart thread");
    assert!(
        output.status.success(),
        "job restart: {}",
        describe(&output)
    );
    assert!(
        first_batch_only_seen,
        "no poll saw instances 0-1 restarted while 2-3 still ran their old tasks"
    );
    let out = String::from_utf8(output.stdout).expect("UTF-8");
    assert!(
        out.contains("restarted instances 0-1 of www/prod/web"),
        "{out}"
    );
    assert!(
        out.contains("restarted instances 2-3 of www/prod/web"),
        "{out}"
    );
    assert!(out.contains("in 2 batches"), "{out}");
    let after = cluster.status_json(job);
    for i in 0..4 {
        let t = tasks(&after)
            .iter()
            .find(|t| instance(t) == i && field(t, "state") == "RUNNING")
            .unwrap_or_else(|| panic!("instance {i} not running: {after}"));
        assert!(
            !old_ids.contains(&field(t, "task_id").to_string()),
            "{after}"
        );
    }
    let restarted = tasks(&after)
        .iter()
        .filter(|t| old_ids.contains(&field(t, "task_id").to_string()))
        .filter(|t| field(t, "state") == "KILLED" && field(t, "message") == "restarted by user")
        .count();
    assert_eq!(restarted, 4, "{after}");
}

#[test]
fn bad_maintenance_requests_are_refused_naming_what_is_wrong() {
    let cluster = Cluster::start(&[AgentSpec::new("a1", "host-1")]);
    let err = expect_one_line_error(&cluster.cli(&["host", "maintenance", "drain", "bad host!"]));
    assert!(err.contains("bad host!"), "{err}");
    let err = expect_one_line_error(&cluster.cli(&["job", "restart", "www/prod/nope"]));
    assert!(err.contains("www/prod/nope"), "{err}");
    let err = expect_one_line_error(&cluster.cli(&[
        "job",
        "restart",
        "www/prod/nope",
        "--instances",
        "3-1",
    ]));
    assert!(err.contains("3-1"), "{err}");
    assert_eq!(host_status(&cluster, "unknown-host")["mode"], "NONE");
    let table = cluster.cli_ok(&["host", "maintenance", "status", "unknown-host"]);
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("unknown-host") && l.contains("NONE")),
        "{table}"
    );
    // start, drain and end name at least one host (clap refuses, naming the argument).
    for op in ["start", "drain", "end"] {
        let out = cluster.cli(&["host", "maintenance", op]);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("<HOSTS>"),
            "{}",
            describe(&out)
        );
    }
    // Nothing was put under maintenance by any of it.
    assert_eq!(
        cluster.cli_ok(&["host", "maintenance", "status"]),
        "no host is under maintenance\n"
    );
}
