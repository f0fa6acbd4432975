//! Rolling updates (`--update`): one service job of `--update-instances` whose tasks never end
//! by themselves, rolled by `StartUpdate` to a new command (one more "generation") and watched
//! with `QueryUpdates` until the update is final.
//!
//! A roll is timed from `StartUpdate`'s answer to the first `QueryUpdates` answer that says
//! ROLLED_FORWARD (at most `--update-poll-ms` late), and the scheduler's own figure (the update's
//! `updated_unix_ms - created_unix_ms`) is kept beside it. It counts only once verified: the
//! update's details say ROLLED_FORWARD with every instance of the job SUCCEEDED on the new
//! revision and none failed, and the simulated agents run every instance on the new generation.
//! Anything else is an error carrying the update's status, events and per-phase counts.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use borealis_core::update::{InstancePhase, UpdateSettings, UpdateStatus};
use borealis_core::{Constraint, JobKey, Resources, TaskConfig, TaskState, Tier};
use borealis_net::codec::to_owned;
use borealis_net::views::{OwnedMessage, UpdateInfoView};
use borealis_net::{Encoder, FrameDecoder, FrameWriter};
use serde::Serialize;
use tokio::sync::watch;

use crate::agent::UPDATE_DEDICATED_VALUE;
use crate::client;
use crate::config::ConstraintKind;
use crate::conn::Conn;
use crate::shared::{InstanceRecord, JobRecord, Shared, UpdateJob};
use crate::Phase;

/// What precedes the generation number in the updated job's command.
pub const GENERATION_MARK: &str = " generation ";
/// The updated job's task: one core, 1 GiB, one port (an agent of the mean size holds 16).
const UPDATE_TASK: Resources = Resources {
    cpu_millis: 1000,
    ram_mib: 1024,
    disk_mib: 256,
    ports: 1,
};
/// How often the job's coming up is looked at.
const READY_POLL: Duration = Duration::from_millis(20);
/// Events of a failed update quoted in its error.
const EVENTS_QUOTED: usize = 5;

/// The command of the updated job's generation `generation` (0: as created).
pub fn update_command(generation: u32) -> String {
    format!("sleep infinity # borealis-loadgen updated job,{GENERATION_MARK}{generation}")
}

/// The updated job's config at `generation`: only the command changes between generations.
pub fn update_task_config(shared: &Shared, key: &JobKey, generation: u32) -> TaskConfig {
    let constraints = if shared.config.update_agents > 0 {
        vec![Constraint::Value {
            attribute: borealis_core::DEDICATED_ATTRIBUTE.into(),
            negated: false,
            values: vec![UPDATE_DEDICATED_VALUE.into()],
        }]
    } else {
        Vec::new()
    };
    TaskConfig {
        job: key.clone(),
        command: update_command(generation),
        resources: UPDATE_TASK,
        port_names: vec!["http".into()],
        constraints,
        tier: Tier::Preferred,
        priority: 0,
        production: false,
        is_service: true,
        max_task_failures: -1,
        finalization_wait_secs: 0,
        health_check: None,
        http_lifecycle: None,
        sla_policy: None,
        partition_policy: None,
    }
}

/// Puts the updated job in the job table (before any client job: the agents look jobs up
/// there) and returns its key.
pub fn register_job(shared: &Shared) -> JobKey {
    let index = shared.next_job.fetch_add(1, Relaxed);
    let instances = shared.config.update_instances;
    let key_text = shared.job_key(index);
    let key: JobKey = key_text.parse().expect("loadgen job keys are valid");
    shared.jobs.insert(
        index,
        JobRecord {
            key: key_text.into_boxed_str(),
            resources: UPDATE_TASK,
            constraint: ConstraintKind::Plain,
            zone: 0,
            instances: (0..instances).map(|_| InstanceRecord::default()).collect(),
            rack_counts: None,
            submitted_ns: Default::default(),
            reply: Default::default(),
            update: true,
        },
    );
    assert!(
        shared
            .update_job
            .set(UpdateJob::new(index, instances))
            .is_ok(),
        "one updated job a run"
    );
    key
}

/// One verified update.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UpdateRun {
    pub update_id: u64,
    /// The generation it rolled to.
    pub generation: u32,
    /// From `StartUpdate`'s answer to the first `QueryUpdates` answer saying ROLLED_FORWARD.
    pub secs: f64,
    /// `instances / secs`.
    pub instances_per_sec: f64,
    /// The scheduler's own figure: `updated_unix_ms - created_unix_ms` (ms resolution).
    pub scheduler_secs: f64,
    /// From writing `StartUpdate` to its answer.
    pub ack_ms: f64,
    /// `QueryUpdates` asked while it rolled.
    pub polls: u64,
    /// Launches and kills of the job's tasks the agents saw during the roll.
    pub launches: u64,
    pub kills: u64,
    /// When it was sent and seen done, in seconds since the loadgen started.
    pub sent_at_secs: f64,
    pub done_at_secs: f64,
}

/// The problems with a final update that should have rolled `instances` instances forward.
pub fn check_rolled_forward(view: &UpdateInfoView, instances: u32) -> Vec<String> {
    let u = &view.update;
    let mut problems = Vec::new();
    if u.status != UpdateStatus::RolledForward {
        let last = u
            .events
            .last()
            .map(|e| format!(" (last event: {} {:?})", e.status, e.message))
            .unwrap_or_default();
        problems.push(format!(
            "status {} (expected ROLLED_FORWARD){last}",
            u.status
        ));
    }
    if u.failed_instances != 0 {
        problems.push(format!("{} failed instances", u.failed_instances));
    }
    if u.instances_after != instances {
        problems.push(format!(
            "instances_after {} (expected {instances})",
            u.instances_after
        ));
    }
    if u.instances.len() != instances as usize {
        problems.push(format!(
            "the details list {} instances (expected {instances})",
            u.instances.len()
        ));
    }
    if !u
        .instances
        .iter()
        .enumerate()
        .all(|(i, p)| p.instance as usize == i)
    {
        problems.push("the details' instances are not 0..instances in order".into());
    }
    let mut phases = [0u32; 4];
    let mut wrong_to = 0;
    let mut unchanged = 0;
    for p in &u.instances {
        phases[p.phase as usize] += 1;
        if p.to != Some(u.to_rev) {
            wrong_to += 1;
        }
        if p.from == p.to {
            unchanged += 1;
        }
    }
    let succeeded = phases[InstancePhase::Succeeded as usize];
    if succeeded as usize != u.instances.len() {
        problems.push(format!(
            "{succeeded} of {} instances SUCCEEDED ({})",
            u.instances.len(),
            phase_counts_text(&phases)
        ));
    }
    if wrong_to > 0 {
        problems.push(format!(
            "{wrong_to} instances not rolled to the update's revision {}",
            u.to_rev
        ));
    }
    if unchanged > 0 {
        problems.push(format!(
            "{unchanged} instances with the same revision before and after (the config did not change)"
        ));
    }
    problems
}

fn phase_counts_text(phases: &[u32; 4]) -> String {
    [
        InstancePhase::Waiting,
        InstancePhase::InFlight,
        InstancePhase::Succeeded,
        InstancePhase::Failed,
    ]
    .iter()
    .map(|&p| format!("{} {}", p.as_str(), phases[p as usize]))
    .collect::<Vec<_>>()
    .join(", ")
}

/// An update's state in one line, for an error: status, in flight, phases, the last events.
pub fn describe(view: &UpdateInfoView) -> String {
    let u = &view.update;
    let mut phases = [0u32; 4];
    for p in &u.instances {
        phases[p.phase as usize] += 1;
    }
    let events: Vec<String> = u
        .events
        .iter()
        .rev()
        .take(EVENTS_QUOTED)
        .rev()
        .map(|e| format!("{} at {} ms: {:?}", e.status, e.unix_ms, e.message))
        .collect();
    format!(
        "update {} of {}: status {}, {} in flight, {} failed instances, rev -> {}; instances: {}; events: [{}]",
        u.id,
        view.job_key,
        u.status,
        view.in_flight,
        u.failed_instances,
        u.to_rev,
        if u.instances.is_empty() {
            "not listed".to_string()
        } else {
            phase_counts_text(&phases)
        },
        events.join("; ")
    )
}

/// None when every instance's live task runs `generation`; else what differs.
pub fn check_generations(generations: &[u32], generation: u32) -> Option<String> {
    let off: Vec<(usize, u32)> = generations
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, g)| g != generation)
        .collect();
    if off.is_empty() {
        return None;
    }
    let examples: Vec<String> = off
        .iter()
        .take(5)
        .map(|&(i, g)| match g {
            crate::shared::NO_GENERATION => format!("instance {i}: no live task"),
            g => format!("instance {i}: generation {g}"),
        })
        .collect();
    Some(format!(
        "{} of {} instances are not live on generation {generation} at the agents (e.g. {})",
        off.len(),
        generations.len(),
        examples.join(", ")
    ))
}

/// The median (the mean of the middle two for an even count); None when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// The share of `[from, to]` covered by the union of `intervals` (each `(start, end)`).
pub fn coverage(intervals: &[(f64, f64)], from: f64, to: f64) -> f64 {
    if to <= from {
        return 0.0;
    }
    let mut clipped: Vec<(f64, f64)> = intervals
        .iter()
        .map(|&(a, b)| (a.max(from), b.min(to)))
        .filter(|(a, b)| b > a)
        .collect();
    clipped.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut covered = 0.0;
    let mut current: Option<(f64, f64)> = None;
    for (a, b) in clipped {
        match current {
            Some((ca, cb)) if a <= cb => current = Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                covered += cb - ca;
                current = Some((a, b));
            }
            None => current = Some((a, b)),
        }
    }
    if let Some((a, b)) = current {
        covered += b - a;
    }
    covered / (to - from)
}

/// One client connection, one request at a time.
struct Rpc {
    stream: Conn,
    encoder: Encoder,
    writer: FrameWriter,
    decoder: FrameDecoder,
    next_id: u64,
}

impl Rpc {
    async fn connect(shared: &Shared) -> Result<Rpc, String> {
        Ok(Rpc {
            stream: client::connect(shared).await?,
            encoder: Encoder::new(),
            writer: FrameWriter::new(),
            decoder: FrameDecoder::new(),
            next_id: 1,
        })
    }

    /// Sends one request and waits (until `deadline`) for the answer carrying its request id.
    /// An answer with request id 0 is taken as well (the only request in flight on this
    /// connection), and the second value says so.
    async fn call(
        &mut self,
        what: &str,
        build: impl FnOnce(&mut Encoder, u64) -> Vec<u8>,
        deadline: Instant,
    ) -> Result<(OwnedMessage, bool), String> {
        let id = self.next_id;
        self.next_id += 1;
        let bytes = build(&mut self.encoder, id);
        self.writer
            .push(&bytes)
            .map_err(|e| format!("{what}: {e}"))?;
        client::write(&mut self.stream, &mut self.writer)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        // Messages that were not the answer: how many, and the last one's type and id.
        let mut skipped = 0u64;
        let mut last_skipped = String::new();
        // A big job status comes in parts: put together, it is the answer.
        let mut parts = borealis_net::views::JobStatusParts::default();
        loop {
            let mut found: Option<Result<(OwnedMessage, bool), String>> = None;
            client::each_message(&mut self.decoder, |message| {
                let request_id = message.request_id();
                if found.is_none() && (request_id == id || request_id == 0) {
                    found = match to_owned(message) {
                        Ok((_, owned)) => parts
                            .feed(request_id, owned)
                            .map(|owned| Ok((owned, request_id == 0))),
                        Err(e) => Some(Err(format!("{what}: bad answer: {e}"))),
                    };
                } else {
                    skipped += 1;
                    last_skipped = format!(
                        "{} with request id {request_id}",
                        message.payload_type().variant_name().unwrap_or("unknown")
                    );
                }
            })
            .map_err(|e| format!("{what}: {e}"))?;
            if let Some(answer) = found {
                return answer;
            }
            let read = self.stream.fill(&mut self.decoder, usize::MAX);
            match tokio::time::timeout_at(deadline.into(), read).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("{what}: {e}")),
                Err(_) => {
                    let others = if skipped == 0 {
                        "nothing else arrived on the connection".to_string()
                    } else {
                        format!("{skipped} other messages arrived (the last: {last_skipped})")
                    };
                    return Err(format!(
                        "{what} (request id {id}): no answer by the deadline; {others}"
                    ));
                }
            }
        }
    }
}

fn unexpected(what: &str, message: &OwnedMessage) -> String {
    match message {
        OwnedMessage::Error { code, message, .. } => {
            format!("{what} refused: {code:?}: {message}")
        }
        other => format!("{what} answered with {}", message_name(other)),
    }
}

fn message_name(message: &OwnedMessage) -> String {
    let text = format!("{message:?}");
    text.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("unknown")
        .to_string()
}

/// Creates, watches and rolls the updated job over its own connection.
pub struct Driver {
    shared: Arc<Shared>,
    rpc: Rpc,
    key: JobKey,
    /// Oddities of the scheduler's answers, each noted once.
    pub notes: Vec<String>,
    /// The generation the job's instances should run.
    pub generation: u32,
    /// Updates verified.
    pub completed: u32,
}

impl Driver {
    pub async fn connect(shared: Arc<Shared>, key: JobKey) -> Result<Driver, String> {
        let rpc = Rpc::connect(&shared)
            .await
            .map_err(|e| format!("update driver: {e}"))?;
        Ok(Driver {
            shared,
            rpc,
            key,
            notes: Vec::new(),
            generation: 0,
            completed: 0,
        })
    }

    fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs_f64(self.shared.config.update_timeout_secs)
    }

    fn instances(&self) -> u32 {
        self.shared.config.update_instances
    }

    fn generations(&self) -> Vec<u32> {
        self.shared
            .update_job
            .get()
            .map(UpdateJob::generations)
            .unwrap_or_default()
    }

    /// Creates the job and waits until every instance is RUNNING (at the agents, then in the
    /// scheduler's counts). Returns how long that took.
    pub async fn create_and_wait(&mut self) -> Result<f64, String> {
        let started = Instant::now();
        let deadline = self.deadline();
        let config = update_task_config(&self.shared, &self.key, 0);
        let n = self.instances();
        let (answer, _) = self
            .rpc
            .call(
                "CreateJob of the updated job",
                |e, id| e.create_job(id, n, &config).to_vec(),
                deadline,
            )
            .await?;
        if !matches!(answer, OwnedMessage::Ack) {
            return Err(unexpected("CreateJob of the updated job", &answer));
        }
        loop {
            if check_generations(&self.generations(), 0).is_none() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the updated job {} did not come up within {:.0} s: {}",
                    self.key,
                    self.shared.config.update_timeout_secs,
                    check_generations(&self.generations(), 0).unwrap_or_default()
                ));
            }
            tokio::time::sleep(READY_POLL).await;
        }
        loop {
            let key = self.key.clone();
            let (answer, _) = self
                .rpc
                .call(
                    "QueryJob of the updated job",
                    |e, id| e.query_job(id, &key).to_vec(),
                    deadline,
                )
                .await?;
            let OwnedMessage::JobStatus(status) = &answer else {
                return Err(unexpected("QueryJob of the updated job", &answer));
            };
            let running = status.job.state_counts[TaskState::Running as usize];
            if running == n {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the scheduler counts {running} of {n} instances of {} RUNNING after {:.0} s (the agents run all)",
                    self.key, self.shared.config.update_timeout_secs
                ));
            }
            tokio::time::sleep(READY_POLL).await;
        }
        Ok(started.elapsed().as_secs_f64())
    }

    async fn query(
        &mut self,
        update_id: u64,
        details: bool,
        deadline: Instant,
    ) -> Result<UpdateInfoView, String> {
        let key = self.key.clone();
        let (answer, _) = self
            .rpc
            .call(
                "QueryUpdates",
                |e, id| e.query_updates(id, Some(&key), update_id, details).to_vec(),
                deadline,
            )
            .await?;
        let OwnedMessage::UpdateList(list) = answer else {
            return Err(unexpected("QueryUpdates", &answer));
        };
        let count = list.len();
        list.into_iter()
            .find(|u| u.update.id == update_id)
            .ok_or_else(|| {
                format!(
                    "QueryUpdates of {} update {update_id}: not among the {count} listed",
                    self.key
                )
            })
    }

    /// Rolls the job to the next generation and verifies it.
    pub async fn roll(&mut self) -> Result<UpdateRun, String> {
        let generation = self.generation + 1;
        let n = self.instances();
        let config = update_task_config(&self.shared, &self.key, generation);
        let config_ref = &self.shared.config;
        let settings = UpdateSettings {
            batch_size: config_ref.update_batch_size,
            watch_secs: config_ref.update_watch_secs,
            ..UpdateSettings::default()
        };
        let poll = Duration::from_millis(config_ref.update_poll_ms);
        let deadline = self.deadline();
        let shared = self.shared.clone();
        let counters = &shared.counters;
        let (launches0, kills0) = (
            counters.update_launched.load(Relaxed),
            counters.update_killed.load(Relaxed),
        );
        let sent = Instant::now();
        let key = self.key.clone();
        let message = format!("borealis-loadgen: generation {generation}");
        let (answer, id_zero) = self
            .rpc
            .call(
                "StartUpdate",
                |e, id| {
                    e.start_update(id, &key, n, &config, &settings, &[], &message)
                        .to_vec()
                },
                deadline,
            )
            .await?;
        let acked = Instant::now();
        if id_zero {
            self.note("StartUpdate was answered with request id 0, not the request's id (a client matching answers by id, as the CLI does, never sees it)".into());
        }
        let view = match answer {
            OwnedMessage::UpdateInfo(view) => view,
            OwnedMessage::UpdateList(mut list) if list.len() == 1 => {
                self.note(
                    "StartUpdate was answered with an UpdateList of one update, not UpdateInfo (the schema and the CLI expect UpdateInfo)"
                        .into(),
                );
                list.remove(0)
            }
            other => return Err(unexpected("StartUpdate", &other)),
        };
        let update_id = view.update.id;
        let mut polls = 0;
        let final_view = loop {
            if view.update.status.is_terminal() {
                break view.clone();
            }
            tokio::time::sleep(poll).await;
            let trace = shared.config.update_trace;
            let now = self.query(update_id, trace, deadline).await?;
            polls += 1;
            if trace {
                let g = self.generations();
                let new = g.iter().filter(|&&x| x == generation).count();
                let none = g
                    .iter()
                    .filter(|&&x| x == crate::shared::NO_GENERATION)
                    .count();
                eprintln!(
                    "[update trace {:8.1} ms] agents: {new} on generation {generation}, {none} with no live task | {}",
                    acked.elapsed().as_secs_f64() * 1000.0,
                    describe(&now)
                );
            }
            if now.update.status.is_terminal() {
                break now;
            }
            if Instant::now() >= deadline {
                let details = self.query(update_id, true, self.deadline()).await;
                let state = details.as_ref().map_or_else(|e| e.clone(), describe);
                return Err(format!(
                    "update {update_id} of {} (generation {generation}) not final after {:.0} s: {state}; agents: {}",
                    self.key,
                    self.shared.config.update_timeout_secs,
                    check_generations(&self.generations(), generation)
                        .unwrap_or_else(|| "every instance on the new generation".into())
                ));
            }
        };
        let done = Instant::now();
        let secs = (done - acked).as_secs_f64();
        let details = self.query(update_id, true, self.deadline()).await?;
        let mut problems = check_rolled_forward(&details, n);
        if let Some(p) = check_generations(&self.generations(), generation) {
            problems.push(p);
        }
        if !problems.is_empty() {
            return Err(format!(
                "update {update_id} of {} (generation {generation}) is wrong: {}; {}",
                self.key,
                problems.join("; "),
                describe(&details)
            ));
        }
        self.generation = generation;
        self.completed += 1;
        let at = |t: Instant| (t - shared.started).as_secs_f64();
        let u = &final_view.update;
        Ok(UpdateRun {
            update_id,
            generation,
            secs,
            instances_per_sec: f64::from(n) / secs.max(1e-9),
            scheduler_secs: u.updated_unix_ms.saturating_sub(u.created_unix_ms) as f64 / 1000.0,
            ack_ms: (acked - sent).as_secs_f64() * 1000.0,
            polls,
            launches: counters.update_launched.load(Relaxed) - launches0,
            kills: counters.update_killed.load(Relaxed) - kills0,
            sent_at_secs: at(sent),
            done_at_secs: at(done),
        })
    }

    /// Rolls updates back to back while the phase is `Run` (the one under way when it ends is
    /// finished). Returns the verified ones and the first error.
    pub async fn roll_through_window(
        &mut self,
        phase: &watch::Receiver<Phase>,
    ) -> (Vec<UpdateRun>, Option<String>) {
        let mut runs = Vec::new();
        while *phase.borrow() == Phase::Run {
            match self.roll().await {
                Ok(run) => {
                    if !self.shared.config.quiet {
                        eprintln!(
                            "[update] {} of {} instances rolled to generation {} in {:.3} s",
                            run.update_id,
                            self.instances(),
                            run.generation,
                            run.secs
                        );
                    }
                    runs.push(run);
                }
                Err(e) => return (runs, Some(e)),
            }
        }
        (runs, None)
    }

    /// The end-of-run check of the job at the agents: each instance launched once more than
    /// it was killed, once per verified update plus its first launch, and live on the last
    /// generation.
    pub fn final_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(job) = self
            .shared
            .update_job
            .get()
            .and_then(|u| self.shared.jobs.get(u.index))
        else {
            return vec!["the updated job is not in the job table".into()];
        };
        let want_launches = self.completed + 1;
        let mut wrong = 0;
        let mut example = None;
        for (i, record) in job.instances.iter().enumerate() {
            let (launches, kills) = (record.launches.load(Relaxed), record.ends.load(Relaxed));
            if launches != want_launches || kills != self.completed {
                wrong += 1;
                example.get_or_insert(format!("instance {i}: {launches} launches, {kills} kills"));
            }
        }
        if wrong > 0 {
            problems.push(format!(
                "updated job: {wrong} instances not launched {want_launches} and killed {} times (one replacement per update; e.g. {})",
                self.completed,
                example.unwrap_or_default()
            ));
        }
        if let Some(p) = check_generations(&self.generations(), self.generation) {
            problems.push(format!("updated job: {p}"));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use borealis_core::update::{InstanceProgress, JobUpdate, UpdateEvent};

    use super::*;

    fn view(status: UpdateStatus, instances: u32, phase: InstancePhase) -> UpdateInfoView {
        UpdateInfoView {
            job_key: "loadgen/test/r1-j0".into(),
            update: JobUpdate {
                id: 3,
                job: "loadgen/test/r1-j0".into(),
                settings: UpdateSettings::default(),
                status,
                instances_before: instances,
                instances_after: instances,
                to_rev: 2,
                instances: (0..instances)
                    .map(|instance| InstanceProgress {
                        instance,
                        from: Some(1),
                        to: Some(2),
                        phase,
                        failures: 0,
                        in_rollback: false,
                    })
                    .collect(),
                failed_instances: 0,
                created_unix_ms: 1_000,
                updated_unix_ms: 2_500,
                events: vec![UpdateEvent {
                    unix_ms: 2_500,
                    status,
                    message: "every instance updated".into(),
                }],
                last_pulse_us: None,
                watching: Vec::new(),
            },
            in_flight: 0,
            configs: Vec::new(),
        }
    }

    #[test]
    fn a_complete_roll_forward_passes() {
        let v = view(UpdateStatus::RolledForward, 4000, InstancePhase::Succeeded);
        assert_eq!(check_rolled_forward(&v, 4000), Vec::<String>::new());
    }

    #[test]
    fn wrong_status_phases_and_counts_are_named() {
        let v = view(UpdateStatus::RolledBack, 10, InstancePhase::Succeeded);
        let p = check_rolled_forward(&v, 10);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("status ROLLED_BACK"), "{p:?}");

        let mut v = view(UpdateStatus::RolledForward, 10, InstancePhase::Succeeded);
        v.update.instances[3].phase = InstancePhase::Failed;
        v.update.instances[4].phase = InstancePhase::InFlight;
        v.update.failed_instances = 1;
        let p = check_rolled_forward(&v, 10);
        assert!(p.iter().any(|p| p == "1 failed instances"), "{p:?}");
        assert!(
            p.iter()
                .any(|p| p.starts_with("8 of 10 instances SUCCEEDED")
                    && p.contains("IN_FLIGHT 1")
                    && p.contains("FAILED 1")),
            "{p:?}"
        );

        // Fewer instances listed than the job has (e.g. details not asked for).
        let v = view(UpdateStatus::RolledForward, 0, InstancePhase::Succeeded);
        let p = check_rolled_forward(&v, 4000);
        assert!(p.iter().any(|p| p.contains("instances_after 0")), "{p:?}");
        assert!(p.iter().any(|p| p.contains("list 0 instances")), "{p:?}");

        // An instance left on its old revision, and one that did not change.
        let mut v = view(UpdateStatus::RolledForward, 4, InstancePhase::Succeeded);
        v.update.instances[1].to = Some(1);
        let p = check_rolled_forward(&v, 4);
        assert!(
            p.iter().any(|p| p.starts_with("1 instances not rolled")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|p| p.starts_with("1 instances with the same")),
            "{p:?}"
        );

        // Out of order.
        let mut v = view(UpdateStatus::RolledForward, 3, InstancePhase::Succeeded);
        v.update.instances.swap(0, 2);
        assert!(check_rolled_forward(&v, 3)
            .iter()
            .any(|p| p.contains("not 0..instances")));
    }

    #[test]
    fn describe_names_status_phases_and_events() {
        let mut v = view(UpdateStatus::RollingForward, 5, InstancePhase::Waiting);
        v.update.instances[0].phase = InstancePhase::InFlight;
        v.in_flight = 1;
        let text = describe(&v);
        assert!(text.contains("status ROLLING_FORWARD"), "{text}");
        assert!(text.contains("1 in flight"), "{text}");
        assert!(
            text.contains("WAITING 4, IN_FLIGHT 1, SUCCEEDED 0, FAILED 0"),
            "{text}"
        );
        assert!(text.contains("every instance updated"), "{text}");
        v.update.instances.clear();
        assert!(describe(&v).contains("instances: not listed"));
    }

    #[test]
    fn generations_are_checked_per_instance() {
        assert_eq!(check_generations(&[2, 2, 2], 2), None);
        let p = check_generations(&[2, 1, crate::shared::NO_GENERATION], 2).unwrap();
        assert!(p.starts_with("2 of 3 instances"), "{p}");
        assert!(p.contains("instance 1: generation 1"), "{p}");
        assert!(p.contains("instance 2: no live task"), "{p}");
        assert_eq!(check_generations(&[], 0), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
    }

    #[test]
    fn coverage_is_the_union_clipped_to_the_window() {
        assert_eq!(coverage(&[], 0.0, 10.0), 0.0);
        assert_eq!(coverage(&[(0.0, 10.0)], 0.0, 10.0), 1.0);
        // Clipped on both sides.
        assert_eq!(coverage(&[(-5.0, 2.0), (8.0, 20.0)], 0.0, 10.0), 0.4);
        // Overlaps count once; unsorted input.
        assert_eq!(coverage(&[(4.0, 6.0), (1.0, 5.0)], 0.0, 10.0), 0.5);
        // Back-to-back updates with gaps.
        let c = coverage(&[(0.1, 3.0), (3.1, 6.0), (6.1, 9.0)], 0.0, 10.0);
        assert!((c - 0.87).abs() < 1e-9, "{c}");
        assert_eq!(coverage(&[(1.0, 2.0)], 5.0, 5.0), 0.0);
    }

    #[test]
    fn configs_differ_only_in_the_command() {
        let config = crate::Config::new("127.0.0.1:1");
        let shared = Shared::new(config, 1);
        let key: JobKey = "loadgen/test/r1-j0".parse().unwrap();
        let a = update_task_config(&shared, &key, 0);
        let b = update_task_config(&shared, &key, 1);
        assert_ne!(a.command, b.command);
        assert_eq!(
            TaskConfig {
                command: a.command.clone(),
                ..b.clone()
            },
            a
        );
        assert!(a.is_service);
        borealis_core::validate::validate_task_config(&a).unwrap();
        // Dedicated agents by default; none when sharing.
        assert_eq!(a.constraints.len(), 1);
        let mut config = crate::Config::new("127.0.0.1:1");
        config.update_agents = 0;
        let shared = Shared::new(config, 1);
        assert!(update_task_config(&shared, &key, 0).constraints.is_empty());
    }
}
