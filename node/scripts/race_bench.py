#!/usr/bin/env python3
"""Same-instant races on real nodes: how often do two clients creating one key end with no winner?

Starts `replicator demo --clusters 3` (3x3) on 127.0.0.1 in a temporary directory, then for each
of --keys fresh keys (--parallel of them at a time) lets two clients PUT different values for that key at the same instant (both
connections open, both requests written back to back) through nodes of two different clusters, and tallies the pairs of
answers: one Stored and one Exists (the race rule of core/PROTOCOL.md at work), one Stored and
one Busy, both Busy (no winner), or anything else. The demo is stopped at the end.

    python3 node/scripts/race_bench.py [--keys 1000] [--parallel 16]
        [--replicator target/release/replicator]
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def connect(node):
    host, port = node.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request(key, value):
    body = value.encode()
    head = (f"PUT /store/{key} HTTP/1.1\r\nHost: race\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


def answer(sock):
    """The status and, for an error, its `error` field."""
    resp = http.client.HTTPResponse(sock)
    try:
        resp.begin()
        body = resp.read()
    except (OSError, http.client.HTTPException) as e:
        return 0, str(e)
    finally:
        sock.close()
    if resp.status < 300:
        return resp.status, ""
    try:
        return resp.status, json.loads(body or b"{}").get("error", "")
    except ValueError:
        return resp.status, "?"


def writable(nodes):
    try:
        for n in nodes:
            with urllib.request.urlopen(n + "/health", timeout=1) as r:
                if json.load(r).get("writable") is not True:
                    return False
        return True
    except (OSError, ValueError):
        return False


def classify(a, b):
    answers = sorted([a, b])
    if answers == [(201, ""), (409, "exists")]:
        return "one winner, the other told Exists"
    if answers == [(201, ""), (409, "busy")]:
        return "one winner, the other told Busy"
    if answers == [(409, "busy"), (409, "busy")]:
        return "no winner (both Busy)"
    if answers[0][0] == 201 and answers[1][0] == 201:
        return "TWO WINNERS (a safety bug)"
    return "other: " + repr(answers)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--replicator", default="target/release/replicator")
    ap.add_argument("--parallel", type=int, default=16, help="races in flight at once")
    ap.add_argument("--http-port", type=int, default=18300)
    args = ap.parse_args()
    if not os.access(args.replicator, os.X_OK):
        sys.exit(f"race_bench: no {args.replicator}: cargo build --release -p replicator-node")
    tmp = tempfile.mkdtemp(prefix="race-bench-")
    log = open(os.path.join(tmp, "demo.log"), "w")
    demo = subprocess.Popen(
        [args.replicator, "demo", "--clusters", "3", "--http-port", str(args.http_port),
         "--data-dir", os.path.join(tmp, "data")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    nodes = [f"http://127.0.0.1:{args.http_port + i}" for i in range(9)]
    try:
        deadline = time.monotonic() + 180
        while not writable(nodes):
            if time.monotonic() > deadline or demo.poll() is not None:
                sys.exit(f"race_bench: the demo never became writable (log: {log.name})")
            time.sleep(0.2)
        tally = {}
        nonce = int(time.time())

        def race(i):
            key = f"race-{nonce}-{i}"
            # Two nodes of two different clusters (nodes 3k..3k+2 form cluster k).
            first, second = nodes[(i % 3) * 3 + i % 2], nodes[((i + 1) % 3) * 3 + 2]
            # Both connections open first; then both requests leave back to back, microseconds
            # apart, from one thread: the same instant as far as the nodes can tell.
            socks = [connect(first), connect(second)]
            for slot, sock in enumerate(socks):
                sock.sendall(request(key, f"value-{slot}"))
            return classify(*[answer(sock) for sock in socks])

        # Several races at once, as many clients would: the nodes are busy, round trips long.
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            for outcome in pool.map(race, range(args.keys)):
                tally[outcome] = tally.get(outcome, 0) + 1
        print(f"{args.keys} same-instant races, {args.parallel} at a time, 3x3 network, "
              f"two clusters "
              f"({time.strftime('%Y-%m-%d')}):")
        for outcome, count in sorted(tally.items(), key=lambda kv: -kv[1]):
            print(f"  {count:>6}  {100.0 * count / args.keys:5.1f} %  {outcome}")
        return 1 if any(k.startswith("TWO") for k in tally) else 0
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        try:
            demo.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
