//! Claiming what a scheduler runs on at startup: its data dir's lock and its port. A holder
//! that is still running is refused at once and named; one that is exiting (killed, or aborted
//! on a panic) is waited for, within [`PREDECESSOR_EXIT_WAIT`].

use std::net::{SocketAddr, TcpListener as StdListener};
use std::time::Duration;

use anyhow::Context;

/// How long a starting scheduler waits for a predecessor that is exiting (killed, or
/// aborted on a panic: ARCHITECTURE.md, "Fail-stop and restart after a crash") to let go of
/// the data dir's lock and of the port: a dead process's listening sockets outlive it while
/// the kernel tears down its io_uring instances. A live holder of either is refused at once.
pub const PREDECESSOR_EXIT_WAIT: Duration = Duration::from_secs(10);
/// How often the lock and the port are tried again meanwhile.
const PREDECESSOR_RETRY: Duration = Duration::from_millis(20);
/// The most often a wait for a predecessor is logged.
const PREDECESSOR_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Takes the data directory's lock (created if missing) or fails at once: one scheduler per
/// data dir, and offline tools (backup restore) refuse to touch a directory a scheduler holds.
/// The error names the holder (see [`LockHolder`]). A scheduler takes it with
/// [`lock_data_dir_waiting`] instead.
pub fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    match try_lock_data_dir(dir, None)? {
        Ok(file) => Ok(file),
        Err(holder) => anyhow::bail!("data dir {} is in use by {holder}", dir.display()),
    }
}

/// A scheduler's [`lock_data_dir`]: records this process and `listen` in the LOCK file, and
/// while a process that is exiting (or gone) still holds it, tries again until `deadline`
/// (see [`PREDECESSOR_EXIT_WAIT`]). A running holder is refused at once, by name: "data dir X
/// is in use by scheduler pid N listening on A".
pub fn lock_data_dir_waiting(
    dir: &std::path::Path,
    listen: SocketAddr,
    deadline: std::time::Instant,
) -> anyhow::Result<std::fs::File> {
    let mut log = RetryLog::default();
    loop {
        let holder = match try_lock_data_dir(dir, Some(listen))? {
            Ok(file) => return Ok(file),
            Err(holder) => holder,
        };
        let state = holder.pid.map(process_state);
        if state == Some(ProcessState::Running) {
            anyhow::bail!("data dir {} is in use by {holder}", dir.display());
        }
        // Exiting, gone (its lock not yet released), or not recorded yet (a holder between
        // its lock and its write, or of an older version): wait, within the bound.
        let why = match state {
            Some(ProcessState::Exiting) => "is exiting",
            Some(_) => "is gone",
            None => "is not recorded in the LOCK file",
        };
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "data dir {} is still locked after {PREDECESSOR_EXIT_WAIT:?}: its holder ({holder}) {why}",
                dir.display()
            );
        }
        log.warn(|| {
            tracing::warn!(
                dir = %dir.display(),
                %holder,
                "the data dir is still locked; its holder {why}: waiting for it to exit (up to {PREDECESSOR_EXIT_WAIT:?})"
            )
        });
        std::thread::sleep(PREDECESSOR_RETRY);
    }
}

/// One try at the data dir's lock: the locked file (this process and `listen` recorded in
/// it), or what the file says of the process holding it.
fn try_lock_data_dir(
    dir: &std::path::Path,
    listen: Option<SocketAddr>,
) -> anyhow::Result<Result<std::fs::File, LockHolder>> {
    use std::os::unix::io::AsRawFd;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: plain system call on an open descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        return Ok(Err(LockHolder::parse(&text)));
    }
    record_lock_holder(&file, listen);
    Ok(Ok(file))
}

/// Records this process (and the address it listens on) in the LOCK file it holds: advisory,
/// for the message of whoever comes next, so a failure to write is logged only.
pub(crate) fn record_lock_holder(file: &std::fs::File, listen: Option<SocketAddr>) {
    use std::os::unix::fs::FileExt;
    let me = LockHolder {
        pid: Some(std::process::id()),
        listen: listen.map(|a| a.to_string()),
    };
    if let Err(e) = file
        .set_len(0)
        .and_then(|()| file.write_all_at(me.to_text().as_bytes(), 0))
    {
        tracing::warn!("cannot record this process in the data dir's LOCK file: {e}");
    }
}

/// Who holds a data dir's lock, as its LOCK file records it (`pid=N` and, for a scheduler,
/// `listen=ADDR` lines): written right after the lock is taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: Option<u32>,
    pub listen: Option<String>,
}

impl LockHolder {
    fn parse(text: &str) -> LockHolder {
        let mut holder = LockHolder::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("pid", pid)) => holder.pid = pid.trim().parse().ok(),
                Some(("listen", addr)) => holder.listen = Some(addr.trim().to_string()),
                _ => {}
            }
        }
        holder
    }

    fn to_text(&self) -> String {
        let mut text = String::new();
        if let Some(pid) = self.pid {
            text.push_str(&format!("pid={pid}\n"));
        }
        if let Some(listen) = &self.listen {
            text.push_str(&format!("listen={listen}\n"));
        }
        text
    }
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, &self.listen) {
            (Some(pid), Some(listen)) => write!(f, "scheduler pid {pid} listening on {listen}"),
            (Some(pid), None) => write!(f, "pid {pid}"),
            (None, _) => write!(f, "another process (its pid is not recorded)"),
        }
    }
}

/// What `/proc` says of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProcessState {
    Running,
    /// Exiting: killed (a SIGKILL pending) or in its exit already; its files go soon.
    Exiting,
    /// No such process, or a zombie (it holds no files any more).
    Gone,
}

/// The state of process `pid`, from `/proc/<pid>/stat` (its state and flags) and
/// `/proc/<pid>/status` (a pending SIGKILL).
fn process_state(pid: u32) -> ProcessState {
    /// `PF_EXITING` of the kernel's task flags (include/linux/sched.h).
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return ProcessState::Gone;
    };
    // "pid (comm) S ppid pgrp session tty tpgid flags ...": the fields after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    match fields.first() {
        None => return ProcessState::Gone,
        Some(state) if state.starts_with(['Z', 'X', 'x']) => return ProcessState::Gone,
        Some(_) => {}
    }
    if fields
        .get(6)
        .and_then(|flags| flags.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_EXITING != 0)
    {
        return ProcessState::Exiting;
    }
    let sigkill = 1u64 << (libc::SIGKILL - 1);
    let killed = std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status.lines().any(|line| {
            line.strip_prefix("ShdPnd:")
                .or_else(|| line.strip_prefix("SigPnd:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
                .is_some_and(|mask| mask & sigkill != 0)
        })
    });
    if killed {
        ProcessState::Exiting
    } else {
        ProcessState::Running
    }
}

/// Logs a wait at most once per [`PREDECESSOR_LOG_INTERVAL`].
#[derive(Default)]
struct RetryLog {
    last: Option<std::time::Instant>,
}

impl RetryLog {
    fn warn(&mut self, log: impl FnOnce()) {
        if self
            .last
            .is_none_or(|at| at.elapsed() >= PREDECESSOR_LOG_INTERVAL)
        {
            self.last = Some(std::time::Instant::now());
            log();
        }
    }
}

/// A concrete address for the shards to bind: port 0 becomes a free port. A port where a
/// running process listens is refused at once, naming it; one still held by the listening
/// socket of a process that has exited (the kernel tears its io_uring down, and the sockets
/// with it, a moment after it is gone) is tried again until `deadline`.
///
/// The probe is a bind without SO_REUSEPORT (std's): the shards bind with it, which would
/// let them share the port with another scheduler silently, and with a dying one too, whose
/// socket would take a share of the connections and reset them. A failed probe is not
/// enough, though: the connections a killed scheduler left (FIN_WAIT2, TIME_WAIT; for up to a
/// minute) also fail it, and those the shards' own bind ignores. So on EADDRINUSE the
/// listening sockets on the port are looked up (`/proc/net/tcp`, `tcp6`) and their holders
/// (`/proc/<pid>/fd`): none listening, the port is ours; a running holder, refused; none
/// running, a dying socket: wait.
pub(crate) fn resolve_listen_addr(
    listen: SocketAddr,
    deadline: std::time::Instant,
) -> anyhow::Result<SocketAddr> {
    if listen.port() == 0 {
        let probe =
            StdListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
        return Ok(probe.local_addr()?);
    }
    let mut log = RetryLog::default();
    loop {
        let why = match port_check(listen) {
            Ok(PortCheck::Free) => return Ok(listen),
            Ok(PortCheck::Live(who)) => anyhow::bail!(
                "cannot listen on {listen}: another server is already listening there ({who})"
            ),
            Ok(PortCheck::Dying(why)) => why,
            Err(e) => return Err(e.context(format!("cannot listen on {listen}"))),
        };
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "cannot listen on {listen}: still in use after {PREDECESSOR_EXIT_WAIT:?} ({why})"
            );
        }
        log.warn(|| {
            tracing::warn!(
                %listen,
                "the port is still held by {why}: waiting for it to be released (up to {PREDECESSOR_EXIT_WAIT:?})"
            )
        });
        std::thread::sleep(PREDECESSOR_RETRY);
    }
}

/// What holds a port.
#[derive(Debug)]
enum PortCheck {
    /// Nothing listens there (connections of an earlier holder may linger).
    Free,
    /// A running process listens there (who, in words).
    Live(String),
    /// Only sockets no running process holds listen there (why, in words).
    Dying(String),
}

fn port_check(listen: SocketAddr) -> anyhow::Result<PortCheck> {
    match StdListener::bind(listen) {
        Ok(_probe) => return Ok(PortCheck::Free),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
        Err(e) => return Err(e.into()),
    }
    let Some(sockets) = listening_sockets(listen) else {
        // No /proc to tell: a server that accepts connections is taken to be live.
        let dial = if listen.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listen.port())
        } else {
            listen
        };
        return Ok(
            match std::net::TcpStream::connect_timeout(&dial, Duration::from_millis(200)) {
                Ok(_) => PortCheck::Live("it accepts connections".into()),
                Err(_) => PortCheck::Free,
            },
        );
    };
    if sockets.is_empty() {
        return Ok(PortCheck::Free);
    }
    let inodes: Vec<u64> = sockets.iter().map(|s| s.inode).collect();
    let (holders, complete) = socket_holders(&inodes);
    let mut exiting = Vec::new();
    for pid in holders {
        match process_state(pid) {
            ProcessState::Running => return Ok(PortCheck::Live(format!("pid {pid}"))),
            ProcessState::Exiting => exiting.push(pid),
            ProcessState::Gone => {}
        }
    }
    if !complete {
        // Some processes' descriptors could not be read (another user's): a socket of
        // another user is taken to be a live server's; ours would have been found.
        // SAFETY: plain system call without arguments.
        let me = unsafe { libc::geteuid() };
        if let Some(other) = sockets.iter().find(|s| s.uid != me) {
            return Ok(PortCheck::Live(format!("a process of uid {}", other.uid)));
        }
    }
    Ok(PortCheck::Dying(match exiting.as_slice() {
        [] => "a listening socket no running process holds (a process that exited)".to_string(),
        pids => format!("a listening socket of exiting process(es) {pids:?}"),
    }))
}

/// A listening TCP socket, from `/proc/net/tcp` or `tcp6`.
#[derive(Debug)]
struct ListeningSocket {
    uid: u32,
    inode: u64,
}

/// The listening sockets whose address conflicts with `listen` (same port; the same address,
/// or either one unspecified); None when `/proc/net/tcp` cannot be read.
fn listening_sockets(listen: SocketAddr) -> Option<Vec<ListeningSocket>> {
    /// TCP_LISTEN in the kernel's `st` column.
    const LISTEN: &str = "0A";
    let mut found = Vec::new();
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        read_any = true;
        // "sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ..."
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 || fields[3] != LISTEN {
                continue;
            }
            let Some((ip, port)) = parse_proc_addr(fields[1]) else {
                continue;
            };
            let conflicts = port == listen.port()
                && (ip.is_unspecified()
                    || listen.ip().is_unspecified()
                    || ip.to_canonical() == listen.ip().to_canonical());
            if conflicts {
                found.push(ListeningSocket {
                    uid: fields[7].parse().unwrap_or(u32::MAX),
                    inode: fields[9].parse().unwrap_or(0),
                });
            }
        }
    }
    read_any.then_some(found)
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the address as the kernel
/// prints it, each 32-bit word in the machine's byte order.
fn parse_proc_addr(text: &str) -> Option<(std::net::IpAddr, u16)> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..(i + 1) * 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => std::net::IpAddr::from(word(0)?),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..(i + 1) * 4].copy_from_slice(&word(i)?);
            }
            std::net::IpAddr::from(bytes)
        }
        _ => return None,
    };
    Some((ip, port))
}

/// The processes whose descriptors include a socket with one of these inodes, and whether
/// every process's descriptors could be read.
fn socket_holders(inodes: &[u64]) -> (Vec<u32>, bool) {
    let names: Vec<String> = inodes
        .iter()
        .filter(|i| **i != 0)
        .map(|i| format!("socket:[{i}]"))
        .collect();
    let mut holders = Vec::new();
    let mut complete = true;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return (holders, false);
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let fds = match std::fs::read_dir(entry.path().join("fd")) {
            Ok(fds) => fds,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                complete = false;
                continue;
            }
            // Gone meanwhile.
            Err(_) => continue,
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| names.iter().any(|n| target.as_os_str() == n.as_str()))
        });
        if holds {
            holders.push(pid);
        }
    }
    (holders, complete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::FromRawFd;
    use std::time::Instant;

    /// A fresh directory under the system's temp dir, removed when dropped.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "borealis-shards-{name}-{}-{}",
                std::process::id(),
                unix_nanos()
            ));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn unix_nanos() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    #[test]
    fn the_lock_file_names_its_holder() {
        let holder = LockHolder {
            pid: Some(42),
            listen: Some("127.0.0.1:6070".into()),
        };
        assert_eq!(LockHolder::parse(&holder.to_text()), holder);
        assert_eq!(
            holder.to_string(),
            "scheduler pid 42 listening on 127.0.0.1:6070"
        );
        let tool = LockHolder::parse("pid=7\n");
        assert_eq!(tool.to_string(), "pid 7");
        assert_eq!(LockHolder::parse("").pid, None);
        assert_eq!(LockHolder::parse("garbage").pid, None);
    }

    #[test]
    fn process_states_come_from_proc() {
        assert_eq!(process_state(std::process::id()), ProcessState::Running);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited, not reaped: a zombie, which holds no files.
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_state(pid) != ProcessState::Gone {
            assert!(Instant::now() < deadline, "the child never exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert_eq!(process_state(pid), ProcessState::Gone);
        assert_eq!(process_state(u32::MAX), ProcessState::Gone);
    }

    #[test]
    fn a_data_dir_held_by_a_running_process_is_refused_at_once_by_name() {
        let dir = TempDir::new("lock");
        let listen: SocketAddr = "127.0.0.1:6070".parse().unwrap();
        let far = Instant::now() + Duration::from_secs(60);
        let _held = lock_data_dir_waiting(&dir.0, listen, far).unwrap();
        // The same process holds it (another open file: flock refuses it too), and runs.
        let started = Instant::now();
        let error = lock_data_dir_waiting(&dir.0, listen, far).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            error.to_string(),
            format!(
                "data dir {} is in use by scheduler pid {} listening on 127.0.0.1:6070",
                dir.0.display(),
                std::process::id()
            )
        );
        let error = lock_data_dir(&dir.0).unwrap_err();
        assert!(
            error.to_string().contains("in use by scheduler pid"),
            "{error}"
        );
    }

    #[test]
    fn a_lock_whose_recorded_holder_is_gone_is_waited_for_within_the_deadline() {
        let dir = TempDir::new("stale");
        let listen: SocketAddr = "127.0.0.1:6070".parse().unwrap();
        let held = lock_data_dir_waiting(&dir.0, listen, Instant::now()).unwrap();
        // As a dying holder's file would read: a pid that no longer runs.
        std::fs::write(dir.0.join("LOCK"), "pid=4294967295\nlisten=127.0.0.1:1\n").unwrap();
        let started = Instant::now();
        let error =
            lock_data_dir_waiting(&dir.0, listen, Instant::now() + Duration::from_millis(300))
                .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(
            error.to_string().contains("is still locked after")
                && error.to_string().contains("is gone"),
            "{error}"
        );
        // Released meanwhile: taken, and this process recorded.
        let waiter = std::thread::spawn({
            let dir = dir.0.clone();
            move || lock_data_dir_waiting(&dir, listen, Instant::now() + Duration::from_secs(10))
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        let _lock = waiter.join().unwrap().unwrap();
        let text = std::fs::read_to_string(dir.0.join("LOCK")).unwrap();
        assert_eq!(
            text,
            format!("pid={}\nlisten=127.0.0.1:6070\n", std::process::id())
        );
    }

    #[test]
    fn proc_addresses_parse() {
        let v4 = parse_proc_addr("0100007F:17B6").unwrap();
        assert_eq!(v4, ("127.0.0.1".parse().unwrap(), 6070));
        let any6 = parse_proc_addr("00000000000000000000000000000000:0050").unwrap();
        assert_eq!(any6, ("::".parse().unwrap(), 80));
        let lo6 = parse_proc_addr("00000000000000000000000001000000:0050").unwrap();
        assert_eq!(lo6.0, "::1".parse::<std::net::IpAddr>().unwrap());
        assert!(parse_proc_addr("zz:1").is_none());
    }

    /// A listener as the shards bind theirs: SO_REUSEPORT, no SO_REUSEADDR.
    fn reuseport_listener(addr: SocketAddr) -> StdListener {
        let SocketAddr::V4(v4) = addr else {
            panic!("v4 only")
        };
        // SAFETY: plain system calls on a descriptor this function owns until it hands it to
        // the listener.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let one: libc::c_int = 1;
            assert_eq!(
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_REUSEPORT,
                    &one as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                ),
                0
            );
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            assert_eq!(
                libc::bind(
                    fd,
                    &sin as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                ),
                0,
                "{}",
                std::io::Error::last_os_error()
            );
            assert_eq!(libc::listen(fd, 16), 0);
            StdListener::from_raw_fd(fd)
        }
    }

    fn free_loopback_addr() -> SocketAddr {
        StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    #[test]
    fn a_port_a_running_process_listens_on_is_refused_at_once_by_pid() {
        let addr = free_loopback_addr();
        let listener = reuseport_listener(addr);
        let started = Instant::now();
        let error =
            resolve_listen_addr(addr, Instant::now() + Duration::from_secs(60)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            error.to_string(),
            format!(
                "cannot listen on {addr}: another server is already listening there (pid {})",
                std::process::id()
            )
        );
        drop(listener);
        assert_eq!(resolve_listen_addr(addr, Instant::now()).unwrap(), addr);
    }

    /// The connections a killed scheduler leaves behind (here FIN_WAIT2: its side closed, the
    /// peer's not) fail a plain bind, but not the shards' SO_REUSEPORT one: the port is free.
    #[test]
    fn connections_left_on_a_port_do_not_hold_it() {
        let addr = free_loopback_addr();
        let listener = reuseport_listener(addr);
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        drop(accepted);
        drop(listener);
        assert!(
            StdListener::bind(addr).is_err(),
            "a plain bind is refused while the connection lingers"
        );
        assert_eq!(resolve_listen_addr(addr, Instant::now()).unwrap(), addr);
        // And the shards' bind works.
        drop(reuseport_listener(addr));
        drop(client);
    }
}
