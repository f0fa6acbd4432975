//! Smoke test: the real scheduler binary on loopback, the loadgen in-process with 50 agents
//! and 2 clients for 3 s; and rolling updates of a small service job, timed alone and rolled
//! while clients submit. Asserts correctness only (the run verified, every submitted task
//! ended, every update rolled forward), never timings.
//!
//! The binary is not built here: `cargo build -p borealis` first (scripts/test.sh does), or
//! point `BOREALIS_BIN` at one.

use std::fs::File;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use borealis_loadgen::{Config, TaskDuration, UpdateMode};

const STARTUP_MAX: Duration = Duration::from_secs(30);
const LOG_TAIL_BYTES: usize = 16 * 1024;

fn borealis_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("BOREALIS_BIN") {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadgen/ has a parent")
        .to_path_buf();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    target.join("debug").join("borealis")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// The scheduler child process; SIGKILLed when dropped.
struct Scheduler {
    child: Child,
    log: PathBuf,
    dir: PathBuf,
    address: String,
}

impl Scheduler {
    fn start() -> Scheduler {
        let bin = borealis_bin();
        assert!(
            bin.is_file(),
            "no borealis binary at {}: build it first (cargo build -p borealis) or set BOREALIS_BIN",
            bin.display()
        );
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "borealis-loadgen-smoke-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = dir.join("scheduler.log");
        let out = File::create(&log).expect("log file");
        let child = Command::new(&bin)
            .args(["scheduler", "--ip", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args([
                "--http-port",
                "0",
                "--shards",
                "2",
                "--no-pin",
                "--data-dir",
            ])
            .arg(dir.join("data"))
            .env("BOREALIS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut scheduler = Scheduler {
            child,
            log,
            dir,
            address: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + STARTUP_MAX;
        loop {
            if TcpStream::connect(&scheduler.address).is_ok() {
                return scheduler;
            }
            if let Ok(Some(status)) = scheduler.child.try_wait() {
                panic!(
                    "the scheduler exited ({status}) before listening:\n{}",
                    scheduler.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the scheduler did not listen on {} within {STARTUP_MAX:?}:\n{}",
                scheduler.address,
                scheduler.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let mut text = Vec::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_end(&mut text);
        }
        let start = text.len().saturating_sub(LOG_TAIL_BYTES);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("scheduler log kept in {}", self.dir.display());
        }
    }
}

#[test]
fn fifty_agents_two_clients_verify() {
    let scheduler = Scheduler::start();
    let mut config = Config::new(&scheduler.address);
    config.agents = 50;
    config.clients = 2;
    config.instances_per_job = 10;
    config.duration = 3.0;
    config.task_duration_ms = TaskDuration::Millis { min: 100, max: 300 };
    config.max_active_tasks = 1000;
    config.failure_rate = 0.1;
    config.constraint_mix = "plain=60,zone=20,host-limit=20".parse().unwrap();
    config.scheduler_pid = Some(scheduler.child.id());
    config.drain_secs = 20.0;
    config.register_timeout_secs = 30.0;
    let report = borealis_loadgen::run(config).expect("the loadgen runs");
    println!("{}", report.table());
    let t = &report.totals;
    assert!(
        report.verified,
        "verification failed: {:#?}\nscheduler log tail:\n{}",
        report.verification_errors,
        scheduler.log_tail()
    );
    assert!(t.tasks_submitted > 0, "nothing was submitted");
    assert_eq!(t.jobs_acked, t.jobs_submitted);
    assert_eq!(t.tasks_finished + t.tasks_failed, t.tasks_submitted);
    assert_eq!(t.tasks_placed, t.tasks_submitted);
    assert_eq!(t.agents_lost, 0);
    assert!(t.tasks_finished > 0);
    assert!(report.jobs_checked_by_query > 0);
    assert!(report.scheduler_rss_bytes.is_some());
}

#[test]
fn updates_timed_alone_roll_forward_and_verify() {
    let scheduler = Scheduler::start();
    let mut config = Config::new(&scheduler.address);
    config.agents = 0;
    config.update = UpdateMode::Time;
    config.update_instances = 200;
    config.update_agents = 20;
    config.update_batch_size = 15;
    config.update_repeat = 2;
    config.update_timeout_secs = 60.0;
    config.scheduler_pid = Some(scheduler.child.id());
    config.register_timeout_secs = 30.0;
    let report = borealis_loadgen::run(config).expect("the loadgen runs");
    println!("{}", report.table());
    assert!(
        report.verified,
        "verification failed: {:#?}\nscheduler log tail:\n{}",
        report.verification_errors,
        scheduler.log_tail()
    );
    let u = report.update.as_ref().expect("an update section");
    assert_eq!(u.runs.len(), 2);
    assert_eq!(
        u.runs.iter().map(|r| r.generation).collect::<Vec<_>>(),
        [1, 2]
    );
    for r in &u.runs {
        assert_eq!(
            (r.launches, r.kills),
            (200, 200),
            "one replacement each: {r:?}"
        );
        assert!(r.secs > 0.0 && r.instances_per_sec > 0.0);
    }
    let t = &report.totals;
    assert_eq!(
        (t.update_launched, t.update_killed, t.tasks_placed),
        (600, 400, 0)
    );
    assert_eq!(t.agents_lost, 0);
}

#[test]
fn updates_during_client_load_verify() {
    let scheduler = Scheduler::start();
    let mut config = Config::new(&scheduler.address);
    config.agents = 30;
    config.clients = 1;
    config.instances_per_job = 10;
    config.duration = 3.0;
    config.task_duration_ms = TaskDuration::Millis { min: 100, max: 300 };
    config.max_active_tasks = 500;
    config.update = UpdateMode::During;
    config.update_instances = 100;
    config.update_agents = 10;
    config.update_batch_size = 20;
    config.update_timeout_secs = 60.0;
    config.scheduler_pid = Some(scheduler.child.id());
    config.drain_secs = 20.0;
    config.register_timeout_secs = 30.0;
    let report = borealis_loadgen::run(config).expect("the loadgen runs");
    println!("{}", report.table());
    assert!(
        report.verified,
        "verification failed: {:#?}\nscheduler log tail:\n{}",
        report.verification_errors,
        scheduler.log_tail()
    );
    let u = report.update.as_ref().expect("an update section");
    assert!(!u.runs.is_empty(), "no update rolled during the window");
    assert!(u.window_coverage.is_some_and(|c| c > 0.0));
    let t = &report.totals;
    assert_eq!(
        t.tasks_placed, t.tasks_submitted,
        "client tasks counted apart"
    );
    assert_eq!(t.tasks_killed, 0, "no client task was killed");
    assert_eq!(
        t.update_launched,
        100 * (1 + u.runs.len() as u64),
        "one replacement per instance and update"
    );
}
