#!/usr/bin/env bash
# testssl.sh against lb-mio's TLS listener on loopback, with certificates of a test CA made for
# the run (ECDSA P-256 and RSA-2048 for the same name, as a site serving both would).
#
#   benches/testssl.sh                  # about a minute (the scan of lb-mio: 30-60 s)
#   TARGET=nginx benches/testssl.sh     # the same scan of nginx with the same certificates
#
# testssl.sh (Debian's package, installed if missing) runs with --add-ca for the test CA, so
# the chain is judged as it would be with a public CA. Sections: protocols, cipher categories,
# forward secrecy, each cipher, server preferences, server defaults (certificates), HTTP headers,
# vulnerabilities. Its JSON and CSV land in the work directory; findings rated HIGH or CRITICAL
# are listed, except those about where the test CA publishes revocation, OCSP and Certificate
# Transparency data (a local CA publishes none: see IGNORED_IDS), which are listed apart.
# Exit status: 1 if a HIGH or CRITICAL finding remains or the scan did not complete, else 0.
#
# Environment (defaults in brackets):
#   TARGET     lb-mio | nginx | haproxy [lb-mio]
#   SCAN_TIMEOUT  bound on the testssl.sh run, in seconds [900]
#   PORT_BASE  backends on +1..+3, lb-mio +10 (its plain listener +20), nginx +11, haproxy +12 [31500]
#   RESULTS    markdown summary written [benches/results/testssl-YYYY-MM-DD.md]
#   KEEP_TMP   1 keeps the work directory (certificates, configs, testssl output) [0]
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$ROOT/benches"
TARGET=${TARGET:-lb-mio}
SCAN_TIMEOUT=${SCAN_TIMEOUT:-900}
PORT_BASE=${PORT_BASE:-31500}
KEEP_TMP=${KEEP_TMP:-0}
RESULTS=${RESULTS:-"$BENCH_DIR/results/testssl-$(date +%F).md"}

# Findings about the test CA's publication of revocation / OCSP / CT data, not about the server
# (testssl.sh ids, matched before any " <hostCert#N>" suffix).
IGNORED_IDS="cert_crlDistributionPoints cert_ocspURL cert_revocation cert_ocspRevoked OCSP_stapling cert_mustStapleExtension cert_certificateTransparency DNS_CAArecord"

. "$(dirname "$0")/common.sh"

LB_PLAIN_PORT=$((PORT_BASE + 20))
declare -A PIDS=()

# ---------------------------------------------------------------------------------------------
# Servers: the backends (one process, three ports) and the target, both certificates.

start_backends() {
    LOGS[backend]="$WORK/backend.log"
    "$BACKEND_BIN" "${B[1]}" "${B[2]}" "${B[3]}" >"${LOGS[backend]}" 2>&1 &
    local pid=$!
    SERVICE_PIDS+=("$pid")
    wait_http "${B[1]}" "$pid" backend
}

start_lb-mio() {
    local cfg="$WORK/lb-mio.ini" pid
    # HSTS on, as a site served over TLS would have it (testssl.sh checks the header).
    render "$BENCH_DIR/tls-lb-mio.ini.in" "$cfg" "$LB_PORT" 1 PLAIN_PORT="$LB_PLAIN_PORT" HSTS=31536000
    printf '%s\n' "ecdsa = $WORK/certs/ecdsa.pem $WORK/certs/ecdsa.key" \
        "rsa = $WORK/certs/rsa.pem $WORK/certs/rsa.key" >>"$cfg"
    LOGS[lb-mio]="$WORK/lb-mio.log"
    "$LB_BIN" --check "$cfg" >>"${LOGS[lb-mio]}" 2>&1 ||
        die "lb-mio refused $cfg: $(tail -n 2 "${LOGS[lb-mio]}" | tr '\n' ' ')(does this lb-mio have TLS? grep tls_listen src/config/keys.rs)"
    "$LB_BIN" "$cfg" >>"${LOGS[lb-mio]}" 2>&1 &
    pid=$!
    SERVICE_PIDS+=("$pid")
    wait_https "$LB_PORT" "$pid" lb-mio "$WORK/certs/ca.pem"
}

start_nginx() {
    local cfg="$WORK/nginx.conf" pid
    mkdir -p "$WORK/nginx-tmp"
    render "$BENCH_DIR/tls-nginx.conf.in" "$cfg" "$NGINX_PORT" 1 \
        CERT="$WORK/certs/ecdsa.pem" KEY="$WORK/certs/ecdsa.key"
    # The RSA pair next to the ECDSA one: nginx picks by the client's signature algorithms.
    sed -i "s|^\( *\)ssl_certificate_key .*|&\n\1ssl_certificate $WORK/certs/rsa.pem;\n\1ssl_certificate_key $WORK/certs/rsa.key;|" "$cfg"
    LOGS[nginx]="$WORK/nginx-error.log"
    touch "${LOGS[nginx]}"
    nginx -t -q -p "$WORK" -e "${LOGS[nginx]}" -c "$cfg" || die "nginx config test failed"
    nginx -p "$WORK" -e "${LOGS[nginx]}" -c "$cfg" -g 'daemon off;' >>"$WORK/nginx-stdout.log" 2>&1 &
    pid=$!
    SERVICE_PIDS+=("$pid")
    wait_https "$NGINX_PORT" "$pid" nginx "$WORK/certs/ca.pem"
}

start_haproxy() {
    local cfg="$WORK/haproxy.cfg" pid
    # Two crt: HAProxy picks by the client's signature algorithms.
    render "$BENCH_DIR/tls-haproxy.cfg.in" "$cfg" "$HAPROXY_PORT" 1 \
        CRT="$WORK/certs/ecdsa-combined.pem crt $WORK/certs/rsa-combined.pem"
    LOGS[haproxy]="$WORK/haproxy.log"
    haproxy -c -q -f "$cfg" || die "haproxy config check failed"
    haproxy -db -f "$cfg" >>"${LOGS[haproxy]}" 2>&1 &
    pid=$!
    SERVICE_PIDS+=("$pid")
    wait_https "$HAPROXY_PORT" "$pid" haproxy "$WORK/certs/ca.pem"
}

stop_services() {
    [ ${#SERVICE_PIDS[@]} -gt 0 ] && stop_pids "${SERVICE_PIDS[@]}"
    SERVICE_PIDS=()
}

# ---------------------------------------------------------------------------------------------
# The scan and its summary.

run_testssl() {
    local port=$1 rc=0
    # localhost for the name (SNI, the certificate's name), 127.0.0.1 for the connections;
    # --nodns none: no DNS query leaves the machine (the CAA lookup is skipped).
    timeout -k 10 "$SCAN_TIMEOUT" testssl --quiet --color 0 --warnings batch --nodns none \
        --ip 127.0.0.1 --add-ca "$WORK/certs/ca.pem" \
        --jsonfile "$WORK/testssl.json" --csvfile "$WORK/testssl.csv" \
        --protocols --std --fs --each-cipher --server-preference --server-defaults --headers \
        --vulnerable "localhost:$port" >"$WORK/testssl.txt" 2>&1 || rc=$?
    # testssl.sh's own exit status counts things it met, not a failure of the run; 124 is the
    # timeout's.
    [ $rc = 124 ] && note "testssl.sh did not finish within ${SCAN_TIMEOUT} s"
    return 0
}

# testssl.json -> "SEVERITY<TAB>id<TAB>finding" lines; ignored ones to $WORK/ignored.tsv,
# HIGH / CRITICAL ones to $WORK/severe.tsv, MEDIUM / LOW ones to $WORK/minor.tsv, scanner
# problems (FATAL, WARN) to $WORK/problems.tsv, and the count of findings by severity (all of
# them, the ignored ones too) to $WORK/counts.txt.
classify() {
    python3 - "$WORK/testssl.json" "$WORK" "$IGNORED_IDS" <<'EOF'
import collections, json, sys
path, work, ignored = sys.argv[1], sys.argv[2], set(sys.argv[3].split())
findings = json.load(open(path))
counts = collections.Counter(f.get("severity", "?") for f in findings)
out = {name: open(f"{work}/{name}.tsv", "w") for name in ("ignored", "severe", "minor", "problems")}
for f in findings:
    sev, fid = f.get("severity", ""), f.get("id", "")
    line = f"{sev}\t{fid}\t{' '.join(f.get('finding', '').split())}\n"
    if sev in ("FATAL", "WARN"):
        out["problems"].write(line)
    elif sev in ("HIGH", "CRITICAL"):
        out["ignored" if fid.split(" ")[0] in ignored else "severe"].write(line)
    elif fid.split(" ")[0] in ignored and sev not in ("OK", "INFO", "DEBUG"):
        out["ignored"].write(line)
    elif sev in ("MEDIUM", "LOW"):
        out["minor"].write(line)
with open(f"{work}/counts.txt", "w") as c:
    c.write(", ".join(f"{k} {counts[k]}" for k in
                      ("CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "FATAL", "OK", "INFO") if counts[k]))
EOF
}

# TSV lines -> markdown table rows.
tsv_rows() {
    if [ -s "$1" ]; then
        awk -F'\t' '{ gsub(/\|/, "\\|"); printf "| %s | `%s` | %s |\n", $1, $2, $3 }' "$1"
    else
        echo "| – | – | none |"
    fi
}

write_results() {
    local elapsed=$1 scan_s=$2 verdict=$3
    mkdir -p "$(dirname "$RESULTS")"
    {
        echo "# testssl.sh against $TARGET, $(date +%F)"
        echo
        run_header "TARGET=$TARGET PORT_BASE=$PORT_BASE benches/testssl.sh" "$elapsed"
        echo "- testssl.sh $(dpkg-query -W -f '${Version}' testssl.sh 2>/dev/null || echo '(version unknown)') (Debian's package)"
        echo "- $(openssl version)"
        echo
        echo "Scan: \`testssl --add-ca <test CA> --ip 127.0.0.1 --nodns none --protocols --std --fs --each-cipher --server-preference --server-defaults --headers --vulnerable localhost:PORT\`, took $scan_s s."
        echo "$TARGET served an ECDSA P-256 and an RSA-2048 certificate for localhost, both from a test CA made for the run$([ "$TARGET" = lb-mio ] && echo ', with `hsts = 31536000`')."
        echo
        echo "**$verdict**"
        echo
        echo "Findings by severity (all, the ignored ones too): $(cat "$WORK/counts.txt")."
        echo
        echo "HIGH or CRITICAL:"
        echo
        echo "| severity | id | finding |"
        echo "|---|---|---|"
        tsv_rows "$WORK/severe.tsv"
        echo
        echo "Ignored, about the local test CA (it publishes no CRL, OCSP responder or CT log entries; ids: $IGNORED_IDS):"
        echo
        echo "| severity | id | finding |"
        echo "|---|---|---|"
        tsv_rows "$WORK/ignored.tsv"
        echo
        echo "MEDIUM and LOW (for information; they do not fail the run):"
        echo
        echo "| severity | id | finding |"
        echo "|---|---|---|"
        tsv_rows "$WORK/minor.tsv"
        echo
        echo "Scanner warnings (testssl.sh could not test something):"
        echo
        echo "| severity | id | finding |"
        echo "|---|---|---|"
        tsv_rows "$WORK/problems.tsv"
        if [ ${#NOTES[@]} -gt 0 ]; then
            echo
            echo "Notes from the run:"
            printf -- '- %s\n' "${NOTES[@]}"
        fi
        echo
        echo "<details><summary>testssl.sh output</summary>"
        echo
        echo '```'
        cat "$WORK/testssl.txt"
        echo '```'
        echo
        echo "</details>"
    } >"$RESULTS"
}

machine_info() { machine_lines "" ""; }

main() {
    begin_run
    [[ $TARGET =~ ^(lb-mio|nginx|haproxy)$ ]] || die "TARGET: lb-mio, nginx or haproxy, not $TARGET"
    ensure_tools testssl=testssl.sh openssl=openssl python3=python3 curl=curl ss=iproute2 \
        timeout=coreutils nginx=nginx haproxy=haproxy cargo=-
    build backend
    prepare_run testssl
    make_test_certs "$WORK/certs"
    check_ports "${B[1]}" "${B[2]}" "${B[3]}" "$LB_PLAIN_PORT" "$(target_port "$TARGET")"
    start_backends
    "start_$TARGET"
    local t0 scan_s verdict rc=0
    log "testssl.sh against $TARGET on 127.0.0.1:$(target_port "$TARGET") (bounded to $SCAN_TIMEOUT s)"
    t0=$(date +%s)
    run_testssl "$(target_port "$TARGET")"
    scan_s=$(($(date +%s) - t0))
    log "testssl.sh took $scan_s s"
    stop_services
    if [ ! -s "$WORK/testssl.json" ] || ! python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$WORK/testssl.json" 2>/dev/null; then
        note "testssl.sh wrote no complete JSON (see $WORK/testssl.txt)"
        : >"$WORK/severe.tsv"; : >"$WORK/ignored.tsv"; : >"$WORK/minor.tsv"; : >"$WORK/problems.tsv"
        echo "none (no JSON)" >"$WORK/counts.txt"
        verdict="FAILED: the scan did not complete"
        rc=1
    else
        classify
        if [ -s "$WORK/severe.tsv" ]; then
            verdict="FAILED: $(wc -l <"$WORK/severe.tsv") finding(s) rated HIGH or CRITICAL"
            rc=1
        elif grep -q '^FATAL' "$WORK/problems.tsv"; then
            verdict="FAILED: testssl.sh met a fatal problem (see the scanner warnings)"
            rc=1
        else
            verdict="PASSED: no finding rated HIGH or CRITICAL (besides the ignored ones about the test CA)"
        fi
    fi
    write_results $(($(date +%s) - START_EPOCH)) "$scan_s" "$verdict"
    echo
    echo "$verdict"
    echo "HIGH/CRITICAL:"
    if [ -s "$WORK/severe.tsv" ]; then sed 's/^/  /' "$WORK/severe.tsv"; else echo "  none"; fi
    echo "ignored (test CA):"
    if [ -s "$WORK/ignored.tsv" ]; then sed 's/^/  /' "$WORK/ignored.tsv"; else echo "  none"; fi
    if [ -s "$WORK/problems.tsv" ]; then echo "scanner warnings:"; sed 's/^/  /' "$WORK/problems.tsv"; fi
    log "testssl.sh took $scan_s s; wrote $RESULTS"
    # A failed verdict keeps the work directory (cleanup keeps it on a non-zero exit).
    return $rc
}

main "$@"; exit
