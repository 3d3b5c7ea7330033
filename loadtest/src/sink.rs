//! Verifying remote-write receivers: `fanout-load sink` and the in-process
//! [`Sink`] that tests start.
//!
//! One [`Sink`] is one target: a listener on a loopback port that speaks
//! HTTP/1.1 and h2c (prior knowledge), accepts `POST` on any path (remote-write
//! senders choose their own), and records what arrives:
//! - per series ([`SeriesId`] decoded from the sample value, see
//!   [`crate::identity`]): which rounds arrived, how many arrived more than
//!   once, how many arrived *out of order* (see below), and the distinct
//!   label sets seen (at most [`MAX_LABEL_SETS`]);
//! - end-to-end latency, `now - sample timestamp`, in milliseconds;
//! - requests by status, rejected requests (malformed, wrong auth, missing or
//!   wrong headers) with the last reason;
//! - request body bytes as received (compressed), of every `POST` whatever
//!   its answer.
//!
//! # Arrival order
//! Samples are recorded in the order the sink takes them: requests one at a
//! time (the record lock), and within a request in the order they appear in
//! the body. A sample is *out of order* when it is the first arrival of
//! round `s` of a series while a round above `s` of that series already
//! arrived at this sink; [`SeriesRecord`] counts those and keeps the first.
//! A sample that arrives again is a duplicate, never out of order: like
//! Prometheus, which accepts a re-sent identical sample but rejects an older
//! new one. Whether order matters is the expectation's call
//! ([`crate::verify::Expectation::require_order`]): `fanout-load run` sends
//! over parallel connections and promises no per-series order. The cost is
//! O(1) per sample, with no allocation.
//!
//! Verification against what *should* have arrived is [`crate::verify`]'s
//! job; the sink only answers honestly: 204 for a request it decoded and
//! recorded, 400 with the reason for a malformed one (nothing of it is
//! recorded), 401 for wrong auth, 415 for an unknown encoding, 413 for a body
//! over [`SinkConfig::max_body`].
//!
//! # Failure injection
//! A [`Fault`] (set at start or at any time with [`SinkHandle::set_fault`])
//! makes the sink answer a fixed status for a period, delay every answer, or
//! reset every n-th request's connection. A request answered by an injected
//! status or reset is not recorded: the sender must send it again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use serde::Serialize;

use crate::generator::{histogram, lock, Latency};
use crate::identity::{now_ms, SampleId, SeriesId};

/// Distinct label sets kept per series (more are counted, not kept).
pub const MAX_LABEL_SETS: usize = 8;
/// Duplicate rounds listed per series (more are counted, not listed).
pub const MAX_DUPLICATES_LISTED: usize = 16;
/// Label-set hashes a record remembers (a label set can have several: one
/// per encoding seen).
const MAX_LABEL_HASHES: usize = 32;

/// Auth a sink requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpectedAuth {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// Basic auth.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// AWS SigV4 signed with this access key id (the signature itself is
    /// not verified). A request signed with another key is answered 403
    /// "The security token included in the request is expired", as Amazon
    /// Managed Service for Prometheus answers an expired session.
    Sigv4AccessKey(String),
}

/// Injected failures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    /// Answer every request with this status instead of recording it.
    pub status: Option<u16>,
    /// How long `status` applies from when the fault is set (`None`: until changed).
    pub status_for: Option<Duration>,
    /// Delay before every answer.
    pub delay: Duration,
    /// Reset the connection of every n-th request (0: never).
    pub reset_every: u64,
    /// Record every n-th accepted request, then answer it 503 as if the
    /// answer had been lost on the way back (0: never): the sender retries
    /// and its samples arrive twice (duplicates, never out of order).
    pub lose_answer_every: u64,
}

/// How to start a sink.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// Name of this target in reports and problems.
    pub name: String,
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// Required auth (`None`: any or none accepted).
    pub auth: Option<ExpectedAuth>,
    /// Headers every request must carry with these values.
    pub headers: Vec<(String, String)>,
    /// Injected failures from the start.
    pub fault: Fault,
    /// Largest request body accepted (compressed), and 8× that decompressed.
    pub max_body: usize,
    /// Also serve HTTP/3 on the same port (UDP), with a self-signed
    /// certificate for `localhost` and `127.0.0.1` ([`SinkHandle::cert_pem`]).
    pub http3: bool,
    /// How it takes remote-write 2.0 bodies (a 2.0 receiver by default).
    pub v1_only: V1Only,
    /// Keep everything each 2.0 series carried ([`SinkReport::v2_series`]):
    /// for exact checks in tests, not for load.
    pub keep_v2_series: bool,
}

/// A receiver that speaks only remote-write 1.0, the two ways they behave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum V1Only {
    /// Not one: 2.0 bodies are decoded and answered with the
    /// `X-Prometheus-Remote-Write-*-Written` headers.
    #[default]
    No,
    /// 2.0 bodies are refused with 415 Unsupported Media Type.
    Refuse,
    /// 2.0 bodies are read as 1.0 whatever their content type, as
    /// Prometheus 2.x does: the 2.0 fields are unknown to 1.0 and skipped,
    /// so nothing is stored, and the answer is 204 without the Written
    /// headers.
    Misread,
}

impl Default for SinkConfig {
    fn default() -> SinkConfig {
        SinkConfig {
            name: "sink".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            auth: None,
            headers: Vec::new(),
            fault: Fault::default(),
            max_body: 32 << 20,
            http3: false,
            v1_only: V1Only::No,
            keep_v2_series: false,
        }
    }
}

/// Why a sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Binding the listener failed.
    #[error("sink {name}: listen on {addr}: {source}")]
    Bind {
        /// Sink name.
        name: String,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Setting up HTTP/3 (certificate, QUIC endpoint) failed.
    #[error("sink {name}: HTTP/3: {what}")]
    Http3 {
        /// Sink name.
        name: String,
        /// What failed.
        what: String,
    },
}

/// A set of rounds (a bitmap). The first 128 rounds live in the set itself,
/// so that recording an arrival usually touches no memory beyond the series'
/// record (the sink does it for every sample at every target).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqSet {
    inline: [u64; INLINE_WORDS],
    count: u64,
    more: Vec<u64>,
}

const INLINE_WORDS: usize = 2;

impl SeqSet {
    fn word(&self, w: usize) -> u64 {
        match w.checked_sub(INLINE_WORDS) {
            None => self.inline[w],
            Some(m) => self.more.get(m).copied().unwrap_or(0),
        }
    }

    /// Adds `seq`; false if it was already there.
    pub fn insert(&mut self, seq: u32) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        let word = match w.checked_sub(INLINE_WORDS) {
            None => &mut self.inline[w],
            Some(m) => {
                if m >= self.more.len() {
                    self.more.resize(m + 1, 0);
                }
                &mut self.more[m]
            }
        };
        let had = *word & (1 << b) != 0;
        *word |= 1 << b;
        if !had {
            self.count += 1;
        }
        !had
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u32) -> bool {
        self.word((seq / 64) as usize) & (1 << (seq % 64)) != 0
    }

    /// Number of rounds in the set.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn words(&self) -> impl DoubleEndedIterator<Item = (usize, u64)> + '_ {
        (0..INLINE_WORDS + self.more.len()).map(|w| (w, self.word(w)))
    }

    /// The rounds, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words().flat_map(|(w, word)| {
            (0..64u32)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w as u32 * 64 + b)
        })
    }

    /// The largest round, if any.
    pub fn max(&self) -> Option<u32> {
        let (w, word) = self.words().rev().find(|(_, w)| *w != 0)?;
        Some(w as u32 * 64 + 63 - word.leading_zeros())
    }
}

/// What one target received of one series.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeriesRecord {
    /// The hash of the first label set (kept in the record: almost every
    /// series has only one), then of the others.
    first_label_hash: Option<u64>,
    /// The highest round received so far.
    pub max_seq: Option<u32>,
    /// Rounds received.
    pub seqs: SeqSet,
    /// Samples received again after their first arrival.
    pub duplicates: u64,
    /// The first duplicated rounds (at most [`MAX_DUPLICATES_LISTED`]).
    pub duplicate_seqs: Vec<u32>,
    /// Samples that arrived (for the first time) after a higher round of
    /// the series had already arrived.
    pub out_of_order: u64,
    /// The first of those: `(its round, the highest round before it)`.
    pub first_out_of_order: Option<(u32, u32)>,
    /// Distinct label sets seen (at most [`MAX_LABEL_SETS`]), sorted by name.
    pub label_sets: Vec<Vec<(String, String)>>,
    /// Label sets seen beyond [`MAX_LABEL_SETS`].
    pub more_label_sets: u64,
    label_hashes: Vec<u64>,
}

impl SeriesRecord {
    /// Records the arrival of round `seq`: new, duplicate or out of order.
    pub fn arrived(&mut self, seq: u32) {
        if !self.seqs.insert(seq) {
            self.duplicates += 1;
            if self.duplicate_seqs.len() < MAX_DUPLICATES_LISTED {
                self.duplicate_seqs.push(seq);
            }
            return;
        }
        match self.max_seq {
            Some(max) if seq < max => {
                self.out_of_order += 1;
                self.first_out_of_order.get_or_insert((seq, max));
            }
            _ => self.max_seq = Some(seq),
        }
    }
}

/// A sink's records per series, keyed by a fast hash with a fixed seed (the
/// ids come from the generator, not from an adversary).
pub type SeriesMap = HashMap<SeriesId, SeriesRecord, foldhash::fast::FixedState>;

/// Everything a sink saw.
#[derive(Clone, Debug, Default)]
pub struct SinkReport {
    /// The target's name.
    pub name: String,
    /// The listening address.
    pub addr: Option<SocketAddr>,
    /// Requests received.
    pub requests: u64,
    /// Request body bytes received (compressed, as sent), of every `POST`.
    pub bytes: u64,
    /// Responses by status.
    pub responses: BTreeMap<u16, u64>,
    /// Samples recorded.
    pub samples: u64,
    /// Samples whose value is not a generator identity.
    pub unidentified: u64,
    /// Native histogram samples (recorded as counts only).
    pub histograms: u64,
    /// Requests refused as malformed (400, 413, 415).
    pub bad_requests: u64,
    /// Requests refused for auth (401).
    pub auth_failures: u64,
    /// Requests refused for a missing or wrong header (400).
    pub header_mismatches: u64,
    /// Requests answered by an injected fault.
    pub injected: u64,
    /// 2.0 requests a 1.0-only sink ([`V1Only`]) refused or misread.
    pub v2_refused: u64,
    /// 1.0 `WriteRequest.metadata` entries received, by metric family.
    pub metadata: BTreeMap<String, u64>,
    /// The last refusal reason.
    pub last_error: Option<String>,
    /// Requests by remote-write version ("v1", "v2").
    pub protocols: BTreeMap<String, u64>,
    /// TCP connections accepted.
    pub connections: u64,
    /// Requests received over HTTP/2.
    pub h2_requests: u64,
    /// Per series.
    pub series: SeriesMap,
    /// End-to-end latency (ms).
    pub latency_ms: Latency,
    /// With [`SinkConfig::keep_v2_series`]: what the 2.0 requests carried,
    /// per series (its labels, sorted), in arrival order.
    pub v2_series: BTreeMap<Vec<(String, String)>, V2Series>,
}

/// An exemplar as kept: its labels, value and timestamp.
pub type KeptExemplar = (Vec<(String, String)>, f64, i64);

/// Everything 2.0 requests carried for one series, resolved from the
/// symbols table as a receiver stores it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct V2Series {
    /// Float samples: (value, timestamp).
    pub samples: Vec<(f64, i64)>,
    /// Native histograms as decoded.
    pub histograms: Vec<fanout_proto::v2::Histogram>,
    /// Exemplars: (labels, value, timestamp).
    pub exemplars: Vec<KeptExemplar>,
    /// Each distinct metadata seen: (type, help, unit).
    pub metadata: BTreeSet<(i32, String, String)>,
    /// Each distinct non-zero created timestamp seen.
    pub created_timestamps: BTreeSet<i64>,
}

/// Cheap running totals for progress lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SinkStats {
    /// Requests received.
    pub requests: u64,
    /// Samples recorded.
    pub samples: u64,
    /// Request body bytes received (compressed), of every `POST`.
    pub bytes: u64,
    /// Requests refused or failed by injection.
    pub refused: u64,
    /// CPU time the sink spent checking, decompressing, decoding and
    /// recording bodies (per-thread CPU clock around that work; the socket
    /// IO hyper does is not in it), nanoseconds.
    pub cpu_nanos: u64,
}

struct State {
    config: SinkConfig,
    fault: Mutex<(Fault, Instant)>,
    connections: AtomicU64,
    h2_requests: AtomicU64,
    requests: AtomicU64,
    samples: AtomicU64,
    bytes: AtomicU64,
    refused: AtomicU64,
    cpu_nanos: AtomicU64,
    /// The records, in [`SHARDS`] parts so that concurrent requests rarely
    /// wait for each other: a series' record lives in the shard of its id
    /// ([`shard_of`]), a request's own counts in the shard of its number.
    /// [`SinkHandle::report`] merges them.
    shards: Box<[Mutex<Inner>]>,
}

/// How many parts the records are split into (more than the cores of the
/// machines it runs on, so that two receiving threads seldom meet).
const SHARDS: usize = 16;

/// The shard that holds the record of series `id`.
fn shard_of(id: SeriesId) -> usize {
    let h =
        ((u64::from(id.cluster) << 32) | u64::from(id.series)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 32) as usize % SHARDS
}

struct Inner {
    report: SinkReport,
    latency: Histogram<u64>,
    /// The number of the request that set `report.last_error` (the newest
    /// wins when shards are merged).
    last_error_at: u64,
}

impl Inner {
    fn new() -> Inner {
        Inner {
            report: SinkReport::default(),
            latency: histogram(),
            last_error_at: 0,
        }
    }
}

impl SinkReport {
    /// Adds `other`'s counts and records to `self` (series records of the
    /// same id are not merged: the shards hold disjoint ids).
    fn absorb(&mut self, other: &SinkReport) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        for (k, v) in &other.responses {
            *self.responses.entry(*k).or_default() += v;
        }
        self.samples += other.samples;
        self.unidentified += other.unidentified;
        self.histograms += other.histograms;
        self.bad_requests += other.bad_requests;
        self.auth_failures += other.auth_failures;
        self.header_mismatches += other.header_mismatches;
        self.injected += other.injected;
        self.v2_refused += other.v2_refused;
        for (family, n) in &other.metadata {
            *self.metadata.entry(family.clone()).or_default() += n;
        }
        for (k, v) in &other.protocols {
            *self.protocols.entry(k.clone()).or_default() += v;
        }
        self.series
            .extend(other.series.iter().map(|(id, r)| (*id, r.clone())));
        // Kept in shard 0 only (arrival order matters), so nothing to merge.
        self.v2_series
            .extend(other.v2_series.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// A running sink; dropping it stops the listener.
pub struct SinkHandle {
    /// The bound address.
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
    h3: Option<(quinn::Endpoint, tokio::task::JoinHandle<()>, String)>,
}

/// Starts sinks.
pub struct Sink;

impl Sink {
    /// Binds `config.listen` and serves until the handle is dropped.
    pub async fn start(config: SinkConfig) -> Result<SinkHandle, SinkError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| SinkError::Bind {
                name: config.name.clone(),
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SinkError::Bind {
            name: config.name.clone(),
            addr: config.listen,
            source,
        })?;
        let state = Arc::new(State {
            fault: Mutex::new((config.fault.clone(), Instant::now())),
            config,
            connections: AtomicU64::new(0),
            h2_requests: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            cpu_nanos: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(Inner::new())).collect(),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                st.connections.fetch_add(1, Ordering::Relaxed);
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { handle(st, req).await }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        let h3 = if state.config.http3 {
            Some(start_h3(state.clone(), addr)?)
        } else {
            None
        };
        Ok(SinkHandle {
            addr,
            state,
            task,
            h3,
        })
    }
}

fn start_h3(
    st: Arc<State>,
    addr: SocketAddr,
) -> Result<(quinn::Endpoint, tokio::task::JoinHandle<()>, String), SinkError> {
    let err = |what: String| SinkError::Http3 {
        name: st.config.name.clone(),
        what,
    };
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| err(e.to_string()))?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| err(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| err(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(vec![generated.cert.der().clone()], key)
    .map_err(|e| err(e.to_string()))?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| err(e.to_string()))?;
    let endpoint =
        quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(crypto)), addr)
            .map_err(|e| err(format!("bind UDP {addr}: {e}")))?;
    let ep = endpoint.clone();
    let task = tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let st = st.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let Ok(mut h3) = h3::server::builder()
                    .build::<_, Bytes>(h3_quinn::Connection::new(conn))
                    .await
                else {
                    return;
                };
                while let Ok(Some(resolver)) = h3.accept().await {
                    let st = st.clone();
                    tokio::spawn(async move {
                        if let Ok((req, stream)) = resolver.resolve_request().await {
                            h3_request(st, req, stream).await;
                        }
                    });
                }
            });
        }
    });
    Ok((endpoint, task, generated.cert.pem()))
}

async fn h3_request(
    st: Arc<State>,
    req: Request<()>,
    mut stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
) {
    use bytes::Buf as _;
    let mut body = Vec::new();
    let mut too_large = None;
    loop {
        match stream.recv_data().await {
            Ok(Some(mut chunk)) => {
                while chunk.has_remaining() {
                    let part = chunk.chunk();
                    if body.len() + part.len() > st.config.max_body {
                        too_large = Some("length limit exceeded".to_owned());
                    } else {
                        body.extend_from_slice(part);
                    }
                    let n = part.len();
                    chunk.advance(n);
                }
            }
            Ok(None) => break,
            Err(e) => {
                too_large = Some(format!("reading body: {e}"));
                break;
            }
        }
    }
    let body = match too_large {
        Some(e) => Err(e),
        None => Ok(Bytes::from(body)),
    };
    let Ok(resp) = process(&st, req.method(), req.uri().path(), req.headers(), body).await else {
        // Injected reset: abandon the stream.
        stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
        return;
    };
    let (parts, body) = resp.into_parts();
    if stream
        .send_response(http::Response::from_parts(parts, ()))
        .await
        .is_err()
    {
        return;
    }
    let b = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if !b.is_empty() {
        let _ = stream.send_data(b).await;
    }
    let _ = stream.finish().await;
}

impl SinkHandle {
    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.state.config.name
    }

    /// `http://ADDR/api/v1/write`.
    pub fn url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    /// Everything recorded so far.
    pub fn report(&self) -> SinkReport {
        let mut r = SinkReport {
            name: self.state.config.name.clone(),
            addr: Some(self.addr),
            connections: self.state.connections.load(Ordering::Relaxed),
            h2_requests: self.state.h2_requests.load(Ordering::Relaxed),
            ..SinkReport::default()
        };
        let mut latency = histogram();
        let mut last_error_at = 0;
        for shard in self.state.shards.iter() {
            let inner = lock(shard);
            r.absorb(&inner.report);
            // Same bounds in every shard: adding cannot fail.
            let _ = latency.add(&inner.latency);
            if inner.report.last_error.is_some() && inner.last_error_at >= last_error_at {
                last_error_at = inner.last_error_at;
                r.last_error.clone_from(&inner.report.last_error);
            }
        }
        r.latency_ms = Latency::from_histogram(&latency, 1.0);
        r
    }

    /// A copy of the end-to-end latency histogram (ms), so several sinks'
    /// latencies can be merged into one distribution.
    pub fn latency_histogram(&self) -> Option<Histogram<u64>> {
        let mut latency = histogram();
        for shard in self.state.shards.iter() {
            let _ = latency.add(&lock(shard).latency);
        }
        Some(latency)
    }

    /// Running totals (no copy of the per-series records).
    pub fn stats(&self) -> SinkStats {
        SinkStats {
            requests: self.state.requests.load(Ordering::Relaxed),
            samples: self.state.samples.load(Ordering::Relaxed),
            bytes: self.state.bytes.load(Ordering::Relaxed),
            refused: self.state.refused.load(Ordering::Relaxed),
            cpu_nanos: self.state.cpu_nanos.load(Ordering::Relaxed),
        }
    }

    /// The PEM certificate of the HTTP/3 listener (`None` unless
    /// [`SinkConfig::http3`]); pin it with the generator's `--ca-cert`.
    pub fn cert_pem(&self) -> Option<&str> {
        self.h3.as_ref().map(|h| h.2.as_str())
    }

    /// Replaces the injected fault; a status period starts now.
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.state.fault) = (fault, Instant::now());
    }

    /// Forgets everything recorded.
    pub fn reset(&self) {
        for shard in self.state.shards.iter() {
            *lock(shard) = Inner::new();
        }
    }
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        self.task.abort();
        if let Some((ep, task, _)) = &self.h3 {
            ep.close(0u32.into(), b"sink stopped");
            task.abort();
        }
    }
}

type Reply = Response<Full<Bytes>>;

/// An injected connection reset: returning an error makes hyper drop the connection.
#[derive(Debug, thiserror::Error)]
#[error("injected connection reset")]
struct InjectedReset;

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Result<Reply, InjectedReset> {
    let (parts, body) = req.into_parts();
    if parts.version == http::Version::HTTP_2 {
        st.h2_requests.fetch_add(1, Ordering::Relaxed);
    }
    let body = match http_body_util::Limited::new(body, st.config.max_body)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(e.to_string()),
    };
    process(&st, &parts.method, parts.uri.path(), &parts.headers, body).await
}

/// CPU time used by the calling thread so far, nanoseconds.
fn thread_cpu_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// Answers one request whose body was read (or failed to be read, with why).
async fn process(
    st: &State,
    method: &http::Method,
    path: &str,
    headers: &HeaderMap,
    body: Result<Bytes, String>,
) -> Result<Reply, InjectedReset> {
    let n = st.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let fault = {
        let (f, since) = lock(&st.fault).clone();
        let status = f
            .status
            .filter(|_| f.status_for.is_none_or(|d| since.elapsed() < d));
        (status, f.delay, f.reset_every, f.lose_answer_every)
    };
    if !fault.1.is_zero() {
        tokio::time::sleep(fault.1).await;
    }
    if method == http::Method::GET {
        let ok = path == "/healthz" || path == "/readyz" || path == "/-/healthy";
        return Ok(reply(
            if ok {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            },
            "",
        ));
    }
    let bytes = body.as_ref().map_or(0, |b| b.len() as u64);
    st.bytes.fetch_add(bytes, Ordering::Relaxed);
    if fault.2 > 0 && n % fault.2 == 0 {
        st.refused.fetch_add(1, Ordering::Relaxed);
        let mut inner = lock(st.shard(n));
        inner.report.requests += 1;
        inner.report.bytes += bytes;
        inner.report.injected += 1;
        return Err(InjectedReset);
    }
    // `receive` never awaits, so the thread's CPU clock measures just it.
    let cpu0 = thread_cpu_nanos();
    let received = receive(st, n, headers, body, fault.0);
    st.cpu_nanos
        .fetch_add(thread_cpu_nanos().saturating_sub(cpu0), Ordering::Relaxed);
    let resp = match received {
        Ok(r) if fault.3 > 0 && n % fault.3 == 0 && r.status().is_success() => {
            st.refused.fetch_add(1, Ordering::Relaxed);
            lock(st.shard(n)).report.injected += 1;
            reply(StatusCode::SERVICE_UNAVAILABLE, "injected: answer lost")
        }
        Ok(r) => r,
        Err(r) => {
            st.refused.fetch_add(1, Ordering::Relaxed);
            r
        }
    };
    let mut inner = lock(st.shard(n));
    inner.report.requests += 1;
    inner.report.bytes += bytes;
    *inner
        .report
        .responses
        .entry(resp.status().as_u16())
        .or_default() += 1;
    Ok(resp)
}

fn reply(status: StatusCode, body: &str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r
}

fn refuse(st: &State, n: u64, status: StatusCode, kind: fn(&mut SinkReport), msg: String) -> Reply {
    let mut inner = lock(st.shard(n));
    kind(&mut inner.report);
    inner.report.last_error = Some(msg.clone());
    inner.last_error_at = n;
    reply(status, &msg)
}

impl State {
    /// The shard that takes request `n`'s own counts.
    fn shard(&self, n: u64) -> &Mutex<Inner> {
        &self.shards[n as usize % SHARDS]
    }
}

fn check_auth(expected: &ExpectedAuth, headers: &HeaderMap) -> bool {
    use base64::Engine as _;
    let Some(got) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    match expected {
        ExpectedAuth::Bearer(t) => got.strip_prefix("Bearer ").is_some_and(|g| g == t),
        ExpectedAuth::Basic { user, password } => got
            .strip_prefix("Basic ")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .is_some_and(|d| d == format!("{user}:{password}").as_bytes()),
        ExpectedAuth::Sigv4AccessKey(key) => sigv4_access_key(headers) == Some(key.as_str()),
    }
}

/// The access key id a SigV4 `Authorization` header was signed with.
fn sigv4_access_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("AWS4-HMAC-SHA256 Credential=")?
        .split('/')
        .next()
}

/// A decoded sample: identity (or none), timestamp, label set index in `sets`.
struct Got {
    id: Option<SampleId>,
    ts: i64,
    set: usize,
}

impl Got {
    fn new(value: f64, ts: i64, set: usize) -> Got {
        Got {
            id: SampleId::from_value(value),
            ts,
            set,
        }
    }
}

/// Where a series' labels are: the checked text of its encoded labels (the
/// plain 1.0 path), or `pairs[range]`.
enum LabelSet<'a> {
    /// The series' label messages as they arrived, valid UTF-8.
    Raw(&'a str),
    /// Decoded pairs.
    Pairs(Range<usize>),
}

impl LabelSet<'_> {
    /// The labels as owned pairs (only for a label set new to a record).
    fn owned(&self, pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        match self {
            LabelSet::Raw(text) => raw_pairs(text),
            LabelSet::Pairs(r) => pairs[r.clone()]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }
}

fn fast_hash<T: std::hash::Hash + ?Sized>(h: &T) -> u64 {
    std::hash::BuildHasher::hash_one(&foldhash::fast::FixedState::default(), h)
}

/// Ends a series whose labels are `pairs[start..]`: its label set, with the
/// hash that tells label sets apart (the hash of the `(name, value)` list).
fn push_set<'a>(sets: &mut Vec<(u64, LabelSet<'a>)>, pairs: &[(&'a str, &'a str)], start: usize) {
    sets.push((
        fast_hash(&pairs[start..]),
        LabelSet::Pairs(start..pairs.len()),
    ));
}

/// The `(name, value)` pairs of label messages checked by [`scan_v1_plain`].
fn raw_pairs(text: &str) -> Vec<(String, String)> {
    use fanout_proto::wire::Reader;
    let mut out = Vec::new();
    let mut r = Reader::new(text.as_bytes());
    while let (Ok(_), Ok((ma, mb))) = (r.key(), r.len_range()) {
        let mut m = Reader::new(&text.as_bytes()[ma..mb]);
        let (mut name, mut value) = (String::new(), String::new());
        while let (Ok((f, _)), Ok((a, b))) = (m.key(), m.len_range()) {
            let s = text
                .get(ma + a..ma + b)
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&text.as_bytes()[ma + a..ma + b]).into_owned()
                });
            if f == 1 {
                name = s;
            } else {
                value = s;
            }
        }
        out.push((name, value));
    }
    out
}

/// Decodes a remote-write 1.0 body of the plain shape senders use (only
/// `timeseries`, each only `labels` {name, value} first, then `samples`
/// {value, timestamp}) without allocating per series or label: a series'
/// label messages are checked as UTF-8 in one piece and kept as that text
/// ([`LabelSet::Raw`]), parsed into pairs only when new to a record. Every
/// field must have its schema's wire type and the labels must be UTF-8, so
/// what this accepts prost accepts with the same content. `None` for any
/// other field or layout, or malformed input (the caller then decodes with
/// prost); the outputs are then partly filled.
fn scan_v1_plain<'a>(
    raw: &'a [u8],
    sets: &mut Vec<(u64, LabelSet<'a>)>,
    got: &mut Vec<Got>,
) -> Option<()> {
    use fanout_proto::wire::{Reader, WireType};
    let mut r = Reader::new(raw);
    while !r.is_empty() {
        if r.key().ok()? != (1, WireType::Len) {
            return None;
        }
        let ts = r.len_delimited().ok()?;
        let mut t = Reader::new(ts);
        let (mut head_end, mut seen_sample) = (0, false);
        while !t.is_empty() {
            let (field, wire) = t.key().ok()?;
            if wire != WireType::Len {
                return None;
            }
            let (ma, mb) = t.len_range().ok()?;
            let mut m = Reader::new(&ts[ma..mb]);
            match field {
                // A label after a sample: not the plain layout.
                1 if seen_sample => return None,
                1 => {
                    while !m.is_empty() {
                        match m.key().ok()? {
                            (1 | 2, WireType::Len) => m.len_range().ok()?,
                            _ => return None,
                        };
                    }
                    head_end = mb;
                }
                2 => {
                    seen_sample = true;
                    let (mut value, mut ts) = (0.0, 0i64);
                    while !m.is_empty() {
                        match m.key().ok()? {
                            (1, WireType::I64) => value = f64::from_bits(m.fixed64().ok()?),
                            (2, WireType::Varint) => ts = m.varint().ok()? as i64,
                            _ => return None,
                        }
                    }
                    got.push(Got::new(value, ts, sets.len()));
                }
                _ => return None,
            }
        }
        let labels = std::str::from_utf8(&ts[..head_end]).ok()?;
        sets.push((fast_hash(&labels), LabelSet::Raw(labels)));
    }
    Some(())
}

// The error is the refusal reply itself, built once per refused request:
// boxing it would only add an allocation.
#[allow(clippy::result_large_err)]
fn receive(
    st: &State,
    n: u64,
    headers: &HeaderMap,
    body: Result<Bytes, String>,
    injected: Option<u16>,
) -> Result<Reply, Reply> {
    let cfg = &st.config;
    if let Some(a) = &cfg.auth {
        if let ExpectedAuth::Sigv4AccessKey(key) = a {
            if sigv4_access_key(headers).is_some_and(|k| k != key) {
                lock(st.shard(n)).report.auth_failures += 1;
                return Err(reply(
                    StatusCode::FORBIDDEN,
                    r#"{"message":"The security token included in the request is expired"}"#,
                ));
            }
        }
        if !check_auth(a, headers) {
            return Err(refuse(
                st,
                n,
                StatusCode::UNAUTHORIZED,
                |r| r.auth_failures += 1,
                "missing or wrong Authorization".into(),
            ));
        }
    }
    for (k, v) in &cfg.headers {
        let got = headers
            .get(k.as_str())
            .map(|g| String::from_utf8_lossy(g.as_bytes()).into_owned());
        if got.as_deref() != Some(v.as_str()) {
            return Err(refuse(
                st,
                n,
                StatusCode::BAD_REQUEST,
                |r| r.header_mismatches += 1,
                format!("header {k}: expected {v:?}, got {got:?}"),
            ));
        }
    }
    if let Some(code) = injected {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        lock(st.shard(n)).report.injected += 1;
        let mut r = reply(status, "injected failure");
        if code == 429 || code == 503 {
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        return Err(r);
    }
    let bad = |status, msg: String| refuse(st, n, status, |r| r.bad_requests += 1, msg);
    let encoding = headers
        .get(http::header::CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase());
    if encoding.as_deref().is_some_and(|e| e != "snappy") {
        return Err(bad(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Encoding {:?}: only snappy",
                encoding.unwrap_or_default()
            ),
        ));
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let declared_v2 = content_type.contains("io.prometheus.write.v2.Request");
    let mut v2 = declared_v2;
    match cfg.v1_only {
        V1Only::Refuse if v2 => {
            lock(st.shard(n)).report.v2_refused += 1;
            return Err(reply(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "remote-write 2.0 is not supported here",
            ));
        }
        V1Only::Misread if v2 => {
            lock(st.shard(n)).report.v2_refused += 1;
            v2 = false;
        }
        _ => {}
    }
    if content_type.contains("proto=")
        && !declared_v2
        && !content_type.contains("proto=prometheus.WriteRequest")
    {
        return Err(bad(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type {content_type:?}: unknown proto"),
        ));
    }
    let body = match body {
        Ok(b) => b,
        Err(msg) => {
            let status = if msg.contains("length limit") {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return Err(bad(status, format!("reading body: {msg}")));
        }
    };
    let raw =
        fanout_proto::snappy::decompress(&body, cfg.max_body.saturating_mul(8)).map_err(|e| {
            bad(
                if e.is_limit() {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                },
                e.to_string(),
            )
        })?;
    let now = now_ms();
    // A series' labels borrow from the body (v1: its label messages as text)
    // or from the decoded request (`pairs[range]`), owned only when new to
    // its record.
    let decoded_v1: fanout_proto::v1::WriteRequest;
    let decoded_v2: fanout_proto::v2::Request;
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    let mut sets: Vec<(u64, LabelSet)> = Vec::new();
    let mut got: Vec<Got> = Vec::new();
    let mut histograms = 0u64;
    let mut exemplars = 0u64;
    if v2 {
        decoded_v2 = fanout_proto::v2::Request::decode(raw).map_err(|e| {
            bad(
                StatusCode::BAD_REQUEST,
                format!("remote-write 2.0 body: {e}"),
            )
        })?;
        let r = &decoded_v2;
        if r.symbols.first().is_some_and(|s| !s.is_empty()) {
            return Err(bad(
                StatusCode::BAD_REQUEST,
                "symbols[0] must be the empty string".to_owned(),
            ));
        }
        let mut kept = Vec::new();
        for (i, ts) in r.timeseries.iter().enumerate() {
            if ts.labels_refs.len() % 2 != 0 {
                return Err(bad(
                    StatusCode::BAD_REQUEST,
                    format!("timeseries {i}: odd number of label references"),
                ));
            }
            let start = pairs.len();
            for p in ts.labels_refs.chunks(2) {
                let (Some(k), Some(v)) =
                    (r.symbols.get(p[0] as usize), r.symbols.get(p[1] as usize))
                else {
                    return Err(bad(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "timeseries {i}: label reference out of range ({} symbols)",
                            r.symbols.len()
                        ),
                    ));
                };
                pairs.push((k.as_str(), v.as_str()));
            }
            histograms += ts.histograms.len() as u64;
            exemplars += ts.exemplars.len() as u64;
            for s in &ts.samples {
                got.push(Got::new(s.value, s.timestamp, sets.len()));
            }
            if cfg.keep_v2_series {
                kept.push(
                    keep_v2(r, ts, &pairs[start..]).map_err(|e| {
                        bad(StatusCode::BAD_REQUEST, format!("timeseries {i}: {e}"))
                    })?,
                );
            }
            push_set(&mut sets, &pairs, start);
        }
        if !kept.is_empty() {
            let mut inner = lock(&st.shards[0]);
            for (labels, one) in kept {
                let all = inner.report.v2_series.entry(labels).or_default();
                all.samples.extend(one.samples);
                all.histograms.extend(one.histograms);
                all.exemplars.extend(one.exemplars);
                all.metadata.extend(one.metadata);
                all.created_timestamps.extend(one.created_timestamps);
            }
        }
    } else if scan_v1_plain(&raw, &mut sets, &mut got).is_none() {
        // Not the plain shape (or malformed): prost decodes it, and its
        // verdict and error message stand.
        (pairs, sets, got) = (Vec::new(), Vec::new(), Vec::new());
        decoded_v1 = fanout_proto::v1::WriteRequest::decode(raw).map_err(|e| {
            bad(
                StatusCode::BAD_REQUEST,
                format!("remote-write 1.0 body: {e}"),
            )
        })?;
        if !decoded_v1.metadata.is_empty() {
            let mut inner = lock(st.shard(n));
            for m in &decoded_v1.metadata {
                *inner
                    .report
                    .metadata
                    .entry(m.metric_family_name.clone())
                    .or_default() += 1;
            }
        }
        for ts in &decoded_v1.timeseries {
            histograms += ts.histograms.len() as u64;
            let start = pairs.len();
            pairs.extend(
                ts.labels
                    .iter()
                    .map(|l| (l.name.as_str(), l.value.as_str())),
            );
            for s in &ts.samples {
                got.push(Got::new(s.value, s.timestamp, sets.len()));
            }
            push_set(&mut sets, &pairs, start);
        }
    }
    let samples = got.len() as u64;
    {
        let mut inner = lock(st.shard(n));
        let report = &mut inner.report;
        *report
            .protocols
            .entry(if v2 { "v2" } else { "v1" }.to_owned())
            .or_default() += 1;
        report.samples += samples;
        report.histograms += histograms;
        let Inner {
            report, latency, ..
        } = &mut *inner;
        for g in got.iter().filter(|g| g.id.is_none()) {
            report.unidentified += 1;
            latency.saturating_record((now - g.ts).max(0) as u64);
        }
    }
    // Each series' record under its own shard's lock: the samples in shard
    // order (a counting sort), one lock per shard touched.
    let mut starts = [0usize; SHARDS + 1];
    for g in &got {
        if let Some(id) = g.id {
            starts[shard_of(id.id) + 1] += 1;
        }
    }
    for i in 1..=SHARDS {
        starts[i] += starts[i - 1];
    }
    let mut order = vec![0usize; starts[SHARDS]];
    let mut next = starts;
    for (i, g) in got.iter().enumerate() {
        if let Some(id) = g.id {
            let s = shard_of(id.id);
            order[next[s]] = i;
            next[s] += 1;
        }
    }
    for shard in 0..SHARDS {
        let (from, to) = (starts[shard], starts[shard + 1]);
        if from == to {
            continue;
        }
        let mut inner = lock(&st.shards[shard]);
        let Inner {
            report, latency, ..
        } = &mut *inner;
        for &i in &order[from..to] {
            let g = &got[i];
            let Some(id) = g.id else { continue };
            latency.saturating_record((now - g.ts).max(0) as u64);
            let rec = report.series.entry(id.id).or_default();
            rec.arrived(id.seq);
            let (hash, set) = &sets[g.set];
            if rec.first_label_hash != Some(*hash) && !rec.label_hashes.contains(hash) {
                // New to this record as bytes; maybe not as labels (the same
                // labels encoded otherwise, or decoded by the other path).
                let owned = set.owned(&pairs);
                let known = rec.label_sets.contains(&owned);
                if known || rec.label_sets.len() < MAX_LABEL_SETS {
                    match rec.first_label_hash {
                        None => rec.first_label_hash = Some(*hash),
                        Some(_) if rec.label_hashes.len() < MAX_LABEL_HASHES => {
                            rec.label_hashes.push(*hash)
                        }
                        Some(_) => {}
                    }
                    if !known {
                        rec.label_sets.push(owned);
                    }
                } else {
                    rec.more_label_sets += 1;
                }
            }
        }
    }
    st.samples.fetch_add(samples, Ordering::Relaxed);
    let mut r = reply(StatusCode::NO_CONTENT, "");
    if v2 {
        let h = r.headers_mut();
        h.insert("x-prometheus-remote-write-samples-written", samples.into());
        h.insert(
            "x-prometheus-remote-write-histograms-written",
            histograms.into(),
        );
        h.insert(
            "x-prometheus-remote-write-exemplars-written",
            exemplars.into(),
        );
    }
    Ok(r)
}

/// One 2.0 series of `r` as a receiver stores it: its sorted labels
/// (`pairs`) and everything it carried, every reference resolved.
fn keep_v2(
    r: &fanout_proto::v2::Request,
    ts: &fanout_proto::v2::TimeSeries,
    pairs: &[(&str, &str)],
) -> Result<(Vec<(String, String)>, V2Series), String> {
    let symbol = |i: u32| {
        r.symbols
            .get(i as usize)
            .cloned()
            .ok_or_else(|| format!("symbol {i} out of range ({} symbols)", r.symbols.len()))
    };
    let mut labels: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    let mut one = V2Series {
        samples: ts.samples.iter().map(|s| (s.value, s.timestamp)).collect(),
        histograms: ts.histograms.clone(),
        ..V2Series::default()
    };
    for e in &ts.exemplars {
        if e.labels_refs.len() % 2 != 0 {
            return Err("exemplar: odd number of label references".to_owned());
        }
        let mut l = Vec::new();
        for p in e.labels_refs.chunks(2) {
            l.push((symbol(p[0])?, symbol(p[1])?));
        }
        one.exemplars.push((l, e.value, e.timestamp));
    }
    if let Some(m) = &ts.metadata {
        one.metadata
            .insert((m.r#type, symbol(m.help_ref)?, symbol(m.unit_ref)?));
    }
    if ts.created_timestamp != 0 {
        one.created_timestamps.insert(ts.created_timestamp);
    }
    Ok((labels, one))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_proto::v1;

    /// Label pairs, samples as (identity, timestamp, set index), set count.
    type Scanned = (
        Vec<(String, String)>,
        Vec<(Option<SampleId>, i64, usize)>,
        usize,
    );

    fn scan(raw: &[u8]) -> Option<Scanned> {
        let (mut sets, mut got) = (Vec::new(), Vec::new());
        scan_v1_plain(raw, &mut sets, &mut got)?;
        Some((
            sets.iter().flat_map(|(_, s)| s.owned(&[])).collect(),
            got.iter().map(|g| (g.id, g.ts, g.set)).collect(),
            sets.len(),
        ))
    }

    #[test]
    fn plain_v1_scan_matches_prost() {
        let scenario = crate::scenario::Scenario {
            clusters: 1,
            deployments: 2,
            ..crate::scenario::Scenario::default()
        };
        let mut b = crate::generator::RequestBuilder::new(scenario).unwrap();
        let body = b.body(
            crate::generator::Protocol::V1,
            0,
            10,
            260,
            1_700_000_000_000,
        );
        let raw = fanout_proto::snappy::decompress(&body, 1 << 30).unwrap();
        let (pairs, got, sets) = scan(&raw).expect("the generator's bodies are plain");
        let req = v1::WriteRequest::decode(raw.clone()).unwrap();
        assert_eq!(sets, req.timeseries.len());
        let want_pairs: Vec<(String, String)> = req
            .timeseries
            .iter()
            .flat_map(|t| t.labels.iter().map(|l| (l.name.clone(), l.value.clone())))
            .collect();
        assert_eq!(pairs, want_pairs);
        let want_got: Vec<_> = req
            .timeseries
            .iter()
            .enumerate()
            .flat_map(|(i, t)| {
                t.samples
                    .iter()
                    .map(move |s| (SampleId::from_value(s.value), s.timestamp, i))
            })
            .collect();
        assert_eq!(got, want_got);
        assert_eq!(got.len(), 250);
    }

    #[test]
    fn plain_v1_scan_leaves_the_rest_to_prost() {
        let series = |labels: Vec<v1::Label>| v1::TimeSeries {
            labels,
            samples: vec![v1::Sample {
                value: 1.0,
                timestamp: 5,
            }],
            ..Default::default()
        };
        let label = |n: &str, v: &str| v1::Label {
            name: n.into(),
            value: v.into(),
        };
        let ok = v1::WriteRequest {
            timeseries: vec![series(vec![label("__name__", "up")]), series(vec![])],
            ..Default::default()
        };
        let (pairs, got, sets) = scan(&ok.encode_to_vec()).unwrap();
        assert_eq!(pairs, [("__name__".to_owned(), "up".to_owned())]);
        assert_eq!((got.len(), sets, got[1].2), (2, 2, 1));
        // Text beyond ASCII is scanned; a value of 200 bytes (a two-byte
        // length, not UTF-8 with the text around it) is left to prost.
        let wide = v1::WriteRequest {
            timeseries: vec![series(vec![label("ns", "é中"), label("x", "ü")])],
            ..Default::default()
        };
        let (pairs, _, _) = scan(&wide.encode_to_vec()).unwrap();
        assert_eq!(pairs[0], ("ns".to_owned(), "é中".to_owned()));
        assert_eq!(pairs[1], ("x".to_owned(), "ü".to_owned()));
        let long = v1::WriteRequest {
            timeseries: vec![series(vec![label("x", &"é中".repeat(40))])],
            ..Default::default()
        };
        assert!(scan(&long.encode_to_vec()).is_none());
        // Invalid UTF-8 split across a label's end is refused too.
        let mut split = wide.encode_to_vec();
        let at = split.windows(2).position(|w| w == "é".as_bytes()).unwrap();
        split[at + 1] = b'a';
        assert!(scan(&split).is_none());
        // A label after a sample: not the plain layout.
        let mut late = v1::TimeSeries::default().encode_to_vec();
        late.extend(series(vec![]).encode_to_vec());
        late.extend(
            v1::TimeSeries {
                labels: vec![label("a", "b")],
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let mut body = Vec::new();
        prost::encoding::bytes::encode(1, &late, &mut body);
        assert!(scan(&body).is_none());
        let decoded = v1::WriteRequest::decode(&body[..]).unwrap();
        assert_eq!(decoded.timeseries[0].labels.len(), 1);
        // A histogram: another field; prost decodes it.
        let mut h = series(vec![label("a", "b")]);
        h.histograms.push(Default::default());
        let with_histogram = v1::WriteRequest {
            timeseries: vec![h],
            ..Default::default()
        };
        assert!(scan(&with_histogram.encode_to_vec()).is_none());
        // Invalid UTF-8 in a label value, and a truncated body: prost's call.
        let mut bad = ok.encode_to_vec();
        let at = bad.windows(2).position(|w| w == b"up").unwrap();
        bad[at] = 0xff;
        assert!(scan(&bad).is_none());
        assert!(v1::WriteRequest::decode(&bad[..]).is_err());
        let whole = ok.encode_to_vec();
        assert!(scan(&whole[..whole.len() - 1]).is_none());
    }

    #[test]
    fn seq_set_spans_its_inline_words_and_the_rest() {
        let mut s = SeqSet::default();
        for seq in [300, 0, 127, 128, 63, 64] {
            assert!(s.insert(seq));
        }
        assert!(!s.insert(128));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 63, 64, 127, 128, 300]);
        assert_eq!((s.len(), s.max()), (6, Some(300)));
        assert!(s.contains(127) && s.contains(300) && !s.contains(299) && !s.contains(9999));
        assert_eq!(SeqSet::default().max(), None);
    }

    fn record(seqs: &[u32]) -> SeriesRecord {
        let mut r = SeriesRecord::default();
        for &s in seqs {
            r.arrived(s);
        }
        r
    }

    #[test]
    fn in_order_with_duplicates_is_not_out_of_order() {
        // Re-sent rounds (a retried batch, a replayed spill) are duplicates.
        let r = record(&[0, 1, 2, 1, 2, 0, 3, 3, 4]);
        assert_eq!(
            (r.out_of_order, r.first_out_of_order, r.max_seq),
            (0, None, Some(4))
        );
        assert_eq!(
            (r.duplicates, &r.duplicate_seqs[..]),
            (4, &[1, 2, 0, 3][..])
        );
    }

    #[test]
    fn a_new_round_below_the_highest_is_out_of_order() {
        // Round 1 skipped, then 5 and 7 before 1 and 6 arrive; 1 again is a
        // duplicate, 8 is in order again.
        let r = record(&[0, 2, 5, 7, 1, 6, 1, 8]);
        assert_eq!(r.out_of_order, 2);
        assert_eq!(r.first_out_of_order, Some((1, 7)));
        assert_eq!((r.duplicates, r.max_seq), (1, Some(8)));
        assert_eq!(r.seqs.len(), 7);
    }

    #[test]
    fn gaps_alone_are_not_out_of_order() {
        let r = record(&[3, 10, 11, 40]);
        assert_eq!((r.out_of_order, r.duplicates), (0, 0));
    }
}
