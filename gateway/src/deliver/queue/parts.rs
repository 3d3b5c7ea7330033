//! Compressed parts shared by the targets of a label variant: a snappy
//! *part* (`fanout_proto::snappy::compress_part`, a block without its
//! header) concatenates with others into one batch body, so what several
//! targets send is compressed once. [`Packed`] is one chunk's part (a
//! request's records for one variant: every series of a Deployment takes
//! one lane, so a variant's share of a request is one chunk);
//! [`compress_parts`] builds a batch body from them.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::Chunk;
use crate::deliver::{MemoryBudget, MemoryPermit};

/// The compressed form of a chunk's records, made once by the first target
/// that sends them whole and reused by the others: a snappy *part*
/// (`fanout_proto::snappy::compress_part`), which concatenates with other
/// parts into one batch body.
#[derive(Debug, Clone)]
pub struct Packed {
    slots: Arc<[Slot]>,
    index: u32,
}

/// One chunk's shared compressed part, and the memory permit of the part
/// when targets keep it instead of the records (a failing target's
/// backlog): taken once for all of them, since they hold the same bytes.
#[derive(Debug, Default)]
pub struct Slot {
    part: OnceLock<Bytes>,
    permit: OnceLock<Option<Arc<MemoryPermit>>>,
}

impl Slot {
    /// The compressed part, once a target made it.
    pub fn made(&self) -> Option<&Bytes> {
        self.part.get()
    }
}

impl Packed {
    /// Slots for the `n` chunks of one request (one allocation).
    pub fn slots(n: usize) -> Arc<[Slot]> {
        (0..n).map(|_| Slot::default()).collect()
    }

    /// Slot `index` of `slots`.
    pub fn new(slots: Arc<[Slot]>, index: u32) -> Packed {
        Packed { slots, index }
    }

    /// The part of `records` (the chunk these slots were made for),
    /// compressed now unless a target already did.
    pub fn part(&self, records: &[u8]) -> Bytes {
        match self.slots.get(self.index as usize) {
            Some(slot) => slot
                .part
                .get_or_init(|| fanout_proto::snappy::compress_part(records))
                .clone(),
            None => fanout_proto::snappy::compress_part(records),
        }
    }

    /// The permit for holding the part (`len` bytes) instead of the records,
    /// shared by every target that does: the first takes it from `budget`.
    /// `None` when the budget had no room then (the targets keep the
    /// records).
    pub fn part_permit(&self, budget: &MemoryBudget, len: u64) -> Option<Arc<MemoryPermit>> {
        match self.slots.get(self.index as usize) {
            Some(slot) => slot
                .permit
                .get_or_init(|| budget.try_acquire(len).ok().map(Arc::new))
                .clone(),
            None => budget.try_acquire(len).ok().map(Arc::new),
        }
    }
}

/// The body of a batch whose chunks were given to several targets: a snappy
/// header, then one part per chunk in batch order (shared through
/// [`Packed`], or made now for a chunk of this target only). The chunks of
/// a lane are in its order, so per-series order holds.
pub(super) fn compress_parts(pieces: &[(u32, Chunk)]) -> Bytes {
    let len: usize = pieces.iter().map(|(_, c)| c.raw_len()).sum();
    let parts: Vec<Bytes> = pieces.iter().map(|(_, c)| c.part()).collect();
    let mut body = Vec::with_capacity(10 + parts.iter().map(Bytes::len).sum::<usize>());
    fanout_proto::snappy::write_header(len as u64, &mut body);
    for p in &parts {
        body.extend_from_slice(p);
    }
    Bytes::from(body)
}
