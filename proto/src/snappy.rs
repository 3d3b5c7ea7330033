//! Snappy block-format helpers (remote-write uses the block format, not the
//! framed stream format).
//!
//! The decompressed length is a varint at the start of a block; [`decompress`]
//! reads it and refuses anything over the caller's limit, or over what the
//! block's size can possibly hold ([`max_expansion`]), before allocating a
//! byte, so a 14-byte request claiming 250 MiB costs nothing.

use bytes::Bytes;

/// Why a snappy block could not be decompressed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnappyError {
    /// The header declares more bytes than allowed.
    #[error("snappy: decompressed size {len} bytes exceeds the limit of {max} bytes (limit max_decompressed_bytes)")]
    TooLarge {
        /// Declared decompressed length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The block is not valid snappy.
    #[error("snappy: corrupt input: {0}")]
    Corrupt(String),
}

impl SnappyError {
    /// True when a limit was exceeded (413), false for corrupt input (400).
    pub fn is_limit(&self) -> bool {
        matches!(self, SnappyError::TooLarge { .. })
    }
}

/// The decompressed length declared by a block's header (a varint). Lengths
/// beyond what snappy supports (4 GiB and more) are returned as declared, so
/// that callers report them as the limit they exceed, not as corruption.
pub fn decompressed_len(input: &[u8]) -> Result<u64, SnappyError> {
    let mut r = crate::wire::Reader::new(input);
    r.varint()
        .map_err(|e| SnappyError::Corrupt(format!("header: {e}")))
}

/// The most bytes `compressed` bytes of a block can decompress to. The
/// densest element is a copy with a 2-byte offset: 3 bytes that produce 64;
/// so no block of `n` bytes holds more than `n * 64 / 3` (rounded up).
pub fn max_expansion(compressed: usize) -> u64 {
    (compressed as u64).saturating_mul(64).div_ceil(3)
}

/// Decompresses a block of at most `max_len` decompressed bytes into `buf`,
/// reusing its capacity (for pooled buffers). `buf` is cleared first.
pub fn decompress_into(input: &[u8], max_len: usize, buf: &mut Vec<u8>) -> Result<(), SnappyError> {
    let len = decompressed_len(input)?;
    if len > max_len as u64 {
        return Err(SnappyError::TooLarge { len, max: max_len });
    }
    let most = max_expansion(input.len());
    if len > most {
        // A small body claiming a large size would otherwise make us
        // allocate (and zero) that size before finding it corrupt.
        return Err(SnappyError::Corrupt(format!(
            "header declares {len} bytes, more than {} compressed bytes can hold (at most {most})",
            input.len()
        )));
    }
    let len = len as usize;
    buf.clear();
    buf.resize(len, 0);
    let written = snap::raw::Decoder::new()
        .decompress(input, buf)
        .map_err(corrupt)?;
    buf.truncate(written);
    Ok(())
}

/// Decompresses a block of at most `max_len` decompressed bytes.
pub fn decompress(input: &[u8], max_len: usize) -> Result<Bytes, SnappyError> {
    let mut buf = Vec::new();
    decompress_into(input, max_len, &mut buf)?;
    Ok(Bytes::from(buf))
}

/// Compresses `input` into a new block.
pub fn compress(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    compress_into(input, &mut out);
    out
}

/// Compresses `input` into `out`, reusing its capacity.
pub fn compress_into(input: &[u8], out: &mut Vec<u8>) {
    out.clear();
    with_block(input, |block| out.extend_from_slice(block));
}

/// Compresses `input` into a *part*: a block without its length header.
/// Parts concatenate: a block header ([`write_header`]) for their total
/// decompressed length followed by parts, in order, is a valid block whose
/// contents are the inputs concatenated, because every copy in a part
/// refers back only within that part's own output. This is how one series
/// chunk compressed once goes out in the batches of every target.
pub fn compress_part(input: &[u8]) -> Bytes {
    with_block(input, |block| {
        let mut r = crate::wire::Reader::new(block);
        let skip = match r.varint() {
            Ok(_) => r.pos(),
            Err(_) => 0,
        };
        Bytes::copy_from_slice(&block[skip..])
    })
}

/// Decompresses a part ([`compress_part`]) of `len` decompressed bytes.
pub fn decompress_part(part: &[u8], len: usize) -> Result<Bytes, SnappyError> {
    let mut block = Vec::with_capacity(10 + part.len());
    write_header(len as u64, &mut block);
    block.extend_from_slice(part);
    decompress(&block, len)
}

/// Output buffers kept per thread at most this large; one grown for a
/// larger block is freed after it.
const SCRATCH_KEPT: usize = 4 << 20;

thread_local! {
    /// This thread's encoder (its hash table is allocated once) and output
    /// buffer, kept at its largest length: the encoder writes into an
    /// initialized slice, so a fresh buffer would be zeroed for every block,
    /// which cost more than half of compressing one.
    static ENCODER: std::cell::RefCell<(snap::raw::Encoder, Vec<u8>)> =
        std::cell::RefCell::new((snap::raw::Encoder::new(), Vec::new()));
}

/// Calls `f` with `input` compressed as one block, with this thread's
/// encoder and buffer (fresh ones if `f` itself compressed; it never does).
fn with_block<R>(input: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    ENCODER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut state) => {
            let (encoder, buf) = &mut *state;
            compress_with(encoder, buf, input, f)
        }
        Err(_) => compress_with(&mut snap::raw::Encoder::new(), &mut Vec::new(), input, f),
    })
}

/// Compresses `input` with `encoder` into `buf` (grown to the largest
/// length needed, never shrunk below [`SCRATCH_KEPT`]) and calls `f` with
/// the block.
fn compress_with<R>(
    encoder: &mut snap::raw::Encoder,
    buf: &mut Vec<u8>,
    input: &[u8],
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    let max = snap::raw::max_compress_len(input.len());
    if buf.len() < max {
        buf.resize(max, 0);
    }
    // Only fails when the output is too small, which max_compress_len rules
    // out; an input too large for snappy (over ~4 GiB) yields an empty block.
    let n = encoder.compress(input, &mut buf[..max]).unwrap_or(0);
    let r = f(&buf[..n]);
    if buf.len() > SCRATCH_KEPT {
        *buf = Vec::new();
    }
    r
}

/// Appends a block header for `len` decompressed bytes (a varint), to be
/// followed by parts ([`compress_part`]).
pub fn write_header(len: u64, out: &mut Vec<u8>) {
    let mut v = len;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn corrupt(err: snap::Error) -> SnappyError {
    SnappyError::Corrupt(err.to_string())
}

#[cfg(test)]
mod tests {

    #[test]
    fn parts_concatenate_into_one_block() {
        let a: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let b = b"abcabcabcabc hello hello hello".repeat(300);
        let c = b"";
        let mut body = Vec::new();
        write_header((a.len() + b.len() + c.len()) as u64, &mut body);
        for p in [&a[..], &b[..], &c[..]] {
            body.extend_from_slice(&compress_part(p));
        }
        let out = decompress(&body, 1 << 24).unwrap();
        let mut want = a.clone();
        want.extend_from_slice(&b);
        assert_eq!(&out[..], &want[..]);
    }

    use super::*;

    #[test]
    fn blocks_round_trip_whatever_the_thread_compressed_before() {
        // The thread's output buffer is reused at its largest length: a small
        // block after a large one must not carry the large one's bytes, and
        // a block too large to keep gets a buffer of its own.
        let big: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 13) as u8).collect();
        let random: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for input in [&big[..], &random[..], b"abc", b"", &big[..1000]] {
            let block = compress(input);
            assert_eq!(&decompress(&block, 8 << 20).unwrap()[..], input);
            let mut body = Vec::new();
            write_header(input.len() as u64, &mut body);
            body.extend_from_slice(&compress_part(input));
            assert_eq!(body, block);
        }
    }

    #[test]
    fn a_header_claiming_more_than_the_block_can_hold_is_refused_before_allocating() {
        // 250 MiB claimed in a 14-byte body.
        let mut body = Vec::new();
        write_header(250 << 20, &mut body);
        body.resize(14, 0);
        let mut buf = Vec::new();
        let e = decompress_into(&body, 256 << 20, &mut buf).unwrap_err();
        assert!(!e.is_limit(), "corrupt, not a limit: {e}");
        assert!(
            e.to_string()
                .contains("more than 14 compressed bytes can hold"),
            "{e}"
        );
        assert_eq!(buf.capacity(), 0, "nothing allocated");
        // The bound holds for the densest real block: long runs of one byte.
        for n in [64usize, 1000, 100_000, 1 << 20] {
            let data = vec![7u8; n];
            let c = compress(&data);
            assert!(max_expansion(c.len()) >= n as u64, "{n} from {}", c.len());
            assert_eq!(decompress(&c, 1 << 21).unwrap().len(), n);
        }
    }

    #[test]
    fn round_trip() {
        let data = b"hello hello hello hello remote write".repeat(100);
        let block = compress(&data);
        assert!(block.len() < data.len());
        assert_eq!(decompress(&block, data.len()).unwrap(), data);
    }

    #[test]
    fn header_over_limit_is_refused_before_allocation() {
        // Header varint for 0xFFFF_FFFF (4 GiB - 1), then garbage.
        let bomb = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x01];
        let err = decompress(&bomb, 256 << 20).unwrap_err();
        assert_eq!(
            err,
            SnappyError::TooLarge {
                len: 0xFFFF_FFFF,
                max: 256 << 20
            }
        );
        assert!(err.is_limit());
    }

    #[test]
    fn header_beyond_snappy_range_is_a_limit_not_corruption() {
        // 8 GiB: more than a snappy block can hold.
        let bomb = [0x80, 0x80, 0x80, 0x80, 0x20, 0x00];
        assert_eq!(decompressed_len(&bomb), Ok(8 << 30));
        let err = decompress(&bomb, 256 << 20).unwrap_err();
        assert!(err.is_limit(), "{err:?}");
    }

    #[test]
    fn corrupt_input() {
        let err = decompress(&[0x05, 0xff, 0xff], 1024).unwrap_err();
        assert!(matches!(err, SnappyError::Corrupt(_)), "{err:?}");
        assert!(err.to_string().starts_with("snappy: corrupt input"));
    }
}
