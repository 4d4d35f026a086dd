#!/usr/bin/env bash
# Compiles the C API tests (tests/c/test_*.c) against include/mqstore.h and
# the debug build of libmqstore.so, runs each directly, then under valgrind
# (memcheck, leaks of every kind but "still reachable" are errors).
#
# Build the library first: `cargo build -p mqstore` (the Makefile's test-c
# target does). The cargo target directory is $CARGO_TARGET_DIR (default
# `target`, relative to the repository root).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

target_dir="${CARGO_TARGET_DIR:-target}"
lib_dir="$target_dir/debug"
if [[ ! -f "$lib_dir/libmqstore.so" ]]; then
    echo "tests/c/run.sh: $lib_dir/libmqstore.so not found; build it first with 'cargo build -p mqstore'" >&2
    exit 1
fi
lib_dir="$(cd "$lib_dir" && pwd)"
out_dir="$lib_dir/c-tests"
mkdir -p "$out_dir"

cc="${CC:-cc}"
cflags=(-std=c11 -Wall -Wextra -Werror -pedantic -g -Iinclude -Itests/c)
sanitize=(-O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)

if ! command -v valgrind >/dev/null 2>&1; then
    echo "tests/c/run.sh: valgrind is not installed (apt-get install valgrind)" >&2
    exit 1
fi

status=0
for source in tests/c/test_*.c; do
    name="$(basename "$source" .c)"
    exe="$out_dir/$name"
    echo "== compiling $source"
    "$cc" "${cflags[@]}" "$source" -o "$exe" \
        -L"$lib_dir" -lmqstore -Wl,-rpath,"$lib_dir" -pthread

    echo "== running $name"
    if ! "$exe"; then
        echo "tests/c/run.sh: $name failed" >&2
        status=1
        continue
    fi

    # The test program built again with AddressSanitizer and
    # UndefinedBehaviorSanitizer (LeakSanitizer included): overflows and UB
    # on the caller's side of the C ABI, which valgrind cannot see in stack
    # and global memory. Any report fails the run.
    echo "== running $name under ASan + UBSan"
    "$cc" "${cflags[@]}" "${sanitize[@]}" "$source" -o "$exe-asan" \
        -L"$lib_dir" -lmqstore -Wl,-rpath,"$lib_dir" -pthread
    if ! ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 "$exe-asan"; then
        echo "tests/c/run.sh: $name failed under ASan + UBSan" >&2
        status=1
        continue
    fi

    echo "== running $name under valgrind"
    log="$out_dir/$name.valgrind.log"
    if ! valgrind --quiet --error-exitcode=99 --leak-check=full \
        --suppressions=tests/valgrind.supp \
        --show-leak-kinds=definite,indirect,possible \
        --errors-for-leak-kinds=definite,indirect,possible \
        --log-file="$log" "$exe"; then
        cat "$log" >&2
        echo "tests/c/run.sh: $name failed under valgrind (log: $log)" >&2
        status=1
        continue
    fi
    # RocksDB sets write-lifetime hints (fcntl F_SET_RW_HINT), which
    # valgrind does not know: a warning about valgrind, not the program.
    sed -i '/Warning: unimplemented fcntl command: 1036$/d' "$log"
    if [[ -s "$log" ]]; then
        # --quiet leaves the log empty unless valgrind found something.
        cat "$log" >&2
        echo "tests/c/run.sh: valgrind reported problems for $name (log: $log)" >&2
        status=1
    fi
done

if [[ $status -ne 0 ]]; then
    echo "tests/c/run.sh: FAILED" >&2
else
    echo "tests/c/run.sh: all C tests passed (directly, under ASan + UBSan and under valgrind)"
fi
exit $status
