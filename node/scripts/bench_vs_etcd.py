#!/usr/bin/env python3
"""Side by side: replicator and etcd on this machine, driven by one load generator.

Starts a 3-member etcd (Debian's `etcd-server`) and replicator networks (`replicator demo`,
1x3 and 3x3 by default) on 127.0.0.1, then drives each with `wrk` (one fresh key per request:
a create-if-absent) at 1, 16 and 64 connections, interleaving the systems run by run, and
prints the median of every figure over the repetitions: creates/s, p50, p99, errors and server
CPU-ms per create (user+system time of the server processes, from /proc), and for replicator
what a create costs in messages, frames, bytes and fsyncs, summed over every node (from each
node's /metrics before and after a run). Each load at more
than one client is measured twice (`--targets one,spread`): every connection through the
system's first node, and the connections spread over every node (one wrk process per node
with its share; percentiles from the merged latency histograms). Before the measured
runs every system takes the same unmeasured warm-up load (`--warmup` seconds at 64
connections): a replicator network reports itself writable as soon as its own cluster is
complete, while the other clusters are still being discovered and joining, and its first
writes wait for that (slower, not failing: core/PROTOCOL.md, step 5). Installs nothing: it says what is
missing. Every process it starts is stopped at the end.

    python3 node/scripts/bench_vs_etcd.py [--duration 15] [--reps 3] [--clients 1,16,64]
        [--systems etcd,replicator-1x3,replicator-3x3] [--replicator target/release/replicator]
        [--warmup 5] [--targets one,spread]
    python3 node/scripts/bench_vs_etcd.py --self-test    # the pure parts, no processes

After the tables it says which of the README's loopback targets the run met.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")

# wrk scripts. Keys are unique per run (a nonce), per thread and per request; `done` prints
# one JSON line that this script parses.
LUA_COMMON = r"""
local thread_counter = 0
local threads = {}
function setup(thread)
  thread_counter = thread_counter + 1
  thread:set("tid", thread_counter)
  table.insert(threads, thread)
end
function init(args)
  nonce = args[1]
  n = 0
  ok = 0
  bad = 0
end
function response(status, headers, body)
  if is_ok(status, body) then ok = ok + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
  local oks, bads = 0, 0
  for _, t in ipairs(threads) do
    oks = oks + t:get("ok")
    bads = bads + t:get("bad")
  end
  -- The latency histogram (microseconds:count of every distinct value), so that the runs of
  -- several wrk processes (one per node) merge into exact percentiles.
  local hist = {}
  for i = 1, #latency do
    local us, count = latency(i)
    hist[#hist + 1] = string.format("%d:%d", us, count)
  end
  io.write(string.format(
    'WRKJSON {"requests":%d,"ok":%d,"bad":%d,"socket_errors":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"hist":"%s"}\n',
    summary.requests, oks, bads,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99), table.concat(hist, ",")))
end
"""

LUA_REPLICATOR = LUA_COMMON + r"""
function request()
  n = n + 1
  local key = string.format("bench-%s-%d-%d", nonce, tid, n)
  return wrk.format("PUT", "/store/" .. key, nil, "value-" .. n)
end
function is_ok(status, body) return status == 201 end
"""

# base64 for etcd's JSON gateway, which takes keys and values base64-encoded.
LUA_B64 = r"""
local b64chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function b64(data)
  return ((data:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#data % 3 + 1])
end
"""

LUA_ETCD = LUA_COMMON + LUA_B64 + r"""
function request()
  n = n + 1
  local key = b64(string.format("bench-%s-%d-%d", nonce, tid, n))
  local value = b64("value-" .. n)
  local body = '{"compare":[{"key":"' .. key .. '","target":"CREATE","create_revision":"0"}],'
    .. '"success":[{"requestPut":{"key":"' .. key .. '","value":"' .. value .. '"}}]}'
  return wrk.format("POST", "/v3/kv/txn", {["Content-Type"] = "application/json"}, body)
end
function is_ok(status, body) return status == 200 and body:find('"succeeded":true', 1, true) ~= nil end
"""


def die(msg):
    print(f"bench_vs_etcd: {msg}", file=sys.stderr)
    sys.exit(2)


def http_ok(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except Exception:
        return False


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    die(f"timed out waiting for {what}")


def descendants(pid):
    """The pid and every process below it (a demo's nodes are its children)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except OSError:
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
        except OSError:
            continue
    return total / CLK_TCK


# What a replicator create costs, summed over every node and divided by the creates of a run
# (counters of each node's /metrics: every peer's series of a name are added).
COST_COUNTERS = {
    "messages": "replicator_messages_sent_total",
    "frames": "replicator_peer_frames_sent_total",
    "writes": "replicator_peer_writes_total",
    "bytes": "replicator_peer_bytes_sent_total",
    "fsyncs": "replicator_storage_fsyncs_total",
}
METRIC_LINE = re.compile(r"^([a-z_]+)(?:\{[^}]*\})?\s+([0-9.eE+-]+)$")


def cost_counters(urls):
    """The sums of COST_COUNTERS over every node's /metrics."""
    totals = dict.fromkeys(COST_COUNTERS, 0.0)
    names = {metric: cost for cost, metric in COST_COUNTERS.items()}
    seen = set()
    for url in urls:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        for line in text.splitlines():
            m = METRIC_LINE.match(line)
            if m and m.group(1) in names:
                seen.add(m.group(1))
                totals[names[m.group(1)]] += float(m.group(2))
    # A renamed metric would read as zero cost: say so instead.
    missing = sorted(set(names) - seen)
    if missing:
        die(f"no {', '.join(missing)} in {urls[0]}/metrics")
    return totals


class System:
    def __init__(self, name, urls, lua, procs):
        # urls: every node's client URL; "one node" runs use the first.
        self.name, self.urls, self.lua, self.procs = name, urls, lua, procs

    def server_pids(self):
        pids = []
        for p in self.procs:
            pids.extend(descendants(p.pid))
        return pids


def start_etcd(workdir, base_port):
    members = []
    cluster = ",".join(
        f"e{i}=http://127.0.0.1:{base_port + 2 * i + 1}" for i in range(3)
    )
    for i in range(3):
        client, peer = base_port + 2 * i, base_port + 2 * i + 1
        data = os.path.join(workdir, f"etcd-{i}")
        log = open(os.path.join(workdir, f"etcd-{i}.log"), "w")
        members.append(subprocess.Popen(
            ["etcd", "--name", f"e{i}", "--data-dir", data,
             "--listen-client-urls", f"http://127.0.0.1:{client}",
             "--advertise-client-urls", f"http://127.0.0.1:{client}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", cluster, "--initial-cluster-state", "new",
             "--initial-cluster-token", f"bench-{os.getpid()}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    urls = [f"http://127.0.0.1:{base_port + 2 * i}" for i in range(3)]
    wait_until(lambda: all(http_ok(u + "/health") for u in urls), 60, "etcd to be healthy")
    return System("etcd", urls, LUA_ETCD, members)


def start_replicator(exe, workdir, clusters, http_port):
    data = os.path.join(workdir, f"replicator-{clusters}x3")
    log = open(data + ".log", "w")
    demo = subprocess.Popen(
        [exe, "demo", "--clusters", str(clusters), "--http-port", str(http_port),
         "--data-dir", data],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    nodes = [f"http://127.0.0.1:{http_port + i}" for i in range(3 * clusters)]

    def writable():
        try:
            with urllib.request.urlopen(nodes[0] + "/health", timeout=1) as r:
                health = json.load(r)
        except Exception:
            return False
        return (health.get("writable") is True and health.get("members") == len(nodes)
                and all(http_ok(n + "/health") for n in nodes))
    wait_until(writable, 180, f"replicator {clusters}x3 to accept writes")
    return System(f"replicator-{clusters}x3", nodes, LUA_REPLICATOR, [demo])


def parse_wrk(stdout):
    """One wrk run's WRKJSON line: answers, errors, seconds and its latency histogram
    ({microseconds: count}); None if wrk printed none."""
    line = next((l for l in stdout.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None:
        return None
    r = json.loads(line[len("WRKJSON "):])
    hist = {}
    for pair in filter(None, r["hist"].split(",")):
        us, count = pair.split(":")
        hist[int(us)] = hist.get(int(us), 0) + int(count)
    return {"ok": r["ok"], "errors": r["bad"] + r["socket_errors"],
            "seconds": r["duration_us"] / 1e6, "hist": hist}


def merge_runs(runs):
    """wrk runs made side by side (one per node) as one: summed answers and histograms over
    the longest of their durations."""
    hist = {}
    for r in runs:
        for us, count in r["hist"].items():
            hist[us] = hist.get(us, 0) + count
    return {"ok": sum(r["ok"] for r in runs), "errors": sum(r["errors"] for r in runs),
            "seconds": max(r["seconds"] for r in runs), "hist": hist}


def percentile_ms(hist, p):
    """The smallest latency that p percent of the requests did not exceed (nan if none)."""
    total = sum(hist.values())
    if total == 0:
        return float("nan")
    rank = max(1, -(-p * total // 100))  # ceil(p% of total), at least the first request
    seen = 0
    for us in sorted(hist):
        seen += hist[us]
        if seen >= rank:
            return us / 1000
    return max(hist) / 1000


def shares(clients, targets):
    """clients connections over `targets` nodes as evenly as possible, none left without
    work: 16 over 3 -> [6, 5, 5], 1 over 3 -> [1]."""
    n = min(clients, targets)
    return [clients // n + (1 if i < clients % n else 0) for i in range(n)]


def wrk_command(url, connections, duration, lua_path, nonce, threads):
    return ["wrk", "-t", str(min(connections, threads)), "-c", str(connections),
            "-d", f"{duration}s", "--timeout", "10s", "--latency", "-s", lua_path, url,
            "--", nonce]


def run_wrk(system, clients, duration, lua_path, nonce, spread=False):
    """One measured run: through the system's first node, or (spread) one wrk process per
    node with its share of the connections, all at once."""
    urls = system.urls if spread else system.urls[:1]
    conns = shares(clients, len(urls))
    threads = 1 if len(conns) > 1 else 2
    pids = system.server_pids()
    counts = system.name.startswith("replicator")
    costs0 = cost_counters(system.urls) if counts else None
    cpu0 = cpu_seconds(pids)
    procs = [subprocess.Popen(wrk_command(u, c, duration, lua_path, f"{nonce}n{i}", threads),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, (u, c) in enumerate(zip(urls, conns))]
    runs = []
    for p in procs:
        out, err = p.communicate(timeout=duration + 60)
        r = parse_wrk(out)
        if r is None:
            die(f"wrk printed no summary for {system.name}: {out}\n{err}")
        runs.append(r)
    cpu1 = cpu_seconds(pids)
    r = merge_runs(runs)
    ok = r["ok"]
    per_create = {}
    if counts and ok:
        costs1 = cost_counters(system.urls)
        per_create = {f"{k}_per_op": (costs1[k] - costs0[k]) / ok for k in COST_COUNTERS}
    return per_create | {
        "ops": ok / r["seconds"],
        "p50_ms": percentile_ms(r["hist"], 50),
        "p99_ms": percentile_ms(r["hist"], 99),
        "errors": r["errors"],
        "cpu_ms_per_op": (cpu1 - cpu0) * 1000 / ok if ok else float("nan"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--systems", default="etcd,replicator-1x3,replicator-3x3")
    ap.add_argument("--replicator", default="target/release/replicator")
    ap.add_argument("--json", help="also write every run to this file")
    ap.add_argument("--warmup", type=int, default=5,
                    help="seconds of unmeasured load per system before the measured runs")
    ap.add_argument("--targets", default="one,spread",
                    help="one: every client through the system's first node; spread: the "
                         "clients spread over every node (one wrk per node with its share of "
                         "the connections). Runs with one client are the same either way and "
                         "are made once")
    args = ap.parse_args()
    systems = args.systems.split(",")
    clients = [int(c) for c in args.clients.split(",")]
    targets = args.targets.split(",")
    if not targets or any(t not in ("one", "spread") for t in targets):
        die(f"--targets takes one, spread or one,spread, not {args.targets}")

    missing = [tool for tool, pkg in (("wrk", "wrk"), ("etcd", "etcd-server"))
               if (tool != "etcd" or "etcd" in systems) and shutil.which(tool) is None]
    if missing:
        die("missing: " + ", ".join(missing) + " (Debian: apt-get install wrk etcd-server)")
    if any(s.startswith("replicator") for s in systems) and not os.access(args.replicator, os.X_OK):
        die(f"{args.replicator} not found: build it with `cargo build --release -p replicator-node`")

    workdir = tempfile.mkdtemp(prefix="bench-vs-etcd-")
    running = []
    try:
        for name in systems:
            if name == "etcd":
                running.append(start_etcd(workdir, 23790))
            elif name.startswith("replicator-") and name.endswith("x3"):
                c = int(name[len("replicator-"):-len("x3")])
                running.append(start_replicator(args.replicator, workdir, c, 18080 + 100 * len(running)))
            else:
                die(f"unknown system {name}")
        lua = {}
        for s in running:
            path = os.path.join(workdir, f"{s.name}.lua")
            with open(path, "w") as f:
                f.write(s.lua)
            lua[s.name] = path
        if args.warmup > 0:
            for s in running:
                run_wrk(s, 64, args.warmup, lua[s.name], f"{os.getpid()}warmup")
                print(f"warmed up {s.name} ({args.warmup} s at 64 clients)", flush=True)
        results = {}
        for rep in range(args.reps):
            for c in clients:
                for t in runs_of(targets, c):
                    for s in running:  # interleaved: every system once per (rep, clients, targets)
                        nonce = f"{os.getpid()}r{rep}c{c}{t}"
                        r = run_wrk(s, c, args.duration, lua[s.name], nonce, spread=t == "spread")
                        results.setdefault((s.name, c, t), []).append(r)
                        print(f"rep {rep + 1}/{args.reps} {s.name:<16} {c:>3} clients {t:<6}: "
                              f"{r['ops']:8.0f} creates/s p50 {r['p50_ms']:7.1f} ms "
                              f"p99 {r['p99_ms']:7.1f} ms errors {r['errors']:4d} "
                              f"cpu {r['cpu_ms_per_op']:6.2f} ms/op", flush=True)
        print_table(results, running, clients, targets, args)
        print_verdicts(target_verdicts(results))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({f"{k[0]}@{k[1]}@{k[2]}": v for k, v in results.items()}, f, indent=1)
    finally:
        for s in running:
            for p in s.procs:
                try:
                    os.killpg(p.pid, signal.SIGINT if s.name.startswith("replicator") else signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for s in running:
            for p in s.procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)


def runs_of(targets, clients):
    """The target modes measured at this many clients: one client is one node either way."""
    return targets[:1] if clients == 1 else targets


TARGET_LABEL = {"one": "one node", "spread": "every node"}


def print_table(results, running, clients, targets, args):
    med = lambda rs, k: statistics.median(r[k] for r in rs)
    print()
    print(f"medians of {args.reps} interleaved runs of {args.duration} s, "
          f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores")
    print("| system | clients | through | creates/s | p50 ms | p99 ms | errors | server CPU-ms per create | creates/s vs etcd |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in clients:
        for t in runs_of(targets, c):
            base = results.get(("etcd", c, t))
            for s in running:
                rs = results[(s.name, c, t)]
                ratio = f"{med(rs, 'ops') / med(base, 'ops'):.2f}x" if base else "-"
                through = TARGET_LABEL[t] if c > 1 else "one node"
                print(f"| {s.name} | {c} | {through} | {med(rs, 'ops'):.0f} | "
                      f"{med(rs, 'p50_ms'):.1f} | {med(rs, 'p99_ms'):.1f} | "
                      f"{med(rs, 'errors'):.0f} | {med(rs, 'cpu_ms_per_op'):.2f} | {ratio} |")
    print()
    print("what a replicator create costs, summed over every node (from each node's /metrics)")
    print("| system | clients | through | messages sent | frames sent | stream writes | bytes sent | fsyncs |")
    print("|---|---|---|---|---|---|---|---|")
    for c in clients:
        for t in runs_of(targets, c):
            for s in running:
                rs = results[(s.name, c, t)]
                if "messages_per_op" not in rs[0]:
                    continue
                through = TARGET_LABEL[t] if c > 1 else "one node"
                print(f"| {s.name} | {c} | {through} | {med(rs, 'messages_per_op'):.1f} | "
                      f"{med(rs, 'frames_per_op'):.1f} | {med(rs, 'writes_per_op'):.1f} | "
                      f"{med(rs, 'bytes_per_op'):.0f} | "
                      f"{med(rs, 'fsyncs_per_op'):.2f} |")


# The loopback targets the README's "Performance" section sets, checked against one run's
# medians: (the line to print, whether it is met). Only what the run measured is judged.
def target_verdicts(results):
    med = lambda key, k: statistics.median(r[k] for r in results[key])
    lines = []
    for t in ("one", "spread"):
        where = f"at 64 clients through {TARGET_LABEL[t]}"
        etcd = ("etcd", 64, t)
        if etcd not in results:
            continue
        if ("replicator-3x3", 64, t) in results:
            x = med(("replicator-3x3", 64, t), "ops") / med(etcd, "ops")
            lines.append((f"3x3 {where}: {x:.2f}x etcd's creates/s (target: at least 2x)", x >= 2))
        if ("replicator-1x3", 64, t) in results:
            x = med(("replicator-1x3", 64, t), "ops") / med(etcd, "ops")
            cpu = (med(("replicator-1x3", 64, t), "cpu_ms_per_op")
                   / med(etcd, "cpu_ms_per_op"))
            lines.append((f"1x3 {where}: {x:.2f}x etcd's creates/s (target: at least 4x), server "
                          f"CPU per create {cpu:.2f}x etcd's (target: at most 0.25x)",
                          x >= 4 and cpu <= 0.25))
    if ("replicator-3x3", 1, "one") in results and ("etcd", 1, "one") in results:
        mine, theirs = med(("replicator-3x3", 1, "one"), "p50_ms"), med(("etcd", 1, "one"), "p50_ms")
        lines.append((f"3x3 at 1 client: p50 {mine:.1f} ms, etcd's {theirs:.1f} ms (target: at "
                      f"or below etcd's)", mine <= theirs))
    return lines


def print_verdicts(lines, section="Performance, side by side with etcd"):
    if lines:
        print()
        print(f"targets (README, \"{section}\"):")
    for text, met in lines:
        print(f"  {'met    ' if met else 'NOT MET'}  {text}")


def self_test():
    """The pure parts: percentiles, merging, shares and the targets' verdicts."""
    run = lambda ops, p50, cpu: {"ops": ops, "p50_ms": p50, "cpu_ms_per_op": cpu}
    results = {("etcd", 64, "one"): [run(1000, 20, 1.0), run(1200, 20, 1.0), run(900, 20, 1.0)],
               ("replicator-3x3", 64, "one"): [run(2000, 9, 0.5)] * 3,
               ("replicator-1x3", 64, "one"): [run(4100, 5, 0.2)] * 3,
               ("etcd", 64, "spread"): [run(1000, 20, 1.0)],
               ("replicator-3x3", 64, "spread"): [run(1999, 9, 0.5)],
               ("replicator-1x3", 64, "spread"): [run(5000, 5, 0.3)],
               ("etcd", 1, "one"): [run(500, 1.6, 2.0)],
               ("replicator-3x3", 1, "one"): [run(400, 2.2, 3.0)]}
    verdicts = target_verdicts(results)
    assert [met for _, met in verdicts] == [True, True, False, False, False], verdicts
    assert "2.00x etcd's" in verdicts[0][0] and "0.30x etcd's" in verdicts[3][0], verdicts
    assert target_verdicts({("replicator-3x3", 64, "one"): [run(1, 1, 1)]}) == []
    assert percentile_ms({1000: 1, 2000: 1}, 50) == 1.0
    assert merge_runs([{"ok": 1, "errors": 0, "seconds": 1.0, "hist": {1000: 1}},
                       {"ok": 2, "errors": 1, "seconds": 2.0, "hist": {1000: 2}}]) == \
        {"ok": 3, "errors": 1, "seconds": 2.0, "hist": {1000: 3}}
    assert shares(64, 9) == [8] + [7] * 8 and sum(shares(16, 3)) == 16
    print("bench_vs_etcd self-test: ok")


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        self_test()
    else:
        main()
