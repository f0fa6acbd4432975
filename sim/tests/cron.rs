//! Cron jobs in the simulation, one named scenario each (seeded; every invariant is checked
//! after every step, and each scenario advances 50 ms at a time and checks its own rule at
//! every tick): a per-minute schedule runs at each minute boundary of the fake wall clock;
//! CANCEL_NEW skips a trigger (or `cron start`) while a run is active; KILL_EXISTING kills the
//! run in progress and starts the new one only once it ended; a trigger that fell while the
//! scheduler was down is not run, and none runs twice around a crash; a deschedule stops the
//! runs; `--cron-scheduling-max-batch-size` bounds the triggers handled per tick and shard.
//!
//! The fake wall clock is `1_700_000_000_000 + simulated ms`, 20 s past a minute at simulated
//! 0: the minute boundaries fall at simulated 40 s, 100 s, 160 s, 220 s, ...

use std::collections::{BTreeMap, BTreeSet};

use borealis_core::cron::CollisionPolicy;
use borealis_core::{Resources, TaskId, TaskState};
use borealis_sim::{CrashPoint, Event, JobConfig, Sim, TaskPlan};

const KEY: &str = "www/prod/cron";
const TICK_MS: u64 = 50;
const MINUTE_MS: u64 = 60_000;
/// The fake wall clock at simulated 0 (sim/src/world: `UNIX_EPOCH_MS`).
const WALL_AT_ZERO_MS: u64 = 1_700_000_000_000;
/// How late after its trigger a run's tasks may be created: the tick that sees the trigger
/// (ticks come every 50 ms) and the round it runs in.
const TRIGGER_SLACK_MS: u64 = 2 * TICK_MS;

fn res(cpu_millis: u32) -> Resources {
    Resources {
        cpu_millis,
        ram_mib: 8192,
        disk_mib: 10_000,
        ports: 0,
    }
}

fn cluster(seed: u64) -> Sim {
    Sim::new(seed)
        .agent("h0", res(8000), &[])
        .agent("h1", res(8000), &[])
}

/// The fake wall clock at simulated `ms`.
fn wall(ms: u64) -> u64 {
    WALL_AT_ZERO_MS + ms
}

/// The simulated time of the first minute boundary at or after simulated `ms`.
fn boundary_at_or_after(ms: u64) -> u64 {
    let w = wall(ms);
    w.div_ceil(MINUTE_MS) * MINUTE_MS - WALL_AT_ZERO_MS
}

/// `instances` batch tasks of `plan` (a cron job cannot be a service).
fn job(instances: u32, plan: TaskPlan) -> JobConfig {
    let mut config = JobConfig::new(instances, 250, 128);
    config.plan = plan;
    config.kill_ms = Some(300);
    config
}

/// Every task the scenario saw, by id: its job and instance, and each task's creation time
/// (its first transition in the history) once [`Observer::finish`] read them.
#[derive(Default)]
struct Observer {
    tasks: BTreeMap<TaskId, (String, u32)>,
    ended_at: BTreeMap<TaskId, u64>,
    created_at: BTreeMap<TaskId, u64>,
}

impl Observer {
    /// Advances `ms` in ticks, noting every task the acting scheduler holds after each.
    fn advance(&mut self, sim: &mut Sim, ms: u64) {
        let mut left = ms;
        while left > 0 {
            let step = left.min(TICK_MS);
            sim.advance(step);
            left -= step;
            self.look(sim);
        }
    }

    /// Advances until simulated `ms`.
    fn advance_to(&mut self, sim: &mut Sim, ms: u64) {
        let now = sim.now_ms();
        assert!(now <= ms, "already at {now}, asked for {ms}");
        self.advance(sim, ms - now);
    }

    fn look(&mut self, sim: &mut Sim) {
        let mut live: BTreeMap<(String, u32), Vec<TaskId>> = BTreeMap::new();
        for inst in sim.audits().into_iter().filter(|i| i.acting()) {
            for shard in inst.shards.into_iter().filter(|s| s.acting) {
                for t in shard.tasks {
                    let key = t.job.to_string();
                    self.tasks.insert(t.id, (key.clone(), t.instance));
                    if !t.state.is_terminal() {
                        live.entry((key, t.instance)).or_default().push(t.id);
                    }
                }
            }
        }
        for ((key, i), ids) in live {
            assert!(
                ids.len() <= 1,
                "at {} ms: {key}/{i} has live tasks {ids:?}",
                sim.now_ms()
            );
        }
    }

    /// Reads creation and end times from the history.
    fn finish(&mut self, sim: &mut Sim) {
        for t in sim.history().transitions {
            if !self.tasks.contains_key(&t.task) {
                continue;
            }
            self.created_at.entry(t.task).or_insert(t.at_ms);
            if t.to.is_terminal() {
                self.ended_at.entry(t.task).or_insert(t.at_ms);
            }
        }
    }

    /// The tasks of `key`'s instance `i`, in creation order: (id, created, ended).
    fn runs_of(&self, key: &str, i: u32) -> Vec<(TaskId, u64, Option<u64>)> {
        let mut runs: Vec<(TaskId, u64, Option<u64>)> = self
            .tasks
            .iter()
            .filter(|(_, (k, inst))| k == key && *inst == i)
            .map(|(id, _)| {
                (
                    *id,
                    *self.created_at.get(id).expect("a transition"),
                    self.ended_at.get(id).copied(),
                )
            })
            .collect();
        runs.sort_by_key(|r| (r.1, r.0));
        runs
    }

    /// The creation times of `key`'s runs (instance 0's tasks), after checking that every
    /// instance of `instances` has one task per run, created in the same tick.
    fn run_times(&self, key: &str, instances: u32) -> Vec<u64> {
        let first: Vec<u64> = self.runs_of(key, 0).iter().map(|r| r.1).collect();
        for i in 1..instances {
            let times: Vec<u64> = self.runs_of(key, i).iter().map(|r| r.1).collect();
            assert_eq!(
                times.len(),
                first.len(),
                "{key}/{i} runs {times:?}, /0 {first:?}"
            );
            for (a, b) in first.iter().zip(&times) {
                assert!(a.abs_diff(*b) <= TICK_MS, "{key}: /0 at {a}, /{i} at {b}");
            }
        }
        first
    }
}

/// Asserts that `at` (simulated ms) is within the slack after the minute boundary `boundary`.
fn assert_at_trigger(at: u64, boundary: u64) {
    assert_eq!(
        wall(boundary) % MINUTE_MS,
        0,
        "{boundary} is no minute boundary"
    );
    assert!(
        at >= boundary && at <= boundary + TRIGGER_SLACK_MS,
        "run created at {at} ms (wall {}), its trigger is at {boundary} ms (wall {})",
        wall(at),
        wall(boundary)
    );
}

fn schedule(sim: &mut Sim, key: &str, config: JobConfig, policy: CollisionPolicy) {
    sim.schedule_cron(key, config, "* * * * *", policy)
        .unwrap_or_else(|e| panic!("scheduling {key}: {e}"));
}

#[test]
fn per_minute_schedule_runs_at_each_minute_boundary() {
    for seed in [1, 2, 3] {
        let mut sim = cluster(seed);
        let mut obs = Observer::default();
        schedule(
            &mut sim,
            KEY,
            job(2, TaskPlan::FinishAfter(10_000)),
            CollisionPolicy::KillExisting,
        );
        let start = sim.now_ms();
        let next = sim.job_audit(KEY).and_then(|j| j.cron_next_run_unix_ms);
        let first = boundary_at_or_after(start + 1);
        assert_eq!(next, Some(wall(first)), "seed {seed}: the next trigger");
        obs.advance(&mut sim, 210_000);
        obs.finish(&mut sim);
        let runs = obs.run_times(KEY, 2);
        assert_eq!(runs.len(), 3, "seed {seed}: runs at {runs:?}");
        for (n, at) in runs.iter().enumerate() {
            assert_at_trigger(*at, first + n as u64 * MINUTE_MS);
        }
        // Each run finished (after its 10 s) before the next began.
        for i in 0..2 {
            for r in obs.runs_of(KEY, i) {
                assert!(
                    r.2.is_some(),
                    "seed {seed}: {KEY}/{i} task {} never ended",
                    r.0
                );
            }
        }
        sim.run_until_quiet();
    }
}

#[test]
fn cancel_new_skips_triggers_and_starts_while_a_run_is_active() {
    for seed in [4, 5] {
        let mut sim = cluster(seed);
        let mut obs = Observer::default();
        schedule(
            &mut sim,
            KEY,
            job(2, TaskPlan::FinishAfter(90_000)),
            CollisionPolicy::CancelNew,
        );
        let first = boundary_at_or_after(sim.now_ms() + 1);
        // Run 1 at the first boundary; `cron start` 20 s into it is skipped.
        obs.advance_to(&mut sim, first + 20_000);
        sim.start_cron(KEY).unwrap();
        // The next boundary falls while run 1 (90 s) is still active: skipped. Run 1 ends at
        // about first + 90 s; the boundary after that starts run 2.
        obs.advance_to(&mut sim, first + 2 * MINUTE_MS + 5_000);
        obs.finish(&mut sim);
        let runs = obs.run_times(KEY, 2);
        assert_eq!(runs.len(), 2, "seed {seed}: runs at {runs:?}");
        assert_at_trigger(runs[0], first);
        assert_at_trigger(runs[1], first + 2 * MINUTE_MS);
        for i in 0..2 {
            let tasks = obs.runs_of(KEY, i);
            let ended = tasks[0].2.expect("run 1 ended");
            assert!(ended < tasks[1].1, "seed {seed}: {KEY}/{i}: {tasks:?}");
        }
        // Run 2 ends at about first + 210 s; a `cron start` then starts run 3 at once.
        obs.advance_to(&mut sim, first + 2 * MINUTE_MS + 95_000);
        assert!(sim.current_tasks(KEY).iter().all(|t| t.state.is_terminal()));
        let asked = sim.now_ms();
        sim.start_cron(KEY).unwrap();
        obs.advance(&mut sim, 1_000);
        obs.finish(&mut sim);
        let runs = obs.run_times(KEY, 2);
        assert_eq!(runs.len(), 3, "seed {seed}: runs at {runs:?}");
        assert!(
            runs[2] <= asked + 1_000,
            "seed {seed}: started at {}",
            runs[2]
        );
        let audit = sim.job_audit(KEY).expect("the cron job");
        assert!(audit.cron_next_run_unix_ms.is_some());
        sim.run_until_quiet();
    }
}

#[test]
fn kill_existing_kills_the_run_and_starts_the_next_once_it_ended() {
    // Kills of 300 ms (the new run starts after the first backoff) and of 7 s (past the
    // 5 s backoff: it checks again later).
    for (seed, kill_ms) in [(6, 300), (7, 300), (8, 7_000)] {
        let mut sim = cluster(seed);
        let mut obs = Observer::default();
        let mut config = job(2, TaskPlan::RunForever);
        config.kill_ms = Some(kill_ms);
        schedule(&mut sim, KEY, config, CollisionPolicy::KillExisting);
        let first = boundary_at_or_after(sim.now_ms() + 1);
        obs.advance_to(&mut sim, first + 2 * MINUTE_MS + 30_000);
        obs.finish(&mut sim);
        let runs = obs.run_times(KEY, 2);
        assert_eq!(runs.len(), 3, "seed {seed}: runs at {runs:?}");
        assert_at_trigger(runs[0], first);
        for (n, at) in runs.iter().enumerate().skip(1) {
            let trigger = first + n as u64 * MINUTE_MS;
            assert!(
                *at > trigger && *at < trigger + 30_000,
                "seed {seed}: run {n} at {at}, its trigger at {trigger}"
            );
        }
        for i in 0..2 {
            let tasks = obs.runs_of(KEY, i);
            for pair in tasks.windows(2) {
                let (old, new) = (pair[0], pair[1]);
                let ended = old
                    .2
                    .unwrap_or_else(|| panic!("seed {seed}: {old:?} never ended"));
                assert!(
                    ended <= new.1,
                    "seed {seed}: {KEY}/{i}: task {} created at {} before task {} ended at {ended}",
                    new.0,
                    new.1,
                    old.0
                );
                let path: Vec<TaskState> = sim.transitions_of(old.0).iter().map(|t| t.2).collect();
                assert!(path.contains(&TaskState::Killing), "seed {seed}: {path:?}");
            }
            let last = tasks.last().expect("a run");
            assert!(last.2.is_none(), "seed {seed}: the last run runs on");
        }
        sim.run_until_quiet();
    }
}

#[test]
fn a_trigger_missed_while_down_is_not_run_and_none_runs_twice() {
    for seed in [9, 10] {
        let mut sim = cluster(seed);
        let mut obs = Observer::default();
        schedule(
            &mut sim,
            KEY,
            job(2, TaskPlan::FinishAfter(10_000)),
            CollisionPolicy::KillExisting,
        );
        let first = boundary_at_or_after(sim.now_ms() + 1);
        // Run 1; then down from 10 s before the second boundary to 10 s after it.
        obs.advance_to(&mut sim, first + MINUTE_MS - 10_000);
        sim.step(&Event::Crash {
            after_rounds: 0,
            point: CrashPoint::BetweenRounds,
            down_ms: 20_000,
            restart_shards: 1,
        });
        obs.advance_to(&mut sim, first + MINUTE_MS + TICK_MS);
        assert!(
            sim.audits().iter().all(|i| !i.up),
            "seed {seed}: the scheduler is down across the second boundary"
        );
        obs.advance_to(&mut sim, first + MINUTE_MS + 20_000);
        // Restarted: the next trigger is the third boundary, computed from the restart.
        let next = sim.job_audit(KEY).and_then(|j| j.cron_next_run_unix_ms);
        assert_eq!(next, Some(wall(first + 2 * MINUTE_MS)), "seed {seed}");
        // Right after the third boundary's run started: a crash and a restart.
        obs.advance_to(&mut sim, first + 2 * MINUTE_MS + 500);
        sim.crash_and_recover();
        // Right before the fourth boundary: a crash and a restart; it still runs, once.
        obs.advance_to(&mut sim, first + 3 * MINUTE_MS - TICK_MS);
        sim.crash_and_recover();
        obs.advance_to(&mut sim, first + 3 * MINUTE_MS + 30_000);
        obs.finish(&mut sim);
        let runs = obs.run_times(KEY, 2);
        let expected = [first, first + 2 * MINUTE_MS, first + 3 * MINUTE_MS];
        assert_eq!(
            runs.len(),
            3,
            "seed {seed}: runs at {runs:?}, triggers {expected:?}"
        );
        for (at, trigger) in runs.iter().zip(expected) {
            assert_at_trigger(*at, trigger);
        }
        sim.run_until_quiet();
    }
}

#[test]
fn deschedule_between_runs_forgets_the_job_and_runs_no_more() {
    for seed in [11, 12] {
        let mut sim = cluster(seed);
        let mut obs = Observer::default();
        schedule(
            &mut sim,
            KEY,
            job(2, TaskPlan::FinishAfter(10_000)),
            CollisionPolicy::KillExisting,
        );
        let first = boundary_at_or_after(sim.now_ms() + 1);
        // Idle between runs: the deschedule forgets the job at once.
        obs.advance_to(&mut sim, first + 30_000);
        sim.deschedule_cron(KEY).unwrap();
        obs.advance(&mut sim, TICK_MS);
        assert!(
            sim.job_audit(KEY).is_none(),
            "seed {seed}: {:?}",
            sim.job_audit(KEY)
        );
        obs.advance_to(&mut sim, first + 3 * MINUTE_MS);
        assert!(sim.job_audit(KEY).is_none(), "seed {seed}");

        obs.finish(&mut sim);
        assert_eq!(obs.run_times(KEY, 2).len(), 1, "seed {seed}");
        sim.run_until_quiet();
    }
}

/// Deschedules `KEY` 3 s into its first run; returns the sim (at 3 min after the run's
/// trigger) after checking that the run finished and no run followed.
fn deschedule_during_a_run(seed: u64) -> Sim {
    let mut sim = cluster(seed);
    let mut obs = Observer::default();
    schedule(
        &mut sim,
        KEY,
        job(2, TaskPlan::FinishAfter(10_000)),
        CollisionPolicy::KillExisting,
    );
    let first = boundary_at_or_after(sim.now_ms() + 1);
    obs.advance_to(&mut sim, first + 3_000);
    sim.deschedule_cron(KEY).unwrap();
    let audit = sim.job_audit(KEY).expect("a run in progress keeps the job");
    assert_eq!(audit.cron_next_run_unix_ms, None, "seed {seed}");
    assert!(
        sim.start_cron(KEY).is_err(),
        "seed {seed}: no longer a cron job"
    );
    obs.advance_to(&mut sim, first + 3 * MINUTE_MS);
    obs.finish(&mut sim);
    assert_eq!(obs.run_times(KEY, 2).len(), 1, "seed {seed}");
    for i in 0..2 {
        let tasks = obs.runs_of(KEY, i);
        let path: Vec<TaskState> = sim.transitions_of(tasks[0].0).iter().map(|t| t.2).collect();
        assert_eq!(
            path.last(),
            Some(&TaskState::Finished),
            "seed {seed}: {path:?}"
        );
    }
    assert!(
        sim.current_tasks(KEY).iter().all(|t| t.state.is_terminal()),
        "seed {seed}"
    );
    sim
}

#[test]
fn deschedule_during_a_run_lets_it_finish_and_runs_no_more() {
    for seed in [13, 14] {
        let mut sim = deschedule_during_a_run(seed);
        sim.run_until_quiet();
    }
}

/// A run in progress at the deschedule finishes as a plain job (as in Aurora): the job stays,
/// every instance retired, with no next trigger, until history pruning forgets it.
#[test]
fn a_job_descheduled_during_a_run_stays_as_a_plain_job() {
    for seed in [13, 14] {
        let mut sim = deschedule_during_a_run(seed);
        let audit = sim.job_audit(KEY).expect("the job stays");
        assert!(audit.retired.iter().all(|r| *r), "seed {seed}: {audit:?}");
        assert_eq!(audit.cron_next_run_unix_ms, None, "seed {seed}");
    }
}

#[test]
fn max_batch_size_bounds_the_triggers_per_tick() {
    const JOBS: usize = 25;
    const BATCH: usize = 10;
    for seed in [15, 16] {
        let mut sim = Sim::new(seed)
            .settings(|s| s.changes.cron_scheduling_max_batch_size = BATCH)
            .agent("h0", res(16_000), &[])
            .agent("h1", res(16_000), &[]);
        let mut obs = Observer::default();
        let keys: Vec<String> = (0..JOBS).map(|n| format!("www/prod/cron{n:02}")).collect();
        for key in &keys {
            schedule(
                &mut sim,
                key,
                job(1, TaskPlan::FinishAfter(10_000)),
                CollisionPolicy::KillExisting,
            );
        }
        let first = boundary_at_or_after(sim.now_ms() + 1);
        obs.advance_to(&mut sim, first + 5_000);
        obs.finish(&mut sim);
        // Every job ran once, within a few ticks of the boundary.
        let mut created: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
        for key in &keys {
            let runs = obs.run_times(key, 1);
            assert_eq!(runs.len(), 1, "seed {seed}: {key} runs at {runs:?}");
            assert!(
                runs[0] >= first && runs[0] <= first + 10 * TICK_MS,
                "seed {seed}: {key} ran at {}, the trigger at {first}",
                runs[0]
            );
            created.entry(runs[0]).or_default().insert(key);
        }
        // One shard: at most BATCH in each tick, so at least ceil(JOBS / BATCH) ticks.
        for (at, keys) in &created {
            assert!(
                keys.len() <= BATCH,
                "seed {seed}: {} runs at {at}: {keys:?}",
                keys.len()
            );
        }
        assert!(
            created.len() >= JOBS.div_ceil(BATCH),
            "seed {seed}: {created:?}"
        );
        sim.run_until_quiet();
    }
}
