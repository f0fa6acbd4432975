//! The state image: what each record does, what it refuses, partition and merge.

mod common;

use borealis_core::update::UpdateStatus;
use borealis_core::{HostMode, TaskId, TaskState};
use borealis_store::image::{
    shard_of, shard_of_host, shard_of_role, HostImage, JobRevs, LogRecord, StateImage,
    INSTANCES_MAX,
};
use common::{
    config, config_at, host_mode_set, image_of, interpret, job_created, job_revised, job_update,
    key, quota, quota_set, records, service_config, step, task, update_saved, with_status,
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
        kind in 0u8..12,
    ) {
        let mut image = image_of(&setup);
        let key = key(job);
        let record = match kind {
            0 => LogRecord::JobCreated { key: key.clone(), instances: instance, config: config(&key) },
            // Revisions, updates and their ids from the same few numbers, so that they
            // sometimes meet what the setup made and sometimes do not.
            8 => job_revised(
                &key,
                instance,
                (id % 4) as u32,
                &[(id % 3) as u32, 7],
                &[(instance % 5, (id % 5) as u32)],
            ),
            9 => update_saved(
                &key,
                with_status(
                    job_update(id % 6, &key, 2, (id % 4) as u32),
                    UpdateStatus::ALL[state % UpdateStatus::ALL.len()],
                ),
            ),
            10 => LogRecord::UpdateRemoved { key, id: id % 6 },
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
            7 => LogRecord::Commit,
            _ => {
                // A task on a revision the job may or may not know.
                let mut t = task(id, &key, instance % 4, TaskState::ALL[state]);
                t.rev = (id % 3) as u32;
                LogRecord::TaskUpserted(t)
            }
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
    let (mut total, mut kinds, mut ended, mut terminal_current) = (0, [0usize; 10], 0, 0);
    let (mut service_jobs, mut host_removals) = (0, 0);
    let (mut kept_revs, mut off_head, mut in_place, mut finished, mut active) = (0, 0, 0, 0, 0);
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
                LogRecord::JobRevised { .. } => 7,
                LogRecord::UpdateSaved { .. } => 8,
                LogRecord::UpdateRemoved { .. } => 9,
                LogRecord::CronSet { .. } => unreachable!("cron records are tested on their own"),
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
        let mut image = StateImage::default();
        for r in &records {
            if let LogRecord::UpdateSaved { key, update } = r {
                let j = &image.jobs[key];
                in_place += usize::from(j.updates.iter().any(|u| u.id == update.id));
            }
            image.apply(r).unwrap();
        }
        ended += image.jobs.values().map(|j| j.history.len()).sum::<usize>();
        for j in image.jobs.values() {
            kept_revs += j.revs.others.len();
            off_head += j.revs.instance_revs.len();
            finished += j.updates.iter().filter(|u| u.status.is_terminal()).count();
            active += j.updates.iter().filter(|u| !u.status.is_terminal()).count();
        }
        off_head += image
            .tasks
            .values()
            .filter(|t| !t.state.is_terminal() && t.rev != image.jobs[&t.job].revs.head)
            .count();
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
    assert!(
        kept_revs >= 50 && off_head >= 50 && in_place >= 50 && finished >= 50 && active >= 20,
        "kept revisions {kept_revs}, off the head {off_head}, replaced in place {in_place}, \
         finished {finished}, active {active}"
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
    for (agent, message, preempted_by, rev, usage) in [
        (None, "", None, 0, None),
        (
            Some("a1"),
            "exited with status 3",
            Some(TaskId(0x6b08_0000_0100_0002)),
            70_000,
            Some(borealis_core::TaskUsage {
                cpu_time_ms: 1_234,
                peak_memory_bytes: 56 << 20,
                disk_bytes: 3 << 30,
            }),
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
            rev,
            usage,
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
            rev,
            usage,
        });
        let a = postcard::to_stdvec(&TaskUpsertRef(&borrowed)).unwrap();
        let b = postcard::to_stdvec(&owned).unwrap();
        assert_eq!(a, b);
        assert_eq!(postcard::from_bytes::<LogRecord>(&a).unwrap(), owned);
        assert_eq!(TaskUpsertRef(&borrowed).to_string(), owned.to_string());
    }
}

/// Each rule of the revision and update records, broken once: refused, image unchanged.
#[test]
fn revisions_and_updates_that_do_not_fit_are_refused_and_change_nothing() {
    let a = key(0);
    let b = key(1);
    let job_a = job_created(&a, 2);
    let on = |id, instance, state, rev| {
        let mut t = task(id, &a, instance, state);
        t.rev = rev;
        LogRecord::TaskUpserted(t)
    };
    let rolling = |id| update_saved(&a, job_update(id, &a, 2, 1));
    let ended = |id, status| update_saved(&a, with_status(job_update(id, &a, 2, 1), status));
    let cases: Vec<(&str, Vec<LogRecord>, LogRecord, &str)> = vec![
        (
            "revise unknown job",
            vec![],
            job_revised(&a, 2, 1, &[], &[]),
            "does not exist",
        ),
        (
            "revision shrinks the job",
            vec![job_a.clone()],
            job_revised(&a, 1, 1, &[], &[]),
            "cannot shrink",
        ),
        (
            "revision over the instance limit",
            vec![job_a.clone()],
            job_revised(&a, INSTANCES_MAX + 1, 1, &[], &[]),
            "over the limit",
        ),
        (
            "revision with another job's config",
            vec![job_a.clone()],
            LogRecord::JobRevised {
                key: a.clone(),
                instances: 2,
                config: config(&b),
                revs: JobRevs::default(),
            },
            "belongs to job",
        ),
        (
            "instance wants an unknown revision",
            vec![job_a.clone()],
            job_revised(&a, 2, 2, &[1], &[(0, 1), (1, 3)]),
            "instance 1 wants revision 3",
        ),
        (
            "desired revision of an instance out of range",
            vec![job_a.clone()],
            job_revised(&a, 3, 1, &[0], &[(3, 0)]),
            "instance 3 has a desired revision but the job has 3 instances",
        ),
        (
            "head among the others",
            vec![job_a.clone()],
            job_revised(&a, 2, 1, &[0, 1], &[]),
            "revision 1 is the head and also among the other revisions",
        ),
        (
            "live task left on a dropped revision",
            vec![job_a.clone(), on(1, 1, TaskState::Running, 0)],
            job_revised(&a, 2, 1, &[], &[]),
            "live task 0000000000000001 runs revision 0",
        ),
        (
            "live task on an unknown revision",
            vec![job_a.clone()],
            on(1, 0, TaskState::Pending, 1),
            "revision 1 is neither the head (0)",
        ),
        (
            "live task on an unknown revision after one",
            vec![job_a.clone(), job_revised(&a, 2, 2, &[1], &[])],
            on(1, 0, TaskState::Running, 0),
            "revision 0 is neither the head (2)",
        ),
        (
            "save an update of an unknown job",
            vec![],
            rolling(1),
            "does not exist",
        ),
        (
            "update of another job",
            vec![job_a.clone(), job_created(&b, 2)],
            update_saved(&b, job_update(1, &a, 2, 1)),
            "belongs to job",
        ),
        (
            "second active update",
            vec![job_a.clone(), rolling(1)],
            rolling(2),
            "update 1 of the job is still active",
        ),
        (
            "finished update after an active one",
            vec![job_a.clone(), rolling(1)],
            ended(2, UpdateStatus::Aborted),
            "still active",
        ),
        (
            "new update id not above the last",
            vec![
                job_a.clone(),
                ended(3, UpdateStatus::RolledForward),
                ended(5, UpdateStatus::Failed),
            ],
            rolling(4),
            "update id 4 is not above the job's last update 5",
        ),
        (
            "an older update made active again",
            vec![
                job_a.clone(),
                ended(1, UpdateStatus::RolledBack),
                ended(2, UpdateStatus::Failed),
            ],
            rolling(1),
            "update 1 is not the job's last (2 is)",
        ),
        (
            "remove an update of an unknown job",
            vec![],
            LogRecord::UpdateRemoved {
                key: a.clone(),
                id: 1,
            },
            "does not exist",
        ),
        (
            "remove an unknown update",
            vec![job_a.clone(), ended(1, UpdateStatus::RolledForward)],
            LogRecord::UpdateRemoved {
                key: a.clone(),
                id: 2,
            },
            "has no update 2",
        ),
        (
            "remove the active update",
            vec![job_a.clone(), rolling(1)],
            LogRecord::UpdateRemoved {
                key: a.clone(),
                id: 1,
            },
            "an active update cannot be removed",
        ),
    ];
    for (name, setup, record, reason) in cases {
        check_refused(name, &setup, record, reason);
    }
}

/// What the revision and update records do: a revision sets the head config, the revisions
/// and a grown instance count; tasks run known revisions (terminal ones any); updates are
/// appended, replaced in place and pruned; removing or replacing the job drops all of it.
#[test]
fn revisions_and_updates_through_the_records() {
    let a = key(0);
    let b = key(1);
    let mut image = image_of(&[
        job_created(&a, 2),
        job_created(&b, 1),
        LogRecord::TaskUpserted(task(1, &a, 0, TaskState::Running)),
        LogRecord::TaskUpserted(task(2, &a, 1, TaskState::Failed)),
    ]);
    assert_eq!(image.jobs[&a].revs, JobRevs::default());
    assert!(image.jobs[&a].updates.is_empty());

    // Revision 1 for 3 instances; instance 0 stays on 0, so 0 stays known.
    image
        .apply(&job_revised(&a, 3, 1, &[0], &[(0, 0)]))
        .unwrap();
    let j = &image.jobs[&a];
    assert_eq!((j.instances, j.current.len()), (3, 3));
    assert_eq!(j.current, vec![Some(TaskId(1)), None, None]);
    assert_eq!(j.config, config_at(&a, 1));
    assert_eq!(j.revs.others[&0], config_at(&a, 0));
    assert_eq!((j.revs.desired(0), j.revs.desired(2)), (0, 1));
    assert!(j.revs.knows(0) && j.revs.knows(1) && !j.revs.knows(2));
    image.check_invariants().unwrap();
    // The same count again is no shrink.
    image
        .apply(&job_revised(&a, 3, 1, &[0], &[(0, 0)]))
        .unwrap();

    // New tasks on either known revision; a terminal task may keep a forgotten one.
    let mut t3 = task(3, &a, 2, TaskState::Pending);
    t3.rev = 1;
    image.apply(&LogRecord::TaskUpserted(t3.clone())).unwrap();
    let mut t2 = task(2, &a, 1, TaskState::Lost);
    t2.rev = 9;
    image.apply(&LogRecord::TaskUpserted(t2)).unwrap();
    assert_eq!(image.tasks[&TaskId(3)].rev, 1);

    // Updates: a new one appends; saving it again replaces it in place.
    let first = job_update(1, &a, 3, 1);
    image.apply(&update_saved(&a, first.clone())).unwrap();
    let rolled = with_status(first, UpdateStatus::RolledForward);
    image.apply(&update_saved(&a, rolled.clone())).unwrap();
    assert_eq!(image.jobs[&a].updates, vec![rolled.clone()]);
    // Ids may skip; only the last may be active.
    let second = with_status(job_update(4, &a, 3, 2), UpdateStatus::RollBackPaused);
    image.apply(&update_saved(&a, second.clone())).unwrap();
    // A finished older one is rewritten where it is.
    let mut noted = rolled.clone();
    noted.updated_unix_ms += 5;
    image.apply(&update_saved(&a, noted.clone())).unwrap();
    assert_eq!(image.jobs[&a].updates, vec![noted, second.clone()]);
    image.check_invariants().unwrap();
    // Pruning the finished one leaves the active one.
    image
        .apply(&LogRecord::UpdateRemoved {
            key: a.clone(),
            id: 1,
        })
        .unwrap();
    assert_eq!(image.jobs[&a].updates, vec![second.clone()]);
    // Once it ended, a new one may follow, and it may be pruned.
    let second = with_status(second, UpdateStatus::Failed);
    image.apply(&update_saved(&a, second.clone())).unwrap();
    image
        .apply(&update_saved(&a, job_update(5, &a, 3, 2)))
        .unwrap();
    image
        .apply(&LogRecord::UpdateRemoved {
            key: a.clone(),
            id: 4,
        })
        .unwrap();
    assert_eq!(
        image.jobs[&a]
            .updates
            .iter()
            .map(|u| u.id)
            .collect::<Vec<_>>(),
        vec![5]
    );
    image.check_invariants().unwrap();

    // The other job is untouched throughout.
    assert_eq!(image.jobs[&b].revs, JobRevs::default());
    assert!(image.jobs[&b].updates.is_empty());

    // Replacing the job drops its revisions and updates with its tasks.
    let mut replaced = image.clone();
    replaced.apply(&job_created(&a, 1)).unwrap();
    assert_eq!(replaced.jobs[&a].revs, JobRevs::default());
    assert!(replaced.jobs[&a].updates.is_empty());
    replaced.check_invariants().unwrap();
    // Removing it too; a job created again under the key starts afresh.
    image
        .apply(&LogRecord::JobRemoved { key: a.clone() })
        .unwrap();
    assert!(!image.jobs.contains_key(&a));
    assert!(image.tasks.values().all(|t| t.job != a));
    image.apply(&job_created(&a, 1)).unwrap();
    assert_eq!(image.jobs[&a].revs, JobRevs::default());
    assert!(image.jobs[&a].updates.is_empty());
    image
        .apply(&update_saved(&a, job_update(1, &a, 1, 1)))
        .unwrap();
    image.check_invariants().unwrap();
}

/// The image keeps only an update's durable fields: what `UpdateSaved` stores equals what a
/// log or snapshot reads back.
#[test]
fn an_update_is_stored_without_its_transient_fields() {
    let a = key(0);
    let mut image = image_of(&[job_created(&a, 2)]);
    let mut update = job_update(1, &a, 2, 0);
    update.watching = vec![Some(5), None];
    update.last_pulse_us = Some(17);
    let record = update_saved(&a, update.clone());
    image.apply(&record).unwrap();
    let stored = &image.jobs[&a].updates[0];
    assert_eq!((stored.watching.len(), stored.last_pulse_us), (0, None));
    let decoded: LogRecord = postcard::from_bytes(&postcard::to_stdvec(&record).unwrap()).unwrap();
    let mut replayed = image_of(&[job_created(&a, 2)]);
    replayed.apply(&decoded).unwrap();
    assert_eq!(replayed, image);
    let snapshot = borealis_store::files::encode_snapshot(&image).unwrap();
    assert_eq!(
        borealis_store::files::decode_snapshot(&snapshot).unwrap(),
        image
    );
}

#[test]
fn the_new_records_round_trip_and_describe_themselves() {
    let a = key(0);
    let mut update = with_status(job_update(7, &a, 3, 2), UpdateStatus::RollBackAwaitingPulse);
    update.settings.pulse_interval_secs = Some(30);
    update.instances[1].failures = 2;
    let records = [
        (
            job_revised(&a, 4, 2, &[0, 1], &[(0, 0), (3, 1)]),
            "JobRevised(role0/prod/job0, revision 2, 4 instances)",
        ),
        (
            LogRecord::JobRevised {
                key: a.clone(),
                instances: 2,
                config: service_config(&a),
                revs: JobRevs::default(),
            },
            "JobRevised(role0/prod/job0, revision 0, 2 instances)",
        ),
        (
            update_saved(&a, update),
            "UpdateSaved(update 7 of role0/prod/job0 in ROLL_BACK_AWAITING_PULSE)",
        ),
        (
            LogRecord::UpdateRemoved {
                key: a.clone(),
                id: 3,
            },
            "UpdateRemoved(update 3 of role0/prod/job0)",
        ),
    ];
    for (index, (record, text)) in records.into_iter().enumerate() {
        assert_eq!(record.to_string(), text);
        let bytes = postcard::to_stdvec(&record).unwrap();
        // Appended after HostModeSet (7): JobRevised, JobRevised, UpdateSaved, UpdateRemoved.
        assert_eq!(bytes[0], [8, 8, 9, 10][index], "{record}");
        assert_eq!(postcard::from_bytes::<LogRecord>(&bytes).unwrap(), record);
        // Whole: no shorter read of the bytes is a record.
        assert!(postcard::from_bytes::<LogRecord>(&bytes[..bytes.len() - 1]).is_err());
    }
    // A task's revision, then its usage (format 5), end its record.
    let mut t = task(1, &a, 0, TaskState::Running);
    t.rev = 300;
    let record = LogRecord::TaskUpserted(t.clone());
    let bytes = postcard::to_stdvec(&record).unwrap();
    // 300 as a varint, then the `None` tag of the usage.
    assert_eq!(bytes[bytes.len() - 3..], [0xac, 0x02, 0]);
    assert_eq!(postcard::from_bytes::<LogRecord>(&bytes).unwrap(), record);
    t.state = TaskState::Finished;
    t.usage = Some(borealis_core::TaskUsage {
        cpu_time_ms: 1,
        peak_memory_bytes: 300,
        disk_bytes: 0,
    });
    let record = LogRecord::TaskUpserted(t);
    let bytes = postcard::to_stdvec(&record).unwrap();
    // The `Some` tag, then each field as a varint.
    assert_eq!(bytes[bytes.len() - 7..], [0xac, 0x02, 1, 1, 0xac, 0x02, 0]);
    assert_eq!(postcard::from_bytes::<LogRecord>(&bytes).unwrap(), record);
    assert!(postcard::from_bytes::<LogRecord>(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn check_invariants_names_what_is_wrong_with_revisions_and_updates() {
    let a = key(0);
    let mut t = task(1, &a, 0, TaskState::Running);
    t.rev = 1;
    let good = image_of(&[
        job_created(&a, 2),
        job_revised(&a, 2, 2, &[1], &[(1, 1)]),
        LogRecord::TaskUpserted(t),
        update_saved(
            &a,
            with_status(job_update(1, &a, 2, 1), UpdateStatus::RolledForward),
        ),
        update_saved(&a, job_update(2, &a, 2, 2)),
    ]);
    good.check_invariants().unwrap();
    type Damage = Box<dyn Fn(&mut StateImage)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "head among the others",
            Box::new(|i| {
                let j = i.jobs.values_mut().next().unwrap();
                j.revs.others.insert(2, j.config.clone());
            }),
            "revision 2 is the head and also among the other revisions",
        ),
        (
            "desired revision out of range",
            Box::new(|i| {
                i.jobs.values_mut().for_each(|j| {
                    j.revs.instance_revs.insert(2, 1);
                })
            }),
            "instance 2 has a desired revision",
        ),
        (
            "desired revision unknown",
            Box::new(|i| {
                i.jobs.values_mut().for_each(|j| {
                    j.revs.instance_revs.insert(0, 5);
                })
            }),
            "instance 0 wants revision 5",
        ),
        (
            "live task on an unknown revision",
            Box::new(|i| {
                i.jobs.values_mut().for_each(|j| {
                    j.revs.others.clear();
                    j.revs.instance_revs.clear();
                })
            }),
            "task 0000000000000001 is RUNNING on revision 1, which its job does not know",
        ),
        (
            "update of another job",
            Box::new(|i| {
                i.jobs
                    .values_mut()
                    .for_each(|j| j.updates[0].job = "x/y/z".into())
            }),
            "update 1 belongs to job \"x/y/z\"",
        ),
        (
            "update ids not increasing",
            Box::new(|i| i.jobs.values_mut().for_each(|j| j.updates[1].id = 1)),
            "update 1 comes after update 1",
        ),
        (
            "active update not the last",
            Box::new(|i| i.jobs.values_mut().for_each(|j| j.updates.swap(0, 1))),
            "update 2 is ROLLING_FORWARD but not the last",
        ),
    ];
    for (name, damage, expected) in cases {
        let mut image = good.clone();
        damage(&mut image);
        let err = image.check_invariants().expect_err(name);
        assert!(err.contains(expected), "{name}: {err}");
    }
}

#[test]
fn cron_set_schedules_replaces_and_deschedules() {
    use borealis_core::cron::{CollisionPolicy, CronSchedule, CronSpec};
    use borealis_store::image::CronImage;
    let a = key(0);
    let template = |schedule: &str, instances| CronImage {
        instances,
        config: config(&a),
        spec: CronSpec {
            schedule: CronSchedule::parse(schedule).unwrap(),
            collision_policy: CollisionPolicy::CancelNew,
        },
    };
    let set = |c| LogRecord::CronSet {
        key: a.clone(),
        cron: c,
    };
    check_refused(
        "unknown job",
        &[],
        set(Some(template("* * * * *", 1))),
        "does not exist",
    );
    check_refused(
        "no instances",
        &[job_created(&a, 1)],
        set(Some(template("* * * * *", 0))),
        "instances",
    );
    let other = key(1);
    let mut wrong = template("* * * * *", 1);
    wrong.config = config(&other);
    check_refused(
        "another job's config",
        &[job_created(&a, 1)],
        set(Some(wrong)),
        "not",
    );

    let mut image = image_of(&[job_created(&a, 2)]);
    image.apply(&set(Some(template("*/5 * * * *", 2)))).unwrap();
    image.apply(&set(Some(template("@hourly", 3)))).unwrap();
    let cron = image.jobs[&a].cron.clone().expect("scheduled");
    assert_eq!(
        (cron.spec.schedule.as_str(), cron.instances),
        ("@hourly", 3)
    );
    assert!(image.check_invariants().is_ok());
    // Durable as the log writes it.
    let record = set(Some(template("0 9 * * MON-FRI", 1)));
    let bytes = postcard::to_allocvec(&record).unwrap();
    assert_eq!(postcard::from_bytes::<LogRecord>(&bytes).unwrap(), record);
    assert_eq!(
        record.to_string(),
        format!("CronSet({a}, \"0 9 * * MON-FRI\")")
    );
    image.apply(&set(None)).unwrap();
    assert_eq!(image.jobs[&a].cron, None);
    // Replacing the job drops its schedule with it.
    image.apply(&set(Some(template("@daily", 1)))).unwrap();
    image.apply(&job_created(&a, 1)).unwrap();
    assert_eq!(image.jobs[&a].cron, None);
}
