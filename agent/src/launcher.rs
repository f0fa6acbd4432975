//! The agent's two worker threads, which do every blocking step of a task's life so that the
//! event loop never waits on a disk or on cgroupfs:
//!
//! - the **launchers** (one per core, two to four) look up the task's user, create its sandbox,
//!   create its cgroup with its limits, and spawn its process (`spawn.rs`, one process creation
//!   per task), then hand the started task back to the event loop. Several, because a launch is
//!   mostly waiting on the kernel (inode and cgroup creation, the child's exec, during which
//!   `CLONE_VFORK` holds the launching thread), and launches of different tasks are
//!   independent. They are long-lived on purpose: every task's `PR_SET_PDEATHSIG` is tied to
//!   the thread that started it. One of them also starts the agent's reaper (`reaper.rs`).
//! - the **janitor**, once a task's process has exited, kills what is left in its cgroup,
//!   reads what the cgroup used (CPU time, peak memory, OOM kills) and removes it; and it
//!   carries out the final SIGKILL of a kill (freeze, kill, thaw). A cgroup that cannot be
//!   removed yet (a process stuck in the kernel) is retried later, bounded.
//!
//! Both take jobs in arrival order from unbounded channels (the launchers share one) and work
//! through everything queued before waiting again (one wake-up per burst, not per task). The channels are bounded
//! in practice by the agent's task limit: at most one launch per task in its table, and one
//! finish per started task.

use std::collections::VecDeque;
use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use borealis_core::TaskId;
use borealis_net::views::LaunchView;
use tokio::sync::{mpsc as tokio_mpsc, oneshot};

use crate::cgroup::{Cgroups, Limits, TaskCgroup, Usage};
use crate::process;
use crate::reaper::{self, Lifeline};
use crate::sandbox;
use crate::spawn::{self, Child, Credentials, Group, Spawner, Spec};
use crate::users::{RunAs, Users};

/// Most launcher threads.
const LAUNCHERS_MAX: usize = 4;
/// Most cgroups waiting to be removed again; beyond it the oldest is given up (logged).
const RETRY_MAX: usize = 10_000;
/// How often the janitor retries removing cgroups that were still busy.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What the launcher needs, fixed at startup.
pub(crate) struct LauncherSettings {
    pub work_dir: PathBuf,
    pub hostname: String,
    /// None: `--isolation none`.
    pub cgroups: Option<Arc<Cgroups>>,
    pub pids_max: u32,
    pub run_as: RunAs,
}

/// A task the launcher started.
#[derive(Debug)]
pub(crate) struct Started {
    pub child: Child,
    pub sandbox: PathBuf,
    /// With isolation: the task's cgroup.
    pub cgroup: Option<TaskCgroup>,
    /// Without isolation: the task's guard (`reaper.rs`).
    pub guard: Option<Child>,
    /// The task's whole environment (shell health checks get it too).
    pub env: Vec<(String, OsString)>,
    /// The user the task runs as, when the agent switched to it (health checks run as it too).
    pub credentials: Option<Credentials>,
}

/// What the launcher tells the event loop.
#[derive(Debug)]
pub(crate) enum Output {
    Launched {
        task_id: TaskId,
        result: Result<Started, String>,
    },
    /// A (new) reaper, or why it could not start.
    Reaper(Result<Child, String>),
}

enum Job {
    Launch(Box<LaunchView>),
    StartReaper,
}

/// The event loop's end of the launcher threads. Dropping it stops them, which SIGKILLs every
/// task's process (their parent-death signal) and ends the lifeline.
pub(crate) struct Launcher {
    jobs: Option<crossbeam::channel::Sender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Launcher {
    /// Starts the threads; their outputs arrive on the receiver. With cgroups the first starts
    /// the reaper before anything else (its output is the first).
    pub fn start(
        settings: LauncherSettings,
        lifeline: Lifeline,
    ) -> std::io::Result<(Launcher, tokio_mpsc::UnboundedReceiver<Output>)> {
        let (jobs_tx, jobs_rx) = crossbeam::channel::unbounded::<Job>();
        let (out_tx, out_rx) = tokio_mpsc::unbounded_channel();
        let settings = Arc::new(settings);
        let lifeline = Arc::new(lifeline);
        let count = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, LAUNCHERS_MAX);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let mut worker = Worker {
                sandboxes: sandbox::Root::open(&settings.work_dir)?,
                users: Users::new(settings.run_as.clone()),
                settings: settings.clone(),
                lifeline: lifeline.clone(),
                spawner: Spawner::new(),
                null: File::open("/dev/null")?,
            };
            let (jobs, out) = (jobs_rx.clone(), out_tx.clone());
            let with_reaper = index == 0 && settings.cgroups.is_some();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("borealis-launch-{index}"))
                    .spawn(move || {
                        if with_reaper && out.send(Output::Reaper(worker.start_reaper())).is_err() {
                            return;
                        }
                        while let Ok(job) = jobs.recv() {
                            let output = match job {
                                Job::Launch(launch) => Output::Launched {
                                    task_id: launch.task_id,
                                    result: worker.launch(&launch),
                                },
                                Job::StartReaper => Output::Reaper(worker.start_reaper()),
                            };
                            if out.send(output).is_err() {
                                break;
                            }
                        }
                    })?,
            );
        }
        Ok((
            Launcher {
                jobs: Some(jobs_tx),
                threads,
            },
            out_rx,
        ))
    }

    /// Queues a launch; its result arrives as [`Output::Launched`].
    pub fn launch(&self, launch: LaunchView) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Launch(Box::new(launch)));
        }
    }

    /// Asks for a new reaper (the last one died).
    pub fn restart_reaper(&self) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::StartReaper);
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

struct Worker {
    settings: Arc<LauncherSettings>,
    /// `<work_dir>/sandboxes`, open.
    sandboxes: sandbox::Root,
    users: Users,
    lifeline: Arc<Lifeline>,
    spawner: Spawner,
    null: File,
}

impl Worker {
    fn start_reaper(&mut self) -> Result<Child, String> {
        let cgroups = self.settings.cgroups.as_ref().expect("only with cgroups");
        reaper::start_reaper(&mut self.spawner, &self.lifeline, cgroups)
    }

    fn launch(&mut self, launch: &LaunchView) -> Result<Started, String> {
        let (user, switch) = self
            .users
            .for_role(&launch.job_key.role, &self.settings.hostname)?;
        let credentials = switch.then(|| user.credentials.clone());
        let sandbox = sandbox::create(
            &self.sandboxes,
            sandbox::Of::launch(launch),
            credentials.as_ref(),
        )
        .map_err(|e| format!("cannot create the sandbox: {e}"))?;
        let env = process::task_environment(launch, &sandbox.path, &user);
        let env_c: Vec<CString> = env
            .iter()
            .map(|(k, v)| spawn::env_entry(k, v))
            .collect::<Result<_, _>>()?;
        let argv = vec![
            spawn::shell().to_owned(),
            c"-c".to_owned(),
            spawn::c_string(launch.config.command.as_bytes(), "the command")?,
        ];
        let cgroup = match &self.settings.cgroups {
            Some(cgroups) => {
                let resources = &launch.config.resources;
                Some(cgroups.acquire(&Limits {
                    cpu_millis: resources.cpu_millis,
                    ram_mib: resources.ram_mib,
                    pids_max: self.settings.pids_max,
                })?)
            }
            None => None,
        };
        let result = self.spawn_task(&argv, &env_c, &sandbox, cgroup.as_ref(), &credentials);
        let child = match result {
            Ok(child) => child,
            Err(e) => {
                if let (Some(cgroups), Some(cg)) = (&self.settings.cgroups, &cgroup) {
                    cgroups.kill_all(cg);
                    let _ = cgroups.remove(cg);
                }
                return Err(e);
            }
        };
        let guard = if cgroup.is_none() {
            match reaper::start_guard(&mut self.spawner, &self.lifeline, child.pid) {
                Ok(guard) => Some(guard),
                Err(e) => {
                    // Without a guard the task could outlive the agent: do not run it.
                    // SAFETY: plain system call; the group is the unreaped child's.
                    unsafe { libc::killpg(child.pid, libc::SIGKILL) };
                    let _ = spawn::reap(std::os::fd::AsRawFd::as_raw_fd(&child.pidfd), false);
                    return Err(e);
                }
            }
        } else {
            None
        };
        Ok(Started {
            child,
            sandbox: sandbox.path,
            cgroup,
            guard,
            env,
            credentials,
        })
    }

    fn spawn_task(
        &mut self,
        argv: &[CString],
        env: &[CString],
        sandbox: &sandbox::Sandbox,
        cgroup: Option<&TaskCgroup>,
        credentials: &Option<Credentials>,
    ) -> Result<Child, String> {
        let join = match (cgroup, &self.settings.cgroups) {
            (Some(cg), Some(cgroups)) => cgroups.join_files(cg)?,
            _ => Vec::new(),
        };
        let join: Vec<BorrowedFd<'_>> = join.iter().map(|f| f.as_fd()).collect();
        self.spawner.spawn(&Spec {
            argv,
            env,
            cwd: sandbox.dir.as_fd(),
            stdin: self.null.as_fd(),
            stdout: sandbox.stdout.as_fd(),
            stderr: sandbox.stderr.as_fd(),
            cgroup_procs: &join,
            credentials: credentials.as_ref(),
            // Under cgroups a session of its own (the task's cgroup holds it anyway); without,
            // a group in the agent's session, which its guard joins.
            group: if cgroup.is_some() {
                Group::NewSession
            } else {
                Group::Own
            },
            ignored_signals: &[],
            die_with_parent: true,
        })
    }
}

/// Work for the janitor thread.
enum Chore {
    /// The task's process exited: kill what is left, read the usage, remove the cgroup.
    Finish {
        cgroup: TaskCgroup,
        reply: oneshot::Sender<Usage>,
    },
    /// The last step of a kill: SIGKILL everything in the cgroup.
    Kill {
        cgroup: TaskCgroup,
        reply: oneshot::Sender<()>,
    },
}

/// A handle on the janitor thread (cheap to clone: one per watcher).
#[derive(Clone)]
pub(crate) struct Janitor {
    chores: mpsc::Sender<Chore>,
    cgroups: Arc<Cgroups>,
}

impl Janitor {
    /// Starts the thread; it stops once every handle is dropped.
    pub fn start(cgroups: Arc<Cgroups>) -> std::io::Result<Janitor> {
        let (tx, rx) = mpsc::channel::<Chore>();
        let worker_cgroups = cgroups.clone();
        std::thread::Builder::new()
            .name("borealis-janitor".into())
            .spawn(move || janitor(&worker_cgroups, rx))?;
        Ok(Janitor {
            chores: tx,
            cgroups,
        })
    }

    /// Kills what is left of the task, reads what it used and removes its cgroup.
    pub async fn finish(&self, cgroup: TaskCgroup) -> Usage {
        let (reply, answer) = oneshot::channel();
        if self.chores.send(Chore::Finish { cgroup, reply }).is_err() {
            return Usage::default();
        }
        answer.await.unwrap_or_default()
    }

    /// SIGKILLs every process of the task (freeze, kill, thaw on v1).
    pub async fn kill(&self, cgroup: TaskCgroup) {
        let (reply, answer) = oneshot::channel();
        if self.chores.send(Chore::Kill { cgroup, reply }).is_ok() {
            let _ = answer.await;
        }
    }

    /// Sends `signal` to every process of the task (cgroupfs reads are memory-only).
    pub fn signal_all(&self, cgroup: &TaskCgroup, signal: libc::c_int) {
        self.cgroups.signal_all(cgroup, signal);
    }
}

fn janitor(cgroups: &Cgroups, chores: mpsc::Receiver<Chore>) {
    let mut retry: VecDeque<(TaskCgroup, Instant)> = VecDeque::new();
    loop {
        let chore = if retry.is_empty() {
            match chores.recv() {
                Ok(chore) => Some(chore),
                Err(_) => return,
            }
        } else {
            match chores.recv_timeout(RETRY_EVERY) {
                Ok(chore) => Some(chore),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        };
        if let Some(chore) = chore {
            do_chore(cgroups, chore, &mut retry);
            while let Ok(chore) = chores.try_recv() {
                do_chore(cgroups, chore, &mut retry);
            }
        }
        let now = Instant::now();
        let mut still = VecDeque::new();
        while let Some((cg, since)) = retry.pop_front() {
            if (cgroups.is_empty(&cg) || cgroups.kill_all(&cg)) && cgroups.remove(&cg).is_ok() {
                continue;
            }
            if now.duration_since(since) > Duration::from_secs(600) {
                tracing::warn!(cgroup = %cg.name(), "giving up removing a task's cgroup after 10 minutes");
                continue;
            }
            still.push_back((cg, since));
        }
        retry = still;
    }
}

fn do_chore(cgroups: &Cgroups, chore: Chore, retry: &mut VecDeque<(TaskCgroup, Instant)>) {
    match chore {
        Chore::Finish { cgroup, reply } => {
            let empty = cgroups.is_empty(&cgroup) || cgroups.kill_all(&cgroup);
            let usage = cgroups.usage(&cgroup);
            if let Err(e) = cgroups.release(cgroup.clone(), &usage, empty) {
                tracing::debug!(cgroup = %cgroup.name(), error = %e, "cgroup busy; removing it later");
                if retry.len() >= RETRY_MAX {
                    if let Some((old, _)) = retry.pop_front() {
                        tracing::warn!(cgroup = %old.name(), "too many busy cgroups: giving one up");
                    }
                }
                retry.push_back((cgroup, Instant::now()));
            }
            let _ = reply.send(usage);
        }
        Chore::Kill { cgroup, reply } => {
            if !cgroups.kill_all(&cgroup) {
                tracing::warn!(cgroup = %cgroup.name(), "processes of a killed task are still alive");
            }
            let _ = reply.send(());
        }
    }
}
