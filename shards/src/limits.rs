//! The scheduler's limits on what peers may make it hold: every count a client or agent can
//! grow has a named bound here (or beside the code it bounds, listed in ARCHITECTURE.md's
//! table), a metric, and a clear refusal or backpressure at the bound.

use std::time::Duration;

/// Limits set by flags (the constants that are not flags live beside the code they bound).
#[derive(Clone, Debug)]
pub struct Limits {
    /// `--max-jobs` (1,000,000): jobs the scheduler holds (cron templates included). Jobs are
    /// spread over shards by the hash of their key and each shard holds at most its share
    /// (`max_jobs / shards`, rounded up); a CreateJob past it is refused with `LimitReached`.
    pub max_jobs: usize,
    /// `--max-connections` (65,536): open connections (clients and agents), split evenly over
    /// the shards; a connection accepted past a shard's share is closed at once.
    pub max_connections: usize,
    /// `--connection-first-message-timeout` (10 s): a connection that has not sent one whole
    /// message this long after it was accepted is closed.
    pub first_message_timeout: Duration,
    /// `--client-idle-timeout` (10 min): a client connection (not an agent: agents heartbeat
    /// and are dropped after 30 s of silence) that sends nothing this long, with no request
    /// of its in flight, is closed.
    pub client_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_jobs: 1_000_000,
            max_connections: 65_536,
            first_message_timeout: Duration::from_secs(10),
            client_idle_timeout: Duration::from_secs(600),
        }
    }
}

impl Limits {
    /// One shard's share of `total` (rounded up, at least one).
    pub fn per_shard(total: usize, shards: usize) -> usize {
        total.div_ceil(shards.max(1)).max(1)
    }
}
