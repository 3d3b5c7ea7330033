//! The traffic generator behind `fanout-load run`.
//!
//! # Work split
//! The sample stream of cluster `c` is the sequence of positions
//! `p = 0, 1, 2, ...` where `seq = p / S` and `series = p % S` (`S` series per
//! cluster): round after round, every series once per round, like a
//! Prometheus shard scraping every target once per interval. Requests are
//! numbered globally; request `b` belongs to cluster `b % N` and carries
//! positions `[k * R, (k + 1) * R)` of it with `k = b / N` and `R` samples per
//! request. Workers (one per connection, or several per HTTP/2 or HTTP/3
//! connection with `streams`) take request numbers from one atomic counter,
//! so no two requests overlap and no lock is taken on the hot path.
//!
//! A cluster has one request in flight at a time, like a Prometheus shard
//! (`worker::Turns`): request `b` waits until the cluster's request
//! `b - N` was answered (or failed), so a series' rounds reach the gateway
//! in order and any sample out of order at a sink is the gateway's doing.
//! With more connections than clusters, some connections wait.
//!
//! # Rate and bounds
//! With a target rate, request `b` is not sent before `start + b * R / rate`;
//! a late request is sent at once (the rate is a ceiling, not a schedule to
//! catch up with). The run stops issuing requests when `--duration` has
//! passed or `--samples` have been handed out, and waits for what is in
//! flight (each request is bounded by the request timeout).
//!
//! # Retries
//! By default the generator does not retry. With [`GeneratorConfig::retry`]
//! a request answered 429 or 503, or not answered at all (a connection
//! refused or reset, a timeout: a gateway restarting), is sent again, with
//! the same body (same timestamps), like Prometheus: after the answer's
//! `Retry-After` (seconds) if it has one, else after a backoff doubling from
//! 30 ms to 5 s, both capped at 5 s, on a new connection when the old one is
//! gone; until it is answered otherwise or the run's deadline would pass.
//! Each such attempt counts in [`RunSummary::retries`] (and a missing answer
//! in `transport_errors` too). A request that was processed but whose
//! answer was lost arrives twice: a duplicate, never a loss.
//!
//! # Order
//! Which series a position is follows the scenario's round order
//! ([`crate::scenario`], "Order of a cluster's series"): Deployment after
//! Deployment by default, or `deployments_per_request` Deployments
//! interleaved, so that each request carries that many.
//!
//! # Files
//! `body.rs` builds request bodies, `worker.rs` splits the work and paces
//! it, `retry.rs` sends a request again, `summary.rs` is what a run did.
//!
//! # Sample identity
//! Values and timestamps follow [`crate::identity`]. A request that fails
//! (and is not retried) is counted (by status or transport error), and its

mod body;
mod retry;
mod summary;
mod worker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

use crate::client::{ClientError, Target, Transport};
use crate::identity::MAX_SEQ;
use crate::scenario::{Scenario, ScenarioError};

pub use body::RequestBuilder;
use summary::merge;
pub use summary::{ClusterAck, Latency, RunSummary};
use worker::Worker;

/// Remote-write protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Protocol {
    /// Remote-write 1.0 (`prometheus.WriteRequest`).
    V1,
    /// Remote-write 2.0 (`io.prometheus.write.v2.Request`).
    V2,
}

/// How a cluster authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum AuthMode {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// Basic auth, cluster id as user, token as password.
    Basic,
    /// No Authorization header.
    None,
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    /// The remote-write URL.
    pub url: String,
    /// The simulated fleet.
    pub scenario: Scenario,
    /// Remote-write version.
    pub protocol: Protocol,
    /// HTTP version.
    pub transport: Transport,
    /// How clusters authenticate.
    pub auth: AuthMode,
    /// Extra headers on every request.
    pub headers: Vec<(String, String)>,
    /// Connections to open.
    pub connections: usize,
    /// Concurrent requests per HTTP/2 or HTTP/3 connection.
    pub streams: usize,
    /// Samples per request.
    pub samples_per_request: usize,
    /// Target rate in samples per second (`None`: as fast as possible).
    pub rate: Option<f64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many samples.
    pub total_samples: Option<u64>,
    /// Timeout of one request.
    pub timeout: Duration,
    /// PEM certificate(s) to trust for https and HTTP/3.
    pub ca_cert: Option<std::path::PathBuf>,
    /// Round to start from (so runs against the same sink do not repeat identities).
    pub first_round: u32,
    /// Print one progress line per second on stderr.
    pub progress: bool,
    /// Send a request answered 429 or 503 again (see the module doc).
    pub retry: bool,
    /// Set (by Ctrl-C) to end the run early: no new request is sent, those
    /// in flight get their answer, and the summary says so.
    pub interrupt: Option<Arc<AtomicBool>>,
}

impl Default for GeneratorConfig {
    fn default() -> GeneratorConfig {
        GeneratorConfig {
            url: "http://127.0.0.1:9555/api/v1/write".to_owned(),
            scenario: Scenario::default(),
            protocol: Protocol::V1,
            transport: Transport::Http1,
            auth: AuthMode::Bearer,
            headers: Vec::new(),
            connections: 4,
            streams: 1,
            samples_per_request: 2000,
            rate: None,
            duration: Some(Duration::from_secs(10)),
            total_samples: None,
            timeout: Duration::from_secs(30),
            ca_cert: None,
            first_round: 0,
            progress: false,
            retry: false,
            interrupt: None,
        }
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    /// The scenario is out of range.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The target or TLS setup is unusable.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A setting is invalid.
    #[error("config: {0}")]
    Config(String),
}

/// Counters shared by the workers.
pub(super) struct Stats {
    pub(super) requests: AtomicU64,
    pub(super) samples_ok: AtomicU64,
    pub(super) samples_failed: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) transport_errors: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) codes: Mutex<BTreeMap<u16, u64>>,
    /// Microseconds.
    pub(super) latency: Mutex<Histogram<u64>>,
    pub(super) interval: Mutex<Histogram<u64>>,
    /// The last answer other than 2xx: status and start of the body.
    pub(super) last_answer: Mutex<Option<String>>,
    /// The last transport error (no answer).
    pub(super) last_transport_error: Mutex<Option<String>>,
    pub(super) acked: Mutex<Vec<Vec<(u64, u64)>>>,
}

/// A latency histogram from 1 to 600,000,000 units (10 min in µs) at three
/// significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    // Only fails for low < 1, high < 2 * low or sigfig > 5: not these constants.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the generator until a bound is reached.
pub async fn run(config: GeneratorConfig) -> Result<RunSummary, GeneratorError> {
    if config.connections == 0 || config.streams == 0 || config.samples_per_request == 0 {
        return Err(GeneratorError::Config(
            "connections, streams and samples per request must be at least 1".into(),
        ));
    }
    if config.duration.is_none() && config.total_samples.is_none() {
        return Err(GeneratorError::Config(
            "give --duration or --samples (or both): a run must be bounded".into(),
        ));
    }
    if config.first_round >= MAX_SEQ {
        return Err(GeneratorError::Config(format!(
            "first round must be below {MAX_SEQ}"
        )));
    }
    if let Some(r) = config.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(GeneratorError::Config(format!(
                "rate must be a positive number, not {r}"
            )));
        }
    }
    let builder = RequestBuilder::new(config.scenario.clone())?;
    let target = Target::resolve(&config.url, config.transport, config.ca_cert.as_deref()).await?;
    let headers = base_headers(&config)?;
    let scenario = builder.scenario().clone();
    let clusters = u64::from(scenario.clusters);
    let per_cluster = scenario.series_per_cluster();
    let max_pos = per_cluster * u64::from(MAX_SEQ);
    let spr = config.samples_per_request as u64;
    let total = config.total_samples.unwrap_or(u64::MAX);

    let stats = Arc::new(Stats {
        requests: AtomicU64::new(0),
        samples_ok: AtomicU64::new(0),
        samples_failed: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        transport_errors: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        codes: Mutex::new(BTreeMap::new()),
        latency: Mutex::new(histogram()),
        interval: Mutex::new(histogram()),
        last_answer: Mutex::new(None),
        last_transport_error: Mutex::new(None),
        acked: Mutex::new(vec![Vec::new(); clusters as usize]),
    });
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = config.duration.map(|d| start + d);

    let progress = if config.progress {
        let stats = stats.clone();
        let stop = stop.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let (mut last_req, mut last_ok, mut last_again) = (0, 0, 0);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let req = stats.requests.load(Ordering::Relaxed);
                let ok = stats.samples_ok.load(Ordering::Relaxed);
                let failed = stats.samples_failed.load(Ordering::Relaxed);
                // Requests sent again this second, and why (a gateway
                // restarting, 429s): the run goes on and says so.
                let again = stats.retries.load(Ordering::Relaxed);
                let note = if again > last_again {
                    let why = lock(&stats.last_transport_error)
                        .clone()
                        .or_else(|| lock(&stats.last_answer).clone())
                        .unwrap_or_default();
                    format!("  {} sent again: {why}", again - last_again)
                } else {
                    String::new()
                };
                last_again = again;
                let l = {
                    let mut h = lock(&stats.interval);
                    let l = Latency::from_histogram(&h, 0.001);
                    h.reset();
                    l
                };
                eprintln!(
                    "[{:>5.1}s] {:>6} req/s {:>9} samples/s  total {:>11} ok {:>9} failed  p50 {:.1} ms p99 {:.1} ms{note}",
                    start.elapsed().as_secs_f64(),
                    req - last_req,
                    ok - last_ok,
                    ok,
                    failed,
                    l.p50,
                    l.p99
                );
                (last_req, last_ok) = (req, ok);
            }
        }))
    } else {
        None
    };

    let turns = Arc::new(worker::Turns::new(clusters as usize));
    let mut workers = Vec::new();
    for _ in 0..config.connections {
        let shared = Worker {
            target: target.clone(),
            headers: headers.clone(),
            stats: stats.clone(),
            next: next.clone(),
            config: config.clone(),
            start,
            deadline,
            clusters,
            spr,
            total,
            max_pos,
            offset: u64::from(config.first_round) * per_cluster,
            scenario: Arc::new(scenario.clone()),
            turns: turns.clone(),
        };
        let streams = if config.transport == Transport::Http1 {
            1
        } else {
            config.streams
        };
        let b = builder.fork();
        workers.push(tokio::spawn(async move {
            shared.run_connection(b, streams).await
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    let interrupted = config
        .interrupt
        .as_ref()
        .is_some_and(|i| i.load(Ordering::Relaxed));
    let complete = deadline.is_some_and(|d| Instant::now() >= d)
        || next.load(Ordering::Relaxed).saturating_mul(spr) >= total;
    let ended_early = if interrupted {
        Some(format!("interrupted after {elapsed:.1} s"))
    } else if !complete {
        Some(format!(
            "after {elapsed:.1} s: every connection gave up (last error above)"
        ))
    } else {
        None
    };
    let requests = stats.requests.load(Ordering::Relaxed);
    let samples_ok = stats.samples_ok.load(Ordering::Relaxed);
    let acked = lock(&stats.acked)
        .iter()
        .enumerate()
        .map(|(c, r)| ClusterAck {
            cluster: c as u32,
            ranges: merge(r.clone()),
        })
        .collect();
    let summary = RunSummary {
        url: config.url.clone(),
        transport: format!("{:?}", config.transport),
        protocol: format!("{:?}", config.protocol),
        duration_secs: elapsed,
        requests,
        samples_ok,
        samples_failed: stats.samples_failed.load(Ordering::Relaxed),
        bytes_sent: stats.bytes.load(Ordering::Relaxed),
        requests_per_sec: requests as f64 / elapsed,
        samples_per_sec: samples_ok as f64 / elapsed,
        responses: lock(&stats.codes).clone(),
        transport_errors: stats.transport_errors.load(Ordering::Relaxed),
        retries: stats.retries.load(Ordering::Relaxed),
        last_answer: lock(&stats.last_answer).clone(),
        last_transport_error: lock(&stats.last_transport_error).clone(),
        latency_ms: Latency::from_histogram(&lock(&stats.latency), 0.001),
        series_per_cluster: per_cluster,
        acked,
        ended_early,
    };
    Ok(summary)
}

fn base_headers(config: &GeneratorConfig) -> Result<HeaderMap, GeneratorError> {
    let mut h = HeaderMap::new();
    let (ct, version) = match config.protocol {
        Protocol::V1 => ("application/x-protobuf", "0.1.0"),
        Protocol::V2 => (
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            "2.0.0",
        ),
    };
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    h.insert(
        http::header::CONTENT_ENCODING,
        HeaderValue::from_static("snappy"),
    );
    h.insert(
        "x-prometheus-remote-write-version",
        HeaderValue::from_static(version),
    );
    h.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(concat!("fanout-load/", env!("CARGO_PKG_VERSION"))),
    );
    for (k, v) in &config.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| GeneratorError::Config(format!("header {k}: {e}")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|e| GeneratorError::Config(format!("header {k}: {e}")))?;
        h.insert(name, value);
    }
    Ok(h)
}

pub(super) fn auth_header(
    mode: AuthMode,
    scenario: &Scenario,
    cluster: u32,
) -> Option<HeaderValue> {
    use base64::Engine as _;
    let v = match mode {
        AuthMode::None => return None,
        AuthMode::Bearer => format!("Bearer {}", scenario.cluster_token(cluster)),
        AuthMode::Basic => format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                scenario.cluster_id(cluster),
                scenario.cluster_token(cluster)
            ))
        ),
    };
    let mut v = HeaderValue::from_str(&v).ok()?;
    v.set_sensitive(true);
    Some(v)
}
