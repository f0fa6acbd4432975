//! Leadership through etcd's election API (`v3election`), with a lease this process keeps alive.
//!
//! One *session* is one lease: grant it, keep it alive from a separate task, campaign with it,
//! and watch the election's keys. The session ends when the lease is lost or in doubt past its
//! deadline, when `max_leading` is reached (resign), or on shutdown; a new session (new lease,
//! new campaign) follows until shutdown.
//!
//! Safety rule: `Leader` is published only while the lease is known to be alive. The lease is
//! alive on the server at least until `send time of the last acknowledged keep-alive + TTL`;
//! the session steps down (`Unknown`) at the first failed keep-alive, and gives the lease up
//! `margin` before that deadline. Another candidate can only win after the lease has expired
//! on the server (its campaign waits for our key's deletion), so two processes never both
//! publish `Leader` unless a clock runs more than `margin` fast over one TTL. Durable writes
//! do not rely on clocks at all: they are fenced in etcd (see `DesiredStore`).

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use etcd_client::{
    CampaignResponse, Client, ConnectOptions, Error as EtcdError, EventType, LeaderKey,
    LeaseClient, LeaseKeepAliveStream, LeaseKeeper, ResignOptions, WatchOptions, WatchResponse,
    WatchStream,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout};

use crate::view::{LeaderView, Leadership};
use crate::ControlError;

/// Aurora's `max_leading_duration` default.
pub const DEFAULT_MAX_LEADING: Duration = Duration::from_secs(24 * 60 * 60);
/// Default lease TTL. etcd raises anything below its minimum (2 s with default timing).
pub const DEFAULT_LEASE_TTL_SECS: i64 = 10;
/// The smallest TTL accepted (etcd's minimum with its default election timing).
pub const MIN_LEASE_TTL_SECS: i64 = 2;

/// How to take part in the election.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// etcd client endpoints (`HOST:PORT` or `http://HOST:PORT`).
    pub endpoints: Vec<String>,
    /// Key prefix of this scheduler cluster, e.g. `/borealis/prod`; the election uses
    /// `{prefix}/election`, the desired state `{prefix}/jobs/`.
    pub prefix: String,
    /// TTL of the lease that holds the candidacy (≥ 2).
    pub lease_ttl_secs: i64,
    /// This scheduler's client address (`HOST:PORT`), shown to followers as the leader.
    pub advertise: String,
    /// After leading this long, resign and campaign again (Aurora's `max_leading_duration`).
    pub max_leading: Duration,
}

impl ElectionConfig {
    /// A config with the default TTL and `max_leading`.
    pub fn new(
        endpoints: Vec<String>,
        prefix: impl Into<String>,
        advertise: impl Into<String>,
    ) -> Self {
        ElectionConfig {
            endpoints,
            prefix: prefix.into(),
            lease_ttl_secs: DEFAULT_LEASE_TTL_SECS,
            advertise: advertise.into(),
            max_leading: DEFAULT_MAX_LEADING,
        }
    }

    fn validate(&self) -> Result<(), ControlError> {
        let bad = |m: &str| Err(ControlError::InvalidConfig(m.to_string()));
        if self.endpoints.is_empty() {
            return bad("no etcd endpoints");
        }
        if self.prefix.trim_end_matches('/').is_empty() {
            return bad("empty key prefix");
        }
        if self.lease_ttl_secs < MIN_LEASE_TTL_SECS {
            return bad("lease_ttl_secs must be at least 2");
        }
        if self.advertise.is_empty() {
            return bad("empty advertise address");
        }
        if self.max_leading.is_zero() {
            return bad("max_leading must be positive");
        }
        Ok(())
    }
}

/// The election's name: its keys are `{name}/{lease id in hex}`.
pub(crate) fn election_name(prefix: &str) -> String {
    format!("{}/election", prefix.trim_end_matches('/'))
}

/// Intervals derived from the lease TTL.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// Keep-alive period.
    keepalive_every: Duration,
    /// Bound on every unary etcd call and every keep-alive round trip.
    rpc: Duration,
    /// The lease is given up this long before its computed deadline.
    margin: Duration,
    /// Followers re-read the leader this often even without watch events.
    refresh: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
}

impl Timing {
    fn from_ttl(ttl: Duration) -> Timing {
        Timing {
            keepalive_every: (ttl / 4).max(Duration::from_millis(250)),
            rpc: (ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(3)),
            margin: ttl / 8,
            refresh: (ttl / 2).max(Duration::from_millis(500)),
            backoff_min: Duration::from_millis(100),
            backoff_max: (ttl / 2).clamp(Duration::from_millis(500), Duration::from_secs(5)),
        }
    }
}

/// Takes part in the election until `shutdown` completes, publishing the outcome to `view`.
///
/// Runs on a tokio runtime (the control thread), never inside glommio. Transient etcd failures
/// are retried forever (with backoff); the only error is an invalid config. On shutdown it
/// publishes `Unknown`, resigns if leading, and revokes its lease (each bounded by a timeout).
pub async fn run_election<S>(
    cfg: ElectionConfig,
    view: LeaderView,
    shutdown: S,
) -> Result<(), ControlError>
where
    S: Future<Output = ()>,
{
    cfg.validate()?;
    // However this future ends — returned, or dropped (an aborted task) — `Leader` must not
    // outlive it.
    let _unknown_on_exit = UnknownOnDrop(&view);
    let name = election_name(&cfg.prefix);
    let base = Timing::from_ttl(Duration::from_secs(cfg.lease_ttl_secs as u64));
    tokio::pin!(shutdown);
    let mut stale_lease: Option<i64> = None;
    let mut backoff = base.backoff_min;
    tracing::info!(election = %name, advertise = %cfg.advertise, ttl_secs = cfg.lease_ttl_secs,
        max_leading = ?cfg.max_leading, "joining the election");
    loop {
        let end = Session {
            cfg: &cfg,
            name: &name,
            view: &view,
            stale_lease: &mut stale_lease,
        }
        .run(base, shutdown.as_mut())
        .await;
        let pause = match end {
            End::Shutdown => {
                view.publish(Leadership::Unknown, "election stopped");
                tracing::info!(election = %name, "left the election");
                return Ok(());
            }
            End::Rejoin(why) => {
                tracing::info!(reason = %why, "rejoining the election with a new lease");
                backoff = base.backoff_min;
                base.backoff_min
            }
            End::Failed(why) => {
                view.publish(Leadership::Unknown, "etcd unavailable");
                tracing::info!(reason = %why, retry_in = ?backoff, "etcd session failed");
                let pause = backoff;
                backoff = (backoff * 2).min(base.backoff_max);
                pause
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => {
                view.publish(Leadership::Unknown, "election stopped");
                tracing::info!(election = %name, "left the election");
                return Ok(());
            }
            _ = sleep(pause) => {}
        }
    }
}

enum End {
    Shutdown,
    /// The session had a lease and ended (lost, resigned): start over at once.
    Rejoin(String),
    /// etcd could not be used: start over after a backoff.
    Failed(String),
}

#[derive(Debug, Clone, Copy)]
struct LeaseHealth {
    /// The lease lives on the server at least until then.
    valid_until: Instant,
    /// The last keep-alive round trip succeeded.
    ok: bool,
    /// etcd said the lease no longer exists.
    lost: bool,
}

enum Role {
    Candidate,
    Leader {
        key: LeaderKey,
        since: Instant,
        /// `Leader` is published; false after a failed keep-alive until leadership is verified.
        sure: bool,
    },
}

struct UnknownOnDrop<'a>(&'a LeaderView);

impl Drop for UnknownOnDrop<'_> {
    fn drop(&mut self) {
        self.0.publish(Leadership::Unknown, "election task ended");
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type CampaignFuture = Pin<Box<dyn Future<Output = Result<CampaignResponse, EtcdError>> + Send>>;

struct Session<'a> {
    cfg: &'a ElectionConfig,
    name: &'a str,
    view: &'a LeaderView,
    /// A lease of an earlier session that may still exist: revoked first (its key would hold
    /// the election until it expires otherwise).
    stale_lease: &'a mut Option<i64>,
}

impl Session<'_> {
    async fn run<S: Future<Output = ()>>(mut self, base: Timing, mut shutdown: Pin<&mut S>) -> End {
        let opts = ConnectOptions::new().with_connect_timeout(base.rpc);
        let mut client =
            match timeout(base.rpc, Client::connect(&self.cfg.endpoints, Some(opts))).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return End::Failed(format!("connect: {e}")),
                Err(_) => return End::Failed("connect timed out".into()),
            };
        if let Some(old) = *self.stale_lease {
            match timeout(base.rpc, client.lease_revoke(old)).await {
                Ok(Ok(_)) => {
                    tracing::info!(lease = old, "revoked the lease of an earlier session");
                    *self.stale_lease = None;
                }
                Ok(Err(e)) if is_lease_not_found(&e) => *self.stale_lease = None,
                Ok(Err(e)) => return End::Failed(format!("revoke old lease: {e}")),
                Err(_) => return End::Failed("revoke old lease timed out".into()),
            }
        }

        let asked = Instant::now();
        let grant = match timeout(base.rpc, client.lease_grant(self.cfg.lease_ttl_secs, None)).await
        {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => return End::Failed(format!("lease grant: {e}")),
            Err(_) => return End::Failed("lease grant timed out".into()),
        };
        let lease = grant.id();
        *self.stale_lease = Some(lease);
        let ttl = Duration::from_secs(grant.ttl().max(MIN_LEASE_TTL_SECS) as u64);
        let t = Timing::from_ttl(ttl);
        tracing::info!(lease, ttl_secs = grant.ttl(), "lease granted; campaigning");

        let (ka_tx, mut ka_rx) = watch::channel(LeaseHealth {
            valid_until: asked + ttl,
            ok: true,
            lost: false,
        });
        let _keeper = AbortOnDrop(tokio::spawn(keep_lease_alive(
            client.lease_client(),
            lease,
            ttl,
            t,
            ka_tx,
        )));

        let keys = format!("{}/", self.name);
        let mut watcher = open_watch(&mut client, &keys, t).await;
        let mut campaign: Option<CampaignFuture> = Some({
            let mut elections = client.election_client();
            let (name, value) = (self.name.to_string(), self.cfg.advertise.clone());
            Box::pin(async move { elections.campaign(name, value, lease).await })
        });
        let mut role = Role::Candidate;
        let mut need_lookup = true;
        let mut was_ok = true;
        let mut refresh = tokio::time::interval(t.refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let health = *ka_rx.borrow_and_update();
            if health.lost {
                self.view.publish(Leadership::Unknown, "lease lost");
                return End::Rejoin(format!("lease {lease:x} no longer exists"));
            }
            let deadline = health.valid_until.checked_sub(t.margin).unwrap_or(asked);
            if Instant::now() >= deadline {
                self.view
                    .publish(Leadership::Unknown, "lease not renewed within its TTL");
                return End::Failed(format!("lease {lease:x} not renewed within its TTL"));
            }
            if !health.ok {
                if let Role::Leader { sure, .. } = &mut role {
                    *sure = false;
                }
                self.view
                    .publish(Leadership::Unknown, "lease keep-alive failed");
            } else {
                if !was_ok {
                    need_lookup = true;
                }
                if let Role::Leader { key, since, sure } = &mut role {
                    if !*sure {
                        match verify_leader(&mut client, self.name, key, t).await {
                            Some(true) => {
                                *sure = true;
                                self.view.publish(
                                    Leadership::Leader {
                                        fence_revision: key.rev(),
                                        since: *since,
                                    },
                                    "leadership verified after keep-alive recovered",
                                );
                            }
                            Some(false) => {
                                self.view.publish(Leadership::Unknown, "leader key gone");
                                return End::Rejoin("leader key gone".into());
                            }
                            None => {} // still unsure: try again on the next tick
                        }
                    }
                } else if need_lookup {
                    need_lookup = false;
                    let status = lookup_leader(&mut client, self.name, lease, t).await;
                    self.view.publish(status, "observed the election");
                }
            }
            was_ok = health.ok;

            let leading_until = match &role {
                Role::Leader { since, .. } => since.checked_add(self.cfg.max_leading),
                Role::Candidate => None,
            };

            tokio::select! {
                biased;
                _ = shutdown.as_mut() => {
                    self.view.publish(Leadership::Unknown, "shutting down");
                    if let Role::Leader { key, .. } = &role {
                        resign(&mut client, key, t).await;
                    }
                    self.revoke(&mut client, lease, t).await;
                    return End::Shutdown;
                }
                changed = ka_rx.changed() => {
                    if changed.is_err() {
                        self.view.publish(Leadership::Unknown, "lease keeper stopped");
                        return End::Failed("lease keeper stopped".into());
                    }
                }
                _ = sleep_until(deadline.into()) => {} // re-checked at the top
                _ = sleep_until(leading_until.unwrap_or(deadline).into()), if leading_until.is_some() => {
                    self.view.publish(Leadership::Unknown, "max_leading reached: resigning");
                    if let Role::Leader { key, .. } = &role {
                        resign(&mut client, key, t).await;
                    }
                    self.revoke(&mut client, lease, t).await;
                    return End::Rejoin("resigned after max_leading".into());
                }
                res = async { campaign.as_mut().expect("guarded").await }, if campaign.is_some() => {
                    campaign = None;
                    let key = match res {
                        Ok(mut resp) => resp.take_leader(),
                        Err(e) => {
                            self.view.publish(Leadership::Unknown, "campaign failed");
                            return End::Failed(format!("campaign: {e}"));
                        }
                    };
                    let Some(key) = key else {
                        self.view.publish(Leadership::Unknown, "campaign failed");
                        return End::Failed("campaign returned no leader key".into());
                    };
                    let since = Instant::now();
                    let h = *ka_rx.borrow();
                    let sure = h.ok && !h.lost && since < h.valid_until.checked_sub(t.margin).unwrap_or(asked);
                    tracing::info!(lease, fence_revision = key.rev(), "elected");
                    if sure {
                        self.view.publish(
                            Leadership::Leader { fence_revision: key.rev(), since },
                            "won the election",
                        );
                    }
                    role = Role::Leader { key, since, sure };
                }
                msg = next_watch(&mut watcher) => match msg {
                    Ok(Some(resp)) if !resp.canceled() => {
                        if let Role::Leader { key, .. } = &role {
                            if lost_leader_key(&resp, key) {
                                self.view.publish(Leadership::Unknown, "leader key deleted");
                                return End::Rejoin("leader key deleted".into());
                            }
                        }
                        if !resp.events().is_empty() {
                            need_lookup = true;
                        }
                    }
                    _ => {
                        watcher = None;
                        need_lookup = true;
                    }
                },
                _ = refresh.tick() => {
                    need_lookup = true;
                    if watcher.is_none() {
                        watcher = open_watch(&mut client, &keys, t).await;
                    }
                }
            }
        }
    }

    async fn revoke(&mut self, client: &mut Client, lease: i64, t: Timing) {
        match timeout(t.rpc, client.lease_revoke(lease)).await {
            Ok(Ok(_)) => *self.stale_lease = None,
            Ok(Err(e)) if is_lease_not_found(&e) => *self.stale_lease = None,
            Ok(Err(e)) => tracing::info!(lease, error = %e, "lease revoke failed"),
            Err(_) => tracing::info!(lease, "lease revoke timed out"),
        }
    }
}

fn is_lease_not_found(e: &EtcdError) -> bool {
    e.to_string().contains("lease not found")
}

/// Whether a watch response deletes the current incarnation of `key` (a deletion at a
/// revision after its creation; an older term's deletion of the same key name is ignored).
fn lost_leader_key(resp: &WatchResponse, key: &LeaderKey) -> bool {
    resp.events().iter().any(|ev| {
        ev.event_type() == EventType::Delete
            && ev
                .kv()
                .is_some_and(|kv| kv.key() == key.key() && kv.mod_revision() > key.rev())
    })
}

async fn open_watch(client: &mut Client, keys: &str, t: Timing) -> Option<WatchStream> {
    let opts = WatchOptions::new().with_prefix();
    match timeout(t.rpc, client.watch(keys, Some(opts))).await {
        Ok(Ok(w)) => Some(w),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "election watch failed");
            None
        }
        Err(_) => None,
    }
}

async fn next_watch(w: &mut Option<WatchStream>) -> Result<Option<WatchResponse>, EtcdError> {
    match w {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}

/// What a candidate that has not won should publish.
async fn lookup_leader(client: &mut Client, name: &str, own_lease: i64, t: Timing) -> Leadership {
    let mut elections = client.election_client();
    match timeout(t.rpc, elections.leader(name)).await {
        Ok(Ok(resp)) => match resp.kv() {
            // Our own key leads but our campaign has not returned yet: not a leader yet.
            Some(kv) if kv.lease() == own_lease => Leadership::Unknown,
            Some(kv) => Leadership::Follower {
                leader: String::from_utf8_lossy(kv.value()).into_owned(),
            },
            None => Leadership::Unknown,
        },
        // "election: no leader", or etcd unreachable.
        Ok(Err(_)) | Err(_) => Leadership::Unknown,
    }
}

/// `Some(true)` if `key` (this incarnation) still leads, `Some(false)` if it surely does not,
/// `None` if etcd could not tell.
async fn verify_leader(
    client: &mut Client,
    name: &str,
    key: &LeaderKey,
    t: Timing,
) -> Option<bool> {
    let mut elections = client.election_client();
    match timeout(t.rpc, elections.leader(name)).await {
        Ok(Ok(resp)) => Some(
            resp.kv()
                .is_some_and(|kv| kv.key() == key.key() && kv.create_revision() == key.rev()),
        ),
        Ok(Err(e)) if e.to_string().contains("no leader") => Some(false),
        _ => None,
    }
}

async fn resign(client: &mut Client, key: &LeaderKey, t: Timing) {
    let opts = ResignOptions::new().with_leader(key.clone());
    match timeout(t.rpc, client.resign(Some(opts))).await {
        Ok(Ok(_)) => tracing::info!(fence_revision = key.rev(), "resigned"),
        Ok(Err(e)) => tracing::info!(error = %e, "resign failed"),
        Err(_) => tracing::info!("resign timed out"),
    }
}

/// Keeps `id` alive every `t.keepalive_every`, publishing its health; ends when etcd says the
/// lease is gone (or when the session aborts it).
async fn keep_lease_alive(
    mut leases: LeaseClient,
    id: i64,
    ttl: Duration,
    t: Timing,
    tx: watch::Sender<LeaseHealth>,
) {
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    let mut tick = tokio::time::interval(t.keepalive_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: the lease was just granted
    loop {
        tick.tick().await;
        let sent = Instant::now();
        let result = timeout(t.rpc, keep_alive_once(&mut leases, &mut stream, id, ttl)).await;
        match result {
            Ok(Ok(Some(ttl))) => {
                tx.send_if_modified(|h| {
                    h.valid_until = sent + ttl;
                    let changed = !h.ok;
                    h.ok = true;
                    changed
                });
            }
            Ok(Ok(None)) => {
                tracing::info!(lease = id, "etcd reports the lease gone");
                tx.send_modify(|h| h.lost = true);
                return;
            }
            failed => {
                match failed {
                    Ok(Err(e)) => tracing::info!(lease = id, error = %e, "lease keep-alive failed"),
                    _ => tracing::info!(lease = id, "lease keep-alive timed out"),
                }
                stream = None;
                tx.send_if_modified(|h| std::mem::replace(&mut h.ok, false));
            }
        }
    }
}

/// One keep-alive round trip: `Some(ttl)` while the lease lives, `None` once it is gone.
async fn keep_alive_once(
    leases: &mut LeaseClient,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    id: i64,
    ttl: Duration,
) -> Result<Option<Duration>, EtcdError> {
    match stream {
        Some((keeper, responses)) => {
            keeper.keep_alive().await?;
            match responses.message().await? {
                Some(r) if r.ttl() > 0 => Ok(Some(Duration::from_secs(r.ttl() as u64))),
                Some(_) => Ok(None),
                None => Err(EtcdError::LeaseKeepAliveError(
                    "keep-alive stream ended".into(),
                )),
            }
        }
        None => match leases.keep_alive(id).await {
            // Opening the stream sends one keep-alive and checks its answer (TTL > 0).
            Ok(pair) => {
                *stream = Some(pair);
                Ok(Some(ttl))
            }
            Err(e) if is_lease_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        },
    }
}
