//! Where a read gets a batch's bytes: hot segments (the newest
//! `[journal] hot_segments`) through their mapping, colder ones through
//! pread(2) with read-ahead.
//!
//! Why not map everything: a mapped read of cold data faults in 4 KiB pages
//! one by one (plus the kernel's fault-around), and an I/O error on a page
//! that is not cached arrives as SIGBUS, which would kill the host process;
//! pread turns it into an `Io` error and reads in large requests. Hot data
//! is in the page cache anyway (just written), where a mapped view costs
//! nothing and is zero-copy to the caller. Cold views are zero-copy slices
//! of the read-ahead buffer: one copy from the page cache, none after.
//!
//! Read-ahead: one pread covers `READ_AHEAD` bytes from the first batch
//! wanted, and later batches of the same read that fall inside it are
//! sliced from the same buffer. A shard's batches are interleaved with
//! other shards' entries in the shared journal, so the window may also
//! hold bytes the read does not need; it is bounded, and sequential
//! consumers (the common case: a follower catching up) use most of it.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::index::IndexEntry;
use super::Log;
use crate::engine::scan::ScanBatch;
use crate::{Error, Result};

/// Bytes one cold pread fetches, at least (Kafka's default fetch size).
const READ_AHEAD: u64 = 1 << 20;

pub struct BatchReader<'a> {
    log: &'a Log,
    /// Segments starting here or later are hot.
    hot_from: u64,
    /// The current read-ahead buffer: (segment base, position, bytes).
    window: Option<(u64, u64, Bytes)>,
    /// The first failure; the scan stops there and reports it.
    error: Option<Error>,
}

impl<'a> BatchReader<'a> {
    pub fn new(log: &'a Log) -> BatchReader<'a> {
        BatchReader {
            log,
            hot_from: log.hot_from(),
            window: None,
            error: None,
        }
    }

    pub fn bytes(&mut self, batch: &IndexEntry) -> Result<Bytes> {
        if let Some(bytes) = self.log.writer.tail.batch(batch) {
            return Ok(bytes);
        }
        let segment = &batch.loc.segment;
        let len = batch.len as u64;
        if segment.base >= self.hot_from {
            return Ok(batch.bytes());
        }
        if let Some((base, start, buf)) = &self.window {
            if *base == segment.base
                && batch.loc.pos >= *start
                && batch.loc.pos + len <= start + buf.len() as u64
            {
                let at = (batch.loc.pos - start) as usize;
                return Ok(buf.slice(at..at + len as usize));
            }
        }
        let want = len.max(READ_AHEAD).min(segment.len - batch.loc.pos);
        let mut buf = vec![0u8; want as usize];
        segment
            .file
            .read_exact_at(&mut buf, batch.loc.pos)
            .map_err(|e| Error::io(format!("reading '{}'", segment.path.display()), e))?;
        self.log.cold_reads.fetch_add(1, Ordering::Relaxed);
        self.log.cold_read_bytes.fetch_add(want, Ordering::Relaxed);
        let buf = Bytes::from(buf);
        let out = buf.slice(..len as usize);
        self.window = Some((segment.base, batch.loc.pos, buf));
        Ok(out)
    }

    /// The batch as a scan wants it; `None` (ending the scan) after a
    /// failure, which `finish` then reports.
    pub fn scan_batch(&mut self, batch: &IndexEntry) -> Option<ScanBatch> {
        let bytes = self.fetch(batch)?;
        Some(batch.scan(bytes))
    }

    /// For key and tag lookups: like `scan_batch`, but `Some(None)` for a
    /// batch whose key filter rules out every hash of `wanted`. A batch
    /// without a filter yet (replayed, or rewritten by a delete) gets one
    /// from the bytes fetched here, which the scan then uses too.
    pub fn scan_batch_matching(
        &mut self,
        batch: &IndexEntry,
        wanted: &[u32],
    ) -> Option<Option<ScanBatch>> {
        match batch.may_match(wanted) {
            Some(false) => Some(None),
            Some(true) => self.scan_batch(batch).map(Some),
            None => {
                let bytes = self.fetch(batch)?;
                let hit = batch.learn_filter(&bytes, wanted);
                Some(hit.then(|| batch.scan(bytes)))
            }
        }
    }

    /// The batch's bytes; `None` (ending the scan) after a failure, which
    /// `finish` then reports.
    fn fetch(&mut self, batch: &IndexEntry) -> Option<Bytes> {
        match self.bytes(batch) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }

    /// The scan's result, unless reading a batch failed.
    pub fn finish<T>(self, result: Result<T>) -> Result<T> {
        match self.error {
            Some(e) => Err(e),
            None => result,
        }
    }
}
