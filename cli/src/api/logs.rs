//! `GET /api/v1/tasks/{task_id}/logs/{stdout|stderr}`: a task's output, read from the log
//! server of the agent that runs it.
//!
//! The task's agent comes from the scheduler (`QueryTask`, then `ListAgents` for the agent's
//! `log_address`); the bytes come from `http(s)://{log_address}/tasks/{task_id}/files/{stream}`
//! with the same range and the caller's `Authorization` header (the agent checks it too). With
//! TLS the agent is verified against the cluster CA under its host name. One fresh connection
//! per request, each step bounded in time, and at most [`LOG_BYTES_MAX`] bytes per answer.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use utoipa::{IntoParams, ToSchema};

use super::routes::Errors;
use super::upstream::Kind;
use super::{parse_task_id, ApiError, ApiPath, ApiQuery, ApiState, Caller};
use crate::api::model::task_id_text;

/// The most bytes one answer carries (and asks the agent for).
pub const LOG_BYTES_MAX: u64 = 4 << 20;
/// What a request without a range reads: the last this many bytes.
pub const LOG_TAIL_DEFAULT: u64 = 64 << 10;
/// How long connecting (TCP and TLS) to an agent may take.
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the agent may take to answer, body included.
const AGENT_ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest error text of an agent relayed.
const AGENT_ERROR_BYTES_MAX: usize = 512;

/// Which output of the task.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct LogPath {
    pub task_id: String,
    pub stream: LogStream,
}

/// A byte range: `offset` and `length`, or the last `tail` bytes (default: the last 64 KiB).
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// The first byte to read.
    pub offset: Option<u64>,
    /// Bytes to read from `offset`, 1..=4194304 (default: the most).
    #[param(minimum = 1, maximum = 4194304)]
    pub length: Option<u64>,
    /// Read the last this many bytes instead, 1..=4194304.
    #[param(minimum = 1, maximum = 4194304)]
    pub tail: Option<u64>,
}

/// The query sent to the agent: always bounded by [`LOG_BYTES_MAX`].
pub fn agent_query(q: &LogQuery) -> Result<String, ApiError> {
    let in_range = |name: &str, n: u64| {
        if (1..=LOG_BYTES_MAX).contains(&n) {
            Ok(n)
        } else {
            Err(ApiError::bad_request(format!(
                "query: {name}: {n}: must be 1..={LOG_BYTES_MAX}"
            )))
        }
    };
    match (q.offset, q.length, q.tail) {
        (None, None, None) => Ok(format!("tail={LOG_TAIL_DEFAULT}")),
        (None, None, Some(tail)) => Ok(format!("tail={}", in_range("tail", tail)?)),
        (_, _, Some(_)) => Err(ApiError::bad_request(
            "query: tail: give either tail or offset and length, not both",
        )),
        (offset, length, None) => {
            let length = match length {
                Some(n) => in_range("length", n)?,
                None => LOG_BYTES_MAX,
            };
            Ok(format!("offset={}&length={length}", offset.unwrap_or(0)))
        }
    }
}

/// A task's stdout or stderr, as its agent serves it.
#[utoipa::path(get, path = "/api/v1/tasks/{task_id}/logs/{stream}", tag = "jobs",
    params(
        ("task_id" = String, Path, description = "16 hex digits (as listed), 0x and hex, or decimal"),
        ("stream" = inline(LogStream), Path, description = "stdout or stderr"),
        LogQuery,
    ),
    responses(
        (status = 200, description = "The bytes asked for", body = String,
            content_type = "text/plain",
            headers(
                ("X-Log-Size" = u64, description = "The file's size in bytes"),
                ("X-Log-Offset" = u64, description = "Where in the file the bytes start"),
            )),
        Errors,
    ))]
pub async fn task_log(
    State(st): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<LogPath>,
    ApiQuery(query): ApiQuery<LogQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_task_id(&path.task_id)?;
    let range = agent_query(&query)?;
    let (status, agents) = st
        .call(&caller, Kind::Read, move |c| {
            let status = c.query_task(id)?;
            let placed = status.tasks.iter().any(|t| !t.agent_id.is_empty());
            let agents = if placed { c.list_agents()? } else { Vec::new() };
            Ok((status, agents))
        })
        .await?;
    let shown = task_id_text(id);
    let task = status
        .tasks
        .iter()
        .find(|t| t.task_id == id)
        .ok_or_else(|| ApiError::not_found(format!("unknown task {shown}")))?;
    if task.agent_id.is_empty() {
        return Err(ApiError::not_found(format!(
            "task {shown} is not placed on an agent yet"
        )));
    }
    let agent = agents
        .iter()
        .find(|a| a.agent_id == task.agent_id)
        .ok_or_else(|| ApiError::not_found(format!("agent {} is not registered", task.agent_id)))?;
    if agent.log_address.is_empty() {
        return Err(ApiError::not_found(format!(
            "agent {} serves no logs",
            agent.agent_id
        )));
    }
    let target = format!("/tasks/{shown}/files/{}?{range}", path.stream.as_str());
    let answer = fetch(
        &agent.log_address,
        &agent.hostname,
        st.agent_tls.clone(),
        &target,
        headers.get(header::AUTHORIZATION).cloned(),
    )
    .await
    .map_err(|why| {
        ApiError::unavailable(format!(
            "agent {} at {}: {why}",
            agent.agent_id, agent.log_address
        ))
    })?;
    Ok(relay(&agent.agent_id, answer))
}

/// What an agent answered.
#[derive(Debug)]
pub struct AgentAnswer {
    pub status: StatusCode,
    pub size: Option<HeaderValue>,
    pub offset: Option<HeaderValue>,
    pub body: Bytes,
}

/// The agent's answer as the API's: the bytes with their headers, or an error in the API's
/// shape (a refusal keeps its status; an agent's own failure is 503).
pub fn relay(agent_id: &str, answer: AgentAnswer) -> Response {
    if answer.status.is_success() {
        let mut response = (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            answer.body,
        )
            .into_response();
        let headers = response.headers_mut();
        if let Some(v) = answer.size {
            headers.insert("x-log-size", v);
        }
        if let Some(v) = answer.offset {
            headers.insert("x-log-offset", v);
        }
        return response;
    }
    let mut text = String::from_utf8_lossy(&answer.body).trim().to_string();
    if text.len() > AGENT_ERROR_BYTES_MAX {
        let mut end = AGENT_ERROR_BYTES_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    let said = format!("agent {agent_id} answered {}: {text}", answer.status);
    let error = match answer.status {
        StatusCode::NOT_FOUND => ApiError::not_found(said),
        StatusCode::UNAUTHORIZED => ApiError::unauthenticated(said),
        StatusCode::FORBIDDEN => ApiError::new(StatusCode::FORBIDDEN, "PermissionDenied", said),
        s if s.is_client_error() => ApiError::bad_request(said),
        _ => ApiError::unavailable(said),
    };
    error.into_response()
}

/// `GET target` from the agent at `addr` (HTTPS with `tls`, checking the certificate names
/// `host`).
pub async fn fetch(
    addr: &str,
    host: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    target: &str,
    authorization: Option<HeaderValue>,
) -> Result<AgentAnswer, String> {
    let tcp = tokio::time::timeout(AGENT_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("no connection within {}s", AGENT_CONNECT_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot connect: {}", crate::client::io_reason(&e)))?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => exchange(tcp, addr, target, authorization).await,
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .or_else(|_| borealis_net::tls::server_name(addr).map_err(|e| e.to_string()))
                .map_err(|e| format!("no name to check its certificate against: {e}"))?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let stream = tokio::time::timeout(AGENT_CONNECT_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| "the TLS handshake timed out".to_string())?
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            exchange(stream, addr, target, authorization).await
        }
    }
}

async fn exchange<S>(
    io: S,
    addr: &str,
    target: &str,
    authorization: Option<HeaderValue>,
) -> Result<AgentAnswer, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let work = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut request = Request::get(target)
            .header(header::HOST, addr)
            .header(header::ACCEPT, "text/plain");
        if let Some(auth) = authorization {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status();
        let size = response.headers().get("x-log-size").cloned();
        let offset = response.headers().get("x-log-offset").cloned();
        let body = Limited::new(response.into_body(), LOG_BYTES_MAX as usize)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    format!("sent more than {LOG_BYTES_MAX} bytes")
                } else {
                    format!("reading the answer: {e}")
                }
            })?
            .to_bytes();
        driver.abort();
        Ok(AgentAnswer {
            status,
            size,
            offset,
            body,
        })
    };
    tokio::time::timeout(AGENT_ANSWER_TIMEOUT, work)
        .await
        .map_err(|_| format!("no answer within {}s", AGENT_ANSWER_TIMEOUT.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_bounded_and_not_mixed() {
        let q = |offset, length, tail| LogQuery {
            offset,
            length,
            tail,
        };
        assert_eq!(agent_query(&q(None, None, None)).unwrap(), "tail=65536");
        assert_eq!(agent_query(&q(None, None, Some(10))).unwrap(), "tail=10");
        assert_eq!(
            agent_query(&q(Some(5), None, None)).unwrap(),
            "offset=5&length=4194304"
        );
        assert_eq!(
            agent_query(&q(Some(5), Some(7), None)).unwrap(),
            "offset=5&length=7"
        );
        assert!(agent_query(&q(Some(5), None, Some(1)))
            .unwrap_err()
            .message
            .contains("tail"));
        assert!(agent_query(&q(None, Some(0), None))
            .unwrap_err()
            .message
            .contains("length"));
        assert!(agent_query(&q(None, None, Some(LOG_BYTES_MAX + 1)))
            .unwrap_err()
            .message
            .contains("tail"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_agents_bytes_and_headers_are_relayed_and_its_errors_reshaped() {
        // A one-shot agent log server on loopback.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for answer in [
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Log-Size: 105\r\nX-Log-Offset: 100\r\n\r\nhello",
                "HTTP/1.1 404 Not Found\r\nContent-Length: 12\r\n\r\nunknown task",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0; 4096];
                let n = s.read(&mut buf).await.unwrap();
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                s.write_all(answer.as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
                assert!(request.starts_with("GET /tasks/x/files/stdout?tail=5 HTTP/1.1"));
                assert!(request.to_ascii_lowercase().contains("authorization: bearer t"));
            }
        });
        let auth = Some(HeaderValue::from_static("Bearer t"));
        let ok = fetch(
            &addr,
            "localhost",
            None,
            "/tasks/x/files/stdout?tail=5",
            auth.clone(),
        )
        .await
        .unwrap();
        let response = relay("a1", ok);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-log-size"], "105");
        assert_eq!(response.headers()["x-log-offset"], "100");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
        let missing = fetch(
            &addr,
            "localhost",
            None,
            "/tasks/x/files/stdout?tail=5",
            auth,
        )
        .await
        .unwrap();
        let response = relay("a1", missing);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["code"], "NotFound");
        assert!(error["error"].as_str().unwrap().contains("unknown task"));
        server.await.unwrap();
        // Nobody listens there any more.
        let down = fetch(&addr, "localhost", None, "/", None)
            .await
            .unwrap_err();
        assert!(down.contains("cannot connect"), "{down}");
    }
}
