//! One target's queue, batching, retries and concurrency: a plain state
//! machine ([`TargetCore`]) that takes `now` as an argument. The sender
//! adapter (`service/sender.rs`) calls [`TargetCore::poll`] for batches to
//! send and [`TargetCore::on_result`] with each attempt's outcome.
//!
//! # Lanes and order
//! A target has `maxConcurrency` lanes rounded up to a power of two (at most
//! [`MAX_LANES`]; a target that resumes a backlog, or whose config changed
//! live, keeps the lane count its records were queued with:
//! [`CoreConfig::lanes`], [`TargetCore::reconfigure`]). A lane is in at most
//! one batch at a time and a retry resends the same batch, so what one lane
//! holds reaches the target in the order it was pushed (SPEC §5).
//!
//! # Width
//! The router cuts a request's records for a set of targets into shards by
//! a hash of each series' family and Deployment (`route::shard_hash`); a
//! push ([`TargetCore::begin_cut`]) takes shard `s` into lane `s % width`,
//! where the *width* is the lane groups (below), held for [`SHRINK_AFTER`]
//! after it grew. So a series' lane is its hash modulo the width, and it
//! moves when the width changes. Then each lane `x` of the new width whose
//! series may have older data elsewhere gets a `Gate`: the lanes `from`
//! where that data can be (the series' hash modulo every width that data
//! still pending was pushed under: `widths`, forgotten below the oldest
//! pending push), the push and the highest disk seq at the change. A chunk
//! of lane `x` pushed at or after the gate waits while a lane of `from`
//! holds data pushed before it (queued or in a batch not yet done) or a disk
//! record at or below the seq (raised when older data spills later). After
//! a doubling the old lanes wait for nothing and each new lane for one old
//! lane. Gates cannot deadlock: a chunk waits only for data older than
//! itself. A gated chunk that spills keeps its gate on disk (`disk_gates`):
//! read back it waits for the records written before it in the gate's
//! lanes. Recovered backlogs go before any new data
//! ([`TargetCore::set_recovered`]), in the order written, one batch at a
//! time.
//!
//! # Lane groups (lanes follow load)
//! The lanes are split into groups: the adaptive limit ([`Concurrency`])
//! rounded down to a power of two, group `g` holding the lanes `l` with
//! `l % groups == g` ([`TargetCore::groups`]). A batch takes data from the
//! free lanes of one group only and makes every lane it took from busy until
//! it is delivered or dropped. At moderate load there is one group, so a
//! batch fills from every lane at once; the limit follows the arriving load
//! (Little's law over grown batches, in `policy`).
//!
//! # Batches
//! A lane's queue holds [`Chunk`]s: runs of encoded `TimeSeries` records
//! shared (refcounted `Bytes`) with every other target that needs the same
//! label variant. A batch is due at `maxSamplesPerSend` and takes the
//! oldest chunks across its lanes up to five times that when more waits
//! (grown batches, `batch.rs`), splitting a chunk at a record boundary when needed
//! (only a single series with more samples than the maximum makes a larger
//! batch). It is sent when full or when its oldest chunk waited
//! `batchSendDeadline`, and is compressed once: every retry sends the same
//! bytes. A chunk given to several targets is compressed once for all of
//! them, as a snappy part ([`Packed`]); the body is a header plus the parts.
//! Other batches go Deployment by Deployment, compressed as one block. A batch
//! keeps the chunks it was made of until it is done (the shutdown spill puts
//! them back under their lanes).
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
//!
//! # Files
//! - `types.rs`: the types at the core's edges: [`Chunk`], the [`Overflow`]
//!   seam, [`DiskChunk`], [`CoreConfig`], [`Dispatch`], [`Event`],
//!   [`LastError`], [`Counters`];
//! - `records.rs`: counting and splitting encoded `TimeSeries` records;
//! - `groups.rs`: lane groups as bit masks, and the load meter that sizes
//!   them;
//! - `disk.rs`: disk records (spilled, recovered, read back, acked) and the
//!   shutdown drain;
//! - this file: [`TargetCore`]: pushes, batches, results, state.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use super::accounting::{Accounts, DropReason, PairStatus};
use super::policy::{classify, Backoff, Concurrency, SendResult, Verdict, MAX_RETRY_AFTER};
use bytes::{Bytes, BytesMut};

mod batch;
mod disk;
mod gauges;
mod groups;
mod parts;
mod records;
mod types;

use groups::{group_mask, mask_lanes, LoadMeter};
pub use parts::{Packed, Slot};
use records::split_point;
pub use types::{
    lanes_for, Chunk, ChunkOwners, CoreConfig, Counters, DiskChunk, Dispatch, DropOldest, Event,
    LastError, Overflow, OwnerRun,
};

/// Most lanes (concurrent in-order streams) of one target.
pub const MAX_LANES: u32 = 64;
const _: () = assert!(MAX_LANES.is_power_of_two());
/// A target whose failures last longer than this is `failing`.
pub const FAILING_AFTER: Duration = Duration::from_secs(30);
/// How long after the width last grew it may shrink ([`TargetCore::begin_cut`]):
/// each change gates lanes until their older data is delivered, so the
/// width does not follow every dip of the load (on dense-100 at saturation
/// a width that followed every halving sent 56 bytes per sample per target,
/// held for 1 s 45, held for 10 s 52: fewer, larger chunks per request).
pub const SHRINK_AFTER: Duration = Duration::from_secs(1);
/// The width a failing target's pushes are cut by at least (its lane
/// count if smaller): [`TargetCore::width`].
pub const FAILING_WIDTH: u32 = 4;
/// Memory queued on a target beyond which it counts as lagging
/// ([`TargetCore::lagging`]).
pub const LAGGING_BYTES: u64 = 4 << 20;
/// The shortest interval between recovery probes of a failing target.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// Probes go every 1/this of how long the target has been failing.
pub const PROBE_FRACTION: u32 = 120;
/// The batch id of a recovery probe (batches count from 1).
const PROBE_BATCH: u64 = 0;
/// An empty remote-write request: a snappy block of no bytes.
const EMPTY_WRITE: &[u8] = &[0];

/// The lowest lane of a batch's lane mask (reported in [`Dispatch::lane`]).
fn first_lane(lanes: u64) -> u32 {
    lanes.trailing_zeros().min(63)
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
    /// Disk seqs this batch completes when delivered or dropped.
    seqs: Vec<u64>,
    /// The lowest push of its memory chunks (`u64::MAX` for a disk batch,
    /// whose `seqs` say how old it is), for the lane gates.
    min_push: u64,
    /// Memory batches: the queued chunks (or parts) it was made of, with
    /// their lanes, in order: a shutdown spill puts every record back under
    /// its own lane's tag without reading the compressed body (whose
    /// records may be in another order: Deployment by Deployment). They
    /// keep their memory permits until the batch is done.
    pieces: Vec<(u32, Chunk)>,
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
    /// Lane gates, ascending ([`TargetCore::begin_cut`]): a chunk pushed at
    /// or after a gate waits until the gate's lanes hold nothing older.
    gates: Vec<Gate>,
}

/// A lane gate, set at push `push` on a lane whose series may have older
/// data in the lanes of `from` (bit `l` for lane `l`): older is what was
/// pushed before `push` (queued, or in a batch not yet done), and what is
/// on disk at or below seq `seq` (raised when older data spills later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gate {
    push: u64,
    seq: u64,
    from: u64,
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
    /// After a 413: batches hold at most this many samples (halved at each
    /// 413, doubled after 16 successes in a row, until `maxSamplesPerSend`).
    split_cap: Option<u32>,
    /// Successes in a row at `split_cap`.
    split_ok: u32,
    /// Batches may grow past `maxSamplesPerSend` when behind (until a 413
    /// or a `maxBytesPerSend` cut: [`TargetCore::grown_max`]).
    grow: bool,
    /// Pushes so far ([`Self::begin_push`]), stamped on each chunk.
    pushes: u64,
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
    /// Recovery probes ([`Self::poll`]): one in flight, when the last
    /// answered, and no probe before this (a `Retry-After`).
    probe_in_flight: bool,
    probe_last: Option<Instant>,
    probe_hold: Option<Instant>,
    /// A probe's 2xx released the waiting batches ([`Self::on_probe`]).
    probe_released: bool,
    /// No more probes until a batch is delivered: a released batch failed
    /// again (the endpoint takes empty writes but not data: an overload
    /// that only real series hit), or the target answered 429.
    probe_spent: bool,
    counters: Counters,
    /// Per Deployment ([`Chunk::owner`]).
    accounts: Accounts,
    last_error: Option<LastError>,
    /// Made at the first answer: 26 KiB a target, which an idle one (of
    /// thousands) should not hold.
    latency_us: Option<Box<hdrhistogram::Histogram<u64>>>,
    scratch: BytesMut,
    /// Every disk seq up to this one was read back (or dropped from disk).
    read_through: u64,
    /// No memory chunk goes until the disk is acked through this seq
    /// ([`TargetCore::set_barrier`]; 0: none).
    barrier: u64,
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
    /// The width of the last [`TargetCore::begin_cut`] (0: none yet).
    last_width: u32,
    /// (push, width) of each width since the oldest data still pending
    /// was pushed, oldest first ([`TargetCore::forget_widths`]).
    widths: VecDeque<(u64, u32)>,
    /// When the width last grew: it shrinks only [`SHRINK_AFTER`] later.
    grown_at: Option<Instant>,
    /// Lane gates set and not yet lifted, over all lanes.
    gated: usize,
    /// The gates of chunks that went to disk while they waited at one, by
    /// disk seq: read back, such a record waits like it did in memory.
    disk_gates: BTreeMap<u64, (usize, Gate)>,
}

impl TargetCore {
    /// A target with `config`; `seed` seeds the jitter.
    pub fn new(id: impl Into<String>, config: CoreConfig, seed: u64) -> TargetCore {
        let lanes = (0..config.lanes()).map(|_| Lane::default()).collect();
        let grow = config.grow;
        TargetCore {
            id: id.into(),
            concurrency: Concurrency::new(config.max_concurrency.min(config.lanes())),
            load: LoadMeter::default(),
            backoff: Backoff::new(config.max_backoff),
            config,
            lanes,
            batches: Vec::new(),
            cursor: 0,
            pushes: 0,
            split_cap: None,
            split_ok: 0,
            grow,
            in_flight: 0,
            next_batch: 1,
            rng: fastrand::Rng::with_seed(seed),
            paused: false,
            flush: false,
            queue_bytes: 0,
            queue_samples: 0,
            failing_since: None,
            probe_in_flight: false,
            probe_last: None,
            probe_hold: None,
            probe_released: false,
            probe_spent: false,
            counters: Counters {
                highest_sent_ms: i64::MIN,
                ..Counters::default()
            },
            accounts: Accounts::default(),
            last_error: None,
            latency_us: None,
            scratch: BytesMut::new(),
            read_through: 0,
            barrier: 0,
            outstanding: BTreeSet::new(),
            reload_bytes: 0,
            reload_samples: 0,
            drained: false,
            closed: false,
            last_width: 0,
            widths: VecDeque::new(),
            grown_at: None,
            gated: 0,
            disk_gates: BTreeMap::new(),
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

    /// The width the router cuts this target's share of a request by
    /// ([`TargetCore::begin_cut`]): its lane groups, but not below the
    /// current width until [`SHRINK_AFTER`] after it last grew.
    pub fn width(&self, now: Instant) -> u32 {
        let mut groups = self.groups();
        if self.failing() {
            // What waits for a failing endpoint is spread over lanes by
            // series, so that when it comes back the backlog drains over
            // that many requests at a time as its limit grows, not as one
            // lane's sequence of round trips.
            groups = groups.max(FAILING_WIDTH.min(self.lanes()));
        }
        let hold = self
            .grown_at
            .is_some_and(|t| now.saturating_duration_since(t) < SHRINK_AFTER);
        if hold {
            groups.max(self.last_width)
        } else {
            groups
        }
    }

    /// Starts a push ([`Self::begin_push`]) of chunks cut by series hash
    /// into at least `shards` shards (a power of two; the fewest among the
    /// push's chunks), pushed with [`Self::push_cut`]. The push's width is
    /// that, at most this target's lane groups, for all its chunks: a
    /// series' lane is its hash modulo the width. The width grows at once
    /// and shrinks only [`SHRINK_AFTER`] after it last grew. When it
    /// changes, each lane that may now receive series whose older data
    /// sits in other lanes gets a gate at this push (module docs, "Width"):
    /// what it receives from now on waits until those lanes hold nothing
    /// older. A lane waits only for the lanes its series can come from
    /// (after a doubling, each new lane for one old lane, and the old lanes
    /// for none).
    pub fn begin_cut(&mut self, shards: u32, now: Instant) {
        self.begin_push();
        let width = shards.clamp(1, self.width(now));
        if width == self.last_width {
            return;
        }
        if width > self.last_width {
            self.grown_at = Some(now);
        }
        if self.last_width != 0 && self.holds_data() {
            self.forget_widths();
            let seq = self.lanes.iter().map(|l| l.disk_through).max().unwrap_or(0);
            for x in 0..(width as usize).min(self.lanes.len()) {
                let from = self.sources(x, width);
                if from != 0 {
                    self.lanes[x].gates.push(Gate {
                        push: self.pushes,
                        seq,
                        from,
                    });
                    self.gated += 1;
                }
            }
        } else {
            self.widths.clear();
        }
        self.widths.push_back((self.pushes, width));
        self.last_width = width;
    }

    /// Forgets the widths no pending data was pushed under: every entry
    /// before the one in effect at the oldest push still queued or in a
    /// batch (none while anything is on disk, or in a batch read back from
    /// disk, whose pushes are unknown).
    fn forget_widths(&mut self) {
        let on_disk = self.disk_pending() || self.batches.iter().any(|b| b.min_push == u64::MAX);
        if on_disk {
            return;
        }
        let queued = self
            .lanes
            .iter()
            .filter_map(|l| l.queue.front().map(|c| c.push));
        let batched = self.batches.iter().map(|b| b.min_push);
        let Some(oldest) = queued.chain(batched).min() else {
            self.widths.clear();
            return;
        };
        while self.widths.len() > 1 && self.widths[1].0 <= oldest {
            self.widths.pop_front();
        }
    }

    /// The lanes other than `x` where a series that now goes to lane `x`
    /// (its hash modulo `width` is `x`) may have older data: its hash
    /// modulo each width that pending data was pushed under.
    fn sources(&self, x: usize, width: u32) -> u64 {
        let (n, width) = (self.lanes.len(), width as usize);
        let mut from = 0u64;
        for &(_, v) in &self.widths {
            let v = (v as usize).min(n);
            if v <= width {
                from |= 1 << (x % v);
            } else {
                // Every lane below `v` whose index modulo `width` is `x`.
                let mut y = x;
                while y < v {
                    from |= 1 << y;
                    y += width;
                }
            }
        }
        from & !(1 << x)
    }

    /// Queues `chunk`, shard `shard` of its request ([`Self::begin_cut`]),
    /// on lane `shard % width`.
    pub fn push_cut(&mut self, shard: u32, chunk: Chunk, overflow: &mut dyn Overflow) {
        let lane = shard & (self.last_width.max(1) - 1);
        self.push(lane, chunk, overflow);
    }

    /// Whether anything is queued, in a batch or on disk.
    fn holds_data(&self) -> bool {
        self.queue_samples > 0 || !self.batches.is_empty() || self.disk_pending()
    }

    /// Whether any lane has disk records read back and waiting, or not read
    /// back yet.
    pub(super) fn disk_pending(&self) -> bool {
        self.lanes
            .iter()
            .any(|l| !l.disk.is_empty() || l.disk_through > self.read_through)
    }

    /// Whether a lane of `gate` other than `lane` holds data older than
    /// it: pushed before it and queued or in a batch not yet done, or on
    /// disk at or below its seq (read back or not).
    fn older_elsewhere(&self, lane: usize, gate: Gate) -> bool {
        self.lanes.iter().enumerate().any(|(m, l)| {
            m != lane
                && gate.from & (1 << m) != 0
                && (l.queue.front().is_some_and(|c| c.push < gate.push)
                    || l.disk.front().is_some_and(|(seq, _)| *seq <= gate.seq)
                    || (self.read_through < gate.seq && l.disk_through > self.read_through)
                    || l.busy.is_some_and(|id| {
                        self.batches.iter().any(|b| {
                            b.id == id
                                && (b.min_push < gate.push
                                    || b.seqs.iter().any(|&s| s <= gate.seq)
                                    || (b.min_push == u64::MAX && b.seqs.is_empty()))
                        })
                    }))
        })
    }

    /// The gate the front chunk of `lane`'s memory queue waits at, if any.
    fn front_gate(&self, lane: usize) -> Option<Gate> {
        let l = &self.lanes[lane];
        let front = l.queue.front()?;
        let g = *l.gates.iter().rev().find(|g| g.push <= front.push)?;
        self.older_elsewhere(lane, g).then_some(g)
    }

    /// Whether the front record of `lane`'s disk queue waits at the gate
    /// it went to disk with: its gate, with the records written before it
    /// (every one of them is read back once it is) as the older ones.
    pub(super) fn disk_front_gated(&self, lane: usize) -> bool {
        let Some(&(seq, _)) = self.lanes[lane].disk.front() else {
            return false;
        };
        match self.disk_gates.get(&seq) {
            Some(&(_, gate)) => self.older_elsewhere(
                lane,
                Gate {
                    seq: seq - 1,
                    ..gate
                },
            ),
            None => false,
        }
    }

    /// Whether the front chunk of `lane`'s memory queue waits at a gate.
    fn front_gated(&self, lane: usize) -> bool {
        self.front_gate(lane).is_some()
    }

    /// Lifts the gates nothing older is left behind.
    fn lift_gates(&mut self) {
        if self.gated == 0 {
            return;
        }
        for lane in 0..self.lanes.len() {
            let gates = std::mem::take(&mut self.lanes[lane].gates);
            let before = gates.len();
            let kept: Vec<Gate> = gates
                .into_iter()
                .filter(|&g| self.older_elsewhere(lane, g))
                .collect();
            self.gated -= before - kept.len();
            self.lanes[lane].gates = kept;
        }
    }

    /// Queues `chunk` on lane `shard % lanes`; overflows the oldest chunks
    /// while over the memory bound. Never waits.
    pub fn push(&mut self, shard: u32, mut chunk: Chunk, overflow: &mut dyn Overflow) {
        chunk.push = self.pushes;
        chunk.each_owner(|o, n| self.accounts.accepted(o, n));
        self.arrived(chunk.samples, chunk.enqueued);
        let lane = (shard % self.lanes()) as usize;
        self.count_queued(lane, &chunk, true);
        self.lanes[lane].queue.push_back(chunk);
        while self.queue_bytes > self.config.queue_bytes {
            let Some(oldest) = self
                .lanes
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.queue.front().map(|c| (c.push, c.enqueued, i)))
                .min()
                .map(|(_, _, i)| i)
            else {
                break;
            };
            let shared = self.lanes[oldest].queue.front().is_some_and(Chunk::shared);
            if shared && overflow.keeps_shared() {
                break;
            }
            let gate = self.front_gate(oldest);
            let Some(c) = self.pop_front(oldest) else {
                break;
            };
            let (samples, owners, pushed) = (c.samples, c.owners.clone(), c.push);
            match overflow.overflow(oldest as u32, c) {
                Some(seq) => {
                    if let Some(g) = gate {
                        // It waits at its gate on disk too.
                        self.disk_gates.insert(seq, (oldest, g));
                    }
                    if self.gated > 0 {
                        // Data older than a gate now waits on disk.
                        for g in self.lanes.iter_mut().flat_map(|l| l.gates.iter_mut()) {
                            if pushed < g.push {
                                g.seq = g.seq.max(seq);
                            }
                        }
                    }
                    let l = &mut self.lanes[oldest];
                    l.disk_through = l.disk_through.max(seq);
                    self.counters.spilled += u64::from(samples);
                    owners.each(samples, |o, n| self.accounts.spilled(o, n));
                }
                None => {
                    self.counters.dropped_queue_full += u64::from(samples);
                    let wall = SystemTime::now();
                    owners.each(samples, |o, n| {
                        self.accounts.dropped(o, n, DropReason::QueueFull, wall)
                    });
                }
            }
        }
    }

    /// `samples` arrived at `now` (pushed or read back from disk): feeds
    /// the load meter, and the concurrency limit when a window closed.
    pub(super) fn arrived(&mut self, samples: u32, now: Instant) {
        if let Some(rate) = self.load.add(samples, now) {
            // Sized for grown batches: a lane that is behind sends up to
            // `grown_max` per request, so fewer lanes carry the load, and a
            // target set's share of a request stays one chunk (one part,
            // compressed once) while one lane keeps up.
            let backlog = self.backlog();
            let per_request = self.grown_max();
            self.concurrency.on_load(rate, per_request, backlog, now);
        }
    }

    /// Whether this target is falling behind: failing, or holding more than
    /// half its memory bound (at least [`LAGGING_BYTES`]). A push copies the
    /// chunks of a lagging target out of their request's buffer when it is
    /// also behind the other targets of those chunks
    /// (`service::target::Unpin`), so a backlog pins only its own bytes,
    /// not whole requests that other targets already sent. A healthy target
    /// that is merely busy keeps sharing its chunks: copying them would
    /// cost CPU and memory for nothing.
    pub fn lagging(&self) -> bool {
        self.failing() || self.queue_bytes > LAGGING_BYTES.max(self.config.queue_bytes / 2)
    }

    /// Whether [`Self::poll`] may send anything: not paused, and below the
    /// concurrency limit (else only a result can let it send again). A push
    /// wakes the sender only then: at saturation a sender is at its limit
    /// most of the time, and a wake-up there finds nothing to do (on its
    /// own no measurable change in CPU on fanout-10, A/B three runs each).
    pub fn can_send(&self) -> bool {
        !self.paused && self.in_flight < self.concurrency.limit()
    }

    /// Whether its last attempt failed (and nothing succeeded since).
    pub fn failing(&self) -> bool {
        self.failing_since.is_some()
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

    fn pop_front(&mut self, lane: usize) -> Option<Chunk> {
        let c = self.lanes[lane].queue.pop_front()?;
        self.count_queued(lane, &c, false);
        Some(c)
    }

    /// Counts `c` into (`add`) or out of lane `lane`'s memory queue totals.
    fn count_queued(&mut self, lane: usize, c: &Chunk, add: bool) {
        let (samples, bytes) = (u64::from(c.samples), c.records.len() as u64);
        let l = &mut self.lanes[lane];
        if add {
            l.samples += samples;
            l.bytes += bytes;
            self.queue_samples += samples;
            self.queue_bytes += bytes;
        } else {
            l.samples -= samples;
            l.bytes -= bytes;
            self.queue_samples -= samples;
            self.queue_bytes -= bytes;
        }
    }

    /// Free lanes of `mask` with reloaded disk records (sent first).
    fn disk_lanes(&self, mask: u64) -> u64 {
        mask_lanes(mask)
            .filter(|&l| {
                self.lanes[l].busy.is_none()
                    && !self.lanes[l].disk.is_empty()
                    && !self.disk_front_gated(l)
            })
            .fold(0, |m, l| m | (1 << l))
    }

    /// Free lanes of `mask` whose memory queue may be sent: nothing of the
    /// lane is on disk or read back and waiting.
    fn memory_lanes(&self, mask: u64) -> u64 {
        if self.behind_barrier() {
            return 0;
        }
        mask_lanes(mask)
            .filter(|&l| {
                let lane = &self.lanes[l];
                lane.busy.is_none()
                    && lane.disk.is_empty()
                    && lane.disk_through <= self.read_through
                    && !lane.queue.is_empty()
                    && !self.front_gated(l)
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
        if self.flush || samples >= u64::from(self.batch_max()) {
            Some(oldest)
        } else {
            Some(oldest + self.config.deadline)
        }
    }

    /// The next batch to send now, if the limit and the lanes allow one.
    /// Call until `None`.
    pub fn poll(&mut self, now: Instant) -> Option<Dispatch> {
        self.poll_batch(now).or_else(|| self.poll_probe(now))
    }

    /// [`Self::poll`] for batches: retries, then a group's next batch.
    fn poll_batch(&mut self, now: Instant) -> Option<Dispatch> {
        // An idle target's meter closes its window here (nothing arrives).
        self.arrived(0, now);
        if !self.can_send() {
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
                lane: first_lane(b.lanes),
                batch: b.id,
                body: b.body.clone(),
                attempt: b.attempts,
                samples: b.samples,
                probe: false,
            });
        }
        self.lift_gates();
        if self.behind_barrier() {
            return self.poll_backlog(now);
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
                    Some(due) if due <= now => {
                        let mut d = self.form_batch(memory, false, now);
                        while self.cut_for_size(&d) {
                            d = self.form_batch(memory, false, now);
                        }
                        d
                    }
                    _ => continue,
                }
            };
            self.in_flight += 1;
            self.cursor = g + 1;
            return Some(d);
        }
        None
    }

    /// A recovery probe, when one is due ([`Self::probe_at`]): an empty
    /// write whose 2xx releases every batch waiting out its backoff at once
    /// (see the module docs).
    fn poll_probe(&mut self, now: Instant) -> Option<Dispatch> {
        if !self.can_send() || self.probe_at().is_none_or(|at| at > now) {
            return None;
        }
        // Not in `in_flight`: a probe to an endpoint that never answers
        // must not hold back the retries for its whole timeout.
        self.probe_in_flight = true;
        self.counters.probes += 1;
        Some(Dispatch {
            lane: 0,
            batch: PROBE_BATCH,
            body: Bytes::from_static(EMPTY_WRITE),
            attempt: 1,
            samples: 0,
            probe: true,
        })
    }

    /// When the next recovery probe may go: while the target is failing
    /// and a batch waits out its backoff, every 1/[`PROBE_FRACTION`] of how
    /// long it has been failing (at least [`PROBE_EVERY`]), never before a
    /// `Retry-After` the target asked for, and only while that is more than
    /// one probe interval before the next retry (which would tell as much).
    fn probe_at(&self) -> Option<Instant> {
        let since = self.failing_since?;
        if self.probe_in_flight || self.probe_spent || self.paused || self.closed {
            return None;
        }
        let retry = self.next_retry()?;
        let base = self.probe_last.map_or(since, |l| l.max(since));
        let every = (base.saturating_duration_since(since) / PROBE_FRACTION).max(PROBE_EVERY);
        let at = self
            .probe_hold
            .map_or(base + every, |h| h.max(base + every));
        (at + every < retry).then_some(at)
    }

    /// No probe for `retry_after` from `now` (capped like the backoff's),
    /// nor before any hold already set.
    fn hold_probes(&mut self, now: Instant, retry_after: Duration) {
        let until = now + retry_after.min(MAX_RETRY_AFTER);
        self.probe_hold = Some(self.probe_hold.map_or(until, |h| h.max(until)));
    }

    /// The earliest retry of a batch waiting out its backoff.
    fn next_retry(&self) -> Option<Instant> {
        self.batches
            .iter()
            .filter(|b| !b.sending)
            .map(|b| b.not_before)
            .min()
    }

    /// A probe's answer: a 2xx makes every waiting batch due now.
    fn on_probe(&mut self, result: &SendResult, now: Instant) -> Event {
        self.probe_in_flight = false;
        self.probe_last = Some(now);
        let verdict = classify(result);
        match verdict {
            Verdict::Done => {
                self.probe_released = true;
                for b in self.batches.iter_mut().filter(|b| !b.sending) {
                    b.not_before = b.not_before.min(now);
                }
            }
            Verdict::Retry {
                retry_after: Some(ra),
                ..
            } => self.hold_probes(now, ra),
            _ => {}
        }
        Event::Probed {
            recovered: verdict == Verdict::Done,
        }
    }

    /// [`Self::poll`] while a recovered backlog holds new data back
    /// ([`Self::set_recovered`]): its records go in the order written, one
    /// batch at a time across lanes. Their lanes followed the width of the
    /// moment they were pushed, which the new process does not know, so a
    /// series' older records may sit in another lane.
    fn poll_backlog(&mut self, now: Instant) -> Option<Dispatch> {
        if !self.batches.is_empty() {
            return None;
        }
        let lanes = self
            .lanes
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.disk.is_empty())
            .fold(0u64, |m, (i, _)| m | (1 << i));
        if lanes == 0 {
            return None;
        }
        let d = self.form_batch(lanes, true, now);
        self.in_flight += 1;
        Some(d)
    }

    /// When [`poll`](Self::poll) may next have something (a deadline or a
    /// retry), besides results and pushes.
    pub fn next_wakeup(&self) -> Option<Instant> {
        // At the concurrency limit only a result can let `poll` send again,
        // and results wake the sender themselves; a deadline that passed
        // meanwhile would otherwise wake it in a loop with nothing to do.
        if !self.can_send() {
            return None;
        }
        let retry = self.next_retry();
        let n = self.lanes.len();
        let groups = self.groups() as usize;
        // Behind a recovered backlog's barrier only its batch goes
        // (`poll_backlog`), which a result or a reload wakes the sender for.
        let barred = self.behind_barrier();
        let formed = (0..groups)
            .filter(|_| !barred)
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
        [retry, formed, self.probe_at()].into_iter().flatten().min()
    }

    /// Starts a push: the chunks [`push`](Self::push)ed until the next call
    /// belong to one request (see [`Chunk::push`]).
    pub fn begin_push(&mut self) {
        self.pushes += 1;
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
        if batch == PROBE_BATCH {
            return self.on_probe(result, now);
        }
        let Some(at) = self.batches.iter().position(|b| b.id == batch && b.sending) else {
            return Event::Stale;
        };
        self.in_flight = self.in_flight.saturating_sub(1);
        if matches!(result, SendResult::Status { .. }) {
            let us = latency.as_micros().clamp(1, 3_600_000_000) as u64;
            let h = self.latency_us.get_or_insert_with(|| {
                Box::new(
                    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2)
                        .unwrap_or_else(|_| hdrhistogram::Histogram::new(2).expect("valid sigfig")),
                )
            });
            let _ = h.record(us);
        }
        match classify(result) {
            Verdict::Done => {
                // After 16 successes in a row at the cap, try twice as much.
                if let Some(cap) = self.split_cap {
                    self.split_ok += 1;
                    if self.split_ok >= 16 {
                        self.split_ok = 0;
                        self.split_cap =
                            Some(cap.saturating_mul(2)).filter(|&c| c < self.config.max_samples);
                    }
                }
                let b = self.finish(at);
                for (_, c) in &b.pieces {
                    c.each_owner(|o, n| self.accounts.sent(o, n, wall));
                    self.counters.highest_sent_ms = self.counters.highest_sent_ms.max(c.newest);
                }
                let bytes = b.body.len() as u64;
                self.counters.samples_sent += u64::from(b.samples);
                self.counters.bytes_sent += bytes;
                self.counters.requests_sent += 1;
                self.failing_since = None;
                self.probe_released = false;
                self.probe_spent = false;
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
                if let Some(ra) = retry_after {
                    self.hold_probes(now, ra);
                }
                if self.probe_released || status == Some(429) {
                    self.probe_spent = true;
                }
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
            Verdict::TooLarge { message } if self.split_back(at) => {
                *self.counters.failures.entry("413".into()).or_default() += 1;
                let message = format!(
                    "{message}; sent again in smaller batches (at most {} samples)",
                    self.batch_max()
                );
                self.last_error = Some(LastError {
                    time: wall,
                    status: Some(413),
                    message: message.clone(),
                });
                Event::Retrying {
                    kind: "413".into(),
                    status: Some(413),
                    message,
                }
            }
            Verdict::TooLarge { message } => self.drop_batch(at, 413, message, wall),
            Verdict::Drop { status, message } => self.drop_batch(at, status, message, wall),
        }
    }

    /// Drops batch `at`, refused with `status`: counted as `rejected`.
    fn drop_batch(&mut self, at: usize, status: u16, message: String, wall: SystemTime) -> Event {
        let b = self.finish(at);
        *self
            .counters
            .failures
            .entry(status.to_string())
            .or_default() += 1;
        self.counters.dropped_rejected += u64::from(b.samples);
        for (_, c) in &b.pieces {
            c.each_owner(|o, n| self.accounts.dropped(o, n, DropReason::Rejected, wall));
        }
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

    /// More than two full (grown) batches per lane group are waiting: one
    /// request per group in flight does not keep up.
    fn backlog(&self) -> bool {
        let waiting = self.queue_samples + self.reload_samples;
        waiting > 2 * u64::from(self.grown_max()) * u64::from(self.groups())
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

    /// What Deployment `owner`'s samples did at this target, as of `wall`.
    pub fn account(&self, owner: u32, wall: SystemTime) -> Option<PairStatus> {
        self.accounts.status(owner, wall)
    }

    /// Sends partial batches at once (drain on removal or shutdown).
    pub fn set_flush(&mut self, flush: bool) {
        self.flush = flush;
    }
}

#[cfg(test)]
mod tests;
