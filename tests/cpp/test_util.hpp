// Tiny test harness shared by test_main.cpp and test_other.cpp. Counters live
// in inline functions' statics, so both translation units share them (ODR).
#ifndef MQSTORE_TEST_UTIL_HPP
#define MQSTORE_TEST_UTIL_HPP

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <optional>
#include <sstream>
#include <string>

#include <unistd.h>

#include "mqstore.hpp"

namespace test {

inline int &passed() {
    static int n = 0;
    return n;
}

inline int &failed() {
    static int n = 0;
    return n;
}

inline bool record(bool ok, const char *expr, const char *file, int line, const std::string &detail = std::string()) {
    if (ok) {
        ++passed();
    } else {
        ++failed();
        std::fprintf(stderr, "FAIL %s:%d: %s%s%s\n", file, line, expr, detail.empty() ? "" : " -- ", detail.c_str());
    }
    return ok;
}

template <typename A, typename B>
std::string describe(const A &a, const B &b) {
    std::ostringstream out;
    out << "left = " << a << ", right = " << b;
    return out.str();
}

/// Evaluates each side once; prints both on failure.
template <typename A, typename B>
bool check_eq(const A &a, const B &b, const char *expr, const char *file, int line) {
    bool ok = a == b;
    return record(ok, expr, file, line, ok ? std::string() : describe(a, b));
}

/// Runs f and returns the mqstore::Error it threw, if any. Any other
/// exception propagates (and fails the enclosing test case).
template <typename F>
std::optional<mqstore::Error> error_of(F &&f) {
    try {
        f();
    } catch (const mqstore::Error &e) {
        return e;
    }
    return std::nullopt;
}

inline bool contains(const std::string &haystack, const std::string &needle) {
    return haystack.find(needle) != std::string::npos;
}

/// Runs one test case; an escaped exception counts as a failure.
inline void run(const char *name, const std::function<void()> &body) {
    int failed_before = failed();
    try {
        body();
    } catch (const mqstore::Error &e) {
        ++failed();
        std::fprintf(stderr, "FAIL %s: uncaught mqstore::Error (code %d): %s\n", name, static_cast<int>(e.code()), e.what());
    } catch (const std::exception &e) {
        ++failed();
        std::fprintf(stderr, "FAIL %s: uncaught exception: %s\n", name, e.what());
    }
    std::fprintf(stderr, "%s %s\n", failed() == failed_before ? "ok  " : "FAIL", name);
}

/// The run's scratch directory (created by main with mkdtemp).
inline std::string &base_dir() {
    static std::string dir;
    return dir;
}

/// This program's path (argv[0]), to run it as a helper process.
inline std::string &self_path() {
    static std::string path;
    return path;
}

/// A store directory inside the scratch directory (created by the store).
inline std::string dir(const std::string &name) { return base_dir() + "/" + name; }

/// CRC-32C (Castagnoli), bit by bit: tests build Kafka batches with it.
inline uint32_t crc32c(const char *data, std::size_t len) {
    uint32_t crc = 0xFFFFFFFFu;
    for (std::size_t i = 0; i < len; ++i) {
        crc ^= static_cast<unsigned char>(data[i]);
        for (int bit = 0; bit < 8; ++bit) {
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
        }
    }
    return ~crc;
}

}  // namespace test

// ---- defined in test_other.cpp, used by test_main.cpp
namespace other {
/// Appends `count` records as one batch: key "k<i>", value "value-<i>",
/// tag "even"/"odd", timestamp 1000 + 10 * i, header ("index", "<i>").
/// Returns the base offset.
int64_t append_numbered(mqstore::Store &store, const std::string &shard, int first, int count);
/// The values of a read, joined with ','.
std::string join_values(const mqstore::ReadResult &result);
/// Opens a store in dir, writes records, reads them, deletes the shard and
/// destroys the store; returns the (still valid) read result.
mqstore::ReadResult read_then_destroy_store(const std::string &dir);
/// Returns a Store by value (moved across translation units).
mqstore::Store open_store(const std::string &dir, const std::optional<std::string> &config = std::nullopt);
/// Transfer and sendfile tests.
void transfer_tests();
/// The helper process of the RocksDB lock test (`--hold-store DIR`).
int hold_store(const std::string &dir);
}  // namespace other

#define CHECK(cond) ::test::record(static_cast<bool>(cond), #cond, __FILE__, __LINE__)
#define CHECK_EQ(a, b) ::test::check_eq((a), (b), #a " == " #b, __FILE__, __LINE__)

/// Checks that expr throws mqstore::Error with the given code; binds the
/// error's message to a std::string named `var` for further checks.
#define CHECK_THROWS_CODE(var, expr, code_)                                                                          \
    std::string var;                                                                                                  \
    do {                                                                                                              \
        auto var##_error = ::test::error_of([&] { (void)(expr); });                                                   \
        if (::test::record(var##_error.has_value(), #expr " throws " #code_, __FILE__, __LINE__, "no exception")) {  \
            var = var##_error->what();                                                                                \
            ::test::record(var##_error->code() == (code_), #expr " throws " #code_, __FILE__, __LINE__,              \
                           "code " + std::to_string(static_cast<int>(var##_error->code())) + ": " + var);             \
        }                                                                                                             \
    } while (0)

#endif  // MQSTORE_TEST_UTIL_HPP
