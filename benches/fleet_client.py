#!/usr/bin/env python3
"""etcd writer and lb-mio poller for benches/fleet.sh.

    fleet_client.py put ETCD KEY VALUE
    fleet_client.py propagate ETCD PREFIX KIND N PORTS POLL_MS TIMEOUT_S B_A B_B B_NEW OUT_CSV
    fleet_client.py churn ETCD PREFIX EVERY_MS SECS B_A B_B
    fleet_client.py scale ETCD PREFIX ADMIN_PORT SIZES CHANGES

ETCD is host:port of etcd's gRPC gateway (JSON over HTTP: POST /v3/kv/put, /v3/kv/deleterange);
PORTS a comma-separated list of lb-mio listen ports; B_A, B_B the backend ports of pools a and b,
B_NEW the port new backends are registered at (kind backend).

propagate makes N changes, one at a time, and times each from the return of the etcd write to the
first response of each instance that shows it (a new connection per request, `Connection: close`,
every instance polled each POLL_MS). KIND:
  route    routes/sw alternates between pool a and pool b: GET /sw/ answers "backend-B_A" or
           "backend-B_B" (the demo backend answers its name). No backend is added.
  newroute routes/rI (path /rI/, pool b) is put, a new key each time: GET /rI/ goes from the
           default pool (its backend is not B_B) to pool b. No backend is added.
  backend  backends/c/cI (address 127.0.0.1:B_NEW) is put into pool c, which has no other backend;
           GET /c/ answers 200 once it is up (it starts DOWN until its health checks pass). Before
           each change the previous backend's key is deleted and every instance is waited for to
           answer /c/ with a non-200 (not timed).
One CSV row per change: i,revision,write_ms,ms_instance1,...,last_ms ("" for a timeout),gap_ms
(the longest time between two polling passes during the change: the poller's own stalls).

churn writes routes/sw alternating between pool a and b every EVERY_MS for SECS seconds, and
prints the number of writes and the last revision.

scale grows the routes in etcd to each of SIZES (comma-separated, rising) with a burst of puts
(routes/gN, path /gN/ to pool b, as fast as one connection puts them), timing how long after the
burst's last put the instance at ADMIN_PORT has applied it (its lbmio_etcd_revision); then, at that
size, CHANGES single changes of routes/sw, each timed from the put's return until applied. One
markdown table row per size.
"""

import base64
import http.client
import json
import socket
import sys
import time


def b64(s):
    return base64.b64encode(s.encode()).decode()


class Etcd:
    """One keep-alive connection to etcd's JSON gateway."""

    def __init__(self, endpoint):
        host, port = endpoint.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=5)

    def call(self, path, doc):
        body = json.dumps(doc)
        for attempt in (0, 1):
            try:
                self.conn.request("POST", path, body, {"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                if attempt:
                    raise
        if resp.status != 200:
            raise RuntimeError(f"etcd {path}: {resp.status} {data[:200]!r}")
        return int(json.loads(data)["header"]["revision"])

    def put(self, key, value):
        return self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def delete(self, key):
        return self.call("/v3/kv/deleterange", {"key": b64(key)})


def route_doc(name, path, pool):
    return json.dumps({"version": 1, "name": name, "keys": [["path", path], ["pool", pool]]})


def get(port, path):
    """(status, body) of one GET on a new connection; (0, b"") when it fails."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    return status, body


def wait_all(ports, check, poll_s, timeout_s, t0):
    """Polls every port until check(status, body) holds; ms after t0 for each (None: timeout)."""
    done = [None] * len(ports)
    deadline = t0 + timeout_s
    prev = t0
    wait_all.gap = 0.0  # the longest time between two passes (or t0 and the first): a stalled poller
    while any(d is None for d in done):
        turn = time.monotonic()
        wait_all.gap = max(wait_all.gap, turn - prev)
        prev = turn
        if turn > deadline:
            break
        for k, port in enumerate(ports):
            if done[k] is None:
                status, body = get(port, check.path)
                if check(status, body):
                    done[k] = (time.monotonic() - t0) * 1000
        left = turn + poll_s - time.monotonic()
        if left > 0:
            time.sleep(left)
    return done


class Check:
    def __init__(self, path, fn):
        self.path, self.fn = path, fn

    def __call__(self, status, body):
        return self.fn(status, body)


def propagate(argv):
    etcd_ep, prefix, kind, n, ports, poll_ms, timeout_s, b_a, b_b, b_new, out = argv
    n, poll_s, timeout_s = int(n), float(poll_ms) / 1000, float(timeout_s)
    ports = [int(p) for p in ports.split(",")]
    etcd = Etcd(etcd_ep)
    rows = []
    for i in range(1, n + 1):
        if kind == "route":
            pool, port = ("b", b_b) if i % 2 else ("a", b_a)
            want = f"backend-{port}".encode()
            check = Check("/sw/", lambda st, body, w=want: st == 200 and body.startswith(w))
            key, value = prefix + "routes/sw", route_doc("sw", "/sw/", pool)
        elif kind == "newroute":
            want = f"backend-{b_b}".encode()
            check = Check(f"/r{i}/", lambda st, body, w=want: st == 200 and body.startswith(w))
            key, value = prefix + f"routes/r{i}", route_doc(f"r{i}", f"/r{i}/", "b")
        elif kind == "backend":
            if i > 1:
                etcd.delete(prefix + f"backends/c/c{i - 1}")
                gone = Check("/c/", lambda st, body: st != 200)
                if None in wait_all(ports, gone, poll_s, timeout_s, time.monotonic()):
                    print(f"change {i}: backend c{i - 1} still serving after {timeout_s} s",
                          file=sys.stderr)
            check = Check("/c/", lambda st, body: st == 200)
            key = prefix + f"backends/c/c{i}"
            value = json.dumps({"address": f"127.0.0.1:{b_new}", "weight": 1})
        else:
            raise SystemExit(f"unknown kind {kind}")
        w0 = time.monotonic()
        revision = etcd.put(key, value)
        t0 = time.monotonic()
        done = wait_all(ports, check, poll_s, timeout_s, t0)
        last = "" if None in done else f"{max(done):.2f}"
        rows.append([str(i), str(revision), f"{(t0 - w0) * 1000:.2f}"]
                    + ["" if d is None else f"{d:.2f}" for d in done]
                    + [last, f"{wait_all.gap * 1000:.2f}"])
        time.sleep(0.02)  # a gap, so that each change is timed alone
    with open(out, "a") as f:
        for row in rows:
            f.write(kind + "," + ",".join(row) + "\n")


def churn(argv):
    etcd_ep, prefix, every_ms, secs, b_a, b_b = argv
    every, secs = float(every_ms) / 1000, float(secs)
    etcd = Etcd(etcd_ep)
    start = time.monotonic()
    writes, revision, i = 0, 0, 0
    while time.monotonic() - start < secs:
        i += 1
        revision = etcd.put(prefix + "routes/sw", route_doc("sw", "/sw/", "b" if i % 2 else "a"))
        writes += 1
        next_at = start + i * every
        left = next_at - time.monotonic()
        if left > 0:
            time.sleep(left)
    print(writes, revision)


def applied(admin_port):
    """The instance's lbmio_etcd_revision."""
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
    conn.request("GET", "/metrics")
    for line in conn.getresponse().read().decode().splitlines():
        if line.startswith("lbmio_etcd_revision "):
            return int(line.split()[1])
    raise SystemExit("no lbmio_etcd_revision in /metrics")


def until_applied(admin_port, revision, timeout_s=60):
    """Seconds until the instance applied `revision` (polled every 1 ms)."""
    start = time.monotonic()
    while applied(admin_port) < revision:
        if time.monotonic() - start > timeout_s:
            raise SystemExit(f"revision {revision} not applied within {timeout_s} s")
        time.sleep(0.001)
    return time.monotonic() - start


def scale(argv):
    etcd_ep, prefix, admin_port, sizes, changes = argv
    admin_port, changes = int(admin_port), int(changes)
    etcd = Etcd(etcd_ep)
    print("| routes in etcd | burst of puts | puts took (s) | applied after the last put (ms) "
          "| one change: median (ms) | p90 (ms) | max (ms) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    have = 0
    for size in (int(s) for s in sizes.split(",")):
        start = time.monotonic()
        revision = 0
        for i in range(have, size):
            revision = etcd.put(prefix + f"routes/g{i:05}", route_doc(f"g{i:05}", f"/g{i}/", "b"))
        burst_s = time.monotonic() - start
        lag = until_applied(admin_port, revision) * 1000 if size > have else 0.0
        burst = size - have
        have = size
        times = []
        for i in range(changes):
            revision = etcd.put(prefix + "routes/sw", route_doc("sw", "/sw/", "b" if i % 2 else "a"))
            times.append(until_applied(admin_port, revision) * 1000)
            time.sleep(0.02)
        times.sort()
        p90 = times[max(0, -(-len(times) * 9 // 10) - 1)]
        median = times[len(times) // 2] if len(times) % 2 else sum(times[len(times) // 2 - 1:len(times) // 2 + 1]) / 2
        print(f"| {size} | {burst} | {burst_s:.2f} | {lag:.1f} | {median:.1f} | {p90:.1f} | {times[-1]:.1f} |")


def main():
    cmd, argv = sys.argv[1], sys.argv[2:]
    if cmd == "put":
        print(Etcd(argv[0]).put(argv[1], argv[2]))
    elif cmd == "propagate":
        propagate(argv)
    elif cmd == "churn":
        churn(argv)
    elif cmd == "scale":
        scale(argv)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
