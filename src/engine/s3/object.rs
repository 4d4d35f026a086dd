//! An object: one shard's batches, byte for byte as appended (Kafka v2),
//! followed by a footer that indexes them, so that one ranged GET of the
//! footer lists an object's batches and one ranged GET of a batch's bytes
//! reads it.
//!
//! ```text
//! batch bytes ...                          (data_len bytes)
//! entry * count: base_offset i64, BatchMeta (24 bytes)   (32 bytes each)
//! count u32, crc32c u32 of the entries, data_len u64, "MQSOBJ01"
//! ```
//! A batch's position is the sum of the lengths before it. The entries
//! give every batch's last offset and largest timestamp: the object's
//! offset index and time index. All integers big-endian.

use bytes::{BufMut, Bytes, BytesMut};

use crate::engine::database::{BatchMeta, BATCH_META_LEN};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"MQSOBJ01";
const ENTRY_LEN: usize = 8 + BATCH_META_LEN;
pub const TRAILER_LEN: usize = 4 + 4 + 8 + 8;

/// A batch of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub base_offset: i64,
    pub meta: BatchMeta,
    /// Where the batch starts in the object.
    pub pos: u64,
}

/// The footer of an object holding `batches` (in the order written).
pub fn footer(batches: &[(i64, BatchMeta)]) -> Bytes {
    let mut out = BytesMut::with_capacity(batches.len() * ENTRY_LEN + TRAILER_LEN);
    let mut data_len = 0u64;
    for (base, meta) in batches {
        out.put_i64(*base);
        out.put_slice(&meta.encode());
        data_len += meta.len as u64;
    }
    let crc = crc32c::crc32c(&out);
    out.put_u32(batches.len() as u32);
    out.put_u32(crc);
    out.put_u64(data_len);
    out.put_slice(MAGIC);
    out.freeze()
}

/// The length of the footer of an object holding `count` batches.
pub fn footer_len(count: usize) -> u64 {
    (count * ENTRY_LEN + TRAILER_LEN) as u64
}

/// The batches the footer `bytes` of object `name` lists, checked against
/// what the manifest says of it (`data_len`).
pub fn parse_footer(name: &str, bytes: &[u8], data_len: u64) -> Result<Vec<Slot>> {
    let bad = |what: &str| Error::corruption(format!("S3 object {name}: footer {what}"));
    if bytes.len() < TRAILER_LEN {
        return Err(bad("truncated"));
    }
    let (entries, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
    let word = |at: usize, n: usize| &trailer[at..at + n];
    let count = u32::from_be_bytes(word(0, 4).try_into().expect("4 bytes")) as usize;
    let crc = u32::from_be_bytes(word(4, 4).try_into().expect("4 bytes"));
    let stored_len = u64::from_be_bytes(word(8, 8).try_into().expect("8 bytes"));
    if word(16, 8) != MAGIC {
        return Err(bad("has no object marker"));
    }
    if entries.len() != count * ENTRY_LEN || crc32c::crc32c(entries) != crc {
        return Err(bad("fails its checksum"));
    }
    if stored_len != data_len {
        return Err(bad(&format!(
            "says {stored_len} data bytes, the manifest {data_len}"
        )));
    }
    let mut slots = Vec::with_capacity(count);
    let mut pos = 0u64;
    for entry in entries.chunks_exact(ENTRY_LEN) {
        let base_offset = i64::from_be_bytes(entry[..8].try_into().expect("8 bytes"));
        let meta = BatchMeta::decode(&entry[8..]).ok_or_else(|| bad("entry malformed"))?;
        slots.push(Slot {
            base_offset,
            meta,
            pos,
        });
        pos += meta.len as u64;
    }
    if pos != data_len {
        return Err(bad("lengths do not add up to the data"));
    }
    Ok(slots)
}
