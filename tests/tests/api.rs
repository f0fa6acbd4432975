//! End-to-end: the scheduler's HTTP JSON API (`/api/v1`) against a real scheduler and agent
//! (child processes on 127.0.0.1): create a job with POST, watch it in the job, instance, task
//! and list answers (with events and logs), kill it with DELETE; bad input is a 400 naming
//! what is wrong, unknown things are 404, and the OpenAPI document lists every route. Build the
//! binary first: `cargo build -p borealis`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use borealis_tests::{job_toml, temp_dir, wait_until, AgentSpec, Cluster, POLL, WAIT_MAX};
use serde_json::{json, Value};

/// How long one request may take to connect, or to send or receive any one piece.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read.
const ANSWER_MAX_BYTES: u64 = 8 << 20;

/// An answer: status, headers (names lower-cased) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer {} is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `{"error", "code"}` of an error answer, checked to have that shape.
    fn error(&self) -> (String, String) {
        let body = self.json();
        let error = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
        let code = body["code"].as_str().unwrap_or_else(|| panic!("{body}"));
        assert!(!error.contains('\n'), "one line: {error:?}");
        (error.to_string(), code.to_string())
    }
}

/// One HTTP/1.1 request (`Connection: close`) over a plain socket, each step bounded.
fn request(addr: &str, method: &str, path: &str, body: Option<&[u8]>) -> Answer {
    request_as(addr, method, path, body, None)
}

/// [`request`] with `Authorization: Bearer <token>`.
fn request_as(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
) -> Answer {
    let socket: std::net::SocketAddr = addr.parse().expect("an ip:port");
    let mut stream = TcpStream::connect_timeout(&socket, REQUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    let body = body.unwrap_or_default();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before it read a large body, and close.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    stream
        .take(ANSWER_MAX_BYTES)
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read the answer to {method} {path}: {e}"));
    parse_answer(&raw)
}

/// An HTTP/1.1 answer read to its end (`Connection: close`).
fn parse_answer(raw: &[u8]) -> Answer {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = raw[end + 4..].to_vec();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse::<usize>().expect("a content-length"));
    let body = match length {
        Some(n) => {
            assert!(rest.len() >= n, "body cut short: {} of {n}", rest.len());
            rest[..n].to_vec()
        }
        None => rest,
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn get(addr: &str, path: &str) -> Answer {
    request(addr, "GET", path, None)
}

#[test]
fn a_job_through_the_json_api() {
    let mut cluster = Cluster::start(&[AgentSpec::new("a1", "h1")]);
    let http = cluster.http_addr();

    // The document is JSON and lists every route the API serves.
    let doc = get(&http, "/api/v1/openapi.json");
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let operations: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(operations, 24, "{:?}", paths.keys().collect::<Vec<_>>());
    for path in [
        "/api/v1/jobs/{role}/{environment}/{name}",
        "/api/v1/tasks/{task_id}/logs/{stream}",
        "/api/v1/cluster",
        "/api/v1/maintenance/{op}",
    ] {
        assert!(paths.contains_key(path), "{path} is not in the document");
    }

    // Create; a second create of the same job is a conflict.
    let job_file = job_toml(
        2,
        "echo \"out-$BOREALIS_INSTANCE_ID\"; echo err >&2; sleep 600",
        "",
    );
    let body = serde_json::to_vec(&json!({ "job_file": job_file })).unwrap();
    let created = request(&http, "POST", "/api/v1/jobs/www/devel/api", Some(&body));
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    assert_eq!(created.json(), json!({"job_key": "www/devel/api"}));
    let again = request(&http, "POST", "/api/v1/jobs/www/devel/api", Some(&body));
    assert_eq!(again.status, 409);
    assert_eq!(again.error().1, "JobExists");

    // Bad bodies name what is wrong.
    let bad = request(
        &http,
        "POST",
        "/api/v1/jobs/www/devel/other",
        Some(br#"{"job_file": 5}"#),
    );
    assert_eq!(bad.status, 400);
    let (error, code) = bad.error();
    assert_eq!(code, "BadRequest");
    assert!(error.contains("job_file"), "{error}");
    let bad = request(
        &http,
        "POST",
        "/api/v1/jobs/www/devel/other",
        Some(br#"{"job_file": "instances = 2\n"}"#),
    );
    assert_eq!(bad.status, 400);
    assert!(
        bad.error().0.starts_with("body: job_file: "),
        "{}",
        bad.error().0
    );
    let huge = vec![b' '; (1 << 20) + 1];
    let too_large = request(&http, "POST", "/api/v1/jobs/www/devel/other", Some(&huge));
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.error().1, "PayloadTooLarge");

    // Both instances run; each shows its events and where its logs are.
    let detail = wait_until("2 RUNNING instances", WAIT_MAX, POLL, || {
        let answer = get(&http, "/api/v1/jobs/www/devel/api");
        assert_eq!(answer.status, 200);
        let body = answer.json();
        let items = body["instances"]["items"].as_array().unwrap().clone();
        (items.len() == 2 && items.iter().all(|i| i["state"] == "RUNNING")).then_some(body)
    });
    assert_eq!(detail["job"]["job_key"], "www/devel/api");
    assert_eq!(detail["job"]["tasks_by_state"], json!({"RUNNING": 2}));
    assert_eq!(detail["instances"]["total"], 2);
    let first = &detail["instances"]["items"][0];
    assert_eq!(first["instance"], 0);
    assert_eq!(first["agent_id"], "a1");
    assert_eq!(first["hostname"], "h1");
    let states: Vec<&str> = first["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.first(), Some(&"PENDING"), "{first}");
    assert_eq!(states.last(), Some(&"RUNNING"), "{first}");
    assert!(first["events"][0]["unix_ms"].as_u64().unwrap() > 0);
    let task_id = first["task_id"].as_str().unwrap().to_string();
    assert_eq!(task_id.len(), 16, "{task_id}");
    assert_eq!(
        first["logs"]["stdout"],
        format!("/api/v1/tasks/{task_id}/logs/stdout")
    );

    // A page of one, and a state filter.
    let page = get(&http, "/api/v1/jobs/www/devel/api?offset=1&limit=1").json();
    assert_eq!(page["instances"]["total"], 2);
    assert_eq!(page["instances"]["offset"], 1);
    assert_eq!(page["instances"]["items"][0]["instance"], 1);
    let pending = get(&http, "/api/v1/jobs/www/devel/api?state=PENDING").json();
    assert_eq!(pending["instances"]["total"], 0);

    // The instance and the task by id (listed hex and 0x hex) name the same task.
    let instance = get(&http, "/api/v1/jobs/www/devel/api/instances/0");
    assert_eq!(instance.status, 200);
    let instance = instance.json();
    assert_eq!(instance["instance"]["task_id"], task_id.as_str());
    assert!(!instance["instance"]["events"]
        .as_array()
        .unwrap()
        .is_empty());
    for id in [task_id.clone(), format!("0x{task_id}")] {
        let task = get(&http, &format!("/api/v1/tasks/{id}"));
        assert_eq!(task.status, 200);
        let task = task.json();
        assert_eq!(task["job_key"], "www/devel/api");
        assert_eq!(task["instance"]["instance"], 0);
    }

    // The task's output, from its agent.
    let stdout = wait_until("instance 0's stdout", WAIT_MAX, POLL, || {
        let answer = get(&http, &format!("/api/v1/tasks/{task_id}/logs/stdout"));
        (answer.status == 200 && answer.body.starts_with(b"out-0")).then_some(answer)
    });
    assert_eq!(stdout.header("x-log-offset"), Some("0"));
    assert_eq!(stdout.header("x-log-size"), Some("6"));
    let stderr = get(
        &http,
        &format!("/api/v1/tasks/{task_id}/logs/stderr?tail=2"),
    );
    assert_eq!(stderr.status, 200);
    assert_eq!(stderr.body, b"r\n");

    // Lists.
    let jobs = get(&http, "/api/v1/jobs?q=DEVEL").json();
    assert_eq!(jobs["total"], 1);
    assert_eq!(jobs["items"][0]["job_key"], "www/devel/api");
    assert_eq!(get(&http, "/api/v1/jobs?role=db").json()["total"], 0);
    let agents = get(&http, "/api/v1/agents").json();
    assert_eq!(agents["total"], 1);
    assert_eq!(agents["items"][0]["hostname"], "h1");
    assert_eq!(agents["items"][0]["active_tasks"], 2);
    assert_eq!(get(&http, "/api/v1/agents?mode=DRAINED").json()["total"], 0);
    let cluster_json = get(&http, "/api/v1/cluster").json();
    assert_eq!(cluster_json["agents"]["total"], 1);
    assert_eq!(cluster_json["jobs"], 1);
    assert_eq!(cluster_json["roles"], 1);
    assert_eq!(cluster_json["tasks_by_state"]["RUNNING"], 2);
    assert!(cluster_json["tasks_placed_total"].as_u64().unwrap() >= 2);
    assert_eq!(cluster_json["resources"]["used"]["cpu"], 0.2);
    let roles = get(&http, "/api/v1/roles").json();
    assert_eq!(roles["items"][0]["role"], "www");
    assert_eq!(get(&http, "/api/v1/whoami").json()["auth"], false);

    // Bad input and unknown things.
    let bad_key = get(&http, "/api/v1/jobs/www/devel/no%20spaces");
    assert_eq!(bad_key.status, 400);
    assert!(bad_key.error().0.contains("name"), "{}", bad_key.error().0);
    let bad_limit = get(&http, "/api/v1/jobs?limit=0");
    assert_eq!(bad_limit.status, 400);
    assert!(bad_limit.error().0.contains("limit"));
    let bad_task = get(&http, "/api/v1/tasks/nope");
    assert_eq!(bad_task.status, 400);
    assert!(bad_task.error().0.contains("task id"));
    let unknown = get(&http, "/api/v1/jobs/www/devel/nope");
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error().1, "UnknownJob");
    let no_instance = get(&http, "/api/v1/jobs/www/devel/api/instances/7");
    assert_eq!(no_instance.status, 404);
    let no_route = get(&http, "/api/v1/nope");
    assert_eq!(no_route.status, 404);
    assert_eq!(no_route.error().1, "NotFound");

    // Kill one instance, then the rest.
    let killed = request(
        &http,
        "DELETE",
        "/api/v1/jobs/www/devel/api?instances=1",
        None,
    );
    assert_eq!(killed.status, 202);
    assert_eq!(
        killed.json(),
        json!({"job_key": "www/devel/api", "instances": [1]})
    );
    let killed = request(&http, "DELETE", "/api/v1/jobs/www/devel/api", None);
    assert_eq!(killed.status, 202);
    assert_eq!(killed.json()["instances"], Value::Null);
    wait_until("no RUNNING instance", WAIT_MAX, POLL, || {
        let answer = get(&http, "/api/v1/jobs/www/devel/api");
        match answer.status {
            // Killed tasks kept in the job's history.
            200 => {
                let body = answer.json();
                let items = body["instances"]["items"].as_array().unwrap().clone();
                items.iter().all(|i| i["state"] == "KILLED").then_some(())
            }
            404 => Some(()),
            other => panic!("GET job answered {other}"),
        }
    });
}

/// With `--auth-file` the API forwards each caller's token: the scheduler authorizes it as it
/// does the command line's (401 without a known token, 403 outside the principal's roles,
/// lists filtered to what it may read).
#[test]
fn the_api_acts_as_the_callers_token() {
    let admin = "admin-token-0123456789abcdef";
    let dev = "dev-token-0123456789abcdef00";
    let dir = temp_dir();
    let auth_file = dir.path().join("auth.toml");
    std::fs::write(
        &auth_file,
        format!(
            "[[principal]]\nname = \"admin\"\ntoken_sha256 = \"{}\"\npermissions = [\"*\"]\n\n\
             [[principal]]\nname = \"dev\"\ntoken_sha256 = \"{}\"\npermissions = [\"www:*\"]\n",
            borealis_core::auth::token_sha256(admin),
            borealis_core::auth::token_sha256(dev),
        ),
    )
    .unwrap();
    let auth_file = auth_file.display().to_string();
    let mut cluster = Cluster::start_in(
        dir,
        &["--auth-file", &auth_file],
        &["--token", admin],
        &[AgentSpec::new("a1", "h1")],
    );
    let http = cluster.http_addr();

    assert_eq!(get(&http, "/api/v1/openapi.json").status, 200);
    let none = get(&http, "/api/v1/jobs");
    assert_eq!(none.status, 401);
    assert_eq!(none.error().1, "Unauthenticated");
    let unknown = request_as(
        &http,
        "GET",
        "/api/v1/jobs",
        None,
        Some("no-such-token-000000"),
    );
    assert_eq!(unknown.status, 401);

    let body = serde_json::to_vec(&json!({ "job_file": job_toml(1, "sleep 600", "") })).unwrap();
    let mine = request_as(
        &http,
        "POST",
        "/api/v1/jobs/www/prod/web",
        Some(&body),
        Some(dev),
    );
    assert_eq!(mine.status, 201, "{}", String::from_utf8_lossy(&mine.body));
    let theirs = request_as(
        &http,
        "POST",
        "/api/v1/jobs/db/prod/pg",
        Some(&body),
        Some(dev),
    );
    assert_eq!(theirs.status, 403);
    let (error, code) = theirs.error();
    assert_eq!(code, "PermissionDenied");
    assert!(error.contains("\"dev\"") && error.contains("db"), "{error}");
    let by_admin = request_as(
        &http,
        "POST",
        "/api/v1/jobs/db/prod/pg",
        Some(&body),
        Some(admin),
    );
    assert_eq!(by_admin.status, 201);

    let seen = |token| {
        let answer = request_as(&http, "GET", "/api/v1/jobs", None, Some(token));
        assert_eq!(answer.status, 200);
        let body = answer.json();
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_key"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(seen(dev), ["www/prod/web"]);
    assert_eq!(seen(admin), ["db/prod/pg", "www/prod/web"]);
    let other = request_as(&http, "GET", "/api/v1/jobs/db/prod/pg", None, Some(dev));
    assert_eq!(other.status, 403);
    assert_eq!(other.error().1, "PermissionDenied");
}

// ---------------------------------------------------------------------------------------------
// TLS everywhere: the HTTP port speaks HTTPS, the API's upstream connection and the agent's log
// server too.

fn new_ca() -> (rcgen::Certificate, rcgen::KeyPair) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "api test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = params.self_signed(&key).expect("a CA certificate");
    (cert, key)
}

/// A certificate for `names` signed by the CA, written as `<stem>.pem` and `<stem>-key.pem`.
fn leaf(
    dir: &Path,
    ca: &(rcgen::Certificate, rcgen::KeyPair),
    stem: &str,
    names: &[&str],
) -> (PathBuf, PathBuf) {
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
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = params.signed_by(&key, &ca.0, &ca.1).expect("a certificate");
    let (c, k) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// One HTTPS request (`Connection: close`), verifying the server against `tls`'s CA.
fn request_tls(
    tls: &Arc<rustls::ClientConfig>,
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
) -> Answer {
    let socket: std::net::SocketAddr = addr.parse().expect("an ip:port");
    let tcp = TcpStream::connect_timeout(&socket, REQUEST_TIMEOUT).unwrap();
    tcp.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    let name = borealis_net::tls::server_name(addr).unwrap();
    let conn = rustls::ClientConnection::new(tls.clone(), name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let body = body.unwrap_or_default();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A peer that closes without close_notify: what was read is the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("read the answer to {method} {path}: {e}"),
    }
    parse_answer(&raw)
}

#[test]
fn the_api_over_https_reads_an_https_agents_logs() {
    let admin = "admin-token-0123456789abcdef";
    let dir = temp_dir();
    let ca = new_ca();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.0.pem()).unwrap();
    let (cert, key) = leaf(dir.path(), &ca, "scheduler", &["127.0.0.1", "localhost"]);
    // The agent's certificate names its host: the API checks its log server under it.
    let (agent_cert, agent_key) = leaf(dir.path(), &ca, "agent-h1", &["h1"]);
    let auth_file = dir.path().join("auth.toml");
    std::fs::write(
        &auth_file,
        format!(
            "[[principal]]\nname = \"admin\"\ntoken_sha256 = \"{}\"\npermissions = [\"*\"]\n",
            borealis_core::auth::token_sha256(admin),
        ),
    )
    .unwrap();
    let text = |p: &Path| p.display().to_string();
    let (ca_s, cert_s, key_s, auth_s) = (text(&ca_path), text(&cert), text(&key), text(&auth_file));
    let mut agent = AgentSpec::new("a1", "h1");
    agent.extra_args = vec![
        "--tls-cert".into(),
        text(&agent_cert),
        "--tls-key".into(),
        text(&agent_key),
        "--tls-ca".into(),
        ca_s.clone(),
        "--auth-file".into(),
        auth_s.clone(),
    ];
    let mut cluster = Cluster::start_in(
        dir,
        &[
            "--tls-cert",
            &cert_s,
            "--tls-key",
            &key_s,
            "--tls-ca",
            &ca_s,
            "--auth-file",
            &auth_s,
        ],
        &["--token", admin, "--tls-ca", &ca_s],
        &[agent],
    );
    let http = cluster.http_addr();
    let tls = borealis_net::tls::client_config(&ca_path, None).unwrap();

    let none = request_tls(&tls, &http, "GET", "/api/v1/jobs", None, None);
    assert_eq!(none.status, 401);
    let body = serde_json::to_vec(&json!({
        "job_file": job_toml(1, "echo \"out-$BOREALIS_INSTANCE_ID\"; sleep 600", "")
    }))
    .unwrap();
    let created = request_tls(
        &tls,
        &http,
        "POST",
        "/api/v1/jobs/www/prod/tls",
        Some(&body),
        Some(admin),
    );
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let task_id = wait_until("a RUNNING instance", WAIT_MAX, POLL, || {
        let answer = request_tls(
            &tls,
            &http,
            "GET",
            "/api/v1/jobs/www/prod/tls",
            None,
            Some(admin),
        );
        assert_eq!(answer.status, 200);
        let body = answer.json();
        let first = body["instances"]["items"][0].clone();
        (first["state"] == "RUNNING").then(|| first["task_id"].as_str().unwrap().to_string())
    });
    let stdout = wait_until("the task's stdout over HTTPS", WAIT_MAX, POLL, || {
        let answer = request_tls(
            &tls,
            &http,
            "GET",
            &format!("/api/v1/tasks/{task_id}/logs/stdout"),
            None,
            Some(admin),
        );
        assert!(
            answer.status == 200 || answer.status == 503,
            "{} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        (answer.status == 200 && answer.body.starts_with(b"out-0")).then_some(answer)
    });
    assert_eq!(stdout.header("x-log-offset"), Some("0"));
    // Plain HTTP to the HTTPS port gets no HTTP answer, and the port keeps serving.
    let mut plain = TcpStream::connect(&http).unwrap();
    plain.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(!buf.starts_with(b"HTTP/1.1 200"), "plain HTTP was served");
    let health = request_tls(&tls, &http, "GET", "/health", None, None);
    assert_eq!(health.status, 200);
}
