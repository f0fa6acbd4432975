//! The scheduler's web UI: a single-page app of plain HTML, JavaScript and CSS (no build step)
//! embedded in the binary and served from the HTTP port at `/` and `/ui/...`. The app talks
//! only to the JSON API under `/api/v1` (see `docs/http-api.md`).

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file: where it is served, its content type and its bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// Every file of the UI. `/` is the app's page; the rest are what it loads.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../ui/index.html"),
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../ui/app.js"),
    },
    Asset {
        path: "/ui/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../ui/style.css"),
    },
    Asset {
        path: "/ui/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../ui/favicon.svg"),
    },
];

/// The answer for one asset: its bytes, its type, and `Cache-Control: no-cache` (browsers
/// revalidate, so a new binary's UI shows on the next load).
fn serve(asset: &'static Asset) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        asset.body,
    )
        .into_response()
}

/// The UI's routes, for merging into the HTTP port's router (any state).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(asset.path, get(move || async move { serve(asset) }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A GET over a real socket: the status, the headers (names in lower case) and the body.
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    async fn get_path(path: &str) -> Answer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, router::<()>()).await.unwrap();
        });
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        server.abort();
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP answer");
        let head = String::from_utf8(raw[..split].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Answer {
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        }
    }

    #[tokio::test]
    async fn each_asset_is_served_with_its_type_and_no_cache() {
        let cases = [
            ("/", "text/html; charset=utf-8", "<!doctype html>"),
            ("/ui/app.js", "text/javascript; charset=utf-8", "use strict"),
            ("/ui/style.css", "text/css; charset=utf-8", "--accent"),
            ("/ui/favicon.svg", "image/svg+xml", "<svg"),
        ];
        for (path, content_type, marker) in cases {
            let answer = get_path(path).await;
            assert_eq!(answer.status, 200, "{path}");
            assert_eq!(answer.header("content-type"), Some(content_type), "{path}");
            assert_eq!(answer.header("cache-control"), Some("no-cache"), "{path}");
            let asset = ASSETS.iter().find(|a| a.path == path).unwrap();
            assert_eq!(answer.body, asset.body, "{path} is served whole");
            let text = String::from_utf8(answer.body).unwrap().to_ascii_lowercase();
            assert!(text.contains(marker), "{path} lacks {marker:?}");
        }
        assert_eq!(cases.len(), ASSETS.len(), "every asset is tested");
    }

    #[tokio::test]
    async fn the_page_loads_the_served_script_and_stylesheet() {
        let page = String::from_utf8(get_path("/").await.body).unwrap();
        for asset in &ASSETS[1..] {
            assert!(
                page.contains(asset.path),
                "index.html does not load {}",
                asset.path
            );
        }
    }

    #[tokio::test]
    async fn other_paths_are_not_the_uis() {
        assert_eq!(get_path("/ui/missing.js").await.status, 404);
    }
}
