//! Task processes: the sandbox, the spawn (own process group, parent-death signal), the
//! watcher that waits for the exit and carries out the kill escalation.

use std::fs::File;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use borealis_core::{TaskId, TaskState};
use borealis_net::views::LaunchView;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

/// A started task process.
pub(crate) struct Started {
    pub child: Child,
    /// The child's pid, which is also its process group id.
    pub pgid: i32,
    pub sandbox: PathBuf,
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

/// Creates the sandbox and spawns `sh -c <command>` in it. Must run on the agent's long-lived
/// thread: the child gets SIGKILL when the thread that forked it exits.
pub(crate) fn start(work_dir: &Path, launch: &LaunchView) -> Result<Started, String> {
    let sandbox = sandbox_path(work_dir, launch);
    std::fs::create_dir_all(&sandbox)
        .map_err(|e| format!("cannot create sandbox {}: {e}", sandbox.display()))?;
    let stdout = File::create(sandbox.join("stdout"))
        .map_err(|e| format!("cannot create {}/stdout: {e}", sandbox.display()))?;
    let stderr = File::create(sandbox.join("stderr"))
        .map_err(|e| format!("cannot create {}/stderr: {e}", sandbox.display()))?;

    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&launch.config.command)
        .current_dir(&sandbox)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(false)
        .env("BOREALIS_TASK_ID", launch.task_id.to_string())
        .env("BOREALIS_INSTANCE_ID", launch.instance.to_string())
        .env("BOREALIS_JOB_KEY", launch.job_key.to_string())
        .env("BOREALIS_SANDBOX", &sandbox)
        .env("PWD", &sandbox);
    let mut ports = String::new();
    for (name, port) in &launch.ports {
        command.env(port_env_name(name), port.to_string());
        if !ports.is_empty() {
            ports.push(',');
        }
        ports.push_str(&format!("{name}={port}"));
    }
    command.env("BOREALIS_PORTS", ports);
    command.process_group(0);
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
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start sh -c in {}: {e}", sandbox.display()))?;
    let pgid = match child.id() {
        Some(pid) => pid as i32,
        None => return Err("the process exited before its pid was read".to_string()),
    };
    Ok(Started {
        child,
        pgid,
        sandbox,
    })
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

/// What a watcher reports when its process has exited.
#[derive(Debug)]
pub(crate) struct Exit {
    pub task_id: TaskId,
    pub status: io::Result<ExitStatus>,
    /// True when the process ended after a kill request (SIGTERM, maybe SIGKILL) was sent.
    pub killed: bool,
}

/// Waits for the task's process. When a kill request arrives (carrying the finalization
/// wait), SIGTERMs the group, waits at most that long, then SIGKILLs it. Once the process is
/// gone, SIGKILLs whatever is left of its group (background children) and reports the exit.
pub(crate) async fn watch(
    task_id: TaskId,
    mut child: Child,
    pgid: i32,
    kill: oneshot::Receiver<Duration>,
    exits: mpsc::Sender<Exit>,
) {
    let mut killed = false;
    let status = tokio::select! {
        status = child.wait() => status,
        Ok(wait) = kill => {
            killed = true;
            tracing::debug!(task = %task_id, pgid, ?wait, "SIGTERM");
            signal_group(pgid, libc::SIGTERM);
            match tokio::time::timeout(wait, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    tracing::info!(task = %task_id, pgid, ?wait, "still running after the finalization wait: SIGKILL");
                    signal_group(pgid, libc::SIGKILL);
                    child.wait().await
                }
            }
        }
    };
    signal_group(pgid, libc::SIGKILL);
    let _ = exits
        .send(Exit {
            task_id,
            status,
            killed,
        })
        .await;
}

/// The terminal state, exit code and message for an exit.
pub(crate) fn outcome(status: &io::Result<ExitStatus>, killed: bool) -> (TaskState, i32, String) {
    let (code, message) = match status {
        Err(e) => (-1, format!("cannot wait for the process: {e}")),
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => (code, format!("exited with status {code}")),
            (None, Some(signal)) => (-1, format!("killed by signal {signal}")),
            (None, None) => (-1, format!("ended with {s}")),
        },
    };
    let state = if killed {
        TaskState::Killed
    } else if code == 0 && status.is_ok() {
        TaskState::Finished
    } else {
        TaskState::Failed
    };
    (state, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        let exited = |c: i32| Ok(ExitStatus::from_raw(c << 8));
        let signalled = |s: i32| Ok(ExitStatus::from_raw(s));
        assert_eq!(
            outcome(&exited(0), false),
            (TaskState::Finished, 0, "exited with status 0".into())
        );
        assert_eq!(
            outcome(&exited(3), false),
            (TaskState::Failed, 3, "exited with status 3".into())
        );
        assert_eq!(
            outcome(&signalled(9), false),
            (TaskState::Failed, -1, "killed by signal 9".into())
        );
        assert_eq!(
            outcome(&signalled(15), true),
            (TaskState::Killed, -1, "killed by signal 15".into())
        );
        assert_eq!(
            outcome(&exited(0), true),
            (TaskState::Killed, 0, "exited with status 0".into())
        );
        let err: io::Result<ExitStatus> = Err(io::Error::other("boom"));
        assert_eq!(outcome(&err, false).0, TaskState::Failed);
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
