//! The scheduler's HTTP JSON API under `/api/v1` (see `docs/http-api.md`), with its OpenAPI
//! document at `/api/v1/openapi.json`, generated from the handlers' `utoipa::path`
//! attributes: the router and the document are built together ([`router`]), so neither can
//! list a route the other lacks.
//!
//! The API is a client of the scheduler's binary protocol ([`upstream`]): each call forwards
//! the caller's token, and the shards authorize it as they do the command line's. What the
//! API checks itself: the token is known (401 before any upstream call), paths, queries and
//! bodies are well formed (400 naming what is wrong; bodies at most [`BODY_MAX_BYTES`], 413),
//! and backups need the admin permission (403). Every error is `{"error", "code"}` JSON,
//! unknown routes included.

pub mod logs;
pub mod model;
pub mod routes;
pub mod upstream;

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use borealis_core::auth::{AuthPolicy, Principal};
use borealis_net::views::ErrorCode;
use borealis_shards::audit_log::AuditLog;
use borealis_shards::metrics::Metrics;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::client::Refused;
use model::ErrorBody;
use upstream::{CallError, Kind, Upstream};

/// The largest request body accepted (413 past it).
pub const BODY_MAX_BYTES: usize = 1 << 20;
/// The largest page (`limit`).
pub const PAGE_LIMIT_MAX: usize = 1000;
/// The page size without `limit`.
pub const PAGE_LIMIT_DEFAULT: usize = 100;
/// The longest filter text (`q`) accepted.
pub const FILTER_BYTES_MAX: usize = 256;
/// Samples of the placed-tasks counter kept for the schedule rate (one a second).
const RATE_SAMPLES_MAX: usize = 64;
/// The window the schedule rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- errors

/// An error answer: a status and `{"error", "code"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        // One line, bounded: a message is for people and logs, not a dump.
        let mut message: String = message.into().replace(['\r', '\n'], " ");
        if message.len() > 2048 {
            let mut end = 2048;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str("...");
        }
        ApiError {
            status,
            code,
            message,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthenticated", message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", message)
    }

    /// A scheduler's refusal by its code; anything else about the upstream call (it could
    /// not connect, the connection broke) is 503 with its one-line reason.
    pub fn from_upstream(e: &anyhow::Error) -> ApiError {
        match e.downcast_ref::<Refused>() {
            Some(r) => {
                let (status, code) = refusal_status(r.code);
                ApiError::new(status, code, r.message.clone())
            }
            None => ApiError::unavailable(format!("{e:#}")),
        }
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> ApiError {
        match e {
            CallError::Upstream(e) => ApiError::from_upstream(&e),
            CallError::Busy => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Overloaded",
                format!(
                    "too many API calls in flight ({} at once); try again",
                    upstream::CALLS_MAX
                ),
            ),
            CallError::Crashed(why) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal",
                format!("the upstream call failed: {why}"),
            ),
        }
    }
}

/// The HTTP status and code name of a scheduler's refusal.
pub fn refusal_status(code: ErrorCode) -> (StatusCode, &'static str) {
    match code {
        ErrorCode::InvalidRequest => (StatusCode::BAD_REQUEST, "InvalidRequest"),
        ErrorCode::Unauthenticated => (StatusCode::UNAUTHORIZED, "Unauthenticated"),
        ErrorCode::PermissionDenied => (StatusCode::FORBIDDEN, "PermissionDenied"),
        ErrorCode::UnknownJob => (StatusCode::NOT_FOUND, "UnknownJob"),
        ErrorCode::JobExists => (StatusCode::CONFLICT, "JobExists"),
        ErrorCode::QuotaExceeded => (StatusCode::CONFLICT, "QuotaExceeded"),
        ErrorCode::TooManyTasks => (StatusCode::CONFLICT, "TooManyTasks"),
        ErrorCode::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "Overloaded"),
        ErrorCode::NotLeader => (StatusCode::SERVICE_UNAVAILABLE, "NotLeader"),
        ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "Internal"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
                code: self.code.to_string(),
            }),
        )
            .into_response()
    }
}

/// Unknown routes.
pub async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route {} {}",
        request.method(),
        request.uri().path()
    ))
}

/// A known route asked with a method it does not serve.
pub async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!(
            "{} does not serve method {}",
            request.uri().path(),
            request.method()
        ),
    )
}

// ---------------------------------------------------------------- state

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub upstream: Arc<Upstream>,
    /// None: no `--auth-file`; everything is open.
    pub auth: Option<Arc<AuthPolicy>>,
    pub audit: Option<AuditLog>,
    pub metrics: Arc<Metrics>,
    pub cluster_name: String,
    pub backup_requests: Arc<AtomicU64>,
    pub placed: Arc<PlacedRate>,
    /// With TLS: how the API talks HTTPS to agents' log servers (the cluster CA).
    pub agent_tls: Option<Arc<rustls::ClientConfig>>,
}

/// Samples of the tasks-placed counter, for the schedule rate.
#[derive(Debug, Default)]
pub struct PlacedRate {
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl PlacedRate {
    /// Records the counter's value at `at` (kept: the last [`RATE_SAMPLES_MAX`]).
    pub fn sample(&self, at: Instant, placed_total: u64) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() >= RATE_SAMPLES_MAX {
            samples.pop_front();
        }
        samples.push_back((at, placed_total));
    }

    /// Tasks placed per second from the oldest sample within [`RATE_WINDOW`] of `now` to
    /// `placed_total` now; 0 without such a sample.
    pub fn rate(&self, now: Instant, placed_total: u64) -> f64 {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&(at, then)) = samples
            .iter()
            .find(|(at, _)| now.saturating_duration_since(*at) <= RATE_WINDOW)
        else {
            return 0.0;
        };
        let secs = now.saturating_duration_since(at).as_secs_f64();
        if secs < 0.5 {
            return 0.0;
        }
        placed_total.saturating_sub(then) as f64 / secs
    }
}

/// Tasks placed since the scheduler started (every shard's count).
pub fn placed_total(metrics: &Metrics) -> u64 {
    metrics
        .shards
        .iter()
        .map(|s| {
            s.schedule_attempts_total[borealis_shards::metrics::AttemptResult::Placed as usize]
                .get()
        })
        .sum()
}

impl ApiState {
    /// Runs `f` against the scheduler as `caller`.
    pub async fn call<T, F>(&self, caller: &Caller, kind: Kind, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: Fn(&mut crate::client::Client) -> anyhow::Result<T> + Send + 'static,
    {
        self.upstream
            .call(caller.token.clone(), kind, f)
            .await
            .map_err(ApiError::from)
    }
}

// ---------------------------------------------------------------- extractors

/// Who calls: the bearer token (forwarded upstream) and, with auth, its principal. Without a
/// known token on a scheduler with auth, the request is answered 401 here.
#[derive(Clone, Debug)]
pub struct Caller {
    pub token: Option<String>,
    pub principal: Option<Arc<Principal>>,
}

impl Caller {
    /// The principal's name for the audit log (`anonymous` without auth).
    pub fn name(&self) -> &str {
        self.principal.as_deref().map_or("anonymous", |p| &p.name)
    }
}

/// The token of an `Authorization: Bearer <token>` header: `Ok(None)` without the header.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::unauthenticated("the Authorization header is not text"))?;
    let token = match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(ApiError::unauthenticated(
                "the Authorization header must be `Bearer <token>`",
            ))
        }
    };
    if token.is_empty() {
        return Err(ApiError::unauthenticated(
            "the Authorization header has an empty token",
        ));
    }
    Ok(Some(token.to_string()))
}

/// Authenticates a request against `auth`. None: open; a well-formed bearer token is still
/// forwarded (a scheduler without auth ignores it, one with auth checks it).
pub fn authenticate(headers: &HeaderMap, auth: Option<&AuthPolicy>) -> Result<Caller, ApiError> {
    let Some(policy) = auth else {
        return Ok(Caller {
            token: bearer_token(headers).ok().flatten(),
            principal: None,
        });
    };
    let Some(token) = bearer_token(headers)? else {
        return Err(ApiError::unauthenticated(
            "this scheduler needs a token: send `Authorization: Bearer <token>`",
        ));
    };
    match policy.authenticate(&token) {
        Some(principal) => Ok(Caller {
            token: Some(token),
            principal: Some(principal),
        }),
        None => Err(ApiError::unauthenticated("unknown token")),
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        authenticate(&parts.headers, state.auth.as_deref())
    }
}

/// `Path`, with errors in the API's shape.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(e) => Err(ApiError::bad_request(format!("path: {}", e.body_text()))),
        }
    }
}

/// `Query`, with errors in the API's shape.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(e) => Err(ApiError::bad_request(format!("query: {}", e.body_text()))),
        }
    }
}

/// A JSON body of at most [`BODY_MAX_BYTES`]; errors name the field that is wrong. An empty
/// body reads as `{}` (for bodies whose fields are all optional).
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                format!("the body is larger than {BODY_MAX_BYTES} bytes"),
            )
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > BODY_MAX_BYTES as u64) {
            return Err(too_large());
        }
        let body = Limited::new(request.into_body(), BODY_MAX_BYTES);
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
            Err(e) => return Err(ApiError::bad_request(format!("cannot read the body: {e}"))),
        };
        parse_json_body(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body; errors name the field: `body: job_file: invalid type: ...`.
pub fn parse_json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("body: {inner}"))
        } else {
            ApiError::bad_request(format!("body: {path}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    Ok(value)
}

// ---------------------------------------------------------------- paging and validation

/// `offset` and `limit`, checked: limit 1..=[`PAGE_LIMIT_MAX`] (default
/// [`PAGE_LIMIT_DEFAULT`]).
pub fn page_bounds(offset: Option<u64>, limit: Option<u64>) -> Result<(usize, usize), ApiError> {
    let limit = match limit {
        None => PAGE_LIMIT_DEFAULT,
        Some(n) if (1..=PAGE_LIMIT_MAX as u64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "query: limit {n}: must be 1..={PAGE_LIMIT_MAX}"
            )))
        }
    };
    let offset = usize::try_from(offset.unwrap_or(0)).unwrap_or(usize::MAX);
    Ok((offset, limit))
}

/// The page of `items` (already filtered) from `offset`, at most `limit` of them.
pub fn page<T, U>(
    items: Vec<T>,
    offset: usize,
    limit: usize,
    convert: impl Fn(T) -> U,
) -> model::Page<U> {
    let total = items.len();
    model::Page {
        total,
        offset,
        items: items
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(convert)
            .collect(),
    }
}

/// A filter text (`q`): at most [`FILTER_BYTES_MAX`], matched case-insensitively.
pub fn filter_text(name: &str, q: Option<String>) -> Result<Option<String>, ApiError> {
    match q {
        None => Ok(None),
        Some(q) if q.len() > FILTER_BYTES_MAX => Err(ApiError::bad_request(format!(
            "query: {name}: at most {FILTER_BYTES_MAX} bytes"
        ))),
        Some(q) if q.is_empty() => Ok(None),
        Some(q) => Ok(Some(q.to_ascii_lowercase())),
    }
}

/// Whether `text` contains `needle` (already lower-case), ignoring ASCII case.
pub fn matches(text: &str, needle: &str) -> bool {
    text.to_ascii_lowercase().contains(needle)
}

/// A task id: `0x` and hex, exactly 16 hex digits (how the API and the CLI print ids), or
/// decimal.
pub fn parse_task_id(text: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "task id {text:?}: expected 16 hex digits (as listed), 0x and hex, or a decimal number"
        ))
    };
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        return u64::from_str_radix(hex, 16).map_err(|_| bad());
    }
    if text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return u64::from_str_radix(text, 16).map_err(|_| bad());
    }
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse::<u64>().map_err(|_| bad())
}

/// Now, in unix milliseconds.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---------------------------------------------------------------- the document and router

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Borealis scheduler API",
        version = "1",
        description = "The scheduler's HTTP JSON API. Errors are `{\"error\", \"code\"}`; lists \
                       are pages `{\"total\", \"offset\", \"items\"}`."
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "cluster", description = "The cluster: agents, roles, maintenance, backups"),
        (name = "jobs", description = "Jobs, instances and tasks"),
        (name = "updates", description = "Rolling updates"),
        (name = "cron", description = "Cron jobs"),
        (name = "quotas", description = "Role quotas"),
    )
)]
struct ApiDoc;

/// Declares `Authorization: Bearer <token>` (needed with `--auth-file`).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token of the scheduler's --auth-file (not needed without one)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The API's routes and the OpenAPI document describing exactly them.
pub fn api_routes() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    use routes::*;
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(whoami))
        .routes(routes!(cluster))
        .routes(routes!(list_agents))
        .routes(routes!(list_roles))
        .routes(routes!(list_jobs))
        .routes(routes!(get_job, create_job, kill_job))
        .routes(routes!(restart_job))
        .routes(routes!(get_instance))
        .routes(routes!(get_task))
        .routes(routes!(logs::task_log))
        .routes(routes!(list_updates))
        .routes(routes!(start_update))
        .routes(routes!(get_update))
        .routes(routes!(update_command))
        .routes(routes!(schedule_cron, deschedule_cron))
        .routes(routes!(start_cron))
        .routes(routes!(get_quota, set_quota))
        .routes(routes!(list_maintenance))
        .routes(routes!(maintenance))
        .routes(routes!(request_backup))
        .split_for_parts()
}

/// The API under `/api/v1`, with `/api/v1/openapi.json`, on `state`.
pub fn router(state: ApiState) -> Router {
    let (routes, doc) = api_routes();
    let spec = Arc::new(
        doc.to_pretty_json()
            .expect("the OpenAPI document serializes"),
    );
    routes
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let spec = spec.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        spec.as_str().to_string(),
                    )
                }
            }),
        )
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_their_statuses() {
        let cases = [
            (ErrorCode::InvalidRequest, 400),
            (ErrorCode::Unauthenticated, 401),
            (ErrorCode::PermissionDenied, 403),
            (ErrorCode::UnknownJob, 404),
            (ErrorCode::JobExists, 409),
            (ErrorCode::QuotaExceeded, 409),
            (ErrorCode::TooManyTasks, 409),
            (ErrorCode::Overloaded, 503),
            (ErrorCode::NotLeader, 503),
            (ErrorCode::Internal, 500),
        ];
        for (code, status) in cases {
            let e = anyhow::Error::new(Refused {
                code,
                message: format!("refused {code:?}"),
            });
            let api = ApiError::from_upstream(&e);
            assert_eq!(api.status.as_u16(), status, "{code:?}");
            assert_eq!(api.message, format!("refused {code:?}"));
            assert_eq!(api.code, format!("{code:?}"));
        }
        let down = anyhow::anyhow!("cannot reach scheduler at 127.0.0.1:1: Connection refused");
        let api = ApiError::from_upstream(&down);
        assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(api.code, "Unavailable");
        assert!(api.message.contains("Connection refused"));
    }

    #[test]
    fn messages_are_one_bounded_line() {
        let e = ApiError::bad_request("a\nb\r\nc");
        assert_eq!(e.message, "a b  c");
        let long = ApiError::bad_request("é".repeat(5000));
        assert!(long.message.len() <= 2051);
        assert!(long.message.ends_with("..."));
    }

    #[test]
    fn task_ids_read_as_listed_hex_or_decimal() {
        assert_eq!(parse_task_id("00000000000000ff").unwrap(), 255);
        assert_eq!(parse_task_id("0xff").unwrap(), 255);
        assert_eq!(parse_task_id("0XFF").unwrap(), 255);
        assert_eq!(parse_task_id("255").unwrap(), 255);
        assert_eq!(
            parse_task_id("18446744073709551615").unwrap(),
            u64::MAX,
            "decimal up to u64::MAX"
        );
        for bad in [
            "",
            "0x",
            "0x11112222333344445",
            "18446744073709551616",
            "-1",
            "12a",
            "x",
            " 1",
        ] {
            let e = parse_task_id(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad:?}");
            assert!(e.message.contains("task id"), "{}", e.message);
        }
    }

    #[test]
    fn pages_are_bounded_and_count_every_match() {
        assert_eq!(page_bounds(None, None).unwrap(), (0, PAGE_LIMIT_DEFAULT));
        assert_eq!(page_bounds(Some(5), Some(1000)).unwrap(), (5, 1000));
        for bad in [0, 1001, u64::MAX] {
            let e = page_bounds(None, Some(bad)).unwrap_err();
            assert!(e.message.contains("limit"), "{}", e.message);
        }
        let p = page((0..10).collect(), 8, 5, |n: i32| n * 2);
        assert_eq!((p.total, p.offset, p.items), (10, 8, vec![16, 18]));
        let p = page((0..10).collect(), usize::MAX, 5, |n: i32| n);
        assert_eq!((p.total, p.items.len()), (10, 0));
    }

    #[test]
    fn filters_are_bounded_and_case_blind() {
        assert_eq!(filter_text("q", None).unwrap(), None);
        assert_eq!(filter_text("q", Some(String::new())).unwrap(), None);
        assert_eq!(
            filter_text("q", Some("WeB".into())).unwrap().as_deref(),
            Some("web")
        );
        assert!(filter_text("q", Some("x".repeat(257))).is_err());
        assert!(matches("www/prod/Web", "web"));
        assert!(!matches("www/prod/api", "web"));
    }

    #[test]
    fn json_body_errors_name_the_field() {
        let e = parse_json_body::<model::JobFileBody>(br#"{"job_file": 5}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(
            e.message.starts_with("body: job_file: invalid type"),
            "{}",
            e.message
        );
        let e = parse_json_body::<model::JobFileBody>(br#"{}"#).unwrap_err();
        assert!(
            e.message.contains("missing field `job_file`"),
            "{}",
            e.message
        );
        let e = parse_json_body::<model::JobFileBody>(br#"{"job_file": "", "x": 1}"#).unwrap_err();
        assert!(e.message.contains("unknown field `x`"), "{}", e.message);
        let e = parse_json_body::<model::JobFileBody>(b"{not json").unwrap_err();
        assert!(e.message.starts_with("body: "), "{}", e.message);
        let e = parse_json_body::<model::JobFileBody>(br#"{"job_file": ""} x"#).unwrap_err();
        assert!(e.message.contains("trailing"), "{}", e.message);
        let e = parse_json_body::<model::MaintenanceBody>(br#"{"hosts": ["a", 7]}"#).unwrap_err();
        assert!(e.message.starts_with("body: hosts[1]: "), "{}", e.message);
        let r: model::RestartBody = parse_json_body(b"").unwrap();
        assert!(r.instances.is_none());
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let parts = |value: Option<&str>| {
            let mut builder = axum::http::Request::builder();
            if let Some(v) = value {
                builder = builder.header(header::AUTHORIZATION, v);
            }
            builder.body(()).unwrap().into_parts().0.headers
        };
        assert_eq!(bearer_token(&parts(None)).unwrap(), None);
        assert_eq!(
            bearer_token(&parts(Some("Bearer abc"))).unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&parts(Some("bearer  abc ")))
                .unwrap()
                .as_deref(),
            Some("abc")
        );
        for bad in ["Basic abc", "Bearer", "Bearer  ", "abc"] {
            let e = bearer_token(&parts(Some(bad))).unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{bad:?}");
        }
        let token = "0123456789abcdef0123";
        let policy = AuthPolicy::parse(&format!(
            "[[principal]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\npermissions = [\"*\"]\n",
            borealis_core::auth::token_sha256(token)
        ))
        .unwrap();
        let caller = authenticate(&parts(Some(&format!("Bearer {token}"))), Some(&policy)).unwrap();
        assert_eq!(caller.name(), "ops");
        assert_eq!(caller.token.as_deref(), Some(token));
        let e = authenticate(&parts(None), Some(&policy)).unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        let e =
            authenticate(&parts(Some("Bearer wrong-token-0000000")), Some(&policy)).unwrap_err();
        assert_eq!(e.message, "unknown token");
        let open = authenticate(&parts(Some("Bearer whatever")), None).unwrap();
        assert_eq!(
            (open.name(), open.token.as_deref()),
            ("anonymous", Some("whatever"))
        );
        let open = authenticate(&parts(Some("Basic x")), None).unwrap();
        assert_eq!(open.token, None);
    }

    #[test]
    fn the_schedule_rate_is_the_counters_slope_over_the_window() {
        let rate = PlacedRate::default();
        let t0 = Instant::now();
        assert_eq!(rate.rate(t0, 100), 0.0);
        rate.sample(t0, 100);
        rate.sample(t0 + Duration::from_secs(1), 150);
        assert_eq!(rate.rate(t0 + Duration::from_secs(2), 300), 100.0);
        // Samples older than the window no longer count.
        let later = t0 + Duration::from_secs(30);
        assert_eq!(rate.rate(later, 1000), 0.0);
        for i in 0..(RATE_SAMPLES_MAX as u64 + 10) {
            rate.sample(later + Duration::from_millis(i), i);
        }
        assert_eq!(rate.samples.lock().unwrap().len(), RATE_SAMPLES_MAX);
    }

    /// Every `$ref` of the document points at a schema it has, and every route is in it.
    #[test]
    fn the_document_lists_every_route_and_resolves_its_references() {
        let (_, doc) = api_routes();
        let json: serde_json::Value =
            serde_json::from_str(&doc.to_json().unwrap()).expect("the document is JSON");
        let schemas = json["components"]["schemas"].as_object().unwrap();
        fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v) {
                            ("$ref", serde_json::Value::String(r)) => out.push(r.clone()),
                            _ => refs(v, out),
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&json, &mut all);
        assert!(!all.is_empty());
        // A task's usage is documented, as an optional field of an instance.
        assert_eq!(
            schemas["TaskUsage"]["properties"]
                .as_object()
                .map(|p| p.keys().cloned().collect::<Vec<_>>()),
            Some(vec![
                "cpu_time_ms".to_string(),
                "disk_bytes".to_string(),
                "peak_memory_bytes".to_string()
            ])
        );
        assert!(!schemas["Instance"]["required"]
            .as_array()
            .unwrap()
            .contains(&"usage".into()));
        for r in &all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected reference {r}"));
            assert!(schemas.contains_key(name), "{r} does not resolve");
        }
        let paths = json["paths"].as_object().unwrap();
        let expected = [
            ("get", "/api/v1/whoami"),
            ("get", "/api/v1/cluster"),
            ("get", "/api/v1/agents"),
            ("get", "/api/v1/roles"),
            ("get", "/api/v1/jobs"),
            ("get", "/api/v1/jobs/{role}/{environment}/{name}"),
            ("post", "/api/v1/jobs/{role}/{environment}/{name}"),
            ("delete", "/api/v1/jobs/{role}/{environment}/{name}"),
            ("post", "/api/v1/jobs/{role}/{environment}/{name}/restart"),
            (
                "get",
                "/api/v1/jobs/{role}/{environment}/{name}/instances/{instance}",
            ),
            ("get", "/api/v1/tasks/{task_id}"),
            ("get", "/api/v1/tasks/{task_id}/logs/{stream}"),
            ("get", "/api/v1/updates"),
            ("post", "/api/v1/jobs/{role}/{environment}/{name}/updates"),
            (
                "get",
                "/api/v1/jobs/{role}/{environment}/{name}/updates/{id}",
            ),
            (
                "post",
                "/api/v1/jobs/{role}/{environment}/{name}/updates/{id}/{command}",
            ),
            ("put", "/api/v1/jobs/{role}/{environment}/{name}/cron"),
            ("delete", "/api/v1/jobs/{role}/{environment}/{name}/cron"),
            (
                "post",
                "/api/v1/jobs/{role}/{environment}/{name}/cron/start",
            ),
            ("get", "/api/v1/quotas/{role}"),
            ("put", "/api/v1/quotas/{role}"),
            ("get", "/api/v1/maintenance"),
            ("post", "/api/v1/maintenance/{op}"),
            ("post", "/api/v1/backups"),
        ];
        let mut listed = 0;
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                if !["get", "post", "put", "delete"].contains(&method.as_str()) {
                    continue;
                }
                listed += 1;
                assert!(
                    expected.contains(&(method.as_str(), path.as_str())),
                    "unexpected {method} {path}"
                );
                let responses = op["responses"].as_object().unwrap();
                for status in ["400", "401", "503"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} does not declare {status}"
                    );
                }
            }
        }
        assert_eq!(listed, expected.len());
        for (method, path) in expected {
            assert!(
                paths[path].get(method).is_some(),
                "{method} {path} is not in the document"
            );
        }
    }
}
