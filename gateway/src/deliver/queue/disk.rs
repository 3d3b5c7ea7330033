//! The disk side of [`TargetCore`] ("Disk records and order" in the module
//! docs): what went to disk per lane, recovery after a restart, reading
//! back, acking.
//!
//! At shutdown [`TargetCore::drain_memory`] hands what is in memory to the
//! disk queue, and [`TargetCore::undrain`] takes the target back.

use std::time::{Duration, Instant};

use super::{split_point, Chunk, DiskChunk, TargetCore};

impl TargetCore {
    /// A chunk of `lane` went straight to disk as `seq` (`durability: wal`).
    pub fn note_spilled(&mut self, lane: u32, seq: u64, samples: u32) {
        let n = self.lanes.len() as u32;
        let l = &mut self.lanes[(lane % n) as usize];
        l.disk_through = l.disk_through.max(seq);
        self.counters.spilled += u64::from(samples);
    }

    /// After a restart: nothing new goes until every disk record up to
    /// `written_seq` was delivered (or dropped). A series' lane follows the
    /// width of the moment it was pushed (`begin_cut`), so a record on disk
    /// may sit in another lane than the same series' new data.
    pub fn set_recovered(&mut self, acked_seq: u64, written_seq: u64) {
        self.read_through = self.read_through.max(acked_seq);
        for l in &mut self.lanes {
            l.disk_through = l.disk_through.max(written_seq);
        }
        if written_seq > acked_seq {
            self.set_barrier(written_seq);
        }
    }

    /// Nothing new goes until every disk record up to `seq` was delivered
    /// (or dropped): a backlog whose lanes another lane key picked (an
    /// older release's) keeps per-series order only so.
    pub fn set_barrier(&mut self, seq: u64) {
        self.barrier = self.barrier.max(seq);
    }

    /// Whether a barrier ([`Self::set_barrier`]) still holds new data back.
    pub(super) fn behind_barrier(&self) -> bool {
        self.barrier > 0 && self.disk_ack() < self.barrier
    }

    /// Bytes of disk records to read back now, or `None` when no lane waits
    /// for disk records or the reload room is used up.
    pub fn reload_room(&self) -> Option<usize> {
        if self.drained {
            return None;
        }
        let waiting = self
            .lanes
            .iter()
            .any(|l| l.disk_through > self.read_through);
        let limit = (self.config.queue_bytes / 2).clamp(256 << 10, 16 << 20);
        (waiting && self.reload_bytes < limit).then(|| (limit - self.reload_bytes) as usize)
    }

    /// Takes disk records read back in seq order. `written_seq` is the
    /// highest seq the disk queue had written when `chunks` were read; when
    /// `exhausted` (the read found nothing more) everything up to it counts
    /// as read.
    pub fn reload(
        &mut self,
        chunks: Vec<DiskChunk>,
        written_seq: u64,
        exhausted: bool,
        now: Instant,
        wall_ms: u64,
    ) {
        if self.drained {
            return;
        }
        let lanes = self.lanes.len() as u64;
        for c in chunks {
            if c.seq <= self.read_through {
                continue;
            }
            self.read_through = c.seq;
            let age = Duration::from_millis(wall_ms.saturating_sub(c.enqueued_ms));
            // A record kept as a snappy part is sent as it is; its series
            // are counted only if a batch must cut it (`Chunk::unwire`).
            let series = if c.wire > 0 {
                0
            } else {
                split_point(&c.records, u32::MAX, true).2
            };
            let chunk = Chunk {
                samples: c.samples,
                series,
                enqueued: now.checked_sub(age).unwrap_or(now),
                permit: None,
                packed: None,
                push: 0,
                owners: super::ChunkOwners::One(crate::deliver::accounting::UNKNOWN),
                records: c.records,
                wire: c.wire,
                newest: i64::MIN,
            };
            self.reload_bytes += chunk.records.len() as u64;
            self.reload_samples += u64::from(chunk.samples);
            self.arrived(chunk.samples, now);
            self.outstanding.insert(c.seq);
            self.lanes[(c.tag % lanes) as usize]
                .disk
                .push_back((c.seq, chunk));
        }
        if exhausted {
            self.read_through = self.read_through.max(written_seq);
        }
    }

    /// The disk queue may be acked through this seq: every record up to it
    /// was delivered or dropped.
    pub fn disk_ack(&self) -> u64 {
        match self.outstanding.first() {
            Some(&s) => s - 1,
            None => self.read_through,
        }
    }

    /// Takes every chunk out of memory for the spill at shutdown, lane by
    /// lane in order: the lane's part of the batch not yet delivered (unless
    /// it came from disk, where it still is) and then the queue. Returns
    /// (lane, chunk). Afterwards nothing is read back and
    /// [`TargetCore::disk_ack`] stays below the oldest record read back but
    /// not delivered: those are still on disk, and acking them would lose
    /// them.
    pub fn drain_memory(&mut self) -> Vec<(u32, Chunk)> {
        self.read_through = self.disk_ack();
        self.drained = true;
        self.disk_gates.clear();
        let mut from_batches: Vec<Vec<Chunk>> = (0..self.lanes.len()).map(|_| Vec::new()).collect();
        for b in self.batches.drain(..) {
            if b.sending {
                self.in_flight = self.in_flight.saturating_sub(1);
            }
            // A disk batch is still on disk; a memory batch goes back as
            // the chunks it was made of.
            for (lane, c) in b.pieces {
                from_batches[lane as usize].push(c);
            }
        }
        let mut out = Vec::new();
        for (i, l) in self.lanes.iter_mut().enumerate() {
            l.busy = None;
            out.extend(from_batches[i].drain(..).map(|c| (i as u32, c)));
            l.disk.clear();
            out.extend(l.queue.drain(..).map(|c| (i as u32, c)));
            l.samples = 0;
            l.bytes = 0;
        }
        // In push order across lanes (each lane's own order is kept): a
        // series whose lane moved with the width has its older chunk
        // written first.
        out.sort_by_key(|(_, c)| c.push);
        self.queue_bytes = 0;
        self.queue_samples = 0;
        self.reload_bytes = 0;
        self.reload_samples = 0;
        self.outstanding.clear();
        out
    }

    /// Takes data again after [`Self::drain_memory`] (a removed target came
    /// back while its queue went to disk): every lane waits until every
    /// disk record up to `written_seq` was read back, as after a restart.
    /// The disk queue must be rewound (records read back before the drain
    /// but not delivered are read again).
    pub fn undrain(&mut self, written_seq: u64) {
        if !self.drained {
            return;
        }
        self.drained = false;
        let acked = self.disk_ack();
        self.set_recovered(acked, written_seq);
    }
}
