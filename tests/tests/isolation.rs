//! End-to-end: task isolation (issue 11) with real processes, cgroups and users. A real
//! scheduler and a real agent (running as root with `--isolation cgroups`, the default) run
//! jobs whose tasks exceed their memory, escape their process group and session, run as their
//! role's user, and report what they used.
//!
//! These tests need root (cgroup v1 controllers writable, `useradd`). Not root, they fail
//! saying so, unless `BOREALIS_SKIP_ROOT_TESTS=1`, when they print a note and pass. Build the
//! binary first: `cargo build -p borealis`; run: `cargo test -p borealis-tests --test isolation`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use borealis_tests::{
    describe, field, processes_marked, root_or_skip, running_by_instance, task_usage, tasks,
    tasks_in, unique_name, wait_until, AgentSpec, Cluster, KillMarkedOnDrop,
};
use serde_json::Value;

/// How long the processes of a killed task (or of a killed agent's tasks) may take to be gone.
const GONE_WITHIN: Duration = Duration::from_secs(10);
/// How long a task may take to reach the state a test waits for.
const TASK_WITHIN: Duration = Duration::from_secs(20);

/// A job file: `instances` instances of `command` with 0.1 cpu, `ram` and 16MiB disk, and
/// `extra` top-level lines.
fn job(instances: u32, command: &str, ram: &str, extra: &str) -> String {
    let command = serde_json::to_string(command).expect("a string serializes");
    format!(
        "instances = {instances}\ncommand = {command}\n{extra}\n\n[resources]\ncpu = 0.1\nram = \"{ram}\"\ndisk = \"16MiB\"\n"
    )
}

/// Fails fast when a task of the job ended in a state other than `expected` (the job can then
/// never get where the test waits for it to).
fn fail_on_other_end(status: &Value, expected: &str) {
    for task in tasks(status) {
        let state = field(task, "state");
        if ["FINISHED", "FAILED", "KILLED", "LOST"].contains(&state) && state != expected {
            panic!("a task ended {state}, expected {expected}: {task}\nstatus: {status:#}");
        }
    }
}

/// Waits (bounded) until the job's only task has ended in `state`; returns that task.
fn wait_ended(cluster: &Cluster, job_key: &str, state: &str) -> Value {
    cluster.wait_for(
        job_key,
        &format!("its task {state}"),
        TASK_WITHIN,
        |status| {
            fail_on_other_end(status, state);
            tasks_in(status, state).first().map(|t| (*t).clone())
        },
    )
}

/// Waits (bounded) until at least `count` processes carry `marker`; returns them.
fn wait_marked(marker: &str, count: usize) -> Vec<i32> {
    wait_until(
        &format!("{count} processes with marker {marker}"),
        TASK_WITHIN,
        Duration::from_millis(50),
        || {
            let pids = processes_marked(marker);
            (pids.len() >= count).then_some(pids)
        },
    )
}

/// Waits (bounded by [`GONE_WITHIN`]) until no process carries `marker`, panicking with what
/// is still alive.
fn wait_no_marked(marker: &str, after: &str) {
    let deadline = std::time::Instant::now() + GONE_WITHIN;
    loop {
        let pids = processes_marked(marker);
        if pids.is_empty() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            let alive: Vec<String> = pids
                .iter()
                .map(|pid| {
                    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup"))
                        .unwrap_or_default()
                        .lines()
                        .filter(|l| l.contains("memory") || l.contains("pids"))
                        .collect::<Vec<_>>()
                        .join(" ");
                    format!("{pid}: {cmdline} [{cgroup}]")
                })
                .collect();
            panic!(
                "{GONE_WITHIN:?} {after}, processes with marker {marker} are still alive:\n{}",
                alive.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The command of a task that starts a grandchild leaving its process group and session
/// (`setsid -f`, which forks so the grandchild is no group leader and is re-parented to init),
/// with `ISOLATION_MARKER=<marker>` in its environment and `<marker>` in its argv; the
/// grandchild writes its pid to `grandchild.pid` in the sandbox. Then the task sleeps.
fn escaping_command(marker: &str) -> String {
    format!(
        "export ISOLATION_MARKER={marker}; \
         setsid -f sh -c 'echo $$ > grandchild.pid; exec sleep 600' {marker}; \
         sleep 600"
    )
}

/// A system user made for one test (`useradd --system --no-create-home`), removed with
/// `userdel` when dropped.
struct TempUser {
    name: String,
}

impl TempUser {
    fn create(name: &str) -> TempUser {
        let output = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run useradd: {e}"));
        assert!(
            output.status.success(),
            "useradd {name} failed: {}",
            describe(&output)
        );
        TempUser { name: name.into() }
    }

    /// `id -u <name>`.
    fn uid(&self) -> u32 {
        let output = Command::new("id")
            .args(["-u", &self.name])
            .output()
            .expect("run id");
        assert!(
            output.status.success(),
            "id -u {}: {}",
            self.name,
            describe(&output)
        );
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("id -u prints a number")
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        // Processes of the user would make userdel refuse; the test's cluster (dropped first
        // when declared after this) has killed them.
        match Command::new("userdel").arg(&self.name).output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!("userdel {} failed: {}", self.name, describe(&output)),
            Err(e) => eprintln!("cannot run userdel {}: {e}", self.name),
        }
    }
}

/// Removes these files when dropped (what a task wrote where it must not, should it have).
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

#[test]
fn task_over_its_memory_limit_fails_with_the_limit_in_its_message() {
    if !root_or_skip("task_over_its_memory_limit_fails_with_the_limit_in_its_message") {
        return;
    }
    let cluster = Cluster::start(&[AgentSpec::new("a1", "h1")]);
    let job_key = format!("www/devel/{}", unique_name("oom"));
    // Writes 300 MiB (python's bytes repetition touches every page; a bare bytearray(n) is
    // calloc'd and may stay untouched), or, without python3, tail buffers 300 MiB of a pipe.
    let command = "if command -v python3 >/dev/null; then \
                   python3 -c \"b = b'x' * (300 * 1024 * 1024); print(len(b))\"; \
                   else head -c 300M /dev/zero | tail -c 300M | wc -c; fi";
    cluster.create_job(&job_key, &job(1, command, "64MiB", ""));
    let task = wait_ended(&cluster, &job_key, "FAILED");
    let message = field(&task, "message");
    assert!(
        message.contains("memory limit of 64 MiB exceeded"),
        "the message of an OOM-killed task names its limit: {message:?}\n{task:#}"
    );
}

#[test]
fn killing_a_task_kills_the_grandchild_that_left_its_session() {
    if !root_or_skip("killing_a_task_kills_the_grandchild_that_left_its_session") {
        return;
    }
    let marker = unique_name("isomarkkill");
    let _cleanup = KillMarkedOnDrop(marker.clone());
    let cluster = Cluster::start(&[AgentSpec::new("a1", "h1")]);
    let job_key = format!("www/devel/{}", unique_name("setsid"));
    cluster.create_job(
        &job_key,
        &job(
            1,
            &escaping_command(&marker),
            "32MiB",
            "finalization_wait_secs = 1",
        ),
    );
    let running = cluster.wait_for(&job_key, "its task RUNNING", TASK_WITHIN, |status| {
        fail_on_other_end(status, "KILLED");
        running_by_instance(status, 1).map(|r| r[&0].clone())
    });
    // The grandchild, re-parented to init in a session of its own, is there.
    let sandbox = PathBuf::from(field(&running, "sandbox"));
    let grandchild = read_pid(&sandbox.join("grandchild.pid"));
    let marked = wait_marked(&marker, 2);
    assert!(
        marked.contains(&grandchild),
        "{grandchild} not in {marked:?}"
    );
    assert_eq!(
        session_of(grandchild),
        i64::from(grandchild),
        "the grandchild leads a session of its own"
    );

    cluster.cli_ok(&["job", "kill", &job_key]);
    wait_ended(&cluster, &job_key, "KILLED");
    wait_no_marked(&marker, "after the task was KILLED");
}

#[test]
fn tasks_run_as_their_roles_user_confined_to_their_sandbox() {
    if !root_or_skip("tasks_run_as_their_roles_user_confined_to_their_sandbox") {
        return;
    }
    let user = TempUser::create(&unique_name("biso"));
    let uid = user.uid();
    // Declared after the user: dropped (its agent and tasks killed) before userdel runs.
    let cluster = Cluster::start(&[AgentSpec::new("a1", "h1").executor_user(None)]);
    let work_dir = cluster.agents[0].work_dir.clone();
    let suffix = unique_name("escape");
    let outside = RemoveOnDrop(vec![
        work_dir.join(format!("{suffix}-work-dir")),
        PathBuf::from(format!("/etc/{suffix}-etc")),
    ]);
    let outside = &outside.0;
    let command = format!(
        "id -un > whoami; touch {} 2>/dev/null; touch {} 2>/dev/null; true",
        outside[0].display(),
        outside[1].display()
    );
    let job_key = format!("{}/devel/whoami", user.name);
    cluster.create_job(&job_key, &job(1, &command, "32MiB", ""));
    let task = wait_ended(&cluster, &job_key, "FINISHED");

    let sandbox = PathBuf::from(field(&task, "sandbox"));
    let whoami = fs::read_to_string(sandbox.join("whoami"))
        .unwrap_or_else(|e| panic!("read whoami in {}: {e}", sandbox.display()));
    assert_eq!(whoami.trim(), user.name, "the task ran as its role's user");
    let meta = fs::metadata(&sandbox).expect("the sandbox exists");
    assert_eq!(meta.uid(), uid, "the sandbox is owned by the task's user");
    let parent = sandbox.parent().expect("the sandbox has a parent");
    let parent_meta = fs::metadata(parent).expect("the sandbox's parent exists");
    assert_eq!(parent_meta.uid(), 0, "{} is root's", parent.display());
    assert_eq!(
        parent_meta.permissions().mode() & 0o7777,
        0o755,
        "{} is 0755",
        parent.display()
    );
    for path in outside {
        assert!(
            !path.exists(),
            "the task's user could write {} outside its sandbox",
            path.display()
        );
    }

    // A role that names no user of this machine: its task cannot run.
    let nobody_role = unique_name("nouser");
    let job_key = format!("{nobody_role}/devel/whoami");
    cluster.create_job(&job_key, &job(1, "id -un > whoami", "32MiB", ""));
    let task = wait_ended(&cluster, &job_key, "FAILED");
    let message = field(&task, "message");
    assert!(
        message.contains("no user"),
        "the task of role {nobody_role} (no such user) failed saying so: {message:?}\n{task:#}"
    );
    assert!(
        !Path::new(field(&task, "sandbox")).join("whoami").exists(),
        "{task:#}"
    );
    drop(cluster);
}

#[test]
fn tasks_die_with_their_agent_even_those_that_left_their_session() {
    if !root_or_skip("tasks_die_with_their_agent_even_those_that_left_their_session") {
        return;
    }
    let marker = unique_name("isomarkagent");
    let _cleanup = KillMarkedOnDrop(marker.clone());
    let mut cluster = Cluster::start(&[AgentSpec::new("a1", "h1")]);
    let job_key = format!("www/devel/{}", unique_name("agentkill"));
    cluster.create_job(&job_key, &job(3, &escaping_command(&marker), "32MiB", ""));
    let running = cluster.wait_for(&job_key, "3 RUNNING tasks", TASK_WITHIN, |status| {
        fail_on_other_end(status, "LOST");
        running_by_instance(status, 3).map(|r| r.values().map(|t| (*t).clone()).collect::<Vec<_>>())
    });
    let grandchildren: Vec<i32> = running
        .iter()
        .map(|t| read_pid(&Path::new(field(t, "sandbox")).join("grandchild.pid")))
        .collect();
    // Each task: its sh and sleep, and the grandchild: at least 6 marked processes.
    let marked = wait_marked(&marker, 6);
    for pid in &grandchildren {
        assert!(marked.contains(pid), "grandchild {pid} not in {marked:?}");
    }

    cluster.agents[0].proc.kill9();
    wait_no_marked(&marker, "after the agent was SIGKILLed");
}

#[test]
fn finished_task_reports_its_usage() {
    if !root_or_skip("finished_task_reports_its_usage") {
        return;
    }
    let cluster = Cluster::start(&[AgentSpec::new("a1", "h1")]);
    let job_key = format!("www/devel/{}", unique_name("usage"));
    // About 0.3 s of shell arithmetic (more on a slow machine: it is counted, not timed).
    let command = "i=0; while [ $i -lt 300000 ]; do i=$((i + 1)); done; echo $i";
    cluster.create_job(&job_key, &job(1, command, "32MiB", ""));
    let task = wait_ended(&cluster, &job_key, "FINISHED");
    let usage = task_usage(&task)
        .unwrap_or_else(|| panic!("`job status --json` has no usage for the ended task: {task:#}"));
    assert!(
        usage.cpu_time_ms > 0,
        "cpu time counted: {usage:?}\n{task:#}"
    );
    assert!(
        usage.peak_memory_bytes > 0,
        "peak memory counted: {usage:?}\n{task:#}"
    );
}

/// Reads the pid a process wrote to `path`, waiting (bounded) for it.
fn read_pid(path: &Path) -> i32 {
    wait_until(
        &format!("a pid in {}", path.display()),
        TASK_WITHIN,
        Duration::from_millis(50),
        || fs::read_to_string(path).ok()?.trim().parse().ok(),
    )
}

/// The session id of `pid` (field 6 of /proc/PID/stat), or -1 when it cannot be read.
fn session_of(pid: i32) -> i64 {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            // After ")": state, ppid, pgrp, session.
            rest.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(-1)
}
