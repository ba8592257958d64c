#!/usr/bin/env python3
"""The delaying TCP proxy of the WAN benchmark (node/scripts/wan_bench.py), one per network
namespace, plus the echo server and the round-trip probe that check the delays.

The kernel here has no netem, so delays are made in user space. In each namespace an iptables
`nat OUTPUT` rule redirects every TCP connection to another namespace's address to this proxy
(127.0.0.1:PROXY_PORT); the proxy reads the original destination (SO_ORIGINAL_DST), connects
there with SO_MARK set (the rule skips marked sockets, so its own connections go straight
out), and forwards every chunk in both directions after the one-way delay of that direction:
a chunk read at t is written at t + delay, in order. The connection's handshake costs one
round trip (the upstream connect waits for it). Delays come from a JSON file, read again on
SIGHUP (the benchmark's slow-node case):

    {"table": {"10.213.1.1": [forward_ms, back_ms], ...}, "jitter_ms": 0, "loss": 0,
     "retransmit_ms": 200}

A TCP proxy cannot drop bytes: `loss` is the share of chunks held back by `retransmit_ms` more
(what a retransmission costs a real connection), and every later chunk waits behind it.
One-way delays under IMMEDIATE_S go out at once: asyncio's timers wake at millisecond
granularity, so such a link costs only the proxy's own latency (the probe measures it).

    wan_proxy.py serve CONFIG OWN_IP     # the proxy and the echo server, in a namespace
    wan_proxy.py probe IP[,IP...] COUNT  # median round trip to each echo server, as JSON
"""

import asyncio
import collections
import json
import random
import signal
import socket
import statistics
import struct
import sys
import time

PROXY_PORT = 15001
ECHO_PORT = 7007
# The mark of the proxy's own upstream sockets; the redirect rule skips packets carrying it.
MARK = 0x2D7
SO_MARK = 36
SO_ORIGINAL_DST = 80
IMMEDIATE_S = 0.0005


def next_due(now, delay_s, last_due):
    """When a chunk read now leaves: after its delay, and never before the chunk ahead of it
    (jitter or a lowered delay must not reorder a byte stream)."""
    return max(now + delay_s, last_due)


def chunk_delay_ms(base_ms, jitter_ms, loss, retransmit_ms, rng):
    """One chunk's one-way delay: the link's, plus jitter, plus a retransmission if 'lost'."""
    ms = base_ms
    if jitter_ms > 0:
        ms += rng.uniform(0, jitter_ms)
    if loss > 0 and rng.random() < loss:
        ms += retransmit_ms
    return ms


class Delays:
    """The current delay table; SIGHUP reads the file again."""

    def __init__(self, path):
        self.path = path
        self.rng = random.Random()
        self.load()

    def load(self):
        with open(self.path) as f:
            self.config = json.load(f)

    def one_way_s(self, dst_ip, direction):
        """direction 0: towards dst_ip, 1: back from it."""
        c = self.config
        base = c["table"].get(dst_ip, [0.0, 0.0])[direction]
        return chunk_delay_ms(base, c.get("jitter_ms", 0), c.get("loss", 0),
                              c.get("retransmit_ms", 200), self.rng) / 1000

    def handshake_s(self, dst_ip):
        fwd, back = self.config["table"].get(dst_ip, [0.0, 0.0])
        return (fwd + back) / 1000


class Link:
    """One direction of one proxied connection: chunks written to `transport` after their
    delay, in order. None is the end of the stream (after everything ahead of it)."""

    def __init__(self, loop, delays, dst_ip, direction, transport, on_end):
        self.loop, self.delays, self.dst_ip, self.direction = loop, delays, dst_ip, direction
        self.transport, self.on_end = transport, on_end
        self.queue = collections.deque()
        self.last_due = 0.0
        self.timer = None
        self.ended = False

    def send(self, data):
        if self.ended:
            return
        now = self.loop.time()
        due = next_due(now, self.delays.one_way_s(self.dst_ip, self.direction), self.last_due)
        self.last_due = due
        if not self.queue and due <= now + IMMEDIATE_S:
            self._out(data)
            return
        self.queue.append((due, data))
        if self.timer is None:
            self.timer = self.loop.call_at(due, self._flush)

    def _flush(self):
        self.timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now + IMMEDIATE_S:
            self._out(self.queue.popleft()[1])
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _out(self, data):
        if self.ended:
            return
        if data is None:
            self.ended = True
            if self.transport.can_write_eof() and not self.transport.is_closing():
                self.transport.write_eof()
            self.on_end()
        elif not self.transport.is_closing():
            self.transport.write(data)


def original_dst(sock):
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack("!H", raw[2:4])[0]
    return socket.inet_ntoa(raw[4:8]), port


class Upstream(asyncio.Protocol):
    def __init__(self, inbound):
        self.inbound = inbound

    def data_received(self, data):
        self.inbound.to_app.send(data)

    def eof_received(self):
        self.inbound.to_app.send(None)
        return True

    def connection_lost(self, exc):
        self.inbound.to_app.send(None)


class Inbound(asyncio.Protocol):
    """A connection an application in this namespace opened to another namespace."""

    def __init__(self, delays):
        self.delays = delays
        self.loop = asyncio.get_running_loop()
        self.early, self.to_up, self.up = [], None, None
        self.ends = 0

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.dst = original_dst(sock)
        if self.dst[1] == PROXY_PORT:  # not redirected: someone dialled the proxy itself
            transport.close()
            return
        self.to_app = Link(self.loop, self.delays, self.dst[0], 1, transport, self._ended)
        self.loop.create_task(self._connect())

    async def _connect(self):
        await asyncio.sleep(self.delays.handshake_s(self.dst[0]))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        try:
            await self.loop.sock_connect(sock, self.dst)
            up, _ = await self.loop.create_connection(lambda: Upstream(self), sock=sock)
        except OSError:
            sock.close()
            self.transport.abort()  # the application sees a reset, as it would without us
            return
        self.up = up
        self.to_up = Link(self.loop, self.delays, self.dst[0], 0, up, self._ended)
        for data in self.early:
            self.to_up.send(data)
        self.early = None

    def data_received(self, data):
        if self.to_up is None:
            self.early.append(data)
        else:
            self.to_up.send(data)

    def eof_received(self):
        self.data_received(None)
        return True

    def connection_lost(self, exc):
        if self.to_up is None:
            if self.early is not None:
                self.early.append(None)
        else:
            self.to_up.send(None)

    def _ended(self):
        # Both directions delivered their end: nothing more to carry.
        self.ends += 1
        if self.ends == 2:
            self.transport.close()
            if self.up is not None:
                self.up.close()


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        self.transport.write(data)


def serve(config_path, own_ip):
    delays = Delays(config_path)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.add_signal_handler(signal.SIGHUP, delays.load)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    loop.run_until_complete(loop.create_server(lambda: Inbound(delays), "127.0.0.1", PROXY_PORT,
                                               backlog=1024))
    loop.run_until_complete(loop.create_server(Echo, own_ip, ECHO_PORT))
    print("ready", flush=True)
    loop.run_forever()


def probe(ips, count):
    """Median round trip (ms) of a 32-byte message to each echo server, after one unmeasured
    exchange (the first pays for nothing extra, but keeps the connection's set-up out)."""
    out = {}
    for ip in ips:
        with socket.create_connection((ip, ECHO_PORT), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rtts = []
            for i in range(count + 1):
                t0 = time.perf_counter()
                s.sendall(b"x" * 32)
                got = 0
                while got < 32:
                    chunk = s.recv(64)
                    if not chunk:
                        raise OSError(f"echo at {ip} closed the connection")
                    got += len(chunk)
                if i > 0:
                    rtts.append((time.perf_counter() - t0) * 1000)
            out[ip] = statistics.median(rtts)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "probe":
        probe(sys.argv[2].split(","), int(sys.argv[3]))
    else:
        sys.exit(__doc__)
