//! A CI-sized run of seeds: `SIM_SEEDS` seeds (default 1000) from `SIM_FIRST_SEED` (default
//! 0), each a random cluster (embedded or HA, 1 to 4 shards) with a random trace of workload
//! and faults, every invariant checked after every step. A failure prints its seed, invariant
//! and shrunk trace.
//!
//! Real bugs the simulation found and that are not fixed yet are listed in [`KNOWN_BUGS`]
//! (mode, invariant and what the violation says): a
//! seed failing one of them is reported (seed and invariant) without failing the test, so the
//! run still guards everything else. `SIM_STRICT=1` fails on them too. When a bug is fixed,
//! delete its entry and un-ignore its test in `regressions.rs`.

use std::sync::Mutex;
use std::time::Instant;

use borealis_sim::world::Stats;
use borealis_sim::{faults, run_seed, Mode, RunOptions};

/// (mode, invariant, what the violation's detail says, the `regressions.rs` test that
/// reproduces the bug).
const KNOWN_BUGS: &[(Mode, &str, &str, &str)] = &[
    // None open: every bug the simulation found is fixed and guarded by `regressions.rs` or
    // `policy.rs`.
];

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn seeds() {
    let count = env("SIM_SEEDS", 1000);
    let first = env("SIM_FIRST_SEED", 0);
    let strict = env("SIM_STRICT", 0) != 0;
    let threads = env("SIM_THREADS", 2).max(1);
    let options = RunOptions::default();
    let started = Instant::now();
    let totals = Mutex::new(Stats::default());
    let known = Mutex::new(Vec::new());
    let unknown = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for worker in 0..threads {
            let (totals, known, unknown, options) = (&totals, &known, &unknown, &options);
            scope.spawn(move || {
                for seed in (first..first + count)
                    .skip(worker as usize)
                    .step_by(threads as usize)
                {
                    let outcome = run_seed(seed, options, false);
                    totals.lock().unwrap().add(&outcome.stats);
                    let Some(failure) = outcome.failure else {
                        continue;
                    };
                    let mode = faults::setup(seed, options).mode;
                    let bug = KNOWN_BUGS.iter().find(|(m, invariant, detail, _)| {
                        *m == mode
                            && *invariant == failure.violation.invariant
                            && failure.violation.detail.contains(detail)
                    });
                    match bug {
                        Some((_, invariant, _, test)) if !strict => {
                            known.lock().unwrap().push((seed, *invariant, *test));
                        }
                        _ => {
                            // Shrink only what is reported as a failure.
                            let shrunk = run_seed(seed, options, true).failure.unwrap_or(failure);
                            unknown.lock().unwrap().push(shrunk.report());
                        }
                    }
                }
            });
        }
    });
    let totals = totals.into_inner().unwrap();
    let mut known = known.into_inner().unwrap();
    known.sort();
    let unknown = unknown.into_inner().unwrap();
    println!(
        "{count} seeds in {:.1} s: {} events, {} rounds, {} checks, {} s simulated, {} jobs \
         created, {} launches, {} crashes, {} elections; quotas: {} creates refused, {} \
         production jobs admitted, {} releases, {} checks above a lowered quota",
        started.elapsed().as_secs_f64(),
        totals.events,
        totals.rounds,
        totals.checks,
        totals.simulated_ms / 1000,
        totals.creates_acked,
        totals.launches,
        totals.crashes,
        totals.elections,
        totals.quota_refusals,
        totals.quota_admitted,
        totals.quota_released,
        totals.over_quota_checks
    );
    for (seed, invariant, test) in &known {
        println!("known bug: seed {seed} breaks {invariant} (see regressions::{test})");
    }
    assert!(
        unknown.is_empty(),
        "{} seeds failed:\n{}",
        unknown.len(),
        unknown.join("\n")
    );
}
