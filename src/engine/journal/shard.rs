//! A journal shard: its index and watermarks in memory, its batches in the
//! shared journal segments.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use super::cold::BatchReader;
use super::entry::{self, Checkpoint, Kind};
use super::index::{IndexEntry, ShardState};
use super::Log;
use crate::config::{Durability, EngineKind, ShardOptions};
use crate::engine::keyfilter;
use crate::engine::scan;
use crate::engine::{
    NewBatch, ReadLimits, ReadResult, Shard, ShardInfo, TIMESTAMP_EARLIEST, TIMESTAMP_LATEST,
};
use crate::format::{self, BatchHeader};
use crate::io::{TransferChunk, TransferPlan};
use crate::record::RecordView;
use crate::time::now_ms;
use crate::{Error, Result};

/// How many bytes pipelined appends may leave unwritten in the journal
/// buffer before the appender writes them itself: a few large O_DIRECT
/// writes' worth (1 MiB writes reach the device's sequential bandwidth
/// here), so the flusher's groups stay large while a producer that never
/// waits is held to the disk's pace.
pub(crate) const PIPELINE_BYTES: u64 = 8 << 20;

/// Bytes the journal cleaner relocates per hold of a shard's lock.
const RELOCATE_CHUNK: u64 = 4 << 20;

pub struct JournalShard {
    pub(crate) id: u64,
    name: String,
    pub(super) options: ShardOptions,
    log: Arc<Log>,
    pub(crate) state: RwLock<ShardState>,
    deleted: AtomicBool,
    appended_records: AtomicU64,
    appended_bytes: AtomicU64,
    read_records: AtomicU64,
    /// The low watermark at the journal cleaner's last two passes (newest
    /// first): how fast the shard's front moves. Both start at the low
    /// watermark the shard was created or opened with, so that the first
    /// passes take its movement since then for its pace: a new shard whose
    /// retention already drops batches is not copied as if it were idle.
    pub(super) fronts_seen: [AtomicI64; 2],
}

impl JournalShard {
    pub(crate) fn new(
        id: u64,
        name: &str,
        options: ShardOptions,
        log: Arc<Log>,
        state: ShardState,
    ) -> JournalShard {
        JournalShard {
            id,
            name: name.to_string(),
            options,
            log,
            fronts_seen: [
                AtomicI64::new(state.low_watermark),
                AtomicI64::new(state.low_watermark),
            ],
            state: RwLock::new(state),
            deleted: AtomicBool::new(false),
            appended_records: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
            read_records: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn check_live(&self) -> Result<()> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(Error::ShardNotFound(self.name.clone()));
        }
        Ok(())
    }

    /// Logs an entry of this shard. Called under the state's write lock,
    /// so the shard's entries enter the log in the order of its changes.
    fn enqueue(
        &self,
        state: &mut ShardState,
        kind: Kind,
        aux: u64,
        payload: &[u8],
    ) -> Result<super::writer::Placement> {
        let header = entry::header(kind, self.id, aux, payload);
        self.enqueue_entry(state, &header, payload)
    }

    /// `enqueue` with the entry's header made by the caller.
    fn enqueue_entry(
        &self,
        state: &mut ShardState,
        header: &[u8; entry::HEADER_LEN],
        payload: &[u8],
    ) -> Result<super::writer::Placement> {
        let placed = self.log.writer.enqueue(header, payload)?;
        state.logged_end = placed.end;
        Ok(placed)
    }

    /// Writes a checkpoint of the shard (name, options, watermarks) and
    /// moves its anchor there. Called under the state lock.
    pub(crate) fn checkpoint(&self, state: &mut ShardState) -> Result<u64> {
        let payload = Checkpoint {
            low: state.low_watermark,
            next: state.next_offset,
            name: self.name.clone(),
            options: self.options.to_toml(),
        }
        .encode();
        let placed = self.enqueue(state, Kind::Checkpoint, 0, &payload)?;
        state.anchor = placed.segment.base;
        state.low_dirty = false;
        // The group offsets follow their catalogue record: once older
        // segments go, these are where they are found.
        let mut end = placed.end;
        let groups: Vec<(String, i64)> =
            state.groups.iter().map(|(g, o)| (g.clone(), *o)).collect();
        for (group, offset) in groups {
            end = self
                .enqueue(state, Kind::GroupOffset, offset as u64, group.as_bytes())?
                .end;
        }
        Ok(end)
    }

    /// Logs a consumer group's committed offset (`None`: forgotten) and
    /// waits until it is as durable as the shard's appends.
    pub(crate) fn log_group_offset(&self, group: &str, offset: Option<i64>) -> Result<()> {
        self.check_live()?;
        let mut state = self.state.write();
        let aux = offset.map_or(entry::FORGET_GROUP, |o| o as u64);
        let end = self
            .enqueue(&mut state, Kind::GroupOffset, aux, group.as_bytes())?
            .end;
        match offset {
            Some(offset) => state.groups.insert(group.to_string(), offset),
            None => state.groups.remove(group),
        };
        drop(state);
        self.wait(end)
    }

    /// Logs the shard's deletion and refuses appends from now on; returns
    /// the entry's end. `undelete` takes it back if the entry never becomes
    /// durable, `release` lets go of the index once it did.
    pub(crate) fn delete(&self) -> Result<u64> {
        let mut state = self.state.write();
        let placed = self.enqueue(&mut state, Kind::DeleteShard, 0, &[])?;
        self.deleted.store(true, Ordering::Release);
        state.deleted = true;
        Ok(placed.end)
    }

    pub(crate) fn undelete(&self) {
        let mut state = self.state.write();
        state.deleted = false;
        self.deleted.store(false, Ordering::Release);
    }

    /// Releasing the index lets the segments it pinned go.
    pub(crate) fn release(&self) {
        self.state.write().batches.clear();
    }

    /// Waits until the entry ending at `end` is as durable as this shard's
    /// mode requires.
    pub(crate) fn wait(&self, end: u64) -> Result<()> {
        let writer = &self.log.writer;
        match self.options.durability {
            // Acknowledged from the buffer. Once `buffer_bytes` are
            // buffered the flushers write them in the background (so do a
            // later os or fsync append, a read of this data, and close);
            // past `PIPELINE_BYTES` the appender writes them itself.
            Durability::None => {
                if let Some(reason) = writer.poisoned() {
                    return Err(Error::Poisoned(format!("journal: {reason}")));
                }
                if writer.pending_bytes() >= self.log.config.buffer_bytes {
                    self.write_behind(end, false)?;
                }
                Ok(())
            }
            Durability::Os => writer.commit(end, false),
            Durability::Fsync => writer.commit(end, true),
        }
    }

    /// The pipelined counterpart of `wait`: the flushers write (and for
    /// `fsync` sync) the entry ending at `end` while the caller goes on;
    /// `wait_durable` acknowledges it.
    fn hand_off(&self, end: u64) -> Result<()> {
        match self.options.durability {
            // Acknowledged from the buffer anyway.
            Durability::None => self.wait(end),
            Durability::Os => self.write_behind(end, false),
            Durability::Fsync => self.write_behind(end, true),
        }
    }

    /// Asks the flusher threads to write (and sync when `sync`) the log up
    /// to `end`. A producer that never waits must not grow the buffer
    /// without bound: past `PIPELINE_BYTES` it writes the buffer itself
    /// (the flushers may be busy in an fdatasync meanwhile, which this
    /// write overlaps with O_DIRECT).
    fn write_behind(&self, end: u64, sync: bool) -> Result<()> {
        let pending = self.log.flush_in_background(end, sync)?;
        if pending >= PIPELINE_BYTES {
            self.log.writer.commit(end, false)?;
        }
        Ok(())
    }

    /// Makes sure every byte the index points to is written to the file, so
    /// the mapping shows it. Holding the shard lock meanwhile is fine: the
    /// writer never takes shard locks.
    fn make_readable(&self, state: &ShardState) -> Result<()> {
        self.log.writer.ensure_written(state.last_end)
    }

    /// Age retention also applies to shards nobody appends to any more.
    fn expire_idle(&self, now: i64) {
        if self.state.read().is_stale(&self.options, now) {
            let dropped = self.state.write().enforce_retention(&self.options, now);
            if dropped {
                self.log.maybe_reclaim();
            }
        }
    }

    /// Logs the rewritten form of batch `base` (`None`: nothing left).
    fn log_rewrite(
        &self,
        state: &mut ShardState,
        base: i64,
        last: i64,
        max_ts: i64,
        records: u32,
        kept: Option<Bytes>,
    ) -> Result<Option<IndexEntry>> {
        match kept {
            Some(bytes) => {
                let placed = self.enqueue(state, Kind::Rewrite, base as u64, &bytes)?;
                let entry = IndexEntry::in_segment(
                    placed.segment.clone(),
                    placed.pos + entry::HEADER_LEN as u64,
                    bytes.len(),
                    base,
                    last,
                    max_ts,
                    records,
                );
                Ok(Some(entry))
            }
            None => {
                self.enqueue(state, Kind::DropBatch, base as u64, &[])?;
                Ok(None)
            }
        }
    }

    /// The journal cleaner's relocation: logs a fresh copy of every batch
    /// whose bytes lie before global position `end`, so that the segments
    /// there stop holding anything of this shard. The copy is a `Rewrite`
    /// entry with the batch's own bytes (replay puts it in the original's
    /// place, or inserts it once the original's segment is gone), checked
    /// against the batch's CRC first: damage is reported, never copied
    /// under a fresh entry CRC. The shard's lock is held for at most
    /// `RELOCATE_CHUNK` bytes at a time, and each chunk is written before
    /// the next, so neither appenders nor the journal buffer wait on a
    /// large relocation. Batches below offset `from` stay where they are.
    /// Returns the batch bytes relocated.
    pub(super) fn relocate_below(&self, end: u64, mut from: i64) -> Result<u64> {
        let (mut logged, mut relocated) = (0, 0);
        loop {
            let mut state = self.state.write();
            if state.deleted {
                return Ok(relocated);
            }
            self.make_readable(&state)?;
            let mut reader = BatchReader::new(&self.log);
            let mut moved = 0u64;
            let mut index = state.batch_index(from);
            while index < state.batches.len() && moved < RELOCATE_CHUNK {
                let batch = &state.batches[index];
                index += 1;
                if batch.global_pos() >= end {
                    continue;
                }
                let bytes = reader.bytes(batch)?;
                format::verify_crc(&bytes).map_err(|e| {
                    Error::corruption(format!(
                        "relocating batch {} of shard '{}': {e}",
                        batch.base_offset, self.name
                    ))
                })?;
                let (base, last) = (batch.base_offset, batch.last_offset);
                let (max_ts, records) = (batch.max_timestamp, batch.records);
                let keys = batch.keys.get().cloned();
                moved += bytes.len() as u64;
                let copy =
                    self.log_rewrite(&mut state, base, last, max_ts, records, Some(bytes))?;
                let copy = copy.expect("a rewrite with bytes logs a copy");
                state.replace(index - 1, Some(copy.with_keys(keys)));
                from = last + 1;
            }
            let done = index >= state.batches.len();
            if moved > 0 {
                logged = state.logged_end;
                relocated += moved;
            }
            drop(state);
            self.log.writer.ensure_written(logged)?;
            if done {
                return Ok(relocated);
            }
        }
    }

    /// Logs `batches` at consecutive offsets; waits for the shard's
    /// durability unless `pipelined`, which hands the entries to the
    /// flusher threads instead. Under the state lock only the offsets are
    /// assigned, the entry CRCs computed and the entries copied into the
    /// log buffer, so a shard's entries enter the log in offset order.
    fn log_batches(&self, batches: Vec<NewBatch>, pipelined: bool) -> Result<i64> {
        self.check_live()?;
        let now = now_ms();
        let mut state = self.state.write();
        self.check_live()?;
        let first_offset = state.next_offset;
        let (mut records, mut bytes, mut end) = (0u64, 0u64, 0u64);
        for mut batch in batches {
            let mut buffer = std::mem::take(&mut batch.bytes);
            let base_offset = state.next_offset;
            format::set_base_offset(&mut buffer, base_offset);
            let header = entry::batch_header(self.id, base_offset as u64, &buffer);
            let placed = self.enqueue_entry(&mut state, &header, &buffer)?;
            let entry = IndexEntry::in_segment(
                placed.segment.clone(),
                placed.pos + entry::HEADER_LEN as u64,
                buffer.len(),
                base_offset,
                batch.last_offset(base_offset),
                batch.max_timestamp,
                batch.records,
            )
            .with_keys(batch.keys);
            state.push(entry);
            records += u64::from(batch.records);
            bytes += buffer.len() as u64;
            end = placed.end;
        }
        let dropped = state.enforce_retention(&self.options, now);
        drop(state);

        if pipelined {
            self.hand_off(end)?;
        } else {
            self.wait(end)?;
        }
        self.log.maybe_checkpoint();
        self.appended_records.fetch_add(records, Ordering::Relaxed);
        self.appended_bytes.fetch_add(bytes, Ordering::Relaxed);
        if dropped {
            self.log.maybe_reclaim();
        }
        Ok(first_offset)
    }
}

impl Shard for JournalShard {
    fn kind(&self) -> EngineKind {
        EngineKind::Journal
    }

    fn expire(&self, now_ms: i64) -> Result<()> {
        self.expire_idle(now_ms);
        Ok(())
    }

    fn info(&self) -> Result<ShardInfo> {
        self.expire_idle(now_ms());
        let state = self.state.read();
        Ok(ShardInfo {
            name: self.name.clone(),
            engine: EngineKind::Journal,
            first_offset: state.low_watermark,
            next_offset: state.next_offset,
            records: state.records,
            bytes: state.bytes,
            options: self.options.clone(),
        })
    }

    fn options(&self) -> &ShardOptions {
        &self.options
    }

    fn append_batches(&self, batches: Vec<NewBatch>, pipelined: bool) -> Result<i64> {
        self.log_batches(batches, pipelined)
    }

    fn wait_durable(&self, offset: i64) -> Result<()> {
        self.check_live()?;
        let end = {
            let state = self.state.read();
            scan::check_appended(&self.name, offset, state.next_offset)?;
            // The batch holding `offset`, or (deleted) the next one: the
            // shard's entries are logged in offset order.
            let index = state.batch_index(offset);
            state.batches.get(index).map_or(state.last_end, |b| b.end())
        };
        self.wait(end)
    }

    fn read(&self, from: i64, limits: ReadLimits) -> Result<ReadResult> {
        let now = now_ms();
        self.expire_idle(now);
        let state = self.state.read();
        state.check_range(&self.name, from)?;
        self.make_readable(&state)?;
        let mut reader = BatchReader::new(&self.log);
        let batches = state
            .batches
            .range(state.batch_index(from)..)
            .map_while(|b| reader.scan_batch(b));
        let result = scan::read(batches, from, limits, now, state.next_offset);
        let result = reader.finish(result)?;
        drop(state);
        self.read_records
            .fetch_add(result.records.len() as u64, Ordering::Relaxed);
        Ok(result)
    }

    fn read_by_keys(&self, keys: &[&[u8]], max_records: usize) -> Result<Vec<RecordView>> {
        let now = now_ms();
        self.expire_idle(now);
        let state = self.state.read();
        self.make_readable(&state)?;
        let wanted: Vec<u32> = keys.iter().map(|k| keyfilter::key_hash(k)).collect();
        let mut reader = BatchReader::new(&self.log);
        let batches = state
            .batches
            .iter()
            .map_while(|b| reader.scan_batch_matching(b, &wanted))
            .flatten();
        let result = scan::read_by_keys(batches, keys, max_records, now);
        reader.finish(result)
    }

    fn read_by_tag(&self, tag: &[u8], from: i64, max_records: usize) -> Result<ReadResult> {
        let now = now_ms();
        self.expire_idle(now);
        let state = self.state.read();
        state.check_range(&self.name, from)?;
        self.make_readable(&state)?;
        let wanted = [keyfilter::tag_hash(tag)];
        let mut reader = BatchReader::new(&self.log);
        let batches = state
            .batches
            .range(state.batch_index(from)..)
            .map_while(|b| reader.scan_batch_matching(b, &wanted))
            .flatten();
        let result = scan::read_by_tag(batches, tag, from, max_records, now, state.next_offset);
        reader.finish(result)
    }

    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<i64>> {
        self.expire_idle(now_ms());
        let state = self.state.read();
        match timestamp_ms {
            TIMESTAMP_EARLIEST => return Ok(Some(state.low_watermark)),
            TIMESTAMP_LATEST => return Ok(Some(state.next_offset)),
            _ => {}
        }
        self.make_readable(&state)?;
        let start = state.timestamp_start(timestamp_ms);
        let mut reader = BatchReader::new(&self.log);
        let batches = state
            .batches
            .range(start..)
            .map_while(|b| reader.scan_batch(b));
        let result = scan::offset_for_timestamp(batches, timestamp_ms);
        reader.finish(result)
    }

    fn delete_records_before(&self, offset: i64) -> Result<i64> {
        self.check_live()?;
        let mut state = self.state.write();
        let target = offset.min(state.next_offset);
        if target <= state.low_watermark {
            // Another call (or retention) got here first: acknowledge only
            // once what moved the watermark is as durable as this one's
            // own change would have been.
            let (low, end) = (state.low_watermark, state.logged_end);
            drop(state);
            self.wait(end)?;
            return Ok(low);
        }
        self.make_readable(&state)?;
        // A batch straddling the new watermark is rewritten without the
        // records below it (as the memory engine does), so transfers never
        // send records below the low watermark. Worked out before anything
        // changes: a batch that fails to decode changes nothing.
        let straddling = match state.batches.get(state.batch_index(target)) {
            Some(b) if b.base_offset < target => {
                let cut = scan::cut_below(&b.bytes(), target)?;
                Some((b.base_offset, b.last_offset, b.max_timestamp, cut))
            }
            _ => None,
        };
        while state
            .batches
            .front()
            .is_some_and(|b| b.last_offset < target)
        {
            state.pop_front();
        }
        // The watermark is logged before the rewrite: a crash between the
        // two leaves the delete done (the straddling batch keeps records
        // below the watermark, which reads skip), never half done with
        // records gone above an old watermark.
        state.low_watermark = target;
        self.checkpoint(&mut state)?;
        if let Some((base, last, max_ts, cut)) = straddling {
            let entry = self.log_rewrite(&mut state, base, last, max_ts, cut.records, cut.bytes)?;
            state.replace(0, entry);
        }
        let end = state.logged_end;
        drop(state);
        self.wait(end)?;
        self.log.maybe_reclaim();
        Ok(target)
    }

    fn truncate_to(&self, offset: i64) -> Result<()> {
        self.check_live()?;
        let mut state = self.state.write();
        state.check_truncation(&self.name, offset)?;
        if offset < state.next_offset {
            // Logged first: the cut is in the log before anything reads the
            // shorter shard.
            self.enqueue(&mut state, Kind::Truncate, offset as u64, &[])?;
            state.truncate(offset);
        }
        let end = state.logged_end;
        drop(state);
        self.wait(end)?;
        self.log.maybe_reclaim();
        Ok(())
    }

    /// Deletes, batch by batch, the records `matches` selects, logging a
    /// rewritten batch (or a drop) for each affected one.
    fn delete_where(
        &self,
        within: Range<i64>,
        matches: &mut dyn FnMut(&RecordView) -> bool,
    ) -> Result<u64> {
        self.check_live()?;
        let mut state = self.state.write();
        self.make_readable(&state)?;
        let mut deleted = 0u64;
        let mut index = state.batch_index(within.start);
        while index < state.batches.len() && state.batches[index].base_offset < within.end {
            let batch = &state.batches[index];
            let Some(rewritten) = scan::rewrite_where(&batch.bytes(), matches)? else {
                index += 1;
                continue;
            };
            let (base, last, max_ts) = (batch.base_offset, batch.last_offset, batch.max_timestamp);
            deleted += rewritten.deleted as u64;
            let replacement = self.log_rewrite(
                &mut state,
                base,
                last,
                max_ts,
                rewritten.records,
                rewritten.bytes,
            )?;
            let removed = replacement.is_none();
            state.replace(index, replacement);
            if !removed {
                index += 1;
            }
        }
        // With nothing found, the records may be gone by another call's
        // delete still on its way to the disk: wait for it as well.
        let end = state.logged_end;
        drop(state);
        self.wait(end)?;
        if deleted > 0 {
            self.log.maybe_reclaim();
        }
        Ok(deleted)
    }

    fn plan_transfer(&self, from: i64, max_bytes: usize) -> Result<TransferPlan> {
        self.expire_idle(now_ms());
        let state = self.state.read();
        state.check_range(&self.name, from)?;
        self.make_readable(&state)?;
        let mut chunks: Vec<TransferChunk> = Vec::new();
        let mut total = 0usize;
        let mut next_offset = state.next_offset;
        for batch in state.batches.range(state.batch_index(from)..) {
            let len = batch.len as usize;
            if !chunks.is_empty() && total + len > max_bytes {
                next_offset = batch.base_offset;
                break;
            }
            debug_assert_eq!(
                BatchHeader::parse(&batch.bytes())
                    .map(|h| h.base_offset)
                    .ok(),
                Some(batch.base_offset)
            );
            total += len;
            // Batches of one shard are never adjacent in a shared journal
            // (entry headers and other shards' entries sit between them),
            // so each batch is its own sendfile range.
            // The newest batches from the tail cache (O_DIRECT wrote them
            // past the page cache), older ones with sendfile.
            chunks.push(match self.log.writer.tail.batch(batch) {
                Some(bytes) => TransferChunk::Memory(bytes),
                None => TransferChunk::File {
                    file: batch.loc.segment.file.clone(),
                    offset: batch.loc.pos,
                    len: len as u64,
                },
            });
        }
        Ok(TransferPlan::new(chunks, next_offset))
    }

    fn save_group_offset(&self, group: &str, offset: Option<i64>) -> Result<bool> {
        self.log_group_offset(group, offset)?;
        Ok(true)
    }

    fn saved_group_offsets(&self) -> Result<Vec<(String, i64)>> {
        let state = self.state.read();
        Ok(state.groups.iter().map(|(g, o)| (g.clone(), *o)).collect())
    }

    fn stats(&self) -> Result<serde_json::Value> {
        let state = self.state.read();
        let mut value = serde_json::json!({
            "batches": state.batches.len(),
            "appended_records": self.appended_records.load(Ordering::Relaxed),
            "appended_bytes": self.appended_bytes.load(Ordering::Relaxed),
            "read_records": self.read_records.load(Ordering::Relaxed),
        });
        drop(state);
        value["journal"] = self.log.stats();
        Ok(value)
    }
}
