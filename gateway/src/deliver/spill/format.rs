//! Byte layout of segment records and of the ledger, and the segment scanner
//! that recovery runs. Plain code over `Read`/byte slices; no queue state.

use std::io::{self, Read};

/// Magic of a live record frame: `FSP1`.
pub const MAGIC: [u8; 4] = *b"FSP1";
/// Magic of a record that recovery found corrupt and retired in place: `FSPX`.
pub const TOMBSTONE: [u8; 4] = *b"FSPX";
/// Frame prefix: magic, body length, crc32.
pub const FRAME_PREFIX: usize = 12;
/// Record header inside the body: seq, enqueued ms, tag, samples.
pub const RECORD_HEADER: usize = 28;
/// Fixed bytes of every record on disk besides the payload.
pub const RECORD_OVERHEAD: usize = FRAME_PREFIX + RECORD_HEADER;
/// Largest payload a record may carry (the ingest limit is 32 MiB compressed).
pub const MAX_PAYLOAD: usize = 128 << 20;

/// Magic and version of the ledger file.
pub const LEDGER_MAGIC: [u8; 8] = *b"FSPLDG01";
/// One ledger slot: magic, acked seq, crc32.
pub const LEDGER_LEN: usize = 8 + 8 + 4;
/// Offset of the second slot: its own sector, so a torn write of one slot
/// never damages the other.
pub const LEDGER_SLOT: usize = 512;
/// The ledger file as written since it is rewritten in place: two slots.
/// Its blocks are allocated once, so recording an ack never needs free
/// space (a full disk could otherwise never delete its delivered segments).
pub const LEDGER_FILE_LEN: usize = 2 * LEDGER_SLOT;

/// The metadata half of a record, as stored after the frame prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Queue-wide sequence number, strictly increasing from 1.
    pub seq: u64,
    /// Unix milliseconds when the data was first enqueued.
    pub enqueued_ms: u64,
    /// Opaque to the spill; delivery's own use.
    pub tag: u64,
    /// Samples in the batch, for accounting.
    pub samples: u32,
}

impl Header {
    fn encode(&self) -> [u8; RECORD_HEADER] {
        let mut b = [0u8; RECORD_HEADER];
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.enqueued_ms.to_le_bytes());
        b[16..24].copy_from_slice(&self.tag.to_le_bytes());
        b[24..28].copy_from_slice(&self.samples.to_le_bytes());
        b
    }

    fn decode(b: &[u8; RECORD_HEADER]) -> Self {
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let mut s = [0u8; 4];
        s.copy_from_slice(&b[24..28]);
        Self {
            seq: u64_at(0),
            enqueued_ms: u64_at(8),
            tag: u64_at(16),
            samples: u32::from_le_bytes(s),
        }
    }
}

/// Frame prefix and header of one record; the payload is written after it.
///
/// The crc32 covers the length field, the header and the payload, so a
/// flipped bit anywhere but the magic fails the check.
pub fn encode_prefix(header: &Header, payload: &[u8]) -> [u8; RECORD_OVERHEAD] {
    let body_len = (RECORD_HEADER + payload.len()) as u32;
    let h = header.encode();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&body_len.to_le_bytes());
    crc.update(&h);
    crc.update(payload);
    let mut out = [0u8; RECORD_OVERHEAD];
    out[0..4].copy_from_slice(&MAGIC);
    out[4..8].copy_from_slice(&body_len.to_le_bytes());
    out[8..12].copy_from_slice(&crc.finalize().to_le_bytes());
    out[12..].copy_from_slice(&h);
    out
}

/// Why a frame read back from disk is not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The magic is neither a record nor a tombstone.
    Magic,
    /// The length is impossible or runs past the end of the file.
    Length,
    /// The checksum does not match the bytes.
    Checksum,
}

/// Checks a complete frame (`prefix` + body) and returns its header.
pub fn decode_frame(prefix: &[u8; FRAME_PREFIX], body: &[u8]) -> Result<Header, FrameError> {
    if prefix[0..4] != MAGIC {
        return Err(FrameError::Magic);
    }
    let len = body_len(prefix).ok_or(FrameError::Length)?;
    if len != body.len() {
        return Err(FrameError::Length);
    }
    let mut want = [0u8; 4];
    want.copy_from_slice(&prefix[8..12]);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&prefix[4..8]);
    crc.update(body);
    if crc.finalize() != u32::from_le_bytes(want) {
        return Err(FrameError::Checksum);
    }
    let mut h = [0u8; RECORD_HEADER];
    h.copy_from_slice(&body[..RECORD_HEADER]);
    Ok(Header::decode(&h))
}

/// The body length a frame prefix claims, if it is within the format's limits.
pub fn body_len(prefix: &[u8; FRAME_PREFIX]) -> Option<usize> {
    let mut l = [0u8; 4];
    l.copy_from_slice(&prefix[4..8]);
    let len = u32::from_le_bytes(l) as usize;
    (RECORD_HEADER..=RECORD_HEADER + MAX_PAYLOAD)
        .contains(&len)
        .then_some(len)
}

/// Encodes the ledger: every record with `seq <= acked` is delivered or dropped.
pub fn encode_ledger(acked: u64) -> [u8; LEDGER_LEN] {
    let mut b = [0u8; LEDGER_LEN];
    b[0..8].copy_from_slice(&LEDGER_MAGIC);
    b[8..16].copy_from_slice(&acked.to_le_bytes());
    let crc = crc32fast::hash(&b[0..16]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The slot an ack is written to: alternating with the acked seq, so the
/// previous value usually survives in the other slot.
pub fn ledger_slot_offset(acked: u64) -> u64 {
    (acked % 2) * LEDGER_SLOT as u64
}

/// A whole ledger file recording `acked` in both slots.
pub fn encode_ledger_file(acked: u64) -> [u8; LEDGER_FILE_LEN] {
    let mut b = [0u8; LEDGER_FILE_LEN];
    let slot = encode_ledger(acked);
    b[..LEDGER_LEN].copy_from_slice(&slot);
    b[LEDGER_SLOT..LEDGER_SLOT + LEDGER_LEN].copy_from_slice(&slot);
    b
}

/// Decodes a ledger file: the highest ack of its valid slots (acks only
/// rise), or `None` when no slot is valid. A file of one slot (written by
/// versions that replaced it through a temp file) is read too.
pub fn decode_ledger_file(b: &[u8]) -> Option<u64> {
    let first = b.get(..LEDGER_LEN).and_then(decode_ledger);
    let second = b
        .get(LEDGER_SLOT..LEDGER_SLOT + LEDGER_LEN)
        .and_then(decode_ledger);
    first.max(second)
}

/// Decodes one ledger slot; `None` when it is damaged.
pub fn decode_ledger(b: &[u8]) -> Option<u64> {
    if b.len() != LEDGER_LEN || b[0..8] != LEDGER_MAGIC {
        return None;
    }
    let mut c = [0u8; 4];
    c.copy_from_slice(&b[16..20]);
    if crc32fast::hash(&b[0..16]) != u32::from_le_bytes(c) {
        return None;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[8..16]);
    Some(u64::from_le_bytes(a))
}

/// One valid record found by [`scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Its header.
    pub header: Header,
    /// Offset of its frame in the segment.
    pub offset: u64,
    /// Whole frame length on disk.
    pub frame_len: u64,
}

/// What [`scan`] found in one segment.
#[derive(Debug, Default)]
pub struct Scan {
    /// Valid records, in file order, with increasing seq.
    pub records: Vec<Found>,
    /// Offsets of frames whose length is sound but whose checksum (or seq
    /// order) is not: recovery retires them in place with a tombstone.
    pub corrupt: Vec<u64>,
    /// Offset where the last sound structure ends; bytes after it are cut.
    pub good_end: u64,
    /// True when the bytes after `good_end` are a record cut short by the end
    /// of the file (a torn write), rather than garbage.
    pub torn: bool,
}

/// Walks a segment of `file_len` bytes from `r`, verifying every frame.
///
/// A frame with a bad checksum is skipped (and reported in `corrupt`) only
/// when the frame after it starts with a valid magic, or it ends exactly at
/// the end of the file, which shows its length field is trustworthy;
/// otherwise the segment is cut at that frame. Tombstones are skipped
/// silently. `min_seq` is the lowest seq a record may have (records must be
/// strictly increasing); a record out of order counts as corrupt.
pub fn scan(r: &mut impl Read, file_len: u64, min_seq: u64) -> io::Result<Scan> {
    let mut out = Scan::default();
    let mut pos = 0u64;
    let mut next_seq = min_seq;
    let mut body = Vec::new();
    // A frame whose checksum failed, waiting for the next frame to vouch for
    // its length.
    let mut suspect: Option<u64> = None;
    loop {
        if pos == file_len {
            if let Some(s) = suspect.take() {
                out.corrupt.push(s);
            }
            out.good_end = pos;
            return Ok(out);
        }
        let mut prefix = [0u8; FRAME_PREFIX];
        let remaining = file_len - pos;
        if remaining < FRAME_PREFIX as u64 {
            out.torn = suspect.is_none() && is_magic_prefix(r, remaining)?;
            out.good_end = suspect.unwrap_or(pos);
            return Ok(out);
        }
        r.read_exact(&mut prefix)?;
        let magic_ok = prefix[0..4] == MAGIC || prefix[0..4] == TOMBSTONE;
        if !magic_ok {
            out.good_end = suspect.unwrap_or(pos);
            return Ok(out);
        }
        if let Some(s) = suspect.take() {
            out.corrupt.push(s);
        }
        let Some(len) = body_len(&prefix) else {
            out.good_end = pos;
            return Ok(out);
        };
        if len as u64 > remaining - FRAME_PREFIX as u64 {
            // A frame that claims more than the file holds: a torn append.
            out.torn = prefix[0..4] == MAGIC;
            out.good_end = pos;
            return Ok(out);
        }
        let frame_len = (FRAME_PREFIX + len) as u64;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
        if prefix[0..4] == TOMBSTONE {
            pos += frame_len;
            continue;
        }
        match decode_frame(&prefix, &body) {
            Ok(header) if header.seq >= next_seq => {
                next_seq = header.seq.saturating_add(1);
                out.records.push(Found {
                    header,
                    offset: pos,
                    frame_len,
                });
            }
            Ok(_) => out.corrupt.push(pos),
            Err(_) => suspect = Some(pos),
        }
        pos += frame_len;
    }
}

/// Reads the `remaining` (< 12) bytes left and says whether they could be the
/// start of a record frame.
fn is_magic_prefix(r: &mut impl Read, remaining: u64) -> io::Result<bool> {
    let mut b = [0u8; FRAME_PREFIX];
    let n = remaining as usize;
    r.read_exact(&mut b[..n])?;
    let k = n.min(4);
    Ok(b[..k] == MAGIC[..k])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_file_reads_the_highest_valid_slot() {
        let mut f = encode_ledger_file(7).to_vec();
        assert_eq!(decode_ledger_file(&f), Some(7));
        // Acks alternate between the slots; the higher one wins.
        f[ledger_slot_offset(8) as usize..][..LEDGER_LEN].copy_from_slice(&encode_ledger(8));
        assert_eq!(decode_ledger_file(&f), Some(8));
        // A torn write of one slot leaves the other.
        f[ledger_slot_offset(8) as usize + 9] ^= 0xff;
        assert_eq!(decode_ledger_file(&f), Some(7));
        f[ledger_slot_offset(7) as usize + 9] ^= 0xff;
        assert_eq!(decode_ledger_file(&f), None);
        // The one-slot file of older versions.
        assert_eq!(decode_ledger_file(&encode_ledger(5)), Some(5));
        assert_eq!(decode_ledger_file(&[]), None);
    }

    fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
        let h = Header {
            seq,
            enqueued_ms: 7,
            tag: 9,
            samples: 3,
        };
        let mut v = encode_prefix(&h, payload).to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn scan_bytes(b: &[u8]) -> Scan {
        scan(&mut &b[..], b.len() as u64, 1).unwrap()
    }

    #[test]
    fn round_trip() {
        let f = frame(5, b"hello");
        let mut p = [0u8; FRAME_PREFIX];
        p.copy_from_slice(&f[..FRAME_PREFIX]);
        let h = decode_frame(&p, &f[FRAME_PREFIX..]).unwrap();
        assert_eq!((h.seq, h.enqueued_ms, h.tag, h.samples), (5, 7, 9, 3));
    }

    #[test]
    fn flipped_payload_byte_retires_one_record() {
        let mut seg = Vec::new();
        for s in 1..=3 {
            seg.extend(frame(s, b"abcdef"));
        }
        let second = frame(1, b"abcdef").len();
        seg[second + RECORD_OVERHEAD + 2] ^= 0x40;
        let s = scan_bytes(&seg);
        let seqs: Vec<u64> = s.records.iter().map(|f| f.header.seq).collect();
        assert_eq!(seqs, vec![1, 3]);
        assert_eq!(s.corrupt, vec![second as u64]);
        assert_eq!(s.good_end, seg.len() as u64);
        assert!(!s.torn);
    }

    #[test]
    fn flipped_length_cuts_at_the_record() {
        let mut seg = Vec::new();
        for s in 1..=3 {
            seg.extend(frame(s, b"abcdef"));
        }
        let second = frame(1, b"abcdef").len();
        seg[second + 4] ^= 0x01;
        let s = scan_bytes(&seg);
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.good_end, second as u64);
        assert!(s.corrupt.is_empty());
    }

    #[test]
    fn truncated_tail_is_torn() {
        let mut seg = frame(1, b"abc");
        let full = seg.len();
        seg.extend(frame(2, b"abcdefgh"));
        for cut in [full + 2, full + 13, seg.len() - 1] {
            let s = scan_bytes(&seg[..cut]);
            assert_eq!(s.records.len(), 1, "cut {cut}");
            assert_eq!(s.good_end, full as u64);
            assert!(s.torn, "cut {cut}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u32 = 12345;
        for _ in 0..200 {
            let mut b = frame(1, b"payload");
            for byte in b.iter_mut() {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if x % 7 == 0 {
                    *byte = (x >> 16) as u8;
                }
            }
            let s = scan_bytes(&b);
            assert!(s.good_end <= b.len() as u64);
        }
    }

    #[test]
    fn ledger_round_trip_and_damage() {
        let mut l = encode_ledger(42);
        assert_eq!(decode_ledger(&l), Some(42));
        l[9] ^= 1;
        assert_eq!(decode_ledger(&l), None);
        assert_eq!(decode_ledger(&l[..5]), None);
    }
}
