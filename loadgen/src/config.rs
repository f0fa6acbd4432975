//! The load generator's settings (command-line flags) and the small grammars they use.

use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;

/// Simulated agents and clients over real TCP against a running `borealis scheduler`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "borealis-loadgen",
    version,
    about = "Simulated agents and clients speaking the real protocol to a running Borealis scheduler; measures throughput, latency and memory, and verifies the run."
)]
pub struct Config {
    /// The scheduler's agent/client address, HOST:PORT.
    #[arg(long)]
    pub scheduler: String,
    /// Simulated agents (one TCP connection each).
    #[arg(long, default_value_t = 10_000)]
    pub agents: u32,
    /// Simulated clients (one TCP connection each) submitting `CreateJob`s.
    #[arg(long, default_value_t = 4)]
    pub clients: u32,
    /// Length of the timed window in seconds (after every agent registered, before the drain).
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Tasks submitted per second over all clients; 0 submits as fast as backpressure allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Instances per submitted job.
    #[arg(long, default_value_t = 100)]
    pub instances_per_job: u32,
    /// Most tasks submitted but not yet ended (backpressure on the clients).
    #[arg(long, default_value_t = 200_000)]
    pub max_active_tasks: u64,
    /// How long a simulated agent waits after a launch before reporting STARTING and RUNNING.
    #[arg(long, default_value_t = 0)]
    pub ack_delay_ms: u64,
    /// How long a task runs before it ends: `MIN-MAX` milliseconds (uniform), `N`, or `inf`.
    #[arg(long, default_value = "1000-2000")]
    pub task_duration_ms: TaskDuration,
    /// Fraction of tasks that end FAILED instead of FINISHED (jobs use max_task_failures = 1,
    /// so FAILED is final).
    #[arg(long, default_value_t = 0.0)]
    pub failure_rate: f64,
    /// Weighted mix of job constraints: `plain`, `zone` (value constraint on zone),
    /// `rack-limit` (at most 2 per rack), `host-limit` (at most 1 per host),
    /// e.g. `plain=70,zone=10,rack-limit=10,host-limit=10`.
    #[arg(long, default_value = "plain=100")]
    pub constraint_mix: ConstraintMix,
    /// Mean cores per agent (each agent's size varies ±50% deterministically by its index).
    #[arg(long, default_value_t = 16.0)]
    pub agent_cpus: f64,
    /// Mean RAM per agent in MiB (varies with the cores).
    #[arg(long, default_value_t = 65_536)]
    pub agent_ram_mib: u32,
    /// The scheduler's process id, to read its RSS (`VmRSS` in /proc/PID/status).
    #[arg(long)]
    pub scheduler_pid: Option<u32>,
    /// The scheduler's log file: its WARN and ERROR lines from before the agents disconnect are
    /// counted in the report.
    #[arg(long)]
    pub scheduler_log: Option<PathBuf>,
    /// Seed of every pseudo-random choice (job shapes, constraints, durations, failures).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Longest wait after the window for submitted tasks to end (submissions stopped).
    #[arg(long, default_value_t = 15.0)]
    pub drain_secs: f64,
    /// Agent connections being opened and registered at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Longest wait for every agent to register.
    #[arg(long, default_value_t = 120.0)]
    pub register_timeout_secs: f64,
    /// No per-second progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Rolling updates: `off`; `time` (no client load: a service job of `--update-instances`
    /// is created, and `--update-repeat` updates of it to a new command are rolled one after
    /// another and timed); `idle` (the job is created and RUNNING, no update, then the normal
    /// timed window: the baseline of `during`); `during` (as `idle`, with updates of the job
    /// rolled back to back through the window).
    #[arg(long, default_value = "off")]
    pub update: UpdateMode,
    /// Instances of the updated service job.
    #[arg(long, default_value_t = 4000)]
    pub update_instances: u32,
    /// Extra simulated agents dedicated to the updated job (attribute
    /// `dedicated=loadgen/update`; uniform `--agent-cpus` and `--agent-ram-mib`, no client job
    /// lands there). 0: the job shares the `--agents` agents with the client jobs.
    #[arg(long, default_value_t = 400)]
    pub update_agents: u32,
    /// The update's `batch_size`.
    #[arg(long, default_value_t = 100)]
    pub update_batch_size: u32,
    /// The update's `watch_secs`.
    #[arg(long, default_value_t = 0)]
    pub update_watch_secs: u32,
    /// Updates rolled one after another in `--update time`.
    #[arg(long, default_value_t = 1)]
    pub update_repeat: u32,
    /// Longest wait for the job to be RUNNING, and for one update to finish.
    #[arg(long, default_value_t = 300.0)]
    pub update_timeout_secs: f64,
    /// How often the update's status is asked for (`QueryUpdates`) while it rolls.
    #[arg(long, default_value_t = 10)]
    pub update_poll_ms: u64,
    /// A line on stderr per poll while an update rolls: the agents' view and the update's
    /// per-phase counts (every poll then asks for the update's details: a diagnostic, not a
    /// timed run).
    #[arg(long)]
    pub update_trace: bool,
    /// PEM CA certificate: connect over TLS, verifying the scheduler's certificate against it
    /// (the scheduler's `--tls-ca`).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate (signed by `--tls-ca`) every simulated agent presents; clients present
    /// none. With `--tls-key`.
    #[arg(long, requires = "tls_key", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Token every client connection authenticates with first (`Authenticate`, answered
    /// `Ack`): for a scheduler run with `--auth-file`.
    #[arg(long, env = "BOREALIS_LOADGEN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// What the loadgen does with rolling updates (`--update`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateMode {
    /// No updated job.
    Off,
    /// Time updates of the job, without client load.
    Time,
    /// The job RUNNING through the window, never updated.
    Idle,
    /// Updates of the job rolled back to back through the window.
    During,
}

impl UpdateMode {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateMode::Off => "off",
            UpdateMode::Time => "time",
            UpdateMode::Idle => "idle",
            UpdateMode::During => "during",
        }
    }
}

impl FromStr for UpdateMode {
    type Err = String;
    fn from_str(text: &str) -> Result<UpdateMode, String> {
        match text.trim() {
            "off" => Ok(UpdateMode::Off),
            "time" => Ok(UpdateMode::Time),
            "idle" => Ok(UpdateMode::Idle),
            "during" => Ok(UpdateMode::During),
            other => Err(format!(
                "unknown update mode {other:?} (off, time, idle, during)"
            )),
        }
    }
}

impl Config {
    /// The defaults, aimed at `scheduler`.
    pub fn new(scheduler: &str) -> Config {
        Config::parse_from(["borealis-loadgen", "--scheduler", scheduler])
    }

    /// Agents the run connects: `--agents`, plus `--update-agents` when there is an updated job.
    pub fn total_agents(&self) -> u32 {
        self.agents.saturating_add(self.dedicated_update_agents())
    }

    /// Agents dedicated to the updated job (0: none, or the job shares the others).
    pub fn dedicated_update_agents(&self) -> u32 {
        if self.update == UpdateMode::Off {
            0
        } else {
            self.update_agents
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        // `--update time` needs no client agents when the job has its own.
        let agents_min = u32::from(!(self.update == UpdateMode::Time && self.update_agents > 0));
        anyhow::ensure!(
            self.agents >= agents_min,
            "--agents must be at least 1 (0 only with --update time and --update-agents > 0)"
        );
        anyhow::ensure!(self.clients >= 1, "--clients must be at least 1");
        anyhow::ensure!(self.threads >= 1, "--threads must be at least 1");
        anyhow::ensure!(
            self.duration.is_finite() && self.duration > 0.0,
            "--duration must be > 0"
        );
        anyhow::ensure!(
            self.drain_secs.is_finite() && self.drain_secs >= 0.0,
            "--drain-secs must be >= 0"
        );
        anyhow::ensure!(
            self.rate.is_finite() && self.rate >= 0.0,
            "--rate must be >= 0"
        );
        anyhow::ensure!(
            (1..=4000).contains(&self.instances_per_job),
            "--instances-per-job must be 1..=4000 (the scheduler's default --max-tasks-per-job)"
        );
        anyhow::ensure!(
            self.max_active_tasks >= u64::from(self.instances_per_job),
            "--max-active-tasks must be at least --instances-per-job"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.failure_rate),
            "--failure-rate must be within 0..=1"
        );
        anyhow::ensure!(
            self.agent_cpus.is_finite() && self.agent_cpus >= 1.0 && self.agent_cpus <= 4096.0,
            "--agent-cpus must be within 1..=4096"
        );
        anyhow::ensure!(
            self.agent_ram_mib >= 1024,
            "--agent-ram-mib must be at least 1024"
        );
        anyhow::ensure!(
            self.connect_concurrency >= 1,
            "--connect-concurrency must be at least 1"
        );
        if self.update != UpdateMode::Off {
            anyhow::ensure!(
                (1..=4000).contains(&self.update_instances),
                "--update-instances must be 1..=4000 (the scheduler's default --max-tasks-per-job)"
            );
            anyhow::ensure!(
                self.update_batch_size >= 1,
                "--update-batch-size must be at least 1"
            );
            anyhow::ensure!(
                self.update_watch_secs <= 86_400,
                "--update-watch-secs must be at most 86400"
            );
            anyhow::ensure!(
                (1..=100).contains(&self.update_repeat),
                "--update-repeat must be 1..=100"
            );
            anyhow::ensure!(
                self.update_timeout_secs.is_finite() && self.update_timeout_secs > 0.0,
                "--update-timeout-secs must be > 0"
            );
            anyhow::ensure!(
                (1..=10_000).contains(&self.update_poll_ms),
                "--update-poll-ms must be 1..=10000"
            );
            anyhow::ensure!(
                self.update_agents <= 100_000,
                "--update-agents must be at most 100000"
            );
        }
        Ok(())
    }
}

/// How long a simulated task runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskDuration {
    /// Uniform within `min..=max` milliseconds.
    Millis { min: u64, max: u64 },
    /// Never ends by itself.
    Infinite,
}

impl FromStr for TaskDuration {
    type Err = String;
    fn from_str(text: &str) -> Result<TaskDuration, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("inf") {
            return Ok(TaskDuration::Infinite);
        }
        let number = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("{text:?} is not MIN-MAX milliseconds, N or inf"))
        };
        let (min, max) = match text.split_once('-') {
            Some((min, max)) => (number(min)?, number(max)?),
            None => {
                let n = number(text)?;
                (n, n)
            }
        };
        if min > max {
            return Err(format!("task duration {text:?}: MIN is above MAX"));
        }
        Ok(TaskDuration::Millis { min, max })
    }
}

/// The constraint a job carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConstraintKind {
    Plain,
    /// `zone` must be the zone `z<n>` (n = job index % 4).
    Zone,
    /// At most 2 instances per rack.
    RackLimit,
    /// At most 1 instance per host.
    HostLimit,
}

pub const RACK_LIMIT: u32 = 2;
pub const HOST_LIMIT: u32 = 1;
/// Zones agents are spread over (`zone=z<i % ZONES>`).
pub const ZONES: u32 = 4;
/// Agents per rack (`rack=r<i / AGENTS_PER_RACK>`).
pub const AGENTS_PER_RACK: u32 = 40;

/// Weights of each [`ConstraintKind`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConstraintMix {
    weights: Vec<(ConstraintKind, u32)>,
    total: u32,
}

impl ConstraintMix {
    /// The kind whose weight band `roll % total` falls in.
    pub fn pick(&self, roll: u64) -> ConstraintKind {
        let mut at = (roll % u64::from(self.total)) as u32;
        for &(kind, weight) in &self.weights {
            if at < weight {
                return kind;
            }
            at -= weight;
        }
        ConstraintKind::Plain
    }
}

impl FromStr for ConstraintMix {
    type Err = String;
    fn from_str(text: &str) -> Result<ConstraintMix, String> {
        let mut weights = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected NAME=WEIGHT"))?;
            let kind = match name.trim() {
                "plain" => ConstraintKind::Plain,
                "zone" => ConstraintKind::Zone,
                "rack-limit" => ConstraintKind::RackLimit,
                "host-limit" => ConstraintKind::HostLimit,
                other => {
                    return Err(format!(
                        "unknown constraint kind {other:?} (plain, zone, rack-limit, host-limit)"
                    ))
                }
            };
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the weight must be a whole number"))?;
            if weight > 0 {
                weights.push((kind, weight));
            }
        }
        let total = weights.iter().map(|(_, w)| *w).sum::<u32>();
        if total == 0 {
            return Err(format!("{text:?}: the weights sum to 0"));
        }
        Ok(ConstraintMix { weights, total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_durations_parse() {
        assert_eq!(
            "1000-2000".parse(),
            Ok(TaskDuration::Millis {
                min: 1000,
                max: 2000
            })
        );
        assert_eq!("5".parse(), Ok(TaskDuration::Millis { min: 5, max: 5 }));
        assert_eq!("inf".parse(), Ok(TaskDuration::Infinite));
        assert!("2-1".parse::<TaskDuration>().is_err());
        assert!("x".parse::<TaskDuration>().is_err());
    }

    #[test]
    fn constraint_mix_picks_by_weight() {
        let mix: ConstraintMix = "plain=70,zone=10,rack-limit=10,host-limit=10"
            .parse()
            .unwrap();
        let mut counts = [0u32; 4];
        for roll in 0..100 {
            counts[mix.pick(roll) as usize] += 1;
        }
        assert_eq!(counts, [70, 10, 10, 10]);
        assert!("bogus=1".parse::<ConstraintMix>().is_err());
        assert!("plain=0".parse::<ConstraintMix>().is_err());
    }

    #[test]
    fn update_modes_parse() {
        for mode in [
            UpdateMode::Off,
            UpdateMode::Time,
            UpdateMode::Idle,
            UpdateMode::During,
        ] {
            assert_eq!(mode.as_str().parse(), Ok(mode));
        }
        assert!("rolling".parse::<UpdateMode>().is_err());
        assert!("".parse::<UpdateMode>().is_err());
    }

    #[test]
    fn update_flags_parse_and_validate() {
        let parse = |args: &[&str]| {
            let mut all = vec!["borealis-loadgen", "--scheduler", "127.0.0.1:1"];
            all.extend_from_slice(args);
            Config::try_parse_from(all)
        };
        let c = parse(&[]).unwrap();
        assert_eq!(c.update, UpdateMode::Off);
        assert_eq!(
            c.total_agents(),
            10_000,
            "no update agents without an update"
        );
        c.validate().unwrap();

        let c = parse(&["--update", "during"]).unwrap();
        assert_eq!(
            (c.update_instances, c.update_agents, c.update_batch_size),
            (4000, 400, 100)
        );
        assert_eq!(c.update_watch_secs, 0);
        assert_eq!(c.total_agents(), 10_400);
        c.validate().unwrap();

        // `time` may run without client agents when the job has its own, nothing else may.
        let c = parse(&["--update", "time", "--agents", "0", "--update-repeat", "3"]).unwrap();
        assert_eq!((c.total_agents(), c.update_repeat), (400, 3));
        c.validate().unwrap();
        let c = parse(&["--update", "time", "--agents", "0", "--update-agents", "0"]).unwrap();
        assert!(c.validate().is_err());
        let c = parse(&["--update", "idle", "--agents", "0"]).unwrap();
        assert!(c.validate().is_err());

        // Shared agents.
        let c = parse(&["--update", "during", "--update-agents", "0"]).unwrap();
        assert_eq!(c.total_agents(), 10_000);
        c.validate().unwrap();

        for bad in [
            ["--update-instances", "0"],
            ["--update-instances", "4001"],
            ["--update-batch-size", "0"],
            ["--update-repeat", "0"],
            ["--update-timeout-secs", "0"],
            ["--update-poll-ms", "0"],
        ] {
            let mut args = vec!["--update", "time"];
            args.extend_from_slice(&bad);
            let c = parse(&args).unwrap();
            assert!(c.validate().is_err(), "{bad:?} accepted");
        }
        // The update's bounds apply only with an update.
        parse(&["--update-instances", "0"])
            .unwrap()
            .validate()
            .unwrap();
        assert!(parse(&["--update", "sometimes"]).is_err());
    }
}
