//! Applying a registry version to the running targets ([`Inner::sync`]),
//! and the orphan backlogs on disk.
//!
//! # Targets and live config
//! Targets are keyed by their registry id (a hash of endpoint, auth, headers,
//! labels and delivery options). On every registry version (a diff from
//! [`Live::subscribe`], or lazily when a request sees a newer snapshot):
//! - a new id starts a target: its queue and its sender task;
//! - an id that is gone is *retired*: it takes no new data, sends what it has
//!   with partial batches at once, and stops when empty (or after
//!   [`Settings::removed_drain`], counting what is left as abandoned);
//! - an id that stays keeps its queue, its in-flight batches and its task; only
//!   its routes (feeds) are updated;
//! - a config change is a new id. When the gone id's routes equal a new
//!   target's routes exactly (its *successor*, below) and that id is neither
//!   running, nor retired, nor holding a disk backlog of its own, the running
//!   target becomes the new one in place (`TargetHandle::reconfigure`): its
//!   id, endpoint, config (auth, headers, delivery options) and metrics are
//!   swapped, its queue, lanes, disk queue and in-flight attempts are kept
//!   (every later attempt, retries included, uses the new config), and its
//!   spill directory is renamed under the queue lock (after the sync round
//!   in progress; the manifest is rewritten after the lock). A broken disk
//!   queue is not moved (a reopen may be reading it): the old id is retired
//!   instead. It keeps its lane
//!   count (order; a new `maxConcurrency` caps the concurrency limit and
//!   becomes the lane count at the next start without a backlog). Otherwise
//!   the old id is retired and drains to the old endpoint while the new one
//!   starts.
//!
//! A target's *successor* is the target whose routes (every Deployment/export
//! pair that leads to it) are exactly its routes: "my export for these
//! Deployments", whatever its endpoint, auth, headers, labels or delivery
//! options became. Each spill directory holds a manifest (target id, lane
//! count, routes; no secret, no endpoint: `spill/manifest.rs`), rewritten
//! when the routes change. A target that starts with no records of its own
//! resumes the backlog of the only orphan (a spill directory of a target
//! that is neither in the registry nor running nor retired) whose manifest
//! has its routes: the directory is renamed to the target's (no copy) and
//! replayed first, like any recovered backlog. Records keep the labels they
//! were accepted with, and the core keeps the lane count they were queued
//! with (their lane tags keep per-series order only under that count; the
//! concurrency limit is capped at the smaller of it and `maxConcurrency`).
//! Orphans without a manifest (older layout), several orphans with the same
//! routes, or a target with a backlog of its own leave orphans as they are
//! (reported, deleted after the retention). This applies at start (a config
//! changed while the gateway was down) and to any target that starts later.
//! A live change that does not go in place (routes changed in the same
//! version, or the new id already has a backlog) retires the old target: it
//! drains in parallel with the new one, so per-series order between the two
//! is not guaranteed, and what it cannot send within
//! [`Settings::removed_drain`] becomes an orphan until the next start.
//!
//! [`Live::subscribe`]: crate::registry::live::Live::subscribe
//! [`Settings::removed_drain`]: super::Settings::removed_drain

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::target::TargetHandle;
use super::{run_target, Inner};
use crate::deliver::route::Plan;
use crate::deliver::spill::{self as spill_mod, lock_queue};
use crate::deliver::stats::names;
use crate::registry::{Snapshot, Target};

/// The disk backlog of a target that is no longer in the registry.
#[derive(Debug, Clone)]
pub(super) struct Orphan {
    pub(super) target_id: String,
    pub(super) dir: PathBuf,
    pub(super) disk_bytes: u64,
    pub(super) segments: u64,
    pub(super) age: Duration,
}

/// What a disk backlog's manifest says it was for ([`Target::name`] of its
/// routes), for log lines; its id when the manifest is missing or unreadable.
///
/// [`Target::name`]: crate::registry::Target::name
fn backlog_name(dir: &std::path::Path, id: &str) -> String {
    let routes = match spill_mod::Manifest::read(dir) {
        Ok(Some(m)) => m.routes,
        _ => return id.to_owned(),
    };
    fanout_proto::api::target_label(
        routes
            .iter()
            .map(|r| (r.export_id.as_str(), r.deployment_id.as_str())),
    )
    .unwrap_or_else(|| id.to_owned())
}

impl Inner {
    /// Reports the disk backlogs of targets that are not running (removed
    /// from the registry, or whose config, and so id, changed while the
    /// gateway was down) and deletes those older than the retention. Holds
    /// the target map so a target starting with that id cannot race.
    pub(super) fn sweep_orphans(&self, now: SystemTime) {
        let Some(data_dir) = &self.settings.data_dir else {
            return;
        };
        let Ok(targets) = self.targets.lock() else {
            return;
        };
        let retired: Vec<String> = self
            .retired
            .lock()
            .map(|r| r.iter().map(|h| h.id()).collect())
            .unwrap_or_default();
        let backlogs = match spill_mod::list_backlogs(data_dir) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "delivery: cannot list the disk backlogs");
                return;
            }
        };
        let Ok(mut orphans) = self.orphans.lock() else {
            return;
        };
        let mut kept = Vec::new();
        for b in backlogs {
            if targets.contains_key(&b.target_id) || retired.contains(&b.target_id) {
                continue;
            }
            // Retention counts from when the backlog became an orphan; one
            // that cannot be marked is kept (deleting it would fail too).
            let since = match b.orphaned_since {
                Some(t) => Ok(t),
                None if b.segments == 0 => Ok(now),
                None => spill_mod::mark_orphan(&b.dir, now),
            };
            let age = match since {
                Ok(t) => now.duration_since(t).unwrap_or(Duration::ZERO),
                Err(e) => {
                    tracing::warn!(exports = %backlog_name(&b.dir, &b.target_id), target_id = %b.target_id, error = %e, "delivery: cannot mark an orphan disk backlog; it is kept");
                    Duration::ZERO
                }
            };
            if b.segments == 0 || age >= self.settings.spill_retention {
                match std::fs::remove_dir_all(&b.dir) {
                    Ok(()) if b.segments > 0 => {
                        tracing::warn!(exports = %backlog_name(&b.dir, &b.target_id), target_id = %b.target_id, bytes = b.disk_bytes,
                        age_secs = age.as_secs(), "delivery: deleted the disk backlog of a target no longer in the registry (retention over)")
                    }
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(exports = %backlog_name(&b.dir, &b.target_id), target_id = %b.target_id, error = %e, "delivery: cannot delete an expired disk backlog")
                    }
                }
                continue;
            }
            if !orphans.iter().any(|o| o.target_id == b.target_id) {
                tracing::warn!(exports = %backlog_name(&b.dir, &b.target_id), target_id = %b.target_id, bytes = b.disk_bytes, age_secs = age.as_secs(),
                    retention_secs = self.settings.spill_retention.as_secs(),
                    "delivery: disk backlog of a target no longer in the registry; kept until the retention ends (it is resumed if the target comes back)");
            }
            kept.push(Orphan {
                target_id: b.target_id,
                dir: b.dir,
                disk_bytes: b.disk_bytes,
                segments: b.segments,
                age,
            });
        }
        *orphans = kept;
    }

    /// The orphan backlog that a starting target `t` resumes (docs/spill.md,
    /// "Config changes"): the only orphan whose manifest has exactly `t`'s
    /// routes. Orphans are queue directories of targets that are neither in
    /// `snapshot` nor running nor retired; `candidates` caches their
    /// manifests for one sync. Without a manifest (older layout) or with
    /// several matches nothing is resumed and the orphans stay orphans.
    fn successor_backlog(
        &self,
        t: &Target,
        snapshot: &Snapshot,
        running: &BTreeMap<String, Arc<TargetHandle>>,
        candidates: &mut Option<Vec<(Orphan, spill_mod::Manifest)>>,
    ) -> Option<Orphan> {
        let data_dir = self.settings.data_dir.as_ref()?;
        if t.routes.is_empty() {
            return None;
        }
        let candidates =
            candidates.get_or_insert_with(|| self.orphan_manifests(data_dir, snapshot, running));
        if candidates.is_empty() {
            return None;
        }
        let routes = t
            .routes
            .iter()
            .map(|r| spill_mod::ManifestRoute {
                deployment_id: r.deployment_id.clone(),
                export_id: r.export_id.clone(),
            })
            .collect();
        let routes = spill_mod::Manifest::new(&t.id.0, 0, routes).routes;
        let manifests: Vec<&spill_mod::Manifest> = candidates.iter().map(|(_, m)| m).collect();
        match spill_mod::successor(&routes, &manifests) {
            spill_mod::Successor::None => None,
            spill_mod::Successor::Unique(i) => {
                let (orphan, _) = candidates.swap_remove(i);
                if let Ok(mut o) = self.orphans.lock() {
                    o.retain(|x| x.target_id != orphan.target_id);
                }
                Some(orphan)
            }
            spill_mod::Successor::Ambiguous(n) => {
                tracing::warn!(exports = %t.name(), target_id = %t.id, backlogs = n, "delivery: several disk backlogs of earlier configs lead to exactly this target's routes; none is resumed (they stay orphans)");
                None
            }
        }
    }

    /// The target of `snapshot` that running target `h`, whose id is gone,
    /// becomes in place (docs/spill.md "Config changes"): the one with
    /// exactly `h`'s routes, if it is not running or retired under its own
    /// id and has no disk backlog of its own.
    fn live_successor(
        &self,
        h: &TargetHandle,
        snapshot: &Snapshot,
        running: &BTreeMap<String, Arc<TargetHandle>>,
    ) -> Option<Arc<Target>> {
        let current = h.target();
        if current.routes.is_empty() {
            return None;
        }
        let t = snapshot.targets().find(|t| t.routes == current.routes)?;
        if running.contains_key(&t.id.0) {
            return None;
        }
        if let Ok(r) = self.retired.lock() {
            if r.iter().any(|x| **x.id.load() == t.id.0) {
                return None;
            }
        }
        if let Some(data_dir) = &self.settings.data_dir {
            let dir = spill_mod::target_dir(data_dir, &t.id.0);
            let has_segments = std::fs::read_dir(&dir).is_ok_and(|mut d| {
                d.any(|e| {
                    e.is_ok_and(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .ends_with(spill_mod::SEGMENT_EXT)
                    })
                })
            });
            if has_segments {
                return None;
            }
        }
        Some(t.clone())
    }

    /// Orphan backlogs (see [`Inner::successor_backlog`]) that have a manifest.
    fn orphan_manifests(
        &self,
        data_dir: &Path,
        snapshot: &Snapshot,
        running: &BTreeMap<String, Arc<TargetHandle>>,
    ) -> Vec<(Orphan, spill_mod::Manifest)> {
        let retired: Vec<String> = self
            .retired
            .lock()
            .map(|r| r.iter().map(|h| h.id()).collect())
            .unwrap_or_default();
        let backlogs = match spill_mod::list_backlogs(data_dir) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "delivery: cannot list the disk backlogs");
                return Vec::new();
            }
        };
        backlogs
            .into_iter()
            .filter(|b| {
                b.segments > 0
                    && !running.contains_key(&b.target_id)
                    && !retired.contains(&b.target_id)
                    && snapshot.target(&b.target_id).is_none()
            })
            .filter_map(|b| {
                let m = match spill_mod::Manifest::read(&b.dir) {
                    Ok(m) => m?,
                    Err(e) => {
                        tracing::warn!(target_id = %b.target_id, error = %e, "delivery: unreadable manifest; this backlog stays an orphan");
                        return None;
                    }
                };
                let orphan = Orphan {
                    target_id: b.target_id,
                    dir: b.dir,
                    disk_bytes: b.disk_bytes,
                    segments: b.segments,
                    age: Duration::ZERO,
                };
                Some((orphan, m))
            })
            .collect()
    }

    /// Deletes the spill directory of a removed target that drained
    /// completely, unless a target with its id started meanwhile.
    pub(super) fn forget_drained(&self, h: &TargetHandle) {
        let Some(spill) = &h.spill else { return };
        let Ok(targets) = self.targets.lock() else {
            return;
        };
        if targets.contains_key(&h.id()) {
            return;
        }
        let q = lock_queue(&spill.queue);
        if q.stats().records == 0 {
            if let Err(e) = std::fs::remove_dir_all(q.dir()) {
                tracing::debug!(exports = %h.name(), target_id = %h.id, error = %e, "delivery: cannot delete the spill of a drained target");
            }
        }
    }

    pub(super) fn sync(self: &Arc<Self>, snapshot: &Arc<Snapshot>) {
        let Ok(_guard) = self.sync_lock.lock() else {
            return;
        };
        let current = self.plan.load();
        if current.version == snapshot.version() && current.version != 0 {
            return;
        }
        if current.version > snapshot.version() {
            return;
        }
        let now = Instant::now();
        let Ok(mut targets) = self.targets.lock() else {
            return;
        };
        let gone: Vec<String> = targets
            .keys()
            .filter(|id| snapshot.target(id).is_none())
            .cloned()
            .collect();
        for id in gone {
            if let Some(h) = targets.remove(&id) {
                if let Some(t) = self.live_successor(&h, snapshot, &targets) {
                    if h.reconfigure(t.clone(), &self.settings) {
                        tracing::info!(exports = %t.name(), from_target_id = %id, target_id = %t.id, endpoint = %h.endpoint,
                            "delivery: config of this export changed; its target goes on under the new id with its queue and backlog");
                        targets.insert(t.id.0.clone(), h);
                        continue;
                    }
                }
                tracing::info!(exports = %h.name(), target_id = %id, "delivery: target removed; draining");
                h.set_removed(Some(now));
                if let Ok(mut r) = self.retired.lock() {
                    r.push(h);
                }
            }
        }
        // Orphan backlogs with a manifest, listed when a new target needs them.
        let mut candidates = None;
        for t in snapshot.targets() {
            if let Some(h) = targets.get(&t.id.0) {
                h.set_target(t.clone());
                continue;
            }
            // A target that comes back while draining is revived.
            let revived = self.retired.lock().ok().and_then(|mut r| {
                let i = r.iter().position(|h| h.id() == t.id.0)?;
                Some(r.swap_remove(i))
            });
            let h = match revived {
                Some(h) => {
                    h.set_removed(None);
                    h.set_target(t.clone());
                    h
                }
                None => {
                    let adopt = self.successor_backlog(t, snapshot, &targets, &mut candidates);
                    let h = Arc::new(TargetHandle::new(t.clone(), &self.settings, adopt.as_ref()));
                    tracing::info!(exports = %h.name(), target_id = %h.id, endpoint = %h.endpoint, "delivery: target started");
                    tokio::spawn(run_target(self.clone(), h.clone()));
                    h
                }
            };
            targets.insert(t.id.0.clone(), h);
        }
        let plan = Plan::build_after(
            snapshot,
            &self.owners,
            |id| targets.get(id).map(|h| (h.clone(), h.lanes())),
            Some(&**current),
        );
        let old = self.plan.swap(Arc::new(plan));
        // Freed off this path (10,000 Deployments' variants take
        // milliseconds); the last reader may still hold it.
        std::thread::spawn(move || drop(old));
        metrics::gauge!(names::CONFIG_VERSION).set(snapshot.version() as f64);
        metrics::gauge!(names::CONFIG_HASH).set(config_hash(snapshot.registry()) as f64);
    }
}

/// `fanout_config_hash`: the first 48 bits of the SHA-256 of every object's
/// read form (secrets masked: a hash of a secret would let whoever reads
/// `/metrics` test guesses of it offline), in registry order. Gateways
/// holding the same registry show the same value, whatever their version
/// numbers; 48 bits are exact in a float.
pub fn config_hash(registry: &crate::registry::Registry) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for object in registry.objects() {
        h.update(
            crate::registry::model::masked(&object)
                .to_string()
                .as_bytes(),
        );
        h.update(b"\n");
    }
    let d = h.finalize();
    u64::from_be_bytes([0, 0, d[0], d[1], d[2], d[3], d[4], d[5]])
}
