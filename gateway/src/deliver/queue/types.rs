//! The types at the edges of [`TargetCore`]: what is pushed, where overflow
//! goes, what is read back, the config, what to send and what a result did,
//! and the counters.
//!
//! [`TargetCore`]: super::TargetCore
//! [`TargetCore::reload`]: super::TargetCore::reload

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::MAX_LANES;
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
    /// All of its request's records for its label variant, of which this
    /// chunk is one of [`Whole::chunks`] (`None` for a variant of one
    /// target, a variant cut into one chunk, or a chunk split or copied).
    pub whole: Option<WholeRef>,
    /// Which push to its target brought it (set by the target under its
    /// lock): the order of a target's pushes is the order of every lane.
    pub push: u64,
}

/// A chunk's [`Whole`]: one of its request's wholes (one allocation for all
/// of them), and which of the whole's chunks it is (its shard, below 64).
#[derive(Debug, Clone)]
pub struct WholeRef {
    wholes: Arc<[Whole]>,
    index: u32,
    shard: u8,
}

impl WholeRef {
    /// Whole `index` of `wholes`, for its chunk of `shard` (`None` when there
    /// is no such whole or the shard is 64 or more).
    pub fn new(wholes: Arc<[Whole]>, index: u32, shard: u32) -> Option<WholeRef> {
        ((index as usize) < wholes.len() && shard < 64).then_some(WholeRef {
            wholes,
            index,
            shard: shard as u8,
        })
    }

    /// The whole.
    pub fn get(&self) -> &Whole {
        &self.wholes[self.index as usize]
    }

    /// This chunk's bit in a mask of the whole's chunks.
    pub fn bit(&self) -> u64 {
        1 << self.shard
    }

    /// True when both refer to the same whole.
    pub fn same(&self, other: &WholeRef) -> bool {
        Arc::ptr_eq(&self.wholes, &other.wholes) && self.index == other.index
    }
}

/// One request's records for one label variant, every lane's chunk of them
/// in one range, compressed once (grouped by metric, as a whole) for all the
/// targets of the variant. A batch holding every chunk of it sends this one
/// part instead of one small part per chunk: parts compress apart, so many
/// small ones cost bytes on the wire (each repeats the label strings the
/// others already carry). A batch holding only some of its chunks (with
/// several lane groups, each takes the lanes of its own) sends those as one
/// part too, made once per set of chunks and kept in [`Whole::subset_part`]'s
/// small cache: the targets of a variant usually cut the same sets.
#[derive(Debug)]
pub struct Whole {
    records: Bytes,
    chunks: u32,
    part: OnceLock<Bytes>,
    subsets: Mutex<Vec<(u64, Bytes)>>,
}

/// Subset parts kept per [`Whole`] at most; another set is compressed for
/// its batch only.
const SUBSETS_KEPT: usize = 4;

impl Whole {
    /// The records of `chunks` chunks, in one range.
    pub fn new(records: Bytes, chunks: u32) -> Whole {
        Whole {
            records,
            chunks,
            part: OnceLock::new(),
            subsets: Mutex::new(Vec::new()),
        }
    }

    /// How many chunks it was cut into.
    pub fn chunks(&self) -> u32 {
        self.chunks
    }

    /// Its snappy part, made now unless a target already did: the records
    /// grouped by metric (their order does not matter within one request),
    /// then compressed.
    pub fn part(&self) -> Bytes {
        self.part.get_or_init(|| sorted_part(&self.records)).clone()
    }

    /// The part of the chunks in `mask` (bits as [`WholeRef::bit`]), whose
    /// records `pieces` gives in shard order: made now unless a target
    /// already made the same set. Not grouped by metric: on saturation-fanout-3
    /// that saved 0.2 of 1.85 CPU-s for 0.6 more bytes per sample (46.7 → 47.3).
    pub fn subset_part<'a>(&self, mask: u64, pieces: impl Iterator<Item = &'a [u8]>) -> Bytes {
        let cached = |s: &Mutex<Vec<(u64, Bytes)>>| {
            let kept = s.lock().unwrap_or_else(|e| e.into_inner());
            kept.iter()
                .find(|(m, _)| *m == mask)
                .map(|(_, p)| p.clone())
        };
        if let Some(p) = cached(&self.subsets) {
            return p;
        }
        let mut records = Vec::new();
        for r in pieces {
            records.extend_from_slice(r);
        }
        let part = fanout_proto::snappy::compress_part(&records);
        let mut kept = self.subsets.lock().unwrap_or_else(|e| e.into_inner());
        match kept.iter().find(|(m, _)| *m == mask) {
            // Another target made it meanwhile: send the same bytes.
            Some((_, p)) => p.clone(),
            None => {
                if kept.len() < SUBSETS_KEPT {
                    kept.push((mask, part.clone()));
                }
                part
            }
        }
    }
}

/// The compressed form of a chunk's records, made once by the first target
/// that sends them whole and reused by the others: a snappy *part*
/// (`fanout_proto::snappy::compress_part`), which concatenates with other
/// parts into one batch body.
#[derive(Debug, Clone)]
pub struct Packed {
    slots: Arc<[OnceLock<Bytes>]>,
    index: u32,
}

impl Packed {
    /// Slots for the `n` chunks of one request (one allocation).
    pub fn slots(n: usize) -> Arc<[OnceLock<Bytes>]> {
        (0..n).map(|_| OnceLock::new()).collect()
    }

    /// Slot `index` of `slots`.
    pub fn new(slots: Arc<[OnceLock<Bytes>]>, index: u32) -> Packed {
        Packed { slots, index }
    }

    /// The part of `records` (the chunk these slots were made for),
    /// compressed now unless a target already did.
    pub fn part(&self, records: &[u8]) -> Bytes {
        match self.slots.get(self.index as usize) {
            Some(slot) => slot
                .get_or_init(|| fanout_proto::snappy::compress_part(records))
                .clone(),
            None => fanout_proto::snappy::compress_part(records),
        }
    }
}

/// `records` grouped by metric, as one snappy part.
fn sorted_part(records: &[u8]) -> Bytes {
    let mut index = Vec::new();
    let mut sorted = Vec::new();
    super::records::sort_records(records, &mut index, &mut sorted);
    fanout_proto::snappy::compress_part(&sorted)
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
