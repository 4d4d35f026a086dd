//! Zigzag varints exactly as Kafka's `ByteUtils` writes them: the value is
//! zigzag-mapped so small negative numbers (notably `-1` for "null") stay one
//! byte, then written as little-endian base-128 groups, low group first, with
//! the high bit of each byte marking "more follows".
//!
//! Decoding is stricter than Kafka in one respect: a final byte carrying bits
//! beyond the 32 (or 64) the type can hold is rejected as corruption, where
//! Kafka silently drops them. No conforming encoder emits such bytes, so this
//! only turns garbage into an error instead of a wrong number.

use crate::error::{Error, Result};

/// Longest encoding of an `i32` varint.
pub const MAX_VARINT_LEN: usize = 5;
/// Longest encoding of an `i64` varlong.
pub const MAX_VARLONG_LEN: usize = 10;

/// Maps signed to unsigned so that values near zero have few significant bits.
#[inline]
pub fn zigzag32(value: i32) -> u32 {
    ((value << 1) ^ (value >> 31)) as u32
}

/// Inverse of [`zigzag32`].
#[inline]
pub fn unzigzag32(value: u32) -> i32 {
    ((value >> 1) as i32) ^ -((value & 1) as i32)
}

/// Maps signed to unsigned so that values near zero have few significant bits.
#[inline]
pub fn zigzag64(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// Inverse of [`zigzag64`].
#[inline]
pub fn unzigzag64(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Bytes an unsigned base-128 encoding of `value` takes.
#[inline]
pub fn unsigned_varint_len(value: u64) -> usize {
    // `| 1` makes zero count as one significant bit, so it still takes a byte.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Bytes [`put_varint`] writes for `value`.
#[inline]
pub fn varint_len(value: i32) -> usize {
    unsigned_varint_len(u64::from(zigzag32(value)))
}

/// Bytes [`put_varlong`] writes for `value`.
#[inline]
pub fn varlong_len(value: i64) -> usize {
    unsigned_varint_len(zigzag64(value))
}

/// Bytes a length prefix plus `len` payload bytes take, for lengths given as
/// `usize` (so sizes can be computed before checking they fit an `i32`).
#[inline]
pub fn size_prefixed_len(len: usize) -> usize {
    // Zigzag of a non-negative n is 2n; saturate so absurd lengths cannot wrap.
    unsigned_varint_len((len as u64).saturating_mul(2)) + len
}

/// Appends the unsigned base-128 encoding of `value`.
#[inline]
pub fn put_unsigned_varint(buf: &mut Vec<u8>, mut value: u64) {
    if value < 0x80 {
        buf.push(value as u8);
        return;
    }
    // Byte pushes, not a copy from a scratch array: for 2-5 bytes a memcpy
    // call costs more than the encoding itself.
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Appends `value` as a zigzag varint (Kafka `ByteUtils.writeVarint`).
#[inline]
pub fn put_varint(buf: &mut Vec<u8>, value: i32) {
    put_unsigned_varint(buf, u64::from(zigzag32(value)));
}

/// Appends `value` as a zigzag varlong (Kafka `ByteUtils.writeVarlong`).
#[inline]
pub fn put_varlong(buf: &mut Vec<u8>, value: i64) {
    put_unsigned_varint(buf, zigzag64(value));
}

/// Explains why a varint of at most `max_len` bytes could not be read from
/// the start of `buf`. Only called after the fast reader failed.
#[cold]
fn varint_error(buf: &[u8], max_len: usize, what: &str) -> Error {
    match buf.iter().take(max_len).position(|b| b & 0x80 == 0) {
        Some(_) => Error::corruption(format!("{what} overflows its type")),
        None if buf.len() < max_len => Error::corruption(format!("truncated {what}")),
        None => Error::corruption(format!("{what} longer than {max_len} bytes")),
    }
}

/// Reads a zigzag varint from the start of `buf`; returns the value and the
/// number of bytes consumed.
pub fn get_varint(buf: &[u8]) -> Result<(i32, usize)> {
    let mut pos = 0;
    match read_varint(buf, &mut pos) {
        Some(v) => Ok((v, pos)),
        None => Err(varint_error(buf, MAX_VARINT_LEN, "varint")),
    }
}

/// Reads a zigzag varlong from the start of `buf`; returns the value and the
/// number of bytes consumed.
pub fn get_varlong(buf: &[u8]) -> Result<(i64, usize)> {
    let mut pos = 0;
    match read_varlong(buf, &mut pos) {
        Some(v) => Ok((v, pos)),
        None => Err(varint_error(buf, MAX_VARLONG_LEN, "varlong")),
    }
}

/// Hot-path reader for record parsing: the value at `buf[*pos..]`, advancing
/// `pos`, or `None` if truncated or overlong. Kept free of `Error` so it
/// stays in registers; callers build a descriptive error on the cold path.
#[inline(always)]
pub(crate) fn read_varint(buf: &[u8], pos: &mut usize) -> Option<i32> {
    let raw = read_unsigned::<MAX_VARINT_LEN, 4>(buf, pos)?;
    Some(unzigzag32(raw as u32))
}

/// Like [`read_varint`] for varlongs.
#[inline(always)]
pub(crate) fn read_varlong(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let raw = read_unsigned::<MAX_VARLONG_LEN, 1>(buf, pos)?;
    Some(unzigzag64(raw))
}

#[inline(always)]
fn read_unsigned<const MAX: usize, const LAST_BITS: u32>(
    buf: &[u8],
    pos: &mut usize,
) -> Option<u64> {
    let rest = buf.get(*pos..)?;
    let first = *rest.first()?;
    if first < 0x80 {
        *pos += 1;
        return Some(u64::from(first));
    }
    let mut result = 0u64;
    for (i, &byte) in rest.iter().take(MAX).enumerate() {
        result |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if i == MAX - 1 && byte >> LAST_BITS != 0 {
                return None;
            }
            *pos += i + 1;
            return Some(result);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc32(v: i32) -> Vec<u8> {
        let mut b = Vec::new();
        put_varint(&mut b, v);
        b
    }

    fn enc64(v: i64) -> Vec<u8> {
        let mut b = Vec::new();
        put_varlong(&mut b, v);
        b
    }

    #[test]
    fn known_encodings_match_kafka() {
        // Values from Kafka's ByteUtilsTest.
        assert_eq!(enc32(0), [0x00]);
        assert_eq!(enc32(-1), [0x01]);
        assert_eq!(enc32(1), [0x02]);
        assert_eq!(enc32(63), [0x7e]);
        assert_eq!(enc32(-64), [0x7f]);
        assert_eq!(enc32(64), [0x80, 0x01]);
        assert_eq!(enc32(-65), [0x81, 0x01]);
        assert_eq!(enc32(8191), [0xfe, 0x7f]);
        assert_eq!(enc32(-8192), [0xff, 0x7f]);
        assert_eq!(enc32(8192), [0x80, 0x80, 0x01]);
        assert_eq!(enc32(i32::MAX), [0xfe, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(enc32(i32::MIN), [0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(enc64(0), [0x00]);
        assert_eq!(enc64(-1), [0x01]);
        assert_eq!(
            enc64(i64::MAX),
            [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        assert_eq!(
            enc64(i64::MIN),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn lengths_match_encodings() {
        for v in [0, 1, -1, 63, 64, -64, -65, 8191, 8192, i32::MAX, i32::MIN] {
            assert_eq!(varint_len(v), enc32(v).len(), "{v}");
        }
        for v in [0, 1, -1, i64::MAX, i64::MIN, 1 << 40, -(1 << 40)] {
            assert_eq!(varlong_len(v), enc64(v).len(), "{v}");
        }
        assert_eq!(size_prefixed_len(0), 1);
        assert_eq!(size_prefixed_len(63), 64);
        assert_eq!(size_prefixed_len(64), 66);
    }

    #[test]
    fn rejects_truncated_and_overlong() {
        assert!(get_varint(&[]).is_err());
        assert!(get_varint(&[0x80]).is_err());
        assert!(get_varint(&[0x80, 0x80, 0x80, 0x80]).is_err());
        // Continuation bit on the fifth byte: longer than 5 bytes.
        assert!(get_varint(&[0xff, 0xff, 0xff, 0xff, 0x8f, 0x00]).is_err());
        // Bits beyond 32 on the fifth byte.
        assert!(get_varint(&[0xff, 0xff, 0xff, 0xff, 0x1f]).is_err());
        assert!(get_varlong(&[0xff; 9]).is_err());
        assert!(
            get_varlong(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x03]).is_err()
        );
        let e = get_varint(&[0x80]).unwrap_err();
        assert!(matches!(e, Error::Corruption(_)));
    }

    #[test]
    fn decode_stops_at_terminator() {
        assert_eq!(get_varint(&[0x80, 0x01, 0xaa]).unwrap(), (64, 2));
        assert_eq!(get_varlong(&[0x01, 0xff]).unwrap(), (-1, 1));
    }

    proptest! {
        #[test]
        fn varint_round_trips(v in any::<i32>()) {
            let b = enc32(v);
            prop_assert_eq!(b.len(), varint_len(v));
            prop_assert_eq!(get_varint(&b).unwrap(), (v, b.len()));
        }

        #[test]
        fn varlong_round_trips(v in any::<i64>()) {
            let b = enc64(v);
            prop_assert_eq!(b.len(), varlong_len(v));
            prop_assert_eq!(get_varlong(&b).unwrap(), (v, b.len()));
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..12)) {
            let _ = get_varint(&b);
            let _ = get_varlong(&b);
        }
    }
}
