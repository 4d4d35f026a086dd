/*
 * C API tests: every function of include/mqstore.h, success and error paths.
 * Plain C11 (+ POSIX for sockets, temp dirs and threads). Run by
 * tests/c/run.sh, directly and under valgrind. Prints "N passed, M failed"
 * and exits non-zero on any failure.
 */
#define _XOPEN_SOURCE 700

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "mqstore.h"

/* ------------------------------------------------------------------ helpers */

static char g_root[64];
static int g_store_counter = 0;

static void new_store_dir(char *out, size_t size) {
    snprintf(out, size, "%s/store%d", g_root, g_store_counter++);
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void remove_tree(const char *path) {
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static mqs_store *open_store(const char *config_toml) {
    char dir[128];
    new_store_dir(dir, sizeof dir);
    mqs_store *store = NULL;
    mqs_status status = mqs_store_open(dir, config_toml, &store);
    REQUIRE(status == MQS_OK && store != NULL);
    return store;
}

static mqs_slice text(const char *s) {
    mqs_slice slice;
    slice.data = (const uint8_t *)s;
    slice.len = strlen(s);
    return slice;
}

static const mqs_slice NO_SLICE = {NULL, 0};

static bool slice_is(mqs_slice slice, const char *expected) {
    size_t len = strlen(expected);
    return slice.data != NULL && slice.len == len && memcmp(slice.data, expected, len) == 0;
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static mqs_record_in value_record(const char *value) {
    mqs_record_in record = {.key = NO_SLICE, .value = text(value)};
    return record;
}

static mqs_record_in keyed_record(const char *key, const char *value) {
    mqs_record_in record = {.key = text(key), .value = text(value)};
    return record;
}

/* Reads from `offset` (limits as given); requires success. */
static mqs_batch *read_ok(mqs_store *store, const char *shard, int64_t offset, size_t max_records,
                          size_t max_bytes, const mqs_record **records, size_t *count) {
    mqs_batch *batch = NULL;
    mqs_status status = mqs_read(store, shard, offset, max_records, max_bytes, &batch);
    REQUIRE(status == MQS_OK && batch != NULL);
    REQUIRE(mqs_batch_records(batch, records, count) == MQS_OK);
    return batch;
}

static void set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    REQUIRE(flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0);
}

/* Reads exactly `len` bytes from a blocking descriptor. */
static bool read_exact(int fd, uint8_t *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        got += (size_t)n;
    }
    return true;
}

/* ---------------------------------------------- RecordBatch parsing (Kafka) */

static uint32_t crc32c_table[256];

static void crc32c_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t crc = i;
        for (int bit = 0; bit < 8; bit++) {
            crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
        }
        crc32c_table[i] = crc;
    }
}

static uint32_t crc32c(const uint8_t *data, size_t len) {
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++) {
        crc = crc32c_table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
    }
    return crc ^ 0xFFFFFFFFu;
}

static uint64_t be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

struct batch_walk {
    size_t batches;
    int64_t first_base_offset;
    int64_t next_offset; /* last batch's baseOffset + lastOffsetDelta + 1 */
    size_t bytes;        /* bytes covered by whole batches */
    bool valid;          /* magic 2, CRCs match, offsets increase, no partial batch */
};

/* Walks the RecordBatch v2 headers of a transfer's byte stream. */
static struct batch_walk walk_batches(const uint8_t *data, size_t len) {
    struct batch_walk walk = {0, -1, -1, 0, true};
    size_t pos = 0;
    while (pos < len) {
        if (len - pos < 61) {
            walk.valid = false;
            break;
        }
        const uint8_t *b = data + pos;
        int64_t base_offset = (int64_t)be64(b);
        int32_t batch_length = (int32_t)be32(b + 8);
        int8_t magic = (int8_t)b[16];
        uint32_t crc = be32(b + 17);
        int32_t last_offset_delta = (int32_t)be32(b + 23);
        if (magic != 2 || batch_length < 49 || (size_t)batch_length + 12 > len - pos) {
            walk.valid = false;
            break;
        }
        size_t total = (size_t)batch_length + 12;
        if (crc32c(b + 21, total - 21) != crc) {
            walk.valid = false;
        }
        if (walk.batches == 0) {
            walk.first_base_offset = base_offset;
        } else if (base_offset < walk.next_offset) {
            walk.valid = false;
        }
        walk.next_offset = base_offset + last_offset_delta + 1;
        walk.batches++;
        walk.bytes += total;
        pos += total;
    }
    return walk;
}

/* ------------------------------------------------------------------- tests */

static void test_version_and_status_strings(void) {
    /* Before any failure, the last error is "". */
    CHECK(mqs_last_error_message() != NULL && strcmp(mqs_last_error_message(), "") == 0);

    char expected[32];
    snprintf(expected, sizeof expected, "%d.%d.%d", MQS_VERSION_MAJOR, MQS_VERSION_MINOR,
             MQS_VERSION_PATCH);
    CHECK(strcmp(mqs_version(), expected) == 0);
    CHECK(strcmp(mqs_version(), "0.2.0") == 0);

    CHECK(strcmp(mqs_status_str(MQS_OK), "ok") == 0);
    CHECK(strcmp(mqs_status_str(MQS_INVALID_ARGUMENT), "invalid argument") == 0);
    CHECK(strcmp(mqs_status_str(MQS_INVALID_HANDLE), "invalid handle") == 0);
    CHECK(strcmp(mqs_status_str(MQS_WOULD_BLOCK), "operation would block") == 0);
    CHECK(strcmp(mqs_status_str(MQS_LOCKED), "store directory locked") == 0);
    for (int s = MQS_OK; s <= MQS_LOCKED; s++) {
        const char *name = mqs_status_str((mqs_status)s);
        CHECK(name != NULL && strlen(name) > 0 && strcmp(name, "unknown status") != 0);
    }
    CHECK(strcmp(mqs_status_str((mqs_status)99), "unknown status") == 0);
    CHECK(strcmp(mqs_status_str((mqs_status)-1), "unknown status") == 0);
    CHECK(MQS_TIMESTAMP_EARLIEST == -2 && MQS_TIMESTAMP_LATEST == -1);
}

/* Every engine the product knows, by the name the configuration uses. */
static const char *const KNOWN_ENGINES[] = {"memory", "journal", "file", "rocksdb",
                                            "mysql",  "redis",   "s3",   "hybrid"};
enum { KNOWN_ENGINE_COUNT = sizeof KNOWN_ENGINES / sizeof KNOWN_ENGINES[0] };

/* Whether mqs_engines lists `engine` (it is in this build). */
static bool engine_available(const char *engine) {
    mqs_names *names = NULL;
    REQUIRE(mqs_engines(&names) == MQS_OK && names != NULL);
    bool found = false;
    for (size_t i = 0; i < mqs_names_count(names); i++) {
        found |= strcmp(mqs_names_get(names, i), engine) == 0;
    }
    CHECK_OK(mqs_names_free(names));
    return found;
}

/* The engines of this build: the default build has every engine the
 * product knows (memory, journal, file, rocksdb, mysql, redis, s3 and
 * hybrid), each listed once, and nothing else. */
static void test_engines(void) {
    mqs_names *names = (mqs_names *)0x1;
    CHECK_OK(mqs_engines(&names));
    size_t n = mqs_names_count(names);
    CHECK(n == KNOWN_ENGINE_COUNT);
    for (size_t k = 0; k < KNOWN_ENGINE_COUNT; k++) {
        size_t listed = 0;
        for (size_t i = 0; i < n; i++) {
            listed += strcmp(mqs_names_get(names, i), KNOWN_ENGINES[k]) == 0;
        }
        if (listed != 1) {
            fprintf(stderr, "engine '%s' listed %zu times\n", KNOWN_ENGINES[k], listed);
        }
        CHECK(listed == 1);
    }
    CHECK_OK(mqs_names_free(names));
    CHECK_STATUS(mqs_engines(NULL), MQS_INVALID_ARGUMENT);
}

static void test_open_close_lock(void) {
    char dir[128];
    new_store_dir(dir, sizeof dir);
    mqs_store *store = NULL;
    CHECK_OK(mqs_store_open(dir, NULL, &store));
    REQUIRE(store != NULL);

    /* A second open of the same directory is refused while the first is open. */
    mqs_store *second = (mqs_store *)&dir; /* garbage that must be reset to NULL */
    CHECK_STATUS(mqs_store_open(dir, NULL, &second), MQS_LOCKED);
    CHECK(second == NULL);
    CHECK_MENTIONS("locked");

    CHECK_OK(mqs_store_close(store));
    /* Double close, and every use after close, is an invalid handle. */
    CHECK_STATUS(mqs_store_close(store), MQS_INVALID_HANDLE);
    CHECK_MENTIONS("store");
    CHECK_STATUS(mqs_shard_create(store, "s", NULL), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_store_close(NULL), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`store` is NULL");

    /* The lock is released by close: the directory opens again. */
    CHECK_OK(mqs_store_open(dir, "", &store));
    CHECK_OK(mqs_store_close(store));

    /* Argument checks. */
    store = (mqs_store *)&dir;
    CHECK_STATUS(mqs_store_open(NULL, NULL, &store), MQS_INVALID_ARGUMENT);
    CHECK(store == NULL);
    CHECK_MENTIONS("`dir` is NULL");
    CHECK_STATUS(mqs_store_open(dir, NULL, NULL), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`out_store` is NULL");
    CHECK_STATUS(mqs_store_open("\xff\xfe", NULL, &store), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("UTF-8");

    /* A directory path that is a regular file is an I/O error. */
    char file_path[160];
    snprintf(file_path, sizeof file_path, "%s/plain-file", g_root);
    FILE *f = fopen(file_path, "w");
    REQUIRE(f != NULL);
    fclose(f);
    CHECK_STATUS(mqs_store_open(file_path, NULL, &store), MQS_IO);
    CHECK(store == NULL);
}

/* A read-only open shares the store with other readers, reads it, and
 * refuses every change with MQS_UNSUPPORTED; a writer is locked out. */
static void test_read_only(void) {
    char dir[128];
    new_store_dir(dir, sizeof dir);
    const char *small = "[journal]\nsegment_bytes = 1048576\n";
    const char *read_only = "[store]\nread_only = true\n[journal]\nsegment_bytes = 1048576\n";
    mqs_store *store = NULL;
    CHECK_STATUS(mqs_store_open(dir, read_only, &store), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("not a store");
    CHECK_OK(mqs_store_open(dir, small, &store));
    CHECK_OK(mqs_shard_create(store, "s", NULL));
    mqs_record_in record = keyed_record("k", "v");
    int64_t offset = -1;
    CHECK_OK(mqs_append(store, "s", &record, &offset));
    CHECK_OK(mqs_store_close(store));

    mqs_store *first = NULL, *second = NULL, *writer = NULL;
    CHECK_OK(mqs_store_open(dir, read_only, &first));
    CHECK_OK(mqs_store_open(dir, read_only, &second));
    CHECK_STATUS(mqs_store_open(dir, small, &writer), MQS_LOCKED);
    struct mqs_shard_info info;
    memset(&info, 0, sizeof info);
    CHECK_OK(mqs_shard_get_info(second, "s", &info));
    CHECK(info.next_offset == 1 && info.records == 1);
    CHECK_STATUS(mqs_append(first, "s", &record, &offset), MQS_UNSUPPORTED);
    CHECK_MENTIONS("read-only");
    CHECK_STATUS(mqs_shard_create(first, "t", NULL), MQS_UNSUPPORTED);
    CHECK_STATUS(mqs_shard_delete(first, "s"), MQS_UNSUPPORTED);
    CHECK_OK(mqs_store_close(first));
    CHECK_OK(mqs_store_close(second));
}

static void test_bad_configs(void) {
    char dir[128];
    new_store_dir(dir, sizeof dir);
    mqs_store *store = (mqs_store *)&dir;

    CHECK_STATUS(mqs_store_open(dir, "[store]\nmax_recod_bytes = 10\n", &store),
                 MQS_INVALID_CONFIG);
    CHECK(store == NULL);
    CHECK_MENTIONS("max_recod_bytes");

    CHECK_STATUS(mqs_store_open(dir, "[shard]\ndurability = \"sometimes\"\n", &store),
                 MQS_INVALID_CONFIG);
    CHECK_MENTIONS("durability");
    CHECK_MENTIONS("sometimes");

    CHECK_STATUS(mqs_store_open(dir, "[store]\nmax_record_bytes = 0\n", &store),
                 MQS_INVALID_CONFIG);
    CHECK_MENTIONS("store.max_record_bytes");

    CHECK_STATUS(mqs_store_open(dir, "[shard]\ncompression = \"brotli\"\n", &store),
                 MQS_INVALID_CONFIG);
    CHECK_MENTIONS("shard.compression");

    CHECK_STATUS(mqs_store_open(dir, "this is not toml", &store), MQS_INVALID_CONFIG);
    CHECK_STATUS(mqs_store_open(dir, "colour = 1", &store), MQS_INVALID_CONFIG);
    CHECK_MENTIONS("colour");

    /* Every engine the product knows is the store's default engine when
     * it is in this build, and refused, not faked, when it is not (every
     * engine is in the default build; the edge build's Rust test,
     * registry::an_engine_not_in_the_build_is_unsupported, covers the
     * refusal). */
    for (size_t k = 0; k < KNOWN_ENGINE_COUNT; k++) {
        char config[64];
        snprintf(config, sizeof config, "[shard]\nengine = \"%s\"\n", KNOWN_ENGINES[k]);
        if (engine_available(KNOWN_ENGINES[k])) {
            CHECK_OK(mqs_store_open(dir, config, &store));
            REQUIRE(store != NULL);
            CHECK_OK(mqs_store_close(store));
        } else {
            CHECK_STATUS(mqs_store_open(dir, config, &store), MQS_UNSUPPORTED);
            CHECK(store == NULL);
            CHECK_MENTIONS(KNOWN_ENGINES[k]);
        }
        store = NULL;
    }

    /* The streaming preset opens on the journal engine. */
    CHECK_OK(mqs_store_open(dir, "preset = \"streaming\"\n", &store));
    REQUIRE(store != NULL);
    CHECK_OK(mqs_store_close(store));
    store = NULL;

    /* A valid preset on the memory engine. */
    CHECK_OK(mqs_store_open(dir, "preset = \"financial\"\n", &store));
    REQUIRE(store != NULL);

    /* Shard options: the memory engine cannot acknowledge with fsync. */
    CHECK_STATUS(mqs_shard_create(store, "durable", "durability = \"fsync\""), MQS_INVALID_CONFIG);
    CHECK_MENTIONS("durability");
    CHECK_STATUS(mqs_shard_create(store, "typo", "retention_recods = 5"), MQS_INVALID_CONFIG);
    CHECK_MENTIONS("retention_recods");
    CHECK_STATUS(mqs_shard_create(store, "small", "segment_bytes = 10"), MQS_INVALID_CONFIG);
    CHECK_MENTIONS("segment_bytes");
    CHECK_OK(mqs_shard_create(store, "fine", "retention_records = 100\ncompression = \"lz4\""));
    CHECK_OK(mqs_store_close(store));
}

static void test_shards_and_names(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "orders", NULL));
    CHECK_OK(mqs_shard_create(store, "alpha", NULL));
    CHECK_OK(mqs_shard_create(store, "zeta", NULL));
    CHECK_STATUS(mqs_shard_create(store, "orders", NULL), MQS_SHARD_EXISTS);
    CHECK_MENTIONS("orders");
    CHECK_STATUS(mqs_shard_create(store, "", NULL), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_shard_create(store, "bad\xff", NULL), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`name`");
    CHECK_STATUS(mqs_shard_create(store, NULL, NULL), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`name` is NULL");

    mqs_names *names = NULL;
    CHECK_OK(mqs_shard_list(store, &names));
    REQUIRE(names != NULL);
    CHECK(mqs_names_count(names) == 3);
    CHECK(strcmp(mqs_names_get(names, 0), "alpha") == 0);
    CHECK(strcmp(mqs_names_get(names, 1), "orders") == 0);
    CHECK(strcmp(mqs_names_get(names, 2), "zeta") == 0);
    CHECK(mqs_names_get(names, 3) == NULL);
    CHECK(mqs_names_get(NULL, 0) == NULL);
    CHECK(mqs_names_count(NULL) == 0);
    CHECK_OK(mqs_names_free(names));
    CHECK_STATUS(mqs_names_free(names), MQS_INVALID_HANDLE);
    CHECK_MENTIONS("mqs_names");
    CHECK(mqs_names_count(names) == 0);
    CHECK(mqs_names_get(names, 0) == NULL);
    CHECK_OK(mqs_names_free(NULL));

    struct mqs_shard_info info;
    memset(&info, 0, sizeof info);
    CHECK_OK(mqs_shard_get_info(store, "orders", &info));
    CHECK(info.first_offset == 0 && info.next_offset == 0);
    CHECK(info.records == 0 && info.bytes == 0);
    CHECK(info.engine != NULL && strcmp(info.engine, "journal") == 0);
    mqs_record_in record = keyed_record("k", "v");
    int64_t offset = -1;
    CHECK_OK(mqs_append(store, "orders", &record, &offset));
    CHECK(offset == 0);
    CHECK_OK(mqs_shard_get_info(store, "orders", &info));
    CHECK(info.next_offset == 1 && info.records == 1 && info.bytes > 61);

    info.first_offset = 1234;
    CHECK_STATUS(mqs_shard_get_info(store, "nope", &info), MQS_SHARD_NOT_FOUND);
    CHECK_MENTIONS("nope");
    CHECK(info.first_offset == 1234); /* out-params untouched on failure */
    CHECK_STATUS(mqs_shard_get_info(store, "orders", NULL), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`out_info` is NULL");

    CHECK_OK(mqs_shard_delete(store, "orders"));
    CHECK_STATUS(mqs_shard_delete(store, "orders"), MQS_SHARD_NOT_FOUND);
    CHECK_STATUS(mqs_shard_delete(store, NULL), MQS_INVALID_ARGUMENT);
    CHECK_OK(mqs_shard_list(store, &names));
    CHECK(mqs_names_count(names) == 2);
    CHECK_OK(mqs_names_free(names));

    /* The name can be reused, starting from offset 0 again. */
    CHECK_OK(mqs_shard_create(store, "orders", NULL));
    CHECK_OK(mqs_shard_get_info(store, "orders", &info));
    CHECK(info.next_offset == 0);

    names = (mqs_names *)&info;
    CHECK_STATUS(mqs_shard_list(NULL, &names), MQS_INVALID_ARGUMENT);
    CHECK(names == NULL);
    CHECK_STATUS(mqs_shard_list(store, NULL), MQS_INVALID_ARGUMENT);
    CHECK_OK(mqs_store_close(store));
}

static void test_append_and_read(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "events", NULL));
    int64_t before = now_ms();

    /* One record with everything: key, headers (one with a null value), tags. */
    mqs_header headers[2] = {{text("content-type"), text("json")}, {text("trace"), NO_SLICE}};
    mqs_slice tags[2] = {text("red"), text("blue")};
    mqs_record_in first = {
        .key = text("k1"),
        .value = text("hello"),
        .headers = headers,
        .header_count = 2,
        .tags = tags,
        .tag_count = 2,
    };
    int64_t offset = -1;
    CHECK_OK(mqs_append(store, "events", &first, &offset));
    CHECK(offset == 0);

    /* A batch: null key, empty key and value, expire-at, an expired record. */
    int64_t expire_at = now_ms() + 3600 * 1000;
    mqs_slice red[1] = {{(const uint8_t *)"red", 3}};
    mqs_record_in batch[4] = {
        {.key = NO_SLICE, .value = text("no key"), .tags = red, .tag_count = 1,
         .timestamp_ms = 1700000000000},
        {.key = {(const uint8_t *)"", 0}, .value = {(const uint8_t *)"", 0}},
        {.key = text("k2"), .value = text("x"), .expire_at_ms = expire_at},
        {.key = text("k3"), .value = text("gone"), .expire_at_ms = 1},
    };
    int64_t base = -1;
    CHECK_OK(mqs_append_batch(store, "events", batch, 4, &base));
    CHECK(base == 1);

    const mqs_record *records = NULL;
    size_t count = 0;
    int64_t next = -1;
    mqs_batch *result = read_ok(store, "events", 0, 100, 1 << 20, &records, &count);
    CHECK(count == 4); /* the expired record is skipped */
    CHECK_OK(mqs_batch_next_offset(result, &next));
    CHECK(next == 5);
    if (count == 4) {
        const mqs_record *r = &records[0];
        CHECK(r->offset == 0);
        CHECK(slice_is(r->key, "k1") && slice_is(r->value, "hello"));
        CHECK(r->timestamp_ms >= before - 1000 && r->timestamp_ms <= now_ms() + 1000);
        CHECK(r->expire_at_ms == 0);
        REQUIRE(r->header_count == 2 && r->headers != NULL);
        CHECK(slice_is(r->headers[0].key, "content-type"));
        CHECK(slice_is(r->headers[0].value, "json"));
        CHECK(slice_is(r->headers[1].key, "trace"));
        CHECK(r->headers[1].value.data == NULL && r->headers[1].value.len == 0);
        REQUIRE(r->tag_count == 2 && r->tags != NULL);
        CHECK(slice_is(r->tags[0], "red") && slice_is(r->tags[1], "blue"));

        r = &records[1];
        CHECK(r->offset == 1);
        CHECK(r->key.data == NULL && r->key.len == 0); /* absent key */
        CHECK(slice_is(r->value, "no key"));
        CHECK(r->timestamp_ms == 1700000000000);
        CHECK(r->header_count == 0 && r->headers == NULL);
        CHECK(r->tag_count == 1 && slice_is(r->tags[0], "red"));

        r = &records[2];
        CHECK(r->offset == 2);
        CHECK(r->key.data != NULL && r->key.len == 0); /* present, empty */
        CHECK(r->value.data != NULL && r->value.len == 0);
        CHECK(r->tag_count == 0 && r->tags == NULL);

        r = &records[3];
        CHECK(r->offset == 3);
        CHECK(slice_is(r->key, "k2") && slice_is(r->value, "x"));
        CHECK(r->expire_at_ms == expire_at);
    }
    CHECK_OK(mqs_batch_free(result));
    CHECK_STATUS(mqs_batch_free(result), MQS_INVALID_HANDLE); /* double free */
    CHECK_MENTIONS("mqs_batch");
    CHECK_STATUS(mqs_batch_records(result, &records, &count), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_batch_next_offset(result, &next), MQS_INVALID_HANDLE);
    CHECK_OK(mqs_batch_free(NULL));

    /* max_records and next_offset. */
    result = read_ok(store, "events", 0, 2, 1 << 20, &records, &count);
    CHECK(count == 2 && records[0].offset == 0 && records[1].offset == 1);
    CHECK_OK(mqs_batch_next_offset(result, &next));
    CHECK(next == 2);
    CHECK_OK(mqs_batch_free(result));
    result = read_ok(store, "events", next, 2, 1 << 20, &records, &count);
    CHECK(count == 2 && records[0].offset == 2 && records[1].offset == 3);
    CHECK_OK(mqs_batch_next_offset(result, &next));
    CHECK(next == 5); /* the expired record 4 is behind it too */
    CHECK_OK(mqs_batch_free(result));

    /* max_bytes: at least one record, then stop. */
    result = read_ok(store, "events", 0, 100, 1, &records, &count);
    CHECK(count == 1 && records[0].offset == 0);
    CHECK_OK(mqs_batch_next_offset(result, &next));
    CHECK(next == 1);
    CHECK_OK(mqs_batch_free(result));
    result = read_ok(store, "events", 1, 100, 8, &records, &count);
    CHECK(count == 2); /* "no key" (6 bytes) + the empty record (0 bytes) fit in 8 */
    CHECK_OK(mqs_batch_free(result));

    /* At the high watermark: an empty batch. */
    result = read_ok(store, "events", 5, 10, 1 << 20, &records, &count);
    CHECK(count == 0 && records == NULL);
    CHECK_OK(mqs_batch_next_offset(result, &next));
    CHECK(next == 5);
    CHECK_OK(mqs_batch_free(result));

    /* Errors: out of range, zero records, unknown shard, NULL arguments. */
    result = (mqs_batch *)&count;
    CHECK_STATUS(mqs_read(store, "events", 6, 10, 100, &result), MQS_OFFSET_OUT_OF_RANGE);
    CHECK(result == NULL);
    CHECK_MENTIONS("out of range");
    CHECK_STATUS(mqs_read(store, "events", -1, 10, 100, &result), MQS_OFFSET_OUT_OF_RANGE);
    CHECK_STATUS(mqs_read(store, "events", 0, 0, 100, &result), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("max_records");
    CHECK_STATUS(mqs_read(store, "missing", 0, 10, 100, &result), MQS_SHARD_NOT_FOUND);
    CHECK_MENTIONS("missing");
    CHECK_STATUS(mqs_read(NULL, "events", 0, 10, 100, &result), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`store` is NULL");
    CHECK_STATUS(mqs_read(store, NULL, 0, 10, 100, &result), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`shard` is NULL");
    CHECK_STATUS(mqs_read(store, "events", 0, 10, 100, NULL), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`out_batch` is NULL");
    result = read_ok(store, "events", 0, 1, 100, &records, &count);
    CHECK_STATUS(mqs_batch_records(result, NULL, &count), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`out_records` is NULL");
    CHECK_STATUS(mqs_batch_records(result, &records, NULL), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_batch_records(NULL, &records, &count), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`batch` is NULL");
    CHECK_STATUS(mqs_batch_next_offset(result, NULL), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_batch_next_offset(NULL, &next), MQS_INVALID_ARGUMENT);
    CHECK_OK(mqs_batch_free(result));

    /* append errors */
    CHECK_STATUS(mqs_append(store, "events", NULL, &offset), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`record` is NULL");
    CHECK_STATUS(mqs_append(store, "events", &first, NULL), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`out_offset` is NULL");
    CHECK_STATUS(mqs_append(NULL, "events", &first, &offset), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_append(store, NULL, &first, &offset), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_append(store, "missing", &first, &offset), MQS_SHARD_NOT_FOUND);
    CHECK_STATUS(mqs_append_batch(store, "events", NULL, 2, &base), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`records` is NULL");
    CHECK_STATUS(mqs_append_batch(store, "events", batch, 0, &base), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("at least one record");
    CHECK_STATUS(mqs_append_batch(store, "events", batch, 1, NULL), MQS_INVALID_ARGUMENT);
    mqs_record_in negative = value_record("v");
    negative.timestamp_ms = -5;
    CHECK_STATUS(mqs_append(store, "events", &negative, &offset), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("negative");

    struct mqs_shard_info info;
    CHECK_OK(mqs_shard_get_info(store, "events", &info));
    CHECK(info.next_offset == 5); /* no failed append stored anything */
    CHECK_OK(mqs_store_close(store));
}

static void test_invalid_records(void) {
    mqs_store *store = open_store("[store]\nmax_record_bytes = 1024\n");
    CHECK_OK(mqs_shard_create(store, "s", NULL));
    int64_t offset = -1;

    /* Oversized record. */
    static uint8_t big[2000];
    memset(big, 'b', sizeof big);
    mqs_record_in record = {.value = {big, sizeof big}};
    CHECK_STATUS(mqs_append(store, "s", &record, &offset), MQS_RECORD_TOO_LARGE);
    CHECK_MENTIONS("1024");
    record.value.len = 500;
    CHECK_OK(mqs_append(store, "s", &record, &offset));
    CHECK(offset == 0);
    mqs_record_in two[2] = {{.value = {big, 800}}, {.value = {big, 800}}};
    CHECK_OK(mqs_append_batch(store, "s", two, 2, &offset));
    CHECK(offset == 1);
    two[1].value.len = 1500;
    CHECK_STATUS(mqs_append_batch(store, "s", two, 2, &offset), MQS_RECORD_TOO_LARGE);

    /* Header keys and tags must be UTF-8; errors name record and field. */
    mqs_header bad_key[1] = {{{(const uint8_t *)"\xff\xfe", 2}, NO_SLICE}};
    mqs_record_in records[2] = {value_record("ok"), value_record("bad")};
    records[1].headers = bad_key;
    records[1].header_count = 1;
    CHECK_STATUS(mqs_append_batch(store, "s", records, 2, &offset), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("records[1].headers[0].key");
    CHECK_MENTIONS("UTF-8");

    mqs_slice bad_tags[2] = {text("fine"), {(const uint8_t *)"\xc3\x28", 2}};
    mqs_record_in tagged = value_record("t");
    tagged.tags = bad_tags;
    tagged.tag_count = 2;
    CHECK_STATUS(mqs_append(store, "s", &tagged, &offset), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("record[0].tags[1]");

    mqs_header null_key[1] = {{NO_SLICE, text("v")}};
    records[1].headers = null_key;
    CHECK_STATUS(mqs_append_batch(store, "s", records, 2, &offset), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("records[1].headers[0].key");

    mqs_header reserved[1] = {{text("__mqs.tag"), text("v")}};
    records[1].headers = reserved;
    CHECK_STATUS(mqs_append_batch(store, "s", records, 2, &offset), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("reserved");

    records[1].headers = NULL; /* count 1 with a NULL array */
    CHECK_STATUS(mqs_append_batch(store, "s", records, 2, &offset), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("records[1].headers");

    mqs_record_in null_data = {.value = {NULL, 5}};
    CHECK_STATUS(mqs_append(store, "s", &null_data, &offset), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("record[0].value");
    mqs_record_in dangling_key = {.key = {NULL, 3}, .value = text("v")};
    CHECK_STATUS(mqs_append(store, "s", &dangling_key, &offset), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("record[0].key");

    /* {NULL, 0} as a value is an empty value. */
    mqs_record_in empty = {.value = NO_SLICE};
    CHECK_OK(mqs_append(store, "s", &empty, &offset));
    CHECK(offset == 3);
    const mqs_record *out = NULL;
    size_t count = 0;
    mqs_batch *batch = read_ok(store, "s", 3, 1, 100, &out, &count);
    CHECK(count == 1 && out[0].value.data != NULL && out[0].value.len == 0);
    CHECK_OK(mqs_batch_free(batch));

    struct mqs_shard_info info;
    CHECK_OK(mqs_shard_get_info(store, "s", &info));
    CHECK(info.next_offset == 4 && info.records == 4);
    CHECK_OK(mqs_store_close(store));
}

static void test_read_by_keys_and_tag(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "s", NULL));
    mqs_slice red[1] = {{(const uint8_t *)"red", 3}};
    mqs_slice red_blue[2] = {{(const uint8_t *)"red", 3}, {(const uint8_t *)"blue", 4}};
    mqs_record_in records[5] = {
        {.key = text("a"), .value = text("0"), .tags = red, .tag_count = 1},
        {.key = text("b"), .value = text("1")},
        {.key = text("a"), .value = text("2"), .tags = red_blue, .tag_count = 2},
        {.key = NO_SLICE, .value = text("3"), .tags = red, .tag_count = 1},
        {.key = text("c"), .value = text("4")},
    };
    int64_t base = -1;
    CHECK_OK(mqs_append_batch(store, "s", records, 5, &base));
    CHECK(base == 0);

    mqs_slice keys[3] = {text("a"), text("c"), text("zzz")};
    mqs_batch *batch = NULL;
    const mqs_record *out = NULL;
    size_t count = 0;
    int64_t next = 0;
    CHECK_OK(mqs_read_by_keys(store, "s", keys, 3, 100, &batch));
    CHECK_OK(mqs_batch_records(batch, &out, &count));
    CHECK(count == 3);
    if (count == 3) {
        CHECK(out[0].offset == 0 && out[1].offset == 2 && out[2].offset == 4);
        CHECK(slice_is(out[2].key, "c") && slice_is(out[2].value, "4"));
    }
    CHECK_OK(mqs_batch_next_offset(batch, &next));
    CHECK(next == -1);
    CHECK_OK(mqs_batch_free(batch));

    CHECK_OK(mqs_read_by_keys(store, "s", keys, 3, 1, &batch));
    CHECK_OK(mqs_batch_records(batch, &out, &count));
    CHECK(count == 1 && out[0].offset == 0);
    CHECK_OK(mqs_batch_free(batch));

    CHECK_OK(mqs_read_by_keys(store, "s", NULL, 0, 10, &batch)); /* no keys: nothing */
    CHECK_OK(mqs_batch_records(batch, &out, &count));
    CHECK(count == 0);
    CHECK_OK(mqs_batch_free(batch));

    batch = (mqs_batch *)&count;
    CHECK_STATUS(mqs_read_by_keys(store, "s", NULL, 2, 10, &batch), MQS_INVALID_ARGUMENT);
    CHECK(batch == NULL);
    CHECK_MENTIONS("`keys`");
    mqs_slice null_key[2] = {text("a"), NO_SLICE};
    CHECK_STATUS(mqs_read_by_keys(store, "s", null_key, 2, 10, &batch), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("keys[1]");
    mqs_slice dangling[1] = {{NULL, 4}};
    CHECK_STATUS(mqs_read_by_keys(store, "s", dangling, 1, 10, &batch), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_read_by_keys(store, "nope", keys, 1, 10, &batch), MQS_SHARD_NOT_FOUND);
    CHECK_STATUS(mqs_read_by_keys(NULL, "s", keys, 1, 10, &batch), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_read_by_keys(store, "s", keys, 1, 10, NULL), MQS_INVALID_ARGUMENT);

    CHECK_OK(mqs_read_by_tag(store, "s", "red", 0, 100, &batch));
    CHECK_OK(mqs_batch_records(batch, &out, &count));
    CHECK(count == 3);
    if (count == 3) {
        CHECK(out[0].offset == 0 && out[1].offset == 2 && out[2].offset == 3);
    }
    CHECK_OK(mqs_batch_next_offset(batch, &next));
    CHECK(next == 5);
    CHECK_OK(mqs_batch_free(batch));

    CHECK_OK(mqs_read_by_tag(store, "s", "red", 1, 1, &batch));
    CHECK_OK(mqs_batch_records(batch, &out, &count));
    CHECK(count == 1 && out[0].offset == 2);
    CHECK(count == 1 && out[0].tag_count == 2 && slice_is(out[0].tags[1], "blue"));
    CHECK_OK(mqs_batch_next_offset(batch, &next));
    CHECK(next == 3);
    CHECK_OK(mqs_batch_free(batch));

    CHECK_OK(mqs_read_by_tag(store, "s", "blue", 0, 100, &batch));
    CHECK_OK(mqs_batch_records(batch, &out, &count));
    CHECK(count == 1 && out[0].offset == 2);
    CHECK_OK(mqs_batch_free(batch));

    CHECK_STATUS(mqs_read_by_tag(store, "s", NULL, 0, 10, &batch), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`tag` is NULL");
    CHECK_STATUS(mqs_read_by_tag(store, "s", "red", 0, 0, &batch), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_read_by_tag(store, "s", "red", 99, 10, &batch), MQS_OFFSET_OUT_OF_RANGE);
    CHECK_STATUS(mqs_read_by_tag(store, "nope", "red", 0, 10, &batch), MQS_SHARD_NOT_FOUND);
    CHECK(batch == NULL);
    CHECK_STATUS(mqs_read_by_tag(store, "s", "red", 0, 10, NULL), MQS_INVALID_ARGUMENT);
    CHECK_OK(mqs_store_close(store));
}

static void test_offset_for_timestamp(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "ts", NULL));
    mqs_record_in records[3] = {value_record("a"), value_record("b"), value_record("c")};
    records[0].timestamp_ms = 1000;
    records[1].timestamp_ms = 2000;
    records[2].timestamp_ms = 3000;
    int64_t base = -1;
    CHECK_OK(mqs_append_batch(store, "ts", records, 3, &base));
    mqs_record_in later = value_record("d");
    later.timestamp_ms = 5000;
    CHECK_OK(mqs_append(store, "ts", &later, &base));
    CHECK(base == 3);

    int64_t offset = 99;
    bool found = false;
    CHECK_OK(mqs_offset_for_timestamp(store, "ts", MQS_TIMESTAMP_EARLIEST, &offset, &found));
    CHECK(found && offset == 0);
    CHECK_OK(mqs_offset_for_timestamp(store, "ts", MQS_TIMESTAMP_LATEST, &offset, &found));
    CHECK(found && offset == 4);
    CHECK_OK(mqs_offset_for_timestamp(store, "ts", 1500, &offset, &found));
    CHECK(found && offset == 1);
    CHECK_OK(mqs_offset_for_timestamp(store, "ts", 2000, &offset, &found));
    CHECK(found && offset == 1);
    CHECK_OK(mqs_offset_for_timestamp(store, "ts", 0, &offset, &found));
    CHECK(found && offset == 0);
    CHECK_OK(mqs_offset_for_timestamp(store, "ts", 4000, &offset, &found));
    CHECK(found && offset == 3);
    CHECK_OK(mqs_offset_for_timestamp(store, "ts", 6000, &offset, &found));
    CHECK(!found && offset == -1);

    int64_t low = -1;
    CHECK_OK(mqs_delete_records_before(store, "ts", 2, &low));
    CHECK(low == 2);
    CHECK_OK(mqs_offset_for_timestamp(store, "ts", MQS_TIMESTAMP_EARLIEST, &offset, &found));
    CHECK(found && offset == 2);
    CHECK_OK(mqs_offset_for_timestamp(store, "ts", 1000, &offset, &found));
    CHECK(found && offset == 2);

    offset = 77;
    CHECK_STATUS(mqs_offset_for_timestamp(store, "ts", -3, &offset, &found), MQS_INVALID_ARGUMENT);
    CHECK(offset == 77);
    CHECK_STATUS(mqs_offset_for_timestamp(store, "nope", 0, &offset, &found),
                 MQS_SHARD_NOT_FOUND);
    CHECK_STATUS(mqs_offset_for_timestamp(store, "ts", 0, NULL, &found), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`out_offset` is NULL");
    CHECK_STATUS(mqs_offset_for_timestamp(store, "ts", 0, &offset, NULL), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`out_found` is NULL");
    CHECK_STATUS(mqs_offset_for_timestamp(NULL, "ts", 0, &offset, &found), MQS_INVALID_ARGUMENT);
    CHECK_OK(mqs_store_close(store));
}

/* truncate_to cuts whole batches from a boundary; errors name the problem. */
static void test_truncate_to(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "t", NULL));
    mqs_record_in records[4];
    for (int i = 0; i < 4; i++) {
        records[i] = keyed_record("k", "v");
    }
    int64_t base = -1;
    for (int batch = 0; batch < 3; batch++) {
        CHECK_OK(mqs_append_batch(store, "t", records, 4, &base));
    }
    CHECK_STATUS(mqs_truncate_to(store, "t", 6), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("batch boundary");
    CHECK_STATUS(mqs_truncate_to(store, "t", 13), MQS_OFFSET_OUT_OF_RANGE);
    CHECK_STATUS(mqs_truncate_to(store, "nope", 0), MQS_SHARD_NOT_FOUND);
    CHECK_STATUS(mqs_truncate_to(store, NULL, 0), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_truncate_to(NULL, "t", 0), MQS_INVALID_ARGUMENT);
    CHECK_OK(mqs_truncate_to(store, "t", 4));
    struct mqs_shard_info info;
    memset(&info, 0, sizeof info);
    CHECK_OK(mqs_shard_get_info(store, "t", &info));
    CHECK(info.next_offset == 4 && info.records == 4);
    CHECK_OK(mqs_append_batch(store, "t", records, 4, &base));
    CHECK(base == 4);

    /* The leader epoch appends write; it never goes back. */
    CHECK_OK(mqs_set_leader_epoch(store, "t", 3));
    CHECK_STATUS(mqs_set_leader_epoch(store, "t", 2), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("older than the current 3");
    CHECK_STATUS(mqs_set_leader_epoch(store, NULL, 3), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_set_leader_epoch(store, "nope", 3), MQS_SHARD_NOT_FOUND);
    CHECK_OK(mqs_store_close(store));
}

/* Shards created together: all or none. */
static void test_shards_create(void) {
    mqs_store *store = open_store(NULL);
    const char *names[] = {"a", "b", "c"};
    CHECK_OK(mqs_shards_create(store, names, 3, "retention_records = 9"));
    struct mqs_shard_info info;
    memset(&info, 0, sizeof info);
    CHECK_OK(mqs_shard_get_info(store, "c", &info));
    const char *again[] = {"d", "a"};
    CHECK_STATUS(mqs_shards_create(store, again, 2, NULL), MQS_SHARD_EXISTS);
    CHECK_STATUS(mqs_shard_get_info(store, "d", &info), MQS_SHARD_NOT_FOUND);
    const char *twice[] = {"e", "e"};
    CHECK_STATUS(mqs_shards_create(store, twice, 2, NULL), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("given twice");
    const char *with_null[] = {"f", NULL};
    CHECK_STATUS(mqs_shards_create(store, with_null, 2, NULL), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("names[1]");
    CHECK_STATUS(mqs_shards_create(store, NULL, 2, NULL), MQS_INVALID_ARGUMENT);
    CHECK_OK(mqs_shards_create(store, NULL, 0, NULL));
    CHECK_STATUS(mqs_shards_create(store, names, 1, "retention_records = -1"), MQS_INVALID_CONFIG);
    CHECK_OK(mqs_store_close(store));
}

/* A compacted shard: records need keys; compaction keeps the newest of each. */
static void test_compaction(void) {
    mqs_store *store = open_store(NULL);
    CHECK_STATUS(mqs_shard_create(store, "bad", "cleanup_policy = \"compact\"\nretention_ms = 5"),
                 MQS_INVALID_CONFIG);
    CHECK_MENTIONS("compact,delete");
    CHECK_OK(mqs_shard_create(store, "c", "cleanup_policy = \"compact\""));
    CHECK_OK(mqs_shard_create(store, "plain", NULL));
    mqs_record_in keyless;
    memset(&keyless, 0, sizeof keyless);
    keyless.value = text("v");
    int64_t offset = -1;
    CHECK_STATUS(mqs_append(store, "c", &keyless, &offset), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("has no key");
    const char *keys[] = {"a", "a", "b", "a", "z"};
    for (int i = 0; i < 5; i++) {
        mqs_record_in record = keyed_record(keys[i], "v");
        CHECK_OK(mqs_append(store, "c", &record, &offset));
    }
    uint64_t removed = 0;
    CHECK_OK(mqs_compact(store, "c", &removed));
    CHECK(removed == 2); /* offsets 0 and 1: "a" is newer at 3 */
    const mqs_record *records = NULL;
    size_t count = 0;
    mqs_batch *batch = read_ok(store, "c", 0, 10, 1 << 20, &records, &count);
    CHECK(count == 3 && records[0].offset == 2 && records[1].offset == 3);
    mqs_batch_free(batch);
    CHECK_STATUS(mqs_compact(store, "plain", &removed), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("not compacted");
    CHECK_STATUS(mqs_compact(store, "c", NULL), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_compact(store, NULL, &removed), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_compact(store, "nope", &removed), MQS_SHARD_NOT_FOUND);
    CHECK_OK(mqs_store_close(store));
}

static void test_deletes(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "del", NULL));
    const char *keys[10] = {"a", "b", "a", "c", "d", "e", "a", "f", "g", "h"};
    mqs_record_in records[10];
    for (int i = 0; i < 10; i++) {
        records[i] = keyed_record(keys[i], "value");
    }
    int64_t base = -1;
    CHECK_OK(mqs_append_batch(store, "del", records, 10, &base));

    mqs_slice doomed[1] = {{(const uint8_t *)"a", 1}};
    uint64_t deleted = 99;
    CHECK_OK(mqs_delete_by_keys(store, "del", doomed, 1, &deleted));
    CHECK(deleted == 3);
    CHECK_OK(mqs_delete_by_keys(store, "del", doomed, 1, &deleted));
    CHECK(deleted == 0);
    int64_t offsets[4] = {1, 5, 99, 2};
    CHECK_OK(mqs_delete_by_offsets(store, "del", offsets, 4, &deleted));
    CHECK(deleted == 2);
    CHECK_OK(mqs_delete_by_offsets(store, "del", NULL, 0, &deleted));
    CHECK(deleted == 0);

    struct mqs_shard_info info;
    CHECK_OK(mqs_shard_get_info(store, "del", &info));
    CHECK(info.records == 5 && info.next_offset == 10);
    const mqs_record *out = NULL;
    size_t count = 0;
    mqs_batch *batch = read_ok(store, "del", 0, 100, 1 << 20, &out, &count);
    CHECK(count == 5);
    if (count == 5) {
        CHECK(out[0].offset == 3 && out[1].offset == 4 && out[2].offset == 7 &&
              out[3].offset == 8 && out[4].offset == 9);
        CHECK(slice_is(out[0].key, "c") && slice_is(out[4].key, "h"));
    }
    CHECK_OK(mqs_batch_free(batch));

    int64_t low = -1;
    CHECK_OK(mqs_delete_records_before(store, "del", 4, &low));
    CHECK(low == 4);
    CHECK_OK(mqs_shard_get_info(store, "del", &info));
    CHECK(info.first_offset == 4 && info.records == 4);
    batch = (mqs_batch *)&count;
    CHECK_STATUS(mqs_read(store, "del", 3, 10, 100, &batch), MQS_OFFSET_OUT_OF_RANGE);
    CHECK(batch == NULL);
    batch = read_ok(store, "del", 4, 100, 1 << 20, &out, &count);
    CHECK(count == 4 && out[0].offset == 4);
    CHECK_OK(mqs_batch_free(batch));
    CHECK_OK(mqs_delete_records_before(store, "del", 1000, &low));
    CHECK(low == 10); /* clamped to the high watermark */
    CHECK_OK(mqs_shard_get_info(store, "del", &info));
    CHECK(info.records == 0 && info.first_offset == 10);

    low = 55;
    CHECK_STATUS(mqs_delete_records_before(store, "del", -1, &low), MQS_INVALID_ARGUMENT);
    CHECK(low == 55);
    CHECK_STATUS(mqs_delete_records_before(store, "del", 1, NULL), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_delete_records_before(store, "nope", 1, &low), MQS_SHARD_NOT_FOUND);
    CHECK_STATUS(mqs_delete_records_before(NULL, "del", 1, &low), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_delete_by_keys(store, "del", NULL, 1, &deleted), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_delete_by_keys(store, "del", doomed, 1, NULL), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`out_deleted` is NULL");
    mqs_slice null_key[1] = {NO_SLICE};
    CHECK_STATUS(mqs_delete_by_keys(store, "del", null_key, 1, &deleted), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("keys[0]");
    CHECK_STATUS(mqs_delete_by_keys(store, NULL, doomed, 1, &deleted), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_delete_by_offsets(store, "del", NULL, 3, &deleted), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`offsets`");
    CHECK_STATUS(mqs_delete_by_offsets(store, "del", offsets, 1, NULL), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_delete_by_offsets(store, "nope", offsets, 1, &deleted),
                 MQS_SHARD_NOT_FOUND);
    CHECK_STATUS(mqs_delete_by_offsets(NULL, "del", offsets, 1, &deleted),
                 MQS_INVALID_ARGUMENT);
    CHECK_OK(mqs_store_close(store));
}

static void test_groups(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "a", NULL));
    CHECK_OK(mqs_shard_create(store, "b", NULL));

    int64_t offset = 99;
    bool found = true;
    CHECK_OK(mqs_group_get(store, "g1", "a", &offset, &found));
    CHECK(!found && offset == -1);
    CHECK_OK(mqs_group_commit(store, "g1", "a", 3));
    CHECK_OK(mqs_group_commit(store, "g1", "b", 7));
    CHECK_OK(mqs_group_commit(store, "g2", "a", 1));
    CHECK_OK(mqs_group_get(store, "g1", "a", &offset, &found));
    CHECK(found && offset == 3);
    CHECK_OK(mqs_group_commit(store, "g1", "a", 4));
    CHECK_OK(mqs_group_get(store, "g1", "a", &offset, &found));
    CHECK(found && offset == 4);

    uint64_t removed = 0;
    CHECK_OK(mqs_group_delete(store, "g1", &removed));
    CHECK(removed == 2);
    CHECK_OK(mqs_group_get(store, "g1", "b", &offset, &found));
    CHECK(!found);
    CHECK_OK(mqs_group_get(store, "g2", "a", &offset, &found));
    CHECK(found && offset == 1);
    CHECK_OK(mqs_group_delete(store, "never", &removed));
    CHECK(removed == 0);

    CHECK_STATUS(mqs_group_commit(store, "g1", "nope", 1), MQS_SHARD_NOT_FOUND);
    CHECK_STATUS(mqs_group_commit(store, "", "a", 1), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_group_commit(store, "g1", "a", -1), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_group_commit(store, NULL, "a", 1), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`group` is NULL");
    CHECK_STATUS(mqs_group_commit(store, "g1", NULL, 1), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_group_commit(NULL, "g1", "a", 1), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_group_get(store, "g1", "nope", &offset, &found), MQS_SHARD_NOT_FOUND);
    CHECK_STATUS(mqs_group_get(store, "g1", "a", NULL, &found), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_group_get(store, "g1", "a", &offset, NULL), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_group_get(store, NULL, "a", &offset, &found), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_group_delete(store, "g1", NULL), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_group_delete(store, NULL, &removed), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_group_delete(NULL, "g1", &removed), MQS_INVALID_ARGUMENT);

    /* Deleting a shard forgets its committed offsets. */
    CHECK_OK(mqs_shard_delete(store, "a"));
    CHECK_OK(mqs_shard_create(store, "a", NULL));
    CHECK_OK(mqs_group_get(store, "g2", "a", &offset, &found));
    CHECK(!found);
    CHECK_OK(mqs_store_close(store));
}

static void test_stats(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "metrics", NULL));
    mqs_record_in record = value_record("v");
    int64_t offset = 0;
    CHECK_OK(mqs_append(store, "metrics", &record, &offset));

    char *json = NULL;
    CHECK_OK(mqs_stats(store, NULL, &json));
    REQUIRE(json != NULL);
    CHECK(json[0] == '{');
    CHECK(strstr(json, "\"shards\"") != NULL && strstr(json, "\"metrics\"") != NULL);
    CHECK(strstr(json, "\"shard_count\":1") != NULL);
    CHECK_OK(mqs_string_free(json));
    CHECK_STATUS(mqs_string_free(json), MQS_INVALID_HANDLE);
    CHECK_OK(mqs_string_free(NULL));

    CHECK_OK(mqs_stats(store, "metrics", &json));
    REQUIRE(json != NULL);
    CHECK(strstr(json, "\"engine\":\"journal\"") != NULL);
    CHECK(strstr(json, "\"records\":1") != NULL);
    CHECK(strstr(json, "\"engine_stats\"") != NULL);
    CHECK_OK(mqs_string_free(json));

    char not_ours[4] = "abc";
    CHECK_STATUS(mqs_string_free(not_ours), MQS_INVALID_HANDLE);

    json = not_ours;
    CHECK_STATUS(mqs_stats(store, "nope", &json), MQS_SHARD_NOT_FOUND);
    CHECK(json == NULL);
    CHECK_STATUS(mqs_stats(store, NULL, NULL), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`out_json` is NULL");
    CHECK_STATUS(mqs_stats(NULL, NULL, &json), MQS_INVALID_ARGUMENT);
    CHECK_OK(mqs_store_close(store));
}

/* The number after the first `"key":` in `shard`'s stats document, or -1. */
static long long stats_number(mqs_store *store, const char *shard, const char *key) {
    char *json = NULL;
    long long number = -1;
    char needle[64];
    snprintf(needle, sizeof needle, "\"%s\":", key);
    if (mqs_stats(store, shard, &json) == MQS_OK && json != NULL) {
        const char *at = strstr(json, needle);
        if (at != NULL) {
            number = strtoll(at + strlen(needle), NULL, 10);
        }
        mqs_string_free(json);
    }
    return number;
}

/* The hybrid engine's tiering as fast as it goes: every batch is due at
 * once and the tierer looks every millisecond, so a hybrid shard's data
 * moves to its cold tier (S3) within milliseconds. Only hybrid shards
 * read the section. */
#define HYBRID_TIERING "[hybrid]\nhot_duration_ms = 0\ntier_interval_ms = 1\n"

/* Waits (at most 60 s: valgrind is slow) until hybrid shard `shard` holds
 * the offsets below `at_least` in its cold tier (its stats' "boundary");
 * returns the boundary. */
static long long wait_tiered(mqs_store *store, const char *shard, long long at_least) {
    long long boundary = -1;
    for (int i = 0; i < 6000; i++) {
        boundary = stats_number(store, shard, "boundary");
        if (boundary >= at_least) {
            break;
        }
        struct timespec pause_for = {0, 10 * 1000 * 1000};
        nanosleep(&pause_for, NULL);
    }
    if (boundary < at_least) {
        fprintf(stderr, "%s: boundary %lld after 60 s, expected %lld or more\n", shard, boundary,
                at_least);
    }
    return boundary;
}

/* Appends `count` records of `size` bytes (a recognizable pattern) in
 * batches of `per_batch`. */
static void fill_shard(mqs_store *store, const char *shard, int count, int per_batch,
                       size_t size) {
    uint8_t *buffer = malloc(size * (size_t)per_batch);
    mqs_record_in *records = calloc((size_t)per_batch, sizeof *records);
    REQUIRE(buffer != NULL && records != NULL);
    for (int first = 0; first < count; first += per_batch) {
        for (int i = 0; i < per_batch; i++) {
            uint8_t *value = buffer + size * (size_t)i;
            for (size_t j = 0; j < size; j++) {
                value[j] = (uint8_t)((first + i) * 31 + (int)j);
            }
            records[i].value.data = value;
            records[i].value.len = size;
        }
        int64_t base = -1;
        REQUIRE(mqs_append_batch(store, shard, records, (size_t)per_batch, &base) == MQS_OK);
    }
    free(records);
    free(buffer);
}

/* The bytes mqs_sendfile_to_fd writes to a temporary file. */
static uint8_t *sendfile_to_temp(mqs_store *store, const char *shard, size_t *len,
                                 int64_t *next_offset) {
    char path[160];
    snprintf(path, sizeof path, "%s/sendfile-XXXXXX", g_root);
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    uint64_t written = 0;
    CHECK_OK(mqs_sendfile_to_fd(store, shard, 0, SIZE_MAX, fd, &written, next_offset));
    uint8_t *data = malloc(written ? (size_t)written : 1);
    REQUIRE(data != NULL);
    REQUIRE(lseek(fd, 0, SEEK_SET) == 0);
    REQUIRE(read_exact(fd, data, (size_t)written));
    close(fd);
    unlink(path);
    *len = (size_t)written;
    return data;
}

static void test_transfer_basic(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "t", NULL));
    mqs_record_in one = keyed_record("k", "first");
    int64_t offset = -1;
    CHECK_OK(mqs_append(store, "t", &one, &offset));
    mqs_record_in three[3] = {value_record("a"), value_record("b"), value_record("c")};
    CHECK_OK(mqs_append_batch(store, "t", three, 3, &offset));

    mqs_transfer *transfer = NULL;
    CHECK_OK(mqs_transfer_plan(store, "t", 0, 1 << 20, &transfer));
    REQUIRE(transfer != NULL);
    uint64_t total = 0, sent = 99;
    int64_t next = -1;
    CHECK_OK(mqs_transfer_info(transfer, &total, &next, &sent));
    CHECK(total > 2 * 61 && next == 4 && sent == 0);
    struct mqs_shard_info info;
    CHECK_OK(mqs_shard_get_info(store, "t", &info));
    CHECK(total == info.bytes);

    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    uint64_t written = 0;
    CHECK_OK(mqs_transfer_send(transfer, fds[0], &written));
    CHECK(written == total);
    CHECK_OK(mqs_transfer_info(transfer, &total, &next, &sent));
    CHECK(sent == total);
    uint8_t *received = malloc((size_t)total);
    REQUIRE(received != NULL);
    REQUIRE(read_exact(fds[1], received, (size_t)total));
    struct batch_walk walk = walk_batches(received, (size_t)total);
    CHECK(walk.valid);
    CHECK(walk.batches == 2);
    CHECK(walk.first_base_offset == 0);
    CHECK(walk.next_offset == next);
    CHECK(walk.bytes == total);
    CHECK(be64(received) == 0 && received[16] == 2);
    free(received);

    /* Sending a finished transfer writes nothing. */
    CHECK_OK(mqs_transfer_send(transfer, fds[0], &written));
    CHECK(written == 0);
    CHECK_OK(mqs_transfer_free(transfer));
    CHECK_STATUS(mqs_transfer_free(transfer), MQS_INVALID_HANDLE);
    CHECK_MENTIONS("mqs_transfer");
    CHECK_STATUS(mqs_transfer_info(transfer, &total, &next, &sent), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_transfer_send(transfer, fds[0], &written), MQS_INVALID_HANDLE);
    CHECK_OK(mqs_transfer_free(NULL));

    /* At least one whole batch even when max_bytes is smaller; the plan may
     * start before the offset (batches are sent whole). */
    CHECK_OK(mqs_transfer_plan(store, "t", 0, 1, &transfer));
    CHECK_OK(mqs_transfer_info(transfer, &total, &next, &sent));
    CHECK(next == 1 && total > 61);
    CHECK_OK(mqs_transfer_free(transfer));
    CHECK_OK(mqs_transfer_plan(store, "t", 2, 1, &transfer));
    CHECK_OK(mqs_transfer_info(transfer, &total, &next, &sent));
    CHECK(next == 4);
    CHECK_OK(mqs_transfer_free(transfer));

    /* At the end: an empty transfer. */
    CHECK_OK(mqs_transfer_plan(store, "t", 4, 1 << 20, &transfer));
    CHECK_OK(mqs_transfer_info(transfer, &total, &next, &sent));
    CHECK(total == 0 && next == 4);
    CHECK_OK(mqs_transfer_send(transfer, fds[0], &written));
    CHECK(written == 0);

    /* Errors. */
    CHECK_STATUS(mqs_transfer_send(transfer, -1, &written), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("file descriptor");
    CHECK_STATUS(mqs_transfer_send(transfer, fds[0], NULL), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_transfer_send(NULL, fds[0], &written), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_transfer_info(transfer, NULL, &next, &sent), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_transfer_info(transfer, &total, NULL, &sent), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_transfer_info(transfer, &total, &next, NULL), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_transfer_info(NULL, &total, &next, &sent), MQS_INVALID_ARGUMENT);
    CHECK_OK(mqs_transfer_free(transfer));
    transfer = (mqs_transfer *)&info;
    CHECK_STATUS(mqs_transfer_plan(store, "t", 5, 100, &transfer), MQS_OFFSET_OUT_OF_RANGE);
    CHECK(transfer == NULL);
    CHECK_STATUS(mqs_transfer_plan(store, "nope", 0, 100, &transfer), MQS_SHARD_NOT_FOUND);
    CHECK_STATUS(mqs_transfer_plan(store, NULL, 0, 100, &transfer), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_transfer_plan(NULL, "t", 0, 100, &transfer), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_transfer_plan(store, "t", 0, 100, NULL), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`out_transfer` is NULL");

    /* A closed peer is an I/O error, not a SIGPIPE. */
    CHECK_OK(mqs_transfer_plan(store, "t", 0, 1 << 20, &transfer));
    close(fds[1]);
    CHECK_STATUS(mqs_transfer_send(transfer, fds[0], &written), MQS_IO);
    CHECK_OK(mqs_transfer_free(transfer));
    close(fds[0]);

    /* sendfile_to_fd: the same bytes as the plan, to a file. */
    size_t len = 0;
    uint8_t *bytes = sendfile_to_temp(store, "t", &len, &next);
    CHECK(len == info.bytes && next == 4);
    walk = walk_batches(bytes, len);
    CHECK(walk.valid && walk.batches == 2 && walk.next_offset == 4);
    free(bytes);
    uint64_t bytes_written = 0;
    int devnull = open("/dev/null", O_WRONLY);
    REQUIRE(devnull >= 0);
    CHECK_STATUS(mqs_sendfile_to_fd(store, "t", 0, 100, -1, &bytes_written, &next),
                 MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_sendfile_to_fd(store, "t", 0, 100, devnull, NULL, &next), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`out_bytes_written` is NULL");
    CHECK_STATUS(mqs_sendfile_to_fd(store, "t", 0, 100, devnull, &bytes_written, NULL),
                 MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_sendfile_to_fd(store, NULL, 0, 100, devnull, &bytes_written, &next),
                 MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_sendfile_to_fd(NULL, "t", 0, 100, devnull, &bytes_written, &next),
                 MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_sendfile_to_fd(store, "nope", 0, 100, devnull, &bytes_written, &next),
                 MQS_SHARD_NOT_FOUND);
    CHECK_STATUS(mqs_sendfile_to_fd(store, "t", 9, 100, devnull, &bytes_written, &next),
                 MQS_OFFSET_OUT_OF_RANGE);
    CHECK_OK(mqs_sendfile_to_fd(store, "t", 4, 100, devnull, &bytes_written, &next));
    CHECK(bytes_written == 0 && next == 4);
    close(devnull);
    CHECK_OK(mqs_store_close(store));
}

/* Kafka producer batches (taken from another shard's transfer, as a broker
 * would take them from a ProduceRequest) are stored byte for byte but for
 * the base offset, at consecutive offsets; a request with one bad batch
 * stores nothing; every bad argument gets its code. */
static void test_append_raw(void) {
    const char *configs[] = {NULL, "[shard]\nengine = \"memory\"\n", "[shard]\nengine = \"file\"\n"};
    for (size_t c = 0; c < sizeof configs / sizeof configs[0]; c++) {
        mqs_store *store = open_store(configs[c]);
        CHECK_OK(mqs_shard_create(store, "src", NULL));
        CHECK_OK(mqs_shard_create(store, "dst", NULL));
        fill_shard(store, "src", 50, 10, 100);
        fill_shard(store, "dst", 3, 3, 10);
        size_t len = 0;
        int64_t next = 0;
        uint8_t *sent = sendfile_to_temp(store, "src", &len, &next);
        int64_t base = -1;
        size_t batches = 0;
        CHECK_OK(mqs_append_raw(store, "dst", sent, len, &base, &batches));
        CHECK(base == 3 && batches == 5);

        size_t stored_len = 0;
        uint8_t *stored = sendfile_to_temp(store, "dst", &stored_len, &next);
        CHECK(next == 53);
        size_t skip = (size_t)be32(stored + 8) + 12; /* the 3 records appended first */
        REQUIRE(stored_len == skip + len);
        struct batch_walk walk = walk_batches(stored + skip, len);
        CHECK(walk.valid && walk.batches == 5 && walk.first_base_offset == 3);
        for (size_t pos = 0; pos < len; pos += (size_t)be32(sent + pos + 8) + 12) {
            size_t total = (size_t)be32(sent + pos + 8) + 12;
            CHECK((int64_t)be64(stored + skip + pos) == (int64_t)be64(sent + pos) + 3);
            CHECK(memcmp(stored + skip + pos + 8, sent + pos + 8, total - 8) == 0);
        }

        /* One flipped bit in the last batch: nothing of the request stored. */
        sent[len - 1] ^= 0x10;
        CHECK_STATUS(mqs_append_raw(store, "dst", sent, len, &base, &batches), MQS_CORRUPTION);
        CHECK(strstr(mqs_last_error_message(), "batch 4") != NULL);
        mqs_shard_info info;
        CHECK_OK(mqs_shard_get_info(store, "dst", &info));
        CHECK(info.next_offset == 53 && info.records == 53);
        sent[len - 1] ^= 0x10;

        CHECK_STATUS(mqs_append_raw(store, "dst", NULL, 10, &base, NULL), MQS_INVALID_ARGUMENT);
        CHECK_STATUS(mqs_append_raw(store, "dst", sent, 0, &base, NULL), MQS_INVALID_ARGUMENT);
        CHECK_STATUS(mqs_append_raw(store, "dst", sent, len, NULL, NULL), MQS_INVALID_ARGUMENT);
        CHECK_STATUS(mqs_append_raw(store, "nope", sent, len, &base, NULL), MQS_SHARD_NOT_FOUND);
        CHECK_STATUS(mqs_append_raw(store, NULL, sent, len, &base, NULL), MQS_INVALID_ARGUMENT);
        CHECK_STATUS(mqs_append_raw(store, "dst", sent, 30, &base, NULL), MQS_CORRUPTION);

        /* Pipelined: acknowledged by one wait for the last offset. */
        CHECK_OK(mqs_append_raw_nowait(store, "dst", sent, len, &base, NULL));
        CHECK(base == 53);
        CHECK_OK(mqs_wait_durable(store, "dst", base + 49));
        CHECK_OK(mqs_store_close(store));
        CHECK_STATUS(mqs_append_raw(store, "dst", sent, len, &base, NULL), MQS_INVALID_HANDLE);
        free(stored);
        free(sent);
    }
}

/* A null value (a Kafka tombstone) is not an empty value: both round-trip
 * distinctly, and a null value with bytes is refused. */
static void test_null_values(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "t", NULL));
    mqs_record_in records[2];
    memset(records, 0, sizeof records);
    records[0].key.data = (const uint8_t *)"gone";
    records[0].key.len = 4;
    records[0].value_is_null = true;
    /* records[1]: zero-initialised, an empty value. */
    int64_t base = -1;
    CHECK_OK(mqs_append_batch(store, "t", records, 2, &base));
    mqs_batch *batch = NULL;
    CHECK_OK(mqs_read(store, "t", 0, 10, SIZE_MAX, &batch));
    const mqs_record *out = NULL;
    size_t count = 0;
    CHECK_OK(mqs_batch_records(batch, &out, &count));
    CHECK(count == 2);
    CHECK(out[0].value_is_null && out[0].value.data == NULL && out[0].value.len == 0);
    CHECK(!out[1].value_is_null && out[1].value.len == 0);
    CHECK_OK(mqs_batch_free(batch));

    records[0].value.data = (const uint8_t *)"x";
    records[0].value.len = 1;
    CHECK_STATUS(mqs_append_batch(store, "t", records, 1, &base), MQS_INVALID_ARGUMENT);
    CHECK(strstr(mqs_last_error_message(), "value_is_null") != NULL);
    CHECK_OK(mqs_store_close(store));
}

/* Sets a batch's producer id, epoch and base sequence, then its CRC. */
static void make_idempotent(uint8_t *batch, int64_t producer_id, int16_t epoch, int32_t sequence) {
    for (int i = 0; i < 8; i++) {
        batch[43 + i] = (uint8_t)((uint64_t)producer_id >> (56 - 8 * i));
    }
    batch[51] = (uint8_t)((uint16_t)epoch >> 8);
    batch[52] = (uint8_t)epoch;
    for (int i = 0; i < 4; i++) {
        batch[53 + i] = (uint8_t)((uint32_t)sequence >> (24 - 8 * i));
    }
    size_t total = (size_t)be32(batch + 8) + 12;
    uint32_t crc = crc32c(batch + 21, total - 21);
    for (int i = 0; i < 4; i++) {
        batch[17 + i] = (uint8_t)(crc >> (24 - 8 * i));
    }
}

/* An idempotent producer's retry gets MQS_DUPLICATE_SEQUENCE with the
 * original offset; a gap and a stale epoch get their own codes. */
static void test_idempotent_producer(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "src", NULL));
    CHECK_OK(mqs_shard_create(store, "dst", NULL));
    fill_shard(store, "src", 10, 10, 20);
    size_t len = 0;
    int64_t next = 0;
    uint8_t *batch = sendfile_to_temp(store, "src", &len, &next);
    make_idempotent(batch, 42, 1, 0);
    int64_t base = -1;
    size_t count = 0;
    CHECK_OK(mqs_append_raw(store, "dst", batch, len, &base, &count));
    CHECK(base == 0 && count == 1);
    base = -1;
    CHECK_STATUS(mqs_append_raw(store, "dst", batch, len, &base, &count), MQS_DUPLICATE_SEQUENCE);
    CHECK(base == 0 && count == 1);
    make_idempotent(batch, 42, 1, 20);
    CHECK_STATUS(mqs_append_raw(store, "dst", batch, len, &base, NULL), MQS_OUT_OF_ORDER_SEQUENCE);
    make_idempotent(batch, 42, 0, 10);
    CHECK_STATUS(mqs_append_raw(store, "dst", batch, len, &base, NULL), MQS_PRODUCER_FENCED);
    CHECK(strcmp(mqs_status_str(MQS_PRODUCER_FENCED), "producer fenced") == 0);
    mqs_shard_info info;
    CHECK_OK(mqs_shard_get_info(store, "dst", &info));
    CHECK(info.next_offset == 10);

    /* A follower shard copies "dst" byte for byte through a transfer. */
    CHECK_OK(mqs_shard_create(store, "follower", NULL));
    size_t copy_len = 0;
    uint8_t *copy = sendfile_to_temp(store, "dst", &copy_len, &next);
    int64_t follower_next = -1;
    CHECK_OK(mqs_append_replica(store, "follower", copy, copy_len, &follower_next));
    CHECK(follower_next == 10);
    CHECK_STATUS(mqs_append_replica(store, "follower", copy, copy_len, &follower_next),
                 MQS_INVALID_ARGUMENT);
    CHECK(strstr(mqs_last_error_message(), "expects 10") != NULL);
    CHECK_STATUS(mqs_append_replica(store, "follower", copy, copy_len, NULL), MQS_INVALID_ARGUMENT);
    size_t follower_len = 0;
    uint8_t *follower_bytes = sendfile_to_temp(store, "follower", &follower_len, &next);
    CHECK(follower_len == copy_len && memcmp(follower_bytes, copy, copy_len) == 0);
    free(follower_bytes);
    free(copy);
    free(batch);
    CHECK_OK(mqs_store_close(store));
}

struct log_capture {
    int warnings;
    int other;
    char last[512];
};

static void capture_log(void *user, int level, const char *message) {
    struct log_capture *capture = user;
    if (level == MQS_LOG_WARN) {
        capture->warnings++;
    } else {
        capture->other++;
    }
    snprintf(capture->last, sizeof capture->last, "%s", message);
}

/* What recovery gives up reaches the log callback: a torn tail appended to
 * a file shard's segment is cut at the next open and reported as a
 * warning; replacing the callback delivers what was queued first. */
static void test_log_callback(void) {
    char dir[128];
    new_store_dir(dir, sizeof dir);
    mqs_store *store = NULL;
    const char *config = "[shard]\nengine = \"file\"\ndurability = \"os\"\n";
    CHECK_OK(mqs_store_open(dir, config, &store));
    CHECK_OK(mqs_shard_create(store, "f", NULL));
    fill_shard(store, "f", 10, 5, 50);
    CHECK_OK(mqs_store_close(store));
    char segment[256];
    snprintf(segment, sizeof segment, "%s/file/00000000000000000001/00000000000000000000.log", dir);
    FILE *file = fopen(segment, "ab");
    REQUIRE(file != NULL);
    fputs("a torn, half-written batch", file);
    fclose(file);

    struct log_capture capture = {0, 0, ""};
    CHECK_OK(mqs_set_log_callback(capture_log, &capture));
    CHECK_OK(mqs_store_open(dir, config, &store));
    CHECK_OK(mqs_set_log_callback(NULL, NULL)); /* delivers the queue first */
    CHECK(capture.warnings == 1);
    CHECK(strstr(capture.last, "torn tail") != NULL && strstr(capture.last, segment) != NULL);
    mqs_shard_info info;
    CHECK_OK(mqs_shard_get_info(store, "f", &info));
    CHECK(info.next_offset == 10);
    CHECK_OK(mqs_store_close(store));
}

/* Reads the rest of `transfer` with mqs_transfer_read_into, `piece` bytes
 * per call, into out[*got..total); stops at the first failure. */
static void read_rest(mqs_transfer *transfer, size_t piece, uint8_t *out, size_t total,
                      size_t *got) {
    uint8_t *buf = malloc(piece);
    REQUIRE(buf != NULL);
    bool complete = false;
    while (!complete) {
        size_t written = SIZE_MAX;
        mqs_status status = mqs_transfer_read_into(transfer, buf, piece, &written, &complete);
        if (status != MQS_OK || written > total - *got || (written < piece && !complete)) {
            CHECK_OK(status);
            CHECK(written <= total - *got);
            CHECK(written == piece || complete);
            break;
        }
        memcpy(out + *got, buf, written);
        *got += written;
    }
    free(buf);
}

/* A transfer read into buffers of 1, 7 and 4096 bytes gives the bytes a
 * descriptor receives, on every engine (memory, files, the journal's
 * tail cache, RocksDB's lazy chunks, MySQL's, Redis's and S3's fetched
 * batches, and the hybrid engine's, all moved to its cold tier or the
 * older ones only, beyond hot_bytes: plans across both tiers); reads and
 * sends share one progress. */
static void test_transfer_read_into(void) {
    const char *configs[] = {NULL,
                             "[shard]\nengine = \"memory\"\n",
                             "[shard]\nengine = \"file\"\n",
                             "[journal]\ntail_cache_bytes = 0\n",
                             "[shard]\nengine = \"rocksdb\"\n",
                             "[shard]\nengine = \"mysql\"\n",
                             "[shard]\nengine = \"redis\"\n",
                             "[shard]\nengine = \"s3\"\n",
                             "[shard]\nengine = \"hybrid\"\n" HYBRID_TIERING,
                             "[shard]\nengine = \"hybrid\"\n[hybrid]\nhot_bytes = 2500\ntier_interval_ms = 1\n"};
    for (size_t c = 0; c < sizeof configs / sizeof configs[0]; c++) {
        mqs_store *store = open_store(configs[c]);
        CHECK_OK(mqs_shard_create(store, "r", NULL));
        fill_shard(store, "r", 50, 10, 100);
        if (configs[c] != NULL && strstr(configs[c], "hybrid") != NULL) {
            /* Batches of about 1150 bytes: with hot_bytes = 2500 the
             * oldest move and the newest two or three stay local. */
            bool split = strstr(configs[c], "hot_bytes") != NULL;
            long long boundary = wait_tiered(store, "r", split ? 10 : 50);
            CHECK(split ? boundary >= 10 && boundary < 50 : boundary == 50);
        }
        size_t reference_len = 0;
        int64_t next = 0;
        uint8_t *reference = sendfile_to_temp(store, "r", &reference_len, &next);
        CHECK(next == 50 && reference_len > 5000);
        uint8_t *out = malloc(reference_len);
        REQUIRE(out != NULL);
        uint64_t total = 0, sent = 0;
        size_t pieces[] = {1, 7, 4096};
        for (size_t p = 0; p < 3; p++) {
            mqs_transfer *transfer = NULL;
            CHECK_OK(mqs_transfer_plan(store, "r", 0, SIZE_MAX, &transfer));
            CHECK_OK(mqs_transfer_info(transfer, &total, &next, &sent));
            REQUIRE(total == reference_len);
            size_t got = 0;
            read_rest(transfer, pieces[p], out, reference_len, &got);
            CHECK(got == reference_len && memcmp(out, reference, got) == 0);
            struct batch_walk walk = walk_batches(out, got);
            CHECK(walk.valid && walk.batches == 5 && walk.next_offset == 50);
            CHECK_OK(mqs_transfer_info(transfer, &total, &next, &sent));
            CHECK(sent == total);
            size_t written = 99;
            bool complete = false;
            CHECK_OK(mqs_transfer_read_into(transfer, out, 16, &written, &complete));
            CHECK(written == 0 && complete);
            CHECK_OK(mqs_transfer_free(transfer));
        }

        /* 100 bytes read, the rest sent, then nothing left to read. */
        mqs_transfer *transfer = NULL;
        CHECK_OK(mqs_transfer_plan(store, "r", 0, SIZE_MAX, &transfer));
        size_t written = 0;
        bool complete = true;
        CHECK_OK(mqs_transfer_read_into(transfer, out, 100, &written, &complete));
        CHECK(written == 100 && !complete);
        CHECK_OK(mqs_transfer_info(transfer, &total, &next, &sent));
        CHECK(sent == 100);
        int fds[2];
        REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
        uint64_t sent_now = 0;
        CHECK_OK(mqs_transfer_send(transfer, fds[0], &sent_now));
        CHECK(sent_now == total - 100);
        REQUIRE(read_exact(fds[1], out + 100, (size_t)sent_now));
        CHECK(memcmp(out, reference, reference_len) == 0);
        CHECK_OK(mqs_transfer_read_into(transfer, out, 1, &written, &complete));
        CHECK(written == 0 && complete);
        CHECK_OK(mqs_transfer_free(transfer));
        close(fds[0]);
        close(fds[1]);

        /* A plan outlives its store. */
        CHECK_OK(mqs_transfer_plan(store, "r", 0, SIZE_MAX, &transfer));
        CHECK_OK(mqs_store_close(store));
        memset(out, 0, reference_len);
        size_t got = 0;
        read_rest(transfer, 4096, out, reference_len, &got);
        CHECK(got == reference_len && memcmp(out, reference, got) == 0);
        CHECK_OK(mqs_transfer_free(transfer));
        free(out);
        free(reference);
    }
}

/* Bad arguments: a status and a message, nothing consumed, outputs untouched. */
static void test_transfer_read_into_errors(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "r", NULL));
    mqs_record_in record = value_record("payload");
    int64_t offset = 0;
    CHECK_OK(mqs_append(store, "r", &record, &offset));
    mqs_transfer *transfer = NULL;
    CHECK_OK(mqs_transfer_plan(store, "r", 0, SIZE_MAX, &transfer));
    uint8_t buf[16];
    size_t written = 77;
    bool complete = true;
    CHECK_STATUS(mqs_transfer_read_into(transfer, NULL, 16, &written, &complete),
                 MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`buf` is NULL but `len` is 16");
    CHECK_STATUS(mqs_transfer_read_into(transfer, buf, 0, &written, &complete),
                 MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("empty");
    CHECK_STATUS(mqs_transfer_read_into(transfer, NULL, 0, &written, &complete),
                 MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("empty");
    CHECK_STATUS(mqs_transfer_read_into(transfer, buf, 16, NULL, &complete), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`out_written` is NULL");
    CHECK_STATUS(mqs_transfer_read_into(transfer, buf, 16, &written, NULL), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`out_complete` is NULL");
    CHECK_STATUS(mqs_transfer_read_into(NULL, buf, 16, &written, &complete), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`transfer` is NULL");
    CHECK(written == 77 && complete);
    uint64_t total = 0, sent = 1;
    int64_t next = 0;
    CHECK_OK(mqs_transfer_info(transfer, &total, &next, &sent));
    CHECK(sent == 0 && total > 61);

    CHECK_OK(mqs_transfer_read_into(transfer, buf, 16, &written, &complete));
    CHECK(written == 16 && !complete);
    CHECK_OK(mqs_transfer_free(transfer));
    CHECK_STATUS(mqs_transfer_read_into(transfer, buf, 16, &written, &complete),
                 MQS_INVALID_HANDLE);
    CHECK_MENTIONS("mqs_transfer");
    CHECK(written == 16);
    CHECK_OK(mqs_store_close(store));
}

#define BIG_RECORDS 96
#define BIG_PER_BATCH 8
#define BIG_RECORD_SIZE 60000

/* A non-blocking socket that fills up: MQS_WOULD_BLOCK, drain, resume; the
 * received stream must equal what a blocking transfer writes. */
static void test_transfer_nonblocking(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "big", NULL));
    fill_shard(store, "big", BIG_RECORDS, BIG_PER_BATCH, BIG_RECORD_SIZE);

    size_t reference_len = 0;
    int64_t reference_next = 0;
    uint8_t *reference = sendfile_to_temp(store, "big", &reference_len, &reference_next);
    CHECK(reference_next == BIG_RECORDS);

    mqs_transfer *transfer = NULL;
    CHECK_OK(mqs_transfer_plan(store, "big", 0, SIZE_MAX, &transfer));
    REQUIRE(transfer != NULL);
    uint64_t total = 0, sent = 0;
    int64_t next = 0;
    CHECK_OK(mqs_transfer_info(transfer, &total, &next, &sent));
    CHECK(total == reference_len && next == BIG_RECORDS);
    REQUIRE(total > 4u << 20); /* large enough to fill any socket buffer */

    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    set_nonblocking(fds[0]);
    set_nonblocking(fds[1]);
    uint8_t *received = malloc((size_t)total);
    REQUIRE(received != NULL);
    size_t got = 0;
    uint64_t written_sum = 0;
    int would_block = 0;
    int other = 0;
    for (;;) {
        uint64_t written = 0;
        mqs_status status = mqs_transfer_send(transfer, fds[0], &written);
        written_sum += written;
        if (status == MQS_OK) {
            break;
        }
        if (status != MQS_WOULD_BLOCK) {
            other++;
            break;
        }
        if (would_block++ == 0) {
            CHECK_MENTIONS("would block");
            CHECK_OK(mqs_transfer_info(transfer, &total, &next, &sent));
            CHECK(sent == written_sum && sent < total);
        }
        /* Drain what the socket holds, then resume. */
        for (;;) {
            ssize_t n = read(fds[1], received + got, (size_t)total - got);
            if (n > 0) {
                got += (size_t)n;
                continue;
            }
            break;
        }
    }
    CHECK(other == 0);
    CHECK(would_block >= 1);
    CHECK(written_sum == total);
    while (got < total) {
        ssize_t n = read(fds[1], received + got, (size_t)total - got);
        if (n <= 0) {
            break;
        }
        got += (size_t)n;
    }
    CHECK(got == total);
    CHECK(got == reference_len && memcmp(received, reference, got) == 0);
    struct batch_walk walk = walk_batches(received, got);
    CHECK(walk.valid);
    CHECK(walk.batches == BIG_RECORDS / BIG_PER_BATCH);
    CHECK(walk.first_base_offset == 0 && walk.next_offset == BIG_RECORDS);
    CHECK(walk.bytes == total);
    CHECK_OK(mqs_transfer_info(transfer, &total, &next, &sent));
    CHECK(sent == total);
    CHECK_OK(mqs_transfer_free(transfer));
    close(fds[0]);
    close(fds[1]);
    free(received);
    free(reference);
    CHECK_OK(mqs_store_close(store));
}

struct reader {
    int fd;
    uint8_t *buffer;
    size_t want;
    bool ok;
};

static void *reader_main(void *arg) {
    struct reader *reader = arg;
    reader->ok = read_exact(reader->fd, reader->buffer, reader->want);
    return NULL;
}

/* mqs_sendfile_to_fd on a full non-blocking socket waits (poll) instead of
 * failing or cutting the stream. */
static void test_sendfile_nonblocking(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "big", NULL));
    fill_shard(store, "big", BIG_RECORDS, BIG_PER_BATCH, BIG_RECORD_SIZE);
    size_t reference_len = 0;
    int64_t next = 0;
    uint8_t *reference = sendfile_to_temp(store, "big", &reference_len, &next);

    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    set_nonblocking(fds[0]);
    struct reader reader = {fds[1], malloc(reference_len), reference_len, false};
    REQUIRE(reader.buffer != NULL);
    pthread_t thread;
    REQUIRE(pthread_create(&thread, NULL, reader_main, &reader) == 0);
    uint64_t written = 0;
    next = 0;
    CHECK_OK(mqs_sendfile_to_fd(store, "big", 0, SIZE_MAX, fds[0], &written, &next));
    pthread_join(thread, NULL);
    CHECK(written == reference_len && next == BIG_RECORDS);
    CHECK(reader.ok && memcmp(reader.buffer, reference, reference_len) == 0);
    close(fds[0]);
    close(fds[1]);
    free(reader.buffer);
    free(reference);
    CHECK_OK(mqs_store_close(store));
}

/* Batches and transfers stay valid after the store is closed (and after
 * their shard is deleted): the data is reference-counted. */
static void test_views_outlive_store(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "s", NULL));
    CHECK_OK(mqs_shard_create(store, "gone", NULL));
    mqs_header headers[1] = {{text("h"), text("header value")}};
    mqs_record_in record = {.key = text("key"), .value = text("value survives close"),
                            .headers = headers, .header_count = 1};
    int64_t offset = -1;
    CHECK_OK(mqs_append(store, "s", &record, &offset));
    CHECK_OK(mqs_append(store, "gone", &record, &offset));

    const mqs_record *records = NULL;
    size_t count = 0;
    mqs_batch *batch = read_ok(store, "s", 0, 10, 1 << 20, &records, &count);
    const mqs_record *gone_records = NULL;
    size_t gone_count = 0;
    mqs_batch *gone_batch = read_ok(store, "gone", 0, 10, 1 << 20, &gone_records, &gone_count);
    mqs_transfer *transfer = NULL;
    CHECK_OK(mqs_transfer_plan(store, "s", 0, 1 << 20, &transfer));
    mqs_names *names = NULL;
    CHECK_OK(mqs_shard_list(store, &names));
    CHECK_OK(mqs_shard_delete(store, "gone"));
    CHECK_OK(mqs_store_close(store));

    CHECK(count == 1 && slice_is(records[0].value, "value survives close"));
    CHECK(count == 1 && slice_is(records[0].key, "key"));
    CHECK(count == 1 && slice_is(records[0].headers[0].value, "header value"));
    CHECK(gone_count == 1 && slice_is(gone_records[0].value, "value survives close"));
    const mqs_record *again = NULL;
    CHECK_OK(mqs_batch_records(batch, &again, &count));
    CHECK(again == records && count == 1);
    CHECK(mqs_names_count(names) == 2 && strcmp(mqs_names_get(names, 1), "s") == 0);

    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    uint64_t written = 0, total = 0, sent = 0;
    int64_t next = 0;
    CHECK_OK(mqs_transfer_info(transfer, &total, &next, &sent));
    CHECK_OK(mqs_transfer_send(transfer, fds[0], &written));
    CHECK(written == total && total > 0 && next == 1);
    uint8_t *received = malloc((size_t)total);
    REQUIRE(received != NULL && read_exact(fds[1], received, (size_t)total));
    struct batch_walk walk = walk_batches(received, (size_t)total);
    CHECK(walk.valid && walk.batches == 1 && walk.next_offset == 1);
    free(received);
    close(fds[0]);
    close(fds[1]);

    CHECK_OK(mqs_batch_free(batch));
    CHECK_OK(mqs_batch_free(gone_batch));
    CHECK_OK(mqs_transfer_free(transfer));
    CHECK_OK(mqs_names_free(names));
}

/* Every function given a closed store handle: MQS_INVALID_HANDLE. */
static void test_use_after_close(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "s", NULL));
    CHECK_OK(mqs_store_close(store));

    mqs_record_in record = value_record("v");
    mqs_slice key = text("k");
    int64_t offset = 0, next = 0;
    uint64_t count = 0, written = 0;
    bool found = false;
    struct mqs_shard_info info;
    mqs_names *names = NULL;
    mqs_batch *batch = NULL;
    mqs_transfer *transfer = NULL;
    char *json = NULL;
    CHECK_STATUS(mqs_store_close(store), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_shard_create(store, "t", NULL), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_shard_delete(store, "s"), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_shard_get_info(store, "s", &info), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_shard_list(store, &names), MQS_INVALID_HANDLE);
    CHECK(names == NULL);
    CHECK_STATUS(mqs_append(store, "s", &record, &offset), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_append_batch(store, "s", &record, 1, &offset), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_append_batch_nowait(store, "s", &record, 1, &offset), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_wait_durable(store, "s", 0), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_read(store, "s", 0, 1, 1, &batch), MQS_INVALID_HANDLE);
    CHECK(batch == NULL);
    CHECK_STATUS(mqs_read_by_keys(store, "s", &key, 1, 1, &batch), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_read_by_tag(store, "s", "t", 0, 1, &batch), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_offset_for_timestamp(store, "s", 0, &offset, &found), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_delete_records_before(store, "s", 0, &offset), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_delete_by_keys(store, "s", &key, 1, &count), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_delete_by_offsets(store, "s", &offset, 1, &count), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_group_commit(store, "g", "s", 0), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_group_get(store, "g", "s", &offset, &found), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_group_delete(store, "g", &count), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_transfer_plan(store, "s", 0, 1, &transfer), MQS_INVALID_HANDLE);
    CHECK(transfer == NULL);
    CHECK_STATUS(mqs_sendfile_to_fd(store, "s", 0, 1, 2, &written, &next), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_stats(store, NULL, &json), MQS_INVALID_HANDLE);
    CHECK(json == NULL);
    CHECK_MENTIONS("mqs_store");
}

/* Threads using one store while another thread closes it: every call either
 * works or reports the close; nothing touches freed memory (valgrind). */
struct racer {
    mqs_store *store;
    int ok;
    int closed;
    int unexpected;
};

static atomic_int g_race_progress;

static void *racer_main(void *arg) {
    struct racer *racer = arg;
    mqs_record_in record = keyed_record("k", "race");
    for (int i = 0; i < 1000000; i++) {
        int64_t offset = 0;
        mqs_status status = mqs_append(racer->store, "race", &record, &offset);
        mqs_batch *batch = NULL;
        if (status == MQS_OK) {
            status = mqs_read(racer->store, "race", offset, 4, 1 << 16, &batch);
            const mqs_record *records = NULL;
            size_t count = 0;
            if (status == MQS_OK &&
                (mqs_batch_records(batch, &records, &count) != MQS_OK || count < 1 ||
                 !slice_is(records[0].value, "race"))) {
                racer->unexpected++;
            }
            mqs_batch_free(batch);
        }
        if (status == MQS_OK) {
            racer->ok++;
            atomic_fetch_add(&g_race_progress, 1);
        } else if (status == MQS_INVALID_HANDLE) {
            racer->closed++;
            break;
        } else if (status == MQS_CLOSED || status == MQS_SHARD_NOT_FOUND) {
            racer->closed++;
        } else {
            racer->unexpected++;
            break;
        }
    }
    return NULL;
}

static void test_close_race(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "race", NULL));
    atomic_store(&g_race_progress, 0);
    enum { THREADS = 4 };
    struct racer racers[THREADS];
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) {
        racers[i] = (struct racer){store, 0, 0, 0};
        REQUIRE(pthread_create(&threads[i], NULL, racer_main, &racers[i]) == 0);
    }
    /* Let the racers get going, then close under them. */
    for (int spins = 0; spins < 5000; spins++) {
        if (atomic_load(&g_race_progress) >= 200) {
            break;
        }
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL);
    }
    CHECK_OK(mqs_store_close(store));
    int ok = 0, closed = 0, unexpected = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
        ok += racers[i].ok;
        closed += racers[i].closed;
        unexpected += racers[i].unexpected;
    }
    printf("close race: %d calls succeeded, %d saw the close\n", ok, closed);
    CHECK(unexpected == 0);
    CHECK(ok > 0);
    CHECK(closed >= THREADS); /* every racer saw the close */
}

/* The File engine through the C ABI: segments roll, reads are zero-copy
 * views of its maps, sendfile_to_fd streams valid Kafka batches, and a
 * reopened store finds everything again. */
static void test_file_engine(void) {
    char dir[128];
    new_store_dir(dir, sizeof dir);
    const char *config = "preset = \"edge\"\n[shard]\ndurability = \"fsync\"\n";
    mqs_store *store = NULL;
    REQUIRE(mqs_store_open(dir, config, &store) == MQS_OK);
    CHECK_OK(mqs_shard_create(store, "f", "segment_bytes = 65536"));
    char values[200][520];
    for (int b = 0; b < 20; b++) {
        mqs_record_in records[10];
        for (int i = 0; i < 10; i++) {
            int n = b * 10 + i;
            memset(values[n], 'a' + n % 26, 500);
            snprintf(values[n], sizeof values[n], "file-%03d", n);
            values[n][8] = '-';
            values[n][500] = '\0';
            records[i] = value_record(values[n]);
        }
        int64_t base = -1;
        CHECK_OK(mqs_append_batch(store, "f", records, 10, &base));
        CHECK(base == b * 10);
    }
    struct mqs_shard_info info;
    CHECK_OK(mqs_shard_get_info(store, "f", &info));
    CHECK(info.next_offset == 200 && info.records == 200);
    CHECK(info.engine != NULL && strcmp(info.engine, "file") == 0);
    const mqs_record *records = NULL;
    size_t count = 0;
    mqs_batch *batch = read_ok(store, "f", 0, 1000, SIZE_MAX, &records, &count);
    CHECK(count == 200);
    for (size_t i = 0; i < count; i++) {
        CHECK(records[i].offset == (int64_t)i && slice_is(records[i].value, values[i]));
    }
    size_t len = 0;
    int64_t next = -1;
    uint8_t *bytes = sendfile_to_temp(store, "f", &len, &next);
    struct batch_walk walk = walk_batches(bytes, len);
    CHECK(walk.valid && walk.batches == 20 && walk.first_base_offset == 0);
    CHECK(next == 200 && walk.next_offset == 200 && len == info.bytes);
    free(bytes);
    CHECK_OK(mqs_store_close(store));
    /* The views read before the close stay valid. */
    CHECK(slice_is(records[199].value, values[199]));
    CHECK_OK(mqs_batch_free(batch));

    REQUIRE(mqs_store_open(dir, config, &store) == MQS_OK);
    CHECK_OK(mqs_shard_get_info(store, "f", &info));
    CHECK(info.next_offset == 200 && info.records == 200);
    batch = read_ok(store, "f", 150, 1, SIZE_MAX, &records, &count);
    CHECK(count == 1 && records[0].offset == 150 && slice_is(records[0].value, values[150]));
    CHECK_OK(mqs_batch_free(batch));
    int64_t offset = -1;
    mqs_record_in more = value_record("after reopen");
    CHECK_OK(mqs_append(store, "f", &more, &offset));
    CHECK(offset == 200);
    CHECK_OK(mqs_store_close(store));
}

/* ------------------------------------------------------- pipelined appends */

enum { PIPE_BATCHES = 50, PIPE_PER_BATCH = 7, PIPE_WINDOW = 8 };

static void pipe_key(char *out, size_t size, int n) { snprintf(out, size, "k%04d", n); }

static void pipe_value(char *out, size_t size, const char *shard, int n) {
    /* Values of varying length: 0 to 39 characters of padding. */
    static const char pad[] = "0123456789abcdefghijklmnopqrstuvwxyzABCD";
    snprintf(out, size, "%s-value-%04d-%.*s", shard, n, n % 40, pad);
}

/* The number after "fdatasyncs": in a stats document, or -1. */
static long long stats_fdatasyncs(mqs_store *store, const char *shard) {
    return stats_number(store, shard, "fdatasyncs");
}

/* Appends PIPE_BATCHES batches of PIPE_PER_BATCH records to `shard` (which
 * must be empty) with mqs_append_batch_nowait, keeping at most PIPE_WINDOW
 * batches unacknowledged: when the window is full it waits on the oldest
 * batch's base offset, as a pipelining producer does. Each batch must be
 * readable as soon as the call returns; then the rest are waited for. */
static void pipe_fill(mqs_store *store, const char *shard) {
    int64_t window[PIPE_WINDOW];
    int oldest = 0, in_flight = 0, max_in_flight = 0;
    char keys[PIPE_PER_BATCH][16];
    char values[PIPE_PER_BATCH][128];
    for (int b = 0; b < PIPE_BATCHES; b++) {
        if (in_flight == PIPE_WINDOW) {
            CHECK_OK(mqs_wait_durable(store, shard, window[oldest]));
            oldest = (oldest + 1) % PIPE_WINDOW;
            in_flight--;
        }
        mqs_record_in records[PIPE_PER_BATCH];
        for (int i = 0; i < PIPE_PER_BATCH; i++) {
            int n = b * PIPE_PER_BATCH + i;
            pipe_key(keys[i], sizeof keys[i], n);
            pipe_value(values[i], sizeof values[i], shard, n);
            records[i] = keyed_record(keys[i], values[i]);
        }
        int64_t base = -1;
        CHECK_OK(mqs_append_batch_nowait(store, shard, records, PIPE_PER_BATCH, &base));
        CHECK(base == (int64_t)b * PIPE_PER_BATCH); /* dense and increasing */
        /* The caller's buffers are only borrowed during the call. */
        memset(values, 'X', sizeof values);
        window[(oldest + in_flight) % PIPE_WINDOW] = base;
        in_flight++;
        if (in_flight > max_in_flight) {
            max_in_flight = in_flight;
        }
        /* Readable immediately, before any acknowledgement. */
        const mqs_record *out = NULL;
        size_t count = 0;
        mqs_batch *batch = read_ok(store, shard, base, 100, SIZE_MAX, &out, &count);
        char expected[128];
        pipe_value(expected, sizeof expected, shard, b * PIPE_PER_BATCH + PIPE_PER_BATCH - 1);
        CHECK(count == PIPE_PER_BATCH && out[0].offset == base &&
              slice_is(out[PIPE_PER_BATCH - 1].value, expected));
        CHECK_OK(mqs_batch_free(batch));
    }
    CHECK(max_in_flight == PIPE_WINDOW);
    while (in_flight > 0) {
        CHECK_OK(mqs_wait_durable(store, shard, window[oldest]));
        oldest = (oldest + 1) % PIPE_WINDOW;
        in_flight--;
    }
    const int64_t total = (int64_t)PIPE_BATCHES * PIPE_PER_BATCH;
    CHECK_OK(mqs_wait_durable(store, shard, total - 1));
    CHECK_OK(mqs_wait_durable(store, shard, 0)); /* long acknowledged: still OK */
    struct mqs_shard_info info;
    CHECK_OK(mqs_shard_get_info(store, shard, &info));
    CHECK(info.first_offset == 0 && info.next_offset == total && info.records == (uint64_t)total);
}

/* Reads the records pipe_fill wrote and compares every one. */
static void pipe_verify(mqs_store *store, const char *shard) {
    const int64_t total = (int64_t)PIPE_BATCHES * PIPE_PER_BATCH;
    const mqs_record *out = NULL;
    size_t count = 0;
    mqs_batch *batch = read_ok(store, shard, 0, (size_t)total, SIZE_MAX, &out, &count);
    int64_t next = -1;
    CHECK_OK(mqs_batch_next_offset(batch, &next));
    CHECK(next == total);
    CHECK(count == (size_t)total);
    int mismatches = 0;
    for (size_t i = 0; i < count; i++) {
        char key[16], value[128];
        pipe_key(key, sizeof key, (int)i);
        pipe_value(value, sizeof value, shard, (int)i);
        if (out[i].offset != (int64_t)i || !slice_is(out[i].key, key) ||
            !slice_is(out[i].value, value)) {
            if (mismatches++ == 0) {
                fprintf(stderr, "%s: record %zu differs (offset %" PRId64 ")\n", shard, i,
                        out[i].offset);
            }
        }
    }
    CHECK(mismatches == 0);
    CHECK_OK(mqs_batch_free(batch));
}

static const char *ROCKSDB_CONFIG = "[shard]\nengine = \"rocksdb\"\n";
/* This program's path (argv[0]), to run it as a helper process: under
 * valgrind /proc/self/exe is valgrind's own tool. */
static const char *g_self = "test_api";

/* The helper process of test_rocksdb_bad_directories (this program run with
 * --hold-store DIR): holds the store in DIR open, says so on stdout, and
 * closes it when its stdin closes. */
static int hold_store(const char *dir) {
    mqs_store *store = NULL;
    if (mqs_store_open(dir, ROCKSDB_CONFIG, &store) != MQS_OK) {
        return 1;
    }
    if (write(STDOUT_FILENO, "H", 1) != 1) {
        return 2;
    }
    char c;
    while (read(STDIN_FILENO, &c, 1) > 0) {
    }
    return mqs_store_close(store) == MQS_OK ? 0 : 3;
}

/* Starts this program as the holder of the store in `dir`; returns its pid
 * once it holds it, with `*to_child` its stdin. */
static pid_t start_holder(const char *dir, int *to_child) {
    int in[2], out[2];
    REQUIRE(pipe(in) == 0 && pipe(out) == 0);
    fflush(stdout);
    fflush(stderr);
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        dup2(in[0], STDIN_FILENO);
        dup2(out[1], STDOUT_FILENO);
        close(in[1]);
        close(out[0]);
        execl(g_self, g_self, "--hold-store", dir, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    char said = 0;
    CHECK(read(out[0], &said, 1) == 1 && said == 'H');
    close(out[0]);
    *to_child = in[1];
    return child;
}

/* A RocksDB directory another process holds open (a second store whose
 * rocksdb/ is a symlink to the first one's, opened while a helper process
 * holds the first) fails the open with MQS_LOCKED; a damaged one (CURRENT
 * naming a missing MANIFEST) with MQS_CORRUPTION; both name the directory,
 * and the data is intact once the holder is gone. */
/* A server engine whose server cannot be reached: creating a shard fails
 * with MQS_IO naming the server's address, never the URL's password (nor
 * S3's secret key), leaves no shard, and the store goes on serving its
 * other engines. The hybrid engine appends to a local journal, but
 * creating a shard stores its cold tier's manifest on S3: it fails the
 * same way. */
static void test_unreachable_server(void) {
    const char *unreachable_s3 =
        "[s3]\nendpoint = \"http://127.0.0.1:1\"\nbucket = \"mqstore\"\naccess_key_id = \"AK\"\n"
        "secret_access_key = \"secret-pw\"\nconnect_timeout_ms = 500\nio_timeout_ms = 500\n"
        "retries = 0\n";
    const char *configs[] = {
        "[mysql]\nurl = \"mysql://mqs:secret-pw@127.0.0.1:1/db\"\nconnect_timeout_ms = 2000\n",
        "[redis]\nurl = \"redis://:secret-pw@127.0.0.1:1/\"\nconnect_timeout_ms = 2000\n",
        unreachable_s3, unreachable_s3};
    const char *options[] = {"engine = \"mysql\"", "engine = \"redis\"", "engine = \"s3\"",
                             "engine = \"hybrid\""};
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++) {
        mqs_store *store = open_store(configs[i]);
        CHECK_STATUS(mqs_shard_create(store, "s", options[i]), MQS_IO);
        const char *message = mqs_last_error_message();
        CHECK(strstr(message, "127.0.0.1:1") != NULL);
        CHECK(strstr(message, "secret-pw") == NULL);
        struct mqs_shard_info info;
        CHECK_STATUS(mqs_shard_get_info(store, "s", &info), MQS_SHARD_NOT_FOUND);
        CHECK_OK(mqs_shard_create(store, "j", NULL));
        mqs_record_in record = value_record("still serving");
        int64_t offset = -1;
        CHECK_OK(mqs_append(store, "j", &record, &offset));
        CHECK(offset == 0);
        CHECK_OK(mqs_store_close(store));
    }
}

static void test_rocksdb_bad_directories(void) {
    const char *config = ROCKSDB_CONFIG;
    char a[128], b[128], link_from[256], link_to[256];
    new_store_dir(a, sizeof a);
    new_store_dir(b, sizeof b);
    mqs_store *store = NULL;
    REQUIRE(mqs_store_open(a, config, &store) == MQS_OK);
    CHECK_OK(mqs_shard_create(store, "r", NULL));
    mqs_record_in kept = value_record("kept");
    int64_t offset = -1;
    CHECK_OK(mqs_append(store, "r", &kept, &offset));
    CHECK_OK(mqs_store_close(store));
    REQUIRE(mkdir(b, 0700) == 0);
    snprintf(link_to, sizeof link_to, "%s/rocksdb", a);
    snprintf(link_from, sizeof link_from, "%s/rocksdb", b);
    REQUIRE(symlink(link_to, link_from) == 0);

    int to_child = -1;
    pid_t holder = start_holder(a, &to_child);
    mqs_store *other = NULL;
    CHECK(mqs_store_open(b, config, &other) == MQS_LOCKED && other == NULL);
    CHECK(strstr(mqs_last_error_message(), "rocksdb") != NULL);
    CHECK(strstr(mqs_last_error_message(), "locked") != NULL);
    close(to_child);
    int wstatus = 0;
    CHECK(waitpid(holder, &wstatus, 0) == holder && WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);

    REQUIRE(mqs_store_open(b, config, &store) == MQS_OK);
    const mqs_record *records = NULL;
    size_t count = 0;
    mqs_batch *batch = read_ok(store, "r", 0, 10, SIZE_MAX, &records, &count);
    CHECK(count == 1 && slice_is(records[0].value, "kept"));
    CHECK_OK(mqs_batch_free(batch));
    CHECK_OK(mqs_store_close(store));

    char current[256];
    snprintf(current, sizeof current, "%s/rocksdb/CURRENT", a);
    FILE *f = fopen(current, "w");
    REQUIRE(f != NULL);
    fputs("MANIFEST-999999\n", f);
    fclose(f);
    CHECK(mqs_store_open(a, config, &store) == MQS_CORRUPTION && store == NULL);
    CHECK(strstr(mqs_last_error_message(), "rocksdb") != NULL);
}

/* The journal (the default engine, durability fsync by default) and its os
 * and none modes, the memory and the file engine, RocksDB in fsync and none
 * modes, MySQL, Redis and S3 in fsync mode, the hybrid engine in every
 * mode (its batches moving to the cold tier while they are appended and
 * read): a window of in-flight batches, everything read back, and
 * (persistent shards) found again after a reopen (the hybrid shards' from
 * the cold tier). */
static void test_append_nowait_pipeline(void) {
    char dir[128];
    new_store_dir(dir, sizeof dir);
    mqs_store *store = NULL;
    REQUIRE(mqs_store_open(dir, HYBRID_TIERING, &store) == MQS_OK);
    CHECK_OK(mqs_shard_create(store, "journal-fsync", NULL));
    CHECK_OK(mqs_shard_create(store, "journal-os", "durability = \"os\""));
    CHECK_OK(mqs_shard_create(store, "journal-none", "durability = \"none\""));
    CHECK_OK(mqs_shard_create(store, "memory", "engine = \"memory\""));
    CHECK_OK(mqs_shard_create(store, "file", "engine = \"file\"\ndurability = \"fsync\""));
    CHECK_OK(mqs_shard_create(store, "rocksdb-fsync", "engine = \"rocksdb\""));
    CHECK_OK(mqs_shard_create(store, "rocksdb-none", "engine = \"rocksdb\"\ndurability = \"none\""));
    CHECK_OK(mqs_shard_create(store, "mysql-fsync", "engine = \"mysql\""));
    CHECK_OK(mqs_shard_create(store, "redis-fsync", "engine = \"redis\""));
    CHECK_OK(mqs_shard_create(store, "s3-fsync", "engine = \"s3\""));
    CHECK_OK(mqs_shard_create(store, "hybrid-fsync", "engine = \"hybrid\""));
    CHECK_OK(mqs_shard_create(store, "hybrid-os", "engine = \"hybrid\"\ndurability = \"os\""));
    CHECK_OK(mqs_shard_create(store, "hybrid-none", "engine = \"hybrid\"\ndurability = \"none\""));
    enum { SHARDS = 13 };
    const char *shards[SHARDS] = {"journal-fsync", "journal-os",    "journal-none", "memory",
                                  "file",          "rocksdb-fsync", "rocksdb-none", "mysql-fsync",
                                  "redis-fsync",   "s3-fsync",      "hybrid-fsync", "hybrid-os",
                                  "hybrid-none"};
    const char *engines[SHARDS] = {"journal", "journal", "journal", "memory", "file",
                                   "rocksdb", "rocksdb", "mysql",   "redis",  "s3",
                                   "hybrid",  "hybrid",  "hybrid"};
    const int64_t total = (int64_t)PIPE_BATCHES * PIPE_PER_BATCH;
    for (int s = 0; s < SHARDS; s++) {
        struct mqs_shard_info info;
        CHECK_OK(mqs_shard_get_info(store, shards[s], &info));
        CHECK(info.engine != NULL && strcmp(info.engine, engines[s]) == 0);
        pipe_fill(store, shards[s]);
        pipe_verify(store, shards[s]);
        if (strcmp(engines[s], "hybrid") == 0) {
            /* Everything moves to the cold tier, and reads the same there. */
            CHECK(wait_tiered(store, shards[s], total) == total);
            pipe_verify(store, shards[s]);
        }
    }
    /* Acknowledging the fsync shard's batches took fdatasyncs. */
    CHECK(stats_fdatasyncs(store, "journal-fsync") >= 1);

    /* A later plain append is acknowledged on return; waiting on it is OK. */
    mqs_record_in after = value_record("plain append");
    int64_t offset = -1;
    CHECK_OK(mqs_append(store, "journal-fsync", &after, &offset));
    CHECK(offset == (int64_t)PIPE_BATCHES * PIPE_PER_BATCH);
    CHECK_OK(mqs_wait_durable(store, "journal-fsync", offset));
    CHECK_OK(mqs_store_close(store));

    /* Everything is still there after a reopen (every persistent shard; a
     * clean close flushes RocksDB's unlogged none writes). */
    REQUIRE(mqs_store_open(dir, HYBRID_TIERING, &store) == MQS_OK);
    for (int s = 0; s < SHARDS; s++) {
        if (strcmp(engines[s], "memory") == 0) {
            continue;
        }
        if (strcmp(engines[s], "hybrid") == 0) {
            /* Opened with every batch in the cold tier. */
            CHECK(stats_number(store, shards[s], "boundary") == total);
        }
        pipe_verify(store, shards[s]);
        struct mqs_shard_info info;
        CHECK_OK(mqs_shard_get_info(store, shards[s], &info));
        int64_t expect_next = total + (s == 0 ? 1 : 0);
        CHECK(info.next_offset == expect_next);
        CHECK_OK(mqs_wait_durable(store, shards[s], expect_next - 1));
    }
    /* Pipelining goes on from where the reopened shard left off. */
    mqs_record_in more[2] = {value_record("again-0"), value_record("again-1")};
    int64_t base = -1;
    CHECK_OK(mqs_append_batch_nowait(store, "journal-fsync", more, 2, &base));
    CHECK(base == (int64_t)PIPE_BATCHES * PIPE_PER_BATCH + 1);
    CHECK_OK(mqs_wait_durable(store, "journal-fsync", base + 1));
    CHECK_OK(mqs_store_close(store));
}

/* Acknowledged means it survives the process: a child pipelines batches,
 * waits for them, appends a few more without waiting, reports through a
 * pipe, and is killed with SIGKILL by this process (no close, no flush; the
 * child's valgrind does not get to run either). The reopened store has every
 * acknowledged record. */
static void test_append_nowait_survives_kill(void) {
    char dir[128];
    new_store_dir(dir, sizeof dir);
    const int64_t acked = (int64_t)PIPE_BATCHES * PIPE_PER_BATCH;
    int ready[2];
    REQUIRE(pipe(ready) == 0);
    fflush(stdout);
    fflush(stderr);
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        close(ready[0]);
        mqs_store *store = NULL;
        if (mqs_store_open(dir, NULL, &store) != MQS_OK ||
            mqs_shard_create(store, "journal-fsync", NULL) != MQS_OK) {
            _exit(1);
        }
        /* The parent's earlier failures are inherited: count the child's own. */
        int failed_before = check_failed;
        pipe_fill(store, "journal-fsync");
        if (check_failed != failed_before) {
            _exit(2);
        }
        /* Unacknowledged batches: they may or may not survive. */
        char value[128];
        for (int b = 0; b < 4; b++) {
            int64_t n = acked + b;
            pipe_value(value, sizeof value, "journal-fsync", (int)n);
            mqs_record_in record = value_record(value);
            int64_t base = -1;
            if (mqs_append_batch_nowait(store, "journal-fsync", &record, 1, &base) != MQS_OK ||
                base != n) {
                _exit(3);
            }
        }
        if (write(ready[1], "k", 1) != 1) {
            _exit(4);
        }
        for (;;) {
            pause(); /* until the parent's SIGKILL */
        }
    }
    close(ready[1]);
    char byte = 0;
    ssize_t got = read(ready[0], &byte, 1);
    close(ready[0]);
    CHECK(got == 1 && byte == 'k');
    if (got == 1) {
        kill(child, SIGKILL);
    }
    int wstatus = 0;
    REQUIRE(waitpid(child, &wstatus, 0) == child);
    CHECK(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL);
    if (WIFEXITED(wstatus)) {
        fprintf(stderr, "pipelining child exited with %d\n", WEXITSTATUS(wstatus));
    }

    mqs_store *store = NULL;
    REQUIRE(mqs_store_open(dir, NULL, &store) == MQS_OK);
    struct mqs_shard_info info;
    CHECK_OK(mqs_shard_get_info(store, "journal-fsync", &info));
    CHECK(info.next_offset >= acked && info.next_offset <= acked + 4);
    pipe_verify(store, "journal-fsync");
    /* Whatever survived of the unacknowledged tail is intact. */
    if (info.next_offset > acked) {
        const mqs_record *out = NULL;
        size_t count = 0;
        mqs_batch *batch = read_ok(store, "journal-fsync", acked, 10, SIZE_MAX, &out, &count);
        CHECK(count == (size_t)(info.next_offset - acked));
        for (size_t i = 0; i < count; i++) {
            char value[128];
            pipe_value(value, sizeof value, "journal-fsync", (int)(acked + (int64_t)i));
            CHECK(out[i].offset == acked + (int64_t)i && slice_is(out[i].value, value));
        }
        CHECK_OK(mqs_batch_free(batch));
    }
    CHECK_OK(mqs_store_close(store));
}

/* Argument checks and errors of mqs_append_batch_nowait and mqs_wait_durable:
 * status codes and messages. */
static void test_append_nowait_errors(void) {
    mqs_store *store = open_store("[store]\nmax_record_bytes = 1024\n");
    CHECK_OK(mqs_shard_create(store, "s", NULL));
    mqs_record_in records[2] = {keyed_record("a", "one"), keyed_record("b", "two")};
    int64_t base = -77;

    CHECK_STATUS(mqs_append_batch_nowait(NULL, "s", records, 2, &base), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`store` is NULL");
    CHECK_STATUS(mqs_append_batch_nowait(store, NULL, records, 2, &base), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`shard` is NULL");
    CHECK_STATUS(mqs_append_batch_nowait(store, "s", NULL, 2, &base), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`records` is NULL");
    CHECK_STATUS(mqs_append_batch_nowait(store, "s", records, 0, &base), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("at least one record");
    CHECK_STATUS(mqs_append_batch_nowait(store, "s", records, 2, NULL), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`out_base_offset` is NULL");
    CHECK_STATUS(mqs_append_batch_nowait(store, "missing", records, 2, &base),
                 MQS_SHARD_NOT_FOUND);
    CHECK_MENTIONS("missing");
    CHECK_STATUS(mqs_append_batch_nowait(store, "bad\xff", records, 2, &base),
                 MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`shard`");

    static uint8_t big[2000];
    memset(big, 'b', sizeof big);
    mqs_record_in oversized[2] = {keyed_record("ok", "fits"), {.value = {big, sizeof big}}};
    CHECK_STATUS(mqs_append_batch_nowait(store, "s", oversized, 2, &base), MQS_RECORD_TOO_LARGE);
    CHECK_MENTIONS("1024");
    mqs_header reserved[1] = {{text("__mqs.tag"), text("v")}};
    mqs_record_in bad = value_record("bad");
    bad.headers = reserved;
    bad.header_count = 1;
    CHECK_STATUS(mqs_append_batch_nowait(store, "s", &bad, 1, &base), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("reserved");
    CHECK(base == -77); /* out-param untouched on failure */

    struct mqs_shard_info info;
    CHECK_OK(mqs_shard_get_info(store, "s", &info));
    CHECK(info.next_offset == 0); /* no failed append stored anything */

    /* mqs_wait_durable on an empty shard: nothing to wait for. */
    CHECK_STATUS(mqs_wait_durable(store, "s", 0), MQS_OFFSET_OUT_OF_RANGE);
    CHECK_MENTIONS("offset 0 was never appended to shard 's' (its next offset is 0)");

    CHECK_OK(mqs_append_batch_nowait(store, "s", records, 2, &base));
    CHECK(base == 0);
    CHECK_OK(mqs_append_batch_nowait(store, "s", records, 2, &base));
    CHECK(base == 2);
    CHECK_STATUS(mqs_wait_durable(store, "s", -1), MQS_OFFSET_OUT_OF_RANGE);
    CHECK_MENTIONS("offset -1 was never appended");
    CHECK_STATUS(mqs_wait_durable(store, "s", 4), MQS_OFFSET_OUT_OF_RANGE); /* == next */
    CHECK_MENTIONS("offset 4 was never appended to shard 's' (its next offset is 4)");
    CHECK_STATUS(mqs_wait_durable(store, "s", INT64_MAX), MQS_OFFSET_OUT_OF_RANGE);
    CHECK_STATUS(mqs_wait_durable(store, "missing", 0), MQS_SHARD_NOT_FOUND);
    CHECK_MENTIONS("missing");
    CHECK_STATUS(mqs_wait_durable(store, NULL, 0), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`shard` is NULL");
    CHECK_STATUS(mqs_wait_durable(NULL, "s", 0), MQS_INVALID_ARGUMENT);
    CHECK_MENTIONS("`store` is NULL");
    CHECK_OK(mqs_wait_durable(store, "s", 3));

    /* Deleted records count as durable. */
    int64_t low = -1;
    CHECK_OK(mqs_append_batch_nowait(store, "s", records, 2, &base));
    CHECK(base == 4);
    CHECK_OK(mqs_delete_records_before(store, "s", 6, &low));
    CHECK(low == 6);
    CHECK_OK(mqs_wait_durable(store, "s", 5));
    CHECK_OK(mqs_wait_durable(store, "s", 0));
    CHECK_STATUS(mqs_wait_durable(store, "s", 6), MQS_OFFSET_OUT_OF_RANGE); /* still == next */

    /* A deleted shard is gone for both calls. */
    CHECK_OK(mqs_shard_delete(store, "s"));
    CHECK_STATUS(mqs_wait_durable(store, "s", 0), MQS_SHARD_NOT_FOUND);
    CHECK_STATUS(mqs_append_batch_nowait(store, "s", records, 2, &base), MQS_SHARD_NOT_FOUND);

    /* A closed store handle. */
    CHECK_OK(mqs_shard_create(store, "t", NULL));
    CHECK_OK(mqs_append_batch_nowait(store, "t", records, 2, &base));
    CHECK_OK(mqs_store_close(store));
    CHECK_STATUS(mqs_wait_durable(store, "t", 0), MQS_INVALID_HANDLE);
    CHECK_MENTIONS("mqs_store");
    CHECK_STATUS(mqs_append_batch_nowait(store, "t", records, 2, &base), MQS_INVALID_HANDLE);
    CHECK_MENTIONS("mqs_store");
}

/* An event loop on one thread: thousands of batches in flight with
 * mqs_append_batch_notify, acknowledged through the durability descriptor and
 * mqs_poll_durable, every one in order, with no thread per batch. */
#define LOOP_BATCHES 3000
static void test_event_loop(void) {
    mqs_store *store = open_store(NULL);
    CHECK_OK(mqs_shard_create(store, "s", NULL)); /* journal, fsync */
    int fd = -1;
    CHECK_OK(mqs_durable_fd(store, &fd));
    CHECK(fd >= 0);
    int again = -1;
    CHECK_OK(mqs_durable_fd(store, &again));
    CHECK(again == fd);

    mqs_record_in records[4];
    memset(records, 0, sizeof records);
    for (int i = 0; i < 4; i++) records[i].value = text("event-loop payload");
    static int64_t bases[LOOP_BATCHES];
    for (uint64_t token = 0; token < LOOP_BATCHES; token++) {
        CHECK_OK(mqs_append_batch_notify(store, "s", records, 4, token, &bases[token]));
    }
    uint64_t next_token = 0;
    bool in_order = true, all_ok = true;
    mqs_completion done[64];
    while (next_token < LOOP_BATCHES) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int ready = poll(&pfd, 1, 60000);
        REQUIRE(ready == 1 && (pfd.revents & POLLIN));
        size_t n = 0;
        CHECK_OK(mqs_poll_durable(store, done, 64, &n));
        REQUIRE(n > 0); /* readable means something to poll */
        for (size_t i = 0; i < n; i++) {
            in_order &= done[i].token == next_token && done[i].offset == bases[next_token];
            all_ok &= done[i].status == MQS_OK;
            next_token++;
        }
    }
    CHECK(in_order);
    CHECK(all_ok);
    struct pollfd pfd = {fd, POLLIN, 0};
    CHECK(poll(&pfd, 1, 0) == 0); /* drained: no longer readable */
    size_t n = 99;
    CHECK_OK(mqs_poll_durable(store, done, 64, &n));
    CHECK(n == 0);

    /* mqs_watch_durable acknowledges what another call appended. */
    int64_t base;
    CHECK_OK(mqs_append_batch_nowait(store, "s", records, 1, &base));
    CHECK_OK(mqs_watch_durable(store, "s", base, 77));
    REQUIRE(poll(&pfd, 1, 60000) == 1);
    CHECK_OK(mqs_poll_durable(store, done, 64, &n));
    CHECK(n == 1 && done[0].token == 77 && done[0].offset == base && done[0].status == MQS_OK);

    /* Bad input, each with its code and nothing watched. */
    CHECK_STATUS(mqs_watch_durable(store, "s", base + 1, 1), MQS_OFFSET_OUT_OF_RANGE);
    CHECK_STATUS(mqs_watch_durable(store, "s", -1, 1), MQS_OFFSET_OUT_OF_RANGE);
    CHECK_STATUS(mqs_watch_durable(store, "nope", 0, 1), MQS_SHARD_NOT_FOUND);
    CHECK_STATUS(mqs_watch_durable(store, NULL, 0, 1), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_append_batch_notify(store, "s", NULL, 0, 1, &base), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_append_batch_notify(store, "s", records, 1, 1, NULL), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_durable_fd(store, NULL), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_durable_fd(NULL, &again), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_poll_durable(store, NULL, 4, &n), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_poll_durable(store, done, 0, &n), MQS_INVALID_ARGUMENT);
    CHECK_STATUS(mqs_poll_durable(store, done, 4, NULL), MQS_INVALID_ARGUMENT);
    CHECK_OK(mqs_poll_durable(store, done, 64, &n));
    CHECK(n == 0);

    CHECK_OK(mqs_store_close(store));
    CHECK_STATUS(mqs_durable_fd(store, &again), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_watch_durable(store, "s", 0, 1), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_poll_durable(store, done, 4, &n), MQS_INVALID_HANDLE);
    CHECK_STATUS(mqs_append_batch_notify(store, "s", records, 1, 1, &base), MQS_INVALID_HANDLE);
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--hold-store") == 0) {
        return hold_store(argv[2]);
    }
    g_self = argv[0];
    crc32c_init();
    strcpy(g_root, "/tmp/mqs-c-test-XXXXXX");
    if (mkdtemp(g_root) == NULL) {
        perror("mkdtemp");
        return 2;
    }

    test_version_and_status_strings();
    test_engines();
    test_open_close_lock();
    test_read_only();
    test_bad_configs();
    test_shards_and_names();
    test_append_and_read();
    test_invalid_records();
    test_read_by_keys_and_tag();
    test_offset_for_timestamp();
    test_deletes();
    test_truncate_to();
    test_compaction();
    test_shards_create();
    test_groups();
    test_stats();
    test_transfer_basic();
    test_transfer_read_into();
    test_append_raw();
    test_null_values();
    test_idempotent_producer();
    test_log_callback();
    test_transfer_read_into_errors();
    test_transfer_nonblocking();
    test_sendfile_nonblocking();
    test_views_outlive_store();
    test_use_after_close();
    test_close_race();
    test_file_engine();
    test_rocksdb_bad_directories();
    test_unreachable_server();
    test_append_nowait_pipeline();
    test_append_nowait_survives_kill();
    test_append_nowait_errors();
    test_event_loop();

    remove_tree(g_root);
    return check_summary();
}
