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
//! ([`crate::quota`]). Nor whether an SLA can ever be met: a count above the job's instances is
//! accepted, as Aurora accepts it (such a job simply never lets maintenance take a task).

use crate::model::{
    job_key_part_valid, Constraint, TaskConfig, DEDICATED_ATTRIBUTE, JOB_KEY_PART_LEN_MAX,
};
use crate::service::{HealthCheck, HealthChecker, HttpLifecycle, PartitionPolicy, SlaPolicy};
use crate::sla::percent_text;

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

/// Longest health-check interval, initial grace or check timeout, in seconds. A check an hour
/// apart no longer tells anyone anything about the task's health.
pub const HEALTH_CHECK_SECS_MAX: u32 = 3600;
/// The shortest health-check interval and timeout, in seconds (the initial grace may be 0).
pub const HEALTH_CHECK_INTERVAL_SECS_MIN: u32 = 1;
/// Most consecutive failures tolerated, or successes required, by a health check.
pub const HEALTH_CHECK_CONSECUTIVE_MAX: u32 = 1000;
/// The fewest consecutive successes that make a task healthy: 0 would make it healthy unchecked.
pub const HEALTH_CHECK_SUCCESSES_MIN: u32 = 1;
/// The lowest HTTP status a health check may expect (the lowest status HTTP defines).
pub const HTTP_STATUS_MIN: u16 = 100;
/// The highest HTTP status a health check may expect (the highest status HTTP defines).
pub const HTTP_STATUS_MAX: u16 = 599;
/// Longest health-check or lifecycle endpoint path, in bytes; it goes in an HTTP request line.
pub const ENDPOINT_BYTES_MAX: usize = 1024;
/// Longest wait of the HTTP kill sequence, per step, in seconds (as `finalization_wait_secs`).
pub const LIFECYCLE_WAIT_SECS_MAX: u32 = 3600;
/// The smallest SLA count: a count of 0 is no SLA, which is said by leaving the policy out.
pub const SLA_COUNT_MIN: u32 = 1;
/// The largest SLA percentage, in thousandths of a percent (100 %).
pub const SLA_PERCENTAGE_MILLIS_MAX: u32 = 100_000;
/// The longest SLA window, in seconds: 30 days. The scheduler caps the window it enforces much
/// lower (`--max-sla-duration-secs`, Aurora's 2 h), so this bound only stops nonsense.
pub const SLA_DURATION_SECS_MAX: u64 = 30 * 24 * 3600;
/// Longest coordinator URL, in bytes (what browsers and proxies reliably pass).
pub const COORDINATOR_URL_BYTES_MAX: usize = 2048;
/// Longest coordinator status key, in bytes.
pub const STATUS_KEY_BYTES_MAX: usize = 128;
/// The longest a task may stay PARTITIONED before it is replaced, in seconds: 30 days (a task
/// that must never be replaced says `reschedule = false`).
pub const PARTITION_DELAY_SECS_MAX: u64 = 30 * 24 * 3600;

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
    if let Some(check) = &config.health_check {
        validate_health_check(check, &config.port_names)?;
    }
    if let Some(lifecycle) = &config.http_lifecycle {
        validate_http_lifecycle(lifecycle, &config.port_names)?;
    }
    if let Some(policy) = &config.sla_policy {
        validate_sla_policy(policy)?;
    }
    if let Some(policy) = &config.partition_policy {
        validate_partition_policy(policy)?;
    }
    Ok(())
}

/// `value` within `min..=max`, or an error naming `field` with the bound it broke, in the job-file
/// parser's words (`must be >= 1 (got 0)`), so a file and the wire read the same.
fn check_range(field: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::new(
            field,
            format!("must be >= {min} (got {value})"),
        ));
    }
    if value > max {
        return Err(ConfigError::new(
            field,
            format!("must be <= {max} (got {value})"),
        ));
    }
    Ok(())
}

/// `port` must be one of the task's named ports: the agent knows no other.
fn check_port_named(field: &str, port: &str, port_names: &[String]) -> Result<(), ConfigError> {
    if port_names.iter().any(|name| name == port) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{port:?} is not one of resources.ports"),
        ))
    }
}

/// An HTTP path the agent requests: starts with `/`, at most [`ENDPOINT_BYTES_MAX`] bytes, and
/// no whitespace or control characters, which would break the request line.
fn check_endpoint(field: &str, endpoint: &str) -> Result<(), ConfigError> {
    if endpoint.len() > ENDPOINT_BYTES_MAX {
        return Err(ConfigError::new(
            field,
            format!(
                "must be at most {ENDPOINT_BYTES_MAX} bytes (got {})",
                endpoint.len()
            ),
        ));
    }
    if !endpoint.starts_with('/') {
        return Err(ConfigError::new(
            field,
            format!("must start with \"/\" (got {endpoint:?})"),
        ));
    }
    if endpoint
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ConfigError::new(
            field,
            format!("must not contain whitespace or control characters (got {endpoint:?})"),
        ));
    }
    Ok(())
}

fn validate_health_check(check: &HealthCheck, port_names: &[String]) -> Result<(), ConfigError> {
    match &check.checker {
        HealthChecker::Http {
            port,
            endpoint,
            expected_status,
        } => {
            check_port_named("health_check.port", port, port_names)?;
            check_endpoint("health_check.endpoint", endpoint)?;
            check_range(
                "health_check.expected_status",
                u64::from(*expected_status),
                u64::from(HTTP_STATUS_MIN),
                u64::from(HTTP_STATUS_MAX),
            )?;
        }
        HealthChecker::Shell { command } => {
            if command.trim().is_empty() {
                return Err(ConfigError::new(
                    "health_check.command",
                    "must not be empty",
                ));
            }
            if command.len() > COMMAND_BYTES_MAX {
                return Err(ConfigError::new(
                    "health_check.command",
                    format!(
                        "must be at most {COMMAND_BYTES_MAX} bytes (got {})",
                        command.len()
                    ),
                ));
            }
        }
    }
    let secs = u64::from(HEALTH_CHECK_SECS_MAX);
    let interval_min = u64::from(HEALTH_CHECK_INTERVAL_SECS_MIN);
    let count_max = u64::from(HEALTH_CHECK_CONSECUTIVE_MAX);
    for (field, value, min, max) in [
        (
            "health_check.initial_interval_secs",
            check.initial_interval_secs,
            0,
            secs,
        ),
        (
            "health_check.interval_secs",
            check.interval_secs,
            interval_min,
            secs,
        ),
        (
            "health_check.timeout_secs",
            check.timeout_secs,
            interval_min,
            secs,
        ),
        (
            "health_check.max_consecutive_failures",
            check.max_consecutive_failures,
            0,
            count_max,
        ),
        (
            "health_check.min_consecutive_successes",
            check.min_consecutive_successes,
            u64::from(HEALTH_CHECK_SUCCESSES_MIN),
            count_max,
        ),
    ] {
        check_range(field, u64::from(value), min, max)?;
    }
    // A check that may take longer than the gap between checks would overlap the next one.
    if check.timeout_secs > check.interval_secs {
        return Err(ConfigError::new(
            "health_check.timeout_secs",
            format!(
                "must be <= interval_secs (got {} > {})",
                check.timeout_secs, check.interval_secs
            ),
        ));
    }
    Ok(())
}

fn validate_http_lifecycle(
    lifecycle: &HttpLifecycle,
    port_names: &[String],
) -> Result<(), ConfigError> {
    check_port_named("lifecycle.http.port", &lifecycle.port, port_names)?;
    check_endpoint(
        "lifecycle.http.graceful_shutdown_endpoint",
        &lifecycle.graceful_shutdown_endpoint,
    )?;
    check_endpoint(
        "lifecycle.http.shutdown_endpoint",
        &lifecycle.shutdown_endpoint,
    )?;
    for (field, value) in [
        (
            "lifecycle.http.graceful_shutdown_wait_secs",
            lifecycle.graceful_shutdown_wait_secs,
        ),
        (
            "lifecycle.http.shutdown_wait_secs",
            lifecycle.shutdown_wait_secs,
        ),
    ] {
        check_range(
            field,
            u64::from(value),
            0,
            u64::from(LIFECYCLE_WAIT_SECS_MAX),
        )?;
    }
    Ok(())
}

fn validate_sla_policy(policy: &SlaPolicy) -> Result<(), ConfigError> {
    let check_duration = |duration_secs: u64| {
        check_range(
            "sla_policy.duration_secs",
            duration_secs,
            1,
            SLA_DURATION_SECS_MAX,
        )
    };
    match policy {
        SlaPolicy::Count {
            count,
            duration_secs,
        } => {
            check_range(
                "sla_policy.count",
                u64::from(*count),
                u64::from(SLA_COUNT_MIN),
                u64::from(u32::MAX),
            )?;
            check_duration(*duration_secs)
        }
        SlaPolicy::Percentage {
            percentage_millis,
            duration_secs,
        } => {
            if !(1..=SLA_PERCENTAGE_MILLIS_MAX).contains(percentage_millis) {
                return Err(ConfigError::new(
                    "sla_policy.percentage",
                    format!(
                        "must be > 0 and <= 100 (got {})",
                        percent_text(u64::from(*percentage_millis))
                    ),
                ));
            }
            check_duration(*duration_secs)
        }
        SlaPolicy::Coordinator {
            coordinator_url,
            status_key,
        } => {
            validate_coordinator_url(coordinator_url)?;
            let key_valid = !status_key.is_empty()
                && status_key.len() <= STATUS_KEY_BYTES_MAX
                && status_key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
            if !key_valid {
                return Err(ConfigError::new(
                    "sla_policy.status_key",
                    format!(
                        "{status_key:?} must be 1..={STATUS_KEY_BYTES_MAX} characters of \
                         [A-Za-z0-9_.-]"
                    ),
                ));
            }
            Ok(())
        }
    }
}

/// A coordinator URL: `http://host[:port][/path][?query]`, printable ASCII without spaces, the
/// host a name, an IPv4 address or a bracketed IPv6 address. Plain HTTP only: the scheduler
/// speaks no TLS, and a URL it cannot call would block maintenance of the job for ever.
fn validate_coordinator_url(url: &str) -> Result<(), ConfigError> {
    const FIELD: &str = "sla_policy.coordinator_url";
    if url.len() > COORDINATOR_URL_BYTES_MAX {
        return Err(ConfigError::new(
            FIELD,
            format!(
                "must be at most {COORDINATOR_URL_BYTES_MAX} bytes (got {})",
                url.len()
            ),
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(ConfigError::new(
            FIELD,
            format!("must start with \"http://\" (got {url:?})"),
        ));
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if !url.bytes().all(|b| b.is_ascii_graphic()) || !authority_valid(authority) {
        return Err(ConfigError::new(
            FIELD,
            format!("must be http://host[:port][/path], without spaces (got {url:?})"),
        ));
    }
    Ok(())
}

/// `host[:port]`: a host of `[A-Za-z0-9.-]` or `[` IPv6 `]`, and a port of 1..=65535.
fn authority_valid(authority: &str) -> bool {
    let (host_valid, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return false;
        };
        let host_valid = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        let port = match after {
            "" => None,
            after => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        (host_valid, port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let host_valid = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        (host_valid, port)
    };
    let port_valid = port.is_none_or(|port| {
        !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p))
    });
    host_valid && port_valid
}

fn validate_partition_policy(policy: &PartitionPolicy) -> Result<(), ConfigError> {
    check_range(
        "partition_policy.delay_secs",
        policy.delay_secs,
        0,
        PARTITION_DELAY_SECS_MAX,
    )
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
    use crate::service::{HealthCheck, HealthChecker, HttpLifecycle, PartitionPolicy, SlaPolicy};

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

    /// [`valid`] with every service field set: an HTTP health check and lifecycle on its one
    /// port, a count SLA and a partition policy.
    fn valid_service() -> TaskConfig {
        TaskConfig {
            health_check: Some(HealthCheck::with_defaults(HealthChecker::Http {
                port: "http".into(),
                endpoint: "/health".into(),
                expected_status: 200,
            })),
            http_lifecycle: Some(HttpLifecycle {
                port: "http".into(),
                ..HttpLifecycle::default()
            }),
            sla_policy: Some(SlaPolicy::Count {
                count: 2,
                duration_secs: 1800,
            }),
            partition_policy: Some(PartitionPolicy::default()),
            ..valid()
        }
    }

    /// Applies `edit` to a valid config and validates it; an expected error is a prefix of the
    /// message (the full text where it matters).
    #[track_caller]
    fn check(edit: impl FnOnce(&mut TaskConfig), expected: Result<(), &str>) {
        check_from(valid(), edit, expected);
    }

    /// [`check`], from `config` rather than [`valid`].
    #[track_caller]
    fn check_from(
        mut config: TaskConfig,
        edit: impl FnOnce(&mut TaskConfig),
        expected: Result<(), &str>,
    ) {
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

    fn shell(command: &str) -> Option<HealthCheck> {
        Some(HealthCheck::with_defaults(HealthChecker::Shell {
            command: command.into(),
        }))
    }

    fn http_check(c: &mut TaskConfig) -> &mut HealthCheck {
        c.health_check
            .as_mut()
            .expect("valid_service has a health check")
    }

    fn set_http(c: &mut TaskConfig, edit: impl FnOnce(&mut String, &mut String, &mut u16)) {
        match &mut http_check(c).checker {
            HealthChecker::Http {
                port,
                endpoint,
                expected_status,
            } => edit(port, endpoint, expected_status),
            HealthChecker::Shell { .. } => unreachable!("valid_service checks over HTTP"),
        }
    }

    fn lifecycle(c: &mut TaskConfig) -> &mut HttpLifecycle {
        c.http_lifecycle
            .as_mut()
            .expect("valid_service has a lifecycle")
    }

    fn coordinator(url: &str, key: &str) -> Option<SlaPolicy> {
        Some(SlaPolicy::Coordinator {
            coordinator_url: url.into(),
            status_key: key.into(),
        })
    }

    fn percentage(percentage_millis: u32, duration_secs: u64) -> Option<SlaPolicy> {
        Some(SlaPolicy::Percentage {
            percentage_millis,
            duration_secs,
        })
    }

    #[test]
    fn accepted_service_fields() {
        let long_url = format!(
            "http://c.example.com/{}",
            "a".repeat(COORDINATOR_URL_BYTES_MAX - 21)
        );
        assert_eq!(long_url.len(), COORDINATOR_URL_BYTES_MAX);
        let long_endpoint = format!("/{}", "e".repeat(ENDPOINT_BYTES_MAX - 1));
        let table: Vec<Edit<'_>> = vec![
            Box::new(|_| {}),
            Box::new(|c| c.health_check = shell("curl -sf localhost")),
            Box::new(|c| c.health_check = shell(&"x".repeat(COMMAND_BYTES_MAX))),
            Box::new(|c| {
                let h = http_check(c);
                h.initial_interval_secs = 0;
                h.interval_secs = 1;
                h.timeout_secs = 1;
                h.max_consecutive_failures = 0;
                h.min_consecutive_successes = 1;
            }),
            Box::new(|c| {
                let h = http_check(c);
                h.initial_interval_secs = HEALTH_CHECK_SECS_MAX;
                h.interval_secs = HEALTH_CHECK_SECS_MAX;
                h.timeout_secs = HEALTH_CHECK_SECS_MAX;
                h.max_consecutive_failures = HEALTH_CHECK_CONSECUTIVE_MAX;
                h.min_consecutive_successes = HEALTH_CHECK_CONSECUTIVE_MAX;
            }),
            Box::new(|c| set_http(c, |_, _, status| *status = HTTP_STATUS_MIN)),
            Box::new(|c| set_http(c, |_, _, status| *status = HTTP_STATUS_MAX)),
            Box::new(|c| set_http(c, |_, endpoint, _| *endpoint = "/".into())),
            Box::new(move |c| set_http(c, |_, endpoint, _| *endpoint = long_endpoint)),
            Box::new(|c| set_http(c, |_, e, _| *e = "/status?verbose=1&x=%20".into())),
            Box::new(|c| {
                let l = lifecycle(c);
                l.graceful_shutdown_wait_secs = 0;
                l.shutdown_wait_secs = LIFECYCLE_WAIT_SECS_MAX;
            }),
            // Aurora allows a count above the job's instances: it just never lets a task go.
            Box::new(|c| {
                c.sla_policy = Some(SlaPolicy::Count {
                    count: u32::MAX,
                    duration_secs: SLA_DURATION_SECS_MAX,
                })
            }),
            Box::new(|c| c.sla_policy = percentage(1, 1)),
            Box::new(|c| c.sla_policy = percentage(SLA_PERCENTAGE_MILLIS_MAX, 1)),
            Box::new(|c| c.sla_policy = coordinator("http://coord.example.com:8080/sla", "drain")),
            Box::new(|c| c.sla_policy = coordinator("http://10.0.0.1", "a.B-9_")),
            Box::new(|c| c.sla_policy = coordinator("http://[::1]:65535/x?y=z", "k")),
            Box::new(|c| c.sla_policy = coordinator("http://c?task=1", "k")),
            Box::new(move |c| c.sla_policy = coordinator(&long_url, "k")),
            Box::new(|c| c.sla_policy = coordinator("http://c", &"k".repeat(STATUS_KEY_BYTES_MAX))),
            Box::new(|c| {
                c.partition_policy = Some(PartitionPolicy {
                    reschedule: false,
                    delay_secs: PARTITION_DELAY_SECS_MAX,
                })
            }),
            // Every service field is optional.
            Box::new(|c| {
                c.health_check = None;
                c.http_lifecycle = None;
                c.sla_policy = None;
                c.partition_policy = None;
            }),
        ];
        for edit in table {
            check_from(valid_service(), edit, Ok(()));
        }
    }

    #[test]
    fn rejected_service_fields() {
        let long_endpoint = format!("/{}", "e".repeat(ENDPOINT_BYTES_MAX));
        let long_url = format!("http://c/{}", "a".repeat(COORDINATOR_URL_BYTES_MAX));
        let table: Vec<(Edit<'_>, &str)> = vec![
            // Health check.
            (
                Box::new(|c| set_http(c, |port, _, _| *port = "health".into())),
                "health_check.port: \"health\" is not one of resources.ports",
            ),
            (
                Box::new(|c| set_http(c, |_, endpoint, _| *endpoint = "health".into())),
                "health_check.endpoint: must start with \"/\" (got \"health\")",
            ),
            (
                Box::new(|c| set_http(c, |_, endpoint, _| *endpoint = "".into())),
                "health_check.endpoint: must start with \"/\" (got \"\")",
            ),
            (
                Box::new(|c| set_http(c, |_, endpoint, _| *endpoint = "/a b".into())),
                "health_check.endpoint: must not contain whitespace or control characters (got \"/a b\")",
            ),
            (
                Box::new(|c| set_http(c, |_, endpoint, _| *endpoint = "/a\r\nX: y".into())),
                "health_check.endpoint: must not contain whitespace or control characters",
            ),
            (
                Box::new(move |c| set_http(c, |_, endpoint, _| *endpoint = long_endpoint)),
                "health_check.endpoint: must be at most 1024 bytes (got 1025)",
            ),
            (
                Box::new(|c| set_http(c, |_, _, status| *status = 99)),
                "health_check.expected_status: must be >= 100 (got 99)",
            ),
            (
                Box::new(|c| set_http(c, |_, _, status| *status = 600)),
                "health_check.expected_status: must be <= 599 (got 600)",
            ),
            (
                Box::new(|c| c.health_check = shell(" \t")),
                "health_check.command: must not be empty",
            ),
            (
                Box::new(|c| c.health_check = shell(&"x".repeat(COMMAND_BYTES_MAX + 1))),
                "health_check.command: must be at most 65536 bytes (got 65537)",
            ),
            (
                Box::new(|c| http_check(c).initial_interval_secs = 3601),
                "health_check.initial_interval_secs: must be <= 3600 (got 3601)",
            ),
            (
                Box::new(|c| http_check(c).interval_secs = 0),
                "health_check.interval_secs: must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| http_check(c).interval_secs = 3601),
                "health_check.interval_secs: must be <= 3600 (got 3601)",
            ),
            (
                Box::new(|c| http_check(c).timeout_secs = 0),
                "health_check.timeout_secs: must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| http_check(c).timeout_secs = u32::MAX),
                "health_check.timeout_secs: must be <= 3600 (got 4294967295)",
            ),
            (
                Box::new(|c| http_check(c).timeout_secs = 11),
                "health_check.timeout_secs: must be <= interval_secs (got 11 > 10)",
            ),
            (
                Box::new(|c| http_check(c).max_consecutive_failures = 1001),
                "health_check.max_consecutive_failures: must be <= 1000 (got 1001)",
            ),
            (
                Box::new(|c| http_check(c).min_consecutive_successes = 0),
                "health_check.min_consecutive_successes: must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| http_check(c).min_consecutive_successes = 1001),
                "health_check.min_consecutive_successes: must be <= 1000 (got 1001)",
            ),
            // HTTP lifecycle.
            (
                Box::new(|c| lifecycle(c).port = "admin".into()),
                "lifecycle.http.port: \"admin\" is not one of resources.ports",
            ),
            (
                Box::new(|c| {
                    c.port_names.clear();
                    c.resources.ports = 0;
                    c.health_check = None;
                }),
                "lifecycle.http.port: \"http\" is not one of resources.ports",
            ),
            (
                Box::new(|c| lifecycle(c).graceful_shutdown_endpoint = "quit".into()),
                "lifecycle.http.graceful_shutdown_endpoint: must start with \"/\" (got \"quit\")",
            ),
            (
                Box::new(|c| lifecycle(c).shutdown_endpoint = "/abort now".into()),
                "lifecycle.http.shutdown_endpoint: must not contain whitespace",
            ),
            (
                Box::new(|c| lifecycle(c).graceful_shutdown_wait_secs = 3601),
                "lifecycle.http.graceful_shutdown_wait_secs: must be <= 3600 (got 3601)",
            ),
            (
                Box::new(|c| lifecycle(c).shutdown_wait_secs = 3601),
                "lifecycle.http.shutdown_wait_secs: must be <= 3600 (got 3601)",
            ),
            // SLA policy.
            (
                Box::new(|c| {
                    c.sla_policy = Some(SlaPolicy::Count {
                        count: 0,
                        duration_secs: 1,
                    })
                }),
                "sla_policy.count: must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| {
                    c.sla_policy = Some(SlaPolicy::Count {
                        count: 1,
                        duration_secs: 0,
                    })
                }),
                "sla_policy.duration_secs: must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| {
                    c.sla_policy = Some(SlaPolicy::Count {
                        count: 1,
                        duration_secs: SLA_DURATION_SECS_MAX + 1,
                    })
                }),
                "sla_policy.duration_secs: must be <= 2592000 (got 2592001)",
            ),
            (
                Box::new(|c| c.sla_policy = percentage(0, 60)),
                "sla_policy.percentage: must be > 0 and <= 100 (got 0)",
            ),
            (
                Box::new(|c| c.sla_policy = percentage(100_001, 60)),
                "sla_policy.percentage: must be > 0 and <= 100 (got 100.001)",
            ),
            (
                Box::new(|c| c.sla_policy = percentage(120_000, 60)),
                "sla_policy.percentage: must be > 0 and <= 100 (got 120)",
            ),
            (
                Box::new(|c| c.sla_policy = percentage(95_000, 0)),
                "sla_policy.duration_secs: must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| c.sla_policy = percentage(95_000, u64::MAX)),
                "sla_policy.duration_secs: must be <= 2592000 (got 18446744073709551615)",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("https://c.example.com", "drain")),
                "sla_policy.coordinator_url: must start with \"http://\" (got \"https://c.example.com\")",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("", "drain")),
                "sla_policy.coordinator_url: must start with \"http://\" (got \"\")",
            ),
            (
                Box::new(move |c| c.sla_policy = coordinator(&long_url, "drain")),
                "sla_policy.coordinator_url: must be at most 2048 bytes (got 2057)",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("http://", "drain")),
                "sla_policy.coordinator_url: must be http://host[:port][/path], without spaces (got \"http://\")",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("http:///sla", "drain")),
                "sla_policy.coordinator_url: must be http://host[:port][/path]",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("http://c .example.com", "drain")),
                "sla_policy.coordinator_url: must be http://host[:port][/path]",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("http://c/a b", "drain")),
                "sla_policy.coordinator_url: must be http://host[:port][/path]",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("http://c\u{e9}/", "drain")),
                "sla_policy.coordinator_url: must be http://host[:port][/path]",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("http://user@c/", "drain")),
                "sla_policy.coordinator_url: must be http://host[:port][/path]",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("http://c:0/", "drain")),
                "sla_policy.coordinator_url: must be http://host[:port][/path]",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("http://c:65536/", "drain")),
                "sla_policy.coordinator_url: must be http://host[:port][/path]",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("http://c:/", "drain")),
                "sla_policy.coordinator_url: must be http://host[:port][/path]",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("http://c:1:2/", "drain")),
                "sla_policy.coordinator_url: must be http://host[:port][/path]",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("http://[::1/", "drain")),
                "sla_policy.coordinator_url: must be http://host[:port][/path]",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("http://[]:80/", "drain")),
                "sla_policy.coordinator_url: must be http://host[:port][/path]",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("http://[::1]x/", "drain")),
                "sla_policy.coordinator_url: must be http://host[:port][/path]",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("http://c/", "")),
                "sla_policy.status_key: \"\" must be 1..=128 characters of [A-Za-z0-9_.-]",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("http://c/", "may drain")),
                "sla_policy.status_key: \"may drain\" must be 1..=128 characters of [A-Za-z0-9_.-]",
            ),
            (
                Box::new(|c| c.sla_policy = coordinator("http://c/", &"k".repeat(129))),
                "sla_policy.status_key: ",
            ),
            // Partition policy.
            (
                Box::new(|c| {
                    c.partition_policy = Some(PartitionPolicy {
                        reschedule: true,
                        delay_secs: PARTITION_DELAY_SECS_MAX + 1,
                    })
                }),
                "partition_policy.delay_secs: must be <= 2592000 (got 2592001)",
            ),
        ];
        for (edit, message) in table {
            check_from(valid_service(), edit, Err(message));
        }
    }

    /// The service fields are checked after the fields the job file lists before them, in the
    /// file's order, so the first error is the first the user reads.
    #[test]
    fn service_fields_are_checked_in_file_order() {
        check_from(
            valid_service(),
            |c| {
                c.finalization_wait_secs = 3601;
                http_check(c).interval_secs = 0;
            },
            Err("finalization_wait_secs: "),
        );
        check_from(
            valid_service(),
            |c| {
                http_check(c).interval_secs = 0;
                lifecycle(c).port = "x".into();
                c.sla_policy = percentage(0, 1);
                c.partition_policy = Some(PartitionPolicy {
                    reschedule: true,
                    delay_secs: u64::MAX,
                });
            },
            Err("health_check.interval_secs: "),
        );
        check_from(
            valid_service(),
            |c| {
                lifecycle(c).port = "x".into();
                c.sla_policy = percentage(0, 1);
            },
            Err("lifecycle.http.port: "),
        );
        check_from(
            valid_service(),
            |c| {
                c.sla_policy = percentage(0, 1);
                c.partition_policy = Some(PartitionPolicy {
                    reschedule: true,
                    delay_secs: u64::MAX,
                });
            },
            Err("sla_policy.percentage: "),
        );
    }
}
