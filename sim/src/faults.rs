//! What a seed means: the cluster it builds (mode, shards, agents, clients) and the trace of
//! workload and faults it runs: jobs of random size, constraints and kind (a share of them
//! production work, in a named or unnamed tier, some of a higher priority) created, killed and
//! queried; roles' quotas set, raised, lowered below their use or to zero at random moments
//! (so that creates are admitted, refused, and their use released); agents lost and
//! returning, dying, losing acks, duplicating and reordering their status updates; the
//! scheduler crashing (mid-round) and recovering from its log, possibly into another shard
//! count; leadership lost and regained under etcd, with slow and failing persist
//! acknowledgements.

use borealis_core::{Constraint, Resources, Tier};
use borealis_shards::shard::InjectedBug;

use crate::agents::{AgentSpec, TaskPlan};
use crate::clients::JobConfig;
use crate::config::SchedulerFlags;
use crate::rng::Rng;
use crate::trace::{CrashPoint, Event};
use crate::world::{Mode, WorldConfig};

/// What the caller fixes instead of the seed.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Some(true): HA mode; Some(false): embedded; None: the seed decides (one in four HA).
    pub ha: Option<bool>,
    pub shards: Option<usize>,
    pub bug: Option<InjectedBug>,
    /// Events per trace (default: the seed picks 40 to 120).
    pub events: Option<usize>,
}

const ENVIRONMENTS: [&str; 3] = ["prod", "devel", "test"];

/// The cluster of a seed.
pub fn setup(seed: u64, options: &RunOptions) -> WorldConfig {
    let mut rng = Rng::stream(seed, "setup");
    let ha = options.ha.unwrap_or_else(|| rng.percent(25));
    let shards = options.shards.unwrap_or_else(|| rng.range(1, 4) as usize);
    let agent_count = rng.range(2, 7) as usize;
    let agents = (0..agent_count)
        .map(|i| {
            let resources = Resources {
                cpu_millis: *rng.pick(&[2_000, 4_000, 8_000]),
                ram_mib: *rng.pick(&[4_096, 8_192, 16_384]),
                disk_mib: *rng.pick(&[20_000, 100_000]),
                ports: *rng.pick(&[0, 20]),
            };
            let rack = format!("r{}", i % 3);
            let zone = format!("z{}", i % 2);
            let mut attrs = vec![("rack", rack.as_str()), ("zone", zone.as_str())];
            let dedicated = rng.percent(12);
            if dedicated {
                attrs.push(("dedicated", "db"));
            }
            AgentSpec::new(&format!("a{i}"), resources, &attrs)
        })
        .collect();
    WorldConfig {
        seed,
        mode: if ha { Mode::Ha } else { Mode::Embedded },
        shards,
        reconciliation_grace_ms: rng.range(2_000, 8_000),
        agents,
        clients: rng.range(1, 3) as usize,
        bug: options.bug,
        flags: SchedulerFlags::default(),
        coordinator: None,
    }
}

/// A random job: its size, constraints and kind from the trace's stream `rng`; its policy
/// (tier named or not, which tier, priority) from `policy`, a stream of its own, so that
/// traces keep their events when the policy mix changes.
fn random_job(rng: &mut Rng, policy: &mut Rng) -> JobConfig {
    let mut job = JobConfig::new(
        rng.range(1, 5) as u32,
        *rng.pick(&[100, 250, 500, 1_000, 2_000]),
        *rng.pick(&[64, 128, 512, 1_024, 2_048]),
    );
    if rng.percent(20) {
        job = job.ports(rng.range(1, 2) as u16);
    }
    if rng.percent(10) {
        job.resources.disk_mib = 30_000;
    }
    if rng.percent(15) {
        let racks: Vec<String> = (0..rng.range(1, 2)).map(|r| format!("r{r}")).collect();
        job = job.constraint(Constraint::Value {
            attribute: "rack".into(),
            negated: rng.percent(30),
            values: racks,
        });
    }
    if rng.percent(10) {
        job = job.constraint(Constraint::Limit {
            attribute: "host".into(),
            limit: 1,
        });
    }
    if rng.percent(5) {
        job = job.constraint(Constraint::Value {
            attribute: "dedicated".into(),
            negated: false,
            values: vec!["db".into()],
        });
    }
    if rng.percent(35) {
        job = job.service();
    }
    // Production work counts against its role's quota: admitted, refused, released.
    if rng.percent(30) {
        job = job.production();
    }
    job = match policy.below(100) {
        // Named no tier: preferred when production, the config's default (preemptible) else.
        0..=29 => job.no_tier(),
        // Production in these is refused (`tier: ...`); other work is preemptible anyway.
        30..=34 => job.tier(Tier::Preemptible),
        35..=37 => job.tier(Tier::Revocable),
        _ => job.tier(Tier::Preferred),
    };
    if job.production && policy.percent(40) {
        // Orders preemption among the role's own production tasks.
        job = job.priority(policy.range(1, 3) as i32);
    }
    job = job.max_task_failures(*rng.pick(&[-1, 0, 1, 3]));
    job.plan(if rng.percent(85) {
        TaskPlan::Random
    } else {
        TaskPlan::RunForever
    })
}

/// The trace of a seed for the cluster `config`.
pub fn trace(seed: u64, config: &WorldConfig, options: &RunOptions) -> Vec<Event> {
    let mut rng = Rng::stream(seed, "trace");
    let mut policy = Rng::stream(seed, "policy");
    let agents = config.agents.len();
    let clients = config.clients.max(1);
    let ha = config.mode == Mode::Ha;
    let count = options
        .events
        .unwrap_or_else(|| rng.range(40, 120) as usize);
    let mut events = Vec::with_capacity(count + agents);
    for agent in 0..agents {
        events.push(Event::AgentStart { agent });
        if rng.percent(30) {
            events.push(Event::Advance {
                ms: rng.range(1, 300),
            });
        }
    }
    for role in 0..3 {
        if rng.percent(60) {
            events.push(Event::SetQuota {
                client: 0,
                role: format!("role{role}"),
                cpu_millis: 20_000,
                ram_mib: 40_000,
                disk_mib: 400_000,
            });
        }
    }
    let mut keys: Vec<String> = Vec::new();
    while events.len() < count + agents + 3 {
        let roll = rng.below(100);
        let client = rng.below(clients as u64) as usize;
        let agent = rng.below(agents as u64) as usize;
        let event = match roll {
            0..=29 => Event::Advance {
                ms: match rng.below(10) {
                    0..=4 => rng.range(5, 200),
                    5..=8 => rng.range(200, 3_000),
                    _ => rng.range(3_000, 15_000),
                },
            },
            30..=45 => {
                let key = if !keys.is_empty() && rng.percent(8) {
                    rng.pick(&keys).clone()
                } else {
                    let key = format!(
                        "role{}/{}/job{}",
                        rng.below(3),
                        rng.pick(&ENVIRONMENTS),
                        keys.len()
                    );
                    keys.push(key.clone());
                    key
                };
                Event::CreateJob {
                    client,
                    key,
                    job: random_job(&mut rng, &mut policy),
                }
            }
            46..=51 if !keys.is_empty() => {
                let key = rng.pick(&keys).clone();
                let instances = if rng.percent(40) {
                    Vec::new()
                } else {
                    let mut list: Vec<u32> =
                        (0..rng.range(1, 2)).map(|_| rng.below(3) as u32).collect();
                    list.sort_unstable();
                    list.dedup();
                    list
                };
                Event::KillJob {
                    client,
                    key,
                    instances,
                }
            }
            52..=55 if !keys.is_empty() => Event::QueryJob {
                client,
                key: rng.pick(&keys).clone(),
            },
            56..=57 => Event::ListJobs { client },
            58..=63 => Event::AgentDisconnect {
                agent,
                down_ms: match rng.below(3) {
                    0 => rng.range(50, 500),
                    1 => rng.range(500, 4_000),
                    _ => rng.range(4_000, 12_000),
                },
            },
            64..=65 => Event::AgentRestart {
                agent,
                down_ms: rng.range(200, 5_000),
            },
            66..=69 => Event::LoseAcks {
                agent,
                count: rng.range(1, 3) as u32,
            },
            70..=73 => Event::GarbleStatuses {
                agent,
                duplicate: rng.percent(70),
                reorder: rng.percent(70),
                ms: rng.range(1_000, 10_000),
            },
            74..=77 if !ha => Event::Crash {
                after_rounds: if rng.percent(20) {
                    0
                } else {
                    rng.range(1, 40) as u32
                },
                point: *rng.pick(&[
                    CrashPoint::BetweenRounds,
                    CrashPoint::BeforeCommit,
                    CrashPoint::AfterCommit,
                ]),
                down_ms: rng.range(0, 3_000),
                restart_shards: if rng.percent(75) {
                    config.shards
                } else {
                    rng.range(1, 4) as usize
                },
            },
            74..=77 => Event::LeaderLoss {
                pause_ms: rng.range(0, 3_000),
                next: rng.below(2) as usize,
                same_term: rng.percent(25),
            },
            78..=81 if ha => Event::SlowEtcd {
                delay_ms: rng.range(50, 3_000),
                fail_percent: *rng.pick(&[0, 0, 10, 30]),
                ms: rng.range(2_000, 20_000),
            },
            82 => Event::Settle,
            86 => Event::ClientDisconnect { client },
            83..=85 => Event::SetQuota {
                client,
                role: format!("role{}", rng.below(3)),
                cpu_millis: *rng.pick(&[0, 2_000, 8_000, 40_000]),
                ram_mib: *rng.pick(&[0, 4_096, 40_000]),
                disk_mib: *rng.pick(&[1_000, 100_000, 1_000_000]),
            },
            _ => continue,
        };
        events.push(event);
    }
    events
}
