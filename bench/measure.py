#!/usr/bin/env python3
"""Runs commands and measures them from the outside: wall time, user+sys CPU and peak RSS of
the process tree (wait4 rusage), so every tool is measured the same way.

Peak RSS is taken by GNU time (`/usr/bin/time`, Debian package `time`), which forks the command
from its own ~1 MiB process and reports the command's wait4 rusage. A command that Python
starts itself does not start from zero: Python spawns with vfork, the child runs in Python's
memory until exec, and Linux keeps the peak RSS of that memory as the child's starting
ru_maxrss, so every command would measure at least Python's own peak (about 14 MiB here,
even for /bin/true)."""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

GNU_TIME = "/usr/bin/time"


def run(cmd, env=None):
    """Runs cmd (list); returns dict(wall, user, sys, cpu, rss_mib) or raises on failure."""
    if not os.access(GNU_TIME, os.X_OK):
        raise RuntimeError(f"{GNU_TIME} (GNU time) is needed to measure peak RSS: apt-get install time")
    with tempfile.NamedTemporaryFile("r", prefix="measure-rss-") as rss_file:
        start = time.monotonic()
        proc = subprocess.Popen([GNU_TIME, "-q", "-f", "%M", "-o", rss_file.name, *cmd],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        # CPU is the whole tree's (GNU time's own share is a fork and an exec); wall is ours.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{err}")
        max_rss_kib = int(rss_file.read().split()[-1])
    return {
        "wall": wall,
        "user": usage.ru_utime,
        "sys": usage.ru_stime,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mib": max_rss_kib / 1024.0,
    }


def median(runs, key):
    return statistics.median(r[key] for r in runs)


def summary(runs):
    return {k: median(runs, k) for k in ("wall", "user", "sys", "cpu", "rss_mib")} | {
        "max_rss_mib": max(r["rss_mib"] for r in runs),
        "runs": len(runs),
    }


def paired(a, b, runs, before=None):
    """Alternates a and b (ABBA...) so drift in the machine hits both equally; `before` runs
    untimed before each measurement (cleanup). Returns (runs_a, runs_b, ratios)."""
    ra, rb, ratios = [], [], []
    for i in range(runs):
        order = [("a", a), ("b", b)] if i % 2 == 0 else [("b", b), ("a", a)]
        pair = {}
        for label, cmd in order:
            if before:
                before()
            pair[label] = run(cmd)
        ra.append(pair["a"])
        rb.append(pair["b"])
        ratios.append({k: pair["b"][k] / pair["a"][k] for k in ("wall", "cpu")})
    return ra, rb, ratios


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1:])))
