#!/usr/bin/env bash
# Benchmark: `etcdsnap save --s3 --compress zstd` (one pass: local copy + upload) vs plain
# `etcdctl snapshot save` and vs the sequential way, at each size in MB (default 500 2000); then
# listing 10,000 objects, first (cold cache) and repeated, with requests counted by the server.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ $# -gt 0 ] || sizes=(500 2000)
runs=${RUNS:-5}
command -v zstd >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq zstd >/dev/null; }
cargo build --release --locked -q -p etcdsnap -p testenv --bins
cargo build --release --locked -q -p etcdsnap --example s3_upload
./testbins/build.sh >/dev/null
mkdir -p bench/out

start_env() {
  work=$(mktemp -d -t etcdsnap-bench-XXXXXX)
  ./target/release/testenv-up --env-file "$work/env" --no-kube --etcd-arg --quota-backend-bytes=17179869184 > "$work/up.log" 2>&1 &
  up=$!
  trap 'kill $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$work"' EXIT
  for _ in $(seq 1 300); do grep -q '^ready' "$work/up.log" && break; sleep 0.2; done
  # shellcheck disable=SC1091
  . "$work/env"
  export ETCDSNAP_S3_INSECURE=true
}
stop_env() { kill $up; wait $up 2>/dev/null || true; rm -rf "$work"; trap - EXIT; }

for size in "${sizes[@]}"; do
  start_env
  ./target/release/etcd-load --endpoints "$ETCDSNAP_ENDPOINTS" --target-bytes $((size * 1000 * 1000))
  python3 bench/bench_s3.py --endpoints "$ETCDSNAP_ENDPOINTS" --etcdctl target/testbins/etcdctl \
    --etcdsnap target/release/etcdsnap --uploader target/release/examples/s3_upload \
    --workdir "$work/out" --runs "$runs" --label "${size}MB" | tee "bench/out/s3-${size}.json"
  stop_env
done

[ -n "${SKIP_LISTING:-}" ] && exit 0
# Listing 10,000 objects.
start_env
s3url="http://$ETCDSNAP_S3_ENDPOINT"
./target/release/s3-fill --url "$s3url" --bucket "$ETCDSNAP_S3_BUCKET" --folder list --count 10000
log="$(dirname "$TESTENV_S3_ROOT")/access.log"
listing() {
  local before after start end
  before=$(wc -l < "$log"); start=$(date +%s.%N)
  ./target/release/etcdsnap ls --s3 --no-local --s3-folder list --node-name bench --data-dir "$work/data" -o json > "$work/ls.json"
  end=$(date +%s.%N); after=$(wc -l < "$log")
  local items; items=$(python3 -c "import json,sys; print(len(json.load(open('$work/ls.json'))['items']))")
  sed -n "$((before + 1)),${after}p" "$log" | awk -v t="$(echo "$end - $start" | bc)" -v items="$items" -v label="$1" '
    { ops[$8]++ ; n++ } END { printf "{\"label\": \"%s\", \"items\": %d, \"seconds\": %.2f, \"requests\": %d", label, items, t, n;
      for (o in ops) printf ", \"%s\": %d", o, ops[o]; print "}" }'
}
{ listing first; listing repeated; } | tee bench/out/s3-list.json
stop_env
python3 bench/report_s3.py bench/out/s3-[0-9]*.json bench/out/s3-list.json
