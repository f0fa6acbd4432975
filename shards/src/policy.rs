//! The shard's use of core's lifecycle rules: which state an agent's report moves a task
//! to, and whether and when an ended task is replaced.

use borealis_core::{TaskConfig, TaskState};

/// The state a task in `current` moves to when its agent reports `reported`; `None` when the
/// report changes nothing (stale or duplicate).
pub fn next_state(current: TaskState, reported: TaskState) -> Option<TaskState> {
    use TaskState::*;
    let killing = matches!(current, Killing | Preempting | Draining | Restarting);
    match reported {
        Starting if current == Assigned => Some(Starting),
        Running if matches!(current, Assigned | Starting) => Some(Running),
        Finished | Failed | Killed | Lost if killing => Some(Killed),
        Finished | Failed | Killed | Lost => Some(reported),
        _ => None,
    }
}

/// Checks what the wire cannot: sizes a scheduler must refuse.
pub fn validate_config(config: &TaskConfig) -> Result<(), String> {
    if config.command.trim().is_empty() {
        return Err("command must not be empty".into());
    }
    let r = &config.resources;
    if r.cpu_millis == 0 || r.ram_mib == 0 {
        return Err(format!(
            "resources must have cpu > 0 and ram > 0 (got cpu_millis {} ram_mib {})",
            r.cpu_millis, r.ram_mib
        ));
    }
    if usize::from(r.ports) != config.port_names.len() {
        return Err(format!(
            "resources.ports ({}) must equal the number of port names ({})",
            r.ports,
            config.port_names.len()
        ));
    }
    if config.max_task_failures < -1 {
        return Err(format!(
            "max_task_failures must be >= -1 (got {})",
            config.max_task_failures
        ));
    }
    Ok(())
}
