//! Host maintenance, in Aurora's terms: a host's mode and the operations that move it.
//!
//! NONE (in service) → `start` → SCHEDULED (no new tasks) → `drain` → DRAINING (its tasks leave
//! as their jobs' SLAs allow) → DRAINED (none left); `end` (Aurora's `host_activate`) puts any
//! host back to NONE. `drain` may also be asked of a host in NONE.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest accepted host name, in bytes (DNS allows 253).
pub const HOSTNAME_BYTES_MAX: usize = 253;

/// A host's maintenance mode (Aurora's `MaintenanceMode`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[repr(u8)]
pub enum HostMode {
    /// In service.
    #[default]
    None = 0,
    /// Maintenance is announced: no new tasks, running ones stay.
    Scheduled = 1,
    /// Its tasks are being moved off, each as its job's SLA allows.
    Draining = 2,
    /// No active task is left on it.
    Drained = 3,
}

impl HostMode {
    pub const ALL: [HostMode; 4] = [
        HostMode::None,
        HostMode::Scheduled,
        HostMode::Draining,
        HostMode::Drained,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HostMode::None => "NONE",
            HostMode::Scheduled => "SCHEDULED",
            HostMode::Draining => "DRAINING",
            HostMode::Drained => "DRAINED",
        }
    }

    pub fn from_u8(value: u8) -> Option<HostMode> {
        HostMode::ALL.get(usize::from(value)).copied()
    }

    /// Whether the host may be given new tasks.
    pub fn schedulable(self) -> bool {
        self == HostMode::None
    }

    /// Whether its tasks are being moved off (DRAINING, and DRAINED: a task adopted there
    /// later leaves too).
    pub fn drains(self) -> bool {
        matches!(self, HostMode::Draining | HostMode::Drained)
    }
}

impl fmt::Display for HostMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HostMode {
    type Err = String;
    fn from_str(s: &str) -> Result<HostMode, String> {
        HostMode::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown host mode {s:?} (NONE, SCHEDULED, DRAINING, DRAINED)"))
    }
}

/// An operator's maintenance request for some hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MaintenanceOp {
    /// `host maintenance start`: SCHEDULED.
    Start,
    /// `host maintenance drain`: DRAINING.
    Drain,
    /// `host maintenance status`: reads only.
    Status,
    /// `host maintenance end`: NONE.
    End,
}

impl MaintenanceOp {
    pub fn as_str(self) -> &'static str {
        match self {
            MaintenanceOp::Start => "start",
            MaintenanceOp::Drain => "drain",
            MaintenanceOp::Status => "status",
            MaintenanceOp::End => "end",
        }
    }
}

/// Why a host name is refused: empty, too long, or with characters a host name cannot have.
pub fn validate_hostname(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host name must not be empty".into());
    }
    if host.len() > HOSTNAME_BYTES_MAX {
        return Err(format!(
            "host name {:?}... is longer than {HOSTNAME_BYTES_MAX} bytes",
            &host[..host.floor_char_boundary_compat(32)]
        ));
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')))
    {
        return Err(format!("host name {host:?} has the character {c:?}"));
    }
    Ok(())
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, index: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, index: usize) -> usize {
        let mut i = index.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}
