//! High availability: the control thread that takes part in the etcd election, tells the
//! shards whether they lead, loads the desired state (jobs and per-role quotas) when this
//! scheduler takes the lead, and writes job and quota changes to etcd fenced on this leader's
//! term. Its own tokio runtime; the shards
//! (glommio) are only ever reached through bounded channels they poll.

use std::sync::Arc;
use std::time::Duration;

use borealis_control::{DesiredStore, ElectionConfig, LeaderView, Leadership, Space};
use borealis_core::Resources;
use borealis_shards::ha::{
    DesiredJob, ShardLinks, ToControl, ToShard, PERSIST_QUEUE_MAX, TO_SHARD_QUEUE_MAX,
};
use borealis_shards::metrics::Metrics;

/// Desired-state writes batched into one fenced etcd write.
const PERSIST_BATCH_MAX: usize = 128;

pub struct HaConfig {
    pub election: ElectionConfig,
    pub shards: usize,
}

/// Starts the control thread; returns the shards' ends of the channels and the leadership
/// view (for `/leaderhealth`).
pub fn start(
    config: HaConfig,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Vec<ShardLinks>, LeaderView)> {
    let view = LeaderView::new();
    let mut to_shards = Vec::with_capacity(config.shards);
    let mut links = Vec::with_capacity(config.shards);
    let (to_control, from_shards) = tokio::sync::mpsc::channel::<ToControl>(PERSIST_QUEUE_MAX);
    for _ in 0..config.shards {
        let (tx, rx) = crossbeam::channel::bounded::<ToShard>(TO_SHARD_QUEUE_MAX);
        to_shards.push(tx);
        links.push(ShardLinks {
            from_control: rx,
            to_control: to_control.clone(),
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread_view = view.clone();
    std::thread::Builder::new()
        .name("control-etcd".into())
        .spawn(move || {
            runtime.block_on(control_main(
                config,
                thread_view,
                to_shards,
                from_shards,
                metrics,
            ))
        })?;
    Ok((links, view))
}

async fn control_main(
    config: HaConfig,
    view: LeaderView,
    to_shards: Vec<crossbeam::channel::Sender<ToShard>>,
    from_shards: tokio::sync::mpsc::Receiver<ToControl>,
    metrics: Arc<Metrics>,
) {
    let endpoints = config.election.endpoints.clone();
    let prefix = config.election.prefix.clone();
    let election_view = view.clone();
    let election = tokio::spawn(async move {
        if let Err(e) =
            borealis_control::run_election(config.election, election_view, std::future::pending())
                .await
        {
            tracing::error!("the election cannot run: {e}");
            std::process::exit(2);
        }
    });
    let store = loop {
        match DesiredStore::connect(&endpoints, &prefix).await {
            Ok(store) => break store,
            Err(e) => {
                tracing::warn!("cannot reach etcd for the desired state yet: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let store = Arc::new(store);
    let to_shards = Arc::new(to_shards);
    tokio::spawn(persist_worker(
        store.clone(),
        view.clone(),
        from_shards,
        to_shards.clone(),
    ));
    watch_leadership(store, view, to_shards, metrics).await;
    election.abort();
}

/// Tells the shards what leadership became; on a new term, loads the desired state first.
async fn watch_leadership(
    store: Arc<DesiredStore>,
    view: LeaderView,
    to_shards: Arc<Vec<crossbeam::channel::Sender<ToShard>>>,
    metrics: Arc<Metrics>,
) {
    let mut changes = view.subscribe();
    let mut led_fence: Option<i64> = None;
    loop {
        let current = view.get();
        match &*current {
            Leadership::Leader { fence_revision, .. } => {
                metrics.leader.set(1);
                if led_fence != Some(*fence_revision) {
                    match load_desired(&store).await {
                        Ok((jobs, quotas, hosts)) => {
                            tracing::info!(
                                fence = fence_revision,
                                jobs = jobs.len(),
                                quotas = quotas.len(),
                                "leading: desired state loaded"
                            );
                            let shards = to_shards.len() as u64;
                            let shard_of = |text: &str| {
                                (borealis_core::route_hash_str(text) % shards) as usize
                            };
                            let mut parts: Vec<Vec<DesiredJob>> = vec![Vec::new(); to_shards.len()];
                            for job in jobs {
                                parts[shard_of(&job.key.to_string())].push(job);
                            }
                            // A role's quota lives on its quota owner (as `SetQuota` routes).
                            let mut quota_parts: Vec<Vec<(String, Resources)>> =
                                vec![Vec::new(); to_shards.len()];
                            for (role, quota) in quotas {
                                quota_parts[shard_of(&role)].push((role, quota));
                            }
                            // A host's mode lives on its owner (as maintenance requests route).
                            let mut host_parts: Vec<Vec<(String, borealis_store::HostImage)>> =
                                vec![Vec::new(); to_shards.len()];
                            for (host, image) in hosts {
                                host_parts[shard_of(&host)].push((host, image));
                            }
                            for (((tx, jobs), quotas), hosts) in
                                to_shards.iter().zip(parts).zip(quota_parts).zip(host_parts)
                            {
                                let _ = tx.send(ToShard::Lead {
                                    fence: *fence_revision,
                                    jobs,
                                    quotas,
                                    hosts,
                                });
                            }
                            led_fence = Some(*fence_revision);
                        }
                        Err(e) => {
                            tracing::warn!("cannot load the desired state, retrying: {e}");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    }
                } else {
                    // The same term came back after a pause.
                    for tx in to_shards.iter() {
                        let _ = tx.send(ToShard::Lead {
                            fence: *fence_revision,
                            jobs: Vec::new(),
                            quotas: Vec::new(),
                            hosts: Vec::new(),
                        });
                    }
                }
            }
            Leadership::Follower { leader } => {
                metrics.leader.set(0);
                led_fence = None;
                for tx in to_shards.iter() {
                    let _ = tx.send(ToShard::Follow {
                        leader: Some(leader.clone()),
                    });
                }
            }
            Leadership::Unknown => {
                metrics.leader.set(0);
                for tx in to_shards.iter() {
                    let _ = tx.send(ToShard::Follow { leader: None });
                }
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// The desired jobs and the per-role quotas, read at one revision.
/// What a new leader loads from etcd: the desired jobs, the quotas, the hosts' modes.
type Desired = (
    Vec<DesiredJob>,
    Vec<(String, Resources)>,
    Vec<(String, borealis_store::HostImage)>,
);

async fn load_desired(store: &DesiredStore) -> anyhow::Result<Desired> {
    let snapshot = store.load_desired().await?;
    let mut jobs = Vec::new();
    for (key, value) in snapshot.jobs {
        match serde_json::from_slice::<DesiredJob>(&value) {
            Ok(job) => jobs.push(job),
            Err(e) => tracing::error!(key = %key, "unreadable desired job, skipped: {e}"),
        }
    }
    let mut quotas = Vec::new();
    for (role, value) in snapshot.quotas {
        match serde_json::from_slice::<Resources>(&value) {
            Ok(quota) => quotas.push((role, quota)),
            Err(e) => tracing::error!(role = %role, "unreadable quota, skipped: {e}"),
        }
    }
    let mut hosts = Vec::new();
    for (host, value) in snapshot.hosts {
        match serde_json::from_slice::<borealis_store::HostImage>(&value) {
            Ok(image) => hosts.push((host, image)),
            Err(e) => {
                tracing::error!(host = %host, "unreadable host maintenance entry, skipped: {e}")
            }
        }
    }
    Ok((jobs, quotas, hosts))
}

/// Writes the shards' job and quota changes, batching whatever is queued into one fenced
/// write (txns of at most 128 operations).
async fn persist_worker(
    store: Arc<DesiredStore>,
    view: LeaderView,
    mut from_shards: tokio::sync::mpsc::Receiver<ToControl>,
    to_shards: Arc<Vec<crossbeam::channel::Sender<ToShard>>>,
) {
    let mut batch = Vec::with_capacity(PERSIST_BATCH_MAX);
    while let Some(first) = from_shards.recv().await {
        batch.clear();
        batch.push(first);
        while batch.len() < PERSIST_BATCH_MAX {
            match from_shards.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let result = match view.fence_revision() {
            None => Err("this scheduler is no longer the leader".to_string()),
            Some(fence) => {
                let ops = batch
                    .iter()
                    .map(|request| match request {
                        ToControl::Persist { key, job, .. } => {
                            let value = job
                                .as_ref()
                                .map(|j| serde_json::to_vec(j).expect("a desired job serializes"));
                            (Space::Jobs, key.to_string(), value)
                        }
                        ToControl::PersistQuota { role, quota, .. } => {
                            let value = serde_json::to_vec(quota).expect("a quota serializes");
                            (Space::Quotas, role.clone(), Some(value))
                        }
                        ToControl::PersistHostMode { host, image, .. } => {
                            let value = image
                                .as_ref()
                                .map(|i| serde_json::to_vec(i).expect("a host entry serializes"));
                            (Space::Hosts, host.clone(), value)
                        }
                    })
                    .collect();
                store.write(fence, ops).await.map_err(|e| e.to_string())
            }
        };
        for request in batch.drain(..) {
            let (ToControl::Persist { shard, token, .. }
            | ToControl::PersistQuota { shard, token, .. }
            | ToControl::PersistHostMode { shard, token, .. }) = request;
            let _ = to_shards[shard].send(ToShard::Persisted {
                token,
                result: result.clone(),
            });
        }
    }
}
