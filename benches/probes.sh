#!/usr/bin/env bash
# Health checks at scale: the CPU of lb-mio's `health` thread probing N backends.
#
#   benches/probes.sh                        # 10,000 backends, about 40 s
#   N=60 benches/probes.sh                   # quick look
#   N="10 10000" ROUNDS=3 benches/probes.sh  # memory per backend: RSS with 10 and 10,000
#
# One process (benches/probe_responder.py) plays all N backends: it listens on one port of N
# loopback addresses (127.1.x.y) and answers every request with an empty 200. lb-mio gets a
# config naming them all, probes every INTERVAL_MS, and after a warm-up (the first round spread
# over the interval) the script reads, over SECS seconds: the utime+stime of the thread named
# `health` (/proc/PID/task/TID/stat), the probes the responder answered, and lb-mio's threads.
# The responder is Python: its probes/s is worth comparing with N / interval, to see that it
# kept up. With several N, each round runs every N in turn (interleaved), the table shows
# medians, and the RSS difference between the largest and smallest N per backend added.
#
# Environment (defaults in brackets):
#   N           backends, or a list of counts [10000] (more than lb-mio's MAX_BACKENDS fails at
#               its config check)                 ROUNDS      rounds over every N [1]
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
ROUNDS=${ROUNDS:-1}
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

for n in $N; do
    [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 64000 ] ||
        die "N must be counts in 1..64000 (the responder's 127.1.x.y addresses)"
done

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

# The config for $1 backends at the responder's addresses (its mapping: 127.1.(i/250).(1+i%250)).
write_config() {
    local n=$1
    {
        printf '[lb]\nlisten = 127.0.0.1:%s\nworkers = 1\n' "$LB_PORT"
        printf '[health]\ninterval_ms = %s\ntimeout_ms = %s\n' "$INTERVAL_MS" "$TIMEOUT_MS"
        echo '[backends]'
        awk -v n="$n" -v port="$PORT" 'BEGIN {
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

# One measured run with $1 backends: appends "n round cpu_ticks seconds probes threads rss_kib
# downs" to $WORK/runs.txt.
measure() {
    local n=$1 round=$2 responder lb
    write_config "$n"
    rm -f "$WORK/answered"
    log "round $round: responder with $n backends on 127.1.x.y:$PORT"
    python3 "$RESPONDER" "$n" "$PORT" "$WORK/answered" >"$WORK/responder.log" 2>&1 &
    responder=$!
    SERVICE_PIDS+=("$responder")
    wait_responder "$responder"
    "$LB_BIN" "$WORK/lb-mio.ini" >"$WORK/lb-mio.log" 2>&1 &
    lb=$!
    SERVICE_PIDS+=("$lb")
    LOGS[lb-mio]="$WORK/lb-mio.log"
    sleep 1
    kill -0 "$lb" 2>/dev/null || die "lb-mio exited at startup: $(tail -n 3 "$WORK/lb-mio.log")"
    log "warm-up: ${WARM} s (the first round is spread over the interval)"
    sleep "$WARM"
    local ticks0 count0 t0 ticks1 count1 t1
    ticks0=$(thread_ticks "$lb" health) count0=$(answered) t0=$(date +%s.%N)
    log "measuring: ${SECS} s"
    sleep "$SECS"
    ticks1=$(thread_ticks "$lb" health) count1=$(answered) t1=$(date +%s.%N)
    alive "$lb" || die "lb-mio died during the run (see $WORK/lb-mio.log)"
    echo "$n $round $((ticks1 - ticks0)) $(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }') \
$((count1 - count0)) $(ls /proc/"$lb"/task | wc -l) $(awk '/^VmRSS:/ { print $2 }' /proc/"$lb"/status) \
$(grep -c ' is down' "$WORK/lb-mio.log" || true)" >>"$WORK/runs.txt"
    stop_services
}

# runs.txt -> the table: one row per N, medians over rounds; then RSS per backend added.
summarize() {
    awk -v iv="$INTERVAL_MS" -v hz="$(getconf CLK_TCK)" "$AWK_STATS"'
        {
            if (!($1 in seen)) { seen[$1] = 1; order[++k] = $1 }
            cpu[$1] = cpu[$1] " " $3 / hz / $4; rate[$1] = rate[$1] " " $5 / $4
            per[$1] = per[$1] " " ($5 ? 1e6 * $3 / hz / $5 : 0)
            threads[$1] = threads[$1] " " $6; rss[$1] = rss[$1] " " $7; downs[$1] += $8; rounds[$1]++
        }
        END {
            print "| backends | interval | rounds | probes/s expected | probes/s answered | health thread CPU | CPU per probe | lb-mio threads | lb-mio RSS | backends marked down |"
            print "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            for (i = 1; i <= k; i++) {
                n = order[i]
                printf "| %d | %d ms | %d | %.0f | %.0f | %.1f%% of a core | %.0f µs | %d | %.1f MiB | %d |\n",
                    n, iv, rounds[n], n * 1000 / iv, median(rate[n]), 100 * median(cpu[n]),
                    median(per[n]), median(threads[n]), median(rss[n]) / 1024, downs[n]
                if (lo == "" || n + 0 < lo + 0) lo = n
                if (hi == "" || n + 0 > hi + 0) hi = n
            }
            if (k > 1) printf "\nRSS per backend added, %d → %d backends (medians): %.0f bytes\n",
                lo, hi, (median(rss[hi]) - median(rss[lo])) * 1024 / (hi - lo)
        }
    ' "$WORK/runs.txt"
}

main() {
    begin_run
    ensure_tools python3=python3 curl=curl ss=iproute2
    check_ports "$PORT" "$LB_PORT"
    build
    prepare_run probes
    # N listening sockets in the responder, and lb-mio's probes: as many descriptors as allowed.
    ulimit -n "$(ulimit -Hn)"
    : >"$WORK/runs.txt"
    local round n
    for round in $(seq "$ROUNDS"); do
        for n in $N; do measure "$n" "$round"; done
    done
    local table
    table=$(summarize)
    local elapsed=$(($(date +%s) - START_EPOCH))
    {
        echo "# Health checks: the \`health\` thread's CPU with $N backends"
        echo
        run_header "N=\"$N\" ROUNDS=$ROUNDS INTERVAL_MS=$INTERVAL_MS SECS=$SECS benches/probes.sh" "$elapsed"
        echo
        echo "$table"
        echo
        echo "CPU: utime+stime of the thread named \`health\` over the ${SECS} s measured (clock ticks of 1/$(getconf CLK_TCK) s); medians over rounds, each round every N in turn. RSS: lb-mio's VmRSS at the end of a run (one worker, after ${WARM} s of warm-up and ${SECS} s of probing)."
        echo "Probes answered: counted by the responder (one Python thread: below the expected rate, it is the bottleneck)."
        echo
        echo "Runs (backends, round, health ticks, seconds, probes answered, threads, RSS KiB, downs):"
        echo
        echo '```'
        cat "$WORK/runs.txt"
        echo '```'
    } >"$RESULTS"
    print_summary "$table"
    log "results: $RESULTS"
}

main "$@"
