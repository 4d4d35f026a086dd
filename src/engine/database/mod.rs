//! Engines whose shards live in a database: RocksDB (embedded), MySQL and
//! Redis (servers). Everything a shard does (offsets, the in-memory batch
//! index, retention, deletes, reads, transfers, group offsets) is written
//! once here, in `DbShard` and `DbEngine`; a database is a small backend
//! (`Database`) that applies atomic `Change` lists, fetches batches by
//! `(shard id, base offset)` and lists what it holds at open.
//!
//! The stored model, the same on every backend:
//! - one record per Kafka v2 batch, keyed by shard id and base offset, its
//!   value the batch bytes exactly as every engine stores them, with a
//!   `BatchMeta` beside it so that opening rebuilds the index without
//!   reading a batch;
//! - one catalogue record per shard (`ShardMeta`: name, options,
//!   watermarks), changed in the same atomic write as the batches whenever
//!   a change moves a watermark;
//! - one record per consumer group and shard.

mod engine;
#[cfg(any(feature = "mysql", feature = "redis", feature = "s3"))]
pub(crate) mod server;
mod shard;
#[cfg(test)]
mod tests;

use bytes::Bytes;

use crate::config::{Durability, EngineKind};
use crate::engine::index::BatchEntry;
use crate::engine::keyfilter::KeyFilter;
use crate::io::TransferChunk;
use crate::{Error, Result};

pub(crate) use engine::{Connect, DbEngine};

/// An indexed batch. Its `loc` is the database's sync ticket of the
/// pipelined write that stored it, which `wait_durable` waits for (0:
/// durable when written, or found at open).
pub(crate) type Entry = BatchEntry<u64>;

/// What is recorded beside each batch: enough to rebuild the shard's
/// in-memory index at open without reading any batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMeta {
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub records: u32,
    pub len: u32,
}

pub const BATCH_META_LEN: usize = 24;

impl BatchMeta {
    pub fn encode(&self) -> [u8; BATCH_META_LEN] {
        let mut out = [0u8; BATCH_META_LEN];
        out[..8].copy_from_slice(&self.last_offset.to_be_bytes());
        out[8..16].copy_from_slice(&self.max_timestamp.to_be_bytes());
        out[16..20].copy_from_slice(&self.records.to_be_bytes());
        out[20..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    pub fn decode(value: &[u8]) -> Option<BatchMeta> {
        let value: &[u8; BATCH_META_LEN] = value.try_into().ok()?;
        Some(BatchMeta {
            last_offset: i64::from_be_bytes(value[..8].try_into().ok()?),
            max_timestamp: i64::from_be_bytes(value[8..16].try_into().ok()?),
            records: u32::from_be_bytes(value[16..20].try_into().ok()?),
            len: u32::from_be_bytes(value[20..].try_into().ok()?),
        })
    }
}

/// A shard's catalogue entry.
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
    /// The binary form, for backends that store the entry as one value.
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
                "catalogue entry of shard id {id}: {what} ({} bytes)",
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

/// One part of an atomic write. A backend applies a write's changes in
/// their order, all or none, also across a crash.
#[derive(Debug)]
pub enum Change {
    /// Stores a batch at `base_offset`, replacing the one stored there (a
    /// delete's rewrite keeps the batch's base offset).
    PutBatch {
        shard: u64,
        base_offset: i64,
        bytes: Bytes,
        meta: BatchMeta,
        /// The batch's key and tag filter when known (a backend may store
        /// it, and list it again with `Found::Keys`).
        keys: Option<KeyFilter>,
    },
    /// Removes the stored batches with these base offsets (ascending).
    /// They are consecutive: no other batch of the shard lies in
    /// `[bases[0], end)`, `end` being one past the last one's last offset.
    /// `front`: they are the shard's oldest batches (retention,
    /// `delete_records_before`): every batch below `end` goes.
    DeleteBatches {
        shard: u64,
        bases: Vec<i64>,
        end: i64,
        // RocksDB deletes the listed keys either way; the servers trim.
        #[cfg_attr(
            not(any(feature = "mysql", feature = "redis", feature = "s3")),
            allow(dead_code)
        )]
        front: bool,
    },
    /// Creates or replaces the shard's catalogue entry.
    PutShard { shard: u64, meta: ShardMeta },
    /// Saves (`Some`) or forgets (`None`) a consumer group's offset.
    SaveGroup {
        shard: u64,
        group: String,
        offset: Option<i64>,
    },
    /// Removes the shard: its batches, group offsets and catalogue entry.
    RemoveShard { shard: u64 },
}

impl Change {
    /// The shard the change is of.
    #[cfg_attr(not(any(feature = "redis", feature = "s3")), allow(dead_code))]
    pub fn shard(&self) -> u64 {
        match self {
            Change::PutBatch { shard, .. }
            | Change::DeleteBatches { shard, .. }
            | Change::PutShard { shard, .. }
            | Change::SaveGroup { shard, .. }
            | Change::RemoveShard { shard } => *shard,
        }
    }
}

/// What a database lists at open (`Database::load`): every catalogue
/// entry first, then every batch, by shard and ascending base offset,
/// then every group offset.
#[derive(Debug)]
pub enum Found {
    Shard(u64, ShardMeta),
    Batch(u64, i64, BatchMeta),
    /// The key and tag filter of the batch listed just before.
    Keys(u64, i64, KeyFilter),
    Group(u64, String, i64),
}

/// Fetches the batches of one shard for one call, in the order the call
/// asks for them (ascending base offsets, possibly skipping some).
pub trait BatchReader {
    /// The bytes of the batch `entry` describes. A batch the database does
    /// not hold is `Error::Corruption` (the index lists it).
    fn batch(&mut self, entry: &Entry) -> Result<Bytes>;
}

/// A batch of a transfer plan: where it starts in the plan's one chunk.
#[derive(Clone, Copy, Debug)]
pub struct PlannedBatch {
    pub start: u64,
    pub len: u64,
    pub base_offset: i64,
}

/// A database holding shards: the backend of `DbShard` and `DbEngine`.
pub trait Database: Send + Sync + Sized + 'static {
    const KIND: EngineKind;

    /// Refuses a shard (at creation and at open) whose durability the
    /// database cannot honour as configured, with `InvalidConfig` naming
    /// the server setting to change.
    fn check_durability(&self, _durability: Durability) -> Result<()> {
        Ok(())
    }

    /// Opened read-only: `commit` is never called.
    fn read_only(&self) -> bool {
        false
    }

    /// Applies `changes` atomically, acknowledged as `durability` says
    /// (each backend documents what each mode means on it), unless
    /// `pipelined`: then it may return once the write is applied but not
    /// yet durable, with a ticket `wait_synced` takes. Returns 0 when the
    /// write is as durable as `durability` asks.
    fn commit(&self, changes: Vec<Change>, durability: Durability, pipelined: bool) -> Result<u64>;

    /// Returns once the pipelined write of `ticket` is durable.
    fn wait_synced(&self, _ticket: u64) -> Result<()> {
        Ok(())
    }

    /// Makes every write committed so far durable (a delete acknowledged
    /// on the strength of an earlier write that was not synced).
    fn sync(&self) -> Result<()>;

    /// Makes every write of shard `shard` committed so far durable,
    /// including writes that failed but were kept (`sync` by default).
    fn sync_shard(&self, _shard: u64) -> Result<()> {
        self.sync()
    }

    /// Runs `f` with a reader of shard `shard`'s batches; `from` is the
    /// offset the call starts at (the first batch asked for holds it).
    fn with_reader<R>(
        &self,
        shard: u64,
        from: Option<i64>,
        f: impl FnOnce(&mut dyn BatchReader) -> R,
    ) -> Result<R>;

    /// The transfer chunk of `batches` (consecutive, `start` counting from
    /// 0) of shard `shard`, as they are now: later changes must not alter
    /// what it sends. This one reads them into memory.
    fn plan(&self, shard: u64, batches: &[(&Entry, PlannedBatch)]) -> Result<TransferChunk> {
        let total = batches.last().map_or(0, |(_, b)| b.start + b.len);
        let first = batches.first().map(|(e, _)| e.base_offset);
        self.with_reader(shard, first, |reader| {
            let mut out = bytes::BytesMut::with_capacity(total as usize);
            for (entry, _) in batches {
                out.extend_from_slice(&reader.batch(entry)?);
            }
            Ok(TransferChunk::Memory(out.freeze()))
        })?
    }

    /// Lists everything stored, in `Found`'s order.
    fn load(&self, found: &mut dyn FnMut(Found) -> Result<()>) -> Result<()>;

    /// Lists what `load` lists of shard `shard` alone: a shard rebuilds
    /// its index from it after a failed write, whose outcome a server may
    /// not have told (a timeout, a lost connection). This one filters
    /// `load`; backends that can list one shard cheaply override it.
    fn load_shard(&self, shard: u64, found: &mut dyn FnMut(Found) -> Result<()>) -> Result<()> {
        self.load(&mut |item| {
            let id = match &item {
                Found::Shard(id, _)
                | Found::Batch(id, ..)
                | Found::Keys(id, ..)
                | Found::Group(id, ..) => *id,
            };
            match id == shard {
                true => found(item),
                false => Ok(()),
            }
        })
    }

    /// The database's own counters, as JSON.
    fn stats(&self) -> Result<serde_json::Value>;

    /// Makes everything durable and lets go of the database; later calls
    /// fail with `Closed`.
    fn close(&self) -> Result<()>;
}
