//! The job client: a blocking [`Client`] for the scheduler's client protocol, and the
//! `borealis job create|status|kill|list` and `borealis quota set|get` commands built on it.
//!
//! Protocol: one TCP connection; each request is one frame holding one message with a fresh
//! `request_id`; the client reads frames until the message with that `request_id` arrives
//! (`Ack`, `JobStatus`, `JobList`, `QuotaInfo` or `Error`) and skips anything else. One request is in
//! flight at a time, which is all a command line needs.
//!
//! Errors are one-line `anyhow` errors that say what failed and where. A response of `Error`
//! is a [`Refused`], which callers (tests, `borealis up`) can downcast to read its code.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use borealis_core::jobfile::{parse_job_file, JobSpec};
use borealis_core::{JobKey, Resources, TaskId, TaskState};
use borealis_net::codec::to_owned;
use borealis_net::codec::LIST_PAGE_MAX;
use borealis_net::frame::split_messages;
use borealis_net::views::{
    AgentInfoView, ErrorCode, JobStatusParts, JobStatusView, JobSummaryView, OwnedMessage,
    QuotaView,
};
use borealis_net::{decode_message, Encoder, FrameDecoder, FrameWriter};
use serde::ser::{Serialize, Serializer};

/// Where the scheduler listens for clients unless told otherwise.
pub const DEFAULT_SCHEDULER: &str = "127.0.0.1:6070";
/// How long to wait for the TCP handshake: a scheduler that is up answers in microseconds, so
/// a few seconds means it is down or unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one read or write may block. Requests are answered from memory; a scheduler that
/// is silent this long is stuck, and a command line must not hang forever.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Most instances one `kill --instances` may name: the list travels in one message, and a
/// range this long is more likely a typo than an intent (kill the whole job instead).
pub const INSTANCES_PER_KILL_MAX: usize = 100_000;
/// Most messages for other requests skipped while waiting for a response. The scheduler sends
/// none today; the bound keeps a confused peer from holding the client forever.
const UNRELATED_MESSAGES_MAX: usize = 10_000;
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// The job commands of the `borealis` command line.
#[derive(clap::Subcommand, Debug)]
pub enum JobCommand {
    /// Create a job from a TOML job file (not a cron job: see `borealis cron schedule`).
    Create {
        /// The job's key: role/environment/name.
        job_key: String,
        /// The job file (see examples/hello.toml).
        file: PathBuf,
    },
    /// Show a job's tasks: instance, task id, state, host, exit code, sandbox.
    Status {
        /// The job's key: role/environment/name.
        job_key: String,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Kill a job's tasks: all of them, or the instances named.
    Kill {
        /// The job's key: role/environment/name.
        job_key: String,
        /// Instances to kill, as numbers and inclusive ranges: "0-3,7".
        #[arg(long)]
        instances: Option<String>,
    },
    /// Restart a job's instances in batches (Aurora's `job restart`): each batch's tasks are
    /// replaced, and the next batch starts once the new ones have been RUNNING for
    /// --watch-secs. Interrupting the command stops the restart.
    Restart {
        /// The job's key: role/environment/name.
        job_key: String,
        /// Instances to restart, as numbers and inclusive ranges: "0-3,7" (default: all).
        #[arg(long)]
        instances: Option<String>,
        /// Instances restarted at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        batch_size: u32,
        /// How long a batch's new tasks must stay RUNNING before the next batch.
        #[arg(long, default_value_t = 30)]
        watch_secs: u64,
        /// Give up when a batch is not healthy within this long.
        #[arg(long, default_value = "10min", value_parser = crate::parse_duration)]
        max_wait: Duration,
    },
    /// List the scheduler's jobs with their task counts by state, cron schedules and active
    /// updates.
    List {
        /// Print a JSON array instead of one line per job.
        #[arg(long)]
        json: bool,
    },
}

/// The quota commands of the `borealis` command line (Aurora's `aurora quota get` and the
/// admin `set_quota`).
#[derive(clap::Subcommand, Debug)]
pub enum QuotaCommand {
    /// Set a role's quota: the resources its production jobs may hold in all.
    Set {
        /// The role.
        role: String,
        /// CPU in cores (fractions allowed: 1.5).
        #[arg(long)]
        cpu: String,
        /// RAM, an integer and a unit: 512MiB, 8GiB.
        #[arg(long)]
        ram: String,
        /// Disk, an integer and a unit: 512MiB, 10GiB.
        #[arg(long)]
        disk: String,
    },
    /// Show a role's quota and what its production tasks use of it.
    Get {
        /// The role.
        role: String,
        /// Print one JSON object instead of a line.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one quota command against the scheduler at `scheduler` (`host:port`), printing its
/// result to stdout. A bad role or size is reported before anything is sent.
pub fn run_quota_command(scheduler: &str, cmd: QuotaCommand) -> anyhow::Result<()> {
    let output = match cmd {
        QuotaCommand::Set {
            role,
            cpu,
            ram,
            disk,
        } => {
            check_role(&role)?;
            let quota = Resources {
                cpu_millis: parse_quota_cpu(&cpu)?,
                ram_mib: parse_quota_size("--ram", &ram)?,
                disk_mib: parse_quota_size("--disk", &disk)?,
                ports: 0,
            };
            Client::connect(scheduler)?.set_quota(&role, &quota)?;
            format!(
                "set the quota of role {role}: cpu {} cores, ram {} MiB, disk {} MiB\n",
                cores_text(quota.cpu_millis),
                quota.ram_mib,
                quota.disk_mib
            )
        }
        QuotaCommand::Get { role, json } => {
            check_role(&role)?;
            let info = Client::connect(scheduler)?.get_quota(&role)?;
            if json {
                quota_json(&info) + "\n"
            } else {
                quota_text(&info)
            }
        }
    };
    write_stdout(&output)
}

/// Runs one job command against the scheduler at `scheduler` (`host:port`), printing its
/// result to stdout. Local mistakes (a bad job key, job file or instance list) are reported
/// before anything is sent.
pub fn run_job_command(scheduler: &str, cmd: JobCommand) -> anyhow::Result<()> {
    let output = match cmd {
        JobCommand::Create { job_key, file } => {
            let JobFile {
                spec,
                tier_explicit,
            } = read_job_file(parse_job_key(&job_key)?, &file)?;
            if spec.cron.is_some() {
                bail!(
                    "{}'s file has a cron_schedule: schedule it with `borealis cron schedule`",
                    spec.config.job
                );
            }
            Client::connect(scheduler)?.create_job(&spec, tier_explicit)?;
            format!(
                "created job {} with {}\n",
                spec.config.job,
                count_noun(spec.instances as usize, "instance")
            )
        }
        JobCommand::Status { job_key, json } => {
            let job = parse_job_key(&job_key)?;
            let status = Client::connect(scheduler)?.job_status(&job)?;
            if json {
                status_json(&status) + "\n"
            } else {
                status_text(&status)
            }
        }
        JobCommand::Kill { job_key, instances } => {
            let job = parse_job_key(&job_key)?;
            let instances = match instances {
                Some(text) => parse_instance_ranges(&text)?,
                None => Vec::new(),
            };
            Client::connect(scheduler)?.kill_job(&job, &instances)?;
            if instances.is_empty() {
                format!("killing all instances of {job}\n")
            } else {
                format!(
                    "killing {} of {job}\n",
                    count_noun(instances.len(), "instance")
                )
            }
        }
        JobCommand::Restart {
            job_key,
            instances,
            batch_size,
            watch_secs,
            max_wait,
        } => {
            let job = parse_job_key(&job_key)?;
            let instances = match instances {
                Some(text) => parse_instance_ranges(&text)?,
                None => Vec::new(),
            };
            let plan = crate::restart::RestartPlan {
                instances,
                batch_size,
                watch: Duration::from_secs(watch_secs),
                max_wait,
            };
            crate::restart::run(&mut Client::connect(scheduler)?, &job, &plan)?
        }
        JobCommand::List { json } => {
            let jobs = Client::connect(scheduler)?.list_jobs()?;
            if json {
                list_json(&jobs) + "\n"
            } else {
                list_text(&jobs)
            }
        }
    };
    write_stdout(&output)
}

pub(crate) fn write_stdout(output: &str) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

/// Parses a job key, with an error that names it.
pub fn parse_job_key(text: &str) -> anyhow::Result<JobKey> {
    text.parse::<JobKey>().map_err(|e| anyhow!("{e}"))
}

/// A job file read for `job create`: the job and whether the file named its tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFile {
    pub spec: JobSpec,
    /// False when the file has no `tier` key: the scheduler then picks the tier from its tier
    /// config (`spec.config.tier` holds the parser's default, which is not a choice).
    pub tier_explicit: bool,
}

/// Reads and validates a job file, and tells whether it names a tier (see [`JobFile`]).
/// Errors name the file: `examples/bad.toml: resources.cpu: must be > 0 (got -1)`.
pub fn read_job_file(job: JobKey, path: &Path) -> anyhow::Result<JobFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read job file {}: {}", path.display(), io_reason(&e)))?;
    let spec = parse_job_file(job, &text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(JobFile {
        spec,
        tier_explicit: names_tier(&text),
    })
}

/// Whether a job file's text sets the top-level `tier` key. Called on text the job file
/// parser accepted, so it is a TOML table.
pub fn names_tier(text: &str) -> bool {
    text.parse::<toml::Table>()
        .is_ok_and(|table| table.contains_key("tier"))
}

/// A role for the quota commands: a job key's first part (1..=128 of `[A-Za-z0-9_.-]`).
pub fn check_role(role: &str) -> anyhow::Result<()> {
    if JobKey::new(role, "e", "n").is_err() {
        bail!(
            "invalid role {role:?}: must be 1..={} characters of [A-Za-z0-9_.-]",
            borealis_core::JOB_KEY_PART_LEN_MAX
        );
    }
    Ok(())
}

/// `--cpu` of `quota set`: cores, fractions allowed, in thousandths of a core (rounded to the
/// nearest). Zero is a quota (of nothing).
pub fn parse_quota_cpu(text: &str) -> anyhow::Result<u32> {
    let invalid = |why: &str| anyhow!("invalid --cpu {text:?}: {why}");
    let cores: f64 = text
        .trim()
        .parse()
        .map_err(|_| invalid("expected a number of cores, e.g. 4 or 1.5"))?;
    if !cores.is_finite() || cores < 0.0 {
        return Err(invalid("must be a number of cores >= 0"));
    }
    let millis = (cores * 1000.0).round();
    if millis > f64::from(u32::MAX) {
        return Err(invalid(&format!(
            "must be at most {} cores",
            u32::MAX / 1000
        )));
    }
    // In range and integral, so the cast is exact.
    Ok(millis as u32)
}

/// `--ram`/`--disk` of `quota set`, in MiB rounded up: the job file's sizes (an integer and a
/// unit, one of B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB meaning the same), and also 0 without
/// a unit.
pub fn parse_quota_size(flag: &str, text: &str) -> anyhow::Result<u32> {
    if text.trim() == "0" {
        return Ok(0);
    }
    borealis_core::jobfile::size_mib(text).map_err(|e| match e {
        borealis_core::jobfile::SizeError::Malformed => anyhow!(
            "invalid {flag} {text:?}: expected an integer and a unit, one of B, KiB, MiB, GiB, \
             TiB (or KB, MB, GB, TB), e.g. \"512MiB\""
        ),
        borealis_core::jobfile::SizeError::TooLarge => {
            anyhow!("invalid {flag} {text:?}: must be at most {}MiB", u32::MAX)
        }
    })
}

/// Parses an instance list such as `"0-3,7"`: comma-separated numbers and inclusive ranges.
/// Returns the instances sorted, each once.
pub fn parse_instance_ranges(text: &str) -> anyhow::Result<Vec<u32>> {
    let invalid = |why: String| anyhow!("invalid instances {text:?}: {why}");
    let number = |part: &str| {
        part.trim()
            .parse::<u32>()
            .map_err(|_| invalid(format!("{:?} is not an instance number", part.trim())))
    };
    if text.trim().is_empty() {
        return Err(invalid("no instances given".into()));
    }
    let mut instances = Vec::new();
    for part in text.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (number(first)?, number(last)?),
            None => {
                let n = number(part)?;
                (n, n)
            }
        };
        if first > last {
            return Err(invalid(format!(
                "range {:?} ends before it starts",
                part.trim()
            )));
        }
        let len = (last - first) as usize + 1;
        if instances.len() + len > INSTANCES_PER_KILL_MAX {
            return Err(invalid(format!(
                "names more than {INSTANCES_PER_KILL_MAX} instances"
            )));
        }
        instances.extend(first..=last);
    }
    instances.sort_unstable();
    instances.dedup();
    Ok(instances)
}

/// The scheduler answered a request with an `Error`. `Display`: `scheduler refused: <message>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    // Read by callers that downcast to tell, say, `JobExists` from `Overloaded`; the binary
    // itself only prints the message.
    #[allow(dead_code)]
    pub code: ErrorCode,
    pub message: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scheduler refused: {}", self.message)
    }
}

impl std::error::Error for Refused {}

/// A blocking connection to the scheduler's client port.
///
/// High availability: the address may be a comma-separated list of schedulers (tried in order
/// until one accepts the connection). A follower answers every request with `NotLeader`; when
/// it names the leader, the client reconnects there and sends the request again (a refused
/// request was not applied, so this is safe for every request), following at most
/// [`LEADER_HOPS_MAX`] such redirects per request. A follower that knows no leader sends the
/// client on to the next listed scheduler; when none is left the request fails with a one-line
/// "no leader is known" error.
pub struct Client {
    addr: String,
    /// Listed schedulers not tried yet, in order.
    untried: VecDeque<String>,
    options: ClientOptions,
    stream: Stream,
    encoder: Encoder,
    writer: FrameWriter,
    decoder: FrameDecoder,
    read_buf: Vec<u8>,
    next_request_id: u64,
}

/// Most `NotLeader` redirects one request follows before giving up.
pub const LEADER_HOPS_MAX: usize = 3;

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("untried", &self.untried)
            .field("next_request_id", &self.next_request_id)
            .finish_non_exhaustive()
    }
}

/// How a client proves who it is: the token it authenticates with (`--token` /
/// `BOREALIS_TOKEN`) and, for a scheduler with TLS, the client TLS configuration (the cluster
/// CA it verifies the scheduler against; no client certificate: certificates are agents').
#[derive(Clone, Default)]
pub struct ClientOptions {
    pub token: Option<String>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

static DEFAULT_OPTIONS: OnceLock<ClientOptions> = OnceLock::new();

/// Sets the options [`Client::connect`] uses (once, from the command line's flags).
pub fn set_default_options(options: ClientOptions) {
    let _ = DEFAULT_OPTIONS.set(options);
}

fn default_options() -> ClientOptions {
    DEFAULT_OPTIONS.get().cloned().unwrap_or_default()
}

/// The connection: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Connects to `addr` with `options`: TCP, the TLS handshake (its failure named: a scheduler
/// whose certificate the CA did not sign, say), then the token, if any.
fn open(addr: &str, options: &ClientOptions) -> anyhow::Result<Stream> {
    let tcp = connect_one(addr)?;
    let Some(config) = &options.tls else {
        return Ok(Stream::Plain(tcp));
    };
    let name = borealis_net::tls::server_name(addr)?;
    let conn = rustls::ClientConnection::new(config.clone(), name)
        .map_err(|e| anyhow!("TLS with scheduler at {addr}: {e}"))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| anyhow!("TLS handshake with scheduler at {addr} failed: {e}"))?;
    }
    Ok(Stream::Tls(Box::new(tls)))
}

/// Opens a TCP connection to `addr` (`host:port`), trying each address it resolves to for
/// [`CONNECT_TIMEOUT`]. Error: `cannot reach scheduler at <addr>: <reason>`.
fn connect_one(addr: &str) -> anyhow::Result<TcpStream> {
    let unreachable = |reason: &str| anyhow!("cannot reach scheduler at {addr}: {reason}");
    let candidates: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| unreachable(&io_reason(&e)))?
        .collect();
    let mut last_error = None;
    let mut connected = None;
    for candidate in &candidates {
        match TcpStream::connect_timeout(candidate, CONNECT_TIMEOUT) {
            Ok(stream) => {
                connected = Some(stream);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let Some(stream) = connected else {
        return Err(match last_error {
            Some(e) => unreachable(&io_reason(&e)),
            None => unreachable("the address resolves to nothing"),
        });
    };
    let configure = || -> io::Result<()> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        // One small request, then wait for its answer: Nagle would only add latency.
        stream.set_nodelay(true)
    };
    configure().map_err(|e| unreachable(&io_reason(&e)))?;
    Ok(stream)
}

/// The addresses of a `--scheduler` value: comma-separated, blanks trimmed, empties dropped.
fn scheduler_list(addrs: &str) -> VecDeque<String> {
    addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect()
}

impl Client {
    /// Connects to `addrs`: one `host:port`, or a comma-separated list tried in order until one
    /// accepts. Each address gets [`CONNECT_TIMEOUT`] per address it resolves to. Error for
    /// one address: `cannot reach scheduler at <addr>: <reason>`; for a list: `cannot reach any
    /// scheduler of <list>: <addr>: <reason>; ...`.
    pub fn connect(addrs: &str) -> anyhow::Result<Client> {
        Client::connect_with(addrs, default_options())
    }

    /// [`Client::connect`] with explicit credentials (the HTTP API forwards each caller's).
    /// A refused token is a [`Refused`] with [`ErrorCode::Unauthenticated`].
    pub fn connect_with(addrs: &str, options: ClientOptions) -> anyhow::Result<Client> {
        let mut untried = scheduler_list(addrs);
        if untried.len() <= 1 {
            // One address: its own error, word for word.
            let addr = untried.pop_front().unwrap_or_else(|| addrs.to_string());
            let stream = open(&addr, &options)?;
            let mut client = Client::with_stream(addr, stream, untried, options);
            client.authenticate()?;
            return Ok(client);
        }
        let mut reasons = Vec::new();
        while let Some(addr) = untried.pop_front() {
            match open(&addr, &options) {
                Ok(stream) => {
                    let mut client = Client::with_stream(addr, stream, untried, options);
                    client.authenticate()?;
                    return Ok(client);
                }
                Err(e) => reasons.push(format!("{e:#}")),
            }
        }
        bail!(
            "cannot reach any scheduler of {addrs}: {}",
            reasons
                .iter()
                .map(|r| r.trim_start_matches("cannot reach scheduler at "))
                .collect::<Vec<_>>()
                .join("; ")
        )
    }

    fn with_stream(
        addr: String,
        stream: Stream,
        untried: VecDeque<String>,
        options: ClientOptions,
    ) -> Client {
        Client {
            addr,
            untried,
            options,
            stream,
            encoder: Encoder::new(),
            writer: FrameWriter::new(),
            decoder: FrameDecoder::new(),
            read_buf: vec![0; READ_CHUNK_BYTES],
            next_request_id: 1,
        }
    }

    /// Replaces the connection with one to `addr`.
    fn reconnect(&mut self, addr: &str) -> anyhow::Result<()> {
        self.stream = open(addr, &self.options)?;
        self.addr = addr.to_string();
        self.decoder = FrameDecoder::new();
        self.authenticate()
    }

    /// Sends the token, if there is one (a scheduler without auth accepts any).
    fn authenticate(&mut self) -> anyhow::Result<()> {
        let Some(token) = self.options.token.clone() else {
            return Ok(());
        };
        let response = self.request_once(&mut |enc, id| enc.authenticate(id, &token).to_vec())?;
        expect_ack(response, "Authenticate")
    }

    /// Connects to the next listed scheduler that accepts; `Ok(false)` when none is left.
    fn next_listed(&mut self) -> anyhow::Result<bool> {
        let mut last_error = None;
        while let Some(addr) = self.untried.pop_front() {
            match self.reconnect(&addr) {
                Ok(()) => return Ok(true),
                Err(e) => last_error = Some(e),
            }
        }
        match last_error {
            Some(e) => Err(e),
            None => Ok(false),
        }
    }

    /// Sends one request and returns the response that carries its request id, whatever it
    /// is (an `Error` response is `Ok`: see the convenience methods for typed results), except
    /// `NotLeader`: the client follows the leader it names (at most [`LEADER_HOPS_MAX`] times)
    /// or moves on to the next listed scheduler, and fails when no leader is known.
    ///
    /// `build` gets the encoder and the request id to put in the message and returns the
    /// message's bytes, e.g. `|enc, id| enc.list_jobs(id).to_vec()`; it is called again for
    /// each retry.
    pub fn request(
        &mut self,
        mut build: impl FnMut(&mut Encoder, u64) -> Vec<u8>,
    ) -> anyhow::Result<OwnedMessage> {
        let mut hops = 0;
        // Schedulers that refused without naming a leader.
        let mut leaderless: Vec<String> = Vec::new();
        loop {
            let response = self.request_once(&mut build)?;
            let OwnedMessage::Error {
                code: ErrorCode::NotLeader,
                leader,
                message,
            } = &response
            else {
                return Ok(response);
            };
            match leader.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
                Some(leader) => {
                    if hops == LEADER_HOPS_MAX {
                        bail!(
                            "no leader reached after following {LEADER_HOPS_MAX} redirects; the \
                             scheduler at {} says: {message}",
                            self.addr
                        );
                    }
                    hops += 1;
                    let leader = leader.to_string();
                    if let Err(e) = self.reconnect(&leader) {
                        // A stale name (the leader just died): another listed scheduler may
                        // know better.
                        let named_by = self.addr.clone();
                        if !self.next_listed()? {
                            return Err(e.context(format!(
                                "the scheduler at {named_by} named {leader} as the leader"
                            )));
                        }
                    }
                }
                None => {
                    leaderless.push(self.addr.clone());
                    if !self.next_listed()? {
                        let (who, is, knows) = match leaderless.len() {
                            1 => ("the scheduler at", "is", "knows"),
                            _ => ("the schedulers at", "are", "know"),
                        };
                        bail!(
                            "no leader is known: {who} {} {is} not the leader and {knows} of \
                             none",
                            leaderless.join(", ")
                        );
                    }
                }
            }
        }
    }

    fn request_once(
        &mut self,
        build: &mut impl FnMut(&mut Encoder, u64) -> Vec<u8>,
    ) -> anyhow::Result<OwnedMessage> {
        // Ids are never 0: 0 marks a one-way message.
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let message = build(&mut self.encoder, request_id);
        // A request no frame can carry (a job file of a huge command, say) is an error here,
        // before anything is sent.
        self.writer
            .push(&message)
            .map_err(|e| anyhow::anyhow!("request not sent: {e}"))?;
        let written = self.stream.write_all(self.writer.finish());
        self.writer.clear();
        written.map_err(|e| self.io_error(&e))?;
        self.read_response(request_id)
    }

    /// The response to `request_id`: its one message, or a job status put back together
    /// from the parts a big one comes in (every part carries the request id).
    fn read_response(&mut self, request_id: u64) -> anyhow::Result<OwnedMessage> {
        let mut skipped = 0;
        let mut parts = JobStatusParts::default();
        loop {
            while let Some(frame) = self
                .decoder
                .next_frame()
                .map_err(|e| self.bad_response(e))?
            {
                for bytes in split_messages(frame).map_err(|e| self.bad_response(e))? {
                    let message = decode_message(&bytes).map_err(|e| self.bad_response(e))?;
                    if message.request_id() != request_id {
                        skipped += 1;
                        if skipped > UNRELATED_MESSAGES_MAX {
                            bail!(
                                "scheduler at {} sent {UNRELATED_MESSAGES_MAX} messages but no \
                                 response to request {request_id}",
                                self.addr
                            );
                        }
                        continue;
                    }
                    let (_, owned) = to_owned(message).map_err(|e| self.bad_response(e))?;
                    if let Some(owned) = parts.feed(request_id, owned) {
                        return Ok(owned);
                    }
                }
            }
            let read = loop {
                match self.stream.read(&mut self.read_buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            match read {
                Ok(0) => bail!(
                    "scheduler at {} closed the connection before responding",
                    self.addr
                ),
                Ok(n) => self.decoder.extend(&self.read_buf[..n]),
                Err(e) => return Err(self.io_error(&e)),
            }
        }
    }

    fn io_error(&self, e: &io::Error) -> anyhow::Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => anyhow!(
                "scheduler at {} did not respond within {}s",
                self.addr,
                IO_TIMEOUT.as_secs()
            ),
            _ => anyhow!(
                "lost connection to scheduler at {}: {}",
                self.addr,
                io_reason(e)
            ),
        }
    }

    fn bad_response(&self, e: impl fmt::Display) -> anyhow::Error {
        anyhow!("bad response from scheduler at {}: {e}", self.addr)
    }

    /// Creates the job `spec.config.job` with `spec.instances` instances. `tier_explicit`:
    /// the tier is `spec.config.tier`; false: the job file named no tier, and the scheduler
    /// resolves it from its tier config.
    pub fn create_job(&mut self, spec: &JobSpec, tier_explicit: bool) -> anyhow::Result<()> {
        let response = self.request(|enc, id| {
            enc.create_job_spec(id, spec.instances, &spec.config, tier_explicit)
                .to_vec()
        })?;
        expect_ack(response, "CreateJob")
    }

    /// Sets `role`'s quota (`quota.ports` is not sent: quotas do not count ports).
    pub fn set_quota(&mut self, role: &str, quota: &Resources) -> anyhow::Result<()> {
        let response = self.request(|enc, id| enc.set_quota(id, role, quota).to_vec())?;
        expect_ack(response, "SetQuota")
    }

    /// `role`'s quota and what its production tasks use of it.
    pub fn get_quota(&mut self, role: &str) -> anyhow::Result<QuotaView> {
        match self.request(|enc, id| enc.get_quota(id, role).to_vec())? {
            OwnedMessage::QuotaInfo(info) => Ok(info),
            other => Err(unexpected(other, "GetQuota")),
        }
    }

    /// The job's summary and every task it has.
    pub fn job_status(&mut self, job: &JobKey) -> anyhow::Result<JobStatusView> {
        match self.request(|enc, id| enc.query_job(id, job).to_vec())? {
            OwnedMessage::JobStatus(status) => Ok(status),
            other => Err(unexpected(other, "QueryJob")),
        }
    }

    /// Restarts the given instances of a job (all when empty): one request, no batching.
    pub fn restart_job(&mut self, job: &JobKey, instances: &[u32]) -> anyhow::Result<()> {
        let response = self.request(|enc, id| enc.restart_job(id, job, instances).to_vec())?;
        expect_ack(response, "RestartJob")
    }

    /// Kills the given instances of a job; all of them when `instances` is empty.
    pub fn kill_job(&mut self, job: &JobKey, instances: &[u32]) -> anyhow::Result<()> {
        let response = self.request(|enc, id| enc.kill_job(id, job, instances).to_vec())?;
        expect_ack(response, "KillJob")
    }

    /// Every registered agent, from every shard, in (hostname, agent id) order: page after
    /// page ([`Client::list_agents_page`]) until the last.
    pub fn list_agents(&mut self) -> anyhow::Result<Vec<AgentInfoView>> {
        let mut agents = Vec::new();
        let mut after: Option<(String, String)> = None;
        loop {
            let page = self.list_agents_page(
                after.as_ref().map(|(h, id)| (h.as_str(), id.as_str())),
                LIST_PAGE_MAX,
            )?;
            agents.extend(page.agents);
            match page.next {
                None => return Ok(agents),
                Some(next) if after.as_ref().is_some_and(|a| next <= *a) => bail!(
                    "scheduler at {} answered ListAgents after {after:?} with a next page after \
                     {next:?}, which does not go on",
                    self.addr
                ),
                Some(next) => after = Some(next),
            }
        }
    }

    /// One page of agents: at most `limit` (0: the scheduler's default, 1,000; it holds at
    /// most 10,000) of those after `after` (hostname, agent id; None: from the first).
    pub fn list_agents_page(
        &mut self,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> anyhow::Result<AgentPage> {
        match self.request(|enc, id| enc.list_agents_page(id, after, limit).to_vec())? {
            OwnedMessage::AgentList { agents, next } => Ok(AgentPage { agents, next }),
            other => Err(unexpected(other, "ListAgents")),
        }
    }

    /// The task with this id: its job's summary and that one task.
    pub fn query_task(&mut self, task_id: u64) -> anyhow::Result<JobStatusView> {
        match self.request(|enc, id| enc.query_task(id, task_id).to_vec())? {
            OwnedMessage::JobStatus(status) => Ok(status),
            other => Err(unexpected(other, "QueryTask")),
        }
    }

    /// Every job the scheduler knows (that the token may read), in key order: page after page
    /// ([`Client::list_jobs_page`]) until the last.
    pub fn list_jobs(&mut self) -> anyhow::Result<Vec<JobSummaryView>> {
        let mut jobs = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.list_jobs_page(&after, LIST_PAGE_MAX)?;
            jobs.extend(page.jobs);
            match page.next {
                None => return Ok(jobs),
                Some(next) if next <= after => bail!(
                    "scheduler at {} answered ListJobs after {after:?} with a next page after \
                     {next:?}, which does not go on",
                    self.addr
                ),
                Some(next) => after = next,
            }
        }
    }

    /// One page of jobs: at most `limit` (0: the scheduler's default, 1,000; it holds at most
    /// 10,000) of those whose keys sort after `after` (empty: from the first), in key order.
    pub fn list_jobs_page(&mut self, after: &str, limit: u32) -> anyhow::Result<JobPage> {
        match self.request(|enc, id| enc.list_jobs_page(id, after, limit).to_vec())? {
            OwnedMessage::JobList { jobs, next } => Ok(JobPage {
                jobs,
                next: (!next.is_empty()).then_some(next),
            }),
            other => Err(unexpected(other, "ListJobs")),
        }
    }
}

/// A page of jobs ([`Client::list_jobs_page`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobPage {
    pub jobs: Vec<JobSummaryView>,
    /// The key to ask for the next page after; None: this is the last page.
    pub next: Option<String>,
}

/// A page of agents ([`Client::list_agents_page`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPage {
    pub agents: Vec<AgentInfoView>,
    /// The (hostname, agent id) to ask for the next page after; None: this is the last page.
    pub next: Option<(String, String)>,
}

pub(crate) fn expect_ack(response: OwnedMessage, request: &str) -> anyhow::Result<()> {
    match response {
        OwnedMessage::Ack => Ok(()),
        other => Err(unexpected(other, request)),
    }
}

/// An `Error` response as a [`Refused`]; anything else as a protocol error.
pub(crate) fn unexpected(response: OwnedMessage, request: &str) -> anyhow::Error {
    match response {
        OwnedMessage::Error { code, message, .. } => anyhow::Error::new(Refused { code, message }),
        other => anyhow!(
            "scheduler answered {request} with an unexpected {} message",
            message_kind(&other)
        ),
    }
}

fn message_kind(message: &OwnedMessage) -> &'static str {
    match message {
        OwnedMessage::RegisterAgent(_) => "RegisterAgent",
        OwnedMessage::TaskStatus(_) => "TaskStatus",
        OwnedMessage::StatusAck(_) => "StatusAck",
        OwnedMessage::AgentRegistered { .. } => "AgentRegistered",
        OwnedMessage::LaunchTask(_) => "LaunchTask",
        OwnedMessage::KillTask { .. } => "KillTask",
        OwnedMessage::Reconcile { .. } => "Reconcile",
        OwnedMessage::Heartbeat { .. } => "Heartbeat",
        OwnedMessage::CreateJob { .. } => "CreateJob",
        OwnedMessage::KillJob { .. } => "KillJob",
        OwnedMessage::QueryJob { .. } => "QueryJob",
        OwnedMessage::ListJobs { .. } => "ListJobs",
        OwnedMessage::SetQuota { .. } => "SetQuota",
        OwnedMessage::GetQuota { .. } => "GetQuota",
        OwnedMessage::QuotaInfo(_) => "QuotaInfo",
        OwnedMessage::HostMaintenance { .. } => "HostMaintenance",
        OwnedMessage::HostStatusList(_) => "HostStatusList",
        OwnedMessage::RestartJob { .. } => "RestartJob",
        OwnedMessage::StartUpdate { .. } => "StartUpdate",
        OwnedMessage::UpdateCommand { .. } => "UpdateCommand",
        OwnedMessage::QueryUpdates { .. } => "QueryUpdates",
        OwnedMessage::UpdateInfo(_) => "UpdateInfo",
        OwnedMessage::UpdateList(_) => "UpdateList",
        OwnedMessage::ScheduleCron { .. } => "ScheduleCron",
        OwnedMessage::DescheduleCron { .. } => "DescheduleCron",
        OwnedMessage::StartCron { .. } => "StartCron",
        OwnedMessage::Authenticate { .. } => "Authenticate",
        OwnedMessage::ListAgents { .. } => "ListAgents",
        OwnedMessage::AgentList { .. } => "AgentList",
        OwnedMessage::QueryTask { .. } => "QueryTask",
        OwnedMessage::JobStatus(_) => "JobStatus",
        OwnedMessage::JobStatusPart(_) => "JobStatus (a part)",
        OwnedMessage::JobList { .. } => "JobList",
        OwnedMessage::Ack => "Ack",
        OwnedMessage::Error { .. } => "Error",
    }
}

/// An io error's text without Rust's ` (os error N)` suffix: `Connection refused`.
pub(crate) fn io_reason(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

pub(crate) fn count_noun(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn state_name(state: Option<TaskState>) -> &'static str {
    state.map_or("UNKNOWN", TaskState::as_str)
}

// ---------------------------------------------------------------- JSON output

/// A job's task counts as a JSON object of state name to count, in state order, listing only
/// states that have tasks.
struct StateCountsJson<'a>(&'a [u32; TaskState::COUNT]);

impl Serialize for StateCountsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            TaskState::ALL
                .iter()
                .zip(self.0)
                .filter(|(_, count)| **count > 0)
                .map(|(state, count)| (state.as_str(), count)),
        )
    }
}

/// Named ports as a JSON object of name to port number.
struct PortsJson<'a>(&'a [(String, u16)]);

impl Serialize for PortsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, port)| (name, port)))
    }
}

/// A cron job's schedule in JSON.
#[derive(serde::Serialize)]
struct CronJson<'a> {
    schedule: &'a str,
    /// Unix ms; null when not known.
    next_run_unix_ms: Option<u64>,
    /// The same in UTC; null when not known.
    next_run: Option<String>,
    collision_policy: &'static str,
}

/// A job's active update in JSON.
#[derive(serde::Serialize)]
struct ActiveUpdateJson {
    update_id: u64,
    status: &'static str,
}

#[derive(serde::Serialize)]
struct JobSummaryJson<'a> {
    job_key: &'a str,
    instances: u32,
    is_service: bool,
    state_counts: StateCountsJson<'a>,
    /// null: not a cron job.
    cron: Option<CronJson<'a>>,
    /// null: no active update.
    update: Option<ActiveUpdateJson>,
}

impl<'a> JobSummaryJson<'a> {
    fn new(job: &'a JobSummaryView) -> Self {
        JobSummaryJson {
            job_key: &job.job_key,
            instances: job.instances,
            is_service: job.is_service,
            state_counts: StateCountsJson(&job.state_counts),
            cron: job.cron.as_ref().map(|c| CronJson {
                schedule: &c.schedule,
                next_run_unix_ms: c.next_run_unix_ms,
                next_run: c.next_run_unix_ms.map(crate::update::utc_text),
                collision_policy: c.collision_policy.as_str(),
            }),
            update: job.update.map(|(update_id, status)| ActiveUpdateJson {
                update_id,
                status: status.as_str(),
            }),
        }
    }
}

#[derive(serde::Serialize)]
struct TaskJson<'a> {
    task_id: String,
    instance: u32,
    state: &'static str,
    agent_id: &'a str,
    hostname: &'a str,
    failure_count: u32,
    exit_code: i32,
    message: &'a str,
    ports: PortsJson<'a>,
    sandbox: &'a str,
    pending_reason: &'a str,
    /// The preemptor's task id as `task_id` prints ids; null when not preempted.
    preempted_by: Option<String>,
    /// What the task used (`cpu_time_ms`, `peak_memory_bytes`, `disk_bytes`), as its agent
    /// reported when it ended; null before that, or when the agent measured nothing.
    usage: Option<borealis_core::TaskUsage>,
    /// The task's latest state changes, oldest first.
    events: Vec<TaskEventJson<'a>>,
}

/// One state change of a task in `status --json`.
#[derive(serde::Serialize)]
struct TaskEventJson<'a> {
    unix_ms: u64,
    state: &'static str,
    message: &'a str,
}

#[derive(serde::Serialize)]
struct JobStatusJson<'a> {
    #[serde(flatten)]
    job: JobSummaryJson<'a>,
    tasks: Vec<TaskJson<'a>>,
}

/// `status --json`: one line, `{"job_key", "instances", "is_service", "state_counts": {STATE:
/// n}, "cron": {"schedule", "next_run_unix_ms", "next_run", "collision_policy"} or null,
/// "update": {"update_id", "status"} or null, "tasks": [{"task_id": "<16 hex digits>", "instance", "state", "agent_id", "hostname",
/// "failure_count", "exit_code", "message", "ports": {name: port}, "sandbox",
/// "pending_reason": "" unless PENDING and not placed, "preempted_by": "<16 hex digits>" or
/// null, "usage": {"cpu_time_ms", "peak_memory_bytes", "disk_bytes"} (what an ended task used,
/// as its agent measured it: CPU time in ms, peak memory and sandbox size in bytes) or null,
/// "events": [{"unix_ms", "state", "message"}] (its latest state changes, oldest first)}]}`,
/// tasks in instance order.
pub fn status_json(status: &JobStatusView) -> String {
    let mut tasks: Vec<_> = status.tasks.iter().collect();
    tasks.sort_by_key(|t| (t.instance, t.task_id));
    let json = JobStatusJson {
        job: JobSummaryJson::new(&status.job),
        tasks: tasks
            .into_iter()
            .map(|t| TaskJson {
                task_id: TaskId(t.task_id).to_string(),
                instance: t.instance,
                state: state_name(t.state),
                agent_id: &t.agent_id,
                hostname: &t.hostname,
                failure_count: t.failure_count,
                exit_code: t.exit_code,
                message: &t.message,
                ports: PortsJson(&t.ports),
                sandbox: &t.sandbox,
                pending_reason: &t.pending_reason,
                preempted_by: t.preempted_by.map(|id| TaskId(id).to_string()),
                usage: t.usage,
                events: t
                    .events
                    .iter()
                    .map(|e| TaskEventJson {
                        unix_ms: e.unix_ms,
                        state: state_name(e.state),
                        message: &e.message,
                    })
                    .collect(),
            })
            .collect(),
    };
    serde_json::to_string(&json).expect("plain data always serializes")
}

/// A quota's resources in JSON: cpu in cores.
#[derive(serde::Serialize)]
struct QuotaResourcesJson {
    cpu: f64,
    ram_mib: u32,
    disk_mib: u32,
}

impl QuotaResourcesJson {
    fn new(r: &Resources) -> Self {
        QuotaResourcesJson {
            cpu: f64::from(r.cpu_millis) / 1000.0,
            ram_mib: r.ram_mib,
            disk_mib: r.disk_mib,
        }
    }
}

#[derive(serde::Serialize)]
struct QuotaJson<'a> {
    role: &'a str,
    quota: QuotaResourcesJson,
    used: QuotaResourcesJson,
    quota_set: bool,
}

/// `quota get --json`: one line, `{"role", "quota": {"cpu": cores, "ram_mib", "disk_mib"},
/// "used": {...}, "quota_set"}`; without a quota set, `quota` is all zero.
pub fn quota_json(info: &QuotaView) -> String {
    let json = QuotaJson {
        role: &info.role,
        quota: QuotaResourcesJson::new(&info.quota),
        used: QuotaResourcesJson::new(&info.used),
        quota_set: info.quota_set,
    };
    serde_json::to_string(&json).expect("plain data always serializes")
}

/// Thousandths of a core as cores with three decimals: `1.500`.
fn cores_text(millis: u32) -> String {
    format!("{}.{:03}", millis / 1000, millis % 1000)
}

/// `quota get`: `role www: cpu 1.500 of 4.000 cores, ram 3072 of 8192 MiB, disk 0 of 10240
/// MiB`, or `role www: no quota set (production jobs are refused)`.
pub fn quota_text(info: &QuotaView) -> String {
    if !info.quota_set {
        return format!(
            "role {}: no quota set (production jobs are refused)\n",
            info.role
        );
    }
    format!(
        "role {}: cpu {} of {} cores, ram {} of {} MiB, disk {} of {} MiB\n",
        info.role,
        cores_text(info.used.cpu_millis),
        cores_text(info.quota.cpu_millis),
        info.used.ram_mib,
        info.quota.ram_mib,
        info.used.disk_mib,
        info.quota.disk_mib
    )
}

/// `list --json`: one line, an array of `{"job_key", "instances", "is_service",
/// "state_counts", "cron", "update"}` (as `status --json` has them) in job key order.
pub fn list_json(jobs: &[JobSummaryView]) -> String {
    let mut jobs: Vec<_> = jobs.iter().collect();
    jobs.sort_by(|a, b| a.job_key.cmp(&b.job_key));
    let json: Vec<_> = jobs.into_iter().map(JobSummaryJson::new).collect();
    serde_json::to_string(&json).expect("plain data always serializes")
}

// ---------------------------------------------------------------- human output

fn counts_text(counts: &[u32; TaskState::COUNT]) -> String {
    let parts: Vec<String> = TaskState::ALL
        .iter()
        .zip(counts)
        .filter(|(_, count)| **count > 0)
        .map(|(state, count)| format!("{} {count}", state.as_str()))
        .collect();
    if parts.is_empty() {
        "no tasks".to_string()
    } else {
        parts.join(", ")
    }
}

fn kind_text(is_service: bool) -> &'static str {
    if is_service {
        "service"
    } else {
        "ad-hoc"
    }
}

/// Rows as left-aligned columns two spaces apart; the last column is not padded.
pub(crate) fn table_text(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text.to_string()
    }
}

/// CPU time as seconds with two decimals: `1.23s`.
pub(crate) fn cpu_time_text(cpu_time_ms: u64) -> String {
    format!("{}.{:02}s", cpu_time_ms / 1000, (cpu_time_ms % 1000) / 10)
}

/// A size in binary units with one decimal (`56.0MiB`), plain bytes below 1 KiB (`512B`).
pub(crate) fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // 1023.96 KiB would print as 1024.0KiB: such a value is the next unit's 1.0.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// What `status` notes about a task: why it is pending, who preempted it.
fn task_note(t: &borealis_net::views::TaskInfoView) -> String {
    let mut notes = Vec::new();
    if !t.pending_reason.is_empty() {
        notes.push(t.pending_reason.clone());
    }
    if let Some(id) = t.preempted_by {
        notes.push(format!("preempted by {}", TaskId(id)));
    }
    notes.join("; ")
}

/// `status`: a header with the job key and its task counts by state, then one row per task,
/// with CPU (CPU time) and MEM (peak memory) columns when any task has a usage (ended tasks
/// whose agent measured it; `-` for the others), and a NOTE column (why a task is pending, who
/// preempted it) when any task has a note.
pub fn status_text(status: &JobStatusView) -> String {
    let job = &status.job;
    let mut text = format!(
        "{} ({}, {}): {}\n",
        job.job_key,
        kind_text(job.is_service),
        count_noun(job.instances as usize, "instance"),
        counts_text(&job.state_counts)
    );
    let mut tasks: Vec<_> = status.tasks.iter().collect();
    tasks.sort_by_key(|t| (t.instance, t.task_id));
    let notes: Vec<String> = tasks.iter().map(|t| task_note(t)).collect();
    let with_notes = notes.iter().any(|n| !n.is_empty());
    let with_usage = tasks.iter().any(|t| t.usage.is_some());
    let mut header = ["INSTANCE", "TASK ID", "STATE", "HOST", "EXIT"]
        .map(String::from)
        .to_vec();
    if with_usage {
        header.extend(["CPU", "MEM"].map(String::from));
    }
    header.push("SANDBOX".to_string());
    if with_notes {
        header.push("NOTE".to_string());
    }
    let mut rows = vec![header];
    for (t, note) in tasks.into_iter().zip(notes) {
        let host = if t.hostname.is_empty() {
            &t.agent_id
        } else {
            &t.hostname
        };
        let exit_code = if t.exit_code == -1 {
            "-".to_string()
        } else {
            t.exit_code.to_string()
        };
        let mut row = vec![
            t.instance.to_string(),
            TaskId(t.task_id).to_string(),
            state_name(t.state).to_string(),
            or_dash(host),
            exit_code,
        ];
        if with_usage {
            row.extend(match &t.usage {
                Some(u) => [
                    cpu_time_text(u.cpu_time_ms),
                    bytes_text(u.peak_memory_bytes),
                ],
                None => ["-".to_string(), "-".to_string()],
            });
        }
        row.push(or_dash(&t.sandbox));
        if with_notes {
            row.push(or_dash(&note));
        }
        rows.push(row);
    }
    text.push_str(&table_text(&rows));
    text
}

/// What `list` notes about a job: its cron schedule and next run (UTC), its active update.
pub fn job_note(job: &JobSummaryView) -> String {
    let mut notes = Vec::new();
    if let Some(cron) = &job.cron {
        notes.push(format!(
            "cron {:?} next {}",
            cron.schedule,
            cron.next_run_unix_ms
                .map_or_else(|| "-".to_string(), crate::update::utc_text)
        ));
    }
    if let Some((id, status)) = job.update {
        notes.push(format!("update {id} {status}"));
    }
    notes.join("; ")
}

/// `list`: one line per job, in job key order: key, instances, kind, task counts by state,
/// and (when any job has one) a column with cron schedules and active updates.
pub fn list_text(jobs: &[JobSummaryView]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".to_string();
    }
    let mut jobs: Vec<_> = jobs.iter().collect();
    jobs.sort_by(|a, b| a.job_key.cmp(&b.job_key));
    let notes: Vec<String> = jobs.iter().map(|job| job_note(job)).collect();
    let with_notes = notes.iter().any(|n| !n.is_empty());
    let rows: Vec<Vec<String>> = jobs
        .into_iter()
        .zip(notes)
        .map(|(job, note)| {
            let mut row = vec![
                job.job_key.clone(),
                count_noun(job.instances as usize, "instance"),
                kind_text(job.is_service).to_string(),
                counts_text(&job.state_counts),
            ];
            if with_notes {
                row.push(or_dash(&note));
            }
            row
        })
        .collect();
    table_text(&rows)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use borealis_net::views::TaskInfoView;
    use borealis_net::FrameDecoder;
    use serde_json::json;
    use std::net::TcpListener;
    use std::thread;

    fn counts(pairs: &[(TaskState, u32)]) -> [u32; TaskState::COUNT] {
        let mut counts = [0; TaskState::COUNT];
        for (state, n) in pairs {
            counts[*state as usize] = *n;
        }
        counts
    }

    fn sample_status() -> JobStatusView {
        JobStatusView {
            job: JobSummaryView {
                job_key: "r/e/n".into(),
                instances: 2,
                is_service: false,
                state_counts: counts(&[(TaskState::Running, 1), (TaskState::Finished, 1)]),
                cron: None,
                update: None,
            },
            // Out of instance order on purpose: output is sorted by instance.
            tasks: vec![
                TaskInfoView {
                    task_id: 0x1234,
                    instance: 1,
                    state: Some(TaskState::Finished),
                    agent_id: "a2".into(),
                    hostname: "".into(),
                    failure_count: 1,
                    exit_code: 0,
                    message: "exited 0".into(),
                    ports: vec![],
                    sandbox: "/var/sb/2".into(),
                    pending_reason: "".into(),
                    preempted_by: None,
                    events: vec![borealis_net::views::TaskEventView {
                        unix_ms: 1_700_000_000_000,
                        state: Some(TaskState::Finished),
                        message: "exited 0".into(),
                    }],
                    usage: None,
                },
                TaskInfoView {
                    task_id: 0xdead_beef,
                    instance: 0,
                    state: Some(TaskState::Running),
                    agent_id: "a1".into(),
                    hostname: "h1".into(),
                    failure_count: 0,
                    exit_code: -1,
                    message: "".into(),
                    ports: vec![("http".into(), 31_000), ("admin".into(), 31_001)],
                    sandbox: "/path".into(),
                    pending_reason: "".into(),
                    preempted_by: None,
                    events: vec![],
                    usage: None,
                },
            ],
        }
    }

    /// Checks `parse_instance_ranges(input)` against the instances or the error's text.
    fn check_ranges(input: &str, expected: Result<&[u32], &str>) {
        let got = parse_instance_ranges(input).map_err(|e| e.to_string());
        match expected {
            Ok(instances) => assert_eq!(got.as_deref(), Ok(instances), "input {input:?}"),
            Err(error) => assert_eq!(got, Err(error.to_string()), "input {input:?}"),
        }
    }

    #[test]
    fn instance_ranges() {
        let table: &[(&str, Result<&[u32], &str>)] = &[
            ("7", Ok(&[7])),
            ("0-3,7", Ok(&[0, 1, 2, 3, 7])),
            (" 5 , 1 - 2 ", Ok(&[1, 2, 5])),
            ("2-2", Ok(&[2])),
            ("3,1-3,0", Ok(&[0, 1, 2, 3])),
            ("", Err(r#"invalid instances "": no instances given"#)),
            (
                "0-3,,7",
                Err(r#"invalid instances "0-3,,7": "" is not an instance number"#),
            ),
            (
                "a",
                Err(r#"invalid instances "a": "a" is not an instance number"#),
            ),
            (
                "-1",
                Err(r#"invalid instances "-1": "" is not an instance number"#),
            ),
            (
                "1-2-3",
                Err(r#"invalid instances "1-2-3": "2-3" is not an instance number"#),
            ),
            (
                "3-0",
                Err(r#"invalid instances "3-0": range "3-0" ends before it starts"#),
            ),
            (
                "4294967296",
                Err(r#"invalid instances "4294967296": "4294967296" is not an instance number"#),
            ),
            (
                "0-4294967295",
                Err(r#"invalid instances "0-4294967295": names more than 100000 instances"#),
            ),
            (
                "0-99999,100000",
                Err(r#"invalid instances "0-99999,100000": names more than 100000 instances"#),
            ),
        ];
        for (input, expected) in table {
            check_ranges(input, *expected);
        }
        assert_eq!(
            parse_instance_ranges("0-99999").unwrap().len(),
            INSTANCES_PER_KILL_MAX
        );
    }

    #[test]
    fn status_json_has_the_documented_shape() {
        let got: serde_json::Value = serde_json::from_str(&status_json(&sample_status())).unwrap();
        let expected = json!({
            "job_key": "r/e/n",
            "instances": 2,
            "is_service": false,
            "state_counts": {"RUNNING": 1, "FINISHED": 1},
            "cron": null,
            "update": null,
            "tasks": [
                {
                    "task_id": "00000000deadbeef",
                    "instance": 0,
                    "state": "RUNNING",
                    "agent_id": "a1",
                    "hostname": "h1",
                    "failure_count": 0,
                    "exit_code": -1,
                    "message": "",
                    "ports": {"http": 31000, "admin": 31001},
                    "sandbox": "/path",
                    "pending_reason": "",
                    "preempted_by": null,
                    "usage": null,
                    "events": []
                },
                {
                    "task_id": "0000000000001234",
                    "instance": 1,
                    "state": "FINISHED",
                    "agent_id": "a2",
                    "hostname": "",
                    "failure_count": 1,
                    "exit_code": 0,
                    "message": "exited 0",
                    "ports": {},
                    "sandbox": "/var/sb/2",
                    "pending_reason": "",
                    "preempted_by": null,
                    "usage": null,
                    "events": [
                        {"unix_ms": 1_700_000_000_000u64, "state": "FINISHED", "message": "exited 0"}
                    ]
                }
            ]
        });
        assert_eq!(got, expected);
        // One line, fields in the documented order, states in state order.
        let text = status_json(&sample_status());
        assert!(!text.contains('\n'));
        assert!(text.starts_with(
            r#"{"job_key":"r/e/n","instances":2,"is_service":false,"state_counts":{"RUNNING":1,"FINISHED":1},"cron":null,"update":null,"tasks":[{"task_id":"00000000deadbeef","#
        ), "{text}");
    }

    #[test]
    fn status_json_of_unknown_state_and_empty_job() {
        let mut status = sample_status();
        status.tasks.truncate(1);
        status.tasks[0].state = None;
        let got: serde_json::Value = serde_json::from_str(&status_json(&status)).unwrap();
        assert_eq!(got["tasks"][0]["state"], "UNKNOWN");

        status.tasks.clear();
        status.job.state_counts = [0; TaskState::COUNT];
        let got: serde_json::Value = serde_json::from_str(&status_json(&status)).unwrap();
        assert_eq!(got["state_counts"], json!({}));
        assert_eq!(got["tasks"], json!([]));
    }

    #[test]
    fn list_json_has_the_documented_shape() {
        let jobs = vec![
            JobSummaryView {
                job_key: "www/prod/web".into(),
                instances: 3,
                is_service: true,
                state_counts: counts(&[(TaskState::Running, 3)]),
                cron: None,
                update: None,
            },
            JobSummaryView {
                job_key: "www/devel/hello".into(),
                instances: 5,
                is_service: false,
                state_counts: counts(&[(TaskState::Pending, 1), (TaskState::Finished, 4)]),
                cron: None,
                update: None,
            },
        ];
        let got: serde_json::Value = serde_json::from_str(&list_json(&jobs)).unwrap();
        assert_eq!(
            got,
            json!([
                {"job_key": "www/devel/hello", "instances": 5, "is_service": false,
                 "state_counts": {"PENDING": 1, "FINISHED": 4}, "cron": null, "update": null},
                {"job_key": "www/prod/web", "instances": 3, "is_service": true,
                 "state_counts": {"RUNNING": 3}, "cron": null, "update": null},
            ])
        );
        assert_eq!(list_json(&[]), "[]");
        assert_eq!(
            list_text(&jobs),
            "www/devel/hello  5 instances  ad-hoc   PENDING 1, FINISHED 4\n\
             www/prod/web     3 instances  service  RUNNING 3\n"
        );
        assert_eq!(list_text(&[]), "no jobs\n");
    }

    #[test]
    fn list_shows_cron_schedules_and_active_updates() {
        use borealis_core::cron::CollisionPolicy;
        use borealis_core::update::UpdateStatus;
        use borealis_net::views::CronSummaryView;
        let job = |key: &str| JobSummaryView {
            job_key: key.into(),
            instances: 2,
            is_service: false,
            state_counts: counts(&[(TaskState::Running, 2)]),
            cron: None,
            update: None,
        };
        let jobs = vec![
            JobSummaryView {
                cron: Some(CronSummaryView {
                    schedule: "0 3 * * *".into(),
                    next_run_unix_ms: Some(1_700_000_000_000),
                    collision_policy: CollisionPolicy::CancelNew,
                }),
                ..job("www/prod/nightly")
            },
            JobSummaryView {
                cron: Some(CronSummaryView {
                    schedule: "@yearly".into(),
                    next_run_unix_ms: None,
                    collision_policy: CollisionPolicy::KillExisting,
                }),
                update: Some((2, UpdateStatus::RollingBack)),
                ..job("www/prod/yearly")
            },
            JobSummaryView {
                update: Some((4, UpdateStatus::RollForwardPaused)),
                ..job("www/prod/web")
            },
            job("www/prod/plain"),
        ];
        assert_eq!(
            list_text(&jobs),
            "\
www/prod/nightly  2 instances  ad-hoc  RUNNING 2  cron \"0 3 * * *\" next 2023-11-14T22:13:20Z
www/prod/plain    2 instances  ad-hoc  RUNNING 2  -
www/prod/web      2 instances  ad-hoc  RUNNING 2  update 4 ROLL_FORWARD_PAUSED
www/prod/yearly   2 instances  ad-hoc  RUNNING 2  cron \"@yearly\" next -; update 2 ROLLING_BACK
"
        );
        let got: serde_json::Value = serde_json::from_str(&list_json(&jobs)).unwrap();
        assert_eq!(
            got[0]["cron"],
            json!({"schedule": "0 3 * * *", "next_run_unix_ms": 1_700_000_000_000u64,
                   "next_run": "2023-11-14T22:13:20Z", "collision_policy": "CANCEL_NEW"})
        );
        assert_eq!(got[0]["update"], json!(null));
        assert_eq!(got[1]["cron"], json!(null));
        assert_eq!(
            got[2]["update"],
            json!({"update_id": 4, "status": "ROLL_FORWARD_PAUSED"})
        );
        assert_eq!(
            got[3]["cron"],
            json!({"schedule": "@yearly", "next_run_unix_ms": null, "next_run": null,
                   "collision_policy": "KILL_EXISTING"})
        );
        assert_eq!(
            got[3]["update"],
            json!({"update_id": 2, "status": "ROLLING_BACK"})
        );
        // `status --json` carries them too.
        let status = JobStatusView {
            job: jobs[1].clone(),
            tasks: vec![],
        };
        let got: serde_json::Value = serde_json::from_str(&status_json(&status)).unwrap();
        assert_eq!(got["update"]["status"], "ROLLING_BACK");
        assert_eq!(got["cron"]["schedule"], "@yearly");
    }

    #[test]
    fn status_text_is_a_header_and_a_table() {
        assert_eq!(
            status_text(&sample_status()),
            "r/e/n (ad-hoc, 2 instances): RUNNING 1, FINISHED 1\n\
             INSTANCE  TASK ID           STATE     HOST  EXIT  SANDBOX\n\
             0         00000000deadbeef  RUNNING   h1    -     /path\n\
             1         0000000000001234  FINISHED  a2    0     /var/sb/2\n"
        );
    }

    fn pending_and_preempted() -> JobStatusView {
        let mut status = sample_status();
        status.job.instances = 3;
        // tasks[0] is instance 1.
        status.tasks[0].preempted_by = Some(0x6b08_0000_0100_0002);
        status.tasks[0].state = Some(TaskState::Killed);
        status.tasks[0].usage = Some(borealis_core::TaskUsage {
            cpu_time_ms: 1_234,
            peak_memory_bytes: 56 << 20,
            disk_bytes: 3 << 30,
        });
        status.tasks.push(TaskInfoView {
            task_id: 0x77,
            instance: 2,
            state: Some(TaskState::Pending),
            exit_code: -1,
            pending_reason: "Insufficient resources: ram".into(),
            ..TaskInfoView::default()
        });
        status
    }

    #[test]
    fn status_shows_pending_reasons_and_preemptors() {
        let status = pending_and_preempted();
        assert_eq!(
            status_text(&status),
            "r/e/n (ad-hoc, 3 instances): RUNNING 1, FINISHED 1\n\
             INSTANCE  TASK ID           STATE    HOST  EXIT  CPU    MEM      SANDBOX    NOTE\n\
             0         00000000deadbeef  RUNNING  h1    -     -      -        /path      -\n\
             1         0000000000001234  KILLED   a2    0     1.23s  56.0MiB  /var/sb/2  preempted by 6b08000001000002\n\
             2         0000000000000077  PENDING  -     -     -      -        -          Insufficient resources: ram\n"
        );
        let got: serde_json::Value = serde_json::from_str(&status_json(&status)).unwrap();
        assert_eq!(got["tasks"][0]["pending_reason"], "");
        assert_eq!(got["tasks"][0]["preempted_by"], serde_json::Value::Null);
        assert_eq!(got["tasks"][1]["preempted_by"], "6b08000001000002");
        assert_eq!(
            got["tasks"][2]["pending_reason"],
            "Insufficient resources: ram"
        );
        assert_eq!(got["tasks"][2]["state"], "PENDING");
        // The killed task's usage, whole; none for the others.
        assert_eq!(
            got["tasks"][1]["usage"],
            json!({"cpu_time_ms": 1234, "peak_memory_bytes": 58_720_256, "disk_bytes": 3_221_225_472u64})
        );
        assert_eq!(got["tasks"][0]["usage"], serde_json::Value::Null);
        assert_eq!(got["tasks"][2]["usage"], serde_json::Value::Null);
        let text = status_json(&status);
        assert!(
            text.contains(r#""preempted_by":"6b08000001000002","usage":{"cpu_time_ms":1234,"peak_memory_bytes":58720256,"disk_bytes":3221225472},"events":[{"unix_ms":1700000000000,"state":"FINISHED","message":"exited 0"}]}"#),
            "{text}"
        );
    }

    #[test]
    fn usage_reads_as_seconds_and_binary_units() {
        let cases = [
            (0, "0.00s"),
            (9, "0.00s"),
            (1_234, "1.23s"),
            (60_000, "60.00s"),
            (3_600_999, "3600.99s"),
        ];
        for (ms, text) in cases {
            assert_eq!(cpu_time_text(ms), text, "{ms} ms");
        }
        let cases = [
            (0, "0B"),
            (1023, "1023B"),
            (1024, "1.0KiB"),
            (1536, "1.5KiB"),
            ((1 << 20) - 1, "1.0MiB"),
            (56 << 20, "56.0MiB"),
            ((3 << 30) + (1 << 29), "3.5GiB"),
            (5 << 40, "5.0TiB"),
            (u64::MAX, "16.0EiB"),
        ];
        for (bytes, text) in cases {
            assert_eq!(bytes_text(bytes), text, "{bytes} bytes");
        }
    }

    #[test]
    fn status_round_trips_notes_over_the_wire() {
        let (addr, server) = fake_scheduler(|_, id| {
            frame_of(&[Encoder::new()
                .job_status(id, &pending_and_preempted())
                .to_vec()])
        });
        let status = Client::connect(&addr)
            .unwrap()
            .job_status(&"r/e/n".parse().unwrap())
            .unwrap();
        assert_eq!(status, pending_and_preempted());
        server.join().unwrap();
    }

    #[test]
    fn job_files_say_whether_they_name_a_tier() {
        let base = "instances = 1\ncommand = \"true\"\n";
        let resources = "[resources]\ncpu = 1\nram = \"1MiB\"\ndisk = \"1MiB\"\n";
        assert!(!names_tier(&format!("{base}{resources}")));
        assert!(names_tier(&format!(
            "{base}tier = \"preemptible\"\n{resources}"
        )));
        // A default spelled out is still a choice.
        assert!(names_tier(&format!(
            "{base}tier = \"preferred\"\n{resources}"
        )));
        // Only the top-level key counts, not a word in a command or another table.
        assert!(!names_tier(&format!(
            "instances = 1\ncommand = \"echo tier = 1\"\n{resources}[[constraints]]\nattribute = \"tier\"\nlimit = 1\n"
        )));
        assert!(!names_tier(include_str!("../../examples/hello.toml")));
    }

    #[test]
    fn create_sends_tier_unset_when_the_file_names_no_tier() {
        let dir = tempfile::tempdir().unwrap();
        let base = "instances = 2\ncommand = \"true\"\n";
        let resources = "[resources]\ncpu = 0.5\nram = \"64MiB\"\ndisk = \"64MiB\"\n";
        for (tier_line, tier_unset, tier) in [
            ("", true, borealis_core::Tier::Preferred),
            (
                "tier = \"revocable\"\n",
                false,
                borealis_core::Tier::Revocable,
            ),
        ] {
            let file = dir.path().join("job.toml");
            std::fs::write(&file, format!("{base}{tier_line}{resources}")).unwrap();
            let (addr, server) =
                fake_scheduler(|_, id| frame_of(&[Encoder::new().ack(id).to_vec()]));
            let out = run_job_command(
                &addr,
                JobCommand::Create {
                    job_key: "www/devel/hello".into(),
                    file: file.clone(),
                },
            );
            out.unwrap();
            match server.join().unwrap() {
                OwnedMessage::CreateJob {
                    config,
                    tier_unset: sent,
                    instances,
                    ..
                } => {
                    assert_eq!((sent, config.tier, instances), (tier_unset, tier, 2));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn quota_sizes_and_cpu_parse_like_job_files() {
        assert_eq!(parse_quota_size("--ram", "4GiB").unwrap(), 4096);
        assert_eq!(parse_quota_size("--ram", "4GB").unwrap(), 4096);
        assert_eq!(parse_quota_size("--ram", "512MiB").unwrap(), 512);
        assert_eq!(parse_quota_size("--ram", "512 MiB").unwrap(), 512);
        assert_eq!(parse_quota_size("--disk", "1TiB").unwrap(), 1 << 20);
        assert_eq!(parse_quota_size("--disk", "1KiB").unwrap(), 1, "rounded up");
        assert_eq!(parse_quota_size("--disk", "0").unwrap(), 0);
        assert_eq!(parse_quota_size("--disk", "0GiB").unwrap(), 0);
        for (text, error) in [
            (
                "512",
                r#"invalid --ram "512": expected an integer and a unit, one of B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB), e.g. "512MiB""#,
            ),
            (
                "1.5GiB",
                r#"invalid --ram "1.5GiB": expected an integer and a unit, one of B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB), e.g. "512MiB""#,
            ),
            (
                "-1GiB",
                r#"invalid --ram "-1GiB": expected an integer and a unit, one of B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB), e.g. "512MiB""#,
            ),
            (
                "5000TiB",
                r#"invalid --ram "5000TiB": must be at most 4294967295MiB"#,
            ),
        ] {
            assert_eq!(
                parse_quota_size("--ram", text).unwrap_err().to_string(),
                error
            );
        }
        assert_eq!(parse_quota_cpu("4").unwrap(), 4000);
        assert_eq!(parse_quota_cpu("1.5").unwrap(), 1500);
        assert_eq!(parse_quota_cpu("0.0005").unwrap(), 1, "nearest thousandth");
        assert_eq!(parse_quota_cpu("0").unwrap(), 0);
        for text in ["-1", "x", "NaN", "inf", ""] {
            let error = parse_quota_cpu(text).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("invalid --cpu {text:?}: ")),
                "{error}"
            );
        }
        assert_eq!(
            parse_quota_cpu("5000000").unwrap_err().to_string(),
            r#"invalid --cpu "5000000": must be at most 4294967 cores"#
        );
        assert!(check_role("www-data_1.x").is_ok());
        assert_eq!(
            check_role("a/b").unwrap_err().to_string(),
            r#"invalid role "a/b": must be 1..=128 characters of [A-Za-z0-9_.-]"#
        );
        assert!(check_role("").is_err());
    }

    fn www_quota() -> QuotaView {
        QuotaView {
            role: "www".into(),
            quota: Resources {
                cpu_millis: 4000,
                ram_mib: 8192,
                disk_mib: 10_240,
                ports: 0,
            },
            used: Resources {
                cpu_millis: 1500,
                ram_mib: 3072,
                disk_mib: 0,
                ports: 0,
            },
            quota_set: true,
        }
    }

    #[test]
    fn quota_output_has_the_documented_shape() {
        assert_eq!(
            quota_text(&www_quota()),
            "role www: cpu 1.500 of 4.000 cores, ram 3072 of 8192 MiB, disk 0 of 10240 MiB\n"
        );
        let unset = QuotaView {
            role: "www".into(),
            quota_set: false,
            ..QuotaView::default()
        };
        assert_eq!(
            quota_text(&unset),
            "role www: no quota set (production jobs are refused)\n"
        );
        let got: serde_json::Value = serde_json::from_str(&quota_json(&www_quota())).unwrap();
        assert_eq!(
            got,
            json!({
                "role": "www",
                "quota": {"cpu": 4.0, "ram_mib": 8192, "disk_mib": 10240},
                "used": {"cpu": 1.5, "ram_mib": 3072, "disk_mib": 0},
                "quota_set": true
            })
        );
        assert_eq!(
            quota_json(&unset),
            r#"{"role":"www","quota":{"cpu":0.0,"ram_mib":0,"disk_mib":0},"used":{"cpu":0.0,"ram_mib":0,"disk_mib":0},"quota_set":false}"#
        );
    }

    #[test]
    fn quota_commands_send_what_was_asked() {
        let (addr, server) = fake_scheduler(|_, id| frame_of(&[Encoder::new().ack(id).to_vec()]));
        run_quota_command(
            &addr,
            QuotaCommand::Set {
                role: "www".into(),
                cpu: "4".into(),
                ram: "8GiB".into(),
                disk: "10GiB".into(),
            },
        )
        .unwrap();
        assert_eq!(
            server.join().unwrap(),
            OwnedMessage::SetQuota {
                role: "www".into(),
                quota: www_quota().quota
            }
        );

        let (addr, server) = fake_scheduler(|_, id| {
            frame_of(&[Encoder::new().quota_info(id, &www_quota()).to_vec()])
        });
        assert_eq!(
            Client::connect(&addr).unwrap().get_quota("www").unwrap(),
            www_quota()
        );
        assert_eq!(
            server.join().unwrap(),
            OwnedMessage::GetQuota { role: "www".into() }
        );

        // Refusals are one line, with their code.
        let (addr, server) = fake_scheduler(|_, id| {
            frame_of(&[Encoder::new()
                .error(id, ErrorCode::InvalidRequest, "quota below current use")
                .to_vec()])
        });
        let error = run_quota_command(
            &addr,
            QuotaCommand::Set {
                role: "www".into(),
                cpu: "0".into(),
                ram: "0".into(),
                disk: "0".into(),
            },
        )
        .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "scheduler refused: quota below current use"
        );
        server.join().unwrap();

        // An Ack to GetQuota is a protocol error, not a quota.
        let (addr, server) = fake_scheduler(|_, id| frame_of(&[Encoder::new().ack(id).to_vec()]));
        let error = Client::connect(&addr)
            .unwrap()
            .get_quota("www")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "scheduler answered GetQuota with an unexpected Ack message"
        );
        server.join().unwrap();

        // Local mistakes are reported before connecting.
        let closed = closed_port();
        for (cmd, expected) in [
            (
                QuotaCommand::Get {
                    role: "no/role".into(),
                    json: false,
                },
                r#"invalid role "no/role": must be 1..=128 characters of [A-Za-z0-9_.-]"#,
            ),
            (
                QuotaCommand::Set {
                    role: "www".into(),
                    cpu: "1".into(),
                    ram: "lots".into(),
                    disk: "1GiB".into(),
                },
                r#"invalid --ram "lots": expected an integer and a unit, one of B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB), e.g. "512MiB""#,
            ),
        ] {
            let error = run_quota_command(&closed, cmd).unwrap_err();
            assert_eq!(format!("{error:#}"), expected);
        }
    }

    /// A port on 127.0.0.1 that nobody listens on (bound, then released).
    fn closed_port() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        addr
    }

    #[test]
    fn unreachable_scheduler_is_one_clear_line() {
        let addr = closed_port();
        let error = Client::connect(&addr).unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            format!("cannot reach scheduler at {addr}: Connection refused")
        );
        let error = run_job_command(&addr, JobCommand::List { json: false }).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("cannot reach scheduler at {addr}: Connection refused")
        );
        let error = Client::connect("no-port-here").unwrap_err().to_string();
        assert!(
            error.starts_with("cannot reach scheduler at no-port-here: "),
            "{error}"
        );
    }

    #[test]
    fn local_mistakes_are_reported_before_connecting() {
        // Nobody listens at `addr`: reaching it would report "cannot reach scheduler".
        let addr = closed_port();
        let dir = std::env::temp_dir().join(format!("borealis-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(
            &bad,
            "instances = 1\ncommand = \"true\"\n[resources]\ncpu = -1\nram = \"1MiB\"\ndisk = \"1MiB\"\n",
        )
        .unwrap();
        let cron = dir.join("cron.toml");
        std::fs::write(
            &cron,
            "instances = 1\ncommand = \"true\"\ncron_schedule = \"@daily\"\n[resources]\ncpu = 1\nram = \"1MiB\"\ndisk = \"1MiB\"\n",
        )
        .unwrap();
        let cases = [
            (
                JobCommand::Create {
                    job_key: "www/prod/hello".into(),
                    file: bad.clone(),
                },
                format!("{}: resources.cpu: must be > 0 (got -1)", bad.display()),
            ),
            (
                JobCommand::Create {
                    job_key: "www/prod/hello".into(),
                    file: cron.clone(),
                },
                "www/prod/hello's file has a cron_schedule: schedule it with `borealis cron \
                 schedule`"
                    .to_string(),
            ),
            (
                JobCommand::Create {
                    job_key: "www/prod/hello".into(),
                    file: dir.join("missing.toml"),
                },
                format!(
                    "cannot read job file {}: No such file or directory",
                    dir.join("missing.toml").display()
                ),
            ),
            (
                JobCommand::Status {
                    job_key: "www/hello".into(),
                    json: false,
                },
                r#"job key "www/hello" must have the form role/environment/name"#.to_string(),
            ),
            (
                JobCommand::Kill {
                    job_key: "www/prod/hello".into(),
                    instances: Some("3-1".into()),
                },
                r#"invalid instances "3-1": range "3-1" ends before it starts"#.to_string(),
            ),
        ];
        for (cmd, expected) in cases {
            let error = run_job_command(&addr, cmd).unwrap_err();
            assert_eq!(format!("{error:#}"), expected);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A scheduler stand-in on 127.0.0.1:0 that answers one request: `respond` gets the
    /// request and its id and returns the frames' bytes to send. Returns the address and a
    /// handle that yields the request it saw.
    pub(crate) fn fake_scheduler(
        respond: impl FnOnce(&OwnedMessage, u64) -> Vec<u8> + Send + 'static,
    ) -> (String, thread::JoinHandle<OwnedMessage>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut decoder = FrameDecoder::new();
            let mut buf = [0u8; 4096];
            let frame = loop {
                if let Some(frame) = decoder.next_frame().unwrap() {
                    break frame;
                }
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "client closed before sending a request");
                decoder.extend(&buf[..n]);
            };
            let messages = split_messages(frame).unwrap();
            assert_eq!(messages.len(), 1, "one request per frame");
            let (request_id, request) = to_owned(decode_message(&messages[0]).unwrap()).unwrap();
            assert_ne!(request_id, 0, "a request carries a request id");
            stream.write_all(&respond(&request, request_id)).unwrap();
            request
        });
        (addr, handle)
    }

    pub(crate) fn frame_of(messages: &[Vec<u8>]) -> Vec<u8> {
        let mut writer = FrameWriter::new();
        for m in messages {
            writer.push(m).unwrap();
        }
        writer.take()
    }

    #[test]
    fn server_error_is_refused_end_to_end() {
        let (addr, server) = fake_scheduler(|_, id| {
            frame_of(&[Encoder::new()
                .error(id, ErrorCode::UnknownJob, "unknown job www/prod/nope")
                .to_vec()])
        });
        let error = run_job_command(
            &addr,
            JobCommand::Status {
                job_key: "www/prod/nope".into(),
                json: true,
            },
        )
        .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "scheduler refused: unknown job www/prod/nope"
        );
        assert_eq!(
            error.downcast_ref::<Refused>().map(|r| r.code),
            Some(ErrorCode::UnknownJob)
        );
        assert_eq!(
            server.join().unwrap(),
            OwnedMessage::QueryJob {
                job_key: "www/prod/nope".parse().unwrap()
            }
        );
    }

    #[test]
    fn response_is_matched_by_request_id() {
        // The response comes after an unrelated message, split over two frames.
        let (addr, server) = fake_scheduler(|_, id| {
            let mut enc = Encoder::new();
            let mut bytes = frame_of(&[enc.heartbeat(5).to_vec(), enc.ack(id + 100).to_vec()]);
            bytes.extend(frame_of(&[enc.job_status(id, &sample_status()).to_vec()]));
            bytes
        });
        let mut client = Client::connect(&addr).unwrap();
        let status = client.job_status(&"r/e/n".parse().unwrap()).unwrap();
        assert_eq!(status, sample_status());
        server.join().unwrap();
    }

    #[test]
    fn create_and_kill_send_what_was_asked() {
        let spec = borealis_core::jobfile::parse_job_file(
            "www/prod/hello".parse().unwrap(),
            include_str!("../../examples/hello.toml"),
        )
        .unwrap();
        let (addr, server) = fake_scheduler(|_, id| frame_of(&[Encoder::new().ack(id).to_vec()]));
        Client::connect(&addr)
            .unwrap()
            .create_job(&spec, true)
            .unwrap();
        assert_eq!(
            server.join().unwrap(),
            OwnedMessage::CreateJob {
                job_key: spec.config.job.clone(),
                instances: 5,
                config: spec.config.clone(),
                tier_unset: false,
            }
        );

        let (addr, server) = fake_scheduler(|_, id| frame_of(&[Encoder::new().ack(id).to_vec()]));
        let job = "www/prod/hello".parse().unwrap();
        Client::connect(&addr)
            .unwrap()
            .kill_job(&job, &[0, 1, 7])
            .unwrap();
        assert_eq!(
            server.join().unwrap(),
            OwnedMessage::KillJob {
                job_key: job,
                instances: vec![0, 1, 7]
            }
        );
    }

    #[test]
    fn wrong_response_and_early_close_are_errors() {
        let (addr, server) = fake_scheduler(|_, id| frame_of(&[Encoder::new().ack(id).to_vec()]));
        let error = Client::connect(&addr).unwrap().list_jobs().unwrap_err();
        assert_eq!(
            error.to_string(),
            "scheduler answered ListJobs with an unexpected Ack message"
        );
        server.join().unwrap();

        let (addr, server) = fake_scheduler(|_, _| Vec::new());
        let error = Client::connect(&addr).unwrap().list_jobs().unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("scheduler at {addr} closed the connection before responding")
        );
        server.join().unwrap();
    }

    /// Reads one request from `stream`: its id and message.
    fn read_request(stream: &mut TcpStream) -> (u64, OwnedMessage) {
        let mut decoder = FrameDecoder::new();
        let mut buf = [0u8; 4096];
        let frame = loop {
            if let Some(frame) = decoder.next_frame().unwrap() {
                break frame;
            }
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "client closed before sending a request");
            decoder.extend(&buf[..n]);
        };
        let messages = split_messages(frame).unwrap();
        assert_eq!(messages.len(), 1, "one request per frame");
        let (request_id, request) = to_owned(decode_message(&messages[0]).unwrap()).unwrap();
        (request_id, request)
    }

    /// A follower stand-in on `listener`: answers one request on each of `connections`
    /// connections with `NotLeader` naming `leader`. Yields the requests it saw.
    fn fake_follower(
        listener: TcpListener,
        leader: Option<String>,
        connections: usize,
    ) -> thread::JoinHandle<Vec<OwnedMessage>> {
        thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..connections {
                let (mut stream, _) = listener.accept().unwrap();
                let (id, request) = read_request(&mut stream);
                let text = match &leader {
                    Some(l) => format!("this scheduler is not the leader; the leader is {l}"),
                    None => "this scheduler is not the leader and no leader is known".into(),
                };
                let reply = Encoder::new()
                    .error_with_leader(id, ErrorCode::NotLeader, &text, leader.as_deref())
                    .to_vec();
                stream.write_all(&frame_of(&[reply])).unwrap();
                seen.push(request);
            }
            seen
        })
    }

    fn listener() -> (TcpListener, String) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        (listener, addr)
    }

    fn one_job() -> Vec<JobSummaryView> {
        vec![JobSummaryView {
            job_key: "www/prod/web".into(),
            instances: 3,
            is_service: true,
            state_counts: counts(&[(TaskState::Running, 3)]),
            cron: None,
            update: None,
        }]
    }

    #[test]
    fn a_follower_redirects_to_the_leader_it_names() {
        let (leader, leader_server) =
            fake_scheduler(|_, id| frame_of(&[Encoder::new().job_list(id, &one_job()).to_vec()]));
        let (follower_listener, follower) = listener();
        let follower_server = fake_follower(follower_listener, Some(leader.clone()), 1);
        let mut client = Client::connect(&follower).unwrap();
        assert_eq!(client.list_jobs().unwrap(), one_job());
        assert_eq!(client.addr, leader, "the client now talks to the leader");
        let first_page = OwnedMessage::ListJobs {
            after: String::new(),
            limit: LIST_PAGE_MAX,
        };
        assert_eq!(follower_server.join().unwrap(), vec![first_page.clone()]);
        assert_eq!(leader_server.join().unwrap(), first_page);

        // A change is sent again, whole, to the leader.
        let spec = borealis_core::jobfile::parse_job_file(
            "www/prod/hello".parse().unwrap(),
            include_str!("../../examples/hello.toml"),
        )
        .unwrap();
        let (leader, leader_server) =
            fake_scheduler(|_, id| frame_of(&[Encoder::new().ack(id).to_vec()]));
        let (follower_listener, follower) = listener();
        let follower_server = fake_follower(follower_listener, Some(leader), 1);
        run_job_command(
            &follower,
            JobCommand::Kill {
                job_key: "www/prod/hello".into(),
                instances: Some("1".into()),
            },
        )
        .unwrap();
        let kill = OwnedMessage::KillJob {
            job_key: spec.config.job.clone(),
            instances: vec![1],
        };
        assert_eq!(follower_server.join().unwrap(), vec![kill.clone()]);
        assert_eq!(leader_server.join().unwrap(), kill);
    }

    #[test]
    fn no_known_leader_is_one_clear_line() {
        let (follower_listener, follower) = listener();
        let server = fake_follower(follower_listener, None, 1);
        let error = run_job_command(&follower, JobCommand::List { json: false }).unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            format!("no leader is known: the scheduler at {follower} is not the leader and knows of none")
        );
        server.join().unwrap();

        // Every listed scheduler is asked before giving up.
        let (a_listener, a) = listener();
        let (b_listener, b) = listener();
        let a_server = fake_follower(a_listener, None, 1);
        let b_server = fake_follower(b_listener, None, 1);
        let error = Client::connect(&format!("{a},{b}"))
            .unwrap()
            .list_jobs()
            .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            format!("no leader is known: the schedulers at {a}, {b} are not the leader and know of none")
        );
        a_server.join().unwrap();
        b_server.join().unwrap();
    }

    #[test]
    fn a_list_of_schedulers_is_tried_until_one_answers() {
        // Unreachable, then a follower that knows no leader, then the leader.
        let dead = closed_port();
        let (follower_listener, follower) = listener();
        let follower_server = fake_follower(follower_listener, None, 1);
        let (leader, leader_server) =
            fake_scheduler(|_, id| frame_of(&[Encoder::new().job_list(id, &one_job()).to_vec()]));
        let list = format!("{dead}, {follower},{leader}");
        assert_eq!(
            Client::connect(&list).unwrap().list_jobs().unwrap(),
            one_job()
        );
        follower_server.join().unwrap();
        leader_server.join().unwrap();

        // A stale leader name (nobody there): the next listed scheduler is asked.
        let (follower_listener, follower) = listener();
        let follower_server = fake_follower(follower_listener, Some(dead.clone()), 1);
        let (leader, leader_server) =
            fake_scheduler(|_, id| frame_of(&[Encoder::new().job_list(id, &one_job()).to_vec()]));
        let mut client = Client::connect(&format!("{follower},{leader}")).unwrap();
        assert_eq!(client.list_jobs().unwrap(), one_job());
        follower_server.join().unwrap();
        leader_server.join().unwrap();

        // With nothing else listed, the stale name is the error.
        let (follower_listener, follower) = listener();
        let follower_server = fake_follower(follower_listener, Some(dead.clone()), 1);
        let error = Client::connect(&follower).unwrap().list_jobs().unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            format!(
                "the scheduler at {follower} named {dead} as the leader: cannot reach scheduler \
                 at {dead}: Connection refused"
            )
        );
        follower_server.join().unwrap();

        // Nobody reachable at all.
        let other = closed_port();
        let error = Client::connect(&format!("{dead},{other}")).unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            format!(
                "cannot reach any scheduler of {dead},{other}: {dead}: Connection refused; \
                 {other}: Connection refused"
            )
        );
    }

    #[test]
    fn redirects_are_bounded() {
        // A follower that names itself: one request, then LEADER_HOPS_MAX redirects.
        let (follower_listener, follower) = listener();
        let server = fake_follower(
            follower_listener,
            Some(follower.clone()),
            1 + LEADER_HOPS_MAX,
        );
        let error = Client::connect(&follower).unwrap().list_jobs().unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            format!(
                "no leader reached after following 3 redirects; the scheduler at {follower} \
                 says: this scheduler is not the leader; the leader is {follower}"
            )
        );
        assert_eq!(server.join().unwrap().len(), 1 + LEADER_HOPS_MAX);
    }
}

/// Issue 12: lists come a page at a time and a big job status in parts; the client puts them
/// together, against fake schedulers and against real shards in this process.
#[cfg(test)]
mod paging_tests {
    use super::tests::{fake_scheduler, frame_of};
    use super::*;
    use borealis_net::codec::JOB_STATUS_PART_BYTES;
    use borealis_net::views::TaskInfoView;
    use borealis_net::MESSAGE_BYTES_MAX;
    use std::net::TcpListener;
    use std::thread;

    fn summary(key: &str) -> JobSummaryView {
        JobSummaryView {
            job_key: key.into(),
            instances: 1,
            ..JobSummaryView::default()
        }
    }

    /// A scheduler stand-in that answers every request on one connection until it closes:
    /// `ListJobs` with pages of at most `page` of `jobs` (sorted), `ListAgents` likewise of
    /// `agents`. Yields what each request asked for.
    fn fake_pager(
        mut jobs: Vec<JobSummaryView>,
        mut agents: Vec<AgentInfoView>,
        page: usize,
    ) -> (String, thread::JoinHandle<Vec<OwnedMessage>>) {
        jobs.sort_by(|a, b| a.job_key.cmp(&b.job_key));
        agents.sort_by(|a, b| (&a.hostname, &a.agent_id).cmp(&(&b.hostname, &b.agent_id)));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut decoder = FrameDecoder::new();
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            loop {
                let Some(frame) = decoder.next_frame().unwrap() else {
                    let n = stream.read(&mut buf).unwrap();
                    if n == 0 {
                        return seen;
                    }
                    decoder.extend(&buf[..n]);
                    continue;
                };
                for bytes in split_messages(frame).unwrap() {
                    let (id, request) = to_owned(decode_message(&bytes).unwrap()).unwrap();
                    let mut enc = Encoder::new();
                    let reply = match &request {
                        OwnedMessage::ListJobs { after, limit } => {
                            let n = page.min(*limit as usize);
                            let rest: Vec<_> = jobs
                                .iter()
                                .filter(|j| j.job_key > *after)
                                .cloned()
                                .collect();
                            let chunk = &rest[..n.min(rest.len())];
                            let next = if rest.len() > n {
                                chunk.last().unwrap().job_key.as_str()
                            } else {
                                ""
                            };
                            enc.job_list_page(id, chunk, next).to_vec()
                        }
                        OwnedMessage::ListAgents { after, limit } => {
                            let n = page.min(*limit as usize);
                            let rest: Vec<_> = agents
                                .iter()
                                .filter(|a| {
                                    after
                                        .as_ref()
                                        .is_none_or(|(h, id)| (&a.hostname, &a.agent_id) > (h, id))
                                })
                                .cloned()
                                .collect();
                            let chunk = &rest[..n.min(rest.len())];
                            let next = (rest.len() > n).then(|| {
                                let last = chunk.last().unwrap();
                                (last.hostname.as_str(), last.agent_id.as_str())
                            });
                            enc.agent_list_page(id, chunk, next).to_vec()
                        }
                        other => panic!("unexpected request {other:?}"),
                    };
                    stream.write_all(&frame_of(&[reply])).unwrap();
                    seen.push(request);
                }
            }
        });
        (addr, handle)
    }

    #[test]
    fn list_jobs_follows_the_pages_to_the_last() {
        let jobs: Vec<JobSummaryView> = (0..25)
            .rev()
            .map(|i| summary(&format!("www/prod/job{i:02}")))
            .collect();
        let (addr, server) = fake_pager(jobs.clone(), Vec::new(), 10);
        let mut client = Client::connect(&addr).unwrap();
        let listed = client.list_jobs().unwrap();
        let mut expected = jobs;
        expected.sort_by(|a, b| a.job_key.cmp(&b.job_key));
        assert_eq!(listed, expected, "every job once, in key order");
        // And one page by hand.
        let page = client.list_jobs_page("www/prod/job07", 5).unwrap();
        assert_eq!(page.jobs, expected[8..13]);
        assert_eq!(page.next.as_deref(), Some("www/prod/job12"));
        drop(client);
        let asked: Vec<String> = server
            .join()
            .unwrap()
            .into_iter()
            .map(|m| match m {
                OwnedMessage::ListJobs { after, limit } => format!("{after}:{limit}"),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            asked,
            [
                ":10000",
                "www/prod/job09:10000",
                "www/prod/job19:10000",
                "www/prod/job07:5"
            ]
        );
    }

    #[test]
    fn list_agents_follows_the_pages_to_the_last() {
        let agents: Vec<AgentInfoView> = (0..7)
            .map(|i| AgentInfoView {
                agent_id: format!("a{}", i % 2),
                hostname: format!("h{}", i / 2),
                ..AgentInfoView::default()
            })
            .collect();
        let (addr, server) = fake_pager(Vec::new(), agents.clone(), 3);
        let listed = Client::connect(&addr).unwrap().list_agents().unwrap();
        let keys: Vec<(String, String)> = listed
            .iter()
            .map(|a| (a.hostname.clone(), a.agent_id.clone()))
            .collect();
        let mut expected: Vec<(String, String)> = agents
            .iter()
            .map(|a| (a.hostname.clone(), a.agent_id.clone()))
            .collect();
        expected.sort();
        assert_eq!(keys, expected);
        assert_eq!(server.join().unwrap().len(), 3, "pages of 3, 3 and 1");
    }

    #[test]
    fn a_next_page_that_does_not_go_on_is_an_error_not_a_loop() {
        let (addr, server) = fake_scheduler(|_, id| {
            frame_of(&[Encoder::new()
                .job_list_page(id, &[summary("www/prod/a")], "www/prod/a")
                .to_vec()])
        });
        let mut client = Client::connect(&addr).unwrap();
        // The first page goes on from "www/prod/a"; then the (now closed) fake ends it.
        assert!(client.list_jobs().is_err());
        server.join().unwrap();
        let (addr, server) = fake_scheduler(|_, id| {
            frame_of(&[Encoder::new()
                .job_list_page(id, &[summary("www/prod/a")], "www/prod/a")
                .to_vec()])
        });
        let page = Client::connect(&addr)
            .unwrap()
            .list_jobs_page("www/prod/b", 3)
            .unwrap();
        assert_eq!(page.next.as_deref(), Some("www/prod/a"));
        server.join().unwrap();
        let (addr, _server) = fake_pager_stuck();
        let error = Client::connect(&addr).unwrap().list_jobs().unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "scheduler at {addr} answered ListJobs after \"www/prod/a\" with a next page \
                 after \"www/prod/a\", which does not go on"
            )
        );
    }

    /// A scheduler stand-in whose every page says the next one is after "www/prod/a".
    fn fake_pager_stuck() -> (String, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut decoder = FrameDecoder::new();
            let mut buf = [0u8; 4096];
            loop {
                let Some(frame) = decoder.next_frame().unwrap() else {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => decoder.extend(&buf[..n]),
                    }
                    continue;
                };
                for bytes in split_messages(frame).unwrap() {
                    let id = decode_message(&bytes).unwrap().request_id();
                    let reply = Encoder::new().job_list_page(id, &[], "www/prod/a").to_vec();
                    if stream.write_all(&frame_of(&[reply])).is_err() {
                        return;
                    }
                }
            }
        });
        (addr, handle)
    }

    fn big_task(instance: u32) -> TaskInfoView {
        TaskInfoView {
            task_id: 7_000 + u64::from(instance),
            instance,
            state: Some(TaskState::Running),
            agent_id: format!("agent-{instance}"),
            hostname: format!("host-{instance}"),
            message: format!("{instance:m<1024}"),
            sandbox: format!("/sandboxes/{instance:s<4000}"),
            ..TaskInfoView::default()
        }
    }

    #[test]
    fn a_job_status_in_parts_comes_back_whole() {
        let status = JobStatusView {
            job: summary("www/prod/big"),
            tasks: (0..4_000).map(big_task).collect(),
        };
        assert!(Encoder::new().job_status(1, &status).len() > MESSAGE_BYTES_MAX);
        let expected = status.clone();
        let (addr, server) = fake_scheduler(move |_, id| {
            let parts = Encoder::new().job_status_parts(
                id,
                &status.job,
                &status.tasks,
                JOB_STATUS_PART_BYTES,
            );
            assert!(parts.len() > 4, "{} parts", parts.len());
            // Each part in a frame of its own, with another request's message between two.
            let mut bytes = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                bytes.extend(frame_of(std::slice::from_ref(part)));
                if i == 1 {
                    bytes.extend(frame_of(&[Encoder::new().ack(id + 100).to_vec()]));
                }
            }
            bytes
        });
        let got = Client::connect(&addr)
            .unwrap()
            .job_status(&"www/prod/big".parse().unwrap())
            .unwrap();
        assert_eq!(got, expected);
        server.join().unwrap();
    }

    // ---------------------------------------------------------------- real shards

    /// A scheduler of `shards` shards in this process: in memory, no agents.
    fn scheduler(shards: usize, extra: &[&str]) -> borealis_shards::Scheduler {
        let shards = shards.to_string();
        let argv = [
            "borealis",
            "scheduler",
            "--in-memory",
            "--ip",
            "127.0.0.1",
            "--port",
            "0",
            "--no-pin",
            "--shards",
            &shards,
        ]
        .into_iter()
        .chain(extra.iter().copied());
        use clap::Parser as _;
        let crate::Command::Scheduler(args) = crate::Cli::try_parse_from(argv).unwrap().command
        else {
            panic!("a scheduler command");
        };
        borealis_shards::start(args.to_config().unwrap(), None).unwrap()
    }

    fn raw_connect(addr: std::net::SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream
    }

    /// Sends `messages` in frames and reads `count` answers (request id, message).
    fn exchange(
        stream: &mut TcpStream,
        messages: &[Vec<u8>],
        count: usize,
    ) -> Vec<(u64, OwnedMessage)> {
        let mut writer = FrameWriter::new();
        for m in messages {
            writer.push(m).unwrap();
        }
        stream.write_all(&writer.take()).unwrap();
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut out = Vec::new();
        while out.len() < count {
            while let Some(frame) = decoder.next_frame().unwrap() {
                for bytes in split_messages(frame).unwrap() {
                    out.push(to_owned(decode_message(&bytes).unwrap()).unwrap());
                }
            }
            if out.len() >= count {
                break;
            }
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "the scheduler closed the connection");
            decoder.extend(&buf[..n]);
        }
        out
    }

    /// The longest job keys there are (386 bytes), `count` of them, in an allowed environment.
    fn long_key(i: usize) -> String {
        let role = format!("{:r<120}{:08}", "role", i % 13);
        let env = format!("staging{:0>121}", i % 3);
        let name = format!("{:n<120}{i:08}", "job");
        format!("{role}/{env}/{name}")
    }

    /// Creates the jobs (one instance each), many requests to a frame.
    fn create_jobs(addr: std::net::SocketAddr, keys: &[String]) {
        let spec = parse_job_file(
            "www/prod/hello".parse().unwrap(),
            include_str!("../../examples/hello.toml"),
        )
        .unwrap();
        let mut stream = raw_connect(addr);
        let mut enc = Encoder::new();
        for (batch, chunk) in keys.chunks(2_000).enumerate() {
            let messages: Vec<Vec<u8>> = chunk
                .iter()
                .enumerate()
                .map(|(i, key)| {
                    let mut config = spec.config.clone();
                    config.job = key.parse().unwrap();
                    enc.create_job_spec((batch * 2_000 + i + 1) as u64, 1, &config, false)
                        .to_vec()
                })
                .collect();
            for (id, answer) in exchange(&mut stream, &messages, messages.len()) {
                assert_eq!(answer, OwnedMessage::Ack, "create {id}");
            }
        }
    }

    #[test]
    fn forty_thousand_long_keyed_jobs_list_through_pages_each_once_in_order() {
        let scheduler = scheduler(2, &[]);
        let mut keys: Vec<String> = (0..40_000).map(long_key).collect();
        assert!(keys.iter().all(|k| k.len() == 386));
        create_jobs(scheduler.addr, &keys);
        keys.sort();

        let mut client = Client::connect(&scheduler.addr.to_string()).unwrap();
        let jobs = client.list_jobs().unwrap();
        let listed: Vec<&str> = jobs.iter().map(|j| j.job_key.as_str()).collect();
        assert_eq!(listed.len(), keys.len());
        assert!(
            listed.iter().zip(&keys).all(|(a, b)| a == b),
            "each once, in order"
        );
        // What one ListJobs answered before paging: no frame can carry it.
        let one_reply = Encoder::new().job_list(1, &jobs).len();
        assert!(one_reply > MESSAGE_BYTES_MAX, "{one_reply} bytes");

        // A page of the default size, and one of the most (a larger limit is clamped).
        let page = client.list_jobs_page("", 0).unwrap();
        assert_eq!(page.jobs.len(), 1_000);
        assert_eq!(page.next.as_deref(), Some(keys[999].as_str()));
        let page = client.list_jobs_page(&keys[100], u32::MAX).unwrap();
        assert_eq!(page.jobs.len(), 10_000);
        assert_eq!(page.jobs[0].job_key, keys[101]);
        let last = client.list_jobs_page(&keys[39_990], 100).unwrap();
        assert_eq!(last.jobs.len(), 9);
        assert_eq!(last.next, None);
    }

    #[test]
    fn the_seventeenth_list_in_flight_on_a_connection_is_refused() {
        let scheduler = scheduler(2, &[]);
        let mut stream = raw_connect(scheduler.addr);
        let mut enc = Encoder::new();
        // One frame: the shard takes all 17 in one go, before any other shard's part is back.
        let requests: Vec<Vec<u8>> = (1..=17).map(|id| enc.list_jobs(id).to_vec()).collect();
        let mut answers = exchange(&mut stream, &requests, 17);
        answers.sort_by_key(|(id, _)| *id);
        for (id, answer) in &answers[..16] {
            assert!(
                matches!(answer, OwnedMessage::JobList { jobs, next } if jobs.is_empty() && next.is_empty()),
                "request {id}: {answer:?}"
            );
        }
        assert_eq!(
            answers[16],
            (
                17,
                OwnedMessage::Error {
                    code: ErrorCode::Overloaded,
                    message: "too many cluster-wide requests in flight on this connection: at \
                              most 16 at once (GATHERS_PER_CONN_MAX); read their answers before \
                              sending more"
                        .into(),
                    leader: None,
                }
            )
        );
        let refused: u64 = scheduler
            .metrics
            .shards
            .iter()
            .map(|s| s.gathers_refused_total.get())
            .sum();
        assert_eq!(refused, 1);
        assert!(scheduler
            .metrics
            .render_text()
            .contains("borealis_gathers_refused_total{shard="));
        // Answered, they are no longer in flight: 16 more are taken.
        let requests: Vec<Vec<u8>> = (18..34).map(|id| enc.list_jobs(id).to_vec()).collect();
        for (id, answer) in exchange(&mut stream, &requests, 16) {
            assert!(
                matches!(answer, OwnedMessage::JobList { .. }),
                "request {id}: {answer:?}"
            );
        }
    }

    #[test]
    fn a_job_status_past_a_frame_comes_from_real_shards_in_parts() {
        const INSTANCES: u32 = 160_000;
        let limit = INSTANCES.to_string();
        let scheduler = scheduler(2, &["--max-tasks-per-job", &limit]);
        let spec = parse_job_file(
            "www/prod/wide".parse().unwrap(),
            include_str!("../../examples/hello.toml"),
        )
        .unwrap();
        let mut client = Client::connect(&scheduler.addr.to_string()).unwrap();
        let response = client
            .request(|enc, id| {
                enc.create_job_spec(id, INSTANCES, &spec.config, false)
                    .to_vec()
            })
            .unwrap();
        assert_eq!(response, OwnedMessage::Ack);
        let status = client.job_status(&spec.config.job).unwrap();
        assert_eq!(status.tasks.len(), INSTANCES as usize);
        assert!(status
            .tasks
            .iter()
            .enumerate()
            .all(|(i, t)| t.instance == i as u32));
        let one_reply = Encoder::new().job_status(1, &status).len();
        assert!(
            one_reply > MESSAGE_BYTES_MAX,
            "{one_reply} bytes in one message"
        );
        // The same job by one of its tasks (QueryTask, gathered): that task only.
        let task = client.query_task(status.tasks[7].task_id).unwrap();
        assert_eq!(task.job.job_key, "www/prod/wide");
        assert_eq!(task.tasks.len(), 1);
        assert_eq!(
            (task.tasks[0].task_id, task.tasks[0].instance),
            (status.tasks[7].task_id, 7)
        );
    }
}
