//! The shards' side of coordinator-based SLAs (Aurora's `CoordinatorSlaPolicy`): before a
//! drain removes a task of a job whose SLA is kept by a coordinator, the job's shard asks the
//! coordinator service (on a control thread, tokio) to POST the task to the coordinator, and
//! acts on the answer when it comes back. The shard never blocks or does IO: it hands the
//! request over with `try_send` and polls the answers each round, as it does for etcd
//! (see `ha`).
//!
//! Also here, because it is pure and the simulation drives it without any runtime: the
//! admission of requests to coordinators ([`CoordinatorGate`], Aurora's per-coordinator lock
//! and `max_parallel_coordinated_maintenance`) and the reading of a coordinator's answer
//! ([`parse_answer`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crossbeam::channel::{Receiver, Sender};

/// Requests queued from one shard to the coordinator service.
pub const REQUEST_QUEUE_MAX: usize = 1024;
/// Answers queued from the coordinator service to one shard.
pub const ANSWER_QUEUE_MAX: usize = 1024;

/// A shard asks whether a task may be removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorRequest {
    /// The asking shard: where the answer goes.
    pub shard: usize,
    /// The shard's own id for this request, echoed in the answer.
    pub token: u64,
    /// The job's `coordinator_url` (http:// only).
    pub url: String,
    /// The answer's JSON field that says whether the task may go.
    pub status_key: String,
    /// `<cluster>/<role>/<env>/<name>/<instance>`, sent as the `task` query parameter.
    pub task_key: String,
    /// The JSON body, already built by the shard.
    pub body: String,
}

/// What became of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordinatorOutcome {
    /// The coordinator lets the task go.
    Allowed,
    /// The coordinator keeps the task; the shard asks again later.
    Denied,
    /// No usable answer (unreachable, a non-2xx status, not the expected JSON, a timeout, a
    /// full queue), with one line saying why. The shard treats it as a denial and retries.
    Failed(String),
}

/// The coordinator service's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorAnswer {
    pub token: u64,
    pub outcome: CoordinatorOutcome,
}

/// One shard's ends of the coordinator channels.
#[derive(Clone, Debug)]
pub struct CoordinatorLinks {
    /// Requests to the service: `try_send` only (a full queue means "ask again later").
    pub requests: Sender<CoordinatorRequest>,
    /// Answers from the service, polled each round.
    pub answers: Receiver<CoordinatorAnswer>,
}

/// The service's ends for all shards, indexed by shard.
#[derive(Debug)]
pub struct CoordinatorService {
    pub requests: Vec<Receiver<CoordinatorRequest>>,
    pub answers: Vec<Sender<CoordinatorAnswer>>,
}

/// Bounded channels between `shards` shards and the coordinator service.
pub fn coordinator_channels(shards: usize) -> (Vec<CoordinatorLinks>, CoordinatorService) {
    let mut links = Vec::with_capacity(shards);
    let mut service = CoordinatorService {
        requests: Vec::with_capacity(shards),
        answers: Vec::with_capacity(shards),
    };
    for _ in 0..shards {
        let (request_tx, request_rx) = crossbeam::channel::bounded(REQUEST_QUEUE_MAX);
        let (answer_tx, answer_rx) = crossbeam::channel::bounded(ANSWER_QUEUE_MAX);
        links.push(CoordinatorLinks {
            requests: request_tx,
            answers: answer_rx,
        });
        service.requests.push(request_rx);
        service.answers.push(answer_tx);
    }
    (links, service)
}

/// What [`CoordinatorGate::submit`] did with a request.
///
/// At most one request starts on a submit, the submitted one: whenever a slot is free every
/// waiting request is waiting for its coordinator's lock, so only a request for a coordinator
/// nobody is talking to can start.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Send it now.
    Start(CoordinatorRequest),
    /// It waits for its coordinator (or for a free slot); [`CoordinatorGate::finished`] hands
    /// it out later.
    Queued,
    /// The same shard and token are already waiting or in flight: ignored.
    Duplicate,
    /// The waiting queue is full: answer the shard at once.
    Refused {
        shard: usize,
        answer: CoordinatorAnswer,
    },
}

/// Admission of requests to coordinators, pure and deterministic:
/// - at most one request in flight per coordinator URL (Aurora's per-coordinator lock, so a
///   coordinator can judge from the tasks' current state alone);
/// - at most `max_parallel` URLs in flight at once (`--max-parallel-coordinated-maintenance`);
/// - FIFO per URL, and across URLs by arrival: of the requests that could start, the one that
///   arrived first starts first;
/// - at most `queue_max` requests waiting; beyond that a request is refused at once;
/// - a request whose shard and token are already waiting or in flight is ignored.
#[derive(Debug)]
pub struct CoordinatorGate {
    max_parallel: usize,
    queue_max: usize,
    /// Arrival order, so FIFO across URLs compares arrivals.
    next_seq: u64,
    /// The request in flight per URL: (shard, token).
    in_flight: HashMap<String, (usize, u64)>,
    /// Waiting requests per URL, oldest first; a URL with none waiting has no entry.
    waiting: HashMap<String, VecDeque<(u64, CoordinatorRequest)>>,
    /// URLs not in flight with requests waiting, by the arrival of their oldest request. It is
    /// empty whenever fewer than `max_parallel` are in flight.
    ready: BTreeMap<u64, String>,
    waiting_count: usize,
    /// (shard, token) of every request waiting or in flight.
    known: HashSet<(usize, u64)>,
}

impl CoordinatorGate {
    /// `max_parallel` is at least 1 (0 would never start anything).
    pub fn new(max_parallel: usize, queue_max: usize) -> CoordinatorGate {
        assert!(max_parallel >= 1, "max_parallel must be at least 1");
        CoordinatorGate {
            max_parallel,
            queue_max,
            next_seq: 0,
            in_flight: HashMap::new(),
            waiting: HashMap::new(),
            ready: BTreeMap::new(),
            waiting_count: 0,
            known: HashSet::new(),
        }
    }

    /// Queues a request, or starts it when its coordinator is free and a slot is open.
    pub fn submit(&mut self, request: CoordinatorRequest) -> Admission {
        let id = (request.shard, request.token);
        if self.known.contains(&id) {
            return Admission::Duplicate;
        }
        let starts_now =
            self.in_flight.len() < self.max_parallel && !self.in_flight.contains_key(&request.url);
        if starts_now {
            // A free slot means nothing is ready (see `ready`), so nothing older is passed over.
            debug_assert!(self.ready.is_empty());
            debug_assert!(!self.waiting.contains_key(&request.url));
            self.known.insert(id);
            self.in_flight.insert(request.url.clone(), id);
            return Admission::Start(request);
        }
        if self.waiting_count >= self.queue_max {
            return Admission::Refused {
                shard: request.shard,
                answer: CoordinatorAnswer {
                    token: request.token,
                    outcome: CoordinatorOutcome::Failed("coordinator queue full".to_string()),
                },
            };
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.known.insert(id);
        self.waiting_count += 1;
        let queue = self.waiting.entry(request.url.clone()).or_default();
        if queue.is_empty() && !self.in_flight.contains_key(&request.url) {
            // Its coordinator is free; it waits for a slot only.
            self.ready.insert(seq, request.url.clone());
        }
        queue.push_back((seq, request));
        Admission::Queued
    }

    /// The request in flight for `url` finished (answered, failed or timed out): returns the
    /// requests that may start now. A URL with nothing in flight is ignored.
    pub fn finished(&mut self, url: &str) -> Vec<CoordinatorRequest> {
        let Some(id) = self.in_flight.remove(url) else {
            return Vec::new();
        };
        self.known.remove(&id);
        if let Some((seq, _)) = self.waiting.get(url).and_then(|queue| queue.front()) {
            self.ready.insert(*seq, url.to_string());
        }
        let mut start = Vec::new();
        while self.in_flight.len() < self.max_parallel {
            let Some((_, url)) = self.ready.pop_first() else {
                break;
            };
            let queue = self
                .waiting
                .get_mut(&url)
                .expect("a ready URL has requests waiting");
            let (_, request) = queue.pop_front().expect("a ready URL has requests waiting");
            if queue.is_empty() {
                self.waiting.remove(&url);
            }
            self.waiting_count -= 1;
            self.in_flight.insert(url, (request.shard, request.token));
            start.push(request);
        }
        debug_assert!(self.in_flight.len() <= self.max_parallel);
        debug_assert!(self.in_flight.len() == self.max_parallel || self.ready.is_empty());
        start
    }

    /// Requests sent and not finished (one per URL at most).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Requests queued and not started.
    pub fn waiting(&self) -> usize {
        self.waiting_count
    }
}

/// Reads a coordinator's answer: `{"<status_key>": true|false, ...}` is Allowed or Denied;
/// anything else fails, saying what was wrong.
pub fn parse_answer(body: &[u8], status_key: &str) -> CoordinatorOutcome {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => {
            return CoordinatorOutcome::Failed(format!("the coordinator's answer is not JSON: {e}"))
        }
    };
    let Some(object) = value.as_object() else {
        return CoordinatorOutcome::Failed(
            "the coordinator's answer is not a JSON object".to_string(),
        );
    };
    match object.get(status_key) {
        None => CoordinatorOutcome::Failed(format!(
            "the coordinator's answer has no {status_key:?} field"
        )),
        Some(serde_json::Value::Bool(true)) => CoordinatorOutcome::Allowed,
        Some(serde_json::Value::Bool(false)) => CoordinatorOutcome::Denied,
        Some(other) => CoordinatorOutcome::Failed(format!(
            "the coordinator's {status_key:?} is not a boolean: {}",
            one_line_prefix(&other.to_string())
        )),
    }
}

/// At most 64 characters of `text`, so a failure stays one short line.
fn one_line_prefix(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    if text.chars().count() <= MAX_CHARS {
        text.to_string()
    } else {
        let mut prefix: String = text.chars().take(MAX_CHARS).collect();
        prefix.push('…');
        prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(shard: usize, token: u64, url: &str) -> CoordinatorRequest {
        CoordinatorRequest {
            shard,
            token,
            url: url.to_string(),
            status_key: "drain".to_string(),
            task_key: format!("c/www/prod/job/{token}"),
            body: "{}".to_string(),
        }
    }

    fn tokens(requests: &[CoordinatorRequest]) -> Vec<u64> {
        requests.iter().map(|r| r.token).collect()
    }

    #[test]
    fn one_request_in_flight_per_url_across_shards() {
        let mut gate = CoordinatorGate::new(10, 100);
        assert_eq!(
            gate.submit(request(0, 1, "http://a")),
            Admission::Start(request(0, 1, "http://a"))
        );
        // Another shard, the same coordinator: it waits, however many slots are free.
        assert_eq!(gate.submit(request(1, 1, "http://a")), Admission::Queued);
        assert_eq!(gate.submit(request(2, 7, "http://a")), Admission::Queued);
        assert_eq!((gate.in_flight(), gate.waiting()), (1, 2));
        let next = gate.finished("http://a");
        assert_eq!(next, vec![request(1, 1, "http://a")]);
        assert_eq!((gate.in_flight(), gate.waiting()), (1, 1));
        assert_eq!(gate.finished("http://a"), vec![request(2, 7, "http://a")]);
        assert_eq!(gate.finished("http://a"), vec![]);
        assert_eq!((gate.in_flight(), gate.waiting()), (0, 0));
        // A URL with nothing in flight finishing is ignored.
        assert_eq!(gate.finished("http://a"), vec![]);
    }

    #[test]
    fn at_most_max_parallel_urls_in_flight() {
        let mut gate = CoordinatorGate::new(2, 100);
        assert!(matches!(
            gate.submit(request(0, 1, "http://a")),
            Admission::Start(_)
        ));
        assert!(matches!(
            gate.submit(request(0, 2, "http://b")),
            Admission::Start(_)
        ));
        assert_eq!(gate.submit(request(0, 3, "http://c")), Admission::Queued);
        assert_eq!(gate.submit(request(0, 4, "http://d")), Admission::Queued);
        assert_eq!((gate.in_flight(), gate.waiting()), (2, 2));
        // One slot frees: exactly one waiting URL starts, the oldest.
        assert_eq!(tokens(&gate.finished("http://b")), vec![3]);
        assert_eq!((gate.in_flight(), gate.waiting()), (2, 1));
        assert_eq!(tokens(&gate.finished("http://a")), vec![4]);
        assert_eq!(tokens(&gate.finished("http://c")), Vec::<u64>::new());
        assert_eq!(gate.in_flight(), 1);
    }

    #[test]
    fn requests_start_in_arrival_order_per_url_and_across_urls() {
        let mut gate = CoordinatorGate::new(1, 100);
        assert!(matches!(
            gate.submit(request(0, 1, "http://a")),
            Admission::Start(_)
        ));
        for (token, url) in [
            (2, "http://b"),
            (3, "http://a"),
            (4, "http://c"),
            (5, "http://b"),
            (6, "http://a"),
        ] {
            assert_eq!(gate.submit(request(0, token, url)), Admission::Queued);
        }
        // One slot: the oldest waiting request whose coordinator is free goes next each time.
        let mut order = Vec::new();
        let mut url = "http://a".to_string();
        for _ in 0..10 {
            let started = gate.finished(&url);
            let Some(next) = started.first() else {
                break;
            };
            assert_eq!(started.len(), 1);
            order.push(next.token);
            url = next.url.clone();
        }
        assert_eq!(order, vec![2, 3, 4, 5, 6]);
        assert_eq!((gate.in_flight(), gate.waiting()), (0, 0));
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let mut gate = CoordinatorGate::new(1, 2);
        assert!(matches!(
            gate.submit(request(0, 1, "http://a")),
            Admission::Start(_)
        ));
        assert_eq!(gate.submit(request(0, 2, "http://a")), Admission::Queued);
        assert_eq!(gate.submit(request(1, 3, "http://b")), Admission::Queued);
        assert_eq!(
            gate.submit(request(1, 4, "http://c")),
            Admission::Refused {
                shard: 1,
                answer: CoordinatorAnswer {
                    token: 4,
                    outcome: CoordinatorOutcome::Failed("coordinator queue full".to_string()),
                },
            }
        );
        assert_eq!(gate.waiting(), 2);
        // The refused request holds nothing: the same token may come back once there is room.
        assert_eq!(tokens(&gate.finished("http://a")), vec![2]);
        assert_eq!(gate.submit(request(1, 4, "http://c")), Admission::Queued);
        // A request that can start at once is never refused, even with the queue full.
        let mut full = CoordinatorGate::new(2, 0);
        assert!(matches!(
            full.submit(request(0, 1, "http://a")),
            Admission::Start(_)
        ));
        assert!(matches!(
            full.submit(request(0, 2, "http://a")),
            Admission::Refused { .. }
        ));
        assert!(matches!(
            full.submit(request(0, 3, "http://b")),
            Admission::Start(_)
        ));
    }

    #[test]
    fn a_duplicate_is_ignored_while_the_first_is_known() {
        let mut gate = CoordinatorGate::new(1, 10);
        assert!(matches!(
            gate.submit(request(0, 1, "http://a")),
            Admission::Start(_)
        ));
        // In flight: the same shard and token again are ignored, even for another URL.
        assert_eq!(gate.submit(request(0, 1, "http://a")), Admission::Duplicate);
        assert_eq!(gate.submit(request(0, 1, "http://b")), Admission::Duplicate);
        // Another shard's token 1 is another request.
        assert_eq!(gate.submit(request(1, 1, "http://a")), Admission::Queued);
        // Waiting: ignored too.
        assert_eq!(gate.submit(request(1, 1, "http://a")), Admission::Duplicate);
        assert_eq!((gate.in_flight(), gate.waiting()), (1, 1));
        assert_eq!(tokens(&gate.finished("http://a")), vec![1]);
        assert_eq!(gate.finished("http://a").len(), 0);
        // Finished: the token may be asked again (the shard retries a denial).
        assert!(matches!(
            gate.submit(request(0, 1, "http://a")),
            Admission::Start(_)
        ));
    }

    fn check(body: &str, expected: CoordinatorOutcome) {
        assert_eq!(parse_answer(body.as_bytes(), "drain"), expected, "{body}");
    }

    fn failed(why: &str) -> CoordinatorOutcome {
        CoordinatorOutcome::Failed(why.to_string())
    }

    #[test]
    fn answers_are_read_from_the_status_key() {
        check(r#"{"drain": true}"#, CoordinatorOutcome::Allowed);
        check(r#"{"drain": false}"#, CoordinatorOutcome::Denied);
        check(
            r#"{"other": 1, "drain": true, "x": [null]}"#,
            CoordinatorOutcome::Allowed,
        );
        check(
            r#"{"drain": "true"}"#,
            failed(r#"the coordinator's "drain" is not a boolean: "true""#),
        );
        check(
            r#"{"drain": 1}"#,
            failed(r#"the coordinator's "drain" is not a boolean: 1"#),
        );
        check(
            r#"{"drain": null}"#,
            failed(r#"the coordinator's "drain" is not a boolean: null"#),
        );
        check(
            r#"{"Drain": true}"#,
            failed(r#"the coordinator's answer has no "drain" field"#),
        );
        check(
            "{}",
            failed(r#"the coordinator's answer has no "drain" field"#),
        );
        check(
            "[true]",
            failed("the coordinator's answer is not a JSON object"),
        );
        check(
            "true",
            failed("the coordinator's answer is not a JSON object"),
        );
        assert_eq!(
            parse_answer(br#"{"ok": true, "drain": false}"#, "ok"),
            CoordinatorOutcome::Allowed
        );
        for bad in ["", "not json", "{\"drain\": tru", "<html>503</html>"] {
            let CoordinatorOutcome::Failed(why) = parse_answer(bad.as_bytes(), "drain") else {
                panic!("{bad:?} was accepted");
            };
            assert!(
                why.starts_with("the coordinator's answer is not JSON: "),
                "{why}"
            );
            assert!(!why.contains('\n'), "{why}");
        }
        // A long non-boolean value is cut short, so the reason stays one short line.
        let long = format!(r#"{{"drain": "{}"}}"#, "x".repeat(1000));
        let CoordinatorOutcome::Failed(why) = parse_answer(long.as_bytes(), "drain") else {
            panic!("a string was accepted");
        };
        assert!(why.ends_with('…') && why.chars().count() < 120, "{why}");
    }

    #[test]
    fn channels_connect_each_shard_to_its_own_service_ends() {
        let (links, service) = coordinator_channels(3);
        assert_eq!(
            (links.len(), service.requests.len(), service.answers.len()),
            (3, 3, 3)
        );
        links[2]
            .requests
            .try_send(request(2, 9, "http://a"))
            .unwrap();
        assert_eq!(service.requests[2].try_recv().unwrap().token, 9);
        assert!(service.requests[0].try_recv().is_err());
        let answer = CoordinatorAnswer {
            token: 9,
            outcome: CoordinatorOutcome::Denied,
        };
        service.answers[1].try_send(answer.clone()).unwrap();
        assert_eq!(links[1].answers.try_recv().unwrap(), answer);
        // Bounded: a shard's request queue takes REQUEST_QUEUE_MAX and then refuses.
        for token in 0..REQUEST_QUEUE_MAX as u64 {
            links[0]
                .requests
                .try_send(request(0, token, "http://a"))
                .unwrap();
        }
        assert!(links[0]
            .requests
            .try_send(request(0, 0, "http://a"))
            .is_err());
    }

    #[derive(Clone, Debug)]
    enum Step {
        /// Submit (shard, token, url index).
        Submit(usize, u64, usize),
        /// The request in flight for the i-th in-flight URL (in start order) finishes.
        Finish(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0..3usize, 0..20u64, 0..5usize).prop_map(|(s, t, u)| Step::Submit(s, t, u)),
            2 => (0..8usize).prop_map(Step::Finish),
        ]
    }

    proptest! {
        /// Whatever the sequence: never two in flight for a URL, never more than max_parallel
        /// in flight, a free slot never sits beside a startable request, and once everything
        /// in flight finishes, every request submitted (not a duplicate) has started or was
        /// refused.
        #[test]
        fn the_gate_keeps_its_limits(
            max_parallel in 1..4usize,
            queue_max in 0..6usize,
            steps in proptest::collection::vec(step(), 0..80),
        ) {
            let mut gate = CoordinatorGate::new(max_parallel, queue_max);
            // URL -> (shard, token) in flight, in start order.
            let mut in_flight: Vec<(String, (usize, u64))> = Vec::new();
            // (shard, token) -> URL of the requests waiting.
            let mut waiting: HashMap<(usize, u64), String> = HashMap::new();
            let mut submitted = 0usize;
            let mut accepted = 0usize;
            let mut started = 0usize;
            let mut refused = 0usize;
            let mut start = |requests: Vec<CoordinatorRequest>,
                             in_flight: &mut Vec<(String, (usize, u64))>,
                             waiting: &mut HashMap<(usize, u64), String>|
             -> Result<(), TestCaseError> {
                for r in requests {
                    prop_assert!(
                        !in_flight.iter().any(|(url, _)| *url == r.url),
                        "two in flight for {}", r.url
                    );
                    waiting.remove(&(r.shard, r.token));
                    in_flight.push((r.url.clone(), (r.shard, r.token)));
                    started += 1;
                }
                prop_assert!(in_flight.len() <= max_parallel);
                Ok(())
            };
            for step in steps {
                match step {
                    Step::Submit(shard, token, url) => {
                        let r = request(shard, token, &format!("http://c{url}"));
                        let known = waiting.contains_key(&(shard, token))
                            || in_flight.iter().any(|(_, id)| *id == (shard, token));
                        if !known {
                            submitted += 1;
                        }
                        match gate.submit(r.clone()) {
                            Admission::Duplicate => prop_assert!(known),
                            Admission::Start(s) => {
                                prop_assert!(!known);
                                prop_assert_eq!(&s, &r);
                                accepted += 1;
                                start(vec![s], &mut in_flight, &mut waiting)?;
                            }
                            Admission::Queued => {
                                prop_assert!(!known);
                                accepted += 1;
                                waiting.insert((shard, token), r.url.clone());
                            }
                            Admission::Refused { shard: to, answer } => {
                                prop_assert!(!known);
                                prop_assert_eq!(to, shard);
                                prop_assert_eq!(answer.token, token);
                                prop_assert!(gate.waiting() >= queue_max);
                                refused += 1;
                            }
                        }
                    }
                    Step::Finish(i) => {
                        if in_flight.is_empty() {
                            prop_assert!(gate.finished("http://none").is_empty());
                            continue;
                        }
                        let (url, _) = in_flight.remove(i % in_flight.len());
                        let next = gate.finished(&url);
                        start(next, &mut in_flight, &mut waiting)?;
                    }
                }
                prop_assert_eq!(gate.in_flight(), in_flight.len());
                prop_assert_eq!(gate.waiting(), waiting.len());
                prop_assert!(gate.waiting() <= queue_max);
                // Work conserving: a free slot with a request whose coordinator is free
                // waiting would be a stall.
                if in_flight.len() < max_parallel {
                    prop_assert!(waiting
                        .values()
                        .all(|url| in_flight.iter().any(|(busy, _)| busy == url)));
                }
            }
            // Drain: finish whatever is in flight until nothing is; bounded by the requests
            // accepted.
            for _ in 0..=accepted {
                let Some((url, _)) = in_flight.first().cloned() else {
                    break;
                };
                in_flight.remove(0);
                let next = gate.finished(&url);
                start(next, &mut in_flight, &mut waiting)?;
            }
            prop_assert!(in_flight.is_empty() && waiting.is_empty());
            prop_assert_eq!((gate.in_flight(), gate.waiting()), (0, 0));
            prop_assert_eq!(started, accepted);
            prop_assert_eq!(accepted + refused, submitted);
        }
    }
}
