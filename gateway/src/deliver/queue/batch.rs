//! Forming a batch: the oldest chunks of a lane group's free lanes up to
//! `maxSamplesPerSend`, compressed once ([`TargetCore::form_batch`]), and
//! cutting batches after a 413 or for `maxBytesPerSend`.

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::parts::compress_parts;
use super::records::split_point;
use super::{first_lane, mask_lanes, Batch, Chunk, Dispatch, TargetCore};

/// How many times `maxSamplesPerSend` a batch may take when its lanes are
/// behind ([`TargetCore::grown_max`]): 50,000 samples at the default 2,000,
/// so that [`GROWN_BYTES`] is what bounds it. A backlog's drain is a
/// sequence of round trips per lane (order per series), so their count is
/// what it costs: on `outage-30s-no-retry-after` (a 30 s backlog of 900,000
/// samples per target) e2e p50 664 ms against 829 at 5 times (10,000,
/// vmagent's `-remoteWrite.maxRowsPerBlock`), single runs, with the same
/// CPU, saturation and far-300ms figures.
pub const GROWN_BATCHES: u32 = 25;
/// Records (uncompressed) a grown batch takes at most: 8 MiB, vmagent's
/// largest block.
pub const GROWN_BYTES: usize = 8 << 20;

impl TargetCore {
    /// The lane of `mask` whose front is oldest: the lowest seq among disk
    /// queues, the earliest enqueued among memory queues (ties: lowest lane).
    pub(super) fn oldest_lane(&self, mask: u64, from_disk: bool) -> Option<usize> {
        if from_disk {
            mask_lanes(mask)
                .filter(|&l| !self.disk_front_gated(l))
                .filter_map(|l| self.lanes[l].disk.front().map(|(seq, _)| (*seq, l)))
                .min()
                .map(|(_, l)| l)
        } else {
            mask_lanes(mask)
                .filter(|&l| !self.front_gated(l))
                .filter_map(|l| self.lanes[l].queue.front().map(|c| (c.enqueued, l)))
                .min()
                .map(|(_, l)| l)
        }
    }

    /// Forms one batch from the lanes of `mask` (all free; disk queues when
    /// `from_disk`, else memory queues), oldest data first across them, up
    /// to `maxSamplesPerSend` (splitting a chunk at a record boundary; a
    /// lone series larger than that makes a larger batch), compressed once.
    /// Every lane it takes data from is busy until the batch is done.
    pub(super) fn form_batch(&mut self, mask: u64, from_disk: bool, now: Instant) -> Dispatch {
        let base = self.batch_max();
        let max = self.grown_max();
        let mut bytes = 0usize;
        let mut samples = 0u32;
        let mut oldest = now;
        let mut seqs = Vec::new();
        let mut pieces: Vec<(u32, Chunk)> = Vec::with_capacity(2 * mask.count_ones() as usize);
        let mut taken = 0u64;
        while samples < max && (samples < base || bytes < GROWN_BYTES) {
            let Some(l) = self.oldest_lane(mask, from_disk) else {
                break;
            };
            let room = max - samples;
            let lane = &mut self.lanes[l];
            let front = if from_disk {
                lane.disk.front_mut().map(|(_, c)| c)
            } else {
                lane.queue.front_mut()
            };
            let Some(front) = front else { break };
            // A chunk given to other targets too is not split unless it
            // alone is too large: its compressed part is shared only whole,
            // and both halves of a split one would be compressed for this
            // target alone (on fanout-10 at saturation such halves were 40%
            // of all the bytes compressed).
            let shared = front.shared();
            if front.samples > room && shared && samples > 0 {
                break;
            }
            // A record read back as a snappy part is cut only as records
            // (one that does not decompress goes whole).
            let held = front.records.len();
            let whole = front.samples <= room || (front.wire > 0 && !front.unwire());
            if front.records.len() != held {
                // Unwired (a part read back from disk, or one a failing
                // target kept compressed in memory): it is counted by its
                // records now, which may even be a little shorter than the
                // part (incompressible records).
                let now = front.records.len() as u64;
                let recount = |n: &mut u64| *n = (*n + now).saturating_sub(held as u64);
                if from_disk {
                    recount(&mut self.reload_bytes);
                } else {
                    recount(&mut lane.bytes);
                    recount(&mut self.queue_bytes);
                }
            }
            let (end, s, series) = if whole {
                (front.records.len(), front.samples, front.series)
            } else {
                split_point(&front.records, room, samples == 0)
            };
            if end == 0 {
                break;
            }
            oldest = oldest.min(front.enqueued);
            bytes += if whole { front.raw_len() } else { end };
            taken |= 1 << l;
            let split = end < front.records.len();
            let piece = if split {
                // The rest stays at the head (a disk seq completes with the
                // batch that takes its rest).
                let (head, tail) = front.owners.split(&front.records, end);
                front.owners = tail;
                let part = Chunk {
                    records: front.records.slice(..end),
                    samples: s,
                    series,
                    enqueued: front.enqueued,
                    permit: front.permit.clone(),
                    packed: None,
                    push: front.push,
                    owners: head,
                    wire: 0,
                    newest: front.newest,
                };
                // Its compressed form (if any) is of the whole chunk: it
                // does not fit a part of it.
                front.packed = None;
                front.records = front.records.slice(end..);
                front.samples = front.samples.saturating_sub(s);
                front.series = front.series.saturating_sub(series);
                if from_disk {
                    self.reload_bytes -= end as u64;
                    self.reload_samples -= u64::from(s);
                } else {
                    lane.samples -= u64::from(s);
                    lane.bytes -= end as u64;
                    self.queue_samples -= u64::from(s);
                    self.queue_bytes -= end as u64;
                }
                Some(part)
            } else if from_disk {
                lane.disk.pop_front().map(|(seq, c)| {
                    self.reload_bytes -= c.records.len() as u64;
                    self.reload_samples -= u64::from(c.samples);
                    self.disk_gates.remove(&seq);
                    seqs.push(seq);
                    c
                })
            } else {
                self.pop_front(l)
            };
            samples = samples.saturating_add(s);
            if let Some(piece) = piece {
                pieces.push((l as u32, piece));
            }
            if split {
                break;
            }
        }
        let min_push = pieces.iter().map(|(_, c)| c.push).min().unwrap_or(0);
        let body = self.compress(&pieces);
        if from_disk {
            pieces = Vec::new();
        }
        let id = self.next_batch;
        self.next_batch += 1;
        for l in mask_lanes(taken) {
            self.lanes[l].busy = Some(id);
        }
        self.batches.push(Batch {
            id,
            body: body.clone(),
            samples,
            oldest,
            attempts: 1,
            sending: true,
            not_before: now,
            lanes: taken,
            min_push: if from_disk { u64::MAX } else { min_push },
            seqs,
            pieces,
        });
        Dispatch {
            lane: first_lane(taken),
            batch: id,
            body,
            attempt: 1,
            samples,
            probe: false,
        }
    }

    /// The compressed `WriteRequest` of `pieces`. When some were given to
    /// other targets too, the body is a snappy header and one part per
    /// piece, each shared chunk compressed once for all its targets
    /// ([`Packed`]); else the records go Deployment by Deployment as one
    /// block.
    pub(super) fn compress(&mut self, pieces: &[(u32, Chunk)]) -> Bytes {
        // Shared: other targets have it too, or it is held as its snappy
        // part (read back from disk, or kept so by a failing target).
        if pieces.iter().any(|(_, c)| c.shared()) {
            return compress_parts(pieces);
        }
        // Stable: a lane's chunks keep their order. A Deployment's records
        // side by side share its labels within snappy's 64 KiB reach (on
        // routed-alive 40.40 bytes per sample against 40.44 in arrival
        // order, one run each: no more than noise there).
        // Grouping them by metric as well cost bytes on routed-alive (40.9
        // against 40.4 per sample; vmagent 40.45) and CPU everywhere
        // (fanout-1 at saturation 1.25 against 1.02-1.13 CPU-s per 2M
        // samples, for 35.7 against 36.6 bytes per sample).
        // Only chunks of one Deployment each can be reordered so: a chunk
        // of several (a target set's) holds series that a later chunk
        // holds too, which must stay behind it.
        let mut order: Vec<usize> = (0..pieces.len()).collect();
        if pieces
            .iter()
            .all(|(_, c)| matches!(c.owners, super::ChunkOwners::One(_)))
        {
            order.sort_by_key(|&i| pieces[i].1.owners.first());
        }
        self.scratch.clear();
        for &i in &order {
            self.scratch.extend_from_slice(&pieces[i].1.records);
        }
        let body = Bytes::from(fanout_proto::snappy::compress(&self.scratch));
        if self.scratch.capacity() > 16 << 20 {
            self.scratch = BytesMut::new();
        }
        body
    }

    /// Samples per batch: `maxSamplesPerSend`, or less after a 413. A
    /// batch is due once its lanes hold this many.
    pub(super) fn batch_max(&self) -> u32 {
        let max = self.config.max_samples;
        self.split_cap.map_or(max, |c| c.min(max)).max(1)
    }

    /// Samples a batch may take when more than [`Self::batch_max`] waits:
    /// a lane that fell behind (its previous request took long, or failed)
    /// catches up in requests up to [`GROWN_BATCHES`] times larger, at most
    /// [`GROWN_BYTES`] of records, and sends `maxSamplesPerSend` again once
    /// it has caught up (nothing more is waiting). Never after a 413 or a
    /// `maxBytesPerSend` cut: the endpoint said how much it takes.
    pub(super) fn grown_max(&self) -> u32 {
        let base = self.batch_max();
        if self.grow {
            base.saturating_mul(GROWN_BATCHES)
        } else {
            base
        }
    }

    /// A 413 (payload too large) on memory batch `at` of more than one
    /// series: its chunks go back to the head of their lanes, in their
    /// order (its lanes were busy, so nothing of theirs was taken since),
    /// and batches are capped at half its samples from now on, so the same
    /// data goes again in two (and, on another 413, in four...). Returns
    /// false when it cannot split: one series, read back from disk, or a lane
    /// of it has spilled newer data since (then it is dropped as before).
    pub(super) fn split_back(&mut self, at: usize) -> bool {
        let b = &self.batches[at];
        let series: u32 = b.pieces.iter().map(|(_, c)| c.series).sum();
        if b.pieces.is_empty() || series <= 1 || !b.seqs.is_empty() {
            return false;
        }
        // Newer data of one of its lanes went to disk meanwhile (the queue
        // overflowed): it is sent before that lane's memory, so these
        // chunks cannot go back there without passing it.
        let spilled = mask_lanes(b.lanes).any(|l| {
            let lane = &self.lanes[l];
            !lane.disk.is_empty() || lane.disk_through > self.read_through
        });
        // A gated record on disk waits for this batch's data: back in the
        // queues it could go to disk after that record and lose its place.
        let awaited = self
            .disk_gates
            .values()
            .any(|&(_, g)| g.push > b.min_push && g.from & b.lanes != 0);
        if spilled || awaited {
            return false;
        }
        let cap = (b.samples / 2).max(1);
        let b = self.finish(at);
        for (l, c) in b.pieces.into_iter().rev() {
            self.count_queued(l as usize, &c, true);
            self.lanes[l as usize].queue.push_front(c);
        }
        self.split_cap = Some(cap);
        self.split_ok = 0;
        self.grow = false;
        true
    }

    /// `maxBytesPerSend`: when the body of `d` (just formed, not sent) is
    /// larger, its chunks go back as after a 413 ([`Self::split_back`]) and
    /// batches are capped at the share of its samples that fits (less a
    /// tenth): true when the caller is to form a smaller one. A batch that
    /// cannot be cut (one series) goes as it is; the target may take it.
    pub(super) fn cut_for_size(&mut self, d: &Dispatch) -> bool {
        let Some(max) = self.config.max_bytes else {
            return false;
        };
        let len = d.body.len() as u64;
        if len <= max {
            return false;
        }
        let Some(at) = self.batches.iter().position(|b| b.id == d.batch) else {
            return false;
        };
        if !self.split_back(at) {
            return false;
        }
        let fit = (u64::from(d.samples) * max / len * 9 / 10).max(1) as u32;
        self.split_cap = Some(self.split_cap.unwrap_or(u32::MAX).min(fit));
        true
    }
}
