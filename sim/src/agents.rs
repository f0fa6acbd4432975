//! Simulated agents: what `agent/src/agent.rs` does, without processes.
//!
//! An agent registers with its resources, attributes and every task it knows; runs what it is
//! launched (STARTING, then RUNNING, then per the task's plan FINISHED or FAILED, or running
//! until killed); answers `KillTask` with KILLED (an unknown task with LOST, a task that
//! already ended with its end again); keeps each terminal status until a `StatusAck` names it
//! in that state, and reports it again at every registration. Faults it can be told to
//! commit: lose `StatusAck`s (it then reports the unacknowledged ends again), duplicate and
//! reorder the status updates it sends.
//!
//! A terminal status carries the task's usage, as the real agent measures it: drawn from the
//! seed and the task's simulated run (see [`usage`]), so a run repeats exactly.
//!
//! An agent never touches the world: it changes its own state, queues statuses in its
//! outbox and returns the timers it wants; the world delivers both.

use std::collections::{BTreeMap, VecDeque};

use borealis_core::{Attributes, Resources, TaskId, TaskState, TaskUsage};
use borealis_net::views::{AgentRegistration, LaunchView, TaskStatusReport};

use crate::rng::{mix, Rng};

/// Acknowledged terminal tasks an agent remembers (to answer a kill of one with its end).
const ACKED_HISTORY_MAX: usize = 64;
/// How long an agent waits for the ack of a terminal status it sent before sending it again
/// (only after an ack was lost: see [`SimAgent::lose_acks`]).
pub const ACK_RESEND_MS: u64 = 1_000;
/// Time between heartbeats while connected (the real agent's `HEARTBEAT_INTERVAL`).
pub const HEARTBEAT_MS: u64 = 5_000;
const BACKOFF_MIN_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 2_000;

/// A simulated agent's identity and capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSpec {
    pub name: String,
    pub resources: Resources,
    pub attributes: Attributes,
    pub port_ranges: Vec<(u16, u16)>,
}

impl AgentSpec {
    /// An agent with `host` set to its name and the given extra attributes.
    pub fn new(name: &str, resources: Resources, attributes: &[(&str, &str)]) -> AgentSpec {
        let mut attrs: Attributes = vec![("host".to_string(), name.to_string())];
        attrs.extend(
            attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        AgentSpec {
            name: name.to_string(),
            port_ranges: vec![(31_000, 31_000 + resources.ports.min(1000) - 1)]
                .into_iter()
                .filter(|_| resources.ports > 0)
                .collect(),
            resources,
            attributes: attrs,
        }
    }
}

/// How a launched task behaves, carried in its command (`sim run`, `sim finish MS`,
/// `sim fail MS`, `sim random`): the agent "runs" the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskPlan {
    /// Runs until killed.
    RunForever,
    /// Exits 0 after this many ms of running.
    FinishAfter(u64),
    /// Exits 1 after this many ms of running.
    FailAfter(u64),
    /// The seed decides, per task id.
    Random,
}

impl TaskPlan {
    pub fn command(self) -> String {
        match self {
            TaskPlan::RunForever => "sim run".into(),
            TaskPlan::FinishAfter(ms) => format!("sim finish {ms}"),
            TaskPlan::FailAfter(ms) => format!("sim fail {ms}"),
            TaskPlan::Random => "sim random".into(),
        }
    }

    pub fn parse(command: &str) -> TaskPlan {
        let mut words = command.split_whitespace().skip(1);
        let verb = words.next().unwrap_or("run");
        let ms = words.next().and_then(|w| w.parse().ok()).unwrap_or(1000);
        match verb {
            "finish" => TaskPlan::FinishAfter(ms),
            "fail" => TaskPlan::FailAfter(ms),
            "random" => TaskPlan::Random,
            _ => TaskPlan::RunForever,
        }
    }
}

/// What a task does once launched: its start delay and how it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fate {
    start_ms: u64,
    /// None: runs until killed.
    end: Option<(u64, TaskState)>,
}

fn fate(seed: u64, task: TaskId, plan: TaskPlan, is_service: bool) -> Fate {
    let mut rng = Rng::new(mix(&[seed, task.0, 0xfa7e]));
    let start_ms = rng.below(400);
    let end = match plan {
        TaskPlan::RunForever => None,
        TaskPlan::FinishAfter(ms) => Some((ms, TaskState::Finished)),
        TaskPlan::FailAfter(ms) => Some((ms, TaskState::Failed)),
        TaskPlan::Random => {
            let roll = rng.below(100);
            if roll < 5 {
                Some((0, TaskState::Failed))
            } else if is_service {
                (roll < 30).then(|| (rng.range(1_000, 40_000), TaskState::Failed))
            } else if roll < 60 {
                Some((rng.range(500, 30_000), TaskState::Finished))
            } else if roll < 80 {
                Some((rng.range(500, 30_000), TaskState::Failed))
            } else {
                None
            }
        }
    };
    Fate { start_ms, end }
}

/// How long a kill takes on the agent (SIGTERM, the task's finalization, the reap): the
/// command's `kill=MS` when it has one, else drawn from the seed.
fn kill_ms(seed: u64, task: TaskId, command_kill_ms: Option<u64>) -> u64 {
    command_kill_ms.unwrap_or_else(|| mix(&[seed, task.0, 0x4b11]) % 800)
}

/// What a task that ran `run_ms` (from RUNNING to its end) used, deterministic in the seed and
/// the task: CPU time at 10% to 100% of its CPU share over the run, a peak memory of 10% to
/// 90% of its RAM (never above it), and a sandbox of at most a tenth of its disk.
pub fn usage(seed: u64, task: TaskId, resources: &Resources, run_ms: u64) -> TaskUsage {
    const MIB: u64 = 1 << 20;
    let mut rng = Rng::new(mix(&[seed, task.0, 0x05a9e]));
    let busy_percent = rng.range(10, 100);
    let memory_percent = rng.range(10, 90);
    let disk_permille = rng.below(101);
    TaskUsage {
        cpu_time_ms: run_ms * u64::from(resources.cpu_millis) / 1000 * busy_percent / 100,
        peak_memory_bytes: u64::from(resources.ram_mib) * MIB * memory_percent / 100,
        disk_bytes: u64::from(resources.disk_mib) * MIB * disk_permille / 1000,
    }
}

/// A command's `kill=MS` word: how long killing the task takes.
pub fn command_kill_ms(command: &str) -> Option<u64> {
    command
        .split_whitespace()
        .find_map(|w| w.strip_prefix("kill=")?.parse().ok())
}

/// One task as the agent knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentTask {
    pub job_key: String,
    pub instance: u32,
    pub state: TaskState,
    pub exit_code: i32,
    pub resources: Resources,
    pub sandbox: String,
    /// A terminal status the scheduler acknowledged (no more reports).
    pub acked: bool,
    /// A kill is under way (its timer is armed).
    pub killing: bool,
    /// The STARTING → RUNNING timer is armed.
    pub starting: bool,
    /// When (simulated ms) it became RUNNING; None before.
    pub running_since_ms: Option<u64>,
    /// What it used, once it ended (reported with its end).
    pub usage: Option<TaskUsage>,
    /// When (ms after RUNNING) and how the task ends by itself; None: runs until killed.
    end: Option<(u64, TaskState)>,
    /// How long a kill takes, when the command says.
    kill_ms: Option<u64>,
    /// The tier, priority and production flag the scheduler launched it with (its job's,
    /// with the tier resolved).
    pub tier: borealis_core::Tier,
    pub priority: i32,
    pub production: bool,
}

impl AgentTask {
    pub fn is_live(&self) -> bool {
        !self.state.is_terminal()
    }
}

/// The timers an agent arms; the world fires them back at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentTimer {
    Running(TaskId),
    End(TaskId, TaskState),
    Killed(TaskId),
    /// Report every unacknowledged end again (after a lost ack).
    Resend,
}

/// Where an agent's connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Not connected; a connect timer may be armed.
    Down,
    /// Connected (the world's connection key), registration sent.
    Up { session: u64, registered: bool },
}

#[derive(Debug)]
pub struct SimAgent {
    pub spec: AgentSpec,
    seed: u64,
    /// The agent process runs (false before its first start and while it is dead).
    pub alive: bool,
    /// Bumped when the process dies: timers of an earlier life are ignored.
    pub incarnation: u64,
    pub link: Link,
    /// The scheduler instance to connect to next (HA: the leader it was told of).
    pub target: usize,
    pub backoff_ms: u64,
    pub tasks: BTreeMap<TaskId, AgentTask>,
    acked_history: VecDeque<TaskId>,
    /// Status updates waiting for the world to send them.
    pub outbox: Vec<TaskStatusReport>,
    /// Lose this many more `StatusAck` messages.
    pub lose_acks: u32,
    /// Until then (µs), the agent duplicates and/or reorders its status updates.
    pub garble_until_us: u64,
    pub garble_duplicate: bool,
    pub garble_reorder: bool,
    /// A resend timer is armed.
    pub resend_armed: bool,
}

impl SimAgent {
    pub fn new(spec: AgentSpec, seed: u64) -> SimAgent {
        SimAgent {
            spec,
            seed,
            alive: false,
            incarnation: 0,
            link: Link::Down,
            target: 0,
            backoff_ms: BACKOFF_MIN_MS,
            tasks: BTreeMap::new(),
            acked_history: VecDeque::new(),
            outbox: Vec::new(),
            lose_acks: 0,
            garble_until_us: 0,
            garble_duplicate: false,
            garble_reorder: false,
            resend_armed: false,
        }
    }

    pub fn is_registered(&self) -> bool {
        matches!(
            self.link,
            Link::Up {
                registered: true,
                ..
            }
        )
    }

    pub fn session(&self) -> Option<u64> {
        match self.link {
            Link::Up { session, .. } => Some(session),
            Link::Down => None,
        }
    }

    /// The registration: every live task and every end not yet acknowledged, by id.
    pub fn registration(&mut self) -> AgentRegistration {
        self.outbox.clear();
        AgentRegistration {
            agent_id: self.spec.name.clone(),
            hostname: format!("{}.sim", self.spec.name),
            resources: self.spec.resources,
            port_ranges: self.spec.port_ranges.clone(),
            attributes: self.spec.attributes.clone(),
            tasks: self
                .tasks
                .iter()
                .filter(|(_, t)| t.is_live() || !t.acked)
                .map(|(id, t)| status(*id, t, 0))
                .collect(),
            log_port: 0,
        }
    }

    /// Answers the scheduler's reconciliation, as the real agent does: the status of each
    /// named task (one it does not know as LOST, with no job key), or of every task it knows.
    pub fn on_reconcile(&mut self, task_ids: &[TaskId]) {
        if task_ids.is_empty() {
            let all: Vec<TaskStatusReport> =
                self.tasks.iter().map(|(id, t)| status(*id, t, 0)).collect();
            self.outbox.extend(all);
            return;
        }
        for id in task_ids {
            let report = match self.tasks.get(id) {
                Some(t) => status(*id, t, 0),
                None => TaskStatusReport {
                    task_id: *id,
                    job_key: String::new(),
                    instance: 0,
                    state: TaskState::Lost,
                    exit_code: -1,
                    message: "unknown to the agent".into(),
                    timestamp_ms: 0,
                    sandbox: String::new(),
                    usage: None,
                },
            };
            self.outbox.push(report);
        }
    }

    /// The next reconnect delay (doubling, capped).
    pub fn next_backoff_ms(&mut self) -> u64 {
        let ms = self.backoff_ms;
        self.backoff_ms = (self.backoff_ms * 2).min(BACKOFF_MAX_MS);
        ms
    }

    pub fn on_registered(&mut self) {
        if let Link::Up { session, .. } = self.link {
            self.link = Link::Up {
                session,
                registered: true,
            };
        }
        self.backoff_ms = BACKOFF_MIN_MS;
    }

    /// The connection is gone; statuses not sent are dropped (the next registration carries
    /// what matters).
    pub fn on_disconnected(&mut self) {
        self.link = Link::Down;
        self.outbox.clear();
    }

    /// The process dies: its tasks die with it (the real agent's guard kills their process
    /// groups), and it forgets them.
    pub fn die(&mut self) {
        self.alive = false;
        self.incarnation += 1;
        self.link = Link::Down;
        self.tasks.clear();
        self.acked_history.clear();
        self.outbox.clear();
        self.resend_armed = false;
    }

    fn report(&mut self, id: TaskId, now_ms: u64) {
        if let Some(t) = self.tasks.get(&id) {
            self.outbox.push(status(id, t, now_ms));
        }
    }

    pub fn on_launch(&mut self, launch: LaunchView, now_ms: u64) -> Vec<(u64, AgentTimer)> {
        let id = launch.task_id;
        if self.tasks.contains_key(&id) {
            // A launch of a known task: its status again (the real agent does the same).
            self.report(id, now_ms);
            return Vec::new();
        }
        let plan = TaskPlan::parse(&launch.config.command);
        let fate = fate(self.seed, id, plan, launch.config.is_service);
        self.tasks.insert(
            id,
            AgentTask {
                job_key: launch.job_key.to_string(),
                instance: launch.instance,
                state: TaskState::Starting,
                exit_code: -1,
                resources: launch.config.resources,
                sandbox: String::new(),
                acked: false,
                killing: false,
                starting: true,
                running_since_ms: None,
                usage: None,
                end: fate.end,
                kill_ms: command_kill_ms(&launch.config.command),
                tier: launch.config.tier,
                priority: launch.config.priority,
                production: launch.config.production,
            },
        );
        self.report(id, now_ms);
        vec![(fate.start_ms, AgentTimer::Running(id))]
    }

    pub fn on_kill(&mut self, id: TaskId, job_key: &str, now_ms: u64) -> Vec<(u64, AgentTimer)> {
        let Some(t) = self.tasks.get_mut(&id) else {
            self.outbox.push(TaskStatusReport {
                task_id: id,
                job_key: job_key.to_string(),
                instance: 0,
                state: TaskState::Lost,
                exit_code: -1,
                message: "unknown task".into(),
                timestamp_ms: now_ms,
                sandbox: String::new(),
                usage: None,
            });
            return Vec::new();
        };
        if !t.is_live() {
            self.report(id, now_ms);
            return Vec::new();
        }
        if t.killing {
            return Vec::new();
        }
        t.killing = true;
        let ms = kill_ms(self.seed, id, t.kill_ms);
        vec![(ms, AgentTimer::Killed(id))]
    }

    pub fn on_timer(&mut self, timer: AgentTimer, now_ms: u64) -> Vec<(u64, AgentTimer)> {
        match timer {
            AgentTimer::Running(id) => {
                let Some(t) = self.tasks.get_mut(&id) else {
                    return Vec::new();
                };
                t.starting = false;
                if t.state != TaskState::Starting {
                    return Vec::new();
                }
                t.state = TaskState::Running;
                t.running_since_ms = Some(now_ms);
                t.sandbox = format!("/sandbox/{id}");
                let end = t.end;
                self.report(id, now_ms);
                end.map(|(ms, state)| (ms, AgentTimer::End(id, state)))
                    .into_iter()
                    .collect()
            }
            AgentTimer::End(id, state) => {
                self.end(
                    id,
                    state,
                    if state == TaskState::Finished { 0 } else { 1 },
                    now_ms,
                );
                Vec::new()
            }
            AgentTimer::Killed(id) => {
                self.end(id, TaskState::Killed, -1, now_ms);
                Vec::new()
            }
            AgentTimer::Resend => {
                self.resend_armed = false;
                let unacked: Vec<TaskId> = self
                    .tasks
                    .iter()
                    .filter(|(_, t)| !t.is_live() && !t.acked)
                    .map(|(id, _)| *id)
                    .collect();
                for id in unacked {
                    self.report(id, now_ms);
                }
                Vec::new()
            }
        }
    }

    fn end(&mut self, id: TaskId, state: TaskState, exit_code: i32, now_ms: u64) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        if !t.is_live() {
            return;
        }
        // A task being killed ends KILLED whatever made it stop.
        t.state = if t.killing { TaskState::Killed } else { state };
        t.exit_code = exit_code;
        t.killing = false;
        t.starting = false;
        t.acked = false;
        let run_ms = t
            .running_since_ms
            .map_or(0, |since| now_ms.saturating_sub(since));
        t.usage = Some(usage(self.seed, id, &t.resources, run_ms));
        self.report(id, now_ms);
    }

    /// A `StatusAck` arrived. Returns the resend timer when the ack was lost on purpose.
    pub fn on_status_ack(&mut self, acks: &[(TaskId, TaskState)]) -> Vec<(u64, AgentTimer)> {
        if self.lose_acks > 0 {
            self.lose_acks -= 1;
            if !self.resend_armed {
                self.resend_armed = true;
                return vec![(ACK_RESEND_MS, AgentTimer::Resend)];
            }
            return Vec::new();
        }
        for &(id, state) in acks {
            let Some(t) = self.tasks.get_mut(&id) else {
                continue;
            };
            if !state.is_terminal() || t.state != state || t.acked {
                continue;
            }
            t.acked = true;
            self.acked_history.push_back(id);
            while self.acked_history.len() > ACKED_HISTORY_MAX {
                if let Some(old) = self.acked_history.pop_front() {
                    self.tasks.remove(&old);
                }
            }
        }
        Vec::new()
    }

    /// The statuses to send now, garbled when told to (duplicates, reordering).
    pub fn take_outbox(&mut self, now_us: u64, rng: &mut Rng) -> Vec<TaskStatusReport> {
        let mut out = std::mem::take(&mut self.outbox);
        if now_us < self.garble_until_us && !out.is_empty() {
            if self.garble_duplicate {
                let n = out.len();
                for i in 0..n {
                    if rng.percent(50) {
                        out.push(out[i].clone());
                    }
                }
            }
            if self.garble_reorder {
                rng.shuffle(&mut out);
            }
        }
        out
    }

    /// Tasks the agent runs (not ended).
    pub fn live_tasks(&self) -> impl Iterator<Item = (&TaskId, &AgentTask)> {
        self.tasks.iter().filter(|(_, t)| t.is_live())
    }

    /// Whether the agent is in the middle of something (a start or a kill under way, an ack
    /// resend armed, statuses not sent): not quiet.
    pub fn busy(&self) -> bool {
        self.resend_armed
            || !self.outbox.is_empty()
            || self.tasks.values().any(|t| t.killing || t.starting)
    }
}

fn status(id: TaskId, t: &AgentTask, now_ms: u64) -> TaskStatusReport {
    TaskStatusReport {
        task_id: id,
        job_key: t.job_key.clone(),
        instance: t.instance,
        state: t.state,
        exit_code: t.exit_code,
        message: String::new(),
        timestamp_ms: now_ms,
        sandbox: t.sandbox.clone(),
        usage: t.usage.filter(|_| t.state.is_terminal()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_roundtrip_through_the_command() {
        for plan in [
            TaskPlan::RunForever,
            TaskPlan::FinishAfter(1500),
            TaskPlan::FailAfter(20),
            TaskPlan::Random,
        ] {
            assert_eq!(TaskPlan::parse(&plan.command()), plan);
        }
    }
}
