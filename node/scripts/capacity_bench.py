#!/usr/bin/env python3
"""Capacity of one node: memory, disk, restart, reads and a join with N keys stored.

A node holds only what is in flight in memory and reads decided keys from its database through
a page cache of `--cache-mb`; a restart loads only what is in flight. This script checks that
memory and restart time do not grow with the data. It starts a 1x3 network of real
`replicator run` processes on 127.0.0.1 in a temp dir and:

1. on a fresh, empty network: creates/s, p50 and p99 of fresh keys at `--clients` connections
   for `--duration` seconds (after `--warmup` seconds of the same load), then stops it;
2. on a second fresh network: fills N keys (`cap-0` .. `cap-<N-1>`) of `--value-bytes` bytes
   with `wrk` (one wrk per node, the clients split over the three), reports the fill rate;
3. per node: VmRSS and VmHWM (/proc) and the bytes of its data dir (database, write-ahead log);
4. restart: SIGTERM one node, start it again with the same command, time until its banner,
   until `/health` says writable and until it serves a stored key; its memory after it;
5. on the restarted node: GET p50/p99 of random stored keys never read since the restart
   (cold: run as root, the OS page cache is dropped first, so cold reads go to the disk), then
   of the same keys again (warm), one client;
6. creates/s, p50 and p99 as in 1, now with the N keys stored, against the empty network:
   `--reps` runs on the full network, each after one on another fresh empty network (the
   first is 1.), so that a change in the machine's load does not fall on one side; medians;
7. a fourth node joins the full network (`--bootstrap` of node 0): seconds until it is ready
   with every key, its peak memory (VmHWM) and the members' memory sampled during the copy.

Needs Debian's `wrk` (installs nothing: it says what is missing). Every process it starts is
stopped at the end, also on failure or Ctrl-C.

    python3 node/scripts/capacity_bench.py [--keys 1000000] [--value-bytes 1024] [--clients 64]
        [--duration 10] [--reps 3] [--cache-mb MiB] [--no-join] [--quick] [--json FILE]
        [--replicator target/release/replicator]
    python3 node/scripts/capacity_bench.py --self-test
"""

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True
from bench_vs_etcd import cpu_seconds  # noqa: E402  (server CPU from /proc, as the loopback bench counts it)
CLUSTER = "c1"
NODES = 3
# wrk gives up on a request after this long (its latency histogram has one slot per µs up to
# it, so it also bounds wrk's memory).
WRK_TIMEOUT_S = 10

# `done` of both wrk scripts: one JSON line with the counts and the whole latency histogram
# (µs value -> count), so that the three wrk processes' latencies merge into exact percentiles.
LUA_DONE = r"""
local threads = {}
local thread_counter = 0
function setup(thread)
  thread_counter = thread_counter + 1
  thread:set("tid", thread_counter)
  table.insert(threads, thread)
end
function done(summary, latency, requests)
  local oks, bads = 0, 0
  for _, t in ipairs(threads) do
    oks = oks + t:get("ok")
    bads = bads + t:get("bad")
  end
  local hist = {}
  for i = 1, #latency do
    local v, c = latency(i)
    hist[#hist + 1] = string.format("[%d,%d]", v, c)
  end
  io.write(string.format(
    'WRKJSON {"requests":%d,"ok":%d,"bad":%d,"socket_errors":%d,"duration_us":%d,"hist":[%s]}\n',
    summary.requests, oks, bads,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration, table.concat(hist, ",")))
end
"""

# Fill: this wrk issues keys cap-(first + stride * k) for k < quota, values "<index>:" padded
# to the value size. wrk calls request() once before it connects, to check the script, and
# sends nothing of it: so the first key is sent again after the last (k == quota; a 409 if it
# was sent after all). Once `quota` PUTs are answered it writes `marker` and stops its thread;
# until then a connection with nothing left to send asks /health (wrk must send something)
# and that answer (200) is not counted.
LUA_FILL = LUA_DONE + r"""
function init(args)
  first, stride, quota = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  pad = string.rep("v", tonumber(args[4]))
  marker = args[5]
  k, ok, bad, marked = 0, 0, 0, false
end
function request()
  if k > quota or quota == 0 then return wrk.format("GET", "/health") end
  local i = first + stride * (k % quota)
  k = k + 1
  local prefix = i .. ":"
  return wrk.format("PUT", "/store/cap-" .. i, nil, prefix .. pad:sub(#prefix + 1))
end
function response(status, headers, body)
  if status == 200 then return end
  if status == 201 or status == 409 then ok = ok + 1 else bad = bad + 1 end
  if not marked and ok + bad >= quota then
    marked = true
    local f = io.open(marker, "w")
    f:write(ok, " ", bad, "\n")
    f:close()
    wrk.thread:stop()
  end
end
"""

# Creates: a fresh key per request (a nonce per run and node), values of the fill's size.
LUA_CREATE = LUA_DONE + r"""
function init(args)
  nonce = args[1]
  pad = string.rep("w", tonumber(args[2]))
  n, ok, bad = 0, 0, 0
end
function request()
  n = n + 1
  return wrk.format("PUT", string.format("/store/new-%s-%d-%d", nonce, tid, n), nil, pad)
end
function response(status, headers, body)
  if status == 201 then ok = ok + 1 else bad = bad + 1 end
end
"""


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Pure parts (covered by --self-test)


def percentile(hist, p):
    """The p-th percentile (0..100, nearest rank) of a histogram {value: count}; None if empty."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, -(-total * p // 100))  # ceil(total * p / 100), at least the first
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return value
    return max(hist)


def histogram(samples):
    hist = {}
    for s in samples:
        hist[s] = hist.get(s, 0) + 1
    return hist


def merge_histograms(hists):
    out = {}
    for h in hists:
        for v, c in h.items():
            out[v] = out.get(v, 0) + c
    return out


def parse_wrk(stdout):
    """The WRKJSON line of a wrk run: counts and the latency histogram {µs: count}."""
    line = next((l for l in stdout.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None:
        raise BenchError(f"wrk printed no summary: {stdout[-2000:]!r}")
    r = json.loads(line[len("WRKJSON "):])
    r["hist"] = {int(v): int(c) for v, c in r["hist"]}
    return r


def parse_banner(line, banner):
    """Takes one stdout line of `replicator run` into `banner` (peer, p2p, http)."""
    if line.startswith("peer id: "):
        banner["peer"] = line[len("peer id: "):].strip()
    elif line.startswith("listening on: "):
        banner.setdefault("p2p", line[len("listening on: "):].strip())
    elif line.startswith("HTTP listening on "):
        banner["http"] = line[len("HTTP listening on "):].strip()
    return banner


def parse_proc_status(text):
    """VmRSS and VmHWM of a /proc/PID/status text, in bytes."""
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            value, unit = rest.split()
            if unit != "kB":
                raise BenchError(f"unexpected unit in {line!r}")
            out[name] = int(value) * 1024
    if set(out) != {"VmRSS", "VmHWM"}:
        raise BenchError("VmRSS or VmHWM missing from /proc status")
    return out


def split_clients(total, parts):
    """`total` connections over `parts` load generators, as evenly as possible, each >= 1."""
    if total < parts:
        raise BenchError(f"need at least {parts} clients, one per node")
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def fill_partition(keys, parts):
    """(first, stride, quota) per load generator: generator p fills indices p, p+parts, ..."""
    return [(p, parts, len(range(p, keys, parts))) for p in range(parts)]


def self_test():
    checks = []

    def check(what, got, want):
        checks.append((what, got == want, got, want))

    hist = histogram(range(1, 101))
    check("p50 of 1..100", percentile(hist, 50), 50)
    check("p99 of 1..100", percentile(hist, 99), 99)
    check("p100 of 1..100", percentile(hist, 100), 100)
    check("p0 is the minimum", percentile(hist, 0), 1)
    check("percentile of nothing", percentile({}, 50), None)
    check("weighted p50", percentile({10: 9, 1000: 1}, 50), 10)
    check("weighted p99", percentile({10: 9, 1000: 1}, 99), 1000)
    check("p90 at a boundary", percentile({10: 9, 1000: 1}, 90), 10)
    check("merge", merge_histograms([{1: 2, 5: 1}, {5: 3, 7: 1}]), {1: 2, 5: 4, 7: 1})
    merged = merge_histograms([histogram(range(1, 51)), histogram(range(51, 101))])
    check("merged p50 = p50 of the union", percentile(merged, 50), 50)
    wrk = parse_wrk('Running 1s test\nWRKJSON {"requests":3,"ok":2,"bad":1,"socket_errors":0,'
                    '"duration_us":1000000,"hist":[[120,2],[900,1]]}\n')
    check("wrk histogram", wrk["hist"], {120: 2, 900: 1})
    check("wrk counts", (wrk["ok"], wrk["bad"], wrk["duration_us"]), (2, 1, 1000000))
    try:
        parse_wrk("no summary here")
        check("wrk without summary fails", False, True)
    except BenchError:
        check("wrk without summary fails", True, True)
    banner = {}
    for line in ["peer id: 12D3KooWabc", "network: 5c0f", "cluster: c1",
                 "listening on: /ip4/127.0.0.1/tcp/4001/p2p/12D3KooWabc",
                 "listening on: /ip4/127.0.0.1/tcp/4002/p2p/12D3KooWabc",
                 "HTTP listening on http://127.0.0.1:8080"]:
        parse_banner(line, banner)
    check("banner", banner, {"peer": "12D3KooWabc", "http": "http://127.0.0.1:8080",
                             "p2p": "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWabc"})
    status = "Name:\treplicator\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nThreads:\t9\n"
    check("proc status", parse_proc_status(status),
          {"VmRSS": 100 * 1024 * 1024, "VmHWM": 200 * 1024 * 1024})
    check("median of 3 runs", median_run([{"a": 3, "b": 1}, {"a": 1, "b": 5}, {"a": 2, "b": 9}]),
          {"a": 2, "b": 5})
    check("median of 2 runs", median_run([{"a": 1}, {"a": 4}]), {"a": 2.5})
    check("64 clients over 3", split_clients(64, 3), [22, 21, 21])
    check("3 clients over 3", split_clients(3, 3), [1, 1, 1])
    for keys in (0, 1, 2, 3, 10, 1000, 1001):
        covered = []
        for first, stride, quota in fill_partition(keys, 3):
            covered.extend(first + stride * k for k in range(quota))
        check(f"fill of {keys} keys covers each once", sorted(covered), list(range(keys)))
    failed = [c for c in checks if not c[1]]
    for what, _, got, want in failed:
        print(f"FAIL {what}: got {repr(got)[:200]}, want {repr(want)[:200]}")
    print(f"self-test: {len(checks) - len(failed)} of {len(checks)} checks passed")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# Processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, what, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(every)
    raise BenchError(f"timed out after {timeout} s waiting for {what}")



def dir_bytes(path):
    """Bytes of the database, the write-ahead log and the whole data dir."""
    sizes = {"redb": 0, "wal": 0, "total": 0}
    for root, _, files in os.walk(path):
        for name in files:
            size = os.path.getsize(os.path.join(root, name))
            sizes["total"] += size
            if name == "replicator.redb":
                sizes["redb"] = size
            elif name == "replicator.wal":
                sizes["wal"] = size
    return sizes


class Node:
    """One `replicator run` process; `cmd` is kept so that a restart runs the very same."""

    def __init__(self, exe, workdir, index, bootstrap, extra=()):
        self.index = index
        self.dir = os.path.join(workdir, f"n{index}")
        self.log_path = self.dir + ".log"
        p2p_port, http_port = free_port(), free_port()
        self.http = f"http://127.0.0.1:{http_port}"
        self.cmd = [exe, "run", "--cid", CLUSTER,
                    "--listen", f"/ip4/127.0.0.1/tcp/{p2p_port}",
                    "--http", f"127.0.0.1:{http_port}", "--data-dir", self.dir,
                    "--log-level", "warn"]
        if bootstrap:
            self.cmd += ["--bootstrap", bootstrap]
        self.cmd += list(extra)
        self.proc = None
        self.banner = {}

    def start(self):
        """Starts the process; returns once its banner named its HTTP address (60 s at most)."""
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=log, text=True, start_new_session=True)
        log.close()
        self.banner = {}
        got_http = threading.Event()
        banner, stdout = self.banner, self.proc.stdout

        def read():
            for line in stdout:  # drained to the end: the node never blocks on a full pipe
                parse_banner(line, banner)
                if "http" in banner:
                    got_http.set()
            got_http.set()  # the node exited: no need to wait any longer
        threading.Thread(target=read, daemon=True).start()
        if not got_http.wait(60) or "http" not in banner:
            code = self.proc.poll()
            raise BenchError(f"node {self.index} printed no banner "
                             f"({'exit code ' + str(code) if code is not None else 'in 60 s'}); "
                             f"command: {' '.join(self.cmd)}; "
                             f"log: {self.log_path} (--keep keeps it)")

    def health(self):
        try:
            return get_json(self.http + "/health")
        except (OSError, ValueError, http.client.HTTPException):
            return None

    def memory(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return parse_proc_status(f.read())

    def send(self, sig):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Signals the node and waits for it; SIGKILL after `timeout`. Its exit code."""
        self.send(sig)
        return self.wait(timeout)

    def wait(self, timeout=60):
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


def get_json(url, timeout=2):
    host, _, path = url[len("http://"):].partition("/")
    conn = http.client.HTTPConnection(host, timeout=timeout)
    try:
        conn.request("GET", "/" + path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


class Network:
    def __init__(self, exe, workdir, extra=()):
        self.nodes = []
        self.exe, self.workdir, self.extra = exe, workdir, list(extra)

    def start(self):
        os.makedirs(self.workdir, exist_ok=True)
        first = Node(self.exe, self.workdir, 0, None, self.extra)
        self.nodes.append(first)
        first.start()
        for i in range(1, NODES):
            self.nodes.append(Node(self.exe, self.workdir, i, first.banner["p2p"], self.extra))
            self.nodes[-1].start()

        def writable():
            hs = [n.health() for n in self.nodes]
            return all(h and h.get("writable") is True and h.get("members") == NODES for h in hs)
        wait_until(writable, 120, f"{NODES} writable members")

    def pids(self):
        return [n.proc.pid for n in self.nodes if n.proc and n.proc.poll() is None]

    def settled(self, keys):
        """Every node stores at least `keys` keys and has nothing undecided or to pull."""
        for n in self.nodes:
            h = n.health()
            if not h or h.get("keys_stored", 0) < keys or h.get("accepted_undecided") != 0 \
                    or h.get("behind") != 0:
                return False
        return True

    def stop(self):
        for n in self.nodes:
            n.send(signal.SIGTERM)
        for n in self.nodes:
            n.wait()


class WrkRuns:
    """One wrk per node, started together; all are killed if anything goes wrong."""

    def __init__(self):
        self.procs = []

    def start(self, nodes, clients, duration_s, lua_path, args_per_node):
        for node, conns, extra in zip(nodes, split_clients(clients, len(nodes)), args_per_node):
            cmd = ["wrk", "-t", "1", "-c", str(conns), "-d", f"{duration_s}s",
                   "--timeout", f"{WRK_TIMEOUT_S}s", "-s", lua_path, node.http, "--"] + extra
            self.procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, text=True,
                                               start_new_session=True))

    def interrupt(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # wrk stops and prints its summary

    def results(self, timeout):
        out = []
        for p in self.procs:
            stdout, stderr = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise BenchError(f"wrk exited {p.returncode}: {stderr[-2000:]}")
            out.append(parse_wrk(stdout))
        self.procs = []
        return out

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.procs = []


def summarize(runs, seconds, cpu_s):
    hist = merge_histograms(r["hist"] for r in runs)
    ok = sum(r["ok"] for r in runs)
    ms = lambda v: None if v is None else v / 1000
    return {
        "ok": ok,
        "errors": sum(r["bad"] + r["socket_errors"] for r in runs),
        "seconds": seconds,
        "per_s": ok / seconds if seconds else 0.0,
        "p50_ms": ms(percentile(hist, 50)),
        "p99_ms": ms(percentile(hist, 99)),
        "cpu_ms_per_op": cpu_s * 1000 / ok if ok else None,
    }


# ---------------------------------------------------------------------------------------------
# Phases


def measure_creates(net, wrk, args, lua, tag, seconds):
    nonce = f"{os.getpid()}{tag}"
    pids = net.pids()
    cpu0 = cpu_seconds(pids)
    wrk.start(net.nodes, args.clients, seconds, lua,
              [[f"{nonce}n{n.index}", str(args.value_bytes)] for n in net.nodes])
    runs = wrk.results(timeout=seconds + 60)
    cpu = cpu_seconds(pids) - cpu0
    return summarize(runs, max(r["duration_us"] for r in runs) / 1e6, cpu)


def fill(net, wrk, args, lua, workdir):
    parts = fill_partition(args.keys, len(net.nodes))
    markers = [os.path.join(workdir, f"fill-done-{i}") for i in range(len(parts))]
    for (_, _, quota), marker in zip(parts, markers):
        if quota == 0:  # fewer keys than nodes: this generator has nothing to answer for
            open(marker, "w").close()
    pids = net.pids()
    cpu0 = cpu_seconds(pids)
    started = time.monotonic()
    # wrk runs until it is interrupted: once every generator marked its PUTs answered, or every
    # node stores N keys (a request that timed out is never answered), or the deadline.
    deadline_s = args.fill_timeout
    wrk.start(net.nodes, args.clients, deadline_s + 60, lua,
              [[str(f), str(s), str(q), str(args.value_bytes), m]
               for (f, s, q), m in zip(parts, markers)])
    last_report, last_check = started, started
    while True:
        now = time.monotonic()
        if all(os.path.exists(m) for m in markers):
            break
        if now - last_check > 5:
            last_check = now
            if all((h or {}).get("keys_stored", 0) >= args.keys for h in
                   (n.health() for n in net.nodes)):
                break
        if now - started > deadline_s:
            raise BenchError(f"fill not done within {deadline_s} s (--fill-timeout)")
        if now - last_report > 10:
            last_report = now
            h = net.nodes[0].health() or {}
            stored = h.get("keys_stored", 0)
            print(f"  fill: {stored:,} of {args.keys:,} keys stored at node 0 "
                  f"({stored / (now - started):,.0f}/s)", flush=True)
        time.sleep(0.05)
    seconds = time.monotonic() - started
    wrk.interrupt()
    runs = wrk.results(timeout=60)
    cpu = cpu_seconds(pids) - cpu0
    result = summarize(runs, seconds, cpu)
    # The fill's latencies include the /health requests of generators that were done first.
    del result["p50_ms"], result["p99_ms"]
    wait_until(lambda: net.settled(args.keys - result["errors"]), 300,
               "every node to store the filled keys with nothing undecided", every=1)
    result["stored"] = [n.health()["keys_stored"] for n in net.nodes]
    return result


def node_footprint(node):
    return {"node": node.index, **node.memory(), **{f"disk_{k}": v
                                                    for k, v in dir_bytes(node.dir).items()}}


def restart(net, node, keys):
    """SIGTERM `node`, start the same command again; seconds to each milestone."""
    t0 = time.monotonic()
    code = node.stop(signal.SIGTERM)
    stopped = time.monotonic()
    if code != 0:
        raise BenchError(f"node {node.index} exited {code} on SIGTERM; log: {node.log_path}")
    node.start()
    banner = time.monotonic()

    def writable():
        h = node.health()
        return bool(h and h.get("writable") is True)
    wait_until(writable, 600, f"restarted node {node.index} to be writable", every=0.02)
    writable_at = time.monotonic()
    probe = random.randrange(keys)
    conn = http.client.HTTPConnection(node.http[len("http://"):], timeout=10)

    def serves():
        try:
            conn.request("GET", f"/store/cap-{probe}")
            r = conn.getresponse()
            body = r.read()
            return r.status == 200 and body.startswith(f"{probe}:".encode())
        except (OSError, http.client.HTTPException):
            return False
    wait_until(serves, 600, f"restarted node {node.index} to serve a stored key", every=0.02)
    served = time.monotonic()
    conn.close()
    return {
        "node": node.index,
        "stop_s": stopped - t0,
        "to_banner_s": banner - stopped,
        "to_writable_s": writable_at - stopped,
        "to_serving_s": served - stopped,
        **{f"after_{k}": v for k, v in node.memory().items()},
    }


def drop_os_caches():
    """Drops the OS page cache (root only), so that the next reads of the database go to the
    disk. Whether it could."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def join(net, keys):
    """A fourth node joins `net` (bootstrap: node 0): seconds until it is ready and has pulled
    every decision, its peak memory, the members' largest RSS sampled meanwhile. It is stopped
    with SIGKILL after (it stays a member, reported down)."""
    joiner = Node(net.exe, net.workdir, NODES, net.nodes[0].banner["p2p"], net.extra)
    net.nodes.append(joiner)
    t0 = time.monotonic()
    joiner.start()
    members_rss = 0
    done = False
    while time.monotonic() - t0 < 3600:
        for n in net.nodes[:NODES]:
            members_rss = max(members_rss, n.memory()["VmRSS"])
        h = joiner.health()
        if h and h.get("ready") and h.get("keys_stored", 0) >= keys and h.get("behind") == 0:
            done = True
            break
        time.sleep(0.5)
    if not done:
        raise BenchError(f"the joiner did not copy {keys} keys within an hour; log: "
                         f"{joiner.log_path}")
    seconds = time.monotonic() - t0
    result = {"seconds": seconds, "joiner": node_footprint(joiner),
              "members_max_VmRSS": members_rss}
    joiner.stop(signal.SIGKILL)
    return result


def timed_gets(node, indices):
    """One client, one connection: each key read once. Latencies in µs; wrong answers counted."""
    conn = http.client.HTTPConnection(node.http[len("http://"):], timeout=10)
    latencies, wrong = [], 0
    try:
        for i in indices:
            t = time.perf_counter()
            conn.request("GET", f"/store/cap-{i}")
            r = conn.getresponse()
            body = r.read()
            latencies.append(int((time.perf_counter() - t) * 1e6))
            if r.status != 200 or not body.startswith(f"{i}:".encode()):
                wrong += 1
    finally:
        conn.close()
    hist = histogram(latencies)
    return {"reads": len(latencies), "wrong": wrong,
            "p50_ms": percentile(hist, 50) / 1000, "p99_ms": percentile(hist, 99) / 1000}


def measure_empty(args, wrk, lua, workdir, rep, networks):
    """Creates on a fresh, empty network (after the warm-up), which is then stopped."""
    empty = Network(args.replicator, os.path.join(workdir, f"empty-{rep}"), node_flags(args))
    networks.append(empty)
    empty.start()
    idle = [node_footprint(n) for n in empty.nodes]
    if args.warmup > 0:
        measure_creates(empty, wrk, args, lua, f"warmup{rep}", args.warmup)
    warmup_keys = empty.nodes[0].health()["keys_stored"]
    result = measure_creates(empty, wrk, args, lua, f"empty{rep}", args.duration)
    result["keys_before"] = warmup_keys
    print_creates(f"empty network {rep + 1}/{args.reps}", result)
    empty.stop()
    shutil.rmtree(empty.workdir, ignore_errors=True)
    return result, idle


def node_flags(args):
    return ["--cache-mb", str(args.cache_mb)] if args.cache_mb is not None else []


def median_run(runs):
    """Per figure, the median over the runs (the middle one, or the mean of the two middle)."""
    out = {}
    for k in runs[0]:
        values = sorted(r[k] for r in runs)
        mid = len(values) // 2
        out[k] = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    return out


def run(args):
    workdir = tempfile.mkdtemp(prefix="capacity-bench-")
    lua = {}
    for name, text in (("fill", LUA_FILL), ("create", LUA_CREATE)):
        lua[name] = os.path.join(workdir, f"{name}.lua")
        with open(lua[name], "w") as f:
            f.write(text)
    wrk = WrkRuns()
    networks = []
    report = {"keys": args.keys, "value_bytes": args.value_bytes, "clients": args.clients,
              "duration_s": args.duration, "date": time.strftime("%Y-%m-%d"),
              "cores": os.cpu_count()}
    try:
        print(f"empty network: {args.clients} clients, {args.warmup} s warm-up, "
              f"{args.duration} s measured", flush=True)
        empties = []
        first_empty, report["empty_idle"] = measure_empty(args, wrk, lua["create"], workdir, 0,
                                                          networks)
        empties.append(first_empty)

        print(f"fill: {args.keys:,} keys of {args.value_bytes} bytes, {args.clients} clients",
              flush=True)
        net = Network(args.replicator, os.path.join(workdir, "full"), node_flags(args))
        networks.append(net)
        net.start()
        report["fill"] = fill(net, wrk, args, lua["fill"], workdir)
        print(f"  filled in {report['fill']['seconds']:.1f} s: "
              f"{report['fill']['per_s']:,.0f} creates/s", flush=True)
        report["full"] = [node_footprint(n) for n in net.nodes]

        restarted = net.nodes[-1]
        print(f"restart of node {restarted.index}", flush=True)
        report["restart"] = restart(net, restarted, args.keys)
        sample = random.sample(range(args.keys), min(args.get_samples, args.keys))
        report["os_cache_dropped"] = drop_os_caches()
        report["gets_cold"] = timed_gets(restarted, sample)
        random.shuffle(sample)
        report["gets_warm"] = timed_gets(restarted, sample)

        print(f"creates with {args.keys:,} keys stored", flush=True)
        wait_until(lambda: net.settled(args.keys - report["fill"]["errors"]), 300,
                   "every node caught up after the restart", every=0.5)
        wait_until(lambda: all((n.health() or {}).get("writable") is True for n in net.nodes),
                   300, "every node writable after the restart", every=0.5)
        # Empty and full measured in turn, each empty one on a fresh network, so that a change
        # in the machine's load does not fall on one side only; medians over --reps.
        fulls = []
        for rep in range(args.reps):
            if rep > 0:
                empties.append(measure_empty(args, wrk, lua["create"], workdir, rep,
                                             networks)[0])
            fulls.append(measure_creates(net, wrk, args, lua["create"], f"full{rep}",
                                         args.duration))
            print_creates(f"{args.keys:,} keys stored {rep + 1}/{args.reps}", fulls[-1])
        report["creates_empty_runs"], report["creates_full_runs"] = empties, fulls
        report["creates_empty"] = median_run(empties)
        report["creates_full"] = median_run(fulls)
        if not args.no_join:
            print("a fourth node joins the full network", flush=True)
            stored = net.nodes[0].health()["keys_stored"]
            report["join"] = join(net, stored)
        net.stop()
    finally:
        wrk.kill()
        for n in networks:
            n.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


# ---------------------------------------------------------------------------------------------
# Output


def mib(b):
    return f"{b / 2**20:,.1f}"


def print_creates(what, r):
    print(f"  creates ({what}): {r['per_s']:,.0f}/s p50 {r['p50_ms']:.1f} ms "
          f"p99 {r['p99_ms']:.1f} ms errors {r['errors']}", flush=True)


def print_tables(report):
    n, s = report["keys"], report["value_bytes"]
    f = report["fill"]
    print()
    print(f"{n:,} keys of {s} bytes on a 1x3 network, {report['date']}, "
          f"{report['cores']} cores")
    print()
    print(f"Fill ({report['clients']} clients over 3 nodes): {f['seconds']:.0f} s, "
          f"{f['per_s']:,.0f} creates/s, errors {f['errors']}, "
          f"server CPU {f['cpu_ms_per_op']:.2f} ms per create, "
          f"stored {'/'.join(f'{k:,}' for k in f['stored'])}")
    print()
    raw = n * s
    print("| node | RSS MiB (empty) | RSS MiB | peak RSS (VmHWM) MiB | database MiB | "
          "write-ahead log MiB | data dir MiB | (RSS - empty RSS) / raw data |")
    print("|---|---|---|---|---|---|---|---|")
    for empty, full in zip(report["empty_idle"], report["full"]):
        print(f"| {full['node']} | {mib(empty['VmRSS'])} | {mib(full['VmRSS'])} | "
              f"{mib(full['VmHWM'])} | {mib(full['disk_redb'])} | {mib(full['disk_wal'])} | "
              f"{mib(full['disk_total'])} | {(full['VmRSS'] - empty['VmRSS']) / raw:.2f}x |")
    r = report["restart"]
    print()
    print(f"raw data (keys x value bytes): {mib(raw)} MiB")
    print()
    print(f"| restart of node {r['node']} (SIGTERM, same command) | seconds |")
    print("|---|---|")
    print(f"| SIGTERM to exit | {r['stop_s']:.2f} |")
    print(f"| start to banner | {r['to_banner_s']:.2f} |")
    print(f"| start to `/health` writable | {r['to_writable_s']:.2f} |")
    print(f"| start to a stored key served | {r['to_serving_s']:.2f} |")
    print(f"| RSS after restart, MiB (VmHWM) | {mib(r['after_VmRSS'])} "
          f"({mib(r['after_VmHWM'])}) |")
    c, w = report["gets_cold"], report["gets_warm"]
    print()
    dropped = "OS page cache dropped first" if report.get("os_cache_dropped") else \
        "OS page cache NOT dropped (not root)"
    print(f"| GET on the restarted node, 1 client ({dropped}) | reads | p50 ms | p99 ms | "
          f"wrong answers |")
    print("|---|---|---|---|---|")
    print(f"| cold (never read since the restart) | {c['reads']} | {c['p50_ms']:.2f} | "
          f"{c['p99_ms']:.2f} | {c['wrong']} |")
    print(f"| warm (the same keys again) | {w['reads']} | {w['p50_ms']:.2f} | "
          f"{w['p99_ms']:.2f} | {w['wrong']} |")
    e, l = report["creates_empty"], report["creates_full"]
    print()
    reps = len(report["creates_full_runs"])
    print(f"| creates, {report['clients']} clients, {report['duration_s']} s, "
          f"medians of {reps} runs in turn | creates/s | "
          f"p50 ms | p99 ms | errors | server CPU-ms per create |")
    print("|---|---|---|---|---|---|")
    for name, x in ((f"fresh empty network ({e['keys_before']:,.0f} warm-up keys)", e),
                    (f"{n:,} keys stored", l)):
        print(f"| {name} | {x['per_s']:,.0f} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} | "
              f"{x['errors']:.0f} | {x['cpu_ms_per_op']:.2f} |")
    print(f"| stored / empty | {l['per_s'] / e['per_s']:.2f}x | "
          f"{l['p50_ms'] / e['p50_ms']:.2f}x | {l['p99_ms'] / e['p99_ms']:.2f}x | | |")
    j = report.get("join")
    if j:
        print()
        print("| a fourth node joins (copies every key) | |")
        print("|---|---|")
        print(f"| seconds until ready with every key | {j['seconds']:.1f} |")
        print(f"| joiner: RSS / peak RSS (VmHWM), MiB | {mib(j['joiner']['VmRSS'])} / "
              f"{mib(j['joiner']['VmHWM'])} |")
        print(f"| joiner: database MiB | {mib(j['joiner']['disk_redb'])} |")
        print(f"| members: largest RSS during the copy, MiB | {mib(j['members_max_VmRSS'])} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--value-bytes", type=int, default=1024)
    ap.add_argument("--clients", type=int, default=64,
                    help="connections of the fill and of the create runs, over the 3 nodes")
    ap.add_argument("--duration", type=int, default=10, help="seconds of each create run")
    ap.add_argument("--reps", type=int, default=3,
                    help="create runs on the full network, each after one on a fresh empty one")
    ap.add_argument("--warmup", type=int, default=3,
                    help="seconds of unmeasured creates on the empty network first")
    ap.add_argument("--get-samples", type=int, default=2000,
                    help="random stored keys read cold, then warm")
    ap.add_argument("--cache-mb", type=int, help="--cache-mb of every node (default: the node's)")
    ap.add_argument("--no-join", action="store_true", help="skip the fourth node's join")
    ap.add_argument("--fill-timeout", type=int, default=3600, help="give up filling after this")
    ap.add_argument("--quick", action="store_true", help="N=50,000 (a fast check)")
    ap.add_argument("--replicator", default="target/release/replicator")
    ap.add_argument("--json", help="also write every figure to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (data dirs, logs)")
    ap.add_argument("--self-test", action="store_true",
                    help="check the pure parts (percentiles, parsing) and exit")
    args = ap.parse_args()
    if args.self_test:
        sys.exit(self_test())
    if args.quick:
        args.keys = 50_000
    if args.keys < 1 or args.reps < 1 or not 16 <= args.value_bytes <= 65536:
        ap.error("--keys and --reps must be at least 1 and --value-bytes within 16..65536")
    if shutil.which("wrk") is None:
        print("capacity_bench: missing: wrk (Debian: apt-get install wrk)", file=sys.stderr)
        sys.exit(2)
    if not os.access(args.replicator, os.X_OK):
        print(f"capacity_bench: {args.replicator} not found: build it with "
              "`cargo build --release -p replicator-node`", file=sys.stderr)
        sys.exit(2)
    # SIGTERM and SIGINT end the run through the `finally` that stops every process it started
    # (SIGINT set explicitly: a shell that starts this in the background ignores it).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    try:
        report = run(args)
    except BenchError as e:
        print(f"capacity_bench: {e}", file=sys.stderr)
        sys.exit(1)
    print_tables(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
