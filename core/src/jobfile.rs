//! Job files: the TOML a user writes to describe a job, parsed into a validated [`JobSpec`].
//!
//! The format (unknown fields anywhere are an error, so a typo never silently takes a default):
//!
//! ```toml
//! instances = 20                   # required, >= 1
//! command = "echo hello from instance $BOREALIS_INSTANCE_ID"   # required, not blank
//! service = false                  # default false: restart whenever it terminates
//! tier = "preferred"               # preferred | preemptible | revocable; default preferred
//! priority = 0                     # default 0
//! production = false               # default false
//! max_task_failures = 1            # default 1; -1 = unlimited; must be >= -1
//! finalization_wait_secs = 30      # default 30; 0..=3600, SIGTERM to SIGKILL
//! cron_schedule = "0 3 * * *"      # optional: a cron job, run on this schedule (five fields
//!                                  # minute hour day-of-month month day-of-week, or @daily..;
//!                                  # see crate::cron); not with service = true
//! cron_collision_policy = "KILL_EXISTING"  # cron jobs only; default KILL_EXISTING: a trigger
//!                                  # while the last run is active kills it first; CANCEL_NEW:
//!                                  # the trigger is skipped (RUN_OVERLAP is not supported)
//!
//! [resources]                      # required
//! cpu = 0.1                        # cores, > 0; rounded to thousandths, at least 0.001
//! ram = "64MiB"                    # a size: integer then B, KiB, MiB, GiB or TiB; > 0
//! disk = "128MiB"                  # (KB, MB, GB, TB are read as binary units, as Aurora does)
//! ports = ["http", "admin"]        # optional named ports: unique, [a-z0-9_]+
//!
//! [[constraints]]                  # optional, any number up to CONSTRAINTS_MAX
//! attribute = "rack"
//! limit = 2                        # a limit constraint: at most 2 tasks per rack (>= 1)
//!
//! [[constraints]]
//! attribute = "zone"
//! values = ["us-east-1a"]          # a value constraint: the agent's zone is one of these
//! negated = false                  # true: the agent's zone is none of these
//!
//! [health_check]                   # optional: RUNNING only once healthy, killed when unhealthy
//! type = "http"                    # "http" (default) or "shell"
//! port = "health"                  # http: one of resources.ports (default "health")
//! endpoint = "/health"             # http: a path starting with "/" (default "/health")
//! expected_status = 200            # http: 100..=599 (default 200)
//! # command = "curl -sf ..."       # shell: required, not blank; `sh -c` in the sandbox
//! initial_interval_secs = 15       # default 15, 0..=3600: failures in this grace do not count
//! interval_secs = 10               # default 10, 1..=3600
//! timeout_secs = 1                 # default 1, 1..=3600 and <= interval_secs
//! max_consecutive_failures = 0     # default 0, 0..=1000
//! min_consecutive_successes = 1    # default 1, 1..=1000
//!
//! [lifecycle.http]                 # optional: ask the task over HTTP to stop before SIGTERM
//! port = "health"                  # one of resources.ports (default "health")
//! graceful_shutdown_endpoint = "/quitquitquit"     # default; POSTed first
//! shutdown_endpoint = "/abortabortabort"           # default; POSTed second
//! graceful_shutdown_wait_secs = 5  # default 5, 0..=3600
//! shutdown_wait_secs = 5           # default 5, 0..=3600
//!
//! [sla_policy]                     # optional: what maintenance must leave of the job
//! type = "count"                   # required: "count", "percentage" or "coordinator"
//! count = 2                        # count: required, >= 1 (may exceed instances, as in Aurora)
//! # percentage = 99.9              # percentage: required, > 0 and <= 100, at most 3 decimals
//! duration_secs = 1800             # count, percentage: required, 1..=2592000 (30 days)
//! # coordinator_url = "http://coord.example.com:8080/sla"  # coordinator: required, http://
//! # status_key = "drain"           # coordinator: default "drain", [A-Za-z0-9_.-]+
//!
//! [partition_policy]               # optional; used under --partition-aware
//! reschedule = true                # default true; false: wait out the partition for ever
//! delay_secs = 0                   # default 0, 0..=2592000: PARTITIONED this long, then LOST
//!
//! [update]                         # optional: how `borealis update` rolls out a new config
//! batch_size = 1                   # default 1, >= 1: instances updated at once (Aurora's
//!                                  # update_group_size)
//! max_per_instance_failures = 0    # default 0: failures an instance may have in the update
//! max_total_failures = 0           # default 0: failed instances tolerated before it fails;
//!                                  # less than the instances updated
//! watch_secs = 45                  # default 45, 0..=86400: a new instance must stay RUNNING
//!                                  # and healthy this long to count as updated
//! rollback_on_failure = true       # default true: a failed update rolls back
//! wait_for_batch_completion = false  # default false: true, a batch settles before the next
//! # pulse_interval_secs = 3600     # default none, 1..=86400: the update progresses only
//!                                  # within this many seconds of the last
//!                                  # `borealis update pulse`
//! sla_aware = false                # default false: instances are taken down only as the
//!                                  # job's SLA policy allows
//! ```
//!
//! A constraint has exactly one of `limit` and `values`. A constraint on `dedicated` must be a
//! plain (not negated) value constraint with exactly one value. Sizes are rounded up to whole
//! MiB. Ports are handed out by the agent and reach the task as `BOREALIS_PORT_<NAME>`.
//!
//! In `[health_check]` and `[sla_policy]`, a field that does not belong to the chosen `type`
//! is an error (`port` with a shell check, `count` with a percentage), as is a missing required
//! one. A job without `[sla_policy]` is held to the default SLA of its tier (see
//! [`crate::sla`]); a count larger than the job's instances is accepted, as Aurora accepts it,
//! and means maintenance never takes one of its tasks. A job without `[partition_policy]` has
//! its partitioned tasks LOST (and replaced) at once.
//!
//! A job with `cron_schedule` is a cron job: it is not started when created, but on each
//! trigger of its schedule (read in the scheduler's cron time zone). `cron_collision_policy`
//! without `cron_schedule` is an error, as is a cron job that is a service (Aurora refuses
//! both). `[update]` bounds that depend on the job's instances (`max_total_failures` below the
//! instances updated, `max_per_instance_failures` within `--max-update-instance-failures`) are
//! checked when an update starts, not here.
//!
//! Parsing is pure: the caller reads the file and supplies the job key (it comes from the
//! command line, not the file, so one file can describe the same job in several environments).
//!
//! The parser checks only what the file's text needs to become a [`TaskConfig`] (shapes, sizes,
//! numbers that do not fit the config's types); every bound on the config itself is
//! [`validate_task_config`]'s, which the parser calls last, so a job file and a config off the
//! wire are held to the same rules.

use serde::{Deserialize, Serialize};

use crate::cron::{CollisionPolicy, CronSchedule, CronSpec};
use crate::model::{Constraint, JobKey, Resources, TaskConfig, Tier};
use crate::service::{HealthCheck, HealthChecker, HttpLifecycle, PartitionPolicy, SlaPolicy};
use crate::update::{UpdateSettings, UPDATE_SECS_MAX};
use crate::validate::{
    validate_task_config, CONSTRAINT_LIMIT_MIN, HEALTH_CHECK_CONSECUTIVE_MAX,
    HEALTH_CHECK_INTERVAL_SECS_MIN, HEALTH_CHECK_SECS_MAX, HEALTH_CHECK_SUCCESSES_MIN,
    HTTP_STATUS_MAX, HTTP_STATUS_MIN, LIFECYCLE_WAIT_SECS_MAX, MAX_TASK_FAILURES_MIN,
    PARTITION_DELAY_SECS_MAX, SLA_COUNT_MIN, SLA_DURATION_SECS_MAX, SLA_PERCENTAGE_MILLIS_MAX,
};

// The bounds are the validator's; re-exported here, where job-file users have always found them.
pub use crate::validate::{
    COMMAND_BYTES_MAX, CONSTRAINTS_MAX, CONSTRAINT_VALUES_MAX, FINALIZATION_WAIT_SECS_MAX,
    PORT_NAMES_MAX, PORT_NAME_BYTES_MAX,
};

const MIB_BYTES: u128 = 1 << 20;

/// A job file, validated: how many instances, and what each one runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    pub instances: u32,
    pub config: TaskConfig,
    /// The `[update]` section: how an update of the job rolls out. None: absent (an update
    /// then takes [`UpdateSettings::default`]).
    pub update: Option<UpdateSettings>,
    /// `cron_schedule` and `cron_collision_policy`: Some for a cron job.
    pub cron: Option<CronSpec>,
}

/// Why a job file was rejected. `Display` is one line that names where the problem is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobFileError {
    /// Not TOML, or TOML that does not have the job file's shape: an unknown or missing field,
    /// a value of the wrong type. The location is 1-based, when the parser knows it.
    #[error("{}{message}", location_prefix(*.location))]
    Syntax {
        location: Option<(usize, usize)>,
        message: String,
    },
    /// Well-formed, but a value is out of range or inconsistent with another.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn location_prefix(location: Option<(usize, usize)>) -> String {
    match location {
        Some((line, column)) => format!("line {line}, column {column}: "),
        None => String::new(),
    }
}

/// Whether `c` would break or garble the one line of an error: line breaks (`\n`, `\r`, the
/// vertical tab, form feed, next line, the Unicode line and paragraph separators) and the other
/// control characters; a tab stays.
fn breaks_the_line(c: char) -> bool {
    (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}'
}

/// `text` with every character [`breaks_the_line`] written as its escape (`\n`, `\u{2028}`),
/// so that an error that echoes a value from the file stays one line.
fn one_line(text: String) -> String {
    if !text.chars().any(breaks_the_line) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if breaks_the_line(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl JobFileError {
    /// Every `Invalid` error is made here: what it echoes of the file is kept on one line.
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> JobFileError {
        JobFileError::Invalid {
            field: one_line(field.into()),
            reason: one_line(reason.into()),
        }
    }

    fn syntax(text: &str, error: &toml::de::Error) -> JobFileError {
        let location = error.span().map(|span| line_column(text, span.start));
        // toml's parse messages span lines ("invalid array", "expected `]`"); `Display` is one.
        let message = error
            .message()
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let message = if message.is_empty() {
            "invalid TOML".to_string()
        } else {
            one_line(message)
        };
        JobFileError::Syntax { location, message }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

// The file as written. Integers are read as i64 (TOML's own integer type) so an out-of-range
// value gets a message from `validate` that names the field and the bound, rather than a
// generic "expected u32".
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    instances: i64,
    command: String,
    #[serde(default)]
    service: bool,
    #[serde(default)]
    tier: Tier,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    production: bool,
    #[serde(default = "default_max_task_failures")]
    max_task_failures: i64,
    #[serde(default = "default_finalization_wait_secs")]
    finalization_wait_secs: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cron_schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cron_collision_policy: Option<String>,
    resources: RawResources,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    constraints: Vec<RawConstraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    health_check: Option<RawHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lifecycle: Option<RawLifecycle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sla_policy: Option<RawSlaPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partition_policy: Option<RawPartitionPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    update: Option<RawUpdate>,
}

fn default_max_task_failures() -> i64 {
    1
}

fn default_finalization_wait_secs() -> i64 {
    30
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    cpu: f64,
    ram: String,
    disk: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ports: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawConstraint {
    attribute: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    values: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    negated: Option<bool>,
}

// The service sections. Every field but the kinds is optional here, so that a field given for
// the wrong kind can be named in the error and a missing one gets the default (or an error
// naming it, when required); `to_toml` writes every field of the chosen kind.

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    #[serde(rename = "type", default)]
    kind: RawCheckKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expected_status: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    initial_interval_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_consecutive_failures: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_consecutive_successes: Option<i64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum RawCheckKind {
    #[default]
    Http,
    Shell,
}

impl RawCheckKind {
    fn as_str(self) -> &'static str {
        match self {
            RawCheckKind::Http => "http",
            RawCheckKind::Shell => "shell",
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawLifecycle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<RawHttpLifecycle>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawHttpLifecycle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    graceful_shutdown_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shutdown_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    graceful_shutdown_wait_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shutdown_wait_secs: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSlaPolicy {
    #[serde(rename = "type")]
    kind: RawSlaKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    percentage: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    duration_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    coordinator_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status_key: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum RawSlaKind {
    Count,
    Percentage,
    Coordinator,
}

impl RawSlaKind {
    fn as_str(self) -> &'static str {
        match self {
            RawSlaKind::Count => "count",
            RawSlaKind::Percentage => "percentage",
            RawSlaKind::Coordinator => "coordinator",
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawPartitionPolicy {
    #[serde(default = "default_partition_reschedule")]
    reschedule: bool,
    #[serde(default)]
    delay_secs: i64,
}

fn default_partition_reschedule() -> bool {
    PartitionPolicy::default().reschedule
}

// `[update]`: every field optional, defaulting to `UpdateSettings::default()`'s; `to_toml`
// writes every field (but an unset `pulse_interval_secs`).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_per_instance_failures: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_total_failures: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    watch_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rollback_on_failure: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wait_for_batch_completion: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pulse_interval_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sla_aware: Option<bool>,
}

/// Parses and validates a job file for the job `job`.
pub fn parse_job_file(job: JobKey, text: &str) -> Result<JobSpec, JobFileError> {
    let raw: RawJob = toml::from_str(text).map_err(|e| JobFileError::syntax(text, &e))?;
    validate(job, raw)
}

fn validate(job: JobKey, raw: RawJob) -> Result<JobSpec, JobFileError> {
    let instances = int_in_range("instances", raw.instances, 1, i64::from(u32::MAX))?;
    // Integers are range-checked against the validator's bounds while narrowing, so a value too
    // large for the config's type gets the same message as one merely out of bounds.
    let priority = int_in_range(
        "priority",
        raw.priority,
        i64::from(i32::MIN),
        i64::from(i32::MAX),
    )?;
    let max_task_failures = int_in_range(
        "max_task_failures",
        raw.max_task_failures,
        i64::from(MAX_TASK_FAILURES_MIN),
        i64::from(i32::MAX),
    )?;
    let finalization_wait_secs = int_in_range(
        "finalization_wait_secs",
        raw.finalization_wait_secs,
        0,
        i64::from(FINALIZATION_WAIT_SECS_MAX),
    )?;
    let port_names = raw.resources.ports;
    let resources = Resources {
        cpu_millis: parse_cpu_millis(raw.resources.cpu)?,
        ram_mib: parse_size_mib("resources.ram", &raw.resources.ram)?,
        disk_mib: parse_size_mib("resources.disk", &raw.resources.disk)?,
        // More names than a u16 counts is refused by the validator's PORT_NAMES_MAX.
        ports: u16::try_from(port_names.len()).unwrap_or(u16::MAX),
    };
    let constraints = raw
        .constraints
        .into_iter()
        .enumerate()
        .map(|(index, c)| build_constraint(index, c))
        .collect::<Result<Vec<_>, _>>()?;
    let health_check = raw.health_check.map(build_health_check).transpose()?;
    let http_lifecycle = raw
        .lifecycle
        .and_then(|lifecycle| lifecycle.http)
        .map(build_http_lifecycle)
        .transpose()?;
    let sla_policy = raw.sla_policy.map(build_sla_policy).transpose()?;
    let partition_policy = raw
        .partition_policy
        .map(build_partition_policy)
        .transpose()?;
    let cron = build_cron(raw.service, raw.cron_schedule, raw.cron_collision_policy)?;
    let update = raw.update.map(build_update).transpose()?;
    let config = TaskConfig {
        job,
        command: raw.command,
        resources,
        port_names,
        constraints,
        tier: raw.tier,
        priority,
        production: raw.production,
        is_service: raw.service,
        max_task_failures,
        finalization_wait_secs,
        health_check,
        http_lifecycle,
        sla_policy,
        partition_policy,
    };
    validate_task_config(&config).map_err(|e| JobFileError::invalid(e.field, e.reason))?;
    Ok(JobSpec {
        instances,
        config,
        update,
        cron,
    })
}

/// `value` as a `T`, or an error naming `field` and the violated bound.
fn int_in_range<T: TryFrom<i64>>(
    field: &str,
    value: i64,
    min: i64,
    max: i64,
) -> Result<T, JobFileError> {
    if value < min {
        return Err(JobFileError::invalid(
            field,
            format!("must be >= {min} (got {value})"),
        ));
    }
    if value > max {
        return Err(JobFileError::invalid(
            field,
            format!("must be <= {max} (got {value})"),
        ));
    }
    Ok(T::try_from(value).unwrap_or_else(|_| panic!("{value} checked to be in {min}..={max}")))
}

fn parse_cpu_millis(cores: f64) -> Result<u32, JobFileError> {
    const FIELD: &str = "resources.cpu";
    // NaN compares false with everything, so test it explicitly: it is not > 0.
    if cores.is_nan() || cores <= 0.0 {
        return Err(JobFileError::invalid(
            FIELD,
            format!("must be > 0 (got {cores})"),
        ));
    }
    let millis = (cores * 1000.0).round();
    if millis < 1.0 {
        return Err(JobFileError::invalid(
            FIELD,
            format!("must be at least 0.001 cores (got {cores})"),
        ));
    }
    if millis > f64::from(u32::MAX) {
        return Err(JobFileError::invalid(
            FIELD,
            format!("must be at most {} cores (got {cores})", u32::MAX / 1000),
        ));
    }
    // In range and integral, so the cast is exact.
    Ok(millis as u32)
}

/// A size such as `"64MiB"`, in MiB rounded up.
/// Why a size did not parse (see [`size_mib`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeError {
    /// Not an integer followed by one of the units.
    Malformed,
    /// More than `u32::MAX` MiB.
    TooLarge,
}

/// A size in MiB, rounded up: an integer and a unit, one of B, KiB, MiB, GiB, TiB (KB, MB, GB,
/// TB mean the same). The one grammar of sizes, for job files and the CLI's flags alike; `0B`
/// is 0 (callers that need more say so).
pub fn size_mib(text: &str) -> Result<u32, SizeError> {
    let text_trimmed = text.trim();
    let digits_end = text_trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text_trimmed.len());
    let (digits, unit) = text_trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::Malformed);
    }
    let unit_bytes: u128 = match unit.trim_start() {
        "B" => 1,
        "KiB" | "KB" => 1 << 10,
        "MiB" | "MB" => 1 << 20,
        "GiB" | "GB" => 1 << 30,
        "TiB" | "TB" => 1 << 40,
        _ => return Err(SizeError::Malformed),
    };
    let count: u128 = digits.parse().map_err(|_| SizeError::TooLarge)?;
    let bytes = count.checked_mul(unit_bytes).ok_or(SizeError::TooLarge)?;
    u32::try_from(bytes.div_ceil(MIB_BYTES)).map_err(|_| SizeError::TooLarge)
}

fn parse_size_mib(field: &str, text: &str) -> Result<u32, JobFileError> {
    match size_mib(text) {
        Ok(0) => Err(JobFileError::invalid(
            field,
            format!("must be > 0 (got {text:?})"),
        )),
        Ok(mib) => Ok(mib),
        Err(SizeError::Malformed) => Err(JobFileError::invalid(
            field,
            format!(
                "invalid size {text:?}: expected an integer and a unit, \
                 one of B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB), e.g. \"64MiB\""
            ),
        )),
        Err(SizeError::TooLarge) => Err(JobFileError::invalid(
            field,
            format!("must be at most {}MiB (got {text:?})", u32::MAX),
        )),
    }
}

/// The constraint a raw `[[constraints]]` table describes: exactly one of `limit` and `values`,
/// `negated` only with `values`. Its bounds are [`validate_task_config`]'s.
fn build_constraint(index: usize, raw: RawConstraint) -> Result<Constraint, JobFileError> {
    let field = format!("constraints[{index}]");
    let invalid = |reason: &str| Err(JobFileError::invalid(field.clone(), reason));
    match (raw.limit, raw.values) {
        (Some(_), Some(_)) => invalid("has both limit and values"),
        (None, None) => invalid("needs one of limit or values"),
        (Some(_), None) if raw.negated.is_some() => {
            invalid("negated applies only to a value constraint")
        }
        (Some(limit), None) => Ok(Constraint::Limit {
            attribute: raw.attribute,
            limit: int_in_range(
                &format!("{field}.limit"),
                limit,
                i64::from(CONSTRAINT_LIMIT_MIN),
                i64::from(u32::MAX),
            )?,
        }),
        (None, Some(values)) => Ok(Constraint::Value {
            attribute: raw.attribute,
            negated: raw.negated.unwrap_or(false),
            values,
        }),
    }
}

/// `field` (in `section`) must be absent: it does not belong to the section's `type`.
fn forbid<T>(
    section: &str,
    field: &str,
    value: &Option<T>,
    kind: &str,
) -> Result<(), JobFileError> {
    match value {
        Some(_) => Err(JobFileError::invalid(
            format!("{section}.{field}"),
            format!("not allowed with type {kind:?}"),
        )),
        None => Ok(()),
    }
}

/// `field` (in `section`) must be present: the section's `type` needs it.
fn require<T>(section: &str, field: &str, value: Option<T>, kind: &str) -> Result<T, JobFileError> {
    value.ok_or_else(|| {
        JobFileError::invalid(
            format!("{section}.{field}"),
            format!("required with type {kind:?}"),
        )
    })
}

/// An optional integer of a section, defaulted, narrowed within the validator's bounds.
fn int_or<T: TryFrom<i64>>(
    field: &str,
    value: Option<i64>,
    default: T,
    min: i64,
    max: i64,
) -> Result<T, JobFileError> {
    match value {
        None => Ok(default),
        Some(value) => int_in_range(field, value, min, max),
    }
}

fn build_health_check(raw: RawHealthCheck) -> Result<HealthCheck, JobFileError> {
    const SECTION: &str = "health_check";
    let kind = raw.kind.as_str();
    let checker = match raw.kind {
        RawCheckKind::Http => {
            forbid(SECTION, "command", &raw.command, kind)?;
            HealthChecker::Http {
                port: raw
                    .port
                    .unwrap_or_else(|| HealthCheck::DEFAULT_HTTP_PORT.to_string()),
                endpoint: raw
                    .endpoint
                    .unwrap_or_else(|| HealthCheck::DEFAULT_HTTP_ENDPOINT.to_string()),
                expected_status: int_or(
                    "health_check.expected_status",
                    raw.expected_status,
                    HealthCheck::DEFAULT_EXPECTED_STATUS,
                    i64::from(HTTP_STATUS_MIN),
                    i64::from(HTTP_STATUS_MAX),
                )?,
            }
        }
        RawCheckKind::Shell => {
            forbid(SECTION, "port", &raw.port, kind)?;
            forbid(SECTION, "endpoint", &raw.endpoint, kind)?;
            forbid(SECTION, "expected_status", &raw.expected_status, kind)?;
            HealthChecker::Shell {
                command: require(SECTION, "command", raw.command, kind)?,
            }
        }
    };
    let secs = |field: &str, value, default, min| {
        int_or(field, value, default, min, i64::from(HEALTH_CHECK_SECS_MAX))
    };
    let counted = |field: &str, value, default, min| {
        int_or(
            field,
            value,
            default,
            min,
            i64::from(HEALTH_CHECK_CONSECUTIVE_MAX),
        )
    };
    let interval_min = i64::from(HEALTH_CHECK_INTERVAL_SECS_MIN);
    Ok(HealthCheck {
        checker,
        initial_interval_secs: secs(
            "health_check.initial_interval_secs",
            raw.initial_interval_secs,
            HealthCheck::DEFAULT_INITIAL_INTERVAL_SECS,
            0,
        )?,
        interval_secs: secs(
            "health_check.interval_secs",
            raw.interval_secs,
            HealthCheck::DEFAULT_INTERVAL_SECS,
            interval_min,
        )?,
        timeout_secs: secs(
            "health_check.timeout_secs",
            raw.timeout_secs,
            HealthCheck::DEFAULT_TIMEOUT_SECS,
            interval_min,
        )?,
        max_consecutive_failures: counted(
            "health_check.max_consecutive_failures",
            raw.max_consecutive_failures,
            HealthCheck::DEFAULT_MAX_CONSECUTIVE_FAILURES,
            0,
        )?,
        min_consecutive_successes: counted(
            "health_check.min_consecutive_successes",
            raw.min_consecutive_successes,
            HealthCheck::DEFAULT_MIN_CONSECUTIVE_SUCCESSES,
            i64::from(HEALTH_CHECK_SUCCESSES_MIN),
        )?,
    })
}

fn build_http_lifecycle(raw: RawHttpLifecycle) -> Result<HttpLifecycle, JobFileError> {
    let defaults = HttpLifecycle::default();
    let wait = |field: &str, value, default| {
        int_or(field, value, default, 0, i64::from(LIFECYCLE_WAIT_SECS_MAX))
    };
    Ok(HttpLifecycle {
        port: raw.port.unwrap_or(defaults.port),
        graceful_shutdown_endpoint: raw
            .graceful_shutdown_endpoint
            .unwrap_or(defaults.graceful_shutdown_endpoint),
        shutdown_endpoint: raw.shutdown_endpoint.unwrap_or(defaults.shutdown_endpoint),
        graceful_shutdown_wait_secs: wait(
            "lifecycle.http.graceful_shutdown_wait_secs",
            raw.graceful_shutdown_wait_secs,
            defaults.graceful_shutdown_wait_secs,
        )?,
        shutdown_wait_secs: wait(
            "lifecycle.http.shutdown_wait_secs",
            raw.shutdown_wait_secs,
            defaults.shutdown_wait_secs,
        )?,
    })
}

fn build_sla_policy(raw: RawSlaPolicy) -> Result<SlaPolicy, JobFileError> {
    const SECTION: &str = "sla_policy";
    let kind = raw.kind.as_str();
    let duration_secs = |duration: Option<i64>| -> Result<u64, JobFileError> {
        int_in_range(
            "sla_policy.duration_secs",
            require(SECTION, "duration_secs", duration, kind)?,
            1,
            i64::try_from(SLA_DURATION_SECS_MAX).expect("30 days fit an i64"),
        )
    };
    match raw.kind {
        RawSlaKind::Count => {
            forbid(SECTION, "percentage", &raw.percentage, kind)?;
            forbid(SECTION, "coordinator_url", &raw.coordinator_url, kind)?;
            forbid(SECTION, "status_key", &raw.status_key, kind)?;
            Ok(SlaPolicy::Count {
                count: int_in_range(
                    "sla_policy.count",
                    require(SECTION, "count", raw.count, kind)?,
                    i64::from(SLA_COUNT_MIN),
                    i64::from(u32::MAX),
                )?,
                duration_secs: duration_secs(raw.duration_secs)?,
            })
        }
        RawSlaKind::Percentage => {
            forbid(SECTION, "count", &raw.count, kind)?;
            forbid(SECTION, "coordinator_url", &raw.coordinator_url, kind)?;
            forbid(SECTION, "status_key", &raw.status_key, kind)?;
            Ok(SlaPolicy::Percentage {
                percentage_millis: parse_percentage_millis(require(
                    SECTION,
                    "percentage",
                    raw.percentage,
                    kind,
                )?)?,
                duration_secs: duration_secs(raw.duration_secs)?,
            })
        }
        RawSlaKind::Coordinator => {
            forbid(SECTION, "count", &raw.count, kind)?;
            forbid(SECTION, "percentage", &raw.percentage, kind)?;
            forbid(SECTION, "duration_secs", &raw.duration_secs, kind)?;
            Ok(SlaPolicy::Coordinator {
                coordinator_url: require(SECTION, "coordinator_url", raw.coordinator_url, kind)?,
                status_key: raw
                    .status_key
                    .unwrap_or_else(|| SlaPolicy::DEFAULT_STATUS_KEY.to_string()),
            })
        }
    }
}

/// A percentage such as `99.9`, exactly, in thousandths of a percent (`99_900`).
///
/// "At most 3 decimals" is exact, not a tolerance: the percentage must be the double nearest to
/// some `k / 1000`, which is what the TOML parser makes of any decimal with up to three digits
/// after the point (division is correctly rounded, so `k / 1000.0` is that same double).
fn parse_percentage_millis(percentage: f64) -> Result<u32, JobFileError> {
    const FIELD: &str = "sla_policy.percentage";
    let max = f64::from(SLA_PERCENTAGE_MILLIS_MAX) / 1000.0;
    // NaN compares false with everything, so it fails `> 0` here.
    if !(percentage > 0.0 && percentage <= max) {
        return Err(JobFileError::invalid(
            FIELD,
            format!("must be > 0 and <= 100 (got {percentage})"),
        ));
    }
    let millis = (percentage * 1000.0).round();
    if millis < 1.0 || millis / 1000.0 != percentage {
        return Err(JobFileError::invalid(
            FIELD,
            format!("must have at most 3 decimals (got {percentage})"),
        ));
    }
    // In 1..=100_000 and integral, so the cast is exact.
    Ok(millis as u32)
}

/// `cron_schedule` and `cron_collision_policy`: a policy only with a schedule, a schedule only
/// for a job that is not a service.
fn build_cron(
    service: bool,
    schedule: Option<String>,
    policy: Option<String>,
) -> Result<Option<CronSpec>, JobFileError> {
    let Some(schedule) = schedule else {
        return match policy {
            Some(_) => Err(JobFileError::invalid(
                "cron_collision_policy",
                "applies only to a cron job: requires cron_schedule",
            )),
            None => Ok(None),
        };
    };
    if service {
        return Err(JobFileError::invalid(
            "cron_schedule",
            "a cron job may not be a service (service = true)",
        ));
    }
    let invalid = |field: &str, e: crate::cron::CronError| {
        JobFileError::invalid(field, format!("{} (got {:?})", e.reason(), e.text()))
    };
    Ok(Some(CronSpec {
        schedule: CronSchedule::parse(&schedule).map_err(|e| invalid("cron_schedule", e))?,
        collision_policy: match policy {
            None => CollisionPolicy::default(),
            Some(policy) => {
                CollisionPolicy::parse(&policy).map_err(|e| invalid("cron_collision_policy", e))?
            }
        },
    }))
}

/// `[update]`, defaulted, narrowed within [`UpdateSettings::validate`]'s bounds, then held to
/// them (those that depend on the job's instances are the scheduler's, when an update starts).
fn build_update(raw: RawUpdate) -> Result<UpdateSettings, JobFileError> {
    let defaults = UpdateSettings::default();
    let count =
        |field: &str, value, default, min| int_or(field, value, default, min, i64::from(u32::MAX));
    let secs_max = i64::from(UPDATE_SECS_MAX);
    let settings = UpdateSettings {
        batch_size: count("update.batch_size", raw.batch_size, defaults.batch_size, 1)?,
        max_per_instance_failures: count(
            "update.max_per_instance_failures",
            raw.max_per_instance_failures,
            defaults.max_per_instance_failures,
            0,
        )?,
        max_total_failures: count(
            "update.max_total_failures",
            raw.max_total_failures,
            defaults.max_total_failures,
            0,
        )?,
        watch_secs: int_or(
            "update.watch_secs",
            raw.watch_secs,
            defaults.watch_secs,
            0,
            secs_max,
        )?,
        rollback_on_failure: raw
            .rollback_on_failure
            .unwrap_or(defaults.rollback_on_failure),
        wait_for_batch_completion: raw
            .wait_for_batch_completion
            .unwrap_or(defaults.wait_for_batch_completion),
        pulse_interval_secs: raw
            .pulse_interval_secs
            .map(|secs| int_in_range("update.pulse_interval_secs", secs, 1, secs_max))
            .transpose()?
            .or(defaults.pulse_interval_secs),
        sla_aware: raw.sla_aware.unwrap_or(defaults.sla_aware),
    };
    // Instances 0: the bounds that need the job's instances are checked when an update starts.
    settings
        .validate(0, u32::MAX)
        .map_err(|e| JobFileError::invalid(format!("update.{}", e.field), e.reason))?;
    Ok(settings)
}

fn build_partition_policy(raw: RawPartitionPolicy) -> Result<PartitionPolicy, JobFileError> {
    Ok(PartitionPolicy {
        reschedule: raw.reschedule,
        delay_secs: int_in_range(
            "partition_policy.delay_secs",
            raw.delay_secs,
            0,
            i64::try_from(PARTITION_DELAY_SECS_MAX).expect("30 days fit an i64"),
        )?,
    })
}

impl RawHealthCheck {
    fn from_config(check: &HealthCheck) -> RawHealthCheck {
        let mut raw = RawHealthCheck {
            kind: RawCheckKind::Http,
            port: None,
            endpoint: None,
            expected_status: None,
            command: None,
            initial_interval_secs: Some(i64::from(check.initial_interval_secs)),
            interval_secs: Some(i64::from(check.interval_secs)),
            timeout_secs: Some(i64::from(check.timeout_secs)),
            max_consecutive_failures: Some(i64::from(check.max_consecutive_failures)),
            min_consecutive_successes: Some(i64::from(check.min_consecutive_successes)),
        };
        match &check.checker {
            HealthChecker::Http {
                port,
                endpoint,
                expected_status,
            } => {
                raw.port = Some(port.clone());
                raw.endpoint = Some(endpoint.clone());
                raw.expected_status = Some(i64::from(*expected_status));
            }
            HealthChecker::Shell { command } => {
                raw.kind = RawCheckKind::Shell;
                raw.command = Some(command.clone());
            }
        }
        raw
    }
}

impl RawSlaPolicy {
    fn from_config(policy: &SlaPolicy) -> RawSlaPolicy {
        let mut raw = RawSlaPolicy {
            kind: RawSlaKind::Count,
            count: None,
            percentage: None,
            duration_secs: None,
            coordinator_url: None,
            status_key: None,
        };
        // Durations above i64::MAX are refused by the validator's 30 days; saturating keeps
        // the rendering total for a spec that was never validated.
        let duration = |secs: u64| Some(i64::try_from(secs).unwrap_or(i64::MAX));
        match policy {
            SlaPolicy::Count {
                count,
                duration_secs,
            } => {
                raw.count = Some(i64::from(*count));
                raw.duration_secs = duration(*duration_secs);
            }
            SlaPolicy::Percentage {
                percentage_millis,
                duration_secs,
            } => {
                raw.kind = RawSlaKind::Percentage;
                // The double nearest the decimal, which `parse_percentage_millis` reads back.
                raw.percentage = Some(f64::from(*percentage_millis) / 1000.0);
                raw.duration_secs = duration(*duration_secs);
            }
            SlaPolicy::Coordinator {
                coordinator_url,
                status_key,
            } => {
                raw.kind = RawSlaKind::Coordinator;
                raw.coordinator_url = Some(coordinator_url.clone());
                raw.status_key = Some(status_key.clone());
            }
        }
        raw
    }
}

impl JobSpec {
    /// Renders the spec as a job file that [`parse_job_file`] reads back to an equal spec
    /// (given the same job key, which is not part of the file). Every field is written out.
    pub fn to_toml(&self) -> String {
        let c = &self.config;
        let raw = RawJob {
            instances: i64::from(self.instances),
            command: c.command.clone(),
            service: c.is_service,
            tier: c.tier,
            priority: i64::from(c.priority),
            production: c.production,
            max_task_failures: i64::from(c.max_task_failures),
            finalization_wait_secs: i64::from(c.finalization_wait_secs),
            cron_schedule: self.cron.as_ref().map(|cron| cron.schedule.to_string()),
            cron_collision_policy: self
                .cron
                .as_ref()
                .map(|cron| cron.collision_policy.as_str().to_string()),
            resources: RawResources {
                // Exact in f64 for every u32, and `parse_cpu_millis` rounds back to it.
                cpu: f64::from(c.resources.cpu_millis) / 1000.0,
                ram: format!("{}MiB", c.resources.ram_mib),
                disk: format!("{}MiB", c.resources.disk_mib),
                ports: c.port_names.clone(),
            },
            constraints: c
                .constraints
                .iter()
                .map(|constraint| match constraint {
                    Constraint::Value {
                        attribute,
                        negated,
                        values,
                    } => RawConstraint {
                        attribute: attribute.clone(),
                        limit: None,
                        values: Some(values.clone()),
                        negated: Some(*negated),
                    },
                    Constraint::Limit { attribute, limit } => RawConstraint {
                        attribute: attribute.clone(),
                        limit: Some(i64::from(*limit)),
                        values: None,
                        negated: None,
                    },
                })
                .collect(),
            health_check: c.health_check.as_ref().map(RawHealthCheck::from_config),
            lifecycle: c.http_lifecycle.as_ref().map(|l| RawLifecycle {
                http: Some(RawHttpLifecycle {
                    port: Some(l.port.clone()),
                    graceful_shutdown_endpoint: Some(l.graceful_shutdown_endpoint.clone()),
                    shutdown_endpoint: Some(l.shutdown_endpoint.clone()),
                    graceful_shutdown_wait_secs: Some(i64::from(l.graceful_shutdown_wait_secs)),
                    shutdown_wait_secs: Some(i64::from(l.shutdown_wait_secs)),
                }),
            }),
            sla_policy: c.sla_policy.as_ref().map(RawSlaPolicy::from_config),
            partition_policy: c.partition_policy.map(|p| RawPartitionPolicy {
                reschedule: p.reschedule,
                // Above i64::MAX is refused by the validator's 30 days; saturate, as above.
                delay_secs: i64::try_from(p.delay_secs).unwrap_or(i64::MAX),
            }),
            update: self.update.map(|u| RawUpdate {
                batch_size: Some(i64::from(u.batch_size)),
                max_per_instance_failures: Some(i64::from(u.max_per_instance_failures)),
                max_total_failures: Some(i64::from(u.max_total_failures)),
                watch_secs: Some(i64::from(u.watch_secs)),
                rollback_on_failure: Some(u.rollback_on_failure),
                wait_for_batch_completion: Some(u.wait_for_batch_completion),
                pulse_interval_secs: u.pulse_interval_secs.map(i64::from),
                sla_aware: Some(u.sla_aware),
            }),
        };
        toml::to_string(&raw).expect("a job file always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DEDICATED_ATTRIBUTE;
    use crate::validate::{COORDINATOR_URL_BYTES_MAX, ENDPOINT_BYTES_MAX, STATUS_KEY_BYTES_MAX};
    use proptest::prelude::*;

    const MINIMAL: &str = r#"
instances = 2
command = "true"
[resources]
cpu = 0.5
ram = "64MiB"
disk = "1GiB"
"#;

    fn job() -> JobKey {
        "www/prod/hello".parse().unwrap()
    }

    fn minimal_spec() -> JobSpec {
        JobSpec {
            instances: 2,
            config: TaskConfig {
                job: job(),
                command: "true".into(),
                resources: Resources {
                    cpu_millis: 500,
                    ram_mib: 64,
                    disk_mib: 1024,
                    ports: 0,
                },
                port_names: vec![],
                constraints: vec![],
                tier: Tier::Preferred,
                priority: 0,
                production: false,
                is_service: false,
                max_task_failures: 1,
                finalization_wait_secs: 30,
                health_check: None,
                http_lifecycle: None,
                sla_policy: None,
                partition_policy: None,
            },
            update: None,
            cron: None,
        }
    }

    /// What a table row expects: a spec (built from the minimal one) or an error's one line.
    enum Expect {
        Spec(fn(&mut JobSpec)),
        Error(&'static str),
    }

    /// Parses `text` and compares it with `expected`; on a mismatch names the input.
    fn check(text: &str, expected: Expect) {
        let got = parse_job_file(job(), text);
        match expected {
            Expect::Spec(edit) => {
                let mut spec = minimal_spec();
                edit(&mut spec);
                assert_eq!(got, Ok(spec), "input:\n{text}");
            }
            Expect::Error(line) => {
                let error = got.expect_err(&format!("accepted:\n{text}"));
                let display = error.to_string();
                assert!(!display.contains('\n'), "not one line: {display}");
                assert_eq!(display, line, "input:\n{text}");
            }
        }
    }

    /// Runs every row, so that one run reports every failing row rather than the first.
    fn check_all(table: Vec<(String, Expect)>) {
        let rows = table.len();
        let failed = table
            .into_iter()
            .filter(|(text, expected)| {
                let expected = match expected {
                    Expect::Spec(edit) => Expect::Spec(*edit),
                    Expect::Error(line) => Expect::Error(line),
                };
                std::panic::catch_unwind(|| check(text, expected)).is_err()
            })
            .count();
        assert_eq!(failed, 0, "{failed} of {rows} rows failed (see above)");
    }

    /// The minimal file with the line starting with `key =` replaced (or `line` appended when
    /// no line starts so; an empty `line` deletes).
    fn with(key: &str, line: &str) -> String {
        let mut lines: Vec<String> = Vec::new();
        let mut replaced = false;
        for l in MINIMAL.lines() {
            if l.starts_with(&format!("{key} =")) {
                replaced = true;
                if !line.is_empty() {
                    lines.push(line.to_string());
                }
            } else {
                lines.push(l.to_string());
            }
        }
        if !replaced {
            lines.push(line.to_string());
        }
        lines.join("\n") + "\n"
    }

    /// The minimal file with top-level `line` inserted before `[resources]`.
    fn top(line: &str) -> String {
        MINIMAL.replace("[resources]", &format!("{line}\n[resources]"))
    }

    fn constraint(body: &str) -> String {
        format!("{MINIMAL}[[constraints]]\n{body}\n")
    }

    /// The minimal file with the ports `health` and `http`, and `sections` appended.
    fn service(sections: &str) -> String {
        let with_ports = with("disk", "disk = \"1GiB\"\nports = [\"health\", \"http\"]");
        format!("{with_ports}{sections}\n")
    }

    /// The spec of [`service`]'s ports, for a row's edit to start from.
    fn service_ports(spec: &mut JobSpec) {
        spec.config.port_names = vec!["health".into(), "http".into()];
        spec.config.resources.ports = 2;
    }

    fn http_check(port: &str, endpoint: &str, expected_status: u16) -> HealthCheck {
        HealthCheck::with_defaults(HealthChecker::Http {
            port: port.into(),
            endpoint: endpoint.into(),
            expected_status,
        })
    }

    #[test]
    fn minimal_file_takes_defaults() {
        check(MINIMAL, Expect::Spec(|_| {}));
    }

    #[test]
    fn every_field() {
        let text = r#"
instances = 20
command = "echo hello from instance $BOREALIS_INSTANCE_ID"
service = true
tier = "revocable"
priority = -3
production = true
max_task_failures = -1
finalization_wait_secs = 3600

[resources]
cpu = 2
ram = "1536KiB"
disk = "2GB"
ports = ["http", "admin_2"]

[[constraints]]
attribute = "rack"
limit = 2

[[constraints]]
attribute = "zone"
values = ["us-east-1a", "us-east-1b"]
negated = true

[[constraints]]
attribute = "dedicated"
values = ["www/hello"]

[health_check]
type = "http"
port = "admin_2"
endpoint = "/ready"
expected_status = 204
initial_interval_secs = 0
interval_secs = 30
timeout_secs = 5
max_consecutive_failures = 3
min_consecutive_successes = 2

[lifecycle.http]
port = "http"
graceful_shutdown_endpoint = "/quit"
shutdown_endpoint = "/abort"
graceful_shutdown_wait_secs = 10
shutdown_wait_secs = 0

[sla_policy]
type = "percentage"
percentage = 99.9
duration_secs = 3600

[partition_policy]
reschedule = false
delay_secs = 600

[update]
batch_size = 5
max_per_instance_failures = 2
max_total_failures = 3
watch_secs = 120
rollback_on_failure = false
wait_for_batch_completion = true
pulse_interval_secs = 600
sla_aware = true
"#;
        let expected = JobSpec {
            instances: 20,
            config: TaskConfig {
                job: job(),
                command: "echo hello from instance $BOREALIS_INSTANCE_ID".into(),
                resources: Resources {
                    cpu_millis: 2000,
                    ram_mib: 2,
                    disk_mib: 2048,
                    ports: 2,
                },
                port_names: vec!["http".into(), "admin_2".into()],
                constraints: vec![
                    Constraint::Limit {
                        attribute: "rack".into(),
                        limit: 2,
                    },
                    Constraint::Value {
                        attribute: "zone".into(),
                        negated: true,
                        values: vec!["us-east-1a".into(), "us-east-1b".into()],
                    },
                    Constraint::Value {
                        attribute: "dedicated".into(),
                        negated: false,
                        values: vec!["www/hello".into()],
                    },
                ],
                tier: Tier::Revocable,
                priority: -3,
                production: true,
                is_service: true,
                max_task_failures: -1,
                finalization_wait_secs: 3600,
                health_check: Some(HealthCheck {
                    checker: HealthChecker::Http {
                        port: "admin_2".into(),
                        endpoint: "/ready".into(),
                        expected_status: 204,
                    },
                    initial_interval_secs: 0,
                    interval_secs: 30,
                    timeout_secs: 5,
                    max_consecutive_failures: 3,
                    min_consecutive_successes: 2,
                }),
                http_lifecycle: Some(HttpLifecycle {
                    port: "http".into(),
                    graceful_shutdown_endpoint: "/quit".into(),
                    shutdown_endpoint: "/abort".into(),
                    graceful_shutdown_wait_secs: 10,
                    shutdown_wait_secs: 0,
                }),
                sla_policy: Some(SlaPolicy::Percentage {
                    percentage_millis: 99_900,
                    duration_secs: 3600,
                }),
                partition_policy: Some(PartitionPolicy {
                    reschedule: false,
                    delay_secs: 600,
                }),
            },
            update: Some(UpdateSettings {
                batch_size: 5,
                max_per_instance_failures: 2,
                max_total_failures: 3,
                watch_secs: 120,
                rollback_on_failure: false,
                wait_for_batch_completion: true,
                pulse_interval_secs: Some(600),
                sla_aware: true,
            }),
            cron: None,
        };
        assert_eq!(parse_job_file(job(), text), Ok(expected.clone()));
        let rendered = expected.to_toml();
        assert_eq!(
            parse_job_file(job(), &rendered),
            Ok(expected),
            "rendered:\n{rendered}"
        );
    }

    #[test]
    fn accepted_values() {
        let table: Vec<(String, Expect)> = vec![
            (
                with("cpu", "cpu = 0.0005"),
                Expect::Spec(|s| s.config.resources.cpu_millis = 1),
            ),
            (
                with("cpu", "cpu = 1.2344"),
                Expect::Spec(|s| s.config.resources.cpu_millis = 1234),
            ),
            (
                with("ram", r#"ram = "1B""#),
                Expect::Spec(|s| s.config.resources.ram_mib = 1),
            ),
            (
                with("ram", r#"ram = "1048577B""#),
                Expect::Spec(|s| s.config.resources.ram_mib = 2),
            ),
            (
                with("ram", r#"ram = "64 MB""#),
                Expect::Spec(|s| s.config.resources.ram_mib = 64),
            ),
            (
                with("ram", r#"ram = "1TiB""#),
                Expect::Spec(|s| s.config.resources.ram_mib = 1 << 20),
            ),
            (
                with("ram", r#"ram = "4095TB""#),
                Expect::Spec(|s| s.config.resources.ram_mib = 4095 << 20),
            ),
            (
                top("tier = \"preemptible\""),
                Expect::Spec(|s| s.config.tier = Tier::Preemptible),
            ),
            (
                top("max_task_failures = 0"),
                Expect::Spec(|s| s.config.max_task_failures = 0),
            ),
            (
                top("finalization_wait_secs = 0"),
                Expect::Spec(|s| s.config.finalization_wait_secs = 0),
            ),
            (
                with("instances", "instances = 4294967295"),
                Expect::Spec(|s| s.instances = u32::MAX),
            ),
            (
                constraint("attribute = \"zone\"\nvalues = [\"a\"]"),
                Expect::Spec(|s| {
                    s.config.constraints = vec![Constraint::Value {
                        attribute: "zone".into(),
                        negated: false,
                        values: vec!["a".into()],
                    }]
                }),
            ),
        ];
        check_all(table);
    }

    #[test]
    fn rejected_values() {
        let long_command = format!("command = \"{}\"", "x".repeat(COMMAND_BYTES_MAX + 1));
        let many_ports = format!(
            "ports = [{}]",
            (0..=PORT_NAMES_MAX)
                .map(|i| format!("\"p{i}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let many_values = format!(
            "attribute = \"zone\"\nvalues = [{}]",
            (0..=CONSTRAINT_VALUES_MAX)
                .map(|i| format!("\"z{i}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let many_constraints = format!(
            "{MINIMAL}{}",
            "[[constraints]]\nattribute = \"rack\"\nlimit = 1\n".repeat(CONSTRAINTS_MAX + 1)
        );
        let table: Vec<(String, &str)> = vec![
            // The file's shape, reported by toml with a location.
            ("instances = ".into(), "line 1, column 13: invalid TOML"),
            ("x = [1,".into(), "line 1, column 8: invalid array; expected `]`"),
            // Columns count characters, not bytes.
            (top("tier = \"é\" x"), "line 4, column 12: expected newline, `#`"),
            (top("comand = \"x\""), "line 4, column 1: unknown field `comand`, expected one of `instances`, `command`, `service`, `tier`, `priority`, `production`, `max_task_failures`, `finalization_wait_secs`, `cron_schedule`, `cron_collision_policy`, `resources`, `constraints`, `health_check`, `lifecycle`, `sla_policy`, `partition_policy`, `update`"),
            (with("command", ""), "line 1, column 1: missing field `command`"),
            (with("instances", "instances = \"2\""), "line 2, column 13: invalid type: string \"2\", expected i64"),
            (top("tier = \"gold\""), "line 4, column 8: unknown variant `gold`, expected one of `preferred`, `preemptible`, `revocable`"),
            (with("ram", "ram = 64"), "line 6, column 7: invalid type: integer `64`, expected a string"),
            (with("gpu", "gpu = 1"), "line 8, column 1: unknown field `gpu`, expected one of `cpu`, `ram`, `disk`, `ports`"),
            (constraint("attribute = \"rack\"\nlimits = 1"), "line 10, column 1: unknown field `limits`, expected one of `attribute`, `limit`, `values`, `negated`"),
            // Top-level values.
            (with("instances", "instances = 0"), "instances: must be >= 1 (got 0)"),
            (with("instances", "instances = 4294967296"), "instances: must be <= 4294967295 (got 4294967296)"),
            (with("command", "command = \" \\n \""), "command: must not be empty"),
            (with("command", &long_command), "command: must be at most 65536 bytes (got 65537)"),
            (top("priority = 2147483648"), "priority: must be <= 2147483647 (got 2147483648)"),
            (top("priority = -2147483649"), "priority: must be >= -2147483648 (got -2147483649)"),
            (top("max_task_failures = -2"), "max_task_failures: must be >= -1 (got -2)"),
            (top("finalization_wait_secs = 3601"), "finalization_wait_secs: must be <= 3600 (got 3601)"),
            (top("finalization_wait_secs = -1"), "finalization_wait_secs: must be >= 0 (got -1)"),
            // Resources.
            (with("cpu", "cpu = -1"), "resources.cpu: must be > 0 (got -1)"),
            (with("cpu", "cpu = 0"), "resources.cpu: must be > 0 (got 0)"),
            (with("cpu", "cpu = nan"), "resources.cpu: must be > 0 (got NaN)"),
            (with("cpu", "cpu = 0.0004"), "resources.cpu: must be at least 0.001 cores (got 0.0004)"),
            (with("cpu", "cpu = 5e6"), "resources.cpu: must be at most 4294967 cores (got 5000000)"),
            (with("cpu", "cpu = inf"), "resources.cpu: must be at most 4294967 cores (got inf)"),
            (with("ram", "ram = \"0MiB\""), "resources.ram: must be > 0 (got \"0MiB\")"),
            (with("ram", "ram = \"64\""), "resources.ram: invalid size \"64\": expected an integer and a unit, one of B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB), e.g. \"64MiB\""),
            (with("disk", "disk = \"MiB\""), "resources.disk: invalid size \"MiB\": expected an integer and a unit, one of B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB), e.g. \"64MiB\""),
            (with("disk", "disk = \"1.5GiB\""), "resources.disk: invalid size \"1.5GiB\": expected an integer and a unit, one of B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB), e.g. \"64MiB\""),
            (with("disk", "disk = \"64mib\""), "resources.disk: invalid size \"64mib\": expected an integer and a unit, one of B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB), e.g. \"64MiB\""),
            (with("disk", "disk = \"4096TiB\""), "resources.disk: must be at most 4294967295MiB (got \"4096TiB\")"),
            (with("disk", "disk = \"99999999999999999999999999999999999999999B\""), "resources.disk: must be at most 4294967295MiB (got \"99999999999999999999999999999999999999999B\")"),
            (with("disk", "disk = \"999999999999999999999999999999999999TiB\""), "resources.disk: must be at most 4294967295MiB (got \"999999999999999999999999999999999999TiB\")"),
            (with("ports", "ports = [\"http\", \"Admin\"]"), "resources.ports[1]: \"Admin\" must be 1..=64 characters of [a-z0-9_]"),
            (with("ports", "ports = [\"\"]"), "resources.ports[0]: \"\" must be 1..=64 characters of [a-z0-9_]"),
            (with("ports", "ports = [\"http\", \"admin\", \"http\"]"), "resources.ports[2]: \"http\" repeats resources.ports[0]"),
            (with("ports", &many_ports), "resources.ports: at most 64 ports (got 65)"),
            // Constraints.
            (constraint("attribute = \"rack\"\nlimit = 1\nvalues = [\"r1\"]"), "constraints[0]: has both limit and values"),
            (constraint("attribute = \"rack\""), "constraints[0]: needs one of limit or values"),
            (constraint("attribute = \"\"\nlimit = 1"), "constraints[0].attribute: must not be empty"),
            (constraint("attribute = \"rack\"\nlimit = 0"), "constraints[0].limit: must be >= 1 (got 0)"),
            (constraint("attribute = \"rack\"\nlimit = 1\nnegated = true"), "constraints[0]: negated applies only to a value constraint"),
            (constraint("attribute = \"zone\"\nvalues = []"), "constraints[0].values: must not be empty"),
            (constraint(&many_values), "constraints[0].values: at most 256 values (got 257)"),
            (constraint("attribute = \"dedicated\"\nlimit = 1"), "constraints[0]: a dedicated constraint must be a value constraint"),
            (constraint("attribute = \"dedicated\"\nvalues = [\"a\", \"b\"]"), "constraints[0]: a dedicated constraint must have exactly one value (got 2)"),
            (constraint("attribute = \"dedicated\"\nvalues = [\"a\"]\nnegated = true"), "constraints[0]: a dedicated constraint cannot be negated"),
            (
                constraint("attribute = \"rack\"\nlimit = 1\n[[constraints]]\nattribute = \"zone\"\nlimit = 1\nvalues = [\"a\"]"),
                "constraints[1]: has both limit and values",
            ),
            (many_constraints, "constraints: at most 32 constraints (got 33)"),
        ];
        check_all(
            table
                .into_iter()
                .map(|(text, line)| (text, Expect::Error(line)))
                .collect(),
        );
    }

    #[test]
    fn service_sections_take_defaults() {
        let table: Vec<(String, Expect)> = vec![
            // An empty [health_check] is Aurora's HTTP check on the `health` port.
            (
                service("[health_check]"),
                Expect::Spec(|s| {
                    service_ports(s);
                    s.config.health_check = Some(http_check("health", "/health", 200));
                }),
            ),
            (
                service("[health_check]\ntype = \"shell\"\ncommand = \"test -f ready\""),
                Expect::Spec(|s| {
                    service_ports(s);
                    s.config.health_check =
                        Some(HealthCheck::with_defaults(HealthChecker::Shell {
                            command: "test -f ready".into(),
                        }));
                }),
            ),
            (
                service("[health_check]\nport = \"http\"\ninterval_secs = 1\ntimeout_secs = 1"),
                Expect::Spec(|s| {
                    service_ports(s);
                    let mut check = http_check("http", "/health", 200);
                    check.interval_secs = 1;
                    s.config.health_check = Some(check);
                }),
            ),
            (
                service("[lifecycle.http]"),
                Expect::Spec(|s| {
                    service_ports(s);
                    s.config.http_lifecycle = Some(HttpLifecycle::default());
                }),
            ),
            // A [lifecycle] without its http table asks for nothing.
            (
                service("[lifecycle]"),
                Expect::Spec(service_ports),
            ),
            (
                service("[sla_policy]\ntype = \"count\"\ncount = 2\nduration_secs = 1800"),
                Expect::Spec(|s| {
                    service_ports(s);
                    s.config.sla_policy = Some(SlaPolicy::Count {
                        count: 2,
                        duration_secs: 1800,
                    });
                }),
            ),
            // More than the job's 2 instances: accepted, as Aurora does.
            (
                service("[sla_policy]\ntype = \"count\"\ncount = 3\nduration_secs = 1"),
                Expect::Spec(|s| {
                    service_ports(s);
                    s.config.sla_policy = Some(SlaPolicy::Count {
                        count: 3,
                        duration_secs: 1,
                    });
                }),
            ),
            (
                service("[sla_policy]\ntype = \"percentage\"\npercentage = 95\nduration_secs = 2592000"),
                Expect::Spec(|s| {
                    service_ports(s);
                    s.config.sla_policy = Some(SlaPolicy::Percentage {
                        percentage_millis: 95_000,
                        duration_secs: 2_592_000,
                    });
                }),
            ),
            (
                service("[sla_policy]\ntype = \"percentage\"\npercentage = 0.001\nduration_secs = 1"),
                Expect::Spec(|s| {
                    service_ports(s);
                    s.config.sla_policy = Some(SlaPolicy::Percentage {
                        percentage_millis: 1,
                        duration_secs: 1,
                    });
                }),
            ),
            (
                service("[sla_policy]\ntype = \"percentage\"\npercentage = 100.0\nduration_secs = 1"),
                Expect::Spec(|s| {
                    service_ports(s);
                    s.config.sla_policy = Some(SlaPolicy::Percentage {
                        percentage_millis: 100_000,
                        duration_secs: 1,
                    });
                }),
            ),
            (
                service("[sla_policy]\ntype = \"percentage\"\npercentage = 33.333\nduration_secs = 1"),
                Expect::Spec(|s| {
                    service_ports(s);
                    s.config.sla_policy = Some(SlaPolicy::Percentage {
                        percentage_millis: 33_333,
                        duration_secs: 1,
                    });
                }),
            ),
            (
                service("[sla_policy]\ntype = \"coordinator\"\ncoordinator_url = \"http://coord.example.com:8080/sla\""),
                Expect::Spec(|s| {
                    service_ports(s);
                    s.config.sla_policy = Some(SlaPolicy::Coordinator {
                        coordinator_url: "http://coord.example.com:8080/sla".into(),
                        status_key: "drain".into(),
                    });
                }),
            ),
            (
                service("[sla_policy]\ntype = \"coordinator\"\ncoordinator_url = \"http://c\"\nstatus_key = \"may_go\""),
                Expect::Spec(|s| {
                    service_ports(s);
                    s.config.sla_policy = Some(SlaPolicy::Coordinator {
                        coordinator_url: "http://c".into(),
                        status_key: "may_go".into(),
                    });
                }),
            ),
            (
                service("[partition_policy]"),
                Expect::Spec(|s| {
                    service_ports(s);
                    s.config.partition_policy = Some(PartitionPolicy {
                        reschedule: true,
                        delay_secs: 0,
                    });
                }),
            ),
            (
                service("[partition_policy]\ndelay_secs = 2592000"),
                Expect::Spec(|s| {
                    service_ports(s);
                    s.config.partition_policy = Some(PartitionPolicy {
                        reschedule: true,
                        delay_secs: 2_592_000,
                    });
                }),
            ),
        ];
        check_all(table);
    }

    #[test]
    fn rejected_service_sections() {
        let sla = |body: &str| service(&format!("[sla_policy]\n{body}"));
        let check = |body: &str| service(&format!("[health_check]\n{body}"));
        let long_endpoint = check(&format!(
            "endpoint = \"/{}\"",
            "e".repeat(ENDPOINT_BYTES_MAX)
        ));
        let long_url = sla(&format!(
            "type = \"coordinator\"\ncoordinator_url = \"http://c/{}\"",
            "u".repeat(COORDINATOR_URL_BYTES_MAX)
        ));
        let long_key = sla(&format!(
            "type = \"coordinator\"\ncoordinator_url = \"http://c\"\nstatus_key = \"{}\"",
            "k".repeat(STATUS_KEY_BYTES_MAX + 1)
        ));
        let table: Vec<(String, &str)> = vec![
            (long_endpoint, "health_check.endpoint: must be at most 1024 bytes (got 1025)"),
            (long_url, "sla_policy.coordinator_url: must be at most 2048 bytes (got 2057)"),
            (long_key, "sla_policy.status_key: \"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk\" must be 1..=128 characters of [A-Za-z0-9_.-]"),
            // Shapes, from toml.
            (check("typ = \"http\""), "line 10, column 1: unknown field `typ`, expected one of `type`, `port`, `endpoint`, `expected_status`, `command`, `initial_interval_secs`, `interval_secs`, `timeout_secs`, `max_consecutive_failures`, `min_consecutive_successes`"),
            (check("type = \"tcp\""), "line 10, column 8: unknown variant `tcp`, expected `http` or `shell`"),
            (check("interval_secs = \"10s\""), "line 10, column 17: invalid type: string \"10s\", expected i64"),
            (service("[lifecycle.http]\nwait = 1"), "line 10, column 1: unknown field `wait`, expected one of `port`, `graceful_shutdown_endpoint`, `shutdown_endpoint`, `graceful_shutdown_wait_secs`, `shutdown_wait_secs`"),
            (service("[lifecycle.tcp]"), "line 9, column 12: unknown field `tcp`, expected `http`"),
            (sla("count = 2\nduration_secs = 60"), "line 9, column 1: missing field `type`"),
            (sla("type = \"counted\""), "line 10, column 8: unknown variant `counted`, expected one of `count`, `percentage`, `coordinator`"),
            (sla("type = \"count\"\nminimum = 1"), "line 11, column 1: unknown field `minimum`, expected one of `type`, `count`, `percentage`, `duration_secs`, `coordinator_url`, `status_key`"),
            (service("[partition_policy]\ndelay = 1"), "line 10, column 1: unknown field `delay`, expected `reschedule` or `delay_secs`"),
            // Health check: fields of the other kind, missing fields, bounds.
            (check("command = \"true\""), "health_check.command: not allowed with type \"http\""),
            (check("type = \"shell\""), "health_check.command: required with type \"shell\""),
            (check("type = \"shell\"\ncommand = \"true\"\nport = \"http\""), "health_check.port: not allowed with type \"shell\""),
            (check("type = \"shell\"\ncommand = \"true\"\nendpoint = \"/h\""), "health_check.endpoint: not allowed with type \"shell\""),
            (check("type = \"shell\"\ncommand = \"true\"\nexpected_status = 200"), "health_check.expected_status: not allowed with type \"shell\""),
            (check("type = \"shell\"\ncommand = \" \""), "health_check.command: must not be empty"),
            (check("port = \"admin\""), "health_check.port: \"admin\" is not one of resources.ports"),
            (format!("{MINIMAL}[health_check]\n"), "health_check.port: \"health\" is not one of resources.ports"),
            (check("endpoint = \"health\""), "health_check.endpoint: must start with \"/\" (got \"health\")"),
            (check("endpoint = \"/a b\""), "health_check.endpoint: must not contain whitespace or control characters (got \"/a b\")"),
            (check("expected_status = 99"), "health_check.expected_status: must be >= 100 (got 99)"),
            (check("expected_status = 70000"), "health_check.expected_status: must be <= 599 (got 70000)"),
            (check("initial_interval_secs = -1"), "health_check.initial_interval_secs: must be >= 0 (got -1)"),
            (check("initial_interval_secs = 3601"), "health_check.initial_interval_secs: must be <= 3600 (got 3601)"),
            (check("interval_secs = 0"), "health_check.interval_secs: must be >= 1 (got 0)"),
            (check("interval_secs = 99999999999"), "health_check.interval_secs: must be <= 3600 (got 99999999999)"),
            (check("timeout_secs = 0"), "health_check.timeout_secs: must be >= 1 (got 0)"),
            (check("timeout_secs = 11"), "health_check.timeout_secs: must be <= interval_secs (got 11 > 10)"),
            (check("max_consecutive_failures = -1"), "health_check.max_consecutive_failures: must be >= 0 (got -1)"),
            (check("max_consecutive_failures = 1001"), "health_check.max_consecutive_failures: must be <= 1000 (got 1001)"),
            (check("min_consecutive_successes = 0"), "health_check.min_consecutive_successes: must be >= 1 (got 0)"),
            // HTTP lifecycle.
            (format!("{MINIMAL}[lifecycle.http]\n"), "lifecycle.http.port: \"health\" is not one of resources.ports"),
            (service("[lifecycle.http]\nport = \"admin\""), "lifecycle.http.port: \"admin\" is not one of resources.ports"),
            (service("[lifecycle.http]\ngraceful_shutdown_endpoint = \"quit\""), "lifecycle.http.graceful_shutdown_endpoint: must start with \"/\" (got \"quit\")"),
            (service("[lifecycle.http]\nshutdown_endpoint = \"/\\tabort\""), "lifecycle.http.shutdown_endpoint: must not contain whitespace or control characters (got \"/\\tabort\")"),
            (service("[lifecycle.http]\ngraceful_shutdown_wait_secs = -5"), "lifecycle.http.graceful_shutdown_wait_secs: must be >= 0 (got -5)"),
            (service("[lifecycle.http]\nshutdown_wait_secs = 3601"), "lifecycle.http.shutdown_wait_secs: must be <= 3600 (got 3601)"),
            // SLA policy: the kind's fields only, the required ones present, the bounds.
            (sla("type = \"count\"\nduration_secs = 60"), "sla_policy.count: required with type \"count\""),
            (sla("type = \"count\"\ncount = 2"), "sla_policy.duration_secs: required with type \"count\""),
            (sla("type = \"count\"\ncount = 2\nduration_secs = 60\npercentage = 50"), "sla_policy.percentage: not allowed with type \"count\""),
            (sla("type = \"count\"\ncount = 2\nduration_secs = 60\ncoordinator_url = \"http://c\""), "sla_policy.coordinator_url: not allowed with type \"count\""),
            (sla("type = \"count\"\ncount = 2\nduration_secs = 60\nstatus_key = \"drain\""), "sla_policy.status_key: not allowed with type \"count\""),
            (sla("type = \"count\"\ncount = 0\nduration_secs = 60"), "sla_policy.count: must be >= 1 (got 0)"),
            (sla("type = \"count\"\ncount = 4294967296\nduration_secs = 60"), "sla_policy.count: must be <= 4294967295 (got 4294967296)"),
            (sla("type = \"count\"\ncount = 1\nduration_secs = 0"), "sla_policy.duration_secs: must be >= 1 (got 0)"),
            (sla("type = \"count\"\ncount = 1\nduration_secs = 2592001"), "sla_policy.duration_secs: must be <= 2592000 (got 2592001)"),
            (sla("type = \"percentage\"\nduration_secs = 60"), "sla_policy.percentage: required with type \"percentage\""),
            (sla("type = \"percentage\"\npercentage = 50"), "sla_policy.duration_secs: required with type \"percentage\""),
            (sla("type = \"percentage\"\npercentage = 50\nduration_secs = 60\ncount = 1"), "sla_policy.count: not allowed with type \"percentage\""),
            (sla("type = \"percentage\"\npercentage = 50\nduration_secs = 60\nstatus_key = \"k\""), "sla_policy.status_key: not allowed with type \"percentage\""),
            (sla("type = \"percentage\"\npercentage = 120\nduration_secs = 60"), "sla_policy.percentage: must be > 0 and <= 100 (got 120)"),
            (sla("type = \"percentage\"\npercentage = 100.0001\nduration_secs = 60"), "sla_policy.percentage: must be > 0 and <= 100 (got 100.0001)"),
            (sla("type = \"percentage\"\npercentage = 0\nduration_secs = 60"), "sla_policy.percentage: must be > 0 and <= 100 (got 0)"),
            (sla("type = \"percentage\"\npercentage = -5\nduration_secs = 60"), "sla_policy.percentage: must be > 0 and <= 100 (got -5)"),
            (sla("type = \"percentage\"\npercentage = nan\nduration_secs = 60"), "sla_policy.percentage: must be > 0 and <= 100 (got NaN)"),
            (sla("type = \"percentage\"\npercentage = inf\nduration_secs = 60"), "sla_policy.percentage: must be > 0 and <= 100 (got inf)"),
            (sla("type = \"percentage\"\npercentage = 99.9999\nduration_secs = 60"), "sla_policy.percentage: must have at most 3 decimals (got 99.9999)"),
            (sla("type = \"percentage\"\npercentage = 0.0004\nduration_secs = 60"), "sla_policy.percentage: must have at most 3 decimals (got 0.0004)"),
            (sla("type = \"percentage\"\npercentage = 1e-5\nduration_secs = 60"), "sla_policy.percentage: must have at most 3 decimals (got 0.00001)"),
            (sla("type = \"coordinator\""), "sla_policy.coordinator_url: required with type \"coordinator\""),
            (sla("type = \"coordinator\"\ncoordinator_url = \"http://c\"\nduration_secs = 60"), "sla_policy.duration_secs: not allowed with type \"coordinator\""),
            (sla("type = \"coordinator\"\ncoordinator_url = \"http://c\"\ncount = 1"), "sla_policy.count: not allowed with type \"coordinator\""),
            (sla("type = \"coordinator\"\ncoordinator_url = \"http://c\"\npercentage = 1"), "sla_policy.percentage: not allowed with type \"coordinator\""),
            (sla("type = \"coordinator\"\ncoordinator_url = \"https://c\""), "sla_policy.coordinator_url: must start with \"http://\" (got \"https://c\")"),
            (sla("type = \"coordinator\"\ncoordinator_url = \"http://c d/\""), "sla_policy.coordinator_url: must be http://host[:port][/path], without spaces (got \"http://c d/\")"),
            (sla("type = \"coordinator\"\ncoordinator_url = \"http://c\"\nstatus_key = \"\""), "sla_policy.status_key: \"\" must be 1..=128 characters of [A-Za-z0-9_.-]"),
            // Partition policy.
            (service("[partition_policy]\ndelay_secs = -1"), "partition_policy.delay_secs: must be >= 0 (got -1)"),
            (service("[partition_policy]\ndelay_secs = 2592001"), "partition_policy.delay_secs: must be <= 2592000 (got 2592001)"),
            (service("[partition_policy]\nreschedule = 1"), "line 10, column 14: invalid type: integer `1`, expected a boolean"),
        ];
        check_all(
            table
                .into_iter()
                .map(|(text, line)| (text, Expect::Error(line)))
                .collect(),
        );
    }

    /// The minimal file with `[update]` and `body` appended.
    fn update(body: &str) -> String {
        format!("{MINIMAL}[update]\n{body}\n")
    }

    fn cron_spec(schedule: &str, collision_policy: CollisionPolicy) -> CronSpec {
        CronSpec {
            schedule: CronSchedule::parse(schedule).unwrap(),
            collision_policy,
        }
    }

    #[test]
    fn cron_job_every_field() {
        let text = top(
            "cron_schedule = \"*/15 9-17 * * MON-FRI\"\ncron_collision_policy = \"CANCEL_NEW\"",
        );
        let mut expected = minimal_spec();
        expected.cron = Some(cron_spec(
            "*/15 9-17 * * MON-FRI",
            CollisionPolicy::CancelNew,
        ));
        assert_eq!(parse_job_file(job(), &text), Ok(expected.clone()));
        let rendered = expected.to_toml();
        assert!(
            rendered.contains("cron_collision_policy = \"CANCEL_NEW\""),
            "{rendered}"
        );
        assert_eq!(
            parse_job_file(job(), &rendered),
            Ok(expected),
            "rendered:\n{rendered}"
        );
    }

    #[test]
    fn cron_and_update_take_defaults() {
        let table: Vec<(String, Expect)> = vec![
            // A schedule alone: KILL_EXISTING.
            (
                top("cron_schedule = \"0 3 * * *\""),
                Expect::Spec(|s| {
                    s.cron = Some(cron_spec("0 3 * * *", CollisionPolicy::KillExisting))
                }),
            ),
            (
                top("cron_schedule = \"@daily\"\ncron_collision_policy = \"KILL_EXISTING\""),
                Expect::Spec(|s| s.cron = Some(cron_spec("@daily", CollisionPolicy::KillExisting))),
            ),
            // The text is kept as written.
            (
                top("cron_schedule = \" 0  3 * * sun \""),
                Expect::Spec(|s| {
                    s.cron = Some(cron_spec(" 0  3 * * sun ", CollisionPolicy::KillExisting))
                }),
            ),
            // service = false is not a service.
            (
                top("service = false\ncron_schedule = \"@hourly\""),
                Expect::Spec(|s| {
                    s.cron = Some(cron_spec("@hourly", CollisionPolicy::KillExisting))
                }),
            ),
            // An empty [update] is Aurora's defaults.
            (
                update(""),
                Expect::Spec(|s| s.update = Some(UpdateSettings::default())),
            ),
            (
                update("batch_size = 4"),
                Expect::Spec(|s| {
                    s.update = Some(UpdateSettings {
                        batch_size: 4,
                        ..UpdateSettings::default()
                    })
                }),
            ),
            (
                update("batch_size = 4294967295"),
                Expect::Spec(|s| {
                    s.update = Some(UpdateSettings {
                        batch_size: u32::MAX,
                        ..UpdateSettings::default()
                    })
                }),
            ),
            (
                update("max_per_instance_failures = 3"),
                Expect::Spec(|s| {
                    s.update = Some(UpdateSettings {
                        max_per_instance_failures: 3,
                        ..UpdateSettings::default()
                    })
                }),
            ),
            // Not held to the instances here (2): the scheduler checks it when an update starts.
            (
                update("max_total_failures = 7"),
                Expect::Spec(|s| {
                    s.update = Some(UpdateSettings {
                        max_total_failures: 7,
                        ..UpdateSettings::default()
                    })
                }),
            ),
            (
                update("watch_secs = 0"),
                Expect::Spec(|s| {
                    s.update = Some(UpdateSettings {
                        watch_secs: 0,
                        ..UpdateSettings::default()
                    })
                }),
            ),
            (
                update("watch_secs = 86400"),
                Expect::Spec(|s| {
                    s.update = Some(UpdateSettings {
                        watch_secs: 86_400,
                        ..UpdateSettings::default()
                    })
                }),
            ),
            (
                update("rollback_on_failure = false"),
                Expect::Spec(|s| {
                    s.update = Some(UpdateSettings {
                        rollback_on_failure: false,
                        ..UpdateSettings::default()
                    })
                }),
            ),
            (
                update("wait_for_batch_completion = true"),
                Expect::Spec(|s| {
                    s.update = Some(UpdateSettings {
                        wait_for_batch_completion: true,
                        ..UpdateSettings::default()
                    })
                }),
            ),
            (
                update("pulse_interval_secs = 1"),
                Expect::Spec(|s| {
                    s.update = Some(UpdateSettings {
                        pulse_interval_secs: Some(1),
                        ..UpdateSettings::default()
                    })
                }),
            ),
            (
                update("pulse_interval_secs = 86400"),
                Expect::Spec(|s| {
                    s.update = Some(UpdateSettings {
                        pulse_interval_secs: Some(86_400),
                        ..UpdateSettings::default()
                    })
                }),
            ),
            (
                update("sla_aware = true"),
                Expect::Spec(|s| {
                    s.update = Some(UpdateSettings {
                        sla_aware: true,
                        ..UpdateSettings::default()
                    })
                }),
            ),
        ];
        check_all(table);
    }

    #[test]
    fn rejected_cron_and_update() {
        let table: Vec<(String, &str)> = vec![
            // Cron.
            (top("cron_collision_policy = \"CANCEL_NEW\""), "cron_collision_policy: applies only to a cron job: requires cron_schedule"),
            (top("service = true\ncron_schedule = \"@daily\""), "cron_schedule: a cron job may not be a service (service = true)"),
            (top("cron_schedule = \"* * *\""), "cron_schedule: expected 5 fields (minute hour day-of-month month day-of-week), found 3 (got \"* * *\")"),
            (top("cron_schedule = \"0 0 * * * *\""), "cron_schedule: expected 5 fields (minute hour day-of-month month day-of-week), found 6 (a seconds or years field is not supported) (got \"0 0 * * * *\")"),
            (top("cron_schedule = \"61 * * * *\""), "cron_schedule: minute 61 is out of range 0-59 (got \"61 * * * *\")"),
            (top("cron_schedule = \"@reboot\""), "cron_schedule: @reboot is not supported: a cron job runs on a schedule, not when the scheduler starts (got \"@reboot\")"),
            (top("cron_schedule = \"\""), "cron_schedule: empty schedule: expected 5 fields (minute hour day-of-month month day-of-week) or a shortcut such as @daily (got \"\")"),
            (top("cron_schedule = \"@daily\"\ncron_collision_policy = \"RUN_OVERLAP\""), "cron_collision_policy: RUN_OVERLAP is deprecated in Aurora and not supported: use CANCEL_NEW or KILL_EXISTING (got \"RUN_OVERLAP\")"),
            (top("cron_schedule = \"@daily\"\ncron_collision_policy = \"kill_existing\""), "cron_collision_policy: expected KILL_EXISTING or CANCEL_NEW (got \"kill_existing\")"),
            (top("cron_schedule = 5"), "line 4, column 17: invalid type: integer `5`, expected a string"),
            // Update.
            (update("batch_size = 0"), "update.batch_size: must be >= 1 (got 0)"),
            (update("batch_size = 4294967296"), "update.batch_size: must be <= 4294967295 (got 4294967296)"),
            (update("max_per_instance_failures = -1"), "update.max_per_instance_failures: must be >= 0 (got -1)"),
            (update("max_per_instance_failures = 4294967296"), "update.max_per_instance_failures: must be <= 4294967295 (got 4294967296)"),
            (update("max_total_failures = -1"), "update.max_total_failures: must be >= 0 (got -1)"),
            (update("max_total_failures = 4294967296"), "update.max_total_failures: must be <= 4294967295 (got 4294967296)"),
            (update("watch_secs = -1"), "update.watch_secs: must be >= 0 (got -1)"),
            (update("watch_secs = 86401"), "update.watch_secs: must be <= 86400 (got 86401)"),
            (update("pulse_interval_secs = 0"), "update.pulse_interval_secs: must be >= 1 (got 0)"),
            (update("pulse_interval_secs = 86401"), "update.pulse_interval_secs: must be <= 86400 (got 86401)"),
            (update("rollback_on_failure = 1"), "line 9, column 23: invalid type: integer `1`, expected a boolean"),
            (update("wait_for_batch_completion = \"yes\""), "line 9, column 29: invalid type: string \"yes\", expected a boolean"),
            (update("sla_aware = 0"), "line 9, column 13: invalid type: integer `0`, expected a boolean"),
            (update("batch_size = 1.5"), "line 9, column 14: invalid type: floating point `1.5`, expected i64"),
            (update("group_size = 2"), "line 9, column 1: unknown field `group_size`, expected one of `batch_size`, `max_per_instance_failures`, `max_total_failures`, `watch_secs`, `rollback_on_failure`, `wait_for_batch_completion`, `pulse_interval_secs`, `sla_aware`"),
        ];
        check_all(
            table
                .into_iter()
                .map(|(text, line)| (text, Expect::Error(line)))
                .collect(),
        );
    }

    #[test]
    fn example_files_parse() {
        let hello = parse_job_file(job(), include_str!("../../examples/hello.toml")).unwrap();
        assert_eq!(hello.instances, 5);
        assert!(!hello.config.is_service);
        assert!(hello.config.command.contains("$BOREALIS_INSTANCE_ID"));
        assert!(hello.config.command.contains("$BOREALIS_TASK_ID"));
        assert_eq!(
            hello.config.resources,
            Resources {
                cpu_millis: 100,
                ram_mib: 16,
                disk_mib: 16,
                ports: 0
            }
        );

        let service = parse_job_file(job(), include_str!("../../examples/service.toml")).unwrap();
        assert_eq!(service.instances, 3);
        assert!(service.config.is_service);
        assert_eq!(service.config.port_names, vec!["http".to_string()]);
        assert_eq!(service.config.resources.ports, 1);
        assert_eq!(
            service.config.constraints,
            vec![Constraint::Limit {
                attribute: "host".into(),
                limit: 1
            }]
        );

        let update = parse_job_file(job(), include_str!("../../examples/update.toml")).unwrap();
        let settings = update.update.expect("an [update] section");
        assert_eq!(settings.batch_size, 2);
        assert_eq!(settings.watch_secs, 10);
        assert_eq!(settings.max_per_instance_failures, 1);
        assert!(settings.rollback_on_failure && !settings.sla_aware);
        assert!(update.config.command.contains("v2"));

        let cron = parse_job_file(job(), include_str!("../../examples/cron.toml")).unwrap();
        let spec = cron.cron.expect("a cron schedule");
        assert_eq!(spec.schedule.as_str(), "* * * * *");
        assert_eq!(
            spec.collision_policy,
            crate::cron::CollisionPolicy::CancelNew
        );
        assert!(!cron.config.is_service);

        let kept = parse_job_file(
            job(),
            include_str!("../../examples/maintained-service.toml"),
        )
        .unwrap();
        assert_eq!(
            kept.config.sla_policy,
            Some(crate::SlaPolicy::Count {
                count: 2,
                duration_secs: 30
            })
        );
        let check = kept.config.health_check.expect("a health check");
        assert_eq!(
            check.checker,
            crate::HealthChecker::Shell {
                command: "test -s alive".into()
            }
        );
        assert_eq!(check.max_consecutive_failures, 2);
        assert_eq!(
            kept.config.partition_policy,
            Some(crate::PartitionPolicy {
                reschedule: true,
                delay_secs: 300
            })
        );
    }

    fn arb_constraint() -> impl Strategy<Value = Constraint> {
        let attribute = "[a-z][a-z_]{0,9}".prop_map(|a| {
            // A dedicated constraint has its own rules; the fixed case below covers it.
            if a == DEDICATED_ATTRIBUTE {
                "rack".to_string()
            } else {
                a
            }
        });
        prop_oneof![
            (attribute.clone(), 1..=u32::MAX)
                .prop_map(|(attribute, limit)| Constraint::Limit { attribute, limit }),
            (
                attribute,
                any::<bool>(),
                proptest::collection::vec("[ -~]{0,12}", 1..4)
            )
                .prop_map(|(attribute, negated, values)| Constraint::Value {
                    attribute,
                    negated,
                    values
                }),
            "[a-z/]{1,12}".prop_map(|value| Constraint::Value {
                attribute: DEDICATED_ATTRIBUTE.into(),
                negated: false,
                values: vec![value],
            }),
        ]
    }

    fn arb_spec() -> impl Strategy<Value = JobSpec> {
        (
            (
                1..=u32::MAX,
                "[ -~\t\n\u{e9}\u{2603}]{0,40}".prop_filter("not blank", |c| !c.trim().is_empty()),
                1..=u32::MAX,
                1..=u32::MAX,
                1..=u32::MAX,
                proptest::collection::btree_set("[a-z0-9_]{1,8}", 0..5),
            ),
            (
                proptest::collection::vec(arb_constraint(), 0..4),
                prop_oneof![
                    Just(Tier::Preferred),
                    Just(Tier::Preemptible),
                    Just(Tier::Revocable)
                ],
                any::<i32>(),
                any::<bool>(),
                any::<bool>(),
                -1..=i32::MAX,
                0..=FINALIZATION_WAIT_SECS_MAX,
            ),
        )
            .prop_map(
                |(
                    (instances, command, cpu_millis, ram_mib, disk_mib, ports),
                    (constraints, tier, priority, production, is_service, failures, wait),
                )| {
                    let port_names: Vec<String> = ports.into_iter().collect();
                    JobSpec {
                        instances,
                        config: TaskConfig {
                            job: job(),
                            command,
                            resources: Resources {
                                cpu_millis,
                                ram_mib,
                                disk_mib,
                                ports: port_names.len() as u16,
                            },
                            port_names,
                            constraints,
                            tier,
                            priority,
                            production,
                            is_service,
                            max_task_failures: failures,
                            finalization_wait_secs: wait,
                            health_check: None,
                            http_lifecycle: None,
                            sla_policy: None,
                            partition_policy: None,
                        },
                        update: None,
                        cron: None,
                    }
                },
            )
    }

    /// An endpoint path: `/` then printable characters, no whitespace.
    fn arb_endpoint() -> impl Strategy<Value = String> {
        "/[!-~\u{e9}]{0,20}"
    }

    fn arb_health_check(ports: Vec<String>) -> BoxedStrategy<Option<HealthCheck>> {
        let shell = "[ -~\t\n\u{e9}]{0,40}"
            .prop_filter("not blank", |c| !c.trim().is_empty())
            .prop_map(|command| HealthChecker::Shell { command });
        let checker = if ports.is_empty() {
            shell.boxed()
        } else {
            prop_oneof![
                (
                    prop::sample::select(ports),
                    arb_endpoint(),
                    HTTP_STATUS_MIN..=HTTP_STATUS_MAX
                )
                    .prop_map(|(port, endpoint, expected_status)| {
                        HealthChecker::Http {
                            port,
                            endpoint,
                            expected_status,
                        }
                    }),
                shell,
            ]
            .boxed()
        };
        let timings = (1..=HEALTH_CHECK_SECS_MAX).prop_flat_map(|interval| {
            (
                Just(interval),
                1..=interval,
                0..=HEALTH_CHECK_SECS_MAX,
                0..=HEALTH_CHECK_CONSECUTIVE_MAX,
                1..=HEALTH_CHECK_CONSECUTIVE_MAX,
            )
        });
        proptest::option::of((checker, timings).prop_map(
            |(checker, (interval, timeout, initial, failures, successes))| HealthCheck {
                checker,
                initial_interval_secs: initial,
                interval_secs: interval,
                timeout_secs: timeout,
                max_consecutive_failures: failures,
                min_consecutive_successes: successes,
            },
        ))
        .boxed()
    }

    fn arb_http_lifecycle(ports: Vec<String>) -> BoxedStrategy<Option<HttpLifecycle>> {
        if ports.is_empty() {
            return Just(None).boxed();
        }
        proptest::option::of(
            (
                prop::sample::select(ports),
                arb_endpoint(),
                arb_endpoint(),
                0..=LIFECYCLE_WAIT_SECS_MAX,
                0..=LIFECYCLE_WAIT_SECS_MAX,
            )
                .prop_map(|(port, graceful, shutdown, graceful_wait, wait)| {
                    HttpLifecycle {
                        port,
                        graceful_shutdown_endpoint: graceful,
                        shutdown_endpoint: shutdown,
                        graceful_shutdown_wait_secs: graceful_wait,
                        shutdown_wait_secs: wait,
                    }
                }),
        )
        .boxed()
    }

    fn arb_sla_policy() -> impl Strategy<Value = Option<SlaPolicy>> {
        let duration = 1..=SLA_DURATION_SECS_MAX;
        proptest::option::of(prop_oneof![
            (SLA_COUNT_MIN..=u32::MAX, duration.clone()).prop_map(|(count, duration_secs)| {
                SlaPolicy::Count {
                    count,
                    duration_secs,
                }
            }),
            (
                prop_oneof![
                    1..=SLA_PERCENTAGE_MILLIS_MAX,
                    Just(1),
                    Just(99_900),
                    Just(SLA_PERCENTAGE_MILLIS_MAX)
                ],
                duration
            )
                .prop_map(|(percentage_millis, duration_secs)| SlaPolicy::Percentage {
                    percentage_millis,
                    duration_secs,
                }),
            (
                "http://([a-z0-9.-]{1,20}|\\[[0-9a-f:]{1,10}\\])(:[1-9][0-9]{0,3})?(/[!-~]{0,30})?",
                "[A-Za-z0-9_.-]{1,20}"
            )
                .prop_map(|(coordinator_url, status_key)| SlaPolicy::Coordinator {
                    coordinator_url,
                    status_key,
                }),
        ])
    }

    fn arb_partition_policy() -> impl Strategy<Value = Option<PartitionPolicy>> {
        proptest::option::of((any::<bool>(), 0..=PARTITION_DELAY_SECS_MAX).prop_map(
            |(reschedule, delay_secs)| PartitionPolicy {
                reschedule,
                delay_secs,
            },
        ))
    }

    /// Any `[update]` the parser accepts.
    fn arb_update() -> impl Strategy<Value = Option<UpdateSettings>> {
        proptest::option::of(
            (
                (
                    1..=u32::MAX,
                    any::<u32>(),
                    any::<u32>(),
                    0..=UPDATE_SECS_MAX,
                ),
                (
                    any::<bool>(),
                    any::<bool>(),
                    proptest::option::of(1..=UPDATE_SECS_MAX),
                    any::<bool>(),
                ),
            )
                .prop_map(
                    |(
                        (batch_size, max_per_instance_failures, max_total_failures, watch_secs),
                        (rollback_on_failure, wait_for_batch_completion, pulse, sla_aware),
                    )| UpdateSettings {
                        batch_size,
                        max_per_instance_failures,
                        max_total_failures,
                        watch_secs,
                        rollback_on_failure,
                        wait_for_batch_completion,
                        pulse_interval_secs: pulse,
                        sla_aware,
                    },
                ),
        )
    }

    /// Any cron settings, from a few schedules of each kind.
    fn arb_cron() -> impl Strategy<Value = Option<CronSpec>> {
        let schedule = prop::sample::select(vec![
            "* * * * *",
            "*/15 * * * *",
            "0-30/10 9-17 * * MON-FRI",
            "5,10,50 0 1 jan,Jul *",
            "0 0 13 * FRI",
            " 30  2 * * 7 ",
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
        ]);
        let policy = prop_oneof![
            Just(CollisionPolicy::KillExisting),
            Just(CollisionPolicy::CancelNew)
        ];
        proptest::option::of(
            (schedule, policy).prop_map(|(schedule, policy)| cron_spec(schedule, policy)),
        )
    }

    /// [`arb_spec`] with any service sections, their ports among the spec's, any `[update]`,
    /// and cron settings unless it is a service.
    fn arb_service_spec() -> impl Strategy<Value = JobSpec> {
        arb_spec()
            .prop_flat_map(|spec| {
                let ports = spec.config.port_names.clone();
                (
                    Just(spec),
                    arb_health_check(ports.clone()),
                    arb_http_lifecycle(ports),
                    arb_sla_policy(),
                    arb_partition_policy(),
                    arb_update(),
                    arb_cron(),
                )
            })
            .prop_map(
                |(mut spec, health_check, http_lifecycle, sla, partition, update, cron)| {
                    spec.config.health_check = health_check;
                    spec.config.http_lifecycle = http_lifecycle;
                    spec.config.sla_policy = sla;
                    spec.config.partition_policy = partition;
                    spec.update = update;
                    if !spec.config.is_service {
                        spec.cron = cron;
                    }
                    spec
                },
            )
    }

    /// Found by the `jobfile` fuzz target: a value with a line break (a TOML `\n` escape) was
    /// echoed raw into the error, so `Display` spanned lines.
    #[test]
    fn an_error_is_one_line_when_the_value_holds_line_breaks() {
        let cases = [
            // The cron parser names the shortcut as written.
            MINIMAL.replace(
                "command = \"true\"",
                "command = \"true\"\ncron_schedule = \"@a\\nb\"",
            ),
            MINIMAL.replace(
                "command = \"true\"",
                "command = \"true\"\ncron_schedule = \"@a\\r\\u2028b\"",
            ),
        ];
        for text in cases {
            let error = parse_job_file(job(), &text).expect_err(&text).to_string();
            assert!(
                !error.contains(['\n', '\r', '\u{2028}']),
                "not one line: {error:?}"
            );
            assert!(
                error.starts_with("cron_schedule: unknown shortcut @a\\"),
                "{error}"
            );
        }
    }

    proptest! {
        #[test]
        fn valid_specs_roundtrip_through_toml(spec in arb_service_spec()) {
            let text = spec.to_toml();
            prop_assert_eq!(parse_job_file(job(), &text), Ok(spec), "rendered:\n{}", text);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "[ -~\n]{0,200}") {
            let _ = parse_job_file(job(), &text);
        }
    }
}
