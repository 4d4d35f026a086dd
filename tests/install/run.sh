#!/usr/bin/env bash
# `make install` into a staging directory (DESTDIR), then build a C program
# with pkg-config and a C++ program with CMake find_package against what
# was installed, run them with the installed library only (no
# LD_LIBRARY_PATH, the loader must resolve the staged copy), check the
# installed files (soname, symlinks, stripped library, debug link), and
# `make uninstall` leaves nothing behind.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
make=(make -C "$root" --no-print-directory)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage="$work/stage"
prefix=/opt/mqstore-test
installed="$stage$prefix"
unset LD_LIBRARY_PATH

fail() { echo "tests/install: $*" >&2; exit 1; }

"${make[@]}" install DESTDIR="$stage" PREFIX="$prefix"

version=$("${make[@]}" -s print-version)
abi=$("${make[@]}" -s print-abi-version)
lib="$installed/lib"
real="libmqstore.so.$version"

# Files and links.
[[ -f $lib/$real && ! -L $lib/$real ]] || fail "$real is not installed as a file"
[[ $(readlink "$lib/libmqstore.so.$abi") == "$real" ]] || fail "libmqstore.so.$abi does not point to $real"
[[ $(readlink "$lib/libmqstore.so") == "libmqstore.so.$abi" ]] || fail "libmqstore.so does not point to the soname"
soname=$(readelf -d "$lib/$real" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[[ $soname == "libmqstore.so.$abi" ]] || fail "soname is '$soname', expected libmqstore.so.$abi"
for f in include/mqstore.h include/mqstore.hpp lib/libmqstore.a lib/pkgconfig/mqstore.pc \
    lib/cmake/mqstore/mqstoreConfig.cmake lib/cmake/mqstore/mqstoreConfigVersion.cmake; do
    [[ -f $installed/$f ]] || fail "$f is not installed"
done
if [[ -f $("${make[@]}" -s print-dist-dir)/mqstore ]]; then
    [[ -x $installed/bin/mqstore ]] || fail "bin/mqstore is not installed"
    "$installed/bin/mqstore" --version | grep -qF "$version" || fail "bin/mqstore --version"
fi

# Stripped, with its debug info beside it and linked by name.
sections=$(readelf -S --wide "$lib/$real")
grep -q '\.debug_' <<<"$sections" && fail "$real still has debug sections"
grep -q '\.gnu_debuglink' <<<"$sections" || fail "$real has no .gnu_debuglink"
link=$(readelf --string-dump=.gnu_debuglink "$lib/$real" | sed -n 's/.*\] *\(.*\.debug\)$/\1/p')
[[ $link == "$real.debug" ]] || fail "debug link names '$link'"
readelf -S --wide "$lib/.debug/$real.debug" | grep -q '\.debug_line' || fail "the debug file has no line tables"
echo "tests/install: $real $(stat -c %s "$lib/$real") bytes stripped, debug file $(stat -c %s "$lib/.debug/$real.debug") bytes"

# The loader must take the staged library: nothing else is on its path.
uses_installed() {
    local exe=$1 resolved
    resolved=$(ldd "$exe" | sed -n 's/.*libmqstore\.so[^ ]* => \([^ ]*\) .*/\1/p')
    [[ -n $resolved ]] || fail "$exe does not load libmqstore: $(ldd "$exe")"
    [[ $(realpath "$resolved") == "$(realpath "$lib/$real")" ]] || fail "$exe loads $resolved, not the installed copy"
}

# C, with pkg-config (shared, then static).
export PKG_CONFIG_PATH="$lib/pkgconfig"
[[ $(pkg-config --modversion mqstore) == "$version" ]] || fail "pkg-config --modversion"
cc=${CC:-cc}
# shellcheck disable=SC2046
"$cc" -std=c11 -Wall -Wextra -Werror "$root/tests/install/hello.c" -o "$work/hello" \
    $(pkg-config --cflags --libs mqstore) -Wl,-rpath,"$(pkg-config --variable=libdir mqstore)"
uses_installed "$work/hello"
"$work/hello" "$work/store-c" | tee "$work/out"
grep -qx "c ok $version" "$work/out" || fail "the C program printed the wrong version"
# shellcheck disable=SC2046
"$cc" -std=c11 -Wall -Wextra -Werror "$root/tests/install/hello.c" -o "$work/hello-static" \
    $(pkg-config --cflags mqstore) \
    $(pkg-config --static --libs mqstore | sed 's/-lmqstore\b/-l:libmqstore.a/')
ldd "$work/hello-static" | grep -q libmqstore && fail "the static program loads libmqstore"
"$work/hello-static" "$work/store-c-static" | grep -qx "c ok $version" || fail "static C program"

# C++, with CMake find_package (shared and static targets).
cmake -S "$root/tests/install/cmake" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$installed" \
    -DCMAKE_BUILD_TYPE=Release >"$work/cmake.log" 2>&1 || { cat "$work/cmake.log" >&2; fail "cmake configure"; }
cmake --build "$work/cmake" >>"$work/cmake.log" 2>&1 || { cat "$work/cmake.log" >&2; fail "cmake build"; }
uses_installed "$work/cmake/hello_cpp"
"$work/cmake/hello_cpp" "$work/store-cpp" | tee "$work/out"
grep -qx "c++ ok $version" "$work/out" || fail "the C++ program printed the wrong version"
ldd "$work/cmake/hello_cpp_static" | grep -q libmqstore && fail "the static C++ program loads libmqstore"
"$work/cmake/hello_cpp_static" "$work/store-cpp-static" | grep -qx "c++ ok $version" || fail "static C++ program"

# A request for another ABI series is refused.
mkdir -p "$work/cmake-other"
cat >"$work/cmake-other/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.16)
project(other NONE)
find_package(mqstore 99.0 QUIET)
if(mqstore_FOUND)
  message(FATAL_ERROR "mqstore 99.0 was accepted")
endif()
CMAKE
cmake -S "$work/cmake-other" -B "$work/cmake-other/build" -DCMAKE_PREFIX_PATH="$installed" >/dev/null \
    || fail "find_package(mqstore 99.0) was not refused"

"${make[@]}" uninstall DESTDIR="$stage" PREFIX="$prefix"
left=$(find "$stage" -not -type d)
[[ -z $left ]] || fail "make uninstall left: $left"
echo "tests/install: passed"
