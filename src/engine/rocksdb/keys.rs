//! What the RocksDB engine stores under which key (docs/FORMAT.md,
//! "RocksDB engine"). Every integer is big-endian, in keys so that byte
//! order is numeric order, in values for uniformity.

use crate::{Error, Result};

/// A batch key: shard id, then base offset.
pub const KEY_LEN: usize = 16;
/// The shard id in front of every batch key: the prefix extractor's length.
pub const PREFIX_LEN: usize = 8;

/// Flipping the sign bit maps i64 order onto u64 order: negative offsets
/// never occur, but the encoding must not depend on that.
fn order_preserving(offset: i64) -> u64 {
    (offset as u64) ^ (1 << 63)
}

/// The key of the batch of shard `shard` starting at `base_offset`, in the
/// `batches` and `index` column families.
pub fn batch_key(shard: u64, base_offset: i64) -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    key[..PREFIX_LEN].copy_from_slice(&shard.to_be_bytes());
    key[PREFIX_LEN..].copy_from_slice(&order_preserving(base_offset).to_be_bytes());
    key
}

/// The shard id and base offset of a batch key.
pub fn parse_batch_key(key: &[u8]) -> Option<(u64, i64)> {
    let key: &[u8; KEY_LEN] = key.try_into().ok()?;
    let shard = u64::from_be_bytes(key[..PREFIX_LEN].try_into().ok()?);
    let offset = u64::from_be_bytes(key[PREFIX_LEN..].try_into().ok()?);
    Some((shard, (offset ^ (1 << 63)) as i64))
}

/// The shard's key prefix: it sorts before every key of the shard, and the
/// next shard's prefix after every one, so `[prefix(id), prefix(id + 1))`
/// is the shard's range (a shard deletion's DeleteRange, a scan's upper
/// bound). Ids stop well short of `u64::MAX`.
pub fn shard_prefix(shard: u64) -> [u8; PREFIX_LEN] {
    shard.to_be_bytes()
}

/// The key of `group`'s committed offset of shard `shard` in the `groups`
/// column family: the shard's prefix, then the group name's bytes.
pub fn group_key(shard: u64, group: &str) -> Vec<u8> {
    [&shard_prefix(shard)[..], group.as_bytes()].concat()
}

/// The shard id and group name of a `groups` key.
pub fn parse_group_key(key: &[u8]) -> Option<(u64, String)> {
    let (shard, group) = key.split_first_chunk::<PREFIX_LEN>()?;
    let group = String::from_utf8(group.to_vec()).ok()?;
    Some((u64::from_be_bytes(*shard), group))
}

/// The id of a key in the `shards` column family.
pub fn parse_shard_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// What the `index` column family holds per batch: enough to rebuild the
/// shard's in-memory index at open without reading any batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexValue {
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub records: u32,
    pub len: u32,
}

pub const INDEX_VALUE_LEN: usize = 24;

impl IndexValue {
    pub fn encode(&self) -> [u8; INDEX_VALUE_LEN] {
        let mut out = [0u8; INDEX_VALUE_LEN];
        out[..8].copy_from_slice(&self.last_offset.to_be_bytes());
        out[8..16].copy_from_slice(&self.max_timestamp.to_be_bytes());
        out[16..20].copy_from_slice(&self.records.to_be_bytes());
        out[20..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    pub fn decode(value: &[u8]) -> Option<IndexValue> {
        let value: &[u8; INDEX_VALUE_LEN] = value.try_into().ok()?;
        Some(IndexValue {
            last_offset: i64::from_be_bytes(value[..8].try_into().ok()?),
            max_timestamp: i64::from_be_bytes(value[8..16].try_into().ok()?),
            records: u32::from_be_bytes(value[16..20].try_into().ok()?),
            len: u32::from_be_bytes(value[20..].try_into().ok()?),
        })
    }
}

/// A shard's catalogue entry (`shards` column family, key: the id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMeta {
    pub name: String,
    /// The shard's options as `[shard]` TOML keys.
    pub options: String,
    pub low_watermark: i64,
    /// A floor of the next offset: the shard's next offset is the larger of
    /// this and one past its newest stored batch, so appends need not
    /// rewrite it; deletes that drop batches write it.
    pub next_offset: i64,
}

const META_VERSION: u8 = 1;

impl ShardMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(25 + self.name.len() + self.options.len());
        out.push(META_VERSION);
        out.extend_from_slice(&self.low_watermark.to_be_bytes());
        out.extend_from_slice(&self.next_offset.to_be_bytes());
        for text in [&self.name, &self.options] {
            out.extend_from_slice(&(text.len() as u32).to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out
    }

    pub fn decode(id: u64, value: &[u8]) -> Result<ShardMeta> {
        let bad = |what: &str| {
            Error::corruption(format!(
                "RocksDB catalogue entry of shard id {id}: {what} ({} bytes)",
                value.len()
            ))
        };
        let (&version, mut rest) = value.split_first().ok_or_else(|| bad("empty"))?;
        if version != META_VERSION {
            return Err(bad(&format!("unknown version {version}")));
        }
        let mut take = |n: usize| -> Result<&[u8]> {
            if rest.len() < n {
                return Err(bad("truncated"));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let low_watermark = i64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
        let next_offset = i64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
        let mut text = || -> Result<String> {
            let len = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
            String::from_utf8(take(len)?.to_vec()).map_err(|_| bad("text is not UTF-8"))
        };
        let name = text()?;
        let options = text()?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(ShardMeta {
            name,
            options,
            low_watermark,
            next_offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte order of keys is (shard, offset) order, whatever the signs, so
    /// a shard's batches are contiguous and in offset order, and each
    /// shard's range lies between its prefix and the next one's.
    #[test]
    fn keys_sort_by_shard_then_offset() {
        let offsets = [
            i64::MIN,
            i64::MIN + 1,
            -1 << 40,
            -2,
            -1,
            0,
            1,
            255,
            256,
            1 << 40,
            i64::MAX - 1,
            i64::MAX,
        ];
        let mut pairs = Vec::new();
        for shard in [1u64, 2, 255, 256, 1 << 32, u64::MAX - 1] {
            for &offset in &offsets {
                pairs.push((shard, offset));
            }
        }
        let mut keys: Vec<[u8; KEY_LEN]> = pairs.iter().map(|&(s, o)| batch_key(s, o)).collect();
        keys.sort();
        let decoded: Vec<(u64, i64)> = keys.iter().map(|k| parse_batch_key(k).unwrap()).collect();
        assert_eq!(
            decoded, pairs,
            "sorted keys decode in (shard, offset) order"
        );
        for &(shard, offset) in &pairs {
            let key = batch_key(shard, offset);
            assert!(shard_prefix(shard).as_slice() < key.as_slice());
            assert!(key.as_slice() < shard_prefix(shard + 1).as_slice());
        }
        assert_eq!(parse_batch_key(&[0; 15]), None);
    }

    #[test]
    fn values_round_trip_and_damage_is_named() {
        let index = IndexValue {
            last_offset: 41,
            max_timestamp: -7,
            records: 3,
            len: 1 << 20,
        };
        assert_eq!(IndexValue::decode(&index.encode()), Some(index));
        assert_eq!(IndexValue::decode(&index.encode()[1..]), None);
        let meta = ShardMeta {
            name: "orders/ü".into(),
            options: "engine = \"rocksdb\"\n".into(),
            low_watermark: 5,
            next_offset: 9,
        };
        let bytes = meta.encode();
        assert_eq!(ShardMeta::decode(3, &bytes).unwrap(), meta);
        for damaged in [&bytes[..bytes.len() - 1], &bytes[..0], &[9u8, 0, 0][..]] {
            let err = ShardMeta::decode(3, damaged).unwrap_err();
            assert_eq!(err.status(), crate::Status::Corruption);
            assert!(err.to_string().contains("shard id 3"), "{err}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(ShardMeta::decode(3, &long).is_err());
        let key = group_key(7, "billing/ü");
        assert_eq!(parse_group_key(&key), Some((7, "billing/ü".to_string())));
        assert!(shard_prefix(7).as_slice() < key.as_slice());
        assert!(key.as_slice() < shard_prefix(8).as_slice());
        assert_eq!(parse_group_key(&[0; 7]), None);
    }
}
