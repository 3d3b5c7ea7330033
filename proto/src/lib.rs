//! `fanout-proto`: the remote-write wire formats of Fanout.
//!
//! - [`v1`] and [`v2`]: prost types for remote-write 1.0 (`prometheus.WriteRequest`)
//!   and 2.0 (`io.prometheus.write.v2.Request`), generated from `proto/*.proto`
//!   and checked in (`tests/generated.rs` regenerates and diffs them).
//! - [`scan`]: the zero-copy 1.0 scanner that validates a request and slices
//!   series out of it without copying or allocating per series or label.
//! - [`v2read`]: the 2.0 reader, which validates symbol references and re-emits
//!   the request as 1.0.
//! - [`encode`]: the batch encoder that stamps labels on scanned series and
//!   copies everything else verbatim.
//! - [`snappy`]: block compression with a size limit checked before allocating.
//! - [`api`]: the admin API's JSON shapes, shared by the gateway and the
//!   console.
//! - [`testdata`]: realistic requests for benchmarks and seeds.
//! - [`fuzzing`]: the checks the fuzz targets run, also run on the checked-in
//!   corpus by `cargo test`.
//!
//! Performance figures and the commands that produce them are in `proto/README.md`.

pub mod api;
pub mod encode;
pub mod error;
pub mod fuzzing;
pub mod scan;
pub mod snappy;
pub mod testdata;
pub mod units;
pub mod v2read;
pub mod v2write;
pub mod wire;

pub use error::{ErrorKind, ScanError};

/// Remote-write 1.0 messages (package `prometheus`).
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    include!("gen/prometheus.rs");
}

/// Remote-write 2.0 messages (package `io.prometheus.write.v2`).
#[allow(missing_docs, clippy::all)]
pub mod v2 {
    include!("gen/io.prometheus.write.v2.rs");
}

/// Per-request limits enforced while scanning (SPEC §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Series per request.
    pub max_series: usize,
    /// Labels per series.
    pub max_labels_per_series: usize,
    /// Bytes of one label name.
    pub max_label_name_len: usize,
    /// Bytes of one label value.
    pub max_label_value_len: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_series: 1_000_000,
            max_labels_per_series: 64,
            max_label_name_len: 256,
            max_label_value_len: 16 * 1024,
        }
    }
}
