#!/usr/bin/env bash
# Installs or uninstalls what `make install` ships, from the dist build
# (target/dist): the stripped shared library under its full version with
# the soname and development symlinks, its debug info in a separate file,
# the static library, both headers, mqstore.pc, the CMake package and, when
# built, the `mqstore` command-line tool.
#
#   scripts/install.sh install|uninstall
#
# Everything comes from the environment the Makefile sets: DESTDIR, PREFIX,
# LIBDIR, INCLUDEDIR, BINDIR, VERSION, ABI_VERSION, DIST_DIR.
set -euo pipefail

action=${1:?usage: install.sh install|uninstall}
: "${PREFIX:?}" "${LIBDIR:?}" "${INCLUDEDIR:?}" "${BINDIR:?}" "${VERSION:?}" "${ABI_VERSION:?}" "${DIST_DIR:?}"
DESTDIR=${DESTDIR:-}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

real=libmqstore.so.$VERSION
soname=libmqstore.so.$ABI_VERSION
lib="$DESTDIR$LIBDIR"
inc="$DESTDIR$INCLUDEDIR"
bin="$DESTDIR$BINDIR"

# Paths of every installed file, relative to DESTDIR, for uninstall.
files=(
    "$LIBDIR/$real" "$LIBDIR/$soname" "$LIBDIR/libmqstore.so"
    "$LIBDIR/.debug/$real.debug" "$LIBDIR/libmqstore.a"
    "$INCLUDEDIR/mqstore.h" "$INCLUDEDIR/mqstore.hpp"
    "$LIBDIR/pkgconfig/mqstore.pc"
    "$LIBDIR/cmake/mqstore/mqstoreConfig.cmake"
    "$LIBDIR/cmake/mqstore/mqstoreConfigVersion.cmake"
    "$BINDIR/mqstore"
)

if [[ $action == uninstall ]]; then
    for f in "${files[@]}"; do
        rm -f "$DESTDIR$f"
    done
    # Only the directories this package owns; shared ones (lib, include,
    # pkgconfig) stay even when empty.
    rmdir "$DESTDIR$LIBDIR/cmake/mqstore" "$DESTDIR$LIBDIR/.debug" 2>/dev/null || true
    echo "uninstalled mqstore $VERSION from ${DESTDIR}${PREFIX}"
    exit 0
fi
[[ $action == install ]] || { echo "install.sh: unknown action '$action'" >&2; exit 2; }

built="$DIST_DIR/libmqstore.so"
[[ -f $built ]] || { echo "install.sh: $built is missing (make dist builds it)" >&2; exit 1; }
got_soname=$(readelf -d "$built" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
if [[ $got_soname != "$soname" ]]; then
    echo "install.sh: $built has soname '$got_soname', expected '$soname' (build it with make dist)" >&2
    exit 1
fi

install -d "$lib" "$lib/.debug" "$lib/pkgconfig" "$lib/cmake/mqstore" "$inc"

# Debug info goes to a file of its own that gdb finds through the
# .gnu_debuglink section (it looks in <libdir>/.debug/); the installed
# library keeps only what the dynamic loader needs.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
objcopy --only-keep-debug "$built" "$tmp/$real.debug"
objcopy --strip-debug --strip-unneeded "$built" "$tmp/$real"
(cd "$tmp" && objcopy --add-gnu-debuglink="$real.debug" "$real")
install -m 0755 "$tmp/$real" "$lib/$real"
install -m 0644 "$tmp/$real.debug" "$lib/.debug/$real.debug"
ln -sfn "$real" "$lib/$soname"
ln -sfn "$soname" "$lib/libmqstore.so"
# The archive without debug info: it is linked into programs, whose own
# build decides about debug info.
objcopy --strip-debug "$DIST_DIR/libmqstore.a" "$tmp/libmqstore.a"
install -m 0644 "$tmp/libmqstore.a" "$lib/libmqstore.a"

install -m 0644 "$root/include/mqstore.h" "$inc/mqstore.h"
install -m 0644 "$root/bindings/cpp/mqstore.hpp" "$inc/mqstore.hpp"

# pkg-config and CMake files locate the prefix relative to themselves, so a
# staged tree (DESTDIR) or a moved one still works.
rel() { realpath -m --relative-to="$1" "$2"; }
subst() {
    sed -e "s|@VERSION@|$VERSION|g" -e "s|@ABI_VERSION@|$ABI_VERSION|g" \
        -e "s|@SONAME@|$soname|g" -e "s|@REAL@|$real|g" \
        -e "s|@PC_PREFIX@|$(rel "$LIBDIR/pkgconfig" "$PREFIX")|g" \
        -e "s|@CMAKE_TO_LIB@|$(rel "$LIBDIR/cmake/mqstore" "$LIBDIR")|g" \
        -e "s|@CMAKE_TO_INCLUDE@|$(rel "$LIBDIR/cmake/mqstore" "$INCLUDEDIR")|g" \
        -e "s|@LIB_FROM_PREFIX@|$(rel "$PREFIX" "$LIBDIR")|g" \
        -e "s|@INCLUDE_FROM_PREFIX@|$(rel "$PREFIX" "$INCLUDEDIR")|g" \
        "$1" >"$2"
}
subst "$root/packaging/mqstore.pc.in" "$tmp/mqstore.pc"
subst "$root/packaging/mqstoreConfig.cmake.in" "$tmp/mqstoreConfig.cmake"
subst "$root/packaging/mqstoreConfigVersion.cmake.in" "$tmp/mqstoreConfigVersion.cmake"
install -m 0644 "$tmp/mqstore.pc" "$lib/pkgconfig/mqstore.pc"
install -m 0644 "$tmp/mqstoreConfig.cmake" "$tmp/mqstoreConfigVersion.cmake" "$lib/cmake/mqstore/"

if [[ -f "$DIST_DIR/mqstore" ]]; then
    install -d "$bin"
    install -m 0755 -s "$DIST_DIR/mqstore" "$bin/mqstore"
fi
echo "installed mqstore $VERSION into ${DESTDIR}${PREFIX} ($real: $(stat -c %s "$lib/$real") bytes stripped, debug info $(stat -c %s "$lib/.debug/$real.debug") bytes)"
