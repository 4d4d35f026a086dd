//! The S3 backend against object_store's in-memory store, wrapped to
//! inject faults (failed PUTs, answers lost after the write, failed
//! GETs). The engine's suites run against a real server.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use super::client::Client;
use super::db::{Layout, S3Db};
use crate::config::{Durability, S3Config};
use crate::engine::database::{
    BatchMeta, BatchReader, Change, Database, Entry, Found, PlannedBatch, ShardMeta,
};
use crate::engine::index::BatchEntry;
use crate::engine::keyfilter::key_hash;
use crate::engine::KeyFilter;
use crate::io::TransferPlan;
use crate::Status;

/// The in-memory store, with faults on demand.
#[derive(Debug, Default)]
pub(crate) struct Faulty {
    pub(crate) inner: InMemory,
    /// PUTs that fail (as a 503 would, after the client's retries).
    pub(crate) failing_puts: AtomicU32,
    /// Counts PUTs down: the one that brings it from 1 to 0 is applied
    /// and its answer lost (an error is returned).
    pub(crate) lose_nth: AtomicU32,
    pub(crate) failing_gets: AtomicU32,
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty")
    }
}

fn unavailable(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "Faulty",
        source: format!("{what}: 503 Service Unavailable <Code>SlowDown</Code>").into(),
    }
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if take(&self.failing_puts) {
            return Err(unavailable("PUT"));
        }
        let done = self.inner.put_opts(location, payload, opts).await?;
        let counted = self
            .lose_nth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        match counted {
            Ok(1) => Err(unavailable("PUT answer")),
            _ => Ok(done),
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if take(&self.failing_gets) {
            return Err(unavailable("GET"));
        }
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        if take(&self.failing_gets) {
            return Err(unavailable("GET"));
        }
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

const PREFIX: &str = "t";

fn config() -> S3Config {
    S3Config {
        object_bytes: 64 << 10,
        block_bytes: 4 << 10,
        flush_interval_ms: 3_600_000,
        ..S3Config::default()
    }
}

fn open_with(store: &Arc<Faulty>, config: &S3Config) -> Arc<S3Db> {
    let db = open_without_flusher(store, config);
    db.start_flusher().unwrap();
    db
}

/// A store whose flusher rounds (`flush_due`) only the test runs.
fn open_without_flusher(store: &Arc<Faulty>, config: &S3Config) -> Arc<S3Db> {
    let client = Client::with_store(
        store.clone(),
        "memory".into(),
        Duration::from_secs(10),
        false,
    )
    .unwrap();
    let layout = Layout {
        prefix: PREFIX.into(),
    };
    S3Db::new(client, layout, config, false)
}

fn open(store: &Arc<Faulty>) -> Arc<S3Db> {
    open_with(store, &config())
}

fn meta(name: &str) -> ShardMeta {
    ShardMeta {
        name: name.into(),
        options: String::new(),
        low_watermark: 0,
        next_offset: 0,
    }
}

/// A batch of `records` offsets at `base`, its bytes telling its base.
fn put(shard: u64, base: i64, records: u32) -> Change {
    let bytes = Bytes::from(format!("batch {base:08} ").repeat(40));
    Change::PutBatch {
        shard,
        base_offset: base,
        meta: BatchMeta {
            last_offset: base + records as i64 - 1,
            max_timestamp: base,
            records,
            len: bytes.len() as u32,
        },
        bytes,
        keys: None,
    }
}

/// `change` (a `put`) with a filter of the key `k<base>`.
fn with_key(change: Change) -> Change {
    match change {
        Change::PutBatch {
            shard,
            base_offset,
            bytes,
            meta,
            ..
        } => Change::PutBatch {
            shard,
            base_offset,
            bytes,
            meta,
            keys: Some(key_filter(base_offset)),
        },
        other => other,
    }
}

fn key_filter(base: i64) -> KeyFilter {
    KeyFilter::from_hashes(vec![key_hash(format!("k{base}").as_bytes())]).unwrap()
}

/// The key filters the database lists at open: (shard, base, filter).
fn filters(db: &S3Db) -> Vec<(u64, i64, KeyFilter)> {
    let mut out = Vec::new();
    db.load(&mut |found| {
        if let Found::Keys(id, base, keys) = found {
            out.push((id, base, keys));
        }
        Ok(())
    })
    .unwrap();
    out
}

fn bytes_of(change: &Change) -> Bytes {
    match change {
        Change::PutBatch { bytes, .. } => bytes.clone(),
        _ => unreachable!(),
    }
}

/// What the database lists at open: catalogue names, batches, groups.
type Listing = (Vec<String>, Vec<(u64, i64)>, Vec<(u64, String, i64)>);

fn listing(db: &S3Db) -> Listing {
    let (mut shards, mut batches, mut groups) = (Vec::new(), Vec::new(), Vec::new());
    db.load(&mut |found| {
        match found {
            Found::Shard(_, meta) => shards.push(meta.name),
            Found::Batch(id, base, _) => batches.push((id, base)),
            Found::Group(id, group, offset) => groups.push((id, group, offset)),
            Found::Keys(..) => {}
        }
        Ok(())
    })
    .unwrap();
    (shards, batches, groups)
}

fn read(db: &S3Db, shard: u64, base: i64, records: u32) -> crate::Result<Bytes> {
    let entry: Entry = BatchEntry::new(0, 0, base, base + records as i64 - 1, base, records);
    db.with_reader(shard, Some(base), |reader: &mut dyn BatchReader| {
        reader.batch(&entry)
    })?
}

fn create(db: &S3Db, shard: u64) {
    let change = Change::PutShard {
        shard,
        meta: meta(&format!("s{shard}")),
    };
    db.commit(vec![change], Durability::Fsync, false).unwrap();
}

fn objects(store: &Faulty) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut names: Vec<String> = rt
        .block_on(futures::TryStreamExt::try_collect::<Vec<_>>(
            store.inner.list(None),
        ))
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    names.sort();
    names
}

fn stat(db: &S3Db, key: &str) -> u64 {
    db.stats().unwrap()[key].as_u64().unwrap()
}

#[test]
fn fsync_appends_are_stored_before_they_return_and_found_again_at_open() {
    let store = Arc::new(Faulty::default());
    let db = open(&store);
    create(&db, 1);
    let batches: Vec<Change> = (0..5).map(|i| put(1, i * 10, 10)).collect();
    let expected: Vec<Bytes> = batches.iter().map(bytes_of).collect();
    for batch in batches {
        assert_eq!(db.commit(vec![batch], Durability::Fsync, false).unwrap(), 0);
    }
    assert_eq!(
        stat(&db, "objects_written"),
        5,
        "one object per blocking commit"
    );
    let group = Change::SaveGroup {
        shard: 1,
        group: "g".into(),
        offset: Some(30),
    };
    db.commit(vec![group], Durability::Fsync, false).unwrap();
    // A second store on the same objects (the first never closed: a crash).
    let again = open(&store);
    let (shards, batches, groups) = listing(&again);
    assert_eq!(shards, ["s1"]);
    assert_eq!(batches, (0..5).map(|i| (1, i * 10)).collect::<Vec<_>>());
    assert_eq!(groups, [(1, "g".to_string(), 30)]);
    for (i, bytes) in expected.iter().enumerate() {
        assert_eq!(&read(&again, 1, i as i64 * 10, 10).unwrap(), bytes);
    }
}

#[test]
fn a_pipelined_window_is_one_object_and_one_manifest_write() {
    let store = Arc::new(Faulty::default());
    let db = open(&store);
    create(&db, 1);
    let manifests = stat(&db, "manifests_written");
    let tickets: Vec<u64> = (0..16)
        .map(|i| {
            db.commit(vec![put(1, i, 1)], Durability::Fsync, true)
                .unwrap()
        })
        .collect();
    assert!(tickets.iter().all(|&t| t != 0));
    assert_eq!(
        stat(&db, "objects_written"),
        0,
        "nothing uploaded before the wait"
    );
    db.wait_synced(*tickets.last().unwrap()).unwrap();
    for ticket in tickets {
        db.wait_synced(ticket).unwrap();
    }
    assert_eq!(stat(&db, "objects_written"), 1);
    assert_eq!(stat(&db, "manifests_written"), manifests + 1);
    assert_eq!(listing(&open(&store)).1.len(), 16);
}

#[test]
fn os_appends_wait_in_memory_are_readable_and_sync_uploads_them() {
    let store = Arc::new(Faulty::default());
    let db = open(&store);
    create(&db, 1);
    let batch = put(1, 0, 5);
    let bytes = bytes_of(&batch);
    assert_eq!(db.commit(vec![batch], Durability::Os, false).unwrap(), 0);
    assert_eq!(stat(&db, "objects_written"), 0);
    assert_eq!(read(&db, 1, 0, 5).unwrap(), bytes, "served from memory");
    assert!(listing(&open(&store)).1.is_empty(), "not stored yet");
    db.sync().unwrap();
    assert_eq!(listing(&open(&store)).1, [(1, 0)]);
    assert_eq!(read(&db, 1, 0, 5).unwrap(), bytes, "now from its object");
}

#[test]
fn a_failing_store_fails_the_append_and_keeps_its_batches_for_the_next_try() {
    let store = Arc::new(Faulty::default());
    let db = open(&store);
    create(&db, 1);
    store.failing_puts.store(1, Ordering::Release);
    let err = db
        .commit(vec![put(1, 0, 1)], Durability::Fsync, false)
        .unwrap_err();
    assert_eq!(err.status(), Status::Io, "{err}");
    assert!(
        err.to_string().contains("503"),
        "the server's message: {err}"
    );
    db.commit(vec![put(1, 1, 1)], Durability::Fsync, false)
        .unwrap();
    let again = open(&store);
    assert_eq!(listing(&again).1, [(1, 0), (1, 1)], "each batch once");
    assert_eq!(read(&again, 1, 0, 1).unwrap(), bytes_of(&put(1, 0, 1)));
}

#[test]
fn a_write_whose_answer_was_lost_is_found_applied_and_not_repeated() {
    let store = Arc::new(Faulty::default());
    let db = open(&store);
    create(&db, 1);
    db.commit(vec![put(1, 0, 1)], Durability::Fsync, false)
        .unwrap();
    // The manifest's PUT (a commit's second) is applied, its answer lost:
    // read back, the manifest shows the write applied.
    store.lose_nth.store(2, Ordering::Release);
    db.commit(vec![put(1, 1, 1)], Durability::Fsync, false)
        .expect("the manifest read back shows the write applied");
    // The object's PUT answer lost: the append fails, its batch waits and
    // is stored once, with the next.
    store.lose_nth.store(1, Ordering::Release);
    let err = db
        .commit(vec![put(1, 2, 1)], Durability::Fsync, false)
        .unwrap_err();
    assert_eq!(err.status(), Status::Io, "{err}");
    db.commit(vec![put(1, 3, 1)], Durability::Fsync, false)
        .unwrap();
    let (_, batches, _) = listing(&open(&store));
    assert_eq!(batches, [(1, 0), (1, 1), (1, 2), (1, 3)], "each batch once");
}

#[test]
fn a_manifest_changed_behind_the_engines_back_is_not_overwritten() {
    let store = Arc::new(Faulty::default());
    let db = open(&store);
    create(&db, 1);
    db.commit(vec![put(1, 0, 1)], Durability::Fsync, false)
        .unwrap();
    let path = Path::from(format!("{PREFIX}/shards/1/manifest"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let foreign = Bytes::from_static(b"someone else's manifest");
    rt.block_on(store.inner.put(&path, foreign.clone().into()))
        .unwrap();
    let err = db
        .commit(vec![put(1, 1, 1)], Durability::Fsync, false)
        .unwrap_err();
    assert_eq!(err.status(), Status::Locked, "{err}");
    assert!(err.to_string().contains("another writer"), "{err}");
    let now = rt
        .block_on(async { store.inner.get(&path).await?.bytes().await })
        .unwrap();
    assert_eq!(now, foreign, "left as found");
    let err = db
        .commit(vec![put(1, 2, 1)], Durability::Os, false)
        .unwrap_err();
    assert_eq!(
        err.status(),
        Status::Locked,
        "the shard takes no more writes"
    );
}

#[test]
fn retention_deletes_whole_objects_and_a_middle_delete_rewrites_one() {
    let store = Arc::new(Faulty::default());
    let db = open(&store);
    create(&db, 1);
    for base in 0..6 {
        db.commit(vec![put(1, base * 10, 10)], Durability::Fsync, false)
            .unwrap();
    }
    assert_eq!(objects(&store).len(), 7, "six objects and the manifest");
    let front = Change::DeleteBatches {
        shard: 1,
        bases: vec![0, 10],
        end: 20,
        front: true,
    };
    db.commit(vec![front], Durability::Fsync, false).unwrap();
    assert_eq!(objects(&store).len(), 5, "two objects deleted");
    // The last two batches go (a truncation): the objects holding them are
    // rewritten without them, here to nothing.
    let tail = Change::DeleteBatches {
        shard: 1,
        bases: vec![40, 50],
        end: 60,
        front: false,
    };
    db.commit(vec![tail], Durability::Fsync, false).unwrap();
    assert_eq!(objects(&store).len(), 3);
    assert_eq!(listing(&open(&store)).1, [(1, 20), (1, 30)]);
    // A rewrite keeps the rest of an object: a window of three batches,
    // then the middle one replaced.
    let tickets: Vec<u64> = (6..9)
        .map(|b| {
            db.commit(vec![put(1, b * 10, 10)], Durability::Fsync, true)
                .unwrap()
        })
        .collect();
    db.wait_synced(tickets[2]).unwrap();
    let replacement = put(1, 70, 10);
    let new_bytes = Bytes::from_static(b"replaced");
    let replacement = match replacement {
        Change::PutBatch {
            shard,
            base_offset,
            mut meta,
            ..
        } => {
            meta.len = new_bytes.len() as u32;
            Change::PutBatch {
                shard,
                base_offset,
                meta,
                bytes: new_bytes.clone(),
                keys: None,
            }
        }
        _ => unreachable!(),
    };
    db.commit(vec![replacement], Durability::Fsync, false)
        .unwrap();
    assert_eq!(stat(&db, "objects_rewritten"), 1);
    let again = open(&store);
    assert_eq!(
        listing(&again).1,
        [(1, 20), (1, 30), (1, 60), (1, 70), (1, 80)]
    );
    assert_eq!(read(&again, 1, 70, 10).unwrap(), new_bytes);
    assert_eq!(read(&again, 1, 80, 10).unwrap(), bytes_of(&put(1, 80, 10)));
}

#[test]
fn a_transfer_plan_fetches_its_batches_when_sent_and_keeps_their_objects_until_dropped() {
    let store = Arc::new(Faulty::default());
    let db = open(&store);
    create(&db, 1);
    let batches: Vec<Change> = (0..3).map(|i| put(1, i * 10, 10)).collect();
    let expected: Vec<u8> = batches.iter().flat_map(|b| bytes_of(b).to_vec()).collect();
    let len = bytes_of(&batches[0]).len() as u64;
    for batch in batches {
        db.commit(vec![batch], Durability::Fsync, false).unwrap();
    }
    let entries: Vec<Entry> = (0..3)
        .map(|i| BatchEntry::new(0, len as usize, i * 10, i * 10 + 9, i * 10, 10))
        .collect();
    let planned: Vec<(&Entry, PlannedBatch)> = entries
        .iter()
        .zip(0u64..)
        .map(|(entry, i)| {
            let batch = PlannedBatch {
                start: i * len,
                len,
                base_offset: entry.base_offset,
            };
            (entry, batch)
        })
        .collect();
    let gets = |db: &S3Db| db.stats().unwrap()["requests"]["gets"].as_u64().unwrap();
    let before = gets(&db);
    let plan = TransferPlan::new(vec![db.plan(1, &planned).unwrap()], 30);
    assert_eq!(gets(&db), before, "planning fetches nothing");
    assert_eq!(plan.total_bytes(), 3 * len);
    // Retention drops the three objects while the plan holds them.
    let front = Change::DeleteBatches {
        shard: 1,
        bases: vec![0, 10, 20],
        end: 30,
        front: true,
    };
    db.commit(vec![front], Durability::Fsync, false).unwrap();
    assert_eq!(objects(&store).len(), 4, "kept for the plan");
    assert_eq!(plan.to_vec().unwrap(), expected);
    assert!(gets(&db) > before, "fetched when read");
    drop(plan);
    db.flush_due();
    assert_eq!(
        objects(&store).len(),
        1,
        "only the manifest once the plan is gone"
    );
    // A plan also outlives its shard's removal.
    create(&db, 2);
    db.commit(vec![put(2, 0, 10)], Durability::Fsync, false)
        .unwrap();
    let entry: Entry = BatchEntry::new(0, len as usize, 0, 9, 0, 10);
    let batch = PlannedBatch {
        start: 0,
        len,
        base_offset: 0,
    };
    let plan = TransferPlan::new(vec![db.plan(2, &[(&entry, batch)]).unwrap()], 10);
    let remove = Change::RemoveShard { shard: 2 };
    db.commit(vec![remove], Durability::Fsync, false).unwrap();
    assert_eq!(plan.to_vec().unwrap(), bytes_of(&put(2, 0, 10)).to_vec());
    drop(plan);
    db.flush_due();
    assert_eq!(
        objects(&store).len(),
        1,
        "shard 2's object goes with its plan"
    );
}

#[test]
fn footers_keep_the_key_filters_also_through_a_rewrite() {
    let store = Arc::new(Faulty::default());
    let db = open(&store);
    create(&db, 1);
    // One object of four batches, the third without a filter.
    let tickets: Vec<u64> = (0..4)
        .map(|i| {
            let batch = match i {
                2 => put(1, i * 10, 10),
                _ => with_key(put(1, i * 10, 10)),
            };
            db.commit(vec![batch], Durability::Fsync, true).unwrap()
        })
        .collect();
    db.wait_synced(tickets[3]).unwrap();
    let expected = |bases: &[i64]| -> Vec<(u64, i64, KeyFilter)> {
        bases.iter().map(|&b| (1, b, key_filter(b))).collect()
    };
    assert_eq!(filters(&open(&store)), expected(&[0, 10, 30]));
    // The object is rewritten without the second batch: the others keep
    // their filters.
    let delete = Change::DeleteBatches {
        shard: 1,
        bases: vec![10],
        end: 20,
        front: false,
    };
    db.commit(vec![delete], Durability::Fsync, false).unwrap();
    assert_eq!(stat(&db, "objects_rewritten"), 1);
    let again = open(&store);
    assert_eq!(filters(&again), expected(&[0, 30]));
    assert_eq!(read(&again, 1, 30, 10).unwrap(), bytes_of(&put(1, 30, 10)));
}

#[test]
fn appends_beyond_the_buffer_upload_before_they_return_and_fail_while_the_store_is_down() {
    let store = Arc::new(Faulty::default());
    let config = S3Config {
        buffer_bytes: 64 << 10,
        ..config()
    };
    let db = open_with(&store, &config);
    create(&db, 1);
    let one = bytes_of(&put(1, 0, 1)).len() as u64;
    let fits = (64 << 10) / one;
    for base in 0..fits as i64 {
        db.commit(vec![put(1, base, 1)], Durability::None, false)
            .unwrap();
    }
    assert_eq!(stat(&db, "objects_written"), 0, "all of it fits the buffer");
    store.failing_puts.store(u32::MAX, Ordering::Release);
    let mut base = fits as i64;
    let err = loop {
        match db.commit(vec![put(1, base, 1)], Durability::None, false) {
            Ok(_) => base += 1,
            Err(e) => break e,
        }
        assert!(base < fits as i64 + 2, "the buffer is bounded");
    };
    assert_eq!(err.status(), Status::Io, "{err}");
    assert!(stat(&db, "buffered_bytes") <= (64 << 10) + 2 * one);
    store.failing_puts.store(0, Ordering::Release);
    db.commit(vec![put(1, base + 1, 1)], Durability::None, false)
        .unwrap();
    assert_eq!(
        stat(&db, "buffered_bytes"),
        0,
        "uploaded once the store is back"
    );
    db.close().unwrap();
    assert_eq!(listing(&open(&store)).1.len() as i64, base + 2);
}

#[test]
fn sequential_reads_fetch_blocks_ahead_and_failed_reads_are_errors() {
    let store = Arc::new(Faulty::default());
    let db = open(&store);
    create(&db, 1);
    let tickets: Vec<u64> = (0..100)
        .map(|b| {
            db.commit(vec![put(1, b, 1)], Durability::Fsync, true)
                .unwrap()
        })
        .collect();
    db.wait_synced(tickets[99]).unwrap();
    let reader = open(&store);
    let _ = listing(&reader);
    let gets = reader.stats().unwrap()["requests"]["gets"]
        .as_u64()
        .unwrap();
    for base in 0..100 {
        assert_eq!(
            read(&reader, 1, base, 1).unwrap(),
            bytes_of(&put(1, base, 1))
        );
    }
    reader.wait_read_ahead();
    let stats = reader.stats().unwrap();
    let reads = stats["requests"]["gets"].as_u64().unwrap() - gets;
    // 100 batches of 600 bytes in 4 KiB blocks: the first miss fetches
    // three blocks, then the background read-ahead two at a time, before
    // the reader gets there.
    assert!(reads <= 8, "{reads} GETs for 15 blocks");
    assert_eq!(stats["cache"]["misses"], 1, "{stats}");
    let cold = open(&store);
    let _ = listing(&cold);
    store.failing_gets.store(1, Ordering::Release);
    let err = read(&cold, 1, 0, 1).unwrap_err();
    assert_eq!(err.status(), Status::Io, "{err}");
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(read(&cold, 1, 0, 1).unwrap(), bytes_of(&put(1, 0, 1)));
}

#[test]
fn a_removed_shard_leaves_no_object_and_unlisted_objects_are_deleted_at_open() {
    let store = Arc::new(Faulty::default());
    let db = open(&store);
    create(&db, 1);
    create(&db, 2);
    db.commit(vec![put(1, 0, 1)], Durability::Fsync, false)
        .unwrap();
    db.commit(vec![put(2, 0, 1)], Durability::Fsync, false)
        .unwrap();
    // An upload whose manifest write never happened (a crash between).
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let orphan = Path::from(format!("{PREFIX}/shards/2/{:020}.obj", 99));
    rt.block_on(store.inner.put(&orphan, Bytes::from_static(b"x").into()))
        .unwrap();
    db.commit(
        vec![Change::RemoveShard { shard: 1 }],
        Durability::Fsync,
        false,
    )
    .unwrap();
    assert!(objects(&store).iter().all(|o| !o.contains("shards/1/")));
    let again = open(&store);
    assert_eq!(listing(&again).0, ["s2"]);
    assert!(!objects(&store).contains(&orphan.to_string()));
}

#[test]
fn a_failed_creation_is_forgotten_and_a_name_left_twice_keeps_its_newest_shard() {
    let store = Arc::new(Faulty::default());
    let db = open(&store);
    store.failing_puts.store(1, Ordering::Release);
    let change = Change::PutShard {
        shard: 1,
        meta: meta("x"),
    };
    let err = db
        .commit(vec![change], Durability::Fsync, false)
        .unwrap_err();
    assert_eq!(err.status(), Status::Io, "{err}");
    assert_eq!(stat(&db, "shards"), 0, "forgotten");
    // The PUT applied, its answer and the read-back lost: unknown, so
    // forgotten and its manifest deleted.
    store.lose_nth.store(1, Ordering::Release);
    store.failing_gets.store(1, Ordering::Release);
    let change = Change::PutShard {
        shard: 2,
        meta: meta("x"),
    };
    assert!(db.commit(vec![change], Durability::Fsync, false).is_err());
    db.close().unwrap();
    assert!(objects(&store).is_empty(), "{:?}", objects(&store));
    // A manifest such a creation left behind (the store was down when it
    // was to be deleted), and the name created again since.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let stale = Path::from(format!("{PREFIX}/shards/3/manifest"));
    let encoded = super::manifest::Manifest::new(meta("x")).encode();
    rt.block_on(store.inner.put(&stale, encoded.into()))
        .unwrap();
    let db = open(&store);
    create(&db, 4);
    let renamed = Change::PutShard {
        shard: 4,
        meta: meta("x"),
    };
    db.commit(vec![renamed], Durability::Fsync, false).unwrap();
    let again = open(&store);
    let mut ids = Vec::new();
    again
        .load(&mut |found| {
            if let Found::Shard(id, meta) = found {
                ids.push((id, meta.name));
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(ids, [(4, "x".to_string())]);
    assert!(!objects(&store).contains(&stale.to_string()));
}

/// One object per fsync append leaves many small objects: the background
/// flusher merges a run of neighbours into one that is no longer small.
/// A merge that fails changes nothing and is tried again; a merged object
/// is not merged again; every batch and its key filter read back the same,
/// also after a reopen.
#[test]
fn the_flusher_merges_neighbouring_small_objects() {
    let store = Arc::new(Faulty::default());
    let db = open_without_flusher(&store, &config());
    create(&db, 1);
    let batch = |i: i64| with_key(put(1, i * 10, 10));
    for i in 0..70 {
        db.commit(vec![batch(i)], Durability::Fsync, false).unwrap();
    }
    assert_eq!(objects(&store).len(), 71, "70 objects and the manifest");

    store.failing_puts.store(1, Ordering::SeqCst);
    db.flush_due();
    assert_eq!(stat(&db, "objects_merged"), 0);
    assert_eq!(objects(&store).len(), 71);
    db.flush_due();
    assert_eq!(stat(&db, "objects_merged"), 1);
    let left = objects(&store).len();
    assert!(left < 20, "{left} objects");
    db.flush_due();
    assert_eq!(stat(&db, "objects_merged"), 1, "the rest is too small");
    assert_eq!(objects(&store).len(), left);

    let check = |db: &S3Db| {
        let bases: Vec<(u64, i64)> = (0..70).map(|i| (1, i * 10)).collect();
        assert_eq!(listing(db).1, bases);
        let keys: Vec<(u64, i64, KeyFilter)> =
            (0..70).map(|i| (1, i * 10, key_filter(i * 10))).collect();
        assert_eq!(filters(db), keys);
        for i in 0..70 {
            assert_eq!(read(db, 1, i * 10, 10).unwrap(), bytes_of(&batch(i)));
        }
    };
    check(&db);
    check(&open_without_flusher(&store, &config()));
}
