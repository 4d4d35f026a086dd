//! Journal entries: the frame around every record in a journal segment.
//! The layout is documented in docs/FORMAT.md ("Journal engine").
//!
//! An entry is a 32-byte little-endian header followed by its payload and
//! zero padding up to the next multiple of 8. For a batch the payload is the
//! Kafka RecordBatch exactly as stored, so a transfer can sendfile(2) it
//! straight out of the segment.

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

/// The header bytes of an entry framing `payload`, CRC included.
pub fn header(kind: Kind, shard_id: u64, aux: u64, payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4] = kind as u8;
    h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[16..24].copy_from_slice(&shard_id.to_le_bytes());
    h[24..32].copy_from_slice(&aux.to_le_bytes());
    let crc = crc_of(&h, payload);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// CRC-32C of the header without its CRC field, then the payload.
fn crc_of(h: &[u8], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&h[0..12]);
    let crc = crc32c::crc32c_append(crc, &h[16..32]);
    crc32c::crc32c_append(crc, payload)
}

/// What recovery finds at a position of a segment.
#[derive(Debug)]
pub enum Parsed {
    /// 32 zero bytes (or the segment's end): nothing was ever written here.
    Empty,
    Valid(EntryHeader),
    /// Something was written but it is not a whole, intact entry.
    Invalid(String),
}

/// Parses and fully validates (CRC included) the entry at the start of
/// `rest`, the remainder of a segment.
pub fn parse(rest: &[u8]) -> Parsed {
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
    let payload_len = u32::from_le_bytes(h[8..12].try_into().unwrap());
    if HEADER_LEN + payload_len as usize > rest.len() {
        return Parsed::Invalid(format!(
            "entry of {payload_len} payload bytes runs past the segment's end"
        ));
    }
    let payload = &rest[HEADER_LEN..HEADER_LEN + payload_len as usize];
    let stored = u32::from_le_bytes(h[12..16].try_into().unwrap());
    let actual = crc_of(h, payload);
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
    })
}

/// Position of the first valid entry at or after `from` (aligned) in
/// `segment`, if any. Used to tell a torn tail (nothing valid follows) from
/// corruption in the middle of the log. Only entries starting before `to`
/// are looked at (recovery scans a
/// segment in windows); an entry may extend past `to`.
pub fn find_valid_before(segment: &[u8], from: u64, to: u64) -> Option<u64> {
    let magic = MAGIC.to_le_bytes();
    let mut pos = from.next_multiple_of(ALIGN) as usize;
    let end = (to as usize).min(segment.len());
    while pos < end && pos + HEADER_LEN <= segment.len() {
        if segment[pos..pos + 4] == magic {
            if let Parsed::Valid(_) = parse(&segment[pos..]) {
                return Some(pos as u64);
            }
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
        let Parsed::Valid(h) = parse(&seg) else {
            panic!("valid entry rejected")
        };
        assert_eq!((h.kind, h.shard_id, h.aux), (Kind::Batch, 7, 42));
        assert_eq!(h.entry_len() % ALIGN, 0);
        assert!(matches!(
            parse(&seg[h.entry_len() as usize..]),
            Parsed::Empty
        ));
        let len = seg.len() as u64;
        assert_eq!(find_valid_before(&seg, 0, len), Some(0));
        assert_eq!(find_valid_before(&seg, 1, len), None);
        assert_eq!(
            find_valid_before(&seg, 0, 0),
            None,
            "nothing starts before 0"
        );
        for bit in [0usize, 40, 100, 8 * 31] {
            let mut damaged = seg.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(matches!(parse(&damaged), Parsed::Invalid(_)), "bit {bit}");
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
