//! The console's only IO: HTTP to each gateway's admin API (`http://` or
//! `https://`; reqwest on rustls, trusting the public roots and `--ca-cert`).
//!
//! One task per gateway reads `GET /api/v1/stats/stream` (server-sent events)
//! and sends [`Msg`]s to the event loop over a bounded channel. When the
//! stream fails, ends, or stays silent for [`STALL`], the task reports the
//! gateway disconnected and reconnects after a [`Backoff`] delay (0.5 s
//! doubling to 10 s, back to 0.5 s once a stream delivered a snapshot).
//! Requests (registry, effective exports, pause/resume) are one-shot tasks
//! with a timeout. Bodies are read with a size bound. The admin token goes
//! into the `Authorization` header only: no message here contains it.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, StatusCode};
use tokio::sync::mpsc;

use crate::api::{self, EffectiveExport, Registry, Snapshot, Target};
use crate::sse;
use fanout_proto::api::client_error;

/// A stream silent this long is considered lost (the gateway sends one
/// snapshot a second).
pub const STALL: Duration = Duration::from_secs(5);
/// Timeout of a one-shot request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest body read from a one-shot request.
pub const MAX_BODY: usize = 64 << 20;

/// What the network tasks tell the event loop.
#[derive(Debug)]
pub enum Msg {
    /// Opening gateway `0`'s stream.
    Connecting(usize),
    /// A snapshot from a gateway.
    Stats(usize, Box<Snapshot>),
    /// A gateway sent an unreadable snapshot.
    BadData(usize, String),
    /// A gateway's stream failed; retry after `retry_in`.
    Disconnected {
        /// Gateway index.
        gw: usize,
        /// Why.
        error: String,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
    /// The registry document.
    Registry(Box<Result<Registry, String>>),
    /// Effective exports of a Deployment.
    Effective(String, Result<Vec<EffectiveExport>, String>),
    /// A pause or resume answer.
    Paused {
        /// Gateway index.
        gw: usize,
        /// Target id.
        id: String,
        /// Pause (true) or resume.
        pause: bool,
        /// The target's new state, or why not.
        result: Box<Result<Target, String>>,
    },
}

/// Reconnect delays: 0.5 s doubling up to 10 s.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let ms = 500u64.saturating_mul(1 << self.attempt.min(5)).min(10_000);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(ms)
    }

    /// Back to the first delay (a connection worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Why an `--admin` URL is not usable.
#[derive(Debug, thiserror::Error)]
#[error("--admin {url}: {reason}")]
pub struct BadUrl {
    url: String,
    reason: &'static str,
}

/// Why the console cannot talk to its gateways at all.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// An `--admin` URL is not usable.
    #[error(transparent)]
    Url(#[from] BadUrl),
    /// `--ca-cert` cannot be used, or the HTTP client could not be built.
    #[error("{0}")]
    Client(String),
}

/// The HTTP client shared by every gateway's [`Admin`]
/// ([`fanout_proto::api::admin_client_builder`]).
pub fn http_client(ca_cert: Option<&Path>) -> Result<reqwest::Client, SetupError> {
    fanout_proto::api::admin_client_builder(
        ca_cert,
        concat!("fanout-tui/", env!("CARGO_PKG_VERSION")),
    )
    .map_err(SetupError::Client)?
    .tcp_nodelay(true)
    .build()
    .map_err(|e| SetupError::Client(format!("HTTP client: {}", client_error(&e))))
}

/// A client for one gateway's admin API.
#[derive(Clone)]
pub struct Admin {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Admin").field("base", &self.base).finish()
    }
}

/// Normalises an `--admin` value: `host:port` gets `http://`, a trailing `/`
/// goes; other schemes and URLs with a path or credentials are refused.
pub fn normalize_url(url: &str) -> Result<String, BadUrl> {
    // The URL in an error never shows userinfo (it may hold a password).
    let shown = match url.rsplit_once('@') {
        Some((before, after)) => match before.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://***@{after}"),
            None => format!("***@{after}"),
        },
        None => url.to_owned(),
    };
    let bad = |reason| BadUrl {
        url: shown.clone(),
        reason,
    };
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
        ("http", r)
    } else if let Some(r) = url.strip_prefix("https://") {
        ("https", r)
    } else if url.contains("://") {
        return Err(bad("only http:// and https:// URLs are supported"));
    } else {
        ("http", url)
    };
    if rest.is_empty() {
        return Err(bad("no host"));
    }
    if rest.contains('@') {
        return Err(bad(
            "credentials in the URL are not supported: use --admin-token or FANOUT_ADMIN_TOKEN",
        ));
    }
    if rest.contains('/') || rest.contains('?') {
        return Err(bad(
            "give the admin address only, like http://127.0.0.1:9556",
        ));
    }
    let full = format!("{scheme}://{rest}");
    full.parse::<http::Uri>()
        .map_err(|_| bad("not a valid URL"))?;
    Ok(full)
}

/// Percent-encodes a path segment.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn status_error(path: &str, status: StatusCode, body: &[u8]) -> String {
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    let hint = match status {
        StatusCode::UNAUTHORIZED => " (check --admin-token or FANOUT_ADMIN_TOKEN)",
        // The ingest port answers every other path so.
        StatusCode::NOT_FOUND if detail.contains("remote-write goes to POST /api/v1/write") => {
            " (this is a gateway's ingest port: point the console at its admin port, \
             --admin-listen, 127.0.0.1:9556 by default)"
        }
        StatusCode::NOT_FOUND if path.contains("stats") || path.contains("targets") => {
            " (this gateway has no stats API: upgrade it)"
        }
        _ => "",
    };
    format!(
        "{path}: {status}{hint}: {}",
        crate::fmt::one_line(detail.trim())
    )
}

impl Admin {
    /// A client for `base` (see [`normalize_url`]) over `client` (see
    /// [`http_client`]).
    pub fn new(
        base: &str,
        token: Option<String>,
        client: reqwest::Client,
    ) -> Result<Admin, BadUrl> {
        let base = normalize_url(base)?;
        Ok(Admin {
            base,
            token: token.filter(|t| !t.is_empty()),
            client,
        })
    }

    /// The normalised base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str, accept: &str) -> reqwest::RequestBuilder {
        let mut b = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header(header::ACCEPT, accept);
        if let Some(t) = &self.token {
            b = b.bearer_auth(t);
        }
        b
    }

    /// A one-shot request; returns the body of a 2xx answer.
    pub async fn call(&self, method: Method, path: &str) -> Result<Bytes, String> {
        let req = self.request(method, path, "application/json");
        let work = async {
            let mut resp = req
                .send()
                .await
                .map_err(|e| format!("{path}: {}", client_error(&e)))?;
            let status = resp.status();
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| format!("{path}: reading the body: {}", client_error(&e)))?
            {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(format!("{path}: the body is over {MAX_BODY} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            if status.is_success() {
                Ok(Bytes::from(body))
            } else {
                Err(status_error(path, status, &body))
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "{path}: no answer within {}s",
                    REQUEST_TIMEOUT.as_secs()
                ))
            })
    }

    /// `GET path` parsed as `T`.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
    ) -> Result<T, String> {
        let body = self.call(Method::GET, path).await?;
        api::parse(what, &body)
    }

    /// Pauses or resumes a target.
    pub async fn pause(&self, id: &str, pause: bool) -> Result<Target, String> {
        let action = if pause { "pause" } else { "resume" };
        let path = format!("/api/v1/targets/{}/{action}", encode_segment(id));
        let body = self.call(Method::POST, &path).await?;
        api::parse("target", &body)
    }

    /// The registry document.
    pub async fn registry(&self) -> Result<Registry, String> {
        self.get_json("registry", "/api/v1/registry").await
    }

    /// A Deployment's effective exports.
    pub async fn effective(&self, deployment: &str) -> Result<Vec<EffectiveExport>, String> {
        let path = format!(
            "/api/v1/deployments/{}/metrics-exports",
            encode_segment(deployment)
        );
        self.get_json::<api::EffectiveList>("effective exports", &path)
            .await
            .map(|l| l.items)
    }

    /// Reads the stats stream until it fails; returns why and whether any
    /// snapshot arrived. `Ok(())` means the event loop is gone.
    async fn read_stream(
        &self,
        gw: usize,
        tx: &mpsc::Sender<Msg>,
        got_one: &mut bool,
    ) -> Result<(), String> {
        const PATH: &str = "/api/v1/stats/stream";
        let req = self.request(Method::GET, PATH, "text/event-stream");
        let mut resp = tokio::time::timeout(STALL, req.send())
            .await
            .map_err(|_| format!("{PATH}: no answer within {}s", STALL.as_secs()))?
            .map_err(|e| client_error(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let mut bytes = Vec::new();
            while let Ok(Ok(Some(chunk))) = tokio::time::timeout(STALL, resp.chunk()).await {
                bytes.extend_from_slice(&chunk);
                if bytes.len() >= 64 << 10 {
                    break;
                }
            }
            return Err(status_error(PATH, status, &bytes));
        }
        let mut parser = sse::Parser::new();
        loop {
            let data = match tokio::time::timeout(STALL, resp.chunk()).await {
                Err(_) => return Err(format!("no snapshot for {}s", STALL.as_secs())),
                Ok(Ok(None)) => return Err("the gateway closed the stats stream".into()),
                Ok(Err(e)) => return Err(client_error(&e)),
                Ok(Ok(Some(data))) => data,
            };
            let events = parser.feed(&data).map_err(|e| e.to_string())?;
            for ev in events {
                if ev.name == "stopped" {
                    return Err("the gateway is shutting down".into());
                }
                if ev.name != "stats" && ev.name != "message" {
                    continue;
                }
                let msg = match api::parse::<Snapshot>("stats snapshot", ev.data.as_bytes()) {
                    Ok(s) => {
                        *got_one = true;
                        Msg::Stats(gw, Box::new(s))
                    }
                    Err(e) => Msg::BadData(gw, e),
                };
                if tx.send(msg).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    /// Follows gateway `gw`'s stats stream forever, reconnecting with backoff;
    /// returns when the event loop is gone.
    pub async fn follow_stats(self, gw: usize, tx: mpsc::Sender<Msg>) {
        let mut backoff = Backoff::default();
        loop {
            if tx.send(Msg::Connecting(gw)).await.is_err() {
                return;
            }
            let mut got_one = false;
            let error = match self.read_stream(gw, &tx, &mut got_one).await {
                Ok(()) => return,
                Err(e) => e,
            };
            if got_one {
                backoff.reset();
            }
            let retry_in = backoff.next_delay();
            if tx
                .send(Msg::Disconnected {
                    gw,
                    error,
                    retry_in,
                })
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(retry_in).await;
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_ingest_port_is_named_as_such() {
        let body = b"not found: remote-write goes to POST /api/v1/write (or /api/v1/push)\n";
        let e = status_error("/api/v1/stats/stream", StatusCode::NOT_FOUND, body);
        assert!(e.contains("this is a gateway's ingest port"), "{e}");
        assert!(e.contains("admin port"), "{e}");
        let e = status_error(
            "/api/v1/stats/stream",
            StatusCode::NOT_FOUND,
            b"{\"error\":\"nope\"}",
        );
        assert!(e.contains("no stats API"), "{e}");
    }

    use super::*;

    #[test]
    fn backoff_doubles_to_ten_seconds_and_resets() {
        let mut b = Backoff::default();
        let d: Vec<u64> = (0..8).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(d, vec![500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn admin_urls_are_checked() {
        assert_eq!(
            normalize_url("127.0.0.1:9556").unwrap(),
            "http://127.0.0.1:9556"
        );
        assert_eq!(normalize_url("http://h:1/").unwrap(), "http://h:1");
        assert_eq!(normalize_url("https://h:1/").unwrap(), "https://h:1");
        for bad in ["http://u:p@h", "https://u:p@h", "http://h/x", "", "ftp://h"] {
            let e = normalize_url(bad).unwrap_err().to_string();
            assert!(!e.contains("p@"), "{e}");
        }
        assert_eq!(encode_segment("t-1/a b"), "t-1%2Fa%20b");
    }

    #[tokio::test]
    async fn a_dead_gateway_is_reported_disconnected_and_retried() {
        // A port with nothing listening.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let admin = Admin::new(
            &format!("127.0.0.1:{port}"),
            Some("sekret-token".into()),
            http_client(None).unwrap(),
        )
        .unwrap();
        assert!(!format!("{admin:?}").contains("sekret"));
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(admin.follow_stats(0, tx));
        assert!(matches!(rx.recv().await, Some(Msg::Connecting(0))));
        match rx.recv().await {
            Some(Msg::Disconnected {
                gw: 0,
                error,
                retry_in,
            }) => {
                assert!(error.to_lowercase().contains("connect"), "{error}");
                assert!(!error.contains("sekret"));
                assert_eq!(retry_in, Duration::from_millis(500));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(rx.recv().await, Some(Msg::Connecting(0))));
        drop(rx);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn stats_stream_snapshots_arrive_and_errors_are_named() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(
                req.contains("authorization: Bearer tok")
                    || req.contains("Authorization: Bearer tok"),
                "{req}"
            );
            let body = "event: stats\ndata: {\"time\":\"2026-11-25T13:00:00Z\",\"gateway\":\"g\"}\n\nevent: stats\ndata: {\"targets\":7}\n\n";
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(body.as_bytes()).await.unwrap();
        });
        let admin = Admin::new(
            &format!("http://{addr}"),
            Some("tok".into()),
            http_client(None).unwrap(),
        )
        .unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(admin.follow_stats(3, tx));
        assert!(matches!(rx.recv().await, Some(Msg::Connecting(3))));
        match rx.recv().await {
            Some(Msg::Stats(3, s)) => assert_eq!(s.gateway, "g"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(rx.recv().await, Some(Msg::BadData(3, e)) if e.contains("unreadable")));
        match rx.recv().await {
            Some(Msg::Disconnected { error, .. }) => assert!(error.contains("closed"), "{error}"),
            other => panic!("{other:?}"),
        }
        drop(rx);
        task.abort();
    }
}
