#!/usr/bin/env bash
# make demo: etcdsnap's main job end to end, against a local etcd, kube-apiserver and S3 server
# that this script starts itself (crates/testenv) and stops when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p etcdsnap -p testenv --bins
work=$(mktemp -d -t etcdsnap-demo-XXXXXX)
bin=$PWD/target/release
./target/release/testenv-up --env-file "$work/env" > "$work/testenv.log" 2>&1 &
up=$!
trap 'kill $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 600); do
  grep -q '^ready' "$work/testenv.log" 2>/dev/null && break
  kill -0 $up 2>/dev/null || { cat "$work/testenv.log"; exit 1; }
  sleep 0.2
done
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

step "Local servers"
cat "$work/testenv.log"
# shellcheck disable=SC1091
. "$work/env"
export ETCDSNAP_DATA_DIR="$work/data" ETCDSNAP_NODE_NAME=demo-node-1

step "Fill etcd with 64 MB of Kubernetes-like objects"
"$bin/etcd-load" --endpoints "$ETCDSNAP_ENDPOINTS" --target-bytes 64000000

step "Take snapshots: plain, zstd, and K3s-compatible zip"
show "$bin/etcdsnap" save
show "$bin/etcdsnap" save --compress zstd
show "$bin/etcdsnap" save --compress zip --name etcd-snapshot

step "List them (K3s's table, and as ETCDSnapshotFile objects)"
show "$bin/etcdsnap" ls
"$bin/etcdsnap" ls -o yaml | head -30

step "Each snapshot is an ETCDSnapshotFile resource (K3s-compatible), rebuilt from storage by reconcile"
show "$bin/etcdsnap" ls --cluster
show "${TESTBINS_DIR:-$PWD/target/testbins}/kubectl" get etcdsnapshotfiles
show "$bin/etcdsnap" reconcile

step "Verify every stored byte against its sha256 and etcd's integrity trailer"
show "$bin/etcdsnap" verify

step "Prune on-demand snapshots to the newest one"
show "$bin/etcdsnap" prune --retention 1

step "What is on disk (0700 directories, 0600 files, a metadata document per snapshot)"
show ls -la "$ETCDSNAP_DATA_DIR/snapshots" "$ETCDSNAP_DATA_DIR/.metadata"
first=$(ls "$ETCDSNAP_DATA_DIR/.metadata" | head -1)
show cat "$ETCDSNAP_DATA_DIR/.metadata/$first"
echo
