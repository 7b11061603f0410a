#!/usr/bin/env bash
# Benchmark: what sealing costs the one-pass save. `etcdsnap save --s3 --compress zstd` against the
# same save with `--encrypt-to` (age), side by side in pairs (ABBA), at each size in MB (default
# 500). Target (docs/security.md, issue 27): wall <= 1.1x, CPU <= 1.15x, peak RSS + <= 2 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ $# -gt 0 ] || sizes=(500)
runs=${RUNS:-5}
command -v age-keygen >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq age >/dev/null; }
cargo build --release --locked -q -p etcdsnap -p testenv --bins
./testbins/build.sh >/dev/null
mkdir -p bench/out

for size in "${sizes[@]}"; do
  work=$(mktemp -d -t etcdsnap-bench-XXXXXX)
  ./target/release/testenv-up --env-file "$work/env" --no-kube --etcd-arg --quota-backend-bytes=17179869184 > "$work/up.log" 2>&1 &
  up=$!
  trap 'kill $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$work"' EXIT
  for _ in $(seq 1 300); do grep -q '^ready' "$work/up.log" && break; sleep 0.2; done
  # shellcheck disable=SC1091
  . "$work/env"
  export ETCDSNAP_S3_INSECURE=true
  age-keygen -o "$work/identity" 2>/dev/null
  recipient=$(age-keygen -y "$work/identity")
  ./target/release/etcd-load --endpoints "$ETCDSNAP_ENDPOINTS" --target-bytes $((size * 1000 * 1000))
  python3 bench/bench_seal.py --endpoints "$ETCDSNAP_ENDPOINTS" --etcdsnap target/release/etcdsnap \
    --recipient "$recipient" --workdir "$work/out" --runs "$runs" --label "${size}MB" | tee "bench/out/seal-${size}.json"
  kill $up; wait $up 2>/dev/null || true; rm -rf "$work"; trap - EXIT
done
