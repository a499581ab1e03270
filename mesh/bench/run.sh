#!/usr/bin/env bash
# The mesh benchmark of issue 13 (by hand, not in CI). In one run on this machine, against the
# same echo/sink target (mesh/examples/bench_load.rs):
#   direct    client -> target
#   socat     client -> socat -> socat -> target: two plain-text relays, no TLS at all — the
#             floor of any pair of relaying processes on this machine (round trip, stream)
#   stunnel4  client -> stunnel (client mode) -> stunnel (server mode) -> target, mTLS 1.3
#   ringzero  client -> `ringzero-mesh` outbound -> `ringzero-mesh` inbound -> target
#             (`ringzero-mesh` is `ringzero mesh sidecar` linked alone; a pair run from the
#             multi-call `ringzero` binary, "ringzero (multi-call)", is measured idle only)
# Both pairs use the same CA and SVIDs (mesh/examples/bench_wl.rs, which also serves the
# sidecars' Workload API). Measured per repetition, setups alternating: 1 KiB request/response
# round trip (p50, p99), one-stream throughput one way (and the CPU time each proxy spent on
# it, which the machine's other load disturbs less than the rate), VmRSS (and RssAnon) of each
# proxy idle and with CONNS open connections. Prints the medians as a table, ratios against
# direct TCP.
#
#   mesh/bench/run.sh [REPS]        (default 3; env: N_RR, STREAM_BYTES, CONNS, PORT_BASE)
#
# Installs stunnel4 from the Debian archive if missing (needs root), builds the release
# binaries, and leaves the raw numbers in $RESULTS (default: a temp file, printed).
set -euo pipefail
cd "$(dirname "$0")/../.."

REPS=${1:-${REPS:-3}}
N_RR=${N_RR:-20000}
STREAM_BYTES=${STREAM_BYTES:-$((1024 * 1024 * 1024))}
CONNS=${CONNS:-1000}
PORT_BASE=${PORT_BASE:-21100} # below the ephemeral range: 1,000-connection rounds use many
TD=example.org

for tool in stunnel4 socat; do
    if ! command -v $tool >/dev/null; then
        apt-get install -y $tool || { apt-get update && apt-get install -y $tool; }
    fi
done
cargo build --release -p ringzero-cli --bin ringzero --bin ringzero-mesh
cargo build --release -p ringzero-mesh --example bench_wl --example bench_load
BIN=${CARGO_TARGET_DIR:-target}/release
RINGZERO=$BIN/ringzero
SIDECAR=$BIN/ringzero-mesh
LOAD=$BIN/examples/bench_load
WL=$BIN/examples/bench_wl

# Each proxy holds two descriptors per connection.
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((2 * CONNS + 100)) ]; then
    echo "open file limit $(ulimit -n) is too low for CONNS=$CONNS" >&2
    exit 1
fi

WORK=$(mktemp -d /tmp/meshbench.XXXXXX)
RESULTS=${RESULTS:-$WORK/results.txt}
PKI=$WORK/pki
BG=()
cleanup() {
    for p in "${BG[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

TARGET=127.0.0.1:$PORT_BASE
ST_SERVER=127.0.0.1:$((PORT_BASE + 1))
ST_CLIENT=127.0.0.1:$((PORT_BASE + 2))
RZ_INBOUND=127.0.0.1:$((PORT_BASE + 3))
RZ_OUTBOUND=127.0.0.1:$((PORT_BASE + 4))
MC_INBOUND=127.0.0.1:$((PORT_BASE + 5))
MC_OUTBOUND=127.0.0.1:$((PORT_BASE + 6))
SOCAT_IN=127.0.0.1:$((PORT_BASE + 7))
SOCAT_OUT=127.0.0.1:$((PORT_BASE + 8))

"$WL" "$PKI" >"$WORK/wl.log" 2>&1 &
BG+=($!)
"$LOAD" echo "$TARGET" >"$WORK/target.log" 2>&1 &
BG+=($!)
for _ in $(seq 100); do [ -S "$PKI/db.sock" ] && break; sleep 0.1; done
"$LOAD" wait "$TARGET"

stunnel_conf() { # NAME ACCEPT CONNECT SVID CLIENT
    cat >"$WORK/$1.conf" <<EOF
foreground = yes
pid =
syslog = no
debug = 3
output = $WORK/$1.log
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
[bench]
client = $5
accept = $2
connect = $3
cert = $PKI/$4.pem
key = $PKI/$4.key
CAfile = $PKI/ca.pem
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.3
EOF
}
stunnel_conf st-server "$ST_SERVER" "$TARGET" db no
stunnel_conf st-client "$ST_CLIENT" "$ST_SERVER" web yes

record() { # SETUP REP: prefixes KEY VALUE lines
    sed "s/^/$1 $2 /" | tee -a "$RESULTS"
}

BATCHES=${BATCHES:-4}
SETUPS=(direct socat stunnel4 ringzero)
declare -A ADDR=([direct]=$TARGET [socat]=$SOCAT_OUT [stunnel4]=$ST_CLIENT [ringzero]=$RZ_OUTBOUND)
declare -A PIDS

# One repetition: both pairs run at once, and the round trips and streams of the three setups
# alternate, so that the other load of the machine falls on all three alike.
measure() { # REP
    local rep=$1 setup batch
    for setup in stunnel4 ringzero ringzero-multicall; do
        "$LOAD" rss ${PIDS[$setup]} | record "$setup" "$rep"
    done
    stop ${PIDS[ringzero-multicall]}
    for batch in $(seq "$BATCHES"); do
        for setup in "${SETUPS[@]}"; do
            "$LOAD" rr "${ADDR[$setup]}" $((N_RR / BATCHES)) | record "$setup" "$rep"
        done
    done
    for setup in "${SETUPS[@]}"; do
        "$LOAD" stream "${ADDR[$setup]}" "$STREAM_BYTES" ${PIDS[$setup]:-} | record "$setup" "$rep"
    done
    for setup in stunnel4 ringzero; do
        "$LOAD" hold "${ADDR[$setup]}" "$CONNS" ${PIDS[$setup]} | record "$setup" "$rep"
    done
}

stop() { # PID...
    kill "$@" 2>/dev/null || true
    for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

wait_ready() { # LOG
    for _ in $(seq 200); do grep -q "mesh ready" "$1" && return 0; sleep 0.05; done
    echo "sidecar not ready, see $1" >&2
    cat "$1" >&2
    return 1
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "stunnel: $(stunnel4 -version 2>&1 | grep -m1 '^stunnel')"
echo "raw results: $RESULTS"
for rep in $(seq "$REPS"); do
    stunnel4 "$WORK/st-server.conf" 2>>"$WORK/st-server.log" &
    server=$!
    stunnel4 "$WORK/st-client.conf" 2>>"$WORK/st-client.log" &
    client=$!
    "$SIDECAR" --workload-api "unix://$PKI/db.sock" \
        --inbound "$RZ_INBOUND=$TARGET" --allow "spiffe://$TD/ns/bench/web" \
        2>"$WORK/rz-inbound.log" &
    inbound=$!
    "$SIDECAR" --workload-api "unix://$PKI/web.sock" \
        --outbound "$RZ_OUTBOUND=$RZ_INBOUND@spiffe://$TD/ns/bench/db" \
        2>"$WORK/rz-outbound.log" &
    outbound=$!
    # The same pair from the multi-call binary, on other ports, for its idle memory.
    "$RINGZERO" mesh sidecar --workload-api "unix://$PKI/db.sock" \
        --inbound "$MC_INBOUND=$TARGET" --allow "spiffe://$TD/ns/bench/web" \
        2>"$WORK/mc-inbound.log" &
    mc_inbound=$!
    "$RINGZERO" mesh sidecar --workload-api "unix://$PKI/web.sock" \
        --outbound "$MC_OUTBOUND=$MC_INBOUND@spiffe://$TD/ns/bench/db" \
        2>"$WORK/mc-outbound.log" &
    mc_outbound=$!
    # socat forks a process per connection: round trips and the stream only.
    socat "TCP-LISTEN:${SOCAT_IN##*:},bind=127.0.0.1,reuseaddr,fork,nodelay" "TCP:$TARGET,nodelay" &
    socat_in=$!
    socat "TCP-LISTEN:${SOCAT_OUT##*:},bind=127.0.0.1,reuseaddr,fork,nodelay" "TCP:$SOCAT_IN,nodelay" &
    socat_out=$!
    PIDS=([stunnel4]="$client $server" [ringzero]="$outbound $inbound"
        [ringzero-multicall]="$mc_outbound $mc_inbound")
    "$LOAD" wait "$SOCAT_IN"
    "$LOAD" wait "$SOCAT_OUT"
    "$LOAD" wait "$ST_SERVER"
    "$LOAD" wait "$ST_CLIENT"
    for side in rz-inbound rz-outbound mc-inbound mc-outbound; do
        wait_ready "$WORK/$side.log"
    done
    sleep 0.5
    measure "$rep"
    stop "$client" "$server" "$outbound" "$inbound" "$socat_in" "$socat_out"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "$REPS repetitions, medians (RR: of $BATCHES batches per repetition); RR: $N_RR round trips"
echo "of 1 KiB per repetition; stream: $STREAM_BYTES bytes one way; CPU: the proxy processes' time"
echo "on CPU during the stream; memory: of the client-side / server-side proxy, idle and with"
echo "$CONNS connections open (each carried one echoed byte end to end)."
"$LOAD" table "$RESULTS" "$CONNS"
