#!/usr/bin/env bash
# Health checks at scale: the CPU of lb-mio's `health` thread probing N backends.
#
#   benches/probes.sh                        # 10,000 backends, about 40 s
#   N=60 benches/probes.sh                   # quick look
#
# One process (benches/probe_responder.py) plays all N backends: it listens on one port of N
# loopback addresses (127.1.x.y) and answers every request with an empty 200. lb-mio gets a
# config naming them all, probes every INTERVAL_MS, and after a warm-up (the first round spread
# over the interval) the script reads, over SECS seconds: the utime+stime of the thread named
# `health` (/proc/PID/task/TID/stat), the probes the responder answered, and lb-mio's threads.
# The responder is Python: its probes/s is worth comparing with N / interval, to see that it
# kept up.
#
# Environment (defaults in brackets):
#   N           backends [10000] (more than lb-mio's MAX_BACKENDS fails at its config check)
#   INTERVAL_MS health check interval [2000]     TIMEOUT_MS  probe timeout [1000]
#   SECS        measured seconds [20]             WARM        warm-up seconds [2 intervals + 2]
#   PORT_BASE   backends on +1, lb-mio +10 [31000]
#   RESULTS     markdown file written [benches/results/probes-YYYY-MM-DD.md]
#   KEEP_TMP    1 keeps the work directory (config, logs) [0]
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$ROOT/benches"
N=${N:-10000}
INTERVAL_MS=${INTERVAL_MS:-2000}
TIMEOUT_MS=${TIMEOUT_MS:-1000}
SECS=${SECS:-20}
WARM=${WARM:-$((2 * INTERVAL_MS / 1000 + 2))}
PORT_BASE=${PORT_BASE:-31000}
KEEP_TMP=${KEEP_TMP:-0}
RESULTS=${RESULTS:-"$BENCH_DIR/results/probes-$(date +%F).md"}
RESPONDER="$BENCH_DIR/probe_responder.py"

# shellcheck source=benches/common.sh
. "$BENCH_DIR/common.sh"
PORT=${B[1]}

[ "$N" -ge 1 ] && [ "$N" -le 64000 ] || die "N must be 1..64000 (the responder's 127.1.x.y addresses)"

stop_services() {
    [ ${#SERVICE_PIDS[@]} -gt 0 ] && stop_pids "${SERVICE_PIDS[@]}"
    SERVICE_PIDS=()
}

machine_info() {
    local cpu
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    echo "- machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r) (shared with other work: expect noise)"
    echo "- lb-mio: commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown); $("$LB_BIN" --version 2>&1 | head -n 1)"
    echo "- responder: $(python3 --version 2>&1), benches/probe_responder.py"
}

# The config: N backends at the responder's addresses (its mapping: 127.1.(i/250).(1+i%250)).
write_config() {
    {
        printf '[lb]\nlisten = 127.0.0.1:%s\nworkers = 1\n' "$LB_PORT"
        printf '[health]\ninterval_ms = %s\ntimeout_ms = %s\n' "$INTERVAL_MS" "$TIMEOUT_MS"
        echo '[backends]'
        awk -v n="$N" -v port="$PORT" 'BEGIN {
            for (i = 0; i < n; i++) printf "b%d = 127.1.%d.%d:%d\n", i, int(i / 250), 1 + i % 250, port
        }'
    } >"$WORK/lb-mio.ini"
}

# utime+stime (clock ticks) of PID's thread named NAME.
thread_ticks() {
    local pid=$1 name=$2 task
    for task in /proc/"$pid"/task/*; do
        [ "$(cat "$task/comm" 2>/dev/null)" = "$name" ] || continue
        sed 's/^.*) //' "$task/stat" | awk '{print $12 + $13}'
        return
    done
    die "lb-mio has no thread named $name"
}

answered() { cat "$WORK/answered" 2>/dev/null || echo 0; }

# Waits until the responder wrote its first count (it has bound every address by then).
wait_responder() {
    local pid=$1 i
    for i in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || die "the responder exited at startup (see $WORK/responder.log)"
        [ -f "$WORK/answered" ] && return 0
        sleep 0.1
    done
    die "the responder did not start within 30 s"
}

main() {
    begin_run
    ensure_tools python3=python3 curl=curl ss=iproute2
    check_ports "$PORT" "$LB_PORT"
    build
    prepare_run probes
    # N listening sockets in the responder, and lb-mio's probes: as many descriptors as allowed.
    ulimit -n "$(ulimit -Hn)"
    write_config
    log "responder: $N backends on 127.1.x.y:$PORT"
    python3 "$RESPONDER" "$N" "$PORT" "$WORK/answered" >"$WORK/responder.log" 2>&1 &
    SERVICE_PIDS+=($!)
    wait_responder $!
    "$LB_BIN" "$WORK/lb-mio.ini" >"$WORK/lb-mio.log" 2>&1 &
    local lb=$!
    SERVICE_PIDS+=("$lb")
    LOGS[lb-mio]="$WORK/lb-mio.log"
    sleep 1
    kill -0 "$lb" 2>/dev/null || die "lb-mio exited at startup: $(tail -n 3 "$WORK/lb-mio.log")"
    log "warm-up: ${WARM} s (the first round is spread over the interval)"
    sleep "$WARM"
    local hz ticks0 count0 t0 ticks1 count1 t1
    hz=$(getconf CLK_TCK)
    ticks0=$(thread_ticks "$lb" health) count0=$(answered) t0=$(date +%s.%N)
    log "measuring: ${SECS} s"
    sleep "$SECS"
    ticks1=$(thread_ticks "$lb" health) count1=$(answered) t1=$(date +%s.%N)
    alive "$lb" || die "lb-mio died during the run (see $WORK/lb-mio.log)"
    local threads downs rss
    threads=$(ls /proc/"$lb"/task | wc -l)
    rss=$(awk '/^VmRSS:/ { print $2 }' /proc/"$lb"/status)
    downs=$(grep -c ' is down' "$WORK/lb-mio.log" || true)
    local table
    table=$(awk -v n="$N" -v iv="$INTERVAL_MS" -v t0="$t0" -v t1="$t1" \
        -v ticks=$((ticks1 - ticks0)) -v hz="$hz" -v probes=$((count1 - count0)) \
        -v threads="$threads" -v rss="$rss" -v downs="$downs" 'BEGIN {
        cpu = ticks / hz; dt = t1 - t0
        printf "| backends | interval | probes/s expected | probes/s answered | health thread CPU | CPU per probe | lb-mio threads | lb-mio RSS | backends marked down |\n"
        printf "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        printf "| %d | %d ms | %.0f | %.0f | %.1f%% of a core | %.0f µs | %d | %.1f MiB | %d |\n",
            n, iv, n * 1000 / iv, probes / dt, 100 * cpu / dt, probes ? 1e6 * cpu / probes : 0,
            threads, rss / 1024, downs
    }')
    local elapsed=$(($(date +%s) - START_EPOCH))
    {
        echo "# Health checks: the \`health\` thread's CPU with $N backends"
        echo
        run_header "N=$N INTERVAL_MS=$INTERVAL_MS SECS=$SECS benches/probes.sh" "$elapsed"
        echo
        echo "$table"
        echo
        echo "CPU: utime+stime of the thread named \`health\` over the ${SECS} s measured (clock ticks of 1/$hz s)."
        echo "Probes answered: counted by the responder (one Python thread: below the expected rate, it is the bottleneck)."
    } >"$RESULTS"
    print_summary "$table"
    log "results: $RESULTS"
}

main "$@"
