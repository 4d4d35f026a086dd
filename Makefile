# mqstore — one entry point for building, testing and demoing.
#   make test    every suite (Rust, header freshness, C and C++ under ASan + UBSan and valgrind, Python)
#   make demo    the main job on the default engine
# Both install what they need (system tools, a Python venv) on first use.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

export CARGO_TARGET_DIR ?= $(CURDIR)/target
VENV        := $(CURDIR)/.venv
PYTHON      := $(VENV)/bin/python
PIP_PKGS    := maturin==1.* pytest kafka-python lz4 zstandard mypy numpy python-snappy confluent-kafka
DEBUG_LIB   := $(CARGO_TARGET_DIR)/debug/libmqstore.so
RELEASE_LIB := $(CARGO_TARGET_DIR)/release/libmqstore.so
CC          ?= cc
CFLAGS_DEMO := -std=c11 -O2 -Wall -Wextra -Werror -Iinclude

.PHONY: all build release header tools s3-tools venv python-dev python-release \
        test lint test-rust test-cli test-c test-cpp test-python demo clean crash-long \
        bench bench-deps bench-quick edge dist install uninstall test-install \
        abi-check abi-bless test-python-package print-version print-abi-version print-dist-dir \
        fuzz fuzz-smoke fuzz-tools tsan loom demo-release python-demo

# Versions (README, "Versions"): the soname names the ABI series, the major
# version, or 0.MINOR while the major version is 0.
VERSION       := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
VERSION_PARTS := $(subst ., ,$(VERSION))
ABI_VERSION   := $(if $(filter 0,$(word 1,$(VERSION_PARTS))),0.$(word 2,$(VERSION_PARTS)),$(word 1,$(VERSION_PARTS)))
SONAME        := libmqstore.so.$(ABI_VERSION)

# make install PREFIX=/usr/local DESTDIR=<staging root>
PREFIX     ?= /usr/local
DESTDIR    ?=
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR     ?= $(PREFIX)/bin
DIST_DIR   := $(CARGO_TARGET_DIR)/dist

all: build

tools:
	@scripts/ensure-tools.sh

# s3s-fs, the S3 server of the S3 engine's tests: no distribution packages
# it, so cargo builds it (a few minutes, once) into ~/.cache/mqstore/tools
# (MQS_TOOLS_DIR), outside the tree.
s3-tools: tools
	@scripts/ensure-s3-server.sh

build:
	cargo build -p mqstore

release:
	cargo build -p mqstore --release

# Regenerates include/mqstore.h from src/ffi (the header test fails when stale).
header:
	MQS_BLESS_HEADER=1 cargo test -p mqstore --test header

venv: $(VENV)/.installed
$(VENV)/.installed: Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet $(PIP_PKGS)
	touch $@

python-dev: venv
	cd python && VIRTUAL_ENV=$(VENV) $(VENV)/bin/maturin develop --quiet

python-release: venv
	cd python && VIRTUAL_ENV=$(VENV) $(VENV)/bin/maturin develop --quiet --release

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# Suites that reach the MySQL, Redis and S3 engines run with private
# servers up (scripts/with-servers.sh starts and stops them; s3-tools
# installs the S3 server).
WITH_SERVERS := scripts/with-servers.sh

test-rust: tools s3-tools
	$(WITH_SERVERS) cargo test -p mqstore

# The operator's tool (cli/): every command against stores built by the test.
test-cli:
	cargo test -p mqstore-cli

test-c: tools s3-tools build
	$(WITH_SERVERS) bash tests/c/run.sh

test-cpp: tools s3-tools build
	$(WITH_SERVERS) bash tests/cpp/run.sh

test-python: tools s3-tools python-dev
	$(WITH_SERVERS) $(PYTHON) -m pytest tests/python -q

# The package as users install it: a built wheel and `pip install ./python`,
# each in a fresh virtualenv, pass the Python suite (a few minutes, so not
# part of `make test`, whose suite includes `python -m mqstore`).
test-python-package: tools venv
	bash tests/python/package.sh

# The kill -9 crash tests of the journal, file, RocksDB, MySQL, Redis, S3
# and hybrid engines (and of truncate_to and of compaction on each), long
# mode (make test runs 20 cycles of each).
crash-long: tools s3-tools
	MQS_CRASH_CYCLES=500 cargo test -p mqstore --release --test journal_crash -- --nocapture
	MQS_CRASH_CYCLES=500 cargo test -p mqstore --release --test file_crash -- --nocapture
	MQS_CRASH_CYCLES=500 cargo test -p mqstore --release --test rocksdb_crash -- --nocapture
	MQS_CRASH_CYCLES=500 $(WITH_SERVERS) cargo test -p mqstore --release --test truncate_crash -- --nocapture
	MQS_CRASH_CYCLES=500 $(WITH_SERVERS) cargo test -p mqstore --release --test compaction_crash -- --nocapture
	MQS_CRASH_CYCLES=500 $(WITH_SERVERS) cargo test -p mqstore --release --test server_crash -- --nocapture
	MQS_POWER_CUTS=50000 cargo test -p mqstore --release --test power_cut -- --nocapture

# Coverage-guided fuzzing (cargo fuzz, libFuzzer, AddressSanitizer) of the
# batch decoder, producer batch validation, the configuration parser, store
# recovery from damaged files and sequences of C API calls (fuzz/). The
# toolchain is stable: RUSTC_BOOTSTRAP lets cargo fuzz pass its -Z flags.
# `make fuzz` runs each target FUZZ_SECONDS (default 300); make test runs
# each FUZZ_SMOKE_SECONDS (default 10). A crash leaves its input in
# fuzz/artifacts/<target>/: make it a regression test.
FUZZ_TARGETS       := batch_decode producer_batches config store_recovery c_api
FUZZ_SECONDS       ?= 300
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_DIR           := $(CARGO_TARGET_DIR)/fuzz
FUZZ               := RUSTC_BOOTSTRAP=1 cargo fuzz
fuzz-tools:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
fuzz-run-%: fuzz-tools
	mkdir -p fuzz/corpus/$*
	$(FUZZ) run --target-dir $(FUZZ_DIR) -O $* fuzz/corpus/$* fuzz/seeds/$* -- \
	    -max_total_time=$(SECONDS_PER_TARGET) -rss_limit_mb=2048 -print_final_stats=1
fuzz:
	$(FUZZ) build --target-dir $(FUZZ_DIR) -O
	@for t in $(FUZZ_TARGETS); do $(MAKE) --no-print-directory fuzz-run-$$t SECONDS_PER_TARGET=$(FUZZ_SECONDS) || exit 1; done
fuzz-smoke: fuzz-tools
	$(FUZZ) build --target-dir $(FUZZ_DIR) -O
	@for t in $(FUZZ_TARGETS); do $(MAKE) --no-print-directory fuzz-run-$$t SECONDS_PER_TARGET=$(FUZZ_SMOKE_SECONDS) || exit 1; done

# ThreadSanitizer over the concurrent paths: the journal's group commit,
# flushers, prefill, checkpointer and cleaner, the file engine's shared
# fdatasync and flusher, durable notifications, retention timers and the
# power-cut workloads (two threads per store). std is rebuilt instrumented
# (-Zbuild-std, hence rust-src), so a report is about real accesses, and
# the first one fails the run. The check on __tsan_func_entry makes sure the
# binaries really are instrumented.
TSAN_DIR    := $(CARGO_TARGET_DIR)/tsan
TSAN_TARGET := $(shell rustc -vV | sed -n 's/^host: //p')
TSAN_TESTS  := --lib --test journal --test file_flush --test durable_notify --test power_cut \
               --test truncate --test shard_delete --test retention_timer
TSAN_CARGO  := RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=thread" cargo test -Zbuild-std \
               -p mqstore --no-default-features --features journal \
               --target $(TSAN_TARGET) --target-dir $(TSAN_DIR)
tsan:
	@test -d "$$(rustc --print sysroot)/lib/rustlib/src/rust/library" || rustup component add rust-src
	$(TSAN_CARGO) $(TSAN_TESTS) --no-run
	nm $$(ls -t $(TSAN_DIR)/$(TSAN_TARGET)/debug/deps/journal-* | grep -v '\.d$$' | head -n1) \
	    | grep -c " __tsan_func_entry$$" >/dev/null || { echo "tsan: the tests are not instrumented"; exit 1; }
	TSAN_OPTIONS="halt_on_error=1 exitcode=66" MQS_POWER_CUTS=200 $(TSAN_CARGO) $(TSAN_TESTS)

# The journal's group-commit core under the loom model checker: every
# interleaving of appenders that write and sync (up to a preemption bound)
# against a model device that fails on an early acknowledgement. The
# `loom` feature swaps the core's locks for loom's, so it gets a target
# directory of its own.
LOOM_DIR := $(CARGO_TARGET_DIR)/loom
loom:
	cargo test -p mqstore --no-default-features --features journal,loom \
	    --target-dir $(LOOM_DIR) --lib engine::journal::commit::model

# The edge build: no default features (no zstd, so no C library linked),
# in its own target directory so it never replaces the full release build.
# Prints the stripped library's size and what it links.
EDGE_DIR := $(CARGO_TARGET_DIR)/edge
edge:
	cargo clippy -p mqstore --no-default-features --target-dir $(EDGE_DIR) -- -D warnings
	cargo build -p mqstore --release --no-default-features --target-dir $(EDGE_DIR)
	strip -o $(EDGE_DIR)/libmqstore-edge.so $(EDGE_DIR)/release/libmqstore.so
	@echo "edge build: $(EDGE_DIR)/libmqstore-edge.so, stripped: $$(stat -c %s $(EDGE_DIR)/libmqstore-edge.so) bytes"
	@echo "links: $$(readelf -d $(EDGE_DIR)/libmqstore-edge.so | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
	cargo test -p mqstore --release --no-default-features --target-dir $(EDGE_DIR) \
	    --test file_recovery --test file_flush --test file_crash

# What `make install` installs: the library with the release settings
# (profile `dist`) and the soname, in target/dist so the tree's own release
# build keeps none, and the `mqstore` tool.
# DIST_FEATURES (default: every engine) picks the library's features.
DIST_FEATURES ?=
dist:
	MQS_SONAME=$(SONAME) cargo build -p mqstore -p mqstore-cli --profile dist \
	    $(if $(DIST_FEATURES),--no-default-features --features "$(DIST_FEATURES)")

INSTALL_ENV = DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" LIBDIR="$(LIBDIR)" \
    INCLUDEDIR="$(INCLUDEDIR)" BINDIR="$(BINDIR)" VERSION="$(VERSION)" \
    ABI_VERSION="$(ABI_VERSION)" DIST_DIR="$(DIST_DIR)"

install: dist
	$(INSTALL_ENV) scripts/install.sh install

uninstall:
	$(INSTALL_ENV) scripts/install.sh uninstall

print-version:
	@echo $(VERSION)
print-abi-version:
	@echo $(ABI_VERSION)
print-dist-dir:
	@echo $(DIST_DIR)

# Installs into a staging directory and builds against it (pkg-config, CMake).
# Without the RocksDB engine: the dist profile would compile RocksDB a second
# time (about 45 minutes on 2 cores), and what this test checks (the soname,
# the stripped library, pkg-config, CMake, uninstall) does not depend on the
# engines compiled in. `make install` itself installs every engine.
test-install: tools
	DIST_FEATURES="mqstore/zstd mqstore/journal" bash tests/install/run.sh

# The exported symbols and the header's types against abi/mqstore.abi: an
# accidental ABI change fails `make test`; `make abi-bless` accepts one.
abi-check: build
	python3 scripts/abi.py check $(DEBUG_LIB) include/mqstore.h abi/mqstore.abi

abi-bless: build
	python3 scripts/abi.py bless $(DEBUG_LIB) include/mqstore.h abi/mqstore.abi

test: tools lint test-rust test-cli abi-check test-c test-cpp test-python test-install edge fuzz-smoke tsan loom
	@echo "make test: all suites passed"

# The demo runs the default engine (the journal) in release builds without
# the RocksDB engine: compiling RocksDB at -O2 takes longer on 2 cores than
# the demo may (`make release` and `make bench` build every engine).
DEMO_FEATURES := --no-default-features --features zstd,journal
demo-release:
	cargo build -p mqstore --release $(DEMO_FEATURES)

python-demo: venv
	cd python && VIRTUAL_ENV=$(VENV) $(VENV)/bin/maturin develop --quiet --release \
	    --no-default-features --features mqstore/zstd,mqstore/journal

$(CARGO_TARGET_DIR)/demo: examples/demo.c include/mqstore.h demo-release
	$(CC) $(CFLAGS_DEMO) examples/demo.c -o $@ -L$(CARGO_TARGET_DIR)/release -lmqstore \
	    -Wl,-rpath,$(CARGO_TARGET_DIR)/release -lpthread

demo: tools python-demo $(CARGO_TARGET_DIR)/demo
	$(CARGO_TARGET_DIR)/demo
	$(PYTHON) examples/demo.py

# Benchmarks (docs/BENCHMARKS.md): every engine against the raw hardware,
# RocksDB and the C/Python bindings, in one run. bench-quick: < 3 min, no
# RocksDB peer. bench: everything; the first build with the RocksDB peer
# compiles RocksDB from source (15-35 min on 2 cores).
BENCH_FEATURES ?= rocksdb
BENCH_ARGS     ?=

bench-deps: tools python-release
	$(VENV)/bin/pip install --quiet 'matplotlib>=3.8,<4'

# One cargo invocation builds libmqstore.so (for the C driver) and the
# harness, so mqstore is compiled once for both, not once per target.
bench: bench-deps s3-tools
	@if [[ "$(BENCH_FEATURES)" == *rocksdb* ]] && ! ldconfig -p | grep -q 'libclang[-.0-9]*\.so'; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev; fi
	cargo build --release -p mqstore -p mqstore-bench $(if $(BENCH_FEATURES),--features mqstore-bench/$(BENCH_FEATURES))
	$(WITH_SERVERS) cargo run -p mqstore-bench --release $(if $(BENCH_FEATURES),--features $(BENCH_FEATURES)) -- $(BENCH_ARGS)

bench-quick: bench-deps s3-tools
	cargo build --release -p mqstore -p mqstore-bench
	$(WITH_SERVERS) cargo run -p mqstore-bench --release -- --quick $(BENCH_ARGS)

clean:
	cargo clean
	rm -rf $(VENV)
