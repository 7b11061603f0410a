#!/usr/bin/env bash
# Benchmark: one reconcile pass with N local snapshots (files + metadata documents on disk) and
# M S3 records against a real kube-apiserver + etcd started by the benchmark itself: the first
# pass (creates everything) and a pass with nothing to change. Request counts come from the API
# server's audit log. Usage: bench/reconcile.sh [LOCAL] [S3]   (default 10000 10000)
# PROFILE=release for an optimised client (default: dev, to avoid a long release build).
set -euo pipefail
cd "$(dirname "$0")/.."
local_n=${1:-10000}
s3_n=${2:-10000}
profile=${PROFILE:-dev}
./testbins/build.sh >/dev/null
mkdir -p bench/out
cargo run --profile "$profile" --locked -q -p etcdsnap --example bench_reconcile -- \
  --local "$local_n" --s3 "$s3_n" | tee "bench/out/reconcile-${local_n}-${s3_n}.md"
