//! End-to-end: restarting the real `borealis scheduler` right after a crash (ARCHITECTURE.md,
//! "Fail-stop and restart after a crash"). A scheduler started on the port and data dir of one
//! that was just SIGKILLed comes up, though the dead one's listening sockets outlive it for a
//! moment (the kernel tears its io_uring down asynchronously); a second scheduler beside a live
//! one, on its data dir or on its port, is refused at once, naming the first by its pid. Build
//! the binary first: `cargo build -p borealis`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use borealis_tests::{describe, free_port, job_toml, run_borealis, temp_dir, Cluster, Proc, POLL};

/// How long a restarted scheduler may take to answer `job list`.
const START_MAX: Duration = Duration::from_secs(30);
/// A second scheduler beside a live one must give up well within the wait for an exiting
/// predecessor (10 s): it is refused at once.
const REFUSAL_MAX: Duration = Duration::from_secs(4);
/// Kill-and-restart rounds.
const RESTARTS: usize = 30;

/// A scheduler's command line: 2 shards on 127.0.0.1:`port`, `data_dir`.
fn scheduler_args(port: u16, data_dir: &Path) -> Vec<String> {
    [
        "scheduler",
        "--ip",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--http-port",
        "0",
        "--shards",
        "2",
        "--no-pin",
        "--data-dir",
        &data_dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Waits (bounded) until the scheduler answers `job list --json`; returns the job keys.
/// Panics with its log if it exits first.
fn wait_serving(scheduler: &mut Proc, addr: &str) -> Vec<String> {
    let deadline = Instant::now() + START_MAX;
    loop {
        if let Some(status) = scheduler.exit_status() {
            panic!(
                "{} exited during startup ({status}):\n{}",
                scheduler.name(),
                scheduler.log_tails()
            );
        }
        let output = run_borealis(&["job", "list", "--json", "--scheduler", addr]);
        if output.status.success() {
            let jobs: serde_json::Value =
                serde_json::from_slice(&output.stdout).expect("job list --json is JSON");
            return jobs
                .as_array()
                .expect("a JSON array")
                .iter()
                .filter_map(|j| j["job_key"].as_str().map(str::to_string))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} did not answer `job list` within {START_MAX:?}: {}\n{}",
            scheduler.name(),
            describe(&output),
            scheduler.log_tails()
        );
        std::thread::sleep(POLL);
    }
}

/// (a) SIGKILL, then at once (no wait for the port, nor, every other time, for the old process
/// to be reaped) a new scheduler on the same port and data dir: it comes up and serves, with
/// the job acknowledged before the first kill; several times.
#[test]
fn a_scheduler_restarted_right_after_kill9_comes_up_on_the_same_port() {
    let dir = temp_dir();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let data_dir: PathBuf = dir.path().join("scheduler-data");
    let args = scheduler_args(port, &data_dir);
    let mut scheduler = Proc::spawn("scheduler-0", &args, dir.path());
    wait_serving(&mut scheduler, &addr);
    let job = "www/prod/survivor";
    let file = dir.path().join("survivor.toml");
    std::fs::write(&file, job_toml(1, "sleep 1000", "")).unwrap();
    let created = run_borealis(&[
        "job",
        "create",
        job,
        &file.display().to_string(),
        "--scheduler",
        &addr,
    ]);
    assert!(created.status.success(), "{}", describe(&created));
    // Kept so that a failing test prints every run's log.
    let mut previous = Vec::new();
    let (mut waited_for_lock, mut waited_for_port) = (0, 0);
    for round in 1..=RESTARTS {
        // Connections open at the kill, as agents' and clients' would be.
        let _clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(&addr).expect("connect"))
            .collect();
        if round % 2 == 1 {
            // SIGKILL only: the new scheduler starts while the old one is still exiting (as
            // after `kill -9 PID; borealis scheduler ...`); it is reaped later.
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe {
                libc::kill(scheduler.pid() as i32, libc::SIGKILL);
            }
        } else {
            // SIGKILL and reap, as a supervisor does before it restarts a process.
            scheduler.kill9();
        }
        let restarted = Proc::spawn(&format!("scheduler-{round}"), &args, dir.path());
        previous.push(std::mem::replace(&mut scheduler, restarted));
        let jobs = wait_serving(&mut scheduler, &addr);
        assert!(
            jobs.iter().any(|j| j == job),
            "restart {round}: the job is not recovered: {jobs:?}\n{}",
            scheduler.log_tails()
        );
        let log = scheduler.stderr_text();
        if log.contains("the port is still held by") {
            waited_for_port += 1;
        }
        if log.contains("the data dir is still locked") {
            waited_for_lock += 1;
        }
    }
    // How often the race this test is about was met (it depends on the machine's timing).
    eprintln!(
        "of {RESTARTS} restarts, {waited_for_lock} waited for the data dir's lock and \
         {waited_for_port} for the port of the killed scheduler"
    );
}

/// Runs `borealis <args>` that must fail within [`REFUSAL_MAX`]; returns its stderr.
fn refused_quickly(args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let output = run_borealis(&args);
    let elapsed = started.elapsed();
    assert!(
        !output.status.success(),
        "a second scheduler started: {}",
        describe(&output)
    );
    assert!(
        elapsed < REFUSAL_MAX,
        "refused only after {elapsed:?}: {}",
        describe(&output)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// (b) A second scheduler on a live one's data dir (another port) is refused at once, with
/// the first's pid and address.
#[test]
fn a_second_scheduler_on_a_live_ones_data_dir_is_refused_at_once_by_pid() {
    let cluster = Cluster::start(&[]);
    let data_dir = cluster.data_dir();
    let stderr = refused_quickly(&scheduler_args(free_port(), &data_dir));
    let expected = format!(
        "error: data dir {} is in use by scheduler pid {} listening on 127.0.0.1:{}",
        data_dir.display(),
        cluster.scheduler.pid(),
        cluster.port
    );
    assert!(
        stderr.lines().any(|l| l == expected),
        "expected {expected:?} in:\n{stderr}"
    );
}

/// (c) A second scheduler on a live one's port (another data dir) is refused at once, with the
/// first's pid.
#[test]
fn a_second_scheduler_on_a_live_ones_port_is_refused_at_once_by_pid() {
    let cluster = Cluster::start(&[]);
    let other = cluster.dir().join("other-data");
    let stderr = refused_quickly(&scheduler_args(cluster.port, &other));
    let expected = format!(
        "error: cannot listen on 127.0.0.1:{}: another server is already listening there (pid {})",
        cluster.port,
        cluster.scheduler.pid()
    );
    assert!(
        stderr.lines().any(|l| l == expected),
        "expected {expected:?} in:\n{stderr}"
    );
}
