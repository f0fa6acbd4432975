//! End-to-end: a real scheduler and real agents (child processes on 127.0.0.1), driven by the
//! real `borealis job` command line. Build the binary first: `cargo build -p borealis`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::Duration;

use borealis_tests::{
    field, holds_for, instance, job_toml, process_is_dead, read_pid_file, running_by_instance,
    tasks, tasks_in, wait_until, AgentSpec, Cluster, KillOnDrop, WAIT_MAX,
};
use serde_json::{json, Value};

/// Scheduler flags that keep retries of quickly failing (flapping) tasks fast.
const FAST_FLAPPING: [&str; 4] = [
    "--initial-flapping-task-delay",
    "200ms",
    "--max-flapping-task-delay",
    "1s",
];

/// Fails fast if any task of the job is in one of `states`.
fn assert_none_in(status: &Value, states: &[&str]) {
    for task in tasks(status) {
        assert!(
            !states.contains(&field(task, "state")),
            "unexpected {} task: {task}\nstatus: {status:#}",
            field(task, "state")
        );
    }
}

#[test]
fn twenty_instances_finish_with_output() {
    // Each agent offers 1 cpu and each task takes 0.1 for at least 2 s: the 20 tasks cannot
    // all run on one agent at once, so both agents must get work.
    let mut cluster = Cluster::start(&[
        AgentSpec::new("a1", "h1").cpus(1.0),
        AgentSpec::new("a2", "h2").cpus(1.0),
    ]);
    let job = "www/devel/hello";
    cluster.create_job(
        job,
        &job_toml(20, "echo \"hello from $BOREALIS_INSTANCE_ID\"; sleep 2", ""),
    );
    let status = cluster.wait_for(job, "20 FINISHED tasks", WAIT_MAX, |status| {
        assert_none_in(status, &["FAILED", "LOST", "KILLED"]);
        (tasks_in(status, "FINISHED").len() == 20).then(|| status.clone())
    });

    assert_eq!(status["job_key"], job);
    assert_eq!(status["instances"], 20);
    assert_eq!(status["is_service"], false);
    assert_eq!(
        status["state_counts"],
        json!({"FINISHED": 20}),
        "{status:#}"
    );
    let all = tasks(&status);
    assert_eq!(
        all.len(),
        20,
        "one task per instance, no retries: {status:#}"
    );
    let instances: BTreeSet<u64> = all.iter().map(instance).collect();
    assert_eq!(instances, (0..20).collect(), "{status:#}");

    let mut hosts = BTreeMap::<String, usize>::new();
    for task in all {
        let i = instance(task);
        assert_eq!(task["exit_code"], 0, "{task}");
        let hostname = field(task, "hostname");
        let agent = &cluster.agents[cluster.agent_index(hostname)];
        assert_eq!(field(task, "agent_id"), agent.spec.agent_id, "{task}");
        *hosts.entry(hostname.to_string()).or_default() += 1;

        let sandbox = field(task, "sandbox");
        let expected = agent
            .work_dir
            .join("sandboxes/www/devel/hello")
            .join(i.to_string())
            .join(field(task, "task_id"));
        assert_eq!(Path::new(sandbox), expected, "sandbox of {task}");
        let stdout = fs::read_to_string(expected.join("stdout"))
            .unwrap_or_else(|e| panic!("read the stdout of {task}: {e}"));
        let line = format!("hello from {i}");
        assert!(
            stdout.lines().any(|l| l.trim() == line),
            "stdout of instance {i} is {stdout:?}, expected a line {line:?}"
        );
    }
    assert_eq!(
        hosts.keys().map(String::as_str).collect::<Vec<_>>(),
        ["h1", "h2"],
        "both agents run tasks: {hosts:?}"
    );

    // The list agrees with the status.
    let listed = cluster.list_json();
    let summary = listed
        .iter()
        .find(|j| j["job_key"] == job)
        .unwrap_or_else(|| panic!("{job} not in job list: {listed:?}"));
    assert_eq!(summary["state_counts"], json!({"FINISHED": 20}));

    // Both agents still run: finishing tasks does not disturb them.
    for agent in &mut cluster.agents {
        assert!(agent.proc.is_running(), "{} exited", agent.proc.name());
    }
}

#[test]
fn lost_agent_service_moves_to_other_agent() {
    let mut cluster = Cluster::start_with(
        &FAST_FLAPPING,
        &[AgentSpec::new("a1", "h1"), AgentSpec::new("a2", "h2")],
    );
    let job = "www/prod/web";
    cluster.create_job(
        job,
        &job_toml(
            3,
            "echo $$ > pid; while true; do sleep 1; done",
            "service = true\nfinalization_wait_secs = 1",
        ),
    );
    let before = cluster.wait_for(job, "3 RUNNING instances", WAIT_MAX, |status| {
        assert_none_in(status, &["FAILED", "LOST", "KILLED", "FINISHED"]);
        running_by_instance(status, 3).map(|_| status.clone())
    });

    // Kill the agent running instance 0, with whatever else it runs.
    let running = running_by_instance(&before, 3).expect("3 running");
    let victim_host = field(running[&0], "hostname").to_string();
    let victim = cluster.agent_index(&victim_host);
    let survivor_host = cluster.agents[1 - victim].spec.hostname.clone();
    let on_victim: Vec<(String, i32)> = running
        .values()
        .filter(|t| field(t, "hostname") == victim_host)
        .map(|t| {
            (
                field(t, "task_id").to_string(),
                read_pid_file(field(t, "sandbox"), "pid"),
            )
        })
        .collect();
    assert!(!on_victim.is_empty());
    cluster.agents[victim].proc.kill9();

    // Its tasks die with it (parent-death signal)...
    for (task_id, pid) in &on_victim {
        wait_until(
            &format!("task {task_id} (pid {pid}) to die with its agent"),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || process_is_dead(*pid).then_some(()),
        );
    }

    // ...the scheduler marks them LOST and runs every instance on the surviving agent.
    let after = cluster.wait_for(
        job,
        &format!("the tasks on {victim_host} LOST and 3 instances RUNNING on {survivor_host}"),
        WAIT_MAX,
        |status| {
            let lost = on_victim.iter().all(|(task_id, _)| {
                tasks(status)
                    .iter()
                    .any(|t| field(t, "task_id") == task_id && field(t, "state") == "LOST")
            });
            let moved = running_by_instance(status, 3).is_some_and(|running| {
                running
                    .values()
                    .all(|t| field(t, "hostname") == survivor_host)
            });
            (lost && moved).then(|| status.clone())
        },
    );
    // The replacements are new tasks; the survivor's original tasks kept running.
    let replacements = running_by_instance(&after, 3).expect("3 running");
    for (task_id, _) in &on_victim {
        assert!(
            replacements
                .values()
                .all(|t| field(t, "task_id") != task_id),
            "{after:#}"
        );
    }
    for (i, task) in &running {
        if field(task, "hostname") == survivor_host {
            assert_eq!(
                field(replacements[i], "task_id"),
                field(task, "task_id"),
                "instance {i} on the surviving agent was restarted: {after:#}"
            );
        }
    }
    assert!(cluster.agents[1 - victim].proc.is_running());
    assert!(cluster.scheduler.is_running());
}

#[test]
fn ad_hoc_failure_retried_up_to_max_task_failures() {
    let cluster = Cluster::start_with(&FAST_FLAPPING, &[AgentSpec::new("a1", "h1")]);
    let job = "www/devel/fail";
    cluster.create_job(job, &job_toml(1, "exit 3", "max_task_failures = 2"));
    let failed_twice = |status: &Value| {
        let failed = tasks_in(status, "FAILED");
        for task in &failed {
            assert_eq!(instance(task), 0, "{status:#}");
            assert_eq!(task["exit_code"], 3, "{status:#}");
        }
        assert!(failed.len() <= 2, "a third failure: {status:#}");
        failed.len() == 2
    };
    cluster.wait_for(job, "2 FAILED tasks", WAIT_MAX, |status| {
        assert_none_in(status, &["FINISHED", "LOST", "KILLED"]);
        failed_twice(status).then_some(())
    });

    // No third attempt: the history stays at two failed tasks, nothing pending or running.
    holds_for(Duration::from_secs(3), Duration::from_millis(250), || {
        let status = cluster.status_json(job);
        assert!(failed_twice(&status), "{status:#}");
        assert_eq!(tasks(&status).len(), 2, "a third attempt: {status:#}");
        assert_eq!(status["state_counts"], json!({"FAILED": 2}), "{status:#}");
    });
    let status = cluster.status_json(job);
    let ids: BTreeSet<&str> = tasks(&status).iter().map(|t| field(t, "task_id")).collect();
    assert_eq!(ids.len(), 2, "two distinct attempts: {status:#}");
}

#[test]
fn kill_job_kills_running_tasks() {
    let cluster = Cluster::start(&[AgentSpec::new("a1", "h1")]);
    let job = "www/prod/victim";
    cluster.create_job(
        job,
        &job_toml(
            3,
            "echo $$ > pid; while true; do sleep 1; done",
            "service = true\nfinalization_wait_secs = 2",
        ),
    );
    let status = cluster.wait_for(job, "3 RUNNING instances", WAIT_MAX, |status| {
        assert_none_in(status, &["FAILED", "LOST", "KILLED", "FINISHED"]);
        running_by_instance(status, 3).map(|_| status.clone())
    });
    let running = running_by_instance(&status, 3).expect("3 running");
    let pids: BTreeMap<u64, i32> = running
        .iter()
        .map(|(i, t)| (*i, read_pid_file(field(t, "sandbox"), "pid")))
        .collect();
    let task_ids: BTreeMap<u64, String> = running
        .iter()
        .map(|(i, t)| (*i, field(t, "task_id").to_string()))
        .collect();

    // Kill instance 0 only: it is KILLED and not restarted; 1 and 2 keep their tasks.
    let out = cluster.cli_ok(&["job", "kill", job, "--instances", "0"]);
    assert!(out.contains("killing"), "{out}");
    cluster.wait_for(job, "instance 0 KILLED", WAIT_MAX, |status| {
        assert_none_in(status, &["FAILED", "LOST", "FINISHED"]);
        tasks_in(status, "KILLED")
            .iter()
            .any(|t| field(t, "task_id") == task_ids[&0])
            .then_some(())
    });
    wait_until(
        "instance 0's process to die",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || process_is_dead(pids[&0]).then_some(()),
    );
    holds_for(Duration::from_secs(2), Duration::from_millis(250), || {
        let status = cluster.status_json(job);
        assert_eq!(tasks(&status).len(), 3, "instance 0 restarted: {status:#}");
        let running: BTreeMap<u64, &str> = tasks_in(&status, "RUNNING")
            .iter()
            .map(|t| (instance(t), field(t, "task_id")))
            .collect();
        let expected: BTreeMap<u64, &str> =
            [(1, task_ids[&1].as_str()), (2, task_ids[&2].as_str())].into();
        assert_eq!(running, expected, "{status:#}");
    });
    for i in [1, 2] {
        assert!(!process_is_dead(pids[&i]), "instance {i} died");
    }

    // Kill the whole job: everything ends KILLED and nothing restarts.
    let out = cluster.cli_ok(&["job", "kill", job]);
    assert!(out.contains("killing"), "{out}");
    cluster.wait_for(job, "all 3 tasks KILLED", WAIT_MAX, |status| {
        assert_none_in(status, &["FAILED", "LOST", "FINISHED"]);
        (tasks_in(status, "KILLED").len() == 3).then_some(())
    });
    for (i, pid) in &pids {
        wait_until(
            &format!("instance {i}'s process (pid {pid}) to die"),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || process_is_dead(*pid).then_some(()),
        );
    }
    holds_for(Duration::from_secs(3), Duration::from_millis(250), || {
        let status = cluster.status_json(job);
        assert_eq!(status["state_counts"], json!({"KILLED": 3}), "{status:#}");
        assert_eq!(tasks(&status).len(), 3, "a restart: {status:#}");
    });
}

#[test]
fn agent_death_kills_the_whole_task_process_tree() {
    // The task's shell starts a child and waits for it: both must die with the agent, not
    // only the shell (the process the agent forked).
    let mut cluster = Cluster::start(&[AgentSpec::new("a1", "h1")]);
    let job = "www/devel/tree";
    cluster.create_job(
        job,
        &job_toml(1, "sleep 30 & echo $! > child; echo $$ > pid; wait", ""),
    );
    let status = cluster.wait_for(job, "1 RUNNING instance", WAIT_MAX, |status| {
        running_by_instance(status, 1).map(|_| status.clone())
    });
    let sandbox = field(tasks_in(&status, "RUNNING")[0], "sandbox").to_string();
    let shell = KillOnDrop(read_pid_file(&sandbox, "pid"));
    let child = KillOnDrop(read_pid_file(&sandbox, "child"));
    assert!(!process_is_dead(shell.0) && !process_is_dead(child.0));

    cluster.agents[0].proc.kill9();
    for (what, pid) in [("the task's shell", shell.0), ("the task's child", child.0)] {
        wait_until(
            &format!("{what} (pid {pid}) to die with its agent"),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || process_is_dead(pid).then_some(()),
        );
    }
}
