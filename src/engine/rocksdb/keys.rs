//! What the RocksDB engine stores under which key (docs/FORMAT.md,
//! "RocksDB engine"). Every integer is big-endian, in keys so that byte
//! order is numeric order, in values for uniformity.

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
    fn group_keys_round_trip_within_their_shard() {
        let key = group_key(7, "billing/ü");
        assert_eq!(parse_group_key(&key), Some((7, "billing/ü".to_string())));
        assert!(shard_prefix(7).as_slice() < key.as_slice());
        assert!(key.as_slice() < shard_prefix(8).as_slice());
        assert_eq!(parse_group_key(&[0; 7]), None);
    }
}
