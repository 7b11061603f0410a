#!/usr/bin/env bash
# make demo: starts a local etcd, kube-apiserver and S3 server and shows how to reach them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p etcdsnap -p testenv --bins
work=$(mktemp -d -t etcdsnap-demo-XXXXXX)
./target/release/testenv-up --env-file "$work/env" > "$work/testenv.log" 2>&1 &
up=$!
trap 'kill $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 300); do
  grep -q '^ready' "$work/testenv.log" 2>/dev/null && break
  kill -0 $up 2>/dev/null || { cat "$work/testenv.log"; exit 1; }
  sleep 0.2
done
cat "$work/testenv.log"
echo
echo "The servers run until you press Enter (or for 10 s when not on a terminal)."
if [ -t 0 ]; then read -r _; else sleep 10; fi
