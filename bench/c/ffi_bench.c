/*
 * FFI overhead driver: the harness's batch-append workload, driven through
 * the C ABI of libmqstore.so instead of the Rust API.
 *
 *   ffi_bench DIR RECORD_BYTES BATCH SECONDS REPS RETENTION_BYTES
 *
 * Each repetition opens a fresh store in DIR/rep-N, creates one shard with
 * the same options as the Rust workload (memory engine, durability none,
 * retention_bytes as given), then calls mqs_append_batch with one prebuilt
 * array of BATCH records until SECONDS have passed. Prints one JSON line:
 *   {"driver":"c","record_bytes":..,"batch":..,"samples":[msgs/s per rep]}
 * The harness (bench/src/ffi.rs) compiles this file, runs it and takes the
 * median, exactly as it does for its own Rust figure.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "mqstore.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, mqs_status status) {
    fprintf(stderr, "ffi_bench: %s failed: %s: %s\n", what, mqs_status_str(status),
            mqs_last_error_message());
    exit(1);
}

/* The same xorshift fill as the Rust harness: values that do not compress
 * or repeat, so nothing downstream can take a shortcut. */
static void fill_pseudo_random(uint8_t *buf, size_t len, uint64_t seed) {
    uint64_t state = seed | 1;
    for (size_t i = 0; i < len; i += 8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        size_t n = len - i < 8 ? len - i : 8;
        memcpy(buf + i, &state, n);
    }
}

static double one_rep(const char *dir, const char *shard_options, const mqs_record_in *records,
                      size_t batch, double seconds) {
    mqs_store *store = NULL;
    mqs_status status = mqs_store_open(dir, NULL, &store);
    if (status != MQS_OK) die("mqs_store_open", status);
    status = mqs_shard_create(store, "bench-0", shard_options);
    if (status != MQS_OK) die("mqs_shard_create", status);

    uint64_t sent = 0;
    double start = now_s();
    double elapsed = 0;
    /* Batches of 64+ records take microseconds each, so reading the clock
     * after every call costs well under 1%; smaller batches check every
     * 1,024 records like the Rust workload. */
    size_t per_check = batch >= 1024 ? 1 : 1024 / batch;
    for (;;) {
        for (size_t i = 0; i < per_check; i++) {
            int64_t base = 0;
            status = mqs_append_batch(store, "bench-0", records, batch, &base);
            if (status != MQS_OK) die("mqs_append_batch", status);
        }
        sent += (uint64_t)(per_check * batch);
        elapsed = now_s() - start;
        if (elapsed >= seconds) break;
    }
    status = mqs_store_close(store);
    if (status != MQS_OK) die("mqs_store_close", status);
    return (double)sent / elapsed;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr,
                "usage: %s DIR RECORD_BYTES BATCH SECONDS REPS RETENTION_BYTES\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    size_t record_bytes = strtoull(argv[2], NULL, 10);
    size_t batch = strtoull(argv[3], NULL, 10);
    double seconds = strtod(argv[4], NULL);
    int reps = atoi(argv[5]);
    unsigned long long retention = strtoull(argv[6], NULL, 10);
    if (record_bytes == 0 || batch == 0 || seconds <= 0 || reps <= 0) {
        fprintf(stderr, "ffi_bench: arguments must be positive\n");
        return 2;
    }

    uint8_t *data = malloc(record_bytes * batch);
    mqs_record_in *records = calloc(batch, sizeof *records);
    if (data == NULL || records == NULL) {
        fprintf(stderr, "ffi_bench: out of memory\n");
        return 1;
    }
    fill_pseudo_random(data, record_bytes * batch, 1);
    for (size_t i = 0; i < batch; i++) {
        /* calloc left key/headers/tags NULL and timestamps 0 (= now, never
         * expires): a value-only record, as in the Rust workload. */
        records[i].value.data = data + i * record_bytes;
        records[i].value.len = record_bytes;
    }

    char shard_options[128];
    snprintf(shard_options, sizeof shard_options,
             "engine = \"memory\"\ndurability = \"none\"\nretention_bytes = %llu\n", retention);

    printf("{\"driver\":\"c\",\"library_version\":\"%s\",\"record_bytes\":%zu,\"batch\":%zu,"
           "\"seconds\":%g,\"samples\":[",
           mqs_version(), record_bytes, batch, seconds);
    for (int rep = 0; rep < reps; rep++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/rep-%d", dir, rep);
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            perror("ffi_bench: mkdir");
            return 1;
        }
        double rate = one_rep(path, shard_options, records, batch, seconds);
        printf("%s%.1f", rep ? "," : "", rate);
    }
    printf("]}\n");
    free(records);
    free(data);
    return 0;
}
