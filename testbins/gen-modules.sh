#!/usr/bin/env bash
# Regenerates the pinned Go modules under testbins/ from testbins/versions.env.
# Run it only when changing a version; the generated go.mod/go.sum files are committed so that
# every build uses exactly the same dependency graph.
#
# kube-apiserver cannot be built with `go install k8s.io/kubernetes/cmd/kube-apiserver@vX`: the
# k8s.io/kubernetes go.mod replaces each staging module (k8s.io/api, k8s.io/apiserver, ...) with
# ./staging/... and requires them at v0.0.0. We read that list from the real go.mod and pin every
# staging module to its published v0.<minor>.<patch> tag instead.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

gen_kube() {
  local dir="$here/kubernetes" staging_version gomod
  staging_version="v0.${KUBE_VERSION#v1.}"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  go mod init etcdsnap.test/testbins/kubernetes >/dev/null 2>&1
  gomod=$(go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  [ -f "$gomod" ] || { echo "cannot find go.mod of k8s.io/kubernetes@${KUBE_VERSION}" >&2; exit 1; }
  local n=0
  while read -r module; do
    go mod edit -replace "${module}=${module}@${staging_version}"
    n=$((n + 1))
  done < <(awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$gomod")
  echo "kubernetes: pinned $n staging modules at ${staging_version}"
  go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@${KUBE_VERSION}" "k8s.io/kubernetes/cmd/kubectl@${KUBE_VERSION}"
  go mod tidy
}

# One module per etcd version in ETCD_VERSIONS, each with its own dependency graph (3.5, 3.6 and 3.7
# pin different grpc, bbolt and raft versions, so they cannot share one go.mod). The default
# (ETCD_VERSION) lives in testbins/etcd, the others in testbins/etcd-<major.minor>; build.sh has the
# same etcd_moddir.
etcd_moddir() {
  local minor=${1#v}
  if [ "$1" = "$ETCD_VERSION" ]; then echo etcd; else echo "etcd-${minor%.*}"; fi
}

gen_etcd() {
  local version
  for version in $ETCD_VERSIONS; do gen_etcd_one "$version"; done
  gen_etcd_replay
}

# etcdsnap-replay's module (its source, main.go, is kept): etcd's storage packages at ETCD_VERSION.
gen_etcd_replay() {
  cd "$here/etcd-replay"
  go mod edit -require "go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
  go mod tidy
  echo "etcd-replay: etcd $ETCD_VERSION in testbins/etcd-replay"
}

gen_etcd_one() {
  local version=$1 name
  name=$(etcd_moddir "$version")
  gen_tools "$name" "go.etcd.io/etcd/server/v3@${version}" \
    "go.etcd.io/etcd/etcdctl/v3@${version}" "go.etcd.io/etcd/etcdutl/v3@${version}"
  echo "etcd: $version in testbins/$name"
}

# gen_tools <module dir> <package@version>...: a module under testbins/ whose only purpose is to
# pin the given tools' dependency graph.
gen_tools() {
  local name=$1
  shift
  rm -rf "${here:?}/$name" && mkdir -p "$here/$name" && cd "$here/$name"
  go mod init "etcdsnap.test/testbins/$name" >/dev/null 2>&1
  go get -tool "$@"
  go mod tidy
}

gen_versitygw() { gen_tools versitygw "github.com/versity/versitygw/cmd/versitygw@${VERSITYGW_VERSION}"; }
gen_fake_gcs() { gen_tools fake-gcs-server "github.com/fsouza/fake-gcs-server@${FAKE_GCS_SERVER_VERSION}"; }
# Azurite is an npm package: its lock file, from testbins/azurite/package.json.
gen_azurite() { (cd "$here/azurite" && npm install --package-lock-only --no-audit --no-fund); }
gen_helm() { gen_tools helm "helm.sh/helm/v4/cmd/helm@${HELM_VERSION}"; }
# promtool only; the Prometheus server itself is never run (the rules are unit-tested by promtool).
gen_prometheus() { gen_tools prometheus "github.com/prometheus/prometheus/cmd/promtool@${PROMETHEUS_VERSION}"; }

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(kube etcd versitygw fake_gcs azurite helm prometheus)
for t in "${targets[@]}"; do "gen_$t"; done
