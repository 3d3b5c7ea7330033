//! The seam between ingest and delivery (SPEC §5).
//!
//! Ingest answers a request only after [`Delivery::submit`] returned for its
//! series, so whatever `submit` accepts is owned by delivery from then on
//! (the §5 durability promise starts here). `submit` either takes the whole
//! batch or refuses it as a whole; a refusal says whether the sender should
//! retry later because delivery is overloaded (429) or unavailable (503).
//!
//! The batch carries its [`MemoryPermit`]: the bytes ingest took from the
//! shared [`crate::budget::MemoryBudget`] for the decompressed body and the
//! scanned series. Delivery keeps the permit while the data is in memory and
//! drops (or splits) it as the data leaves memory, which is what makes the
//! budget shared.
//!
//! This module is all that ingest knows of delivery and all that delivery
//! knows of ingest: `ingest` imports no `deliver` module and `deliver` no
//! `ingest` module. [`CountingDelivery`] stays for benchmarks of ingest alone.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fanout_proto::scan::{Series, Summary};

use crate::budget::MemoryPermit;
use crate::registry::ClusterInfo;

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
