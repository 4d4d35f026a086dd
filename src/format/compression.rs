//! Compression codecs of a Kafka v2 batch. Only the bytes after the 61-byte
//! batch header are compressed, as one stream.
//!
//! LZ4 uses the LZ4 *frame* format with exactly the settings Kafka's own
//! producer writes (`Lz4BlockOutputStream`): version 1, independent blocks,
//! 64 KiB maximum block size, no block checksum, no content size, no content
//! checksum, no dictionary id. So the frame always starts with
//! `04 22 4D 18 60 40 82`. Why each setting:
//! - Kafka's reader rejects dependent (linked) blocks, a set dictionary-id bit
//!   and block sizes other than 64 KiB..4 MiB.
//! - Recent Kafka readers verify the content checksum as the XOR of per-block
//!   hashes, which differs from the standard whole-content hash as soon as a
//!   frame has two blocks; older readers skip it. Leaving it out is the only
//!   choice every Kafka version and python `lz4.frame` agree on.
//! - Block checksums and content size would be accepted, but the batch CRC-32C
//!   already covers the compressed bytes, and Kafka never writes either.
//!
//! Decoding accepts any standard LZ4 frame (linked blocks, checksums, content
//! size), so batches written by other producers read fine.
//!
//! gzip is the standard gzip stream (RFC 1952, what Java's
//! `GZIPOutputStream` writes, at its default level 6); reading accepts
//! several members one after the other. Snappy uses the xerial framing
//! Kafka's clients write (`snappy.rs`).
//!
//! ZSTD writes one standard frame (with content size, which the one-shot API
//! records and every reader understands) and reads any sequence of frames, as
//! Kafka's streaming writer produces frames without a content size.

use std::fmt;
use std::io::{Read, Write};

use super::snappy;
use crate::error::{Error, Result};

/// Bits 0-2 of the batch attributes.
pub const COMPRESSION_CODEC_MASK: i16 = 0x07;
/// Maximum uncompressed size of one LZ4 frame block, as Kafka writes it.
pub const LZ4_BLOCK_SIZE: usize = 64 * 1024;
/// ZSTD level used when encoding.
pub const ZSTD_LEVEL: i32 = 3;

const CODEC_NONE: i16 = 0;
const CODEC_GZIP: i16 = 1;
const CODEC_SNAPPY: i16 = 2;
const CODEC_LZ4: i16 = 3;
const CODEC_ZSTD: i16 = 4;

/// The compression of a batch's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// Every codec, in attribute order.
pub const ALL_CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

impl Compression {
    /// The codec's value in bits 0-2 of the batch attributes.
    pub fn attribute_bits(self) -> i16 {
        match self {
            Compression::None => CODEC_NONE,
            Compression::Gzip => CODEC_GZIP,
            Compression::Snappy => CODEC_SNAPPY,
            Compression::Lz4 => CODEC_LZ4,
            Compression::Zstd => CODEC_ZSTD,
        }
    }

    /// The codec named by a batch's attributes; codes 5-7 do not exist
    /// (`Corruption`).
    pub fn from_attributes(attrs: i16) -> Result<Self> {
        match attrs & COMPRESSION_CODEC_MASK {
            CODEC_NONE => Ok(Compression::None),
            CODEC_GZIP => Ok(Compression::Gzip),
            CODEC_SNAPPY => Ok(Compression::Snappy),
            CODEC_LZ4 => Ok(Compression::Lz4),
            CODEC_ZSTD => Ok(Compression::Zstd),
            other => Err(Error::corruption(format!(
                "unknown compression codec {other} in batch attributes {attrs:#06x}"
            ))),
        }
    }

    /// The lowercase name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// Parses a codec's name (ASCII case-insensitive).
    pub fn parse(name: &str) -> Option<Self> {
        ALL_CODECS
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }

    /// Whether this build can compress and decompress with the codec.
    pub fn is_available(self) -> bool {
        match self {
            Compression::None | Compression::Gzip | Compression::Snappy | Compression::Lz4 => true,
            Compression::Zstd => cfg!(feature = "zstd"),
        }
    }

    pub(crate) fn check_available(self) -> Result<()> {
        if self.is_available() {
            Ok(())
        } else {
            Err(Error::Unsupported(format!(
                "{} compression is not compiled into this build (enable the \"{}\" feature)",
                self.name(),
                self.name()
            )))
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Appends the compressed form of `src` to `out`. `None` copies `src`.
pub fn compress_into(compression: Compression, src: &[u8], out: &mut Vec<u8>) -> Result<()> {
    match compression {
        Compression::None => {
            out.extend_from_slice(src);
            Ok(())
        }
        Compression::Gzip => gzip_compress_into(src, out),
        Compression::Snappy => snappy::compress_into(src, out),
        Compression::Lz4 => lz4_compress_into(src, out),
        Compression::Zstd => zstd_compress_into(src, out),
    }
}

/// Decompresses `src` completely. Output beyond `limit` bytes is treated as
/// corruption, so a small hostile input cannot make us allocate without bound.
pub fn decompress(compression: Compression, src: &[u8], limit: usize) -> Result<Vec<u8>> {
    let mut out = decompress_untrimmed(compression, src, limit)?;
    trim_excess(&mut out);
    Ok(out)
}

fn decompress_untrimmed(compression: Compression, src: &[u8], limit: usize) -> Result<Vec<u8>> {
    match compression {
        Compression::None => {
            if src.len() > limit {
                return Err(too_large(limit));
            }
            Ok(src.to_vec())
        }
        Compression::Gzip => gzip_decompress(src, limit),
        Compression::Snappy => snappy::decompress(src, limit),
        Compression::Lz4 => lz4_decompress(src, limit),
        Compression::Zstd => zstd_decompress(src, limit),
    }
}

fn gzip_compress_into(src: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::new(6));
    encoder
        .write_all(src)
        .and_then(|()| encoder.try_finish())
        .map_err(|e| Error::Internal(format!("gzip compression failed: {e}")))
}

fn gzip_decompress(src: &[u8], limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(initial_capacity(src.len(), limit));
    read_limited(
        flate2::read::MultiGzDecoder::new(src),
        &mut out,
        limit,
        "gzip",
    )?;
    Ok(out)
}

/// Gives back spare capacity when it is large: record views keep the whole
/// buffer alive for as long as any of them is held, and compression
/// reserves for the worst case.
pub(crate) fn trim_excess(buf: &mut Vec<u8>) {
    if buf.capacity() - buf.len() > buf.len() / 8 + 4096 {
        buf.shrink_to_fit();
    }
}

pub(super) fn too_large(limit: usize) -> Error {
    Error::corruption(format!(
        "decompressed records exceed the limit of {limit} bytes"
    ))
}

/// A first guess at the decompressed size, so most batches decode without
/// the output buffer being regrown.
fn initial_capacity(src_len: usize, limit: usize) -> usize {
    src_len.saturating_mul(4).min(limit)
}

/// Reads all of `reader` into `out`, failing once more than `limit` bytes
/// appear.
fn read_limited(reader: impl Read, out: &mut Vec<u8>, limit: usize, codec: &str) -> Result<()> {
    reader
        .take((limit as u64).saturating_add(1))
        .read_to_end(out)
        .map_err(|e| Error::corruption(format!("{codec} decompression failed: {e}")))?;
    if out.len() > limit {
        return Err(too_large(limit));
    }
    Ok(())
}

fn lz4_frame_info() -> lz4_flex::frame::FrameInfo {
    use lz4_flex::frame::{BlockMode, BlockSize, FrameInfo};
    FrameInfo::new()
        .block_size(BlockSize::Max64KB)
        .block_mode(BlockMode::Independent)
        .block_checksums(false)
        .content_checksum(false)
        .content_size(None)
}

fn lz4_compress_into(src: &[u8], out: &mut Vec<u8>) -> Result<()> {
    // Worst case: every block stored raw. 7-byte frame header, 4 bytes per
    // block header, 4-byte end mark.
    let blocks = src.len() / LZ4_BLOCK_SIZE + 1;
    out.reserve(src.len() + 4 * blocks + 11);
    let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(lz4_frame_info(), out);
    encoder
        .write_all(src)
        .map_err(|e| Error::Internal(format!("lz4 compression failed: {e}")))?;
    encoder
        .finish()
        .map_err(|e| Error::Internal(format!("lz4 compression failed: {e}")))?;
    Ok(())
}

/// Upper bound on what an LZ4 frame decompresses to, read from its content
/// size or by walking its block headers; `None` if the frame looks unusual.
/// Only a capacity hint: the decoder still enforces the real limit.
fn lz4_size_hint(src: &[u8]) -> Option<usize> {
    const MAGIC: u32 = 0x184D_2204;
    const FLG_BLOCK_CHECKSUM: u8 = 0x10;
    const FLG_CONTENT_SIZE: u8 = 0x08;
    const FLG_DICT_ID: u8 = 0x01;
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(src.get(at..at + 4)?.try_into().ok()?))
    };
    if word(0)? != MAGIC {
        return None;
    }
    let flg = *src.get(4)?;
    let bd = *src.get(5)?;
    let mut pos = 6;
    if flg & FLG_CONTENT_SIZE != 0 {
        let size = u64::from_le_bytes(src.get(pos..pos + 8)?.try_into().ok()?);
        return usize::try_from(size).ok();
    }
    if flg & FLG_DICT_ID != 0 {
        pos += 4;
    }
    pos += 1; // header checksum
    let block_max = 1usize << (2 * ((bd >> 4) & 7) + 8);
    let checksum_len = if flg & FLG_BLOCK_CHECKSUM != 0 { 4 } else { 0 };
    let mut bound = 0usize;
    loop {
        let w = word(pos)?;
        pos += 4;
        if w == 0 {
            return Some(bound);
        }
        let size = (w & 0x7fff_ffff) as usize;
        // High bit set: stored raw, so its size is exact.
        bound += if w & 0x8000_0000 != 0 {
            size
        } else {
            block_max
        };
        pos = pos.checked_add(size + checksum_len)?;
    }
}

/// Where the blocks of a "plain" frame start and their maximum size. Plain
/// means what Kafka, kafka-python and mqstore write: version 1, independent
/// blocks, no block or content checksum, no dictionary (a content size is
/// allowed and skipped).
///
/// The header checksum byte is not verified: it guards only these few bytes,
/// and the batch CRC-32C already covers the whole compressed stream.
fn lz4_plain_frame(src: &[u8]) -> Option<(usize, usize)> {
    const MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];
    const FLG_VERSION_MASK: u8 = 0xc0;
    const FLG_VERSION_1: u8 = 0x40;
    const FLG_INDEPENDENT: u8 = 0x20;
    const FLG_CONTENT_SIZE: u8 = 0x08;
    if src.get(..4)? != MAGIC {
        return None;
    }
    let flg = *src.get(4)?;
    let bd = *src.get(5)?;
    // Besides version and independence, only the content-size bit may be set.
    let plain = flg & FLG_VERSION_MASK == FLG_VERSION_1
        && flg & FLG_INDEPENDENT != 0
        && flg & !(FLG_VERSION_MASK | FLG_INDEPENDENT | FLG_CONTENT_SIZE) == 0;
    let size_code = (bd >> 4) & 7;
    if !plain || bd & 0x8f != 0 || size_code < 4 {
        return None;
    }
    let content_size_len = if flg & FLG_CONTENT_SIZE != 0 { 8 } else { 0 };
    let blocks_start = 6 + content_size_len + 1;
    Some((blocks_start, 1usize << (2 * size_code + 8)))
}

#[inline]
fn le_u32(src: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(src.get(at..at + 4)?.try_into().ok()?))
}

/// Upper bound on what one LZ4 block of `size` compressed bytes can produce:
/// each input byte yields at most 255 output bytes (a match-length extension
/// byte), so a hostile header cannot make us allocate far beyond the input.
#[inline]
fn lz4_block_bound(size: usize, block_max: usize) -> usize {
    block_max.min(size.saturating_mul(255).saturating_add(16))
}

/// Decodes a plain frame straight into one output buffer, several times
/// faster than `FrameDecoder`, which buffers and copies each block. `None`
/// for any other frame or any inconsistency: the general decoder then
/// handles it or reports the precise error.
fn lz4_decompress_plain(src: &[u8], limit: usize) -> Option<Vec<u8>> {
    let (blocks_start, block_max) = lz4_plain_frame(src)?;
    let mut pos = blocks_start;
    let mut bound = 0usize;
    loop {
        let word = le_u32(src, pos)?;
        pos += 4;
        if word == 0 {
            break;
        }
        let size = (word & 0x7fff_ffff) as usize;
        if size > block_max || src.len() - pos < size {
            return None;
        }
        bound += if word & 0x8000_0000 != 0 {
            size
        } else {
            lz4_block_bound(size, block_max)
        };
        pos += size;
    }
    if pos != src.len() || bound > limit {
        return None;
    }
    let mut out = vec![0u8; bound];
    let mut len = 0;
    let mut pos = blocks_start;
    loop {
        let word = le_u32(src, pos)?;
        pos += 4;
        if word == 0 {
            break;
        }
        let size = (word & 0x7fff_ffff) as usize;
        let block = &src[pos..pos + size];
        pos += size;
        if word & 0x8000_0000 != 0 {
            out[len..len + size].copy_from_slice(block);
            len += size;
        } else {
            let room = lz4_block_bound(size, block_max);
            len += lz4_flex::block::decompress_into(block, &mut out[len..len + room]).ok()?;
        }
    }
    out.truncate(len);
    Some(out)
}

fn lz4_decompress(src: &[u8], limit: usize) -> Result<Vec<u8>> {
    if let Some(out) = lz4_decompress_plain(src, limit) {
        return Ok(out);
    }
    // LZ4 cannot expand data more than ~255:1, so a hint beyond that is a lie.
    let plausible = src.len().saturating_mul(255).saturating_add(64);
    let capacity = lz4_size_hint(src)
        .unwrap_or_else(|| initial_capacity(src.len(), limit))
        .min(plausible)
        .min(limit);
    let mut out = Vec::with_capacity(capacity);
    read_limited(
        lz4_flex::frame::FrameDecoder::new(src),
        &mut out,
        limit,
        "lz4",
    )?;
    Ok(out)
}

#[cfg(feature = "zstd")]
mod zstd_impl {
    use std::cell::RefCell;

    use super::{initial_capacity, read_limited, ZSTD_LEVEL};
    use crate::error::{Error, Result};
    use zstd::zstd_safe;

    thread_local! {
        // Contexts are costly to set up (several hundred KiB of tables), and
        // batches are encoded and decoded at a high rate, so each thread keeps
        // one of each.
        static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { RefCell::new(None) };
        static DECOMPRESSOR: RefCell<Option<zstd_safe::DCtx<'static>>> =
            const { RefCell::new(None) };
    }

    pub(super) fn compress_into(src: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let internal = |e: std::io::Error| Error::Internal(format!("zstd compression failed: {e}"));
        COMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            let compressor = match slot.as_mut() {
                Some(c) => c,
                None => slot.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(internal)?),
            };
            let start = out.len();
            out.resize(start + zstd_safe::compress_bound(src.len()), 0);
            match compressor.compress_to_buffer(src, &mut out[start..]) {
                Ok(written) => {
                    out.truncate(start + written);
                    Ok(())
                }
                Err(e) => {
                    out.truncate(start);
                    Err(internal(e))
                }
            }
        })
    }

    pub(super) fn decompress(src: &[u8], limit: usize) -> Result<Vec<u8>> {
        // The content size is only a hint and may be hostile: trust it up to
        // a generous ratio and let the buffer grow past that if it was true.
        let plausible = src.len().saturating_mul(256).saturating_add(1 << 16);
        let capacity = match zstd_safe::get_frame_content_size(src) {
            Ok(Some(size)) => usize::try_from(size).unwrap_or(usize::MAX),
            _ => initial_capacity(src.len(), limit),
        }
        .min(plausible)
        .min(limit);
        let mut out = Vec::with_capacity(capacity);
        DECOMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            let dctx = match slot.as_mut() {
                Some(d) => d,
                None => slot.insert(zstd_safe::DCtx::try_create().ok_or_else(|| {
                    Error::Internal("cannot allocate a zstd decompression context".into())
                })?),
            };
            let decoder = zstd::stream::read::Decoder::with_context(src, dctx);
            read_limited(decoder, &mut out, limit, "zstd")
        })?;
        Ok(out)
    }
}

#[cfg(feature = "zstd")]
fn zstd_compress_into(src: &[u8], out: &mut Vec<u8>) -> Result<()> {
    zstd_impl::compress_into(src, out)
}

#[cfg(feature = "zstd")]
fn zstd_decompress(src: &[u8], limit: usize) -> Result<Vec<u8>> {
    zstd_impl::decompress(src, limit)
}

#[cfg(not(feature = "zstd"))]
fn zstd_compress_into(_src: &[u8], _out: &mut Vec<u8>) -> Result<()> {
    Compression::Zstd.check_available()
}

#[cfg(not(feature = "zstd"))]
fn zstd_decompress(_src: &[u8], _limit: usize) -> Result<Vec<u8>> {
    Compression::Zstd.check_available().map(|()| Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivially so: repeating text with a counter.
        let mut v = Vec::with_capacity(len);
        let mut i = 0u32;
        while v.len() < len {
            v.extend_from_slice(format!("message number {i} says hello; ").as_bytes());
            i += 1;
        }
        v.truncate(len);
        v
    }

    #[test]
    fn attribute_bits_and_names() {
        for c in ALL_CODECS {
            assert_eq!(Compression::from_attributes(c.attribute_bits()).unwrap(), c);
            // Other attribute bits must not disturb the codec.
            assert_eq!(
                Compression::from_attributes(c.attribute_bits() | 0x38).unwrap(),
                c
            );
            assert_eq!(Compression::parse(c.name()), Some(c));
            assert_eq!(c.to_string(), c.name());
        }
        assert_eq!(Compression::parse("LZ4"), Some(Compression::Lz4));
        assert_eq!(Compression::parse("brotli"), None);
        assert_eq!(Compression::default(), Compression::None);
        assert_eq!(Compression::from_attributes(1).unwrap(), Compression::Gzip);
        assert_eq!(
            Compression::from_attributes(2).unwrap(),
            Compression::Snappy
        );
        for code in 5..8 {
            assert!(matches!(
                Compression::from_attributes(code),
                Err(Error::Corruption(_))
            ));
        }
    }

    #[test]
    fn lz4_frame_header_matches_kafka() {
        let mut out = Vec::new();
        compress_into(Compression::Lz4, b"hello hello hello hello", &mut out).unwrap();
        // Magic (LE), FLG 0x60 (v1, independent), BD 0x40 (64 KiB), HC 0x82:
        // byte for byte what Kafka's Lz4BlockOutputStream writes.
        assert_eq!(&out[..7], &[0x04, 0x22, 0x4d, 0x18, 0x60, 0x40, 0x82]);
        assert_eq!(
            &out[out.len() - 4..],
            &[0, 0, 0, 0],
            "end mark, no content checksum"
        );
    }

    #[test]
    fn lz4_multi_block_round_trip_and_block_sizes() {
        let src = sample(3 * LZ4_BLOCK_SIZE + 1234);
        let mut out = Vec::new();
        compress_into(Compression::Lz4, &src, &mut out).unwrap();
        // Walk the blocks the way Kafka does: none may exceed 64 KiB.
        let mut pos = 7;
        let mut blocks = 0;
        loop {
            let word = u32::from_le_bytes(out[pos..pos + 4].try_into().unwrap());
            pos += 4;
            let size = (word & 0x7fff_ffff) as usize;
            if size == 0 {
                break;
            }
            assert!(size <= LZ4_BLOCK_SIZE);
            pos += size;
            blocks += 1;
        }
        assert_eq!(pos, out.len());
        assert_eq!(blocks, 4);
        assert_eq!(decompress(Compression::Lz4, &out, usize::MAX).unwrap(), src);
    }

    #[test]
    fn lz4_size_hint_bounds_output() {
        let src = sample(3 * LZ4_BLOCK_SIZE + 10);
        let mut out = Vec::new();
        compress_into(Compression::Lz4, &src, &mut out).unwrap();
        let hint = lz4_size_hint(&out).unwrap();
        assert!(hint >= src.len() && hint <= 4 * LZ4_BLOCK_SIZE, "{hint}");
        assert_eq!(lz4_size_hint(b"nope"), None);
        assert_eq!(lz4_size_hint(&out[..out.len() - 2]), None);
    }

    #[test]
    fn lz4_plain_fast_path_and_general_decoder_agree() {
        let src = sample(2 * LZ4_BLOCK_SIZE + 77);
        let mut out = Vec::new();
        compress_into(Compression::Lz4, &src, &mut out).unwrap();
        assert_eq!(lz4_decompress_plain(&out, usize::MAX).unwrap(), src);
        let mut general = Vec::new();
        read_limited(
            lz4_flex::frame::FrameDecoder::new(&out[..]),
            &mut general,
            usize::MAX,
            "lz4",
        )
        .unwrap();
        assert_eq!(general, src);
        // Frames the fast path declines still decode through FrameDecoder.
        for info in [
            lz4_frame_info().block_mode(lz4_flex::frame::BlockMode::Linked),
            lz4_frame_info().content_checksum(true),
            lz4_frame_info().block_checksums(true),
            lz4_frame_info().content_size(Some(src.len() as u64)),
            lz4_frame_info().block_size(lz4_flex::frame::BlockSize::Max4MB),
        ] {
            let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
            enc.write_all(&src).unwrap();
            let framed = enc.finish().unwrap();
            assert_eq!(
                decompress(Compression::Lz4, &framed, usize::MAX).unwrap(),
                src
            );
        }
        // Bytes after the end mark: the fast path declines, and the general
        // decoder, like Kafka's reader, stops at the end of the first frame.
        let twice = [&out[..], &out[..]].concat();
        assert!(lz4_decompress_plain(&twice, usize::MAX).is_none());
        let decoded = decompress(Compression::Lz4, &twice, usize::MAX).unwrap();
        assert!(decoded == src, "decoded {} bytes", decoded.len());
    }

    #[test]
    fn lz4_incompressible_round_trip() {
        let src: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut out = Vec::new();
        compress_into(Compression::Lz4, &src, &mut out).unwrap();
        assert_eq!(decompress(Compression::Lz4, &out, usize::MAX).unwrap(), src);
    }

    #[test]
    fn lz4_compress_appends() {
        let mut out = b"prefix".to_vec();
        compress_into(Compression::Lz4, b"abc", &mut out).unwrap();
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(
            decompress(Compression::Lz4, &out[6..], 100).unwrap(),
            b"abc"
        );
    }

    #[test]
    fn decompress_limit_is_enforced() {
        let src = sample(10_000);
        for c in ALL_CODECS {
            if !c.is_available() {
                continue;
            }
            let mut out = Vec::new();
            compress_into(c, &src, &mut out).unwrap();
            assert_eq!(decompress(c, &out, 10_000).unwrap(), src);
            assert!(matches!(
                decompress(c, &out, 9_999),
                Err(Error::Corruption(_))
            ));
        }
    }

    #[test]
    fn garbage_is_corruption() {
        for c in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            if !c.is_available() {
                continue;
            }
            let e = decompress(c, b"definitely not compressed", 1 << 20).unwrap_err();
            assert!(matches!(e, Error::Corruption(_)), "{c}: {e}");
        }
    }

    #[test]
    fn gzip_is_a_standard_stream_and_members_concatenate() {
        let src = sample(100_000);
        let mut out = Vec::new();
        compress_into(Compression::Gzip, &src, &mut out).unwrap();
        assert_eq!(&out[..3], &[0x1f, 0x8b, 0x08]);
        assert!(out.len() < src.len() / 4);
        compress_into(Compression::Gzip, b"and more", &mut out).unwrap();
        let mut expected = src.clone();
        expected.extend_from_slice(b"and more");
        assert_eq!(
            decompress(Compression::Gzip, &out, usize::MAX).unwrap(),
            expected
        );
        let cut = &out[..out.len() / 2];
        assert!(decompress(Compression::Gzip, cut, usize::MAX).is_err());
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_round_trip_and_frame() {
        let src = sample(200_000);
        let mut out = b"hdr".to_vec();
        compress_into(Compression::Zstd, &src, &mut out).unwrap();
        assert_eq!(&out[..3], b"hdr");
        // Standard zstd frame magic, little-endian 0xFD2FB528.
        assert_eq!(&out[3..7], &[0x28, 0xb5, 0x2f, 0xfd]);
        assert!(out.len() < src.len() / 4);
        assert_eq!(
            decompress(Compression::Zstd, &out[3..], usize::MAX).unwrap(),
            src
        );
        // A truncated frame must not decode as a shorter payload.
        assert!(decompress(Compression::Zstd, &out[3..out.len() - 1], usize::MAX).is_err());
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_reads_streamed_frames_without_content_size() {
        // Kafka's producer streams, so its frames carry no content size.
        let src = sample(50_000);
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.write_all(&src).unwrap();
        let framed = enc.finish().unwrap();
        assert_eq!(
            decompress(Compression::Zstd, &framed, usize::MAX).unwrap(),
            src
        );
    }

    #[cfg(not(feature = "zstd"))]
    #[test]
    fn zstd_unsupported_without_feature() {
        let mut out = Vec::new();
        assert!(matches!(
            compress_into(Compression::Zstd, b"x", &mut out),
            Err(Error::Unsupported(_))
        ));
        assert!(matches!(
            decompress(Compression::Zstd, b"x", 10),
            Err(Error::Unsupported(_))
        ));
    }

    proptest! {
        #[test]
        fn round_trips(data in proptest::collection::vec(any::<u8>(), 0..5000), codec in 0usize..5) {
            let c = ALL_CODECS[codec];
            prop_assume!(c.is_available());
            let mut out = Vec::new();
            compress_into(c, &data, &mut out).unwrap();
            prop_assert_eq!(decompress(c, &out, data.len()).unwrap(), data);
        }

        #[test]
        fn random_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), codec in 0usize..5) {
            let c = ALL_CODECS[codec];
            let _ = decompress(c, &data, 1 << 20);
        }

        #[test]
        fn lz4_frame_with_random_tail_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
            // Reach the block decoder, not just the magic check.
            let mut data = vec![0x04, 0x22, 0x4d, 0x18, 0x60, 0x40, 0x82];
            data.extend_from_slice(&tail);
            let _ = decompress(Compression::Lz4, &data, 1 << 20);
        }
    }
}
