# etcdsnap — the two commands a new machine needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build deps testbins test lint unit demo faults bench clean-testbins

all: build

build:
	$(CARGO) build --release --locked -p etcdsnap

# Debian packages and toolchain checks.
deps:
	@./scripts/install-deps.sh

# Real etcd, kube-apiserver, kubectl and S3 servers built from pinned Go modules into
# target/testbins/ (skipped when already built).
testbins: deps
	@./testbins/build.sh

# Test builds compile the reliability suite's failpoints in; release builds never do.
TEST_FEATURES := --features etcdsnap/failpoints

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) clippy --workspace --all-targets --locked $(TEST_FEATURES) -- -D warnings

# Everything: formatting, lints, unit tests and integration tests against the real servers.
test: deps testbins lint
	$(CARGO) test --workspace --locked $(TEST_FEATURES)

# The reliability suite alone (crashes, outages, corruption, hostile content, races, secrets);
# `make test` runs it too. Results: docs/reliability.md.
faults: deps testbins
	$(CARGO) test -p etcdsnap --locked $(TEST_FEATURES) --test faults -- --nocapture

# Runs the main job end to end against a local etcd, kube-apiserver and S3 started on loopback.
demo: deps testbins
	@./scripts/demo.sh

clean-testbins:
	rm -rf target/testbins
