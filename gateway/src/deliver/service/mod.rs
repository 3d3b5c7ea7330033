//! The delivery service: [`FanoutDelivery`] takes accepted requests from
//! ingest, routes them through the current [`Plan`], queues chunks on each
//! target, and runs one sender task per target.
//!
//! - [`target`]: one target ([`TargetHandle`]): config, metrics, pushes,
//!   live reconfiguration, pause, its `/api/v1/targets` object;
//! - [`target_spill`]: a target's disk spill behind the core's [`Overflow`]
//!   seam: opening, adopting an orphan backlog, writing, reading back,
//!   acking, reopening, and the shutdown spill;
//! - [`sender`]: a target's sender task and the outcome of each attempt;
//! - [`reconcile`]: applying a registry version (start, keep, reconfigure,
//!   retire targets) and the orphan backlogs on disk.
//!
//! # Isolation and backpressure
//! Submitting never waits on a target: a full target queue overflows its own
//! oldest data (`queue_full`). The only wait is for the shared memory budget
//! (what queued data holds), and when it stays exhausted for
//! [`Settings::admission_wait`] ingest answers 429.
//!
//! # Shutdown
//! [`FanoutDelivery::shutdown`] refuses new data, flushes partial batches and
//! waits up to the grace period for every queue to empty; what is left in
//! memory is appended to the target's disk queue, which is fsynced and
//! resumed by the next start. Only what cannot be spilled is counted as
//! abandoned.
//!
//! [`Overflow`]: super::queue::Overflow

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use fanout_proto::api;

use super::catalog::Catalog;
use super::http::{
    ConnectTimeouts, HttpSender, DEFAULT_CONNECT_TIMEOUT, DEFAULT_TLS_HANDSHAKE_TIMEOUT,
};
use super::route::{Plan, ScratchPool};
use super::stats::{self, names, wall_ms, GlobalStats};
use super::{Accepted, Delivery, DeliveryError, MemoryBudget};
use crate::registry::live::Live;
use crate::registry::model::Protocol;
use crate::registry::Snapshot;
use crate::units::{ByteSize, HumanDuration};

mod reconcile;
mod sender;
mod status;
mod submit;
mod target;
mod target_spill;

use reconcile::Orphan;
use sender::{run_target, spill_all_blocking};
pub use target::TargetHandle;

/// Default bound of one target's memory queue.
pub const DEFAULT_TARGET_QUEUE: u64 = 64 << 20;
/// Default shutdown grace.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default retention of the backlog of a target that left the registry.
pub const DEFAULT_SPILL_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Default period of the spill fsync.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Default of `--metadata-send-interval`.
pub const DEFAULT_METADATA_INTERVAL: Duration = Duration::from_secs(60);

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
    /// Catalog of exported metric names: `builtin` (Airflow's metrics as the
    /// statsd mapping names them), `all`, or a file (statsd mapping YAML, or
    /// one name per line with `*` wildcards) [default: builtin].
    #[arg(long, help_heading = "Delivery", env = "FANOUT_CATALOG")]
    pub catalog: Option<String>,
    /// Memory queue bound of each target; beyond it the oldest data goes to
    /// the target's disk spill (dropped as `queue_full` only when the spill
    /// cannot take it) [default: 64MiB].
    #[arg(long, help_heading = "Delivery", env = "FANOUT_TARGET_QUEUE_MEMORY")]
    pub target_queue_memory: Option<ByteSize>,
    /// On SIGTERM, how long to keep delivering queued data [default: 30s].
    #[arg(long, help_heading = "Delivery", env = "FANOUT_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<HumanDuration>,
    /// How long the disk backlog of a target that left the registry is kept
    /// (reported in the stats) before it is deleted [default: 24h].
    #[arg(long, help_heading = "Delivery", env = "FANOUT_SPILL_RETENTION")]
    pub spill_retention: Option<HumanDuration>,
    /// `memory`: answer 2xx once data is queued; `wal`: once it is fsynced
    /// to every target's disk queue [default: memory].
    #[arg(
        long,
        help_heading = "Durability",
        env = "FANOUT_DURABILITY",
        value_enum
    )]
    pub durability: Option<Durability>,
    /// How often the disk spill is fsynced in `memory` durability [default: 1s].
    #[arg(long, help_heading = "Durability", env = "FANOUT_FLUSH_INTERVAL")]
    pub flush_interval: Option<HumanDuration>,
    /// How often each remote-write 1.0 target is sent the metadata (type,
    /// help, unit) of the metric families it receives, as Prometheus'
    /// `metadata_config.send_interval` [default: 1m].
    #[arg(long, help_heading = "Delivery", env = "FANOUT_METADATA_SEND_INTERVAL")]
    pub metadata_send_interval: Option<HumanDuration>,
    /// Active series (seen in the last 10 minutes) delivered per cluster
    /// without `limits.series` of its own; its new series beyond it are
    /// dropped (`series_limit`) [default: unlimited].
    #[arg(long, help_heading = "Limits", env = "FANOUT_CLUSTER_SERIES", value_parser = clap::value_parser!(u64).range(1..))]
    pub cluster_series: Option<u64>,
    /// The same per Deployment [default: unlimited].
    #[arg(long, help_heading = "Limits", env = "FANOUT_DEPLOYMENT_SERIES", value_parser = clap::value_parser!(u64).range(1..))]
    pub deployment_series: Option<u64>,
    /// How long a new connection to an endpoint may take to resolve and
    /// connect; past it the attempt fails as `connect timeout after …`
    /// [default: 10s].
    #[arg(long, help_heading = "Delivery", env = "FANOUT_TARGET_CONNECT_TIMEOUT")]
    pub target_connect_timeout: Option<HumanDuration>,
    /// How long its TLS handshake may take (`tls handshake timeout after …`)
    /// [default: 10s].
    #[arg(
        long,
        help_heading = "Delivery",
        env = "FANOUT_TARGET_TLS_HANDSHAKE_TIMEOUT"
    )]
    pub target_tls_handshake_timeout: Option<HumanDuration>,
}

/// Why a target's spill stays after [`FanoutDelivery::remove_delivered_spills`].
#[derive(Debug)]
pub enum SpillLeft {
    /// Records not delivered.
    Records(u64),
    /// Delivered, but the directory could not be removed.
    NotRemoved(std::io::Error),
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
    /// How often metric family metadata is forwarded to 1.0 targets.
    pub metadata_interval: Duration,
    /// Active-series limit of a cluster without its own.
    pub cluster_series: Option<u64>,
    /// Active-series limit of a Deployment without its own.
    pub deployment_series: Option<u64>,
    /// Bounds of a new connection to an endpoint.
    pub connect_timeouts: ConnectTimeouts,
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
            metadata_interval: DEFAULT_METADATA_INTERVAL,
            cluster_series: None,
            deployment_series: None,
            connect_timeouts: ConnectTimeouts::default(),
        }
    }
}

/// A duration flag, `default` without it; a zero one is 1 ms (a zero
/// period would spin, a zero timeout fail every attempt at once).
fn at_least_1ms(flag: Option<HumanDuration>, default: Duration) -> Duration {
    flag.map_or(default, |d| d.0.max(Duration::from_millis(1)))
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
            flush_interval: at_least_1ms(self.flush_interval, DEFAULT_FLUSH_INTERVAL),
            spill_retention: self
                .spill_retention
                .map_or(DEFAULT_SPILL_RETENTION, |d| d.0),
            durability: self.durability.unwrap_or_default(),
            metadata_interval: self
                .metadata_send_interval
                .map_or(DEFAULT_METADATA_INTERVAL, |d| {
                    d.0.max(Duration::from_millis(100))
                }),
            cluster_series: self.cluster_series,
            deployment_series: self.deployment_series,
            connect_timeouts: ConnectTimeouts {
                connect: at_least_1ms(self.target_connect_timeout, DEFAULT_CONNECT_TIMEOUT),
                tls: at_least_1ms(
                    self.target_tls_handshake_timeout,
                    DEFAULT_TLS_HANDSHAKE_TIMEOUT,
                ),
            },
            ..Settings::default()
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
    /// When each cluster last had a request logged as dropped whole.
    dropped_logged: Mutex<std::collections::HashMap<String, Instant>>,
    /// Metric family metadata seen in accepted requests: per series for 2.0
    /// targets, forwarded on its own to 1.0 targets.
    metadata: crate::deliver::metadata::MetadataCache,
    /// Active-series limits (`limits.series`).
    series_limits: crate::deliver::limits::SeriesLimits,
    /// Deployment numbers for the accounting per (Deployment, target).
    owners: crate::deliver::accounting::Owners,
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

impl FanoutDelivery {
    /// Delivery over the shared snapshot; targets start on the first sync.
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        budget: MemoryBudget,
        settings: Settings,
    ) -> FanoutDelivery {
        let series_limits = crate::deliver::limits::SeriesLimits::new(
            settings.cluster_series,
            settings.deployment_series,
        );
        let connect_timeouts = settings.connect_timeouts;
        FanoutDelivery {
            inner: Arc::new(Inner {
                snapshot,
                settings,
                series_limits,
                owners: Default::default(),
                budget,
                plan: ArcSwap::from_pointee(Plan::empty()),
                sync_lock: Mutex::new(()),
                targets: Mutex::new(BTreeMap::new()),
                retired: Mutex::new(Vec::new()),
                sender: HttpSender::new(connect_timeouts),
                scratch: ScratchPool::default(),
                stats: GlobalStats::default(),
                started: Instant::now(),
                closing: AtomicBool::new(false),
                orphans: Mutex::new(Vec::new()),
                stopped: AtomicBool::new(false),
                dropped_logged: Mutex::new(std::collections::HashMap::new()),
                metadata: crate::deliver::metadata::MetadataCache::default(),
            }),
        }
    }

    /// The active-series limits and what they hold.
    pub fn series_limits(&self) -> &crate::deliver::limits::SeriesLimits {
        &self.inner.series_limits
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
        let weak = Arc::downgrade(&d.inner);
        tokio::spawn(async move {
            let every = match weak.upgrade() {
                Some(inner) => inner.settings.metadata_interval,
                None => return,
            };
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.stopped.load(Ordering::SeqCst) {
                    return;
                }
                inner.forward_metadata().await;
            }
        });
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
    pub fn target_statuses(&self) -> Vec<api::Target> {
        let snap = self.inner.snapshot.load_full();
        self.targets().iter().map(|t| t.status(&snap)).collect()
    }

    /// The snapshot of `GET /api/v1/stats`.
    pub fn stats_snapshot(
        &self,
        gateway: &str,
        ready: bool,
        draining: bool,
        store_reachable: Option<bool>,
    ) -> api::Snapshot {
        let s = &self.inner.stats;
        let snap = self.inner.snapshot.load_full();
        let mut requests: BTreeMap<String, BTreeMap<String, u64>> = ["http1", "h2", "h3"]
            .into_iter()
            .map(|t| (t.to_owned(), BTreeMap::new()))
            .collect();
        for ((transport, code), n) in s.requests() {
            requests
                .entry(transport.to_owned())
                .or_default()
                .insert(code.to_string(), n);
        }
        let budget = &self.inner.budget;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let recent_errors = s
            .recent_errors()
            .into_iter()
            .map(|e| api::RecentError {
                time: stats::rfc3339(e.time),
                target_id: e.target,
                status: e.status,
                message: e.message,
            })
            .collect();
        let retention = self.inner.settings.spill_retention;
        let orphan_backlogs = self
            .inner
            .orphans
            .lock()
            .map(|o| {
                o.iter()
                    .map(|b| api::OrphanBacklog {
                        target_id: b.target_id.clone(),
                        disk_bytes: b.disk_bytes,
                        segments: b.segments,
                        age_seconds: b.age.as_secs_f64(),
                        delete_in_seconds: retention.saturating_sub(b.age).as_secs_f64(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let deployments = self.deployment_stats(&snap);
        api::Snapshot {
            deployments,
            time: stats::rfc3339_millis(SystemTime::now()),
            uptime_seconds: self.inner.started.elapsed().as_secs_f64(),
            gateway: gateway.to_owned(),
            config_version: snap.version(),
            ready,
            draining,
            store_reachable,
            ingest: api::Ingest {
                requests,
                samples: load(&s.samples),
                series: load(&s.series),
                bytes: load(&s.bytes),
                in_flight_bytes: budget
                    .total_bytes()
                    .saturating_sub(budget.available_bytes()),
                memory_budget_bytes: budget.total_bytes(),
            },
            drops: [
                ("unattributed", load(&s.unattributed)),
                ("foreign", load(&s.foreign)),
                ("filtered", load(&s.filtered)),
                ("queue_full", load(&s.queue_full)),
                ("disk_full", load(&s.disk_full)),
                ("rejected", load(&s.rejected)),
                ("series_limit", load(&s.series_limit)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            out: api::Counters {
                samples: load(&s.out_samples),
                bytes: load(&s.out_bytes),
            },
            orphan_backlogs,
            targets: self.target_statuses(),
            recent_errors,
        }
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

    /// Nothing queued, in flight or left on disk for any target (what
    /// `fanout spill replay` waits for).
    pub fn is_idle(&self) -> bool {
        self.targets()
            .iter()
            .all(|t| t.core.lock().map_or(true, |c| c.is_idle()))
    }

    /// After [`Self::shutdown`]: removes the spill directory of every target
    /// whose backlog was delivered; returns the targets whose backlog
    /// stays, and why.
    pub fn remove_delivered_spills(&self) -> Vec<(String, SpillLeft)> {
        self.targets()
            .iter()
            .filter_map(|t| match t.remove_delivered_spill() {
                Ok(0) => None,
                Ok(n) => Some((t.id(), SpillLeft::Records(n))),
                Err(e) => Some((t.id(), SpillLeft::NotRemoved(e))),
            })
            .collect()
    }

    /// Samples queued or in flight over all targets.
    pub fn pending_samples(&self) -> u64 {
        self.targets()
            .iter()
            .map(|t| t.core.lock().map_or(0, |c| c.pending_samples()))
            .sum()
    }

    /// Stops taking data, delivers what is queued within `grace`, then stops
    /// the senders; what is left goes to each target's disk queue.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.shutdown_or(grace, std::future::pending()).await
    }

    /// [`Self::shutdown`] whose grace ends early when `hurry` resolves (a
    /// second SIGTERM): what is left is spilled at once. While it waits it
    /// logs every [`PROGRESS_EVERY`] what is left and where; at the end,
    /// what was delivered, what stays on disk per target and what is lost.
    pub async fn shutdown_or(
        &self,
        grace: Duration,
        hurry: impl Future<Output = ()>,
    ) -> ShutdownReport {
        let inner = &self.inner;
        let mut hurry = std::pin::pin!(hurry);
        let sent_before = inner.stats.out_samples.load(Ordering::Relaxed);
        inner.closing.store(true, Ordering::SeqCst);
        for t in self.targets() {
            if let Ok(mut c) = t.core.lock() {
                c.set_flush(true);
            }
            t.notify.notify_one();
        }
        let start = Instant::now();
        let deadline = start + grace;
        let mut next_progress = start;
        loop {
            let now = Instant::now();
            if self.is_idle() || now >= deadline {
                break;
            }
            if now >= next_progress {
                self.log_progress(deadline.saturating_duration_since(now));
                next_progress = now + PROGRESS_EVERY;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = &mut hurry => break,
            }
        }
        // Stop the senders first so nothing changes the queues while they go
        // to disk; in-flight attempts that still succeed become duplicates.
        inner.stopped.store(true, Ordering::SeqCst);
        for t in self.targets() {
            t.notify.notify_one();
        }
        let mut report = ShutdownReport::default();
        for t in self.targets() {
            let lost = spill_all_blocking(inner, &t).await;
            report.abandoned_samples += lost;
            if lost > 0 {
                tracing::warn!(exports = %t.name(), target_id = %t.id, samples = lost,
                    "delivery: samples of this target neither delivered nor written to disk (no disk spill, or it failed); they are lost");
            }
            if let Some((records, bytes, samples)) = t.disk_backlog().filter(|b| b.0 > 0) {
                tracing::info!(exports = %t.name(), target_id = %t.id, records, bytes, samples,
                    "delivery: left in this target's disk backlog; the next start resumes it");
                report.on_disk.push(DiskBacklog {
                    name: t.name(),
                    target_id: t.id(),
                    records,
                    bytes,
                    samples,
                });
            }
        }
        report.delivered_samples = inner
            .stats
            .out_samples
            .load(Ordering::Relaxed)
            .saturating_sub(sent_before);
        let left = report.abandoned_samples;
        if left > 0 {
            inner.stats.abandoned.fetch_add(left, Ordering::Relaxed);
            metrics::counter!(names::DROPPED, "reason" => "shutdown").increment(left);
        }
        tracing::info!(
            delivered_samples = report.delivered_samples,
            on_disk_samples = report.on_disk.iter().map(|b| b.samples).sum::<u64>(),
            on_disk_targets = report.on_disk.len(),
            abandoned_samples = left,
            took_ms = start.elapsed().as_millis() as u64,
            "delivery stopped"
        );
        inner.stopped.store(true, Ordering::SeqCst);
        for t in self.targets() {
            t.notify.notify_one();
        }
        report
    }

    /// One progress line of the shutdown wait: what is left, for how long
    /// still, and which targets hold it.
    fn log_progress(&self, left: Duration) {
        let now = Instant::now();
        let mut samples = 0;
        let mut draining = Vec::new();
        for t in self.targets() {
            let (idle, pending, state) = match t.core.lock() {
                Ok(c) => (c.is_idle(), c.pending_samples(), c.state(now)),
                Err(_) => continue,
            };
            if idle {
                continue;
            }
            samples += pending;
            let disk = t.spill_stats().0;
            draining.push(format!(
                "{} ({state}, {pending} samples in memory, {disk} bytes on disk)",
                t.name()
            ));
        }
        tracing::info!(
            seconds_left = left.as_secs(),
            samples_in_memory = samples,
            draining = %draining.join("; "),
            "shutting down: delivering what is queued; the rest goes to disk when the grace ends"
        );
    }
}

/// Period of the shutdown's progress lines.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What [`FanoutDelivery::shutdown`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Samples delivered from the start of the shutdown to its end.
    pub delivered_samples: u64,
    /// The targets whose backlog stays on disk for the next start.
    pub on_disk: Vec<DiskBacklog>,
    /// Samples neither delivered nor kept on disk.
    pub abandoned_samples: u64,
}

/// One target's disk backlog at the end of a shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskBacklog {
    /// Its exports and Deployment count (`prod-prom ·1`).
    pub name: String,
    /// Its id.
    pub target_id: String,
    /// Records on disk (what the next start resumes).
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Their samples.
    pub samples: u64,
}

impl Inner {
    /// Sends every 1.0 target (and V2 target in a fallback) with
    /// `sendMetadata` the metadata of the families it receives
    /// (`deliver::metadata`), each target's requests one after another,
    /// the targets concurrently. A failure is logged; the next interval
    /// sends again.
    async fn forward_metadata(self: &Arc<Self>) {
        if self.metadata.is_empty() {
            return;
        }
        let snapshot = self.snapshot.load_full();
        let mut sends = Vec::new();
        for h in self
            .targets
            .lock()
            .map(|t| t.values().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let target = h.target();
            let d = &target.config.delivery;
            if !d.send_metadata
                || (d.protocol == Protocol::V2 && !h.wire.in_fallback(Instant::now()))
            {
                continue;
            }
            let clusters: Vec<&str> = target
                .routes
                .iter()
                .filter_map(|r| snapshot.deployment_cluster_id(&r.deployment_id))
                .collect();
            let bodies = self
                .metadata
                .requests_for(&clusters, |name| self.settings.catalog.admits(name));
            if bodies.is_empty() {
                continue;
            }
            let inner = self.clone();
            sends.push(tokio::spawn(async move {
                for body in bodies {
                    let body = bytes::Bytes::from(fanout_proto::snappy::compress(&body));
                    match inner.sender.send(&target, body, 1).await {
                        crate::deliver::policy::SendResult::Status { status, .. }
                            if (200..300).contains(&status) => {}
                        other => {
                            tracing::warn!(exports = %target.name(), target_id = %target.id.0, result = ?other,
                                "delivery: metadata not delivered; sent again at the next interval");
                            return;
                        }
                    }
                }
            }));
        }
        for s in sends {
            let _ = s.await;
        }
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

#[cfg(test)]
mod tests {
    use super::super::spill::{self as spill_mod, lock_queue, DiskQueue, DiskQueueConfig, Record};
    use super::*;
    use crate::registry::{ops, Document, Registry};
    use bytes::Bytes;
    use std::path::Path;

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
        let stats = d.stats_snapshot("g", true, false, None);
        assert_eq!(stats.orphan_backlogs[0].target_id, "gone-target");
        let left = stats.orphan_backlogs[0].delete_in_seconds;
        assert!(left > 3500.0, "retention counts from the mark: {left}");
        // Half the retention later it is still kept.
        d.inner
            .sweep_orphans(SystemTime::now() + Duration::from_secs(1800));
        assert!(gone.exists());
        assert_eq!(d.orphan_backlogs().len(), 1);
        // Running targets' queues are not orphans (those that never spilled
        // have no directory); after the retention the orphan is deleted.
        assert_eq!(spill_mod::list_backlogs(&dir).unwrap().len(), 1);
        spill_one(&d, &target_of_export(&d, "e1"));
        spill_one(&d, &target_of_export(&d, "e2"));
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

    /// Appends one record to the disk queue of target `id`.
    fn spill_one(d: &FanoutDelivery, id: &str) {
        let h = d.target(id).unwrap();
        let s = h.spill.as_ref().unwrap();
        lock_queue(&s.queue)
            .append(&Record {
                body: bytes::Bytes::from_static(b"records"),
                samples: 1,
                enqueued_ms: 0,
                tag: 0,
            })
            .unwrap();
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
        // The manifest of a running target follows its routes, written with
        // its directory at its first spill.
        let e2_dir = spill_mod::target_dir(dir, &e2);
        assert!(!e2_dir.exists());
        spill_one(&d, &e2);
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
        let status = h2.status(&d.snapshot());
        assert_eq!(status.id, new_e1.as_str());
        assert_eq!(status.endpoint, "http://127.0.0.1:2/w");
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
        spill_one(&d, &e1);
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
    async fn deliver_service_a_backlog_of_an_older_lane_key_keeps_it_until_restart() {
        let e1 = e1_id().await;
        let tmp = tempfile::tempdir().unwrap();
        // A backlog of a release that keyed lanes by every label (its
        // manifest has no laneKey).
        let qdir = backlog(tmp.path(), &e1, 3, Some(&[("d1", "e1")]));
        let mut m = spill_mod::Manifest::read(&qdir).unwrap().unwrap();
        m.lane_key = spill_mod::LaneKey::Labels;
        m.write(&qdir).unwrap();
        let text = std::fs::read_to_string(qdir.join(spill_mod::MANIFEST_FILE)).unwrap();
        assert!(text.contains("\"laneKey\":\"labels\""), "{text}");
        let d = spill_delivery(tmp.path());
        let h = d.target(&e1).unwrap();
        // Rewritten on open with the backlog's key, not this release's: a
        // restart before the backlog drained still delivers it first.
        let m = spill_mod::Manifest::read(&qdir).unwrap().unwrap();
        assert_eq!(m.lane_key, spill_mod::LaneKey::Labels);
        assert_eq!(h.lane_key(), spill_mod::LaneKey::Labels);
        d.shutdown(Duration::from_millis(10)).await;
        // A target without a backlog writes this release's key (with its
        // directory, at its first spill).
        let tmp = tempfile::tempdir().unwrap();
        let d = spill_delivery(tmp.path());
        let h = d.target(&e1).unwrap();
        let qdir = spill_mod::target_dir(tmp.path(), &e1);
        assert_eq!(h.lane_key(), spill_mod::LaneKey::CURRENT);
        spill_one(&d, &e1);
        let m = spill_mod::Manifest::read(&qdir).unwrap().unwrap();
        assert_eq!(m.lane_key, spill_mod::LaneKey::CURRENT);
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
        assert!(
            left.abandoned_samples > 0,
            "paused targets without a spill lose their data: {left:?}"
        );
        assert!(matches!(
            d.submit(accepted(&cluster)).await,
            Err(DeliveryError::Unavailable(_))
        ));
    }
}
