//! Registry: clusters, Workspaces, Deployments and metrics exports (SPEC §3).
//!
//! # Design
//! The registry is split the way the data flows:
//!
//! - [`model`]: the objects exactly as users write them (JSON/YAML, camelCase),
//!   the declarative [`Document`], and the write-only [`Secret`] type whose
//!   `Debug` masks. Reads go through [`model::masked`], which replaces every set
//!   secret with `"***"` and lists it in `setFields`.
//! - [`validate`]: every rule of SPEC §3 as plain code over a whole
//!   [`Registry`]; it returns *all* problems, never the first one only.
//! - [`resolve`]: `(registry, deployment) -> [effective export]`, the field-by-
//!   field override merge, defaults, and the target identity (a SHA-256 over a
//!   canonical encoding of endpoint, auth, headers, labels and delivery options).
//!   No IO, no clock.
//! - [`secrets`]: which values of a target's config are secret, the masked
//!   form of endpoints, and the [`secrets::Scrubber`] that takes every form of
//!   a target's secrets out of what the target sends back.
//! - [`snapshot`]: the immutable, pre-indexed view the hot path reads through an
//!   `ArcSwap` without locks; [`snapshot::SnapshotDiff`] tells what targets were
//!   added, changed or removed between two snapshots.
//! - [`store`]: persistence behind one async trait, SQLite (default) and
//!   PostgreSQL with the same schema; PostgreSQL adds LISTEN/NOTIFY for fleets.
//! - [`ops`]: create, replace, merge patch, delete and replace-all, as pure
//!   edits of a registry (secrets kept on `"***"`, `unsetFields` applied).
//! - [`live`]: glues a store to the shared snapshot: loads at start, applies
//!   changes, reloads on notifications and swaps the snapshot.
//!
//! # Invariants
//! - A stored registry always passes [`validate::validate`]: every write reads
//!   the current registry inside the store's transaction, applies the change,
//!   validates the result and only then writes it.
//! - The registry version only grows; a snapshot carries the version it was
//!   built from, and a gateway only ever swaps to a newer one.
//! - Secrets leave the process only towards the store and the export targets.

pub mod live;
pub mod model;
pub mod ops;
pub mod resolve;
pub mod secrets;
pub mod snapshot;
pub mod store;
pub mod validate;

#[cfg(test)]
mod tests;

pub use model::{Document, Limits, Registry, Secret};
pub use resolve::{EffectiveExport, TargetConfig, TargetId};
pub use snapshot::{
    routes_name, Attribution, ClusterInfo, ClusterView, DeploymentInfo, Snapshot, SnapshotDiff,
    Target, TargetRoute,
};
pub use validate::{validate, ValidationError};
