#!/usr/bin/env bash
# The chaos soak (docs/reliability.md, "Soak"): three agents on a three-member etcd, one API
# server and one S3 server, all real and on loopback, saving every 2 s while seeded chaos pauses
# and kills agents, restarts the API server, cuts S3 and kills the etcd leader; then the
# invariants are judged from the servers directly. Run it on a quiet machine:
#   SOAK_MINUTES=30 SOAK_SEED=<n> bench/soak.sh
# Output: the report on stdout (paste it into docs/reliability.md), bench/out/soak-<seed>.json,
# the run's log in bench/out/soak-<seed>.log. Exits non-zero on any invariant violation.
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${SOAK_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
./testbins/build.sh >/dev/null
cargo build --release --locked -q -p etcdsnap --bin etcdsnap --example soak
mkdir -p bench/out
ETCDSNAP_BIN="$PWD/target/release/etcdsnap" SOAK_SEED="$seed" SOAK_REPORT="bench/out/soak-$seed.json" \
  ./target/release/examples/soak 2> >(tee "bench/out/soak-$seed.log" >&2)
