//! The state image: what each record does, what it refuses, partition and merge.

mod common;

use borealis_core::{HostMode, TaskId, TaskState};
use borealis_store::image::{
    shard_of, shard_of_host, shard_of_role, HostImage, LogRecord, StateImage, INSTANCES_MAX,
};
use common::{
    config, host_mode_set, image_of, interpret, job_created, key, quota, quota_set, records,
    service_config, step, task,
};
use proptest::prelude::*;

/// Applies `setup`, then checks that `record` is refused with a reason containing `reason`,
/// and that the refusal left the image unchanged.
fn check_refused(name: &str, setup: &[LogRecord], record: LogRecord, reason: &str) {
    let mut image = image_of(setup);
    let before = image.clone();
    let err = image
        .apply(&record)
        .expect_err(&format!("{name}: {record} should be refused"));
    assert!(
        err.reason.contains(reason) && err.record == record.to_string(),
        "{name}: got {err}, expected a reason containing {reason:?}"
    );
    assert_eq!(image, before, "{name}: a refused record changed the image");
}

#[test]
fn inconsistent_records_are_refused_and_change_nothing() {
    let a = key(0);
    let b = key(1);
    let job_a = job_created(&a, 2);
    let pending =
        |id, instance| LogRecord::TaskUpserted(task(id, &a, instance, TaskState::Pending));
    let failed = |id, instance| LogRecord::TaskUpserted(task(id, &a, instance, TaskState::Failed));
    let cases: Vec<(&str, Vec<LogRecord>, LogRecord, &str)> = vec![
        (
            "remove unknown job",
            vec![],
            LogRecord::JobRemoved { key: a.clone() },
            "does not exist",
        ),
        (
            "task of unknown job",
            vec![],
            pending(1, 0),
            "does not exist",
        ),
        (
            "instance out of range",
            vec![job_a.clone()],
            pending(1, 2),
            "out of range",
        ),
        (
            "task moves to another instance",
            vec![job_a.clone(), pending(1, 0)],
            LogRecord::TaskUpserted(task(1, &a, 1, TaskState::Pending)),
            "already exists as instance 0",
        ),
        (
            "task moves to another job",
            vec![job_a.clone(), job_created(&b, 2), pending(1, 0)],
            LogRecord::TaskUpserted(task(1, &b, 0, TaskState::Pending)),
            "already exists",
        ),
        (
            "second live task on an instance",
            vec![job_a.clone(), pending(1, 0)],
            pending(2, 0),
            "already has a current task",
        ),
        (
            "ended task comes back",
            vec![
                job_a.clone(),
                failed(1, 0),
                LogRecord::TaskEnded { id: TaskId(1) },
            ],
            pending(1, 0),
            "has ended",
        ),
        (
            "end unknown task",
            vec![job_a.clone()],
            LogRecord::TaskEnded { id: TaskId(9) },
            "does not exist",
        ),
        (
            "end live task",
            vec![job_a.clone(), pending(1, 0)],
            LogRecord::TaskEnded { id: TaskId(1) },
            "not terminal",
        ),
        (
            "end twice",
            vec![
                job_a.clone(),
                failed(1, 0),
                LogRecord::TaskEnded { id: TaskId(1) },
            ],
            LogRecord::TaskEnded { id: TaskId(1) },
            "already ended",
        ),
        (
            "forget unknown task",
            vec![job_a.clone()],
            LogRecord::TaskForgotten { id: TaskId(3) },
            "does not exist",
        ),
        (
            "config of another job",
            vec![],
            LogRecord::JobCreated {
                key: a.clone(),
                instances: 1,
                config: config(&b),
            },
            "belongs to job",
        ),
        (
            "instances over the limit",
            vec![],
            LogRecord::JobCreated {
                key: a.clone(),
                instances: INSTANCES_MAX + 1,
                config: config(&a),
            },
            "over the limit",
        ),
        (
            "huge instances never allocate",
            vec![],
            LogRecord::JobCreated {
                key: a.clone(),
                instances: u32::MAX,
                config: config(&a),
            },
            "over the limit",
        ),
    ];
    for (name, setup, record, reason) in cases {
        check_refused(name, &setup, record, reason);
    }
}

#[test]
fn lifecycle_of_a_task_through_the_records() {
    let a = key(0);
    let mut image = image_of(&[
        job_created(&a, 2),
        LogRecord::TaskUpserted(task(1, &a, 0, TaskState::Pending)),
        LogRecord::TaskUpserted(task(1, &a, 0, TaskState::Running)),
    ]);
    assert_eq!(image.jobs[&a].current, vec![Some(TaskId(1)), None]);
    // A terminal upsert leaves the task current until TaskEnded moves it into history.
    image
        .apply(&LogRecord::TaskUpserted(task(1, &a, 0, TaskState::Failed)))
        .unwrap();
    assert_eq!(image.jobs[&a].current[0], Some(TaskId(1)));
    image
        .apply(&LogRecord::TaskEnded { id: TaskId(1) })
        .unwrap();
    assert_eq!(image.jobs[&a].current[0], None);
    assert_eq!(image.jobs[&a].history, vec![TaskId(1)]);
    // The replacement takes the slot; the ended task can still be updated while terminal.
    image
        .apply(&LogRecord::TaskUpserted(task(2, &a, 0, TaskState::Pending)))
        .unwrap();
    image
        .apply(&LogRecord::TaskUpserted(task(1, &a, 0, TaskState::Lost)))
        .unwrap();
    assert_eq!(image.jobs[&a].current[0], Some(TaskId(2)));
    image.check_invariants().unwrap();
    image
        .apply(&LogRecord::TaskForgotten { id: TaskId(1) })
        .unwrap();
    assert!(image.jobs[&a].history.is_empty() && !image.tasks.contains_key(&TaskId(1)));
    // Forgetting a current task clears its slot too.
    image
        .apply(&LogRecord::TaskForgotten { id: TaskId(2) })
        .unwrap();
    assert_eq!(image.jobs[&a].current, vec![None, None]);
    image.check_invariants().unwrap();
}

#[test]
fn replacing_or_removing_a_job_drops_all_its_tasks() {
    let a = key(0);
    let b = key(1);
    let setup = vec![
        job_created(&a, 2),
        job_created(&b, 1),
        LogRecord::TaskUpserted(task(1, &a, 0, TaskState::Running)),
        // Created terminal and not ended yet: in neither current nor history.
        LogRecord::TaskUpserted(task(2, &a, 1, TaskState::Failed)),
        LogRecord::TaskUpserted(task(3, &b, 0, TaskState::Running)),
    ];
    let mut replaced = image_of(&setup);
    replaced.apply(&job_created(&a, 3)).unwrap();
    assert_eq!(
        replaced.tasks.keys().copied().collect::<Vec<_>>(),
        vec![TaskId(3)]
    );
    assert_eq!(replaced.jobs[&a].current, vec![None; 3]);
    replaced.check_invariants().unwrap();

    let mut removed = image_of(&setup);
    removed
        .apply(&LogRecord::JobRemoved { key: a.clone() })
        .unwrap();
    assert!(!removed.jobs.contains_key(&a));
    assert_eq!(
        removed.tasks.keys().copied().collect::<Vec<_>>(),
        vec![TaskId(3)]
    );
    removed.check_invariants().unwrap();
}

#[test]
fn check_invariants_names_what_is_wrong() {
    let a = key(0);
    let good = image_of(&[
        job_created(&a, 1),
        LogRecord::TaskUpserted(task(1, &a, 0, TaskState::Running)),
    ]);
    good.check_invariants().unwrap();
    type Damage = Box<dyn Fn(&mut StateImage)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "orphan task",
            Box::new(|i| {
                i.jobs.clear();
            }),
            "does not exist",
        ),
        (
            "dangling current",
            Box::new(|i| {
                i.tasks.clear();
            }),
            "no task",
        ),
        (
            "live task not current",
            Box::new(|i| {
                i.jobs.values_mut().for_each(|j| j.current[0] = None);
            }),
            "not the current task",
        ),
        (
            "short current",
            Box::new(|i| {
                i.jobs.values_mut().for_each(|j| j.current.clear());
            }),
            "current slots",
        ),
        (
            "live task in history",
            Box::new(|i| {
                i.jobs.values_mut().for_each(|j| j.history.push(TaskId(1)));
            }),
            "is RUNNING",
        ),
        (
            "host entry in mode NONE",
            Box::new(|i| {
                i.hosts.insert("h1".into(), HostImage::default());
            }),
            "host h1 has an entry in mode NONE",
        ),
    ];
    for (name, damage, expected) in cases {
        let mut image = good.clone();
        damage(&mut image);
        let err = image.check_invariants().expect_err(name);
        assert!(err.contains(expected), "{name}: {err}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every generated sequence keeps the image's invariants at every step.
    #[test]
    fn valid_sequences_keep_the_invariants(steps in proptest::collection::vec(step(), 0..80)) {
        let records = interpret(&steps);
        let mut image = StateImage::default();
        for record in &records {
            image.apply(record).unwrap();
            if let Err(e) = image.check_invariants() {
                return Err(TestCaseError::fail(format!("after {record}: {e}")));
            }
        }
    }

    /// Whatever the record, `apply` returns; when it refuses, the image is unchanged.
    #[test]
    fn apply_never_panics_and_refusals_change_nothing(
        setup in records(40),
        job in 0usize..6,
        instance in prop_oneof![0u32..6, Just(u32::MAX)],
        id in 0u64..40,
        state in 0usize..TaskState::COUNT,
        kind in 0u8..8,
    ) {
        let mut image = image_of(&setup);
        let key = key(job);
        let record = match kind {
            0 => LogRecord::JobCreated { key: key.clone(), instances: instance, config: config(&key) },
            1 => LogRecord::JobRemoved { key },
            2 => LogRecord::TaskUpserted(task(id, &key, instance, TaskState::ALL[state])),
            3 => LogRecord::TaskEnded { id: TaskId(id) },
            4 => LogRecord::TaskForgotten { id: TaskId(id) },
            5 => quota_set(&format!("role{job}"), instance),
            6 => host_mode_set(
                &format!("host{job}"),
                HostMode::ALL[state % HostMode::ALL.len()],
                u64::from(instance),
            ),
            _ => LogRecord::Commit,
        };
        let before = image.clone();
        match image.apply(&record) {
            Ok(()) => prop_assert!(image.check_invariants().is_ok(), "{record} broke: {:?}", image.check_invariants()),
            Err(_) => prop_assert_eq!(image, before),
        }
    }

    /// partition then merge is the identity, and each part holds only what routes to it.
    #[test]
    fn partition_then_merge_is_the_original(records in records(80), shards in 1usize..8) {
        let image = image_of(&records);
        let parts = image.clone().partition(shards);
        prop_assert_eq!(parts.len(), shards);
        for (i, part) in parts.iter().enumerate() {
            prop_assert!(part.jobs.keys().all(|k| shard_of(k, shards) == i));
            prop_assert!(part.tasks.values().all(|t| shard_of(&t.job, shards) == i));
            prop_assert!(part.quotas.keys().all(|r| shard_of_role(r, shards) == i));
            prop_assert!(part.hosts.keys().all(|h| shard_of_host(h, shards) == i));
            prop_assert!(part.check_invariants().is_ok());
        }
        prop_assert_eq!(StateImage::merge(parts), image);
    }
}

#[test]
fn shard_of_is_the_schedulers_routing() {
    for i in 0..20 {
        let k = key(i);
        assert_eq!(shard_of(&k, 7) as u64, k.route_hash() % 7);
        let role = format!("role{i}");
        assert_eq!(
            shard_of_role(&role, 7) as u64,
            borealis_core::route_hash_str(&role) % 7
        );
        let host = format!("host{i}.example.com");
        assert_eq!(
            shard_of_host(&host, 7) as u64,
            borealis_core::route_hash_str(&host) % 7
        );
    }
}

#[test]
fn quota_set_sets_and_replaces_a_roles_quota() {
    let mut image = image_of(&[job_created(&key(0), 1)]);
    image.apply(&quota_set("www", 4000)).unwrap();
    image.apply(&quota_set("batch", 0)).unwrap();
    assert_eq!(image.quotas["www"], quota(4000));
    // A zero quota is a quota: the role has one set.
    assert_eq!(image.quotas["batch"], quota(0));
    image.apply(&quota_set("www", 1500)).unwrap();
    assert_eq!(image.quotas.len(), 2);
    assert_eq!(image.quotas["www"], quota(1500));
    // Quotas are independent of jobs: removing a job of the role keeps its quota.
    image.apply(&LogRecord::JobRemoved { key: key(0) }).unwrap();
    assert_eq!(image.quotas["www"], quota(1500));
    assert!(image.check_invariants().is_ok());
    assert_eq!(quota_set("www", 1).to_string(), "QuotaSet(www)");
}

#[test]
fn host_mode_set_sets_replaces_and_none_removes() {
    let a = key(0);
    let mut image = image_of(&[job_created(&a, 1)]);
    image
        .apply(&host_mode_set("h1", HostMode::Scheduled, 0))
        .unwrap();
    image
        .apply(&host_mode_set("h2", HostMode::Draining, 1_800_000_000_000))
        .unwrap();
    assert_eq!(
        image.hosts["h1"],
        HostImage {
            mode: HostMode::Scheduled,
            drain_deadline_unix_ms: 0
        }
    );
    assert_eq!(image.hosts["h2"].drain_deadline_unix_ms, 1_800_000_000_000);
    // Replaced whole: the deadline goes with the mode.
    image
        .apply(&host_mode_set("h1", HostMode::Draining, 42))
        .unwrap();
    image
        .apply(&host_mode_set("h2", HostMode::Drained, 0))
        .unwrap();
    assert_eq!(
        image.hosts["h1"],
        HostImage {
            mode: HostMode::Draining,
            drain_deadline_unix_ms: 42
        }
    );
    assert_eq!(
        image.hosts["h2"],
        HostImage {
            mode: HostMode::Drained,
            drain_deadline_unix_ms: 0
        }
    );
    // NONE removes the entry, whatever the deadline; removing an absent host is a no-op.
    image
        .apply(&host_mode_set("h1", HostMode::None, 9))
        .unwrap();
    assert!(!image.hosts.contains_key("h1"));
    let before = image.clone();
    image
        .apply(&host_mode_set("h9", HostMode::None, 0))
        .unwrap();
    assert_eq!(image, before);
    // Hosts are independent of jobs.
    image.apply(&LogRecord::JobRemoved { key: a }).unwrap();
    assert_eq!(image.hosts.len(), 1);
    assert!(image.check_invariants().is_ok());
    assert_eq!(
        host_mode_set("h2", HostMode::Draining, 0).to_string(),
        "HostModeSet(h2, DRAINING)"
    );
}

/// Guards the property tests against a vacuous generator: sequences are long, use every
/// record kind, and reach tasks in history, terminal-but-current and replaced jobs.
#[test]
fn the_generator_produces_rich_sequences() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut total, mut kinds, mut ended, mut terminal_current) = (0, [0usize; 7], 0, 0);
    let (mut service_jobs, mut host_removals) = (0, 0);
    for _ in 0..200 {
        let records = records(60).new_tree(&mut runner).unwrap().current();
        total += records.len();
        for r in &records {
            kinds[match r {
                LogRecord::JobCreated { .. } => 0,
                LogRecord::JobRemoved { .. } => 1,
                LogRecord::TaskUpserted(_) => 2,
                LogRecord::TaskEnded { .. } => 3,
                LogRecord::TaskForgotten { .. } => 4,
                LogRecord::QuotaSet { .. } => 5,
                LogRecord::HostModeSet { .. } => 6,
                LogRecord::Commit => unreachable!("the generator makes no commit markers"),
            }] += 1;
            match r {
                LogRecord::JobCreated { config, .. } if config.health_check.is_some() => {
                    service_jobs += 1
                }
                LogRecord::HostModeSet {
                    mode: HostMode::None,
                    ..
                } => host_removals += 1,
                _ => {}
            }
        }
        let image = image_of(&records);
        ended += image.jobs.values().map(|j| j.history.len()).sum::<usize>();
        terminal_current += image
            .jobs
            .values()
            .flat_map(|j| j.current.iter().flatten())
            .filter(|id| image.tasks[id].state.is_terminal())
            .count();
    }
    assert!(total / 200 >= 25, "average length {}", total / 200);
    assert!(kinds.iter().all(|&k| k >= 50), "record kinds {kinds:?}");
    assert!(
        service_jobs >= 50 && host_removals >= 10,
        "service jobs {service_jobs}, host removals {host_removals}"
    );
    assert!(
        ended >= 100 && terminal_current >= 20,
        "ended {ended}, terminal current {terminal_current}"
    );
}

/// The commit marker changes nothing, and appending it to the enum kept every older record's
/// encoding (postcard writes the variant index first).
#[test]
fn the_commit_marker_changes_nothing_and_older_encodings_stay() {
    let a = key(0);
    let mut image = image_of(&[
        job_created(&a, 2),
        LogRecord::TaskUpserted(task(1, &a, 0, TaskState::Running)),
    ]);
    let before = image.clone();
    image.apply(&LogRecord::Commit).unwrap();
    assert_eq!(image, before);
    assert_eq!(LogRecord::Commit.to_string(), "Commit");
    assert_eq!(postcard::to_stdvec(&LogRecord::Commit).unwrap(), vec![5]);
    let older = [
        (job_created(&a, 1), 0u8),
        (LogRecord::JobRemoved { key: a.clone() }, 1),
        (
            LogRecord::TaskUpserted(task(1, &a, 0, TaskState::Pending)),
            2,
        ),
        (LogRecord::TaskEnded { id: TaskId(7) }, 3),
        (LogRecord::TaskForgotten { id: TaskId(7) }, 4),
        (quota_set("www", 1000), 6),
        (host_mode_set("h1", HostMode::Draining, 7), 7),
        (
            LogRecord::JobCreated {
                key: a.clone(),
                instances: 1,
                config: service_config(&a),
            },
            0,
        ),
    ];
    for (record, index) in older {
        let bytes = postcard::to_stdvec(&record).unwrap();
        assert_eq!(bytes[0], index, "{record}");
        assert_eq!(postcard::from_bytes::<LogRecord>(&bytes).unwrap(), record);
    }
}

/// The borrowed task record the shards log encodes byte for byte like the owned one, so the
/// log reads it back as `LogRecord::TaskUpserted`.
#[test]
fn borrowed_task_record_encodes_like_the_owned_one() {
    use borealis_core::{JobKey, TaskId, TaskState};
    use borealis_store::image::{LogRecord, TaskImage, TaskImageRef, TaskUpsertRef};
    let job: JobKey = "www/prod/hello".parse().unwrap();
    let ports = vec![("http".to_string(), 31_000u16)];
    for (agent, message, preempted_by) in [
        (None, "", None),
        (
            Some("a1"),
            "exited with status 3",
            Some(TaskId(0x6b08_0000_0100_0002)),
        ),
    ] {
        let borrowed = TaskImageRef {
            id: TaskId(0x6b08_0000_0100_0007),
            job: &job,
            instance: 7,
            state: TaskState::Failed,
            agent_name: agent,
            hostname: agent.map(|_| "h1"),
            failure_count: 2,
            consecutive_flaps: 1,
            exit_code: 3,
            message,
            ports: &ports,
            sandbox: "/var/lib/borealis/sandboxes/www.prod.hello/7/6b08000001000007",
            killed_by_user: true,
            preempted_by,
        };
        let owned = LogRecord::TaskUpserted(TaskImage {
            id: borrowed.id,
            job: job.clone(),
            instance: borrowed.instance,
            state: borrowed.state,
            agent_name: agent.map(str::to_string),
            hostname: agent.map(|_| "h1".to_string()),
            failure_count: 2,
            consecutive_flaps: 1,
            exit_code: 3,
            message: message.to_string(),
            ports: ports.clone(),
            sandbox: borrowed.sandbox.to_string(),
            killed_by_user: true,
            preempted_by,
        });
        let a = postcard::to_stdvec(&TaskUpsertRef(&borrowed)).unwrap();
        let b = postcard::to_stdvec(&owned).unwrap();
        assert_eq!(a, b);
        assert_eq!(postcard::from_bytes::<LogRecord>(&a).unwrap(), owned);
        assert_eq!(TaskUpsertRef(&borrowed).to_string(), owned.to_string());
    }
}
