#!/usr/bin/env python3
"""Point-in-time recovery's costs (see pitr.sh).

--phase capture: a steady load (etcd-load --rate) twice on the same etcd, first beside an agent
without --deltas (the reference), then beside `etcdsnap agent --deltas` with its defaults. Every
second it samples the recovery point (the age of the newest durable change, from the records on
disk, and the agent's etcdsnap_delta_lag_seconds), the agent's RSS, and at the ends of the load
window the CPU of the agent and of etcd (/proc/<pid>/stat). Then, the capture still running, it
writes until the chain holds 100,000 revisions past its base, waits for them to be durable and
stops the agent (SIGTERM).

--phase restore: `etcdsnap restore --to-revision` to base + 10,000 and base + 100,000 beside the
plain restore of the base snapshot, in alternating order, output removed and synced untimed
between runs; the revision of each restored data dir is checked by booting etcd on it.

--report FILE: the Markdown tables."""
import argparse
import glob
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import measure  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--phase", choices=["capture", "restore"])
p.add_argument("--report")
p.add_argument("--etcdsnap")
p.add_argument("--etcd-load")
p.add_argument("--etcd")
p.add_argument("--etcdutl")
p.add_argument("--endpoints")
p.add_argument("--etcd-dir", help="TESTENV_ETCD_DIR: finds etcd's pid")
p.add_argument("--workdir")
p.add_argument("--rate", type=float, default=500)
p.add_argument("--duration", type=float, default=180)
p.add_argument("--past-base", type=int, nargs="+", default=[10_000, 100_000])
p.add_argument("--runs", type=int, default=3)
p.add_argument("--capture-result")
args = p.parse_args()

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg):
    print(f"bench_pitr: {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def pct(values, q):
    """Nearest-rank percentile (q in 0..100)."""
    v = sorted(values)
    if not v:
        return None
    return v[min(len(v) - 1, max(0, int(round(q / 100 * len(v) + 0.5)) - 1))]


def cpu_seconds(pid):
    """user+sys of a live process (its own threads; it waits for no children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def etcd_pid(etcd_dir):
    """The etcd serving the data dir under etcd_dir (testenv-up's member m0)."""
    want = f"--data-dir={os.path.join(etcd_dir, 'm0')}".encode()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if want in argv:
            return int(d)
    raise RuntimeError(f"no etcd with {want.decode()}")


def machine_idle():
    """Idle (+iowait) seconds of all CPUs, from /proc/stat. Only idle is precise on a tickless
    kernel: user and system time there are sampled at ticks and miss most of short bursts
    such as etcd's, so busy time is the elapsed time of all CPUs minus this."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[3] + v[4]) / CLK_TCK


def compilers():
    """How many compiler processes (another build on the machine) run now."""
    n = 0
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/comm") as f:
                n += f.read().strip() in ("rustc", "cc1", "cc1plus", "ld", "go", "compile", "link")
        except OSError:
            continue
    return n


class Machine:
    """What else the machine did meanwhile: the share of all its CPUs that was busy, the
    processes (etcd, agent, load, ...) included, and how often a compiler was running."""

    def __init__(self):
        self.idle0, self.t0 = machine_idle(), time.monotonic()
        self.samples, self.with_compiler = 0, 0

    def sample(self):
        self.samples += 1
        self.with_compiler += compilers() > 0

    def result(self):
        idle, elapsed = machine_idle() - self.idle0, time.monotonic() - self.t0
        return {"busy_cores": os.cpu_count() - idle / elapsed,
                "compiler_seen_share": self.with_compiler / self.samples if self.samples else None,
                "loadavg": open("/proc/loadavg").read().split()[:3]}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def metric(body, name):
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


class Records:
    """The durable delta records under <data>/.etcdsnap-deltas/*/ (a segment is durable once
    its record exists), read once each."""

    def __init__(self, data_dir):
        self.root = os.path.join(data_dir, ".etcdsnap-deltas")
        self.seen = {}

    def scan(self):
        for path in glob.glob(os.path.join(self.root, "*", "*.json")):
            if path in self.seen:
                continue
            try:
                with open(path) as f:
                    self.seen[path] = json.load(f)
            except (OSError, ValueError):
                continue  # written atomically, so only a race with a rename; next scan
        return list(self.seen.values())

    def newest(self):
        recs = self.scan()
        return max(recs, key=lambda r: r["lastRevision"]) if recs else None


class Agent:
    def __init__(self, data_dir, deltas):
        self.data_dir = data_dir
        self.metrics = f"127.0.0.1:{free_port()}"
        os.makedirs(data_dir, exist_ok=True)
        self.log_path = os.path.join(args.workdir, f"agent-{'deltas' if deltas else 'plain'}.log")
        cmd = [args.etcdsnap, "agent", "--endpoints", args.endpoints, "--data-dir", data_dir, "--node-name", "bench",
               "--no-kube", "--metrics-addr", self.metrics, "--log-level", "info"]
        if deltas:
            cmd.append("--deltas")
        log("starting " + " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT)
        self.wait(lambda: self.get("/healthz")[0] == 200, 30, "/healthz")

    def get(self, path):
        try:
            return http_get(f"http://{self.metrics}{path}")
        except OSError:
            return 0, ""

    def metric(self, name):
        code, body = self.get("/metrics")
        return metric(body, name) if code == 200 else None

    def wait(self, ok, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited ({self.proc.returncode}) waiting for {what}:\n{self.log()}")
            if ok():
                return
            time.sleep(0.2)
        raise RuntimeError(f"agent: no {what} in {timeout} s:\n{self.log()}")

    def log(self):
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        if code != 0:
            raise RuntimeError(f"agent exited {code} on SIGTERM:\n{self.log()}")


def load(extra, samples=None):
    """Runs etcd-load in the steady mode; `samples()` is called every second meanwhile. Returns
    its JSON summary."""
    cmd = [args.etcd_load, "--endpoints", args.endpoints, "--rate", str(args.rate), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    next_tick = time.monotonic() + 1
    while proc.poll() is None:
        time.sleep(max(0.0, next_tick - time.monotonic()))
        next_tick += 1
        if samples and proc.poll() is None:
            samples()
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.decode()}")
    return json.loads(out.decode().strip().splitlines()[-1])


def window(agent, etcd, rec=None):
    """One load window: the load of --duration seconds beside `agent`."""
    lags, metric_lags, rss = [], [], []
    agent_pid = agent.proc.pid
    c_agent, c_etcd = cpu_seconds(agent_pid), cpu_seconds(etcd)
    start_ms = time.time() * 1000
    t0 = time.monotonic()
    machine = Machine()

    def sample():
        machine.sample()
        rss.append(status_kib(agent_pid, "VmRSS"))
        if rec is None:
            return
        newest = rec.newest()
        # What a loss now would cost: the changes after the newest durable one; before the
        # first segment is durable, those after the load began (the base holds the rest).
        durable_ms = max(start_ms, newest["lastObservedMs"] if newest else 0)
        lags.append((time.time() * 1000 - durable_ms) / 1000)
        m = agent.metric("etcdsnap_delta_lag_seconds")
        if m is not None:
            metric_lags.append(m)

    summary = load(["--duration-secs", str(args.duration)], sample)
    seconds = time.monotonic() - t0
    out = {
        "load": summary,
        "seconds": seconds,
        "agent_cpu_s": cpu_seconds(agent_pid) - c_agent,
        "etcd_cpu_s": cpu_seconds(etcd) - c_etcd,
        "agent_rss_max_mib": max(rss) / 1024 if rss else None,
        "agent_hwm_mib": status_kib(agent_pid, "VmHWM") / 1024,
        "machine": machine.result(),
    }
    out["agent_cpu_per_s"] = out["agent_cpu_s"] / seconds
    out["etcd_cpu_per_s"] = out["etcd_cpu_s"] / seconds
    if rec is not None:
        out["lag_samples"] = lags
        out["metric_lag_samples"] = metric_lags
        for name, xs in (("lag", lags), ("metric_lag", metric_lags)):
            if xs:
                out[f"{name}_p50"] = pct(xs, 50)
                out[f"{name}_p99"] = pct(xs, 99)
                out[f"{name}_max"] = max(xs)
    return out


def capture():
    etcd = etcd_pid(args.etcd_dir)
    result = {"rate": args.rate, "duration": args.duration, "etcd_pid": etcd}

    # Reference: the same load beside an agent that does not capture.
    agent = Agent(os.path.join(args.workdir, "plain"), deltas=False)
    time.sleep(2)
    log(f"load without --deltas: {args.rate:.0f} writes/s for {args.duration:.0f} s")
    result["without"] = window(agent, etcd)
    agent.stop()

    data = os.path.join(args.workdir, "store")
    rec = Records(data)
    agent = Agent(data, deltas=True)
    # --deltas with no local snapshot takes one at once and starts the chain from it.
    agent.wait(lambda: glob.glob(os.path.join(data, "snapshots", "*")) and agent.metric("etcdsnap_delta_capturing") == 1,
               300, "base snapshot and capture")
    time.sleep(3)
    log(f"load with --deltas: {args.rate:.0f} writes/s for {args.duration:.0f} s")
    w = window(agent, etcd, rec)
    result["with"] = w
    # The segment open at the end of the load, then the stored bytes of everything captured.
    end_rev = w["load"]["end_revision"]
    agent.wait(lambda: (rec.newest() or {}).get("lastRevision", 0) >= end_rev, 60, f"revision {end_rev} durable")
    recs = rec.scan()
    base = min(r["baseRevision"] for r in recs)
    result["base_revision"] = base
    result["capture_records"] = len(recs)
    result["stored_bytes"] = sum(r["storedBytes"] for r in recs)
    result["events"] = sum(r["events"] for r in recs)
    result["revisions"] = sum(r["revisions"] for r in recs)
    result["bytes_per_event"] = result["stored_bytes"] / result["events"]
    result["metric_bytes_total"] = agent.metric("etcdsnap_delta_bytes_total")
    result["metric_events_total"] = agent.metric("etcdsnap_delta_events_total")

    # Restore targets: the chain must reach base + the largest distance, capture still running.
    need = base + max(args.past_base) + 100
    if end_rev < need:
        log(f"writing {need - end_rev} more revisions for the restore targets")
        extra = load(["--writes", str(need - end_rev)])
        end_rev = extra["end_revision"]
    agent.wait(lambda: (rec.newest() or {}).get("lastRevision", 0) >= end_rev, 60, f"revision {end_rev} durable")
    result["agent_hwm_mib_at_end"] = status_kib(agent.proc.pid, "VmHWM") / 1024
    agent.stop()
    recs = rec.scan()
    result["chain_records"] = len(recs)
    result["chain_last_revision"] = max(r["lastRevision"] for r in recs)
    result["chain_broken"] = [r["chainBroken"] for r in recs if r.get("chainBroken")]
    snaps = sorted(f for f in os.listdir(os.path.join(data, "snapshots"))
                   if f.startswith("etcd-snapshot-") and not f.endswith((".json", ".part")))
    result["base_snapshot"] = snaps[0]
    result["snapshots"] = snaps
    print(json.dumps(result))


def served_revision(data_dir):
    """Boots etcd on a restored data dir and returns the revision it serves."""
    port, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([args.etcd, "--name", "m0", "--data-dir", data_dir, "--listen-client-urls", url,
                             "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                             "--log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                req = urllib.request.Request(f"{url}/v3/maintenance/status", data=b"{}", method="POST")
                with urllib.request.urlopen(req, timeout=2) as r:
                    return int(json.loads(r.read())["header"]["revision"])
            except (OSError, ValueError, KeyError):
                time.sleep(0.3)
        raise RuntimeError(f"etcd on {data_dir} did not answer")
    finally:
        proc.terminate()
        proc.wait()


def descendants(root):
    """pids of the live descendants of root."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def run_sampled(cmd):
    """measure.run, plus each process's own peak RSS (VmHWM, sampled every 0.2 s) by program
    name: which process of the tree the peak RSS is (etcdsnap itself, etcdutl, the replay's etcd)."""
    import threading
    peaks, done = {}, threading.Event()
    me = os.getpid()

    def sample():
        while not done.is_set():
            for pid in descendants(me):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        prog = os.path.basename(f.read().split(b"\0")[0].decode(errors="replace"))
                    hwm = status_kib(pid, "VmHWM") / 1024
                except OSError:
                    continue
                if prog and prog != "time" and not prog.startswith("python"):  # GNU time; a fork not yet exec'd
                    peaks[prog] = max(peaks.get(prog, 0), hwm)
            done.wait(0.2)

    t = threading.Thread(target=sample)
    t.start()
    try:
        r = measure.run(cmd)
    finally:
        done.set()
        t.join()
    r["peaks_mib"] = peaks
    return r


def restore():
    cap = json.load(open(args.capture_result))
    base, snapdir = cap["base_revision"], os.path.join(args.workdir, "store", "snapshots")
    out_root = os.path.join(args.workdir, "restore")
    target = os.path.join(out_root, "member")
    member = ["--member-name", "m0", "--initial-cluster", "m0=http://127.0.0.1:2380",
              "--initial-advertise-peer-urls", "http://127.0.0.1:2380"]
    common = ["--dir", snapdir, "--data-dir", target, "--etcdutl", args.etcdutl, "--log-level", "warn", *member]
    kinds = [("plain restore of the base", [args.etcdsnap, "restore", cap["base_snapshot"], *common], base)]
    for d in args.past_base:
        kinds.append((f"restore --to-revision base+{d}",
                      [args.etcdsnap, "restore", "--to-revision", str(base + d), "--etcd", args.etcd, *common], base + d))

    def clean():
        shutil.rmtree(out_root, ignore_errors=True)
        os.makedirs(out_root)
        os.sync()

    runs = {name: [] for name, _, _ in kinds}
    served = {}
    machine = Machine()
    for i in range(args.runs):
        for name, cmd, want in (kinds if i % 2 == 0 else kinds[::-1]):
            clean()
            log(f"run {i + 1}/{args.runs}: {name}")
            machine.sample()
            runs[name].append(run_sampled(cmd))
            machine.sample()
            if name not in served:
                served[name] = served_revision(target)
                if served[name] != want:
                    raise RuntimeError(f"{name}: etcd serves revision {served[name]}, not {want}")
    clean()
    results = []
    for name, _, want in kinds:
        peaks = {}
        for r in runs[name]:
            for prog, mib in r["peaks_mib"].items():
                peaks[prog] = max(peaks.get(prog, 0), mib)
        results.append({"name": name, "revision": want, "served_revision": served[name],
                        **measure.summary(runs[name]), "walls": [r["wall"] for r in runs[name]],
                        "peaks_mib": peaks})
    print(json.dumps({"capture": cap, "restore": results, "restore_machine": machine.result()}))


def report(path):
    r = json.load(open(path))
    c = r["capture"]
    w, wo = c["with"], c["without"]
    print(f"Capture ({c['rate']:.0f} writes/s for {c['duration']:.0f} s; achieved "
          f"{w['load']['achieved_rate']:.1f} with the capture, {wo['load']['achieved_rate']:.1f} without):\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| recovery point (age of the newest durable change), from the records: p50 / p99 / max | "
          f"{w['lag_p50']:.1f} / {w['lag_p99']:.1f} / {w['lag_max']:.1f} s |")
    if "metric_lag_p50" in w:
        print(f"| `etcdsnap_delta_lag_seconds`, sampled: p50 / p99 / max | "
              f"{w['metric_lag_p50']:.1f} / {w['metric_lag_p99']:.1f} / {w['metric_lag_max']:.1f} s |")
    print(f"| agent CPU while capturing | {w['agent_cpu_per_s'] * 1000:.0f} ms per s of load "
          f"({w['agent_cpu_per_s'] * 100:.1f}% of one core; {wo['agent_cpu_per_s'] * 1000:.0f} ms/s without --deltas) |")
    print(f"| agent RSS during the load: max sampled / peak (VmHWM, including the base snapshot) | "
          f"{w['agent_rss_max_mib']:.1f} / {c['agent_hwm_mib_at_end']:.1f} MiB |")
    extra = w["etcd_cpu_per_s"] - wo["etcd_cpu_per_s"]
    print(f"| etcd CPU under the load, without / with the capture | {wo['etcd_cpu_per_s'] * 1000:.0f} / "
          f"{w['etcd_cpu_per_s'] * 1000:.0f} ms per s ({extra * 1000:+.0f} ms/s, "
          f"{extra / wo['etcd_cpu_per_s'] * 100:+.1f}%) |")
    print(f"| write latency p50 / p99, without / with the capture | {wo['load']['latency_ms_p50']:.1f} / "
          f"{wo['load']['latency_ms_p99']:.1f} ms, {w['load']['latency_ms_p50']:.1f} / {w['load']['latency_ms_p99']:.1f} ms |")
    print(f"| stored bytes per event (zstd segments) | {c['bytes_per_event']:.0f} B ({c['stored_bytes'] / 1e6:.1f} MB "
          f"for {c['events']} events in {c['capture_records']} segments; "
          f"{c['bytes_per_event'] * c['rate'] * 3600 / 1e9:.2f} GB per hour at this rate) |")
    for label, x in (("without", wo), ("with", w)):
        m = x["machine"]
        print(f"Machine during the load {label} the capture: {m['busy_cores']:.2f} of {os.cpu_count()} cores busy "
              f"(everything included), a compiler running in {m['compiler_seen_share'] * 100:.0f}% of the samples, "
              f"load average {' '.join(m['loadavg'])}; failed write guards {x['load']['failed_guards']}.")
    m = r["restore_machine"]
    print(f"Machine during the restores: {m['busy_cores']:.2f} cores busy, a compiler running at "
          f"{m['compiler_seen_share'] * 100:.0f}% of the run starts and ends, load average {' '.join(m['loadavg'])}.")
    print()
    print("| restore | to revision | wall s (median; runs) | CPU s (user+sys) | peak RSS MiB (tree; per program) | vs plain |")
    print("|---|---|---|---|---|---|")
    plain = r["restore"][0]["wall"]
    for x in r["restore"]:
        walls = ", ".join(f"{v:.2f}" for v in x["walls"])
        ratio = "" if x is r["restore"][0] else f"{x['wall'] / plain:.1f}x"
        progs = ", ".join(f"{k} {v:.0f}" for k, v in sorted(x.get("peaks_mib", {}).items()))
        print(f"| {x['name']} | {x['revision']} (served {x['served_revision']}) | {x['wall']:.2f} ({walls}) | "
              f"{x['cpu']:.2f} ({x['user']:.2f}+{x['sys']:.2f}) | {x['max_rss_mib']:.0f} ({progs}) | {ratio} |")
    if len(r["restore"]) >= 3:
        # wall = fixed + distance / rate, from the two rolled-forward restores.
        (d1, t1), (d2, t2) = [(x["revision"] - c["base_revision"], x["wall"]) for x in r["restore"][1:3]]
        rate = (d2 - d1) / (t2 - t1)
        print(f"\nFitted from the two: {t1 - d1 / rate:.1f} s fixed (restore the base, boot, save, restore) "
              f"+ {rate:.0f} revisions/s replayed.")


if args.report:
    report(args.report)
elif args.phase == "capture":
    capture()
elif args.phase == "restore":
    restore()
