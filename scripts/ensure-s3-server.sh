#!/usr/bin/env bash
# Installs s3s-fs, the S3-compatible server the S3 engine is tested against
# (scripts/servers/s3.sh, started by scripts/with-servers.sh), if missing.
# No distribution packages it, so cargo builds it (about 3 minutes, once)
# into MQS_TOOLS_DIR (default ~/.cache/mqstore/tools): outside the tree, so
# `make clean` and a fresh checkout keep it, and where s3.sh looks for it.
# Idempotent: an installed s3s-fs of the pinned version is kept.
set -euo pipefail

VERSION=0.14.1   # the version the tests were written against
TOOLS_DIR=${MQS_TOOLS_DIR:-$HOME/.cache/mqstore/tools}
S3S_FS=$TOOLS_DIR/bin/s3s-fs

if [[ -x $S3S_FS ]] && [[ $("$S3S_FS" --version 2>/dev/null) == "s3s-fs $VERSION" ]]; then
    exit 0
fi

command -v cargo >/dev/null || { echo "ensure-s3-server: cargo (Rust toolchain) is required" >&2; exit 1; }
echo "ensure-s3-server: installing s3s-fs $VERSION into $TOOLS_DIR (a few minutes, once)"
# Without CARGO_TARGET_DIR (the Makefile exports the tree's): cargo install
# then builds in a temporary directory it removes, instead of leaving
# s3s-fs's build in the tree's target directory. --force replaces an
# s3s-fs of another version, or one cargo did not record installing.
env -u CARGO_TARGET_DIR cargo install "s3s-fs@$VERSION" --locked --features binary \
    --root "$TOOLS_DIR" --force

[[ $("$S3S_FS" --version 2>/dev/null) == "s3s-fs $VERSION" ]] || {
    echo "ensure-s3-server: $S3S_FS does not report version $VERSION after the install" >&2
    exit 1
}
