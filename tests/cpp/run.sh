#!/usr/bin/env bash
# Builds and runs the C++ binding tests: both translation units, linked
# against the debug cdylib, then again under valgrind (any error or
# definite/indirect/possible leak fails the run).
#
#   tests/cpp/run.sh            # from anywhere; builds the library first
#   NO_VALGRIND=1 tests/cpp/run.sh
#   SKIP_CARGO=1  tests/cpp/run.sh   # use the library as already built
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in
    /*) ;;
    *) target_dir="$root/$target_dir" ;;
esac
lib_dir="$target_dir/debug"
out_dir="$target_dir/cpp-tests"
mkdir -p "$out_dir"

if [[ -z "${SKIP_CARGO:-}" ]]; then
    cargo build --lib --quiet
fi
if [[ ! -f include/mqstore.h ]]; then
    echo "run.sh: include/mqstore.h is missing (generate it with cbindgen first)" >&2
    exit 2
fi
if [[ ! -f "$lib_dir/libmqstore.so" ]]; then
    echo "run.sh: $lib_dir/libmqstore.so is missing" >&2
    exit 2
fi

CXX="${CXX:-g++}"
flags=(-std=c++17 -Wall -Wextra -Werror -pedantic -g -O1 -pthread -Iinclude -Ibindings/cpp)

"$CXX" "${flags[@]}" -c tests/cpp/test_main.cpp -o "$out_dir/test_main.o"
"$CXX" "${flags[@]}" -c tests/cpp/test_other.cpp -o "$out_dir/test_other.o"
"$CXX" -pthread "$out_dir/test_main.o" "$out_dir/test_other.o" -o "$out_dir/mqstore_cpp_tests" \
    -L"$lib_dir" -Wl,-rpath,"$lib_dir" -lmqstore

echo "== tests/cpp: native run"
"$out_dir/mqstore_cpp_tests"

# Again built with AddressSanitizer and UndefinedBehaviorSanitizer
# (LeakSanitizer included): any report fails the run.
sanitize=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
"$CXX" "${flags[@]}" "${sanitize[@]}" tests/cpp/test_main.cpp tests/cpp/test_other.cpp \
    -o "$out_dir/mqstore_cpp_tests_asan" -L"$lib_dir" -Wl,-rpath,"$lib_dir" -lmqstore
echo "== tests/cpp: ASan + UBSan run"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 "$out_dir/mqstore_cpp_tests_asan"
echo "== tests/cpp: ASan + UBSan clean"

if [[ -n "${NO_VALGRIND:-}" ]]; then
    echo "== tests/cpp: valgrind skipped (NO_VALGRIND set)"
    exit 0
fi
if ! command -v valgrind >/dev/null 2>&1; then
    echo "run.sh: valgrind not found (set NO_VALGRIND=1 to skip)" >&2
    exit 2
fi
echo "== tests/cpp: valgrind run"
valgrind --quiet --error-exitcode=99 --leak-check=full \
    --suppressions="$root/tests/valgrind.supp" \
    --errors-for-leak-kinds=definite,indirect,possible \
    "$out_dir/mqstore_cpp_tests"
echo "== tests/cpp: valgrind clean"
