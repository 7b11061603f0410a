#!/usr/bin/env python3
"""`etcdsnap restore` vs `etcdutl snapshot restore` of the same snapshot file (see restore.sh,
which makes the snapshots). Prints a JSON result; with --report FILES, the Markdown tables."""
import argparse
import json
import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import measure  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--report", nargs="+")
p.add_argument("--etcdutl")
p.add_argument("--etcdsnap")
p.add_argument("--plain")
p.add_argument("--zstd")
p.add_argument("--zip")
p.add_argument("--workdir")
p.add_argument("--runs", type=int, default=7)
p.add_argument("--label")
args = p.parse_args()


def report(files):
    rows = sorted((json.load(open(f)) for f in files), key=lambda r: r["db_bytes"])
    print("| DB | command | wall s | CPU s (user+sys) | peak RSS MiB | wall ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        mb = r["db_bytes"] / 1e6
        u, s = r["etcdutl"], r["etcdsnap"]
        print(f"| {mb:.0f} MB | etcdutl snapshot restore | {u['wall']:.2f} | {u['cpu']:.2f} ({u['user']:.2f}+{u['sys']:.2f}) | {u['max_rss_mib']:.0f} | |")
        print(f"| {mb:.0f} MB | etcdsnap restore (plain file) | {s['wall']:.2f} | {s['cpu']:.2f} ({s['user']:.2f}+{s['sys']:.2f}) | {s['max_rss_mib']:.0f} | {r['ratio_wall_median']:.2f}x |")
        for name, c in r["other"].items():
            print(f"| {mb:.0f} MB | {name} | {c['wall']:.2f} | {c['cpu']:.2f} ({c['user']:.2f}+{c['sys']:.2f}) | {c['max_rss_mib']:.0f} | {c['wall'] / u['wall']:.2f}x |")


if args.report:
    report(args.report)
    sys.exit(0)

os.makedirs(args.workdir, exist_ok=True)
a_dir = os.path.join(args.workdir, "a")
b_dir = os.path.join(args.workdir, "b")
cluster = ["--initial-cluster", "m0=http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380"]
# etcdsnap calls the member's name --member-name (its --name is K3s's snapshot name).
member = ["--member-name", "m0", *cluster]
etcdutl_member = ["--name", "m0", *cluster]


def clean():
    for entry in os.listdir(args.workdir):
        shutil.rmtree(os.path.join(args.workdir, entry), ignore_errors=True)
    os.sync()


def etcdsnap(snapshot, *extra):
    return [args.etcdsnap, "restore", snapshot, "--data-dir", b_dir, "--etcdutl", args.etcdutl,
            "--token", "bench-token", "--log-level", "warn", *member, *extra]


etcdutl = [args.etcdutl, "snapshot", "restore", args.plain, "--data-dir", a_dir, *etcdutl_member]
clean()
measure.run(etcdutl)  # warm the page cache with the snapshot file
measure.run(etcdsnap(args.plain))
clean()
runs_u, runs_s, ratios = measure.paired(etcdutl, etcdsnap(args.plain), args.runs, before=clean)

other = {}
for name, cmd in [
    ("etcdsnap restore --dry-run (checks only, plain)", etcdsnap(args.plain, "--dry-run")),
    # What restoring would cost if etcdutl only started after the checks (no overlap).
    ("checks, then etcdutl (sequential)", ["sh", "-c", " ".join(
        [*(f"'{a}'" for a in etcdsnap(args.plain, "--dry-run")), ">/dev/null", "&&",
         *(f"'{a}'" for a in etcdutl)])]),
    ("etcdsnap restore (zstd file)", etcdsnap(args.zstd)),
    ("etcdsnap restore (zip file)", etcdsnap(args.zip)),
]:
    rs = []
    for _ in range(max(3, args.runs // 2)):
        clean()
        rs.append(measure.run(cmd))
    other[name] = measure.summary(rs)
clean()

print(json.dumps({
    "label": args.label,
    "db_bytes": os.path.getsize(args.plain),
    "zstd_bytes": os.path.getsize(args.zstd),
    "zip_bytes": os.path.getsize(args.zip),
    "etcdutl": measure.summary(runs_u),
    "etcdsnap": measure.summary(runs_s),
    "ratio_wall_median": statistics.median(r["wall"] for r in ratios),
    "ratio_cpu_median": statistics.median(r["cpu"] for r in ratios),
    "other": other,
}))
