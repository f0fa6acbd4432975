//! The events a run is made of, and the shrinking of a failing trace.
//!
//! A run is its seed (which fixes the cluster: shards, agents, clients, mode) and a trace of
//! events generated from the seed ([`crate::faults::trace`]). Every event is self-contained
//! and harmless when its premise is gone (a kill of a job never created, an agent that is not
//! connected), so any subset of a trace is a valid run: shrinking removes events and re-runs
//! the subset, deterministically, keeping the smallest one that still fails the same way.

use crate::clients::JobConfig;

/// Where in a round a crash lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// Between two rounds.
    BetweenRounds,
    /// After the round's inbound items were applied (and their records appended), before its
    /// commit: none of it is durable, none of it left.
    BeforeCommit,
    /// After the round's commit, before what it wrote to connections and peers left the
    /// process (the writer tasks and peer channels die with it).
    AfterCommit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Simulated time passes: timers fire, every shard gets a tick each 50 ms.
    Advance {
        ms: u64,
    },
    /// The agent process starts and connects.
    AgentStart {
        agent: usize,
    },
    /// The agent's connection breaks; it reconnects after `down_ms` and registers with every
    /// task it knows.
    AgentDisconnect {
        agent: usize,
        down_ms: u64,
    },
    /// The agent process dies with its tasks and starts again, empty, after `down_ms`.
    AgentRestart {
        agent: usize,
        down_ms: u64,
    },
    /// The next `count` `StatusAck`s to the agent are lost (it reports those ends again).
    LoseAcks {
        agent: usize,
        count: u32,
    },
    /// For `ms`, the agent duplicates and/or reorders the status updates it sends.
    GarbleStatuses {
        agent: usize,
        duplicate: bool,
        reorder: bool,
        ms: u64,
    },
    CreateJob {
        client: usize,
        key: String,
        job: JobConfig,
    },
    /// Kills `instances` of the job (empty: all of them).
    KillJob {
        client: usize,
        key: String,
        instances: Vec<u32>,
    },
    QueryJob {
        client: usize,
        key: String,
    },
    /// Sets a role's production quota.
    SetQuota {
        client: usize,
        role: String,
        cpu_millis: u32,
        ram_mib: u32,
        disk_mib: u32,
    },
    ListJobs {
        client: usize,
    },
    /// The client's connection breaks (whatever it asked has an unknown outcome).
    ClientDisconnect {
        client: usize,
    },
    /// Embedded mode: the scheduler process dies (kill -9) once `after_rounds` more shard
    /// rounds have run (in this step or later ones: a crash lands while messages are in
    /// flight between shards, agents and clients), at `point` of the round that comes next.
    /// It restarts after `down_ms`, recovering its log into `restart_shards` shards.
    Crash {
        after_rounds: u32,
        point: CrashPoint,
        down_ms: u64,
        restart_shards: usize,
    },
    /// HA mode: leadership becomes unknown for `pause_ms`; then instance `next` leads, in the
    /// same term when `same_term` and it led before (a pause), else in a new one.
    LeaderLoss {
        pause_ms: u64,
        next: usize,
        same_term: bool,
    },
    /// HA mode: for `ms`, etcd answers persist requests `delay_ms` late and fails
    /// `fail_percent` of them.
    SlowEtcd {
        delay_ms: u64,
        fail_percent: u64,
        ms: u64,
    },
    /// Every fault heals, the cluster settles past the reconciliation grace, and the quiet
    /// invariants are checked.
    Settle,
}

/// The smallest subset of `0..len` for which `fails` still holds, by removing chunks (halves,
/// quarters, ...) and then single events, until nothing more can go or `budget` re-runs are
/// spent. `fails` must hold for the whole range.
pub fn shrink(len: usize, budget: usize, mut fails: impl FnMut(&[usize]) -> bool) -> Vec<usize> {
    let mut keep: Vec<usize> = (0..len).collect();
    let mut runs = 0;
    let mut chunk = (keep.len() / 2).max(1);
    loop {
        let mut removed = false;
        let mut start = 0;
        while start < keep.len() && runs < budget {
            let end = (start + chunk).min(keep.len());
            let candidate: Vec<usize> = keep[..start].iter().chain(&keep[end..]).copied().collect();
            runs += 1;
            if fails(&candidate) {
                keep = candidate;
                removed = true;
            } else {
                start = end;
            }
        }
        if runs >= budget || (chunk == 1 && !removed) {
            return keep;
        }
        if chunk > 1 {
            chunk /= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinks_to_the_events_that_matter() {
        // Fails whenever events 3 and 17 are both kept.
        let keep = shrink(40, 1000, |kept| kept.contains(&3) && kept.contains(&17));
        assert_eq!(keep, vec![3, 17]);
    }

    #[test]
    fn a_budget_bounds_the_work() {
        let mut runs = 0;
        let keep = shrink(1000, 10, |kept| {
            runs += 1;
            kept.contains(&500)
        });
        assert_eq!(runs, 10);
        assert!(keep.contains(&500));
    }
}
