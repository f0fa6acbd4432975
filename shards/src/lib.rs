//! The thread-per-core scheduler runtime.
//!
//! Architecture invariant: each shard is one glommio executor pinned to a core; it owns a
//! partition of jobs (by the hash of the job key) with their tasks, the agents whose
//! connections it accepted, and their offers. Owned state is never locked and never shared:
//! shards talk only through bounded `channel_mesh` queues carrying [`msg::PeerBatch`]es.

pub mod audit_log;
pub mod conn;
pub mod coordinator;
pub mod ha;
pub mod limits;
pub mod metrics;
pub mod msg;
pub mod shard;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::channels::local_channel;
use glommio::{GlommioError, LocalExecutorBuilder, Placement, ResourceType};

use crate::metrics::Metrics;
use crate::msg::{Inbound, PeerBatch};
use crate::shard::Shard;

/// Items a shard's loop may have queued (connections, peers, ticks).
pub const INBOUND_QUEUE_MAX: usize = 4096;
/// Batches queued from one shard to another.
pub const PEER_QUEUE_MAX: usize = 1024;
/// How often a shard wakes with nothing to do (throttle expiry, retries, timeouts).
const TICK: Duration = Duration::from_millis(50);

/// The scheduler's settings (flag names follow Aurora's where they exist).
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Address for agents and clients.
    pub listen: SocketAddr,
    pub shards: usize,
    /// Pin shard `i` to CPU `i % cores`.
    pub pin_shards: bool,
    pub cluster_name: String,
    pub max_tasks_per_job: u32,
    pub history_max_per_job: usize,
    /// Terminal tasks older than this are pruned (Aurora: `history_prune_threshold`).
    pub history_prune_threshold_ms: u64,
    /// Per-job pruning spares terminal tasks younger than this
    /// (Aurora: `history_min_retention_threshold`).
    pub history_min_retention_ms: u64,
    pub lifecycle: borealis_core::lifecycle::LifecyclePolicy,
    /// Mixed into task ids so ids of different scheduler runs never collide.
    pub epoch: u32,
    /// Durable state (write-ahead log and snapshots per shard); None keeps state in memory.
    pub data_dir: Option<std::path::PathBuf>,
    /// Where backups go (Aurora: `backup_dir`).
    pub backup_dir: std::path::PathBuf,
    /// Aurora: `backup_interval`.
    pub backup_interval_ms: u64,
    /// An operator's backup request (Aurora: performBackup): the request's unix ms, written by
    /// the control plane, read by every shard on its next sweep.
    pub backup_requests: Arc<std::sync::atomic::AtomicU64>,
    /// Aurora: `max_saved_backups`.
    pub max_saved_backups: usize,
    /// Aurora: `dlog_snapshot_interval`.
    pub snapshot_interval_ms: u64,
    /// After a restart, how long tasks restored on an agent wait for it to report them before
    /// they are LOST and replaced.
    pub reconciliation_grace_ms: u64,
    /// How long an idle shard spins before it parks (DESIGN.md: ~50 µs cut ping-pong latency
    /// from 57 to 13 µs); 0 parks at once, leaving the core to other processes.
    pub spin_before_park_us: u64,
    /// io_uring buffer memory per shard (DESIGN.md: set it explicitly; >= 512 KiB).
    pub io_memory_bytes: usize,
    /// Aurora: `tier_config`: the tiers file, parsed and checked at startup (default: Aurora's
    /// stock tiers).
    pub tier_config: borealis_core::tier::TierConfig,
    /// Aurora: `enable_preemptor` (default true).
    pub enable_preemptor: bool,
    /// Aurora: `preemption_delay` (3 min): how long a task must be pending before it may
    /// preempt others.
    pub preemption_delay_ms: u64,
    /// Aurora: `preemption_slot_hold_time` (5 min): how long a found preemption slot is held.
    pub preemption_slot_hold_time_ms: u64,
    /// Aurora: `preemption_slot_search_interval` (1 min).
    pub preemption_slot_search_interval_ms: u64,
    /// Aurora: `first_schedule_delay` (1 ms): wait before a new PENDING task's first attempt.
    pub first_schedule_delay_ms: u64,
    /// Aurora: `max_schedule_attempts_per_sec`; 0 means unlimited (Borealis' default, see the
    /// flag).
    pub max_schedule_attempts_per_sec: f64,
    /// Aurora: `allowed_job_environments`, a regular expression (the CLI checks it compiles).
    pub allowed_job_environments: String,
    /// Drains under SLAs, kill retries, partitions and reconciliation.
    pub service: ServiceSettings,
    /// Rolling updates and cron jobs.
    pub changes: ChangeSettings,
    /// TLS, authentication and the audit log.
    pub security: SecuritySettings,
    /// Bounds on what peers may make the scheduler hold (`limits`).
    pub limits: limits::Limits,
}

/// Who may connect and what they may do (issue 10). The default is the embedded,
/// zero-config one: plain TCP, no authentication, no audit log.
#[derive(Clone, Debug, Default)]
pub struct SecuritySettings {
    /// `--tls-cert`, `--tls-key`, `--tls-ca`: every connection to the client/agent port is
    /// TLS; an agent must present a certificate of the CA to register, and a peer that
    /// presented one may never act as a client.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `--auth-file`: a client must authenticate with a token before any request, and each
    /// request is authorized per role and action.
    pub auth: Option<Arc<borealis_core::auth::AuthPolicy>>,
    /// `--audit-log`: every accepted mutation, one JSON line each.
    pub audit: Option<audit_log::AuditLog>,
}

/// How jobs change: rolling updates and cron runs (Aurora's flags, same meanings and defaults).
#[derive(Clone, Debug)]
pub struct ChangeSettings {
    /// `--job-update-history-per-job-threshold` (10): finished updates kept per job.
    pub update_history_per_job: usize,
    /// `--job-update-history-pruning-threshold` (30 days): finished updates older than this
    /// are pruned.
    pub update_history_prune_threshold_ms: u64,
    /// `--max-update-instance-failures` (20,000): the most failures one update may record
    /// (`max_per_instance_failures` × instances).
    pub max_update_instance_failures: u32,
    /// `--cron-timezone` (GMT).
    pub cron_timezone: borealis_core::cron::CronTimezone,
    /// `--cron-start-initial-backoff` (5 s) and `--cron-start-max-backoff` (1 min): waits
    /// while a previous run is being killed.
    pub cron_start_initial_backoff_ms: u64,
    pub cron_start_max_backoff_ms: u64,
    /// `--cron-scheduling-max-batch-size` (10): cron triggers handled per tick and shard.
    pub cron_scheduling_max_batch_size: usize,
}

impl Default for ChangeSettings {
    fn default() -> ChangeSettings {
        ChangeSettings {
            update_history_per_job: 10,
            update_history_prune_threshold_ms: 30 * 24 * 3600 * 1000,
            max_update_instance_failures: 20_000,
            cron_timezone: borealis_core::cron::CronTimezone::default(),
            cron_start_initial_backoff_ms: 5_000,
            cron_start_max_backoff_ms: 60_000,
            cron_scheduling_max_batch_size: 10,
        }
    }
}

/// How the scheduler keeps services up through maintenance and faults (Aurora's flags, same
/// meanings and defaults).
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    /// `--min-required-instances-for-sla-check` (20), `--max-sla-duration-secs` (2 h).
    pub sla: borealis_core::sla::SlaSettings,
    /// `--sla-aware-kill-retry-min-delay` (1 min): the first wait before a drain asks a job's SLA
    /// again for a task it refused; doubling up to `--sla-aware-kill-retry-max-delay` (5 min).
    pub sla_kill_retry_min_ms: u64,
    pub sla_kill_retry_max_ms: u64,
    /// `--initial-task-kill-retry-interval` (5 s): a kill not answered is sent again after this,
    /// doubling up to `--transient-task-state-timeout`.
    pub initial_task_kill_retry_interval_ms: u64,
    /// `--partition-aware` (false): a lost agent's RUNNING tasks go PARTITIONED (and their
    /// job's partition policy decides when they are LOST) instead of LOST at once.
    pub partition_aware: bool,
    /// `--reconciliation-initial-delay` (1 min).
    pub reconciliation_initial_delay_ms: u64,
    /// `--reconciliation-explicit-interval` (60 min).
    pub reconciliation_explicit_interval_ms: u64,
    /// `--reconciliation-explicit-batch-size` (1000).
    pub reconciliation_explicit_batch_size: usize,
    /// `--reconciliation-explicit-batch-interval` (5 s).
    pub reconciliation_explicit_batch_interval_ms: u64,
    /// `--reconciliation-implicit-interval` (60 min).
    pub reconciliation_implicit_interval_ms: u64,
    /// `--reconciliation-schedule-spread` (30 min): implicit rounds start this long after the
    /// explicit ones.
    pub reconciliation_schedule_spread_ms: u64,
}

impl Default for ServiceSettings {
    /// Aurora's defaults.
    fn default() -> ServiceSettings {
        const MIN: u64 = 60_000;
        ServiceSettings {
            sla: borealis_core::sla::SlaSettings::default(),
            sla_kill_retry_min_ms: MIN,
            sla_kill_retry_max_ms: 5 * MIN,
            initial_task_kill_retry_interval_ms: 5_000,
            partition_aware: false,
            reconciliation_initial_delay_ms: MIN,
            reconciliation_explicit_interval_ms: 60 * MIN,
            reconciliation_explicit_batch_size: 1000,
            reconciliation_explicit_batch_interval_ms: 5_000,
            reconciliation_implicit_interval_ms: 60 * MIN,
            reconciliation_schedule_spread_ms: 30 * MIN,
        }
    }
}

/// Takes the data directory's lock (created if missing): one scheduler per data dir, and
/// offline tools (backup restore) refuse to touch a directory a scheduler holds.
pub fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: plain system call on an open descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!("data dir {} is in use by another scheduler", dir.display());
    }
    Ok(file)
}

/// A running scheduler.
pub struct Scheduler {
    pub addr: SocketAddr,
    /// Every shard's metrics, for the control plane to scrape.
    pub metrics: Arc<Metrics>,
    /// Held for the scheduler's life (see `lock_data_dir`).
    _data_dir_lock: Option<std::fs::File>,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
    /// The coordinator service's ends of the shards' channels: the caller runs the service
    /// (`CoordinatorSlaPolicy` requests, on its control thread) and takes this to do so.
    pub coordinator: Option<coordinator::CoordinatorService>,
}

impl Scheduler {
    /// Blocks until every shard stops (they run until the process ends).
    pub fn wait(self) -> anyhow::Result<()> {
        for h in self.handles {
            h.join().map_err(|e| anyhow!("shard failed: {e}"))?;
        }
        Ok(())
    }
}

/// A concrete address for the shards to bind: port 0 becomes a free port; a port where a
/// server already accepts connections is refused.
fn resolve_listen_addr(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    if listen.port() == 0 {
        let probe =
            StdListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
        return Ok(probe.local_addr()?);
    }
    let dial = if listen.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listen.port())
    } else {
        listen
    };
    if std::net::TcpStream::connect_timeout(&dial, Duration::from_millis(200)).is_ok() {
        anyhow::bail!("cannot listen on {listen}: another server is already listening there");
    }
    Ok(listen)
}

/// Starts the shards and returns once every shard listens.
pub fn start(
    config: SchedulerConfig,
    ha_links: Option<Vec<ha::ShardLinks>>,
) -> anyhow::Result<Scheduler> {
    let metrics = Metrics::new(config.shards, &config.cluster_name);
    start_with_metrics(config, ha_links, metrics)
}

/// `start` with metrics the caller already shares (e.g. with its control thread).
pub fn start_with_metrics(
    mut config: SchedulerConfig,
    ha_links: Option<Vec<ha::ShardLinks>>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Scheduler> {
    anyhow::ensure!(
        config.shards >= 1 && config.shards <= 256,
        "--shards must be 1..=256"
    );
    anyhow::ensure!(
        config.io_memory_bytes >= 512 * 1024,
        "io memory per shard must be at least 512 KiB"
    );
    // The shards' listeners share the port through SO_REUSEPORT, which would also let a second
    // scheduler share it silently: refuse to start when something already answers there.
    let addr = resolve_listen_addr(config.listen)?;

    // Recover before any shard starts: every shard's log, merged and re-partitioned for the
    // current shard count (which may differ from the last run's).
    let data_dir_lock = config.data_dir.as_deref().map(lock_data_dir).transpose()?;
    let durable = match config.data_dir.clone() {
        Some(dir) => recover(&dir, config.shards, &mut config.epoch)?
            .into_iter()
            .map(Some)
            .collect(),
        None => (0..config.shards).map(|_| None).collect::<Vec<_>>(),
    };
    let config = Arc::new(config);
    if ha_links.is_none() {
        // The embedded scheduler is always the leader.
        metrics.leader.set(1);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mesh = MeshBuilder::<PeerBatch, _>::full(config.shards, PEER_QUEUE_MAX);
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
    let mut handles = Vec::new();
    let mut ha_links: Vec<Option<ha::ShardLinks>> = match ha_links {
        Some(links) => {
            anyhow::ensure!(
                links.len() == config.shards,
                "one set of control links per shard"
            );
            links.into_iter().map(Some).collect()
        }
        None => (0..config.shards).map(|_| None).collect(),
    };
    let (coordinator_links, coordinator_service) = coordinator::coordinator_channels(config.shards);
    let mut coordinator_links: Vec<Option<coordinator::CoordinatorLinks>> =
        coordinator_links.into_iter().map(Some).collect();
    for (id, restored) in durable.into_iter().enumerate() {
        let links = ha_links[id].take();
        let coordinator = coordinator_links[id].take().expect("one per shard");
        let placement = if config.pin_shards {
            Placement::Fixed(id % cores)
        } else {
            Placement::Unbound
        };
        let mesh = mesh.clone();
        let ready = ready_tx.clone();
        let config = config.clone();
        let metrics = metrics.clone();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{id}"))
            .io_memory(config.io_memory_bytes)
            .spin_before_park(Duration::from_micros(config.spin_before_park_us))
            .spawn(move || async move {
                let links = ShardSideLinks {
                    ha: links,
                    coordinator,
                };
                run_shard(id, config, metrics, restored, links, addr, mesh, ready).await
            })
            .map_err(|e| anyhow!("cannot start shard {id}: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..config.shards {
        ready_rx
            .recv()
            .map_err(|_| anyhow!("a shard exited while starting"))??;
    }
    tracing::info!(%addr, shards = config.shards, cluster = %config.cluster_name, "scheduler listening");
    Ok(Scheduler {
        addr,
        metrics,
        _data_dir_lock: data_dir_lock,
        handles,
        coordinator: Some(coordinator_service),
    })
}

/// What a shard talks to off its thread: the etcd control thread (HA only) and the
/// coordinator service.
struct ShardSideLinks {
    ha: Option<ha::ShardLinks>,
    coordinator: coordinator::CoordinatorLinks,
}

/// A shard's recovered state and its log, ready for [`Shard::restore`].
pub type Recovered = (borealis_store::image::StateImage, borealis_store::wal::Wal);

/// Recovers every shard's log under `dir`, merged and re-partitioned for `shards`, and opens a
/// fresh log per shard. Raises `epoch` past every epoch a recovered task id used, so ids are
/// never issued twice. The runtime and the simulation recover through this one function.
pub fn recover(
    dir: &std::path::Path,
    shards: usize,
    epoch: &mut u32,
) -> anyhow::Result<Vec<Recovered>> {
    let started = std::time::Instant::now();
    let (images, _recoveries) = borealis_store::recover_all(dir, shards)
        .with_context(|| format!("cannot recover the data dir {}", dir.display()))?;
    // Task ids carry the epoch they were issued in: never issue from an epoch a recovered
    // task already used (a restart within the same second would otherwise repeat ids).
    if let Some(used) = images
        .iter()
        .flat_map(|i| i.tasks.keys())
        .map(|t| (t.0 >> 32) as u32)
        .max()
    {
        if *epoch <= used {
            *epoch = used.wrapping_add(1);
        }
    }
    let tasks: usize = images.iter().map(|i| i.tasks.len()).sum();
    let jobs: usize = images.iter().map(|i| i.jobs.len()).sum();
    let mut recovered = Vec::with_capacity(shards);
    for (shard, image) in images.into_iter().enumerate() {
        let wal =
            borealis_store::wal::Wal::create_fresh(&dir.join(format!("shard-{shard}")), &image)
                .with_context(|| format!("cannot write shard {shard}'s store"))?;
        recovered.push((image, wal));
    }
    tracing::info!(
        jobs,
        tasks,
        elapsed_ms = started.elapsed().as_millis() as u64,
        dir = %dir.display(),
        "recovered durable state"
    );
    Ok(recovered)
}

#[allow(clippy::too_many_arguments)] // one call site: the executor spawn
async fn run_shard(
    id: usize,
    config: Arc<SchedulerConfig>,
    metrics: Arc<Metrics>,
    restored: Option<(borealis_store::image::StateImage, borealis_store::wal::Wal)>,
    links: ShardSideLinks,
    addr: SocketAddr,
    mesh: MeshBuilder<PeerBatch, glommio::channels::channel_mesh::Full>,
    ready: mpsc::Sender<anyhow::Result<()>>,
) {
    let shard_count = config.shards;
    let (senders, mut receivers) = match mesh.join().await {
        Ok(pair) => pair,
        Err(e) => {
            let _ = ready.send(Err(anyhow!("shard {id} could not join the mesh: {e}")));
            return;
        }
    };
    let listener = match glommio::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(anyhow!("shard {id} cannot listen on {addr}: {e}")));
            return;
        }
    };
    let (in_tx, in_rx) = local_channel::new_bounded::<Inbound>(INBOUND_QUEUE_MAX);
    let in_tx = Rc::new(in_tx);
    glommio::spawn_local(conn::accept_loop(
        listener,
        in_tx.clone(),
        config.security.tls.clone(),
    ))
    .detach();
    for (from, rx) in receivers.streams() {
        let in_tx = in_tx.clone();
        glommio::spawn_local(async move {
            while let Some(batch) = rx.recv().await {
                if in_tx
                    .send(Inbound::Peer {
                        from: msg::ShardId(from),
                        batch,
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
        .detach();
    }
    {
        let in_tx = in_tx.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(TICK).await;
                // A full queue already wakes the loop; a dropped tick is harmless.
                let _ = in_tx.try_send(Inbound::Tick);
            }
        })
        .detach();
    }
    let _ = ready.send(Ok(()));
    drop(ready);

    let origin = std::time::Instant::now();
    let clock = move || shard::RoundClock {
        mono_us: origin.elapsed().as_micros() as u64,
        unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    let mut shard = Shard::new(
        msg::ShardId(id),
        shard_count,
        config,
        metrics.clone(),
        clock(),
    );
    if let Some((image, wal)) = restored {
        shard.restore(image, wal);
    }
    if let Some(ha) = links.ha {
        shard.set_links(ha);
    }
    shard.set_coordinator(links.coordinator);
    let shard_metrics = &metrics.shards[id];
    loop {
        // Begin: wait for input unless work is already pending.
        if !shard.has_pending() {
            match in_rx.recv().await {
                Some(item) => {
                    shard.begin_round(clock());
                    shard.handle(item)
                }
                None => break,
            }
        } else {
            shard.begin_round(clock());
        }
        let round_start = std::time::Instant::now();
        shard.poll_control();
        // Handle: drain a bounded batch.
        for _ in 0..shard::ROUND_INBOUND_MAX {
            match futures_lite::future::poll_once(in_rx.recv()).await {
                Some(Some(item)) => shard.handle(item),
                _ => break,
            }
        }
        // End: place, give back borrowed offers, commit, flush (the same `end_round` the
        // simulation drives), then hand each peer its batch.
        shard.end_round();
        for peer in 0..shard_count {
            if peer == id {
                continue;
            }
            if let Some(batch) = shard.take_outbox(msg::ShardId(peer)) {
                match senders.try_send_to(peer, batch) {
                    Ok(()) => {}
                    // The peer is saturated: keep the batch and retry next round.
                    Err(GlommioError::WouldBlock(ResourceType::Channel(batch))) => {
                        shard.restore_outbox(msg::ShardId(peer), batch)
                    }
                    Err(e) => tracing::error!(shard = id, peer, "peer channel failed: {e}"),
                }
            }
        }
        shard.publish_metrics(in_tx.len());
        shard_metrics.rounds_total.inc();
        shard_metrics
            .round_duration
            .observe_nanos(round_start.elapsed().as_nanos() as u64);
        glommio::yield_if_needed().await;
    }
}
