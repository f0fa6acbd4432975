//! The builder API for named scenarios: a cluster built by hand, driven step by step, with
//! every invariant checked after each step exactly as in a seeded run. A violated invariant
//! panics with its name (a scenario is a test); the `try_` forms return it instead.
//!
//! ```
//! use borealis_sim::{JobConfig, Sim};
//! use borealis_core::Resources;
//!
//! let cpu = |cpu_millis| Resources { cpu_millis, ram_mib: 4096, disk_mib: 10_000, ports: 0 };
//! let mut sim = Sim::new(1).shards(2).agent("a1", cpu(2000), &[("rack", "r1")]);
//! sim.create_job("www/prod/hello", JobConfig::new(2, 500, 128)).unwrap();
//! sim.run_until_quiet();
//! let status = sim.job_status("www/prod/hello").unwrap();
//! assert_eq!(status.tasks.len(), 2);
//! assert!(status.tasks.iter().all(|t| t.state == Some(borealis_core::TaskState::Running)));
//! ```
//!
//! Policy scenarios set the scheduler's flags and quotas, and read back what happened:
//!
//! ```
//! use borealis_sim::{JobConfig, Sim};
//! use borealis_core::{Resources, TaskState};
//!
//! let r = |cpu_millis| Resources { cpu_millis, ram_mib: 4096, disk_mib: 10_000, ports: 0 };
//! let mut sim = Sim::new(1)
//!     .settings(|s| s.preemption_delay_ms = 1_000)
//!     .agent("a1", r(2000), &[]);
//! sim.set_quota("www", r(1000)).unwrap();
//! sim.create_job("www/prod/p", JobConfig::new(1, 500, 128).production()).unwrap();
//! sim.run_until_quiet();
//! assert_eq!(sim.get_quota("www").unwrap().used.cpu_millis, 500);
//! let task = borealis_core::TaskId(sim.job_status("www/prod/p").unwrap().tasks[0].task_id);
//! let path: Vec<TaskState> = sim.transitions_of(task).iter().map(|t| t.2).collect();
//! assert_eq!(&path[..2], &[TaskState::Pending, TaskState::Assigned]);
//! ```

use std::collections::BTreeSet;

use borealis_core::cron::CollisionPolicy;
use borealis_core::update::{Command, UpdateSettings};
use borealis_core::{Resources, TaskId, TaskState};
use borealis_net::views::{JobStatusView, QuotaView, UpdateInfoView};
use borealis_shards::shard::InjectedBug;

use crate::agents::{AgentSpec, AgentTask};
use crate::clients::{JobConfig, Reply, Request};
use crate::config::SchedulerFlags;
use crate::invariants::{InstanceAudit, Violation};
use crate::trace::{CrashPoint, Event};
use crate::world::{History, Mode, World, WorldConfig};

/// How long (simulated) a request may wait for its answer.
const REPLY_WAIT_MS: u64 = 30_000;

pub struct Sim {
    config: WorldConfig,
    world: Option<World>,
    /// Agents that do not start with the world (see [`Sim::agent_later`]).
    deferred: BTreeSet<usize>,
}

impl Sim {
    /// An embedded scheduler with one shard and no agents yet; `seed` drives the
    /// interleavings and the agents' random plans.
    pub fn new(seed: u64) -> Sim {
        Sim {
            config: WorldConfig {
                seed,
                mode: Mode::Embedded,
                shards: 1,
                reconciliation_grace_ms: 3_000,
                agents: Vec::new(),
                clients: 1,
                bug: None,
                flags: SchedulerFlags::default(),
                coordinator: None,
            },
            world: None,
            deferred: BTreeSet::new(),
        }
    }

    /// Sets scheduler flags: `Sim::new(1).settings(|s| s.preemption_delay_ms = 1_000)`.
    /// Every (re)start of the scheduler uses them.
    pub fn settings(mut self, set: impl FnOnce(&mut SchedulerFlags)) -> Sim {
        set(&mut self.config.flags);
        self
    }

    pub fn shards(mut self, shards: usize) -> Sim {
        self.config.shards = shards;
        self
    }

    /// Two scheduler instances under a simulated etcd (instance 0 leads first).
    pub fn ha(mut self) -> Sim {
        self.config.mode = Mode::Ha;
        self
    }

    pub fn reconciliation_grace_ms(mut self, ms: u64) -> Sim {
        self.config.reconciliation_grace_ms = ms;
        self
    }

    /// An agent named `name` (its `host` attribute too) with extra attributes.
    pub fn agent(mut self, name: &str, resources: Resources, attributes: &[(&str, &str)]) -> Sim {
        self.config
            .agents
            .push(AgentSpec::new(name, resources, attributes));
        self
    }

    /// An agent that starts only when [`Sim::start_agent`] says so.
    pub fn agent_later(
        mut self,
        name: &str,
        resources: Resources,
        attributes: &[(&str, &str)],
    ) -> Sim {
        self.deferred.insert(self.config.agents.len());
        self.agent(name, resources, attributes)
    }

    /// Starts an agent declared with [`Sim::agent_later`]; it connects and registers.
    pub fn start_agent(&mut self, name: &str) {
        let agent = self.agent_index(name);
        self.step(&Event::AgentStart { agent });
    }

    pub fn inject_bug(mut self, bug: InjectedBug) -> Sim {
        self.config.bug = Some(bug);
        self
    }

    /// The world, built (agents started and registered) on first use. It keeps its history
    /// (every transition, the policy messages between shards: [`Sim::history`]).
    pub fn world(&mut self) -> &mut World {
        if self.world.is_none() {
            let mut world = World::new(self.config.clone());
            world.keep_history();
            for agent in (0..self.config.agents.len()).filter(|a| !self.deferred.contains(a)) {
                ok(world.apply(&Event::AgentStart { agent }));
            }
            ok(world.advance(100));
            self.world = Some(world);
        }
        self.world.as_mut().expect("built")
    }

    /// One event of a trace.
    pub fn try_step(&mut self, event: &Event) -> Result<(), Violation> {
        self.world().apply(event)
    }

    pub fn step(&mut self, event: &Event) {
        ok(self.try_step(event));
    }

    /// Sends a request and waits for its answer; a `NotLeader` refusal is retried at the
    /// leader it names, as the CLI does.
    fn request(
        &mut self,
        request: Request,
        encode: impl Fn(&mut borealis_net::Encoder, u64) -> Vec<u8>,
    ) -> Reply {
        let world = self.world();
        let mut attempts = 0;
        'attempt: loop {
            attempts += 1;
            let id = world.client_request(0, request.clone(), &encode);
            let mut waited = 0;
            loop {
                ok(world.apply(&Event::Advance { ms: 0 }));
                match world.reply(0, id) {
                    Some(Reply::Error {
                        code: borealis_net::views::ErrorCode::NotLeader,
                        ..
                    }) if attempts < 3 => continue 'attempt,
                    Some(reply) => return reply.clone(),
                    None => {}
                }
                if waited >= REPLY_WAIT_MS {
                    return Reply::Lost;
                }
                ok(world.advance(10));
                waited += 10;
            }
        }
    }

    /// The token the builder API's client authenticates with from its next connection on
    /// (`None`: none); drops its current connection so the next request authenticates.
    pub fn client_token(&mut self, token: Option<&str>) {
        self.world().set_client_token(0, token);
    }

    /// Creates a job; Ok once the scheduler acknowledged it.
    pub fn create_job(&mut self, key: &str, config: JobConfig) -> Result<(), String> {
        match self.create_job_reply(key, config) {
            Reply::Ack => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }

    /// Creates a job and returns the scheduler's answer as it came (`Ack`, or `Error` with
    /// its code and exact message).
    pub fn create_job_reply(&mut self, key: &str, config: JobConfig) -> Reply {
        let job_key: borealis_core::JobKey = key.parse().expect("a valid job key");
        let task = config.task_config(&job_key);
        let (instances, explicit) = (config.instances, config.tier_explicit);
        self.request(
            Request::Create {
                key: key.to_string(),
            },
            |e, id| e.create_job_spec(id, instances, &task, explicit).to_vec(),
        )
    }

    /// Sets a role's quota (`borealis quota set`); Ok once acknowledged.
    pub fn set_quota(&mut self, role: &str, quota: Resources) -> Result<(), String> {
        match self.request(
            Request::SetQuota {
                role: role.to_string(),
            },
            |e, id| e.set_quota(id, role, &quota).to_vec(),
        ) {
            Reply::Ack => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }

    /// A role's quota and what its production jobs use of it, as its quota owner answers.
    pub fn get_quota(&mut self, role: &str) -> Result<QuotaView, String> {
        match self.request(
            Request::GetQuota {
                role: role.to_string(),
            },
            |e, id| e.get_quota(id, role).to_vec(),
        ) {
            Reply::Quota(view) => Ok(view),
            other => Err(format!("{other:?}")),
        }
    }

    /// Kills `instances` of a job (empty: all).
    pub fn kill_job(&mut self, key: &str, instances: &[u32]) -> Result<(), String> {
        let job_key: borealis_core::JobKey = key.parse().map_err(|e| format!("{e}"))?;
        let list = instances.to_vec();
        match self.request(
            Request::Kill {
                key: key.to_string(),
                instances: list.clone(),
            },
            |e, id| e.kill_job(id, &job_key, &list).to_vec(),
        ) {
            Reply::Ack => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }

    /// `borealis host maintenance start|drain|status|end` (sim agents' hostnames are
    /// `<name>.sim`): the hosts' statuses once the change is applied everywhere.
    pub fn host_maintenance(
        &mut self,
        op: borealis_core::MaintenanceOp,
        hosts: &[&str],
        drain_timeout_secs: u64,
    ) -> Result<Vec<borealis_net::views::HostStatusView>, String> {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        match self.request(Request::Host, |e, id| {
            e.host_maintenance(id, op, &hosts, drain_timeout_secs)
                .to_vec()
        }) {
            Reply::Hosts(status) => Ok(status),
            other => Err(format!("{other:?}")),
        }
    }

    /// `borealis job restart` of these instances (empty: all), one request.
    pub fn restart_job(&mut self, key: &str, instances: &[u32]) -> Result<(), String> {
        let job_key: borealis_core::JobKey = key.parse().map_err(|e| format!("{e}"))?;
        match self.request(Request::Restart, |e, id| {
            e.restart_job(id, &job_key, instances).to_vec()
        }) {
            Reply::Ack => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }

    /// `borealis update start`: a rolling update of `key` to `config` (its instance count
    /// and task config) over `scope` (empty: every instance). The new update as the
    /// scheduler answers it (without details), or the refusal's text.
    pub fn start_update(
        &mut self,
        key: &str,
        config: JobConfig,
        settings: UpdateSettings,
        scope: &[u32],
    ) -> Result<UpdateInfoView, String> {
        let job_key: borealis_core::JobKey = key.parse().map_err(|e| format!("{e}"))?;
        let task = config.task_config(&job_key);
        let (instances, explicit) = (config.instances, config.tier_explicit);
        let list = scope.to_vec();
        let reply = self.request(
            Request::StartUpdate {
                key: key.to_string(),
                instances,
                scope: list.clone(),
            },
            |e, id| {
                e.start_update_spec(
                    id, &job_key, instances, &task, explicit, &settings, &list, "",
                )
                .to_vec()
            },
        );
        one_update(reply)
    }

    /// `borealis update pause|resume|abort|rollback|pulse` of the job's active update: the
    /// update after the command, or the refusal's text.
    pub fn update_command(
        &mut self,
        key: &str,
        command: Command,
    ) -> Result<UpdateInfoView, String> {
        let job_key: borealis_core::JobKey = key.parse().map_err(|e| format!("{e}"))?;
        let reply = self.request(
            Request::Update {
                key: key.to_string(),
            },
            |e, id| e.update_command(id, &job_key, command, "").to_vec(),
        );
        one_update(reply)
    }

    /// The job's updates, newest first; `details` adds per-instance progress, events and the
    /// configs of the revisions they name.
    pub fn query_updates(
        &mut self,
        key: &str,
        details: bool,
    ) -> Result<Vec<UpdateInfoView>, String> {
        let job_key: borealis_core::JobKey = key.parse().map_err(|e| format!("{e}"))?;
        match self.request(
            Request::Update {
                key: key.to_string(),
            },
            |e, id| e.query_updates(id, Some(&job_key), 0, details).to_vec(),
        ) {
            Reply::Updates(updates) => Ok(updates),
            other => Err(format!("{other:?}")),
        }
    }

    /// `borealis cron schedule`: `key` becomes a cron job (created with every instance
    /// retired if it is new) that runs `config` (its instance count and task config) at each
    /// trigger of `schedule` (`--cron-timezone`, the fake wall clock), `policy` deciding what
    /// a trigger does while a run is active. Ok once acknowledged, else the refusal's text.
    pub fn schedule_cron(
        &mut self,
        key: &str,
        config: JobConfig,
        schedule: &str,
        policy: CollisionPolicy,
    ) -> Result<(), String> {
        let job_key: borealis_core::JobKey = key.parse().map_err(|e| format!("{e}"))?;
        let task = config.task_config(&job_key);
        let (instances, explicit) = (config.instances, config.tier_explicit);
        let reply = self.request(
            Request::ScheduleCron {
                key: key.to_string(),
            },
            |e, id| {
                e.schedule_cron_spec(id, &job_key, instances, &task, explicit, schedule, policy)
                    .to_vec()
            },
        );
        ack(reply)
    }

    /// `borealis cron deschedule`: the schedule goes (a run in progress finishes as a plain
    /// job; a job with nothing live is forgotten). Ok once acknowledged.
    pub fn deschedule_cron(&mut self, key: &str) -> Result<(), String> {
        let job_key: borealis_core::JobKey = key.parse().map_err(|e| format!("{e}"))?;
        let reply = self.request(
            Request::Cron {
                key: key.to_string(),
            },
            |e, id| e.deschedule_cron(id, &job_key).to_vec(),
        );
        ack(reply)
    }

    /// `borealis cron start`: a run now, as if the schedule triggered (the collision policy
    /// applies). Ok once acknowledged.
    pub fn start_cron(&mut self, key: &str) -> Result<(), String> {
        let job_key: borealis_core::JobKey = key.parse().map_err(|e| format!("{e}"))?;
        let reply = self.request(
            Request::Cron {
                key: key.to_string(),
            },
            |e, id| e.start_cron(id, &job_key).to_vec(),
        );
        ack(reply)
    }

    /// Sends a StartUpdate and does not wait for its answer; returns the request's id for
    /// [`Sim::wait_reply`] or [`Sim::try_reply`].
    pub fn send_start_update(
        &mut self,
        key: &str,
        config: JobConfig,
        settings: UpdateSettings,
        scope: &[u32],
    ) -> u64 {
        let job_key: borealis_core::JobKey = key.parse().expect("a valid job key");
        let task = config.task_config(&job_key);
        let (instances, explicit) = (config.instances, config.tier_explicit);
        let list = scope.to_vec();
        self.world().client_request(
            0,
            Request::StartUpdate {
                key: key.to_string(),
                instances,
                scope: list.clone(),
            },
            |e, id| {
                e.start_update_spec(
                    id, &job_key, instances, &task, explicit, &settings, &list, "",
                )
                .to_vec()
            },
        )
    }

    /// Sends an UpdateCommand and does not wait for its answer.
    pub fn send_update_command(&mut self, key: &str, command: Command) -> u64 {
        let job_key: borealis_core::JobKey = key.parse().expect("a valid job key");
        self.world().client_request(
            0,
            Request::Update {
                key: key.to_string(),
            },
            |e, id| e.update_command(id, &job_key, command, "").to_vec(),
        )
    }

    /// The answer to a request sent with a `send_` form, if it came (nothing runs).
    pub fn try_reply(&mut self, id: u64) -> Option<Reply> {
        self.world().reply(0, id).cloned()
    }

    /// A job as the acting scheduler instance holds it (its revisions and latest update).
    pub fn job_audit(&mut self, key: &str) -> Option<borealis_shards::shard::JobAudit> {
        let key: borealis_core::JobKey = key.parse().ok()?;
        self.audits()
            .into_iter()
            .filter(|i| i.acting())
            .flat_map(|i| i.shards)
            .filter(|s| s.acting)
            .flat_map(|s| s.jobs)
            .find(|j| j.key == key)
    }

    /// The current tasks of a job as the acting scheduler instance holds them, by instance.
    pub fn current_tasks(&mut self, key: &str) -> Vec<borealis_shards::shard::TaskAudit> {
        let Ok(key) = key.parse::<borealis_core::JobKey>() else {
            return Vec::new();
        };
        let mut tasks: Vec<_> = self
            .audits()
            .into_iter()
            .filter(|i| i.acting())
            .flat_map(|i| i.shards)
            .filter(|s| s.acting)
            .flat_map(|s| s.tasks)
            .filter(|t| t.current && t.job == key)
            .collect();
        tasks.sort_by_key(|t| t.instance);
        tasks
    }

    /// Serves `CoordinatorSlaPolicy` requests with a simulated coordinator that refuses each
    /// task's first `deny_first` requests, answering after `latency_ms`.
    pub fn coordinator(mut self, deny_first: u32, latency_ms: u64) -> Sim {
        self.config.coordinator = Some(crate::coordinator::CoordinatorScript {
            deny_first,
            latency_ms,
        });
        self
    }

    /// What the simulated coordinator saw: requests, and the most in flight for one URL.
    pub fn coordinator_stats(&mut self) -> crate::coordinator::CoordinatorStats {
        self.world().coordinator_stats()
    }

    pub fn job_status(&mut self, key: &str) -> Result<JobStatusView, String> {
        let job_key: borealis_core::JobKey = key.parse().map_err(|e| format!("{e}"))?;
        match self.request(
            Request::Query {
                key: key.to_string(),
            },
            |e, id| e.query_job(id, &job_key).to_vec(),
        ) {
            Reply::Status(status) => Ok(status),
            other => Err(format!("{other:?}")),
        }
    }

    /// The tasks of a job by state, as the scheduler reports them (current and history).
    pub fn job_states(&mut self, key: &str) -> Vec<(u32, TaskState)> {
        self.job_status(key)
            .map(|s| {
                s.tasks
                    .iter()
                    .filter_map(|t| t.state.map(|st| (t.instance, st)))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn advance(&mut self, ms: u64) {
        ok(self.world().apply(&Event::Advance { ms }));
    }

    /// Heals every fault and waits until the cluster is quiet past the reconciliation grace;
    /// then checks the quiet invariants.
    pub fn try_run_until_quiet(&mut self) -> Result<(), Violation> {
        self.world().settle()
    }

    pub fn run_until_quiet(&mut self) {
        ok(self.try_run_until_quiet());
    }

    /// kill -9 of the scheduler (between rounds) and an immediate restart from its log.
    pub fn crash_and_recover(&mut self) {
        let shards = self.config.shards;
        self.crash(0, CrashPoint::BetweenRounds, shards);
    }

    /// A crash once `after_rounds` more rounds ran, at `point` of the next one, then an
    /// immediate restart into `restart_shards` shards.
    pub fn crash(&mut self, after_rounds: u32, point: CrashPoint, restart_shards: usize) {
        self.step(&Event::Crash {
            after_rounds,
            point,
            down_ms: 0,
            restart_shards,
        });
        self.advance(0);
    }

    /// Sends a create and does not wait for its answer (to crash while it is in flight, or
    /// to race another request); returns the request's id for [`Sim::wait_reply`].
    pub fn send_create_job(&mut self, key: &str, config: JobConfig) -> u64 {
        let job_key: borealis_core::JobKey = key.parse().expect("a valid job key");
        let task = config.task_config(&job_key);
        let (instances, explicit) = (config.instances, config.tier_explicit);
        self.world().client_request(
            0,
            Request::Create {
                key: key.to_string(),
            },
            |e, id| e.create_job_spec(id, instances, &task, explicit).to_vec(),
        )
    }

    /// Waits (simulated, up to 30 s) for the answer to a request sent with a `send_` form.
    pub fn wait_reply(&mut self, id: u64) -> Reply {
        let mut waited = 0;
        loop {
            self.run_rounds();
            if let Some(reply) = self.world().reply(0, id) {
                return reply.clone();
            }
            if waited >= REPLY_WAIT_MS {
                return Reply::Lost;
            }
            self.advance(10);
            waited += 10;
        }
    }

    /// Sends a kill and does not wait for its answer.
    pub fn send_kill_job(&mut self, key: &str, instances: &[u32]) {
        let job_key: borealis_core::JobKey = key.parse().expect("a valid job key");
        let list = instances.to_vec();
        self.world().client_request(
            0,
            Request::Kill {
                key: key.to_string(),
                instances: list.clone(),
            },
            |e, id| e.kill_job(id, &job_key, &list).to_vec(),
        );
    }

    /// Lets the rounds that pending input causes run, at the current instant.
    pub fn run_rounds(&mut self) {
        self.step(&Event::Advance { ms: 0 });
    }

    /// The agent's connection breaks; it reconnects after `down_ms`.
    pub fn disconnect_agent(&mut self, name: &str, down_ms: u64) {
        let agent = self.agent_index(name);
        self.step(&Event::AgentDisconnect { agent, down_ms });
    }

    /// The agent process dies with its tasks; it starts again after `down_ms`.
    pub fn restart_agent(&mut self, name: &str, down_ms: u64) {
        let agent = self.agent_index(name);
        self.step(&Event::AgentRestart { agent, down_ms });
    }

    /// HA: leadership moves to instance `next` after `pause_ms`.
    pub fn leader_loss(&mut self, pause_ms: u64, next: usize) {
        self.step(&Event::LeaderLoss {
            pause_ms,
            next,
            same_term: false,
        });
    }

    fn agent_index(&mut self, name: &str) -> usize {
        self.world()
            .agent_index(name)
            .unwrap_or_else(|| panic!("no agent named {name}"))
    }

    /// What an agent runs or remembers.
    pub fn agent_tasks(&mut self, name: &str) -> Vec<(borealis_core::TaskId, AgentTask)> {
        let agent = self.agent_index(name);
        self.world().agents()[agent]
            .tasks
            .iter()
            .map(|(id, t)| (*id, t.clone()))
            .collect()
    }

    /// The home shard of each agent, by name, sorted.
    pub fn agent_homes(&mut self) -> Vec<(String, usize)> {
        let mut homes: Vec<(String, usize)> = self
            .audits()
            .iter()
            .flat_map(|i| i.shards.iter())
            .flat_map(|s| {
                s.home_agents
                    .iter()
                    .map(move |a| (a.name.clone(), s.shard.0))
            })
            .collect();
        homes.sort();
        homes
    }

    pub fn audits(&mut self) -> Vec<InstanceAudit> {
        self.world().audits()
    }

    /// Simulated milliseconds (the clock starts at 1 000), the time base of [`Sim::history`].
    pub fn now_ms(&mut self) -> u64 {
        self.world().sim_ms()
    }

    /// Every transition the shards made and every policy message between shards so far.
    pub fn history(&mut self) -> History {
        self.world().history().clone()
    }

    /// The transitions of one task, in order: (simulated ms, from, to).
    pub fn transitions_of(&mut self, task: TaskId) -> Vec<(u64, TaskState, TaskState)> {
        self.world()
            .history()
            .transitions
            .iter()
            .filter(|t| t.task == task)
            .map(|t| (t.at_ms, t.from, t.to))
            .collect()
    }
}

/// Ok for an acknowledgement, else the refusal's text (or the reply).
fn ack(reply: Reply) -> Result<(), String> {
    match reply {
        Reply::Ack => Ok(()),
        Reply::Error { message, .. } => Err(message),
        other => Err(format!("{other:?}")),
    }
}

/// The one update an update request is answered with.
fn one_update(reply: Reply) -> Result<UpdateInfoView, String> {
    match reply {
        Reply::Updates(updates) if updates.len() == 1 => {
            Ok(updates.into_iter().next().expect("one"))
        }
        Reply::Error { message, .. } => Err(message),
        other => Err(format!("{other:?}")),
    }
}

fn ok(result: Result<(), Violation>) {
    if let Err(v) = result {
        panic!("invariant {} violated: {}", v.invariant, v.detail);
    }
}
