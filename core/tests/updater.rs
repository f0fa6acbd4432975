//! Integration tests of the rolling-update state machine (`borealis_core::update`), driven by a
//! small simulated shard: a map instance → (live revision, RUNNING since) that applies the
//! updater's actions the way a shard does (the instance's task goes away on the action, a task
//! on the action's revision starts on a later tick, and runs — or fails — on a later tick
//! still), under a fake clock. Every step of every test also checks the updater's invariants
//! (see `Sim::check`).

use std::collections::{BTreeMap, BTreeSet};

use borealis_core::update::{
    Action, Command, CommandError, InstancePhase, InstanceView, JobUpdate, Rev, UpdateSettings,
    UpdateStatus, UPDATE_EVENTS_MAX,
};
use proptest::prelude::*;

const S: u64 = 1_000_000;
const JOB: &str = "www-data/prod/hello";
const ID: u64 = 7;
const TO: Rev = 1;
const UNIX0: u64 = 1_700_000_000_000;
/// The fake clock starts here, so that tasks RUNNING since 0 have run a long while.
const T0: u64 = 1_000 * S;

// ---------------------------------------------------------------------------------------------
// The simulated shard.
// ---------------------------------------------------------------------------------------------

/// One instance as the shard sees it.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// What the updater last asked for (initially: what it ran before the update).
    want: Option<Rev>,
    /// The revision of its live task (None: no live task).
    live: Option<Rev>,
    /// Its live task is RUNNING since.
    running_since: Option<u64>,
    /// When its live task started (to time the way to RUNNING).
    started_at: u64,
    /// The tick of its last change: the next one happens on a later tick.
    changed_tick: u64,
}

/// How tasks of one revision fail on one instance.
#[derive(Clone, Copy, Debug)]
struct FailSpec {
    /// Failures left (u32::MAX: always).
    times: u32,
    /// None: the task fails instead of becoming RUNNING; Some(d): it fails after RUNNING d µs.
    after_running_us: Option<u64>,
}

#[derive(Clone, Debug)]
struct StepRecord {
    tick: u64,
    now_us: u64,
    before: UpdateStatus,
    after: UpdateStatus,
    actions: Vec<Action>,
    in_flight: usize,
    /// Instances that left WAITING in this step.
    taken: Vec<u32>,
    /// Instances that went IN_FLIGHT → SUCCEEDED in this step.
    settled: Vec<u32>,
}

struct Sim {
    upd: JobUpdate,
    now_us: u64,
    tick: u64,
    tick_us: u64,
    slots: BTreeMap<u32, Slot>,
    /// Extra time from a task's start to RUNNING, per instance.
    start_delay_us: BTreeMap<u32, u64>,
    /// Tasks of these revisions always fail instead of running.
    bad_revs: BTreeSet<Rev>,
    fail: BTreeMap<(u32, Rev), FailSpec>,
    /// The SLA refuses to take these instances down.
    sla_deny: BTreeSet<u32>,
    sla_asked: Vec<(u64, u32)>,
    steps: Vec<StepRecord>,
    /// (tick, instance, revision) of each task failure reported to the updater.
    failures: Vec<(u64, u32, Rev)>,
    /// The first terminal status seen, and the desired revisions then.
    terminal: Option<(UpdateStatus, Vec<Option<Rev>>)>,
}

fn unix_ms(now_us: u64) -> u64 {
    UNIX0 + now_us / 1_000
}

impl Sim {
    fn new(upd: JobUpdate) -> Sim {
        let slots = upd
            .instances
            .iter()
            .map(|p| {
                (
                    p.instance,
                    Slot {
                        want: p.from,
                        live: p.from,
                        running_since: p.from.map(|_| 0),
                        started_at: 0,
                        changed_tick: 0,
                    },
                )
            })
            .collect();
        let sim = Sim {
            upd,
            now_us: T0,
            tick: 1,
            tick_us: S,
            slots,
            start_delay_us: BTreeMap::new(),
            bad_revs: BTreeSet::new(),
            fail: BTreeMap::new(),
            sla_deny: BTreeSet::new(),
            sla_asked: Vec::new(),
            steps: Vec::new(),
            failures: Vec::new(),
            terminal: None,
        };
        sim.check_desired("new");
        sim
    }

    fn unix_ms(&self) -> u64 {
        unix_ms(self.now_us)
    }

    fn status(&self) -> UpdateStatus {
        self.upd.status
    }

    fn desired_all(&self) -> Vec<Option<Rev>> {
        self.upd
            .instances
            .iter()
            .map(|p| self.upd.desired(p.instance).expect("in scope"))
            .collect()
    }

    fn froms(&self) -> Vec<Option<Rev>> {
        self.upd.instances.iter().map(|p| p.from).collect()
    }

    fn tos(&self) -> Vec<Option<Rev>> {
        self.upd.instances.iter().map(|p| p.to).collect()
    }

    fn phase(&self, instance: u32) -> InstancePhase {
        self.upd.progress(instance).expect("in scope").phase
    }

    fn live(&self, instance: u32) -> (Option<Rev>, bool) {
        let s = &self.slots[&instance];
        (s.live, s.running_since.is_some())
    }

    /// Whether a task of `rev` on `instance` fails now (counting the failure).
    fn fails(&mut self, instance: u32, rev: Rev, running: bool) -> bool {
        if !running && self.bad_revs.contains(&rev) {
            return true;
        }
        let Some(spec) = self.fail.get_mut(&(instance, rev)) else {
            return false;
        };
        if spec.times == 0 {
            return false;
        }
        let now = self.now_us;
        let due = match (spec.after_running_us, running) {
            (None, false) => true,
            (Some(d), true) => {
                let since = self.slots[&instance].running_since.expect("running");
                now >= since + d
            }
            _ => false,
        };
        if due && spec.times != u32::MAX {
            spec.times -= 1;
        }
        due
    }

    /// The shard's own progress for one tick: starts replacement tasks, brings started ones
    /// to RUNNING (or fails them), and reports failures to the updater.
    fn shard_tick(&mut self) {
        let instances: Vec<u32> = self.slots.keys().copied().collect();
        for i in instances {
            let s = self.slots[&i];
            if s.changed_tick >= self.tick {
                continue;
            }
            let delay = self.start_delay_us.get(&i).copied().unwrap_or(0);
            match (s.live, s.running_since) {
                (None, _) => {
                    if let Some(rev) = s.want {
                        let s = self.slots.get_mut(&i).unwrap();
                        s.live = Some(rev);
                        s.running_since = None;
                        s.started_at = self.now_us;
                        s.changed_tick = self.tick;
                    }
                }
                (Some(rev), None) => {
                    if self.now_us >= s.started_at + delay {
                        if self.fails(i, rev, false) {
                            self.task_failed(i, rev);
                        } else {
                            let s = self.slots.get_mut(&i).unwrap();
                            s.running_since = Some(self.now_us);
                            s.changed_tick = self.tick;
                        }
                    }
                }
                (Some(rev), Some(_)) => {
                    if self.fails(i, rev, true) {
                        self.task_failed(i, rev);
                    }
                }
            }
        }
    }

    fn task_failed(&mut self, instance: u32, rev: Rev) {
        let s = self.slots.get_mut(&instance).unwrap();
        s.live = None;
        s.running_since = None;
        s.changed_tick = self.tick;
        self.failures.push((self.tick, instance, rev));
        let (now, unix) = (self.now_us, self.unix_ms());
        self.upd.task_failed(instance, now, unix);
        self.check_desired("task_failed");
        self.check_terminal(&[]);
    }

    /// One round: the shard's tick, the updater's step, the actions applied; then the clock
    /// advances by `tick_us`.
    fn step(&mut self) -> Vec<Action> {
        self.shard_tick();
        let before = self.status();
        let phases: Vec<InstancePhase> = self.upd.instances.iter().map(|p| p.phase).collect();
        let mut actions = Vec::new();
        {
            let Sim {
                upd,
                slots,
                sla_deny,
                sla_asked,
                now_us,
                tick,
                ..
            } = self;
            let mut view = |i: u32| {
                slots
                    .get(&i)
                    .map(|s| InstanceView {
                        live_rev: s.live,
                        running_since_us: s.running_since,
                    })
                    .unwrap_or_default()
            };
            let mut may_take = |i: u32| {
                sla_asked.push((*tick, i));
                !sla_deny.contains(&i)
            };
            upd.step(
                *now_us,
                unix_ms(*now_us),
                &mut view,
                &mut may_take,
                &mut actions,
            );
        }
        for a in &actions {
            let s = self.slots.get_mut(&a.instance).expect("action in scope");
            s.want = a.rev;
            s.live = None;
            s.running_since = None;
            s.changed_tick = self.tick;
        }
        let after = self.status();
        let mut taken = Vec::new();
        let mut settled = Vec::new();
        for (p, was) in self.upd.instances.iter().zip(&phases) {
            if *was == InstancePhase::Waiting && p.phase != InstancePhase::Waiting {
                taken.push(p.instance);
            }
            if *was == InstancePhase::InFlight && p.phase == InstancePhase::Succeeded {
                settled.push(p.instance);
            }
        }
        let record = StepRecord {
            tick: self.tick,
            now_us: self.now_us,
            before,
            after,
            actions: actions.clone(),
            in_flight: self.upd.in_flight(),
            taken,
            settled,
        };
        self.check(&record, &phases);
        self.steps.push(record);
        self.tick += 1;
        self.now_us += self.tick_us;
        actions
    }

    fn run(&mut self, steps: usize) -> Vec<Action> {
        let mut all = Vec::new();
        for _ in 0..steps {
            all.extend(self.step());
        }
        all
    }

    /// Steps until `done` holds (checked before each step); false if it never did.
    fn run_until(&mut self, max: usize, mut done: impl FnMut(&Sim) -> bool) -> bool {
        for _ in 0..max {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    fn run_to_end(&mut self, max: usize) -> UpdateStatus {
        assert!(
            self.run_until(max, |s| s.status().is_terminal()),
            "update did not end within {max} steps: {:?}",
            self.upd
        );
        self.status()
    }

    fn cmd(&mut self, command: Command) -> Result<(), CommandError> {
        self.cmd_msg(command, "")
    }

    fn cmd_msg(&mut self, command: Command, message: &str) -> Result<(), CommandError> {
        let before = self.upd.clone();
        let (now, unix) = (self.now_us, self.unix_ms());
        let r = self.upd.command(command, now, unix, message.to_string());
        match &r {
            Ok(()) => {}
            Err(e) => {
                // A refused command changes nothing and says why.
                assert_eq!(self.upd, before, "refused {command:?} changed the update");
                assert_eq!(e.id, self.upd.id);
                assert_eq!(e.job, self.upd.job);
                assert_eq!(e.status, self.upd.status);
                assert_eq!(e.command, command.as_str());
            }
        }
        self.check_desired("command");
        self.check_terminal(&[]);
        r
    }

    /// Actions the shard applied, in order.
    fn actions(&self) -> Vec<Action> {
        self.steps.iter().flat_map(|r| r.actions.clone()).collect()
    }

    /// Actions of the steps that began rolling forward (or rolling back).
    fn actions_in(&self, back: bool) -> Vec<Action> {
        self.steps
            .iter()
            .filter(|r| r.before.is_rollback() == back)
            .flat_map(|r| r.actions.clone())
            .collect()
    }

    fn taken_at(&self, instance: u32) -> Vec<u64> {
        self.steps
            .iter()
            .filter(|r| r.taken.contains(&instance))
            .map(|r| r.tick)
            .collect()
    }

    fn settled_at(&self, instance: u32) -> Vec<u64> {
        self.steps
            .iter()
            .filter(|r| r.settled.contains(&instance))
            .map(|r| r.tick)
            .collect()
    }

    /// The updater's desired revisions are what the shard was told: every change of a desired
    /// revision came with an action (and nothing else changes one).
    fn check_desired(&self, context: &str) {
        for p in &self.upd.instances {
            let want = self.slots[&p.instance].want;
            assert_eq!(
                self.upd.desired(p.instance),
                Some(want),
                "{context}: instance {} desired differs from the actions applied (status {}, \
                 {p:?})",
                p.instance,
                self.upd.status
            );
        }
    }

    /// A terminal status is final: no status change, no action, no desired change.
    fn check_terminal(&mut self, actions: &[Action]) {
        if let Some((status, desired)) = &self.terminal {
            assert_eq!(self.upd.status, *status, "left terminal status {status}");
            assert!(actions.is_empty(), "actions after {status}: {actions:?}");
            assert_eq!(
                &self.desired_all(),
                desired,
                "desired changed after {status}"
            );
            return;
        }
        if self.upd.status.is_terminal() {
            self.terminal = Some((self.upd.status, self.desired_all()));
            match self.upd.status {
                UpdateStatus::RolledBack => assert_eq!(self.desired_all(), self.froms()),
                UpdateStatus::RolledForward => assert_eq!(self.desired_all(), self.tos()),
                _ => {}
            }
        }
    }

    fn check(&mut self, r: &StepRecord, phases_before: &[InstancePhase]) {
        let settings = self.upd.settings;
        let batch = settings.batch_size as usize;
        assert!(
            r.in_flight <= batch,
            "tick {}: {} in flight > batch {batch}",
            r.tick,
            r.in_flight
        );
        // Actions in taking order: increasing forward, decreasing rolling back.
        let ids: Vec<u32> = r.actions.iter().map(|a| a.instance).collect();
        let back = r.before.is_rollback();
        let ordered = if back {
            ids.windows(2).all(|w| w[0] > w[1])
        } else {
            ids.windows(2).all(|w| w[0] < w[1])
        };
        assert!(ordered, "tick {}: actions out of order {ids:?}", r.tick);
        // An action's revision is the instance's target in the current direction.
        for a in &r.actions {
            let p = self.upd.progress(a.instance).unwrap();
            let target = if back { p.from } else { p.to };
            assert_eq!(a.rev, target, "tick {}: {a:?} of {p:?}", r.tick);
            assert!(r.taken.contains(&a.instance), "action without a take {a:?}");
        }
        if settings.wait_for_batch_completion && !r.taken.is_empty() {
            for (p, was) in self.upd.instances.iter().zip(phases_before) {
                assert!(
                    !(*was == InstancePhase::InFlight && p.phase == InstancePhase::InFlight),
                    "tick {}: took {:?} while instance {} was in flight from an earlier step",
                    r.tick,
                    r.taken,
                    p.instance
                );
            }
        }
        // Nothing new starts unless the update progresses.
        if !r.taken.is_empty() {
            assert!(
                r.before.is_progressing(),
                "tick {}: took {:?} in {}",
                r.tick,
                r.taken,
                r.before
            );
        }
        self.check_desired("step");
        self.check_terminal(&r.actions);
    }
}

fn settings(batch: u32, watch: u32) -> UpdateSettings {
    UpdateSettings {
        batch_size: batch,
        watch_secs: watch,
        ..UpdateSettings::default()
    }
}

/// An update of instances 0..from.len() (from[i]: instance i's revision before) to `TO`.
fn update_of(settings: UpdateSettings, from: &[Option<Rev>], before: u32, after: u32) -> JobUpdate {
    JobUpdate::new(
        ID,
        JOB.to_string(),
        settings,
        before,
        after,
        TO,
        from.iter().enumerate().map(|(i, f)| (i as u32, *f)),
        UNIX0,
        "created by test".to_string(),
    )
}

fn uniform(settings: UpdateSettings, n: u32) -> JobUpdate {
    update_of(settings, &vec![Some(0); n as usize], n, n)
}

fn sim(settings: UpdateSettings, n: u32) -> Sim {
    Sim::new(uniform(settings, n))
}

fn act(instance: u32, rev: Option<Rev>) -> Action {
    Action { instance, rev }
}

// ---------------------------------------------------------------------------------------------
// 1. Success.
// ---------------------------------------------------------------------------------------------

#[test]
fn rolls_forward_in_batches_in_instance_order() {
    let mut sim = sim(settings(2, 5), 6);
    assert_eq!(sim.status(), UpdateStatus::RollingForward);
    assert_eq!(sim.run_to_end(200), UpdateStatus::RolledForward);

    let batches: Vec<Vec<Action>> = sim
        .steps
        .iter()
        .filter(|r| !r.actions.is_empty())
        .map(|r| r.actions.clone())
        .collect();
    assert_eq!(
        batches,
        vec![
            vec![act(0, Some(1)), act(1, Some(1))],
            vec![act(2, Some(1)), act(3, Some(1))],
            vec![act(4, Some(1)), act(5, Some(1))],
        ]
    );
    let order: Vec<u32> = sim.actions().iter().map(|a| a.instance).collect();
    assert_eq!(order, vec![0, 1, 2, 3, 4, 5]);
    assert!(sim.steps.iter().all(|r| r.in_flight <= 2));
    assert_eq!(sim.steps.iter().map(|r| r.in_flight).max(), Some(2));
    for i in 0..6 {
        assert_eq!(sim.upd.desired(i), Some(Some(1)));
        assert_eq!(sim.phase(i), InstancePhase::Succeeded);
        assert_eq!(sim.live(i), (Some(1), true));
    }
    assert_eq!(sim.upd.failed_instances, 0);
    assert_eq!(sim.upd.in_flight(), 0);
    let last = sim.upd.events.last().unwrap();
    assert_eq!(last.status, UpdateStatus::RolledForward);
    assert_eq!(sim.upd.updated_unix_ms, last.unix_ms);
    // No further actions, however long it is stepped.
    assert!(sim.run(20).is_empty());
}

#[test]
fn an_instance_succeeds_only_after_watch_secs_running() {
    let mut sim = sim(settings(1, 5), 1);
    sim.step(); // tick 1: action
    sim.step(); // tick 2: task starts
    sim.step(); // tick 3: RUNNING since tick 3's time
    let running_at = sim.slots[&0].running_since.unwrap();
    assert!(sim.run_until(50, |s| s.phase(0) == InstancePhase::Succeeded));
    let r = sim.steps.iter().find(|r| r.settled.contains(&0)).unwrap();
    assert_eq!(r.now_us - running_at, 5 * S);
    assert_eq!(r.after, UpdateStatus::RolledForward);
}

#[test]
fn a_task_leaving_running_before_the_watch_ends_restarts_the_watch() {
    let mut s = settings(1, 5);
    s.max_per_instance_failures = 3;
    let mut sim = sim(s, 1);
    // Instance 0's new task runs 3 s and then dies, once.
    sim.fail.insert(
        (0, 1),
        FailSpec {
            times: 1,
            after_running_us: Some(3 * S),
        },
    );
    assert_eq!(sim.run_to_end(100), UpdateStatus::RolledForward);
    assert_eq!(sim.failures.len(), 1);
    assert_eq!(sim.upd.progress(0).unwrap().failures, 1);
    // It succeeded 5 s after its second task started RUNNING, not after the first.
    let second_since = sim.slots[&0].running_since.unwrap();
    let settled = sim.steps.iter().find(|r| r.settled.contains(&0)).unwrap();
    assert_eq!(settled.now_us - second_since, 5 * S);
}

// ---------------------------------------------------------------------------------------------
// 2. wait_for_batch_completion.
// ---------------------------------------------------------------------------------------------

fn uneven(wait: bool) -> Sim {
    let mut s = settings(2, 2);
    s.wait_for_batch_completion = wait;
    let mut sim = sim(s, 4);
    // Instance 1 (and 3) take 10 s to become RUNNING; 0 and 2 are quick.
    sim.start_delay_us.insert(1, 10 * S);
    sim.start_delay_us.insert(3, 10 * S);
    assert_eq!(sim.run_to_end(200), UpdateStatus::RolledForward);
    sim
}

#[test]
fn queue_strategy_starts_an_instance_as_soon_as_one_settles() {
    let sim = uneven(false);
    let (s0, s1) = (sim.settled_at(0)[0], sim.settled_at(1)[0]);
    assert!(s0 < s1);
    // 2 is taken in the step 0 settled, while 1 is still in flight.
    assert_eq!(sim.taken_at(2), vec![s0]);
    assert!(sim.taken_at(2)[0] < s1);
    // 3 is taken as soon as the next one (2) settles, before or after 1.
    let s2 = sim.settled_at(2)[0];
    assert_eq!(sim.taken_at(3), vec![s2.min(s1)]);
    let r = sim.steps.iter().find(|r| r.tick == s0).unwrap();
    assert_eq!(r.in_flight, 2);
}

#[test]
fn batch_strategy_waits_for_the_whole_batch() {
    let sim = uneven(true);
    let (s0, s1) = (sim.settled_at(0)[0], sim.settled_at(1)[0]);
    assert!(s0 < s1);
    // Nothing is taken until the slow instance 1 settled; then 2 and 3 together.
    assert_eq!(sim.taken_at(2), vec![s1]);
    assert_eq!(sim.taken_at(3), vec![s1]);
    for r in sim.steps.iter().filter(|r| r.tick > s0 && r.tick < s1) {
        assert!(r.actions.is_empty());
        assert_eq!(r.in_flight, 1);
    }
}

#[test]
fn queue_strategy_finishes_sooner_than_batch_strategy_with_uneven_instances() {
    let queue = uneven(false);
    let batch = uneven(true);
    assert!(queue.steps.len() < batch.steps.len());
}

// ---------------------------------------------------------------------------------------------
// 3.–5. Failures.
// ---------------------------------------------------------------------------------------------

/// Six instances on mixed revisions, instance 3 cannot run the new one.
const MIXED: [Option<Rev>; 6] = [Some(0), Some(0), Some(2), Some(0), Some(2), Some(0)];

fn failing(rollback: bool) -> Sim {
    let mut s = settings(2, 5);
    s.max_per_instance_failures = 1;
    s.max_total_failures = 0;
    s.rollback_on_failure = rollback;
    let mut sim = Sim::new(update_of(s, &MIXED, 6, 6));
    sim.fail.insert(
        (3, TO),
        FailSpec {
            times: u32::MAX,
            after_running_us: None,
        },
    );
    sim
}

#[test]
fn a_failing_new_config_rolls_back_in_decreasing_order() {
    let mut sim = failing(true);
    assert!(sim.run_until(100, |s| s.status() != UpdateStatus::RollingForward));
    assert_eq!(sim.status(), UpdateStatus::RollingBack);
    // Instance 3 failed twice: once tolerated (max_per_instance_failures 1), then FAILED.
    let fails: Vec<(u32, Rev)> = sim.failures.iter().map(|f| (f.1, f.2)).collect();
    assert_eq!(fails, vec![(3, 1), (3, 1)]);
    assert_eq!(
        sim.actions_in(false),
        vec![
            act(0, Some(1)),
            act(1, Some(1)),
            act(2, Some(1)),
            act(3, Some(1))
        ]
    );
    let ev = sim.upd.events.last().unwrap();
    assert_eq!(ev.status, UpdateStatus::RollingBack);
    assert!(ev.message.contains("instance 3"), "{}", ev.message);
    // Instances taken forward are in the rollback, the others not.
    for i in 0..6 {
        let p = sim.upd.progress(i).unwrap();
        assert_eq!(p.in_rollback, i < 4, "{p:?}");
    }
    assert_eq!(sim.run_to_end(200), UpdateStatus::RolledBack);
    let back = sim.actions_in(true);
    assert_eq!(
        back,
        vec![
            act(3, Some(0)),
            act(2, Some(2)),
            act(1, Some(0)),
            act(0, Some(0))
        ]
    );
    // Batches of two going back too.
    let batches: Vec<usize> = sim
        .steps
        .iter()
        .filter(|r| r.before.is_rollback() && !r.actions.is_empty())
        .map(|r| r.actions.len())
        .collect();
    assert_eq!(batches, vec![2, 2]);
    // Every instance is exactly where it was, including 4 and 5 the update never took.
    assert_eq!(sim.desired_all(), MIXED.to_vec());
    for (i, from) in MIXED.iter().enumerate() {
        assert_eq!(sim.live(i as u32), (*from, true), "instance {i}");
    }
    assert!(!sim.actions().iter().any(|a| a.instance >= 4));
    assert_eq!(
        sim.upd.events.last().unwrap().status,
        UpdateStatus::RolledBack
    );
}

#[test]
fn the_rollback_event_counts_the_failures_of_the_instance() {
    let mut sim = failing(true);
    assert!(sim.run_until(100, |s| s.status() == UpdateStatus::RollingBack));
    let ev = sim.upd.events.last().unwrap();
    // max_per_instance_failures 1: instance 3 failed twice before it counted as failed.
    assert!(
        ev.message.contains("instance 3 failed 2 times"),
        "{}",
        ev.message
    );
}

#[test]
fn a_failing_new_config_without_rollback_fails_where_it_stands() {
    let mut sim = failing(false);
    assert_eq!(sim.run_to_end(100), UpdateStatus::Failed);
    let ev = sim.upd.events.last().unwrap();
    assert!(ev.message.contains("instance 3"), "{}", ev.message);
    assert!(!ev.message.contains("rolling back"), "{}", ev.message);
    // Taken instances stay on the new revision, the others on theirs.
    let desired = sim.desired_all();
    assert_eq!(
        desired,
        vec![Some(1), Some(1), Some(1), Some(1), Some(2), Some(0)]
    );
    assert!(sim.upd.instances.iter().all(|p| !p.in_rollback));
    assert_eq!(sim.phase(3), InstancePhase::Failed);
    assert_eq!(sim.upd.failed_instances, 1);
    let n = sim.actions().len();
    assert_eq!(n, 4);
    // Nothing more happens: not an action, not a status.
    assert!(sim.run(30).is_empty());
    assert_eq!(sim.status(), UpdateStatus::Failed);
    assert_eq!(sim.live(0), (Some(1), true));
    assert_eq!(sim.live(5), (Some(0), true));
}

#[test]
fn a_bad_revision_rolls_back_after_the_first_instance() {
    let mut s = settings(1, 5);
    s.max_per_instance_failures = 0;
    let mut sim = sim(s, 4);
    sim.bad_revs.insert(TO);
    assert_eq!(sim.run_to_end(100), UpdateStatus::RolledBack);
    assert_eq!(sim.actions(), vec![act(0, Some(1)), act(0, Some(0))]);
    assert_eq!(sim.failures.len(), 1);
    assert_eq!(sim.desired_all(), vec![Some(0); 4]);
}

#[test]
fn tolerated_failures_still_roll_forward() {
    let mut s = settings(2, 3);
    s.max_per_instance_failures = 2;
    s.max_total_failures = 1;
    let mut sim = sim(s, 5);
    // Instance 1 fails twice, then runs (tolerated per instance); instance 3 always fails
    // (one failed instance is tolerated).
    sim.fail.insert(
        (1, 1),
        FailSpec {
            times: 2,
            after_running_us: None,
        },
    );
    sim.fail.insert(
        (3, 1),
        FailSpec {
            times: u32::MAX,
            after_running_us: Some(S),
        },
    );
    assert_eq!(sim.run_to_end(300), UpdateStatus::RolledForward);
    assert_eq!(sim.phase(1), InstancePhase::Succeeded);
    assert_eq!(sim.upd.progress(1).unwrap().failures, 2);
    assert_eq!(sim.phase(3), InstancePhase::Failed);
    assert_eq!(sim.upd.progress(3).unwrap().failures, 3);
    assert_eq!(sim.upd.failed_instances, 1);
    assert_eq!(sim.desired_all(), vec![Some(1); 5]);
    let msg = &sim.upd.events.last().unwrap().message;
    assert!(msg.contains("1 failed"), "{msg}");
}

#[test]
fn a_failure_while_rolling_back_fails_the_update() {
    let mut sim = failing(true);
    // Instance 2 cannot run its old revision any more either.
    sim.fail.insert(
        (2, 2),
        FailSpec {
            times: u32::MAX,
            after_running_us: None,
        },
    );
    assert_eq!(sim.run_to_end(200), UpdateStatus::Failed);
    let ev = sim.upd.events.last().unwrap();
    assert!(ev.message.contains("while rolling back"), "{}", ev.message);
    assert!(ev.message.contains("instance 2"), "{}", ev.message);
    let statuses: Vec<UpdateStatus> = sim.upd.events.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        vec![
            UpdateStatus::RollingForward,
            UpdateStatus::RollingBack,
            UpdateStatus::Failed
        ]
    );
    // 3 and 2 were taken back (2 failed there); 1 and 0 stay on the new revision, not taken
    // back; 4 and 5 were never touched.
    assert_eq!(
        sim.desired_all(),
        vec![Some(1), Some(1), Some(2), Some(0), Some(2), Some(0)]
    );
    assert_eq!(sim.phase(2), InstancePhase::Failed);
    assert_eq!(sim.phase(1), InstancePhase::Waiting);
    assert_eq!(sim.phase(0), InstancePhase::Waiting);
    assert!(sim.upd.progress(1).unwrap().in_rollback);
    assert!(sim.run(30).is_empty());
}

#[test]
fn a_failure_while_paused_rolls_back_paused() {
    let mut s = settings(1, 5);
    s.max_per_instance_failures = 0;
    let mut sim = sim(s, 3);
    sim.fail.insert(
        (0, 1),
        FailSpec {
            times: u32::MAX,
            after_running_us: Some(2 * S),
        },
    );
    sim.step(); // takes 0
    sim.cmd(Command::Pause).unwrap();
    assert!(sim.run_until(20, |s| s.status() != UpdateStatus::RollForwardPaused));
    assert_eq!(sim.status(), UpdateStatus::RollBackPaused);
    assert!(sim.run(20).is_empty());
    assert_eq!(sim.status(), UpdateStatus::RollBackPaused);
    sim.cmd(Command::Resume).unwrap();
    assert_eq!(sim.status(), UpdateStatus::RollingBack);
    assert_eq!(sim.run_to_end(50), UpdateStatus::RolledBack);
    assert_eq!(sim.desired_all(), vec![Some(0); 3]);
}

#[test]
fn failures_of_instances_not_in_flight_do_not_count() {
    let mut sim = sim(settings(1, 5), 3);
    // Instance 2 is not taken yet: its task failing is none of the update's business.
    let (now, unix) = (sim.now_us, sim.unix_ms());
    sim.upd.task_failed(2, now, unix);
    sim.upd.task_failed(99, now, unix); // not in scope
    assert_eq!(sim.upd.progress(2).unwrap().failures, 0);
    assert_eq!(sim.upd.failed_instances, 0);
    assert_eq!(sim.status(), UpdateStatus::RollingForward);
    assert_eq!(sim.run_to_end(100), UpdateStatus::RolledForward);
    // Nor after the update ended.
    let before = sim.upd.clone();
    sim.upd.task_failed(0, now, unix);
    assert_eq!(sim.upd, before);
}

// ---------------------------------------------------------------------------------------------
// 6. Pause and resume; refused commands.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_paused_update_starts_nothing_but_lets_in_flight_instances_settle() {
    let mut sim = sim(settings(2, 5), 6);
    assert_eq!(sim.step(), vec![act(0, Some(1)), act(1, Some(1))]);
    sim.cmd_msg(Command::Pause, "hold on").unwrap();
    assert_eq!(sim.status(), UpdateStatus::RollForwardPaused);
    let ev = sim.upd.events.last().unwrap();
    assert_eq!(
        (ev.status, ev.message.as_str()),
        (UpdateStatus::RollForwardPaused, "hold on")
    );
    assert_eq!(sim.upd.in_flight(), 2);
    assert!(sim.run(40).is_empty());
    assert_eq!(sim.status(), UpdateStatus::RollForwardPaused);
    assert_eq!(sim.upd.in_flight(), 0);
    assert_eq!(sim.phase(0), InstancePhase::Succeeded);
    assert_eq!(sim.phase(1), InstancePhase::Succeeded);
    assert_eq!(sim.phase(2), InstancePhase::Waiting);
    // Pausing again is refused.
    assert!(sim.cmd(Command::Pause).is_err());
    sim.cmd(Command::Resume).unwrap();
    assert_eq!(sim.status(), UpdateStatus::RollingForward);
    assert_eq!(sim.upd.events.last().unwrap().message, "resume by operator");
    assert_eq!(sim.step(), vec![act(2, Some(1)), act(3, Some(1))]);
    assert_eq!(sim.run_to_end(100), UpdateStatus::RolledForward);
    let statuses: Vec<UpdateStatus> = sim.upd.events.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        vec![
            UpdateStatus::RollingForward,
            UpdateStatus::RollForwardPaused,
            UpdateStatus::RollingForward,
            UpdateStatus::RolledForward
        ]
    );
}

#[test]
fn a_paused_rollback_resumes_rolling_back() {
    let mut sim = sim(settings(1, 2), 3);
    assert!(sim.run_until(50, |s| s.phase(1) == InstancePhase::InFlight));
    sim.cmd(Command::Rollback).unwrap();
    sim.cmd(Command::Pause).unwrap();
    assert_eq!(sim.status(), UpdateStatus::RollBackPaused);
    assert!(sim.run(30).is_empty());
    assert!(sim.cmd(Command::Rollback).is_err());
    sim.cmd(Command::Resume).unwrap();
    assert_eq!(sim.status(), UpdateStatus::RollingBack);
    assert_eq!(sim.run_to_end(50), UpdateStatus::RolledBack);
    assert_eq!(sim.desired_all(), vec![Some(0); 3]);
}

#[test]
fn commands_in_the_wrong_status_are_refused_and_say_why() {
    let mut sim = sim(settings(1, 1), 2);
    let e = sim.cmd(Command::Resume).unwrap_err();
    assert_eq!(
        e,
        CommandError {
            id: ID,
            job: JOB.to_string(),
            status: UpdateStatus::RollingForward,
            command: "resume",
        }
    );
    let text = e.to_string();
    assert_eq!(
        text,
        "update 7 of www-data/prod/hello is ROLLING_FORWARD: cannot resume"
    );
    for part in ["7", JOB, "ROLLING_FORWARD", "resume"] {
        assert!(text.contains(part), "{text} lacks {part}");
    }
    // Pulse without a pulse interval.
    let e = sim.cmd(Command::Pulse).unwrap_err();
    assert_eq!(e.command, "pulse");
    assert!(e.to_string().contains("cannot pulse"));

    assert_eq!(sim.run_to_end(50), UpdateStatus::RolledForward);
    for c in [
        Command::Pause,
        Command::Resume,
        Command::Abort,
        Command::Rollback,
        Command::Pulse,
    ] {
        let e = sim.cmd(c).unwrap_err();
        assert_eq!(e.status, UpdateStatus::RolledForward);
        assert_eq!(e.command, c.as_str());
        assert_eq!(
            e.to_string(),
            format!(
                "update 7 of www-data/prod/hello is ROLLED_FORWARD: cannot {}",
                c.as_str()
            )
        );
    }
}

#[test]
fn rollback_is_refused_while_rolling_back() {
    let mut sim = sim(settings(1, 1), 2);
    sim.step();
    sim.cmd(Command::Rollback).unwrap();
    let e = sim.cmd(Command::Rollback).unwrap_err();
    assert_eq!(e.status, UpdateStatus::RollingBack);
    assert_eq!(
        e.to_string(),
        "update 7 of www-data/prod/hello is ROLLING_BACK: cannot rollback"
    );
    assert!(sim.cmd(Command::Resume).is_err());
}

// ---------------------------------------------------------------------------------------------
// 7. Pulses.
// ---------------------------------------------------------------------------------------------

fn pulsed(n: u32) -> Sim {
    let mut s = settings(1, 4);
    s.pulse_interval_secs = Some(10);
    sim(s, n)
}

#[test]
fn a_pulsed_update_waits_for_its_first_pulse() {
    let mut sim = pulsed(4);
    assert_eq!(sim.status(), UpdateStatus::RollForwardAwaitingPulse);
    assert_eq!(
        sim.upd.events[0].status,
        UpdateStatus::RollForwardAwaitingPulse
    );
    assert!(sim.run(30).is_empty());
    assert_eq!(sim.status(), UpdateStatus::RollForwardAwaitingPulse);
    assert!(sim
        .upd
        .instances
        .iter()
        .all(|p| p.phase == InstancePhase::Waiting));
    sim.cmd(Command::Pulse).unwrap();
    assert_eq!(sim.status(), UpdateStatus::RollingForward);
    assert_eq!(sim.step(), vec![act(0, Some(1))]);
}

#[test]
fn without_pulses_the_update_goes_back_to_awaiting_pulse() {
    let mut sim = pulsed(4);
    sim.cmd(Command::Pulse).unwrap();
    let pulse_at = sim.now_us;
    // 0: taken at +0, starts +1, RUNNING +2, settles +6; 1 taken at +6, RUNNING +8.
    let mut taken_while_stale = Vec::new();
    while sim.now_us < pulse_at + 30 * S {
        let now = sim.now_us;
        let actions = sim.step();
        if now >= pulse_at + 10 * S {
            taken_while_stale.extend(actions);
        }
    }
    assert_eq!(sim.status(), UpdateStatus::RollForwardAwaitingPulse);
    assert!(taken_while_stale.is_empty(), "{taken_while_stale:?}");
    // It went AWAITING_PULSE at the first step 10 s after the pulse.
    let r = sim
        .steps
        .iter()
        .find(|r| r.after == UpdateStatus::RollForwardAwaitingPulse)
        .unwrap();
    assert_eq!(r.now_us, pulse_at + 10 * S);
    assert!(sim
        .steps
        .iter()
        .any(|r| r.now_us == pulse_at + 9 * S && r.after == UpdateStatus::RollingForward));
    let ev = sim.upd.events.last().unwrap();
    assert!(ev.message.contains("pulse"), "{}", ev.message);
    // Instance 1, in flight when the pulse expired, still settled on its own.
    assert_eq!(sim.phase(0), InstancePhase::Succeeded);
    assert_eq!(sim.phase(1), InstancePhase::Succeeded);
    assert!(sim.settled_at(1)[0] > r.tick);
    assert_eq!(sim.phase(2), InstancePhase::Waiting);
    // A pulse resumes it.
    sim.cmd(Command::Pulse).unwrap();
    assert_eq!(sim.status(), UpdateStatus::RollingForward);
    assert_eq!(sim.step(), vec![act(2, Some(1))]);
}

#[test]
fn regular_pulses_carry_the_update_to_its_end() {
    let mut sim = pulsed(4);
    for k in 0..200 {
        if sim.status().is_terminal() {
            break;
        }
        // Every 5 s, well within the 10 s interval.
        if k % 5 == 0 {
            sim.cmd(Command::Pulse).unwrap();
        }
        sim.step();
        assert_ne!(sim.status(), UpdateStatus::RollForwardAwaitingPulse);
    }
    assert_eq!(sim.status(), UpdateStatus::RolledForward);
    // A pulse of a running update only refreshes it: no event.
    let statuses: Vec<UpdateStatus> = sim.upd.events.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        vec![
            UpdateStatus::RollForwardAwaitingPulse,
            UpdateStatus::RollingForward,
            UpdateStatus::RolledForward
        ]
    );
}

#[test]
fn pulse_while_paused_keeps_it_paused_and_resume_needs_a_fresh_pulse() {
    let mut sim = pulsed(3);
    sim.cmd(Command::Pause).unwrap();
    assert_eq!(sim.status(), UpdateStatus::RollForwardPaused);
    sim.cmd(Command::Pulse).unwrap();
    assert_eq!(sim.status(), UpdateStatus::RollForwardPaused);
    assert!(sim.run(3).is_empty());
    // Resumed within the interval of that pulse: rolling forward.
    sim.cmd(Command::Resume).unwrap();
    assert_eq!(sim.status(), UpdateStatus::RollingForward);
    sim.cmd(Command::Pause).unwrap();
    sim.run(15);
    // Resumed once the pulse is stale: awaiting one.
    sim.cmd(Command::Resume).unwrap();
    assert_eq!(sim.status(), UpdateStatus::RollForwardAwaitingPulse);
    assert!(sim.run(5).is_empty());
}

#[test]
fn a_pulsed_rollback_awaits_pulses_too() {
    let mut sim = pulsed(3);
    sim.cmd(Command::Pulse).unwrap();
    assert!(sim.run_until(30, |s| s.phase(1) == InstancePhase::InFlight));
    sim.cmd(Command::Rollback).unwrap();
    assert_eq!(sim.status(), UpdateStatus::RollingBack);
    sim.run(15);
    assert_eq!(sim.status(), UpdateStatus::RollBackAwaitingPulse);
    let n = sim.actions().len();
    assert!(sim.run(10).is_empty());
    sim.cmd(Command::Pulse).unwrap();
    assert_eq!(sim.status(), UpdateStatus::RollingBack);
    let mut guard = 0;
    while !sim.status().is_terminal() && guard < 200 {
        if sim.status() == UpdateStatus::RollBackAwaitingPulse {
            sim.cmd(Command::Pulse).unwrap();
        }
        sim.step();
        guard += 1;
    }
    assert_eq!(sim.status(), UpdateStatus::RolledBack);
    assert!(sim.actions().len() > n);
    assert_eq!(sim.desired_all(), vec![Some(0); 3]);
}

// ---------------------------------------------------------------------------------------------
// 8.–9. Abort and manual rollback.
// ---------------------------------------------------------------------------------------------

/// Runs a 6-instance, batch-2 update until 0 and 1 succeeded and 2 and 3 are in flight.
fn midway() -> Sim {
    let mut sim = sim(settings(2, 5), 6);
    assert!(sim.run_until(100, |s| s.phase(2) == InstancePhase::InFlight));
    assert_eq!(sim.phase(0), InstancePhase::Succeeded);
    assert_eq!(sim.phase(3), InstancePhase::InFlight);
    sim
}

#[test]
fn abort_is_terminal_and_leaves_the_job_mixed() {
    let mut sim = midway();
    sim.cmd(Command::Abort).unwrap();
    assert_eq!(sim.status(), UpdateStatus::Aborted);
    assert!(sim.status().is_terminal());
    assert_eq!(
        sim.desired_all(),
        vec![Some(1), Some(1), Some(1), Some(1), Some(0), Some(0)]
    );
    assert_eq!(sim.upd.events.last().unwrap().message, "abort by operator");
    assert!(sim.run(30).is_empty());
    assert_eq!(sim.status(), UpdateStatus::Aborted);
    for c in [
        Command::Resume,
        Command::Rollback,
        Command::Abort,
        Command::Pause,
    ] {
        assert_eq!(sim.cmd(c).unwrap_err().status, UpdateStatus::Aborted);
    }
    // The shard keeps what it was told: 2 and 3 come up on the new revision.
    assert_eq!(sim.live(2), (Some(1), true));
    assert_eq!(sim.live(4), (Some(0), true));
}

#[test]
fn abort_while_rolling_back_keeps_what_went_back() {
    let mut sim = midway();
    sim.cmd(Command::Rollback).unwrap();
    sim.step(); // takes 3 and 2 back
    sim.cmd(Command::Abort).unwrap();
    assert_eq!(
        sim.desired_all(),
        vec![Some(1), Some(1), Some(0), Some(0), Some(0), Some(0)]
    );
    assert!(sim.run(20).is_empty());
}

#[test]
fn manual_rollback_from_rolling_forward() {
    let mut sim = midway();
    let before = sim.desired_all();
    sim.cmd(Command::Rollback).unwrap();
    assert_eq!(sim.status(), UpdateStatus::RollingBack);
    assert_eq!(
        sim.desired_all(),
        before,
        "turning around changes no desired revision"
    );
    assert_eq!(sim.upd.in_flight(), 0);
    assert_eq!(sim.run_to_end(100), UpdateStatus::RolledBack);
    let back = sim.actions_in(true);
    assert_eq!(
        back,
        vec![
            act(3, Some(0)),
            act(2, Some(0)),
            act(1, Some(0)),
            act(0, Some(0))
        ]
    );
    assert_eq!(sim.desired_all(), vec![Some(0); 6]);
    assert!(sim.upd.instances[4..].iter().all(|p| !p.in_rollback));
    assert_eq!(sim.upd.events[1].message, "rollback by operator");
}

#[test]
fn manual_rollback_from_roll_forward_paused() {
    let mut sim = midway();
    sim.cmd(Command::Pause).unwrap();
    sim.run(3);
    sim.cmd_msg(Command::Rollback, "bad canary").unwrap();
    assert_eq!(sim.status(), UpdateStatus::RollingBack);
    assert_eq!(sim.upd.events.last().unwrap().message, "bad canary");
    assert_eq!(sim.run_to_end(100), UpdateStatus::RolledBack);
    assert_eq!(sim.desired_all(), vec![Some(0); 6]);
    for i in 0..6 {
        assert_eq!(sim.live(i), (Some(0), true));
    }
}

#[test]
fn manual_rollback_of_an_update_awaiting_its_first_pulse_ends_at_once() {
    let mut sim = pulsed(3);
    sim.cmd(Command::Rollback).unwrap();
    // Nothing was taken: nothing to roll back, once it may progress.
    assert_eq!(sim.status(), UpdateStatus::RollBackAwaitingPulse);
    sim.step();
    assert_eq!(sim.status(), UpdateStatus::RolledBack);
    assert!(sim.actions().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 10. Instance count changes.
// ---------------------------------------------------------------------------------------------

fn growing() -> Sim {
    let from = [Some(0), Some(0), Some(0), Some(0), None, None];
    Sim::new(update_of(settings(2, 3), &from, 4, 6))
}

#[test]
fn growing_the_job_starts_the_new_instances() {
    let mut sim = growing();
    assert_eq!(sim.upd.progress(4).unwrap().from, None);
    assert_eq!(sim.upd.progress(4).unwrap().to, Some(1));
    assert_eq!(sim.upd.desired(5), Some(None));
    sim.sla_deny.extend([4, 5]);
    assert_eq!(sim.run_to_end(100), UpdateStatus::RolledForward);
    assert_eq!(sim.desired_all(), vec![Some(1); 6]);
    assert_eq!(sim.live(5), (Some(1), true));
    let acts = sim.actions();
    assert!(acts.contains(&act(4, Some(1))) && acts.contains(&act(5, Some(1))));
    // Adding an instance takes nothing down: the SLA is not asked.
    assert!(!sim.sla_asked.iter().any(|(_, i)| *i >= 4));
}

#[test]
fn rolling_back_a_grown_job_removes_the_new_instances() {
    let mut sim = growing();
    sim.fail.insert(
        (5, 1),
        FailSpec {
            times: u32::MAX,
            after_running_us: None,
        },
    );
    assert!(sim.run_until(100, |s| s.status() == UpdateStatus::RollingBack));
    assert_eq!(sim.run_to_end(100), UpdateStatus::RolledBack);
    let back = sim.actions_in(true);
    assert_eq!(
        back,
        vec![
            act(5, None),
            act(4, None),
            act(3, Some(0)),
            act(2, Some(0)),
            act(1, Some(0)),
            act(0, Some(0))
        ]
    );
    assert_eq!(sim.upd.desired(4), Some(None));
    assert_eq!(sim.upd.desired(5), Some(None));
    assert_eq!(sim.live(4), (None, false));
    assert_eq!(sim.live(5), (None, false));
    assert_eq!(sim.desired_all(), sim.froms());
}

#[test]
fn shrinking_the_job_removes_the_extra_instances() {
    let mut sim = Sim::new(update_of(settings(2, 30), &[Some(0); 6], 6, 4));
    assert_eq!(sim.upd.progress(4).unwrap().to, None);
    assert_eq!(sim.upd.progress(3).unwrap().to, Some(1));
    assert_eq!(sim.run_to_end(400), UpdateStatus::RolledForward);
    let acts = sim.actions();
    assert_eq!(&acts[4..], &[act(4, None), act(5, None)]);
    assert_eq!(sim.upd.desired(4), Some(None));
    assert_eq!(sim.live(4), (None, false));
    assert_eq!(sim.live(5), (None, false));
    // A removal succeeds once the task is gone (at the next step), without a watch.
    let taken = sim.taken_at(4)[0];
    assert_eq!(sim.settled_at(4), vec![taken + 1]);
    assert_eq!(sim.settled_at(5), vec![taken + 1]);
}

#[test]
fn rolling_back_a_shrunk_job_starts_the_removed_instances_again() {
    let mut sim = Sim::new(update_of(settings(1, 3), &[Some(0); 6], 6, 4));
    assert!(sim.run_until(100, |s| s.phase(4) == InstancePhase::Succeeded));
    assert_eq!(sim.phase(5), InstancePhase::InFlight);
    sim.cmd(Command::Rollback).unwrap();
    assert_eq!(sim.run_to_end(100), UpdateStatus::RolledBack);
    let back = sim.actions_in(true);
    assert_eq!(&back[..2], &[act(5, Some(0)), act(4, Some(0))]);
    assert_eq!(sim.desired_all(), vec![Some(0); 6]);
    assert_eq!(sim.live(5), (Some(0), true));
}

#[test]
fn a_removed_instance_without_a_live_task_needs_no_wait() {
    let mut sim = Sim::new(update_of(settings(2, 3), &[Some(0), Some(0)], 2, 1));
    // Instance 1's task just ended on its own (the shard restarts it only on a later tick).
    let s = sim.slots.get_mut(&1).unwrap();
    s.live = None;
    s.running_since = None;
    s.changed_tick = 1;
    assert_eq!(sim.step(), vec![act(0, Some(1)), act(1, None)]);
    // Nothing to wait for: it succeeded at once and does not hold a place in the batch.
    assert_eq!(sim.phase(1), InstancePhase::Succeeded);
    assert_eq!(sim.upd.in_flight(), 1);
    assert!(!sim.sla_asked.iter().any(|(_, i)| *i == 1));
    assert_eq!(sim.run_to_end(100), UpdateStatus::RolledForward);
    assert_eq!(sim.upd.desired(1), Some(None));
    assert_eq!(sim.live(1), (None, false));
}

// ---------------------------------------------------------------------------------------------
// 11. Instances already on the target.
// ---------------------------------------------------------------------------------------------

#[test]
fn instances_already_on_the_target_succeed_without_an_action() {
    let from = [Some(1), Some(0), Some(1), Some(0)];
    let mut sim = Sim::new(update_of(settings(1, 5), &from, 4, 4));
    let acts = sim.step();
    // 0 is already RUNNING rev 1: it succeeds and 1 is taken in the same step.
    assert_eq!(acts, vec![act(1, Some(1))]);
    assert_eq!(sim.phase(0), InstancePhase::Succeeded);
    assert_eq!(sim.run_to_end(100), UpdateStatus::RolledForward);
    assert_eq!(sim.actions(), vec![act(1, Some(1)), act(3, Some(1))]);
    // Their tasks were never touched.
    assert_eq!(sim.slots[&0].running_since, Some(0));
    assert_eq!(sim.slots[&2].running_since, Some(0));
}

#[test]
fn an_unchanged_job_rolls_forward_at_once() {
    let mut sim = Sim::new(update_of(settings(2, 45), &[Some(1); 5], 5, 5));
    assert!(sim.step().is_empty());
    assert_eq!(sim.status(), UpdateStatus::RolledForward);
    assert!(sim.sla_asked.is_empty());
}

#[test]
fn an_instance_on_the_target_but_not_running_is_watched_without_an_action() {
    let mut sim = Sim::new(update_of(settings(1, 2), &[Some(1), Some(0)], 2, 2));
    // Instance 0's task on rev 1 is still starting.
    let s = sim.slots.get_mut(&0).unwrap();
    s.running_since = None;
    s.started_at = T0;
    s.changed_tick = 1;
    assert_eq!(sim.run_to_end(100), UpdateStatus::RolledForward);
    assert_eq!(sim.actions(), vec![act(1, Some(1))]);
    let t0 = sim.settled_at(0)[0];
    assert!(t0 > 1, "it was watched before it succeeded");
    assert!(sim.taken_at(1)[0] >= t0, "it was in flight: batch 1");
}

#[test]
fn an_empty_scope_rolls_forward_at_once() {
    let mut sim = Sim::new(update_of(settings(1, 5), &[], 0, 0));
    sim.step();
    assert_eq!(sim.status(), UpdateStatus::RolledForward);
}

// ---------------------------------------------------------------------------------------------
// 12. SLA.
// ---------------------------------------------------------------------------------------------

#[test]
fn an_sla_refusal_stops_taking_until_it_allows() {
    let mut s = settings(3, 2);
    s.sla_aware = true;
    let mut sim = sim(s, 6);
    sim.sla_deny.insert(1);
    assert_eq!(sim.step(), vec![act(0, Some(1))]);
    // Batch 3, but nothing after 1 is taken while 1 may not be.
    assert!(sim.run(20).is_empty());
    assert_eq!(sim.phase(0), InstancePhase::Succeeded);
    assert!(sim.upd.instances[1..]
        .iter()
        .all(|p| p.phase == InstancePhase::Waiting));
    assert!(sim.sla_asked.iter().all(|(_, i)| *i <= 1));
    assert!(sim.sla_asked.iter().filter(|(_, i)| *i == 1).count() >= 20);
    sim.sla_deny.clear();
    assert_eq!(
        sim.step(),
        vec![act(1, Some(1)), act(2, Some(1)), act(3, Some(1))]
    );
    assert_eq!(sim.run_to_end(100), UpdateStatus::RolledForward);
}

#[test]
fn an_sla_refusal_holds_back_a_rollback_too() {
    let mut s = settings(2, 2);
    s.sla_aware = true;
    let mut sim = sim(s, 4);
    assert!(sim.run_until(50, |s| s.phase(3) == InstancePhase::InFlight));
    sim.cmd(Command::Rollback).unwrap();
    sim.sla_deny.insert(2);
    assert!(sim.run_until(30, |s| s.phase(3) != InstancePhase::Waiting));
    sim.run(10);
    assert_eq!(sim.phase(2), InstancePhase::Waiting);
    assert_eq!(sim.phase(1), InstancePhase::Waiting);
    sim.sla_deny.clear();
    assert_eq!(sim.run_to_end(50), UpdateStatus::RolledBack);
    assert_eq!(sim.desired_all(), vec![Some(0); 4]);
}

// ---------------------------------------------------------------------------------------------
// 13. Restart.
// ---------------------------------------------------------------------------------------------

fn roundtrip(upd: &JobUpdate) -> JobUpdate {
    let json = serde_json::to_string(upd).unwrap();
    assert!(!json.contains("watching"), "{json}");
    assert!(!json.contains("last_pulse_us"), "{json}");
    let back: JobUpdate = serde_json::from_str(&json).unwrap();
    assert!(back.watching.is_empty());
    assert_eq!(back.last_pulse_us, None);
    back.restored()
}

#[test]
fn restored_keeps_durable_fields_and_resets_transient_ones() {
    let mut sim = sim(settings(2, 5), 6);
    assert!(sim.run_until(100, |s| {
        s.phase(2) == InstancePhase::InFlight && s.upd.watching.iter().any(|w| w.is_some())
    }));
    let orig = sim.upd.clone();
    let restored = roundtrip(&orig);
    assert_eq!(restored.status, UpdateStatus::RollingForward);
    assert_eq!(restored.watching, vec![None; 6]);
    assert_eq!(restored.last_pulse_us, None);
    let mut expected = orig.clone();
    expected.watching = vec![None; 6];
    expected.last_pulse_us = None;
    assert_eq!(restored, expected);
    // The restored update carries on where it was.
    sim.upd = restored;
    assert_eq!(sim.run_to_end(100), UpdateStatus::RolledForward);
    assert_eq!(sim.actions().len(), 6);
}

#[test]
fn a_restored_pulsed_update_awaits_a_new_pulse() {
    let mut sim = pulsed(4);
    sim.cmd(Command::Pulse).unwrap();
    sim.step();
    assert_eq!(sim.status(), UpdateStatus::RollingForward);
    assert!(sim.upd.last_pulse_us.is_some());
    let r = roundtrip(&sim.upd);
    assert_eq!(r.status, UpdateStatus::RollForwardAwaitingPulse);
    assert_eq!(r.last_pulse_us, None);
    assert_eq!(r.instances, sim.upd.instances);
    assert_eq!(r.events, sim.upd.events, "restoring records no event");

    sim.upd = r;
    assert!(sim.run(20).is_empty());
    assert_eq!(sim.actions().len(), 1, "nothing new without a pulse");
    sim.cmd(Command::Pulse).unwrap();
    assert_eq!(sim.status(), UpdateStatus::RollingForward);

    // A rolling-back one comes back awaiting a pulse too; a paused one stays paused.
    sim.cmd(Command::Rollback).unwrap();
    assert_eq!(sim.status(), UpdateStatus::RollingBack);
    assert_eq!(
        roundtrip(&sim.upd).status,
        UpdateStatus::RollBackAwaitingPulse
    );
    sim.cmd(Command::Pause).unwrap();
    assert_eq!(roundtrip(&sim.upd).status, UpdateStatus::RollBackPaused);
}

#[test]
fn a_restored_update_without_pulses_keeps_its_status() {
    for status in UpdateStatus::ALL {
        let mut upd = uniform(settings(1, 1), 2);
        upd.status = status;
        assert_eq!(roundtrip(&upd).status, status);
    }
    for status in UpdateStatus::ALL {
        let mut s = settings(1, 1);
        s.pulse_interval_secs = Some(3);
        let mut upd = uniform(s, 2);
        upd.status = status;
        let expected = match status {
            UpdateStatus::RollingForward => UpdateStatus::RollForwardAwaitingPulse,
            UpdateStatus::RollingBack => UpdateStatus::RollBackAwaitingPulse,
            other => other,
        };
        assert_eq!(roundtrip(&upd).status, expected);
    }
}

// ---------------------------------------------------------------------------------------------
// 14. Events.
// ---------------------------------------------------------------------------------------------

#[test]
fn events_are_bounded_and_keep_the_first() {
    let mut sim = sim(settings(1, 1), 2);
    let mut messages = vec!["created by test".to_string()];
    for k in 0..40 {
        let (c, m) = (Command::Pause, format!("pause {k}"));
        sim.cmd_msg(c, &m).unwrap();
        messages.push(m);
        sim.now_us += S;
        let m = format!("resume {k}");
        sim.cmd_msg(Command::Resume, &m).unwrap();
        messages.push(m);
        sim.now_us += S;
        assert!(sim.upd.events.len() <= UPDATE_EVENTS_MAX);
    }
    let events = &sim.upd.events;
    assert_eq!(events.len(), UPDATE_EVENTS_MAX);
    assert_eq!(events[0].message, "created by test");
    assert_eq!(events[0].unix_ms, UNIX0);
    assert_eq!(events[0].status, UpdateStatus::RollingForward);
    // The rest are the latest, in order.
    let kept: Vec<&str> = events[1..].iter().map(|e| e.message.as_str()).collect();
    let latest: Vec<&str> = messages[messages.len() - (UPDATE_EVENTS_MAX - 1)..]
        .iter()
        .map(|m| m.as_str())
        .collect();
    assert_eq!(kept, latest);
    assert!(events.windows(2).all(|w| w[0].unix_ms <= w[1].unix_ms));
    assert_eq!(events.last().unwrap().message, "resume 39");
    assert_eq!(sim.upd.created_unix_ms, UNIX0);
    assert_eq!(sim.upd.updated_unix_ms, events.last().unwrap().unix_ms);
    // And the update still works.
    assert_eq!(sim.run_to_end(50), UpdateStatus::RolledForward);
    assert_eq!(sim.upd.events.len(), UPDATE_EVENTS_MAX);
    assert_eq!(sim.upd.events[0].message, "created by test");
}

// ---------------------------------------------------------------------------------------------
// Settings and statuses.
// ---------------------------------------------------------------------------------------------

#[test]
fn settings_validation() {
    let ok = UpdateSettings::default();
    assert_eq!(ok.batch_size, 1);
    assert_eq!(ok.watch_secs, 45);
    assert!(ok.rollback_on_failure);
    assert!(ok.validate(5, 100).is_ok());
    let bad = |s: UpdateSettings, n, cap| s.validate(n, cap).unwrap_err().field;
    assert_eq!(bad(settings(0, 1), 5, 100), "batch_size");
    assert_eq!(bad(settings(1, 86_401), 5, 100), "watch_secs");
    assert!(settings(1, 86_400).validate(5, 100).is_ok());
    let mut s = ok;
    s.pulse_interval_secs = Some(0);
    assert_eq!(bad(s, 5, 100), "pulse_interval_secs");
    s.pulse_interval_secs = Some(86_401);
    assert_eq!(bad(s, 5, 100), "pulse_interval_secs");
    s.pulse_interval_secs = Some(86_400);
    assert!(s.validate(5, 100).is_ok());
    let mut s = ok;
    s.max_total_failures = 5;
    assert_eq!(bad(s, 5, 100), "max_total_failures");
    s.max_total_failures = 4;
    assert!(s.validate(5, 100).is_ok());
    assert!(s.validate(0, 100).is_ok());
    let mut s = ok;
    s.max_per_instance_failures = 21;
    assert_eq!(bad(s, 5, 100), "max_per_instance_failures");
    s.max_per_instance_failures = 20;
    assert!(s.validate(5, 100).is_ok());
    let e = settings(0, 1).validate(1, 1).unwrap_err();
    assert_eq!(e.to_string(), "update.batch_size: must be at least 1");
}

#[test]
fn statuses_round_trip_through_their_names() {
    for s in UpdateStatus::ALL {
        assert_eq!(UpdateStatus::parse(s.as_str()), Some(s));
        assert_eq!(s.to_string(), s.as_str());
        assert_eq!(s.is_active(), !s.is_terminal());
        if s.is_progressing() || s.is_rollback() {
            assert!(s.is_active());
        }
    }
    assert_eq!(UpdateStatus::parse("rolling_forward"), None);
    let terminal: Vec<UpdateStatus> = UpdateStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .collect();
    assert_eq!(terminal.len(), 5);
}

// ---------------------------------------------------------------------------------------------
// 15. Random updates.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Scenario {
    settings: UpdateSettings,
    before: u32,
    after: u32,
    /// Per instance of the scope: its old revision (0 or 2) when it exists before.
    old_revs: Vec<Rev>,
    /// Per instance: failures of the new revision, of the old one (4: always), and whether
    /// they happen after a while RUNNING rather than on the way to it.
    fails: Vec<(u32, u32, bool)>,
    delays_ms: Vec<u64>,
    /// Per step: tick length (ms), a command, whether the SLA refuses instance `deny`.
    steps: Vec<(u64, Option<Command>, Option<u32>)>,
}

fn command_strategy() -> impl Strategy<Value = Option<Command>> {
    prop_oneof![
        300 => Just(None),
        12 => Just(Some(Command::Pause)),
        12 => Just(Some(Command::Resume)),
        30 => Just(Some(Command::Pulse)),
        2 => Just(Some(Command::Rollback)),
        1 => Just(Some(Command::Abort)),
    ]
}

/// Failures of one revision on one instance: mostly none, sometimes a few, rarely always (4).
fn failures_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![12 => Just(0u32), 3 => 1u32..=3, 1 => Just(4u32)]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1u32..=12, 0u32..=12, 1u32..=5).prop_flat_map(|(before, after_raw, batch)| {
        let after = if after_raw == 0 { before } else { after_raw };
        let n = before.max(after) as usize;
        (
            (
                0u32..=2,
                0..before.min(after).clamp(1, 3),
                0u32..=5,
                any::<bool>(),
                any::<bool>(),
                prop::option::weighted(0.3, 1u32..=10),
                any::<bool>(),
            ),
            prop::collection::vec(prop_oneof![Just(0 as Rev), Just(2 as Rev)], n),
            prop::collection::vec((failures_strategy(), failures_strategy(), any::<bool>()), n),
            prop::collection::vec(0u64..=3_000, n),
            prop::collection::vec(
                (
                    1u64..=3_000,
                    command_strategy(),
                    prop::option::weighted(0.1, 0..n as u32),
                ),
                1..150,
            ),
        )
            .prop_map(
                move |(
                    (per, total, watch, rollback, wait, pulse, sla),
                    old_revs,
                    fails,
                    delays_ms,
                    steps,
                )| {
                    Scenario {
                        settings: UpdateSettings {
                            batch_size: batch,
                            max_per_instance_failures: per,
                            max_total_failures: total,
                            watch_secs: watch,
                            rollback_on_failure: rollback,
                            wait_for_batch_completion: wait,
                            pulse_interval_secs: pulse,
                            sla_aware: sla,
                        },
                        before,
                        after,
                        old_revs,
                        fails,
                        delays_ms,
                        steps,
                    }
                },
            )
    })
}

fn run_scenario(sc: &Scenario) {
    let n = sc.old_revs.len();
    let from: Vec<Option<Rev>> = (0..n)
        .map(|i| ((i as u32) < sc.before).then_some(sc.old_revs[i]))
        .collect();
    let upd = update_of(sc.settings, &from, sc.before, sc.after);
    assert!(sc.settings.validate(n as u32, 1_000).is_ok());
    let mut sim = Sim::new(upd);
    for (i, (new, old, running)) in sc.fails.iter().enumerate() {
        let after_running_us = running.then_some(S / 2);
        let times = |k: u32| if k == 4 { u32::MAX } else { k };
        sim.fail.insert(
            (i as u32, TO),
            FailSpec {
                times: times(*new),
                after_running_us,
            },
        );
        sim.fail.insert(
            (i as u32, sc.old_revs[i]),
            FailSpec {
                times: times(*old),
                after_running_us,
            },
        );
        sim.start_delay_us.insert(i as u32, sc.delays_ms[i] * 1_000);
    }
    // The random part: random timing, commands and SLA refusals, checked at every step.
    for (tick_ms, command, deny) in &sc.steps {
        sim.tick_us = tick_ms * 1_000;
        if let Some(c) = command {
            let before = sim.status();
            if let Ok(()) = sim.cmd(*c) {
                if before.is_terminal() {
                    panic!("{c:?} accepted in {before}");
                }
            }
        }
        sim.sla_deny.clear();
        sim.sla_deny.extend(*deny);
        sim.step();
    }
    // Then it must end, once nothing holds it back.
    sim.sla_deny.clear();
    sim.tick_us = S;
    for _ in 0..3_000 {
        if sim.status().is_terminal() {
            break;
        }
        if matches!(
            sim.status(),
            UpdateStatus::RollForwardPaused | UpdateStatus::RollBackPaused
        ) {
            sim.cmd(Command::Resume).unwrap();
        }
        if sc.settings.pulse_interval_secs.is_some() {
            sim.cmd(Command::Pulse).unwrap();
        }
        sim.step();
    }
    assert!(sim.status().is_terminal(), "did not end: {:?}", sim.upd);
    match sim.status() {
        UpdateStatus::RolledBack => assert_eq!(sim.desired_all(), sim.froms()),
        UpdateStatus::RolledForward => assert_eq!(sim.desired_all(), sim.tos()),
        _ => {}
    }
    // Terminal is final.
    let end = sim.upd.clone();
    assert!(sim.run(10).is_empty());
    for c in [
        Command::Pause,
        Command::Resume,
        Command::Pulse,
        Command::Rollback,
        Command::Abort,
    ] {
        assert!(sim.cmd(c).is_err());
    }
    assert_eq!(sim.upd, end);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_updates_keep_the_invariants(sc in scenario()) {
        run_scenario(&sc);
    }
}
