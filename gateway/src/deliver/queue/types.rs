//! The types at the edges of [`TargetCore`]: what is pushed, where overflow
//! goes, what is read back, the config, what to send and what a result did,
//! and the counters.
//!
//! [`TargetCore`]: super::TargetCore
//! [`TargetCore::reload`]: super::TargetCore::reload

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::{Packed, MAX_LANES};
use crate::deliver::MemoryPermit;

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
    /// Where the records' compressed form is kept once made, shared by every
    /// target given these very records (`None` for a chunk of one target
    /// only, or a part of a split chunk).
    pub packed: Option<Packed>,
    /// Which push to its target brought it (set by the target under its
    /// lock): the order of a target's pushes is the order of every lane.
    pub push: u64,
    /// Its Deployments' numbers ([`crate::deliver::accounting::Owners`];
    /// [`crate::deliver::accounting::UNKNOWN`] for records read back from disk).
    pub owners: ChunkOwners,
    /// 0, or `records` is not the records but their compressed snappy part
    /// (as the disk spill keeps them) and this is their length: such a
    /// chunk goes on the wire as it is, and is decompressed only if a batch
    /// must cut it ([`Chunk::unwire`]).
    pub wire: u32,
    /// The newest sample timestamp in it (ms since the epoch; `i64::MIN`
    /// when unknown: records read back from disk), for
    /// `fanout_target_highest_sent_timestamp_seconds`.
    pub newest: i64,
}

impl Chunk {
    /// Whether other targets were given these very records too (it has a
    /// shared slot for their compressed part).
    pub fn shared(&self) -> bool {
        self.packed.is_some() || self.wire > 0
    }

    /// The length of its records (uncompressed, whatever it holds).
    pub fn raw_len(&self) -> usize {
        if self.wire > 0 {
            self.wire as usize
        } else {
            self.records.len()
        }
    }

    /// Its records as a snappy part: as held (a chunk read back from disk),
    /// from the slot shared with the other targets, or compressed now.
    pub fn part(&self) -> Bytes {
        if self.wire > 0 {
            return self.records.clone();
        }
        match &self.packed {
            Some(p) => p.part(&self.records),
            None => fanout_proto::snappy::compress_part(&self.records),
        }
    }

    /// Makes a chunk held as a snappy part hold its records again (to cut
    /// it); false when the part does not decompress (it then goes whole).
    pub fn unwire(&mut self) -> bool {
        if self.wire == 0 {
            return true;
        }
        match fanout_proto::snappy::decompress_part(&self.records, self.wire as usize) {
            Ok(records) => {
                self.series = super::records::split_point(&records, u32::MAX, true).2;
                self.records = records;
                self.wire = 0;
                self.packed = None;
                true
            }
            Err(_) => false,
        }
    }

    /// Calls `f(owner, samples)` for each Deployment whose records it holds.
    pub fn each_owner(&self, f: impl FnMut(u32, u32)) {
        self.owners.each(self.samples, f);
    }
}

/// One Deployment's records within a chunk that holds several: they end
/// `end` bytes into the chunk's records and hold `samples`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerRun {
    /// The Deployment's number.
    pub owner: u32,
    /// Where its records end, from the start of the chunk's records.
    pub end: u32,
    /// Its samples.
    pub samples: u32,
}

/// Whose records a chunk holds, for the per-Deployment counts (a chunk of
/// a target set interleaves the records of every Deployment that goes to
/// exactly those targets, Deployment by Deployment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkOwners {
    /// One Deployment's.
    One(u32),
    /// Several: runs `start..end` of the shared list (one per request),
    /// in record order.
    Runs(Arc<[OwnerRun]>, u32, u32),
}

impl ChunkOwners {
    /// The first Deployment.
    pub fn first(&self) -> u32 {
        match self {
            ChunkOwners::One(o) => *o,
            ChunkOwners::Runs(..) => self
                .runs()
                .first()
                .map_or(crate::deliver::accounting::UNKNOWN, |r| r.owner),
        }
    }

    /// Calls `f(owner, samples)` per Deployment; `samples` is the chunk's
    /// total (for [`ChunkOwners::One`]).
    pub fn each(&self, samples: u32, mut f: impl FnMut(u32, u32)) {
        match self {
            ChunkOwners::One(o) => f(*o, samples),
            ChunkOwners::Runs(..) => self.runs().iter().for_each(|r| f(r.owner, r.samples)),
        }
    }

    /// The runs ([`ChunkOwners::Runs`]; none for [`ChunkOwners::One`]).
    fn runs(&self) -> &[OwnerRun] {
        match self {
            ChunkOwners::One(_) => &[],
            ChunkOwners::Runs(all, start, end) => {
                all.get(*start as usize..*end as usize).unwrap_or(&[])
            }
        }
    }

    /// The owners of `records[..at]` and of `records[at..]` (`at` a record
    /// boundary): a run cut in two has its samples counted on each side.
    pub fn split(&self, records: &[u8], at: usize) -> (ChunkOwners, ChunkOwners) {
        let ChunkOwners::Runs(..) = self else {
            return (self.clone(), self.clone());
        };
        let runs = self.runs();
        let at32 = at as u32;
        let (mut head, mut tail) = (Vec::new(), Vec::new());
        let mut start = 0u32;
        for r in runs.iter() {
            if r.end <= at32 {
                head.push(*r);
            } else if start >= at32 {
                tail.push(OwnerRun {
                    end: r.end - at32,
                    ..*r
                });
            } else {
                let (_, first, _) =
                    super::records::split_point(&records[start as usize..at], u32::MAX, true);
                head.push(OwnerRun {
                    owner: r.owner,
                    end: at32,
                    samples: first,
                });
                tail.push(OwnerRun {
                    owner: r.owner,
                    end: r.end - at32,
                    samples: r.samples.saturating_sub(first),
                });
            }
            start = r.end;
        }
        let make = |v: Vec<OwnerRun>| match v.as_slice() {
            [one] => ChunkOwners::One(one.owner),
            _ => {
                let n = v.len() as u32;
                ChunkOwners::Runs(Arc::from(v), 0, n)
            }
        };
        (make(head), make(tail))
    }
}

/// Where chunks go when a target's memory queue is full: the disk spill.
pub trait Overflow {
    /// Takes `chunk` of `lane` out of memory and returns the disk seq it got;
    /// `None` when it could not and the chunk is dropped (`queue_full`).
    fn overflow(&mut self, lane: u32, chunk: Chunk) -> Option<u64>;

    /// Whether a chunk that other targets were given too stays queued past
    /// the bound instead of going out: true while this target is in step
    /// with those targets and the memory budget has room
    /// (`service::target::Unpin::in_step`). Its request's buffer then stays
    /// in memory for them whatever this target does, so writing it out
    /// would free nothing and cost a disk write and a read back.
    fn keeps_shared(&self) -> bool {
        false
    }
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
    /// The encoded records, or their snappy part when `wire` (their length)
    /// is not 0.
    pub records: Bytes,
    /// 0, or the length of the records `records` is the snappy part of.
    pub wire: u32,
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
    /// `maxBytesPerSend`: a batch whose body is larger is cut (as after a
    /// 413) before it is sent.
    pub max_bytes: Option<u64>,
    /// Batches of lanes that fell behind may grow past `max_samples`
    /// (`TargetCore::grown_max`); off in tests of exact batch sizes.
    pub grow: bool,
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
    /// A recovery probe ([`TargetCore::poll`]): an empty remote-write 1.0
    /// request to a failing target; its result only tells whether the
    /// target answers 2xx again.
    pub probe: bool,
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
    /// A recovery probe's answer; `recovered`: a 2xx, every waiting
    /// batch is due now.
    Probed {
        /// The target answered 2xx.
        recovered: bool,
    },
    /// The result did not match a batch in flight (ignored).
    Stale,
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
    /// Recovery probes sent ([`TargetCore::poll`]).
    pub probes: u64,
    /// The newest sample timestamp delivered (ms; `i64::MIN` until one is
    /// known: records read back from disk carry none).
    pub highest_sent_ms: i64,
}
