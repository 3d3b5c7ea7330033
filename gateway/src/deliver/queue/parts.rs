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
