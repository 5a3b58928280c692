#!/usr/bin/env bash
# TLS termination on loopback: lb-mio vs nginx vs HAProxy, with an ECDSA P-256 and an RSA-2048
# certificate (a test CA and both certificates made by this script with the openssl CLI).
#
#   benches/tls.sh                           # full run: about 15 minutes
#   ROUNDS=1 DURATION=3s benches/tls.sh      # short look: about 2 minutes
#
# Measurements, for each certificate, each target fresh for that certificate:
#   full       HS_CLIENTS parallel `openssl s_time -new`: every connection is a new TCP
#              connection, a full handshake (no session offered) and one `GET / HTTP/1.0`,
#              after which the server closes. -> handshakes/s and the server's CPU per handshake.
#   resumed    the same with `openssl s_time -reuse`: each process's first connection is full,
#              every later one offers that first session (TLS 1.3: its ticket) and resumes.
#   keepalive  `wrk --latency -t2 -cN` over TLS keep-alive connections (N in CONNS).
#              -> requests/s, p50, p99, the server's CPU per request.
# Why s_time for handshakes: it is steady (each process one connection after another) and marks
# every connection '*' (full) or 'r' (resumed), which is counted for each run as a check.
# `wrk -H 'Connection: close'` and h2load's reconnects resume the previous session (seen in
# nginx's $ssl_session_reused), so they never measure full handshakes; `h2load -c N -n N` does
# (one request per client, no session to offer), but in bursts of N connections with a
# process start between bursts.
# Handshake CPU includes the TCP connection and the one proxied request: the cost of a client
# that connects, asks once and leaves.
#
# Environment (defaults in brackets):
#   DURATION   length of each measurement [10s]      ROUNDS  interleaved rounds, medians [3]
#   CERTS      ["ecdsa rsa"]                         TESTS   ["full resumed keepalive"]
#   CONNS      wrk connections for keepalive ["64 256"]
#   HS_CLIENTS parallel s_time processes for full / resumed [8]
#   HS_TLS     TLS versions of the handshake tests: "1.3", "1.2" or both ["1.3"]
#              (keepalive: wrk negotiates, TLS 1.3)
#   TARGETS    ["lb-mio nginx haproxy"]              WARMUP  wrk run per target before round 1 [2s]
#   PORT_BASE  backends on +1..+3, lb-mio +10 (its plain listener +20), nginx +11, haproxy +12 [31000]
#   RESULTS    markdown file written [benches/results/tls-YYYY-MM-DD.md]
#   KEEP_TMP   1 keeps the work directory (certificates, configs, logs, raw outputs) [0]
#
# Every balancer runs ONE worker pinned to CPU 0 (lb-mio workers = 1, nginx worker_processes 1,
# HAProxy nbthread 1); the load generators and the backends run on CPU 1. The clients use the
# system OpenSSL's defaults (TLS 1.3: TLS_AES_256_GCM_SHA384, X25519); what each target
# negotiated is in the results. Targets are measured interleaved (round 1: every target, round 2:
# every target, ...) so the drift of a shared machine hits them all alike.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$ROOT/benches"
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CERTS=${CERTS:-"ecdsa rsa"}
TESTS=${TESTS:-"full resumed keepalive"}
CONNS=${CONNS:-"64 256"}
HS_CLIENTS=${HS_CLIENTS:-8}
HS_TLS=${HS_TLS:-1.3}
TARGETS=${TARGETS:-"lb-mio nginx haproxy"}
WARMUP=${WARMUP:-2s}
PORT_BASE=${PORT_BASE:-31000}
KEEP_TMP=${KEEP_TMP:-0}
RESULTS=${RESULTS:-"$BENCH_DIR/results/tls-$(date +%F).md"}

# Ports (B[1..3], LB_PORT, NGINX_PORT, HAPROXY_PORT), binaries, WORK, SERVICE_PIDS, HELPER_PIDS,
# LOGS, NOTES, and the helpers shared with the other benches.
. "$(dirname "$0")/common.sh"

LB_PLAIN_PORT=$((PORT_BASE + 20))
CLK_TCK=$(getconf CLK_TCK)
BAL_PIN=(taskset -c 0) LOAD_PIN=(taskset -c 1)
declare -A PIDS=()     # target -> space-separated PIDs of its processes (all of them, for CPU)
declare -A EXPECT_B=() # cert,target -> bytes of the HTTP/1.0 response seen at start
CERT=""                # the certificate of the servers running now: ecdsa | rsa

# ---------------------------------------------------------------------------------------------
# Setup.

check_settings() {
    local x
    for x in $CERTS; do [[ $x = ecdsa || $x = rsa ]] || die "CERTS: ecdsa and/or rsa, not $x"; done
    for x in $TESTS; do [[ $x =~ ^(full|resumed|keepalive)$ ]] || die "TESTS: full resumed keepalive, not $x"; done
    for x in $HS_TLS; do [[ $x = 1.2 || $x = 1.3 ]] || die "HS_TLS: 1.2 and/or 1.3, not $x"; done
    for x in $TARGETS; do [[ $x =~ ^(lb-mio|nginx|haproxy)$ ]] || die "TARGETS: lb-mio nginx haproxy, not $x"; done
    [[ $ROUNDS =~ ^[1-9][0-9]*$ && $HS_CLIENTS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS and HS_CLIENTS: positive integers"
    [[ $(dur_secs "$DURATION") =~ ^[1-9][0-9]*$ ]] || die "DURATION: whole seconds (10s, 1m, ...)"
}

# ---------------------------------------------------------------------------------------------
# Starting and stopping servers (see common.sh). Each takes the certificate from $CERT.

start_backends() {
    LOGS[backend]="$WORK/backend.log"
    "${LOAD_PIN[@]}" "$BACKEND_BIN" "${B[1]}" "${B[2]}" "${B[3]}" >"${LOGS[backend]}" 2>&1 &
    local pid=$!
    SERVICE_PIDS+=("$pid")
    PIDS[backend]=$pid
    wait_http "${B[1]}" "$pid" backend
    wait_http "${B[2]}" "$pid" backend
    wait_http "${B[3]}" "$pid" backend
}

start_lb-mio() {
    local cfg="$WORK/lb-mio-$CERT.ini" pid
    render "$BENCH_DIR/tls-lb-mio.ini.in" "$cfg" "$LB_PORT" 1 PLAIN_PORT="$LB_PLAIN_PORT" HSTS=0
    echo "bench = $WORK/certs/$CERT.pem $WORK/certs/$CERT.key" >>"$cfg"
    LOGS[lb-mio]="$WORK/lb-mio.log"
    # --check loads the certificates: an lb-mio without TLS (or a bad file) stops here, clearly.
    "$LB_BIN" --check "$cfg" >>"${LOGS[lb-mio]}" 2>&1 ||
        die "lb-mio refused $cfg: $(tail -n 2 "${LOGS[lb-mio]}" | tr '\n' ' ')(does this lb-mio have TLS? grep tls_listen src/config/keys.rs)"
    "${BAL_PIN[@]}" "$LB_BIN" "$cfg" >>"${LOGS[lb-mio]}" 2>&1 &
    pid=$!
    SERVICE_PIDS+=("$pid")
    PIDS[lb-mio]=$pid
    wait_https "$LB_PORT" "$pid" lb-mio "$WORK/certs/ca.pem"
}

start_nginx() {
    local cfg="$WORK/nginx-$CERT.conf" pid i
    mkdir -p "$WORK/nginx-tmp"
    render "$BENCH_DIR/tls-nginx.conf.in" "$cfg" "$NGINX_PORT" 1 \
        CERT="$WORK/certs/$CERT.pem" KEY="$WORK/certs/$CERT.key"
    LOGS[nginx]="$WORK/nginx-error.log"
    touch "${LOGS[nginx]}"
    # -e: the error log nginx uses before it has read the config (default /var/log/nginx).
    nginx -t -q -p "$WORK" -e "${LOGS[nginx]}" -c "$cfg" || die "nginx config test failed"
    "${BAL_PIN[@]}" nginx -p "$WORK" -e "${LOGS[nginx]}" -c "$cfg" -g 'daemon off;' \
        >>"$WORK/nginx-stdout.log" 2>&1 &
    pid=$!
    SERVICE_PIDS+=("$pid")
    wait_https "$NGINX_PORT" "$pid" nginx "$WORK/certs/ca.pem"
    # The master and its worker: both count for CPU.
    for i in $(seq 50); do
        PIDS[nginx]="$pid $(ps -o pid= --ppid "$pid" | tr '\n' ' ')"
        [ "$(wc -w <<<"${PIDS[nginx]}")" -eq 2 ] && break
        sleep 0.1
    done
    SERVICE_PIDS+=(${PIDS[nginx]#"$pid"})
}

start_haproxy() {
    local cfg="$WORK/haproxy-$CERT.cfg" pid
    render "$BENCH_DIR/tls-haproxy.cfg.in" "$cfg" "$HAPROXY_PORT" 1 CRT="$WORK/certs/$CERT-combined.pem"
    LOGS[haproxy]="$WORK/haproxy.log"
    haproxy -c -q -f "$cfg" || die "haproxy config check failed"
    # -db: stay in the foreground, one process (no master), so $! is the process to measure.
    "${BAL_PIN[@]}" haproxy -db -f "$cfg" >>"${LOGS[haproxy]}" 2>&1 &
    pid=$!
    SERVICE_PIDS+=("$pid")
    PIDS[haproxy]=$pid
    wait_https "$HAPROXY_PORT" "$pid" haproxy "$WORK/certs/ca.pem"
}

stop_services() {
    [ ${#SERVICE_PIDS[@]} -gt 0 ] && stop_pids "${SERVICE_PIDS[@]}"
    SERVICE_PIDS=()
    PIDS=()
}

start_all() {
    local t
    check_ports "${B[1]}" "${B[2]}" "${B[3]}" "$LB_PLAIN_PORT" $(for t in $TARGETS; do target_port "$t"; done)
    start_backends
    for t in $TARGETS; do "start_$t"; done
}

# What a client with OpenSSL's defaults gets from each target, for the results, and the
# response to s_time's request (`GET / HTTP/1.0`, no Host): its status must be 200, and its size
# is what every s_time connection should read (checked after each run).
check_negotiation() {
    local t port out resp status
    for t in $TARGETS; do
        port=$(target_port "$t")
        out=$(timeout 10 openssl s_client -brief -connect "127.0.0.1:$port" -servername localhost \
            -CAfile "$WORK/certs/ca.pem" </dev/null 2>&1 || true)
        resp="$WORK/http10-$CERT-$t.txt"
        printf 'GET / HTTP/1.0\r\n\r\n' | timeout 10 openssl s_client -quiet -connect "127.0.0.1:$port" \
            >"$resp" 2>/dev/null || true
        status=$(head -n 1 "$resp" | tr -d '\r')
        EXPECT_B[$CERT,$t]=$(wc -c <"$resp")
        awk -v cert="$CERT" -v t="$t" -v status="$status" -v bytes="${EXPECT_B[$CERT,$t]}" -F': ' '
            /^Protocol version/ { p = $2 } /^Ciphersuite/ { c = $2 } /^Signature type/ { s = $2 }
            /^Server Temp Key/ { k = $2 } /^Verification/ { v = $2 }
            END { printf "| %s | %s | %s | %s | %s | %s | %s | %s (%d bytes) |\n", cert, t, p, c, k, s, v, status, bytes }
        ' <<<"$out" >>"$WORK/negotiation.md"
        [[ $status =~ ^HTTP/1\.[01]\ 200 ]] ||
            note "$CERT/$t answers s_time's request (GET / HTTP/1.0, no Host) with '$status': handshake rows measure that answer"
    done
}

# ---------------------------------------------------------------------------------------------
# Measuring.

run_wrk() {
    local conns=$1 dur=$2 url=$3 out=$4
    timeout -k 5 $(($(dur_secs "$dur") + 30)) "${LOAD_PIN[@]}" wrk --latency -t2 -c"$conns" \
        -d"$dur" "$url" >"$out" 2>&1 || log "wrk exited non-zero (see $out)"
}

# A crashed target is restarted so the other rounds still run; its row is marked.
after_run() {
    local target=$1 tag=$2
    shift 2
    if ! alive "$@"; then
        note "$target died during $tag; last log lines: $(tail -n 3 "${LOGS[$target]}" | tr '\n' '|')"
        "start_$target"
        return 1
    fi
    return 0
}

# HS_CLIENTS s_time processes (KIND new | reuse) at once for DURATION; one CSV row.
measure_handshakes() {
    local test=$1 kind=$2 tls=$3 target=$4 round=$5
    local tag="$CERT-$test-tls$tls-$target-r$round" port pids c0 c1 l0 l1 t0 t1 i rc
    local failed=0 crashed=0 total full resumed bpc expect
    port=$(target_port "$target")
    read -r -a pids <<<"${PIDS[$target]}"
    alive "${pids[@]}" || die "$target is not running before $tag (log: ${LOGS[$target]})"
    l0=$(lines_of "${LOGS[$target]}")
    c0=$(cpu_ticks "${pids[@]}")
    t0=$(date +%s%N)
    HELPER_PIDS=()
    for i in $(seq "$HS_CLIENTS"); do
        timeout -k 5 $(($(dur_secs "$DURATION") + 30)) "${LOAD_PIN[@]}" openssl s_time \
            -connect "127.0.0.1:$port" "-$kind" "-tls${tls/./_}" -www / -time "$(dur_secs "$DURATION")" \
            >"$WORK/stime-$tag-$i.txt" 2>&1 &
        HELPER_PIDS+=("$!")
    done
    for i in "${!HELPER_PIDS[@]}"; do
        rc=0
        wait "${HELPER_PIDS[$i]}" || rc=$?
        [ $rc = 0 ] || failed=$((failed + 1))
    done
    HELPER_PIDS=()
    t1=$(date +%s%N)
    c1=$(cpu_ticks "${pids[@]}")
    l1=$(lines_of "${LOGS[$target]}")
    after_run "$target" "$tag" "${pids[@]}" || crashed=1
    [ $failed = 0 ] || note "$tag: $failed of $HS_CLIENTS s_time processes failed (see $WORK/stime-$tag-*.txt)"
    # "N connections in T real seconds, B bytes read per connection" closes each process's run;
    # its progress line has one character per connection: '*' full, 'r' resumed.
    read -r total bpc < <(cat "$WORK"/stime-"$tag"-*.txt |
        awk '/connections in [0-9]+ real seconds/ { n += $1; b += $1 * $(NF - 4) }
             END { printf "%d %.0f\n", n, n ? b / n : 0 }')
    full=$(cat "$WORK"/stime-"$tag"-*.txt | grep -E '^[*rt3]+$' | tr -cd '*' | wc -c)
    resumed=$(cat "$WORK"/stime-"$tag"-*.txt | grep -E '^[*rt3]+$' | tr -cd 'r' | wc -c)
    # A different size means other answers than the 200 seen at start (2 bytes: rounding).
    expect=${EXPECT_B[$CERT,$target]}
    if [ "$total" -gt 0 ] && [ $((bpc - expect)) -gt 2 -o $((expect - bpc)) -gt 2 ]; then
        note "$tag: $bpc bytes read per connection, the HTTP/1.0 response at start had $expect"
    fi
    local elapsed_ms=$(((t1 - t0) / 1000000)) rate=0
    [ $elapsed_ms -gt 0 ] && rate=$(awk -v n="$total" -v ms="$elapsed_ms" 'BEGIN { printf "%.1f", n * 1000 / ms }')
    echo "$CERT,$test,$tls,$target,$round,$rate,$total,,,$((c1 - c0)),$elapsed_ms,$full,$resumed,$failed,$((l1 - l0)),$crashed" \
        >>"$WORK/runs.csv"
    log "$(printf '%-5s %-7s TLS %s %-7s round %s: %7.0f handshakes/s  %s full, %s resumed  cpu %s ticks' \
        "$CERT" "$test" "$tls" "$target" "$round" "$rate" "$full" "$resumed" $((c1 - c0)))"
    sleep 1 # let closed connections and the CPU settle before the next target
}

measure_keepalive() {
    local conns=$1 target=$2 round=$3
    local tag="$CERT-keepalive-c$conns-$target-r$round" pids c0 c1 l0 l1 t0 t1 crashed=0
    read -r -a pids <<<"${PIDS[$target]}"
    alive "${pids[@]}" || die "$target is not running before $tag (log: ${LOGS[$target]})"
    l0=$(lines_of "${LOGS[$target]}")
    c0=$(cpu_ticks "${pids[@]}")
    t0=$(date +%s%N)
    run_wrk "$conns" "$DURATION" "https://127.0.0.1:$(target_port "$target")/" "$WORK/wrk-$tag.txt"
    t1=$(date +%s%N)
    c1=$(cpu_ticks "${pids[@]}")
    l1=$(lines_of "${LOGS[$target]}")
    after_run "$target" "$tag" "${pids[@]}" || crashed=1
    read -r rps reqs p50 p99 non2xx sock < <(parse_wrk <"$WORK/wrk-$tag.txt")
    [ "$non2xx$sock" = 00 ] || note "$tag: non-2xx $non2xx, socket errors $sock"
    echo "$CERT,keepalive,$conns,$target,$round,$rps,$reqs,$p50,$p99,$((c1 - c0)),$(((t1 - t0) / 1000000)),,,$((non2xx + sock)),$((l1 - l0)),$crashed" \
        >>"$WORK/runs.csv"
    log "$(printf '%-5s keepalive c=%-3s %-7s round %s: %8.0f req/s  p50 %6.2f ms  p99 %7.2f ms  cpu %s ticks' \
        "$CERT" "$conns" "$target" "$round" "$rps" "$p50" "$p99" $((c1 - c0)))"
    sleep 1
}

run_cert() {
    local round test tls conns t
    CERT=$1
    log "=== certificate $CERT ==="
    start_all
    check_negotiation
    for t in $TARGETS; do
        run_wrk "${CONNS##* }" "$WARMUP" "https://127.0.0.1:$(target_port "$t")/" "$WORK/warmup-$CERT-$t.txt"
    done
    for round in $(seq "$ROUNDS"); do
        for test in $TESTS; do
            case $test in
                full | resumed)
                    for tls in $HS_TLS; do
                        for t in $TARGETS; do
                            measure_handshakes "$test" "$([ "$test" = full ] && echo new || echo reuse)" "$tls" "$t" "$round"
                        done
                    done ;;
                keepalive)
                    for conns in $CONNS; do
                        for t in $TARGETS; do measure_keepalive "$conns" "$t" "$round"; done
                    done ;;
            esac
        done
    done
    stop_services
}

# ---------------------------------------------------------------------------------------------
# Reporting.

# runs.csv -> the two markdown tables of medians (handshakes, then keep-alive), with ratios to
# lb-mio's medians in the same certificate / test.
summarize() {
    awk -F, -v tck="$CLK_TCK" "$AWK_STATS"'
        function ratio(v, k, arr,   lk) {
            lk = k; sub(/,[^,]*$/, ",lb-mio", lk)
            if (!(lk in arr) || arr[lk] == 0 || v == "") return "–"
            return sprintf("%.2f", v / arr[lk])
        }
        function errs(k, what,   e) {
            e = ""
            if (fail[k]) e = e sprintf("%s %d; ", what, fail[k])
            if (loglines[k]) e = e sprintf("%d log lines; ", loglines[k])
            if (crash[k]) e = e sprintf("CRASHED %d×; ", crash[k])
            if (e == "") return "none"
            sub(/; $/, "", e); return e
        }
        {
            # cert,test,param,target,round,rate,count,p50,p99,cpu_ticks,elapsed_ms,full,resumed,failures,log_lines,crashed
            k = $1 "," $2 "," $3 "," $4
            if (!(k in seen)) { seen[k] = 1; order[++n] = k }
            rate[k] = rate[k] " " $6; p50[k] = p50[k] " " $8; p99[k] = p99[k] " " $9
            if ($7 > 0) cpu[k] = cpu[k] " " ($10 / tck) / $7 * 1e6
            if ($11 > 0) busy[k] = busy[k] " " ($10 / tck) / ($11 / 1000)
            full[k] += $12; resumed[k] += $13; fail[k] += $14; loglines[k] += $15; crash[k] += $16
        }
        END {
            for (i = 1; i <= n; i++) { k = order[i]; mrate[k] = median(rate[k]); mcpu[k] = median(cpu[k]) }
            for (i = 1; i <= n; i++) { split(order[i], f, ","); has[f[2] == "keepalive" ? 2 : 1] = 1 }
            for (pass = 1; pass <= 2; pass++) {
                if (!has[pass]) continue
                if (pass == 2 && has[1]) print ""
                if (pass == 1) {
                    print "| cert | handshake | TLS | target | handshakes/s (median) | min–max | CPU µs / handshake | handshakes per CPU-second | CPU cores busy | resumed (all rounds) | handshakes/s vs lb-mio | CPU / handshake vs lb-mio | errors |"
                    print "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
                } else {
                    print "| cert | conns | target | req/s (median) | min–max | p50 ms | p99 ms | CPU µs / req | CPU cores busy | req/s vs lb-mio | CPU / req vs lb-mio | errors |"
                    print "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
                }
                for (i = 1; i <= n; i++) {
                    k = order[i]; split(k, f, ",")
                    if ((f[2] == "keepalive") != (pass == 2)) continue
                    c = mcpu[k]
                    if (pass == 1) {
                        hs = full[k] + resumed[k]
                        printf "| %s | %s | %s | %s | %.0f | %s | %s | %s | %.2f | %s | %s | %s | %s |\n", \
                            f[1], f[2], f[3], f[4], mrate[k], range(rate[k], "%.0f"), \
                            c == "" ? "–" : sprintf("%.0f", c), c == "" || c == 0 ? "–" : sprintf("%.0f", 1e6 / c), \
                            median(busy[k]), hs ? sprintf("%.1f%%", resumed[k] * 100 / hs) : "–", \
                            ratio(mrate[k], k, mrate), ratio(c, k, mcpu), errs(k, "failed s_time processes")
                    } else {
                        printf "| %s | %s | %s | %.0f | %s | %.2f | %.2f | %s | %.2f | %s | %s | %s |\n", \
                            f[1], f[3], f[4], mrate[k], range(rate[k], "%.0f"), median(p50[k]), median(p99[k]), \
                            c == "" ? "–" : sprintf("%.1f", c), median(busy[k]), \
                            ratio(mrate[k], k, mrate), ratio(c, k, mcpu), errs(k, "wrk errors")
                    }
                }
            }
        }
    ' "$WORK/runs.csv"
}

machine_info() {
    machine_lines "" ""
    echo "- $(openssl version) (the clients' and nginx's and HAProxy's TLS library)"
    echo "- wrk: $(wrk -v 2>&1 | head -n 1 | sed 's/ Copyright.*//')"
}

write_results() {
    local tables=$1 elapsed=$2 cmd
    cmd="DURATION=$DURATION ROUNDS=$ROUNDS CERTS=\"$CERTS\" TESTS=\"$TESTS\" CONNS=\"$CONNS\" HS_CLIENTS=$HS_CLIENTS HS_TLS=\"$HS_TLS\" TARGETS=\"$TARGETS\" WARMUP=$WARMUP PORT_BASE=$PORT_BASE benches/tls.sh"
    mkdir -p "$(dirname "$RESULTS")"
    {
        echo "# TLS termination, $(date +%F)"
        echo
        run_header "$cmd" "$elapsed"
        echo
        echo "$tables"
        echo
        echo "What each target negotiated with \`openssl s_client\` (OpenSSL's client defaults, as s_time and wrk use), and its answer to s_time's request:"
        echo
        echo "| cert | target | protocol | cipher | key exchange | signature | verified by the test CA | \`GET / HTTP/1.0\` |"
        echo "|---|---|---|---|---|---|---|---|"
        cat "$WORK/negotiation.md"
        echo
        echo "How to read it:"
        echo "- Each target: one worker on CPU 0 (lb-mio workers = 1, nginx worker_processes 1, HAProxy nbthread 1); the clients and the backends on CPU 1. Medians over $ROUNDS interleaved rounds of $DURATION each; min–max shows the spread between rounds."
        echo "- Certificates: made for the run by a test CA, ECDSA P-256 (ecdsa) or RSA-2048 (rsa); each target serves one at a time."
        echo "- full: $HS_CLIENTS parallel \`openssl s_time -new -tlsX -www / -time N\`: each connection a new TCP connection, a full handshake and one \`GET / HTTP/1.0\`, then the server closes. resumed: the same with \`-reuse\` (every connection after each process's first resumes its session). \"resumed\" counts the connections s_time marked resumed: ~0% for full, ~100% for resumed."
        echo "- CPU µs / handshake: utime + stime of all the target's processes (from /proc, before and after the run) per connection; it includes accepting the TCP connection and proxying its one request. handshakes per CPU-second = 1 / that: what the target would do with its core to itself."
        echo "- keepalive: \`wrk --latency -t2 -cN -d$DURATION https://...\` (GET /, 14-byte body) over TLS keep-alive connections; CPU µs / req as above, per request."
        echo "- CPU cores busy: the target's CPU time over the run's length (at most 1). Well under 1 means something else set the pace: the clients (each s_time process is sequential; wrk encrypts too) and the backends sharing CPU 1, or other load on the machine. Rates then say little about the target; CPU per handshake or request still compares."
        echo "- vs lb-mio: the target's median over lb-mio's in the same row group (above 1: more handshakes or requests per second, or more CPU per handshake or request, than lb-mio)."
        echo "- errors: failed s_time processes or wrk's non-2xx and socket errors, new lines in the server's own log during the runs, and crashes."
        echo "- Configs: benches/tls-lb-mio.ini.in (lb-mio's TLS defaults: tickets, session cache 20000), benches/tls-nginx.conf.in (ssl_protocols TLSv1.2 TLSv1.3, ssl_session_cache shared:SSL:10m, tickets on), benches/tls-haproxy.cfg.in (bind ssl, ssl-min-ver TLSv1.2, its default cache and tickets); round robin over three backends with upstream keep-alive, no logging."
        if [ ${#NOTES[@]} -gt 0 ]; then
            echo
            echo "Notes from the run:"
            printf -- '- %s\n' "${NOTES[@]}"
        fi
        echo
        echo "<details><summary>Raw runs (CSV)</summary>"
        echo
        echo '```'
        echo "cert,test,tls_or_conns,target,round,per_s,handshakes_or_requests,p50_ms,p99_ms,cpu_ticks(1/$CLK_TCK s),elapsed_ms,full,resumed,failures,log_lines,crashed"
        cat "$WORK/runs.csv"
        echo '```'
        echo
        echo "</details>"
    } >"$RESULTS"
}

main() {
    begin_run
    check_settings
    ensure_tools wrk=wrk nginx=nginx haproxy=haproxy openssl=openssl curl=curl ss=iproute2 \
        taskset=util-linux timeout=coreutils cargo=-
    build backend
    prepare_run tls
    : >"$WORK/runs.csv"
    : >"$WORK/negotiation.md"
    make_test_certs "$WORK/certs"
    log "work directory $WORK; $ROUNDS rounds x certs ($CERTS) x tests ($TESTS) x targets ($TARGETS), $DURATION each"
    local cert
    for cert in $CERTS; do run_cert "$cert"; done
    local tables elapsed
    tables=$(summarize)
    elapsed=$(($(date +%s) - START_EPOCH))
    write_results "$tables" "$elapsed"
    print_summary "$tables"
    log "wrote $RESULTS (run took $((elapsed / 60)) min $((elapsed % 60)) s)"
}

# On one line with main: bash reads a script as it runs, so an edit to this file during a run
# cannot make it execute anything after main returns.
main "$@"; exit
