#!/usr/bin/env bash
# Benchmark of point-in-time recovery (issue 16): under a steady RATE writes/s (default 500) of
# Kubernetes-like objects (`etcd-load --rate`: status updates, node lease renewals, Events created
# and deleted, one revision each) on an etcd v3.7.3 filled with SIZE MB (default 100), fsync on:
#  - the capture (`etcdsnap agent --deltas`, defaults): the recovery point (p50/p99/max age of the
#    newest durable change, sampled every second for DURATION s, default 180), the agent's CPU
#    and RSS, etcd's CPU beside an agent with and without --deltas, stored bytes per event;
#  - `etcdsnap restore --to-revision` to base + 10,000 and base + 100,000 beside the plain
#    restore of the base snapshot (medians of RUNS, default 3; each restored revision checked;
#    PAST_BASE="10000 100000" are the distances).
# KEEP_CAPTURE=DIR keeps the capture (the agent's data directory and its measures) in DIR; when
# DIR already holds one, the capture is skipped and only the restores run, from it: changes to
# the replay are then compared on the same revisions.
# Binaries from ${CARGO_TARGET_DIR:-target}/release. Results: bench/out/pitr.json and the tables.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
rate=${RATE:-500}
duration=${DURATION:-180}
size=${SIZE:-100}
read -ra past <<< "${PAST_BASE:-10000 100000}"
tb=$(realpath "${TESTBINS_DIR:-target/testbins}")
bin=${CARGO_TARGET_DIR:-target}/release
# shellcheck source=lib.sh
. bench/lib.sh
if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release --locked -q -p etcdsnap -p testenv --bins
  ./testbins/build.sh >/dev/null
fi
mkdir -p bench/out
keep=${KEEP_CAPTURE:+$(realpath -m "$KEEP_CAPTURE")}
if [ -n "$keep" ] && [ ! -s "$keep/capture.json" ] && [ -e "$keep/store" ]; then
  echo "bench: $keep holds a capture without its measures (capture.json): remove it first" >&2
  exit 1
fi
work=$(mktemp -d -t etcdsnap-bench-pitr-XXXXXX)
if [ -n "$keep" ] && [ -s "$keep/capture.json" ]; then
  echo "bench: restores from the capture kept in $keep (taken $(date -r "$keep/capture.json" -u +%FT%TZ))" >&2
  # rm -rf of $work removes the link, not the kept capture.
  trap "rm -rf '$work'" EXIT
  ln -s "$keep/store" "$work/store"
  cp "$keep/capture.json" "$work/capture.json"
else
  # testenv-up runs the default etcd (the `etcd` symlink of the testbins directory): v3.7.3 here.
  mkdir "$work/testbins"
  for t in etcd etcdctl etcdutl; do ln -s "$tb/$t-v3.7.3" "$work/testbins/$t"; done
  # The binaries of $bin, and fsync on (testenv-up passes --unsafe-no-fsync).
  BENCH_BIN=$bin BENCH_ETCD_ARGS=--unsafe-no-fsync=false TESTBINS_DIR=$work/testbins bench_etcd_up "$work" "$size"
  python3 bench/bench_pitr.py --phase capture --etcdsnap "$bin/etcdsnap" --etcd-load "$bin/etcd-load" \
    --endpoints "$ETCDSNAP_ENDPOINTS" --etcd-dir "$TESTENV_ETCD_DIR" --workdir "$work" \
    --rate "$rate" --duration "$duration" --past-base "${past[@]}" | tee bench/out/pitr-capture.json > "$work/capture.json"
  # etcd is not needed any more: stop it so that it does not compete with the restores.
  bench_etcd_down
  if [ -n "$keep" ]; then
    mkdir -p "$keep"
    cp -a "$work/store" "$work/capture.json" "$keep/"
  fi
fi
python3 bench/bench_pitr.py --phase restore --etcdsnap "$bin/etcdsnap" --etcd "$tb/etcd-v3.7.3" \
  --etcdutl "$tb/etcdutl-v3.7.3" --workdir "$work" --runs "$runs" --past-base "${past[@]}" --capture-result "$work/capture.json" \
  > bench/out/pitr.json
rm -rf "$work"
trap - EXIT
python3 bench/bench_pitr.py --report bench/out/pitr.json
