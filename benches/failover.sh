#!/usr/bin/env bash
# Failover under load: requests/s and errors/s over time while a backend is killed (SIGKILL)
# and restarted, for lb-mio, nginx and HAProxy, one after another on the same timeline.
#
#   benches/failover.sh                      # full run: about 2 minutes
#
# Per balancer: three backend processes (target/release/examples/backend PORT), the balancer
# (benches/failover-*.in), then examples/loadgen with CONNS keep-alive connections for SECS s;
# at KILL_AT s backend 2 gets SIGKILL, at RESTART_AT s it is started again on the same port.
#
# Environment (defaults in brackets):
#   CONNS [32]  SECS [20]  KILL_AT [5]  RESTART_AT [12]   the timeline
#   TARGETS ["lb-mio nginx haproxy"]    WORKERS  worker processes / threads per balancer [2]
#   PORT_BASE  backends on +1..+3, lb-mio +10, nginx +11, haproxy +12 [28000]
#   RESULTS    markdown file written [benches/results/failover-YYYY-MM-DD.md]; the plot goes
#              next to it, same name with .png
#   KEEP_TMP   1 keeps the work directory (configs, logs, raw CSVs) [0]
#   ATTEMPTS   runs per balancer when its kill or restart comes > 0.2 s late (a stalled machine) [3]
#
# Which backend served what is measured from the outside: every second the script reads
# data_segs_out of each established socket on the backend ports (`ss -tni`). The demo backend
# sends each response in one segment, so a socket's data_segs_out counts its responses.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$ROOT/benches"
CONNS=${CONNS:-32}
SECS=${SECS:-20}
KILL_AT=${KILL_AT:-5}
RESTART_AT=${RESTART_AT:-12}
TARGETS=${TARGETS:-"lb-mio nginx haproxy"}
WORKERS=${WORKERS:-2}
PORT_BASE=${PORT_BASE:-28000}
KEEP_TMP=${KEEP_TMP:-0}
ATTEMPTS=${ATTEMPTS:-3}
RESULTS=${RESULTS:-"$BENCH_DIR/results/failover-$(date +%F).md"}
PLOT="${RESULTS%.md}.png"

# Ports (B[1..3], LB_PORT, ...), binaries, WORK, SERVICE_PIDS (the servers of the current
# balancer), HELPER_PIDS (the loadgen running right now), LOGS (timestamped), NOTES, and the
# helpers shared with load.sh.
. "$(dirname "$0")/common.sh"

LOADGEN_BIN="$ROOT/target/release/examples/loadgen"
BPID=("" "" "" "")  # BPID[1..3]: the backend processes
declare -A EVENTS=() # target -> "kill_offset restart_offset" in seconds after the load started
TIMELINE_OK=1       # run_timeline: 0 if the kill or the restart came late

# Microseconds on the machine's monotonic clock (/proc/uptime, 10 ms steps), the kind of clock
# loadgen counts its seconds by, and sleeping until such a time. On this shared VM a sleep now
# and then wakes seconds late: run_timeline notices, and run_target runs the timeline again.
now_us() {
    local up _
    read -r up _ </proc/uptime
    echo $((10#${up/./} * 10000))
}
sleep_until_us() {
    local d=$(($1 - $(now_us)))
    [ $d -gt 0 ] && sleep "$(printf '%d.%06d' $((d / 1000000)) $((d % 1000000)))"
    return 0
}

# Prefixes each line with the time it arrived (now_us): lb-mio logs no times at info level, and
# this puts every balancer's log on the timeline's clock.
stamp() {
    local line up _
    while IFS= read -r line; do
        read -r up _ </proc/uptime
        printf '%s %s\n' $((10#${up/./} * 10000)) "$line"
    done
}

# ---------------------------------------------------------------------------------------------
# Starting and stopping servers (see common.sh).

# Backend N (1..3) as a process of its own, so it can be killed and restarted alone.
start_backend() {
    local n=$1
    "$BACKEND_BIN" "${B[$n]}" >>"$WORK/backend-$n.log" 2>&1 &
    BPID[n]=$!
    SERVICE_PIDS+=("${BPID[n]}")
}

start_backends() {
    local n
    for n in 1 2 3; do start_backend "$n"; done
    for n in 1 2 3; do wait_http "${B[$n]}" "${BPID[n]}" "backend $n"; done
}

start_lb-mio() {
    local cfg="$WORK/lb-mio.ini" pid
    render "$BENCH_DIR/failover-lb-mio.ini.in" "$cfg" "$LB_PORT" "$WORKERS"
    "$LB_BIN" --check "$cfg" >/dev/null || die "lb-mio --check $cfg failed"
    "$LB_BIN" "$cfg" > >(stamp >"${LOGS[lb-mio]}") 2>&1 &
    pid=$!
    SERVICE_PIDS+=("$pid")
    wait_http "$LB_PORT" "$pid" lb-mio
}

start_nginx() {
    local cfg="$WORK/nginx.conf" pid
    mkdir -p "$WORK/nginx-tmp"
    render "$BENCH_DIR/failover-nginx.conf.in" "$cfg" "$NGINX_PORT" "$WORKERS"
    nginx -t -q -p "$WORK" -e stderr -c "$cfg" || die "nginx config test failed"
    nginx -p "$WORK" -e stderr -c "$cfg" -g 'daemon off;' > >(stamp >"${LOGS[nginx]}") 2>&1 &
    pid=$!
    SERVICE_PIDS+=("$pid")
    wait_http "$NGINX_PORT" "$pid" nginx
    # The workers too, in case the master dies without them.
    SERVICE_PIDS+=($(ps -o pid= --ppid "$pid"))
}

start_haproxy() {
    local cfg="$WORK/haproxy.cfg" pid
    render "$BENCH_DIR/failover-haproxy.cfg.in" "$cfg" "$HAPROXY_PORT" "$WORKERS"
    haproxy -c -q -f "$cfg" || die "haproxy config check failed"
    # -db: foreground, one process; its warnings (server state changes) go to stderr.
    haproxy -db -f "$cfg" > >(stamp >"${LOGS[haproxy]}") 2>&1 &
    pid=$!
    SERVICE_PIDS+=("$pid")
    wait_http "$HAPROXY_PORT" "$pid" haproxy
}

# A process that is gone and reaped: never signal its PID again (it may be reused).
forget_pid() {
    local pid keep=()
    for pid in "${SERVICE_PIDS[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
    SERVICE_PIDS=("${keep[@]}")
}

stop_services() {
    [ ${#SERVICE_PIDS[@]} -gt 0 ] && stop_pids "${SERVICE_PIDS[@]}"
    SERVICE_PIDS=()
    BPID=("" "" "" "")
    sleep 0.5 # the log stampers finish once their writers are gone
}

# ---------------------------------------------------------------------------------------------
# The timeline.

# Responses each backend sent since the last call, into TRAFFIC ("n1 n2 n3"): data_segs_out
# of every established socket on a backend port, against the previous snapshot (SEGS, kept in
# the shell: rewriting a file every second can stall for seconds on this machine's disk). A
# socket that closed in between loses its last partial count; the balancers' upstream
# connections are long-lived.
SEGS="" TRAFFIC=""
backend_traffic() {
    local out
    out=$(timeout 3 ss -Htni state established "( sport = :${B[1]} or sport = :${B[2]} or sport = :${B[3]} )" |
        PREV=$SEGS awk -v b1="${B[1]}" -v b2="${B[2]}" -v b3="${B[3]}" '
            BEGIN {
                n = split(ENVIRON["PREV"], lines, "\n")
                for (i = 1; i <= n; i++) { split(lines[i], f, " "); prev[f[1]] = f[2] }
            }
            /^[0-9]/ { key = $3 "-" $4; port = $3; sub(/.*:/, "", port); next }
            match($0, /data_segs_out:[0-9]+/) {
                v = substr($0, RSTART + 14, RLENGTH - 14) + 0
                now[key] = v
                d = v - ((key in prev) ? prev[key] : 0)
                if (d > 0) sent[port] += d
            }
            END {
                printf "%d %d %d\n", sent[b1], sent[b2], sent[b3]
                for (k in now) print k, now[k]
            }') || true
    TRAFFIC=${out%%$'\n'*}
    SEGS=${out#"$TRAFFIC"}
}

# Kills backend 2 at KILL_AT and starts it again at RESTART_AT (times after t0, in µs since
# the epoch), in a process of its own so that a late sampling loop cannot move the events.
# The restarter execs the backend, so its PID ($!) becomes the restarted backend's.
schedule_outage() {
    local t=$1 t0=$2 victim=${BPID[2]}
    (
        sleep_until_us $((t0 + KILL_AT * 1000000))
        kill -KILL "$victim"
        echo $(($(now_us) - t0)) >"$WORK/$t.killed"
        sleep_until_us $((t0 + RESTART_AT * 1000000))
        echo $(($(now_us) - t0)) >"$WORK/$t.restarted"
        exec "$BACKEND_BIN" "${B[2]}" >>"$WORK/backend-2.log" 2>&1
    ) &
    BPID[2]=$!
    SERVICE_PIDS+=("${BPID[2]}")
}

# µs after t0 in a file -> seconds with 3 decimals ("?" if the file is missing).
offset_s() {
    if [ -s "$1" ]; then awk '{ printf "%.2f", $1 / 1e6 }' "$1"; else echo "?"; fi
}

run_timeline() {
    local t=$1 port csv lg s start t0 at late=() rows=() victim=${BPID[2]}
    port=$(target_port "$t")
    csv="$WORK/$t.csv"
    SEGS=""
    timeout -k 5 $((SECS + 15)) "$LOADGEN_BIN" "127.0.0.1:$port" --conns "$CONNS" --secs "$SECS" \
        >"$csv" 2>"$WORK/$t-loadgen.err" &
    lg=$!
    HELPER_PIDS=("$lg")
    start=$(now_us)
    # Time zero is when loadgen has printed its header (right after it started its clock and
    # spawned its threads).
    until [ -s "$csv" ]; do
        [ $(($(now_us) - start)) -lt 5000000 ] || die "loadgen did not start (see $WORK/$t-loadgen.err)"
        sleep 0.005
    done
    t0=$(now_us)
    echo "$t0" >"$WORK/$t.t0"
    schedule_outage "$t" "$t0"
    backend_traffic
    for s in $(seq 1 "$SECS"); do
        # 0.1 s before each whole second (the clock moves in 10 ms steps and ss takes a while on
        # a busy machine), so the second before the kill is sampled before the killed backend's
        # sockets are gone.
        sleep_until_us $((t0 + s * 1000000 - 100000))
        at=$(($(now_us) - t0))
        [ $at -gt $((s * 1000000 + 200000)) ] && late+=("second $((s - 1)) at $((at / 1000)) ms")
        backend_traffic
        rows+=("$((s - 1)) $TRAFFIC $at")
    done
    printf '%s\n' "${rows[@]}" >"$WORK/$t-traffic.txt"
    wait "$lg" || note "$t: loadgen exited with status $? (see $WORK/$t-loadgen.err)"
    HELPER_PIDS=()
    EVENTS[$t]="$(offset_s "$WORK/$t.killed") $(offset_s "$WORK/$t.restarted")"
    log "$t: backend 2 (pid $victim) killed at ${EVENTS[$t]% *} s, restarted (pid ${BPID[2]}) at ${EVENTS[$t]#* } s"
    { wait "$victim" || true; } 2>/dev/null # no "Killed" message from the shell
    forget_pid "$victim"
    kill -0 "${BPID[2]}" 2>/dev/null ||
        note "$t: the restarted backend 2 is not running: $(tail -n 2 "$WORK/backend-2.log" | tr '\n' ' ')"
    TIMELINE_OK=1
    awk -v k="$KILL_AT" -v r="$RESTART_AT" -v e="${EVENTS[$t]}" 'BEGIN {
        split(e, f, " "); if (f[1] == "?" || f[2] == "?" || f[1] - k > 0.2 || f[2] - r > 0.2) exit 1 }' ||
        { TIMELINE_OK=0; return; }
    [ ${#late[@]} -eq 0 ] ||
        note "$t: backend traffic sampled late (the machine is busy): ${late[*]}; s2 % for those seconds covers a shifted interval"
    [ "$(wc -l <"$csv")" -eq $((SECS + 1)) ] || note "$t: loadgen wrote $(($(wc -l <"$csv") - 1)) of $SECS seconds"
}

# A timeline whose kill or restart came more than 0.2 s late (the machine stalled the timers)
# is run again, up to ATTEMPTS times; the last attempt is reported either way.
run_target() {
    local t=$1 attempt
    for attempt in $(seq "$ATTEMPTS"); do
        log "=== $t (attempt $attempt) ==="
        check_ports "${B[1]}" "${B[2]}" "${B[3]}" "$(target_port "$t")"
        LOGS[$t]="$WORK/$t.log"
        start_backends
        "start_$t"
        sleep 1 # a few health-check rounds with every backend up
        run_timeline "$t"
        stop_services
        sleep 1 # let the closed connections settle before the next run
        [ "$TIMELINE_OK" = 1 ] && return
        note "$t: attempt $attempt discarded: kill at ${EVENTS[$t]% *} s, restart at ${EVENTS[$t]#* } s instead of $KILL_AT and $RESTART_AT (the script's timers fired late: the machine stalled)"
    done
    note "$t: no attempt ran on time: the last one is reported, and is not comparable"
}

# ---------------------------------------------------------------------------------------------
# Reporting.

# The first line of a balancer's log matching an extended regex, after the kill if $3 is
# "after-kill", as seconds after time zero ("" if none).
log_time() {
    local t=$1 re=$2 after=${3:-} t0 from=-1e9
    t0=$(cat "$WORK/$t.t0")
    [ "$after" = after-kill ] && from=${EVENTS[$t]%% *}
    awk -v t0="$t0" -v re="$re" -v from="$from" '
        $0 ~ re { s = ($1 - t0) / 1e6; if (s >= from) { printf "%.2f", s; exit } }' "${LOGS[$t]}"
}

# What each balancer's log says about backend 2 going down and coming back.
down_up() {
    local t=$1 down="" up=""
    case $t in
        lb-mio)
            down=$(log_time "$t" 'backend s2 is down')
            up=$(log_time "$t" 'backend s2 is up' after-kill) ;;
        haproxy)
            down=$(log_time "$t" 'Server be/s2 is DOWN')
            up=$(log_time "$t" 'Server be/s2 is UP' after-kill) ;;
        nginx)
            # Passive only: nginx logs the failure that disables the server, never its return.
            down=$(log_time "$t" 'upstream server temporarily disabled') ;;
    esac
    echo "${down:-–} ${up:-–}"
}

# One row of the summary table.
summary_row() {
    local t=$1 down up
    read -r down up <<<"$(down_up "$t")"
    awk -F, -v t="$t" -v k="$KILL_AT" -v r="$RESTART_AT" -v n="$SECS" -v down="$down" -v up="$up" \
        -v tf="$WORK/$t-traffic.txt" '
        BEGIN {
            while ((getline line < tf) > 0) {
                split(line, f, " "); tot = f[2] + f[3] + f[4]
                if (f[1] >= r && back == "" && tot > 0 && f[3] / tot >= 0.1) back = f[1]
            }
        }
        NR == 1 { next }
        {
            s = $1; ok += $2; err += $3; if ($3 > 0) errsec++
            if (s < k) b += $2; else if (s < r) d += $2; else a += $2
        }
        END {
            served = back == "" ? "not within the run" : sprintf("second %d (≤ %d s after the restart)", back, back - r + 1)
            printf "| %s | %d | %d | %d | %.0f | %.0f | %.0f | %s | %s | %s |\n", t, ok, err, errsec,
                b / k, d / (r - k), a / (n - r), down == "–" ? "–" : down " s", up == "–" ? "–" : up " s", served
        }' "$WORK/$t.csv"
}

summary_table() {
    local t
    echo "| balancer | requests ok | errors | seconds with errors | req/s before (0–$((KILL_AT - 1)) s) | req/s during outage ($KILL_AT–$((RESTART_AT - 1)) s) | req/s after ($RESTART_AT–$((SECS - 1)) s) | s2 marked down (log) | s2 marked up again (log) | s2 serving again (≥ 10% of responses) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    for t in $TARGETS; do summary_row "$t"; done
}

# second, then per target: ok, errors, s2's share of the backends' responses (%).
per_second_data() {
    local t files=()
    for t in $TARGETS; do
        paste -d' ' <(tail -n +2 "$WORK/$t.csv" | tr , ' ') "$WORK/$t-traffic.txt" >"$WORK/$t.joined"
        files+=("$WORK/$t.joined")
    done
    # Each joined line: second ok errors second n1 n2 n3
    awk '
        FNR == 1 { f++ }
        {
            tot = $5 + $6 + $7
            row[$1] = row[$1] sprintf(" %s %s %s", $2, $3, tot > 0 ? sprintf("%.0f", 100 * $6 / tot) : "-")
            if (f == 1) order[++n] = $1
        }
        END { for (i = 1; i <= n; i++) print order[i] row[order[i]] }' "${files[@]}"
}

per_second_table() {
    local t head="| second |" rule="|---:|"
    for t in $TARGETS; do
        head+=" $t ok | err | s2 % |"
        rule+="---:|---:|---:|"
    done
    echo "$head"
    echo "$rule"
    awk -v k="$KILL_AT" -v r="$RESTART_AT" '{
        mark = $1 == k ? " (kill)" : $1 == r ? " (restart)" : ""
        line = "| " $1 mark " |"
        for (i = 2; i <= NF; i++) line = line " " (i % 3 == 0 && $i > 0 ? "**" $i "**" : $i) " |"
        print line
    }' "$WORK/per-second.txt"
}

plot() {
    local t i=0 cmd="" maxerr maxok title
    maxerr=$(awk '{ for (i = 3; i <= NF; i += 3) if ($i > m) m = $i } END { print m + 0 }' "$WORK/per-second.txt")
    maxok=$(awk '{ for (i = 2; i <= NF; i += 3) if ($i > m) m = $i } END { print m + 0 }' "$WORK/per-second.txt")
    local colors=("#1f77b4" "#2ca02c" "#d62728") points=(7 5 9)
    for t in $TARGETS; do
        local c=${colors[$i]} p=${points[$i]} okcol=$((2 + 3 * i)) errcol=$((3 + 3 * i))
        local total
        total=$(awk -v c="$errcol" '{ e += $c } END { print e + 0 }' "$WORK/per-second.txt")
        cmd+="'$WORK/per-second.txt' using (\$1 + 0.5):$okcol with linespoints lw 2 pt 7 ps 0.6 lc rgb '$c' title '$t req/s', "
        # Errors: a bar from the axis and a marker on the right-hand scale, with the count;
        # each balancer's a little to the side, so errors in the same second do not overlap.
        local ex
        ex=$(awk -v i="$i" 'BEGIN { printf "%.2f", 0.38 + 0.12 * i }')
        cmd+="'' using (\$1 + $ex):(\$$errcol > 0 ? \$$errcol : 1/0) axes x1y2 with impulses lw 3 lc rgb '$c' notitle, "
        cmd+="'' using (\$1 + $ex):(\$$errcol > 0 ? \$$errcol : 1/0) axes x1y2 with points pt $p ps 1.8 lc rgb '$c' title '$t errors/s (total $total)', "
        cmd+="'' using (\$1 + $ex):(\$$errcol > 0 ? \$$errcol : 1/0):(sprintf('%d', \$$errcol)) axes x1y2 with labels offset 0, 1.2 tc rgb '$c' notitle, "
        i=$((i + 1))
    done
    title="Backend 2 of 3 killed (SIGKILL) at ${KILL_AT} s, restarted at ${RESTART_AT} s; ${CONNS} keep-alive connections, $(date +%F)"
    gnuplot <<EOF
set terminal pngcairo size 1200,650 font "sans,11"
set output '$PLOT'
set title "$title"
set xlabel 'seconds since the load started' offset 0, 0.3
set ylabel 'requests/s (2xx)'
set y2label 'errors/s (bars with markers; none drawn = no errors)'
set xrange [0:$SECS]
set xtics 1
set yrange [0:$((maxok * 13 / 10 + 1))]
set y2range [0:$((maxerr < 10 ? 10 : maxerr * 12 / 10))]
set ytics nomirror
set y2tics
set grid ytics
set key outside bottom center horizontal maxrows 2
set object 1 rect from $KILL_AT, graph 0 to $RESTART_AT, graph 1 behind fc rgb '#eeeeee' fs solid noborder
set arrow from $KILL_AT, graph 0 to $KILL_AT, graph 1 nohead dt 2 lw 2 lc rgb 'black'
set arrow from $RESTART_AT, graph 0 to $RESTART_AT, graph 1 nohead dt 2 lw 2 lc rgb 'black'
set label 'kill s2' at $KILL_AT, graph 0.96 offset 0.5, 0
set label 'restart s2' at $RESTART_AT, graph 0.96 offset 0.5, 0
plot ${cmd%, }
EOF
}

machine_info() {
    machine_lines " (shared with other work: expect noise)" "; $("$LB_BIN" --version 2>&1 | head -n 1)"
    echo "- $(gnuplot --version 2>&1 | head -n 1); loadgen: examples/loadgen.rs"
}

# A balancer's log lines from the timeline, with times relative to its time zero; long runs
# of the same message (after the time and the peer address) are counted, not repeated.
log_excerpt() {
    local t=$1
    awk -v t0="$(cat "$WORK/$t.t0")" '
        {
            s = ($1 - t0) / 1e6
            msg = substr($0, index($0, " ") + 1)
            # nginx: the client and request are always the same here.
            sub(/, client: [^,]*, server: [^,]*, request: "[^"]*"/, "", msg); sub(/, host: "[^"]*"/, "", msg)
            key = msg; gsub(/127\.0\.0\.1:[0-9]+/, "ADDR", key); gsub(/[0-9]{2}:[0-9]{2}:[0-9]{2}/, "", key)
            gsub(/\*[0-9]+ /, "", key); gsub(/\[[0-9]+\]|\([0-9]+\)|[0-9]+#[0-9]+/, "", key)
            if (key == last) { repeat++; lasts = s; next }
            if (repeat) printf "          … %d more like it, the last at %.2f s\n", repeat, lasts
            repeat = 0; last = key
            printf "%7.2f s  %s\n", s, msg
        }
        END { if (repeat) printf "          … %d more like it, the last at %.2f s\n", repeat, lasts }
    ' "${LOGS[$t]}" | head -n 60
}

write_results() {
    local summary=$1 elapsed=$2 cmd t ev
    cmd="CONNS=$CONNS SECS=$SECS KILL_AT=$KILL_AT RESTART_AT=$RESTART_AT TARGETS=\"$TARGETS\" WORKERS=$WORKERS PORT_BASE=$PORT_BASE ATTEMPTS=$ATTEMPTS benches/failover.sh"
    mkdir -p "$(dirname "$RESULTS")"
    {
        echo "# Failover under load, $(date +%F)"
        echo
        echo "Backend 2 of 3 killed with SIGKILL under load and restarted on the same port; requests/s and errors/s"
        echo "per second for each balancer, run one after another on the same timeline."
        echo
        run_header "$cmd" "$elapsed"
        echo
        echo "![requests/s and errors/s over time]($(basename "$PLOT"))"
        echo
        echo "$summary"
        echo
        echo "Timeline per balancer: three backend processes and the balancer started fresh, 1 s idle, then"
        echo "\`loadgen 127.0.0.1:PORT --conns $CONNS --secs $SECS\` ($CONNS keep-alive connections, a thread each, GET /, one request"
        echo "at a time, 2 s read timeout, reconnect after any error); at $KILL_AT s \`kill -KILL\` backend 2, at $RESTART_AT s it is"
        echo "started again on its port. Actual times (s after the load started):"
        for t in $TARGETS; do
            ev=${EVENTS[$t]:-"? ?"}
            echo "$t: kill at ${ev%% *}, restart at ${ev##* }."
        done | paste -sd' '
        echo
        echo "How to read it:"
        echo "- errors: non-2xx answers, failed connects, reads or writes, connections closed before the whole response, and"
        echo "  2 s without a response, counted in the second loadgen noticed them. Second N covers [N, N+1) s."
        echo "- s2 marked down / up: when the balancer's own log says so (each line stamped on arrival by the monotonic clock, 10 ms steps). nginx open"
        echo "  source has **no active health checks**: it runs with passive checks only (\`max_fails=1 fail_timeout=2s\`,"
        echo "  \`proxy_next_upstream error timeout\`, \`proxy_next_upstream_tries 3\`); its \"down\" is its first \"upstream server"
        echo "  temporarily disabled\" line, and it logs nothing when a server comes back."
        echo "- s2 serving again / s2 %: backend 2's share of all the responses the three backends sent in that second, read from"
        echo "  the kernel's per-socket counters (\`ss -tni\` data_segs_out on the backend ports; the demo backend sends each"
        echo "  response as one segment), sampled 0.1 s before each whole second. About 33% is a full share; bold marks errors."
        echo "- Configs (rendered from benches/failover-lb-mio.ini.in, failover-nginx.conf.in, failover-haproxy.cfg.in):"
        echo "  round robin, upstream keep-alive, $WORKERS workers / threads each, nothing pinned."
        echo "  - lb-mio: \`[lb] retries = 2\` (retry budget at its default 20%), \`[health] interval_ms = 500, rise = 2, fall = 2\`"
        echo "    (timeout_ms 1000), \`max_fails\` at its default 3."
        echo "  - HAProxy: \`option httpchk GET /healthcheck\`, \`check inter 500ms rise 2 fall 2\`, \`timeout check 1s\`, \`retries 2\`,"
        echo "    \`option redispatch\` (redispatch on the last retry only: the first retry goes to the same server after a"
        echo "    turn-around of up to 1 s), \`retry-on conn-failure empty-response\`."
        echo "  - nginx: passive checks only, as above; \`keepalive 768\`."
        echo
        echo "## Per second"
        echo
        per_second_table
        echo
        echo "## What loadgen saw as errors"
        echo
        for t in $TARGETS; do
            if [ -s "$WORK/$t-loadgen.err" ]; then
                echo "$t:"
                echo
                echo '```'
                cat "$WORK/$t-loadgen.err"
                echo '```'
            else
                echo "$t: none."
            fi
            echo
        done
        if [ ${#NOTES[@]} -gt 0 ]; then
            echo "Notes from the run:"
            printf -- '- %s\n' "${NOTES[@]}"
            echo
        fi
        echo "<details><summary>Balancer logs during the runs (s after the load started; repeats counted)</summary>"
        echo
        for t in $TARGETS; do
            echo "$t:"
            echo
            echo '```'
            log_excerpt "$t"
            echo '```'
            echo
        done
        echo "</details>"
        echo
        echo "<details><summary>Raw data: second, then per balancer ok, errors, s2 % ($TARGETS)</summary>"
        echo
        echo '```'
        cat "$WORK/per-second.txt"
        echo '```'
        echo
        echo "</details>"
    } >"$RESULTS"
}

main() {
    begin_run
    [ "$KILL_AT" -ge 1 ] && [ "$RESTART_AT" -gt "$KILL_AT" ] && [ "$SECS" -gt "$RESTART_AT" ] ||
        die "need 1 <= KILL_AT < RESTART_AT < SECS"
    ensure_tools nginx=nginx haproxy=haproxy curl=curl ss=iproute2 timeout=coreutils \
        gnuplot=gnuplot-nox cargo=-
    build backend loadgen
    prepare_run failover
    log "work directory $WORK; targets: $TARGETS; ${SECS}s at $CONNS connections, kill at ${KILL_AT}s, restart at ${RESTART_AT}s"
    local t summary elapsed
    for t in $TARGETS; do run_target "$t"; done
    per_second_data >"$WORK/per-second.txt"
    summary=$(summary_table)
    plot || note "gnuplot failed: no plot"
    elapsed=$(($(date +%s) - START_EPOCH))
    write_results "$summary" "$elapsed"
    print_summary "$summary"
    log "wrote $RESULTS and $PLOT (run took $((elapsed / 60)) min $((elapsed % 60)) s)"
}

# On one line with main: bash reads a script as it runs, so an edit to this file during a run
# cannot make it execute anything after main returns.
main "$@"; exit
