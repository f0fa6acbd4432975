//! What the agent accepts from the scheduler, through the real agent.
//!
//! The agent's message handler (`Agent::handle` in agent/src/agent.rs) is private, so the target
//! runs the whole real agent (`borealis_agent::run_until`, `--isolation none`, no log server, a
//! work dir on tmpfs) on a thread of its own (stopped and replaced by a fresh one every 500
//! inputs, so that what it holds stays bounded), connected over loopback TCP to this target, which
//! plays the scheduler: it accepts the agent's connection, reads its registration, answers
//! `AgentRegistered`, and then for each input writes the input's messages on that connection and
//! reads what the agent answers. Messages: kills (of tasks the agent knows and of unknown ones),
//! reconciliations, status acknowledgements, registration answers, errors (`NotLeader` with and
//! without a leader), heartbeats, messages meant for clients, launches the agent must refuse
//! (a job key it cannot read), and raw records (any bytes that pass `decode_message`).
//!
//! No real task starts. A launch the agent would accept (`to_owned` reads it) would start a
//! process, so such a launch is written to the agent only for a task id the agent already holds
//! (then it only resends that task's status): one refused earlier in the same input, under a
//! per-process salted id the input cannot otherwise name, and not acknowledged since (the only
//! way it could leave the agent's table). Every other acceptable launch goes through the
//! pre-launch layer the launcher runs instead: its sandbox path (agent/src/sandbox.rs, compiled
//! in from the agent's source, as the module is private) must stay below the work dir and map
//! the job key one to one, and the sandbox is created (and removed) on tmpfs. As a backstop, the
//! agent's thread (and every thread it starts) runs under a seccomp filter that refuses
//! `execve`, `execveat`, `fork`, `vfork` and `clone` with `CLONE_VFORK` (how the agent spawns),
//! and a task reported STARTING or RUNNING fails the run.
//!
//! Each input ends with a reconciliation of a sentinel task id: its answer (LOST) comes after
//! every answer to the input's messages. Checked: no panic, in the agent or here; the agent
//! answers (no hang); what it writes decodes; the tripwire above. A message that makes the agent
//! drop the connection (a malformed message other than a launch or kill) ends the input's
//! messages; the target then waits for the agent to reconnect and register again.
#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use borealis_core::{JobKey, TaskId, TaskState};
use borealis_fuzz::*;
use borealis_net::codec::to_owned;
use borealis_net::frame::split_messages;
use borealis_net::views::{ErrorCode, LaunchView, OwnedMessage, TaskStatusReport};
use borealis_net::{decode_message, wire, Encoder, FrameDecoder, FrameWriter};
use libfuzzer_sys::fuzz_target;

/// The agent's sandbox module, from its source (private in borealis-agent).
#[allow(dead_code, clippy::all)]
#[path = "../../agent/src/sandbox.rs"]
mod sandbox;

/// What agent/src/sandbox.rs needs of `crate::spawn` (the agent's spawn module, whose
/// `Credentials` it takes for the sandbox's owner).
#[allow(dead_code)]
mod spawn {
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(crate) struct Credentials {
        pub uid: libc::uid_t,
        pub gid: libc::gid_t,
        pub groups: Vec<libc::gid_t>,
    }
}

/// Messages one input may send.
const MESSAGES_MAX: usize = 128;
const READ_TIMEOUT: Duration = Duration::from_secs(8);

#[derive(Arbitrary, Debug)]
enum AgentOp {
    /// A launch the agent must refuse (its job key does not parse): it answers FAILED and keeps
    /// the task.
    RefusedLaunch {
        task: u8,
        job: u8,
        instance: u8,
        config: ConfigGen,
    },
    /// A launch the agent would accept: written only for a task it holds (see the module
    /// documentation), else run through the pre-launch layer here.
    Launch {
        task: u8,
        job: u8,
        instance: u8,
        config: ConfigGen,
        ports: Vec<(Text, u16)>,
    },
    Kill {
        task: u8,
        fresh: bool,
        job: Text,
    },
    Reconcile {
        tasks: Vec<(u8, bool)>,
    },
    /// Reconcile every task (an empty list).
    ReconcileAll,
    Ack {
        acks: Vec<(u8, bool, u8)>,
    },
    Registered {
        agent_id: Text,
    },
    Heartbeat {
        timestamp_ms: u64,
    },
    Error {
        code: u8,
        message: Text,
        /// NotLeader's leader: this target's own address, an empty one, or none.
        leader: Option<bool>,
    },
    /// A message meant for a client, which the agent ignores.
    ClientBound {
        kind: u8,
    },
}

/// The scheduler's side of the agent connection, kept across inputs (the agent is started once
/// per process).
struct Scheduler {
    listener: TcpListener,
    address: String,
    stream: TcpStream,
    decoder: FrameDecoder,
    encoder: Encoder,
    /// Unpredictable bits of this process's task ids.
    salt: u64,
    inputs: u64,
    /// Terminal statuses of the last input, acknowledged at the start of the next (keeps the
    /// agent's table of unacknowledged ends small).
    to_ack: Vec<(TaskId, TaskState)>,
    work_dir: PathBuf,
    agent: Option<RunningAgent>,
}

/// Inputs one agent serves before it is replaced by a fresh one.
const INPUTS_PER_AGENT: u64 = 500;

/// Refuses, on the calling thread and every thread it starts from now on, every system call
/// that starts a program or a process: `execve`, `execveat`, `fork`, `vfork`, and `clone`
/// without `CLONE_THREAD` (threads are still created: `clone3` answers ENOSYS, so glibc falls
/// back to `clone`, whose flags the filter can read).
#[cfg(target_arch = "x86_64")]
fn forbid_processes() {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    const ALLOW: u32 = 0x7fff_0000;
    const EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
    const ENOSYS: u32 = 0x0005_0000 | libc::ENOSYS as u32;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let program = [
        /* 0 */ f(LD_W_ABS, 0, 0, 4), // arch
        /* 1 */ f(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        /* 2 */ f(RET_K, 0, 0, EPERM),
        /* 3 */ f(LD_W_ABS, 0, 0, 0), // the system call's number
        /* 4 */ f(JGE_K, 10, 0, 0x4000_0000), // x32
        /* 5 */ f(JEQ_K, 9, 0, libc::SYS_execve as u32),
        /* 6 */ f(JEQ_K, 8, 0, libc::SYS_execveat as u32),
        /* 7 */ f(JEQ_K, 7, 0, libc::SYS_fork as u32),
        /* 8 */ f(JEQ_K, 6, 0, libc::SYS_vfork as u32),
        /* 9 */ f(JEQ_K, 6, 0, libc::SYS_clone3 as u32),
        /* 10 */ f(JEQ_K, 1, 0, libc::SYS_clone as u32),
        /* 11 */ f(RET_K, 0, 0, ALLOW),
        /* 12 */ f(LD_W_ABS, 0, 0, 16), // clone's flags (low word)
        /* 13 */ f(JSET_K, 0, 1, libc::CLONE_THREAD as u32),
        /* 14 */ f(RET_K, 0, 0, ALLOW),
        /* 15 */ f(RET_K, 0, 0, EPERM),
        /* 16 */ f(RET_K, 0, 0, ENOSYS),
    ];
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: plain system calls; `prog` outlives them (the kernel copies the filter).
    unsafe {
        assert_eq!(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            0,
            "PR_SET_NO_NEW_PRIVS"
        );
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const _
            ),
            0,
            "seccomp: {}",
            std::io::Error::last_os_error()
        );
    }
    // The filter holds: no program starts from here, no process is made, threads are.
    assert!(
        std::process::Command::new("/bin/true").status().is_err(),
        "the seccomp filter does not refuse starting a program"
    );
    // SAFETY: a raw fork-like clone; refused, so no child exists (a child would exit at once).
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
    if pid == 0 {
        // SAFETY: the child of a clone that should not have happened: leave at once.
        unsafe { libc::_exit(0) };
    }
    assert_eq!(
        pid, -1,
        "the seccomp filter does not refuse making a process"
    );
    std::thread::spawn(|| ())
        .join()
        .expect("threads still start");
}

#[cfg(not(target_arch = "x86_64"))]
fn forbid_processes() {
    panic!("agent_messages needs its x86_64 seccomp filter (no real task may start)");
}

/// A running agent: its thread, and the trigger that stops it.
struct RunningAgent {
    thread: std::thread::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

fn start_agent(address: String, work_dir: PathBuf) -> RunningAgent {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("agent".into())
        .spawn(move || {
            forbid_processes();
            let args = borealis_agent::AgentArgs {
                scheduler: vec![address],
                cpus: Some(4.0),
                ram: Some("4GiB".into()),
                disk: Some("4GiB".into()),
                attributes: vec!["rack=r1".into()],
                agent_id: Some("fuzz-agent".into()),
                hostname: Some("fuzz-host".into()),
                ports: "31000-31009".into(),
                work_dir: Some(work_dir),
                isolation: Some(borealis_agent::Isolation::None),
                pids_limit: 64,
                executor_user: None,
                thermos_executor_cpu: 0.0,
                thermos_executor_ram: "0".into(),
                gc_delay: Duration::from_secs(3600),
                gc_disk_headroom: 0.1,
                disk_check_interval: Duration::from_secs(3600),
                serve: borealis_agent::ServeArgs {
                    no_http: true,
                    ..Default::default()
                },
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = runtime.block_on(borealis_agent::run_until(args, shutdown)) {
                panic!("the agent stopped: {e:#}");
            }
        })
        .expect("the agent's thread");
    RunningAgent { thread, stop }
}

impl Scheduler {
    fn start() -> Scheduler {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
        let address = listener.local_addr().expect("bound").to_string();
        let work_dir = scratch_dir("agent");
        let _ = std::fs::remove_dir_all(&work_dir);
        std::fs::create_dir_all(&work_dir).expect("the agent's work dir");
        let agent = start_agent(address.clone(), work_dir.clone());
        let salt = std::collections::hash_map::RandomState::new().hash_one(0x0b0e_a115u64);
        let stream = Scheduler::accept(&listener);
        let mut s = Scheduler {
            listener,
            address,
            stream,
            decoder: FrameDecoder::new(),
            encoder: Encoder::new(),
            salt,
            inputs: 0,
            to_ack: Vec::new(),
            work_dir,
            agent: Some(agent),
        };
        s.registered();
        s
    }

    /// Stops the agent and starts a new one on an empty work dir, so that what the agent holds
    /// stays bounded (its table of ended tasks fills towards its 10,000, and every input that
    /// reconciles everything would read them all).
    fn restart_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            let _ = agent.stop.send(());
            agent.thread.join().expect("the agent stops");
        }
        let _ = std::fs::remove_dir_all(&self.work_dir);
        std::fs::create_dir_all(&self.work_dir).expect("the agent's work dir");
        self.agent = Some(start_agent(self.address.clone(), self.work_dir.clone()));
        self.to_ack.clear();
        self.reconnect();
    }

    fn accept(listener: &TcpListener) -> TcpStream {
        let (stream, _) = listener.accept().expect("the agent connects");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("a read timeout");
        stream.set_nodelay(true).expect("nodelay");
        stream
    }

    /// Reads the agent's registration and answers it.
    fn registered(&mut self) {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            let messages = self.read_some(deadline).expect("the agent registers");
            if messages
                .iter()
                .any(|m| matches!(m, OwnedMessage::RegisterAgent(_)))
            {
                break;
            }
        }
        let bytes = self.encoder.agent_registered("fuzz-agent").to_vec();
        self.write(&[bytes]).expect("the agent reads");
    }

    fn write(&mut self, messages: &[Vec<u8>]) -> std::io::Result<()> {
        let mut writer = FrameWriter::new();
        for m in messages {
            writer.push(m).expect("the target's messages fit a frame");
        }
        self.stream.write_all(writer.finish())
    }

    /// Reads what arrived (at least one read), decoded; Err on EOF (the agent dropped the
    /// connection). Panics on a hang or on anything that does not decode.
    fn read_some(&mut self, deadline: Instant) -> Result<Vec<OwnedMessage>, ()> {
        let mut buf = [0u8; 64 * 1024];
        let n = loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(()),
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(()),
                Err(e) if Instant::now() < deadline && e.kind() == ErrorKind::WouldBlock => {
                    continue
                }
                Err(e) => panic!("the agent did not answer within {READ_TIMEOUT:?}: {e}"),
            }
        };
        self.decoder.extend(&buf[..n]);
        let mut out = Vec::new();
        while let Some(frame) = self
            .decoder
            .next_frame()
            .unwrap_or_else(|e| panic!("the agent wrote a bad frame: {e}"))
        {
            for part in
                split_messages(frame).unwrap_or_else(|e| panic!("the agent wrote a bad frame: {e}"))
            {
                let message = decode_message(&part)
                    .unwrap_or_else(|e| panic!("the agent wrote an unverifiable message: {e}"));
                let (_, owned) = to_owned(message)
                    .unwrap_or_else(|e| panic!("the agent wrote an undecodable message: {e}"));
                out.push(owned);
            }
        }
        Ok(out)
    }

    /// The agent dropped the connection: it comes back (after its backoff) and registers.
    fn reconnect(&mut self) {
        self.stream = Scheduler::accept(&self.listener);
        self.decoder = FrameDecoder::new();
        self.registered();
    }

    /// This input's task id `k` (below 2^16): new to the agent, as no earlier input used it.
    fn task(&self, k: u64) -> TaskId {
        TaskId(self.salt ^ (self.inputs << 16) ^ k)
    }

    /// Whether `id` is one of this input's task ids.
    fn is_fresh(&self, id: TaskId) -> bool {
        (id.0 ^ self.salt ^ (self.inputs << 16)) < (1 << 16)
    }
}

/// The statuses an agent that runs no task may report: tasks it refused (FAILED), unknown
/// ones (LOST), and those it holds, resent.
fn tripwire(status: &TaskStatusReport) {
    assert!(
        !matches!(status.state, TaskState::Starting | TaskState::Running),
        "the agent accepted a launch (task {} {}): {status:?}",
        status.task_id,
        status.state
    );
    assert!(
        status.sandbox.is_empty(),
        "the agent created a sandbox for task {}: {status:?}",
        status.task_id
    );
}

/// The sandboxes of one input's launches, by path.
type Sandboxes = BTreeMap<PathBuf, (JobKey, u32, TaskId)>;

/// The launcher's pre-spawn layer on an acceptable launch: the sandbox's path, and creating it.
fn pre_launch(work_dir: &Path, launch: &LaunchView, taken: &mut Sandboxes) {
    let of = sandbox::Of::launch(launch);
    let path = sandbox::path(work_dir, of);
    let below = path
        .strip_prefix(work_dir.join("sandboxes"))
        .unwrap_or_else(|_| panic!("sandbox {path:?} is not below the work dir"));
    let parts: Vec<_> = below.components().collect();
    assert_eq!(
        parts.len(),
        5,
        "sandbox {path:?} is not role/env/name/instance/task"
    );
    for part in &parts {
        assert!(
            matches!(part, std::path::Component::Normal(_)),
            "sandbox {path:?} has a component {part:?} that climbs or roots"
        );
    }
    // One to one: no other job key, instance or task lands on the same path.
    let owner = (launch.job_key.clone(), launch.instance, launch.task_id);
    if let Some(other) = taken.insert(path.clone(), owner.clone()) {
        assert_eq!(other, owner, "two tasks share the sandbox {path:?}");
    }
    let root = sandbox::Root::open(work_dir).expect("the sandboxes directory");
    match sandbox::create(&root, of, None) {
        Ok(created) => {
            assert_eq!(created.path, path);
            assert!(created.path.join("stdout").is_file());
        }
        Err(e) => {
            // Only a repeat of a sandbox created earlier in this input may fail.
            assert!(
                e.kind() == ErrorKind::AlreadyExists,
                "creating sandbox {path:?} failed: {e}"
            );
        }
    }
}

/// A job key the agent cannot read (the parser refuses it).
fn unreadable_key(pick: u8) -> JobKey {
    let parts = [
        ("", "prod", "x"),
        ("www", "", "x"),
        ("www", "prod", "a b"),
        ("w/w", "p", "x"),
    ];
    let (r, e, n) = parts[usize::from(pick) % parts.len()];
    JobKey {
        role: r.into(),
        environment: e.into(),
        name: n.into(),
    }
}

/// A readable job key (the valid and the dotted ones of the shared pool).
fn readable_key(pick: u8) -> JobKey {
    let readable = [0u8, 1, 2, 3, 4, 5, 6, 7];
    job_key(readable[usize::from(pick) % readable.len()])
}

/// One input's messages, as the agent would see them, and what the target must know of them.
struct Plan {
    messages: Vec<Vec<u8>>,
    /// The last message makes the agent drop the connection.
    drops: bool,
}

struct Planner<'a> {
    s: &'a mut Scheduler,
    plan: Plan,
    /// This input's task ids the agent refused a launch of (it holds them)...
    refused: BTreeSet<TaskId>,
    /// ... and those acknowledged since (they may leave its table).
    acked: BTreeSet<TaskId>,
    sandboxes: Sandboxes,
    allow_drop: bool,
}

impl Planner<'_> {
    /// Adds a verified message, deciding as the agent's `handle` does what it would do.
    fn add(&mut self, bytes: Vec<u8>) {
        if self.plan.drops || self.plan.messages.len() >= MESSAGES_MAX {
            return;
        }
        let Ok(message) = decode_message(&bytes) else {
            // The agent's reader drops the connection on it; the frame target covers it.
            return;
        };
        let payload = message.payload_type();
        match (payload, to_owned(message)) {
            (wire::Payload::LaunchTask, Ok((_, OwnedMessage::LaunchTask(launch)))) => {
                if self.refused.contains(&launch.task_id) && !self.acked.contains(&launch.task_id) {
                    self.plan.messages.push(bytes);
                } else {
                    let work_dir = self.s.work_dir.join("pre-launch");
                    pre_launch(&work_dir, &launch, &mut self.sandboxes);
                }
            }
            (wire::Payload::LaunchTask, Err(_)) => {
                // Refused: the agent holds the task from now on, if it is one of this input's
                // (an older one it may hold already, and forget when others are acknowledged).
                let l = message.payload_as_launch_task().expect("type checked");
                let task_id = TaskId(l.task_id());
                if self.s.is_fresh(task_id) {
                    self.refused.insert(task_id);
                }
                self.plan.messages.push(bytes);
            }
            (wire::Payload::KillTask, _) => self.plan.messages.push(bytes),
            // A leader hint is where the agent connects next: only this target's own address
            // (or none), so that it never wanders off to some other address.
            (
                _,
                Ok((
                    _,
                    OwnedMessage::Error {
                        code: ErrorCode::NotLeader,
                        leader: Some(leader),
                        ..
                    },
                )),
            ) if !leader.trim().is_empty() && leader.trim() != self.s.address => {}
            (_, Ok((_, OwnedMessage::StatusAck(acks)))) => {
                self.acked.extend(acks.iter().map(|(t, _)| *t));
                self.plan.messages.push(bytes);
            }
            (_, Ok(_)) => self.plan.messages.push(bytes),
            (_, Err(_)) => {
                if self.allow_drop {
                    self.plan.messages.push(bytes);
                    self.plan.drops = true;
                }
            }
        }
    }

    fn op(&mut self, op: AgentOp) {
        let s = &mut *self.s;
        let bytes = match op {
            AgentOp::RefusedLaunch {
                task,
                job,
                instance,
                config,
            } => {
                let config = config.build(unreadable_key(job));
                s.encoder
                    .launch_task(s.task(u64::from(task)), u32::from(instance), &config, &[])
                    .to_vec()
            }
            AgentOp::Launch {
                task,
                job,
                instance,
                config,
                ports,
            } => {
                let config = config.build(readable_key(job));
                let ports: Vec<(String, u16)> = ports
                    .iter()
                    .take(4)
                    .map(|(n, p)| (n.get(&["http", "health", ""]), *p))
                    .collect();
                s.encoder
                    .launch_task(
                        s.task(u64::from(task)),
                        u32::from(instance),
                        &config,
                        &ports,
                    )
                    .to_vec()
            }
            AgentOp::Kill { task, fresh, job } => {
                let id = if fresh {
                    s.task(u64::from(task))
                } else {
                    unknown_task(u64::from(task))
                };
                s.encoder
                    .kill_task(id, &job.get(&["www/prod/web", "", "not a key"]))
                    .to_vec()
            }
            AgentOp::Reconcile { tasks } => {
                let ids: Vec<TaskId> = tasks
                    .iter()
                    .take(64)
                    .map(|&(t, fresh)| {
                        if fresh {
                            s.task(u64::from(t))
                        } else {
                            unknown_task(u64::from(t))
                        }
                    })
                    .collect();
                s.encoder.reconcile(&ids).to_vec()
            }
            AgentOp::ReconcileAll => s.encoder.reconcile(&[]).to_vec(),
            AgentOp::Ack { acks } => {
                let acks: Vec<(TaskId, TaskState)> = acks
                    .iter()
                    .take(64)
                    .map(|&(t, fresh, st)| {
                        let id = if fresh {
                            s.task(u64::from(t))
                        } else {
                            unknown_task(u64::from(t))
                        };
                        (id, state(st))
                    })
                    .collect();
                s.encoder.status_ack(&acks).to_vec()
            }
            AgentOp::Registered { agent_id } => s
                .encoder
                .agent_registered(&agent_id.get(&["fuzz-agent", "someone-else", ""]))
                .to_vec(),
            AgentOp::Heartbeat { timestamp_ms } => s.encoder.heartbeat(timestamp_ms).to_vec(),
            AgentOp::Error {
                code,
                message,
                leader,
            } => {
                const CODES: [ErrorCode; 10] = [
                    ErrorCode::InvalidRequest,
                    ErrorCode::UnknownJob,
                    ErrorCode::JobExists,
                    ErrorCode::TooManyTasks,
                    ErrorCode::Internal,
                    ErrorCode::Overloaded,
                    ErrorCode::NotLeader,
                    ErrorCode::QuotaExceeded,
                    ErrorCode::Unauthenticated,
                    ErrorCode::PermissionDenied,
                ];
                // A leader hint is where the agent connects next: only this target, so that
                // the agent never wanders off (an empty one is ignored).
                let leader = leader.map(|own| if own { s.address.clone() } else { "  ".into() });
                s.encoder
                    .error_with_leader(
                        7,
                        CODES[usize::from(code) % CODES.len()],
                        &message.get(&["not the leader", ""]),
                        leader.as_deref(),
                    )
                    .to_vec()
            }
            AgentOp::ClientBound { kind } => match kind % 4 {
                0 => s.encoder.ack(3).to_vec(),
                1 => s.encoder.job_list(3, &[]).to_vec(),
                2 => s.encoder.list_jobs(3).to_vec(),
                _ => s.encoder.host_status_list(3, &[]).to_vec(),
            },
        };
        self.add(bytes);
    }
}

static SCHEDULER: OnceLock<Mutex<Scheduler>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&header, rest)) = data.split_first() else {
        return;
    };
    let mut s = SCHEDULER
        .get_or_init(|| Mutex::new(Scheduler::start()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    s.inputs += 1;
    if s.inputs % INPUTS_PER_AGENT == 0 {
        s.restart_agent();
    }
    let acks = std::mem::take(&mut s.to_ack);
    let mut planner = Planner {
        s: &mut s,
        plan: Plan {
            messages: Vec::new(),
            drops: false,
        },
        refused: BTreeSet::new(),
        acked: BTreeSet::new(),
        sandboxes: Sandboxes::new(),
        allow_drop: header & 1 != 0,
    };
    if !acks.is_empty() {
        let bytes = planner.s.encoder.status_ack(&acks).to_vec();
        planner.add(bytes);
    }
    for (tag, payload) in records(rest) {
        match tag {
            TAG_OP => {
                if let Some(op) = borealis_fuzz::op::<AgentOp>(payload) {
                    planner.op(op);
                }
            }
            TAG_RAW_CLIENT | TAG_RAW_AGENT => planner.add(payload.to_vec()),
            _ => {}
        }
    }
    let Plan { messages, drops } = planner.plan;
    let pre_launch_dir = s.work_dir.join("pre-launch");
    let _ = std::fs::remove_dir_all(&pre_launch_dir);

    let sentinel = s.task(0xffff);
    let mut messages = messages;
    if !drops {
        messages.push(s.encoder.reconcile(&[sentinel]).to_vec());
    }
    if s.write(&messages).is_err() {
        // The agent closed the connection under a previous input's last message.
        s.reconnect();
        return;
    }
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut ended: HashMap<TaskId, TaskState> = HashMap::new();
    loop {
        match s.read_some(deadline) {
            Ok(received) => {
                let mut done = false;
                for m in received {
                    if let OwnedMessage::TaskStatus(status) = m {
                        tripwire(&status);
                        if status.task_id == sentinel {
                            assert_eq!(status.state, TaskState::Lost, "the sentinel is unknown");
                            done = true;
                        } else if status.state.is_terminal() {
                            ended.insert(status.task_id, status.state);
                        }
                    }
                }
                if done && !drops {
                    break;
                }
            }
            Err(()) => {
                assert!(drops, "the agent dropped the connection on valid messages");
                s.reconnect();
                break;
            }
        }
    }
    s.to_ack = ended.into_iter().collect();
    s.to_ack.sort_unstable_by_key(|(t, _)| *t);
});
