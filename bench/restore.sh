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
cargo build --release --locked -q -p etcdsnap -p testenv --bins
[ -x "$tb/etcdutl" ] || ./testbins/build.sh >/dev/null
mkdir -p bench/out
for size in "${sizes[@]}"; do
  work=$(mktemp -d -t etcdsnap-bench-restore-XXXXXX)
  TESTBINS_DIR=$tb ./target/release/testenv-up --env-file "$work/env" --no-kube --no-s3 \
    --etcd-arg --quota-backend-bytes=17179869184 > "$work/up.log" 2>&1 &
  up=$!
  trap 'kill $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$work"' EXIT
  for _ in $(seq 1 300); do grep -q '^ready' "$work/up.log" && break; sleep 0.2; done
  # shellcheck disable=SC1091
  . "$work/env"
  ./target/release/etcd-load --endpoints "$ETCDSNAP_ENDPOINTS" --target-bytes $((size * 1000 * 1000))
  for c in none zstd zip; do
    ./target/release/etcdsnap save --data-dir "$work/store" --node-name bench --endpoints "$ETCDSNAP_ENDPOINTS" \
      --compress "$c" --token bench-token --log-level warn
    sleep 1 # one snapshot name per second
  done
  # etcd is not needed any more: stop it so that it does not compete with the restores.
  kill $up; wait $up 2>/dev/null || true
  snaps="$work/store/snapshots"
  python3 bench/bench_restore.py --etcdutl "$tb/etcdutl" --etcdsnap target/release/etcdsnap \
    --plain "$(ls "$snaps"/on-demand-bench-* | grep -v '\.z')" \
    --zstd "$(ls "$snaps"/*.zst)" --zip "$(ls "$snaps"/*.zip)" \
    --workdir "$work/out" --runs "$runs" --label "${size}MB" | tee "bench/out/restore-${size}.json"
  rm -rf "$work"
  trap - EXIT
done
python3 bench/bench_restore.py --report bench/out/restore-*.json
