//! The SLA coordinator client (Aurora's `CoordinatorSlaPolicy`): on a control thread with its
//! own tokio runtime, it takes the shards' requests to remove tasks, admits them through
//! [`CoordinatorGate`] (one request in flight per coordinator, at most
//! `--max-parallel-coordinated-maintenance` coordinators at once), POSTs each to its
//! coordinator and hands the answer back to the asking shard. The shards (glommio) only ever
//! meet it through the bounded channels of `borealis_shards::coordinator`.
//!
//! The shards' request channels are crossbeam channels (a glommio shard can `try_send` on
//! them without a tokio runtime), which tokio cannot await. The service polls them every
//! [`POLL_INTERVAL`] instead of parking a bridge thread on them: a drain is paced in seconds
//! to minutes and a coordinator call may take up to a minute, so 20 ms more latency is noise,
//! and 50 cheap wake-ups a second cost nothing beside a blocking thread that would need its
//! own shutdown path. Finished calls wake the loop at once; they do not wait for a tick.

use std::collections::HashMap;
use std::time::Duration;

use borealis_shards::coordinator::{
    parse_answer, Admission, CoordinatorAnswer, CoordinatorGate, CoordinatorOutcome,
    CoordinatorRequest, CoordinatorService, REQUEST_QUEUE_MAX,
};
use crossbeam::channel::{Sender, TryRecvError, TrySendError};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::{header, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// How often the shards' request queues are drained.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The largest coordinator answer read; a longer one fails.
pub const ANSWER_BODY_MAX_BYTES: usize = 64 * 1024;

/// What a query value keeps unencoded: RFC 3986's unreserved characters. Everything else
/// (the task key's `/` included) is percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Starts the coordinator service on its own thread and runtime, serving the shards' ends
/// (`borealis_shards::Scheduler::coordinator`). `max_parallel` is
/// `--max-parallel-coordinated-maintenance`, `timeout` is `--sla-coordinator-timeout`.
pub fn start(
    service: CoordinatorService,
    max_parallel: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        max_parallel >= 1,
        "--max-parallel-coordinated-maintenance must be at least 1"
    );
    anyhow::ensure!(
        !timeout.is_zero(),
        "--sla-coordinator-timeout must be greater than 0"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("control-coordinator".into())
        .spawn(move || runtime.block_on(run(service, max_parallel, timeout)))?;
    Ok(())
}

/// Serves the shards' coordinator requests until every shard's request channel is closed and
/// no call is left in flight. `max_parallel` is at least 1; each call (connect and answer) is
/// given at most `timeout`.
pub async fn run(service: CoordinatorService, max_parallel: usize, timeout: Duration) {
    let CoordinatorService { requests, answers } = service;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    // Room for what every shard's queue could hold at once.
    let mut gate = CoordinatorGate::new(max_parallel, REQUEST_QUEUE_MAX * requests.len());
    let mut open = vec![true; requests.len()];
    let mut calls = tokio::task::JoinSet::new();
    // The URL, shard and token of each call in flight, by task.
    let mut running: HashMap<tokio::task::Id, (String, usize, u64)> = HashMap::new();
    let start_call =
        |request: CoordinatorRequest,
         calls: &mut tokio::task::JoinSet<CoordinatorOutcome>,
         running: &mut HashMap<tokio::task::Id, (String, usize, u64)>| {
            let client = client.clone();
            let meta = (request.url.clone(), request.shard, request.token);
            let handle = calls.spawn(async move { ask(&client, request, timeout).await });
            running.insert(handle.id(), meta);
        };
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = poll.tick() => {
                for (shard, rx) in requests.iter().enumerate() {
                    // At most one queue's worth per shard per tick.
                    for _ in 0..REQUEST_QUEUE_MAX {
                        if !open[shard] {
                            break;
                        }
                        let mut request = match rx.try_recv() {
                            Ok(request) => request,
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => {
                                open[shard] = false;
                                break;
                            }
                        };
                        // The answer goes back on the channel the request came on.
                        debug_assert_eq!(request.shard, shard, "a shard sent another's request");
                        request.shard = shard;
                        match gate.submit(request) {
                            Admission::Start(request) => start_call(request, &mut calls, &mut running),
                            Admission::Queued => {}
                            Admission::Duplicate => {
                                tracing::debug!(shard, "duplicate coordinator request ignored");
                            }
                            Admission::Refused { shard, answer } => {
                                tracing::warn!(shard, "coordinator queue full: request refused");
                                deliver(&answers, shard, answer);
                            }
                        }
                    }
                }
                if calls.is_empty() && open.iter().all(|o| !o) {
                    return;
                }
            }
            Some(done) = calls.join_next_with_id(), if !calls.is_empty() => {
                let (id, outcome) = match done {
                    Ok((id, outcome)) => (id, outcome),
                    Err(e) => (
                        e.id(),
                        CoordinatorOutcome::Failed(format!("the coordinator call failed: {e}")),
                    ),
                };
                let (url, shard, token) = running
                    .remove(&id)
                    .expect("every call in flight is recorded");
                match &outcome {
                    CoordinatorOutcome::Failed(why) => {
                        tracing::warn!(%url, shard, token, "coordinator call failed: {why}");
                    }
                    answered => tracing::debug!(%url, shard, token, ?answered, "coordinator answered"),
                }
                deliver(&answers, shard, CoordinatorAnswer { token, outcome });
                for request in gate.finished(&url) {
                    start_call(request, &mut calls, &mut running);
                }
            }
        }
    }
}

/// Hands an answer to its shard without waiting; returns whether it was queued. A full queue
/// drops it: the shard asks again on its own timer.
fn deliver(answers: &[Sender<CoordinatorAnswer>], shard: usize, answer: CoordinatorAnswer) -> bool {
    match answers[shard].try_send(answer) {
        Ok(()) => true,
        Err(TrySendError::Full(answer)) => {
            tracing::warn!(
                shard,
                token = answer.token,
                "shard's coordinator answer queue is full: answer dropped"
            );
            false
        }
        Err(TrySendError::Disconnected(_)) => false,
    }
}

/// `POST <url>?task=<task key>` with the request's JSON body, within `timeout`.
async fn ask(
    client: &HttpClient,
    request: CoordinatorRequest,
    timeout: Duration,
) -> CoordinatorOutcome {
    let uri = match coordinator_uri(&request.url, &request.task_key) {
        Ok(uri) => uri,
        Err(why) => return CoordinatorOutcome::Failed(why),
    };
    let http_request = match Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(request.body)))
    {
        Ok(r) => r,
        Err(e) => return CoordinatorOutcome::Failed(format!("cannot build the request: {e}")),
    };
    let exchange = async {
        let response = client
            .request(http_request)
            .await
            .map_err(|e| format!("cannot reach the coordinator: {}", error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("coordinator answered {}", status.as_u16()));
        }
        let body = Limited::new(response.into_body(), ANSWER_BODY_MAX_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    format!("the coordinator's answer is over {ANSWER_BODY_MAX_BYTES} bytes")
                } else {
                    format!("cannot read the coordinator's answer: {e}")
                }
            })?;
        Ok(body.to_bytes())
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => CoordinatorOutcome::Failed(format!(
            "the coordinator did not answer within {}",
            humantime::format_duration(timeout)
        )),
        Ok(Err(why)) => CoordinatorOutcome::Failed(why),
        Ok(Ok(body)) => parse_answer(&body, &request.status_key),
    }
}

/// The coordinator's URL with the `task` query parameter added (after any query it has).
fn coordinator_uri(url: &str, task_key: &str) -> Result<Uri, String> {
    let base: Uri = url
        .parse()
        .map_err(|e| format!("bad coordinator URL {url:?}: {e}"))?;
    match base.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "coordinator URL {url:?}: https is not supported, only http://"
            ))
        }
        _ => return Err(format!("coordinator URL {url:?} is not an http:// URL")),
    }
    let Some(authority) = base.authority() else {
        return Err(format!("coordinator URL {url:?} names no host"));
    };
    let task = utf8_percent_encode(task_key, QUERY_VALUE);
    let path_and_query = match base.query() {
        None | Some("") => format!("{}?task={task}", base.path()),
        Some(query) => format!("{}?{query}&task={task}", base.path()),
    };
    Uri::builder()
        .scheme("http")
        .authority(authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| format!("bad coordinator URL {url:?}: {e}"))
}

/// An error and its causes on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    // Bounded: error chains are short, and a cycle must not loop forever.
    for _ in 0..8 {
        let Some(cause) = source else {
            break;
        };
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use borealis_shards::coordinator::{coordinator_channels, CoordinatorLinks};
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use axum::extract::{Request as ServerRequest, State};
    use axum::http::StatusCode;
    use axum::routing::any;
    use axum::Router;

    /// A loopback coordinator serving `app`.
    async fn serve(app: Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    /// The service for `shards` shards on this test's runtime.
    fn service(
        shards: usize,
        max_parallel: usize,
        timeout: Duration,
    ) -> (Vec<CoordinatorLinks>, tokio::task::JoinHandle<()>) {
        let (links, service) = coordinator_channels(shards);
        let handle = tokio::spawn(run(service, max_parallel, timeout));
        (links, handle)
    }

    fn request(shard: usize, token: u64, url: &str) -> CoordinatorRequest {
        CoordinatorRequest {
            shard,
            token,
            url: url.to_string(),
            status_key: "drain".to_string(),
            task_key: format!("west/www-data/prod/storage/{token}"),
            body: format!(r#"{{"task": "west/www-data/prod/storage/{token}"}}"#),
        }
    }

    /// Waits (polling, at most `within`) for `count` answers on `links`.
    async fn answers(
        links: &CoordinatorLinks,
        count: usize,
        within: Duration,
    ) -> Vec<CoordinatorAnswer> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < count {
            while let Ok(answer) = links.answers.try_recv() {
                got.push(answer);
            }
            if got.len() >= count {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} answers after {within:?}: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        got.sort_by_key(|a| a.token);
        got
    }

    fn outcome(answers: &[CoordinatorAnswer], token: u64) -> &CoordinatorOutcome {
        &answers.iter().find(|a| a.token == token).unwrap().outcome
    }

    fn json_answer(text: &str) -> axum::response::Response {
        axum::response::Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(text.to_string()))
            .unwrap()
    }

    #[derive(Debug)]
    struct Seen {
        method: String,
        path: String,
        query: Option<String>,
        content_type: Option<String>,
        body: String,
    }

    #[tokio::test]
    async fn the_post_carries_the_task_and_the_body_verbatim() {
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let app = Router::new()
            .fallback(any(
                |State(seen): State<Arc<Mutex<Vec<Seen>>>>, request: ServerRequest| async move {
                    let (parts, body) = request.into_parts();
                    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                    seen.lock().unwrap().push(Seen {
                        method: parts.method.to_string(),
                        path: parts.uri.path().to_string(),
                        query: parts.uri.query().map(str::to_string),
                        content_type: parts
                            .headers
                            .get(header::CONTENT_TYPE)
                            .map(|v| v.to_str().unwrap().to_string()),
                        body: String::from_utf8(body.to_vec()).unwrap(),
                    });
                    json_answer(r#"{"drain": true}"#)
                },
            ))
            .with_state(seen.clone());
        let addr = serve(app).await;
        let (links, _service) = service(1, 10, Duration::from_secs(10));
        let body = "{\"forceMaintenanceCountdownMs\": \"604755646\",\n  \"task\": \"west/www-data/prod/storage/3\", \"note\": \"é & ?\"}";
        let mut first = request(0, 3, &format!("http://{addr}/coordinator"));
        first.body = body.to_string();
        first.task_key = "west/www-data/prod/storage/3".to_string();
        links[0].requests.try_send(first).unwrap();
        // A URL with a query of its own keeps it; one without a path gets `/`.
        let mut second = request(0, 4, &format!("http://{addr}/c?team=storage"));
        second.task_key = "west/www-data/prod/storage/4".to_string();
        links[0].requests.try_send(second).unwrap();
        links[0]
            .requests
            .try_send(request(0, 5, &format!("http://{addr}")))
            .unwrap();
        let got = answers(&links[0], 3, Duration::from_secs(10)).await;
        for token in [3, 4, 5] {
            assert_eq!(outcome(&got, token), &CoordinatorOutcome::Allowed);
        }
        let mut seen = std::mem::take(&mut *seen.lock().unwrap());
        seen.sort_by(|a, b| a.query.cmp(&b.query));
        assert_eq!(seen.len(), 3, "{seen:?}");
        let by_task = |task: &str| {
            seen.iter()
                .find(|s| s.query.as_deref().unwrap().ends_with(task))
                .unwrap()
        };
        let s = by_task("task=west%2Fwww-data%2Fprod%2Fstorage%2F3");
        assert_eq!(s.method, "POST");
        assert_eq!(s.path, "/coordinator");
        assert_eq!(
            s.query.as_deref(),
            Some("task=west%2Fwww-data%2Fprod%2Fstorage%2F3")
        );
        assert_eq!(s.content_type.as_deref(), Some("application/json"));
        assert_eq!(s.body, body);
        let s = by_task("storage%2F4");
        assert_eq!(
            (s.path.as_str(), s.query.as_deref()),
            (
                "/c",
                Some("team=storage&task=west%2Fwww-data%2Fprod%2Fstorage%2F4")
            )
        );
        assert_eq!(s.body, r#"{"task": "west/www-data/prod/storage/4"}"#);
        let s = by_task("storage%2F5");
        assert_eq!(s.path, "/");
    }

    #[tokio::test]
    async fn answers_map_to_allowed_denied_or_failed() {
        let app = Router::new()
            .route("/yes", any(|| async { json_answer(r#"{"ok": true}"#) }))
            .route(
                "/no",
                any(|| async { json_answer(r#"{"ok": false, "drain": true}"#) }),
            )
            .route(
                "/missing",
                any(|| async { json_answer(r#"{"drain": true}"#) }),
            )
            .route("/text", any(|| async { "yes" }))
            .route(
                "/busy",
                any(|| async { (StatusCode::SERVICE_UNAVAILABLE, r#"{"ok": true}"#) }),
            )
            .route(
                "/huge",
                any(|| async { json_answer(&" ".repeat(ANSWER_BODY_MAX_BYTES + 1)) }),
            );
        let addr = serve(app).await;
        let (links, _service) = service(1, 10, Duration::from_secs(10));
        for (token, path) in [
            (1, "yes"),
            (2, "no"),
            (3, "missing"),
            (4, "text"),
            (5, "busy"),
            (6, "huge"),
        ] {
            let mut r = request(0, token, &format!("http://{addr}/{path}"));
            r.status_key = "ok".to_string();
            links[0].requests.try_send(r).unwrap();
        }
        let got = answers(&links[0], 6, Duration::from_secs(10)).await;
        let failed = |why: &str| CoordinatorOutcome::Failed(why.to_string());
        assert_eq!(outcome(&got, 1), &CoordinatorOutcome::Allowed);
        assert_eq!(outcome(&got, 2), &CoordinatorOutcome::Denied);
        assert_eq!(
            outcome(&got, 3),
            &failed(r#"the coordinator's answer has no "ok" field"#)
        );
        let CoordinatorOutcome::Failed(why) = outcome(&got, 4) else {
            panic!("{got:?}");
        };
        assert!(
            why.starts_with("the coordinator's answer is not JSON"),
            "{why}"
        );
        assert_eq!(outcome(&got, 5), &failed("coordinator answered 503"));
        assert_eq!(
            outcome(&got, 6),
            &failed("the coordinator's answer is over 65536 bytes")
        );
    }

    #[tokio::test]
    async fn a_slow_or_absent_coordinator_fails_within_the_timeout() {
        let app = Router::new().fallback(any(|| async {
            // Never answers.
            std::future::pending::<()>().await;
        }));
        let addr = serve(app).await;
        // A port nothing listens on.
        let closed = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let (links, _service) = service(1, 10, Duration::from_millis(200));
        let started = Instant::now();
        links[0]
            .requests
            .try_send(request(0, 1, &format!("http://{addr}/slow")))
            .unwrap();
        links[0]
            .requests
            .try_send(request(0, 2, &format!("http://{closed}/")))
            .unwrap();
        links[0]
            .requests
            .try_send(request(0, 3, &format!("https://{addr}/")))
            .unwrap();
        links[0]
            .requests
            .try_send(request(0, 4, "not a url"))
            .unwrap();
        let got = answers(&links[0], 4, Duration::from_secs(5)).await;
        let elapsed = started.elapsed();
        assert_eq!(
            outcome(&got, 1),
            &CoordinatorOutcome::Failed("the coordinator did not answer within 200ms".into())
        );
        assert!(
            elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(3),
            "{elapsed:?}"
        );
        let CoordinatorOutcome::Failed(why) = outcome(&got, 2) else {
            panic!("{got:?}");
        };
        assert!(why.starts_with("cannot reach the coordinator: "), "{why}");
        assert!(!why.contains('\n'), "{why}");
        assert_eq!(
            outcome(&got, 3),
            &CoordinatorOutcome::Failed(format!(
                "coordinator URL \"https://{addr}/\": https is not supported, only http://"
            ))
        );
        let CoordinatorOutcome::Failed(why) = outcome(&got, 4) else {
            panic!("{got:?}");
        };
        assert!(why.contains("\"not a url\""), "{why}");
    }

    /// Counts the handlers running at once and the order they start and end in.
    #[derive(Clone, Default)]
    struct Concurrency {
        now: Arc<AtomicUsize>,
        max: Arc<AtomicUsize>,
        events: Arc<Mutex<Vec<String>>>,
    }

    /// A coordinator that holds each request `hold` (the window in which a second request
    /// would overlap), counting overlaps.
    fn counting_app(counter: Concurrency, hold: Duration) -> Router {
        Router::new()
            .fallback(any(
                move |State(c): State<Concurrency>, request: ServerRequest| async move {
                    let task = request.uri().query().unwrap_or_default().to_string();
                    let running = c.now.fetch_add(1, Ordering::SeqCst) + 1;
                    c.max.fetch_max(running, Ordering::SeqCst);
                    c.events.lock().unwrap().push(format!("start {task}"));
                    tokio::time::sleep(hold).await;
                    c.events.lock().unwrap().push(format!("end {task}"));
                    c.now.fetch_sub(1, Ordering::SeqCst);
                    json_answer(r#"{"drain": true}"#)
                },
            ))
            .with_state(counter)
    }

    #[tokio::test]
    async fn one_coordinator_never_sees_two_requests_at_once() {
        let counter = Concurrency::default();
        let addr = serve(counting_app(counter.clone(), Duration::from_millis(50))).await;
        let url = format!("http://{addr}/");
        // Two shards, three requests for the one coordinator, slots to spare.
        let (links, _service) = service(2, 10, Duration::from_secs(10));
        links[0].requests.try_send(request(0, 1, &url)).unwrap();
        links[1].requests.try_send(request(1, 2, &url)).unwrap();
        links[0].requests.try_send(request(0, 3, &url)).unwrap();
        let first = answers(&links[0], 2, Duration::from_secs(10)).await;
        let second = answers(&links[1], 1, Duration::from_secs(10)).await;
        assert_eq!(
            (outcome(&first, 1), outcome(&second, 2), outcome(&first, 3)),
            (
                &CoordinatorOutcome::Allowed,
                &CoordinatorOutcome::Allowed,
                &CoordinatorOutcome::Allowed
            )
        );
        assert_eq!(counter.max.load(Ordering::SeqCst), 1);
        // Each request ends before the next starts.
        let events = counter.events.lock().unwrap().clone();
        assert_eq!(events.len(), 6, "{events:?}");
        for pair in events.chunks(2) {
            assert_eq!(
                pair[0].strip_prefix("start "),
                pair[1].strip_prefix("end "),
                "{events:?}"
            );
        }
    }

    #[tokio::test]
    async fn different_coordinators_are_asked_in_parallel() {
        // Each coordinator answers only once both hold a request: serial calls would time out.
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let app = Router::new()
            .fallback(any(
                |State(barrier): State<Arc<tokio::sync::Barrier>>| async move {
                    barrier.wait().await;
                    json_answer(r#"{"drain": true}"#)
                },
            ))
            .with_state(barrier);
        let addr = serve(app).await;
        let (links, _service) = service(1, 10, Duration::from_secs(5));
        links[0]
            .requests
            .try_send(request(0, 1, &format!("http://{addr}/a")))
            .unwrap();
        links[0]
            .requests
            .try_send(request(0, 2, &format!("http://{addr}/b")))
            .unwrap();
        let got = answers(&links[0], 2, Duration::from_secs(10)).await;
        assert_eq!(outcome(&got, 1), &CoordinatorOutcome::Allowed);
        assert_eq!(outcome(&got, 2), &CoordinatorOutcome::Allowed);
    }

    #[tokio::test]
    async fn max_parallel_bounds_the_coordinators_in_flight() {
        let counter = Concurrency::default();
        let addr = serve(counting_app(counter.clone(), Duration::from_millis(50))).await;
        let (links, _service) = service(1, 1, Duration::from_secs(10));
        for (token, path) in [(1, "a"), (2, "b"), (3, "c")] {
            links[0]
                .requests
                .try_send(request(0, token, &format!("http://{addr}/{path}")))
                .unwrap();
        }
        let got = answers(&links[0], 3, Duration::from_secs(10)).await;
        assert!(got.iter().all(|a| a.outcome == CoordinatorOutcome::Allowed));
        assert_eq!(counter.max.load(Ordering::SeqCst), 1);
        assert_eq!(counter.events.lock().unwrap().len(), 6);
    }

    #[tokio::test]
    async fn the_service_stops_once_the_shards_are_gone() {
        let (links, handle) = service(2, 10, Duration::from_secs(1));
        drop(links);
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("the service stops")
            .unwrap();
    }

    #[test]
    fn a_full_answer_queue_drops_the_answer() {
        let (tx, rx) = crossbeam::channel::bounded(1);
        let answer = |token| CoordinatorAnswer {
            token,
            outcome: CoordinatorOutcome::Denied,
        };
        let answers = [tx];
        assert!(deliver(&answers, 0, answer(1)));
        assert!(!deliver(&answers, 0, answer(2)));
        assert_eq!(rx.try_recv().unwrap(), answer(1));
        assert!(rx.try_recv().is_err());
        drop(rx);
        assert!(!deliver(&answers, 0, answer(3)));
    }

    #[test]
    fn start_refuses_flag_values_aurora_refuses() {
        let (_links, service) = coordinator_channels(1);
        let error = start(service, 0, Duration::from_secs(60))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--max-parallel-coordinated-maintenance"),
            "{error}"
        );
        let (_links, service) = coordinator_channels(1);
        let error = start(service, 10, Duration::ZERO).unwrap_err().to_string();
        assert!(error.contains("--sla-coordinator-timeout"), "{error}");
        // Started on its own thread, it answers a shard.
        let (links, service) = coordinator_channels(2);
        start(service, 10, Duration::from_secs(60)).unwrap();
        links[1]
            .requests
            .try_send(request(1, 7, "https://h/"))
            .unwrap();
        let answer = links[1]
            .answers
            .recv_timeout(Duration::from_secs(5))
            .expect("the service answers");
        assert_eq!(answer.token, 7);
        assert!(matches!(answer.outcome, CoordinatorOutcome::Failed(_)));
    }

    #[test]
    fn task_keys_are_percent_encoded_into_the_query() {
        let uri = coordinator_uri("http://h:8080/x/y", "c/r o/e+v/n&m/0").unwrap();
        assert_eq!(
            uri.to_string(),
            "http://h:8080/x/y?task=c%2Fr%20o%2Fe%2Bv%2Fn%26m%2F0"
        );
        let uri = coordinator_uri("http://h?", "a-b_c.d~e").unwrap();
        assert_eq!(uri.to_string(), "http://h/?task=a-b_c.d~e");
        assert!(coordinator_uri("ftp://h/", "k")
            .unwrap_err()
            .contains("not an http:// URL"));
        assert!(coordinator_uri("/path", "k").is_err());
    }
}
