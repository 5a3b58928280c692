#!/usr/bin/env python3
"""Holds N idle keep-alive HTTP/1.1 connections open, for benches/idle.sh.

    idle_hold.py HOST PORT N MODE [HOLD_SECS [WAVE]]

Opens N connections to HOST:PORT, makes one `GET /` on each (so each is in the keep-alive
state, waiting for a next request), then prints `ready N SECONDS` on stdout and holds them all
until SIGTERM / SIGINT or HOLD_SECS (default 300) pass, then closes them and exits 0.

MODE:
  sequential  one connection after another: connect, request, read the response, next. At
              most one request is in flight, so the server's RSS afterwards is its idle cost.
  burst       in waves of WAVE connections (default 1000): connect them all, send all their
              requests, then read all the responses, so WAVE requests are in flight at once;
              the RSS afterwards also holds what a server keeps from such a peak (buffer
              pools, freed memory its allocator does not return). The waves' connections stay
              open: N in all.

Exits 1 with a message on stderr if a connection fails or a response is not a 200, and 2 on
bad arguments. Standard library only.
"""

import resource
import selectors
import signal
import socket
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: idle.bench\r\nUser-Agent: idle_hold\r\n\r\n"
# Every wait is bounded.
IO_TIMEOUT = 10.0
BURST_TIMEOUT = 120.0


def fail(msg):
    print(f"idle_hold: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def raise_nofile(n):
    """Raises the soft descriptor limit to what N connections need, up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64
    if soft >= want:
        return
    if hard != resource.RLIM_INFINITY and hard < want:
        fail(f"{n} connections need {want} descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Reader:
    """Accumulates one response; `done` once its head and Content-Length body arrived."""

    def __init__(self):
        self.buf = b""

    def feed(self, data):
        self.buf += data

    def status(self):
        """The status if the response is complete, else None. Fails on what it cannot read."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 65536:
                fail("response head over 64 KiB")
            return None
        head = self.buf[:end].decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) < 2 or not parts[1].isdigit():
            fail(f"bad status line {lines[0]!r}")
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            elif name.strip().lower() == "transfer-encoding":
                fail("chunked responses are not handled (the bench backends send Content-Length)")
        if length is None:
            fail(f"no Content-Length in {head!r}")
        if len(self.buf) < end + 4 + length:
            return None
        return int(parts[1])


def connect(host, port):
    sock = socket.create_connection((host, port), timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def check(i, status):
    if status != 200:
        fail(f"connection {i}: status {status}")


def sequential(host, port, n):
    conns = []
    for i in range(n):
        try:
            sock = connect(host, port)
            sock.sendall(REQUEST)
            reader = Reader()
            while (status := reader.status()) is None:
                data = sock.recv(65536)
                if not data:
                    fail(f"connection {i}: closed before a whole response")
                reader.feed(data)
        except OSError as e:
            fail(f"connection {i}: {e}")
        check(i, status)
        conns.append(sock)
    return conns


def burst(host, port, n, wave):
    conns = []
    while len(conns) < n:
        conns.extend(burst_wave(host, port, len(conns), min(wave, n - len(conns))))
    return conns


def burst_wave(host, port, first, n):
    """Connections first..first+n: all connected, all requests sent, then all responses read."""
    conns = []
    try:
        for _ in range(n):
            conns.append(connect(host, port))
        for sock in conns:
            sock.sendall(REQUEST)
    except OSError as e:
        fail(f"connection {first + len(conns)}: {e}")
    sel = selectors.DefaultSelector()
    readers = {}
    for i, sock in enumerate(conns):
        sock.setblocking(False)
        readers[sock.fileno()] = (first + i, sock, Reader())
        sel.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + BURST_TIMEOUT
    pending = n
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            fail(f"{pending} of {n} responses of a wave missing after {BURST_TIMEOUT:.0f} s")
        for key, _ in sel.select(timeout=min(left, 1.0)):
            i, sock, reader = readers[key.fd]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                fail(f"connection {i}: {e}")
            if not data:
                fail(f"connection {i}: closed before a whole response")
            reader.feed(data)
            status = reader.status()
            if status is not None:
                check(i, status)
                sel.unregister(sock)
                pending -= 1
    sel.close()
    return conns


def main():
    if len(sys.argv) not in (5, 6, 7) or sys.argv[4] not in ("sequential", "burst"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    host, port, n, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    hold = float(sys.argv[5]) if len(sys.argv) >= 6 else 300.0
    wave = int(sys.argv[6]) if len(sys.argv) == 7 else 1000
    raise_nofile(n)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    started = time.monotonic()
    if mode == "sequential":
        conns = sequential(host, port, n)
    else:
        conns = burst(host, port, n, max(wave, 1))
    print(f"ready {len(conns)} {time.monotonic() - started:.2f}", flush=True)
    until = time.monotonic() + hold
    while not stop and time.monotonic() < until:
        time.sleep(0.05)
    for sock in conns:
        sock.close()


if __name__ == "__main__":
    main()
