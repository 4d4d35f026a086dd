#!/usr/bin/env bash
# Installs the system tools the test suite and the demo need, if missing:
# a C and a C++ compiler, valgrind, Python's venv module, binutils,
# pkg-config, CMake and libclang (bindgen, run by librocksdb-sys's build
# script for the RocksDB engine). Idempotent.
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

if ((${#missing[@]})); then
    echo "ensure-tools: installing ${missing[*]}"
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "ensure-tools: cargo (Rust toolchain) is required" >&2; exit 1; }
