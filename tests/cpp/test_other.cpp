// Second translation unit: includes mqstore.hpp again (ODR check: the link
// fails if the header defines anything non-inline) and provides helpers and
// the transfer tests to test_main.cpp.
#include "mqstore.hpp"

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.hpp"

namespace other {

int64_t append_numbered(mqstore::Store &store, const std::string &shard, int first, int count) {
    // The strings must outlive append_batch: Message only borrows them.
    std::vector<std::string> keys, values, indexes;
    keys.reserve(count);
    values.reserve(count);
    indexes.reserve(count);
    std::vector<mqstore::Message> messages(count);
    for (int i = 0; i < count; ++i) {
        int n = first + i;
        keys.push_back("k" + std::to_string(n));
        values.push_back("value-" + std::to_string(n));
        indexes.push_back(std::to_string(n));
        messages[i].key = keys.back();
        messages[i].value = values.back();
        messages[i].tags = {n % 2 == 0 ? "even" : "odd"};
        messages[i].headers = {{"index", std::string_view(indexes.back())}};
        messages[i].timestamp_ms = 1000 + 10 * n;
    }
    return store.append_batch(shard, messages);
}

std::string join_values(const mqstore::ReadResult &result) {
    std::string out;
    for (mqstore::RecordView record : result) {
        if (!out.empty()) {
            out += ',';
        }
        out += record.value();
    }
    return out;
}

mqstore::ReadResult read_then_destroy_store(const std::string &dir) {
    mqstore::Store store = mqstore::Store::open(dir);
    store.create_shard("ephemeral");
    append_numbered(store, "ephemeral", 0, 5);
    mqstore::ReadResult result = store.read("ephemeral", 1, 10);
    store.delete_shard("ephemeral");
    return result;  // store is closed and freed here; result keeps its batch
}

mqstore::Store open_store(const std::string &dir, const std::optional<std::string> &config) {
    mqstore::Store store = mqstore::Store::open(dir, config);
    return store;
}

namespace {

uint64_t be(const std::string &bytes, std::size_t at, int width) {
    uint64_t v = 0;
    for (int i = 0; i < width; ++i) {
        v = (v << 8) | static_cast<unsigned char>(bytes[at + i]);
    }
    return v;
}

/// Walks Kafka RecordBatch v2 headers. Returns false if the stream is not a
/// sequence of whole batches; otherwise sets the batch count, the first base
/// offset and one past the last offset.
bool parse_batches(const std::string &bytes, int &batches, int64_t &first, int64_t &end) {
    batches = 0;
    first = -1;
    end = -1;
    std::size_t pos = 0;
    while (pos < bytes.size()) {
        if (bytes.size() - pos < 61) {
            return false;
        }
        int64_t base = static_cast<int64_t>(be(bytes, pos, 8));
        uint64_t length = be(bytes, pos + 8, 4);
        int magic = static_cast<unsigned char>(bytes[pos + 16]);
        int64_t last_delta = static_cast<int32_t>(be(bytes, pos + 23, 4));
        if (magic != 2 || pos + 12 + length > bytes.size()) {
            return false;
        }
        if (batches == 0) {
            first = base;
        } else if (base < end) {
            return false;
        }
        end = base + last_delta + 1;
        ++batches;
        pos += 12 + length;
    }
    return true;
}

/// Reads whatever is available on a non-blocking fd.
void drain(int fd, std::string &out) {
    char buffer[65536];
    for (;;) {
        ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n > 0) {
            out.append(buffer, static_cast<std::size_t>(n));
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            return;  // EAGAIN or EOF
        }
    }
}

std::string read_to_eof(int fd) {
    std::string out;
    char buffer[65536];
    for (;;) {
        ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n > 0) {
            out.append(buffer, static_cast<std::size_t>(n));
        } else if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            if (errno == EAGAIN) {
                pollfd p{fd, POLLIN, 0};
                ::poll(&p, 1, -1);
            }
        } else {
            return out;
        }
    }
}

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

/// 64 batches of 16 records with 4 KiB values (4 MiB+ in all): more than a
/// Unix socket buffer holds.
void fill_big(mqstore::Store &store, const std::string &shard) {
    std::string payload(4096, 'x');
    for (int b = 0; b < 64; ++b) {
        std::vector<mqstore::Message> batch(16);
        for (auto &m : batch) {
            m.value = payload;
        }
        store.append_batch(shard, batch);
    }
}

void socket_transfer_resumes() {
    mqstore::Store store = mqstore::Store::open(test::dir("transfer"));
    store.create_shard("big");
    fill_big(store, "big");

    mqstore::Transfer transfer = store.plan_transfer("big", 0);
    uint64_t total = transfer.total_bytes();
    CHECK(total > (4u << 20));
    CHECK_EQ(transfer.next_offset(), 1024);
    CHECK_EQ(transfer.sent_bytes(), 0u);
    CHECK(!transfer.complete());

    int fds[2];
    CHECK_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    set_nonblocking(fds[0]);
    set_nonblocking(fds[1]);

    std::string received;
    int would_block = 0;
    uint64_t written_sum = 0;
    for (;;) {
        uint64_t written = 0;
        bool done = transfer.send(fds[0], written);
        written_sum += written;
        if (done) {
            break;
        }
        ++would_block;
        CHECK_EQ(transfer.sent_bytes(), written_sum);  // progress kept
        drain(fds[1], received);
    }
    ::close(fds[0]);
    received += read_to_eof(fds[1]);
    ::close(fds[1]);

    CHECK(would_block >= 1);
    CHECK_EQ(written_sum, total);
    CHECK_EQ(static_cast<uint64_t>(received.size()), total);
    CHECK_EQ(transfer.sent_bytes(), total);
    CHECK(transfer.complete());
    int batches = 0;
    int64_t first = 0, end = 0;
    CHECK(parse_batches(received, batches, first, end));
    CHECK_EQ(batches, 64);
    CHECK_EQ(first, 0);
    CHECK_EQ(end, transfer.next_offset());

    // A complete transfer sends nothing more.
    int spare[2];
    CHECK_EQ(::pipe(spare), 0);
    uint64_t again = 99;
    CHECK(transfer.send(spare[1], again));
    CHECK_EQ(again, 0u);
    ::close(spare[0]);
    ::close(spare[1]);

    // max_bytes smaller than one batch still yields one whole batch.
    mqstore::Transfer one = store.plan_transfer("big", 0, 1);
    CHECK_EQ(one.next_offset(), 16);
    CHECK(one.total_bytes() > 16u * 4096u);
    CHECK(one.total_bytes() < 17u * 4096u + 4096u);

    // From the middle of a batch: the whole batch is sent (whole batches only).
    mqstore::Transfer mid = store.plan_transfer("big", 20, 1);
    CHECK_EQ(mid.next_offset(), 32);

    // At the high watermark: nothing to send; complete at once.
    mqstore::Transfer empty = store.plan_transfer("big", 1024);
    CHECK_EQ(empty.total_bytes(), 0u);
    CHECK_EQ(empty.next_offset(), 1024);
    int pipefd[2];
    CHECK_EQ(::pipe(pipefd), 0);
    CHECK(empty.send(pipefd[1]));
    ::close(pipefd[0]);
    ::close(pipefd[1]);

    CHECK_THROWS_CODE(msg, store.plan_transfer("big", 5000), MQS_OFFSET_OUT_OF_RANGE);
    CHECK_THROWS_CODE(msg2, store.plan_transfer("nope", 0), MQS_SHARD_NOT_FOUND);
    CHECK(test::contains(msg2, "nope"));
}

// The hybrid engine's tiering as fast as it goes: every batch is due at
// once and the tierer looks every millisecond, so a hybrid shard's data
// moves to its cold tier (S3) within milliseconds.
const char *const HYBRID_TIERING = "[hybrid]\nhot_duration_ms = 0\ntier_interval_ms = 1\n";

/// Waits (at most 60 s) until hybrid shard `shard` holds the offsets below
/// `at_least` in its cold tier (its stats' "boundary"); returns the boundary.
int64_t wait_tiered(mqstore::Store &store, const std::string &shard, int64_t at_least) {
    int64_t boundary = -1;
    for (int i = 0; i < 6000 && boundary < at_least; ++i) {
        if (i > 0) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        std::string json = store.stats(shard);
        std::size_t at = json.find("\"boundary\":");
        boundary = at == std::string::npos ? -1 : std::strtoll(json.c_str() + at + 11, nullptr, 10);
    }
    return boundary;
}

void transfer_outlives_store(const std::string &config) {
    static int stores = 0;
    bool hybrid = test::contains(config, "hybrid");
    std::optional<mqstore::Transfer> kept;
    {
        mqstore::Store store = mqstore::Store::open(test::dir("transfer-outlives" + std::to_string(stores++)), config);
        store.create_shard("s");
        append_numbered(store, "s", 0, 10);
        if (hybrid) {
            CHECK_EQ(wait_tiered(store, "s", 10), 10);  // planned from the cold tier
        }
        mqstore::Transfer planned = store.plan_transfer("s", 0);
        append_numbered(store, "s", 10, 10);  // later appends change nothing planned
        kept.emplace(std::move(planned));
        CHECK(!planned.valid());
        CHECK_THROWS_CODE(msg, planned.total_bytes(), MQS_INVALID_HANDLE);
        CHECK_THROWS_CODE(msg2, planned.send(1), MQS_INVALID_HANDLE);
        store.delete_shard("s");
        store.close();
    }
    CHECK_EQ(kept->next_offset(), 10);
    int fds[2];
    CHECK_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    CHECK(kept->send(fds[0]));  // small: fits the socket buffer
    ::close(fds[0]);
    std::string received = read_to_eof(fds[1]);
    ::close(fds[1]);
    CHECK_EQ(static_cast<uint64_t>(received.size()), kept->total_bytes());
    int batches = 0;
    int64_t first = 0, end = 0;
    CHECK(parse_batches(received, batches, first, end));
    CHECK_EQ(batches, 1);
    CHECK_EQ(end, 10);
}

void transfer_outlives_store_and_moves() {
    // The journal's plans hold buffers and files; RocksDB's a snapshot,
    // read into memory when the store closes; MySQL's and Redis's the
    // batches, fetched when planned; S3's (and the hybrid engine's, once
    // they moved to its cold tier) fetch them when sent, from objects kept
    // until the plan goes, also after the shard's removal.
    transfer_outlives_store("");
    transfer_outlives_store("[shard]\nengine = \"rocksdb\"\n");
    transfer_outlives_store("[shard]\nengine = \"mysql\"\n");
    transfer_outlives_store("[shard]\nengine = \"redis\"\n");
    transfer_outlives_store("[shard]\nengine = \"s3\"\n");
    transfer_outlives_store(std::string("[shard]\nengine = \"hybrid\"\n") + HYBRID_TIERING);

    // Move assignment frees the target's plan (valgrind checks) and empties the source.
    mqstore::Store store = mqstore::Store::open(test::dir("transfer-move"));
    store.create_shard("s");
    append_numbered(store, "s", 0, 3);
    mqstore::Transfer a = store.plan_transfer("s", 0);
    mqstore::Transfer b = store.plan_transfer("s", 1);
    a = std::move(b);
    CHECK(a.valid());
    CHECK(!b.valid());
    CHECK_EQ(a.next_offset(), 3);
}

void transfer_errors() {
    mqstore::Store store = mqstore::Store::open(test::dir("transfer-errors"));
    store.create_shard("s");
    append_numbered(store, "s", 0, 3);

    // Closed peer: an I/O error, not SIGPIPE.
    {
        mqstore::Transfer t = store.plan_transfer("s", 0);
        int fds[2];
        CHECK_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
        ::close(fds[1]);
        CHECK_THROWS_CODE(msg, t.send(fds[0]), MQS_IO);
        ::close(fds[0]);
    }
    // A bad descriptor fails with an error (not MQS_WOULD_BLOCK, not a crash).
    {
        mqstore::Transfer t = store.plan_transfer("s", 0);
        auto error = test::error_of([&] { t.send(-1); });
        CHECK(error.has_value());
        CHECK(error && error->code() != MQS_WOULD_BLOCK && error->code() != MQS_OK);
    }
    CHECK_THROWS_CODE(msg, store.sendfile_to_fd("s", 0, mqstore::UNLIMITED, -1), MQS_INVALID_ARGUMENT);
    CHECK_THROWS_CODE(msg2, store.sendfile_to_fd("missing", 0, mqstore::UNLIMITED, 1), MQS_SHARD_NOT_FOUND);
}

void sendfile_to_file_and_socket() {
    mqstore::Store store = mqstore::Store::open(test::dir("sendfile"));
    store.create_shard("big");
    fill_big(store, "big");
    uint64_t total = store.plan_transfer("big", 0).total_bytes();

    // To a regular file (not a socket: the writev path).
    char path[] = "/tmp/mqstore-cpp-sendfile-XXXXXX";
    int file = ::mkstemp(path);
    CHECK(file >= 0);
    ::unlink(path);
    mqstore::SendfileResult to_file = store.sendfile_to_fd("big", 0, mqstore::UNLIMITED, file);
    CHECK_EQ(to_file.bytes_written, total);
    CHECK_EQ(to_file.next_offset, 1024);
    ::lseek(file, 0, SEEK_SET);
    std::string file_bytes = read_to_eof(file);
    ::close(file);
    CHECK_EQ(static_cast<uint64_t>(file_bytes.size()), total);

    // To a full non-blocking socket: sendfile_to_fd waits instead of failing.
    int fds[2];
    CHECK_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    set_nonblocking(fds[0]);
    std::string socket_bytes;
    std::thread reader([&] { socket_bytes = read_to_eof(fds[1]); });
    mqstore::SendfileResult to_socket = store.sendfile_to_fd("big", 0, mqstore::UNLIMITED, fds[0]);
    ::close(fds[0]);
    reader.join();
    ::close(fds[1]);
    CHECK_EQ(to_socket.bytes_written, total);
    CHECK_EQ(to_socket.next_offset, 1024);
    CHECK(socket_bytes == file_bytes);
    int batches = 0;
    int64_t first = 0, end = 0;
    CHECK(parse_batches(socket_bytes, batches, first, end));
    CHECK_EQ(batches, 64);

    // A byte limit: whole batches, continuing where the next one starts.
    int pipefd[2];
    CHECK_EQ(::pipe(pipefd), 0);
    std::string piped;
    std::thread pipe_reader([&] { piped = read_to_eof(pipefd[0]); });  // a batch exceeds the pipe buffer
    mqstore::SendfileResult limited = store.sendfile_to_fd("big", 16, 1, pipefd[1]);
    ::close(pipefd[1]);
    pipe_reader.join();
    ::close(pipefd[0]);
    CHECK_EQ(limited.next_offset, 32);
    CHECK_EQ(static_cast<uint64_t>(piped.size()), limited.bytes_written);
    CHECK(parse_batches(piped, batches, first, end));
    CHECK_EQ(first, 16);
    CHECK_EQ(end, 32);
}

void file_engine_roundtrip() {
    const std::string dir = test::dir("file-engine");
    const std::string config = "preset = \"edge\"\n";
    std::vector<std::string> values;
    {
        mqstore::Store store = mqstore::Store::open(dir, config);
        store.create_shard("f", std::string("segment_bytes = 65536\ndurability = \"fsync\""));
        for (int b = 0; b < 20; ++b) {
            std::vector<mqstore::Message> batch(10);
            for (int i = 0; i < 10; ++i) {
                values.push_back("file-" + std::to_string(b * 10 + i) + std::string(500, 'v'));
            }
            for (int i = 0; i < 10; ++i) {
                batch[i].value = values[b * 10 + i];
            }
            CHECK_EQ(store.append_batch("f", batch), b * 10);
        }
        mqstore::ShardInfo info = store.shard_info("f");
        CHECK_EQ(info.engine, std::string("file"));
        CHECK_EQ(info.next_offset, 200);
        mqstore::ReadResult all = store.read("f", 0, 1000, mqstore::UNLIMITED);
        CHECK_EQ(all.size(), static_cast<std::size_t>(200));
        int64_t expect = 0;
        for (mqstore::RecordView record : all) {
            CHECK_EQ(record.offset(), expect);
            CHECK(record.value() == values[static_cast<std::size_t>(expect)]);
            ++expect;
        }
        char path[] = "/tmp/mqstore-cpp-file-engine-XXXXXX";
        int file = ::mkstemp(path);
        CHECK(file >= 0);
        ::unlink(path);
        mqstore::SendfileResult sent = store.sendfile_to_fd("f", 0, mqstore::UNLIMITED, file);
        CHECK_EQ(sent.next_offset, 200);
        CHECK_EQ(sent.bytes_written, info.bytes);
        ::lseek(file, 0, SEEK_SET);
        std::string bytes = read_to_eof(file);
        ::close(file);
        int batches = 0;
        int64_t first = 0, end = 0;
        CHECK(parse_batches(bytes, batches, first, end));
        CHECK_EQ(batches, 20);
        CHECK_EQ(end, 200);
        store.close();
    }
    mqstore::Store store = mqstore::Store::open(dir, config);
    CHECK_EQ(store.shard_info("f").next_offset, 200);
    mqstore::ReadResult one = store.read("f", 123, 1, mqstore::UNLIMITED);
    CHECK_EQ(one.size(), static_cast<std::size_t>(1));
    for (mqstore::RecordView record : one) {
        CHECK(record.value() == values[123]);
    }
    mqstore::Message more;
    more.value = "after reopen";
    CHECK_EQ(store.append("f", more), 200);
    store.close();
}

}  // namespace

/// Reads the rest of a transfer, `piece` bytes per read_into().
std::string read_rest(mqstore::Transfer &transfer, std::size_t piece) {
    std::string out;
    std::vector<char> buf(piece);
    for (;;) {
        bool complete = false;
        std::size_t n = transfer.read_into(buf.data(), buf.size(), complete);
        out.append(buf.data(), n);
        if (complete || n == 0) {
            CHECK(complete);
            return out;
        }
        if (!CHECK_EQ(n, piece)) {  // short only at the end
            return out;
        }
    }
}

void transfer_read_into() {
    // The hybrid engine's batches all moved to its cold tier (their
    // timestamps are from 1970: hot_bytes cannot keep some local here;
    // the C test's plans span both tiers).
    const std::string configs[] = {"",
                                   "[shard]\nengine = \"memory\"\n",
                                   "[shard]\nengine = \"file\"\n",
                                   "[shard]\nengine = \"rocksdb\"\n",
                                   "[shard]\nengine = \"mysql\"\n",
                                   "[shard]\nengine = \"redis\"\n",
                                   "[shard]\nengine = \"s3\"\n",
                                   std::string("[shard]\nengine = \"hybrid\"\n") + HYBRID_TIERING};
    for (std::size_t c = 0; c < std::size(configs); ++c) {
        mqstore::Store store = mqstore::Store::open(test::dir("read-into-" + std::to_string(c)), configs[c]);
        store.create_shard("s");
        for (int b = 0; b < 4; ++b) {
            append_numbered(store, "s", 50 * b, 50);
        }
        if (test::contains(configs[c], "hybrid")) {
            CHECK_EQ(wait_tiered(store, "s", 200), 200);
        }
        std::string reference;
        {
            mqstore::Transfer sent = store.plan_transfer("s", 0);
            int fds[2];
            CHECK_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
            std::thread reader([&] { reference = read_to_eof(fds[1]); });
            CHECK(sent.send(fds[0]));
            ::close(fds[0]);
            reader.join();
            ::close(fds[1]);
        }
        int batches = 0;
        int64_t first = 0, end = 0;
        CHECK(parse_batches(reference, batches, first, end));
        CHECK_EQ(batches, 4);
        CHECK_EQ(end, 200);
        for (std::size_t piece : {std::size_t{1}, std::size_t{7}, std::size_t{4096}}) {
            mqstore::Transfer transfer = store.plan_transfer("s", 0);
            std::string got = read_rest(transfer, piece);
            CHECK(got == reference);
            CHECK(transfer.complete());
            char spare[8];
            CHECK_EQ(transfer.read_into(spare, sizeof spare), 0u);
        }

        // Read a part, send the rest, then nothing is left to read.
        mqstore::Transfer mixed = store.plan_transfer("s", 0);
        std::string head(1000, '\0');
        CHECK_EQ(mixed.read_into(head.data(), head.size()), 1000u);
        CHECK_EQ(mixed.sent_bytes(), 1000u);
        int fds[2];
        CHECK_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
        std::string tail;
        std::thread reader([&] { tail = read_to_eof(fds[1]); });
        uint64_t written = 0;
        CHECK(mixed.send(fds[0], written));
        ::close(fds[0]);
        reader.join();
        ::close(fds[1]);
        CHECK_EQ(written + 1000u, mixed.total_bytes());
        CHECK(head + tail == reference);
        bool complete = false;
        CHECK_EQ(mixed.read_into(head.data(), 1, complete), 0u);
        CHECK(complete);
    }
}

void append_raw() {
    const char *configs[] = {"", "[shard]\nengine = \"memory\"\n", "[shard]\nengine = \"file\"\n"};
    for (int c = 0; c < 3; ++c) {
        mqstore::Store store = mqstore::Store::open(test::dir("append-raw-" + std::to_string(c)), configs[c]);
        store.create_shard("src");
        store.create_shard("dst");
        for (int b = 0; b < 3; ++b) {
            append_numbered(store, "src", 10 * b, 10);
        }
        // The producer's bytes: what a consumer of "src" receives.
        mqstore::Transfer plan = store.plan_transfer("src", 0);
        std::string sent = read_rest(plan, 4096);
        append_numbered(store, "dst", 0, 2);
        mqstore::Store::RawAppend stored = store.append_raw("dst", sent.data(), sent.size());
        CHECK_EQ(stored.base_offset, 2);
        CHECK_EQ(stored.batches, static_cast<std::size_t>(3));
        mqstore::ReadResult read = store.read("dst", 2, 100, mqstore::UNLIMITED);
        CHECK_EQ(read.size(), static_cast<std::size_t>(30));
        int64_t expected = 2;
        for (mqstore::RecordView record : read) {
            CHECK_EQ(record.offset(), expected++);
        }
        std::string bad = sent;
        bad[bad.size() - 1] ^= 0x20;
        CHECK_THROWS_CODE(msg, store.append_raw("dst", bad.data(), bad.size()), MQS_CORRUPTION);
        CHECK(test::contains(msg, "batch 2"));
        CHECK_EQ(store.shard_info("dst").next_offset, 32);
        CHECK_THROWS_CODE(empty, store.append_raw("dst", sent.data(), 0), MQS_INVALID_ARGUMENT);
        CHECK_THROWS_CODE(null, store.append_raw("dst", nullptr, 5), MQS_INVALID_ARGUMENT);
        mqstore::Store::RawAppend later = store.append_raw_nowait("dst", sent.data(), sent.size());
        CHECK_EQ(later.base_offset, 32);
        CHECK(!later.duplicate);
        store.wait_durable("dst", 61);
        // An idempotent producer's batch (producer id 5, epoch 0, sequence 0),
        // then its retry.
        std::string idempotent = sent.substr(0, 12 + be(sent, 8, 4));
        const unsigned char producer[14] = {0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0};
        std::memcpy(idempotent.data() + 43, producer, sizeof producer);
        uint32_t crc = test::crc32c(idempotent.data() + 21, idempotent.size() - 21);
        for (int i = 0; i < 4; ++i) {
            idempotent[17 + i] = static_cast<char>(crc >> (24 - 8 * i));
        }
        mqstore::Store::RawAppend stored_once = store.append_raw("dst", idempotent.data(), idempotent.size());
        mqstore::Store::RawAppend retried = store.append_raw("dst", idempotent.data(), idempotent.size());
        CHECK(!stored_once.duplicate && retried.duplicate);
        // A follower copies "src" byte for byte.
        store.create_shard("follower");
        CHECK_EQ(store.append_replica("follower", sent.data(), sent.size()), 30);
        mqstore::Transfer copied = store.plan_transfer("follower", 0);
        CHECK(read_rest(copied, 4096) == sent);
        CHECK_THROWS_CODE(gap, store.append_replica("follower", sent.data(), sent.size()), MQS_INVALID_ARGUMENT);
        CHECK_EQ(retried.base_offset, stored_once.base_offset);
        CHECK_EQ(store.shard_info("dst").next_offset, stored_once.base_offset + 10);
    }
}

void null_values() {
    mqstore::Store store = mqstore::Store::open(test::dir("null-values"));
    store.create_shard("t");
    mqstore::Message tombstone;
    tombstone.key = "gone";
    tombstone.value = std::nullopt;
    mqstore::Message empty;
    empty.key = "kept";
    store.append_batch("t", {tombstone, empty});
    mqstore::ReadResult read = store.read("t", 0, 10, mqstore::UNLIMITED);
    CHECK_EQ(read.size(), static_cast<std::size_t>(2));
    CHECK(!read[0].nullable_value().has_value());
    CHECK(read[0].value().empty());
    CHECK(read[1].nullable_value().has_value() && read[1].nullable_value()->empty());
    CHECK(read[0].key() == std::optional<std::string_view>("gone"));
}

void log_callback() {
    std::string dir = test::dir("log-callback");
    const char *config = "[shard]\nengine = \"file\"\ndurability = \"os\"\n";
    {
        mqstore::Store store = mqstore::Store::open(dir, config);
        store.create_shard("f");
        append_numbered(store, "f", 0, 10);
        store.close();
    }
    std::string segment = dir + "/file/00000000000000000001/00000000000000000000.log";
    FILE *file = std::fopen(segment.c_str(), "ab");
    CHECK(file != nullptr);
    std::fputs("half a batch", file);
    std::fclose(file);
    std::vector<std::pair<int, std::string>> events;
    mqstore::set_log_callback([&events](int level, std::string_view message) {
        events.emplace_back(level, std::string(message));
    });
    mqstore::Store store = mqstore::Store::open(dir, config);
    mqstore::set_log_callback(nullptr);  // delivers what was queued
    CHECK_EQ(events.size(), static_cast<std::size_t>(1));
    CHECK_EQ(events[0].first, static_cast<int>(MQS_LOG_WARN));
    CHECK(test::contains(events[0].second, "torn tail"));
    CHECK_EQ(store.shard_info("f").next_offset, 10);
}

void transfer_read_into_errors() {
    mqstore::Store store = mqstore::Store::open(test::dir("read-into-errors"));
    store.create_shard("s");
    append_numbered(store, "s", 0, 3);
    mqstore::Transfer t = store.plan_transfer("s", 0);
    char buf[16];
    CHECK_THROWS_CODE(msg, t.read_into(nullptr, 16), MQS_INVALID_ARGUMENT);
    CHECK(test::contains(msg, "`buf` is NULL"));
    CHECK_THROWS_CODE(msg2, t.read_into(buf, 0), MQS_INVALID_ARGUMENT);
    CHECK(test::contains(msg2, "empty"));
    CHECK_EQ(t.sent_bytes(), 0u);
    CHECK_EQ(t.read_into(buf, sizeof buf), sizeof buf);
    mqstore::Transfer moved = std::move(t);
    CHECK_THROWS_CODE(msg3, t.read_into(buf, sizeof buf), MQS_INVALID_HANDLE);
    CHECK_EQ(moved.sent_bytes(), sizeof buf);
}

int hold_store(const std::string &dir) {
    try {
        mqstore::Store store = mqstore::Store::open(dir, std::string("[shard]\nengine = \"rocksdb\"\n"));
        if (::write(STDOUT_FILENO, "H", 1) != 1) {
            return 2;
        }
        char c;
        while (::read(STDIN_FILENO, &c, 1) > 0) {
        }
        store.close();
        return 0;
    } catch (const std::exception &) {
        return 1;
    }
}

// A RocksDB directory another process holds open (a second store whose
// rocksdb/ is a symlink to the first one's, opened while a helper process,
// this program with --hold-store, holds the first) is MQS_LOCKED; a
// damaged one (CURRENT naming a missing MANIFEST) MQS_CORRUPTION; both name
// the directory.
void rocksdb_bad_directories() {
    const std::string config = "[shard]\nengine = \"rocksdb\"\n";
    const std::string a = test::dir("rocksdb-a"), b = test::dir("rocksdb-b");
    {
        mqstore::Store store = mqstore::Store::open(a, config);
        store.create_shard("r");
        append_numbered(store, "r", 0, 3);
    }
    CHECK_EQ(::mkdir(b.c_str(), 0700), 0);
    CHECK_EQ(::symlink((a + "/rocksdb").c_str(), (b + "/rocksdb").c_str()), 0);
    int in[2], out[2];
    CHECK_EQ(::pipe(in), 0);
    CHECK_EQ(::pipe(out), 0);
    std::fflush(nullptr);
    pid_t holder = ::fork();
    if (holder == 0) {
        ::dup2(in[0], STDIN_FILENO);
        ::dup2(out[1], STDOUT_FILENO);
        ::close(in[1]);
        ::close(out[0]);
        const char *self = test::self_path().c_str();
        ::execl(self, self, "--hold-store", a.c_str(), static_cast<char *>(nullptr));
        ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    char said = 0;
    CHECK_EQ(::read(out[0], &said, 1), 1);
    ::close(out[0]);
    CHECK_THROWS_CODE(locked, mqstore::Store::open(b, config), MQS_LOCKED);
    CHECK(test::contains(locked, "rocksdb"));
    ::close(in[1]);
    int status = 0;
    CHECK_EQ(::waitpid(holder, &status, 0), holder);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    {
        mqstore::Store store = mqstore::Store::open(b, config);
        CHECK_EQ(store.read("r", 0, 10, mqstore::UNLIMITED).size(), static_cast<std::size_t>(3));
    }
    {
        std::FILE *current = std::fopen((a + "/rocksdb/CURRENT").c_str(), "w");
        CHECK(current != nullptr);
        if (current != nullptr) {
            std::fputs("MANIFEST-999999\n", current);
            std::fclose(current);
        }
    }
    CHECK_THROWS_CODE(damaged, mqstore::Store::open(a, config), MQS_CORRUPTION);
    CHECK(test::contains(damaged, "rocksdb"));
}

void transfer_tests() {
    test::run("transfer: socketpair, non-blocking resume", socket_transfer_resumes);
    test::run("transfer: outlives store, move semantics", transfer_outlives_store_and_moves);
    test::run("transfer: errors", transfer_errors);
    test::run("transfer: read_into buffers of 1, 7, 4096 bytes, mixed with send", transfer_read_into);
    test::run("transfer: read_into errors", transfer_read_into_errors);
    test::run("append_raw: producer batches stored as sent, bad requests store nothing", append_raw);
    test::run("null values: a tombstone is not an empty value", null_values);
    test::run("log callback: a torn tail cut at open is reported", log_callback);
    test::run("sendfile_to_fd: file, socket, pipe", sendfile_to_file_and_socket);
    test::run("file engine: segments, views, sendfile, reopen", file_engine_roundtrip);
    test::run("rocksdb engine: locked and damaged directories", rocksdb_bad_directories);
}

}  // namespace other
