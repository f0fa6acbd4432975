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

/// Most bytes of an agent's status message the scheduler keeps (the rest is cut, marked "…").
pub const STATUS_MESSAGE_BYTES_MAX: usize = 1024;
/// Most bytes of a sandbox path the scheduler keeps (past Linux's PATH_MAX of 4,096).
pub const SANDBOX_PATH_BYTES_MAX: usize = 4096;
/// Most bytes of an agent's name, hostname, and of each attribute's name and value; a longer
/// one refuses the registration.
pub const AGENT_TEXT_BYTES_MAX: usize = 255;
/// Most attributes an agent may register with.
pub const AGENT_ATTRIBUTES_MAX: usize = 64;
/// Most port ranges an agent may register with.
pub const AGENT_PORT_RANGES_MAX: usize = 64;
/// Most bytes a job's task configuration may take on the wire (a CreateJob, StartUpdate or
/// ScheduleCron past it is refused): every launch of it then fits a frame with room to spare.
pub const TASK_CONFIG_BYTES_MAX: usize = 1 << 20;

/// `text` cut to at most `max` bytes at a character boundary, ending in "…" when cut.
pub fn bounded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    const MARK: &str = "…";
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{MARK}", &text[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_text_is_cut_at_a_character_boundary_and_marked() {
        assert_eq!(bounded("short", 10), "short");
        let long = "é".repeat(600); // 1,200 bytes
        let cut = bounded(&long, STATUS_MESSAGE_BYTES_MAX);
        assert!(cut.len() <= STATUS_MESSAGE_BYTES_MAX, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.len() > STATUS_MESSAGE_BYTES_MAX - 8);
    }

    #[test]
    fn each_shard_gets_at_least_its_share() {
        assert_eq!(Limits::per_shard(10, 3), 4);
        assert_eq!(Limits::per_shard(1, 8), 1);
        assert_eq!(Limits::per_shard(65_536, 1), 65_536);
    }
}
