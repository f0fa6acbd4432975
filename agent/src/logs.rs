//! The agent's log server: `GET /tasks/{task_id}/files/{stdout|stderr}` answers a byte range
//! of a task's output, for `borealis task logs` (Thermos' observer in the Aurora lineage).
//!
//! - **What it may read.** Only the two output files of the sandboxes of tasks the agent knows:
//!   the event loop records each started task's role and sandbox in [`Sandboxes`] (a small
//!   shared table, removed when the task leaves the agent's task table), and a request names a
//!   task id and `stdout` or `stderr`, never a path. The file is opened without following a
//!   link (`O_NOFOLLOW`) or blocking on a FIFO (`O_NONBLOCK`) and must be a regular file, so a
//!   task cannot turn its `stdout` into a window on another file.
//! - **The range.** `?offset=N&length=M` (length at most [`LENGTH_MAX`], default
//!   [`LENGTH_DEFAULT`]) or `?tail=N` (the last N bytes, N at most [`LENGTH_MAX`]). The answer
//!   is the bytes as they are (`text/plain; charset=utf-8`), with `X-Log-Size` (the file's size
//!   when read) and `X-Log-Offset` (where the answer starts). An offset past the end is 416;
//!   at the end, an empty 200 (what a follower polls for).
//! - **Who may read.** With `--auth-file`, a request needs `Authorization: Bearer <token>` of a
//!   principal that may `read` the task's role (the first part of its job key): 401 without or
//!   with an unknown token, 403 with the refusal's one line otherwise.
//! - **TLS.** With `--tls-*` it speaks HTTPS with the agent's own certificate.
//! - **Bounds.** It runs on a thread and runtime of its own, so nothing it does (handshakes,
//!   reads) delays the agent's event loop; file reads run on that runtime's blocking pool.
//!   At most [`CONNECTIONS_MAX`] connections are served at once (others wait in the listen
//!   backlog), one request each, each under [`CONNECTION_TIMEOUT`]; the bytes read and not yet
//!   sent are bounded by [`BYTES_IN_FLIGHT_MAX`] (a request waits for room).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use borealis_core::auth::{Action, AuthPolicy, Principal};
use borealis_core::TaskId;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Bytes one answer carries when the request gives no `length`.
pub const LENGTH_DEFAULT: u64 = 1 << 20;
/// Most bytes one answer carries (`length`, `tail`).
pub const LENGTH_MAX: u64 = 4 << 20;
/// Connections served at once.
pub const CONNECTIONS_MAX: usize = 64;
/// Bytes read for answers and not yet sent, all connections together.
pub const BYTES_IN_FLIGHT_MAX: u64 = 32 << 20;
/// A connection's whole life (handshake, request, answer).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's read buffer (bounds a request's head; its minimum).
const REQUEST_HEAD_BYTES_MAX: usize = 8192;
/// Threads reading files at once.
const READ_THREADS_MAX: usize = 4;
/// The units of [`BYTES_IN_FLIGHT_MAX`]'s semaphore.
const KIB: u64 = 1024;

pub const HEADER_SIZE: &str = "x-log-size";
pub const HEADER_OFFSET: &str = "x-log-offset";

/// What the log server knows of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SandboxEntry {
    /// The first part of the task's job key: what a principal needs `read` on.
    pub role: String,
    pub dir: PathBuf,
}

/// The sandboxes of the tasks the agent knows, shared by the event loop (writer: a task
/// started, a task forgotten) and the log server (reader). Bounded by the agent's task table.
#[derive(Debug, Default)]
pub(crate) struct Sandboxes {
    map: RwLock<HashMap<TaskId, Arc<SandboxEntry>>>,
}

impl Sandboxes {
    pub fn insert(&self, task_id: TaskId, job_key: &str, dir: PathBuf) {
        let role = job_key.split('/').next().unwrap_or_default().to_string();
        let entry = Arc::new(SandboxEntry { role, dir });
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task_id, entry);
    }

    pub fn remove(&self, task_id: TaskId) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&task_id);
    }

    pub fn get(&self, task_id: TaskId) -> Option<Arc<SandboxEntry>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&task_id)
            .cloned()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Parses a task id as the CLI prints it (16 hex digits), with `0x` (hex), or in decimal.
pub fn parse_task_id(text: &str) -> Option<TaskId> {
    let text = text.trim();
    let hex = if let Some(digits) = text.strip_prefix("0x").or(text.strip_prefix("0X")) {
        digits
    } else if text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        text
    } else {
        return text.parse::<u64>().ok().map(TaskId);
    };
    if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(TaskId)
}

/// One of a sandbox's output files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFile {
    Stdout,
    Stderr,
}

impl LogFile {
    pub fn name(self) -> &'static str {
        match self {
            LogFile::Stdout => "stdout",
            LogFile::Stderr => "stderr",
        }
    }
}

/// The bytes a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Span {
    /// From `offset`, at most `length` bytes.
    Range { offset: u64, length: u64 },
    /// The last bytes, at most this many.
    Tail(u64),
}

impl Span {
    /// The most bytes the answer can hold.
    fn most(self) -> u64 {
        match self {
            Span::Range { length, .. } => length,
            Span::Tail(n) => n,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogRequest {
    pub task_id: TaskId,
    pub file: LogFile,
    pub span: Span,
}

/// A refusal: the status and its one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub message: String,
    /// `X-Log-Size` of a 416.
    pub size: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
            size: None,
        }
    }
}

const USAGE: &str = "this agent serves GET /tasks/{task_id}/files/{stdout|stderr}";

/// Parses a request's path and query.
pub(crate) fn parse_request(path: &str, query: Option<&str>) -> Result<LogRequest, Refusal> {
    let not_found = || Refusal::new(StatusCode::NOT_FOUND, format!("no such resource: {USAGE}"));
    let parts: Vec<&str> = path.split('/').collect();
    let ["", "tasks", task, "files", file] = parts.as_slice() else {
        return Err(not_found());
    };
    let task_id = parse_task_id(task).ok_or_else(|| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!(
                "bad task id {:?}: expected 16 hex digits, 0x-hex or decimal",
                bounded(task)
            ),
        )
    })?;
    let file = match *file {
        "stdout" => LogFile::Stdout,
        "stderr" => LogFile::Stderr,
        other => {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no task file {:?}: a task's files are stdout and stderr",
                    bounded(other)
                ),
            ))
        }
    };
    let span = parse_span(query.unwrap_or_default())?;
    Ok(LogRequest {
        task_id,
        file,
        span,
    })
}

fn parse_span(query: &str) -> Result<Span, Refusal> {
    let bad = |message: String| Refusal::new(StatusCode::BAD_REQUEST, message);
    let (mut offset, mut length, mut tail) = (None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "offset" => &mut offset,
            "length" => &mut length,
            "tail" => &mut tail,
            other => {
                return Err(bad(format!(
                    "unknown query parameter {:?} (offset, length or tail)",
                    bounded(other)
                )))
            }
        };
        if slot.is_some() {
            return Err(bad(format!("query parameter {key} given twice")));
        }
        let number: u64 = value
            .parse()
            .map_err(|_| bad(format!("{key}={:?}: not a number of bytes", bounded(value))))?;
        *slot = Some(number);
    }
    let too_many = |key: &str, n: u64| {
        bad(format!(
            "{key}={n} is more than one answer carries ({LENGTH_MAX} bytes); ask again from the next offset"
        ))
    };
    match (offset, length, tail) {
        (None, None, Some(n)) if n > LENGTH_MAX => Err(too_many("tail", n)),
        (None, None, Some(n)) => Ok(Span::Tail(n)),
        (_, _, Some(_)) => Err(bad("tail cannot be combined with offset or length".into())),
        (_, Some(n), None) if n > LENGTH_MAX => Err(too_many("length", n)),
        (offset, length, None) => Ok(Span::Range {
            offset: offset.unwrap_or(0),
            length: length.unwrap_or(LENGTH_DEFAULT),
        }),
    }
}

/// At most 64 bytes of what a request said, for an error line.
fn bounded(text: &str) -> &str {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Bytes of a file and where they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slice {
    pub data: Vec<u8>,
    /// Where `data` starts in the file.
    pub offset: u64,
    /// The file's size when it was read.
    pub size: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadError {
    Missing,
    /// A link, a FIFO, a directory...: not served.
    NotRegular,
    OffsetBeyond {
        offset: u64,
        size: u64,
    },
    Io(String),
}

/// Reads `span` of the regular file at `path` (blocking). Never follows a final link.
pub(crate) fn read_span(path: &Path, span: Span) -> Result<Slice, ReadError> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => ReadError::Missing,
            Some(libc::ELOOP) => ReadError::NotRegular,
            _ => ReadError::Io(e.to_string()),
        })?;
    let meta = file.metadata().map_err(|e| ReadError::Io(e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular);
    }
    let size = meta.len();
    let (offset, length) = match span {
        Span::Range { offset, .. } if offset > size => {
            return Err(ReadError::OffsetBeyond { offset, size })
        }
        Span::Range { offset, length } => (offset, length.min(size - offset)),
        Span::Tail(n) => {
            let n = n.min(size);
            (size - n, n)
        }
    };
    let mut data = vec![0u8; usize::try_from(length).unwrap_or(usize::MAX)];
    let mut filled = 0;
    while filled < data.len() {
        match file.read_at(&mut data[filled..], offset + filled as u64) {
            Ok(0) => break, // truncated meanwhile
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e.to_string())),
        }
    }
    data.truncate(filled);
    Ok(Slice { data, offset, size })
}

/// What the server needs: the table of sandboxes and, with `--auth-file`, who may read.
pub(crate) struct ServerState {
    pub sandboxes: Arc<Sandboxes>,
    pub auth: Option<Arc<AuthPolicy>>,
}

struct Shared {
    state: ServerState,
    /// [`BYTES_IN_FLIGHT_MAX`] in KiB.
    bytes: Arc<Semaphore>,
}

/// The authenticated principal of a request (None: no auth file), or why not.
fn authenticate(
    auth: Option<&AuthPolicy>,
    headers: &hyper::HeaderMap,
) -> Result<Option<Arc<Principal>>, Refusal> {
    let Some(auth) = auth else {
        return Ok(None);
    };
    let unauthorized = |m: &str| Refusal::new(StatusCode::UNAUTHORIZED, m);
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "authentication required: send Authorization: Bearer <token>",
        ));
    };
    let value = value.to_str().unwrap_or_default().trim();
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(unauthorized(
                "the Authorization header must be \"Bearer <token>\"",
            ))
        }
    };
    auth.authenticate(token)
        .map(Some)
        .ok_or_else(|| unauthorized("unknown token"))
}

/// The answer to one request.
async fn answer(
    shared: &Shared,
    method: &Method,
    uri: &hyper::Uri,
    headers: &hyper::HeaderMap,
) -> Result<(Slice, OwnedSemaphorePermit), Refusal> {
    if method != Method::GET {
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed: {USAGE}"),
        ));
    }
    let principal = authenticate(shared.state.auth.as_deref(), headers)?;
    let request = parse_request(uri.path(), uri.query())?;
    let entry = shared.state.sandboxes.get(request.task_id).ok_or_else(|| {
        Refusal::new(
            StatusCode::NOT_FOUND,
            format!(
                "task {} is not known to this agent (or has no sandbox)",
                request.task_id
            ),
        )
    })?;
    if let Some(principal) = principal {
        AuthPolicy::check(&principal, Action::Read, Some(&entry.role))
            .map_err(|denied| Refusal::new(StatusCode::FORBIDDEN, denied.to_string()))?;
    }
    let units = request.span.most().div_ceil(KIB).max(1) as u32;
    let permit = shared
        .bytes
        .clone()
        .acquire_many_owned(units)
        .await
        .map_err(|_| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping"))?;
    let path = entry.dir.join(request.file.name());
    let span = request.span;
    let read = tokio::task::spawn_blocking(move || read_span(&path, span))
        .await
        .map_err(|e| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("read failed: {e}"),
            )
        })?;
    let name = request.file.name();
    let task = request.task_id;
    match read {
        Ok(slice) => Ok((slice, permit)),
        Err(ReadError::Missing) => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("task {task} has no {name} file"),
        )),
        Err(ReadError::NotRegular) => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("{name} of task {task} is not a regular file; not served"),
        )),
        Err(ReadError::OffsetBeyond { offset, size }) => Err(Refusal {
            status: StatusCode::RANGE_NOT_SATISFIABLE,
            message: format!(
                "offset {offset} is past the end of {name} of task {task} ({size} bytes)"
            ),
            size: Some(size),
        }),
        Err(ReadError::Io(e)) => Err(Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read {name} of task {task}: {e}"),
        )),
    }
}

/// A response body of one chunk, holding its share of [`BYTES_IN_FLIGHT_MAX`] until sent.
pub(crate) struct LogBody {
    data: Option<Bytes>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Body for LogBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

fn text_plain() -> HeaderValue {
    HeaderValue::from_static("text/plain; charset=utf-8")
}

fn respond(result: Result<(Slice, OwnedSemaphorePermit), Refusal>) -> Response<LogBody> {
    let mut response = match result {
        Ok((slice, permit)) => {
            let mut response = Response::new(LogBody {
                data: Some(Bytes::from(slice.data)),
                _permit: Some(permit),
            });
            let headers = response.headers_mut();
            headers.insert(HEADER_SIZE, HeaderValue::from(slice.size));
            headers.insert(HEADER_OFFSET, HeaderValue::from(slice.offset));
            response
        }
        Err(refusal) => {
            let mut response = Response::new(LogBody {
                data: Some(Bytes::from(format!("{}\n", refusal.message))),
                _permit: None,
            });
            *response.status_mut() = refusal.status;
            let headers = response.headers_mut();
            if let Some(size) = refusal.size {
                headers.insert(HEADER_SIZE, HeaderValue::from(size));
            }
            if refusal.status == StatusCode::UNAUTHORIZED {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            if refusal.status == StatusCode::METHOD_NOT_ALLOWED {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
            }
            response
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, text_plain());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The running log server; dropping it stops the server.
pub(crate) struct LogServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl fmt::Debug for LogServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for LogServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl LogServer {
    /// Binds `addr` (port 0: an ephemeral one) and serves on a thread of its own.
    pub fn start(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        state: ServerState,
    ) -> anyhow::Result<LogServer> {
        use anyhow::Context as _;
        let listener = std::net::TcpListener::bind(addr).with_context(|| {
            format!("log server: cannot listen on {addr} (--http-ip, --http-port)")
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(READ_THREADS_MAX)
            .thread_name("borealis-logs-read")
            .build()
            .context("cannot build the log server's runtime")?;
        let (stop, stopped) = oneshot::channel();
        let shared = Arc::new(Shared {
            state,
            bytes: Arc::new(Semaphore::new((BYTES_IN_FLIGHT_MAX / KIB) as usize)),
        });
        std::thread::Builder::new()
            .name("borealis-logs".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener, tls, shared, stopped).await,
                        Err(e) => tracing::error!(error = %e, "log server: cannot use its socket"),
                    }
                });
            })
            .context("cannot start the log server's thread")?;
        Ok(LogServer {
            addr,
            stop: Some(stop),
        })
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let connections = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            _ = &mut stopped => break,
            permit = connections.clone().acquire_owned() => permit.expect("never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: pause rather than spin.
                    tracing::warn!(error = %e, "log server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let served = tokio::time::timeout(CONNECTION_TIMEOUT, async move {
                match acceptor {
                    None => connection(stream, shared).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                        {
                            Ok(Ok(stream)) => connection(stream, shared).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "log server: TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "log server: TLS handshake timed out"),
                        }
                    }
                }
            })
            .await;
            if served.is_err() {
                tracing::debug!(%peer, "log server: connection timed out");
            }
        });
    }
    tracing::debug!("log server stopped");
}

async fn connection<S>(stream: S, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let shared = shared.clone();
        async move {
            let result = answer(&shared, request.method(), request.uri(), request.headers()).await;
            if let Err(refusal) = &result {
                tracing::debug!(uri = %request.uri(), status = %refusal.status, message = %refusal.message, "log request refused");
            }
            Ok::<_, Infallible>(respond(result))
        }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(REQUEST_HEAD_BYTES_MAX)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "log server: connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(query: &str) -> Result<Span, Refusal> {
        parse_span(query)
    }

    #[test]
    fn task_ids_read_as_the_cli_prints_them() {
        assert_eq!(parse_task_id("000000000000002a"), Some(TaskId(42)));
        assert_eq!(parse_task_id("0x2a"), Some(TaskId(42)));
        assert_eq!(parse_task_id("42"), Some(TaskId(42)));
        assert_eq!(
            parse_task_id(&TaskId(u64::MAX).to_string()),
            Some(TaskId(u64::MAX))
        );
        for bad in ["", "0x", "0xg1", "4a", "-1", "0x11111111111111111", "1e3"] {
            assert_eq!(parse_task_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn paths_name_a_task_and_one_of_its_two_files() {
        let request = parse_request("/tasks/0x10/files/stderr", None).unwrap();
        assert_eq!(request.task_id, TaskId(16));
        assert_eq!(request.file, LogFile::Stderr);
        assert_eq!(
            request.span,
            Span::Range {
                offset: 0,
                length: LENGTH_DEFAULT
            }
        );
        for (path, status) in [
            ("/tasks/1/files/../../etc/passwd", StatusCode::NOT_FOUND),
            ("/tasks/1/files/%2e%2e", StatusCode::NOT_FOUND),
            ("/tasks/1/files/stdout/", StatusCode::NOT_FOUND),
            ("/tasks/1/files/", StatusCode::NOT_FOUND),
            ("/tasks/1/files/Stdout", StatusCode::NOT_FOUND),
            ("/tasks/1/files/.", StatusCode::NOT_FOUND),
            ("//tasks/1/files/stdout", StatusCode::NOT_FOUND),
            ("/", StatusCode::NOT_FOUND),
            ("/tasks/../files/stdout", StatusCode::BAD_REQUEST),
            ("/tasks/x/files/stdout", StatusCode::BAD_REQUEST),
        ] {
            let refusal = parse_request(path, None).unwrap_err();
            assert_eq!(refusal.status, status, "{path}: {}", refusal.message);
        }
        assert_eq!(
            parse_request("/tasks/1/files/core", None)
                .unwrap_err()
                .message,
            "no task file \"core\": a task's files are stdout and stderr"
        );
    }

    #[test]
    fn query_ranges_and_their_bounds() {
        assert_eq!(
            span("offset=5&length=7"),
            Ok(Span::Range {
                offset: 5,
                length: 7
            })
        );
        assert_eq!(
            span("length=7"),
            Ok(Span::Range {
                offset: 0,
                length: 7
            })
        );
        assert_eq!(
            span("offset=9"),
            Ok(Span::Range {
                offset: 9,
                length: LENGTH_DEFAULT
            })
        );
        assert_eq!(span("tail=100"), Ok(Span::Tail(100)));
        assert_eq!(
            span(&format!("tail={LENGTH_MAX}")),
            Ok(Span::Tail(LENGTH_MAX))
        );
        let message = |q: &str| {
            let refusal = span(q).unwrap_err();
            assert_eq!(refusal.status, StatusCode::BAD_REQUEST, "{q}");
            refusal.message
        };
        assert_eq!(
            message(&format!("length={}", LENGTH_MAX + 1)),
            "length=4194305 is more than one answer carries (4194304 bytes); ask again from the next offset"
        );
        assert!(message(&format!("tail={}", LENGTH_MAX + 1)).starts_with("tail=4194305 is more"));
        assert_eq!(
            message("tail=1&offset=2"),
            "tail cannot be combined with offset or length"
        );
        assert_eq!(
            message("offset=1&offset=2"),
            "query parameter offset given twice"
        );
        assert_eq!(message("offset=-1"), "offset=\"-1\": not a number of bytes");
        assert_eq!(message("offset"), "offset=\"\": not a number of bytes");
        assert_eq!(
            message("path=/etc/passwd"),
            "unknown query parameter \"path\" (offset, length or tail)"
        );
    }

    #[test]
    fn reads_ranges_tails_and_refuses_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        std::fs::write(&path, b"0123456789").unwrap();
        let read = |span| read_span(&path, span);
        let slice = read(Span::Range {
            offset: 2,
            length: 3,
        })
        .unwrap();
        assert_eq!(
            (slice.data.as_slice(), slice.offset, slice.size),
            (&b"234"[..], 2, 10)
        );
        // A length past the end stops at the end; at the end, nothing (what a follower polls).
        let slice = read(Span::Range {
            offset: 8,
            length: 100,
        })
        .unwrap();
        assert_eq!((slice.data.as_slice(), slice.offset), (&b"89"[..], 8));
        let slice = read(Span::Range {
            offset: 10,
            length: 5,
        })
        .unwrap();
        assert_eq!((slice.data.len(), slice.offset, slice.size), (0, 10, 10));
        assert_eq!(
            read(Span::Range {
                offset: 11,
                length: 1
            }),
            Err(ReadError::OffsetBeyond {
                offset: 11,
                size: 10
            })
        );
        let slice = read(Span::Tail(4)).unwrap();
        assert_eq!((slice.data.as_slice(), slice.offset), (&b"6789"[..], 6));
        let slice = read(Span::Tail(400)).unwrap();
        assert_eq!(
            (slice.data.as_slice(), slice.offset),
            (&b"0123456789"[..], 0)
        );
        assert_eq!(read(Span::Tail(0)).unwrap().offset, 10);
        assert_eq!(
            read_span(&dir.path().join("stderr"), Span::Tail(1)),
            Err(ReadError::Missing)
        );
    }

    #[test]
    fn links_fifos_and_directories_are_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"secret").unwrap();
        let link = dir.path().join("stdout");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert_eq!(read_span(&link, Span::Tail(10)), Err(ReadError::NotRegular));
        let fifo = dir.path().join("stderr");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // Without O_NONBLOCK this open would wait for a writer forever.
        assert_eq!(read_span(&fifo, Span::Tail(10)), Err(ReadError::NotRegular));
        assert_eq!(
            read_span(dir.path(), Span::Tail(10)),
            Err(ReadError::NotRegular)
        );
    }

    /// A blocking HTTP/1.1 GET (the server closes after each answer): status, headers
    /// (names lower-cased), body.
    fn get_over<S: std::io::Read + std::io::Write>(
        mut stream: S,
        target: &str,
        extra: &str,
    ) -> (u16, HashMap<String, String>, Vec<u8>) {
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nHost: agent\r\n{extra}Connection: close\r\n\r\n"
        )
        .unwrap();
        stream.flush().unwrap();
        let mut raw = Vec::new();
        match stream.read_to_end(&mut raw) {
            Ok(_) => {}
            // A TLS peer that closed without close_notify: what was read is the answer.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            Err(e) => panic!("reading the answer: {e}"),
        }
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head");
        let head = String::from_utf8(raw[..split].to_vec()).unwrap();
        let body = raw[split + 4..].to_vec();
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers, body)
    }

    use std::io::{Read as _, Write};

    fn get(
        addr: SocketAddr,
        target: &str,
        token: Option<&str>,
    ) -> (u16, HashMap<String, String>, String) {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let extra = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let (status, headers, body) = get_over(stream, target, &extra);
        (status, headers, String::from_utf8(body).unwrap())
    }

    const WEB_TOKEN: &str = "web-token-0123456789";
    const DB_TOKEN: &str = "db-token-0123456789ab";

    /// A server on loopback knowing task 1 (role www, stdout "hello world\n", no stderr)
    /// and task 2 (role db).
    fn server(
        dir: &Path,
        auth: bool,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> (LogServer, Arc<Sandboxes>) {
        let sandboxes = Arc::new(Sandboxes::default());
        for (task, job) in [(1, "www/prod/web"), (2, "db/prod/pg")] {
            let sandbox = dir.join(task.to_string());
            std::fs::create_dir_all(&sandbox).unwrap();
            std::fs::write(sandbox.join("stdout"), "hello world\n").unwrap();
            sandboxes.insert(TaskId(task), job, sandbox);
        }
        std::fs::remove_file(dir.join("1/stderr")).ok();
        let auth = auth.then(|| {
            let text = format!(
                "[[principal]]\nname = \"web\"\ntoken_sha256 = \"{}\"\npermissions = [\"www:read\"]\n\
                 [[principal]]\nname = \"dba\"\ntoken_sha256 = \"{}\"\npermissions = [\"db:*\"]\n",
                borealis_core::auth::token_sha256(WEB_TOKEN),
                borealis_core::auth::token_sha256(DB_TOKEN),
            );
            Arc::new(AuthPolicy::parse(&text).unwrap())
        });
        let server = LogServer::start(
            "127.0.0.1:0".parse().unwrap(),
            tls,
            ServerState {
                sandboxes: sandboxes.clone(),
                auth,
            },
        )
        .unwrap();
        (server, sandboxes)
    }

    #[test]
    fn serves_ranges_with_their_size_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (server, sandboxes) = server(dir.path(), false, None);
        let addr = server.addr;
        let (status, headers, body) =
            get(addr, "/tasks/0000000000000001/files/stdout?tail=6", None);
        assert_eq!((status, body.as_str()), (200, "world\n"));
        assert_eq!(headers["x-log-size"], "12");
        assert_eq!(headers["x-log-offset"], "6");
        assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
        assert_eq!(headers["content-length"], "6");
        let (status, headers, body) = get(addr, "/tasks/1/files/stdout?offset=2&length=3", None);
        assert_eq!(
            (status, body.as_str(), headers["x-log-offset"].as_str()),
            (200, "llo", "2")
        );
        let (status, _, body) = get(addr, "/tasks/0x1/files/stdout", None);
        assert_eq!((status, body.as_str()), (200, "hello world\n"));
        // At the end: empty; past it: 416 with the size.
        let (status, _, body) = get(addr, "/tasks/1/files/stdout?offset=12", None);
        assert_eq!((status, body.as_str()), (200, ""));
        let (status, headers, body) = get(addr, "/tasks/1/files/stdout?offset=13", None);
        assert_eq!(status, 416);
        assert_eq!(headers["x-log-size"], "12");
        assert_eq!(
            body,
            "offset 13 is past the end of stdout of task 0000000000000001 (12 bytes)\n"
        );
        let (status, _, body) = get(addr, "/tasks/1/files/stdout?length=4194305", None);
        assert_eq!(status, 400, "{body}");
        let (status, _, body) = get(addr, "/tasks/1/files/stderr", None);
        assert_eq!(
            (status, body.as_str()),
            (404, "task 0000000000000001 has no stderr file\n")
        );
        let (status, _, body) = get(addr, "/tasks/3/files/stdout", None);
        assert_eq!(
            (status, body.as_str()),
            (
                404,
                "task 0000000000000003 is not known to this agent (or has no sandbox)\n"
            )
        );
        let (status, _, _) = get(addr, "/tasks/1/files/../2/files/stdout", None);
        assert_eq!(status, 404);
        // Forgotten by the agent: no longer served, though the file is still there.
        sandboxes.remove(TaskId(2));
        assert_eq!(get(addr, "/tasks/2/files/stdout", None).0, 404);
        assert!(dir.path().join("2/stdout").exists());
        // Only GET.
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(stream, "POST /tasks/1/files/stdout HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    }

    #[test]
    fn tokens_and_roles_decide_who_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (server, _) = server(dir.path(), true, None);
        let addr = server.addr;
        let (status, headers, body) = get(addr, "/tasks/1/files/stdout", None);
        assert_eq!(
            (status, body.as_str()),
            (
                401,
                "authentication required: send Authorization: Bearer <token>\n"
            )
        );
        assert_eq!(headers["www-authenticate"], "Bearer");
        let (status, _, body) = get(
            addr,
            "/tasks/1/files/stdout",
            Some("not-a-known-token-at-all"),
        );
        assert_eq!((status, body.as_str()), (401, "unknown token\n"));
        // Before anything else: an unauthenticated caller learns nothing about tasks.
        assert_eq!(get(addr, "/tasks/3/files/stdout", None).0, 401);
        let (status, _, body) = get(addr, "/tasks/1/files/stdout", Some(WEB_TOKEN));
        assert_eq!((status, body.as_str()), (200, "hello world\n"));
        let (status, _, body) = get(addr, "/tasks/2/files/stdout", Some(WEB_TOKEN));
        assert_eq!(
            (status, body.as_str()),
            (
                403,
                "permission denied: principal \"web\" may not read jobs of role \"db\"\n"
            )
        );
        assert_eq!(get(addr, "/tasks/2/files/stdout", Some(DB_TOKEN)).0, 200);
        assert_eq!(get(addr, "/tasks/1/files/stdout", Some(DB_TOKEN)).0, 403);
    }

    #[test]
    fn connections_beyond_the_bound_wait_their_turn() {
        let dir = tempfile::tempdir().unwrap();
        let (server, _) = server(dir.path(), false, None);
        let addr = server.addr;
        // Idle connections hold every place (until their header timeout).
        let idle: Vec<_> = (0..CONNECTIONS_MAX)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut waiting = std::net::TcpStream::connect(addr).unwrap();
        write!(
            waiting,
            "GET /tasks/1/files/stdout HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        waiting
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut byte = [0u8; 1];
        let early = waiting.read(&mut byte);
        assert!(early.is_err(), "answered beyond the bound: {early:?}");
        drop(idle);
        waiting
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = Vec::new();
        waiting.read_to_end(&mut answer).unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }

    #[test]
    fn https_with_the_agents_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::testcerts::TestCa::new(dir.path(), "cluster");
        let files = ca.issue("agent");
        let tls = borealis_net::tls::server_config(&files).unwrap();
        let (server, _) = server(dir.path(), false, Some(tls));
        let addr = server.addr;
        let https_get = |ca: &Path| -> Result<(u16, Vec<u8>), String> {
            let config = borealis_net::tls::client_config(ca, None).unwrap();
            let name = borealis_net::tls::server_name(&addr.to_string()).unwrap();
            let conn = rustls::ClientConnection::new(config, name).unwrap();
            let tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            while tls.conn.is_handshaking() {
                tls.conn
                    .complete_io(&mut tls.sock)
                    .map_err(|e| e.to_string())?;
            }
            let (status, _, body) = get_over(tls, "/tasks/1/files/stdout?tail=6", "");
            Ok((status, body))
        };
        assert_eq!(https_get(&files.ca), Ok((200, b"world\n".to_vec())));
        // A client trusting another CA refuses the agent's certificate.
        let other = crate::testcerts::TestCa::new(dir.path(), "other");
        let error = https_get(&other.ca).unwrap_err();
        assert!(error.contains("UnknownIssuer"), "{error}");
        // Plain HTTP to the HTTPS port gets no answer.
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut stream = stream;
        write!(
            stream,
            "GET /tasks/1/files/stdout HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        assert!(!answer.starts_with(b"HTTP/1.1 200"));
    }

    #[test]
    fn the_table_keeps_roles_and_forgets_removed_tasks() {
        let table = Sandboxes::default();
        table.insert(TaskId(1), "www/prod/web", "/s/1".into());
        assert_eq!(
            table.get(TaskId(1)).as_deref(),
            Some(&SandboxEntry {
                role: "www".into(),
                dir: "/s/1".into()
            })
        );
        table.remove(TaskId(1));
        assert_eq!(table.get(TaskId(1)), None);
        assert_eq!(table.len(), 0);
    }
}
