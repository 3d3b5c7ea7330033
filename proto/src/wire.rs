//! Protobuf wire-format primitives: varints, keys, length-delimited fields.
//!
//! Everything here reads from a borrowed `&[u8]` with an explicit cursor and
//! never allocates. Every read is bounds-checked and reports a [`ErrorKind`]
//! rather than panicking; callers add the location (series, label) to it.

use crate::error::ErrorKind;

/// A protobuf wire type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireType {
    /// 0: a varint.
    Varint,
    /// 1: eight bytes (fixed64, double).
    I64,
    /// 2: a length followed by that many bytes.
    Len,
    /// 5: four bytes (fixed32, float).
    I32,
}

impl WireType {
    fn from_bits(bits: u8) -> Result<WireType, ErrorKind> {
        match bits {
            0 => Ok(WireType::Varint),
            1 => Ok(WireType::I64),
            2 => Ok(WireType::Len),
            5 => Ok(WireType::I32),
            other => Err(ErrorKind::InvalidWireType(other)),
        }
    }

    /// The number and name used in error messages, e.g. `2 (length-delimited)`.
    pub fn describe(self) -> &'static str {
        match self {
            WireType::Varint => "0 (varint)",
            WireType::I64 => "1 (64-bit)",
            WireType::Len => "2 (length-delimited)",
            WireType::I32 => "5 (32-bit)",
        }
    }

    /// The low three bits of a key with this wire type.
    pub fn bits(self) -> u8 {
        match self {
            WireType::Varint => 0,
            WireType::I64 => 1,
            WireType::Len => 2,
            WireType::I32 => 5,
        }
    }
}

/// A cursor over one protobuf message.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over a whole message.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// Offset of the cursor from the start of the message.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// True once every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Reads a varint of at most ten bytes.
    #[inline(always)]
    pub fn varint(&mut self) -> Result<u64, ErrorKind> {
        // Fast path: keys and short lengths are a single byte.
        if let Some(&byte) = self.buf.get(self.pos) {
            if byte < 0x80 {
                self.pos += 1;
                return Ok(u64::from(byte));
            }
        }
        self.varint_slow()
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> Result<u64, ErrorKind> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(ErrorKind::TruncatedVarint);
            };
            self.pos += 1;
            // The tenth byte may only carry the top bit of a u64.
            if i == 9 && byte > 1 {
                return Err(ErrorKind::VarintOverflow);
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(ErrorKind::VarintOverflow)
    }

    /// Reads a field key: the field number and its wire type.
    #[inline]
    pub fn key(&mut self) -> Result<(u32, WireType), ErrorKind> {
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(ErrorKind::InvalidFieldNumber(field));
        }
        let wire = WireType::from_bits((key & 7) as u8)?;
        Ok((field as u32, wire))
    }

    /// Reads the length prefix of a length-delimited field and returns its bytes.
    #[inline]
    pub fn len_delimited(&mut self) -> Result<&'a [u8], ErrorKind> {
        let (start, end) = self.len_range()?;
        Ok(&self.buf[start..end])
    }

    /// Like [`Reader::len_delimited`] but returns the range within the message.
    #[inline]
    pub fn len_range(&mut self) -> Result<(usize, usize), ErrorKind> {
        let len = self.varint()?;
        let remaining = self.buf.len() - self.pos;
        if len > remaining as u64 {
            return Err(ErrorKind::LengthPastEnd { len, remaining });
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok((start, self.pos))
    }

    /// Reads eight little-endian bytes.
    #[inline]
    pub fn fixed64(&mut self) -> Result<u64, ErrorKind> {
        let bytes = self
            .buf
            .get(self.pos..self.pos + 8)
            .ok_or(ErrorKind::TruncatedFixed(8))?;
        self.pos += 8;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(raw))
    }

    /// Skips a value of the given wire type.
    #[inline]
    pub fn skip(&mut self, wire: WireType) -> Result<(), ErrorKind> {
        match wire {
            WireType::Varint => self.varint().map(drop),
            WireType::I64 => self.fixed64().map(drop),
            WireType::Len => self.len_range().map(drop),
            WireType::I32 => {
                if self.buf.len() - self.pos < 4 {
                    return Err(ErrorKind::TruncatedFixed(4));
                }
                self.pos += 4;
                Ok(())
            }
        }
    }
}

/// Checks that `field` has the wire type `expected`.
#[inline]
pub fn expect_wire(field: u32, found: WireType, expected: WireType) -> Result<(), ErrorKind> {
    if found == expected {
        Ok(())
    } else {
        Err(ErrorKind::WrongWireType {
            field,
            expected,
            found,
        })
    }
}

/// Number of bytes of `value` as a varint.
#[inline]
pub fn varint_len(value: u64) -> usize {
    // 1 byte per 7 significant bits, at least one byte.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends `value` as a varint.
#[inline]
pub fn put_varint(out: &mut impl bytes::BufMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Appends the key of a length-delimited field and its length.
#[inline]
pub fn put_len_prefix(out: &mut impl bytes::BufMut, field: u32, len: usize) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, len as u64);
}

/// Size of a length-delimited field with a one-byte key and `len` bytes of payload.
#[inline]
pub fn len_field_size(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Checks a packed repeated varint field: every element must be a whole varint.
pub fn check_packed_varints(payload: &[u8]) -> Result<(), ErrorKind> {
    let mut r = Reader::new(payload);
    while !r.is_empty() {
        r.varint()?;
    }
    Ok(())
}

/// Checks a packed repeated fixed64/double field: its length is a multiple of 8.
pub fn check_packed_fixed64(payload: &[u8]) -> Result<(), ErrorKind> {
    if payload.len() % 8 == 0 {
        Ok(())
    } else {
        Err(ErrorKind::TruncatedFixed(8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip_and_lengths() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v), "length of {v}");
            let mut r = Reader::new(&buf);
            assert_eq!(r.varint().unwrap(), v);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn varint_errors() {
        assert_eq!(
            Reader::new(&[0x80, 0x80]).varint(),
            Err(ErrorKind::TruncatedVarint)
        );
        let eleven = [0xff; 11];
        assert_eq!(
            Reader::new(&eleven).varint(),
            Err(ErrorKind::VarintOverflow)
        );
        let mut tenth_too_big = [0xff; 10];
        tenth_too_big[9] = 0x02;
        assert_eq!(
            Reader::new(&tenth_too_big).varint(),
            Err(ErrorKind::VarintOverflow)
        );
    }

    #[test]
    fn keys_and_lengths() {
        assert_eq!(Reader::new(&[0x0a]).key(), Ok((1, WireType::Len)));
        assert_eq!(
            Reader::new(&[0x0b]).key(),
            Err(ErrorKind::InvalidWireType(3))
        );
        assert_eq!(
            Reader::new(&[0x02]).key(),
            Err(ErrorKind::InvalidFieldNumber(0))
        );
        assert_eq!(
            Reader::new(&[0x05, 1, 2]).len_delimited(),
            Err(ErrorKind::LengthPastEnd {
                len: 5,
                remaining: 2
            })
        );
    }
}
