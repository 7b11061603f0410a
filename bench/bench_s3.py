#!/usr/bin/env python3
"""save + zstd + S3 upload in one pass (`etcdsnap save --s3 --compress zstd`) against plain
`etcdctl snapshot save`, and against the sequential way (etcdctl save, then `zstd -3`, then an
upload with etcdsnap's own S3 client). Started by s3.sh, which provides the servers."""
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
p.add_argument("--uploader", required=True)
p.add_argument("--workdir", required=True)
p.add_argument("--runs", type=int, default=5)
p.add_argument("--label", required=True)
args = p.parse_args()

os.makedirs(args.workdir, exist_ok=True)
ctl_out = os.path.join(args.workdir, "etcdctl.db")
snap_dir = os.path.join(args.workdir, "etcdsnap")
counter = {"n": 0}


def clean():
    shutil.rmtree(snap_dir, ignore_errors=True)
    for f in glob.glob(ctl_out + "*"):
        os.remove(f)
    counter["n"] += 1


plain = [args.etcdctl, "--endpoints", args.endpoints, "snapshot", "save", ctl_out]
one_pass = [args.etcdsnap, "save", "--data-dir", snap_dir, "--node-name", "bench", "--endpoints", args.endpoints,
            "--s3", "--compress", "zstd", "--log-level", "warn"]


def sequential():
    key = f"sequential-{args.label}-{counter['n']}.zst"
    script = (f"{args.etcdctl} --endpoints {args.endpoints} snapshot save {ctl_out} >/dev/null && "
              f"zstd -q -3 {ctl_out} -o {ctl_out}.zst && {args.uploader} {ctl_out}.zst {key}")
    return ["sh", "-c", script]


runs = {"plain": [], "one_pass": [], "sequential": []}
ratios_plain, ratios_seq = [], []
for i in range(args.runs):
    order = ["plain", "one_pass", "sequential"]
    if i % 2:
        order.reverse()
    pair = {}
    for label in order:
        clean()
        cmd = {"plain": plain, "one_pass": one_pass, "sequential": sequential()}[label]
        pair[label] = measure.run(cmd)
        runs[label].append(pair[label])
    ratios_plain.append(pair["one_pass"]["wall"] / pair["plain"]["wall"])
    ratios_seq.append(pair["one_pass"]["wall"] / pair["sequential"]["wall"])
clean()

print(json.dumps({
    "label": args.label,
    "plain": measure.summary(runs["plain"]),
    "one_pass": measure.summary(runs["one_pass"]),
    "sequential": measure.summary(runs["sequential"]),
    "ratio_vs_plain_wall": statistics.median(ratios_plain),
    "ratio_vs_sequential_wall": statistics.median(ratios_seq),
}))
