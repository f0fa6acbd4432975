//! The agent's HTTP client, for requests to a task's own named ports: health checks (`GET`)
//! and the lifecycle's shutdown requests (`POST`).
//!
//! Loopback only: the address is always `127.0.0.1:<port>` with a port the agent assigned to
//! the task; a job supplies only the path. One fresh connection per request (no idle pool): a
//! health check then also proves that the task still accepts connections, and nothing is held
//! open to a task that is going away. Every request is bounded by the caller's timeout, which
//! covers connecting, sending and the response head (the body is not read).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{header, Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Longest path sent (a job's endpoint); longer ones are refused without a request.
const PATH_BYTES_MAX: usize = 1024;

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestError {
    /// The path is not a valid request target.
    BadPath(String),
    /// No response head within the timeout.
    TimedOut(Duration),
    /// Connecting or exchanging failed (connection refused, reset, bad response...).
    Failed(String),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::BadPath(why) => write!(f, "bad path: {why}"),
            RequestError::TimedOut(after) => write!(f, "timed out after {}", seconds(*after)),
            RequestError::Failed(why) => f.write_str(why),
        }
    }
}

/// A duration as the job file gives it: "1s", "1.5s".
pub(crate) fn seconds(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs.fract() == 0.0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{secs:.1}s")
    }
}

/// A cheap handle (clones share one client) for requests to 127.0.0.1.
#[derive(Clone)]
pub(crate) struct LoopbackClient {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl LoopbackClient {
    pub fn new() -> LoopbackClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        LoopbackClient { client }
    }

    /// Sends `method path` (no body) to `127.0.0.1:port` and returns the response's status
    /// code, or why none came within `timeout`.
    pub async fn request(
        &self,
        method: Method,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<u16, RequestError> {
        let uri = loopback_uri(port, path)?;
        let mut request = Request::builder().method(method.clone()).uri(uri);
        if method == Method::POST {
            request = request.header(header::CONTENT_LENGTH, "0");
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| RequestError::BadPath(e.to_string()))?;
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response.status().as_u16()),
            Ok(Err(e)) => Err(RequestError::Failed(innermost(&e))),
            Err(_) => Err(RequestError::TimedOut(timeout)),
        }
    }
}

/// `http://127.0.0.1:<port><path>`; a path without its leading `/` gets one.
fn loopback_uri(port: u16, path: &str) -> Result<Uri, RequestError> {
    if path.len() > PATH_BYTES_MAX {
        return Err(RequestError::BadPath(format!(
            "longer than {PATH_BYTES_MAX} bytes"
        )));
    }
    let slash = if path.starts_with('/') { "" } else { "/" };
    let uri: Uri = format!("http://127.0.0.1:{port}{slash}{path}")
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| RequestError::BadPath(e.to_string()))?;
    // A path cannot move the request off loopback, but check what was parsed anyway.
    if uri.host() != Some("127.0.0.1") || uri.port_u16() != Some(port) {
        return Err(RequestError::BadPath(format!("{path:?} is not a path")));
    }
    Ok(uri)
}

/// The most specific message of an error chain ("Connection refused (os error 111)" rather
/// than "client error (Connect)").
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_stay_on_loopback() {
        assert_eq!(
            loopback_uri(8080, "/health").unwrap().to_string(),
            "http://127.0.0.1:8080/health"
        );
        assert_eq!(
            loopback_uri(8080, "health?x=1").unwrap().to_string(),
            "http://127.0.0.1:8080/health?x=1"
        );
        // Whatever the path, the host and port are the ones built here.
        for odd in ["@evil.example/", ":99/x", "//evil.example/x"] {
            let uri = loopback_uri(8080, odd).unwrap();
            assert_eq!(
                (uri.host(), uri.port_u16()),
                (Some("127.0.0.1"), Some(8080)),
                "{odd:?}"
            );
        }
        for bad in ["/a b", "/x\ny"] {
            assert!(
                matches!(loopback_uri(8080, bad), Err(RequestError::BadPath(_))),
                "{bad:?}: {:?}",
                loopback_uri(8080, bad)
            );
        }
        assert!(loopback_uri(1, &"/x".repeat(600)).is_err());
    }

    #[test]
    fn durations_read_like_the_job_file() {
        assert_eq!(seconds(Duration::from_secs(1)), "1s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5s");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_failure_not_a_hang() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let client = LoopbackClient::new();
        let error = client
            .request(Method::GET, port, "/health", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, RequestError::Failed(why) if why.to_lowercase().contains("refused")),
            "{error:?}"
        );
    }
}
