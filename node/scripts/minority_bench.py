#!/usr/bin/env python3
"""What a minority of every cluster down costs: creates before and during the fault, side by side.

Starts nine `replicator run` processes (3 clusters x 3 nodes) on 127.0.0.1 in a temporary
directory, then repeats, --reps times, for each fault:
  - `before`: `replicator bench` for --duration seconds through one healthy node per cluster;
  - `during`: the same, while one node of every cluster is down:
      kill   - killed with SIGKILL before the run, restarted with its data dir after it;
      stop   - SIGSTOPped before the run (its sockets stay open, it answers nothing), SIGCONT
               after it.
The bench load is the same in every run (fresh keys, --concurrency clients spread over the
three healthy nodes). Prints per fault the medians over the reps of creates/s, p50 and p99 and
the ratios during/before, and every non-201 answer.

    python3 node/scripts/minority_bench.py [--reps 3] [--duration 10] [--concurrency 16]
        [--faults kill,stop] [--replicator target/release/replicator]
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

VICTIMS = [2, 5, 8]
SERVING = [0, 3, 6]


def health(url):
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as r:
            return json.load(r)
    except (OSError, ValueError):
        return None


def wait(what, predicate, timeout=120, nodes=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    for n in nodes:
        print(f"node {n.i}: {health(n.http)}", file=sys.stderr)
    sys.exit(f"timed out waiting for {what}")


class Node:
    def __init__(self, binary, base, i):
        self.binary, self.i = binary, i
        self.cluster = f"c{i // 3 + 1}"
        self.dir = os.path.join(base, f"n{i}")
        self.log = open(os.path.join(base, f"n{i}.log"), "ab")
        self.proc, self.http, self.p2p = None, None, None

    def start(self, bootstrap):
        args = [self.binary, "run", "--cid", self.cluster, "--listen", "/ip4/127.0.0.1/tcp/0",
                "--http", "127.0.0.1:0", "--data-dir", self.dir, "--log-level", "warn"]
        if bootstrap:
            args += ["--bootstrap", bootstrap]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.http, self.p2p = None, None
        for line in self.proc.stdout:
            m = re.search(r"listening on: (/ip4/127\.0\.0\.1/tcp/\d+/p2p/\S+)", line)
            if m:
                self.p2p = m.group(1)
            m = re.search(r"HTTP listening on (http://\S+)", line)
            if m:
                self.http = m.group(1)
            if self.http and self.p2p:
                break
        if not (self.http and self.p2p):
            sys.exit(f"node {self.i} did not start; see {self.log.name}")
        # Keep reading its stdout, so that it never blocks on a full pipe.
        threading.Thread(target=lambda out=self.proc.stdout: [None for _ in out],
                         daemon=True).start()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        self.proc.kill()
        self.proc.wait()


def bench(binary, nodes, duration, concurrency):
    out = subprocess.run(
        [binary, "bench", "--duration", str(duration), "--concurrency", str(concurrency)]
        + [a for n in nodes for a in ("--node", n.http)],
        capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"s: ([\d.]+) ops/s", out).group(1))
    p50, p99 = (float(x) for x in re.search(r"p50 ([\d.]+)\s+p99 ([\d.]+)", out).groups())
    outcomes = dict((m.group(1), int(m.group(2)))
                    for m in re.finditer(r"^\s+(\S+)\s+(\d+)$", out, re.M))
    return {"rate": rate, "p50": p50, "p99": p99, "outcomes": outcomes}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--faults", default="kill,stop")
    ap.add_argument("--replicator", default="target/release/replicator")
    a = ap.parse_args()
    base = tempfile.mkdtemp(prefix="minority-bench-")
    nodes = [Node(a.replicator, base, i) for i in range(9)]
    try:
        nodes[0].start(None)
        for n in nodes[1:]:
            n.start(nodes[0].p2p)
        wait("nine writable members",
             lambda: all((h := health(n.http)) and h["writable"] and h["members"] == 9
                         for n in nodes))
        serving = [nodes[i] for i in SERVING]
        bench(a.replicator, serving, 3, a.concurrency)  # warm-up, unmeasured
        results = {}
        for rep in range(a.reps):
            for fault in a.faults.split(","):
                before = bench(a.replicator, serving, a.duration, a.concurrency)
                for i in VICTIMS:
                    if fault == "kill":
                        nodes[i].kill()
                    else:
                        nodes[i].signal(signal.SIGSTOP)
                time.sleep(0.5)
                during = bench(a.replicator, serving, a.duration, a.concurrency)
                for i in VICTIMS:
                    if fault == "kill":
                        nodes[i].start(nodes[0].p2p)
                    else:
                        nodes[i].signal(signal.SIGCONT)
                wait("every node caught up",
                     lambda: all((h := health(n.http)) and h["writable"] and h["behind"] == 0
                                 and h["accepted_undecided"] == 0 for n in nodes),
                     nodes=nodes)
                results.setdefault(fault, []).append((before, during))
                print(f"rep {rep + 1} {fault}: before {before} during {during}", flush=True)
        print()
        print("| fault | creates/s before | during | p50 ms before | during | ratio | "
              "p99 ms before | during | ratio | answers during |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for fault, runs in results.items():
            med = lambda phase, k: statistics.median(r[phase][k] for r in runs)
            answers = {}
            for _, d in runs:
                for o, c in d["outcomes"].items():
                    answers[o] = answers.get(o, 0) + c
            print(f"| {fault} one node of every cluster | {med(0, 'rate'):.0f} | "
                  f"{med(1, 'rate'):.0f} | {med(0, 'p50'):.2f} | {med(1, 'p50'):.2f} | "
                  f"{med(1, 'p50') / med(0, 'p50'):.2f}x | {med(0, 'p99'):.2f} | "
                  f"{med(1, 'p99'):.2f} | {med(1, 'p99') / med(0, 'p99'):.2f}x | {answers} |")
    finally:
        for n in nodes:
            if n.proc and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGCONT)
                n.kill()


if __name__ == "__main__":
    main()
