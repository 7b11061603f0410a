#!/usr/bin/env bash
# Benchmark: `etcdsnap save` vs `etcdctl snapshot save` (v3.6.16 from testbins) on the same etcd
# filled with Kubernetes-like objects, at each size given in MB (default: 500 2000).
# PROFILE=random-values fills it with 8-16 KB values of random bytes instead (etcd-load
# --profile): memory and speed must hold whatever the data looks like.
# Paired runs in alternating order; medians. Results: bench/out/save-<size>[-<profile>].json,
# and a table on stdout to paste into bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("${@:-500 2000}")
[ $# -gt 0 ] || sizes=(500 2000)
runs=${RUNS:-5}
profile=${PROFILE:-kube}
# The kube profile keeps its historical file names, so earlier results still compare.
suffix=""
[ "$profile" = kube ] || suffix="-$profile"
# shellcheck source=lib.sh
. bench/lib.sh
bench_build
mkdir -p bench/out
results=()
for size in "${sizes[@]}"; do
  work=$(mktemp -d -t etcdsnap-bench-XXXXXX)
  bench_etcd_up "$work" "$size" "$profile"
  python3 bench/bench_save.py --endpoints "$ETCDSNAP_ENDPOINTS" --etcdctl target/testbins/etcdctl \
    --etcdsnap target/release/etcdsnap --workdir "$work/out" --runs "$runs" --label "${size}MB${suffix}" \
    | tee "bench/out/save-${size}${suffix}.json"
  results+=("bench/out/save-${size}${suffix}.json")
  bench_etcd_done "$work"
done
python3 bench/report.py "${results[@]}"
