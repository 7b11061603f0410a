#!/usr/bin/env python3
"""`etcdsnap save` vs `etcdctl snapshot save` on one etcd (see save.sh, which starts it and
loads it). Prints a JSON result and a Markdown table."""
import argparse
import glob
import json
import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import measure  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--endpoints", required=True)
p.add_argument("--etcdctl", required=True)
p.add_argument("--etcdsnap", required=True)
p.add_argument("--workdir", required=True)
p.add_argument("--runs", type=int, default=5)
p.add_argument("--label", required=True)
p.add_argument("--compression-runs", type=int, default=3)
args = p.parse_args()

os.makedirs(args.workdir, exist_ok=True)
ctl_out = os.path.join(args.workdir, "etcdctl.db")
snap_dir = os.path.join(args.workdir, "etcdsnap")


def clean():
    shutil.rmtree(snap_dir, ignore_errors=True)
    for f in glob.glob(ctl_out + "*"):
        os.remove(f)


etcdctl = [args.etcdctl, "--endpoints", args.endpoints, "snapshot", "save", ctl_out]
def etcdsnap(compress):
    return [args.etcdsnap, "save", "--data-dir", snap_dir, "--node-name", "bench", "--endpoints", args.endpoints,
            "--no-kube", "--compress", compress, "--log-level", "warn"]

runs_ctl, runs_snap, ratios = measure.paired(etcdctl, etcdsnap("none"), args.runs, before=clean)
clean()
measure.run(etcdsnap("none"))
db_bytes = sum(os.path.getsize(f) for f in glob.glob(os.path.join(snap_dir, "snapshots", "*")))
clean()

compressed = {}
for c in ("zstd", "zip"):
    rs = []
    for _ in range(args.compression_runs):
        clean()
        rs.append(measure.run(etcdsnap(c)))
    size = sum(os.path.getsize(f) for f in glob.glob(os.path.join(snap_dir, "snapshots", "*")))
    compressed[c] = measure.summary(rs) | {"stored_bytes": size, "mb_per_s": db_bytes / 1e6 / measure.median(rs, "wall")}
clean()

result = {
    "label": args.label,
    "db_bytes": db_bytes,
    "etcdctl": measure.summary(runs_ctl),
    "etcdsnap": measure.summary(runs_snap),
    "ratio_wall_median": statistics.median(r["wall"] for r in ratios),
    "ratio_cpu_median": statistics.median(r["cpu"] for r in ratios),
    "compressed": compressed,
}
print(json.dumps(result))
