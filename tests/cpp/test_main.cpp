// Tests of the C++ binding (bindings/cpp/mqstore.hpp). Linked with
// test_other.cpp, which includes the header too. Prints "N passed, 0 failed".
#include "mqstore.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <poll.h>
#include <unistd.h>

#include "test_util.hpp"

using mqstore::Message;
using mqstore::ReadResult;
using mqstore::RecordView;
using mqstore::Store;

// ---- compile-time properties of the wrapper
static_assert(!std::is_copy_constructible_v<Store> && !std::is_copy_assignable_v<Store>, "Store is move-only");
static_assert(std::is_nothrow_move_constructible_v<Store> && std::is_nothrow_move_assignable_v<Store>);
static_assert(!std::is_copy_constructible_v<ReadResult> && std::is_nothrow_move_constructible_v<ReadResult>);
static_assert(std::is_nothrow_move_assignable_v<ReadResult>);
static_assert(!std::is_copy_constructible_v<mqstore::Transfer>);
static_assert(std::is_nothrow_move_constructible_v<mqstore::Transfer>);
static_assert(std::is_nothrow_destructible_v<Store> && std::is_nothrow_destructible_v<ReadResult>);
static_assert(std::is_base_of_v<std::runtime_error, mqstore::Error>);
static_assert(mqstore::EARLIEST == -2 && mqstore::LATEST == -1);
static_assert(std::is_trivially_copyable_v<RecordView>);

namespace {

int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

void version_and_status() {
    CHECK_EQ(mqstore::version(), std::string_view("0.2.0"));
    CHECK_EQ(mqstore::VERSION_MAJOR, 0);
    CHECK_EQ(mqstore::VERSION_MINOR, 2);
    CHECK_EQ(mqstore::VERSION_PATCH, 0);
    CHECK_EQ(std::string(mqstore::status_str(MQS_OK)), "ok");
    CHECK_EQ(std::string(mqstore::status_str(MQS_SHARD_NOT_FOUND)), "shard not found");
    mqstore::check(MQS_OK);  // does not throw
    CHECK_THROWS_CODE(msg, mqstore::check(MQS_CORRUPTION), MQS_CORRUPTION);
    CHECK(!msg.empty());
    mqstore::Error e(MQS_IO, "");
    CHECK_EQ(std::string(e.what()), std::string(mqstore::status_str(MQS_IO)));  // empty message -> status name
    try {
        throw mqstore::Error(MQS_LOCKED, "locked!");
    } catch (const std::runtime_error &caught) {
        CHECK_EQ(std::string(caught.what()), "locked!");
    }
}

void open_close() {
    std::string dir = test::dir("open-close");
    Store store = Store::open(dir);
    CHECK(store.valid());
    CHECK(static_cast<bool>(store));
    CHECK(store.native_handle() != nullptr);
    store.create_shard("a");
    store.close();
    CHECK(!store.valid());
    CHECK(store.native_handle() == nullptr);
    CHECK_THROWS_CODE(msg, store.close(), MQS_INVALID_HANDLE);
    CHECK_THROWS_CODE(msg2, store.list_shards(), MQS_INVALID_HANDLE);
    CHECK(test::contains(msg2, "closed"));
    // close() released the directory lock; the default engine (the journal)
    // kept the shard.
    Store again = Store::open(dir);
    CHECK(again.list_shards() == std::vector<std::string>{"a"});
    // release(): the caller owns the C handle now.
    mqs_store *raw = again.release();
    CHECK(!again.valid());
    CHECK_EQ(mqs_store_close(raw), MQS_OK);
}

void directory_lock_and_destructor() {
    std::string dir = test::dir("locked");
    {
        Store first = Store::open(dir);
        CHECK_THROWS_CODE(msg, Store::open(dir), MQS_LOCKED);
        CHECK(test::contains(msg, "locked"));
    }  // the destructor closes the store and releases the lock
    Store second = Store::open(dir);
    CHECK(second.valid());
}

void bad_configuration() {
    CHECK_THROWS_CODE(unknown, Store::open(test::dir("cfg1"), std::string("[store]\nmax_recod_bytes = 10\n")),
                      MQS_INVALID_CONFIG);
    CHECK(test::contains(unknown, "max_recod_bytes"));
    CHECK_THROWS_CODE(range, Store::open(test::dir("cfg2"), std::string("[store]\nmax_record_bytes = 0\n")),
                      MQS_INVALID_CONFIG);
    CHECK(test::contains(range, "store.max_record_bytes"));
    CHECK_THROWS_CODE(value, Store::open(test::dir("cfg3"), std::string("[shard]\ndurability = \"sometimes\"\n")),
                      MQS_INVALID_CONFIG);
    CHECK(test::contains(value, "durability"));
    CHECK_THROWS_CODE(syntax, Store::open(test::dir("cfg4"), std::string("this is = = not toml")),
                      MQS_INVALID_CONFIG);
    // Every engine the product knows opens a store as its default engine
    // when it is in this build (mqs_engines lists it), and is refused, not
    // faked, when it is not. The default build has them all; the edge
    // build's Rust test (registry::an_engine_not_in_the_build_is_unsupported)
    // covers the refusal.
    std::set<std::string> built;
    mqs_names *names = nullptr;
    CHECK_EQ(mqs_engines(&names), MQS_OK);
    for (std::size_t i = 0; i < mqs_names_count(names); ++i) {
        built.insert(mqs_names_get(names, i));
    }
    mqs_names_free(names);
    for (const char *name : {"memory", "journal", "file", "rocksdb", "mysql", "redis", "s3", "hybrid"}) {
        std::string config = std::string("[shard]\nengine = \"") + name + "\"\n";
        std::string dir = test::dir(std::string("cfg5-") + name);
        if (built.count(name) != 0) {
            Store store = Store::open(dir, config);
            CHECK(store.valid());
        } else {
            CHECK_THROWS_CODE(engine, Store::open(dir, config), MQS_UNSUPPORTED);
            CHECK(test::contains(engine, name));
        }
    }
    CHECK_EQ(built.size(), 8u);
    CHECK_THROWS_CODE(nul, Store::open(test::dir("cfg6"), std::string("preset = 1\0x", 12)), MQS_INVALID_ARGUMENT);

    Store store = Store::open(test::dir("cfg-ok"), std::string("preset = \"financial\"\n[shard]\nretention_records = 100\n"));
    CHECK_THROWS_CODE(colour, store.create_shard("s", std::string("colour = 1")), MQS_INVALID_CONFIG);
    CHECK(test::contains(colour, "colour"));
    CHECK_THROWS_CODE(seg, store.create_shard("s", std::string("segment_bytes = 10")), MQS_INVALID_CONFIG);
    CHECK(test::contains(seg, "segment_bytes"));
    store.create_shard("s", std::string("retention_records = 7"));
    CHECK_EQ(store.list_shards().size(), 1u);
}

void shards() {
    Store store = Store::open(test::dir("shards"));
    CHECK(store.list_shards().empty());
    store.create_shard("orders");
    store.create_shard("audit");
    store.create_shard(std::string("caf\xc3\xa9"));  // UTF-8 name
    CHECK_THROWS_CODE(dup, store.create_shard("orders"), MQS_SHARD_EXISTS);
    CHECK(test::contains(dup, "orders"));
    std::vector<std::string> expected{"audit", "caf\xc3\xa9", "orders"};
    CHECK(store.list_shards() == expected);

    mqstore::ShardInfo info = store.shard_info("orders");
    CHECK_EQ(info.first_offset, 0);
    CHECK_EQ(info.next_offset, 0);
    CHECK_EQ(info.records, 0u);
    CHECK_EQ(info.bytes, 0u);
    CHECK_EQ(info.engine, "journal");

    store.delete_shard("audit");
    CHECK_EQ(store.list_shards().size(), 2u);

    // Unknown shard: every shard operation reports MQS_SHARD_NOT_FOUND naming it.
    Message m;
    m.value = "v";
    CHECK_THROWS_CODE(e1, store.delete_shard("audit"), MQS_SHARD_NOT_FOUND);
    CHECK(test::contains(e1, "audit"));
    CHECK_THROWS_CODE(e2, store.shard_info("ghost"), MQS_SHARD_NOT_FOUND);
    CHECK(test::contains(e2, "ghost"));
    CHECK_THROWS_CODE(e3, store.append("ghost", m), MQS_SHARD_NOT_FOUND);
    CHECK_THROWS_CODE(e4, store.append_batch("ghost", {m, m}), MQS_SHARD_NOT_FOUND);
    CHECK_THROWS_CODE(e5, store.read("ghost", 0, 10), MQS_SHARD_NOT_FOUND);
    CHECK_THROWS_CODE(e6, store.read_by_keys("ghost", {"k"}, 10), MQS_SHARD_NOT_FOUND);
    CHECK_THROWS_CODE(e7, store.read_by_tag("ghost", "t", 0, 10), MQS_SHARD_NOT_FOUND);
    CHECK_THROWS_CODE(e8, store.offset_for_timestamp("ghost", 0), MQS_SHARD_NOT_FOUND);
    CHECK_THROWS_CODE(e9, store.delete_records_before("ghost", 0), MQS_SHARD_NOT_FOUND);
    CHECK_THROWS_CODE(e10, store.delete_by_keys("ghost", {"k"}), MQS_SHARD_NOT_FOUND);
    CHECK_THROWS_CODE(e11, store.delete_by_offsets("ghost", {0}), MQS_SHARD_NOT_FOUND);
    CHECK_THROWS_CODE(e12, store.commit_offset("g", "ghost", 0), MQS_SHARD_NOT_FOUND);
    CHECK_THROWS_CODE(e13, store.stats(std::string("ghost")), MQS_SHARD_NOT_FOUND);

    // Invalid names.
    CHECK_THROWS_CODE(empty, store.create_shard(""), MQS_INVALID_ARGUMENT);
    CHECK_THROWS_CODE(nul, store.create_shard(std::string("a\0b", 3)), MQS_INVALID_ARGUMENT);
    CHECK(test::contains(nul, "NUL"));
    CHECK_THROWS_CODE(utf8, store.create_shard(std::string("bad\xff")), MQS_INVALID_ARGUMENT);
    CHECK_THROWS_CODE(control, store.create_shard("tab\there"), MQS_INVALID_ARGUMENT);
}

void round_trip() {
    Store store = Store::open(test::dir("round-trip"));
    store.create_shard("s");

    std::string binary;
    for (int i = 0; i < 256; ++i) {
        binary.push_back(static_cast<char>(i));  // includes NUL bytes
    }
    int64_t expire = now_ms() + 3600 * 1000;

    Message full;
    full.key = std::string_view("user-42");
    full.value = binary;
    full.headers = {{"content-type", std::string_view("application/json")},
                    {"trace", std::nullopt},
                    {"empty", std::string_view("")},
                    {"caf\xc3\xa9", std::string_view("\0\1", 2)}};
    full.tags = {"alpha", "beta"};
    full.timestamp_ms = 1700000000000;
    full.expire_at_ms = expire;
    CHECK_EQ(store.append("s", full), 0);

    Message keyless;  // no key, empty value, timestamp 0 = now
    int64_t before = now_ms();
    CHECK_EQ(store.append("s", keyless), 1);
    int64_t after = now_ms();

    Message empty_key;
    empty_key.key = std::string_view();  // present but empty (data() == nullptr)
    empty_key.value = "v";
    CHECK_EQ(store.append("s", empty_key), 2);

    ReadResult result = store.read("s", 0, 10);
    CHECK_EQ(result.size(), 3u);
    CHECK(!result.empty());
    CHECK_EQ(result.next_offset(), 3);

    RecordView r0 = result[0];
    CHECK_EQ(r0.offset(), 0);
    CHECK_EQ(r0.timestamp_ms(), 1700000000000);
    CHECK(r0.key() == std::optional<std::string_view>("user-42"));
    CHECK(r0.value() == binary);
    CHECK_EQ(r0.value().size(), 256u);
    CHECK(r0.expire_at_ms() == std::optional<int64_t>(expire));
    mqstore::HeaderList headers = r0.headers();
    CHECK_EQ(headers.size(), 4u);
    if (headers.size() == 4) {
        CHECK_EQ(headers[0].key, "content-type");
        CHECK(headers[0].value == std::optional<std::string_view>("application/json"));
        CHECK_EQ(headers[1].key, "trace");
        CHECK(!headers[1].value.has_value());
        CHECK_EQ(headers[2].key, "empty");
        CHECK(headers[2].value.has_value() && headers[2].value->empty());
        CHECK_EQ(headers[3].key, "caf\xc3\xa9");
        CHECK(headers[3].value == std::optional<std::string_view>(std::string_view("\0\1", 2)));
    }
    std::vector<std::string> header_keys;
    for (mqstore::Header h : headers) {
        header_keys.emplace_back(h.key);
    }
    CHECK_EQ(header_keys.size(), 4u);
    bool out_of_range = false;
    try {
        (void)headers.at(4);
    } catch (const std::out_of_range &) {
        out_of_range = true;
    }
    CHECK(out_of_range);
    std::vector<std::string_view> tags(r0.tags().begin(), r0.tags().end());
    CHECK((tags == std::vector<std::string_view>{"alpha", "beta"}));
    CHECK(r0.has_tag("beta"));
    CHECK(!r0.has_tag("gamma"));

    RecordView r1 = result[1];
    CHECK_EQ(r1.offset(), 1);
    CHECK(!r1.key().has_value());
    CHECK(r1.value().empty());
    CHECK(r1.headers().empty());
    CHECK(r1.tags().empty());
    CHECK(!r1.expire_at_ms().has_value());
    CHECK(r1.timestamp_ms() >= before && r1.timestamp_ms() <= after);

    RecordView r2 = result.at(2);
    CHECK(r2.key().has_value() && r2.key()->empty());
    CHECK_EQ(r2.value(), "v");

    // Iteration.
    std::vector<int64_t> offsets;
    for (RecordView r : result) {
        offsets.push_back(r.offset());
    }
    CHECK((offsets == std::vector<int64_t>{0, 1, 2}));
    CHECK_EQ(result.end() - result.begin(), 3);
    CHECK_EQ((*(result.begin() + 2)).offset(), 2);
    CHECK_EQ(result.back().offset(), 2);
    CHECK_EQ(std::count_if(result.begin(), result.end(), [](RecordView r) { return r.key().has_value(); }), 2);
    bool threw = false;
    try {
        (void)result.at(3);
    } catch (const std::out_of_range &) {
        threw = true;
    }
    CHECK(threw);

    mqstore::ShardInfo info = store.shard_info("s");
    CHECK_EQ(info.records, 3u);
    CHECK_EQ(info.next_offset, 3);
    CHECK(info.bytes > 256u);
}

void batches_and_reads() {
    Store store = other::open_store(test::dir("batches"));
    store.create_shard("s");
    CHECK_EQ(other::append_numbered(store, "s", 0, 10), 0);
    CHECK_EQ(other::append_numbered(store, "s", 10, 5), 10);

    ReadResult first = store.read("s", 0, 3);
    CHECK_EQ(other::join_values(first), "value-0,value-1,value-2");
    CHECK_EQ(first.next_offset(), 3);
    ReadResult rest = store.read("s", first.next_offset(), 100);
    CHECK_EQ(rest.size(), 12u);
    CHECK_EQ(rest.next_offset(), 15);
    CHECK_EQ(rest[0].offset(), 3);
    CHECK_EQ(rest[0].headers()[0].key, "index");
    CHECK(rest[0].headers()[0].value == std::optional<std::string_view>("3"));
    CHECK(rest[11].key() == std::optional<std::string_view>("k14"));
    CHECK_EQ(rest[11].timestamp_ms(), 1140);

    // A byte limit below one record still returns one (consumers progress).
    ReadResult tiny = store.read("s", 5, 100, 1);
    CHECK_EQ(tiny.size(), 1u);
    CHECK_EQ(tiny.next_offset(), 6);

    // At the high watermark: empty; past it: out of range.
    ReadResult at_end = store.read("s", 15, 10);
    CHECK(at_end.empty());
    CHECK_EQ(at_end.next_offset(), 15);
    CHECK(at_end.begin() == at_end.end());
    CHECK_THROWS_CODE(range, store.read("s", 16, 10), MQS_OFFSET_OUT_OF_RANGE);
    CHECK_THROWS_CODE(negative, store.read("s", -1, 10), MQS_OFFSET_OUT_OF_RANGE);
    CHECK_THROWS_CODE(zero, store.read("s", 0, 0), MQS_INVALID_ARGUMENT);

    // Batches are atomic and accept many records at once.
    std::vector<std::string> values(1000);
    std::vector<Message> many(1000);
    for (std::size_t i = 0; i < many.size(); ++i) {
        values[i] = std::string(i % 50, 'a' + static_cast<char>(i % 26));
        many[i].value = values[i];
    }
    CHECK_EQ(store.append_batch("s", many), 15);
    ReadResult big = store.read("s", 15, 5000);
    CHECK_EQ(big.size(), 1000u);
    bool same = big.size() == values.size();
    for (std::size_t i = 0; same && i < values.size(); ++i) {
        same = big[i].value() == values[i] && big[i].offset() == static_cast<int64_t>(15 + i);
    }
    CHECK(same);
}

void keys_and_tags() {
    Store store = Store::open(test::dir("keys-tags"));
    store.create_shard("s");
    other::append_numbered(store, "s", 0, 10);
    other::append_numbered(store, "s", 0, 2);  // k0, k1 again at offsets 10, 11

    ReadResult by_keys = store.read_by_keys("s", {"k1", "k5", "missing", "k1"}, 100);
    CHECK_EQ(by_keys.next_offset(), -1);
    std::vector<int64_t> offsets;
    for (RecordView r : by_keys) {
        offsets.push_back(r.offset());
    }
    CHECK((offsets == std::vector<int64_t>{1, 5, 11}));
    CHECK_EQ(store.read_by_keys("s", {"k1", "k5"}, 2).size(), 2u);
    CHECK(store.read_by_keys("s", {}, 10).empty());

    ReadResult even = store.read_by_tag("s", "even", 0, 3);
    CHECK_EQ(other::join_values(even), "value-0,value-2,value-4");
    CHECK_EQ(even.next_offset(), 5);
    ReadResult even_rest = store.read_by_tag("s", "even", even.next_offset(), 100);
    CHECK_EQ(other::join_values(even_rest), "value-6,value-8,value-0");
    CHECK_EQ(even_rest.next_offset(), 12);
    CHECK(store.read_by_tag("s", "nothing", 0, 10).empty());
    CHECK_THROWS_CODE(zero, store.read_by_tag("s", "even", 0, 0), MQS_INVALID_ARGUMENT);
    CHECK_THROWS_CODE(utf8, store.read_by_tag("s", "\xff", 0, 10), MQS_INVALID_ARGUMENT);
}

void timestamps() {
    Store store = Store::open(test::dir("timestamps"));
    store.create_shard("s");
    CHECK(store.offset_for_timestamp("s", mqstore::EARLIEST) == std::optional<int64_t>(0));
    CHECK(store.offset_for_timestamp("s", mqstore::LATEST) == std::optional<int64_t>(0));
    CHECK(!store.offset_for_timestamp("s", 0).has_value());
    other::append_numbered(store, "s", 0, 10);  // timestamps 1000, 1010, ..., 1090
    CHECK(store.offset_for_timestamp("s", 0) == std::optional<int64_t>(0));
    CHECK(store.offset_for_timestamp("s", 1000) == std::optional<int64_t>(0));
    CHECK(store.offset_for_timestamp("s", 1001) == std::optional<int64_t>(1));
    CHECK(store.offset_for_timestamp("s", 1050) == std::optional<int64_t>(5));
    CHECK(store.offset_for_timestamp("s", 1090) == std::optional<int64_t>(9));
    CHECK(!store.offset_for_timestamp("s", 1091).has_value());
    CHECK(store.offset_for_timestamp("s", mqstore::LATEST) == std::optional<int64_t>(10));
    CHECK_THROWS_CODE(negative, store.offset_for_timestamp("s", -3), MQS_INVALID_ARGUMENT);
}

void deletes() {
    Store store = Store::open(test::dir("deletes"));
    store.create_shard("s");
    other::append_numbered(store, "s", 0, 20);

    CHECK_EQ(store.delete_records_before("s", 5), 5);
    CHECK_EQ(store.shard_info("s").first_offset, 5);
    CHECK_EQ(store.delete_records_before("s", 3), 5);  // never moves back
    CHECK(store.offset_for_timestamp("s", mqstore::EARLIEST) == std::optional<int64_t>(5));
    CHECK_THROWS_CODE(gone, store.read("s", 4, 10), MQS_OFFSET_OUT_OF_RANGE);
    CHECK(test::contains(gone, "4"));
    CHECK_EQ(store.read("s", 5, 100).size(), 15u);
    CHECK_THROWS_CODE(negative, store.delete_records_before("s", -1), MQS_INVALID_ARGUMENT);

    CHECK_EQ(store.delete_by_keys("s", {"k6", "k7", "k0", "nope"}), 2u);  // k0 was already below the watermark
    CHECK_EQ(store.delete_by_offsets("s", {8, 9, 9, 1000}), 2u);
    CHECK_EQ(store.delete_by_offsets("s", {8}), 0u);
    CHECK_EQ(store.delete_by_keys("s", {}), 0u);
    CHECK_EQ(store.delete_by_offsets("s", {}), 0u);
    ReadResult left = store.read("s", 5, 100);
    std::vector<int64_t> offsets;
    for (RecordView r : left) {
        offsets.push_back(r.offset());
    }
    CHECK((offsets == std::vector<int64_t>{5, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19}));
    CHECK_EQ(left.next_offset(), 20);
    CHECK_EQ(store.shard_info("s").records, 11u);
    CHECK(store.read_by_keys("s", {"k6"}, 10).empty());

    // A diverged tail cut: within the watermarks, at a batch boundary.
    other::append_numbered(store, "s", 20, 5);
    CHECK_THROWS_CODE(below, store.truncate_to("s", 4), MQS_OFFSET_OUT_OF_RANGE);
    CHECK_THROWS_CODE(inside, store.truncate_to("s", 19), MQS_INVALID_ARGUMENT);
    CHECK(test::contains(inside, "batch boundary"));
    store.truncate_to("s", 20);
    CHECK_EQ(store.shard_info("s").next_offset, 20);
    store.set_leader_epoch("s", 2);
    CHECK_THROWS_CODE(older, store.set_leader_epoch("s", 1), MQS_INVALID_ARGUMENT);

    // Clamped to the high watermark.
    CHECK_EQ(store.delete_records_before("s", 1000), 20);
    CHECK(store.read("s", 20, 10).empty());
    CHECK_EQ(store.shard_info("s").records, 0u);
}

void shards_created_together() {
    Store store = Store::open(test::dir("create_shards"));
    store.create_shards({"a", "b"}, std::string("retention_records = 4"));
    CHECK_EQ(store.shard_info("b").next_offset, 0);
    CHECK_THROWS_CODE(taken, store.create_shards({"c", "a"}), MQS_SHARD_EXISTS);
    CHECK_THROWS_CODE(missing, store.shard_info("c"), MQS_SHARD_NOT_FOUND);
    CHECK_THROWS_CODE(nul, store.create_shards({std::string("x\0y", 3)}), MQS_INVALID_ARGUMENT);
}

void compaction() {
    Store store = Store::open(test::dir("compaction"));
    store.create_shard("c", std::string("cleanup_policy = \"compact\""));
    store.create_shard("plain");
    mqstore::Message keyless;
    keyless.value = "v";
    CHECK_THROWS_CODE(no_key, store.append("c", keyless), MQS_INVALID_ARGUMENT);
    CHECK(test::contains(no_key, "has no key"));
    for (std::string_view key : {"a", "a", "b", "a", "z"}) {
        mqstore::Message message;
        message.key = key;
        message.value = "v";
        store.append("c", message);
    }
    CHECK_EQ(store.compact("c"), 2u);  // "a" at 0 and 1: newer at 3
    std::vector<int64_t> offsets;
    for (RecordView r : store.read("c", 0, 10)) {
        offsets.push_back(r.offset());
    }
    CHECK((offsets == std::vector<int64_t>{2, 3, 4}));
    CHECK_THROWS_CODE(plain, store.compact("plain"), MQS_INVALID_ARGUMENT);
    CHECK(test::contains(plain, "not compacted"));
}

void groups() {
    Store store = Store::open(test::dir("groups"));
    store.create_shard("a");
    store.create_shard("b");
    CHECK(!store.committed_offset("g1", "a").has_value());
    store.commit_offset("g1", "a", 5);
    store.commit_offset("g1", "b", 7);
    store.commit_offset("g2", "a", 1);
    store.commit_offset("g1", "a", 6);  // overwrite
    CHECK(store.committed_offset("g1", "a") == std::optional<int64_t>(6));
    CHECK(store.committed_offset("g1", "b") == std::optional<int64_t>(7));
    CHECK(store.committed_offset("g2", "a") == std::optional<int64_t>(1));
    CHECK(!store.committed_offset("g2", "b").has_value());
    CHECK_THROWS_CODE(empty, store.commit_offset("", "a", 1), MQS_INVALID_ARGUMENT);
    CHECK_THROWS_CODE(negative, store.commit_offset("g1", "a", -5), MQS_INVALID_ARGUMENT);
    CHECK_EQ(store.delete_group("g1"), 2u);
    CHECK_EQ(store.delete_group("g1"), 0u);
    CHECK(!store.committed_offset("g1", "a").has_value());
    // Deleting a shard drops its group offsets.
    store.delete_shard("a");
    store.create_shard("a");
    CHECK(!store.committed_offset("g2", "a").has_value());
}

void record_limits() {
    Store store = Store::open(test::dir("limits"), std::string("[store]\nmax_record_bytes = 1024"));
    store.create_shard("s");
    std::string small(900, 's');
    std::string large(2000, 'L');
    Message ok;
    ok.value = small;
    CHECK_EQ(store.append("s", ok), 0);
    Message too_big;
    too_big.value = large;
    CHECK_THROWS_CODE(msg, store.append("s", too_big), MQS_RECORD_TOO_LARGE);
    CHECK(test::contains(msg, "1024"));
    // Batches are all or nothing.
    CHECK_THROWS_CODE(batch, store.append_batch("s", {ok, too_big, ok}), MQS_RECORD_TOO_LARGE);
    CHECK_EQ(store.shard_info("s").next_offset, 1);
    CHECK_EQ(store.append("s", ok), 1);
}

void invalid_records() {
    Store store = Store::open(test::dir("invalid-records"));
    store.create_shard("s");
    Message reserved;
    reserved.headers = {{"__mqs.tag", std::string_view("x")}};
    CHECK_THROWS_CODE(prefix, store.append("s", reserved), MQS_INVALID_ARGUMENT);
    CHECK(test::contains(prefix, "__mqs."));
    Message negative;
    negative.timestamp_ms = -5;
    CHECK_THROWS_CODE(ts, store.append("s", negative), MQS_INVALID_ARGUMENT);
    Message bad_header;
    bad_header.headers = {{"\xff\xfe", std::nullopt}};
    CHECK_THROWS_CODE(utf8_header, store.append("s", bad_header), MQS_INVALID_ARGUMENT);
    Message bad_tag;
    bad_tag.tags = {"\xc3"};
    CHECK_THROWS_CODE(utf8_tag, store.append("s", bad_tag), MQS_INVALID_ARGUMENT);
    CHECK_THROWS_CODE(empty_batch, store.append_batch("s", {}), MQS_INVALID_ARGUMENT);
    CHECK_EQ(store.shard_info("s").next_offset, 0);  // nothing was written
}

void expiry() {
    Store store = Store::open(test::dir("expiry"));
    store.create_shard("s");
    Message expired;
    expired.value = "old";
    expired.expire_at_ms = now_ms() - 1000;
    Message live;
    live.value = "new";
    live.expire_at_ms = now_ms() + 3600 * 1000;
    Message forever;
    forever.value = "forever";
    store.append_batch("s", {expired, live, forever});
    ReadResult result = store.read("s", 0, 10);
    CHECK_EQ(other::join_values(result), "new,forever");
    CHECK_EQ(result.next_offset(), 3);
    CHECK(result[0].expire_at_ms().has_value());
    CHECK(!result[1].expire_at_ms().has_value());
}

void move_semantics() {
    std::string dir_a = test::dir("move-a");
    std::string dir_b = test::dir("move-b");
    Store a = Store::open(dir_a);
    a.create_shard("s");

    // Move construction: the source is empty, safe to use-check and destroy.
    Store b(std::move(a));
    CHECK(!a.valid());
    CHECK(b.valid());
    CHECK_EQ(b.list_shards().size(), 1u);
    CHECK_THROWS_CODE(use, a.create_shard("x"), MQS_INVALID_HANDLE);
    CHECK(test::contains(use, "moved from"));
    CHECK_THROWS_CODE(use2, a.read("s", 0, 1), MQS_INVALID_HANDLE);
    CHECK_THROWS_CODE(use3, a.stats(), MQS_INVALID_HANDLE);
    CHECK_THROWS_CODE(use4, a.close(), MQS_INVALID_HANDLE);

    // Move assignment closes the target's store first: its directory lock is
    // released, so it can be opened again.
    Store c = Store::open(dir_b);
    c = std::move(b);
    CHECK(!b.valid());
    CHECK_EQ(c.list_shards().size(), 1u);
    Store reopened_b = Store::open(dir_b);
    CHECK(reopened_b.valid());
    CHECK_THROWS_CODE(locked, Store::open(dir_a), MQS_LOCKED);  // still held, by c

    // Self-move-assignment keeps the store.
    Store &alias = c;
    c = std::move(alias);
    CHECK(c.valid());

    // Assigning into a moved-from Store revives it.
    a = std::move(c);
    CHECK(a.valid());
    CHECK_EQ(a.list_shards().size(), 1u);

    // Returned by value from another translation unit.
    Store d = other::open_store(test::dir("move-d"));
    CHECK(d.valid());

    // ReadResult: move construction/assignment; the moved-from one is empty.
    other::append_numbered(a, "s", 0, 4);
    ReadResult r1 = a.read("s", 0, 10);
    ReadResult r2(std::move(r1));
    CHECK_EQ(r1.size(), 0u);
    CHECK(r1.begin() == r1.end());
    CHECK_EQ(r1.next_offset(), -1);
    CHECK(r1.native_handle() == nullptr);
    CHECK_EQ(r2.size(), 4u);
    ReadResult r3 = a.read("s", 2, 10);
    r3 = std::move(r2);  // frees r3's batch (valgrind checks)
    CHECK_EQ(other::join_values(r3), "value-0,value-1,value-2,value-3");
    ReadResult &self = r3;
    r3 = std::move(self);
    CHECK_EQ(r3.size(), 4u);
    std::vector<ReadResult> results;
    for (int i = 0; i < 10; ++i) {
        results.push_back(a.read("s", i % 4, 10));  // vector growth moves them
    }
    CHECK_EQ(results[9].size(), 3u);
    CHECK_EQ(results[0][0].value(), "value-0");
}

void results_outlive_store() {
    ReadResult result = other::read_then_destroy_store(test::dir("outlive"));
    CHECK_EQ(other::join_values(result), "value-1,value-2,value-3,value-4");
    CHECK_EQ(result.next_offset(), 5);
    CHECK(result[0].key() == std::optional<std::string_view>("k1"));
    CHECK(result[3].has_tag("even"));

    // Also with an explicit close() and the store still in scope.
    Store store = Store::open(test::dir("outlive-2"));
    store.create_shard("s");
    other::append_numbered(store, "s", 0, 3);
    ReadResult kept = store.read("s", 0, 10);
    store.close();
    CHECK_EQ(other::join_values(kept), "value-0,value-1,value-2");
}

void stats_json() {
    Store store = Store::open(test::dir("stats"));
    store.create_shard("alpha");
    store.create_shard("beta");
    other::append_numbered(store, "alpha", 0, 3);
    std::string all = store.stats();
    CHECK(all.size() > 2 && all.front() == '{' && all.back() == '}');
    CHECK(test::contains(all, "\"shard_count\""));
    CHECK(test::contains(all, "\"alpha\""));
    CHECK(test::contains(all, "\"beta\""));
    std::string one = store.stats(std::string("alpha"));
    CHECK(one.front() == '{');
    CHECK(test::contains(one, "\"records\":3") || test::contains(one, "\"records\": 3"));
}

void threads() {
    Store store = Store::open(test::dir("threads"));
    store.create_shard("s");
    constexpr int kThreads = 4;
    constexpr int kPerThread = 250;
    std::vector<std::vector<int64_t>> offsets(kThreads);
    std::vector<std::string> messages(kThreads);
    std::vector<std::thread> workers;
    for (int t = 0; t < kThreads; ++t) {
        workers.emplace_back([&, t] {
            std::string value = "thread-" + std::to_string(t);
            Message m;
            m.value = value;
            for (int i = 0; i < kPerThread; ++i) {
                offsets[t].push_back(store.append("s", m));
            }
            // Errors are per thread: each sees the message of its own failure.
            std::string missing = "missing-" + std::to_string(t);
            try {
                store.read(missing, 0, 1);
            } catch (const mqstore::Error &e) {
                messages[t] = e.what();
            }
        });
    }
    for (auto &w : workers) {
        w.join();
    }
    std::set<int64_t> all;
    for (auto &list : offsets) {
        all.insert(list.begin(), list.end());
        CHECK(std::is_sorted(list.begin(), list.end()));
    }
    CHECK_EQ(all.size(), static_cast<std::size_t>(kThreads * kPerThread));
    CHECK_EQ(*all.rbegin(), kThreads * kPerThread - 1);
    for (int t = 0; t < kThreads; ++t) {
        CHECK(test::contains(messages[t], "missing-" + std::to_string(t)));
    }
    CHECK_EQ(store.shard_info("s").records, static_cast<uint64_t>(kThreads * kPerThread));
}

void c_interop() {
    // The wrapper and the C API mix: native handles, Error::from_last_call.
    Store store = Store::open(test::dir("interop"));
    CHECK_EQ(mqs_shard_create(store.native_handle(), "from-c", nullptr), MQS_OK);
    CHECK_EQ(store.list_shards().size(), 1u);
    mqs_status status = mqs_shard_create(store.native_handle(), "from-c", nullptr);
    mqstore::Error error = mqstore::Error::from_last_call(status);
    CHECK_EQ(error.code(), MQS_SHARD_EXISTS);
    CHECK(test::contains(error.what(), "from-c"));
    mqs_batch *raw = nullptr;
    CHECK_EQ(mqs_read(store.native_handle(), "from-c", 0, 10, 100, &raw), MQS_OK);
    ReadResult adopted(raw);  // takes ownership
    CHECK(adopted.empty());
    CHECK(adopted.native_handle() == raw);
}

// Pipelined appends: batches in flight, acknowledged through wait_durable().
constexpr int kPipeBatches = 50;
constexpr int kPipePerBatch = 6;
constexpr std::size_t kPipeWindow = 8;

/// Values of varying length (0 to 32 bytes of padding).
std::string pipe_value(int n) {
    return "pipe-" + std::to_string(n) + std::string(static_cast<std::size_t>(n % 33), 'p');
}

/// Checks that shard holds exactly the records pipeline_fill() wrote (up to
/// offset kPipeBatches * kPipePerBatch).
void pipeline_verify(const Store &store, const std::string &shard) {
    const int total = kPipeBatches * kPipePerBatch;
    ReadResult all = store.read(shard, 0, static_cast<std::size_t>(total));
    CHECK_EQ(all.size(), static_cast<std::size_t>(total));
    CHECK_EQ(all.next_offset(), total);
    int mismatches = 0;
    int64_t expect = 0;
    for (RecordView r : all) {
        const std::string key = "k" + std::to_string(expect);
        if (r.offset() != expect || r.value() != pipe_value(static_cast<int>(expect)) ||
            r.key() != std::optional<std::string_view>(key)) {
            ++mismatches;
        }
        ++expect;
    }
    CHECK_EQ(mismatches, 0);
}

/// Appends kPipeBatches batches with append_batch_nowait(), at most
/// kPipeWindow unacknowledged (waits on the oldest when the window is full),
/// then waits for the rest.
void pipeline_fill(Store &store, const std::string &shard) {
    std::deque<int64_t> in_flight;
    std::size_t max_in_flight = 0;
    int dense = 0;
    int readable = 0;
    for (int b = 0; b < kPipeBatches; ++b) {
        if (in_flight.size() == kPipeWindow) {
            store.wait_durable(shard, in_flight.front());
            in_flight.pop_front();
        }
        std::vector<std::string> keys, values;
        std::vector<Message> batch(kPipePerBatch);
        for (int i = 0; i < kPipePerBatch; ++i) {
            keys.push_back("k" + std::to_string(b * kPipePerBatch + i));
            values.push_back(pipe_value(b * kPipePerBatch + i));
        }
        for (int i = 0; i < kPipePerBatch; ++i) {
            batch[i].key = keys[i];
            batch[i].value = values[i];
        }
        int64_t base = store.append_batch_nowait(shard, batch);
        if (base == static_cast<int64_t>(b) * kPipePerBatch) {
            ++dense;
        }
        in_flight.push_back(base);
        max_in_flight = std::max(max_in_flight, in_flight.size());
        // Readable before it is acknowledged.
        ReadResult now = store.read(shard, base, 100);
        if (now.size() == static_cast<std::size_t>(kPipePerBatch) && now[0].offset() == base &&
            now[kPipePerBatch - 1].value() == values.back()) {
            ++readable;
        }
    }
    CHECK_EQ(dense, kPipeBatches);  // dense, increasing base offsets
    CHECK_EQ(readable, kPipeBatches);
    CHECK_EQ(max_in_flight, kPipeWindow);
    while (!in_flight.empty()) {
        store.wait_durable(shard, in_flight.front());
        in_flight.pop_front();
    }
    const int64_t total = kPipeBatches * kPipePerBatch;
    store.wait_durable(shard, total - 1);  // throws on failure (fails the case)
    CHECK_EQ(store.shard_info(shard).next_offset, total);
}

void pipelined_appends() {
    const std::string dir = test::dir("pipelined");
    {
        Store store = Store::open(dir);
        store.create_shard("durable");  // journal, durability fsync: the defaults
        store.create_shard("mem", std::string("engine = \"memory\""));
        CHECK_EQ(store.shard_info("durable").engine, std::string("journal"));
        CHECK_EQ(store.shard_info("mem").engine, std::string("memory"));
        for (const char *shard : {"durable", "mem"}) {
            pipeline_fill(store, shard);
            pipeline_verify(store, shard);
        }
        store.close();
    }
    Store store = Store::open(dir);
    const int64_t total = kPipeBatches * kPipePerBatch;
    CHECK_EQ(store.shard_info("durable").next_offset, total);
    pipeline_verify(store, "durable");
    store.wait_durable("durable", total - 1);
    Message more;
    more.value = "after reopen";
    CHECK_EQ(store.append_batch_nowait("durable", {more, more}), total);
    store.wait_durable("durable", total);
    CHECK_EQ(store.read("durable", total + 1, 10)[0].value(), "after reopen");
}

void pipelined_errors() {
    Store store = Store::open(test::dir("pipelined-errors"), std::string("[store]\nmax_record_bytes = 1024"));
    store.create_shard("s");
    Message m;
    m.value = "v";
    CHECK_EQ(store.append_batch_nowait("s", {m, m, m}), 0);
    CHECK_THROWS_CODE(at_next, store.wait_durable("s", 3), MQS_OFFSET_OUT_OF_RANGE);
    CHECK(test::contains(at_next, "offset 3 was never appended to shard 's' (its next offset is 3)"));
    CHECK_THROWS_CODE(negative, store.wait_durable("s", -1), MQS_OFFSET_OUT_OF_RANGE);
    CHECK(test::contains(negative, "offset -1"));
    CHECK_THROWS_CODE(unknown_wait, store.wait_durable("nope", 0), MQS_SHARD_NOT_FOUND);
    CHECK(test::contains(unknown_wait, "nope"));
    CHECK_THROWS_CODE(unknown_append, store.append_batch_nowait("nope", {m}), MQS_SHARD_NOT_FOUND);
    CHECK(test::contains(unknown_append, "nope"));
    CHECK_THROWS_CODE(empty, store.append_batch_nowait("s", {}), MQS_INVALID_ARGUMENT);
    CHECK(test::contains(empty, "at least one record"));
    std::string large(2000, 'L');
    Message too_big;
    too_big.value = large;
    CHECK_THROWS_CODE(big, store.append_batch_nowait("s", {m, too_big}), MQS_RECORD_TOO_LARGE);
    CHECK(test::contains(big, "1024"));
    store.wait_durable("s", 2);
    CHECK_EQ(store.shard_info("s").next_offset, 3);  // failed batches stored nothing
    store.close();
    CHECK_THROWS_CODE(closed, store.wait_durable("s", 0), MQS_INVALID_HANDLE);
    CHECK_THROWS_CODE(closed_append, store.append_batch_nowait("s", {m}), MQS_INVALID_HANDLE);
}

/// An event loop on one thread: thousands of batches in flight through
/// append_batch_notify(), acknowledged via durable_fd() and poll_durable(),
/// every one in order.
void event_loop() {
    Store store = Store::open(test::dir("event-loop"));
    store.create_shard("s");  // journal, fsync
    const int fd = store.durable_fd();
    CHECK(fd >= 0);
    CHECK_EQ(store.durable_fd(), fd);
    Message m;
    m.value = "event-loop payload";
    const std::vector<Message> batch{m, m, m, m};
    constexpr uint64_t kBatches = 3000;
    std::vector<int64_t> bases;
    for (uint64_t token = 0; token < kBatches; token++)
        bases.push_back(store.append_batch_notify("s", batch, token));
    std::vector<Store::Completion> done;
    while (done.size() < kBatches) {
        pollfd pfd{fd, POLLIN, 0};
        CHECK_EQ(::poll(&pfd, 1, 60000), 1);
        CHECK(store.poll_durable(done, 100) > 0);
    }
    bool in_order = true;
    for (uint64_t i = 0; i < kBatches; i++)
        in_order = in_order && done[i].token == i && done[i].offset == bases[i] && done[i].status == MQS_OK;
    CHECK(in_order);
    pollfd pfd{fd, POLLIN, 0};
    CHECK_EQ(::poll(&pfd, 1, 0), 0);
    CHECK_EQ(store.poll_durable(done), std::size_t{0});

    const int64_t base = store.append_batch_nowait("s", {m});
    store.watch_durable("s", base, 42);
    CHECK_EQ(::poll(&pfd, 1, 60000), 1);
    done.clear();
    CHECK_EQ(store.poll_durable(done), std::size_t{1});
    CHECK(done[0].token == 42 && done[0].offset == base && done[0].status == MQS_OK);

    CHECK_THROWS_CODE(past, store.watch_durable("s", base + 1, 1), MQS_OFFSET_OUT_OF_RANGE);
    CHECK_THROWS_CODE(unknown, store.watch_durable("nope", 0, 1), MQS_SHARD_NOT_FOUND);
    CHECK_THROWS_CODE(empty, store.append_batch_notify("s", {}, 1), MQS_INVALID_ARGUMENT);
    CHECK_THROWS_CODE(zero, store.poll_durable(done, 0), MQS_INVALID_ARGUMENT);
    store.close();
    CHECK_THROWS_CODE(closed_fd, store.durable_fd(), MQS_INVALID_HANDLE);
    CHECK_THROWS_CODE(closed_poll, store.poll_durable(done), MQS_INVALID_HANDLE);
    CHECK_THROWS_CODE(closed_watch, store.watch_durable("s", 0, 1), MQS_INVALID_HANDLE);
}

}  // namespace

int main(int argc, char **argv) {
    if (argc == 3 && std::string(argv[1]) == "--hold-store") {
        return other::hold_store(argv[2]);
    }
    test::self_path() = argv[0];
    char scratch[] = "/tmp/mqstore-cpp-test-XXXXXX";
    if (::mkdtemp(scratch) == nullptr) {
        std::perror("mkdtemp");
        return 2;
    }
    test::base_dir() = scratch;

    test::run("version and status", version_and_status);
    test::run("open and close", open_close);
    test::run("directory lock and destructor", directory_lock_and_destructor);
    test::run("bad configuration", bad_configuration);
    test::run("shards", shards);
    test::run("round trip", round_trip);
    test::run("batches and reads", batches_and_reads);
    test::run("read by keys and tags", keys_and_tags);
    test::run("offset for timestamp", timestamps);
    test::run("deletes", deletes);
    test::run("compaction", compaction);
    test::run("shards created together", shards_created_together);
    test::run("consumer groups", groups);
    test::run("record limits", record_limits);
    test::run("invalid records", invalid_records);
    test::run("expiry", expiry);
    test::run("move semantics", move_semantics);
    test::run("results outlive the store", results_outlive_store);
    test::run("stats", stats_json);
    test::run("threads", threads);
    test::run("C interop", c_interop);
    test::run("pipelined appends: window, read back, reopen", pipelined_appends);
    test::run("pipelined appends: errors", pipelined_errors);
    test::run("event loop: durable_fd, append_batch_notify, poll_durable", event_loop);
    other::transfer_tests();

    std::error_code ignored;
    std::filesystem::remove_all(scratch, ignored);

    std::printf("%d passed, %d failed\n", test::passed(), test::failed());
    return test::failed() == 0 ? 0 : 1;
}
