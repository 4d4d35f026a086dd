/* Built against an installed mqstore only (pkg-config), by run.sh. Opens a
 * store in argv[1], appends and reads back one record, prints the version
 * it linked with. */
#include <mqstore.h>
#include <stdio.h>
#include <string.h>

#define CHECK(call)                                                                   \
    do {                                                                              \
        mqs_status s_ = (call);                                                       \
        if (s_ != MQS_OK) {                                                           \
            fprintf(stderr, "%s: %s: %s\n", #call, mqs_status_str(s_),                \
                    mqs_last_error_message());                                        \
            return 1;                                                                 \
        }                                                                             \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: hello DIR\n");
        return 2;
    }
    mqs_store *store;
    CHECK(mqs_store_open(argv[1], NULL, &store));
    CHECK(mqs_shard_create(store, "s", NULL));
    mqs_record_in rec;
    memset(&rec, 0, sizeof rec);
    rec.value = (mqs_slice){(const uint8_t *)"installed", 9};
    int64_t offset;
    CHECK(mqs_append(store, "s", &rec, &offset));
    mqs_batch *batch;
    CHECK(mqs_read(store, "s", 0, 10, 1 << 20, &batch));
    const mqs_record *records;
    size_t n;
    CHECK(mqs_batch_records(batch, &records, &n));
    if (n != 1 || records[0].value.len != 9 || memcmp(records[0].value.data, "installed", 9) != 0) {
        fprintf(stderr, "read back the wrong record\n");
        return 1;
    }
    CHECK(mqs_batch_free(batch));
    CHECK(mqs_store_close(store));
    printf("c ok %s\n", mqs_version());
    return 0;
}
