#!/usr/bin/env bash
# Chaos under load: wrk (GETs) and hey (POSTs) against a balancer in front of four backend
# processes that are killed (SIGKILL), hung (SIGSTOP, later SIGCONT) and restarted on their
# port at seeded random times. Reports the clients' errors and non-2xx answers, and the
# balancer's descriptors, RSS and threads before and after.
#
#   benches/chaos.sh                          # lb-mio only: about a minute
#   TARGETS="lb-mio nginx haproxy" benches/chaos.sh   # the same schedule for each: ~3 min
#   SEED=42 benches/chaos.sh                  # replay a schedule (same bash version)
#
# Per balancer: four backend processes (target/release/examples/backend PORT), the balancer
# (config written below), then WARMUP s of the same load without chaos and 2 s of rest, when
# "before" is sampled; then SECS s of load while the schedule runs; every backend is brought
# back (SIGCONT or restart) 3 s before the load ends; 2 s after it "after" is sampled, and a
# last round of curl GETs must reach every backend.
#
# Environment (defaults in brackets):
#   SECS [30]  WARMUP [5]  SEED [from the clock]  TARGETS ["lb-mio"]
#   GET_CONNS  wrk connections [32]   POST_CONNS  hey workers [8]   WORKERS [2]
#   PORT_BASE  backends on +1..+4, lb-mio +10 (its admin API +20), nginx +11, haproxy +12 [29000]
#   RESULTS    markdown file written [benches/results/chaos-YYYY-MM-DD.md]
#   KEEP_TMP   1 keeps the work directory (configs, logs, raw outputs) [0]
#
# The schedule (made from SEED before anything runs, so every balancer gets the same one):
# one action every 0.3-1.2 s from 2 s on; a backend that is up is killed (35%), hung (40%) or
# killed and restarted at once (25%), but only while another backend has been up for a second
# or more; a hung one is resumed (60%) or killed (40%); a dead one is restarted.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$ROOT/benches"
SECS=${SECS:-30}
WARMUP=${WARMUP:-5}
SEED=${SEED:-$(($(date +%s%N) % 32768))}
TARGETS=${TARGETS:-"lb-mio"}
GET_CONNS=${GET_CONNS:-32}
POST_CONNS=${POST_CONNS:-8}
WORKERS=${WORKERS:-2}
PORT_BASE=${PORT_BASE:-29000}
KEEP_TMP=${KEEP_TMP:-0}
RESULTS=${RESULTS:-"$BENCH_DIR/results/chaos-$(date +%F).md"}

# Ports, binaries, WORK, SERVICE_PIDS, HELPER_PIDS, LOGS, NOTES and the shared helpers.
. "$(dirname "$0")/common.sh"

N_BACKENDS=4
B=("" $((PORT_BASE + 1)) $((PORT_BASE + 2)) $((PORT_BASE + 3)) $((PORT_BASE + 4)))
ADMIN_PORT=$((PORT_BASE + 20))
BPID=("" "" "" "" "")
SCHEDULE=()           # "ms action n", planned
declare -A ROWS=()    # target -> its summary table row
declare -A RES=()     # target -> its resources table rows
declare -A ACTUAL=()  # target -> the schedule as it ran ("planned actual action")

now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
sleep_until_ms() {
    local d=$(($1 - $(now_ms)))
    [ $d -gt 0 ] && sleep "$(printf '%d.%03d' $((d / 1000)) $((d % 1000)))"
    return 0
}

# ---------------------------------------------------------------------------------------------
# The schedule.

make_schedule() {
    local t=2000 end=$(((SECS - 3) * 1000)) i j roll settled
    local state=("" up up up up) since=("" -1000 -1000 -1000 -1000)
    RANDOM=$SEED
    SCHEDULE=()
    while :; do
        t=$((t + 300 + RANDOM % 900))
        [ $t -lt $end ] || break
        i=$((1 + RANDOM % N_BACKENDS)) roll=$((RANDOM % 100)) settled=0
        for j in $(seq $N_BACKENDS); do
            [ $j != $i ] && [ "${state[j]}" = up ] && [ $((t - since[j])) -ge 1000 ] && settled=1
        done
        case ${state[i]} in
            up)
                [ $settled = 1 ] || continue
                if [ $roll -lt 35 ]; then SCHEDULE+=("$t kill $i"); state[i]=down
                elif [ $roll -lt 75 ]; then SCHEDULE+=("$t hang $i"); state[i]=hung
                else SCHEDULE+=("$t bounce $i"); state[i]=up; fi ;;
            hung)
                if [ $roll -lt 60 ]; then SCHEDULE+=("$t resume $i"); state[i]=up
                else SCHEDULE+=("$t kill $i"); state[i]=down; fi ;;
            down) SCHEDULE+=("$t restart $i"); state[i]=up ;;
        esac
        since[i]=$t
    done
    SCHEDULE+=("$end restore 0")
}

# ---------------------------------------------------------------------------------------------
# Servers.

start_backend() {
    local n=$1 try
    for try in 1 2 3 4 5; do
        "$BACKEND_BIN" "${B[$n]}" >>"$WORK/backend-$n.log" 2>&1 &
        BPID[n]=$!
        sleep 0.03
        kill -0 "${BPID[n]}" 2>/dev/null && break
        wait "${BPID[n]}" 2>/dev/null || true # could not bind yet: the old one is not gone
    done
    SERVICE_PIDS+=("${BPID[n]}")
}

forget_pid() {
    local pid keep=()
    for pid in "${SERVICE_PIDS[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
    SERVICE_PIDS=("${keep[@]}")
}

kill_backend() {
    local n=$1 pid=${BPID[$1]}
    kill -KILL "$pid" 2>/dev/null || true
    { wait "$pid" || true; } 2>/dev/null
    forget_pid "$pid"
    BPID[n]=""
}

start_lb-mio() {
    cat >"$WORK/lb-mio.ini" <<EOF
; lb-mio under benches/chaos.sh: round robin over four backend processes; a request that fails
; before any response byte goes to another backend up to 3 times (GETs always, POSTs only if
; not yet sent); active checks every 250 ms (rise 2, fall 2, 250 ms timeout), and passive
; checks at the default max_fails (3); a backend that does not answer: 504 after 2 s.
[lb]
listen = 127.0.0.1:$LB_PORT
workers = $WORKERS
strategy = round_robin
retries = 3
[timeouts]
backend_ms = 2000
connect_ms = 1000
[health]
path = /healthcheck
interval_ms = 250
timeout_ms = 250
rise = 2
fall = 2
[admin]
; for /metrics: lb-mio's own answers by status, and retries
listen = 127.0.0.1:$ADMIN_PORT
[log]
level = info
[backends]
s1 = 127.0.0.1:${B[1]}
s2 = 127.0.0.1:${B[2]}
s3 = 127.0.0.1:${B[3]}
s4 = 127.0.0.1:${B[4]}
EOF
    "$LB_BIN" --check "$WORK/lb-mio.ini" >/dev/null || die "lb-mio --check failed"
    "$LB_BIN" "$WORK/lb-mio.ini" >"${LOGS[lb-mio]}" 2>&1 &
    MAIN_PID=$!
    SERVICE_PIDS+=("$MAIN_PID")
    wait_http "$LB_PORT" "$MAIN_PID" lb-mio
}

start_nginx() {
    mkdir -p "$WORK/nginx-tmp"
    cat >"$WORK/nginx.conf" <<EOF
# nginx under benches/chaos.sh: passive checks only (open source nginx has no active ones): a
# failure takes a server out for 2 s; a request whose connection fails or times out (2 s
# without an answer) goes to the next server, 4 tries in all (POSTs only before being sent).
worker_processes $WORKERS;
pid $WORK/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx-tmp/body;
    proxy_temp_path $WORK/nginx-tmp/proxy;
    fastcgi_temp_path $WORK/nginx-tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx-tmp/uwsgi;
    scgi_temp_path $WORK/nginx-tmp/scgi;
    keepalive_requests 1000000;
    upstream backends {
        server 127.0.0.1:${B[1]} max_fails=1 fail_timeout=2s;
        server 127.0.0.1:${B[2]} max_fails=1 fail_timeout=2s;
        server 127.0.0.1:${B[3]} max_fails=1 fail_timeout=2s;
        server 127.0.0.1:${B[4]} max_fails=1 fail_timeout=2s;
        keepalive 768;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT reuseport;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            proxy_read_timeout 2s;
            proxy_send_timeout 2s;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 4;
        }
    }
}
EOF
    nginx -t -q -p "$WORK" -e stderr -c "$WORK/nginx.conf" || die "nginx config test failed"
    nginx -p "$WORK" -e stderr -c "$WORK/nginx.conf" -g 'daemon off;' >"${LOGS[nginx]}" 2>&1 &
    MAIN_PID=$!
    SERVICE_PIDS+=("$MAIN_PID")
    wait_http "$NGINX_PORT" "$MAIN_PID" nginx
    SERVICE_PIDS+=($(ps -o pid= --ppid "$MAIN_PID"))
}

start_haproxy() {
    cat >"$WORK/haproxy.cfg" <<EOF
# HAProxy under benches/chaos.sh: active checks every 250 ms (rise 2, fall 2, 250 ms timeout),
# a failed connection or an empty response retried up to 3 times, redispatched to another
# server at each retry; a server that does not answer: 504 after 2 s.
global
    nbthread $WORKERS
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 1s
    timeout client 60s
    timeout server 2s
    timeout http-keep-alive 60s
    timeout check 250ms
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend be
backend be
    balance roundrobin
    option httpchk GET /healthcheck
    default-server check inter 250ms rise 2 fall 2
    server s1 127.0.0.1:${B[1]}
    server s2 127.0.0.1:${B[2]}
    server s3 127.0.0.1:${B[3]}
    server s4 127.0.0.1:${B[4]}
EOF
    haproxy -c -q -f "$WORK/haproxy.cfg" || die "haproxy config check failed"
    haproxy -db -f "$WORK/haproxy.cfg" >"${LOGS[haproxy]}" 2>&1 &
    MAIN_PID=$!
    SERVICE_PIDS+=("$MAIN_PID")
    wait_http "$HAPROXY_PORT" "$MAIN_PID" haproxy
}

stop_services() {
    local pid
    # A stopped process ignores SIGTERM until it is continued.
    for pid in "${SERVICE_PIDS[@]}"; do kill -CONT "$pid" 2>/dev/null || true; done
    [ ${#SERVICE_PIDS[@]} -gt 0 ] && stop_pids "${SERVICE_PIDS[@]}"
    SERVICE_PIDS=()
    BPID=("" "" "" "" "")
}

# ---------------------------------------------------------------------------------------------
# Measuring.

# The balancer's processes: its main PID and its children (nginx workers).
balancer_pids() { echo "$MAIN_PID" $(ps -o pid= --ppid "$MAIN_PID" 2>/dev/null); }

# "fds upstream rss_kib threads", summed over the balancer's processes: open descriptors,
# those of them that are connections to a backend port (idle upstream keep-alive, mostly), RSS
# and threads. The fewest descriptors over 10 samples 0.1 s apart (a health probe holds one
# for a moment).
resources() {
    local best="" i pid fds rss thr up pids filter="" n
    pids=$(balancer_pids)
    for n in $(seq $N_BACKENDS); do filter+="${filter:+ or }dport = :${B[$n]}"; done
    for i in $(seq 10); do
        fds=0 rss=0 thr=0
        for pid in $pids; do
            [ -d "/proc/$pid" ] || continue
            fds=$((fds + $(ls "/proc/$pid/fd" | wc -l)))
            rss=$((rss + $(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")))
            thr=$((thr + $(ls "/proc/$pid/task" | wc -l)))
        done
        up=$(ss -Htnp state established "( $filter )" 2>/dev/null |
            grep -cE "pid=($(echo $pids | tr ' ' '|'))," || true)
        if [ -z "$best" ] || [ "$fds" -lt "${best%% *}" ]; then best="$fds $up $rss $thr"; fi
        sleep 0.1
    done
    echo "$best"
}

# Runs wrk (GETs) and hey (POSTs) for $1 s against port $2, output to $3-wrk.txt / $3-hey.txt.
start_load() {
    local secs=$1 port=$2 out=$3
    timeout -k 5 $((secs + 20)) wrk -t2 -c"$GET_CONNS" -d"${secs}s" --timeout 5s --latency \
        "http://127.0.0.1:$port/" >"$out-wrk.txt" 2>&1 &
    HELPER_PIDS=($!)
    timeout -k 5 $((secs + 20)) hey -z "${secs}s" -c "$POST_CONNS" -t 5 -m POST -T text/plain \
        -d "chaos bench post body" "http://127.0.0.1:$port/" >"$out-hey.txt" 2>&1 &
    HELPER_PIDS+=($!)
}

wait_load() {
    local pid rc=0
    for pid in "${HELPER_PIDS[@]}"; do wait "$pid" || rc=$?; done
    HELPER_PIDS=()
    return $rc
}

# "requests socket_errors non2xx req_per_s" from wrk's output.
wrk_numbers() {
    awk '
        / requests in / { req = $1 }
        /Socket errors:/ { gsub(/,/, ""); err = $4 + $6 + $8 + $10; detail = $3 " " $4 ", " $5 " " $6 ", " $7 " " $8 ", " $9 " " $10 }
        /Non-2xx or 3xx responses:/ { non = $NF }
        /^Requests\/sec:/ { rps = $2 }
        END { printf "%d %d %d %.0f|%s\n", req, err, non, rps, detail == "" ? "none" : detail }' "$1"
}

# "requests errors non2xx|statuses|errors" from hey's output.
hey_numbers() {
    awk '
        /^Status code distribution:/ { sec = "s"; next }
        /^Error distribution:/ { sec = "e"; next }
        /^[A-Z]/ { sec = "" }
        sec == "s" && /\[[0-9]+\]/ {
            code = $1; gsub(/[][]/, "", code); n = $2
            ok += n; if (code !~ /^2/) non += n
            st = st (st == "" ? "" : ", ") code ": " n
        }
        sec == "e" && /\[[0-9]+\]/ {
            n = $1; gsub(/[][]/, "", n); err += n
            $1 = ""; msg = $0; sub(/^ +/, "", msg); sub(/.*: /, "", msg)
            errs[msg] += n
        }
        END {
            for (m in errs) e = e (e == "" ? "" : "; ") errs[m] " × " m
            printf "%d %d %d|%s|%s\n", ok + err, err, non, st, e == "" ? "none" : e
        }' "$1"
}

# lb-mio's counters of its own answers and of retries: "name value" lines.
lb_counters() {
    curl -s -m 3 "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk '/^lbmio_rejected_total\{/ || /^lbmio_retries_total/ { print $1, $2 }'
}

# What lb-mio answered itself during the chaos ($1 before, $2 after, from lb_counters), less
# what hey saw ($3: hey's statuses "200: n, 502: n"): "504: n (GET n), ...; retries n".
lb_answers() {
    awk -v hey="$3" '
        BEGIN {
            n = split(hey, parts, ", ")
            for (i = 1; i <= n; i++) { split(parts[i], kv, ": "); posts[kv[1]] = kv[2] }
        }
        FNR == NR { before[$1] = $2; next }
        { d = $2 - before[$1] }
        /^lbmio_retries_total/ { retries = d; next }
        d > 0 {
            match($1, /status="[0-9]+"/); st = substr($1, RSTART + 8, 3)
            match($1, /reason="[a-z_]+"/); why = substr($1, RSTART + 8, RLENGTH - 9)
            out = out (out == "" ? "" : ", ") st " " why ": " d " (GET " d - posts[st] ")"
        }
        END { printf "%s; retries: %d\n", out == "" ? "none" : out, retries }' <(echo "$1") <(echo "$2")
}

# State changes and failures in the balancer's log.
log_summary() {
    local t=$1 f=${LOGS[$1]}
    case $t in
        lb-mio) echo "$(grep -c ' is down' "$f" || true) marked down, $(grep -c ' is up' "$f" || true) up; not retried: $(grep -o 'not retried: .*' "$f" | sed 's/^not retried: //' | sort | uniq -c | awk '{ $1 = $1 " ×"; print }' | paste -sd';' || true)" ;;
        haproxy) echo "$(grep -c 'is DOWN' "$f" || true) marked down, $(grep -c 'is UP' "$f" || true) up" ;;
        nginx) echo "$(grep -c 'upstream timed out' "$f" || true) upstream timeouts, $(grep -c 'connect() failed' "$f" || true) failed connects, $(grep -c 'temporarily disabled' "$f" || true) servers disabled" ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# One balancer under the schedule.

run_target() {
    local t=$1 port n t0 ev at action i ran=() before after serving names="" body k
    port=$(target_port "$t")
    log "=== $t ==="
    check_ports "${B[1]}" "${B[2]}" "${B[3]}" "${B[4]}" "$port" "$ADMIN_PORT"
    LOGS[$t]="$WORK/$t.log"
    for n in $(seq $N_BACKENDS); do start_backend "$n"; done
    for n in $(seq $N_BACKENDS); do wait_http "${B[$n]}" "${BPID[n]}" "backend $n"; done
    "start_$t"
    log "$t: warm-up ${WARMUP}s"
    start_load "$WARMUP" "$port" "$WORK/$t-warmup"
    wait_load || note "$t: a warm-up load generator failed (see $WORK/$t-warmup-*.txt)"
    sleep 2
    before=$(resources)
    [ "$t" = lb-mio ] && COUNTERS_BEFORE=$(lb_counters)
    log "$t: chaos ${SECS}s (seed $SEED, ${#SCHEDULE[@]} actions)"
    start_load "$SECS" "$port" "$WORK/$t"
    t0=$(now_ms)
    for ev in "${SCHEDULE[@]}"; do
        read -r at action i <<<"$ev"
        sleep_until_ms $((t0 + at))
        case $action in
            kill) kill_backend "$i" ;;
            hang) kill -STOP "${BPID[i]}" ;;
            resume) kill -CONT "${BPID[i]}" ;;
            restart) start_backend "$i" ;;
            bounce) kill_backend "$i"; start_backend "$i" ;;
            restore)
                for n in $(seq $N_BACKENDS); do
                    if [ -z "${BPID[n]}" ]; then start_backend "$n"; else kill -CONT "${BPID[n]}"; fi
                done ;;
        esac
        ran+=("$at $(($(now_ms) - t0)) $action $i")
    done
    ACTUAL[$t]=$(printf '%s\n' "${ran[@]}")
    wait_load || note "$t: a load generator exited non-zero (see $WORK/$t-*.txt)"
    sleep 2
    after=$(resources)
    [ "$t" = lb-mio ] && COUNTERS_AFTER=$(lb_counters)
    # Still serving, every backend: 16 GETs, round robin over four.
    serving=0
    for k in $(seq 16); do
        body=$(curl -s -m 3 -w ' %{http_code}' "http://127.0.0.1:$port/" || true)
        case $body in *" 200") serving=$((serving + 1)); names+="${body% 200}"$'\n' ;; esac
    done
    names=$(sort -u <<<"$names" | grep -c . || true)
    kill -0 "$MAIN_PID" 2>/dev/null || note "$t: the balancer exited during the run"
    grep -q panicked "${LOGS[$t]}" 2>/dev/null && note "$t: a thread panicked (see ${LOGS[$t]})"

    local w h wn wd hn hs he
    w=$(wrk_numbers "$WORK/$t-wrk.txt") h=$(hey_numbers "$WORK/$t-hey.txt")
    wn=${w%%|*} wd=${w#*|}
    hn=${h%%|*} hs=${h#*|} he=${hs#*|} hs=${hs%%|*}
    read -r wreq werr wnon wrps <<<"$wn"
    read -r hreq herr hnon <<<"$hn"
    ROWS[$t]="| $t | $wreq | $wrps | **$werr** | **$wnon** | $hreq | **$herr** | **$hnon** | $hs | $serving/16 from $names backends |"
    ROWS[$t-detail]="- $t: wrk socket errors: $wd; hey errors: $he; log: $(log_summary "$t")"
    [ "$t" = lb-mio ] &&
        ROWS[$t-detail]+="; its own answers during the chaos (/metrics): $(lb_answers "$COUNTERS_BEFORE" "$COUNTERS_AFTER" "$hs")"
    read -r bf bu br bt <<<"$before"
    read -r af au ar at2 <<<"$after"
    RES[$t]="| $t | $bf ($bu) | $af ($au) | $((af - au - (bf - bu))) | $br | $ar | $((ar - br)) | $bt | $at2 |"
    log "$t: GET $wreq (errors $werr, non-2xx $wnon); POST $hreq (errors $herr, non-2xx $hnon: $hs)"
    log "$t: before fds $bf (upstream $bu) rss $br KiB threads $bt; after fds $af (upstream $au) rss $ar KiB threads $at2"
    stop_services
    sleep 1
}

# ---------------------------------------------------------------------------------------------
# Reporting.

machine_info() {
    machine_lines " (shared with other work: expect noise)" "; $("$LB_BIN" --version 2>&1 | head -n 1)"
    echo "- $(wrk --version 2>&1 | head -n 1 | cut -c1-60); hey $(dpkg-query -W -f='${Version}' hey 2>/dev/null || echo '?') (Debian)"
}

summary_table() {
    local t
    echo "| balancer | GETs (wrk) | GET req/s | GET socket errors | GET non-2xx | POSTs (hey) | POST errors | POST non-2xx | POST statuses | after: 200s, backends |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"
    for t in $TARGETS; do echo "${ROWS[$t]}"; done
}

resources_table() {
    local t
    echo "| balancer | fds before (upstream) | fds after (upstream) | non-upstream fds Δ | RSS before KiB | RSS after KiB | RSS Δ KiB | threads before | threads after |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in $TARGETS; do echo "${RES[$t]}"; done
}

write_results() {
    local summary=$1 elapsed=$2 cmd t
    cmd="SEED=$SEED SECS=$SECS WARMUP=$WARMUP TARGETS=\"$TARGETS\" GET_CONNS=$GET_CONNS POST_CONNS=$POST_CONNS WORKERS=$WORKERS benches/chaos.sh"
    mkdir -p "$(dirname "$RESULTS")"
    {
        echo "# Chaos under load, $(date +%F)"
        echo
        echo "Four backend processes (\`examples/backend.rs\`) killed with SIGKILL, hung with SIGSTOP / SIGCONT and"
        echo "restarted on their port at seeded random times, while wrk sends GETs and hey sends POSTs through the"
        echo "balancer for ${SECS} s."
        echo
        run_header "$cmd" "$elapsed"
        echo
        echo "$summary"
        echo
        for t in $TARGETS; do echo "${ROWS[$t-detail]}"; done
        echo
        echo "Balancer resources at rest, 2 s after a ${WARMUP} s warm-up with the same load (before) and 2 s after the"
        echo "chaos load (after); fds are the fewest over 10 samples, \"upstream\" the ones that are connections to a"
        echo "backend port (idle keep-alive: the demo backends never close them), summed over the balancer's processes:"
        echo
        resources_table
        echo
        echo "How to read it:"
        echo "- wrk: \`wrk -t2 -c$GET_CONNS -d${SECS}s --timeout 5s\` GET /; socket errors are connect, read, write and"
        echo "  timeout errors (a connection closed or reset without an answer, or none within 5 s); non-2xx are answers"
        echo "  such as 502/503/504."
        echo "- hey: \`hey -z ${SECS}s -c $POST_CONNS -t 5 -m POST\` with a small body; its status codes and its errors"
        echo "  (no answer within 5 s, a connection closed without an answer)."
        echo "- The promise lb-mio makes (README, \"Health, failover and retries\"): GETs see no error when a backend dies"
        echo "  or comes back; a GET already sent to a backend that then hangs gets 504 after \`backend_ms\` (2 s here),"
        echo "  as it may have been processed; a POST that reached a backend is never sent again, so one held by a killed"
        echo "  backend gets 502 and one held by a hung backend 504. hey cannot tell whether a POST was duplicated;"
        echo "  \`tests/chaos.rs\` checks that with an id in every request."
        echo "- Configs (written by the script): round robin, upstream keep-alive, $WORKERS workers / threads each, up to 4"
        echo "  tries per request; lb-mio and HAProxy with active checks every 250 ms (rise 2, fall 2), nginx with"
        echo "  passive checks only (open source), each giving up on a silent backend after 2 s."
        echo
        echo "Schedule (seed $SEED; ms after the load started: planned, actual, action, backend):"
        echo
        for t in $TARGETS; do
            echo "$t:"
            echo
            echo '```'
            echo "${ACTUAL[$t]}"
            echo '```'
            echo
        done
        if [ ${#NOTES[@]} -gt 0 ]; then
            echo "Notes from the run:"
            printf -- '- %s\n' "${NOTES[@]}"
            echo
        fi
        echo "<details><summary>Raw wrk and hey output</summary>"
        echo
        for t in $TARGETS; do
            echo "$t, wrk:"
            echo
            echo '```'
            cat "$WORK/$t-wrk.txt"
            echo '```'
            echo
            echo "$t, hey:"
            echo
            echo '```'
            sed -n '/^Summary/,/^Latency distribution/p;/^Status code/,$p' "$WORK/$t-hey.txt"
            echo '```'
            echo
        done
        echo "</details>"
    } >"$RESULTS"
}

main() {
    begin_run
    [ "$SECS" -ge 10 ] || die "SECS must be at least 10"
    ensure_tools wrk=wrk hey=hey curl=curl ss=iproute2 timeout=coreutils cargo=- \
        $(for t in $TARGETS; do case $t in nginx) echo nginx=nginx ;; haproxy) echo haproxy=haproxy ;; esac; done)
    build backend
    prepare_run chaos
    make_schedule
    log "work directory $WORK; targets: $TARGETS; seed $SEED: ${#SCHEDULE[@]} actions over ${SECS}s"
    local t summary elapsed
    for t in $TARGETS; do run_target "$t"; done
    summary=$(summary_table)
    elapsed=$(($(date +%s) - START_EPOCH))
    write_results "$summary" "$elapsed"
    print_summary "$summary"
    echo
    resources_table
    log "wrote $RESULTS (run took $((elapsed / 60)) min $((elapsed % 60)) s)"
}

# On one line with main: bash reads a script as it runs, so an edit to this file during a run
# cannot make it execute anything after main returns.
main "$@"; exit
