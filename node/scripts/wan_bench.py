#!/usr/bin/env python3
"""Side by side over a simulated WAN: replicator (3 regions x 3 nodes) and etcd (3 members, one
per region), every node in its own network namespace, clients in every region.

Needs root, `ip` (iproute2), `iptables`, `wrk` and `etcd` (Debian: apt-get install iproute2
iptables wrk etcd-server); installs nothing and says what is missing (exit 77).

Every process gets a namespace named PREFIX-<name> (PREFIX = wanb<pid>): r<R>n<N> for the
replicator nodes, r<R>etcd for the etcd members, r<R>client for each region's load generator,
and PREFIX-hub, which holds the bridge they all hang off by veth pairs (10.213.<R>.x/16; nothing
is added to the host's own namespace, interfaces or routes). Delays are made in user space
(no netem on this kernel): `wan-proxy` (the workspace's wan-proxy crate) in every namespace,
fed by an iptables REDIRECT of outgoing TCP to the other namespaces, forwards every chunk after
the one-way delay of its pair of namespaces: --region-rtt-ms between regions, --local-rtt-ms
inside one (under 1 ms that is the proxy's own latency), optional --jitter-ms and --loss.
Before measuring it probes the round trips through the proxies (node/scripts/wan_probe.py, a
TCP echo) and stops if they are off by more than --rtt-tolerance-ms + 10 %.

Then, interleaved (replicator, etcd, replicator, ...) for --reps repetitions of --duration s,
at every --clients count per region (one wrk per node, each with its share of the region's
connections, or all through the region's first node with --through one; etcd's region has one
member):
  creates  fresh keys (replicator PUT /store/KEY; etcd a create-if-absent txn)
  reads    keys stored before (replicator GET /store/KEY; etcd range, linearizable and
           serializable)
  slow     creates with one node of every replicator cluster and one etcd follower
           --slow-ms slower one way (every message to or from it); replicator's clients
           then use the two other nodes of their region, etcd's keep their region's member.
Prints the medians: creates or reads per second, p50 and p99 in every region, errors, the
proxies' CPU (percent of one core) and server CPU per operation. Every process and namespace
it made is removed at the end, also on an error, Ctrl-C or SIGTERM (after a SIGKILL:
`--cleanup`).

    sudo python3 node/scripts/wan_bench.py [--quick] [--reps 3] [--duration 8] [--clients 1,16]
        [--region-rtt-ms 40] [--local-rtt-ms 0.2] [--slow-ms 50] [--jitter-ms 0] [--loss 0]
        [--cases creates,reads,slow] [--replicator target/release/replicator]
        [--proxy target/release/wan-proxy] [--json FILE] [--keep]
    python3 node/scripts/wan_bench.py --self-test      # the pure parts; no root needed
"""

import argparse
import base64
import ctypes
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
import bench_vs_etcd as loopback  # noqa: E402  (its Lua scripts, wrk parsing and percentiles)

SUBNET = "10.213.0.0/16"
HTTP_PORT, P2P_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT = 8080, 4001, 2379, 2380
READ_KEYS = 200
CLONE_NEWNET = 0x40000000
SKIP = 77


# ---------------------------------------------------------------- the topology and its delays

class Space:
    """One network namespace: a replicator node, an etcd member or a region's clients."""

    def __init__(self, name, region, ip, role):
        self.name, self.region, self.ip, self.role = name, region, ip, role

    def __repr__(self):
        return self.name


def topology(regions=3, nodes=3):
    spaces = []
    for r in range(regions):
        spaces += [Space(f"r{r}n{n}", r, f"10.213.{r}.{n + 1}", "replicator") for n in range(nodes)]
        spaces.append(Space(f"r{r}etcd", r, f"10.213.{r}.10", "etcd"))
        spaces.append(Space(f"r{r}client", r, f"10.213.{r}.20", "client"))
    return spaces


def one_way_ms(a, b, region_rtt_ms, local_rtt_ms, slow_ms=0.0, slow=()):
    """The one-way delay from namespace a to b: half the round trip of their regions' link,
    plus slow_ms when either end is a slow node (every message to or from it is later)."""
    if a.name == b.name:
        return 0.0
    ms = (local_rtt_ms if a.region == b.region else region_rtt_ms) / 2
    if a.name in slow or b.name in slow:
        ms += slow_ms
    return ms


def proxy_config(src, spaces, args, slow=()):
    """What src's proxy reads: the forward and back delay to every other namespace's address."""
    d = lambda a, b: one_way_ms(a, b, args.region_rtt_ms, args.local_rtt_ms, args.slow_ms, slow)
    return {"table": {s.ip: [d(src, s), d(s, src)] for s in spaces if s is not src},
            "jitter_ms": args.jitter_ms, "loss": args.loss, "retransmit_ms": args.retransmit_ms}


def expected_rtt_ms(config, ip):
    """The set round trip to ip: both one-way delays, plus the mean jitter of two chunks."""
    fwd, back = config["table"][ip]
    return fwd + back + config["jitter_ms"]


def rtt_ok(measured_ms, expected_ms, tolerance_ms):
    """A probed round trip is right within tolerance_ms plus 10 % (timers, a busy machine)."""
    return abs(measured_ms - expected_ms) <= tolerance_ms + 0.1 * expected_ms


def ratio(a, b):
    return a / b if b else float("nan")


# ---------------------------------------------------------------- namespaces and processes

LIBC = ctypes.CDLL(None, use_errno=True)


class InNamespace:
    """Runs the block (this thread's sockets) inside a named network namespace."""

    def __init__(self, ns):
        self.ns = ns

    def __enter__(self):
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/var/run/netns/{self.ns}", os.O_RDONLY)
        try:
            if LIBC.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.ns}")
        finally:
            os.close(fd)

    def __exit__(self, *exc):
        LIBC.setns(self.home, CLONE_NEWNET)
        os.close(self.home)


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_in(ns, url, body=None, timeout=3.0):
    """(status, body) of one request made from inside ns; (None, b'') if it failed."""
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    with InNamespace(ns):
        try:
            with NO_PROXY.open(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (OSError, ValueError):
            return None, b""


def sh(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.3)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


class Lab:
    """The namespaces, the proxies and every process started in them; close() removes all."""

    def __init__(self, args):
        self.args = args
        self.prefix = f"wanb{os.getpid()}"
        self.spaces = topology()
        self.by_name = {s.name: s for s in self.spaces}
        self.workdir = tempfile.mkdtemp(prefix="wan-bench-")
        self.namespaces, self.procs, self.proxies = [], [], {}

    def ns(self, space):
        return f"{self.prefix}-{space if isinstance(space, str) else space.name}"

    def build(self):
        hub = self.ns("hub")
        self._add_ns(hub)
        sh("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", hub, "link", "set", "br0", "up")
        for i, s in enumerate(self.spaces):
            ns = self.ns(s)
            self._add_ns(ns)
            sh("ip", "-n", hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            sh("ip", "-n", hub, "link", "set", f"v{i}", "master", "br0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{s.ip}/16", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def _add_ns(self, ns):
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)

    def start(self, space, cmd, log_name, **kw):
        log = open(os.path.join(self.workdir, log_name), "w")
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(space)] + cmd, stderr=log,
                             stdout=kw.pop("stdout", log), start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def set_delays(self, slow=()):
        for s in self.spaces:
            path = os.path.join(self.workdir, f"delays-{s.name}.json")
            with open(path + ".tmp", "w") as f:
                json.dump(proxy_config(s, self.spaces, self.args, slow), f)
            os.replace(path + ".tmp", path)
            if s.name in self.proxies:
                self.proxies[s.name].send_signal(signal.SIGHUP)
        self.slow = set(slow)

    def start_proxies(self):
        """A wan-proxy in every namespace, then the rule that sends it every connection to
        another namespace (connections to itself stay direct, the proxy's own marked ones
        go straight out)."""
        self.set_delays()
        for s in self.spaces:
            p = self.start(s, [self.args.proxy, os.path.join(self.workdir, f"delays-{s.name}.json"),
                               s.ip], f"proxy-{s.name}.log", stdout=subprocess.PIPE, text=True)
            m = re.match(r"ready proxy_port (\d+) mark (\d+) echo_port (\d+)$",
                         p.stdout.readline().strip())
            if not m:
                raise RuntimeError(f"the proxy in {self.ns(s)} did not start: "
                                   f"{os.path.join(self.workdir, f'proxy-{s.name}.log')}")
            port, mark, self.echo_port = m.groups()
            self.proxies[s.name] = p
            ipt = ["ip", "netns", "exec", self.ns(s), "iptables", "-t", "nat", "-A", "OUTPUT",
                   "-p", "tcp"]
            sh(*ipt, "-d", s.ip, "-j", "RETURN")
            sh(*ipt, "-d", SUBNET, "-m", "mark", "!", "--mark", mark, "-j", "REDIRECT",
               "--to-ports", port)

    def probe(self, src, dsts, count=15):
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns(src), sys.executable,
             os.path.join(HERE, "wan_probe.py"), ",".join(d.ip for d in dsts), self.echo_port,
             str(count)], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"probe from {src} failed: {out.stderr.strip()}")
        return json.loads(out.stdout)

    def check_rtts(self, pairs, label):
        """Probe every (src, dst) pair; print and return the measured round trips; raise if
        one is off by more than the tolerance."""
        bad, measured = [], {}
        by_src = {}
        for src, dst in pairs:
            by_src.setdefault(src, []).append(dst)
        for src, dsts in by_src.items():
            got = self.probe(self.by_name[src], [self.by_name[d] for d in dsts])
            config = proxy_config(self.by_name[src], self.spaces, self.args, self.slow)
            for d in dsts:
                ms, want = got[self.by_name[d].ip], expected_rtt_ms(config, self.by_name[d].ip)
                measured[(src, d)] = ms
                ok = rtt_ok(ms, want, self.args.rtt_tolerance_ms)
                print(f"  {label}: {src:>9} -> {d:<9} round trip {ms:7.2f} ms "
                      f"(set {want:.1f} ms){'' if ok else '  OFF'}", flush=True)
                if not ok:
                    bad.append(f"{src}->{d} {ms:.2f} ms, set {want:.1f}")
        if bad:
            raise RuntimeError("probed round trips are off: " + "; ".join(bad))
        return measured

    def proxy_cpu_s(self):
        return loopback.cpu_seconds([p.pid for p in self.proxies.values()])

    def close(self):
        # A second Ctrl-C or SIGTERM must not cut the clean-up short (it is bounded: ~20 s).
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        remove_namespaces(reversed(self.namespaces))
        left = [ns for ns in list_namespaces() if ns.startswith(self.prefix + "-")]
        if left:
            print(f"wan_bench: could not remove namespaces {left}", file=sys.stderr)
        if self.args.keep:
            print(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def list_namespaces():
    return [line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()]


def remove_namespaces(names):
    """Stops whatever still runs in them, then deletes them."""
    names = list(names)
    for ns in names:
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def cleanup_leftovers():
    """The namespaces (and their processes) of runs that were killed before cleaning up:
    wanb<pid>-* whose pid no longer runs."""
    stale = [ns for ns in list_namespaces()
             if (m := re.match(r"wanb(\d+)-", ns)) and not os.path.exists(f"/proc/{m.group(1)}")]
    remove_namespaces(stale)
    print(f"removed {len(stale)} namespaces left by killed runs" + (f": {stale}" if stale else ""))


# ---------------------------------------------------------------- the two systems

class System:
    """A system under test: which node every region's clients use, and its Lua scripts."""

    def __init__(self, name, region_urls, lua, server_pids):
        self.name, self.region_urls, self.lua, self.server_pids = name, region_urls, lua, server_pids


def start_etcd(lab):
    members = [s for s in lab.spaces if s.role == "etcd"]
    cluster = ",".join(f"e{s.region}=http://{s.ip}:{ETCD_PEER_PORT}" for s in members)
    procs = []
    for s in members:
        procs.append(lab.start(s, [
            "etcd", "--name", f"e{s.region}", "--data-dir", os.path.join(lab.workdir, s.name),
            "--listen-client-urls", f"http://{s.ip}:{ETCD_CLIENT_PORT}",
            "--advertise-client-urls", f"http://{s.ip}:{ETCD_CLIENT_PORT}",
            "--listen-peer-urls", f"http://{s.ip}:{ETCD_PEER_PORT}",
            "--initial-advertise-peer-urls", f"http://{s.ip}:{ETCD_PEER_PORT}",
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", lab.prefix], f"{s.name}.log"))
    urls = [[f"http://{s.ip}:{ETCD_CLIENT_PORT}"] for s in members]
    client = lambda r: lab.ns(f"r{r}client")
    wait_until(lambda: all(http_in(client(r), u[0] + "/health")[0] == 200
                           for r, u in enumerate(urls)), 90, "etcd to be healthy")
    return urls, procs


def etcd_leader_region(lab, urls):
    """The region whose member leads etcd now (None if the members disagree or fail)."""
    leaders, ids = set(), {}
    for r, u in enumerate(urls):
        status, body = http_in(lab.ns(f"r{r}client"), u[0] + "/v3/maintenance/status", b"{}")
        if status != 200:
            return None
        st = json.loads(body)
        ids[st["header"]["member_id"]] = r
        leaders.add(st["leader"])
    return ids.get(leaders.pop()) if len(leaders) == 1 else None


def start_replicator(lab, exe):
    key = os.path.join(lab.workdir, "network.key")
    sh(exe, "keygen", key)
    nodes = [s for s in lab.spaces if s.role == "replicator"]
    procs, bootstrap = [], None
    for s in nodes:
        cmd = [exe, "run", "--cid", f"region{s.region}", "--listen", f"/ip4/{s.ip}/tcp/{P2P_PORT}",
               "--http", f"{s.ip}:{HTTP_PORT}", "--data-dir", os.path.join(lab.workdir, s.name),
               "--network-key", key, "--log-level", "warn"]
        if bootstrap:
            cmd += ["--bootstrap", bootstrap]
        p = lab.start(s, cmd, f"{s.name}.log", stdout=subprocess.PIPE, text=True)
        procs.append(p)
        if bootstrap is None:
            for line in p.stdout:
                m = re.search(r"listening on: (/ip4/\S+/p2p/\S+)", line)
                if m:
                    bootstrap = m.group(1)
                    break
            if bootstrap is None:
                raise RuntimeError(f"{s.name} did not start: {lab.workdir}/{s.name}.log")
        # Keep reading its stdout, so that it never blocks on a full pipe.
        threading.Thread(target=lambda out=p.stdout: [None for _ in out], daemon=True).start()
    urls = [[f"http://{s.ip}:{HTTP_PORT}" for s in nodes if s.region == r] for r in range(3)]

    def writable():
        for r, region in enumerate(urls):
            for u in region:
                status, body = http_in(lab.ns(f"r{r}client"), u + "/health")
                if status != 200:
                    return False
                h = json.loads(body)
                if h.get("writable") is not True or h.get("members") != len(nodes):
                    return False
        return True
    wait_until(writable, 180, "nine writable replicator members")
    return urls, procs


LUA_REPLICATOR_READ = loopback.LUA_COMMON + f"""
function request()
  n = n + 1
  return wrk.format("GET", "/store/read-" .. ((n * 7 + tid) % {READ_KEYS}))
end
function is_ok(status, body) return status == 200 end
"""

LUA_REPLICATOR_PRELOAD = loopback.LUA_COMMON + f"""
function request()
  n = n + 1
  return wrk.format("PUT", "/store/read-" .. (n % {READ_KEYS}), nil, "stored-" .. (n % {READ_KEYS}))
end
function is_ok(status, body) return status == 201 or status == 409 end
"""


def lua_etcd_read(serializable):
    extra = ',"serializable":true' if serializable else ""
    return loopback.LUA_COMMON + loopback.LUA_B64 + f"""
function request()
  n = n + 1
  local body = '{{"key":"' .. b64("read-" .. ((n * 7 + tid) % {READ_KEYS})) .. '"{extra}}}'
  return wrk.format("POST", "/v3/kv/range", {{["Content-Type"] = "application/json"}}, body)
end
function is_ok(status, body) return status == 200 and body:find('"kvs"', 1, true) ~= nil end
"""


LUA_ETCD_PRELOAD = loopback.LUA_COMMON + loopback.LUA_B64 + f"""
function request()
  n = n + 1
  local body = '{{"key":"' .. b64("read-" .. (n % {READ_KEYS})) .. '","value":"' .. b64("stored") .. '"}}'
  return wrk.format("POST", "/v3/kv/put", {{["Content-Type"] = "application/json"}}, body)
end
function is_ok(status, body) return status == 200 end
"""


def missing_read_keys(lab, name, urls):
    """The read keys some region's first node (member) does not answer 200 for."""
    missing = set()
    for r, region in enumerate(urls):
        for i in range(READ_KEYS):
            if name == "replicator":
                status, _ = http_in(lab.ns(f"r{r}client"), f"{region[0]}/store/read-{i}")
            else:
                key = base64.b64encode(f"read-{i}".encode()).decode()
                status, body = http_in(lab.ns(f"r{r}client"), region[0] + "/v3/kv/range",
                                       json.dumps({"key": key, "serializable": True}).encode())
                status = status if status == 200 and b'"kvs"' in body else None
            if status != 200:
                missing.add(i)
    return missing


def preload(lab, system, lua_path):
    """Stores the keys the reads ask for, from region 0, until every region serves them all."""
    for attempt in range(4):
        run_load(lab, system, lua_path, 16, 3, f"{os.getpid()}pre{attempt}",
                 system.region_urls[:1])
        missing = missing_read_keys(lab, system.name, system.region_urls)
        if not missing:
            return
    raise RuntimeError(f"{system.name}: {len(missing)} of {READ_KEYS} read keys still missing "
                       "after preloading")


# ---------------------------------------------------------------- one measured run

def summarize(run):
    """A merged wrk run as figures: operations/s, p50, p99 (ms), errors."""
    return {"ops": ratio(run["ok"], run["seconds"]),
            "p50_ms": loopback.percentile_ms(run["hist"], 50),
            "p99_ms": loopback.percentile_ms(run["hist"], 99), "errors": run["errors"]}


def run_load(lab, system, lua_path, clients, duration, nonce, region_urls=None):
    """clients connections per region, spread over that region's nodes (one wrk each, all
    regions at once). Per region and overall figures, proxy CPU (% of one core) and server
    CPU-ms per operation."""
    region_urls = region_urls or system.region_urls
    procs = []
    for r, urls in enumerate(region_urls):
        for i, (u, c) in enumerate(zip(urls, loopback.shares(clients, len(urls)))):
            cmd = loopback.wrk_command(u, c, duration, lua_path, f"{nonce}r{r}n{i}", 1)
            procs.append((r, subprocess.Popen(
                ["ip", "netns", "exec", lab.ns(f"r{r}client")] + cmd, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)))
    pids = system.server_pids()
    proxy0, server0, t0 = lab.proxy_cpu_s(), loopback.cpu_seconds(pids), time.monotonic()
    by_region = {}
    for r, p in procs:
        out, err = p.communicate(timeout=duration + 60)
        parsed = loopback.parse_wrk(out)
        if parsed is None:
            raise RuntimeError(f"wrk printed no summary for {system.name}: {out}\n{err}")
        by_region.setdefault(r, []).append(parsed)
    elapsed = time.monotonic() - t0
    proxy1, server1 = lab.proxy_cpu_s(), loopback.cpu_seconds(pids)
    merged = loopback.merge_runs([x for runs in by_region.values() for x in runs])
    result = summarize(merged)
    result["regions"] = [summarize(loopback.merge_runs(by_region[r])) for r in sorted(by_region)]
    result["proxy_cpu_pct"] = (proxy1 - proxy0) / elapsed * 100
    result["server_cpu_ms_per_op"] = ratio((server1 - server0) * 1000, merged["ok"])
    return result


# ---------------------------------------------------------------- the benchmark

def check_prerequisites(args):
    missing = [f"{tool} (apt-get install {pkg})" for tool, pkg in
               (("ip", "iproute2"), ("iptables", "iptables"), ("wrk", "wrk"), ("etcd", "etcd-server"))
               if shutil.which(tool) is None]
    if not os.access(args.replicator, os.X_OK):
        missing.append(f"{args.replicator} (cargo build --release -p replicator-node)")
    if not os.access(args.proxy, os.X_OK):
        missing.append(f"{args.proxy} (cargo build --release -p wan-proxy)")
    if os.geteuid() != 0:
        missing.append("root (network namespaces and iptables need it: run with sudo)")
    if missing:
        print("wan_bench: skipped, missing: " + "; ".join(missing), file=sys.stderr)
        sys.exit(SKIP)


def measure(lab, systems, lua, plan, args, results, label):
    """plan: [(load, clients, [system names])]; every entry once per rep, systems interleaved."""
    for rep in range(args.reps):
        for load, clients, names in plan:
            for name in names:
                s = systems[name]
                nonce = f"{os.getpid()}{label}{rep}{load}{clients}"
                urls = s.region_urls if label != "slow" else s.slow_urls
                r = run_load(lab, s, lua[(name, load)], clients, args.duration, nonce, urls)
                results.setdefault((label, load, clients, name), []).append(r)
                regions = "  ".join(f"r{i} {x['p50_ms']:6.1f}/{x['p99_ms']:6.1f}"
                                    for i, x in enumerate(r["regions"]))
                print(f"rep {rep + 1}/{args.reps} {label:<6} {load:<7} {clients:>2}/region "
                      f"{name:<22} {r['ops']:7.0f}/s  p50/p99 ms {regions}  errors "
                      f"{r['errors']}  proxies {r['proxy_cpu_pct']:4.0f}% cpu", flush=True)


SYSTEM_LABEL = {"replicator": "replicator 3x3", "etcd": "etcd",
                "etcd-serializable": "etcd (serializable)"}


def print_tables(results, args, rtts, leader, slow_member):
    med = lambda rs, f: statistics.median(f(r) for r in rs)
    print()
    print(f"medians of {args.reps} interleaved runs of {args.duration} s, "
          f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; round trips set "
          f"{args.region_rtt_ms} ms between regions, {args.local_rtt_ms} ms inside one"
          f"{f', jitter {args.jitter_ms} ms' if args.jitter_ms else ''}"
          f"{f', loss {args.loss}' if args.loss else ''}; measured: "
          + ", ".join(f"{a}->{b} {ms:.1f} ms" for (a, b), ms in rtts.items()))
    print(f"etcd leader in region {leader}" + (f"; slow etcd member: the follower in region "
                                               f"{slow_member}" if slow_member is not None else ""))
    print("| case | load | clients per region | system | ops/s | p50 ms r0 / r1 / r2 | "
          "p99 ms r0 / r1 / r2 | errors | proxies' CPU | server CPU-ms per op | ops/s vs etcd |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (label, load, clients, name), rs in results.items():
        ops = med(rs, lambda r: r["ops"])
        base = results.get((label, load, clients, "etcd"))
        vs = f"{ratio(ops, med(base, lambda r: r['ops'])):.2f}x" if base else "-"
        p = lambda k: " / ".join(f"{med(rs, lambda r: r['regions'][i][k]):.1f}"
                                 for i in range(len(rs[0]["regions"])))
        print(f"| {label} | {load} | {clients} | {SYSTEM_LABEL[name]} | {ops:.0f} | "
              f"{p('p50_ms')} | {p('p99_ms')} | {med(rs, lambda r: r['errors']):.0f} | "
              f"{med(rs, lambda r: r['proxy_cpu_pct']):.0f}% | "
              f"{med(rs, lambda r: r['server_cpu_ms_per_op']):.2f} | {vs} |")


def region_round_trip(rtts, set_ms):
    """The measured round trip between replicator nodes of two regions (the mean of the
    probes), leaving out the slow case's probes."""
    between = [ms for (a, b), ms in rtts.items()
               if a[:2] != b[:2] and "etcd" not in a + b and ms < 2 * set_ms]
    return statistics.mean(between) if between else set_ms


def target_verdicts(results, region_rtt_ms):
    """The README's targets across regions ("Across regions"), checked against one run's
    medians: [(the line to print, whether it is met)]. Only what the run measured is judged."""
    def p50s(key):
        rs = results[key]
        return [statistics.median(r["regions"][i]["p50_ms"] for r in rs)
                for i in range(len(rs[0]["regions"]))]
    lines = []
    create = ("normal", "creates", 1, "replicator")
    if create in results:
        mine = p50s(create)
        worst = max(mine) / region_rtt_ms
        lines.append((f"creates at 1 client per region: p50 {worst:.2f}x the round trip of "
                      f"{region_rtt_ms:.1f} ms in the slowest region (target: at most 1.15x)",
                      worst <= 1.15))
        etcd = ("normal", "creates", 1, "etcd")
        if etcd in results:
            x = statistics.mean(mine) / statistics.mean(p50s(etcd))
            lines.append((f"creates at 1 client per region: p50 averaged over the regions "
                          f"{x:.2f}x etcd's (target: at most 0.6x)", x <= 0.6))
    reads = ("normal", "reads", 1, "replicator")
    if reads in results:
        worst = max(p50s(reads))
        lines.append((f"reads of stored keys: p50 {worst:.1f} ms in the slowest region, local "
                      f"(target: under a tenth of the round trip)", worst < region_rtt_ms / 10))
    for (label, load, clients, name) in results:
        normal = ("normal", load, clients, name)
        if label != "slow" or name != "replicator" or normal not in results:
            continue
        x = max(s / n for s, n in zip(p50s((label, load, clients, name)), p50s(normal)))
        lines.append((f"a slow node per cluster, {clients} client(s) per region: create p50 "
                      f"{x:.2f}x the run without it in the most affected region (target: at "
                      f"most 1.2x)", x <= 1.2))
    return lines


def run(args):
    check_prerequisites(args)
    lab = Lab(args)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for s in previous:
        signal.signal(s, lambda *_: sys.exit(143))
    try:
        print(f"namespaces {lab.prefix}-*, logs in {lab.workdir}", flush=True)
        lab.build()
        lab.start_proxies()
        print("round trips through the proxies:", flush=True)
        rtts = lab.check_rtts([("r0client", "r0n0"), ("r0n0", "r0n1"), ("r0n0", "r1n0"),
                               ("r0n0", "r2n0"), ("r1client", "r1etcd"), ("r1etcd", "r2etcd")],
                              "probe")
        etcd_urls, etcd_procs = start_etcd(lab)
        rep_urls, rep_procs = start_replicator(lab, args.replicator)
        pids = lambda procs: lambda: [q for p in procs for q in loopback.descendants(p.pid)]
        systems = {
            "replicator": System("replicator", rep_urls, None, pids(rep_procs)),
            "etcd": System("etcd", etcd_urls, None, pids(etcd_procs)),
            "etcd-serializable": System("etcd-serializable", etcd_urls, None, pids(etcd_procs)),
        }
        # The slow case: node 2 of every region is slow, so clients use nodes 0 and 1.
        systems["replicator"].slow_urls = [urls[:2] for urls in rep_urls]
        if args.through == "one":
            systems["replicator"].region_urls = [urls[:1] for urls in rep_urls]
            systems["replicator"].slow_urls = [urls[:1] for urls in rep_urls]
        for name in ("etcd", "etcd-serializable"):
            systems[name].slow_urls = etcd_urls
        lua_text = {("replicator", "creates"): loopback.LUA_REPLICATOR,
                    ("replicator", "reads"): LUA_REPLICATOR_READ,
                    ("replicator", "preload"): LUA_REPLICATOR_PRELOAD,
                    ("etcd", "creates"): loopback.LUA_ETCD, ("etcd", "reads"): lua_etcd_read(False),
                    ("etcd", "preload"): LUA_ETCD_PRELOAD,
                    ("etcd-serializable", "reads"): lua_etcd_read(True)}
        lua = {}
        for (name, load), text in lua_text.items():
            lua[(name, load)] = os.path.join(lab.workdir, f"{name}-{load}.lua")
            with open(lua[(name, load)], "w") as f:
                f.write(text)
        # Unmeasured: the keys the reads ask for, then creates at the highest load (a
        # replicator network is writable before every cluster has met every other).
        for name in ("replicator", "etcd"):
            preload(lab, systems[name], lua[(name, "preload")])
            run_load(lab, systems[name], lua[(name, "creates")], max(args.clients), args.warmup,
                     f"{os.getpid()}warm")
            print(f"warmed up {name}", flush=True)
        leader = etcd_leader_region(lab, etcd_urls)
        print(f"etcd leader: region {leader}", flush=True)
        results, slow_member = {}, None
        cases = args.cases.split(",")
        plan = []
        for c in args.clients:
            if "creates" in cases:
                plan.append(("creates", c, ["replicator", "etcd"]))
            if "reads" in cases:
                plan.append(("reads", c, ["replicator", "etcd", "etcd-serializable"]))
        measure(lab, systems, lua, plan, args, results, "normal")
        if "slow" in cases:
            leader = etcd_leader_region(lab, etcd_urls)
            slow_member = next(r for r in range(3) if r != leader)
            slow = [f"r{r}n2" for r in range(3)] + [f"r{slow_member}etcd"]
            lab.set_delays(slow)
            print(f"slow: {', '.join(slow)} {args.slow_ms} ms later one way "
                  f"(etcd leader in region {leader})", flush=True)
            time.sleep(1)  # every proxy has read its new table
            rtts.update(lab.check_rtts([("r0client", "r0n2"), ("r0n0", "r1n2"),
                                        (f"r{leader}etcd", f"r{slow_member}etcd")], "slow probe"))
            for name in ("replicator", "etcd"):
                run_load(lab, systems[name], lua[(name, "creates")], max(args.clients),
                         args.warmup, f"{os.getpid()}slowwarm", systems[name].slow_urls)
            measure(lab, systems, lua,
                    [("creates", c, ["replicator", "etcd"]) for c in args.clients],
                    args, results, "slow")
            after = etcd_leader_region(lab, etcd_urls)
            if after != leader:
                print(f"note: the etcd leader moved to region {after} during the slow case")
        print_tables(results, args, rtts, leader, slow_member)
        loopback.print_verdicts(
            target_verdicts(results, region_round_trip(rtts, args.region_rtt_ms)),
            "Across regions, side by side with etcd")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"|".join(map(str, k)): v for k, v in results.items()}, f, indent=1)
    finally:
        lab.close()
        for s, h in previous.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- self-test

def self_test():
    """The pure parts: the delay table, wrk parsing, merging, percentiles, shares, ratios."""
    class A:
        region_rtt_ms, local_rtt_ms, slow_ms, jitter_ms, loss, retransmit_ms = 40, 0.2, 50, 0, 0, 200
    spaces = topology()
    by = {s.name: s for s in spaces}
    assert len(spaces) == 15 and len({s.ip for s in spaces}) == 15
    assert one_way_ms(by["r0n0"], by["r0n1"], 40, 0.2) == 0.1
    assert one_way_ms(by["r0n0"], by["r1n0"], 40, 0.2) == 20
    assert one_way_ms(by["r0n0"], by["r0n0"], 40, 0.2) == 0
    assert one_way_ms(by["r0n0"], by["r1n2"], 40, 0.2, 50, {"r1n2"}) == 70
    assert one_way_ms(by["r1n2"], by["r0n0"], 40, 0.2, 50, {"r1n2"}) == 70
    assert one_way_ms(by["r0client"], by["r0n2"], 40, 0.2, 50, {"r0n2"}) == 50.1
    c = proxy_config(by["r0client"], spaces, A)
    assert by["r0client"].ip not in c["table"] and len(c["table"]) == 14
    assert expected_rtt_ms(c, by["r2etcd"].ip) == 40
    assert expected_rtt_ms(c, by["r0n1"].ip) == 0.2
    slow = proxy_config(by["r0n0"], spaces, A, {"r1n2"})
    assert expected_rtt_ms(slow, by["r1n2"].ip) == 140 and expected_rtt_ms(slow, by["r1n1"].ip) == 40
    class J(A):
        jitter_ms = 4
    assert expected_rtt_ms(proxy_config(by["r0client"], spaces, J), by["r2etcd"].ip) == 44
    assert rtt_ok(41.5, 40, 1.0) and not rtt_ok(46.0, 40, 1.0) and not rtt_ok(3.5, 0.2, 2.0)
    assert rtt_ok(1.9, 0.2, 2.0)
    # (The proxy's own rules, order and delay of chunks, are tested in `cargo test -p wan-proxy`.)
    # wrk's summary line, merged over processes, and percentiles.
    line = ('noise\nWRKJSON {"requests":5,"ok":4,"bad":1,"socket_errors":2,"duration_us":2000000,'
            '"p50_us":1,"p99_us":2,"hist":"1000:2,3000:1,40000:2"}\n')
    r = loopback.parse_wrk(line)
    assert r == {"ok": 4, "errors": 3, "seconds": 2.0, "hist": {1000: 2, 3000: 1, 40000: 2}}
    assert loopback.parse_wrk("no summary") is None
    assert loopback.parse_wrk('WRKJSON {"requests":0,"ok":0,"bad":0,"socket_errors":0,'
                              '"duration_us":1,"p50_us":0,"p99_us":0,"hist":""}')["hist"] == {}
    m = loopback.merge_runs([r, {"ok": 6, "errors": 0, "seconds": 2.5, "hist": {3000: 5}}])
    assert m == {"ok": 10, "errors": 3, "seconds": 2.5, "hist": {1000: 2, 3000: 6, 40000: 2}}
    assert loopback.percentile_ms(m["hist"], 50) == 3.0
    assert loopback.percentile_ms(m["hist"], 20) == 1.0
    assert loopback.percentile_ms(m["hist"], 21) == 3.0
    assert loopback.percentile_ms(m["hist"], 99) == 40.0
    assert loopback.percentile_ms({}, 50) != loopback.percentile_ms({}, 50)  # nan
    assert summarize(m)["ops"] == 4.0 and summarize(m)["p99_ms"] == 40.0
    assert loopback.shares(16, 3) == [6, 5, 5] and loopback.shares(1, 3) == [1]
    assert loopback.shares(2, 3) == [1, 1] and loopback.shares(16, 1) == [16]
    assert ratio(3, 2) == 1.5 and ratio(1, 0) != ratio(1, 0)
    assert statistics.median([3, 1, 2]) == 2
    # The targets' verdicts, from three runs' per-region p50s.
    runs = lambda *p50s: [{"regions": [{"p50_ms": p} for p in p50s]}] * 3
    results = {("normal", "creates", 1, "replicator"): runs(45, 46, 46.5),
               ("normal", "creates", 1, "etcd"): runs(42, 84, 84),
               ("normal", "reads", 1, "replicator"): runs(0.2, 0.3, 0.2),
               ("slow", "creates", 1, "replicator"): runs(49, 50, 56),
               ("slow", "creates", 1, "etcd"): runs(43, 286, 85)}
    verdicts = target_verdicts(results, 40.5)
    assert [met for _, met in verdicts] == [True, False, True, False], verdicts
    assert "1.15x" in verdicts[0][0] and "0.65x" in verdicts[1][0] and "1.20x" in verdicts[3][0]
    assert target_verdicts({}, 40.0) == []
    probes = {("r0client", "r0n0"): 0.1, ("r0n0", "r0n1"): 0.2, ("r0n0", "r1n0"): 40.6,
              ("r0n0", "r2n0"): 40.8, ("r1etcd", "r2etcd"): 40.6, ("r0n0", "r1n2"): 140.7}
    assert abs(region_round_trip(probes, 40) - 40.7) < 1e-9 and region_round_trip({}, 40) == 40
    print("wan_bench self-test: ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--self-test", action="store_true", help="test the pure parts and exit")
    ap.add_argument("--quick", action="store_true",
                    help="one rep of 4 s, 2 s warm-ups (about 2 minutes)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--clients", default="1,16", help="connections per region")
    ap.add_argument("--cases", default="creates,reads,slow")
    ap.add_argument("--through", choices=("spread", "one"), default="spread",
                    help="replicator's clients of a region: spread over its nodes (one wrk "
                         "per node), or all through its first node")
    ap.add_argument("--region-rtt-ms", type=float, default=40.0)
    ap.add_argument("--local-rtt-ms", type=float, default=0.2)
    ap.add_argument("--slow-ms", type=float, default=50.0,
                    help="extra one-way delay of every message to or from a slow node")
    ap.add_argument("--jitter-ms", type=float, default=0.0,
                    help="each chunk up to this much later (order kept)")
    ap.add_argument("--loss", type=float, default=0.0,
                    help="share of chunks held back --retransmit-ms more (a TCP retransmission)")
    ap.add_argument("--retransmit-ms", type=float, default=200.0)
    ap.add_argument("--rtt-tolerance-ms", type=float, default=2.0,
                    help="probed round trips must be within this plus 10 %% of the set ones")
    ap.add_argument("--replicator", default="target/release/replicator")
    ap.add_argument("--proxy", default="target/release/wan-proxy",
                    help="the delaying proxy (cargo build --release -p wan-proxy)")
    ap.add_argument("--json", help="also write every run to this file")
    ap.add_argument("--keep", action="store_true", help="keep the logs and data dirs")
    ap.add_argument("--cleanup", action="store_true",
                    help="remove what runs killed with SIGKILL left behind (namespaces wanb<pid>-* "
                         "of pids that no longer run, and their processes), and exit")
    args = ap.parse_args()
    if args.self_test:
        self_test()
        return
    if args.cleanup:
        cleanup_leftovers()
        return
    if args.quick:
        args.reps, args.duration, args.warmup = 1, 4, 2
    args.clients = [int(c) for c in args.clients.split(",")]
    # Jitter widens the probe's spread (its mean is in the expected round trip).
    args.rtt_tolerance_ms += args.jitter_ms
    try:
        run(args)
    except RuntimeError as e:
        print(f"wan_bench: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("wan_bench: interrupted; everything it started is removed", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
