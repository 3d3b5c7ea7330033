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
//! # Sample identity
//! Values and timestamps follow [`crate::identity`]. A request that fails
//! (and is not retried) is counted (by status or transport error), and its
//! samples are listed as not acknowledged in the [`RunSummary`], so a
//! verifier knows exactly which samples a receiver may have.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use hdrhistogram::Histogram;
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message as _;
use serde::Serialize;

use crate::client::{ClientError, Conn, Target, Transport};
use crate::identity::{now_ms, SampleId, SeriesId, MAX_SEQ};
use crate::scenario::{ClusterModel, Scenario, ScenarioError};
use fanout_proto::wire::put_varint;

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

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Number of values.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value.
    pub max: f64,
}

impl Latency {
    /// Percentiles of a histogram whose unit is `unit_ms` milliseconds.
    pub fn from_histogram(h: &Histogram<u64>, unit_ms: f64) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let q = |x: f64| h.value_at_quantile(x) as f64 * unit_ms;
        Latency {
            count: h.len(),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: h.max() as f64 * unit_ms,
        }
    }
}

/// Acknowledged positions of one cluster's sample stream, as half-open ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClusterAck {
    /// Cluster index.
    pub cluster: u32,
    /// Merged `[start, end)` position ranges answered 2xx.
    pub ranges: Vec<(u64, u64)>,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunSummary {
    /// Target URL.
    pub url: String,
    /// Transport used.
    pub transport: String,
    /// Remote-write version used.
    pub protocol: String,
    /// Wall time of the run in seconds.
    pub duration_secs: f64,
    /// Requests sent (answered or failed).
    pub requests: u64,
    /// Samples in requests answered 2xx.
    pub samples_ok: u64,
    /// Samples in requests answered otherwise or failed.
    pub samples_failed: u64,
    /// Compressed bytes sent.
    pub bytes_sent: u64,
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Acknowledged samples per second.
    pub samples_per_sec: f64,
    /// Responses by status code.
    pub responses: BTreeMap<u16, u64>,
    /// Requests that got no response (connect, timeout, reset).
    pub transport_errors: u64,
    /// Answers 429 or 503 after which the request was sent again
    /// ([`GeneratorConfig::retry`]; also counted in `responses`).
    pub retries: u64,
    /// The last error (status and start of the body, or transport error).
    pub last_error: Option<String>,
    /// Request latency (send to response), milliseconds.
    pub latency_ms: Latency,
    /// Series per cluster.
    pub series_per_cluster: u64,
    /// Acknowledged samples per cluster (positions, see the module doc).
    pub acked: Vec<ClusterAck>,
    /// Why the run stopped before its duration or sample count, if it did
    /// (interrupted, or every connection gave up).
    pub ended_early: Option<String>,
}

impl RunSummary {
    /// The summary as a human-readable table.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "target        {} ({}, {})",
            self.url, self.transport, self.protocol
        );
        let _ = writeln!(s, "duration      {:.2} s", self.duration_secs);
        let _ = writeln!(
            s,
            "requests      {} ({:.1}/s)",
            self.requests, self.requests_per_sec
        );
        let _ = writeln!(
            s,
            "samples ok    {} ({:.0}/s)",
            self.samples_ok, self.samples_per_sec
        );
        let _ = writeln!(s, "samples fail  {}", self.samples_failed);
        let _ = writeln!(s, "bytes sent    {}", self.bytes_sent);
        let codes: Vec<String> = self
            .responses
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        let _ = writeln!(
            s,
            "responses     {}",
            if codes.is_empty() {
                "-".into()
            } else {
                codes.join(", ")
            }
        );
        let _ = writeln!(s, "conn errors   {}", self.transport_errors);
        if self.retries > 0 {
            let _ = writeln!(s, "sent again    {} (429/503 or no answer)", self.retries);
        }
        let l = &self.latency_ms;
        let _ = writeln!(
            s,
            "latency ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        if let Some(e) = &self.last_error {
            let _ = writeln!(s, "last error    {e}");
        }
        if let Some(e) = &self.ended_early {
            let _ = writeln!(s, "ended early   {e}");
        }
        s
    }

    /// Every acknowledged sample, as (series, seq).
    pub fn acked_samples(&self) -> impl Iterator<Item = SampleId> + '_ {
        let n = self.series_per_cluster.max(1);
        self.acked.iter().flat_map(move |a| {
            a.ranges.iter().flat_map(move |&(s, e)| {
                (s..e).map(move |p| SampleId {
                    id: SeriesId {
                        cluster: a.cluster,
                        series: (p % n) as u32,
                    },
                    seq: (p / n) as u32,
                })
            })
        })
    }
}

/// Builds request bodies for one scenario (one per worker: it keeps buffers).
pub struct RequestBuilder {
    scenario: Arc<Scenario>,
    models: Arc<Vec<ClusterModel>>,
    encoded: Arc<Vec<Vec<Option<Bytes>>>>,
    churn_cache: HashMap<(u32, u32, u32), Bytes>,
    raw: Vec<u8>,
    compressed: Vec<u8>,
}

impl RequestBuilder {
    /// Prepares every cluster's series (labels encoded once).
    pub fn new(scenario: Scenario) -> Result<RequestBuilder, ScenarioError> {
        scenario.validate()?;
        let models: Vec<ClusterModel> = (0..scenario.clusters)
            .map(|c| scenario.cluster_model(c))
            .collect();
        let encoded = models
            .iter()
            .map(|m| {
                m.series
                    .iter()
                    .map(|t| t.labels.as_ref().map(|l| encode_labels(l)))
                    .collect()
            })
            .collect();
        Ok(RequestBuilder {
            scenario: Arc::new(scenario),
            models: Arc::new(models),
            encoded: Arc::new(encoded),
            churn_cache: HashMap::new(),
            raw: Vec::new(),
            compressed: Vec::new(),
        })
    }

    /// Another builder sharing the prepared series.
    pub fn fork(&self) -> RequestBuilder {
        RequestBuilder {
            scenario: self.scenario.clone(),
            models: self.models.clone(),
            encoded: self.encoded.clone(),
            churn_cache: HashMap::new(),
            raw: Vec::new(),
            compressed: Vec::new(),
        }
    }

    /// The scenario.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// The snappy-compressed body for positions `[start, end)` of `cluster`,
    /// stamped with timestamp `ts_ms`.
    pub fn body(
        &mut self,
        protocol: Protocol,
        cluster: u32,
        start: u64,
        end: u64,
        ts_ms: i64,
    ) -> Bytes {
        match protocol {
            Protocol::V1 => self.body_v1(cluster, start, end, ts_ms),
            Protocol::V2 => self.body_v2(cluster, start, end, ts_ms),
        }
        fanout_proto::snappy::compress_into(&self.raw, &mut self.compressed);
        Bytes::copy_from_slice(&self.compressed)
    }

    fn sample(&self, cluster: u32, p: u64) -> SampleId {
        let n = self.scenario.series_per_cluster().max(1);
        SampleId {
            id: SeriesId {
                cluster,
                series: (p % n) as u32,
            },
            seq: (p / n) as u32,
        }
    }

    fn labels_bytes(&mut self, s: SampleId) -> Bytes {
        let c = s.id.cluster as usize;
        if let Some(b) = self.encoded[c]
            .get(s.id.series as usize)
            .and_then(|x| x.clone())
        {
            return b;
        }
        let generation = s.seq / self.scenario.churn_rounds.max(1);
        let key = (s.id.cluster, s.id.series, generation);
        if let Some(b) = self.churn_cache.get(&key) {
            return b.clone();
        }
        let labels = self
            .scenario
            .series_labels(&self.models[c], s.id.series, s.seq)
            .unwrap_or_default();
        let b = encode_labels(&labels);
        if self.churn_cache.len() > 100_000 {
            self.churn_cache.clear();
        }
        self.churn_cache.insert(key, b.clone());
        b
    }

    fn body_v1(&mut self, cluster: u32, start: u64, end: u64, ts: i64) {
        let mut raw = std::mem::take(&mut self.raw);
        raw.clear();
        for p in start..end {
            let s = self.sample(cluster, p);
            let labels = self.labels_bytes(s);
            // Sample { 1: double value, 2: int64 timestamp }
            let sample_len = 1 + 8 + 1 + fanout_proto::wire::varint_len(ts as u64);
            let ts_len =
                labels.len() + 1 + fanout_proto::wire::varint_len(sample_len as u64) + sample_len;
            raw.put_u8(0x0a);
            put_varint(&mut raw, ts_len as u64);
            raw.extend_from_slice(&labels);
            raw.put_u8(0x12);
            put_varint(&mut raw, sample_len as u64);
            raw.put_u8(0x09);
            raw.put_f64_le(s.to_value());
            raw.put_u8(0x10);
            put_varint(&mut raw, ts as u64);
        }
        self.raw = raw;
    }

    fn body_v2(&mut self, cluster: u32, start: u64, end: u64, ts: i64) {
        use fanout_proto::v2;
        let mut symbols: Vec<String> = vec![String::new()];
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut intern = |s: &str| -> u32 {
            if let Some(i) = index.get(s) {
                return *i;
            }
            let i = symbols.len() as u32;
            symbols.push(s.to_owned());
            index.insert(s.to_owned(), i);
            i
        };
        let mut timeseries = Vec::with_capacity((end - start) as usize);
        for p in start..end {
            let s = self.sample(cluster, p);
            let labels = self
                .scenario
                .series_labels(&self.models[cluster as usize], s.id.series, s.seq)
                .unwrap_or_default();
            let mut refs = Vec::with_capacity(labels.len() * 2);
            for (k, v) in &labels {
                refs.push(intern(k));
                refs.push(intern(v));
            }
            timeseries.push(v2::TimeSeries {
                labels_refs: refs,
                samples: vec![v2::Sample {
                    value: s.to_value(),
                    timestamp: ts,
                }],
                ..Default::default()
            });
        }
        let req = v2::Request {
            symbols,
            timeseries,
        };
        self.raw.clear();
        // Encoding into a Vec cannot run out of space.
        let _ = req.encode(&mut self.raw);
    }
}

/// Protobuf bytes of repeated `Label` fields (field 1 of `TimeSeries`).
fn encode_labels(labels: &[(String, String)]) -> Bytes {
    let mut out = Vec::new();
    for (k, v) in labels {
        let len = 1
            + fanout_proto::wire::varint_len(k.len() as u64)
            + k.len()
            + 1
            + fanout_proto::wire::varint_len(v.len() as u64)
            + v.len();
        out.put_u8(0x0a);
        put_varint(&mut out, len as u64);
        out.put_u8(0x0a);
        put_varint(&mut out, k.len() as u64);
        out.extend_from_slice(k.as_bytes());
        out.put_u8(0x12);
        put_varint(&mut out, v.len() as u64);
        out.extend_from_slice(v.as_bytes());
    }
    Bytes::from(out)
}

/// Counters shared by the workers.
struct Stats {
    requests: AtomicU64,
    samples_ok: AtomicU64,
    samples_failed: AtomicU64,
    bytes: AtomicU64,
    transport_errors: AtomicU64,
    retries: AtomicU64,
    codes: Mutex<BTreeMap<u16, u64>>,
    /// Microseconds.
    latency: Mutex<Histogram<u64>>,
    interval: Mutex<Histogram<u64>>,
    last_error: Mutex<Option<String>>,
    acked: Mutex<Vec<Vec<(u64, u64)>>>,
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
        last_error: Mutex::new(None),
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
                    let why = lock(&stats.last_error).clone().unwrap_or_default();
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
        last_error: lock(&stats.last_error).clone(),
        latency_ms: Latency::from_histogram(&lock(&stats.latency), 0.001),
        series_per_cluster: per_cluster,
        acked,
        ended_early,
    };
    Ok(summary)
}

fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
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

fn auth_header(mode: AuthMode, scenario: &Scenario, cluster: u32) -> Option<HeaderValue> {
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

/// First retry backoff (Prometheus' `min_backoff`).
const RETRY_MIN_BACKOFF: Duration = Duration::from_millis(30);
/// Longest wait before a retry (Prometheus' `max_backoff`).
const RETRY_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long to wait before retrying: `Retry-After` (whole seconds) if the
/// answer has one, else `backoff`; at most [`RETRY_MAX_BACKOFF`].
fn retry_wait(headers: &HeaderMap, backoff: Duration) -> Duration {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(backoff, Duration::from_secs)
        .min(RETRY_MAX_BACKOFF)
}

struct Worker {
    target: Target,
    headers: HeaderMap,
    stats: Arc<Stats>,
    next: Arc<AtomicU64>,
    config: GeneratorConfig,
    start: Instant,
    deadline: Option<Instant>,
    clusters: u64,
    spr: u64,
    total: u64,
    max_pos: u64,
    offset: u64,
    scenario: Arc<Scenario>,
}

impl Worker {
    async fn run_connection(self, builder: RequestBuilder, streams: usize) {
        let me = Arc::new(self);
        let mut conn: Option<Conn> = None;
        let mut builders = vec![builder];
        while builders.len() < streams {
            let b = builders[0].fork();
            builders.push(b);
        }
        // One shared connection; each stream task reconnects only its own copy
        // after an error (HTTP/2 and HTTP/3 connections are clonable handles).
        // Connecting fails for at most one request timeout in a row; then this
        // connection gives up, so a run against a dead URL ends by itself
        // even when it is bounded by samples only.
        let mut failing_since: Option<Instant> = None;
        loop {
            if me.finished() {
                return;
            }
            if failing_since.is_some_and(|t| t.elapsed() >= me.config.timeout) {
                return;
            }
            if conn.is_none() {
                match tokio::time::timeout(me.config.timeout, Conn::connect(&me.target)).await {
                    Ok(Ok(c)) => {
                        conn = Some(c);
                        failing_since = None;
                    }
                    Ok(Err(e)) => {
                        me.note_error(e.to_string());
                        failing_since.get_or_insert_with(Instant::now);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(_) => {
                        me.note_error("connect: timed out".into());
                        failing_since.get_or_insert_with(Instant::now);
                        continue;
                    }
                }
            }
            let Some(c) = conn.clone() else { continue };
            let mut tasks = Vec::new();
            for b in builders.drain(..) {
                let me = me.clone();
                let c = c.clone();
                tasks.push(tokio::spawn(async move { me.stream_loop(c, b).await }));
            }
            for t in tasks {
                if let Ok(b) = t.await {
                    builders.push(b);
                }
            }
            // Every stream stopped: either the run is over or the connection broke.
            conn = None;
            if builders.is_empty() {
                return;
            }
        }
    }

    /// Whether `at` is past the run's end: its deadline, or an interrupt.
    fn over(&self, at: Instant) -> bool {
        self.deadline.is_some_and(|d| at >= d)
            || self
                .config
                .interrupt
                .as_ref()
                .is_some_and(|i| i.load(Ordering::Relaxed))
    }

    fn finished(&self) -> bool {
        if self.over(Instant::now()) {
            return true;
        }
        let b = self.next.load(Ordering::Relaxed);
        b.saturating_mul(self.spr) >= self.total
    }

    fn note_error(&self, e: String) {
        *lock(&self.stats.last_error) = Some(e);
    }

    /// Sends requests on `conn` until the run ends or the connection fails.
    async fn stream_loop(&self, mut conn: Conn, mut builder: RequestBuilder) -> RequestBuilder {
        loop {
            if self.over(Instant::now()) {
                return builder;
            }
            let b = self.next.fetch_add(1, Ordering::Relaxed);
            let first = b.saturating_mul(self.spr);
            if first >= self.total {
                return builder;
            }
            let n = self.spr.min(self.total - first);
            let cluster = (b % self.clusters) as u32;
            let k = b / self.clusters;
            let start = self.offset + k * self.spr;
            let end = (start + n).min(self.max_pos);
            if start >= end {
                self.note_error("sequence space exhausted (2^21 rounds per series)".into());
                return builder;
            }
            if let Some(rate) = self.config.rate {
                let at = self.start + Duration::from_secs_f64(first as f64 / rate);
                if self.over(at) {
                    return builder;
                }
                tokio::time::sleep_until(at.into()).await;
            }
            let body = builder.body(self.config.protocol, cluster, start, end, now_ms());
            let mut headers = self.headers.clone();
            if let Some(a) = auth_header(self.config.auth, &self.scenario, cluster) {
                headers.insert(http::header::AUTHORIZATION, a);
            }
            let bytes = body.len() as u64;
            let s = &self.stats;
            let mut backoff = RETRY_MIN_BACKOFF;
            let res = 'attempts: loop {
                let t0 = Instant::now();
                let res = tokio::time::timeout(
                    self.config.timeout,
                    conn.post(&self.target, &headers, body.clone()),
                )
                .await;
                let micros = t0.elapsed().as_micros() as u64;
                s.requests.fetch_add(1, Ordering::Relaxed);
                s.bytes.fetch_add(bytes, Ordering::Relaxed);
                lock(&s.latency).saturating_record(micros.max(1));
                lock(&s.interval).saturating_record(micros.max(1));
                if !self.config.retry {
                    break res;
                }
                let wait = match &res {
                    Ok(Ok(reply)) if matches!(reply.status.as_u16(), 429 | 503) => {
                        retry_wait(&reply.headers, backoff)
                    }
                    Ok(Ok(_)) => break res,
                    // No answer (a gateway restarting, a reset, a timeout).
                    _ => backoff,
                };
                if self.over(Instant::now() + wait) {
                    break res;
                }
                match &res {
                    Ok(Ok(reply)) => {
                        *lock(&s.codes).entry(reply.status.as_u16()).or_default() += 1;
                    }
                    Ok(Err(e)) => {
                        s.transport_errors.fetch_add(1, Ordering::Relaxed);
                        self.note_error(format!("{e} (sent again)"));
                    }
                    Err(_) => {
                        s.transport_errors.fetch_add(1, Ordering::Relaxed);
                        self.note_error(format!(
                            "request timed out after {:?} (sent again)",
                            self.config.timeout
                        ));
                    }
                }
                s.retries.fetch_add(1, Ordering::Relaxed);
                backoff = (backoff * 2).min(RETRY_MAX_BACKOFF);
                tokio::time::sleep(wait).await;
                if res.as_ref().is_ok_and(|r| r.is_ok()) {
                    continue;
                }
                // The connection is gone: a new one, until the deadline.
                loop {
                    match tokio::time::timeout(self.config.timeout, Conn::connect(&self.target))
                        .await
                    {
                        Ok(Ok(c)) => {
                            conn = c;
                            break;
                        }
                        Ok(Err(e)) => self.note_error(format!("{e} (reconnecting)")),
                        Err(_) => self.note_error("connect: timed out (reconnecting)".into()),
                    }
                    if self.over(Instant::now() + backoff) {
                        break 'attempts res;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX_BACKOFF);
                }
            };
            let samples = end - start;
            match res {
                Ok(Ok(reply)) => {
                    *lock(&s.codes).entry(reply.status.as_u16()).or_default() += 1;
                    if reply.status.is_success() {
                        s.samples_ok.fetch_add(samples, Ordering::Relaxed);
                        lock(&s.acked)[cluster as usize].push((start, end));
                    } else {
                        s.samples_failed.fetch_add(samples, Ordering::Relaxed);
                        let body =
                            String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)])
                                .into_owned();
                        self.note_error(format!("{}: {}", reply.status, body.trim()));
                    }
                }
                Ok(Err(e)) => {
                    s.samples_failed.fetch_add(samples, Ordering::Relaxed);
                    s.transport_errors.fetch_add(1, Ordering::Relaxed);
                    self.note_error(e.to_string());
                    return builder;
                }
                Err(_) => {
                    s.samples_failed.fetch_add(samples, Ordering::Relaxed);
                    s.transport_errors.fetch_add(1, Ordering::Relaxed);
                    self.note_error(format!("request timed out after {:?}", self.config.timeout));
                    return builder;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_proto::v1;

    fn small() -> Scenario {
        Scenario {
            clusters: 2,
            deployments: 2,
            dags: 2,
            tasks: 2,
            dag_files: 1,
            pools: 1,
            pods: 4,
            task_pods: 1,
            churn_rounds: 2,
            deployment_id_label: true,
            ..Scenario::default()
        }
    }

    #[test]
    fn v1_body_decodes_with_prost_and_carries_identities() {
        let s = small();
        let mut b = RequestBuilder::new(s.clone()).unwrap();
        let n = s.series_per_cluster();
        let body = b.body(Protocol::V1, 1, n - 3, n + 5, 1_700_000_000_123);
        let raw = fanout_proto::snappy::decompress(&body, 1 << 30).unwrap();
        let req = v1::WriteRequest::decode(raw).unwrap();
        assert_eq!(req.timeseries.len(), 8);
        let model = s.cluster_model(1);
        for (i, ts) in req.timeseries.iter().enumerate() {
            let p = n - 3 + i as u64;
            let id = SampleId::from_value(ts.samples[0].value).unwrap();
            assert_eq!(
                id.id,
                SeriesId {
                    cluster: 1,
                    series: (p % n) as u32
                }
            );
            assert_eq!(u64::from(id.seq), p / n);
            assert_eq!(ts.samples[0].timestamp, 1_700_000_000_123);
            let labels: Vec<(String, String)> = ts
                .labels
                .iter()
                .map(|l| (l.name.clone(), l.value.clone()))
                .collect();
            assert_eq!(Some(labels), s.series_labels(&model, id.id.series, id.seq));
        }
    }

    #[test]
    fn v2_body_decodes_to_the_same_series() {
        let s = small();
        let mut b = RequestBuilder::new(s.clone()).unwrap();
        let body = b.body(Protocol::V2, 0, 0, 50, 42);
        let raw = fanout_proto::snappy::decompress(&body, 1 << 30).unwrap();
        let req = fanout_proto::v2::Request::decode(raw).unwrap();
        assert_eq!(req.timeseries.len(), 50);
        let model = s.cluster_model(0);
        for (i, ts) in req.timeseries.iter().enumerate() {
            let labels: Vec<(String, String)> = ts
                .labels_refs
                .chunks(2)
                .map(|p| {
                    (
                        req.symbols[p[0] as usize].clone(),
                        req.symbols[p[1] as usize].clone(),
                    )
                })
                .collect();
            assert_eq!(Some(labels), s.series_labels(&model, i as u32, 0));
        }
    }

    #[test]
    fn retry_waits_for_retry_after_else_backoff_capped() {
        let mut h = HeaderMap::new();
        let b = Duration::from_millis(30);
        assert_eq!(retry_wait(&h, b), b);
        assert_eq!(retry_wait(&h, Duration::from_secs(9)), RETRY_MAX_BACKOFF);
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_wait(&h, b), Duration::from_secs(2));
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_wait(&h, b), RETRY_MAX_BACKOFF);
        // An HTTP date is not parsed: the backoff applies.
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_wait(&h, b), b);
    }

    #[test]
    fn merge_coalesces_adjacent_ranges() {
        assert_eq!(
            merge(vec![(4, 6), (0, 2), (2, 4), (8, 9)]),
            vec![(0, 6), (8, 9)]
        );
    }
}
