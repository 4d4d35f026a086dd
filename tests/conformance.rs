//! The engine conformance suite: behaviour every engine must show through the
//! Store API. Each engine instantiates the whole suite with
//! `conformance_suite!(module_name, "engine name")`.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use mqstore::format::{
    decode_batch, encode_batch, split_batches, ATTRIBUTES_OFFSET, BASE_OFFSET_OFFSET,
    BASE_SEQUENCE_OFFSET, CRC_OFFSET, PRODUCER_EPOCH_OFFSET, PRODUCER_ID_OFFSET,
};
use mqstore::{Compression, Config, Header, Record, Status, Store, TransferPlan};

/// A store in a fresh temporary directory, whose default engine is `engine`.
pub struct Fixture {
    pub store: Store,
    _dir: tempfile::TempDir,
}

pub fn open(engine: &str, extra: &str) -> Fixture {
    if let Some(var) = server_url_var(engine) {
        assert!(
            std::env::var_os(var).is_some(),
            "the {engine} engine's suite needs its test server: run it through \
             `make test-rust` or `scripts/with-servers.sh cargo test` ({var} is not set)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_str(&engine_toml(engine, extra)).unwrap();
    let store = Store::open(dir.path(), config).unwrap();
    Fixture { store, _dir: dir }
}

/// The store's configuration: `engine` the default, then `extra`. The
/// hybrid engine moves everything to its cold tier as soon as it can
/// (every millisecond), so the suite runs while data moves between tiers.
fn engine_toml(engine: &str, extra: &str) -> String {
    let tiering = match engine {
        "hybrid" => "\n[hybrid]\nhot_duration_ms = 0\ntier_interval_ms = 1\n",
        _ => "",
    };
    format!("[shard]\nengine = \"{engine}\"\n{extra}{tiering}")
}

/// The variable naming the test server of a server engine.
fn server_url_var(engine: &str) -> Option<&'static str> {
    match engine {
        "mysql" => Some("MQS_MYSQL_URL"),
        "redis" => Some("MQS_REDIS_URL"),
        "s3" | "hybrid" => Some("MQS_TEST_S3_ENDPOINT"),
        _ => None,
    }
}

impl Fixture {
    /// Closes the store and opens its directory again (a clean restart).
    pub fn reopen(self, engine: &str, extra: &str) -> Fixture {
        self.store.close().unwrap();
        let config = Config::from_toml_str(&engine_toml(engine, extra)).unwrap();
        let store = Store::open(self._dir.path(), config).unwrap();
        Fixture {
            store,
            _dir: self._dir,
        }
    }
}

pub fn drain(mut stream: UnixStream) -> Vec<u8> {
    let mut got = Vec::new();
    stream.read_to_end(&mut got).unwrap();
    got
}

pub fn values(n: usize, prefix: &str) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{prefix}-{i}").into_bytes())
        .collect()
}

pub fn append_values(store: &Store, shard: &str, values: &[Vec<u8>]) -> i64 {
    let records: Vec<Record<'_>> = values.iter().map(|v| Record::new(v)).collect();
    store.append_batch(shard, &records).unwrap()
}

/// What a socket receives when the rest of `plan` is sent to it.
pub fn send_rest(plan: &mut TransferPlan) -> Vec<u8> {
    let (a, b) = UnixStream::pair().unwrap();
    let reader = std::thread::spawn(move || drain(b));
    plan.send_all_to_fd(a.as_raw_fd()).unwrap();
    drop(a);
    reader.join().unwrap()
}

/// The rest of `plan`, read into a buffer of `size` bytes at a time.
pub fn read_rest(plan: &mut TransferPlan, size: usize) -> Vec<u8> {
    let mut buf = vec![0u8; size];
    let mut out = Vec::new();
    loop {
        let n = plan.read_into(&mut buf).unwrap();
        if n == 0 {
            return out;
        }
        assert!(n == size || plan.is_complete(), "short only at the end");
        out.extend_from_slice(&buf[..n]);
    }
}

/// The offsets of every record in a stream of whole batches.
pub fn stream_offsets(stream: Vec<u8>) -> Vec<i64> {
    let batches = split_batches(&stream.into()).unwrap();
    let mut offsets = Vec::new();
    for batch in &batches {
        for record in decode_batch(batch, true).unwrap() {
            offsets.push(record.offset);
        }
    }
    offsets
}

/// A batch as a producer sends it: `values` encoded with `codec`, with
/// producer id 7, epoch 0 and base sequence `sequence`, base offset 0.
pub fn producer_batch(values: &[&[u8]], codec: Compression, sequence: i32) -> Vec<u8> {
    let records: Vec<Record<'_>> = values
        .iter()
        .map(|v| Record::new(v).with_key(b"k"))
        .collect();
    let mut b = encode_batch(&records, codec, 1_700_000_000_000)
        .unwrap()
        .bytes;
    b[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8].copy_from_slice(&7i64.to_be_bytes());
    b[PRODUCER_EPOCH_OFFSET..PRODUCER_EPOCH_OFFSET + 2].copy_from_slice(&0i16.to_be_bytes());
    b[BASE_SEQUENCE_OFFSET..BASE_SEQUENCE_OFFSET + 4].copy_from_slice(&sequence.to_be_bytes());
    let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
    b[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
    b
}

macro_rules! conformance_suite {
    ($module:ident, $engine:expr) => {
        mod $module {
            use super::*;

            const ENGINE: &str = $engine;

            /// Appends carry the leader epoch the broker set; a replica's
            /// batches keep the one their leader wrote.
            #[test]
            fn appends_carry_the_partition_leader_epoch() {
                use mqstore::format::PARTITION_LEADER_EPOCH_OFFSET as AT;
                let epoch_of =
                    |batch: &[u8]| i32::from_be_bytes(batch[AT..AT + 4].try_into().unwrap());
                let f = open(ENGINE, "");
                f.store.create_shard("s", None).unwrap();
                append_values(&f.store, "s", &values(2, "before"));
                assert_eq!(f.store.leader_epoch("s").unwrap(), None);
                f.store.set_leader_epoch("s", 5).unwrap();
                append_values(&f.store, "s", &values(2, "leader"));
                let raw = producer_batch(&[b"p"], Compression::None, 0);
                f.store.append_raw("s", &raw).unwrap();
                let low = f.store.set_leader_epoch("s", 4).unwrap_err();
                assert_eq!(low.status(), Status::InvalidArgument, "{low}");
                assert!(
                    low.to_string().contains("older than the current 5"),
                    "{low}"
                );
                let negative = f.store.set_leader_epoch("s", -1).unwrap_err();
                assert_eq!(negative.status(), Status::InvalidArgument);
                let missing = f.store.set_leader_epoch("nope", 1).unwrap_err();
                assert_eq!(missing.status(), Status::ShardNotFound);
                f.store.set_leader_epoch("s", 7).unwrap();
                f.store
                    .append_batch_nowait("s", &[Record::new(b"n")])
                    .unwrap();

                let mut plan = f.store.plan_transfer("s", 0, usize::MAX).unwrap();
                let stream = send_rest(&mut plan);
                let batches = split_batches(&stream.clone().into()).unwrap();
                let epochs: Vec<i32> = batches.iter().map(|b| epoch_of(b)).collect();
                assert_eq!(epochs, [-1, 5, 5, 7]);
                for batch in &batches {
                    mqstore::format::verify_crc(batch).unwrap();
                }
                // A follower stores the leader's batches with their epochs.
                f.store.create_shard("follower", None).unwrap();
                f.store.set_leader_epoch("follower", 9).unwrap();
                f.store.append_replica("follower", &stream).unwrap();
                let mut plan = f.store.plan_transfer("follower", 0, usize::MAX).unwrap();
                assert_eq!(send_rest(&mut plan), stream);
            }

            /// Shards created together: all or none (a name taken or
            /// given twice creates nothing), each usable, and all there
            /// after a restart.
            #[test]
            fn shards_created_together_are_all_or_none() {
                let f = open(ENGINE, "");
                f.store.create_shard("taken", None).unwrap();
                let names: Vec<String> = (0..500).map(|i| format!("p-{i}")).collect();
                let mut refs: Vec<&str> = names.iter().map(String::as_str).collect();
                refs.push("taken");
                let err = f.store.create_shards(&refs, None).unwrap_err();
                assert_eq!(err.status(), Status::ShardExists);
                assert!(err.to_string().contains("taken"), "{err}");
                refs.pop();
                refs.push("p-7");
                let err = f.store.create_shards(&refs, None).unwrap_err();
                assert_eq!(err.status(), Status::InvalidArgument);
                assert!(err.to_string().contains("'p-7' is given twice"), "{err}");
                refs.pop();
                let bad = f.store.create_shards(&["ok", ""], None).unwrap_err();
                assert_eq!(bad.status(), Status::InvalidArgument);
                assert_eq!(f.store.list_shards().unwrap(), ["taken"]);
                f.store
                    .create_shards(&refs, Some("retention_records = 5"))
                    .unwrap();
                f.store.create_shards(&[], None).unwrap();
                assert_eq!(f.store.list_shards().unwrap().len(), 501);
                append_values(&f.store, "p-499", &values(3, "v"));
                assert_eq!(
                    f.store.shard_info("p-3").unwrap().options.retention_records,
                    5
                );
                if ENGINE == "memory" {
                    return;
                }
                let f = f.reopen(ENGINE, "");
                assert_eq!(f.store.list_shards().unwrap().len(), 501);
                assert_eq!(f.store.shard_info("p-499").unwrap().next_offset, 3);
                assert_eq!(
                    f.store.shard_info("p-0").unwrap().options.retention_records,
                    5
                );
            }

            /// A follower's diverged tail cut at a batch boundary: the
            /// shard ends there (reads, transfers, the next append), the
            /// cut producer sequences may be sent again, and the cut
            /// survives a restart.
            #[test]
            fn truncate_to_cuts_whole_batches_and_producer_state() {
                let f = open(ENGINE, "");
                f.store.create_shard("s", None).unwrap();
                for i in 0..3 {
                    append_values(&f.store, "s", &values(4, &format!("b{i}")));
                }
                let first = producer_batch(&[b"p0", b"p1"], Compression::None, 0);
                assert_eq!(f.store.append_raw("s", &first).unwrap(), [12]);
                let second = producer_batch(&[b"p2"], Compression::None, 2);
                assert_eq!(f.store.append_raw("s", &second).unwrap(), [14]);

                let inside = f.store.truncate_to("s", 5).unwrap_err();
                assert_eq!(inside.status(), Status::InvalidArgument, "{inside}");
                assert!(inside.to_string().contains("4..=7"), "{inside}");
                let beyond = f.store.truncate_to("s", 16).unwrap_err();
                assert_eq!(beyond.status(), Status::OffsetOutOfRange, "{beyond}");
                let missing = f.store.truncate_to("nope", 0).unwrap_err();
                assert_eq!(missing.status(), Status::ShardNotFound);
                f.store.truncate_to("s", 15).unwrap(); // the end: nothing to cut

                // Cut the second producer batch: its sequence is free again,
                // while the first one's retry is still a duplicate.
                f.store.truncate_to("s", 14).unwrap();
                assert_eq!(f.store.shard_info("s").unwrap().next_offset, 14);
                let retry = f.store.append_raw("s", &first).unwrap_err();
                assert_eq!(retry.status(), Status::DuplicateSequence);
                assert_eq!(f.store.append_raw("s", &second).unwrap(), [14]);

                // Cut both producer batches and one of ours.
                f.store.truncate_to("s", 8).unwrap();
                let info = f.store.shard_info("s").unwrap();
                assert_eq!(
                    (info.first_offset, info.next_offset, info.records),
                    (0, 8, 8)
                );
                let read = f.store.read("s", 0, 100, usize::MAX).unwrap();
                assert_eq!(read.records.len(), 8);
                assert_eq!(read.records[7].value_bytes(), b"b1-3");
                let mut plan = f.store.plan_transfer("s", 0, usize::MAX).unwrap();
                assert_eq!(plan.next_offset(), 8);
                assert_eq!(
                    stream_offsets(send_rest(&mut plan)),
                    (0..8).collect::<Vec<_>>()
                );
                assert_eq!(f.store.append_raw("s", &first).unwrap(), [8]);
                assert_eq!(append_values(&f.store, "s", &values(2, "after")), 10);

                let f = f.reopen(ENGINE, "");
                if ENGINE == "memory" {
                    return;
                }
                let read = f.store.read("s", 0, 100, usize::MAX).unwrap();
                let got: Vec<&[u8]> = read.records.iter().map(|r| r.value_bytes()).collect();
                assert_eq!(got.len(), 12);
                assert_eq!(
                    &got[7..],
                    &[&b"b1-3"[..], b"p0", b"p1", b"after-0", b"after-1"]
                );
                assert_eq!(f.store.shard_info("s").unwrap().next_offset, 12);
                // After the restart the producer's state still ends at the
                // batch stored after the cut.
                let retry = f.store.append_raw("s", &first).unwrap_err();
                assert_eq!(retry.status(), Status::DuplicateSequence);
                assert_eq!(f.store.append_raw("s", &second).unwrap(), [12]);
                f.store.truncate_to("s", 0).unwrap();
                let f = f.reopen(ENGINE, "");
                let info = f.store.shard_info("s").unwrap();
                assert_eq!((info.next_offset, info.records), (0, 0));
                assert_eq!(append_values(&f.store, "s", &values(1, "again")), 0);
            }

            #[test]
            fn producer_batches_are_stored_byte_for_byte_at_consecutive_offsets() {
                let f = open(ENGINE, "");
                f.store.create_shard("s", None).unwrap();
                append_values(&f.store, "s", &values(2, "before"));
                let sent: Vec<Vec<u8>> = mqstore::format::ALL_CODECS
                    .into_iter()
                    .filter(|c| c.is_available())
                    .enumerate()
                    .map(|(i, codec)| producer_batch(&[b"x", b"yy", b"zzz"], codec, 3 * i as i32))
                    .collect();
                let request = sent.concat();
                let bases = f.store.append_raw("s", &request).unwrap();
                let expected: Vec<i64> = (0..sent.len() as i64).map(|i| 2 + 3 * i).collect();
                assert_eq!(bases, expected);
                assert_eq!(
                    append_values(&f.store, "s", &values(1, "after")),
                    bases[bases.len() - 1] + 3
                );
                // What a consumer receives is what the producer sent, but for
                // the base offset.
                let mut plan = f.store.plan_transfer("s", 2, usize::MAX).unwrap();
                let stream = send_rest(&mut plan);
                let stored = split_batches(&stream.into()).unwrap();
                assert_eq!(stored.len(), sent.len() + 1);
                for ((stored, sent), base) in stored.iter().zip(&sent).zip(&bases) {
                    let mut expected = sent.clone();
                    expected[BASE_OFFSET_OFFSET..BASE_OFFSET_OFFSET + 8]
                        .copy_from_slice(&base.to_be_bytes());
                    assert_eq!(stored.as_ref(), &expected[..]);
                }
                let read = f.store.read("s", 2, 100, usize::MAX).unwrap();
                let got: Vec<&[u8]> = read.records.iter().map(|r| r.value_bytes()).collect();
                assert_eq!(&got[..3], &[&b"x"[..], b"yy", b"zzz"]);
                let keyed = f.store.read_by_keys("s", &[b"k"], 1000).unwrap();
                assert_eq!(keyed.len(), 3 * sent.len());
            }

            #[test]
            fn a_request_with_one_bad_batch_stores_nothing() {
                let f = open(ENGINE, "");
                f.store.create_shard("s", None).unwrap();
                let good = producer_batch(&[b"a"], Compression::None, 0);
                let mut bad = producer_batch(&[b"b"], Compression::None, 1);
                let last = bad.len() - 1;
                bad[last] ^= 0x40;
                let err = f
                    .store
                    .append_raw("s", &[good.clone(), bad].concat())
                    .unwrap_err();
                assert_eq!(err.status(), Status::Corruption, "{err}");
                assert!(err.to_string().contains("batch 1"), "{err}");
                let err = f.store.append_raw("s", &[]).unwrap_err();
                assert_eq!(err.status(), Status::InvalidArgument, "{err}");
                let info = f.store.shard_info("s").unwrap();
                assert_eq!((info.next_offset, info.records), (0, 0));
                let err = f.store.append_raw("nope", &good).unwrap_err();
                assert_eq!(err.status(), Status::ShardNotFound);
                // Pipelined: the acknowledgement comes from wait_durable.
                let next = producer_batch(&[b"c"], Compression::None, 1);
                let bases = f
                    .store
                    .append_raw_nowait("s", &[good, next].concat())
                    .unwrap();
                assert_eq!(bases, vec![0, 1]);
                f.store.wait_durable("s", 1).unwrap();
            }

            #[test]
            fn log_append_time_replaces_the_timestamps_of_every_append() {
                let f = open(ENGINE, "timestamp_type = \"log_append_time\"\n");
                f.store.create_shard("s", None).unwrap();
                let before = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64;
                let old = Record {
                    timestamp_ms: 1_000,
                    ..Record::new(b"record api")
                };
                f.store.append("s", &old).unwrap();
                f.store
                    .append_raw("s", &producer_batch(&[b"raw"], Compression::Lz4, 0))
                    .unwrap();
                let read = f.store.read("s", 0, 10, usize::MAX).unwrap();
                assert_eq!(read.records.len(), 2);
                assert!(read.records.iter().all(|r| r.timestamp_ms >= before));
                // What consumers receive says LogAppendTime, with a valid CRC.
                let mut plan = f.store.plan_transfer("s", 0, usize::MAX).unwrap();
                for batch in split_batches(&send_rest(&mut plan).into()).unwrap() {
                    let header = mqstore::format::BatchHeader::parse(&batch).unwrap();
                    assert!(header.is_log_append_time());
                    assert!(header.max_timestamp >= before);
                    decode_batch(&batch, true).unwrap();
                }
                assert_eq!(f.store.offset_for_timestamp("s", before).unwrap(), Some(0));
                let info = f.store.shard_info("s").unwrap();
                assert_eq!(
                    info.options.timestamp_type,
                    mqstore::TimestampType::LogAppendTime
                );
            }

            #[test]
            fn a_follower_holds_its_leaders_bytes_at_the_same_offsets() {
                let leader = open(ENGINE, "");
                let follower = open(ENGINE, "");
                leader.store.create_shard("s", None).unwrap();
                follower.store.create_shard("s", None).unwrap();
                append_values(&leader.store, "s", &values(5, "a"));
                leader
                    .store
                    .append_raw("s", &producer_batch(&[b"p0", b"p1"], Compression::Lz4, 0))
                    .unwrap();
                append_values(&leader.store, "s", &values(3, "b"));
                // The follower pulls from its end, in two fetches.
                let pull = |from: i64, max: usize| {
                    let mut plan = leader.store.plan_transfer("s", from, max).unwrap();
                    send_rest(&mut plan)
                };
                let first = pull(0, 1);
                assert_eq!(follower.store.append_replica("s", &first).unwrap(), 5);
                let rest = pull(5, usize::MAX);
                assert_eq!(follower.store.append_replica("s", &rest).unwrap(), 10);
                assert_eq!(pull(0, usize::MAX), {
                    let mut plan = follower.store.plan_transfer("s", 0, usize::MAX).unwrap();
                    send_rest(&mut plan)
                });
                // A gap or an overlap is refused and stores nothing.
                let err = follower.store.append_replica("s", &rest).unwrap_err();
                assert_eq!(err.status(), Status::InvalidArgument, "{err}");
                assert!(err.to_string().contains("expects 10"), "{err}");
                assert_eq!(follower.store.shard_info("s").unwrap().next_offset, 10);
                // The producer's state came along: its retry is recognised.
                let retry = follower
                    .store
                    .append_raw("s", &producer_batch(&[b"p0", b"p1"], Compression::Lz4, 0));
                assert_eq!(retry.unwrap_err().status(), Status::DuplicateSequence);
            }

            #[test]
            fn offsets_are_dense_from_zero() {
                let f = open(ENGINE, "");
                f.store.create_shard("s", None).unwrap();
                assert_eq!(f.store.append("s", &Record::new(b"a")).unwrap(), 0);
                assert_eq!(append_values(&f.store, "s", &values(10, "b")), 1);
                assert_eq!(f.store.append("s", &Record::new(b"c")).unwrap(), 11);
                let info = f.store.shard_info("s").unwrap();
                assert_eq!(
                    (info.first_offset, info.next_offset, info.records),
                    (0, 12, 12)
                );
                assert_eq!(info.engine.name(), ENGINE);
            }

            #[test]
            fn records_round_trip_with_every_field() {
                let f = open(ENGINE, "");
                f.store.create_shard("s", None).unwrap();
                let record = Record {
                    key: Some(b"key-1"),
                    value: Some(b"value-1"),
                    headers: vec![
                        Header {
                            key: "h1",
                            value: Some(b"v1"),
                        },
                        Header {
                            key: "h-null",
                            value: None,
                        },
                    ],
                    tags: vec!["red", "blue"],
                    timestamp_ms: 1_700_000_000_123,
                    expire_at_ms: Some(i64::MAX - 1),
                };
                let plain = Record::new(b"");
                let tombstone = Record::tombstone(b"gone");
                let keyless_null = Record::default();
                f.store
                    .append_batch("s", &[record, plain, tombstone, keyless_null])
                    .unwrap();
                let result = f.store.read("s", 0, 10, 1 << 20).unwrap();
                assert_eq!(result.records.len(), 4);
                assert_eq!(result.next_offset, 4);
                // Null is not empty.
                let values: Vec<Option<&[u8]>> =
                    result.records.iter().map(|r| r.value.as_deref()).collect();
                assert_eq!(values[1..], [Some(&b""[..]), None, None]);
                assert_eq!(result.records[2].key.as_deref(), Some(&b"gone"[..]));
                let by_key = f.store.read_by_keys("s", &[b"gone"], 10).unwrap();
                assert_eq!((by_key.len(), by_key[0].value.as_ref()), (1, None));
                let r = &result.records[0];
                assert_eq!(r.offset, 0);
                assert_eq!(r.key.as_deref(), Some(&b"key-1"[..]));
                assert_eq!(r.value_bytes(), b"value-1");
                assert_eq!(r.timestamp_ms, 1_700_000_000_123);
                assert_eq!(r.expire_at_ms, Some(i64::MAX - 1));
                assert_eq!(r.headers.len(), 2);
                assert_eq!(&r.headers[0].key[..], b"h1");
                assert_eq!(r.headers[0].value.as_deref(), Some(&b"v1"[..]));
                assert_eq!(&r.headers[1].key[..], b"h-null");
                assert_eq!(r.headers[1].value, None);
                assert_eq!(r.tags, vec![&b"red"[..], &b"blue"[..]]);
                let empty = &result.records[1];
                assert_eq!(empty.key, None);
                assert_eq!(empty.value.as_deref(), Some(&b""[..]));
                assert!(empty.headers.is_empty() && empty.tags.is_empty());
                assert_eq!(empty.expire_at_ms, None);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64;
                assert!(
                    (empty.timestamp_ms - now).abs() < 60_000,
                    "timestamp 0 means now"
                );
            }

            #[test]
            fn read_limits_and_next_offset() {
                let f = open(ENGINE, "");
                f.store.create_shard("s", None).unwrap();
                for _ in 0..5 {
                    append_values(&f.store, "s", &values(4, "x"));
                }
                let r = f.store.read("s", 3, 6, 1 << 20).unwrap();
                let offsets: Vec<i64> = r.records.iter().map(|r| r.offset).collect();
                assert_eq!(offsets, (3..9).collect::<Vec<_>>());
                assert_eq!(r.next_offset, 9);
                // max_bytes: each value is 3 bytes; the first record always comes back.
                let r = f.store.read("s", 0, 100, 1).unwrap();
                assert_eq!(r.records.len(), 1);
                assert_eq!(r.next_offset, 1);
                let r = f.store.read("s", 0, 100, 7).unwrap();
                assert_eq!(r.records.len(), 2);
                let tail = f.store.read("s", 20, 10, 1 << 20).unwrap();
                assert!(tail.records.is_empty());
                assert_eq!(tail.next_offset, 20);
                let err = f.store.read("s", 21, 10, 1 << 20).unwrap_err();
                assert_eq!(err.status(), Status::OffsetOutOfRange);
                let err = f.store.read("s", 0, 0, 1 << 20).unwrap_err();
                assert_eq!(err.status(), Status::InvalidArgument);
            }

            #[test]
            fn views_outlive_the_store() {
                let f = open(ENGINE, "");
                f.store.create_shard("s", None).unwrap();
                f.store.append("s", &Record::new(b"survivor")).unwrap();
                let result = f.store.read("s", 0, 1, 1 << 20).unwrap();
                f.store.delete_shard("s").unwrap();
                f.store.close().unwrap();
                drop(f);
                assert_eq!(result.records[0].value_bytes(), b"survivor");
            }

            #[test]
            fn shard_lifecycle_and_errors() {
                let f = open(ENGINE, "");
                f.store.create_shard("b", None).unwrap();
                f.store.create_shard("a", None).unwrap();
                assert_eq!(f.store.list_shards().unwrap(), vec!["a", "b"]);
                let err = f.store.create_shard("a", None).unwrap_err();
                assert_eq!(err.status(), Status::ShardExists);
                let err = f.store.append("missing", &Record::new(b"x")).unwrap_err();
                assert_eq!(err.status(), Status::ShardNotFound);
                let err = f.store.create_shard("", None).unwrap_err();
                assert_eq!(err.status(), Status::InvalidArgument);
                let err = f.store.create_shard("bad\nname", None).unwrap_err();
                assert_eq!(err.status(), Status::InvalidArgument);
                f.store.delete_shard("a").unwrap();
                assert_eq!(f.store.list_shards().unwrap(), vec!["b"]);
                assert_eq!(
                    f.store.delete_shard("a").unwrap_err().status(),
                    Status::ShardNotFound
                );
                // A recreated shard starts again from offset 0.
                f.store.create_shard("a", None).unwrap();
                assert_eq!(f.store.append("a", &Record::new(b"x")).unwrap(), 0);
                f.store.close().unwrap();
                assert_eq!(f.store.list_shards().unwrap_err().status(), Status::Closed);
                assert_eq!(f.store.close().unwrap_err().status(), Status::Closed);
            }

            #[test]
            fn bad_appends_are_rejected_and_change_nothing() {
                let f = open(ENGINE, "[store]\nmax_record_bytes = 1024\n");
                f.store.create_shard("s", None).unwrap();
                let big = vec![7u8; 2048];
                let err = f.store.append("s", &Record::new(&big)).unwrap_err();
                assert_eq!(err.status(), Status::RecordTooLarge);
                let reserved = Record {
                    headers: vec![Header {
                        key: "__mqs.tag",
                        value: None,
                    }],
                    ..Record::new(b"x")
                };
                let err = f.store.append("s", &reserved).unwrap_err();
                assert_eq!(err.status(), Status::InvalidArgument);
                let err = f.store.append_batch("s", &[]).unwrap_err();
                assert_eq!(err.status(), Status::InvalidArgument);
                let ok = Record::new(b"fine");
                let err = f
                    .store
                    .append_batch("s", &[ok, Record::new(&big)])
                    .unwrap_err();
                assert_eq!(
                    err.status(),
                    Status::RecordTooLarge,
                    "a batch is all or nothing"
                );
                assert_eq!(f.store.shard_info("s").unwrap().next_offset, 0);
            }

            #[test]
            fn lookups_by_key_tag_and_timestamp() {
                let f = open(ENGINE, "");
                f.store.create_shard("s", None).unwrap();
                let records: Vec<Record<'_>> = (0..20)
                    .map(|i| Record {
                        key: Some(if i % 2 == 0 { b"even" } else { b"odd" }),
                        tags: if i % 5 == 0 { vec!["five"] } else { vec![] },
                        timestamp_ms: 1_000 + i * 10,
                        ..Record::new(b"v")
                    })
                    .collect();
                f.store.append_batch("s", &records[..10]).unwrap();
                f.store.append_batch("s", &records[10..]).unwrap();
                let odd = f.store.read_by_keys("s", &[b"odd"], 100).unwrap();
                assert_eq!(
                    odd.iter().map(|r| r.offset).collect::<Vec<_>>(),
                    (1..20).step_by(2).collect::<Vec<_>>()
                );
                assert_eq!(
                    f.store
                        .read_by_keys("s", &[b"odd", b"even"], 3)
                        .unwrap()
                        .len(),
                    3
                );
                assert!(f.store.read_by_keys("s", &[b"none"], 3).unwrap().is_empty());
                let tagged = f.store.read_by_tag("s", "five", 1, 100).unwrap();
                assert_eq!(
                    tagged.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
                    vec![5, 10, 15]
                );
                assert_eq!(tagged.next_offset, 20);
                let first = f.store.read_by_tag("s", "five", 0, 1).unwrap();
                assert_eq!(first.records.len(), 1);
                assert_eq!(first.next_offset, 1);
                assert_eq!(f.store.offset_for_timestamp("s", 1_055).unwrap(), Some(6));
                assert_eq!(f.store.offset_for_timestamp("s", 0).unwrap(), Some(0));
                assert_eq!(f.store.offset_for_timestamp("s", 1_190).unwrap(), Some(19));
                assert_eq!(f.store.offset_for_timestamp("s", 1_191).unwrap(), None);
                assert_eq!(
                    f.store
                        .offset_for_timestamp("s", mqstore::TIMESTAMP_EARLIEST)
                        .unwrap(),
                    Some(0)
                );
                assert_eq!(
                    f.store
                        .offset_for_timestamp("s", mqstore::TIMESTAMP_LATEST)
                        .unwrap(),
                    Some(20)
                );
                assert_eq!(
                    f.store.offset_for_timestamp("s", -3).unwrap_err().status(),
                    Status::InvalidArgument
                );
            }

            #[test]
            fn expired_records_are_skipped_by_reads() {
                let f = open(ENGINE, "");
                f.store.create_shard("s", None).unwrap();
                let gone = Record {
                    expire_at_ms: Some(1),
                    key: Some(b"k"),
                    tags: vec!["t"],
                    ..Record::new(b"old")
                };
                let kept = Record {
                    key: Some(b"k"),
                    tags: vec!["t"],
                    ..Record::new(b"new")
                };
                f.store.append_batch("s", &[gone, kept]).unwrap();
                let r = f.store.read("s", 0, 10, 1 << 20).unwrap();
                assert_eq!(
                    r.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
                    vec![1]
                );
                assert_eq!(f.store.read_by_keys("s", &[b"k"], 10).unwrap().len(), 1);
                assert_eq!(
                    f.store.read_by_tag("s", "t", 0, 10).unwrap().records.len(),
                    1
                );
            }

            #[test]
            fn deletes() {
                let f = open(ENGINE, "");
                f.store.create_shard("s", None).unwrap();
                let records: Vec<Record<'_>> = (0..30)
                    .map(|i| Record {
                        key: Some(if i % 3 == 0 { b"k0" } else { b"kx" }),
                        ..Record::new(b"v")
                    })
                    .collect();
                for chunk in records.chunks(10) {
                    f.store.append_batch("s", chunk).unwrap();
                }
                assert_eq!(f.store.delete_records_before("s", 5).unwrap(), 5);
                assert_eq!(
                    f.store.delete_records_before("s", 2).unwrap(),
                    5,
                    "never moves back"
                );
                assert_eq!(
                    f.store.read("s", 4, 1, 100).unwrap_err().status(),
                    Status::OffsetOutOfRange
                );
                let r = f.store.read("s", 5, 100, 1 << 20).unwrap();
                assert_eq!(r.records.first().map(|r| r.offset), Some(5));
                assert_eq!(r.records.len(), 25);
                assert_eq!(
                    f.store.delete_by_offsets("s", &[7, 8, 8, 100, 1]).unwrap(),
                    2
                );
                assert_eq!(f.store.delete_by_keys("s", &[b"k0"]).unwrap(), 8);
                let left: Vec<i64> = f
                    .store
                    .read("s", 5, 100, 1 << 20)
                    .unwrap()
                    .records
                    .iter()
                    .map(|r| r.offset)
                    .collect();
                let expected: Vec<i64> = (5..30)
                    .filter(|o| o % 3 != 0 && *o != 7 && *o != 8)
                    .collect();
                assert_eq!(left, expected);
                assert_eq!(
                    f.store.shard_info("s").unwrap().records,
                    expected.len() as u64
                );
                assert_eq!(
                    f.store.delete_records_before("s", 1_000).unwrap(),
                    30,
                    "clamped to the high watermark"
                );
                assert_eq!(f.store.shard_info("s").unwrap().records, 0);
                assert_eq!(
                    f.store.append("s", &Record::new(b"after")).unwrap(),
                    30,
                    "offsets are never reused"
                );
            }

            #[test]
            fn retention_by_records_and_bytes() {
                let f = open(ENGINE, "");
                f.store
                    .create_shard("r", Some("retention_records = 25"))
                    .unwrap();
                for _ in 0..10 {
                    append_values(&f.store, "r", &values(10, "v"));
                }
                let info = f.store.shard_info("r").unwrap();
                assert_eq!(info.next_offset, 100);
                assert!(info.records <= 25 && info.records >= 10, "{info:?}");
                assert_eq!(info.first_offset, 100 - info.records as i64);
                f.store
                    .create_shard("b", Some("retention_bytes = 2000"))
                    .unwrap();
                for _ in 0..50 {
                    append_values(&f.store, "b", &values(5, "payload-payload"));
                }
                let info = f.store.shard_info("b").unwrap();
                assert!(info.bytes <= 2000, "{info:?}");
                assert!(info.first_offset > 0);
            }

            #[test]
            fn retention_by_age() {
                let f = open(ENGINE, "");
                f.store
                    .create_shard("a", Some("retention_ms = 60000"))
                    .unwrap();
                let old = Record {
                    timestamp_ms: 1_000,
                    ..Record::new(b"old")
                };
                f.store.append("a", &old).unwrap();
                f.store.append("a", &Record::new(b"new")).unwrap();
                let info = f.store.shard_info("a").unwrap();
                assert_eq!(info.first_offset, 1, "{info:?}");
                let r = f.store.read("a", 1, 10, 1 << 20).unwrap();
                assert_eq!(r.records.len(), 1);
            }

            #[test]
            fn group_offsets() {
                let f = open(ENGINE, "");
                f.store.create_shard("s", None).unwrap();
                f.store.create_shard("t", None).unwrap();
                assert_eq!(f.store.committed_offset("g", "s").unwrap(), None);
                f.store.commit_offset("g", "s", 5).unwrap();
                f.store.commit_offset("g", "t", 7).unwrap();
                f.store.commit_offset("h", "s", 1).unwrap();
                assert_eq!(f.store.committed_offset("g", "s").unwrap(), Some(5));
                assert_eq!(
                    f.store
                        .commit_offset("g", "missing", 1)
                        .unwrap_err()
                        .status(),
                    Status::ShardNotFound
                );
                assert_eq!(
                    f.store.commit_offset("g", "s", -1).unwrap_err().status(),
                    Status::InvalidArgument
                );
                assert_eq!(f.store.delete_group("g").unwrap(), 2);
                assert_eq!(f.store.committed_offset("g", "t").unwrap(), None);
                f.store.delete_shard("s").unwrap();
                f.store.create_shard("s", None).unwrap();
                assert_eq!(
                    f.store.committed_offset("h", "s").unwrap(),
                    None,
                    "deleting a shard drops its offsets"
                );
            }

            #[test]
            fn transfers_send_whole_valid_batches() {
                for compression in mqstore::format::ALL_CODECS {
                    let f = open(
                        ENGINE,
                        &format!("compression = \"{}\"\n", compression.name()),
                    );
                    f.store.create_shard("s", None).unwrap();
                    for batch in 0..6 {
                        append_values(&f.store, "s", &values(8, &format!("batch{batch}")));
                    }
                    // Plan from the middle of batch 1 with room for about two batches.
                    let one_batch = f.store.plan_transfer("s", 0, 1).unwrap();
                    assert_eq!(one_batch.next_offset(), 8, "at least one whole batch");
                    let batch_len = one_batch.total_bytes() as usize;
                    let mut plan = f.store.plan_transfer("s", 10, 2 * batch_len + 1).unwrap();
                    assert_eq!(plan.next_offset(), 24);
                    // Data changing after planning does not change what is sent.
                    f.store.delete_records_before("s", 20).unwrap();
                    append_values(&f.store, "s", &values(8, "later"));
                    let (a, b) = UnixStream::pair().unwrap();
                    let reader = std::thread::spawn(move || drain(b));
                    let sent = plan.send_all_to_fd(a.as_raw_fd()).unwrap();
                    drop(a);
                    let got = reader.join().unwrap();
                    assert_eq!(sent, plan.total_bytes());
                    assert_eq!(got.len() as u64, plan.total_bytes());
                    let batches = split_batches(&got.into()).unwrap();
                    assert_eq!(batches.len(), 2);
                    let mut offsets = Vec::new();
                    for batch in &batches {
                        for record in decode_batch(batch, true).unwrap() {
                            offsets.push(record.offset);
                        }
                    }
                    assert_eq!(offsets, (8..24).collect::<Vec<_>>(), "{compression:?}");
                    let (a, b) = UnixStream::pair().unwrap();
                    let reader = std::thread::spawn(move || drain(b));
                    let result = f
                        .store
                        .sendfile_to_fd("s", 48, 1 << 20, a.as_raw_fd())
                        .unwrap();
                    drop(a);
                    assert_eq!(result.next_offset, 56);
                    assert_eq!(reader.join().unwrap().len() as u64, result.bytes_written);
                    let empty = f.store.plan_transfer("s", 56, 100).unwrap();
                    assert_eq!((empty.total_bytes(), empty.next_offset()), (0, 56));
                }
            }

            #[test]
            fn transfers_read_into_buffers_give_the_sent_bytes() {
                // Without the tail cache the journal's plans hold files.
                for extra in ["", "[journal]\ntail_cache_bytes = 0\n"] {
                    let f = open(ENGINE, extra);
                    f.store.create_shard("s", None).unwrap();
                    for batch in 0..6 {
                        append_values(&f.store, "s", &values(8, &format!("batch{batch}")));
                    }
                    let sent = send_rest(&mut f.store.plan_transfer("s", 0, usize::MAX).unwrap());
                    assert_eq!(stream_offsets(sent.clone()), (0..48).collect::<Vec<_>>());
                    for size in [1, 7, 4096] {
                        let mut plan = f.store.plan_transfer("s", 0, usize::MAX).unwrap();
                        assert_eq!(read_rest(&mut plan, size), sent, "{extra} {size}");
                        assert!(plan.is_complete());
                        assert_eq!(plan.sent_bytes(), sent.len() as u64);
                        assert_eq!(plan.read_into(&mut [0u8; 8]).unwrap(), 0);
                    }

                    // Read partly, then sent.
                    let mut plan = f.store.plan_transfer("s", 0, usize::MAX).unwrap();
                    let mut head = vec![0u8; 100];
                    assert_eq!(plan.read_into(&mut head).unwrap(), 100);
                    assert_eq!([head, send_rest(&mut plan)].concat(), sent);
                    let err = plan.read_into(&mut []).unwrap_err();
                    assert_eq!(err.status(), Status::InvalidArgument);

                    // Sent until a non-blocking socket is full, then read.
                    f.store.create_shard("big", None).unwrap();
                    let big = vec![7u8; 64 << 10];
                    for _ in 0..16 {
                        let records = vec![Record::new(&big); 4];
                        f.store.append_batch("big", &records).unwrap();
                    }
                    let mut plan = f.store.plan_transfer("big", 0, usize::MAX).unwrap();
                    let expected = plan.to_vec().unwrap();
                    let (a, b) = UnixStream::pair().unwrap();
                    a.set_nonblocking(true).unwrap();
                    let progress = plan.send_to_fd(a.as_raw_fd()).unwrap();
                    assert!(!progress.complete, "4 MiB fill a socketpair");
                    drop(a);
                    let received = drain(b);
                    assert_eq!(received.len() as u64, progress.written);
                    let stream = [received, read_rest(&mut plan, 4096)].concat();
                    assert_eq!(stream, expected);
                    assert_eq!(stream_offsets(stream), (0..64).collect::<Vec<_>>());
                }
            }

            #[test]
            fn concurrent_appends_across_shards_are_dense() {
                let f = open(ENGINE, "");
                let shards = ["s0", "s1", "s2"];
                for s in shards {
                    f.store.create_shard(s, None).unwrap();
                }
                let store = &f.store;
                std::thread::scope(|scope| {
                    for t in 0..4 {
                        scope.spawn(move || {
                            for i in 0..200 {
                                let shard = shards[(t + i) % shards.len()];
                                let value = format!("{t}:{i}");
                                store.append(shard, &Record::new(value.as_bytes())).unwrap();
                            }
                        });
                    }
                });
                let mut total = 0;
                for s in shards {
                    let r = store.read(s, 0, 10_000, usize::MAX).unwrap();
                    let offsets: Vec<i64> = r.records.iter().map(|r| r.offset).collect();
                    assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>());
                    total += offsets.len();
                }
                assert_eq!(total, 800);
            }

            #[test]
            fn pipelined_appends_are_acknowledged_by_wait_durable() {
                let f = open(ENGINE, "");
                let modes: &[&str] = if ENGINE == "memory" {
                    &["none"]
                } else {
                    &["none", "os", "fsync"]
                };
                for mode in modes {
                    let shard = format!("p-{mode}");
                    let options = format!("durability = \"{mode}\"");
                    f.store.create_shard(&shard, Some(&options)).unwrap();
                    let batches: Vec<Vec<Vec<u8>>> =
                        (0..40).map(|b| values(3, &format!("{mode}-{b}"))).collect();
                    let mut in_flight = std::collections::VecDeque::new();
                    for (b, batch) in batches.iter().enumerate() {
                        if in_flight.len() == 4 {
                            let oldest: i64 = in_flight.pop_front().unwrap();
                            f.store.wait_durable(&shard, oldest + 2).unwrap();
                        }
                        let records: Vec<Record<'_>> =
                            batch.iter().map(|v| Record::new(v)).collect();
                        let base = f.store.append_batch_nowait(&shard, &records).unwrap();
                        assert_eq!(base, 3 * b as i64, "{mode}: offsets stay dense");
                        in_flight.push_back(base);
                    }
                    f.store.wait_durable(&shard, 119).unwrap();
                    let read = f.store.read(&shard, 0, 1000, usize::MAX).unwrap();
                    let got: Vec<&[u8]> = read.records.iter().map(|r| r.value_bytes()).collect();
                    let want: Vec<&[u8]> = batches.iter().flatten().map(|v| &v[..]).collect();
                    assert_eq!(got, want, "{mode}");

                    for offset in [-1, 120] {
                        let err = f.store.wait_durable(&shard, offset).unwrap_err();
                        assert_eq!(err.status(), Status::OffsetOutOfRange, "{mode} {offset}");
                        assert!(err.to_string().contains(&shard), "{err}");
                    }
                    f.store.delete_records_before(&shard, 30).unwrap();
                    f.store.wait_durable(&shard, 5).unwrap();
                }
                f.store.create_shard("p-empty", None).unwrap();
                let err = f.store.wait_durable("p-empty", 0).unwrap_err();
                assert_eq!(err.status(), Status::OffsetOutOfRange);
                assert_eq!(
                    err.to_string(),
                    "offset 0 was never appended to shard 'p-empty' (its next offset is 0)"
                );
                let err = f.store.wait_durable("missing", 0).unwrap_err();
                assert_eq!(err.status(), Status::ShardNotFound);
                let err = f
                    .store
                    .append_batch_nowait("missing", &[Record::new(b"x")])
                    .unwrap_err();
                assert_eq!(err.status(), Status::ShardNotFound);
                let err = f.store.append_batch_nowait("p-none", &[]).unwrap_err();
                assert_eq!(err.status(), Status::InvalidArgument);
                f.store.close().unwrap();
                let err = f.store.wait_durable("p-none", 0).unwrap_err();
                assert_eq!(err.status(), Status::Closed);
                let err = f
                    .store
                    .append_batch_nowait("p-none", &[Record::new(b"x")])
                    .unwrap_err();
                assert_eq!(err.status(), Status::Closed);
            }

            #[test]
            fn stats_are_json() {
                let f = open(ENGINE, "");
                f.store.create_shard("s", None).unwrap();
                append_values(&f.store, "s", &values(3, "v"));
                let stats = f.store.stats().unwrap();
                assert_eq!(stats["shard_count"], 1);
                assert_eq!(stats["shards"]["s"]["next_offset"], 3);
                assert_eq!(stats["engines"][ENGINE]["records"], 3);
                let shard = f.store.shard_stats("s").unwrap();
                assert_eq!(shard["records"], 3);
                assert_eq!(shard["engine_stats"]["appended_records"], 3);
            }
        }
    };
}

conformance_suite!(memory, "memory");
conformance_suite!(journal, "journal");
conformance_suite!(file, "file");
#[cfg(feature = "rocksdb")]
conformance_suite!(rocksdb, "rocksdb");
#[cfg(feature = "mysql")]
conformance_suite!(mysql, "mysql");
#[cfg(feature = "redis")]
conformance_suite!(redis, "redis");
#[cfg(feature = "s3")]
conformance_suite!(s3, "s3");
#[cfg(feature = "s3")]
conformance_suite!(hybrid, "hybrid");

#[test]
fn memory_engine_refuses_durable_modes() {
    let f = open("memory", "");
    let err = f
        .store
        .create_shard("s", Some("durability = \"fsync\""))
        .unwrap_err();
    assert_eq!(err.status(), Status::InvalidConfig);
    assert!(err.to_string().contains("durability"), "{err}");
}

/// Every engine is in the default build (the edge build's refusal of the
/// others is tested in src/engine/registry.rs).
#[cfg(feature = "s3")]
#[test]
fn big_data_preset_opens_on_the_hybrid_engine() {
    let var = server_url_var("hybrid").unwrap();
    assert!(
        std::env::var_os(var).is_some(),
        "the big_data preset needs the S3 test server ({var} is not set): run through \
         `make test-rust` or `scripts/with-servers.sh cargo test`"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_str("preset = \"big_data\"").unwrap();
    let store = Store::open(dir.path(), config).unwrap();
    let info = store.create_shard("s", None).unwrap();
    assert_eq!(info.options.engine.name(), "hybrid");
    assert_eq!(info.options.compression, Compression::Zstd);
    assert_eq!(store.append("s", &Record::new(b"history")).unwrap(), 0);
    let read = store.read("s", 0, 10, usize::MAX).unwrap();
    assert_eq!(read.records[0].value_bytes(), b"history");
    store.close().unwrap();
}

#[test]
fn streaming_preset_opens_on_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_str("preset = \"streaming\"").unwrap();
    let store = Store::open(dir.path(), config).unwrap();
    let info = store.create_shard("s", None).unwrap();
    assert_eq!(info.engine.name(), "journal");
    assert_eq!(info.options.durability.name(), "fsync");
    // Journal shards live beside memory shards in one store.
    let f = open("memory", "");
    f.store
        .create_shard("j", Some("engine = \"journal\""))
        .unwrap();
    assert_eq!(f.store.append("j", &Record::new(b"x")).unwrap(), 0);
}

#[test]
fn a_directory_has_one_open_store() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path(), Config::default()).unwrap();
    let err = Store::open(dir.path(), Config::default()).unwrap_err();
    assert_eq!(err.status(), Status::Locked);
    first.close().unwrap();
    Store::open(dir.path(), Config::default()).unwrap();
}
