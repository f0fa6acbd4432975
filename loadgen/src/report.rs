//! The run's report: what `--json` writes and the table printed at the end.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::update::UpdateRun;

/// Latency percentiles in milliseconds (all 0 when nothing was recorded).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            count: h.len(),
        }
    }
}

/// Counts over the whole run (window and drain).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub jobs_submitted: u64,
    pub jobs_acked: u64,
    pub jobs_refused: u64,
    pub tasks_submitted: u64,
    /// `LaunchTask`s received, relaunches included.
    pub tasks_placed: u64,
    pub tasks_relaunched: u64,
    pub tasks_running: u64,
    pub tasks_finished: u64,
    pub tasks_failed: u64,
    pub tasks_killed: u64,
    pub statuses_sent: u64,
    pub agents_lost: u64,
    /// The updated job's (`--update`) launches, RUNNING statuses and kills; not in the above.
    pub update_launched: u64,
    pub update_running: u64,
    pub update_killed: u64,
}

/// The rolling updates of `--update`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UpdateReport {
    /// `time`, `idle` or `during`.
    pub mode: String,
    pub instances: u32,
    /// Agents dedicated to the job (0: it shared the client jobs' agents).
    pub dedicated_agents: u32,
    pub batch_size: u32,
    pub watch_secs: u32,
    pub poll_ms: u64,
    /// From the job's `CreateJob` to every instance RUNNING.
    pub job_ready_secs: f64,
    /// Every verified update, in order.
    pub runs: Vec<UpdateRun>,
    pub median_secs: Option<f64>,
    pub median_instances_per_sec: Option<f64>,
    pub median_scheduler_secs: Option<f64>,
    /// `during`: the share of the timed window in which an update was rolling.
    pub window_coverage: Option<f64>,
    /// Oddities of the scheduler's answers (not errors).
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub agents: u32,
    pub clients: u32,
    /// The timed window actually measured.
    pub duration_secs: f64,
    /// How long the drain took (bounded by `--drain-secs`).
    pub drain_secs: f64,
    /// How long registering every agent took.
    pub registration_secs: f64,
    /// Rates over the timed window.
    pub tasks_per_sec_submitted: f64,
    pub tasks_per_sec_placed: f64,
    pub tasks_per_sec_running: f64,
    /// FINISHED and FAILED.
    pub tasks_per_sec_finished: f64,
    /// From the client's write of `CreateJob` to the agent's receipt of `LaunchTask`.
    pub latency_submit_to_assigned_ms: Percentiles,
    /// From the client's write of `CreateJob` to the agent's write of RUNNING.
    pub latency_submit_to_running_ms: Percentiles,
    /// At the end of the window (None without `--scheduler-pid`).
    pub scheduler_rss_bytes: Option<u64>,
    /// Before any agent connected.
    pub scheduler_rss_bytes_at_start: Option<u64>,
    pub scheduler_rss_bytes_after_registration: Option<u64>,
    /// Highest of the once-a-second samples in the window.
    pub scheduler_rss_bytes_max: Option<u64>,
    /// Submitted and not ended at the end of the window.
    pub active_tasks_at_end: u64,
    /// `scheduler_rss_bytes / active_tasks_at_end`.
    pub bytes_per_active_task: Option<f64>,
    /// `(scheduler_rss_bytes - scheduler_rss_bytes_after_registration) / active_tasks_at_end`:
    /// the jobs' and tasks' share (ended tasks the scheduler keeps in history included).
    pub bytes_per_active_task_above_registration: Option<f64>,
    /// `(scheduler_rss_bytes_after_registration - scheduler_rss_bytes_at_start) / agents`.
    pub bytes_per_agent: Option<f64>,
    /// CPU seconds (user + system) the scheduler used in the window (None without its pid).
    pub scheduler_cpu_secs: Option<f64>,
    /// CPU seconds the loadgen itself used in the window (it shares the machine).
    pub loadgen_cpu_secs: f64,
    /// WARN/ERROR lines the scheduler logged before the agents disconnected (with
    /// `--scheduler-log`), and the first few of them.
    pub scheduler_log_warnings: Option<u64>,
    pub scheduler_log_warning_examples: Vec<String>,
    pub totals: Totals,
    /// Jobs whose scheduler-side state counts were compared with the agents' reports.
    pub jobs_checked_by_query: u64,
    pub instances_per_job: u32,
    pub rate: f64,
    pub task_duration_ms: String,
    pub failure_rate: f64,
    pub max_active_tasks: u64,
    pub threads: usize,
    pub seed: u64,
    /// `--update`: `off`, `time`, `idle` or `during`.
    pub update_mode: String,
    pub update: Option<UpdateReport>,
    pub verified: bool,
    pub verification_errors: Vec<String>,
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "n/a".into(),
        |b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    )
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    /// The human-readable summary.
    pub fn table(&self) -> String {
        if self.update_mode == "time" {
            return self.update_table();
        }
        let mut out = String::new();
        let t = &self.totals;
        let _ = writeln!(
            out,
            "borealis-loadgen: {} agents, {} clients, jobs of {}, rate {}, tasks {} ms, failure rate {}, {} threads, seed {}",
            self.agents,
            self.clients,
            self.instances_per_job,
            if self.rate > 0.0 { format!("{}/s", self.rate) } else { "max".into() },
            self.task_duration_ms,
            self.failure_rate,
            self.threads,
            self.seed
        );
        let _ = writeln!(
            out,
            "window {:.1} s (registration {:.1} s before, drain {:.1} s after)",
            self.duration_secs, self.registration_secs, self.drain_secs
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  tasks/s        submitted {:>10.0}  placed {:>10.0}  running {:>10.0}  finished {:>10.0}",
            self.tasks_per_sec_submitted,
            self.tasks_per_sec_placed,
            self.tasks_per_sec_running,
            self.tasks_per_sec_finished
        );
        let _ = writeln!(
            out,
            "  latency ms                    {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "p50", "p90", "p99", "p99.9", "max", "samples"
        );
        for (name, p) in [
            ("submit->assigned", &self.latency_submit_to_assigned_ms),
            ("submit->running ", &self.latency_submit_to_running_ms),
        ] {
            let _ = writeln!(
                out,
                "    {name}            {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10}",
                p.p50, p.p90, p.p99, p.p999, p.max, p.count
            );
        }
        let bytes = |b: Option<f64>| b.map_or_else(|| "n/a".into(), |b| format!("{b:.0} B"));
        let _ = writeln!(
            out,
            "  scheduler RSS  {} at end of window ({} at start, {} after registration, max {})",
            mib(self.scheduler_rss_bytes),
            mib(self.scheduler_rss_bytes_at_start),
            mib(self.scheduler_rss_bytes_after_registration),
            mib(self.scheduler_rss_bytes_max),
        );
        let _ = writeln!(
            out,
            "  memory         active tasks {}: {} per active task ({} above registration); {} per agent",
            self.active_tasks_at_end,
            bytes(self.bytes_per_active_task),
            bytes(self.bytes_per_active_task_above_registration),
            bytes(self.bytes_per_agent),
        );
        let _ = writeln!(
            out,
            "  cpu in window  scheduler {} s, loadgen {:.1} s (of {:.1} s wall)",
            self.scheduler_cpu_secs
                .map_or_else(|| "n/a".into(), |s| format!("{s:.1}")),
            self.loadgen_cpu_secs,
            self.duration_secs
        );
        let _ = writeln!(
            out,
            "  totals         jobs {} (acked {}, refused {}); tasks submitted {}, placed {} ({} relaunches), running {}, finished {}, failed {}, killed {}; {} statuses; agents lost {}",
            t.jobs_submitted,
            t.jobs_acked,
            t.jobs_refused,
            t.tasks_submitted,
            t.tasks_placed,
            t.tasks_relaunched,
            t.tasks_running,
            t.tasks_finished,
            t.tasks_failed,
            t.tasks_killed,
            t.statuses_sent,
            t.agents_lost
        );
        self.update_lines(&mut out);
        self.log_and_verification_lines(&mut out);
        out
    }

    /// The summary of `--update time`: no client window, only the updates.
    fn update_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "borealis-loadgen: update timing, {} client agents idle, {} threads, seed {}",
            self.agents, self.threads, self.seed
        );
        self.update_lines(&mut out);
        let t = &self.totals;
        let _ = writeln!(
            out,
            "  totals         updated job: {} launches, {} running, {} kills; {} statuses; agents lost {}",
            t.update_launched, t.update_running, t.update_killed, t.statuses_sent, t.agents_lost
        );
        self.log_and_verification_lines(&mut out);
        out
    }

    fn update_lines(&self, out: &mut String) {
        let Some(u) = &self.update else {
            return;
        };
        let agents = if u.dedicated_agents > 0 {
            format!("{} dedicated agents", u.dedicated_agents)
        } else {
            "the client jobs' agents".to_string()
        };
        let _ = writeln!(
            out,
            "  update         {} ({}): {} instances on {agents}, batch {}, watch {} s, polled every {} ms; job RUNNING {:.2} s after CreateJob",
            u.mode, if u.mode == "idle" { "never updated" } else { "StartUpdate ack -> ROLLED_FORWARD" },
            u.instances, u.batch_size, u.watch_secs, u.poll_ms, u.job_ready_secs
        );
        for r in &u.runs {
            let _ = writeln!(
                out,
                "    update {:>3} -> generation {:>3}: {:>8.3} s ({:>7.0} instances/s; scheduler's own {:.3} s; ack {:.1} ms; {} polls; {} launches, {} kills)",
                r.update_id, r.generation, r.secs, r.instances_per_sec, r.scheduler_secs, r.ack_ms, r.polls, r.launches, r.kills
            );
        }
        if let (Some(secs), Some(rate)) = (u.median_secs, u.median_instances_per_sec) {
            let _ = writeln!(
                out,
                "    median of {}:  {secs:.3} s, {rate:.0} instances/s (scheduler's own {:.3} s)",
                u.runs.len(),
                u.median_scheduler_secs.unwrap_or(f64::NAN)
            );
        }
        if let Some(c) = u.window_coverage {
            let _ = writeln!(
                out,
                "    an update was rolling for {:.1}% of the timed window",
                c * 100.0
            );
        }
        for note in &u.notes {
            let _ = writeln!(out, "    note: {note}");
        }
    }

    fn log_and_verification_lines(&self, out: &mut String) {
        if let Some(n) = self.scheduler_log_warnings {
            let _ = writeln!(out, "  scheduler log  {n} WARN/ERROR lines during the run");
            for line in &self.scheduler_log_warning_examples {
                let _ = writeln!(out, "    {line}");
            }
        }
        if self.verified {
            let _ = writeln!(
                out,
                "  verification   PASSED ({} jobs' scheduler state counts checked)",
                self.jobs_checked_by_query
            );
        } else {
            let _ = writeln!(
                out,
                "  verification   FAILED ({} problems):",
                self.verification_errors.len()
            );
            for e in &self.verification_errors {
                let _ = writeln!(out, "    - {e}");
            }
        }
    }
}
