//! The agent against an in-test fake scheduler speaking the real frames over loopback.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::os::unix::fs::PermissionsExt;

use borealis_agent::{run_until, AgentArgs, Isolation, ServeArgs};
use borealis_core::{Resources, TaskConfig, TaskId, TaskState, Tier};
use borealis_net::codec::to_owned;
use borealis_net::frame::split_messages;
use borealis_net::views::{AgentRegistration, ErrorCode, OwnedMessage, TaskStatusReport};
use borealis_net::{decode_message, Encoder, FrameDecoder, FrameWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(15);

/// One accepted agent connection.
struct Conn {
    stream: TcpStream,
    decoder: FrameDecoder,
    /// Received and not yet consumed by an expectation.
    seen: Vec<OwnedMessage>,
    encoder: Encoder,
    writer: FrameWriter,
}

impl Conn {
    async fn accept(listener: &TcpListener) -> Conn {
        let (stream, _) = timeout(STEP, listener.accept())
            .await
            .expect("the agent did not connect in time")
            .unwrap();
        Conn {
            stream,
            decoder: FrameDecoder::new(),
            seen: Vec::new(),
            encoder: Encoder::new(),
            writer: FrameWriter::new(),
        }
    }

    /// Reads one more batch of messages into `seen`. False when the agent closed.
    async fn read_more(&mut self) -> bool {
        let mut buf = vec![0u8; 65536];
        let n = self.stream.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return false;
        }
        self.decoder.extend(&buf[..n]);
        while let Some(frame) = self.decoder.next_frame().unwrap() {
            for bytes in split_messages(frame).unwrap() {
                let (_, message) = to_owned(decode_message(&bytes).unwrap()).unwrap();
                self.seen.push(message);
            }
        }
        true
    }

    /// Consumes the first message (in arrival order) that `pick` accepts, waiting at most
    /// `within`.
    async fn expect_within<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut pick: impl FnMut(&OwnedMessage) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(i) = self.seen.iter().position(|m| pick(m).is_some()) {
                let message = self.seen.remove(i);
                return pick(&message).unwrap();
            }
            match tokio::time::timeout_at(deadline, self.read_more()).await {
                Ok(true) => {}
                Ok(false) => panic!("the agent closed the connection while we waited for {what}"),
                Err(_) => panic!("timed out waiting for {what}; seen {:#?}", self.seen),
            }
        }
    }

    async fn expect<T>(&mut self, what: &str, pick: impl FnMut(&OwnedMessage) -> Option<T>) -> T {
        self.expect_within(what, STEP, pick).await
    }

    async fn registration(&mut self) -> AgentRegistration {
        let registration = self
            .expect("RegisterAgent", |m| match m {
                OwnedMessage::RegisterAgent(r) => Some(r.clone()),
                _ => None,
            })
            .await;
        let bytes = self
            .encoder
            .agent_registered(&registration.agent_id)
            .to_vec();
        self.send(&bytes).await;
        registration
    }

    async fn status(&mut self, task: u64, state: TaskState) -> TaskStatusReport {
        self.status_within(task, state, STEP).await
    }

    async fn status_within(
        &mut self,
        task: u64,
        state: TaskState,
        within: Duration,
    ) -> TaskStatusReport {
        self.expect_within(&format!("task {task:x} {state}"), within, |m| match m {
            OwnedMessage::TaskStatus(s) if s.task_id == TaskId(task) && s.state == state => {
                Some(s.clone())
            }
            _ => None,
        })
        .await
    }

    async fn send(&mut self, message: &[u8]) {
        self.writer
            .push(message)
            .expect("the test's messages fit a frame");
        self.stream.write_all(self.writer.finish()).await.unwrap();
        self.writer.clear();
    }

    async fn launch(
        &mut self,
        task: u64,
        instance: u32,
        command: &str,
        wait: u32,
        ports: &[(&str, u16)],
    ) {
        self.launch_config(task, instance, &task_config(command, wait), ports)
            .await;
    }

    async fn launch_config(
        &mut self,
        task: u64,
        instance: u32,
        config: &TaskConfig,
        ports: &[(&str, u16)],
    ) {
        let ports: Vec<(String, u16)> = ports.iter().map(|(n, p)| (n.to_string(), *p)).collect();
        let bytes = self
            .encoder
            .launch_task(TaskId(task), instance, config, &ports)
            .to_vec();
        self.send(&bytes).await;
    }

    async fn kill(&mut self, task: u64) {
        let bytes = self
            .encoder
            .kill_task(TaskId(task), "www/prod/hello")
            .to_vec();
        self.send(&bytes).await;
    }

    async fn reconcile(&mut self, tasks: &[u64]) {
        let ids: Vec<TaskId> = tasks.iter().copied().map(TaskId).collect();
        let bytes = self.encoder.reconcile(&ids).to_vec();
        self.send(&bytes).await;
    }

    async fn status_ack(&mut self, acks: &[(u64, TaskState)]) {
        let acks: Vec<(TaskId, TaskState)> = acks.iter().map(|&(t, s)| (TaskId(t), s)).collect();
        let bytes = self.encoder.status_ack(&acks).to_vec();
        self.send(&bytes).await;
    }

    /// Returns once the agent has handled everything sent before: it answers messages in
    /// order, so the answer to a reconciliation of a task it cannot know marks the point.
    async fn sync(&mut self) {
        const MARK: u64 = 0x5e7c_0000_0000_0000;
        self.reconcile(&[MARK]).await;
        self.status(MARK, TaskState::Lost).await;
    }

    /// Takes the registration, then closes the connection without answering.
    async fn closed_by_us(mut self) {
        self.expect("RegisterAgent", |m| match m {
            OwnedMessage::RegisterAgent(r) => Some(r.clone()),
            _ => None,
        })
        .await;
        drop(self);
    }

    /// Waits for the agent to close this connection.
    async fn closed(mut self) {
        timeout(STEP, async { while self.read_more().await {} })
            .await
            .expect("the agent did not drop the connection");
    }
}

fn task_config(command: &str, finalization_wait_secs: u32) -> TaskConfig {
    TaskConfig {
        job: "www/prod/hello".parse().unwrap(),
        command: command.to_string(),
        resources: Resources {
            cpu_millis: 100,
            ram_mib: 16,
            disk_mib: 16,
            ports: 1,
        },
        port_names: vec!["http".into()],
        constraints: vec![],
        tier: Tier::Preferred,
        priority: 0,
        production: false,
        is_service: false,
        max_task_failures: 1,
        finalization_wait_secs,
        health_check: None,
        http_lifecycle: None,
        sla_policy: None,
        partition_policy: None,
    }
}

/// `borealis agent`'s defaults, but: no executor reservation (the tests count resources
/// exactly), tasks as `nobody` (the tests' roles are no users here), cgroups.
fn default_args() -> AgentArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }
    let mut args = Cli::parse_from(["agent"]).agent;
    args.thermos_executor_cpu = 0.0;
    args.thermos_executor_ram = "0".into();
    args.executor_user = Some("nobody".into());
    args.isolation = Some(Isolation::Cgroups);
    args
}

struct Harness {
    listener: TcpListener,
    work_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    agent: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Harness {
    async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut AgentArgs)) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let work_dir = tempfile::tempdir().unwrap();
        // Tasks run as `nobody`: they must be able to reach their sandboxes.
        std::fs::set_permissions(work_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut harness = Harness {
            listener,
            work_dir,
            stop: None,
            agent: None,
        };
        let mut args = harness.args();
        adjust(&mut args);
        harness.spawn_agent(args);
        harness
    }

    fn args(&self) -> AgentArgs {
        AgentArgs {
            scheduler: vec![self.listener.local_addr().unwrap().to_string()],
            cpus: Some(2.5),
            ram: Some("3GiB".into()),
            disk: Some("10GiB".into()),
            attributes: vec!["rack=r1".into(), "zone=z1".into()],
            agent_id: Some("agent-1".into()),
            hostname: Some("testhost".into()),
            ports: "31000-31009".into(),
            work_dir: Some(self.work_dir.path().join("work")),
            serve: ServeArgs {
                http_ip: Some(std::net::Ipv4Addr::LOCALHOST.into()),
                ..ServeArgs::default()
            },
            ..default_args()
        }
    }

    fn spawn_agent(&mut self, args: AgentArgs) {
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        self.agent = Some(tokio::spawn(run_until(args, async move {
            let _ = stopped.await;
        })));
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        timeout(STEP, self.agent.take().unwrap())
            .await
            .expect("the agent did not stop")
            .unwrap()
            .unwrap();
    }
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.as_ref().display()))
}

/// Waits (polling) until `path` exists.
async fn wait_for_file(path: &Path) {
    timeout(STEP, async {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} never appeared", path.display()));
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test]
async fn registers_runs_tasks_and_reports_their_ends() {
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    let registration = conn.registration().await;
    assert_eq!(registration.agent_id, "agent-1");
    assert_eq!(registration.hostname, "testhost");
    assert_eq!(
        registration.resources,
        Resources {
            cpu_millis: 2500,
            ram_mib: 3072,
            disk_mib: 10240,
            ports: 10
        }
    );
    assert_eq!(registration.port_ranges, vec![(31000, 31009)]);
    assert_eq!(
        registration.attributes,
        vec![
            ("host".to_string(), "testhost".to_string()),
            ("rack".to_string(), "r1".to_string()),
            ("zone".to_string(), "z1".to_string()),
        ]
    );
    assert!(registration.tasks.is_empty());

    // A failing task: STARTING, RUNNING (with its sandbox), FAILED with the exit code.
    conn.launch(0xa1, 2, "echo hi; echo err >&2; exit 3", 1, &[])
        .await;
    let starting = conn.status(0xa1, TaskState::Starting).await;
    assert_eq!(starting.job_key, "www/prod/hello");
    assert_eq!(starting.instance, 2);
    let running = conn.status(0xa1, TaskState::Running).await;
    let sandbox = PathBuf::from(&running.sandbox);
    let work = harness.work_dir.path().join("work").canonicalize().unwrap();
    assert_eq!(
        sandbox,
        work.join("sandboxes/www/prod/hello/2/00000000000000a1")
    );
    let failed = conn.status(0xa1, TaskState::Failed).await;
    assert_eq!(failed.exit_code, 3);
    assert_eq!(failed.message, "exited with status 3");
    assert_eq!(failed.sandbox, running.sandbox);
    assert_eq!(read(sandbox.join("stdout")), "hi\n");
    assert_eq!(read(sandbox.join("stderr")), "err\n");

    // A succeeding task.
    conn.launch(0xa2, 0, "exit 0", 1, &[]).await;
    conn.status(0xa2, TaskState::Starting).await;
    conn.status(0xa2, TaskState::Running).await;
    let finished = conn.status(0xa2, TaskState::Finished).await;
    assert_eq!(finished.exit_code, 0);

    // The environment, the process group.
    conn.launch(
        0xa3,
        7,
        "echo \"$BOREALIS_TASK_ID|$BOREALIS_INSTANCE_ID|$BOREALIS_JOB_KEY|$BOREALIS_PORT_HTTP|$BOREALIS_PORT_ADMIN_UI|$BOREALIS_PORTS|$BOREALIS_SANDBOX|$(pwd)\" > env.txt; \
         echo \"$$ $(cut -d' ' -f5 /proc/$$/stat)\" > pgrp.txt",
        1,
        &[("http", 31001), ("admin-ui", 31002)],
    )
    .await;
    conn.status(0xa3, TaskState::Starting).await;
    let running = conn.status(0xa3, TaskState::Running).await;
    conn.status(0xa3, TaskState::Finished).await;
    let sandbox = PathBuf::from(&running.sandbox);
    let env = read(sandbox.join("env.txt"));
    let s = sandbox.display();
    assert_eq!(
        env.trim_end(),
        format!("00000000000000a3|7|www/prod/hello|31001|31002|http=31001,admin-ui=31002|{s}|{s}")
    );
    let pgrp = read(sandbox.join("pgrp.txt"));
    let (pid, group) = pgrp.trim().split_once(' ').unwrap();
    assert_eq!(pid, group, "the task leads its own process group");

    // Launching a known task is idempotent: its status is resent.
    conn.launch(0xa2, 0, "exit 0", 1, &[]).await;
    conn.status(0xa2, TaskState::Finished).await;

    // Killing a task that ended resends its end; killing an unknown task reports it LOST.
    conn.kill(0xa1).await;
    conn.status(0xa1, TaskState::Failed).await;
    conn.kill(0xdead).await;
    let lost = conn.status(0xdead, TaskState::Lost).await;
    assert_eq!(lost.message, "unknown task");
    assert_eq!(lost.job_key, "www/prod/hello");

    // Reconciliation: named tasks, unknown ones LOST, everything when empty.
    conn.reconcile(&[0xa1, 0xbeef]).await;
    conn.status(0xa1, TaskState::Failed).await;
    let lost = conn.status(0xbeef, TaskState::Lost).await;
    assert_eq!(lost.message, "unknown task");
    conn.reconcile(&[]).await;
    conn.status(0xa1, TaskState::Failed).await;
    conn.status(0xa2, TaskState::Finished).await;
    conn.status(0xa3, TaskState::Finished).await;

    // Every status so far came back; nothing else but heartbeats is pending.
    assert!(
        conn.seen
            .iter()
            .all(|m| matches!(m, OwnedMessage::Heartbeat { .. })),
        "{:#?}",
        conn.seen
    );
    harness.stop().await;
}

#[tokio::test]
async fn kill_terms_then_kills_after_the_finalization_wait() {
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;

    conn.launch(0xb1, 0, "sleep 30", 1, &[]).await;
    conn.status(0xb1, TaskState::Running).await;
    let started = Instant::now();
    conn.kill(0xb1).await;
    let killed = conn
        .status_within(0xb1, TaskState::Killed, Duration::from_secs(5))
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(killed.exit_code, -1);
    assert_eq!(killed.message, "killed by signal 15");

    // Ignores SIGTERM (and so does its sleep): SIGKILLed after the finalization wait, along
    // with a background child in its group.
    conn.launch(
        0xb2,
        1,
        "trap '' TERM; sleep 30 & echo $! > bg.pid; touch ready; wait",
        1,
        &[],
    )
    .await;
    let running = conn.status(0xb2, TaskState::Running).await;
    let sandbox = PathBuf::from(&running.sandbox);
    wait_for_file(&sandbox.join("ready")).await;
    let background: i32 = read(sandbox.join("bg.pid")).trim().parse().unwrap();
    assert!(pid_alive(background));
    let started = Instant::now();
    conn.kill(0xb2).await;
    // A second kill while the first is in progress changes nothing.
    conn.kill(0xb2).await;
    let killed = conn
        .status_within(0xb2, TaskState::Killed, Duration::from_secs(6))
        .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "SIGKILL came after only {took:?}"
    );
    assert_eq!(killed.exit_code, -1);
    assert_eq!(killed.message, "killed by signal 9");
    timeout(STEP, async {
        while pid_alive(background) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the background process outlived the kill");
    // Only one KILLED per task.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while timeout(Duration::from_millis(50), conn.read_more())
        .await
        .is_ok()
    {}
    assert!(!conn
        .seen
        .iter()
        .any(|m| matches!(m, OwnedMessage::TaskStatus(s) if s.state == TaskState::Killed)));
    harness.stop().await;
}

/// A process of a group: what the checks need of its `/proc/<pid>/stat` and `cmdline`.
#[derive(Debug)]
struct Member {
    state: char,
    ppid: i32,
    cmdline: String,
}

/// The processes (zombies included) in process group `pgid`.
fn group_members(pgid: i32) -> Vec<Member> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_string_lossy().parse::<i32>().is_err() {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split(' ').collect();
        if fields.get(2).and_then(|g| g.parse().ok()) == Some(pgid) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            members.push(Member {
                state: fields[0].chars().next().unwrap_or('?'),
                ppid: fields[1].parse().unwrap_or(0),
                cmdline: String::from_utf8_lossy(&cmdline).replace('\0', " "),
            });
        }
    }
    members
}

/// Once a task's end is reported: no child of the agent (this process) is left in its group,
/// so the shell and its guard were reaped, and the rest of the group dies (orphans killed by
/// the group SIGKILL stay zombies until init reaps them; they do not count).
async fn group_is_gone(pgid: i32) {
    let ours = std::process::id() as i32;
    let members = group_members(pgid);
    assert!(
        !members.iter().any(|m| m.ppid == ours),
        "group {pgid} still holds children of the agent: {members:?}"
    );
    timeout(Duration::from_secs(5), async {
        while group_members(pgid).iter().any(|m| m.state != 'Z') {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("group {pgid} lives on: {:?}", group_members(pgid)));
}

#[tokio::test]
async fn a_task_group_has_a_guard_until_the_task_ends() {
    // Guards are what `--isolation none` has instead of cgroups and the reaper.
    let harness = Harness::start_with(|a| a.isolation = Some(Isolation::None)).await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;

    // Ends by itself: by the time its end is reported, nothing of its group is left (the
    // guard was killed and reaped).
    conn.launch(0x81, 0, "echo $$ > pid; sleep 30 & exit 0", 1, &[])
        .await;
    let running = conn.status(0x81, TaskState::Running).await;
    conn.status(0x81, TaskState::Finished).await;
    let pgid: i32 = read(Path::new(&running.sandbox).join("pid"))
        .trim()
        .parse()
        .unwrap();
    group_is_gone(pgid).await;

    // Killed: while it runs its group holds the guard, which ignores the SIGTERM of a kill
    // (and of a user's `kill 0`) and goes with the final SIGKILL.
    conn.launch(
        0x82,
        0,
        "trap 'echo term > got' TERM; kill -TERM 0; echo $$ > pid; exec sleep 30",
        1,
        &[],
    )
    .await;
    let running = conn.status(0x82, TaskState::Running).await;
    let pid_file = Path::new(&running.sandbox).join("pid");
    wait_for_file(&pid_file).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pgid: i32 = read(&pid_file).trim().parse().unwrap();
    assert_eq!(read(Path::new(&running.sandbox).join("got")), "term\n");
    let members = group_members(pgid);
    assert!(
        members
            .iter()
            .any(|m| m.state != 'Z' && m.cmdline.contains("borealis-task-guard")),
        "{members:?}"
    );
    conn.kill(0x82).await;
    let killed = conn.status(0x82, TaskState::Killed).await;
    assert_eq!(killed.message, "killed by signal 15");
    group_is_gone(pgid).await;
    harness.stop().await;
}

#[tokio::test]
async fn reconnects_and_reregisters_with_running_and_ended_tasks() {
    let mut harness = Harness::start().await;
    let address = harness.listener.local_addr().unwrap();
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;

    conn.launch(0xc1, 0, "echo $$ > pid; exec sleep 30", 30, &[])
        .await;
    let c1 = conn.status(0xc1, TaskState::Running).await;
    conn.launch(
        0xc2,
        1,
        "while [ ! -e go ]; do sleep 0.05; done; exit 4",
        30,
        &[],
    )
    .await;
    let c2 = conn.status(0xc2, TaskState::Running).await;

    // Plain drop: the agent reconnects and lists its running tasks.
    drop(conn);
    let mut conn = Conn::accept(&harness.listener).await;
    let registration = conn.registration().await;
    let states: Vec<(TaskId, TaskState)> = registration
        .tasks
        .iter()
        .map(|t| (t.task_id, t.state))
        .collect();
    assert_eq!(
        states,
        vec![
            (TaskId(0xc1), TaskState::Running),
            (TaskId(0xc2), TaskState::Running)
        ]
    );
    assert_eq!(registration.tasks[0].sandbox, c1.sandbox);

    // Scheduler away entirely (connections refused) while a task ends: the next registration
    // carries its end.
    drop(conn);
    drop(std::mem::replace(
        &mut harness.listener,
        // Placeholder; rebound on the same address below.
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    ));
    std::fs::write(Path::new(&c2.sandbox).join("go"), "").unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    harness.listener = TcpListener::bind(address).await.unwrap();
    let mut conn = Conn::accept(&harness.listener).await;
    let registration = conn.registration().await;
    let mut tasks = registration.tasks.clone();
    tasks.sort_by_key(|t| t.task_id);
    assert_eq!(tasks.len(), 2, "{tasks:#?}");
    assert_eq!(tasks[0].state, TaskState::Running);
    assert_eq!(tasks[1].task_id, TaskId(0xc2));
    assert_eq!(tasks[1].state, TaskState::Failed);
    assert_eq!(tasks[1].exit_code, 4);

    // Sent but not acknowledged: the next registration carries the end again.
    drop(conn);
    let mut conn = Conn::accept(&harness.listener).await;
    let ids = task_ids(&conn.registration().await);
    assert_eq!(ids, vec![TaskId(0xc1), TaskId(0xc2)]);

    // Acknowledged: the next registration lists only the running task, and the ended one is
    // still known to reconciliation.
    conn.status_ack(&[(0xc2, TaskState::Failed)]).await;
    conn.sync().await;
    drop(conn);
    let mut conn = Conn::accept(&harness.listener).await;
    let ids = task_ids(&conn.registration().await);
    assert_eq!(ids, vec![TaskId(0xc1)]);
    conn.reconcile(&[0xc2]).await;
    let c2_end = conn.status(0xc2, TaskState::Failed).await;
    assert_eq!(c2_end.exit_code, 4);

    // Heartbeats every 5 s.
    conn.expect_within("a heartbeat", Duration::from_secs(8), |m| match m {
        OwnedMessage::Heartbeat { timestamp_ms } if *timestamp_ms > 0 => Some(()),
        _ => None,
    })
    .await;

    // Stopping the agent kills its tasks.
    let pid: i32 = read(Path::new(&c1.sandbox).join("pid"))
        .trim()
        .parse()
        .unwrap();
    assert!(pid_alive(pid));
    harness.stop().await;
    timeout(STEP, async {
        while pid_alive(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the task outlived the agent");
}

/// The ids of a registration's tasks, sorted.
fn task_ids(registration: &AgentRegistration) -> Vec<TaskId> {
    let mut ids: Vec<TaskId> = registration.tasks.iter().map(|t| t.task_id).collect();
    ids.sort_unstable();
    ids
}

/// The (id, state) of a registration's tasks, sorted.
fn task_states(registration: &AgentRegistration) -> Vec<(u64, TaskState)> {
    let mut states: Vec<(u64, TaskState)> = registration
        .tasks
        .iter()
        .map(|t| (t.task_id.0, t.state))
        .collect();
    states.sort_unstable_by_key(|&(id, _)| id);
    states
}

/// Drops the connection (the agent notices and reconnects) and returns the next one, with the
/// registration it opened with.
async fn reconnect(harness: &Harness, conn: Conn) -> (Conn, AgentRegistration) {
    drop(conn);
    let mut conn = Conn::accept(&harness.listener).await;
    let registration = conn.registration().await;
    (conn, registration)
}

#[tokio::test]
async fn an_ended_task_is_reregistered_until_the_scheduler_acknowledges_it() {
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;
    conn.launch(0x71, 0, "exit 0", 1, &[]).await;
    let finished = conn.status(0x71, TaskState::Finished).await;

    // Written to the socket is not delivered: every registration carries the end again.
    for _ in 0..2 {
        let (next, registration) = reconnect(&harness, conn).await;
        conn = next;
        assert_eq!(registration.tasks, vec![finished.clone()]);
    }

    // An ack for another state than the task's acknowledges nothing.
    conn.status_ack(&[(0x71, TaskState::Failed), (0x71, TaskState::Running)])
        .await;
    conn.sync().await;
    let (mut conn, registration) = reconnect(&harness, conn).await;
    assert_eq!(
        task_states(&registration),
        vec![(0x71, TaskState::Finished)]
    );

    // Acknowledged in its terminal state: never re-reported again, still reconcilable.
    conn.status_ack(&[(0x71, TaskState::Finished)]).await;
    conn.sync().await;
    for _ in 0..2 {
        let (next, registration) = reconnect(&harness, conn).await;
        conn = next;
        assert!(registration.tasks.is_empty(), "{:#?}", registration.tasks);
    }
    conn.reconcile(&[0x71]).await;
    assert_eq!(conn.status(0x71, TaskState::Finished).await, finished);
    // A repeated ack is harmless.
    conn.status_ack(&[(0x71, TaskState::Finished)]).await;
    conn.sync().await;
    harness.stop().await;
}

#[tokio::test]
async fn an_ack_for_running_does_not_drop_a_later_end() {
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;
    conn.launch(
        0x72,
        0,
        "while [ ! -e go ]; do sleep 0.05; done; exit 5",
        1,
        &[],
    )
    .await;
    let running = conn.status(0x72, TaskState::Running).await;

    // Acks for RUNNING, and for an end that has not happened, while it runs.
    conn.status_ack(&[(0x72, TaskState::Running), (0x72, TaskState::Failed)])
        .await;
    conn.sync().await;
    let (mut conn, registration) = reconnect(&harness, conn).await;
    assert_eq!(task_states(&registration), vec![(0x72, TaskState::Running)]);

    // Its end is reported, then re-reported at registration until acknowledged.
    std::fs::write(Path::new(&running.sandbox).join("go"), "").unwrap();
    let failed = conn.status(0x72, TaskState::Failed).await;
    assert_eq!(failed.exit_code, 5);
    conn.status_ack(&[(0x72, TaskState::Running)]).await;
    conn.sync().await;
    let (mut conn, registration) = reconnect(&harness, conn).await;
    assert_eq!(registration.tasks, vec![failed]);

    conn.status_ack(&[(0x72, TaskState::Failed)]).await;
    conn.sync().await;
    let (_conn, registration) = reconnect(&harness, conn).await;
    assert!(registration.tasks.is_empty(), "{:#?}", registration.tasks);
    harness.stop().await;
}

#[tokio::test]
async fn an_ack_for_an_unknown_task_is_harmless() {
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;
    conn.launch(0x73, 0, "exit 0", 1, &[]).await;
    conn.status(0x73, TaskState::Finished).await;
    conn.launch(0x74, 0, "exit 0", 1, &[]).await;
    conn.status(0x74, TaskState::Finished).await;

    // Unknown tasks (alone, then mixed with a known one), and an empty ack.
    conn.status_ack(&[(0xdead, TaskState::Finished), (0xbeef, TaskState::Running)])
        .await;
    conn.status_ack(&[]).await;
    conn.status_ack(&[(0xdead, TaskState::Lost), (0x73, TaskState::Finished)])
        .await;
    conn.sync().await;
    // The same connection still serves, and knows nothing of the unknown tasks.
    conn.launch(0x75, 0, "exit 0", 1, &[]).await;
    conn.status(0x75, TaskState::Finished).await;
    conn.reconcile(&[0xdead]).await;
    conn.status(0xdead, TaskState::Lost).await;

    // Only the known, acknowledged task stopped being re-reported.
    let (_conn, registration) = reconnect(&harness, conn).await;
    assert_eq!(
        task_states(&registration),
        vec![(0x74, TaskState::Finished), (0x75, TaskState::Finished)]
    );
    harness.stop().await;
}

#[tokio::test]
async fn bad_input_makes_the_agent_reconnect() {
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;
    conn.launch(0xd1, 0, "sleep 30", 1, &[]).await;
    conn.status(0xd1, TaskState::Running).await;

    // A well-framed message that is not a flatbuffer.
    conn.stream
        .write_all(&[8, 0, 0, 0, 4, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef])
        .await
        .unwrap();
    conn.closed().await;
    let mut conn = Conn::accept(&harness.listener).await;
    let registration = conn.registration().await;
    assert_eq!(registration.tasks.len(), 1);
    assert_eq!(registration.tasks[0].state, TaskState::Running);

    // A message overrunning its frame.
    conn.stream
        .write_all(&[6, 0, 0, 0, 100, 0, 0, 0, 1, 2])
        .await
        .unwrap();
    conn.closed().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;

    // A frame over the size limit.
    conn.stream
        .write_all(&u32::MAX.to_le_bytes())
        .await
        .unwrap();
    conn.closed().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;

    // A StatusAck whose vectors differ in length.
    let bytes = {
        use borealis_net::wire;
        let mut encoder = Encoder::new();
        let fbb = encoder.builder();
        fbb.reset();
        let task_ids = fbb.create_vector(&[0xd1u64, 0xd2]);
        let states = fbb.create_vector(&[wire::TaskState::Running]);
        let ack = wire::StatusAck::create(
            fbb,
            &wire::StatusAckArgs {
                task_ids: Some(task_ids),
                states: Some(states),
            },
        );
        encoder
            .finish_message(0, None, wire::Payload::StatusAck, ack.as_union_value())
            .to_vec()
    };
    conn.send(&bytes).await;
    conn.closed().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;

    // Still serving: the task can be killed.
    conn.kill(0xd1).await;
    conn.status(0xd1, TaskState::Killed).await;
    harness.stop().await;
}

#[tokio::test]
async fn a_sandbox_that_cannot_be_created_fails_the_task() {
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;
    // The agent created its work dir and `sandboxes` in it; make `sandboxes` a file.
    let sandboxes = harness.work_dir.path().join("work/sandboxes");
    std::fs::remove_dir(&sandboxes).unwrap();
    std::fs::write(&sandboxes, "").unwrap();
    conn.launch(0xe1, 0, "exit 0", 1, &[]).await;
    conn.status(0xe1, TaskState::Starting).await;
    let failed = conn.status(0xe1, TaskState::Failed).await;
    assert!(
        failed.message.starts_with("cannot create the sandbox"),
        "{}",
        failed.message
    );
    harness.stop().await;
}

#[tokio::test]
async fn tries_scheduler_addresses_in_turn() {
    // The first address refuses connections; the agent moves on to the second.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_address = dead.local_addr().unwrap().to_string();
    drop(dead);
    let harness = Harness::start_with(|args| args.scheduler.insert(0, dead_address)).await;
    let mut conn = Conn::accept(&harness.listener).await;
    assert_eq!(conn.registration().await.agent_id, "agent-1");
    harness.stop().await;
}

/// What a follower scheduler does with an agent: takes its registration, answers `NotLeader`
/// (naming `leader`, if known) and closes the connection. Returns the registration.
async fn refuse_as_follower(mut conn: Conn, leader: Option<&str>) -> AgentRegistration {
    let registration = conn
        .expect("RegisterAgent", |m| match m {
            OwnedMessage::RegisterAgent(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    let text = match leader {
        Some(l) => format!("this scheduler is not the leader; the leader is {l}"),
        None => "this scheduler is not the leader and no leader is known".to_string(),
    };
    let bytes = conn
        .encoder
        .error_with_leader(0, ErrorCode::NotLeader, &text, leader)
        .to_vec();
    conn.send(&bytes).await;
    drop(conn);
    registration
}

/// Asserts that nobody connects to `listener` within `within`.
async fn no_connection(listener: &TcpListener, what: &str, within: Duration) {
    if let Ok(accepted) = timeout(within, listener.accept()).await {
        panic!("{what}: unexpected connection {accepted:?}");
    }
}

#[tokio::test]
async fn follows_the_leader_a_follower_names_even_unlisted() {
    // --scheduler lists only the follower; the leader it names is not listed.
    let leader = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let leader_address = leader.local_addr().unwrap().to_string();
    let harness = Harness::start().await;
    let follower = Conn::accept(&harness.listener).await;
    let started = Instant::now();
    refuse_as_follower(follower, Some(&leader_address)).await;
    let mut conn = Conn::accept(&leader).await;
    let registration = conn.registration().await;
    assert_eq!(registration.agent_id, "agent-1");
    // No full backoff first: a refusal by a follower is answered at once.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?} to reach the leader",
        started.elapsed()
    );
    no_connection(
        &harness.listener,
        "registered with the leader, the agent went back to the follower",
        Duration::from_millis(300),
    )
    .await;
    // Registered and working with the leader.
    conn.sync().await;

    // The leader goes away: the agent goes back to its list (the follower), and the next name
    // it hears is followed again.
    drop(conn);
    let follower = Conn::accept(&harness.listener).await;
    refuse_as_follower(follower, Some(&leader_address)).await;
    let mut conn = Conn::accept(&leader).await;
    assert_eq!(conn.registration().await.agent_id, "agent-1");
    harness.stop().await;
}

#[tokio::test]
async fn moves_on_to_the_next_address_after_a_refused_or_closed_registration() {
    let second = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second_address = second.local_addr().unwrap().to_string();
    let harness = Harness::start_with(|args| args.scheduler.push(second_address.clone())).await;
    // The first refuses without knowing a leader: the next attempt is the second address, not
    // the first again.
    let first = Conn::accept(&harness.listener).await;
    refuse_as_follower(first, None).await;
    let conn = Conn::accept(&second).await;
    no_connection(
        &harness.listener,
        "after a refusal the agent retried the same scheduler",
        Duration::from_millis(300),
    )
    .await;
    // The second closes the registration without a word: on to the next (the first, again).
    conn.closed_by_us().await;
    let mut conn = Conn::accept(&harness.listener).await;
    assert_eq!(conn.registration().await.agent_id, "agent-1");
    conn.sync().await;
    no_connection(&second, "a second connection", Duration::from_millis(300)).await;
    harness.stop().await;
}

#[tokio::test]
async fn an_unusable_launch_fails_the_task_not_the_connection() {
    use borealis_net::wire;
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;
    // Well-formed flatbuffer, invalid job key.
    let mut encoder = Encoder::new();
    let bytes = {
        let fbb = encoder.builder();
        fbb.reset();
        let job_key = fbb.create_string("not a job key");
        let command = fbb.create_string("exit 0");
        let resources = wire::Resources::new(100, 16, 16, 0);
        let config = wire::TaskConfig::create(
            fbb,
            &wire::TaskConfigArgs {
                command: Some(command),
                resources: Some(&resources),
                ..Default::default()
            },
        );
        let launch = wire::LaunchTask::create(
            fbb,
            &wire::LaunchTaskArgs {
                task_id: 0xf1,
                job_key: Some(job_key),
                instance: 4,
                config: Some(config),
                ports: None,
            },
        );
        encoder
            .finish_message(0, None, wire::Payload::LaunchTask, launch.as_union_value())
            .to_vec()
    };
    conn.send(&bytes).await;
    let failed = conn.status(0xf1, TaskState::Failed).await;
    assert!(
        failed.message.starts_with("invalid launch"),
        "{}",
        failed.message
    );
    assert_eq!(failed.job_key, "not a job key");
    assert_eq!(failed.instance, 4);
    // The same connection still serves.
    conn.launch(0xf2, 0, "exit 0", 1, &[]).await;
    conn.status(0xf2, TaskState::Finished).await;
    harness.stop().await;
}

/// Not a test by itself: when `BOREALIS_TEST_AGENT_SCHEDULER` is set, this is the body of an
/// agent *process* started by the tests below (the test binary re-executed), run with
/// [`borealis_agent::run`] until a signal.
#[test]
fn agent_process_helper() {
    let Ok(scheduler) = std::env::var("BOREALIS_TEST_AGENT_SCHEDULER") else {
        return;
    };
    let work_dir = std::env::var("BOREALIS_TEST_AGENT_WORK_DIR").unwrap();
    borealis_agent::run(AgentArgs {
        scheduler: vec![scheduler],
        cpus: Some(1.0),
        ram: Some("1GiB".into()),
        disk: Some("1GiB".into()),
        attributes: vec![],
        agent_id: Some("agent-process".into()),
        hostname: Some("testhost".into()),
        ports: "31000-31009".into(),
        work_dir: Some(work_dir.into()),
        serve: ServeArgs {
            no_http: true,
            ..ServeArgs::default()
        },
        isolation: Some(
            match std::env::var("BOREALIS_TEST_AGENT_ISOLATION").as_deref() {
                Ok("none") => Isolation::None,
                _ => Isolation::Cgroups,
            },
        ),
        ..default_args()
    })
    .unwrap();
}

/// True while the process exists and is not a zombie.
fn process_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            !matches!(state, Some(Some('Z')) | Some(Some('X')))
        }
        Err(_) => false,
    }
}

/// Starts an agent process, has it run `command` (which writes `pid` and the pid files named
/// in `pid_files` in its sandbox), then sends the agent `signal`; the task and every process
/// named in a pid file must die within `within`. Returns the agent's exit status.
async fn task_dies_with_agent_process(
    signal: libc::c_int,
    command: &str,
    pid_files: &[&str],
    within: Duration,
) -> std::process::ExitStatus {
    task_dies_with_agent_process_isolated("cgroups", signal, command, pid_files, within).await
}

/// [`task_dies_with_agent_process`] with `--isolation` `isolation`.
async fn task_dies_with_agent_process_isolated(
    isolation: &str,
    signal: libc::c_int,
    command: &str,
    pid_files: &[&str],
    within: Duration,
) -> std::process::ExitStatus {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let work_dir = tempfile::tempdir().unwrap();
    let mut agent = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "agent_process_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "BOREALIS_TEST_AGENT_SCHEDULER",
            listener.local_addr().unwrap().to_string(),
        )
        .env("BOREALIS_TEST_AGENT_WORK_DIR", work_dir.path())
        .env("BOREALIS_TEST_AGENT_ISOLATION", isolation)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut conn = Conn::accept(&listener).await;
    conn.registration().await;
    conn.launch(0x91, 0, command, 30, &[]).await;
    let running = conn.status(0x91, TaskState::Running).await;
    let sandbox = PathBuf::from(&running.sandbox);
    let mut pids = Vec::new();
    for name in std::iter::once(&"pid").chain(pid_files) {
        let pid_file = sandbox.join(name);
        wait_for_file(&pid_file).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let pid: i32 = read(&pid_file).trim().parse().unwrap();
        assert!(process_running(pid), "{name}: {pid} is not running");
        pids.push((name, KillOnDrop(pid)));
    }
    // SAFETY: plain system call on our own child.
    unsafe { libc::kill(agent.id().unwrap() as i32, signal) };
    let status = timeout(STEP, agent.wait()).await.unwrap().unwrap();
    for (name, pid) in &pids {
        timeout(within, async {
            while process_running(pid.0) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: {} outlived its agent process by {within:?}", pid.0));
    }
    status
}

/// SIGKILLs a process a failed test left behind (a no-op once it is gone).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if process_running(self.0) {
            // SAFETY: plain system call.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

#[tokio::test]
async fn tasks_die_when_the_agent_process_is_killed() {
    let status =
        task_dies_with_agent_process(libc::SIGKILL, "echo $$ > pid; exec sleep 30", &[], STEP)
            .await;
    assert!(!status.success());
}

#[tokio::test]
async fn the_agent_process_stops_cleanly_on_sigterm() {
    let status =
        task_dies_with_agent_process(libc::SIGTERM, "echo $$ > pid; exec sleep 30", &[], STEP)
            .await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn the_whole_task_process_tree_dies_when_the_agent_process_is_killed() {
    // Only the shell is the agent's child: its background child, and a grandchild started by
    // a subshell that ignores SIGTERM and SIGHUP, must die too, within a few seconds.
    let status = task_dies_with_agent_process(
        libc::SIGKILL,
        "sleep 30 & echo $! > child; \
         ( trap '' TERM HUP; sleep 30 & echo $! > grandchild; wait ) & \
         echo $$ > pid; wait",
        &["child", "grandchild"],
        Duration::from_secs(5),
    )
    .await;
    assert!(!status.success());
}

#[tokio::test]
async fn the_whole_task_process_tree_dies_with_the_agent_without_cgroups_too() {
    // The guard's promise, for what stays in the task's process group.
    let status = task_dies_with_agent_process_isolated(
        "none",
        libc::SIGKILL,
        "sleep 30 & echo $! > child; echo $$ > pid; wait",
        &["child"],
        Duration::from_secs(5),
    )
    .await;
    assert!(!status.success());
}

#[tokio::test]
async fn a_setsid_grandchild_dies_with_the_agent_process() {
    // It left the task's session and process group: only its cgroup still holds it, which
    // the agent's reaper kills once the agent is gone.
    let status = task_dies_with_agent_process(
        libc::SIGKILL,
        "setsid sh -c 'echo $$ > escaped; exec sleep 30' & echo $$ > pid; wait",
        &["escaped"],
        Duration::from_secs(5),
    )
    .await;
    assert!(!status.success());
}

// ---- Isolation ----

/// A task's config with this ram and disk (MiB).
fn sized_config(command: &str, ram_mib: u32, disk_mib: u32) -> TaskConfig {
    let mut config = task_config(command, 1);
    config.resources.ram_mib = ram_mib;
    config.resources.disk_mib = disk_mib;
    config
}

#[tokio::test]
async fn a_kill_takes_the_tasks_whole_cgroup_setsid_children_too() {
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;
    conn.launch(
        0x101,
        0,
        "setsid sh -c 'trap \"\" TERM; echo $$ > escaped; while :; do sleep 1; done' & \
         echo $$ > pid; exec sleep 60",
        1,
        &[],
    )
    .await;
    let running = conn.status(0x101, TaskState::Running).await;
    let escaped = Path::new(&running.sandbox).join("escaped");
    wait_for_file(&escaped).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pid: i32 = read(&escaped).trim().parse().unwrap();
    let _guard = KillOnDrop(pid);
    assert!(process_running(pid));
    // SAFETY: plain system call.
    assert_ne!(unsafe { libc::getsid(pid) }, unsafe { libc::getsid(0) });
    conn.kill(0x101).await;
    let killed = conn.status(0x101, TaskState::Killed).await;
    assert!(killed.usage.is_some(), "{killed:?}");
    timeout(STEP, async {
        while process_running(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the setsid grandchild {pid} survived the task's kill"));
    harness.stop().await;
}

#[tokio::test]
async fn a_task_past_its_memory_limit_fails_with_the_limit() {
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;
    // `tail` keeps a line that never ends in memory: it grows until the OOM killer comes.
    conn.launch_config(0x102, 0, &sized_config("tail /dev/zero", 32, 16), &[])
        .await;
    let failed = conn.status(0x102, TaskState::Failed).await;
    assert!(
        failed
            .message
            .starts_with("memory limit of 32 MiB exceeded"),
        "{}",
        failed.message
    );
    let usage = failed.usage.expect("usage with the end");
    assert!(usage.peak_memory_bytes >= 16 << 20, "{usage:?}");
    assert!(usage.peak_memory_bytes <= 33 << 20, "{usage:?}");
    harness.stop().await;
}

#[tokio::test]
async fn a_reused_cgroup_starts_clean() {
    // One task at a time, so each reuses the cgroup the one before left: an OOM kill, a big
    // peak and CPU time must not carry over to the next.
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;
    conn.launch_config(0x111, 0, &sized_config("tail /dev/zero", 32, 16), &[])
        .await;
    conn.status(0x111, TaskState::Failed).await;
    conn.launch_config(
        0x112,
        0,
        &sized_config(
            "head -c 20000000 /dev/zero | tail -c 20000000 > /dev/null",
            64,
            16,
        ),
        &[],
    )
    .await;
    let big = conn.status(0x112, TaskState::Finished).await.usage.unwrap();
    assert!(big.peak_memory_bytes >= 16 << 20, "{big:?}");
    conn.launch_config(0x113, 0, &sized_config("true", 64, 16), &[])
        .await;
    let small = conn.status(0x113, TaskState::Finished).await;
    let usage = small.usage.unwrap();
    assert!(usage.peak_memory_bytes < 8 << 20, "{usage:?}");
    assert_eq!(small.message, "exited with status 0");
    // And it was the same cgroup each time: one waits in the pool (cgroup v1, where the
    // agent's subtree sits at the root of the freezer hierarchy of this test's process).
    let work = harness.work_dir.path().join("work").canonicalize().unwrap();
    let subtree = format!(
        "/sys/fs/cgroup/freezer/borealis-agent-1-{:08x}",
        borealis_core::route_hash_str(&work.to_string_lossy()) as u32
    );
    if let Ok(entries) = std::fs::read_dir(&subtree) {
        let cgroups = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("task-"))
            .count();
        assert_eq!(
            cgroups, 1,
            "task cgroups in {subtree} after three tasks in a row"
        );
    } else {
        eprintln!("note: no {subtree} (not cgroup v1 at the freezer root): reuse not checked");
    }
    harness.stop().await;
}

#[tokio::test]
async fn a_task_over_its_disk_limit_fails_with_the_limit() {
    let harness = Harness::start_with(|a| a.disk_check_interval = Duration::from_millis(100)).await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;
    conn.launch_config(
        0x103,
        0,
        &sized_config("head -c 24000000 /dev/urandom > big; exec sleep 60", 64, 16),
        &[],
    )
    .await;
    conn.status(0x103, TaskState::Running).await;
    let failed = conn.status(0x103, TaskState::Failed).await;
    assert!(
        failed
            .message
            .starts_with("disk limit of 16 MiB exceeded: the sandbox holds"),
        "{}",
        failed.message
    );
    assert!(failed.usage.unwrap().disk_bytes > 16 << 20);
    harness.stop().await;
}

#[tokio::test]
async fn a_finished_task_reports_what_it_used() {
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;
    conn.launch(
        0x104,
        0,
        "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; id -un > whoami; env > env",
        1,
        &[],
    )
    .await;
    let running = conn.status(0x104, TaskState::Running).await;
    let finished = conn.status(0x104, TaskState::Finished).await;
    let usage = finished.usage.expect("usage with the end");
    assert!(usage.cpu_time_ms > 0, "{usage:?}");
    assert!(usage.peak_memory_bytes > 0, "{usage:?}");
    let sandbox = Path::new(&running.sandbox);
    assert_eq!(read(sandbox.join("whoami")), "nobody\n");
    // The environment is built from nothing: none of the agent's own.
    let env = read(sandbox.join("env"));
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    for name in names {
        assert!(
            name.starts_with("BOREALIS_")
                || ["PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "PWD"].contains(&name),
            "{name} leaked into the task's environment: {env}"
        );
    }
    // The sandbox is the task user's; its parents are not.
    use std::os::unix::fs::MetadataExt;
    assert_ne!(std::fs::metadata(sandbox).unwrap().uid(), 0);
    assert_eq!(
        std::fs::metadata(sandbox.parent().unwrap()).unwrap().uid(),
        0
    );
    harness.stop().await;
}

// ---- Health checks and the kill sequence ----

/// A request a [`TaskEndpoints`] server received: when, and its `METHOD PATH`.
type Received = (Instant, String);

/// What a [`TaskEndpoints`] server shares with its test.
#[derive(Default)]
struct EndpointsState {
    /// Every request, in arrival order.
    received: std::sync::Mutex<Vec<Received>>,
    /// What `GET /health` answers (0: not set yet, 503).
    health_status: std::sync::atomic::AtomicU16,
    /// On this `METHOD PATH`, create this file (e.g. in a task's sandbox, to make it exit).
    touch_on: std::sync::Mutex<Option<(String, PathBuf)>>,
}

/// A small HTTP/1.1 server on 127.0.0.1 standing in for a task's endpoints (the task itself
/// is a plain shell command): `GET /health` answers the status it is set to, anything else
/// 200; every request is recorded with the time it arrived; one connection per request.
struct TaskEndpoints {
    port: u16,
    state: std::sync::Arc<EndpointsState>,
    server: JoinHandle<()>,
}

impl TaskEndpoints {
    async fn start() -> TaskEndpoints {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(EndpointsState::default());
        let shared = state.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_one(stream, shared.clone()));
            }
        });
        TaskEndpoints {
            port,
            state,
            server,
        }
    }

    fn set_health(&self, status: u16) {
        self.state
            .health_status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    fn touch_on(&self, request: &str, path: PathBuf) {
        *self.state.touch_on.lock().unwrap() = Some((request.to_string(), path));
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// The requests other than health checks.
    fn posts(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|(_, r)| r.starts_with("POST "))
            .collect()
    }

    fn count(&self, request: &str) -> usize {
        self.received().iter().filter(|(_, r)| r == request).count()
    }

    /// Waits (polling) until `request` has been received `n` times; returns when the last came.
    async fn wait_for(&self, request: &str, n: usize) -> Instant {
        timeout(STEP, async {
            loop {
                let matching: Vec<Instant> = self
                    .received()
                    .into_iter()
                    .filter(|(_, r)| r == request)
                    .map(|(at, _)| at)
                    .collect();
                if matching.len() >= n {
                    return matching[n - 1];
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{request} x{n} never came; got {:?}", self.received()))
    }
}

impl Drop for TaskEndpoints {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve_one(mut stream: TcpStream, state: std::sync::Arc<EndpointsState>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    if !matches!(timeout(Duration::from_secs(5), read_head).await, Ok(true)) {
        return;
    }
    let text = String::from_utf8_lossy(&head);
    let mut words = text.lines().next().unwrap_or("").split(' ');
    let request = format!(
        "{} {}",
        words.next().unwrap_or(""),
        words.next().unwrap_or("")
    );
    state
        .received
        .lock()
        .unwrap()
        .push((Instant::now(), request.clone()));
    if let Some((on, path)) = state.touch_on.lock().unwrap().as_ref() {
        if *on == request {
            std::fs::write(path, "").unwrap();
        }
    }
    let status = if request == "GET /health" {
        match state
            .health_status
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            0 => 503,
            code => code,
        }
    } else {
        200
    };
    let response =
        format!("HTTP/1.1 {status} Whatever\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// An HTTP health check on the port named `health`: one check a second, each bounded by 1 s.
fn http_health_check(grace_secs: u32, max_failures: u32) -> borealis_core::HealthCheck {
    borealis_core::HealthCheck {
        checker: borealis_core::HealthChecker::Http {
            port: "health".into(),
            endpoint: "/health".into(),
            expected_status: 200,
        },
        initial_interval_secs: grace_secs,
        interval_secs: 1,
        timeout_secs: 1,
        max_consecutive_failures: max_failures,
        min_consecutive_successes: 1,
    }
}

fn shell_health_check(command: &str, max_failures: u32) -> borealis_core::HealthCheck {
    borealis_core::HealthCheck {
        checker: borealis_core::HealthChecker::Shell {
            command: command.into(),
        },
        initial_interval_secs: 0,
        interval_secs: 1,
        timeout_secs: 1,
        max_consecutive_failures: max_failures,
        min_consecutive_successes: 1,
    }
}

/// The lifecycle on the port named `health`, with 1 s waits.
fn lifecycle() -> borealis_core::HttpLifecycle {
    borealis_core::HttpLifecycle {
        port: "health".into(),
        graceful_shutdown_endpoint: "/quitquitquit".into(),
        shutdown_endpoint: "/abortabortabort".into(),
        graceful_shutdown_wait_secs: 1,
        shutdown_wait_secs: 1,
    }
}

const WAIT: Duration = Duration::from_secs(1);
/// How much earlier than its wait a step may come (timer granularity).
const EARLY: Duration = Duration::from_millis(100);
/// How much later than its wait a step may come and still count as "after the wait", far
/// below any timeout of the sequence.
const LATE: Duration = Duration::from_millis(1500);

/// Asserts that `later - earlier` is the wait `wait`, loosely.
fn assert_gap(what: &str, earlier: Instant, later: Instant, wait: Duration) {
    let gap = later.saturating_duration_since(earlier);
    assert!(
        gap + EARLY >= wait && gap <= wait + LATE,
        "{what}: {gap:?} (expected about {wait:?})"
    );
}

impl Conn {
    /// Reads whatever the agent sent within a short while, then asserts that no status of
    /// `task` in `state` is among it.
    async fn assert_no_status(&mut self, task: u64, state: TaskState) {
        while timeout(Duration::from_millis(50), self.read_more())
            .await
            .is_ok_and(|open| open)
        {}
        assert!(
            !self.seen.iter().any(|m| matches!(m,
                OwnedMessage::TaskStatus(s) if s.task_id == TaskId(task) && s.state == state)),
            "unexpected {state} of {task:x}: {:#?}",
            self.seen
        );
    }
}

#[tokio::test]
async fn a_health_checked_task_runs_only_once_its_endpoint_answers_200() {
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;
    let endpoints = TaskEndpoints::start().await;
    endpoints.set_health(503);
    let mut config = task_config("exec sleep 30", 1);
    config.port_names = vec!["health".into()];
    // A long grace: the 503s do not count, the task waits in STARTING.
    config.health_check = Some(http_health_check(60, 0));
    conn.launch_config(0x61, 0, &config, &[("health", endpoints.port)])
        .await;
    let first = conn.status(0x61, TaskState::Starting).await;
    assert_eq!(first.sandbox, "");
    // STARTING again once the process runs, with its sandbox.
    let started = conn.status(0x61, TaskState::Starting).await;
    assert!(
        started.sandbox.ends_with("/0000000000000061"),
        "{started:?}"
    );

    // Two checks answered 503, a second apart: still STARTING.
    let first_check = endpoints.wait_for("GET /health", 1).await;
    let second_check = endpoints.wait_for("GET /health", 2).await;
    assert_gap("between two checks", first_check, second_check, WAIT);
    conn.assert_no_status(0x61, TaskState::Running).await;
    conn.reconcile(&[0x61]).await;
    conn.status(0x61, TaskState::Starting).await;

    // 200: RUNNING after the next check.
    endpoints.set_health(200);
    let flipped = Instant::now();
    let running = conn
        .status_within(0x61, TaskState::Running, Duration::from_secs(3))
        .await;
    assert_eq!(running.sandbox, started.sandbox);
    assert!(flipped.elapsed() <= WAIT + LATE, "{:?}", flipped.elapsed());
    assert!(endpoints.count("GET /health") >= 3);

    conn.kill(0x61).await;
    let killed = conn.status(0x61, TaskState::Killed).await;
    assert_eq!(killed.message, "killed by signal 15");
    harness.stop().await;
}

#[tokio::test]
async fn an_endpoint_failing_after_running_gets_the_task_killed_and_failed() {
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;
    let endpoints = TaskEndpoints::start().await;
    endpoints.set_health(200);
    let mut config = task_config("exec sleep 30", 1);
    config.port_names = vec!["health".into()];
    config.health_check = Some(http_health_check(0, 1));
    config.http_lifecycle = Some(lifecycle());
    conn.launch_config(0x62, 0, &config, &[("health", endpoints.port)])
        .await;
    conn.status(0x62, TaskState::Running).await;

    // Two failures in a row (max_consecutive_failures 1): killed with the whole sequence.
    endpoints.set_health(503);
    let flipped = Instant::now();
    let failed = conn.status(0x62, TaskState::Failed).await;
    assert_eq!(
        failed.message,
        "unhealthy: GET /health answered 503 (2 failures in a row)"
    );
    assert_eq!(failed.exit_code, -1);
    let posts = endpoints.posts();
    let requests: Vec<&str> = posts.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(requests, ["POST /quitquitquit", "POST /abortabortabort"]);
    // The second failing check came 1-2 s after the flip (the first one 0-1 s after it); the
    // graceful POST right after it.
    let to_graceful = posts[0].0.saturating_duration_since(flipped);
    assert!(
        to_graceful + EARLY >= WAIT && to_graceful <= 2 * WAIT + LATE,
        "from the flip to the graceful POST: {to_graceful:?}"
    );
    assert_gap("graceful to shutdown POST", posts[0].0, posts[1].0, WAIT);
    // No more checks once the kill began.
    let checks_after: Vec<Instant> = endpoints
        .received()
        .into_iter()
        .filter(|(at, r)| r == "GET /health" && *at > posts[0].0)
        .map(|(at, _)| at)
        .collect();
    assert!(checks_after.is_empty(), "{checks_after:?}");
    harness.stop().await;
}

#[tokio::test]
async fn shell_health_checks_run_in_the_sandbox_with_the_task_environment() {
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;

    // Healthy while the file exists (and the environment is the task's). Two failures in a
    // row are fatal, so a first check that comes before the file does not matter.
    let mut config = task_config("exec sleep 30", 1);
    config.health_check = Some(shell_health_check(
        "[ \"$BOREALIS_PORT_HTTP\" = 31001 ] && [ \"$PWD\" = \"$BOREALIS_SANDBOX\" ] && test -e healthy",
        1,
    ));
    conn.launch_config(0x63, 0, &config, &[("http", 31001)])
        .await;
    conn.status(0x63, TaskState::Starting).await;
    let started = conn.status(0x63, TaskState::Starting).await;
    let sandbox = PathBuf::from(&started.sandbox);
    std::fs::write(sandbox.join("healthy"), "").unwrap();
    conn.status_within(0x63, TaskState::Running, Duration::from_secs(4))
        .await;
    std::fs::remove_file(sandbox.join("healthy")).unwrap();
    let failed = conn
        .status_within(0x63, TaskState::Failed, Duration::from_secs(5))
        .await;
    assert!(
        failed
            .message
            .starts_with("unhealthy: health check `[ \"$BOREALIS_PORT_HTTP\"")
            && failed
                .message
                .ends_with("` exited with status 1 (2 failures in a row)"),
        "{}",
        failed.message
    );
    assert!(sandbox.join("health_check.log").exists());

    // A check outliving its timeout fails, and its process is killed.
    let mut config = task_config("exec sleep 30", 1);
    config.health_check = Some(shell_health_check("echo $$ > check.pid; exec sleep 30", 0));
    conn.launch_config(0x64, 0, &config, &[]).await;
    conn.status(0x64, TaskState::Starting).await;
    let started = conn.status(0x64, TaskState::Starting).await;
    let failed = conn
        .status_within(0x64, TaskState::Failed, Duration::from_secs(5))
        .await;
    assert_eq!(
        failed.message,
        "unhealthy: health check `echo $$ > check.pid; exec sleep 30` timed out after 1s (1 failure)"
    );
    let check_pid: i32 = read(Path::new(&started.sandbox).join("check.pid"))
        .trim()
        .parse()
        .unwrap();
    timeout(STEP, async {
        while process_running(check_pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the timed-out check outlived its timeout");
    harness.stop().await;
}

#[tokio::test]
async fn the_kill_sequence_posts_graceful_then_shutdown_then_sigterms_once() {
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;
    let endpoints = TaskEndpoints::start().await;
    // Ignores the POSTs; dies of the SIGTERM (a SIGKILL would come only 30 s later).
    let mut config = task_config("exec sleep 30", 30);
    config.port_names = vec!["health".into()];
    config.http_lifecycle = Some(lifecycle());
    conn.launch_config(0x65, 0, &config, &[("health", endpoints.port)])
        .await;
    conn.status(0x65, TaskState::Running).await;

    let kill_sent = Instant::now();
    conn.kill(0x65).await;
    let graceful = endpoints.wait_for("POST /quitquitquit", 1).await;
    // Repeated kills (the scheduler retries) do not restart the sequence.
    conn.kill(0x65).await;
    conn.sync().await;
    let shutdown = endpoints.wait_for("POST /abortabortabort", 1).await;
    conn.kill(0x65).await;
    let killed = conn
        .status_within(0x65, TaskState::Killed, WAIT + LATE)
        .await;
    let terminated = Instant::now();
    assert_eq!(killed.message, "killed by signal 15");
    assert!(
        graceful.duration_since(kill_sent) < Duration::from_millis(500),
        "the graceful POST came {:?} after the kill",
        graceful.duration_since(kill_sent)
    );
    assert_gap("graceful to shutdown POST", graceful, shutdown, WAIT);
    assert_gap("shutdown POST to SIGTERM", shutdown, terminated, WAIT);
    let requests: Vec<String> = endpoints.posts().into_iter().map(|(_, r)| r).collect();
    assert_eq!(requests, ["POST /quitquitquit", "POST /abortabortabort"]);
    // One KILLED: the kills sent during the sequence changed nothing; one sent after the end
    // resends it.
    conn.assert_no_status(0x65, TaskState::Killed).await;
    conn.kill(0x65).await;
    conn.status(0x65, TaskState::Killed).await;
    assert_eq!(endpoints.posts().len(), 2);
    harness.stop().await;
}

#[tokio::test]
async fn a_task_that_exits_on_the_graceful_post_gets_nothing_more() {
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;
    let endpoints = TaskEndpoints::start().await;
    let mut config = task_config(
        "trap 'touch got_term' TERM; while [ ! -e quit ]; do sleep 0.05; done; exit 0",
        30,
    );
    config.port_names = vec!["health".into()];
    config.http_lifecycle = Some(lifecycle());
    conn.launch_config(0x66, 0, &config, &[("health", endpoints.port)])
        .await;
    let running = conn.status(0x66, TaskState::Running).await;
    let sandbox = PathBuf::from(&running.sandbox);
    endpoints.touch_on("POST /quitquitquit", sandbox.join("quit"));

    let kill_sent = Instant::now();
    conn.kill(0x66).await;
    let killed = conn.status(0x66, TaskState::Killed).await;
    // Well within the graceful wait: the wait ended when the task did.
    assert!(
        kill_sent.elapsed() < WAIT,
        "KILLED after {:?}",
        kill_sent.elapsed()
    );
    assert_eq!(killed.message, "exited with status 0");
    assert_eq!(killed.exit_code, 0);
    let requests: Vec<String> = endpoints.posts().into_iter().map(|(_, r)| r).collect();
    assert_eq!(requests, ["POST /quitquitquit"]);
    assert!(!sandbox.join("got_term").exists(), "the task got a SIGTERM");
    harness.stop().await;
}

#[tokio::test]
async fn a_shutdown_request_nobody_answers_moves_on_at_once() {
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    conn.registration().await;
    // Nothing listens on the lifecycle's port: both POSTs fail at once, SIGTERM follows.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut config = task_config("exec sleep 30", 30);
    config.port_names = vec!["health".into()];
    config.http_lifecycle = Some(lifecycle());
    conn.launch_config(0x67, 0, &config, &[("health", closed_port)])
        .await;
    conn.status(0x67, TaskState::Running).await;
    let kill_sent = Instant::now();
    conn.kill(0x67).await;
    let killed = conn.status(0x67, TaskState::Killed).await;
    assert_eq!(killed.message, "killed by signal 15");
    assert!(
        kill_sent.elapsed() < WAIT,
        "KILLED after {:?}: a refused POST was waited for",
        kill_sent.elapsed()
    );
    harness.stop().await;
}

/// A GET over `stream` (the log server closes after each answer): status, headers (names
/// lower-cased), body.
async fn http_get<S>(mut stream: S, target: &str) -> (u16, Vec<(String, String)>, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request = format!("GET {target} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    match timeout(STEP, stream.read_to_end(&mut raw)).await.unwrap() {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("reading the answer: {e}"),
    }
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

#[tokio::test]
async fn serves_its_tasks_output_on_the_port_it_registers() {
    let harness = Harness::start().await;
    let mut conn = Conn::accept(&harness.listener).await;
    let registration = conn.registration().await;
    assert_ne!(
        registration.log_port, 0,
        "the log server's port is registered"
    );
    let addr = format!("127.0.0.1:{}", registration.log_port);

    conn.launch(0xc1, 0, "printf 'hello\\nworld\\n'; echo oops >&2", 1, &[])
        .await;
    conn.status(0xc1, TaskState::Finished).await;
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (status, headers, body) =
        http_get(tcp, "/tasks/00000000000000c1/files/stdout?tail=6").await;
    assert_eq!((status, body.as_str()), (200, "world\n"));
    assert_eq!(header(&headers, "x-log-size"), "12");
    assert_eq!(header(&headers, "x-log-offset"), "6");
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (status, _, body) = http_get(tcp, "/tasks/0xc1/files/stderr").await;
    assert_eq!((status, body.as_str()), (200, "oops\n"));
    // A task this agent never ran.
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (status, _, _) = http_get(tcp, "/tasks/0xdead/files/stdout").await;
    assert_eq!(status, 404);
    harness.stop().await;
}

mod tls {
    use super::*;
    use borealis_net::tls::{PeerIdentity, TlsFiles};
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    pub struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
        pub pem: PathBuf,
        dir: PathBuf,
    }

    impl Ca {
        pub fn new(dir: &Path, name: &str) -> Ca {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            let pem = dir.join(format!("{name}-ca.pem"));
            std::fs::write(&pem, cert.pem()).unwrap();
            Ca {
                cert,
                key,
                pem,
                dir: dir.to_path_buf(),
            }
        }

        pub fn issue(&self, name: &str) -> TlsFiles {
            let key = KeyPair::generate().unwrap();
            let params =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                    .unwrap();
            let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
            let files = TlsFiles {
                cert: self.dir.join(format!("{name}.pem")),
                key: self.dir.join(format!("{name}-key.pem")),
                ca: self.pem.clone(),
            };
            std::fs::write(&files.cert, cert.pem()).unwrap();
            std::fs::write(&files.key, key.serialize_pem()).unwrap();
            files
        }
    }

    fn with_tls(args: &mut AgentArgs, files: &TlsFiles) {
        args.serve.tls_cert = Some(files.cert.clone());
        args.serve.tls_key = Some(files.key.clone());
        args.serve.tls_ca = Some(files.ca.clone());
    }

    /// Reads frames from `stream` until the agent's registration.
    async fn read_registration<S: tokio::io::AsyncRead + Unpin>(
        stream: &mut S,
    ) -> AgentRegistration {
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = timeout(STEP, stream.read(&mut buf)).await.unwrap().unwrap();
            assert_ne!(n, 0, "the agent closed before registering");
            decoder.extend(&buf[..n]);
            while let Some(frame) = decoder.next_frame().unwrap() {
                for bytes in split_messages(frame).unwrap() {
                    if let (_, OwnedMessage::RegisterAgent(r)) =
                        to_owned(decode_message(&bytes).unwrap()).unwrap()
                    {
                        return r;
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn registers_over_tls_with_its_certificate_and_serves_https() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path(), "cluster");
        let scheduler = ca.issue("scheduler");
        let agent = ca.issue("agent");
        let acceptor =
            tokio_rustls::TlsAcceptor::from(borealis_net::tls::server_config(&scheduler).unwrap());
        let harness = Harness::start_with(|args| with_tls(args, &agent)).await;
        let (tcp, _) = timeout(STEP, harness.listener.accept())
            .await
            .unwrap()
            .unwrap();
        let mut stream = timeout(STEP, acceptor.accept(tcp)).await.unwrap().unwrap();
        // The agent presented its certificate (of the CA: the handshake verified it).
        assert_eq!(
            PeerIdentity::of(stream.get_ref().1.peer_certificates()),
            PeerIdentity::Certified
        );
        let registration = read_registration(&mut stream).await;
        assert_eq!(registration.agent_id, "agent-1");
        assert_ne!(registration.log_port, 0);

        // The log server speaks HTTPS with the agent's certificate.
        let config = borealis_net::tls::client_config(&ca.pem, None).unwrap();
        let addr = format!("127.0.0.1:{}", registration.log_port);
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let name = borealis_net::tls::server_name(&addr).unwrap();
        let https = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        let (status, _, _) = http_get(https, "/tasks/0x1/files/stdout").await;
        assert_eq!(status, 404, "HTTPS answered");
        drop(stream);
        harness.stop().await;
    }

    #[tokio::test]
    async fn a_scheduler_of_another_ca_is_refused_and_retried() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path(), "cluster");
        let impostor = Ca::new(dir.path(), "impostor").issue("scheduler");
        let agent = ca.issue("agent");
        let acceptor =
            tokio_rustls::TlsAcceptor::from(borealis_net::tls::server_config(&impostor).unwrap());
        let harness = Harness::start_with(|args| with_tls(args, &agent)).await;
        // Each attempt's handshake fails (the agent does not trust the certificate), and the
        // agent tries again.
        for attempt in 0..2 {
            let (tcp, _) = timeout(STEP, harness.listener.accept())
                .await
                .unwrap()
                .unwrap();
            let result = timeout(STEP, acceptor.accept(tcp)).await.unwrap();
            assert!(
                result.is_err(),
                "attempt {attempt}: the handshake succeeded"
            );
        }
        harness.stop().await;
    }

    #[tokio::test]
    async fn an_agent_certificate_of_another_ca_is_refused_by_the_scheduler() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path(), "cluster");
        let scheduler = ca.issue("scheduler");
        let mut stranger = Ca::new(dir.path(), "stranger").issue("agent");
        // It trusts the scheduler (the right CA) but its own certificate is another CA's.
        stranger.ca = ca.pem.clone();
        let acceptor =
            tokio_rustls::TlsAcceptor::from(borealis_net::tls::server_config(&scheduler).unwrap());
        let harness = Harness::start_with(|args| with_tls(args, &stranger)).await;
        let (tcp, _) = timeout(STEP, harness.listener.accept())
            .await
            .unwrap()
            .unwrap();
        let error = timeout(STEP, acceptor.accept(tcp))
            .await
            .unwrap()
            .unwrap_err();
        assert!(error.to_string().contains("UnknownIssuer"), "{error}");
        harness.stop().await;
    }
}
