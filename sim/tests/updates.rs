//! Rolling job updates in the simulation, one named scenario each (seeded; every invariant,
//! `update_within_batch` and `update_moves_only_what_it_took` among them, is checked after
//! every step, and each scenario checks its own rule at every 50 ms tick): an update rolls
//! forward batch by batch; a failing one rolls back to exactly the old config; pause, resume
//! and pulses hold it; a crash or a failover in the middle resumes it; it grows and shrinks the
//! job; what conflicts with it is refused; an SLA-aware update keeps the job's SLA.
//!
//! The scenarios start updates and send commands with [`start`] and [`command`], which wait a
//! moment for the scheduler's answer and otherwise read the update back (see
//! [`start_update_and_commands_are_answered`]: the answers are lost today).

use std::collections::{BTreeMap, BTreeSet};

use borealis_core::update::{Command, InstancePhase, JobUpdate, UpdateSettings, UpdateStatus};
use borealis_core::{JobKey, Resources, SlaPolicy, TaskId, TaskState};
use borealis_net::views::UpdateInfoView;
use borealis_sim::{CrashPoint, JobConfig, Reply, Sim, TaskPlan};

const KEY: &str = "www/prod/svc";
const TICK_MS: u64 = 50;
/// How long [`start`] and [`command`] wait for the scheduler's answer before reading the
/// update back.
const ANSWER_WAIT_MS: u64 = 200;

fn res(cpu_millis: u32) -> Resources {
    Resources {
        cpu_millis,
        ram_mib: 8192,
        disk_mib: 10_000,
        ports: 0,
    }
}

/// Three agents of 4 cores: room for every job here twice over.
fn cluster(seed: u64, shards: usize) -> Sim {
    Sim::new(seed)
        .shards(shards)
        .agent("h0", res(4000), &[])
        .agent("h1", res(4000), &[])
        .agent("h2", res(4000), &[])
}

/// The job's first configuration: a service of `instances` that runs until killed.
fn v1(instances: u32) -> JobConfig {
    JobConfig::new(instances, 500, 128).service()
}

fn settings(batch_size: u32, watch_secs: u32) -> UpdateSettings {
    UpdateSettings {
        batch_size,
        watch_secs,
        ..UpdateSettings::default()
    }
}

fn key() -> JobKey {
    KEY.parse().unwrap()
}

/// Creates the job and waits until every instance runs.
fn create(sim: &mut Sim, config: JobConfig) {
    let instances = config.instances;
    sim.create_job(KEY, config).unwrap();
    for _ in 0..100 {
        sim.advance(100);
        if running(sim).len() == instances as usize {
            return;
        }
    }
    panic!("{KEY} not running: {:?}", sim.job_states(KEY));
}

/// The job's latest update as the acting scheduler holds it (with its progress).
fn latest(sim: &mut Sim) -> Option<JobUpdate> {
    sim.job_audit(KEY).and_then(|j| j.update)
}

/// Waits for the answer to request `id` (a StartUpdate or UpdateCommand); when none comes
/// within [`ANSWER_WAIT_MS`], the job's newest update as `query_updates` reads it. Refusals
/// come back as `Err` with the scheduler's message.
fn answer(sim: &mut Sim, id: u64) -> Result<UpdateInfoView, String> {
    let mut waited = 0;
    loop {
        sim.run_rounds();
        match sim.try_reply(id) {
            Some(Reply::Updates(updates)) => {
                assert_eq!(updates.len(), 1, "one update answers: {updates:?}");
                return Ok(updates.into_iter().next().unwrap());
            }
            Some(Reply::Error { message, .. }) => return Err(message),
            Some(other) => panic!("unexpected answer {other:?}"),
            None if waited >= ANSWER_WAIT_MS => break,
            None => {}
        }
        sim.advance(10);
        waited += 10;
    }
    // The answer was lost (request id 0): what a client would do, ask.
    let updates = sim.query_updates(KEY, false)?;
    updates.into_iter().next().ok_or_else(|| "no update".into())
}

/// `borealis update start` of the job to `config`: the new update, or the refusal.
fn start(
    sim: &mut Sim,
    config: JobConfig,
    settings: UpdateSettings,
    scope: &[u32],
) -> Result<UpdateInfoView, String> {
    let before = latest(sim).map_or(0, |u| u.id);
    let id = sim.send_start_update(KEY, config, settings, scope);
    let info = answer(sim, id)?;
    if info.update.id <= before {
        return Err(format!("no new update (the latest is {})", info.update.id));
    }
    Ok(info)
}

/// An operator's command on the job's active update: the update after it, or the refusal.
fn command(sim: &mut Sim, command: Command) -> Result<UpdateInfoView, String> {
    let id = sim.send_update_command(KEY, command);
    answer(sim, id)
}

/// The job's instances (not retired) whose current task is RUNNING, and those whose is not.
fn split(sim: &mut Sim) -> (Vec<u32>, Vec<u32>) {
    let job = sim.job_audit(KEY).expect("the job");
    let states: BTreeMap<TaskId, TaskState> = sim
        .current_tasks(KEY)
        .into_iter()
        .map(|t| (t.id, t.state))
        .collect();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for i in 0..job.instances {
        if job.retired[i as usize] {
            continue;
        }
        let state = job.current[i as usize].and_then(|id| states.get(&id).copied());
        if state == Some(TaskState::Running) {
            up.push(i);
        } else {
            down.push(i);
        }
    }
    (up, down)
}

fn running(sim: &mut Sim) -> Vec<u32> {
    split(sim).0
}

fn down(sim: &mut Sim) -> Vec<u32> {
    split(sim).1
}

/// Instances whose current task has been RUNNING for at least `ms`.
fn active_for(sim: &mut Sim, ms: u64) -> usize {
    let now_us = sim.now_ms() * 1000;
    sim.current_tasks(KEY)
        .iter()
        .filter(|t| {
            t.running_since_us
                .is_some_and(|since| now_us.saturating_sub(since) >= ms * 1000)
        })
        .count()
}

/// The instances the update has taken (in flight or settled, this direction).
fn taken(u: &JobUpdate) -> BTreeSet<u32> {
    u.instances
        .iter()
        .filter(|p| p.phase != InstancePhase::Waiting)
        .map(|p| p.instance)
        .collect()
}

fn with_phase(u: &JobUpdate, phase: InstancePhase) -> BTreeSet<u32> {
    u.instances
        .iter()
        .filter(|p| p.phase == phase)
        .map(|p| p.instance)
        .collect()
}

/// Ticks until the job's latest update is final (at most `limit_ms`), calling `check` at
/// every tick with the update; returns the final update.
fn until_done(
    sim: &mut Sim,
    limit_ms: u64,
    mut check: impl FnMut(&mut Sim, &JobUpdate),
) -> JobUpdate {
    let mut waited = 0;
    loop {
        // No acting scheduler holds it while leadership moves: wait for one.
        if let Some(u) = latest(sim) {
            if u.status.is_terminal() {
                return u;
            }
            check(sim, &u);
        }
        let u = latest(sim);
        assert!(
            waited < limit_ms,
            "the update is still not final after {limit_ms} ms: {u:?}"
        );
        sim.advance(TICK_MS);
        waited += TICK_MS;
    }
}

/// Ticks for `ms`, calling `check` at every tick with the job's latest update.
fn ticks(sim: &mut Sim, ms: u64, mut check: impl FnMut(&mut Sim, &JobUpdate)) {
    let mut waited = 0;
    while waited < ms {
        sim.advance(TICK_MS);
        waited += TICK_MS;
        let u = latest(sim).expect("an update");
        check(sim, &u);
    }
}

/// Instances `0..instances` of the job, and no others, are live; each one's current task
/// runs `command` on the job's head revision, which every one of them desires; the job keeps
/// no other revision.
fn all_on(sim: &mut Sim, command: &str, instances: u32) {
    on_head(sim, command, instances);
    only_head_kept(sim, command);
}

/// [`all_on`] but for the revisions kept.
fn on_head(sim: &mut Sim, command: &str, instances: u32) {
    let job = sim.job_audit(KEY).expect("the job");
    let live: Vec<u32> = (0..job.instances)
        .filter(|&i| !job.retired[i as usize])
        .collect();
    assert_eq!(
        live,
        (0..instances).collect::<Vec<_>>(),
        "the job's instances (retired: {:?})",
        job.retired
    );
    let tasks = sim.current_tasks(KEY);
    for i in 0..instances {
        let t = tasks
            .iter()
            .find(|t| t.instance == i && !t.state.is_terminal())
            .unwrap_or_else(|| panic!("{KEY}/{i} has no live task: {tasks:?}"));
        assert_eq!(t.state, TaskState::Running, "{KEY}/{i}: {t:?}");
        assert_eq!(t.command, command, "{KEY}/{i} runs task {}", t.id);
        assert_eq!(t.rev, job.head_rev, "{KEY}/{i} runs task {}", t.id);
        assert_eq!(job.desired_revs[i as usize], job.head_rev, "{KEY}/{i}");
    }
    for t in tasks.iter().filter(|t| t.instance >= instances) {
        assert!(
            t.state.is_terminal(),
            "removed {KEY}/{} runs: {t:?}",
            t.instance
        );
    }
}

/// The job's head revision's command is `command`, and it keeps no other revision but those
/// its kept updates name (kept for `update info`'s config diff).
fn only_head_kept(sim: &mut Sim, command: &str) {
    let job = sim.job_audit(KEY).expect("the job");
    assert_eq!(job.revisions[&job.head_rev], command, "the head's command");
    for rev in job.revisions.keys() {
        assert!(
            *rev == job.head_rev || job.named_revs.contains(rev),
            "revision {rev} is kept though neither the head nor named by the update: {:?}",
            job.revisions
        );
    }
}

/// No task of `instance` runs on any agent.
fn runs_nowhere(sim: &mut Sim, instance: u32) {
    for agent in ["h0", "h1", "h2"] {
        for (id, t) in sim.agent_tasks(agent) {
            assert!(
                !(t.job_key == KEY && t.instance == instance && t.is_live()),
                "{agent} runs {KEY}/{instance} (task {id}, {})",
                t.state
            );
        }
    }
}

// ----- the answers -----

#[test]
fn start_update_and_commands_are_answered() {
    let mut sim = cluster(1, 1);
    create(&mut sim, v1(6));
    let started = sim
        .start_update(KEY, v1(6).tag("v2"), settings(2, 5), &[])
        .expect("StartUpdate is answered");
    assert_eq!(started.update.id, 1);
    assert_eq!(started.update.status, UpdateStatus::RollingForward);
    let paused = sim
        .update_command(KEY, Command::Pause)
        .expect("UpdateCommand is answered");
    assert_eq!(paused.update.status, UpdateStatus::RollForwardPaused);
}

// ----- rolling forward -----

/// A 6-instance service updated to a v2 command, 2 at a time with a 5 s watch: it ends
/// ROLLED_FORWARD with every instance on v2 (the job's head); at no tick are more than 2
/// instances down, and instances are taken in increasing order.
fn success(seed: u64, shards: usize) {
    let mut sim = cluster(seed, shards);
    create(&mut sim, v1(6));
    let head_before = sim.job_audit(KEY).unwrap().head_rev;
    let info = start(&mut sim, v1(6).tag("v2"), settings(2, 5), &[]).unwrap();
    assert_eq!(info.update.id, 1, "seed {seed}");
    assert_ne!(
        info.update.to_rev, head_before,
        "seed {seed}: a new revision"
    );
    let mut order: Vec<u32> = Vec::new();
    let mut most_down = 0;
    let done = until_done(&mut sim, 120_000, |sim, u| {
        let down = down(sim);
        most_down = most_down.max(down.len());
        assert!(
            down.len() <= 2,
            "seed {seed}: {down:?} down at once under batch_size 2 ({})",
            u.status
        );
        for i in taken(u) {
            if !order.contains(&i) {
                order.push(i);
            }
        }
    });
    assert_eq!(
        done.status,
        UpdateStatus::RolledForward,
        "seed {seed}: {done:?}"
    );
    assert_eq!(done.id, 1);
    assert_eq!(
        order,
        (0..6).collect::<Vec<_>>(),
        "seed {seed}: taken in order"
    );
    assert!(
        most_down >= 1,
        "seed {seed}: the update took instances down"
    );
    assert!(
        done.instances
            .iter()
            .all(|p| p.phase == InstancePhase::Succeeded),
        "seed {seed}: {:?}",
        done.instances
    );
    let job = sim.job_audit(KEY).unwrap();
    assert_eq!(
        job.head_rev, done.to_rev,
        "seed {seed}: the head follows the update"
    );
    sim.run_until_quiet();
    all_on(&mut sim, "sim run v2", 6);
    // The answer to a later query agrees.
    let updates = sim.query_updates(KEY, false).unwrap();
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].update.status, UpdateStatus::RolledForward);
    assert_eq!(updates[0].in_flight, 0);
}

#[test]
fn an_update_rolls_forward_two_at_a_time() {
    success(1, 1);
}

#[test]
fn an_update_rolls_forward_two_at_a_time_over_seeds() {
    for seed in 2..6 {
        success(seed, 1 + (seed as usize % 3));
    }
}

// ----- rolling back -----

/// An update to tasks that fail 200 ms after they start: with `max_per_instance_failures`
/// `per_instance` and `max_total_failures` 0 it rolls back, ending ROLLED_BACK with every
/// instance on exactly the old config (the head unchanged); the instances it never took keep
/// their tasks.
fn rollback(seed: u64, per_instance: u32) {
    let mut sim = cluster(seed, 2);
    create(&mut sim, v1(6));
    let before = sim.job_audit(KEY).unwrap();
    let tasks_before: BTreeMap<u32, TaskId> = sim
        .current_tasks(KEY)
        .iter()
        .map(|t| (t.instance, t.id))
        .collect();
    let failing = v1(6).plan(TaskPlan::FailAfter(200)).tag("v3");
    let info = start(
        &mut sim,
        failing,
        UpdateSettings {
            max_per_instance_failures: per_instance,
            max_total_failures: 0,
            rollback_on_failure: true,
            ..settings(2, 5)
        },
        &[],
    )
    .unwrap();
    // Both configs, as the update's details name them.
    let details = sim.query_updates(KEY, true).unwrap();
    let configs: BTreeMap<u32, borealis_core::TaskConfig> =
        details[0].configs.iter().cloned().collect();
    assert_eq!(
        configs.get(&before.head_rev),
        Some(&v1(6).task_config(&key())),
        "seed {seed}: the old revision is the job's config exactly"
    );
    assert_eq!(
        configs.get(&info.update.to_rev).map(|c| c.command.as_str()),
        Some("sim fail 200 v3")
    );
    let mut rolled_back_at = None;
    let done = until_done(&mut sim, 120_000, |sim, u| {
        if u.status.is_rollback() && rolled_back_at.is_none() {
            rolled_back_at = Some(taken_forward(u));
            // The rollback covers what the forward pass took, nothing else.
            assert!(u
                .instances
                .iter()
                .all(|p| p.in_rollback == (p.instance < 2)));
        }
        let down = down(sim);
        assert!(down.len() <= 2, "seed {seed}: {down:?} down at once");
    });
    assert_eq!(
        done.status,
        UpdateStatus::RolledBack,
        "seed {seed}: {done:?}"
    );
    assert_eq!(
        rolled_back_at,
        Some(BTreeSet::from([0, 1])),
        "seed {seed}: the first batch failed, nothing after it was taken"
    );
    let failed_event = done
        .events
        .iter()
        .find(|e| e.status == UpdateStatus::RollingBack)
        .expect("a rollback event");
    assert!(
        failed_event.message.contains("rolling back"),
        "{failed_event:?}"
    );
    sim.run_until_quiet();
    let job = sim.job_audit(KEY).unwrap();
    assert_eq!(
        job.head_rev, before.head_rev,
        "seed {seed}: the head is the old one"
    );
    all_on(&mut sim, "sim run", 6);
    for t in sim.current_tasks(KEY) {
        assert_eq!(t.resources, v1(6).resources);
        if t.instance >= 2 {
            assert_eq!(
                Some(&t.id),
                tasks_before.get(&t.instance),
                "seed {seed}: {KEY}/{} was never taken, its task stays",
                t.instance
            );
        } else {
            assert_ne!(Some(&t.id), tasks_before.get(&t.instance));
        }
    }
    // Exactly the old config, as the scheduler reports it now.
    let details = sim.query_updates(KEY, true).unwrap();
    let configs: BTreeMap<u32, borealis_core::TaskConfig> =
        details[0].configs.iter().cloned().collect();
    assert_eq!(
        configs.get(&job.head_rev),
        Some(&v1(6).task_config(&key())),
        "seed {seed}"
    );
}

/// What the forward pass took, once rolling back: the instances the rollback covers.
fn taken_forward(u: &JobUpdate) -> BTreeSet<u32> {
    u.instances
        .iter()
        .filter(|p| p.in_rollback)
        .map(|p| p.instance)
        .collect()
}

#[test]
fn a_failing_update_rolls_back_to_exactly_the_old_config() {
    rollback(1, 1);
    rollback(1, 0);
}

#[test]
fn a_failing_update_rolls_back_over_seeds() {
    for seed in 2..7 {
        rollback(seed, 1);
    }
}

#[test]
fn a_failing_update_rolls_back_with_no_failure_allowed_over_seeds() {
    // Seeds 2, 3 and 9: instance 0's new task fails before instance 1's old one is killed.
    for seed in [2, 3, 9] {
        rollback(seed, 0);
    }
}

#[test]
fn a_rollback_event_says_how_often_the_instance_failed() {
    let mut sim = cluster(1, 1);
    create(&mut sim, v1(6));
    let failing = v1(6).plan(TaskPlan::FailAfter(200)).tag("v3");
    let tolerant = UpdateSettings {
        max_per_instance_failures: 1,
        ..settings(2, 5)
    };
    start(&mut sim, failing, tolerant, &[]).unwrap();
    let done = until_done(&mut sim, 120_000, |_, _| {});
    assert_eq!(done.status, UpdateStatus::RolledBack, "{done:?}");
    let event = done
        .events
        .iter()
        .find(|e| e.status == UpdateStatus::RollingBack)
        .expect("a rollback event");
    // max_per_instance_failures 1: the instance failed twice.
    assert!(event.message.contains("failed 2 times"), "{event:?}");
}

/// The same bug, without failures: an operator's rollback while the first batch's old tasks
/// (2 s to kill) are still being killed must bring those instances back on v1, not lose them.
#[test]
fn an_immediate_rollback_brings_back_the_instances_being_replaced() {
    for seed in [1, 2] {
        let mut sim = cluster(seed, 1);
        let old = v1(6).kill_ms(2_000);
        create(&mut sim, old.clone());
        start(&mut sim, old.clone().tag("v2"), settings(2, 5), &[]).unwrap();
        let u = latest(&mut sim).unwrap();
        assert_eq!(
            with_phase(&u, InstancePhase::InFlight),
            BTreeSet::from([0, 1])
        );
        let back = command(&mut sim, Command::Rollback).unwrap();
        assert_eq!(back.update.status, UpdateStatus::RollingBack, "seed {seed}");
        let done = until_done(&mut sim, 60_000, |_, _| {});
        assert_eq!(
            done.status,
            UpdateStatus::RolledBack,
            "seed {seed}: {done:?}"
        );
        sim.run_until_quiet();
        all_on(&mut sim, "sim run kill=2000", 6);
    }
}

// ----- pause, resume, pulses -----

#[test]
fn a_paused_update_takes_nothing_new_until_resumed() {
    for seed in [1, 7] {
        let mut sim = cluster(seed, 1);
        create(&mut sim, v1(6));
        start(&mut sim, v1(6).tag("v2"), settings(2, 5), &[]).unwrap();
        let u = latest(&mut sim).unwrap();
        assert_eq!(
            with_phase(&u, InstancePhase::InFlight),
            BTreeSet::from([0, 1])
        );
        let paused = command(&mut sim, Command::Pause).unwrap();
        assert_eq!(paused.update.status, UpdateStatus::RollForwardPaused);
        let held = taken(&latest(&mut sim).unwrap());
        assert_eq!(held, BTreeSet::from([0, 1]), "seed {seed}");
        let untouched: BTreeMap<u32, TaskId> = sim
            .current_tasks(KEY)
            .iter()
            .filter(|t| !held.contains(&t.instance))
            .map(|t| (t.instance, t.id))
            .collect();
        ticks(&mut sim, 60_000, |_, u| {
            assert_eq!(u.status, UpdateStatus::RollForwardPaused, "seed {seed}");
            let now = taken(u);
            assert!(
                now.is_subset(&held),
                "seed {seed}: paused, yet took {now:?}"
            );
        });
        // The batch in flight finished on its own; nothing else moved.
        let u = latest(&mut sim).unwrap();
        assert_eq!(
            with_phase(&u, InstancePhase::Succeeded),
            held,
            "seed {seed}"
        );
        for t in sim.current_tasks(KEY) {
            if let Some(id) = untouched.get(&t.instance) {
                assert_eq!(*id, t.id, "seed {seed}: {KEY}/{} was replaced", t.instance);
                assert_eq!(t.command, "sim run");
            } else {
                assert_eq!(t.command, "sim run v2");
            }
        }
        // Resumed, it takes the rest.
        let resumed = command(&mut sim, Command::Resume).unwrap();
        assert_eq!(resumed.update.status, UpdateStatus::RollingForward);
        let done = until_done(&mut sim, 60_000, |_, _| {});
        assert_eq!(done.status, UpdateStatus::RolledForward, "seed {seed}");
        sim.run_until_quiet();
        all_on(&mut sim, "sim run v2", 6);
    }
}

#[test]
fn a_pulsed_update_progresses_only_within_its_pulse_interval() {
    for seed in [1, 4] {
        let mut sim = cluster(seed, 2);
        create(&mut sim, v1(6));
        let pulsed = UpdateSettings {
            pulse_interval_secs: Some(10),
            ..settings(2, 5)
        };
        let info = start(&mut sim, v1(6).tag("v2"), pulsed, &[]).unwrap();
        assert_eq!(info.update.status, UpdateStatus::RollForwardAwaitingPulse);
        let revs_before = sim.job_audit(KEY).unwrap().desired_revs;
        // No pulse: nothing is taken for a minute.
        ticks(&mut sim, 60_000, |sim, u| {
            assert_eq!(
                u.status,
                UpdateStatus::RollForwardAwaitingPulse,
                "seed {seed}"
            );
            assert!(taken(u).is_empty(), "seed {seed}: took {:?}", taken(u));
            assert!(down(sim).is_empty(), "seed {seed}");
        });
        assert_eq!(sim.job_audit(KEY).unwrap().desired_revs, revs_before);
        // A pulse: it progresses.
        let pulsed_at = sim.now_ms();
        let after = command(&mut sim, Command::Pulse).unwrap();
        assert_eq!(
            after.update.status,
            UpdateStatus::RollingForward,
            "seed {seed}"
        );
        assert_eq!(
            taken(&latest(&mut sim).unwrap()),
            BTreeSet::from([0, 1]),
            "seed {seed}: the pulse let the first batch go"
        );
        // No more pulses: back to waiting within the interval (and the drive's 250 ms timer).
        let mut waited = 0;
        let held = loop {
            sim.advance(TICK_MS);
            waited += TICK_MS;
            let u = latest(&mut sim).unwrap();
            if u.status == UpdateStatus::RollForwardAwaitingPulse {
                break taken(&u);
            }
            assert_eq!(u.status, UpdateStatus::RollingForward, "seed {seed}");
            assert!(
                waited <= 11_000,
                "seed {seed}: still {} {waited} ms after the pulse",
                u.status
            );
        };
        let waited_ms = sim.now_ms() - pulsed_at;
        assert!(
            (10_000..=10_500).contains(&waited_ms),
            "seed {seed}: awaiting a pulse {waited_ms} ms after the last"
        );
        assert!(held.len() >= 2 && held.len() < 6, "seed {seed}: {held:?}");
        ticks(&mut sim, 30_000, |_, u| {
            assert_eq!(
                u.status,
                UpdateStatus::RollForwardAwaitingPulse,
                "seed {seed}"
            );
            assert!(
                taken(u).is_subset(&held),
                "seed {seed}: took {:?} without a pulse",
                taken(u)
            );
        });
        // Pulses every 5 s: it finishes.
        let mut pulses = 0;
        loop {
            let u = latest(&mut sim).unwrap();
            if u.status.is_terminal() {
                assert_eq!(u.status, UpdateStatus::RolledForward, "seed {seed}");
                break;
            }
            command(&mut sim, Command::Pulse).unwrap();
            pulses += 1;
            assert!(pulses < 20, "seed {seed}: {u:?}");
            ticks(&mut sim, 5_000, |_, _| {});
        }
        sim.run_until_quiet();
        all_on(&mut sim, "sim run v2", 6);
    }
}

// ----- crashes and failovers -----

/// Ticks until the update has settled some instances and has others in flight.
fn until_half_done(sim: &mut Sim) -> JobUpdate {
    let mut waited = 0;
    loop {
        let u = latest(sim).unwrap();
        if !with_phase(&u, InstancePhase::Succeeded).is_empty() && u.in_flight() > 0 {
            return u;
        }
        assert!(waited < 60_000, "{u:?}");
        sim.advance(TICK_MS);
        waited += TICK_MS;
    }
}

/// Every task on the update's target revision, by instance (the tasks the update started).
fn note_targets(sim: &mut Sim, u: &JobUpdate, seen: &mut BTreeMap<u32, BTreeSet<TaskId>>) {
    let key = key();
    for inst in sim.audits().iter().filter(|i| i.acting()) {
        for t in inst.shards.iter().flat_map(|s| s.tasks.iter()) {
            if t.job == key && t.rev == u.to_rev {
                seen.entry(t.instance).or_default().insert(t.id);
            }
        }
    }
}

/// A crash of the embedded scheduler while instances are in flight (`crash` does it): the
/// recovered update is the same one (its id, its settled instances still settled) and
/// finishes ROLLED_FORWARD, each instance replaced by exactly one v2 task.
fn crash_in_the_middle(seed: u64, shards: usize, crash: impl FnOnce(&mut Sim)) {
    let mut sim = cluster(seed, shards);
    create(&mut sim, v1(6));
    start(&mut sim, v1(6).tag("v2"), settings(2, 5), &[]).unwrap();
    let mut v2_tasks: BTreeMap<u32, BTreeSet<TaskId>> = BTreeMap::new();
    let before = until_half_done(&mut sim);
    note_targets(&mut sim, &before, &mut v2_tasks);
    let settled = with_phase(&before, InstancePhase::Succeeded);
    let crashes = sim.world().stats.crashes;
    crash(&mut sim);
    assert_eq!(
        sim.world().stats.crashes,
        crashes + 1,
        "seed {seed}: it crashed"
    );
    let after = latest(&mut sim).expect("the update survives the crash");
    assert_eq!(after.id, before.id, "seed {seed}: the same update");
    assert_eq!(after.to_rev, before.to_rev);
    assert!(
        settled.is_subset(&with_phase(&after, InstancePhase::Succeeded)),
        "seed {seed}: settled {settled:?} before the crash, {:?} after",
        after.instances
    );
    let done = until_done(&mut sim, 120_000, |sim, u| {
        assert!(
            settled.is_subset(&with_phase(u, InstancePhase::Succeeded)),
            "seed {seed}: {settled:?} settled before the crash: {:?}",
            u.instances
        );
        note_targets(sim, u, &mut v2_tasks);
    });
    assert_eq!(
        done.status,
        UpdateStatus::RolledForward,
        "seed {seed}: {done:?}"
    );
    assert_eq!(done.id, before.id);
    sim.run_until_quiet();
    all_on(&mut sim, "sim run v2", 6);
    let current: BTreeMap<u32, TaskId> = sim
        .current_tasks(KEY)
        .iter()
        .map(|t| (t.instance, t.id))
        .collect();
    for i in 0..6 {
        assert_eq!(
            v2_tasks.get(&i),
            Some(&BTreeSet::from([current[&i]])),
            "seed {seed}: {KEY}/{i} was put on v2 exactly once"
        );
    }
}

#[test]
fn a_crash_in_the_middle_resumes_the_same_update() {
    crash_in_the_middle(1, 1, |sim| sim.crash_and_recover());
}

#[test]
fn a_crash_in_the_middle_resumes_it_over_seeds_and_crash_points() {
    let points = [
        (CrashPoint::BetweenRounds, 0, 2),
        (CrashPoint::BeforeCommit, 0, 1),
        (CrashPoint::AfterCommit, 0, 1),
        (CrashPoint::BeforeCommit, 3, 2),
        (CrashPoint::AfterCommit, 5, 3),
    ];
    for (seed, (point, after_rounds, restart_shards)) in (2..).zip(points) {
        crash_in_the_middle(seed, 2, |sim| {
            sim.crash(after_rounds, point, restart_shards);
            // A crash armed for a later round happens as rounds run.
            sim.advance(500);
        });
    }
}

#[test]
fn a_new_leader_resumes_the_update_and_finishes_it() {
    for (seed, next) in [(1, 1), (2, 0), (3, 1)] {
        let mut sim = cluster(seed, 1).ha();
        create(&mut sim, v1(6));
        start(&mut sim, v1(6).tag("v2"), settings(2, 5), &[]).unwrap();
        let before = until_half_done(&mut sim);
        sim.leader_loss(1_000, next);
        // The new leader rebuilds from etcd; the update is found again.
        let mut waited = 0;
        let after = loop {
            sim.advance(TICK_MS);
            waited += TICK_MS;
            if let Some(u) = latest(&mut sim) {
                break u;
            }
            assert!(waited < 30_000, "seed {seed}: no leader holds the update");
        };
        assert_eq!(after.id, before.id, "seed {seed}");
        let done = until_done(&mut sim, 120_000, |_, _| {});
        assert_eq!(
            done.status,
            UpdateStatus::RolledForward,
            "seed {seed}: {done:?}"
        );
        assert_eq!(done.id, before.id);
        sim.run_until_quiet();
        all_on(&mut sim, "sim run v2", 6);
    }
}

/// A crash (embedded) or a failover (HA) while a failed update rolls back: the rollback
/// resumes and ends ROLLED_BACK with every instance on v1. (Under HA the new leader may find
/// the update as etcd last had it, still rolling forward: it then fails and rolls back again.)
fn interrupted_rollback(seed: u64, ha: bool) {
    let mut sim = if ha {
        cluster(seed, 1).ha()
    } else {
        cluster(seed, 2)
    };
    create(&mut sim, v1(6));
    let failing = v1(6).plan(TaskPlan::FailAfter(200)).tag("v3");
    let tolerant = UpdateSettings {
        max_per_instance_failures: 1,
        ..settings(2, 5)
    };
    start(&mut sim, failing, tolerant, &[]).unwrap();
    let mut waited = 0;
    let before = loop {
        let u = latest(&mut sim).unwrap();
        if u.status == UpdateStatus::RollingBack && u.in_flight() > 0 {
            break u;
        }
        assert!(waited < 60_000, "seed {seed}: {u:?}");
        sim.advance(TICK_MS);
        waited += TICK_MS;
    };
    if ha {
        sim.leader_loss(1_000, 1);
    } else {
        sim.crash_and_recover();
    }
    // (A new leader knows the tasks only as the agents re-register: no down count there.)
    let done = until_done(&mut sim, 120_000, |sim, u| {
        let down = down(sim);
        assert!(
            ha || down.len() <= 2,
            "seed {seed}: {down:?} down at once ({})",
            u.status
        );
    });
    assert_eq!(done.id, before.id);
    assert_eq!(
        done.status,
        UpdateStatus::RolledBack,
        "seed {seed}: {done:?}"
    );
    sim.run_until_quiet();
    all_on(&mut sim, "sim run", 6);
}

#[test]
fn a_rollback_resumes_after_a_crash_or_a_failover() {
    for seed in [1, 2, 3] {
        interrupted_rollback(seed, false);
        interrupted_rollback(seed, true);
    }
}

// ----- instance count changes -----

#[test]
fn an_update_grows_and_shrinks_the_job() {
    for seed in [1, 5] {
        let mut sim = cluster(seed, 2);
        create(&mut sim, v1(4));
        // 4 -> 6.
        let info = start(&mut sim, v1(6).tag("v2"), settings(2, 3), &[]).unwrap();
        assert_eq!(
            (info.update.instances_before, info.update.instances_after),
            (4, 6)
        );
        let done = until_done(&mut sim, 120_000, |sim, _| {
            assert!(down(sim).len() <= 2, "seed {seed}");
        });
        assert_eq!(
            done.status,
            UpdateStatus::RolledForward,
            "seed {seed}: {done:?}"
        );
        sim.run_until_quiet();
        all_on(&mut sim, "sim run v2", 6);
        // 6 -> 4.
        start(&mut sim, v1(4).tag("v3"), settings(2, 3), &[]).unwrap();
        let done = until_done(&mut sim, 120_000, |sim, _| {
            assert!(down(sim).len() <= 2, "seed {seed}");
        });
        assert_eq!(
            done.status,
            UpdateStatus::RolledForward,
            "seed {seed}: {done:?}"
        );
        sim.run_until_quiet();
        // (The job keeps v2 for the removed instances: see
        // `a_shrinking_update_keeps_no_revision_for_the_instances_it_removed`.)
        on_head(&mut sim, "sim run v3", 4);
        runs_nowhere(&mut sim, 4);
        runs_nowhere(&mut sim, 5);
        // And back to 6: the removed instances come back.
        start(&mut sim, v1(6).tag("v4"), settings(3, 3), &[]).unwrap();
        let done = until_done(&mut sim, 120_000, |_, _| {});
        assert_eq!(
            done.status,
            UpdateStatus::RolledForward,
            "seed {seed}: {done:?}"
        );
        sim.run_until_quiet();
        all_on(&mut sim, "sim run v4", 6);
    }
}

#[test]
fn a_shrinking_update_keeps_no_revision_for_the_instances_it_removed() {
    let mut sim = cluster(1, 1);
    create(&mut sim, v1(6));
    start(&mut sim, v1(4).tag("v2"), settings(2, 3), &[]).unwrap();
    let done = until_done(&mut sim, 120_000, |_, _| {});
    assert_eq!(done.status, UpdateStatus::RolledForward, "{done:?}");
    sim.run_until_quiet();
    all_on(&mut sim, "sim run v2", 4);
}

#[test]
fn rolling_back_a_growing_update_removes_the_instances_it_added() {
    for seed in [1, 2] {
        // An operator's rollback once every instance is on v2 and the new ones run.
        let mut sim = cluster(seed, 1);
        create(&mut sim, v1(4));
        start(&mut sim, v1(6).tag("v2"), settings(6, 30), &[]).unwrap();
        let mut waited = 0;
        while running(&mut sim).len() < 6 {
            sim.advance(TICK_MS);
            waited += TICK_MS;
            assert!(waited < 30_000, "seed {seed}: {:?}", sim.job_states(KEY));
        }
        assert_eq!(
            latest(&mut sim).unwrap().status,
            UpdateStatus::RollingForward
        );
        let back = command(&mut sim, Command::Rollback).unwrap();
        assert_eq!(back.update.status, UpdateStatus::RollingBack, "seed {seed}");
        let done = until_done(&mut sim, 120_000, |_, _| {});
        assert_eq!(
            done.status,
            UpdateStatus::RolledBack,
            "seed {seed}: {done:?}"
        );
        sim.run_until_quiet();
        all_on(&mut sim, "sim run", 4);
        runs_nowhere(&mut sim, 4);
        runs_nowhere(&mut sim, 5);

        // A failure's rollback of an update that only adds instances 4 and 5.
        let mut sim = cluster(seed, 2);
        create(&mut sim, v1(4));
        let kept: BTreeMap<u32, TaskId> = sim
            .current_tasks(KEY)
            .iter()
            .map(|t| (t.instance, t.id))
            .collect();
        let failing = v1(6).plan(TaskPlan::FailAfter(200));
        start(&mut sim, failing, settings(2, 5), &[4, 5]).unwrap();
        let done = until_done(&mut sim, 120_000, |_, _| {});
        assert_eq!(
            done.status,
            UpdateStatus::RolledBack,
            "seed {seed}: {done:?}"
        );
        sim.run_until_quiet();
        all_on(&mut sim, "sim run", 4);
        runs_nowhere(&mut sim, 4);
        runs_nowhere(&mut sim, 5);
        let now: BTreeMap<u32, TaskId> = sim
            .current_tasks(KEY)
            .iter()
            .filter(|t| t.instance < 4)
            .map(|t| (t.instance, t.id))
            .collect();
        assert_eq!(
            now, kept,
            "seed {seed}: instances outside the scope are untouched"
        );
    }
}

// ----- refusals -----

#[test]
fn what_conflicts_with_an_active_update_is_refused() {
    let mut sim = cluster(3, 2);
    create(&mut sim, v1(6));
    start(&mut sim, v1(6).tag("v2"), settings(2, 5), &[]).unwrap();
    let names_it = |text: &str| text.contains("update 1") && text.contains("ROLLING_FORWARD");
    // A second update.
    let second = start(&mut sim, v1(6).tag("v3"), settings(1, 5), &[]).unwrap_err();
    assert!(names_it(&second), "{second}");
    // Resume of a running update.
    let resume = command(&mut sim, Command::Resume).unwrap_err();
    assert!(names_it(&resume) && resume.contains("resume"), "{resume}");
    // A kill of the job, or of one instance.
    let kill = sim.kill_job(KEY, &[]).unwrap_err();
    assert!(names_it(&kill), "{kill}");
    let kill = sim.kill_job(KEY, &[4]).unwrap_err();
    assert!(names_it(&kill), "{kill}");
    // Creating the job again.
    let create = sim.create_job(KEY, v1(6).tag("v9")).unwrap_err();
    assert!(names_it(&create), "{create}");
    // None of it changed the update, which finishes.
    let u = latest(&mut sim).unwrap();
    assert_eq!((u.id, u.status), (1, UpdateStatus::RollingForward));
    let done = until_done(&mut sim, 120_000, |_, _| {});
    assert_eq!(done.status, UpdateStatus::RolledForward, "{done:?}");
    sim.run_until_quiet();
    all_on(&mut sim, "sim run v2", 6);
    // A command once it finished is refused too, naming its final status.
    let pause = command(&mut sim, Command::Pause).unwrap_err();
    assert!(
        pause.contains("no active update") && pause.contains("ROLLED_FORWARD"),
        "{pause}"
    );
}

// ----- SLA-aware -----

#[test]
fn an_sla_aware_update_keeps_the_count_sla() {
    for seed in [1, 2, 3] {
        let mut sim = cluster(seed, 2);
        let sla = SlaPolicy::Count {
            count: 4,
            duration_secs: 2,
        };
        create(&mut sim, v1(6).sla(sla.clone()));
        // Every instance past its SLA duration before the update starts.
        sim.advance(3_000);
        let aware = UpdateSettings {
            sla_aware: true,
            ..settings(3, 3)
        };
        start(&mut sim, v1(6).sla(sla).tag("v2"), aware, &[]).unwrap();
        let mut most_down = 0;
        let done = until_done(&mut sim, 180_000, |sim, u| {
            let (up, down) = split(sim);
            most_down = most_down.max(down.len());
            assert!(
                up.len() >= 4,
                "seed {seed}: only {up:?} RUNNING (count SLA 4) during {}",
                u.status
            );
            let active = active_for(sim, 2_000);
            assert!(
                active >= 4,
                "seed {seed}: {active} instances RUNNING for 2 s (count SLA 4)"
            );
        });
        assert_eq!(
            done.status,
            UpdateStatus::RolledForward,
            "seed {seed}: {done:?}"
        );
        assert!(
            most_down <= 2,
            "seed {seed}: batch_size 3, but the SLA allows 2 down"
        );
        sim.run_until_quiet();
        all_on(&mut sim, "sim run v2", 6);
    }
}
