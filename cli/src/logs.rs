//! `borealis task logs`: a task's stdout or stderr, read from the log server of the agent that
//! runs (or ran) it.
//!
//! The scheduler says where: `QueryTask` names the task's agent, `ListAgents` that agent's
//! log address (its connection's IP and the port it registered). The bytes come from the
//! agent's `GET /tasks/{task_id}/files/{stdout|stderr}?offset=N&length=M` in chunks of at
//! most [`LENGTH_MAX`], over HTTPS when the command has `--tls-ca` (the cluster CA, which
//! signs agents' certificates too), with the command's token as a bearer token.
//! `--follow` polls for more every [`POLL_INTERVAL`] and stops once the task has ended and
//! its file stopped growing.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use borealis_agent::{parse_task_id, HEADER_OFFSET, HEADER_SIZE, LENGTH_MAX};
use borealis_core::TaskId;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::client::{Client, ClientOptions};

/// Between two polls of `--follow`.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Between two checks of the task's state while following.
const STATE_CHECK_INTERVAL: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request to the agent, connection and answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// An answer's body beyond this is refused (a chunk plus room for an error line).
const BODY_BYTES_MAX: usize = LENGTH_MAX as usize + 4096;

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Print a task's stdout (or --stderr) from the agent that runs it; --follow keeps printing
    /// what it writes until it has ended.
    Logs(LogsArgs),
}

#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// The task's id as `job status` prints it (16 hex digits), or 0x-hex, or decimal.
    #[arg(value_parser = parse_task_id_arg)]
    pub task_id: TaskId,
    /// Print stderr instead of stdout.
    #[arg(long)]
    pub stderr: bool,
    /// Keep printing what the task writes, until it has ended and its file stopped growing
    /// (or Ctrl-C).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last BYTES bytes (then, with --follow, what follows) [default: the whole file].
    #[arg(long, value_name = "BYTES")]
    pub tail: Option<u64>,
}

fn parse_task_id_arg(text: &str) -> Result<TaskId, String> {
    parse_task_id(text)
        .ok_or_else(|| format!("{text:?} is not a task id (16 hex digits, 0x-hex or decimal)"))
}

pub fn run(scheduler: &str, command: TaskCommand, options: ClientOptions) -> anyhow::Result<()> {
    match command {
        TaskCommand::Logs(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot build a tokio runtime")?;
            let source = locate(scheduler, args.task_id, args.stderr, &options)?;
            let mut stdout = std::io::stdout().lock();
            // A scheduler out of reach for a while (a failover) does not end the follow.
            let mut ended = |_: &LogSource| match task_ended(scheduler, args.task_id) {
                Ok(ended) => Ok(ended),
                Err(e) => {
                    eprintln!(
                        "(cannot check task {}'s state: {e:#}; still following)",
                        args.task_id
                    );
                    Ok(false)
                }
            };
            let follow = args.follow.then_some(&mut ended as TaskEnded<'_>);
            match runtime.block_on(copy_log(&source, args.tail, follow, &mut stdout)) {
                Err(e) if is_broken_pipe(&e) => Ok(()),
                other => other.map(|_| ()),
            }
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Where a task's file is served, and how to ask.
#[derive(Clone)]
pub struct LogSource {
    pub task_id: TaskId,
    pub file: &'static str,
    pub agent_id: String,
    /// The agent's hostname: the name its certificate is checked against first.
    pub hostname: String,
    pub addr: SocketAddr,
    pub token: Option<String>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Asks the scheduler where `task_id` runs and where that agent serves logs.
fn locate(
    scheduler: &str,
    task_id: TaskId,
    stderr: bool,
    options: &ClientOptions,
) -> anyhow::Result<LogSource> {
    let mut client = Client::connect(scheduler)?;
    let status = client
        .query_task(task_id.0)
        .map_err(|e| anyhow!("cannot find task {task_id}: {e:#}"))?;
    let task = status
        .tasks
        .iter()
        .find(|t| t.task_id == task_id.0)
        .ok_or_else(|| anyhow!("unknown task {task_id}"))?;
    let state = task
        .state
        .map_or("in an unknown state".to_string(), |s| s.to_string());
    if task.agent_id.is_empty() {
        bail!(
            "task {task_id} of {} is {state}: it has no agent, so no logs",
            status.job.job_key
        );
    }
    let agents = client.list_agents()?;
    let agent = agents
        .iter()
        .find(|a| a.agent_id == task.agent_id)
        .ok_or_else(|| {
            anyhow!(
                "agent {} of task {task_id} is not registered with the scheduler",
                task.agent_id
            )
        })?;
    if !agent.connected {
        bail!(
            "agent {} ({}) of task {task_id} is not connected to the scheduler: its logs cannot be read now",
            agent.agent_id,
            agent.hostname
        );
    }
    if agent.log_address.is_empty() {
        bail!(
            "agent {} ({}) serves no logs (it runs with --no-http, or predates the log server)",
            agent.agent_id,
            agent.hostname
        );
    }
    let addr: SocketAddr = agent.log_address.parse().map_err(|_| {
        anyhow!(
            "agent {}: the scheduler gave a bad log address {:?}",
            agent.agent_id,
            agent.log_address
        )
    })?;
    Ok(LogSource {
        task_id,
        file: if stderr { "stderr" } else { "stdout" },
        agent_id: agent.agent_id.clone(),
        hostname: agent.hostname.clone(),
        addr,
        token: options.token.clone(),
        tls: options.tls.clone(),
    })
}

/// Whether the task has ended (a fresh connection each time: a follow may last for hours).
fn task_ended(scheduler: &str, task_id: TaskId) -> anyhow::Result<bool> {
    let status = Client::connect(scheduler)?.query_task(task_id.0)?;
    Ok(status
        .tasks
        .iter()
        .find(|t| t.task_id == task_id.0)
        .is_none_or(|t| t.state.is_some_and(|s| s.is_terminal())))
}

/// One answer of the log server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub data: Bytes,
    pub offset: u64,
    /// The file's size when read.
    pub size: u64,
}

/// The log server's answers other than 200.
#[derive(Debug)]
pub enum FetchError {
    /// 416: the offset is past the end (the file was truncated); its size now.
    PastEnd {
        size: u64,
    },
    Other(anyhow::Error),
}

impl From<anyhow::Error> for FetchError {
    fn from(e: anyhow::Error) -> FetchError {
        FetchError::Other(e)
    }
}

/// `GET ?query` of the source's file.
pub async fn fetch(source: &LogSource, query: &str) -> Result<Chunk, FetchError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fetch_once(source, query)).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Other(anyhow!(
            "the log server of agent {} at {} did not answer within {}s",
            source.agent_id,
            source.addr,
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
}

async fn fetch_once(source: &LogSource, query: &str) -> Result<Chunk, FetchError> {
    let target = format!("/tasks/{}/files/{}?{query}", source.task_id, source.file);
    let Some(config) = &source.tls else {
        let tcp = connect(source).await?;
        return exchange(tcp, source, &target).await;
    };
    // The agent's certificate names its host (`admin certs --agent NAME`) or its address:
    // either will do.
    let mut names = Vec::new();
    if let Ok(name) = rustls::pki_types::ServerName::try_from(source.hostname.clone()) {
        names.push(name);
    }
    names.push(rustls::pki_types::ServerName::IpAddress(
        source.addr.ip().into(),
    ));
    let mut last = None;
    for name in names {
        let tcp = connect(source).await?;
        let shown = format!("{name:?}");
        match tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
        {
            Ok(tls) => return exchange(tls, source, &target).await,
            Err(e) if not_valid_for_name(&e) => last = Some((shown, e)),
            Err(e) => {
                return Err(FetchError::Other(anyhow!(
                    "TLS handshake with the log server of agent {} at {} failed: {e}",
                    source.agent_id,
                    source.addr
                )))
            }
        }
    }
    let (name, e) = last.expect("at least the address was tried");
    Err(FetchError::Other(anyhow!(
        "TLS handshake with the log server of agent {} at {} failed: {e} (checked against {} and {name})",
        source.agent_id,
        source.addr,
        source.hostname
    )))
}

fn not_valid_for_name(e: &std::io::Error) -> bool {
    use rustls::CertificateError;
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        ))
    )
}

async fn connect(source: &LogSource) -> anyhow::Result<TcpStream> {
    let unreachable = |reason: String| {
        anyhow!(
            "cannot reach the log server of agent {} at {}: {reason}",
            source.agent_id,
            source.addr
        )
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(source.addr))
        .await
        .map_err(|_| unreachable(format!("timed out after {}s", CONNECT_TIMEOUT.as_secs())))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

async fn exchange<S>(stream: S, source: &LogSource, target: &str) -> Result<Chunk, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |e: &dyn std::fmt::Display| {
        anyhow!(
            "request to the log server of agent {} at {} failed: {e}",
            source.agent_id,
            source.addr
        )
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(&e))?;
    let driver = tokio::spawn(connection);
    let mut request = Request::get(target)
        .header(header::HOST, source.addr.to_string())
        .header(header::CONNECTION, "close");
    if let Some(token) = &source.token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| failed(&e))?;
    let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
    let status = response.status();
    let number = |name: &str| -> Option<u64> {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    let (size, offset) = (number(HEADER_SIZE), number(HEADER_OFFSET));
    let body = Limited::new(response.into_body(), BODY_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| failed(&e))?
        .to_bytes();
    driver.abort();
    match status {
        StatusCode::OK => {
            let (Some(size), Some(offset)) = (size, offset) else {
                return Err(FetchError::Other(anyhow!(
                    "{} at {} is not a Borealis log server (no {HEADER_SIZE} in its answer)",
                    source.agent_id,
                    source.addr
                )));
            };
            Ok(Chunk {
                data: body,
                offset,
                size,
            })
        }
        StatusCode::RANGE_NOT_SATISFIABLE => Err(FetchError::PastEnd {
            size: size.unwrap_or(0),
        }),
        status => {
            let line = String::from_utf8_lossy(&body);
            let line = line.lines().next().unwrap_or_default().trim().to_string();
            let hint = match status {
                StatusCode::UNAUTHORIZED => " (give --token or BOREALIS_TOKEN)",
                _ => "",
            };
            Err(FetchError::Other(anyhow!(
                "agent {} at {} answered {status}: {line}{hint}",
                source.agent_id,
                source.addr
            )))
        }
    }
}

/// Tells whether the followed task has ended.
pub type TaskEnded<'a> = &'a mut dyn FnMut(&LogSource) -> anyhow::Result<bool>;

/// Copies the source's file to `out`: from its start, or its last `tail` bytes; with
/// `follow`, then polls for more until `follow` says the task has ended and a poll after that
/// found nothing new. Returns the offset reached.
pub async fn copy_log(
    source: &LogSource,
    tail: Option<u64>,
    mut follow: Option<TaskEnded<'_>>,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    let mut offset = match tail {
        Some(n) => {
            let size = fetch(source, "tail=0").await.map_err(into_anyhow)?.size;
            size.saturating_sub(n)
        }
        None => 0,
    };
    let mut ended = false;
    let mut last_check: Option<Instant> = None;
    loop {
        let chunk = match fetch(source, &format!("offset={offset}&length={LENGTH_MAX}")).await {
            Ok(chunk) => chunk,
            Err(FetchError::PastEnd { size }) => {
                eprintln!(
                    "({} of task {} shrank to {size} bytes; reading it from its start)",
                    source.file, source.task_id
                );
                offset = 0;
                continue;
            }
            Err(FetchError::Other(e)) => return Err(e),
        };
        let got = chunk.data.len() as u64;
        out.write_all(&chunk.data)?;
        out.flush()?;
        offset = chunk.offset + got;
        if got == LENGTH_MAX {
            continue; // more is there already
        }
        let Some(task_ended) = follow.as_mut() else {
            return Ok(offset);
        };
        if ended && got == 0 {
            return Ok(offset);
        }
        if !ended && last_check.is_none_or(|t| t.elapsed() >= STATE_CHECK_INTERVAL) {
            ended = task_ended(source)?;
            last_check = Some(Instant::now());
            if ended {
                continue; // one more read: what it wrote before it ended
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn into_anyhow(e: FetchError) -> anyhow::Error {
    match e {
        FetchError::PastEnd { size } => anyhow!("the offset is past the end ({size} bytes)"),
        FetchError::Other(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use borealis_agent::StandaloneLogServer;
    use borealis_core::auth::AuthPolicy;

    use super::*;

    const TOKEN: &str = "reader-token-0123456789";

    fn source(addr: SocketAddr, task: u64) -> LogSource {
        LogSource {
            task_id: TaskId(task),
            file: "stdout",
            agent_id: "a1".into(),
            hostname: "localhost".into(),
            addr,
            token: None,
            tls: None,
        }
    }

    fn sandbox(dir: &Path, name: &str, stdout: &[u8]) -> PathBuf {
        let sandbox = dir.join(name);
        std::fs::create_dir_all(&sandbox).unwrap();
        std::fs::write(sandbox.join("stdout"), stdout).unwrap();
        sandbox
    }

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn task_ids_as_printed() {
        assert_eq!(parse_task_id_arg("00000000000000ff"), Ok(TaskId(255)));
        assert_eq!(parse_task_id_arg("0xff"), Ok(TaskId(255)));
        assert_eq!(parse_task_id_arg("255"), Ok(TaskId(255)));
        assert_eq!(
            parse_task_id_arg("ff"),
            Err("\"ff\" is not a task id (16 hex digits, 0x-hex or decimal)".into())
        );
    }

    #[test]
    fn copies_whole_files_in_chunks_and_tails() {
        let dir = tempfile::tempdir().unwrap();
        // Bigger than one answer: copied in two chunks.
        let big: Vec<u8> = (0..LENGTH_MAX + 1000).map(|i| (i % 251) as u8).collect();
        let server = StandaloneLogServer::start(
            "127.0.0.1:0".parse().unwrap(),
            None,
            None,
            &[
                (TaskId(1), "www/prod/a", sandbox(dir.path(), "1", &big)),
                (
                    TaskId(2),
                    "www/prod/b",
                    sandbox(dir.path(), "2", b"one\ntwo\n"),
                ),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let end = run(copy_log(&source(server.addr(), 1), None, None, &mut out)).unwrap();
        assert_eq!(end, big.len() as u64);
        assert!(out == big, "the copy differs");
        let mut out = Vec::new();
        run(copy_log(&source(server.addr(), 2), Some(4), None, &mut out)).unwrap();
        assert_eq!(out, b"two\n");
        let mut out = Vec::new();
        run(copy_log(
            &source(server.addr(), 2),
            Some(100),
            None,
            &mut out,
        ))
        .unwrap();
        assert_eq!(out, b"one\ntwo\n");
        // A task the agent does not know: its answer, word for word.
        let error = run(copy_log(
            &source(server.addr(), 3),
            None,
            None,
            &mut Vec::new(),
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            error,
            format!(
                "agent a1 at {} answered 404 Not Found: task 0000000000000003 is not known to this agent (or has no sandbox)",
                server.addr()
            )
        );
    }

    #[test]
    fn follows_until_the_task_ended_and_the_file_stopped_growing() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = sandbox(dir.path(), "1", b"start\n");
        let server = StandaloneLogServer::start(
            "127.0.0.1:0".parse().unwrap(),
            None,
            None,
            &[(TaskId(1), "www/prod/a", sandbox.clone())],
        )
        .unwrap();
        // The "task" writes twice more, then ends; the second write lands after its state
        // says ended (a late flush), and must still be printed.
        let path = sandbox.join("stdout");
        let writer = std::thread::spawn({
            let path = path.clone();
            move || {
                std::thread::sleep(Duration::from_millis(300));
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                f.write_all(b"middle\n").unwrap();
            }
        });
        let mut checks = 0;
        let mut ended = |_: &LogSource| -> anyhow::Result<bool> {
            checks += 1;
            if checks == 2 {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                f.write_all(b"end\n").unwrap();
            }
            Ok(checks >= 2)
        };
        let mut out = Vec::new();
        let started = Instant::now();
        run(copy_log(
            &source(server.addr(), 1),
            None,
            Some(&mut ended),
            &mut out,
        ))
        .unwrap();
        writer.join().unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "start\nmiddle\nend\n");
        assert_eq!(checks, 2);
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn sends_the_token_and_speaks_tls_to_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        crate::certs::make_certs(&crate::certs::CertsArgs {
            out: certs.clone(),
            scheduler_name: vec![],
            agent: vec!["node-7".into()],
            days: 30,
            expired: false,
        })
        .unwrap();
        let files = borealis_net::tls::TlsFiles {
            cert: certs.join("agent-node-7.pem"),
            key: certs.join("agent-node-7-key.pem"),
            ca: certs.join("ca.pem"),
        };
        let auth = AuthPolicy::parse(&format!(
            "[[principal]]\nname = \"r\"\ntoken_sha256 = \"{}\"\npermissions = [\"www:read\"]\n",
            borealis_core::auth::token_sha256(TOKEN)
        ))
        .unwrap();
        let server = StandaloneLogServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Some(borealis_net::tls::server_config(&files).unwrap()),
            Some(Arc::new(auth)),
            &[
                (
                    TaskId(1),
                    "www/prod/a",
                    sandbox(dir.path(), "1", b"secret\n"),
                ),
                (TaskId(2), "db/prod/a", sandbox(dir.path(), "2", b"db\n")),
            ],
        )
        .unwrap();
        let tls = borealis_net::tls::client_config(&files.ca, None).unwrap();
        let mut source = source(server.addr(), 1);
        source.tls = Some(tls);
        // The agent's hostname is what its certificate names...
        source.hostname = "node-7".into();
        let error = run(copy_log(&source, None, None, &mut Vec::new()))
            .unwrap_err()
            .to_string();
        assert!(
            error.ends_with(
                "answered 401 Unauthorized: authentication required: send Authorization: Bearer <token> (give --token or BOREALIS_TOKEN)"
            ),
            "{error}"
        );
        source.token = Some(TOKEN.into());
        let mut out = Vec::new();
        run(copy_log(&source, None, None, &mut out)).unwrap();
        assert_eq!(out, b"secret\n");
        // ...or else its address (127.0.0.1 is in every certificate `admin certs` makes).
        source.hostname = "elsewhere".into();
        let mut out = Vec::new();
        run(copy_log(&source, None, None, &mut out)).unwrap();
        assert_eq!(out, b"secret\n");
        source.task_id = TaskId(2);
        let error = run(copy_log(&source, None, None, &mut Vec::new()))
            .unwrap_err()
            .to_string();
        assert!(
            error.ends_with(
                "answered 403 Forbidden: permission denied: principal \"r\" may not read jobs of role \"db\""
            ),
            "{error}"
        );
    }
}
