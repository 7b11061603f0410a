#!/usr/bin/env python3
"""The one-pass zstd + S3 save with and without sealing (age), in pairs: each pair runs both,
in alternating order, so drift in the machine hits both equally. Started by seal.sh, which
provides the servers and the recipient."""
import argparse
import json
import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import measure  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--endpoints", required=True)
p.add_argument("--etcdsnap", required=True)
p.add_argument("--recipient", required=True)
p.add_argument("--workdir", required=True)
p.add_argument("--runs", type=int, default=5)
p.add_argument("--label", required=True)
args = p.parse_args()

os.makedirs(args.workdir, exist_ok=True)
snap_dir = os.path.join(args.workdir, "etcdsnap")


def clean():
    shutil.rmtree(snap_dir, ignore_errors=True)


base = [args.etcdsnap, "save", "--data-dir", snap_dir, "--node-name", "bench", "--endpoints", args.endpoints,
        "--s3", "--compress", "zstd", "--no-kube", "--log-level", "warn"]
commands = {"clear": base, "sealed": base + ["--encrypt-to", args.recipient]}

runs = {"clear": [], "sealed": []}
ratios = {"wall": [], "cpu": []}
for i in range(args.runs):
    order = ["clear", "sealed"] if i % 2 == 0 else ["sealed", "clear"]
    pair = {}
    for label in order:
        clean()
        pair[label] = measure.run(commands[label])
        runs[label].append(pair[label])
    for k in ratios:
        ratios[k].append(pair["sealed"][k] / pair["clear"][k])
clean()

clear, sealed = measure.summary(runs["clear"]), measure.summary(runs["sealed"])
print(json.dumps({
    "label": args.label,
    "clear": clear,
    "sealed": sealed,
    "ratio_wall": statistics.median(ratios["wall"]),
    "ratio_cpu": statistics.median(ratios["cpu"]),
    "rss_delta_mib": sealed["max_rss_mib"] - clear["max_rss_mib"],
}))
