//! The kill sequence (Aurora's "Forceful Termination"), for a kill request and for an
//! unhealthy task alike:
//!
//! 1. With an HTTP lifecycle: POST `graceful_shutdown_endpoint` on 127.0.0.1:<its named port>,
//!    wait up to `graceful_shutdown_wait_secs`;
//! 2. POST `shutdown_endpoint`, wait up to `shutdown_wait_secs`;
//! 3. SIGTERM to the task's process group (and, with cgroups, to every process of the task),
//!    wait up to `finalization_wait_secs`;
//! 4. SIGKILL to the group and the task's whole cgroup (frozen first on cgroup v1, so no
//!    process forks away meanwhile).
//!
//! Every wait ends as soon as the task's process exits, and the steps after it are skipped. A
//! wait is measured from the moment its POST is sent. A POST that gets no answer within
//! [`POST_TIMEOUT`] (connection refused, reset, timed out) or is answered with anything but a
//! 2xx status moves on to the next step at once: the task is not listening or does not
//! implement the endpoint, so waiting for it to act on it is pointless. A lifecycle naming a
//! port the task does not have skips both POSTs.
//!
//! Where the sequence runs: in the task's watcher (`watch.rs`), which owns the process; the
//! agent starts it at most once per task (a repeated kill request finds the trigger taken).

use std::io;
use std::time::Duration;

use borealis_core::{HttpLifecycle, TaskId};
use hyper::Method;
use tokio::time::Instant;

use crate::http::{seconds, LoopbackClient};
use crate::spawn::Reaped;
use crate::watch::{Killer, TaskProcess};

/// Longest a lifecycle POST may take to be answered.
pub(crate) const POST_TIMEOUT: Duration = Duration::from_secs(2);

/// What killing one task takes, resolved at launch.
#[derive(Clone, Debug)]
pub(crate) struct KillPlan {
    pub http: Option<HttpSteps>,
    pub finalization_wait: Duration,
}

/// The two lifecycle POSTs.
#[derive(Clone, Debug)]
pub(crate) struct HttpSteps {
    /// The named port's number, or its name when the task has no such port.
    pub port: Result<u16, String>,
    pub graceful_endpoint: String,
    pub graceful_wait: Duration,
    pub shutdown_endpoint: String,
    pub shutdown_wait: Duration,
}

impl KillPlan {
    pub fn new(
        lifecycle: Option<&HttpLifecycle>,
        finalization_wait_secs: u32,
        ports: &[(String, u16)],
    ) -> KillPlan {
        KillPlan {
            http: lifecycle.map(|l| HttpSteps {
                port: ports
                    .iter()
                    .find(|(name, _)| *name == l.port)
                    .map(|(_, number)| *number)
                    .ok_or_else(|| l.port.clone()),
                graceful_endpoint: l.graceful_shutdown_endpoint.clone(),
                graceful_wait: Duration::from_secs(u64::from(l.graceful_shutdown_wait_secs)),
                shutdown_endpoint: l.shutdown_endpoint.clone(),
                shutdown_wait: Duration::from_secs(u64::from(l.shutdown_wait_secs)),
            }),
            finalization_wait: Duration::from_secs(u64::from(finalization_wait_secs)),
        }
    }
}

/// Carries out the kill sequence on the task's process (its shell) and everything `killer`
/// reaches, and returns its end once it is gone.
pub(crate) async fn escalate(
    task_id: TaskId,
    child: &mut TaskProcess,
    killer: &Killer,
    plan: &KillPlan,
    client: &LoopbackClient,
) -> io::Result<Reaped> {
    if let Some(http) = &plan.http {
        match &http.port {
            Err(name) => tracing::warn!(task = %task_id, port = %name,
                "the lifecycle names a port the task does not have: no shutdown requests"),
            Ok(port) => {
                for (endpoint, wait) in [
                    (&http.graceful_endpoint, http.graceful_wait),
                    (&http.shutdown_endpoint, http.shutdown_wait),
                ] {
                    if let Some(status) =
                        post_and_wait(task_id, child, client, *port, endpoint, wait).await
                    {
                        return status;
                    }
                }
            }
        }
    }
    let pid = child.pid();
    tracing::debug!(task = %task_id, pid, wait = ?plan.finalization_wait, "SIGTERM");
    killer.terminate();
    if let Ok(status) = tokio::time::timeout(plan.finalization_wait, child.wait()).await {
        return status;
    }
    tracing::info!(task = %task_id, pid, wait = ?plan.finalization_wait,
        "still running after the finalization wait: SIGKILL");
    killer.kill().await;
    child.kill();
    child.wait().await
}

/// One lifecycle step: POST `endpoint`, then wait up to `wait` (from the POST) for the process
/// to exit. The exit status when it did; None to go on with the next step.
async fn post_and_wait(
    task_id: TaskId,
    child: &mut TaskProcess,
    client: &LoopbackClient,
    port: u16,
    endpoint: &str,
    wait: Duration,
) -> Option<io::Result<Reaped>> {
    let deadline = Instant::now() + wait;
    tracing::debug!(task = %task_id, port, endpoint, wait = %seconds(wait), "POST");
    let answer = tokio::select! {
        status = child.wait() => return Some(status),
        answer = client.request(Method::POST, port, endpoint, POST_TIMEOUT) => answer,
    };
    match answer {
        Ok(status) if (200..300).contains(&status) => {}
        Ok(status) => {
            tracing::info!(task = %task_id, port, endpoint, status,
                "shutdown request refused: next step");
            return None;
        }
        Err(e) => {
            tracing::info!(task = %task_id, port, endpoint, error = %e,
                "shutdown request failed: next step");
            return None;
        }
    }
    match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(status) => Some(status),
        Err(_) => {
            tracing::info!(task = %task_id, endpoint, wait = %seconds(wait),
                "still running after the shutdown request's wait");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_resolve_the_named_port() {
        let ports = vec![("http".to_string(), 31000), ("health".to_string(), 31001)];
        let plan = KillPlan::new(Some(&HttpLifecycle::default()), 7, &ports);
        let http = plan.http.unwrap();
        assert_eq!(http.port, Ok(31001));
        assert_eq!(http.graceful_endpoint, "/quitquitquit");
        assert_eq!(http.shutdown_endpoint, "/abortabortabort");
        assert_eq!(http.graceful_wait, Duration::from_secs(5));
        assert_eq!(plan.finalization_wait, Duration::from_secs(7));
        let plan = KillPlan::new(Some(&HttpLifecycle::default()), 1, &ports[..1]);
        assert_eq!(plan.http.unwrap().port, Err("health".to_string()));
        assert!(KillPlan::new(None, 1, &ports).http.is_none());
    }
}
