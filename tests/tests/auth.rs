//! Authentication and authorization end to end: a scheduler with TLS (`--tls-*`), an auth file
//! and an audit log, and peers that should be refused — an agent without a certificate, with
//! one of another CA, with an expired one; a client without a token, with an unknown one,
//! with a token for another role; a client token used to register an agent; an agent
//! certificate used as a client — each refused with its message and nothing changed, while
//! what is allowed works and every accepted mutation is in the audit log. And, without TLS:
//! an agent whose registration claims a task the scheduler placed on another agent is refused
//! (the task stays where it was placed, and the claimant is told to kill it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use borealis_core::{Resources, TaskId, TaskState};
use borealis_net::codec::to_owned;
use borealis_net::frame::split_messages;
use borealis_net::views::{AgentRegistration, ErrorCode, OwnedMessage, TaskStatusReport};
use borealis_net::{decode_message, Encoder, FrameDecoder, FrameWriter};
use borealis_tests::*;
use serde_json::Value;

const WAIT_MAX: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Certificates (rcgen): a cluster CA, the scheduler's certificate, agents' certificates.

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn new_ca(name: &str) -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = params.self_signed(&key).expect("a CA certificate");
    Ca { cert, key }
}

/// A leaf certificate for `names` signed by `ca`; `expired`: valid only in 2020.
fn leaf(ca: &Ca, names: &[&str], expired: bool) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 12, 31);
    }
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .expect("a signed certificate");
    (cert.pem(), key.serialize_pem())
}

struct Pki {
    ca: PathBuf,
    scheduler: (PathBuf, PathBuf),
    agent: (PathBuf, PathBuf),
    other_ca_agent: (PathBuf, PathBuf),
    expired_agent: (PathBuf, PathBuf),
}

fn write_pki(dir: &Path) -> Pki {
    let ca = new_ca("borealis test CA");
    let other = new_ca("some other CA");
    let write = |name: &str, (cert, key): (String, String)| {
        let c = dir.join(format!("{name}.pem"));
        let k = dir.join(format!("{name}-key.pem"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    };
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.cert.pem()).unwrap();
    Pki {
        scheduler: write("scheduler", leaf(&ca, &["127.0.0.1", "localhost"], false)),
        agent: write("agent-a1", leaf(&ca, &["a1", "127.0.0.1"], false)),
        other_ca_agent: write("agent-other", leaf(&other, &["a9", "127.0.0.1"], false)),
        expired_agent: write("agent-expired", leaf(&ca, &["a8", "127.0.0.1"], true)),
        ca: ca_path,
    }
}

// ---------------------------------------------------------------------------------------------
// A raw peer on the binary protocol, plain or TLS.

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

struct Peer {
    stream: Box<dyn Stream>,
    encoder: Encoder,
    decoder: FrameDecoder,
    /// Messages of frames read and not returned yet (a frame may hold several).
    queued: std::collections::VecDeque<OwnedMessage>,
}

/// How a raw peer's wait for an answer ended without one.
#[derive(Debug)]
enum NoAnswer {
    /// The scheduler closed the connection (or the TLS layer refused it).
    Closed(String),
    Timeout,
}

impl Peer {
    fn plain(addr: &str) -> Peer {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Peer::over(Box::new(tcp))
    }

    /// TLS to the scheduler, verified with `ca`, presenting `identity` if any. The handshake
    /// is only started: with TLS 1.3 a client learns that the server refused its certificate
    /// on its first read.
    fn tls(addr: &str, ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> Peer {
        let config =
            borealis_net::tls::client_config(ca, identity.map(|(c, k)| (c.as_path(), k.as_path())))
                .expect("a client TLS config");
        let name = borealis_net::tls::server_name(addr).unwrap();
        let conn = rustls::ClientConnection::new(config, name).expect("a TLS client");
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Peer::over(Box::new(rustls::StreamOwned::new(conn, tcp)))
    }

    fn over(stream: Box<dyn Stream>) -> Peer {
        Peer {
            stream,
            encoder: Encoder::new(),
            decoder: FrameDecoder::new(),
            queued: Default::default(),
        }
    }

    fn send(&mut self, build: impl FnOnce(&mut Encoder) -> Vec<u8>) -> Result<(), String> {
        let message = build(&mut self.encoder);
        let mut writer = FrameWriter::new();
        writer.push(&message).expect("fits a frame");
        self.stream
            .write_all(&writer.take())
            .and_then(|()| self.stream.flush())
            .map_err(|e| e.to_string())
    }

    /// The next message the scheduler sends (skipping heartbeats), within 10 s.
    fn recv(&mut self) -> Result<OwnedMessage, NoAnswer> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while let Some(frame) = self.decoder.next_frame().expect("a valid frame") {
                for part in split_messages(frame).expect("valid messages") {
                    let message = decode_message(&part).expect("a valid message");
                    let (_, owned) = to_owned(message).expect("a known message");
                    if !matches!(owned, OwnedMessage::Heartbeat { .. }) {
                        self.queued.push_back(owned);
                    }
                }
            }
            if let Some(message) = self.queued.pop_front() {
                return Ok(message);
            }
            if Instant::now() >= deadline {
                return Err(NoAnswer::Timeout);
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(NoAnswer::Closed("end of stream".into())),
                Ok(n) => self.decoder.extend(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(NoAnswer::Closed(e.to_string())),
            }
        }
    }

    /// Expects an `Error` with `code` whose message contains `text`.
    fn expect_error(&mut self, what: &str, code: ErrorCode, text: &str) {
        match self.recv() {
            Ok(OwnedMessage::Error {
                code: got, message, ..
            }) => {
                assert_eq!(got, code, "{what}: {message}");
                assert!(message.contains(text), "{what}: {message:?} lacks {text:?}");
            }
            other => panic!("{what}: expected an Error {code:?}, got {other:?}"),
        }
    }

    /// Expects the connection to be closed (or refused by TLS) without an answer.
    fn expect_closed(&mut self, what: &str) -> String {
        match self.recv() {
            Err(NoAnswer::Closed(why)) => why,
            other => panic!("{what}: expected the connection closed, got {other:?}"),
        }
    }
}

fn registration(agent_id: &str, tasks: Vec<TaskStatusReport>) -> AgentRegistration {
    AgentRegistration {
        agent_id: agent_id.into(),
        hostname: format!("{agent_id}-host"),
        resources: Resources {
            cpu_millis: 1,
            ram_mib: 1,
            disk_mib: 1,
            ports: 0,
        },
        port_ranges: vec![],
        attributes: vec![],
        tasks,
        log_port: 0,
    }
}

// ---------------------------------------------------------------------------------------------

const WWW_TOKEN: &str = "www-token-0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

fn auth_file(dir: &Path) -> PathBuf {
    let path = dir.join("auth.toml");
    let text = format!(
        "[[principal]]\nname = \"www-dev\"\ntoken_sha256 = \"{}\"\npermissions = [\"www:*\"]\n\n\
         [[principal]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\npermissions = [\"*\"]\n",
        borealis_core::auth::token_sha256(WWW_TOKEN),
        borealis_core::auth::token_sha256(ADMIN_TOKEN),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
        .collect()
}

#[test]
fn refusals_change_nothing_and_accepted_mutations_are_audited() {
    let dir = temp_dir();
    let pki = write_pki(dir.path());
    let auth = auth_file(dir.path());
    let audit = dir.path().join("audit.jsonl");
    let p = |p: &Path| p.display().to_string();
    let scheduler_args = [
        "--tls-cert".to_string(),
        p(&pki.scheduler.0),
        "--tls-key".into(),
        p(&pki.scheduler.1),
        "--tls-ca".into(),
        p(&pki.ca),
        "--auth-file".into(),
        p(&auth),
        "--audit-log".into(),
        p(&audit),
    ];
    let scheduler_args: Vec<&str> = scheduler_args.iter().map(String::as_str).collect();
    let ca = p(&pki.ca);
    let admin = ["--tls-ca", ca.as_str(), "--token", ADMIN_TOKEN];
    let cluster = Cluster::start_in(dir, &scheduler_args, &admin, &[]);
    let addr = cluster.addr();

    // --- agents ---------------------------------------------------------------------------
    // No certificate: the handshake completes (clients have none), registration is refused.
    let mut peer = Peer::tls(&addr, &pki.ca, None);
    peer.send(|e| e.register_agent(&registration("nocert", vec![])).to_vec())
        .unwrap();
    peer.expect_error(
        "an agent without a certificate",
        ErrorCode::Unauthenticated,
        "agent registration refused: the peer presented no certificate of the cluster CA",
    );
    peer.expect_closed("an agent without a certificate, after the refusal");

    // A certificate of another CA, an expired one: the TLS handshake fails.
    for (what, identity) in [
        ("a certificate of another CA", &pki.other_ca_agent),
        ("an expired certificate", &pki.expired_agent),
    ] {
        let mut peer = Peer::tls(&addr, &pki.ca, Some(identity));
        let _ = peer.send(|e| e.register_agent(&registration("bad", vec![])).to_vec());
        let why = peer.expect_closed(what);
        eprintln!("{what}: {why}");
    }
    // Plain frames to a TLS port: no answer.
    let mut peer = Peer::plain(&addr);
    let _ = peer.send(|e| e.register_agent(&registration("plain", vec![])).to_vec());
    peer.expect_closed("plain frames to the TLS port");
    wait_until(
        "the scheduler's log of each failed handshake",
        WAIT_MAX,
        Duration::from_millis(50),
        || {
            let log = cluster.scheduler.stderr_text();
            (log.contains("TLS handshake failed, closing: invalid peer certificate: UnknownIssuer")
                && log.contains("invalid peer certificate: certificate expired")
                && log.matches("TLS handshake failed").count() >= 3)
                .then_some(())
        },
    );

    // A client token used to register an agent.
    let mut peer = Peer::tls(&addr, &pki.ca, None);
    peer.send(|e| e.authenticate(1, WWW_TOKEN).to_vec())
        .unwrap();
    assert!(
        matches!(peer.recv(), Ok(OwnedMessage::Ack)),
        "token accepted"
    );
    peer.send(|e| {
        e.register_agent(&registration("token-agent", vec![]))
            .to_vec()
    })
    .unwrap();
    peer.expect_error(
        "a client token used as an agent",
        ErrorCode::PermissionDenied,
        "the connection authenticated as client principal \"www-dev\"; a client token cannot register an agent",
    );

    // A good agent certificate registers, but cannot act as a client.
    let mut agent = Peer::tls(&addr, &pki.ca, Some(&pki.agent));
    agent
        .send(|e| e.register_agent(&registration("a1", vec![])).to_vec())
        .unwrap();
    assert!(
        matches!(agent.recv(), Ok(OwnedMessage::AgentRegistered { .. })),
        "an agent with a certificate of the CA registers"
    );
    agent.send(|e| e.list_jobs(5).to_vec()).unwrap();
    agent.expect_error(
        "an agent certificate used as a client",
        ErrorCode::PermissionDenied,
        "an agent (a peer with a certificate of the cluster CA",
    );

    // Only the certified agent is registered.
    let agents = cluster.cli_ok(&["job", "list", "--json"]);
    assert_eq!(agents.trim(), "[]", "no job was created: {agents}");
    let mut client = Peer::tls(&addr, &pki.ca, None);
    client
        .send(|e| e.authenticate(1, ADMIN_TOKEN).to_vec())
        .unwrap();
    assert!(matches!(client.recv(), Ok(OwnedMessage::Ack)));
    client.send(|e| e.list_agents(2).to_vec()).unwrap();
    match client.recv() {
        Ok(OwnedMessage::AgentList { agents: list, .. }) => {
            let names: Vec<&str> = list.iter().map(|a| a.agent_id.as_str()).collect();
            assert_eq!(
                names,
                ["a1"],
                "only the certified agent registered: {list:?}"
            );
        }
        other => panic!("ListAgents: {other:?}"),
    }

    // --- clients ----------------------------------------------------------------------------
    let job_file = cluster.write_file("web.toml", &job_toml(2, "sleep 600", ""));
    let job_file = job_file.display().to_string();
    let run = |flags: &[&str], args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--scheduler", addr.as_str(), "--tls-ca", ca.as_str()]);
        all.extend(flags);
        run_borealis(&all)
    };
    // No token; an unknown token; no TLS at all.
    let line = expect_one_line_error(&run(&[], &["job", "list"]));
    assert!(
        line.contains("authentication required: this scheduler runs with --auth-file"),
        "{line}"
    );
    let line = expect_one_line_error(&run(
        &["--token", "not-a-token-of-anyone-at-all"],
        &["job", "create", "www/devel/web", &job_file],
    ));
    assert!(line.contains("unknown token"), "{line}");
    let line = expect_one_line_error(&run_borealis(&[
        "job",
        "list",
        "--scheduler",
        &addr,
        "--token",
        ADMIN_TOKEN,
    ]));
    assert!(line.contains(&addr), "a plain client to a TLS port: {line}");
    // A token for another role: refused, naming principal, action and role.
    for (args, action) in [
        (
            vec!["job", "create", "db/devel/web", job_file.as_str()],
            "create",
        ),
        (vec!["job", "kill", "db/devel/web"], "kill"),
        (vec!["job", "status", "db/devel/web"], "read"),
        (
            vec![
                "quota", "set", "db", "--cpu", "1", "--ram", "1GiB", "--disk", "1GiB",
            ],
            "quota",
        ),
    ] {
        let line = expect_one_line_error(&run(&["--token", WWW_TOKEN], &args));
        assert!(
            line.contains(&format!(
                "permission denied: principal \"www-dev\" may not {action} jobs of role \"db\""
            )),
            "{args:?}: {line}"
        );
    }
    let line = expect_one_line_error(&run(
        &["--token", WWW_TOKEN],
        &["host", "maintenance", "start", "a1-host"],
    ));
    assert!(
        line.contains("permission denied: principal \"www-dev\" may not maintenance"),
        "{line}"
    );
    // Nothing changed: no job, no quota, no maintenance.
    assert_eq!(cluster.list_json().len(), 0);
    let quota = cluster.cli_ok(&["quota", "get", "db", "--json"]);
    assert!(
        quota.contains("\"quota_set\":false") || quota.contains("\"quota_set\": false"),
        "{quota}"
    );

    // Allowed: www-dev creates and kills its own role's job; ops (admin) sets a quota.
    let output = run(
        &["--token", WWW_TOKEN],
        &["job", "create", "www/devel/web", &job_file],
    );
    assert!(output.status.success(), "{}", describe(&output));
    let listed = run(&["--token", WWW_TOKEN], &["job", "list", "--json"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("www/devel/web"),
        "{}",
        describe(&listed)
    );
    let output = run(
        &["--token", WWW_TOKEN],
        &["job", "kill", "www/devel/web", "--instances", "1"],
    );
    assert!(output.status.success(), "{}", describe(&output));
    cluster.cli_ok(&[
        "quota", "set", "db", "--cpu", "2", "--ram", "1GiB", "--disk", "1GiB",
    ]);
    // A job of a role www-dev may not read is left out of its list.
    cluster.cli_ok(&["job", "create", "db/devel/store", &job_file]);
    let listed = run(&["--token", WWW_TOKEN], &["job", "list", "--json"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("www/devel/web") && !text.contains("db/devel/store"),
        "{}",
        describe(&listed)
    );

    // The audit log: exactly the accepted mutations, in order, with who did them.
    let lines = wait_until(
        "4 audit log lines",
        WAIT_MAX,
        Duration::from_millis(50),
        || {
            let lines = audit_lines(&audit);
            (lines.len() >= 4).then_some(lines)
        },
    );
    let summary: Vec<(String, String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["principal"].as_str().unwrap().to_string(),
                l["action"].as_str().unwrap().to_string(),
                l["target"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("www-dev".into(), "create".into(), "www/devel/web".into()),
            (
                "www-dev".into(),
                "kill".into(),
                "www/devel/web instances 1".into()
            ),
            (
                "ops".into(),
                "quota".into(),
                "quota of db: cpu 2000m ram 1024 MiB disk 1024 MiB".into()
            ),
            ("ops".into(), "create".into(), "db/devel/store".into()),
        ],
        "{lines:#?}"
    );
    for line in &lines {
        assert!(
            line["unix_ms"].as_u64().unwrap() > 1_600_000_000_000,
            "{line}"
        );
        assert_eq!(line["surface"], "binary", "{line}");
        assert!(
            line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
    }
}

#[test]
fn an_agent_cannot_adopt_a_task_placed_on_another_agent() {
    let cluster = Cluster::start(&[AgentSpec::new("a1", "h1")]);
    let job = "www/devel/held";
    cluster.create_job(job, &job_toml(1, "sleep 600", ""));
    let status = cluster.wait_for(job, "instance 0 RUNNING on a1", WAIT_MAX, |s| {
        tasks_in(s, "RUNNING").first().map(|t| (*t).clone())
    });
    assert_eq!(field(&status, "hostname"), "h1", "{status}");
    let task_id = TaskId(
        u64::from_str_radix(field(&status, "task_id").trim_start_matches("0x"), 16)
            .expect("a hex task id"),
    );

    // Another agent registers claiming that task as its own, running.
    let claim = TaskStatusReport {
        task_id,
        job_key: job.into(),
        instance: 0,
        state: TaskState::Running,
        exit_code: -1,
        message: String::new(),
        timestamp_ms: 0,
        sandbox: "/elsewhere".into(),
        usage: None,
    };
    let mut impostor = Peer::plain(&cluster.addr());
    impostor
        .send(|e| e.register_agent(&registration("a2", vec![claim])).to_vec())
        .unwrap();
    assert!(
        matches!(impostor.recv(), Ok(OwnedMessage::AgentRegistered { .. })),
        "the second agent registers"
    );
    // It is told to kill its copy.
    let deadline = Instant::now() + WAIT_MAX;
    let mut seen = Vec::new();
    loop {
        match impostor.recv() {
            Ok(OwnedMessage::KillTask { task_id: killed }) if killed == task_id => break,
            Ok(other) if Instant::now() < deadline => seen.push(other),
            Err(NoAnswer::Timeout) if Instant::now() < deadline => {}
            other => panic!("expected a KillTask for {task_id}, got {other:?} after {seen:?}"),
        }
    }
    // The task stays where it was placed, running, not moved, not replaced.
    holds_for(Duration::from_secs(2), Duration::from_millis(200), || {
        let status = cluster.status_json(job);
        let all = tasks(&status);
        assert_eq!(all.len(), 1, "no replacement: {status:#}");
        assert_eq!(field(&all[0], "state"), "RUNNING", "{status:#}");
        assert_eq!(field(&all[0], "hostname"), "h1", "still on a1: {status:#}");
        assert_eq!(field(&all[0], "agent_id"), "a1", "{status:#}");
    });
    let log = cluster.scheduler.stderr_text();
    assert!(
        log.contains("refused an agent's claim to a task placed on another agent"),
        "{log}"
    );
}
