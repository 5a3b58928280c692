# Helpers shared by the benches in this folder, sourced by each once its settings (PORT_BASE,
# KEEP_TMP, ...) are read. Only what is the same in several lives here, so a fix to setup, port
# checks, measuring or cleanup reaches them all; what differs stays in each script.
# Not meant to be run on its own.

# ---------------------------------------------------------------------------------------------
# Layout and state.

# The port layout both scripts document: backends on PORT_BASE +1..+3, lb-mio +10, nginx +11,
# haproxy +12, and for load.sh's extra targets lb-mio-base +13, lb-mio-log +14, nginx-log +15,
# lb-mio-routes +16, haproxy-splice +17, lb-mio-nosplice +18
# (each script has its own default PORT_BASE, so both can run at once).
B=("" $((PORT_BASE + 1)) $((PORT_BASE + 2)) $((PORT_BASE + 3))) # B[1..3]: backend ports
LB_PORT=$((PORT_BASE + 10)) NGINX_PORT=$((PORT_BASE + 11)) HAPROXY_PORT=$((PORT_BASE + 12))
LB_BIN=${LB_BIN:-"$ROOT/target/release/lb-mio"} # another build (a "before") with LB_BIN=...
BACKEND_BIN="$ROOT/target/release/examples/backend"

WORK=""             # this run's temp directory (configs, logs, raw outputs)
SERVICE_PIDS=()     # servers started for the current mode / balancer, stopped by PID after it
HELPER_PIDS=()      # load generators and counters running in the background right now
CREATED_POLICY_RC=0 # 1 if we created /usr/sbin/policy-rc.d to keep apt from starting services
declare -A LOGS=()  # target -> its log file
NOTES=()            # odd things seen during the run, printed under the tables

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
note() { NOTES+=("$*"); log "note: $*"; }

# Sets START_EPOCH and the traps: nothing started may outlive the script, however it ends.
begin_run() {
    START_EPOCH=$(date +%s)
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

# After the build: the machine and its load at the start, for the results (machine_info is
# each script's own), and this run's work directory /tmp/lb-mio-NAME.XXXXXX.
prepare_run() {
    MACHINE_INFO=$(machine_info)
    LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
    WORK=$(mktemp -d "/tmp/lb-mio-$1.XXXXXX")
}

# The end of a run on stdout: the summary table ($1), then the notes.
print_summary() {
    echo
    echo "$1"
    echo
    if [ ${#NOTES[@]} -gt 0 ]; then printf 'note: %s\n' "${NOTES[@]}"; fi
}

# ---------------------------------------------------------------------------------------------
# Setup.

# Arguments: COMMAND=PACKAGE. PACKAGE "-" means no package (the
# command must be there already); a trailing "?" marks a tool worth installing as root but not
# worth failing for otherwise. Installs what is missing via apt-get (root only), without letting
# apt start nginx/haproxy services: nothing may keep running after the bench.
ensure_tools() {
    local missing=() pair cmd pkg
    for pair in "$@"; do
        cmd=${pair%%=*} pkg=${pair#*=}
        command -v "$cmd" >/dev/null 2>&1 && continue
        [ "$pkg" = - ] && die "$cmd not found (install a Rust toolchain)"
        if [ "${pkg%\?}" != "$pkg" ]; then
            [ "$(id -u)" -ne 0 ] && continue
            pkg=${pkg%\?}
        fi
        missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return
    [ "$(id -u)" -eq 0 ] || die "missing packages: ${missing[*]} (run as root to install them)"
    log "installing: ${missing[*]}"
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        CREATED_POLICY_RC=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    if [ "$CREATED_POLICY_RC" = 1 ]; then rm -f /usr/sbin/policy-rc.d; CREATED_POLICY_RC=0; fi
}

# lb-mio and the named examples (release). The examples are being worked on, so say clearly
# which build failed.
build() {
    local ex=() e
    for e in "$@"; do ex+=(--example "$e"); done
    log "building lb-mio and the example(s) $* (release)"
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
    (cd "$ROOT" && cargo build --release --quiet "${ex[@]}") ||
        die "cargo build --release ${ex[*]} failed (are the examples finished?)"
    [ -x "$LB_BIN" ] || die "binaries missing after build"
    for e in "$@"; do [ -x "$ROOT/target/release/examples/$e" ] || die "binaries missing after build"; done
}

# The lines of MACHINE_INFO both benches report; called right after the build, as the tree may
# change (other people commit) while the run goes on. $1 follows the machine line, $2 the
# lb-mio line; each script adds lines for its own tools.
machine_lines() {
    local cpu commit dirty=""
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    echo "- machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r)$1"
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ] &&
        dirty=" + uncommitted changes in: $(git -C "$ROOT" status --porcelain --untracked-files=no | awk '{print $2}' | tr '\n' ' ')"
    if [ "$LB_BIN" = "$ROOT/target/release/lb-mio" ]; then
        echo "- lb-mio: commit $commit$dirty (as built at the start of the run)$2"
    else
        echo "- lb-mio: $LB_BIN (given as LB_BIN, not this tree's build)$2"
    fi
    echo "- $(nginx -v 2>&1)"
    echo "- $(haproxy -v 2>&1 | head -n 1)"
}

# ---------------------------------------------------------------------------------------------
# TLS certificates for the TLS benches, made anew each run: nothing secret is kept in the tree.

# In DIR: a test CA (ca.pem, ECDSA P-256) and two server certificates it signed, for localhost
# and 127.0.0.1: ecdsa.pem/.key (P-256) and rsa.pem/.key (2048 bits), each .pem the chain
# without the CA (as a server sends it), and ecdsa-combined.pem / rsa-combined.pem with chain
# and key in one file, as HAProxy reads them. Valid for a year (testssl.sh marks under 60 days).
make_test_certs() {
    local dir=$1 k
    mkdir -p "$dir"
    (
        cd "$dir"
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
        openssl req -x509 -new -key ca.key -sha256 -days 365 -subj "/CN=lb-mio bench test CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem 2>/dev/null
        for k in ecdsa rsa; do
            if [ "$k" = ecdsa ]; then
                openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$k.key" 2>/dev/null
            else
                openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$k.key" 2>/dev/null
            fi
            openssl req -new -key "$k.key" -subj "/CN=localhost" -out "$k.csr" 2>/dev/null
            # keyEncipherment only for RSA: TLS 1.2's RSA key exchange would use it.
            printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
                "keyUsage=critical,digitalSignature$([ "$k" = rsa ] && echo ,keyEncipherment)" \
                "extendedKeyUsage=serverAuth" >"$k.ext"
            openssl x509 -req -in "$k.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 \
                -sha256 -extfile "$k.ext" -out "$k.pem" 2>/dev/null
            cat "$k.pem" "$k.key" >"$k-combined.pem"
        done
    ) || die "making the test certificates in $dir failed"
    openssl verify -CAfile "$dir/ca.pem" "$dir/ecdsa.pem" "$dir/rsa.pem" >/dev/null ||
        die "the test certificates in $dir do not verify"
}

# ---------------------------------------------------------------------------------------------
# Starting and stopping servers. Every server is recorded in SERVICE_PIDS and stopped by PID in
# the script's stop_services (also from the EXIT trap, via cleanup).

port_free() { [ -z "$(ss -Htln "sport = :$1")" ]; }

check_ports() {
    local p
    for p in "$@"; do
        port_free "$p" || die "127.0.0.1:$p is in use (another run?); choose PORT_BASE=..."
    done
}

target_port() {
    case $1 in
        direct) echo "${B[1]}" ;; lb-mio) echo "$LB_PORT" ;;
        nginx) echo "$NGINX_PORT" ;; haproxy) echo "$HAPROXY_PORT" ;;
        lb-mio-base) echo $((PORT_BASE + 13)) ;; lb-mio-log) echo $((PORT_BASE + 14)) ;;
        nginx-log) echo $((PORT_BASE + 15)) ;; lb-mio-routes) echo $((PORT_BASE + 16)) ;;
        haproxy-splice) echo $((PORT_BASE + 17)) ;; lb-mio-nosplice) echo $((PORT_BASE + 18)) ;;
        *) die "unknown target $1" ;;
    esac
}

# Waits until http://127.0.0.1:PORT/ answers 200, failing early if the server died.
wait_http() {
    local port=$1 pid=$2 name=$3 i
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || die "$name exited at startup (see ${LOGS[$name]:-$WORK})"
        [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$port/")" = 200 ] &&
            return 0
        sleep 0.1
    done
    die "$name did not answer on 127.0.0.1:$port within 10 s"
}

# Fills a template's @NAME@ placeholders: TEMPLATE OUT PORT WORKERS [NAME=VALUE ...] (the
# extra pairs for placeholders only one bench's templates have).
render() {
    local template=$1 out=$2 port=$3 workers=$4 kv extra=()
    shift 4
    for kv in "$@"; do extra+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed -e "s|@WORK@|$WORK|g" -e "s|@WORKERS@|$workers|g" -e "s|@THREADS@|$workers|g" \
        -e "s|@PORT@|$port|g" -e "s|@B1@|${B[1]}|g" -e "s|@B2@|${B[2]}|g" -e "s|@B3@|${B[3]}|g" \
        "${extra[@]}" "$template" >"$out"
}

# Waits until https://127.0.0.1:PORT/ answers 200 with a certificate CAFILE vouches for.
wait_https() {
    local port=$1 pid=$2 name=$3 cafile=$4 i
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || die "$name exited at startup (see ${LOGS[$name]:-$WORK})"
        [ "$(curl -s -o /dev/null -m 1 --cacert "$cafile" -w '%{http_code}' \
            "https://127.0.0.1:$port/")" = 200 ] && return 0
        sleep 0.1
    done
    die "$name did not answer on https://127.0.0.1:$port within 10 s"
}

# SIGTERM, then SIGKILL whatever is left after 5 s.
stop_pids() {
    local pid i alive
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for i in $(seq 50); do
        alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# The EXIT trap: stops helpers and servers (stop_services is each script's own), removes a
# policy-rc.d we created, and removes the work directory unless KEEP_TMP=1 or the run failed.
cleanup() {
    local rc=$?
    set +e
    [ ${#HELPER_PIDS[@]} -gt 0 ] && stop_pids "${HELPER_PIDS[@]}"
    stop_services
    [ "$CREATED_POLICY_RC" = 1 ] && rm -f /usr/sbin/policy-rc.d
    if [ -n "$WORK" ]; then
        if [ "$KEEP_TMP" = 1 ] || [ $rc -ne 0 ]; then
            log "work directory kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit $rc
}

# ---------------------------------------------------------------------------------------------
# Measuring.

# "10s" / "2m" / "1h" / "10" -> seconds, for the timeouts that bound every run.
dur_secs() {
    local d=$1
    case $d in
        *s) echo "${d%s}" ;;
        *m) echo $((${d%m} * 60)) ;;
        *h) echo $((${d%h} * 3600)) ;;
        *) echo "$d" ;;
    esac
}

# utime+stime in clock ticks, summed over processes (each /proc/PID/stat covers all threads).
cpu_ticks() {
    local pid total=0 t
    for pid in "$@"; do
        # Fields after "(comm) ": state is $1, so utime is $12 and stime $13.
        t=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}')
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

alive() {
    local pid
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null || return 1; done
}

lines_of() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }

# awk functions the summaries share, put before an awk program ("$AWK_STATS"'...'):
# median(list): the median of a space-separated list of numbers ("" for an empty one);
# range(list, fmt): its smallest and largest, each printed with fmt, as "lo–hi".
# shellcheck disable=SC2016,SC2034
AWK_STATS='
    function median(list,   n, a, i, j, v) {
        n = split(list, a, " ")
        for (i = 2; i <= n; i++) { v = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > v; j--) a[j + 1] = a[j]; a[j + 1] = v }
        if (n == 0) return ""
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function range(list, fmt,   n, a, i, lo, hi) {
        n = split(list, a, " "); lo = hi = a[1] + 0
        for (i = 2; i <= n; i++) { if (a[i] + 0 < lo) lo = a[i] + 0; if (a[i] + 0 > hi) hi = a[i] + 0 }
        return sprintf(fmt "–" fmt, lo, hi)
    }
'

# wrk's text output -> "rps requests p50_ms p99_ms non2xx socket_errors"
parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
            if (v ~ /m$/) return substr(v, 1, length(v) - 1) * 60000
            return v + 0
        }
        /^Requests\/sec:/ { rps = $2 }
        / requests in / { reqs = $1 }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { gsub(/,/, ""); sock = $4 + $6 + $8 + $10 }
        END { printf "%s %s %s %s %d %d\n", rps + 0, reqs + 0, p50 + 0, p99 + 0, non2xx, sock }
    '
}

# ---------------------------------------------------------------------------------------------
# Reporting.

# The lines both results files have under their introduction: when, the command, the machine.
run_header() {
    local cmd=$1 elapsed=$2
    echo "Started $(date -d "@$START_EPOCH" '+%F %T %Z'); took $((elapsed / 60)) min $((elapsed % 60)) s."
    echo
    echo "Command: \`$cmd\`"
    echo
    echo "$MACHINE_INFO"
    echo "- load average (1, 5, 15 min) at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
}
