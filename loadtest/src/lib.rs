//! `fanout-load`: traffic generator and verifying sink (SPEC §8).
//!
//! - [`scenario`]: the simulated fleet (clusters, tokens, Deployments) and the
//!   Airflow and infrastructure series each Deployment sends, after
//!   `reference/metric-catalog.md`; a pure function of its settings.
//! - [`identity`]: how every sample's value and timestamp encode (cluster,
//!   series, round) and its send time, so receivers can verify delivery and
//!   measure end-to-end latency.
//! - [`generator`]: builds remote-write 1.0 / 2.0 requests and sends them at a
//!   rate over [`client`] connections (HTTP/1.1, h2c or h2, HTTP/3), with
//!   progress lines and a latency summary.
//! - [`sink`]: in-process remote-write receivers that record what arrives,
//!   with failure injection.
//! - [`verify`]: compares sink reports with an [`verify::Expectation`] and
//!   lists problems (missing, duplicated, misrouted, mislabelled).
//! - [`bench`]: Fanout and vmagent side by side on a scenario file
//!   (`fanout-load bench`), with the table and the plot.

pub mod bench;
pub mod client;
pub mod generator;
pub mod identity;
pub mod scenario;
pub mod sink;
pub mod verify;
