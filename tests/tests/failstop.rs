//! End-to-end: fail-stop (ARCHITECTURE.md, "Fail-stop and restart after a crash"). A panic on a
//! shard thread stops the whole real `borealis scheduler` process at once, with the panic on
//! its stderr and a non-zero exit, instead of leaving it running with that shard dead; a
//! restart on the same data dir recovers what was acknowledged before the panic. The panic is
//! injected with the scheduler's documented fault-injection flag (`--fault-panic-shard`, also
//! `BOREALIS_FAULT_PANIC_SHARD`). Build the binary first: `cargo build -p borealis`.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use borealis_tests::{describe, http_get, job_toml, wait_until, Cluster, POLL};

/// When the injected panic fires, after the shards start: time for the test to submit a job
/// first (a scheduler answers within a second or two of its start, even on a loaded machine).
const FAULT_AFTER: Duration = Duration::from_secs(5);
/// How long after the fault the process may take to be gone (it aborts at once; printing the
/// backtrace of a debug binary takes a moment).
const EXIT_MAX: Duration = Duration::from_secs(15);

/// An aborting child must not leave a core file behind (where the machine's core limit would
/// allow one): children inherit this process's limit.
fn no_core_files() {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain system call on a local struct.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &none);
    }
}

#[test]
fn a_shard_panic_stops_the_scheduler_and_a_restart_recovers() {
    no_core_files();
    // Shard 1 of the harness's 2: not the first, which a scheduler that waited on its shards
    // in order would have noticed anyway.
    let fault = format!("1:{}", FAULT_AFTER.as_millis());
    let started = Instant::now();
    let mut cluster = Cluster::start_with(&["--fault-panic-shard", &fault], &[]);
    let http = cluster.http_addr();
    let health = http_get(&http, "/leaderhealth").expect("GET /leaderhealth");
    assert_eq!(health.status, 200, "before the fault: {}", health.text());

    let job = "www/prod/before-the-panic";
    let submitted = cluster.try_create_job(job, &job_toml(1, "sleep 1000", ""));
    assert!(
        submitted.status.success() && cluster.scheduler.is_running(),
        "the job must be acknowledged before the injected panic ({} after the shards \
         started; {:?} since the scheduler was started): {}",
        fault,
        started.elapsed(),
        describe(&submitted)
    );

    // The shard panics: the whole process stops, within a bound.
    let status = wait_until(
        "the scheduler to exit after its shard's injected panic",
        FAULT_AFTER + EXIT_MAX,
        POLL,
        || cluster.scheduler.exit_status(),
    );
    assert!(!status.success(), "exited {status}");
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "the panic hook aborts: {status}"
    );
    let stderr = cluster.scheduler.stderr_text();
    // The hook's own line (straight to stderr): thread, location and message.
    let fatal = stderr
        .lines()
        .find(|l| l.starts_with("borealis: fatal: thread 'shard-1"))
        .unwrap_or_else(|| panic!("no fail-stop line on stderr:\n{stderr}"));
    assert!(
        fatal.contains("shards/src/lib.rs:")
            && fatal.contains("injected fault (BOREALIS_FAULT_PANIC_SHARD=1:5000)")
            && fatal.ends_with("aborting the process (fail-stop)"),
        "{fatal}"
    );
    // The same through the log, and the default hook's report.
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("panic: injected fault")),
        "no ERROR log line of the panic:\n{stderr}"
    );
    assert!(
        stderr.contains("panicked at shards/src/lib.rs:"),
        "no default panic report:\n{stderr}"
    );

    // A supervisor restarts it on the same data dir, without the fault: recovery brings back
    // the job acknowledged before the panic.
    cluster.restart_scheduler(&[]);
    assert!(
        cluster.job_listed(job),
        "the job is not recovered: {:?}",
        cluster.list_json()
    );
    let http = cluster.http_addr();
    let health = http_get(&http, "/leaderhealth").expect("GET /leaderhealth");
    assert_eq!(health.status, 200, "after the restart: {}", health.text());
}
