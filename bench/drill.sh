#!/usr/bin/env bash
# Benchmark of restore drills (issue 15), at each size given in MB (default: 500 2000):
#  - the cost of recording etcd's HashKV at save time: `etcdsnap save` with and without it,
#    paired, on the same etcd (the ratio of the save);
#  - `etcdsnap drill` at the hash level and at the boot level, against the plain
#    `etcdutl snapshot restore` of the same file.
# etcdutl and etcd v3.7 from testbins (drills need etcdutl's hashkv, 3.6+). Medians of RUNS
# (default 3); page cache synced between runs. Results: bench/out/drill-<size>.json and a table.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] && sizes=("$@") || sizes=(500 2000)
runs=${RUNS:-3}
tb=${TESTBINS_DIR:-target/testbins}
# shellcheck source=lib.sh
. bench/lib.sh
bench_build
mkdir -p bench/out
for size in "${sizes[@]}"; do
  work=$(mktemp -d -t etcdsnap-bench-drill-XXXXXX)
  TESTBINS_DIR=$tb bench_etcd_up "$work" "$size"
  python3 bench/bench_drill.py --phase save --etcdsnap target/release/etcdsnap --endpoints "$ETCDSNAP_ENDPOINTS" \
    --workdir "$work" --runs "$runs" > "$work/save.json"
  bench_etcd_down
  python3 bench/bench_drill.py --phase drill --etcdsnap target/release/etcdsnap --etcdutl "$tb/etcdutl-v3.7.3" \
    --etcd "$tb/etcd-v3.7.3" --workdir "$work" --runs "$runs" --label "${size}MB" --save-result "$work/save.json" \
    | tee "bench/out/drill-${size}.json"
  bench_etcd_done "$work"
done
python3 bench/bench_drill.py --report bench/out/drill-*.json
