/* mqstore demo, C side: a store on the default engine (the journal, every
 * append fsynced) in a temporary directory, 1 KiB messages appended by one
 * producer thread per shard (their fsyncs shared by group commit), read back and
 * verified, and one shard streamed over a local socket with
 * mqs_sendfile_to_fd and decoded (RecordBatch headers + CRC-32C) by a reader
 * thread. Prints the throughput of each step. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "mqstore.h"

#define SHARDS 4
#define MESSAGES_PER_SHARD (1600 * BATCH)
#define BATCH 64
#define VALUE_SIZE 1024

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void check(mqs_status status, const char *what) {
    if (status != MQS_OK) {
        fprintf(stderr, "demo: %s failed: %s: %s\n", what, mqs_status_str(status),
                mqs_last_error_message());
        exit(1);
    }
}

/* The value of message `seq` on `shard`: a fixed pattern stamped with the
 * shard and sequence number, so every message is distinct and checkable. */
static void fill_value(uint8_t *buf, int shard, int64_t seq) {
    static uint8_t pattern[VALUE_SIZE];
    if (pattern[1] == 0)
        for (int i = 0; i < VALUE_SIZE; i++) pattern[i] = (uint8_t)(i * 7 + 1);
    memcpy(buf, pattern, VALUE_SIZE);
    memcpy(buf, &shard, sizeof shard);
    memcpy(buf + sizeof shard, &seq, sizeof seq);
}

/* CRC-32C (Castagnoli), slicing-by-8 tables — the decoder shares no code
 * with mqstore. */
static uint32_t crc_table[8][256];
static void crc32c_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (int t = 1; t < 8; t++)
        for (int i = 0; i < 256; i++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
}
static uint32_t crc32c(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n >= 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        c = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^ crc_table[5][(lo >> 16) & 0xFF] ^
            crc_table[4][lo >> 24] ^ crc_table[3][p[4]] ^ crc_table[2][p[5]] ^ crc_table[1][p[6]] ^
            crc_table[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n--) c = crc_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}
static uint64_t be(const uint8_t *p, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v = (v << 8) | p[i];
    return v;
}

struct reader {
    int fd;
    uint64_t bytes, batches, records;
    int64_t last_offset;
    int bad;
};

/* Reads RecordBatch v2 frames off the socket and validates each one. */
static void *read_batches(void *arg) {
    struct reader *r = arg;
    size_t cap = 1 << 20, len = 0;
    uint8_t *buf = malloc(cap);
    for (;;) {
        if (cap - len < 65536) buf = realloc(buf, cap *= 2);
        ssize_t n = read(r->fd, buf + len, cap - len);
        if (n <= 0) break;
        len += (size_t)n;
        size_t pos = 0;
        while (len - pos >= 61) {
            uint64_t total = 12 + be(buf + pos + 8, 4);
            if (len - pos < total) break;
            const uint8_t *b = buf + pos;
            if (b[16] != 2 || crc32c(b + 21, total - 21) != (uint32_t)be(b + 17, 4)) r->bad++;
            r->last_offset = (int64_t)be(b, 8) + (int64_t)be(b + 23, 4);
            r->records += be(b + 57, 4);
            r->batches++;
            r->bytes += total;
            pos += total;
        }
        memmove(buf, buf + pos, len - pos);
        len -= pos;
    }
    if (len != 0) r->bad++;
    free(buf);
    return NULL;
}

struct producer {
    mqs_store *store;
    const char *name;
    int shard;
};

/* Appends this shard's messages in batches of 64; each call returns once
 * its batch is on stable storage. */
static void *produce(void *arg) {
    struct producer *p = arg;
    uint8_t *values = malloc((size_t)BATCH * VALUE_SIZE);
    mqs_record_in batch[BATCH];
    memset(batch, 0, sizeof batch);
    for (int64_t base = 0; base < MESSAGES_PER_SHARD; base += BATCH) {
        for (int i = 0; i < BATCH; i++) {
            fill_value(values + (size_t)i * VALUE_SIZE, p->shard, base + i);
            batch[i].value.data = values + (size_t)i * VALUE_SIZE;
            batch[i].value.len = VALUE_SIZE;
        }
        int64_t offset;
        check(mqs_append_batch(p->store, p->name, batch, BATCH, &offset), "append_batch");
        if (offset != base) {
            fprintf(stderr, "demo: offset %lld != %lld\n", (long long)offset, (long long)base);
            exit(1);
        }
    }
    free(values);
    return NULL;
}

/* One producer, pipelined: mqs_append_batch_nowait returns once the batch has
 * its offsets, and a batch is acknowledged (on stable storage) only when
 * mqs_wait_durable returns for it. Keeping WINDOW batches in flight lets the
 * journal's flusher threads write and fdatasync large groups while this
 * thread goes on encoding. */
#define WINDOW 64
static uint64_t produce_pipelined(mqs_store *store, const char *name, int64_t messages) {
    uint8_t *values = malloc((size_t)BATCH * VALUE_SIZE);
    mqs_record_in batch[BATCH];
    memset(batch, 0, sizeof batch);
    int64_t in_flight[WINDOW]; /* last offset of each batch, oldest at head */
    int head = 0, count = 0;
    uint64_t acknowledged = 0;
    for (int64_t base = 0; base < messages; base += BATCH) {
        if (count == WINDOW) {
            check(mqs_wait_durable(store, name, in_flight[head]), "wait_durable");
            head = (head + 1) % WINDOW;
            count--;
            acknowledged += BATCH;
        }
        for (int i = 0; i < BATCH; i++) {
            fill_value(values + (size_t)i * VALUE_SIZE, 9, base + i);
            batch[i].value.data = values + (size_t)i * VALUE_SIZE;
            batch[i].value.len = VALUE_SIZE;
        }
        int64_t offset;
        check(mqs_append_batch_nowait(store, name, batch, BATCH, &offset), "append_batch_nowait");
        if (offset != base) {
            fprintf(stderr, "demo: offset %lld != %lld\n", (long long)offset, (long long)base);
            exit(1);
        }
        in_flight[(head + count) % WINDOW] = offset + BATCH - 1;
        count++;
    }
    for (; count > 0; count--, head = (head + 1) % WINDOW) {
        check(mqs_wait_durable(store, name, in_flight[head]), "wait_durable");
        acknowledged += BATCH;
    }
    free(values);
    return acknowledged;
}

int main(void) {
    crc32c_init();
    char dir[] = "/tmp/mqstore-demo-XXXXXX";
    if (!mkdtemp(dir)) return perror("mkdtemp"), 1;
    printf("mqstore %s — C demo, store in %s (default engine)\n", mqs_version(), dir);

    mqs_store *store = NULL;
    check(mqs_store_open(dir, NULL, &store), "open");
    char names[SHARDS][32];
    for (int s = 0; s < SHARDS; s++) {
        snprintf(names[s], sizeof names[s], "orders-%d", s);
        check(mqs_shard_create(store, names[s], NULL), "shard create");
    }

    /* 1. Append: batches of 64 × 1 KiB, one producer thread per shard. */
    pthread_t producers[SHARDS];
    struct producer args[SHARDS];
    double t0 = now_seconds();
    for (int s = 0; s < SHARDS; s++) {
        args[s] = (struct producer){store, names[s], s};
        pthread_create(&producers[s], NULL, produce, &args[s]);
    }
    for (int s = 0; s < SHARDS; s++) pthread_join(producers[s], NULL);
    double t1 = now_seconds();
    uint64_t total_messages = (uint64_t)SHARDS * MESSAGES_PER_SHARD;
    printf("append   %8llu msgs in %6.3f s  %10.0f msg/s  %7.1f MB/s  (fsync, %d threads)\n",
           (unsigned long long)total_messages, t1 - t0, total_messages / (t1 - t0),
           total_messages * (double)VALUE_SIZE / (t1 - t0) / 1e6, SHARDS);

    /* 1b. The same number of messages from one pipelining producer. */
    check(mqs_shard_create(store, "orders-pipelined", NULL), "shard create");
    t0 = now_seconds();
    uint64_t acknowledged = produce_pipelined(store, "orders-pipelined", (int64_t)total_messages);
    t1 = now_seconds();
    printf("append   %8llu msgs in %6.3f s  %10.0f msg/s  %7.1f MB/s  (fsync, 1 thread, %d batches in flight)\n",
           (unsigned long long)acknowledged, t1 - t0, acknowledged / (t1 - t0),
           acknowledged * (double)VALUE_SIZE / (t1 - t0) / 1e6, WINDOW);

    /* 2. Read everything back and verify each value (zero-copy views). */
    uint8_t expected[VALUE_SIZE];
    uint64_t verified = 0;
    t0 = now_seconds();
    for (int s = 0; s < SHARDS; s++) {
        int64_t offset = 0;
        while (offset < MESSAGES_PER_SHARD) {
            mqs_batch *result = NULL;
            check(mqs_read(store, names[s], offset, 4096, 8 << 20, &result), "read");
            const mqs_record *records;
            size_t count;
            check(mqs_batch_records(result, &records, &count), "batch_records");
            for (size_t i = 0; i < count; i++) {
                fill_value(expected, s, records[i].offset);
                if (records[i].offset != offset + (int64_t)i || records[i].value.len != VALUE_SIZE ||
                    memcmp(records[i].value.data, expected, VALUE_SIZE) != 0) {
                    fprintf(stderr, "demo: shard %d offset %lld mismatch\n", s, (long long)records[i].offset);
                    return 1;
                }
            }
            verified += count;
            check(mqs_batch_next_offset(result, &offset), "batch_next_offset");
            check(mqs_batch_free(result), "batch_free");
        }
    }
    t1 = now_seconds();
    printf("read     %8llu msgs in %6.3f s  %10.0f msg/s  %7.1f MB/s  (all verified)\n",
           (unsigned long long)verified, t1 - t0, verified / (t1 - t0),
           verified * (double)VALUE_SIZE / (t1 - t0) / 1e6);

    /* 3. Stream shard 0 over a socket, decoded by a reader thread. */
    int sockets[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sockets) != 0) return perror("socketpair"), 1;
    struct reader reader = {.fd = sockets[1]};
    pthread_t thread;
    pthread_create(&thread, NULL, read_batches, &reader);
    t0 = now_seconds();
    int64_t offset = 0;
    uint64_t sent = 0;
    while (offset < MESSAGES_PER_SHARD) {
        uint64_t written;
        check(mqs_sendfile_to_fd(store, names[0], offset, 1 << 20, sockets[0], &written, &offset), "sendfile_to_fd");
        sent += written;
    }
    close(sockets[0]);
    pthread_join(thread, NULL);
    t1 = now_seconds();
    close(sockets[1]);
    printf("sendfile %8llu bytes in %6.3f s  %7.1f MB/s  -> %llu batches, %llu records decoded, CRC ok: %s\n",
           (unsigned long long)sent, t1 - t0, sent / (t1 - t0) / 1e6,
           (unsigned long long)reader.batches, (unsigned long long)reader.records,
           reader.bad ? "NO" : "yes");
    if (reader.bad || reader.bytes != sent || reader.records != MESSAGES_PER_SHARD ||
        reader.last_offset != MESSAGES_PER_SHARD - 1) {
        fprintf(stderr, "demo: streamed data did not decode as expected\n");
        return 1;
    }

    check(mqs_store_close(store), "close");
    char command[64];
    snprintf(command, sizeof command, "rm -rf %s", dir);
    if (system(command) != 0) return 1;
    printf("C demo OK\n");
    return 0;
}
