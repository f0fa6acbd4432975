//! The scheduler's HTTP control plane, on its own thread and tokio runtime, apart from the
//! shards: `/metrics` (Prometheus text exposition 0.0.4, aggregated from the shards' blocks at
//! scrape time), `/leaderhealth` (Aurora's semantics), `/health`, `POST /admin/backup`, the
//! JSON API under `/api/v1` (see [`crate::api`]) and the web UI (see [`crate::ui`]).
//!
//! With TLS files the port speaks HTTPS with the scheduler's certificate. Connections are
//! bounded: at most [`CONNECTIONS_MAX`] at once (the next waits in the kernel's backlog), each
//! TLS handshake within [`HANDSHAKE_TIMEOUT`] (a failed one drops that connection only), and
//! a connection that moves no byte for [`IDLE_TIMEOUT`] is closed.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use borealis_control::LeaderView;
use borealis_core::auth::AuthPolicy;
use borealis_net::tls::TlsFiles;
use borealis_shards::audit_log::AuditLog;
use borealis_shards::metrics::{unix_ms_now, Metrics, SHARD_STALL_BOUND};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::api::{self, ApiError, ApiState, PlacedRate};

/// Connections served at once.
pub const CONNECTIONS_MAX: usize = 1024;
/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that moves no byte this long is closed (longer than any one request takes).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Accepted connections waiting for the server to take them.
const ACCEPTED_QUEUE_MAX: usize = 64;
/// How often the placed-tasks counter is sampled for the schedule rate.
const RATE_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// What the HTTP port serves, and how.
pub struct HttpSettings {
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub metrics: Arc<Metrics>,
    pub leadership: Option<LeaderView>,
    pub backup_requests: Arc<AtomicU64>,
    /// The scheduler's own client port as a client dials it (loopback when it listens on all
    /// interfaces).
    pub scheduler_addr: String,
    pub tls: Option<TlsFiles>,
    pub auth: Option<Arc<AuthPolicy>>,
    pub audit: Option<AuditLog>,
    pub cluster_name: String,
}

/// The address a client on this machine dials for a listener on `addr` (loopback for a
/// listener on every interface).
pub fn dial_addr(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port()).to_string()
}

/// Binds the HTTP port (errors are reported here, synchronously) and serves it on a thread.
pub fn serve(settings: HttpSettings) -> anyhow::Result<SocketAddr> {
    let ip = settings.ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let port = settings.port;
    let listener = std::net::TcpListener::bind((ip, port))
        .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {ip}:{port}: {e}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (server_tls, upstream_tls, agent_tls) = match &settings.tls {
        Some(files) => (
            Some(borealis_net::tls::server_config(files)?),
            Some(api::upstream::pinned_client_config(files)?),
            Some(borealis_net::tls::client_config(&files.ca, None)?),
        ),
        None => (None, None, None),
    };
    let placed = Arc::new(PlacedRate::default());
    let api_state = ApiState {
        upstream: Arc::new(api::upstream::Upstream::new(
            settings.scheduler_addr.clone(),
            upstream_tls,
        )),
        auth: settings.auth.clone(),
        audit: settings.audit.clone(),
        metrics: settings.metrics.clone(),
        cluster_name: settings.cluster_name.clone(),
        backup_requests: settings.backup_requests.clone(),
        placed: placed.clone(),
        agent_tls,
    };
    let state = HttpState {
        metrics: settings.metrics.clone(),
        leadership: settings.leadership,
        backup_requests: settings.backup_requests,
        auth: settings.auth,
        audit: settings.audit,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Upstream calls hold these; a few more for anything else that blocks.
        .max_blocking_threads(api::upstream::CALLS_MAX + 4)
        .build()?;
    let metrics = settings.metrics;
    std::thread::Builder::new()
        .name("control-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("http listener: {e}");
                        return;
                    }
                };
                tokio::spawn(sample_placed(metrics, placed));
                let incoming = Incoming::start(listener, addr, server_tls.map(TlsAcceptor::from));
                if let Err(e) = axum::serve(incoming, app(state, api_state)).await {
                    tracing::error!("http server stopped: {e}");
                }
            })
        })?;
    tracing::info!(%addr, tls = settings.tls.is_some(), "http listening");
    Ok(addr)
}

/// Every route of the port: the plain ones, the JSON API and the web UI (`/`, `/ui/...`).
/// Unknown routes and methods answer JSON errors.
pub fn app(state: HttpState, api_state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/leaderhealth", get(leader_health))
        .route("/health", get(health))
        .route("/admin/backup", post(request_backup))
        .with_state(state)
        .merge(api::router(api_state))
        .merge(crate::ui::router())
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
}

/// Samples the placed-tasks counter for `GET /api/v1/cluster`'s schedule rate.
async fn sample_placed(metrics: Arc<Metrics>, placed: Arc<PlacedRate>) {
    let mut tick = tokio::time::interval(RATE_SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        placed.sample(Instant::now(), api::placed_total(&metrics));
    }
}

/// The state of the routes outside `/api/v1`.
#[derive(Clone)]
pub struct HttpState {
    metrics: Arc<Metrics>,
    /// With etcd: who leads. Without: this (embedded) scheduler always does.
    leadership: Option<LeaderView>,
    backup_requests: Arc<AtomicU64>,
    auth: Option<Arc<AuthPolicy>>,
    audit: Option<AuditLog>,
}

/// Aurora's performBackup: every shard writes a backup on its next sweep (within seconds),
/// into the folder this answer names. With auth it needs an admin token.
async fn request_backup(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let caller = api::authenticate(&headers, state.auth.as_deref())?;
    let name = api::routes::perform_backup(
        state.auth.as_deref(),
        &state.backup_requests,
        state.audit.as_ref(),
        &caller,
    )?;
    Ok((StatusCode::ACCEPTED, format!("{name}\n")))
}

async fn metrics_text(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render_text(),
    )
}

/// `None` while every shard completes rounds; else the text of a 503 naming each shard that
/// completed none within [`SHARD_STALL_BOUND`] (stuck, or its thread gone): the scheduler
/// cannot schedule then, whatever else it answers.
fn stalled_shards_text(metrics: &Metrics, now_unix_ms: u64) -> Option<String> {
    let stalled = metrics.stalled_shards(now_unix_ms, SHARD_STALL_BOUND);
    if stalled.is_empty() {
        return None;
    }
    let mut text = String::new();
    for s in stalled {
        let since = match s.last_round_unix_ms {
            0 => "it never started one".to_string(),
            last => format!(
                "its last one ended {:.1} s ago",
                now_unix_ms.saturating_sub(last) as f64 / 1000.0
            ),
        };
        text.push_str(&format!(
            "shard {} is stalled: no scheduling round completed within {} s ({since})\n",
            s.shard,
            SHARD_STALL_BOUND.as_secs()
        ));
    }
    Some(text)
}

/// `/health`: the process's liveness, for a supervisor. 200 `OK` while every shard completes
/// rounds; 503 naming the stalled shards when any does not (a process that cannot schedule
/// is not healthy, and restarting it is the cure: recovery runs).
async fn health(State(state): State<HttpState>) -> (StatusCode, String) {
    health_answer(&state.metrics, unix_ms_now())
}

fn health_answer(metrics: &Metrics, now_unix_ms: u64) -> (StatusCode, String) {
    match stalled_shards_text(metrics, now_unix_ms) {
        Some(text) => (StatusCode::SERVICE_UNAVAILABLE, text),
        None => (StatusCode::OK, "OK\n".into()),
    }
}

/// 200 on the leader; 503 when another scheduler leads; 502 when no leader is known. An
/// embedded scheduler always leads. Never 200 for a scheduler that cannot schedule: 503,
/// naming them, while any shard is stalled (see [`stalled_shards_text`]).
async fn leader_health(State(state): State<HttpState>) -> (StatusCode, String) {
    leader_health_answer(&state, unix_ms_now())
}

fn leader_health_answer(state: &HttpState, now_unix_ms: u64) -> (StatusCode, String) {
    if let Some(text) = stalled_shards_text(&state.metrics, now_unix_ms) {
        return (StatusCode::SERVICE_UNAVAILABLE, text);
    }
    let code = match &state.leadership {
        None => 200,
        // Elected, but 200 only once every shard has taken the lead (loaded the desired
        // state): before that, clients would see partial answers.
        Some(view) => match view.http_status() {
            200 if !state.metrics.all_shards_leading() => 503,
            code => code,
        },
    };
    let (status, text) = match code {
        200 => (StatusCode::OK, "leader\n"),
        503 => (
            StatusCode::SERVICE_UNAVAILABLE,
            "a leader exists elsewhere\n",
        ),
        _ => (StatusCode::BAD_GATEWAY, "no leader is known\n"),
    };
    (status, text.to_string())
}

// ---------------------------------------------------------------- connections

/// Accepted connections (TLS handshakes done), for `axum::serve`.
struct Incoming {
    rx: mpsc::Receiver<(Conn, SocketAddr)>,
    local: SocketAddr,
}

impl Incoming {
    /// Accepts on `listener` in a task of its own; handshakes run in tasks of their own, so a
    /// slow or failed one holds up no other connection.
    fn start(listener: TcpListener, local: SocketAddr, tls: Option<TlsAcceptor>) -> Incoming {
        let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE_MAX);
        let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
        tokio::spawn(accept_loop(listener, tls, slots, tx));
        Incoming { rx, local }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    slots: Arc<Semaphore>,
    tx: mpsc::Sender<(Conn, SocketAddr)>,
) {
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!("http accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        match &tls {
            None => {
                if tx
                    .send((Conn::new(Io::Plain(tcp), slot), peer))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let conn = Conn::new(Io::Tls(Box::new(stream)), slot);
                            let _ = tx.send((conn, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "https handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "https handshake timed out"),
                    }
                });
            }
        }
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (it does not): serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// A served connection: holds one of the [`CONNECTIONS_MAX`] slots while it lives, and fails
/// its reads once it moved no byte for [`IDLE_TIMEOUT`].
pub struct Conn {
    io: Io,
    idle: Pin<Box<tokio::time::Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    fn new(io: Io, slot: OwnedSemaphorePermit) -> Conn {
        Conn {
            io,
            idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
            _slot: slot,
        }
    }

    fn moved(&mut self) {
        self.idle
            .as_mut()
            .reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
    }

    /// `Pending` from the socket: an error instead once the connection has been idle too long.
    fn idle_check<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.idle.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "idle HTTP connection closed",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        };
        match polled {
            Poll::Ready(result) => {
                this.moved();
                Poll::Ready(result)
            }
            Poll::Pending => this.idle_check(cx),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
        };
        match polled {
            Poll::Ready(result) => {
                this.moved();
                Poll::Ready(result)
            }
            Poll::Pending => this.idle_check(cx),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::path::{Path, PathBuf};

    use super::*;

    #[test]
    fn a_listener_on_every_interface_is_dialled_on_loopback() {
        assert_eq!(dial_addr("0.0.0.0:6070".parse().unwrap()), "127.0.0.1:6070");
        assert_eq!(dial_addr("[::]:6070".parse().unwrap()), "[::1]:6070");
        assert_eq!(dial_addr("10.1.2.3:6070".parse().unwrap()), "10.1.2.3:6070");
    }

    /// A port nobody listens on (bound, read, released): the scheduler is "down".
    fn dead_addr() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    /// Metrics of `shards` shards that look live for as long as a test runs (no shard runs
    /// here: their last round is stamped in the future, which never ages).
    fn live_metrics(shards: usize) -> Arc<Metrics> {
        let metrics = Metrics::new(shards, "test");
        for s in &metrics.shards {
            s.last_round_unix_ms.set(u64::MAX);
        }
        metrics
    }

    fn settings(tls: Option<TlsFiles>, auth: Option<Arc<AuthPolicy>>) -> HttpSettings {
        HttpSettings {
            ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port: 0,
            metrics: live_metrics(1),
            leadership: None,
            backup_requests: Arc::default(),
            scheduler_addr: dead_addr(),
            tls,
            auth,
            audit: None,
            cluster_name: "test".into(),
        }
    }

    /// A plain HTTP/1.1 request (`Connection: close`); the status and body.
    fn plain(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let status = raw[9..12].parse().unwrap();
        let body = raw.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    }

    fn code(body: &str) -> String {
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        v["code"].as_str().unwrap().to_string()
    }

    #[test]
    fn with_auth_tokens_are_checked_before_any_upstream_call() {
        let admin = "admin-token-0123456789";
        let dev = "dev-token-0123456789ab";
        let policy = AuthPolicy::parse(&format!(
            "[[principal]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\npermissions = [\"*\"]\n\
             [[principal]]\nname = \"dev\"\ntoken_sha256 = \"{}\"\npermissions = [\"www:*\"]\n",
            borealis_core::auth::token_sha256(admin),
            borealis_core::auth::token_sha256(dev),
        ))
        .unwrap();
        let addr = serve(settings(None, Some(Arc::new(policy)))).unwrap();
        // Open: health, metrics, the document, the UI.
        assert_eq!(plain(addr, "GET", "/health", None).0, 200);
        assert_eq!(plain(addr, "GET", "/metrics", None).0, 200);
        assert_eq!(plain(addr, "GET", "/api/v1/openapi.json", None).0, 200);
        assert_eq!(plain(addr, "GET", "/", None).0, 200);
        // No token or an unknown one: 401 here (the scheduler is down: an upstream call
        // would have been a 503).
        let (status, body) = plain(addr, "GET", "/api/v1/jobs", None);
        assert_eq!(
            (status, code(&body).as_str()),
            (401, "Unauthenticated"),
            "{body}"
        );
        let (status, body) = plain(addr, "GET", "/api/v1/jobs", Some("not-a-known-token-0000"));
        assert_eq!(
            (status, code(&body).as_str()),
            (401, "Unauthenticated"),
            "{body}"
        );
        assert_eq!(plain(addr, "POST", "/admin/backup", None).0, 401);
        // A known token is forwarded: the scheduler being down is 503 with its reason.
        let (status, body) = plain(addr, "GET", "/api/v1/jobs", Some(dev));
        assert_eq!(
            (status, code(&body).as_str()),
            (503, "Unavailable"),
            "{body}"
        );
        assert!(body.contains("cannot reach scheduler"), "{body}");
        // whoami answers from the policy.
        let (status, body) = plain(addr, "GET", "/api/v1/whoami", Some(dev));
        assert_eq!(status, 200);
        let who: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(who["principal"], "dev");
        assert_eq!(who["permissions"], serde_json::json!(["www:*"]));
        // Backups need admin.
        let (status, body) = plain(addr, "POST", "/api/v1/backups", Some(dev));
        assert_eq!(
            (status, code(&body).as_str()),
            (403, "PermissionDenied"),
            "{body}"
        );
        assert!(body.contains("\\\"dev\\\""), "{body}");
        assert_eq!(plain(addr, "POST", "/admin/backup", Some(dev)).0, 403);
        let (status, body) = plain(addr, "POST", "/api/v1/backups", Some(admin));
        assert_eq!(status, 202, "{body}");
        assert!(body.contains("\"backup\""), "{body}");
        let (status, body) = plain(addr, "POST", "/admin/backup", Some(admin));
        assert_eq!(status, 202);
        assert!(body.starts_with("backup-"), "{body}");
    }

    /// `/health` and `/leaderhealth` never answer 200 while a shard is stalled: 503 naming it.
    #[test]
    fn health_and_leaderhealth_are_503_while_a_shard_is_stalled() {
        let metrics = Metrics::new(3, "test");
        let now = 1_700_000_000_000u64;
        let bound = SHARD_STALL_BOUND.as_millis() as u64;
        for s in &metrics.shards {
            s.last_round_unix_ms.set(now - 50);
        }
        let state = HttpState {
            metrics: metrics.clone(),
            leadership: None,
            backup_requests: Arc::default(),
            auth: None,
            audit: None,
        };
        assert_eq!(
            leader_health_answer(&state, now),
            (StatusCode::OK, "leader\n".to_string())
        );
        assert_eq!(
            health_answer(&metrics, now),
            (StatusCode::OK, "OK\n".to_string())
        );
        // Shard 1 completes no round for longer than the bound (7 s).
        metrics.shards[1].last_round_unix_ms.set(now - 7_000);
        for (status, body) in [
            leader_health_answer(&state, now),
            health_answer(&metrics, now),
        ] {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert_eq!(
                body,
                "shard 1 is stalled: no scheduling round completed within 5 s \
                 (its last one ended 7.0 s ago)\n"
            );
        }
        // At the bound exactly, still live; a shard that never started is stalled.
        metrics.shards[1].last_round_unix_ms.set(now - bound);
        assert_eq!(leader_health_answer(&state, now).0, StatusCode::OK);
        metrics.shards[2].last_round_unix_ms.set(0);
        let (status, body) = leader_health_answer(&state, now);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("shard 2 is stalled"), "{body}");
        assert!(body.contains("it never started one"), "{body}");
        // A follower with a stalled shard names the shard too.
        let state = HttpState {
            leadership: Some(LeaderView::new()),
            ..state
        };
        assert!(leader_health_answer(&state, now).1.starts_with("shard 2"));
        metrics.shards[2].last_round_unix_ms.set(now);
        // Live again: the leadership decides (a new view knows no leader: 502).
        assert_eq!(leader_health_answer(&state, now).0, StatusCode::BAD_GATEWAY);
    }

    /// Over HTTP: a stale shard turns both endpoints to 503; the metric shows its age.
    #[test]
    fn a_stalled_shard_is_served_as_503() {
        let metrics = live_metrics(2);
        let addr = serve(HttpSettings {
            metrics: metrics.clone(),
            ..settings(None, None)
        })
        .unwrap();
        assert_eq!(
            plain(addr, "GET", "/leaderhealth", None),
            (200, "leader\n".into())
        );
        assert_eq!(plain(addr, "GET", "/health", None), (200, "OK\n".into()));
        metrics.shards[0]
            .last_round_unix_ms
            .set(unix_ms_now() - SHARD_STALL_BOUND.as_millis() as u64 - 60_000);
        for path in ["/leaderhealth", "/health"] {
            let (status, body) = plain(addr, "GET", path, None);
            assert_eq!(status, 503, "{path}: {body}");
            assert!(body.starts_with("shard 0 is stalled"), "{path}: {body}");
        }
        let (_, text) = plain(addr, "GET", "/metrics", None);
        assert!(
            text.contains("borealis_shard_last_round_timestamp_seconds{shard=\"0\"}"),
            "{text}"
        );
    }

    struct Pki {
        ca: PathBuf,
        files: TlsFiles,
        other: TlsFiles,
    }

    /// A CA, a scheduler certificate naming only `scheduler.test` (not 127.0.0.1), and
    /// another certificate of the same CA.
    fn pki(dir: &Path) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let leaf = |name: &str| {
            let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            let (c, k) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}-key.pem")),
            );
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            TlsFiles {
                cert: c,
                key: k,
                ca: ca_path.clone(),
            }
        };
        Pki {
            ca: ca_path.clone(),
            files: leaf("scheduler.test"),
            other: leaf("other.test"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn https_serves_and_survives_failed_handshakes() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path());
        let addr = serve(settings(Some(pki.files.clone()), None)).unwrap();
        let client = borealis_net::tls::client_config(&pki.ca, None).unwrap();
        // Plain HTTP to the HTTPS port: that connection fails, nothing else does.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::AsyncReadExt::read(&mut s, &mut buf),
        )
        .await
        .expect("the server closes a failed handshake");
        assert!(!matches!(read, Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200")));
        let a = addr.to_string();
        for _ in 0..2 {
            let ok = api::logs::fetch(&a, "scheduler.test", Some(client.clone()), "/health", None)
                .await
                .unwrap();
            assert_eq!(ok.status, StatusCode::OK);
            assert_eq!(&ok.body[..], b"OK\n");
        }
        // The API answers over HTTPS too; its scheduler is down: 503 with the reason.
        let down = api::logs::fetch(
            &a,
            "scheduler.test",
            Some(client.clone()),
            "/api/v1/agents",
            None,
        )
        .await
        .unwrap();
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            code(std::str::from_utf8(&down.body).unwrap()),
            "Unavailable"
        );
        // The certificate does not name 127.0.0.1: a client checking names refuses it.
        let refused = api::logs::fetch(&a, "127.0.0.1", Some(client), "/health", None).await;
        assert!(refused.unwrap_err().contains("TLS handshake failed"));
    }

    /// The upstream pin trusts exactly the scheduler's certificate, whatever name it is
    /// dialled by, and nothing else of the same CA.
    #[tokio::test(flavor = "current_thread")]
    async fn the_upstream_pin_trusts_exactly_the_schedulers_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path());
        let acceptor = TlsAcceptor::from(borealis_net::tls::server_config(&pki.files).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                let _ = acceptor.accept(tcp).await;
            }
        });
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        for (pinned, ok) in [(&pki.files, true), (&pki.other, false)] {
            let config = api::upstream::pinned_client_config(pinned).unwrap();
            let tcp = TcpStream::connect(addr).await.unwrap();
            let result = tokio_rustls::TlsConnector::from(config)
                .connect(name.clone(), tcp)
                .await;
            assert_eq!(result.is_ok(), ok, "{:?}", result.err());
        }
        server.await.unwrap();
    }
}
