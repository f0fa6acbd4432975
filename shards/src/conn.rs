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

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use borealis_net::frame::split_messages;
use borealis_net::tls::PeerIdentity;
use borealis_net::{decode_message, FrameDecoder};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpListener;

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

pub async fn accept_loop(
    listener: TcpListener,
    inbound: Rc<LocalSender<Inbound>>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(futures_rustls::TlsAcceptor::from);
    let mut next_conn = ConnId(1);
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let conn = next_conn;
        next_conn.0 += 1;
        let inbound = inbound.clone();
        let acceptor = acceptor.clone();
        glommio::spawn_local(async move {
            let Ok(peer) = stream.peer_addr() else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let Some(acceptor) = acceptor else {
                return serve_connection(conn, peer, stream, PeerIdentity::Plain, inbound).await;
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
                    serve_connection(conn, peer, tls, identity, inbound).await;
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
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    // The halves share the stream through futures-lite's split, whose lock is only taken for
    // the length of one poll on this one thread: never contended, never held across an await.
    let (mut read_half, mut write_half) = futures_lite::io::split(stream);
    let (out_tx, out_rx) = local_channel::new_bounded::<Vec<u8>>(CONN_OUT_QUEUE_MAX);
    if inbound
        .send(Inbound::ConnOpened {
            conn,
            peer,
            identity,
            out: Box::new(out_tx),
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
            if write_half.write_all(&batch).await.is_err() {
                break;
            }
        }
        // The shard dropped this connection (or the peer stopped reading): tell the peer.
        let _ = write_half.close().await;
    });
    let reason = match read_frames(conn, &mut read_half, &inbound).await {
        Ended::Closed(reason) => reason,
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
}

/// Reads until the peer closes or misbehaves.
async fn read_frames<S: AsyncRead + Unpin>(
    conn: ConnId,
    stream: &mut futures_lite::io::ReadHalf<S>,
    inbound: &LocalSender<Inbound>,
) -> Ended {
    let mut decoder = FrameDecoder::new();
    let mut read_bytes = READ_BYTES_MIN;
    loop {
        let n = match stream.read(decoder.spare(read_bytes)).await {
            Ok(0) => return Ended::Closed("peer closed the connection".into()),
            Ok(n) => n,
            Err(e) => return Ended::Closed(format!("read error: {e}")),
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
                                return Ended::Protocol(format!("bad message: {e}"));
                            }
                            messages.push(part);
                        }
                    }
                    Err(e) => return Ended::Protocol(format!("bad frame: {e}")),
                },
                Ok(None) => break,
                Err(e) => return Ended::Protocol(format!("bad frame: {e}")),
            }
        }
        decoder.shrink_if_empty(2 * READ_BYTES_MIN);
        if !messages.is_empty()
            && inbound
                .send(Inbound::ConnMessages { conn, messages })
                .await
                .is_err()
        {
            return Ended::Closed("scheduler shutting down".into());
        }
    }
}
