#!/usr/bin/env python3
"""Holds N idle keep-alive HTTP/1.1 connections open, for benches/idle.sh.

    idle_hold.py [--tls CAFILE SNI] HOST PORT N MODE [HOLD_SECS [WAVE]]

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

--tls CAFILE SNI: each connection is TLS (1.2 or 1.3, ALPN http/1.1), its server name SNI,
its certificate checked against CAFILE. sequential: a blocking handshake per connection.
burst: each wave's handshakes are all in flight at once (non-blocking, driven by a selector),
then its requests. Before `ready`, prints `tls VERSION CIPHER` of the last connection made.

Exits 1 with a message on stderr if a connection fails or a response is not a 200, and 2 on
bad arguments. Standard library only.
"""

import resource
import selectors
import signal
import socket
import ssl
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


def tls_context(cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # What a browser or HTTP/1.1 client offers; the three servers all accept it.
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def recv_some(sock):
    """What one recv gives, plus whatever TLS already decrypted and holds (a selector would not
    report it: those bytes are no longer in the socket)."""
    data = sock.recv(65536)
    while data and isinstance(sock, ssl.SSLSocket) and sock.pending():
        data += sock.recv(65536)
    return data


def check(i, status):
    if status != 200:
        fail(f"connection {i}: status {status}")


def sequential(host, port, n, tls):
    conns = []
    for i in range(n):
        try:
            sock = connect(host, port)
            if tls:
                # Blocking handshake, bounded by the socket's IO_TIMEOUT.
                sock = tls[0].wrap_socket(sock, server_hostname=tls[1])
            sock.sendall(REQUEST)
            reader = Reader()
            while (status := reader.status()) is None:
                data = recv_some(sock)
                if not data:
                    fail(f"connection {i}: closed before a whole response")
                reader.feed(data)
        except OSError as e:  # ssl.SSLError is an OSError
            fail(f"connection {i}: {e}")
        check(i, status)
        conns.append(sock)
    return conns


def burst(host, port, n, wave, tls):
    conns = []
    while len(conns) < n:
        conns.extend(burst_wave(host, port, len(conns), min(wave, n - len(conns)), tls))
    return conns


def handshake_all(conns, first, tls):
    """Wraps every socket in TLS and drives all the handshakes at once; returns the TLS sockets
    in the same order, blocking again (with IO_TIMEOUT) for the requests."""
    ctx, sni = tls
    wrapped = []
    sel = selectors.DefaultSelector()
    for i, sock in enumerate(conns):
        sock.setblocking(False)
        tsock = ctx.wrap_socket(sock, server_hostname=sni, do_handshake_on_connect=False)
        wrapped.append(tsock)
        # Every handshake starts by writing its ClientHello.
        sel.register(tsock, selectors.EVENT_WRITE, first + i)
    deadline = time.monotonic() + BURST_TIMEOUT
    pending = len(conns)
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            fail(f"{pending} of {len(conns)} TLS handshakes of a wave unfinished after {BURST_TIMEOUT:.0f} s")
        for key, _ in sel.select(timeout=min(left, 1.0)):
            tsock, i = key.fileobj, key.data
            try:
                tsock.do_handshake()
            except ssl.SSLWantReadError:
                sel.modify(tsock, selectors.EVENT_READ, i)
                continue
            except ssl.SSLWantWriteError:
                sel.modify(tsock, selectors.EVENT_WRITE, i)
                continue
            except OSError as e:
                fail(f"connection {i}: TLS handshake: {e}")
            sel.unregister(tsock)
            pending -= 1
    sel.close()
    for tsock in wrapped:
        tsock.settimeout(IO_TIMEOUT)
    return wrapped


def burst_wave(host, port, first, n, tls):
    """Connections first..first+n: all connected, (with TLS: all handshakes made,) all requests
    sent, then all responses read."""
    conns = []
    try:
        for _ in range(n):
            conns.append(connect(host, port))
    except OSError as e:
        fail(f"connection {first + len(conns)}: {e}")
    if tls:
        conns = handshake_all(conns, first, tls)
    sent = 0
    try:
        for sock in conns:
            sock.sendall(REQUEST)
            sent += 1
    except OSError as e:
        fail(f"connection {first + sent}: {e}")
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
                data = recv_some(sock)
            except (BlockingIOError, ssl.SSLWantReadError):
                # With TLS: a record that held no response bytes (a session ticket).
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
    argv, tls = sys.argv[1:], None
    if argv[:1] == ["--tls"]:
        if len(argv) < 3:
            print(__doc__, file=sys.stderr)
            sys.exit(2)
        try:
            tls = (tls_context(argv[1]), argv[2])
        except OSError as e:
            fail(f"CA file {argv[1]}: {e}")
        argv = argv[3:]
    if len(argv) not in (4, 5, 6) or argv[3] not in ("sequential", "burst"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    host, port, n, mode = argv[0], int(argv[1]), int(argv[2]), argv[3]
    hold = float(argv[4]) if len(argv) >= 5 else 300.0
    wave = int(argv[5]) if len(argv) == 6 else 1000
    raise_nofile(n)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    started = time.monotonic()
    if mode == "sequential":
        conns = sequential(host, port, n, tls)
    else:
        conns = burst(host, port, n, max(wave, 1), tls)
    if tls and conns:
        print(f"tls {conns[-1].version()} {conns[-1].cipher()[0]}", flush=True)
    print(f"ready {len(conns)} {time.monotonic() - started:.2f}", flush=True)
    until = time.monotonic() + hold
    while not stop and time.monotonic() < until:
        time.sleep(0.05)
    for sock in conns:
        sock.close()


if __name__ == "__main__":
    main()
