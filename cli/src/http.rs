//! The scheduler's HTTP control plane, on its own thread and tokio runtime, apart from the
//! shards: `/metrics` (Prometheus text exposition 0.0.4, aggregated from the shards' blocks at
//! scrape time), `/leaderhealth` (Aurora's semantics) and `/health`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use borealis_control::LeaderView;
use borealis_shards::metrics::Metrics;

/// Binds the HTTP port (errors are reported here, synchronously) and serves it on a thread.
pub fn serve(
    ip: Option<IpAddr>,
    port: u16,
    metrics: Arc<Metrics>,
    leadership: Option<LeaderView>,
    backup_requests: Arc<AtomicU64>,
) -> anyhow::Result<SocketAddr> {
    let ip = ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let listener = std::net::TcpListener::bind((ip, port))
        .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {ip}:{port}: {e}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("control-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("http listener: {e}");
                        return;
                    }
                };
                let app = Router::new()
                    .route("/metrics", get(metrics_text))
                    .route("/leaderhealth", get(leader_health))
                    .route("/health", get(|| async { "OK\n" }))
                    .route("/admin/backup", post(request_backup))
                    .with_state(HttpState {
                        metrics,
                        leadership,
                        backup_requests,
                    });
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!("http server stopped: {e}");
                }
            })
        })?;
    tracing::info!(%addr, "http listening");
    Ok(addr)
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    /// With etcd: who leads. Without: this (embedded) scheduler always does.
    leadership: Option<LeaderView>,
    backup_requests: Arc<AtomicU64>,
}

/// Aurora's performBackup: every shard writes a backup on its next sweep (within seconds),
/// into the folder this answer names.
async fn request_backup(State(state): State<HttpState>) -> impl IntoResponse {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    state.backup_requests.store(unix_ms, Ordering::Relaxed);
    let name = borealis_store::backup::backup_name(unix_ms, 1000);
    (StatusCode::ACCEPTED, format!("{name}\n"))
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

/// 200 on the leader; 503 when another scheduler leads; 502 when no leader is known. An
/// embedded scheduler always leads.
async fn leader_health(State(state): State<HttpState>) -> impl IntoResponse {
    let code = match &state.leadership {
        None => 200,
        // Elected, but 200 only once every shard has taken the lead (loaded the desired
        // state): before that, clients would see partial answers.
        Some(view) => match view.http_status() {
            200 if !state.metrics.all_shards_leading() => 503,
            code => code,
        },
    };
    match code {
        200 => (StatusCode::OK, "leader\n"),
        503 => (
            StatusCode::SERVICE_UNAVAILABLE,
            "a leader exists elsewhere\n",
        ),
        _ => (StatusCode::BAD_GATEWAY, "no leader is known\n"),
    }
}
