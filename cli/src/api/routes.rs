//! The API's handlers, each with the `utoipa::path` that documents it. A handler checks its
//! input (400 naming what is wrong) before it makes its one upstream call (two, where the
//! binary protocol needs two); paging and filtering happen here, on the scheduler's answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use borealis_core::auth::{Action, AuthPolicy};
use borealis_core::jobfile::{parse_job_file, JobSpec};
use borealis_core::maintenance::validate_hostname;
use borealis_core::update::Command;
use borealis_core::{HostMode, JobKey, MaintenanceOp, Resources, TaskState};
use borealis_shards::audit_log::AuditLog;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::model::*;
use super::upstream::Kind;
use super::{
    filter_text, matches, now_unix_ms, page, page_bounds, parse_task_id, placed_total, ApiError,
    ApiJson, ApiPath, ApiQuery, ApiState, Caller,
};
use crate::client::{names_tier, parse_instance_ranges, INSTANCES_PER_KILL_MAX};

/// Hosts one maintenance request may name.
pub const MAINTENANCE_HOSTS_MAX: usize = 1000;
/// The longest drain timeout accepted (a year).
const DRAIN_TIMEOUT_SECS_MAX: u64 = 366 * 86_400;
/// The longest update or update command message accepted.
const MESSAGE_BYTES_MAX: usize = 1024;

/// The error answers every route may give (`{"error", "code"}`).
#[allow(dead_code)] // Only documents the answers: errors are built as `ApiError`s.
#[derive(utoipa::IntoResponses)]
pub enum Errors {
    /// Malformed input: the path, query or body field named in `error`
    /// (`BadRequest`), or a request the scheduler refused as invalid (`InvalidRequest`).
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No token, or an unknown one, on a scheduler with `--auth-file`.
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// The token's principal may not do this.
    #[response(status = 403)]
    PermissionDenied(ErrorBody),
    /// An unknown job, instance, task, update or agent.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The job exists already, or a quota, task limit or update's state refuses it.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// A body over 1 MiB.
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// A bug.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The scheduler cannot be reached, is overloaded or does not lead: try again.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

// ---------------------------------------------------------------- paths and queries

/// A job's key as three path segments.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct JobPath {
    /// The job's role (1..=128 of `[A-Za-z0-9_.-]`).
    pub role: String,
    /// The job's environment.
    pub environment: String,
    /// The job's name.
    pub name: String,
}

impl JobPath {
    pub fn key(&self) -> Result<JobKey, ApiError> {
        JobKey::new(&self.role, &self.environment, &self.name)
            .map_err(|e| ApiError::bad_request(format!("path: {e}")))
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct InstancePath {
    pub role: String,
    pub environment: String,
    pub name: String,
    pub instance: u32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct UpdatePath {
    pub role: String,
    pub environment: String,
    pub name: String,
    pub id: u64,
}

/// A command on a job's active update.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpdateCommandName {
    Pause,
    Resume,
    Abort,
    Rollback,
    Pulse,
}

impl UpdateCommandName {
    fn command(self) -> Command {
        match self {
            UpdateCommandName::Pause => Command::Pause,
            UpdateCommandName::Resume => Command::Resume,
            UpdateCommandName::Abort => Command::Abort,
            UpdateCommandName::Rollback => Command::Rollback,
            UpdateCommandName::Pulse => Command::Pulse,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct UpdateCommandPath {
    pub role: String,
    pub environment: String,
    pub name: String,
    pub id: u64,
    pub command: UpdateCommandName,
}

fn job_key(role: &str, environment: &str, name: &str) -> Result<JobKey, ApiError> {
    JobPath {
        role: role.into(),
        environment: environment.into(),
        name: name.into(),
    }
    .key()
}

/// A host mode filter.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
pub enum HostModeName {
    #[serde(rename = "NONE")]
    None,
    #[serde(rename = "SCHEDULED")]
    Scheduled,
    #[serde(rename = "DRAINING")]
    Draining,
    #[serde(rename = "DRAINED")]
    Drained,
}

impl HostModeName {
    fn mode(self) -> HostMode {
        match self {
            HostModeName::None => HostMode::None,
            HostModeName::Scheduled => HostMode::Scheduled,
            HostModeName::Draining => HostMode::Draining,
            HostModeName::Drained => HostMode::Drained,
        }
    }
}

/// Paging, and a substring filter.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Matches to skip (default 0).
    pub offset: Option<u64>,
    /// Matches per page, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// A substring to match, ignoring case (at most 256 bytes).
    pub q: Option<String>,
}

/// `GET /api/v1/agents` and `GET /api/v1/maintenance`.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HostQuery {
    /// Matches to skip (default 0).
    pub offset: Option<u64>,
    /// Matches per page, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// A substring of the host name (or agent id), ignoring case.
    pub q: Option<String>,
    /// Only hosts in this mode.
    #[param(inline)]
    pub mode: Option<HostModeName>,
}

/// `GET /api/v1/jobs`.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// Matches to skip (default 0).
    pub offset: Option<u64>,
    /// Matches per page, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// Only this role's jobs.
    pub role: Option<String>,
    /// A substring of the job key, ignoring case.
    pub q: Option<String>,
}

/// `GET /api/v1/jobs/{role}/{environment}/{name}`: the page of instances.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstancesQuery {
    /// Instances to skip (default 0).
    pub offset: Option<u64>,
    /// Instances per page, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// Only instances whose current task is in this state (`RUNNING`, `PENDING`, ...).
    pub state: Option<String>,
}

/// `DELETE /api/v1/jobs/{role}/{environment}/{name}`.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KillQuery {
    /// Instances to kill, as numbers and inclusive ranges: `0-3,7` (absent: all).
    pub instances: Option<String>,
}

/// `GET /api/v1/updates`.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UpdatesQuery {
    /// Matches to skip (default 0).
    pub offset: Option<u64>,
    /// Matches per page, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// Only this role's updates.
    pub role: Option<String>,
    /// Only this job's updates (`role/environment/name`; then with per-instance counts).
    pub job: Option<String>,
    /// Only active (true) or finished (false) updates.
    pub active: Option<bool>,
}

/// A maintenance operation.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MaintenanceOpName {
    /// SCHEDULED: no new tasks.
    Start,
    /// DRAINING, then DRAINED: the tasks leave as their SLAs allow.
    Drain,
    /// NONE: back in service.
    End,
}

#[derive(Clone, Debug, Deserialize)]
pub struct MaintenancePath {
    pub op: MaintenanceOpName,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RolePath {
    pub role: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TaskPath {
    pub task_id: String,
}

// ---------------------------------------------------------------- helpers

/// A job file's text, parsed for `job`; errors name the field (`body: job_file: ...`).
fn job_file(job: &JobKey, text: &str) -> Result<(JobSpec, bool), ApiError> {
    let spec = parse_job_file(job.clone(), text)
        .map_err(|e| ApiError::bad_request(format!("body: job_file: {e}")))?;
    Ok((spec, names_tier(text)))
}

/// An instance list of a body: not empty, each once, at most [`INSTANCES_PER_KILL_MAX`].
fn instance_list(instances: Option<Vec<u32>>) -> Result<Vec<u32>, ApiError> {
    let Some(mut instances) = instances else {
        return Ok(Vec::new());
    };
    if instances.is_empty() {
        return Err(ApiError::bad_request(
            "body: instances: empty; give null (or leave it out) for every instance",
        ));
    }
    if instances.len() > INSTANCES_PER_KILL_MAX {
        return Err(ApiError::bad_request(format!(
            "body: instances: more than {INSTANCES_PER_KILL_MAX}"
        )));
    }
    instances.sort_unstable();
    instances.dedup();
    Ok(instances)
}

fn message(text: Option<String>) -> Result<String, ApiError> {
    let text = text.unwrap_or_default();
    if text.len() > MESSAGE_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "body: message: at most {MESSAGE_BYTES_MAX} bytes"
        )));
    }
    Ok(text)
}

fn check_role(role: &str) -> Result<(), ApiError> {
    crate::client::check_role(role).map_err(|e| ApiError::bad_request(format!("path: {e}")))
}

/// Asks every shard for a backup (Aurora's performBackup) as `caller`, who needs the admin
/// permission, and records it in the audit log. Returns the backup's name.
pub fn perform_backup(
    auth: Option<&AuthPolicy>,
    backup_requests: &AtomicU64,
    audit: Option<&AuditLog>,
    caller: &Caller,
) -> Result<String, ApiError> {
    if auth.is_some() {
        let principal = caller.principal.as_deref().ok_or_else(|| {
            ApiError::unauthenticated("a backup needs a token with the admin permission")
        })?;
        AuthPolicy::check(principal, Action::Admin, None).map_err(|denied| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "PermissionDenied",
                denied.to_string(),
            )
        })?;
    }
    let unix_ms = now_unix_ms();
    backup_requests.store(unix_ms, Ordering::Relaxed);
    let name = borealis_store::backup::backup_name(unix_ms, 1000);
    if let Some(audit) = audit {
        audit.record(
            caller.name(),
            "http",
            Action::Admin,
            None,
            &format!("backup {name}"),
        );
    }
    Ok(name)
}

// ---------------------------------------------------------------- cluster

/// Who the token names, and what it may do.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "cluster",
    responses((status = 200, description = "The caller", body = WhoAmI), Errors))]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI::of(caller.principal.as_deref()))
}

/// The cluster's overview: agents, resources, tasks per state, jobs and the schedule rate.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster",
    responses((status = 200, description = "The overview", body = Cluster), Errors))]
pub async fn cluster(
    State(st): State<ApiState>,
    caller: Caller,
) -> Result<Json<Cluster>, ApiError> {
    let (agents, jobs) = st
        .call(&caller, Kind::Read, |c| {
            Ok((c.list_agents()?, c.list_jobs()?))
        })
        .await?;
    let placed = placed_total(&st.metrics);
    let mut by_mode = std::collections::BTreeMap::new();
    for a in &agents {
        *by_mode.entry(a.mode.as_str().to_string()).or_insert(0u64) += 1;
    }
    let mut counts = [0u64; TaskState::COUNT];
    for job in &jobs {
        for (sum, n) in counts.iter_mut().zip(&job.state_counts) {
            *sum += u64::from(*n);
        }
    }
    let roles = roles_of(&jobs).len() as u64;
    Ok(Json(Cluster {
        cluster_name: st.cluster_name.clone(),
        agents: AgentCounts {
            total: agents.len() as u64,
            connected: agents.iter().filter(|a| a.connected).count() as u64,
            by_mode,
        },
        resources: ClusterResources {
            total: ResourcesJson::sum(agents.iter().map(|a| &a.total)),
            used: ResourcesJson::sum(agents.iter().map(|a| &a.used)),
        },
        tasks_by_state: TaskState::ALL
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| (s.as_str().to_string(), n))
            .collect(),
        jobs: jobs.len() as u64,
        roles,
        schedule_rate_per_sec: st.placed.rate(Instant::now(), placed),
        tasks_placed_total: placed,
    }))
}

/// Registered agents, by host name.
#[utoipa::path(get, path = "/api/v1/agents", tag = "cluster", params(HostQuery),
    responses((status = 200, description = "A page of agents", body = Page<Agent>), Errors))]
pub async fn list_agents(
    State(st): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<HostQuery>,
) -> Result<Json<Page<Agent>>, ApiError> {
    let (offset, limit) = page_bounds(query.offset, query.limit)?;
    let q = filter_text("q", query.q)?;
    let mode = query.mode.map(HostModeName::mode);
    let agents = st.call(&caller, Kind::Read, |c| c.list_agents()).await?;
    let matching: Vec<_> = agents
        .iter()
        .filter(|a| mode.is_none_or(|m| a.mode == m))
        .filter(|a| {
            q.as_deref()
                .is_none_or(|q| matches(&a.hostname, q) || matches(&a.agent_id, q))
        })
        .collect();
    Ok(Json(page(matching, offset, limit, Agent::of)))
}

/// Roles with jobs, by name.
#[utoipa::path(get, path = "/api/v1/roles", tag = "cluster", params(SearchQuery),
    responses((status = 200, description = "A page of roles", body = Page<RoleSummary>), Errors))]
pub async fn list_roles(
    State(st): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> Result<Json<Page<RoleSummary>>, ApiError> {
    let (offset, limit) = page_bounds(query.offset, query.limit)?;
    let q = filter_text("q", query.q)?;
    let jobs = st.call(&caller, Kind::Read, |c| c.list_jobs()).await?;
    let roles: Vec<_> = roles_of(&jobs)
        .into_iter()
        .filter(|r| q.as_deref().is_none_or(|q| matches(&r.role, q)))
        .collect();
    Ok(Json(page(roles, offset, limit, |r| r)))
}

/// Hosts under maintenance, by host name.
#[utoipa::path(get, path = "/api/v1/maintenance", tag = "cluster", params(HostQuery),
    responses((status = 200, description = "A page of hosts under maintenance",
        body = Page<HostStatus>), Errors))]
pub async fn list_maintenance(
    State(st): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<HostQuery>,
) -> Result<Json<Page<HostStatus>>, ApiError> {
    let (offset, limit) = page_bounds(query.offset, query.limit)?;
    let q = filter_text("q", query.q)?;
    let mode = query.mode.map(HostModeName::mode);
    let mut hosts = st
        .call(&caller, Kind::Read, |c| {
            c.host_maintenance(MaintenanceOp::Status, &[], 0)
        })
        .await?;
    hosts.sort_by(|a, b| a.host.cmp(&b.host));
    let matching: Vec<_> = hosts
        .iter()
        .filter(|h| mode.is_none_or(|m| h.mode == m))
        .filter(|h| q.as_deref().is_none_or(|q| matches(&h.host, q)))
        .collect();
    Ok(Json(page(matching, offset, limit, HostStatus::of)))
}

/// Starts, drains or ends maintenance of hosts; answers their statuses.
#[utoipa::path(post, path = "/api/v1/maintenance/{op}", tag = "cluster",
    params(("op" = inline(MaintenanceOpName), Path, description = "start, drain or end")),
    request_body = MaintenanceBody,
    responses((status = 200, description = "The hosts' statuses", body = Page<HostStatus>),
        Errors))]
pub async fn maintenance(
    State(st): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<MaintenancePath>,
    ApiJson(body): ApiJson<MaintenanceBody>,
) -> Result<Json<Page<HostStatus>>, ApiError> {
    let op = match path.op {
        MaintenanceOpName::Start => MaintenanceOp::Start,
        MaintenanceOpName::Drain => MaintenanceOp::Drain,
        MaintenanceOpName::End => MaintenanceOp::End,
    };
    if body.hosts.is_empty() || body.hosts.len() > MAINTENANCE_HOSTS_MAX {
        return Err(ApiError::bad_request(format!(
            "body: hosts: give 1 to {MAINTENANCE_HOSTS_MAX} host names"
        )));
    }
    for (i, host) in body.hosts.iter().enumerate() {
        validate_hostname(host)
            .map_err(|e| ApiError::bad_request(format!("body: hosts[{i}]: {e}")))?;
    }
    let timeout = match (op, body.timeout_secs) {
        (_, None) => 0,
        (MaintenanceOp::Drain, Some(n)) if (1..=DRAIN_TIMEOUT_SECS_MAX).contains(&n) => n,
        (MaintenanceOp::Drain, Some(n)) => {
            return Err(ApiError::bad_request(format!(
                "body: timeout_secs: {n}: must be 1..={DRAIN_TIMEOUT_SECS_MAX}"
            )))
        }
        (_, Some(_)) => {
            return Err(ApiError::bad_request(
                "body: timeout_secs: only a drain takes a timeout",
            ))
        }
    };
    let hosts = body.hosts;
    let mut status = st
        .call(&caller, Kind::Mutation, move |c| {
            c.host_maintenance(op, &hosts, timeout)
        })
        .await?;
    status.sort_by(|a, b| a.host.cmp(&b.host));
    let all = status.len().max(1);
    Ok(Json(page(status.iter().collect(), 0, all, HostStatus::of)))
}

/// Asks every shard to write a backup now (needs the admin permission).
#[utoipa::path(post, path = "/api/v1/backups", tag = "cluster",
    responses((status = 202, description = "The backup is being written", body = BackupAck),
        Errors))]
pub async fn request_backup(
    State(st): State<ApiState>,
    caller: Caller,
) -> Result<(StatusCode, Json<BackupAck>), ApiError> {
    let backup = perform_backup(
        st.auth.as_deref(),
        &st.backup_requests,
        st.audit.as_ref(),
        &caller,
    )?;
    Ok((StatusCode::ACCEPTED, Json(BackupAck { backup })))
}

// ---------------------------------------------------------------- jobs

/// Jobs, by key.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobsQuery),
    responses((status = 200, description = "A page of jobs", body = Page<JobSummary>), Errors))]
pub async fn list_jobs(
    State(st): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<JobsQuery>,
) -> Result<Json<Page<JobSummary>>, ApiError> {
    let (offset, limit) = page_bounds(query.offset, query.limit)?;
    let q = filter_text("q", query.q)?;
    let role = match query.role {
        Some(role) => {
            crate::client::check_role(&role)
                .map_err(|e| ApiError::bad_request(format!("query: role: {e}")))?;
            Some(format!("{role}/"))
        }
        None => None,
    };
    let mut jobs = st.call(&caller, Kind::Read, |c| c.list_jobs()).await?;
    jobs.sort_by(|a, b| a.job_key.cmp(&b.job_key));
    let matching: Vec<_> = jobs
        .iter()
        .filter(|j| role.as_deref().is_none_or(|r| j.job_key.starts_with(r)))
        .filter(|j| q.as_deref().is_none_or(|q| matches(&j.job_key, q)))
        .collect();
    Ok(Json(page(matching, offset, limit, JobSummary::of)))
}

/// A job and a page of its instances (each instance's current task, with its events).
#[utoipa::path(get, path = "/api/v1/jobs/{role}/{environment}/{name}", tag = "jobs",
    params(JobPath, InstancesQuery),
    responses((status = 200, description = "The job", body = JobDetail), Errors))]
pub async fn get_job(
    State(st): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<JobPath>,
    ApiQuery(query): ApiQuery<InstancesQuery>,
) -> Result<Json<JobDetail>, ApiError> {
    let key = path.key()?;
    let (offset, limit) = page_bounds(query.offset, query.limit)?;
    let state = match query.state.as_deref() {
        None | Some("") => None,
        Some(name) => Some(TaskState::parse(&name.to_ascii_uppercase()).ok_or_else(|| {
            ApiError::bad_request(format!(
                "query: state: unknown task state {name:?} (one of {})",
                TaskState::ALL.map(TaskState::as_str).join(", ")
            ))
        })?),
    };
    let status = st
        .call(&caller, Kind::Read, move |c| c.job_status(&key))
        .await?;
    let now = now_unix_ms();
    let current: Vec<_> = super::model::current_tasks(&status.tasks)
        .into_iter()
        .filter(|t| state.is_none_or(|s| t.state == Some(s)))
        .collect();
    Ok(Json(JobDetail {
        job: JobSummary::of(&status.job),
        instances: page(current, offset, limit, |t| Instance::of(t, now)),
    }))
}

/// Creates a job from a job file (not a cron job: see `PUT .../cron`).
#[utoipa::path(post, path = "/api/v1/jobs/{role}/{environment}/{name}", tag = "jobs",
    params(JobPath), request_body = JobFileBody,
    responses((status = 201, description = "The job is created", body = JobAck), Errors))]
pub async fn create_job(
    State(st): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<JobPath>,
    ApiJson(body): ApiJson<JobFileBody>,
) -> Result<(StatusCode, Json<JobAck>), ApiError> {
    let key = path.key()?;
    let (spec, tier_explicit) = job_file(&key, &body.job_file)?;
    if spec.cron.is_some() {
        return Err(ApiError::bad_request(format!(
            "body: job_file: has a cron_schedule: schedule it with PUT /api/v1/jobs/{key}/cron"
        )));
    }
    st.call(&caller, Kind::Mutation, move |c| {
        c.create_job(&spec, tier_explicit)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(JobAck {
            job_key: path_key(&path),
        }),
    ))
}

fn path_key(path: &JobPath) -> String {
    format!("{}/{}/{}", path.role, path.environment, path.name)
}

/// Kills a job's tasks: all of them, or the instances named.
#[utoipa::path(delete, path = "/api/v1/jobs/{role}/{environment}/{name}", tag = "jobs",
    params(JobPath, KillQuery),
    responses((status = 202, description = "The tasks are being killed", body = InstancesAck),
        Errors))]
pub async fn kill_job(
    State(st): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<JobPath>,
    ApiQuery(query): ApiQuery<KillQuery>,
) -> Result<(StatusCode, Json<InstancesAck>), ApiError> {
    let key = path.key()?;
    let instances = match query.instances.as_deref() {
        None => None,
        Some(text) => Some(
            parse_instance_ranges(text)
                .map_err(|e| ApiError::bad_request(format!("query: {e}")))?,
        ),
    };
    let list = instances.clone().unwrap_or_default();
    st.call(&caller, Kind::Mutation, move |c| c.kill_job(&key, &list))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(InstancesAck {
            job_key: path_key(&path),
            instances,
        }),
    ))
}

/// Restarts a job's instances at once (all, or those named): each task is replaced.
#[utoipa::path(post, path = "/api/v1/jobs/{role}/{environment}/{name}/restart", tag = "jobs",
    params(JobPath), request_body = RestartBody,
    responses((status = 202, description = "The instances are restarting", body = InstancesAck),
        Errors))]
pub async fn restart_job(
    State(st): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<JobPath>,
    ApiJson(body): ApiJson<RestartBody>,
) -> Result<(StatusCode, Json<InstancesAck>), ApiError> {
    let key = path.key()?;
    let instances = instance_list(body.instances)?;
    let named = (!instances.is_empty()).then(|| instances.clone());
    st.call(&caller, Kind::Mutation, move |c| {
        c.restart_job(&key, &instances)
    })
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(InstancesAck {
            job_key: path_key(&path),
            instances: named,
        }),
    ))
}

/// One instance: its current task with events, and its earlier tasks.
#[utoipa::path(get, path = "/api/v1/jobs/{role}/{environment}/{name}/instances/{instance}",
    tag = "jobs",
    params(JobPath, ("instance" = u32, Path, description = "The instance number")),
    responses((status = 200, description = "The instance", body = InstanceDetail), Errors))]
pub async fn get_instance(
    State(st): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<InstancePath>,
) -> Result<Json<InstanceDetail>, ApiError> {
    let key = job_key(&path.role, &path.environment, &path.name)?;
    let shown = key.to_string();
    let status = st
        .call(&caller, Kind::Read, move |c| c.job_status(&key))
        .await?;
    let now = now_unix_ms();
    let (current, history) = super::model::instance_history(&status.tasks, path.instance)
        .ok_or_else(|| {
            ApiError::not_found(format!("job {shown} has no instance {}", path.instance))
        })?;
    Ok(Json(InstanceDetail {
        job_key: status.job.job_key.clone(),
        instance: Instance::of(current, now),
        history: history.into_iter().map(|t| Instance::of(t, now)).collect(),
    }))
}

/// A task by id: its job and instance.
#[utoipa::path(get, path = "/api/v1/tasks/{task_id}", tag = "jobs",
    params(("task_id" = String, Path,
        description = "16 hex digits (as listed), 0x and hex, or decimal")),
    responses((status = 200, description = "The task", body = TaskDetail), Errors))]
pub async fn get_task(
    State(st): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<TaskPath>,
) -> Result<Json<TaskDetail>, ApiError> {
    let id = parse_task_id(&path.task_id)?;
    let status = st
        .call(&caller, Kind::Read, move |c| c.query_task(id))
        .await?;
    let task = status
        .tasks
        .iter()
        .find(|t| t.task_id == id)
        .ok_or_else(|| ApiError::not_found(format!("unknown task {}", path.task_id)))?;
    Ok(Json(TaskDetail {
        job_key: status.job.job_key.clone(),
        instance: Instance::of(task, now_unix_ms()),
    }))
}

// ---------------------------------------------------------------- updates

/// Updates: every job's (summaries), or one job's (with per-instance counts).
#[utoipa::path(get, path = "/api/v1/updates", tag = "updates", params(UpdatesQuery),
    responses((status = 200, description = "A page of updates", body = Page<UpdateSummary>),
        Errors))]
pub async fn list_updates(
    State(st): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<UpdatesQuery>,
) -> Result<Json<Page<UpdateSummary>>, ApiError> {
    let (offset, limit) = page_bounds(query.offset, query.limit)?;
    let job = match query.job.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<JobKey>()
                .map_err(|e| ApiError::bad_request(format!("query: job: {e}")))?,
        ),
    };
    let role = match query.role {
        Some(role) => {
            crate::client::check_role(&role)
                .map_err(|e| ApiError::bad_request(format!("query: role: {e}")))?;
            Some(format!("{role}/"))
        }
        None => None,
    };
    let mut updates = st
        .call(&caller, Kind::Read, move |c| {
            c.query_updates(job.as_ref(), 0, job.is_some())
        })
        .await?;
    updates.sort_by(|a, b| (&a.job_key, a.update.id).cmp(&(&b.job_key, b.update.id)));
    let matching: Vec<_> = updates
        .iter()
        .filter(|u| role.as_deref().is_none_or(|r| u.job_key.starts_with(r)))
        .filter(|u| {
            query
                .active
                .is_none_or(|active| u.update.status.is_active() == active)
        })
        .collect();
    Ok(Json(page(matching, offset, limit, UpdateSummary::of)))
}

/// Starts a rolling update of a job to a job file's config.
#[utoipa::path(post, path = "/api/v1/jobs/{role}/{environment}/{name}/updates", tag = "updates",
    params(JobPath), request_body = StartUpdateBody,
    responses((status = 201, description = "The update started", body = UpdateSummary), Errors))]
pub async fn start_update(
    State(st): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<JobPath>,
    ApiJson(body): ApiJson<StartUpdateBody>,
) -> Result<(StatusCode, Json<UpdateSummary>), ApiError> {
    let key = path.key()?;
    let (spec, tier_explicit) = job_file(&key, &body.job_file)?;
    if spec.cron.is_some() {
        return Err(ApiError::bad_request(format!(
            "body: job_file: has a cron_schedule: a cron job is changed with PUT \
             /api/v1/jobs/{key}/cron"
        )));
    }
    let scope = instance_list(body.instances)?;
    let message = message(body.message)?;
    let settings = spec.update.unwrap_or_default();
    let info = st
        .call(&caller, Kind::Mutation, move |c| {
            c.start_update(&key, &spec, tier_explicit, &settings, &scope, &message)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(UpdateSummary::of(&info))))
}

/// One update in detail: settings, events, per-instance progress, configs and their diff.
#[utoipa::path(get, path = "/api/v1/jobs/{role}/{environment}/{name}/updates/{id}",
    tag = "updates",
    params(JobPath, ("id" = u64, Path, description = "The update's id (1, 2, ... per job)")),
    responses((status = 200, description = "The update", body = UpdateDetail), Errors))]
pub async fn get_update(
    State(st): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<UpdatePath>,
) -> Result<Json<UpdateDetail>, ApiError> {
    let key = job_key(&path.role, &path.environment, &path.name)?;
    let shown = key.to_string();
    let id = path.id;
    let found = st
        .call(&caller, Kind::Read, move |c| {
            // The scheduler refuses an unknown id as invalid; the job's list tells 404.
            let shown = key.to_string();
            let known = c.query_updates(Some(&key), 0, false)?;
            if !known
                .iter()
                .any(|u| u.job_key == shown && u.update.id == id)
            {
                return Ok(None);
            }
            let detailed = c.query_updates(Some(&key), id, true)?;
            Ok(detailed
                .into_iter()
                .find(|u| u.job_key == shown && u.update.id == id))
        })
        .await?;
    let update =
        found.ok_or_else(|| ApiError::not_found(format!("job {shown} has no update {id}")))?;
    Ok(Json(UpdateDetail::of(&update)))
}

/// A command on the job's active update, which must be update `id`.
#[utoipa::path(post,
    path = "/api/v1/jobs/{role}/{environment}/{name}/updates/{id}/{command}", tag = "updates",
    params(JobPath, ("id" = u64, Path, description = "The job's active update"),
        ("command" = inline(UpdateCommandName), Path, description = "What to do")),
    request_body(content = UpdateCommandBody, description = "Optional"),
    responses((status = 200, description = "The update after the command", body = UpdateSummary),
        Errors))]
pub async fn update_command(
    State(st): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<UpdateCommandPath>,
    ApiJson(body): ApiJson<UpdateCommandBody>,
) -> Result<Json<UpdateSummary>, ApiError> {
    let key = job_key(&path.role, &path.environment, &path.name)?;
    let message = message(body.message)?;
    let (id, command) = (path.id, path.command.command());
    let info = st
        .call(&caller, Kind::Mutation, move |c| {
            let shown = key.to_string();
            let updates = c.query_updates(Some(&key), 0, false)?;
            let Some(update) = updates
                .iter()
                .find(|u| u.job_key == shown && u.update.id == id)
            else {
                return Ok(Err(ApiError::not_found(format!(
                    "job {shown} has no update {id}"
                ))));
            };
            if !update.update.status.is_active() {
                return Ok(Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "InvalidRequest",
                    format!(
                        "update {id} of {shown} is {}: cannot {}",
                        update.update.status,
                        command.as_str()
                    ),
                )));
            }
            c.update_command(&key, command, &message).map(Ok)
        })
        .await??;
    Ok(Json(UpdateSummary::of(&info)))
}

// ---------------------------------------------------------------- cron

/// Schedules (or replaces) a cron job from a job file with a `cron_schedule`.
#[utoipa::path(put, path = "/api/v1/jobs/{role}/{environment}/{name}/cron", tag = "cron",
    params(JobPath), request_body = JobFileBody,
    responses((status = 200, description = "The cron job is scheduled", body = CronAck), Errors))]
pub async fn schedule_cron(
    State(st): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<JobPath>,
    ApiJson(body): ApiJson<JobFileBody>,
) -> Result<Json<CronAck>, ApiError> {
    let key = path.key()?;
    let (spec, tier_explicit) = job_file(&key, &body.job_file)?;
    let Some(cron) = spec.cron.clone() else {
        return Err(ApiError::bad_request(format!(
            "body: job_file: has no cron_schedule: create a job that is not a cron job with \
             POST /api/v1/jobs/{key}"
        )));
    };
    let ack = CronAck {
        job_key: key.to_string(),
        instances: spec.instances,
        cron: CronJson {
            schedule: cron.schedule.as_str().to_string(),
            next_run_unix_ms: None,
            collision_policy: cron.collision_policy.as_str().to_string(),
        },
    };
    st.call(&caller, Kind::Mutation, move |c| {
        c.schedule_cron(&key, &spec, tier_explicit, &cron)
    })
    .await?;
    Ok(Json(ack))
}

/// Removes a cron job's schedule (a run going on is left alone).
#[utoipa::path(delete, path = "/api/v1/jobs/{role}/{environment}/{name}/cron", tag = "cron",
    params(JobPath),
    responses((status = 200, description = "The schedule is removed", body = JobAck), Errors))]
pub async fn deschedule_cron(
    State(st): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<JobPath>,
) -> Result<Json<JobAck>, ApiError> {
    let key = path.key()?;
    let job_key = key.to_string();
    st.call(&caller, Kind::Mutation, move |c| c.deschedule_cron(&key))
        .await?;
    Ok(Json(JobAck { job_key }))
}

/// Runs a cron job now (its collision policy applies to a run still going).
#[utoipa::path(post, path = "/api/v1/jobs/{role}/{environment}/{name}/cron/start", tag = "cron",
    params(JobPath),
    responses((status = 202, description = "A run is triggered", body = JobAck), Errors))]
pub async fn start_cron(
    State(st): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<JobPath>,
) -> Result<(StatusCode, Json<JobAck>), ApiError> {
    let key = path.key()?;
    let job_key = key.to_string();
    st.call(&caller, Kind::Mutation, move |c| c.start_cron(&key))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(JobAck { job_key })))
}

// ---------------------------------------------------------------- quotas

/// A role's quota and what its production tasks use of it.
#[utoipa::path(get, path = "/api/v1/quotas/{role}", tag = "quotas",
    params(("role" = String, Path, description = "The role")),
    responses((status = 200, description = "The quota", body = Quota), Errors))]
pub async fn get_quota(
    State(st): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<RolePath>,
) -> Result<Json<Quota>, ApiError> {
    check_role(&path.role)?;
    let role = path.role;
    let quota = st
        .call(&caller, Kind::Read, move |c| c.get_quota(&role))
        .await?;
    Ok(Json(Quota::of(&quota)))
}

/// Sets a role's quota: what its production jobs may hold in all.
#[utoipa::path(put, path = "/api/v1/quotas/{role}", tag = "quotas",
    params(("role" = String, Path, description = "The role")),
    request_body = ResourcesJson,
    responses((status = 200, description = "The quota as set", body = Quota), Errors))]
pub async fn set_quota(
    State(st): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<RolePath>,
    ApiJson(body): ApiJson<ResourcesJson>,
) -> Result<Json<Quota>, ApiError> {
    check_role(&path.role)?;
    let quota = quota_resources(&body)?;
    let role = path.role;
    let quota = st
        .call(&caller, Kind::Mutation, move |c| {
            c.set_quota(&role, &quota)?;
            c.get_quota(&role)
        })
        .await?;
    Ok(Json(Quota::of(&quota)))
}

/// A quota body as resources: cpu cores (rounded to thousandths), RAM and disk in MiB.
fn quota_resources(body: &ResourcesJson) -> Result<Resources, ApiError> {
    let cpu_max = f64::from(u32::MAX / 1000);
    if !body.cpu.is_finite() || body.cpu < 0.0 || body.cpu > cpu_max {
        return Err(ApiError::bad_request(format!(
            "body: cpu: {}: must be a number of cores 0..={cpu_max}",
            body.cpu
        )));
    }
    let mib = |field: &str, n: u64| {
        u32::try_from(n).map_err(|_| {
            ApiError::bad_request(format!("body: {field}: {n}: must be at most {}", u32::MAX))
        })
    };
    Ok(Resources {
        cpu_millis: (body.cpu * 1000.0).round() as u32,
        ram_mib: mib("ram_mib", body.ram_mib)?,
        disk_mib: mib("disk_mib", body.disk_mib)?,
        ports: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_paths_are_checked_like_the_command_lines_keys() {
        let ok = JobPath {
            role: "www".into(),
            environment: "prod".into(),
            name: "web".into(),
        };
        assert_eq!(ok.key().unwrap().to_string(), "www/prod/web");
        let bad = JobPath {
            name: "we b".into(),
            ..ok.clone()
        };
        let e = bad.key().unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("name must be"), "{}", e.message);
        let slash = JobPath {
            role: "a/b".into(),
            ..ok
        };
        assert!(slash.key().unwrap_err().message.contains("role"));
    }

    #[test]
    fn job_files_are_parsed_with_errors_naming_the_field() {
        let key: JobKey = "www/prod/web".parse().unwrap();
        let text = "instances = 2\ncommand = \"sleep 60\"\n[resources]\ncpu = 0.5\nram = \"64MiB\"\ndisk = \"64MiB\"\n";
        let (spec, tier) = job_file(&key, text).unwrap();
        assert_eq!(spec.instances, 2);
        assert!(!tier);
        let e = job_file(&key, "instances = 2\n").unwrap_err();
        assert!(e.message.starts_with("body: job_file: "), "{}", e.message);
        let e = job_file(&key, &text.replace("cpu = 0.5", "cpu = -1")).unwrap_err();
        assert!(e.message.contains("cpu"), "{}", e.message);
    }

    #[test]
    fn instance_lists_are_sorted_bounded_and_not_empty() {
        assert_eq!(instance_list(None).unwrap(), Vec::<u32>::new());
        assert_eq!(instance_list(Some(vec![3, 1, 3])).unwrap(), [1, 3]);
        assert!(instance_list(Some(vec![]))
            .unwrap_err()
            .message
            .contains("instances"));
        let many = vec![0; INSTANCES_PER_KILL_MAX + 1];
        assert!(instance_list(Some(many)).is_err());
    }

    #[test]
    fn quotas_are_checked_and_rounded() {
        let q = quota_resources(&ResourcesJson {
            cpu: 1.5004,
            ram_mib: 512,
            disk_mib: 0,
        })
        .unwrap();
        assert_eq!((q.cpu_millis, q.ram_mib, q.disk_mib), (1500, 512, 0));
        for (cpu, ram, field) in [
            (-1.0, 1, "cpu"),
            (f64::NAN, 1, "cpu"),
            (1e12, 1, "cpu"),
            (1.0, u64::from(u32::MAX) + 1, "ram_mib"),
        ] {
            let e = quota_resources(&ResourcesJson {
                cpu,
                ram_mib: ram,
                disk_mib: 0,
            })
            .unwrap_err();
            assert!(
                e.message.starts_with(&format!("body: {field}")),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn backups_need_the_admin_permission_with_auth() {
        let token = "0123456789abcdef0123";
        let reader = "fedcba98765432100000";
        let policy = AuthPolicy::parse(&format!(
            "[[principal]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\npermissions = [\"admin\"]\n\
             [[principal]]\nname = \"dev\"\ntoken_sha256 = \"{}\"\npermissions = [\"www:*\"]\n",
            borealis_core::auth::token_sha256(token),
            borealis_core::auth::token_sha256(reader),
        ))
        .unwrap();
        let caller = |t: &str| Caller {
            token: Some(t.to_string()),
            principal: policy.authenticate(t),
        };
        let requests = AtomicU64::new(0);
        let name = perform_backup(Some(&policy), &requests, None, &caller(token)).unwrap();
        assert!(!name.is_empty());
        assert_ne!(requests.load(Ordering::Relaxed), 0);
        requests.store(0, Ordering::Relaxed);
        let e = perform_backup(Some(&policy), &requests, None, &caller(reader)).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(e.message.contains("\"dev\""), "{}", e.message);
        assert_eq!(
            requests.load(Ordering::Relaxed),
            0,
            "a refused backup is not asked for"
        );
        let open = Caller {
            token: None,
            principal: None,
        };
        assert!(perform_backup(None, &requests, None, &open).is_ok());
    }
}
