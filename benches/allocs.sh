#!/usr/bin/env bash
# Heap allocations per request: lb-mio (one worker) under valgrind's dhat, for N requests on 8
# keep-alive connections, once with N = 2000 and once with N = 10000. If the steady state
# allocates nothing per request, both runs count (nearly) the same blocks.
#
#   benches/allocs.sh                 # access log on (text, to a file): the worst case
#   ACCESS_LOG=off benches/allocs.sh  # access log off
#
# About two minutes; installs valgrind if missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ACCESS_LOG=${ACCESS_LOG:-text}
PORT_BASE=${PORT_BASE:-29000}
BIN="$ROOT/target/release/lb-mio"
BACKEND="$ROOT/target/release/examples/backend"
WORK=$(mktemp -d /tmp/lb-mio-allocs.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

command -v valgrind >/dev/null || apt-get install -y -qq valgrind >/dev/null
(cd "$ROOT" && cargo build --release --quiet && cargo build --release --quiet --example backend)

"$BACKEND" $((PORT_BASE + 1)) >"$WORK/backend.log" 2>&1 &
PIDS+=($!)

# N requests, spread over 8 keep-alive connections; fails on any non-200.
load() {
    python3 - "$1" "$2" <<'EOF'
import http.client, sys, threading
port, n = int(sys.argv[1]), int(sys.argv[2])
def run(count):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(count):
        c.request("GET", "/")
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
threads = [threading.Thread(target=run, args=(n // 8,)) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
EOF
}

# One run: lb-mio under dhat, N requests, SIGTERM; prints "N blocks bytes".
measure() {
    local n=$1 port=$((PORT_BASE + 10)) cfg="$WORK/lb-mio.ini" out="$WORK/dhat-$1.txt" pid i
    cat >"$cfg" <<EOF
[lb]
listen = 127.0.0.1:$port
workers = 1
[log]
level = warn
access_log = $ACCESS_LOG
access_log_file = $WORK/access.log
[backends]
s1 = 127.0.0.1:$((PORT_BASE + 1))
EOF
    valgrind --tool=dhat --dhat-out-file=/dev/null "$BIN" "$cfg" 2>"$out" &
    pid=$!
    for i in $(seq 300); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.1
    done
    load "$port" "$n"
    kill -TERM "$pid"
    wait "$pid" || true
    awk -v n="$n" '/Total:/ { gsub(/,/, ""); print n, $6, $3 }' "$out"
}

echo "access_log = $ACCESS_LOG; requests, blocks allocated in all, bytes allocated in all:"
measure 2000
measure 10000
