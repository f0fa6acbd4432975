//! Rolling updates and cron jobs on the wire: every new message goes through encode →
//! `decode_message` → `to_owned` and comes back equal; job summaries carry a job's cron
//! schedule and active update; values this build does not know are refused, never a panic.

use borealis_core::cron::CollisionPolicy;
use borealis_core::update::{
    Command, InstancePhase, InstanceProgress, JobUpdate, UpdateEvent, UpdateSettings, UpdateStatus,
};
use borealis_core::{Constraint, JobKey, Resources, TaskConfig, TaskState, Tier};
use borealis_net::codec::{
    collision_policy_from_wire, instance_phase_from_wire, tier_unset, to_owned,
    update_op_from_wire, update_settings_from_wire, update_status_from_wire, update_status_to_wire,
};
use borealis_net::views::{
    CronSummaryView, JobStatusView, JobSummaryView, OwnedMessage, UpdateInfoView,
};
use borealis_net::{decode_message, wire, Encoder, WireError};
use proptest::prelude::*;

fn key() -> JobKey {
    "www/prod/web".parse().unwrap()
}

fn config(command: &str) -> TaskConfig {
    TaskConfig {
        job: key(),
        command: command.into(),
        resources: Resources {
            cpu_millis: 500,
            ram_mib: 128,
            disk_mib: 64,
            ports: 1,
        },
        port_names: vec!["http".into()],
        constraints: vec![Constraint::Limit {
            attribute: "host".into(),
            limit: 1,
        }],
        tier: Tier::Preferred,
        priority: 0,
        production: true,
        is_service: true,
        max_task_failures: 1,
        finalization_wait_secs: 30,
        health_check: None,
        http_lifecycle: None,
        sla_policy: None,
        partition_policy: None,
    }
}

fn roundtrip(bytes: &[u8]) -> (u64, OwnedMessage) {
    to_owned(decode_message(bytes).unwrap()).unwrap()
}

fn route_key(bytes: &[u8]) -> Option<String> {
    decode_message(bytes)
        .unwrap()
        .route_key()
        .map(str::to_string)
}

fn settings() -> UpdateSettings {
    UpdateSettings {
        batch_size: 3,
        max_per_instance_failures: 2,
        max_total_failures: 1,
        watch_secs: 10,
        rollback_on_failure: false,
        wait_for_batch_completion: true,
        pulse_interval_secs: Some(60),
        sla_aware: true,
    }
}

/// An update of 4 instances from revision 1 to 2, adding instance 3 and rolling back.
fn detailed_update() -> UpdateInfoView {
    let progress = |instance, from, to, phase, failures, in_rollback| InstanceProgress {
        instance,
        from,
        to,
        phase,
        failures,
        in_rollback,
    };
    UpdateInfoView {
        job_key: "www/prod/web".into(),
        update: JobUpdate {
            id: 7,
            job: "www/prod/web".into(),
            settings: settings(),
            status: UpdateStatus::RollingBack,
            instances_before: 3,
            instances_after: 4,
            to_rev: 2,
            instances: vec![
                progress(0, Some(1), Some(2), InstancePhase::Succeeded, 0, true),
                progress(1, Some(1), Some(2), InstancePhase::InFlight, 1, true),
                progress(2, Some(1), Some(2), InstancePhase::Failed, 3, false),
                progress(3, None, Some(2), InstancePhase::Waiting, 0, false),
            ],
            failed_instances: 1,
            created_unix_ms: 1_700_000_000_000,
            updated_unix_ms: 1_700_000_060_000,
            events: vec![
                UpdateEvent {
                    unix_ms: 1_700_000_000_000,
                    status: UpdateStatus::RollingForward,
                    message: "deploy 42".into(),
                },
                UpdateEvent {
                    unix_ms: 1_700_000_060_000,
                    status: UpdateStatus::RollingBack,
                    message: String::new(),
                },
            ],
            last_pulse_us: None,
            watching: Vec::new(),
        },
        in_flight: 1,
        configs: vec![(1, config("./web --v1")), (2, config("./web --v2"))],
    }
}

/// The same update as a summary: no per-instance progress, events or configs.
fn summary_update() -> UpdateInfoView {
    let mut u = detailed_update();
    u.update.instances.clear();
    u.update.events.clear();
    u.configs.clear();
    u
}

#[test]
fn start_update_roundtrips_and_routes_on_the_job() {
    let mut enc = Encoder::new();
    let c = config("./web --v2");
    let bytes = enc
        .start_update(3, &key(), 5, &c, &settings(), &[0, 2, 4], "deploy 42")
        .to_vec();
    assert_eq!(route_key(&bytes).as_deref(), Some("www/prod/web"));
    assert_eq!(
        roundtrip(&bytes),
        (
            3,
            OwnedMessage::StartUpdate {
                job_key: key(),
                instances: 5,
                config: c.clone(),
                tier_unset: false,
                settings: settings(),
                scope: vec![0, 2, 4],
                message: "deploy 42".into(),
            }
        )
    );
    // Aurora's defaults, every instance, no message; a file that named no tier says so.
    let bytes = enc
        .start_update_spec(4, &key(), 2, &c, false, &UpdateSettings::default(), &[], "")
        .to_vec();
    let message = decode_message(&bytes).unwrap();
    assert!(tier_unset(
        message.payload_as_start_update().unwrap().config()
    ));
    assert_eq!(
        roundtrip(&bytes).1,
        OwnedMessage::StartUpdate {
            job_key: key(),
            instances: 2,
            config: c,
            tier_unset: true,
            settings: UpdateSettings::default(),
            scope: vec![],
            message: String::new(),
        }
    );
}

#[test]
fn update_commands_roundtrip() {
    let mut enc = Encoder::new();
    for (i, command) in [
        Command::Pause,
        Command::Resume,
        Command::Abort,
        Command::Rollback,
        Command::Pulse,
    ]
    .into_iter()
    .enumerate()
    {
        let id = 10 + i as u64;
        let bytes = enc.update_command(id, &key(), command, "because").to_vec();
        assert_eq!(route_key(&bytes).as_deref(), Some("www/prod/web"));
        assert_eq!(
            roundtrip(&bytes),
            (
                id,
                OwnedMessage::UpdateCommand {
                    job_key: key(),
                    command,
                    message: "because".into(),
                }
            )
        );
    }
    assert_eq!(
        roundtrip(enc.update_command(1, &key(), Command::Pause, "")).1,
        OwnedMessage::UpdateCommand {
            job_key: key(),
            command: Command::Pause,
            message: String::new(),
        }
    );
}

#[test]
fn query_updates_roundtrips_for_one_job_and_for_all() {
    let mut enc = Encoder::new();
    let bytes = enc.query_updates(5, Some(&key()), 7, true).to_vec();
    assert_eq!(route_key(&bytes).as_deref(), Some("www/prod/web"));
    assert_eq!(
        roundtrip(&bytes),
        (
            5,
            OwnedMessage::QueryUpdates {
                job_key: Some(key()),
                update_id: 7,
                details: true,
            }
        )
    );
    // Every job's: no route key, gathered from every shard.
    let bytes = enc.query_updates(6, None, 0, false).to_vec();
    assert_eq!(route_key(&bytes), None);
    assert_eq!(
        roundtrip(&bytes),
        (
            6,
            OwnedMessage::QueryUpdates {
                job_key: None,
                update_id: 0,
                details: false,
            }
        )
    );
    // An empty job key is every job's too.
    let bytes = {
        let fbb = enc.builder();
        fbb.reset();
        let empty = fbb.create_string("");
        let payload = wire::QueryUpdates::create(
            fbb,
            &wire::QueryUpdatesArgs {
                job_key: Some(empty),
                update_id: 0,
                details: true,
            },
        );
        enc.finish_message(
            7,
            None,
            wire::Payload::QueryUpdates,
            payload.as_union_value(),
        )
        .to_vec()
    };
    assert_eq!(
        roundtrip(&bytes).1,
        OwnedMessage::QueryUpdates {
            job_key: None,
            update_id: 0,
            details: true,
        }
    );
}

#[test]
fn update_info_and_list_roundtrip_with_and_without_details() {
    let mut enc = Encoder::new();
    let bytes = enc.update_info(8, &detailed_update()).to_vec();
    assert_eq!(route_key(&bytes), None);
    assert_eq!(
        roundtrip(&bytes),
        (8, OwnedMessage::UpdateInfo(detailed_update()))
    );
    let list = vec![detailed_update(), summary_update()];
    assert_eq!(
        roundtrip(enc.update_list(9, &list)),
        (9, OwnedMessage::UpdateList(list))
    );
    assert_eq!(
        roundtrip(enc.update_list(10, &[])).1,
        OwnedMessage::UpdateList(vec![])
    );
}

#[test]
fn an_update_info_without_settings_reads_auroras_defaults() {
    let mut enc = Encoder::new();
    let bytes = {
        let fbb = enc.builder();
        fbb.reset();
        let job = fbb.create_string("www/prod/web");
        let payload = wire::UpdateInfo::create(
            fbb,
            &wire::UpdateInfoArgs {
                job_key: Some(job),
                update_id: 1,
                ..Default::default()
            },
        );
        enc.finish_message(1, None, wire::Payload::UpdateInfo, payload.as_union_value())
            .to_vec()
    };
    let OwnedMessage::UpdateInfo(info) = roundtrip(&bytes).1 else {
        panic!("not an UpdateInfo");
    };
    assert_eq!(info.update.settings, UpdateSettings::default());
    assert_eq!(info.update.status, UpdateStatus::RollingForward);
    assert!(info.update.instances.is_empty() && info.configs.is_empty());
    // An empty settings table reads the same: the schema's defaults are Aurora's.
    let bytes = {
        let fbb = enc.builder();
        fbb.reset();
        let s = wire::UpdateSettings::create(fbb, &wire::UpdateSettingsArgs::default());
        fbb.finish(s, None);
        fbb.finished_data().to_vec()
    };
    let s = flatbuffers::root::<wire::UpdateSettings>(&bytes).unwrap();
    assert_eq!(update_settings_from_wire(s), UpdateSettings::default());
}

#[test]
fn cron_requests_roundtrip() {
    let mut enc = Encoder::new();
    let c = config("./report");
    let bytes = enc
        .schedule_cron(11, &key(), 2, &c, "*/5 * * * *", CollisionPolicy::CancelNew)
        .to_vec();
    assert_eq!(route_key(&bytes).as_deref(), Some("www/prod/web"));
    assert_eq!(
        roundtrip(&bytes),
        (
            11,
            OwnedMessage::ScheduleCron {
                job_key: key(),
                instances: 2,
                config: c.clone(),
                tier_unset: false,
                schedule: "*/5 * * * *".into(),
                collision_policy: CollisionPolicy::CancelNew,
            }
        )
    );
    let bytes = enc
        .schedule_cron_spec(
            12,
            &key(),
            1,
            &c,
            false,
            "@daily",
            CollisionPolicy::KillExisting,
        )
        .to_vec();
    assert_eq!(
        roundtrip(&bytes).1,
        OwnedMessage::ScheduleCron {
            job_key: key(),
            instances: 1,
            config: c,
            tier_unset: true,
            schedule: "@daily".into(),
            collision_policy: CollisionPolicy::KillExisting,
        }
    );
    let bytes = enc.deschedule_cron(13, &key()).to_vec();
    assert_eq!(route_key(&bytes).as_deref(), Some("www/prod/web"));
    assert_eq!(
        roundtrip(&bytes),
        (13, OwnedMessage::DescheduleCron { job_key: key() })
    );
    let bytes = enc.start_cron(14, &key()).to_vec();
    assert_eq!(route_key(&bytes).as_deref(), Some("www/prod/web"));
    assert_eq!(
        roundtrip(&bytes),
        (14, OwnedMessage::StartCron { job_key: key() })
    );
}

fn summary(job_key: &str) -> JobSummaryView {
    let mut state_counts = [0; TaskState::COUNT];
    state_counts[TaskState::Running as usize] = 2;
    JobSummaryView {
        job_key: job_key.into(),
        instances: 2,
        is_service: false,
        state_counts,
        cron: None,
        update: None,
    }
}

#[test]
fn job_summaries_carry_cron_and_the_active_update() {
    let mut enc = Encoder::new();
    let plain = summary("www/prod/plain");
    let cron = JobSummaryView {
        cron: Some(CronSummaryView {
            schedule: "0 3 * * *".into(),
            next_run_unix_ms: Some(1_700_010_000_000),
            collision_policy: CollisionPolicy::CancelNew,
        }),
        ..summary("www/prod/nightly")
    };
    let cron_no_next = JobSummaryView {
        cron: Some(CronSummaryView {
            schedule: "@yearly".into(),
            next_run_unix_ms: None,
            collision_policy: CollisionPolicy::KillExisting,
        }),
        ..summary("www/prod/yearly")
    };
    let updating = JobSummaryView {
        update: Some((4, UpdateStatus::RollForwardPaused)),
        ..summary("www/prod/web")
    };
    // Status 0 on the wire is ROLLING_FORWARD, not "no update".
    let rolling = JobSummaryView {
        update: Some((1, UpdateStatus::RollingForward)),
        ..summary("www/prod/api")
    };
    let jobs = vec![plain, cron, cron_no_next, updating, rolling];
    assert_eq!(
        roundtrip(enc.job_list(15, &jobs)),
        (
            15,
            OwnedMessage::JobList {
                jobs: jobs.clone(),
                next: String::new()
            }
        )
    );
    for job in jobs {
        let status = JobStatusView { job, tasks: vec![] };
        assert_eq!(
            roundtrip(enc.job_status(16, &status)).1,
            OwnedMessage::JobStatus(status)
        );
    }
}

#[test]
fn a_summary_from_an_older_scheduler_has_no_cron_and_no_update() {
    let mut enc = Encoder::new();
    let bytes = {
        let fbb = enc.builder();
        fbb.reset();
        let job = fbb.create_string("www/prod/old");
        let counts = fbb.create_vector(&[0u32; TaskState::COUNT]);
        let summary = wire::JobSummary::create(
            fbb,
            &wire::JobSummaryArgs {
                job_key: Some(job),
                instances: 1,
                state_counts: Some(counts),
                ..Default::default()
            },
        );
        let jobs = fbb.create_vector(&[summary]);
        let payload = wire::JobList::create(
            fbb,
            &wire::JobListArgs {
                jobs: Some(jobs),
                next: None,
            },
        );
        enc.finish_message(1, None, wire::Payload::JobList, payload.as_union_value())
            .to_vec()
    };
    assert_eq!(
        roundtrip(&bytes).1,
        OwnedMessage::JobList {
            jobs: vec![JobSummaryView {
                job_key: "www/prod/old".into(),
                instances: 1,
                ..JobSummaryView::default()
            }],
            next: String::new()
        }
    );
}

/// Whether `to_owned` refuses `bytes` with an invalid `field`.
fn refused(bytes: &[u8], field: &str) {
    match to_owned(decode_message(bytes).unwrap()) {
        Err(WireError::InvalidField { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected {field} refused, got {other:?}"),
    }
}

fn raw_update_command(enc: &mut Encoder, op: u8) -> Vec<u8> {
    let fbb = enc.builder();
    fbb.reset();
    let job = fbb.create_string("www/prod/web");
    let payload = wire::UpdateCommand::create(
        fbb,
        &wire::UpdateCommandArgs {
            job_key: Some(job),
            op: wire::UpdateOp(op),
            message: None,
        },
    );
    enc.finish_message(
        1,
        Some("www/prod/web"),
        wire::Payload::UpdateCommand,
        payload.as_union_value(),
    )
    .to_vec()
}

/// An UpdateInfo with one instance and one event, built by hand from raw values.
fn raw_update_info(enc: &mut Encoder, status: u8, phase: u8, event: u8, from_rev: i64) -> Vec<u8> {
    let fbb = enc.builder();
    fbb.reset();
    let job = fbb.create_string("www/prod/web");
    let instance = wire::UpdateInstance::create(
        fbb,
        &wire::UpdateInstanceArgs {
            instance: 0,
            from_rev,
            to_rev: 2,
            phase: wire::InstancePhase(phase),
            failures: 0,
            in_rollback: false,
        },
    );
    let instances = fbb.create_vector(&[instance]);
    let event = wire::UpdateEventInfo::create(
        fbb,
        &wire::UpdateEventInfoArgs {
            unix_ms: 1,
            status: wire::UpdateStatus(event),
            message: None,
        },
    );
    let events = fbb.create_vector(&[event]);
    let payload = wire::UpdateInfo::create(
        fbb,
        &wire::UpdateInfoArgs {
            job_key: Some(job),
            update_id: 1,
            status: wire::UpdateStatus(status),
            instances: Some(instances),
            events: Some(events),
            ..Default::default()
        },
    );
    enc.finish_message(1, None, wire::Payload::UpdateInfo, payload.as_union_value())
        .to_vec()
}

#[test]
fn unknown_enum_values_and_bad_revisions_are_refused() {
    let mut enc = Encoder::new();
    // The raw builders are right: known values read.
    assert!(to_owned(decode_message(&raw_update_command(&mut enc, 4)).unwrap()).is_ok());
    assert!(to_owned(decode_message(&raw_update_info(&mut enc, 10, 3, 0, 1)).unwrap()).is_ok());
    assert!(to_owned(decode_message(&raw_update_info(&mut enc, 0, 0, 0, -1)).unwrap()).is_ok());

    refused(&raw_update_command(&mut enc, 5), "op");
    refused(&raw_update_command(&mut enc, 255), "op");
    refused(&raw_update_info(&mut enc, 11, 0, 0, 1), "update_status");
    refused(&raw_update_info(&mut enc, 0, 4, 0, 1), "phase");
    refused(&raw_update_info(&mut enc, 0, 0, 200, 1), "update_status");
    refused(&raw_update_info(&mut enc, 0, 0, 0, -2), "from_rev");
    refused(
        &raw_update_info(&mut enc, 0, 0, 0, i64::from(u32::MAX) + 1),
        "from_rev",
    );
    // The same updates inside an UpdateList.
    let list = |enc: &mut Encoder, status: u8| {
        let fbb = enc.builder();
        fbb.reset();
        let job = fbb.create_string("www/prod/web");
        let info = wire::UpdateInfo::create(
            fbb,
            &wire::UpdateInfoArgs {
                job_key: Some(job),
                status: wire::UpdateStatus(status),
                ..Default::default()
            },
        );
        let updates = fbb.create_vector(&[info]);
        let payload = wire::UpdateList::create(
            fbb,
            &wire::UpdateListArgs {
                updates: Some(updates),
            },
        );
        enc.finish_message(1, None, wire::Payload::UpdateList, payload.as_union_value())
            .to_vec()
    };
    assert!(to_owned(decode_message(&list(&mut enc, 8)).unwrap()).is_ok());
    refused(&list(&mut enc, 99), "update_status");

    // A cron schedule's collision policy.
    let schedule = |enc: &mut Encoder, policy: u8| {
        let fbb = enc.builder();
        fbb.reset();
        let job = fbb.create_string("www/prod/web");
        let command = fbb.create_string("./report");
        let resources = wire::Resources::new(100, 16, 16, 0);
        let config = wire::TaskConfig::create(
            fbb,
            &wire::TaskConfigArgs {
                command: Some(command),
                resources: Some(&resources),
                ..Default::default()
            },
        );
        let text = fbb.create_string("@daily");
        let payload = wire::ScheduleCron::create(
            fbb,
            &wire::ScheduleCronArgs {
                job_key: Some(job),
                instances: 1,
                config: Some(config),
                schedule: Some(text),
                collision_policy: wire::CollisionPolicy(policy),
            },
        );
        enc.finish_message(
            1,
            Some("www/prod/web"),
            wire::Payload::ScheduleCron,
            payload.as_union_value(),
        )
        .to_vec()
    };
    assert!(to_owned(decode_message(&schedule(&mut enc, 1)).unwrap()).is_ok());
    refused(&schedule(&mut enc, 2), "collision_policy");

    // A job summary's cron policy and update status (the status only counts with an update).
    let job_list = |enc: &mut Encoder, cron: bool, policy: u8, has_update: bool, status: u8| {
        let fbb = enc.builder();
        fbb.reset();
        let job = fbb.create_string("www/prod/web");
        let schedule = cron.then(|| fbb.create_string("@daily"));
        let summary = wire::JobSummary::create(
            fbb,
            &wire::JobSummaryArgs {
                job_key: Some(job),
                cron_schedule: schedule,
                cron_collision_policy: wire::CollisionPolicy(policy),
                has_update,
                update_status: wire::UpdateStatus(status),
                update_id: 3,
                ..Default::default()
            },
        );
        let jobs = fbb.create_vector(&[summary]);
        let payload = wire::JobList::create(
            fbb,
            &wire::JobListArgs {
                jobs: Some(jobs),
                next: None,
            },
        );
        enc.finish_message(1, None, wire::Payload::JobList, payload.as_union_value())
            .to_vec()
    };
    assert!(to_owned(decode_message(&job_list(&mut enc, true, 1, true, 10)).unwrap()).is_ok());
    assert!(to_owned(decode_message(&job_list(&mut enc, false, 9, false, 99)).unwrap()).is_ok());
    refused(&job_list(&mut enc, true, 9, false, 0), "collision_policy");
    refused(&job_list(&mut enc, false, 0, true, 99), "update_status");

    // The free functions the scheduler uses say the same.
    assert!(update_op_from_wire(wire::UpdateOp(5)).is_err());
    assert!(update_status_from_wire(wire::UpdateStatus(11)).is_err());
    assert!(instance_phase_from_wire(wire::InstancePhase(4)).is_err());
    assert!(collision_policy_from_wire(wire::CollisionPolicy(2)).is_err());
    assert_eq!(
        collision_policy_from_wire(wire::CollisionPolicy::CancelNew),
        Ok(CollisionPolicy::CancelNew)
    );
}

#[test]
fn bad_job_keys_are_refused() {
    let mut enc = Encoder::new();
    for payload_type in [
        wire::Payload::DescheduleCron,
        wire::Payload::StartCron,
        wire::Payload::QueryUpdates,
    ] {
        let bytes = {
            let fbb = enc.builder();
            fbb.reset();
            let job = fbb.create_string("not a key");
            let payload = match payload_type {
                wire::Payload::DescheduleCron => wire::DescheduleCron::create(
                    fbb,
                    &wire::DescheduleCronArgs { job_key: Some(job) },
                )
                .as_union_value(),
                wire::Payload::StartCron => {
                    wire::StartCron::create(fbb, &wire::StartCronArgs { job_key: Some(job) })
                        .as_union_value()
                }
                _ => wire::QueryUpdates::create(
                    fbb,
                    &wire::QueryUpdatesArgs {
                        job_key: Some(job),
                        ..Default::default()
                    },
                )
                .as_union_value(),
            };
            enc.finish_message(1, None, payload_type, payload).to_vec()
        };
        refused(&bytes, "job_key");
    }
}

#[test]
fn every_status_maps_both_ways() {
    for status in UpdateStatus::ALL {
        assert_eq!(
            update_status_from_wire(update_status_to_wire(status)),
            Ok(status)
        );
        // The wire numbers are the core order (and never change).
        assert_eq!(update_status_to_wire(status).0 as usize, status as usize);
    }
}

#[test]
fn appended_type_numbers_stay_put() {
    assert_eq!(wire::Payload::RestartJob.0, 22);
    assert_eq!(wire::Payload::StartUpdate.0, 23);
    assert_eq!(wire::Payload::UpdateCommand.0, 24);
    assert_eq!(wire::Payload::QueryUpdates.0, 25);
    assert_eq!(wire::Payload::UpdateInfo.0, 26);
    assert_eq!(wire::Payload::UpdateList.0, 27);
    assert_eq!(wire::Payload::ScheduleCron.0, 28);
    assert_eq!(wire::Payload::DescheduleCron.0, 29);
    assert_eq!(wire::Payload::StartCron.0, 30);
    assert_eq!(wire::UpdateStatus::Failed.0, 10);
    assert_eq!(wire::UpdateOp::Pulse.0, 4);
    assert_eq!(wire::CollisionPolicy::CancelNew.0, 1);
}

fn arb_status() -> impl Strategy<Value = UpdateStatus> {
    (0..UpdateStatus::ALL.len()).prop_map(|i| UpdateStatus::ALL[i])
}

fn arb_phase() -> impl Strategy<Value = InstancePhase> {
    prop_oneof![
        Just(InstancePhase::Waiting),
        Just(InstancePhase::InFlight),
        Just(InstancePhase::Succeeded),
        Just(InstancePhase::Failed),
    ]
}

proptest! {
    #[test]
    fn any_update_roundtrips(
        id in any::<u64>(),
        status in arb_status(),
        before in any::<u32>(),
        after in any::<u32>(),
        to_rev in any::<u32>(),
        pulse in proptest::option::of(1u32..),
        instances in proptest::collection::vec(
            (any::<u32>(), proptest::option::of(any::<u32>()), proptest::option::of(any::<u32>()),
             arb_phase(), any::<u32>(), any::<bool>()),
            0..20,
        ),
        events in proptest::collection::vec((any::<u64>(), arb_status(), ".{0,20}"), 0..5),
        in_flight in any::<u32>(),
    ) {
        let mut view = summary_update();
        view.update.id = id;
        view.update.status = status;
        view.update.instances_before = before;
        view.update.instances_after = after;
        view.update.to_rev = to_rev;
        view.update.settings.pulse_interval_secs = pulse;
        view.update.instances = instances
            .into_iter()
            .map(|(instance, from, to, phase, failures, in_rollback)| InstanceProgress {
                instance, from, to, phase, failures, in_rollback,
            })
            .collect();
        view.update.events = events
            .into_iter()
            .map(|(unix_ms, status, message)| UpdateEvent { unix_ms, status, message })
            .collect();
        view.in_flight = in_flight;
        let mut enc = Encoder::new();
        let bytes = enc.update_info(1, &view).to_vec();
        prop_assert_eq!(roundtrip(&bytes).1, OwnedMessage::UpdateInfo(view));
    }
}
