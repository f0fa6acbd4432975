//! Shard-local metrics, aggregated at scrape time.
//!
//! Each shard owns one [`ShardMetrics`] on cache lines of its own and is its only writer: an
//! increment is a plain load and store (`Relaxed`), never a locked read-modify-write, and no two
//! shards ever write the same cache line. A scrape (on the control thread) reads every shard's
//! block and renders Prometheus text exposition 0.0.4 through the `prometheus` crate.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use borealis_core::TaskState;
use crossbeam_utils::CachePadded;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::Encoder as _;

/// A counter written by one thread only.
#[derive(Debug, Default)]
pub struct LocalCounter(AtomicU64);

impl LocalCounter {
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: a load and a store, no lock prefix.
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A gauge written by one thread only.
#[derive(Debug, Default)]
pub struct LocalGauge(AtomicU64);

impl LocalGauge {
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds (seconds) of the latency histograms: 50 µs .. 60 s.
pub const LATENCY_BUCKETS_SECONDS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 60.0,
];
const BUCKETS: usize = LATENCY_BUCKETS_SECONDS.len();

/// A fixed-bucket histogram written by one thread only.
#[derive(Debug, Default)]
pub struct LocalHistogram {
    /// Per bucket (not cumulative); the last slot counts observations above every bound.
    counts: [LocalCounter; BUCKETS + 1],
    sum_nanos: LocalCounter,
}

impl LocalHistogram {
    #[inline]
    pub fn observe_nanos(&self, nanos: u64) {
        let seconds = nanos as f64 / 1e9;
        let slot = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS);
        self.counts[slot].inc();
        self.sum_nanos.add(nanos);
    }

    fn add_into(&self, cumulative: &mut [u64; BUCKETS + 1], sum_nanos: &mut u64) {
        for (slot, c) in self.counts.iter().enumerate() {
            cumulative[slot] += c.get();
        }
        *sum_nanos += self.sum_nanos.get();
    }
}

/// Schedule attempt results.
#[derive(Clone, Copy, Debug)]
pub enum AttemptResult {
    Placed = 0,
    NoFit = 1,
}
const ATTEMPT_RESULTS: [&str; 2] = ["placed", "no_fit"];

/// Why a pending task is not yet placed.
/// The `reason` label of `borealis_pending_tasks`: `queued` (not tried yet), then the coarse
/// why-pending kinds (core's `PendingReasonKind::as_str`, the dominant reason of the job's last
/// failed attempt), and `unexplained` for a blocked job whose explanation is not in yet.
pub const PENDING_REASONS: [&str; 10] = [
    "queued",
    "resources",
    "constraint",
    "limit",
    "dedicated",
    "quota",
    "throttled",
    "preemption",
    "no_agents",
    "unexplained",
];

/// The label index of a why-pending kind.
pub fn pending_reason_index(kind: Option<borealis_core::placement::PendingReasonKind>) -> usize {
    let label = kind.map_or("unexplained", |k| k.as_str());
    PENDING_REASONS
        .iter()
        .position(|l| *l == label)
        .expect("every kind has a label")
}

/// How long a shard may go without completing a round before the scheduler counts as unable
/// to schedule: `/health` and `/leaderhealth` answer 503 naming it (ARCHITECTURE.md, "Fail-stop
/// and restart after a crash"). 100 ticks: far beyond any round a healthy shard runs (a long
/// one is a commit's fsync on a slow disk), short enough for a supervisor or a load balancer
/// to act on.
pub const SHARD_STALL_BOUND: std::time::Duration = std::time::Duration::from_secs(5);

/// The wall clock in unix ms (0 before 1970).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A shard that completed no round within the bound (see [`Metrics::stalled_shards`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StalledShard {
    pub shard: usize,
    /// Unix ms of its last completed round; 0 if it never started.
    pub last_round_unix_ms: u64,
}

/// One shard's metrics.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    pub transitions_total: [LocalCounter; TaskState::COUNT],
    pub tasks_by_state: [LocalGauge; TaskState::COUNT],
    pub pending_by_reason: [LocalGauge; PENDING_REASONS.len()],
    pub schedule_attempts_total: [LocalCounter; ATTEMPT_RESULTS.len()],
    pub round_duration: LocalHistogram,
    pub placement_latency: LocalHistogram,
    pub rounds_total: LocalCounter,
    /// The shard's liveness: the unix ms at the end of its last completed round (set once as
    /// it starts, before its first). An idle shard still completes a round per tick (50 ms),
    /// so a value older than [`SHARD_STALL_BOUND`] means the shard is stuck or gone (see
    /// [`Metrics::stalled_shards`]); 0: it never started.
    pub last_round_unix_ms: LocalGauge,
    pub offers_held: LocalGauge,
    pub offers_lent_out: LocalGauge,
    pub offers_borrowed_total: LocalCounter,
    /// Preemption slots claimed (a search found room) and tasks preempted.
    pub preemption_slots_claimed_total: LocalCounter,
    pub preemptions_total: LocalCounter,
    /// Reconciliation rounds started with this shard's agents: [explicit, implicit].
    pub reconciliations_total: [LocalCounter; 2],
    /// Kills sent again because the agent had not answered.
    pub kill_retries_total: LocalCounter,
    /// Tasks moved off draining hosts (to DRAINING).
    pub drained_total: LocalCounter,
    pub agents_connected: LocalGauge,
    pub connections: LocalGauge,
    pub jobs: LocalGauge,
    /// 1 while the shard acts as (part of) the leader.
    pub leading: LocalGauge,
    pub inbound_queue_depth: LocalGauge,
    pub peer_outbox_depth: LocalGauge,
    pub messages_received_total: LocalCounter,
    pub protocol_errors_total: LocalCounter,
    /// Requests and registrations refused for authentication or authorization.
    pub auth_refusals_total: LocalCounter,
    // Limits (shards/src/limits.rs, ARCHITECTURE.md's table):
    /// Replies no frame could carry, answered with an error instead (a bug if ever non-zero).
    pub replies_too_large_total: LocalCounter,
    /// Connections closed at accept because the shard held its share of `--max-connections`.
    pub connections_refused_total: LocalCounter,
    /// Connections closed for sending no whole message in time: [first message, idle].
    pub connections_timed_out_total: [LocalCounter; 2],
    /// Strings from peers cut to their bound before being stored (status messages, sandbox
    /// paths).
    pub peer_strings_truncated_total: LocalCounter,
    /// Bytes the shard's connection readers hold of frames not yet complete.
    pub inbound_partial_bytes: LocalGauge,
    /// Cluster-wide requests (ListJobs, ListAgents, every job's updates, QueryTask) this shard
    /// is gathering, and those it refused at its limits (`shard::gather`).
    pub gathers_in_flight: LocalGauge,
    pub gathers_refused_total: LocalCounter,
}

impl ShardMetrics {
    pub fn attempt(&self, result: AttemptResult, n: u64) {
        self.schedule_attempts_total[result as usize].add(n);
    }
}

/// Every shard's metrics plus process-wide facts, as the control plane sees them.
#[derive(Debug)]
pub struct Metrics {
    pub shards: Vec<CachePadded<ShardMetrics>>,
    pub cluster_name: String,
    /// 1 while this scheduler leads (the embedded scheduler always does).
    pub leader: LocalGauge,
    /// Audit log entries dropped (its queue full or its writer gone), shared with the
    /// `AuditLog` (many writers: a plain atomic).
    pub audit_dropped_total: Arc<AtomicU64>,
}

impl Metrics {
    /// True once every shard acts as the leader (after taking the lead, before serving).
    pub fn all_shards_leading(&self) -> bool {
        self.shards.iter().all(|s| s.leading.get() == 1)
    }

    /// The shards whose last round ended more than `bound` before `now_unix_ms`, or that
    /// never started one: while any is, the scheduler cannot schedule (that shard's jobs and
    /// agents are served by nobody). A wall clock stepped back never makes a shard look
    /// stalled; one stepped forward by more than `bound` may, until the next round (a tick).
    pub fn stalled_shards(
        &self,
        now_unix_ms: u64,
        bound: std::time::Duration,
    ) -> Vec<StalledShard> {
        let bound_ms = bound.as_millis() as u64;
        self.shards
            .iter()
            .enumerate()
            .filter_map(|(shard, s)| {
                let last = s.last_round_unix_ms.get();
                (last == 0 || now_unix_ms.saturating_sub(last) > bound_ms).then_some(StalledShard {
                    shard,
                    last_round_unix_ms: last,
                })
            })
            .collect()
    }

    pub fn new(shard_count: usize, cluster_name: &str) -> Arc<Metrics> {
        Arc::new(Metrics {
            shards: (0..shard_count)
                .map(|_| CachePadded::new(ShardMetrics::default()))
                .collect(),
            cluster_name: cluster_name.to_string(),
            leader: LocalGauge::default(),
            audit_dropped_total: Arc::default(),
        })
    }

    /// Renders every metric in Prometheus text exposition format 0.0.4.
    pub fn render_text(&self) -> String {
        let mut families = self.gather();
        families.extend(prometheus::gather());
        let mut out = Vec::with_capacity(16 * 1024);
        prometheus::TextEncoder::new()
            .encode(&families, &mut out)
            .expect("text encoding of well-formed families");
        String::from_utf8(out).expect("text exposition is UTF-8")
    }

    /// Aggregates the shards' blocks into metric families.
    pub fn gather(&self) -> Vec<MetricFamily> {
        let mut families = Vec::new();
        let shard_label = |i: usize| ("shard", i.to_string());

        families.push(gauge_family(
            "borealis_build_info",
            "Build information; the value is always 1.",
            vec![(
                vec![
                    ("version", env!("CARGO_PKG_VERSION").to_string()),
                    ("cluster", self.cluster_name.clone()),
                ],
                1.0,
            )],
        ));
        families.push(gauge_family(
            "borealis_leader",
            "1 when this scheduler is the leader.",
            vec![(vec![], self.leader.get() as f64)],
        ));

        let states = TaskState::ALL.iter().map(|s| s.as_str().to_string());
        let by_state = |pick: &dyn Fn(&ShardMetrics, usize) -> u64| -> Vec<(Vec<(&'static str, String)>, f64)> {
            states
                .clone()
                .enumerate()
                .map(|(i, name)| {
                    let total: u64 = self.shards.iter().map(|s| pick(s, i)).sum();
                    (vec![("state", name)], total as f64)
                })
                .collect()
        };
        families.push(gauge_family(
            "borealis_tasks",
            "Tasks the scheduler holds, by state.",
            by_state(&|s, i| s.tasks_by_state[i].get()),
        ));
        families.push(counter_family(
            "borealis_task_transitions_total",
            "Task state transitions, by the state entered.",
            by_state(&|s, i| s.transitions_total[i].get()),
        ));
        families.push(gauge_family(
            "borealis_pending_tasks",
            "PENDING and THROTTLED tasks not yet placed, by reason.",
            PENDING_REASONS
                .iter()
                .enumerate()
                .map(|(i, reason)| {
                    let total: u64 = self
                        .shards
                        .iter()
                        .map(|s| s.pending_by_reason[i].get())
                        .sum();
                    (vec![("reason", reason.to_string())], total as f64)
                })
                .collect(),
        ));
        families.push(counter_family(
            "borealis_schedule_attempts_total",
            "Placement attempts, by result.",
            ATTEMPT_RESULTS
                .iter()
                .enumerate()
                .map(|(i, result)| {
                    let total: u64 = self
                        .shards
                        .iter()
                        .map(|s| s.schedule_attempts_total[i].get())
                        .sum();
                    (vec![("result", result.to_string())], total as f64)
                })
                .collect(),
        ));
        let per_shard =
            |pick: &dyn Fn(&ShardMetrics) -> u64| -> Vec<(Vec<(&'static str, String)>, f64)> {
                self.shards
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (vec![shard_label(i)], pick(s) as f64))
                    .collect()
            };
        families.push(gauge_family(
            "borealis_offers_held",
            "Offers in each shard's placement index (its own and borrowed).",
            per_shard(&|s| s.offers_held.get()),
        ));
        families.push(gauge_family(
            "borealis_offers_lent",
            "Offers of each shard's agents currently lent to a peer.",
            per_shard(&|s| s.offers_lent_out.get()),
        ));
        families.push(counter_family(
            "borealis_offers_borrowed_total",
            "Offers each shard borrowed from peers.",
            per_shard(&|s| s.offers_borrowed_total.get()),
        ));
        families.push(counter_family(
            "borealis_preemption_slots_claimed_total",
            "Preemption slots a search found and claimed, per shard of the preemptor.",
            per_shard(&|s| s.preemption_slots_claimed_total.get()),
        ));
        families.push(counter_family(
            "borealis_preemptions_total",
            "Tasks preempted (moved to PREEMPTING) for production tasks, per shard of the victim.",
            per_shard(&|s| s.preemptions_total.get()),
        ));
        families.push(counter_family(
            "borealis_reconciliations_total",
            "Reconciliation rounds started with the agents, by kind.",
            ["explicit", "implicit"]
                .iter()
                .enumerate()
                .map(|(i, kind)| {
                    let total: u64 = self
                        .shards
                        .iter()
                        .map(|s| s.reconciliations_total[i].get())
                        .sum();
                    (vec![("kind", kind.to_string())], total as f64)
                })
                .collect(),
        ));
        families.push(counter_family(
            "borealis_kill_retries_total",
            "Kills sent again to an agent that had not answered, per shard of the task.",
            per_shard(&|s| s.kill_retries_total.get()),
        ));
        families.push(counter_family(
            "borealis_drained_tasks_total",
            "Tasks moved off hosts being drained for maintenance, per shard of the task.",
            per_shard(&|s| s.drained_total.get()),
        ));
        families.push(gauge_family(
            "borealis_agents_connected",
            "Agents registered on each shard's connections.",
            per_shard(&|s| s.agents_connected.get()),
        ));
        families.push(gauge_family(
            "borealis_connections",
            "Open connections (agents and clients) per shard.",
            per_shard(&|s| s.connections.get()),
        ));
        families.push(gauge_family(
            "borealis_jobs",
            "Jobs each shard owns.",
            per_shard(&|s| s.jobs.get()),
        ));
        families.push(gauge_family(
            "borealis_shard_inbound_queue_depth",
            "Items waiting in each shard's inbound queue at the end of its last round.",
            per_shard(&|s| s.inbound_queue_depth.get()),
        ));
        families.push(gauge_family(
            "borealis_shard_peer_outbox_depth",
            "Messages each shard holds for saturated peers.",
            per_shard(&|s| s.peer_outbox_depth.get()),
        ));
        families.push(counter_family(
            "borealis_shard_rounds_total",
            "Scheduling rounds each shard ran.",
            per_shard(&|s| s.rounds_total.get()),
        ));
        families.push(gauge_family(
            "borealis_shard_last_round_timestamp_seconds",
            "Unix time at which each shard completed its last scheduling round (its liveness: an idle shard completes one per 50 ms tick).",
            self.shards
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let ms = s.last_round_unix_ms.get();
                    (vec![shard_label(i)], ms as f64 / 1000.0)
                })
                .collect(),
        ));
        families.push(counter_family(
            "borealis_messages_received_total",
            "Wire messages received from agents and clients, per shard.",
            per_shard(&|s| s.messages_received_total.get()),
        ));
        families.push(counter_family(
            "borealis_protocol_errors_total",
            "Connections dropped for protocol errors, per shard.",
            per_shard(&|s| s.protocol_errors_total.get()),
        ));
        families.push(counter_family(
            "borealis_auth_refusals_total",
            "Requests and agent registrations refused for authentication or authorization, per shard.",
            per_shard(&|s| s.auth_refusals_total.get()),
        ));
        families.push(counter_family(
            "borealis_replies_too_large_total",
            "Replies too large for any frame, answered with an error instead, per shard.",
            per_shard(&|s| s.replies_too_large_total.get()),
        ));
        families.push(counter_family(
            "borealis_connections_refused_total",
            "Connections closed at accept because the shard held its share of --max-connections.",
            per_shard(&|s| s.connections_refused_total.get()),
        ));
        families.push(counter_family(
            "borealis_connections_timed_out_total",
            "Connections closed for sending nothing in time, per shard and timeout \
             (first_message: --connection-first-message-timeout, idle: --client-idle-timeout).",
            ["first_message", "idle"]
                .iter()
                .enumerate()
                .flat_map(|(i, which)| {
                    self.shards.iter().enumerate().map(move |(shard, s)| {
                        (
                            vec![("shard", shard.to_string()), ("timeout", which.to_string())],
                            s.connections_timed_out_total[i].get() as f64,
                        )
                    })
                })
                .collect(),
        ));
        families.push(counter_family(
            "borealis_peer_strings_truncated_total",
            "Status messages and sandbox paths from agents cut to their bound, per shard.",
            per_shard(&|s| s.peer_strings_truncated_total.get()),
        ));
        families.push(gauge_family(
            "borealis_inbound_partial_bytes",
            "Bytes held of frames not yet complete, per shard (bounded per connection by the frame limit, per shard by the inbound budget).",
            per_shard(&|s| s.inbound_partial_bytes.get()),
        ));
        families.push(gauge_family(
            "borealis_gathers_in_flight",
            "Cluster-wide requests (job and agent lists, every job's updates, task lookups) each shard is gathering from every shard.",
            per_shard(&|s| s.gathers_in_flight.get()),
        ));
        families.push(counter_family(
            "borealis_gathers_refused_total",
            "Cluster-wide requests refused because the shard or the connection had its most in flight, per shard.",
            per_shard(&|s| s.gathers_refused_total.get()),
        ));
        families.push(counter_family(
            "borealis_audit_dropped_total",
            "Audit log entries dropped because its queue was full or its writer had stopped.",
            vec![(vec![], self.audit_dropped_total.load(Relaxed) as f64)],
        ));
        families.push(self.histogram_family(
            "borealis_scheduling_round_duration_seconds",
            "Duration of one scheduling round (drain, place, flush).",
            |s| &s.round_duration,
        ));
        families.push(self.histogram_family(
            "borealis_placement_latency_seconds",
            "Time from a task's creation (submit or reschedule) to ASSIGNED.",
            |s| &s.placement_latency,
        ));
        families
    }

    fn histogram_family(
        &self,
        name: &str,
        help: &str,
        pick: impl Fn(&ShardMetrics) -> &LocalHistogram,
    ) -> MetricFamily {
        let mut counts = [0u64; BUCKETS + 1];
        let mut sum_nanos = 0u64;
        for s in &self.shards {
            pick(s).add_into(&mut counts, &mut sum_nanos);
        }
        let mut h = Histogram::default();
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(BUCKETS);
        for (slot, bound) in LATENCY_BUCKETS_SECONDS.iter().enumerate() {
            cumulative += counts[slot];
            let mut b = Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        h.set_bucket(buckets);
        cumulative += counts[BUCKETS];
        h.set_sample_count(cumulative);
        h.set_sample_sum(sum_nanos as f64 / 1e9);
        let mut m = Metric::default();
        m.set_histogram(h);
        family(name, help, MetricType::HISTOGRAM, vec![m])
    }
}

fn labels(pairs: Vec<(&'static str, String)>) -> Vec<LabelPair> {
    pairs
        .into_iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v);
            l
        })
        .collect()
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

/// One family of labelled samples; `sample` turns a value into the metric's kind.
fn labelled_family(
    name: &str,
    help: &str,
    kind: MetricType,
    values: Vec<(Vec<(&'static str, String)>, f64)>,
    sample: impl Fn(&mut Metric, f64),
) -> MetricFamily {
    let metrics = values
        .into_iter()
        .map(|(pairs, v)| {
            let mut m = Metric::default();
            m.set_label(labels(pairs));
            sample(&mut m, v);
            m
        })
        .collect();
    family(name, help, kind, metrics)
}

fn gauge_family(
    name: &str,
    help: &str,
    values: Vec<(Vec<(&'static str, String)>, f64)>,
) -> MetricFamily {
    labelled_family(name, help, MetricType::GAUGE, values, |m, v| {
        let mut g = Gauge::default();
        g.set_value(v);
        m.set_gauge(g);
    })
}

fn counter_family(
    name: &str,
    help: &str,
    values: Vec<(Vec<(&'static str, String)>, f64)>,
) -> MetricFamily {
    labelled_family(name, help, MetricType::COUNTER, values, |m, v| {
        let mut c = Counter::default();
        c.set_value(v);
        m.set_counter(c);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aggregated_text_exposition() {
        let metrics = Metrics::new(2, "test");
        metrics.shards[0].tasks_by_state[TaskState::Running as usize].set(3);
        metrics.shards[1].tasks_by_state[TaskState::Running as usize].set(4);
        metrics.shards[0].attempt(AttemptResult::Placed, 5);
        metrics.shards[1].placement_latency.observe_nanos(2_000_000);
        metrics.shards[0]
            .placement_latency
            .observe_nanos(90_000_000_000);
        let text = metrics.render_text();
        assert!(
            text.contains("borealis_tasks{state=\"RUNNING\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("borealis_schedule_attempts_total{result=\"placed\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("borealis_placement_latency_seconds_bucket{le=\"0.0025\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("borealis_placement_latency_seconds_bucket{le=\"+Inf\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("borealis_placement_latency_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE borealis_task_transitions_total counter"),
            "{text}"
        );
        assert!(text.contains("borealis_build_info{"), "{text}");
    }

    #[test]
    fn a_shard_without_a_recent_round_is_stalled() {
        let metrics = Metrics::new(3, "test");
        let now = 1_700_000_000_000;
        let bound = SHARD_STALL_BOUND;
        metrics.shards[0].last_round_unix_ms.set(now - 10);
        metrics.shards[1]
            .last_round_unix_ms
            .set(now - bound.as_millis() as u64 - 1);
        // Shard 2 never started.
        assert_eq!(
            metrics.stalled_shards(now, bound),
            vec![
                StalledShard {
                    shard: 1,
                    last_round_unix_ms: now - bound.as_millis() as u64 - 1
                },
                StalledShard {
                    shard: 2,
                    last_round_unix_ms: 0
                },
            ]
        );
        metrics.shards[1].last_round_unix_ms.set(now);
        metrics.shards[2].last_round_unix_ms.set(now + 1_000);
        // Exactly at the bound is still live; a clock stepped back is too.
        metrics.shards[0]
            .last_round_unix_ms
            .set(now - bound.as_millis() as u64);
        assert_eq!(metrics.stalled_shards(now, bound), vec![]);
        let text = metrics.render_text();
        assert!(
            text.contains("borealis_shard_last_round_timestamp_seconds{shard=\"1\"} 1700000000"),
            "{text}"
        );
    }

    #[test]
    fn local_counter_counts() {
        let c = LocalCounter::default();
        c.inc();
        c.add(41);
        assert_eq!(c.get(), 42);
    }
}
