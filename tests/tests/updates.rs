//! End-to-end: rolling job updates and cron jobs with the real scheduler, agents and CLI.
//! Every task writes its version to `version` in its sandbox and sleeps, so a test reads what
//! each task ran from the sandbox `job status --json` names. An update from v1 to v2 in batches
//! of two (never more than two instances in flight, in increasing order); a failing v3 rolled
//! back automatically (events, the config diff of `update info`); pause, resume, abort and the
//! commands an active update refuses; cron runs with CANCEL_NEW and KILL_EXISTING; an update
//! that survives a SIGKILLed scheduler. Build the binary first: `cargo build -p borealis`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use borealis_tests::{
    expect_one_line_error, field, holds_for, instance, job_toml, running_by_instance, tasks,
    tasks_in, wait_until, AgentSpec, Cluster, POLL,
};
use serde_json::Value;

/// Updates here end within this (a few batches of a few seconds' watch each).
const UPDATE_MAX: Duration = Duration::from_secs(60);
/// The states a task never leaves.
const TERMINAL: [&str; 4] = ["FINISHED", "FAILED", "KILLED", "LOST"];

/// A command that writes `version` to `version` in its sandbox and keeps running (sleeping).
fn versioned(version: &str) -> String {
    format!("echo {version} > version; exec sleep 600")
}

/// A service job file of `instances` instances of `command`, with `update` (the lines of its
/// `[update]` section; empty: none).
fn service_file(instances: u32, command: &str, update: &str) -> String {
    let section = if update.is_empty() {
        String::new()
    } else {
        format!("\n[update]\n{update}\n")
    };
    job_toml(instances, command, &format!("service = true\n{section}"))
}

/// Two agents: the instances spread over both.
fn two_agents() -> [AgentSpec; 2] {
    [
        AgentSpec::new("a1", "host-1"),
        AgentSpec::new("a2", "host-2"),
    ]
}

/// Parses a command's JSON output.
fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `update start <job> <file with toml> --json`, which must succeed.
fn start_update(cluster: &Cluster, job: &str, name: &str, toml: &str) -> Value {
    let file = cluster.write_file(name, toml);
    json(&cluster.cli_ok(&[
        "update",
        "start",
        job,
        &file.display().to_string(),
        "--json",
    ]))
}

/// `update info <job> --json` (the active update, else the latest).
fn update_info(cluster: &Cluster, job: &str) -> Value {
    json(&cluster.cli_ok(&["update", "info", job, "--json"]))
}

fn status_of(info: &Value) -> &str {
    info["status"].as_str().unwrap_or("")
}

/// instance -> phase, of an `update info --json`.
fn phases(info: &Value) -> BTreeMap<u64, String> {
    info["instances"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|p| {
            (
                p["instance"].as_u64().expect("an instance number"),
                p["phase"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The statuses of an update's events, in order.
fn event_statuses(info: &Value) -> Vec<String> {
    info["events"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|e| e["status"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Polls `update info <job> --json` until the update's status is `done` (bounded), calling
/// `each` on every answer; panics early on another final status.
fn wait_update(cluster: &Cluster, job: &str, done: &str, mut each: impl FnMut(&Value)) -> Value {
    let mut polls = 0;
    let found = wait_until(
        &format!("the update of {job} to be {done}"),
        UPDATE_MAX,
        POLL,
        || {
            let info = update_info(cluster, job);
            polls += 1;
            each(&info);
            let status = status_of(&info).to_string();
            if status == done {
                return Some(info);
            }
            let terminal = [
                "ROLLED_FORWARD",
                "ROLLED_BACK",
                "ABORTED",
                "ERROR",
                "FAILED",
            ];
            assert!(
                !terminal.contains(&status.as_str()),
                "the update of {job} ended {status}, not {done}: {info:#}"
            );
            None
        },
    );
    eprintln!("update of {job} {done} after {polls} polls");
    found
}

/// What a task wrote to `version` in its sandbox (waiting, bounded, for the file).
fn version_of(task: &Value) -> String {
    let sandbox = field(task, "sandbox");
    assert!(!sandbox.is_empty(), "the task names no sandbox: {task}");
    let path = Path::new(sandbox).join("version");
    wait_until(
        &format!("a version in {}", path.display()),
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let text = fs::read_to_string(&path).ok()?;
            let text = text.trim();
            (!text.is_empty()).then(|| text.to_string())
        },
    )
}

/// Instances in `0..instances` without a RUNNING task.
fn not_running(status: &Value, instances: u64) -> BTreeSet<u64> {
    let running: BTreeSet<u64> = tasks_in(status, "RUNNING")
        .into_iter()
        .map(instance)
        .collect();
    (0..instances).filter(|i| !running.contains(i)).collect()
}

/// Waits until every instance of `0..instances` runs exactly one task; their task ids.
fn wait_all_running(cluster: &Cluster, job: &str, instances: u64) -> BTreeMap<u64, String> {
    cluster.wait_for(
        job,
        &format!("{instances} instances RUNNING"),
        Duration::from_secs(30),
        |s| {
            running_by_instance(s, instances).map(|r| {
                r.into_iter()
                    .map(|(i, t)| (i, field(t, "task_id").to_string()))
                    .collect()
            })
        },
    )
}

/// Each instance's RUNNING task's version, once each of `0..instances` runs exactly one
/// task; also returns the status it read them from.
fn running_versions(
    cluster: &Cluster,
    job: &str,
    instances: u64,
) -> (BTreeMap<u64, String>, Value) {
    let status = cluster.wait_for(
        job,
        &format!("{instances} instances RUNNING"),
        Duration::from_secs(30),
        |s| {
            running_by_instance(s, instances)
                .is_some()
                .then(|| s.clone())
        },
    );
    let versions = running_by_instance(&status, instances)
        .expect("checked")
        .into_iter()
        .map(|(i, t)| (i, version_of(t)))
        .collect();
    (versions, status)
}

fn same_version(instances: u64, version: &str) -> BTreeMap<u64, String> {
    (0..instances).map(|i| (i, version.to_string())).collect()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

#[test]
fn an_update_rolls_v1_to_v2_in_batches_of_two() {
    const N: u64 = 6;
    let cluster = Cluster::start(&two_agents());
    let job = "www/prod/web";
    cluster.create_job(job, &service_file(N as u32, &versioned("v1"), ""));
    let v1_tasks = wait_all_running(&cluster, job, N);

    let started = start_update(
        &cluster,
        job,
        "web-v2.toml",
        &service_file(N as u32, &versioned("v2"), "batch_size = 2\nwatch_secs = 2"),
    );
    assert_eq!(started["update_id"], 1, "{started}");
    assert_eq!(started["status"], "ROLLING_FORWARD", "{started}");
    // The first step ran before the answer: the first batch is taken.
    assert_eq!(started["in_flight"], 2, "{started}");
    let listed = cluster
        .list_json()
        .into_iter()
        .find(|j| j["job_key"] == job)
        .expect("the job is listed");
    assert_eq!(
        listed["update"],
        serde_json::json!({"update_id": 1, "status": "ROLLING_FORWARD"}),
        "{listed}"
    );

    let mut mid_update_polls = 0;
    let mut max_in_flight = 0;
    let mut max_down = 0;
    let mut first_batch_before_last = false;
    let done = wait_update(&cluster, job, "ROLLED_FORWARD", |info| {
        let in_flight = info["in_flight"].as_u64().expect("in_flight");
        let phases = phases(info);
        assert_eq!(phases.len() as u64, N, "{info}");
        let counted = phases.values().filter(|p| *p == "IN_FLIGHT").count() as u64;
        assert!(
            in_flight <= 2 && counted <= 2,
            "more than 2 in flight: {info}"
        );
        max_in_flight = max_in_flight.max(counted);
        // Taken in increasing order, a new one only once all but one before it settled.
        for (&i, phase) in &phases {
            if phase == "WAITING" {
                assert!(
                    phases.range(i..).all(|(_, p)| p == "WAITING"),
                    "instance {i} waits while a later one was taken: {info}"
                );
                continue;
            }
            let settled_before =
                phases.range(..i).filter(|(_, p)| *p == "SUCCEEDED").count() as u64;
            assert!(
                settled_before + 1 >= i,
                "instance {i} taken while only {settled_before} before it succeeded: {info}"
            );
        }
        if phases.values().any(|p| p != "SUCCEEDED") {
            mid_update_polls += 1;
        }
        let phase = |i: u64| phases[&i].as_str();
        if phase(0) == "SUCCEEDED"
            && phase(1) == "SUCCEEDED"
            && phase(4) == "WAITING"
            && phase(5) == "WAITING"
        {
            first_batch_before_last = true;
        }
        // The tasks agree: at most 2 instances are without a RUNNING task.
        let status = cluster.status_json(job);
        let down = not_running(&status, N);
        assert!(down.len() <= 2, "instances {down:?} not RUNNING: {status}");
        max_down = max_down.max(down.len());
    });
    assert_eq!(done["update_id"], 1, "{done}");
    assert!(phases(&done).values().all(|p| p == "SUCCEEDED"), "{done}");
    assert!(
        mid_update_polls >= 3,
        "saw the update in progress only {mid_update_polls} times"
    );
    assert_eq!(max_in_flight, 2, "never saw a batch of 2 in flight");
    assert!(
        first_batch_before_last,
        "no poll saw instances 0 and 1 done while 4 and 5 waited"
    );
    // (A replacement starts within milliseconds of the kill: polls rarely see one down.)
    eprintln!("at most {max_down} instances seen without a RUNNING task");
    assert_eq!(
        event_statuses(&done),
        ["ROLLING_FORWARD", "ROLLED_FORWARD"],
        "{done}"
    );

    // Every instance runs v2 on a new task; each old task ran v1 and ended.
    let (versions, status) = running_versions(&cluster, job, N);
    assert_eq!(versions, same_version(N, "v2"), "{status}");
    let running = running_by_instance(&status, N).expect("checked");
    for (i, task) in &running {
        assert_ne!(
            field(task, "task_id"),
            v1_tasks[i],
            "instance {i} kept its task"
        );
    }
    let mut old_per_instance = BTreeMap::<u64, usize>::new();
    for task in tasks(&status) {
        if field(task, "state") == "RUNNING" {
            continue;
        }
        assert!(
            TERMINAL.contains(&field(task, "state")),
            "an old task is not over: {task}"
        );
        assert_eq!(version_of(task), "v1", "{task}");
        *old_per_instance.entry(instance(task)).or_default() += 1;
    }
    assert_eq!(
        old_per_instance,
        (0..N).map(|i| (i, 1)).collect::<BTreeMap<_, _>>(),
        "{status}"
    );
    // No active update any more; `update list` has the finished one.
    let listed = cluster
        .list_json()
        .into_iter()
        .find(|j| j["job_key"] == job)
        .expect("the job is listed");
    assert!(listed["update"].is_null(), "{listed}");
    let list = json(&cluster.cli_ok(&["update", "list", job, "--json"]));
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["status"], "ROLLED_FORWARD", "{list}");
}

#[test]
fn a_failing_update_rolls_back_by_itself() {
    const N: u64 = 4;
    let cluster = Cluster::start(&two_agents());
    let job = "www/prod/api";
    cluster.create_job(job, &service_file(N as u32, &versioned("v2"), ""));
    let v2_tasks = wait_all_running(&cluster, job, N);

    let started = start_update(
        &cluster,
        job,
        "api-v3.toml",
        &service_file(
            N as u32,
            "echo v3 > version; sleep 1; exit 1",
            "batch_size = 2\nwatch_secs = 3\nmax_per_instance_failures = 0\n\
             max_total_failures = 0\nrollback_on_failure = true",
        ),
    );
    assert_eq!(started["status"], "ROLLING_FORWARD", "{started}");
    let mut saw_rolling_back = false;
    let done = wait_update(&cluster, job, "ROLLED_BACK", |info| {
        saw_rolling_back |= status_of(info) == "ROLLING_BACK";
        let phases = phases(info);
        // Only the first batch is ever taken: it fails before it settles.
        for i in 2..N {
            assert_eq!(phases[&i], "WAITING", "instance {i} was taken: {info}");
        }
    });
    assert_eq!(
        event_statuses(&done),
        ["ROLLING_FORWARD", "ROLLING_BACK", "ROLLED_BACK"],
        "{done}"
    );
    let back = &done["events"][1]["message"];
    assert!(
        back.as_str().unwrap_or("").contains("rolling back"),
        "{done}"
    );
    eprintln!("saw ROLLING_BACK while polling: {saw_rolling_back}");
    let progress = done["instances"].as_array().expect("instances");
    for p in progress {
        let i = p["instance"].as_u64().unwrap();
        assert_eq!(p["in_rollback"], i < 2, "{p}");
    }

    // Every instance runs v2 again: 0 and 1 on new tasks, 2 and 3 on their first.
    let (versions, status) = running_versions(&cluster, job, N);
    assert_eq!(versions, same_version(N, "v2"), "{status}");
    let running = running_by_instance(&status, N).expect("checked");
    for (i, task) in &running {
        let same = field(task, "task_id") == v2_tasks[i];
        assert_eq!(same, *i >= 2, "instance {i}: {status}");
    }
    // The v3 tasks ran (and failed) on instances 0 and 1 only.
    // (A v3 task that was waiting to be placed again when the rollback killed it has no
    // sandbox.)
    let v3: BTreeSet<u64> = tasks(&status)
        .iter()
        .filter(|t| {
            field(t, "state") != "RUNNING"
                && !field(t, "sandbox").is_empty()
                && version_of(t) == "v3"
        })
        .map(instance)
        .collect();
    assert_eq!(v3, BTreeSet::from([0, 1]), "{status}");
    assert!(
        tasks_in(&status, "FAILED")
            .iter()
            .any(|t| !field(t, "sandbox").is_empty() && version_of(t) == "v3"),
        "no v3 task FAILED: {status}"
    );

    // The text shows the events and the config diff.
    let text = cluster.cli_ok(&["update", "info", job]);
    assert!(
        text.starts_with("update 1 of www/prod/api: ROLLED_BACK\n"),
        "{text}"
    );
    assert!(text.contains("ROLLING_BACK"), "{text}");
    let minus = format!("-command = \"{}\"", versioned("v2"));
    let plus = "+command = \"echo v3 > version; sleep 1; exit 1\"";
    assert!(
        text.lines().any(|l| l == minus) && text.lines().any(|l| l == plus),
        "expected the lines {minus:?} and {plus:?} in:\n{text}"
    );
    let diffs = &done["diffs"];
    assert!(
        diffs[0]["diff"].as_str().unwrap_or("").contains(plus),
        "{done}"
    );
}

#[test]
fn pause_resume_abort_and_what_an_active_update_refuses() {
    const N: u64 = 3;
    let cluster = Cluster::start(&[AgentSpec::new("a1", "host-1")]);
    let job = "www/prod/svc";
    let v1 = service_file(N as u32, &versioned("v1"), "");
    cluster.create_job(job, &v1);
    wait_all_running(&cluster, job, N);

    let started = start_update(
        &cluster,
        job,
        "svc-v2.toml",
        &service_file(N as u32, &versioned("v2"), "batch_size = 1\nwatch_secs = 3"),
    );
    assert_eq!(started["in_flight"], 1, "{started}");
    let paused = json(&cluster.cli_ok(&["update", "pause", job, "--json"]));
    assert_eq!(paused["status"], "ROLL_FORWARD_PAUSED", "{paused}");
    // Pausing a paused update is refused, in one line.
    let line = expect_one_line_error(&cluster.cli(&["update", "pause", job]));
    assert!(
        line.contains("update 1") && line.contains("ROLL_FORWARD_PAUSED"),
        "{line}"
    );

    // Paused: instance 0 (in flight) finishes on its own; nothing new is taken.
    let info = wait_until(
        "instance 0 to succeed while paused",
        Duration::from_secs(30),
        POLL,
        || {
            let info = update_info(&cluster, job);
            (phases(&info)[&0] == "SUCCEEDED").then_some(info)
        },
    );
    assert_eq!(status_of(&info), "ROLL_FORWARD_PAUSED", "{info}");
    holds_for(Duration::from_secs(4), Duration::from_millis(250), || {
        let info = update_info(&cluster, job);
        assert_eq!(status_of(&info), "ROLL_FORWARD_PAUSED", "{info}");
        let phases = phases(&info);
        assert_eq!(phases[&1], "WAITING", "taken while paused: {info}");
        assert_eq!(phases[&2], "WAITING", "taken while paused: {info}");
    });
    let (versions, status) = running_versions(&cluster, job, N);
    assert_eq!(
        versions,
        BTreeMap::from([(0, "v2".into()), (1, "v1".into()), (2, "v1".into())]),
        "{status}"
    );

    // An active update refuses a kill and a create of its job, in one line naming it.
    let kill = cluster.cli(&["job", "kill", job]);
    let line = expect_one_line_error(&kill);
    assert!(
        line.contains("update 1") && line.contains("ROLL_FORWARD_PAUSED"),
        "{line}"
    );
    let create = cluster.try_create_job(job, &v1);
    let line = expect_one_line_error(&create);
    assert!(line.contains("update 1"), "{line}");
    // So does a restart of its instances.
    let restart = cluster.cli(&["job", "restart", job, "--instances", "2"]);
    let line = expect_one_line_error(&restart);
    assert!(line.contains("update 1"), "{line}");
    // And another update.
    let file = cluster.write_file("svc-v3.toml", &service_file(N as u32, &versioned("v3"), ""));
    let second = cluster.cli(&["update", "start", job, &file.display().to_string()]);
    let line = expect_one_line_error(&second);
    assert!(line.contains("update 1"), "{line}");
    let (versions_after, status) = running_versions(&cluster, job, N);
    assert_eq!(
        versions_after, versions,
        "the refusals changed tasks: {status}"
    );

    // Resumed, it finishes.
    let resumed = cluster.cli_ok(&["update", "resume", job]);
    assert_eq!(resumed, format!("update 1 of {job}: ROLLING_FORWARD\n"));
    let done = wait_update(&cluster, job, "ROLLED_FORWARD", |info| {
        let in_flight = info["in_flight"].as_u64().expect("in_flight");
        assert!(in_flight <= 1, "{info}");
    });
    assert_eq!(
        event_statuses(&done),
        [
            "ROLLING_FORWARD",
            "ROLL_FORWARD_PAUSED",
            "ROLLING_FORWARD",
            "ROLLED_FORWARD"
        ],
        "{done}"
    );
    let (versions, status) = running_versions(&cluster, job, N);
    assert_eq!(versions, same_version(N, "v2"), "{status}");
    // Nothing left to resume; no such job.
    let line = expect_one_line_error(&cluster.cli(&["update", "resume", job]));
    assert!(line.contains("no active update"), "{line}");
    let line = expect_one_line_error(&cluster.cli(&["update", "resume", "www/prod/nope"]));
    assert!(line.contains("www/prod/nope"), "{line}");

    // Another update, aborted: its instances stay as they are.
    let file = cluster.write_file(
        "svc-v3-long.toml",
        &service_file(
            N as u32,
            &versioned("v3"),
            "batch_size = 1\nwatch_secs = 600",
        ),
    );
    let second = json(&cluster.cli_ok(&[
        "update",
        "start",
        job,
        &file.display().to_string(),
        "--json",
    ]));
    assert_eq!(second["update_id"], 2, "{second}");
    // Wait until instance 0 runs v3 (watched), then abort.
    cluster.wait_for(job, "instance 0 RUNNING v3", Duration::from_secs(30), |s| {
        tasks_in(s, "RUNNING")
            .into_iter()
            .find(|t| instance(t) == 0 && version_of(t) == "v3")
            .map(|_| ())
    });
    let aborted = cluster.cli_ok(&["update", "abort", job]);
    assert_eq!(aborted, format!("update 2 of {job}: ABORTED\n"));
    let info = update_info(&cluster, job);
    assert_eq!(info["update_id"], 2, "{info}");
    assert_eq!(status_of(&info), "ABORTED", "{info}");
    assert_eq!(
        event_statuses(&info),
        ["ROLLING_FORWARD", "ABORTED"],
        "{info}"
    );
    holds_for(Duration::from_secs(2), Duration::from_millis(250), || {
        let (versions, status) = running_versions(&cluster, job, N);
        assert_eq!(
            versions,
            BTreeMap::from([(0, "v3".into()), (1, "v2".into()), (2, "v2".into())]),
            "{status}"
        );
    });
    let list = json(&cluster.cli_ok(&["update", "list", job, "--json"]));
    let statuses: BTreeMap<u64, String> = list
        .as_array()
        .expect("an array")
        .iter()
        .map(|u| (u["update_id"].as_u64().unwrap(), status_of(u).to_string()))
        .collect();
    assert_eq!(
        statuses,
        BTreeMap::from([(1, "ROLLED_FORWARD".into()), (2, "ABORTED".into())]),
        "{list}"
    );
    let table = cluster.cli_ok(&["update", "list", job]);
    assert!(
        table.starts_with("JOB") && table.contains("ROLLED_FORWARD") && table.contains("ABORTED"),
        "{table}"
    );
    // With no active update, the job can be killed.
    cluster.cli_ok(&["job", "kill", job]);
}

/// Waits (bounded) until the job has a RUNNING task; its id.
fn wait_running_task(cluster: &Cluster, job: &str) -> String {
    cluster.wait_for(job, "a RUNNING task", Duration::from_secs(30), |s| {
        tasks_in(s, "RUNNING")
            .first()
            .map(|t| field(t, "task_id").to_string())
    })
}

fn task_ids(status: &Value) -> BTreeSet<String> {
    tasks(status)
        .iter()
        .map(|t| field(t, "task_id").to_string())
        .collect()
}

/// A cron job file: one instance of `command` on `schedule` under `policy`.
fn cron_file(command: &str, schedule: &str, policy: &str) -> String {
    job_toml(
        1,
        command,
        &format!("cron_schedule = \"{schedule}\"\ncron_collision_policy = \"{policy}\""),
    )
}

#[test]
fn cron_cancel_new_skips_a_run_while_the_last_one_runs() {
    let cluster = Cluster::start(&[AgentSpec::new("a1", "host-1")]);
    let job = "www/prod/report";
    let file = cluster.write_file(
        "report.toml",
        &cron_file("sleep 60", "* * * * *", "CANCEL_NEW"),
    );
    // A cron file is not a job to create.
    let create = cluster.cli(&["job", "create", job, &file.display().to_string()]);
    let line = expect_one_line_error(&create);
    assert!(line.contains("cron schedule"), "{line}");
    let before = unix_ms();
    let out = cluster.cli_ok(&["cron", "schedule", job, &file.display().to_string()]);
    assert!(out.contains("scheduled cron job www/prod/report"), "{out}");
    let listed = cluster
        .list_json()
        .into_iter()
        .find(|j| j["job_key"] == job)
        .expect("the cron job is listed");
    let cron = &listed["cron"];
    assert_eq!(cron["schedule"], "* * * * *", "{listed}");
    assert_eq!(cron["collision_policy"], "CANCEL_NEW", "{listed}");
    let next = cron["next_run_unix_ms"].as_u64().expect("a next run");
    assert!(
        next > before && next <= unix_ms() + 60_000,
        "next run {next} not within a minute of {before}: {listed}"
    );
    assert_eq!(next % 60_000, 0, "not on a minute: {listed}");
    assert!(
        cron["next_run"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{listed}"
    );
    assert!(listed["update"].is_null(), "{listed}");

    // A run now. (Should the minute turn first, its trigger starts the run and this start
    // is skipped: one run either way.)
    cluster.cli_ok(&["cron", "start", job]);
    let first = wait_running_task(&cluster, job);
    // Again while it runs: skipped.
    let out = cluster.cli_ok(&["cron", "start", job]);
    assert!(out.contains("triggered"), "{out}");
    holds_for(Duration::from_secs(4), Duration::from_millis(250), || {
        let status = cluster.status_json(job);
        assert_eq!(
            task_ids(&status),
            BTreeSet::from([first.clone()]),
            "a second run started: {status}"
        );
        assert_eq!(tasks_in(&status, "RUNNING").len(), 1, "{status}");
    });
    let log = cluster.scheduler.stderr_text();
    assert!(
        log.contains("CANCEL_NEW"),
        "no skipped run in the scheduler's log"
    );

    // Once nothing runs, a deschedule removes the job. (Away from the minute's turn, whose
    // trigger would start a run between the kill and the deschedule.)
    wait_until(
        "a time away from the minute's turn",
        Duration::from_secs(15),
        POLL,
        || (unix_ms() % 60_000 < 50_000).then_some(()),
    );
    cluster.cli_ok(&["job", "kill", job]);
    cluster.wait_for(job, "the run killed", Duration::from_secs(30), |s| {
        tasks(s)
            .iter()
            .all(|t| TERMINAL.contains(&field(t, "state")))
            .then_some(())
    });
    let out = cluster.cli_ok(&["cron", "deschedule", job]);
    assert_eq!(out, format!("descheduled cron job {job}\n"));
    assert!(!cluster.job_listed(job), "{:?}", cluster.list_json());
    let again = cluster.cli(&["cron", "start", job]);
    expect_one_line_error(&again);
}

#[test]
fn cron_kill_existing_replaces_the_running_run() {
    let cluster = Cluster::start_with(
        &["--cron-start-initial-backoff", "1s"],
        &[AgentSpec::new("a1", "host-1")],
    );
    let job = "www/prod/batch";
    // Once a year: only `cron start` runs it here.
    let file = cluster.write_file(
        "batch.toml",
        &cron_file("sleep 60", "0 0 1 1 *", "KILL_EXISTING"),
    );
    cluster.cli_ok(&["cron", "schedule", job, &file.display().to_string()]);
    let listed = cluster
        .list_json()
        .into_iter()
        .find(|j| j["job_key"] == job)
        .expect("the cron job is listed");
    assert_eq!(
        listed["cron"]["collision_policy"], "KILL_EXISTING",
        "{listed}"
    );
    // Not started by scheduling.
    let status = cluster.status_json(job);
    assert!(tasks(&status).is_empty(), "{status}");

    cluster.cli_ok(&["cron", "start", job]);
    let first = wait_running_task(&cluster, job);
    cluster.cli_ok(&["cron", "start", job]);
    let second = cluster.wait_for(
        job,
        "the first run KILLED and a new one RUNNING",
        Duration::from_secs(30),
        |s| {
            let first_killed = tasks(s)
                .iter()
                .any(|t| field(t, "task_id") == first && field(t, "state") == "KILLED");
            let running = tasks_in(s, "RUNNING");
            match running[..] {
                [t] if first_killed && field(t, "task_id") != first => {
                    Some(field(t, "task_id").to_string())
                }
                _ => None,
            }
        },
    );
    let status = cluster.status_json(job);
    assert_eq!(
        task_ids(&status),
        BTreeSet::from([first, second]),
        "{status}"
    );
}

#[test]
fn an_update_survives_a_scheduler_restart() {
    const N: u64 = 6;
    let mut cluster = Cluster::start(&two_agents());
    let job = "www/prod/durable";
    cluster.create_job(job, &service_file(N as u32, &versioned("v1"), ""));
    wait_all_running(&cluster, job, N);
    let started = start_update(
        &cluster,
        job,
        "durable-v2.toml",
        &service_file(N as u32, &versioned("v2"), "batch_size = 2\nwatch_secs = 5"),
    );
    assert_eq!(started["update_id"], 1, "{started}");

    // Mid-update: the first instance has succeeded, the last has not been taken.
    let before = wait_until(
        "an instance to succeed",
        Duration::from_secs(40),
        POLL,
        || {
            let info = update_info(&cluster, job);
            let phases = phases(&info);
            phases.values().any(|p| p == "SUCCEEDED").then_some(info)
        },
    );
    let succeeded: BTreeSet<u64> = phases(&before)
        .into_iter()
        .filter(|(_, p)| p == "SUCCEEDED")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(phases(&before)[&(N - 1)], "WAITING", "{before}");
    let status = cluster.status_json(job);
    let running_before: BTreeMap<u64, String> = tasks_in(&status, "RUNNING")
        .into_iter()
        .map(|t| (instance(t), field(t, "task_id").to_string()))
        .collect();
    eprintln!("killing the scheduler mid-update: {before}");
    let killed_at = Instant::now();
    cluster.restart_scheduler(&[]);
    cluster.wait_agents_registered();
    eprintln!("scheduler back after {:?}", killed_at.elapsed());

    // The same update, still going (or just finished), with what succeeded kept.
    let info = update_info(&cluster, job);
    assert_eq!(info["update_id"], 1, "{info}");
    assert!(
        ["ROLLING_FORWARD", "ROLLED_FORWARD"].contains(&status_of(&info)),
        "{info}"
    );
    for i in &succeeded {
        assert_eq!(
            phases(&info)[i],
            "SUCCEEDED",
            "instance {i} lost its progress: {info}"
        );
    }
    let done = wait_update(&cluster, job, "ROLLED_FORWARD", |info| {
        assert_eq!(info["update_id"], 1, "{info}");
        let in_flight = info["in_flight"].as_u64().expect("in_flight");
        assert!(in_flight <= 2, "{info}");
    });
    assert!(phases(&done).values().all(|p| p == "SUCCEEDED"), "{done}");
    let (versions, status) = running_versions(&cluster, job, N);
    assert_eq!(versions, same_version(N, "v2"), "{status}");
    // The instances that had succeeded kept their v2 tasks across the restart.
    let running = running_by_instance(&status, N).expect("checked");
    for i in &succeeded {
        assert_eq!(
            field(running[i], "task_id"),
            running_before[i],
            "instance {i} was replaced again after the restart: {status}"
        );
    }
    let list = json(&cluster.cli_ok(&["update", "list", job, "--json"]));
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}
