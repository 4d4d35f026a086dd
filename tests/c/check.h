/*
 * A tiny check harness for the C API tests: every CHECK counts as one check,
 * failures are reported with file, line and the library's last error, and
 * check_summary() prints the closing "N passed, M failed" line.
 */
#ifndef MQS_TEST_CHECK_H
#define MQS_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqstore.h"

static int check_passed = 0;
static int check_failed = 0;

static inline void check_at(int ok, const char *file, int line, const char *what) {
    if (ok) {
        check_passed++;
        return;
    }
    check_failed++;
    fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", file, line, what,
            mqs_last_error_message());
}

static inline void check_status_at(mqs_status got, mqs_status want, const char *file, int line,
                                   const char *expr) {
    if (got == want) {
        check_passed++;
        return;
    }
    check_failed++;
    fprintf(stderr, "%s:%d: %s returned %d (%s), expected %d (%s); last error: %s\n", file, line,
            expr, (int)got, mqs_status_str(got), (int)want, mqs_status_str(want),
            mqs_last_error_message());
}

static inline void check_mentions_at(const char *needle, const char *file, int line) {
    const char *message = mqs_last_error_message();
    if (message != NULL && strstr(message, needle) != NULL) {
        check_passed++;
        return;
    }
    check_failed++;
    fprintf(stderr, "%s:%d: last error \"%s\" does not mention \"%s\"\n", file, line,
            message ? message : "(NULL)", needle);
}

static inline int check_summary(void) {
    printf("%d passed, %d failed\n", check_passed, check_failed);
    fflush(stdout);
    return check_failed == 0 ? 0 : 1;
}

/* One check: `cond` holds. */
#define CHECK(cond) check_at((cond) ? 1 : 0, __FILE__, __LINE__, #cond)
/* One check: `expr` returns the status `want`. */
#define CHECK_STATUS(expr, want) check_status_at((expr), (want), __FILE__, __LINE__, #expr)
#define CHECK_OK(expr) CHECK_STATUS(expr, MQS_OK)
/* One check: this thread's last error message contains `needle`. */
#define CHECK_MENTIONS(needle) check_mentions_at((needle), __FILE__, __LINE__)
/* A check that later checks depend on: on failure, stop the program. */
#define REQUIRE(cond)                                                                  \
    do {                                                                               \
        int required_ok_ = (cond) ? 1 : 0;                                             \
        check_at(required_ok_, __FILE__, __LINE__, #cond);                             \
        if (!required_ok_) {                                                           \
            fprintf(stderr, "%s:%d: required check failed; stopping\n", __FILE__,      \
                    __LINE__);                                                         \
            check_summary();                                                           \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

#endif /* MQS_TEST_CHECK_H */
