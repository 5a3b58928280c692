#!/usr/bin/env python3
"""Many health-checked backends in one process, for benches/probes.sh.

    probe_responder.py N PORT COUNT_FILE

Listens on PORT of N loopback addresses (backend i at 127.1.(i // 250).(1 + i % 250), the
mapping benches/probes.sh writes into lb-mio's config), answers every request with an empty
200 and closes, and writes the number of requests answered so far to COUNT_FILE every second.
One thread, one selector: it costs the bench one core at most, whatever N is.
"""

import os
import selectors
import socket
import sys
import time

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def address(i):
    return f"127.1.{i // 250}.{1 + i % 250}"


def main():
    n, port, count_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    sel = selectors.DefaultSelector()
    for i in range(n):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address(i), port))
        listener.listen(64)
        listener.setblocking(False)
        sel.register(listener, selectors.EVENT_READ, None)
    answered = 0
    next_report = 0.0
    while True:
        for key, _ in sel.select(timeout=0.5):
            if key.data is None:
                try:
                    conn, _ = key.fileobj.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ, bytearray())
                continue
            conn, head = key.fileobj, key.data
            try:
                chunk = conn.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            head += chunk
            if chunk and b"\r\n\r\n" not in head:
                continue
            if chunk:
                try:
                    conn.send(ANSWER)  # a fresh socket's buffer takes it whole
                    answered += 1
                except OSError:
                    pass
            sel.unregister(conn)
            conn.close()
        now = time.monotonic()
        if now >= next_report:
            next_report = now + 1.0
            with open(count_file + ".tmp", "w") as f:
                f.write(f"{answered}\n")
            os.replace(count_file + ".tmp", count_file)


if __name__ == "__main__":
    main()
