//! Segment files of one file shard and their two index files.
//!
//! `<base offset, 20 digits>.log` holds Kafka RecordBatch v2 batches back to
//! back, nothing else, so any contiguous range of whole batches is valid
//! Kafka bytes for sendfile(2). `.index` (sparse offset → position) and
//! `.timeindex` (running max timestamp → offset) are written whole when a
//! segment is sealed (roll, clean close) and are only hints: a missing,
//! damaged or stale one is rebuilt from the log. Byte layouts: docs/FORMAT.md.

use std::fs::File;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::format::{self, BatchHeader, BATCH_HEADER_LEN};
use crate::io::fs;
use crate::{Error, Result};

/// One offset-index entry per this many log bytes (the first batch at or
/// after each boundary is indexed; the first batch of a segment always is).
pub const INDEX_INTERVAL: u64 = 64 << 10;

const INDEX_MAGIC: &[u8; 8] = b"MQSFIDX1";
const TIME_INDEX_MAGIC: &[u8; 8] = b"MQSFTIX1";
/// magic, base, covered bytes, next offset, batches, records, max timestamp, count.
const INDEX_HEADER_LEN: usize = 8 + 8 + 8 + 8 + 8 + 8 + 8 + 4;
const TIME_INDEX_HEADER_LEN: usize = 8 + 8 + 4;
const INDEX_ENTRY_LEN: usize = 8;
const TIME_ENTRY_LEN: usize = 12;

pub fn log_name(base: i64) -> String {
    format!("{base:020}.log")
}

pub fn parse_log_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

pub fn index_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}

pub fn time_index_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.timeindex"))
}

pub use crate::io::sync_dir;

/// Reserves `len` bytes of blocks for the active segment without changing
/// its size (FALLOC_FL_KEEP_SIZE): appends do not pay for block allocation
/// and the file size stays the end of the written data, which is what
/// recovery reads. Best effort: filesystems without fallocate just grow.
pub fn preallocate(file: &File, from: u64, len: u64) {
    if len <= from {
        return;
    }
    // KEEP_SIZE changes no byte a reader can see; the result is ignored
    // on purpose (see above).
    let _ = fs::fallocate(file, libc::FALLOC_FL_KEEP_SIZE, from, len - from);
}

/// Gives back the blocks `preallocate` reserved past the data (a sealed
/// segment or a cleanly closed one). Best effort, like `preallocate`.
pub fn trim(file: &File, size: u64, reserved: u64) {
    if reserved <= size {
        return;
    }
    // A hole punched past EOF (KEEP_SIZE) frees only blocks no reader can
    // see; failure is harmless.
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let _ = fs::fallocate(file, mode, size, reserved - size);
}

/// The shard's synced-position record: how far its active segment was
/// known fdatasynced (see `record_synced`).
pub const SYNCED_FILE: &str = "synced";
const SYNCED_LEN: usize = 20;

/// Records that the segment at `base` was fdatasynced up to `len` bytes:
/// 20 bytes (base i64, len u64, CRC-32C of both, all LE) written in place
/// at the start of `synced`, without an fsync of their own: the record
/// reaches the disk with the page cache's writeback, so it may lag, never
/// lead. Recovery trusts the segment up to it and takes damage past it for
/// a torn write nobody was told is durable. Best effort: a record not
/// written only makes recovery less sure (see `load_synced`).
pub fn record_synced(dir: &Path, base: i64, len: u64) {
    let mut record = [0u8; SYNCED_LEN];
    record[..8].copy_from_slice(&base.to_le_bytes());
    record[8..16].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&record[..16]);
    record[16..].copy_from_slice(&crc.to_le_bytes());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    if let Ok(file) = fs::open_creating(&options, &dir.join(SYNCED_FILE)) {
        let _ = fs::write_at(&file, &record, 0);
    }
}

/// The synced-position record of the shard in `dir`: `None` when there is
/// none (a shard from before records existed, whose recovery keeps the
/// older rule), else the synced length of segment `base` (0 when the
/// record is damaged or names another segment: nothing proven).
pub fn load_synced(dir: &Path, base: i64) -> Option<u64> {
    let data = std::fs::read(dir.join(SYNCED_FILE)).ok()?;
    let valid = data.len() >= SYNCED_LEN
        && crc32c::crc32c(&data[..16]).to_le_bytes()[..] == data[16..SYNCED_LEN];
    let recorded_base = valid.then(|| i64::from_le_bytes(data[..8].try_into().unwrap()));
    Some(match recorded_base {
        Some(b) if b == base => u64::from_le_bytes(data[8..16].try_into().unwrap()),
        _ => 0,
    })
}

/// What is known of one batch without decoding its records.
#[derive(Clone, Copy, Debug)]
pub struct BatchInfo {
    pub pos: u64,
    pub len: u64,
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub records: u64,
}

impl BatchInfo {
    fn from_header(pos: u64, header: &BatchHeader) -> BatchInfo {
        BatchInfo {
            pos,
            len: header.total_len() as u64,
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
            max_timestamp: header.max_timestamp,
            records: header.record_count.max(0) as u64,
        }
    }

    pub fn end(&self) -> u64 {
        self.pos + self.len
    }
}

/// Parses the batch header at `pos` of `data` (a segment's bytes) and checks
/// that the whole batch fits.
pub fn batch_at(data: &[u8], pos: u64) -> Result<BatchInfo> {
    let rest = data.get(pos as usize..).unwrap_or(&[]);
    let header = BatchHeader::parse(rest)?;
    let info = BatchInfo::from_header(pos, &header);
    if info.len as usize > rest.len() {
        return Err(Error::corruption(format!(
            "batch at byte {pos} is {} bytes long, only {} follow",
            info.len,
            rest.len()
        )));
    }
    if header.record_count < 0 || header.last_offset_delta < 0 {
        return Err(Error::corruption(format!(
            "batch at byte {pos} has a negative record count or offset delta"
        )));
    }
    Ok(info)
}

/// A batch that is whole, CRC-valid and no older than `min_base`.
pub fn valid_batch_at(data: &[u8], pos: u64, min_base: i64) -> Result<BatchInfo> {
    let info = batch_at(data, pos)?;
    format::verify_crc(&data[pos as usize..info.end() as usize])?;
    if info.base_offset < min_base {
        return Err(Error::corruption(format!(
            "batch at byte {pos} has base offset {}, below {min_base}",
            info.base_offset
        )));
    }
    Ok(info)
}

/// Whether any valid batch starts after `pos`: the test that tells a torn
/// tail (nothing valid follows: cut it) from damage in the middle (refuse).
pub fn valid_batch_after(data: &[u8], pos: u64, min_base: i64) -> Option<u64> {
    let mut at = pos as usize + 1;
    while at + BATCH_HEADER_LEN <= data.len() {
        // Cheap filters first: the magic byte, then a plausible length.
        if data[at + format::MAGIC_OFFSET] as i8 == format::MAGIC_V2
            && valid_batch_at(data, at as u64, min_base).is_ok()
        {
            return Some(at as u64);
        }
        at += 1;
    }
    None
}

/// An empty batch standing in for `batch` once compaction removed all its
/// records: same base offset and last offset delta, no records. Kafka's
/// cleaner keeps such batches too; here they keep every segment's offsets
/// dense (each batch starts where the one before it ended), which is what
/// lets recovery tell a damaged base offset (outside the CRC's reach) from
/// a compacted gap.
pub fn empty_batch_like(batch: &[u8]) -> Result<Bytes> {
    Ok(Bytes::from(format::empty_batch(&BatchHeader::parse(
        batch,
    )?)))
}

/// In-memory summary of a segment, kept for every segment of a shard.
#[derive(Clone, Debug)]
pub struct SegmentMeta {
    pub base: i64,
    /// Bytes of whole batches (the active segment's include bytes still in
    /// its write buffer).
    pub size: u64,
    /// One past the last offset of its batches (`base` when empty).
    pub next: i64,
    pub batches: u64,
    pub records: u64,
    /// Newest record timestamp in the segment (`i64::MIN` when empty).
    pub max_timestamp: i64,
    /// Newest timestamp in this and every earlier segment.
    pub running_max_timestamp: i64,
    /// Sparse offset index: (offset − base, position).
    pub index: Vec<(u32, u32)>,
    /// Time index: (newest timestamp up to and including the batch, its
    /// last offset − base), one per indexed batch.
    pub time_index: Vec<(i64, u32)>,
    /// Position of the newest offset-index entry's batch.
    last_indexed: Option<u64>,
    time_max: i64,
}

impl SegmentMeta {
    pub fn new(base: i64) -> SegmentMeta {
        SegmentMeta {
            base,
            size: 0,
            next: base,
            batches: 0,
            records: 0,
            max_timestamp: i64::MIN,
            running_max_timestamp: i64::MIN,
            index: Vec::new(),
            time_index: Vec::new(),
            last_indexed: None,
            time_max: i64::MIN,
        }
    }

    /// Accounts for a batch appended at the end of the segment.
    pub fn push(&mut self, batch: &BatchInfo) {
        debug_assert_eq!(batch.pos, self.size);
        self.size = batch.end();
        self.next = self.next.max(batch.last_offset + 1);
        self.batches += 1;
        self.records += batch.records;
        self.max_timestamp = self.max_timestamp.max(batch.max_timestamp);
        self.time_max = self.time_max.max(batch.max_timestamp);
        let due = match self.last_indexed {
            None => true,
            Some(last) => batch.pos >= last + INDEX_INTERVAL,
        };
        if due {
            let rel = (batch.base_offset - self.base) as u32;
            self.index.push((rel, batch.pos as u32));
            self.time_index
                .push((self.time_max, (batch.last_offset - self.base) as u32));
            self.last_indexed = Some(batch.pos);
        }
    }

    /// Position of the last indexed batch starting at or before `offset`
    /// (where a walk looking for `offset` begins).
    pub fn position_for(&self, offset: i64) -> u64 {
        let rel = (offset - self.base).max(0);
        let i = self.index.partition_point(|&(r, _)| i64::from(r) <= rel);
        if i == 0 {
            0
        } else {
            u64::from(self.index[i - 1].1)
        }
    }

    /// An offset from which a walk for the first timestamp ≥ `ts` may start:
    /// every batch through the last time-index entry below `ts` is older.
    pub fn offset_for_time(&self, ts: i64) -> i64 {
        let i = self.time_index.partition_point(|&(t, _)| t < ts);
        if i == 0 {
            self.base
        } else {
            self.base + i64::from(self.time_index[i - 1].1) + 1
        }
    }

    /// Rebuilds the summary from the segment's bytes (after a rewrite).
    pub fn from_data(base: i64, data: &[u8]) -> Result<SegmentMeta> {
        let mut meta = SegmentMeta::new(base);
        let mut pos = 0u64;
        while pos < data.len() as u64 {
            let batch = batch_at(data, pos)?;
            meta.push(&batch);
            pos = batch.end();
        }
        Ok(meta)
    }

    /// Writes `.index` and `.timeindex` for the segment's current content
    /// and fdatasyncs them. Each carries a CRC-32C, so a torn or damaged one
    /// is noticed and rebuilt.
    pub fn write_indexes(&self, dir: &Path) -> Result<()> {
        let mut out = Vec::with_capacity(INDEX_HEADER_LEN + self.index.len() * 8 + 4);
        out.extend_from_slice(INDEX_MAGIC);
        out.extend_from_slice(&self.base.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.next.to_le_bytes());
        out.extend_from_slice(&self.batches.to_le_bytes());
        out.extend_from_slice(&self.records.to_le_bytes());
        out.extend_from_slice(&self.max_timestamp.to_le_bytes());
        out.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        for &(rel, pos) in &self.index {
            out.extend_from_slice(&rel.to_le_bytes());
            out.extend_from_slice(&pos.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        write_synced(&index_path(dir, self.base), &out)?;

        let mut out = Vec::with_capacity(TIME_INDEX_HEADER_LEN + self.time_index.len() * 12 + 4);
        out.extend_from_slice(TIME_INDEX_MAGIC);
        out.extend_from_slice(&self.base.to_le_bytes());
        out.extend_from_slice(&(self.time_index.len() as u32).to_le_bytes());
        for &(ts, rel) in &self.time_index {
            out.extend_from_slice(&ts.to_le_bytes());
            out.extend_from_slice(&rel.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        write_synced(&time_index_path(dir, self.base), &out)
    }

    /// Loads the summary from the index files when both are intact and
    /// cover exactly `log_len` bytes; `None` means "rebuild from the log".
    pub fn load_indexes(dir: &Path, base: i64, log_len: u64) -> Option<SegmentMeta> {
        let index = std::fs::read(index_path(dir, base)).ok()?;
        let times = std::fs::read(time_index_path(dir, base)).ok()?;
        let body = checked_body(&index, INDEX_MAGIC, INDEX_HEADER_LEN)?;
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().unwrap());
        let i64_at = |at: usize| u64_at(at) as i64;
        if i64_at(8) != base || u64_at(16) != log_len {
            return None;
        }
        let mut meta = SegmentMeta::new(base);
        meta.size = log_len;
        meta.next = i64_at(24);
        meta.batches = u64_at(32);
        meta.records = u64_at(40);
        meta.max_timestamp = i64_at(48);
        meta.time_max = meta.max_timestamp;
        let count = u32::from_le_bytes(body[56..60].try_into().unwrap()) as usize;
        if body.len() != INDEX_HEADER_LEN + count * INDEX_ENTRY_LEN || meta.next < base {
            return None;
        }
        for entry in body[INDEX_HEADER_LEN..].chunks_exact(INDEX_ENTRY_LEN) {
            let rel = u32::from_le_bytes(entry[..4].try_into().unwrap());
            let pos = u32::from_le_bytes(entry[4..].try_into().unwrap());
            if u64::from(pos) >= log_len.max(1)
                || meta.index.last().is_some_and(|&(r, p)| r > rel || p >= pos)
            {
                return None;
            }
            meta.index.push((rel, pos));
        }
        if log_len > 0 && meta.index.first().map(|e| e.1) != Some(0) {
            return None;
        }
        meta.last_indexed = meta.index.last().map(|e| u64::from(e.1));
        let body = checked_body(&times, TIME_INDEX_MAGIC, TIME_INDEX_HEADER_LEN)?;
        if i64::from_le_bytes(body[8..16].try_into().unwrap()) != base {
            return None;
        }
        let count = u32::from_le_bytes(body[16..20].try_into().unwrap()) as usize;
        if body.len() != TIME_INDEX_HEADER_LEN + count * TIME_ENTRY_LEN || count != meta.index.len()
        {
            return None;
        }
        for entry in body[TIME_INDEX_HEADER_LEN..].chunks_exact(TIME_ENTRY_LEN) {
            let ts = i64::from_le_bytes(entry[..8].try_into().unwrap());
            let rel = u32::from_le_bytes(entry[8..].try_into().unwrap());
            if meta
                .time_index
                .last()
                .is_some_and(|&(t, r)| t > ts || r > rel)
            {
                return None;
            }
            meta.time_index.push((ts, rel));
        }
        Some(meta)
    }
}

/// The bytes before the trailing CRC, if magic and CRC match.
fn checked_body<'a>(bytes: &'a [u8], magic: &[u8; 8], header_len: usize) -> Option<&'a [u8]> {
    if bytes.len() < header_len + 4 || &bytes[..8] != magic {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    (crc32c::crc32c(body) == u32::from_le_bytes(crc.try_into().unwrap())).then_some(body)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |what: &str, e| Error::io(format!("{what} '{}'", path.display()), e);
    let file = fs::create(path).map_err(|e| io("creating", e))?;
    fs::write_at(&file, bytes, 0).map_err(|e| io("writing", e))?;
    fs::sync_data(&file).map_err(|e| io("fdatasync of", e))
}

/// Removes a segment's files (log and indexes); missing ones are fine.
pub fn remove_files(dir: &Path, base: i64) -> Result<()> {
    for path in [
        dir.join(log_name(base)),
        index_path(dir, base),
        time_index_path(dir, base),
    ] {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing '{}'", path.display()), e)),
        }
    }
    Ok(())
}
