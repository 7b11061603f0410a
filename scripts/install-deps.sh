#!/usr/bin/env bash
# Installs what building and testing etcdsnap needs on a fresh Debian machine, then checks the
# toolchains. Idempotent: a warm machine only runs the checks.
set -euo pipefail

apt_packages=()
command -v protoc >/dev/null 2>&1 || apt_packages+=(protobuf-compiler)   # etcd-client's build
command -v cc >/dev/null 2>&1 || apt_packages+=(build-essential)         # aws-lc-sys, zstd-sys
command -v man >/dev/null 2>&1 || apt_packages+=(man-db)                 # tests/deploy/install.rs renders the manual pages
command -v tmux >/dev/null 2>&1 || apt_packages+=(tmux)                  # tests/snapshots/cli.rs: ls on an 80-column terminal
command -v age >/dev/null 2>&1 || apt_packages+=(age)                    # tests/recovery/sealed.rs: the age tool opens sealed snapshots
command -v minisign >/dev/null 2>&1 || apt_packages+=(minisign)          # tests/recovery/sealed.rs: the minisign tool checks and makes signatures
command -v zstd >/dev/null 2>&1 || apt_packages+=(zstd)                  # tests/recovery/sealed.rs: age -d | zstd -d
command -v npm >/dev/null 2>&1 || apt_packages+=(nodejs npm)             # testbins/build.sh: Azurite, the Azure Blob Storage server of the replica tests

if [ ${#apt_packages[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "install-deps: apt-get install ${apt_packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y -qq "${apt_packages[@]}" >/dev/null; then
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${apt_packages[@]}"
  fi
fi

fail() { echo "install-deps: $*" >&2; exit 1; }
command -v go >/dev/null 2>&1 || fail "Go is required (1.26 or newer) to build the test servers"
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
[ "${go_minor:-0}" -ge 26 ] || fail "Go 1.26 or newer is required, found $(go env GOVERSION)"
command -v cargo >/dev/null 2>&1 || fail "Rust (cargo) is required"
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
echo "install-deps: ok ($(go env GOVERSION), $(rustc --version), $(protoc --version))"
