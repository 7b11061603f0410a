#!/usr/bin/env bash
# Builds etcdsnap's container image with no container daemon and no registry: a root file system
# of a few Debian packages (the C library the binary links, CA certificates) plus etcdsnap and
# etcdutl and etcdsnap-replay (the point-in-time replay's direct engine), packed by crates/oci-image
# into an OCI archive (`oci-archive:` for skopeo and podman).
#
#   ETCDSNAP_BIN   etcdsnap binary to ship        (default target/release/etcdsnap: `make image`)
#   ETCDUTL_BIN    etcdutl binary to ship         (default target/testbins/etcdutl-$IMAGE_ETCDUTL_VERSION
#                  from testbins/versions.env: `make testbins`)
#   REPLAY_BIN     etcdsnap-replay binary to ship (default target/testbins/etcdsnap-replay-$ETCD_VERSION:
#                  `make testbins`)
#   OCI_IMAGE_BIN  the packer                     (default: cargo build -p oci-image --locked)
#   IMAGE_WORK     work directory: debs/ cache, rootfs/ (default target/image)
#   IMAGE_OUT      the archive                    (default $IMAGE_WORK/etcdsnap-<version>.oci.tar)
#   IMAGE_EXTRA_PACKAGES  more Debian packages for the root file system, e.g. "tzdata"
#   SOURCE_DATE_EPOCH     every mtime and the created time (default: the HEAD commit's time, else 0)
#
# Root is not needed. The same inputs and SOURCE_DATE_EPOCH give the same image digest.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

fail() { echo "build-image: $*" >&2; exit 1; }
say() { echo "build-image: $*" >&2; }
abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$repo/$1" ;; esac; }

target_dir=$(abspath "${CARGO_TARGET_DIR:-target}")
work=$(abspath "${IMAGE_WORK:-$target_dir/image}")
etcdsnap_bin=$(abspath "${ETCDSNAP_BIN:-$target_dir/release/etcdsnap}")
# shellcheck source=../testbins/versions.env
source testbins/versions.env
etcdutl_bin=$(abspath "${ETCDUTL_BIN:-${TESTBINS_DIR:-$target_dir/testbins}/etcdutl-$IMAGE_ETCDUTL_VERSION}")

[ -x "$etcdsnap_bin" ] || fail "no etcdsnap binary at $etcdsnap_bin: run \`make build\` (or set ETCDSNAP_BIN)"
[ -x "$etcdutl_bin" ] || fail "no etcdutl binary at $etcdutl_bin: run \`make testbins\` (or set ETCDUTL_BIN)"
replay_bin=$(abspath "${REPLAY_BIN:-${TESTBINS_DIR:-$target_dir/testbins}/etcdsnap-replay-$ETCD_VERSION}")
[ -x "$replay_bin" ] || fail "no etcdsnap-replay binary at $replay_bin: run \`make testbins\` (or set REPLAY_BIN)"
for tool in apt-get dpkg-deb ldd; do
  command -v "$tool" >/dev/null || fail "$tool is required (a Debian or Ubuntu machine)"
done

version=$("$etcdsnap_bin" --version 2>/dev/null | awk '$1 == "etcdsnap" { print $2; exit }') || true
if [ -z "$version" ]; then
  version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
fi
[ -n "$version" ] || fail "cannot tell etcdsnap's version from \`$etcdsnap_bin --version\` or Cargo.toml"
# safe.directory: a checkout owned by another user (CI as root, a container build) still counts.
revision=$(git -c safe.directory="$repo" rev-parse HEAD 2>/dev/null || echo unknown)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -c safe.directory="$repo" log -1 --format=%ct 2>/dev/null || echo 0)}
out=$(abspath "${IMAGE_OUT:-$work/etcdsnap-$version.oci.tar}")

# --- Debian packages, downloaded once into debs/ (apt-get download needs no root) -------------
packages=(libc6 libgcc-s1 ca-certificates)
read -r -a extra <<<"${IMAGE_EXTRA_PACKAGES:-}"
packages+=("${extra[@]}")
debs=$work/debs
mkdir -p "$debs"
# As root, apt would drop to its _apt user, which cannot write to the cache: no sandbox then.
apt_opts=(-q)
[ "$(id -u)" -ne 0 ] || apt_opts+=(-o APT::Sandbox::User=root)
missing=()
for pkg in "${packages[@]}"; do
  compgen -G "$debs/${pkg}_*.deb" >/dev/null || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "apt-get download ${missing[*]}"
  if ! (cd "$debs" && apt-get download "${apt_opts[@]}" "${missing[@]}" >/dev/null); then
    say "download failed; apt-get update, then again"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    (cd "$debs" && apt-get download "${apt_opts[@]}" "${missing[@]}" >/dev/null) || fail "apt-get download ${missing[*]} failed"
  fi
fi

# --- The root file system -------------------------------------------------------------------
rootfs=$work/rootfs
rm -rf "$rootfs"
mkdir -p "$rootfs"
mkdir -p "$rootfs/var/lib/dpkg/status.d"
for pkg in "${packages[@]}"; do
  # The newest cached .deb of the package (several remain after an upgrade).
  deb=$(printf '%s\n' "$debs/${pkg}"_*.deb | sort -V | tail -n1)
  dpkg-deb -x "$deb" "$rootfs"
  # What scanners (trivy, grype) read to know the packages of a distroless-style image.
  dpkg-deb -f "$deb" >"$rootfs/var/lib/dpkg/status.d/$pkg"
  say "  $(basename "$deb")"
done

# ca-certificates' postinst would build the bundle; dpkg-deb -x runs no scripts, so build it here
# the way update-ca-certificates does: every certificate, in name order, newline-terminated.
mkdir -p "$rootfs/etc/ssl/certs"
find "$rootfs/usr/share/ca-certificates" -name '*.crt' -type f -print0 | LC_ALL=C sort -z |
  xargs -0 -r sed -e '$a\' >"$rootfs/etc/ssl/certs/ca-certificates.crt"
[ -s "$rootfs/etc/ssl/certs/ca-certificates.crt" ] || fail "the CA bundle came out empty"

install -d -m 0755 "$rootfs/etc" "$rootfs/usr/local/bin" "$rootfs/var/lib/etcdsnap" "$rootfs/home/nonroot"
install -d -m 1777 "$rootfs/tmp"
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
cat >"$rootfs/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
EOF
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf"
install -m 0755 "$etcdsnap_bin" "$rootfs/usr/local/bin/etcdsnap"
install -m 0755 "$etcdutl_bin" "$rootfs/usr/local/bin/etcdutl"
install -m 0755 "$replay_bin" "$rootfs/usr/local/bin/etcdsnap-replay"

# --- Every shared library the binaries load must be in the root file system -----------------
# `path` exists inside the root file system, following symbolic links as the container would.
exists_in_rootfs() {
  local p=$1 i target
  for i in $(seq 40); do
    if [ -L "$rootfs$p" ]; then
      target=$(readlink "$rootfs$p")
      case $target in /*) p=$target ;; *) p=$(dirname "$p")/$target ;; esac
    else
      [ -e "$rootfs$p" ]
      return
    fi
  done
  return 1
}
lib_dirs=(/lib /usr/lib /lib64 /usr/lib64)
for d in "$rootfs"/lib/*-linux-gnu* "$rootfs"/usr/lib/*-linux-gnu*; do
  [ -d "$d" ] && lib_dirs+=("${d#"$rootfs"}")
done
for bin in "$rootfs/usr/local/bin/etcdsnap" "$rootfs/usr/local/bin/etcdutl" "$rootfs/usr/local/bin/etcdsnap-replay"; do
  if ! deps=$(ldd "$bin" 2>&1); then
    case $deps in
      *"not a dynamic executable"* | *"statically linked"*) continue ;;
      *) fail "ldd $bin: $deps" ;;
    esac
  fi
  while read -r name arrow path _; do
    if [ "$arrow" = "=>" ]; then
      [ "$path" != "not" ] || fail "$(basename "$bin") needs $name, which this machine does not have either"
      found=""
      for d in "${lib_dirs[@]}"; do
        if exists_in_rootfs "$d/$name"; then found=$d/$name; break; fi
      done
      [ -n "$found" ] || fail "$(basename "$bin") needs $name, which no package in the image has (add its package to IMAGE_EXTRA_PACKAGES)"
    elif [[ $name == /* ]]; then
      exists_in_rootfs "$name" || fail "$(basename "$bin")'s dynamic loader $name is not in the image"
    fi
  done <<<"$deps"
done

# --- Smoke test where a chroot is possible (root, or an unprivileged user namespace) --------
chroot_cmd=()
if [ "$(id -u)" -eq 0 ]; then
  chroot_cmd=(chroot --userspec=65532:65532)
elif unshare -r true 2>/dev/null; then
  chroot_cmd=(unshare -r chroot)
fi
if [ ${#chroot_cmd[@]} -gt 0 ] && command -v chroot >/dev/null; then
  "${chroot_cmd[@]}" "$rootfs" /usr/local/bin/etcdsnap --version >/dev/null ||
    fail "etcdsnap does not start inside the image's root file system"
else
  say "no chroot possible here: skipped running etcdsnap inside the root file system"
fi

# --- Pack -----------------------------------------------------------------------------------
oci_image=${OCI_IMAGE_BIN:-}
if [ -z "$oci_image" ]; then
  cargo build -q -p oci-image --locked
  oci_image=$target_dir/debug/oci-image
fi
mkdir -p "$(dirname "$out")"
"$oci_image" --rootfs "$rootfs" --output "$out" --image-version "$version" --revision "$revision" \
  --ref-name "etcdsnap:$version" \
  --owner /var/lib/etcdsnap=65532:65532 --owner /home/nonroot=65532:65532 --mode /tmp=1777 >&2

echo "image: $out (etcdsnap:$version); load it with \`skopeo copy oci-archive:$out docker-daemon:etcdsnap:$version\` or \`podman load -i $out\`"
