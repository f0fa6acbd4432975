//! End-to-end: hostile and oversized input from peers (issue 12). Each limit is real: a peer
//! cannot make the scheduler panic, hold unbounded memory or keep dead connections, and real
//! agents and clients are still served while it tries. Build the binary first:
//! `cargo build -p borealis`.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use borealis_core::{JobKey, Resources, TaskId, TaskState};
use borealis_net::codec::to_owned;
use borealis_net::frame::split_messages;
use borealis_net::views::{AgentRegistration, ErrorCode, OwnedMessage, TaskStatusReport};
use borealis_net::{decode_message, Encoder, FrameDecoder, FrameWriter, MESSAGE_BYTES_MAX};
use borealis_tests::{job_toml, tasks, wait_until, Cluster, WAIT_MAX};

/// A raw peer on the scheduler's port: frames in and out, nothing hidden.
struct Raw {
    stream: TcpStream,
    decoder: FrameDecoder,
    encoder: Encoder,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set_read_timeout");
        Raw {
            stream,
            decoder: FrameDecoder::new(),
            encoder: Encoder::new(),
            buf: vec![0; 256 * 1024],
        }
    }

    fn send(&mut self, messages: &[Vec<u8>]) {
        let mut writer = FrameWriter::new();
        for m in messages {
            writer.push(m).expect("the test's messages fit a frame");
        }
        self.stream.write_all(&writer.take()).expect("send");
    }

    /// Reads messages until `f` returns `Some`, for at most `within`; `None` when the
    /// scheduler closed the connection first.
    fn recv_until<T>(
        &mut self,
        within: Duration,
        mut f: impl FnMut(u64, OwnedMessage) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + within;
        loop {
            while let Some(frame) = self.decoder.next_frame().expect("a valid frame") {
                for message in split_messages(frame).expect("valid messages") {
                    let message = decode_message(&message).expect("a valid message");
                    let (id, owned) = to_owned(message).expect("a known message");
                    if let Some(out) = f(id, owned) {
                        return Some(out);
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "nothing expected came in {within:?}"
            );
            match self.stream.read(&mut self.buf) {
                Ok(0) => return None,
                Ok(n) => self.decoder.extend(&self.buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// Whether the scheduler closes this connection within `within` (reading and dropping
    /// whatever it sends meanwhile).
    fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.stream.read(&mut self.buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        false
    }

    /// Registers as an agent and waits for the scheduler's answer.
    fn register(&mut self, registration: &AgentRegistration) -> OwnedMessage {
        let bytes = self.encoder.register_agent(registration).to_vec();
        self.send(&[bytes]);
        self.recv_until(Duration::from_secs(20), |_, m| match m {
            m @ (OwnedMessage::AgentRegistered { .. } | OwnedMessage::Error { .. }) => Some(m),
            _ => None,
        })
        .expect("an answer to RegisterAgent")
    }
}

fn registration(name: &str, attributes: &[(&str, &str)]) -> AgentRegistration {
    AgentRegistration {
        agent_id: name.into(),
        hostname: format!("{name}-host"),
        resources: Resources {
            cpu_millis: 64_000,
            ram_mib: 256 * 1024,
            disk_mib: 1024 * 1024,
            ports: 0,
        },
        port_ranges: vec![],
        attributes: attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        tasks: vec![],
        log_port: 0,
    }
}

/// A field of the scheduler's `/proc/<pid>/status`, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Raises this process's open-file limit to its hard maximum (the floods open thousands).
fn raise_open_file_limit() -> u64 {
    // SAFETY: plain system calls on a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur
    }
}

/// A job whose configuration is just under the largest message a frame can carry (its
/// constraints' values make up the size), so its launch, which carries the configuration
/// again with the task's id and ports, cannot fit one. Before `TASK_CONFIG_BYTES_MAX` the
/// scheduler accepted it and its shard panicked encoding the launch.
#[test]
fn a_job_whose_launch_cannot_fit_a_frame_is_refused_at_create() {
    let cluster = Cluster::start_with(&["--shards", "1"], &[]);
    let addr = cluster.addr();
    let mut agent = Raw::connect(&addr);
    let mut big = registration("big", &[("rack", "r1")]);
    big.resources.ports = 1000;
    big.port_ranges = vec![(31_000, 31_999)];
    let answer = agent.register(&big);
    assert!(
        matches!(answer, OwnedMessage::AgentRegistered { .. }),
        "{answer:?}"
    );

    let key: JobKey = "www/devel/huge".parse().unwrap();
    let base = borealis_core::jobfile::parse_job_file(key.clone(), &job_toml(1, "sleep 60", ""))
        .expect("a valid job file");
    let mut config = base.config.clone();
    let filler = "v".repeat(2000);
    let mut values = vec!["r1".to_string()];
    values.extend(std::iter::repeat_n(filler.clone(), 255));
    let constraint = |values: Vec<String>| borealis_core::Constraint::Value {
        attribute: "rack".into(),
        negated: false,
        values,
    };
    config.constraints = (0..32).map(|_| constraint(values.clone())).collect();
    // 64 named ports: the launch names each with the number assigned, which the create does
    // not carry.
    config.port_names = (0..64)
        .map(|i| format!("port{i:02}{}", "p".repeat(56)))
        .collect();
    config.resources.ports = 64;
    let mut encoder = Encoder::new();
    let size = |config: &borealis_core::TaskConfig, encoder: &mut Encoder| {
        encoder.create_job(1, 1, config).len()
    };
    // Grow the last value until the message is within a few bytes of the largest one.
    fn last_value(config: &mut borealis_core::TaskConfig) -> &mut String {
        match &mut config.constraints[31] {
            borealis_core::Constraint::Value { values, .. } => &mut values[255],
            _ => unreachable!(),
        }
    }
    loop {
        let len = size(&config, &mut encoder);
        if len > MESSAGE_BYTES_MAX {
            let v = last_value(&mut config);
            v.truncate(v.len() - 1);
            continue;
        }
        let room = MESSAGE_BYTES_MAX - len;
        if room <= 8 {
            break;
        }
        last_value(&mut config).push_str(&"w".repeat(room - 4));
    }
    // The reader verifies every message (its apparent size within a frame): the largest
    // create that passes.
    while decode_message(encoder.create_job(7, 1, &config)).is_err() {
        let v = last_value(&mut config);
        v.truncate(v.len() - 16);
    }
    let create = encoder.create_job(7, 1, &config).to_vec();
    let ports: Vec<(String, u16)> = config
        .port_names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), 31_000 + i as u16))
        .collect();
    let launch = encoder
        .launch_task(TaskId(1 << 40), 0, &config, &ports)
        .len();
    eprintln!(
        "CreateJob of {} bytes; its launch: {launch} bytes",
        create.len()
    );
    assert!(
        launch > MESSAGE_BYTES_MAX,
        "the launch ({launch} bytes) would fit a frame: the case is not the one meant"
    );

    let mut client = Raw::connect(&addr);
    client.send(&[create]);
    let answer = client
        .recv_until(Duration::from_secs(30), |id, m| (id == 7).then_some(m))
        .expect("an answer to the huge CreateJob");
    match &answer {
        OwnedMessage::Error { code, message, .. } => {
            assert_eq!(*code, ErrorCode::InvalidRequest, "{message}");
            assert!(
                message.contains("www/devel/huge") && message.contains("1048576"),
                "the error names the job and the bound: {message}"
            );
        }
        other => panic!("the huge job was not refused: {other:?}"),
    }
    // The shard is alive and serves: a small job on the same agent launches.
    cluster.create_job("www/devel/small", &job_toml(1, "sleep 60", ""));
    let launched = agent.recv_until(Duration::from_secs(30), |_, m| match m {
        OwnedMessage::LaunchTask(l) => Some(l.job_key.to_string()),
        _ => None,
    });
    assert_eq!(launched.as_deref(), Some("www/devel/small"));
    assert!(!cluster.job_listed("www/devel/huge"));
}

/// An agent's strings are kept within bounds: a registration naming a 300-byte host is
/// refused with the field named; a status whose message and sandbox are huge is stored cut.
#[test]
fn an_agents_strings_are_bounded() {
    let cluster = Cluster::start_with(&["--shards", "1"], &[]);
    let addr = cluster.addr();

    let mut long = registration("long", &[]);
    long.hostname = "h".repeat(300);
    let answer = Raw::connect(&addr).register(&long);
    match &answer {
        OwnedMessage::Error { message, .. } => assert!(
            message.contains("hostname") && message.contains("300") && message.contains("255"),
            "{message}"
        ),
        other => panic!("a 300-byte hostname was registered: {other:?}"),
    }

    let mut agent = Raw::connect(&addr);
    let answer = agent.register(&registration("a1", &[]));
    assert!(
        matches!(answer, OwnedMessage::AgentRegistered { .. }),
        "{answer:?}"
    );
    cluster.create_job("www/devel/talker", &job_toml(1, "sleep 60", ""));
    let launch = agent
        .recv_until(Duration::from_secs(30), |_, m| match m {
            OwnedMessage::LaunchTask(l) => Some(l),
            _ => None,
        })
        .expect("a launch");
    let report = |state| TaskStatusReport {
        task_id: launch.task_id,
        job_key: launch.job_key.to_string(),
        instance: launch.instance,
        state,
        exit_code: -1,
        message: "m".repeat(200_000),
        timestamp_ms: 1,
        sandbox: format!("/{}", "s".repeat(100_000)),
        usage: None,
    };
    let statuses: Vec<Vec<u8>> = [TaskState::Starting, TaskState::Running]
        .into_iter()
        .map(|s| agent.encoder.task_status(&report(s)).to_vec())
        .collect();
    agent.send(&statuses);
    let status = cluster.wait_for("www/devel/talker", "RUNNING", WAIT_MAX, |status| {
        let task = tasks(status).first()?;
        (task["state"] == "RUNNING").then(|| task.clone())
    });
    let message = status["message"].as_str().unwrap_or_default();
    let sandbox = status["sandbox"].as_str().unwrap_or_default();
    assert!(
        !message.is_empty() && message.len() <= 1024 && message.ends_with('…'),
        "message of {} bytes: {}",
        message.len(),
        &message[..message.len().min(80)]
    );
    assert!(
        sandbox.len() <= 4096 && sandbox.ends_with('…'),
        "sandbox of {} bytes",
        sandbox.len()
    );
}

/// A flood of terminal statuses for tasks the scheduler does not know, each acknowledged:
/// the acknowledgements come back in messages that each fit a frame, all of them, and the
/// scheduler goes on serving.
#[test]
fn a_flood_of_statuses_is_acknowledged_in_pieces() {
    let cluster = Cluster::start_with(&["--shards", "1"], &[]);
    let addr = cluster.addr();
    let mut agent = Raw::connect(&addr);
    agent.register(&registration("flood", &[]));
    const STATUSES: u64 = 400_000;
    let mut writer = FrameWriter::new();
    for i in 0..STATUSES {
        let bytes = agent.encoder.task_status(&TaskStatusReport {
            task_id: TaskId(0xdead_0000_0000 + i),
            job_key: "www/devel/ghost".into(),
            instance: 0,
            state: TaskState::Finished,
            exit_code: 0,
            message: String::new(),
            timestamp_ms: 1,
            sandbox: String::new(),
            usage: None,
        });
        writer.push(bytes).unwrap();
    }
    let bytes = writer.take();
    let sender = {
        let mut stream = agent.stream.try_clone().unwrap();
        std::thread::spawn(move || stream.write_all(&bytes))
    };
    let mut acked = 0u64;
    let done = agent.recv_until(Duration::from_secs(120), |_, m| {
        if let OwnedMessage::StatusAck(acks) = m {
            acked += acks.len() as u64;
        }
        (acked >= STATUSES).then_some(())
    });
    sender.join().unwrap().expect("the flood was sent");
    assert_eq!(
        done,
        Some(()),
        "{acked} of {STATUSES} statuses acknowledged"
    );
    assert!(cluster.list_json().is_empty());
}

/// 10,000 connections that each send a 16 MiB length prefix and nothing more: the scheduler
/// reserves nothing for the frames they announce, closes them all at the first-message
/// timeout, and serves a real agent and client meanwhile.
#[test]
fn ten_thousand_stalled_length_prefixes_cost_nothing_and_are_closed() {
    let open_files = raise_open_file_limit();
    assert!(
        open_files > 10_500,
        "this test opens 10,000 connections: raise the open-file limit (now {open_files})"
    );
    let mut cluster = Cluster::start_with(
        &["--connection-first-message-timeout", "8s", "--shards", "2"],
        &[],
    );
    let addr = cluster.addr();
    let pid = cluster.scheduler.pid();
    let rss_before = proc_status_kib(pid, "VmRSS");
    let data_before = proc_status_kib(pid, "VmData");
    let prefix = (16u32 << 20).to_le_bytes();
    let started = Instant::now();
    let mut stalled = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let mut s = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        s.write_all(&prefix).expect("the length prefix");
        stalled.push(s);
    }
    let opened_in = started.elapsed();
    // Every prefix arrived; what did they cost?
    std::thread::sleep(Duration::from_millis(500));
    let rss = proc_status_kib(pid, "VmRSS");
    let data = proc_status_kib(pid, "VmData");
    eprintln!(
        "10,000 stalled prefixes in {opened_in:?}: RSS {rss_before} -> {rss} KiB, \
         VmData {data_before} -> {data} KiB"
    );
    // 16 MiB reserved each would be 160 GiB of address space; a few KiB each is the bound.
    assert!(
        data.saturating_sub(data_before) < 2 << 20,
        "VmData grew by {} KiB",
        data - data_before
    );
    assert!(
        rss.saturating_sub(rss_before) < 512 << 10,
        "RSS grew by {} KiB",
        rss - rss_before
    );

    // A real agent and a client are served meanwhile.
    let mut agent = Raw::connect(&addr);
    let answer = agent.register(&registration("real", &[]));
    assert!(
        matches!(answer, OwnedMessage::AgentRegistered { .. }),
        "{answer:?}"
    );
    cluster.create_job("www/devel/served", &job_toml(1, "sleep 60", ""));
    let launched = agent.recv_until(Duration::from_secs(30), |_, m| match m {
        OwnedMessage::LaunchTask(l) => Some(l.job_key.to_string()),
        _ => None,
    });
    assert_eq!(launched.as_deref(), Some("www/devel/served"));

    // The stalled ones are closed at their timeout (8 s after each was accepted).
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut closed = 0;
    let mut byte = [0u8; 1];
    for s in &mut stalled {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        if matches!(s.read(&mut byte), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 10_000, "stalled connections left open");
    drop(stalled);
    let metrics = borealis_tests::http_get(&cluster.http_addr(), "/metrics")
        .expect("metrics")
        .text();
    let timed_out: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("borealis_connections_timed_out_total")
                && l.contains("timeout=\"first_message\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(timed_out >= 10_000.0, "timed out: {timed_out}\n{metrics}");
    // The agent, which keeps talking, was not closed.
    let hb = agent.encoder.heartbeat(1).to_vec();
    agent.send(&[hb]);
    assert!(!agent.closed_within(Duration::from_millis(300)));
}

/// One connection pipelines 10,000 ListJobs and never reads an answer: the scheduler answers
/// what it may, refuses the rest at the per-connection limit, stops reading the connection
/// or drops it, and neither its memory nor other peers suffer.
#[test]
fn ten_thousand_pipelined_list_jobs_never_read_are_bounded() {
    let mut cluster = Cluster::start_with(&["--shards", "2"], &[]);
    let addr = cluster.addr();
    for i in 0..20 {
        cluster.create_job(&format!("www/devel/j{i}"), &job_toml(1, "sleep 60", ""));
    }
    let pid = cluster.scheduler.pid();
    let rss_before = proc_status_kib(pid, "VmRSS");
    let mut greedy = Raw::connect(&addr);
    let requests: Vec<Vec<u8>> = (1..=10_000u64)
        .map(|id| greedy.encoder.list_jobs(id).to_vec())
        .collect();
    greedy
        .stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = FrameWriter::new();
    for r in &requests {
        writer.push(r).unwrap();
    }
    let bytes = writer.take();
    let mut stream = greedy.stream.try_clone().unwrap();
    // The scheduler may stop reading (backpressure): the write may not complete.
    let sender = std::thread::spawn(move || stream.write_all(&bytes));
    std::thread::sleep(Duration::from_secs(3));
    let rss = proc_status_kib(pid, "VmRSS");
    eprintln!("10,000 pipelined ListJobs: RSS {rss_before} -> {rss} KiB");
    assert!(
        rss.saturating_sub(rss_before) < 256 << 10,
        "RSS grew by {} KiB",
        rss - rss_before
    );
    // Others are served.
    let mut other = Raw::connect(&addr);
    let bytes = other.encoder.list_jobs(5).to_vec();
    other.send(&[bytes]);
    let answered = other.recv_until(Duration::from_secs(20), |id, m| {
        (id == 5).then_some(matches!(m, OwnedMessage::JobList { .. }))
    });
    assert_eq!(answered, Some(true));
    let mut agent = Raw::connect(&addr);
    let answer = agent.register(&registration("real", &[]));
    assert!(
        matches!(answer, OwnedMessage::AgentRegistered { .. }),
        "{answer:?}"
    );
    let launched = agent.recv_until(Duration::from_secs(30), |_, m| match m {
        OwnedMessage::LaunchTask(l) => Some(l.job_key.to_string()),
        _ => None,
    });
    assert!(
        launched.is_some_and(|k| k.starts_with("www/devel/j")),
        "the agent got no launch"
    );
    assert!(cluster.scheduler.is_running(), "the scheduler exited");
    drop(greedy);
    let _ = sender.join();
}

/// `--max-connections`: past the limit a connection is closed at once; below it again, new
/// ones are served.
#[test]
fn connections_past_max_connections_are_closed_at_once() {
    let cluster = Cluster::start_with(&["--max-connections", "40", "--shards", "1"], &[]);
    let addr = cluster.addr();
    // The harness's own readiness checks are gone by now; hold 40.
    let mut held: Vec<Raw> = Vec::new();
    wait_until(
        "40 connections held",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            while held.len() < 40 {
                let mut raw = Raw::connect(&addr);
                let hb = raw.encoder.list_jobs(1).to_vec();
                raw.send(&[hb]);
                raw.recv_until(Duration::from_secs(10), |id, _| (id == 1).then_some(()))?;
                held.push(raw);
            }
            Some(())
        },
    );
    let mut extra = Raw::connect(&addr);
    assert!(
        extra.closed_within(Duration::from_secs(5)),
        "a 41st connection was kept"
    );
    held.truncate(30);
    std::thread::sleep(Duration::from_millis(300));
    let mut again = Raw::connect(&addr);
    let bytes = again.encoder.list_jobs(2).to_vec();
    again.send(&[bytes]);
    assert!(again
        .recv_until(Duration::from_secs(10), |id, _| (id == 2).then_some(()))
        .is_some());
}

/// `--connection-first-message-timeout` and `--client-idle-timeout`: a connection that never
/// sends a whole message is closed; one that talks and then falls silent is closed at the
/// idle timeout, not before.
#[test]
fn silent_connections_are_closed_at_their_timeouts() {
    let cluster = Cluster::start_with(
        &[
            "--connection-first-message-timeout",
            "1s",
            "--client-idle-timeout",
            "3s",
        ],
        &[],
    );
    let addr = cluster.addr();
    let started = Instant::now();
    let mut silent = Raw::connect(&addr);
    silent.stream.write_all(&[1, 0]).unwrap(); // half a length prefix
    assert!(silent.closed_within(Duration::from_secs(10)));
    let silent_for = started.elapsed();
    assert!(
        silent_for >= Duration::from_millis(900),
        "closed after {silent_for:?}"
    );

    let mut talker = Raw::connect(&addr);
    let bytes = talker.encoder.list_jobs(1).to_vec();
    talker.send(&[bytes]);
    assert!(talker
        .recv_until(Duration::from_secs(10), |id, _| (id == 1).then_some(()))
        .is_some());
    let answered = Instant::now();
    assert!(
        !talker.closed_within(Duration::from_millis(1500)),
        "a talking client was closed at the first-message timeout"
    );
    assert!(talker.closed_within(Duration::from_secs(10)));
    let idle_for = answered.elapsed();
    assert!(
        idle_for >= Duration::from_millis(2500),
        "closed after {idle_for:?} idle"
    );
}

/// `--max-jobs`: a create past the limit is refused with the limit named; nothing of it is
/// kept, and a job that exists can still be replaced.
#[test]
fn creates_past_max_jobs_are_refused() {
    let cluster = Cluster::start_with(&["--max-jobs", "3", "--shards", "1"], &[]);
    for i in 0..3 {
        cluster.create_job(&format!("www/devel/j{i}"), &job_toml(1, "true", ""));
    }
    let output = cluster.try_create_job("www/devel/j3", &job_toml(1, "true", ""));
    let line = borealis_tests::expect_one_line_error(&output);
    assert!(
        line.contains("--max-jobs 3") && line.contains("www/devel/j3"),
        "the error names the limit and the job: {line}"
    );
    assert!(!cluster.job_listed("www/devel/j3"));
    assert_eq!(cluster.list_json().len(), 3);
}
