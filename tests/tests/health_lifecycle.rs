//! End-to-end: health checks and the HTTP lifecycle with the real scheduler, agent and CLI.
//! The task is the `http_task` helper (tests/src/bin/http_task.rs), which logs every request
//! and signal it gets, with a monotonic timestamp, to `events.log` in its sandbox. Build the
//! binary first: `cargo build -p borealis`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use borealis_tests::{
    field, free_port, holds_for, tasks, wait_until, AgentSpec, Cluster, POLL, WAIT_MAX,
};
use serde_json::Value;

/// The helper task binary, built with these tests.
const HTTP_TASK: &str = env!("CARGO_BIN_EXE_http_task");
/// How much earlier than its wait a step may come (timer and clock granularity).
const EARLY_MS: u64 = 100;
/// How much later than its wait a step may come and still count as "after the wait", far
/// below the sequence's other timeouts (a SIGKILL only 30 s later).
const LATE_MS: u64 = 1500;

/// A job file: one instance of `command`, with a port named `health` and `extra` tables.
fn job_file(command: &str, extra: &str) -> String {
    let command = serde_json::to_string(command).expect("a string serializes");
    format!(
        "instances = 1\ncommand = {command}\nfinalization_wait_secs = 30\n\n\
         [resources]\ncpu = 0.1\nram = \"16MiB\"\ndisk = \"16MiB\"\nports = [\"health\"]\n\n{extra}\n"
    )
}

/// `exec http_task --port health <args>`.
fn http_task_command(args: &str) -> String {
    format!("exec '{HTTP_TASK}' --port health {args}")
}

const LIFECYCLE: &str = "[lifecycle.http]\nport = \"health\"\n\
    graceful_shutdown_endpoint = \"/quitquitquit\"\nshutdown_endpoint = \"/abortabortabort\"\n\
    graceful_shutdown_wait_secs = 1\nshutdown_wait_secs = 1\n";

/// An HTTP check on `health` once a second, with a long grace (the 503s do not count).
const HEALTH_CHECK: &str = "[health_check]\ntype = \"http\"\nport = \"health\"\n\
    endpoint = \"/health\"\nexpected_status = 200\ninitial_interval_secs = 60\n\
    interval_secs = 1\ntimeout_secs = 1\nmax_consecutive_failures = 0\n\
    min_consecutive_successes = 1\n";

/// A cluster with one agent offering one port that was free a moment ago: the task binds it,
/// and tests (and their clusters) run in parallel, so they must not share the default range.
fn one_agent_cluster() -> Cluster {
    let port = free_port();
    let mut agent = AgentSpec::new("a1", "h1");
    agent.ports = format!("{port}-{port}");
    Cluster::start(&[agent])
}

/// The only task of a one-instance job, once it exists.
fn only_task(status: &Value) -> Option<Value> {
    match tasks(status) {
        [task] => Some(task.clone()),
        _ => None,
    }
}

/// The sandbox of the job's task on the cluster's only agent.
fn sandbox_of(cluster: &Cluster, job: &str, task: &Value) -> PathBuf {
    cluster.agents[0]
        .work_dir
        .join("sandboxes")
        .join(job)
        .join("0")
        .join(field(task, "task_id"))
}

/// The lines of `events.log`: (monotonic ms, event).
fn events(sandbox: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(sandbox.join("events.log")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (at, event) = line.split_once(' ')?;
            Some((at.parse().ok()?, event.to_string()))
        })
        .collect()
}

/// When `event` (a line's text after the timestamp) was first logged.
fn first(events: &[(u64, String)], event: &str) -> Option<u64> {
    events.iter().find(|(_, e)| e == event).map(|(at, _)| *at)
}

fn assert_gap_ms(what: &str, earlier: u64, later: u64, wait_ms: u64) {
    let gap = later.saturating_sub(earlier);
    assert!(
        gap + EARLY_MS >= wait_ms && gap <= wait_ms + LATE_MS,
        "{what}: {gap} ms (expected about {wait_ms} ms)"
    );
}

#[test]
fn job_kill_posts_graceful_then_shutdown_then_sigterms() {
    let cluster = one_agent_cluster();
    let job = "www/devel/lifecycle";
    cluster.create_job(job, &job_file(&http_task_command(""), LIFECYCLE));
    let task = cluster.wait_for(job, "its task RUNNING", WAIT_MAX, |status| {
        only_task(status).filter(|t| field(t, "state") == "RUNNING")
    });
    let sandbox = sandbox_of(&cluster, job, &task);
    wait_until("the task to listen", WAIT_MAX, POLL, || {
        events(&sandbox)
            .iter()
            .any(|(_, e)| e.starts_with("LISTENING "))
            .then_some(())
    });

    cluster.cli_ok(&["job", "kill", job]);
    let ended = cluster.wait_for(job, "its task KILLED", WAIT_MAX, |status| {
        only_task(status).filter(|t| field(t, "state") == "KILLED")
    });
    let log = events(&sandbox);
    let requests: Vec<&str> = log
        .iter()
        .map(|(_, e)| e.as_str())
        .filter(|e| !e.starts_with("GET ") && !e.starts_with("LISTENING "))
        .collect();
    assert_eq!(
        requests,
        [
            "POST /quitquitquit 200",
            "POST /abortabortabort 200",
            "SIGTERM"
        ],
        "events: {log:?}\ntask: {ended}"
    );
    let graceful = first(&log, "POST /quitquitquit 200").expect("logged");
    let shutdown = first(&log, "POST /abortabortabort 200").expect("logged");
    let terminated = first(&log, "SIGTERM").expect("logged");
    assert_gap_ms("graceful to shutdown POST", graceful, shutdown, 1000);
    assert_gap_ms("shutdown POST to SIGTERM", shutdown, terminated, 1000);
}

#[test]
fn a_health_checked_task_is_starting_until_its_endpoint_answers_200() {
    let cluster = one_agent_cluster();
    let job = "www/devel/checked";
    // 503 until the file `healthy` appears in its sandbox.
    cluster.create_job(
        job,
        &job_file(
            &http_task_command("--healthy-after-secs 3600"),
            HEALTH_CHECK,
        ),
    );
    let task = cluster.wait_for(job, "its task STARTING", WAIT_MAX, |status| {
        only_task(status).filter(|t| field(t, "state") == "STARTING")
    });
    let sandbox = sandbox_of(&cluster, job, &task);
    // Two checks answered 503 (the agent checks it), and the task is still STARTING.
    wait_until("two failed health checks", WAIT_MAX, POLL, || {
        let failed = events(&sandbox)
            .iter()
            .filter(|(_, e)| e == "GET /health 503")
            .count();
        (failed >= 2).then_some(())
    });
    holds_for(Duration::from_millis(500), POLL, || {
        let status = cluster.status_json(job);
        let task = only_task(&status).expect("one task");
        assert_eq!(field(&task, "state"), "STARTING", "{status:#}");
    });
    let status = cluster.status_json(job);
    assert_eq!(
        Path::new(field(&only_task(&status).expect("one task"), "sandbox")),
        sandbox,
        "the agent reports the sandbox while the task is STARTING: {status:#}"
    );

    std::fs::write(sandbox.join("healthy"), "").expect("create the healthy file");
    cluster.wait_for(job, "its task RUNNING", Duration::from_secs(15), |status| {
        only_task(status).filter(|t| field(t, "state") == "RUNNING")
    });
    let log = events(&sandbox);
    let passed = first(&log, "GET /health 200").expect("a check passed");
    let last_failed = log
        .iter()
        .filter(|(_, e)| e == "GET /health 503")
        .map(|(at, _)| *at)
        .max()
        .expect("checks failed");
    assert!(last_failed < passed, "{log:?}");
}
