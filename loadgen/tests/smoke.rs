//! Smoke test: the real scheduler binary on loopback, the loadgen in-process with 50 agents
//! and 2 clients for 3 s. Asserts correctness only (the run verified, every submitted task
//! ended), never timings.
//!
//! The binary is not built here: `cargo build -p borealis` first (scripts/test.sh does), or
//! point `BOREALIS_BIN` at one.

use std::fs::File;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use borealis_loadgen::{Config, TaskDuration};

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
