//! End-to-end: issue 7's policy rules (quota, preemption, tiers, pending reasons, allowed
//! environments) with a real scheduler, real agents and real task processes, driven by the
//! `borealis job` and `borealis quota` command lines. Build the binaries first:
//! `cargo build --workspace --bins`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use borealis_tests::{
    describe, expect_one_line_error, field, holds_for, processes_with, tasks, tasks_in, wait_until,
    AgentSpec, Cluster, POLL,
};
use serde_json::Value;

/// The longest any one wait of these tests takes.
const WAIT: Duration = Duration::from_secs(30);

/// Preemption that starts within seconds: a task blocked for 1 s may search, searches every
/// second (the scheduler's sweep runs them every 2 s), and a slot is held long enough for
/// the victims to end. Short schedule penalties keep retries quick.
const FAST_PREEMPTION: [&str; 10] = [
    "--preemption-delay",
    "1s",
    "--preemption-slot-search-interval",
    "1s",
    "--preemption-slot-hold-time",
    "20s",
    "--initial-schedule-penalty",
    "200ms",
    "--max-schedule-penalty",
    "2s",
];

/// A job file: `instances` instances of `command` with the given resources, and `extra`
/// top-level lines (`production = true`, `tier = "preemptible"`, ...).
fn job_file(
    instances: u32,
    command: &str,
    extra: &str,
    cpu: f64,
    ram: &str,
    tables: &str,
) -> String {
    // A JSON string is a valid TOML basic string (the same escapes).
    let command = serde_json::to_string(command).expect("a string serializes");
    format!(
        "instances = {instances}\ncommand = {command}\nfinalization_wait_secs = 5\n{extra}\n\n\
         [resources]\ncpu = {cpu}\nram = \"{ram}\"\ndisk = \"16MiB\"\n{tables}\n"
    )
}

/// A service command that, on SIGTERM, writes `<dir>/term.<instance>` and exits 0.
fn term_marking_command(dir: &Path) -> String {
    format!(
        "trap 'echo term > {dir}/term.$BOREALIS_INSTANCE_ID; exit 0' TERM; \
         while true; do sleep 0.1; done",
        dir = dir.display()
    )
}

/// A directory the test owns, for the tasks' marker files.
fn marker_dir(cluster: &Cluster) -> PathBuf {
    let dir = cluster.dir().join("markers");
    fs::create_dir_all(&dir).expect("create the marker dir");
    // Tasks run as `nobody` (the harness's --executor-user): they must be able to write here.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).expect("chmod the marker dir");
    dir.canonicalize().expect("canonicalize the marker dir")
}

/// The instances for which `<dir>/term.<instance>` exists.
fn term_markers(dir: &Path) -> BTreeSet<u64> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("term.")?
                .parse::<u64>()
                .ok()
        })
        .collect()
}

/// SIGKILLs, when dropped, any task process whose command line names `marker` (a path inside
/// the test's own temp dir), so that a failing test leaves no task behind.
struct KillTasksOnDrop(String);

impl Drop for KillTasksOnDrop {
    fn drop(&mut self) {
        for pid in processes_with(&self.0) {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// `borealis quota set ROLE --cpu CPU --ram RAM --disk DISK`, which must succeed.
fn set_quota(cluster: &Cluster, role: &str, cpu: &str, ram: &str, disk: &str) {
    cluster.cli_ok(&[
        "quota", "set", role, "--cpu", cpu, "--ram", ram, "--disk", disk,
    ]);
}

/// `borealis quota get ROLE --json`, parsed.
fn quota_json(cluster: &Cluster, role: &str) -> Value {
    let stdout = cluster.cli_ok(&["quota", "get", role, "--json"]);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("quota get {role} --json is not JSON ({e}): {stdout}"))
}

/// Task ids of the tasks in `state`.
fn ids_in(status: &Value, state: &str) -> BTreeSet<String> {
    tasks_in(status, state)
        .iter()
        .map(|t| field(t, "task_id").to_string())
        .collect()
}

/// Panics if any task of the status is in one of `states`.
fn assert_none_in(status: &Value, states: &[&str], why: &str) {
    for task in tasks(status) {
        assert!(
            !states.contains(&field(task, "state")),
            "{why}: unexpected {} task {task}\nstatus: {status:#}",
            field(task, "state")
        );
    }
}

#[test]
fn production_job_preempts_non_production_processes() {
    let mut spec = AgentSpec::new("a1", "h1").cpus(2.0);
    spec.ram = "1GiB".into();
    let cluster = Cluster::start_with(&FAST_PREEMPTION, &[spec]);
    let markers = marker_dir(&cluster);
    let _cleanup = KillTasksOnDrop(markers.display().to_string());

    // Four non-production, preemptible service tasks of 0.5 cpu fill the agent's 2 cpus.
    let batch = "batch/prod/filler";
    cluster.create_job(
        batch,
        &job_file(
            4,
            &term_marking_command(&markers),
            "service = true\ntier = \"preemptible\"",
            0.5,
            "64MiB",
            "",
        ),
    );
    let before = cluster.wait_for(batch, "4 RUNNING filler tasks", WAIT, |s| {
        (tasks_in(s, "RUNNING").len() == 4).then(|| s.clone())
    });
    let fillers = ids_in(&before, "RUNNING");
    // Their processes run (they are real), and nobody was signalled yet.
    let dir_text = markers.display().to_string();
    wait_until(
        "the 4 filler shells to run",
        Duration::from_secs(10),
        POLL,
        || (processes_with(&dir_text).len() >= 4).then_some(()),
    );
    assert!(
        term_markers(&markers).is_empty(),
        "{:?}",
        term_markers(&markers)
    );

    // A production job of 1 cpu fits only if two of the fillers go.
    set_quota(&cluster, "prod-role", "4", "4GiB", "4GiB");
    let prod = "prod-role/prod/web";
    cluster.create_job(
        prod,
        &job_file(
            1,
            "while true; do sleep 0.1; done",
            "service = true\nproduction = true",
            1.0,
            "64MiB",
            "",
        ),
    );

    let prod_status = cluster.wait_for(prod, "the production task to be RUNNING", WAIT, |s| {
        (tasks_in(s, "RUNNING").len() == 1).then(|| s.clone())
    });
    let preemptor = field(tasks_in(&prod_status, "RUNNING")[0], "task_id").to_string();
    assert_eq!(
        tasks(&prod_status).len(),
        1,
        "the production task ran first time: {prod_status:#}"
    );

    // Exactly two fillers were preempted (the fewest that make room), each by the preemptor,
    // after SIGTERM reached its process; the other two still run, undisturbed.
    let after = cluster.wait_for(batch, "2 fillers KILLED by preemption", WAIT, |s| {
        let killed = tasks_in(s, "KILLED");
        (killed.len() == 2 && killed.iter().all(|t| !field(t, "preempted_by").is_empty()))
            .then(|| s.clone())
    });
    let killed = tasks_in(&after, "KILLED");
    for task in &killed {
        assert_eq!(
            field(task, "preempted_by"),
            preemptor,
            "a victim names its preemptor: {task}\nstatus: {after:#}"
        );
        assert!(
            fillers.contains(field(task, "task_id")),
            "a victim was one of the original fillers: {task}"
        );
    }
    let victim_instances: BTreeSet<u64> = killed
        .iter()
        .map(|t| t["instance"].as_u64().expect("an instance"))
        .collect();
    wait_until(
        "a SIGTERM marker from each victim",
        Duration::from_secs(10),
        POLL,
        || (term_markers(&markers) == victim_instances).then_some(()),
    );
    let survivors: BTreeSet<String> = fillers
        .iter()
        .filter(|id| !killed.iter().any(|t| field(t, "task_id") == id.as_str()))
        .cloned()
        .collect();
    assert_eq!(survivors.len(), 2, "{after:#}");

    // It stays that way: no further victim, the production task keeps running, the survivors
    // keep running, and the victims' replacements wait (the agent is full).
    holds_for(Duration::from_secs(6), Duration::from_millis(500), || {
        let s = cluster.status_json(batch);
        let killed = tasks_in(&s, "KILLED");
        assert_eq!(killed.len(), 2, "no more victims than needed: {s:#}");
        assert_none_in(&s, &["PREEMPTING", "KILLING", "FAILED", "LOST"], "fillers");
        let running = ids_in(&s, "RUNNING");
        assert_eq!(running, survivors, "the two survivors run on: {s:#}");
        let p = cluster.status_json(prod);
        assert_eq!(
            ids_in(&p, "RUNNING"),
            BTreeSet::from([preemptor.clone()]),
            "the production task runs on: {p:#}"
        );
    });
    assert_eq!(
        term_markers(&markers),
        victim_instances,
        "only the victims got SIGTERM"
    );

    // The human status notes the preemptor too.
    let text = cluster.cli_ok(&["job", "status", batch]);
    assert!(
        text.contains(&format!("preempted by {preemptor}")),
        "job status notes the preemptor:\n{text}"
    );
}

#[test]
fn preemption_never_crosses_roles_for_production_victims() {
    let mut spec = AgentSpec::new("a1", "h1").cpus(2.0);
    spec.ram = "1GiB".into();
    let cluster = Cluster::start_with(&FAST_PREEMPTION, &[spec]);
    let markers = marker_dir(&cluster);
    let _cleanup = KillTasksOnDrop(markers.display().to_string());
    set_quota(&cluster, "role-a", "4", "4GiB", "4GiB");
    set_quota(&cluster, "role-b", "4", "4GiB", "4GiB");

    // Role A's production work fills the agent.
    let a = "role-a/prod/web";
    cluster.create_job(
        a,
        &job_file(
            2,
            &term_marking_command(&markers),
            "service = true\nproduction = true",
            1.0,
            "64MiB",
            "",
        ),
    );
    let a_status = cluster.wait_for(a, "2 RUNNING tasks of role A", WAIT, |s| {
        (tasks_in(s, "RUNNING").len() == 2).then(|| s.clone())
    });
    let a_running = ids_in(&a_status, "RUNNING");

    // Role B's production job, even at a higher priority, needs what A holds: it waits.
    let b = "role-b/prod/web";
    cluster.create_job(
        b,
        &job_file(
            1,
            "while true; do sleep 0.1; done",
            "service = true\nproduction = true\npriority = 100",
            1.0,
            "64MiB",
            "",
        ),
    );
    // Many preemption delays and search intervals (and sweeps) pass.
    holds_for(Duration::from_secs(10), Duration::from_millis(500), || {
        let s = cluster.status_json(a);
        assert_eq!(
            ids_in(&s, "RUNNING"),
            a_running,
            "role A's production tasks run on: {s:#}"
        );
        assert_eq!(tasks(&s).len(), 2, "no task of role A replaced: {s:#}");
        let s = cluster.status_json(b);
        assert_eq!(tasks(&s).len(), 1, "{s:#}");
        assert_eq!(
            tasks_in(&s, "PENDING").len(),
            1,
            "role B's task stays PENDING: {s:#}"
        );
    });
    assert!(
        term_markers(&markers).is_empty(),
        "no task of role A was signalled: {:?}",
        term_markers(&markers)
    );
    let log = cluster.scheduler.stderr_text();
    assert!(
        !log.contains("preemption slot held"),
        "the scheduler held no slot for role B"
    );

    // B says why it waits.
    let s = cluster.wait_for(b, "a pending reason", WAIT, |s| {
        let reason = field(&tasks(s)[0], "pending_reason").to_string();
        (!reason.is_empty()).then_some(reason)
    });
    assert!(s.contains("insufficient cpu"), "pending reason: {s:?}");
    let text = cluster.cli_ok(&["job", "status", b]);
    assert!(text.contains("insufficient cpu"), "human status:\n{text}");

    // Control: the preemptor is on in this cluster. Role A's own production job of a higher
    // priority may preempt A's lower-priority work, and does (one task: 1 cpu is enough).
    let a_high = "role-a/prod/urgent";
    cluster.create_job(
        a_high,
        &job_file(
            1,
            "while true; do sleep 0.1; done",
            "service = true\nproduction = true\npriority = 100",
            1.0,
            "64MiB",
            "",
        ),
    );
    let urgent = cluster.wait_for(a_high, "role A's urgent task to be RUNNING", WAIT, |s| {
        tasks_in(s, "RUNNING")
            .first()
            .map(|t| field(t, "task_id").to_string())
    });
    let s = cluster.wait_for(a, "one of role A's tasks KILLED by preemption", WAIT, |s| {
        (tasks_in(s, "KILLED").len() == 1).then(|| s.clone())
    });
    let victim = tasks_in(&s, "KILLED")[0];
    assert_eq!(field(victim, "preempted_by"), urgent, "{s:#}");
    assert!(a_running.contains(field(victim, "task_id")), "{s:#}");
    wait_until("the victim's SIGTERM marker", WAIT, POLL, || {
        (term_markers(&markers).len() == 1).then_some(())
    });
    // Role B still waits: role A's urgent production task is not B's to preempt either.
    let s = cluster.status_json(b);
    assert_eq!(tasks_in(&s, "PENDING").len(), 1, "{s:#}");
}

#[test]
fn job_over_quota_is_refused_and_nothing_is_created() {
    let cluster = Cluster::start(&[AgentSpec::new("a1", "h1")]);
    set_quota(&cluster, "www", "1", "1GiB", "1GiB");
    let q = quota_json(&cluster, "www");
    assert_eq!(q["quota_set"], true, "{q}");
    assert_eq!(q["quota"]["cpu"], 1.0, "{q}");
    assert_eq!(q["quota"]["ram_mib"], 1024, "{q}");
    assert_eq!(q["quota"]["disk_mib"], 1024, "{q}");
    assert_eq!(q["used"]["cpu"], 0.0, "{q}");

    // Production, 2 instances of 1 cpu: 2 cpu in all, over the quota of 1.
    let big = "www/prod/big";
    let output = cluster.try_create_job(
        big,
        &job_file(2, "sleep 60", "production = true", 1.0, "64MiB", ""),
    );
    let line = expect_one_line_error(&output);
    assert!(
        line.contains("quota exceeded for role www: cpu: quota 1.000, used 0.000, requested 2.000"),
        "the refusal names the resource, quota, use and request: {line}"
    );
    let line = expect_one_line_error(&cluster.cli(&["job", "status", big]));
    assert!(
        line.contains("unknown job") && line.contains(big),
        "nothing was created: {line}"
    );
    assert!(!cluster.job_listed(big));

    // A role with no quota may run no production work at all.
    let unquoted = "noquota/prod/small";
    let line = expect_one_line_error(&cluster.try_create_job(
        unquoted,
        &job_file(1, "sleep 60", "production = true", 0.1, "16MiB", ""),
    ));
    assert!(
        line.contains("quota exceeded for role noquota: cpu: quota 0.000"),
        "a role with no quota is refused: {line}"
    );
    let line = expect_one_line_error(&cluster.cli(&["job", "status", unquoted]));
    assert!(line.contains("unknown job"), "{line}");

    // Non-production work of the same size does not count against quota.
    let batch = "www/devel/big";
    cluster.create_job(
        batch,
        &job_file(2, "sleep 60", "tier = \"preemptible\"", 1.0, "64MiB", ""),
    );
    let s = cluster.status_json(batch);
    assert_eq!(tasks(&s).len(), 2, "{s:#}");
    holds_for(Duration::from_secs(1), Duration::from_millis(250), || {
        let q = quota_json(&cluster, "www");
        assert_eq!(
            q["used"]["cpu"], 0.0,
            "non-production work is not counted: {q}"
        );
        assert_eq!(q["used"]["ram_mib"], 0, "{q}");
    });

    // A production job within quota is accepted, and its use shows.
    let small = "www/prod/small";
    cluster.create_job(
        small,
        &job_file(1, "sleep 60", "production = true", 0.5, "128MiB", ""),
    );
    let q = wait_until("the use of www to show in quota get", WAIT, POLL, || {
        let q = quota_json(&cluster, "www");
        (q["used"]["cpu"] == 0.5).then_some(q)
    });
    assert_eq!(q["used"]["ram_mib"], 128, "{q}");
    assert_eq!(q["used"]["disk_mib"], 16, "{q}");
    assert_eq!(q["quota"]["cpu"], 1.0, "{q}");

    // The next one counts that use.
    let more = "www/prod/more";
    let line = expect_one_line_error(&cluster.try_create_job(
        more,
        &job_file(1, "sleep 60", "production = true", 1.0, "64MiB", ""),
    ));
    assert!(
        line.contains("quota exceeded for role www: cpu: quota 1.000, used 0.500, requested 1.000"),
        "{line}"
    );
    assert!(!cluster.job_listed(more));

    // Killing the production job gives its quota back, and the bigger job then fits.
    cluster.cli_ok(&["job", "kill", small]);
    wait_until("the use of www to drop to zero", WAIT, POLL, || {
        let q = quota_json(&cluster, "www");
        (q["used"]["cpu"] == 0.0 && q["used"]["ram_mib"] == 0).then_some(())
    });
    cluster.create_job(
        more,
        &job_file(1, "sleep 60", "production = true", 1.0, "64MiB", ""),
    );
    let q = wait_until("the use of www to show the new job", WAIT, POLL, || {
        let q = quota_json(&cluster, "www");
        (q["used"]["cpu"] == 1.0).then_some(q)
    });
    assert_eq!(q["used"]["ram_mib"], 64, "{q}");
}

#[test]
fn unplaceable_job_status_prints_its_reason() {
    let mut spec = AgentSpec::new("a1", "h1");
    spec.ram = "1GiB".into();
    let cluster = Cluster::start(&[spec]);

    // More ram than any agent has.
    let huge = "www/devel/huge";
    cluster.create_job(huge, &job_file(1, "sleep 60", "", 0.1, "2GiB", ""));
    let reason = cluster.wait_for(huge, "a pending reason", WAIT, |s| {
        let t = &tasks(s)[0];
        assert_eq!(field(t, "state"), "PENDING", "{s:#}");
        let reason = field(t, "pending_reason");
        reason
            .contains("insufficient ram")
            .then(|| reason.to_string())
    });
    assert!(
        reason.contains("insufficient ram on 1 agent"),
        "--json pending_reason: {reason:?}"
    );
    let text = cluster.cli_ok(&["job", "status", huge]);
    assert!(
        text.contains("insufficient ram on 1 agent"),
        "human status prints the reason:\n{text}"
    );

    // A value constraint on an attribute no agent has.
    let pinned = "www/devel/pinned";
    cluster.create_job(
        pinned,
        &job_file(
            1,
            "sleep 60",
            "",
            0.1,
            "16MiB",
            "\n[[constraints]]\nattribute = \"zone\"\nvalues = [\"z9\"]\n",
        ),
    );
    let reason = cluster.wait_for(pinned, "a pending reason", WAIT, |s| {
        let t = &tasks(s)[0];
        assert_eq!(field(t, "state"), "PENDING", "{s:#}");
        let reason = field(t, "pending_reason");
        (!reason.is_empty()).then(|| reason.to_string())
    });
    assert!(
        reason.contains("constraint zone unmet on 1 agent"),
        "the reason names the constraint: {reason:?}"
    );
    let text = cluster.cli_ok(&["job", "status", pinned]);
    assert!(text.contains("constraint zone unmet"), "{text}");
}

#[test]
fn job_in_disallowed_environment_is_refused() {
    let cluster = Cluster::start(&[]);
    let job = "www/bogus/x";
    let output = cluster.try_create_job(job, &job_file(1, "sleep 60", "", 0.1, "16MiB", ""));
    let line = expect_one_line_error(&output);
    assert!(
        line.contains("environment \"bogus\" is not allowed"),
        "the refusal names the environment: {line}\n{}",
        describe(&output)
    );
    let line = expect_one_line_error(&cluster.cli(&["job", "status", job]));
    assert!(line.contains("unknown job"), "{line}");
    // An allowed environment of the same job is fine.
    cluster.create_job(
        "www/staging2/x",
        &job_file(1, "sleep 60", "", 0.1, "16MiB", ""),
    );
}
