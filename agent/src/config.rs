//! Resolving [`AgentArgs`] into the agent's configuration: defaults detected from the
//! machine, sizes and port ranges parsed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use borealis_core::auth::AuthPolicy;
use borealis_core::{Attributes, Resources};
use borealis_net::tls::TlsFiles;

use crate::{AgentArgs, Isolation, ServeArgs};

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub scheduler: Vec<String>,
    pub agent_id: String,
    pub hostname: String,
    pub resources: Resources,
    pub port_ranges: Vec<(u16, u16)>,
    pub attributes: Attributes,
    /// Absolute; created at startup.
    pub work_dir: PathBuf,
    /// The port the agent's HTTP sandbox server listens on (0: none), sent in registration.
    pub log_port: u16,
    /// With `--tls-*`: the scheduler connection's TLS (the CA, the agent's certificate).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// `--isolation` as given (detected at startup: `agent.rs`).
    pub isolation: Isolation,
    pub pids_limit: u32,
    /// `--executor-user` (root when not given).
    pub executor_user: String,
    /// The executor reservation taken off what the agent offers (`resources` is what is left).
    pub reserved: Resources,
    /// `--gc-delay`, `--gc-disk-headroom`, and how often the collector checks.
    pub gc_delay: Duration,
    pub gc_disk_headroom: f64,
    pub gc_check_interval: Duration,
    pub disk_check_interval: Duration,
}

/// How often the sandbox collector looks for sandboxes to remove (or `--gc-delay`, if shorter).
const GC_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// The log server's configuration (`--http-*`, and the TLS and auth flags).
pub(crate) struct LogServerConfig {
    pub addr: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub auth: Option<Arc<AuthPolicy>>,
}

fn tls_files(serve: &ServeArgs) -> anyhow::Result<Option<TlsFiles>> {
    TlsFiles::from_flags(
        serve.tls_cert.clone(),
        serve.tls_key.clone(),
        serve.tls_ca.clone(),
    )
}

/// The log server's configuration (HTTPS with the agent's certificate under `--tls-*`); None
/// with `--no-http`.
pub(crate) fn resolve_log_server(serve: &ServeArgs) -> anyhow::Result<Option<LogServerConfig>> {
    if serve.no_http {
        if let Some(file) = &serve.auth_file {
            bail!(
                "--auth-file {} protects the log server, which --no-http turns off",
                file.display()
            );
        }
        return Ok(None);
    }
    let tls = match tls_files(serve)? {
        Some(files) => Some(borealis_net::tls::server_config(&files).context("log server TLS")?),
        None => None,
    };
    let auth = match &serve.auth_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read auth file {}", path.display()))?;
            let policy = AuthPolicy::parse(&text)
                .map_err(|e| anyhow::anyhow!("auth file {}: {e}", path.display()))?;
            Some(Arc::new(policy))
        }
        None => None,
    };
    let ip = serve.http_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    Ok(Some(LogServerConfig {
        addr: SocketAddr::new(ip, serve.http_port),
        tls,
        auth,
    }))
}

impl Config {
    pub fn resolve(args: AgentArgs) -> anyhow::Result<Config> {
        // The scheduler connection presents the agent's certificate and checks the
        // scheduler's against the CA.
        let tls = match tls_files(&args.serve)? {
            Some(files) => Some(
                borealis_net::tls::client_config(&files.ca, Some((&files.cert, &files.key)))
                    .context("scheduler connection TLS")?,
            ),
            None => None,
        };
        let scheduler: Vec<String> = args
            .scheduler
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if scheduler.is_empty() {
            bail!("--scheduler: no scheduler address given");
        }
        let hostname = match args.hostname {
            Some(h) if !h.trim().is_empty() => h.trim().to_string(),
            Some(_) => bail!("--hostname: empty"),
            None => {
                system_hostname().context("cannot read this machine's hostname; pass --hostname")?
            }
        };
        let agent_id = match args.agent_id {
            Some(id) if !id.trim().is_empty() => id.trim().to_string(),
            Some(_) => bail!("--agent-id: empty"),
            None => hostname.clone(),
        };
        let work_dir = args.work_dir.unwrap_or_else(|| {
            PathBuf::from(format!(
                "borealis-agent-{}",
                agent_id.replace(['/', '\\'], "_")
            ))
        });
        std::fs::create_dir_all(&work_dir)
            .with_context(|| format!("cannot create work dir {}", work_dir.display()))?;
        let work_dir = work_dir
            .canonicalize()
            .with_context(|| format!("cannot resolve work dir {}", work_dir.display()))?;

        let cpus = match args.cpus {
            Some(c) => c,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
        };
        if !cpus.is_finite() || cpus <= 0.0 {
            bail!("--cpus: {cpus} is not a positive number");
        }
        let total_cpu_millis = (cpus * 1000.0).round().min(f64::from(u32::MAX)) as u32;
        let reserved_cpus = args.thermos_executor_cpu;
        if !reserved_cpus.is_finite() || reserved_cpus < 0.0 {
            bail!("--thermos-executor-cpu: {reserved_cpus} is not a number of cpus");
        }
        let reserved_cpu_millis = (reserved_cpus * 1000.0).round().min(f64::from(u32::MAX)) as u32;
        let reserved_ram_mib = parse_size_mib(&args.thermos_executor_ram)
            .with_context(|| format!("--thermos-executor-ram {:?}", args.thermos_executor_ram))?;
        if reserved_cpu_millis >= total_cpu_millis {
            bail!(
                "--thermos-executor-cpu {reserved_cpus}: the agent would have nothing left of its \
                 {cpus} cpus to offer"
            );
        }
        let cpu_millis = total_cpu_millis - reserved_cpu_millis;
        let ram_mib = match &args.ram {
            Some(text) => parse_size_mib(text).with_context(|| format!("--ram {text:?}"))?,
            None => {
                mem_total_mib().context("cannot read MemTotal from /proc/meminfo; pass --ram")?
            }
        };
        if reserved_ram_mib >= ram_mib {
            bail!(
                "--thermos-executor-ram {}: the agent would have nothing left of its {ram_mib} MiB \
                 of ram to offer",
                args.thermos_executor_ram
            );
        }
        let ram_mib = ram_mib - reserved_ram_mib;
        let disk_mib = match &args.disk {
            Some(text) => parse_size_mib(text).with_context(|| format!("--disk {text:?}"))?,
            None => free_disk_mib(&work_dir)
                .with_context(|| format!("cannot statvfs {}; pass --disk", work_dir.display()))?,
        };
        let headroom = args.gc_disk_headroom;
        if !(0.0..=1.0).contains(&headroom) {
            bail!("--gc-disk-headroom {headroom}: expected a fraction from 0 to 1");
        }
        let port_ranges =
            parse_port_ranges(&args.ports).with_context(|| format!("--ports {:?}", args.ports))?;
        let port_count: u32 = port_ranges
            .iter()
            .map(|(b, e)| u32::from(*e) - u32::from(*b) + 1)
            .sum();

        let mut attributes = Attributes::new();
        for attr in &args.attributes {
            let Some((key, value)) = attr.split_once('=') else {
                bail!("--attribute {attr:?}: expected KEY=VALUE");
            };
            let key = key.trim();
            if key.is_empty() {
                bail!("--attribute {attr:?}: empty key");
            }
            attributes.push((key.to_string(), value.trim().to_string()));
        }
        if !attributes.iter().any(|(k, _)| k == "host") {
            attributes.insert(0, ("host".to_string(), hostname.clone()));
        }

        Ok(Config {
            scheduler,
            agent_id,
            hostname,
            resources: Resources {
                cpu_millis,
                ram_mib,
                disk_mib,
                ports: u16::try_from(port_count).unwrap_or(u16::MAX),
            },
            port_ranges,
            attributes,
            work_dir,
            log_port: 0,
            tls,
            isolation: args.isolation.unwrap_or(Isolation::Cgroups),
            pids_limit: args.pids_limit,
            executor_user: args.executor_user.unwrap_or_else(|| "root".to_string()),
            reserved: Resources {
                cpu_millis: reserved_cpu_millis,
                ram_mib: reserved_ram_mib,
                disk_mib: 0,
                ports: 0,
            },
            gc_delay: args.gc_delay,
            gc_disk_headroom: headroom,
            gc_check_interval: GC_CHECK_INTERVAL.min(args.gc_delay.max(Duration::from_secs(1))),
            disk_check_interval: args.disk_check_interval.max(Duration::from_millis(100)),
        })
    }
}

/// Parses a size into MiB: a number (fractions allowed) and an optional binary unit, case
/// insensitive: B, K/KB/KiB, M/MB/MiB (the default), G/GB/GiB, T/TB/TiB. As in Aurora, "GB"
/// means GiB. Rounded down to whole MiB.
pub fn parse_size_mib(text: &str) -> anyhow::Result<u32> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| anyhow::anyhow!("{text:?} does not start with a number"))?;
    let mib_per_unit = match unit.trim().to_ascii_lowercase().as_str() {
        "b" => 1.0 / (1024.0 * 1024.0),
        "k" | "kb" | "kib" => 1.0 / 1024.0,
        "" | "m" | "mb" | "mib" => 1.0,
        "g" | "gb" | "gib" => 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0,
        other => bail!("unknown size unit {other:?} (expected B, KiB, MiB, GiB or TiB)"),
    };
    let mib = (value * mib_per_unit).floor();
    if !mib.is_finite() || mib > f64::from(u32::MAX) {
        bail!("{text:?} is too large (at most {} MiB)", u32::MAX);
    }
    Ok(mib as u32)
}

/// Parses inclusive port ranges, "A-B" or "A", comma-separated.
pub fn parse_port_ranges(text: &str) -> anyhow::Result<Vec<(u16, u16)>> {
    let mut ranges = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (begin, end) = match part.split_once('-') {
            Some((b, e)) => (b.trim(), e.trim()),
            None => (part, part),
        };
        let begin: u16 = begin
            .parse()
            .with_context(|| format!("port range {part:?}: bad first port"))?;
        let end: u16 = end
            .parse()
            .with_context(|| format!("port range {part:?}: bad last port"))?;
        if begin > end {
            bail!("port range {part:?}: first port is above the last");
        }
        ranges.push((begin, end));
    }
    if ranges.is_empty() {
        bail!("no port range given");
    }
    Ok(ranges)
}

fn system_hostname() -> anyhow::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates when it fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).trim().to_string();
    if name.is_empty() {
        bail!("the hostname is empty");
    }
    Ok(name)
}

fn mem_total_mib() -> anyhow::Result<u32> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    parse_mem_total_mib(&meminfo)
}

fn parse_mem_total_mib(meminfo: &str) -> anyhow::Result<u32> {
    for line in meminfo.lines() {
        if let Some(rest) = line.strip_prefix("MemTotal:") {
            let kib: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("bad MemTotal line {line:?}"))?;
            return Ok(u32::try_from(kib / 1024).unwrap_or(u32::MAX));
        }
    }
    bail!("no MemTotal line")
}

#[allow(clippy::unnecessary_cast)] // statvfs field types differ between platforms
fn free_disk_mib(path: &Path) -> anyhow::Result<u32> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated, st is a valid out-pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let bytes = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    Ok(u32::try_from(bytes >> 20).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mib("4GiB").unwrap(), 4096);
        assert_eq!(parse_size_mib("4 gb").unwrap(), 4096);
        assert_eq!(parse_size_mib("512").unwrap(), 512);
        assert_eq!(parse_size_mib("512MiB").unwrap(), 512);
        assert_eq!(parse_size_mib("1.5G").unwrap(), 1536);
        assert_eq!(parse_size_mib("2048KiB").unwrap(), 2);
        assert_eq!(parse_size_mib("1TiB").unwrap(), 1 << 20);
        assert_eq!(parse_size_mib("1048576B").unwrap(), 1);
        assert!(parse_size_mib("GiB").is_err());
        assert!(parse_size_mib("4 parsecs").is_err());
        assert!(parse_size_mib("-1G").is_err());
        assert!(parse_size_mib("100000TiB").is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            parse_port_ranges("31000-31999").unwrap(),
            vec![(31000, 31999)]
        );
        assert_eq!(
            parse_port_ranges("1000-1001, 2000").unwrap(),
            vec![(1000, 1001), (2000, 2000)]
        );
        assert!(parse_port_ranges("2-1").is_err());
        assert!(parse_port_ranges("").is_err());
        assert!(parse_port_ranges("1-70000").is_err());
        assert!(parse_port_ranges("a-b").is_err());
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       16318412 kB\nMemFree:         1234 kB\n";
        assert_eq!(parse_mem_total_mib(text).unwrap(), 15935);
        assert!(parse_mem_total_mib("MemFree: 1 kB").is_err());
    }

    /// `borealis agent` with its defaults (no scheduler running).
    fn test_args() -> AgentArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            agent: AgentArgs,
        }
        Cli::parse_from(["agent"]).agent
    }

    #[test]
    fn the_executor_reservation_is_taken_off_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::resolve(AgentArgs {
            cpus: Some(2.0),
            ram: Some("1GiB".into()),
            disk: Some("1GiB".into()),
            agent_id: Some("a".into()),
            hostname: Some("h".into()),
            work_dir: Some(dir.path().to_path_buf()),
            ..test_args()
        })
        .unwrap();
        assert_eq!(config.resources.cpu_millis, 1750);
        assert_eq!(config.resources.ram_mib, 1024 - 128);
        assert_eq!(config.reserved.cpu_millis, 250);
        assert_eq!(config.executor_user, "root");
        let err = Config::resolve(AgentArgs {
            cpus: Some(0.25),
            ram: Some("1GiB".into()),
            disk: Some("1GiB".into()),
            agent_id: Some("a".into()),
            hostname: Some("h".into()),
            work_dir: Some(dir.path().to_path_buf()),
            ..test_args()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("nothing left"), "{err:#}");
    }

    #[test]
    fn machine_defaults_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::resolve(AgentArgs {
            scheduler: vec!["127.0.0.1:1".into(), " ".into()],
            cpus: None,
            ram: None,
            disk: None,
            attributes: vec!["rack=r1".into()],
            agent_id: None,
            hostname: None,
            ports: "31000-31999".into(),
            work_dir: Some(dir.path().join("w")),
            ..test_args()
        })
        .unwrap();
        assert_eq!(config.scheduler, vec!["127.0.0.1:1"]);
        assert!(config.resources.cpu_millis >= 1000);
        assert!(config.resources.ram_mib > 0);
        assert_eq!(config.resources.ports, 1000);
        assert_eq!(config.agent_id, config.hostname);
        assert_eq!(
            config.attributes[0],
            ("host".to_string(), config.hostname.clone())
        );
        assert_eq!(config.attributes[1], ("rack".to_string(), "r1".to_string()));
        assert!(config.work_dir.is_absolute() && config.work_dir.is_dir());
    }

    #[test]
    fn bad_arguments_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let base = AgentArgs {
            scheduler: vec!["127.0.0.1:1".into()],
            cpus: Some(1.0),
            ram: Some("1G".into()),
            disk: Some("1G".into()),
            attributes: vec![],
            agent_id: Some("a".into()),
            hostname: Some("h".into()),
            ports: "1-2".into(),
            work_dir: Some(dir.path().to_path_buf()),
            ..test_args()
        };
        assert!(Config::resolve(base.clone()).is_ok());
        let mut a = base.clone();
        a.attributes = vec!["novalue".into()];
        assert!(Config::resolve(a).is_err());
        let mut a = base.clone();
        a.cpus = Some(-1.0);
        assert!(Config::resolve(a).is_err());
        let mut a = base.clone();
        a.scheduler = vec![];
        assert!(Config::resolve(a).is_err());
        let mut a = base;
        a.attributes = vec!["host=other".into()];
        let c = Config::resolve(a).unwrap();
        assert_eq!(
            c.attributes,
            vec![("host".to_string(), "other".to_string())]
        );
    }
}
