//! One target: [`TargetHandle`] holds its config, metrics, queue state
//! machine ([`TargetCore`]) and its sender's wake-up; pushes chunks into
//! the core, takes a config change in place ([`TargetHandle::reconfigure`]),
//! pauses, and renders the TARGET object of docs/stats-api.md. Its disk spill
//! is in `target_spill.rs`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use fanout_proto::api;
use tokio::sync::Notify;

use super::reconcile::Orphan;
use super::target_spill::{write_manifest, Spill, ToDisk};
use super::{wall_ms, Settings};
use crate::deliver::queue::{Chunk, CoreConfig, TargetCore, LAGGING_BYTES};
use crate::deliver::route::Width;
use crate::deliver::spill::{self as spill_mod, lock_queue};
use crate::deliver::stats::{self, names, GlobalStats};
use crate::deliver::MemoryBudget;
use crate::registry::{Snapshot, Target};

/// How far behind a target is, in seconds: the age of its oldest data not
/// yet delivered, in memory or on disk (`disk_oldest_ms`: the spill's
/// oldest record, wall ms), 0 when it has none. `oldestQueuedSeconds` in
/// the API and `fanout_target_oldest_undelivered_seconds`.
pub(super) fn lag_seconds(core: &TargetCore, now: Instant, disk_oldest_ms: Option<u64>) -> f64 {
    let memory = core.oldest_queued(now).as_secs_f64();
    disk_oldest_ms.map_or(memory, |t| {
        let ms = wall_ms(SystemTime::now()).saturating_sub(t);
        memory.max(ms as f64 / 1000.0)
    })
}

pub(super) struct TargetMetrics {
    pub(super) samples: metrics::Counter,
    pub(super) bytes: metrics::Counter,
    pub(super) requests: metrics::Counter,
    pub(super) retries: metrics::Counter,
    pub(super) queue_full: metrics::Counter,
    pub(super) disk_full: metrics::Counter,
    pub(super) rejected: metrics::Counter,
    pub(super) queue_bytes: metrics::Gauge,
    pub(super) oldest: metrics::Gauge,
    pub(super) highest_sent: metrics::Gauge,
    pub(super) spill_bytes: metrics::Gauge,
    pub(super) spill_disk_full: metrics::Gauge,
    pub(super) in_flight: metrics::Gauge,
    pub(super) concurrency: metrics::Gauge,
    pub(super) latency: metrics::Histogram,
}

impl TargetMetrics {
    fn new(id: &str) -> TargetMetrics {
        let t = id.to_owned();
        TargetMetrics {
            samples: metrics::counter!(names::TARGET_SAMPLES, "target" => t.clone()),
            bytes: metrics::counter!(names::TARGET_BYTES, "target" => t.clone()),
            requests: metrics::counter!(names::TARGET_REQUESTS, "target" => t.clone()),
            retries: metrics::counter!(names::TARGET_RETRIES, "target" => t.clone()),
            queue_full: metrics::counter!(names::TARGET_DROPPED, "target" => t.clone(), "reason" => "queue_full"),
            disk_full: metrics::counter!(names::TARGET_DROPPED, "target" => t.clone(), "reason" => "disk_full"),
            rejected: metrics::counter!(names::TARGET_DROPPED, "target" => t.clone(), "reason" => "rejected"),
            queue_bytes: metrics::gauge!(names::TARGET_QUEUE_BYTES, "target" => t.clone()),
            oldest: metrics::gauge!(names::TARGET_OLDEST_UNDELIVERED, "target" => t.clone()),
            highest_sent: metrics::gauge!(names::TARGET_HIGHEST_SENT, "target" => t.clone()),
            spill_bytes: metrics::gauge!(names::TARGET_SPILL_BYTES, "target" => t.clone()),
            spill_disk_full: metrics::gauge!(names::TARGET_SPILL_DISK_FULL, "target" => t.clone()),
            in_flight: metrics::gauge!(names::TARGET_IN_FLIGHT, "target" => t.clone()),
            concurrency: metrics::gauge!(names::TARGET_CONCURRENCY, "target" => t.clone()),
            latency: metrics::histogram!(names::TARGET_LATENCY, "target" => t),
        }
    }
}

/// When a push copies its chunks out of their request's buffer: on a
/// lagging target ([`TargetCore::lagging`]) that is behind the other
/// targets its chunks went to. A dead target (failing), or one far behind
/// the others (its queue more than four times the shortest of theirs, plus
/// [`LAGGING_BYTES`]), would otherwise keep whole requests alive that the
/// others sent long ago. Targets that lag together (every target busy at
/// saturation) share each request until the last of them sends it:
/// copying would only add memory and CPU (on fanout-10 at saturation it
/// copied up to 1 GB, and doubled peak RSS, for nothing).
pub(super) struct Unpin<'a> {
    /// Where a copy's permit comes from.
    pub budget: &'a MemoryBudget,
    /// The shortest memory queue among the other targets of the pushed
    /// chunks' variants ([`TargetHandle::queued`]); `None` when they have
    /// none (a routed Deployment's target: its chunks are its own).
    pub peers: Option<u64>,
}

impl Unpin<'_> {
    /// Whether `core`'s chunks are to be copied.
    fn applies(&self, core: &TargetCore) -> bool {
        if core.failing() {
            return true;
        }
        core.lagging() && self.behind(core)
    }

    /// Whether `core` is behind the other targets of its chunks: its queue
    /// more than four times the shortest of theirs plus [`LAGGING_BYTES`],
    /// or no other target has them.
    fn behind(&self, core: &TargetCore) -> bool {
        self.peers
            .is_none_or(|floor| core.queue_bytes() > 4 * floor + LAGGING_BYTES)
    }

    /// Whether `core` is in step with the other targets of its chunks:
    /// sending (not paused, not failing) and not [`Self::behind`] them,
    /// while at least a quarter of the memory budget is free. Its shared
    /// chunks then stay queued past its bound
    /// ([`crate::deliver::queue::Overflow::keeps_shared`]): the others hold
    /// the same request buffers, so spilling would free no memory, only
    /// write each target's copy to disk and read it back (on fanout-10 at
    /// saturation it spilled in some runs and not others, the costly runs).
    /// The budget stays the bound: below a quarter free they spill as
    /// before, oldest first.
    pub(super) fn in_step(&self, core: &TargetCore) -> bool {
        !core.failing()
            && !core.paused()
            && !self.behind(core)
            && self.budget.available_bytes() >= self.budget.total_bytes() / 4
    }

    /// Copies `chunk` out of its request's buffer when that buffer is more
    /// than twice its size, with a permit of its own; unchanged when the
    /// budget has no room for the copy (it then keeps pinning).
    fn copy(&self, chunk: Chunk, failing: bool) -> Chunk {
        if failing {
            if let Some(c) = self.compact(&chunk) {
                return c;
            }
        }
        let len = chunk.records.len() as u64;
        let pinned = chunk.permit.as_ref().map_or(0, |p| p.bytes());
        if pinned <= 2 * len {
            return chunk;
        }
        match self.budget.try_acquire(len) {
            Ok(permit) => Chunk {
                records: Bytes::copy_from_slice(&chunk.records),
                permit: Some(Arc::new(permit)),
                // The same bytes as the other targets': it keeps their shared
                // compressed part (slots of parts, not the request buffer),
                // so a backlog is compressed once for every target that
                // fails together (each compressed its own copy: on
                // outage-30s the drain compressed three times the bytes).
                push: 0,
                ..chunk
            },
            Err(_) => chunk,
        }
    }

    /// A failing target keeps what it is pushed as it will go on the wire:
    /// the records' snappy part (shared with every other target given them,
    /// compressed by the first), with a permit of the part's size (shared
    /// with them too). Its backlog then takes a fraction of the memory
    /// (on outage-30s peak RSS 56 against 152 MiB), the compression is done
    /// while the endpoint is down (not when it comes back and the backlog
    /// drains), and what spills is written as it is. `None` when it is
    /// already compact or the budget has no room for the part.
    fn compact(&self, chunk: &Chunk) -> Option<Chunk> {
        if chunk.wire > 0 {
            return None;
        }
        let wire = u32::try_from(chunk.records.len()).ok().filter(|&n| n > 0)?;
        let part = chunk.part();
        // Targets that fail together hold the same part: one permit for all.
        let permit = match &chunk.packed {
            Some(p) => p.part_permit(self.budget, part.len() as u64)?,
            None => Arc::new(self.budget.try_acquire(part.len() as u64).ok()?),
        };
        Some(Chunk {
            records: part,
            wire,
            permit: Some(permit),
            packed: None,
            push: 0,
            owners: chunk.owners.clone(),
            ..*chunk
        })
    }
}

/// One target: its config, its queue state machine and its sender's wake-up.
pub struct TargetHandle {
    /// Its id; changes when its export's config changes live
    /// ([`TargetHandle::reconfigure`]), as do the endpoint and metrics.
    pub(super) id: ArcSwap<String>,
    pub(super) endpoint: ArcSwap<String>,
    pub(super) target: Mutex<Arc<Target>>,
    pub(super) core: Mutex<TargetCore>,
    pub(super) notify: Notify,
    /// Bytes queued in memory as of its last push, read without the lock
    /// by the pushes to the other targets of its variants ([`Unpin`]).
    pub(super) queued: AtomicU64,
    /// Its core's width ([`TargetCore::width`]) as of its last push or
    /// result, read without the lock by routing ([`Width`]).
    pub(super) width: AtomicU32,
    /// `durability: wal`: records go to disk as pushed and are sent from
    /// there, so a series keeps one lane (`shard % lanes`) and the width
    /// stays the lane count.
    fixed_width: bool,
    pub(super) removed_at: Mutex<Option<Instant>>,
    pub(super) metrics: ArcSwap<TargetMetrics>,
    pub(super) spill: Option<Spill>,
    /// A `protocol: V2` target's fallback to 1.0 (`deliver::protocol`).
    pub(super) wire: crate::deliver::protocol::WireState,
}

impl std::fmt::Debug for TargetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetHandle")
            .field("id", &self.id)
            .finish()
    }
}

impl TargetHandle {
    pub(super) fn new(
        target: Arc<Target>,
        settings: &Settings,
        adopt: Option<&Orphan>,
    ) -> TargetHandle {
        let d = &target.config.delivery;
        let mut config = CoreConfig {
            max_samples: d.max_samples_per_send.max(1),
            deadline: d.batch_send_deadline,
            max_concurrency: d.max_concurrency.max(1),
            max_backoff: d.max_backoff,
            queue_bytes: settings.target_queue_bytes,
            lanes: None,
            max_bytes: d.max_bytes_per_send,
            grow: true,
        };
        let seed = target.id.0.bytes().fold(0u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let opened = Spill::open(&target, config.lanes(), adopt, settings);
        if let Some((_, _, _, lanes)) = &opened {
            if *lanes != config.lanes() {
                config.lanes = Some(*lanes);
            }
        }
        let mut core = TargetCore::new(target.id.0.clone(), config, seed);
        let fixed_width = settings.durability == super::Durability::Wal;
        let lanes = core.lanes();
        let spill = opened.map(|(s, written, queued, _)| {
            if queued > 0 {
                // Whatever its lane key: `set_recovered` holds new data back
                // until the backlog is delivered.
                core.set_recovered(0, written);
            }
            s
        });
        TargetHandle {
            id: ArcSwap::from_pointee(target.id.0.clone()),
            endpoint: ArcSwap::from_pointee(stats::display_endpoint(&target.config.endpoint)),
            core: Mutex::new(core),
            spill,
            metrics: ArcSwap::from_pointee(TargetMetrics::new(&target.id.0)),
            target: Mutex::new(target),
            notify: Notify::new(),
            queued: AtomicU64::new(0),
            width: AtomicU32::new(if fixed_width { lanes } else { 1 }),
            fixed_width,
            removed_at: Mutex::new(None),
            wire: Default::default(),
        }
    }

    /// Target id.
    pub fn id(&self) -> String {
        self.id.load().as_ref().clone()
    }

    /// Its endpoint as shown (query values masked).
    pub fn endpoint(&self) -> String {
        self.endpoint.load().as_ref().clone()
    }

    /// Its exports and Deployment count ([`Target::name`]), for log lines.
    pub fn name(&self) -> String {
        self.target().name()
    }

    /// A live config change of the same export (docs/spill.md "Config
    /// changes"): this handle goes on as target `t` (new id, endpoint, auth,
    /// headers, delivery options) with its queue, lanes, disk backlog and
    /// in-flight attempts; every attempt from now on uses the new config.
    /// Its spill directory is renamed to `t`'s (which must hold no records)
    /// under the queue lock, after the sync round in progress (the round
    /// lock, then the queue lock: `spill/commit.rs`); the parent directory
    /// is fsynced and the manifest rewritten after both are released.
    /// Returns false, changing nothing, when the directory cannot be moved,
    /// or when the disk queue is broken: a reopen may be reading the
    /// directory at its current path without the queue lock
    /// ([`Self::recover_spill`]), so it must not move under it.
    pub(super) fn reconfigure(&self, t: Arc<Target>, settings: &Settings) -> bool {
        let new_id = t.id.0.clone();
        let mut moved = None;
        if let (Some(spill), Some(data_dir)) = (&self.spill, &settings.data_dir) {
            let to = spill_mod::target_dir(data_dir, &new_id);
            let rounds = spill.commit.hold_rounds();
            let mut q = lock_queue(&spill.queue);
            if q.is_broken() {
                tracing::warn!(exports = %self.name(), target_id = %self.id, new_target_id = %new_id,
                    "delivery: the disk queue is broken (being reopened); the old target drains in parallel instead of going on under the new config");
                return false;
            }
            // A deferred queue has no directory yet: only its path moves.
            let on_disk = !q.is_deferred();
            if on_disk {
                let from = q.dir().to_path_buf();
                if let Err(e) = spill_mod::move_dir(&from, &to) {
                    tracing::warn!(exports = %self.name(), target_id = %self.id, new_target_id = %new_id, error = %e,
                        "delivery: cannot move the disk queue to the new config's target; the old target drains in parallel instead");
                    return false;
                }
            }
            q.moved_to(&to);
            drop(q);
            drop(rounds);
            moved = Some((spill, to, on_disk));
        }
        // A new config gets 2.0 tried again (protocol.rs).
        self.wire.reset();
        // The target first: the sender reads it for every attempt, so a
        // batch polled from here on goes to the new endpoint.
        if let Ok(mut cur) = self.target.lock() {
            *cur = t.clone();
        }
        self.endpoint
            .store(Arc::new(stats::display_endpoint(&t.config.endpoint)));
        let d = &t.config.delivery;
        let config = CoreConfig {
            max_samples: d.max_samples_per_send.max(1),
            deadline: d.batch_send_deadline,
            max_concurrency: d.max_concurrency.max(1),
            max_backoff: d.max_backoff,
            queue_bytes: settings.target_queue_bytes,
            lanes: None,
            max_bytes: d.max_bytes_per_send,
            grow: true,
        };
        if let Ok(mut core) = self.core.lock() {
            core.reconfigure(new_id.clone(), config);
        }
        let old = self.metrics.load();
        for g in [
            &old.queue_bytes,
            &old.oldest,
            &old.spill_bytes,
            &old.spill_disk_full,
            &old.in_flight,
            &old.concurrency,
        ] {
            g.set(0.0);
        }
        self.metrics.store(Arc::new(TargetMetrics::new(&new_id)));
        self.id.store(Arc::new(new_id.clone()));
        if let Some((spill, to, on_disk)) = moved {
            if on_disk {
                spill_mod::sync_parent(&to);
            }
            write_manifest(
                &new_id,
                self.lanes(),
                self.lane_key(),
                &t.routes,
                &spill.queue,
            );
        }
        self.notify.notify_one();
        true
    }

    /// Takes the registry's current view of this target (same id, so same
    /// config; its routes may differ) and keeps the spill manifest's routes
    /// current, for a successor after a config change.
    pub(super) fn set_target(&self, t: Arc<Target>) {
        let routes_changed = match self.target.lock() {
            // The same `Arc` (unchanged since the last version: the
            // snapshot reuses it) is nothing to do.
            Ok(cur) if Arc::ptr_eq(&cur, &t) => false,
            Ok(mut cur) => {
                let changed = cur.routes != t.routes;
                *cur = t.clone();
                changed
            }
            Err(_) => false,
        };
        if let (true, Some(spill)) = (routes_changed, &self.spill) {
            write_manifest(
                &self.id(),
                self.lanes(),
                spill.lane_key,
                &t.routes,
                &spill.queue,
            );
        }
    }

    /// The lane key its spill manifest names (`Spill::lane_key`).
    pub(super) fn lane_key(&self) -> spill_mod::LaneKey {
        self.spill
            .as_ref()
            .map_or(spill_mod::LaneKey::CURRENT, |s| s.lane_key)
    }

    pub(super) fn lanes(&self) -> u32 {
        self.core.lock().map_or(1, |c| c.lanes())
    }

    pub(super) fn target(&self) -> Arc<Target> {
        self.target
            .lock()
            .map(|t| t.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    pub(super) fn removed_at(&self) -> Option<Instant> {
        self.removed_at.lock().ok().and_then(|r| *r)
    }

    pub(super) fn set_removed(&self, at: Option<Instant>) {
        if let Ok(mut r) = self.removed_at.lock() {
            *r = at;
        }
        if let Ok(mut c) = self.core.lock() {
            c.set_flush(at.is_some());
        }
        self.notify.notify_one();
    }

    pub(super) fn push(
        &self,
        shard: u32,
        chunk: Chunk,
        stats: &GlobalStats,
        now: Instant,
        wall: u64,
    ) {
        self.push_all(
            u32::MAX,
            std::iter::once((shard, chunk)),
            None,
            stats,
            now,
            wall,
        );
    }

    /// Queues `chunks` (shard, chunk) of one request, cut into at least
    /// `shards` shards, under one lock and wakes the sender once. A chunk that pins a request buffer much larger than itself is
    /// copied out first when `unpin` says so (see [`Unpin`]), so the
    /// backlog holds only its own bytes. A handle whose sender already
    /// stopped (removed for good) takes nothing: the samples are counted as
    /// dropped (`removed`).
    pub(super) fn push_all(
        &self,
        shards: u32,
        chunks: impl Iterator<Item = (u32, Chunk)>,
        unpin: Option<Unpin<'_>>,
        stats: &GlobalStats,
        now: Instant,
        wall: u64,
    ) {
        let mut to_disk = ToDisk::new(self.spill.as_ref(), now, wall);
        let mut removed = 0u64;
        let mut wake = true;
        let dropped = match self.core.lock() {
            Ok(mut core) => {
                let before = core.counters().dropped_queue_full;
                if self.fixed_width {
                    core.begin_push();
                } else {
                    core.begin_cut(shards, now);
                }
                // Once per push: what it depends on hardly moves within one.
                to_disk.keep_shared = unpin.as_ref().is_some_and(|u| u.in_step(&core));
                for (shard, chunk) in chunks {
                    if core.closed() {
                        removed += u64::from(chunk.samples);
                        continue;
                    }
                    let chunk = match &unpin {
                        Some(u) if u.applies(&core) => u.copy(chunk, core.failing()),
                        _ => chunk,
                    };
                    if self.fixed_width {
                        core.push(shard, chunk, &mut to_disk);
                    } else {
                        core.push_cut(shard, chunk, &mut to_disk);
                    }
                }
                self.queued.store(core.queue_bytes(), Ordering::Relaxed);
                if !self.fixed_width {
                    self.width.store(core.width(now), Ordering::Relaxed);
                }
                wake = core.can_send();
                core.counters().dropped_queue_full - before
            }
            Err(_) => chunks.map(|(_, c)| u64::from(c.samples)).sum(),
        };
        if dropped > 0 {
            stats.add_queue_full(dropped);
            self.metrics.load().queue_full.increment(dropped);
        }
        if removed > 0 {
            stats.abandoned.fetch_add(removed, Ordering::Relaxed);
            metrics::counter!(names::DROPPED, "reason" => "removed").increment(removed);
        }
        self.count_disk(&to_disk, stats);
        if wake {
            self.notify.notify_one();
        }
    }

    /// Pauses or resumes sending.
    pub fn set_paused(&self, paused: bool) {
        if let Ok(mut c) = self.core.lock() {
            c.set_paused(paused);
        }
        self.notify.notify_one();
    }

    /// Its status: the TARGET object of docs/stats-api.md.
    pub fn status(&self, snapshot: &Snapshot) -> api::Target {
        let target = self.target();
        let now = Instant::now();
        let (spill_bytes, oldest_ms, spill_state) = self.spill_stats();
        let disk_full = self
            .spill
            .as_ref()
            .map_or(0, |s| s.disk_full.load(Ordering::Relaxed));
        let Ok(core) = self.core.lock() else {
            return api::Target {
                id: self.id().to_string(),
                endpoint: self.endpoint.load().to_string(),
                state: "failing".into(),
                ..api::Target::default()
            };
        };
        let c = core.counters();
        let h = core.latency_us();
        let q = |p: f64| match h {
            Some(h) if !h.is_empty() => h.value_at_quantile(p) as f64 / 1000.0,
            _ => 0.0,
        };
        let feeds = target
            .routes
            .iter()
            .map(|r| api::Feed {
                export_id: r.export_id.clone(),
                deployment_id: r.deployment_id.clone(),
                cluster_id: snapshot
                    .deployment_cluster_id(&r.deployment_id)
                    .unwrap_or("")
                    .to_owned(),
            })
            .collect();
        api::Target {
            id: self.id().to_string(),
            endpoint: self.endpoint.load().to_string(),
            protocol: self.wire.describe(target.config.delivery.protocol),
            state: match core.state(now) {
                // Nothing ever came for it: "healthy" would claim it delivers.
                "healthy" if c.requests_sent == 0 && c.failures.is_empty() && core.is_idle() => {
                    "idle"
                }
                other => other,
            }
            .to_owned(),
            paused: core.paused(),
            queue_bytes: core.queue_bytes(),
            queue_samples: core.queue_samples(),
            spill_bytes,
            spill_state: spill_state.to_owned(),
            oldest_queued_seconds: lag_seconds(&core, now, oldest_ms),
            samples_sent: c.samples_sent,
            bytes_sent: c.bytes_sent,
            requests_sent: c.requests_sent,
            retries: c.retries,
            probes: c.probes,
            failures: c.failures.clone(),
            dropped: [
                ("rejected".to_owned(), c.dropped_rejected),
                ("queue_full".to_owned(), c.dropped_queue_full),
                ("disk_full".to_owned(), disk_full),
            ]
            .into(),
            last_error: core.last_error().map(|e| api::LastError {
                time: stats::rfc3339(e.time),
                status: e.status,
                message: e.message.clone(),
            }),
            concurrency: core.concurrency(),
            in_flight: core.in_flight(),
            latency_ms: api::Latency {
                p50: q(0.5),
                p90: q(0.9),
                p99: q(0.99),
                max: q(1.0),
            },
            feeds,
        }
    }
}

/// Routing cuts a target set's chunks for the widest of its targets.
impl Width for Arc<TargetHandle> {
    fn width(&self) -> u32 {
        self.width.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::queue::{ChunkOwners, DropOldest};

    /// A chunk of `len` bytes that pins a request buffer of `request` bytes
    /// (its permit taken from `requests`).
    fn chunk(len: usize, requests: &MemoryBudget, request: u64) -> Chunk {
        Chunk {
            records: Bytes::from(vec![0u8; len]),
            samples: 1,
            series: 1,
            enqueued: Instant::now(),
            permit: Some(Arc::new(requests.try_acquire(request).unwrap())),
            packed: None,
            push: 0,
            owners: ChunkOwners::One(0),
            wire: 0,
            newest: 1,
        }
    }

    /// `n` encoded series of one sample each, as a request's records.
    fn records(n: u32) -> Bytes {
        let req = fanout_proto::v1::WriteRequest {
            timeseries: (0..n)
                .map(|i| fanout_proto::v1::TimeSeries {
                    labels: vec![fanout_proto::v1::Label {
                        name: "__name__".into(),
                        value: format!("airflow_task_duration_{}", i % 7),
                    }],
                    samples: vec![fanout_proto::v1::Sample {
                        value: f64::from(i),
                        timestamp: 1_700_000_000_000,
                    }],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        Bytes::from(prost::Message::encode_to_vec(&req))
    }

    #[test]
    fn deliver_target_a_lagging_target_copies_its_chunks_only_when_behind_its_peers() {
        let config = CoreConfig {
            max_samples: 2000,
            deadline: std::time::Duration::from_secs(1),
            max_concurrency: 1,
            max_backoff: std::time::Duration::from_secs(5),
            queue_bytes: 64 << 20,
            lanes: None,
            max_bytes: None,
            grow: true,
        };
        let requests = MemoryBudget::new(1 << 30);
        let mut core = TargetCore::new("t", config, 1);
        let budget = MemoryBudget::new(1 << 30);
        let unpin = |peers| Unpin {
            budget: &budget,
            peers,
        };
        // 1 MiB queued: not lagging, whatever the others hold.
        core.push(0, chunk(1 << 20, &requests, 16 << 20), &mut DropOldest);
        assert!(!unpin(None).applies(&core));
        assert!(!unpin(Some(0)).applies(&core));
        // 40 MiB queued, past half its 64 MiB bound: lagging.
        core.push(0, chunk(39 << 20, &requests, 40 << 20), &mut DropOldest);
        assert!(core.lagging());
        // Its chunks are its own (no other target has them): copy.
        assert!(unpin(None).applies(&core));
        // The others sent theirs long ago: copy.
        assert!(unpin(Some(1 << 20)).applies(&core));
        // The others lag as much (every target busy at saturation): share.
        assert!(!unpin(Some(30 << 20)).applies(&core));

        // In step with the others, its shared chunks stay past its bound;
        // behind them, without them, or failing, they go out as before.
        assert!(unpin(Some(30 << 20)).in_step(&core));
        assert!(!unpin(Some(1 << 20)).in_step(&core));
        assert!(!unpin(None).in_step(&core));
        // ... and only while a quarter of the budget is free.
        let held = budget.try_acquire(800 << 20).unwrap();
        assert!(!unpin(Some(30 << 20)).in_step(&core));
        drop(held);
        assert!(unpin(Some(30 << 20)).in_step(&core));
        // A paused target is not sending: what it holds waits for as long.
        core.set_paused(true);
        assert!(!unpin(Some(30 << 20)).in_step(&core));
        core.set_paused(false);
        let later = Instant::now() + std::time::Duration::from_secs(2);
        let d = core.poll(later).expect("a batch after the deadline");
        core.on_result(
            d.lane,
            d.batch,
            &crate::deliver::policy::SendResult::Timeout("no response within 1s".into()),
            std::time::Duration::from_millis(1),
            later,
            SystemTime::now(),
        );
        assert!(core.failing());
        assert!(!unpin(Some(30 << 20)).in_step(&core));

        // A copy holds only its own bytes, with a permit of its own; a chunk
        // that is most of its buffer is left as it is.
        let small = unpin(None).copy(chunk(1 << 10, &requests, 1 << 20), false);
        assert_eq!(small.permit.as_ref().map(|p| p.bytes()), Some(1 << 10));
        let large = unpin(None).copy(chunk(900 << 10, &requests, 1 << 20), false);
        assert_eq!(large.permit.as_ref().map(|p| p.bytes()), Some(1 << 20));
        // Failing, it keeps the compressed part (a permit of its size),
        // even of a chunk that is all of its buffer; sent, the part is the
        // body's only part.
        let records = records(300);
        let mut c = chunk(0, &requests, records.len() as u64);
        c.records = records.clone();
        let compact = unpin(None).copy(c, true);
        assert_eq!(compact.wire as usize, records.len());
        assert!(
            compact.records.len() < records.len() / 4,
            "{}",
            compact.records.len()
        );
        let held = compact.permit.as_ref().map_or(0, |p| p.bytes());
        assert!(
            held >= compact.records.len() as u64 && held < records.len() as u64 / 2,
            "its permit: {held}"
        );
        // Targets that fail together share the part and its permit.
        let slots = crate::deliver::queue::Packed::slots(1);
        let shared = |requests: &MemoryBudget| {
            let mut c = chunk(0, requests, records.len() as u64);
            c.records = records.clone();
            c.packed = Some(crate::deliver::queue::Packed::new(slots.clone(), 0));
            unpin(None).copy(c, true)
        };
        let (a, b) = (shared(&requests), shared(&requests));
        assert!(Arc::ptr_eq(
            a.permit.as_ref().unwrap(),
            b.permit.as_ref().unwrap()
        ));
        assert_eq!(a.records, b.records);
        assert_eq!(
            fanout_proto::snappy::decompress_part(&compact.part(), records.len()).unwrap(),
            records
        );
    }
}
