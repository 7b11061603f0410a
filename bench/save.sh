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
cargo build --release --locked -q -p etcdsnap -p testenv --bins
./testbins/build.sh >/dev/null
mkdir -p bench/out
results=()
for size in "${sizes[@]}"; do
  work=$(mktemp -d -t etcdsnap-bench-XXXXXX)
  ./target/release/testenv-up --env-file "$work/env" --no-kube --no-s3 \
    --etcd-arg --quota-backend-bytes=17179869184 > "$work/up.log" 2>&1 &
  up=$!
  trap 'kill $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$work"' EXIT
  for _ in $(seq 1 300); do grep -q '^ready' "$work/up.log" && break; sleep 0.2; done
  # shellcheck disable=SC1091
  . "$work/env"
  ./target/release/etcd-load --endpoints "$ETCDSNAP_ENDPOINTS" --target-bytes $((size * 1000 * 1000)) \
    --profile "$profile"
  python3 bench/bench_save.py --endpoints "$ETCDSNAP_ENDPOINTS" --etcdctl target/testbins/etcdctl \
    --etcdsnap target/release/etcdsnap --workdir "$work/out" --runs "$runs" --label "${size}MB${suffix}" \
    | tee "bench/out/save-${size}${suffix}.json"
  results+=("bench/out/save-${size}${suffix}.json")
  kill $up; wait $up 2>/dev/null || true
  rm -rf "$work"
  trap - EXIT
done
python3 bench/report.py "${results[@]}"
