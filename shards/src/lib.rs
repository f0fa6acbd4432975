//! The thread-per-core scheduler runtime.
//!
//! Architecture invariant: each shard is one glommio executor pinned to a core; it owns a
//! partition of jobs (by the hash of the job key) with their tasks, the agents whose
//! connections it accepted, and their offers. Owned state is never locked and never shared:
//! shards talk only through bounded `channel_mesh` queues carrying [`msg::PeerBatch`]es.

pub mod audit_log;
mod claim;
mod config;
pub mod conn;
pub mod coordinator;
pub mod ha;
pub mod limits;
pub mod metrics;
pub mod msg;
pub mod shard;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::channels::local_channel;
use glommio::{GlommioError, LocalExecutorBuilder, Placement, ResourceType};

use crate::claim::{record_lock_holder, resolve_listen_addr};
use crate::metrics::Metrics;
use crate::msg::{Inbound, PeerBatch};
use crate::shard::Shard;
pub use claim::{lock_data_dir, lock_data_dir_waiting, LockHolder, PREDECESSOR_EXIT_WAIT};
pub use config::{ChangeSettings, FaultPanic, SchedulerConfig, SecuritySettings, ServiceSettings};

/// Items a shard's loop may have queued (connections, peers, ticks).
pub const INBOUND_QUEUE_MAX: usize = 4096;
/// Items a shard's connections may have queued (frames read, opens and closes).
pub const CONN_INBOUND_QUEUE_MAX: usize = 4096;
/// Batches queued from one shard to another.
pub const PEER_QUEUE_MAX: usize = 1024;
/// How often a shard wakes with nothing to do (throttle expiry, retries, timeouts).
const TICK: Duration = Duration::from_millis(50);

/// A running scheduler.
pub struct Scheduler {
    pub addr: SocketAddr,
    /// Every shard's metrics, for the control plane to scrape.
    pub metrics: Arc<Metrics>,
    /// Held for the scheduler's life (see `lock_data_dir`).
    _data_dir_lock: Option<std::fs::File>,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
    /// The id of each shard whose thread ended, as it ends (see [`ShardExit`]).
    exits: mpsc::Receiver<usize>,
    /// The coordinator service's ends of the shards' channels: the caller runs the service
    /// (`CoordinatorSlaPolicy` requests, on its control thread) and takes this to do so.
    pub coordinator: Option<coordinator::CoordinatorService>,
}

impl Scheduler {
    /// Blocks while every shard runs (they run until the process ends) and fails as soon as
    /// any one shard's thread ends, whichever it is: the scheduler cannot serve without it
    /// (its jobs and agents would be served by nobody), so the process must stop.
    pub fn wait(self) -> anyhow::Result<()> {
        let id = self
            .exits
            .recv()
            .map_err(|_| anyhow!("every shard stopped"))?;
        // The others are left running (detached): the caller is to end the process.
        let why = match self.handles.into_iter().nth(id).map(|h| h.join()) {
            Some(Ok(())) => "its loop ended".to_string(),
            Some(Err(e)) => e.to_string(),
            None => "unknown shard".to_string(),
        };
        Err(anyhow!(
            "shard {id} stopped ({why}): the scheduler cannot schedule without it"
        ))
    }
}

thread_local! {
    /// The running shard's [`ShardExit`], dropped as its thread ends.
    static SHARD_EXIT: std::cell::RefCell<Option<ShardExit>> = const { std::cell::RefCell::new(None) };
}

/// Sends its shard's id to [`Scheduler::wait`] when dropped: kept in a thread-local of the
/// shard's thread, whose destructor runs however the thread ends (its loop returning, or a
/// panic unwinding out of the executor); dropped unused if the executor never started.
struct ShardExit {
    id: usize,
    tx: mpsc::Sender<usize>,
}

impl Drop for ShardExit {
    fn drop(&mut self) {
        let _ = self.tx.send(self.id);
    }
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
    if let Some(fault) = config.fault_panic_shard {
        anyhow::ensure!(
            fault.shard < config.shards,
            "{}: there is no shard {} (shards: {})",
            FaultPanic::ENV,
            fault.shard,
            config.shards
        );
    }
    // The data dir's lock first: a second scheduler on the same data dir is refused by it,
    // naming the first, whatever port it asked for. Then the port: the shards' listeners
    // share it through SO_REUSEPORT, which would also let a second scheduler share it
    // silently. Either may still be held, for a moment, by a predecessor that is exiting: wait
    // for it (within one bound for both).
    let deadline = std::time::Instant::now() + PREDECESSOR_EXIT_WAIT;
    let data_dir_lock = config
        .data_dir
        .as_deref()
        .map(|dir| lock_data_dir_waiting(dir, config.listen, deadline))
        .transpose()?;
    let addr = resolve_listen_addr(config.listen, deadline)?;
    if let Some(lock) = &data_dir_lock {
        if addr != config.listen {
            // Port 0 became a port: record the one clients can dial.
            record_lock_holder(lock, Some(addr));
        }
    }

    // Recover before any shard starts: every shard's log, merged and re-partitioned for the
    // current shard count (which may differ from the last run's).
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
    let (exit_tx, exits) = mpsc::channel::<usize>();
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
        let exit = ShardExit {
            id,
            tx: exit_tx.clone(),
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{id}"))
            .io_memory(config.io_memory_bytes)
            .spin_before_park(Duration::from_micros(config.spin_before_park_us))
            .spawn(move || async move {
                SHARD_EXIT.with(|slot| *slot.borrow_mut() = Some(exit));
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
    drop(exit_tx);
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
        exits,
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
    let front = conn::Front::new(
        id,
        shard_count,
        &config.limits,
        metrics.clone(),
        config.security.tls.clone(),
    );
    // Connections feed a queue of their own: while a peer is too far behind to take more
    // (`Shard::takes_conn_input`) the loop stops reading it, its readers stop reading their
    // sockets, and TCP pushes back on the peers; batches from shards and ticks keep flowing.
    let (conn_tx, conn_rx) = local_channel::new_bounded::<Inbound>(CONN_INBOUND_QUEUE_MAX);
    let conn_tx = Rc::new(conn_tx);
    glommio::spawn_local(conn::accept_loop(listener, conn_tx.clone(), front)).detach();
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
    let shard_metrics = &metrics.shards[id];
    // Live from here: an idle shard completes a round per tick.
    shard_metrics.last_round_unix_ms.set(metrics::unix_ms_now());
    let _ = ready.send(Ok(()));
    drop(ready);

    let origin = std::time::Instant::now();
    let fault_after = config
        .fault_panic_shard
        .filter(|f| f.shard == id)
        .map(|f| Duration::from_millis(f.after_ms));
    if let Some(after) = fault_after {
        tracing::warn!(
            shard = id,
            after_ms = after.as_millis() as u64,
            "fault injection armed ({}): this shard will panic",
            FaultPanic::ENV
        );
    }
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
    loop {
        // Begin: wait for input unless work is already pending.
        if !shard.has_pending() {
            let next = if shard.takes_conn_input() {
                futures_lite::future::or(in_rx.recv(), conn_rx.recv()).await
            } else {
                in_rx.recv().await
            };
            match next {
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
        if let Some(after) = fault_after.filter(|after| origin.elapsed() >= *after) {
            panic!(
                "injected fault ({}={id}:{}): shard {id} panics as asked, to test fail-stop",
                FaultPanic::ENV,
                after.as_millis()
            );
        }
        shard.poll_control();
        // Handle: drain a bounded batch of each queue.
        for _ in 0..shard::ROUND_INBOUND_MAX {
            match futures_lite::future::poll_once(in_rx.recv()).await {
                Some(Some(item)) => shard.handle(item),
                _ => break,
            }
        }
        for _ in 0..shard::ROUND_INBOUND_MAX {
            if !shard.takes_conn_input() {
                break;
            }
            match futures_lite::future::poll_once(conn_rx.recv()).await {
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
        shard.publish_metrics(in_tx.len() + conn_tx.len());
        shard_metrics.rounds_total.inc();
        shard_metrics.last_round_unix_ms.set(metrics::unix_ms_now());
        shard_metrics
            .round_duration
            .observe_nanos(round_start.elapsed().as_nanos() as u64);
        glommio::yield_if_needed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_config(shards: usize, fault: Option<FaultPanic>) -> SchedulerConfig {
        SchedulerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards,
            pin_shards: false,
            cluster_name: "test".into(),
            max_tasks_per_job: 4000,
            history_max_per_job: 100,
            history_prune_threshold_ms: 2 * 24 * 3600 * 1000,
            history_min_retention_ms: 3600 * 1000,
            lifecycle: Default::default(),
            epoch: 1,
            data_dir: None,
            backup_dir: std::env::temp_dir().join("borealis-shards-test-backups"),
            backup_interval_ms: 3600 * 1000,
            backup_requests: Default::default(),
            max_saved_backups: 1,
            snapshot_interval_ms: 3600 * 1000,
            reconciliation_grace_ms: 30_000,
            spin_before_park_us: 0,
            io_memory_bytes: 1 << 20,
            tier_config: Default::default(),
            enable_preemptor: true,
            preemption_delay_ms: 180_000,
            preemption_slot_hold_time_ms: 300_000,
            preemption_slot_search_interval_ms: 60_000,
            first_schedule_delay_ms: 1,
            max_schedule_attempts_per_sec: 0.0,
            allowed_job_environments: ".*".into(),
            fault_panic_shard: fault,
            service: Default::default(),
            changes: Default::default(),
            security: Default::default(),
            limits: Default::default(),
        }
    }

    /// `wait` returns as soon as any shard's thread ends, not only the first one's; the dead
    /// shard's liveness stops while the others' goes on.
    #[test]
    fn wait_fails_as_soon_as_any_shard_stops() {
        let fault = FaultPanic {
            shard: 2,
            after_ms: 200,
        };
        let scheduler = start(test_config(3, Some(fault)), None).unwrap();
        let metrics = scheduler.metrics.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(scheduler.wait());
        });
        let result = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("wait returned when shard 2 stopped");
        let error = result.unwrap_err().to_string();
        assert!(error.starts_with("shard 2 stopped"), "{error}");
        let frozen = metrics.shards[2].last_round_unix_ms.get();
        let live = metrics.shards[0].last_round_unix_ms.get();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(metrics.shards[2].last_round_unix_ms.get(), frozen);
        assert!(metrics.shards[0].last_round_unix_ms.get() > live);
        // With a bound of a few ticks (the real one is 5 s), only the dead shard is stalled.
        let stalled: Vec<usize> = metrics
            .stalled_shards(metrics::unix_ms_now(), Duration::from_millis(200))
            .iter()
            .map(|s| s.shard)
            .collect();
        assert_eq!(stalled, vec![2]);
    }
}
