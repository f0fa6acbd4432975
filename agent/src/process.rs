//! What a task's process is given and what its end means: its environment, signalling a
//! process group, and the terminal state, exit code and message of an exit. Starting it is
//! `launcher.rs` and `spawn.rs`; no task outliving the agent is `reaper.rs`; the watcher that
//! waits for the exit, runs the health checks and carries out kills is `watch.rs`.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use borealis_core::TaskState;
use borealis_net::views::LaunchView;
use tokio::process::Command;

use crate::users::User;

/// The `PATH` of a task.
pub(crate) const TASK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

/// A task's whole environment, built from nothing (the agent's own is not inherited):
/// `PATH` ([`TASK_PATH`]), `HOME` (the sandbox), `USER` and `LOGNAME` (the task's user),
/// `TMPDIR` (the sandbox: one inode fewer per task than a `tmp` in it), `PWD`, and Borealis's own: `BOREALIS_TASK_ID`,
/// `_INSTANCE_ID`, `_JOB_KEY`, `_SANDBOX`, one `BOREALIS_PORT_<NAME>` per named port and
/// `BOREALIS_PORTS` (`name=port,...`).
pub(crate) fn task_environment(
    launch: &LaunchView,
    sandbox: &Path,
    user: &User,
) -> Vec<(String, OsString)> {
    let mut env: Vec<(String, OsString)> = vec![
        ("PATH".into(), TASK_PATH.into()),
        ("HOME".into(), sandbox.into()),
        ("USER".into(), user.name.clone().into()),
        ("LOGNAME".into(), user.name.clone().into()),
        ("TMPDIR".into(), sandbox.into()),
        ("PWD".into(), sandbox.into()),
        ("BOREALIS_TASK_ID".into(), launch.task_id.to_string().into()),
        (
            "BOREALIS_INSTANCE_ID".into(),
            launch.instance.to_string().into(),
        ),
        ("BOREALIS_JOB_KEY".into(), launch.job_key.to_string().into()),
        ("BOREALIS_SANDBOX".into(), sandbox.into()),
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
    /// During the kill sequence the agent started on its own: a failed health check
    /// (`unhealthy: ...`) or a sandbox over its disk limit; the reason.
    Failed(String),
}

/// The terminal state, exit code and message for an exit: KILLED after a kill request, FAILED
/// with the reason of a kill the agent started, else by the exit status. `oom_limit_mib`: the
/// OOM killer killed a process of the task, whose memory limit it is; a task that then fails
/// fails with `memory limit of N MiB exceeded`.
pub(crate) fn outcome(
    status: &io::Result<ExitStatus>,
    end: &End,
    oom_limit_mib: Option<u32>,
) -> (TaskState, i32, String) {
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
        End::Failed(reason) => (TaskState::Failed, code, reason.clone()),
        End::Exited if code == 0 && status.is_ok() => (TaskState::Finished, code, message),
        End::Exited => match oom_limit_mib {
            Some(mib) => (
                TaskState::Failed,
                code,
                format!("memory limit of {mib} MiB exceeded ({message})"),
            ),
            None => (TaskState::Failed, code, message),
        },
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
            outcome(&exited(0), &End::Exited, None),
            (TaskState::Finished, 0, "exited with status 0".into())
        );
        assert_eq!(
            outcome(&exited(3), &End::Exited, None),
            (TaskState::Failed, 3, "exited with status 3".into())
        );
        assert_eq!(
            outcome(&signalled(9), &End::Exited, None),
            (TaskState::Failed, -1, "killed by signal 9".into())
        );
        assert_eq!(
            outcome(&signalled(15), &End::Killed, None),
            (TaskState::Killed, -1, "killed by signal 15".into())
        );
        assert_eq!(
            outcome(&exited(0), &End::Killed, None),
            (TaskState::Killed, 0, "exited with status 0".into())
        );
        // An unhealthy task fails with the reason, whatever its exit: even a clean one.
        let unhealthy = End::Failed("unhealthy: GET /health answered 503 (1 failure)".into());
        assert_eq!(
            outcome(&exited(0), &unhealthy, None),
            (
                TaskState::Failed,
                0,
                "unhealthy: GET /health answered 503 (1 failure)".into()
            )
        );
        assert_eq!(outcome(&signalled(15), &unhealthy, None).1, -1);
        // The OOM killer names the limit; a clean exit despite it (a child was killed) is
        // still a clean exit, and a kill request still ends KILLED.
        assert_eq!(
            outcome(&signalled(9), &End::Exited, Some(64)),
            (
                TaskState::Failed,
                -1,
                "memory limit of 64 MiB exceeded (killed by signal 9)".into()
            )
        );
        assert_eq!(
            outcome(&exited(0), &End::Exited, Some(64)).0,
            TaskState::Finished
        );
        assert_eq!(
            outcome(&signalled(9), &End::Killed, Some(64)).0,
            TaskState::Killed
        );
        let err: io::Result<ExitStatus> = Err(io::Error::other("boom"));
        assert_eq!(outcome(&err, &End::Exited, None).0, TaskState::Failed);
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
