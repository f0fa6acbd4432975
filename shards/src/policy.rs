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

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    fn check(current: TaskState, reported: TaskState, expected: Option<TaskState>) {
        assert_eq!(
            next_state(current, reported),
            expected,
            "{current} reported as {reported}"
        );
        if let Some(next) = expected {
            assert!(
                current.can_transition_to(next),
                "{current} -> {next} must be legal"
            );
        }
    }

    #[test]
    fn agent_reports_map_onto_the_state_machine() {
        check(Assigned, Starting, Some(Starting));
        check(Assigned, Running, Some(Running));
        check(Starting, Running, Some(Running));
        check(Running, Finished, Some(Finished));
        check(Running, Failed, Some(Failed));
        check(Running, Lost, Some(Lost));
        check(Starting, Failed, Some(Failed));
        // Any end of a task being killed, preempted, drained or restarted is KILLED.
        for killing in [Killing, Preempting, Draining, Restarting] {
            for end in [Finished, Failed, Killed, Lost] {
                check(killing, end, Some(Killed));
            }
            // A late RUNNING does not undo the kill.
            check(killing, Running, None);
        }
        // Stale or duplicate reports change nothing.
        check(Running, Starting, None);
        check(Running, Running, None);
        check(Starting, Starting, None);
    }

    #[test]
    fn config_validation_names_the_problem() {
        let mut config = TaskConfig {
            job: "r/e/n".parse().unwrap(),
            command: "true".into(),
            resources: borealis_core::Resources {
                cpu_millis: 100,
                ram_mib: 16,
                disk_mib: 0,
                ports: 1,
            },
            port_names: vec!["http".into()],
            constraints: vec![],
            tier: borealis_core::Tier::Preferred,
            priority: 0,
            production: false,
            is_service: false,
            max_task_failures: 1,
            finalization_wait_secs: 1,
        };
        assert_eq!(validate_config(&config), Ok(()));
        config.port_names.clear();
        assert!(validate_config(&config).unwrap_err().contains("port names"));
        config.resources.ports = 0;
        config.command = " ".into();
        assert!(validate_config(&config).unwrap_err().contains("command"));
        config.command = "true".into();
        config.resources.cpu_millis = 0;
        assert!(validate_config(&config).unwrap_err().contains("cpu"));
    }
}
