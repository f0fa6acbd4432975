//! A task's watcher: one small tokio task per started task, owning its process. It waits for
//! the process to exit, runs the task's health checks (if any: `health.rs`) and reports the
//! first healthy verdict, and carries out the kill sequence (`kill.rs`) on the agent's kill
//! request or on an unhealthy verdict, whichever comes first; the other is then ignored. Once
//! the process is gone it SIGKILLs what is left of the group (background children, the guard),
//! reaps the guard and reports the end.
//!
//! Nothing here blocks the agent's loop: checks and kill steps are awaited in the watcher, one
//! check in flight per task, and the agent hears of them as [`Event`]s on one bounded channel,
//! in the order they happened (a task's RUNNING always comes before its end).

use std::io;
use std::process::ExitStatus;

use borealis_core::TaskId;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};

use crate::health::{Monitor, Verdict};
use crate::http::LoopbackClient;
use crate::kill::{self, KillPlan};
use crate::process::{self, End};

/// What a watcher tells the agent.
#[derive(Debug)]
pub(crate) enum Event {
    /// The task passed its health checks: it is RUNNING now.
    Healthy(TaskId),
    /// The task's process is gone.
    Ended(Exit),
}

/// A task's process has exited.
#[derive(Debug)]
pub(crate) struct Exit {
    pub task_id: TaskId,
    pub status: io::Result<ExitStatus>,
    pub end: End,
}

/// Everything a watcher owns.
pub(crate) struct Watched {
    pub task_id: TaskId,
    pub child: Child,
    /// The child's pid and process group id.
    pub pgid: i32,
    pub guard: Child,
    /// Fires when the agent asks for the kill (at most once: the agent drops the sender then).
    pub kill: oneshot::Receiver<()>,
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
        mut child,
        pgid,
        mut guard,
        mut kill,
        mut health,
        kill_plan,
        client,
        events,
    } = watched;
    let mut kill_open = true;
    let (status, end) = loop {
        tokio::select! {
            status = child.wait() => break (status, End::Exited),
            request = &mut kill, if kill_open => match request {
                Ok(()) => {
                    tracing::info!(task = %task_id, plan = ?kill_plan, "killing task");
                    let status = kill::escalate(task_id, &mut child, pgid, &kill_plan, &client).await;
                    break (status, End::Killed);
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
                    let status = kill::escalate(task_id, &mut child, pgid, &kill_plan, &client).await;
                    break (status, End::Unhealthy(reason));
                }
            },
        }
    };
    // The guard is still in the group (it ignores everything but SIGKILL), so the group id
    // cannot have been reused yet.
    process::signal_group(pgid, libc::SIGKILL);
    // Unreaped, so its pid is still ours; SIGKILL also covers a guard a user stopped.
    let _ = guard.start_kill();
    if let Err(e) = guard.wait().await {
        tracing::warn!(task = %task_id, pgid, error = %e, "cannot reap the task's guard");
    }
    let _ = events
        .send(Event::Ended(Exit {
            task_id,
            status,
            end,
        }))
        .await;
}

async fn next_verdict(health: &mut Option<Monitor>) -> Verdict {
    match health {
        Some(monitor) => monitor.next_verdict().await,
        None => std::future::pending().await,
    }
}
