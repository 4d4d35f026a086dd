// mqstore.hpp — header-only C++17 RAII binding of the mqstore C API.
//
//   #include "mqstore.hpp"            // needs -Iinclude (mqstore.h) and -Ibindings/cpp
//   auto store = mqstore::Store::open("/var/lib/broker");
//   store.create_shard("orders");
//   mqstore::Message m;
//   m.key = "customer-7";
//   m.value = payload;                 // std::string_view: borrowed, not copied
//   m.tags = {"priority"};
//   int64_t offset = store.append("orders", m);
//   mqstore::ReadResult batch = store.read("orders", offset, 100);
//   for (mqstore::RecordView r : batch) use(r.offset(), r.key(), r.value());
//
// Design (modelled on lmdbxx and wasmtime's C++ headers):
//  * Every C handle is owned by exactly one move-only C++ object whose
//    destructor frees it and never throws. Moved-from objects are empty and
//    safe to destroy or assign to.
//  * Every failing C call throws mqstore::Error, carrying the mqs_status code
//    and the library's message (mqs_last_error_message(), captured right after
//    the failing call, before any other mqs_ call on this thread).
//  * Operations on a Store that was moved from or closed throw
//    mqstore::Error with code() == MQS_INVALID_HANDLE, without calling into
//    the library — the same code the C API reports for a closed handle.
//  * Input records (Message) borrow their bytes through std::string_view;
//    nothing is copied before the library encodes the batch.
//  * Read results are zero-copy: RecordView, Header and the string_views they
//    return point into the ReadResult's mqs_batch and stay valid exactly as
//    long as that ReadResult lives (not moved from, not destroyed). They do
//    NOT depend on the Store: the batch holds its own reference to the data,
//    so a ReadResult stays valid after the Store is closed or destroyed and
//    after its shard is deleted.
//  * A Store is thread-safe (the C handle is); share one Store by reference
//    among threads. ReadResult and Transfer objects are not synchronized.
//  * No global state: everything is inline, so the header may be included by
//    any number of translation units.
#ifndef MQSTORE_HPP
#define MQSTORE_HPP

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mqstore.h"

namespace mqstore {

// ------------------------------------------------------------------ constants

/// offset_for_timestamp() sentinels (Kafka ListOffsets): the low watermark
/// (first readable offset) and the high watermark (next offset to be written).
inline constexpr int64_t EARLIEST = MQS_TIMESTAMP_EARLIEST;
inline constexpr int64_t LATEST = MQS_TIMESTAMP_LATEST;

/// No byte limit for read() / plan_transfer() / sendfile_to_fd().
inline constexpr std::size_t UNLIMITED = std::numeric_limits<std::size_t>::max();

/// Version of the C header this binding was compiled against.
inline constexpr int VERSION_MAJOR = MQS_VERSION_MAJOR;
inline constexpr int VERSION_MINOR = MQS_VERSION_MINOR;
inline constexpr int VERSION_PATCH = MQS_VERSION_PATCH;

/// Version of the loaded library, e.g. "0.1.0" (a static string).
inline std::string_view version() noexcept { return mqs_version(); }

/// A static, human-readable name of a status code (never null).
inline const char *status_str(mqs_status status) noexcept { return mqs_status_str(status); }

// ---------------------------------------------------------------------- errors

/// Every failure of the library. what() is the library's message naming what
/// went wrong (the status name when the library gave none).
class Error : public std::runtime_error {
public:
    Error(mqs_status code, const std::string &message)
        : std::runtime_error(message.empty() ? std::string(mqs_status_str(code)) : message),
          code_(code) {}

    /// Builds the error of the call that just failed on this thread. Must be
    /// called before any other mqs_ function runs on this thread.
    static Error from_last_call(mqs_status code) {
        const char *message = mqs_last_error_message();
        return Error(code, message != nullptr ? std::string(message) : std::string());
    }

    mqs_status code() const noexcept { return code_; }

private:
    mqs_status code_;
};

/// Throws Error (with this thread's last error message) unless status is MQS_OK.
inline void check(mqs_status status) {
    if (status != MQS_OK) {
        throw Error::from_last_call(status);
    }
}

/// Receives logged events: level (MQS_LOG_ERROR, MQS_LOG_WARN, MQS_LOG_INFO)
/// and message. Called on mqstore's logging thread, one event at a time.
using LogCallback = std::function<void(int level, std::string_view message)>;

/// Installs callback for the whole process (an empty one removes it):
/// background failures and what recovery gave up to open a store (see
/// mqs_set_log_callback). Events queued before the call reach the previous
/// callback first. An exception thrown by the callback is swallowed (it
/// cannot cross the C ABI). Do not call from within the callback.
inline void set_log_callback(LogCallback callback) {
    static std::unique_ptr<LogCallback> current;
    std::unique_ptr<LogCallback> next = callback ? std::make_unique<LogCallback>(std::move(callback)) : nullptr;
    mqs_log_fn trampoline = [](void *user, int level, const char *message) {
        try {
            (*static_cast<LogCallback *>(user))(level, message);
        } catch (...) {
        }
    };
    check(mqs_set_log_callback(next ? trampoline : nullptr, next.get()));
    // The C call delivered what was queued: the old callback is unused now.
    current = std::move(next);
}

namespace detail {

inline const uint8_t *bytes(const char *p) noexcept { return reinterpret_cast<const uint8_t *>(p); }

/// A present slice: data is never NULL, even for an empty view (a NULL data
/// pointer would mean "absent" to the C API).
inline mqs_slice present(std::string_view s) noexcept {
    mqs_slice slice;
    slice.data = s.data() != nullptr ? bytes(s.data()) : bytes("");
    slice.len = s.size();
    return slice;
}

inline mqs_slice optional_slice(const std::optional<std::string_view> &s) noexcept {
    if (!s) {
        mqs_slice absent;
        absent.data = nullptr;
        absent.len = 0;
        return absent;
    }
    return present(*s);
}

inline std::string_view view(const mqs_slice &s) noexcept {
    if (s.data == nullptr) {
        return std::string_view();
    }
    return std::string_view(reinterpret_cast<const char *>(s.data), s.len);
}

inline std::optional<std::string_view> optional_view(const mqs_slice &s) noexcept {
    if (s.data == nullptr) {
        return std::nullopt;
    }
    return view(s);
}

/// The NUL-terminated form of a name. An embedded NUL would silently cut the
/// name short in C, so it is rejected.
inline const char *c_name(const std::string &s, const char *what) {
    if (s.find('\0') != std::string::npos) {
        throw Error(MQS_INVALID_ARGUMENT, std::string("invalid argument: ") + what + " contains a NUL byte");
    }
    return s.c_str();
}

inline std::vector<mqs_slice> slices(const std::vector<std::string_view> &keys) {
    std::vector<mqs_slice> out;
    out.reserve(keys.size());
    for (std::string_view key : keys) {
        out.push_back(present(key));
    }
    return out;
}

/// A read-only random-access range over a C array, yielding Projection(elem)
/// by value. Backs RecordView::headers() and RecordView::tags().
template <typename CElem, typename Value, Value (*Project)(const CElem &) noexcept>
class ArrayRange {
public:
    class iterator {
    public:
        using iterator_category = std::input_iterator_tag;  // proxy values (returned by value)
        using value_type = Value;
        using difference_type = std::ptrdiff_t;
        using pointer = void;
        using reference = Value;

        iterator() noexcept = default;
        explicit iterator(const CElem *p) noexcept : p_(p) {}
        Value operator*() const noexcept { return Project(*p_); }
        Value operator[](difference_type n) const noexcept { return Project(p_[n]); }
        iterator &operator++() noexcept { ++p_; return *this; }
        iterator operator++(int) noexcept { iterator old = *this; ++p_; return old; }
        iterator &operator--() noexcept { --p_; return *this; }
        iterator operator--(int) noexcept { iterator old = *this; --p_; return old; }
        iterator &operator+=(difference_type n) noexcept { p_ += n; return *this; }
        iterator &operator-=(difference_type n) noexcept { p_ -= n; return *this; }
        friend iterator operator+(iterator it, difference_type n) noexcept { return it += n; }
        friend iterator operator-(iterator it, difference_type n) noexcept { return it -= n; }
        friend difference_type operator-(iterator a, iterator b) noexcept { return a.p_ - b.p_; }
        friend bool operator==(iterator a, iterator b) noexcept { return a.p_ == b.p_; }
        friend bool operator!=(iterator a, iterator b) noexcept { return a.p_ != b.p_; }
        friend bool operator<(iterator a, iterator b) noexcept { return a.p_ < b.p_; }

    private:
        const CElem *p_ = nullptr;
    };

    ArrayRange() noexcept = default;
    ArrayRange(const CElem *data, std::size_t size) noexcept : data_(size != 0 ? data : nullptr), size_(data != nullptr ? size : 0) {}

    std::size_t size() const noexcept { return size_; }
    bool empty() const noexcept { return size_ == 0; }
    iterator begin() const noexcept { return iterator(data_); }
    iterator end() const noexcept { return iterator(data_ + size_); }
    /// Unchecked, like std::vector::operator[].
    Value operator[](std::size_t i) const noexcept { return Project(data_[i]); }
    Value at(std::size_t i) const {
        if (i >= size_) {
            throw std::out_of_range("mqstore: index out of range");
        }
        return Project(data_[i]);
    }

private:
    const CElem *data_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace detail

// -------------------------------------------------------------------- records

/// A record header: a UTF-8 name and an optional (nullable) value.
struct Header {
    std::string_view key;
    std::optional<std::string_view> value;
};

namespace detail {
inline Header project_header(const mqs_header &h) noexcept { return Header{view(h.key), optional_view(h.value)}; }
inline std::string_view project_tag(const mqs_slice &s) noexcept { return view(s); }
}  // namespace detail

/// The headers of a stored record (a view into its ReadResult).
using HeaderList = detail::ArrayRange<mqs_header, Header, &detail::project_header>;
/// The tags of a stored record (a view into its ReadResult).
using TagList = detail::ArrayRange<mqs_slice, std::string_view, &detail::project_tag>;

/// A record to append. Every view is borrowed: the caller keeps the bytes
/// alive during the append call only (they are encoded before it returns).
struct Message {
    /// std::nullopt = no key; an empty view = a present, empty key.
    std::optional<std::string_view> key;
    /// std::nullopt = a null value (a Kafka tombstone), which is not an
    /// empty value; a default Message has an empty value.
    std::optional<std::string_view> value = std::string_view{};
    /// (name, value) pairs; names must be UTF-8 and must not start with the
    /// reserved prefix "__mqs."; std::nullopt = a null header value.
    std::vector<std::pair<std::string_view, std::optional<std::string_view>>> headers;
    /// Tags (UTF-8), queryable with Store::read_by_tag().
    std::vector<std::string_view> tags;
    /// Milliseconds since the Unix epoch; 0 = the time of the append.
    int64_t timestamp_ms = 0;
    /// Reads skip the record from this time on (ms since the epoch); nullopt = never.
    std::optional<int64_t> expire_at_ms;
};

/// A stored record: a cheap, copyable view into a ReadResult. It and every
/// string_view it returns are valid only while that ReadResult lives.
class RecordView {
public:
    explicit RecordView(const mqs_record *record) noexcept : r_(record) {}

    int64_t offset() const noexcept { return r_->offset; }
    int64_t timestamp_ms() const noexcept { return r_->timestamp_ms; }
    std::optional<int64_t> expire_at_ms() const noexcept {
        return r_->expire_at_ms == 0 ? std::nullopt : std::optional<int64_t>(r_->expire_at_ms);
    }
    /// std::nullopt when the record has no key.
    std::optional<std::string_view> key() const noexcept { return detail::optional_view(r_->key); }
    /// The value; empty for a null value (see nullable_value()).
    std::string_view value() const noexcept { return detail::view(r_->value); }
    /// std::nullopt for a null value (a Kafka tombstone), as opposed to an
    /// empty one.
    std::optional<std::string_view> nullable_value() const noexcept {
        return r_->value_is_null ? std::nullopt : std::optional<std::string_view>(detail::view(r_->value));
    }
    HeaderList headers() const noexcept { return HeaderList(r_->headers, r_->header_count); }
    TagList tags() const noexcept { return TagList(r_->tags, r_->tag_count); }
    bool has_tag(std::string_view tag) const noexcept {
        for (std::string_view t : tags()) {
            if (t == tag) {
                return true;
            }
        }
        return false;
    }
    /// The underlying C record (borrowed from the batch).
    const mqs_record *raw() const noexcept { return r_; }

private:
    const mqs_record *r_;
};

/// The records of one read. Owns the mqs_batch (freed by the destructor);
/// move-only. A moved-from ReadResult is empty (size() == 0, next_offset() == -1).
class ReadResult {
public:
    class iterator {
    public:
        using iterator_category = std::input_iterator_tag;  // yields RecordView by value
        using value_type = RecordView;
        using difference_type = std::ptrdiff_t;
        using pointer = void;
        using reference = RecordView;

        iterator() noexcept = default;
        explicit iterator(const mqs_record *p) noexcept : p_(p) {}
        RecordView operator*() const noexcept { return RecordView(p_); }
        RecordView operator[](difference_type n) const noexcept { return RecordView(p_ + n); }
        iterator &operator++() noexcept { ++p_; return *this; }
        iterator operator++(int) noexcept { iterator old = *this; ++p_; return old; }
        iterator &operator--() noexcept { --p_; return *this; }
        iterator operator--(int) noexcept { iterator old = *this; --p_; return old; }
        iterator &operator+=(difference_type n) noexcept { p_ += n; return *this; }
        iterator &operator-=(difference_type n) noexcept { p_ -= n; return *this; }
        friend iterator operator+(iterator it, difference_type n) noexcept { return it += n; }
        friend iterator operator-(iterator it, difference_type n) noexcept { return it -= n; }
        friend difference_type operator-(iterator a, iterator b) noexcept { return a.p_ - b.p_; }
        friend bool operator==(iterator a, iterator b) noexcept { return a.p_ == b.p_; }
        friend bool operator!=(iterator a, iterator b) noexcept { return a.p_ != b.p_; }
        friend bool operator<(iterator a, iterator b) noexcept { return a.p_ < b.p_; }

    private:
        const mqs_record *p_ = nullptr;
    };

    /// Takes ownership of batch (which must be a live batch). On failure the
    /// batch is freed and Error is thrown.
    explicit ReadResult(mqs_batch *batch) : batch_(batch) {
        const mqs_record *records = nullptr;
        std::size_t count = 0;
        int64_t next = -1;
        mqs_status status = mqs_batch_records(batch_, &records, &count);
        if (status == MQS_OK) {
            status = mqs_batch_next_offset(batch_, &next);
        }
        if (status != MQS_OK) {
            Error error = Error::from_last_call(status);  // before mqs_batch_free resets it
            mqs_batch_free(batch_);
            batch_ = nullptr;
            throw error;
        }
        records_ = count != 0 ? records : nullptr;
        count_ = records != nullptr ? count : 0;
        next_offset_ = next;
    }

    ReadResult(ReadResult &&other) noexcept
        : batch_(std::exchange(other.batch_, nullptr)),
          records_(std::exchange(other.records_, nullptr)),
          count_(std::exchange(other.count_, 0)),
          next_offset_(std::exchange(other.next_offset_, -1)) {}

    ReadResult &operator=(ReadResult &&other) noexcept {
        if (this != &other) {
            reset();
            batch_ = std::exchange(other.batch_, nullptr);
            records_ = std::exchange(other.records_, nullptr);
            count_ = std::exchange(other.count_, 0);
            next_offset_ = std::exchange(other.next_offset_, -1);
        }
        return *this;
    }

    ReadResult(const ReadResult &) = delete;
    ReadResult &operator=(const ReadResult &) = delete;

    ~ReadResult() { reset(); }

    /// Where the next read continues: one past the last offset examined
    /// (skipped deleted/expired records included). -1 for read_by_keys().
    int64_t next_offset() const noexcept { return next_offset_; }

    std::size_t size() const noexcept { return count_; }
    bool empty() const noexcept { return count_ == 0; }
    iterator begin() const noexcept { return iterator(records_); }
    iterator end() const noexcept { return iterator(records_ + count_); }
    /// Unchecked, like std::vector::operator[].
    RecordView operator[](std::size_t i) const noexcept { return RecordView(records_ + i); }
    RecordView at(std::size_t i) const {
        if (i >= count_) {
            throw std::out_of_range("mqstore::ReadResult::at: index out of range");
        }
        return RecordView(records_ + i);
    }
    RecordView front() const noexcept { return RecordView(records_); }
    RecordView back() const noexcept { return RecordView(records_ + count_ - 1); }

    /// The underlying batch (still owned by this object).
    const mqs_batch *native_handle() const noexcept { return batch_; }

private:
    void reset() noexcept {
        if (batch_ != nullptr) {
            mqs_batch_free(batch_);  // a live batch: cannot fail
            batch_ = nullptr;
        }
        records_ = nullptr;
        count_ = 0;
        next_offset_ = -1;
    }

    mqs_batch *batch_ = nullptr;
    const mqs_record *records_ = nullptr;
    std::size_t count_ = 0;
    int64_t next_offset_ = -1;
};

// ------------------------------------------------------------------- transfer

/// A planned transfer of whole stored batches (Kafka RecordBatch v2 bytes) to
/// a file descriptor (send()) or into the caller's buffers (read_into(), for
/// TLS or a broker's own framing). total_bytes()/next_offset() are fixed at
/// planning time (write a response's length first, then send); the plan holds its own
/// reference to the bytes, so later appends/deletes/closing the Store change
/// nothing it sends. Move-only; the destructor frees the plan. Using a
/// moved-from Transfer throws Error(MQS_INVALID_HANDLE).
class Transfer {
public:
    /// Takes ownership of a live mqs_transfer.
    explicit Transfer(mqs_transfer *transfer) noexcept : t_(transfer) {}
    Transfer(Transfer &&other) noexcept : t_(std::exchange(other.t_, nullptr)) {}
    Transfer &operator=(Transfer &&other) noexcept {
        if (this != &other) {
            reset();
            t_ = std::exchange(other.t_, nullptr);
        }
        return *this;
    }
    Transfer(const Transfer &) = delete;
    Transfer &operator=(const Transfer &) = delete;
    ~Transfer() { reset(); }

    /// Bytes the whole transfer sends.
    uint64_t total_bytes() const { return info().total; }
    /// The offset the consumer continues from after this transfer.
    int64_t next_offset() const { return info().next; }
    /// Bytes already sent or read (by all send() and read_into() calls).
    uint64_t sent_bytes() const { return info().sent; }
    /// Whether everything has been sent or read.
    bool complete() const {
        Info i = info();
        return i.sent == i.total;
    }

    /// Sends as much of the rest as fd accepts. Returns true once everything
    /// is sent; false when a non-blocking fd is full (MQS_WOULD_BLOCK): the
    /// progress is kept, call again when fd is writable. A closed peer or any
    /// other failure throws Error (MQS_IO, ...); SIGPIPE is never raised for
    /// sockets.
    bool send(int fd) {
        uint64_t written = 0;
        return send(fd, written);
    }

    /// As send(fd); also reports the bytes written by this call.
    bool send(int fd, uint64_t &written) {
        written = 0;
        mqs_status status = mqs_transfer_send(handle(), fd, &written);
        if (status == MQS_WOULD_BLOCK) {
            return false;
        }
        check(status);
        return true;
    }

    /// Copies the next bytes of the transfer into buf (at most len) and
    /// returns how many: len unless the transfer ends first, 0 only once
    /// complete(). send() and read_into() share one progress and may be
    /// mixed. Memory is copied, files read with pread(2): the call may wait
    /// for the disk. A read failure after some bytes were copied returns
    /// those bytes; the next call retries at the same byte and throws if the
    /// failure persists. buf == nullptr with len > 0, or len == 0, throws
    /// Error(MQS_INVALID_ARGUMENT).
    std::size_t read_into(void *buf, std::size_t len) {
        bool complete = false;
        return read_into(buf, len, complete);
    }

    /// As read_into(buf, len); also reports whether the whole transfer has
    /// now been sent or read.
    std::size_t read_into(void *buf, std::size_t len, bool &complete) {
        std::size_t written = 0;
        complete = false;
        check(mqs_transfer_read_into(handle(), static_cast<uint8_t *>(buf), len, &written, &complete));
        return written;
    }

    bool valid() const noexcept { return t_ != nullptr; }
    explicit operator bool() const noexcept { return valid(); }
    mqs_transfer *native_handle() const noexcept { return t_; }

private:
    struct Info {
        uint64_t total;
        int64_t next;
        uint64_t sent;
    };

    mqs_transfer *handle() const {
        if (t_ == nullptr) {
            throw Error(MQS_INVALID_HANDLE, "invalid handle: mqstore::Transfer was moved from");
        }
        return t_;
    }

    Info info() const {
        Info i{0, 0, 0};
        check(mqs_transfer_info(handle(), &i.total, &i.next, &i.sent));
        return i;
    }

    void reset() noexcept {
        if (t_ != nullptr) {
            mqs_transfer_free(t_);
            t_ = nullptr;
        }
    }

    mqs_transfer *t_ = nullptr;
};

// ---------------------------------------------------------------------- store

/// A snapshot of a shard's state.
struct ShardInfo {
    /// Low watermark: the smallest offset that may still be read.
    int64_t first_offset = 0;
    /// High watermark: the offset the next append receives.
    int64_t next_offset = 0;
    /// Records currently stored.
    uint64_t records = 0;
    /// Bytes of stored batches.
    uint64_t bytes = 0;
    /// Engine name, e.g. "memory".
    std::string engine;
};

/// The result of Store::sendfile_to_fd().
struct SendfileResult {
    uint64_t bytes_written = 0;
    int64_t next_offset = 0;
};

/// An open store. Move-only. The destructor closes it (ignoring errors, never
/// throwing); call close() to see errors. A moved-from or closed Store is
/// empty: every operation on it — including a second close() — throws
/// Error with code() == MQS_INVALID_HANDLE; destroying or assigning to it is
/// safe. Thread-safe: share one Store among threads by reference.
class Store {
public:
    /// Opens (creating if needed) the store in dir. config_toml uses the
    /// storage.toml schema (std::nullopt = defaults). Throws Error:
    /// MQS_INVALID_CONFIG (message names the key), MQS_LOCKED (dir in use),
    /// MQS_IO, MQS_UNSUPPORTED (engine not in this build).
    static Store open(const std::string &dir, const std::optional<std::string> &config_toml = std::nullopt) {
        const char *config = config_toml ? detail::c_name(*config_toml, "config_toml") : nullptr;
        mqs_store *store = nullptr;
        check(mqs_store_open(detail::c_name(dir, "dir"), config, &store));
        return Store(store);
    }

    /// Takes ownership of a live handle from mqs_store_open.
    explicit Store(mqs_store *store) noexcept : s_(store) {}

    Store(Store &&other) noexcept : s_(std::exchange(other.s_, nullptr)) {}
    /// Closes the current store (ignoring errors) and takes other's.
    Store &operator=(Store &&other) noexcept {
        if (this != &other) {
            reset();
            s_ = std::exchange(other.s_, nullptr);
        }
        return *this;
    }
    Store(const Store &) = delete;
    Store &operator=(const Store &) = delete;
    ~Store() { reset(); }

    /// Closes the store (flushes engines, releases the directory lock). The
    /// Store is empty afterwards even when this throws. ReadResults and
    /// Transfers obtained earlier stay valid.
    void close() {
        mqs_store *store = handle();
        s_ = nullptr;  // mqs_store_close frees the handle whatever it returns
        check(mqs_store_close(store));
    }

    /// False once moved from or closed.
    bool valid() const noexcept { return s_ != nullptr; }
    explicit operator bool() const noexcept { return valid(); }
    /// The C handle (still owned by this Store); NULL when empty.
    mqs_store *native_handle() const noexcept { return s_; }
    /// Gives up ownership: the caller must mqs_store_close() the result.
    mqs_store *release() noexcept { return std::exchange(s_, nullptr); }

    // ------------------------------------------------------------- shards

    /// Creates a shard; options_toml uses the keys of storage.toml's [shard]
    /// section (std::nullopt = the store's defaults). MQS_SHARD_EXISTS,
    /// MQS_INVALID_CONFIG, MQS_INVALID_ARGUMENT (bad name).
    void create_shard(const std::string &name, const std::optional<std::string> &options_toml = std::nullopt) {
        const char *options = options_toml ? detail::c_name(*options_toml, "options_toml") : nullptr;
        check(mqs_shard_create(handle(), detail::c_name(name, "shard name"), options));
    }

    /// Creates the shards `names` (distinct, none existing) with the same
    /// options, all or none; the journal makes them durable with one write.
    void create_shards(const std::vector<std::string> &names,
                       const std::optional<std::string> &options_toml = std::nullopt) {
        std::vector<const char *> pointers;
        pointers.reserve(names.size());
        for (const std::string &name : names) {
            pointers.push_back(detail::c_name(name, "shard name"));
        }
        const char *options = options_toml ? detail::c_name(*options_toml, "options_toml") : nullptr;
        check(mqs_shards_create(handle(), pointers.data(), pointers.size(), options));
    }

    /// Deletes a shard, its records and its committed group offsets.
    void delete_shard(const std::string &name) {
        check(mqs_shard_delete(handle(), detail::c_name(name, "shard name")));
    }

    ShardInfo shard_info(const std::string &name) const {
        // "struct": the spec gives the C type and the function the same name.
        struct mqs_shard_info info;
        std::memset(&info, 0, sizeof info);
        check(mqs_shard_get_info(handle(), detail::c_name(name, "shard name"), &info));
        ShardInfo out;
        out.first_offset = info.first_offset;
        out.next_offset = info.next_offset;
        out.records = info.records;
        out.bytes = info.bytes;
        out.engine = info.engine != nullptr ? info.engine : "";
        return out;
    }

    /// Names of all shards, sorted.
    std::vector<std::string> list_shards() const {
        mqs_names *raw = nullptr;
        check(mqs_shard_list(handle(), &raw));
        std::unique_ptr<mqs_names, NamesDeleter> names(raw);
        std::size_t count = mqs_names_count(names.get());
        std::vector<std::string> out;
        out.reserve(count);
        for (std::size_t i = 0; i < count; ++i) {
            const char *name = mqs_names_get(names.get(), i);
            out.emplace_back(name != nullptr ? name : "");
        }
        return out;
    }

    // ------------------------------------------------------------ appends

    /// Appends one record; returns its offset. MQS_SHARD_NOT_FOUND,
    /// MQS_RECORD_TOO_LARGE, MQS_INVALID_ARGUMENT (reserved header name,
    /// negative timestamp, non-UTF-8 header name or tag).
    int64_t append(const std::string &shard, const Message &message) {
        Encoded encoded(&message, 1);
        int64_t offset = -1;
        check(mqs_append(handle(), detail::c_name(shard, "shard name"), encoded.records.data(), &offset));
        return offset;
    }

    /// Appends records as one batch, atomically (all or none); returns the
    /// offset of the first. Payloads are passed by pointer, not copied.
    int64_t append_batch(const std::string &shard, const std::vector<Message> &messages) {
        return append_batch_with(mqs_append_batch, shard, messages);
    }

    /// Pipelined append: appends records as one batch like append_batch()
    /// (same checks, same errors) and returns the offset of the first as
    /// soon as the batch has its offsets, without waiting for the shard's
    /// durability mode. Readers see the batch at once, but it is
    /// acknowledged only when wait_durable() returns for one of its offsets
    /// or a later one; until then a crash may lose it. A producer typically
    /// keeps a window of N batches in flight and, when the window is full,
    /// calls wait_durable() on the oldest batch's base offset (which
    /// acknowledges every earlier batch of the shard too). The memory and
    /// file engines return once the batch is acknowledged. Payloads are
    /// passed by pointer, not copied.
    int64_t append_batch_nowait(const std::string &shard, const std::vector<Message> &messages) {
        return append_batch_with(mqs_append_batch_nowait, shard, messages);
    }

    /// What append_raw() stored: the first batch's base offset and the
    /// number of batches; each later batch starts where the previous one's
    /// records end (base offset + record count).
    struct RawAppend {
        int64_t base_offset;
        size_t batches;
        /// true: an idempotent producer's retry (MQS_DUPLICATE_SEQUENCE):
        /// nothing was stored again, and the offsets are the originals.
        bool duplicate;
    };

    /// Appends RecordBatch v2 bytes as a Kafka producer sent them (one or
    /// more batches back to back), stored byte for byte but for the base
    /// offset, at consecutive offsets. Every batch is checked first, as
    /// Kafka's log validator checks client batches, and nothing is stored
    /// when one is refused (MQS_CORRUPTION, MQS_INVALID_ARGUMENT,
    /// MQS_RECORD_TOO_LARGE or MQS_UNSUPPORTED, naming the batch).
    /// Acknowledged per the shard's durability mode, once for all batches.
    /// Batches of idempotent producers are checked as a Kafka broker checks
    /// them: MQS_PRODUCER_FENCED and MQS_OUT_OF_ORDER_SEQUENCE throw; a
    /// retry returns the original offsets with `duplicate` set.
    RawAppend append_raw(const std::string &shard, const void *data, size_t len) {
        return append_raw_with(mqs_append_raw, shard, data, len);
    }

    /// Appends a leader's batches (what a transfer of the leader's shard
    /// sent) to this follower's shard, byte for byte at the offsets they
    /// carry, which must continue the shard or leave a compacted leader's
    /// gap (an empty batch fills it; else MQS_INVALID_ARGUMENT,
    /// nothing stored); control batches and producers' batches are copied
    /// as they are. Returns the shard's next offset, once durable per its
    /// mode. The follower's shard must have no other writer.
    int64_t append_replica(const std::string &shard, const void *data, size_t len) {
        int64_t next = -1;
        check(mqs_append_replica(handle(), detail::c_name(shard, "shard name"), static_cast<const uint8_t *>(data),
                                 len, &next));
        return next;
    }

    /// Cuts a follower's diverged tail: every batch at or after `offset`
    /// goes and the next append gets `offset`, which must lie within the
    /// watermarks and at a batch boundary (else MQS_OFFSET_OUT_OF_RANGE or
    /// MQS_INVALID_ARGUMENT). The producers' state follows.
    void truncate_to(const std::string &shard, int64_t offset) {
        check(mqs_truncate_to(handle(), detail::c_name(shard, "shard name"), offset));
    }

    /// Sets the partition leader epoch appends to `shard` write into each
    /// batch from now on; never lower than before (else
    /// MQS_INVALID_ARGUMENT). In memory only: set it after every open.
    void set_leader_epoch(const std::string &shard, int32_t epoch) {
        check(mqs_set_leader_epoch(handle(), detail::c_name(shard, "shard name"), epoch));
    }

    /// append_raw() that returns once the batches have their offsets, like
    /// append_batch_nowait(); wait_durable() on the last batch's last
    /// offset acknowledges them.
    RawAppend append_raw_nowait(const std::string &shard, const void *data, size_t len) {
        return append_raw_with(mqs_append_raw_nowait, shard, data, len);
    }

    // ------------------------------------------- event-loop notifications

    /// A watched batch that became durable (status MQS_OK: acknowledged)
    /// or failed to (e.g. MQS_POISONED: not acknowledged).
    using Completion = mqs_completion;

    /// The store's durability descriptor (an eventfd): readable while
    /// completions wait for poll_durable(). Register it with epoll, poll or
    /// an event loop for reading; never read or close it. Valid until the
    /// store is closed (remove it from the loop first).
    int durable_fd() const {
        int fd = -1;
        check(mqs_durable_fd(handle(), &fd));
        return fd;
    }

    /// append_batch_nowait() plus a completion carrying token once the batch
    /// is durable: its acknowledgement, without a thread waiting for it.
    /// Completions come in call order. Returns the base offset (also the
    /// completion's offset).
    int64_t append_batch_notify(const std::string &shard, const std::vector<Message> &messages, uint64_t token) {
        Encoded encoded(messages.data(), messages.size());
        int64_t base = -1;
        check(mqs_append_batch_notify(handle(), detail::c_name(shard, "shard name"), encoded.records.data(),
                                      encoded.records.size(), token, &base));
        return base;
    }

    /// A completion carrying token once offset (and everything before it in
    /// shard) is durable: wait_durable() without blocking.
    void watch_durable(const std::string &shard, int64_t offset, uint64_t token) const {
        check(mqs_watch_durable(handle(), detail::c_name(shard, "shard name"), offset, token));
    }

    /// Appends up to max ready completions to out, oldest first; returns how
    /// many. Never blocks. A failed batch is a completion with its status,
    /// not an exception (the others are still delivered).
    std::size_t poll_durable(std::vector<Completion> &out, std::size_t max = 1024) const {
        if (max == 0)
            throw Error(MQS_INVALID_ARGUMENT, "poll_durable: max must be at least 1");
        mqs_store *store = handle();  // throws for an empty Store, before out changes
        std::size_t old = out.size();
        out.resize(old + max);
        std::size_t n = 0;
        mqs_status status = mqs_poll_durable(store, out.data() + old, max, &n);
        out.resize(old + (status == MQS_OK ? n : 0));
        check(status);
        return n;
    }

    /// Blocks until the record at offset, and every earlier record of shard,
    /// is as durable as the shard's durability mode promises: the
    /// acknowledgement of append_batch_nowait() batches up to the one holding
    /// offset. Deleted records count as durable. MQS_OFFSET_OUT_OF_RANGE when
    /// offset < 0 or >= the shard's next offset, MQS_SHARD_NOT_FOUND,
    /// MQS_POISONED after a failed fsync.
    void wait_durable(const std::string &shard, int64_t offset) const {
        check(mqs_wait_durable(handle(), detail::c_name(shard, "shard name"), offset));
    }

    // -------------------------------------------------------------- reads

    /// Up to max_records records from offset on, stopping once about
    /// max_bytes of key/value/header bytes are gathered (at least one record
    /// is returned when any is available). offset must lie in
    /// [first_offset, next_offset] (else MQS_OFFSET_OUT_OF_RANGE);
    /// max_records must be >= 1.
    ReadResult read(const std::string &shard, int64_t offset, std::size_t max_records,
                    std::size_t max_bytes = UNLIMITED) const {
        mqs_batch *batch = nullptr;
        check(mqs_read(handle(), detail::c_name(shard, "shard name"), offset, max_records, max_bytes, &batch));
        return ReadResult(batch);
    }

    /// Live records whose key equals one of keys, in offset order
    /// (next_offset() of the result is -1).
    ReadResult read_by_keys(const std::string &shard, const std::vector<std::string_view> &keys,
                            std::size_t max_records) const {
        std::vector<mqs_slice> slices = detail::slices(keys);
        mqs_batch *batch = nullptr;
        check(mqs_read_by_keys(handle(), detail::c_name(shard, "shard name"), slices.data(), slices.size(),
                               max_records, &batch));
        return ReadResult(batch);
    }

    /// Live records carrying tag with offset >= from_offset, in offset order.
    ReadResult read_by_tag(const std::string &shard, const std::string &tag, int64_t from_offset,
                           std::size_t max_records) const {
        mqs_batch *batch = nullptr;
        check(mqs_read_by_tag(handle(), detail::c_name(shard, "shard name"), detail::c_name(tag, "tag"),
                              from_offset, max_records, &batch));
        return ReadResult(batch);
    }

    /// The first offset whose timestamp is >= timestamp_ms; EARLIEST / LATEST
    /// give the low / high watermark. std::nullopt when no record is that recent.
    std::optional<int64_t> offset_for_timestamp(const std::string &shard, int64_t timestamp_ms) const {
        int64_t offset = -1;
        bool found = false;
        check(mqs_offset_for_timestamp(handle(), detail::c_name(shard, "shard name"), timestamp_ms, &offset,
                                       &found));
        return found ? std::optional<int64_t>(offset) : std::nullopt;
    }

    // ------------------------------------------------------------ deletes

    /// Moves the low watermark up to offset (clamped to the high watermark);
    /// returns the new low watermark.
    int64_t delete_records_before(const std::string &shard, int64_t offset) {
        int64_t low = -1;
        check(mqs_delete_records_before(handle(), detail::c_name(shard, "shard name"), offset, &low));
        return low;
    }

    /// Runs a compacted shard's cleaner now (no I/O budget): below the lag
    /// and the newest batch only the newest record of each key stays, old
    /// tombstones go. Returns how many records went; a shard that is not
    /// compacted: MQS_INVALID_ARGUMENT.
    uint64_t compact(const std::string &shard) {
        uint64_t removed = 0;
        check(mqs_compact(handle(), detail::c_name(shard, "shard name"), &removed));
        return removed;
    }

    /// Deletes every record with one of keys; returns how many were deleted.
    uint64_t delete_by_keys(const std::string &shard, const std::vector<std::string_view> &keys) {
        std::vector<mqs_slice> slices = detail::slices(keys);
        uint64_t deleted = 0;
        check(mqs_delete_by_keys(handle(), detail::c_name(shard, "shard name"), slices.data(), slices.size(),
                                 &deleted));
        return deleted;
    }

    /// Deletes the given offsets (absent ones are ignored); returns how many were deleted.
    uint64_t delete_by_offsets(const std::string &shard, const std::vector<int64_t> &offsets) {
        uint64_t deleted = 0;
        check(mqs_delete_by_offsets(handle(), detail::c_name(shard, "shard name"), offsets.data(),
                                    offsets.size(), &deleted));
        return deleted;
    }

    // ------------------------------------------------------ group offsets

    /// Records that group has consumed shard up to (not including) offset.
    void commit_offset(const std::string &group, const std::string &shard, int64_t offset) {
        check(mqs_group_commit(handle(), detail::c_name(group, "group"), detail::c_name(shard, "shard name"),
                               offset));
    }

    /// The offset group last committed for shard; std::nullopt if none.
    std::optional<int64_t> committed_offset(const std::string &group, const std::string &shard) const {
        int64_t offset = -1;
        bool found = false;
        check(mqs_group_get(handle(), detail::c_name(group, "group"), detail::c_name(shard, "shard name"),
                            &offset, &found));
        return found ? std::optional<int64_t>(offset) : std::nullopt;
    }

    /// Forgets every offset of group; returns how many were removed.
    uint64_t delete_group(const std::string &group) {
        uint64_t removed = 0;
        check(mqs_group_delete(handle(), detail::c_name(group, "group"), &removed));
        return removed;
    }

    // ---------------------------------------------------------- transfers

    /// Plans a transfer of whole batches from offset: at most max_bytes, but
    /// at least one batch when any is stored.
    Transfer plan_transfer(const std::string &shard, int64_t offset, std::size_t max_bytes = UNLIMITED) const {
        mqs_transfer *transfer = nullptr;
        check(mqs_transfer_plan(handle(), detail::c_name(shard, "shard name"), offset, max_bytes, &transfer));
        return Transfer(transfer);
    }

    /// Plans and sends in one call; blocks (poll) while a non-blocking fd is
    /// full, so the stream is never cut mid-batch.
    SendfileResult sendfile_to_fd(const std::string &shard, int64_t offset, std::size_t max_bytes, int fd) const {
        SendfileResult result;
        check(mqs_sendfile_to_fd(handle(), detail::c_name(shard, "shard name"), offset, max_bytes, fd,
                                 &result.bytes_written, &result.next_offset));
        return result;
    }

    // -------------------------------------------------------------- stats

    /// Statistics as a JSON document: the whole store (std::nullopt) or one shard.
    std::string stats(const std::optional<std::string> &shard = std::nullopt) const {
        const char *name = shard ? detail::c_name(*shard, "shard name") : nullptr;
        char *raw = nullptr;
        check(mqs_stats(handle(), name, &raw));
        std::unique_ptr<char, StringDeleter> json(raw);
        return json ? std::string(json.get()) : std::string();
    }

private:
    struct NamesDeleter {
        void operator()(mqs_names *names) const noexcept { mqs_names_free(names); }
    };
    struct StringDeleter {
        void operator()(char *s) const noexcept { mqs_string_free(s); }
    };

    /// The C form of messages: mqs_record_in entries pointing into two flat
    /// arrays of headers and tags, which point at the caller's bytes.
    struct Encoded {
        std::vector<mqs_record_in> records;
        std::vector<mqs_header> headers;
        std::vector<mqs_slice> tags;

        Encoded(const Message *messages, std::size_t count) {
            std::size_t header_total = 0;
            std::size_t tag_total = 0;
            for (std::size_t i = 0; i < count; ++i) {
                header_total += messages[i].headers.size();
                tag_total += messages[i].tags.size();
            }
            // Reserved up front: the records keep pointers into these arrays.
            headers.reserve(header_total);
            tags.reserve(tag_total);
            records.reserve(count);
            for (std::size_t i = 0; i < count; ++i) {
                const Message &m = messages[i];
                mqs_record_in r;
                std::memset(&r, 0, sizeof r);
                r.key = detail::optional_slice(m.key);
                r.value = detail::optional_slice(m.value);
                r.value_is_null = !m.value.has_value();
                r.header_count = m.headers.size();
                r.headers = r.header_count != 0 ? headers.data() + headers.size() : nullptr;
                for (const auto &h : m.headers) {
                    mqs_header header;
                    header.key = detail::present(h.first);
                    header.value = detail::optional_slice(h.second);
                    headers.push_back(header);
                }
                r.tag_count = m.tags.size();
                r.tags = r.tag_count != 0 ? tags.data() + tags.size() : nullptr;
                for (std::string_view t : m.tags) {
                    tags.push_back(detail::present(t));
                }
                r.timestamp_ms = m.timestamp_ms;
                r.expire_at_ms = m.expire_at_ms.value_or(0);
                records.push_back(r);
            }
        }
    };

    /// The body of append_batch() and append_batch_nowait(), which differ
    /// only in the C function called.
    int64_t append_batch_with(decltype(&mqs_append_batch) append, const std::string &shard,
                              const std::vector<Message> &messages) {
        Encoded encoded(messages.data(), messages.size());
        int64_t base = -1;
        check(append(handle(), detail::c_name(shard, "shard name"), encoded.records.data(), encoded.records.size(),
                     &base));
        return base;
    }

    RawAppend append_raw_with(decltype(&mqs_append_raw) append, const std::string &shard, const void *data,
                              size_t len) {
        RawAppend out{-1, 0, false};
        mqs_status status = append(handle(), detail::c_name(shard, "shard name"),
                                   static_cast<const uint8_t *>(data), len, &out.base_offset, &out.batches);
        out.duplicate = status == MQS_DUPLICATE_SEQUENCE;
        if (!out.duplicate) {
            check(status);
        }
        return out;
    }

    mqs_store *handle() const {
        if (s_ == nullptr) {
            throw Error(MQS_INVALID_HANDLE, "invalid handle: mqstore::Store was moved from or closed");
        }
        return s_;
    }

    void reset() noexcept {
        if (s_ != nullptr) {
            mqs_store_close(s_);  // errors cannot be reported from a destructor
            s_ = nullptr;
        }
    }

    mqs_store *s_ = nullptr;
};

}  // namespace mqstore

#endif  // MQSTORE_HPP
