//! What a run did ([`RunSummary`]): counts, latency, and the acknowledged
//! positions of each cluster's stream as merged ranges, from which
//! [`RunSummary::acked_samples`] gives every acknowledged sample's identity
//! (position `p` is round `p / S` of series `p % S`, see [`crate::scenario`]
//! for what a series index is).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::identity::{SampleId, SeriesId};

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Number of values.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value.
    pub max: f64,
}

impl Latency {
    /// Percentiles of a histogram whose unit is `unit_ms` milliseconds.
    pub fn from_histogram(h: &Histogram<u64>, unit_ms: f64) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let q = |x: f64| h.value_at_quantile(x) as f64 * unit_ms;
        Latency {
            count: h.len(),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: h.max() as f64 * unit_ms,
        }
    }
}

/// Acknowledged positions of one cluster's sample stream, as half-open ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClusterAck {
    /// Cluster index.
    pub cluster: u32,
    /// Merged `[start, end)` position ranges answered 2xx.
    pub ranges: Vec<(u64, u64)>,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunSummary {
    /// Target URL.
    pub url: String,
    /// Transport used.
    pub transport: String,
    /// Remote-write version used.
    pub protocol: String,
    /// Wall time of the run in seconds.
    pub duration_secs: f64,
    /// Requests sent (answered or failed).
    pub requests: u64,
    /// Samples in requests answered 2xx.
    pub samples_ok: u64,
    /// Samples in requests answered otherwise or failed.
    pub samples_failed: u64,
    /// Compressed bytes sent.
    pub bytes_sent: u64,
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Acknowledged samples per second.
    pub samples_per_sec: f64,
    /// Answers by status code.
    pub responses: BTreeMap<u16, u64>,
    /// Requests that got no answer (connect, timeout, reset); an answered
    /// request is never also counted here.
    pub transport_errors: u64,
    /// Answers 429 or 503 after which the request was sent again
    /// ([`GeneratorConfig::retry`]; also counted in `responses`).
    pub retries: u64,
    /// The last answer other than 2xx: its status and the start of its body.
    pub last_answer: Option<String>,
    /// The last transport error (no answer).
    pub last_transport_error: Option<String>,
    /// Request latency (send to response), milliseconds.
    pub latency_ms: Latency,
    /// Series per cluster.
    pub series_per_cluster: u64,
    /// Acknowledged samples per cluster (positions, see the module doc).
    pub acked: Vec<ClusterAck>,
    /// Why the run stopped before its duration or sample count, if it did
    /// (interrupted, or every connection gave up).
    pub ended_early: Option<String>,
}

impl RunSummary {
    /// The summary as a human-readable table.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "target        {} ({}, {})",
            self.url, self.transport, self.protocol
        );
        let _ = writeln!(s, "duration      {:.2} s", self.duration_secs);
        let _ = writeln!(
            s,
            "requests      {} ({:.1}/s)",
            self.requests, self.requests_per_sec
        );
        let _ = writeln!(
            s,
            "samples ok    {} ({:.0}/s)",
            self.samples_ok, self.samples_per_sec
        );
        let _ = writeln!(s, "samples fail  {}", self.samples_failed);
        let _ = writeln!(s, "bytes sent    {}", self.bytes_sent);
        let codes: Vec<String> = self
            .responses
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        let _ = writeln!(
            s,
            "answers       {}",
            if codes.is_empty() {
                "-".into()
            } else {
                codes.join(", ")
            }
        );
        let _ = writeln!(
            s,
            "conn errors   {} (no answer: connect, reset, timeout)",
            self.transport_errors
        );
        if self.retries > 0 {
            let _ = writeln!(s, "sent again    {} (429/503 or no answer)", self.retries);
        }
        let l = &self.latency_ms;
        let _ = writeln!(
            s,
            "latency ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        if let Some(a) = &self.last_answer {
            let _ = writeln!(s, "last answer   {a}");
        }
        if let Some(e) = &self.last_transport_error {
            let _ = writeln!(s, "last conn err {e}");
        }
        if let Some(e) = &self.ended_early {
            let _ = writeln!(s, "ended early   {e}");
        }
        s
    }

    /// Every acknowledged sample, as (series, seq).
    pub fn acked_samples(&self) -> impl Iterator<Item = SampleId> + '_ {
        let n = self.series_per_cluster.max(1);
        self.acked.iter().flat_map(move |a| {
            a.ranges.iter().flat_map(move |&(s, e)| {
                (s..e).map(move |p| SampleId {
                    id: SeriesId {
                        cluster: a.cluster,
                        series: (p % n) as u32,
                    },
                    seq: (p / n) as u32,
                })
            })
        })
    }
}

/// Sorts and merges `[start, end)` ranges.
pub(super) fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_coalesces_adjacent_ranges() {
        assert_eq!(
            merge(vec![(4, 6), (0, 2), (2, 4), (8, 9)]),
            vec![(0, 6), (8, 9)]
        );
    }
}
