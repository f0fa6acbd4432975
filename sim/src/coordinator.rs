//! A simulated SLA coordinator service: the shards' real coordinator channels, admitted through
//! the real `CoordinatorGate` (as the scheduler's control thread does), answered by a scripted
//! coordinator after a fixed latency. It checks, from the coordinator's side, that it never has
//! two requests in flight for one URL (Aurora's guarantee), and counts what it saw.

use std::collections::BTreeMap;

use borealis_shards::coordinator::{
    coordinator_channels, Admission, CoordinatorAnswer, CoordinatorGate, CoordinatorLinks,
    CoordinatorOutcome, CoordinatorRequest, CoordinatorService,
};

use crate::invariants::Violation;

/// How the simulated coordinator answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoordinatorScript {
    /// Each task's first `deny_first` requests are refused; later ones allowed.
    pub deny_first: u32,
    /// How long an answer takes (simulated ms).
    pub latency_ms: u64,
}

/// What the coordinator saw over the run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    pub requests: u64,
    pub allowed: u64,
    pub denied: u64,
    /// The most requests in flight at once for one URL (Aurora: at most 1).
    pub max_in_flight_per_url: usize,
    /// The most in flight at once over all URLs.
    pub max_in_flight: usize,
}

impl CoordinatorStats {
    /// Adds another service's counts (maxima as maxima).
    pub fn add(&mut self, other: &CoordinatorStats) {
        self.requests += other.requests;
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.max_in_flight_per_url = self.max_in_flight_per_url.max(other.max_in_flight_per_url);
        self.max_in_flight = self.max_in_flight.max(other.max_in_flight);
    }
}

/// One scheduler instance's coordinator service.
#[derive(Debug)]
pub struct SimCoordinator {
    script: CoordinatorScript,
    service: CoordinatorService,
    gate: CoordinatorGate,
    /// Requests being answered: (due µs, request).
    in_flight: Vec<(u64, CoordinatorRequest)>,
    asked: BTreeMap<String, u32>,
    pub stats: CoordinatorStats,
}

impl SimCoordinator {
    /// The service and the shards' ends of its channels.
    pub fn new(
        script: CoordinatorScript,
        shards: usize,
        max_parallel: usize,
    ) -> (SimCoordinator, Vec<CoordinatorLinks>) {
        let (links, service) = coordinator_channels(shards);
        let coordinator = SimCoordinator {
            script,
            service,
            gate: CoordinatorGate::new(max_parallel, 1024),
            in_flight: Vec::new(),
            asked: BTreeMap::new(),
            stats: CoordinatorStats::default(),
        };
        (coordinator, links)
    }

    /// Takes new requests and answers those that are due; Err when the coordinator saw two
    /// requests for one URL at once.
    pub fn pump(&mut self, now_us: u64) -> Result<(), Violation> {
        let mut arrived = Vec::new();
        for rx in &self.service.requests {
            arrived.extend(rx.try_iter());
        }
        for request in arrived {
            match self.gate.submit(request) {
                Admission::Start(request) => self.start(request, now_us)?,
                Admission::Queued | Admission::Duplicate => {}
                Admission::Refused { shard, answer } => {
                    let _ = self.service.answers[shard].try_send(answer);
                }
            }
        }
        let mut due: Vec<CoordinatorRequest> = Vec::new();
        self.in_flight.retain(|(at, r)| {
            if *at <= now_us {
                due.push(r.clone());
                false
            } else {
                true
            }
        });
        for request in due {
            let asked = self.asked.entry(request.task_key.clone()).or_insert(0);
            *asked += 1;
            let outcome = if *asked > self.script.deny_first {
                self.stats.allowed += 1;
                CoordinatorOutcome::Allowed
            } else {
                self.stats.denied += 1;
                CoordinatorOutcome::Denied
            };
            let _ = self.service.answers[request.shard].try_send(CoordinatorAnswer {
                token: request.token,
                outcome,
            });
            for next in self.gate.finished(&request.url) {
                self.start(next, now_us)?;
            }
        }
        Ok(())
    }

    fn start(&mut self, request: CoordinatorRequest, now_us: u64) -> Result<(), Violation> {
        self.stats.requests += 1;
        let same_url = self
            .in_flight
            .iter()
            .filter(|(_, r)| r.url == request.url)
            .count();
        self.stats.max_in_flight_per_url = self.stats.max_in_flight_per_url.max(same_url + 1);
        if same_url > 0 {
            return Err(Violation::new(
                "coordinator_one_request_at_a_time",
                format!(
                    "a request for {} while {same_url} are in flight for {}",
                    request.task_key, request.url
                ),
            ));
        }
        self.in_flight
            .push((now_us + self.script.latency_ms * 1000, request));
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.in_flight.len());
        Ok(())
    }

    pub fn busy(&self) -> bool {
        !self.in_flight.is_empty()
    }
}
