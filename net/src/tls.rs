//! TLS for every Borealis surface, on rustls (ring provider): the configurations the scheduler,
//! the agent and the CLI build from `--tls-cert`, `--tls-key` and `--tls-ca`.
//!
//! Trust is one cluster CA. The scheduler presents its certificate; it asks every peer for a
//! certificate but lets a peer without one finish the handshake, because clients authenticate
//! with tokens. A certificate a peer presents must chain to the CA and be valid now, or the
//! handshake fails (a wrong CA, an expired certificate). A peer that presented a certificate
//! is an *agent*: it may register and report, never act as a client; a peer without one is a
//! client: it may never register (see the shard's authorization).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use rustls;

/// The three PEM files of `--tls-cert`, `--tls-key`, `--tls-ca`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    /// All three flags or none: anything else is an error naming what is missing.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> anyhow::Result<Option<TlsFiles>> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles { cert, key, ca })),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    ("--tls-cert", cert.is_none()),
                    ("--tls-key", key.is_none()),
                    ("--tls-ca", ca.is_none()),
                ]
                .iter()
                .filter(|(_, m)| *m)
                .map(|(f, _)| *f)
                .collect();
                bail!(
                    "TLS needs --tls-cert, --tls-key and --tls-ca together; missing {}",
                    missing.join(", ")
                )
            }
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut text.as_slice())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate in it", path.display());
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    rustls_pemfile::private_key(&mut text.as_slice())
        .with_context(|| format!("{}: not a PEM key file", path.display()))?
        .ok_or_else(|| anyhow!("{}: no private key in it", path.display()))
}

fn roots(ca: &Path) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots
            .add(cert)
            .with_context(|| format!("{}: not a usable CA certificate", ca.display()))?;
    }
    Ok(Arc::new(roots))
}

/// The scheduler's (or an agent log server's) configuration: its certificate, and client
/// certificates verified against the CA when presented (a peer may present none).
pub fn server_config(files: &TlsFiles) -> anyhow::Result<Arc<ServerConfig>> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| anyhow!("{}: {e}", files.ca.display()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(&files.cert)?, read_key(&files.key)?)
        .map_err(|e| anyhow!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    Ok(Arc::new(config))
}

/// A client's configuration: the CA to verify the server against, and (agents) the
/// certificate to present.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider())
        .build()
        .map_err(|e| anyhow!("{}: {e}", ca.display()))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS: {e}"))?
        .with_webpki_verifier(verifier);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| anyhow!("{} and {}: {e}", cert.display(), key.display()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name a client checks the server's certificate against: the host part of `host:port`
/// (an IP address or a DNS name; `[v6]:port` too).
pub fn server_name(addr: &str) -> anyhow::Result<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| anyhow!("{host:?} is not a name a certificate can be checked against: {e}"))
}

/// What a peer proved about itself in the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum PeerIdentity {
    /// No TLS on this listener.
    #[default]
    Plain,
    /// TLS without a client certificate: a client (it authenticates with a token).
    Anonymous,
    /// TLS with a certificate of the cluster CA: an agent.
    Certified,
}

impl PeerIdentity {
    /// After a server handshake: certified when the peer presented a (verified) certificate.
    pub fn of(peer_certificates: Option<&[CertificateDer<'_>]>) -> PeerIdentity {
        match peer_certificates {
            Some(certs) if !certs.is_empty() => PeerIdentity::Certified,
            _ => PeerIdentity::Anonymous,
        }
    }
}
