#!/usr/bin/env bash
# Every lb-mio strategy in one run, against three backends of which one is slow.
#
#   benches/strategies.sh                 # 9 strategies x DURATION: about 1.5 minutes
#   DURATION=10s benches/strategies.sh
#
# Environment (defaults in brackets):
#   DURATION    wrk -d per strategy [5s]       CONNS    wrk -c [32]   THREADS  wrk -t [2]
#   SLOW_MS     the slow backend's delay [20]  STRATEGIES  the strategies measured [all nine]
#   PORT_BASE   backends on +1..+3, lb-mio +10, its admin port +20 [29500]
#   RESULTS     markdown file written [benches/results/strategies-YYYY-MM-DD.md]
#   KEEP_TMP    1 keeps the work directory (configs, logs, raw wrk output) [0]
#
# Backends: fast1 and fast2 are examples/backend.rs (one process, two ports), slow is
# examples/slow_backend.rs answering after SLOW_MS. lb-mio runs with workers = 2; every backend
# has weight 1, except under the weighted_* strategies, where fast1 / fast2 / slow have weights
# 2 / 2 / 1. Each strategy gets a fresh lb-mio, so its /metrics counters are that run's alone.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$ROOT/benches"
DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
SLOW_MS=${SLOW_MS:-20}
STRATEGIES=${STRATEGIES:-"round_robin weighted_round_robin least_conn weighted_least_conn random weighted_random p2c ewma hash"}
PORT_BASE=${PORT_BASE:-29500}
KEEP_TMP=${KEEP_TMP:-0}
RESULTS=${RESULTS:-"$BENCH_DIR/results/strategies-$(date +%F).md"}

# Ports (B[1..3], LB_PORT), binaries, WORK, SERVICE_PIDS, LOGS, NOTES and the shared helpers.
. "$(dirname "$0")/common.sh"

ADMIN_PORT=$((PORT_BASE + 20))
SLOW_BIN="$ROOT/target/release/examples/slow_backend"
NAMES=(fast1 fast2 slow)
LB_PID=""

machine_info() {
    # common.sh's lines, minus the nginx / haproxy versions (not used here).
    machine_lines " (shared with other work: expect noise)" "; $("$LB_BIN" --version 2>&1 | head -n 1)" |
        grep -v -e '^- nginx' -e '^- HA-\?Proxy' -e '^- .*not found'
    echo "- $(wrk -v 2>&1 | head -n 1)"
}

stop_services() {
    [ ${#SERVICE_PIDS[@]} -gt 0 ] && stop_pids "${SERVICE_PIDS[@]}"
    SERVICE_PIDS=()
}

start_backends() {
    LOGS[fast]="$WORK/fast.log" LOGS[slow]="$WORK/slow.log"
    "$BACKEND_BIN" "${B[1]}" "${B[2]}" >"${LOGS[fast]}" 2>&1 &
    local fast=$!
    SERVICE_PIDS+=("$fast")
    "$SLOW_BIN" "${B[3]}" "$SLOW_MS" slow >"${LOGS[slow]}" 2>&1 &
    local slow=$!
    SERVICE_PIDS+=("$slow")
    wait_http "${B[1]}" "$fast" fast
    wait_http "${B[2]}" "$fast" fast
    wait_http "${B[3]}" "$slow" slow
}

# lb-mio with strategy $1, fresh counters; sets LB_PID.
start_lb() {
    local strategy=$1 cfg="$WORK/lb-mio-$1.ini" w=(1 1 1)
    case $strategy in weighted_*) w=(2 2 1) ;; esac
    cat >"$cfg" <<EOF
[lb]
listen = 127.0.0.1:$LB_PORT
workers = 2
strategy = $strategy

[log]
level = warn
access_log = false

[admin]
listen = 127.0.0.1:$ADMIN_PORT

[backends]
fast1 = 127.0.0.1:${B[1]} weight=${w[0]}
fast2 = 127.0.0.1:${B[2]} weight=${w[1]}
slow = 127.0.0.1:${B[3]} weight=${w[2]}
EOF
    LOGS[lb-mio]="$WORK/lb-mio-$strategy.log"
    "$LB_BIN" "$cfg" >"${LOGS[lb-mio]}" 2>&1 &
    LB_PID=$!
    SERVICE_PIDS+=("$LB_PID")
    wait_http "$LB_PORT" "$LB_PID" lb-mio
}

stop_lb() {
    stop_pids "$LB_PID"
    local keep=() p
    for p in "${SERVICE_PIDS[@]}"; do [ "$p" = "$LB_PID" ] || keep+=("$p"); done
    SERVICE_PIDS=("${keep[@]}")
}

# wrk's done() prints one line: "RESULT requests duration_us errors non2xx p50 p99 p999" (us).
write_lua() {
    cat >"$WORK/report.lua" <<'EOF'
done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format("RESULT %d %d %d %d %d %d %d\n",
      summary.requests, summary.duration,
      e.connect + e.read + e.write + e.timeout, e.status,
      latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
EOF
}

# Sum of lbmio_responses_total over status classes for each backend: "fast1 fast2 slow".
backend_counts() {
    curl -s -m 5 "http://127.0.0.1:$ADMIN_PORT/metrics" >"$WORK/metrics-$1.txt" ||
        die "cannot read lb-mio's /metrics"
    local n out=()
    for n in "${NAMES[@]}"; do
        out+=("$(awk -v b="backend=\"$n\"" '
            $1 ~ /^lbmio_responses_total\{/ && index($1, b) { s += $2 } END { print s + 0 }' \
            "$WORK/metrics-$1.txt")")
    done
    echo "${out[*]}"
}

pct() { awk -v a="$1" -v t="$2" 'BEGIN { p = t ? 100 * a / t : 0; if (p > 0 && p < 0.1) print "<0.1"; else printf "%.1f", p }'; }

measure() {
    local s=$1 line req dur errs non2xx p50 p99 p999 c1 c2 c3 total
    log "$s: wrk -t$THREADS -c$CONNS -d$DURATION"
    start_lb "$s"
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$WORK/report.lua" \
        "http://127.0.0.1:$LB_PORT/" >"$WORK/wrk-$s.txt" 2>&1 || die "wrk failed for $s"
    line=$(grep '^RESULT ' "$WORK/wrk-$s.txt") || die "no RESULT line from wrk for $s"
    read -r _ req dur errs non2xx p50 p99 p999 <<<"$line"
    read -r c1 c2 c3 <<<"$(backend_counts "$s")"
    stop_lb
    total=$((c1 + c2 + c3))
    ROWS+=("$(printf '| %s | %s | %s | %s | %s | %s / %s / %s | %s |' "$s" \
        "$(awk -v r="$req" -v d="$dur" 'BEGIN { printf "%.0f", r / (d / 1e6) }')" \
        "$(awk -v v="$p50" 'BEGIN { printf "%.2f", v / 1000 }')" \
        "$(awk -v v="$p99" 'BEGIN { printf "%.2f", v / 1000 }')" \
        "$(awk -v v="$p999" 'BEGIN { printf "%.2f", v / 1000 }')" \
        "$(pct "$c1" "$total")" "$(pct "$c2" "$total")" "$(pct "$c3" "$total")" \
        "$((errs + non2xx))")")
    log "${ROWS[-1]}"
}

main() {
    begin_run
    ensure_tools wrk=wrk curl=curl ss=iproute2 cargo=-
    build backend slow_backend
    prepare_run strategies
    check_ports "${B[1]}" "${B[2]}" "${B[3]}" "$LB_PORT" "$ADMIN_PORT"
    write_lua
    start_backends
    ROWS=()
    local s
    for s in $STRATEGIES; do measure "$s"; done
    stop_services

    local table
    table=$(
        echo "| strategy | req/s | p50 ms | p99 ms | p99.9 ms | share fast1 / fast2 / slow % | errors |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
        printf '%s\n' "${ROWS[@]}"
    )
    mkdir -p "$(dirname "$RESULTS")"
    {
        echo "# lb-mio strategies with one slow backend ($(date +%F))"
        echo
        echo "Three backends on loopback: fast1 and fast2 (examples/backend.rs) answer at once, slow"
        echo "(examples/slow_backend.rs) after ${SLOW_MS} ms. lb-mio with workers = 2, a fresh process per"
        echo "strategy; all weights 1, except weighted_* with fast1 / fast2 / slow = 2 / 2 / 1. Load:"
        echo "\`wrk -t$THREADS -c$CONNS -d$DURATION --latency\` (keep-alive) per strategy. Latency percentiles"
        echo "from wrk; shares from lb-mio's \`lbmio_responses_total\` (all status classes) per backend"
        echo "after the run; errors = wrk socket errors + non-2xx responses."
        echo
        run_header "${BENCH_CMD:-benches/strategies.sh}" $(($(date +%s) - START_EPOCH))
        echo
        echo "$table"
        echo
        echo "- hash hashes the client address: all of wrk's connections come from 127.0.0.1, so"
        echo "  they all land on one backend (which one depends on the hash), by design."
        echo "- With 32 connections and a closed loop, throughput is bounded by how often a"
        echo "  connection waits ${SLOW_MS} ms on slow: the fewer requests a strategy sends there, the"
        echo "  higher its req/s and the lower its p99."
        if [ ${#NOTES[@]} -gt 0 ]; then printf -- '- note: %s\n' "${NOTES[@]}"; fi
    } >"$RESULTS"
    log "results: $RESULTS"
    print_summary "$table"
}

BENCH_CMD="$(printf '%q ' DURATION="$DURATION" "$0" "$@")"
BENCH_CMD=${BENCH_CMD% }
main "$@"
