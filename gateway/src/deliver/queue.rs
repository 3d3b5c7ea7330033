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
/// Memory queued on a target beyond which it counts as lagging
/// ([`TargetCore::lagging`]).
pub const LAGGING_BYTES: u64 = 4 << 20;

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
    /// Lanes whose data it holds (bit `l` for lane `l`): each is busy until
    /// the batch is delivered or dropped.
    lanes: u64,
    /// Lowest lane it holds (reported in [`Dispatch::lane`]).
    first_lane: u32,
    /// Disk seqs this batch completes when delivered or dropped.
    seqs: Vec<u64>,
    /// Formed from disk records (still on disk until acked).
    from_disk: bool,
    /// Memory batches: which lane each run of the uncompressed records came
    /// from, `(lane, end offset)` in order, so a shutdown spill puts every
    /// record back under its own lane's tag.
    pieces: Vec<(u32, u32)>,
}

#[derive(Debug, Default)]
struct Lane {
    queue: VecDeque<Chunk>,
    samples: u64,
    bytes: u64,
    /// The batch holding data of this lane, not yet delivered or dropped.
    busy: Option<u64>,
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
    /// Samples lost from memory at shutdown because a batch could not be
    /// read back for the spill (counted, never silent).
    pub dropped_unreadable: u64,
}

/// Samples per second arriving at a target (pushed or read back from
/// disk), over windows of at least [`LoadMeter::WINDOW`] (for
/// [`Concurrency::on_load`]).
#[derive(Debug, Default)]
struct LoadMeter {
    since: Option<Instant>,
    samples: u64,
    rate: f64,
}

impl LoadMeter {
    const WINDOW: Duration = Duration::from_millis(250);

    /// Adds `samples` at `now`; returns the rate when a window closed.
    fn add(&mut self, samples: u32, now: Instant) -> Option<f64> {
        self.samples += u64::from(samples);
        let since = *self.since.get_or_insert(now);
        let elapsed = now.saturating_duration_since(since);
        if elapsed < Self::WINDOW {
            return None;
        }
        let rate = self.samples as f64 / elapsed.as_secs_f64();
        self.rate = if self.rate == 0.0 {
            rate
        } else {
            self.rate * 0.5 + rate * 0.5
        };
        self.since = Some(now);
        self.samples = 0;
        Some(self.rate)
    }
}

/// A target's delivery state machine.
#[derive(Debug)]
pub struct TargetCore {
    id: String,
    config: CoreConfig,
    lanes: Vec<Lane>,
    /// Batches formed and not yet delivered or dropped (in flight or
    /// waiting for a retry); at most one per lane.
    batches: Vec<Batch>,
    cursor: usize,
    in_flight: u32,
    next_batch: u64,
    concurrency: Concurrency,
    load: LoadMeter,
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
    /// [`TargetCore::close`] ran.
    closed: bool,
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
        if (series > 0 || !at_least_one) && samples.saturating_add(n) > max {
            break;
        }
        samples = samples.saturating_add(n);
        series += 1;
        end = r.pos();
    }
    (end, samples, series)
}

/// The lanes of group `g` out of `groups` (a power of two) among `n` lanes,
/// as a bit mask.
fn group_mask(g: usize, groups: usize, n: usize) -> u64 {
    (g..n).step_by(groups).fold(0u64, |m, l| m | (1u64 << l))
}

/// Lane indexes of a mask, lowest first.
fn mask_lanes(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let l = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            l
        })
    })
}

impl TargetCore {
    /// A target with `config`; `seed` seeds the jitter.
    pub fn new(id: impl Into<String>, config: CoreConfig, seed: u64) -> TargetCore {
        let lanes = (0..config.lanes()).map(|_| Lane::default()).collect();
        TargetCore {
            id: id.into(),
            concurrency: Concurrency::new(config.max_concurrency.min(config.lanes())),
            load: LoadMeter::default(),
            backoff: Backoff::new(config.max_backoff),
            config,
            lanes,
            batches: Vec::new(),
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
            closed: false,
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

    /// Lane groups in use: the concurrency limit rounded down to a power of
    /// two. A batch takes data from the lanes of one group only, so fewer
    /// groups fill batches sooner and more groups can send in parallel.
    pub fn groups(&self) -> u32 {
        let limit = self.concurrency.limit().clamp(1, self.lanes());
        1 << (31 - limit.leading_zeros())
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
        self.arrived(chunk.samples, chunk.enqueued);
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

    /// `samples` arrived at `now` (pushed or read back from disk): feeds
    /// the load meter, and the concurrency limit when a window closed.
    fn arrived(&mut self, samples: u32, now: Instant) {
        if let Some(rate) = self.load.add(samples, now) {
            let backlog = self.backlog();
            self.concurrency
                .on_load(rate, self.config.max_samples, backlog, now);
        }
    }

    /// Whether this target is falling behind: failing, or holding more than
    /// [`LAGGING_BYTES`] in memory. Chunks queued on a lagging target are
    /// copied out of their request's buffer, so a backlog pins only its own
    /// bytes, not whole requests that other targets already sent.
    pub fn lagging(&self) -> bool {
        self.failing_since.is_some() || self.queue_bytes > LAGGING_BYTES
    }

    /// The sender stopped for good (the target left the registry and
    /// drained): [`Self::push`] must not be called any more; the caller
    /// counts what it would have pushed as dropped.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Whether [`Self::close`] ran.
    pub fn closed(&self) -> bool {
        self.closed
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
    /// them. A batch that cannot be read back (it never fails for bytes this
    /// core compressed) is counted in [`Counters::dropped_unreadable`].
    pub fn drain_memory(&mut self) -> Vec<(u32, Chunk)> {
        self.read_through = self.disk_ack();
        self.drained = true;
        let mut from_batches: Vec<Vec<Chunk>> = (0..self.lanes.len()).map(|_| Vec::new()).collect();
        for b in self.batches.drain(..) {
            if b.sending {
                self.in_flight = self.in_flight.saturating_sub(1);
            }
            if b.from_disk {
                continue;
            }
            let raw = match fanout_proto::snappy::decompress(&b.body, 256 << 20) {
                Ok(raw) => raw,
                Err(e) => {
                    tracing::error!(target_id = %self.id, samples = b.samples, error = %e,
                        "delivery: a batch could not be read back for the shutdown spill; its samples are lost");
                    self.counters.dropped_unreadable += u64::from(b.samples);
                    continue;
                }
            };
            let mut start = 0usize;
            for &(lane, end) in &b.pieces {
                let records = raw.slice(start..end as usize);
                start = end as usize;
                let (_, samples, series) = split_point(&records, u32::MAX, true);
                from_batches[lane as usize].push(Chunk {
                    records,
                    samples,
                    series,
                    enqueued: b.oldest,
                    permit: None,
                });
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

    /// Free lanes of `mask` with reloaded disk records (sent first).
    fn disk_lanes(&self, mask: u64) -> u64 {
        mask_lanes(mask)
            .filter(|&l| self.lanes[l].busy.is_none() && !self.lanes[l].disk.is_empty())
            .fold(0, |m, l| m | (1 << l))
    }

    /// Free lanes of `mask` whose memory queue may be sent: nothing of the
    /// lane is on disk or read back and waiting.
    fn memory_lanes(&self, mask: u64) -> u64 {
        mask_lanes(mask)
            .filter(|&l| {
                let lane = &self.lanes[l];
                lane.busy.is_none()
                    && lane.disk.is_empty()
                    && lane.disk_through <= self.read_through
                    && !lane.queue.is_empty()
            })
            .fold(0, |m, l| m | (1 << l))
    }

    /// When the memory lanes `mask` are due: at once when flushing or when
    /// they hold a full batch, else when their oldest chunk reaches the
    /// deadline.
    fn memory_due(&self, mask: u64) -> Option<Instant> {
        let mut samples = 0u64;
        let mut oldest: Option<Instant> = None;
        for l in mask_lanes(mask) {
            let lane = &self.lanes[l];
            samples += lane.samples;
            if let Some(front) = lane.queue.front() {
                oldest = Some(oldest.map_or(front.enqueued, |o| o.min(front.enqueued)));
            }
        }
        let oldest = oldest?;
        if self.flush || samples >= u64::from(self.config.max_samples) {
            Some(oldest)
        } else {
            Some(oldest + self.config.deadline)
        }
    }

    /// The next batch to send now, if the limit and the lanes allow one.
    /// Call until `None`.
    pub fn poll(&mut self, now: Instant) -> Option<Dispatch> {
        // An idle target's meter closes its window here (nothing arrives).
        self.arrived(0, now);
        if self.paused || self.in_flight >= self.concurrency.limit() {
            return None;
        }
        // Retries first: they hold their lanes until delivered.
        if let Some(b) = self
            .batches
            .iter_mut()
            .filter(|b| !b.sending && now >= b.not_before)
            .min_by_key(|b| b.id)
        {
            b.sending = true;
            b.attempts += 1;
            self.counters.retries += 1;
            self.in_flight += 1;
            return Some(Dispatch {
                lane: b.first_lane,
                batch: b.id,
                body: b.body.clone(),
                attempt: b.attempts,
                samples: b.samples,
            });
        }
        let n = self.lanes.len();
        let groups = self.groups() as usize;
        for k in 0..groups {
            let g = (self.cursor + k) % groups;
            let mask = group_mask(g, groups, n);
            let disk = self.disk_lanes(mask);
            let d = if disk != 0 {
                self.form_batch(disk, true, now)
            } else {
                let memory = self.memory_lanes(mask);
                match self.memory_due(memory) {
                    Some(due) if due <= now => self.form_batch(memory, false, now),
                    _ => continue,
                }
            };
            self.in_flight += 1;
            self.cursor = g + 1;
            return Some(d);
        }
        None
    }

    /// The lane of `mask` whose front is oldest: the lowest seq among disk
    /// queues, the earliest enqueued among memory queues (ties: lowest lane).
    fn oldest_lane(&self, mask: u64, from_disk: bool) -> Option<usize> {
        if from_disk {
            mask_lanes(mask)
                .filter_map(|l| self.lanes[l].disk.front().map(|(seq, _)| (*seq, l)))
                .min()
                .map(|(_, l)| l)
        } else {
            mask_lanes(mask)
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
    fn form_batch(&mut self, mask: u64, from_disk: bool, now: Instant) -> Dispatch {
        let max = self.config.max_samples.max(1);
        self.scratch.clear();
        let mut samples = 0u32;
        let mut oldest = now;
        let mut seqs = Vec::new();
        let mut pieces: Vec<(u32, u32)> = Vec::new();
        let mut taken = 0u64;
        while samples < max {
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
            let (end, s) = if front.samples <= room {
                (front.records.len(), front.samples)
            } else {
                let (end, s, _) = split_point(&front.records, room, samples == 0);
                (end, s)
            };
            if end == 0 {
                break;
            }
            oldest = oldest.min(front.enqueued);
            self.scratch.extend_from_slice(&front.records[..end]);
            taken |= 1 << l;
            let split = end < front.records.len();
            if split {
                // The rest stays at the head (a disk seq completes with the
                // batch that takes its rest).
                front.records = front.records.slice(end..);
                front.samples = front.samples.saturating_sub(s);
                if from_disk {
                    self.reload_bytes -= end as u64;
                    self.reload_samples -= u64::from(s);
                } else {
                    lane.samples -= u64::from(s);
                    lane.bytes -= end as u64;
                    self.queue_samples -= u64::from(s);
                    self.queue_bytes -= end as u64;
                }
            } else if from_disk {
                if let Some((seq, c)) = lane.disk.pop_front() {
                    self.reload_bytes -= c.records.len() as u64;
                    self.reload_samples -= u64::from(c.samples);
                    seqs.push(seq);
                }
            } else {
                let _ = self.pop_front(l);
            }
            samples = samples.saturating_add(s);
            let end = self.scratch.len() as u32;
            match pieces.last_mut() {
                Some((pl, e)) if *pl == l as u32 => *e = end,
                _ => pieces.push((l as u32, end)),
            }
            if split {
                break;
            }
        }
        if from_disk {
            pieces = Vec::new();
        }
        let body = Bytes::from(fanout_proto::snappy::compress(&self.scratch));
        if self.scratch.capacity() > 16 << 20 {
            self.scratch = BytesMut::new();
        }
        let id = self.next_batch;
        self.next_batch += 1;
        for l in mask_lanes(taken) {
            self.lanes[l].busy = Some(id);
        }
        let first_lane = taken.trailing_zeros().min(63);
        self.batches.push(Batch {
            id,
            body: body.clone(),
            samples,
            oldest,
            attempts: 1,
            sending: true,
            not_before: now,
            lanes: taken,
            first_lane,
            seqs,
            from_disk,
            pieces,
        });
        Dispatch {
            lane: first_lane,
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
        let retry = self
            .batches
            .iter()
            .filter(|b| !b.sending)
            .map(|b| b.not_before)
            .min();
        let n = self.lanes.len();
        let groups = self.groups() as usize;
        let formed = (0..groups)
            .filter_map(|g| {
                let mask = group_mask(g, groups, n);
                let disk = self.disk_lanes(mask);
                if disk != 0 {
                    return mask_lanes(disk)
                        .filter_map(|l| self.lanes[l].disk.front().map(|(_, c)| c.enqueued))
                        .min();
                }
                self.memory_due(self.memory_lanes(mask))
            })
            .min();
        match (retry, formed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Records the result of attempt `batch` (sent on `lane`, its lowest
    /// lane), which took `latency`.
    pub fn on_result(
        &mut self,
        lane: u32,
        batch: u64,
        result: &SendResult,
        latency: Duration,
        now: Instant,
        wall: SystemTime,
    ) -> Event {
        let _ = lane;
        let Some(at) = self.batches.iter().position(|b| b.id == batch && b.sending) else {
            return Event::Stale;
        };
        self.in_flight = self.in_flight.saturating_sub(1);
        if matches!(result, SendResult::Status { .. }) {
            let us = latency.as_micros().clamp(1, 3_600_000_000) as u64;
            let _ = self.latency_us.record(us);
        }
        match classify(result) {
            Verdict::Done => {
                let b = self.finish(at);
                let bytes = b.body.len() as u64;
                self.counters.samples_sent += u64::from(b.samples);
                self.counters.bytes_sent += bytes;
                self.counters.requests_sent += 1;
                self.failing_since = None;
                let backlog = self.backlog();
                self.concurrency.on_success(latency, backlog, now);
                Event::Sent {
                    samples: b.samples,
                    bytes,
                }
            }
            Verdict::Retry {
                kind,
                status,
                retry_after,
                message,
            } => {
                let b = &mut self.batches[at];
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
                let b = self.finish(at);
                *self
                    .counters
                    .failures
                    .entry(status.to_string())
                    .or_default() += 1;
                self.counters.dropped_rejected += u64::from(b.samples);
                self.last_error = Some(LastError {
                    time: wall,
                    status: Some(status),
                    message: message.clone(),
                });
                Event::Dropped {
                    status,
                    samples: b.samples,
                    message,
                }
            }
        }
    }

    /// More than two full batches per lane group are waiting: one request
    /// per group in flight does not keep up.
    fn backlog(&self) -> bool {
        let waiting = self.queue_samples + self.reload_samples;
        waiting > 2 * u64::from(self.config.max_samples) * u64::from(self.groups())
    }

    /// Takes batch `at` out (delivered or dropped): frees its lanes and
    /// completes its disk seqs.
    fn finish(&mut self, at: usize) -> Batch {
        let b = self.batches.swap_remove(at);
        for s in &b.seqs {
            self.outstanding.remove(s);
        }
        for l in mask_lanes(b.lanes) {
            if self.lanes[l].busy == Some(b.id) {
                self.lanes[l].busy = None;
            }
        }
        b
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
        self.batches.is_empty()
            && self.lanes.iter().all(|l| {
                l.queue.is_empty() && l.disk.is_empty() && l.disk_through <= self.read_through
            })
    }

    /// Nothing in memory (queued, reloaded or in a batch); disk records may
    /// remain.
    pub fn memory_empty(&self) -> bool {
        self.batches.is_empty()
            && self
                .lanes
                .iter()
                .all(|l| l.queue.is_empty() && l.disk.is_empty())
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
                .batches
                .iter()
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
            })
            .chain(self.batches.iter().map(|b| b.oldest))
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

    /// Records of one series `name`, one sample per value.
    fn series_records(name: &str, values: &[u64]) -> Bytes {
        let req = fanout_proto::v1::WriteRequest {
            timeseries: values
                .iter()
                .map(|&v| fanout_proto::v1::TimeSeries {
                    labels: vec![fanout_proto::v1::Label {
                        name: "__name__".into(),
                        value: name.into(),
                    }],
                    samples: vec![fanout_proto::v1::Sample {
                        value: v as f64,
                        timestamp: 1,
                    }],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        Bytes::from(prost::Message::encode_to_vec(&req))
    }

    /// (series name, value) of every sample in a batch body, in order.
    fn samples_of(body: &Bytes) -> Vec<(String, u64)> {
        let raw = fanout_proto::snappy::decompress(body, 1 << 24).unwrap();
        let req: fanout_proto::v1::WriteRequest = prost::Message::decode(raw).unwrap();
        req.timeseries
            .into_iter()
            .flat_map(|t| {
                let name = t.labels[0].value.clone();
                t.samples
                    .into_iter()
                    .map(move |s| (name.clone(), s.value as u64))
            })
            .collect()
    }

    #[test]
    fn deliver_queue_one_group_fills_a_batch_from_every_lane() {
        // 16 lanes, limit 1: a batch takes the oldest data of every lane,
        // so 16 chunks of 125 samples make one full batch at once instead of
        // 16 partial ones waiting for the deadline.
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.max_samples = 2000;
        cfg.max_concurrency = 16;
        let mut core = TargetCore::new("t", cfg, 1);
        assert_eq!(core.groups(), 1);
        for lane in 0..16u32 {
            core.push(lane, chunk(125, &format!("l{lane}"), t0), &mut DropOldest);
        }
        let d = core.poll(t0).expect("a full batch at once");
        assert_eq!(d.samples, 2000);
        assert_eq!(core.queue_samples(), 0);
        // Every lane is busy until it is delivered: nothing else goes.
        core.push(3, chunk(2000, "more", t0), &mut DropOldest);
        assert!(core.poll(t0).is_none());
        core.on_result(
            d.lane,
            d.batch,
            &ok(),
            Duration::from_millis(2),
            t0,
            SystemTime::now(),
        );
        assert_eq!(core.poll(t0).expect("next").samples, 2000);
    }

    #[test]
    fn deliver_queue_series_larger_than_max_samples_goes_alone_without_underflow() {
        // A series with more samples than maxSamplesPerSend makes a batch of
        // its own (it cannot be split); what follows goes in the next batch.
        let t0 = Instant::now();
        let mut core = TargetCore::new("t", config(), 1);
        let big: Vec<u64> = (0..25).collect();
        let records = series_records("big", &big);
        core.push(
            0,
            Chunk {
                records: records.clone(),
                samples: 25,
                series: 25,
                enqueued: t0,
                permit: None,
            },
            &mut DropOldest,
        );
        core.push(0, chunk(3, "after", t0), &mut DropOldest);
        let d = core.poll(t0).expect("full");
        assert_eq!(d.samples, 10, "records are one sample each: 10 fit");
        core.on_result(
            d.lane,
            d.batch,
            &ok(),
            Duration::ZERO,
            t0,
            SystemTime::now(),
        );
        let mut total = d.samples;
        while let Some(d) = core.poll(t0 + Duration::from_secs(2)) {
            total += d.samples;
            core.on_result(
                d.lane,
                d.batch,
                &ok(),
                Duration::ZERO,
                t0,
                SystemTime::now(),
            );
        }
        assert_eq!(total, 28);
        // One record with 25 samples (a histogram-heavy series): alone.
        let req = fanout_proto::v1::WriteRequest {
            timeseries: vec![fanout_proto::v1::TimeSeries {
                labels: vec![fanout_proto::v1::Label {
                    name: "__name__".into(),
                    value: "huge".into(),
                }],
                samples: (0..25)
                    .map(|i| fanout_proto::v1::Sample {
                        value: i as f64,
                        timestamp: i,
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let huge = Bytes::from(prost::Message::encode_to_vec(&req));
        for _ in 0..2 {
            core.push(
                0,
                Chunk {
                    records: huge.clone(),
                    samples: 25,
                    series: 1,
                    enqueued: t0,
                    permit: None,
                },
                &mut DropOldest,
            );
        }
        let a = core.poll(t0).expect("first huge series alone");
        assert_eq!(a.samples, 25);
        core.on_result(
            a.lane,
            a.batch,
            &ok(),
            Duration::ZERO,
            t0,
            SystemTime::now(),
        );
        let b = core.poll(t0).expect("second");
        assert_eq!(b.samples, 25);
    }

    #[test]
    fn deliver_queue_shutdown_drain_puts_a_batch_back_under_each_lane() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.max_concurrency = 4;
        let mut core = TargetCore::new("t", cfg, 1);
        core.push(0, chunk(3, "a", t0), &mut DropOldest);
        core.push(
            1,
            chunk(3, "b", t0 + Duration::from_millis(1)),
            &mut DropOldest,
        );
        core.push(
            0,
            chunk(3, "c", t0 + Duration::from_millis(2)),
            &mut DropOldest,
        );
        core.push(
            1,
            chunk(3, "d", t0 + Duration::from_millis(3)),
            &mut DropOldest,
        );
        let d = core.poll(t0).expect("full batch over lanes 0 and 1");
        assert_eq!(
            decode(&d.body),
            ["a_0", "a_1", "a_2", "b_0", "b_1", "b_2", "c_0", "c_1", "c_2", "d_0"]
        );
        let fail = SendResult::Connect("refused".into());
        core.on_result(
            d.lane,
            d.batch,
            &fail,
            Duration::ZERO,
            t0,
            SystemTime::now(),
        );
        let drained: Vec<(u32, Vec<String>)> = core
            .drain_memory()
            .into_iter()
            .map(|(lane, c)| {
                let mut raw = BytesMut::new();
                raw.extend_from_slice(&c.records);
                let body = Bytes::from(fanout_proto::snappy::compress(&raw));
                (lane, decode(&body))
            })
            .collect();
        let lane = |n: u32| -> Vec<String> {
            drained
                .iter()
                .filter(|(l, _)| *l == n)
                .flat_map(|(_, names)| names.clone())
                .collect()
        };
        assert_eq!(lane(0), ["a_0", "a_1", "a_2", "c_0", "c_1", "c_2"]);
        assert_eq!(lane(1), ["b_0", "b_1", "b_2", "d_0", "d_1", "d_2"]);
        assert!(core.memory_empty());
    }

    #[test]
    fn deliver_queue_groups_follow_load() {
        // A backlog grows the limit (and so the lane groups); a load that a
        // quarter of them carries shrinks it again within seconds.
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.max_samples = 100;
        cfg.max_concurrency = 16;
        cfg.deadline = Duration::from_millis(50);
        let mut core = TargetCore::new("t", cfg, 1);
        let mut now = t0;
        let mut most = 0;
        for _ in 0..200 {
            now += Duration::from_millis(10);
            for lane in 0..16 {
                core.push(lane, chunk(20, "x", now), &mut DropOldest);
            }
            let mut sent = Vec::new();
            while let Some(d) = core.poll(now) {
                sent.push(d);
            }
            for d in sent {
                core.on_result(
                    d.lane,
                    d.batch,
                    &ok(),
                    Duration::from_millis(10),
                    now,
                    SystemTime::now(),
                );
            }
            most = most.max(core.groups());
        }
        assert!(most >= 4, "grew under a backlog: {most}");
        for _ in 0..600 {
            now += Duration::from_millis(10);
            core.push(0, chunk(1, "slow", now), &mut DropOldest);
            while let Some(d) = core.poll(now) {
                core.on_result(
                    d.lane,
                    d.batch,
                    &ok(),
                    Duration::from_millis(10),
                    now,
                    SystemTime::now(),
                );
            }
        }
        assert_eq!(core.groups(), 1, "shrank at a light load");
    }

    mod sim {
        //! A randomized simulation of one target: pushes on random lanes,
        //! a memory bound that overflows to a (fake) disk read back later,
        //! attempts that succeed, fail and retry, or are rejected, pauses,
        //! live config changes, and time passing. Every sample must reach the
        //! target in order per series, exactly once unless its batch was
        //! rejected.
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Push {
                lane: u32,
                n: u8,
            },
            Advance {
                ms: u16,
            },
            Complete {
                pick: u8,
                outcome: u8,
            },
            Reload,
            Pause(bool),
            Reconfigure {
                max_concurrency: u8,
                max_samples: u8,
            },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0u32..8, 1u8..6).prop_map(|(lane, n)| Op::Push { lane, n }),
                2 => (0u16..300).prop_map(|ms| Op::Advance { ms }),
                4 => (any::<u8>(), 0u8..10).prop_map(|(pick, outcome)| Op::Complete { pick, outcome }),
                1 => Just(Op::Reload),
                1 => any::<bool>().prop_map(Op::Pause),
                1 => (1u8..9, 1u8..12).prop_map(|(max_concurrency, max_samples)| Op::Reconfigure { max_concurrency, max_samples }),
            ]
        }

        struct World {
            core: TargetCore,
            disk: Disk,
            fed: usize,
            now: Instant,
            next_value: u64,
            flying: Vec<Dispatch>,
            delivered: BTreeMap<String, Vec<u64>>,
            rejected: BTreeSet<(String, u64)>,
            pushed: BTreeSet<(String, u64)>,
        }

        impl World {
            fn poll(&mut self) {
                while let Some(d) = self.core.poll(self.now) {
                    self.flying.push(d);
                }
            }

            fn complete(&mut self, at: usize, outcome: u8) {
                let d = self.flying.swap_remove(at);
                let result = match outcome {
                    0..=5 => ok(),
                    6 => SendResult::Status {
                        status: 400,
                        retry_after: None,
                        body: "bad".into(),
                    },
                    7 => SendResult::Timeout,
                    8 => SendResult::Status {
                        status: 503,
                        retry_after: None,
                        body: String::new(),
                    },
                    _ => SendResult::Connect("refused".into()),
                };
                let ev = self.core.on_result(
                    d.lane,
                    d.batch,
                    &result,
                    Duration::from_millis(3),
                    self.now,
                    SystemTime::now(),
                );
                match ev {
                    Event::Sent { samples, .. } => {
                        let got = samples_of(&d.body);
                        assert_eq!(got.len() as u32, samples);
                        for (name, v) in got {
                            self.delivered.entry(name).or_default().push(v);
                        }
                    }
                    Event::Dropped { .. } => {
                        self.rejected.extend(samples_of(&d.body));
                    }
                    Event::Retrying { .. } => {}
                    Event::Stale => panic!("a dispatch in flight was stale"),
                }
            }

            fn reload(&mut self) {
                if self.core.reload_room().is_some() {
                    let recs = self.disk.0[self.fed..].to_vec();
                    self.fed = self.disk.0.len();
                    self.core
                        .reload(recs, self.disk.0.len() as u64, true, self.now, 0);
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
            #[test]
            fn deliver_queue_sim_keeps_order_per_series_and_loses_nothing(
                ops in proptest::collection::vec(op(), 1..250),
                max_concurrency in 1u32..9,
                max_samples in 1u32..12,
                queue_records in 2u64..40,
            ) {
                let t0 = Instant::now();
                let one = series_records("L0", &[1]).len() as u64;
                let cfg = CoreConfig {
                    max_samples,
                    deadline: Duration::from_millis(100),
                    max_concurrency,
                    max_backoff: Duration::from_millis(200),
                    queue_bytes: queue_records * one,
                    lanes: None,
                };
                let lanes = cfg.lanes();
                let mut w = World {
                    core: TargetCore::new("t", cfg.clone(), 3),
                    disk: Disk::default(),
                    fed: 0,
                    now: t0,
                    next_value: 1,
                    flying: Vec::new(),
                    delivered: BTreeMap::new(),
                    rejected: BTreeSet::new(),
                    pushed: BTreeSet::new(),
                };
                for op in ops {
                    match op {
                        Op::Push { lane, n } => {
                            // One series per lane: its order is the lane's.
                            let name = format!("L{}", lane % lanes);
                            let values: Vec<u64> = (0..u64::from(n)).map(|i| w.next_value + i).collect();
                            w.next_value += u64::from(n);
                            for &v in &values {
                                w.pushed.insert((name.clone(), v));
                            }
                            let chunk = Chunk {
                                records: series_records(&name, &values),
                                samples: u32::from(n),
                                series: u32::from(n),
                                enqueued: w.now,
                                permit: None,
                            };
                            w.core.push(lane, chunk, &mut w.disk);
                        }
                        Op::Advance { ms } => w.now += Duration::from_millis(u64::from(ms)),
                        Op::Complete { pick, outcome } => {
                            if !w.flying.is_empty() {
                                let at = usize::from(pick) % w.flying.len();
                                w.complete(at, outcome);
                            }
                        }
                        Op::Reload => w.reload(),
                        Op::Pause(p) => w.core.set_paused(p),
                        Op::Reconfigure { max_concurrency, max_samples } => {
                            let mut c = cfg.clone();
                            c.max_concurrency = u32::from(max_concurrency);
                            c.max_samples = u32::from(max_samples);
                            w.core.reconfigure("t", c);
                        }
                    }
                    w.poll();
                }
                // Then the target comes back for good: everything drains.
                w.core.set_paused(false);
                w.core.set_flush(true);
                for _ in 0..100_000 {
                    w.reload();
                    w.poll();
                    if w.flying.is_empty() {
                        if w.core.is_idle() {
                            break;
                        }
                        w.now += Duration::from_millis(50);
                        continue;
                    }
                    w.complete(0, 0);
                }
                prop_assert!(w.core.is_idle(), "drained");
                prop_assert_eq!(w.core.counters().dropped_queue_full, 0);
                let mut seen = BTreeSet::new();
                for (name, values) in &w.delivered {
                    prop_assert!(values.windows(2).all(|p| p[0] < p[1]), "{} out of order or duplicated: {:?}", name, values);
                    seen.extend(values.iter().map(|v| (name.clone(), *v)));
                }
                let missing: Vec<_> = w.pushed.difference(&seen).filter(|k| !w.rejected.contains(k)).collect();
                prop_assert!(missing.is_empty(), "lost: {:?}", missing);
                prop_assert_eq!(w.core.disk_ack(), w.disk.0.len() as u64, "every disk record acked");
            }
        }
    }
}
