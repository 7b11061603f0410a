#!/usr/bin/env bash
# Builds the real servers the tests run against into target/testbins/<name>-<version>.
# Skips any binary that already exists, so a warm machine pays nothing; fails loudly otherwise.
# Output dir can be overridden with TESTBINS_DIR.
#
# With no argument it builds everything the tests use (`make test`). Arguments choose a part:
#   kube-apiserver kubectl versitygw helm promtool   that tool
#   fake-gcs-server azurite                           the GCS and Azure servers replicas are tested on
#   etcd                                              the default etcd with its etcdctl and etcdutl, and
#                                                     etcdsnap-replay (the replay's direct engine)
#   etcd-versions                                     every etcd of ETCD_VERSIONS, with their tools
# `make demo` builds only what the demo starts: kube-apiserver kubectl etcd versitygw.
set -euo pipefail
parts=("$@")
known="kube-apiserver kubectl versitygw fake-gcs-server azurite helm promtool etcd etcd-versions"
for p in "${parts[@]}"; do
  case " $known " in
    *" $p "*) ;;
    *) echo "testbins: unknown part '$p' (one of: $known)" >&2; exit 2 ;;
  esac
done
# Whether part $1 is to be built: all of them when none is named.
wanted() {
  [ ${#parts[@]} -eq 0 ] && return 0
  local p
  for p in "${parts[@]}"; do [ "$p" = "$1" ] && return 0; done
  return 1
}
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
wanted kube-apiserver && build kubernetes k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$KUBE_VERSION" \
  -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$kube_minor -X k8s.io/component-base/version.gitTreeState=clean"
wanted kubectl && build kubernetes k8s.io/kubernetes/cmd/kubectl kubectl "$KUBE_VERSION" \
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
  if ! wanted etcd-versions && ! { wanted etcd && [ "$etcd_version" = "$ETCD_VERSION" ]; }; then
    continue
  fi
  moddir=$(etcd_moddir "$etcd_version")
  build "$moddir" go.etcd.io/etcd/server/v3 etcd "$etcd_version" -ldflags "-s -w"
  build "$moddir" go.etcd.io/etcd/etcdctl/v3 etcdctl "$etcd_version" -ldflags "-s -w"
  build "$moddir" go.etcd.io/etcd/etcdutl/v3 etcdutl "$etcd_version" -ldflags "-s -w"
done
# etcdsnap-replay, the point-in-time replay's direct engine, from etcd's own storage packages at
# the default etcd's version (its module testbins/etcd-replay pins them). The image ships it.
if wanted etcd; then
  grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION\$" "$here/etcd-replay/go.mod" ||
    { echo "testbins: testbins/etcd-replay does not pin etcd $ETCD_VERSION: run testbins/gen-modules.sh etcd" >&2; exit 1; }
  build etcd-replay . etcdsnap-replay "$ETCD_VERSION" -ldflags "-s -w"
fi
wanted versitygw && build versitygw github.com/versity/versitygw/cmd/versitygw versitygw "$VERSITYGW_VERSION" -ldflags "-s -w"
wanted fake-gcs-server && build fake-gcs-server github.com/fsouza/fake-gcs-server fake-gcs-server "$FAKE_GCS_SERVER_VERSION" -ldflags "-s -w"

# Azurite, an npm package: installed with `npm ci` from testbins/azurite's lock file into
# target/testbins/azurite-<version>/, skipped when present like the Go servers.
install_azurite() {
  local dest="$out/azurite-$AZURITE_VERSION"
  if [ -x "$dest/node_modules/.bin/azurite-blob" ]; then
    echo "testbins: azurite $AZURITE_VERSION present ($dest)"
    return
  fi
  command -v npm >/dev/null 2>&1 || { echo "testbins: azurite needs Node.js and npm (Debian: nodejs npm)" >&2; exit 1; }
  echo "testbins: installing azurite $AZURITE_VERSION from npm ..."
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  cp "$here/azurite/package.json" "$here/azurite/package-lock.json" "$dest.tmp/"
  if ! (cd "$dest.tmp" && npm ci --omit=dev --no-audit --no-fund >/dev/null); then
    rm -rf "$dest.tmp"
    echo "testbins: FAILED to install azurite $AZURITE_VERSION (testbins/azurite)" >&2
    exit 1
  fi
  mv "$dest.tmp" "$dest"
  built=$((built + 1))
}
wanted azurite && install_azurite
wanted helm && build helm helm.sh/helm/v4/cmd/helm helm "$HELM_VERSION" \
  -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
wanted promtool && build prometheus github.com/prometheus/prometheus/cmd/promtool promtool "$PROMETHEUS_VERSION" \
  -ldflags "-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION#v}"

# Stable names for tools and scripts (bench/, make demo): symlinks to the pinned versions (the
# default etcd; tests find the other minors by version, see testenv::testbin_version), for
# those that are built.
link() {
  if [ -x "$out/$2" ]; then ln -sfn "$2" "$out/$1"; fi
}
link kube-apiserver "kube-apiserver-$KUBE_VERSION"
link kubectl "kubectl-$KUBE_VERSION"
link etcd "etcd-$ETCD_VERSION"
link etcdctl "etcdctl-$ETCD_VERSION"
link etcdutl "etcdutl-$ETCD_VERSION"
link etcdsnap-replay "etcdsnap-replay-$ETCD_VERSION"
link versitygw "versitygw-$VERSITYGW_VERSION"
link fake-gcs-server "fake-gcs-server-$FAKE_GCS_SERVER_VERSION"
link azurite-blob "azurite-$AZURITE_VERSION/node_modules/.bin/azurite-blob"
link helm "helm-$HELM_VERSION"
link promtool "promtool-$PROMETHEUS_VERSION"
echo "testbins: $built built, ${parts[*]:-all} present in $out"
