//! The connection of a simulated agent or client: plain TCP, or TLS over TCP (`--tls-ca`,
//! agents presenting `--tls-cert`/`--tls-key`), and the `--token` clients authenticate with.
//!
//! Plain connections read exactly as before TLS existed: wait for readiness, then drain the
//! socket with non-blocking `try_read`s into a per-thread buffer. A TLS stream has plaintext
//! buffered inside rustls that socket readiness does not show, so it is read by polling
//! `poll_read` until it would block, within one poll (the data goes straight into the frame
//! decoder, so the read is cancel-safe inside `select!`, like the plain one).

use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use anyhow::Context;
use borealis_net::tls::rustls::pki_types::ServerName;
use borealis_net::FrameDecoder;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::Config;

const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    /// One read buffer per worker thread: a read never awaits while it holds it.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// What every connection of the run is set up with.
#[derive(Default)]
pub struct Security {
    tls: Option<Tls>,
    /// Sent in `Authenticate` first on every client connection.
    pub token: Option<String>,
}

struct Tls {
    /// Agents: the CA and the agent certificate (`None`: agents present none).
    agent: TlsConnector,
    /// Clients: the CA only.
    client: TlsConnector,
    name: ServerName<'static>,
}

impl Security {
    pub fn from_config(config: &Config) -> anyhow::Result<Security> {
        let tls = match &config.tls_ca {
            None => None,
            Some(ca) => {
                let identity = config.tls_cert.as_deref().zip(config.tls_key.as_deref());
                let agent = borealis_net::tls::client_config(ca, identity)
                    .context("agent TLS configuration")?;
                let client = borealis_net::tls::client_config(ca, None)
                    .context("client TLS configuration")?;
                Some(Tls {
                    agent: TlsConnector::from(agent),
                    client: TlsConnector::from(client),
                    name: borealis_net::tls::server_name(&config.scheduler)?,
                })
            }
        };
        Ok(Security {
            tls,
            token: config.token.clone(),
        })
    }

    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Connects to `address` (TCP_NODELAY), then does the TLS handshake when TLS is on, as an
    /// agent (presenting the agent certificate) or a client. Both within `timeout`.
    pub async fn connect(
        &self,
        address: &str,
        agent: bool,
        timeout: Duration,
    ) -> Result<Conn, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(format!("cannot connect to {address}: {e}")),
            Err(_) => return Err(format!("connecting to {address} timed out")),
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Conn::Plain(stream));
        };
        let connector = if agent { &tls.agent } else { &tls.client };
        match tokio::time::timeout_at(deadline, connector.connect(tls.name.clone(), stream)).await {
            Ok(Ok(stream)) => Ok(Conn::Tls(Box::new(stream))),
            Ok(Err(e)) => Err(format!("TLS handshake with {address} failed: {e}")),
            Err(_) => Err(format!("TLS handshake with {address} timed out")),
        }
    }
}

pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// Waits until the connection has data, then moves what it has (up to about `max` bytes)
    /// into `decoder`. Returns the bytes read (0 only for a plain socket woken spuriously).
    /// Err when the connection ended. Cancel-safe.
    pub async fn fill(&mut self, decoder: &mut FrameDecoder, max: usize) -> Result<usize, String> {
        match self {
            Conn::Plain(stream) => {
                stream
                    .readable()
                    .await
                    .map_err(|e| format!("connection lost: {e}"))?;
                read_plain(stream, decoder, max)
            }
            Conn::Tls(stream) => {
                poll_fn(|cx| {
                    READ_BUF.with(|buf| {
                        let mut buf = buf.borrow_mut();
                        let mut total = 0;
                        while total < max {
                            let mut read = ReadBuf::new(&mut buf[..]);
                            match Pin::new(&mut **stream).poll_read(cx, &mut read) {
                                Poll::Pending => break,
                                Poll::Ready(Err(e)) => {
                                    return Poll::Ready(Err(format!("connection lost: {e}")))
                                }
                                Poll::Ready(Ok(())) => {
                                    let n = read.filled().len();
                                    if n == 0 {
                                        if total > 0 {
                                            break;
                                        }
                                        return Poll::Ready(Err(
                                            "the scheduler closed the connection".into(),
                                        ));
                                    }
                                    total += n;
                                    decoder.extend(&buf[..n]);
                                }
                            }
                        }
                        if total == 0 {
                            Poll::Pending
                        } else {
                            Poll::Ready(Ok(total))
                        }
                    })
                })
                .await
            }
        }
    }

    /// Ends a TLS session with close_notify (briefly: the peer may be gone). Nothing for plain.
    pub async fn close(&mut self) {
        if let Conn::Tls(stream) = self {
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        }
    }

    /// Writes all of `bytes` (and, over TLS, flushes the records rustls still holds).
    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(stream) => stream.write_all(bytes).await,
            Conn::Tls(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
        }
    }
}

/// Drains a plain socket without blocking (bounded by `max`) into `decoder`.
fn read_plain(stream: &TcpStream, decoder: &mut FrameDecoder, max: usize) -> Result<usize, String> {
    READ_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let mut total = 0;
        while total < max {
            match stream.try_read(&mut buf) {
                Ok(0) => return Err("the scheduler closed the connection".into()),
                Ok(n) => {
                    total += n;
                    decoder.extend(&buf[..n]);
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("connection lost: {e}")),
            }
        }
        Ok(total)
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use borealis_net::frame::split_messages;
    use borealis_net::tls::TlsFiles;
    use borealis_net::FrameWriter;
    use clap::Parser;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A CA and a certificate for 127.0.0.1 signed by it, in a fresh temp dir.
    fn certs() -> (PathBuf, TlsFiles) {
        let dir = std::env::temp_dir().join(format!(
            "loadgen-conn-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let files = TlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            ca: dir.join("ca.pem"),
        };
        std::fs::write(&files.ca, ca.pem()).unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        (dir, files)
    }

    /// `count` messages of `size` bytes in frames, as one buffer.
    fn frames(count: usize, size: usize) -> Vec<u8> {
        let mut writer = FrameWriter::new();
        for i in 0..count {
            writer.push(&vec![i as u8 | 1; size]).unwrap();
        }
        writer.take()
    }

    fn messages(decoder: &mut FrameDecoder) -> usize {
        let mut n = 0;
        while let Some(frame) = decoder.next_frame().unwrap() {
            n += split_messages(frame).unwrap().len();
        }
        n
    }

    /// Reads `count` messages through `fill` in bounded steps; returns the steps.
    async fn read_all(conn: &mut Conn, count: usize) -> usize {
        let mut decoder = FrameDecoder::new();
        let (mut got, mut steps) = (0, 0);
        while got < count {
            let n = conn.fill(&mut decoder, 256 * 1024).await.unwrap();
            assert!(n <= 256 * 1024 + READ_CHUNK, "read {n} bytes in one step");
            got += messages(&mut decoder);
            steps += 1;
        }
        assert_eq!(got, count);
        steps
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_and_plain_connections_carry_frames_both_ways() {
        let (dir, files) = certs();
        let acceptor =
            tokio_rustls::TlsAcceptor::from(borealis_net::tls::server_config(&files).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (count, size) = (3000, 1000);
        let data = Arc::new(frames(count, size));
        let sent = data.clone();
        let server = tokio::spawn(async move {
            // First a TLS peer, then a plain one: each gets `data`, then echoes 4 bytes.
            for tls in [true, false] {
                let (tcp, _) = listener.accept().await.unwrap();
                if tls {
                    let mut s = acceptor.accept(tcp).await.unwrap();
                    s.write_all(&sent).await.unwrap();
                    s.flush().await.unwrap();
                    let mut b = [0; 4];
                    s.read_exact(&mut b).await.unwrap();
                    s.write_all(&b).await.unwrap();
                    s.shutdown().await.unwrap();
                } else {
                    let mut s = tcp;
                    s.write_all(&sent).await.unwrap();
                    let mut b = [0; 4];
                    s.read_exact(&mut b).await.unwrap();
                    s.write_all(&b).await.unwrap();
                }
            }
        });
        let config = Config::parse_from([
            "borealis-loadgen",
            "--scheduler",
            &address,
            "--tls-ca",
            files.ca.to_str().unwrap(),
        ]);
        let tls = Security::from_config(&config).unwrap();
        assert!(tls.tls());
        let plain = Security::default();
        for security in [&tls, &plain] {
            let mut conn = security
                .connect(&address, false, Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(matches!(conn, Conn::Tls(_)), security.tls());
            let steps = read_all(&mut conn, count).await;
            // 3 MB in steps of at most ~256 KiB: bounded reads really are bounded.
            assert!(
                steps >= data.len() / (256 * 1024 + READ_CHUNK),
                "{steps} steps"
            );
            conn.write_all(b"ping").await.unwrap();
            let mut decoder = FrameDecoder::new();
            let mut echoed = 0;
            while echoed < 4 {
                match conn.fill(&mut decoder, usize::MAX).await {
                    Ok(n) => echoed += n,
                    Err(e) => panic!("echo: {e}"),
                }
            }
            assert_eq!(echoed, 4);
            // Then the peer closes: an error, not a hang.
            let mut end = Ok(0);
            for _ in 0..10 {
                end = conn.fill(&mut decoder, usize::MAX).await;
                if end.is_err() {
                    break;
                }
            }
            assert!(end.is_err(), "no end of connection seen");
        }
        server.await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
