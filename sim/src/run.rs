//! Running seeds: a seed's trace through a fresh world, the final settle, and on a violation
//! the shrinking of the trace to the smallest subset that still fails the same way, and its
//! report (seed, invariant, shortest trace, and the command that replays it).

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::faults::{self, RunOptions};
use crate::invariants::Violation;
use crate::trace::{self, Event};
use crate::world::{Stats, World, WorldConfig};

/// Re-runs a shrink may spend, and the wall time it may take.
const SHRINK_RUNS_MAX: usize = 300;
const SHRINK_TIME_MAX: Duration = Duration::from_secs(60);

thread_local! {
    /// Set while a run is inside `catch_unwind`: its panics are findings, reported, not printed.
    static CAPTURE: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let captured = CAPTURE.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        let location = info
                            .location()
                            .map(|l| format!(" at {}:{}", l.file(), l.line()))
                            .unwrap_or_default();
                        let payload = info
                            .payload()
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| info.payload().downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "panic".into());
                        *slot = format!("{payload}{location}");
                        true
                    }
                    None => false,
                }
            });
            if !captured {
                default(info);
            }
        }));
    });
}

/// How a run of a trace ended.
#[derive(Clone, Debug)]
pub struct TraceRun {
    pub stats: Stats,
    /// The violation and the index of the event that caused it (`events.len()`: the final
    /// settle).
    pub failure: Option<(usize, Violation)>,
}

/// Runs `events` (then a final settle) in a fresh world of `config`.
pub fn run_trace(config: &WorldConfig, events: &[Event]) -> TraceRun {
    install_panic_hook();
    CAPTURE.with(|c| *c.borrow_mut() = Some(String::new()));
    let mut stats = Stats::default();
    let mut at = 0;
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut world = World::new(config.clone());
        let mut outcome = Ok(());
        for (i, event) in events.iter().enumerate() {
            at = i;
            if let Err(v) = world.apply(event) {
                outcome = Err((i, v));
                break;
            }
        }
        if outcome.is_ok() {
            at = events.len();
            if let Err(v) = world.settle() {
                outcome = Err((events.len(), v));
            }
        }
        stats = world.stats.clone();
        outcome
    }));
    let message = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    let failure = match result {
        Ok(Ok(())) => None,
        Ok(Err(f)) => Some(f),
        Err(_) => Some((at, Violation::new("no_panic", message))),
    };
    TraceRun { stats, failure }
}

/// A seed's failure, shrunk.
#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub violation: Violation,
    /// The seed's whole trace.
    pub trace: Vec<Event>,
    /// The indices (into `trace`) of the shortest failing subset found.
    pub kept: Vec<usize>,
    /// The violation as the shortest subset reproduces it.
    pub shrunk_violation: Violation,
    pub options: RunOptions,
}

#[derive(Clone, Debug)]
pub struct SeedOutcome {
    pub seed: u64,
    pub stats: Stats,
    pub failure: Option<Failure>,
}

/// Runs one seed; on a failure, shrinks its trace when `shrink`.
pub fn run_seed(seed: u64, options: &RunOptions, shrink: bool) -> SeedOutcome {
    let config = faults::setup(seed, options);
    let events = faults::trace(seed, &config, options);
    let run = run_trace(&config, &events);
    let Some((at, violation)) = run.failure else {
        return SeedOutcome {
            seed,
            stats: run.stats,
            failure: None,
        };
    };
    // Events after the failing one never ran.
    let prefix = (at + 1).min(events.len());
    let mut kept: Vec<usize> = (0..prefix).collect();
    let mut shrunk_violation = violation.clone();
    if shrink {
        let started = Instant::now();
        let invariant = violation.invariant;
        let mut last = violation.clone();
        kept = trace::shrink(prefix, SHRINK_RUNS_MAX, |subset| {
            if started.elapsed() > SHRINK_TIME_MAX {
                return false;
            }
            let sub: Vec<Event> = subset.iter().map(|&i| events[i].clone()).collect();
            match run_trace(&config, &sub).failure {
                Some((_, v)) if v.invariant == invariant => {
                    last = v;
                    true
                }
                _ => false,
            }
        });
        shrunk_violation = last;
    }
    SeedOutcome {
        seed,
        stats: run.stats,
        failure: Some(Failure {
            seed,
            violation,
            trace: events,
            kept,
            shrunk_violation,
            options: options.clone(),
        }),
    }
}

/// Replays a seed's trace restricted to `kept` (as a report prints it).
pub fn replay(seed: u64, options: &RunOptions, kept: &[usize]) -> TraceRun {
    let config = faults::setup(seed, options);
    let events = faults::trace(seed, &config, options);
    let sub: Vec<Event> = kept
        .iter()
        .filter_map(|&i| events.get(i).cloned())
        .collect();
    run_trace(&config, &sub)
}

impl Failure {
    /// The report: seed, invariant, what broke it, the shortest trace and how to replay it.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let config = faults::setup(self.seed, &self.options);
        out.push_str(&format!(
            "seed {} FAILED: invariant {} violated\n  {}\n",
            self.seed, self.violation.invariant, self.violation.detail
        ));
        out.push_str(&format!(
            "  cluster: {:?} mode, {} shards, {} agents, {} clients, grace {} ms\n",
            config.mode,
            config.shards,
            config.agents.len(),
            config.clients,
            config.reconciliation_grace_ms
        ));
        out.push_str(&format!(
            "  shortest trace: {} of {} events (then a final settle)\n",
            self.kept.len(),
            self.trace.len()
        ));
        for &i in &self.kept {
            out.push_str(&format!("    #{i:<4} {:?}\n", self.trace[i]));
        }
        if self.shrunk_violation.detail != self.violation.detail {
            out.push_str(&format!(
                "  the shortest trace fails with: {}\n",
                self.shrunk_violation.detail
            ));
        }
        let mut flags = String::new();
        match self.options.ha {
            Some(true) => flags.push_str(" --ha"),
            Some(false) => flags.push_str(" --embedded"),
            None => {}
        }
        if self.options.bug.is_some() {
            flags.push_str(" --inject-forget-to-charge");
        }
        if let Some(e) = self.options.events {
            flags.push_str(&format!(" --events {e}"));
        }
        if let Some(s) = self.options.shards {
            flags.push_str(&format!(" --shards {s}"));
        }
        let kept: Vec<String> = self.kept.iter().map(|i| i.to_string()).collect();
        out.push_str(&format!(
            "  replay: cargo run -p borealis-sim --release -- --seed {}{flags} --keep {}\n",
            self.seed,
            kept.join(",")
        ));
        out
    }
}
