//! Harness for the end-to-end tests of the real `borealis` binary: start a scheduler and
//! agents as child processes on 127.0.0.1 with fresh ports and temp dirs, drive them with the
//! `borealis job` command line, and wait (always with a bound) for the states a test expects.
//!
//! The binary is not built by these tests: build it first (`cargo build -p borealis`), or
//! point `BOREALIS_BIN` at one. Every child is SIGKILLed when its guard drops; when a test
//! fails, the guards print the tails of the children's logs and the cluster keeps its temp dir
//! (its path is printed) for a post-mortem. `BOREALIS_LOG` (default `debug`) sets the log
//! filter of the scheduler and the agents.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The longest any wait in these tests may take: a healthy cluster needs a few seconds.
pub const WAIT_MAX: Duration = Duration::from_secs(60);
/// How often waits poll.
pub const POLL: Duration = Duration::from_millis(100);
/// The longest one `borealis job ...` command may take (the client's own I/O timeout is 30 s).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(45);
/// The longest one [`http_get`] may take to connect, or to send or receive any one piece.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest response [`http_get`] reads.
const HTTP_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// How long to wait for a scheduler to accept connections or an agent to register.
const STARTUP_MAX: Duration = Duration::from_secs(30);
/// How much of each log file a failing test reads, and how many lines of it it prints.
const LOG_TAIL_BYTES: u64 = 256 * 1024;
const LOG_TAIL_LINES: usize = 80;
/// Attempts at starting a scheduler (a free port can be taken by someone else meanwhile).
const SCHEDULER_START_ATTEMPTS: usize = 3;

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `borealis` binary under test: `$BOREALIS_BIN` if set, else the one built in the same
/// target directory and profile as this test (`<target>/debug/borealis` for `cargo test`),
/// else `<CARGO_TARGET_DIR or workspace/target>/debug/borealis`.
pub fn borealis_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("BOREALIS_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "BOREALIS_BIN={} is not a file: build it first: cargo build -p borealis",
            path.display()
        );
        return path;
    }
    let mut candidates = Vec::new();
    // A test binary lives in <target>/<profile>/deps/; its profile's binaries sit one up.
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            candidates.push(profile_dir.join("borealis"));
        }
    }
    let root = workspace_root();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    candidates.push(target.join("debug").join("borealis"));
    match candidates.iter().find(|path| path.is_file()) {
        Some(path) => path.clone(),
        None => panic!(
            "no borealis binary at {}: build it first: cargo build -p borealis",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0, read, released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Calls `f` every `poll` until it returns `Some`, for at most `timeout` (capped at
/// [`WAIT_MAX`]); panics naming `what` if it never does.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let timeout = timeout.min(WAIT_MAX);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(poll);
    }
}

/// Calls `check` every `poll` for `period` (capped at [`WAIT_MAX`]): for things that must
/// stay true for a while, e.g. "nothing restarts". `check` panics when it is not.
pub fn holds_for(period: Duration, poll: Duration, mut check: impl FnMut()) {
    let deadline = Instant::now() + period.min(WAIT_MAX);
    loop {
        check();
        if Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(poll);
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`) from log text.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a log line has the field `key=value` (a whole value, not a prefix of one).
pub fn has_field(line: &str, key: &str, value: &str) -> bool {
    let needle = format!("{key}={value}");
    line.match_indices(&needle).any(|(at, _)| {
        let before_ok = at == 0 || line[..at].ends_with([' ', '{', ',']);
        let after = &line[at + needle.len()..];
        before_ok && (after.is_empty() || after.starts_with([' ', ',', '}']))
    })
}

/// The last `max_lines` lines (within the last [`LOG_TAIL_BYTES`]) of a log file, as text,
/// leaving out the debug lines every client command adds (a connection opened and closed),
/// or why it could not be read.
fn file_tail(path: &Path, max_lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let text = strip_ansi(&String::from_utf8_lossy(&bytes));
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                !(l.contains("connection opened")
                    || l.contains("connection closed: peer closed the connection"))
            })
            .collect();
        let skip = lines.len().saturating_sub(max_lines);
        let mut tail = if skip > 0 || len > LOG_TAIL_BYTES {
            "[...]\n".to_string()
        } else {
            String::new()
        };
        for line in &lines[skip..] {
            tail.push_str(line);
            tail.push('\n');
        }
        Ok(tail)
    };
    read().unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// A `borealis` child process whose stdout and stderr go to files. Dropping it SIGKILLs and
/// reaps the child; if the thread is panicking (a failed test) it prints the logs' tails.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Starts `borealis <args>` with its output in `<log_dir>/<name>.stdout|.stderr`.
    pub fn spawn(name: &str, args: &[String], log_dir: &Path) -> Proc {
        let stdout = log_dir.join(format!("{name}.stdout"));
        let stderr = log_dir.join(format!("{name}.stderr"));
        let create = |path: &Path| {
            File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
        };
        let log_filter = std::env::var("BOREALIS_LOG").unwrap_or_else(|_| "debug".into());
        let child = Command::new(borealis_bin())
            .args(args)
            .env("BOREALIS_LOG", log_filter)
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(create(&stdout))
            .stderr(create(&stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} {args:?}: {e}", borealis_bin().display()));
        Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            exit: None,
        }
    }

    /// Starts another program (e.g. a Prometheus server) as a child like [`Proc::spawn`]'s,
    /// with its output in `<log_dir>/<name>.stdout|.stderr`: SIGKILLed on drop, its logs'
    /// tails printed if the test fails.
    pub fn spawn_program(name: &str, program: &Path, args: &[String], log_dir: &Path) -> Proc {
        let stdout = log_dir.join(format!("{name}.stdout"));
        let stderr = log_dir.join(format!("{name}.stderr"));
        let create = |path: &Path| {
            File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
        };
        let child = Command::new(program)
            .args(args)
            .current_dir(log_dir)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(create(&stdout))
            .stderr(create(&stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} {args:?}: {e}", program.display()));
        Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            exit: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// SIGKILLs the process (if it still runs) and reaps it.
    pub fn kill9(&mut self) {
        if self.exit_status().is_none() {
            let _ = self.child.kill();
            self.exit = Some(self.child.wait().expect("wait for a killed child"));
        }
    }

    /// Everything the process has written to stderr so far (its log), ANSI codes removed.
    pub fn stderr_text(&self) -> String {
        let bytes = fs::read(&self.stderr).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&bytes))
    }

    /// The tails of the process's stderr (its log, less per-connection noise) and stdout.
    pub fn log_tails(&self) -> String {
        format!(
            "----- {name} ({pid}) stderr: {stderr_path}\n{stderr}\n----- {name} stdout: {stdout_path}\n{stdout}\n",
            name = self.name,
            pid = self.child.id(),
            stderr_path = self.stderr.display(),
            stderr = file_tail(&self.stderr, LOG_TAIL_LINES),
            stdout_path = self.stdout.display(),
            stdout = file_tail(&self.stdout, LOG_TAIL_LINES / 4),
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
    }
}

/// Runs `borealis <args>` to completion (killed after [`CLI_TIMEOUT`]) and returns its output.
pub fn run_borealis(args: &[&str]) -> Output {
    let mut child = Command::new(borealis_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start borealis {args:?}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("borealis {args:?} did not finish within {CLI_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// A command's output, for failure messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout:\n{}--- stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Checks that a command failed the documented way: a non-zero exit and exactly one line on
/// stderr that starts with `error: `, with no panic or backtrace. Returns that line.
pub fn expect_one_line_error(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "expected the command to fail: {}",
        describe(output)
    );
    assert_ne!(
        output.status.code(),
        None,
        "killed by a signal: {}",
        describe(output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let lower = stderr.to_lowercase();
    assert!(
        !lower.contains("panicked") && !lower.contains("backtrace"),
        "the error is a panic: {}",
        describe(output)
    );
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr: {}",
        describe(output)
    );
    assert!(
        lines[0].starts_with("error: "),
        "expected stderr to start with \"error: \": {}",
        describe(output)
    );
    lines[0].to_string()
}

/// A job file: `instances` instances of `command` with 0.1 cpu, 16MiB ram and disk, and
/// `extra` (top-level `key = value` lines, or trailing tables) added.
pub fn job_toml(instances: u32, command: &str, extra: &str) -> String {
    // A JSON string is a valid TOML basic string (the same escapes).
    let command = serde_json::to_string(command).expect("a string serializes");
    format!(
        "instances = {instances}\ncommand = {command}\n{extra}\n\n[resources]\ncpu = 0.1\nram = \"16MiB\"\ndisk = \"16MiB\"\n"
    )
}

/// The tasks of a `job status --json` object.
pub fn tasks(status: &Value) -> &[Value] {
    status["tasks"].as_array().map_or(&[], Vec::as_slice)
}

/// A task's field as a string ("" if absent).
pub fn field<'a>(task: &'a Value, name: &str) -> &'a str {
    task[name].as_str().unwrap_or("")
}

/// A task's instance number.
pub fn instance(task: &Value) -> u64 {
    task["instance"].as_u64().expect("a task has an instance")
}

/// Tasks in `state`.
pub fn tasks_in<'a>(status: &'a Value, state: &str) -> Vec<&'a Value> {
    tasks(status)
        .iter()
        .filter(|t| field(t, "state") == state)
        .collect()
}

/// For each instance, the task that is RUNNING (if exactly one is); `None` unless every
/// instance in `0..instances` has exactly one RUNNING task.
pub fn running_by_instance(status: &Value, instances: u64) -> Option<BTreeMap<u64, &Value>> {
    let mut by_instance = BTreeMap::new();
    for task in tasks_in(status, "RUNNING") {
        if by_instance.insert(instance(task), task).is_some() {
            return None;
        }
    }
    (by_instance.len() as u64 == instances && by_instance.keys().all(|&i| i < instances))
        .then_some(by_instance)
}

/// Whether process `pid` is gone: no such process, or a zombie nobody has reaped yet.
pub fn process_is_dead(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    if !alive {
        return true;
    }
    // "pid (comm) S ...": the state follows the last ')'.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// SIGKILLs a process (one a task started) when dropped, so that a failing test leaves no
/// stray task processes behind.
#[derive(Debug)]
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0 > 1 && !process_is_dead(self.0) {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
            }
        }
    }
}

/// Reads the pid a task wrote to `<sandbox>/<file>`, waiting (bounded) for it to appear.
pub fn read_pid_file(sandbox: &str, file: &str) -> i32 {
    let path = Path::new(sandbox).join(file);
    wait_until(
        &format!("a pid in {}", path.display()),
        Duration::from_secs(10),
        Duration::from_millis(50),
        || fs::read_to_string(&path).ok()?.trim().parse().ok(),
    )
}

/// The first executable file named `program` in a directory of `$PATH`.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Percent-encodes `text` for a URL's query component (RFC 3986: all but unreserved bytes).
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An HTTP response: status code, headers (names lower-cased) and body (chunked transfer
/// coding removed).
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET http://<addr><path>` over a plain `TcpStream` (HTTP/1.1, `Connection: close`), each
/// step bounded by [`HTTP_TIMEOUT`]. `Err` describes why no complete response came back.
pub fn http_get(addr: &str, path: &str) -> Result<HttpResponse, String> {
    let socket: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&socket, HTTP_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(HTTP_TIMEOUT)))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send GET {path} to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .take(HTTP_MAX_BYTES)
        .read_to_end(&mut raw)
        .map_err(|e| format!("read the response to GET {path} from {addr}: {e}"))?;
    parse_http_response(&raw).map_err(|e| {
        format!(
            "GET {path} from {addr}: {e}; response: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(2048)])
        )
    })
}

fn parse_http_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|e| format!("headers: {e}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let rest = &raw[head_end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some((_, length)) = headers.iter().find(|(n, _)| n == "content-length") {
        let length: usize = length
            .parse()
            .map_err(|e| format!("content-length {length:?}: {e}"))?;
        if rest.len() < length {
            return Err(format!("body cut short: {} of {length} bytes", rest.len()));
        }
        rest[..length].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunked body cut short (no chunk size line)")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|e| e.to_string())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|e| format!("chunk size {size_text:?}: {e}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            return Err("chunked body cut short".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// An agent to start: its identity, what it offers, its attributes.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub agent_id: String,
    pub hostname: String,
    pub cpus: f64,
    pub ram: String,
    pub disk: String,
    pub ports: String,
    /// `key=value` attributes.
    pub attributes: Vec<String>,
}

impl AgentSpec {
    /// 2 cpus, 1GiB ram and disk, ports 31000-31099, rack=r1.
    pub fn new(agent_id: &str, hostname: &str) -> AgentSpec {
        AgentSpec {
            agent_id: agent_id.into(),
            hostname: hostname.into(),
            cpus: 2.0,
            ram: "1GiB".into(),
            disk: "1GiB".into(),
            ports: "31000-31099".into(),
            attributes: vec!["rack=r1".into()],
        }
    }

    pub fn cpus(mut self, cpus: f64) -> AgentSpec {
        self.cpus = cpus;
        self
    }
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    pub spec: AgentSpec,
    /// Its work dir, canonical (as the agent reports sandbox paths).
    pub work_dir: PathBuf,
    pub proc: Proc,
}

/// A scheduler and agents on 127.0.0.1, each with its own ports and dirs under one temp dir.
#[derive(Debug)]
pub struct Cluster {
    /// Client and agent port of the scheduler.
    pub port: u16,
    pub agents: Vec<Agent>,
    pub scheduler: Proc,
    dir: Option<TempDir>,
}

impl Cluster {
    /// A scheduler (2 shards, unpinned) and the given agents, each registered.
    pub fn start(agents: &[AgentSpec]) -> Cluster {
        Cluster::start_with(&[], agents)
    }

    /// Like [`Cluster::start`], with extra scheduler flags.
    pub fn start_with(scheduler_args: &[&str], agents: &[AgentSpec]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("borealis-e2e-")
            .tempdir()
            .expect("create a temp dir");
        let (port, scheduler) = start_scheduler(dir.path(), scheduler_args);
        let mut cluster = Cluster {
            port,
            agents: Vec::new(),
            scheduler,
            dir: Some(dir),
        };
        for spec in agents {
            cluster.start_agent(spec.clone());
        }
        cluster
    }

    /// The cluster's temp dir.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the dir is kept until drop")
            .path()
    }

    /// The scheduler's address, `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The scheduler's HTTP address (`--http-port 0`: a port it picked itself, free by
    /// construction), from its log line `http listening addr=IP:PORT`; waits (bounded) for it.
    pub fn http_addr(&mut self) -> String {
        let scheduler = &mut self.scheduler;
        wait_until(
            "the scheduler's \"http listening\" log line",
            STARTUP_MAX,
            POLL,
            || {
                if let Some(status) = scheduler.exit_status() {
                    panic!("the scheduler exited: {status}");
                }
                scheduler.stderr_text().lines().find_map(|line| {
                    if !line.contains("http listening") {
                        return None;
                    }
                    let (_, rest) = line.split_once("addr=")?;
                    let addr = rest.split([' ', ',', '}']).next()?;
                    let addr: std::net::SocketAddr = addr.parse().ok()?;
                    Some(format!("127.0.0.1:{}", addr.port()))
                })
            },
        )
    }

    /// Starts an agent and waits until the scheduler logs its registration.
    pub fn start_agent(&mut self, spec: AgentSpec) -> &Agent {
        let work_dir = self.dir().join(format!("agent-{}", spec.agent_id));
        fs::create_dir_all(&work_dir).expect("create the agent's work dir");
        let work_dir = work_dir.canonicalize().expect("canonicalize the work dir");
        let mut args: Vec<String> = [
            "agent",
            "--scheduler",
            &self.addr(),
            "--agent-id",
            &spec.agent_id,
            "--hostname",
            &spec.hostname,
            "--cpus",
            &spec.cpus.to_string(),
            "--ram",
            &spec.ram,
            "--disk",
            &spec.disk,
            "--ports",
            &spec.ports,
            "--work-dir",
            &work_dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for attribute in &spec.attributes {
            args.push("--attribute".into());
            args.push(attribute.clone());
        }
        let mut proc = Proc::spawn(&format!("agent-{}", spec.agent_id), &args, self.dir());
        let scheduler = &self.scheduler;
        let agent_id = spec.agent_id.clone();
        wait_until(
            &format!("agent {agent_id} to register (\"agent registered\" with agent={agent_id} in the scheduler's log)"),
            STARTUP_MAX,
            POLL,
            || {
                if let Some(status) = proc.exit_status() {
                    panic!("agent {agent_id} exited during startup: {status}");
                }
                scheduler
                    .stderr_text()
                    .lines()
                    .any(|l| l.contains("agent registered") && has_field(l, "agent", &agent_id))
                    .then_some(())
            },
        );
        self.agents.push(Agent {
            spec,
            work_dir,
            proc,
        });
        self.agents.last().expect("just pushed")
    }

    /// The index in `agents` of the agent with this hostname.
    pub fn agent_index(&self, hostname: &str) -> usize {
        self.agents
            .iter()
            .position(|a| a.spec.hostname == hostname)
            .unwrap_or_else(|| panic!("no agent has hostname {hostname:?}"))
    }

    /// `borealis <args> --scheduler <this scheduler>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let addr = self.addr();
        let mut all = args.to_vec();
        all.extend(["--scheduler", addr.as_str()]);
        run_borealis(&all)
    }

    /// Runs a job command that must succeed; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "borealis {args:?} failed: {}",
            describe(&output)
        );
        String::from_utf8(output.stdout).expect("stdout is UTF-8")
    }

    /// Writes `text` to a new file in the cluster's dir and returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir().join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// `job create <job> <file with toml>`: the output, whatever it is.
    pub fn try_create_job(&self, job: &str, toml: &str) -> Output {
        let file = self.write_file(&format!("{}.toml", job.replace('/', ".")), toml);
        self.cli(&["job", "create", job, &file.display().to_string()])
    }

    /// `job create`, which must succeed.
    pub fn create_job(&self, job: &str, toml: &str) {
        let output = self.try_create_job(job, toml);
        assert!(
            output.status.success(),
            "job create {job} failed: {}\njob file:\n{toml}",
            describe(&output)
        );
    }

    /// `job status <job> --json`, parsed; panics if the command fails.
    pub fn status_json(&self, job: &str) -> Value {
        self.try_status_json(job)
            .unwrap_or_else(|e| panic!("job status {job} --json: {e}"))
    }

    fn try_status_json(&self, job: &str) -> Result<Value, String> {
        let output = self.cli(&["job", "status", job, "--json"]);
        if !output.status.success() {
            return Err(describe(&output));
        }
        serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("not JSON ({e}): {}", describe(&output)))
    }

    /// `job list --json`, parsed.
    pub fn list_json(&self) -> Vec<Value> {
        let stdout = self.cli_ok(&["job", "list", "--json"]);
        match serde_json::from_str(&stdout) {
            Ok(Value::Array(jobs)) => jobs,
            other => panic!("job list --json is not a JSON array ({other:?}): {stdout}"),
        }
    }

    /// Whether `job list --json` has a job with this key.
    pub fn job_listed(&self, job: &str) -> bool {
        self.list_json()
            .iter()
            .any(|j| j["job_key"].as_str() == Some(job))
    }

    /// Polls `job status <job> --json` until `f` returns `Some` (bounded by `timeout`, at most
    /// [`WAIT_MAX`]); on timeout panics with `what` and the last status seen. `f` may panic
    /// to fail fast on a state that can never lead to success.
    pub fn wait_for<T>(
        &self,
        job: &str,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Value) -> Option<T>,
    ) -> T {
        let timeout = timeout.min(WAIT_MAX);
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.try_status_json(job) {
                Ok(status) => {
                    if let Some(value) = f(&status) {
                        return value;
                    }
                    serde_json::to_string_pretty(&status).expect("JSON prints")
                }
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for {job}: {what}\nlast status seen:\n{last}");
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!(
                    "----- test failed; its cluster's files are kept in {}",
                    path.display()
                );
            }
        }
        // Then the fields drop: agents and scheduler are killed (printing their logs if the
        // test failed), and the temp dir, unless kept, is removed.
    }
}

/// Starts a scheduler on a free port and waits until `job list` answers. Retries on a fresh
/// port if the process exits first (another test may have taken the port meanwhile).
fn start_scheduler(dir: &Path, extra: &[&str]) -> (u16, Proc) {
    for attempt in 1..=SCHEDULER_START_ATTEMPTS {
        let port = free_port();
        let mut args: Vec<String> = [
            "scheduler",
            "--ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--http-port",
            "0",
            "--shards",
            "2",
            "--no-pin",
            "--data-dir",
            &dir.join("scheduler-data").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut proc = Proc::spawn(&format!("scheduler-{attempt}"), &args, dir);
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + STARTUP_MAX;
        let mut last = String::new();
        loop {
            if let Some(status) = proc.exit_status() {
                if attempt == SCHEDULER_START_ATTEMPTS {
                    panic!(
                        "the scheduler exited during startup ({status}) {SCHEDULER_START_ATTEMPTS} times; last:\n{}",
                        proc.log_tails()
                    );
                }
                break;
            }
            let output = run_borealis(&["job", "list", "--json", "--scheduler", &addr]);
            if output.status.success() {
                return (port, proc);
            }
            last = describe(&output);
            if Instant::now() >= deadline {
                panic!(
                    "the scheduler did not answer `job list` within {STARTUP_MAX:?}; last try: {last}\n{}",
                    proc.log_tails()
                );
            }
            std::thread::sleep(POLL);
        }
        eprintln!(
            "scheduler attempt {attempt} on port {port} exited before answering ({last}); retrying"
        );
    }
    unreachable!("the last attempt returns or panics")
}
