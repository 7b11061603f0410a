#!/usr/bin/env bash
# Builds the real servers the tests run against into target/testbins/<name>-<version>.
# Skips any binary that already exists, so a warm machine pays nothing; fails loudly otherwise.
# Output dir can be overridden with TESTBINS_DIR.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
out=${TESTBINS_DIR:-$root/target/testbins}
mkdir -p "$out"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly GOTOOLCHAIN=local

built=0
# build <module dir> <package> <binary name> <version> [extra go build args...]
build() {
  local moddir=$1 pkg=$2 name=$3 version=$4
  shift 4
  local dest="$out/$name-$version"
  if [ -x "$dest" ]; then
    echo "testbins: $name $version present ($dest)"
    return
  fi
  if [ "$built" -eq 0 ]; then
    echo "testbins: building the missing servers from their Go modules, once per machine; on 2 cores"
    echo "testbins: kube-apiserver takes about 10 minutes, promtool 6, each etcd and helm 2-3."
  fi
  echo "testbins: building $name $version from $pkg ..."
  local start=$SECONDS
  if ! (cd "$here/$moddir" && go build -trimpath -o "$dest.tmp" "$@" "$pkg"); then
    rm -f "$dest.tmp"
    echo "testbins: FAILED to build $name $version (module testbins/$moddir, package $pkg)" >&2
    exit 1
  fi
  mv "$dest.tmp" "$dest"
  echo "testbins: built $name $version in $((SECONDS - start))s"
  built=$((built + 1))
}

kube_minor=$(echo "$KUBE_VERSION" | cut -d. -f2)
build kubernetes k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$KUBE_VERSION" \
  -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$kube_minor -X k8s.io/component-base/version.gitTreeState=clean"
build kubernetes k8s.io/kubernetes/cmd/kubectl kubectl "$KUBE_VERSION" \
  -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$kube_minor -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$kube_minor"
# Every etcd minor the version tests run against (ETCD_VERSIONS, the default ETCD_VERSION among
# them), each from its own module: the default's is testbins/etcd, the others'
# testbins/etcd-<major.minor> (gen-modules.sh has the same etcd_moddir).
etcd_moddir() {
  local minor=${1#v}
  if [ "$1" = "$ETCD_VERSION" ]; then echo etcd; else echo "etcd-${minor%.*}"; fi
}
case " $ETCD_VERSIONS " in
  *" $ETCD_VERSION "*) ;;
  *) echo "testbins: ETCD_VERSIONS ($ETCD_VERSIONS) must include ETCD_VERSION ($ETCD_VERSION)" >&2; exit 1 ;;
esac
case " $ETCD_VERSIONS " in
  *" $IMAGE_ETCDUTL_VERSION "*) ;;
  *) echo "testbins: ETCD_VERSIONS ($ETCD_VERSIONS) must include IMAGE_ETCDUTL_VERSION ($IMAGE_ETCDUTL_VERSION)" >&2; exit 1 ;;
esac
for etcd_version in $ETCD_VERSIONS; do
  moddir=$(etcd_moddir "$etcd_version")
  build "$moddir" go.etcd.io/etcd/server/v3 etcd "$etcd_version" -ldflags "-s -w"
  build "$moddir" go.etcd.io/etcd/etcdctl/v3 etcdctl "$etcd_version" -ldflags "-s -w"
  build "$moddir" go.etcd.io/etcd/etcdutl/v3 etcdutl "$etcd_version" -ldflags "-s -w"
done
build versitygw github.com/versity/versitygw/cmd/versitygw versitygw "$VERSITYGW_VERSION" -ldflags "-s -w"
build helm helm.sh/helm/v4/cmd/helm helm "$HELM_VERSION" \
  -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
build prometheus github.com/prometheus/prometheus/cmd/promtool promtool "$PROMETHEUS_VERSION" \
  -ldflags "-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION#v}"

# Stable names for tools and scripts (bench/, make demo): symlinks to the pinned versions (the
# default etcd; tests find the other minors by version, see testenv::testbin_version).
ln -sfn "kube-apiserver-$KUBE_VERSION" "$out/kube-apiserver"
ln -sfn "kubectl-$KUBE_VERSION" "$out/kubectl"
ln -sfn "etcd-$ETCD_VERSION" "$out/etcd"
ln -sfn "etcdctl-$ETCD_VERSION" "$out/etcdctl"
ln -sfn "etcdutl-$ETCD_VERSION" "$out/etcdutl"
ln -sfn "versitygw-$VERSITYGW_VERSION" "$out/versitygw"
ln -sfn "helm-$HELM_VERSION" "$out/helm"
ln -sfn "promtool-$PROMETHEUS_VERSION" "$out/promtool"
echo "testbins: $built built, all present in $out"
