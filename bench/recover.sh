#!/usr/bin/env bash
# Benchmark of `etcdsnap recover` (issue 26) on a one-member cluster: the newest snapshot rolled
# forward through every captured revision, beside `etcdsnap restore --to-revision <the last one>`
# of the same capture (the snapshot's etcdutl restore plus the replay, nothing to discover). Both land on
# the same revision; the difference is what recover adds: reading the data directory, finding the
# newest snapshot and its members, planning the roll forward once more.
# Needs a capture kept by pitr.sh: KEEP_CAPTURE=DIR bench/pitr.sh first (SIZE MB, 100,000
# revisions past the base by default), then KEEP_CAPTURE=DIR bench/recover.sh. RUNS (default 3)
# paired runs in alternating order, output removed and synced untimed between runs; the revision
# each one serves is checked by booting etcd on it.
# Binaries from ${CARGO_TARGET_DIR:-target}/release. Results: bench/out/recover.json and a table.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
keep=$(realpath -e "${KEEP_CAPTURE:?KEEP_CAPTURE=DIR of a capture kept by bench/pitr.sh}")
tb=$(realpath "${TESTBINS_DIR:-target/testbins}")
bin=${CARGO_TARGET_DIR:-target}/release
if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release --locked -q -p etcdsnap --bins
fi
mkdir -p bench/out
python3 bench/bench_recover.py --etcdsnap "$bin/etcdsnap" --etcd "$tb/etcd-v3.7.3" --etcdutl "$tb/etcdutl-v3.7.3" \
  --store "$keep/store" --capture "$keep/capture.json" --runs "$runs" > bench/out/recover.json
python3 bench/bench_recover.py --report bench/out/recover.json
