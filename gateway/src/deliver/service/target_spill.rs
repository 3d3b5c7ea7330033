//! A target's disk spill.
//!
//! With [`Settings::data_dir`] every target has a [`DiskQueue`] under
//! `<data-dir>/spill/<target-id>/` (budget: the target's `diskBudget`) behind
//! its core's [`Overflow`] seam: chunks beyond the memory bound are appended
//! there (a `write(2)` under the target lock, never a wait on the target) and
//! read back by the sender task once the target takes data again (order:
//! see `queue/mod.rs`). Drops for the disk budget are `disk_full`. A disk error
//! never stops the gateway: the chunk is dropped as `queue_full`, counted in
//! `spill_errors`, and logged; the next overflow tries the disk again. A
//! group-commit thread per queue fsyncs every [`Settings::flush_interval`].
//! A failed sync, a failed read back (nothing is skipped), or a failed open
//! at target start leaves the queue broken:
//! no new records (`queue_full`; 503 for `durability: wal`) until the sender
//! task reopens it, 1 s after it sees it broken and then doubling up to 30 s
//! (`TargetHandle::recover_spill`, on a blocking thread, without the queue
//! lock). Seqs, acks and the read cursor survive the reopen, so the core's
//! `disk_through` / `read_through` stay valid; records lost on disk are
//! counted in `spill_errors` and no lane waits for them.
//!
//! [`Settings::data_dir`]: super::Settings::data_dir
//! [`Settings::flush_interval`]: super::Settings::flush_interval

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use super::reconcile::Orphan;
use super::target::TargetHandle;
use super::{wall_ms, Settings};
use crate::deliver::queue::{Chunk, DiskChunk, Overflow};
use crate::deliver::spill::{
    self as spill_mod, lock_queue, DiskQueue, DiskQueueConfig, GroupCommit, Record, ReopenBackoff,
};
use crate::deliver::stats::GlobalStats;
use crate::registry::{routes_name, Target, TargetRoute};

/// A target's disk queue and its sync thread.
pub(super) struct Spill {
    pub(super) queue: Arc<Mutex<DiskQueue>>,
    /// Its sync thread: fsyncs every flush interval, and on demand for
    /// `durability: wal`.
    pub(super) commit: GroupCommit,
    /// Highest seq acked to the queue.
    acked: AtomicU64,
    /// Samples dropped for the disk budget.
    pub(super) disk_full: AtomicU64,
    /// Last spill error logged (ms since start), to log at most every 10s.
    last_warn_ms: AtomicU64,
    /// The disk was found full (logged once when it happens, once when an
    /// append works again).
    full: AtomicBool,
    /// When to try reopening the queue while it is broken.
    pub(super) reopen: Mutex<ReopenBackoff>,
    /// The lane key its manifest names: the recovered backlog's while this
    /// process runs (records queued since sit behind it, so a restart
    /// before it drained must still deliver all of them first), else the
    /// current one.
    pub(super) lane_key: spill_mod::LaneKey,
}

impl Spill {
    /// Opens the queue of `target` and starts its sync thread; a failure is
    /// logged and the target runs memory-only. With `adopt` (the backlog of
    /// its predecessor, see [`Inner::successor_backlog`]) that directory
    /// becomes the target's queue first, unless the target's own queue holds
    /// records. Returns the spill, the written seq, the records recovered and
    /// the lane count to use: the one the backlog was queued with (from its
    /// manifest) when records were recovered, else `lanes`.
    pub(super) fn open(
        target: &Target,
        lanes: u32,
        adopt: Option<&Orphan>,
        settings: &Settings,
    ) -> Option<(Spill, u64, u64, u32)> {
        let id = target.id.0.as_str();
        let name = target.name();
        let budget = target.config.delivery.disk_budget;
        let data_dir = settings.data_dir.as_ref()?;
        let dir = spill_mod::target_dir(data_dir, id);
        let cfg = DiskQueueConfig {
            budget_bytes: budget.max(1 << 20),
            ..DiskQueueConfig::default()
        };
        let adopted = adopt.filter(|from| adopt_backlog(id, &name, from, &dir, cfg));
        let (q, rec) = match DiskQueue::open_deferred(&dir, cfg) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(exports = %name, target_id = %id, error = %e, "delivery: cannot open the disk spill; this target keeps its backlog in memory only until reopening it works (retried after 1s, doubling up to 30s)");
                (
                    DiskQueue::unopened(&dir, cfg, &e),
                    spill_mod::Recovery::default(),
                )
            }
        };
        let opened = q.is_opened();
        if let Some(from) = adopted {
            tracing::info!(exports = %name, target_id = %id, from_target_id = %from.target_id, records = rec.records,
                bytes = rec.bytes, "delivery: config of this export changed; resuming the disk backlog of its previous target");
        } else if rec.records > 0 || rec.truncated_bytes > 0 || rec.ledger_reset {
            tracing::info!(exports = %name, target_id = %id, records = rec.records, bytes = rec.bytes,
                truncated_bytes = rec.truncated_bytes, corrupt_records = rec.corrupt_records_dropped,
                "delivery: resuming the disk backlog of this target");
        }
        // Queued lane tags keep per-series order only under the lane count
        // they were written with. A queue whose open failed may hold records
        // all the same (read when it reopens): it takes the manifest's lane
        // count too, and the manifest is only rewritten once the queue opened
        // (`recover_spill`), so a failed open never loses that count.
        // Records whose lanes another lane key picked (an older release)
        // are delivered before any new data goes (`Spill::lane_key`).
        let (lanes, lane_key) = match spill_mod::Manifest::read(&dir) {
            Ok(Some(m)) if (rec.records > 0 || !opened) && m.lanes > 0 => (m.lanes, m.lane_key),
            Ok(_) => (lanes, spill_mod::LaneKey::CURRENT),
            Err(e) => {
                tracing::warn!(exports = %name, target_id = %id, error = %e, "delivery: unreadable spill manifest; it is rewritten once the queue is open");
                (lanes, spill_mod::LaneKey::Labels)
            }
        };
        if let Err(e) = spill_mod::clear_orphan_mark(&dir) {
            tracing::warn!(exports = %name, target_id = %id, error = %e, "delivery: cannot clear the orphan mark of this target's disk backlog");
        }
        let written = q.written_seq();
        let queued = rec.records;
        let queue = Arc::new(Mutex::new(q));
        if opened {
            write_manifest(id, lanes, lane_key, &target.routes, &queue);
        }
        let commit = GroupCommit::start(queue.clone(), Some(settings.flush_interval));
        Some((
            Spill {
                queue,
                commit,
                acked: AtomicU64::new(0),
                disk_full: AtomicU64::new(0),
                last_warn_ms: AtomicU64::new(0),
                full: AtomicBool::new(false),
                reopen: Mutex::new(ReopenBackoff::default()),
                lane_key,
            },
            written,
            queued,
            lanes,
        ))
    }
}

/// Makes `from` (an orphan backlog) the queue `dir` of target `id`, unless
/// `dir` holds records of its own (then the orphan stays an orphan). Returns
/// whether it did.
fn adopt_backlog(id: &str, name: &str, from: &Orphan, dir: &Path, cfg: DiskQueueConfig) -> bool {
    if dir.exists() {
        let own = DiskQueue::open(dir, cfg).and_then(|(q, rec)| q.close().map(|()| rec.records));
        match own {
            Ok(0) => {}
            Ok(records) => {
                tracing::warn!(exports = %name, target_id = %id, from_target_id = %from.target_id, records,
                    "delivery: this target has a disk backlog of its own; the backlog of its previous config stays an orphan");
                return false;
            }
            Err(e) => {
                tracing::warn!(exports = %name, target_id = %id, error = %e, "delivery: cannot check this target's own disk backlog; the backlog of its previous config stays an orphan");
                return false;
            }
        }
    }
    match spill_mod::take_over(&from.dir, dir) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(exports = %name, target_id = %id, from_target_id = %from.target_id, error = %e,
                "delivery: cannot move the backlog of this export's previous config; it stays an orphan");
            false
        }
    }
}

/// Writes the manifest of a queue (routes and lanes; no secret) into its
/// directory, without holding the queue lock, or has a deferred queue
/// ([`DiskQueue::open_deferred`]) write it when it makes its directory; a
/// failure only costs the adoption of this backlog after a config change.
pub(super) fn write_manifest(
    id: &str,
    lanes: u32,
    lane_key: spill_mod::LaneKey,
    routes: &[TargetRoute],
    queue: &Mutex<DiskQueue>,
) {
    let list = routes
        .iter()
        .map(|r| spill_mod::ManifestRoute {
            deployment_id: r.deployment_id.clone(),
            export_id: r.export_id.clone(),
        })
        .collect();
    let mut manifest = spill_mod::Manifest::new(id, lanes, list);
    manifest.lane_key = lane_key;
    let (manifest, dir) = {
        let mut q = lock_queue(queue);
        match q.defer_manifest(manifest) {
            Some(m) => (m, q.dir().to_path_buf()),
            None => return,
        }
    };
    if let Err(e) = manifest.write(&dir) {
        let name = routes_name(routes);
        tracing::warn!(exports = name.as_deref().unwrap_or(id), target_id = %id, error = %e, "delivery: cannot write the spill manifest; this backlog cannot follow a config change across a restart");
    }
}

/// The [`Overflow`] of one push: appends to the disk queue.
pub(super) struct ToDisk<'a> {
    pub(super) spill: Option<&'a Spill>,
    /// Wall-clock ms of `now`, to stamp records.
    pub(super) wall_ms: u64,
    pub(super) now: Instant,
    pub(super) disk_full: u64,
    /// Records appended.
    pub(super) appended: u32,
    pub(super) error: Option<spill_mod::SpillError>,
    /// What [`Overflow::keeps_shared`] answers.
    pub(super) keep_shared: bool,
}

impl<'a> ToDisk<'a> {
    /// Appends to `spill` (none: overflow is dropped), stamped `now` /
    /// `wall_ms`; shared chunks are not kept past the bound unless
    /// [`Self::keep_shared`] is set.
    pub(super) fn new(spill: Option<&'a Spill>, now: Instant, wall_ms: u64) -> ToDisk<'a> {
        ToDisk {
            spill,
            wall_ms,
            now,
            disk_full: 0,
            appended: 0,
            error: None,
            keep_shared: false,
        }
    }
}

/// A spill record's tag holds its lane in the low 32 bits. With [`PART`]
/// set, its body is not the records but their snappy part (what goes on the
/// wire, compressed once for every target given them) and bits 32..63 are
/// the records' length; read back, it is sent as it is. Releases before
/// 2026-12-07 wrote the records and the lane alone (tags below 64), which
/// are read as before.
const PART: u64 = 1 << 63;
/// The largest records kept as a part (31 bits of the tag); larger ones are
/// written as records.
const MAX_PART_LEN: u32 = (1 << 31) - 1;

/// The tag of a record of `lane` kept as the part of `len` bytes of records.
fn part_tag(lane: u32, len: u32) -> u64 {
    PART | (u64::from(len) << 32) | u64::from(lane)
}

/// The lane tag of a record's `tag`.
fn lane_tag(tag: u64) -> u64 {
    if tag & PART != 0 {
        tag & u64::from(u32::MAX)
    } else {
        tag
    }
}

/// The length of the records a record's body is the part of, or 0 when the
/// body is the records.
fn part_len(tag: u64) -> u32 {
    if tag & PART != 0 {
        ((tag & !PART) >> 32) as u32
    } else {
        0
    }
}

impl Overflow for ToDisk<'_> {
    fn keeps_shared(&self) -> bool {
        self.keep_shared
    }

    fn overflow(&mut self, lane: u32, chunk: Chunk) -> Option<u64> {
        let spill = self.spill?;
        if self.error.is_some() {
            return None;
        }
        let age = self
            .now
            .saturating_duration_since(chunk.enqueued)
            .as_millis() as u64;
        // What goes on the wire, not the records: compressed once for every
        // target given these very records (the shared slot), never again
        // when read back (`Chunk::wire`).
        let (tag, body) = match u32::try_from(chunk.raw_len()) {
            Ok(len) if len > 0 && len <= MAX_PART_LEN => (part_tag(lane, len), chunk.part()),
            _ => (u64::from(lane), chunk.records),
        };
        let record = Record {
            samples: chunk.samples,
            enqueued_ms: self.wall_ms.saturating_sub(age),
            tag,
            body,
        };
        match lock_queue(&spill.queue).append(&record) {
            Ok(out) => {
                self.disk_full += out.dropped_samples;
                self.appended += 1;
                Some(out.seq)
            }
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

impl TargetHandle {
    /// `durability: wal`: appends `chunk` to the disk queue and returns its
    /// seq; the lane then sends it from disk, in seq order with everything
    /// else of the lane. On a disk error (or without a spill) the chunk is
    /// queued in memory and `None` says it is not durable.
    pub(super) fn push_wal(
        &self,
        shard: u32,
        chunk: Chunk,
        stats: &GlobalStats,
        now: Instant,
        wall: u64,
    ) -> Option<u64> {
        let Some(spill) = &self.spill else {
            self.push(shard, chunk, stats, now, wall);
            return None;
        };
        let mut to_disk = ToDisk::new(Some(spill), now, wall);
        let seq = match self.core.lock() {
            Ok(mut core) => {
                let lane = shard % core.lanes();
                let samples = chunk.samples;
                match to_disk.overflow(lane, chunk.clone()) {
                    Some(seq) => {
                        core.note_spilled(lane, seq, samples);
                        Some(seq)
                    }
                    None => None,
                }
            }
            Err(_) => None,
        };
        self.count_disk(&to_disk, stats);
        match seq {
            Some(seq) => {
                self.notify.notify_one();
                Some(seq)
            }
            None => {
                self.push(shard, chunk, stats, now, wall);
                None
            }
        }
    }

    /// Counts what one overflow did: `disk_full` drops and spill errors.
    pub(super) fn count_disk(&self, to_disk: &ToDisk<'_>, stats: &GlobalStats) {
        let Some(spill) = &self.spill else { return };
        if to_disk.disk_full > 0 {
            spill
                .disk_full
                .fetch_add(to_disk.disk_full, Ordering::Relaxed);
            stats.add_disk_full(to_disk.disk_full);
            self.metrics.load().disk_full.increment(to_disk.disk_full);
        }
        if let Some(e) = &to_disk.error {
            if e.is_out_of_space() && !spill.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(exports = %self.name(), target_id = %self.id, error = %e, "delivery: the disk spill is full; until space is back, data beyond the memory queue is dropped (queue_full) and with durability wal requests for this target are answered 503; delivered segments are deleted as the target drains");
            }
            stats.add_spill_error();
            let now_ms = wall_ms(SystemTime::now());
            let last = spill.last_warn_ms.load(Ordering::Relaxed);
            if now_ms.saturating_sub(last) >= 10_000 {
                spill.last_warn_ms.store(now_ms, Ordering::Relaxed);
                tracing::warn!(exports = %self.name(), target_id = %self.id, error = %e, "delivery: disk spill failed; data beyond the memory queue is dropped (queue_full) until it works again");
            }
        }
    }

    /// When the disk queue is broken (a failed fsync, or its open failed at
    /// start), when to try reopening it ([`ReopenBackoff`]: 1s after it is
    /// first seen broken, then doubling up to 30s, also across a reopen that
    /// breaks again soon); `None` while it works.
    pub(super) fn spill_reopen_at(&self, now: Instant) -> Option<Instant> {
        let spill = self.spill.as_ref()?;
        let mut backoff = spill.reopen.lock().unwrap_or_else(|p| p.into_inner());
        if !lock_queue(&spill.queue).is_broken() {
            return None;
        }
        if backoff.next_at().is_none() {
            backoff.due(now);
        }
        backoff.next_at()
    }

    /// Tries to reopen the broken disk queue (blocking: run it off the
    /// runtime). Recovery reads the directory without the queue lock (a
    /// broken queue takes no appends, and no sync round runs meanwhile), so
    /// ingest keeps overflowing to `queue_full` meanwhile instead of waiting. Returns when the next
    /// attempt is due, or `None` when the queue works again.
    pub(super) fn recover_spill(&self, stats: &GlobalStats, now: Instant) -> Option<Instant> {
        let spill = self.spill.as_ref()?;
        let mut backoff = spill.reopen.lock().unwrap_or_else(|p| p.into_inner());
        // No sync round meanwhile: recovery rewrites the directory (it drops
        // a stale `ledger.tmp`) that a round planned earlier would still
        // write. Lock order: reopen, round, queue.
        let _rounds = spill.commit.hold_rounds();
        let (dir, cfg, opened) = {
            let q = lock_queue(&spill.queue);
            if !q.is_broken() {
                return None;
            }
            (
                q.dir().to_path_buf(),
                q.config(),
                q.is_opened() && !q.is_deferred(),
            )
        };
        // Only a queue that never opened (or never made its directory) may
        // lack its directory; `recover` never creates one (a directory moved
        // away must not come back empty).
        let created = match opened {
            true => Ok(()),
            false => std::fs::create_dir_all(&dir).map_err(|e| spill_mod::SpillError::Io {
                op: "create",
                path: dir.clone(),
                source: Arc::new(e),
            }),
        };
        let recovered = match created.and_then(|()| DiskQueue::recover(&dir, cfg)) {
            Ok(r) => r,
            Err(e) => {
                backoff.failed(now);
                stats.add_spill_error();
                let retry = backoff.next_at().map(|t| t.saturating_duration_since(now));
                tracing::warn!(exports = %self.name(), target_id = %self.id, error = %e, retry_in = ?retry,
                    "delivery: cannot reopen the disk spill yet; this target stays memory-only");
                return backoff.next_at();
            }
        };
        let (r, written) = {
            let mut q = lock_queue(&spill.queue);
            if q.dir() != dir {
                // Moved while it was recovered (a broken queue is not
                // renamed by a live config change, so this should not
                // happen): what was read belongs to the old path. Drop it
                // and recover again at once from the current one.
                tracing::warn!(exports = %self.name(), target_id = %self.id, recovered = %dir.display(), now_at = %q.dir().display(),
                    "delivery: the disk spill moved while it was reopened; reopening it again");
                return Some(now);
            }
            let r = q.adopt(recovered);
            (r, q.written_seq())
        };
        backoff.reopened(now);
        if r.first_open {
            // The manifest was left as it was while the queue never opened
            // (its lane count describes the records now recovered).
            write_manifest(
                &self.id(),
                self.lanes(),
                self.lane_key(),
                &self.target().routes,
                &spill.queue,
            );
        }
        if r.first_open && r.recovery.records > 0 {
            // Its backlog is older than anything queued since: nothing new
            // goes until all of it is delivered, as after a restart.
            if let Ok(mut core) = self.core.lock() {
                core.set_recovered(0, written);
            }
        }
        if r.lost_records > 0 {
            stats.add_spill_errors(r.lost_records);
        }
        tracing::info!(exports = %self.name(), target_id = %self.id, records = r.recovery.records,
            truncated_bytes = r.recovery.truncated_bytes,
            corrupt_records = r.recovery.corrupt_records_dropped,
            lost_records = r.lost_records, lost_samples = r.lost_samples,
            "delivery: disk spill reopened; spilling again");
        self.notify.notify_one();
        None
    }

    /// Logs the end of a full disk (an append worked, or delivered segments
    /// were deleted), once.
    pub(super) fn note_spill_space(&self, space_short: bool) {
        if let Some(spill) = &self.spill {
            if !space_short && spill.full.swap(false, Ordering::Relaxed) {
                tracing::info!(exports = %self.name(), target_id = %self.id, "delivery: the disk spill has space again; spilling goes on");
            }
        }
    }

    /// Spill gauges: queued bytes, the enqueue time of the oldest record,
    /// and the queue's state (`"ok"`, `"disk_full"`: the last append found
    /// no space; `"broken"`: being reopened; `"off"`: no spill).
    pub(super) fn spill_stats(&self) -> (u64, Option<u64>, &'static str) {
        self.spill.as_ref().map_or((0, None, "off"), |s| {
            let q = lock_queue(&s.queue);
            let st = q.stats();
            let state = if q.is_broken() {
                "broken"
            } else if st.space_short {
                "disk_full"
            } else {
                "ok"
            };
            (st.bytes, st.oldest_enqueued_ms, state)
        })
    }

    /// Reads disk records back while the core has room and lanes wait for
    /// them, then acks what was delivered.
    pub(super) fn reload(&self, stats: &GlobalStats) {
        let Some(spill) = &self.spill else { return };
        for _ in 0..64 {
            let Some(room) = self.core.lock().ok().and_then(|c| c.reload_room()) else {
                break;
            };
            let (chunks, written, exhausted, failed) = {
                let mut q = lock_queue(&spill.queue);
                if q.is_broken() {
                    // Read back only after the reopen (a read error broke
                    // it, or a failed sync): retrying on every wake-up would
                    // repeat a failing disk read under the queue lock.
                    break;
                }
                match q.read(4096, room) {
                    Ok(recs) => {
                        let exhausted = recs.is_empty();
                        let chunks: Vec<DiskChunk> = recs
                            .into_iter()
                            .map(|r| DiskChunk {
                                seq: r.seq,
                                tag: lane_tag(r.record.tag),
                                wire: part_len(r.record.tag),
                                records: r.record.body,
                                samples: r.record.samples,
                                enqueued_ms: r.record.enqueued_ms,
                            })
                            .collect();
                        (chunks, q.written_seq(), exhausted, false)
                    }
                    Err(e) => {
                        // Nothing is skipped (skipping would ack the unread
                        // records): the queue is marked broken, so the
                        // reopen path retries with backoff; the lanes that
                        // wait for disk records wait meanwhile.
                        stats.add_spill_error();
                        let unread = q.stats().records;
                        tracing::error!(exports = %self.name(), target_id = %self.id, error = %e, unread_records = unread,
                            "delivery: cannot read the disk spill back; the queue is reopened to retry (its records stay queued)");
                        q.mark_broken(format!("read failed: {e}"));
                        (Vec::new(), q.written_seq(), false, true)
                    }
                }
            };
            if failed {
                break;
            }
            if let Ok(mut core) = self.core.lock() {
                core.reload(
                    chunks,
                    written,
                    exhausted,
                    Instant::now(),
                    wall_ms(SystemTime::now()),
                );
            }
            if exhausted {
                break;
            }
        }
        self.ack_disk();
    }

    /// Acks the disk queue through what the core says was delivered.
    fn ack_disk(&self) {
        let Some(spill) = &self.spill else { return };
        let Some(through) = self.core.lock().ok().map(|c| c.disk_ack()) else {
            return;
        };
        if through > spill.acked.load(Ordering::Relaxed) {
            spill.acked.store(through, Ordering::Relaxed);
            lock_queue(&spill.queue).ack_through(through);
        }
    }

    /// Shutdown: moves what is still in memory to disk and fsyncs. Returns
    /// the samples that could not be kept. Blocking (it may run a recovery
    /// scan and fsyncs): async code runs it with [`spill_all_blocking`].
    pub(super) fn spill_all(&self, stats: &GlobalStats) -> u64 {
        // A broken queue gets one more reopen attempt, whatever its backoff.
        self.recover_spill(stats, Instant::now());
        let Ok(mut core) = self.core.lock() else {
            return 0;
        };
        let Some(spill) = &self.spill else {
            return core.pending_samples();
        };
        let chunks = core.drain_memory();
        drop(core);
        let now = Instant::now();
        let mut to_disk = ToDisk::new(Some(spill), now, wall_ms(SystemTime::now()));
        let mut lost = 0u64;
        for (lane, c) in chunks {
            let samples = u64::from(c.samples);
            if to_disk.overflow(lane, c).is_none() {
                lost += samples;
            }
        }
        self.count_disk(&to_disk, stats);
        // Not at the same time as a round of the sync thread (both would
        // write the ledger through the same temp file).
        let _rounds = spill.commit.hold_rounds();
        if let Err(e) = lock_queue(&spill.queue).flush(true) {
            tracing::error!(exports = %self.name(), target_id = %self.id, error = %e, "delivery: cannot sync the disk spill at shutdown");
        }
        lost
    }

    /// What its disk queue holds, as `(records, bytes, samples)`; `None`
    /// without a spill. After the shutdown spill, the records and bytes are
    /// what the next start resumes (its "resuming the disk backlog" line).
    pub(super) fn disk_backlog(&self) -> Option<(u64, u64, u64)> {
        let spill = self.spill.as_ref()?;
        let q = lock_queue(&spill.queue);
        let st = q.stats();
        Some((st.records, st.bytes, q.queued_samples()))
    }

    /// Undoes [`Self::spill_all`] for a removed target that was revived
    /// while its queue went to disk: the core reads every unacked disk
    /// record back again, from the oldest, before anything newer of a lane.
    pub(super) fn resume_after_spill(&self) {
        let Some(spill) = &self.spill else { return };
        let written = {
            let mut q = lock_queue(&spill.queue);
            q.rewind();
            q.written_seq()
        };
        if let Ok(mut core) = self.core.lock() {
            core.undrain(written);
        }
        self.notify.notify_one();
    }
}

impl TargetHandle {
    /// `fanout spill replay`, after delivery stopped: acks what was
    /// delivered, syncs the ledger and removes this target's spill directory
    /// when no record is left in it. Returns the records left (0: removed,
    /// or there was no spill).
    pub(crate) fn remove_delivered_spill(&self) -> std::io::Result<u64> {
        let Some(spill) = &self.spill else {
            return Ok(0);
        };
        // After the shutdown drain the unacked records on disk are exactly
        // what was not delivered (memory went to disk, the ack froze).
        self.ack_disk();
        // No sync round between the check and the removal.
        let _rounds = spill.commit.hold_rounds();
        let mut q = lock_queue(&spill.queue);
        let left = q.stats().records;
        if left > 0 {
            return Ok(left);
        }
        if let Err(e) = q.flush(true) {
            tracing::warn!(exports = %self.name(), target_id = %self.id, error = %e, "replay: cannot sync the ledger before removing the delivered backlog");
        }
        match std::fs::remove_dir_all(q.dir()) {
            Ok(()) => Ok(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }
}
