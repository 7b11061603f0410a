#!/usr/bin/env python3
"""Runs commands and measures them from the outside: wall time, user+sys CPU and peak RSS of
the process tree (os.wait4 rusage), so every tool is measured the same way."""
import json
import os
import statistics
import subprocess
import sys
import time


def run(cmd, env=None):
    """Runs cmd (list); returns dict(wall, user, sys, cpu, rss_mib) or raises on failure."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err}")
    return {
        "wall": wall,
        "user": usage.ru_utime,
        "sys": usage.ru_stime,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024.0,
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
