//! Issue 7's policy rules, one named scenario each, with the flags it runs under: quotas
//! (refusal text, use, concurrent creates on two shards), preemption (exactly enough victims,
//! never across roles' production work, never for a task that fits elsewhere), the flapping
//! throttle, the schedule penalty, why-pending merged over two shards, and the tier rules.
//!
//! Every step also checks every invariant (`quotas_never_exceeded` among them). Times are the
//! simulation's milliseconds (`Sim::now_ms`, the clock of `Sim::history`); the shards tick
//! every 50 ms and run their sweep (preemption searches, slot holds) every 2 s.

use borealis_core::tier::{TierConfig, TierSettings};
use borealis_core::{Constraint, Resources, TaskId, TaskState, Tier};
use borealis_net::views::{ErrorCode, JobStatusView, TaskInfoView};
use borealis_sim::{JobConfig, Reply, Sim, TaskPlan};

/// Tick granularity: a timer due at t is acted on at the first tick at or after t.
const TICK_MS: u64 = 50;
/// The shards' sweep period.
const SWEEP_MS: u64 = 2_000;

fn res(cpu_millis: u32, ram_mib: u32) -> Resources {
    Resources {
        cpu_millis,
        ram_mib,
        disk_mib: 10_000,
        ports: 0,
    }
}

fn quota(cpu_millis: u32, ram_mib: u32, disk_mib: u32) -> Resources {
    Resources {
        cpu_millis,
        ram_mib,
        disk_mib,
        ports: 0,
    }
}

/// A two-shard cluster built by `build` from the first seed that puts its two agents on
/// different shards (the seed picks which shard accepts each agent's connection).
fn on_two_shards(build: impl Fn(u64) -> Sim) -> Sim {
    (0..64)
        .map(|seed| {
            let mut sim = build(seed);
            let homes = sim.agent_homes();
            (sim, homes)
        })
        .find(|(_, homes)| homes.len() == 2 && homes[0].1 != homes[1].1)
        .expect("some seed puts the agents on different shards")
        .0
}

fn status(sim: &mut Sim, key: &str) -> JobStatusView {
    sim.job_status(key)
        .unwrap_or_else(|e| panic!("status of {key}: {e}"))
}

fn in_state(status: &JobStatusView, state: TaskState) -> Vec<TaskInfoView> {
    status
        .tasks
        .iter()
        .filter(|t| t.state == Some(state))
        .cloned()
        .collect()
}

/// The one current (not terminal) task of instance 0.
fn live_task(status: &JobStatusView) -> TaskInfoView {
    let live: Vec<&TaskInfoView> = status
        .tasks
        .iter()
        .filter(|t| t.instance == 0 && t.state.is_some_and(|s| !s.is_terminal()))
        .collect();
    assert_eq!(live.len(), 1, "{:?}", status.tasks);
    live[0].clone()
}

/// When (simulated ms) a task first entered `state`, per the recorded transitions.
fn entered(sim: &mut Sim, task: u64, state: TaskState) -> Option<u64> {
    sim.transitions_of(TaskId(task))
        .into_iter()
        .find(|(_, _, to)| *to == state)
        .map(|(at, _, _)| at)
}

/// Every task that ever entered PREEMPTING, with when.
fn preemptions(sim: &mut Sim) -> Vec<(u64, TaskId)> {
    sim.history()
        .transitions
        .iter()
        .filter(|t| t.to == TaskState::Preempting)
        .map(|t| (t.at_ms, t.task))
        .collect()
}

fn refused(reply: &Reply) -> (ErrorCode, String) {
    match reply {
        Reply::Error { code, message } => (*code, message.clone()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn quota_refusal_names_resource_quota_use_and_request() {
    let mut sim = Sim::new(1).agent("a1", res(8000, 16384), &[]);
    sim.set_quota("www", quota(1000, 4096, 10_000)).unwrap();

    // Over quota: refused with the resource, the quota, the use and the request; nothing is
    // created.
    let reply = sim.create_job_reply("www/prod/big", JobConfig::new(1, 2000, 128).production());
    assert_eq!(
        refused(&reply),
        (
            ErrorCode::QuotaExceeded,
            "quota exceeded for role www: cpu: quota 1.000, used 0.000, requested 2.000".into()
        )
    );
    let unknown = sim.job_status("www/prod/big");
    assert!(
        matches!(&unknown, Err(e) if e.contains("UnknownJob")),
        "{unknown:?}"
    );

    // The same size, not production: never counts.
    sim.create_job("www/prod/batch", JobConfig::new(1, 2000, 128))
        .unwrap();
    // Production within the quota: admitted, and its use shows.
    sim.create_job("www/prod/small", JobConfig::new(1, 500, 128).production())
        .unwrap();
    sim.run_until_quiet();
    let q = sim.get_quota("www").unwrap();
    assert!(q.quota_set);
    assert_eq!(q.quota, quota(1000, 4096, 10_000));
    assert_eq!(
        q.used,
        quota(500, 128, 64),
        "only the production job counts"
    );
    assert_eq!(
        sim.job_states("www/prod/small"),
        vec![(0, TaskState::Running)]
    );
    assert_eq!(
        sim.job_states("www/prod/batch"),
        vec![(0, TaskState::Running)]
    );

    // A role with no quota has none: its production work is refused.
    let reply = sim.create_job_reply("nobody/prod/x", JobConfig::new(1, 100, 64).production());
    let (code, message) = refused(&reply);
    assert_eq!(code, ErrorCode::QuotaExceeded);
    assert_eq!(
        message,
        "quota exceeded for role nobody: cpu: quota 0.000, used 0.000, requested 0.100"
    );
    let unset = sim.get_quota("nobody").unwrap();
    assert!(!unset.quota_set);
    assert_eq!(unset.used, Resources::ZERO);

    // Killing releases the use.
    sim.kill_job("www/prod/small", &[]).unwrap();
    sim.run_until_quiet();
    assert_eq!(sim.get_quota("www").unwrap().used, Resources::ZERO);

    concurrent_creates_on_two_shards_cannot_exceed_the_quota();
}

/// Two jobs of one role owned by different shards (their keys hash apart), each within the
/// quota alone, both sent before either is answered: the quota owner's reservation admits
/// one (part of `quota_refusal_names_resource_quota_use_and_request`).
fn concurrent_creates_on_two_shards_cannot_exceed_the_quota() {
    let key = |name: &str| format!("web/prod/{name}");
    let owner = |name: &str| borealis_core::route_hash_str(&key(name)) % 2;
    let names: Vec<String> = (0..32).map(|i| format!("j{i}")).collect();
    let first = names[0].clone();
    let second = names
        .iter()
        .find(|n| owner(n) != owner(&first))
        .expect("a key on the other shard")
        .clone();
    for seed in 0..8 {
        let mut sim = Sim::new(seed)
            .shards(2)
            .agent("a1", res(8000, 16384), &[])
            .agent("a2", res(8000, 16384), &[]);
        sim.set_quota("web", quota(1000, 4096, 10_000)).unwrap();
        let a = sim.send_create_job(&key(&first), JobConfig::new(1, 1000, 128).production());
        let b = sim.send_create_job(&key(&second), JobConfig::new(1, 1000, 128).production());
        let replies = [sim.wait_reply(a), sim.wait_reply(b)];
        let admitted = replies.iter().filter(|r| **r == Reply::Ack).count();
        assert_eq!(admitted, 1, "seed {seed}: {replies:?}");
        let refusal = replies
            .iter()
            .find(|r| **r != Reply::Ack)
            .expect("one refused");
        assert_eq!(
            refused(refusal),
            (
                ErrorCode::QuotaExceeded,
                "quota exceeded for role web: cpu: quota 1.000, used 1.000, requested 1.000".into()
            ),
            "seed {seed}: the admitted create's reservation counts as used"
        );
        sim.run_until_quiet();
        assert_eq!(sim.get_quota("web").unwrap().used, quota(1000, 128, 64));
    }
}

#[test]
fn quotas_and_their_use_survive_a_restart_and_a_new_leader() {
    for ha in [false, true] {
        let mut sim = Sim::new(1).shards(2).agent("a1", res(8000, 16384), &[]);
        if ha {
            sim = sim.ha();
        }
        sim.set_quota("www", quota(1000, 4096, 10_000)).unwrap();
        sim.create_job(
            "www/prod/svc",
            JobConfig::new(2, 250, 128).service().production(),
        )
        .unwrap();
        sim.run_until_quiet();
        if ha {
            sim.leader_loss(200, 1);
        } else {
            sim.crash_and_recover();
        }
        sim.run_until_quiet();
        let q = sim.get_quota("www").unwrap();
        assert_eq!(
            (q.quota, q.used),
            (quota(1000, 4096, 10_000), quota(500, 256, 128)),
            "ha: {ha}"
        );
        // The ledger is whole again: what is left is admitted, more is refused.
        let more = sim.create_job_reply("www/prod/more", JobConfig::new(1, 600, 128).production());
        assert_eq!(
            refused(&more),
            (
                ErrorCode::QuotaExceeded,
                "quota exceeded for role www: cpu: quota 1.000, used 0.500, requested 0.600".into()
            ),
            "ha: {ha}"
        );
        sim.create_job("www/prod/rest", JobConfig::new(1, 500, 128).production())
            .unwrap();
    }
}

/// A cluster for the preemption scenarios: one agent of 2 cores, preemption after 1 s,
/// searched every second (acted on at the 2 s sweep).
fn preemption_sim(seed: u64, shards: usize) -> Sim {
    Sim::new(seed)
        .shards(shards)
        .settings(|s| {
            s.preemption_delay_ms = 1_000;
            s.preemption_slot_search_interval_ms = 1_000;
        })
        .agent("a1", res(2000, 8192), &[])
}

#[test]
fn preemption_frees_exactly_enough() {
    for (seed, shards) in [(1, 1), (2, 2), (3, 2)] {
        let mut sim = preemption_sim(seed, shards);
        sim.create_job(
            "batch/test/filler",
            JobConfig::new(4, 500, 128)
                .service()
                .tier(Tier::Preemptible)
                .kill_ms(300),
        )
        .unwrap();
        sim.run_until_quiet();
        assert_eq!(sim.job_states("batch/test/filler").len(), 4);
        assert_eq!(
            in_state(&status(&mut sim, "batch/test/filler"), TaskState::Running).len(),
            4
        );
        sim.set_quota("www", quota(4000, 8192, 10_000)).unwrap();
        let created_ms = sim.now_ms();
        sim.create_job("www/prod/server", JobConfig::new(1, 1000, 128).production())
            .unwrap();
        sim.advance(10_000);

        let server = live_task(&status(&mut sim, "www/prod/server"));
        assert_eq!(server.state, Some(TaskState::Running), "{server:?}");
        let filler = status(&mut sim, "batch/test/filler");
        let killed = in_state(&filler, TaskState::Killed);
        assert_eq!(killed.len(), 2, "exactly two victims: {:?}", filler.tasks);
        for victim in &killed {
            // (`borealis job status` shows it as `preempted by TASKID`.)
            assert_eq!(victim.preempted_by, Some(server.task_id), "{victim:?}");
        }
        assert_eq!(
            in_state(&filler, TaskState::Running).len(),
            2,
            "the other two untouched"
        );
        // The victims' replacements (services) find no room and wait.
        assert_eq!(in_state(&filler, TaskState::Pending).len(), 2);
        // The audit says the same: who preempted whom.
        let mut preempted: Vec<(TaskId, TaskId)> = sim
            .audits()
            .iter()
            .filter(|i| i.acting())
            .flat_map(|i| i.shards.iter())
            .flat_map(|s| s.preempted.iter().copied())
            .collect();
        preempted.sort();
        let mut expected: Vec<(TaskId, TaskId)> = killed
            .iter()
            .map(|v| (TaskId(v.task_id), TaskId(server.task_id)))
            .collect();
        expected.sort();
        assert_eq!(preempted, expected);

        // Not before the delay: the search starts on the first sweep at least 1 s after
        // the task became PENDING.
        let pending_at = entered(&mut sim, server.task_id, TaskState::Pending).unwrap();
        assert!(pending_at >= created_ms);
        let when = preemptions(&mut sim);
        println!("seed {seed}: pending at {pending_at}, preempted {when:?}");
        assert_eq!(when.len(), 2, "{when:?}");
        for (at, _) in &when {
            assert!(
                *at >= pending_at + 1_000 && *at <= pending_at + 1_000 + SWEEP_MS + TICK_MS,
                "preempted at {at}, pending since {pending_at}"
            );
        }
        sim.run_until_quiet();
    }
}

#[test]
fn no_preemption_before_the_delay() {
    let mut sim = Sim::new(4)
        .settings(|s| {
            s.preemption_delay_ms = 8_000;
            s.preemption_slot_search_interval_ms = 1_000;
        })
        .agent("a1", res(2000, 8192), &[]);
    sim.create_job(
        "batch/test/filler",
        JobConfig::new(4, 500, 128)
            .service()
            .tier(Tier::Preemptible),
    )
    .unwrap();
    sim.run_until_quiet();
    sim.set_quota("www", quota(4000, 8192, 10_000)).unwrap();
    sim.create_job("www/prod/server", JobConfig::new(1, 500, 128).production())
        .unwrap();
    let server = live_task(&status(&mut sim, "www/prod/server"));
    let pending_at = entered(&mut sim, server.task_id, TaskState::Pending).unwrap();
    sim.advance(7_500);
    assert!(preemptions(&mut sim).is_empty(), "nothing before 8 s");
    assert_eq!(
        live_task(&status(&mut sim, "www/prod/server")).state,
        Some(TaskState::Pending)
    );
    sim.advance(5_000);
    let when = preemptions(&mut sim);
    assert_eq!(when.len(), 1, "one victim of 0.5 core: {when:?}");
    assert!(
        when[0].0 >= pending_at + 8_000,
        "{when:?}, pending at {pending_at}"
    );
    assert_eq!(
        live_task(&status(&mut sim, "www/prod/server")).state,
        Some(TaskState::Running)
    );
}

#[test]
fn preemptor_disabled_preempts_nothing() {
    let mut sim = Sim::new(5)
        .settings(|s| {
            s.enable_preemptor = false;
            s.preemption_delay_ms = 1_000;
            s.preemption_slot_search_interval_ms = 1_000;
        })
        .agent("a1", res(2000, 8192), &[]);
    sim.create_job(
        "batch/test/filler",
        JobConfig::new(4, 500, 128)
            .service()
            .tier(Tier::Preemptible),
    )
    .unwrap();
    sim.run_until_quiet();
    sim.set_quota("www", quota(4000, 8192, 10_000)).unwrap();
    sim.create_job("www/prod/server", JobConfig::new(1, 1000, 128).production())
        .unwrap();
    sim.advance(20_000);
    assert!(preemptions(&mut sim).is_empty());
    assert_eq!(
        live_task(&status(&mut sim, "www/prod/server")).state,
        Some(TaskState::Pending)
    );
}

#[test]
fn no_preemption_across_roles_for_production_victims() {
    for (seed, shards) in [(1, 1), (2, 2)] {
        let mut sim = preemption_sim(seed, shards);
        sim.set_quota("alpha", quota(4000, 8192, 10_000)).unwrap();
        sim.set_quota("beta", quota(4000, 8192, 10_000)).unwrap();
        // Role alpha's production work fills the agent.
        sim.create_job(
            "alpha/prod/base",
            JobConfig::new(4, 500, 128).service().production(),
        )
        .unwrap();
        sim.run_until_quiet();
        let base: Vec<u64> = in_state(&status(&mut sim, "alpha/prod/base"), TaskState::Running)
            .iter()
            .map(|t| t.task_id)
            .collect();
        assert_eq!(base.len(), 4);
        // Role beta's production task, of a higher priority: never at alpha's expense.
        sim.create_job(
            "beta/prod/urgent",
            JobConfig::new(1, 1000, 128).production().priority(10),
        )
        .unwrap();
        sim.advance(20_000);
        assert!(preemptions(&mut sim).is_empty(), "seed {seed}");
        assert_eq!(
            live_task(&status(&mut sim, "beta/prod/urgent")).state,
            Some(TaskState::Pending)
        );
        let now: Vec<u64> = in_state(&status(&mut sim, "alpha/prod/base"), TaskState::Running)
            .iter()
            .map(|t| t.task_id)
            .collect();
        assert_eq!(now, base, "alpha's tasks untouched");

        // Alpha's own higher-priority production task does preempt a lower-priority one:
        // one victim of 0.5 core is exactly enough.
        sim.create_job(
            "alpha/prod/hot",
            JobConfig::new(1, 500, 128).production().priority(5),
        )
        .unwrap();
        sim.advance(10_000);
        let hot = live_task(&status(&mut sim, "alpha/prod/hot"));
        assert_eq!(hot.state, Some(TaskState::Running), "seed {seed}: {hot:?}");
        let base_status = status(&mut sim, "alpha/prod/base");
        let killed = in_state(&base_status, TaskState::Killed);
        assert_eq!(killed.len(), 1, "{:?}", base_status.tasks);
        assert_eq!(killed[0].preempted_by, Some(hot.task_id));
        assert!(base.contains(&killed[0].task_id));
        assert_eq!(in_state(&base_status, TaskState::Running).len(), 3);
        // Beta still waits: the freed room went to alpha's task.
        assert_eq!(
            live_task(&status(&mut sim, "beta/prod/urgent")).state,
            Some(TaskState::Pending)
        );
        assert_eq!(preemptions(&mut sim).len(), 1);
    }
}

#[test]
fn never_preempts_for_a_task_that_fits_elsewhere() {
    let mut sim = on_two_shards(|seed| {
        Sim::new(seed)
            .shards(2)
            .settings(|s| {
                s.preemption_delay_ms = 1_000;
                s.preemption_slot_search_interval_ms = 1_000;
            })
            .agent("a1", res(2000, 8192), &[])
            .agent("a2", res(2000, 8192), &[])
    });
    // a1 full of non-production work; a2 has room.
    sim.create_job(
        "batch/test/filler",
        JobConfig::new(4, 500, 128)
            .service()
            .tier(Tier::Preemptible)
            .constraint(Constraint::Value {
                attribute: "host".into(),
                negated: false,
                values: vec!["a1".into()],
            }),
    )
    .unwrap();
    sim.run_until_quiet();
    assert_eq!(sim.agent_tasks("a1").len(), 4);
    assert!(sim.agent_tasks("a2").is_empty());
    sim.set_quota("www", quota(4000, 8192, 10_000)).unwrap();
    sim.create_job("www/prod/server", JobConfig::new(1, 1000, 128).production())
        .unwrap();
    sim.advance(10_000);
    let server = live_task(&status(&mut sim, "www/prod/server"));
    assert_eq!(server.state, Some(TaskState::Running));
    assert_eq!(server.agent_id, "a2", "{server:?}");
    assert!(preemptions(&mut sim).is_empty());
    assert_eq!(
        in_state(&status(&mut sim, "batch/test/filler"), TaskState::Running).len(),
        4
    );
}

#[test]
fn flapping_task_is_throttled_then_retried() {
    let initial = 2_000;
    let max = 8_000;
    let mut sim = Sim::new(1)
        .settings(|s| {
            s.initial_flapping_task_delay_ms = initial;
            s.max_flapping_task_delay_ms = max;
        })
        .agent("a1", res(2000, 8192), &[]);
    // Fails 100 ms after RUNNING: far below the 5 min flapping threshold.
    sim.create_job(
        "www/prod/flappy",
        JobConfig::new(1, 500, 128)
            .service()
            .plan(TaskPlan::FailAfter(100)),
    )
    .unwrap();
    // The first run flaps within ~600 ms; its replacement is THROTTLED.
    sim.advance(1_000);
    let st = status(&mut sim, "www/prod/flappy");
    let first = st.tasks.iter().find(|t| t.state == Some(TaskState::Failed));
    assert!(first.is_some(), "{:?}", st.tasks);
    let throttled = live_task(&st);
    assert_eq!(throttled.state, Some(TaskState::Throttled));
    assert_eq!(throttled.message, "throttled for 2000 ms (flapping)");
    assert_eq!(throttled.pending_reason, "throttled for 2000 ms (flapping)");

    // Consecutive flaps: the delay doubles up to the max.
    sim.advance(40_000);
    let st = status(&mut sim, "www/prod/flappy");
    let mut tasks: Vec<u64> = st.tasks.iter().map(|t| t.task_id).collect();
    tasks.sort();
    let mut delays = Vec::new();
    for &task in &tasks[1..] {
        let path: Vec<(TaskState, TaskState)> = sim
            .transitions_of(TaskId(task))
            .iter()
            .map(|(_, from, to)| (*from, *to))
            .collect();
        assert_eq!(
            path.first(),
            Some(&(TaskState::Init, TaskState::Throttled)),
            "a flapping task's replacement goes INIT -> THROTTLED: {path:?}"
        );
        let Some(released) = entered(&mut sim, task, TaskState::Pending) else {
            continue; // still throttled
        };
        let throttled_at = entered(&mut sim, task, TaskState::Throttled).unwrap();
        delays.push(released - throttled_at);
        // Then it runs (and flaps again).
        assert!(
            path.contains(&(TaskState::Pending, TaskState::Assigned)),
            "{path:?}"
        );
        assert!(
            path.contains(&(TaskState::Starting, TaskState::Running)),
            "{path:?}"
        );
    }
    let expected = [initial, 2 * initial, max, max];
    println!("throttled for {delays:?}");
    assert!(delays.len() >= expected.len(), "{delays:?}");
    for (delay, want) in delays.iter().zip(expected) {
        assert!(
            *delay >= want && *delay <= want + TICK_MS,
            "throttled {delay} ms, expected {want} (delays {delays:?})"
        );
    }
}

#[test]
fn schedule_penalty_backs_off() {
    // An attempt that fails explains itself to the other shard (`Explain`, at most once per
    // initial penalty): with two shards each failed attempt of an unplaceable job is one
    // `Explain` between the shards, which times the attempts.
    let (initial, max) = (1_000, 8_000);
    let mut sim = Sim::new(1)
        .shards(2)
        .settings(|s| {
            s.initial_schedule_penalty_ms = initial;
            s.max_schedule_penalty_ms = max;
        })
        .agent("a1", res(2000, 8192), &[])
        .agent_later("big", res(8000, 8192), &[]);
    let key = "www/prod/huge";
    sim.create_job(key, JobConfig::new(1, 4000, 128)).unwrap();
    sim.advance(30_000);
    let attempts: Vec<u64> = sim
        .history()
        .peer_messages
        .iter()
        .filter(|m| m.what == format!("Explain {key}"))
        .map(|m| m.at_ms)
        .collect();
    let gaps: Vec<u64> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    println!("attempts at {attempts:?}, gaps {gaps:?}");
    let expected = [initial, 2 * initial, 4 * initial, max, max];
    assert!(gaps.len() >= expected.len(), "attempts at {attempts:?}");
    for (gap, want) in gaps.iter().zip(expected) {
        assert!(
            *gap >= want && *gap <= want + TICK_MS,
            "attempts at {attempts:?}: gaps {gaps:?}, expected {expected:?}"
        );
    }
    let task = live_task(&status(&mut sim, key));
    assert_eq!(task.state, Some(TaskState::Pending));
    assert_eq!(task.pending_reason, "insufficient cpu on 1 agent");

    // A resource that appears is used within the current penalty window (8 s), not at its
    // end: an offer that changed and could hold the task brings the job back early.
    let last = *attempts.last().unwrap();
    sim.start_agent("big");
    let joined = sim.now_ms();
    assert!(joined < last + max, "within the window");
    sim.advance(1_000);
    let assigned = entered(&mut sim, task.task_id, TaskState::Assigned).expect("placed");
    println!("big joined at {joined}, the task was assigned at {assigned}");
    assert!(
        assigned < joined + 1_000 && assigned < last + max,
        "joined at {joined}, assigned at {assigned}, next attempt due at {}",
        last + max
    );
    assert_eq!(
        live_task(&status(&mut sim, key)).agent_id,
        "big",
        "placed on the new agent"
    );
}

#[test]
fn why_pending_string_over_two_shards() {
    let mut sim = on_two_shards(|seed| {
        Sim::new(seed)
            .shards(2)
            .agent("small", res(2000, 512), &[("zone", "z1")])
            .agent("elsewhere", res(2000, 16384), &[("zone", "z2")])
    });
    let key = "www/prod/picky";
    sim.create_job(
        key,
        JobConfig::new(1, 500, 1024).constraint(Constraint::Value {
            attribute: "zone".into(),
            negated: false,
            values: vec!["z1".into()],
        }),
    )
    .unwrap();
    sim.advance(3_000);
    let task = live_task(&status(&mut sim, key));
    assert_eq!(task.state, Some(TaskState::Pending));
    // One reason per agent, each counted by the shard that holds the agent's offer, merged
    // by the job's owner; equal counts are listed alphabetically (core's `PendingReasons`).
    assert_eq!(
        task.pending_reason,
        "constraint zone unmet on 1 agent; insufficient ram on 1 agent"
    );
}

#[test]
fn tier_rules() {
    let mut sim = Sim::new(1).agent("a1", res(8000, 16384), &[]);
    sim.set_quota("www", quota(1000, 4096, 10_000)).unwrap();
    // Production work in a preemptible or revocable tier is refused, naming `tier`.
    for (tier, why) in [
        (Tier::Preemptible, "preemptible"),
        (Tier::Revocable, "revocable"),
    ] {
        let key = format!("www/prod/{}", tier.as_str());
        let reply = sim.create_job_reply(&key, JobConfig::new(1, 100, 64).production().tier(tier));
        assert_eq!(
            refused(&reply),
            (
                ErrorCode::InvalidRequest,
                format!(
                    "job {key}: tier: a production job cannot run in tier {}, which is {why}",
                    tier.as_str()
                )
            )
        );
        assert!(sim.job_status(&key).is_err(), "nothing created");
    }
    // No tier named: production work gets `preferred` (and counts against the quota) ...
    sim.create_job(
        "www/prod/default-prod",
        JobConfig::new(1, 500, 128).production().no_tier(),
    )
    .unwrap();
    let over = sim.create_job_reply(
        "www/prod/default-prod-2",
        JobConfig::new(1, 600, 128).production().no_tier(),
    );
    assert_eq!(
        refused(&over),
        (
            ErrorCode::QuotaExceeded,
            "quota exceeded for role www: cpu: quota 1.000, used 0.500, requested 0.600".into()
        )
    );
    // ... other work the config's default (`preemptible` in Aurora's stock config).
    sim.create_job(
        "www/prod/default-batch",
        JobConfig::new(1, 500, 128).no_tier(),
    )
    .unwrap();
    sim.run_until_quiet();
    assert_eq!(sim.get_quota("www").unwrap().used, quota(500, 128, 64));
    let launched: Vec<(String, Tier, bool)> = sim
        .agent_tasks("a1")
        .into_iter()
        .map(|(_, t)| (t.job_key, t.tier, t.production))
        .collect();
    assert_eq!(
        launched,
        vec![
            ("www/prod/default-prod".to_string(), Tier::Preferred, true),
            (
                "www/prod/default-batch".to_string(),
                Tier::Preemptible,
                false
            ),
        ]
    );

    // Another tier config's default is honoured for non-production work; production work
    // that names none is still `preferred`.
    let preferred = TierSettings {
        preemptible: false,
        revocable: false,
    };
    let stock = TierConfig::default();
    let config = TierConfig::new(
        Tier::Revocable,
        [
            preferred,
            stock.settings(Tier::Preemptible),
            stock.settings(Tier::Revocable),
        ],
    )
    .unwrap();
    let mut sim =
        Sim::new(2)
            .settings(|s| s.tier_config = config)
            .agent("a1", res(8000, 16384), &[]);
    sim.set_quota("www", quota(1000, 4096, 10_000)).unwrap();
    sim.create_job("www/prod/batch", JobConfig::new(1, 100, 64).no_tier())
        .unwrap();
    sim.create_job(
        "www/prod/prod",
        JobConfig::new(1, 100, 64).production().no_tier(),
    )
    .unwrap();
    sim.run_until_quiet();
    let mut launched: Vec<(String, Tier)> = sim
        .agent_tasks("a1")
        .into_iter()
        .map(|(_, t)| (t.job_key, t.tier))
        .collect();
    launched.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        launched,
        vec![
            ("www/prod/batch".to_string(), Tier::Revocable),
            ("www/prod/prod".to_string(), Tier::Preferred),
        ]
    );
}

#[test]
fn allowed_job_environments_flag_is_enforced() {
    let mut sim = Sim::new(1)
        .settings(|s| s.allowed_job_environments = "^(prod)$".into())
        .agent("a1", res(8000, 16384), &[]);
    sim.create_job("www/prod/ok", JobConfig::new(1, 100, 64))
        .unwrap();
    let reply = sim.create_job_reply("www/devel/no", JobConfig::new(1, 100, 64));
    let (code, message) = refused(&reply);
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(
        message.contains("environment \"devel\" is not allowed"),
        "{message}"
    );
}

/// Bug (shards/src/shard/offers.rs `schedule` and `retry_due_jobs`, peers.rs `Lend`): a job
/// blocked by a constraint no agent meets, on a cluster where another shard has an agent big
/// enough for it, is attempted every `BORROW_BACKOFF` (200 ms) whatever its schedule penalty.
/// Each time its owner borrows that agent's offer (`Borrow`: the lender lends offers that fit
/// the demand's resources), the `Lend` marks the offer as changed (`retry_blocked`), and
/// `retry_due_jobs` retries every blocked job whose resources fit a changed offer before its
/// penalty ends; the attempt fails on the constraint, the offer goes back, and 200 ms later
/// the same (unchanged) offer is borrowed again. README: "A job whose attempt fails waits
/// --initial-schedule-penalty, doubling per failure up to --max-schedule-penalty, or less when
/// an offer that changed could now hold it." Observed (seed 0 of `on_two_shards`, initial
/// penalty 1 s, max 8 s): 100 borrowed offers, so 100 attempts, in 20 s, instead of about 5.
#[test]
fn schedule_penalty_holds_for_a_job_blocked_by_constraints() {
    let mut sim = on_two_shards(|seed| {
        Sim::new(seed)
            .shards(2)
            .settings(|s| {
                s.initial_schedule_penalty_ms = 1_000;
                s.max_schedule_penalty_ms = 8_000;
            })
            .agent("a1", res(2000, 8192), &[("zone", "z1")])
            .agent("a2", res(2000, 8192), &[("zone", "z2")])
    });
    let key = "www/prod/picky";
    sim.create_job(
        key,
        JobConfig::new(1, 500, 128).constraint(Constraint::Value {
            attribute: "zone".into(),
            negated: false,
            values: vec!["z9".into()],
        }),
    )
    .unwrap();
    sim.advance(20_000);
    // Every offer lent to the job's owner brings the blocked job back for an attempt.
    let lent: Vec<u64> = sim
        .history()
        .peer_messages
        .iter()
        .filter(|m| m.what.starts_with("Lend ") && m.what != "Lend 0")
        .map(|m| m.at_ms)
        .collect();
    // Penalties of 1, 2, 4, 8, 8 s: at most 6 attempts in 20 s.
    assert!(
        lent.len() <= 6,
        "{} early attempts through borrowed offers, at {:?}...",
        lent.len(),
        &lent[..lent.len().min(10)]
    );
    assert_eq!(
        live_task(&status(&mut sim, key)).pending_reason,
        "constraint zone unmet on 2 agents"
    );
}

/// Bug (shards/src/shard/preemption.rs `find_slot`, `expire_slot_holds`): when a slot hold
/// (`--preemption-slot-hold-time`) expires while its victims are still being killed (a kill
/// takes the job's finalization wait), the next search for the same pending task skips the
/// victims already PREEMPTING (`preempting`) but does not count what they are about to free,
/// so it picks a second set. Observed (hold 2 s, kills of 7 s, one agent of 2 cores with four
/// preemptible 0.5-core tasks, a 1-core production task): victims 0 and 1 PREEMPTING at
/// 9 s (the first sweep after the 1 s delay), the hold lapses at 11 s, and the search of
/// that sweep sets victims 2 and 3 PREEMPTING: four tasks killed
/// where two made room ("the fewest and cheapest set that makes room is chosen").
#[test]
fn a_slot_hold_that_expires_before_its_victims_end_preempts_no_more() {
    let mut sim = Sim::new(1)
        .settings(|s| {
            s.preemption_delay_ms = 1_000;
            s.preemption_slot_search_interval_ms = 1_000;
            s.preemption_slot_hold_time_ms = 2_000;
        })
        .agent("a1", res(2000, 8192), &[]);
    sim.create_job(
        "batch/test/filler",
        JobConfig::new(4, 500, 128)
            .service()
            .tier(Tier::Preemptible)
            .kill_ms(7_000),
    )
    .unwrap();
    sim.run_until_quiet();
    sim.set_quota("www", quota(4000, 8192, 10_000)).unwrap();
    sim.create_job("www/prod/server", JobConfig::new(1, 1000, 128).production())
        .unwrap();
    sim.advance(20_000);
    assert_eq!(
        live_task(&status(&mut sim, "www/prod/server")).state,
        Some(TaskState::Running)
    );
    let when = preemptions(&mut sim);
    assert_eq!(when.len(), 2, "two victims make room: {when:?}");
}

/// The browser test's cluster (scripts/ui-test.sh) in the simulation: two agents on one shard;
/// services, and a job no agent can hold (64 GiB), on the other, whose tasks all run on
/// borrowed offers within 30 s. The browser test once in about five runs saw `www/staging/web`
/// still PENDING after 30 s on the real binaries; this scenario does not reproduce that (16
/// seeds), so the cause is still open (see the issue 11 note); it guards the lending path.
#[test]
fn the_browser_tests_jobs_all_run_beside_one_that_cannot() {
    let mut scenarios = 0;
    for seed in 0..16 {
        let mut sim = Sim::new(seed)
            .shards(2)
            .agent(
                "a1",
                Resources {
                    ports: 100,
                    ..res(3750, 3968)
                },
                &[("rack", "r1")],
            )
            .agent(
                "a2",
                Resources {
                    ports: 100,
                    ..res(3750, 3968)
                },
                &[("rack", "r1")],
            );
        let homes = sim.agent_homes();
        if homes[0].1 != homes[1].1 {
            continue;
        }
        scenarios += 1;
        let agent_shard = homes[0].1;
        let elsewhere = |name: &str| {
            (0..200)
                .map(|i| format!("www/staging/{name}{i}"))
                .find(|key| {
                    borealis_store::image::shard_of(&key.parse().unwrap(), 2) != agent_shard
                })
                .expect("a job key on the other shard")
        };
        let hello = elsewhere("hello");
        sim.create_job(&hello, JobConfig::new(2, 250, 32).service().ports(1))
            .unwrap();
        let huge = elsewhere("huge");
        sim.create_job(&huge, JobConfig::new(2, 500, 64 * 1024).service())
            .unwrap();
        let (web, api) = (elsewhere("web"), elsewhere("api"));
        sim.create_job(&web, JobConfig::new(2, 100, 16).service())
            .unwrap();
        sim.create_job(&api, JobConfig::new(2, 100, 16).service())
            .unwrap();
        sim.advance(30_000);
        for key in [&hello, &web, &api] {
            let running = in_state(&status(&mut sim, key), TaskState::Running);
            assert_eq!(
                running.len(),
                2,
                "seed {seed}: {key} after 30 s: {:?}",
                status(&mut sim, key).tasks
            );
        }
    }
    assert!(scenarios > 0, "no seed put both agents on one shard");
}
