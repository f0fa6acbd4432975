//! A task's watcher: one small tokio task per started task, owning its process. It waits for
//! the process to exit (its pidfd becomes readable; `waitid(P_PIDFD)` reaps it with its
//! resource usage), runs the task's health checks (if any: `health.rs`) and reports the first
//! healthy verdict, and carries out the kill sequence (`kill.rs`) on the agent's kill request,
//! on an unhealthy verdict or on an exceeded disk limit, whichever comes first; the others are
//! then ignored. Once the process is gone it kills what is left of the task (with cgroups: the
//! janitor kills the cgroup, reads its usage and removes it; without: SIGKILL to the group,
//! then the guard), and reports the end with what the task used.
//!
//! Nothing here blocks the agent's loop: checks and kill steps are awaited in the watcher, one
//! check in flight per task, cgroup work is the janitor's (`launcher.rs`), and the agent hears
//! of them as [`Event`]s on one bounded channel, in the order they happened (a task's RUNNING
//! always comes before its end). Exits are collected in batches: every pidfd that became
//! readable is handled in the same turn of the runtime, and the agent drains every event
//! queued before it flushes one frame of statuses.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitStatus;

use borealis_core::{TaskId, TaskUsage};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};

use crate::cgroup::TaskCgroup;
use crate::health::{Monitor, Verdict};
use crate::http::LoopbackClient;
use crate::kill::{self, KillPlan};
use crate::launcher::Janitor;
use crate::process::{self, End};
use crate::spawn::{self, Reaped};

/// What a watcher tells the agent.
#[derive(Debug)]
pub(crate) enum Event {
    /// The task passed its health checks: it is RUNNING now.
    Healthy(TaskId),
    /// The task's process is gone.
    Ended(Exit),
    /// The agent's reaper (`reaper.rs`) died: start another.
    ReaperDied,
}

/// A task's process has exited.
#[derive(Debug)]
pub(crate) struct Exit {
    pub task_id: TaskId,
    pub status: io::Result<ExitStatus>,
    pub end: End,
    /// What the task used (its cgroup's figures, else its process's rusage).
    pub usage: TaskUsage,
    /// The OOM killer killed a process of the task.
    pub oom_killed: bool,
}

/// Why the agent kills a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KillReason {
    /// The scheduler asked (it ends KILLED).
    Requested,
    /// The agent decided (a disk limit); it ends FAILED with the reason.
    Failed(String),
}

/// A started process of the agent's, watched through its pidfd.
pub(crate) struct TaskProcess {
    pid: i32,
    fd: AsyncFd<OwnedFd>,
    reaped: Option<Reaped>,
}

impl TaskProcess {
    /// Registers the child's pidfd with the runtime (must run on it).
    pub fn new(child: spawn::Child) -> io::Result<TaskProcess> {
        // SAFETY: the AsyncFd owns the pidfd (an OwnedFd), which stays open and the same
        // until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(child.pidfd, Interest::READABLE) }?;
        Ok(TaskProcess {
            pid: child.pid,
            fd,
            reaped: None,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the process to exit and reaps it (once; later calls return the same).
    /// Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<Reaped> {
        if let Some(reaped) = self.reaped {
            return Ok(reaped);
        }
        loop {
            let mut ready = self.fd.readable().await?;
            match spawn::reap(self.fd.get_ref().as_raw_fd(), true)? {
                Some(reaped) => {
                    self.reaped = Some(reaped);
                    return Ok(reaped);
                }
                None => ready.clear_ready(),
            }
        }
    }

    /// SIGKILLs the process unless it was reaped already (its pid may be reused then).
    pub fn kill(&self) {
        if self.reaped.is_none() {
            let _ = spawn::signal_pidfd(self.fd.get_ref().as_raw_fd(), libc::SIGKILL);
        }
    }
}

/// How a kill reaches every process of a task: its process group (the task's `sh` leads a
/// session of its own), and with cgroups everything in its cgroup.
pub(crate) struct Killer {
    pgid: i32,
    cgroup: Option<(TaskCgroup, Janitor)>,
}

impl Killer {
    pub fn new(pgid: i32, cgroup: Option<(TaskCgroup, Janitor)>) -> Killer {
        Killer { pgid, cgroup }
    }

    /// SIGTERM to the group and, with cgroups, to every process of the task. Only while the
    /// task's process is unreaped (its group id cannot be reused before).
    pub fn terminate(&self) {
        process::signal_group(self.pgid, libc::SIGTERM);
        if let Some((cgroup, janitor)) = &self.cgroup {
            janitor.signal_all(cgroup, libc::SIGTERM);
        }
    }

    /// SIGKILL to the group and, with cgroups, to everything in the cgroup (v1: frozen first,
    /// so nothing forks away meanwhile).
    pub async fn kill(&self) {
        process::signal_group(self.pgid, libc::SIGKILL);
        if let Some((cgroup, janitor)) = &self.cgroup {
            janitor.kill(cgroup.clone()).await;
        }
    }
}

/// Everything a watcher owns.
pub(crate) struct Watched {
    pub task_id: TaskId,
    pub process: TaskProcess,
    pub killer: Killer,
    /// Without cgroups: the task's guard, in its process group.
    pub guard: Option<TaskProcess>,
    /// Fires when the agent asks for the kill (at most once: the agent drops the sender then).
    pub kill: oneshot::Receiver<KillReason>,
    /// None without a health check.
    pub health: Option<Monitor>,
    pub kill_plan: KillPlan,
    pub client: LoopbackClient,
    pub events: mpsc::Sender<Event>,
}

/// The watcher's body; see the module documentation.
pub(crate) async fn watch(watched: Watched) {
    let Watched {
        task_id,
        mut process,
        killer,
        mut guard,
        mut kill,
        mut health,
        kill_plan,
        client,
        events,
    } = watched;
    let mut kill_open = true;
    let (reaped, end) = loop {
        tokio::select! {
            reaped = process.wait() => break (reaped, End::Exited),
            request = &mut kill, if kill_open => match request {
                Ok(reason) => {
                    tracing::info!(task = %task_id, ?reason, plan = ?kill_plan, "killing task");
                    let reaped = kill::escalate(task_id, &mut process, &killer, &kill_plan, &client).await;
                    break (reaped, match reason {
                        KillReason::Requested => End::Killed,
                        KillReason::Failed(why) => End::Failed(why),
                    });
                }
                // The agent let go of the trigger: no kill request can come any more.
                Err(_) => kill_open = false,
            },
            verdict = next_verdict(&mut health), if health.is_some() => match verdict {
                Verdict::Healthy => {
                    tracing::info!(task = %task_id, "task healthy");
                    if events.send(Event::Healthy(task_id)).await.is_err() {
                        tracing::debug!(task = %task_id, "the agent is gone");
                    }
                }
                Verdict::Unhealthy(reason) => {
                    tracing::warn!(task = %task_id, %reason, "killing an unhealthy task");
                    let reaped = kill::escalate(task_id, &mut process, &killer, &kill_plan, &client).await;
                    break (reaped, End::Failed(reason));
                }
            },
        }
    };
    drop(health);
    let (mut usage, mut oom_killed) = (TaskUsage::default(), false);
    if let Ok(r) = &reaped {
        usage.cpu_time_ms = r.cpu_time_ms;
        usage.peak_memory_bytes = r.max_rss_bytes;
    }
    match (&killer.cgroup, guard.as_mut()) {
        (Some((cgroup, janitor)), _) => {
            // Whatever the task left behind dies with its cgroup, which says what it used.
            let used = janitor.finish(cgroup.clone()).await;
            usage.cpu_time_ms = used.cpu_time_ms;
            usage.peak_memory_bytes = used.peak_memory_bytes;
            oom_killed = used.oom_kills > 0;
        }
        (None, Some(guard)) => {
            // The guard is still in the group (it ignores everything but SIGKILL), so the group
            // id cannot have been reused yet.
            process::signal_group(killer.pgid, libc::SIGKILL);
            guard.kill();
            if let Err(e) = guard.wait().await {
                tracing::warn!(task = %task_id, error = %e, "cannot reap the task's guard");
            }
        }
        (None, None) => {}
    }
    let _ = events
        .send(Event::Ended(Exit {
            task_id,
            status: reaped.map(|r| r.status),
            end,
            usage,
            oom_killed,
        }))
        .await;
}

async fn next_verdict(health: &mut Option<Monitor>) -> Verdict {
    match health {
        Some(monitor) => monitor.next_verdict().await,
        None => std::future::pending().await,
    }
}
