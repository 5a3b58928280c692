#!/usr/bin/env bash
# Memory per idle keep-alive connection: lb-mio vs nginx vs HAProxy.
#
#   benches/idle.sh                          # full run: about 3 minutes
#   N=2000 ROUNDS=1 benches/idle.sh          # quick look
#   TLS=1 benches/idle.sh                    # the same over TLS: about 5 minutes
#
# For each target in turn, on a fresh process: a short warm-up, the RSS of all its processes,
# then benches/idle_hold.py opens N connections and makes one `GET /` on each, leaving each idle
# in the keep-alive state, and the RSS is read again. (RSS per connection) = (after − before) / N.
# The kernel's socket memory is not in any process's RSS, so this is what the balancer itself
# keeps per idle connection.
#
# Patterns:
#   sequential  one connection after another (at most one request in flight): the idle cost.
#   burst       in waves of WAVE connections whose requests are all in flight at once, then
#               idle: the idle cost plus whatever the server keeps from that peak (buffer
#               pools, memory its allocator keeps), spread over the N connections.
#
# TLS=1: every connection is TLS to the same three, in the same run and the same way (lb-mio's
# tls_listen, nginx's "listen ... ssl", HAProxy's "bind ... ssl"; configs benches/idle-tls-*.in).
# The script makes a throwaway CA and an ECDSA P-256 certificate for idle.bench in its work
# directory; the holder checks it and sends that name (SNI). Each connection is a full
# handshake, no resumption: the idle cost of a TLS connection.
#
# Environment (defaults in brackets):
#   N          idle connections held [10000]         ROUNDS  interleaved rounds, medians [3]
#   PATTERNS   ["sequential burst"]                   WORKERS worker processes / threads [1]
#   TARGETS    ["lb-mio nginx haproxy"]               WARM    warm-up connections [20]
#   WAVE       requests in flight at once in the burst pattern [1000]
#   PORT_BASE  backend on +1, lb-mio +10, nginx +11, haproxy +12 [30000]
#   TLS        1: TLS connections [0]
#   RESULTS    markdown file written [benches/results/idle-YYYY-MM-DD.md, with TLS=1
#              benches/results/idle-tls-YYYY-MM-DD.md]
#   KEEP_TMP   1 keeps the work directory (configs, logs, raw CSV) [0]
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$ROOT/benches"
N=${N:-10000}
ROUNDS=${ROUNDS:-3}
PATTERNS=${PATTERNS:-"sequential burst"}
WORKERS=${WORKERS:-1}
TARGETS=${TARGETS:-"lb-mio nginx haproxy"}
WARM=${WARM:-20}
WAVE=${WAVE:-1000}
PORT_BASE=${PORT_BASE:-30000}
KEEP_TMP=${KEEP_TMP:-0}
TLS=${TLS:-0}
case $TLS in
    0) TEMPLATE=idle ;;
    1) TEMPLATE=idle-tls ;;
    *) echo "TLS must be 0 or 1" >&2; exit 2 ;;
esac
RESULTS=${RESULTS:-"$BENCH_DIR/results/$TEMPLATE-$(date +%F).md"}
HOLDER="$BENCH_DIR/idle_hold.py"
# How long the holder may take to open N connections (and the warm-up its few).
OPEN_TIMEOUT=${OPEN_TIMEOUT:-180}
# TLS=1: the name the certificate is for, sent as SNI (and the Host the holder sends).
TLS_NAME=localhost # the name make_test_certs' certificates carry

# Ports (B[1], LB_PORT, ...), binaries, WORK, SERVICE_PIDS, HELPER_PIDS, LOGS, NOTES, and the
# helpers shared with load.sh and failover.sh.
. "$(dirname "$0")/common.sh"

declare -A PIDS=() # target -> space-separated PIDs of its processes (all of them, for RSS)
NOFILE=0           # the descriptor limit every process started here runs with
MAXCONN=0          # the connection limit each balancer is configured with
declare -A NEGOTIATED=() # TLS=1: target -> "VERSION CIPHER" the holder's connections got

# ---------------------------------------------------------------------------------------------
# Setup.

# N connections need N descriptors in the holder and N, plus one per request in flight for its
# backend connection, in the balancer, which inherits this shell's limit: raise the soft limit
# as far as the hard one allows.
raise_nofile() {
    local hard want=$((N + WAVE + 1000))
    hard=$(ulimit -Hn)
    if [ "$hard" = unlimited ]; then hard=1048576; fi
    ulimit -n "$hard" 2>/dev/null || true
    NOFILE=$(ulimit -n)
    [ "$NOFILE" -ge "$want" ] ||
        die "N=$N needs $want open files per process; the hard limit is $hard (raise it, or lower N)"
    # nginx's worker_connections counts the backend connections too.
    MAXCONN=$((N + WAVE + 500))
}

# ---------------------------------------------------------------------------------------------
# Starting and stopping servers (see common.sh).

# Waits until the balancer answers 200 on PORT: as common.sh's wait_http, over TLS with TLS=1.
wait_up() {
    local port=$1 pid=$2 name=$3 i
    if [ "$TLS" = 0 ]; then
        wait_http "$port" "$pid" "$name"
        return
    fi
    wait_https "$port" "$pid" "$name" "$WORK/tls/ca.pem"
}

start_backend() {
    LOGS[backend]="$WORK/backend.log"
    "$BACKEND_BIN" "${B[1]}" >"${LOGS[backend]}" 2>&1 &
    local pid=$!
    SERVICE_PIDS+=("$pid")
    BACKEND_PID=$pid
    wait_http "${B[1]}" "$pid" backend
}

start_lb-mio() {
    local cfg="$WORK/lb-mio.ini"
    render "$BENCH_DIR/$TEMPLATE-lb-mio.ini.in" "$cfg" "$LB_PORT" "$WORKERS" MAXCONN="$MAXCONN"
    LOGS[lb-mio]="$WORK/lb-mio.log"
    "$LB_BIN" "$cfg" >>"${LOGS[lb-mio]}" 2>&1 &
    local pid=$!
    SERVICE_PIDS+=("$pid")
    PIDS[lb-mio]=$pid
    wait_up "$LB_PORT" "$pid" lb-mio
}

start_nginx() {
    local cfg="$WORK/nginx.conf" pid i
    mkdir -p "$WORK/nginx-tmp"
    render "$BENCH_DIR/$TEMPLATE-nginx.conf.in" "$cfg" "$NGINX_PORT" "$WORKERS" \
        MAXCONN="$MAXCONN" NOFILE="$NOFILE"
    LOGS[nginx]="$WORK/nginx-error.log"
    touch "${LOGS[nginx]}"
    nginx -t -q -p "$WORK" -e "${LOGS[nginx]}" -c "$cfg" || die "nginx config test failed"
    nginx -p "$WORK" -e "${LOGS[nginx]}" -c "$cfg" -g 'daemon off;' >>"$WORK/nginx-stdout.log" 2>&1 &
    pid=$!
    SERVICE_PIDS+=("$pid")
    wait_up "$NGINX_PORT" "$pid" nginx
    for i in $(seq 50); do
        PIDS[nginx]="$pid $(ps -o pid= --ppid "$pid" | tr '\n' ' ')"
        [ "$(wc -w <<<"${PIDS[nginx]}")" -eq $((WORKERS + 1)) ] && break
        sleep 0.1
    done
    SERVICE_PIDS+=(${PIDS[nginx]#"$pid"})
}

start_haproxy() {
    local cfg="$WORK/haproxy.cfg" pid
    render "$BENCH_DIR/$TEMPLATE-haproxy.cfg.in" "$cfg" "$HAPROXY_PORT" "$WORKERS" MAXCONN="$MAXCONN"
    LOGS[haproxy]="$WORK/haproxy.log"
    haproxy -c -q -f "$cfg" || die "haproxy config check failed"
    haproxy -db -f "$cfg" >>"${LOGS[haproxy]}" 2>&1 &
    pid=$!
    SERVICE_PIDS+=("$pid")
    PIDS[haproxy]=$pid
    wait_up "$HAPROXY_PORT" "$pid" haproxy
}

# Stops every balancer (the backend stays up for the whole run).
stop_target() {
    local keep=() pid
    for pid in "${SERVICE_PIDS[@]}"; do
        if [ "$pid" = "${BACKEND_PID:-}" ]; then keep+=("$pid"); else stop_pids "$pid"; fi
    done
    SERVICE_PIDS=("${keep[@]}")
    PIDS=()
}

stop_services() {
    if [ ${#SERVICE_PIDS[@]} -gt 0 ]; then stop_pids "${SERVICE_PIDS[@]}"; fi
    SERVICE_PIDS=()
    PIDS=()
}

# ---------------------------------------------------------------------------------------------
# Measuring.

# VmRSS in KiB, summed over processes.
rss_kib() {
    local pid total=0 kb
    for pid in "$@"; do
        kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}

# Runs the holder: PORT COUNT MODE HOLD_SECS OUT. In the background; waits (≤ OPEN_TIMEOUT)
# for its "ready" line and returns with it running (its PID in HELPER_PIDS), or dies.
hold_connections() {
    local port=$1 count=$2 mode=$3 hold=$4 out=$5 i tls=()
    [ "$TLS" = 1 ] && tls=(--tls "$WORK/tls/ca.pem" "$TLS_NAME")
    python3 "$HOLDER" "${tls[@]}" 127.0.0.1 "$port" "$count" "$mode" "$hold" "$WAVE" >"$out" 2>"$out.err" &
    HELPER_PIDS=("$!")
    for i in $(seq $((OPEN_TIMEOUT * 10))); do
        grep -q '^ready ' "$out" 2>/dev/null && return 0
        if ! kill -0 "${HELPER_PIDS[0]}" 2>/dev/null; then
            wait "${HELPER_PIDS[0]}" 2>/dev/null || true
            HELPER_PIDS=()
            grep -q '^ready ' "$out" 2>/dev/null && return 0
            die "idle_hold.py failed ($port, $count, $mode): $(cat "$out.err")"
        fi
        sleep 0.1
    done
    die "idle_hold.py did not open $count connections within $OPEN_TIMEOUT s"
}

release_connections() {
    if [ ${#HELPER_PIDS[@]} -gt 0 ]; then stop_pids "${HELPER_PIDS[@]}"; fi
    HELPER_PIDS=()
}

# One measurement on a fresh balancer; appends a CSV row to $WORK/runs.csv.
measure() {
    local target=$1 pattern=$2 round=$3 port pids r0 r1 secs tag per crashed=0
    tag="$target-$pattern-r$round"
    "start_$target"
    port=$(target_port "$target")
    read -r -a pids <<<"${PIDS[$target]}"
    # Warm-up: first use of everything (buffers, upstream connections), then released.
    hold_connections "$port" "$WARM" sequential 0 "$WORK/warm-$tag.txt"
    release_connections
    sleep 1
    r0=$(rss_kib "${pids[@]}")
    hold_connections "$port" "$N" "$pattern" 600 "$WORK/hold-$tag.txt"
    secs=$(awk '/^ready / { print $3 }' "$WORK/hold-$tag.txt")
    [ "$TLS" = 1 ] && NEGOTIATED[$target]=$(awk '/^tls / { print $2, $3 }' "$WORK/hold-$tag.txt")
    sleep 1 # let the last connections settle into their idle state
    r1=$(rss_kib "${pids[@]}")
    alive "${pids[@]}" || crashed=1
    release_connections
    if [ $crashed = 1 ]; then
        note "$target died during $tag; last log lines: $(tail -n 3 "${LOGS[$target]}" | tr '\n' '|')"
    fi
    stop_target
    per=$(((r1 - r0) * 1024 / N))
    echo "$target,$pattern,$round,$r0,$r1,$per,$secs,$crashed" >>"$WORK/runs.csv"
    log "$(printf '%-7s %-10s round %s: RSS %7d KiB -> %7d KiB = %5d bytes per idle connection (opened in %s s)' \
        "$target" "$pattern" "$round" "$r0" "$r1" "$per" "$secs")"
}

# ---------------------------------------------------------------------------------------------
# Reporting.

# runs.csv -> markdown table of medians, one row per pattern / target.
summarize() {
    awk -F, -v n="$N" "$AWK_STATS"'
        {
            k = $2 "," $1
            if (!(k in seen)) { seen[k] = 1; order[++m] = k }
            r0[k] = r0[k] " " $4; r1[k] = r1[k] " " $5; per[k] = per[k] " " $6; crash[k] += $8
        }
        END {
            printf "| pattern | target | RSS before MiB | RSS with %d idle MiB | bytes per idle connection (median) | min–max | crashed |\n", n
            print "|---|---|---:|---:|---:|---:|---|"
            for (i = 1; i <= m; i++) {
                split(order[i], f, ",")
                printf "| %s | %s | %.1f | %.1f | **%d** | %s | %s |\n", f[1], f[2], median(r0[order[i]]) / 1024, median(r1[order[i]]) / 1024, median(per[order[i]]), range(per[order[i]], "%d"), crash[order[i]] ? crash[order[i]] "×" : "no"
            }
        }
    ' "$WORK/runs.csv"
}

machine_info() {
    machine_lines " (shared with other work)" "; $("$LB_BIN" --version 2>&1 | head -n 1)"
    echo "- $(python3 --version 2>&1) (benches/idle_hold.py); open files limit: $NOFILE"
    [ "$TLS" = 1 ] && tls_info
    return 0
}

# The TLS libraries in play, as each program reports them.
tls_info() {
    local rustls
    rustls=$(awk '/^name = "rustls"$/ { getline; gsub(/"/, "", $3); print $3; exit }' "$ROOT/Cargo.lock")
    echo "- TLS libraries: lb-mio rustls ${rustls:-?} (aws-lc-rs);" \
        "nginx $(nginx -V 2>&1 | sed -n 's/^built with //p');" \
        "HAProxy $(haproxy -vv 2>&1 | sed -n 's/^Built with OpenSSL version : /built with /p; s/^Running on OpenSSL version : /running on /p' | paste -sd ' ' -);" \
        "benches/idle_hold.py $(python3 -c 'import ssl; print(ssl.OPENSSL_VERSION)')"
}

write_results() {
    local table=$1 elapsed=$2 cmd
    cmd="N=$N ROUNDS=$ROUNDS PATTERNS=\"$PATTERNS\" WORKERS=$WORKERS TARGETS=\"$TARGETS\" WARM=$WARM WAVE=$WAVE PORT_BASE=$PORT_BASE benches/idle.sh"
    mkdir -p "$(dirname "$RESULTS")"
    {
        if [ "$TLS" = 1 ]; then
            cmd="TLS=1 $cmd"
            echo "# Memory per idle keep-alive TLS connection, $(date +%F)"
        else
            echo "# Memory per idle keep-alive connection, $(date +%F)"
        fi
        echo
        run_header "$cmd" "$elapsed"
        echo
        echo "$table"
        echo
        echo "How to read it:"
        echo "- Each measurement is a fresh balancer ($WORKERS worker process / thread) behind one demo backend (examples/backend.rs): $WARM warm-up connections (one request each, then closed), VmRSS of all its processes, then $N connections that each made one \`GET /\` and now wait idle in keep-alive, VmRSS again. Bytes per idle connection = (after − before) × 1024 / $N. Medians over $ROUNDS interleaved rounds."
        echo "- The kernel's memory for the sockets (both ends are on this machine) is in no process's RSS: these figures are what each balancer keeps in its own memory."
        echo "- sequential: one connection after another, at most one request in flight: the idle cost alone. burst: in waves of $WAVE connections whose requests are all in flight at once, then idle: adds what the server keeps after such a peak, spread over the $N connections (lb-mio: up to 1024 free 16 KiB buffers per worker in its pool, and heap its allocator does not return)."
        [ "$TLS" = 1 ] && tls_notes
        echo "- Configs: benches/$TEMPLATE-lb-mio.ini.in, benches/$TEMPLATE-nginx.conf.in, benches/$TEMPLATE-haproxy.cfg.in (keep-alive and header timeouts above the run's length; connection limits above $N)."
        if [ ${#NOTES[@]} -gt 0 ]; then
            echo
            echo "Notes from the run:"
            printf -- '- %s\n' "${NOTES[@]}"
        fi
        echo
        echo "<details><summary>Raw runs (CSV)</summary>"
        echo
        echo '```'
        echo "target,pattern,round,rss_before_kib,rss_after_kib,bytes_per_conn,open_secs,crashed"
        cat "$WORK/runs.csv"
        echo '```'
        echo
        echo "</details>"
    } >"$RESULTS"
}

# TLS=1: what the results add to "How to read it".
tls_notes() {
    local t got=()
    for t in $TARGETS; do got+=("$t ${NEGOTIATED[$t]:-?}"); done
    echo "- TLS: every connection (warm-up too) is a full handshake (no resumption) from Python's ssl module, which offers TLS 1.2 and 1.3 and ALPN http/1.1 and checks the certificate: ECDSA P-256 for $TLS_NAME (sent as SNI), signed by a CA made for the run. Negotiated: $(IFS=,; echo "${got[*]}" | sed 's/,/; /g')."
    echo "- nginx has \`ssl_session_cache shared:SSL:10m\`: shared memory, in the RSS of each process as far as it has touched it. HAProxy's (tune.ssl.cachesize, 20000 sessions) is about 5 MiB it touches at startup: in both RSS figures, not in their difference."
}

main() {
    begin_run
    ensure_tools nginx=nginx haproxy=haproxy curl=curl ss=iproute2 cargo=-
    command -v python3 >/dev/null 2>&1 || die "python3 not found"
    if [ "$TLS" = 1 ]; then
        ensure_tools openssl=openssl
        python3 -c 'import ssl' 2>/dev/null || die "python3 has no ssl module"
    fi
    raise_nofile
    build backend
    prepare_run "$TEMPLATE"
    : >"$WORK/runs.csv"
    [ "$TLS" = 1 ] && make_test_certs "$WORK/tls"
    check_ports "${B[1]}" "$LB_PORT" "$NGINX_PORT" "$HAPROXY_PORT"
    log "work directory $WORK; $ROUNDS rounds x patterns ($PATTERNS) x targets ($TARGETS), $N idle$([ "$TLS" = 1 ] && echo " TLS") connections each; open files $NOFILE"
    start_backend
    local round pattern t
    for round in $(seq "$ROUNDS"); do
        for pattern in $PATTERNS; do
            for t in $TARGETS; do measure "$t" "$pattern" "$round"; done
        done
    done
    local table elapsed
    table=$(summarize)
    elapsed=$(($(date +%s) - START_EPOCH))
    write_results "$table" "$elapsed"
    print_summary "$table"
    log "wrote $RESULTS (run took $((elapsed / 60)) min $((elapsed % 60)) s)"
}

# On one line with main: bash reads a script as it runs, so an edit to this file during a run
# cannot make it execute anything after main returns.
main "$@"; exit
