#!/usr/bin/env python3
"""Turns bench/out/*.json into the Markdown tables of bench/RESULTS.md."""
import json
import sys


def db(r):
    """The DB column: size, and the data profile when it is not the default (label 400MB-random-values)."""
    profile = r["label"].partition("MB")[2].lstrip("-")
    return f"{r['db_bytes'] / 1e6:.0f} MB" + (f" {profile}" if profile else "")


rows = [json.load(open(f)) for f in sys.argv[1:]]
rows.sort(key=lambda r: r["db_bytes"])
print("| DB | tool | wall s | CPU s (user+sys) | peak RSS MiB | wall ratio | CPU ratio |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    c, s = r["etcdctl"], r["etcdsnap"]
    print(f"| {db(r)} | etcdctl snapshot save | {c['wall']:.2f} | {c['cpu']:.2f} ({c['user']:.2f}+{c['sys']:.2f}) | {c['max_rss_mib']:.1f} | | |")
    print(f"| {db(r)} | etcdsnap save | {s['wall']:.2f} | {s['cpu']:.2f} ({s['user']:.2f}+{s['sys']:.2f}) | {s['max_rss_mib']:.1f} | {r['ratio_wall_median']:.2f}x | {r['ratio_cpu_median']:.2f}x |")
print()
print("| DB | compression | wall s | throughput MB/s (of DB) | stored MB | ratio | CPU s | peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    for name, c in r["compressed"].items():
        print(f"| {db(r)} | {name} | {c['wall']:.2f} | {c['mb_per_s']:.0f} | {c['stored_bytes']/1e6:.0f} | {c['stored_bytes']/r['db_bytes']:.2f} | {c['cpu']:.2f} | {c['max_rss_mib']:.1f} |")
