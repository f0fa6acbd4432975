//! End-to-end with a real Prometheus server: a scheduler's `/metrics` passes `promtool check
//! metrics`, and a `prometheus` process scraping it every second sees plausible values. Needs
//! `prometheus` and `promtool` on PATH (`scripts/setup.sh` installs them; `scripts/test.sh`
//! runs it first) and the binary built first: `cargo build -p borealis`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use borealis_tests::{
    find_on_path, free_port, http_get, job_toml, running_by_instance, tasks, tasks_in, url_encode,
    wait_until, AgentSpec, Cluster, Proc, POLL, WAIT_MAX,
};
use serde_json::Value;

/// How long Prometheus may take to start and see its target up.
const PROMETHEUS_UP_MAX: Duration = Duration::from_secs(30);
/// How long the queries together may take to show the expected values.
const QUERIES_MAX: Duration = Duration::from_secs(20);
/// Attempts at starting Prometheus (its free port can be taken by someone else meanwhile).
const PROMETHEUS_START_ATTEMPTS: usize = 3;
/// How long `promtool check metrics` may run.
const PROMTOOL_MAX: Duration = Duration::from_secs(20);

/// `program`'s path; fails (never skips) with how to install it when it is not on PATH.
fn required_tool(program: &str) -> PathBuf {
    find_on_path(program).unwrap_or_else(|| {
        panic!(
            "`{program}` is not on PATH: this test needs a real Prometheus server and promtool. \
             Install them with ./scripts/setup.sh (Debian's `prometheus` package; \
             ./scripts/test.sh runs it first)"
        )
    })
}

/// Pipes `text` into `promtool check metrics`; returns its exit status and output. Killed
/// (and the test failed) after [`PROMTOOL_MAX`].
fn promtool_check_metrics(promtool: &Path, text: &str) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", promtool.display()));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = text.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
        // Dropping stdin closes it: promtool reads to the end.
    });
    let deadline = Instant::now() + PROMTOOL_MAX;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("promtool check metrics did not finish within {PROMTOOL_MAX:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.join().expect("stdin writer");
    let output = child.wait_with_output().expect("promtool's output");
    let text = format!(
        "--- stdout:\n{}--- stderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status, text)
}

/// A Prometheus server on 127.0.0.1 scraping one target every second.
struct Prometheus {
    addr: String,
    proc: Proc,
}

impl Prometheus {
    /// Writes `<dir>/prometheus.yml` scraping `target` and starts `prometheus` on a free port
    /// with its storage in `<dir>/data`; waits (bounded) until it is ready. Retries on a fresh
    /// port if it exits first.
    fn start(prometheus: &Path, dir: &Path, target: &str) -> Prometheus {
        std::fs::create_dir_all(dir).expect("create the prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: borealis\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        for attempt in 1..=PROMETHEUS_START_ATTEMPTS {
            let addr = format!("127.0.0.1:{}", free_port());
            let args: Vec<String> = vec![
                format!("--config.file={}", config.display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address={addr}"),
                "--log.level=info".into(),
            ];
            let mut proc =
                Proc::spawn_program(&format!("prometheus-{attempt}"), prometheus, &args, dir);
            let deadline = Instant::now() + PROMETHEUS_UP_MAX;
            loop {
                if let Some(status) = proc.exit_status() {
                    if attempt == PROMETHEUS_START_ATTEMPTS {
                        panic!(
                            "prometheus exited during startup ({status}) {attempt} times; last:\n{}",
                            proc.log_tails()
                        );
                    }
                    eprintln!(
                        "prometheus attempt {attempt} on {addr} exited ({status}); retrying:\n{}",
                        proc.log_tails()
                    );
                    break;
                }
                if http_get(&addr, "/-/ready").is_ok_and(|r| r.status == 200) {
                    return Prometheus { addr, proc };
                }
                if Instant::now() >= deadline {
                    panic!("prometheus on {addr} was not ready within {PROMETHEUS_UP_MAX:?}");
                }
                std::thread::sleep(POLL);
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `GET <path>` on this server as JSON with `"status":"success"`, or why not.
    fn api(&mut self, path: &str) -> Result<Value, String> {
        if let Some(status) = self.proc.exit_status() {
            panic!("prometheus exited: {status}");
        }
        let response = http_get(&self.addr, path)?;
        let json: Value = serde_json::from_slice(&response.body).map_err(|e| {
            format!(
                "GET {path}: HTTP {} not JSON ({e}): {}",
                response.status,
                response.text()
            )
        })?;
        if response.status != 200 || json["status"] != "success" {
            return Err(format!("GET {path}: HTTP {}: {json}", response.status));
        }
        Ok(json)
    }

    /// The scrape target for `target` (host:port), if Prometheus lists it as active.
    fn active_target(&mut self, target: &str) -> Result<Option<Value>, String> {
        let json = self.api("/api/v1/targets?state=active")?;
        Ok(json["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["labels"]["instance"] == target)
            .cloned())
    }

    /// Instant query `promql`: the single sample's value, `Ok(None)` for an empty result.
    fn query_scalar(&mut self, promql: &str) -> Result<Option<f64>, String> {
        let json = self.api(&format!("/api/v1/query?query={}", url_encode(promql)))?;
        let data = &json["data"];
        if data["resultType"] != "vector" {
            return Err(format!("{promql}: not a vector: {json}"));
        }
        let result = data["result"].as_array().map_or(&[][..], Vec::as_slice);
        match result {
            [] => Ok(None),
            [sample] => {
                let value = sample["value"][1]
                    .as_str()
                    .ok_or_else(|| format!("{promql}: no value in {sample}"))?;
                value
                    .parse()
                    .map(Some)
                    .map_err(|e| format!("{promql}: value {value:?}: {e}"))
            }
            _ => Err(format!(
                "{promql}: {} series, expected one: {json}",
                result.len()
            )),
        }
    }
}

/// What a query must return.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Eq(f64),
    AtLeast(f64),
}

impl Expect {
    fn holds(self, value: f64) -> bool {
        match self {
            Expect::Eq(want) => value == want,
            Expect::AtLeast(min) => value >= min,
        }
    }
}

#[test]
fn prometheus_scrapes_borealis_metrics() {
    // 1. The tools: a missing one is a failure with how to install it, never a skip.
    let prometheus_bin = required_tool("prometheus");
    let promtool = required_tool("promtool");

    // 2. A cluster with a finished job and a running service.
    let mut cluster = Cluster::start(&[AgentSpec::new("a1", "h1")]);
    let http = cluster.http_addr();
    let batch = "www/devel/hello";
    let service = "www/prod/web";
    cluster.create_job(batch, &job_toml(5, "echo hi", ""));
    cluster.create_job(
        service,
        &job_toml(
            2,
            "while true; do sleep 1; done",
            "service = true\nfinalization_wait_secs = 1",
        ),
    );
    cluster.wait_for(batch, "5 FINISHED tasks", WAIT_MAX, |status| {
        for task in tasks(status) {
            let state = task["state"].as_str().unwrap_or("");
            assert!(
                !["FAILED", "LOST", "KILLED"].contains(&state),
                "unexpected {state} task: {task}\nstatus: {status:#}"
            );
        }
        (tasks(status).len() == 5 && tasks_in(status, "FINISHED").len() == 5).then_some(())
    });
    cluster.wait_for(service, "2 RUNNING instances", WAIT_MAX, |status| {
        (tasks(status).len() == 2 && running_by_instance(status, 2).is_some()).then_some(())
    });

    // 3. /metrics directly: the content type, promtool's verdict; /leaderhealth.
    let metrics = http_get(&http, "/metrics").unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    assert_eq!(metrics.status, 200, "GET /metrics: {}", metrics.text());
    let content_type = metrics.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "GET /metrics: Content-Type {content_type:?}, expected text/plain; version=0.0.4"
    );
    let text = metrics.text();
    assert!(
        text.contains("borealis_tasks{"),
        "no borealis_tasks in:\n{text}"
    );
    let (status, output) = promtool_check_metrics(&promtool, &text);
    assert!(
        status.success(),
        "promtool check metrics failed ({status}):\n{output}\n--- the metrics:\n{text}"
    );
    let leader = http_get(&http, "/leaderhealth").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(leader.status, 200, "GET /leaderhealth: {}", leader.text());

    // 4. A real Prometheus server scraping the scheduler every second.
    let mut prometheus =
        Prometheus::start(&prometheus_bin, &cluster.dir().join("prometheus"), &http);
    let target = wait_until(
        &format!(
            "prometheus on {} to scrape {http} with health \"up\"",
            prometheus.addr
        ),
        PROMETHEUS_UP_MAX,
        POLL,
        || match prometheus.active_target(&http) {
            Ok(Some(target)) if target["health"] == "up" => Some(target),
            Ok(_) => None,
            Err(e) => panic!("{e}"),
        },
    );
    assert_eq!(
        target["scrapeUrl"],
        format!("http://{http}/metrics"),
        "{target}"
    );

    let expectations = [
        (r#"sum(borealis_tasks{state="FINISHED"})"#, Expect::Eq(5.0)),
        (r#"sum(borealis_tasks{state="RUNNING"})"#, Expect::Eq(2.0)),
        ("borealis_leader", Expect::Eq(1.0)),
        ("sum(borealis_agents_connected)", Expect::Eq(1.0)),
        (
            r#"sum(borealis_task_transitions_total{state="ASSIGNED"})"#,
            Expect::AtLeast(7.0),
        ),
        (
            "borealis_placement_latency_seconds_count",
            Expect::AtLeast(7.0),
        ),
        ("sum(borealis_jobs)", Expect::Eq(2.0)),
        ("count(borealis_build_info)", Expect::Eq(1.0)),
    ];
    // The first scrapes may be older than the jobs: poll each query, bounded all together.
    let deadline = Instant::now() + QUERIES_MAX;
    for (promql, expect) in expectations {
        loop {
            let last = prometheus.query_scalar(promql);
            if let Ok(Some(value)) = last {
                if expect.holds(value) {
                    eprintln!("prometheus: {promql} = {value}");
                    break;
                }
            }
            if Instant::now() >= deadline {
                let now = http_get(&http, "/metrics").map_or_else(|e| e, |r| r.text());
                panic!(
                    "prometheus query {promql}: expected {expect:?}, last answer {last:?} \
                     (after {QUERIES_MAX:?})\n--- /metrics now:\n{now}"
                );
            }
            std::thread::sleep(POLL);
        }
    }
}
