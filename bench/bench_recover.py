#!/usr/bin/env python3
"""`etcdsnap recover` against `etcdsnap restore --to-revision <the capture's last>` on the same
capture (recover.sh).

Each run restores into an empty directory beside the capture; the pairs alternate (ABBA), and the
served revision of each kind's first result is read back by booting etcd on it."""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import measure  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--etcdsnap")
p.add_argument("--etcd")
p.add_argument("--etcdutl")
p.add_argument("--store")
p.add_argument("--capture", help="capture.json of pitr.sh: chain_last_revision")
p.add_argument("--runs", type=int, default=3)
p.add_argument("--report")
args = p.parse_args()


def served_revision(data_dir):
    """Boots etcd on data_dir (member m0 on the restore's peer URL) and reads its revision."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    etcd = subprocess.Popen([args.etcd, "--name", "m0", "--data-dir", data_dir, "--listen-client-urls", url,
                             "--advertise-client-urls", url, "--listen-peer-urls", "http://127.0.0.1:2380",
                             "--log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        etcdctl = os.path.join(os.path.dirname(args.etcd), os.path.basename(args.etcd).replace("etcd", "etcdctl", 1))
        for _ in range(100):
            out = subprocess.run([etcdctl, "--endpoints", url, "endpoint", "status", "-w", "json"],
                                 capture_output=True, text=True)
            if out.returncode == 0:
                return json.loads(out.stdout)[0]["Status"]["header"]["revision"]
            time.sleep(0.2)
        raise RuntimeError(f"etcd on {data_dir} did not answer")
    finally:
        etcd.terminate()
        etcd.wait()


def bench():
    out_root = os.path.join(os.path.dirname(os.path.abspath(args.store)), "recover-out")
    target = os.path.join(out_root, "member")
    member = ["--member-name", "m0", "--initial-advertise-peer-urls", "http://127.0.0.1:2380"]
    common = ["--dir", os.path.join(args.store, "snapshots"), "--data-dir", target, "--etcdutl", args.etcdutl,
              "--etcd", args.etcd, *member]
    cap = json.load(open(args.capture))
    last = cap["chain_last_revision"]
    base = os.path.join(args.store, "snapshots", cap["base_snapshot"])
    etcdutl_member = ["--name", "m0", "--initial-cluster", "m0=http://127.0.0.1:2380",
                      "--initial-advertise-peer-urls", "http://127.0.0.1:2380"]
    kinds = [("etcdutl snapshot restore of the base alone",
              [args.etcdutl, "snapshot", "restore", base, "--data-dir", target, *etcdutl_member]),("restore --to-revision last", [args.etcdsnap, "restore", "--to-revision", str(last), *common]),
             ("recover", [args.etcdsnap, "recover", *common])]

    def clean():
        shutil.rmtree(out_root, ignore_errors=True)
        os.makedirs(out_root)
        os.sync()

    runs = {name: [] for name, _ in kinds}
    served = {}
    for i in range(args.runs):
        for name, cmd in (kinds if i % 2 == 0 else kinds[::-1]):
            clean()
            print(f"bench_recover: run {i + 1}/{args.runs}: {name}", file=sys.stderr, flush=True)
            runs[name].append(measure.run(cmd))
            if name not in served:
                served[name] = served_revision(target)
    clean()
    rolled = {n: r for n, r in served.items() if not n.startswith("etcdutl")}
    if len(set(rolled.values())) != 1 or last not in rolled.values():
        raise RuntimeError(f"the rolled-forward kinds serve {served}, not {last}")
    print(json.dumps({"served_revision": served, "runs": runs,
                      "summary": {n: measure.summary(r) for n, r in runs.items()}}))


def report():
    r = json.load(open(args.report))
    print("| command | served revision | wall s (median) | CPU s | peak RSS MiB | vs restore |")
    print("|---|---|---|---|---|---|")
    base = r["summary"]["restore --to-revision last"]["wall"]
    # Ratios are of the medians; the etcdutl row is the base snapshot alone, for scale.
    for name, s in r["summary"].items():
        print(f"| {name} | {r['served_revision'][name]} | {s['wall']:.2f} | {s['cpu']:.2f} | {s['rss_mib']:.1f} "
              f"| {s['wall'] / base:.2f}x |")


if args.report:
    report()
else:
    bench()
