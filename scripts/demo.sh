#!/usr/bin/env bash
# make demo: etcdsnap's main job end to end, against a local etcd, kube-apiserver and S3 server
# that this script starts itself (crates/testenv) and stops when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
# The demo runs the dev profile (`make test`'s): a release build spends most of its time in
# optimisation and link-time optimisation that a 64 MB demo never notices, and the dev build's
# dependencies are the ones `make test` reuses next. bench/RESULTS.md has both build times.
profile=${DEMO_PROFILE:-dev}
out_dir=debug
[ "$profile" = dev ] || out_dir=$profile
echo "demo: building etcdsnap and testenv (the launcher of the local etcd, kube-apiserver and S3)"
echo "demo: with cargo's $profile profile. A first build compiles about 420 crates (gRPC, TLS, the"
echo "demo: Kubernetes and S3 clients) and takes minutes on 2 cores; later runs take seconds."
cargo build --locked --profile "$profile" -p etcdsnap -p testenv --bins
work=$(mktemp -d -t etcdsnap-demo-XXXXXX)
bin=$PWD/target/$out_dir
"$bin/testenv-up" --env-file "$work/env" > "$work/testenv.log" 2>&1 &
up=$!
agent=""
# Stops what the demo started and keeps the demo's own exit status.
cleanup() {
  local rc=$?
  set +e
  [ -n "$agent" ] && kill "$agent" 2>/dev/null
  kill "$up" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
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

export ETCDSNAP_S3=true ETCDSNAP_CLUSTER_ID=demo-cluster
# A K3s-format server token: only the hash of its password part is recorded, and restore checks it.
export ETCDSNAP_TOKEN=K10$(printf 'demo%.0s' $(seq 1 16) | sha256sum | cut -c1-64)::server:demo-password
kubectl=${TESTBINS_DIR:-$PWD/target/testbins}/kubectl

step "On-demand snapshots: plain, zstd and K3s-compatible zip, each written locally and uploaded to S3 in one pass"
show "$bin/etcdsnap" save
show "$bin/etcdsnap" save --compress zstd
show "$bin/etcdsnap" save --compress zip

step "The agent, as it runs on every etcd node: a save every 15 s, retention 3, reconcile, leader duties, metrics, and (--deltas) every change between snapshots"
metrics=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf '$ etcdsnap agent --schedule "*/15 * * * * *" --retention 3 --compress zstd --reconcile-interval 20s --deltas --delta-interval 5s --metrics-addr %s\n' "$metrics"
"$bin/etcdsnap" agent --schedule "*/15 * * * * *" --retention 3 --compress zstd --reconcile-interval 20s \
  --deltas --delta-interval 5s --metrics-addr "$metrics" > "$work/agent.log" 2>&1 &
agent=$!
etcdctl=${TESTBINS_DIR:-$PWD/target/testbins}/etcdctl
revision() { "$etcdctl" --endpoints "$ETCDSNAP_ENDPOINTS" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])'; }
for i in $(seq 1 50); do
  sleep 1
  if [ -t 1 ]; then printf '\r  running for %2d s ...' "$i"; fi
  # Meanwhile the cluster is used: a namespace of configmaps comes, then goes by mistake.
  if [ "$i" = 20 ]; then
    for n in $(seq 1 40); do "$etcdctl" --endpoints "$ETCDSNAP_ENDPOINTS" put "/registry/configmaps/prod/app-$n" "{\"data\":$n}" > /dev/null; done
    before_delete=$(revision)
  fi
  if [ "$i" = 30 ]; then "$etcdctl" --endpoints "$ETCDSNAP_ENDPOINTS" del --prefix /registry/configmaps/prod/ > /dev/null; fi
done
if [ -t 1 ]; then echo; fi
echo "-- agent log:"
cat "$work/agent.log"
echo "-- /metrics (freshness gauges, counters and the save histogram):"
curl -fsS "http://$metrics/metrics" | grep -E '^etcdsnap_(last_|saves_total|snapshot_size|etcd_snapshot_save_duration_seconds_count)' || true
printf '$ curl %s/readyz\n' "$metrics"
curl -fsS "http://$metrics/readyz"; echo
kill -TERM "$agent"; wait "$agent" && echo "agent stopped cleanly on SIGTERM (exit 0)"; agent=""

step "Every snapshot, local and S3, with its size and integrity data"
show "$bin/etcdsnap" ls

step "Each snapshot is an ETCDSnapshotFile resource (what Rancher and kubectl read), and a reconcile finds nothing to fix"
show "$kubectl" get etcdsnapshotfiles
show "$bin/etcdsnap" reconcile
show "$kubectl" -n kube-system get configmap k3s-etcd-snapshots

step "The bucket: snapshots at the top, etcdsnap's record beside each in .metadata/<name>.etcdsnap.json (K3s's own .metadata/<name> appears only with extra metadata), delta segments under .etcdsnap-deltas/<chain>/.metadata/ (K3s skips every object whose parent is .metadata)"
(cd "$TESTENV_S3_ROOT/etcdsnap" && find . -type f | sed 's|^\./||' | sort)

step "Verify every stored byte, locally and in S3, against its sha256 and etcd's integrity trailer"
show "$bin/etcdsnap" verify

step "Restore pre-flight (dry run): what a restore of the newest snapshot would do, checked before anything is touched"
newest=$("$bin/etcdsnap" ls -o json | python3 -c 'import json,sys; items=json.load(sys.stdin)["items"]; print(max(items, key=lambda i: i["status"]["creationTime"])["spec"]["snapshotName"])')
show "$bin/etcdsnap" restore "$newest" --data-dir "$work/restored" --member-name demo --etcdutl "${TESTBINS_DIR:-$PWD/target/testbins}/etcdutl" --dry-run

step "Point-in-time recovery: at second 30 the prod configmaps were deleted; roll back to revision $before_delete, just before"
show "$bin/etcdsnap" ls --deltas
etcd_bin=${TESTBINS_DIR:-$PWD/target/testbins}/etcd
show "$bin/etcdsnap" restore --to-revision "$before_delete" --data-dir "$work/pitr-restored" --member-name demo \
  --initial-advertise-peer-urls http://127.0.0.1:23980 --etcd "$etcd_bin" --etcdutl "${TESTBINS_DIR:-$PWD/target/testbins}/etcdutl"
echo "-- the restored member, started on loopback: the configmaps are back"
"$etcd_bin" --data-dir "$work/pitr-restored" --name demo --listen-client-urls http://127.0.0.1:23979 \
  --advertise-client-urls http://127.0.0.1:23979 --listen-peer-urls http://127.0.0.1:23980 > "$work/pitr-etcd.log" 2>&1 &
restored_etcd=$!
for _ in $(seq 1 50); do "$etcdctl" --endpoints http://127.0.0.1:23979 endpoint health > /dev/null 2>&1 && break; sleep 0.2; done
show "$etcdctl" --endpoints http://127.0.0.1:23979 get --prefix --count-only -w fields /registry/configmaps/prod/
kill "$restored_etcd"; wait "$restored_etcd" 2>/dev/null || true

step "Prune the on-demand snapshots to the newest one (locally and in S3; the agent's keep their own retention)"
show "$bin/etcdsnap" prune --retention 1

step "What is on disk (0700 directories, 0600 files, the snapshot directory holds snapshots only, one etcdsnap record per snapshot in .metadata)"
show ls -la "$ETCDSNAP_DATA_DIR/snapshots" "$ETCDSNAP_DATA_DIR/.metadata"
first=$(ls "$ETCDSNAP_DATA_DIR/.metadata" | head -1)
show cat "$ETCDSNAP_DATA_DIR/.metadata/$first"
echo
