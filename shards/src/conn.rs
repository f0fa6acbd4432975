//! A shard's network front: the accept loop and one reader and one writer task per
//! connection. Readers reassemble frames, verify every message once (so the rest of the
//! scheduler reads them unchecked) and hand them to the shard loop; a bad frame closes that
//! connection only.
//!
//! With TLS (`--tls-cert`, `--tls-key`, `--tls-ca`) each accepted socket first completes a
//! rustls handshake, driven by futures-rustls over the shard's own glommio socket: rustls'
//! state machine does the cryptography inline on the shard's thread, and every read and write
//! is the shard's non-blocking IO, so a handshake never blocks the shard. It is bounded by
//! [`TLS_HANDSHAKE_TIMEOUT`]; a failed one (no certificate of the CA where one is presented,
//! an expired one, a peer speaking plain frames) closes that socket only. What the peer proved
//! ([`PeerIdentity`]) goes to the shard with the connection.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use borealis_net::frame::split_messages;
use borealis_net::tls::PeerIdentity;
use borealis_net::{decode_message, FrameDecoder};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpListener;

use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::msg::{ConnId, Inbound};

/// Outbound batches queued per connection; while it is full the shard keeps accumulating
/// into the connection's frame writer (up to `shard::CONN_PENDING_BYTES_MAX`).
pub const CONN_OUT_QUEUE_MAX: usize = 16;
/// Socket read sizes: small for idle connections, growing while reads fill the buffer.
const READ_BYTES_MIN: usize = 4 * 1024;
const READ_BYTES_MAX: usize = 256 * 1024;
/// Most bytes one write coalesces from queued batches.
const WRITE_COALESCE_BYTES_MAX: usize = 4 << 20;
/// How long a peer has to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of frames not yet complete that one shard's readers may hold together. A reader
/// holding part of a frame waits (stops reading its socket) while the shard is over it; its
/// connection's timeouts still run, so stalled peers are closed and free their share.
pub const INBOUND_PARTIAL_BYTES_MAX: usize = 256 << 20;
/// A reader below this much of a partial frame is never held back by the budget (so small
/// requests and heartbeats flow even while big frames wait).
const PARTIAL_BYTES_EXEMPT: usize = 64 << 10;
/// How often a reader held back by the budget looks again.
const BUDGET_RECHECK: Duration = Duration::from_millis(5);

/// What a shard's network front needs: its limits, and its metrics to count what they refuse.
#[derive(Clone)]
pub struct Front {
    pub shard: usize,
    pub metrics: Arc<Metrics>,
    /// This shard's share of `--max-connections`.
    pub max_connections: usize,
    pub first_message_timeout: Duration,
    pub idle_timeout: Duration,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections open on this shard and bytes of partial frames its readers hold.
    open: Rc<Cell<usize>>,
    partial_bytes: Rc<Cell<usize>>,
    /// When a timed-out connection was last logged, and how many were closed since unlogged
    /// (a flood of stalled connections must not flood the log too; the metric counts each).
    timeouts_logged: Rc<Cell<(Option<Instant>, u64)>>,
}

impl Front {
    pub fn new(
        shard: usize,
        shards: usize,
        limits: &Limits,
        metrics: Arc<Metrics>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Front {
        Front {
            shard,
            metrics,
            max_connections: Limits::per_shard(limits.max_connections, shards),
            first_message_timeout: limits.first_message_timeout,
            idle_timeout: limits.client_idle_timeout,
            tls,
            open: Rc::default(),
            partial_bytes: Rc::default(),
            timeouts_logged: Rc::default(),
        }
    }

    fn metrics(&self) -> &crate::metrics::ShardMetrics {
        &self.metrics.shards[self.shard]
    }

    /// Moves this shard's partial-frame total from `old` to `new` bytes for one reader.
    fn account_partial(&self, old: usize, new: usize) {
        let total = self.partial_bytes.get() - old + new;
        self.partial_bytes.set(total);
        self.metrics().inbound_partial_bytes.set(total as u64);
    }
}

/// A connection's queue to its writer, counting the bytes queued and not yet written: the
/// shard bounds a connection's pending output by what it holds plus what is queued here.
#[derive(Debug)]
struct ConnSender {
    tx: LocalSender<Vec<u8>>,
    queued: Rc<Cell<usize>>,
}

/// Bytes queued to one connection's writer past which the shard keeps further output in the
/// connection's frame writer (where `CONN_PENDING_BYTES_MAX` bounds the total).
const CONN_QUEUED_BYTES_MAX: usize = 8 << 20;

impl crate::msg::ConnOut for ConnSender {
    fn is_full(&self) -> bool {
        self.tx.is_full() || self.queued.get() >= CONN_QUEUED_BYTES_MAX
    }

    fn try_send(&self, bytes: Vec<u8>) -> Result<(), Vec<u8>> {
        let len = bytes.len();
        crate::msg::ConnOut::try_send(&self.tx, bytes)?;
        self.queued.set(self.queued.get() + len);
        Ok(())
    }

    fn queued_bytes(&self) -> usize {
        self.queued.get()
    }
}

/// Counts a connection open for as long as it lives (its reader and writer included).
struct OpenGuard(Rc<Cell<usize>>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

pub async fn accept_loop(listener: TcpListener, inbound: Rc<LocalSender<Inbound>>, front: Front) {
    let acceptor = front.tls.clone().map(futures_rustls::TlsAcceptor::from);
    let mut next_conn = ConnId(1);
    let mut refused_logged: Option<Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if front.open.get() >= front.max_connections {
            // Closed at once: the peer sees the connection end and retries elsewhere or later.
            front.metrics().connections_refused_total.inc();
            if refused_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                refused_logged = Some(Instant::now());
                tracing::warn!(
                    shard = front.shard,
                    open = front.open.get(),
                    "connection refused: the shard holds its share ({}) of --max-connections",
                    front.max_connections
                );
            }
            drop(stream);
            continue;
        }
        front.open.set(front.open.get() + 1);
        let guard = OpenGuard(front.open.clone());
        let conn = next_conn;
        next_conn.0 += 1;
        let inbound = inbound.clone();
        let acceptor = acceptor.clone();
        let front = front.clone();
        glommio::spawn_local(async move {
            let _guard = guard;
            let Ok(peer) = stream.peer_addr() else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let Some(acceptor) = acceptor else {
                return serve_connection(conn, peer, stream, PeerIdentity::Plain, inbound, &front)
                    .await;
            };
            let handshake = futures_lite::future::or(
                async { Some(acceptor.accept(stream).await) },
                async {
                    glommio::timer::sleep(TLS_HANDSHAKE_TIMEOUT).await;
                    None
                },
            );
            match handshake.await {
                Some(Ok(tls)) => {
                    let identity = PeerIdentity::of(tls.get_ref().1.peer_certificates());
                    serve_connection(conn, peer, tls, identity, inbound, &front).await;
                }
                Some(Err(e)) => {
                    tracing::warn!(%peer, "TLS handshake failed, closing: {e}");
                }
                None => {
                    tracing::warn!(%peer, "TLS handshake timed out after {TLS_HANDSHAKE_TIMEOUT:?}, closing");
                }
            }
        })
        .detach();
    }
}

async fn serve_connection<S>(
    conn: ConnId,
    peer: std::net::SocketAddr,
    stream: S,
    identity: PeerIdentity,
    inbound: Rc<LocalSender<Inbound>>,
    front: &Front,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    // The halves share the stream through futures-lite's split, whose lock is only taken for
    // the length of one poll on this one thread: never contended, never held across an await.
    let (mut read_half, mut write_half) = futures_lite::io::split(stream);
    let (out_tx, out_rx) = local_channel::new_bounded::<Vec<u8>>(CONN_OUT_QUEUE_MAX);
    let queued = Rc::new(Cell::new(0usize));
    let out = ConnSender {
        tx: out_tx,
        queued: queued.clone(),
    };
    if inbound
        .send(Inbound::ConnOpened {
            conn,
            peer,
            identity,
            out: Box::new(out),
        })
        .await
        .is_err()
    {
        return;
    }
    // Writer: drains outbound batches, coalescing whatever is queued into one write.
    let writer = glommio::spawn_local(async move {
        while let Some(mut batch) = out_rx.recv().await {
            // Coalesce whatever else is queued into the first batch: one write.
            while batch.len() < WRITE_COALESCE_BYTES_MAX {
                match futures_lite::future::poll_once(out_rx.recv()).await {
                    Some(Some(more)) => batch.extend_from_slice(&more),
                    _ => break,
                }
            }
            let written = write_half.write_all(&batch).await;
            queued.set(queued.get().saturating_sub(batch.len()));
            if written.is_err() {
                break;
            }
        }
        // The shard dropped this connection (or the peer stopped reading): tell the peer.
        let _ = write_half.close().await;
    });
    let reason = match read_frames(conn, &mut read_half, &inbound, front).await {
        Ended::Closed(reason) => reason,
        Ended::TimedOut(reason) => {
            let (last, unlogged) = front.timeouts_logged.get();
            if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                tracing::warn!(
                    %peer,
                    also_closed_since_last_logged = unlogged,
                    "closing connection: {reason}"
                );
                front.timeouts_logged.set((Some(Instant::now()), 0));
            } else {
                front.timeouts_logged.set((last, unlogged + 1));
            }
            reason
        }
        Ended::Protocol(reason) => {
            tracing::error!(%peer, "disconnecting peer: {reason}");
            reason
        }
    };
    writer.cancel().await;
    let _ = inbound.send(Inbound::ConnClosed { conn, reason }).await;
}

/// Why a connection's reader stopped.
enum Ended {
    /// The peer closed, the socket failed, or the scheduler is stopping.
    Closed(String),
    /// The peer broke the protocol (a bad frame or message): logged as an error.
    Protocol(String),
    /// The peer sent no whole message in time.
    TimedOut(String),
}

/// What a reader waits for: the socket, or the deadline for the peer's next whole message.
enum Wait<T> {
    Read(T),
    Deadline,
}

/// Reads until the peer closes, misbehaves or goes silent past its timeout.
async fn read_frames<S: AsyncRead + Unpin>(
    conn: ConnId,
    stream: &mut futures_lite::io::ReadHalf<S>,
    inbound: &LocalSender<Inbound>,
    front: &Front,
) -> Ended {
    let mut decoder = FrameDecoder::new();
    let mut read_bytes = READ_BYTES_MIN;
    // The first whole message must come within the first-message timeout; after that, each
    // within the idle timeout of the one before.
    let mut deadline = Instant::now() + front.first_message_timeout;
    let mut got_message = false;
    let mut partial = 0usize;
    let ended = 'read: loop {
        // A reader holding part of a frame waits while the shard holds too much of them.
        while partial > PARTIAL_BYTES_EXEMPT
            && front.partial_bytes.get() > INBOUND_PARTIAL_BYTES_MAX
            && Instant::now() < deadline
        {
            glommio::timer::sleep(BUDGET_RECHECK).await;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let spare = decoder.spare(read_bytes);
        let read =
            futures_lite::future::or(async { Wait::Read(stream.read(spare).await) }, async {
                glommio::timer::sleep(left).await;
                Wait::Deadline
            })
            .await;
        let n = match read {
            Wait::Read(Ok(0)) => break Ended::Closed("peer closed the connection".into()),
            Wait::Read(Ok(n)) => n,
            Wait::Read(Err(e)) => break Ended::Closed(format!("read error: {e}")),
            Wait::Deadline => {
                let (slot, what, limit) = if got_message {
                    (1, "--client-idle-timeout", front.idle_timeout)
                } else {
                    (
                        0,
                        "--connection-first-message-timeout",
                        front.first_message_timeout,
                    )
                };
                front.metrics().connections_timed_out_total[slot].inc();
                break Ended::TimedOut(format!("no whole message for {limit:?} ({what})"));
            }
        };
        decoder.commit(n);
        // Busy connections read big, idle ones small.
        read_bytes = if n == read_bytes {
            (read_bytes * 2).min(READ_BYTES_MAX)
        } else if n < read_bytes / 4 {
            (read_bytes / 2).max(READ_BYTES_MIN)
        } else {
            read_bytes
        };
        let mut messages = Vec::new();
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => match split_messages(frame) {
                    Ok(parts) => {
                        for part in parts {
                            if let Err(e) = decode_message(&part) {
                                break 'read Ended::Protocol(format!("bad message: {e}"));
                            }
                            messages.push(part);
                        }
                    }
                    Err(e) => break 'read Ended::Protocol(format!("bad frame: {e}")),
                },
                Ok(None) => break,
                Err(e) => break 'read Ended::Protocol(format!("bad frame: {e}")),
            }
        }
        decoder.shrink_if_empty(2 * READ_BYTES_MIN);
        // What this reader holds of a frame not yet complete (an empty buffer counts nothing:
        // idle connections keep at most a small one).
        let now_partial = if decoder.buffered() == 0 {
            0
        } else {
            decoder.capacity()
        };
        front.account_partial(partial, now_partial);
        partial = now_partial;
        if !messages.is_empty() {
            got_message = true;
            deadline = Instant::now() + front.idle_timeout;
            if inbound
                .send(Inbound::ConnMessages { conn, messages })
                .await
                .is_err()
            {
                break Ended::Closed("scheduler shutting down".into());
            }
        }
    };
    front.account_partial(partial, 0);
    ended
}
