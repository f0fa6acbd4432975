//! `borealis up`: a scheduler on its embedded default and one local agent in one process,
//! plus the scheduler's small HTTP endpoint.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use crate::client::Client;
use crate::SchedulerArgs;

/// `borealis up`'s HTTP port (the web UI), unless `--http-port` says otherwise: fixed, so the
/// banner's address is the same every time (Aurora's UI port).
#[cfg_attr(not(test), allow(dead_code))] // clap takes the text; tests check the number
pub const UP_HTTP_PORT: u16 = 8081;
/// [`UP_HTTP_PORT`] as clap's default value.
pub const UP_HTTP_PORT_TEXT: &str = "8081";

#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub scheduler: SchedulerArgs,
    #[command(flatten)]
    pub agent: borealis_agent::AgentArgs,
    /// Create this job file once the agent has registered, wait for it and print its status.
    #[arg(long, value_name = "FILE")]
    pub submit: Option<PathBuf>,
    /// The job key for --submit [default: <your user>/devel/hello: tasks run as the user their
    /// role names, so the sample job runs as you].
    #[arg(long)]
    pub job_key: Option<String>,
}

pub fn run(mut args: UpArgs) -> anyhow::Result<()> {
    // `up` is a local setup: listen on loopback unless told otherwise.
    args.scheduler
        .ip
        .get_or_insert(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let (scheduler, http) = args.scheduler.start()?;
    let addr = scheduler.addr;
    let dial = SocketAddr::new(
        if addr.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            addr.ip()
        },
        addr.port(),
    );
    args.agent.scheduler = vec![dial.to_string()];
    // A local trial: isolate tasks where this machine can, else run them plainly (said).
    args.agent
        .isolation
        .get_or_insert(borealis_agent::Isolation::Auto);
    let job_key = args
        .job_key
        .clone()
        .unwrap_or_else(|| format!("{}/devel/hello", current_user()));
    if args.agent.work_dir.is_none() {
        args.agent.work_dir = Some(args.scheduler.data_dir.join("agent"));
    }
    // The local agent's log server: where the scheduler listens, with its certificate (the
    // CA signed it, so it serves as the agent's client certificate too) and its auth file.
    let security = &args.scheduler.security;
    let serve = &mut args.agent.serve;
    serve.http_ip = Some(if addr.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        addr.ip()
    });
    serve.tls_cert = security.tls_cert.clone();
    serve.tls_key = security.tls_key.clone();
    serve.tls_ca = security.tls_ca.clone();
    serve.auth_file = security.auth_file.clone();
    let scheme = if args.scheduler.security.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    println!("Borealis is up.");
    println!(
        "  scheduler: {dial} (cluster {}, embedded storage)",
        args.scheduler.cluster_name
    );
    println!("  web UI:    {scheme}://{http}/");
    println!("  http:      {scheme}://{http}/api/v1  /metrics  /leaderhealth");
    println!(
        "  security:  {}",
        security_note(&args.scheduler.security, addr.ip())
    );
    println!(
        "  agent:     work dir {}",
        args.agent.work_dir.as_ref().expect("set").display()
    );
    let isolation = match args.agent.isolation {
        Some(borealis_agent::Isolation::Cgroups) => {
            "each in a cgroup of its own (--isolation cgroups)"
        }
        Some(borealis_agent::Isolation::None) => "without limits (--isolation none)",
        _ => "each in a cgroup of its own where this machine has them (--isolation auto)",
    };
    let users = match &args.agent.executor_user {
        Some(user) if user != "root" => format!("as user {user} (--executor-user)"),
        _ => "as the user their role names".to_string(),
    };
    println!("  tasks:     {isolation}, {users}");
    println!("Submit the sample job from another terminal:");
    println!("  borealis job create {job_key} examples/hello.toml --scheduler {dial}");
    println!("  borealis job status {job_key} --scheduler {dial}");
    if let Some(file) = args.submit.clone() {
        let scheduler_addr = dial.to_string();
        std::thread::Builder::new()
            .name("up-submit".into())
            .spawn(move || {
                if let Err(e) = submit_and_wait(&scheduler_addr, &job_key, &file) {
                    eprintln!("error: sample job: {e:#}");
                }
            })?;
    }
    let agent = args.agent.clone();
    let result = std::thread::Builder::new()
        .name("agent".into())
        .spawn(move || borealis_agent::run(agent))?
        .join()
        .map_err(|_| anyhow::anyhow!("the agent thread panicked"))?;
    // The agent returns when SIGINT or SIGTERM arrives (it installed the handlers): the whole
    // process stops then; the shards end with it.
    result?;
    drop(scheduler);
    println!("Borealis stopped.");
    Ok(())
}

/// The name of the user running `up`, or `demo` when that is no valid role.
fn current_user() -> String {
    let name = borealis_agent::current_user_name();
    if borealis_core::JobKey::new(&name, "devel", "hello").is_ok() {
        name
    } else {
        "demo".to_string()
    }
}

/// What protects the scheduler, in a line of the banner.
fn security_note(security: &crate::security::SecurityArgs, ip: IpAddr) -> String {
    let tls = if security.tls_cert.is_some() {
        "TLS"
    } else {
        "no TLS"
    };
    let auth = if security.auth_file.is_some() {
        "tokens required (--auth-file)"
    } else {
        "no authentication: anyone who can reach it may do anything"
    };
    let reach = if ip.is_loopback() {
        " (listening on loopback only)"
    } else {
        ""
    };
    format!("{tls}, {auth}{reach}")
}

/// Creates the job, waits (bounded) until every instance has ended, prints the status.
fn submit_and_wait(scheduler: &str, job_key: &str, file: &std::path::Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    // The agent registers within moments; retry the creation until something can run it.
    std::thread::sleep(Duration::from_millis(300));
    crate::client::run_job_command(
        scheduler,
        crate::client::JobCommand::Create {
            job_key: job_key.to_string(),
            file: file.to_path_buf(),
        },
    )?;
    loop {
        let mut client = Client::connect(scheduler)?;
        let status = client.job_status(&job_key.parse()?)?;
        let ended = status
            .tasks
            .iter()
            .filter(|t| t.state.is_some_and(|s| s.is_terminal()))
            .count();
        let instances = status.job.instances as usize;
        let live = status
            .tasks
            .iter()
            .any(|t| t.state.is_some_and(|s| !s.is_terminal()));
        if ended >= instances && !live {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "job {job_key} did not finish within 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    crate::client::run_job_command(
        scheduler,
        crate::client::JobCommand::Status {
            job_key: job_key.to_string(),
            json: false,
        },
    )?;
    println!("The sample job finished. Borealis keeps running; press Ctrl-C to stop.");
    Ok(())
}
