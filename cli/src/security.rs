//! The scheduler's security flags (TLS, the auth file, the audit log, `--insecure`) and the
//! client commands' (`--token`, `--tls-ca`), turned into what the shards, the HTTP server and
//! the client use.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use borealis_core::auth::AuthPolicy;
use borealis_net::tls::TlsFiles;
use clap::Args;

use crate::client::{io_reason, ClientOptions};

/// Scheduler flags for TLS, authentication and the audit log.
#[derive(Args, Debug, Clone, Default)]
pub struct SecurityArgs {
    /// PEM certificate the scheduler presents (with --tls-key and --tls-ca: TLS on the
    /// client/agent port and the HTTP port; agents must present a certificate of the CA).
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate of the cluster CA that signs agents' certificates.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// TOML file of principals (token SHA-256 and permissions per role and action); with it
    /// every client request needs a token. `borealis admin token` makes entries.
    #[arg(long, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// Append one JSON line per accepted mutation (who, what, when) to this file.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Allow listening on a non-loopback address without TLS and an auth file (anyone who can
    /// reach the port may then create and kill any job and register agents).
    #[arg(long)]
    pub insecure: bool,
}

/// What [`SecurityArgs`] resolve to.
pub struct Security {
    pub tls: Option<TlsFiles>,
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    pub auth: Option<Arc<AuthPolicy>>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls)
            .field("auth", &self.auth.as_ref().map(|a| a.principals()))
            .finish()
    }
}

/// Reads `--auth-file`. Errors name the file.
pub fn read_auth_file(path: &Path) -> anyhow::Result<AuthPolicy> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read auth file {}: {}",
            path.display(),
            io_reason(&e)
        )
    })?;
    AuthPolicy::parse(&text).map_err(|e| anyhow::anyhow!("auth file {}: {e}", path.display()))
}

impl SecurityArgs {
    /// Loads the certificates and the auth file.
    pub fn resolve(&self) -> anyhow::Result<Security> {
        let tls = TlsFiles::from_flags(
            self.tls_cert.clone(),
            self.tls_key.clone(),
            self.tls_ca.clone(),
        )?;
        let server_tls = tls
            .as_ref()
            .map(borealis_net::tls::server_config)
            .transpose()
            .context("TLS")?;
        let auth = self
            .auth_file
            .as_deref()
            .map(read_auth_file)
            .transpose()?
            .map(Arc::new);
        Ok(Security {
            tls,
            server_tls,
            auth,
        })
    }

    /// Refuses an unprotected non-loopback listener unless `--insecure`. `ip` is `--ip`
    /// (unset: every interface).
    pub fn check_exposure(&self, ip: Option<IpAddr>, security: &Security) -> anyhow::Result<()> {
        let (tls, auth) = (&security.tls, &security.auth);
        let loopback = ip.is_some_and(|ip| ip.is_loopback());
        if !loopback && !self.insecure && (tls.is_none() || auth.is_none()) {
            let missing = match (tls.is_none(), auth.is_none()) {
                (true, true) => "TLS (--tls-cert, --tls-key, --tls-ca) and an --auth-file",
                (true, false) => "TLS (--tls-cert, --tls-key, --tls-ca)",
                _ => "an --auth-file",
            };
            let listen = ip.map_or("every interface".to_string(), |ip| ip.to_string());
            bail!(
                "refusing to listen on {listen} without {missing}: anyone who can reach the \
                 port could create and kill any job and register agents. Give them, listen on \
                 loopback (--ip 127.0.0.1), or pass --insecure"
            );
        }
        Ok(())
    }
}

/// The client commands' connection flags.
#[derive(Args, Debug, Clone, Default)]
pub struct ClientFlags {
    /// Token to authenticate with (schedulers run with --auth-file need one).
    #[arg(long, global = true, env = "BOREALIS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM certificate of the cluster CA: connect with TLS and verify the scheduler with it.
    #[arg(
        long = "tls-ca",
        global = true,
        env = "BOREALIS_TLS_CA",
        value_name = "PEM"
    )]
    pub tls_ca: Option<PathBuf>,
}

impl ClientFlags {
    /// The options every client connection of this command uses.
    pub fn options(&self) -> anyhow::Result<ClientOptions> {
        let token = self
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        let tls = self
            .tls_ca
            .as_deref()
            .map(|ca| borealis_net::tls::client_config(ca, None))
            .transpose()
            .context("--tls-ca")?;
        Ok(ClientOptions { token, tls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_needs_tls_and_auth_or_insecure() {
        let args = SecurityArgs::default();
        let none = args.resolve().unwrap();
        let check = |args: &SecurityArgs, ip: Option<&str>| {
            args.check_exposure(ip.map(|ip| ip.parse().unwrap()), &none)
        };
        let error = check(&args, None).unwrap_err().to_string();
        assert!(
            error.starts_with(
                "refusing to listen on every interface without TLS (--tls-cert, --tls-key, \
                 --tls-ca) and an --auth-file"
            ),
            "{error}"
        );
        let error = check(&args, Some("10.0.0.1")).unwrap_err().to_string();
        assert!(
            error.starts_with("refusing to listen on 10.0.0.1"),
            "{error}"
        );
        // Loopback, or --insecure: fine without either.
        assert!(check(&args, Some("127.0.0.1")).is_ok());
        assert!(check(&args, Some("::1")).is_ok());
        let insecure = SecurityArgs {
            insecure: true,
            ..SecurityArgs::default()
        };
        assert!(check(&insecure, None).is_ok());
        // An auth file alone is not enough off loopback.
        let with_auth = Security {
            tls: None,
            server_tls: None,
            auth: Some(Arc::new(AuthPolicy::default())),
        };
        let error = args
            .check_exposure(Some("10.0.0.1".parse().unwrap()), &with_auth)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("refusing to listen on 10.0.0.1 without TLS (--tls-cert"),
            "{error}"
        );
    }

    #[test]
    fn auth_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.toml");
        std::fs::write(
            &path,
            "[[principal]]\nname = \"x\"\ntoken_sha256 = \"zz\"\n",
        )
        .unwrap();
        let args = SecurityArgs {
            auth_file: Some(path.clone()),
            ..SecurityArgs::default()
        };
        let error = args.resolve().unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("auth file {}: principal \"x\"", path.display())),
            "{error}"
        );
        let missing = dir.path().join("missing.toml");
        let error = SecurityArgs {
            auth_file: Some(missing.clone()),
            ..SecurityArgs::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert_eq!(
            error,
            format!(
                "cannot read auth file {}: No such file or directory",
                missing.display()
            )
        );
    }

    #[test]
    fn tls_flags_come_together() {
        let error = SecurityArgs {
            tls_cert: Some("c.pem".into()),
            ..SecurityArgs::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert_eq!(
            error,
            "TLS needs --tls-cert, --tls-key and --tls-ca together; missing --tls-key, --tls-ca"
        );
    }
}
