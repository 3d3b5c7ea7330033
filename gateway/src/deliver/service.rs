//! The delivery service: [`FanoutDelivery`] takes accepted requests from
//! ingest, routes them through the current [`Plan`], queues chunks on each
//! target, and runs one sender task per target.
//!
//! # Targets and live config
//! Targets are keyed by their registry id (a hash of endpoint, auth, headers,
//! labels and delivery options). On every registry version (a diff from
//! [`Live::subscribe`], or lazily when a request sees a newer snapshot):
//! - a new id starts a target: its queue and its sender task;
//! - an id that is gone is *retired*: it takes no new data, sends what it has
//!   with partial batches at once, and stops when empty (or after
//!   [`Settings::removed_drain`], counting what is left as abandoned);
//! - an id that stays keeps its queue, its in-flight batches and its task; only
//!   its routes (feeds) are updated;
//! - a config change is a new id. When the gone id's routes equal a new
//!   target's routes exactly (its *successor*, below) and that id is neither
//!   running, nor retired, nor holding a disk backlog of its own, the running
//!   target becomes the new one in place (`TargetHandle::reconfigure`): its
//!   id, endpoint, config (auth, headers, delivery options) and metrics are
//!   swapped, its queue, lanes, disk queue and in-flight attempts are kept
//!   (every later attempt, retries included, uses the new config), and its
//!   spill directory is renamed under the queue lock (after the sync round
//!   in progress; the manifest is rewritten after the lock). A broken disk
//!   queue is not moved (a reopen may be reading it): the old id is retired
//!   instead. It keeps its lane
//!   count (order; a new `maxConcurrency` caps the concurrency limit and
//!   becomes the lane count at the next start without a backlog). Otherwise
//!   the old id is retired and drains to the old endpoint while the new one
//!   starts.
//!
//! A target's *successor* is the target whose routes (every Deployment/export
//! pair that leads to it) are exactly its routes: "my export for these
//! Deployments", whatever its endpoint, auth, headers, labels or delivery
//! options became. Each spill directory holds a manifest (target id, lane
//! count, routes; no secret, no endpoint: `spill/manifest.rs`), rewritten
//! when the routes change. A target that starts with no records of its own
//! resumes the backlog of the only orphan (a spill directory of a target
//! that is neither in the registry nor running nor retired) whose manifest
//! has its routes: the directory is renamed to the target's (no copy) and
//! replayed first, like any recovered backlog. Records keep the labels they
//! were accepted with, and the core keeps the lane count they were queued
//! with (their lane tags keep per-series order only under that count; the
//! concurrency limit is capped at the smaller of it and `maxConcurrency`).
//! Orphans without a manifest (older layout), several orphans with the same
//! routes, or a target with a backlog of its own leave orphans as they are
//! (reported, deleted after the retention). This applies at start (a config
//! changed while the gateway was down) and to any target that starts later.
//! A live change that does not go in place (routes changed in the same
//! version, or the new id already has a backlog) retires the old target: it
//! drains in parallel with the new one, so per-series order between the two
//! is not guaranteed, and what it cannot send within
//! [`Settings::removed_drain`] becomes an orphan until the next start.
//!
//! # Isolation and backpressure
//! Submitting never waits on a target: a full target queue overflows its own
//! oldest data (`queue_full`). The only wait is for the shared memory budget
//! (what queued data holds), and when it stays exhausted for
//! [`Settings::admission_wait`] ingest answers 429.
//!
//! # Disk spill
//! With [`Settings::data_dir`] every target has a [`DiskQueue`] under
//! `<data-dir>/spill/<target-id>/` (budget: the target's `diskBudget`) behind
//! its core's [`Overflow`] seam: chunks beyond the memory bound are appended
//! there (a `write(2)` under the target lock, never a wait on the target) and
//! read back by the sender task once the target takes data again (order:
//! see `queue.rs`). Drops for the disk budget are `disk_full`. A disk error
//! never stops the gateway: the chunk is dropped as `queue_full`, counted in
//! `spill_errors`, and logged; the next overflow tries the disk again. A
//! group-commit thread per queue fsyncs every [`Settings::flush_interval`].
//! A failed sync, a failed read back (nothing is skipped), or a failed open
//! at target start leaves the queue broken:
//! no new records (`queue_full`; 503 for `durability: wal`) until the sender
//! task reopens it, 1 s after it sees it broken and then doubling up to 30 s
//! (`TargetHandle::recover_spill`, on a blocking thread, without the queue
//! lock). Seqs, acks and the read cursor survive the reopen, so the core's
//! `disk_through` / `read_through` stay valid; records lost on disk are
//! counted in `spill_errors` and no lane waits for them.
//!
//! # Shutdown
//! [`FanoutDelivery::shutdown`] refuses new data, flushes partial batches and
//! waits up to the grace period for every queue to empty; what is left in
//! memory is appended to the target's disk queue, which is fsynced and
//! resumed by the next start. Only what cannot be spilled is counted as
//! abandoned.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

use super::catalog::Catalog;
use super::http::HttpSender;
use super::policy::SendResult;
use super::queue::{Chunk, CoreConfig, DiskChunk, Event, Overflow, TargetCore};
use super::route::{Plan, ScratchPool};
use super::spill::{
    self as spill_mod, lock_queue, DiskQueue, DiskQueueConfig, GroupCommit, Record, ReopenBackoff,
};
use super::stats::{self, names, GlobalStats, RecentError};
use super::{Accepted, Delivery, DeliveryError, MemoryBudget};
use crate::ingest::args::{ByteSize, HumanDuration};
use crate::registry::live::Live;
use crate::registry::{Snapshot, Target, TargetRoute};

/// Default bound of one target's memory queue.
pub const DEFAULT_TARGET_QUEUE: u64 = 64 << 20;
/// Default shutdown grace.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default retention of the backlog of a target that left the registry.
pub const DEFAULT_SPILL_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Default period of the spill fsync.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// When an ingest 2xx is sent (SPEC §5 durability).
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// After the data is queued in memory; the spill is fsynced every
    /// `--flush-interval`.
    #[default]
    Memory,
    /// After the data is appended to every target's disk queue and fsynced
    /// (group commit across concurrent requests).
    Wal,
}

/// Delivery flags, flattened into `fanout serve`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DeliveryArgs {
    /// Catalog of exported metric names: `builtin` (default), `all`, or a file
    /// (statsd mapping YAML, or one name per line with `*` wildcards).
    #[arg(long, env = "FANOUT_CATALOG")]
    pub catalog: Option<String>,
    /// Memory queue bound of each target; beyond it the oldest data goes to
    /// the target's disk spill (dropped as `queue_full` only when the spill
    /// cannot take it) [default: 64MiB].
    #[arg(long, env = "FANOUT_TARGET_QUEUE_MEMORY")]
    pub target_queue_memory: Option<ByteSize>,
    /// On SIGTERM, how long to keep delivering queued data [default: 30s].
    #[arg(long, env = "FANOUT_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<HumanDuration>,
    /// How long the disk backlog of a target that left the registry is kept
    /// (reported in the stats) before it is deleted [default: 24h].
    #[arg(long, env = "FANOUT_SPILL_RETENTION")]
    pub spill_retention: Option<HumanDuration>,
    /// `memory`: answer 2xx once data is queued; `wal`: once it is fsynced
    /// to every target's disk queue [default: memory].
    #[arg(long, env = "FANOUT_DURABILITY", value_enum)]
    pub durability: Option<Durability>,
    /// How often the disk spill is fsynced in `memory` durability [default: 1s].
    #[arg(long, env = "FANOUT_FLUSH_INTERVAL")]
    pub flush_interval: Option<HumanDuration>,
}

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Which names are exported.
    pub catalog: Catalog,
    /// Memory queue bound per target.
    pub target_queue_bytes: u64,
    /// Longest wait for the shared memory budget before 429.
    pub admission_wait: Duration,
    /// Longest drain of a removed target.
    pub removed_drain: Duration,
    /// Shutdown grace.
    pub shutdown_grace: Duration,
    /// Root of the disk spill (`<data-dir>`); `None` keeps everything in
    /// memory (tests, benchmarks).
    pub data_dir: Option<PathBuf>,
    /// Period of the spill fsync.
    pub flush_interval: Duration,
    /// How long an orphan backlog (target no longer in the registry) is kept.
    pub spill_retention: Duration,
    /// When an ingest 2xx is sent.
    pub durability: Durability,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            catalog: Catalog::builtin(),
            target_queue_bytes: DEFAULT_TARGET_QUEUE,
            admission_wait: Duration::from_secs(1),
            removed_drain: Duration::from_secs(60),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            data_dir: None,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            spill_retention: DEFAULT_SPILL_RETENTION,
            durability: Durability::Memory,
        }
    }
}

impl DeliveryArgs {
    /// The settings these flags give.
    pub fn settings(&self) -> Result<Settings, super::catalog::CatalogError> {
        Ok(Settings {
            catalog: Catalog::from_arg(self.catalog.as_deref())?,
            target_queue_bytes: self
                .target_queue_memory
                .map_or(DEFAULT_TARGET_QUEUE, |b| b.0.max(1)),
            shutdown_grace: self.shutdown_grace.map_or(DEFAULT_SHUTDOWN_GRACE, |d| d.0),
            flush_interval: self.flush_interval.map_or(DEFAULT_FLUSH_INTERVAL, |d| {
                d.0.max(Duration::from_millis(1))
            }),
            spill_retention: self
                .spill_retention
                .map_or(DEFAULT_SPILL_RETENTION, |d| d.0),
            durability: self.durability.unwrap_or_default(),
            ..Settings::default()
        })
    }
}

struct TargetMetrics {
    samples: metrics::Counter,
    bytes: metrics::Counter,
    requests: metrics::Counter,
    retries: metrics::Counter,
    queue_full: metrics::Counter,
    disk_full: metrics::Counter,
    rejected: metrics::Counter,
    queue_bytes: metrics::Gauge,
    spill_bytes: metrics::Gauge,
    in_flight: metrics::Gauge,
    concurrency: metrics::Gauge,
    latency: metrics::Histogram,
}

impl TargetMetrics {
    fn new(id: &str) -> TargetMetrics {
        let t = id.to_owned();
        TargetMetrics {
            samples: metrics::counter!(names::TARGET_SAMPLES, "target" => t.clone()),
            bytes: metrics::counter!(names::TARGET_BYTES, "target" => t.clone()),
            requests: metrics::counter!(names::TARGET_REQUESTS, "target" => t.clone()),
            retries: metrics::counter!(names::TARGET_RETRIES, "target" => t.clone()),
            queue_full: metrics::counter!(names::TARGET_DROPPED, "target" => t.clone(), "reason" => "queue_full"),
            disk_full: metrics::counter!(names::TARGET_DROPPED, "target" => t.clone(), "reason" => "disk_full"),
            rejected: metrics::counter!(names::TARGET_DROPPED, "target" => t.clone(), "reason" => "rejected"),
            queue_bytes: metrics::gauge!(names::TARGET_QUEUE_BYTES, "target" => t.clone()),
            spill_bytes: metrics::gauge!(names::TARGET_SPILL_BYTES, "target" => t.clone()),
            in_flight: metrics::gauge!(names::TARGET_IN_FLIGHT, "target" => t.clone()),
            concurrency: metrics::gauge!(names::TARGET_CONCURRENCY, "target" => t.clone()),
            latency: metrics::histogram!(names::TARGET_LATENCY, "target" => t),
        }
    }
}

/// A target's disk queue and its sync thread.
struct Spill {
    queue: Arc<Mutex<DiskQueue>>,
    /// Its sync thread: fsyncs every flush interval, and on demand for
    /// `durability: wal`.
    commit: GroupCommit,
    /// Highest seq acked to the queue.
    acked: AtomicU64,
    /// Samples dropped for the disk budget.
    disk_full: AtomicU64,
    /// Last spill error logged (ms since start), to log at most every 10s.
    last_warn_ms: AtomicU64,
    /// When to try reopening the queue while it is broken.
    reopen: Mutex<ReopenBackoff>,
}

impl Spill {
    /// Opens the queue of `target` and starts its sync thread; a failure is
    /// logged and the target runs memory-only. With `adopt` (the backlog of
    /// its predecessor, see [`Inner::successor_backlog`]) that directory
    /// becomes the target's queue first, unless the target's own queue holds
    /// records. Returns the spill, the written seq, the records recovered and
    /// the lane count to use: the one the backlog was queued with (from its
    /// manifest) when records were recovered, else `lanes`.
    fn open(
        target: &Target,
        lanes: u32,
        adopt: Option<&Orphan>,
        settings: &Settings,
    ) -> Option<(Spill, u64, u64, u32)> {
        let id = target.id.0.as_str();
        let budget = target.config.delivery.disk_budget;
        let data_dir = settings.data_dir.as_ref()?;
        let dir = spill_mod::target_dir(data_dir, id);
        let cfg = DiskQueueConfig {
            budget_bytes: budget.max(1 << 20),
            ..DiskQueueConfig::default()
        };
        let adopted = adopt.filter(|from| adopt_backlog(id, from, &dir, cfg));
        let (q, rec) = match DiskQueue::open(&dir, cfg) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(target_id = %id, error = %e, "delivery: cannot open the disk spill; this target keeps its backlog in memory only until reopening it works (retried after 1s, doubling up to 30s)");
                (
                    DiskQueue::unopened(&dir, cfg, &e),
                    spill_mod::Recovery::default(),
                )
            }
        };
        let opened = q.is_opened();
        if let Some(from) = adopted {
            tracing::info!(target_id = %id, from_target_id = %from.target_id, records = rec.records,
                bytes = rec.bytes, "delivery: config of this export changed; resuming the disk backlog of its previous target");
        } else if rec.records > 0 || rec.truncated_bytes > 0 || rec.ledger_reset {
            tracing::info!(target_id = %id, records = rec.records, bytes = rec.bytes,
                truncated_bytes = rec.truncated_bytes, corrupt_records = rec.corrupt_records_dropped,
                "delivery: resuming the disk backlog of this target");
        }
        // Queued lane tags keep per-series order only under the lane count
        // they were written with. A queue whose open failed may hold records
        // all the same (read when it reopens): it takes the manifest's lane
        // count too, and the manifest is only rewritten once the queue opened
        // (`recover_spill`), so a failed open never loses that count.
        let lanes = match spill_mod::Manifest::read(&dir) {
            Ok(Some(m)) if (rec.records > 0 || !opened) && m.lanes > 0 => m.lanes,
            Ok(_) => lanes,
            Err(e) => {
                tracing::warn!(target_id = %id, error = %e, "delivery: unreadable spill manifest; it is rewritten once the queue is open");
                lanes
            }
        };
        if opened {
            write_manifest(id, lanes, &target.routes, &dir);
        }
        if let Err(e) = spill_mod::clear_orphan_mark(&dir) {
            tracing::warn!(target_id = %id, error = %e, "delivery: cannot clear the orphan mark of this target's disk backlog");
        }
        let written = q.written_seq();
        let queued = rec.records;
        let queue = Arc::new(Mutex::new(q));
        let commit = match GroupCommit::start(queue.clone(), Some(settings.flush_interval)) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(target_id = %id, error = %e, "delivery: cannot start the spill sync thread; this target keeps its backlog in memory only");
                return None;
            }
        };
        Some((
            Spill {
                queue,
                commit,
                acked: AtomicU64::new(0),
                disk_full: AtomicU64::new(0),
                last_warn_ms: AtomicU64::new(0),
                reopen: Mutex::new(ReopenBackoff::default()),
            },
            written,
            queued,
            lanes,
        ))
    }
}

/// Makes `from` (an orphan backlog) the queue `dir` of target `id`, unless
/// `dir` holds records of its own (then the orphan stays an orphan). Returns
/// whether it did.
fn adopt_backlog(id: &str, from: &Orphan, dir: &Path, cfg: DiskQueueConfig) -> bool {
    if dir.exists() {
        let own = DiskQueue::open(dir, cfg).and_then(|(q, rec)| q.close().map(|()| rec.records));
        match own {
            Ok(0) => {}
            Ok(records) => {
                tracing::warn!(target_id = %id, from_target_id = %from.target_id, records,
                    "delivery: this target has a disk backlog of its own; the backlog of its previous config stays an orphan");
                return false;
            }
            Err(e) => {
                tracing::warn!(target_id = %id, error = %e, "delivery: cannot check this target's own disk backlog; the backlog of its previous config stays an orphan");
                return false;
            }
        }
    }
    match spill_mod::take_over(&from.dir, dir) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(target_id = %id, from_target_id = %from.target_id, error = %e,
                "delivery: cannot move the backlog of this export's previous config; it stays an orphan");
            false
        }
    }
}

/// Writes the manifest of a queue directory (routes and lanes; no secret);
/// a failure only costs the adoption of this backlog after a config change.
fn write_manifest(id: &str, lanes: u32, routes: &[TargetRoute], dir: &Path) {
    let routes = routes
        .iter()
        .map(|r| spill_mod::ManifestRoute {
            deployment_id: r.deployment_id.clone(),
            export_id: r.export_id.clone(),
        })
        .collect();
    if let Err(e) = spill_mod::Manifest::new(id, lanes, routes).write(dir) {
        tracing::warn!(target_id = %id, error = %e, "delivery: cannot write the spill manifest; this backlog cannot follow a config change across a restart");
    }
}

/// The [`Overflow`] of one push: appends to the disk queue.
struct ToDisk<'a> {
    spill: Option<&'a Spill>,
    /// Wall-clock ms of `now`, to stamp records.
    wall_ms: u64,
    now: Instant,
    disk_full: u64,
    error: Option<spill_mod::SpillError>,
}

impl Overflow for ToDisk<'_> {
    fn overflow(&mut self, lane: u32, chunk: Chunk) -> Option<u64> {
        let spill = self.spill?;
        if self.error.is_some() {
            return None;
        }
        let age = self
            .now
            .saturating_duration_since(chunk.enqueued)
            .as_millis() as u64;
        let record = Record {
            samples: chunk.samples,
            enqueued_ms: self.wall_ms.saturating_sub(age),
            tag: u64::from(lane),
            body: chunk.records,
        };
        match lock_queue(&spill.queue).append(&record) {
            Ok(out) => {
                self.disk_full += out.dropped_samples;
                Some(out.seq)
            }
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

/// Copies `chunk` out of its request's buffer when that buffer is more
/// than twice its size, with a permit of its own from `budget`; unchanged
/// when the budget has no room for the copy (it then keeps pinning).
fn unpin(chunk: Chunk, budget: &MemoryBudget) -> Chunk {
    let len = chunk.records.len() as u64;
    let pinned = chunk.permit.as_ref().map_or(0, |p| p.bytes());
    if pinned <= 2 * len {
        return chunk;
    }
    match budget.try_acquire(len) {
        Ok(permit) => Chunk {
            records: Bytes::copy_from_slice(&chunk.records),
            permit: Some(Arc::new(permit)),
            ..chunk
        },
        Err(_) => chunk,
    }
}

fn wall_ms(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One target: its config, its queue state machine and its sender's wake-up.
pub struct TargetHandle {
    /// Its id; changes when its export's config changes live
    /// ([`TargetHandle::reconfigure`]), as do the endpoint and metrics.
    id: ArcSwap<String>,
    endpoint: ArcSwap<String>,
    target: Mutex<Arc<Target>>,
    core: Mutex<TargetCore>,
    notify: Notify,
    removed_at: Mutex<Option<Instant>>,
    metrics: ArcSwap<TargetMetrics>,
    spill: Option<Spill>,
}

impl std::fmt::Debug for TargetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetHandle")
            .field("id", &self.id)
            .finish()
    }
}

impl TargetHandle {
    fn new(target: Arc<Target>, settings: &Settings, adopt: Option<&Orphan>) -> TargetHandle {
        let d = &target.config.delivery;
        let mut config = CoreConfig {
            max_samples: d.max_samples_per_send.max(1),
            deadline: d.batch_send_deadline,
            max_concurrency: d.max_concurrency.max(1),
            max_backoff: d.max_backoff,
            queue_bytes: settings.target_queue_bytes,
            lanes: None,
        };
        let seed = target.id.0.bytes().fold(0u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let opened = Spill::open(&target, config.lanes(), adopt, settings);
        if let Some((_, _, _, lanes)) = &opened {
            if *lanes != config.lanes() {
                config.lanes = Some(*lanes);
            }
        }
        let mut core = TargetCore::new(target.id.0.clone(), config, seed);
        let spill = opened.map(|(s, written, queued, _)| {
            if queued > 0 {
                core.set_recovered(0, written);
            }
            s
        });
        TargetHandle {
            id: ArcSwap::from_pointee(target.id.0.clone()),
            endpoint: ArcSwap::from_pointee(stats::display_endpoint(&target.config.endpoint)),
            core: Mutex::new(core),
            spill,
            metrics: ArcSwap::from_pointee(TargetMetrics::new(&target.id.0)),
            target: Mutex::new(target),
            notify: Notify::new(),
            removed_at: Mutex::new(None),
        }
    }

    /// Target id.
    pub fn id(&self) -> String {
        self.id.load().as_ref().clone()
    }

    /// A live config change of the same export (docs/spill.md "Config
    /// changes"): this handle goes on as target `t` (new id, endpoint, auth,
    /// headers, delivery options) with its queue, lanes, disk backlog and
    /// in-flight attempts; every attempt from now on uses the new config.
    /// Its spill directory is renamed to `t`'s (which must hold no records)
    /// under the queue lock, after the sync round in progress (the round
    /// lock, then the queue lock: `spill/commit.rs`); the parent directory
    /// is fsynced and the manifest rewritten after both are released.
    /// Returns false, changing nothing, when the directory cannot be moved,
    /// or when the disk queue is broken: a reopen may be reading the
    /// directory at its current path without the queue lock
    /// ([`Self::recover_spill`]), so it must not move under it.
    fn reconfigure(&self, t: Arc<Target>, settings: &Settings) -> bool {
        let new_id = t.id.0.clone();
        let mut moved = None;
        if let (Some(spill), Some(data_dir)) = (&self.spill, &settings.data_dir) {
            let to = spill_mod::target_dir(data_dir, &new_id);
            let rounds = spill.commit.hold_rounds();
            let mut q = lock_queue(&spill.queue);
            if q.is_broken() {
                tracing::warn!(target_id = %self.id, new_target_id = %new_id,
                    "delivery: the disk queue is broken (being reopened); the old target drains in parallel instead of going on under the new config");
                return false;
            }
            let from = q.dir().to_path_buf();
            if let Err(e) = spill_mod::move_dir(&from, &to) {
                tracing::warn!(target_id = %self.id, new_target_id = %new_id, error = %e,
                    "delivery: cannot move the disk queue to the new config's target; the old target drains in parallel instead");
                return false;
            }
            q.moved_to(&to);
            drop(q);
            drop(rounds);
            moved = Some(to);
        }
        // The target first: the sender reads it for every attempt, so a
        // batch polled from here on goes to the new endpoint.
        if let Ok(mut cur) = self.target.lock() {
            *cur = t.clone();
        }
        self.endpoint
            .store(Arc::new(stats::display_endpoint(&t.config.endpoint)));
        let d = &t.config.delivery;
        let config = CoreConfig {
            max_samples: d.max_samples_per_send.max(1),
            deadline: d.batch_send_deadline,
            max_concurrency: d.max_concurrency.max(1),
            max_backoff: d.max_backoff,
            queue_bytes: settings.target_queue_bytes,
            lanes: None,
        };
        if let Ok(mut core) = self.core.lock() {
            core.reconfigure(new_id.clone(), config);
        }
        let old = self.metrics.load();
        for g in [
            &old.queue_bytes,
            &old.spill_bytes,
            &old.in_flight,
            &old.concurrency,
        ] {
            g.set(0.0);
        }
        self.metrics.store(Arc::new(TargetMetrics::new(&new_id)));
        self.id.store(Arc::new(new_id.clone()));
        if let Some(to) = moved {
            spill_mod::sync_parent(&to);
            write_manifest(&new_id, self.lanes(), &t.routes, &to);
        }
        self.notify.notify_one();
        true
    }

    /// Takes the registry's current view of this target (same id, so same
    /// config; its routes may differ) and keeps the spill manifest's routes
    /// current, for a successor after a config change.
    fn set_target(&self, t: Arc<Target>) {
        let routes_changed = match self.target.lock() {
            Ok(mut cur) => {
                let changed = cur.routes != t.routes;
                *cur = t.clone();
                changed
            }
            Err(_) => false,
        };
        if let (true, Some(spill)) = (routes_changed, &self.spill) {
            let dir = lock_queue(&spill.queue).dir().to_path_buf();
            write_manifest(&self.id(), self.lanes(), &t.routes, &dir);
        }
    }

    fn lanes(&self) -> u32 {
        self.core.lock().map_or(1, |c| c.lanes())
    }

    fn target(&self) -> Arc<Target> {
        self.target
            .lock()
            .map(|t| t.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn removed_at(&self) -> Option<Instant> {
        self.removed_at.lock().ok().and_then(|r| *r)
    }

    fn set_removed(&self, at: Option<Instant>) {
        if let Ok(mut r) = self.removed_at.lock() {
            *r = at;
        }
        if let Ok(mut c) = self.core.lock() {
            c.set_flush(at.is_some());
        }
        self.notify.notify_one();
    }

    fn push(&self, shard: u32, chunk: Chunk, stats: &GlobalStats, now: Instant, wall: u64) {
        self.push_all(std::iter::once((shard, chunk)), None, stats, now, wall);
    }

    /// Queues `chunks` (shard, chunk) under one lock and wakes the sender
    /// once. On a lagging target ([`TargetCore::lagging`]) a chunk that
    /// pins a request buffer much larger than itself is copied out first,
    /// with a permit of its own from `budget` (when it has room), so the
    /// backlog holds only its own bytes. A handle whose sender already
    /// stopped (removed for good) takes nothing: the samples are counted as
    /// dropped (`removed`).
    fn push_all(
        &self,
        chunks: impl Iterator<Item = (u32, Chunk)>,
        budget: Option<&MemoryBudget>,
        stats: &GlobalStats,
        now: Instant,
        wall: u64,
    ) {
        let mut to_disk = ToDisk {
            spill: self.spill.as_ref(),
            wall_ms: wall,
            now,
            disk_full: 0,
            error: None,
        };
        let mut removed = 0u64;
        let dropped = match self.core.lock() {
            Ok(mut core) => {
                let before = core.counters().dropped_queue_full;
                for (shard, chunk) in chunks {
                    if core.closed() {
                        removed += u64::from(chunk.samples);
                        continue;
                    }
                    let chunk = match budget {
                        Some(b) if core.lagging() => unpin(chunk, b),
                        _ => chunk,
                    };
                    core.push(shard, chunk, &mut to_disk);
                }
                core.counters().dropped_queue_full - before
            }
            Err(_) => chunks.map(|(_, c)| u64::from(c.samples)).sum(),
        };
        if dropped > 0 {
            stats.add_queue_full(dropped);
            self.metrics.load().queue_full.increment(dropped);
        }
        if removed > 0 {
            stats.abandoned.fetch_add(removed, Ordering::Relaxed);
            metrics::counter!(names::DROPPED, "reason" => "removed").increment(removed);
        }
        self.count_disk(&to_disk, stats);
        self.notify.notify_one();
    }

    /// `durability: wal`: appends `chunk` to the disk queue and returns its
    /// seq; the lane then sends it from disk, in seq order with everything
    /// else of the lane. On a disk error (or without a spill) the chunk is
    /// queued in memory and `None` says it is not durable.
    fn push_wal(
        &self,
        shard: u32,
        chunk: Chunk,
        stats: &GlobalStats,
        now: Instant,
        wall: u64,
    ) -> Option<u64> {
        let Some(spill) = &self.spill else {
            self.push(shard, chunk, stats, now, wall);
            return None;
        };
        let mut to_disk = ToDisk {
            spill: Some(spill),
            wall_ms: wall,
            now,
            disk_full: 0,
            error: None,
        };
        let seq = match self.core.lock() {
            Ok(mut core) => {
                let lane = shard % core.lanes();
                let samples = chunk.samples;
                match to_disk.overflow(lane, chunk.clone()) {
                    Some(seq) => {
                        core.note_spilled(lane, seq, samples);
                        Some(seq)
                    }
                    None => None,
                }
            }
            Err(_) => None,
        };
        self.count_disk(&to_disk, stats);
        match seq {
            Some(seq) => {
                self.notify.notify_one();
                Some(seq)
            }
            None => {
                self.push(shard, chunk, stats, now, wall);
                None
            }
        }
    }

    /// Counts what one overflow did: `disk_full` drops and spill errors.
    fn count_disk(&self, to_disk: &ToDisk<'_>, stats: &GlobalStats) {
        let Some(spill) = &self.spill else { return };
        if to_disk.disk_full > 0 {
            spill
                .disk_full
                .fetch_add(to_disk.disk_full, Ordering::Relaxed);
            stats.add_disk_full(to_disk.disk_full);
            self.metrics.load().disk_full.increment(to_disk.disk_full);
        }
        if let Some(e) = &to_disk.error {
            stats.add_spill_error();
            let now_ms = wall_ms(SystemTime::now());
            let last = spill.last_warn_ms.load(Ordering::Relaxed);
            if now_ms.saturating_sub(last) >= 10_000 {
                spill.last_warn_ms.store(now_ms, Ordering::Relaxed);
                tracing::warn!(target_id = %self.id, error = %e, "delivery: disk spill failed; data beyond the memory queue is dropped (queue_full) until it works again");
            }
        }
    }

    /// When the disk queue is broken (a failed fsync, or its open failed at
    /// start), when to try reopening it ([`ReopenBackoff`]: 1s after it is
    /// first seen broken, then doubling up to 30s, also across a reopen that
    /// breaks again soon); `None` while it works.
    fn spill_reopen_at(&self, now: Instant) -> Option<Instant> {
        let spill = self.spill.as_ref()?;
        let mut backoff = spill.reopen.lock().unwrap_or_else(|p| p.into_inner());
        if !lock_queue(&spill.queue).is_broken() {
            return None;
        }
        if backoff.next_at().is_none() {
            backoff.due(now);
        }
        backoff.next_at()
    }

    /// Tries to reopen the broken disk queue (blocking: run it off the
    /// runtime). Recovery reads the directory without the queue lock (a
    /// broken queue takes no appends, and no sync round runs meanwhile), so
    /// ingest keeps overflowing to `queue_full` meanwhile instead of waiting. Returns when the next
    /// attempt is due, or `None` when the queue works again.
    fn recover_spill(&self, stats: &GlobalStats, now: Instant) -> Option<Instant> {
        let spill = self.spill.as_ref()?;
        let mut backoff = spill.reopen.lock().unwrap_or_else(|p| p.into_inner());
        // No sync round meanwhile: recovery rewrites the directory (it drops
        // a stale `ledger.tmp`) that a round planned earlier would still
        // write. Lock order: reopen, round, queue.
        let _rounds = spill.commit.hold_rounds();
        let (dir, cfg, opened) = {
            let q = lock_queue(&spill.queue);
            if !q.is_broken() {
                return None;
            }
            (q.dir().to_path_buf(), q.config(), q.is_opened())
        };
        // Only a queue that never opened may lack its directory; `recover`
        // never creates one (a directory moved away must not come back
        // empty).
        let created = match opened {
            true => Ok(()),
            false => std::fs::create_dir_all(&dir).map_err(|e| spill_mod::SpillError::Io {
                op: "create",
                path: dir.clone(),
                source: Arc::new(e),
            }),
        };
        let recovered = match created.and_then(|()| DiskQueue::recover(&dir, cfg)) {
            Ok(r) => r,
            Err(e) => {
                backoff.failed(now);
                stats.add_spill_error();
                let retry = backoff.next_at().map(|t| t.saturating_duration_since(now));
                tracing::warn!(target_id = %self.id, error = %e, retry_in = ?retry,
                    "delivery: cannot reopen the disk spill yet; this target stays memory-only");
                return backoff.next_at();
            }
        };
        let (r, written) = {
            let mut q = lock_queue(&spill.queue);
            if q.dir() != dir {
                // Moved while it was recovered (a broken queue is not
                // renamed by a live config change, so this should not
                // happen): what was read belongs to the old path. Drop it
                // and recover again at once from the current one.
                tracing::warn!(target_id = %self.id, recovered = %dir.display(), now_at = %q.dir().display(),
                    "delivery: the disk spill moved while it was reopened; reopening it again");
                return Some(now);
            }
            let r = q.adopt(recovered);
            (r, q.written_seq())
        };
        backoff.reopened(now);
        if r.first_open {
            // The manifest was left as it was while the queue never opened
            // (its lane count describes the records now recovered).
            write_manifest(&self.id(), self.lanes(), &self.target().routes, &dir);
        }
        if r.first_open && r.recovery.records > 0 {
            // Its backlog is older than anything queued since: every lane
            // waits for it, as after a restart.
            if let Ok(mut core) = self.core.lock() {
                core.set_recovered(0, written);
            }
        }
        if r.lost_records > 0 {
            stats.add_spill_errors(r.lost_records);
        }
        tracing::info!(target_id = %self.id, records = r.recovery.records,
            truncated_bytes = r.recovery.truncated_bytes,
            corrupt_records = r.recovery.corrupt_records_dropped,
            lost_records = r.lost_records, lost_samples = r.lost_samples,
            "delivery: disk spill reopened; spilling again");
        self.notify.notify_one();
        None
    }

    /// Spill gauges: queued bytes and the enqueue time of the oldest record.
    fn spill_stats(&self) -> (u64, Option<u64>) {
        self.spill.as_ref().map_or((0, None), |s| {
            let st = lock_queue(&s.queue).stats();
            (st.bytes, st.oldest_enqueued_ms)
        })
    }

    /// Reads disk records back while the core has room and lanes wait for
    /// them, then acks what was delivered.
    fn reload(&self, stats: &GlobalStats) {
        let Some(spill) = &self.spill else { return };
        for _ in 0..64 {
            let Some(room) = self.core.lock().ok().and_then(|c| c.reload_room()) else {
                break;
            };
            let (chunks, written, exhausted, failed) = {
                let mut q = lock_queue(&spill.queue);
                if q.is_broken() {
                    // Read back only after the reopen (a read error broke
                    // it, or a failed sync): retrying on every wake-up would
                    // repeat a failing disk read under the queue lock.
                    break;
                }
                match q.read(4096, room) {
                    Ok(recs) => {
                        let exhausted = recs.is_empty();
                        let chunks: Vec<DiskChunk> = recs
                            .into_iter()
                            .map(|r| DiskChunk {
                                seq: r.seq,
                                tag: r.record.tag,
                                records: r.record.body,
                                samples: r.record.samples,
                                enqueued_ms: r.record.enqueued_ms,
                            })
                            .collect();
                        (chunks, q.written_seq(), exhausted, false)
                    }
                    Err(e) => {
                        // Nothing is skipped (skipping would ack the unread
                        // records): the queue is marked broken, so the
                        // reopen path retries with backoff; the lanes that
                        // wait for disk records wait meanwhile.
                        stats.add_spill_error();
                        let unread = q.stats().records;
                        tracing::error!(target_id = %self.id, error = %e, unread_records = unread,
                            "delivery: cannot read the disk spill back; the queue is reopened to retry (its records stay queued)");
                        q.mark_broken(format!("read failed: {e}"));
                        (Vec::new(), q.written_seq(), false, true)
                    }
                }
            };
            if failed {
                break;
            }
            if let Ok(mut core) = self.core.lock() {
                core.reload(
                    chunks,
                    written,
                    exhausted,
                    Instant::now(),
                    wall_ms(SystemTime::now()),
                );
            }
            if exhausted {
                break;
            }
        }
        self.ack_disk();
    }

    /// Acks the disk queue through what the core says was delivered.
    fn ack_disk(&self) {
        let Some(spill) = &self.spill else { return };
        let Some(through) = self.core.lock().ok().map(|c| c.disk_ack()) else {
            return;
        };
        if through > spill.acked.load(Ordering::Relaxed) {
            spill.acked.store(through, Ordering::Relaxed);
            lock_queue(&spill.queue).ack_through(through);
        }
    }

    /// Shutdown: moves what is still in memory to disk and fsyncs. Returns
    /// the samples that could not be kept. Blocking (it may run a recovery
    /// scan and fsyncs): async code runs it with [`spill_all_blocking`].
    fn spill_all(&self, stats: &GlobalStats) -> u64 {
        // A broken queue gets one more reopen attempt, whatever its backoff.
        self.recover_spill(stats, Instant::now());
        let Ok(mut core) = self.core.lock() else {
            return 0;
        };
        let Some(spill) = &self.spill else {
            return core.pending_samples();
        };
        let unreadable = core.counters().dropped_unreadable;
        let chunks = core.drain_memory();
        let unreadable = core.counters().dropped_unreadable - unreadable;
        drop(core);
        let now = Instant::now();
        let mut to_disk = ToDisk {
            spill: Some(spill),
            wall_ms: wall_ms(SystemTime::now()),
            now,
            disk_full: 0,
            error: None,
        };
        let mut lost = unreadable;
        for (lane, c) in chunks {
            let samples = u64::from(c.samples);
            if to_disk.overflow(lane, c).is_none() {
                lost += samples;
            }
        }
        self.count_disk(&to_disk, stats);
        // Not at the same time as a round of the sync thread (both would
        // write the ledger through the same temp file).
        let _rounds = spill.commit.hold_rounds();
        if let Err(e) = lock_queue(&spill.queue).flush(true) {
            tracing::error!(target_id = %self.id, error = %e, "delivery: cannot sync the disk spill at shutdown");
        }
        lost
    }

    /// Undoes [`Self::spill_all`] for a removed target that was revived
    /// while its queue went to disk: the core reads every unacked disk
    /// record back again, from the oldest, before anything newer of a lane.
    fn resume_after_spill(&self) {
        let Some(spill) = &self.spill else { return };
        let written = {
            let mut q = lock_queue(&spill.queue);
            q.rewind();
            q.written_seq()
        };
        if let Ok(mut core) = self.core.lock() {
            core.undrain(written);
        }
        self.notify.notify_one();
    }

    /// Pauses or resumes sending.
    pub fn set_paused(&self, paused: bool) {
        if let Ok(mut c) = self.core.lock() {
            c.set_paused(paused);
        }
        self.notify.notify_one();
    }

    /// The TARGET object of docs/stats-api.md.
    pub fn to_json(&self, snapshot: &Snapshot) -> Value {
        let target = self.target();
        let now = Instant::now();
        let (spill_bytes, oldest_ms) = self.spill_stats();
        let disk_age = oldest_ms.map_or(0.0, |t| {
            wall_ms(SystemTime::now()).saturating_sub(t) as f64 / 1000.0
        });
        let disk_full = self
            .spill
            .as_ref()
            .map_or(0, |s| s.disk_full.load(Ordering::Relaxed));
        let Ok(core) = self.core.lock() else {
            return json!({"id": self.id(), "endpoint": self.endpoint.load().as_str(), "state": "failing"});
        };
        let c = core.counters();
        let h = core.latency_us();
        let q = |p: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(p) as f64 / 1000.0
            }
        };
        let feeds: Vec<Value> = target
            .routes
            .iter()
            .map(|r| {
                json!({
                    "exportId": r.export_id,
                    "deploymentId": r.deployment_id,
                    "clusterId": snapshot.deployment_cluster_id(&r.deployment_id).unwrap_or(""),
                })
            })
            .collect();
        json!({
            "id": self.id(),
            "endpoint": self.endpoint.load().as_str(),
            "state": core.state(now),
            "paused": core.paused(),
            "queueBytes": core.queue_bytes(),
            "queueSamples": core.queue_samples(),
            "spillBytes": spill_bytes,
            "oldestQueuedSeconds": core.oldest_queued(now).as_secs_f64().max(disk_age),
            "samplesSent": c.samples_sent,
            "bytesSent": c.bytes_sent,
            "requestsSent": c.requests_sent,
            "retries": c.retries,
            "failures": c.failures,
            "dropped": {"rejected": c.dropped_rejected, "queue_full": c.dropped_queue_full, "disk_full": disk_full},
            "lastError": core.last_error().map(|e| json!({
                "time": stats::rfc3339(e.time),
                "status": e.status,
                "message": e.message,
            })),
            "concurrency": core.concurrency(),
            "inFlight": core.in_flight(),
            "latencyMs": {
                "p50": q(0.5), "p90": q(0.9), "p99": q(0.99),
                "max": if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
            },
            "feeds": feeds,
        })
    }
}

type TargetPlan = Plan<Arc<TargetHandle>>;

struct Inner {
    snapshot: Arc<ArcSwap<Snapshot>>,
    settings: Settings,
    budget: MemoryBudget,
    plan: ArcSwap<TargetPlan>,
    sync_lock: Mutex<()>,
    targets: Mutex<BTreeMap<String, Arc<TargetHandle>>>,
    retired: Mutex<Vec<Arc<TargetHandle>>>,
    sender: HttpSender,
    scratch: ScratchPool,
    stats: GlobalStats,
    started: Instant,
    closing: AtomicBool,
    stopped: AtomicBool,
    /// Backlogs on disk of targets not in the registry, as last seen.
    orphans: Mutex<Vec<Orphan>>,
}

/// The disk backlog of a target that is no longer in the registry.
#[derive(Debug, Clone)]
struct Orphan {
    target_id: String,
    dir: PathBuf,
    disk_bytes: u64,
    segments: u64,
    age: Duration,
}

/// The real delivery (SPEC §4, §5); cheap to clone.
#[derive(Clone)]
pub struct FanoutDelivery {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FanoutDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanoutDelivery").finish_non_exhaustive()
    }
}

struct Done {
    lane: u32,
    batch: u64,
    result: SendResult,
    latency: Duration,
}

impl FanoutDelivery {
    /// Delivery over the shared snapshot; targets start on the first sync.
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        budget: MemoryBudget,
        settings: Settings,
    ) -> FanoutDelivery {
        FanoutDelivery {
            inner: Arc::new(Inner {
                snapshot,
                settings,
                budget,
                plan: ArcSwap::from_pointee(Plan::empty()),
                sync_lock: Mutex::new(()),
                targets: Mutex::new(BTreeMap::new()),
                retired: Mutex::new(Vec::new()),
                sender: HttpSender::new(),
                scratch: ScratchPool::default(),
                stats: GlobalStats::default(),
                started: Instant::now(),
                closing: AtomicBool::new(false),
                orphans: Mutex::new(Vec::new()),
                stopped: AtomicBool::new(false),
            }),
        }
    }

    /// Starts delivery for `live`: targets of the current registry, and a
    /// task that follows registry changes. Needs a tokio runtime.
    pub fn start(live: &Arc<Live>, budget: MemoryBudget, settings: Settings) -> FanoutDelivery {
        let d = FanoutDelivery::new(live.shared(), budget, settings);
        d.inner.sync(&live.current());
        if d.inner.settings.data_dir.is_some() {
            let weak = Arc::downgrade(&d.inner);
            tokio::spawn(async move {
                loop {
                    let Some(inner) = weak.upgrade() else { return };
                    if inner.stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    inner.sweep_orphans(SystemTime::now());
                    let every = inner
                        .settings
                        .spill_retention
                        .clamp(Duration::from_secs(1), Duration::from_secs(60));
                    drop(inner);
                    tokio::time::sleep(every).await;
                }
            });
        }
        let mut diffs = live.subscribe();
        let weak = Arc::downgrade(&d.inner);
        tokio::spawn(async move {
            loop {
                let r = diffs.recv().await;
                let Some(inner) = weak.upgrade() else { return };
                match r {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let snap = inner.snapshot.load_full();
                        let _ = tokio::task::spawn_blocking(move || inner.sync(&snap)).await;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        d
    }

    /// Applies the current snapshot now (tests; `start` follows changes itself).
    pub fn sync_now(&self) {
        let snap = self.inner.snapshot.load_full();
        self.inner.sync(&snap);
    }

    /// The registry snapshot in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot.load_full()
    }

    /// Gateway-wide counters.
    pub fn stats(&self) -> &GlobalStats {
        &self.inner.stats
    }

    /// The shared memory budget.
    pub fn budget(&self) -> &MemoryBudget {
        &self.inner.budget
    }

    /// Every target (active, then retired ones still draining).
    pub fn targets(&self) -> Vec<Arc<TargetHandle>> {
        let mut v: Vec<_> = self
            .inner
            .targets
            .lock()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default();
        if let Ok(r) = self.inner.retired.lock() {
            v.extend(r.iter().cloned());
        }
        v
    }

    /// One target by id.
    pub fn target(&self, id: &str) -> Option<Arc<TargetHandle>> {
        self.targets().into_iter().find(|t| **t.id.load() == id)
    }

    /// `GET /api/v1/targets` items.
    pub fn targets_json(&self) -> Vec<Value> {
        let snap = self.inner.snapshot.load_full();
        self.targets().iter().map(|t| t.to_json(&snap)).collect()
    }

    /// The snapshot of `GET /api/v1/stats`.
    pub fn stats_json(&self, gateway: &str, ready: bool, draining: bool) -> Value {
        let s = &self.inner.stats;
        let snap = self.inner.snapshot.load_full();
        let mut requests: BTreeMap<&str, BTreeMap<String, u64>> = [
            ("http1", BTreeMap::new()),
            ("h2", BTreeMap::new()),
            ("h3", BTreeMap::new()),
        ]
        .into();
        for ((transport, code), n) in s.requests() {
            requests
                .entry(transport)
                .or_default()
                .insert(code.to_string(), n);
        }
        let budget = &self.inner.budget;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let errors: Vec<Value> = s
            .recent_errors()
            .into_iter()
            .map(|e| {
                json!({"time": stats::rfc3339(e.time), "targetId": e.target, "status": e.status, "message": e.message})
            })
            .collect();
        json!({
            "time": stats::rfc3339_millis(SystemTime::now()),
            "uptimeSeconds": self.inner.started.elapsed().as_secs_f64(),
            "gateway": gateway,
            "configVersion": snap.version(),
            "ready": ready,
            "draining": draining,
            "ingest": {
                "requests": requests,
                "samples": load(&s.samples),
                "series": load(&s.series),
                "bytes": load(&s.bytes),
                "inFlightBytes": budget.total_bytes().saturating_sub(budget.available_bytes()),
                "memoryBudgetBytes": budget.total_bytes(),
            },
            "drops": {
                "unattributed": load(&s.unattributed),
                "foreign": load(&s.foreign),
                "filtered": load(&s.filtered),
                "queue_full": load(&s.queue_full),
                "disk_full": load(&s.disk_full),
                "rejected": load(&s.rejected),
            },
            "out": {"samples": load(&s.out_samples), "bytes": load(&s.out_bytes)},
            "orphanBacklogs": self.inner.orphans.lock().map(|o| o.iter().map(|b| json!({
                "targetId": b.target_id,
                "diskBytes": b.disk_bytes,
                "segments": b.segments,
                "ageSeconds": b.age.as_secs_f64(),
                "deleteInSeconds": self.inner.settings.spill_retention.saturating_sub(b.age).as_secs_f64(),
            })).collect::<Vec<_>>()).unwrap_or_default(),
            "targets": self.targets_json(),
            "recentErrors": errors,
        })
    }

    /// Looks for disk backlogs of targets not in the registry now (the
    /// start-up scan; a task repeats it every minute).
    pub fn sweep_orphans_now(&self) {
        self.inner.sweep_orphans(SystemTime::now());
    }

    /// Orphan backlogs as `(target id, bytes on disk)`.
    pub fn orphan_backlogs(&self) -> Vec<(String, u64)> {
        self.inner
            .orphans
            .lock()
            .map(|o| {
                o.iter()
                    .map(|b| (b.target_id.clone(), b.disk_bytes))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Samples queued or in flight over all targets.
    pub fn pending_samples(&self) -> u64 {
        self.targets()
            .iter()
            .map(|t| t.core.lock().map_or(0, |c| c.pending_samples()))
            .sum()
    }

    /// Stops taking data, delivers what is queued within `grace`, then stops
    /// the senders. Returns the samples left undelivered.
    pub async fn shutdown(&self, grace: Duration) -> u64 {
        let inner = &self.inner;
        inner.closing.store(true, Ordering::SeqCst);
        for t in self.targets() {
            if let Ok(mut c) = t.core.lock() {
                c.set_flush(true);
            }
            t.notify.notify_one();
        }
        let deadline = Instant::now() + grace;
        loop {
            let idle = self
                .targets()
                .iter()
                .all(|t| t.core.lock().map_or(true, |c| c.is_idle()));
            if idle || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Stop the senders first so nothing changes the queues while they go
        // to disk; in-flight attempts that still succeed become duplicates.
        inner.stopped.store(true, Ordering::SeqCst);
        for t in self.targets() {
            t.notify.notify_one();
        }
        let mut left = 0;
        for t in self.targets() {
            left += spill_all_blocking(inner, &t).await;
        }
        if left > 0 {
            inner.stats.abandoned.fetch_add(left, Ordering::Relaxed);
            metrics::counter!(names::DROPPED, "reason" => "shutdown").increment(left);
            tracing::warn!(
                samples = left,
                grace_ms = grace.as_millis() as u64,
                "delivery: samples not delivered within the shutdown grace"
            );
        }
        inner.stopped.store(true, Ordering::SeqCst);
        for t in self.targets() {
            t.notify.notify_one();
        }
        left
    }
}

impl Inner {
    /// Reports the disk backlogs of targets that are not running (removed
    /// from the registry, or whose config, and so id, changed while the
    /// gateway was down) and deletes those older than the retention. Holds
    /// the target map so a target starting with that id cannot race.
    fn sweep_orphans(&self, now: SystemTime) {
        let Some(data_dir) = &self.settings.data_dir else {
            return;
        };
        let Ok(targets) = self.targets.lock() else {
            return;
        };
        let retired: Vec<String> = self
            .retired
            .lock()
            .map(|r| r.iter().map(|h| h.id()).collect())
            .unwrap_or_default();
        let backlogs = match spill_mod::list_backlogs(data_dir) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "delivery: cannot list the disk backlogs");
                return;
            }
        };
        let Ok(mut orphans) = self.orphans.lock() else {
            return;
        };
        let mut kept = Vec::new();
        for b in backlogs {
            if targets.contains_key(&b.target_id) || retired.contains(&b.target_id) {
                continue;
            }
            // Retention counts from when the backlog became an orphan; one
            // that cannot be marked is kept (deleting it would fail too).
            let since = match b.orphaned_since {
                Some(t) => Ok(t),
                None if b.segments == 0 => Ok(now),
                None => spill_mod::mark_orphan(&b.dir, now),
            };
            let age = match since {
                Ok(t) => now.duration_since(t).unwrap_or(Duration::ZERO),
                Err(e) => {
                    tracing::warn!(target_id = %b.target_id, error = %e, "delivery: cannot mark an orphan disk backlog; it is kept");
                    Duration::ZERO
                }
            };
            if b.segments == 0 || age >= self.settings.spill_retention {
                match std::fs::remove_dir_all(&b.dir) {
                    Ok(()) if b.segments > 0 => {
                        tracing::warn!(target_id = %b.target_id, bytes = b.disk_bytes,
                        age_secs = age.as_secs(), "delivery: deleted the disk backlog of a target no longer in the registry (retention over)")
                    }
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(target_id = %b.target_id, error = %e, "delivery: cannot delete an expired disk backlog")
                    }
                }
                continue;
            }
            if !orphans.iter().any(|o| o.target_id == b.target_id) {
                tracing::warn!(target_id = %b.target_id, bytes = b.disk_bytes, age_secs = age.as_secs(),
                    retention_secs = self.settings.spill_retention.as_secs(),
                    "delivery: disk backlog of a target no longer in the registry; kept until the retention ends (it is resumed if the target comes back)");
            }
            kept.push(Orphan {
                target_id: b.target_id,
                dir: b.dir,
                disk_bytes: b.disk_bytes,
                segments: b.segments,
                age,
            });
        }
        *orphans = kept;
    }

    /// The orphan backlog that a starting target `t` resumes (docs/spill.md,
    /// "Config changes"): the only orphan whose manifest has exactly `t`'s
    /// routes. Orphans are queue directories of targets that are neither in
    /// `snapshot` nor running nor retired; `candidates` caches their
    /// manifests for one sync. Without a manifest (older layout) or with
    /// several matches nothing is resumed and the orphans stay orphans.
    fn successor_backlog(
        &self,
        t: &Target,
        snapshot: &Snapshot,
        running: &BTreeMap<String, Arc<TargetHandle>>,
        candidates: &mut Option<Vec<(Orphan, spill_mod::Manifest)>>,
    ) -> Option<Orphan> {
        let data_dir = self.settings.data_dir.as_ref()?;
        if t.routes.is_empty() {
            return None;
        }
        let candidates =
            candidates.get_or_insert_with(|| self.orphan_manifests(data_dir, snapshot, running));
        if candidates.is_empty() {
            return None;
        }
        let routes = t
            .routes
            .iter()
            .map(|r| spill_mod::ManifestRoute {
                deployment_id: r.deployment_id.clone(),
                export_id: r.export_id.clone(),
            })
            .collect();
        let routes = spill_mod::Manifest::new(&t.id.0, 0, routes).routes;
        let manifests: Vec<&spill_mod::Manifest> = candidates.iter().map(|(_, m)| m).collect();
        match spill_mod::successor(&routes, &manifests) {
            spill_mod::Successor::None => None,
            spill_mod::Successor::Unique(i) => {
                let (orphan, _) = candidates.swap_remove(i);
                if let Ok(mut o) = self.orphans.lock() {
                    o.retain(|x| x.target_id != orphan.target_id);
                }
                Some(orphan)
            }
            spill_mod::Successor::Ambiguous(n) => {
                tracing::warn!(target_id = %t.id, backlogs = n, "delivery: several disk backlogs of earlier configs lead to exactly this target's routes; none is resumed (they stay orphans)");
                None
            }
        }
    }

    /// The target of `snapshot` that running target `h`, whose id is gone,
    /// becomes in place (docs/spill.md "Config changes"): the one with
    /// exactly `h`'s routes, if it is not running or retired under its own
    /// id and has no disk backlog of its own.
    fn live_successor(
        &self,
        h: &TargetHandle,
        snapshot: &Snapshot,
        running: &BTreeMap<String, Arc<TargetHandle>>,
    ) -> Option<Arc<Target>> {
        let current = h.target();
        if current.routes.is_empty() {
            return None;
        }
        let t = snapshot.targets().find(|t| t.routes == current.routes)?;
        if running.contains_key(&t.id.0) {
            return None;
        }
        if let Ok(r) = self.retired.lock() {
            if r.iter().any(|x| **x.id.load() == t.id.0) {
                return None;
            }
        }
        if let Some(data_dir) = &self.settings.data_dir {
            let dir = spill_mod::target_dir(data_dir, &t.id.0);
            let has_segments = std::fs::read_dir(&dir).is_ok_and(|mut d| {
                d.any(|e| {
                    e.is_ok_and(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .ends_with(spill_mod::SEGMENT_EXT)
                    })
                })
            });
            if has_segments {
                return None;
            }
        }
        Some(t.clone())
    }

    /// Orphan backlogs (see [`Inner::successor_backlog`]) that have a manifest.
    fn orphan_manifests(
        &self,
        data_dir: &Path,
        snapshot: &Snapshot,
        running: &BTreeMap<String, Arc<TargetHandle>>,
    ) -> Vec<(Orphan, spill_mod::Manifest)> {
        let retired: Vec<String> = self
            .retired
            .lock()
            .map(|r| r.iter().map(|h| h.id()).collect())
            .unwrap_or_default();
        let backlogs = match spill_mod::list_backlogs(data_dir) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "delivery: cannot list the disk backlogs");
                return Vec::new();
            }
        };
        backlogs
            .into_iter()
            .filter(|b| {
                b.segments > 0
                    && !running.contains_key(&b.target_id)
                    && !retired.contains(&b.target_id)
                    && snapshot.target(&b.target_id).is_none()
            })
            .filter_map(|b| {
                let m = match spill_mod::Manifest::read(&b.dir) {
                    Ok(m) => m?,
                    Err(e) => {
                        tracing::warn!(target_id = %b.target_id, error = %e, "delivery: unreadable manifest; this backlog stays an orphan");
                        return None;
                    }
                };
                let orphan = Orphan {
                    target_id: b.target_id,
                    dir: b.dir,
                    disk_bytes: b.disk_bytes,
                    segments: b.segments,
                    age: Duration::ZERO,
                };
                Some((orphan, m))
            })
            .collect()
    }

    /// Deletes the spill directory of a removed target that drained
    /// completely, unless a target with its id started meanwhile.
    fn forget_drained(&self, h: &TargetHandle) {
        let Some(spill) = &h.spill else { return };
        let Ok(targets) = self.targets.lock() else {
            return;
        };
        if targets.contains_key(&h.id()) {
            return;
        }
        let q = lock_queue(&spill.queue);
        if q.stats().records == 0 {
            if let Err(e) = std::fs::remove_dir_all(q.dir()) {
                tracing::debug!(target_id = %h.id, error = %e, "delivery: cannot delete the spill of a drained target");
            }
        }
    }

    fn sync(self: &Arc<Self>, snapshot: &Arc<Snapshot>) {
        let Ok(_guard) = self.sync_lock.lock() else {
            return;
        };
        let current = self.plan.load();
        if current.version == snapshot.version() && current.version != 0 {
            return;
        }
        if current.version > snapshot.version() {
            return;
        }
        let now = Instant::now();
        let Ok(mut targets) = self.targets.lock() else {
            return;
        };
        let gone: Vec<String> = targets
            .keys()
            .filter(|id| snapshot.target(id).is_none())
            .cloned()
            .collect();
        for id in gone {
            if let Some(h) = targets.remove(&id) {
                if let Some(t) = self.live_successor(&h, snapshot, &targets) {
                    if h.reconfigure(t.clone(), &self.settings) {
                        tracing::info!(from_target_id = %id, target_id = %t.id, endpoint = %h.endpoint,
                            "delivery: config of this export changed; its target goes on under the new id with its queue and backlog");
                        targets.insert(t.id.0.clone(), h);
                        continue;
                    }
                }
                tracing::info!(target_id = %id, "delivery: target removed; draining");
                h.set_removed(Some(now));
                if let Ok(mut r) = self.retired.lock() {
                    r.push(h);
                }
            }
        }
        // Orphan backlogs with a manifest, listed when a new target needs them.
        let mut candidates = None;
        for t in snapshot.targets() {
            if let Some(h) = targets.get(&t.id.0) {
                h.set_target(t.clone());
                continue;
            }
            // A target that comes back while draining is revived.
            let revived = self.retired.lock().ok().and_then(|mut r| {
                let i = r.iter().position(|h| h.id() == t.id.0)?;
                Some(r.swap_remove(i))
            });
            let h = match revived {
                Some(h) => {
                    h.set_removed(None);
                    h.set_target(t.clone());
                    h
                }
                None => {
                    let adopt = self.successor_backlog(t, snapshot, &targets, &mut candidates);
                    let h = Arc::new(TargetHandle::new(t.clone(), &self.settings, adopt.as_ref()));
                    tracing::info!(target_id = %h.id, endpoint = %h.endpoint, "delivery: target started");
                    tokio::spawn(run_target(self.clone(), h.clone()));
                    h
                }
            };
            targets.insert(t.id.0.clone(), h);
        }
        let plan = Plan::build(snapshot, |id| {
            targets.get(id).map(|h| (h.clone(), h.lanes()))
        });
        self.plan.store(Arc::new(plan));
        metrics::gauge!(names::CONFIG_VERSION).set(snapshot.version() as f64);
    }

    async fn submit(self: &Arc<Self>, batch: Accepted) -> Result<(), DeliveryError> {
        if self.closing.load(Ordering::Relaxed) {
            return Err(DeliveryError::Unavailable(
                "delivery is shutting down".into(),
            ));
        }
        let snapshot = self.snapshot.load_full();
        let mut plan = self.plan.load_full();
        if plan.version != snapshot.version() {
            // Applying a registry version opens queues, may adopt or move a
            // backlog and fsyncs: off the async workers.
            let (inner, snap) = (Arc::clone(self), Arc::clone(&snapshot));
            let _ = tokio::task::spawn_blocking(move || inner.sync(&snap)).await;
            plan = self.plan.load_full();
        }
        let s = &batch.summary;
        let stats = &self.stats;
        stats.add_ingest(
            (s.samples + s.histograms) as u64,
            s.series as u64,
            batch.body.len() as u64,
        );

        tracing::debug!(
            cluster = %batch.cluster.id,
            series = s.series,
            samples = s.samples,
            total_samples = stats.samples.load(Ordering::Relaxed),
            "accepted batch"
        );
        let mut scratch = self.scratch.take();
        let (drops, bound) = scratch.route(
            &plan,
            &snapshot,
            &self.settings.catalog,
            &batch.cluster.id,
            &batch.body,
            &batch.series,
        );
        stats.add_drops(&drops);
        if bound == 0 {
            self.scratch.give(scratch);
            return Ok(());
        }
        // A request whose encoded forms exceed half the whole budget (a huge
        // body times many variants) is accounted at half the budget rather
        // than refused forever.
        let want = (bound as u64).min(self.budget.total_bytes() / 2);
        let mut permit = match self.budget.try_acquire(want) {
            Ok(p) => p,
            Err(_) => {
                match self
                    .budget
                    .acquire_timeout(want, self.settings.admission_wait)
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        self.scratch.give(scratch);
                        return Err(DeliveryError::Overloaded(format!(
                            "target queues hold the memory budget: {e}"
                        )));
                    }
                }
            }
        };
        let records = scratch.encode(&plan, &batch.body, &batch.series);
        drop(batch);
        permit.shrink_to(records.len() as u64);
        let permit = Arc::new(permit);
        let now = Instant::now();
        let wall = wall_ms(SystemTime::now());
        let wal = self.settings.durability == Durability::Wal;
        // wal: the highest seq appended per target, and whether any chunk
        // could not be made durable.
        let mut touched: Vec<(Arc<TargetHandle>, u64)> = Vec::new();
        let mut not_durable = false;
        if !wal {
            // Each target's chunks under one lock and one wake-up: (target,
            // chunk index, target index in its variant), in chunk order per
            // target.
            let chunks: Vec<_> = scratch.chunks(&plan, &records).collect();
            let mut pairs: Vec<(usize, u32, u32)> = chunks
                .iter()
                .enumerate()
                .flat_map(|(c, (variant, ..))| {
                    variant
                        .targets
                        .iter()
                        .enumerate()
                        .map(move |(k, t)| (Arc::as_ptr(t) as usize, c as u32, k as u32))
                })
                .collect();
            pairs.sort_unstable();
            for run in pairs.chunk_by(|a, b| a.0 == b.0) {
                let (_, c0, k0) = run[0];
                let target = &chunks[c0 as usize].0.targets[k0 as usize];
                let items = run.iter().map(|&(_, c, _)| {
                    let (_, shard, bytes, samples, series) = &chunks[c as usize];
                    (
                        *shard,
                        Chunk {
                            records: bytes.clone(),
                            samples: *samples,
                            series: *series,
                            enqueued: now,
                            permit: Some(permit.clone()),
                        },
                    )
                });
                target.push_all(items, Some(&self.budget), stats, now, wall);
            }
        }
        for (variant, shard, bytes, samples, series) in
            scratch.chunks(&plan, &records).filter(|_| wal)
        {
            let chunk = Chunk {
                records: bytes,
                samples,
                series,
                enqueued: now,
                permit: Some(permit.clone()),
            };
            for t in &variant.targets {
                match t.push_wal(shard, chunk.clone(), stats, now, wall) {
                    Some(seq) => match touched.iter_mut().find(|(h, _)| Arc::ptr_eq(h, t)) {
                        Some((_, s)) => *s = (*s).max(seq),
                        None => touched.push((t.clone(), seq)),
                    },
                    None => not_durable = true,
                }
            }
        }
        drop(records);
        self.scratch.give(scratch);
        if wal {
            // Group commit: each queue's sync thread answers every request
            // waiting while one fsync runs.
            let waits: Vec<_> = touched
                .iter()
                .filter_map(|(h, seq)| h.spill.as_ref().map(|s| s.commit.durable(*seq)))
                .collect();
            for w in waits {
                if let Err(e) = w.await {
                    not_durable = true;
                    stats.add_spill_error();
                    tracing::warn!(error = %e, "delivery: wal fsync failed; the request is refused");
                }
            }
            if not_durable {
                return Err(DeliveryError::Unavailable(
                    "durability wal: the data could not be made durable on disk; retry".into(),
                ));
            }
        }
        stats.set_memory_in_use(
            self.budget
                .total_bytes()
                .saturating_sub(self.budget.available_bytes()),
        );
        Ok(())
    }
}

impl Delivery for FanoutDelivery {
    fn submit(
        &self,
        batch: Accepted,
    ) -> impl std::future::Future<Output = Result<(), DeliveryError>> + Send {
        let inner = self.inner.clone();
        async move { inner.submit(batch).await }
    }

    fn record_response(&self, transport: &'static str, status: u16) {
        self.inner.stats.record_request(transport, status);
    }
}

async fn run_target(inner: Arc<Inner>, h: Arc<TargetHandle>) {
    let (tx, mut rx) = mpsc::channel::<Done>(super::queue::MAX_LANES as usize * 2);
    let mut in_flight = 0u32;
    let mut sends = Vec::new();
    loop {
        let mut reopen_at = h.spill_reopen_at(Instant::now());
        if reopen_at.is_some_and(|t| t <= Instant::now()) {
            let (h2, i2) = (h.clone(), inner.clone());
            reopen_at =
                tokio::task::spawn_blocking(move || h2.recover_spill(&i2.stats, Instant::now()))
                    .await
                    .unwrap_or(None);
        }
        h.reload(&inner.stats);
        // A failed read back just broke the queue: schedule its reopen (the
        // lanes waiting for disk records have no wake-up of their own).
        let reopen_at = reopen_at.or_else(|| h.spill_reopen_at(Instant::now()));
        let now = Instant::now();
        let (wake, idle, pending) = match h.core.lock() {
            Ok(mut core) => {
                while let Some(d) = core.poll(now) {
                    sends.push(d);
                }
                h.metrics.load().queue_bytes.set(core.queue_bytes() as f64);
                if let Some(s) = &h.spill {
                    if let Ok(q) = s.queue.try_lock() {
                        h.metrics.load().spill_bytes.set(q.stats().bytes as f64);
                    }
                }
                h.metrics.load().in_flight.set(f64::from(core.in_flight()));
                h.metrics
                    .load()
                    .concurrency
                    .set(f64::from(core.concurrency()));
                (core.next_wakeup(), core.is_idle(), core.pending_samples())
            }
            Err(_) => return,
        };
        for d in sends.drain(..) {
            in_flight += 1;
            if d.attempt > 1 {
                h.metrics.load().retries.increment(1);
            }
            let target = h.target();
            let sender = inner.sender.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                let result = sender.send(&target.config, d.body).await;
                let _ = tx
                    .send(Done {
                        lane: d.lane,
                        batch: d.batch,
                        result,
                        latency: t0.elapsed(),
                    })
                    .await;
            });
        }
        if let Some(removed) = h.removed_at() {
            if idle && in_flight == 0 {
                if leave_retired(&inner, &h) {
                    break;
                }
                // Revived (or not listed as retired yet): go on.
                tokio::task::yield_now().await;
                continue;
            }
            if now.saturating_duration_since(removed) > inner.settings.removed_drain {
                if h.spill.is_some() {
                    // Keep it on disk for the retention period.
                    let lost = spill_all_blocking(&inner, &h).await;
                    inner.stats.abandoned.fetch_add(lost, Ordering::Relaxed);
                    if !leave_retired(&inner, &h) {
                        // Revived (its id is back in the registry) while it
                        // went to disk: it goes on, reading its backlog back.
                        h.resume_after_spill();
                        tracing::info!(target_id = %h.id, lost, "delivery: removed target came back while its backlog went to disk; it resumes from disk");
                        continue;
                    }
                    // Revived and removed again while it went to disk: what
                    // was pushed meanwhile goes to disk too.
                    let again = match h.core.lock() {
                        Ok(c) => !c.memory_empty(),
                        Err(_) => false,
                    };
                    let lost = if again {
                        let more = spill_all_blocking(&inner, &h).await;
                        inner.stats.abandoned.fetch_add(more, Ordering::Relaxed);
                        lost + more
                    } else {
                        lost
                    };
                    tracing::warn!(target_id = %h.id, samples = pending, lost, "delivery: removed target did not drain in time; its backlog stays on disk for the retention period");
                    break;
                }
                if !leave_retired(&inner, &h) {
                    tokio::task::yield_now().await;
                    continue;
                }
                inner.stats.abandoned.fetch_add(pending, Ordering::Relaxed);
                metrics::counter!(names::DROPPED, "reason" => "removed").increment(pending);
                tracing::warn!(target_id = %h.id, samples = pending, "delivery: removed target did not drain in time; its data is dropped");
                break;
            }
        }
        if inner.stopped.load(Ordering::SeqCst) {
            break;
        }
        let wake = match (wake, reopen_at) {
            (Some(w), Some(r)) => Some(w.min(r)),
            (w, r) => w.or(r),
        };
        let sleep_until = wake
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = h.notify.notified() => {}
            Some(done) = rx.recv() => {
                in_flight = in_flight.saturating_sub(1);
                on_done(&inner, &h, done);
                // Drain every other finished attempt before polling again.
                while let Ok(done) = rx.try_recv() {
                    in_flight = in_flight.saturating_sub(1);
                    on_done(&inner, &h, done);
                }
            }
            _ = tokio::time::sleep_until(sleep_until) => {}
        }
    }
    if let Ok(mut r) = inner.retired.lock() {
        r.retain(|x| !Arc::ptr_eq(x, &h));
    }
    if h.removed_at().is_some() {
        // A request routed with a plan from before the removal may still
        // push here: it is counted as dropped, not lost silently.
        if let Ok(mut core) = h.core.lock() {
            core.close();
        }
    }
    if h.removed_at().is_some() && !inner.stopped.load(Ordering::SeqCst) {
        inner.forget_drained(&h);
    }
    tracing::debug!(target_id = %h.id, "delivery: target sender stopped");
}

/// [`TargetHandle::spill_all`] on a blocking thread (it may scan and fsync
/// the disk queue); works on any runtime flavor.
async fn spill_all_blocking(inner: &Arc<Inner>, h: &Arc<TargetHandle>) -> u64 {
    let (h2, i2) = (h.clone(), inner.clone());
    match tokio::task::spawn_blocking(move || h2.spill_all(&i2.stats)).await {
        Ok(lost) => lost,
        Err(e) => {
            tracing::error!(target_id = %h.id, error = %e, "delivery: moving this target's queue to disk failed");
            0
        }
    }
}

/// A retired target's sender is about to stop: takes `h` out of the retired
/// list, under the lock [`Inner::sync`] revives retired targets with, so a
/// revival either happened before (returns false: `h` is active again and
/// its sender must go on) or finds nothing and starts a new handle.
fn leave_retired(inner: &Inner, h: &Arc<TargetHandle>) -> bool {
    let Ok(mut r) = inner.retired.lock() else {
        return true;
    };
    let before = r.len();
    r.retain(|x| !Arc::ptr_eq(x, h));
    r.len() != before
}

fn on_done(inner: &Inner, h: &TargetHandle, done: Done) {
    let (event, was) = match h.core.lock() {
        Ok(mut core) => {
            let was = core.state(Instant::now());
            let ev = core.on_result(
                done.lane,
                done.batch,
                &done.result,
                done.latency,
                Instant::now(),
                SystemTime::now(),
            );
            (ev, was)
        }
        Err(_) => return,
    };
    if matches!(done.result, SendResult::Status { .. }) {
        h.metrics.load().latency.record(done.latency.as_secs_f64());
    }
    match event {
        Event::Sent { samples, bytes } => {
            h.metrics.load().samples.increment(u64::from(samples));
            h.metrics.load().bytes.increment(bytes);
            h.metrics.load().requests.increment(1);
            inner
                .stats
                .out_samples
                .fetch_add(u64::from(samples), Ordering::Relaxed);
            inner.stats.out_bytes.fetch_add(bytes, Ordering::Relaxed);
            if was != "healthy" && was != "paused" {
                tracing::info!(target_id = %h.id, "delivery: target recovered");
            }
        }
        Event::Retrying {
            kind,
            status,
            message,
        } => {
            metrics::counter!(names::TARGET_FAILURES, "target" => h.id(), "status" => kind)
                .increment(1);
            if was == "healthy" {
                tracing::warn!(target_id = %h.id, error = %message, "delivery: target failing; retrying");
            } else {
                tracing::debug!(target_id = %h.id, error = %message, "delivery: retry failed");
            }
            inner.stats.push_error(RecentError {
                time: SystemTime::now(),
                target: h.id(),
                status,
                message,
            });
        }
        Event::Dropped {
            status,
            samples,
            message,
        } => {
            metrics::counter!(names::TARGET_FAILURES, "target" => h.id(), "status" => status.to_string())
                .increment(1);
            h.metrics.load().rejected.increment(u64::from(samples));
            metrics::counter!(names::DROPPED, "reason" => "rejected").increment(u64::from(samples));
            inner
                .stats
                .rejected
                .fetch_add(u64::from(samples), Ordering::Relaxed);
            tracing::warn!(target_id = %h.id, status, samples, error = %message, "delivery: batch rejected by the target; dropped");
            inner.stats.push_error(RecentError {
                time: SystemTime::now(),
                target: h.id(),
                status: Some(status),
                message,
            });
        }
        Event::Stale => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{ops, Document, Registry};
    use bytes::Bytes;

    fn delivery(budget: u64, queue: u64) -> (FanoutDelivery, Arc<crate::registry::ClusterInfo>) {
        let yaml = "clusters:\n  - {id: c1, organizationId: o1, cloudProvider: aws, cloudRegion: r, ingestToken: tok}\n\
            workspaces:\n  - {id: ws, organizationId: o2, name: w}\n\
            deployments:\n  - {id: d1, workspaceId: ws, clusterId: c1, namespace: ns, type: HOSTED, name: d}\n\
            metricsExports:\n  - {id: e1, objectKey: e1, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {endpoint: 'http://127.0.0.1:1/w'}}\n  - {id: e2, objectKey: e2, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {endpoint: 'http://127.0.0.1:1/x'}}\n";
        let mut registry = Registry::default();
        ops::replace_all(
            &mut registry,
            Document::parse(yaml.as_bytes(), true).unwrap(),
        )
        .unwrap();
        let snap = Snapshot::build(Arc::new(registry), 1, Arc::from(&b"s"[..]));
        let cluster = snap.authenticate(None, "tok").unwrap();
        let d = FanoutDelivery::new(
            Arc::new(ArcSwap::from_pointee(snap)),
            MemoryBudget::new(budget),
            Settings {
                target_queue_bytes: queue,
                admission_wait: Duration::from_millis(20),
                ..Settings::default()
            },
        );
        d.sync_now();
        for t in d.targets() {
            t.set_paused(true);
        }
        (d, cluster)
    }

    fn accepted(cluster: &Arc<crate::registry::ClusterInfo>) -> Accepted {
        let req = fanout_proto::testdata::realistic_request(500, 1);
        let mut req = req;
        for ts in &mut req.timeseries {
            for l in &mut ts.labels {
                if l.name == "namespace" {
                    l.value = "ns".into();
                }
                if l.name == "deploymentId" {
                    l.value = "d1".into();
                }
            }
        }
        let body = Bytes::from(prost::Message::encode_to_vec(&req));
        let mut series = Vec::new();
        let summary = fanout_proto::scan::scan_v1(&body, &Default::default(), &mut series).unwrap();
        Accepted {
            cluster: cluster.clone(),
            body,
            series,
            summary,
            permit: super::super::MemoryPermit::empty(),
        }
    }

    #[tokio::test]
    async fn deliver_service_orphan_backlogs_are_reported_then_deleted() {
        let dir = std::env::temp_dir().join(format!("fanout-orphans-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let gone = spill_mod::target_dir(&dir, "gone-target");
        let (mut q, _) = DiskQueue::open(&gone, DiskQueueConfig::default()).unwrap();
        q.append(&Record {
            body: bytes::Bytes::from_static(b"records"),
            samples: 1,
            enqueued_ms: 0,
            tag: 0,
        })
        .unwrap();
        q.close().unwrap();
        // Data two days old: the retention counts from when the backlog is
        // found without its target, not from the age of its data.
        for seg in std::fs::read_dir(&gone).unwrap() {
            let seg = seg.unwrap().path();
            if seg.extension().is_some_and(|e| e == "seg") {
                std::fs::File::options()
                    .write(true)
                    .open(&seg)
                    .unwrap()
                    .set_modified(SystemTime::now() - Duration::from_secs(2 * 86_400))
                    .unwrap();
            }
        }
        let (d, _) = delivery(64 << 20, 1 << 20);
        let mut settings = d.inner.settings.clone();
        settings.data_dir = Some(dir.clone());
        settings.spill_retention = Duration::from_secs(3600);
        let d = FanoutDelivery::new(
            d.inner.snapshot.clone(),
            MemoryBudget::new(1 << 20),
            settings,
        );
        d.sync_now();
        d.sweep_orphans_now();
        let orphans = d.orphan_backlogs();
        assert_eq!(orphans.len(), 1, "{orphans:?}");
        assert_eq!(orphans[0].0, "gone-target");
        assert!(gone.exists());
        assert!(gone.join(spill_mod::ORPHAN_MARK).exists());
        let stats = d.stats_json("g", true, false);
        assert_eq!(stats["orphanBacklogs"][0]["targetId"], "gone-target");
        let left = stats["orphanBacklogs"][0]["deleteInSeconds"]
            .as_f64()
            .unwrap();
        assert!(left > 3500.0, "retention counts from the mark: {left}");
        // Half the retention later it is still kept.
        d.inner
            .sweep_orphans(SystemTime::now() + Duration::from_secs(1800));
        assert!(gone.exists());
        assert_eq!(d.orphan_backlogs().len(), 1);
        // Running targets' queues are not orphans; after the retention the
        // orphan is deleted.
        assert_eq!(spill_mod::list_backlogs(&dir).unwrap().len(), 3);
        d.inner
            .sweep_orphans(SystemTime::now() + Duration::from_secs(7200));
        assert!(!gone.exists());
        assert!(d.orphan_backlogs().is_empty());
        assert_eq!(spill_mod::list_backlogs(&dir).unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A delivery over the `delivery()` registry with its spill in `dir`
    /// (targets d1/e1 and d1/e2, both unreachable).
    fn spill_delivery(dir: &Path) -> FanoutDelivery {
        let (d, _) = delivery(64 << 20, 1 << 20);
        let mut settings = d.inner.settings.clone();
        settings.data_dir = Some(dir.to_path_buf());
        let d = FanoutDelivery::new(
            d.inner.snapshot.clone(),
            MemoryBudget::new(1 << 20),
            settings,
        );
        d.sync_now();
        d.sweep_orphans_now();
        d
    }

    /// Writes a queue of `records` records for `id` with a manifest of
    /// `routes` (or none) under `dir`.
    fn backlog(dir: &Path, id: &str, records: u32, routes: Option<&[(&str, &str)]>) -> PathBuf {
        let qdir = spill_mod::target_dir(dir, id);
        let (mut q, _) = DiskQueue::open(&qdir, DiskQueueConfig::default()).unwrap();
        for i in 0..records {
            q.append(&Record {
                body: bytes::Bytes::from_static(b"records"),
                samples: 1,
                enqueued_ms: 0,
                tag: u64::from(i),
            })
            .unwrap();
        }
        q.close().unwrap();
        if let Some(routes) = routes {
            let routes = routes
                .iter()
                .map(|(d, e)| spill_mod::ManifestRoute {
                    deployment_id: (*d).into(),
                    export_id: (*e).into(),
                })
                .collect();
            spill_mod::Manifest::new(id, 4, routes)
                .write(&qdir)
                .unwrap();
        }
        qdir
    }

    fn target_of_export(d: &FanoutDelivery, export: &str) -> String {
        d.snapshot()
            .targets()
            .find(|t| t.routes.iter().any(|r| r.export_id == export))
            .map(|t| t.id.0.clone())
            .unwrap()
    }

    fn spill_records(d: &FanoutDelivery, id: &str) -> u64 {
        let h = d.target(id).unwrap();
        let s = h.spill.as_ref().unwrap();
        let n = lock_queue(&s.queue).stats().records;
        n
    }

    #[tokio::test]
    async fn deliver_service_config_change_resumes_the_unique_backlog_with_same_routes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let old = backlog(dir, "e1-old-config", 3, Some(&[("d1", "e1")]));
        let other = backlog(dir, "e2-superset", 1, Some(&[("d1", "e2"), ("d9", "e2")]));
        let legacy = backlog(dir, "no-manifest", 1, None);
        let d = spill_delivery(dir);
        let e1 = target_of_export(&d, "e1");
        let e2 = target_of_export(&d, "e2");
        // e1 took the backlog over: moved (not copied), resumed, and its lane
        // count is the one the records were queued with.
        assert!(!old.exists());
        let dir_e1 = spill_mod::target_dir(dir, &e1);
        let m = spill_mod::Manifest::read(&dir_e1).unwrap().unwrap();
        assert_eq!(m.target_id, e1);
        assert_eq!(m.lanes, 4);
        assert_eq!(m.routes.len(), 1);
        assert_eq!(d.target(&e1).unwrap().lanes(), 4);
        assert_eq!(spill_records(&d, &e1), 3);
        // e2 has no unique successor backlog (routes differ): orphans stay,
        // as does the one without a manifest. e2 keeps its configured lanes.
        assert_eq!(spill_records(&d, &e2), 0);
        assert_eq!(d.target(&e2).unwrap().lanes(), 16);
        assert!(other.exists() && legacy.exists());
        let mut orphans: Vec<String> = d.orphan_backlogs().into_iter().map(|o| o.0).collect();
        orphans.sort();
        assert_eq!(orphans, vec!["e2-superset", "no-manifest"]);
        // The manifest of a running target follows its routes.
        let text =
            std::fs::read_to_string(spill_mod::target_dir(dir, &e2).join(spill_mod::MANIFEST_FILE))
                .unwrap();
        assert!(
            text.contains("\"exportId\":\"e2\"") && !text.contains("secret"),
            "{text}"
        );
        d.shutdown(Duration::from_millis(10)).await;
    }

    #[tokio::test]
    async fn deliver_service_ambiguous_or_own_backlog_keeps_orphans() {
        // Two backlogs with e1's routes: neither is taken.
        let tmp = tempfile::tempdir().unwrap();
        let a = backlog(tmp.path(), "e1-a", 1, Some(&[("d1", "e1")]));
        let b = backlog(tmp.path(), "e1-b", 1, Some(&[("d1", "e1")]));
        let d = spill_delivery(tmp.path());
        let e1 = target_of_export(&d, "e1");
        assert!(a.exists() && b.exists());
        assert_eq!(spill_records(&d, &e1), 0);
        assert_eq!(d.orphan_backlogs().len(), 2);
        d.shutdown(Duration::from_millis(10)).await;

        // e1's own queue holds records: it resumes those; the other stays.
        let tmp = tempfile::tempdir().unwrap();
        let probe = spill_delivery(tmp.path());
        let e1 = target_of_export(&probe, "e1");
        probe.shutdown(Duration::from_millis(10)).await;
        drop(probe);
        let tmp = tempfile::tempdir().unwrap();
        backlog(tmp.path(), &e1, 2, Some(&[("d1", "e1")]));
        let old = backlog(tmp.path(), "e1-old", 5, Some(&[("d1", "e1")]));
        let d = spill_delivery(tmp.path());
        assert!(old.exists());
        assert_eq!(spill_records(&d, &e1), 2);
        assert_eq!(
            d.orphan_backlogs(),
            vec![(
                "e1-old".to_string(),
                std::fs::metadata(old.join("00000000000000000001.seg"))
                    .unwrap()
                    .len()
            )]
        );
        d.shutdown(Duration::from_millis(10)).await;
    }

    #[tokio::test]
    async fn deliver_service_live_config_change_keeps_the_queue_under_the_new_id() {
        let tmp = tempfile::tempdir().unwrap();
        let (d0, cluster) = delivery(64 << 20, 1 << 20);
        let mut settings = d0.inner.settings.clone();
        settings.data_dir = Some(tmp.path().to_path_buf());
        settings.target_queue_bytes = 256 << 10;
        let d = FanoutDelivery::new(
            d0.inner.snapshot.clone(),
            MemoryBudget::new(64 << 20),
            settings,
        );
        d.sync_now();
        for t in d.targets() {
            t.set_paused(true);
        }
        let (e1, e2) = (target_of_export(&d, "e1"), target_of_export(&d, "e2"));
        for _ in 0..20 {
            d.submit(accepted(&cluster)).await.unwrap();
        }
        let h = d.target(&e1).unwrap();
        let queued = h.core.lock().unwrap().pending_samples();
        let on_disk = spill_records(&d, &e1);
        assert!(on_disk > 0, "a backlog on disk");
        // e1's endpoint and maxConcurrency change (a new id); e2 does not.
        let yaml = "clusters:\n  - {id: c1, organizationId: o1, cloudProvider: aws, cloudRegion: r, ingestToken: tok}\n\
            workspaces:\n  - {id: ws, organizationId: o2, name: w}\n\
            deployments:\n  - {id: d1, workspaceId: ws, clusterId: c1, namespace: ns, type: HOSTED, name: d}\n\
            metricsExports:\n  - {id: e1, objectKey: e1, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {endpoint: 'http://127.0.0.1:2/w', delivery: {maxConcurrency: 2}}}\n  - {id: e2, objectKey: e2, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {endpoint: 'http://127.0.0.1:1/x'}}\n";
        let mut registry = Registry::default();
        ops::replace_all(
            &mut registry,
            Document::parse(yaml.as_bytes(), true).unwrap(),
        )
        .unwrap();
        d.inner.snapshot.store(Arc::new(Snapshot::build(
            Arc::new(registry),
            2,
            Arc::from(&b"s"[..]),
        )));
        d.sync_now();
        let new_e1 = target_of_export(&d, "e1");
        assert_ne!(new_e1, e1);
        assert_eq!(target_of_export(&d, "e2"), e2);
        // The same handle goes on under the new id: nothing retired, its
        // queue, lanes and disk backlog kept, its directory renamed.
        assert_eq!(d.targets().len(), 2, "no old target draining in parallel");
        assert!(d.target(&e1).is_none());
        let h2 = d.target(&new_e1).unwrap();
        assert!(Arc::ptr_eq(&h, &h2));
        assert_eq!(h2.lanes(), 16, "lanes kept; the limit is capped at 2");
        assert_eq!(h2.core.lock().unwrap().pending_samples(), queued);
        assert_eq!(spill_records(&d, &new_e1), on_disk);
        assert!(!spill_mod::target_dir(tmp.path(), &e1).exists());
        let dir = spill_mod::target_dir(tmp.path(), &new_e1);
        let m = spill_mod::Manifest::read(&dir).unwrap().unwrap();
        assert_eq!((m.target_id.as_str(), m.lanes), (new_e1.as_str(), 16));
        assert_eq!(h2.target().config.endpoint, "http://127.0.0.1:2/w");
        let json = h2.to_json(&d.snapshot());
        assert_eq!(json["id"], new_e1.as_str());
        assert_eq!(json["endpoint"], "http://127.0.0.1:2/w");
        // The queue still works at its new path: more data spills, and
        // shutdown moves memory to disk there.
        for _ in 0..5 {
            d.submit(accepted(&cluster)).await.unwrap();
        }
        assert!(spill_records(&d, &new_e1) > on_disk);
        d.shutdown(Duration::from_millis(10)).await;
        assert!(d.orphan_backlogs().is_empty());
        let (q, rec) = DiskQueue::open(&dir, DiskQueueConfig::default()).unwrap();
        assert!(rec.records > on_disk, "{rec:?}");
        drop(q);
    }

    /// Publishes a registry version in which e1's endpoint and
    /// maxConcurrency changed (a new id, same routes); e2 is unchanged.
    fn change_e1(d: &FanoutDelivery) {
        let yaml = "clusters:\n  - {id: c1, organizationId: o1, cloudProvider: aws, cloudRegion: r, ingestToken: tok}\n\
            workspaces:\n  - {id: ws, organizationId: o2, name: w}\n\
            deployments:\n  - {id: d1, workspaceId: ws, clusterId: c1, namespace: ns, type: HOSTED, name: d}\n\
            metricsExports:\n  - {id: e1, objectKey: e1, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {endpoint: 'http://127.0.0.1:2/w', delivery: {maxConcurrency: 2}}}\n  - {id: e2, objectKey: e2, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {endpoint: 'http://127.0.0.1:1/x'}}\n";
        let mut registry = Registry::default();
        ops::replace_all(
            &mut registry,
            Document::parse(yaml.as_bytes(), true).unwrap(),
        )
        .unwrap();
        let version = d.snapshot().version() + 1;
        d.inner.snapshot.store(Arc::new(Snapshot::build(
            Arc::new(registry),
            version,
            Arc::from(&b"s"[..]),
        )));
        d.sync_now();
    }

    /// The id e1 gets in the `delivery()` registry.
    async fn e1_id() -> String {
        let tmp = tempfile::tempdir().unwrap();
        let probe = spill_delivery(tmp.path());
        let e1 = target_of_export(&probe, "e1");
        probe.shutdown(Duration::from_millis(10)).await;
        e1
    }

    #[tokio::test]
    async fn deliver_service_live_config_change_of_a_broken_queue_retires_the_old_target() {
        let tmp = tempfile::tempdir().unwrap();
        let d = spill_delivery(tmp.path());
        let e1 = target_of_export(&d, "e1");
        let h = d.target(&e1).unwrap();
        let old_dir = spill_mod::target_dir(tmp.path(), &e1);
        // A failed fsync broke the queue: a reopen may be recovering its
        // directory right now, without the queue lock.
        lock_queue(&h.spill.as_ref().unwrap().queue).mark_broken("test".into());
        change_e1(&d);
        let new_e1 = target_of_export(&d, "e1");
        assert_ne!(new_e1, e1);
        // Not in place: the old target keeps its directory and drains; the
        // new one starts on its own.
        let h2 = d.target(&new_e1).unwrap();
        assert!(
            !Arc::ptr_eq(&h, &h2),
            "reconfigured a broken queue in place"
        );
        assert!(h.removed_at().is_some());
        assert_eq!(d.targets().len(), 3);
        assert_eq!(lock_queue(&h.spill.as_ref().unwrap().queue).dir(), old_dir);
        assert!(old_dir.is_dir());
        let new_dir = spill_mod::target_dir(tmp.path(), &new_e1);
        assert_eq!(lock_queue(&h2.spill.as_ref().unwrap().queue).dir(), new_dir);
        // The old queue reopens at its path.
        h.spill
            .as_ref()
            .unwrap()
            .reopen
            .lock()
            .unwrap()
            .due(Instant::now());
        assert_eq!(h.recover_spill(&d.inner.stats, Instant::now()), None);
        assert!(!lock_queue(&h.spill.as_ref().unwrap().queue).is_broken());
        d.shutdown(Duration::from_millis(10)).await;
    }

    #[tokio::test]
    async fn deliver_service_failed_open_keeps_the_lane_count_of_its_backlog() {
        let e1 = e1_id().await;
        let tmp = tempfile::tempdir().unwrap();
        // A backlog queued under 4 lanes; the configured count is 16.
        let qdir = backlog(tmp.path(), &e1, 3, Some(&[("d1", "e1")]));
        // Its open fails (the ledger cannot be read).
        let _ = std::fs::remove_file(qdir.join(spill_mod::LEDGER_FILE));
        std::fs::create_dir(qdir.join(spill_mod::LEDGER_FILE)).unwrap();
        let d = spill_delivery(tmp.path());
        let h = d.target(&e1).unwrap();
        let spill = h.spill.as_ref().unwrap();
        assert!(lock_queue(&spill.queue).is_broken());
        assert_eq!(
            h.lanes(),
            4,
            "the backlog's lane count, not the configured one"
        );
        let m = spill_mod::Manifest::read(&qdir).unwrap().unwrap();
        assert_eq!(m.lanes, 4, "manifest not rewritten before the queue opened");
        // The disk works again: the reopen recovers the backlog under the
        // lane count it was queued with, and the manifest is rewritten.
        std::fs::remove_dir(qdir.join(spill_mod::LEDGER_FILE)).unwrap();
        assert_eq!(h.recover_spill(&d.inner.stats, Instant::now()), None);
        assert_eq!(spill_records(&d, &e1), 3);
        assert_eq!(h.lanes(), 4);
        let m = spill_mod::Manifest::read(&qdir).unwrap().unwrap();
        assert_eq!((m.target_id.as_str(), m.lanes), (e1.as_str(), 4));
        d.shutdown(Duration::from_millis(10)).await;
    }

    #[tokio::test]
    async fn deliver_service_disk_read_error_keeps_the_backlog_and_reopens() {
        let e1 = e1_id().await;
        let tmp = tempfile::tempdir().unwrap();
        let qdir = spill_mod::target_dir(tmp.path(), &e1);
        let body = Bytes::from(prost::Message::encode_to_vec(
            &fanout_proto::testdata::realistic_request(20, 1),
        ));
        let (mut q, _) = DiskQueue::open(&qdir, DiskQueueConfig::default()).unwrap();
        for i in 0..3u64 {
            q.append(&Record {
                body: body.clone(),
                samples: 20,
                enqueued_ms: wall_ms(SystemTime::now()),
                tag: i,
            })
            .unwrap();
        }
        q.close().unwrap();
        let d = spill_delivery(tmp.path());
        let h = d.target(&e1).unwrap();
        assert_eq!(spill_records(&d, &e1), 3);
        // Reading back fails (the segment cannot be opened for now).
        let seg = qdir.join("00000000000000000001.seg");
        let aside = tmp.path().join("aside");
        std::fs::rename(&seg, &aside).unwrap();
        h.reload(&d.inner.stats);
        // Nothing was skipped or acked: the queue is broken, to be reopened.
        assert_eq!(spill_records(&d, &e1), 3, "unread records acked");
        assert_eq!(h.core.lock().unwrap().disk_ack(), 0);
        let spill = h.spill.as_ref().unwrap();
        assert!(lock_queue(&spill.queue).is_broken());
        assert_eq!(h.core.lock().unwrap().pending_samples(), 0);
        // Its reopen is scheduled (the sender sleeps until then: the lanes
        // waiting for disk records have no wake-up of their own), and later
        // wake-ups do not read the failing disk again.
        assert!(h.spill_reopen_at(Instant::now()).is_some());
        let errors = d.inner.stats.spill_errors.load(Ordering::Relaxed);
        assert!(errors >= 1);
        for _ in 0..5 {
            h.reload(&d.inner.stats);
        }
        assert_eq!(
            d.inner.stats.spill_errors.load(Ordering::Relaxed),
            errors,
            "a broken queue is not read again before its reopen"
        );
        // Once readable, the reopen goes on and every record is read back.
        std::fs::rename(&aside, &seg).unwrap();
        assert_eq!(h.recover_spill(&d.inner.stats, Instant::now()), None);
        h.reload(&d.inner.stats);
        assert_eq!(h.core.lock().unwrap().pending_samples(), 60);
        assert_eq!(spill_records(&d, &e1), 3);
        d.shutdown(Duration::from_millis(10)).await;
    }

    #[tokio::test]
    async fn deliver_service_full_target_queue_drops_oldest_without_refusing() {
        // Budget far larger than both queue bounds: a stuck target drops its
        // oldest data and ingest keeps being accepted.
        let (d, cluster) = delivery(64 << 20, 1 << 20);
        for _ in 0..40 {
            d.submit(accepted(&cluster)).await.expect("never refused");
        }
        let s = d.stats();
        assert!(s.queue_full.load(Ordering::Relaxed) > 0);
        for t in d.targets() {
            let c = t.core.lock().unwrap();
            assert!(c.queue_bytes() <= 1 << 20);
        }
        // Memory is released as chunks are dropped: what the queues hold is
        // what the budget holds (at most two targets' bounds, shared chunks).
        let used = d.budget().total_bytes() - d.budget().available_bytes();
        assert!(used <= 3 << 20, "budget in use {used}");
    }

    #[tokio::test]
    async fn deliver_service_exhausted_budget_is_overloaded_then_shutdown_refuses() {
        // Queue bounds larger than the budget: the budget runs out first.
        let (d, cluster) = delivery(2 << 20, 64 << 20);
        let mut refused = None;
        for i in 0..40 {
            if let Err(e) = d.submit(accepted(&cluster)).await {
                refused = Some((i, e));
                break;
            }
        }
        let (i, e) = refused.expect("the budget runs out");
        assert!(i > 0);
        assert!(matches!(e, DeliveryError::Overloaded(_)), "{e}");
        let left = d.shutdown(Duration::from_millis(50)).await;
        assert!(left > 0, "paused targets keep their data");
        assert!(matches!(
            d.submit(accepted(&cluster)).await,
            Err(DeliveryError::Unavailable(_))
        ));
    }
}
