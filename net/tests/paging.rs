//! Issue 12 on the wire: lists come a page at a time (`ListJobs`/`ListAgents` with `after` and
//! `limit`, answered with `next`), a big job status comes in parts (`JobStatus.more`) that
//! [`JobStatusParts`] puts back together, and every page or part fits a frame with room to
//! spare however large its entries may be.

use borealis_core::cron::CollisionPolicy;
use borealis_core::update::{JobUpdate, UpdateSettings, UpdateStatus};
use borealis_core::{HostMode, Resources, TaskState, TaskUsage};
use borealis_net::codec::{
    agent_info_bytes, job_summary_bytes, page_limit, to_owned, JOB_STATUS_PART_BYTES,
    LIST_PAGE_BYTES_MAX, LIST_PAGE_DEFAULT, LIST_PAGE_MAX, UPDATES_LIST_MAX,
};
use borealis_net::views::{
    AgentInfoView, CronSummaryView, JobStatusParts, JobStatusView, JobSummaryView, OwnedMessage,
    TaskEventView, TaskInfoView, UpdateInfoView,
};
use borealis_net::{decode_message, wire, Encoder, FrameWriter, MESSAGE_BYTES_MAX};

fn roundtrip(bytes: &[u8]) -> (u64, OwnedMessage) {
    to_owned(decode_message(bytes).unwrap()).unwrap()
}

/// The longest job key there is: three parts of 128 characters.
fn long_key(i: usize) -> String {
    let role = format!("{:a<128}", format!("role{}", i % 7));
    let env = format!("staging{:0>121}", i % 3);
    let name = format!("{:n<120}{i:08}", "job");
    let key = format!("{role}/{env}/{name}");
    assert_eq!(key.len(), 386);
    key
}

fn big_summary(i: usize) -> JobSummaryView {
    JobSummaryView {
        job_key: long_key(i),
        instances: u32::MAX,
        is_service: true,
        state_counts: [u32::MAX; TaskState::COUNT],
        cron: Some(CronSummaryView {
            schedule: "0,5,10,15,20,25,30,35,40,45,50,55 0-23 1-31 1-12 0-6".into(),
            next_run_unix_ms: Some(u64::MAX),
            collision_policy: CollisionPolicy::CancelNew,
        }),
        update: Some((u64::MAX, UpdateStatus::RollForwardAwaitingPulse)),
    }
}

#[test]
fn paging_requests_and_pages_roundtrip() {
    let mut enc = Encoder::new();
    assert_eq!(
        roundtrip(enc.list_jobs(1)),
        (
            1,
            OwnedMessage::ListJobs {
                after: String::new(),
                limit: 0
            }
        )
    );
    assert_eq!(
        roundtrip(enc.list_jobs_page(2, "www/prod/a", 5)),
        (
            2,
            OwnedMessage::ListJobs {
                after: "www/prod/a".into(),
                limit: 5
            }
        )
    );
    let jobs = vec![big_summary(1), big_summary(2)];
    assert_eq!(
        roundtrip(enc.job_list_page(3, &jobs, &jobs[1].job_key)).1,
        OwnedMessage::JobList {
            jobs: jobs.clone(),
            next: jobs[1].job_key.clone()
        }
    );
    assert_eq!(
        roundtrip(enc.list_agents(4)).1,
        OwnedMessage::ListAgents {
            after: None,
            limit: 0
        }
    );
    // An empty hostname is a cursor too: presence is the agent id's.
    assert_eq!(
        roundtrip(enc.list_agents_page(5, Some(("", "a1")), 7)).1,
        OwnedMessage::ListAgents {
            after: Some((String::new(), "a1".into())),
            limit: 7
        }
    );
    let agents = vec![agent(1, 2)];
    assert_eq!(
        roundtrip(enc.agent_list_page(6, &agents, Some(("h1", "a1")))).1,
        OwnedMessage::AgentList {
            agents: agents.clone(),
            next: Some(("h1".into(), "a1".into()))
        }
    );
    assert_eq!(
        roundtrip(enc.agent_list(7, &agents)).1,
        OwnedMessage::AgentList { agents, next: None }
    );
}

#[test]
fn requests_of_older_clients_ask_for_the_first_default_page() {
    // What a client before issue 12 sends: `ListJobs {}` and `ListAgents {}`.
    let mut enc = Encoder::new();
    let list_jobs = {
        let fbb = enc.builder();
        fbb.reset();
        let payload = wire::ListJobs::create(fbb, &wire::ListJobsArgs::default());
        enc.finish_message(1, None, wire::Payload::ListJobs, payload.as_union_value())
            .to_vec()
    };
    assert_eq!(
        roundtrip(&list_jobs).1,
        OwnedMessage::ListJobs {
            after: String::new(),
            limit: 0
        }
    );
    let list_agents = {
        let fbb = enc.builder();
        fbb.reset();
        let payload = wire::ListAgents::create(fbb, &wire::ListAgentsArgs::default());
        enc.finish_message(2, None, wire::Payload::ListAgents, payload.as_union_value())
            .to_vec()
    };
    assert_eq!(
        roundtrip(&list_agents).1,
        OwnedMessage::ListAgents {
            after: None,
            limit: 0
        }
    );
    assert_eq!(page_limit(0), LIST_PAGE_DEFAULT as usize);
    assert_eq!(page_limit(7), 7);
    assert_eq!(page_limit(u32::MAX), LIST_PAGE_MAX as usize);
}

#[test]
fn a_full_page_of_the_largest_summaries_fits_a_frame_and_its_estimate() {
    let jobs: Vec<JobSummaryView> = (0..LIST_PAGE_MAX as usize).map(big_summary).collect();
    let estimate: usize = jobs.iter().map(job_summary_bytes).sum();
    let bytes = Encoder::new()
        .job_list_page(1, &jobs, &jobs[0].job_key)
        .to_vec();
    assert!(bytes.len() <= estimate, "{} > {estimate}", bytes.len());
    assert!(bytes.len() < MESSAGE_BYTES_MAX / 2, "{}", bytes.len());
    // ... while 40,000 such jobs in one list, as every ListJobs answered before paging, do not
    // fit any frame.
    let all: Vec<JobSummaryView> = (0..40_000).map(big_summary).collect();
    let one_list = Encoder::new().job_list(1, &all).len();
    assert!(one_list > MESSAGE_BYTES_MAX, "{one_list}");
    assert!(FrameWriter::new()
        .push(Encoder::new().job_list(1, &all))
        .is_err());
}

fn agent(attributes: usize, value_len: usize) -> AgentInfoView {
    AgentInfoView {
        agent_id: format!("agent-{attributes}-{value_len}"),
        hostname: format!("host-{attributes}.example.com"),
        total: Resources {
            cpu_millis: 64_000,
            ram_mib: 1 << 20,
            disk_mib: 1 << 22,
            ports: 1000,
        },
        used: Resources::ZERO,
        active_tasks: 12,
        connected: true,
        mode: HostMode::Draining,
        attributes: (0..attributes)
            .map(|i| (format!("attribute-{i}"), "v".repeat(value_len)))
            .collect(),
        log_address: "10.0.0.1:1338".into(),
    }
}

#[test]
fn agent_estimates_bound_their_encoding() {
    for (attributes, value_len) in [(0, 0), (1, 1), (40, 200), (500, 3)] {
        let agents: Vec<AgentInfoView> = (0..50).map(|_| agent(attributes, value_len)).collect();
        let estimate: usize = agents.iter().map(agent_info_bytes).sum();
        let bytes = Encoder::new().agent_list(1, &agents).len();
        assert!(
            bytes <= estimate,
            "{attributes} x {value_len}: {bytes} > {estimate}"
        );
    }
    const _: () = assert!(2 * LIST_PAGE_BYTES_MAX <= borealis_net::FRAME_BYTES_MAX);
}

#[test]
fn the_most_active_updates_a_cluster_wide_list_holds_fit_a_frame() {
    let updates: Vec<UpdateInfoView> = (0..UPDATES_LIST_MAX)
        .map(|i| UpdateInfoView {
            job_key: long_key(i),
            update: JobUpdate {
                id: u64::MAX,
                job: long_key(i),
                settings: UpdateSettings {
                    batch_size: u32::MAX,
                    max_per_instance_failures: u32::MAX,
                    max_total_failures: u32::MAX,
                    watch_secs: u32::MAX,
                    rollback_on_failure: true,
                    wait_for_batch_completion: true,
                    pulse_interval_secs: Some(u32::MAX),
                    sla_aware: true,
                },
                status: UpdateStatus::RollingBack,
                instances_before: u32::MAX,
                instances_after: u32::MAX,
                to_rev: u32::MAX,
                instances: Vec::new(),
                failed_instances: u32::MAX,
                created_unix_ms: u64::MAX,
                updated_unix_ms: u64::MAX,
                events: Vec::new(),
                last_pulse_us: None,
                watching: Vec::new(),
            },
            in_flight: u32::MAX,
            configs: Vec::new(),
        })
        .collect();
    let bytes = Encoder::new().update_list(1, &updates).len();
    assert!(bytes < MESSAGE_BYTES_MAX / 2, "{bytes}");
}

/// A task as big as a task gets once status messages are bounded to 1 KiB and sandbox paths
/// to 4 KiB: every string at its bound, every event with a message.
fn big_task(instance: u32) -> TaskInfoView {
    TaskInfoView {
        task_id: 1_000_000 + u64::from(instance),
        instance,
        state: Some(TaskState::Failed),
        agent_id: format!("agent-{instance}"),
        hostname: format!("host-{instance}.example.com"),
        failure_count: 3,
        exit_code: 1,
        message: format!("{instance:m<1024}"),
        ports: vec![("http".into(), 31_000), ("admin".into(), 31_001)],
        sandbox: format!("/var/lib/borealis/sandboxes/{instance:s<4000}"),
        pending_reason: String::new(),
        preempted_by: None,
        events: (0..12)
            .map(|i| TaskEventView {
                unix_ms: 1_700_000_000_000 + i,
                state: Some(TaskState::Running),
                message: format!("event {i} {:e<100}", ""),
            })
            .collect(),
        usage: Some(TaskUsage {
            cpu_time_ms: 1,
            peak_memory_bytes: 2,
            disk_bytes: 3,
        }),
    }
}

#[test]
fn a_job_status_past_a_frame_goes_in_parts_that_put_back_together_equal() {
    let status = JobStatusView {
        job: JobSummaryView {
            job_key: "www/prod/big".into(),
            instances: 4_000,
            ..big_summary(0)
        },
        tasks: (0..4_000).map(big_task).collect(),
    };
    // As one message (what QueryJob answered before), it fits no frame.
    let whole = Encoder::new().job_status(9, &status).len();
    assert!(whole > MESSAGE_BYTES_MAX, "{whole}");

    let parts =
        Encoder::new().job_status_parts(9, &status.job, &status.tasks, JOB_STATUS_PART_BYTES);
    assert!(parts.len() >= 4, "{} parts", parts.len());
    let one_task = Encoder::new()
        .job_status(
            9,
            &JobStatusView {
                job: status.job.clone(),
                tasks: vec![big_task(0)],
            },
        )
        .len();
    let mut writer = FrameWriter::new();
    let mut assembler = JobStatusParts::default();
    let mut assembled = None;
    for (i, part) in parts.iter().enumerate() {
        assert!(
            part.len() <= JOB_STATUS_PART_BYTES + one_task,
            "part {i}: {}",
            part.len()
        );
        writer.push(part).expect("a part fits a frame");
        let (id, message) = roundtrip(part);
        assert_eq!(id, 9);
        let last = i + 1 == parts.len();
        match &message {
            OwnedMessage::JobStatusPart(p) if !last => assert_eq!(p.job, status.job),
            OwnedMessage::JobStatus(p) if last => assert_eq!(p.job, status.job),
            other => panic!(
                "part {i} of {}: {:?}",
                parts.len(),
                std::mem::discriminant(other)
            ),
        }
        match assembler.feed(id, message) {
            None => assert!(!last),
            Some(m) => {
                assert!(last);
                assembled = Some(m);
            }
        }
    }
    assert!(assembler.is_empty());
    assert_eq!(assembled, Some(OwnedMessage::JobStatus(status.clone())));

    // A small status is one part, the same bytes as `job_status`.
    let small = JobStatusView {
        job: status.job.clone(),
        tasks: status.tasks[..3].to_vec(),
    };
    let mut enc = Encoder::new();
    let one = enc.job_status_parts(4, &small.job, small.tasks.iter(), JOB_STATUS_PART_BYTES);
    assert_eq!(one.len(), 1);
    assert_eq!(roundtrip(&one[0]), roundtrip(enc.job_status(4, &small)));
    // And a job without tasks too.
    let none = enc.job_status_parts(
        5,
        &small.job,
        Vec::<TaskInfoView>::new(),
        JOB_STATUS_PART_BYTES,
    );
    assert_eq!(
        roundtrip(&none[0]).1,
        OwnedMessage::JobStatus(JobStatusView {
            job: small.job.clone(),
            tasks: Vec::new()
        })
    );
}

#[test]
fn parts_of_requests_in_flight_together_stay_apart() {
    let mut assembler = JobStatusParts::default();
    let status = |key: &str, instances: std::ops::Range<u32>| JobStatusView {
        job: JobSummaryView {
            job_key: key.into(),
            ..JobSummaryView::default()
        },
        tasks: instances.map(big_task).collect(),
    };
    assert_eq!(
        assembler.feed(1, OwnedMessage::JobStatusPart(status("r/e/a", 0..2))),
        None
    );
    assert_eq!(
        assembler.feed(2, OwnedMessage::JobStatusPart(status("r/e/b", 0..1))),
        None
    );
    assert_eq!(
        assembler.feed(1, OwnedMessage::JobStatus(status("r/e/a", 2..3))),
        Some(OwnedMessage::JobStatus(status("r/e/a", 0..3)))
    );
    // An error in place of the last part ends the request's parts.
    let error = OwnedMessage::Error {
        code: borealis_net::views::ErrorCode::Internal,
        message: "gone".into(),
        leader: None,
    };
    assert_eq!(assembler.feed(2, error.clone()), Some(error));
    assert!(assembler.is_empty());
}
