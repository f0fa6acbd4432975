//! `borealis-sim`: runs seeds of the deterministic simulation and prints a summary; exits
//! non-zero on any failure (each printed with its seed, invariant and shortest trace).
//!
//! ```text
//! cargo run -p borealis-sim --release -- --seeds 100000 [--seed N] [--ha] [--shards N]
//! cargo run -p borealis-sim --release -- --seed 1234 --keep 3,17,40   # replay a shrunk trace
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use borealis_sim::world::Stats;
use borealis_sim::{faults, replay, run_seed, RunOptions};

/// Failures of one invariant whose traces are shrunk (the rest are reported unshrunk).
const SHRUNK_PER_INVARIANT: usize = 3;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "The deterministic simulation of the Borealis scheduler")]
struct Args {
    /// How many seeds to run (default: 1, or 1000 without --seed).
    #[arg(long)]
    seeds: Option<u64>,
    /// The first seed.
    #[arg(long)]
    seed: Option<u64>,
    /// HA mode (two schedulers under a simulated etcd) for every seed.
    #[arg(long, conflicts_with = "embedded")]
    ha: bool,
    /// Embedded mode (one scheduler with its log) for every seed.
    #[arg(long)]
    embedded: bool,
    /// Shards per scheduler (1 to 4; default: the seed picks).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4))]
    shards: Option<u64>,
    /// Events per trace (default: the seed picks 40 to 120).
    #[arg(long)]
    events: Option<usize>,
    /// Replay only these events of the seed's trace (indices a failure report prints).
    #[arg(long, value_delimiter = ',')]
    keep: Option<Vec<usize>>,
    /// Report failures without shrinking their traces.
    #[arg(long)]
    no_shrink: bool,
    /// Stop at the first failure.
    #[arg(long)]
    fail_fast: bool,
    /// Plant `InjectedBug::ForgetToChargeAgent` in every shard (the self-test's bug).
    #[arg(long)]
    inject_forget_to_charge: bool,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = RunOptions {
        ha: if args.ha {
            Some(true)
        } else if args.embedded {
            Some(false)
        } else {
            None
        },
        shards: args.shards.map(|s| s as usize),
        bug: args
            .inject_forget_to_charge
            .then_some(borealis_shards::shard::InjectedBug::ForgetToChargeAgent),
        events: args.events,
    };
    let first = args.seed.unwrap_or(0);
    if let Some(keep) = &args.keep {
        let run = replay(first, &options, keep);
        println!("seed {first}, events {keep:?}: {:?}", run.stats);
        return match run.failure {
            Some((at, v)) => {
                println!("FAILED at event {at}: {v}");
                ExitCode::FAILURE
            }
            None => {
                println!("passed");
                ExitCode::SUCCESS
            }
        };
    }
    let count = args
        .seeds
        .unwrap_or(if args.seed.is_some() { 1 } else { 1000 });
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let totals = Mutex::new(Stats::default());
    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::new());
    let shrunk = Mutex::new(std::collections::BTreeMap::<&'static str, usize>::new());
    if count == 1 {
        let config = faults::setup(first, &options);
        println!(
            "seed {first}: {:?} mode, {} shards, {} agents, {} clients, grace {} ms",
            config.mode,
            config.shards,
            config.agents.len(),
            config.clients,
            config.reconciliation_grace_ms
        );
        for (i, event) in faults::trace(first, &config, &options).iter().enumerate() {
            println!("  #{i:<4} {event:?}");
        }
    }
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                let seed = first.wrapping_add(i);
                let outcome = run_seed(seed, &options, false);
                totals
                    .lock()
                    .expect("no panics hold it")
                    .add(&outcome.stats);
                if let Some(failure) = outcome.failure {
                    // Shrinking costs hundreds of re-runs: the first few failures of each
                    // invariant are shrunk, the rest reported as they are.
                    let shrink = !args.no_shrink && {
                        let mut shrunk = shrunk.lock().expect("no panics hold it");
                        let n = shrunk.entry(failure.violation.invariant).or_insert(0);
                        *n += 1;
                        *n <= SHRUNK_PER_INVARIANT
                    };
                    let failure = if shrink {
                        run_seed(seed, &options, true).failure.unwrap_or(failure)
                    } else {
                        failure
                    };
                    println!("{}", failure.report());
                    let mode = faults::setup(seed, &options).mode;
                    failures.lock().expect("no panics hold it").push((
                        seed,
                        mode,
                        failure.violation.invariant,
                    ));
                    if args.fail_fast {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().expect("no panics hold it");
    failures.sort_unstable_by_key(|f| f.0);
    let failed: Vec<u64> = failures.iter().map(|f| f.0).collect();
    let mut by_invariant = std::collections::BTreeMap::<String, usize>::new();
    for (_, mode, invariant) in &failures {
        *by_invariant
            .entry(format!("{mode:?} {invariant}"))
            .or_default() += 1;
    }
    for (what, n) in &by_invariant {
        println!("failures: {n:>5}  {what}");
    }
    let ran = next.load(Ordering::Relaxed).min(count);
    let t = totals.into_inner().expect("no panics hold it");
    println!(
        "seeds run: {ran}, events: {}, rounds: {}, checks: {}, simulated: {} s, jobs created: {}, \
         launches: {}, refusals: {} ({} for quota), production jobs admitted: {}, quota \
         releases: {}, checks above a lowered quota: {}, crashes: {}, elections: {}, \
         failures: {}{}, wall: {:.1} s",
        t.events,
        t.rounds,
        t.checks,
        t.simulated_ms / 1000,
        t.creates_acked,
        t.launches,
        t.requests_refused,
        t.quota_refusals,
        t.quota_admitted,
        t.quota_released,
        t.over_quota_checks,
        t.crashes,
        t.elections,
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" (seeds {failed:?})")
        },
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
