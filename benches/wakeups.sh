#!/usr/bin/env bash
# Wake-ups of an idle lb-mio: three demo backends, the default health checks (every 2 s), no
# traffic. Counts the context switches of every thread of the lb-mio process over SECS seconds
# with `perf stat -e context-switches`, and the same from /proc (voluntary and involuntary
# switches of each thread), which also says which thread woke.
#
#   benches/wakeups.sh                                   # this tree's release build
#   BINS="before=/tmp/lb-mio-main after=target/release/lb-mio" benches/wakeups.sh
#
# Each binary in BINS runs in turn, ROUNDS times interleaved, each time a fresh process that
# first runs for SETTLE seconds (its start and first probes), then is watched for SECS seconds.
#
# Environment (defaults in brackets):
#   BINS       space-separated LABEL=PATH [lb-mio=target/release/lb-mio, built first]
#   SECS       seconds watched [10]              ROUNDS    rounds per binary [3]
#   SETTLE     seconds before watching [3]       WORKERS   [lb] workers [1]
#   PORT_BASE  backends on +1..+3, lb-mio +10, its admin listener +20 [33000]
#   RESULTS    markdown file written [benches/results/wakeups-YYYY-MM-DD.md]
#   KEEP_TMP   1 keeps the work directory [0]
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$ROOT/benches"
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-3}
SETTLE=${SETTLE:-3}
WORKERS=${WORKERS:-1}
PORT_BASE=${PORT_BASE:-33000}
KEEP_TMP=${KEEP_TMP:-0}
RESULTS=${RESULTS:-"$BENCH_DIR/results/wakeups-$(date +%F).md"}

. "$(dirname "$0")/common.sh"

BINS=${BINS:-"lb-mio=$LB_BIN"}
ADMIN_PORT=$((PORT_BASE + 20))

stop_services() {
    if [ ${#SERVICE_PIDS[@]} -gt 0 ]; then stop_pids "${SERVICE_PIDS[@]}"; fi
    SERVICE_PIDS=()
}

machine_info() {
    machine_lines " (shared with other work)" "; perf $(perf --version 2>&1 | awk '{ print $3 }')" |
        grep -v -e '^- nginx' -e '^- HAProxy'
}

# Context switches of every thread of PID so far, from /proc.
proc_switches() {
    cat /proc/"$1"/task/*/status 2>/dev/null |
        awk '/^(non)?voluntary_ctxt_switches:/ { n += $2 } END { print n + 0 }'
}

# "thread=switches ..." for every thread of PID.
per_thread() {
    local task
    for task in /proc/"$1"/task/*; do
        printf '%s=%s ' "$(cat "$task/comm")" \
            "$(awk '/^(non)?voluntary_ctxt_switches:/ { n += $2 } END { print n + 0 }' "$task/status")"
    done
}

# One measurement: LABEL PATH ROUND; appends a CSV row to $WORK/runs.csv.
measure() {
    local label=$1 bin=$2 round=$3 cfg="$WORK/lb-mio.ini" pid p0 p1 perf_n before after
    render "$BENCH_DIR/wakeups-lb-mio.ini.in" "$cfg" "$LB_PORT" "$WORKERS" ADMIN="$ADMIN_PORT"
    LOGS[lb-mio]="$WORK/lb-mio-$label-$round.log"
    "$bin" "$cfg" >>"${LOGS[lb-mio]}" 2>&1 &
    pid=$!
    SERVICE_PIDS+=("$pid")
    wait_http "$LB_PORT" "$pid" lb-mio
    sleep "$SETTLE"
    before=$(per_thread "$pid")
    p0=$(proc_switches "$pid")
    perf_n=$(perf stat -x, -e context-switches -p "$pid" -- sleep "$SECS" 2>&1 >/dev/null |
        awk -F, '/context-switches/ { print $1 }')
    p1=$(proc_switches "$pid")
    after=$(per_thread "$pid")
    alive "$pid" || die "lb-mio ($label) died; see ${LOGS[lb-mio]}"
    stop_services
    echo "$label,$round,$perf_n,$((p1 - p0)),$before,$after" >>"$WORK/runs.csv"
    log "$(printf '%-8s round %s: perf %5s, /proc %5s context switches in %s s; threads after: %s' \
        "$label" "$round" "$perf_n" "$((p1 - p0))" "$SECS" "$after")"
}

# runs.csv -> markdown table of medians, one row per binary.
summarize() {
    awk -F, -v secs="$SECS" "$AWK_STATS"'
        {
            if (!($1 in seen)) { seen[$1] = 1; order[++m] = $1 }
            perf[$1] = perf[$1] " " $3; proc[$1] = proc[$1] " " $4
        }
        END {
            printf "| build | context switches in %d s (perf, median) | per second | from /proc (median) |\n", secs
            print "|---|---:|---:|---:|"
            for (i = 1; i <= m; i++) {
                b = order[i]
                printf "| %s | %d | **%.1f** | %d |\n", b, median(perf[b]), median(perf[b]) / secs, median(proc[b])
            }
        }
    ' "$WORK/runs.csv"
}

write_results() {
    local table=$1 elapsed=$2 cmd
    cmd="BINS=\"$BINS\" SECS=$SECS ROUNDS=$ROUNDS SETTLE=$SETTLE WORKERS=$WORKERS PORT_BASE=$PORT_BASE benches/wakeups.sh"
    mkdir -p "$(dirname "$RESULTS")"
    {
        echo "# Wake-ups of an idle lb-mio, $(date +%F)"
        echo
        run_header "$cmd" "$elapsed"
        echo
        echo "$table"
        echo
        echo "How to read it:"
        echo "- Each measurement is a fresh lb-mio ($WORKERS worker, admin listener on, access log on) in front of three demo backends (examples/backend.rs, another process) with the default health checks (\`GET /healthcheck\` every 2 s ±10%) and no traffic. After $SETTLE s, \`perf stat -e context-switches -p PID -- sleep $SECS\` counts how often its threads went to sleep and woke (or were preempted); the /proc column sums voluntary_ctxt_switches + nonvoluntary_ctxt_switches over /proc/PID/task/*/status over the same window. Medians over $ROUNDS interleaved rounds."
        echo "- Config: benches/wakeups-lb-mio.ini.in."
        echo
        echo "<details><summary>Raw runs (CSV; per-thread counts since start, before and after the window)</summary>"
        echo
        echo '```'
        echo "build,round,perf,proc,threads_before,threads_after"
        cat "$WORK/runs.csv"
        echo '```'
        echo
        echo "</details>"
    } >"$RESULTS"
    log "results: $RESULTS"
}

main() {
    local round spec
    begin_run
    ensure_tools perf=- curl=curl cargo=-
    check_ports "${B[1]}" "${B[2]}" "${B[3]}" "$LB_PORT" "$ADMIN_PORT"
    build backend
    prepare_run wakeups
    "$BACKEND_BIN" "${B[1]}" "${B[2]}" "${B[3]}" >"$WORK/backend.log" 2>&1 &
    local backends=$!
    HELPER_PIDS+=("$backends")
    LOGS[backend]="$WORK/backend.log"
    wait_http "${B[1]}" "$backends" backend
    for round in $(seq "$ROUNDS"); do
        for spec in $BINS; do
            measure "${spec%%=*}" "${spec#*=}" "$round"
        done
    done
    local table
    table=$(summarize)
    write_results "$table" $(($(date +%s) - START_EPOCH))
    print_summary "$table"
}

main "$@"
