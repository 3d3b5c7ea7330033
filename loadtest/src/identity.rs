//! The identity every generated sample carries, so a sink can verify delivery
//! without knowing the scenario.
//!
//! # Encoding
//! - **value** = `seq * 2^32 + cluster * 2^22 + series`, an integer below 2^53
//!   and therefore exact in an `f64`: `series` (22 bits, < 4,194,304) is the
//!   series index within its cluster, `cluster` (10 bits, < 1024) the
//!   simulated cluster, `seq` (21 bits, < 2,097,152) the round: the n-th
//!   sample of that series. Because `seq` sits in the high bits, every
//!   series' value grows from one sample to the next, so counters increase.
//! - **timestamp** = the generator's wall clock in milliseconds since the Unix
//!   epoch when the request was built, which is also a realistic timestamp
//!   for any receiver (vmagent, Prometheus); a sink's `now - timestamp` is the
//!   end-to-end latency, to the millisecond.
//!
//! A value that is not such an integer (negative, fractional, NaN, ≥ 2^53)
//! decodes to `None` and is counted by the sink as unidentified.

use serde::{Deserialize, Serialize};

/// Bits of the series index.
pub const SERIES_BITS: u32 = 22;
/// Bits of the cluster index.
pub const CLUSTER_BITS: u32 = 10;
/// Bits of the sequence number.
pub const SEQ_BITS: u32 = 21;
/// Largest number of series per cluster.
pub const MAX_SERIES: u32 = 1 << SERIES_BITS;
/// Largest number of clusters.
pub const MAX_CLUSTERS: u32 = 1 << CLUSTER_BITS;
/// Largest number of rounds (samples per series).
pub const MAX_SEQ: u32 = 1 << SEQ_BITS;

/// One series of one simulated cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesId {
    /// Cluster index (0-based).
    pub cluster: u32,
    /// Series index within the cluster (0-based).
    pub series: u32,
}

impl std::fmt::Display for SeriesId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cluster {} series {}", self.cluster, self.series)
    }
}

/// One sample's identity: its series and its round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SampleId {
    /// The series.
    pub id: SeriesId,
    /// The round (0-based).
    pub seq: u32,
}

impl SampleId {
    /// The sample value that carries this identity (see the module doc).
    pub fn to_value(self) -> f64 {
        let bits = (u64::from(self.seq & (MAX_SEQ - 1)) << 32)
            | (u64::from(self.id.cluster & (MAX_CLUSTERS - 1)) << SERIES_BITS)
            | u64::from(self.id.series & (MAX_SERIES - 1));
        bits as f64
    }

    /// Decodes a sample value; `None` when it is not one the generator makes.
    pub fn from_value(value: f64) -> Option<SampleId> {
        if !(0.0..9_007_199_254_740_992.0).contains(&value) || value.fract() != 0.0 {
            return None;
        }
        let bits = value as u64;
        Some(SampleId {
            id: SeriesId {
                cluster: ((bits >> SERIES_BITS) & u64::from(MAX_CLUSTERS - 1)) as u32,
                series: (bits & u64::from(MAX_SERIES - 1)) as u32,
            },
            seq: (bits >> 32) as u32,
        })
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_at_the_edges() {
        for (cluster, series, seq) in [
            (0, 0, 0),
            (MAX_CLUSTERS - 1, MAX_SERIES - 1, MAX_SEQ - 1),
            (3, 12_345, 77),
        ] {
            let s = SampleId {
                id: SeriesId { cluster, series },
                seq,
            };
            assert_eq!(SampleId::from_value(s.to_value()), Some(s));
        }
    }

    #[test]
    fn values_grow_with_seq() {
        let id = SeriesId {
            cluster: 1023,
            series: MAX_SERIES - 1,
        };
        let a = SampleId { id, seq: 5 }.to_value();
        let b = SampleId { id, seq: 6 }.to_value();
        assert!(b > a);
    }

    #[test]
    fn foreign_values_are_not_identities() {
        for v in [-1.0, 0.5, f64::NAN, f64::INFINITY, 1e300] {
            assert_eq!(SampleId::from_value(v), None, "{v}");
        }
    }
}
