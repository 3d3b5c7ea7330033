//! One target's queue, batching, retries and concurrency: a plain state
//! machine ([`TargetCore`]) that takes `now` as an argument. The sender
//! adapter (`sender.rs`) calls [`TargetCore::poll`] for batches to send and
//! [`TargetCore::on_result`] with each attempt's outcome.
//!
//! # Lanes and order
//! A target has `maxConcurrency` lanes rounded up to a power of two (at most
//! [`MAX_LANES`]; a target that resumes a backlog, or whose config changed
//! live, keeps the lane count its records were queued with:
//! [`CoreConfig::lanes`], [`TargetCore::reconfigure`]). The router puts every
//! series in the same lane each time: it shards a variant's series by their
//! label hash into as many shards as the variant's largest target has lanes,
//! and a target takes shard `s` into lane `s % lanes`. Because lane counts are
//! powers of two, `(hash % shards) % lanes == hash % lanes` whatever the
//! shards, so a series keeps its lane when targets with other lane counts join
//! or leave its variant ([`lanes_for`]). A lane has at most one batch in
//! flight, retried at the head of the lane until
//! it is delivered or dropped. So samples of one series reach the target in the
//! order they arrived (SPEC §5) even with retries, while up to
//! `maxConcurrency` lanes send at once. The adaptive limit
//! ([`Concurrency`]) caps how many lanes may have a request in flight.
//!
//! # Batches
//! A lane's queue holds [`Chunk`]s: runs of encoded `TimeSeries` records
//! shared (refcounted `Bytes`) with every other target that needs the same
//! label variant. A batch takes chunks until `maxSamplesPerSend`, splitting a
//! chunk at a record boundary when needed (only a single series with more
//! samples than the maximum makes a larger batch). It is sent when full or
//! when its oldest chunk waited `batchSendDeadline`, and is compressed once:
//! every retry sends the same bytes.
//!
//! # Memory bound
//! Queued chunk bytes are bounded per target. Beyond the bound the oldest
//! chunk (over all lanes) goes to the overflow seam ([`Overflow`]); the memory
//! implementation drops it and counts `queue_full`, the disk spill appends it
//! to the target's disk queue and gets its seq back. Pushing never waits.
//!
//! # Disk records and order
//! A lane that overflowed a chunk to disk remembers the highest seq it put
//! there (`disk_through`). Overflow always takes a lane's *front* chunk, so
//! everything of a lane on disk is older than everything of it in memory.
//! The lane therefore sends no memory chunk while records of it are still on
//! disk (`disk_through > read_through`); the sender reads disk records back
//! in seq order ([`TargetCore::reload`], bounded by [`TargetCore::reload_room`])
//! into a per-lane `disk` queue that is sent before the lane's memory queue.
//! Reloaded records are never overflowed again (they are not in the memory
//! bound, but bounded by the reload room). A disk batch carries the seqs of
//! the records it completes; the disk queue is acked through the highest seq
//! below every outstanding one ([`TargetCore::disk_ack`]). After a restart
//! every lane waits for all recovered records ([`TargetCore::set_recovered`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use fanout_proto::wire::{Reader, WireType};

use super::policy::{classify, Backoff, Concurrency, SendResult, Verdict};
use super::MemoryPermit;

/// Most lanes (concurrent in-order streams) of one target.
pub const MAX_LANES: u32 = 64;
const _: () = assert!(MAX_LANES.is_power_of_two());
/// A target whose failures last longer than this is `failing`.
pub const FAILING_AFTER: Duration = Duration::from_secs(30);

/// A run of encoded `TimeSeries` records (each `0x0a len msg`) for one target lane.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The records, shared by every target of the same label variant.
    pub records: Bytes,
    /// Float and histogram samples in the records.
    pub samples: u32,
    /// Records (series) in the chunk.
    pub series: u32,
    /// When it was queued.
    pub enqueued: Instant,
    /// The memory it holds in the shared budget (shared by the request's chunks).
    pub permit: Option<Arc<MemoryPermit>>,
}

/// Where chunks go when a target's memory queue is full: the disk spill.
pub trait Overflow {
    /// Takes `chunk` of `lane` out of memory and returns the disk seq it got;
    /// `None` when it could not and the chunk is dropped (`queue_full`).
    fn overflow(&mut self, lane: u32, chunk: Chunk) -> Option<u64>;
}

/// The memory-only overflow: drops the chunk.
#[derive(Debug, Default, Clone, Copy)]
pub struct DropOldest;

impl Overflow for DropOldest {
    fn overflow(&mut self, _lane: u32, _chunk: Chunk) -> Option<u64> {
        None
    }
}

/// A record read back from the disk queue, for [`TargetCore::reload`].
#[derive(Debug, Clone)]
pub struct DiskChunk {
    /// Its disk seq.
    pub seq: u64,
    /// Its lane tag (taken modulo the lanes).
    pub tag: u64,
    /// The encoded records.
    pub records: Bytes,
    /// Samples in them.
    pub samples: u32,
    /// When it was first queued (wall clock, ms since the epoch).
    pub enqueued_ms: u64,
}

/// Delivery options of a target as the core needs them.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// `maxSamplesPerSend`.
    pub max_samples: u32,
    /// `batchSendDeadline`.
    pub deadline: Duration,
    /// `maxConcurrency` (also the number of lanes: [`lanes_for`]).
    pub max_concurrency: u32,
    /// `maxBackoff`.
    pub max_backoff: Duration,
    /// Queued bytes at most before the oldest chunk overflows.
    pub queue_bytes: u64,
    /// Lane count when it must differ from `max_concurrency`: a resumed disk
    /// backlog was queued under this many lanes, and its lane tags keep
    /// per-series order only under the same count. The concurrency limit is
    /// then at most the smaller of the two.
    pub lanes: Option<u32>,
}

impl CoreConfig {
    /// Lanes of a target: `lanes` as given (the count a backlog was queued
    /// with; it must not change while that backlog waits), or [`lanes_for`]
    /// `max_concurrency`.
    pub fn lanes(&self) -> u32 {
        match self.lanes {
            Some(l) => l.clamp(1, MAX_LANES),
            None => lanes_for(self.max_concurrency),
        }
    }
}

/// The lane count for `n` wanted lanes: `n` rounded up to a power of two,
/// between 1 and [`MAX_LANES`]. Powers of two keep a series' lane
/// (`(hash % shards) % lanes`) independent of the router's shard count, which
/// follows the largest target of a variant (see the module docs).
pub fn lanes_for(n: u32) -> u32 {
    n.clamp(1, MAX_LANES).next_power_of_two()
}

/// A batch to send now.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// Lane index.
    pub lane: u32,
    /// Batch id (to match the result).
    pub batch: u64,
    /// Snappy-compressed `WriteRequest`.
    pub body: Bytes,
    /// Attempt number, 1 for the first.
    pub attempt: u32,
    /// Samples in the batch.
    pub samples: u32,
}

/// What an attempt's result did, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Delivered.
    Sent {
        /// Samples.
        samples: u32,
        /// Compressed bytes.
        bytes: u64,
    },
    /// Will be retried.
    Retrying {
        /// Failure counter key.
        kind: String,
        /// Status if any.
        status: Option<u16>,
        /// The error.
        message: String,
    },
    /// Dropped as undeliverable.
    Dropped {
        /// Status.
        status: u16,
        /// Samples dropped.
        samples: u32,
        /// The error.
        message: String,
    },
    /// The result did not match a batch in flight (ignored).
    Stale,
}

#[derive(Debug)]
struct Batch {
    id: u64,
    body: Bytes,
    samples: u32,
    oldest: Instant,
    attempts: u32,
    sending: bool,
    not_before: Instant,
    /// Disk seqs this batch completes when delivered or dropped.
    seqs: Vec<u64>,
    /// Formed from disk records (still on disk until acked).
    from_disk: bool,
}

#[derive(Debug, Default)]
struct Lane {
    queue: VecDeque<Chunk>,
    samples: u64,
    bytes: u64,
    batch: Option<Batch>,
    /// Reloaded disk records, sent before `queue`.
    disk: VecDeque<(u64, Chunk)>,
    /// Highest disk seq holding data of this lane.
    disk_through: u64,
}

/// The last error of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// Wall-clock time.
    pub time: SystemTime,
    /// Status, when there was a response.
    pub status: Option<u16>,
    /// Status line and start of the body, or the error.
    pub message: String,
}

/// Cumulative counters of a target.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Samples delivered.
    pub samples_sent: u64,
    /// Compressed bytes delivered.
    pub bytes_sent: u64,
    /// Requests delivered.
    pub requests_sent: u64,
    /// Retry attempts.
    pub retries: u64,
    /// Failed attempts by status or kind.
    pub failures: BTreeMap<String, u64>,
    /// Samples dropped by a non-retryable status.
    pub dropped_rejected: u64,
    /// Samples dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Samples moved to the disk spill.
    pub spilled: u64,
}

/// A target's delivery state machine.
#[derive(Debug)]
pub struct TargetCore {
    id: String,
    config: CoreConfig,
    lanes: Vec<Lane>,
    cursor: usize,
    in_flight: u32,
    next_batch: u64,
    concurrency: Concurrency,
    backoff: Backoff,
    rng: fastrand::Rng,
    paused: bool,
    flush: bool,
    queue_bytes: u64,
    queue_samples: u64,
    failing_since: Option<Instant>,
    counters: Counters,
    last_error: Option<LastError>,
    latency_us: hdrhistogram::Histogram<u64>,
    scratch: BytesMut,
    /// Every disk seq up to this one was read back (or dropped from disk).
    read_through: u64,
    /// Disk seqs read back and not yet delivered or dropped.
    outstanding: BTreeSet<u64>,
    /// Bytes and samples of reloaded records in the lanes' `disk` queues.
    reload_bytes: u64,
    reload_samples: u64,
    /// [`TargetCore::drain_memory`] ran: nothing is read back any more and
    /// the disk ack stays where it was.
    drained: bool,
}

/// Samples (floats and histograms) in one `TimeSeries` message.
fn message_samples(msg: &[u8]) -> u32 {
    let mut r = Reader::new(msg);
    let mut n = 0;
    while !r.is_empty() {
        let Ok((field, wire)) = r.key() else { break };
        if (field == 2 || field == 4) && wire == WireType::Len {
            n += 1;
        }
        if r.skip(wire).is_err() {
            break;
        }
    }
    n
}

/// Splits `records` after as many whole records as fit in `max` samples
/// (at least one when `at_least_one`): returns (byte offset, samples,
/// series) of the first part.
fn split_point(records: &[u8], max: u32, at_least_one: bool) -> (usize, u32, u32) {
    let mut r = Reader::new(records);
    let (mut end, mut samples, mut series) = (0usize, 0u32, 0u32);
    while !r.is_empty() {
        let Ok((_, wire)) = r.key() else { break };
        let Ok(msg) = (match wire {
            WireType::Len => r.len_delimited(),
            _ => break,
        }) else {
            break;
        };
        let n = message_samples(msg);
        if (series > 0 || !at_least_one) && samples + n > max {
            break;
        }
        samples += n;
        series += 1;
        end = r.pos();
    }
    (end, samples, series)
}

impl TargetCore {
    /// A target with `config`; `seed` seeds the jitter.
    pub fn new(id: impl Into<String>, config: CoreConfig, seed: u64) -> TargetCore {
        let lanes = (0..config.lanes()).map(|_| Lane::default()).collect();
        TargetCore {
            id: id.into(),
            concurrency: Concurrency::new(config.max_concurrency.min(config.lanes())),
            backoff: Backoff::new(config.max_backoff),
            config,
            lanes,
            cursor: 0,
            in_flight: 0,
            next_batch: 1,
            rng: fastrand::Rng::with_seed(seed),
            paused: false,
            flush: false,
            queue_bytes: 0,
            queue_samples: 0,
            failing_since: None,
            counters: Counters::default(),
            last_error: None,
            latency_us: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .unwrap_or_else(|_| hdrhistogram::Histogram::new(2).expect("valid sigfig")),
            scratch: BytesMut::new(),
            read_through: 0,
            outstanding: BTreeSet::new(),
            reload_bytes: 0,
            reload_samples: 0,
            drained: false,
        }
    }

    /// The target id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Number of lanes.
    pub fn lanes(&self) -> u32 {
        self.lanes.len() as u32
    }

    /// A live config change of the same export (docs/spill.md "Config
    /// changes"): the target goes on as `id` with the delivery options of
    /// `config`, keeping everything queued, in flight and on disk, and its
    /// lane count (lane tags and the router's shards depend on it; the new
    /// `maxConcurrency` applies as a cap on the concurrency limit, and as
    /// the lane count from the next start without a backlog). Batches
    /// already formed keep their size and bytes; the memory bound stays.
    pub fn reconfigure(&mut self, id: impl Into<String>, mut config: CoreConfig) {
        let lanes = self.lanes();
        config.lanes = Some(lanes);
        config.queue_bytes = self.config.queue_bytes;
        self.concurrency
            .set_max(config.max_concurrency.max(1).min(lanes));
        self.backoff = Backoff::new(config.max_backoff);
        self.id = id.into();
        self.config = config;
    }

    /// Queues `chunk` on the lane of `shard`; overflows the oldest chunks
    /// while over the memory bound. Never waits.
    pub fn push(&mut self, shard: u32, chunk: Chunk, overflow: &mut dyn Overflow) {
        let lane = (shard % self.lanes()) as usize;
        let l = &mut self.lanes[lane];
        l.samples += u64::from(chunk.samples);
        l.bytes += chunk.records.len() as u64;
        self.queue_samples += u64::from(chunk.samples);
        self.queue_bytes += chunk.records.len() as u64;
        l.queue.push_back(chunk);
        while self.queue_bytes > self.config.queue_bytes {
            let Some(oldest) = self
                .lanes
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.queue.front().map(|c| (c.enqueued, i)))
                .min()
                .map(|(_, i)| i)
            else {
                break;
            };
            let Some(c) = self.pop_front(oldest) else {
                break;
            };
            let samples = u64::from(c.samples);
            match overflow.overflow(oldest as u32, c) {
                Some(seq) => {
                    let l = &mut self.lanes[oldest];
                    l.disk_through = l.disk_through.max(seq);
                    self.counters.spilled += samples;
                }
                None => self.counters.dropped_queue_full += samples,
            }
        }
    }

    /// A chunk of `lane` went straight to disk as `seq` (`durability: wal`).
    pub fn note_spilled(&mut self, lane: u32, seq: u64, samples: u32) {
        let n = self.lanes.len() as u32;
        let l = &mut self.lanes[(lane % n) as usize];
        l.disk_through = l.disk_through.max(seq);
        self.counters.spilled += u64::from(samples);
    }

    /// After a restart: every lane waits until every disk record up to
    /// `written_seq` was read back (their lanes are unknown until read).
    pub fn set_recovered(&mut self, acked_seq: u64, written_seq: u64) {
        self.read_through = self.read_through.max(acked_seq);
        for l in &mut self.lanes {
            l.disk_through = l.disk_through.max(written_seq);
        }
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
            let (_, _, series) = split_point(&c.records, u32::MAX, true);
            let chunk = Chunk {
                samples: c.samples,
                series,
                enqueued: now.checked_sub(age).unwrap_or(now),
                permit: None,
                records: c.records,
            };
            self.reload_bytes += chunk.records.len() as u64;
            self.reload_samples += u64::from(chunk.samples);
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
    /// lane in order: the batch not yet delivered (unless it came from disk,
    /// where it still is) and then the queue. Returns (lane, chunk).
    /// Afterwards nothing is read back and [`TargetCore::disk_ack`] stays
    /// below the oldest record read back but not delivered: those are still
    /// on disk, and acking them would lose them.
    pub fn drain_memory(&mut self) -> Vec<(u32, Chunk)> {
        self.read_through = self.disk_ack();
        self.drained = true;
        let mut out = Vec::new();
        for (i, l) in self.lanes.iter_mut().enumerate() {
            if let Some(b) = l.batch.take() {
                if b.sending {
                    self.in_flight = self.in_flight.saturating_sub(1);
                }
                if !b.from_disk {
                    if let Ok(raw) = fanout_proto::snappy::decompress(&b.body, 256 << 20) {
                        let records = raw;
                        let (_, _, series) = split_point(&records, u32::MAX, true);
                        out.push((
                            i as u32,
                            Chunk {
                                records,
                                samples: b.samples,
                                series,
                                enqueued: b.oldest,
                                permit: None,
                            },
                        ));
                    }
                }
            }
            for (_, c) in l.disk.drain(..) {
                drop(c);
            }
            for c in l.queue.drain(..) {
                out.push((i as u32, c));
            }
            l.samples = 0;
            l.bytes = 0;
        }
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

    fn pop_front(&mut self, lane: usize) -> Option<Chunk> {
        let l = &mut self.lanes[lane];
        let c = l.queue.pop_front()?;
        l.samples -= u64::from(c.samples);
        l.bytes -= c.records.len() as u64;
        self.queue_samples -= u64::from(c.samples);
        self.queue_bytes -= c.records.len() as u64;
        Some(c)
    }

    fn lane_ready(&self, lane: usize, now: Instant) -> bool {
        let l = &self.lanes[lane];
        if !l.disk.is_empty() {
            return true;
        }
        if l.disk_through > self.read_through {
            return false;
        }
        match l.queue.front() {
            None => false,
            Some(front) => {
                self.flush
                    || l.samples >= u64::from(self.config.max_samples)
                    || now.saturating_duration_since(front.enqueued) >= self.config.deadline
            }
        }
    }

    /// The next batch to send now, if the limit and the lanes allow one.
    /// Call until `None`.
    pub fn poll(&mut self, now: Instant) -> Option<Dispatch> {
        if self.paused || self.in_flight >= self.concurrency.limit() {
            return None;
        }
        let n = self.lanes.len();
        for k in 0..n {
            let i = (self.cursor + k) % n;
            if let Some(b) = &mut self.lanes[i].batch {
                if b.sending || now < b.not_before {
                    continue;
                }
                b.sending = true;
                b.attempts += 1;
                self.counters.retries += 1;
                let d = Dispatch {
                    lane: i as u32,
                    batch: b.id,
                    body: b.body.clone(),
                    attempt: b.attempts,
                    samples: b.samples,
                };
                self.in_flight += 1;
                self.cursor = i + 1;
                return Some(d);
            }
            if self.lane_ready(i, now) {
                let d = self.form_batch(i, now);
                self.in_flight += 1;
                self.cursor = i + 1;
                return Some(d);
            }
        }
        None
    }

    fn form_disk_batch(&mut self, lane: usize, now: Instant) -> (u32, Instant, Vec<u64>) {
        let max = self.config.max_samples.max(1);
        let mut samples = 0u32;
        let mut oldest = now;
        let mut seqs = Vec::new();
        let l = &mut self.lanes[lane];
        while let Some((seq, front)) = l.disk.front_mut() {
            oldest = oldest.min(front.enqueued);
            if samples + front.samples > max {
                let (end, s, _) = split_point(&front.records, max - samples, seqs.is_empty());
                if end == 0 {
                    break;
                }
                if end < front.records.len() {
                    // The seq completes with the batch that takes the rest.
                    self.scratch.extend_from_slice(&front.records[..end]);
                    front.records = front.records.slice(end..);
                    front.samples = front.samples.saturating_sub(s);
                    self.reload_bytes -= end as u64;
                    self.reload_samples -= u64::from(s);
                    samples += s;
                    break;
                }
            }
            let seq = *seq;
            let Some((_, c)) = l.disk.pop_front() else {
                break;
            };
            self.scratch.extend_from_slice(&c.records);
            self.reload_bytes -= c.records.len() as u64;
            self.reload_samples -= u64::from(c.samples);
            samples += c.samples;
            seqs.push(seq);
        }
        (samples, oldest, seqs)
    }

    fn form_batch(&mut self, lane: usize, now: Instant) -> Dispatch {
        let max = self.config.max_samples.max(1);
        self.scratch.clear();
        let mut samples = 0u32;
        let mut oldest = now;
        let mut taken = 0u32;
        let from_disk = !self.lanes[lane].disk.is_empty();
        let mut seqs = Vec::new();
        if from_disk {
            (samples, oldest, seqs) = self.form_disk_batch(lane, now);
        }
        while let Some(front) = self.lanes[lane].queue.front().filter(|_| !from_disk) {
            if samples + front.samples > max {
                // Split at a record boundary; the rest stays at the head.
                let (end, s, _) = split_point(&front.records, max - samples, taken == 0);
                if end == 0 {
                    break;
                }
                oldest = oldest.min(front.enqueued);
                if end < front.records.len() {
                    let l = &mut self.lanes[lane];
                    let front = l.queue.front_mut().expect("front exists");
                    self.scratch.extend_from_slice(&front.records[..end]);
                    front.records = front.records.slice(end..);
                    front.samples = front.samples.saturating_sub(s);
                    l.samples -= u64::from(s);
                    l.bytes -= end as u64;
                    self.queue_samples -= u64::from(s);
                    self.queue_bytes -= end as u64;
                    samples += s;
                    break;
                }
            }
            oldest = oldest.min(front.enqueued);
            let Some(c) = self.pop_front(lane) else { break };
            self.scratch.extend_from_slice(&c.records);
            samples += c.samples;
            taken += 1;
        }
        let body = Bytes::from(fanout_proto::snappy::compress(&self.scratch));
        if self.scratch.capacity() > 16 << 20 {
            self.scratch = BytesMut::new();
        }
        let id = self.next_batch;
        self.next_batch += 1;
        self.lanes[lane].batch = Some(Batch {
            id,
            body: body.clone(),
            samples,
            oldest,
            attempts: 1,
            sending: true,
            not_before: now,
            seqs,
            from_disk,
        });
        Dispatch {
            lane: lane as u32,
            batch: id,
            body,
            attempt: 1,
            samples,
        }
    }

    /// When [`poll`](Self::poll) may next have something (a deadline or a
    /// retry), besides results and pushes.
    pub fn next_wakeup(&self) -> Option<Instant> {
        // At the concurrency limit only a result can let `poll` send again,
        // and results wake the sender themselves; a deadline that passed
        // meanwhile would otherwise wake it in a loop with nothing to do.
        if self.paused || self.in_flight >= self.concurrency.limit() {
            return None;
        }
        self.lanes
            .iter()
            .filter_map(|l| match &l.batch {
                Some(b) if !b.sending => Some(b.not_before),
                Some(_) => None,
                None if !l.disk.is_empty() => l.disk.front().map(|(_, c)| c.enqueued),
                None if l.disk_through > self.read_through => None,
                None => l.queue.front().map(|c| {
                    if self.flush {
                        c.enqueued
                    } else {
                        c.enqueued + self.config.deadline
                    }
                }),
            })
            .min()
    }

    /// Records the result of attempt `batch` on `lane`, which took `latency`.
    pub fn on_result(
        &mut self,
        lane: u32,
        batch: u64,
        result: &SendResult,
        latency: Duration,
        now: Instant,
        wall: SystemTime,
    ) -> Event {
        let Some(l) = self.lanes.get_mut(lane as usize) else {
            return Event::Stale;
        };
        let Some(b) = l.batch.as_mut().filter(|b| b.id == batch && b.sending) else {
            return Event::Stale;
        };
        self.in_flight = self.in_flight.saturating_sub(1);
        if matches!(result, SendResult::Status { .. }) {
            let us = latency.as_micros().clamp(1, 3_600_000_000) as u64;
            let _ = self.latency_us.record(us);
        }
        match classify(result) {
            Verdict::Done => {
                let samples = b.samples;
                let bytes = b.body.len() as u64;
                for s in &b.seqs {
                    self.outstanding.remove(s);
                }
                l.batch = None;
                self.counters.samples_sent += u64::from(samples);
                self.counters.bytes_sent += bytes;
                self.counters.requests_sent += 1;
                self.failing_since = None;
                let backlog = self.ready_lanes(now) > self.in_flight as usize;
                self.concurrency.on_success(latency, backlog, now);
                Event::Sent { samples, bytes }
            }
            Verdict::Retry {
                kind,
                status,
                retry_after,
                message,
            } => {
                b.sending = false;
                let jitter = self.rng.f64();
                b.not_before = now + self.backoff.delay(b.attempts, jitter, retry_after);
                *self.counters.failures.entry(kind.clone()).or_default() += 1;
                self.failing_since.get_or_insert(now);
                self.concurrency.on_error(now);
                self.last_error = Some(LastError {
                    time: wall,
                    status,
                    message: message.clone(),
                });
                Event::Retrying {
                    kind,
                    status,
                    message,
                }
            }
            Verdict::Drop { status, message } => {
                let samples = b.samples;
                for s in &b.seqs {
                    self.outstanding.remove(s);
                }
                l.batch = None;
                *self
                    .counters
                    .failures
                    .entry(status.to_string())
                    .or_default() += 1;
                self.counters.dropped_rejected += u64::from(samples);
                self.last_error = Some(LastError {
                    time: wall,
                    status: Some(status),
                    message: message.clone(),
                });
                Event::Dropped {
                    status,
                    samples,
                    message,
                }
            }
        }
    }

    fn ready_lanes(&self, now: Instant) -> usize {
        (0..self.lanes.len())
            .filter(|&i| self.lanes[i].batch.is_none() && self.lane_ready(i, now))
            .count()
    }

    /// Pauses or resumes sending (queues keep filling up to the bound).
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Whether paused.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Sends partial batches at once (drain on removal or shutdown).
    pub fn set_flush(&mut self, flush: bool) {
        self.flush = flush;
    }

    /// Nothing queued and nothing in flight or waiting for a retry.
    pub fn is_idle(&self) -> bool {
        self.lanes.iter().all(|l| {
            l.queue.is_empty()
                && l.batch.is_none()
                && l.disk.is_empty()
                && l.disk_through <= self.read_through
        })
    }

    /// Nothing in memory (queued, reloaded or in a batch); disk records may
    /// remain.
    pub fn memory_empty(&self) -> bool {
        self.lanes
            .iter()
            .all(|l| l.queue.is_empty() && l.batch.is_none() && l.disk.is_empty())
    }

    /// Bytes and samples of disk records read back into memory.
    pub fn reloaded(&self) -> (u64, u64) {
        (self.reload_bytes, self.reload_samples)
    }

    /// Samples queued or in a batch not yet delivered.
    pub fn pending_samples(&self) -> u64 {
        self.queue_samples
            + self.reload_samples
            + self
                .lanes
                .iter()
                .filter_map(|l| l.batch.as_ref())
                .map(|b| u64::from(b.samples))
                .sum::<u64>()
    }

    /// `healthy`, `retrying`, `failing` or `paused`.
    pub fn state(&self, now: Instant) -> &'static str {
        if self.paused {
            "paused"
        } else {
            match self.failing_since {
                None => "healthy",
                Some(t) if now.saturating_duration_since(t) > FAILING_AFTER => "failing",
                Some(_) => "retrying",
            }
        }
    }

    /// Queued bytes (memory).
    pub fn queue_bytes(&self) -> u64 {
        self.queue_bytes
    }

    /// Queued samples (memory, not yet in a batch).
    pub fn queue_samples(&self) -> u64 {
        self.queue_samples
    }

    /// Age of the oldest data not yet delivered.
    pub fn oldest_queued(&self, now: Instant) -> Duration {
        self.lanes
            .iter()
            .flat_map(|l| {
                l.queue
                    .front()
                    .map(|c| c.enqueued)
                    .into_iter()
                    .chain(l.disk.front().map(|(_, c)| c.enqueued))
                    .chain(l.batch.as_ref().map(|b| b.oldest))
            })
            .min()
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// The adaptive concurrency limit.
    pub fn concurrency(&self) -> u32 {
        self.concurrency.limit()
    }

    /// Cumulative counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The last error.
    pub fn last_error(&self) -> Option<&LastError> {
        self.last_error.as_ref()
    }

    /// Send latency histogram (microseconds).
    pub fn latency_us(&self) -> &hdrhistogram::Histogram<u64> {
        &self.latency_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_proto::encode::{Encoder, LabelSet};

    /// `n` one-sample records, each a distinct series.
    fn records(n: usize, tag: &str) -> (Bytes, u32) {
        let req = fanout_proto::v1::WriteRequest {
            timeseries: (0..n)
                .map(|i| fanout_proto::v1::TimeSeries {
                    labels: vec![fanout_proto::v1::Label {
                        name: "__name__".into(),
                        value: format!("{tag}_{i}"),
                    }],
                    samples: vec![fanout_proto::v1::Sample {
                        value: i as f64,
                        timestamp: 1,
                    }],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let body = Bytes::from(prost::Message::encode_to_vec(&req));
        let mut series = Vec::new();
        fanout_proto::scan::scan_v1(&body, &Default::default(), &mut series).unwrap();
        let mut enc = Encoder::new();
        let mut out = BytesMut::new();
        for s in &series {
            enc.encode_series(s.view(&body), &LabelSet::default(), &mut out);
        }
        (out.freeze(), n as u32)
    }

    fn chunk(n: usize, tag: &str, at: Instant) -> Chunk {
        let (records, samples) = records(n, tag);
        Chunk {
            records,
            samples,
            series: samples,
            enqueued: at,
            permit: None,
        }
    }

    fn config() -> CoreConfig {
        CoreConfig {
            max_samples: 10,
            deadline: Duration::from_secs(1),
            max_concurrency: 2,
            max_backoff: Duration::from_secs(5),
            queue_bytes: 1 << 20,
            lanes: None,
        }
    }

    fn ok() -> SendResult {
        SendResult::Status {
            status: 204,
            retry_after: None,
            body: String::new(),
        }
    }

    fn decode(body: &Bytes) -> Vec<String> {
        let raw = fanout_proto::snappy::decompress(body, 1 << 20).unwrap();
        let req: fanout_proto::v1::WriteRequest = prost::Message::decode(raw).unwrap();
        req.timeseries
            .into_iter()
            .map(|t| t.labels[0].value.clone())
            .collect()
    }

    #[test]
    fn deliver_queue_batches_when_full_or_after_deadline() {
        let t0 = Instant::now();
        let mut core = TargetCore::new("t", config(), 1);
        core.push(0, chunk(4, "a", t0), &mut DropOldest);
        assert!(core.poll(t0).is_none(), "not full, deadline not reached");
        assert_eq!(core.next_wakeup(), Some(t0 + Duration::from_secs(1)));
        core.push(0, chunk(8, "b", t0), &mut DropOldest);
        // 12 samples >= 10: a full batch of 10, split inside the second chunk.
        let d = core.poll(t0).expect("full batch");
        assert_eq!(d.samples, 10);
        let names = decode(&d.body);
        assert_eq!(names.len(), 10);
        assert_eq!(names[0], "a_0");
        assert_eq!(names[9], "b_5");
        assert_eq!(core.queue_samples(), 2);
        // One batch in flight per lane: nothing more on lane 0 until the result.
        assert!(core.poll(t0).is_none());
        let ev = core.on_result(
            0,
            d.batch,
            &ok(),
            Duration::from_millis(5),
            t0,
            SystemTime::now(),
        );
        assert!(matches!(ev, Event::Sent { samples: 10, .. }));
        assert!(core.poll(t0 + Duration::from_millis(999)).is_none());
        let d = core
            .poll(t0 + Duration::from_secs(1))
            .expect("deadline batch");
        assert_eq!(decode(&d.body), vec!["b_6", "b_7"]);
        core.on_result(
            0,
            d.batch,
            &ok(),
            Duration::from_millis(5),
            t0,
            SystemTime::now(),
        );
        assert!(core.is_idle());
        assert_eq!(core.counters().samples_sent, 12);
        assert_eq!(core.counters().requests_sent, 2);
        assert_eq!(core.state(t0), "healthy");
    }

    #[test]
    fn deliver_queue_retries_same_bytes_with_backoff_then_drops_on_4xx() {
        let t0 = Instant::now();
        let mut core = TargetCore::new("t", config(), 7);
        core.push(1, chunk(10, "x", t0), &mut DropOldest);
        let d1 = core.poll(t0).unwrap();
        let err = SendResult::Status {
            status: 503,
            retry_after: None,
            body: "upstream down".into(),
        };
        let ev = core.on_result(
            d1.lane,
            d1.batch,
            &err,
            Duration::from_millis(1),
            t0,
            SystemTime::now(),
        );
        assert!(matches!(
            ev,
            Event::Retrying {
                status: Some(503),
                ..
            }
        ));
        assert_eq!(core.state(t0), "retrying");
        assert!(
            core.poll(t0 + Duration::from_millis(29)).is_none(),
            "first retry after 30ms"
        );
        let wake = core.next_wakeup().unwrap();
        assert!(wake >= t0 + Duration::from_millis(30) && wake <= t0 + Duration::from_millis(38));
        let d2 = core.poll(wake).unwrap();
        assert_eq!(d2.body, d1.body, "compressed once, same bytes");
        assert_eq!(d2.attempt, 2);
        assert_eq!(core.counters().retries, 1);
        // Retry-After is honoured.
        let ra = SendResult::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(2)),
            body: String::new(),
        };
        core.on_result(
            d2.lane,
            d2.batch,
            &ra,
            Duration::from_millis(1),
            wake,
            SystemTime::now(),
        );
        assert!(core.poll(wake + Duration::from_millis(1999)).is_none());
        let d3 = core.poll(wake + Duration::from_secs(2)).unwrap();
        assert_eq!(core.state(t0 + Duration::from_secs(31)), "failing");
        let bad = SendResult::Status {
            status: 400,
            retry_after: None,
            body: "out of order sample".into(),
        };
        let ev = core.on_result(
            d3.lane,
            d3.batch,
            &bad,
            Duration::from_millis(1),
            wake,
            SystemTime::now(),
        );
        assert!(matches!(
            ev,
            Event::Dropped {
                status: 400,
                samples: 10,
                ..
            }
        ));
        let c = core.counters();
        assert_eq!(c.dropped_rejected, 10);
        assert_eq!(c.failures.get("503"), Some(&1));
        assert_eq!(c.failures.get("429"), Some(&1));
        assert_eq!(c.failures.get("400"), Some(&1));
        let last = core.last_error().unwrap();
        assert_eq!(last.status, Some(400));
        assert!(
            last.message.contains("out of order sample"),
            "{}",
            last.message
        );
        assert!(core.is_idle());
        // A stale result changes nothing.
        assert_eq!(
            core.on_result(0, 999, &ok(), Duration::ZERO, wake, SystemTime::now()),
            Event::Stale
        );
    }

    #[test]
    fn deliver_queue_memory_bound_drops_oldest_and_never_blocks() {
        let t0 = Instant::now();
        let mut cfg = config();
        let one = chunk(1, "m", t0).records.len() as u64;
        cfg.queue_bytes = 3 * one;
        let mut core = TargetCore::new("t", cfg, 1);
        for i in 0..5u32 {
            core.push(
                i,
                chunk(1, "m", t0 + Duration::from_millis(u64::from(i))),
                &mut DropOldest,
            );
        }
        assert_eq!(core.queue_bytes(), 3 * one);
        assert_eq!(core.counters().dropped_queue_full, 2);
        // The survivors are the newest three.
        assert_eq!(
            core.oldest_queued(t0 + Duration::from_millis(10)),
            Duration::from_millis(8)
        );

        struct Spill(u32);
        impl Overflow for Spill {
            fn overflow(&mut self, _: u32, _: Chunk) -> Option<u64> {
                self.0 += 1;
                Some(u64::from(self.0))
            }
        }
        let mut spill = Spill(0);
        core.push(0, chunk(1, "m", t0 + Duration::from_millis(9)), &mut spill);
        assert_eq!(spill.0, 1);
        assert_eq!(
            core.counters().dropped_queue_full,
            2,
            "spilled, not dropped"
        );
    }

    /// A fake disk queue: keeps what overflowed, hands it back in seq order.
    #[derive(Default)]
    struct Disk(Vec<DiskChunk>);

    impl Overflow for Disk {
        fn overflow(&mut self, lane: u32, chunk: Chunk) -> Option<u64> {
            let seq = self.0.len() as u64 + 1;
            self.0.push(DiskChunk {
                seq,
                tag: u64::from(lane),
                records: chunk.records,
                samples: chunk.samples,
                enqueued_ms: 0,
            });
            Some(seq)
        }
    }

    #[test]
    fn deliver_queue_shutdown_drain_never_acks_records_read_back_but_not_delivered() {
        // SIGTERM while disk records are read back and their batch fails:
        // they are still on disk, so the ack must not pass them (it did:
        // every record read back was acked and lost on restart).
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.queue_bytes = 2 * chunk(1, "s0", t0).records.len() as u64;
        cfg.deadline = Duration::ZERO;
        let mut core = TargetCore::new("t", cfg, 1);
        let mut disk = Disk::default();
        for i in 0..5u64 {
            core.push(0, chunk(1, &format!("s{i}"), t0), &mut disk);
        }
        let recs: Vec<DiskChunk> = disk.0.clone();
        core.reload(recs, 3, true, t0, 0);
        let d = core.poll(t0).expect("a disk batch");
        let fail = SendResult::Connect("refused".into());
        core.on_result(
            d.lane,
            d.batch,
            &fail,
            Duration::ZERO,
            t0,
            SystemTime::now(),
        );
        assert_eq!(core.disk_ack(), 0);
        let memory = core.drain_memory();
        assert_eq!(memory.len(), 2, "the two memory chunks go to disk");
        assert_eq!(core.disk_ack(), 0, "records 1-3 were never delivered");
        assert_eq!(core.reload_room(), None);
        core.reload(disk.0.clone(), 5, true, t0, 0);
        assert_eq!(core.disk_ack(), 0);
    }

    #[test]
    fn deliver_queue_undrain_reads_every_record_back_in_order() {
        // A removed target revived while its queue went to disk: it must
        // read back everything unacked (also what was read back before the
        // drain) before newer data, and deliver it in order.
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.queue_bytes = 2 * chunk(1, "s0", t0).records.len() as u64;
        cfg.deadline = Duration::ZERO;
        let mut core = TargetCore::new("t", cfg, 1);
        let mut disk = Disk::default();
        for i in 0..5u64 {
            core.push(0, chunk(1, &format!("s{i}"), t0), &mut disk);
        }
        core.reload(disk.0.clone(), 3, true, t0, 0);
        let memory = core.drain_memory();
        for (lane, c) in memory {
            disk.overflow(lane, c);
        }
        assert_eq!(disk.0.len(), 5);
        core.undrain(5);
        core.push(0, chunk(1, "s5", t0), &mut disk);
        assert!(core.reload_room().is_some(), "reads back again");
        // The disk queue was rewound: every unacked record comes again.
        core.reload(disk.0.clone(), 5, true, t0, 0);
        let mut names = Vec::new();
        while let Some(d) = core.poll(t0) {
            names.extend(decode(&d.body));
            core.on_result(
                d.lane,
                d.batch,
                &ok(),
                Duration::ZERO,
                t0,
                SystemTime::now(),
            );
        }
        assert_eq!(names, vec!["s0_0", "s1_0", "s2_0", "s3_0", "s4_0", "s5_0"]);
        assert_eq!(core.disk_ack(), 5);
        assert!(core.is_idle());
    }

    #[test]
    fn deliver_queue_disk_records_go_before_newer_memory_of_their_lane() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.queue_bytes = 2 * chunk(1, "s0", t0).records.len() as u64;
        cfg.deadline = Duration::ZERO;
        let mut core = TargetCore::new("t", cfg, 1);
        let mut disk = Disk::default();
        for i in 0..5u64 {
            core.push(
                0,
                chunk(1, &format!("s{i}"), t0 + Duration::from_millis(i)),
                &mut disk,
            );
        }
        assert_eq!(disk.0.len(), 3, "the oldest three went to disk");
        assert_eq!(core.counters().dropped_queue_full, 0);
        // The lane waits for its disk records: memory is not sent first.
        assert!(core.poll(t0 + Duration::from_secs(1)).is_none());
        assert!(core.reload_room().is_some());
        let recs: Vec<DiskChunk> = disk.0.drain(..2).collect();
        core.reload(recs, 3, false, t0, 0);
        let mut names = Vec::new();
        let now = t0 + Duration::from_secs(1);
        let step = |core: &mut TargetCore, names: &mut Vec<String>| {
            let d = core.poll(now)?;
            names.extend(decode(&d.body));
            core.on_result(
                d.lane,
                d.batch,
                &ok(),
                Duration::ZERO,
                now,
                SystemTime::now(),
            );
            Some(())
        };
        while step(&mut core, &mut names).is_some() {}
        assert_eq!(names, vec!["s0_0", "s1_0"], "seq 3 still on disk");
        assert_eq!(core.disk_ack(), 2);
        let recs: Vec<DiskChunk> = std::mem::take(&mut disk.0);
        core.reload(recs, 3, false, now, 0);
        core.reload(Vec::new(), 3, true, now, 0);
        while step(&mut core, &mut names).is_some() {}
        assert_eq!(names, vec!["s0_0", "s1_0", "s2_0", "s3_0", "s4_0"]);
        assert_eq!(core.disk_ack(), 3);
        assert!(core.is_idle());
    }

    #[test]
    fn deliver_queue_lane_override_keeps_lanes_and_caps_concurrency() {
        // A backlog queued under 4 lanes resumed by a target whose
        // maxConcurrency is now 2: 4 lanes (tags map as before), at most 2
        // requests in flight.
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.lanes = Some(4);
        cfg.deadline = Duration::ZERO;
        let mut core = TargetCore::new("t", cfg, 1);
        assert_eq!(core.lanes(), 4);
        let mut most = 0;
        for i in 0..50u64 {
            let now = t0 + Duration::from_secs(i);
            for shard in 0..4 {
                core.push(shard, chunk(10, &format!("s{shard}"), now), &mut DropOldest);
            }
            let mut sent = Vec::new();
            while let Some(d) = core.poll(now) {
                sent.push(d);
            }
            most = most.max(sent.len());
            for d in sent {
                core.on_result(
                    d.lane,
                    d.batch,
                    &ok(),
                    Duration::from_millis(1),
                    now,
                    SystemTime::now(),
                );
            }
        }
        assert_eq!(
            most, 2,
            "the limit grows to maxConcurrency, not to the lanes"
        );
    }

    #[test]
    fn deliver_queue_lanes_keep_order_and_limit_concurrency() {
        let t0 = Instant::now();
        let mut core = TargetCore::new("t", config(), 1);
        core.push(0, chunk(10, "l0", t0), &mut DropOldest);
        core.push(1, chunk(10, "l1", t0), &mut DropOldest);
        core.push(0, chunk(10, "l0b", t0), &mut DropOldest);
        let a = core.poll(t0).unwrap();
        assert!(core.poll(t0).is_none(), "limit starts at 1");
        assert_eq!(
            core.next_wakeup(),
            None,
            "at the concurrency limit only a result wakes the sender"
        );
        let fail = SendResult::Connect("refused".into());
        core.on_result(
            a.lane,
            a.batch,
            &fail,
            Duration::ZERO,
            t0,
            SystemTime::now(),
        );
        // Lane 0 retries its head batch before anything newer of lane 0.
        let later = t0 + Duration::from_secs(1);
        let mut lanes_seen = Vec::new();
        while let Some(d) = core.poll(later) {
            lanes_seen.push((d.lane, decode(&d.body)[0].clone()));
            core.on_result(
                d.lane,
                d.batch,
                &ok(),
                Duration::from_millis(1),
                later,
                SystemTime::now(),
            );
        }
        let lane0: Vec<_> = lanes_seen
            .iter()
            .filter(|(l, _)| *l == 0)
            .map(|(_, n)| n.as_str())
            .collect();
        assert_eq!(lane0, vec!["l0_0", "l0b_0"]);
        assert!(core.is_idle());
        // Pause stops dispatch; flush sends partial batches at once.
        core.push(0, chunk(1, "p", later), &mut DropOldest);
        core.set_paused(true);
        assert!(core.poll(later + Duration::from_secs(5)).is_none());
        assert_eq!(core.state(later), "paused");
        core.set_paused(false);
        core.set_flush(true);
        assert!(core.poll(later).is_some());
    }
}
