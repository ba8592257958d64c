#!/usr/bin/env python3
"""The round-trip probe of the WAN benchmark (node/scripts/wan_bench.py), run inside a network
namespace: the median round trip of a 32-byte message to the echo server of each given
address (wan-proxy runs one in every namespace), through the delaying proxies, as JSON.

    wan_probe.py IP[,IP...] ECHO_PORT COUNT
"""

import json
import socket
import statistics
import sys
import time


def probe(ips, port, count):
    out = {}
    for ip in ips:
        with socket.create_connection((ip, port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rtts = []
            for i in range(count + 1):  # the first exchange is not measured
                t0 = time.perf_counter()
                s.sendall(b"x" * 32)
                got = 0
                while got < 32:
                    chunk = s.recv(64)
                    if not chunk:
                        raise OSError(f"the echo server at {ip} closed the connection")
                    got += len(chunk)
                if i > 0:
                    rtts.append((time.perf_counter() - t0) * 1000)
            out[ip] = statistics.median(rtts)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(json.dumps(probe(sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3]))))
