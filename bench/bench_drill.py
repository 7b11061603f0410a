#!/usr/bin/env python3
"""Restore drills' costs (see drill.sh). --phase save: paired `etcdsnap save` with and without
--record-hashkv on a live etcd, leaving one plain snapshot in <workdir>/store. --phase drill:
`etcdsnap drill` (hash and boot level) and `etcdutl snapshot restore` of that snapshot.
--report FILES: the Markdown table."""
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
p.add_argument("--phase", choices=["save", "drill"])
p.add_argument("--report", nargs="+")
p.add_argument("--etcdsnap")
p.add_argument("--etcdutl")
p.add_argument("--etcd")
p.add_argument("--endpoints")
p.add_argument("--workdir")
p.add_argument("--runs", type=int, default=3)
p.add_argument("--label")
p.add_argument("--save-result")
args = p.parse_args()


def report(files):
    print("| DB | command | wall s | CPU s (user+sys) | peak RSS MiB | ratio |")
    print("|---|---|---|---|---|---|")
    for f in files:
        r = json.load(open(f))
        mb = r["db_bytes"] / 1e6
        s = r["save"]
        print(f"| {mb:.0f} MB | etcdsnap save --record-hashkv=false | {s['without']['wall']:.2f} | {s['without']['cpu']:.2f} | {s['without']['max_rss_mib']:.1f} | |")
        print(f"| {mb:.0f} MB | etcdsnap save (records HashKV) | {s['with']['wall']:.2f} | {s['with']['cpu']:.2f} | {s['with']['max_rss_mib']:.1f} | {s['ratio_wall_median']:.2f}x of the save |")
        u = r["etcdutl_restore"]
        print(f"| {mb:.0f} MB | etcdutl snapshot restore | {u['wall']:.2f} | {u['cpu']:.2f} | {u['max_rss_mib']:.0f} | |")
        for level in ("hash", "boot"):
            d = r[f"drill_{level}"]
            print(f"| {mb:.0f} MB | etcdsnap drill ({level} level) | {d['wall']:.2f} | {d['cpu']:.2f} | {d['max_rss_mib']:.0f} | {d['wall'] / u['wall']:.2f}x of etcdutl restore |")


if args.report:
    report(args.report)
    sys.exit(0)

store = os.path.join(args.workdir, "store")


def clean(path):
    def run():
        shutil.rmtree(path, ignore_errors=True)
        os.sync()
    return run


if args.phase == "save":
    def save(*extra):
        return [args.etcdsnap, "save", "--data-dir", os.path.join(args.workdir, "scratch-save"), "--node-name", "bench",
                "--endpoints", args.endpoints, "--no-kube", "--log-level", "warn", *extra]
    without, with_, ratios = measure.paired(save("--record-hashkv=false"), save(), args.runs,
                                            before=clean(os.path.join(args.workdir, "scratch-save")))
    clean(os.path.join(args.workdir, "scratch-save"))()
    measure.run([args.etcdsnap, "save", "--data-dir", store, "--node-name", "bench", "--endpoints", args.endpoints,
                 "--no-kube", "--log-level", "warn"])
    print(json.dumps({"without": measure.summary(without), "with": measure.summary(with_),
                      "ratio_wall_median": statistics.median(r["wall"] for r in ratios)}))
    sys.exit(0)

snapshot = [f for f in glob.glob(os.path.join(store, "snapshots", "on-demand-bench-*"))][0]
scratch = os.path.join(args.workdir, "scratch")
os.makedirs(scratch, exist_ok=True)
restore_dir = os.path.join(args.workdir, "restored")
etcdutl = [args.etcdutl, "snapshot", "restore", snapshot, "--data-dir", restore_dir, "--name", "m0",
           "--initial-cluster", "m0=http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380"]
drill = [args.etcdsnap, "drill", "--data-dir", store, "--node-name", "bench", "--no-kube", "--log-level", "warn",
         "--etcdutl", args.etcdutl, "--drill-dir", scratch]
results = {}
for name, cmd, cleanup in [("etcdutl_restore", etcdutl, clean(restore_dir)),
                           ("drill_hash", drill, None),
                           ("drill_boot", drill + ["--drill-etcd", args.etcd], None)]:
    runs = []
    for _ in range(args.runs):
        if cleanup:
            cleanup()
        os.sync()
        runs.append(measure.run(cmd))
    results[name] = measure.summary(runs)
clean(restore_dir)()
print(json.dumps({"label": args.label, "db_bytes": os.path.getsize(snapshot),
                  "save": json.load(open(args.save_result)), **results}))
