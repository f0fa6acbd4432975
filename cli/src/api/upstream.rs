//! The API's way to the scheduler: the binary protocol's blocking [`Client`], on tokio's
//! blocking pool, with the caller's token, so the shards authorize (and audit) every call
//! exactly as they do the command line's.
//!
//! Bounds: at most [`CALLS_MAX`] calls run at once (a caller waits at most [`QUEUE_WAIT`] for
//! a turn, then gets 503 `Overloaded`); at most [`IDLE_MAX`] authenticated connections are
//! kept idle for reuse, keyed by the SHA-256 of their token (the oldest goes first), and a
//! connection that failed is dropped. Reads may reuse an idle connection (and retry once on a
//! fresh one when the reused one turns out dead); mutations always dial a fresh connection,
//! so that a request is never sent twice.
//!
//! With TLS, the upstream connection is to the scheduler's own client port, whose certificate
//! may not name the loopback address the API dials: [`pinned_client_config`] trusts exactly
//! that certificate (its DER bytes), with signatures checked by the ring provider.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use borealis_core::auth::token_sha256;
use borealis_net::tls::{read_certs, TlsFiles};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::sync::Semaphore;

use crate::client::{Client, ClientOptions, Refused};

/// Upstream calls running at once (each holds a blocking thread while it runs).
pub const CALLS_MAX: usize = 32;
/// Idle upstream connections kept for reuse.
pub const IDLE_MAX: usize = 16;
/// How long a call waits for one of the [`CALLS_MAX`] turns before it is refused (503).
pub const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Whether a call may be sent twice (on a reused connection that turned out dead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Mutation,
}

/// Why an upstream call failed.
#[derive(Debug)]
pub enum CallError {
    /// The scheduler answered, or could not be reached or understood (see
    /// [`Refused`] for answers).
    Upstream(anyhow::Error),
    /// Every turn stayed taken for [`QUEUE_WAIT`].
    Busy,
    /// The blocking task panicked or was cancelled: a bug.
    Crashed(String),
}

/// Connections to the scheduler's client port.
pub struct Upstream {
    addr: String,
    tls: Option<Arc<ClientConfig>>,
    /// Idle connections, oldest first, with the hash of their token ("" for none).
    idle: Mutex<VecDeque<(String, Client)>>,
    turns: Arc<Semaphore>,
}

impl Upstream {
    pub fn new(addr: String, tls: Option<Arc<ClientConfig>>) -> Upstream {
        Upstream {
            addr,
            tls,
            idle: Mutex::new(VecDeque::with_capacity(IDLE_MAX)),
            turns: Arc::new(Semaphore::new(CALLS_MAX)),
        }
    }

    /// Runs `f` on a connection authenticated with `token`, on the blocking pool.
    pub async fn call<T, F>(
        self: &Arc<Self>,
        token: Option<String>,
        kind: Kind,
        f: F,
    ) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: Fn(&mut Client) -> anyhow::Result<T> + Send + 'static,
    {
        let turn = tokio::time::timeout(QUEUE_WAIT, self.turns.clone().acquire_owned())
            .await
            .map_err(|_| CallError::Busy)?
            .map_err(|_| CallError::Busy)?;
        let this = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            this.call_blocking(token, kind, f)
        })
        .await;
        match joined {
            Ok(result) => result.map_err(CallError::Upstream),
            Err(e) => Err(CallError::Crashed(e.to_string())),
        }
    }

    fn call_blocking<T>(
        &self,
        token: Option<String>,
        kind: Kind,
        f: impl Fn(&mut Client) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let key = token.as_deref().map(token_sha256).unwrap_or_default();
        if kind == Kind::Read {
            if let Some(mut client) = self.take(&key) {
                match f(&mut client) {
                    Ok(value) => {
                        self.put(key, client);
                        return Ok(value);
                    }
                    Err(e) if keeps_connection(&e) => {
                        self.put(key, client);
                        return Err(e);
                    }
                    // A dead idle connection (the scheduler restarted, say): dial afresh.
                    Err(e) => tracing::debug!("idle upstream connection failed: {e:#}"),
                }
            }
        }
        let options = ClientOptions {
            token,
            tls: self.tls.clone(),
        };
        let mut client = Client::connect_with(&self.addr, options)?;
        let result = f(&mut client);
        match &result {
            Ok(_) => self.put(key, client),
            Err(e) if keeps_connection(e) => self.put(key, client),
            Err(_) => {}
        }
        result
    }

    fn take(&self, key: &str) -> Option<Client> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let at = idle.iter().rposition(|(k, _)| k == key)?;
        idle.remove(at).map(|(_, c)| c)
    }

    fn put(&self, key: String, client: Client) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= IDLE_MAX {
            idle.pop_front();
        }
        idle.push_back((key, client));
    }

    #[cfg(test)]
    fn idle_len(&self) -> usize {
        self.idle.lock().unwrap().len()
    }
}

/// A refusal came on a healthy connection (except a refused token: nothing more to do there).
fn keeps_connection(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Refused>().is_some_and(|r| {
        r.code != borealis_net::views::ErrorCode::Unauthenticated
            && r.code != borealis_net::views::ErrorCode::NotLeader
    })
}

/// A client configuration that trusts exactly the certificate in `files.cert` (the
/// scheduler's own), whatever name it is dialled by.
pub fn pinned_client_config(files: &TlsFiles) -> anyhow::Result<Arc<ClientConfig>> {
    let cert = read_certs(&files.cert)?.swap_remove(0);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinnedCert {
        cert,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts one end-entity certificate, byte for byte; the handshake's signatures are still
/// verified against it.
#[derive(Debug)]
struct PinnedCert {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pin_accepts_exactly_its_certificate() {
        let verifier = PinnedCert {
            cert: CertificateDer::from(vec![1, 2, 3]),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        };
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let check = |der: Vec<u8>| {
            verifier.verify_server_cert(
                &CertificateDer::from(der),
                &[],
                &name,
                &[],
                UnixTime::now(),
            )
        };
        assert!(check(vec![1, 2, 3]).is_ok());
        assert!(check(vec![1, 2, 4]).is_err());
        assert!(check(vec![1, 2]).is_err());
        assert!(!verifier.supported_verify_schemes().is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_unreachable_scheduler_is_an_upstream_error_and_nothing_is_kept() {
        // A port nobody listens on: bind, read it, release.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let upstream = Arc::new(Upstream::new(format!("127.0.0.1:{port}"), None));
        let result = upstream
            .call(None, Kind::Read, |c| c.list_jobs())
            .await
            .map(|_| ());
        match result {
            Err(CallError::Upstream(e)) => {
                assert!(format!("{e:#}").contains("cannot reach scheduler"), "{e:#}")
            }
            other => panic!("expected an upstream error, got {other:?}"),
        }
        assert_eq!(upstream.idle_len(), 0);
    }
}
