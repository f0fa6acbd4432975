//! `borealis admin certs` (the cluster CA and the scheduler's and agents' certificates) and
//! `borealis admin token` (a client token and its auth file entry).
//!
//! The CA is made once per directory and reused after: `ca.pem` and `ca-key.pem` in `--out`.
//! Every certificate it issues names `localhost` and `127.0.0.1` besides the names given, and
//! may serve and authenticate as a client (the scheduler's certificate serves; an agent's
//! authenticates to the scheduler and serves its log server). Keys are written 0600.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use borealis_core::auth::{token_sha256, AuthPolicy, Permission};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The CA's common name, followed by a digest of its public key: two CAs never share a name
/// (a certificate of another CA is then an unknown issuer, not a bad signature), and the name
/// of a CA on disk follows from its key.
const CA_NAME: &str = "Borealis cluster CA";
const CA_DAYS: u64 = 3650;
const DAY: Duration = Duration::from_secs(86_400);

#[derive(Args, Debug, Clone)]
pub struct CertsArgs {
    /// Directory to write the PEM files to (created; an existing CA there is reused).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// A name (DNS name or IP) clients reach the scheduler by; repeatable. Writes
    /// scheduler.pem and scheduler-key.pem (also named localhost and 127.0.0.1).
    #[arg(long = "scheduler-name", value_name = "NAME")]
    pub scheduler_name: Vec<String>,
    /// An agent's host name (its --hostname); repeatable. Writes agent-NAME.pem and
    /// agent-NAME-key.pem.
    #[arg(long = "agent", value_name = "NAME")]
    pub agent: Vec<String>,
    /// Validity of the certificates issued, in days.
    #[arg(long, default_value_t = 365)]
    pub days: u64,
    /// Issue certificates that have already expired (to test that they are refused).
    #[arg(long, hide = true)]
    pub expired: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// The principal's name.
    #[arg(long)]
    pub name: String,
    /// A permission: ROLE:ACTION (either may be *), maintenance, admin or *; repeatable.
    #[arg(long = "permission", value_name = "P")]
    pub permission: Vec<String>,
    /// Append the [[principal]] entry to this auth file (else it goes to stderr).
    #[arg(long, value_name = "FILE")]
    pub append: Option<PathBuf>,
}

/// What [`make_certs`] wrote.
#[derive(Debug, Default)]
pub struct Written {
    pub ca_reused: bool,
    pub files: Vec<PathBuf>,
}

pub fn run_certs(args: &CertsArgs) -> anyhow::Result<()> {
    let written = make_certs(args)?;
    let ca = args.out.join("ca.pem");
    if written.ca_reused {
        println!("reused the CA in {}", ca.display());
    }
    for file in &written.files {
        println!("wrote {}", file.display());
    }
    Ok(())
}

/// Sets `params`' validity: `days` from an hour ago (clocks differ a little), or, `expired`,
/// two days ago until yesterday.
fn set_validity(params: &mut CertificateParams, days: u64, expired: bool) -> anyhow::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    if expired {
        params.not_before = epoch + (now - 2 * DAY);
        params.not_after = epoch + (now - DAY);
    } else {
        params.not_before = epoch + (now - Duration::from_secs(3600));
        params.not_after = epoch + (now + DAY * u32::try_from(days).unwrap_or(u32::MAX));
    }
    Ok(())
}

fn ca_params(key: &KeyPair) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let public: String = key
        .public_key_raw()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let id = &token_sha256(&public)[..12];
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{CA_NAME} {id}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Borealis");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_DAYS, false)?;
    Ok(params)
}

/// Writes `text` to `path`; a key only its owner may read.
fn write_file(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if secret {
        // An existing file keeps its mode on open: set it.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
    }
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A file name part from a host name: anything but `[A-Za-z0-9._-]` becomes `_`.
fn file_part(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The CA of `dir`: loaded when both files are there, else made and written.
fn ca(dir: &Path, written: &mut Written) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let pem = std::fs::read_to_string(&key_path)
                .with_context(|| format!("cannot read {}", key_path.display()))?;
            let key = KeyPair::from_pem(&pem)
                .map_err(|e| anyhow!("{}: not a PEM private key: {e}", key_path.display()))?;
            // The issuer's name and key are what a certificate it signs refers to: the same
            // parameters, signed again with the same key, stand for the CA on disk (checked
            // below against ca.pem itself).
            let cert = ca_params(&key)?.self_signed(&key)?;
            written.ca_reused = true;
            Ok((cert, key))
        }
        (false, false) => {
            let key = KeyPair::generate()?;
            let cert = ca_params(&key)?.self_signed(&key)?;
            write_file(&key_path, &key.serialize_pem(), true)?;
            write_file(&cert_path, &cert.pem(), false)?;
            written.files.push(cert_path);
            written.files.push(key_path);
            Ok((cert, key))
        }
        (true, false) => bail!(
            "{} is there without {}: give the CA's key, or use a new --out directory",
            cert_path.display(),
            key_path.display()
        ),
        (false, true) => bail!(
            "{} is there without {}: give the CA's certificate, or use a new --out directory",
            key_path.display(),
            cert_path.display()
        ),
    }
}

/// Checks that `cert` chains to the CA certificate on disk at a time it is valid.
fn check_chain(ca: &Path, cert: &rcgen::Certificate, expired: bool) -> anyhow::Result<()> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    for c in borealis_net::tls::read_certs(ca)? {
        roots.add(c)?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.into(),
        rustls::crypto::ring::default_provider().into(),
    )
    .build()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let at = if expired { now - DAY - DAY / 2 } else { now };
    verifier
        .verify_server_cert(
            cert.der(),
            &[],
            &ServerName::try_from("localhost")?,
            &[],
            UnixTime::since_unix_epoch(at),
        )
        .map_err(|e| {
            anyhow!(
                "{}: the new certificate does not verify against it ({e}); was this CA made by \
                 borealis admin certs? Use a new --out directory",
                ca.display()
            )
        })?;
    Ok(())
}

/// Issues one certificate for `names` (plus localhost and 127.0.0.1), as `stem.pem` and
/// `stem-key.pem`.
fn issue(
    args: &CertsArgs,
    issuer: &(rcgen::Certificate, KeyPair),
    common_name: &str,
    names: &[String],
    stem: &str,
    written: &mut Written,
) -> anyhow::Result<()> {
    let mut sans: Vec<String> = Vec::new();
    for name in names
        .iter()
        .map(|n| n.trim().to_string())
        .chain(["localhost".to_string(), "127.0.0.1".to_string()])
    {
        if name.is_empty() {
            bail!("an empty name for {stem}");
        }
        if !sans.contains(&name) {
            sans.push(name);
        }
    }
    let mut params = CertificateParams::new(sans.clone())
        .map_err(|e| anyhow!("{stem}: a name of {sans:?} cannot go in a certificate: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, args.days, args.expired)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer.0, &issuer.1)?;
    check_chain(&args.out.join("ca.pem"), &cert, args.expired)?;
    let (cert_path, key_path) = (
        args.out.join(format!("{stem}.pem")),
        args.out.join(format!("{stem}-key.pem")),
    );
    write_file(&key_path, &key.serialize_pem(), true)?;
    write_file(&cert_path, &cert.pem(), false)?;
    written.files.push(cert_path);
    written.files.push(key_path);
    Ok(())
}

/// Makes (or reuses) the CA of `--out` and issues the certificates asked for.
pub fn make_certs(args: &CertsArgs) -> anyhow::Result<Written> {
    if args.days == 0 && !args.expired {
        bail!("--days must be at least 1");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut written = Written::default();
    let issuer = ca(&args.out, &mut written)?;
    if !args.scheduler_name.is_empty() {
        let cn = args.scheduler_name[0].clone();
        issue(
            args,
            &issuer,
            &cn,
            &args.scheduler_name,
            "scheduler",
            &mut written,
        )?;
    }
    for agent in &args.agent {
        let stem = format!("agent-{}", file_part(agent.trim()));
        issue(
            args,
            &issuer,
            agent.trim(),
            std::slice::from_ref(agent),
            &stem,
            &mut written,
        )?;
    }
    if args.scheduler_name.is_empty() && args.agent.is_empty() && written.ca_reused {
        bail!(
            "nothing to do: the CA in {} exists; give --scheduler-name or --agent",
            args.out.display()
        );
    }
    Ok(written)
}

/// 32 random bytes from the kernel, as 64 hex digits.
pub fn random_token() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The auth file entry of a principal with this token.
pub fn principal_entry(name: &str, token: &str, permissions: &[String]) -> anyhow::Result<String> {
    for p in permissions {
        Permission::parse(p).map_err(|e| anyhow!("--permission: {e}"))?;
    }
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let list: Vec<String> = permissions.iter().map(|p| quote(p.trim())).collect();
    let entry = format!(
        "[[principal]]\nname = {}\ntoken_sha256 = \"{}\"\npermissions = [{}]\n",
        quote(name.trim()),
        token_sha256(token),
        list.join(", ")
    );
    // What the scheduler would make of it alone.
    AuthPolicy::parse(&entry).map_err(|e| anyhow!("{e}"))?;
    Ok(entry)
}

pub fn run_token(args: &TokenArgs) -> anyhow::Result<()> {
    let token = random_token()?;
    let entry = principal_entry(&args.name, &token, &args.permission)?;
    match &args.append {
        Some(path) => append_entry(path, &entry)?,
        None => eprint!("{entry}"),
    }
    println!("{token}");
    Ok(())
}

/// Appends `entry` to the auth file, refusing what would make the file invalid (a name
/// already there, say).
pub fn append_entry(path: &Path, entry: &str) -> anyhow::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(anyhow!("cannot read {}: {e}", path.display())),
    };
    let separator = if existing.is_empty() || existing.ends_with("\n\n") {
        ""
    } else if existing.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    let whole = format!("{existing}{separator}{entry}");
    AuthPolicy::parse(&whole).map_err(|e| anyhow!("not appended to {}: {e}", path.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.write_all(format!("{separator}{entry}").as_bytes())
        .with_context(|| format!("cannot append to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use borealis_net::tls::{client_config, server_config, TlsFiles};

    use super::*;

    fn args(out: &Path, agents: &[&str], expired: bool) -> CertsArgs {
        CertsArgs {
            out: out.to_path_buf(),
            scheduler_name: vec!["sched.example".into(), "10.1.2.3".into()],
            agent: agents.iter().map(|a| a.to_string()).collect(),
            days: 30,
            expired,
        }
    }

    fn agent_files(dir: &Path, name: &str, ca: &Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join(format!("agent-{name}.pem")),
            key: dir.join(format!("agent-{name}-key.pem")),
            ca: ca.to_path_buf(),
        }
    }

    /// A TLS handshake in memory between a client presenting `identity` and the server.
    fn handshake(
        server: Arc<rustls::ServerConfig>,
        ca: &Path,
        identity: Option<(&Path, &Path)>,
        name: &str,
    ) -> Result<bool, rustls::Error> {
        let client = client_config(ca, identity).unwrap();
        let mut client = rustls::ClientConnection::new(
            client,
            rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(),
        )
        .unwrap();
        let mut server = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..20 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            let mut slice = buf.as_slice();
            while !slice.is_empty() {
                server.read_tls(&mut slice).unwrap();
            }
            server.process_new_packets()?;
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            let mut slice = buf.as_slice();
            while !slice.is_empty() {
                client.read_tls(&mut slice).unwrap();
            }
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(server.peer_certificates().is_some_and(|c| !c.is_empty()));
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn agents_of_the_ca_are_accepted_others_and_expired_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("main");
        let written = make_certs(&args(&main, &["node-1"], false)).unwrap();
        assert!(!written.ca_reused);
        let ca = main.join("ca.pem");
        let scheduler = TlsFiles {
            cert: main.join("scheduler.pem"),
            key: main.join("scheduler-key.pem"),
            ca: ca.clone(),
        };
        let server = server_config(&scheduler).unwrap();
        let agent = agent_files(&main, "node-1", &ca);
        // Loads as a server (the agent's log server) too.
        server_config(&agent).unwrap();
        // An agent of the CA: the handshake succeeds and the scheduler sees its certificate;
        // the scheduler's certificate names what was asked, localhost and 127.0.0.1.
        for name in ["sched.example", "10.1.2.3", "localhost", "127.0.0.1"] {
            assert_eq!(
                handshake(server.clone(), &ca, Some((&agent.cert, &agent.key)), name),
                Ok(true),
                "{name}"
            );
        }
        // A client without a certificate is let through (it authenticates with a token).
        assert_eq!(handshake(server.clone(), &ca, None, "localhost"), Ok(false));
        assert!(handshake(server.clone(), &ca, None, "other.example").is_err());

        // Another directory: another CA, whose agents the scheduler refuses.
        let other = dir.path().join("other");
        make_certs(&CertsArgs {
            scheduler_name: vec![],
            ..args(&other, &["x"], false)
        })
        .unwrap();
        assert_ne!(
            std::fs::read(other.join("ca.pem")).unwrap(),
            std::fs::read(&ca).unwrap()
        );
        let stranger = agent_files(&other, "x", &ca);
        let error = handshake(
            server.clone(),
            &ca,
            Some((&stranger.cert, &stranger.key)),
            "localhost",
        )
        .unwrap_err();
        assert!(error.to_string().contains("UnknownIssuer"), "{error}");

        // An expired certificate of the right CA (the CA reused): refused.
        let written = make_certs(&CertsArgs {
            scheduler_name: vec![],
            ..args(&main, &["old"], true)
        })
        .unwrap();
        assert!(written.ca_reused);
        let old = agent_files(&main, "old", &ca);
        let error = handshake(
            server.clone(),
            &ca,
            Some((&old.cert, &old.key)),
            "localhost",
        )
        .unwrap_err();
        assert!(error.to_string().contains("certificate expired"), "{error}");
        // The reused CA still signs good certificates, and ca.pem is untouched.
        let before = std::fs::read(&ca).unwrap();
        make_certs(&CertsArgs {
            scheduler_name: vec![],
            ..args(&main, &["node-2"], false)
        })
        .unwrap();
        assert_eq!(std::fs::read(&ca).unwrap(), before);
        let fresh = agent_files(&main, "node-2", &ca);
        assert_eq!(
            handshake(server, &ca, Some((&fresh.cert, &fresh.key)), "localhost"),
            Ok(true)
        );
    }

    #[test]
    fn keys_are_private_and_half_a_ca_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let written = make_certs(&args(dir.path(), &["a/b"], false)).unwrap();
        let names: Vec<String> = written
            .files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca-key.pem",
                "scheduler.pem",
                "scheduler-key.pem",
                "agent-a_b.pem",
                "agent-a_b-key.pem"
            ]
        );
        for file in &written.files {
            let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
            let key = file.to_string_lossy().ends_with("-key.pem");
            assert_eq!(mode == 0o600, key, "{}: {mode:o}", file.display());
        }
        std::fs::remove_file(dir.path().join("ca-key.pem")).unwrap();
        let error = make_certs(&args(dir.path(), &[], false))
            .unwrap_err()
            .to_string();
        assert!(error.contains("ca.pem is there without"), "{error}");
        let error = make_certs(&CertsArgs {
            days: 0,
            ..args(dir.path(), &[], false)
        })
        .unwrap_err()
        .to_string();
        assert_eq!(error, "--days must be at least 1");
    }

    #[test]
    fn tokens_and_their_auth_file_entries() {
        let token = random_token().unwrap();
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(token, random_token().unwrap());
        let entry = principal_entry(
            "ops \"team\"",
            &token,
            &["www:*".into(), "maintenance".into()],
        )
        .unwrap();
        let policy = AuthPolicy::parse(&entry).unwrap();
        let principal = policy
            .authenticate(&token)
            .expect("the token authenticates");
        assert_eq!(principal.name, "ops \"team\"");
        assert!(principal.may_read("www"));
        assert!(!principal.may_read("db"));
        let error = principal_entry("x", &token, &["www:fly".into()])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("--permission: permission \"www:fly\""),
            "{error}"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.toml");
        append_entry(&file, &entry).unwrap();
        let second = random_token().unwrap();
        append_entry(
            &file,
            &principal_entry("ci", &second, &["*".into()]).unwrap(),
        )
        .unwrap();
        let policy = AuthPolicy::parse(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(policy.principals(), 2);
        assert!(policy.authenticate(&second).is_some());
        // A name already there: refused, the file unchanged.
        let before = std::fs::read_to_string(&file).unwrap();
        let third = random_token().unwrap();
        let error = append_entry(&file, &principal_entry("ci", &third, &[]).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("principal \"ci\" is listed twice"),
            "{error}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    }
}
