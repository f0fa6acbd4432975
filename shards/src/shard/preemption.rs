//! Preemption (Aurora's preemptor): a PENDING production task that found no offer for
//! `--preemption-delay` looks for an agent where killing a few tasks would make room.
//!
//! The search spans every shard, by message, and no shard blocks:
//! 1. every `--preemption-slot-search-interval` a job owner picks its production tasks blocked
//!    longer than the delay (a bounded number) and sends each shard a `SlotSearch`;
//! 2. each shard, as the home of its agents, looks at every agent whose offer it holds: an
//!    agent where the task fits without preemption ends the search (the task is placed by
//!    borrowing, not by killing); else core's `find_victims` picks the fewest, cheapest victims
//!    among the agent's tasks; the shard answers its best slot (`SlotFound`);
//! 3. the owner takes the best slot of all answers (fewest victims, then cheapest) and claims it
//!    (`SlotClaim`) from the agent's home, which re-checks it and, when it still holds, takes
//!    the agent's offer out of placement (`OfferWhere::Held`) for `--preemption-slot-hold-time`
//!    and asks the victims' owners to preempt them (`Preempt`: PREEMPTING → KILLED, with the
//!    preemptor's id recorded);
//! 4. as the victims end, their resources collect in the held offer; once the preemptor's
//!    demand fits, the home lends the offer to the preemptor's owner, reserved for it, and the
//!    owner places the task there in the same round. A hold that expires first goes back to
//!    placement.

use borealis_core::placement::{limit_ok, satisfies_constraints};
use borealis_core::preemption::{self, Candidate, Preemptor};

use super::*;

/// Preemption searches a shard starts per search interval.
const SEARCHES_PER_INTERVAL_MAX: usize = 16;
/// Searches in flight per shard (each waits for every shard's answer).
const SEARCHES_IN_FLIGHT_MAX: usize = 64;

/// A search waiting for the shards' answers.
pub(super) struct Search {
    task_id: TaskId,
    waiting: usize,
    best: Option<SlotOffer>,
    /// Some shard can place the task without preemption: no slot is claimed.
    fits_somewhere: bool,
}

/// A slot a shard found: the agent, the victims (with their owners) and their cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotOffer {
    pub agent: AgentId,
    pub victims: Vec<(TaskId, ShardId)>,
    /// Production victims, then the victims' resources summed: lower is cheaper.
    pub cost: (usize, usize, u64),
}

/// What a home knows of a task running on one of its agents: what a search weighs.
#[derive(Clone, Debug)]
pub struct RunningTask {
    pub owner: ShardId,
    /// Its job's config (shared with the launch: no copy per task): role, priority,
    /// production, resources.
    pub config: Arc<TaskConfig>,
    pub preemptible: bool,
    /// Already chosen as a victim (not offered twice).
    pub preempting: bool,
}

impl RunningTask {
    pub(super) fn of(owner: ShardId, config: &Arc<TaskConfig>, tiers: &TierConfig) -> RunningTask {
        RunningTask {
            owner,
            config: config.clone(),
            preemptible: tiers.is_preemptible(config),
            preempting: false,
        }
    }
}

/// A search request as it travels to each shard.
#[derive(Clone, Debug)]
pub struct SlotQuery {
    pub token: u64,
    pub task_id: TaskId,
    pub config: Arc<TaskConfig>,
    pub spread: Vec<(String, String, u32)>,
}

impl Shard {
    /// Owner side, on the sweep: starts the searches that are due.
    pub(super) fn search_preemption_slots(&mut self) {
        if !self.config.enable_preemptor || !self.acting() {
            return;
        }
        let now = self.now_us;
        if elapsed_us(now, self.last_preemption_search_us)
            < self.config.preemption_slot_search_interval_ms * 1000
        {
            return;
        }
        self.last_preemption_search_us = now;
        let delay_ms = self.config.preemption_delay_ms;
        let mut started = 0;
        let blocked: Vec<JobIdx> = self.blocked_jobs.iter().map(|&(_, job)| job).collect();
        for job in blocked {
            if started == SEARCHES_PER_INTERVAL_MAX || self.searches.len() >= SEARCHES_IN_FLIGHT_MAX
            {
                break;
            }
            let j = &self.jobs[job];
            if !j.config.production {
                continue; // only production work preempts (Aurora)
            }
            // The job's oldest blocked task that waited long enough and has no slot yet.
            let Some(task_id) = j.blocked.iter().copied().find(|id| {
                self.tasks.get(id).is_some_and(|t| {
                    t.state == TaskState::Pending
                        && preemption::eligible_for_preemption(
                            t.entered_us / 1000,
                            now / 1000,
                            delay_ms,
                        )
                }) && !self.slot_holds.contains_key(id)
            }) else {
                continue;
            };
            self.next_search_token += 1;
            let token = self.next_search_token;
            let query = SlotQuery {
                token,
                task_id,
                config: j.config.clone(),
                spread: self.index.spread_named(&j.spread),
            };
            self.searches.insert(
                token,
                Search {
                    task_id,
                    waiting: self.shard_count,
                    best: None,
                    fits_somewhere: false,
                },
            );
            for shard in ShardId::all(self.shard_count) {
                self.send(shard, PeerMsg::SlotSearch(query.clone()));
            }
            started += 1;
        }
    }

    /// Home side: the best slot among this shard's agents for the queried task.
    pub(super) fn find_slot(&mut self, from: ShardId, query: SlotQuery) {
        let config = &query.config;
        let compiled = self.index.compile(config);
        let spread = self.index.spread_from_named(&compiled, &query.spread);
        let preemptor = Preemptor {
            role: &config.job.role,
            priority: config.priority,
            production: config.production,
            demand: config.resources,
        };
        let mut agents: Vec<AgentId> = self
            .home_agents
            .iter()
            .filter(|(_, a)| matches!(a.offer, OfferWhere::Home))
            .map(|(id, _)| *id)
            .collect();
        agents.sort();
        let mut best: Option<SlotOffer> = None;
        let mut fits = false;
        for agent in agents {
            let (Some(free), Some(attrs)) =
                (self.index.free(agent), self.index.attribute_ids(agent))
            else {
                continue;
            };
            if !satisfies_constraints(&compiled, attrs) || !limit_ok(&compiled, &spread, attrs) {
                continue;
            }
            if free.contains(&config.resources) {
                // Never preempt for a task that fits without it.
                fits = true;
                break;
            }
            let a = &self.home_agents[&agent];
            // Victims already being preempted here (a hold that expired before they ended)
            // free their room soon: count it, or a second set of victims would be taken.
            let dying = a
                .running
                .values()
                .filter(|r| r.preempting)
                .fold(Resources::ZERO, |sum, r| sum.plus(&r.config.resources));
            if free.plus(&dying).contains(&config.resources) {
                let slot = SlotOffer {
                    agent,
                    victims: Vec::new(),
                    cost: (0, 0, 0),
                };
                if best
                    .as_ref()
                    .is_none_or(|b| (slot.cost, slot.agent) < (b.cost, b.agent))
                {
                    best = Some(slot);
                }
                continue;
            }
            let free = free.plus(&dying);
            let mut running: Vec<(&TaskId, &RunningTask)> =
                a.running.iter().filter(|(_, r)| !r.preempting).collect();
            running.sort_by_key(|(id, _)| **id);
            let candidates: Vec<Candidate> = running
                .iter()
                .map(|(id, r)| Candidate {
                    task_id: **id,
                    role: &r.config.job.role,
                    priority: r.config.priority,
                    production: r.config.production,
                    preemptible: r.preemptible,
                    resources: r.config.resources,
                })
                .collect();
            let Some(victims) = preemption::find_victims(&preemptor, &free, &candidates) else {
                continue;
            };
            let production = victims
                .iter()
                .filter(|v| a.running[v].config.production)
                .count();
            let size: u64 = victims
                .iter()
                .map(|v| {
                    let r = &a.running[v].config.resources;
                    u64::from(r.cpu_millis) + u64::from(r.ram_mib) + u64::from(r.disk_mib)
                })
                .sum();
            let slot = SlotOffer {
                agent,
                victims: victims.iter().map(|v| (*v, a.running[v].owner)).collect(),
                cost: (victims.len(), production, size),
            };
            if best
                .as_ref()
                .is_none_or(|b| (slot.cost, slot.agent) < (b.cost, b.agent))
            {
                best = Some(slot);
            }
        }
        self.send(
            from,
            PeerMsg::SlotFound {
                token: query.token,
                slot: if fits { None } else { best },
                fits,
            },
        );
    }

    /// Owner side: one shard's answer; the best slot is claimed once all have answered.
    pub(super) fn slot_found(&mut self, token: u64, slot: Option<SlotOffer>, fits: bool) {
        let Some(search) = self.searches.get_mut(&token) else {
            return;
        };
        search.waiting -= 1;
        search.fits_somewhere |= fits;
        if let Some(slot) = slot {
            if search
                .best
                .as_ref()
                .is_none_or(|b| (slot.cost, slot.agent) < (b.cost, b.agent))
            {
                search.best = Some(slot);
            }
        }
        if search.waiting > 0 {
            return;
        }
        let search = self.searches.remove(&token).expect("present");
        let Some(slot) = search.best.filter(|_| !search.fits_somewhere) else {
            return;
        };
        let task_id = search.task_id;
        let Some(t) = self
            .tasks
            .get(&task_id)
            .filter(|t| t.state == TaskState::Pending)
        else {
            return; // placed, killed or gone meanwhile
        };
        let demand = self.jobs[t.job].config_of(t.rev).resources;
        let hold_ms = self.config.preemption_slot_hold_time_ms;
        self.slot_holds
            .insert(task_id, self.now_us + hold_ms * 1000);
        self.metrics().preemption_slots_claimed_total.inc();
        self.send(
            agent_home(slot.agent),
            PeerMsg::SlotClaim {
                agent: slot.agent,
                task_id,
                demand,
                victims: slot.victims,
                hold_ms,
            },
        );
    }

    /// Home side: holds the agent for the preemptor and has the victims preempted, if the
    /// slot still holds (the victims still run there and free them enough room).
    pub(super) fn claim_slot(
        &mut self,
        owner: ShardId,
        agent: AgentId,
        task_id: TaskId,
        demand: Resources,
        victims: Vec<(TaskId, ShardId)>,
        hold_ms: u64,
    ) {
        let Some(a) = self.home_agents.get(&agent) else {
            return;
        };
        if !matches!(a.offer, OfferWhere::Home) {
            return;
        }
        let Some(free) = self.index.free(agent) else {
            return;
        };
        let still_there = victims
            .iter()
            .all(|(v, _)| a.running.get(v).is_some_and(|r| !r.preempting));
        let dying = a
            .running
            .values()
            .filter(|r| r.preempting)
            .fold(free, |sum, r| sum.plus(&r.config.resources));
        let freed = victims
            .iter()
            .filter_map(|(v, _)| a.running.get(v))
            .fold(dying, |sum, r| sum.plus(&r.config.resources));
        if !still_there || !freed.contains(&demand) {
            return; // the search finds another slot next interval
        }
        self.index.remove_agent(agent);
        let a = self.home_agents.get_mut(&agent).expect("checked");
        a.offer = OfferWhere::Held {
            preemptor: task_id,
            owner,
            demand,
            free,
            expires_us: self.now_us + hold_ms * 1000,
        };
        for (victim, _) in &victims {
            if let Some(r) = a.running.get_mut(victim) {
                r.preempting = true;
            }
        }
        tracing::info!(
            shard = %self.id,
            agent = %a.name,
            preemptor = %task_id,
            victims = victims.len(),
            "preemption slot held"
        );
        for (victim, victim_owner) in victims {
            self.send(
                victim_owner,
                PeerMsg::Preempt {
                    task_id: victim,
                    preemptor: task_id,
                },
            );
        }
        self.maybe_release_hold(agent);
    }

    /// Victim's owner: PREEMPTING (the kill goes to its agent), then KILLED.
    pub(super) fn preempt(&mut self, task_id: TaskId, preemptor: TaskId) {
        if !self.may_transition(task_id, TaskState::Preempting) {
            return; // it ended or is being killed already
        }
        if !self.tasks[&task_id].state.is_active() {
            return;
        }
        self.tasks.get_mut(&task_id).expect("checked").preempted_by = Some(preemptor);
        self.metrics().preemptions_total.inc();
        self.transition(
            task_id,
            TaskState::Preempting,
            &format!("preempted by production task {preemptor}"),
        );
    }

    /// Home side: a held offer that now has room for its preemptor goes to the preemptor's
    /// owner, reserved; one whose hold expired goes back to placement.
    pub(super) fn maybe_release_hold(&mut self, agent: AgentId) {
        let now = self.now_us;
        let Some(a) = self.home_agents.get_mut(&agent) else {
            return;
        };
        let OfferWhere::Held {
            preemptor,
            owner,
            demand,
            free,
            expires_us,
        } = a.offer
        else {
            return;
        };
        if free.contains(&demand) {
            let offer = self.mark_lent(agent, free);
            self.send(
                owner,
                PeerMsg::Lend {
                    offers: vec![offer],
                    reserved_for: Some(preemptor),
                },
            );
        } else if now >= expires_us {
            tracing::info!(shard = %self.id, agent = %a.name, preemptor = %preemptor, "preemption slot expired");
            self.offer_home(agent, free);
        }
        // Else: still waiting for the victims to end.
    }

    /// Home side, on the sweep: expired holds go back to placement.
    pub(super) fn expire_slot_holds(&mut self) {
        let held: Vec<AgentId> = self
            .home_agents
            .iter()
            .filter(|(_, a)| matches!(a.offer, OfferWhere::Held { .. }))
            .map(|(id, _)| *id)
            .collect();
        for agent in held {
            self.maybe_release_hold(agent);
        }
        // Owner side: forget holds of our tasks that expired (they may search again).
        let now = self.now_us;
        self.slot_holds.retain(|_, until| *until > now);
    }

    /// Owner side: a reserved offer arrived for a preemptor: place it now, before anything
    /// else can take the room.
    pub(super) fn place_preemptor(&mut self, task_id: TaskId) {
        self.slot_holds.remove(&task_id);
        let Some(t) = self.tasks.get(&task_id) else {
            return;
        };
        if t.state != TaskState::Pending {
            return;
        }
        let (job, rev) = (t.job, t.rev);
        let mut agents = Vec::with_capacity(1);
        let j = &mut self.jobs[job];
        let compiled = if rev == j.head_rev {
            &j.compiled
        } else {
            &j.others
                .get(&rev)
                .expect("a revision the job keeps")
                .compiled
        };
        if self
            .index
            .place_batch(compiled, &mut j.spread, 1, &mut agents)
            == 1
        {
            // Its id left in the blocked list is skipped: it is no longer PENDING.
            self.assign(task_id, agents[0]);
        }
    }
}
