//! A real etcd (Debian's `etcd-server`) on free loopback ports with a temporary data dir, and
//! helpers to run candidates against it. Every wait is bounded.

#![allow(dead_code)]

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use borealis_control::etcd_client::{Client, ConnectOptions, GetOptions};
use borealis_control::{run_election, ControlError, ElectionConfig, LeaderView, Leadership};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Debian's `etcd-server` binary; `BOREALIS_ETCD_BIN` overrides it.
pub const ETCD: &str = "/usr/bin/etcd";

fn etcd_bin() -> PathBuf {
    std::env::var_os("BOREALIS_ETCD_BIN").map_or_else(|| PathBuf::from(ETCD), PathBuf::from)
}
const READY_WITHIN: Duration = Duration::from_secs(20);

pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "borealis_control=info".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// One etcd process. Killed (by PID) on drop; its data dir is removed with it.
pub struct Etcd {
    child: Option<Child>,
    pub client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd and waits (bounded) until it serves linearizable reads.
    pub async fn start() -> Etcd {
        let bin = etcd_bin();
        assert!(
            bin.exists(),
            "{} is missing: run scripts/setup.sh (installs Debian's etcd-server) \
             before running borealis-control's tests",
            bin.display()
        );
        let mut etcd = Etcd {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            dir: tempfile::Builder::new()
                .prefix("borealis-etcd-")
                .tempdir()
                .expect("temp dir"),
        };
        etcd.spawn();
        etcd.wait_ready().await;
        etcd
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log file");
        let child = Command::new(etcd_bin())
            .arg("--name=default")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start etcd: {e} (run scripts/setup.sh)"));
        self.child = Some(child);
    }

    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("etcd exited with {status}: {}", self.log_tail());
            }
            if Instant::now() > deadline {
                panic!(
                    "etcd not ready within {READY_WITHIN:?}: {}",
                    self.log_tail()
                );
            }
            if self.ready().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn ready(&self) -> bool {
        let step = Duration::from_millis(500);
        let opts = ConnectOptions::new().with_connect_timeout(step);
        let attempt = async {
            let mut c = Client::connect([self.endpoint()], Some(opts)).await.ok()?;
            c.get("borealis-ready-probe", None).await.ok()
        };
        matches!(tokio::time::timeout(step, attempt).await, Ok(Some(_)))
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("etcd running").id() as i32
    }

    /// `kill -STOP`: etcd stops answering, its sockets stay open.
    pub fn pause(&self) {
        // SAFETY: kill(2) on the PID of our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGSTOP) }, 0);
    }

    pub fn resume(&self) {
        // SAFETY: kill(2) on the PID of our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGCONT) }, 0);
    }

    /// SIGKILL and reap (also works on a stopped process).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data dir.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.endpoints(), None)
            .await
            .expect("connect to test etcd")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let start = log.len().saturating_sub(4000);
        log[start..].to_string()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `run_election` task with its view and a way to stop it.
pub struct Candidate {
    pub advertise: String,
    pub view: LeaderView,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ControlError>>,
}

pub fn config(etcd: &Etcd, prefix: &str, advertise: &str, ttl: i64) -> ElectionConfig {
    ElectionConfig {
        endpoints: etcd.endpoints(),
        prefix: prefix.to_string(),
        lease_ttl_secs: ttl,
        advertise: advertise.to_string(),
        max_leading: Duration::from_secs(3600),
    }
}

impl Candidate {
    pub fn spawn(cfg: ElectionConfig) -> Candidate {
        let view = LeaderView::new();
        let (stop, stopped) = oneshot::channel::<()>();
        let advertise = cfg.advertise.clone();
        let task = tokio::spawn(run_election(cfg, view.clone(), async move {
            let _ = stopped.await;
        }));
        Candidate {
            advertise,
            view,
            stop: Some(stop),
            task,
        }
    }

    pub fn status(&self) -> Leadership {
        (*self.view.get()).clone()
    }

    /// Graceful stop: resigns and revokes its lease; bounded.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("election task stops within 10 s")
            .expect("election task did not panic")
            .expect("election returns Ok");
    }

    /// Kills the task without any cleanup (its lease stays until it expires or is revoked).
    pub async fn abort(self) {
        self.task.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` and `state()` after `within`.
/// Returns the time it took.
pub async fn wait_until(
    within: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
    state: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() > within {
            panic!("{what}: not within {within:?}; state: {}", state());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `Some(index)` when exactly one candidate leads and every other one follows it.
pub fn settled(cands: &[&Candidate]) -> Option<usize> {
    let statuses: Vec<Leadership> = cands.iter().map(|c| c.status()).collect();
    let leaders: Vec<usize> = (0..cands.len())
        .filter(|&i| statuses[i].is_leader())
        .collect();
    let [leader] = leaders[..] else { return None };
    let all_follow = statuses.iter().enumerate().all(|(i, s)| {
        i == leader
            || *s
                == Leadership::Follower {
                    leader: cands[leader].advertise.clone(),
                }
    });
    all_follow.then_some(leader)
}

pub fn describe(cands: &[&Candidate]) -> String {
    cands
        .iter()
        .map(|c| format!("{} => {:?}", c.advertise, c.status()))
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn fence(c: &Candidate) -> i64 {
    c.view.fence_revision().expect("candidate leads")
}

/// The lease holding the election key created at `fence_revision`.
pub async fn lease_of(etcd: &Etcd, prefix: &str, fence_revision: i64) -> i64 {
    let mut client = etcd.client().await;
    let resp = client
        .get(
            format!("{prefix}/election/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .expect("read election keys");
    resp.kvs()
        .iter()
        .find(|kv| kv.create_revision() == fence_revision)
        .map(|kv| kv.lease())
        .expect("leader key present")
}
