//! Task processes: the sandbox, the environment, the spawn (own process group, parent-death
//! signal, guard), signalling a group, and what an exit means. The watcher that waits for the
//! exit, runs the health checks and carries out kills is `watch.rs`.
//!
//! # Why every task has a guard process
//!
//! A task must not outlive its agent: once the agent is gone the scheduler reschedules the
//! instance elsewhere, and a survivor would make it run twice. `PR_SET_PDEATHSIG` only reaches
//! the process the agent forked (the task's `sh`); whatever that shell started (`cmd &`,
//! pipelines, daemons of the user's command) is re-parented to init and lives on. So next to
//! each task the agent starts a *guard*: `/bin/sh -c 'trap "" <signals>; read line; kill -KILL
//! 0'`, placed in the task's process group, with the read end of the agent's [`Lifeline`] pipe
//! as its stdin. Only the agent holds the pipe's write end (close-on-exec, never written), so
//! the kernel closes it exactly when the agent process dies, however it dies (SIGKILL, crash,
//! OOM kill, or a clean exit); the guard's `read` then sees end-of-file and its `kill -KILL 0`
//! kills every process of the task's group, itself included. Any other end of `read` (an
//! error) ends the same way, so the guard fails closed.
//!
//! Why this shape rather than a supervisor between the agent and the user's command (a
//! wrapper shell as the group leader, or a second fork in `pre_exec`):
//! - The task's process tree is untouched: the agent's child is still the user's `sh`, the
//!   leader of its group (`$$` is the group id), with the same stdin, environment, `wait`
//!   semantics and exit status (the agent reads "exited with N" / "killed by signal N"
//!   straight from it; no relaying, re-raising or encoding of signals through a wrapper, no
//!   dash-specific trap/`wait` behaviour on the user's path).
//! - The kill escalation is unchanged: the guard ignores SIGTERM (and the other signals a
//!   task's group may be sent), so SIGTERM reaches the user's processes, they get their whole
//!   `finalization_wait_secs`, and the final group SIGKILL takes the guard with them.
//! - Nothing runs between fork and exec but the usual system calls (no extra fork in
//!   `pre_exec` of a multithreaded process); the guard is an exec'd `sh` of a few hundred KiB,
//!   not a copy-on-write copy of the agent's memory.
//! - It does not rely on `PR_SET_PDEATHSIG`'s per-*thread* semantics or on the fork/prctl race:
//!   a pipe's end-of-file follows the agent *process*, whenever it dies.
//! - While the guard lives it keeps the group id in use, so the agent's own killpg after it
//!   reaped the shell does not hit a recycled group: the guard is reaped only after that.
//!
//! The shell itself keeps `PR_SET_PDEATHSIG` (SIGKILL), belt and braces. What the guard cannot
//! cover: a process that leaves the group on purpose (`setsid`, `setpgid`), and a task that
//! stops or SIGKILLs its own guard (`kill -STOP 0`); both need cgroups (or a PID namespace).

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use borealis_core::TaskState;
use borealis_net::views::LaunchView;
use tokio::process::{Child, Command};

/// The guard's script (see the module documentation). It ignores the signals a task's group
/// is sent (the agent's SIGTERM, a user's `kill 0`), waits for its stdin, the lifeline, to
/// end, then kills its whole process group: the task's.
const GUARD_SCRIPT: &str =
    "trap '' HUP INT QUIT TERM USR1 USR2 ALRM PIPE TSTP; read line; kill -KILL 0";
/// `$0` of the guard, what `ps` shows after the script.
const GUARD_NAME: &str = "borealis-task-guard";

/// A pipe whose write end only the agent holds: when the agent process dies, the kernel closes
/// it and every task's guard reads end-of-file. Dropping it has the same effect, so it must
/// live as long as the agent's tasks should.
pub(crate) struct Lifeline {
    read: OwnedFd,
    /// Never written; held so the pipe ends when the agent does.
    _write: OwnedFd,
}

impl Lifeline {
    pub fn new() -> io::Result<Lifeline> {
        let mut fds = [-1; 2];
        // SAFETY: plain system call filling `fds`. Both ends are close-on-exec: no task, guard
        // or other child of the agent keeps the write end past its exec.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Lifeline {
            read,
            _write: write,
        })
    }
}

/// A started task process.
pub(crate) struct Started {
    pub child: Child,
    /// The child's pid, which is also its process group id.
    pub pgid: i32,
    /// The task's guard, in the same process group.
    pub guard: Child,
    pub sandbox: PathBuf,
    /// What the task's environment adds to the agent's (shell health checks get it too).
    pub env: Vec<(String, OsString)>,
}

/// `<work_dir>/sandboxes/<role>.<env>.<name>/<instance>/<task_id hex>`. Job key parts are
/// `[A-Za-z0-9_.-]+` (checked when decoded) and joined by dots, so no component can be `..`.
pub(crate) fn sandbox_path(work_dir: &Path, launch: &LaunchView) -> PathBuf {
    let job = &launch.job_key;
    work_dir
        .join("sandboxes")
        .join(format!("{}.{}.{}", job.role, job.environment, job.name))
        .join(launch.instance.to_string())
        .join(launch.task_id.to_string())
}

/// `BOREALIS_PORT_<NAME>`: the name upper-cased, anything but `[A-Z0-9_]` replaced by `_`.
pub(crate) fn port_env_name(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("BOREALIS_PORT_{name}")
}

/// What a task's environment adds to the agent's: `BOREALIS_TASK_ID`, `_INSTANCE_ID`,
/// `_JOB_KEY`, `_SANDBOX`, `PWD`, one `BOREALIS_PORT_<NAME>` per named port and
/// `BOREALIS_PORTS` (`name=port,...`).
pub(crate) fn task_environment(launch: &LaunchView, sandbox: &Path) -> Vec<(String, OsString)> {
    let mut env: Vec<(String, OsString)> = vec![
        ("BOREALIS_TASK_ID".into(), launch.task_id.to_string().into()),
        (
            "BOREALIS_INSTANCE_ID".into(),
            launch.instance.to_string().into(),
        ),
        ("BOREALIS_JOB_KEY".into(), launch.job_key.to_string().into()),
        ("BOREALIS_SANDBOX".into(), sandbox.into()),
        ("PWD".into(), sandbox.into()),
    ];
    let mut ports = String::new();
    for (name, port) in &launch.ports {
        env.push((port_env_name(name), port.to_string().into()));
        if !ports.is_empty() {
            ports.push(',');
        }
        ports.push_str(&format!("{name}={port}"));
    }
    env.push(("BOREALIS_PORTS".into(), ports.into()));
    env
}

/// Makes the child get SIGKILL when the agent's thread that forks it exits (and refuses to
/// start when the agent is already gone).
pub(crate) fn die_with_agent(command: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The agent died between fork and prctl: the signal was missed, so leave now.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Creates the sandbox, spawns `sh -c <command>` in it, then the task's guard in its process
/// group. Must run on the agent's long-lived thread: the child gets SIGKILL when the thread
/// that forked it exits.
pub(crate) fn start(
    work_dir: &Path,
    launch: &LaunchView,
    lifeline: &Lifeline,
) -> Result<Started, String> {
    let sandbox = sandbox_path(work_dir, launch);
    std::fs::create_dir_all(&sandbox)
        .map_err(|e| format!("cannot create sandbox {}: {e}", sandbox.display()))?;
    let stdout = File::create(sandbox.join("stdout"))
        .map_err(|e| format!("cannot create {}/stdout: {e}", sandbox.display()))?;
    let stderr = File::create(sandbox.join("stderr"))
        .map_err(|e| format!("cannot create {}/stderr: {e}", sandbox.display()))?;

    let env = task_environment(launch, &sandbox);
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&launch.config.command)
        .current_dir(&sandbox)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(false)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .process_group(0);
    die_with_agent(&mut command);
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start sh -c in {}: {e}", sandbox.display()))?;
    let pgid = match child.id() {
        Some(pid) => pid as i32,
        None => return Err("the process exited before its pid was read".to_string()),
    };
    // The shell has not been reaped (only its watcher, not started yet, waits for it), so its
    // group exists for the guard to join even if the command already ended.
    let guard = match start_guard(pgid, lifeline) {
        Ok(guard) => guard,
        Err(e) => {
            // Without a guard the task could outlive the agent: do not run it.
            signal_group(pgid, libc::SIGKILL);
            let mut child = child;
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            return Err(format!("cannot start the task's guard: {e}"));
        }
    };
    Ok(Started {
        child,
        pgid,
        guard,
        sandbox,
        env,
    })
}

/// Spawns the guard of the process group `pgid` (see the module documentation).
fn start_guard(pgid: i32, lifeline: &Lifeline) -> io::Result<Child> {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(GUARD_SCRIPT)
        .arg(GUARD_NAME)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::from(lifeline.read.try_clone()?))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(false)
        .process_group(pgid);
    // Ignore the group's signals from the moment of the fork, not only once the script's
    // `trap` has run: a task that signals its group (`kill -TERM 0`) right as it starts would
    // otherwise kill its guard first. Ignored dispositions survive exec.
    // SAFETY: only `signal`, which is async-signal-safe, runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            for signal in GUARD_IGNORED_SIGNALS {
                if libc::signal(signal, libc::SIG_IGN) == libc::SIG_ERR {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command.spawn()
}

/// The signals the guard ignores (the same as its script's `trap`).
const GUARD_IGNORED_SIGNALS: [libc::c_int; 9] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGPIPE,
    libc::SIGTSTP,
];

/// Sends `signal` to every process of the group; a group that is gone already is fine.
pub(crate) fn signal_group(pgid: i32, signal: libc::c_int) {
    if pgid <= 1 {
        return; // never signal "every process" or init's group
    }
    // SAFETY: plain system call.
    if unsafe { libc::killpg(pgid, signal) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(pgid, signal, error = %err, "cannot signal process group");
        }
    }
}

/// Why a task's process ended, as far as the agent had a hand in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// By itself: no kill was under way.
    Exited,
    /// During the kill sequence of a kill request.
    Killed,
    /// During the kill sequence of a failed health check; the reason (`unhealthy: ...`).
    Unhealthy(String),
}

/// The terminal state, exit code and message for an exit: KILLED after a kill request, FAILED
/// with the health check's reason after an unhealthy kill, else by the exit status.
pub(crate) fn outcome(status: &io::Result<ExitStatus>, end: &End) -> (TaskState, i32, String) {
    let (code, message) = match status {
        Err(e) => (-1, format!("cannot wait for the process: {e}")),
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => (code, format!("exited with status {code}")),
            (None, Some(signal)) => (-1, format!("killed by signal {signal}")),
            (None, None) => (-1, format!("ended with {s}")),
        },
    };
    match end {
        End::Killed => (TaskState::Killed, code, message),
        End::Unhealthy(reason) => (TaskState::Failed, code, reason.clone()),
        End::Exited if code == 0 && status.is_ok() => (TaskState::Finished, code, message),
        End::Exited => (TaskState::Failed, code, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        let exited = |c: i32| Ok(ExitStatus::from_raw(c << 8));
        let signalled = |s: i32| Ok(ExitStatus::from_raw(s));
        assert_eq!(
            outcome(&exited(0), &End::Exited),
            (TaskState::Finished, 0, "exited with status 0".into())
        );
        assert_eq!(
            outcome(&exited(3), &End::Exited),
            (TaskState::Failed, 3, "exited with status 3".into())
        );
        assert_eq!(
            outcome(&signalled(9), &End::Exited),
            (TaskState::Failed, -1, "killed by signal 9".into())
        );
        assert_eq!(
            outcome(&signalled(15), &End::Killed),
            (TaskState::Killed, -1, "killed by signal 15".into())
        );
        assert_eq!(
            outcome(&exited(0), &End::Killed),
            (TaskState::Killed, 0, "exited with status 0".into())
        );
        // An unhealthy task fails with the reason, whatever its exit: even a clean one.
        let unhealthy = End::Unhealthy("unhealthy: GET /health answered 503 (1 failure)".into());
        assert_eq!(
            outcome(&exited(0), &unhealthy),
            (
                TaskState::Failed,
                0,
                "unhealthy: GET /health answered 503 (1 failure)".into()
            )
        );
        assert_eq!(outcome(&signalled(15), &unhealthy).1, -1);
        let err: io::Result<ExitStatus> = Err(io::Error::other("boom"));
        assert_eq!(outcome(&err, &End::Exited).0, TaskState::Failed);
    }

    #[test]
    fn port_names() {
        assert_eq!(port_env_name("http"), "BOREALIS_PORT_HTTP");
        assert_eq!(
            port_env_name("admin-http.v2"),
            "BOREALIS_PORT_ADMIN_HTTP_V2"
        );
    }
}
