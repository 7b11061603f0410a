#!/usr/bin/env bash
# Benchmark: `etcdsnap restore` vs `etcdutl snapshot restore` (v3.6.16 from testbins) of the same
# snapshot file, at each size given in MB (default: 500). The snapshots come from an etcd filled
# with Kubernetes-like objects, saved once plain, once zstd and once zip by etcdsnap itself.
# Paired runs in alternating order, output removed and the page cache flushed to disk (sync)
# untimed between runs; medians. Results: bench/out/restore-<size>.json and a table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] && sizes=("$@") || sizes=(500)
runs=${RUNS:-7}
tb=${TESTBINS_DIR:-target/testbins}
# shellcheck source=lib.sh
. bench/lib.sh
bench_build
mkdir -p bench/out
for size in "${sizes[@]}"; do
  work=$(mktemp -d -t etcdsnap-bench-restore-XXXXXX)
  TESTBINS_DIR=$tb bench_etcd_up "$work" "$size"
  for c in none zstd zip; do
    ./target/release/etcdsnap save --data-dir "$work/store" --node-name bench --endpoints "$ETCDSNAP_ENDPOINTS" \
      --compress "$c" --token bench-token --log-level warn
    sleep 1 # one snapshot name per second
  done
  # etcd is not needed any more: stop it so that it does not compete with the restores.
  bench_etcd_down
  snaps="$work/store/snapshots"
  python3 bench/bench_restore.py --etcdutl "$tb/etcdutl" --etcdsnap target/release/etcdsnap \
    --plain "$(ls "$snaps"/on-demand-bench-* | grep -v '\.z')" \
    --zstd "$(ls "$snaps"/*.zst)" --zip "$(ls "$snaps"/*.zip)" \
    --workdir "$work/out" --runs "$runs" --label "${size}MB" | tee "bench/out/restore-${size}.json"
  bench_etcd_done "$work"
done
python3 bench/bench_restore.py --report bench/out/restore-*.json
