# Shared by the benchmark scripts (source it): the release build, and an etcd of a given size
# started on loopback by testenv-up with no API server and no S3.
# shellcheck shell=bash

# The release binaries the benchmarks measure, and the pinned servers.
bench_build() {
  cargo build --release --locked -q -p etcdsnap -p testenv --bins
  ./testbins/build.sh >/dev/null
}

# bench_etcd_up WORK MB [PROFILE]: starts etcd with a 16 GiB quota, fills it with MB megabytes
# (etcd-load profile PROFILE, default kube) and exports its ETCDSNAP_* variables. Sets $up (the
# launcher's pid) and an EXIT trap that stops it and removes WORK. BENCH_BIN is where testenv-up
# and etcd-load are (default ./target/release); BENCH_ETCD_ARGS adds etcd flags (etcd takes the
# last value of a flag, so `--unsafe-no-fsync=false` turns fsync back on).
bench_etcd_up() {
  local work=$1 size=$2 profile=${3:-kube} bin=${BENCH_BIN:-./target/release}
  local etcd_args=(--etcd-arg --quota-backend-bytes=17179869184) extra
  for extra in ${BENCH_ETCD_ARGS:-}; do etcd_args+=(--etcd-arg "$extra"); done
  TESTBINS_DIR=${TESTBINS_DIR:-target/testbins} "$bin/testenv-up" --env-file "$work/env" --no-kube --no-s3 \
    "${etcd_args[@]}" > "$work/up.log" 2>&1 &
  up=$!
  # shellcheck disable=SC2064 # expand now: the trap must remove this run's directory
  trap "kill $up 2>/dev/null; wait $up 2>/dev/null; rm -rf '$work'" EXIT
  local _
  for _ in $(seq 1 300); do
    grep -q '^ready' "$work/up.log" && break
    kill -0 "$up" 2>/dev/null || { cat "$work/up.log" >&2; return 1; }
    sleep 0.2
  done
  grep -q '^ready' "$work/up.log" || { echo "bench: etcd did not start in 60 s" >&2; cat "$work/up.log" >&2; return 1; }
  # shellcheck disable=SC1091
  . "$work/env"
  "$bin/etcd-load" --endpoints "$ETCDSNAP_ENDPOINTS" --target-bytes $((size * 1000 * 1000)) --profile "$profile"
}

# Stops the etcd of bench_etcd_up (before measuring what does not need it, so it does not compete).
bench_etcd_down() {
  kill "$up" 2>/dev/null || true
  wait "$up" 2>/dev/null || true
}

# Removes WORK and clears the trap of bench_etcd_up once a size is done.
bench_etcd_done() {
  bench_etcd_down
  rm -rf "$1"
  trap - EXIT
}
