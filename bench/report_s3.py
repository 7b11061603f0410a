#!/usr/bin/env python3
"""Markdown tables for bench/RESULTS.md from s3.sh's output."""
import json
import sys

saves, listings = [], []
for f in sys.argv[1:]:
    for line in open(f):
        line = line.strip()
        if line:
            (listings if '"items"' in line else saves).append(json.loads(line))
print("| DB | way | wall s | CPU s | peak RSS MiB | one pass vs this |")
print("|---|---|---|---|---|---|")
for r in saves:
    for key, name, ratio in [("plain", "etcdctl snapshot save (local, uncompressed)", r["ratio_vs_plain_wall"]),
                             ("sequential", "etcdctl save, then zstd -3, then upload", r["ratio_vs_sequential_wall"]),
                             ("one_pass", "etcdsnap save --s3 --compress zstd (local + S3)", None)]:
        s = r[key]
        rt = f"{ratio:.2f}x" if ratio else ""
        print(f"| {r['label']} | {name} | {s['wall']:.2f} | {s['cpu']:.2f} | {s['max_rss_mib']:.1f} | {rt} |")
print()
print("| listing of 10,000 objects | seconds | requests | by operation |")
print("|---|---|---|---|")
for l in listings:
    ops = ", ".join(f"{k.replace('s3_', '')} {v}" for k, v in l.items() if k.startswith("s3_"))
    print(f"| {l['label']} ({l['items']} listed) | {l['seconds']:.2f} | {l['requests']} | {ops} |")
