//! Simulated clients (the `borealis job ...` CLI on the wire) and the ledger of what the
//! scheduler acknowledged to clients and agents: the facts the durability invariants hold
//! the scheduler to.

use std::collections::{BTreeMap, BTreeSet};

use borealis_core::{Constraint, JobKey, Resources, TaskConfig, TaskId, TaskState, Tier};
use borealis_net::views::{
    ErrorCode, JobStatusView, JobSummaryView, OwnedMessage, QuotaView, UpdateInfoView,
};

use crate::agents::TaskPlan;
use crate::invariants::Violation;

/// A job as the simulation creates it (the key is given apart).
#[derive(Clone, PartialEq, Eq)]
pub struct JobConfig {
    pub instances: u32,
    pub resources: Resources,
    pub constraints: Vec<Constraint>,
    pub service: bool,
    pub production: bool,
    pub max_task_failures: i32,
    pub plan: TaskPlan,
    /// How long killing a task takes on its agent (None: the seed decides, under 800 ms).
    pub kill_ms: Option<u64>,
    /// The tier the job names (see `tier_explicit`).
    pub tier: Tier,
    /// Whether the job file names its tier; false: the scheduler resolves it (`preferred`
    /// for production work, else the tier config's default) and `tier` is not used.
    pub tier_explicit: bool,
    /// Orders preemption among the role's own tasks.
    pub priority: i32,
    /// What maintenance must leave of the job, and what a partition does to it.
    pub sla_policy: Option<borealis_core::SlaPolicy>,
    pub partition_policy: Option<borealis_core::PartitionPolicy>,
    /// Words appended to the command (after the plan's): a distinct configuration that
    /// behaves the same (`TaskPlan::parse` reads only the first words).
    pub tag: String,
}

impl JobConfig {
    /// `instances` ad-hoc tasks of `cpu_millis`, `ram_mib` (and 64 MiB of disk) that run
    /// until killed.
    pub fn new(instances: u32, cpu_millis: u32, ram_mib: u32) -> JobConfig {
        JobConfig {
            instances,
            resources: Resources {
                cpu_millis,
                ram_mib,
                disk_mib: 64,
                ports: 0,
            },
            constraints: Vec::new(),
            service: false,
            production: false,
            max_task_failures: 1,
            plan: TaskPlan::RunForever,
            kill_ms: None,
            tier: Tier::Preferred,
            tier_explicit: true,
            priority: 0,
            sla_policy: None,
            partition_policy: None,
            tag: String::new(),
        }
    }

    /// Appends `word` to the command: `JobConfig::new(6, 500, 128).tag("v2")` runs
    /// "sim run v2", a configuration other than "sim run" that also runs until killed.
    pub fn tag(mut self, word: &str) -> JobConfig {
        if !self.tag.is_empty() {
            self.tag.push(' ');
        }
        self.tag.push_str(word);
        self
    }

    pub fn sla(mut self, policy: borealis_core::SlaPolicy) -> JobConfig {
        self.sla_policy = Some(policy);
        self
    }

    pub fn partition(mut self, policy: borealis_core::PartitionPolicy) -> JobConfig {
        self.partition_policy = Some(policy);
        self
    }

    /// Names `tier` explicitly.
    pub fn tier(mut self, tier: Tier) -> JobConfig {
        self.tier = tier;
        self.tier_explicit = true;
        self
    }

    /// Names no tier: the scheduler resolves it from its tier config.
    pub fn no_tier(mut self) -> JobConfig {
        self.tier_explicit = false;
        self
    }

    pub fn priority(mut self, priority: i32) -> JobConfig {
        self.priority = priority;
        self
    }

    pub fn kill_ms(mut self, ms: u64) -> JobConfig {
        self.kill_ms = Some(ms);
        self
    }

    pub fn service(mut self) -> JobConfig {
        self.service = true;
        self
    }

    pub fn production(mut self) -> JobConfig {
        self.production = true;
        self
    }

    pub fn ports(mut self, ports: u16) -> JobConfig {
        self.resources.ports = ports;
        self
    }

    pub fn constraint(mut self, constraint: Constraint) -> JobConfig {
        self.constraints.push(constraint);
        self
    }

    pub fn max_task_failures(mut self, failures: i32) -> JobConfig {
        self.max_task_failures = failures;
        self
    }

    pub fn plan(mut self, plan: TaskPlan) -> JobConfig {
        self.plan = plan;
        self
    }

    pub fn task_config(&self, key: &JobKey) -> TaskConfig {
        TaskConfig {
            job: key.clone(),
            command: {
                let mut command = self.plan.command();
                if !self.tag.is_empty() {
                    command.push(' ');
                    command.push_str(&self.tag);
                }
                if let Some(ms) = self.kill_ms {
                    command.push_str(&format!(" kill={ms}"));
                }
                command
            },
            resources: self.resources,
            port_names: (0..self.resources.ports).map(|i| format!("p{i}")).collect(),
            constraints: self.constraints.clone(),
            tier: self.tier,
            priority: self.priority,
            production: self.production,
            is_service: self.service,
            max_task_failures: self.max_task_failures,
            finalization_wait_secs: 1,
            health_check: None,
            http_lifecycle: None,
            sla_policy: self.sla_policy.clone(),
            partition_policy: self.partition_policy,
        }
    }
}

impl std::fmt::Debug for JobConfig {
    /// One line: what a trace reader needs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.resources;
        write!(
            f,
            "{}x cpu={} ram={}",
            self.instances, r.cpu_millis, r.ram_mib
        )?;
        if r.ports > 0 {
            write!(f, " ports={}", r.ports)?;
        }
        if self.service {
            write!(f, " service")?;
        }
        if self.production {
            write!(f, " production")?;
        }
        if !self.tier_explicit {
            write!(f, " tier=unset")?;
        } else if self.tier != Tier::Preferred {
            write!(f, " tier={}", self.tier.as_str())?;
        }
        if self.priority != 0 {
            write!(f, " priority={}", self.priority)?;
        }
        write!(f, " failures={} {:?}", self.max_task_failures, self.plan)?;
        if !self.tag.is_empty() {
            write!(f, " tag={}", self.tag)?;
        }
        for c in &self.constraints {
            match c {
                Constraint::Value {
                    attribute,
                    negated,
                    values,
                } => write!(
                    f,
                    " {attribute}{}{}",
                    if *negated { "!=" } else { "=" },
                    values.join("|")
                )?,
                Constraint::Limit { attribute, limit } => write!(f, " {attribute}<={limit}")?,
            }
        }
        Ok(())
    }
}

/// A request a client sent and waits on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Create {
        key: String,
    },
    Kill {
        key: String,
        instances: Vec<u32>,
    },
    Query {
        key: String,
    },
    SetQuota {
        role: String,
    },
    GetQuota {
        role: String,
    },
    /// The keys whose creation was acknowledged before the list was asked for: a page holds
    /// each that sorts up to its `next` (all of them when it is the last page).
    List {
        acked_before: BTreeSet<String>,
    },
    /// `ListAgents` (a page of them).
    ListAgents,
    /// `host maintenance ...` or `job restart` (answered with host statuses, or an ack).
    Host,
    Restart,
    /// `borealis update start` of `key` to `instances` instances over `scope` (empty: all).
    StartUpdate {
        key: String,
        instances: u32,
        scope: Vec<u32>,
    },
    /// `borealis update pause|resume|abort|rollback|pulse`, or `update status` (a query).
    Update {
        key: String,
    },
    /// `borealis cron schedule` of `key`: the job becomes a cron job (created if it is new).
    ScheduleCron {
        key: String,
    },
    /// `borealis cron deschedule|start` of `key`.
    Cron {
        key: String,
    },
}

/// A reply, as the builder API returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ack,
    Error {
        code: ErrorCode,
        message: String,
    },
    Status(JobStatusView),
    /// A page of jobs and the key to ask for the next one after (empty: the last page).
    List {
        jobs: Vec<JobSummaryView>,
        next: String,
    },
    /// A page of agents and the (hostname, agent id) to ask for the next one after.
    Agents {
        agents: Vec<borealis_net::views::AgentInfoView>,
        next: Option<(String, String)>,
    },
    /// The answer to `GetQuota`.
    Quota(QuotaView),
    /// The answer to `HostMaintenance`.
    Hosts(Vec<borealis_net::views::HostStatusView>),
    /// The answer to `StartUpdate`, `UpdateCommand` and `QueryUpdates`.
    Updates(Vec<UpdateInfoView>),
    /// The connection closed before the answer came (the outcome is unknown).
    Lost,
}

/// One client: a connection to a scheduler instance and its requests in flight.
#[derive(Debug, Default)]
pub struct SimClient {
    /// The world's key of the open connection.
    pub conn: Option<(usize, usize, u64)>,
    /// The instance to talk to (HA: the leader it was told of).
    pub target: usize,
    pub next_request_id: u64,
    pub in_flight: BTreeMap<u64, Request>,
    /// Answers by request id (read by the builder API).
    pub replies: BTreeMap<u64, Reply>,
    /// The token it authenticates every new connection with (`Authenticate` first).
    pub token: Option<String>,
}

impl SimClient {
    pub fn request_id(&mut self) -> u64 {
        self.next_request_id += 1;
        self.next_request_id
    }

    /// The connection closed: whatever was asked has an unknown outcome.
    pub fn on_disconnected(&mut self) {
        self.conn = None;
        for (id, _) in std::mem::take(&mut self.in_flight) {
            self.replies.insert(id, Reply::Lost);
        }
    }
}

/// What the scheduler acknowledged: the facts no crash, failover or fault may undo.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Jobs whose creation a client saw acknowledged.
    pub acked_creates: BTreeSet<String>,
    /// Instances whose kill a client saw acknowledged.
    pub acked_kills: BTreeMap<String, BTreeSet<u32>>,
    /// Keys created more than once: a later create may legitimately replace an ended job,
    /// so the per-job facts above do not apply to them.
    pub tainted: BTreeSet<String>,
    /// Keys a create was ever sent for.
    pub create_sent: BTreeSet<String>,
    /// Terminal statuses acknowledged to an agent: task → (state, job key, instance).
    pub acked_terminals: BTreeMap<TaskId, (TaskState, String, u32)>,
    /// Instances the scheduler ended for good (no replacement) after an acknowledged end
    /// (a terminal status acked to an agent, or a kill acked to a client).
    pub ended_instances: BTreeSet<(String, u32)>,
    /// Creates refused for quota (`QuotaExceeded`): a refusal is not an acknowledged create,
    /// and nothing of it may exist (for the keys the per-job facts apply to).
    pub refused_creates: BTreeSet<String>,
    /// Updates sent and not yet seen landing (no answer, and the job's latest update is still
    /// the one it had when they were sent): key → (that update's id, 0 for none; the
    /// instances they cover). Those instances are not noted ended meanwhile: the update may
    /// start them again.
    pub reviving: BTreeMap<String, (u64, BTreeSet<u32>)>,
    /// Keys a cron schedule was ever sent for. A cron job's instances are retired between
    /// runs and each trigger (or `cron start`) starts them again, a KILL_EXISTING trigger
    /// kills the run in progress, a schedule creates the job and a deschedule forgets it: the
    /// per-job facts above do not apply to them.
    pub cron: BTreeSet<String>,
}

impl Ledger {
    /// Whether the per-job facts apply to `key`.
    pub fn tracks(&self, key: &str) -> bool {
        !self.tainted.contains(key) && !self.cron.contains(key)
    }

    /// A cron schedule of `key` was sent: from now on (noted when sent, not when answered:
    /// the round that schedules it may trigger a run before the answer arrives) its
    /// instances may end and run again, be killed and run again, and the job may go.
    pub fn note_cron_sent(&mut self, key: &str) {
        self.cron.insert(key.to_string());
        self.ended_instances.retain(|(k, _)| k.as_str() != key);
        self.acked_kills.remove(key);
        self.reviving.remove(key);
    }

    pub fn note_create_sent(&mut self, key: &str) {
        if !self.create_sent.insert(key.to_string()) {
            self.tainted.insert(key.to_string());
        }
    }

    /// An update of `key` to `instances` instances over `scope` (empty: all) was sent. The
    /// instances it covers may run again (an update adds back an instance that ended or was
    /// killed): they leave the facts of ended and killed instances. Noted when sent, not
    /// when answered: the update takes instances in the round that starts it, before its
    /// answer arrives. `latest_update` is the job's latest update's id when it was sent (0: none).
    pub fn note_update_sent(
        &mut self,
        key: &str,
        instances: u32,
        scope: &[u32],
        latest_update: u64,
    ) {
        let covered = |i: u32| i < instances && (scope.is_empty() || scope.contains(&i));
        let entry = self
            .reviving
            .entry(key.to_string())
            .or_insert((latest_update, BTreeSet::new()));
        entry.0 = entry.0.min(latest_update);
        entry.1.extend((0..instances).filter(|&i| covered(i)));
        self.ended_instances
            .retain(|(k, i)| k.as_str() != key || !covered(*i));
        if let Some(killed) = self.acked_kills.get_mut(key) {
            if killed.contains(&u32::MAX) && !scope.is_empty() {
                // "Every instance" less some cannot be told apart from the job's count later.
                self.acked_kills.remove(key);
            } else {
                killed.retain(|&i| i != u32::MAX && !covered(i));
                if killed.is_empty() {
                    self.acked_kills.remove(key);
                }
            }
        }
    }

    /// Updates sent that the scheduler shows (the job's latest update is a newer one) are no
    /// longer pending; `latest` answers the job's latest update's id (None: no such job).
    pub fn note_updates_landed(&mut self, latest: impl Fn(&str) -> Option<u64>) {
        self.reviving
            .retain(|key, (since, _)| latest(key).is_none_or(|id| id <= *since));
    }

    /// Applies a client's reply; a reply that contradicts an acknowledged fact is a violation.
    pub fn on_reply(
        &mut self,
        request: &Request,
        message: &OwnedMessage,
    ) -> Result<Reply, Violation> {
        let reply = match message {
            OwnedMessage::Ack => Reply::Ack,
            OwnedMessage::Error { code, message, .. } => Reply::Error {
                code: *code,
                message: message.clone(),
            },
            OwnedMessage::JobStatus(status) => Reply::Status(status.clone()),
            OwnedMessage::JobList { jobs, next } => Reply::List {
                jobs: jobs.clone(),
                next: next.clone(),
            },
            OwnedMessage::AgentList { agents, next } => Reply::Agents {
                agents: agents.clone(),
                next: next.clone(),
            },
            OwnedMessage::QuotaInfo(info) => Reply::Quota(info.clone()),
            OwnedMessage::HostStatusList(hosts) => Reply::Hosts(hosts.clone()),
            OwnedMessage::UpdateList(updates) => Reply::Updates(updates.clone()),
            OwnedMessage::UpdateInfo(update) => Reply::Updates(vec![update.clone()]),
            other => {
                return Err(Violation::new(
                    "client_reply_well_formed",
                    format!("{request:?} was answered with {other:?}"),
                ))
            }
        };
        match (request, &reply) {
            (Request::Create { key }, Reply::Ack) => {
                self.acked_creates.insert(key.clone());
            }
            (Request::Create { key }, Reply::Error { code, .. })
                if *code == ErrorCode::QuotaExceeded =>
            {
                self.refused_creates.insert(key.clone());
            }
            (Request::StartUpdate { key, .. }, Reply::Updates(_) | Reply::Error { .. }) => {
                self.reviving.remove(key);
            }
            (Request::Kill { key, instances }, Reply::Ack) => {
                let set = self.acked_kills.entry(key.clone()).or_default();
                if instances.is_empty() {
                    // Every instance: a sentinel the checks expand to the job's count.
                    set.insert(u32::MAX);
                } else {
                    set.extend(instances.iter().copied());
                }
            }
            (Request::Query { key }, Reply::Error { code, message })
                if *code == ErrorCode::UnknownJob
                    && self.acked_creates.contains(key)
                    && self.tracks(key) =>
            {
                return Err(Violation::new(
                    "acked_create_exists",
                    format!("querying {key}, whose creation was acknowledged: {message}"),
                ));
            }
            (Request::List { acked_before }, Reply::List { jobs, next }) => {
                let listed: BTreeSet<&str> = jobs.iter().map(|j| j.job_key.as_str()).collect();
                let covered = |k: &str| next.is_empty() || k <= next.as_str();
                if let Some(missing) = acked_before
                    .iter()
                    .find(|k| self.tracks(k) && covered(k.as_str()) && !listed.contains(k.as_str()))
                {
                    return Err(Violation::new(
                        "acked_create_exists",
                        format!(
                            "ListJobs omits {missing}, whose creation was acknowledged before the list was asked for"
                        ),
                    ));
                }
            }
            _ => {}
        }
        Ok(reply)
    }

    /// The instances of `key` an acknowledged kill covers (`instances` is the job's count).
    pub fn killed_instances(&self, key: &str, instances: u32) -> BTreeSet<u32> {
        match self.acked_kills.get(key) {
            None => BTreeSet::new(),
            Some(set) if set.contains(&u32::MAX) => (0..instances).collect(),
            Some(set) => set.clone(),
        }
    }
}
