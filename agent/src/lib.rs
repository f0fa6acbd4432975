//! The Borealis agent: the Mesos agent and Thermos executor of the Aurora lineage in one
//! process.
//!
//! It connects to the scheduler, registers its resources and attributes, runs the tasks the
//! scheduler launches as real processes (`sh -c <command>`, each in a cgroup with its limits
//! and a sandbox directory, as its role's user), checks their health (HTTP or shell; RUNNING only once healthy, killed
//! when unhealthy), kills them on request (with an HTTP lifecycle: POST the graceful, then the
//! shutdown endpoint; then SIGTERM, `finalization_wait_secs`, SIGKILL) and reports their
//! states (STARTING, RUNNING, then FINISHED, FAILED, KILLED or LOST).
//!
//! Design:
//! - One task (future) owns all agent state; no locks. Every blocking step of a task's life
//!   runs on the agent's own threads (`launcher.rs`): launchers create the sandbox
//!   (`sandbox.rs`), the cgroup (`cgroup.rs`) and the process (`spawn.rs`: one `clone(CLONE_VM
//!   | CLONE_VFORK)` per task), a janitor cleans up after it; user lookups are `users.rs`.
//! - No task outlives the agent: a per-agent reaper kills every task cgroup when the agent
//!   dies, whatever kills it (`reaper.rs`); `--isolation none` has a guard per task instead.
//! - Each child has a small watcher task (`watch.rs`) that waits on its pidfd, runs its health
//!   checks (`health.rs`, one in flight per task), carries out the kill sequence (`kill.rs`)
//!   and reports "healthy" and the exit (with what the task used) on one bounded channel; the
//!   event loop never waits on a task. HTTP to a task (`http.rs`) goes only to 127.0.0.1 and
//!   the task's own ports. Sandboxes are measured against their disk limits (`disk.rs`) and
//!   removed after `--gc-delay` (`sandbox_gc.rs`).
//! - Status updates are queued and flushed as one frame batch per event-loop turn.
//! - The connection is re-established forever with capped exponential backoff; on every
//!   (re)connect the agent re-registers with the statuses of every running task and of every
//!   ended task whose end the scheduler has not acknowledged (`StatusAck`, sent once the
//!   scheduler recorded it durably; see `agent.rs` for the rules and bounds).
//! - With `--tls-cert`, `--tls-key` and `--tls-ca` the scheduler connection is TLS: the agent
//!   checks the scheduler's certificate against the CA (and the host of the scheduler
//!   address) and presents its own, which a scheduler with TLS requires of an agent. A failed
//!   handshake is logged with its reason and retried with the usual backoff.
//! - The log server (`logs.rs`; `--http-ip`, `--http-port`, off with `--no-http`) serves the
//!   known tasks' `stdout` and `stderr` by byte range on a thread of its own; its port goes in
//!   the registration, so the scheduler can tell `borealis task logs` where to ask. HTTPS with
//!   the agent's certificate under `--tls-*`; with `--auth-file`, bearer tokens of principals
//!   that may read the task's role.

mod agent;
mod cgroup;
mod config;
mod disk;
mod health;
mod http;
mod kill;
mod launcher;
mod logs;
mod process;
mod reaper;
mod sandbox;
mod sandbox_gc;
mod spawn;
#[cfg(test)]
mod testcerts;
mod users;
mod watch;

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub use config::{parse_port_ranges, parse_size_mib};
pub use logs::{parse_task_id, HEADER_OFFSET, HEADER_SIZE, LENGTH_DEFAULT, LENGTH_MAX};
pub use users::current_user_name;

/// Command-line arguments of `borealis agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Scheduler address(es), HOST:PORT, comma-separated; tried in turn.
    #[arg(long, default_value = "127.0.0.1:6070", value_delimiter = ',')]
    pub scheduler: Vec<String>,
    /// CPUs offered to the scheduler (fractions allowed) [default: this machine's cores].
    #[arg(long)]
    pub cpus: Option<f64>,
    /// RAM offered, e.g. "4GiB", "512MiB" (a bare number is MiB) [default: MemTotal].
    #[arg(long)]
    pub ram: Option<String>,
    /// Disk offered, e.g. "100GiB" [default: free space of the work dir's filesystem].
    #[arg(long)]
    pub disk: Option<String>,
    /// Agent attribute for constraints (repeatable); host=<hostname> is added unless given.
    #[arg(long = "attribute", value_name = "KEY=VALUE")]
    pub attributes: Vec<String>,
    /// Stable identity of this agent [default: the hostname].
    #[arg(long)]
    pub agent_id: Option<String>,
    /// Hostname reported to the scheduler [default: this machine's hostname].
    #[arg(long)]
    pub hostname: Option<String>,
    /// Port range(s) the scheduler may assign to tasks, inclusive: "31000-31999[,A-B...]".
    #[arg(long, default_value = "31000-31999")]
    pub ports: String,
    /// Directory holding the task sandboxes [default: ./borealis-agent-<agent_id>].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// How tasks are isolated. cgroups: each task in a cgroup of its own, with its cpu as
    /// shares and a hard quota, its ram as a hard memory limit and --pids-limit, killed as a
    /// whole (the agent needs root or a delegated cgroup; it refuses to start without the
    /// controllers). none: no limits, one guard process per task, and processes that leave
    /// the task's process group (setsid) escape its kill. auto: cgroups where available, else
    /// none with a warning [default: cgroups; `borealis up`: auto].
    #[arg(long, value_enum)]
    pub isolation: Option<Isolation>,
    /// Most processes and threads one task may have at once (its cgroup's pids.max).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub pids_limit: u32,
    /// The user tasks run as (Aurora's -executor_user). root: when the agent runs as root, each
    /// task runs as the user its job's role names (a role with no such user fails its task);
    /// any other user: every task runs as that user. An agent not running as root runs every
    /// task as its own user [default: root].
    #[arg(long, value_name = "USER")]
    pub executor_user: Option<String>,
    /// CPUs the agent reserves for itself out of what it offers (Aurora's
    /// -thermos_executor_cpu). Borealis has one executor per agent, not one per task, so this
    /// is charged once per agent, not per task.
    #[arg(long, default_value_t = 0.25)]
    pub thermos_executor_cpu: f64,
    /// RAM the agent reserves for itself out of what it offers (Aurora's
    /// -thermos_executor_ram), charged once per agent, like --thermos-executor-cpu.
    #[arg(long, default_value = "128MB")]
    pub thermos_executor_ram: String,
    /// How long an ended task's sandbox is kept (Mesos' --gc_delay), shortened under disk
    /// pressure for all but the newest sandbox of each instance.
    #[arg(long, default_value = "1week", value_parser = humantime::parse_duration)]
    pub gc_delay: Duration,
    /// Fraction of the sandboxes' disk to keep free: sandboxes are kept for gc-delay × (1 −
    /// headroom − the fraction in use) (Mesos' --gc_disk_headroom).
    #[arg(long, default_value_t = 0.1)]
    pub gc_disk_headroom: f64,
    /// How often each running task's sandbox is measured against its disk limit; a task over
    /// it fails (Mesos' --container_disk_watcher_interval).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub disk_check_interval: Duration,
    /// TLS and the log server. Flags of `borealis agent` ([`AgentCommand`]); not parsed with
    /// the flags above, because `borealis up` flattens these next to its scheduler's
    /// `--tls-*`, `--auth-file` and `--http-port` (it sets them itself).
    #[arg(skip)]
    pub serve: ServeArgs,
}

/// `--isolation`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    Cgroups,
    None,
    Auto,
}

/// `borealis agent`'s TLS and log server flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// PEM certificate the agent presents to the scheduler and serves HTTPS logs with (with
    /// --tls-key and --tls-ca; all three or none). The scheduler's CA must have signed it.
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate of the cluster CA: the scheduler's certificate must chain to it.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// TOML file of principals (the scheduler's --auth-file): the log server then answers only
    /// requests with a bearer token of a principal that may read the task's role.
    #[arg(long, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// Port of the log server (GET /tasks/{task_id}/files/{stdout|stderr}); 0: an ephemeral
    /// port. Sent to the scheduler in the registration.
    #[arg(long, default_value_t = 0)]
    pub http_port: u16,
    /// Address the log server listens on [default: 0.0.0.0].
    #[arg(long, value_name = "IP")]
    pub http_ip: Option<IpAddr>,
    /// No log server (`borealis task logs` then cannot read this agent's tasks).
    #[arg(long, conflicts_with_all = ["http_port", "http_ip"])]
    pub no_http: bool,
}

/// `borealis agent`'s whole command line: [`AgentArgs`] and [`ServeArgs`].
#[derive(clap::Args, Debug, Clone)]
pub struct AgentCommand {
    #[command(flatten)]
    pub agent: AgentArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl AgentCommand {
    /// The [`AgentArgs`] to [`run`], with the serve flags in them.
    pub fn into_args(self) -> AgentArgs {
        AgentArgs {
            serve: self.serve,
            ..self.agent
        }
    }
}

/// A log server for the given sandboxes alone, without an agent: what the agent runs, for
/// tests of clients (`borealis task logs`). Stops when dropped.
#[doc(hidden)]
pub struct StandaloneLogServer {
    server: logs::LogServer,
}

impl StandaloneLogServer {
    /// Serves `tasks` (id, job key, sandbox directory) on `addr` (port 0: ephemeral).
    pub fn start(
        addr: std::net::SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        auth: Option<Arc<borealis_core::auth::AuthPolicy>>,
        tasks: &[(borealis_core::TaskId, &str, PathBuf)],
    ) -> anyhow::Result<StandaloneLogServer> {
        let sandboxes = Arc::new(logs::Sandboxes::default());
        for (task_id, job_key, dir) in tasks {
            sandboxes.insert(*task_id, job_key, dir.clone());
        }
        let server = logs::LogServer::start(addr, tls, logs::ServerState { sandboxes, auth })?;
        Ok(StandaloneLogServer { server })
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }
}

/// Runs the agent on its own single-threaded tokio runtime until SIGINT or SIGTERM.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the agent's tokio runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal()?;
        run_until(args, shutdown).await
    })
}

/// Runs the agent until `shutdown` completes, then kills its tasks and returns.
///
/// Task processes are spawned from the agent's own launcher threads, which live until this
/// future returns (the tasks' parent-death signal is tied to them).
pub async fn run_until(args: AgentArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let log_server = config::resolve_log_server(&args.serve)?;
    let mut config = config::Config::resolve(args)?;
    let sandboxes = Arc::new(logs::Sandboxes::default());
    // Listening before the first registration, which carries the port.
    let log_server = match log_server {
        Some(setup) => {
            let auth = setup.auth.is_some();
            let https = setup.tls.is_some();
            let server = logs::LogServer::start(
                setup.addr,
                setup.tls,
                logs::ServerState {
                    sandboxes: sandboxes.clone(),
                    auth: setup.auth,
                },
            )?;
            tracing::info!(addr = %server.addr, https, auth, "log server listening");
            if !auth && !server.addr.ip().is_loopback() {
                tracing::warn!(addr = %server.addr,
                    "the log server answers anyone who can reach it with any task's output; \
                     give --auth-file, listen on loopback (--http-ip 127.0.0.1) or --no-http");
            }
            config.log_port = server.addr.port();
            Some(server)
        }
        None => None,
    };
    tracing::info!(
        agent_id = %config.agent_id,
        hostname = %config.hostname,
        work_dir = %config.work_dir.display(),
        cpu_millis = config.resources.cpu_millis,
        ram_mib = config.resources.ram_mib,
        disk_mib = config.resources.disk_mib,
        ports = config.resources.ports,
        schedulers = ?config.scheduler,
        tls = config.tls.is_some(),
        log_port = config.log_port,
        "agent starting"
    );
    let result = agent::Agent::new(config, sandboxes)
        .await?
        .run(shutdown)
        .await;
    drop(log_server);
    result
}

fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn run_until_future_is_send() {
        let args = AgentArgs {
            scheduler: vec!["127.0.0.1:1".into()],
            cpus: Some(1.0),
            ram: Some("1GiB".into()),
            disk: Some("1GiB".into()),
            attributes: vec![],
            agent_id: None,
            hostname: None,
            ports: "31000-31001".into(),
            work_dir: None,
            isolation: Some(Isolation::None),
            pids_limit: 64,
            executor_user: None,
            thermos_executor_cpu: 0.0,
            thermos_executor_ram: "0".into(),
            gc_delay: Duration::from_secs(60),
            gc_disk_headroom: 0.1,
            disk_check_interval: Duration::from_secs(15),
            serve: ServeArgs {
                no_http: true,
                ..ServeArgs::default()
            },
        };
        let future = run_until(args, std::future::ready(()));
        assert_send(&future);
        assert!(
            std::mem::size_of_val(&future) < 16 * 1024,
            "{}",
            std::mem::size_of_val(&future)
        );
    }

    #[test]
    fn clap_parses_the_documented_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            agent: AgentArgs,
        }
        let cli = Cli::parse_from([
            "agent",
            "--scheduler",
            "a:1,b:2",
            "--cpus",
            "2.5",
            "--ram",
            "4GiB",
            "--attribute",
            "rack=r1",
            "--attribute",
            "zone=z",
            "--ports",
            "1000-1009",
        ]);
        assert_eq!(cli.agent.scheduler, vec!["a:1", "b:2"]);
        assert_eq!(cli.agent.cpus, Some(2.5));
        assert_eq!(cli.agent.attributes, vec!["rack=r1", "zone=z"]);
        let defaults = Cli::parse_from(["agent"]);
        assert_eq!(defaults.agent.scheduler, vec!["127.0.0.1:6070"]);
        assert_eq!(defaults.agent.ports, "31000-31999");
    }
}
