//! Shard rounds: which shard is ready, the round itself (exactly the runtime's), and the
//! loop that runs rounds until nothing is in flight.

use super::*;

impl World {
    // ----- rounds -----

    pub(super) fn ready(&self, i: usize, s: usize) -> bool {
        let inst = &self.instances[i];
        inst.up
            && (!inst.inbound[s].is_empty()
                || (inst.shards[s].has_pending() && !inst.stalled[s])
                || inst.control.as_ref().is_some_and(|c| c.has_messages_for(s)))
    }

    /// Runs rounds until no shard has anything to do.
    pub(super) fn run_rounds(&mut self) {
        loop {
            if self.failed.is_some() {
                return;
            }
            let mut ready = Vec::new();
            for i in 0..self.instances.len() {
                for s in 0..self.instances[i].shards.len() {
                    if self.ready(i, s) {
                        ready.push((i, s));
                    }
                }
            }
            if ready.is_empty() {
                return;
            }
            let (i, s) = *self.rng.pick(&ready);
            if let Some(c) = self.pending_crash.as_mut() {
                if c.rounds_left == 0 {
                    let c = self.pending_crash.take().expect("armed");
                    match c.point {
                        CrashPoint::BetweenRounds => self.crash(None, c.down_ms, c.restart_shards),
                        CrashPoint::BeforeCommit => {
                            self.crash(Some(s), c.down_ms, c.restart_shards)
                        }
                        CrashPoint::AfterCommit => {
                            self.round(i, s, false);
                            self.crash(None, c.down_ms, c.restart_shards);
                        }
                    }
                    continue;
                }
                c.rounds_left -= 1;
            }
            self.round(i, s, true);
            self.rounds_this_step += 1;
            if self.rounds_this_step > STEP_ROUNDS_MAX {
                self.fail(Violation::new(
                    "rounds_terminate",
                    format!("{STEP_ROUNDS_MAX} rounds in one step without the shards going idle"),
                ));
            }
        }
    }

    pub(super) fn push_inbound(&mut self, i: usize, s: usize, item: Inbound) {
        let inst = &mut self.instances[i];
        if !inst.up || s >= inst.inbound.len() {
            return;
        }
        inst.inbound[s].push_back(item);
        inst.stalled[s] = false;
    }

    /// One round of shard (i, s); with `deliver` false, what it wrote to connections stays
    /// in their pipes (a crash right after the commit loses it).
    pub(super) fn round(&mut self, i: usize, s: usize, deliver: bool) {
        self.stats.rounds += 1;
        let clock = self.clock();
        let take = if self.instances[i].inbound[s].len() <= 1 {
            1
        } else {
            self.rng.range(1, ROUND_INBOUND_MAX as u64) as usize
        };
        let inst = &mut self.instances[i];
        let shard = &mut inst.shards[s];
        shard.begin_round(clock);
        shard.poll_control();
        for _ in 0..take {
            match inst.inbound[s].pop_front() {
                Some(item) => shard.handle(item),
                None => break,
            }
        }
        shard.end_round();
        let mut produced = false;
        for peer in 0..inst.shard_count {
            if peer == s {
                continue;
            }
            if let Some(batch) = inst.shards[s].take_outbox(ShardId(peer)) {
                produced = true;
                if let Some(history) = self.history.as_mut() {
                    let at_ms = self.now_us / 1000;
                    for m in &batch {
                        if let Some(what) = describe_peer(m) {
                            history.peer_messages.push(PeerRecord {
                                at_ms,
                                instance: i,
                                from: s,
                                to: peer,
                                what,
                            });
                        }
                    }
                }
                inst.inbound[peer].push_back(Inbound::Peer {
                    from: ShardId(s),
                    batch,
                });
                inst.stalled[peer] = false;
            }
        }
        let transitions = inst.shards[s].take_transitions();
        if let Some(history) = self.history.as_mut() {
            let at_ms = self.now_us / 1000;
            history
                .transitions
                .extend(transitions.iter().map(|t| TransitionRecord {
                    at_ms,
                    instance: i,
                    shard: s,
                    task: t.task,
                    from: t.from,
                    to: t.to,
                }));
        }
        if let Err(v) = self.checker.transitions(s, &transitions) {
            self.fail(v);
        }
        // The control thread takes the persist requests (HA).
        let mut requests = Vec::new();
        if let Some(c) = self.instances[i].control.as_mut() {
            while let Ok(r) = c.from_shards.try_recv() {
                requests.push(r);
            }
        }
        for r in requests {
            produced = true;
            self.log(|| match &r {
                borealis_shards::ha::ToControl::Persist {
                    shard,
                    token,
                    key,
                    job,
                } => format!(
                    "persist from {i}/{shard} #{token} {key} retired {:?}",
                    job.as_ref().map(|j| j.retired.clone())
                ),
                other => format!("{other:?}"),
            });
            let slow = self
                .etcd
                .as_ref()
                .is_some_and(|e| self.now_us < e.slow_until_us);
            let latency = if slow {
                let d = self.etcd.as_ref().map_or(0, |e| e.slow_delay_ms) * 1000;
                self.rng.range(d / 2, d.max(1))
            } else {
                self.rng.range(ETCD_LATENCY_US.0, ETCD_LATENCY_US.1)
            };
            let now = self.now_us;
            if let Some(etcd) = self.etcd.as_mut() {
                let due = etcd.enqueue(i, r, now, latency);
                self.arm(due - now, Timer::Etcd { instance: i });
            }
        }
        if deliver {
            produced |= self.deliver_outputs(i, s);
        }
        let inst = &mut self.instances[i];
        if inst.up && s < inst.shards.len() {
            inst.stalled[s] = inst.shards[s].has_pending() && !produced && transitions.is_empty();
        }
        if produced || !transitions.is_empty() {
            self.dirty = true;
        }
    }
}
