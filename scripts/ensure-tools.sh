#!/usr/bin/env bash
# Installs the system tools the test suite and the demo need, if missing:
# a C and a C++ compiler, valgrind, Python's venv module, binutils,
# pkg-config, CMake and libclang (bindgen, run by librocksdb-sys's build
# script for the RocksDB engine), MariaDB and Redis (the servers the MySQL
# and Redis engines are tested against). Idempotent.
set -euo pipefail

missing=()
command -v cc >/dev/null || missing+=(gcc)
command -v g++ >/dev/null || missing+=(g++)
command -v valgrind >/dev/null || missing+=(valgrind)
command -v make >/dev/null || missing+=(make)
# make install (objcopy, readelf, strip) and its test (pkg-config, cmake).
command -v objcopy >/dev/null && command -v readelf >/dev/null || missing+=(binutils)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v cmake >/dev/null || missing+=(cmake)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
ldconfig -p | grep -q 'libclang[-.0-9]*\.so' || missing+=(libclang-dev)
# The servers the MySQL and Redis engines' tests start (scripts/with-servers.sh).
command -v mariadbd >/dev/null && command -v mariadb-install-db >/dev/null || missing+=(mariadb-server)
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || missing+=(redis-server)

if ((${#missing[@]})); then
    echo "ensure-tools: installing ${missing[*]}"
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "ensure-tools: cargo (Rust toolchain) is required" >&2; exit 1; }

# A full disk makes some test fail with ENOSPC far from the cause. A cold
# build of every suite (RocksDB included) takes about 8 GiB in the cargo
# target directory and the tests about 1 GiB of temporary files.
min_free_gib=${MQS_MIN_FREE_GIB:-3}
for dir in "${CARGO_TARGET_DIR:-target}" "${TMPDIR:-/tmp}"; do
    probe=$dir
    while [[ ! -e $probe ]]; do probe=$(dirname "$probe"); done
    free_gib=$(( $(df --output=avail -k "$probe" | tail -n1) / 1048576 ))
    if (( free_gib < min_free_gib )); then
        echo "ensure-tools: only ${free_gib} GiB free under $dir; the build and the tests need at least ${min_free_gib} GiB (a cold build about 9). Free some space or set MQS_MIN_FREE_GIB." >&2
        exit 1
    fi
done
