# etcdsnap — the two commands a new machine needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build deps testbins testbins-demo test lint unit demo faults bench install install-files clean-testbins image

all: build

build:
	$(CARGO) build --release --locked -p etcdsnap

# Debian packages and toolchain checks.
deps:
	@./scripts/install-deps.sh

# Real etcd, kube-apiserver, kubectl and S3 servers built from pinned Go modules into
# target/testbins/ (skipped when already built): everything the tests run.
testbins: deps
	@./testbins/build.sh

# Only the servers `make demo` starts: no helm, promtool or other etcd minors.
DEMO_TESTBINS := kube-apiserver kubectl etcd versitygw
testbins-demo: deps
	@./testbins/build.sh $(DEMO_TESTBINS)

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
demo: deps testbins-demo
	@./scripts/demo.sh

# The release binary, its manual pages and its shell completions under $(DESTDIR)$(PREFIX).
PREFIX ?= /usr/local
install: build
	@$(MAKE) --no-print-directory install-files ETCDSNAP=target/release/etcdsnap

# What `install` copies, from any built binary (the tests install a debug build).
ETCDSNAP ?= target/release/etcdsnap
install-files:
	install -Dm755 $(ETCDSNAP) $(DESTDIR)$(PREFIX)/bin/etcdsnap
	$(ETCDSNAP) man --dir $(DESTDIR)$(PREFIX)/share/man/man1 >/dev/null
	install -d $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions \
	  $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	$(ETCDSNAP) completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/etcdsnap
	$(ETCDSNAP) completion zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_etcdsnap
	$(ETCDSNAP) completion fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/etcdsnap.fish

# A container image without a container daemon or registry: Debian's libc and CA certificates,
# the release binary and the pinned etcdutl (`make testbins`), packed by crates/oci-image into
# target/image/etcdsnap-<version>.oci.tar.
image: testbins build
	./scripts/build-image.sh

clean-testbins:
	rm -rf target/testbins
