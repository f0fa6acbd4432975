//! A simulated agent: one TCP connection and one tokio task. It registers like the real agent,
//! answers `LaunchTask` with STARTING and RUNNING (after `--ack-delay-ms`) and, after the task's
//! drawn duration, FINISHED or FAILED; answers `KillTask` with KILLED; heartbeats every 5 s.
//!
//! Every launch is checked against what the agent runs: resources and ports within its
//! registered totals, the job's constraint, and that the same (job, instance) is not active on
//! another agent. Everything an agent sends in one wake-up goes out as one write.
//!
//! The updated job of `--update` runs like any other (launch, STARTING, RUNNING) but its tasks
//! never end by themselves: a rolling update kills them (answered KILLED, as a kill of any task
//! is) and launches their replacements. Agents past `--agents` are dedicated to it
//! (`dedicated=loadgen/update`), and a task of one kind on the other's agents is an error.

use std::cell::RefCell;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use borealis_core::{Resources, TaskState};
use borealis_net::frame::split_messages;
use borealis_net::views::AgentRegistration;
use borealis_net::{decode_message, wire, Encoder, FrameDecoder, FrameWriter};
use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::config::{ConstraintKind, TaskDuration, AGENTS_PER_RACK, HOST_LIMIT, RACK_LIMIT, ZONES};
use crate::conn::Conn;
use crate::shared::{fails, mix, JobRecord, Shared, HISTOGRAM_SHARDS};
use crate::Phase;

/// The real agent's heartbeat period; the scheduler drops agents silent for 30 s.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
const CONNECT_ATTEMPTS: u32 = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A write not done within this long means the scheduler stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read from the socket per wake-up at most (then the agent yields to its peers).
const READ_PER_WAKE_MAX: usize = 1 << 20;
/// Port range every simulated agent offers.
pub const PORT_FIRST: u16 = 31_000;
pub const PORT_LAST: u16 = 31_999;
/// Disk of an average agent, in MiB.
const AGENT_DISK_MIB: f64 = 512.0 * 1024.0;
/// The `dedicated` attribute value of the agents dedicated to the updated job.
pub const UPDATE_DEDICATED_VALUE: &str = "loadgen/update";

thread_local! {
    /// One builder per worker thread: messages are built and copied into the agent's frame
    /// writer without awaiting in between.
    static ENCODER: RefCell<Encoder> = RefCell::new(Encoder::new());
}

/// An agent's registered size: the mean scaled by a factor in [0.5, 1.5] drawn from its index;
/// exactly the mean for an agent dedicated to the updated job.
pub fn agent_resources(config: &crate::Config, index: u32) -> Resources {
    let factor = if is_update_agent(config, index) {
        1.0
    } else {
        0.5 + (mix(u64::from(index)) % 1001) as f64 / 1000.0
    };
    Resources {
        cpu_millis: (config.agent_cpus * 1000.0 * factor) as u32,
        ram_mib: (f64::from(config.agent_ram_mib) * factor) as u32,
        disk_mib: (AGENT_DISK_MIB * factor) as u32,
        ports: PORT_LAST - PORT_FIRST + 1,
    }
}

pub fn agent_name(index: u32) -> String {
    format!("h{index}")
}

/// Agents `--agents..` are the ones dedicated to the updated job.
pub fn is_update_agent(config: &crate::Config, index: u32) -> bool {
    index >= config.agents
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

enum Phase2 {
    /// Launched; STARTING and RUNNING are sent at this instant.
    Acking(Instant),
    /// RUNNING sent; ends at this instant (never when `None`).
    Running(Option<Instant>),
}

struct SimTask {
    task_id: u64,
    job: u32,
    instance: u32,
    resources: Resources,
    ports: Vec<u16>,
    phase: Phase2,
    fails: bool,
}

/// What an agent counted in one wake-up, added to the shared counters once.
#[derive(Default)]
struct Local {
    placed: u64,
    relaunched: u64,
    running: u64,
    finished: u64,
    failed: u64,
    killed: u64,
    statuses: u64,
    update_launched: u64,
    update_running: u64,
    update_killed: u64,
    assigned_us: Vec<u64>,
    running_us: Vec<u64>,
}

struct SimAgent {
    index: u32,
    name: String,
    shared: Arc<Shared>,
    total: Resources,
    used: Resources,
    zone: u32,
    rack: u32,
    /// Dedicated to the updated job.
    dedicated: bool,
    tasks: Vec<SimTask>,
    writer: FrameWriter,
    decoder: FrameDecoder,
    rng: u64,
    local: Local,
    registered: bool,
}

/// How an agent's connection ended.
pub enum AgentEnd {
    /// Told to stop.
    Stopped,
    /// Could not connect or register.
    NeverRegistered(String),
    /// Lost its connection after registering.
    Lost(String),
}

/// Runs simulated agent `index` until `phase` says stop. `permit` (a connect slot) is given back
/// once the agent registered.
pub async fn run_agent(
    index: u32,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
    mut phase: watch::Receiver<Phase>,
) -> AgentEnd {
    let config = &shared.config;
    let mut agent = SimAgent {
        index,
        name: agent_name(index),
        total: agent_resources(config, index),
        used: Resources::ZERO,
        zone: index % ZONES,
        rack: index / AGENTS_PER_RACK,
        dedicated: is_update_agent(config, index),
        tasks: Vec::new(),
        writer: FrameWriter::new(),
        decoder: FrameDecoder::default(),
        rng: mix(config.seed ^ mix(u64::from(index) | (1 << 40))),
        local: Local::default(),
        registered: false,
        shared: shared.clone(),
    };
    let mut stream = match agent.connect().await {
        Ok(stream) => stream,
        Err(e) => return AgentEnd::NeverRegistered(e),
    };
    let mut permit = Some(permit);
    let register_deadline = Instant::now() + CONNECT_TIMEOUT * 3;
    let result = agent
        .serve(&mut stream, &mut permit, &mut phase, register_deadline)
        .await;
    agent.publish();
    if result.is_ok() {
        // A TLS agent says goodbye (close_notify), or the scheduler logs every one as lost
        // by an unexpected EOF. Nothing for a plain one.
        stream.close().await;
    }
    match result {
        Ok(()) => AgentEnd::Stopped,
        Err(e) if agent.registered => AgentEnd::Lost(e),
        Err(e) => AgentEnd::NeverRegistered(e),
    }
}

impl SimAgent {
    async fn connect(&mut self) -> Result<Conn, String> {
        let mut backoff = Duration::from_millis(100);
        let mut last = String::new();
        for _ in 0..CONNECT_ATTEMPTS {
            let address = self.shared.config.scheduler.as_str();
            match self
                .shared
                .security
                .connect(address, true, CONNECT_TIMEOUT)
                .await
            {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        Err(last)
    }

    async fn serve(
        &mut self,
        stream: &mut Conn,
        permit: &mut Option<OwnedSemaphorePermit>,
        phase: &mut watch::Receiver<Phase>,
        register_deadline: Instant,
    ) -> Result<(), String> {
        let mut attributes = vec![
            ("host".into(), self.name.clone()),
            ("rack".into(), format!("r{}", self.rack)),
            ("zone".into(), format!("z{}", self.zone)),
        ];
        if self.dedicated {
            attributes.push((
                borealis_core::DEDICATED_ATTRIBUTE.into(),
                UPDATE_DEDICATED_VALUE.into(),
            ));
        }
        let registration = AgentRegistration {
            agent_id: self.name.clone(),
            hostname: self.name.clone(),
            resources: self.total,
            port_ranges: vec![(PORT_FIRST, PORT_LAST)],
            attributes,
            tasks: Vec::new(),
            log_port: 0,
        };
        ENCODER.with(|e| {
            self.writer
                .push(e.borrow_mut().register_agent(&registration))
                .expect("the loadgen's messages fit a frame")
        });
        self.flush(stream).await?;
        // Heartbeats are spread over the interval so 10,000 agents do not beat in step.
        let first_beat = Duration::from_millis(mix(self.rng) % 5000);
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + first_beat, HEARTBEAT_INTERVAL);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
        let sleep = tokio::time::sleep_until(register_deadline.into());
        tokio::pin!(sleep);
        loop {
            if *phase.borrow() == Phase::Stop {
                return Ok(());
            }
            tokio::select! {
                biased;
                changed = phase.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                read = stream.fill(&mut self.decoder, READ_PER_WAKE_MAX) => {
                    read?;
                    self.handle_frames()?;
                    if self.registered && permit.is_some() {
                        *permit = None;
                        self.shared.counters.agents_registered.fetch_add(1, Relaxed);
                    }
                }
                _ = &mut sleep => {
                    if !self.registered {
                        return Err("no AgentRegistered from the scheduler in time".into());
                    }
                }
                _ = heartbeat.tick(), if self.registered => {
                    ENCODER.with(|e| {
                        self.writer
                            .push(e.borrow_mut().heartbeat(wall_ms()))
                            .expect("the loadgen's messages fit a frame")
                    });
                }
            }
            let next = self.advance(Instant::now());
            self.flush(stream).await?;
            self.publish();
            if self.registered {
                sleep
                    .as_mut()
                    .reset(next.map_or_else(far, tokio::time::Instant::from_std));
            }
        }
    }

    /// Handles every complete message the decoder holds (what [`Conn::fill`] read).
    fn handle_frames(&mut self) -> Result<(), String> {
        let now = Instant::now();
        loop {
            let frame = match self.decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("bad frame from the scheduler: {e}")),
            };
            let messages =
                split_messages(frame).map_err(|e| format!("bad frame from the scheduler: {e}"))?;
            for bytes in &messages {
                let message = decode_message(bytes)
                    .map_err(|e| format!("bad message from the scheduler: {e}"))?;
                self.handle(message, now);
            }
        }
    }

    fn handle(&mut self, message: wire::Message<'_>, now: Instant) {
        use wire::Payload as P;
        if self.shared.stopping.load(Relaxed) {
            return;
        }
        match message.payload_type() {
            P::AgentRegistered => {
                let id = message
                    .payload_as_agent_registered()
                    .expect("type checked")
                    .agent_id();
                if id != self.name {
                    self.error(format!(
                        "the scheduler registered {id:?}, not {:?}",
                        self.name
                    ));
                }
                self.registered = true;
            }
            P::LaunchTask => {
                let launch = message.payload_as_launch_task().expect("type checked");
                self.launch(launch, now);
            }
            P::KillTask => {
                let kill = message.payload_as_kill_task().expect("type checked");
                self.kill(kill.task_id(), kill.job_key().unwrap_or_default());
            }
            P::Reconcile => {
                let reconcile = message.payload_as_reconcile().expect("type checked");
                let wanted: Vec<u64> = reconcile.task_ids().iter().flatten().collect();
                for i in 0..self.tasks.len() {
                    let t = &self.tasks[i];
                    if wanted.is_empty() || wanted.contains(&t.task_id) {
                        let state = match t.phase {
                            Phase2::Acking(_) => TaskState::Starting,
                            Phase2::Running(_) => TaskState::Running,
                        };
                        let (task_id, job, instance) = (t.task_id, t.job, t.instance);
                        self.status(task_id, job, instance, state, -1);
                    }
                }
            }
            P::Heartbeat => {}
            // The scheduler made these terminal statuses durable; a simulated agent keeps no
            // unacknowledged statuses (it does not reconnect), so there is nothing to drop.
            P::StatusAck => {
                let ack = message.payload_as_status_ack().expect("type checked");
                let ids = ack.task_ids().map_or(0, |v| v.len());
                let states = ack.states().map_or(0, |v| v.len());
                if ids != states {
                    self.error(format!("StatusAck with {ids} task ids but {states} states"));
                }
            }
            P::Error => {
                let e = message.payload_as_error().expect("type checked");
                self.error(format!("the scheduler sent an error: {}", e.message()));
            }
            other => self.error(format!(
                "unexpected {} message on an agent connection",
                other.variant_name().unwrap_or("unknown")
            )),
        }
    }

    fn error(&self, what: String) {
        self.shared
            .errors
            .push(format!("agent {}: {what}", self.name));
    }

    fn launch(&mut self, launch: wire::LaunchTask<'_>, now: Instant) {
        let shared = self.shared.clone();
        let task_id = launch.task_id();
        let instance = launch.instance();
        let Some((job_index, job)) = shared.job_by_key(launch.job_key()) else {
            self.local.placed += 1;
            self.error(format!(
                "launch of task {task_id:016x} of a job this run never submitted: {:?}",
                launch.job_key()
            ));
            return;
        };
        if job.update {
            self.local.update_launched += 1;
        } else {
            self.local.placed += 1;
        }
        let Some(record) = job.instances.get(instance as usize) else {
            self.error(format!(
                "launch of instance {instance} of {} which has {} instances",
                job.key,
                job.instances.len()
            ));
            return;
        };
        if self.tasks.iter().any(|t| t.task_id == task_id) {
            self.error(format!(
                "task {task_id:016x} ({}/{instance}) launched twice on this agent",
                job.key
            ));
            return;
        }
        let launches = record.launches.fetch_add(1, Relaxed);
        if job.update {
            // Replaced by every update: a launch after a kill is what it should see.
            let generation = update_generation(launch.config().command());
            match (generation, shared.update_job.get()) {
                (Some(generation), Some(u)) => {
                    if let Some(live) = u.live_generation.get(instance as usize) {
                        live.store(generation, Relaxed);
                    }
                }
                _ => self.error(format!(
                    "{}/{instance}: launch (task {task_id:016x}) of the updated job with command {:?}, which names no generation",
                    job.key,
                    launch.config().command()
                )),
            }
        } else if launches == 0 {
            let submitted = job.submitted_ns.load(Relaxed);
            let at = (now - shared.started).as_nanos() as u64;
            self.local
                .assigned_us
                .push(at.saturating_sub(submitted) / 1000);
        } else {
            self.local.relaunched += 1;
        }
        if !job.update && record.ends.load(Relaxed) > 0 {
            self.error(format!(
                "{}/{instance} launched again (task {task_id:016x}) after it ended",
                job.key
            ));
        }
        if record.active.swap(true, Relaxed) {
            self.error(format!(
                "{}/{instance} launched (task {task_id:016x}) while still active on another agent",
                job.key
            ));
        }
        // Resources: what the launch carries must be the job's, and must fit what is free.
        let resources = borealis_net::codec::resources_from_wire(launch.config().resources());
        if resources != job.resources {
            self.error(format!(
                "{}/{instance}: launch carries {resources:?}, the job asked for {:?}",
                job.key, job.resources
            ));
        }
        let free = if self.total.contains(&self.used) {
            self.total.minus(&self.used)
        } else {
            Resources::ZERO
        };
        if !free.contains(&resources) {
            self.error(format!(
                "over-committed: {}/{instance} needs {resources:?}, free {free:?} of {:?} ({} tasks running)",
                job.key,
                self.total,
                self.tasks.len()
            ));
        }
        self.used = self.used.plus(&resources);
        // Ports: as many as asked, in range, not in use here.
        let mut ports = Vec::new();
        for port in launch.ports().iter().flatten() {
            let port = port.port();
            if !(PORT_FIRST..=PORT_LAST).contains(&port) {
                self.error(format!(
                    "{}/{instance}: port {port} outside {PORT_FIRST}-{PORT_LAST}",
                    job.key
                ));
            } else if self.tasks.iter().any(|t| t.ports.contains(&port)) || ports.contains(&port) {
                self.error(format!(
                    "{}/{instance}: port {port} already in use on this agent",
                    job.key
                ));
            }
            ports.push(port);
        }
        if ports.len() != usize::from(resources.ports) {
            self.error(format!(
                "{}/{instance}: {} ports assigned for {} asked",
                job.key,
                ports.len(),
                resources.ports
            ));
        }
        self.check_constraint(job_index, job, instance);
        let fails = !job.update
            && fails(
                shared.config.seed,
                job_index,
                instance,
                launches,
                shared.config.failure_rate,
            );
        let ack_delay = Duration::from_millis(shared.config.ack_delay_ms);
        let phase = if ack_delay.is_zero() {
            self.start(task_id, job_index, instance, now)
        } else {
            Phase2::Acking(now + ack_delay)
        };
        self.tasks.push(SimTask {
            task_id,
            job: job_index,
            instance,
            resources,
            ports,
            phase,
            fails,
        });
    }

    fn check_constraint(&mut self, job_index: u32, job: &JobRecord, instance: u32) {
        if self.dedicated && !job.update {
            self.error(format!(
                "{}/{instance} placed on an agent dedicated to the updated job",
                job.key
            ));
        }
        if job.update && !self.dedicated && self.shared.config.update_agents > 0 {
            self.error(format!(
                "{}/{instance} of the updated job placed on an agent not dedicated to it",
                job.key
            ));
        }
        match job.constraint {
            ConstraintKind::Plain => {}
            ConstraintKind::Zone => {
                if self.zone != job.zone {
                    self.error(format!(
                        "{}/{instance} placed in zone z{}, the job is constrained to z{}",
                        job.key, self.zone, job.zone
                    ));
                }
            }
            ConstraintKind::HostLimit => {
                let here = self.tasks.iter().filter(|t| t.job == job_index).count() as u32;
                if here + 1 > HOST_LIMIT {
                    self.error(format!(
                        "{}/{instance}: {} instances on one host, the limit is {HOST_LIMIT}",
                        job.key,
                        here + 1
                    ));
                }
            }
            ConstraintKind::RackLimit => {
                let mut counts = job
                    .rack_counts
                    .as_ref()
                    .expect("rack-limited job has counts")
                    .lock()
                    .expect("rack counts lock");
                let n = counts.entry(self.rack).or_insert(0);
                *n += 1;
                if *n > RACK_LIMIT {
                    let n = *n;
                    drop(counts);
                    self.error(format!(
                        "{}/{instance}: {n} instances in rack r{}, the limit is {RACK_LIMIT}",
                        job.key, self.rack
                    ));
                }
            }
        }
    }

    /// Reports STARTING and RUNNING; returns the running phase, with when the task ends.
    fn start(&mut self, task_id: u64, job: u32, instance: u32, now: Instant) -> Phase2 {
        self.status(task_id, job, instance, TaskState::Starting, -1);
        self.status(task_id, job, instance, TaskState::Running, -1);
        let record = self.shared.jobs.get(job);
        if record.is_some_and(|j| j.update) {
            // The updated job's tasks run until an update replaces them.
            self.local.update_running += 1;
            return Phase2::Running(None);
        }
        self.local.running += 1;
        if let Some(job) = record {
            if job.instances[instance as usize].launches.load(Relaxed) == 1 {
                let at = (now - self.shared.started).as_nanos() as u64;
                let submitted = job.submitted_ns.load(Relaxed);
                self.local
                    .running_us
                    .push(at.saturating_sub(submitted) / 1000);
            }
        }
        let end = match self.shared.config.task_duration_ms {
            TaskDuration::Infinite => None,
            TaskDuration::Millis { min, max } => {
                self.rng = mix(self.rng);
                let ms = min + self.rng % (max - min + 1);
                Some(now + Duration::from_millis(ms))
            }
        };
        Phase2::Running(end)
    }

    /// Releases what task `i` holds here and forgets it.
    fn remove(&mut self, i: usize) -> SimTask {
        let task = self.tasks.swap_remove(i);
        self.used = Resources {
            cpu_millis: self
                .used
                .cpu_millis
                .saturating_sub(task.resources.cpu_millis),
            ram_mib: self.used.ram_mib.saturating_sub(task.resources.ram_mib),
            disk_mib: self.used.disk_mib.saturating_sub(task.resources.disk_mib),
            ports: self.used.ports.saturating_sub(task.resources.ports),
        };
        if let Some(job) = self.shared.jobs.get(task.job) {
            if let Some(counts) = &job.rack_counts {
                let mut counts = counts.lock().expect("rack counts lock");
                if let Some(n) = counts.get_mut(&self.rack) {
                    *n = n.saturating_sub(1);
                }
            }
            // Cleared before the terminal status is written, so the scheduler can only launch
            // the instance again after it is no longer active.
            job.instances[task.instance as usize]
                .active
                .store(false, Relaxed);
            if job.update {
                if let Some(live) = self
                    .shared
                    .update_job
                    .get()
                    .and_then(|u| u.live_generation.get(task.instance as usize))
                {
                    live.store(crate::shared::NO_GENERATION, Relaxed);
                }
            }
        }
        task
    }

    /// Sends due STARTING/RUNNING and ends due tasks. Returns the next instant something is due.
    fn advance(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut i = 0;
        while i < self.tasks.len() {
            match self.tasks[i].phase {
                Phase2::Acking(at) if at <= now => {
                    let t = &self.tasks[i];
                    let (task_id, job, instance) = (t.task_id, t.job, t.instance);
                    self.tasks[i].phase = self.start(task_id, job, instance, now);
                    continue;
                }
                Phase2::Running(Some(end)) if end <= now => {
                    let task = self.remove(i);
                    let (state, exit_code) = if task.fails {
                        self.local.failed += 1;
                        (TaskState::Failed, 1)
                    } else {
                        self.local.finished += 1;
                        (TaskState::Finished, 0)
                    };
                    if let Some(job) = self.shared.jobs.get(task.job) {
                        let record = &job.instances[task.instance as usize];
                        record.end_state.store(state as u8, Relaxed);
                        record.ends.fetch_add(1, Relaxed);
                    }
                    self.status(task.task_id, task.job, task.instance, state, exit_code);
                    continue;
                }
                Phase2::Acking(at) | Phase2::Running(Some(at)) => {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
                Phase2::Running(None) => {}
            }
            i += 1;
        }
        next
    }

    fn kill(&mut self, task_id: u64, job_key: &str) {
        let Some(i) = self.tasks.iter().position(|t| t.task_id == task_id) else {
            // Like the real agent: a task it does not know is LOST.
            let (job, instance) = self
                .shared
                .job_index(job_key)
                .map_or((u32::MAX, 0), |j| (j, 0));
            if job != u32::MAX {
                self.status(task_id, job, instance, TaskState::Lost, -1);
            }
            return;
        };
        let task = self.remove(i);
        if let Some(job) = self.shared.jobs.get(task.job).filter(|j| j.update) {
            // A rolling update replacing it.
            self.local.update_killed += 1;
            job.instances[task.instance as usize]
                .ends
                .fetch_add(1, Relaxed);
            self.status(task.task_id, task.job, task.instance, TaskState::Killed, -1);
            return;
        }
        self.local.killed += 1;
        let key = self
            .shared
            .jobs
            .get(task.job)
            .map_or_else(String::new, |j| j.key.to_string());
        self.error(format!(
            "the scheduler killed {key}/{} (task {task_id:016x}); the loadgen never asks for kills",
            task.instance
        ));
        self.status(task.task_id, task.job, task.instance, TaskState::Killed, -1);
    }

    /// Queues a `TaskStatus`, built in place (no intermediate structs).
    fn status(&mut self, task_id: u64, job: u32, instance: u32, state: TaskState, exit_code: i32) {
        let Some(record) = self.shared.jobs.get(job) else {
            return;
        };
        self.local.statuses += 1;
        ENCODER.with(|e| {
            let mut e = e.borrow_mut();
            let fbb = e.builder();
            fbb.reset();
            let job_key = fbb.create_string(&record.key);
            let payload = wire::TaskStatus::create(
                fbb,
                &wire::TaskStatusArgs {
                    task_id,
                    job_key: Some(job_key),
                    instance,
                    state: wire::TaskState(state as u8),
                    exit_code,
                    message: None,
                    timestamp_ms: wall_ms(),
                    sandbox: None,
                    usage: None,
                },
            );
            let bytes =
                e.finish_message(0, None, wire::Payload::TaskStatus, payload.as_union_value());
            self.writer
                .push(bytes)
                .expect("the loadgen's messages fit a frame");
        });
    }

    async fn flush(&mut self, stream: &mut Conn) -> Result<(), String> {
        if self.writer.is_empty() {
            return Ok(());
        }
        let bytes = self.writer.finish();
        let result = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(bytes)).await;
        self.writer.clear();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("connection lost while writing: {e}")),
            Err(_) => Err("a write to the scheduler took over 30 s".into()),
        }
    }

    /// Adds this wake-up's counts and latencies to the shared ones.
    fn publish(&mut self) {
        let l = &mut self.local;
        let c = &self.shared.counters;
        for (counter, value) in [
            (&c.placed, &mut l.placed),
            (&c.relaunched, &mut l.relaunched),
            (&c.running, &mut l.running),
            (&c.finished, &mut l.finished),
            (&c.failed, &mut l.failed),
            (&c.killed, &mut l.killed),
            (&c.statuses_sent, &mut l.statuses),
            (&c.update_launched, &mut l.update_launched),
            (&c.update_running, &mut l.update_running),
            (&c.update_killed, &mut l.update_killed),
        ] {
            if *value > 0 {
                counter.fetch_add(std::mem::take(value), Relaxed);
            }
        }
        if l.assigned_us.is_empty() && l.running_us.is_empty() {
            return;
        }
        let mut h = self.shared.latencies[self.index as usize % HISTOGRAM_SHARDS]
            .lock()
            .expect("latency lock");
        for us in l.assigned_us.drain(..) {
            h.submit_to_assigned_us.saturating_record(us.max(1));
        }
        for us in l.running_us.drain(..) {
            h.submit_to_running_us.saturating_record(us.max(1));
        }
    }
}

/// The generation an updated job's command names (`... generation N`), see
/// [`crate::update::update_command`].
pub fn update_generation(command: &str) -> Option<u32> {
    command
        .rsplit_once(crate::update::GENERATION_MARK)?
        .1
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn update_generations_are_read_back_from_commands() {
        for generation in [0, 1, 7, 4_000_000] {
            let command = crate::update::update_command(generation);
            assert_eq!(update_generation(&command), Some(generation), "{command}");
        }
        assert_eq!(
            update_generation("sleep 1 # borealis-loadgen: never run"),
            None
        );
        assert_eq!(update_generation("x generation y"), None);
    }

    #[test]
    fn update_agents_come_after_the_client_agents_and_are_uniform() {
        let config = crate::Config::parse_from([
            "borealis-loadgen",
            "--scheduler",
            "127.0.0.1:1",
            "--agents",
            "10",
            "--update",
            "during",
            "--update-agents",
            "5",
        ]);
        assert!(!is_update_agent(&config, 9));
        assert!(is_update_agent(&config, 10));
        let mean = agent_resources(&config, 10);
        assert_eq!(mean.cpu_millis, 16_000);
        assert_eq!(mean.ram_mib, 65_536);
        assert_eq!(agent_resources(&config, 14), mean);
    }
}
