//! The one validator of a [`TaskConfig`]: every bound a task configuration must keep, whichever
//! way it arrived (a job file through [`crate::jobfile`], or a built config off the wire).
//!
//! The job-file parser turns text into a `TaskConfig` (checking only what the types cannot hold,
//! such as a negative count or an unparsable size) and then calls
//! [`validate_task_config`], so the bounds below are written once. Fields are named as the job
//! file names them (`resources.ports[1]`, `constraints[0].values`), since that is what the user
//! wrote.
//!
//! Not checked here, because it needs the cluster's configuration: whether the task's tier admits
//! production work ([`TierConfig::validate`](crate::tier::TierConfig::validate)) and quota
//! ([`crate::quota`]).

use crate::model::{
    job_key_part_valid, Constraint, TaskConfig, DEDICATED_ATTRIBUTE, JOB_KEY_PART_LEN_MAX,
};

/// Longest accepted command, in bytes. The command travels in every `LaunchTask` and is kept
/// with the job, so a pasted script belongs in the task's package, not the job file.
pub const COMMAND_BYTES_MAX: usize = 64 * 1024;
/// Most named ports one task may ask for. Agents offer a few hundred ports in all; a task
/// asking for more than this is a mistake, not a workload.
pub const PORT_NAMES_MAX: usize = 64;
/// Longest port name, in bytes (it becomes part of an environment variable name).
pub const PORT_NAME_BYTES_MAX: usize = 64;
/// Most constraints per job. Every placement decision evaluates each of them.
pub const CONSTRAINTS_MAX: usize = 32;
/// Most values in one value constraint.
pub const CONSTRAINT_VALUES_MAX: usize = 256;
/// Longest accepted kill grace period, in seconds: an hour is already generous for draining.
pub const FINALIZATION_WAIT_SECS_MAX: u32 = 3600;
/// The smallest failure budget: -1 means unlimited; anything below is meaningless.
pub const MAX_TASK_FAILURES_MIN: i32 = -1;
/// The smallest limit constraint: a limit of 0 would admit no agent at all.
pub const CONSTRAINT_LIMIT_MIN: u32 = 1;

/// Why a task configuration was refused: the field (as the job file names it) and what is wrong,
/// shown as `field: reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    /// The offending field, e.g. `finalization_wait_secs` or `constraints[2].values`.
    pub field: String,
    /// What is wrong with it, with the bound and the value found.
    pub reason: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks every bound of a task configuration; the first violation is returned, checking in the
/// order the job file lists the fields.
///
/// The cpu and ram upper bounds are the types' (`u32` thousandths of a core and MiB), which the
/// job-file parser enforces while converting; `priority` may be any `i32`.
pub fn validate_task_config(config: &TaskConfig) -> Result<(), ConfigError> {
    for (part, value) in [
        ("role", &config.job.role),
        ("environment", &config.job.environment),
        ("name", &config.job.name),
    ] {
        if !job_key_part_valid(value) {
            return Err(ConfigError::new(
                format!("job.{part}"),
                format!(
                    "{value:?} must be 1..={JOB_KEY_PART_LEN_MAX} characters of [A-Za-z0-9_.-]"
                ),
            ));
        }
    }
    if config.command.trim().is_empty() {
        return Err(ConfigError::new("command", "must not be empty"));
    }
    if config.command.len() > COMMAND_BYTES_MAX {
        return Err(ConfigError::new(
            "command",
            format!(
                "must be at most {COMMAND_BYTES_MAX} bytes (got {})",
                config.command.len()
            ),
        ));
    }
    if config.max_task_failures < MAX_TASK_FAILURES_MIN {
        return Err(ConfigError::new(
            "max_task_failures",
            format!(
                "must be >= {MAX_TASK_FAILURES_MIN} (got {})",
                config.max_task_failures
            ),
        ));
    }
    if config.finalization_wait_secs > FINALIZATION_WAIT_SECS_MAX {
        return Err(ConfigError::new(
            "finalization_wait_secs",
            format!(
                "must be <= {FINALIZATION_WAIT_SECS_MAX} (got {})",
                config.finalization_wait_secs
            ),
        ));
    }
    let resources = &config.resources;
    for (field, amount, unit) in [
        ("resources.cpu", resources.cpu_millis, " millicores"),
        ("resources.ram", resources.ram_mib, "MiB"),
        ("resources.disk", resources.disk_mib, "MiB"),
    ] {
        if amount == 0 {
            return Err(ConfigError::new(
                field,
                format!("must be > 0 (got 0{unit})"),
            ));
        }
    }
    validate_port_names(&config.port_names)?;
    if usize::from(resources.ports) != config.port_names.len() {
        return Err(ConfigError::new(
            "resources.ports",
            format!(
                "asks for {} ports but names {}",
                resources.ports,
                config.port_names.len()
            ),
        ));
    }
    if config.constraints.len() > CONSTRAINTS_MAX {
        return Err(ConfigError::new(
            "constraints",
            format!(
                "at most {CONSTRAINTS_MAX} constraints (got {})",
                config.constraints.len()
            ),
        ));
    }
    for (index, constraint) in config.constraints.iter().enumerate() {
        validate_constraint(index, constraint)?;
    }
    Ok(())
}

fn validate_port_names(names: &[String]) -> Result<(), ConfigError> {
    if names.len() > PORT_NAMES_MAX {
        return Err(ConfigError::new(
            "resources.ports",
            format!("at most {PORT_NAMES_MAX} ports (got {})", names.len()),
        ));
    }
    for (index, name) in names.iter().enumerate() {
        let field = || format!("resources.ports[{index}]");
        let well_formed = !name.is_empty()
            && name.len() <= PORT_NAME_BYTES_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !well_formed {
            return Err(ConfigError::new(
                field(),
                format!("{name:?} must be 1..={PORT_NAME_BYTES_MAX} characters of [a-z0-9_]"),
            ));
        }
        if let Some(first) = names[..index].iter().position(|n| n == name) {
            return Err(ConfigError::new(
                field(),
                format!("{name:?} repeats resources.ports[{first}]"),
            ));
        }
    }
    Ok(())
}

fn validate_constraint(index: usize, constraint: &Constraint) -> Result<(), ConfigError> {
    let field = format!("constraints[{index}]");
    let attribute = match constraint {
        Constraint::Value { attribute, .. } | Constraint::Limit { attribute, .. } => attribute,
    };
    if attribute.is_empty() {
        return Err(ConfigError::new(
            format!("{field}.attribute"),
            "must not be empty",
        ));
    }
    let dedicated = attribute == DEDICATED_ATTRIBUTE;
    match constraint {
        Constraint::Limit { .. } if dedicated => Err(ConfigError::new(
            field,
            "a dedicated constraint must be a value constraint",
        )),
        Constraint::Limit { limit, .. } if *limit < CONSTRAINT_LIMIT_MIN => Err(ConfigError::new(
            format!("{field}.limit"),
            format!("must be >= {CONSTRAINT_LIMIT_MIN} (got {limit})"),
        )),
        Constraint::Limit { .. } => Ok(()),
        Constraint::Value {
            negated, values, ..
        } => {
            if values.is_empty() {
                return Err(ConfigError::new(
                    format!("{field}.values"),
                    "must not be empty",
                ));
            }
            if values.len() > CONSTRAINT_VALUES_MAX {
                return Err(ConfigError::new(
                    format!("{field}.values"),
                    format!(
                        "at most {CONSTRAINT_VALUES_MAX} values (got {})",
                        values.len()
                    ),
                ));
            }
            if dedicated && values.len() != 1 {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "a dedicated constraint must have exactly one value (got {})",
                        values.len()
                    ),
                ));
            }
            if dedicated && *negated {
                return Err(ConfigError::new(
                    field,
                    "a dedicated constraint cannot be negated",
                ));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobKey, Resources, Tier};

    fn valid() -> TaskConfig {
        TaskConfig {
            job: "www/prod/hello".parse().unwrap(),
            command: "true".into(),
            resources: Resources {
                cpu_millis: 100,
                ram_mib: 16,
                disk_mib: 16,
                ports: 1,
            },
            port_names: vec!["http".into()],
            constraints: vec![
                Constraint::Limit {
                    attribute: "host".into(),
                    limit: 1,
                },
                Constraint::Value {
                    attribute: "dedicated".into(),
                    negated: false,
                    values: vec!["www/hello".into()],
                },
            ],
            tier: Tier::Preferred,
            priority: i32::MIN,
            production: true,
            is_service: true,
            max_task_failures: -1,
            finalization_wait_secs: FINALIZATION_WAIT_SECS_MAX,
            health_check: None,
            http_lifecycle: None,
            sla_policy: None,
            partition_policy: None,
        }
    }

    /// Applies `edit` to a valid config and validates it; an expected error is a prefix of the
    /// message (the full text where it matters).
    #[track_caller]
    fn check(edit: impl FnOnce(&mut TaskConfig), expected: Result<(), &str>) {
        let mut config = valid();
        edit(&mut config);
        let got = validate_task_config(&config).map_err(|e| e.to_string());
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(error), Err(prefix)) if error.starts_with(prefix) => {}
            (got, expected) => panic!("got {got:?}, want {expected:?}"),
        }
    }

    fn value(attribute: &str, negated: bool, values: &[&str]) -> Constraint {
        Constraint::Value {
            attribute: attribute.into(),
            negated,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn accepted_configs() {
        check(|_| {}, Ok(()));
        check(|c| c.priority = i32::MAX, Ok(()));
        check(|c| c.max_task_failures = i32::MAX, Ok(()));
        check(|c| c.finalization_wait_secs = 0, Ok(()));
        check(|c| c.command = "x".repeat(COMMAND_BYTES_MAX), Ok(()));
        check(
            |c| {
                c.port_names = (0..PORT_NAMES_MAX).map(|i| format!("p{i}")).collect();
                c.resources.ports = PORT_NAMES_MAX as u16;
            },
            Ok(()),
        );
        check(
            |c| {
                c.port_names.clear();
                c.resources.ports = 0;
                c.constraints.clear();
            },
            Ok(()),
        );
        check(
            |c| c.constraints = vec![value("zone", true, &["a", "b"])],
            Ok(()),
        );
    }

    /// One change to the valid config.
    type Edit<'a> = Box<dyn FnOnce(&mut TaskConfig) + 'a>;

    #[test]
    fn rejected_configs() {
        let key = |role: &str| JobKey {
            role: role.into(),
            environment: "prod".into(),
            name: "hello".into(),
        };
        let many_values: Vec<&str> = vec!["z"; CONSTRAINT_VALUES_MAX + 1];
        let table: Vec<(Edit<'_>, &str)> = vec![
            (
                Box::new(|c| c.job = key("")),
                "job.role: \"\" must be 1..=128 characters of [A-Za-z0-9_.-]",
            ),
            (
                Box::new(|c| c.job = key("a b")),
                "job.role: \"a b\" must be 1..=128 characters of [A-Za-z0-9_.-]",
            ),
            (
                Box::new(|c| c.job.environment = "x".repeat(129)),
                "job.environment: ",
            ),
            (
                Box::new(|c| c.job.name = "a/b".into()),
                "job.name: \"a/b\" must be",
            ),
            (
                Box::new(|c| c.command = " \n\t".into()),
                "command: must not be empty",
            ),
            (
                Box::new(|c| c.command = "x".repeat(COMMAND_BYTES_MAX + 1)),
                "command: must be at most 65536 bytes (got 65537)",
            ),
            (
                Box::new(|c| c.max_task_failures = -2),
                "max_task_failures: must be >= -1 (got -2)",
            ),
            (
                Box::new(|c| c.max_task_failures = i32::MIN),
                "max_task_failures: must be >= -1 (got -2147483648)",
            ),
            (
                Box::new(|c| c.finalization_wait_secs = 3601),
                "finalization_wait_secs: must be <= 3600 (got 3601)",
            ),
            (
                Box::new(|c| c.finalization_wait_secs = u32::MAX),
                "finalization_wait_secs: must be <= 3600 (got 4294967295)",
            ),
            (
                Box::new(|c| c.resources.cpu_millis = 0),
                "resources.cpu: must be > 0 (got 0 millicores)",
            ),
            (
                Box::new(|c| c.resources.ram_mib = 0),
                "resources.ram: must be > 0 (got 0MiB)",
            ),
            (
                Box::new(|c| c.resources.disk_mib = 0),
                "resources.disk: must be > 0 (got 0MiB)",
            ),
            (
                Box::new(|c| c.resources.ports = 2),
                "resources.ports: asks for 2 ports but names 1",
            ),
            (
                Box::new(|c| c.port_names.clear()),
                "resources.ports: asks for 1 ports but names 0",
            ),
            (
                Box::new(|c| c.port_names = vec!["Http".into()]),
                "resources.ports[0]: \"Http\" must be 1..=64 characters of [a-z0-9_]",
            ),
            (
                Box::new(|c| c.port_names = vec!["".into()]),
                "resources.ports[0]: \"\" must be 1..=64 characters of [a-z0-9_]",
            ),
            (
                Box::new(|c| c.port_names = vec!["p".repeat(65)]),
                "resources.ports[0]: ",
            ),
            (
                Box::new(|c| {
                    c.port_names = vec!["a".into(), "b".into(), "a".into()];
                    c.resources.ports = 3
                }),
                "resources.ports[2]: \"a\" repeats resources.ports[0]",
            ),
            (
                Box::new(|c| {
                    c.port_names = (0..=PORT_NAMES_MAX).map(|i| format!("p{i}")).collect();
                    c.resources.ports = 65
                }),
                "resources.ports: at most 64 ports (got 65)",
            ),
            (
                Box::new(|c| {
                    c.constraints = vec![
                        Constraint::Limit {
                            attribute: "rack".into(),
                            limit: 1
                        };
                        CONSTRAINTS_MAX + 1
                    ]
                }),
                "constraints: at most 32 constraints (got 33)",
            ),
            (
                Box::new(|c| {
                    c.constraints[0] = Constraint::Limit {
                        attribute: "".into(),
                        limit: 1,
                    }
                }),
                "constraints[0].attribute: must not be empty",
            ),
            (
                Box::new(|c| c.constraints[1] = value("", false, &["a"])),
                "constraints[1].attribute: must not be empty",
            ),
            (
                Box::new(|c| {
                    c.constraints[0] = Constraint::Limit {
                        attribute: "rack".into(),
                        limit: 0,
                    }
                }),
                "constraints[0].limit: must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| {
                    c.constraints[0] = Constraint::Limit {
                        attribute: "dedicated".into(),
                        limit: 1,
                    }
                }),
                "constraints[0]: a dedicated constraint must be a value constraint",
            ),
            (
                Box::new(|c| c.constraints[1] = value("zone", false, &[])),
                "constraints[1].values: must not be empty",
            ),
            (
                Box::new(move |c| c.constraints[1] = value("zone", false, &many_values)),
                "constraints[1].values: at most 256 values (got 257)",
            ),
            (
                Box::new(|c| c.constraints[1] = value("dedicated", false, &["a", "b"])),
                "constraints[1]: a dedicated constraint must have exactly one value (got 2)",
            ),
            (
                Box::new(|c| c.constraints[1] = value("dedicated", true, &["a"])),
                "constraints[1]: a dedicated constraint cannot be negated",
            ),
        ];
        for (edit, message) in table {
            check(edit, Err(message));
        }
    }
}
