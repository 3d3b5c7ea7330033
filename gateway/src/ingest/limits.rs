//! Per-cluster ingest rate limits (`limits.samplesPerSecond` of a cluster,
//! or `--cluster-samples-per-second` for every cluster without its own).
//!
//! # Design
//! One token bucket per cluster, refilled at the cluster's rate and holding
//! at most one second of it. A write is let in while its cluster's bucket is
//! not in debt; once its body is scanned, its samples (floats and
//! histograms) are taken from the bucket, which may go into debt by up to
//! one request. A write that finds the bucket in debt is refused with 429
//! and a `Retry-After` of the seconds the debt takes to repay (at least 1),
//! before its body is decompressed: the refusal costs the gateway almost
//! nothing, nothing of the refused write was accepted, and a sender that
//! retries 429 (vmagent always; Prometheus with `retry_on_http_429`) loses
//! nothing. Taking the samples after the scan, rather than refusing a write
//! larger than what is left, lets a cluster whose rate is below its request
//! size still get through at its rate on average.
//!
//! Other clusters are not affected: each has its own bucket, and the check
//! is one lock and one map lookup per request, nothing per sample.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::registry::ClusterInfo;

/// The buckets of every rate-limited cluster.
#[derive(Debug, Default)]
pub struct RateLimits {
    /// The rate of a cluster without its own.
    default: Option<u64>,
    buckets: Mutex<HashMap<String, Bucket, foldhash::fast::RandomState>>,
}

#[derive(Debug)]
struct Bucket {
    /// Samples that may still be taken; negative: the debt.
    tokens: f64,
    at: Instant,
}

/// A write refused for its cluster's rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverRate {
    /// The cluster's rate (samples per second).
    pub rate: u64,
    /// When the debt is repaid.
    pub retry_after: Duration,
}

impl RateLimits {
    /// Limits with `default` for clusters without a rate of their own.
    pub fn new(default: Option<u64>) -> RateLimits {
        RateLimits {
            default,
            buckets: Mutex::default(),
        }
    }

    /// The rate in force for `cluster`, if any.
    pub fn rate_of(&self, cluster: &ClusterInfo) -> Option<u64> {
        cluster.limits.samples_per_second.or(self.default)
    }

    /// Whether a write of `cluster` may go on at `now`.
    pub fn check(&self, cluster: &ClusterInfo, now: Instant) -> Result<(), OverRate> {
        let Some(rate) = self.rate_of(cluster) else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = buckets.get_mut(cluster.id.as_str()) else {
            return Ok(());
        };
        b.refill(rate, now);
        if b.tokens >= 0.0 {
            return Ok(());
        }
        let secs = (-b.tokens / rate as f64).ceil().max(1.0);
        Err(OverRate {
            rate,
            retry_after: Duration::from_secs(secs as u64),
        })
    }

    /// Takes `samples` accepted from `cluster` at `now` from its bucket.
    pub fn take(&self, cluster: &ClusterInfo, samples: u64, now: Instant) {
        let Some(rate) = self.rate_of(cluster) else {
            return;
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        // The cluster's id is copied once, when its bucket is made.
        if !buckets.contains_key(cluster.id.as_str()) {
            let full = Bucket {
                tokens: rate as f64,
                at: now,
            };
            buckets.insert(cluster.id.clone(), full);
        }
        if let Some(b) = buckets.get_mut(cluster.id.as_str()) {
            b.refill(rate, now);
            b.tokens -= samples as f64;
        }
    }
}

impl Bucket {
    fn refill(&mut self, rate: u64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate as f64).min(rate as f64);
        self.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Limits;

    fn cluster(id: &str, rate: Option<u64>) -> ClusterInfo {
        ClusterInfo {
            id: id.into(),
            samples_metric: Default::default(),
            organization_id: "o".into(),
            cloud_provider: "aws".into(),
            cloud_region: "r".into(),
            limits: Limits {
                samples_per_second: rate,
                series: None,
            },
        }
    }

    #[test]
    fn ingest_limits_a_cluster_over_its_rate_waits_for_its_debt_only() {
        let l = RateLimits::new(None);
        let (slow, other) = (cluster("slow", Some(1_000)), cluster("other", None));
        let t0 = Instant::now();
        // One second's worth, then 2,500 more: 2.5 s of debt.
        assert_eq!(l.check(&slow, t0), Ok(()));
        l.take(&slow, 1_000, t0);
        assert_eq!(l.check(&slow, t0), Ok(()));
        l.take(&slow, 2_500, t0);
        let over = l.check(&slow, t0).unwrap_err();
        assert_eq!(over.rate, 1_000);
        assert_eq!(over.retry_after, Duration::from_secs(3));
        // Another cluster is not affected.
        l.take(&other, 1_000_000, t0);
        assert_eq!(l.check(&other, t0), Ok(()));
        // Repaid at the rate.
        assert!(l.check(&slow, t0 + Duration::from_millis(2_000)).is_err());
        assert_eq!(l.check(&slow, t0 + Duration::from_millis(2_600)), Ok(()));
    }

    #[test]
    fn ingest_limits_the_default_applies_to_clusters_without_their_own() {
        let l = RateLimits::new(Some(10));
        let (own, plain) = (cluster("own", Some(1_000_000)), cluster("plain", None));
        let t0 = Instant::now();
        l.take(&own, 5_000, t0);
        l.take(&plain, 5_000, t0);
        assert_eq!(l.check(&own, t0), Ok(()));
        // 10 in the bucket, 5,000 taken: 4,990 of debt at 10/s.
        assert_eq!(
            l.check(&plain, t0).unwrap_err().retry_after,
            Duration::from_secs(499)
        );
    }
}
