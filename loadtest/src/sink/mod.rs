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

mod decode;
mod fault;
mod receive;
mod record;
mod serve;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::generator::{histogram, lock, Latency};
use record::{Inner, SHARDS};

pub use fault::Fault;
pub use record::{
    KeptExemplar, SeqSet, SeriesMap, SeriesRecord, SinkReport, SinkStats, V2Series,
    MAX_DUPLICATES_LISTED, MAX_LABEL_SETS,
};

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

/// What the listeners share: the config, the fault, counters and records.
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
        let task = serve::serve_tcp(listener, state.clone());
        let h3 = if state.config.http3 {
            Some(serve::start_h3(state.clone(), addr)?)
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
