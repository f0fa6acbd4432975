//! End-to-end: bad input to the real binaries (malformed job files and keys, an unreachable
//! scheduler, garbage on the wire, too many tasks) fails cleanly and hurts nobody else.
//! Build the binary first: `cargo build -p borealis`.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use borealis_core::Resources;
use borealis_net::frame::split_messages;
use borealis_net::views::AgentRegistration;
use borealis_net::{decode_message, Encoder, FrameDecoder, FrameWriter, FRAME_BYTES_MAX};
use borealis_tests::{
    describe, expect_one_line_error, field, free_port, has_field, job_toml, run_borealis,
    running_by_instance, tasks, tasks_in, wait_until, AgentSpec, Cluster, WAIT_MAX,
};
use serde_json::json;

const RESOURCES: &str = "[resources]\ncpu = 0.1\nram = \"16MiB\"\ndisk = \"16MiB\"\n";

#[test]
fn malformed_job_files_are_rejected() {
    let cluster = Cluster::start(&[]);
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "invalid TOML",
            format!("instances = = 1\ncommand = \"true\"\n{RESOURCES}"),
            &["line 1"],
        ),
        (
            "unknown field",
            format!("instances = 1\ncomand = \"true\"\n{RESOURCES}"),
            &["unknown field", "comand"],
        ),
        (
            "negative cpu",
            "instances = 1\ncommand = \"true\"\n[resources]\ncpu = -1\nram = \"16MiB\"\ndisk = \"16MiB\"\n"
                .to_string(),
            &["resources.cpu", "must be > 0"],
        ),
        (
            "missing command",
            format!("instances = 1\n{RESOURCES}"),
            &["missing field", "command"],
        ),
        (
            "limit and values",
            format!(
                "instances = 1\ncommand = \"true\"\n{RESOURCES}\n[[constraints]]\nattribute = \"rack\"\nlimit = 1\nvalues = [\"r1\"]\n"
            ),
            &["constraints[0]", "both limit and values"],
        ),
    ];
    for (n, (what, toml, expected)) in cases.iter().enumerate() {
        let job = format!("www/devel/bad{n}");
        let output = cluster.try_create_job(&job, toml);
        let line = expect_one_line_error(&output);
        for needle in *expected {
            assert!(
                line.contains(needle),
                "{what}: the error should mention {needle:?}: {line}\njob file:\n{toml}"
            );
        }
        assert!(
            line.contains(&format!("www.devel.bad{n}.toml")),
            "{what}: the error should name the file: {line}"
        );
        assert!(output.stdout.is_empty(), "{what}: {}", describe(&output));
        assert!(!cluster.job_listed(&job), "{what}: {job} was created");
    }

    // A file that does not exist.
    let missing = cluster.dir().join("missing.toml");
    let output = cluster.cli(&[
        "job",
        "create",
        "www/devel/missing",
        &missing.display().to_string(),
    ]);
    let line = expect_one_line_error(&output);
    assert!(line.contains("missing.toml"), "{line}");
    assert!(!cluster.job_listed("www/devel/missing"));

    // Nothing was created at all, and the scheduler is fine.
    assert_eq!(cluster.list_json(), Vec::<serde_json::Value>::new());
}

#[test]
fn unknown_and_malformed_job_keys() {
    let cluster = Cluster::start(&[]);
    for args in [
        &["job", "status", "no/such/job"][..],
        &["job", "status", "no/such/job", "--json"][..],
        &["job", "kill", "no/such/job"][..],
    ] {
        let line = expect_one_line_error(&cluster.cli(args));
        assert!(
            line.contains("unknown job") && line.contains("no/such/job"),
            "{args:?}: {line}"
        );
    }
    for args in [
        &["job", "status", "a/b"][..],
        &["job", "status", "a/b", "--json"][..],
        &["job", "kill", "a/b"][..],
    ] {
        let line = expect_one_line_error(&cluster.cli(args));
        assert!(line.contains("a/b"), "{args:?} should name the key: {line}");
    }
    let file = cluster.write_file("ok.toml", &job_toml(1, "true", ""));
    let line = expect_one_line_error(&cluster.cli(&[
        "job",
        "create",
        "a/b/c/d",
        &file.display().to_string(),
    ]));
    assert!(line.contains("a/b/c/d"), "{line}");
    assert_eq!(cluster.list_json(), Vec::<serde_json::Value>::new());
}

#[test]
fn unreachable_scheduler_is_a_one_line_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("hello.toml");
    std::fs::write(&file, job_toml(1, "true", "")).expect("write the job file");
    let addr = format!("127.0.0.1:{}", free_port());
    let file = file.display().to_string();
    for args in [
        &["job", "list"][..],
        &["job", "list", "--json"][..],
        &["job", "status", "www/devel/hello", "--json"][..],
        &["job", "create", "www/devel/hello", &file][..],
        &["job", "kill", "www/devel/hello", "--instances", "0-3"][..],
    ] {
        let mut all = args.to_vec();
        all.extend(["--scheduler", &addr]);
        let started = Instant::now();
        let output = run_borealis(&all);
        let line = expect_one_line_error(&output);
        assert!(
            line.starts_with(&format!("error: cannot reach scheduler at {addr}")),
            "{args:?}: {line}"
        );
        assert!(output.stdout.is_empty(), "{args:?}: {}", describe(&output));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

/// Pseudo-random bytes (xorshift, seeded from the clock): garbage with no structure.
fn garbage(len: usize) -> Vec<u8> {
    let mut x = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `bytes` to a fresh connection (after `preamble`, if any) and checks that the
/// scheduler closes it within a bounded time. A write that fails because the scheduler has
/// already closed the socket counts as closed. Returns the connection's local address (the
/// peer address in the scheduler's log).
fn expect_disconnect(addr: &str, what: &str, preamble: Option<&[u8]>, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{what}: connect: {e}"));
    let local = stream.local_addr().expect("local_addr").to_string();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("set_read_timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .expect("set_write_timeout");
    let mut buf = vec![0u8; 64 * 1024];
    if let Some(preamble) = preamble {
        stream.write_all(preamble).expect("write the preamble");
        // Let the scheduler take it in on its own, and check it keeps the connection.
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            match stream.read(&mut buf) {
                Ok(0) => panic!("{what}: the scheduler closed the connection after a valid frame"),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("{what}: the connection failed after a valid frame: {e}"),
            }
        }
    }
    if let Err(e) = stream.write_all(bytes) {
        assert!(
            matches!(
                e.kind(),
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ),
            "{what}: write failed: {e}"
        );
        return local;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return local,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return local, // reset: closed too
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the scheduler kept the connection open for 10 s"
        );
    }
}

/// Sends a valid `ListJobs` request on a raw connection and checks the answer carries its
/// request id: the control for the garbage cases (a raw peer is served when it behaves).
fn expect_answer(addr: &str) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set_read_timeout");
    let mut encoder = Encoder::new();
    let mut writer = FrameWriter::new();
    writer.push(encoder.list_jobs(77)).unwrap();
    stream.write_all(&writer.take()).expect("write ListJobs");
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(frame) = decoder.next_frame().expect("a valid frame") {
            for message in split_messages(frame).expect("valid messages") {
                let message = decode_message(&message).expect("a valid message");
                if message.request_id() == 77 {
                    return;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no answer to ListJobs within 10 s"
        );
        match stream.read(&mut buf) {
            Ok(0) => panic!("the scheduler closed a well-behaved raw connection"),
            Ok(n) => decoder.extend(&buf[..n]),
            Err(e) => panic!("reading the answer to ListJobs: {e}"),
        }
    }
}

/// The log's records: a line that does not start with a timestamp (a digit) continues the
/// record before it (an error message may span lines).
fn log_records(log: &str) -> Vec<String> {
    let mut records: Vec<String> = Vec::new();
    for line in log.lines() {
        match records.last_mut() {
            Some(last) if !line.starts_with(|c: char| c.is_ascii_digit()) => {
                last.push(' ');
                last.push_str(line);
            }
            _ => records.push(line.to_string()),
        }
    }
    records
}

/// Waits (bounded) until the scheduler's log has a record about `peer` that says why it was
/// dropped ("bad frame" or "bad message").
fn expect_logged(cluster: &Cluster, what: &str, peer: &str) {
    wait_until(
        &format!("the scheduler to log why it dropped {peer} ({what})"),
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            log_records(&cluster.scheduler.stderr_text())
                .iter()
                .any(|r| {
                    has_field(r, "peer", peer)
                        && (r.contains("bad frame") || r.contains("bad message"))
                })
                .then_some(())
        },
    );
}

#[test]
fn garbage_frames_disconnect_only_that_peer() {
    let mut cluster = Cluster::start(&[AgentSpec::new("a1", "h1")]);
    let addr = cluster.addr();
    let job = "www/devel/survivor";
    cluster.create_job(job, &job_toml(2, "sleep 3; echo survived", ""));
    cluster.wait_for(job, "2 RUNNING instances", WAIT_MAX, |status| {
        running_by_instance(status, 2).map(|_| ())
    });

    // A length prefix over the frame limit, then noise.
    let mut huge = (u32::try_from(FRAME_BYTES_MAX).expect("fits") + 1)
        .to_le_bytes()
        .to_vec();
    huge.extend(garbage(4096));
    expect_answer(&addr);
    let peer = expect_disconnect(&addr, "a frame over 16 MiB", None, &huge);
    expect_logged(&cluster, "a frame over 16 MiB", &peer);
    let mut max = u32::MAX.to_le_bytes().to_vec();
    max.extend(garbage(64));
    let peer = expect_disconnect(&addr, "a frame of u32::MAX bytes", None, &max);
    expect_logged(&cluster, "a frame of u32::MAX bytes", &peer);

    // A well-formed frame whose one message is not a flatbuffer.
    let mut writer = FrameWriter::new();
    writer
        .push(b"definitely not a flatbuffer: just some text")
        .unwrap();
    let not_flatbuffer = writer.take();
    let peer = expect_disconnect(
        &addr,
        "a message that is not a flatbuffer",
        None,
        &not_flatbuffer,
    );
    expect_logged(&cluster, "a message that is not a flatbuffer", &peer);

    // A frame whose message length runs past the frame.
    let mut overrun = 8u32.to_le_bytes().to_vec();
    overrun.extend(1000u32.to_le_bytes());
    overrun.extend([0u8; 4]);
    let peer = expect_disconnect(&addr, "a message longer than its frame", None, &overrun);
    expect_logged(&cluster, "a message longer than its frame", &peer);

    // A fake agent that registers properly (offering too little to get any task), then
    // sends noise in a well-formed frame.
    let registration = AgentRegistration {
        agent_id: "fake".into(),
        hostname: "fake-host".into(),
        resources: Resources {
            cpu_millis: 1,
            ram_mib: 1,
            disk_mib: 1,
            ports: 0,
        },
        port_ranges: vec![],
        attributes: vec![("rack".into(), "fake".into())],
        tasks: vec![],
        log_port: 0,
    };
    let mut encoder = Encoder::new();
    let mut writer = FrameWriter::new();
    writer.push(encoder.register_agent(&registration)).unwrap();
    let register = writer.take();
    let mut writer = FrameWriter::new();
    writer.push(&garbage(256)).unwrap();
    let noise = writer.take();
    let peer = expect_disconnect(
        &addr,
        "a registered agent's garbage",
        Some(&register),
        &noise,
    );
    expect_logged(&cluster, "a registered agent's garbage", &peer);

    expect_answer(&addr);

    // Meanwhile the real agent finished the job, nothing was lost, and clients are served.
    let status = cluster.wait_for(job, "2 FINISHED tasks", WAIT_MAX, |status| {
        (tasks_in(status, "FINISHED").len() == 2).then(|| status.clone())
    });
    assert_eq!(
        tasks(&status).len(),
        2,
        "no task was lost or retried: {status:#}"
    );
    for task in tasks(&status) {
        assert_eq!(task["exit_code"], 0, "{task}");
        assert_eq!(field(task, "hostname"), "h1", "{task}");
        let stdout =
            std::fs::read_to_string(std::path::Path::new(field(task, "sandbox")).join("stdout"))
                .expect("read the task's stdout");
        assert_eq!(stdout.trim(), "survived");
    }
    assert!(cluster.job_listed(job));
    assert!(cluster.scheduler.is_running(), "the scheduler exited");
    assert!(cluster.agents[0].proc.is_running(), "the agent exited");
}

#[test]
fn max_tasks_per_job_is_enforced() {
    let cluster = Cluster::start_with(&["--max-tasks-per-job", "10"], &[]);
    let output = cluster.try_create_job("www/devel/big", &job_toml(11, "true", ""));
    let line = expect_one_line_error(&output);
    assert!(
        line.contains("max-tasks-per-job") && line.contains("10") && line.contains("11"),
        "the error should name the limit: {line}"
    );
    assert!(!cluster.job_listed("www/devel/big"));

    // At the limit is fine (no agents: the tasks wait in PENDING).
    cluster.create_job("www/devel/ten", &job_toml(10, "true", ""));
    let listed = cluster.list_json();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["job_key"], "www/devel/ten");
    assert_eq!(listed[0]["instances"], 10);
    let status = cluster.status_json("www/devel/ten");
    assert_eq!(status["state_counts"], json!({"PENDING": 10}), "{status:#}");
}
