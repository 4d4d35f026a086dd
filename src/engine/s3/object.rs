//! An object: one shard's batches, byte for byte as appended (Kafka v2),
//! followed by a footer that indexes them, so that one ranged GET of the
//! footer lists an object's batches and one ranged GET of a batch's bytes
//! reads it.
//!
//! ```text
//! batch bytes ...                                        (data_len bytes)
//! entry * count: base_offset i64, BatchMeta (24 bytes),
//!                hashes u32 (u32::MAX: filter not known)  (36 bytes each)
//! hash u32 * the entries' hashes, in entry order          (the key/tag filters)
//! count u32, crc32c u32 of the entries and hashes, data_len u64, "MQSOBJ01"
//! ```
//! A batch's position is the sum of the lengths before it. The entries
//! give every batch's last offset and largest timestamp: the object's
//! offset index and time index. A batch's filter is the sorted 32-bit
//! hashes of its keys and tags (`KeyFilter`): at open, key and tag lookups
//! skip the batches it rules out without fetching them. All integers
//! big-endian; the manifest gives each object's footer length.

use bytes::{BufMut, Bytes, BytesMut};

use crate::engine::database::{BatchMeta, BATCH_META_LEN};
use crate::engine::KeyFilter;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"MQSOBJ01";
const ENTRY_LEN: usize = 8 + BATCH_META_LEN + 4;
const TRAILER_LEN: usize = 4 + 4 + 8 + 8;
/// An entry's hash count when its batch's filter is not known.
const NO_FILTER: u32 = u32::MAX;

/// A batch of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub base_offset: i64,
    pub meta: BatchMeta,
    /// Where the batch starts in the object.
    pub pos: u64,
    pub keys: Option<KeyFilter>,
}

/// A batch as a footer lists it.
pub type Listed<'a> = (i64, BatchMeta, Option<&'a KeyFilter>);

/// The footer of an object holding `batches` (in the order written).
pub fn footer<'a>(batches: impl Iterator<Item = Listed<'a>> + Clone) -> Bytes {
    let (count, len) = footer_size(batches.clone().map(|(_, _, keys)| keys));
    let mut out = BytesMut::with_capacity(len as usize);
    let mut data_len = 0u64;
    for (base, meta, keys) in batches.clone() {
        out.put_i64(base);
        out.put_slice(&meta.encode());
        out.put_u32(keys.map_or(NO_FILTER, |k| k.hashes().len() as u32));
        data_len += meta.len as u64;
    }
    for hash in batches.flat_map(|(_, _, keys)| keys.map_or(&[][..], |k| k.hashes())) {
        out.put_u32(*hash);
    }
    let crc = crc32c::crc32c(&out);
    out.put_u32(count as u32);
    out.put_u32(crc);
    out.put_u64(data_len);
    out.put_slice(MAGIC);
    out.freeze()
}

/// The batch count and the footer length of an object holding batches
/// with these filters.
fn footer_size<'a>(filters: impl Iterator<Item = Option<&'a KeyFilter>>) -> (usize, u64) {
    let (mut count, mut hashes) = (0, 0);
    for keys in filters {
        count += 1;
        hashes += keys.map_or(0, |k| k.hashes().len());
    }
    (count, (count * ENTRY_LEN + hashes * 4 + TRAILER_LEN) as u64)
}

/// The batches the footer `bytes` of object `name` lists, checked against
/// what the manifest says of it (`data_len`).
pub fn parse_footer(name: &str, bytes: &[u8], data_len: u64) -> Result<Vec<Slot>> {
    let bad = |what: &str| Error::corruption(format!("S3 object {name}: footer {what}"));
    if bytes.len() < TRAILER_LEN {
        return Err(bad("truncated"));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
    let word = |at: usize, n: usize| &trailer[at..at + n];
    let count = u32::from_be_bytes(word(0, 4).try_into().expect("4 bytes")) as usize;
    let crc = u32::from_be_bytes(word(4, 4).try_into().expect("4 bytes"));
    let stored_len = u64::from_be_bytes(word(8, 8).try_into().expect("8 bytes"));
    if word(16, 8) != MAGIC {
        return Err(bad("has no object marker"));
    }
    if body.len() < count * ENTRY_LEN || crc32c::crc32c(body) != crc {
        return Err(bad("fails its checksum"));
    }
    if stored_len != data_len {
        return Err(bad(&format!(
            "says {stored_len} data bytes, the manifest {data_len}"
        )));
    }
    let (entries, mut hashes) = body.split_at(count * ENTRY_LEN);
    let mut slots = Vec::with_capacity(count);
    let mut pos = 0u64;
    for entry in entries.chunks_exact(ENTRY_LEN) {
        let base_offset = i64::from_be_bytes(entry[..8].try_into().expect("8 bytes"));
        let meta = BatchMeta::decode(&entry[8..8 + BATCH_META_LEN])
            .ok_or_else(|| bad("entry malformed"))?;
        let n = u32::from_be_bytes(entry[8 + BATCH_META_LEN..].try_into().expect("4 bytes"));
        let keys = match n {
            NO_FILTER => None,
            n if hashes.len() >= n as usize * 4 => {
                let (own, rest) = hashes.split_at(n as usize * 4);
                hashes = rest;
                let own = own
                    .chunks_exact(4)
                    .map(|h| u32::from_be_bytes(h.try_into().expect("4 bytes")))
                    .collect();
                Some(KeyFilter::from_hashes(own).ok_or_else(|| bad("filter unsorted"))?)
            }
            _ => return Err(bad("filters truncated")),
        };
        slots.push(Slot {
            base_offset,
            meta,
            pos,
            keys,
        });
        pos += meta.len as u64;
    }
    if pos != data_len || !hashes.is_empty() {
        return Err(bad("lengths do not add up"));
    }
    Ok(slots)
}
