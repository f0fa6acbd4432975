//! The scheduler's limit flags (`borealis_shards::limits::Limits`; ARCHITECTURE.md lists every
//! limit with its value and what happens at it).

use std::time::Duration;

use clap::Args;

use crate::parse_positive_duration;

#[derive(Args, Clone, Debug)]
pub struct LimitArgs {
    /// Most jobs the scheduler holds (cron templates included); a create past it is refused.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_jobs: u64,
    /// Most open connections (clients and agents together); one accepted past it is closed.
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// A connection that has not sent one whole message this long after it was accepted is
    /// closed.
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub connection_first_message_timeout: Duration,
    /// A client connection that sends nothing this long, with no request in flight, is closed
    /// (agents heartbeat; a silent agent is dropped after 30 s).
    #[arg(long, default_value = "10min", value_parser = parse_positive_duration)]
    pub client_idle_timeout: Duration,
}

impl LimitArgs {
    pub fn to_limits(&self) -> borealis_shards::limits::Limits {
        borealis_shards::limits::Limits {
            max_jobs: self.max_jobs as usize,
            max_connections: self.max_connections as usize,
            first_message_timeout: self.connection_first_message_timeout,
            client_idle_timeout: self.client_idle_timeout,
        }
    }
}
