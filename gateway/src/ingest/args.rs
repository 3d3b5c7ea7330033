//! Ingest flags of `fanout serve` and their defaults (SPEC §2 limits).
//!
//! Every flag is optional so a `--config` file can fill what the command line
//! left out; [`IngestArgs::config`] applies the defaults. Sizes are bytes or
//! strings like `32MiB`; durations are strings like `500ms`, `10s`, `2m`.

use clap::Args;

use super::IngestConfig;
pub use crate::units::{ByteSize, HumanDuration};

/// Ingest flags, flattened into `fanout serve`.
#[derive(Args, Debug, Clone, Default)]
pub struct IngestArgs {
    /// In-flight memory budget shared by ingest and delivery [default: 512MiB].
    #[arg(long, help_heading = "Limits", env = "FANOUT_MEMORY_BUDGET")]
    pub memory_budget: Option<ByteSize>,
    /// Largest compressed request body [default: 32MiB].
    #[arg(long, help_heading = "Limits", env = "FANOUT_MAX_COMPRESSED_BODY")]
    pub max_compressed_body: Option<ByteSize>,
    /// Largest decompressed request body, checked from the snappy header [default: 256MiB].
    #[arg(long, help_heading = "Limits", env = "FANOUT_MAX_DECOMPRESSED_BODY")]
    pub max_decompressed_body: Option<ByteSize>,
    /// Most series in one request [default: 1000000].
    #[arg(long, help_heading = "Limits", env = "FANOUT_MAX_SERIES_PER_REQUEST")]
    pub max_series_per_request: Option<usize>,
    /// Most labels on one series [default: 64].
    #[arg(long, help_heading = "Limits", env = "FANOUT_MAX_LABELS_PER_SERIES")]
    pub max_labels_per_series: Option<usize>,
    /// Longest label name in bytes [default: 256].
    #[arg(long, help_heading = "Limits", env = "FANOUT_MAX_LABEL_NAME_LEN")]
    pub max_label_name_len: Option<usize>,
    /// Longest label value in bytes [default: 16KiB].
    #[arg(long, help_heading = "Limits", env = "FANOUT_MAX_LABEL_VALUE_LEN")]
    pub max_label_value_len: Option<ByteSize>,
    /// Time allowed for a request's headers to arrive [default: 10s].
    #[arg(long, help_heading = "Listeners", env = "FANOUT_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<HumanDuration>,
    /// Time allowed for a request's whole body to arrive [default: 60s].
    #[arg(long, help_heading = "Listeners", env = "FANOUT_BODY_READ_TIMEOUT")]
    pub body_read_timeout: Option<HumanDuration>,
    /// How long a request waits for memory before 429 [default: 1s].
    #[arg(long, help_heading = "Limits", env = "FANOUT_ADMISSION_TIMEOUT")]
    pub admission_timeout: Option<HumanDuration>,
    /// Bytes of request bodies still arriving, over all connections; when a
    /// body needs more, the body that has been arriving the longest is
    /// stopped with 503 [default: 64MiB; at least --max-compressed-body].
    #[arg(long, help_heading = "Limits", env = "FANOUT_BODY_READ_BUDGET")]
    pub body_read_budget: Option<ByteSize>,
    /// Most open ingest connections (TCP plus QUIC) [default: 10000].
    #[arg(long, help_heading = "Listeners", env = "FANOUT_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Samples per second accepted from each cluster without
    /// `limits.samplesPerSecond` of its own; over it, writes get 429 with
    /// `Retry-After` [default: unlimited].
    #[arg(long, help_heading = "Limits", env = "FANOUT_CLUSTER_SAMPLES_PER_SECOND", value_parser = clap::value_parser!(u64).range(1..))]
    pub cluster_samples_per_second: Option<u64>,
}

impl IngestArgs {
    /// The configuration with defaults for what is unset.
    pub fn config(&self) -> IngestConfig {
        let d = IngestConfig::default();
        IngestConfig {
            memory_budget: self.memory_budget.map_or(d.memory_budget, |s| s.0),
            max_compressed_body: self
                .max_compressed_body
                .map_or(d.max_compressed_body, |s| s.0 as usize),
            max_decompressed_body: self
                .max_decompressed_body
                .map_or(d.max_decompressed_body, |s| s.0 as usize),
            body_read_budget: self.body_read_budget.map_or(d.body_read_budget, |s| s.0),
            scan: fanout_proto::Limits {
                max_series: self.max_series_per_request.unwrap_or(d.scan.max_series),
                max_labels_per_series: self
                    .max_labels_per_series
                    .unwrap_or(d.scan.max_labels_per_series),
                max_label_name_len: self.max_label_name_len.unwrap_or(d.scan.max_label_name_len),
                max_label_value_len: self
                    .max_label_value_len
                    .map_or(d.scan.max_label_value_len, |s| s.0 as usize),
            },
            header_read_timeout: self
                .header_read_timeout
                .map_or(d.header_read_timeout, |t| t.0),
            body_read_timeout: self.body_read_timeout.map_or(d.body_read_timeout, |t| t.0),
            admission_timeout: self.admission_timeout.map_or(d.admission_timeout, |t| t.0),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            retry_after: d.retry_after,
            cluster_samples_per_second: self.cluster_samples_per_second,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ingest_args_parse_sizes_and_durations() {
        assert_eq!("32MiB".parse::<ByteSize>().unwrap().0, 32 << 20);
        assert_eq!("1024".parse::<ByteSize>().unwrap().0, 1024);
        assert_eq!("16KiB".parse::<ByteSize>().unwrap().0, 16 << 10);
        assert!("12XB".parse::<ByteSize>().is_err());
        assert!("".parse::<ByteSize>().is_err());
        assert_eq!(
            "500ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(
            "2m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(120)
        );
        assert!("10".parse::<HumanDuration>().is_err());
        let c = IngestArgs::default().config();
        assert_eq!(c.max_compressed_body, 32 << 20);
        assert_eq!(c.max_decompressed_body, 256 << 20);
        assert_eq!(c.memory_budget, 512 << 20);
        assert_eq!(c.scan.max_labels_per_series, 64);
        assert_eq!(c.scan.max_label_value_len, 16 << 10);
    }
}
