#!/usr/bin/env bash
# Load comparison on loopback: direct to one backend vs lb-mio vs nginx vs HAProxy, with the
# demo backend's 14-byte answers or, with BODIES, bodies of given sizes and uploads.
#
#   benches/load.sh                          # full run: about 11 minutes
#   DURATION=5s ROUNDS=3 benches/load.sh     # shorter
#   BODIES="13@64 4k@64 64k@64 1m@16 up1m@16" MODES=pinned DURATION=6s ROUNDS=5 \
#     TARGETS="lb-mio nginx haproxy haproxy-splice" benches/load.sh    # body sizes: about 15 minutes
#
# Environment (defaults in brackets):
#   DURATION  wrk -d per measurement [10s]     ROUNDS   interleaved rounds, medians reported [3]
#   CONNS     wrk connection counts ["64 256"] MODES    "pinned all" or either one ["pinned all"]
#   TARGETS   ["direct lb-mio nginx haproxy"]  WARMUP   wrk run per target and body before round 1 [2s]
#   BODIES    what is requested [demo: GET / from examples/backend.rs, a 14-byte body]. Otherwise
#             a list of SIZE[@CONNS]: SIZE is a response body (13, 4k, 64k, 1m: bytes, KiB, MiB)
#             that GET /b/SIZE fetches, or upSIZE (up1m) a POST /up with a SIZE body and a 3-byte
#             answer; @CONNS (e.g. @64 or @64,256) measures that size at these connection
#             counts instead of CONNS.
#             The backends are then one nginx on three ports serving static files (see
#             benches/load-backend-nginx.conf.in), the results file sizes-YYYY-MM-DD.md, and
#             benches/plot_sizes.py draws CPU per request against body size next to it (.svg).
#   PORT_BASE backends on +1..+3, lb-mio +10, nginx +11, haproxy +12 [27000]
#   SYSCALLS  auto | perf | strace | off: how syscalls are counted [auto: perf if it works]
#   COUNT_DURATION  length of the separate syscall-counting runs [5s]
#   LB_UPSTREAM_KEEPALIVE  lb-mio's idle upstream connections per backend per worker [256, its default]
#   BASE_BIN  another lb-mio binary, measured as target lb-mio-base (a commit before a change)
#   ROUTES    HOSTSxPER_HOST, e.g. 1000x10: target lb-mio-routes gets that route table, and
#             wrk's requests, to every target, go round the hosts, each matching its host's last
#             route [unset: GET /, no routes; only with BODIES=demo]
#   RESULTS   markdown file written [benches/results/load-YYYY-MM-DD.md; sizes-YYYY-MM-DD.md with BODIES]
#   KEEP_TMP  1 keeps the work directory (configs, logs, raw wrk output) [0]
#
# Targets: direct (one backend alone), lb-mio, nginx, haproxy; and lb-mio-base (BASE_BIN),
# lb-mio-log (lb-mio with the text access log to a file), nginx-log (nginx with
# `access_log ... buffer=64k flush=1s`), haproxy-splice (HAProxy with `option splice-request`
# and `option splice-response`: the kernel moves body bytes socket to pipe to socket),
# lb-mio-nosplice (lb-mio with `[lb] splice = off`: every body through its buffers),
# lb-mio-routes (lb-mio plus the ROUTES table: routes
# `[route.hN-rM]` with `host = hN.example.test`, `path = /pM/`, `pool = p<N mod 10>`, and ten
# pools `p0`..`p9` of the same three backends), e.g. the cost of 1,000 hosts' routes:
#
#   ROUTES=1000x10 TARGETS="lb-mio lb-mio-routes" MODES=pinned CONNS=64 benches/load.sh
#
# Modes:
#   pinned  balancer on CPU 0 with ONE worker (lb-mio workers=1, nginx worker_processes 1,
#           haproxy nbthread 1); wrk, the backends and perf on CPU 1.
#   all     nothing pinned; two workers each.
# Targets are measured interleaved (round 1: every target, round 2: every target, ...) so the
# drift of a shared, noisy machine hits them all alike; tables show medians over rounds.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$ROOT/benches"
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-"64 256"}
MODES=${MODES:-"pinned all"}
TARGETS=${TARGETS:-"direct lb-mio nginx haproxy"}
WARMUP=${WARMUP:-2s}
PORT_BASE=${PORT_BASE:-27000}
SYSCALLS=${SYSCALLS:-auto}
LB_UPSTREAM_KEEPALIVE=${LB_UPSTREAM_KEEPALIVE:-256}
KEEP_TMP=${KEEP_TMP:-0}
BASE_BIN=${BASE_BIN:-}
ROUTES=${ROUTES:-}
BODIES=${BODIES:-demo}
if [ "$BODIES" = demo ]; then
    RESULTS=${RESULTS:-"$BENCH_DIR/results/load-$(date +%F).md"}
else
    RESULTS=${RESULTS:-"$BENCH_DIR/results/sizes-$(date +%F).md"}
fi
# Syscalls are counted in separate runs of this length (see count_syscalls).
COUNT_DURATION=${COUNT_DURATION:-5s}

# Ports (B[1..3], LB_PORT, ...), binaries, WORK, SERVICE_PIDS, HELPER_PIDS, LOGS (new lines
# during a run are reported), NOTES, and the helpers shared with failover.sh.
. "$(dirname "$0")/common.sh"

CLK_TCK=$(getconf CLK_TCK)
declare -A PIDS=()   # target -> space-separated PIDs of its processes (all of them, for CPU)
BAL_PIN=() LOAD_PIN=()
WRK_SCRIPT=()        # with ROUTES: -s and wrk's Lua script of routed requests
ROUTE_HOSTS=0 ROUTE_PER_HOST=0
BODY_LIST=()         # the bodies measured, in order (demo, or sizes: 13, 4k, up1m, ...)
declare -A CONNS_OF=() # body -> its wrk connection counts

# ---------------------------------------------------------------------------------------------
# Setup: tools, binaries, syscall counting method.

# strace is only the fallback syscall counter: worth installing, not worth failing for.
ensure_load_tools() {
    local strace=strace?
    [ "$SYSCALLS" = strace ] && strace=strace
    ensure_tools wrk=wrk nginx=nginx haproxy=haproxy perf=linux-perf curl=curl ss=iproute2 \
        taskset=util-linux timeout=coreutils "strace=$strace" cargo=-
}

# perf counting the raw_syscalls tracepoint is precise and far cheaper than strace; strace is
# the fallback where tracepoints are not available (no perf, or not allowed).
pick_syscall_method() {
    if [ "$SYSCALLS" = auto ]; then
        if perf stat -x, -o /dev/null -e raw_syscalls:sys_enter -e syscalls:sys_enter_connect \
            -e syscalls:sys_enter_splice \
            -- true >/dev/null 2>&1; then
            SYSCALLS=perf
        elif command -v strace >/dev/null 2>&1; then
            SYSCALLS=strace
        else
            SYSCALLS=off
        fi
    fi
    case $SYSCALLS in
        perf) SYSCALL_DESC="\`perf stat -e raw_syscalls:sys_enter -e syscalls:sys_enter_connect -e syscalls:sys_enter_splice -p <PIDs>\` (all the balancer's processes and threads), in a separate ${COUNT_DURATION} wrk run per mode / conns / target after the measured rounds (tracing costs CPU, so no measured run is traced)" ;;
        strace) SYSCALL_DESC="\`strace -c -f -p <PIDs>\` (all the balancer's processes and threads), in a separate ${COUNT_DURATION} wrk run per mode / conns / target after the measured rounds (strace slows the balancer a lot: those runs' throughput is discarded, and slower service may change how many events each epoll_wait returns)" ;;
        off) SYSCALL_DESC="not counted (neither perf tracepoints nor strace available)" ;;
        *) die "SYSCALLS must be auto, perf, strace or off" ;;
    esac
    log "syscalls: $SYSCALLS"
}

# ---------------------------------------------------------------------------------------------
# Starting and stopping servers (see common.sh).

start_backends() {
    if [ "$BODIES" = demo ]; then start_demo_backends; else start_static_backends; fi
}

# One demo backend process serving the three ports (one thread each), on the load core if pinned.
start_demo_backends() {
    LOGS[direct]="$WORK/backend.log"
    "${LOAD_PIN[@]}" "$BACKEND_BIN" "${B[1]}" "${B[2]}" "${B[3]}" >"${LOGS[direct]}" 2>&1 &
    local pid=$!
    SERVICE_PIDS+=("$pid")
    PIDS[direct]=$pid
    wait_http "${B[1]}" "$pid" direct
    wait_http "${B[2]}" "$pid" direct
    wait_http "${B[3]}" "$pid" direct
}

# lb-mio as TARGET NAME, binary BIN, access log ACCESS (false | text | json, to a file).
start_lb() {
    local workers=$1 name=$2 bin=$3 access=$4 cfg="$WORK/$2.ini"
    [ -x "$bin" ] || die "$name: no binary at $bin"
    render "$BENCH_DIR/lb-mio.ini.in" "$cfg" "$(target_port "$name")" "$workers" \
        KEEPALIVE="$LB_UPSTREAM_KEEPALIVE" ACCESS_LOG="$access"
    # [log] is the template's last section; the base binary may predate access_log_file.
    [ "$access" = false ] || echo "access_log_file = $WORK/$name-access.log" >>"$cfg"
    [ "$name" = lb-mio-routes ] && routes_config >>"$cfg"
    [ "$name" = lb-mio-nosplice ] && sed -i 's/^\[lb\]$/&\nsplice = off/' "$cfg"
    LOGS[$name]="$WORK/$name.log"
    "${BAL_PIN[@]}" "$bin" "$cfg" >>"${LOGS[$name]}" 2>&1 &
    local pid=$!
    SERVICE_PIDS+=("$pid")
    PIDS[$name]=$pid
    wait_http "$(target_port "$name")" "$pid" "$name"
}

start_lb-mio() { start_lb "$1" lb-mio "$LB_BIN" false; }
start_lb-mio-log() { start_lb "$1" lb-mio-log "$LB_BIN" text; }
start_lb-mio-base() { start_lb "$1" lb-mio-base "$BASE_BIN" false; }
start_lb-mio-routes() { start_lb "$1" lb-mio-routes "$LB_BIN" false; }
start_lb-mio-nosplice() { start_lb "$1" lb-mio-nosplice "$LB_BIN" false; }

# The ROUTES table's pools and routes (sections after the template's; its [backends] stay the
# pool default, which answers the readiness check's GET /).
routes_config() {
    awk -v hosts="$ROUTE_HOSTS" -v per="$ROUTE_PER_HOST" -v b1="${B[1]}" -v b2="${B[2]}" \
        -v b3="${B[3]}" 'BEGIN {
        for (p = 0; p < 10; p++)
            printf "[pool.p%d.backends]\np%d-s1 = 127.0.0.1:%d\np%d-s2 = 127.0.0.1:%d\np%d-s3 = 127.0.0.1:%d\n",
                p, p, b1, p, b2, p, b3
        for (h = 0; h < hosts; h++)
            for (r = 0; r < per; r++)
                printf "[route.h%d-r%d]\nhost = h%d.example.test\npath = /p%d/\npool = p%d\n", h, r, h, r, h % 10
    }'
}

# With ROUTES, wrk's requests to every target: GET /p<PER_HOST-1>/index.html (the path of each
# host's last route), each wrk thread going round the hosts from its own start.
write_routes_script() {
    if [ -z "$ROUTES" ]; then
        [[ " $TARGETS " != *" lb-mio-routes "* ]] || die "target lb-mio-routes needs ROUTES=HOSTSxPER_HOST"
        return 0
    fi
    [[ $ROUTES =~ ^([0-9]+)x([0-9]+)$ ]] || die "ROUTES must be HOSTSxPER_HOST, e.g. 1000x10"
    ROUTE_HOSTS=${BASH_REMATCH[1]} ROUTE_PER_HOST=${BASH_REMATCH[2]}
    [ "$ROUTE_HOSTS" -ge 1 ] && [ "$ROUTE_PER_HOST" -ge 1 ] || die "ROUTES: at least 1x1"
    cat >"$WORK/routes.lua" <<EOF
local threads, requests, at = 0, {}, 0
function setup(thread)
    thread:set("first", threads * 7919)
    threads = threads + 1
end
function init(args)
    for h = 0, $((ROUTE_HOSTS - 1)) do
        requests[h + 1] = wrk.format("GET", "/p$((ROUTE_PER_HOST - 1))/index.html",
            { Host = "h" .. h .. ".example.test" })
    end
    at = first % #requests
end
function request()
    at = at % #requests + 1
    return requests[at]
end
EOF
    WRK_SCRIPT=(-s "$WORK/routes.lua")
}

# One nginx serving the body files on the three ports (benches/load-backend-nginx.conf.in),
# on the load core if pinned; its upload limit and buffer fit the largest upload.
start_static_backends() {
    local body max=1048576 bytes
    for body in "${BODY_LIST[@]}"; do
        bytes=$(body_bytes "$body")
        [ "${body#up}" = "$body" ] || [ "$bytes" -le "$max" ] || max=$bytes
    done
    render "$BENCH_DIR/load-backend-nginx.conf.in" "$WORK/backend.conf" "${B[1]}" 1 MAX_BODY="$max"
    LOGS[direct]="$WORK/backend-error.log"
    run_nginx direct "$WORK/backend.conf" "${B[1]}" 1 "${LOAD_PIN[@]}"
    wait_http "${B[2]}" "${PIDS[direct]%% *}" direct
    wait_http "${B[3]}" "${PIDS[direct]%% *}" direct
}

# ---------------------------------------------------------------------------------------------
# Bodies (BODIES).

# A body's size in bytes: 13, 4k, 64k, 1m, and the same after "up".
body_bytes() {
    [[ ${1#up} =~ ^([0-9]+)([km]?)$ ]] || die "BODIES: $1 is not a size like 13, 4k, 1m or up1m"
    case ${BASH_REMATCH[2]} in
        k) echo $((BASH_REMATCH[1] * 1024)) ;;
        m) echo $((BASH_REMATCH[1] * 1048576)) ;;
        *) echo "${BASH_REMATCH[1]}" ;;
    esac
}

# BODIES -> BODY_LIST, and each body's connection counts in CONNS_OF.
plan_bodies() {
    local b body
    for b in $BODIES; do
        body=${b%@*}
        if [ "$body" = demo ]; then
            [ "${BODIES%@*}" = demo ] || die "BODIES: demo cannot be mixed with sizes"
        else
            [ -z "$ROUTES" ] || die "ROUTES needs BODIES=demo"
            body_bytes "$body" >/dev/null
        fi
        BODY_LIST+=("$body")
        CONNS_OF[$body]=$CONNS
        [ "$b" = "$body" ] || CONNS_OF[$body]=$(tr , ' ' <<<"${b#*@}")
    done
}

# The files the static backends serve (www/b/SIZE; www/up and www/ok answer uploads) and, per
# upload, the body curl checks it with and wrk's Lua script.
write_bodies() {
    local body bytes
    [ "$BODIES" = demo ] && return
    mkdir -p "$WORK/www/b" "$WORK/backend-tmp"
    # nginx started as root serves files as nobody: the work directory must let it pass.
    chmod o+x "$WORK"
    printf 'ok\n' | tee "$WORK/www/up" >"$WORK/www/ok"
    for body in "${BODY_LIST[@]}"; do
        bytes=$(body_bytes "$body")
        if [ "${body#up}" = "$body" ]; then
            head -c "$bytes" /dev/zero | tr '\0' x >"$WORK/www/b/$body"
        else
            head -c "$bytes" /dev/zero | tr '\0' x >"$WORK/$body.bin"
            printf '%s\n' "-- POST with a $bytes-byte body; wrk adds its Content-Length." \
                'wrk.method = "POST"' "wrk.body = string.rep(\"x\", $bytes)" >"$WORK/$body.lua"
        fi
    done
}

# A body's request: REQ_PATH, and REQ_SCRIPT (wrk's -s and Lua script, or nothing).
request_of() {
    case $1 in
        demo) REQ_PATH=/ REQ_SCRIPT=("${WRK_SCRIPT[@]}") ;;
        up*) REQ_PATH=/up REQ_SCRIPT=(-s "$WORK/$1.lua") ;;
        *) REQ_PATH=/b/$1 REQ_SCRIPT=() ;;
    esac
}

# Before round 1: every target answers every body in full (the backend answers an upload only
# once it has read all of it), so no target is measured doing less than the others.
check_bodies() {
    local t body got args=() size
    [ "$BODIES" = demo ] && return
    for t in $TARGETS; do
        for body in "${BODY_LIST[@]}"; do
            request_of "$body"
            args=() size='%{size_download}'
            [ "${body#up}" = "$body" ] || args=(-H 'Expect:' --data-binary "@$WORK/$body.bin") size='%{size_upload}'
            got=$(curl -s -m 10 "${args[@]}" -o /dev/null -w "%{http_code} $size" \
                "http://127.0.0.1:$(target_port "$t")$REQ_PATH")
            [ "$got" = "200 $(body_bytes "$body")" ] ||
                die "$t: $body answered '$got' (status and bytes; want 200 $(body_bytes "$body"))"
        done
    done
    log "every target answers every body in full"
}

# nginx as TARGET NAME, with ACCESS as its access_log directive's arguments.
start_nginx_as() {
    local workers=$1 name=$2 access=$3 cfg="$WORK/$2.conf"
    mkdir -p "$WORK/$name-tmp"
    render "$BENCH_DIR/nginx.conf.in" "$cfg" "$(target_port "$name")" "$workers" \
        NAME="$name" ACCESS_LOG="$access"
    LOGS[$name]="$WORK/$name-error.log"
    run_nginx "$name" "$cfg" "$(target_port "$name")" "$workers" "${BAL_PIN[@]}"
}

# Starts nginx as NAME with config CFG and error log LOGS[NAME], under the command PIN... (a
# taskset, or nothing); waits until it answers on PORT and records its master and WORKERS
# workers in PIDS[NAME].
run_nginx() {
    local name=$1 cfg=$2 port=$3 workers=$4 pid i
    shift 4
    touch "${LOGS[$name]}"
    # -e: the error log nginx uses before it has read the config (default /var/log/nginx).
    nginx -t -q -p "$WORK" -e "${LOGS[$name]}" -c "$cfg" || die "$name config test failed"
    "$@" nginx -p "$WORK" -e "${LOGS[$name]}" -c "$cfg" -g 'daemon off;' \
        >>"$WORK/$name-stdout.log" 2>&1 &
    pid=$!
    SERVICE_PIDS+=("$pid")
    wait_http "$port" "$pid" "$name"
    # The master and its workers: all of them count for CPU and syscalls.
    for i in $(seq 50); do
        PIDS[$name]="$pid $(ps -o pid= --ppid "$pid" | tr '\n' ' ')"
        [ "$(wc -w <<<"${PIDS[$name]}")" -eq $((workers + 1)) ] && break
        sleep 0.1
    done
    SERVICE_PIDS+=(${PIDS[$name]#"$pid"})
}

start_nginx() { start_nginx_as "$1" nginx off; }
# Buffered like lb-mio's: written in 64 KiB batches, at least every second.
start_nginx-log() { start_nginx_as "$1" nginx-log "$WORK/nginx-log-access.log combined buffer=64k flush=1s"; }

# HAProxy as TARGET NAME, with each further argument an `option` of its backend.
start_haproxy_as() {
    local threads=$1 name=$2 cfg="$WORK/$2.cfg" pid opt
    shift 2
    render "$BENCH_DIR/haproxy.cfg.in" "$cfg" "$(target_port "$name")" "$threads"
    # The backend is the template's last section: what is appended belongs to it.
    for opt in "$@"; do echo "    option $opt" >>"$cfg"; done
    LOGS[$name]="$WORK/$name.log"
    haproxy -c -q -f "$cfg" || die "$name config check failed"
    # -db: stay in the foreground, one process (no master), so $! is the process to measure.
    "${BAL_PIN[@]}" haproxy -db -f "$cfg" >>"${LOGS[$name]}" 2>&1 &
    pid=$!
    SERVICE_PIDS+=("$pid")
    PIDS[$name]=$pid
    wait_http "$(target_port "$name")" "$pid" "$name"
}

start_haproxy() { start_haproxy_as "$1" haproxy; }
# Bodies moved socket -> pipe -> socket by splice(2), both ways: HAProxy's best large-body setting.
start_haproxy-splice() { start_haproxy_as "$1" haproxy-splice splice-request splice-response; }

stop_services() {
    [ ${#SERVICE_PIDS[@]} -gt 0 ] && stop_pids "${SERVICE_PIDS[@]}"
    SERVICE_PIDS=()
    PIDS=()
}

# Sets the pinning for a mode and starts the backends and every balancer in TARGETS.
start_mode() {
    local mode=$1 workers t
    case $mode in
        pinned) BAL_PIN=(taskset -c 0) LOAD_PIN=(taskset -c 1) workers=1 ;;
        all) BAL_PIN=() LOAD_PIN=() workers=2 ;;
        *) die "unknown mode $mode (pinned | all)" ;;
    esac
    check_ports "${B[1]}" "${B[2]}" "${B[3]}" $(for t in $TARGETS; do target_port "$t"; done)
    start_backends
    for t in $TARGETS; do
        [ "$t" = direct ] || "start_$t" "$workers"
    done
}

# ---------------------------------------------------------------------------------------------
# Measuring.

# Runs wrk for a body against a target, bounded in time.
run_wrk() {
    local conns=$1 dur=$2 target=$3 body=$4 out=$5 limit
    limit=$(($(dur_secs "$dur") + 30))
    request_of "$body"
    timeout -k 5 "$limit" "${LOAD_PIN[@]}" wrk --latency -t2 -c"$conns" -d"$dur" "${REQ_SCRIPT[@]}" \
        "http://127.0.0.1:$(target_port "$target")$REQ_PATH" >"$out" 2>&1 ||
        log "wrk exited non-zero (see $out)"
}

# One measured run; appends a CSV row to $WORK/runs.csv.
measure() {
    local mode=$1 target=$2 body=$3 conns=$4 round=$5
    local tag pids c0 c1 l0 l1 crashed=0
    tag="$mode-$target-$body-c$conns-r$round"
    read -r -a pids <<<"${PIDS[$target]}"
    alive "${pids[@]}" || die "$target is not running before $tag (log: ${LOGS[$target]})"
    l0=$(lines_of "${LOGS[$target]}")
    c0=$(cpu_ticks "${pids[@]}")
    run_wrk "$conns" "$DURATION" "$target" "$body" "$WORK/wrk-$tag.txt"
    c1=$(cpu_ticks "${pids[@]}")
    l1=$(lines_of "${LOGS[$target]}")
    if ! alive "${pids[@]}"; then
        crashed=1
        note "$target died during $tag; last log lines: $(tail -n 3 "${LOGS[$target]}" | tr '\n' '|')"
    fi
    read -r rps reqs p50 p99 non2xx sock < <(parse_wrk <"$WORK/wrk-$tag.txt")
    echo "$mode,$body,$conns,$target,$round,$rps,$reqs,$p50,$p99,$((c1 - c0)),$non2xx,$sock,$((l1 - l0)),$crashed" \
        >>"$WORK/runs.csv"
    log "$(printf '%-6s %-14s %-5s c=%-3s round %s: %8.0f req/s  p50 %6.2f ms  p99 %7.2f ms  cpu %s ticks' \
        "$mode" "$target" "$body" "$conns" "$round" "$rps" "$p50" "$p99" $((c1 - c0)))"
    [ "$non2xx$sock" = 00 ] || note "$tag: non-2xx $non2xx, socket errors $sock"
    # A crashed target is restarted so the other rounds still run; the row is marked.
    if [ $crashed = 1 ]; then
        [ "$target" = direct ] && die "the backends died"
        "start_$target" "$( [ "$mode" = pinned ] && echo 1 || echo 2)"
    fi
    sleep 1 # let closed connections and the CPU settle before the next target
}

# Syscall counting, in separate short runs after the measured ones: even perf's counting of
# the raw_syscalls tracepoint costs every syscall on the machine something (about +10% CPU per
# request for lb-mio here), and strace slows its target many times over, so throughput, latency
# and CPU never come from a run that was being traced.
count_syscalls() {
    local mode=$1 body conns target
    for body in "${BODY_LIST[@]}"; do
        for conns in ${CONNS_OF[$body]}; do
            for target in $TARGETS; do count_syscalls_of "$mode" "$target" "$body" "$conns"; done
        done
    done
}

# One counting run: appends mode,body,conns,target,requests,syscalls,connects,splices to counts.csv.
count_syscalls_of() {
    local mode=$1 target=$2 body=$3 conns=$4 out tag p reqs calls conn splices counter
    local pids=()
    tag="$mode-$target-$body-c$conns-count"
    out="$WORK/$SYSCALLS-$tag.txt"
    read -r -a pids <<<"${PIDS[$target]}"
    alive "${pids[@]}" || { note "$target not running for its syscall count ($tag)"; return; }
    if [ "$SYSCALLS" = perf ]; then
        counter=("${LOAD_PIN[@]}" perf stat -x, -o "$out" -e raw_syscalls:sys_enter
            -e syscalls:sys_enter_connect -e syscalls:sys_enter_splice
            -p "$(tr ' ' , <<<"${pids[*]}")")
    else
        counter=("${LOAD_PIN[@]}" strace -c -f -q -o "$out")
        for p in "${pids[@]}"; do counter+=(-p "$p"); done
    fi
    timeout -k 5 $(($(dur_secs "$COUNT_DURATION") + 60)) "${counter[@]}" &
    HELPER_PIDS=("$!")
    sleep 1 # let the counter attach to every thread before the load starts
    run_wrk "$conns" "$COUNT_DURATION" "$target" "$body" "$WORK/wrk-$tag.txt"
    # timeout passes SIGINT on; perf and strace then detach and write their totals.
    kill -INT "${HELPER_PIDS[0]}" 2>/dev/null || true
    wait "${HELPER_PIDS[0]}" 2>/dev/null || true
    HELPER_PIDS=()
    reqs=$(parse_wrk <"$WORK/wrk-$tag.txt" | awk '{print $2}')
    if [ "$SYSCALLS" = perf ]; then
        calls=$(awk -F, '$3 == "raw_syscalls:sys_enter" { print $1 + 0 }' "$out")
        conn=$(awk -F, '$3 == "syscalls:sys_enter_connect" { print $1 + 0 }' "$out")
        splices=$(awk -F, '$3 == "syscalls:sys_enter_splice" { print $1 + 0 }' "$out")
    else
        calls=$(awk '$NF == "total" { print $4 }' "$out")
        conn=$(awk '$NF == "connect" { print $4 }' "$out")
        splices=$(awk '$NF == "splice" { print $4 }' "$out")
    fi
    echo "$mode,$body,$conns,$target,$reqs,${calls:-0},${conn:-0},${splices:-0}" >>"$WORK/counts.csv"
    log "$(printf '%-6s %-14s %-5s c=%-3s syscall count (%s): %s syscalls, %s connects, %s splices, %s requests' \
        "$mode" "$target" "$body" "$conns" "$SYSCALLS" "${calls:-?}" "${conn:-?}" "${splices:-?}" "$reqs")"
    sleep 1
}

# VmRSS of a target's processes, summed, after a mode's rounds: appended to rss.csv.
record_rss() {
    local mode=$1 target=$2 pid kib=0 k
    for pid in ${PIDS[$target]}; do
        k=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
        kib=$((kib + ${k:-0}))
    done
    echo "$mode,$target,$kib" >>"$WORK/rss.csv"
}

# Each target, each body, at the body's largest connection count.
warm_up() {
    local t body conns
    for t in $TARGETS; do
        for body in "${BODY_LIST[@]}"; do
            conns=${CONNS_OF[$body]}
            run_wrk "${conns##* }" "$WARMUP" "$t" "$body" "$WORK/warmup-$t-$body.txt"
        done
    done
}

run_mode() {
    local mode=$1 round body conns t
    log "=== mode $mode ==="
    start_mode "$mode"
    check_bodies
    warm_up
    for round in $(seq "$ROUNDS"); do
        for body in "${BODY_LIST[@]}"; do
            for conns in ${CONNS_OF[$body]}; do
                for t in $TARGETS; do measure "$mode" "$t" "$body" "$conns" "$round"; done
            done
        done
    done
    for t in $TARGETS; do record_rss "$mode" "$t"; done
    if [ "$SYSCALLS" != off ]; then count_syscalls "$mode"; fi
    stop_services
}

# ---------------------------------------------------------------------------------------------
# Reporting.

# runs.csv (+ counts.csv) -> markdown table of medians, one row per mode / body / conns /
# target; the medians also go to medians.csv (mode,body,conns,target,req/s,CPU µs/req,
# syscalls/req,splices/req) for sizes_table.
summarize() {
    local counts_csv="$WORK/counts.csv"
    [ -f "$counts_csv" ] || counts_csv=/dev/null
    awk -F, -v tck="$CLK_TCK" -v ccsv="$counts_csv" -v mcsv="$WORK/medians.csv" "$AWK_STATS"'
        FILENAME == ccsv {  # counts.csv: mode,body,conns,target,requests,syscalls,connects,splices
            k = $1 "," $2 "," $3 "," $4
            if ($5 > 0) { ssys[k] = $6 / $5; sconn[k] = $7 / $5 * 1000; ssplice[k] = $8 / $5 }
            next
        }
        {   # runs.csv: mode,body,conns,target,round,req/s,requests,p50,p99,cpu ticks,non2xx,socket errors,log lines,crashed
            k = $1 "," $2 "," $3 "," $4
            if (!(k in seen)) { seen[k] = 1; order[++n] = k }
            rps[k] = rps[k] " " $6; p50[k] = p50[k] " " $8; p99[k] = p99[k] " " $9
            if ($7 > 0) {
                cpu[k] = cpu[k] " " ($10 / tck) / $7 * 100000; busy[k] = busy[k] " " ($10 / tck) / ($7 / $6)
                cpur[k, $5] = ($10 / tck) / $7; rounds[k] = rounds[k] " " $5
            }
            non2xx[k] += $11; sock[k] += $12; loglines[k] += $13; crash[k] += $14
        }
        END {
            print "| mode | body | conns | target | req/s (median) | req/s min–max | p50 ms | p99 ms | CPU s / 100k req | CPU cores busy | syscalls / req | splices / req | upstream connects / 1k req | vs HAProxy req/s | CPU / req vs lb-mio | errors (all rounds) |"
            print "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
            for (i = 1; i <= n; i++) {
                k = order[i]; split(k, f, ",")
                hk = f[1] "," f[2] "," f[3] ",haproxy"
                r = median(rps[k])
                ratio = (hk in seen) ? sprintf("%.2f", r / median(rps[hk])) : "–"
                # CPU per request over lb-mio'"'"'s: the ratio of the medians, and the median of
                # each round'"'"'s ratio (the runs of one round are minutes apart at most).
                lk = f[1] "," f[2] "," f[3] ",lb-mio"; vs = "–"
                if (lk in seen && k != lk && median(cpu[lk]) > 0) {
                    nr = split(rounds[k], rr, " "); per = ""
                    for (j = 1; j <= nr; j++) if ((lk SUBSEP rr[j]) in cpur) per = per " " cpur[k, rr[j]] / cpur[lk, rr[j]]
                    vs = sprintf("%.3f (rounds: %.3f)", median(cpu[k]) / median(cpu[lk]), median(per))
                }
                s = (k in ssys) ? sprintf("%.2f", ssys[k]) : "–"
                sp = (k in ssplice) ? sprintf("%.2f", ssplice[k]) : "–"
                c = (k in sconn) ? sprintf("%.1f", sconn[k]) : "–"
                err = ""
                if (non2xx[k]) err = err sprintf("non-2xx %d; ", non2xx[k])
                if (sock[k]) err = err sprintf("socket errors %d; ", sock[k])
                if (loglines[k]) err = err sprintf("%d log lines; ", loglines[k])
                if (crash[k]) err = err sprintf("CRASHED %d×; ", crash[k])
                if (err == "") err = "none"; else sub(/; $/, "", err)
                name = f[4] == "direct" ? "direct (backend)¹" : f[4]
                printf "| %s | %s | %s | %s | %.0f | %s | %.2f | %.2f | %.3f | %.2f | %s | %s | %s | %s | %s | %s |\n", \
                    f[1], f[2], f[3], name, r, range(rps[k], "%.0f"), median(p50[k]), median(p99[k]), median(cpu[k]), median(busy[k]), s, sp, c, ratio, vs, err
                printf "%s,%s,%s,%s,%s\n", k, r, median(cpu[k]) * 10, (k in ssys) ? ssys[k] : "", \
                    (k in ssplice) ? ssplice[k] : "" >mcsv
            }
        }
    ' "$counts_csv" "$WORK/runs.csv"
}

# medians.csv -> the body-size table: a row per mode / body / conns, a cell per target (req/s,
# CPU µs per request, syscalls per request), then lb-mio's CPU per request over each other
# target's (below 1: lb-mio uses less).
sizes_table() {
    awk -F, -v targets="$TARGETS" -v modes="$MODES" '
        function label(b,   n) {
            n = b; sub(/^up/, "", n)
            sub(/k$/, " KiB", n); sub(/m$/, " MiB", n); if (n !~ /B$/) n = n " B"
            return b ~ /^up/ ? n " upload" : n
        }
        function short(r) { return r >= 10000 ? sprintf("%.1fk", r / 1000) : sprintf("%.0f", r) }
        {
            k = $1 "," $2 "," $3
            if (!(k in seen)) { seen[k] = 1; order[++n] = k }
            rps[k, $4] = $5; cpu[k, $4] = $6; sys[k, $4] = $7
        }
        END {
            nt = split(targets, t, " "); np = 0
            for (i = 1; i <= nt; i++) if (t[i] != "lb-mio" && t[i] != "direct") peer[++np] = t[i]
            head = "| body | conns |"; rule = "|---|---:|"
            for (i = 1; i <= nt; i++) { head = head " " t[i] " |"; rule = rule "---:|" }
            for (i = 1; i <= np; i++) { head = head " lb-mio ÷ " peer[i] " |"; rule = rule "---:|" }
            print head; print rule
            for (j = 1; j <= n; j++) {
                split(order[j], f, ",")
                row = "| " (split(modes, m, " ") > 1 ? f[1] " " : "") label(f[2]) " | " f[3] " |"
                for (i = 1; i <= nt; i++) {
                    if (((order[j], t[i]) in rps))
                        row = row sprintf(" %s · %.1f µs · %s |", short(rps[order[j], t[i]]), cpu[order[j], t[i]], \
                            sys[order[j], t[i]] == "" ? "–" : sprintf("%.1f", sys[order[j], t[i]]))
                    else row = row " – |"
                }
                for (i = 1; i <= np; i++) {
                    a = cpu[order[j], "lb-mio"]; b = cpu[order[j], peer[i]]
                    row = row ((a != "" && b > 0) ? sprintf(" **%.2f** |", a / b) : " – |")
                }
                print row
            }
        }
    ' "$WORK/medians.csv"
}

machine_info() {
    machine_lines "" ""
    echo "- wrk: $(wrk -v 2>&1 | head -n 1 | sed 's/ Copyright.*//')"
    echo "- perf: $(perf --version 2>&1 | head -n 1)"
}

# What the body-size table shows and how it was made, for the results file.
sizes_notes() {
    echo "Each cell: req/s · CPU µs per request · syscalls per request (medians). lb-mio ÷ X: lb-mio's CPU per request over X's (ratio of the medians; below 1, lb-mio uses less CPU per request than X)."
    echo
    echo "- Bodies: \`GET /b/SIZE\` answered by static files of exactly that size; SIZE upload: \`POST /up\` with a body of that size (wrk -s, \`wrk.method = \"POST\"\`, \`wrk.body\`; wrk adds the Content-Length) and a 3-byte answer."
    echo "- Backends: one nginx (benches/load-backend-nginx.conf.in; one worker, on CPU 1 with wrk when pinned) on the three backend ports, \`sendfile on\`. It answers an upload only after reading the whole body (\`mirror_request_body on\`; plain \`return 200\` answers at once and discards the rest), and before round 1 every target was checked with curl to deliver every body in full (status 200 and the body's byte count, each way)."
    echo "- haproxy-splice: HAProxy with \`option splice-request\` and \`option splice-response\` in its backend (the kernel moves body bytes socket → pipe → socket; \`option splice-auto\` gained nothing on loopback in an earlier run). haproxy: the same without them."
    echo "- CPU per request is the primary figure: with large bodies wrk and the backend saturate their core (CPU 1) before the balancer does, so req/s mostly measures them (CPU cores busy, in the table below, shows how much of its core each balancer used)."
}

write_results() {
    local table=$1 elapsed=$2 cmd
    cmd="${BODIES:+BODIES=\"$BODIES\" }DURATION=$DURATION ROUNDS=$ROUNDS CONNS=\"$CONNS\" MODES=\"$MODES\" TARGETS=\"$TARGETS\" WARMUP=$WARMUP PORT_BASE=$PORT_BASE SYSCALLS=$SYSCALLS COUNT_DURATION=$COUNT_DURATION LB_UPSTREAM_KEEPALIVE=$LB_UPSTREAM_KEEPALIVE${BASE_BIN:+ BASE_BIN=$BASE_BIN}${ROUTES:+ ROUTES=$ROUTES} benches/load.sh"
    mkdir -p "$(dirname "$RESULTS")"
    {
        echo "# Load comparison$([ "$BODIES" = demo ] || echo ", body sizes"), $(date +%F)"
        echo
        run_header "$cmd" "$elapsed"
        echo
        if [ "$BODIES" != demo ]; then
            sizes_table
            echo
            sizes_notes
            echo
            echo "![CPU per request against body size]($(basename "${RESULTS%.md}.svg"))"
            echo
            echo "All figures:"
            echo
        fi
        echo "$table"
        echo
        echo "How to read it:"
        echo "- Medians over $ROUNDS interleaved rounds of \`wrk --latency -t2 -cN -d$DURATION\` ($([ "$BODIES" = demo ] && echo "GET /, 14-byte body" || echo "bodies as above")). req/s min–max shows the spread between rounds."
        echo "- pinned: balancer on CPU 0 with one worker (lb-mio workers = 1, nginx worker_processes 1, HAProxy nbthread 1); wrk, the backends and perf on CPU 1. all: nothing pinned, two workers each."
        echo "- CPU s / 100k req: utime + stime of all the balancer's processes and threads (from /proc/PID/stat, before and after the run), per 100,000 requests. CPU cores busy: the same CPU time over the run's length (pinned: at most 1; well under 1 means the balancer waited, or lost its core to other load on this shared machine)."
        echo "- syscalls: $SYSCALL_DESC. splices / req: splice(2) calls among them. upstream connects / 1k req counts connect(2) calls, i.e. new backend connections: near 0 means upstream keep-alive works."
        echo "- ¹ direct: wrk straight to one backend port; its CPU and syscall columns are the backend process's (no balancer)."
        echo "- errors: wrk's Non-2xx and socket errors, new lines in the server's own log during the runs, and crashes."
        echo "- Configs: benches/lb-mio.ini.in, benches/nginx.conf.in, benches/haproxy.cfg.in (round robin, upstream keep-alive, no logging); lb-mio-nosplice adds \`[lb] splice = off\`."
        echo "- RSS after the measured rounds (all of a target's processes): $(awk -F, '{ printf "%s%s %s %.1f MiB", sep, $1, $2, $3 / 1024; sep = ", " }' "$WORK/rss.csv")."
        if [ -n "$ROUTES" ]; then
            echo "- ROUTES=$ROUTES: every target got the same requests, \`GET /p$((ROUTE_PER_HOST - 1))/index.html\` with \`Host: hN.example.test\`, N going round 0..$((ROUTE_HOSTS - 1)) (wrk -s, a Lua script). lb-mio-routes is lb-mio's config plus ten pools p0..p9 (each the same three backends) and $((ROUTE_HOSTS * ROUTE_PER_HOST)) routes \`[route.hN-rM] host = hN.example.test; path = /pM/; pool = p<N mod 10>\`: each request matches its host's last route. lb-mio without routes sends them all to its pool default."
        fi
        echo "- CPU / req vs lb-mio: the ratio of the medians of CPU per request, then in brackets the median of each round's ratio."
        if [ ${#NOTES[@]} -gt 0 ]; then
            echo
            echo "Notes from the run:"
            printf -- '- %s\n' "${NOTES[@]}"
        fi
        echo
        echo "<details><summary>Raw runs (CSV)</summary>"
        echo
        echo '```'
        echo "mode,body,conns,target,round,req_per_s,requests,p50_ms,p99_ms,cpu_ticks(1/$CLK_TCK s),non2xx,socket_errors,log_lines,crashed"
        cat "$WORK/runs.csv"
        if [ -f "$WORK/counts.csv" ]; then
            echo
            echo "syscall-counting runs ($SYSCALLS): mode,body,conns,target,requests,syscalls,connects,splices"
            cat "$WORK/counts.csv"
        fi
        echo '```'
        echo
        echo "</details>"
    } >"$RESULTS"
}

main() {
    begin_run
    ensure_load_tools
    build backend
    pick_syscall_method
    plan_bodies
    prepare_run load
    write_routes_script
    write_bodies
    : >"$WORK/runs.csv"
    log "work directory $WORK; $ROUNDS rounds x modes ($MODES) x bodies ($BODIES) x targets ($TARGETS), $DURATION each"
    local mode
    for mode in $MODES; do run_mode "$mode"; done
    local table elapsed
    table=$(summarize)
    elapsed=$(($(date +%s) - START_EPOCH))
    write_results "$table" "$elapsed"
    if [ "$BODIES" != demo ]; then
        python3 "$BENCH_DIR/plot_sizes.py" "$RESULTS" "${RESULTS%.md}.svg" || note "the plot failed"
        table=$(sizes_table)
    fi
    print_summary "$table"
    log "wrote $RESULTS (run took $((elapsed / 60)) min $((elapsed % 60)) s)"
}

# On one line with main: bash reads a script as it runs, so an edit to this file during a run
# cannot make it execute anything after main returns.
main "$@"; exit
