//! The key and tag index of one stored batch: the sorted 32-bit hashes of
//! its records' keys and tags. A key or tag lookup tests each batch's
//! hashes and decodes only the batches that may hold a match, instead of
//! every record of the shard. A hash can collide (the batch is then decoded
//! and the match checked exactly), so the filter only ever skips batches
//! that cannot match. 4 bytes per key or tag; nothing for keyless records.

// The engines with a batch index use it; the edge build has none of them.
#![cfg_attr(not(any(feature = "journal", feature = "rocksdb")), allow(dead_code))]

use bytes::Bytes;

use crate::format;
use crate::record::Record;
use crate::Result;

/// Distinct seeds, so a key never matches a tag of the same bytes.
const KEY_SEED: u32 = 0x6b65_7921;
const TAG_SEED: u32 = 0x7461_6721;

pub fn key_hash(key: &[u8]) -> u32 {
    crc32c::crc32c_append(KEY_SEED, key)
}

pub fn tag_hash(tag: &[u8]) -> u32 {
    crc32c::crc32c_append(TAG_SEED, tag)
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyFilter {
    hashes: Box<[u32]>,
}

impl KeyFilter {
    fn from_vec(mut hashes: Vec<u32>) -> KeyFilter {
        hashes.sort_unstable();
        hashes.dedup();
        KeyFilter {
            hashes: hashes.into_boxed_slice(),
        }
    }

    /// The filter of the batch `records` are appended as.
    pub fn from_records(records: &[Record<'_>]) -> KeyFilter {
        let mut hashes = Vec::new();
        for record in records {
            if let Some(key) = record.key {
                hashes.push(key_hash(key));
            }
            hashes.extend(record.tags.iter().map(|t| tag_hash(t.as_bytes())));
        }
        KeyFilter::from_vec(hashes)
    }

    /// The filter of a stored batch, by decoding it (batches replayed from
    /// disk, or rewritten by a delete).
    pub fn from_batch(batch: &Bytes) -> Result<KeyFilter> {
        let mut hashes = Vec::new();
        format::for_each_record(batch, false, |record| {
            if let Some(key) = &record.key {
                hashes.push(key_hash(key));
            }
            hashes.extend(record.tags.iter().map(|t| tag_hash(t)));
            true
        })?;
        Ok(KeyFilter::from_vec(hashes))
    }

    /// A filter read back from a checkpoint (sorted there when written).
    pub fn from_hashes(hashes: Vec<u32>) -> Option<KeyFilter> {
        hashes.windows(2).all(|w| w[0] < w[1]).then(|| KeyFilter {
            hashes: hashes.into_boxed_slice(),
        })
    }

    pub fn hashes(&self) -> &[u32] {
        &self.hashes
    }

    /// Whether any hash of `wanted` (sorted or not) may be in the batch.
    pub fn may_contain_any(&self, wanted: &[u32]) -> bool {
        wanted.iter().any(|h| self.hashes.binary_search(h).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_what_was_appended_and_survives_encoding() {
        let records = vec![
            Record::new(b"v").with_key(b"alpha"),
            Record {
                tags: vec!["red"],
                ..Record::new(b"w")
            },
            Record::new(b"no key"),
        ];
        let filter = KeyFilter::from_records(&records);
        assert!(filter.may_contain_any(&[key_hash(b"alpha")]));
        assert!(filter.may_contain_any(&[key_hash(b"zzz"), tag_hash(b"red")]));
        assert!(!filter.may_contain_any(&[key_hash(b"beta")]));
        // A key is not a tag of the same bytes.
        assert!(!filter.may_contain_any(&[tag_hash(b"alpha")]));
        let encoded = format::encode_batch(&records, format::Compression::None, 1).unwrap();
        let from_disk = KeyFilter::from_batch(&Bytes::from(encoded.bytes)).unwrap();
        assert_eq!(from_disk, filter);
        assert_eq!(
            KeyFilter::from_hashes(filter.hashes().to_vec()),
            Some(filter)
        );
        assert_eq!(
            KeyFilter::from_hashes(vec![2, 1]),
            None,
            "unsorted is damage"
        );
    }
}
