//! Journal entries: the frame around every record in a journal segment.
//! The layout is documented in docs/FORMAT.md ("Journal engine").
//!
//! An entry is a 32-byte little-endian header followed by its payload and
//! zero padding up to the next multiple of 8. For a batch the payload is the
//! Kafka RecordBatch exactly as stored, so a transfer can sendfile(2) it
//! straight out of the segment.
//!
//! Segment files are recycled (see `recycle`): a file taken for a new
//! segment still holds the entries of its previous use past the new
//! writer's position, each one intact. So an entry carries its segment's
//! tag (`segment_tag`, from the segment's start position) and its CRC
//! covers the segment's start position: an entry of an earlier use of the
//! file parses as `Stale`, never as valid. Entries written before tags
//! existed carry tag 0 and are valid wherever they are; files holding any
//! are never recycled.

use crate::{Error, Result};

/// "MQJ1" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"MQJ1");
pub const HEADER_LEN: usize = 32;
/// Entries start at multiples of this, so recovery can look for the next
/// valid entry after a damaged one without trying every byte position.
pub const ALIGN: u64 = 8;

/// What an entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A record batch appended to shard `shard_id`; `aux` = base offset.
    Batch = 1,
    /// A shard's catalogue record: created (first one), or its low
    /// watermark and high watermark at this point of the log.
    Checkpoint = 2,
    /// The shard was deleted; its id is never reused.
    DeleteShard = 3,
    /// The batch at base offset `aux` is replaced by the payload (a batch
    /// with some records removed by delete_by_keys/offsets).
    Rewrite = 4,
    /// The batch at base offset `aux` is gone (all its records deleted).
    DropBatch = 5,
    /// Everything in the journal before global position `aux` was on
    /// stable storage when this entry was logged (one after each
    /// fdatasync; shard id 0). Recovery uses the newest it finds to tell
    /// an unacknowledged tail torn by a power cut from damage to
    /// acknowledged data.
    Synced = 6,
    /// Every batch of the shard at or after offset `aux` is gone, and the
    /// shard's next offset is `aux` (`truncate_to`).
    Truncate = 7,
    /// The consumer group named by the payload (UTF-8) committed offset
    /// `aux` of the shard; `aux` = `u64::MAX`: the group's offset is
    /// forgotten. Every catalogue record is followed by one per group the
    /// shard has, so the newest catalogue record and what follows it hold
    /// all of them.
    GroupOffset = 8,
}

/// `aux` of a `GroupOffset` entry that forgets the group's offset.
pub const FORGET_GROUP: u64 = u64::MAX;

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Batch,
            2 => Kind::Checkpoint,
            3 => Kind::DeleteShard,
            4 => Kind::Rewrite,
            5 => Kind::DropBatch,
            6 => Kind::Synced,
            7 => Kind::Truncate,
            8 => Kind::GroupOffset,
            _ => return None,
        })
    }
}

/// A parsed, validated entry header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    pub kind: Kind,
    pub payload_len: u32,
    pub shard_id: u64,
    pub aux: u64,
    /// Written with its segment's tag (false: by a version before tags).
    pub tagged: bool,
}

impl EntryHeader {
    /// Bytes the entry occupies in the segment, padding included.
    pub fn entry_len(&self) -> u64 {
        entry_len(self.payload_len as usize)
    }
}

pub fn entry_len(payload_len: usize) -> u64 {
    (HEADER_LEN as u64 + payload_len as u64).next_multiple_of(ALIGN)
}

/// The tag of the segment starting at global position `base`: nonzero,
/// and different for any two segments less than 1 TiB apart (segments are
/// at least 64 KiB long, so each 64 KiB unit starts at most one).
pub fn segment_tag(base: u64) -> u32 {
    ((base >> 16) % TAG_PERIOD) as u32 + 1
}

/// Distinct tags (the field holds 24 bits, and 0 means untagged).
const TAG_PERIOD: u64 = (1 << 24) - 1;

/// The header bytes of an entry framing `payload`, CRC included, not yet
/// placed in a segment (`place` finishes it).
pub fn header(kind: Kind, shard_id: u64, aux: u64, payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = fields(kind, shard_id, aux, payload.len());
    let crc = crc_of(&h, payload);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A header without its CRC (and tag).
fn fields(kind: Kind, shard_id: u64, aux: u64, payload_len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4] = kind as u8;
    h[8..12].copy_from_slice(&(payload_len as u32).to_le_bytes());
    h[16..24].copy_from_slice(&shard_id.to_le_bytes());
    h[24..32].copy_from_slice(&aux.to_le_bytes());
    h
}

/// The header of a `Batch` entry of shard `shard_id` at `base_offset`,
/// as `header` makes it, for a valid Kafka v2 batch (its own CRC-32C, over
/// the bytes from its attributes on, matches them). The payload's share of
/// the CRC is derived from the batch's: the batch is not read again, which
/// saves a pass over every appended byte.
pub fn batch_header(shard_id: u64, base_offset: u64, batch: &[u8]) -> [u8; HEADER_LEN] {
    use crate::format::batch::{ATTRIBUTES_OFFSET, CRC_OFFSET};
    let mut h = fields(Kind::Batch, shard_id, base_offset, batch.len());
    let (front, rest) = batch.split_at(ATTRIBUTES_OFFSET);
    let batch_crc = u32::from_be_bytes(front[CRC_OFFSET..].try_into().unwrap());
    let crc = crc_combine(crc_of(&h, front), batch_crc, rest.len());
    debug_assert_eq!(crc, crc_of(&h, batch), "the batch's CRC matches its bytes");
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The CRC-32C of A followed by B, from the CRCs of A and B and B's length:
/// CRC(A) advanced over `len_b` zero bytes, plus CRC(B). Advancing is a
/// multiplication by x^(8 * len_b) modulo the polynomial, built from the
/// powers x^(2^k) (`X_POW_2K`) in log2(len_b) steps. (`crc32c_combine`
/// squares 32 × 32 bit matrices instead: tens of microseconds per batch,
/// more than reading the batch.)
fn crc_combine(crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
    let mut shift = ONE;
    let (mut n, mut k) = (len_b as u64, 3);
    while n != 0 {
        if n & 1 == 1 {
            shift = mul_mod_p(X_POW_2K[k], shift);
        }
        n >>= 1;
        k += 1;
    }
    mul_mod_p(shift, crc_a) ^ crc_b
}

/// CRC-32C's polynomial, bit-reversed (the CRC's bit order): bit 31 is x^0.
const POLY: u32 = 0x82F6_3B78;
/// The polynomial 1 in that order.
const ONE: u32 = 1 << 31;

/// a · b modulo the polynomial, both in the CRC's bit order.
const fn mul_mod_p(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    let mut bit = ONE;
    while bit != 0 {
        if a & bit != 0 {
            product ^= b;
        }
        bit >>= 1;
        b = if b & 1 == 1 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    product
}

/// x^(2^k) modulo the polynomial, for every k a byte count of up to 64
/// bits needs (k = 3 + bit).
const X_POW_2K: [u32; 67] = x_pow_2k();

const fn x_pow_2k() -> [u32; 67] {
    let mut table = [0u32; 67];
    let mut p = ONE >> 1; // x^1
    let mut k = 0;
    while k < table.len() {
        table[k] = p;
        p = mul_mod_p(p, p);
        k += 1;
    }
    table
}

/// `header` placed in the segment starting at `base`: its tag set, and
/// its CRC extended over the tag and `base` (cheaply: the CRC of the rest,
/// payload included, is already in the header).
pub fn place(header: &[u8; HEADER_LEN], base: u64) -> [u8; HEADER_LEN] {
    let mut h = *header;
    let tag = segment_tag(base).to_le_bytes();
    h[5..8].copy_from_slice(&tag[..3]);
    let inner = u32::from_le_bytes(h[12..16].try_into().unwrap());
    let crc = extend_crc(inner, &h, base);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// `header` as versions before tags wrote it: tag 0, the CRC without the
/// extension (for tests reading such journals).
#[cfg(test)]
pub fn untagged(header: &[u8; HEADER_LEN], payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = *header;
    h[5..8].fill(0);
    let crc = crc_of(&h, payload);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The CRC of a tagged entry: the untagged CRC, then the tag bytes and the
/// segment's start position.
fn extend_crc(inner: u32, h: &[u8], base: u64) -> u32 {
    let crc = crc32c::crc32c_append(inner, &h[5..8]);
    crc32c::crc32c_append(crc, &base.to_le_bytes())
}

/// CRC-32C of the header without its CRC field (tag bytes as zeros), then
/// the payload.
fn crc_of(h: &[u8], payload: &[u8]) -> u32 {
    let mut head = [0u8; 12];
    head.copy_from_slice(&h[0..12]);
    head[5..8].fill(0);
    let crc = crc32c::crc32c(&head);
    let crc = crc32c::crc32c_append(crc, &h[16..32]);
    crc32c::crc32c_append(crc, payload)
}

/// What recovery finds at a position of a segment.
#[derive(Debug)]
pub enum Parsed {
    /// 32 zero bytes (or the segment's end): nothing was ever written here.
    Empty,
    /// An entry of an earlier use of the file (another segment's tag): for
    /// this segment, nothing was written here either.
    Stale,
    Valid(EntryHeader),
    /// Something was written but it is not a whole, intact entry.
    Invalid(String),
}

/// Parses and fully validates (tag and CRC included) the entry at the
/// start of `rest`, the remainder of the segment starting at `base`.
pub fn parse(rest: &[u8], base: u64) -> Parsed {
    if rest.len() < HEADER_LEN {
        return if rest.iter().all(|&b| b == 0) {
            Parsed::Empty
        } else {
            Parsed::Invalid("truncated entry header".into())
        };
    }
    let h = &rest[..HEADER_LEN];
    if h.iter().all(|&b| b == 0) {
        return Parsed::Empty;
    }
    let magic = u32::from_le_bytes(h[0..4].try_into().unwrap());
    if magic != MAGIC {
        return Parsed::Invalid(format!("bad entry magic {magic:#010x}"));
    }
    let Some(kind) = Kind::from_u8(h[4]) else {
        return Parsed::Invalid(format!("unknown entry kind {}", h[4]));
    };
    let tag = u32::from_le_bytes([h[5], h[6], h[7], 0]);
    if tag != 0 && tag != segment_tag(base) {
        return Parsed::Stale;
    }
    let payload_len = u32::from_le_bytes(h[8..12].try_into().unwrap());
    if HEADER_LEN + payload_len as usize > rest.len() {
        return Parsed::Invalid(format!(
            "entry of {payload_len} payload bytes runs past the segment's end"
        ));
    }
    let payload = &rest[HEADER_LEN..HEADER_LEN + payload_len as usize];
    let stored = u32::from_le_bytes(h[12..16].try_into().unwrap());
    let mut actual = crc_of(h, payload);
    if tag != 0 {
        actual = extend_crc(actual, h, base);
    }
    if stored != actual {
        return Parsed::Invalid(format!(
            "entry CRC mismatch: stored {stored:#010x}, computed {actual:#010x}"
        ));
    }
    Parsed::Valid(EntryHeader {
        kind,
        payload_len,
        shard_id: u64::from_le_bytes(h[16..24].try_into().unwrap()),
        aux: u64::from_le_bytes(h[24..32].try_into().unwrap()),
        tagged: tag != 0,
    })
}

/// Position of the first valid entry at or after `from` (aligned) in
/// `segment`, which starts at global position `base`, if any. Used to tell
/// a torn tail (nothing valid follows) from corruption in the middle of
/// the log. Only entries starting before `to` are looked at (recovery
/// scans a segment in windows); an entry may extend past `to`.
pub fn find_valid_before(segment: &[u8], base: u64, from: u64, to: u64) -> Option<u64> {
    find_before(segment, base, from, to, |p| matches!(p, Parsed::Valid(_)))
}

/// As `find_valid_before`, for the first entry of an earlier use of the
/// file (`Parsed::Stale`).
pub fn find_stale_before(segment: &[u8], base: u64, from: u64, to: u64) -> Option<u64> {
    find_before(segment, base, from, to, |p| matches!(p, Parsed::Stale))
}

fn find_before(
    segment: &[u8],
    base: u64,
    from: u64,
    to: u64,
    wanted: impl Fn(&Parsed) -> bool,
) -> Option<u64> {
    let magic = MAGIC.to_le_bytes();
    let mut pos = from.next_multiple_of(ALIGN) as usize;
    let end = (to as usize).min(segment.len());
    while pos < end && pos + HEADER_LEN <= segment.len() {
        if segment[pos..pos + 4] == magic && wanted(&parse(&segment[pos..], base)) {
            return Some(pos as u64);
        }
        pos += ALIGN as usize;
    }
    None
}

/// Payload of a checkpoint: the shard's name, options and watermarks.
pub struct Checkpoint {
    pub low: i64,
    pub next: i64,
    pub name: String,
    /// The shard's options as `[shard]` TOML keys.
    pub options: String,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + self.name.len() + self.options.len());
        out.extend_from_slice(&self.low.to_le_bytes());
        out.extend_from_slice(&self.next.to_le_bytes());
        out.extend_from_slice(&(self.name.len() as u32).to_le_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(self.options.as_bytes());
        out
    }

    pub fn decode(payload: &[u8]) -> Result<Checkpoint> {
        let bad = || Error::corruption("malformed journal checkpoint entry");
        if payload.len() < 20 {
            return Err(bad());
        }
        let low = i64::from_le_bytes(payload[0..8].try_into().unwrap());
        let next = i64::from_le_bytes(payload[8..16].try_into().unwrap());
        let name_len = u32::from_le_bytes(payload[16..20].try_into().unwrap()) as usize;
        let rest = &payload[20..];
        if name_len > rest.len() {
            return Err(bad());
        }
        let name = std::str::from_utf8(&rest[..name_len]).map_err(|_| bad())?;
        let options = std::str::from_utf8(&rest[name_len..]).map_err(|_| bad())?;
        Ok(Checkpoint {
            low,
            next,
            name: name.to_string(),
            options: options.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_damage() {
        let payload = b"some payload bytes";
        let mut seg = header(Kind::Batch, 7, 42, payload).to_vec();
        seg.extend_from_slice(payload);
        seg.resize(entry_len(payload.len()) as usize + 64, 0);
        let Parsed::Valid(h) = parse(&seg, 0) else {
            panic!("valid entry rejected")
        };
        assert_eq!((h.kind, h.shard_id, h.aux), (Kind::Batch, 7, 42));
        assert!(!h.tagged, "an entry never placed is an untagged one");
        assert_eq!(h.entry_len() % ALIGN, 0);
        assert!(matches!(
            parse(&seg[h.entry_len() as usize..], 0),
            Parsed::Empty
        ));
        let len = seg.len() as u64;
        assert_eq!(find_valid_before(&seg, 0, 0, len), Some(0));
        assert_eq!(find_valid_before(&seg, 0, 1, len), None);
        assert_eq!(
            find_valid_before(&seg, 0, 0, 0),
            None,
            "nothing starts before 0"
        );
        for bit in [0usize, 40, 100, 8 * 31] {
            let mut damaged = seg.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(parse(&damaged, 0), Parsed::Invalid(_)),
                "bit {bit}"
            );
        }
    }

    fn placed(base: u64, payload: &[u8]) -> Vec<u8> {
        let mut seg = place(&header(Kind::Batch, 7, 42, payload), base).to_vec();
        seg.extend_from_slice(payload);
        seg.resize(entry_len(payload.len()) as usize, 0);
        seg
    }

    #[test]
    fn a_batch_header_derived_from_the_batch_crc_is_the_full_one() {
        let values: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 10 + i as usize]).collect();
        let records: Vec<crate::Record<'_>> =
            values.iter().map(|v| crate::Record::new(v)).collect();
        let mut batch = crate::format::encode_batch(&records, crate::Compression::None, 1)
            .unwrap()
            .bytes;
        // Outside the batch's own CRC: set after encoding.
        crate::format::set_base_offset(&mut batch, 1234);
        crate::format::set_partition_leader_epoch(&mut batch, 5);
        let derived = batch_header(9, 1234, &batch);
        assert_eq!(derived, header(Kind::Batch, 9, 1234, &batch));
        let mut seg = place(&derived, 0).to_vec();
        seg.extend_from_slice(&batch);
        assert!(
            matches!(parse(&seg, 0), Parsed::Valid(h) if h.payload_len as usize == batch.len())
        );
    }

    #[test]
    fn combined_crcs_are_the_crc_of_the_concatenation() {
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        for split in [0, 1, 7, 21, 4096, 65_536, 69_999, 70_000] {
            let (a, b) = data.split_at(split);
            let combined = crc_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len());
            assert_eq!(combined, crc32c::crc32c(&data), "split at {split}");
        }
        assert_eq!(crc_combine(0x1234_5678, 0, 0), 0x1234_5678);
    }

    #[test]
    fn a_placed_entry_is_valid_only_in_its_own_segment() {
        let base = 5 << 30;
        let seg = placed(base, b"payload");
        let Parsed::Valid(h) = parse(&seg, base) else {
            panic!("placed entry rejected in its segment")
        };
        assert!(h.tagged);
        assert_eq!((h.kind, h.shard_id, h.aux), (Kind::Batch, 7, 42));
        // The file's next use, as a segment further on: the old entry is
        // stale, not valid and not damage.
        for later in [base + (64 << 10), base + (1 << 30), base + (100 << 30)] {
            assert!(matches!(parse(&seg, later), Parsed::Stale), "{later}");
            assert_eq!(find_valid_before(&seg, later, 0, seg.len() as u64), None);
            assert_eq!(find_stale_before(&seg, later, 0, seg.len() as u64), Some(0));
        }
        assert_eq!(find_stale_before(&seg, base, 0, seg.len() as u64), None);
    }

    #[test]
    fn a_tag_that_wraps_around_is_still_refused_by_the_crc() {
        let base = 3 << 20;
        let wrapped = base + (TAG_PERIOD << 16);
        assert_eq!(segment_tag(base), segment_tag(wrapped));
        let seg = placed(base, b"payload");
        assert!(matches!(parse(&seg, wrapped), Parsed::Invalid(_)));
    }

    #[test]
    fn damage_to_a_placed_entry_is_never_valid() {
        let base = 7 << 20;
        let seg = placed(base, b"some payload bytes");
        for bit in 0..seg.len() * 8 {
            let mut damaged = seg.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let parsed = parse(&damaged, base);
            // Padding is not covered by the CRC; a flipped tag makes the
            // entry look like another segment's.
            let padding = bit / 8 >= HEADER_LEN + 18;
            assert!(
                padding || !matches!(parsed, Parsed::Valid(_)),
                "bit {bit}: {parsed:?}"
            );
        }
    }

    #[test]
    fn tags_are_nonzero_and_distinct_for_nearby_segments() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000u64 {
            let tag = segment_tag(i << 16);
            assert!(tag != 0 && tag < 1 << 24);
            assert!(seen.insert(tag), "segment {i}");
        }
    }

    #[test]
    fn checkpoint_round_trip() {
        let c = Checkpoint {
            low: 3,
            next: 9,
            name: "shard/ü".into(),
            options: "engine = \"journal\"\n".into(),
        };
        let d = Checkpoint::decode(&c.encode()).unwrap();
        assert_eq!(
            (d.low, d.next, d.name, d.options),
            (3, 9, c.name, c.options)
        );
        assert!(Checkpoint::decode(&[1, 2, 3]).is_err());
    }
}
