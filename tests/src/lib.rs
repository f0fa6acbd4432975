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

/// A temp dir for a cluster (its logs, data, and whatever its flags name).
///
/// Made searchable and readable by others (0755; tempfile creates it 0700): tasks run as
/// unprivileged users (`--executor-user nobody`, or their role's user) and must reach their
/// sandboxes under it, and the agent refuses a work dir with an ancestor others cannot search.
pub fn temp_dir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("borealis-e2e-")
        .tempdir()
        .expect("create a temp dir");
    make_searchable(dir.path());
    dir
}

/// `chmod 0755 path`: task users (not root) must be able to search it.
pub fn make_searchable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod 0755 {}: {e}", path.display()));
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
    /// More `borealis agent` flags (TLS, say).
    pub extra_args: Vec<String>,
    /// `--executor-user USER`. `Some("nobody")` by default: the roles the tests use (`www`
    /// and the like) are no users of this machine, and with the agent's default (`root`) a
    /// root agent runs each task as its role's user. `None` passes no flag: role-user
    /// semantics (a test that sets `--executor-user` itself in `extra_args` needs `None`).
    pub executor_user: Option<String>,
    /// Whether the agent keeps its default executor reservation (`--thermos-executor-cpu`,
    /// `--thermos-executor-ram`, reserved once from what it offers). `false` by default: the
    /// harness passes 0 for both, so an agent offers exactly `cpus` and `ram`.
    pub executor_reservation: bool,
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
            extra_args: Vec::new(),
            executor_user: Some("nobody".into()),
            executor_reservation: false,
        }
    }

    pub fn cpus(mut self, cpus: f64) -> AgentSpec {
        self.cpus = cpus;
        self
    }

    /// `--executor-user`: `None` for the agent's default (role-user semantics under root).
    pub fn executor_user(mut self, user: Option<&str>) -> AgentSpec {
        self.executor_user = user.map(str::to_string);
        self
    }

    /// The flags the harness adds for this spec: `--thermos-executor-cpu 0
    /// --thermos-executor-ram 0` (unless [`AgentSpec::executor_reservation`]) and
    /// `--executor-user` (if [`AgentSpec::executor_user`]).
    pub fn harness_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if !self.executor_reservation {
            for flag in ["--thermos-executor-cpu", "--thermos-executor-ram"] {
                flags.extend([flag.to_string(), "0".to_string()]);
            }
        }
        if let Some(user) = &self.executor_user {
            flags.extend(["--executor-user".to_string(), user.clone()]);
        }
        flags
    }
}

/// Creates an agent's work dir `<dir>/agent-<id>`, 0755 (task users search it), canonical.
fn agent_work_dir(dir: &Path, agent_id: &str) -> PathBuf {
    let work_dir = dir.join(format!("agent-{agent_id}"));
    fs::create_dir_all(&work_dir).expect("create the agent's work dir");
    make_searchable(&work_dir);
    work_dir.canonicalize().expect("canonicalize the work dir")
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
    /// Schedulers replaced by [`Cluster::restart_scheduler`] (stopped; kept so that a failing
    /// test prints their logs too).
    previous_schedulers: Vec<Proc>,
    /// Flags every client command of [`Cluster::cli`] gets (a token, a CA).
    pub client_flags: Vec<String>,
    dir: Option<TempDir>,
}

impl Cluster {
    /// A scheduler (2 shards, unpinned) and the given agents, each registered.
    pub fn start(agents: &[AgentSpec]) -> Cluster {
        Cluster::start_with(&[], agents)
    }

    /// Like [`Cluster::start`], with extra scheduler flags.
    pub fn start_with(scheduler_args: &[&str], agents: &[AgentSpec]) -> Cluster {
        Cluster::start_in(temp_dir(), scheduler_args, &[], agents)
    }

    /// Like [`Cluster::start_with`], in `dir` (made with [`temp_dir`], holding what the flags
    /// name: certificates, an auth file), with `client_flags` added to every client command
    /// (the readiness check's too).
    pub fn start_in(
        dir: TempDir,
        scheduler_args: &[&str],
        client_flags: &[&str],
        agents: &[AgentSpec],
    ) -> Cluster {
        let client_flags: Vec<String> = client_flags.iter().map(|s| s.to_string()).collect();
        make_searchable(dir.path());
        let (port, scheduler) = start_scheduler(dir.path(), scheduler_args, &client_flags);
        let mut cluster = Cluster {
            port,
            agents: Vec::new(),
            scheduler,
            previous_schedulers: Vec::new(),
            client_flags,
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
        let work_dir = agent_work_dir(self.dir(), &spec.agent_id);
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
        args.extend(spec.harness_flags());
        args.extend(spec.extra_args.iter().cloned());
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

    /// The scheduler's data directory (`--data-dir`), which restarts reuse.
    pub fn data_dir(&self) -> PathBuf {
        scheduler_data_dir(self.dir())
    }

    /// Replaces the scheduler with a new one on the same port and data dir, `scheduler_args`
    /// added (as for [`Cluster::start_with`]; pass the same ones to restart it as it was):
    /// SIGKILLs the current scheduler if it still runs, waits until its port is free, starts
    /// the new one (its log is `scheduler-restart-<n>.stderr`) and waits (bounded) until
    /// `job list` answers. Agents are left running: they reconnect by themselves (see
    /// [`Cluster::wait_agents_registered`]). Retries a start that exits before answering, then
    /// panics with the logs.
    pub fn restart_scheduler(&mut self, scheduler_args: &[&str]) {
        self.scheduler.kill9();
        let args = scheduler_args_for(self.dir(), self.port, scheduler_args);
        let addr = self.addr();
        // A killed scheduler's listeners can accept connections for a moment after it was
        // reaped (its io_uring releases them asynchronously), and a new scheduler refuses a
        // port where something answers: wait until nothing does.
        let socket: std::net::SocketAddr = addr.parse().expect("an address");
        wait_until(
            &format!("{addr} to refuse connections after the old scheduler stopped"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                TcpStream::connect_timeout(&socket, Duration::from_millis(200))
                    .is_err()
                    .then_some(())
            },
        );
        let restart = self.previous_schedulers.len() + 1;
        for attempt in 1..=SCHEDULER_START_ATTEMPTS {
            let name = match attempt {
                1 => format!("scheduler-restart-{restart}"),
                n => format!("scheduler-restart-{restart}-attempt-{n}"),
            };
            let proc = Proc::spawn(&name, &args, self.dir());
            let old = std::mem::replace(&mut self.scheduler, proc);
            self.previous_schedulers.push(old);
            let deadline = Instant::now() + STARTUP_MAX;
            loop {
                if let Some(status) = self.scheduler.exit_status() {
                    if attempt == SCHEDULER_START_ATTEMPTS {
                        panic!(
                            "the restarted scheduler exited during startup ({status}) {SCHEDULER_START_ATTEMPTS} times; last:\n{}",
                            self.scheduler.log_tails()
                        );
                    }
                    eprintln!(
                        "scheduler restart attempt {attempt} on {addr} exited ({status}); retrying\n{}",
                        self.scheduler.log_tails()
                    );
                    std::thread::sleep(Duration::from_millis(500));
                    break;
                }
                let mut list = vec!["job", "list", "--json", "--scheduler", &addr];
                list.extend(self.client_flags.iter().map(String::as_str));
                let output = run_borealis(&list);
                if output.status.success() {
                    return;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "the restarted scheduler did not answer `job list` within {STARTUP_MAX:?}; last try: {}\n{}",
                        describe(&output),
                        self.scheduler.log_tails()
                    );
                }
                std::thread::sleep(POLL);
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Waits (bounded) until the current scheduler's log has an "agent registered" line for
    /// every agent of the cluster: after [`Cluster::restart_scheduler`], the agents are back.
    pub fn wait_agents_registered(&mut self) {
        let ids: Vec<String> = self
            .agents
            .iter()
            .map(|a| a.spec.agent_id.clone())
            .collect();
        let scheduler = &mut self.scheduler;
        wait_until(
            &format!("agents {ids:?} to register with the restarted scheduler"),
            STARTUP_MAX,
            POLL,
            || {
                if let Some(status) = scheduler.exit_status() {
                    panic!("the scheduler exited: {status}");
                }
                let log = scheduler.stderr_text();
                ids.iter()
                    .all(|id| {
                        log.lines()
                            .any(|l| l.contains("agent registered") && has_field(l, "agent", id))
                    })
                    .then_some(())
            },
        );
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
        all.extend(self.client_flags.iter().map(String::as_str));
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

/// The data dir of the scheduler of the cluster in `dir`.
fn scheduler_data_dir(dir: &Path) -> PathBuf {
    dir.join("scheduler-data")
}

/// The command line of a scheduler (2 shards unless `extra` names `--shards`, unpinned) of
/// the cluster in `dir` on `port`, with `extra` flags added.
fn scheduler_args_for(dir: &Path, port: u16, extra: &[&str]) -> Vec<String> {
    let shards = if extra.contains(&"--shards") { "" } else { "2" };
    let mut args: Vec<String> = [
        "scheduler",
        "--ip",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--http-port",
        "0",
        "--shards",
        shards,
        "--no-pin",
        "--data-dir",
        &scheduler_data_dir(dir).display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if shards.is_empty() {
        args.retain(|a| !a.is_empty() && a != "--shards");
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Starts a scheduler on a free port and waits until `job list` answers. Retries on a fresh
/// port if the process exits first (another test may have taken the port meanwhile).
fn start_scheduler(dir: &Path, extra: &[&str], client_flags: &[String]) -> (u16, Proc) {
    for attempt in 1..=SCHEDULER_START_ATTEMPTS {
        let port = free_port();
        let args = scheduler_args_for(dir, port, extra);
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
            let mut list = vec!["job", "list", "--json", "--scheduler", &addr];
            list.extend(client_flags.iter().map(String::as_str));
            let output = run_borealis(&list);
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

// =============================================================================================
// High availability (tests/tests/ha.rs): a real etcd on loopback and several schedulers that
// elect a leader through it. A separate section: nothing above uses it.
// =============================================================================================

/// Debian's `etcd-server` binary (installed by scripts/setup.sh); `BOREALIS_ETCD_BIN`
/// overrides it.
pub const ETCD: &str = "/usr/bin/etcd";
/// How long etcd may take to serve `/health` after it starts.
const ETCD_READY_MAX: Duration = Duration::from_secs(20);
/// How long a scheduler may take to serve `/leaderhealth` after it starts.
const HA_STARTUP_MAX: Duration = Duration::from_secs(30);

/// The etcd binary the HA tests run; panics (telling to run scripts/setup.sh) if it is missing.
pub fn etcd_bin() -> PathBuf {
    let bin =
        std::env::var_os("BOREALIS_ETCD_BIN").map_or_else(|| PathBuf::from(ETCD), PathBuf::from);
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/setup.sh (it installs Debian's etcd-server)",
        bin.display()
    );
    bin
}

/// One etcd process on free loopback ports with its data dir under a test's dir. SIGKILLed on
/// drop (also when paused); if the test fails, the tail of its log is printed.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    pub client_port: u16,
    peer_port: u16,
    dir: PathBuf,
}

impl Etcd {
    /// Starts etcd with its files in `<dir>/etcd-*` and waits (bounded) until `/health` says it
    /// is healthy. Retries on fresh ports if it exits first (a port taken meanwhile).
    pub fn start(dir: &Path) -> Etcd {
        let bin = etcd_bin();
        for attempt in 1..=SCHEDULER_START_ATTEMPTS {
            let mut etcd = Etcd {
                child: None,
                client_port: free_port(),
                peer_port: free_port(),
                dir: dir.to_path_buf(),
            };
            etcd.spawn(&bin);
            match etcd.try_wait_ready() {
                Ok(()) => return etcd,
                Err(e) if attempt < SCHEDULER_START_ATTEMPTS => {
                    eprintln!("etcd start attempt {attempt}: {e}; retrying");
                    etcd.kill();
                    let _ = fs::remove_dir_all(etcd.data_dir());
                }
                Err(e) => panic!("{e}\n{}", etcd.log_tail()),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("etcd-data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    fn spawn(&mut self, bin: &Path) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the etcd log");
        let child = Command::new(bin)
            .arg("--name=default")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the etcd log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {}: {e} (run scripts/setup.sh)", bin.display())
            });
        self.child = Some(child);
    }

    fn try_wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + ETCD_READY_MAX;
        let addr = format!("127.0.0.1:{}", self.client_port);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("etcd exited during startup: {status}"));
            }
            if let Ok(response) = http_get(&addr, "/health") {
                if response.status == 200 && response.text().contains("true") {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("etcd not healthy within {ETCD_READY_MAX:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("etcd runs").id() as i32
    }

    /// `kill -STOP`: etcd stops answering; its sockets stay open.
    pub fn pause(&self) {
        // SAFETY: kill(2) on the pid of our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGSTOP) }, 0);
    }

    /// `kill -CONT` after [`Etcd::pause`].
    pub fn resume(&self) {
        // SAFETY: kill(2) on the pid of our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGCONT) }, 0);
    }

    /// SIGKILLs and reaps etcd (also a paused one).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data dir and waits until it is healthy.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn(&etcd_bin());
        if let Err(e) = self.try_wait_ready() {
            panic!("restarted etcd: {e}\n{}", self.log_tail());
        }
    }

    /// The last lines of etcd's log.
    pub fn log_tail(&self) -> String {
        format!(
            "----- etcd log: {}\n{}",
            self.log_path().display(),
            file_tail(&self.log_path(), LOG_TAIL_LINES / 2)
        )
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

/// One scheduler of an [`HaCluster`].
#[derive(Debug)]
pub struct HaScheduler {
    /// Client and agent port: the scheduler's address (and the leader name it advertises) is
    /// `127.0.0.1:<port>`.
    pub port: u16,
    pub http_port: u16,
    pub proc: Proc,
}

impl HaScheduler {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `/leaderhealth`'s status code: 200 leads, 503 follows a known leader, 502 knows none.
    pub fn leader_health(&self) -> Result<u16, String> {
        http_get(&format!("127.0.0.1:{}", self.http_port), "/leaderhealth").map(|r| r.status)
    }
}

/// Schedulers under etcd leadership (`--etcd-endpoints`, 2 shards each, unpinned) and agents
/// that list every scheduler, on 127.0.0.1 under one temp dir. Dropping it kills the agents,
/// then the schedulers, then etcd; if the test failed, their logs' tails are printed and the
/// dir is kept.
#[derive(Debug)]
pub struct HaCluster {
    // Fields drop in this order: agents (and their tasks) first, etcd last.
    pub agents: Vec<Agent>,
    pub schedulers: Vec<HaScheduler>,
    pub etcd: Etcd,
    dir: Option<TempDir>,
}

impl HaCluster {
    /// etcd and `count` schedulers with `extra` scheduler flags; waits (bounded) until every
    /// scheduler serves `/leaderhealth`.
    pub fn start(count: usize, extra: &[&str]) -> HaCluster {
        let dir = tempfile::Builder::new()
            .prefix("borealis-ha-")
            .tempdir()
            .expect("create a temp dir");
        make_searchable(dir.path());
        let etcd = Etcd::start(dir.path());
        let mut cluster = HaCluster {
            agents: Vec::new(),
            schedulers: Vec::new(),
            etcd,
            dir: Some(dir),
        };
        for i in 0..count {
            let scheduler = spawn_ha_scheduler(cluster.dir(), i, &cluster.etcd.endpoint(), extra);
            cluster.schedulers.push(scheduler);
        }
        for i in 0..count {
            // A port picked free can be taken before the scheduler binds it (tests run in
            // parallel): start that scheduler again on new ports, a bounded number of times.
            let mut attempts = 1;
            loop {
                let scheduler = &mut cluster.schedulers[i];
                let started = Instant::now();
                let mut exited = None;
                while started.elapsed() < HA_STARTUP_MAX {
                    if let Some(status) = scheduler.proc.exit_status() {
                        exited = Some(status);
                        break;
                    }
                    if scheduler.leader_health().is_ok() {
                        break;
                    }
                    std::thread::sleep(POLL);
                }
                match exited {
                    None => {
                        assert!(
                            scheduler.leader_health().is_ok(),
                            "scheduler {i} did not serve /leaderhealth within {HA_STARTUP_MAX:?}"
                        );
                        break;
                    }
                    Some(status) if attempts < 3 => {
                        eprintln!("scheduler {i} exited during startup ({status}); starting it again on new ports");
                        attempts += 1;
                        let endpoint = cluster.etcd.endpoint();
                        cluster.schedulers[i] =
                            spawn_ha_scheduler(cluster.dir(), i, &endpoint, extra);
                    }
                    Some(status) => {
                        panic!("scheduler {i} exited during startup {attempts} times: {status}")
                    }
                }
            }
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

    /// Every scheduler's address, comma-separated (for `--scheduler`).
    pub fn all_addrs(&self) -> String {
        self.schedulers
            .iter()
            .map(HaScheduler::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Each scheduler's `/leaderhealth` code; `None` for one that is not running or does not
    /// answer.
    pub fn health_codes(&mut self) -> Vec<Option<u16>> {
        self.schedulers
            .iter_mut()
            .map(|s| {
                if s.proc.is_running() {
                    s.leader_health().ok()
                } else {
                    None
                }
            })
            .collect()
    }

    /// `Some(leader)` when exactly one running scheduler answers 200 and every other running
    /// one 503.
    pub fn settled_leader(&mut self) -> Option<usize> {
        let running: Vec<bool> = self
            .schedulers
            .iter_mut()
            .map(|s| s.proc.is_running())
            .collect();
        let codes = self.health_codes();
        let leaders: Vec<usize> = (0..codes.len())
            .filter(|&i| codes[i] == Some(200))
            .collect();
        let [leader] = leaders[..] else { return None };
        (0..codes.len())
            .all(|i| i == leader || !running[i] || codes[i] == Some(503))
            .then_some(leader)
    }

    /// Waits (bounded) until exactly one scheduler leads and the others follow it; returns it
    /// and how long that took.
    pub fn wait_settled_leader(&mut self, within: Duration) -> (usize, Duration) {
        let start = Instant::now();
        let deadline = start + within.min(WAIT_MAX);
        loop {
            if let Some(leader) = self.settled_leader() {
                return (leader, start.elapsed());
            }
            if Instant::now() >= deadline {
                panic!(
                    "no single leader within {within:?}: /leaderhealth codes {:?}",
                    self.health_codes()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until every running scheduler's `/leaderhealth` is `code`; returns how
    /// long that took.
    pub fn wait_all_health(&mut self, code: u16, within: Duration) -> Duration {
        let start = Instant::now();
        let deadline = start + within.min(WAIT_MAX);
        loop {
            let running: Vec<bool> = self
                .schedulers
                .iter_mut()
                .map(|s| s.proc.is_running())
                .collect();
            let codes = self.health_codes();
            if (0..codes.len()).all(|i| !running[i] || codes[i] == Some(code)) {
                return start.elapsed();
            }
            if Instant::now() >= deadline {
                panic!("/leaderhealth not {code} everywhere within {within:?}: {codes:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts an agent whose `--scheduler` lists every scheduler, and waits until scheduler
    /// `leader`'s log has its registration.
    pub fn start_agent(&mut self, spec: AgentSpec, leader: usize) -> &Agent {
        let work_dir = agent_work_dir(self.dir(), &spec.agent_id);
        let mut args: Vec<String> = [
            "agent",
            "--scheduler",
            &self.all_addrs(),
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
        args.extend(spec.harness_flags());
        let proc = Proc::spawn(&format!("agent-{}", spec.agent_id), &args, self.dir());
        self.agents.push(Agent {
            spec,
            work_dir,
            proc,
        });
        let index = self.agents.len() - 1;
        self.wait_agents_registered(leader, &[index], STARTUP_MAX);
        &self.agents[index]
    }

    /// Waits (bounded) until scheduler `scheduler`'s log has an "agent registered" line for
    /// each of the agents at `agents`; returns how long that took.
    pub fn wait_agents_registered(
        &mut self,
        scheduler: usize,
        agents: &[usize],
        within: Duration,
    ) -> Duration {
        let ids: Vec<String> = agents
            .iter()
            .map(|&a| self.agents[a].spec.agent_id.clone())
            .collect();
        let start = Instant::now();
        let (schedulers, all_agents) = (&mut self.schedulers, &mut self.agents);
        let proc = &mut schedulers[scheduler].proc;
        wait_until(
            &format!("agents {ids:?} to register with scheduler {scheduler}"),
            within,
            POLL,
            || {
                if let Some(status) = proc.exit_status() {
                    panic!("scheduler {scheduler} exited: {status}");
                }
                for agent in all_agents.iter_mut() {
                    if let Some(status) = agent.proc.exit_status() {
                        panic!("agent {} exited: {status}", agent.spec.agent_id);
                    }
                }
                let log = proc.stderr_text();
                ids.iter()
                    .all(|id| {
                        log.lines()
                            .any(|l| l.contains("agent registered") && has_field(l, "agent", id))
                    })
                    .then_some(())
            },
        );
        start.elapsed()
    }

    /// `borealis <args> --scheduler <scheduler>` (one address or a comma-separated list).
    pub fn cli(&self, scheduler: &str, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--scheduler", scheduler]);
        run_borealis(&all)
    }

    /// A job command that must succeed; its stdout.
    pub fn cli_ok(&self, scheduler: &str, args: &[&str]) -> String {
        let output = self.cli(scheduler, args);
        assert!(
            output.status.success(),
            "borealis {args:?} --scheduler {scheduler} failed: {}",
            describe(&output)
        );
        String::from_utf8(output.stdout).expect("stdout is UTF-8")
    }

    /// `job create` through `scheduler`, which must succeed.
    pub fn create_job(&self, scheduler: &str, job: &str, toml: &str) {
        let path = self.dir().join(format!("{}.toml", job.replace('/', ".")));
        fs::write(&path, toml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self.cli_ok(
            scheduler,
            &["job", "create", job, &path.display().to_string()],
        );
    }

    /// `job list --json` through `scheduler`, parsed.
    pub fn list_json(&self, scheduler: &str) -> Vec<Value> {
        let stdout = self.cli_ok(scheduler, &["job", "list", "--json"]);
        match serde_json::from_str(&stdout) {
            Ok(Value::Array(jobs)) => jobs,
            other => panic!("job list --json is not a JSON array ({other:?}): {stdout}"),
        }
    }

    /// `job status <job> --json` through `scheduler`, parsed; `Err` describes a failure.
    pub fn try_status_json(&self, scheduler: &str, job: &str) -> Result<Value, String> {
        let output = self.cli(scheduler, &["job", "status", job, "--json"]);
        if !output.status.success() {
            return Err(describe(&output));
        }
        serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("not JSON ({e}): {}", describe(&output)))
    }

    /// Polls `job status <job> --json` through `scheduler` until `f` returns `Some` (bounded);
    /// panics with `what` and the last status seen.
    pub fn wait_for<T>(
        &self,
        scheduler: &str,
        job: &str,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Value) -> Option<T>,
    ) -> T {
        let timeout = timeout.min(WAIT_MAX);
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.try_status_json(scheduler, job) {
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

impl Drop for HaCluster {
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
    }
}

/// Sends one `ListJobs` request over a raw connection to `addr` and returns the response
/// carrying its request id (no redirect is followed).
pub fn raw_list_jobs(addr: &str) -> borealis_net::views::OwnedMessage {
    use borealis_net::{decode_message, Encoder, FrameDecoder, FrameWriter};
    const REQUEST_ID: u64 = 7;
    let socket: std::net::SocketAddr = addr.parse().expect("an address");
    let mut stream = TcpStream::connect_timeout(&socket, HTTP_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .expect("a read timeout");
    let mut writer = FrameWriter::new();
    writer
        .push(Encoder::new().list_jobs(REQUEST_ID))
        .expect("a ListJobs fits a frame");
    stream
        .write_all(&writer.take())
        .unwrap_or_else(|e| panic!("send ListJobs to {addr}: {e}"));
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(frame) = decoder.next_frame().expect("a well-formed frame") {
            for bytes in borealis_net::frame::split_messages(frame).expect("messages") {
                let message = decode_message(&bytes).expect("a well-formed message");
                if message.request_id() == REQUEST_ID {
                    return borealis_net::codec::to_owned(message)
                        .expect("a known message")
                        .1;
                }
            }
        }
        let n = stream
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read the answer from {addr}: {e}"));
        assert!(
            n > 0,
            "{addr} closed the connection without answering ListJobs"
        );
        decoder.extend(&buf[..n]);
    }
}

/// Processes whose command line contains `marker` (from /proc), excluding this process.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && !process_is_dead(pid))
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The task sandboxes an agent created for `job` (`role/env/name`), as (instance, task id):
/// `<work dir>/sandboxes/<role>/<env>/<name>/<instance>/<task id>`.
pub fn sandboxes_of(agent: &Agent, job: &str) -> std::collections::BTreeSet<(u64, String)> {
    let sandboxes = agent.work_dir.join("sandboxes");
    let mut found = std::collections::BTreeSet::new();
    let roots = [sandboxes.join(job)];
    for instance_dir in roots
        .iter()
        .filter_map(|root| fs::read_dir(root).ok())
        .flat_map(|entries| entries.flatten())
    {
        let Some(instance) = instance_dir
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        for task_dir in fs::read_dir(instance_dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            found.insert((
                instance,
                task_dir.file_name().to_string_lossy().into_owned(),
            ));
        }
    }
    found
}

/// Processes whose command line or environment contains `marker` (from `/proc/*/cmdline`
/// and `/proc/*/environ`; the environment of other users' processes needs root), excluding
/// this process and zombies. A task's descendants inherit its environment (BOREALIS_JOB_KEY,
/// or a variable the command exports), even those that left its process group and session.
pub fn processes_marked(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let marker = marker.as_bytes();
    let contains = |bytes: &[u8]| bytes.windows(marker.len()).any(|w| w == marker);
    let mut pids: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            ["cmdline", "environ"].iter().any(|file| {
                fs::read(format!("/proc/{pid}/{file}")).is_ok_and(|bytes| contains(&bytes))
            })
        })
        .filter(|&pid| !process_is_dead(pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// SIGKILLs every process [`processes_marked`] with `marker` finds (a few passes, bounded):
/// what a test that lets tasks escape calls when it ends, so that it leaves nothing behind.
pub fn kill_marked(marker: &str) {
    for _ in 0..5 {
        let pids = processes_marked(marker);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Calls [`kill_marked`] with its marker when dropped (also when the test fails).
#[derive(Debug)]
pub struct KillMarkedOnDrop(pub String);

impl Drop for KillMarkedOnDrop {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            kill_marked(&self.0);
        }
    }
}

/// A unique string for this test run: `<prefix><pid hex><time hex>`, lowercase letters and
/// digits after the prefix (fit for user names, job names and markers).
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{:x}{n}", std::process::id(), nanos % 0x10_0000)
}

/// What a terminal task used, from the `"usage"` object of its `job status --json` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskUsage {
    pub cpu_time_ms: u64,
    pub peak_memory_bytes: u64,
    pub disk_bytes: u64,
}

/// The task's usage; `None` when its entry has no `"usage"` object (no usage reported, or a
/// CLI from before usage was shown). Panics on a `"usage"` missing one of its fields.
pub fn task_usage(task: &Value) -> Option<TaskUsage> {
    let usage = task.get("usage")?;
    if usage.is_null() {
        return None;
    }
    let get = |name: &str| {
        usage[name]
            .as_u64()
            .unwrap_or_else(|| panic!("usage has no unsigned {name}: {task}"))
    };
    Some(TaskUsage {
        cpu_time_ms: get("cpu_time_ms"),
        peak_memory_bytes: get("peak_memory_bytes"),
        disk_bytes: get("disk_bytes"),
    })
}

/// Whether this process runs as root (uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// For tests that need root (cgroups, users): `true` to go on. Not root: with
/// `BOREALIS_SKIP_ROOT_TESTS=1` it prints a note and returns `false` (the test returns and
/// passes), otherwise it panics saying so.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("BOREALIS_SKIP_ROOT_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("note: {test} skipped: it needs root (BOREALIS_SKIP_ROOT_TESTS=1)");
        return false;
    }
    panic!(
        "{test} needs root (task cgroups and users): run the tests as root, or set \
         BOREALIS_SKIP_ROOT_TESTS=1 to skip it"
    );
}

/// Starts one HA scheduler on fresh ports.
fn spawn_ha_scheduler(dir: &Path, i: usize, etcd_endpoint: &str, extra: &[&str]) -> HaScheduler {
    let port = free_port();
    let http_port = free_port();
    let data_dir = dir.join(format!("scheduler-{i}-data"));
    let mut args: Vec<String> = [
        "scheduler",
        "--ip",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--http-port",
        &http_port.to_string(),
        "--shards",
        "2",
        "--no-pin",
        "--data-dir",
        &data_dir.display().to_string(),
        "--etcd-endpoints",
        etcd_endpoint,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let proc = Proc::spawn(&format!("scheduler-{i}"), &args, dir);
    HaScheduler {
        port,
        http_port,
        proc,
    }
}
