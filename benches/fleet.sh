#!/usr/bin/env bash
# A fleet following etcd: how fast a change written to etcd reaches three lb-mio instances, and
# what a steady stream of changes costs the request path of one.
#
#   benches/fleet.sh                          # full run: about 6 minutes
#   DURATION=5s ROUNDS=3 benches/fleet.sh     # shorter
#
# 1. Propagation: one etcd (3.4, on loopback, data on /dev/shm) and three lb-mio instances
#    (workers = 1 each) following it, in front of the demo backends (examples/backend.rs).
#    benches/fleet_client.py makes CHANGES changes, one at a time, each a put through etcd's JSON
#    gateway, and times each from the put's return until the LAST instance serves it (every
#    instance polled every POLL_MS ms with a new connection). Kinds of change:
#      route     routes/sw switches between pool a and pool b (GET /sw/ answers another backend)
#      newroute  a new key routes/rN sends /rN/ to pool b (out of the default pool)
#      backend   a new backend registers into the empty pool c (backends/c/cN; the previous one's
#                key deleted first, untimed): it starts DOWN until its health checks pass
#                (interval 2 s, rise 2 by default), so this one measures the health checks.
#    route and newroute add no backend: they measure the watch and the snapshot swap.
# 2. Request path under changes: one lb-mio (workers = 1) on CPU 0; wrk, the demo backends, etcd
#    and the writer on CPU 1. wrk GET /sw/ for DURATION, with routes/sw rewritten in etcd every
#    CHURN_MS (switching pool a / b) versus no changes (the same writes under another prefix, so
#    etcd and the writer load CPU 1 alike); ROUNDS interleaved rounds of each (the order
#    alternates), throughput and CPU per request (utime+stime of lb-mio from /proc).
# 3. Scale: one lb-mio following etcd while the routes in etcd grow to each of SCALE_SIZES in a
#    burst of puts: how long after the burst's last put the instance has applied it, and how long
#    one change takes at that size (SCALE_CHANGES changes, until lbmio_etcd_revision shows it).
#
# Environment (defaults in brackets):
#   CHANGES   changes of kinds route and newroute [100]   BACKEND_CHANGES  of kind backend [10]
#   KINDS     kinds of change measured, in this order ["route newroute backend"]
#   POLL_MS   poll interval [2]                      TIMEOUT_S  a change not seen by then [10]
#   DURATION  wrk -d per measurement [10s]           ROUNDS     rounds of each [5]
#   CONNS     wrk connections [64]                   CHURN_MS   time between changes in 2. [100]
#   WARMUP    wrk run before round 1 [3s]            PARTS      any of "propagation load scale" [all]
#   SCALE_SIZES routes in etcd for 3. [0,1000,3000]  SCALE_CHANGES  single changes at each size [40]
#   PORT_BASE backends +1..+3, lb-mio +10..+12, admin +20..+22, etcd +30 (client) +31 (peer) [32000]
#   RESULTS   markdown file written [benches/results/fleet-YYYY-MM-DD.md]
#   KEEP_TMP  1 keeps the work directory (configs, logs, raw outputs) [0]
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$ROOT/benches"
CHANGES=${CHANGES:-100}
BACKEND_CHANGES=${BACKEND_CHANGES:-10}
POLL_MS=${POLL_MS:-2}
TIMEOUT_S=${TIMEOUT_S:-10}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-64}
CHURN_MS=${CHURN_MS:-100}
WARMUP=${WARMUP:-3s}
PARTS=${PARTS:-"propagation load scale"}
SCALE_SIZES=${SCALE_SIZES:-0,1000,3000}
SCALE_CHANGES=${SCALE_CHANGES:-40}
KINDS=${KINDS:-"route newroute backend"}
PORT_BASE=${PORT_BASE:-32000}
KEEP_TMP=${KEEP_TMP:-0}
RESULTS=${RESULTS:-"$BENCH_DIR/results/fleet-$(date +%F).md"}

. "$(dirname "$0")/common.sh"

CLK_TCK=$(getconf CLK_TCK)
CLIENT="$BENCH_DIR/fleet_client.py"
ETCD_PORT=$((PORT_BASE + 30)) ETCD_PEER=$((PORT_BASE + 31))
ETCD="127.0.0.1:$ETCD_PORT"
PREFIX=/lb-mio/
LB_PORTS=("$LB_PORT" $((LB_PORT + 1)) $((LB_PORT + 2)))
ADMIN_PORTS=($((PORT_BASE + 20)) $((PORT_BASE + 21)) $((PORT_BASE + 22)))
ETCD_DIR=""
LB_PIDS=()
PROP_TABLE="" LOAD_TABLE="" SCALE_TABLE=""

# lb-mio first, then etcd (etcd going first would make them log that they lost it).
stop_services() {
    if [ ${#LB_PIDS[@]} -gt 0 ]; then stop_pids "${LB_PIDS[@]}"; fi
    if [ ${#SERVICE_PIDS[@]} -gt 0 ]; then stop_pids "${SERVICE_PIDS[@]}"; fi
    SERVICE_PIDS=() LB_PIDS=()
    if [ -n "$ETCD_DIR" ]; then rm -rf "$ETCD_DIR"; fi
    ETCD_DIR=""
}

machine_info() {
    machine_lines " (shared with other work)" "" | grep -v -e '^- HAProxy' -e '^- nginx'
    echo "- $(etcd --version 2>&1 | head -n 1) (one member, loopback, --data-dir on /dev/shm, pinned to CPU 1)"
    echo "- wrk: $(wrk -v 2>&1 | head -n 1 | sed 's/ Copyright.*//'); $(python3 --version 2>&1) (benches/fleet_client.py)"
}

# A fresh etcd on loopback with its data on /dev/shm, pinned to CPU 1, with the prefix empty.
start_etcd() {
    ETCD_DIR=$(mktemp -d /dev/shm/lb-mio-fleet-etcd.XXXXXX)
    LOGS[etcd]="$WORK/etcd.log"
    taskset -c 1 etcd --name fleet-bench --data-dir "$ETCD_DIR" \
        --listen-client-urls "http://$ETCD" --advertise-client-urls "http://$ETCD" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
        --initial-cluster "fleet-bench=http://127.0.0.1:$ETCD_PEER" \
        --logger zap --log-level warn >>"${LOGS[etcd]}" 2>&1 &
    local pid=$!
    SERVICE_PIDS+=("$pid")
    for _ in $(seq 100); do
        alive "$pid" || die "etcd exited at startup (see ${LOGS[etcd]})"
        curl -sf -m 1 "http://$ETCD/health" 2>/dev/null | grep -q true && return 0
        sleep 0.1
    done
    die "etcd did not answer on $ETCD within 10 s"
}

# Instance N (0..2) of lb-mio following etcd, started with PIN (a taskset prefix or nothing).
start_lb() {
    local n=$1 cfg="$WORK/lb-mio-$1.ini" pid
    shift
    render "$BENCH_DIR/fleet-lb-mio.ini.in" "$cfg" "${LB_PORTS[$n]}" 1 \
        ADMIN="${ADMIN_PORTS[$n]}" ETCD="$ETCD_PORT"
    LOGS[lb-mio-$n]="$WORK/lb-mio-$n.log"
    "$@" "$LB_BIN" "$cfg" >>"${LOGS[lb-mio-$n]}" 2>&1 &
    pid=$!
    SERVICE_PIDS+=("$pid")
    LB_PIDS+=("$pid")
    wait_http "${LB_PORTS[$n]}" "$pid" "lb-mio-$n"
}

# The route every part starts from: /sw/ to pool a.
put_start_keys() {
    python3 "$CLIENT" put "$ETCD" "${PREFIX}routes/sw" \
        '{"version": 1, "name": "sw", "keys": [["path", "/sw/"], ["pool", "a"]]}' >/dev/null
}

# lbmio_etcd_revision of instance N, from its /metrics.
revision_of() {
    curl -s -m 2 "http://127.0.0.1:${ADMIN_PORTS[$1]}/metrics" |
        awk '$1 == "lbmio_etcd_revision" { print $2 }'
}

# The logs of the lb-mio instances started so far (level warn), for the notes; then moved aside
# under PART's name, so the next part's instances start with fresh logs. The kind backend's polls
# of the empty pool c are answered 503 with a "no backend is up" line each: counted apart.
log_notes() {
    local part=$1 n f other empty
    for n in 0 1 2; do
        f="$WORK/lb-mio-$n.log"
        [ -s "$f" ] || continue
        empty=$(grep -c 'no backend is up' "$f" || true)
        other=$(grep -v 'no backend is up' "$f" || true)
        [ "$empty" -gt 0 ] &&
            note "$part: lb-mio-$n logged $empty \"no backend is up\" warnings (one a request to the empty pool c, polled by the kind backend)"
        [ -n "$other" ] &&
            note "$part: lb-mio-$n logged $(echo "$other" | wc -l) other line(s), first: $(echo "$other" | head -n 1 | cut -c1-200)"
        mv "$f" "$WORK/$part-lb-mio-$n.log"
    done
}

# ---------------------------------------------------------------------------------------------
# 1. Propagation.

propagation() {
    local kind n k stamp
    log "propagation: etcd and three lb-mio instances (workers = 1, not pinned)"
    start_etcd
    put_start_keys
    for k in 0 1 2; do start_lb "$k"; done
    : >"$WORK/propagation.csv"
    for kind in $KINDS; do
        n=$CHANGES
        [ "$kind" = backend ] && n=$BACKEND_CHANGES
        [ "$n" -gt 0 ] || continue
        log "propagation: $n changes of kind $kind"
        python3 "$CLIENT" propagate "$ETCD" "$PREFIX" "$kind" "$n" \
            "$(IFS=,; echo "${LB_PORTS[*]}")" "$POLL_MS" "$TIMEOUT_S" \
            "${B[1]}" "${B[2]}" "${B[3]}" "$WORK/propagation.csv" 2>>"$WORK/propagation.err" ||
            die "fleet_client.py propagate $kind failed (see $WORK/propagation.err)"
    done
    alive "${LB_PIDS[@]}" || die "an lb-mio instance died during propagation (see $WORK)"
    stamp=""
    for k in 0 1 2; do stamp+=" $(revision_of "$k")"; done
    PROP_REVISIONS="lbmio_etcd_revision of the three instances at the end:$stamp; etcd's: $(python3 "$CLIENT" put "$ETCD" /fleet-bench-end x)"
    if [ -s "$WORK/propagation.err" ]; then
        note "fleet_client.py: $(head -n 3 "$WORK/propagation.err" | tr '\n' ' ')"
    fi
    stop_services
    log_notes propagation
    PROP_TABLE=$(summarize_propagation)
    echo "$PROP_TABLE" >&2
}

# propagation.csv (kind,i,revision,write_ms,ms1,ms2,ms3,last,gap) -> markdown table.
summarize_propagation() {
    awk -F, '
        function sortv(a, k,   i, j, v) {
            for (i = 2; i <= k; i++) { v = a[i]; for (j = i - 1; j >= 1 && a[j] > v; j--) a[j + 1] = a[j]; a[j + 1] = v }
        }
        # nearest-rank percentile of the k sorted values in a
        function pct(a, k, p,   r) { r = int(p / 100 * k + 0.999999); if (r < 1) r = 1; return a[r] }
        {
            if (!($1 in n)) order[++m] = $1
            n[$1]++
            if ($9 + 0 > 10) stalls[$1]++
            if ($8 == "") { timeouts[$1]++; next }
            if ($8 + 0 > worst[$1]) { worst[$1] = $8 + 0; worstgap[$1] = $9 + 0 }
            ok[$1]++; last[$1, ok[$1]] = $8 + 0
            for (c = 5; c <= 7; c++) { each[$1]++; inst[$1, each[$1]] = $c + 0 }
            write[$1, ok[$1]] = $4 + 0
        }
        END {
            print "| change | changes | timed out | median (ms) | p90 (ms) | max (ms) | min (ms) | each instance, median (ms) | etcd put, median (ms) | poller stalled > 10 ms | its longest stall in the max change (ms) |"
            print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            for (i = 1; i <= m; i++) {
                k = order[i]; c = ok[k] + 0
                if (c == 0) { printf "| %s | %d | %d | – | – | – | – | – | – | %d | – |\n", k, n[k], timeouts[k], stalls[k]; continue }
                delete a; for (j = 1; j <= c; j++) a[j] = last[k, j]; sortv(a, c)
                med = c % 2 ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
                p90 = pct(a, c, 90); mx = a[c]; mn = a[1]
                delete b; e = each[k]; for (j = 1; j <= e; j++) b[j] = inst[k, j]; sortv(b, e)
                emed = e % 2 ? b[(e + 1) / 2] : (b[e / 2] + b[e / 2 + 1]) / 2
                delete w; for (j = 1; j <= c; j++) w[j] = write[k, j]; sortv(w, c)
                wmed = c % 2 ? w[(c + 1) / 2] : (w[c / 2] + w[c / 2 + 1]) / 2
                printf "| %s | %d | %d | **%.1f** | %.1f | %.1f | %.1f | %.1f | %.1f | %d | %.1f |\n", k, n[k], timeouts[k] + 0, med, p90, mx, mn, emed, wmed, stalls[k], worstgap[k]
            }
        }
    ' "$WORK/propagation.csv"
}

# ---------------------------------------------------------------------------------------------
# 2. Request path under changes.

# utime+stime (clock ticks) of PID's thread named etcd: the follower, which applies each change.
follower_ticks() {
    local task
    for task in /proc/"$1"/task/*; do
        if [ "$(cat "$task/comm" 2>/dev/null)" = etcd ]; then
            sed 's/^.*) //' "$task/stat" | awk '{ print $12 + $13 }'
            return
        fi
    done
    echo 0
}

# One measurement: MODE (none | churn) ROUND; appends a CSV row to $WORK/load.csv.
measure() {
    local mode=$1 round=$2 pid=${LB_PIDS[0]} t0 t1 rev0 rev1 churn_pid="" churn_out=""
    local tag="$mode-$round" secs limit rps reqs p50 p99 non2xx sock writes="" cpu_us f0 f1
    secs=$(dur_secs "$DURATION")
    limit=$((secs + 30))
    rev0=$(revision_of 0)
    # Both modes write to etcd at the same pace, so etcd and the writer cost wrk's CPU the
    # same: with churn under lb-mio's prefix, with none under another one it does not watch.
    local prefix=/elsewhere/
    [ "$mode" = churn ] && prefix=$PREFIX
    churn_out="$WORK/churn-$tag.txt"
    taskset -c 1 python3 "$CLIENT" churn "$ETCD" "$prefix" "$CHURN_MS" "$secs" \
        "${B[1]}" "${B[2]}" >"$churn_out" 2>&1 &
    churn_pid=$!
    HELPER_PIDS+=("$churn_pid")
    t0=$(cpu_ticks "$pid")
    f0=$(follower_ticks "$pid")
    timeout -k 5 "$limit" taskset -c 1 wrk --latency -t2 -c"$CONNS" -d"$DURATION" \
        "http://127.0.0.1:$LB_PORT/sw/" >"$WORK/wrk-$tag.txt" 2>&1 || log "wrk exited non-zero (see $WORK/wrk-$tag.txt)"
    t1=$(cpu_ticks "$pid")
    f1=$(follower_ticks "$pid")
    wait "$churn_pid" || note "churn in $tag failed: $(tail -n 2 "$churn_out" | tr '\n' ' ')"
    local kept=() h
    for h in "${HELPER_PIDS[@]}"; do [ "$h" = "$churn_pid" ] || kept+=("$h"); done
    HELPER_PIDS=("${kept[@]}")
    writes=$(awk '{ print $1 }' "$churn_out")
    rev1=$(revision_of 0)
    alive "$pid" || die "lb-mio died during $tag (see ${LOGS[lb-mio-0]})"
    read -r rps reqs p50 p99 non2xx sock < <(parse_wrk <"$WORK/wrk-$tag.txt")
    [ "$non2xx" -gt 0 ] && note "$tag: $non2xx non-2xx answers"
    [ "$sock" -gt 0 ] && note "$tag: $sock socket errors"
    cpu_us=$(awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" -v r="$reqs" 'BEGIN { printf "%.3f", r ? t / hz * 1e6 / r : 0 }')
    echo "$mode,$round,$rps,$reqs,$((t1 - t0)),$cpu_us,$p50,$p99,${writes:-0},$((rev1 - rev0)),$((f1 - f0))" >>"$WORK/load.csv"
    log "$(printf '%-5s round %s: %8.0f req/s, %.2f us CPU/request, p99 %s ms, %s etcd writes, revision +%s' \
        "$mode" "$round" "$rps" "$cpu_us" "$p99" "${writes:-0}" "$((rev1 - rev0))")"
}

load_part() {
    local round mode modes
    log "request path: one lb-mio (workers = 1) on CPU 0; wrk, backends, etcd, writer on CPU 1"
    start_etcd
    put_start_keys
    start_lb 0 taskset -c 0
    timeout -k 5 60 taskset -c 1 wrk -t2 -c"$CONNS" -d"$WARMUP" "http://127.0.0.1:$LB_PORT/sw/" \
        >"$WORK/warmup.txt" 2>&1 || true
    : >"$WORK/load.csv"
    for round in $(seq "$ROUNDS"); do
        if [ $((round % 2)) = 1 ]; then modes="none churn"; else modes="churn none"; fi
        for mode in $modes; do measure "$mode" "$round"; done
    done
    stop_services
    log_notes load
    LOAD_TABLE=$(summarize_load)
    echo "$LOAD_TABLE" >&2
}

# load.csv (mode,round,rps,reqs,ticks,cpu_us,p50,p99,writes,revisions,follower_ticks) -> markdown
# table; the ratios also as the median of each round's ratio (the two runs of a round are
# neighbours in time, so they share the machine's load of the moment).
summarize_load() {
    awk -F, -v churn_ms="$CHURN_MS" -v hz="$CLK_TCK" "$AWK_STATS"'
        {
            rps[$1] = rps[$1] " " $3; cpu[$1] = cpu[$1] " " $6; p99[$1] = p99[$1] " " $8
            wr[$1] = wr[$1] " " $9; rev[$1] = rev[$1] " " $10
            R[$1, $2] = $3; C[$1, $2] = $6; rounds[$2] = 1
            fticks[$1] += $11; revs[$1] += $10
        }
        END {
            label["none"] = "no changes (the writes go elsewhere)"; label["churn"] = "a change every " churn_ms " ms"
            print "| etcd | req/s (median) | req/s min–max | CPU µs/request (median) | p99 ms (median) | etcd writes a run (median) | lbmio_etcd_revision moved by (median) |"
            print "|---|---:|---:|---:|---:|---:|---:|"
            split("none churn", modes, " ")
            for (i = 1; i <= 2; i++) {
                m = modes[i]
                printf "| %s | **%.0f** | %s | **%.3f** | %.2f | %d | %d |\n", label[m], median(rps[m]), range(rps[m], "%.0f"), median(cpu[m]), median(p99[m]), median(wr[m]), median(rev[m])
            }
            r = median(rps["churn"]) / median(rps["none"]); c = median(cpu["churn"]) / median(cpu["none"])
            printf "| ratio of the medians (changes / none) | **%.3f** | | **%.3f** | %.2f | | |\n", r, c, median(p99["churn"]) / median(p99["none"])
            rl = ""; cl = ""
            for (k in rounds) if ((("churn", k) in R) && (("none", k) in R) && R["none", k] > 0) {
                rl = rl " " R["churn", k] / R["none", k]; cl = cl " " C["churn", k] / C["none", k]
            }
            printf "| median of the per-round ratios | **%.3f** | | **%.3f** | | | |\n", median(rl), median(cl)
            printf "\nThe etcd follower thread (it applies each change and builds the new snapshot) used %.0f ms of CPU over %d applied revisions in the runs with changes: about %.0f µs a change (clock ticks of 1/%d s, so a rough figure); %.0f ms in the runs without.\n", fticks["churn"] * 1000 / hz, revs["churn"], revs["churn"] ? fticks["churn"] * 1e6 / hz / revs["churn"] : 0, hz, fticks["none"] * 1000 / hz
        }
    ' "$WORK/load.csv"
}

# ---------------------------------------------------------------------------------------------
# Results.

# ---------------------------------------------------------------------------------------------
# 3. Scale.

scale_part() {
    log "scale: one lb-mio (workers = 1) on CPU 0, routes in etcd growing to $SCALE_SIZES"
    start_etcd
    put_start_keys
    start_lb 0 taskset -c 0
    SCALE_TABLE=$(python3 "$CLIENT" scale "$ETCD" "$PREFIX" "${ADMIN_PORTS[0]}" "$SCALE_SIZES" \
        "$SCALE_CHANGES") || die "fleet_client.py scale failed"
    stop_services
    log_notes scale
    echo "$SCALE_TABLE" >&2
}

write_results() {
    local elapsed=$1 cmd
    cmd="CHANGES=$CHANGES BACKEND_CHANGES=$BACKEND_CHANGES POLL_MS=$POLL_MS DURATION=$DURATION ROUNDS=$ROUNDS CONNS=$CONNS CHURN_MS=$CHURN_MS PARTS=\"$PARTS\" KINDS=\"$KINDS\" SCALE_SIZES=$SCALE_SIZES SCALE_CHANGES=$SCALE_CHANGES PORT_BASE=$PORT_BASE benches/fleet.sh"
    mkdir -p "$(dirname "$RESULTS")"
    {
        echo "# A fleet following etcd, $(date +%F)"
        echo
        run_header "$cmd" "$elapsed"
        echo
        if [ -n "$PROP_TABLE" ]; then
            echo "## 1. Propagation: from the etcd write to the last of three instances serving it"
            echo
            echo "$PROP_TABLE"
            echo
            echo "- One etcd, three lb-mio instances (\`workers = 1\` each, not pinned: 3 instances, etcd and the poller share the 2 CPUs) following it (benches/fleet-lb-mio.ini.in), the demo backends (examples/backend.rs, one process, pinned to CPU 1 like etcd) behind them."
            echo "- Each change is one put through etcd's JSON gateway (\`POST /v3/kv/put\`) by benches/fleet_client.py, on a kept-alive connection; the time runs from the put's return until each instance first answers with the change, polled every $POLL_MS ms (a new connection, \`Connection: close\`, per request) — so the figures include up to ~$POLL_MS ms of polling granularity plus a request's round trip. The median, p90 (nearest rank) and max are of the LAST instance's time; \"each instance\" is the median over all instances' times. Changes go one at a time, 20 ms apart. A change not seen within $TIMEOUT_S s counts as timed out."
            echo "- Poller stalls: a polling pass is one request to each instance that has not shown the change yet, then a sleep to the next $POLL_MS ms mark. \"Poller stalled\" counts the changes during which two passes were more than 10 ms apart (the python poller descheduled, or one request held up: on this shared 2-CPU machine, 3 instances, etcd, the backends and the poller compete for the CPUs); the last column is that longest gap in the change that set the max. A max close to its stall is the machine, not lb-mio."
            echo "- route: \`/lb-mio/routes/sw\` switches between pool a and pool b (\`GET /sw/\` answers backend-${B[1]} or backend-${B[2]}). newroute: a new key \`/lb-mio/routes/rN\` sends \`/rN/\` to pool b (out of the default pool). Neither adds a backend."
            echo "- backend: a backend registers into the empty pool c (\`/lb-mio/backends/c/cN\`, the previous one's key deleted first and its leaving waited for, untimed); timed until \`GET /c/\` answers 200 on all three. A backend that appears while an instance runs starts DOWN until its health checks pass (default \`[health] interval_ms = 2000\` ±10%, \`rise = 2\`), so this row measures the health checks, not etcd."
            echo "- $PROP_REVISIONS (the last is the revision of one more put, after the run)."
            echo
        fi
        if [ -n "$LOAD_TABLE" ]; then
            echo "## 2. Request path under changes"
            echo
            echo "$LOAD_TABLE"
            echo
            echo "- One lb-mio (\`workers = 1\`, pinned to CPU 0, the same config) following etcd; wrk (\`wrk --latency -t2 -c$CONNS -d$DURATION\`, \`GET /sw/\`), the demo backends, etcd and the writer on CPU 1. Medians over $ROUNDS rounds, each round one run of each, the order alternating round to round; one lb-mio process throughout, after a $WARMUP wrk warm-up."
            echo "- With changes: benches/fleet_client.py rewrites \`/lb-mio/routes/sw\` every $CHURN_MS ms during the run (switching pool a / pool b, so every change swaps the snapshot the requests use); the last column is how far the instance's \`lbmio_etcd_revision\` moved over the run (etcd's revision counts every write, the ones elsewhere too). Without: the same writes at the same pace under \`/elsewhere/\`, which lb-mio does not watch, so that etcd and the writer take the same share of CPU 1 (wrk's) in both."
            echo "- CPU per request: utime+stime of the lb-mio process (every thread: the worker, the etcd follower, health checks) from /proc/PID/stat over the run, divided by the requests wrk completed. The etcd writes themselves cost etcd and the writer CPU on CPU 1, which wrk shares: the throughput ratio includes that, the CPU ratio does not."
            echo
        fi
        if [ -n "$SCALE_TABLE" ]; then
            echo "## 3. Scale: many routes in etcd, and a burst of changes"
            echo
            echo "$SCALE_TABLE"
            echo
            echo "- One lb-mio (\`workers = 1\`, pinned to CPU 0) following etcd (on CPU 1). The routes in etcd grow to each size with a burst of puts (\`routes/gN\`, one connection, as fast as etcd takes them); \"applied after the last put\" is how long after the burst's last put returned the instance's \`lbmio_etcd_revision\` reached it (a burst's changes arrive in a few watch messages and are applied as one snapshot each time the thread catches up). Then $SCALE_CHANGES single changes of \`routes/sw\`, each timed from the put's return until applied (polled every 1 ms). Every change rebuilds the merged config and the snapshot: the cost grows with the size of the view."
            echo
        fi
        if [ ${#NOTES[@]} -gt 0 ]; then
            echo "Notes from the run:"
            printf -- '- %s\n' "${NOTES[@]}"
            echo
        fi
        echo "<details><summary>Raw data (CSV)</summary>"
        echo
        echo '```'
        if [ -s "$WORK/propagation.csv" ]; then
            echo "kind,i,revision,put_ms,instance1_ms,instance2_ms,instance3_ms,last_ms,poll_gap_ms"
            cat "$WORK/propagation.csv"
            echo
        fi
        if [ -s "$WORK/load.csv" ]; then
            echo "mode,round,rps,requests,cpu_ticks,cpu_us_per_request,p50_ms,p99_ms,etcd_writes,revisions_applied,follower_thread_ticks"
            cat "$WORK/load.csv"
        fi
        echo '```'
        echo
        echo "</details>"
    } >"$RESULTS"
    log "results: $RESULTS"
}

main() {
    begin_run
    ensure_tools wrk=wrk etcd=etcd-server curl=curl python3=python3 taskset=util-linux \
        timeout=coreutils ss=iproute2 cargo=-
    check_ports "${B[1]}" "${B[2]}" "${B[3]}" "${LB_PORTS[@]}" "${ADMIN_PORTS[@]}" "$ETCD_PORT" "$ETCD_PEER"
    build backend
    prepare_run fleet
    taskset -c 1 "$BACKEND_BIN" "${B[1]}" "${B[2]}" "${B[3]}" >"$WORK/backend.log" 2>&1 &
    local backends=$!
    HELPER_PIDS+=("$backends")
    LOGS[backend]="$WORK/backend.log"
    wait_http "${B[1]}" "$backends" backend
    case " $PARTS " in *" propagation "*) propagation ;; esac
    case " $PARTS " in *" load "*) load_part ;; esac
    case " $PARTS " in *" scale "*) scale_part ;; esac
    write_results $(($(date +%s) - START_EPOCH))
    print_summary "$PROP_TABLE

$LOAD_TABLE

$SCALE_TABLE"
}

main "$@"
