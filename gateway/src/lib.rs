//! The Fanout gateway: ingest, registry, resolver, delivery, spill and admin API.
//!
//! # Layout
//! - [`config`]: command-line flags, `FANOUT_*` environment variables and the
//!   YAML `--config` file, merged into one [`config::ServeConfig`].
//! - [`registry`]: clusters, Workspaces, Deployments and metrics exports; the
//!   pure resolver and the immutable [`registry::Snapshot`] the hot path reads
//!   without locks; the SQLite and PostgreSQL stores.
//! - [`ingest`]: the remote-write listeners (HTTP/1.1, HTTP/2, HTTP/3), cluster
//!   authentication, limits and status codes.
//! - [`handoff`]: the seam between ingest and delivery ([`handoff::Delivery`],
//!   [`handoff::Accepted`]); [`budget`]: the memory budget both share;
//!   [`units`]: the size and duration flag types. `ingest` and `deliver`
//!   meet only through these and never import each other.
//! - [`deliver`]: per-target queues and senders.
//! - [`admin`]: the admin API on its own port.
//! - [`serve`]: wires the parts together for `fanout serve`.
//! - [`check`]: `fanout check`, the offline registry and config check.
//! - [`fuzzing`]: the checks behind the fuzz targets of the registry, admin
//!   and spill parsers.

// The OpenAPI document is one `json!` literal, deeper than the default limit.
#![recursion_limit = "256"]

pub mod admin;
pub mod budget;
pub mod check;
pub mod config;
pub mod deliver;
pub mod fuzzing;
pub mod handoff;
pub mod ingest;
pub mod registry;
pub mod replay;
pub mod serve;
pub mod units;
