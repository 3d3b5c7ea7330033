//! Remote-write request handling without sockets (SPEC §2).
//!
//! Every transport adapter (hyper for HTTP/1.1 and HTTP/2, h3 for HTTP/3)
//! does the same three steps against [`Ingest`]:
//! 1. [`Ingest::route`] and, for a write, [`Ingest::check_head`]: drain state
//!    (503), authentication (401), content negotiation (415) and the declared
//!    `Content-Length` (413), all before a byte of the body is read;
//! 2. read the body chunk by chunk into a [`BodyReader`] (pooled buffer,
//!    bounded by the compressed limit and by the connection's read budget,
//!    under the body deadline: 413 or 408);
//! 3. [`Ingest::finish`]: the snappy length header is checked against the
//!    decompressed limit before anything is allocated (413), the shared
//!    memory budget is taken (429 when it stays exhausted), the body is
//!    decompressed into one `Bytes`, a 2.0 body is converted to 1.0, the
//!    scanner slices it into series (400/413 naming what and where), and the
//!    whole request is handed to delivery. Only then is it answered (204).
//!
//! Nothing of a refused request reaches delivery. Errors are answered as
//! `text/plain` with a one-line message; 429 and 503 carry `Retry-After`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fanout_proto::scan::Summary;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::auth::{self, AuthError, Authenticator};
use super::pool::{BufferPool, PooledBuf};
use super::refusals::{RefusalLog, Refused, NO_CREDENTIALS};
use super::IngestConfig;
use crate::budget::{
    BudgetError, ConnReadBudget, MemoryBudget, ReadBudget, ReadBudgetError, Reader,
};
use crate::handoff::{Accepted, Delivery, DeliveryError};
use crate::registry::ClusterInfo;

/// Response header counting the samples of a 2.0 request.
pub const SAMPLES_WRITTEN: &str = "x-prometheus-remote-write-samples-written";
/// Response header counting the native histograms of a 2.0 request.
pub const HISTOGRAMS_WRITTEN: &str = "x-prometheus-remote-write-histograms-written";
/// Response header counting the exemplars of a 2.0 request.
pub const EXEMPLARS_WRITTEN: &str = "x-prometheus-remote-write-exemplars-written";

const PROTO_V1: &str = "prometheus.WriteRequest";
const PROTO_V2: &str = "io.prometheus.write.v2.Request";

/// Remote-write protocol version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Remote-write 1.0 (`prometheus.WriteRequest`).
    V1,
    /// Remote-write 2.0 (`io.prometheus.write.v2.Request`).
    V2,
}

/// What a path on the ingest port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /api/v1/write` or `/api/v1/push`.
    Write,
    /// `GET /healthz`.
    Healthz,
    /// `GET /readyz`.
    Readyz,
    /// A known path with the wrong method.
    MethodNotAllowed(&'static str),
    /// Anything else.
    NotFound,
}

/// A refusal: status, one-line message and, for 429/503, when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status.
    pub status: StatusCode,
    /// What was wrong and where.
    pub message: String,
    /// `Retry-After`, for 429 and 503.
    pub retry_after: Option<Duration>,
    /// Set when the sender is refused (credentials, its rate limit) rather
    /// than its request: logged at WARN, once a minute ([`RefusalLog`]).
    pub refused: Option<Refused>,
}

impl Rejection {
    /// A rejection without `Retry-After`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
            refused: None,
        }
    }

    fn retry(status: StatusCode, message: impl Into<String>, after: Duration) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: Some(after),
            refused: None,
        }
    }

    /// The HTTP response for this rejection.
    pub fn into_response(self) -> Response<Bytes> {
        let mut resp = text(self.status, format!("{}\n", self.message));
        if let Some(after) = self.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            let h = resp.headers_mut();
            h.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fanout\""),
            );
            h.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"fanout\""),
            );
        }
        resp
    }
}

fn text(status: StatusCode, body: String) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Reads `Content-Type` and `Content-Encoding`: 1.0, 2.0, or 415.
pub fn negotiate(headers: &HeaderMap) -> Result<Protocol, Rejection> {
    let unsupported = |what: String| Rejection::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, what);
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        let enc = enc.to_str().unwrap_or("").trim();
        if !enc.eq_ignore_ascii_case("snappy") {
            return Err(unsupported(format!(
                "unsupported Content-Encoding {enc:?}: remote-write bodies must be snappy (block format)"
            )));
        }
    }
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Protocol::V1);
    };
    let ct = ct
        .to_str()
        .map_err(|_| unsupported("Content-Type is not visible ASCII".into()))?;
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/x-protobuf") {
        return Err(unsupported(format!(
            "unsupported Content-Type {media:?}: expected application/x-protobuf"
        )));
    }
    let mut protocol = Protocol::V1;
    for param in parts {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("proto") {
            continue;
        }
        let value = value.trim().trim_matches('"');
        protocol = match value {
            PROTO_V1 => Protocol::V1,
            PROTO_V2 => Protocol::V2,
            other => {
                return Err(unsupported(format!(
                    "unsupported remote-write proto {other:?} in Content-Type: expected {PROTO_V1} (1.0) or {PROTO_V2} (2.0)"
                )))
            }
        };
    }
    Ok(protocol)
}

/// Tracks drain state and in-flight writes.
#[derive(Debug, Default)]
pub struct DrainState {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl DrainState {
    /// Starts draining: `/readyz` and new writes answer 503.
    pub fn begin(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether draining began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Writes between [`Ingest::check_head`] and their answer.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no write is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }
}

/// One write in flight; leaves on drop.
#[derive(Debug)]
struct InFlight(Arc<DrainState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A write whose head passed every check; its body may be read now.
#[derive(Debug)]
pub struct Admitted {
    cluster: Arc<ClusterInfo>,
    protocol: Protocol,
    content_length: Option<u64>,
    _in_flight: InFlight,
}

impl Admitted {
    /// The authenticated cluster.
    pub fn cluster(&self) -> &Arc<ClusterInfo> {
        &self.cluster
    }

    /// The negotiated protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}

/// Collects a compressed body into a pooled buffer, within the compressed
/// limit and the connection's read budget.
#[derive(Debug)]
pub struct BodyReader {
    buf: PooledBuf,
    max: usize,
    conn: ConnReadBudget,
    reserved: Option<OwnedSemaphorePermit>,
    /// This body's share of the gateway-wide read budget.
    global: Reader,
    deadline: Instant,
    retry_after: Duration,
}

impl BodyReader {
    /// Awaits `next` (the body's next piece) until the body deadline (408),
    /// or until the read budget evicts this body for a newer one (503).
    pub async fn within<F: std::future::Future>(&self, next: F) -> Result<F::Output, Rejection> {
        tokio::select! {
            r = tokio::time::timeout_at(self.deadline, next) => r.map_err(|_| body_timeout()),
            _ = self.global.evicted() => Err(self.budget_rejection(ReadBudgetError::Evicted)),
        }
    }

    fn budget_rejection(&self, e: ReadBudgetError) -> Rejection {
        Rejection::retry(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
            self.retry_after,
        )
    }

    /// Appends one chunk.
    pub async fn push(&mut self, chunk: &[u8]) -> Result<(), Rejection> {
        let total = self.buf.len() + chunk.len();
        if total > self.max {
            return Err(too_large_compressed(total as u64, self.max));
        }
        if !self
            .conn
            .reserve_to(&mut self.reserved, total as u64, self.deadline)
            .await
        {
            return Err(body_timeout());
        }
        if let Err(e) = self.global.reserve_to(total as u64).await {
            return Err(self.budget_rejection(e));
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// The body read so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

fn too_large_compressed(len: u64, max: usize) -> Rejection {
    Rejection::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("compressed body of {len} bytes or more exceeds the limit of {max} bytes (max-compressed-body)"),
    )
}

/// 408 for a body that did not arrive before the body deadline.
pub fn body_timeout() -> Rejection {
    Rejection::new(
        StatusCode::REQUEST_TIMEOUT,
        "request body not received within the body read timeout",
    )
}

/// How a write went, for the adapter's log and response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Protocol of the request.
    pub protocol: Protocol,
    /// What it held.
    pub summary: Summary,
}

impl Written {
    /// The 204 response (with the 2.0 Written headers for 2.0).
    pub fn into_response(self) -> Response<Bytes> {
        let mut resp = Response::new(Bytes::new());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        if self.protocol == Protocol::V2 {
            let h = resp.headers_mut();
            let s = &self.summary;
            h.insert(SAMPLES_WRITTEN, HeaderValue::from(s.samples));
            h.insert(HISTOGRAMS_WRITTEN, HeaderValue::from(s.histograms));
            h.insert(EXEMPLARS_WRITTEN, HeaderValue::from(s.exemplars));
        }
        resp
    }
}

/// The transport-independent ingest service.
pub struct Ingest<D> {
    auth: Arc<dyn Authenticator>,
    delivery: Arc<D>,
    budget: MemoryBudget,
    read_budget: ReadBudget,
    config: IngestConfig,
    pool: BufferPool,
    drain: Arc<DrainState>,
    rates: super::limits::RateLimits,
    refusals: RefusalLog,
}

impl<D: Delivery> Ingest<D> {
    /// Counts one answered write (any status) by transport, for the stats
    /// and `/metrics`; health probes and unknown paths are not counted.
    pub fn record_write_response(&self, transport: &'static str, status: StatusCode) {
        self.delivery.record_response(transport, status.as_u16());
    }

    /// A service over `auth`, `delivery` and the shared `budget`.
    pub fn new(
        config: IngestConfig,
        auth: Arc<dyn Authenticator>,
        delivery: Arc<D>,
        budget: MemoryBudget,
    ) -> Self {
        // One body of the largest size always fits.
        let read_budget = ReadBudget::new(
            config
                .body_read_budget
                .max(config.max_compressed_body as u64),
        );
        Self {
            auth,
            delivery,
            budget,
            read_budget,
            pool: BufferPool::new(64, 4 << 20),
            rates: super::limits::RateLimits::new(config.cluster_samples_per_second),
            refusals: RefusalLog::default(),
            config,
            drain: Arc::new(DrainState::default()),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &IngestConfig {
        &self.config
    }

    /// Drain state and in-flight writes.
    pub fn drain_state(&self) -> &Arc<DrainState> {
        &self.drain
    }

    /// A fresh per-connection read budget.
    pub fn conn_budget(&self) -> ConnReadBudget {
        ConnReadBudget::new(self.config.max_compressed_body as u64)
    }

    /// Classifies a request line.
    pub fn route(&self, method: &Method, path: &str) -> Route {
        match path {
            "/api/v1/write" | "/api/v1/push" => {
                if method == Method::POST {
                    Route::Write
                } else {
                    Route::MethodNotAllowed("POST")
                }
            }
            "/healthz" | "/readyz" if method != Method::GET && method != Method::HEAD => {
                Route::MethodNotAllowed("GET")
            }
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            _ => Route::NotFound,
        }
    }

    /// The response for any route but [`Route::Write`].
    pub fn respond_other(&self, route: Route) -> Response<Bytes> {
        match route {
            Route::Healthz => text(StatusCode::OK, "ok\n".into()),
            Route::Readyz => {
                if self.drain.is_draining() {
                    Rejection::retry(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "draining: not accepting writes",
                        self.config.retry_after,
                    )
                    .into_response()
                } else if !self.auth.ready() {
                    Rejection::retry(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "registry not loaded yet",
                        self.config.retry_after,
                    )
                    .into_response()
                } else {
                    text(StatusCode::OK, "ready\n".into())
                }
            }
            Route::MethodNotAllowed(allow) => {
                let mut r = Rejection::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("method not allowed: use {allow}"),
                )
                .into_response();
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                r
            }
            Route::NotFound | Route::Write => Rejection::new(
                StatusCode::NOT_FOUND,
                "not found: remote-write goes to POST /api/v1/write (or /api/v1/push)",
            )
            .into_response(),
        }
    }

    /// Checks a write's headers before its body is read.
    pub fn check_head(&self, headers: &HeaderMap) -> Result<Admitted, Rejection> {
        if self.drain.is_draining() {
            return Err(Rejection::retry(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining: this gateway is shutting down, retry on another",
                self.config.retry_after,
            ));
        }
        let cluster = auth::authenticate(self.auth.as_ref(), headers).map_err(|e| {
            let refused = match e {
                AuthError::Missing | AuthError::Malformed(_) => Refused {
                    cluster: None,
                    reason: NO_CREDENTIALS,
                },
                // The id the sender claimed (basic auth), never the token.
                AuthError::Unknown => Refused {
                    cluster: auth::credentials(headers).ok().and_then(|c| c.cluster_id),
                    reason: "unknown token",
                },
            };
            Rejection {
                refused: Some(refused),
                ..Rejection::new(StatusCode::UNAUTHORIZED, e.to_string())
            }
        })?;
        let protocol = negotiate(headers)?;
        let content_length = match headers.get(header::CONTENT_LENGTH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| {
                        Rejection::new(StatusCode::BAD_REQUEST, "invalid Content-Length header")
                    })?,
            ),
        };
        if let Some(len) = content_length {
            if len > self.config.max_compressed_body as u64 {
                return Err(too_large_compressed(len, self.config.max_compressed_body));
            }
        }
        Ok(Admitted {
            cluster,
            protocol,
            content_length,
            _in_flight: self.drain.enter(),
        })
    }

    /// A reader for `admitted`'s body on a connection with budget `conn`.
    pub fn body_reader(&self, admitted: &Admitted, conn: &ConnReadBudget) -> BodyReader {
        let hint = admitted
            .content_length
            .unwrap_or(0)
            .min(self.config.max_compressed_body as u64) as usize;
        BodyReader {
            buf: self.pool.get(hint),
            max: self.config.max_compressed_body,
            conn: conn.clone(),
            reserved: None,
            global: self.read_budget.reader(),
            deadline: Instant::now() + self.config.body_read_timeout,
            retry_after: self.config.retry_after,
        }
    }

    /// Decompresses, validates and hands a fully read body to delivery.
    pub async fn finish(&self, admitted: Admitted, body: BodyReader) -> Result<Written, Rejection> {
        let limits = &self.config;
        if let Err(over) = self
            .rates
            .check(&admitted.cluster, std::time::Instant::now())
        {
            return Err(Rejection {
                refused: Some(Refused {
                    cluster: Some(admitted.cluster.id.clone()),
                    reason: "over its samples/s limit",
                }),
                ..Rejection::retry(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "cluster {} is over its rate of {} samples/s (limits.samplesPerSecond); retry after {} s",
                        admitted.cluster.id,
                        over.rate,
                        over.retry_after.as_secs()
                    ),
                    over.retry_after,
                )
            });
        }
        let compressed = body.bytes();
        let bad = |what: String| Rejection::new(StatusCode::BAD_REQUEST, what);
        // The declared length is checked before anything is allocated; a
        // header beyond snappy's own range (>= 4 GiB) is reported as the
        // limit it exceeds.
        let declared = fanout_proto::snappy::decompressed_len(compressed)
            .map_err(|e| bad(format!("corrupt snappy body: {e}")))?;
        if declared > limits.max_decompressed_body as u64 {
            return Err(Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "decompressed body of {declared} bytes (from the snappy header) exceeds the limit of {} bytes (max-decompressed-body)",
                    limits.max_decompressed_body
                ),
            ));
        }
        // A header claiming more than the body can hold is corrupt: refused
        // before any memory is reserved or allocated for it.
        let most = fanout_proto::snappy::max_expansion(compressed.len());
        if declared > most {
            return Err(bad(format!(
                "corrupt snappy body: the header declares {declared} bytes, more than {} compressed bytes can hold (at most {most})",
                compressed.len()
            )));
        }
        // 2.0 bodies are converted to a new 1.0 body; reserve for both.
        let first = match admitted.protocol {
            Protocol::V1 => declared,
            Protocol::V2 => 2 * declared,
        };
        let mut permit = self.admit(first).await?;
        let raw = fanout_proto::snappy::decompress(compressed, limits.max_decompressed_body)
            .map_err(|e| bad(format!("corrupt snappy body: {e}")))?;
        drop(body); // the compressed buffer goes back to the pool
        let scan_err = |version: &str, e: fanout_proto::ScanError| {
            let status = if e.is_limit() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            Rejection::new(
                status,
                format!("invalid remote-write {version} request: {e}"),
            )
        };
        let v1 = match admitted.protocol {
            Protocol::V1 => raw,
            Protocol::V2 => {
                // A 2.0 body can expand without bound (series name their
                // labels by reference): measured first, refused past the
                // decompressed limit, and the memory for the 1.0 body is
                // held before it is made.
                let max = limits.max_decompressed_body;
                let need = fanout_proto::v2read::v1_len(&raw, &limits.scan, max)
                    .map_err(|e| scan_err("2.0", e))?;
                let want = (raw.len() + need) as u64;
                let have = permit.bytes();
                if want > have {
                    self.grow(&mut permit, want - have).await?;
                }
                let (v1, _) = fanout_proto::v2read::to_v1_measured(&raw, &limits.scan, need)
                    .map_err(|e| scan_err("2.0", e))?;
                drop(raw);
                permit.shrink_to(v1.len() as u64);
                v1
            }
        };
        let mut series = Vec::new();
        let summary = fanout_proto::scan::scan_v1(&v1, &limits.scan, &mut series).map_err(|e| {
            scan_err(
                if admitted.protocol == Protocol::V1 {
                    "1.0"
                } else {
                    "2.0"
                },
                e,
            )
        })?;
        let series_bytes =
            (series.capacity() * std::mem::size_of::<fanout_proto::scan::Series>()) as u64;
        self.grow(&mut permit, series_bytes).await?;
        let batch = Accepted {
            cluster: admitted.cluster.clone(),
            body: v1,
            series,
            summary,
            permit,
        };
        self.delivery.submit(batch).await.map_err(|e| match e {
            DeliveryError::Overloaded(_) => Rejection::retry(
                StatusCode::TOO_MANY_REQUESTS,
                e.to_string(),
                limits.retry_after,
            ),
            _ => Rejection::retry(
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
                limits.retry_after,
            ),
        })?;
        self.rates.take(
            &admitted.cluster,
            (summary.samples + summary.histograms) as u64,
            std::time::Instant::now(),
        );
        Ok(Written {
            protocol: admitted.protocol,
            summary,
        })
    }

    async fn admit(&self, bytes: u64) -> Result<crate::budget::MemoryPermit, Rejection> {
        self.budget
            .acquire_timeout(bytes, self.config.admission_timeout)
            .await
            .map_err(|e| self.budget_rejection(e))
    }

    async fn grow(
        &self,
        permit: &mut crate::budget::MemoryPermit,
        bytes: u64,
    ) -> Result<(), Rejection> {
        self.budget
            .grow(permit, bytes, self.config.admission_timeout)
            .await
            .map_err(|e| self.budget_rejection(e))
    }

    /// Logs a refused write from `remote`: a refused sender at WARN, once a
    /// minute per cluster and reason ([`RefusalLog`]); 429 and 5xx at INFO,
    /// the rest (the sender's own mistakes, answered in the body) at DEBUG.
    pub fn log_rejection(
        &self,
        cluster: Option<&str>,
        transport: &str,
        r: &Rejection,
        remote: Option<std::net::SocketAddr>,
    ) {
        if let Some(refused) = &r.refused {
            let now = std::time::Instant::now();
            self.refusals
                .log(refused, remote, r.status.as_u16(), &r.message, now);
        } else if r.status.is_server_error() || r.status == StatusCode::TOO_MANY_REQUESTS {
            tracing::info!(cluster, transport, status = r.status.as_u16(), reason = %r.message, "ingest: write refused");
        } else {
            tracing::debug!(cluster, transport, status = r.status.as_u16(), reason = %r.message, "ingest: write refused");
        }
    }

    fn budget_rejection(&self, e: BudgetError) -> Rejection {
        match e {
            BudgetError::TooLarge { .. } => Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request too large for this gateway: {e} (memory-budget)"),
            ),
            BudgetError::Exhausted { .. } => Rejection::retry(
                StatusCode::TOO_MANY_REQUESTS,
                format!("overloaded: {e}"),
                self.config.retry_after,
            ),
        }
    }
}
