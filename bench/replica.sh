#!/usr/bin/env bash
# Benchmark: copying a stored snapshot to a replica (`--replica s3://...`: streamed from the
# local copy, hashed, uploaded, read back from the replica and hashed again, then its record)
# against a plain upload of the same file with etcdsnap's own S3 client (bench/s3.sh's
# uploader), both to the same versitygw on loopback. One snapshot of SIZE MB (default 500),
# RUNS runs each (default 3) in alternating order; wall time and peak RSS from GNU time.
# The copy is made by `etcdsnap prune` with replica retention 0 (keep all), which copies what
# each replica is missing and removes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-500}
runs=${RUNS:-3}
cargo build --release --locked -q -p etcdsnap -p testenv --bins
cargo build --release --locked -q -p etcdsnap --example s3_upload
./testbins/build.sh versitygw etcd >/dev/null
bin=./target/release
work=$(mktemp -d -t etcdsnap-bench-XXXXXX)
TESTBINS_DIR=${TESTBINS_DIR:-target/testbins} "$bin/testenv-up" --env-file "$work/env" --no-kube \
  --etcd-arg --quota-backend-bytes=17179869184 > "$work/up.log" 2>&1 &
up=$!
trap 'kill $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 300); do grep -q '^ready' "$work/up.log" && break; sleep 0.2; done
# shellcheck disable=SC1091
. "$work/env"
export ETCDSNAP_S3_INSECURE=true
"$bin/etcd-load" --endpoints "$ETCDSNAP_ENDPOINTS" --target-bytes $((size * 1000 * 1000))
common=(--data-dir "$work/data" --node-name bench --cluster-id bench --no-kube --log-level warn)
"$bin/etcdsnap" save "${common[@]}" --endpoints "$ETCDSNAP_ENDPOINTS" >/dev/null
file=$(ls "$work/data/snapshots"/on-demand-bench-*)
bytes=$(stat -c %s "$file")
kill $up; wait $up 2>/dev/null || true
TESTBINS_DIR=${TESTBINS_DIR:-target/testbins} "$bin/testenv-up" --env-file "$work/env2" --no-kube \
  > "$work/up2.log" 2>&1 &
up=$!
for _ in $(seq 1 300); do grep -q '^ready' "$work/up2.log" && break; sleep 0.2; done
# shellcheck disable=SC1091
. "$work/env2"
export ETCDSNAP_S3_INSECURE=true

copy() {
  /usr/bin/time -f "%e %M" -o "$work/t" "$bin/etcdsnap" prune "${common[@]}" --endpoints 127.0.0.1:1 \
    --retention 0 --replica-retention 0 --replica "s3://$ETCDSNAP_S3_BUCKET/replica-$1" \
    --replica-option "aws_endpoint=http://$ETCDSNAP_S3_ENDPOINT" --replica-option aws_allow_http=true \
    --replica-option aws_region=us-east-1 >/dev/null
  cat "$work/t"
}
upload() {
  /usr/bin/time -f "%e %M" -o "$work/t" target/release/examples/s3_upload "$file" "plain-bench-$((1700000000 + $1))" >/dev/null
  cat "$work/t"
}
echo "snapshot: $bytes bytes"
# The same command without a replica: the process's own floor, to which the copy adds.
/usr/bin/time -f "%e %M" -o "$work/t" "$bin/etcdsnap" prune "${common[@]}" --endpoints 127.0.0.1:1 --retention 0 >/dev/null
echo "prune without a replica: $(awk '{printf "%.2f s, peak RSS %.1f MiB", $1, $2 / 1024}' "$work/t")"
printf '| run | replica copy s | copy MB/s | copy peak RSS MiB | plain upload s | upload MB/s | upload peak RSS MiB |\n|---|---|---|---|---|---|---|\n'
for i in $(seq 1 "$runs"); do
  if [ $((i % 2)) -eq 1 ]; then c=$(copy "$i"); u=$(upload "$i"); else u=$(upload "$i"); c=$(copy "$i"); fi
  read -r cs cr <<< "$c"
  read -r us ur <<< "$u"
  awk -v i="$i" -v b="$bytes" -v cs="$cs" -v cr="$cr" -v us="$us" -v ur="$ur" 'BEGIN {
    printf "| %d | %.2f | %.0f | %.1f | %.2f | %.0f | %.1f |\n", i, cs, b / cs / 1e6, cr / 1024, us, b / us / 1e6, ur / 1024 }'
done
