//! Compressed parts shared by the targets of a label variant: a snappy
//! *part* (`fanout_proto::snappy::compress_part`, a block without its
//! header) concatenates with others into one batch body, so what several
//! targets send is compressed once. [`Packed`] is one chunk's part,
//! [`Whole`] all (or a set) of one request's chunks for one variant as one
//! part; [`compress_parts`] builds a batch body from them.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use bytes::Bytes;

use super::records::sort_records;
use super::Chunk;

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
/// cache for the other targets that cut the same set. Each target's lane
/// groups follow its own load, so their sets differ: on fanout-10 at
/// saturation (groups of 1, 2 or 4 lanes) about 6 lookups in 10 found their
/// set made with 16 sets kept; with 4 kept (measured while shared chunks
/// were still split at batch boundaries), fewer than half.
#[derive(Debug)]
pub struct Whole {
    records: Bytes,
    chunks: u32,
    part: OnceLock<Bytes>,
    subsets: Mutex<Vec<(u64, Bytes)>>,
}

/// Subset parts kept per [`Whole`] at most; another set is compressed for
/// its batch only.
const SUBSETS_KEPT: usize = 16;

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
        let find = |kept: &[(u64, Bytes)]| {
            kept.iter()
                .find(|(m, _)| *m == mask)
                .map(|(_, p)| p.clone())
        };
        if let Some(p) = find(&self.kept()) {
            return p;
        }
        let mut records = Vec::new();
        for r in pieces {
            records.extend_from_slice(r);
        }
        let part = fanout_proto::snappy::compress_part(&records);
        let mut kept = self.kept();
        // Another target may have made it meanwhile: send the same bytes.
        if let Some(p) = find(&kept) {
            return p;
        }
        if kept.len() < SUBSETS_KEPT {
            kept.push((mask, part.clone()));
        }
        part
    }

    /// The subset parts kept (a poisoned lock still holds valid parts).
    fn kept(&self) -> MutexGuard<'_, Vec<(u64, Bytes)>> {
        self.subsets.lock().unwrap_or_else(PoisonError::into_inner)
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
    sort_records(records, &mut index, &mut sorted);
    fanout_proto::snappy::compress_part(&sorted)
}

/// The body of a batch whose chunks were given to several targets: a snappy
/// header, then per push (request), in push order (the order of every
/// lane, so per-series order holds): one [`Whole`] part for each request
/// variant with chunks here (all of them, or the set of this batch's lanes),
/// else one part per chunk (shared through [`Packed`], or made now). Within
/// one request the order of series does not matter.
pub(super) fn compress_parts(pieces: &[(u32, Chunk)]) -> Bytes {
    let len: usize = pieces.iter().map(|(_, c)| c.records.len()).sum();
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    // Stable: chunks of one push keep their lane order.
    order.sort_by_key(|&i| pieces[i].1.push);
    // Each whole with chunks here: which of its chunks.
    let mut wholes: Vec<(&WholeRef, u64)> = Vec::new();
    for (_, c) in pieces {
        if let Some(w) = &c.whole {
            match wholes.iter_mut().find(|(x, _)| x.same(w)) {
                Some((_, mask)) => *mask |= w.bit(),
                None => wholes.push((w, w.bit())),
            }
        }
    }
    let mut parts: Vec<Bytes> = Vec::with_capacity(pieces.len());
    for &i in &order {
        let c = &pieces[i].1;
        let whole = c.whole.as_ref().and_then(|w| {
            let at = wholes.iter().position(|(x, _)| x.same(w))?;
            Some((at, w.get(), wholes[at].1))
        });
        match whole {
            // Sent already with the first of its chunks here.
            Some((_, _, 0)) => {}
            Some((at, w, mask)) if mask.count_ones() > 1 => {
                wholes[at].1 = 0;
                parts.push(if mask.count_ones() == w.chunks() {
                    w.part()
                } else {
                    let mut mine: Vec<&Chunk> = pieces
                        .iter()
                        .map(|(_, c)| c)
                        .filter(|c| c.whole.as_ref().is_some_and(|x| x.same(wholes[at].0)))
                        .collect();
                    mine.sort_by_key(|c| c.whole.as_ref().map_or(0, WholeRef::bit));
                    w.subset_part(mask, mine.iter().map(|c| &c.records[..]))
                });
            }
            _ => parts.push(match &c.packed {
                Some(p) => p.part(&c.records),
                None => fanout_proto::snappy::compress_part(&c.records),
            }),
        }
    }
    let mut body = Vec::with_capacity(10 + parts.iter().map(Bytes::len).sum::<usize>());
    fanout_proto::snappy::write_header(len as u64, &mut body);
    for p in &parts {
        body.extend_from_slice(p);
    }
    Bytes::from(body)
}
