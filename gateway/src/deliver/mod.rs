//! Delivery: per-target queues and senders (SPEC §5), behind the
//! [`Delivery`] trait of [`crate::handoff`].
//!
//! [`FanoutDelivery`] is the implementation `fanout serve` uses (design in
//! docs/delivery.md). The layout follows the quinn split: plain state
//! machines that take `now` as an argument, and thin tokio/hyper adapters.
//! - [`catalog`]: which metric names are exported;
//! - [`accounting`]: counts per (Deployment, target) for export status;
//! - [`route`]: attribution, label stamping and fan-out of one request into
//!   per-target chunks (no IO);
//! - [`queue`]: one target's lanes, batching, retries, concurrency and memory
//!   bound (no IO), with the [`queue::Overflow`] seam for the disk spill:
//!   - `queue/mod.rs`: the state machine ([`queue::TargetCore`]): push,
//!     polling lane groups, results;
//!   - `queue/batch.rs`: forming and compressing a batch, and cutting
//!     batches after a 413 or for `maxBytesPerSend`;
//!   - `queue/gauges.rs`: what it shows (state, queued bytes, oldest data,
//!     counters, last error, latency);
//!   - `queue/types.rs`: the types at its edges (chunks, the overflow seam,
//!     disk records read back, config, dispatches, events, counters);
//!   - `queue/parts.rs`: a chunk's compressed part, shared by the targets
//!     of its label variant, and the batch bodies made of parts;
//!   - `queue/records.rs`: counting and splitting encoded records;
//!   - `queue/groups.rs`: lane groups and the load meter that sizes them;
//!   - `queue/disk.rs`: disk records (spilled, recovered, read back, acked)
//!     and the shutdown drain;
//! - [`limits`]: active-series limits of clusters and Deployments;
//! - [`policy`]: retry classification, backoff, adaptive concurrency;
//! - [`sigv4`]: AWS SigV4 signing;
//! - [`http`]: the shared HTTP client and one send attempt;
//! - [`protocol`]: remote-write 2.0 to `protocol: V2` targets (each batch
//!   rewritten from 1.0 when sent) and the fallback to 1.0;
//! - [`metadata`]: the metric family metadata seen in accepted requests;
//! - [`spill`]: a target's durable disk queue (segments, group commit,
//!   manifest; `spill/queue.rs` the queue, `spill/types.rs` its edge types,
//!   `spill/files.rs` segment recovery and the ledger written in place);
//! - [`service`]: the tokio side:
//!   - `service/mod.rs`: [`FanoutDelivery`], its settings, shutdown, the
//!     stats JSON;
//!   - `service/submit.rs`: one accepted request into the targets' queues
//!     (and the disk spills first in `wal` mode);
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
//! The types ingest hands over ([`Accepted`], the [`Delivery`] trait) live in
//! [`crate::handoff`], so that neither module imports the other.

pub mod spill;

pub use crate::budget::{BudgetError, MemoryBudget, MemoryPermit};
pub use crate::handoff::{Accepted, ClusterCounts, CountingDelivery, Delivery, DeliveryError};

pub mod accounting;
pub mod api;
pub mod catalog;
pub mod http;
pub mod limits;
pub mod metadata;
pub mod policy;
pub mod protocol;
pub mod queue;
pub mod route;
pub mod service;
pub mod sigv4;
pub mod stats;

pub use catalog::Catalog;
pub use service::{
    DeliveryArgs, DiskBacklog, Durability, FanoutDelivery, Settings, ShutdownReport,
};
