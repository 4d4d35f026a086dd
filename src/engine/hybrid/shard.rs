//! A hybrid shard: one shard of the local engine (hot and warm data) and
//! one of the cold tier's S3 engine, holding the same offsets. The cold
//! shard holds `[its low watermark, boundary)`, the local one
//! `[boundary, next offset)`, where `boundary` is the cold shard's next
//! offset; every call routes by offset.
//!
//! Moving data (`tier`) follows Kafka's KIP-405 copy lifecycle: the
//! batches are copied to the cold shard (an `fsync` append there: its
//! object and manifest are stored when it returns: copy finished), the
//! boundary moves past them, then the local copies are deleted. A crash
//! before the copy finished leaves the batches local only (an object
//! uploaded without its manifest write is deleted at the next open); a
//! crash after it leaves them in both, and the next pass (or the next
//! open) deletes the local copies below the boundary: nothing is lost and
//! nothing is served twice.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::config::{HybridConfig, ShardOptions};
use crate::engine::{
    scan, Engine, EngineKind, NewBatch, ReadLimits, ReadResult, RecordView, Shard, ShardInfo,
    TIMESTAMP_EARLIEST, TIMESTAMP_LATEST,
};
use crate::format::{self, BatchHeader};
use crate::io::TransferPlan;
use crate::log::{self, Level};
use crate::{Error, Result};

#[derive(Default)]
struct Counters {
    passes: AtomicU64,
    batches: AtomicU64,
    bytes: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Size limits an append could not apply (the object store down).
    trim_failures: AtomicU64,
}

/// A group offset of the cold shard only (users' group offsets are the
/// local shard's): the low watermark the local shard had when a pass
/// copied batches to the cold shard after a gap, which the cold shard
/// takes too.
const LOW_WATERMARK: &str = "mqs.hybrid.low_watermark";

/// What a pass has under way, which `info` takes into account so that it
/// never shows a move half-done.
#[derive(Clone, Copy, Debug, Default)]
struct InFlight {
    /// The copy both tiers may hold: set just before a pass appends it to
    /// the cold shard, cleared once its local copies are gone (after a
    /// failed pass, by whatever finishes the copy next). `info` subtracts
    /// it exactly while both tiers hold it.
    copy: Option<InBoth>,
    /// The low watermark the cold shard is taking after a gap (the local
    /// one's), while its fillers and the batch holding it arrive below it.
    low: Option<i64>,
}

#[derive(Clone, Copy, Debug)]
struct InBoth {
    /// The copy's end: the cold shard holds it once its next offset
    /// reaches `end`; the local one until its low watermark does.
    end: i64,
    /// What the cold shard counts for it.
    records: u64,
    bytes: u64,
}

/// What re-creates the local shard (`truncate_to` below the boundary).
pub struct LocalTier {
    pub engine: Arc<dyn Engine>,
    pub name: String,
    pub options: ShardOptions,
}

pub struct HybridShard {
    options: ShardOptions,
    /// Replaced only by `truncate_to` below the boundary.
    local: RwLock<Arc<dyn Shard>>,
    local_tier: LocalTier,
    pub(super) cold: Arc<dyn Shard>,
    /// The cold shard's next offset: offsets below it are read there.
    boundary: AtomicI64,
    /// Held by whatever changes which tier holds an offset or rewrites
    /// batches (a tier pass, deletes, truncation), so a pass never copies
    /// a batch a delete is rewriting.
    moving: Mutex<()>,
    /// Reads hold it shared; a pass takes it alone to delete local copies,
    /// so a read routed to the local shard finds its batches there.
    route: RwLock<()>,
    /// What a pass has under way, and a version bumped at each change of
    /// it, so that `info` reads both tiers and it as of one moment.
    in_flight: Mutex<InFlight>,
    in_flight_version: AtomicU64,
    settings: HybridConfig,
    counters: Counters,
}

impl HybridShard {
    pub fn new(
        options: ShardOptions,
        local: Arc<dyn Shard>,
        local_tier: LocalTier,
        cold: Arc<dyn Shard>,
        settings: HybridConfig,
    ) -> Result<HybridShard> {
        let boundary = cold.info()?.next_offset;
        Ok(HybridShard {
            options,
            local: RwLock::new(local),
            local_tier,
            cold,
            boundary: AtomicI64::new(boundary),
            moving: Mutex::new(()),
            route: RwLock::new(()),
            in_flight: Mutex::new(InFlight::default()),
            in_flight_version: AtomicU64::new(0),
            settings,
            counters: Counters::default(),
        })
    }

    fn boundary(&self) -> i64 {
        self.boundary.load(Ordering::Acquire)
    }

    pub(super) fn local(&self) -> Arc<dyn Shard> {
        self.local.read().clone()
    }

    /// Brings the tiers into step after an open: local copies of what the
    /// cold tier holds go; a local shard behind the cold one (its tail
    /// lost in a crash after it was copied) moves up to it.
    pub fn reconcile(&self) -> Result<()> {
        let _moving = self.moving.lock();
        let saved = self.cold.saved_group_offsets()?;
        let low = saved.iter().find(|(name, _)| name == LOW_WATERMARK);
        if let Some(&(_, low)) = low {
            if self.cold.info()?.first_offset < low {
                self.cold.delete_records_before(low)?;
            }
        }
        let boundary = self.boundary();
        let local = self.local().info()?;
        if local.next_offset < boundary {
            let fillers = fillers(local.next_offset, boundary, crate::time::now_ms());
            self.local().append_batches(fillers, false)?;
        }
        self.drop_local_below(boundary)
    }

    /// The boundary, moved up to the cold shard's next offset: a copy that
    /// failed may have left its batches there (stored, not yet durable:
    /// the object store's answer was lost, or they wait to be tried
    /// again). They are made durable first; then they count as copied.
    fn settle(&self) -> Result<i64> {
        let boundary = self.boundary();
        let cold_next = self.cold.info()?.next_offset;
        if cold_next > boundary {
            self.cold.sync()?;
            self.boundary.store(cold_next, Ordering::Release);
        }
        Ok(cold_next.max(boundary))
    }

    /// Finishes what a failed pass left half-way (called holding
    /// `moving`): the cold copy counts, the local one goes. Afterwards no
    /// offset is in both tiers, and the cold shard ends at the boundary.
    fn finish_copy(&self) -> Result<i64> {
        let boundary = self.settle()?;
        self.drop_local_below(boundary)?;
        self.in_flight(|f| f.copy = None);
        Ok(boundary)
    }

    fn in_flight(&self, change: impl FnOnce(&mut InFlight)) {
        let mut in_flight = self.in_flight.lock();
        change(&mut in_flight);
        self.in_flight_version.fetch_add(1, Ordering::AcqRel);
    }

    fn drop_local_below(&self, offset: i64) -> Result<()> {
        if self.local().info()?.first_offset >= offset {
            return Ok(());
        }
        let _routing = self.route.write();
        self.local().delete_records_before(offset)?;
        Ok(())
    }

    /// Moves what is due to the cold tier: batches older than
    /// `hot_duration_ms`, and the oldest beyond `hot_bytes`.
    pub fn tier(&self, now_ms: i64) -> Result<u64> {
        let outcome = self.tier_due(now_ms);
        self.counters.passes.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &outcome {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
            *self.counters.last_error.lock() = Some(e.to_string());
        }
        outcome
    }

    fn tier_due(&self, now_ms: i64) -> Result<u64> {
        let _moving = self.moving.lock();
        let mut from = self.finish_copy()?;
        let local = self.local().info()?;
        // Deleted locally before it was due (retention, deletes): the cold
        // shard skips those offsets too, up to the batch holding the local
        // low watermark, and takes that watermark once it holds the batch.
        let gap = local.first_offset > from;
        if gap {
            // Kept where a crash cannot lose it before the cold shard's
            // low watermark is moved: a batch copied whole may hold
            // records below it (`reconcile`).
            self.cold
                .save_group_offset(LOW_WATERMARK, Some(local.first_offset))?;
            self.in_flight(|f| f.low = Some(local.first_offset));
            let start = self.batch_start(local.first_offset)?;
            if start > from {
                self.cold
                    .append_batches(fillers(from, start, now_ms), false)?;
                // The fillers hold deleted offsets, up to the local low
                // watermark; when no batch holds it, the rest of them
                // (empty offsets) stay above it, as in the local shard.
                self.cold
                    .delete_records_before(start.min(local.first_offset))?;
                from = start;
                self.boundary.store(from, Ordering::Release);
            }
        }
        let due = self.due_end(&local, now_ms)?;
        let mut moved = 0;
        while from < due {
            let batches = self.copy_of(from, due)?;
            let Some(last) = batches.last().map(|(b, _)| *b) else {
                break;
            };
            let (count, bytes) = (
                batches.len() as u64,
                batches
                    .iter()
                    .map(|(_, b)| b.bytes.len() as u64)
                    .sum::<u64>(),
            );
            // The cold shard stores them at its next offset: it must be
            // where they start, or they would be stored at other offsets.
            let (cold_next, first) = (self.cold.info()?.next_offset, self.first_base(&batches)?);
            if cold_next != from || first != from {
                return Err(Error::Internal(format!(
                    "hybrid shard '{}': copying from offset {from}, the cold tier is at \
                     {cold_next} and the local batch at {first}",
                    local.name
                )));
            }
            let copy = InBoth {
                end: last,
                records: batches.iter().map(|(_, b)| u64::from(b.records)).sum(),
                bytes,
            };
            self.in_flight(|f| f.copy = Some(copy));
            self.cold
                .append_batches(batches.into_iter().map(|(_, b)| b).collect(), false)?;
            if gap {
                // Before any read is routed to the copy.
                self.cold.delete_records_before(local.first_offset)?;
            }
            // Copy finished: reads of these offsets go to the cold tier
            // from now on, and the local copies can go.
            let stored = self.cold.info()?.next_offset;
            if stored != last {
                return Err(Error::Internal(format!(
                    "hybrid shard '{}': the copy of {from}..{last} ends at {stored} in the cold tier",
                    local.name
                )));
            }
            from = last;
            self.boundary.store(from, Ordering::Release);
            self.drop_local_below(from)?;
            self.in_flight(|f| f.copy = None);
            self.counters.batches.fetch_add(count, Ordering::Relaxed);
            self.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
            moved += count;
        }
        if gap {
            // The cold shard's low watermark is the local one's now. (After
            // a failure it stays noted: it is a low watermark all the same.)
            self.in_flight(|f| f.low = None);
        }
        Ok(moved)
    }

    fn first_base(&self, batches: &[(i64, NewBatch)]) -> Result<i64> {
        let (_, first) = batches.first().expect("at least one batch");
        Ok(BatchHeader::parse(&first.bytes)?.base_offset)
    }

    /// The base offset of the local batch holding `offset`, or of the
    /// first one after it when none does (deletes emptied it); `offset`
    /// itself when the local shard holds nothing from there on.
    fn batch_start(&self, offset: i64) -> Result<i64> {
        let plan = self.local().plan_transfer(offset, 1)?;
        if plan.total_bytes() == 0 {
            return Ok(offset);
        }
        let first = plan.to_vec()?;
        Ok(BatchHeader::parse(&first)?.base_offset)
    }

    /// Where the due data ends: the first offset younger than
    /// `hot_duration_ms`, or further when the local bytes exceed
    /// `hot_bytes`.
    fn due_end(&self, local: &ShardInfo, now_ms: i64) -> Result<i64> {
        let cutoff = now_ms.saturating_sub(self.settings.hot_duration_ms as i64);
        let by_age = match self.settings.hot_duration_ms {
            0 => local.next_offset,
            _ => self
                .local()
                .offset_for_timestamp(cutoff)?
                .unwrap_or(local.next_offset),
        };
        let by_size = match self.settings.hot_bytes {
            limit if limit > 0 && local.bytes > limit => {
                let excess = (local.bytes - limit) as usize;
                self.local()
                    .plan_transfer(local.first_offset, excess)?
                    .next_offset()
            }
            _ => local.first_offset,
        };
        Ok(by_age.max(by_size))
    }

    /// The local batches from `from` on, ending before `due`, at most
    /// `tier_chunk_bytes` of them (at least one): (end offset, batch).
    ///
    /// A batch spans the offsets up to the next one's base (the plan's end
    /// for the last): a delete may have removed its last records, which
    /// shortens its header's span but not the offsets it holds.
    pub(super) fn copy_of(&self, from: i64, due: i64) -> Result<Vec<(i64, NewBatch)>> {
        // From the local low watermark when it lies inside the batch at
        // `from` (the plan then starts with that whole batch).
        let local = self.local();
        let at = from.max(local.info()?.first_offset);
        let plan = local.plan_transfer(at, self.settings.tier_chunk_bytes as usize)?;
        let bytes = Bytes::from(plan.to_vec()?);
        let split = format::split_batches(&bytes)?;
        let headers = split
            .iter()
            .map(|batch| BatchHeader::parse(batch))
            .collect::<Result<Vec<_>>>()?;
        let mut batches = Vec::new();
        for (i, (batch, header)) in split.into_iter().zip(&headers).enumerate() {
            let end = headers
                .get(i + 1)
                .map_or(plan.next_offset(), |next| next.base_offset);
            if end > due {
                break;
            }
            batches.push((
                end,
                NewBatch {
                    records: header.record_count as u32,
                    last_offset_delta: (end - header.base_offset - 1) as i32,
                    max_timestamp: header.max_timestamp,
                    bytes: batch.to_vec(),
                    keys: None,
                },
            ));
        }
        Ok(batches)
    }

    /// Applies the size limits (`retention_records`, `retention_bytes`)
    /// to both tiers together: the oldest batch goes while the shard is
    /// over a limit, the newest always stays. From the count to the drop
    /// it holds `moving`, so that two appenders over the limit by one
    /// batch never drop two.
    fn trim(&self) -> Result<()> {
        let limited = self.options.retention_records > 0 || self.options.retention_bytes > 0;
        if !limited || !self.over_limits(&self.info()?) {
            return Ok(());
        }
        let _moving = self.moving.lock();
        self.finish_copy()?;
        loop {
            let info = self.info()?;
            if !self.over_limits(&info) {
                return Ok(());
            }
            let oldest_end = self.plan_transfer(info.first_offset, 1)?.next_offset();
            if oldest_end >= info.next_offset || oldest_end <= info.first_offset {
                return Ok(());
            }
            self.delete_before(oldest_end)?;
        }
    }

    fn over_limits(&self, info: &ShardInfo) -> bool {
        let (records, bytes) = (self.options.retention_records, self.options.retention_bytes);
        (records > 0 && info.records > records) || (bytes > 0 && info.bytes > bytes)
    }

    /// `delete_records_before`, holding `moving`.
    fn delete_before(&self, offset: i64) -> Result<()> {
        let boundary = self.finish_copy()?;
        self.cold.delete_records_before(offset.min(boundary))?;
        if offset > boundary {
            self.local().delete_records_before(offset)?;
        }
        Ok(())
    }

    /// Runs a read from `from` on the tier holding it. A cold read that
    /// reached the boundary with room left goes on in the local tier
    /// (`more`: whether there is room, and where the cold part ended),
    /// where the cold part ended or, when the local tier dropped its front
    /// past it (deletes), at its low watermark.
    fn routed<T>(
        &self,
        from: i64,
        read: impl Fn(&dyn Shard, i64, Option<&T>) -> Result<T>,
        more: impl Fn(&T) -> (bool, i64),
        join: impl FnOnce(T, T) -> T,
    ) -> Result<T> {
        let _routing = self.route.read();
        let boundary = self.boundary();
        let local = self.local();
        if from >= boundary {
            return read(local.as_ref(), from, None);
        }
        let cold = read(self.cold.as_ref(), from, None)?;
        match more(&cold) {
            // The cold part may pass the boundary (a copy that finished,
            // the boundary not yet moved): the local part starts after it.
            (true, next) if next >= boundary => {
                let at = next.max(local.info()?.first_offset);
                let rest = read(local.as_ref(), at, Some(&cold))?;
                Ok(join(cold, rest))
            }
            _ => Ok(cold),
        }
    }

    /// Reads whose limits `found` left room for.
    fn read_limits(limits: ReadLimits, found: Option<&ReadResult>) -> Option<ReadLimits> {
        let Some(found) = found else {
            return Some(limits);
        };
        let bytes: usize = found.records.iter().map(scan::record_size).sum();
        let records = found.records.len();
        (records < limits.max_records && bytes < limits.max_bytes).then(|| ReadLimits {
            max_records: limits.max_records - records,
            max_bytes: limits.max_bytes - bytes,
        })
    }
}

/// `found` cut to `max_bytes`: a continued read may not pass it with its
/// first record, as the read's very first record may.
fn within(mut found: ReadResult, max_bytes: usize) -> ReadResult {
    let mut bytes = 0;
    if let Some(cut) = found.records.iter().position(|r| {
        bytes += scan::record_size(r);
        bytes > max_bytes
    }) {
        found.next_offset = found.records[cut].offset;
        found.records.truncate(cut);
    }
    found
}

fn join_reads(mut first: ReadResult, rest: ReadResult) -> ReadResult {
    first.records.extend(rest.records);
    first.next_offset = rest.next_offset;
    first
}

/// Empty batches spanning `[from, to)`, stamped `timestamp_ms`.
fn fillers(from: i64, to: i64, timestamp_ms: i64) -> Vec<NewBatch> {
    let next = BatchHeader {
        base_offset: to,
        batch_length: 0,
        partition_leader_epoch: 0,
        magic: 2,
        crc: 0,
        attributes: 0,
        last_offset_delta: 0,
        base_timestamp: timestamp_ms,
        max_timestamp: timestamp_ms,
        producer_id: format::NO_PRODUCER_ID,
        producer_epoch: format::NO_PRODUCER_EPOCH,
        base_sequence: format::NO_SEQUENCE,
        record_count: 0,
    };
    crate::producer::gap_fillers(from, &next)
}

impl Shard for HybridShard {
    fn kind(&self) -> EngineKind {
        EngineKind::Hybrid
    }

    /// Both tiers' counts as of one moment, less the copy both hold then
    /// (a pass between its copy and its local delete, or a copy a failed
    /// pass left): the size limits never count a batch twice.
    fn info(&self) -> Result<ShardInfo> {
        loop {
            let version = self.in_flight_version.load(Ordering::Acquire);
            let (cold, local) = (self.cold.info()?, self.local().info()?);
            let in_flight = *self.in_flight.lock();
            if self.in_flight_version.load(Ordering::Acquire) != version {
                continue;
            }
            let twice = in_flight
                .copy
                .filter(|copy| cold.next_offset >= copy.end && local.first_offset < copy.end)
                .map_or((0, 0), |copy| (copy.records, copy.bytes));
            let first_offset = match cold.first_offset < cold.next_offset {
                true => cold.first_offset,
                false => local.first_offset.max(cold.next_offset),
            };
            let first_offset = first_offset.max(in_flight.low.unwrap_or(i64::MIN));
            return Ok(ShardInfo {
                name: local.name,
                engine: EngineKind::Hybrid,
                first_offset,
                next_offset: local.next_offset.max(cold.next_offset),
                records: (cold.records + local.records).saturating_sub(twice.0),
                bytes: (cold.bytes + local.bytes).saturating_sub(twice.1),
                options: self.options.clone(),
            });
        }
    }

    /// Each tier applies the shard's age retention (the cold tier holds
    /// the older data); the size limits count both (`trim`).
    fn expire(&self, now_ms: i64) -> Result<()> {
        self.cold.expire(now_ms)?;
        self.local().expire(now_ms)?;
        self.trim()
    }

    fn options(&self) -> &ShardOptions {
        &self.options
    }

    fn append_batches(&self, batches: Vec<NewBatch>, pipelined: bool) -> Result<i64> {
        let base = self.local().append_batches(batches, pipelined)?;
        // The batches are stored: size limits the object store cannot apply
        // now (it is down) wait for a later append or the retention timer,
        // and do not fail this append (a retry would store it twice).
        if let Err(e) = self.trim() {
            self.counters.trim_failures.fetch_add(1, Ordering::Relaxed);
            log::emit(
                Level::Warn,
                &format!(
                    "hybrid shard '{}': applying its size limits: {e} (tried again later)",
                    self.local_tier.name
                ),
            );
        }
        Ok(base)
    }

    fn wait_durable(&self, offset: i64) -> Result<()> {
        match (0..self.boundary()).contains(&offset) {
            // In the cold tier: stored before the boundary moved past it.
            true => Ok(()),
            false => self.local().wait_durable(offset),
        }
    }

    fn read(&self, from: i64, limits: ReadLimits) -> Result<ReadResult> {
        self.routed(
            from,
            |tier, from, found| match Self::read_limits(limits, found) {
                Some(left) if found.is_some_and(|f| !f.records.is_empty()) => {
                    Ok(within(tier.read(from, left)?, left.max_bytes))
                }
                Some(left) => tier.read(from, left),
                None => Ok(ReadResult::default()),
            },
            |found| {
                (
                    Self::read_limits(limits, Some(found)).is_some(),
                    found.next_offset,
                )
            },
            join_reads,
        )
    }

    fn read_by_keys(&self, keys: &[&[u8]], max_records: usize) -> Result<Vec<RecordView>> {
        let _routing = self.route.read();
        let boundary = self.boundary();
        let local = self.local();
        let low = self.info()?.first_offset;
        let mut found: Vec<RecordView> = self
            .cold
            .read_by_keys(keys, max_records)?
            .into_iter()
            .filter(|r| (low..boundary).contains(&r.offset))
            .collect();
        if found.len() < max_records {
            let local = local.read_by_keys(keys, max_records)?;
            found.extend(local.into_iter().filter(|r| r.offset >= boundary));
            found.truncate(max_records);
        }
        Ok(found)
    }

    fn read_by_tag(&self, tag: &[u8], from: i64, max_records: usize) -> Result<ReadResult> {
        let left = |found: Option<&ReadResult>| max_records - found.map_or(0, |f| f.records.len());
        self.routed(
            from,
            |tier, from, found| match left(found) {
                0 => Ok(ReadResult::default()),
                n => tier.read_by_tag(tag, from, n),
            },
            |found| (left(Some(found)) > 0, found.next_offset),
            join_reads,
        )
    }

    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<i64>> {
        let info = self.info()?;
        match timestamp_ms {
            TIMESTAMP_EARLIEST => return Ok(Some(info.first_offset)),
            TIMESTAMP_LATEST => return Ok(Some(info.next_offset)),
            _ => {}
        }
        let _routing = self.route.read();
        let boundary = self.boundary();
        if info.first_offset < boundary {
            if let Some(offset) = self.cold.offset_for_timestamp(timestamp_ms)? {
                if offset < boundary {
                    return Ok(Some(offset.max(info.first_offset)));
                }
            }
        }
        self.local().offset_for_timestamp(timestamp_ms)
    }

    fn delete_records_before(&self, offset: i64) -> Result<i64> {
        let _moving = self.moving.lock();
        self.delete_before(offset)?;
        Ok(self.info()?.first_offset)
    }

    fn delete_where(
        &self,
        within: std::ops::Range<i64>,
        matches: &mut dyn FnMut(&RecordView) -> bool,
    ) -> Result<u64> {
        let _moving = self.moving.lock();
        let boundary = self.finish_copy()?;
        let mut deleted = 0;
        if within.start < boundary {
            deleted += self
                .cold
                .delete_where(within.start..within.end.min(boundary), matches)?;
        }
        if within.end > boundary {
            deleted += self
                .local()
                .delete_where(within.start.max(boundary)..within.end, matches)?;
        }
        Ok(deleted)
    }

    fn plan_transfer(&self, from: i64, max_bytes: usize) -> Result<TransferPlan> {
        let left = |found: Option<&TransferPlan>| {
            max_bytes.saturating_sub(found.map_or(0, |f| f.total_bytes() as usize))
        };
        // A plan holds at least one batch, even past `max_bytes`: only the
        // first part may, so a local part that does not fit is dropped.
        self.routed(
            from,
            |tier, from, found| {
                let plan = tier.plan_transfer(from, left(found).max(1))?;
                match found {
                    Some(found)
                        if found.total_bytes() > 0
                            && plan.total_bytes() as usize > left(Some(found)) =>
                    {
                        Ok(TransferPlan::empty(found.next_offset()))
                    }
                    _ => Ok(plan),
                }
            },
            |plan| (left(Some(plan)) > 0, plan.next_offset()),
            TransferPlan::then,
        )
    }

    /// Below the boundary: the cold shard is truncated and the local one
    /// (all of it after the offset) starts again empty at the offset,
    /// keeping its group offsets.
    fn truncate_to(&self, offset: i64) -> Result<()> {
        let _moving = self.moving.lock();
        let boundary = self.finish_copy()?;
        if offset >= boundary {
            return self.local().truncate_to(offset);
        }
        let _routing = self.route.write();
        self.cold.truncate_to(offset)?;
        self.boundary.store(offset, Ordering::Release);
        let old = self.local();
        let groups = old.saved_group_offsets()?;
        let tier = &self.local_tier;
        tier.engine.remove_shard(&tier.name, &old)?;
        let fresh = tier.engine.create_shard(&tier.name, &tier.options)?;
        if offset > 0 {
            fresh.append_batches(fillers(0, offset, crate::time::now_ms()), false)?;
            fresh.delete_records_before(offset)?;
        }
        for (group, at) in groups {
            fresh.save_group_offset(&group, Some(at))?;
        }
        *self.local.write() = fresh;
        Ok(())
    }

    fn stats(&self) -> Result<serde_json::Value> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        // The local tier's counters first (appends go there), then the
        // tiering's and the cold tier's.
        let mut stats = self.local().stats()?;
        let tiering = serde_json::json!({
            "boundary": self.boundary(),
            "tier_passes": get(&c.passes),
            "tiered_batches": get(&c.batches),
            "tiered_bytes": get(&c.bytes),
            "tier_failures": get(&c.failures),
            "last_tier_error": *c.last_error.lock(),
            "size_limit_failures": get(&c.trim_failures),
            "cold": self.cold.stats()?,
        });
        if let (Some(stats), serde_json::Value::Object(tiering)) = (stats.as_object_mut(), tiering)
        {
            stats.extend(tiering);
        }
        Ok(stats)
    }

    fn save_group_offset(&self, group: &str, offset: Option<i64>) -> Result<bool> {
        self.local().save_group_offset(group, offset)
    }

    fn saved_group_offsets(&self) -> Result<Vec<(String, i64)>> {
        self.local().saved_group_offsets()
    }
}
