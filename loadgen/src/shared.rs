//! State shared by the simulated agents and clients: the submitted jobs with one verification
//! record per instance, run-wide counters, latency histograms and verification errors.
//!
//! Everything here is lock-free on the hot path except the latency histograms (one of
//! [`HISTOGRAM_SHARDS`] mutexes, taken once per agent wake-up) and the per-job rack counts of
//! rack-limited jobs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use borealis_core::Resources;
use hdrhistogram::Histogram;

use crate::config::{Config, ConstraintKind};

/// Jobs per lazily allocated chunk of the job table.
const JOB_CHUNK: usize = 1024;
/// Chunks in the job table: at most `JOB_CHUNK * JOB_CHUNKS` (16.7M) jobs a run.
const JOB_CHUNKS: usize = 16_384;
pub const JOBS_MAX: u32 = (JOB_CHUNK * JOB_CHUNKS) as u32;
/// Mutex-protected histogram pairs; agent `i` records into `i % HISTOGRAM_SHARDS`.
pub const HISTOGRAM_SHARDS: usize = 16;
/// Verification error messages kept (all are counted).
const ERRORS_KEPT: usize = 100;
/// Highest latency a histogram records, in microseconds (one hour).
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// What the scheduler answered to a job's `CreateJob`.
pub const REPLY_NONE: u8 = 0;
pub const REPLY_ACK: u8 = 1;
pub const REPLY_ERROR: u8 = 2;

/// One instance of a submitted job, as the simulated agents saw it.
#[derive(Debug, Default)]
pub struct InstanceRecord {
    /// `LaunchTask`s received for this instance (any agent).
    pub launches: AtomicU32,
    /// Terminal statuses sent for this instance.
    pub ends: AtomicU32,
    /// Launched on some agent and not ended there: a second launch meanwhile is an error.
    pub active: AtomicBool,
    /// The terminal state sent (a `TaskState` as u8), when `ends > 0`.
    pub end_state: AtomicU8,
}

#[derive(Debug)]
pub struct JobRecord {
    pub key: Box<str>,
    pub resources: Resources,
    pub constraint: ConstraintKind,
    /// The zone a zone-constrained job must run in.
    pub zone: u32,
    pub instances: Box<[InstanceRecord]>,
    /// Active instances per rack, for rack-limited jobs.
    pub rack_counts: Option<Mutex<HashMap<u32, u32>>>,
    /// When the client wrote the `CreateJob`, in ns since the run started (0: not yet sent).
    pub submitted_ns: AtomicU64,
    pub reply: AtomicU8,
    /// The updated service job (`--update`): its tasks never end by themselves, its kills are
    /// expected, and its launches are counted apart from the client jobs'.
    pub update: bool,
}

/// [`JOB_CHUNK`] job slots, each set once.
type JobChunk = Box<[OnceLock<JobRecord>]>;

/// Append-only table of jobs indexed by job number, readable without locks.
pub struct JobTable {
    chunks: Box<[OnceLock<JobChunk>]>,
}

impl JobTable {
    fn new() -> JobTable {
        JobTable {
            chunks: (0..JOB_CHUNKS).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Publishes job `index` (each index once).
    pub fn insert(&self, index: u32, record: JobRecord) {
        let index = index as usize;
        let chunk = self.chunks[index / JOB_CHUNK]
            .get_or_init(|| (0..JOB_CHUNK).map(|_| OnceLock::new()).collect());
        assert!(
            chunk[index % JOB_CHUNK].set(record).is_ok(),
            "job {index} inserted twice"
        );
    }

    pub fn get(&self, index: u32) -> Option<&JobRecord> {
        let index = index as usize;
        self.chunks
            .get(index / JOB_CHUNK)?
            .get()?
            .get(index % JOB_CHUNK)?
            .get()
    }
}

/// Run-wide counts of tasks (or jobs where named).
#[derive(Debug, Default)]
pub struct Counters {
    pub submitted_jobs: AtomicU64,
    pub submitted_tasks: AtomicU64,
    pub acked_jobs: AtomicU64,
    pub acked_tasks: AtomicU64,
    pub rejected_jobs: AtomicU64,
    pub rejected_tasks: AtomicU64,
    /// `LaunchTask`s received (relaunches included).
    pub placed: AtomicU64,
    /// Launches of an instance launched before.
    pub relaunched: AtomicU64,
    /// RUNNING statuses sent.
    pub running: AtomicU64,
    pub finished: AtomicU64,
    pub failed: AtomicU64,
    /// `KillTask`s received for tasks the agent runs (the loadgen never asks for kills).
    pub killed: AtomicU64,
    pub agents_registered: AtomicU64,
    pub agents_lost: AtomicU64,
    pub statuses_sent: AtomicU64,
    /// The updated job's `LaunchTask`s, RUNNING statuses and `KillTask`s (not in the above).
    pub update_launched: AtomicU64,
    pub update_running: AtomicU64,
    pub update_killed: AtomicU64,
}

/// A point-in-time copy of the task counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub at: Option<Instant>,
    pub submitted: u64,
    pub placed: u64,
    pub running: u64,
    pub finished: u64,
    pub failed: u64,
}

impl Snapshot {
    pub fn ended(&self) -> u64 {
        self.finished + self.failed
    }
}

impl Counters {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            at: Some(Instant::now()),
            submitted: self.submitted_tasks.load(Relaxed),
            placed: self.placed.load(Relaxed),
            running: self.running.load(Relaxed),
            finished: self.finished.load(Relaxed),
            failed: self.failed.load(Relaxed),
        }
    }

    /// Tasks submitted and not ended (from the loadgen's side).
    pub fn active_tasks(&self) -> u64 {
        let ended = self.finished.load(Relaxed) + self.failed.load(Relaxed);
        let gone = ended + self.rejected_tasks.load(Relaxed);
        self.submitted_tasks.load(Relaxed).saturating_sub(gone)
    }
}

/// Latency histograms in microseconds.
pub struct Latencies {
    pub submit_to_assigned_us: Histogram<u64>,
    pub submit_to_running_us: Histogram<u64>,
}

impl Latencies {
    pub fn new() -> Latencies {
        let h = || Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid bounds");
        Latencies {
            submit_to_assigned_us: h(),
            submit_to_running_us: h(),
        }
    }

    pub fn add(&mut self, other: &Latencies) {
        self.submit_to_assigned_us
            .add(&other.submit_to_assigned_us)
            .expect("same bounds");
        self.submit_to_running_us
            .add(&other.submit_to_running_us)
            .expect("same bounds");
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

/// Verification errors: every one counted, the first [`ERRORS_KEPT`] kept.
#[derive(Default)]
pub struct Errors {
    count: AtomicU64,
    kept: Mutex<Vec<String>>,
}

impl Errors {
    pub fn push(&self, message: String) {
        let n = self.count.fetch_add(1, Relaxed);
        if (n as usize) < ERRORS_KEPT {
            self.kept.lock().expect("errors lock").push(message);
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub fn list(&self) -> Vec<String> {
        let mut list = self.kept.lock().expect("errors lock").clone();
        let count = self.count();
        if count as usize > list.len() {
            list.push(format!(
                "... and {} more verification errors",
                count as usize - list.len()
            ));
        }
        list
    }
}

/// No live task (in [`UpdateJob::live_generation`]).
pub const NO_GENERATION: u32 = u32::MAX;

/// The updated job, as the agents see it: per instance, the generation (the number in its
/// command, 0 for the job as created, `n` after the n-th update) of its live task.
pub struct UpdateJob {
    pub index: u32,
    pub live_generation: Box<[AtomicU32]>,
}

impl UpdateJob {
    pub fn new(index: u32, instances: u32) -> UpdateJob {
        UpdateJob {
            index,
            live_generation: (0..instances)
                .map(|_| AtomicU32::new(NO_GENERATION))
                .collect(),
        }
    }

    /// The live generation of every instance, now.
    pub fn generations(&self) -> Vec<u32> {
        self.live_generation
            .iter()
            .map(|g| g.load(Relaxed))
            .collect()
    }
}

pub struct Shared {
    pub config: Config,
    pub started: Instant,
    /// `role/environment/` of every job of this run; the name is `j<index>`.
    pub key_prefix: String,
    pub jobs: JobTable,
    pub next_job: AtomicU32,
    pub counters: Counters,
    pub errors: Errors,
    pub latencies: Vec<Mutex<Latencies>>,
    /// Set just before agents disconnect: what happens afterwards (the scheduler moving the
    /// tasks of the agents already gone to those still there) is not part of the run.
    pub stopping: AtomicBool,
    /// The updated job, once created (`--update`).
    pub update_job: OnceLock<UpdateJob>,
    /// TLS and the client token (`--tls-*`, `--token`); none by default.
    pub security: crate::conn::Security,
}

impl Shared {
    pub fn new(config: Config, run_id: u64) -> Shared {
        Shared {
            config,
            started: Instant::now(),
            key_prefix: format!("loadgen/test/r{run_id}-j"),
            jobs: JobTable::new(),
            next_job: AtomicU32::new(0),
            counters: Counters::default(),
            errors: Errors::default(),
            latencies: (0..HISTOGRAM_SHARDS)
                .map(|_| Mutex::new(Latencies::new()))
                .collect(),
            stopping: AtomicBool::new(false),
            update_job: OnceLock::new(),
            security: Default::default(),
        }
    }

    /// Nanoseconds since the run started (never 0, which means "not sent").
    pub fn now_ns(&self) -> u64 {
        (self.started.elapsed().as_nanos() as u64).max(1)
    }

    pub fn job_key(&self, index: u32) -> String {
        format!("{}{index}", self.key_prefix)
    }

    /// The job number in a job key of this run.
    pub fn job_index(&self, key: &str) -> Option<u32> {
        key.strip_prefix(self.key_prefix.as_str())?.parse().ok()
    }

    /// The job and its number, for a job key of this run that was submitted.
    pub fn job_by_key(&self, key: &str) -> Option<(u32, &JobRecord)> {
        let index = self.job_index(key)?;
        Some((index, self.jobs.get(index)?))
    }

    pub fn merged_latencies(&self) -> Latencies {
        let mut all = Latencies::new();
        for shard in &self.latencies {
            all.add(&shard.lock().expect("latency lock"));
        }
        all
    }
}

/// splitmix64: the loadgen's one source of pseudo-randomness.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A uniform value in `[0, 1)` from a hash.
pub fn unit(hash: u64) -> f64 {
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether this run of (job, instance) ends FAILED rather than FINISHED.
pub fn fails(seed: u64, job: u32, instance: u32, launch: u32, failure_rate: f64) -> bool {
    if failure_rate <= 0.0 {
        return false;
    }
    let h = mix(seed ^ mix((u64::from(job) << 32) | u64::from(instance)) ^ u64::from(launch));
    unit(h) < failure_rate
}
