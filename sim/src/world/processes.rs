//! The scheduler processes: booting an instance (recovery from its log, or a follower under
//! etcd), its crash, and the elections that move leadership between instances.

use super::*;

impl World {
    // ----- scheduler processes -----

    /// Starts instance `i` with `shards` shards: recovery from its log (embedded), or a
    /// follower waiting for the control thread (HA).
    pub(super) fn boot(&mut self, i: usize, shards: usize) {
        let recovered = match &self.data_dir {
            Some(dir) => match borealis_shards::recover(&dir.0, shards, &mut self.epoch) {
                Ok(r) => r.into_iter().map(Some).collect(),
                Err(e) => {
                    self.fail(Violation::new("recovery_succeeds", format!("{e:#}")));
                    return;
                }
            },
            None => (0..shards).map(|_| None).collect::<Vec<_>>(),
        };
        let config = scheduler_config(&SimSchedulerSettings {
            shards,
            data_dir: self.data_dir.as_ref().map(|d| d.0.clone()),
            epoch: self.epoch,
            reconciliation_grace_ms: self.cfg.reconciliation_grace_ms,
            flags: self.cfg.flags.clone(),
        });
        self.epoch += 1;
        let metrics = Metrics::new(shards, &config.cluster_name);
        let (control, links) = match self.cfg.mode {
            Mode::Ha => {
                let (control, links) = Control::new(shards);
                (Some(control), links.into_iter().map(Some).collect())
            }
            Mode::Embedded => (None, (0..shards).map(|_| None).collect::<Vec<_>>()),
        };
        let clock = self.clock();
        if let Some(old) = self.instances[i].coordinator.take() {
            self.coordinator_seen.add(&old.stats);
        }
        let (coordinator, mut coordinator_links) = match self.cfg.coordinator {
            Some(script) => {
                let (c, links) = crate::coordinator::SimCoordinator::new(script, shards, 10);
                (Some(c), links.into_iter().map(Some).collect())
            }
            None => (None, (0..shards).map(|_| None).collect::<Vec<_>>()),
        };
        let mut list = Vec::with_capacity(shards);
        for (id, (restored, links)) in recovered.into_iter().zip(links).enumerate() {
            let mut shard = Shard::new(ShardId(id), shards, config.clone(), metrics.clone(), clock);
            if let Some((image, wal)) = restored {
                shard.restore(image, wal);
            }
            if let Some(links) = links {
                shard.set_links(links);
            }
            if let Some(links) = coordinator_links[id].take() {
                shard.set_coordinator(links);
            }
            shard.record_transitions();
            if let Some(bug) = self.cfg.bug {
                shard.inject_bug(bug);
            }
            list.push(shard);
        }
        let inst = &mut self.instances[i];
        inst.shards = list;
        inst.inbound = (0..shards).map(|_| VecDeque::new()).collect();
        inst.stalled = vec![false; shards];
        inst.shard_count = shards;
        inst.control = control;
        inst.coordinator = coordinator;
        inst.up = true;
        inst.since_us = self.now_us;
    }

    /// kill -9 of the embedded scheduler: `mid_round` (a shard) dies between a round's
    /// appends and its commit; every connection breaks; it restarts after `down_ms`.
    pub(super) fn crash(&mut self, mid_round: Option<usize>, down_ms: u64, restart_shards: usize) {
        if self.cfg.mode != Mode::Embedded || !self.instances[0].up {
            return;
        }
        self.stats.crashes += 1;
        self.log(|| format!("CRASH (mid-round on shard {mid_round:?})"));
        let clock = self.clock();
        let take = self.rng.range(1, ROUND_INBOUND_MAX as u64) as usize;
        let inst = &mut self.instances[0];
        if let Some(s) = mid_round.filter(|&s| s < inst.shard_count) {
            let shard = &mut inst.shards[s];
            shard.begin_round(clock);
            shard.poll_control();
            for _ in 0..take {
                match inst.inbound[s].pop_front() {
                    Some(item) => shard.handle(item),
                    None => break,
                }
            }
            // No end_round: what the round appended never reaches the disk, and nothing
            // of it left the shard.
        }
        inst.shards.clear();
        inst.inbound.clear();
        inst.stalled.clear();
        inst.up = false;
        let keys: Vec<ConnKey> = self.conns.keys().filter(|k| k.0 == 0).copied().collect();
        for key in keys {
            self.drop_conn(key, false);
        }
        self.arm(
            down_ms * 1000,
            Timer::Restart {
                shards: restart_shards.clamp(1, 4),
            },
        );
    }

    /// Lands an armed crash now (between rounds).
    pub(super) fn crash_now(&mut self) {
        if let Some(c) = self.pending_crash.take() {
            self.crash(None, c.down_ms, c.restart_shards);
        }
    }

    /// The etcd election makes `next` lead (same term after a pause, or a new term).
    pub(super) fn elect(&mut self, next: usize, same_term: bool) {
        let Some(etcd) = self.etcd.as_mut() else {
            return;
        };
        self.stats.elections += 1;
        let n = self.instances.len();
        if same_term && etcd.last_leader == Some(next) && etcd.fence > 0 {
            // The same term came back after a pause (`watch_leadership`: Lead with no jobs).
            etcd.leader = Some(next);
            let fence = etcd.fence;
            if let Some(c) = &self.instances[next].control {
                for s in 0..self.instances[next].shard_count {
                    c.send(
                        s,
                        ToShard::Lead {
                            fence,
                            jobs: Vec::new(),
                            quotas: Vec::new(),
                            hosts: Vec::new(),
                        },
                    );
                }
            }
            return;
        }
        let fence = etcd.elect(next);
        let parts = etcd.partition(self.instances[next].shard_count);
        for i in 0..n {
            let inst = &mut self.instances[i];
            let Some(c) = &inst.control else { continue };
            if i == next {
                for (s, (jobs, quotas, hosts)) in parts.iter().enumerate() {
                    c.send(
                        s,
                        ToShard::Lead {
                            fence,
                            jobs: jobs.clone(),
                            quotas: quotas.clone(),
                            hosts: hosts.clone(),
                        },
                    );
                }
                inst.since_us = self.now_us;
            } else {
                for s in 0..inst.shard_count {
                    c.send(
                        s,
                        ToShard::Follow {
                            leader: Some(instance_address(next)),
                        },
                    );
                }
            }
        }
    }

    pub(super) fn leader_loss(&mut self, pause_ms: u64, next: usize, same_term: bool) {
        let Some(etcd) = self.etcd.as_mut() else {
            return;
        };
        let Some(old) = etcd.leader.take() else {
            return;
        };
        if let Some(c) = &self.instances[old].control {
            for s in 0..self.instances[old].shard_count {
                c.send(s, ToShard::Follow { leader: None });
            }
        }
        let next = next % self.instances.len();
        self.arm(pause_ms * 1000, Timer::Elect { next, same_term });
    }
}
