//! Snappy as Kafka frames it: the xerial (snappy-java `SnappyOutputStream`)
//! stream, an 16-byte header then blocks, each a 4-byte big-endian length
//! and one raw snappy block. Kafka's Java producer and librdkafka both write
//! it. Like snappy-java's reader, a stream without the header is read as one
//! raw snappy block, and a header met again at a block boundary (streams
//! concatenated) is skipped.

use crate::error::{Error, Result};

/// `0x82 "SNAPPY" 0x00`, then version 1 and minimum compatible version 1.
const XERIAL_HEADER: [u8; 16] = [
    0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1,
];
const XERIAL_MAGIC_LEN: usize = 8;
/// snappy-java's default block size, which Kafka's producer uses.
const BLOCK_SIZE: usize = 32 * 1024;

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::corruption(format!("snappy decompression failed: {what}"))
}

/// Appends `src` in xerial framing to `out`.
pub(super) fn compress_into(src: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let blocks = src.len().div_ceil(BLOCK_SIZE);
    out.reserve(XERIAL_HEADER.len() + blocks * 4 + snap::raw::max_compress_len(src.len()));
    out.extend_from_slice(&XERIAL_HEADER);
    let mut encoder = snap::raw::Encoder::new();
    for block in src.chunks(BLOCK_SIZE) {
        let length_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let start = out.len();
        out.resize(start + snap::raw::max_compress_len(block.len()), 0);
        let written = encoder
            .compress(block, &mut out[start..])
            .map_err(|e| Error::Internal(format!("snappy compression failed: {e}")))?;
        out.truncate(start + written);
        out[length_at..start].copy_from_slice(&(written as u32).to_be_bytes());
    }
    Ok(())
}

/// Decompresses a xerial stream or a raw snappy block; more than `limit`
/// bytes of output is corruption.
pub(super) fn decompress(src: &[u8], limit: usize) -> Result<Vec<u8>> {
    if !src.starts_with(&XERIAL_HEADER[..XERIAL_MAGIC_LEN]) {
        let mut out = Vec::new();
        decompress_block(src, limit, &mut out)?;
        return Ok(out);
    }
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < src.len() {
        if src[pos..].starts_with(&XERIAL_HEADER[..XERIAL_MAGIC_LEN]) {
            if src.len() - pos < XERIAL_HEADER.len() {
                return Err(corrupt("truncated stream header"));
            }
            pos += XERIAL_HEADER.len();
            continue;
        }
        let Some(length) = src.get(pos..pos + 4) else {
            return Err(corrupt("truncated block length"));
        };
        let length = u32::from_be_bytes(length.try_into().expect("4 bytes")) as usize;
        pos += 4;
        let Some(block) = src.get(pos..pos.saturating_add(length)) else {
            return Err(corrupt(format!(
                "block of {length} bytes runs past the end of the stream"
            )));
        };
        decompress_block(block, limit, &mut out)?;
        pos += length;
    }
    Ok(out)
}

/// Appends one raw snappy block's output to `out`.
fn decompress_block(block: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<()> {
    let size = snap::raw::decompress_len(block).map_err(corrupt)?;
    if size > limit.saturating_sub(out.len()) {
        return Err(super::compression::too_large(limit));
    }
    let start = out.len();
    out.resize(start + size, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(corrupt)?;
    out.truncate(start + written);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_xerial_header_and_32k_blocks() {
        let src: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = b"hdr".to_vec();
        compress_into(&src, &mut out).unwrap();
        assert_eq!(&out[3..19], &XERIAL_HEADER);
        let first = u32::from_be_bytes(out[19..23].try_into().unwrap()) as usize;
        let block = &out[23..23 + first];
        assert_eq!(snap::raw::decompress_len(block).unwrap(), BLOCK_SIZE);
        assert_eq!(decompress(&out[3..], src.len()).unwrap(), src);
    }

    #[test]
    fn reads_raw_blocks_and_concatenated_streams() {
        let raw = snap::raw::Encoder::new()
            .compress_vec(b"raw snappy")
            .unwrap();
        assert_eq!(decompress(&raw, 100).unwrap(), b"raw snappy");
        let mut twice = Vec::new();
        compress_into(b"first ", &mut twice).unwrap();
        compress_into(b"second", &mut twice).unwrap();
        assert_eq!(decompress(&twice, 100).unwrap(), b"first second");
    }

    #[test]
    fn damage_and_excess_are_corruption() {
        let mut framed = Vec::new();
        compress_into(&[7u8; 5000], &mut framed).unwrap();
        for bad in [
            &framed[..framed.len() - 1],
            &framed[..18],
            &framed[..12],
            b"\x82SNAPPY\x00garbage-garbage-garbage".as_slice(),
            b"not snappy at all".as_slice(),
        ] {
            let err = decompress(bad, 1 << 20).unwrap_err();
            assert!(matches!(err, Error::Corruption(_)), "{err}");
        }
        let err = decompress(&framed, 4999).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
    }
}
