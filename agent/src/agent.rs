//! The agent's event loop: the scheduler connection (register, reconnect with backoff), the
//! task table, launches, kills, reconciliation and batched status updates.
//!
//! # A task's states
//!
//! STARTING is reported when the launch arrives, before the process starts. Without a health
//! check, RUNNING follows as soon as the process started. With one, the task stays STARTING
//! (reported again, now with its sandbox) until its watcher reports it healthy, and only then
//! becomes RUNNING (`health.rs`). A kill request starts the kill sequence (`kill.rs`) once: a
//! repeated request for a task being killed changes nothing, one for an ended task resends its
//! end, one for an unknown task answers LOST. A task ends KILLED after a kill request, FAILED
//! with the health check's reason after an unhealthy kill, else FINISHED or FAILED by its exit.
//!
//! # Several schedulers (high availability)
//!
//! `--scheduler A,B,C` lists the schedulers; one leads, the others refuse a registration with
//! `Error { code: NotLeader, leader }` and close the connection. The next attempt goes to the
//! leader named (listed or not: it is logged), else to the address after the one whose session
//! just ended (never the same one first). The pause before it is the usual doubling backoff,
//! capped at [`NOT_LEADER_BACKOFF_MAX`] after a `NotLeader` refusal so that an agent finds a new
//! leader well within its reconciliation grace.
//!
//! # Status acknowledgements
//!
//! A task's terminal status (FINISHED, FAILED, KILLED, LOST) counts as delivered only once the
//! scheduler acknowledges it with a `StatusAck` naming that task *and that terminal state*,
//! which it sends after recording the status durably. Writing a status to the socket proves
//! nothing: the scheduler may crash before its write-ahead log has it. Until then the task is
//! *unacknowledged* and stays in the task table, and every registration (each (re)connect)
//! carries its terminal status again, like every running task's. That is the only resend:
//! on one connection the scheduler reads the statuses in order, so it either acknowledges
//! them or the connection breaks and the next registration repeats them. A scheduler must
//! therefore acknowledge every terminal status it has processed (also one it chose to ignore),
//! or the agent keeps re-reporting it until the bound below drops it.
//!
//! - STARTING and RUNNING need no acknowledgement: a live task is re-reported in every
//!   registration anyway. An ack for them, for a state the task is not (or not yet) in, or for
//!   a task the agent does not know is ignored: an early RUNNING ack cannot cancel a later end.
//! - Acknowledged terminal tasks move to the bounded history ([`TERMINAL_HISTORY_MAX`]) that
//!   answers reconciliation, oldest evicted first.
//! - At most [`UNACKED_TERMINAL_MAX`] terminal statuses wait for their ack. Beyond that the
//!   oldest (by when the task ended) is given up with a warning: it is no longer re-reported
//!   at registration and moves to the history, where reconciliation still finds it until it is
//!   evicted. This bounds the memory of an agent whose scheduler never acknowledges (an older
//!   scheduler without a write-ahead log).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use borealis_core::{TaskId, TaskState, TaskUsage};
use borealis_net::codec::to_owned;
use borealis_net::frame::split_messages;
use borealis_net::views::{
    AgentRegistration, ErrorCode, LaunchView, OwnedMessage, TaskStatusReport,
};
use borealis_net::{decode_message, wire, Encoder, FrameDecoder, FrameWriter, WireError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::cgroup::Cgroups;
use crate::config::Config;
use crate::disk::{DiskReport, DiskWatch};
use crate::health::Monitor;
use crate::http::LoopbackClient;
use crate::kill::KillPlan;
use crate::launcher::{Janitor, Launcher, LauncherSettings, Output, Started};
use crate::logs::Sandboxes;
use crate::process;
use crate::reaper::Lifeline;
use crate::sandbox_gc::{GcSettings, SandboxGc};
use crate::users::RunAs;
use crate::watch::{self, Event, Exit, KillReason, Killer, TaskProcess, Watched};
use crate::Isolation;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest pause after a scheduler refused the registration because it does not lead: a
/// follower answers at once, and during a failover the new leader waits for its agents only a
/// reconciliation grace, so the agent keeps asking at least this often.
const NOT_LEADER_BACKOFF_MAX: Duration = Duration::from_millis(300);
/// Connecting, and with TLS the handshake too.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A batch not written within this long means the scheduler stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Acknowledged terminal tasks kept to answer reconciliation.
const TERMINAL_HISTORY_MAX: usize = 10_000;
/// Terminal statuses waiting for the scheduler's acknowledgement; beyond it the oldest is given
/// up (see the module documentation).
const UNACKED_TERMINAL_MAX: usize = 100_000;
/// Most tasks starting or running at once; launches beyond it fail.
const RUNNING_TASKS_MAX: usize = 100_000;
/// Entries a sandbox measurement reads at most (a lower bound of its size beyond).
const DISK_MEASURE_ENTRIES: u64 = 1_000_000;
/// Disk measurements waiting for the event loop (the watcher skips a round's report beyond).
const DISK_QUEUE: usize = 4096;
/// Pause before a reaper that died is started again.
const REAPER_RESTART_PAUSE: Duration = Duration::from_secs(1);
/// Queued status updates that force a flush in the middle of a turn.
const OUTBOX_FLUSH_AT: usize = 4096;
/// Watcher events (healthy, ended) waiting for the event loop (watchers wait when it is full).
const EVENT_QUEUE: usize = 1024;
const READ_CHUNK: usize = 64 * 1024;
/// How long shutdown waits for killed tasks to be reaped.
const SHUTDOWN_REAP_WAIT: Duration = Duration::from_secs(2);

const UNKNOWN_TASK: &str = "unknown task";
/// Bytes of task statuses carried inside `RegisterAgent` itself (a message must fit a frame).
const REGISTER_TASKS_BYTES: usize = 4 << 20;
/// Longest job key and message put in a status (input may carry anything up to a frame).
const JOB_KEY_BYTES_MAX: usize = 1024;
const MESSAGE_BYTES_MAX: usize = 4096;

/// At most `max` bytes of `text`, cut at a character boundary.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

fn bound_status(status: &mut TaskStatusReport) {
    if status.job_key.len() > JOB_KEY_BYTES_MAX {
        status.job_key = bounded(&status.job_key, JOB_KEY_BYTES_MAX);
    }
    if status.message.len() > MESSAGE_BYTES_MAX {
        status.message = bounded(&status.message, MESSAGE_BYTES_MAX);
    }
}

/// Rough encoded size of a status, for budgeting.
fn status_size_estimate(status: &TaskStatusReport) -> usize {
    96 + status.job_key.len() + status.message.len() + status.sandbox.len()
}

/// The scheduler connection: plain TCP, or TLS over it (`--tls-*`). The session reads and
/// writes it through [`tokio::io::split`] halves either way.
pub(crate) enum SchedulerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The session's writing half.
type Writer = WriteHalf<SchedulerStream>;

impl AsyncRead for SchedulerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SchedulerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            SchedulerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SchedulerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            SchedulerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            SchedulerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SchedulerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            SchedulerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SchedulerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            SchedulerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why a connection attempt failed (logged once per attempt).
#[derive(Debug)]
enum ConnectError {
    Tcp(std::io::Error),
    /// The scheduler address has no host a certificate can be checked against.
    Name(String),
    Handshake(std::io::Error),
    TimedOut,
}

/// TCP to `address`, then with `tls` the handshake (checking the scheduler's certificate
/// against the host of `address`, presenting the agent's).
async fn open(
    address: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<SchedulerStream, ConnectError> {
    let tcp = TcpStream::connect(address)
        .await
        .map_err(ConnectError::Tcp)?;
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let Some(config) = tls else {
        return Ok(SchedulerStream::Plain(tcp));
    };
    let name = borealis_net::tls::server_name(address)
        .map_err(|e| ConnectError::Name(format!("{e:#}")))?;
    let stream = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(ConnectError::Handshake)?;
    Ok(SchedulerStream::Tls(Box::new(stream)))
}

/// How a connection ended.
enum SessionEnd {
    Shutdown,
    /// Lost or dropped; the reason was logged.
    Disconnected,
}

struct Task {
    status: TaskStatusReport,
    /// While the launcher starts it or its process runs (counted in [`Agent::running`]).
    live: bool,
    /// While the process runs: its process group.
    pgid: Option<i32>,
    /// While the process runs and no kill was requested: the watcher's kill trigger.
    kill: Option<oneshot::Sender<KillReason>>,
    /// A kill requested while the launcher was still starting the task.
    kill_before_start: Option<KillReason>,
    /// The task's ram (the memory limit an OOM kill exceeded).
    ram_mib: u32,
    /// The task's disk limit, and its sandbox's size when last measured.
    disk_mib: u32,
    disk_bytes: u64,
    /// While the terminal status waits for the scheduler's acknowledgement: its key in
    /// [`Agent::unacked`]. None while the task runs, and once acknowledged (or given up).
    unacked: Option<u64>,
}

impl Task {
    /// Whether a registration must carry this task's status: it runs, or its end is not
    /// acknowledged yet.
    fn needs_report(&self) -> bool {
        !self.status.state.is_terminal() || self.unacked.is_some()
    }
}

pub(crate) struct Agent {
    config: Config,
    tasks: HashMap<TaskId, Task>,
    running: usize,
    /// Terminal tasks whose end the scheduler has not acknowledged, by the order they ended
    /// (key: a sequence number, also kept in [`Task::unacked`]).
    unacked: BTreeMap<u64, TaskId>,
    next_unacked_key: u64,
    /// Unacknowledged ends given up so far (for the warning).
    unacked_dropped: u64,
    /// Acknowledged (or given up) terminal tasks, oldest first; evicted beyond `history_max`.
    history: VecDeque<TaskId>,
    /// [`UNACKED_TERMINAL_MAX`] and [`TERMINAL_HISTORY_MAX`], lowered by unit tests.
    unacked_max: usize,
    history_max: usize,
    /// Status updates to send at the end of this turn.
    outbox: Vec<TaskStatusReport>,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    /// Health checks and lifecycle requests to the tasks' ports.
    client: LoopbackClient,
    encoder: Encoder,
    writer: FrameWriter,
    backoff: Duration,
    /// Index (mod the address count) of the next scheduler address to try.
    next_address: usize,
    /// The leader a follower named (`NotLeader`): the next connection attempt goes there,
    /// listed or not.
    leader_hint: Option<String>,
    /// The scheduler of this session refused with `NotLeader`.
    refused_not_leader: bool,
    /// Starts tasks off the event loop (`launcher.rs`); its results arrive on `launched`.
    launcher: Launcher,
    launched: tokio::sync::mpsc::UnboundedReceiver<Output>,
    /// With cgroups: cleans up after tasks, off the event loop.
    janitor: Option<Janitor>,
    /// What a watcher needs of a launch the launcher is still starting.
    pending_launches: HashMap<TaskId, PendingLaunch>,
    /// Shutting down: a task the launcher still starts is killed at once.
    stopping: bool,
    /// Measures running tasks' sandboxes against their disk limits (`disk.rs`).
    disk: DiskWatch,
    disk_reports: mpsc::Receiver<DiskReport>,
    /// Removes ended tasks' sandboxes after `--gc-delay` (`sandbox_gc.rs`).
    gc: SandboxGc,
    /// The started tasks' sandboxes, for the log server: an entry per task in `tasks` that
    /// started, removed with it.
    sandboxes: Arc<Sandboxes>,
}

/// What the event loop waits for.
enum Input {
    Event(Event),
    Launcher(Output),
    Disk(DiskReport),
}

/// The parts of a launch its watcher needs, kept while the launcher starts the task.
struct PendingLaunch {
    health_check: Option<borealis_core::HealthCheck>,
    ports: Vec<(String, u16)>,
    kill_plan: KillPlan,
}

impl PendingLaunch {
    fn of(launch: &LaunchView) -> PendingLaunch {
        PendingLaunch {
            health_check: launch.config.health_check.clone(),
            ports: launch.ports.clone(),
            kill_plan: KillPlan::new(
                launch.config.http_lifecycle.as_ref(),
                launch.config.finalization_wait_secs,
                &launch.ports,
            ),
        }
    }
}

/// The name of the agent's cgroup subtree: its id, and a hash of its work dir so that two
/// agents of one id on one machine (tests) never share one, while a restart finds its own.
fn cgroup_subtree_name(config: &Config) -> String {
    let id: String = config
        .agent_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let hash = borealis_core::route_hash_str(&config.work_dir.to_string_lossy());
    format!("borealis-{id}-{:08x}", hash as u32)
}

/// Watches the reaper: when it dies, [`Event::ReaperDied`] (after a pause when `restarted`,
/// so that a reaper that cannot live does not spin).
fn watch_reaper(
    reaper: crate::spawn::Child,
    events: mpsc::Sender<Event>,
    restarted: bool,
) -> std::io::Result<()> {
    let mut reaper = TaskProcess::new(reaper)?;
    tracing::info!(pid = reaper.pid(), restarted, "reaper started");
    tokio::spawn(async move {
        let end = reaper.wait().await;
        tracing::error!(end = ?end.map(|r| r.status), "the agent's reaper ended");
        tokio::time::sleep(REAPER_RESTART_PAUSE).await;
        let _ = events.send(Event::ReaperDied).await;
    });
    Ok(())
}

/// Kills and reaps a started task nobody will watch.
fn spawn_kill(started: Started) -> std::io::Result<()> {
    let mut process = TaskProcess::new(started.child)?;
    process.kill();
    tokio::spawn(async move {
        let _ = process.wait().await;
    });
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lost_unknown(task_id: TaskId, job_key: &str) -> TaskStatusReport {
    TaskStatusReport {
        task_id,
        job_key: job_key.to_string(),
        instance: 0,
        state: TaskState::Lost,
        exit_code: -1,
        message: UNKNOWN_TASK.to_string(),
        timestamp_ms: now_ms(),
        sandbox: String::new(),
        usage: None,
    }
}

impl Agent {
    /// Sets up isolation (detects cgroups, kills what an earlier run left, starts the reaper)
    /// and the launcher; the error says why the agent cannot start.
    pub async fn new(config: Config, sandboxes: Arc<Sandboxes>) -> anyhow::Result<Agent> {
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let run_as = RunAs::resolve(&config.executor_user).map_err(anyhow::Error::msg)?;
        if run_as.switches_users() {
            if let Err(e) = crate::sandbox::check_searchable(&config.work_dir) {
                tracing::warn!("--work-dir: {e}");
            }
        }
        let cgroups = match config.isolation {
            Isolation::None => None,
            requested => match Cgroups::detect(&cgroup_subtree_name(&config)) {
                Ok(cgroups) => Some(Arc::new(cgroups)),
                Err(e) if requested == Isolation::Auto => {
                    tracing::warn!(reason = %e,
                        "no cgroups: tasks run without limits, and processes that leave a \
                         task's process group escape its kill (--isolation auto)");
                    None
                }
                Err(e) => anyhow::bail!(
                    "--isolation cgroups: {e}. Run the agent as root or in a delegated cgroup, \
                     or pass --isolation none (no limits; setsid escapes a kill)"
                ),
            },
        };
        if let Some(cgroups) = &cgroups {
            let left = cgroups.sweep();
            if left > 0 {
                tracing::warn!(
                    cgroups = left,
                    "removed task cgroups an earlier run left behind"
                );
            }
        }
        tracing::info!(
            isolation = %cgroups.as_ref().map_or("none".to_string(), |c| c.describe()),
            run_as = %run_as.describe(),
            pids_limit = config.pids_limit,
            reserved_cpu_millis = config.reserved.cpu_millis,
            reserved_ram_mib = config.reserved.ram_mib,
            "task isolation"
        );
        let janitor = match &cgroups {
            Some(c) => Some(Janitor::start(c.clone())?),
            None => None,
        };
        let sandboxes_dir = config.work_dir.join(crate::sandbox::SANDBOXES);
        std::fs::create_dir_all(&sandboxes_dir)
            .with_context(|| format!("cannot create {}", sandboxes_dir.display()))?;
        let (disk_tx, disk_reports) = mpsc::channel(DISK_QUEUE);
        let disk = DiskWatch::spawn(config.disk_check_interval, DISK_MEASURE_ENTRIES, disk_tx)?;
        // Before any launch: the collector's first scan finds only what earlier runs left (this
        // run's tasks are all newer than the scan).
        let gc = SandboxGc::spawn(
            sandboxes_dir,
            GcSettings {
                delay: config.gc_delay,
                disk_headroom: config.gc_disk_headroom,
                check_interval: config.gc_check_interval,
                ..GcSettings::default()
            },
            |_| false,
        )?;
        let lifeline = Lifeline::new()?;
        let (launcher, mut launched) = Launcher::start(
            LauncherSettings {
                work_dir: config.work_dir.clone(),
                hostname: config.hostname.clone(),
                cgroups: cgroups.clone(),
                pids_max: config.pids_limit,
                run_as,
            },
            lifeline,
        )?;
        if cgroups.is_some() {
            // The reaper comes first: without it no task may start.
            match launched.recv().await {
                Some(Output::Reaper(Ok(reaper))) => watch_reaper(reaper, events_tx.clone(), false)?,
                Some(Output::Reaper(Err(e))) => anyhow::bail!("{e}"),
                _ => anyhow::bail!("the launcher thread stopped"),
            }
        }
        Ok(Agent {
            config,
            tasks: HashMap::new(),
            running: 0,
            unacked: BTreeMap::new(),
            next_unacked_key: 0,
            unacked_dropped: 0,
            history: VecDeque::new(),
            unacked_max: UNACKED_TERMINAL_MAX,
            history_max: TERMINAL_HISTORY_MAX,
            outbox: Vec::new(),
            events_tx,
            events_rx,
            client: LoopbackClient::new(),
            encoder: Encoder::new(),
            writer: FrameWriter::new(),
            backoff: BACKOFF_MIN,
            next_address: 0,
            leader_hint: None,
            refused_not_leader: false,
            launcher,
            launched,
            janitor,
            pending_launches: HashMap::new(),
            stopping: false,
            disk,
            disk_reports,
            gc,
            sandboxes,
        })
    }

    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let mut shutdown = pin!(shutdown);
        loop {
            let Some((stream, address)) = self.connect(&mut shutdown).await else {
                break;
            };
            self.refused_not_leader = false;
            match self.session(stream, &address, &mut shutdown).await {
                SessionEnd::Shutdown => break,
                SessionEnd::Disconnected => {
                    // Next: the leader named, else the next listed address (not this one
                    // again first).
                    if let Some(index) = self.config.scheduler.iter().position(|a| *a == address) {
                        self.next_address = (index + 1) % self.config.scheduler.len();
                    }
                    let cap = if self.refused_not_leader {
                        NOT_LEADER_BACKOFF_MAX
                    } else {
                        BACKOFF_MAX
                    };
                    if !self.pause_at_most(cap, &mut shutdown).await {
                        break;
                    }
                }
            }
        }
        self.shutdown().await;
        Ok(())
    }

    /// Sleeps the current backoff (handling watcher events meanwhile) and doubles it. False when
    /// shutdown came first.
    async fn pause<F: Future<Output = ()>>(&mut self, shutdown: &mut Pin<&mut F>) -> bool {
        self.pause_at_most(BACKOFF_MAX, shutdown).await
    }

    /// [`Agent::pause`], sleeping at most `cap`.
    async fn pause_at_most<F: Future<Output = ()>>(
        &mut self,
        cap: Duration,
        shutdown: &mut Pin<&mut F>,
    ) -> bool {
        let delay = self.backoff.min(cap);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        let mut sleep = pin!(tokio::time::sleep(delay));
        loop {
            tokio::select! {
                biased;
                _ = &mut *shutdown => return false,
                input = self.next_input() => self.on_input(input, false),
                _ = &mut sleep => return true,
            }
        }
    }

    /// Tries the leader a follower named (once), then the scheduler addresses in turn, with
    /// backoff after each failed round, until one accepts. None on shutdown.
    async fn connect<F: Future<Output = ()>>(
        &mut self,
        shutdown: &mut Pin<&mut F>,
    ) -> Option<(SchedulerStream, String)> {
        if let Some(leader) = self.leader_hint.take() {
            if self.config.scheduler.contains(&leader) {
                tracing::info!(scheduler = %leader, "connecting to the leader a follower named");
            } else {
                tracing::info!(scheduler = %leader, listed = ?self.config.scheduler,
                    "connecting to the leader a follower named, which --scheduler does not list");
            }
            if let Some(stream) = self.connect_to(&leader, shutdown).await? {
                return Some((stream, leader));
            }
        }
        let count = self.config.scheduler.len();
        let mut tried = 0;
        loop {
            let index = self.next_address % count;
            let address = self.config.scheduler[index].clone();
            if let Some(stream) = self.connect_to(&address, shutdown).await? {
                return Some((stream, address));
            }
            self.next_address = (index + 1) % count;
            tried += 1;
            if tried % count == 0 {
                tracing::info!(delay = ?self.backoff, "retrying the scheduler(s) after a pause");
                if !self.pause(shutdown).await {
                    return None;
                }
            }
        }
    }

    /// One connection attempt (bounded by [`CONNECT_TIMEOUT`]), handling watcher events meanwhile:
    /// `Some(None)` when it failed (logged), None on shutdown.
    async fn connect_to<F: Future<Output = ()>>(
        &mut self,
        address: &str,
        shutdown: &mut Pin<&mut F>,
    ) -> Option<Option<SchedulerStream>> {
        let tls = self.config.tls.clone();
        let mut attempt = pin!(async {
            match tokio::time::timeout(CONNECT_TIMEOUT, open(address, tls.as_ref())).await {
                Ok(result) => result,
                Err(_) => Err(ConnectError::TimedOut),
            }
        });
        let result = loop {
            tokio::select! {
                biased;
                _ = &mut *shutdown => return None,
                input = self.next_input() => self.on_input(input, false),
                result = &mut attempt => break result,
            }
        };
        match result {
            Ok(stream) => return Some(Some(stream)),
            Err(ConnectError::Tcp(e)) => {
                tracing::warn!(scheduler = %address, error = %e, "cannot connect to the scheduler")
            }
            Err(ConnectError::Name(e)) => {
                tracing::warn!(scheduler = %address, error = %e,
                    "cannot check the scheduler's TLS certificate against its address")
            }
            Err(ConnectError::Handshake(e)) => {
                tracing::warn!(scheduler = %address, "TLS handshake with scheduler at {address} failed: {e}")
            }
            Err(ConnectError::TimedOut) => {
                tracing::warn!(scheduler = %address, timeout = ?CONNECT_TIMEOUT,
                    "connecting to the scheduler timed out")
            }
        }
        Some(None)
    }

    /// One connection: register, then serve messages until it breaks or shutdown.
    async fn session<F: Future<Output = ()>>(
        &mut self,
        stream: SchedulerStream,
        address: &str,
        shutdown: &mut Pin<&mut F>,
    ) -> SessionEnd {
        let (mut reader, mut writer) = tokio::io::split(stream);
        tracing::info!(scheduler = %address, "connected to the scheduler; registering");
        if let Err(e) = self.register(&mut writer).await {
            tracing::warn!(scheduler = %address, error = %e, "cannot register with the scheduler");
            return SessionEnd::Disconnected;
        }
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + HEARTBEAT_INTERVAL,
            HEARTBEAT_INTERVAL,
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut *shutdown => return SessionEnd::Shutdown,
                // Ready once per interval, so it cannot starve the reads; placed first so a
                // busy connection cannot starve it.
                _ = heartbeat.tick() => {
                    if let Err(e) = self.writer.push(self.encoder.heartbeat(now_ms())) {
                        tracing::error!("heartbeat not sent: {e}");
                    }
                }
                input = self.next_input() => {
                    self.on_input(input, true);
                    // Everything else already queued goes in the same frame.
                    while let Some(input) = self.try_next_input() {
                        self.on_input(input, true);
                    }
                }
                read = reader.read(&mut buf) => {
                    match read {
                        Ok(0) => {
                            tracing::warn!(scheduler = %address, "the scheduler closed the connection");
                            return SessionEnd::Disconnected;
                        }
                        Ok(n) => {
                            decoder.extend(&buf[..n]);
                            if let Err(e) = self.drain_frames(&mut decoder, &mut writer).await {
                                match e {
                                    SessionError::Protocol(what) => tracing::error!(
                                        scheduler = %address, error = %what,
                                        "bad input from the scheduler; reconnecting"),
                                    SessionError::Io(e) => tracing::warn!(
                                        scheduler = %address, error = %e,
                                        "lost the scheduler connection"),
                                }
                                return SessionEnd::Disconnected;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(scheduler = %address, error = %e, "lost the scheduler connection");
                            return SessionEnd::Disconnected;
                        }
                    }
                }
            }
            if let Err(e) = self.flush(&mut writer).await {
                tracing::warn!(scheduler = %address, error = %e, "lost the scheduler connection");
                return SessionEnd::Disconnected;
            }
        }
    }

    /// Sends `RegisterAgent` with every running task and every terminal one whose end the
    /// scheduler has not acknowledged.
    async fn register(&mut self, writer: &mut Writer) -> std::io::Result<()> {
        // The registration supersedes whatever was queued for an earlier connection.
        self.outbox.clear();
        self.writer.clear();
        let mut tasks: Vec<TaskStatusReport> = self
            .tasks
            .values()
            .filter(|t| t.needs_report())
            .map(|t| t.status.clone())
            .collect();
        tasks.sort_by_key(|t| t.task_id);
        // A message must fit a frame: statuses beyond a budget follow as TaskStatus messages.
        let mut budget = REGISTER_TASKS_BYTES;
        let inline = tasks
            .iter()
            .position(|t| {
                budget = budget.saturating_sub(status_size_estimate(t));
                budget == 0
            })
            .unwrap_or(tasks.len());
        let overflow = tasks.split_off(inline);
        let registration = AgentRegistration {
            agent_id: self.config.agent_id.clone(),
            hostname: self.config.hostname.clone(),
            resources: self.config.resources,
            port_ranges: self.config.port_ranges.clone(),
            attributes: self.config.attributes.clone(),
            tasks,
            log_port: self.config.log_port,
        };
        self.writer
            .push(self.encoder.register_agent(&registration))
            .map_err(std::io::Error::other)?;
        for status in &overflow {
            if let Err(e) = self.writer.push(self.encoder.task_status(status)) {
                tracing::error!(task = %status.task_id, "status not sent: {e}");
            }
        }
        write_all(writer, self.writer.finish()).await?;
        self.writer.clear();
        tracing::debug!(
            tasks = registration.tasks.len() + overflow.len(),
            "registration sent"
        );
        Ok(())
    }

    async fn drain_frames(
        &mut self,
        decoder: &mut FrameDecoder,
        writer: &mut Writer,
    ) -> Result<(), SessionError> {
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => return Err(SessionError::Protocol(format!("bad frame: {e}"))),
            };
            let messages = split_messages(frame)
                .map_err(|e| SessionError::Protocol(format!("bad frame: {e}")))?;
            for (index, bytes) in messages.iter().enumerate() {
                let message = decode_message(bytes).map_err(|e| {
                    SessionError::Protocol(format!("message {index} of a frame: {e}"))
                })?;
                let reconcile = self.handle(message).map_err(|e| {
                    SessionError::Protocol(format!("message {index} of a frame: {e}"))
                })?;
                if let Some(task_ids) = reconcile {
                    self.reconcile(task_ids, writer)
                        .await
                        .map_err(SessionError::Io)?;
                }
                if self.outbox.len() >= OUTBOX_FLUSH_AT {
                    self.flush(writer).await.map_err(SessionError::Io)?;
                }
            }
        }
    }

    /// Handles one message; a reconciliation request is returned for the caller to answer
    /// (in bounded batches).
    fn handle(&mut self, message: wire::Message<'_>) -> Result<Option<Vec<TaskId>>, WireError> {
        let mut launch_hint = None;
        match message.payload_type() {
            // Read in place: the owned view drops the job key, which routes the LOST answer.
            wire::Payload::KillTask => {
                let kill = message.payload_as_kill_task().expect("type checked");
                self.kill(TaskId(kill.task_id()), kill.job_key().unwrap_or_default());
                return Ok(None);
            }
            wire::Payload::LaunchTask => {
                let launch = message.payload_as_launch_task().expect("type checked");
                launch_hint = Some((
                    TaskId(launch.task_id()),
                    launch.job_key(),
                    launch.instance(),
                ));
            }
            _ => {}
        }
        let owned = match (to_owned(message), launch_hint) {
            (Ok((_, owned)), _) => owned,
            (Err(e), Some((task_id, job_key, instance))) => {
                // Well-formed but unusable (bad job key, unknown tier...): fail the task rather
                // than the connection, or the scheduler would resend it forever.
                let job_key = bounded(job_key, JOB_KEY_BYTES_MAX);
                tracing::error!(task = %task_id, job = %job_key, error = %bounded(&e.to_string(), MESSAGE_BYTES_MAX), "invalid launch");
                self.reject_launch(task_id, &job_key, instance, format!("invalid launch: {e}"));
                return Ok(None);
            }
            (Err(e), None) => return Err(e),
        };
        match owned {
            OwnedMessage::AgentRegistered { agent_id } => {
                tracing::info!(%agent_id, "registered with the scheduler");
                if agent_id != self.config.agent_id {
                    tracing::warn!(ours = %self.config.agent_id, theirs = %agent_id,
                        "the scheduler acknowledged a different agent id");
                }
                self.backoff = BACKOFF_MIN;
            }
            OwnedMessage::LaunchTask(launch) => self.launch(launch),
            OwnedMessage::Reconcile { task_ids } => return Ok(Some(task_ids)),
            OwnedMessage::StatusAck(acks) => self.on_status_ack(&acks),
            OwnedMessage::Heartbeat { .. } => {}
            OwnedMessage::Error {
                code: ErrorCode::NotLeader,
                message,
                leader,
            } => {
                // The follower closes the connection; the next attempt goes to the leader.
                self.refused_not_leader = true;
                let leader = leader
                    .map(|l| bounded(l.trim(), JOB_KEY_BYTES_MAX))
                    .filter(|l| !l.is_empty());
                tracing::info!(leader = ?leader, message = %bounded(&message, MESSAGE_BYTES_MAX),
                    "the scheduler does not lead");
                self.leader_hint = leader;
            }
            OwnedMessage::Error { code, message, .. } => {
                tracing::error!(?code, %message, "the scheduler reported an error");
            }
            other => {
                let text = format!("{other:?}");
                tracing::warn!(message = %bounded(&text, 200), "ignoring a message not meant for an agent");
            }
        }
        Ok(None)
    }

    fn report(&mut self, mut status: TaskStatusReport) {
        bound_status(&mut status);
        tracing::debug!(task = %status.task_id, job = %status.job_key, state = %status.state,
            exit_code = status.exit_code, message = %status.message, "status");
        self.outbox.push(status);
    }

    fn reject_launch(&mut self, task_id: TaskId, job_key: &str, instance: u32, message: String) {
        if let Some(task) = self.tasks.get(&task_id) {
            let status = task.status.clone();
            self.report(status);
            return;
        }
        let status = TaskStatusReport {
            task_id,
            job_key: job_key.to_string(),
            instance,
            state: TaskState::Failed,
            exit_code: -1,
            message,
            timestamp_ms: now_ms(),
            sandbox: String::new(),
            usage: None,
        };
        self.insert_ended(status.clone());
        self.report(status);
    }

    /// Keeps a task that never ran (so reconciliation knows it) until its end is acknowledged.
    fn insert_ended(&mut self, mut status: TaskStatusReport) {
        bound_status(&mut status);
        let task_id = status.task_id;
        self.tasks.insert(
            task_id,
            Task {
                status,
                live: false,
                pgid: None,
                kill: None,
                kill_before_start: None,
                ram_mib: 0,
                disk_mib: 0,
                disk_bytes: 0,
                unacked: None,
            },
        );
        self.await_ack(task_id);
    }

    /// Reports the task STARTING and hands it to the launcher (`launcher.rs`), whose answer
    /// arrives as [`Output::Launched`].
    fn launch(&mut self, launch: LaunchView) {
        if let Some(task) = self.tasks.get(&launch.task_id) {
            tracing::debug!(task = %launch.task_id, "launch of a known task: resending its status");
            let status = task.status.clone();
            self.report(status);
            return;
        }
        let job_key = launch.job_key.to_string();
        if self.running >= RUNNING_TASKS_MAX {
            self.reject_launch(
                launch.task_id,
                &job_key,
                launch.instance,
                format!("the agent already runs {RUNNING_TASKS_MAX} tasks"),
            );
            return;
        }
        let status = TaskStatusReport {
            task_id: launch.task_id,
            job_key,
            instance: launch.instance,
            state: TaskState::Starting,
            exit_code: -1,
            message: String::new(),
            timestamp_ms: now_ms(),
            sandbox: String::new(),
            usage: None,
        };
        self.report(status.clone());
        self.running += 1;
        self.tasks.insert(
            launch.task_id,
            Task {
                status,
                live: true,
                pgid: None,
                kill: None,
                kill_before_start: None,
                ram_mib: launch.config.resources.ram_mib,
                disk_mib: launch.config.resources.disk_mib,
                disk_bytes: 0,
                unacked: None,
            },
        );
        self.pending_launches
            .insert(launch.task_id, PendingLaunch::of(&launch));
        self.launcher.launch(launch);
    }

    /// The launcher started the task (or could not): watch it, report it RUNNING (STARTING
    /// again, with its sandbox, while health checks decide), or FAILED with the reason.
    fn on_launched(&mut self, task_id: TaskId, result: Result<Started, String>) {
        let pending = self.pending_launches.remove(&task_id);
        let Some(task) = self.tasks.get_mut(&task_id) else {
            tracing::error!(task = %task_id, "the launcher answered for a task the agent does not know");
            return;
        };
        let (started, pending) = match (result, pending) {
            (Ok(started), Some(_)) if self.stopping => {
                let _ = spawn_kill(started);
                task.live = false;
                self.running -= 1;
                return;
            }
            (Ok(started), Some(pending)) => (started, pending),
            (Ok(started), None) => {
                // Cannot happen (a launch's parts are kept until its answer): fail it rather
                // than run it unwatched.
                tracing::error!(task = %task_id, "a started task without its launch; killing it");
                let _ = spawn_kill(started);
                self.on_launched(
                    task_id,
                    Err("the agent lost track of the task's launch".into()),
                );
                return;
            }
            (Err(reason), _) => {
                tracing::warn!(task = %task_id, job = %task.status.job_key, %reason, "task failed to start");
                task.live = false;
                self.running -= 1;
                task.status.state = TaskState::Failed;
                task.status.timestamp_ms = now_ms();
                task.status.message = reason;
                let status = task.status.clone();
                self.await_ack(task_id);
                self.report(status);
                return;
            }
        };
        let pid = started.child.pid;
        let process = match TaskProcess::new(started.child) {
            Ok(process) => process,
            Err(e) => {
                // Cannot watch it: it must not run unseen.
                // SAFETY: plain system call on the unreaped child's group.
                unsafe { libc::killpg(pid, libc::SIGKILL) };
                tracing::error!(task = %task_id, error = %e, "cannot watch a started task; killed it");
                self.on_launched(
                    task_id,
                    Err(format!("cannot watch the task's process: {e}")),
                );
                return;
            }
        };
        let guard = match started.guard.map(TaskProcess::new).transpose() {
            Ok(guard) => guard,
            Err(e) => {
                tracing::error!(task = %task_id, error = %e, "cannot watch a task's guard");
                None
            }
        };
        let health_checked = pending.health_check.is_some();
        tracing::info!(task = %task_id, job = %task.status.job_key, instance = task.status.instance,
            pid, sandbox = %started.sandbox.display(), health_checked, "task started");
        let health = pending.health_check.as_ref().map(|check| {
            Monitor::new(
                check,
                &pending.ports,
                started.sandbox.clone(),
                started.env.clone(),
                started.credentials.clone(),
                self.client.clone(),
            )
        });
        let (kill_tx, kill_rx) = oneshot::channel();
        let killer = Killer::new(
            pid,
            match (started.cgroup, &self.janitor) {
                (Some(cg), Some(janitor)) => Some((cg, janitor.clone())),
                _ => None,
            },
        );
        tokio::spawn(watch::watch(Watched {
            task_id,
            process,
            killer,
            guard,
            kill: kill_rx,
            health,
            kill_plan: pending.kill_plan,
            client: self.client.clone(),
            events: self.events_tx.clone(),
        }));
        self.sandboxes
            .insert(task_id, &task.status.job_key, started.sandbox.clone());
        if task.disk_mib > 0 {
            self.disk.watch(
                task_id.0,
                started.sandbox.clone(),
                u64::from(task.disk_mib) << 20,
            );
        }
        task.pgid = Some(pid);
        // Health-checked: STARTING again, now with the sandbox, until it is healthy.
        if !health_checked {
            task.status.state = TaskState::Running;
        }
        task.status.timestamp_ms = now_ms();
        task.status.sandbox = started.sandbox.to_string_lossy().into_owned();
        let status = task.status.clone();
        match task.kill_before_start.take() {
            Some(reason) => {
                let _ = kill_tx.send(reason);
            }
            None => task.kill = Some(kill_tx),
        }
        self.report(status);
    }

    fn kill(&mut self, task_id: TaskId, job_key: &str) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            tracing::info!(task = %task_id, "kill of an unknown task: reporting it LOST");
            self.report(lost_unknown(task_id, job_key));
            return;
        };
        if task.status.state.is_terminal() {
            let status = task.status.clone();
            self.report(status);
            return;
        }
        match task.kill.take() {
            Some(trigger) => {
                tracing::info!(task = %task_id, "kill requested");
                // A closed watcher means the exit is already on its way; a watcher already
                // killing the task as unhealthy goes on with that.
                let _ = trigger.send(KillReason::Requested);
            }
            None if task.live && task.pgid.is_none() => {
                tracing::info!(task = %task_id, "kill requested while the task starts");
                task.kill_before_start.get_or_insert(KillReason::Requested);
            }
            None => tracing::debug!(task = %task_id, "task already being killed"),
        }
    }

    /// Answers a reconciliation: the named tasks (unknown ones LOST), or every task when none
    /// is named; flushed in bounded batches.
    async fn reconcile(
        &mut self,
        mut task_ids: Vec<TaskId>,
        writer: &mut Writer,
    ) -> std::io::Result<()> {
        if task_ids.is_empty() {
            task_ids = self.tasks.keys().copied().collect();
            task_ids.sort_unstable();
        }
        for chunk in task_ids.chunks(OUTBOX_FLUSH_AT) {
            for &task_id in chunk {
                let status = match self.tasks.get(&task_id) {
                    Some(task) => task.status.clone(),
                    None => lost_unknown(task_id, ""),
                };
                self.report(status);
            }
            if self.outbox.len() >= OUTBOX_FLUSH_AT {
                self.flush(writer).await?;
            }
        }
        Ok(())
    }

    /// Records a process exit; returns the new status.
    fn record_exit(&mut self, exit: Exit) -> Option<TaskStatusReport> {
        let Some(task) = self.tasks.get_mut(&exit.task_id) else {
            tracing::error!(task = %exit.task_id, "exit of a task the agent does not know");
            return None;
        };
        let oom = exit.oom_killed.then_some(task.ram_mib);
        let (state, exit_code, message) = process::outcome(&exit.status, &exit.end, oom);
        tracing::info!(task = %exit.task_id, job = %task.status.job_key, %state, exit_code, %message,
            cpu_time_ms = exit.usage.cpu_time_ms, peak_memory_bytes = exit.usage.peak_memory_bytes,
            "task ended");
        if task.live {
            task.live = false;
            self.running -= 1;
        }
        task.pgid = None;
        task.kill = None;
        task.status.state = state;
        task.status.exit_code = exit_code;
        task.status.message = message;
        task.status.timestamp_ms = now_ms();
        task.status.usage = Some(TaskUsage {
            disk_bytes: task.disk_bytes,
            ..exit.usage
        });
        self.disk.unwatch(exit.task_id.0);
        if !task.status.sandbox.is_empty() {
            self.gc
                .ended(PathBuf::from(&task.status.sandbox), SystemTime::now());
        }
        let status = task.status.clone();
        self.await_ack(exit.task_id);
        Some(status)
    }

    /// Records that a health-checked task passed its checks: RUNNING, unless a kill was
    /// requested meanwhile (it stays STARTING until its end). Returns the new status.
    fn record_healthy(&mut self, task_id: TaskId) -> Option<TaskStatusReport> {
        let task = self.tasks.get_mut(&task_id)?;
        if task.status.state != TaskState::Starting || task.kill.is_none() {
            return None;
        }
        tracing::info!(task = %task_id, job = %task.status.job_key, "task healthy: running");
        task.status.state = TaskState::Running;
        task.status.timestamp_ms = now_ms();
        Some(task.status.clone())
    }

    /// The next thing for the event loop: a watcher's event, the launcher's answer or a
    /// sandbox measurement.
    async fn next_input(&mut self) -> Input {
        tokio::select! {
            biased;
            Some(output) = self.launched.recv() => Input::Launcher(output),
            Some(event) = self.events_rx.recv() => Input::Event(event),
            Some(report) = self.disk_reports.recv() => Input::Disk(report),
        }
    }

    /// [`Agent::next_input`] if one is queued already.
    fn try_next_input(&mut self) -> Option<Input> {
        if let Ok(output) = self.launched.try_recv() {
            return Some(Input::Launcher(output));
        }
        if let Ok(event) = self.events_rx.try_recv() {
            return Some(Input::Event(event));
        }
        self.disk_reports.try_recv().ok().map(Input::Disk)
    }

    /// A sandbox measurement: remembered (reported with the task's end), and a task over its
    /// disk limit is killed and fails with the reason.
    fn on_disk_report(&mut self, report: DiskReport) {
        let task_id = TaskId(report.task);
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        if task.pgid.is_none() {
            return; // ended meanwhile: a late report
        }
        task.disk_bytes = report.usage.bytes;
        if report.usage.bytes <= report.limit_bytes {
            return;
        }
        let Some(trigger) = task.kill.take() else {
            return; // already being killed
        };
        let reason = format!(
            "disk limit of {} MiB exceeded: the sandbox holds {}{} MiB",
            report.limit_bytes >> 20,
            if report.usage.truncated {
                "at least "
            } else {
                ""
            },
            report.usage.bytes >> 20
        );
        tracing::warn!(task = %task_id, job = %task.status.job_key, %reason, "killing a task over its disk limit");
        let _ = trigger.send(KillReason::Failed(reason));
    }

    /// Handles an input; `online`: the statuses it makes are reported now (else the next
    /// registration carries them).
    fn on_input(&mut self, input: Input, online: bool) {
        let before = self.outbox.len();
        match input {
            Input::Event(Event::Healthy(task_id)) => {
                if let Some(status) = self.record_healthy(task_id) {
                    self.report(status);
                }
            }
            Input::Event(Event::Ended(exit)) => {
                if let Some(status) = self.record_exit(exit) {
                    self.report(status);
                }
            }
            Input::Disk(report) => self.on_disk_report(report),
            Input::Event(Event::ReaperDied) => {
                tracing::error!("the agent's reaper died; starting a new one");
                self.launcher.restart_reaper();
            }
            Input::Launcher(Output::Launched { task_id, result }) => {
                self.on_launched(task_id, result)
            }
            Input::Launcher(Output::Reaper(Ok(reaper))) => {
                if let Err(e) = watch_reaper(reaper, self.events_tx.clone(), true) {
                    tracing::error!(error = %e, "cannot watch the new reaper");
                }
            }
            Input::Launcher(Output::Reaper(Err(e))) => {
                tracing::error!(error = %e, "cannot start a new reaper; trying again");
                let events = self.events_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(REAPER_RESTART_PAUSE).await;
                    let _ = events.send(Event::ReaperDied).await;
                });
            }
        }
        if !online {
            // While disconnected the statuses stay in the task table; the next registration
            // carries them.
            self.outbox.truncate(before);
        }
    }

    /// Writes the queued status updates (and anything else batched) as one write.
    async fn flush(&mut self, writer: &mut Writer) -> std::io::Result<()> {
        if self.outbox.is_empty() && self.writer.is_empty() {
            return Ok(());
        }
        for status in &self.outbox {
            // A status no frame can carry stays unacknowledged (and is logged), never a panic.
            if let Err(e) = self.writer.push(self.encoder.task_status(status)) {
                tracing::error!(task = %status.task_id, "status not sent: {e}");
            }
        }
        let result = write_all(writer, self.writer.finish()).await;
        self.writer.clear();
        // Written is not delivered: terminal statuses stay unacknowledged until a StatusAck.
        self.outbox.clear();
        result
    }

    /// The task just ended: its terminal status waits for the scheduler's acknowledgement.
    /// Beyond [`Agent::unacked_max`] waiting ends, gives up the oldest.
    fn await_ack(&mut self, task_id: TaskId) {
        let key = self.next_unacked_key;
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        debug_assert!(task.status.state.is_terminal());
        if task.unacked.is_some() {
            return;
        }
        self.next_unacked_key += 1;
        task.unacked = Some(key);
        self.unacked.insert(key, task_id);
        while self.unacked.len() > self.unacked_max {
            let Some((key, old)) = self.unacked.pop_first() else {
                break;
            };
            let Some(task) = self.tasks.get_mut(&old) else {
                continue;
            };
            if task.unacked != Some(key) {
                continue;
            }
            task.unacked = None;
            self.unacked_dropped += 1;
            tracing::warn!(task = %old, job = %task.status.job_key, state = %task.status.state,
                limit = self.unacked_max, given_up = self.unacked_dropped,
                "too many task ends wait for the scheduler's acknowledgement: \
                 no longer re-reporting the oldest");
            self.retire(old);
        }
    }

    /// Applies the scheduler's acknowledgements: a terminal task acknowledged in its terminal
    /// state moves to the history. Anything else (a non-terminal state, another state than the
    /// task's, an unknown task, a repeat) changes nothing.
    fn on_status_ack(&mut self, acks: &[(TaskId, TaskState)]) {
        let mut acked = 0usize;
        for &(task_id, state) in acks {
            let Some(task) = self.tasks.get_mut(&task_id) else {
                tracing::debug!(task = %task_id, %state, "acknowledgement for an unknown task");
                continue;
            };
            if !state.is_terminal() || task.status.state != state {
                tracing::debug!(task = %task_id, acked = %state, state = %task.status.state,
                    "acknowledgement of a state that needs none or the task is not in");
                continue;
            }
            let Some(key) = task.unacked.take() else {
                continue; // acknowledged before
            };
            self.unacked.remove(&key);
            self.retire(task_id);
            acked += 1;
        }
        tracing::debug!(
            acks = acks.len(),
            acked,
            waiting = self.unacked.len(),
            "status acknowledgements"
        );
    }

    /// Moves a terminal task whose end needs no more reports to the history, evicting the
    /// oldest beyond [`Agent::history_max`].
    fn retire(&mut self, task_id: TaskId) {
        self.history.push_back(task_id);
        while self.history.len() > self.history_max {
            if let Some(old) = self.history.pop_front() {
                self.tasks.remove(&old);
                self.sandboxes.remove(old);
            }
        }
    }

    /// Kills every running task's process group and waits (briefly) for them to be reaped;
    /// with cgroups the reaper then kills whatever is left (the lifeline ends with the
    /// launcher).
    async fn shutdown(mut self) {
        self.stopping = true;
        tracing::info!(
            removed = self.gc.removed(),
            bytes_freed = self.gc.bytes_freed(),
            failures = self.gc.failures(),
            "sandbox collection this run"
        );
        let groups: Vec<i32> = self.tasks.values().filter_map(|t| t.pgid).collect();
        tracing::info!(tasks = groups.len(), "agent stopping; killing its tasks");
        for pgid in groups {
            process::signal_group(pgid, libc::SIGKILL);
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_REAP_WAIT;
        while self.running > 0 {
            match tokio::time::timeout_at(deadline, self.next_input()).await {
                Ok(input) => self.on_input(input, false),
                _ => {
                    tracing::warn!(tasks = self.running, "tasks not reaped at shutdown");
                    break;
                }
            }
        }
    }
}

enum SessionError {
    /// The scheduler sent something undecodable.
    Protocol(String),
    Io(std::io::Error),
}

async fn write_all(writer: &mut Writer, bytes: &[u8]) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(bytes)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("write of {} bytes to the scheduler timed out", bytes.len()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Agent {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let work_dir =
            std::env::temp_dir().join(format!("borealis-agent-unit-{}", std::process::id()));
        std::fs::create_dir_all(&work_dir).unwrap();
        runtime
            .block_on(Agent::new(
                Config {
                    scheduler: vec!["127.0.0.1:1".into()],
                    agent_id: "a".into(),
                    hostname: "h".into(),
                    resources: borealis_core::Resources {
                        cpu_millis: 1000,
                        ram_mib: 64,
                        disk_mib: 64,
                        ports: 0,
                    },
                    port_ranges: vec![],
                    attributes: vec![],
                    work_dir,
                    log_port: 0,
                    tls: None,
                    isolation: Isolation::None,
                    pids_limit: 64,
                    executor_user: "root".into(),
                    reserved: borealis_core::Resources::default(),
                    gc_delay: Duration::from_secs(3600),
                    gc_disk_headroom: 0.1,
                    gc_check_interval: Duration::from_secs(60),
                    disk_check_interval: Duration::from_secs(60),
                },
                Arc::default(),
            ))
            .unwrap()
    }

    fn ended(agent: &mut Agent, task: u64, state: TaskState) {
        agent.insert_ended(TaskStatusReport {
            task_id: TaskId(task),
            job_key: "r/e/n".into(),
            instance: 0,
            state,
            exit_code: -1,
            message: String::new(),
            timestamp_ms: 0,
            sandbox: String::new(),
            usage: None,
        });
    }

    /// The tasks a registration would carry, sorted.
    fn reported(agent: &Agent) -> Vec<u64> {
        let mut ids: Vec<u64> = agent
            .tasks
            .iter()
            .filter(|(_, t)| t.needs_report())
            .map(|(id, _)| id.0)
            .collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn ends_are_reported_until_acknowledged_in_their_state() {
        let mut agent = agent();
        ended(&mut agent, 1, TaskState::Failed);
        ended(&mut agent, 2, TaskState::Finished);
        assert_eq!(reported(&agent), vec![1, 2]);
        // Wrong state, non-terminal state, unknown task: nothing changes.
        agent.on_status_ack(&[
            (TaskId(1), TaskState::Finished),
            (TaskId(2), TaskState::Running),
            (TaskId(99), TaskState::Failed),
        ]);
        assert_eq!(reported(&agent), vec![1, 2]);
        assert_eq!(agent.unacked.len(), 2);
        assert!(!agent.tasks.contains_key(&TaskId(99)));
        agent.on_status_ack(&[(TaskId(1), TaskState::Failed)]);
        assert_eq!(reported(&agent), vec![2]);
        assert_eq!(agent.history, [TaskId(1)]);
        // A repeated ack is a no-op; the acknowledged task still answers reconciliation.
        agent.on_status_ack(&[(TaskId(1), TaskState::Failed)]);
        assert_eq!(agent.history, [TaskId(1)]);
        assert_eq!(agent.tasks[&TaskId(1)].status.state, TaskState::Failed);
        assert_eq!(
            agent.unacked.values().copied().collect::<Vec<_>>(),
            [TaskId(2)]
        );
    }

    #[test]
    fn waiting_ends_and_the_history_are_bounded() {
        let mut agent = agent();
        agent.unacked_max = 3;
        agent.history_max = 2;
        for task in 1..=5 {
            ended(&mut agent, task, TaskState::Finished);
        }
        // The two oldest were given up: no longer reported, still in the history.
        assert_eq!(reported(&agent), vec![3, 4, 5]);
        assert_eq!(agent.unacked_dropped, 2);
        assert_eq!(agent.history, [TaskId(1), TaskId(2)]);
        // Acks push the history along, forgetting the oldest tasks entirely.
        agent.on_status_ack(&[(TaskId(4), TaskState::Finished)]);
        assert_eq!(agent.history, [TaskId(2), TaskId(4)]);
        assert!(!agent.tasks.contains_key(&TaskId(1)));
        assert_eq!(reported(&agent), vec![3, 5]);
        // An acknowledged end frees a place: the next end gives nothing up.
        ended(&mut agent, 6, TaskState::Lost);
        assert_eq!(reported(&agent), vec![3, 5, 6]);
        assert_eq!(agent.unacked_dropped, 2);
        assert_eq!(agent.tasks.len(), 5);
    }

    #[test]
    fn bounded_cuts_at_char_boundaries() {
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcd", 3), "abc...");
        assert_eq!(bounded("aé", 2), "a...");
    }
}
