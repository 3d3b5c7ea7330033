//! Delivery: the hand-off from ingest to per-target queues (SPEC §5).
//!
//! Ingest answers a request only after [`Delivery::submit`] returned for its
//! series, so whatever `submit` accepts is owned by delivery from then on
//! (the §5 durability promise starts here). `submit` either takes the whole
//! batch or refuses it as a whole; a refusal says whether the sender should
//! retry later because delivery is overloaded (429) or unavailable (503).
//!
//! The batch carries its [`MemoryPermit`]: the bytes ingest took from the
//! shared [`MemoryBudget`] for the decompressed body and the scanned series.
//! Delivery keeps the permit while the data is in memory and drops (or
//! splits) it as the data leaves memory, which is what makes the budget
//! shared.
//!
//! [`FanoutDelivery`] is the implementation `fanout serve` uses (design in
//! docs/delivery.md). The layout follows the quinn split: plain state
//! machines that take `now` as an argument, and thin tokio/hyper adapters.
//! - [`catalog`]: which metric names are exported;
//! - [`route`]: attribution, label stamping and fan-out of one request into
//!   per-target chunks (no IO);
//! - [`queue`]: one target's lanes, batching, retries, concurrency and memory
//!   bound (no IO), with the [`queue::Overflow`] seam for the disk spill:
//!   - `queue/mod.rs`: the state machine ([`queue::TargetCore`]): push,
//!     batches, results;
//!   - `queue/gauges.rs`: what it shows (state, queued bytes, oldest data,
//!     counters, last error, latency);
//!   - `queue/types.rs`: the types at its edges (chunks, the overflow seam,
//!     disk records read back, config, dispatches, events, counters);
//!   - `queue/parts.rs`: compressed parts shared by the targets of a label
//!     variant (per chunk, per request, per set of a request's chunks) and
//!     the batch bodies made of them;
//!   - `queue/records.rs`: counting and splitting encoded records;
//!   - `queue/groups.rs`: lane groups and the load meter that sizes them;
//!   - `queue/disk.rs`: disk records (spilled, recovered, read back, acked)
//!     and the shutdown drain;
//! - [`policy`]: retry classification, backoff, adaptive concurrency;
//! - [`sigv4`]: AWS SigV4 signing;
//! - [`http`]: the shared HTTP client and one send attempt;
//! - [`spill`]: a target's durable disk queue (segments, group commit,
//!   manifest; `spill/queue.rs` the queue, `spill/types.rs` its edge types,
//!   `spill/files.rs` segment recovery and the ledger written in place);
//! - [`service`]: the tokio side:
//!   - `service/mod.rs`: [`FanoutDelivery`], its settings, `submit`,
//!     shutdown, the stats JSON;
//!   - `service/target.rs`: one target ([`service::TargetHandle`]): config,
//!     metrics, pushes, live reconfiguration, pause, its JSON;
//!   - `service/target_spill.rs`: a target's disk spill (opening, adopting an
//!     orphan backlog, writes, reading back, acks, reopening, the shutdown
//!     spill);
//!   - `service/sender.rs`: a target's sender task and attempt outcomes;
//!   - `service/reconcile.rs`: applying a registry version (targets started,
//!     kept, reconfigured, retired) and the orphan backlogs on disk;
//! - [`stats`], [`api`]: counters, `/api/v1/stats`, `/api/v1/targets`, `/metrics`.
//!
//! [`CountingDelivery`] stays for benchmarks of ingest alone.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fanout_proto::scan::{Series, Summary};

use crate::registry::ClusterInfo;

pub mod spill;

pub use crate::ingest::budget::{BudgetError, MemoryBudget, MemoryPermit};

pub mod api;
pub mod catalog;
pub mod http;
pub mod policy;
pub mod queue;
pub mod route;
pub mod service;
pub mod sigv4;
pub mod stats;

pub use catalog::Catalog;
pub use service::{DeliveryArgs, Durability, FanoutDelivery, Settings};

/// One accepted request, handed from ingest to delivery.
#[derive(Debug)]
pub struct Accepted {
    /// The authenticated sending cluster.
    pub cluster: Arc<ClusterInfo>,
    /// The decompressed remote-write 1.0 `WriteRequest` (2.0 requests are
    /// converted first); `series` slice into it.
    pub body: Bytes,
    /// Every series of the request, borrowed from `body`.
    pub series: Vec<Series>,
    /// Counts of what the request holds.
    pub summary: Summary,
    /// The memory this batch holds in the shared budget.
    pub permit: MemoryPermit,
}

/// Why delivery refused a batch as a whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// Queues and spill cannot keep up: the sender should retry later (429).
    #[error("delivery overloaded: {0}")]
    Overloaded(String),
    /// Delivery is shutting down or broken (503).
    #[error("delivery unavailable: {0}")]
    Unavailable(String),
}

/// Takes accepted series from ingest.
pub trait Delivery: Send + Sync + 'static {
    /// Takes ownership of `batch`, or refuses it whole.
    fn submit(&self, batch: Accepted) -> impl Future<Output = Result<(), DeliveryError>> + Send;

    /// Ingest reports every answered write here (`transport`: `http1`, `h2`,
    /// `h3`) for the request counts of `/api/v1/stats` and `/metrics`.
    fn record_response(&self, transport: &'static str, status: u16) {
        let _ = (transport, status);
    }
}

/// What [`CountingDelivery`] saw from one cluster.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCounts {
    /// Requests accepted.
    pub requests: u64,
    /// Series accepted.
    pub series: u64,
    /// Samples accepted.
    pub samples: u64,
    /// Native histogram samples accepted.
    pub histograms: u64,
    /// Exemplars accepted.
    pub exemplars: u64,
}

/// A delivery for benchmarks of ingest alone: counts accepted requests,
/// series and samples per cluster, logs each batch at debug, and drops the
/// data (releasing its memory permit).
#[derive(Debug, Default)]
pub struct CountingDelivery {
    counts: Mutex<BTreeMap<String, ClusterCounts>>,
}

impl CountingDelivery {
    /// An empty counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts per cluster id so far.
    pub fn counts(&self) -> BTreeMap<String, ClusterCounts> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Totals over all clusters.
    pub fn totals(&self) -> ClusterCounts {
        self.counts()
            .values()
            .fold(ClusterCounts::default(), |mut t, c| {
                t.requests += c.requests;
                t.series += c.series;
                t.samples += c.samples;
                t.histograms += c.histograms;
                t.exemplars += c.exemplars;
                t
            })
    }
}

impl Delivery for CountingDelivery {
    fn submit(&self, batch: Accepted) -> impl Future<Output = Result<(), DeliveryError>> + Send {
        let s = &batch.summary;
        let totals = match self.counts.lock() {
            Ok(mut counts) => {
                let c = counts.entry(batch.cluster.id.clone()).or_default();
                c.requests += 1;
                c.series += s.series as u64;
                c.samples += s.samples as u64;
                c.histograms += s.histograms as u64;
                c.exemplars += s.exemplars as u64;
                *c
            }
            Err(_) => ClusterCounts::default(),
        };
        tracing::debug!(
            cluster = %batch.cluster.id,
            series = s.series,
            samples = s.samples,
            histograms = s.histograms,
            exemplars = s.exemplars,
            total_requests = totals.requests,
            total_series = totals.series,
            total_samples = totals.samples,
            "accepted batch (counting delivery)"
        );
        drop(batch);
        std::future::ready(Ok(()))
    }
}
