//! The HTTP adapter: one shared hyper-util client (connection pool, keep-alive)
//! for every target, `http://` and `https://` (rustls with the `ring`
//! provider and the webpki roots), and [`HttpSender::send`], which turns one
//! attempt into a [`SendResult`] for the state machine.
//!
//! Requests carry the remote-write 1.0 headers (`Content-Encoding: snappy`,
//! `Content-Type: application/x-protobuf`,
//! `X-Prometheus-Remote-Write-Version: 0.1.0`, `User-Agent`; for 2.0 bodies
//! the 2.0 content type and version, see `protocol.rs`), the target's
//! custom headers and its auth. Error messages name the kind of failure;
//! every text that comes from the target or from the request (error bodies,
//! error chains) passes the target's scrubber before it leaves [`HttpSender::send`],
//! so no credential reaches `lastError`, the logs or the stats API
//! (endpoints carry no userinfo: validation refuses it).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use fanout_proto::units::format_duration;

use super::policy::{parse_retry_after, SendResult};
use super::sigv4;
use crate::registry::resolve::{Auth, TargetConfig};
use crate::registry::Target;

/// `User-Agent` of every delivery request.
pub const USER_AGENT: &str = concat!("fanout/", env!("CARGO_PKG_VERSION"));
/// Bytes of a response body kept for the last error.
pub const BODY_START: usize = 256;
/// Bytes of an error body scrubbed before it is cut to [`BODY_START`].
const BODY_SCRUBBED: usize = 8 << 10;
/// Bytes of a response body read at most (so the connection can be reused).
const BODY_READ_MAX: usize = 64 << 10;

/// A TCP or TLS stream.
pub enum Stream {
    /// `http://`.
    Plain(TcpStream),
    /// `https://`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    // Without these hyper copies every request body into its write buffer
    // ("flatten"); with them it writes the head and the body together
    // (writev), the body straight from the batch's shared bytes.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Default of `--target-connect-timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `--target-tls-handshake-timeout`.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a new connection may take: name resolution and TCP connect
/// (`connect`), then the TLS handshake (`tls`). They bound connections, which
/// targets on one host share, so they are the gateway's (flags), not a
/// target's.
#[derive(Debug, Clone, Copy)]
pub struct ConnectTimeouts {
    /// DNS and TCP connect.
    pub connect: Duration,
    /// The TLS handshake.
    pub tls: Duration,
}

impl Default for ConnectTimeouts {
    fn default() -> Self {
        ConnectTimeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            tls: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        }
    }
}

/// A connection phase that ran out of time: its message is the reason a
/// target shows (`connect timeout after 10s`).
#[derive(Debug)]
pub struct PhaseTimeout {
    phase: &'static str,
    after: Duration,
}

impl std::fmt::Display for PhaseTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} timeout after {}",
            self.phase,
            format_duration(self.after)
        )
    }
}

impl std::error::Error for PhaseTimeout {}

/// Connects `http://` and `https://` URIs.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: tokio_rustls::TlsConnector,
    timeouts: ConnectTimeouts,
}

impl Connector {
    /// A connector trusting the webpki roots.
    pub fn new(timeouts: ConnectTimeouts) -> Connector {
        Connector::with_alpn(Vec::new(), timeouts)
    }

    /// [`Self::new`] offering `h2` by ALPN, for HTTP/2 targets.
    pub fn h2(timeouts: ConnectTimeouts) -> Connector {
        Connector::with_alpn(vec![b"h2".to_vec()], timeouts)
    }

    fn with_alpn(alpn: Vec<Vec<u8>>, timeouts: ConnectTimeouts) -> Connector {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        // DNS and connect are bounded as a whole in `call`, with a message
        // of their own.
        http.set_connect_timeout(None);
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| {
                // The ring provider supports the default versions; keep a
                // working (TLS-less) client if it ever does not.
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("TLS 1.3 is supported by ring")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
            });
        let mut config = config;
        config.alpn_protocols = alpn;
        Connector {
            http,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeouts,
        }
    }
}

impl Default for Connector {
    fn default() -> Self {
        Connector::new(ConnectTimeouts::default())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().unwrap_or("").to_owned();
        let connecting = tower::Service::<Uri>::call(&mut self.http, uri);
        let (tls, timeouts) = (self.tls.clone(), self.timeouts);
        Box::pin(async move {
            let timeout = |phase, after| PhaseTimeout { phase, after };
            let tcp = tokio::time::timeout(timeouts.connect, connecting)
                .await
                .map_err(|_| timeout("connect", timeouts.connect))??
                .into_inner();
            if !https {
                return Ok(TokioIo::new(Stream::Plain(tcp)));
            }
            let name = rustls::pki_types::ServerName::try_from(host)?;
            let stream = tokio::time::timeout(timeouts.tls, tls.connect(name, tcp))
                .await
                .map_err(|_| timeout("tls handshake", timeouts.tls))??;
            Ok(TokioIo::new(Stream::Tls(Box::new(stream))))
        })
    }
}

/// Sends batches to targets over the shared client.
#[derive(Clone)]
pub struct HttpSender {
    client: Client<Connector, Full<Bytes>>,
    /// For targets with `delivery.http2`: one connection per target
    /// multiplexing its lanes' requests.
    h2: Client<Connector, Full<Bytes>>,
}

impl Default for HttpSender {
    fn default() -> Self {
        HttpSender::new(ConnectTimeouts::default())
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

impl HttpSender {
    /// A sender with a pooled client whose new connections are bounded by
    /// `timeouts`.
    pub fn new(timeouts: ConnectTimeouts) -> HttpSender {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(Connector::new(timeouts));
        let h2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(20))
            .timer(hyper_util::rt::TokioTimer::new())
            .build(Connector::h2(timeouts));
        HttpSender { client, h2 }
    }

    /// Builds attempt `attempt` (1 for the first) of the request for `body`
    /// to `target` at wall time `now`. A retry carries `Retry-Attempt: N`
    /// (N retries so far, as Prometheus 3 sends it), so a receiver can tell
    /// a resent batch from a new one.
    /// With `v2` the body is a 2.0 request and carries its content type and
    /// version header.
    pub fn request(
        target: &TargetConfig,
        body: Bytes,
        now: SystemTime,
        attempt: u32,
        v2: bool,
    ) -> Result<Request<Full<Bytes>>, String> {
        let uri: Uri = target
            .endpoint
            .parse()
            .map_err(|e| format!("invalid endpoint: {e}"))?;
        let (content_type, version) = match v2 {
            true => (
                "application/x-protobuf;proto=io.prometheus.write.v2.Request",
                "2.0.0",
            ),
            false => ("application/x-protobuf", "0.1.0"),
        };
        let mut req = Request::post(uri)
            .header(http::header::CONTENT_ENCODING, "snappy")
            .header(http::header::CONTENT_TYPE, content_type)
            .header("x-prometheus-remote-write-version", version)
            .header(http::header::USER_AGENT, USER_AGENT)
            .body(Full::new(body.clone()))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let headers = req.headers_mut();
        if attempt > 1 {
            headers.insert("retry-attempt", HeaderValue::from(attempt - 1));
        }
        for (k, v) in &target.headers {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v.expose()),
            ) else {
                return Err(format!("invalid custom header {k:?}"));
            };
            // Every custom header value is a secret (docs/registry.md).
            let mut value = value;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let sensitive = |s: String| {
            let mut v = HeaderValue::from_str(&s).map_err(|_| "invalid credentials".to_owned())?;
            v.set_sensitive(true);
            Ok::<_, String>(v)
        };
        match &target.auth {
            Auth::None => {}
            Auth::Bearer { token } => {
                headers.insert(
                    http::header::AUTHORIZATION,
                    sensitive(format!("Bearer {}", token.expose()))?,
                );
            }
            Auth::Basic { username, password } => {
                let b64 = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{}", password.expose()));
                headers.insert(
                    http::header::AUTHORIZATION,
                    sensitive(format!("Basic {b64}"))?,
                );
            }
            Auth::Sigv4 {
                region,
                access_key,
                secret_key,
                ..
            } => {
                let keys = match (access_key, secret_key) {
                    (Some(a), Some(s)) => Some((a.as_str(), s.expose())),
                    _ => None,
                };
                let creds = sigv4::resolve(keys)?;
                // Signed last: every header above is part of the signature.
                sigv4::sign_request(&mut req, &body, &creds, region, "aps", now)?;
            }
        }
        Ok(req)
    }

    /// One attempt: sends `body` to `target` within its `timeout`.
    ///
    /// Every text in the result that did not come from Fanout itself (an
    /// error body, an error chain) has passed the target's
    /// [`Scrubber`](crate::registry::secrets::Scrubber); a 2xx body is not
    /// kept at all.
    pub async fn send(&self, target: &Target, body: Bytes, attempt: u32) -> SendResult {
        self.send_as(target, body, attempt, false).await.0
    }

    /// [`Self::send`] of a 1.0 or (`v2`) a 2.0 body; also returns the
    /// response's `X-Prometheus-Remote-Write-Samples-Written` plus
    /// `-Histograms-Written`, when the first is there.
    pub async fn send_as(
        &self,
        target: &Target,
        body: Bytes,
        attempt: u32,
        v2: bool,
    ) -> (SendResult, Option<u64>) {
        let config = &target.config;
        let scrub = |text: &str| target.scrubber.scrub(text).into_owned();
        let req = match Self::request(config, body, SystemTime::now(), attempt, v2) {
            Ok(r) => r,
            // A request that cannot be built is never deliverable.
            Err(message) => {
                let result = SendResult::Status {
                    status: 400,
                    retry_after: None,
                    body: scrub(&format!("not sent: {message}")),
                };
                return (result, None);
            }
        };
        // What the attempt waits for when the target's `timeout` passes.
        let reading_body = std::sync::atomic::AtomicBool::new(false);
        let attempt = async {
            let client = match config.delivery.http2 {
                true => &self.h2,
                false => &self.client,
            };
            let resp = match client.request(req).await {
                Ok(r) => r,
                Err(e) if e.is_connect() => {
                    // A connect phase that timed out says only that.
                    let phase =
                        std::iter::successors(std::error::Error::source(&e), |e| e.source())
                            .find_map(|e| e.downcast_ref::<PhaseTimeout>());
                    let message = match phase {
                        Some(p) => p.to_string(),
                        None => scrub(&error_chain(&e)),
                    };
                    return (SendResult::Connect(message), None);
                }
                Err(e) => return (SendResult::Io(scrub(&error_chain(&e))), None),
            };
            reading_body.store(true, std::sync::atomic::Ordering::Relaxed);
            let status = resp.status().as_u16();
            let count = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            let written = count("x-prometheus-remote-write-samples-written").map(|samples| {
                samples + count("x-prometheus-remote-write-histograms-written").unwrap_or(0)
            });
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let success = (200..300).contains(&status);
            // An error body is scrubbed before it is cut to its start, so
            // the cut never leaves the beginning of a secret behind.
            let keep = if success { 0 } else { BODY_SCRUBBED };
            let mut body = resp.into_body();
            let mut start = Vec::new();
            let mut read = 0usize;
            while read < BODY_READ_MAX {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            read += data.len();
                            let room = keep.saturating_sub(start.len());
                            start.extend_from_slice(&data[..data.len().min(room)]);
                        }
                    }
                    _ => break,
                }
            }
            let body = if success {
                String::new()
            } else {
                let text = String::from_utf8_lossy(&start);
                let mut text = target.scrubber.scrub(&text).into_owned();
                let mut end = BODY_START.min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                text
            };
            // A SigV4 target's 403 may be credentials that expired or
            // rotated: the next attempt reads them again (`policy::classify`
            // decides from the body whether there is one).
            if status == 403 && matches!(config.auth, Auth::Sigv4 { .. }) {
                sigv4::reload();
            }
            let result = SendResult::Status {
                status,
                retry_after,
                body,
            };
            (result, written)
        };
        let limit = config.delivery.timeout;
        match tokio::time::timeout(limit, attempt).await {
            Ok(r) => r,
            // The attempt is dropped, and its connection with it (hyper
            // does not pool a connection whose exchange did not finish).
            Err(_) if reading_body.load(std::sync::atomic::Ordering::Relaxed) => (
                SendResult::Timeout(format!(
                    "response body not complete within {}",
                    format_duration(limit)
                )),
                None,
            ),
            Err(_) => (
                SendResult::Timeout(format!("no response within {}", format_duration(limit))),
                None,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::resolve::DeliveryOptions;
    use crate::registry::Secret;

    fn target(auth: Auth) -> TargetConfig {
        TargetConfig {
            endpoint:
                "https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-1/api/v1/remote_write"
                    .into(),
            auth,
            headers: [("x-scope-orgid".to_owned(), Secret::new("team-a"))].into(),
            labels: Default::default(),
            delivery: DeliveryOptions::default(),
        }
    }

    #[test]
    fn deliver_http_request_has_remote_write_headers_and_auth() {
        let body = Bytes::from_static(b"abc");
        let r = HttpSender::request(
            &target(Auth::Bearer {
                token: Secret::new("tok-1"),
            }),
            body.clone(),
            SystemTime::now(),
            1,
            false,
        )
        .unwrap();
        let h = r.headers();
        assert!(h.get("retry-attempt").is_none(), "not on a first attempt");
        assert_eq!(h["content-encoding"], "snappy");
        assert_eq!(h["content-type"], "application/x-protobuf");
        assert_eq!(h["x-prometheus-remote-write-version"], "0.1.0");
        assert!(h["user-agent"].to_str().unwrap().starts_with("fanout/"));
        assert_eq!(h["x-scope-orgid"], "team-a");
        assert_eq!(h["authorization"], "Bearer tok-1");
        assert!(h["authorization"].is_sensitive());

        let r = HttpSender::request(
            &target(Auth::Basic {
                username: "u".into(),
                password: Secret::new("p"),
            }),
            body.clone(),
            SystemTime::now(),
            3,
            true,
        )
        .unwrap();
        assert_eq!(
            r.headers()["content-type"],
            "application/x-protobuf;proto=io.prometheus.write.v2.Request"
        );
        assert_eq!(r.headers()["x-prometheus-remote-write-version"], "2.0.0");
        assert_eq!(r.headers()["authorization"], "Basic dTpw");
        assert_eq!(r.headers()["retry-attempt"], "2", "the second retry");

        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        let r = HttpSender::request(
            &target(Auth::Sigv4 {
                region: "us-east-1".into(),
                access_key: Some("AKID".into()),
                secret_key: Some(Secret::new("SECRET")),
                role_arn: None,
            }),
            body,
            t,
            1,
            false,
        )
        .unwrap();
        let h = r.headers();
        assert_eq!(h["x-amz-date"], "20130524T000000Z");
        // SHA-256 of the body ("abc", FIPS 180-2's example).
        assert_eq!(
            h["x-amz-content-sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let auth = h["authorization"].to_str().unwrap();
        // Every header is signed (user-agent aside, as the AWS SDKs do).
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKID/20130524/us-east-1/aps/aws4_request, SignedHeaders=content-encoding;content-type;host;x-amz-content-sha256;x-amz-date;x-prometheus-remote-write-version;x-scope-orgid, Signature="), "{auth}");
        assert!(!auth.contains("SECRET"));
    }
}
