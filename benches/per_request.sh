#!/usr/bin/env bash
# What one proxied request costs lb-mio, counted rather than timed, so a shared, noisy machine
# does not blur it: instructions (valgrind's callgrind) and heap allocations (dhat), for lb-mio
# with one worker behind which N GETs run on 8 keep-alive connections. Each figure is the
# difference between a run of 10,000 requests and one of 2,000, divided by 8,000, so start-up
# and shutdown cancel out; with no allocation per request, dhat's two totals are (nearly) equal.
#
#   benches/per_request.sh                              # this tree, access log off and on
#   BASE_BIN=/path/to/old/lb-mio benches/per_request.sh # and another build, log off
#
# About five minutes; installs valgrind if missing. Prints a markdown table.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT_BASE=${PORT_BASE:-29000}
BASE_BIN=${BASE_BIN:-}
BIN="$ROOT/target/release/lb-mio"
BACKEND="$ROOT/target/release/examples/backend"
WORK=$(mktemp -d /tmp/lb-mio-per-request.XXXXXX)
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
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(count):
        c.request("GET", "/")
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
threads = [threading.Thread(target=run, args=(n // 8,)) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
EOF
}

# One run: BIN under TOOL with access log ACCESS, N requests, SIGTERM; prints the tool's total
# (instructions for callgrind, "blocks bytes" for dhat).
run() {
    local tool=$1 bin=$2 access=$3 n=$4 port=$((PORT_BASE + 10)) cfg="$WORK/lb-mio.ini"
    local out="$WORK/$tool.txt" pid i
    cat >"$cfg" <<EOF
[lb]
listen = 127.0.0.1:$port
workers = 1
[backends]
s1 = 127.0.0.1:$((PORT_BASE + 1))
[log]
level = warn
access_log = $access
EOF
    [ "$access" = false ] || echo "access_log_file = $WORK/access.log" >>"$cfg"
    case $tool in
        callgrind) valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$cfg" 2>"$out" & ;;
        dhat) valgrind --tool=dhat --dhat-out-file=/dev/null "$bin" "$cfg" 2>"$out" & ;;
    esac
    pid=$!
    for i in $(seq 600); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.1
    done
    load "$port" "$n"
    kill -TERM "$pid"
    wait "$pid" || true
    case $tool in
        callgrind) awk '/Collected :/ { print $4 }' "$out" ;;
        dhat) awk '/Total:/ { gsub(/,/, ""); print $6, $3 }' "$out" ;;
    esac
}

per_request() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) / 8000 }'; }

echo "| build | access log | instructions / request | heap blocks, 2,000 → 10,000 requests |"
echo "|---|---|---:|---|"
for case in "this:false" "this:text" "this:json" ${BASE_BIN:+"base:false"}; do
    build=${case%%:*} access=${case#*:}
    bin=$BIN
    [ "$build" = base ] && bin=$BASE_BIN
    i2=$(run callgrind "$bin" "$access" 2000)
    i10=$(run callgrind "$bin" "$access" 10000)
    blocks=–
    if [ "$build" = this ]; then
        read -r b2 _ < <(run dhat "$bin" "$access" 2000)
        read -r b10 _ < <(run dhat "$bin" "$access" 10000)
        blocks="$b2 → $b10"
    fi
    echo "| $build | $access | $(per_request "$i2" "$i10") | $blocks |"
done
