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

use borealis_sim::{replay, run_seed, RunOptions};
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
        bug: None,
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
    let events = AtomicU64::new(0);
    let rounds = AtomicU64::new(0);
    let simulated_ms = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::new());
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
                let outcome = run_seed(seed, &options, !args.no_shrink);
                events.fetch_add(outcome.stats.events, Ordering::Relaxed);
                rounds.fetch_add(outcome.stats.rounds, Ordering::Relaxed);
                simulated_ms.fetch_add(outcome.stats.simulated_ms, Ordering::Relaxed);
                if let Some(failure) = outcome.failure {
                    println!("{}", failure.report());
                    failures.lock().expect("no panics hold it").push(seed);
                    if args.fail_fast {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let mut failed = failures.into_inner().expect("no panics hold it");
    failed.sort_unstable();
    let ran = next.load(Ordering::Relaxed).min(count);
    println!(
        "seeds run: {ran}, events: {}, rounds: {}, simulated: {} s, failures: {}{}, wall: {:.1} s",
        events.load(Ordering::Relaxed),
        rounds.load(Ordering::Relaxed),
        simulated_ms.load(Ordering::Relaxed) / 1000,
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
