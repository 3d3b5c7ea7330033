//! Gateway-wide counters behind `GET /api/v1/stats` (docs/stats-api.md) and
//! the `fanout_` self-metrics.
//!
//! Counters are atomics updated on the hot path without allocation; the
//! per-transport request map and the recent-error ring take a lock but are
//! touched once per request or per failure. Metric names live here so the
//! exposition and the JSON stay consistent.
//!
//! # Metric lifetime
//! `metrics-exporter-prometheus` (0.18) has no call that removes a series:
//! the only removal is its idle timeout, which deletes a counter or gauge
//! whose value did not change for that long (checked when `/metrics` is
//! rendered). Its handles are held for a target's lifetime, though, and a
//! deleted series stays deleted for a handle that still points at it (a
//! rarely incremented counter of a live target would vanish). So
//! [`KeepAlive`] wraps the recorder, remembers every counter and gauge handle
//! registered (by the value of its `target` label, `""` without one), and
//! [`KeepAlive::keep_alive`] (run with the upkeep, every
//! [`UPKEEP_EVERY`]) touches each one (adds zero), so none of them is ever
//! idle. [`forget_target`] drops a target's handles from that set: once the
//! delivery service drops its own, nothing touches them and the next render
//! after [`IDLE_TIMEOUT`] deletes the target's series. A target that comes
//! back registers again and starts from zero (a counter reset, which
//! Prometheus' `rate` handles).
//!
//! Histograms cannot be touched without recording a value, so they are not
//! under the idle timeout: a removed target's latency histogram stays in
//! the exposition until restart (one bucket set per removed target).
//!
//! The upkeep (histogram samples drained into their buckets) must run even
//! when nobody scrapes, or samples pile up in memory: `serve` runs
//! [`KeepAlive::keep_alive`] and `PrometheusHandle::run_upkeep` every
//! [`UPKEEP_EVERY`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};

use super::route::Drops;
use crate::registry::secrets::mask_endpoint;

/// Recent errors kept for the stats snapshot.
pub const RECENT_ERRORS: usize = 50;

/// Self-metric names.
pub mod names {
    /// Ingest requests by transport and status code.
    pub const INGEST_REQUESTS: &str = "fanout_ingest_requests_total";
    /// Samples received in accepted requests.
    pub const INGEST_SAMPLES: &str = "fanout_ingest_samples_total";
    /// Samples received in accepted requests, per sending cluster.
    pub const CLUSTER_SAMPLES: &str = "fanout_cluster_samples_total";
    /// Series received in accepted requests.
    pub const INGEST_SERIES: &str = "fanout_ingest_series_total";
    /// Decompressed bytes of accepted requests.
    pub const INGEST_BYTES: &str = "fanout_ingest_bytes_total";
    /// Samples not exported, by reason.
    pub const DROPPED: &str = "fanout_dropped_samples_total";
    /// Samples delivered per target.
    pub const TARGET_SAMPLES: &str = "fanout_target_samples_sent_total";
    /// Compressed bytes delivered per target.
    pub const TARGET_BYTES: &str = "fanout_target_bytes_sent_total";
    /// Requests delivered per target.
    pub const TARGET_REQUESTS: &str = "fanout_target_requests_sent_total";
    /// Retry attempts per target.
    pub const TARGET_RETRIES: &str = "fanout_target_retries_total";
    /// Failed attempts per target and status (or `timeout`, `connect`, `io`).
    pub const TARGET_FAILURES: &str = "fanout_target_failures_total";
    /// Samples dropped per target and reason.
    pub const TARGET_DROPPED: &str = "fanout_target_dropped_samples_total";
    /// Disk spill appends or reads that failed.
    pub const SPILL_ERRORS: &str = "fanout_spill_errors_total";
    /// Bytes queued in the disk spill per target.
    pub const TARGET_SPILL_BYTES: &str = "fanout_target_spill_bytes";
    /// 1 while a target's disk spill is out of space (its last append
    /// failed with ENOSPC or a quota), else 0.
    pub const TARGET_SPILL_DISK_FULL: &str = "fanout_target_spill_disk_full";
    /// Bytes queued in memory per target.
    pub const TARGET_QUEUE_BYTES: &str = "fanout_target_queue_bytes";
    /// Age of the oldest data a target has not delivered (memory or disk),
    /// 0 when it has none: how far behind it is.
    pub const TARGET_OLDEST_UNDELIVERED: &str = "fanout_target_oldest_undelivered_seconds";
    /// The newest sample timestamp a target has delivered (seconds since
    /// the epoch), like Prometheus'
    /// `prometheus_remote_storage_queue_highest_sent_timestamp_seconds`.
    pub const TARGET_HIGHEST_SENT: &str = "fanout_target_highest_sent_timestamp_seconds";
    /// Export status rows this gateway wrote to the shared store.
    pub const STATUS_ROWS_WRITTEN: &str = "fanout_status_rows_written_total";
    /// Free bytes on the data dir's filesystem (for the spill).
    pub const DATA_DIR_FREE: &str = "fanout_data_dir_free_bytes";
    /// A hash of the registry in force, secrets masked (fleet drift): the
    /// first 48 bits of its SHA-256, exact in a float.
    pub const CONFIG_HASH: &str = "fanout_config_hash";
    /// 1 while the registry store is reachable, 0 while the gateway serves
    /// its last known registry (a shared store it has not reached since
    /// it started).
    pub const STORE_REACHABLE: &str = "fanout_store_reachable";
    /// 1, labelled with the version and the source revision.
    pub const BUILD_INFO: &str = "fanout_build_info";
    /// Requests in flight per target.
    pub const TARGET_IN_FLIGHT: &str = "fanout_target_in_flight";
    /// Adaptive concurrency limit per target.
    pub const TARGET_CONCURRENCY: &str = "fanout_target_concurrency";
    /// Send latency per target.
    pub const TARGET_LATENCY: &str = "fanout_target_send_duration_seconds";
    /// Registry version in force.
    pub const CONFIG_VERSION: &str = "fanout_config_version";
    /// Bytes held in the shared memory budget.
    pub const MEMORY_IN_USE: &str = "fanout_memory_budget_used_bytes";
    /// The memory budget (`--memory-budget`).
    pub const MEMORY_BUDGET: &str = "fanout_memory_budget_bytes";
}

/// How often `serve` runs the recorder's upkeep and [`KeepAlive::keep_alive`].
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// A counter or gauge untouched this long is deleted at the next render:
/// only series of forgotten targets are (see the module docs).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Counter and gauge handles to keep alive, by `target` label value.
type Kept = HashMap<String, HashMap<Key, Kept1>>;

#[derive(Clone, Debug)]
enum Kept1 {
    Counter(Counter),
    Gauge(Gauge),
}

/// The handles of the installed [`KeepAlive`], for [`forget_target`].
static INSTALLED: OnceLock<Arc<RwLock<Kept>>> = OnceLock::new();

/// A recorder wrapper that keeps every counter and gauge out of the idle
/// timeout until its target is forgotten (see the module docs).
pub struct KeepAlive<R> {
    inner: R,
    kept: Arc<RwLock<Kept>>,
}

impl<R> std::fmt::Debug for KeepAlive<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepAlive").finish_non_exhaustive()
    }
}

impl<R: metrics::Recorder> KeepAlive<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> KeepAlive<R> {
        KeepAlive {
            inner,
            kept: Arc::default(),
        }
    }

    /// Installs `self` as the global recorder and makes [`forget_target`]
    /// act on it; returns a handle to run [`KeepAlive::keep_alive`] with.
    pub fn install(self) -> Result<KeepAliveHandle, metrics::SetRecorderError<Self>>
    where
        R: Sync + Send + 'static,
    {
        let kept = self.kept.clone();
        metrics::set_global_recorder(self)?;
        let _ = INSTALLED.set(kept.clone());
        Ok(KeepAliveHandle { kept })
    }

    /// A handle on the kept handles (for a recorder not installed globally).
    pub fn handle(&self) -> KeepAliveHandle {
        KeepAliveHandle {
            kept: self.kept.clone(),
        }
    }

    fn keep(&self, key: &Key, handle: impl FnOnce() -> Kept1) {
        let target = key
            .labels()
            .find(|l| l.key() == "target")
            .map_or("", |l| l.value());
        let known = |kept: &Kept| kept.get(target).is_some_and(|m| m.contains_key(key));
        // Most registrations are of known keys (macros that register at
        // every use): a read lock and no allocation.
        if self.kept.read().map(|k| known(&k)).unwrap_or(true) {
            return;
        }
        if let Ok(mut kept) = self.kept.write() {
            kept.entry(target.to_owned())
                .or_default()
                .entry(key.clone())
                .or_insert_with(handle);
        }
    }
}

/// Runs the keep-alive of a [`KeepAlive`] recorder.
#[derive(Clone, Debug)]
pub struct KeepAliveHandle {
    kept: Arc<RwLock<Kept>>,
}

impl KeepAliveHandle {
    /// Touches every kept counter and gauge (adds zero: values unchanged)
    /// so the idle timeout deletes none of them. Run more often than
    /// [`IDLE_TIMEOUT`].
    pub fn keep_alive(&self) {
        let Ok(kept) = self.kept.read() else {
            return;
        };
        for handle in kept.values().flat_map(HashMap::values) {
            match handle {
                Kept1::Counter(c) => c.increment(0),
                Kept1::Gauge(g) => g.increment(0.0),
            }
        }
    }

    /// See [`forget_target`].
    pub fn forget_target(&self, target_id: &str) {
        if let Ok(mut kept) = self.kept.write() {
            kept.remove(target_id);
        }
    }
}

/// Lets the counters and gauges labelled `target="<target_id>"` be deleted
/// from `/metrics` [`IDLE_TIMEOUT`] after the last update through a handle
/// the caller still holds. Call when a target is removed for good (drained
/// or dropped, not coming back); a no-op without an installed [`KeepAlive`].
pub fn forget_target(target_id: &str) {
    if let Some(kept) = INSTALLED.get() {
        KeepAliveHandle { kept: kept.clone() }.forget_target(target_id);
    }
}

impl<R: metrics::Recorder> metrics::Recorder for KeepAlive<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description)
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description)
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description)
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let c = self.inner.register_counter(key, metadata);
        self.keep(key, || Kept1::Counter(c.clone()));
        c
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        let g = self.inner.register_gauge(key, metadata);
        self.keep(key, || Kept1::Gauge(g.clone()));
        g
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.inner.register_histogram(key, metadata)
    }
}

/// Registers descriptions of every metric (call once after installing a recorder).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        names::INGEST_REQUESTS,
        "Ingest requests by transport and status code"
    );
    describe_counter!(
        names::INGEST_SAMPLES,
        "Samples received in accepted requests"
    );
    describe_counter!(names::INGEST_SERIES, "Series received in accepted requests");
    describe_counter!(
        names::INGEST_BYTES,
        Unit::Bytes,
        "Decompressed bytes of accepted requests"
    );
    describe_counter!(names::DROPPED, "Samples not exported, by reason");
    describe_counter!(names::TARGET_SAMPLES, "Samples delivered per target");
    describe_counter!(
        names::TARGET_BYTES,
        Unit::Bytes,
        "Compressed bytes delivered per target"
    );
    describe_counter!(names::TARGET_REQUESTS, "Requests delivered per target");
    describe_counter!(names::TARGET_RETRIES, "Retry attempts per target");
    describe_counter!(
        names::TARGET_FAILURES,
        "Failed attempts per target and status"
    );
    describe_counter!(
        names::TARGET_DROPPED,
        "Samples dropped per target and reason"
    );
    describe_counter!(
        names::SPILL_ERRORS,
        "Disk spill appends or reads that failed"
    );
    describe_gauge!(
        names::TARGET_SPILL_BYTES,
        Unit::Bytes,
        "Bytes queued in the disk spill per target"
    );
    describe_gauge!(
        names::TARGET_SPILL_DISK_FULL,
        "1 while the disk spill of a target is out of space"
    );
    describe_gauge!(
        names::TARGET_QUEUE_BYTES,
        Unit::Bytes,
        "Bytes queued in memory per target"
    );
    describe_gauge!(
        names::TARGET_OLDEST_UNDELIVERED,
        Unit::Seconds,
        "Age of the oldest data not yet delivered per target (0: none)"
    );
    describe_gauge!(
        names::TARGET_HIGHEST_SENT,
        Unit::Seconds,
        "Newest sample timestamp delivered per target (seconds since the epoch)"
    );
    describe_counter!(
        names::CLUSTER_SAMPLES,
        "Samples received in accepted requests per cluster"
    );
    describe_counter!(
        names::STATUS_ROWS_WRITTEN,
        "Export status rows written to the shared store"
    );
    describe_gauge!(
        names::MEMORY_BUDGET,
        Unit::Bytes,
        "The shared memory budget (--memory-budget)"
    );
    describe_gauge!(
        names::DATA_DIR_FREE,
        Unit::Bytes,
        "Free bytes on the data dir's filesystem"
    );
    describe_gauge!(
        names::CONFIG_HASH,
        "A hash of the registry in force (secrets masked); equal on gateways with the same registry"
    );
    describe_gauge!(
        names::STORE_REACHABLE,
        "1 while the registry store is reachable, 0 while serving the last known registry"
    );
    describe_gauge!(
        names::BUILD_INFO,
        "1, labelled with the gateway's version and source revision"
    );
    describe_gauge!(names::TARGET_IN_FLIGHT, "Requests in flight per target");
    describe_gauge!(
        names::TARGET_CONCURRENCY,
        "Adaptive concurrency limit per target"
    );
    describe_histogram!(
        names::TARGET_LATENCY,
        Unit::Seconds,
        "Send latency per target"
    );
    describe_gauge!(names::CONFIG_VERSION, "Registry version in force");
    describe_gauge!(
        names::MEMORY_IN_USE,
        Unit::Bytes,
        "Bytes held in the shared memory budget"
    );
}

/// One entry of `recentErrors`.
#[derive(Debug, Clone)]
pub struct RecentError {
    /// When.
    pub time: SystemTime,
    /// Target id.
    pub target: String,
    /// Status, if there was a response.
    pub status: Option<u16>,
    /// The message (no secrets: status line and body start, or the error kind).
    pub message: String,
}

/// Metric handles of the hot path, registered once (no lookup per request).
struct HotMetrics {
    samples: metrics::Counter,
    series: metrics::Counter,
    bytes: metrics::Counter,
    unattributed: metrics::Counter,
    foreign: metrics::Counter,
    filtered: metrics::Counter,
    no_target: metrics::Counter,
    series_limit: metrics::Counter,
    queue_full: metrics::Counter,
    disk_full: metrics::Counter,
    memory: metrics::Gauge,
}

impl Default for HotMetrics {
    fn default() -> Self {
        let drop = |reason: &'static str| metrics::counter!(names::DROPPED, "reason" => reason);
        HotMetrics {
            samples: metrics::counter!(names::INGEST_SAMPLES),
            series: metrics::counter!(names::INGEST_SERIES),
            bytes: metrics::counter!(names::INGEST_BYTES),
            unattributed: drop("unattributed"),
            foreign: drop("foreign"),
            filtered: drop("filtered"),
            no_target: drop("no_target"),
            series_limit: drop("series_limit"),
            queue_full: drop("queue_full"),
            disk_full: drop("disk_full"),
            memory: metrics::gauge!(names::MEMORY_IN_USE),
        }
    }
}

impl std::fmt::Debug for HotMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotMetrics").finish_non_exhaustive()
    }
}

/// Gateway-wide counters (create after installing the metrics recorder).
#[derive(Debug, Default)]
pub struct GlobalStats {
    hot: HotMetrics,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Samples in accepted requests.
    pub samples: AtomicU64,
    /// Series in accepted requests.
    pub series: AtomicU64,
    /// Decompressed bytes.
    pub bytes: AtomicU64,
    /// Drops: unattributed.
    pub unattributed: AtomicU64,
    /// Drops: foreign.
    pub foreign: AtomicU64,
    /// Drops: filtered.
    pub filtered: AtomicU64,
    /// Attributed to a Deployment without targets.
    pub no_target: AtomicU64,
    /// Drops: a new series over a cluster's or Deployment's `limits.series`.
    pub series_limit: AtomicU64,
    /// Drops: queue full (all targets, including removed ones).
    pub queue_full: AtomicU64,
    /// Drops: the oldest spilled data of a target over its `diskBudget`.
    pub disk_full: AtomicU64,
    /// Disk spill failures (appends or reads that failed).
    pub spill_errors: AtomicU64,
    /// Drops: rejected by a target (non-retryable status).
    pub rejected: AtomicU64,
    /// Drops: removed target could not drain in time, or shutdown grace ran out.
    pub abandoned: AtomicU64,
    /// Samples delivered (all targets).
    pub out_samples: AtomicU64,
    /// Compressed bytes delivered (all targets).
    pub out_bytes: AtomicU64,
    recent: Mutex<VecDeque<RecentError>>,
}

impl GlobalStats {
    /// Counts one ingest request answered with `status` on `transport`
    /// (`http1`, `h2`, `h3`).
    pub fn record_request(&self, transport: &'static str, status: u16) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((transport, status)).or_default() += 1;
        }
        metrics::counter!(names::INGEST_REQUESTS, "transport" => transport, "code" => status.to_string())
            .increment(1);
    }

    /// Requests by transport and status.
    pub fn requests(&self) -> BTreeMap<(&'static str, u16), u64> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Counts an accepted request's contents.
    pub fn add_ingest(&self, samples: u64, series: u64, bytes: u64) {
        self.samples.fetch_add(samples, Ordering::Relaxed);
        self.series.fetch_add(series, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.hot.samples.increment(samples);
        self.hot.series.increment(series);
        self.hot.bytes.increment(bytes);
    }

    /// Adds a request's drops.
    pub fn add_drops(&self, d: &Drops) {
        for (counter, n, metric) in [
            (&self.unattributed, d.unattributed, &self.hot.unattributed),
            (&self.foreign, d.foreign, &self.hot.foreign),
            (&self.filtered, d.filtered, &self.hot.filtered),
            (&self.no_target, d.no_target, &self.hot.no_target),
            (&self.series_limit, d.series_limit, &self.hot.series_limit),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
                metric.increment(n);
            }
        }
    }

    /// Counts samples dropped because a target's queue was full.
    pub fn add_queue_full(&self, n: u64) {
        self.queue_full.fetch_add(n, Ordering::Relaxed);
        self.hot.queue_full.increment(n);
    }

    /// Counts samples dropped for a target's disk budget.
    pub fn add_disk_full(&self, n: u64) {
        self.disk_full.fetch_add(n, Ordering::Relaxed);
        self.hot.disk_full.increment(n);
    }

    /// Counts a failed spill append or read.
    pub fn add_spill_error(&self) {
        self.add_spill_errors(1);
    }

    /// Counts `n` spill failures (e.g. records lost to a disk error).
    pub fn add_spill_errors(&self, n: u64) {
        self.spill_errors.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(names::SPILL_ERRORS).increment(n);
    }

    /// Sets the bytes held in the shared memory budget.
    pub fn set_memory_in_use(&self, bytes: u64) {
        self.hot.memory.set(bytes as f64);
    }

    /// Remembers an error for `recentErrors`.
    pub fn push_error(&self, e: RecentError) {
        if let Ok(mut r) = self.recent.lock() {
            if r.len() == RECENT_ERRORS {
                r.pop_front();
            }
            r.push_back(e);
        }
    }

    /// The recent errors, oldest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// (year, month, day, hour, minute, second, millisecond) in UTC.
pub fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
        d.subsec_millis(),
    )
}

/// Milliseconds since the Unix epoch of `t` (0 before it).
pub fn wall_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339 UTC with milliseconds: `2026-11-25T13:00:00.123Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// RFC 3339 UTC in whole seconds: `2026-11-25T12:59:59Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, _) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// An endpoint without userinfo or fragment, its query values masked
/// (`…/write?api_key=***`, docs/stats-api.md).
pub fn display_endpoint(endpoint: &str) -> String {
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, endpoint),
    };
    let rest = rest.split('#').next().unwrap_or("");
    let (rest, query) = match rest.find('?') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let shown = match scheme {
        Some(s) => format!("{s}://{host}{path}{query}"),
        None => format!("{host}{path}{query}"),
    };
    mask_endpoint(&shown).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forgotten target's counters and gauges leave the exposition after
    /// the idle timeout; a live target's and the global ones stay, however
    /// long they are idle. (The sleep only has to exceed the timeout.)
    #[test]
    fn deliver_stats_forgotten_target_series_are_removed_others_stay() {
        use metrics_exporter_prometheus::PrometheusBuilder;
        use metrics_util::MetricKindMask;
        let idle = Duration::from_millis(50);
        let recorder = PrometheusBuilder::new()
            .idle_timeout(MetricKindMask::COUNTER | MetricKindMask::GAUGE, Some(idle))
            .build_recorder();
        let prom = recorder.handle();
        let recorder = KeepAlive::new(recorder);
        let keep = recorder.handle();
        let handles = metrics::with_local_recorder(&recorder, || {
            [
                metrics::counter!(names::TARGET_SAMPLES, "target" => "gone"),
                metrics::counter!(names::TARGET_SAMPLES, "target" => "live"),
                metrics::counter!(names::INGEST_SAMPLES),
            ]
        });
        let gauge = metrics::with_local_recorder(
            &recorder,
            || metrics::gauge!(names::TARGET_QUEUE_BYTES, "target" => "gone"),
        );
        for c in &handles {
            c.increment(3);
        }
        gauge.set(7.0);
        let before = prom.render();
        assert_eq!(before.matches("target=\"gone\"").count(), 2, "{before}");

        keep.forget_target("gone");
        std::thread::sleep(idle * 3);
        keep.keep_alive();
        let after = prom.render();
        assert!(!after.contains("target=\"gone\""), "{after}");
        assert!(
            after.contains("fanout_target_samples_sent_total{target=\"live\"} 3"),
            "{after}"
        );
        assert!(after.contains("fanout_ingest_samples_total 3"), "{after}");
    }

    #[test]
    fn deliver_stats_time_formats() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_611_600_123);
        assert_eq!(rfc3339_millis(t), "2026-11-25T13:00:00.123Z");
        assert_eq!(rfc3339(t), "2026-11-25T13:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn deliver_stats_endpoint_display_strips_credentials_and_masks_query_values() {
        assert_eq!(
            display_endpoint("https://user:pw@prom.example.com:9090/api/v1/write?token=x&a=b#f"),
            "https://prom.example.com:9090/api/v1/write?token=***&a=***"
        );
        assert_eq!(
            display_endpoint("http://127.0.0.1:9201/api/v1/write"),
            "http://127.0.0.1:9201/api/v1/write"
        );
    }
}

/// The standard process metrics of Prometheus' client libraries (its
/// `process` collector), for the dashboard's per-gateway CPU, memory and
/// descriptor panels: read from `/proc/self` on each upkeep tick. CPU is a
/// gauge of the running total (the `metrics` crate counts in integers);
/// `rate()` reads it the same way. Linux only: elsewhere nothing is set.
#[derive(Debug)]
pub struct ProcessMetrics {
    cpu: Gauge,
    resident: Gauge,
    open_fds: Gauge,
    ticks: f64,
}

impl ProcessMetrics {
    /// Registers the gauges (after the recorder is installed).
    pub fn new() -> ProcessMetrics {
        metrics::describe_gauge!(
            "process_cpu_seconds_total",
            Unit::Seconds,
            "Total user and system CPU time spent"
        );
        metrics::describe_gauge!(
            "process_resident_memory_bytes",
            Unit::Bytes,
            "Resident memory size"
        );
        metrics::describe_gauge!("process_open_fds", "Open file descriptors");
        metrics::describe_gauge!("process_max_fds", "Maximum open file descriptors");
        metrics::describe_gauge!(
            "process_start_time_seconds",
            Unit::Seconds,
            "Start time of the process since the epoch"
        );
        // What does not change while it runs is set once.
        let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
        let stat = ProcStat::read();
        if let (Some(started), Ok(uptime)) =
            (stat.field(22), std::fs::read_to_string("/proc/uptime"))
        {
            let up: f64 = uptime
                .split_whitespace()
                .next()
                .and_then(|u| u.parse().ok())
                .unwrap_or(0.0);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            metrics::gauge!("process_start_time_seconds").set(now - up + started as f64 / ticks);
        }
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if let Some(max) = limit.current {
            metrics::gauge!("process_max_fds").set(max as f64);
        }
        ProcessMetrics {
            cpu: metrics::gauge!("process_cpu_seconds_total"),
            resident: metrics::gauge!("process_resident_memory_bytes"),
            open_fds: metrics::gauge!("process_open_fds"),
            ticks,
        }
    }

    /// Reads `/proc/self` once: CPU, resident memory, open descriptors.
    pub fn sample(&self) {
        let stat = ProcStat::read();
        if let (Some(utime), Some(stime)) = (stat.field(14), stat.field(15)) {
            self.cpu.set((utime + stime) as f64 / self.ticks);
        }
        if let Some(rss) = stat.field(24) {
            self.resident
                .set(rss as f64 * rustix::param::page_size() as f64);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // The directory's own descriptor is among them.
            self.open_fds.set(fds.count().saturating_sub(1) as f64);
        }
    }
}

/// `/proc/self/stat`'s fields after the command name (which may hold
/// spaces and parentheses: they count from its last `)`, field 3).
struct ProcStat(String);

impl ProcStat {
    fn read() -> ProcStat {
        let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        ProcStat(
            text.rsplit_once(')')
                .map(|(_, rest)| rest.to_owned())
                .unwrap_or_default(),
        )
    }

    /// Field `n` (1-based, as `proc(5)` numbers them), when there is one.
    fn field(&self, n: usize) -> Option<u64> {
        self.0
            .split_whitespace()
            .nth(n.checked_sub(3)?)?
            .parse()
            .ok()
    }
}

impl Default for ProcessMetrics {
    fn default() -> ProcessMetrics {
        ProcessMetrics::new()
    }
}
