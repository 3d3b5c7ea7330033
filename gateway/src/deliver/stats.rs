//! Gateway-wide counters behind `GET /api/v1/stats` (docs/stats-api.md) and
//! the `fanout_` self-metrics.
//!
//! Counters are atomics updated on the hot path without allocation; the
//! per-transport request map and the recent-error ring take a lock but are
//! touched once per request or per failure. Metric names live here so the
//! exposition and the JSON stay consistent.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::route::Drops;

/// Recent errors kept for the stats snapshot.
pub const RECENT_ERRORS: usize = 50;

/// Self-metric names.
pub mod names {
    /// Ingest requests by transport and status code.
    pub const INGEST_REQUESTS: &str = "fanout_ingest_requests_total";
    /// Samples received in accepted requests.
    pub const INGEST_SAMPLES: &str = "fanout_ingest_samples_total";
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
    /// Bytes queued in memory per target.
    pub const TARGET_QUEUE_BYTES: &str = "fanout_target_queue_bytes";
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
        names::TARGET_QUEUE_BYTES,
        Unit::Bytes,
        "Bytes queued in memory per target"
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

/// An endpoint without userinfo and query string (docs/stats-api.md).
pub fn display_endpoint(endpoint: &str) -> String {
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, endpoint),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let host = authority.rsplit('@').next().unwrap_or(authority);
    match scheme {
        Some(s) => format!("{s}://{host}{path}"),
        None => format!("{host}{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn deliver_stats_endpoint_display_strips_credentials_and_query() {
        assert_eq!(
            display_endpoint("https://user:pw@prom.example.com:9090/api/v1/write?token=x"),
            "https://prom.example.com:9090/api/v1/write"
        );
        assert_eq!(
            display_endpoint("http://127.0.0.1:9201/api/v1/write"),
            "http://127.0.0.1:9201/api/v1/write"
        );
    }
}
