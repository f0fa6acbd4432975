//! A simulated client: one TCP connection submitting `CreateJob`s, pipelined and batched into
//! frames, paced by `--rate` and held back by `--max-active-tasks`; plus the end-of-run
//! `QueryJob` check of a sample of jobs.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use borealis_core::{Constraint, JobKey, Resources, TaskConfig, TaskState, Tier};
use borealis_net::frame::split_messages;
use borealis_net::{decode_message, wire, Encoder, FrameDecoder, FrameWriter};
use tokio::sync::watch;

use crate::config::{ConstraintKind, HOST_LIMIT, RACK_LIMIT, ZONES};
use crate::conn::Conn;
use crate::shared::{mix, InstanceRecord, JobRecord, Shared, JOBS_MAX, REPLY_ACK, REPLY_ERROR};
use crate::Phase;

/// `CreateJob`s a client has sent and not had answered, at most.
const IN_FLIGHT_JOBS_MAX: u64 = 512;
/// `CreateJob`s written per wake-up at most.
const JOBS_PER_WRITE_MAX: usize = 64;
/// How often a client blocked by `--max-active-tasks` looks again.
const BLOCKED_POLL: Duration = Duration::from_millis(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Task shapes jobs are drawn from: (cpu millis, ram MiB, disk MiB, ports).
const SHAPES: [(u32, u32, u32, u16); 4] = [
    (250, 256, 128, 0),
    (500, 512, 256, 1),
    (1000, 1024, 512, 0),
    (100, 128, 64, 1),
];

/// The configuration of job `index` and its verification record: shape, constraint and zone are
/// drawn from the seed and the index.
pub fn job_spec(shared: &Shared, index: u32) -> (TaskConfig, JobRecord) {
    let config = &shared.config;
    let h = mix(config.seed ^ mix(u64::from(index) | (2 << 40)));
    let (cpu_millis, ram_mib, disk_mib, ports) = SHAPES[(h % SHAPES.len() as u64) as usize];
    let resources = Resources {
        cpu_millis,
        ram_mib,
        disk_mib,
        ports,
    };
    let kind = config.constraint_mix.pick(mix(h));
    let zone = index % ZONES;
    let constraints = match kind {
        ConstraintKind::Plain => Vec::new(),
        ConstraintKind::Zone => vec![Constraint::Value {
            attribute: "zone".into(),
            negated: false,
            values: vec![format!("z{zone}")],
        }],
        ConstraintKind::RackLimit => vec![Constraint::Limit {
            attribute: "rack".into(),
            limit: RACK_LIMIT,
        }],
        ConstraintKind::HostLimit => vec![Constraint::Limit {
            attribute: "host".into(),
            limit: HOST_LIMIT,
        }],
    };
    let key = shared.job_key(index);
    let job: JobKey = key.parse().expect("loadgen job keys are valid");
    let task = TaskConfig {
        job,
        command: "sleep 1 # borealis-loadgen: never run".into(),
        resources,
        port_names: (0..ports).map(|i| format!("p{i}")).collect(),
        constraints,
        tier: Tier::Preferred,
        priority: 0,
        production: false,
        is_service: false,
        // FAILED is final: every instance ends exactly once.
        max_task_failures: 1,
        finalization_wait_secs: 0,
        health_check: None,
        http_lifecycle: None,
        sla_policy: None,
        partition_policy: None,
    };
    let instances = config.instances_per_job;
    let record = JobRecord {
        key: key.into_boxed_str(),
        resources,
        constraint: kind,
        zone,
        instances: (0..instances).map(|_| InstanceRecord::default()).collect(),
        rack_counts: (kind == ConstraintKind::RackLimit).then(Default::default),
        submitted_ns: Default::default(),
        reply: Default::default(),
        update: false,
    };
    (task, record)
}

/// The request id of the `Authenticate` a client sends first (its answer is read before any
/// other request is sent).
const AUTHENTICATE_REQUEST_ID: u64 = u64::MAX;

/// A client connection (over TLS when `--tls-ca`), authenticated with `--token` when given:
/// `Authenticate` first, and its answer must be `Ack`.
pub async fn connect(shared: &Shared) -> Result<Conn, String> {
    let address = shared.config.scheduler.as_str();
    let mut stream = shared
        .security
        .connect(address, false, CONNECT_TIMEOUT)
        .await?;
    let Some(token) = &shared.security.token else {
        return Ok(stream);
    };
    let mut writer = FrameWriter::new();
    writer
        .push(Encoder::new().authenticate(AUTHENTICATE_REQUEST_ID, token))
        .expect("the loadgen's messages fit a frame");
    write(&mut stream, &mut writer)
        .await
        .map_err(|e| format!("Authenticate: {e}"))?;
    let mut decoder = FrameDecoder::new();
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    loop {
        let mut answer: Option<Result<(), String>> = None;
        each_message(&mut decoder, |message| {
            if answer.is_some() {
                return;
            }
            answer = Some(match message.payload_type() {
                wire::Payload::Ack if message.request_id() == AUTHENTICATE_REQUEST_ID => Ok(()),
                wire::Payload::Error => {
                    let e = message.payload_as_error().expect("type checked");
                    Err(format!(
                        "Authenticate refused: {:?}: {}",
                        e.code(),
                        e.message()
                    ))
                }
                other => Err(format!(
                    "Authenticate answered with {} (request id {})",
                    other.variant_name().unwrap_or("unknown"),
                    message.request_id()
                )),
            });
        })
        .map_err(|e| format!("Authenticate: {e}"))?;
        match answer {
            Some(Ok(())) => return Ok(stream),
            Some(Err(e)) => return Err(e),
            None => {}
        }
        match tokio::time::timeout_at(deadline, stream.fill(&mut decoder, usize::MAX)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("Authenticate: {e}")),
            Err(_) => return Err("Authenticate: no answer in time".into()),
        }
    }
}

pub(crate) async fn write(stream: &mut Conn, writer: &mut FrameWriter) -> Result<(), String> {
    if writer.is_empty() {
        return Ok(());
    }
    let result = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(writer.finish())).await;
    writer.clear();
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("connection lost while writing: {e}")),
        Err(_) => Err("a write to the scheduler took over 30 s".into()),
    }
}

/// Calls `f` on every complete message in `decoder`.
pub(crate) fn each_message(
    decoder: &mut FrameDecoder,
    mut f: impl FnMut(wire::Message<'_>),
) -> Result<(), String> {
    while let Some(frame) = decoder
        .next_frame()
        .map_err(|e| format!("bad frame from the scheduler: {e}"))?
    {
        for bytes in
            split_messages(frame).map_err(|e| format!("bad frame from the scheduler: {e}"))?
        {
            f(decode_message(&bytes)
                .map_err(|e| format!("bad message from the scheduler: {e}"))?);
        }
    }
    Ok(())
}

/// Runs client `id`: submits jobs while the phase is `Run`, then waits for the answers to what
/// it sent. Returns when everything it sent was answered after the window, or on `Stop`.
pub async fn run_client(
    id: u32,
    shared: Arc<Shared>,
    mut stream: Conn,
    mut phase: watch::Receiver<Phase>,
) -> Result<(), String> {
    let config = &shared.config;
    let k = u64::from(config.instances_per_job);
    let per_client_rate = config.rate / f64::from(config.clients);
    let mut encoder = Encoder::new();
    let mut writer = FrameWriter::new();
    let mut decoder = FrameDecoder::new();
    let mut in_flight: u64 = 0;
    let mut sent_tasks: u64 = 0;
    let mut window_start: Option<Instant> = None;
    let mut batch: Vec<u32> = Vec::with_capacity(JOBS_PER_WRITE_MAX);
    let mut out_of_jobs = false;
    let _ = id;
    loop {
        let now_phase = *phase.borrow_and_update();
        if now_phase == Phase::Stop || (now_phase == Phase::Drain && in_flight == 0) {
            return Ok(());
        }
        // When to look again without any input (None: only on input).
        let mut wake: Option<Instant> = None;
        if now_phase == Phase::Run && !out_of_jobs {
            let started = *window_start.get_or_insert_with(Instant::now);
            while batch.len() < JOBS_PER_WRITE_MAX && in_flight < IN_FLIGHT_JOBS_MAX {
                if per_client_rate > 0.0 {
                    let due =
                        started + Duration::from_secs_f64(sent_tasks as f64 / per_client_rate);
                    if due > Instant::now() {
                        wake = Some(due);
                        break;
                    }
                }
                if shared.counters.active_tasks() + k > config.max_active_tasks {
                    wake = Some(Instant::now() + BLOCKED_POLL);
                    break;
                }
                let index = shared.next_job.fetch_add(1, Relaxed);
                if index >= JOBS_MAX {
                    shared
                        .errors
                        .push(format!("more than {JOBS_MAX} jobs: submissions stopped"));
                    out_of_jobs = true;
                    break;
                }
                let (task, record) = job_spec(&shared, index);
                shared.jobs.insert(index, record);
                writer
                    .push(encoder.create_job(u64::from(index) + 1, config.instances_per_job, &task))
                    .expect("the loadgen's messages fit a frame");
                shared.counters.submitted_tasks.fetch_add(k, Relaxed);
                shared.counters.submitted_jobs.fetch_add(1, Relaxed);
                sent_tasks += k;
                in_flight += 1;
                batch.push(index);
            }
            if batch.len() == JOBS_PER_WRITE_MAX {
                // More may be due right away: come back after a look at the socket.
                wake = Some(Instant::now());
            }
        }
        if !batch.is_empty() {
            let at = shared.now_ns();
            for &index in &batch {
                shared
                    .jobs
                    .get(index)
                    .expect("inserted")
                    .submitted_ns
                    .store(at, Relaxed);
            }
            batch.clear();
            write(&mut stream, &mut writer).await?;
        }
        let sleep = tokio::time::sleep_until(
            wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
                .into(),
        );
        tokio::select! {
            biased;
            changed = phase.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            read = stream.fill(&mut decoder, usize::MAX) => {
                read?;
                each_message(&mut decoder, |message| {
                    in_flight = in_flight.saturating_sub(1);
                    on_reply(&shared, message);
                })?;
            }
            _ = sleep => {}
        }
    }
}

fn on_reply(shared: &Shared, message: wire::Message<'_>) {
    let request_id = message.request_id();
    let job = request_id
        .checked_sub(1)
        .and_then(|i| u32::try_from(i).ok())
        .and_then(|i| shared.jobs.get(i));
    let Some(job) = job else {
        shared.errors.push(format!(
            "a reply to request {request_id}, which no client sent"
        ));
        return;
    };
    let c = &shared.counters;
    let tasks = job.instances.len() as u64;
    match message.payload_type() {
        wire::Payload::Ack => {
            if job.reply.swap(REPLY_ACK, Relaxed) != 0 {
                shared
                    .errors
                    .push(format!("CreateJob {} answered twice", job.key));
            }
            c.acked_jobs.fetch_add(1, Relaxed);
            c.acked_tasks.fetch_add(tasks, Relaxed);
        }
        wire::Payload::Error => {
            let e = message.payload_as_error().expect("type checked");
            job.reply.store(REPLY_ERROR, Relaxed);
            c.rejected_jobs.fetch_add(1, Relaxed);
            c.rejected_tasks.fetch_add(tasks, Relaxed);
            shared.errors.push(format!(
                "CreateJob {} refused: {:?}: {}",
                job.key,
                e.code(),
                e.message()
            ));
        }
        other => shared.errors.push(format!(
            "CreateJob {} answered with {}",
            job.key,
            other.variant_name().unwrap_or("unknown")
        )),
    }
}

/// What the loadgen expects the scheduler to say about one job.
pub struct Expected {
    pub index: u32,
    pub counts: HashMap<TaskState, u32>,
}

/// Asks the scheduler (`QueryJob`, pipelined on one connection) for each job's task state
/// counts and compares them with what the agents reported. Retries mismatches until `deadline`
/// (the scheduler may still be applying the last statuses). Returns the mismatches.
pub async fn check_jobs(shared: &Shared, expected: &[Expected], deadline: Instant) -> Vec<String> {
    let mut stream = match connect(shared).await {
        Ok(stream) => stream,
        Err(e) => return vec![format!("QueryJob check: {e}")],
    };
    let mut encoder = Encoder::new();
    let mut writer = FrameWriter::new();
    let mut decoder = FrameDecoder::new();
    let mut left: Vec<&Expected> = expected.iter().collect();
    let mut problems: HashMap<u32, String> = HashMap::new();
    loop {
        for e in &left {
            let key: JobKey = shared.job_key(e.index).parse().expect("valid key");
            writer
                .push(encoder.query_job(u64::from(e.index) + 1, &key))
                .expect("the loadgen's messages fit a frame");
        }
        if let Err(e) = write(&mut stream, &mut writer).await {
            return vec![format!("QueryJob check: {e}")];
        }
        let mut answers = 0;
        while answers < left.len() {
            let read =
                tokio::time::timeout_at(deadline.into(), stream.fill(&mut decoder, usize::MAX))
                    .await;
            match read {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return vec![format!("QueryJob check: {e}")],
                Err(_) => {
                    return vec![format!(
                        "QueryJob check: {} of {} answers missing at the deadline",
                        left.len() - answers,
                        left.len()
                    )]
                }
            }
            let result = each_message(&mut decoder, |message| {
                if message.payload_as_job_status().is_some_and(|s| s.more()) {
                    // A part of a big job's status: its last part, the answer, carries the
                    // same summary (the counts read here).
                    return;
                }
                answers += 1;
                let index = message.request_id().saturating_sub(1) as u32;
                let Some(e) = left.iter().find(|e| e.index == index) else {
                    return;
                };
                let key = shared.job_key(index);
                let problem = match message.payload_as_job_status() {
                    Some(status) => {
                        let counts: Vec<u32> =
                            status.job().state_counts().iter().flatten().collect();
                        let mut diffs = Vec::new();
                        for state in TaskState::ALL {
                            let got = counts.get(state as usize).copied().unwrap_or(0);
                            let want = e.counts.get(&state).copied().unwrap_or(0);
                            if got != want {
                                diffs.push(format!("{state} {got} (expected {want})"));
                            }
                        }
                        (!diffs.is_empty()).then(|| {
                            format!(
                                "QueryJob {key}: the scheduler's counts differ from the agents': {}",
                                diffs.join(", ")
                            )
                        })
                    }
                    None => Some(format!(
                        "QueryJob {key} answered with {}",
                        message.payload_type().variant_name().unwrap_or("unknown")
                    )),
                };
                match problem {
                    Some(p) => {
                        problems.insert(index, p);
                    }
                    None => {
                        problems.remove(&index);
                    }
                }
            });
            if let Err(e) = result {
                return vec![format!("QueryJob check: {e}")];
            }
        }
        left.retain(|e| problems.contains_key(&e.index));
        if left.is_empty() || Instant::now() + Duration::from_millis(200) >= deadline {
            let mut out: Vec<(u32, String)> = problems.into_iter().collect();
            out.sort();
            return out.into_iter().map(|(_, p)| p).collect();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
