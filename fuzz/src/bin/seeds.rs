//! Writes the fuzz targets' seed corpora: real traffic, built with the real encoder from the
//! example job files (examples/*.toml) through the path the CLI takes (`parse_job_file`, then
//! `create_job_spec` / `start_update_spec` / `schedule_cron_spec` with the file's
//! `tier_explicit`), and the messages a scheduler and an agent exchange around them.
//!
//! `seeds <corpus dir>` writes `<corpus dir>/<target>/seed-*` (scripts/fuzz.sh runs it when a
//! target's corpus is empty). Every seed is small (a few KiB).

use std::path::Path;

use borealis_core::jobfile::{parse_job_file, JobSpec};
use borealis_core::update::UpdateSettings;
use borealis_core::{JobKey, MaintenanceOp, Resources, TaskId, TaskState};
use borealis_fuzz::{
    names_tier, push_record, standard_agent, EXAMPLES, TAG_ADVANCE, TAG_RAW_AGENT, TAG_RAW_CLIENT,
    TAG_REPORT_ALL,
};
use borealis_net::views::{ErrorCode, TaskStatusReport};
use borealis_net::{Encoder, FrameWriter};

struct Example {
    name: &'static str,
    key: JobKey,
    text: &'static str,
    spec: JobSpec,
    tier_explicit: bool,
}

fn examples() -> Vec<Example> {
    EXAMPLES
        .iter()
        .map(|(name, key, text)| {
            let key: JobKey = key.parse().expect("the examples' keys are valid");
            let spec = parse_job_file(key.clone(), text)
                .unwrap_or_else(|e| panic!("examples/{name}: {e}"));
            Example {
                name,
                key,
                text,
                spec,
                tier_explicit: names_tier(text),
            }
        })
        .collect()
}

/// The request the CLI sends for an example: a cron job's schedule, an update's start, or a
/// create.
fn cli_request(e: &mut Encoder, id: u64, x: &Example) -> Vec<u8> {
    let spec = &x.spec;
    if let Some(cron) = &spec.cron {
        return e
            .schedule_cron_spec(
                id,
                &x.key,
                spec.instances,
                &spec.config,
                x.tier_explicit,
                &cron.schedule.to_string(),
                cron.collision_policy,
            )
            .to_vec();
    }
    if let Some(settings) = &spec.update {
        return e
            .start_update_spec(
                id,
                &x.key,
                spec.instances,
                &spec.config,
                x.tier_explicit,
                settings,
                &[],
                "",
            )
            .to_vec();
    }
    e.create_job_spec(id, spec.instances, &spec.config, x.tier_explicit)
        .to_vec()
}

fn status(task: u64, key: &str, instance: u32, state: TaskState) -> TaskStatusReport {
    TaskStatusReport {
        task_id: TaskId(task),
        job_key: key.into(),
        instance,
        state,
        exit_code: if state == TaskState::Failed { 1 } else { -1 },
        message: String::new(),
        timestamp_ms: 1_700_000_001_000,
        sandbox: String::new(),
        usage: None,
    }
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let path = dir.join(format!("seed-{name}"));
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn frames(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut writer = FrameWriter::new();
    for m in messages {
        writer.push(m).expect("seed messages fit a frame");
    }
    writer.take()
}

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .expect("usage: seeds <corpus dir>");
    let dir = Path::new(&dir);
    let examples = examples();
    let mut e = Encoder::new();
    let quota = Resources {
        cpu_millis: 8_000,
        ram_mib: 16_384,
        disk_mib: 32_768,
        ports: 0,
    };

    // jobfile: the job files themselves.
    for x in &examples {
        write(dir, "jobfile", x.name, x.text.as_bytes());
    }

    // frame: an 8-byte chunking seed, then a client's or agent's stream of frames.
    let agent = standard_agent("agent-1", "host-a", "r1");
    for (i, x) in examples.iter().enumerate() {
        let stream = frames(&[
            e.authenticate(1, "token").to_vec(),
            cli_request(&mut e, 2, x),
            e.query_job(3, &x.key).to_vec(),
            e.kill_job(4, &x.key, &[0, 1]).to_vec(),
        ]);
        let mut seed = (i as u64 * 0x9e37_79b9).to_le_bytes().to_vec();
        seed.extend_from_slice(&stream);
        write(dir, "frame", &format!("client-{}", x.name), &seed);
    }
    let hello = &examples[0];
    let agent_stream = frames(&[
        e.register_agent(&agent).to_vec(),
        e.task_status(&status(7, "www/devel/hello", 0, TaskState::Running))
            .to_vec(),
        e.heartbeat(1_700_000_002_000).to_vec(),
        e.launch_task(TaskId(7), 0, &hello.spec.config, &[])
            .to_vec(),
        e.status_ack(&[(TaskId(7), TaskState::Finished)]).to_vec(),
        e.error(9, ErrorCode::NotLeader, "not the leader").to_vec(),
    ]);
    let mut seed = 3u64.to_le_bytes().to_vec();
    seed.extend_from_slice(&agent_stream);
    write(dir, "frame", "agent", &seed);

    // scheduler_messages: two header bytes (flags: shards, log, settling, agents, policies;
    // modes: HA), then records. Per example: quota, the CLI's request, time for the placement,
    // the launched tasks RUNNING then FINISHED, queries, a kill; then a maintenance drain and
    // an agent coming back. The headers vary: one to three shards, the log, HA under etcd.
    let example_headers = [[0u8, 0], [1, 0], [2, 0], [4, 0], [0, 1]];
    for (x, header) in examples.iter().zip(example_headers) {
        let mut seed = header.to_vec();
        push_record(
            &mut seed,
            TAG_RAW_CLIENT,
            e.set_quota(1, &x.key.role, &quota),
        );
        push_record(&mut seed, TAG_RAW_CLIENT, &cli_request(&mut e, 2, x));
        push_record(&mut seed, TAG_ADVANCE, &100u32.to_le_bytes());
        push_record(&mut seed, TAG_REPORT_ALL, &[TaskState::Starting as u8]);
        push_record(&mut seed, TAG_REPORT_ALL, &[TaskState::Running as u8]);
        push_record(&mut seed, TAG_RAW_CLIENT, e.query_job(3, &x.key));
        push_record(&mut seed, TAG_RAW_CLIENT, e.list_jobs(4));
        push_record(&mut seed, TAG_ADVANCE, &60_000u32.to_le_bytes());
        push_record(&mut seed, TAG_REPORT_ALL, &[TaskState::Finished as u8]);
        push_record(&mut seed, TAG_RAW_CLIENT, e.kill_job(5, &x.key, &[]));
        push_record(&mut seed, TAG_ADVANCE, &5_000u32.to_le_bytes());
        push_record(&mut seed, TAG_REPORT_ALL, &[TaskState::Killed as u8]);
        write(dir, "scheduler_messages", x.name, &seed);
    }
    let service = &examples[1];
    let mut seed = vec![0u8, 0];
    push_record(&mut seed, TAG_RAW_CLIENT, e.set_quota(1, "www", &quota));
    push_record(&mut seed, TAG_RAW_CLIENT, &cli_request(&mut e, 2, service));
    push_record(&mut seed, TAG_ADVANCE, &100u32.to_le_bytes());
    push_record(&mut seed, TAG_REPORT_ALL, &[TaskState::Running as u8]);
    push_record(
        &mut seed,
        TAG_RAW_CLIENT,
        e.host_maintenance(3, MaintenanceOp::Drain, &["host-a".into()], 60),
    );
    push_record(&mut seed, TAG_ADVANCE, &2_000u32.to_le_bytes());
    push_record(&mut seed, TAG_REPORT_ALL, &[TaskState::Killed as u8]);
    push_record(
        &mut seed,
        TAG_RAW_CLIENT,
        e.host_maintenance(4, MaintenanceOp::Status, &["host-a".into()], 0),
    );
    push_record(&mut seed, TAG_RAW_CLIENT, e.list_agents_page(5, None, 1));
    push_record(
        &mut seed,
        TAG_RAW_CLIENT,
        e.list_agents_page(5, Some(("host-a", "agent-1")), 1),
    );
    push_record(
        &mut seed,
        TAG_RAW_CLIENT,
        e.list_jobs_page(5, "www/prod/a", 1),
    );
    push_record(
        &mut seed,
        TAG_RAW_CLIENT,
        e.start_update(
            6,
            &service.key,
            2,
            &service.spec.config,
            &UpdateSettings::default(),
            &[],
            "",
        ),
    );
    push_record(&mut seed, TAG_ADVANCE, &50_000u32.to_le_bytes());
    push_record(
        &mut seed,
        TAG_RAW_CLIENT,
        e.host_maintenance(7, MaintenanceOp::End, &["host-a".into()], 0),
    );
    write(dir, "scheduler_messages", "drain", &seed);
    // An agent coming back with tasks the scheduler does not know, and their ends.
    let mut back = standard_agent("agent-1", "host-a", "r1");
    back.tasks = vec![
        status(0x11, "www/devel/hello", 0, TaskState::Running),
        status(0x12, "www/prod/web", 1, TaskState::Finished),
    ];
    let mut seed = vec![16u8, 0]; // no agent registered at the start
    push_record(&mut seed, TAG_RAW_AGENT, e.register_agent(&back));
    push_record(
        &mut seed,
        TAG_RAW_AGENT,
        e.task_status(&status(0x11, "www/devel/hello", 0, TaskState::Lost)),
    );
    push_record(&mut seed, TAG_RAW_AGENT, e.heartbeat(1_700_000_002_000));
    push_record(&mut seed, TAG_ADVANCE, &40_000u32.to_le_bytes());
    write(dir, "scheduler_messages", "reregister", &seed);

    // agent_messages: header 0, then the scheduler's messages to an agent: launches of the
    // examples (run through the pre-launch layer), kills, reconciliation, acknowledgements.
    for (i, x) in examples.iter().enumerate() {
        let mut seed = vec![0u8];
        let task = TaskId(0x0100 + i as u64);
        push_record(&mut seed, TAG_RAW_CLIENT, e.agent_registered("fuzz-agent"));
        push_record(
            &mut seed,
            TAG_RAW_CLIENT,
            e.launch_task(task, 0, &x.spec.config, &[("http".into(), 31_000)]),
        );
        push_record(
            &mut seed,
            TAG_RAW_CLIENT,
            e.kill_task(task, &x.key.to_string()),
        );
        push_record(&mut seed, TAG_RAW_CLIENT, e.reconcile(&[task, TaskId(5)]));
        push_record(&mut seed, TAG_RAW_CLIENT, e.reconcile(&[]));
        push_record(
            &mut seed,
            TAG_RAW_CLIENT,
            e.status_ack(&[(task, TaskState::Lost), (TaskId(5), TaskState::Killed)]),
        );
        push_record(&mut seed, TAG_RAW_CLIENT, e.heartbeat(1_700_000_002_000));
        write(dir, "agent_messages", x.name, &seed);
    }
    let mut seed = vec![0u8];
    push_record(
        &mut seed,
        TAG_RAW_CLIENT,
        e.error(1, ErrorCode::Internal, "the scheduler failed"),
    );
    push_record(&mut seed, TAG_RAW_CLIENT, e.list_jobs(2));
    push_record(&mut seed, TAG_RAW_CLIENT, e.ack(3));
    write(dir, "agent_messages", "errors", &seed);
}
