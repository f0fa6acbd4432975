//! End-to-end: rolling updates and cron jobs with the real scheduler, agents and processes.
//! Each task writes its version to `version` in its sandbox, so what runs where is read off
//! the sandboxes. Build the binary first: `cargo build -p borealis`.

use std::collections::BTreeSet;
use std::time::Duration;

use borealis_tests::{
    expect_one_line_error, field, holds_for, instance, job_toml, tasks, wait_until, AgentSpec,
    Cluster, POLL,
};
use serde_json::Value;

const JOB: &str = "www/prod/web";

/// A service of `instances` that writes `version` to its sandbox and runs until killed.
fn service(instances: u32, version: &str) -> String {
    job_toml(
        instances,
        &format!("echo {version} > version; while true; do sleep 1; done"),
        "service = true",
    )
}

/// A job file's `[update]` table goes after `[resources]`: `job_toml` puts `extra` before it.
fn with_update(toml: String, update: &str) -> String {
    format!("{toml}\n{update}\n")
}

fn three_agents() -> Cluster {
    Cluster::start(&[
        AgentSpec::new("a1", "host-1"),
        AgentSpec::new("a2", "host-2"),
        AgentSpec::new("a3", "host-3"),
    ])
}

fn update_info(cluster: &Cluster) -> Value {
    let out = cluster.cli_ok(&["update", "info", JOB, "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("update info --json ({e}): {out}"))
}

/// The version file of each instance's RUNNING task (None: not running or not written yet).
fn running_versions(status: &Value, instances: u64) -> Vec<Option<String>> {
    (0..instances)
        .map(|i| {
            tasks(status)
                .iter()
                .find(|t| instance(t) == i && field(t, "state") == "RUNNING")
                .and_then(|t| {
                    std::fs::read_to_string(format!("{}/version", field(t, "sandbox"))).ok()
                })
                .map(|v| v.trim().to_string())
        })
        .collect()
}

fn wait_versions(cluster: &Cluster, instances: u64, version: &str) -> Value {
    cluster.wait_for(
        JOB,
        &format!("every instance RUNNING {version}"),
        Duration::from_secs(60),
        |s| {
            running_versions(s, instances)
                .iter()
                .all(|v| v.as_deref() == Some(version))
                .then(|| s.clone())
        },
    )
}

/// Polls `update info` until the update reaches a final status, checking at every poll that
/// at most `batch` instances are in flight and at most `batch` lack a RUNNING task. Returns
/// the final info and the phases seen per poll.
fn watch_update(cluster: &Cluster, batch: u64, instances: u64) -> (Value, Vec<Vec<String>>) {
    let mut seen = Vec::new();
    let info = wait_until(
        "the update to finish",
        Duration::from_secs(120),
        POLL,
        || {
            let info = update_info(cluster);
            assert!(
                info["in_flight"].as_u64().unwrap() <= batch,
                "more than {batch} in flight: {info}"
            );
            let status = cluster.status_json(JOB);
            let down = (0..instances)
                .filter(|&i| {
                    !tasks(&status)
                        .iter()
                        .any(|t| instance(t) == i && field(t, "state") == "RUNNING")
                })
                .count() as u64;
            assert!(down <= batch, "{down} instances down: {status}");
            let phases: Vec<String> = info["instances"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["phase"].as_str().unwrap().to_string())
                .collect();
            seen.push(phases);
            let s = info["status"].as_str().unwrap();
            [
                "ROLLED_FORWARD",
                "ROLLED_BACK",
                "ABORTED",
                "ERROR",
                "FAILED",
            ]
            .contains(&s)
            .then(|| info.clone())
        },
    );
    (info, seen)
}

fn statuses_of_events(info: &Value) -> Vec<String> {
    info["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_service_rolls_from_v1_to_v2_two_at_a_time_and_a_failing_v3_rolls_back() {
    let cluster = three_agents();
    cluster.create_job(JOB, &service(6, "v1"));
    let v1 = wait_versions(&cluster, 6, "v1");
    let v1_ids: BTreeSet<String> = tasks(&v1)
        .iter()
        .map(|t| field(t, "task_id").to_string())
        .collect();

    // v1 -> v2 in batches of 2.
    let v2 = cluster.write_file(
        "v2.toml",
        &with_update(
            service(6, "v2"),
            "[update]\nbatch_size = 2\nwatch_secs = 2\n",
        ),
    );
    let out = cluster.cli_ok(&["update", "start", JOB, &v2.display().to_string()]);
    assert!(out.contains("update 1"), "{out}");
    let (info, seen) = watch_update(&cluster, 2, 6);
    assert_eq!(info["status"], "ROLLED_FORWARD", "{info}");
    // In order: instances 0-1 settled while 4-5 had not been taken yet.
    assert!(
        seen.iter().any(|p| p[0] == "SUCCEEDED"
            && p[1] == "SUCCEEDED"
            && p[4] == "WAITING"
            && p[5] == "WAITING"),
        "no poll saw the first batch done before the last started: {seen:?}"
    );
    let after = wait_versions(&cluster, 6, "v2");
    for t in tasks(&after) {
        let version = std::fs::read_to_string(format!("{}/version", field(t, "sandbox")))
            .map(|v| v.trim().to_string());
        let id = field(t, "task_id").to_string();
        if v1_ids.contains(&id) {
            assert_eq!(field(t, "state"), "KILLED", "{t}");
            assert_eq!(version.ok().as_deref(), Some("v1"), "{t}");
        }
    }

    // A v3 that exits 1 a second after it starts is rolled back to v2 automatically.
    let v3 = cluster.write_file(
        "v3.toml",
        &with_update(
            job_toml(6, "echo v3 > version; sleep 1; exit 1", "service = true"),
            "[update]\nbatch_size = 2\nwatch_secs = 3\nmax_per_instance_failures = 0\n\
             max_total_failures = 0\nrollback_on_failure = true\n",
        ),
    );
    let out = cluster.cli_ok(&["update", "start", JOB, &v3.display().to_string()]);
    assert!(out.contains("update 2"), "{out}");
    let (info, _) = watch_update(&cluster, 2, 6);
    assert_eq!(info["status"], "ROLLED_BACK", "{info}");
    let events = statuses_of_events(&info);
    assert_eq!(
        events,
        ["ROLLING_FORWARD", "ROLLING_BACK", "ROLLED_BACK"],
        "{info}"
    );
    wait_versions(&cluster, 6, "v2");
    // The text form shows the config diff of the failed update.
    let text = cluster.cli_ok(&["update", "info", JOB]);
    assert!(
        text.contains("-command = \"echo v2") && text.contains("+command = \"echo v3"),
        "{text}"
    );
    let list = cluster.cli_ok(&["update", "list", JOB]);
    assert!(
        list.contains("ROLLED_BACK") && list.contains("ROLLED_FORWARD"),
        "{list}"
    );
}

#[test]
fn a_paused_update_takes_nothing_new_and_the_job_is_locked_while_it_runs() {
    let cluster = three_agents();
    cluster.create_job(JOB, &service(4, "v1"));
    wait_versions(&cluster, 4, "v1");
    let v2 = cluster.write_file(
        "v2.toml",
        &with_update(
            service(4, "v2"),
            "[update]\nbatch_size = 1\nwatch_secs = 30\n",
        ),
    );
    cluster.cli_ok(&["update", "start", JOB, &v2.display().to_string()]);
    let out = cluster.cli_ok(&["update", "pause", JOB]);
    assert!(out.contains("ROLL_FORWARD_PAUSED"), "{out}");
    // Only the first instance was taken; nothing more while paused.
    holds_for(Duration::from_secs(3), POLL, || {
        let info = update_info(&cluster);
        let taken = info["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["phase"] != "WAITING")
            .count();
        assert!(taken <= 1, "a paused update took more: {info}");
        assert_eq!(info["status"], "ROLL_FORWARD_PAUSED", "{info}");
    });
    // The job cannot be killed, re-created or restarted; a second update is refused.
    for args in [
        vec!["job", "kill", JOB],
        vec!["job", "restart", JOB],
        vec!["update", "start", JOB, &v2.display().to_string()],
    ] {
        let err = expect_one_line_error(&cluster.cli(&args));
        assert!(
            err.contains("update 1") && err.contains("ROLL_FORWARD_PAUSED"),
            "{args:?}: {err}"
        );
    }
    let err = expect_one_line_error(&cluster.try_create_job(JOB, &service(4, "v9")));
    assert!(err.contains("update 1"), "{err}");
    let err = expect_one_line_error(&cluster.cli(&["update", "resume", "www/prod/nope"]));
    assert!(err.contains("www/prod/nope"), "{err}");
    // Resumed, then aborted: ABORTED leaves the instances as they are.
    let out = cluster.cli_ok(&["update", "resume", JOB]);
    assert!(out.contains("ROLLING_FORWARD"), "{out}");
    let out = cluster.cli_ok(&["update", "abort", JOB]);
    assert!(out.contains("ABORTED"), "{out}");
    let err = expect_one_line_error(&cluster.cli(&["update", "pause", JOB]));
    assert!(err.contains("no active update"), "{err}");
    // The job is unlocked again.
    cluster.cli_ok(&["job", "restart", JOB, "--instances", "3"]);
}

#[test]
fn an_update_resumes_after_the_scheduler_is_killed() {
    let mut cluster = three_agents();
    cluster.create_job(JOB, &service(4, "v1"));
    wait_versions(&cluster, 4, "v1");
    let v2 = cluster.write_file(
        "v2.toml",
        &with_update(
            service(4, "v2"),
            "[update]\nbatch_size = 2\nwatch_secs = 3\n",
        ),
    );
    cluster.cli_ok(&["update", "start", JOB, &v2.display().to_string()]);
    // Killed while the first batch is in flight.
    wait_until(
        "the first batch in flight",
        Duration::from_secs(20),
        POLL,
        || (update_info(&cluster)["in_flight"].as_u64() == Some(2)).then_some(()),
    );
    cluster.restart_scheduler(&[]);
    cluster.wait_agents_registered();
    let (info, _) = watch_update(&cluster, 2, 4);
    assert_eq!(info["status"], "ROLLED_FORWARD", "{info}");
    assert_eq!(info["update_id"], 1, "{info}");
    wait_versions(&cluster, 4, "v2");
}

/// A cron job's file: `instances` instances of `command` on `schedule` under `policy`.
fn cron_job(command: &str, policy: &str) -> String {
    job_toml(
        1,
        command,
        &format!("cron_schedule = \"* * * * *\"\ncron_collision_policy = \"{policy}\""),
    )
}

fn task_ids(status: &Value) -> BTreeSet<String> {
    tasks(status)
        .iter()
        .map(|t| field(t, "task_id").to_string())
        .collect()
}

#[test]
fn a_cron_job_runs_on_start_and_cancel_new_skips_a_run_while_one_is_active() {
    let cluster = Cluster::start(&[AgentSpec::new("a1", "host-1")]);
    let job = "www/prod/ticker";
    let file = cluster.write_file("cron.toml", &cron_job("sleep 30", "CANCEL_NEW"));
    let file = file.display().to_string();
    // `job create` of a cron file is refused; `cron schedule` takes it.
    let err = expect_one_line_error(&cluster.cli(&["job", "create", job, &file]));
    assert!(err.contains("cron schedule"), "{err}");
    cluster.cli_ok(&["cron", "schedule", job, &file]);
    let listed = cluster
        .list_json()
        .into_iter()
        .find(|j| j["job_key"] == job)
        .expect("the cron job is listed");
    assert_eq!(listed["cron"]["schedule"], "* * * * *", "{listed}");
    assert_eq!(listed["cron"]["collision_policy"], "CANCEL_NEW", "{listed}");
    let next = listed["cron"]["next_run_unix_ms"]
        .as_u64()
        .expect("a next run");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(next > now_ms - 1000 && next <= now_ms + 61_000, "{listed}");
    assert_eq!(
        next % 60_000,
        0,
        "a per-minute trigger is on a minute: {listed}"
    );

    // A run now.
    cluster.cli_ok(&["cron", "start", job]);
    let first = cluster.wait_for(
        job,
        "the run's task RUNNING",
        Duration::from_secs(30),
        |s| (tasks(s).len() == 1 && field(&tasks(s)[0], "state") == "RUNNING").then(|| task_ids(s)),
    );
    // CANCEL_NEW: another start while it runs starts nothing.
    cluster.cli_ok(&["cron", "start", job]);
    holds_for(Duration::from_secs(3), POLL, || {
        let s = cluster.status_json(job);
        assert_eq!(task_ids(&s), first, "CANCEL_NEW started a second run: {s}");
    });
    // Descheduled: nothing more runs; it is no longer a cron job.
    cluster.cli_ok(&["cron", "deschedule", job]);
    let err = expect_one_line_error(&cluster.cli(&["cron", "start", job]));
    assert!(err.contains(job), "{err}");
}

#[test]
fn kill_existing_kills_the_running_run_and_starts_a_new_one() {
    let cluster = Cluster::start_with(
        &[
            "--cron-start-initial-backoff",
            "1s",
            "--cron-start-max-backoff",
            "2s",
        ],
        &[AgentSpec::new("a1", "host-1")],
    );
    let job = "www/prod/ticker";
    let file = cluster.write_file("cron.toml", &cron_job("sleep 600", "KILL_EXISTING"));
    cluster.cli_ok(&["cron", "schedule", job, &file.display().to_string()]);
    cluster.cli_ok(&["cron", "start", job]);
    let first = cluster.wait_for(job, "the first run RUNNING", Duration::from_secs(30), |s| {
        (tasks(s).len() == 1 && field(&tasks(s)[0], "state") == "RUNNING")
            .then(|| field(&tasks(s)[0], "task_id").to_string())
    });
    cluster.cli_ok(&["cron", "start", job]);
    cluster.wait_for(
        job,
        "the first run KILLED and a second RUNNING",
        Duration::from_secs(40),
        |s| {
            let killed = tasks(s)
                .iter()
                .any(|t| field(t, "task_id") == first && field(t, "state") == "KILLED");
            let second = tasks(s)
                .iter()
                .any(|t| field(t, "task_id") != first && field(t, "state") == "RUNNING");
            (killed && second).then_some(())
        },
    );
    cluster.cli_ok(&["job", "kill", job]);
    cluster.cli_ok(&["cron", "deschedule", job]);
}
