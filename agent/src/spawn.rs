//! Starting a task's process with one process creation: `clone(CLONE_VM | CLONE_VFORK |
//! CLONE_PIDFD)`, the way glibc's `posix_spawn` does it, with the steps a task needs between
//! the clone and the exec that `posix_spawn` cannot do (join the task's cgroups, drop to the
//! task's user, die with the agent).
//!
//! Why not `fork`: the agent is a multithreaded process of tens of MiB; a fork copies its page
//! tables for each task only for the child to exec at once. `CLONE_VM` shares the agent's
//! memory with the child until it execs, and `CLONE_VFORK` suspends the calling thread (only
//! it: the agent's other threads run on) until then, so nothing is copied. Why not
//! `posix_spawn`: it has no way to join a cgroup v1 hierarchy, switch user, or set the
//! parent-death signal. Why not `std::process::Command` with `pre_exec`: that forces a fork.
//!
//! The child runs [`child_main`] on a stack of its own, in the agent's memory, and may only
//! make raw system calls: no allocation, no locks, no Rust runtime (the parent prepares every
//! string and array first). In particular, user and group changes use the raw `setresuid`,
//! `setresgid` and `setgroups` system calls: glibc's wrappers of them signal every thread of
//! the (shared) process to change its credentials too, which in a `CLONE_VM` child would
//! reach the agent's threads. Signals are blocked in the parent across the clone, so no
//! handler of the agent runs on the child's stack; the child resets every disposition to the
//! default and unblocks every signal just before the exec, so the task starts clean (Rust's
//! ignored SIGPIPE does not leak into it).
//!
//! A step that fails in the child writes which step and its errno into the parent's memory
//! (shared) and exits 127; the parent then reaps it and returns the error. The child's exit
//! is later collected through its pidfd (`watch.rs`), never by `wait(-1)`, so children of the
//! agent that others own (tokio's) are never reaped by mistake.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// The child's stack: enough for the system calls it makes (glibc's posix_spawn uses less).
const CHILD_STACK: usize = 64 * 1024;

/// The user and groups a task runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Supplementary groups (the user's, from the group database).
    pub groups: Vec<libc::gid_t>,
}

/// What to start and how.
pub(crate) struct Spec<'a> {
    /// `argv[0]` is the program, run by its absolute path.
    pub argv: &'a [CString],
    /// `KEY=VALUE` strings: the whole environment.
    pub env: &'a [CString],
    /// The working directory (the sandbox), as an open directory.
    pub cwd: BorrowedFd<'a>,
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
    /// `cgroup.procs` files to write `0` to: the child joins these cgroups before it execs,
    /// so whatever it starts is born inside them.
    pub cgroup_procs: &'a [BorrowedFd<'a>],
    pub credentials: Option<&'a Credentials>,
    /// Which session and process group the child gets.
    pub group: Group,
    /// Signals the child starts with ignored (every other one has its default action).
    pub ignored_signals: &'a [libc::c_int],
    /// SIGKILL the child when the thread that spawned it exits.
    pub die_with_parent: bool,
}

/// The session and process group of a child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Group {
    /// A session of its own (and a process group, both with its pid as id): a task under
    /// cgroups, the reaper.
    NewSession,
    /// A process group of its own, in the agent's session (so that a guard may join it).
    Own,
    /// This process group of the agent's session (a task's guard joins its task's).
    Join(i32),
}

/// A started child: its pid and a pidfd (readable once it exits; `waitid(P_PIDFD)` reaps it).
#[derive(Debug)]
pub(crate) struct Child {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// The step of the child that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
enum Step {
    None = 0,
    JoinCgroup,
    Session,
    DeathSignal,
    Stdio,
    Chdir,
    Groups,
    Gid,
    Uid,
    Exec,
}

impl Step {
    fn from_u32(v: u32) -> Step {
        match v {
            1 => Step::JoinCgroup,
            2 => Step::Session,
            3 => Step::DeathSignal,
            4 => Step::Stdio,
            5 => Step::Chdir,
            6 => Step::Groups,
            7 => Step::Gid,
            8 => Step::Uid,
            9 => Step::Exec,
            _ => Step::None,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Step::None => "start",
            Step::JoinCgroup => "join its cgroup",
            Step::Session => "start a session",
            Step::DeathSignal => "set its parent-death signal",
            Step::Stdio => "set up stdin/stdout/stderr",
            Step::Chdir => "enter its sandbox",
            Step::Groups => "set its supplementary groups",
            Step::Gid => "switch group",
            Step::Uid => "switch user",
            Step::Exec => "exec",
        }
    }
}

/// Everything the child reads, prepared by the parent; the child writes only `failed_*`.
#[repr(C)]
struct ChildArgs {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: RawFd,
    stdio: [RawFd; 3],
    cgroup_procs: *const RawFd,
    cgroup_count: usize,
    /// -1: keep the agent's user.
    uid: i64,
    gid: i64,
    groups: *const libc::gid_t,
    group_count: usize,
    new_session: bool,
    /// -1: none; 0: a group of its own.
    process_group: libc::pid_t,
    ignored: *const libc::c_int,
    ignored_count: usize,
    die_with_parent: bool,
    parent: libc::pid_t,
    failed_step: u32,
    failed_errno: i32,
}

/// errno after a failed libc call.
fn errno() -> i32 {
    // SAFETY: reads the calling thread's errno; in the child this is the (suspended) parent
    // thread's errno location, which nobody else touches meanwhile.
    unsafe { *libc::__errno_location() }
}

/// The child, between clone and exec. Only system calls; see the module documentation.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `ChildArgs`, alive while the parent is suspended.
    let args = unsafe { &mut *(arg as *mut ChildArgs) };
    macro_rules! fail {
        ($step:expr) => {{
            args.failed_errno = errno();
            args.failed_step = $step as u32;
            libc::_exit(127)
        }};
    }
    // SAFETY (every block below): plain system calls on values the parent prepared.
    unsafe {
        for i in 0..args.cgroup_count {
            let fd = *args.cgroup_procs.add(i);
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail!(Step::JoinCgroup);
            }
        }
        if args.new_session && libc::setsid() < 0 {
            fail!(Step::Session);
        }
        if args.process_group >= 0 && libc::setpgid(0, args.process_group) != 0 {
            fail!(Step::Session);
        }
        if args.die_with_parent {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                fail!(Step::DeathSignal);
            }
            // The agent died before prctl: the signal was missed, so leave now.
            if libc::getppid() != args.parent {
                *libc::__errno_location() = libc::ESRCH;
                fail!(Step::DeathSignal);
            }
        }
        for (target, fd) in args.stdio.iter().enumerate() {
            if libc::dup2(*fd, target as libc::c_int) < 0 {
                fail!(Step::Stdio);
            }
        }
        if libc::fchdir(args.cwd) != 0 {
            fail!(Step::Chdir);
        }
        if args.uid >= 0 {
            if libc::syscall(libc::SYS_setgroups, args.group_count, args.groups) != 0 {
                fail!(Step::Groups);
            }
            let gid = args.gid as libc::gid_t;
            if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
                fail!(Step::Gid);
            }
            let uid = args.uid as libc::uid_t;
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                fail!(Step::Uid);
            }
        }
        // Default dispositions (an ignored signal would survive the exec), then no mask.
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        for signal in 1..libc::SIGRTMAX() {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
        action.sa_sigaction = libc::SIG_IGN;
        for i in 0..args.ignored_count {
            libc::sigaction(*args.ignored.add(i), &action, std::ptr::null_mut());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(args.path, args.argv, args.envp);
        fail!(Step::Exec)
    }
}

/// A NULL-terminated array of pointers into `strings` (which must outlive it).
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Reusable state of a spawning thread: the child's stack.
pub(crate) struct Spawner {
    stack: Vec<u8>,
}

impl Spawner {
    pub fn new() -> Spawner {
        Spawner {
            stack: vec![0; CHILD_STACK],
        }
    }

    /// Starts the child (see the module documentation). The error names the step that failed.
    pub fn spawn(&mut self, spec: &Spec<'_>) -> Result<Child, String> {
        let Some(program) = spec.argv.first() else {
            return Err("nothing to run".into());
        };
        let argv = pointers(spec.argv);
        let envp = pointers(spec.env);
        let cgroup_procs: Vec<RawFd> = spec.cgroup_procs.iter().map(|f| f.as_raw_fd()).collect();
        let (uid, gid, groups): (i64, i64, &[libc::gid_t]) = match spec.credentials {
            Some(c) => (i64::from(c.uid), i64::from(c.gid), &c.groups),
            None => (-1, -1, &[]),
        };
        let mut args = ChildArgs {
            path: program.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            cwd: spec.cwd.as_raw_fd(),
            stdio: [
                spec.stdin.as_raw_fd(),
                spec.stdout.as_raw_fd(),
                spec.stderr.as_raw_fd(),
            ],
            cgroup_procs: cgroup_procs.as_ptr(),
            cgroup_count: cgroup_procs.len(),
            uid,
            gid,
            groups: groups.as_ptr(),
            group_count: groups.len(),
            new_session: spec.group == Group::NewSession,
            process_group: match spec.group {
                Group::NewSession => -1,
                Group::Own => 0,
                Group::Join(pgid) => pgid,
            },
            ignored: spec.ignored_signals.as_ptr(),
            ignored_count: spec.ignored_signals.len(),
            die_with_parent: spec.die_with_parent,
            // SAFETY: plain system call.
            parent: unsafe { libc::getpid() },
            failed_step: 0,
            failed_errno: 0,
        };
        let mut pidfd: libc::c_int = -1;
        // The stack grows down: the child starts at its (16-byte aligned) top.
        let top = {
            let end = self.stack.as_mut_ptr() as usize + self.stack.len();
            (end & !15) as *mut libc::c_void
        };
        // SAFETY: blocks every signal of this thread across the clone (restored below), so no
        // signal handler runs in the child, which shares this memory; then clones with a stack
        // and arguments that stay alive until the child has exec'd or exited (CLONE_VFORK).
        let pid = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let pid = libc::clone(
                child_main,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
                (&mut args as *mut ChildArgs).cast(),
                &mut pidfd as *mut libc::c_int,
            );
            let clone_errno = errno();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid < 0 {
                return Err(format!(
                    "cannot start {}: clone: {}",
                    program.to_string_lossy(),
                    io::Error::from_raw_os_error(clone_errno)
                ));
            }
            pid
        };
        // SAFETY: CLONE_PIDFD stored a new descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        // The child exec'd or exited before clone returned (CLONE_VFORK).
        let step = Step::from_u32(args.failed_step);
        if step != Step::None {
            let _ = reap(pidfd.as_raw_fd(), false);
            return Err(format!(
                "cannot {} to run {}: {}",
                step.what(),
                program.to_string_lossy(),
                io::Error::from_raw_os_error(args.failed_errno)
            ));
        }
        Ok(Child { pid, pidfd })
    }
}

/// A reaped child's end.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reaped {
    pub status: ExitStatus,
    /// Its `getrusage` (the process and the children it waited for).
    pub cpu_time_ms: u64,
    pub max_rss_bytes: u64,
}

/// `waitid(P_PIDFD, pidfd, WEXITED)` with the child's resource usage; `nohang`: None while it
/// still runs.
pub(crate) fn reap(pidfd: RawFd, nohang: bool) -> io::Result<Option<Reaped>> {
    const P_PIDFD: libc::idtype_t = 3;
    // SAFETY: zeroed plain structs filled by the system call.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | if nohang { libc::WNOHANG } else { 0 };
    loop {
        // SAFETY: raw waitid (the libc wrapper has no rusage argument).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_waitid,
                P_PIDFD,
                pidfd,
                &mut info as *mut libc::siginfo_t,
                flags,
                &mut usage as *mut libc::rusage,
            )
        };
        if rc == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    // SAFETY: waitid filled `info` (si_pid 0 with WNOHANG: not exited yet).
    let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    let raw = match code {
        libc::CLD_EXITED => (status & 0xff) << 8,
        libc::CLD_DUMPED => (status & 0x7f) | 0x80,
        _ => status & 0x7f,
    };
    let tv_ms = |tv: libc::timeval| tv.tv_sec as u64 * 1000 + tv.tv_usec as u64 / 1000;
    Ok(Some(Reaped {
        status: ExitStatus::from_raw(raw),
        cpu_time_ms: tv_ms(usage.ru_utime) + tv_ms(usage.ru_stime),
        max_rss_bytes: usage.ru_maxrss.max(0) as u64 * 1024,
    }))
}

/// Sends `signal` to the process of `pidfd` (never to a recycled pid).
pub(crate) fn signal_pidfd(pidfd: RawFd, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: plain system call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A C string of `bytes`, or an error naming what held a NUL byte.
pub(crate) fn c_string(bytes: &[u8], what: &str) -> Result<CString, String> {
    CString::new(bytes).map_err(|_| format!("{what} contains a NUL byte"))
}

/// `KEY=VALUE` as a C string.
pub(crate) fn env_entry(key: &str, value: &std::ffi::OsStr) -> Result<CString, String> {
    let mut bytes = Vec::with_capacity(key.len() + 1 + value.len());
    bytes.extend_from_slice(key.as_bytes());
    bytes.push(b'=');
    bytes.extend_from_slice(value.as_bytes());
    c_string(&bytes, &format!("environment variable {key}"))
}

/// `/bin/sh`, the shell tasks run under.
pub(crate) fn shell() -> &'static CStr {
    c"/bin/sh"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Read;
    use std::os::fd::AsFd;

    fn run(argv: &[&str], env: &[&str]) -> (Result<Child, String>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cwd = File::open(dir.path()).unwrap();
        let null = File::open("/dev/null").unwrap();
        let out = File::create(dir.path().join("out")).unwrap();
        let argv: Vec<CString> = argv.iter().map(|a| CString::new(*a).unwrap()).collect();
        let env: Vec<CString> = env.iter().map(|a| CString::new(*a).unwrap()).collect();
        let child = Spawner::new().spawn(&Spec {
            argv: &argv,
            env: &env,
            cwd: cwd.as_fd(),
            stdin: null.as_fd(),
            stdout: out.as_fd(),
            stderr: out.as_fd(),
            cgroup_procs: &[],
            credentials: None,
            group: Group::NewSession,
            ignored_signals: &[],
            die_with_parent: true,
        });
        (child, dir)
    }

    #[test]
    fn runs_in_its_dir_with_only_its_environment_and_reports_the_exit() {
        let (child, dir) = run(
            &["/bin/sh", "-c", "pwd; env | sort; trap; exit 3"],
            &["ONLY=this"],
        );
        let child = child.unwrap();
        let reaped = reap(child.pidfd.as_raw_fd(), false).unwrap().unwrap();
        assert_eq!(reaped.status.code(), Some(3));
        let mut out = String::new();
        File::open(dir.path().join("out"))
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let canonical = dir.path().canonicalize().unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], canonical.to_str().unwrap(), "{out}");
        // dash adds PWD (and nothing else but what we gave it); no trap is inherited.
        assert!(lines.contains(&"ONLY=this"), "{out}");
        assert!(!out.contains("PATH="), "{out}");
    }

    #[test]
    fn a_new_session_and_signals() {
        let (child, _dir) = run(&["/bin/sh", "-c", "sleep 30"], &[]);
        let child = child.unwrap();
        // SAFETY: plain system call.
        let sid = unsafe { libc::getsid(child.pid) };
        assert_eq!(sid, child.pid);
        assert!(reap(child.pidfd.as_raw_fd(), true).unwrap().is_none());
        signal_pidfd(child.pidfd.as_raw_fd(), libc::SIGTERM).unwrap();
        let reaped = reap(child.pidfd.as_raw_fd(), false).unwrap().unwrap();
        assert_eq!(reaped.status.signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn a_failed_exec_names_the_step() {
        let (child, _dir) = run(&["/nonexistent/program"], &[]);
        let err = child.unwrap_err();
        assert!(
            err.starts_with("cannot exec to run /nonexistent/program: No such file"),
            "{err}"
        );
    }
}
