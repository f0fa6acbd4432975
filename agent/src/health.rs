//! Health checks (Aurora's liveness before RUNNING): one [`Monitor`] per health-checked task,
//! driven by the task's watcher, which reports the first [`Verdict::Healthy`] (the agent then
//! reports RUNNING) and kills the task on [`Verdict::Unhealthy`].
//!
//! The rules (the contract is `borealis_core::service::HealthCheck`):
//! - A check runs every `interval_secs`, the first one `interval_secs` after the task started,
//!   and never two at once (the next tick waits for the check in flight); each is bounded by
//!   `timeout_secs`.
//! - HTTP: `GET http://127.0.0.1:<the named port><endpoint>`, healthy iff the status is
//!   `expected_status`. Shell: `sh -c <command>` in the sandbox with the task's environment,
//!   healthy iff it exits 0; it runs in its own process group, SIGKILLed with it when it
//!   outlives the timeout (or the task ends first), and its output replaces
//!   `<sandbox>/health_check.log`.
//! - `min_consecutive_successes` passes in a row make the task healthy (once: it stays RUNNING).
//! - Failures during the first `initial_interval_secs` do not count. After that,
//!   `max_consecutive_failures + 1` failures in a row make it unhealthy, before RUNNING as well
//!   as after. A task not yet healthy that fails a check once `initial_interval_secs +
//!   max_consecutive_failures * interval_secs` have passed is unhealthy too (it flaps, or needs
//!   more successes in a row than it managed): the contract's deadline to become healthy.
//!
//! The counting is [`Tally`], pure and tested alone; [`Monitor`] adds the clock and the probes.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use borealis_core::{HealthCheck, HealthChecker};
use hyper::Method;
use tokio::process::{Child, Command};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::http::{seconds, LoopbackClient, RequestError};
use crate::process;
use crate::spawn::Credentials;

/// Shortest interval and timeout honoured: a job's 0 means "as often / as long as sensible",
/// not a busy loop.
const INTERVAL_MIN: Duration = Duration::from_secs(1);
const TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// Longest shell command quoted in a failure message.
const COMMAND_QUOTE_BYTES_MAX: usize = 200;

/// What a run of checks concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Passed `min_consecutive_successes` checks in a row, for the first time.
    Healthy,
    /// Why it is unhealthy: `unhealthy: <last failure> (<n> failures in a row)`.
    Unhealthy(String),
}

/// The counting rules of the module documentation, over check results and the time since the
/// task started.
#[derive(Debug)]
pub(crate) struct Tally {
    grace: Duration,
    /// Not healthy by then: the next failure is fatal.
    healthy_by: Duration,
    max_failures: u32,
    min_successes: u32,
    successes: u32,
    failures: u32,
    healthy: bool,
}

impl Tally {
    pub fn new(check: &HealthCheck) -> Tally {
        let grace = Duration::from_secs(u64::from(check.initial_interval_secs));
        Tally {
            grace,
            healthy_by: grace + interval(check) * check.max_consecutive_failures,
            max_failures: check.max_consecutive_failures,
            min_successes: check.min_consecutive_successes.max(1),
            successes: 0,
            failures: 0,
            healthy: false,
        }
    }

    /// Records one check that ended `since_start` after the task started: `Ok` when it
    /// passed, else why it failed. Returns the verdict it leads to, if any.
    pub fn record(&mut self, since_start: Duration, result: Result<(), String>) -> Option<Verdict> {
        match result {
            Ok(()) => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if !self.healthy && self.successes >= self.min_successes {
                    self.healthy = true;
                    return Some(Verdict::Healthy);
                }
                None
            }
            Err(reason) => {
                self.successes = 0;
                if since_start < self.grace {
                    return None;
                }
                self.failures = self.failures.saturating_add(1);
                if self.failures > self.max_failures {
                    let count = match self.failures {
                        1 => "1 failure".to_string(),
                        n => format!("{n} failures in a row"),
                    };
                    return Some(Verdict::Unhealthy(format!("unhealthy: {reason} ({count})")));
                }
                if !self.healthy && since_start >= self.healthy_by {
                    return Some(Verdict::Unhealthy(format!(
                        "unhealthy: not healthy within {} (last check: {reason})",
                        seconds(self.healthy_by)
                    )));
                }
                None
            }
        }
    }
}

fn interval(check: &HealthCheck) -> Duration {
    Duration::from_secs(u64::from(check.interval_secs)).max(INTERVAL_MIN)
}

/// What one check does, resolved against the task (its port number, its environment).
// One per health-checked task, built once: boxing the HTTP client would save nothing that
// matters.
#[allow(clippy::large_enum_variant)]
enum Probe {
    Http {
        /// The named port's number, or the name the task does not have.
        port: Result<u16, String>,
        endpoint: String,
        expected_status: u16,
        client: LoopbackClient,
    },
    Shell {
        command: String,
        sandbox: PathBuf,
        env: Vec<(String, OsString)>,
        /// The task's user, when the agent switched to it: the check runs as it too.
        credentials: Option<Credentials>,
    },
}

/// The health checks of one task: call [`Monitor::next_verdict`] in a loop while the task
/// runs. Dropping it (or the future) cancels the check in flight.
pub(crate) struct Monitor {
    probe: Probe,
    tally: Tally,
    ticks: Interval,
    timeout: Duration,
    started: Instant,
}

impl Monitor {
    /// Checks for a task that started now, with these ports, sandbox and environment.
    pub fn new(
        check: &HealthCheck,
        ports: &[(String, u16)],
        sandbox: PathBuf,
        env: Vec<(String, OsString)>,
        credentials: Option<Credentials>,
        client: LoopbackClient,
    ) -> Monitor {
        let probe = match &check.checker {
            HealthChecker::Http {
                port,
                endpoint,
                expected_status,
            } => Probe::Http {
                port: ports
                    .iter()
                    .find(|(name, _)| name == port)
                    .map(|(_, number)| *number)
                    .ok_or_else(|| port.clone()),
                endpoint: endpoint.clone(),
                expected_status: *expected_status,
                client,
            },
            HealthChecker::Shell { command } => Probe::Shell {
                command: command.clone(),
                sandbox,
                env,
                credentials,
            },
        };
        let started = Instant::now();
        let every = interval(check);
        let mut ticks = tokio::time::interval_at(started + every, every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Monitor {
            probe,
            tally: Tally::new(check),
            ticks,
            timeout: Duration::from_secs(u64::from(check.timeout_secs)).max(TIMEOUT_MIN),
            started,
        }
    }

    /// Runs checks until one leads to a verdict. Cancel-safe: a dropped call loses at most the
    /// check in flight.
    pub async fn next_verdict(&mut self) -> Verdict {
        loop {
            self.ticks.tick().await;
            let result = self.check_once().await;
            if let Err(reason) = &result {
                tracing::debug!(reason = %reason, "health check failed");
            }
            if let Some(verdict) = self.tally.record(self.started.elapsed(), result) {
                return verdict;
            }
        }
    }

    async fn check_once(&self) -> Result<(), String> {
        match &self.probe {
            Probe::Http {
                port,
                endpoint,
                expected_status,
                client,
            } => {
                let port = match port {
                    Ok(port) => *port,
                    Err(name) => return Err(format!("the task has no port named {name:?}")),
                };
                match client
                    .request(Method::GET, port, endpoint, self.timeout)
                    .await
                {
                    Ok(status) if status == *expected_status => Ok(()),
                    Ok(status) => Err(format!("GET {endpoint} answered {status}")),
                    Err(e @ RequestError::TimedOut(_)) => Err(format!("GET {endpoint} {e}")),
                    Err(e) => Err(format!("GET {endpoint}: {e}")),
                }
            }
            Probe::Shell {
                command,
                sandbox,
                env,
                credentials,
            } => run_shell_check(command, sandbox, env, credentials.as_ref(), self.timeout).await,
        }
    }
}

/// A shell check's process, in its own group: SIGKILLed, group and all, unless it was reaped
/// (so a cancelled or timed-out check leaves nothing behind). Killing the group only while the
/// leader is unreaped keeps its id from having been reused.
struct CheckProcess {
    child: Child,
    pgid: i32,
    reaped: bool,
}

impl Drop for CheckProcess {
    fn drop(&mut self) {
        if !self.reaped {
            process::signal_group(self.pgid, libc::SIGKILL);
            // kill_on_drop: tokio reaps it in the background.
        }
    }
}

async fn run_shell_check(
    command: &str,
    sandbox: &std::path::Path,
    env: &[(String, OsString)],
    credentials: Option<&Credentials>,
    timeout: Duration,
) -> Result<(), String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let quoted = quote(command);
    // The sandbox is the task user's: never follow a link planted there, never block on a fifo.
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(sandbox.join("health_check.log"));
    let opened = opened.and_then(|file| {
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o640));
        if let Some(c) = credentials {
            std::os::unix::fs::fchown(&file, Some(c.uid), Some(c.gid))?;
        }
        Ok(file)
    });
    let output = match opened {
        Ok(file) => file,
        Err(e) => return Err(format!("cannot create health_check.log: {e}")),
    };
    let stderr = output
        .try_clone()
        .map_err(|e| format!("cannot share health_check.log: {e}"))?;
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(command)
        .current_dir(sandbox)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(output)
        .stderr(stderr)
        .kill_on_drop(true)
        .process_group(0);
    if let Some(c) = credentials {
        // std drops root's supplementary groups when it changes the uid.
        shell.uid(c.uid).gid(c.gid);
    }
    process::die_with_agent(&mut shell);
    let child = shell
        .spawn()
        .map_err(|e| format!("cannot start health check {quoted}: {e}"))?;
    let pgid = match child.id() {
        Some(pid) => pid as i32,
        None => return Err(format!("health check {quoted} vanished")),
    };
    let mut check = CheckProcess {
        child,
        pgid,
        reaped: false,
    };
    let status = match tokio::time::timeout(timeout, check.child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            process::signal_group(check.pgid, libc::SIGKILL);
            let _ = check.child.wait().await;
            check.reaped = true;
            return Err(format!(
                "health check {quoted} timed out after {}",
                seconds(timeout)
            ));
        }
    };
    check.reaped = true;
    match status {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(match (status.code(), status.signal()) {
            (Some(code), _) => format!("health check {quoted} exited with status {code}"),
            (None, Some(signal)) => format!("health check {quoted} killed by signal {signal}"),
            _ => format!("health check {quoted} ended with {status}"),
        }),
        Err(e) => Err(format!("cannot wait for health check {quoted}: {e}")),
    }
}

/// `` `command` ``, cut to [`COMMAND_QUOTE_BYTES_MAX`].
fn quote(command: &str) -> String {
    if command.len() <= COMMAND_QUOTE_BYTES_MAX {
        return format!("`{command}`");
    }
    let mut end = COMMAND_QUOTE_BYTES_MAX;
    while !command.is_char_boundary(end) {
        end -= 1;
    }
    format!("`{}...`", &command[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(grace: u32, interval: u32, max_failures: u32, min_successes: u32) -> HealthCheck {
        HealthCheck {
            initial_interval_secs: grace,
            interval_secs: interval,
            timeout_secs: 1,
            max_consecutive_failures: max_failures,
            min_consecutive_successes: min_successes,
            ..HealthCheck::with_defaults(HealthChecker::Shell {
                command: "true".into(),
            })
        }
    }

    const OK: Result<(), String> = Ok(());

    fn fail() -> Result<(), String> {
        Err("GET /health answered 503".into())
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Feeds `(seconds since start, passed?)` and returns the verdict of each step.
    fn run(tally: &mut Tally, steps: &[(u64, bool)]) -> Vec<Option<Verdict>> {
        steps
            .iter()
            .map(|&(at, ok)| tally.record(secs(at), if ok { OK } else { fail() }))
            .collect()
    }

    #[test]
    fn healthy_after_enough_successes_in_a_row_once() {
        let mut tally = Tally::new(&check(0, 1, 10, 3));
        let verdicts = run(
            &mut tally,
            &[(1, true), (2, true), (3, false), (4, true), (5, true)],
        );
        assert!(verdicts.iter().all(Option::is_none), "{verdicts:?}");
        assert_eq!(tally.record(secs(6), OK), Some(Verdict::Healthy));
        // Healthy is reported once; more successes say nothing.
        assert_eq!(tally.record(secs(7), OK), None);
        // A min of 0 means 1.
        let mut tally = Tally::new(&check(0, 1, 0, 0));
        assert_eq!(tally.record(secs(1), OK), Some(Verdict::Healthy));
    }

    #[test]
    fn failures_in_the_grace_do_not_count() {
        let mut tally = Tally::new(&check(5, 1, 0, 1));
        let verdicts = run(&mut tally, &[(1, false), (2, false), (4, false)]);
        assert!(verdicts.iter().all(Option::is_none), "{verdicts:?}");
        assert_eq!(
            tally.record(secs(5), fail()),
            Some(Verdict::Unhealthy(
                "unhealthy: GET /health answered 503 (1 failure)".into()
            ))
        );
    }

    #[test]
    fn max_failures_plus_one_in_a_row_are_unhealthy_before_and_after_running() {
        // Before RUNNING.
        let mut tally = Tally::new(&check(1, 1, 2, 1));
        let verdicts = run(&mut tally, &[(1, false), (2, false)]);
        assert!(verdicts.iter().all(Option::is_none), "{verdicts:?}");
        assert_eq!(
            tally.record(secs(3), fail()),
            Some(Verdict::Unhealthy(
                "unhealthy: GET /health answered 503 (3 failures in a row)".into()
            ))
        );
        // After RUNNING; a success resets the count.
        let mut tally = Tally::new(&check(0, 1, 2, 1));
        assert_eq!(tally.record(secs(1), OK), Some(Verdict::Healthy));
        let verdicts = run(
            &mut tally,
            &[(2, false), (3, false), (4, true), (5, false), (6, false)],
        );
        assert!(verdicts.iter().all(Option::is_none), "{verdicts:?}");
        assert!(matches!(
            tally.record(secs(7), fail()),
            Some(Verdict::Unhealthy(reason)) if reason.ends_with("(3 failures in a row)")
        ));
    }

    #[test]
    fn a_task_that_never_gets_healthy_fails_after_the_deadline() {
        // Needs 3 successes in a row, flaps: the first failure past 2 + 2 * 1 s is fatal, even
        // though it is not the third in a row.
        let mut tally = Tally::new(&check(2, 1, 2, 3));
        let verdicts = run(&mut tally, &[(1, true), (2, true), (3, false), (4, true)]);
        assert!(verdicts.iter().all(Option::is_none), "{verdicts:?}");
        assert_eq!(
            tally.record(secs(4), fail()),
            Some(Verdict::Unhealthy(
                "unhealthy: not healthy within 4s (last check: GET /health answered 503)".into()
            ))
        );
        // Once healthy, the deadline no longer applies.
        let mut tally = Tally::new(&check(0, 1, 2, 1));
        assert_eq!(tally.record(secs(1), OK), Some(Verdict::Healthy));
        assert_eq!(tally.record(secs(100), fail()), None);
    }

    #[test]
    fn quotes_are_bounded() {
        assert_eq!(quote("exit 1"), "`exit 1`");
        let long = "é".repeat(150);
        let quoted = quote(&long);
        assert!(
            quoted.len() <= COMMAND_QUOTE_BYTES_MAX + 5,
            "{}",
            quoted.len()
        );
        assert!(quoted.ends_with("...`"));
    }
}
