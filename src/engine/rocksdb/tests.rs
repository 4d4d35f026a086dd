//! Unit tests of the RocksDB engine: what each change writes, in how many
//! WriteBatches, and how a locked or damaged database is reported.

use std::collections::BTreeSet;
use std::path::Path;

use ::rocksdb::{ReadOptions, DB};

use super::keys;
use super::*;
use crate::config::Config;
use crate::engine::database::{BatchMeta, ShardMeta};
use crate::engine::Engine;
use crate::record::Record;
use crate::{Status, Store};

const CONFIG: &str = "[shard]\nengine = \"rocksdb\"\ndurability = \"os\"\n";

fn open_store(dir: &Path) -> Store {
    Store::open(dir, Config::from_toml_str(CONFIG).unwrap()).unwrap()
}

/// Every key of a column family (total order: all shards).
fn keys_of(db: &DB, family: &str) -> Vec<Vec<u8>> {
    let mut options = ReadOptions::default();
    options.set_total_order_seek(true);
    let mut iter = db.raw_iterator_cf_opt(cf(db, family).unwrap(), options);
    iter.seek_to_first();
    let mut out = Vec::new();
    while let Some(key) = iter.key() {
        out.push(key.to_vec());
        iter.next();
    }
    iter.status().unwrap();
    out
}

/// The catalogue entry of shard `id`, if any.
fn meta_of(db: &DB, id: u64) -> Option<ShardMeta> {
    let value = db
        .get_cf(cf(db, CF_SHARDS).unwrap(), keys::shard_prefix(id))
        .unwrap()?;
    Some(ShardMeta::decode(id, &value).unwrap())
}

/// The RocksDB writes the store made so far.
fn writes(store: &Store, shard: &str) -> u64 {
    let stats = store.shard_stats(shard).unwrap();
    stats["engine_stats"]["rocksdb"]["writes"].as_u64().unwrap()
}

fn append(store: &Store, shard: &str, values: &[&str]) -> i64 {
    let records: Vec<Record<'_>> = values
        .iter()
        .map(|v| Record::new(v.as_bytes()).with_key(v.as_bytes()))
        .collect();
    store.append_batch(shard, &records).unwrap()
}

/// Reopens the store's database on its own (the store closed) to look at
/// what it holds.
fn raw(dir: &Path) -> DB {
    let path = dir.join(ROCKSDB_DIR);
    let families = DB::list_cf(&::rocksdb::Options::default(), &path).unwrap();
    DB::open_cf(&::rocksdb::Options::default(), &path, families).unwrap()
}

/// The batches and index column families hold the same keys, and the
/// index records describe the stored batches.
fn assert_consistent(db: &DB) {
    let batches = keys_of(db, CF_BATCHES);
    assert_eq!(batches, keys_of(db, CF_INDEX));
    for key in &batches {
        let bytes = db
            .get_cf(cf(db, CF_BATCHES).unwrap(), key)
            .unwrap()
            .unwrap();
        let value = db.get_cf(cf(db, CF_INDEX).unwrap(), key).unwrap().unwrap();
        let value = BatchMeta::decode(&value).unwrap();
        let header = crate::format::BatchHeader::parse(&bytes).unwrap();
        let (_, base) = keys::parse_batch_key(key).unwrap();
        assert_eq!(header.base_offset, base);
        assert_eq!(value.len as usize, bytes.len());
        assert_eq!(value.records as i32, header.record_count);
        assert_eq!(value.last_offset, base + header.last_offset_delta as i64);
    }
}

/// Each change of a shard is one WriteBatch holding the data and the
/// catalogue entry describing it (an append's retention included: the
/// dropped batches and the raised watermark go in the append's write).
#[test]
fn every_change_is_one_write_batch_with_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    store
        .create_shard("s", Some("retention_records = 6"))
        .unwrap();
    store.create_shard("other", None).unwrap();
    append(&store, "other", &["x"]);
    let w = writes(&store, "s");
    append(&store, "s", &["a", "b", "c"]);
    append(&store, "s", &["d", "e"]);
    assert_eq!(writes(&store, "s"), w + 2, "one write per append");
    append(&store, "s", &["f", "g"]);
    assert_eq!(writes(&store, "s"), w + 3, "the append with its retention");
    assert_eq!(store.shard_info("s").unwrap().first_offset, 3);
    let w = writes(&store, "s");
    assert_eq!(store.delete_records_before("s", 4).unwrap(), 4);
    assert_eq!(store.delete_by_keys("s", &[b"f", b"g"]).unwrap(), 2);
    assert_eq!(writes(&store, "s"), w + 2, "one write per delete");
    store.close().unwrap();

    let db = raw(dir.path());
    assert_consistent(&db);
    // Shard ids count from 1 in creation order.
    let meta = meta_of(&db, 1).unwrap();
    assert_eq!(meta.name, "s");
    assert_eq!((meta.low_watermark, meta.next_offset), (4, 7));
    let shard_keys: Vec<(u64, i64)> = keys_of(&db, CF_BATCHES)
        .iter()
        .map(|k| keys::parse_batch_key(k).unwrap())
        .collect();
    // "d e" cut to "e" at its old key; "f g" gone; "other" untouched.
    assert_eq!(shard_keys, [(1, 3), (2, 0)]);
    drop(db);

    let store = open_store(dir.path());
    let info = store.shard_info("s").unwrap();
    assert_eq!(
        (info.first_offset, info.next_offset, info.records),
        (4, 7, 1)
    );
    let w = writes(&store, "s");
    store.delete_shard("s").unwrap();
    assert_eq!(writes(&store, "other"), w + 1, "deletion is one write");
    store.close().unwrap();
    let db = raw(dir.path());
    assert_eq!(meta_of(&db, 1), None);
    let left: BTreeSet<u64> = keys_of(&db, CF_INDEX)
        .iter()
        .map(|k| keys::parse_batch_key(k).unwrap().0)
        .collect();
    assert_eq!(left, BTreeSet::from([2]));
    assert_consistent(&db);
}

/// Opening reads the index records only: a batch missing behind its
/// index record shows up as corruption when read, not as a crash or a
/// silent gap.
#[test]
fn a_batch_missing_behind_its_index_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    store.create_shard("s", None).unwrap();
    append(&store, "s", &["a"]);
    append(&store, "s", &["b"]);
    store.close().unwrap();
    let db = raw(dir.path());
    db.delete_cf(cf(&db, CF_BATCHES).unwrap(), keys::batch_key(1, 1))
        .unwrap();
    drop(db);
    let store = open_store(dir.path());
    let err = store.read("s", 0, 10, 1 << 20).unwrap_err();
    assert_eq!(err.status(), Status::Corruption, "{err}");
    assert!(err.to_string().contains("offset 1 of shard id 1"), "{err}");
    assert_eq!(store.read("s", 0, 1, 1 << 20).unwrap().records.len(), 1);
}

/// Damage to the engine's own records refuses the open, naming it.
#[test]
fn damaged_catalogue_or_index_refuses_to_open() {
    type Damage = fn(&DB);
    let damages: [(&str, Damage); 3] = [
        ("catalogue entry of shard id 1", |db| {
            let family = cf(db, CF_SHARDS).unwrap();
            db.put_cf(family, keys::shard_prefix(1), b"\x01short")
                .unwrap();
        }),
        ("its shard has no catalogue entry", |db| {
            let value = BatchMeta {
                last_offset: 0,
                max_timestamp: 0,
                records: 1,
                len: 70,
            };
            let family = cf(db, CF_INDEX).unwrap();
            db.put_cf(family, keys::batch_key(9, 0), value.encode())
                .unwrap();
        }),
        ("malformed value", |db| {
            let family = cf(db, CF_INDEX).unwrap();
            db.put_cf(family, keys::batch_key(1, 0), b"?").unwrap();
        }),
    ];
    for (what, damage) in damages {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        store.create_shard("s", None).unwrap();
        append(&store, "s", &["a"]);
        store.close().unwrap();
        damage(&raw(dir.path()));
        let err = Store::open(dir.path(), Config::from_toml_str(CONFIG).unwrap()).unwrap_err();
        assert_eq!(err.status(), Status::Corruption, "{err}");
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
}

/// RocksDB's own files: a damaged CURRENT file refuses the open with
/// `Corruption`, a damaged SST block fails the read that meets it.
#[test]
fn damaged_rocksdb_files_are_errors_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    // `none` shards are flushed to SST files by a clean close.
    store
        .create_shard("s", Some("durability = \"none\""))
        .unwrap();
    let value = "v".repeat(10_000);
    for _ in 0..20 {
        append(&store, "s", &[&value]);
    }
    store.close().unwrap();
    let db_dir = dir.path().join(ROCKSDB_DIR);
    let ssts: Vec<_> = std::fs::read_dir(&db_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .collect();
    let biggest = ssts
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(biggest).unwrap();
    assert!(bytes.len() > 100_000, "the batches are in this SST");
    for b in &mut bytes[50_000..50_100] {
        *b ^= 0x5a;
    }
    std::fs::write(biggest, bytes).unwrap();
    let store = open_store(dir.path());
    let err = store.read("s", 0, 100, usize::MAX).unwrap_err();
    assert_eq!(err.status(), Status::Corruption, "{err}");
    store.close().unwrap();

    std::fs::write(db_dir.join("CURRENT"), b"MANIFEST-garbage").unwrap();
    let err = Store::open(dir.path(), Config::from_toml_str(CONFIG).unwrap()).unwrap_err();
    assert_eq!(err.status(), Status::Corruption, "{err}");
    assert!(err.to_string().contains("rocksdb"), "{err}");
}

/// A database directory opened by someone else (here a second engine in
/// this process; tests/rocksdb_errors.rs uses another process) is
/// `Locked`, naming the directory.
#[test]
fn a_locked_database_is_reported_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    store.create_shard("s", None).unwrap();
    let other = RocksdbEngine::new(RocksConnect {
        dir: dir.path().join(ROCKSDB_DIR),
        config: RocksdbConfig::default(),
        read_only: false,
    });
    let err = other.recover().err().expect("the database is open");
    assert_eq!(err.status(), Status::Locked, "{err}");
    assert!(err.to_string().contains("rocksdb"), "{err}");
    store.close().unwrap();
    assert_eq!(other.recover().unwrap().len(), 1, "free once closed");
    other.close().unwrap();
}

/// Group offsets of RocksDB shards live in the `groups` column family,
/// written as durable as the shard's appends, not in `groups.json`; they
/// survive a reopen, and go with their group or their shard.
#[test]
fn group_offsets_live_in_their_column_family() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    store.create_shard("s", None).unwrap();
    store.create_shard("t", None).unwrap();
    store.commit_offset("g", "s", 5).unwrap();
    store.commit_offset("g", "t", 6).unwrap();
    store.commit_offset("h", "s", 7).unwrap();
    store.commit_offset("h", "s", 8).unwrap();
    let groups_json = dir.path().join("groups.json");
    assert!(!groups_json.exists(), "nothing for groups.json to hold");
    store.close().unwrap();
    let db = raw(dir.path());
    let saved: Vec<(u64, String)> = keys_of(&db, CF_GROUPS)
        .iter()
        .map(|k| keys::parse_group_key(k).unwrap())
        .collect();
    assert_eq!(saved, [(1, "g".into()), (1, "h".into()), (2, "g".into())]);
    drop(db);

    let store = open_store(dir.path());
    assert_eq!(store.committed_offset("g", "s").unwrap(), Some(5));
    assert_eq!(store.committed_offset("h", "s").unwrap(), Some(8));
    assert_eq!(store.committed_offset("g", "t").unwrap(), Some(6));
    assert_eq!(store.delete_group("g").unwrap(), 2);
    store.delete_shard("s").unwrap();
    store.create_shard("s", None).unwrap();
    store.close().unwrap();
    let db = raw(dir.path());
    assert!(keys_of(&db, CF_GROUPS).is_empty());
    drop(db);
    let store = open_store(dir.path());
    assert_eq!(store.committed_offset("h", "s").unwrap(), None);
    assert_eq!(store.committed_offset("g", "t").unwrap(), None);
    store.close().unwrap();
}

/// A plan reads from a snapshot: what deletes, retention and a shard's
/// removal do after planning changes nothing it sends, and a plan held
/// across the close is read into memory and stays valid.
#[test]
fn plans_send_what_was_planned() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    store.create_shard("s", None).unwrap();
    for i in 0..10 {
        let value = format!("{i}").repeat(3000);
        append(&store, "s", &[&value, &value]);
    }
    let whole = store.plan_transfer("s", 3, usize::MAX).unwrap();
    assert_eq!(whole.next_offset(), 20);
    let expected = whole.to_vec().unwrap();
    let mut held = store.plan_transfer("s", 3, usize::MAX).unwrap();
    let mut kept = store.plan_transfer("s", 3, usize::MAX).unwrap();
    store.delete_records_before("s", 12).unwrap();
    store.delete_by_offsets("s", &[15]).unwrap();
    assert_eq!(held.to_vec().unwrap(), expected);
    let mut head = vec![0u8; 1000];
    assert_eq!(kept.read_into(&mut head).unwrap(), 1000);
    store.delete_shard("s").unwrap();
    store.close().unwrap();
    let mut rest = vec![0u8; expected.len()];
    let n = kept.read_into(&mut rest).unwrap();
    assert_eq!([&head[..], &rest[..n]].concat(), expected);
    let mut all = vec![0u8; expected.len() + 1];
    assert_eq!(held.read_into(&mut all).unwrap(), expected.len());
    assert_eq!(&all[..expected.len()], &expected[..]);
}
