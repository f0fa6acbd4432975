//! `borealis-loadgen`: simulated agents and clients speaking the real protocol over real TCP
//! to a running `borealis scheduler`, measuring throughput, latency and the scheduler's memory,
//! and verifying the run from the agents' side.
//!
//! A run: raise the open-file limit; open and register `--agents` agent connections (at most
//! `--connect-concurrency` at once) and wait for all; connect `--clients`; then the timed
//! window of `--duration` seconds in which clients submit jobs; then a bounded drain
//! (submissions stopped) in which submitted tasks end; then verification; then the report.
//!
//! Verification (no scheduler query on the hot path, so the loadgen does not perturb what it
//! measures): every `CreateJob` got an answer, and an `Ack`; every instance of an acked job was
//! launched and (for finite tasks) ended exactly once; no instance was launched while active
//! on another agent; no agent was over-committed (resources, ports) or got a task its job's
//! constraint forbids; no agent lost its connection; and, for a sample of jobs, the
//! scheduler's own state counts (`QueryJob`) match what the agents reported.
//!
//! With `--update` a service job of `--update-instances` is created once the agents registered
//! (on `--update-agents` agents of its own, or sharing the others) and waited for until every
//! instance is RUNNING; then `time` rolls `--update-repeat` updates of it one after another
//! with no client load and reports their times, `during` rolls updates back to back through
//! the timed window, and `idle` leaves it running (the baseline of `during`). Each update is
//! verified (see [`update`]); the job's tasks are counted apart from the client jobs'.

mod agent;
mod client;
mod config;
mod conn;
mod report;
mod shared;
pub mod update;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use borealis_core::TaskState;
use tokio::sync::{watch, Semaphore};

pub use config::{Config, ConstraintKind, ConstraintMix, TaskDuration, UpdateMode};
pub use report::{Percentiles, Report, Totals, UpdateReport};

use crate::agent::AgentEnd;
use crate::client::Expected;
use crate::shared::{Shared, Snapshot, REPLY_ACK, REPLY_NONE};

/// Where the run is; every agent and client watches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Agents registering, clients connecting.
    Setup,
    /// The timed window: clients submit.
    Run,
    /// Submissions stopped; waiting for answers and for tasks to end.
    Drain,
    /// Everyone disconnects.
    Stop,
}

/// Jobs whose scheduler-side state counts are compared at the end.
const QUERY_SAMPLE_JOBS: usize = 32;
/// How long the end-of-run `QueryJob` check may take.
const QUERY_CHECK_MAX: Duration = Duration::from_secs(10);
/// The scheduler's default `--history-max-per-job-threshold`: a job with more instances has
/// ended tasks the scheduler no longer counts, so the query check skips it.
const SCHEDULER_HISTORY_DEFAULT: usize = 100;
/// Examples named per kind of per-instance verification failure.
const EXAMPLES_PER_KIND: usize = 5;
/// How long stopped agents and clients get to close.
const STOP_WAIT: Duration = Duration::from_secs(20);

/// Runs the load generator against the scheduler in `config` and returns its report (whose
/// `verified` says whether the run was correct). Builds its own tokio runtime.
pub fn run(config: Config) -> anyhow::Result<Report> {
    config.validate()?;
    raise_open_files_limit(u64::from(config.total_agents()) + u64::from(config.clients) + 256)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads)
        .enable_all()
        .thread_name("loadgen")
        .build()
        .context("building the tokio runtime")?;
    let report = runtime.block_on(run_async(config));
    runtime.shutdown_timeout(Duration::from_secs(2));
    report
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; fails when even that is below `needed`.
fn raise_open_files_limit(needed: u64) -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            anyhow::bail!(
                "getrlimit(RLIMIT_NOFILE): {}",
                std::io::Error::last_os_error()
            );
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                anyhow::bail!(
                    "setrlimit(RLIMIT_NOFILE, {}): {}",
                    limit.rlim_max,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    anyhow::ensure!(
        limit.rlim_cur >= needed,
        "the open-file limit ({}) is below the {needed} sockets this run needs: raise the hard limit (ulimit -Hn)",
        limit.rlim_cur
    );
    Ok(())
}

/// The scheduler's resident memory, from `/proc/PID/status`.
pub fn read_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The scheduler's user + system CPU time, from `/proc/PID/stat`.
pub fn read_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// This process's user + system CPU time.
fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct passed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// WARN and ERROR lines in the first `len` bytes of the scheduler's log (what it logged before
/// the agents disconnected): their count and the first few, without colour codes.
fn scan_log(path: &std::path::Path, len: u64) -> (u64, Vec<String>) {
    const EXAMPLES: usize = 10;
    let Ok(bytes) = std::fs::read(path) else {
        return (0, Vec::new());
    };
    let text = String::from_utf8_lossy(&bytes[..(len as usize).min(bytes.len())]).into_owned();
    let mut count = 0;
    let mut examples = Vec::new();
    for line in text.lines() {
        let plain = strip_ansi(line);
        if plain.contains(" WARN ") || plain.contains(" ERROR ") {
            count += 1;
            if examples.len() < EXAMPLES {
                examples.push(plain);
            }
        }
    }
    (count, examples)
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn progress_line(shared: &Shared, elapsed: f64, last: &Snapshot, now: &Snapshot, label: &str) {
    let secs = match (last.at, now.at) {
        (Some(a), Some(b)) => (b - a).as_secs_f64().max(1e-3),
        _ => 1.0,
    };
    let rate = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / secs;
    let c = &shared.counters;
    eprintln!(
        "[{label} {elapsed:6.1}s] submitted {:>8.0}/s  placed {:>8.0}/s  running {:>8.0}/s  finished {:>8.0}/s | active {:>7}  unanswered jobs {:>5}  agents {}/{}  errors {}",
        rate(last.submitted, now.submitted),
        rate(last.placed, now.placed),
        rate(last.running, now.running),
        rate(last.ended(), now.ended()),
        c.active_tasks(),
        c.submitted_jobs.load(Relaxed)
            .saturating_sub(c.acked_jobs.load(Relaxed) + c.rejected_jobs.load(Relaxed)),
        c.agents_registered.load(Relaxed) - c.agents_lost.load(Relaxed),
        shared.config.total_agents(),
        shared.errors.count(),
    );
}

/// True when every submitted job was answered and every accepted task reached its end
/// (RUNNING, for tasks that never end).
fn drained(shared: &Shared) -> bool {
    let c = &shared.counters;
    let answered = c.acked_jobs.load(Relaxed) + c.rejected_jobs.load(Relaxed);
    if answered < c.submitted_jobs.load(Relaxed) {
        return false;
    }
    let accepted = c.acked_tasks.load(Relaxed);
    match shared.config.task_duration_ms {
        TaskDuration::Infinite => {
            c.running.load(Relaxed) >= accepted && c.placed.load(Relaxed) >= accepted
        }
        TaskDuration::Millis { .. } => {
            c.finished.load(Relaxed) + c.failed.load(Relaxed) >= accepted
        }
    }
}

async fn run_async(config: Config) -> anyhow::Result<Report> {
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        % 10_000_000_000;
    let mut shared = Shared::new(config.clone(), run_id);
    shared.security = conn::Security::from_config(&config)?;
    if !config.quiet && (shared.security.tls() || shared.security.token.is_some()) {
        eprintln!(
            "loadgen: {}{}",
            if shared.security.tls() {
                if config.tls_cert.is_some() {
                    "TLS (agents present --tls-cert)"
                } else {
                    "TLS (agents present no certificate)"
                }
            } else {
                "plain TCP"
            },
            if shared.security.token.is_some() {
                ", clients authenticate with a token"
            } else {
                ""
            }
        );
    }
    let shared = Arc::new(shared);
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let pid = config.scheduler_pid;
    let rss = || pid.and_then(read_rss_bytes);
    let scheduler_cpu = || pid.and_then(read_cpu_secs);
    let rss_at_start = rss();

    // ---------------------------------------------------------------- agents register
    let setup_started = Instant::now();
    let slots = Arc::new(Semaphore::new(config.connect_concurrency));
    let all_agents = config.total_agents();
    let mut agents = Vec::with_capacity(all_agents as usize);
    let failed_agents = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for index in 0..all_agents {
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        let shared = shared.clone();
        let phase = phase_rx.clone();
        let failed = failed_agents.clone();
        agents.push(tokio::spawn(async move {
            let end = agent::run_agent(index, shared.clone(), permit, phase).await;
            match &end {
                AgentEnd::NeverRegistered(_) => {
                    failed.fetch_add(1, Relaxed);
                }
                AgentEnd::Lost(_) if shared.stopping.load(Relaxed) => {}
                AgentEnd::Lost(why) => {
                    shared.counters.agents_lost.fetch_add(1, Relaxed);
                    shared
                        .errors
                        .push(format!("agent {}: {why}", agent::agent_name(index)));
                }
                AgentEnd::Stopped => {}
            }
            end
        }));
    }
    let register_deadline = setup_started + Duration::from_secs_f64(config.register_timeout_secs);
    let mut last_note = Instant::now();
    loop {
        let registered = shared.counters.agents_registered.load(Relaxed);
        let failed = failed_agents.load(Relaxed);
        if registered + failed >= u64::from(all_agents) || Instant::now() >= register_deadline {
            if failed > 0 || registered < u64::from(all_agents) {
                let _ = phase_tx.send(Phase::Stop);
                let mut first = None;
                for handle in agents {
                    if let Ok(Ok(AgentEnd::NeverRegistered(why))) =
                        tokio::time::timeout(STOP_WAIT, handle).await
                    {
                        first.get_or_insert(why);
                    }
                }
                anyhow::bail!(
                    "only {registered} of {} agents registered within {:.0} s ({failed} failed); first failure: {}",
                    all_agents,
                    config.register_timeout_secs,
                    first.unwrap_or_else(|| "none (timed out)".into())
                );
            }
            break;
        }
        if !config.quiet && last_note.elapsed() >= Duration::from_secs(1) {
            last_note = Instant::now();
            eprintln!(
                "[setup {:6.1}s] agents registered {registered}/{}",
                setup_started.elapsed().as_secs_f64(),
                all_agents
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let registration_secs = setup_started.elapsed().as_secs_f64();
    if !config.quiet {
        eprintln!(
            "[setup {registration_secs:6.1}s] all {} agents registered",
            all_agents
        );
    }
    // Let the scheduler settle the registrations' offers before measuring its baseline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_after_registration = rss();

    // ---------------------------------------------------------------- the updated job
    let mut driver = None;
    let mut job_ready_secs = 0.0;
    let mut update_setup_failed = false;
    if config.update != UpdateMode::Off {
        let key = update::register_job(&shared);
        let ready = match update::Driver::connect(shared.clone(), key).await {
            Ok(mut d) => {
                let ready = d.create_and_wait().await;
                driver = Some(d);
                ready
            }
            Err(e) => Err(e),
        };
        match ready {
            Ok(secs) => {
                job_ready_secs = secs;
                if !config.quiet {
                    eprintln!(
                        "[setup] the updated job's {} instances are RUNNING ({secs:.2} s after CreateJob)",
                        config.update_instances
                    );
                }
            }
            Err(e) => {
                shared.errors.push(e);
                update_setup_failed = true;
            }
        }
    }
    if config.update == UpdateMode::Time || update_setup_failed {
        // Timing updates (no client window), or the updated job did not come up.
        let mut runs = Vec::new();
        if let Some(d) = driver.as_mut().filter(|_| !update_setup_failed) {
            for _ in 0..config.update_repeat {
                match d.roll().await {
                    Ok(run) => {
                        if !config.quiet {
                            eprintln!(
                                "[update] {} rolled {} instances to generation {} in {:.3} s ({:.0} instances/s)",
                                run.update_id,
                                config.update_instances,
                                run.generation,
                                run.secs,
                                run.instances_per_sec
                            );
                        }
                        runs.push(run);
                    }
                    Err(e) => {
                        shared.errors.push(e);
                        break;
                    }
                }
            }
            if shared.errors.count() == 0 {
                for p in d.final_problems() {
                    shared.errors.push(p);
                }
            }
        }
        let log_len_at_stop = config
            .scheduler_log
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len());
        shared.stopping.store(true, Relaxed);
        let _ = phase_tx.send(Phase::Stop);
        for handle in agents {
            let _ = tokio::time::timeout(STOP_WAIT, handle).await;
        }
        let (log_warnings, log_examples) = match (&config.scheduler_log, log_len_at_stop) {
            (Some(path), Some(len)) => {
                let (n, examples) = scan_log(path, len);
                (Some(n), examples)
            }
            _ => (None, Vec::new()),
        };
        let notes = driver.map(|d| d.notes).unwrap_or_default();
        let errors = shared.errors.list();
        return Ok(Report {
            agents: config.agents,
            registration_secs,
            scheduler_rss_bytes: rss(),
            scheduler_rss_bytes_at_start: rss_at_start,
            scheduler_rss_bytes_after_registration: rss_after_registration,
            scheduler_log_warnings: log_warnings,
            scheduler_log_warning_examples: log_examples,
            totals: totals(&shared),
            threads: config.threads,
            seed: config.seed,
            update_mode: config.update.as_str().into(),
            update: Some(update_report(&config, job_ready_secs, runs, notes, None)),
            verified: errors.is_empty(),
            verification_errors: errors,
            ..Report::default()
        });
    }

    // ---------------------------------------------------------------- clients, timed window
    let mut clients = Vec::new();
    for id in 0..config.clients {
        let stream = client::connect(&shared)
            .await
            .map_err(|e| anyhow::anyhow!("client {id}: {e}"))?;
        let shared = shared.clone();
        let phase = phase_rx.clone();
        clients.push(tokio::spawn(async move {
            let result = client::run_client(id, shared.clone(), stream, phase).await;
            if let Err(e) = &result {
                shared.errors.push(format!("client {id}: {e}"));
            }
            result
        }));
    }
    let window = Duration::from_secs_f64(config.duration);
    let start = shared.counters.snapshot();
    let t0 = start.at.expect("set");
    let (scheduler_cpu_start, loadgen_cpu_start) = (scheduler_cpu(), own_cpu_secs());
    phase_tx.send(Phase::Run).expect("receivers alive");
    // `--update during`: updates rolled back to back while the window lasts.
    let rolling = match driver.take() {
        Some(mut d) if config.update == UpdateMode::During => {
            let phase = phase_rx.clone();
            Some(tokio::spawn(async move {
                let (runs, error) = d.roll_through_window(&phase).await;
                (d, runs, error)
            }))
        }
        other => {
            driver = other;
            None
        }
    };
    let mut last = start;
    let mut rss_max = rss_after_registration;
    let mut next_tick = t0 + Duration::from_secs(1);
    while next_tick < t0 + window {
        tokio::time::sleep_until(next_tick.into()).await;
        next_tick += Duration::from_secs(1);
        let now = shared.counters.snapshot();
        if !config.quiet {
            progress_line(
                &shared,
                (now.at.unwrap() - t0).as_secs_f64(),
                &last,
                &now,
                "run",
            );
        }
        rss_max = rss_max.max(rss());
        last = now;
    }
    tokio::time::sleep_until((t0 + window).into()).await;
    let end = shared.counters.snapshot();
    phase_tx.send(Phase::Drain).expect("receivers alive");
    let rss_at_end = rss();
    let scheduler_cpu_window = scheduler_cpu().zip(scheduler_cpu_start).map(|(b, a)| b - a);
    let loadgen_cpu_window = own_cpu_secs() - loadgen_cpu_start;
    rss_max = rss_max.max(rss_at_end);
    let active_at_end = shared.counters.active_tasks();
    let window_secs = (end.at.unwrap() - t0).as_secs_f64();

    // ---------------------------------------------------------------- drain
    let drain_started = Instant::now();
    let drain_deadline = drain_started + Duration::from_secs_f64(config.drain_secs);
    let mut last = end;
    let mut next_tick = drain_started + Duration::from_secs(1);
    while !drained(&shared) && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if Instant::now() >= next_tick {
            next_tick += Duration::from_secs(1);
            let now = shared.counters.snapshot();
            if !config.quiet {
                progress_line(
                    &shared,
                    (now.at.unwrap() - t0).as_secs_f64(),
                    &last,
                    &now,
                    "drain",
                );
            }
            last = now;
        }
    }
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let fully_drained = drained(&shared);

    // ---------------------------------------------------------------- the updates' end
    let mut runs = Vec::new();
    if let Some(handle) = rolling {
        // The update under way when the window closed finishes (bounded by its own timeout).
        let wait = Duration::from_secs_f64(config.update_timeout_secs) + Duration::from_secs(30);
        match tokio::time::timeout(wait, handle).await {
            Ok(Ok((d, done, error))) => {
                runs = done;
                if let Some(e) = error {
                    shared.errors.push(e);
                }
                driver = Some(d);
            }
            Ok(Err(e)) => shared.errors.push(format!("the update driver failed: {e}")),
            Err(_) => shared.errors.push(format!(
                "the update driver did not finish within {:.0} s of the window's end",
                wait.as_secs_f64()
            )),
        }
    }
    if let Some(d) = &driver {
        if shared.errors.count() == 0 {
            for p in d.final_problems() {
                shared.errors.push(p);
            }
        }
    }
    let window_from = (t0 - shared.started).as_secs_f64();
    let coverage = (config.update == UpdateMode::During).then(|| {
        let intervals: Vec<(f64, f64)> = runs
            .iter()
            .map(|r| (r.sent_at_secs, r.done_at_secs))
            .collect();
        update::coverage(&intervals, window_from, window_from + window_secs)
    });
    let update_section = (config.update != UpdateMode::Off).then(|| {
        let notes = driver.as_ref().map(|d| d.notes.clone()).unwrap_or_default();
        update_report(&config, job_ready_secs, runs, notes, coverage)
    });

    // ---------------------------------------------------------------- verification
    let mut query_checked = 0;
    if fully_drained && shared.errors.count() == 0 {
        let sample = query_sample(&shared);
        query_checked = sample.len();
        let problems = client::check_jobs(&shared, &sample, Instant::now() + QUERY_CHECK_MAX).await;
        for p in problems {
            shared.errors.push(p);
        }
    }
    let log_len_at_stop = config
        .scheduler_log
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len());
    shared.stopping.store(true, Relaxed);
    let _ = phase_tx.send(Phase::Stop);
    for handle in clients {
        let _ = tokio::time::timeout(STOP_WAIT, handle).await;
    }
    for handle in agents {
        let _ = tokio::time::timeout(STOP_WAIT, handle).await;
    }
    verify_instances(&shared);
    if !fully_drained {
        let c = &shared.counters;
        shared.errors.push(format!(
            "not drained within {:.0} s: {} jobs submitted, {} acked, {} refused; {} tasks accepted, {} launched, {} running, {} ended",
            config.drain_secs,
            c.submitted_jobs.load(Relaxed),
            c.acked_jobs.load(Relaxed),
            c.rejected_jobs.load(Relaxed),
            c.acked_tasks.load(Relaxed),
            c.placed.load(Relaxed),
            c.running.load(Relaxed),
            c.finished.load(Relaxed) + c.failed.load(Relaxed),
        ));
    }

    let (log_warnings, log_examples) = match (&config.scheduler_log, log_len_at_stop) {
        (Some(path), Some(len)) => {
            let (n, examples) = scan_log(path, len);
            (Some(n), examples)
        }
        _ => (None, Vec::new()),
    };

    // ---------------------------------------------------------------- report
    let per_sec = |a: u64, b: u64| b.saturating_sub(a) as f64 / window_secs;
    let latencies = shared.merged_latencies();
    let errors = shared.errors.list();
    Ok(Report {
        agents: config.agents,
        clients: config.clients,
        duration_secs: window_secs,
        drain_secs,
        registration_secs,
        tasks_per_sec_submitted: per_sec(start.submitted, end.submitted),
        tasks_per_sec_placed: per_sec(start.placed, end.placed),
        tasks_per_sec_running: per_sec(start.running, end.running),
        tasks_per_sec_finished: per_sec(start.ended(), end.ended()),
        latency_submit_to_assigned_ms: Percentiles::of(&latencies.submit_to_assigned_us),
        latency_submit_to_running_ms: Percentiles::of(&latencies.submit_to_running_us),
        scheduler_rss_bytes: rss_at_end,
        scheduler_rss_bytes_at_start: rss_at_start,
        scheduler_rss_bytes_after_registration: rss_after_registration,
        scheduler_rss_bytes_max: rss_max,
        active_tasks_at_end: active_at_end,
        bytes_per_active_task: match (rss_at_end, active_at_end) {
            (Some(rss), active) if active > 0 => Some(rss as f64 / active as f64),
            _ => None,
        },
        bytes_per_active_task_above_registration: match (rss_at_end, rss_after_registration) {
            (Some(end), Some(base)) if active_at_end > 0 => {
                Some(end.saturating_sub(base) as f64 / active_at_end as f64)
            }
            _ => None,
        },
        bytes_per_agent: match (rss_after_registration, rss_at_start) {
            (Some(after), Some(before)) => {
                Some(after.saturating_sub(before) as f64 / f64::from(config.agents))
            }
            _ => None,
        },
        scheduler_cpu_secs: scheduler_cpu_window,
        loadgen_cpu_secs: loadgen_cpu_window,
        scheduler_log_warnings: log_warnings,
        scheduler_log_warning_examples: log_examples,
        totals: totals(&shared),
        jobs_checked_by_query: query_checked as u64,
        instances_per_job: config.instances_per_job,
        rate: config.rate,
        task_duration_ms: match config.task_duration_ms {
            TaskDuration::Infinite => "inf".into(),
            TaskDuration::Millis { min, max } => format!("{min}-{max}"),
        },
        failure_rate: config.failure_rate,
        max_active_tasks: config.max_active_tasks,
        threads: config.threads,
        seed: config.seed,
        update_mode: config.update.as_str().into(),
        update: update_section,
        verified: errors.is_empty(),
        verification_errors: errors,
    })
}

fn totals(shared: &Shared) -> Totals {
    let c = &shared.counters;
    Totals {
        jobs_submitted: c.submitted_jobs.load(Relaxed),
        jobs_acked: c.acked_jobs.load(Relaxed),
        jobs_refused: c.rejected_jobs.load(Relaxed),
        tasks_submitted: c.submitted_tasks.load(Relaxed),
        tasks_placed: c.placed.load(Relaxed),
        tasks_relaunched: c.relaunched.load(Relaxed),
        tasks_running: c.running.load(Relaxed),
        tasks_finished: c.finished.load(Relaxed),
        tasks_failed: c.failed.load(Relaxed),
        tasks_killed: c.killed.load(Relaxed),
        statuses_sent: c.statuses_sent.load(Relaxed),
        agents_lost: c.agents_lost.load(Relaxed),
        update_launched: c.update_launched.load(Relaxed),
        update_running: c.update_running.load(Relaxed),
        update_killed: c.update_killed.load(Relaxed),
    }
}

fn update_report(
    config: &Config,
    job_ready_secs: f64,
    runs: Vec<update::UpdateRun>,
    notes: Vec<String>,
    window_coverage: Option<f64>,
) -> UpdateReport {
    let of =
        |f: fn(&update::UpdateRun) -> f64| update::median(&runs.iter().map(f).collect::<Vec<_>>());
    UpdateReport {
        mode: config.update.as_str().into(),
        instances: config.update_instances,
        dedicated_agents: config.dedicated_update_agents(),
        batch_size: config.update_batch_size,
        watch_secs: config.update_watch_secs,
        poll_ms: config.update_poll_ms,
        job_ready_secs,
        median_secs: of(|r| r.secs),
        median_instances_per_sec: of(|r| r.instances_per_sec),
        median_scheduler_secs: of(|r| r.scheduler_secs),
        runs,
        window_coverage,
        notes,
    }
}

/// Up to [`QUERY_SAMPLE_JOBS`] acked jobs, evenly spread, whose every instance ran once, with
/// the state counts the scheduler should report for them.
fn query_sample(shared: &Shared) -> Vec<Expected> {
    let jobs = shared.next_job.load(Relaxed).min(shared::JOBS_MAX);
    if jobs == 0 || shared.config.instances_per_job as usize > SCHEDULER_HISTORY_DEFAULT {
        return Vec::new();
    }
    let step = (jobs as usize / QUERY_SAMPLE_JOBS).max(1);
    let mut sample = Vec::new();
    for index in (0..jobs).step_by(step).take(QUERY_SAMPLE_JOBS) {
        let Some(job) = shared.jobs.get(index) else {
            continue;
        };
        if job.update || job.reply.load(Relaxed) != REPLY_ACK {
            continue;
        }
        let mut counts = std::collections::HashMap::new();
        let mut clean = true;
        for record in job.instances.iter() {
            if record.launches.load(Relaxed) != 1 {
                clean = false;
                break;
            }
            let state = match shared.config.task_duration_ms {
                TaskDuration::Infinite => TaskState::Running,
                TaskDuration::Millis { .. } => {
                    match TaskState::from_u8(record.end_state.load(Relaxed)) {
                        Some(s) if record.ends.load(Relaxed) == 1 => s,
                        _ => {
                            clean = false;
                            break;
                        }
                    }
                }
            };
            *counts.entry(state).or_insert(0) += 1;
        }
        if clean {
            sample.push(Expected { index, counts });
        }
    }
    sample
}

/// Checks every instance of every submitted job, reporting each kind of failure once with a
/// count and a few examples.
fn verify_instances(shared: &Shared) {
    let infinite = shared.config.task_duration_ms == TaskDuration::Infinite;
    let jobs = shared.next_job.load(Relaxed).min(shared::JOBS_MAX);
    let mut kinds: Vec<(&str, u64, Vec<String>)> = vec![
        ("CreateJob never answered", 0, Vec::new()),
        ("instance never launched", 0, Vec::new()),
        ("instance did not end", 0, Vec::new()),
        ("instance ended more than once", 0, Vec::new()),
        ("instance that never ends ended", 0, Vec::new()),
    ];
    let mut note = |kind: usize, what: String| {
        let (_, n, examples) = &mut kinds[kind];
        *n += 1;
        if examples.len() < EXAMPLES_PER_KIND {
            examples.push(what);
        }
    };
    for index in 0..jobs {
        let Some(job) = shared.jobs.get(index) else {
            continue;
        };
        if job.update {
            continue; // checked by the update driver
        }
        match job.reply.load(Relaxed) {
            REPLY_NONE => {
                note(0, job.key.to_string());
                continue;
            }
            REPLY_ACK => {}
            _ => continue, // refused: already an error of its own
        }
        for (instance, record) in job.instances.iter().enumerate() {
            let what = || format!("{}/{instance}", job.key);
            let ends = record.ends.load(Relaxed);
            if record.launches.load(Relaxed) == 0 {
                note(1, what());
            } else if infinite && ends > 0 {
                note(4, what());
            } else if !infinite && ends == 0 {
                note(2, what());
            } else if ends > 1 {
                note(3, format!("{} ({ends} ends)", what()));
            }
        }
    }
    for (kind, n, examples) in kinds {
        if n > 0 {
            shared
                .errors
                .push(format!("{kind}: {n} (e.g. {})", examples.join(", ")));
        }
    }
}
