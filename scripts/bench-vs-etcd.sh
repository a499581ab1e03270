#!/usr/bin/env bash
# ringzero vs etcd, writes on this machine, measured in one run (not run in CI).
#
# Starts a 3-process etcd cluster and a 3-process ringzero authority cluster on loopback, each
# member with its own data directory (default durable settings: etcd fsyncs its WAL, ringzero's
# redb commits durably), and drives both with the same load shape — closed-loop clients, each
# with its own connection to the leader, unique keys, calls back to back, a warmup then a
# measured window — at 1, 16 and 64 clients. In order: etcd, ringzero, etcd again; both clusters
# stay up (idle) during the other's runs.
#
#   ringzero: `ringzero bench write` — CreateJoinToken (an agent join token of 1 s): mTLS,
#             capability check on the leader, an audit record, Raft-replicated, durable.
#   etcd:     `etcd-put` (tests/src/bin/etcd-put.rs) — KV/Put, 200-byte values, plain gRPC,
#             to the leader. Same driver and statistics (ringzero_telemetry::load).
#
# The table quotes etcd's two runs as min–max and ringzero's rate against their mean
# (ratio = ringzero / mean(etcd run 1, etcd run 2)). p50/p99 are in ms; etcd's latencies are
# the mean of its two runs. Absolute figures move from machine to machine and day to day: the
# ratios measured in one run are what count.
#
# With RZ_BEFORE=/path/to/an/older/ringzero, a second ringzero cluster runs that binary (the
# load generator stays the current `ringzero bench write`), between the two etcd runs, and the
# table adds its figures and the ratio current/before: a before/after of a change in one run.
#
# Usage: scripts/bench-vs-etcd.sh [-d SECONDS] [-w SECONDS] [-c "1 16 64"] [-k]
#   -d  measured seconds per point (env BENCH_SECS, default 10)
#   -w  warmup seconds per point, not counted (env BENCH_WARMUP, default 1)
#   -c  client counts (env BENCH_CLIENTS, default "1 16 64")
#   -k  keep the work directory (data, logs, JSON of every point) instead of deleting it
# Env: CARGO_TARGET_DIR (where the release build goes), BENCH_DIR (parent of the work
# directory, default $TMPDIR or /tmp: put it on the disk you want to measure).
set -euo pipefail

SECS=${BENCH_SECS:-10}
WARMUP=${BENCH_WARMUP:-1}
CLIENTS=${BENCH_CLIENTS:-"1 16 64"}
KEEP=0
while getopts "d:w:c:kh" opt; do
    case $opt in
        d) SECS=$OPTARG ;;
        w) WARMUP=$OPTARG ;;
        c) CLIENTS=$OPTARG ;;
        k) KEEP=1 ;;
        *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
log() { echo "bench-vs-etcd: $*" >&2; }

# --- tools ---------------------------------------------------------------------------------
need_pkg() { # COMMAND PACKAGE
    command -v "$1" >/dev/null && return 0
    log "installing $2 from the package registry"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get install -y "$2" >&2 || { $sudo apt-get update >&2 && $sudo apt-get install -y "$2" >&2; }
}
need_pkg etcd etcd-server
need_pkg etcdctl etcd-client
need_pkg jq jq

log "building the release binaries (ringzero, etcd-put) in $TARGET"
(cd "$ROOT" && cargo build --release --quiet -p ringzero-cli --bin ringzero \
    && cargo build --release --quiet -p ringzero-tests --bin etcd-put)
RZ=$TARGET/release/ringzero
EP=$TARGET/release/etcd-put

# --- work directory and cleanup -----------------------------------------------------------
WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/bench-vs-etcd.XXXXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$WORK/results"

# Twelve consecutive free loopback ports.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
BASE=""
for _ in $(seq 50); do
    b=$((20000 + RANDOM % 20000))
    ok=1
    for i in $(seq 0 11); do if port_in_use $((b + i)); then ok=0; break; fi; done
    if [ $ok = 1 ]; then BASE=$b; break; fi
done
[ -n "$BASE" ] || { log "no free ports"; exit 1; }

wait_for() { # WHAT SECONDS COMMAND…
    local what=$1 secs=$2 i
    shift 2
    for i in $(seq $((secs * 10))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    log "timed out waiting for $what (logs in $WORK)"
    KEEP=1
    exit 1
}

# --- etcd: 3 members ----------------------------------------------------------------------
E_CLIENT=() E_PEER=()
for i in 1 2 3; do
    E_CLIENT+=("127.0.0.1:$((BASE + i - 1))")
    E_PEER+=("127.0.0.1:$((BASE + 2 + i))")
done
INITIAL="e1=http://${E_PEER[0]},e2=http://${E_PEER[1]},e3=http://${E_PEER[2]}"
for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$WORK/etcd$i" \
        --listen-client-urls "http://${E_CLIENT[$((i - 1))]}" \
        --advertise-client-urls "http://${E_CLIENT[$((i - 1))]}" \
        --listen-peer-urls "http://${E_PEER[$((i - 1))]}" \
        --initial-advertise-peer-urls "http://${E_PEER[$((i - 1))]}" \
        --initial-cluster "$INITIAL" --initial-cluster-state new \
        --initial-cluster-token "bench-$$" >"$WORK/etcd$i.log" 2>&1 &
    PIDS+=($!)
done
ETCD_ENDPOINTS=$(IFS=,; echo "${E_CLIENT[*]}")
wait_for "the etcd cluster" 30 env ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint health
log "etcd $(etcd --version | head -1 | awk '{print $3}') up on $ETCD_ENDPOINTS"

# --- ringzero: 3 authority nodes (and 3 more of RZ_BEFORE) ---------------------------------
has_voters() { [ "$("$RZ" authority members --json 2>/dev/null | grep -o '"voter"' | wc -l)" -ge "$1" ]; }
start_ringzero() { # NAME BINARY FIRST_PORT; prints the admin profile's path
    local name=$1 bin=$2 port=$3 n profile
    local r=("127.0.0.1:$port" "127.0.0.1:$((port + 1))" "127.0.0.1:$((port + 2))")
    profile=$("$bin" authority bootstrap --trust-domain bench.test --data-dir "$WORK/$name-1" \
        --listen "${r[0]}" 2>"$WORK/$name-bootstrap.log")
    "$bin" authority run --data-dir "$WORK/$name-1" >"$WORK/$name-1.log" 2>&1 &
    PIDS+=($!)
    export RINGZERO_PROFILE=$profile
    wait_for "$name node 1" 30 "$RZ" authority status
    for n in 2 3; do
        "$RZ" authority join-token --ttl 10m 2>/dev/null | tail -1 >"$WORK/$name-join$n.token"
        "$bin" authority join --peer "${r[0]}" --token "@$WORK/$name-join$n.token" \
            --data-dir "$WORK/$name-$n" --listen "${r[$((n - 1))]}" >"$WORK/$name-$n.log" 2>&1 &
        PIDS+=($!)
        wait_for "$name node $n to join" 60 has_voters "$n"
    done
    log "$name up on ${r[*]} ($bin)"
    PROFILE_OUT=$profile
}
start_ringzero rz "$RZ" $((BASE + 6))
RZ_PROFILE=$PROFILE_OUT
RUNS="etcd1 ringzero etcd2"
if [ -n "${RZ_BEFORE:-}" ]; then
    start_ringzero before "$RZ_BEFORE" $((BASE + 9))
    BEFORE_PROFILE=$PROFILE_OUT
    RUNS="etcd1 ringzero before etcd2"
fi

# --- the runs -----------------------------------------------------------------------------
point() { # NAME CLIENTS
    local out="$WORK/results/$1-$2.json"
    log "$1, $2 clients, ${WARMUP}s warmup + ${SECS}s"
    case $1 in
        etcd1 | etcd2)
            "$EP" --endpoints "$ETCD_ENDPOINTS" --clients "$2" --duration "${SECS}s" \
                --warmup "${WARMUP}s" --value-size 200 --json >"$out" 2>>"$WORK/etcd-put.log" ;;
        ringzero | before)
            local profile=$RZ_PROFILE
            [ "$1" = before ] && profile=$BEFORE_PROFILE
            RINGZERO_PROFILE=$profile "$RZ" bench write --clients "$2" --duration "${SECS}s" \
                --warmup "${WARMUP}s" --json >"$out" 2>>"$WORK/bench-write.log" ;;
    esac
}
for run in $RUNS; do
    for c in $CLIENTS; do point "$run" "$c"; done
done

# --- the table ----------------------------------------------------------------------------
echo
echo "ringzero vs etcd: writes on $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "data on $(stat -f -c %T "$WORK"); ${WARMUP}s warmup + ${SECS}s per point; order: ${RUNS// /, }"
echo "etcd $(etcd --version | head -1 | awk '{print $3}'): KV/Put, 200-byte values, to the leader (min–max of 2 runs; p50/p99: their mean)"
echo "ringzero: CreateJoinToken (mTLS, capability check, audit record), to the leader"
echo
printf '%-8s | %-34s | %-30s | %-18s | %s\n' clients "etcd writes/s (p50, p99 ms)" \
    "ringzero writes/s (p50, p99 ms)" "ratio rz/etcd" "ringzero CPU µs/write: n1 n2 n3, client"
for c in $CLIENTS; do
    jq -rn --argjson c "$c" \
        --slurpfile e1 "$WORK/results/etcd1-$c.json" \
        --slurpfile e2 "$WORK/results/etcd2-$c.json" \
        --slurpfile r "$WORK/results/ringzero-$c.json" '
        def f0: . * 1 | round;
        def f2: (. * 100 | round) / 100;
        def us: if . == null then "n/a" else (round | tostring) end;
        ($e1[0].writes_per_second) as $a | ($e2[0].writes_per_second) as $b |
        ([$a, $b] | min) as $lo | ([$a, $b] | max) as $hi | (($a + $b) / 2) as $mean |
        (($e1[0].latency_ms.p50 + $e2[0].latency_ms.p50) / 2) as $ep50 |
        (($e1[0].latency_ms.p99 + $e2[0].latency_ms.p99) / 2) as $ep99 |
        $r[0] as $z |
        [ ($c | tostring),
          "\($lo | f0)-\($hi | f0) (\($ep50 | f2), \($ep99 | f2))",
          "\($z.writes_per_second | f0) (\($z.latency_ms.p50 | f2), \($z.latency_ms.p99 | f2))",
          "\($z.writes_per_second / $mean | f2)x (\($z.writes_per_second / $hi | f2)-\($z.writes_per_second / $lo | f2))",
          (([$z.cpu.nodes[].cpu_us_per_write | us] | join(" ")) + ", \($z.cpu.bench.cpu_us_per_write | us)")
        ] | "\(.[0])|\(.[1])|\(.[2])|\(.[3])|\(.[4])"' |
        awk -F'|' '{ printf "%-8s | %-34s | %-30s | %-18s | %s\n", $1, $2, $3, $4, $5 }'
done
if [ -n "${RZ_BEFORE:-}" ]; then
    echo
    echo "before: $RZ_BEFORE, run between the same two etcd runs"
    printf '%-8s | %-30s | %-18s | %s\n' clients "before writes/s (p50, p99 ms)" \
        "ratio before/etcd" "ratio ringzero/before"
    for c in $CLIENTS; do
        jq -rn --argjson c "$c" \
            --slurpfile e1 "$WORK/results/etcd1-$c.json" \
            --slurpfile e2 "$WORK/results/etcd2-$c.json" \
            --slurpfile r "$WORK/results/ringzero-$c.json" \
            --slurpfile b "$WORK/results/before-$c.json" '
            def f0: . * 1 | round;
            def f2: (. * 100 | round) / 100;
            (($e1[0].writes_per_second + $e2[0].writes_per_second) / 2) as $mean |
            $b[0] as $z |
            [ ($c | tostring),
              "\($z.writes_per_second | f0) (\($z.latency_ms.p50 | f2), \($z.latency_ms.p99 | f2))",
              "\($z.writes_per_second / $mean | f2)x",
              "\($r[0].writes_per_second / $z.writes_per_second | f2)x"
            ] | "\(.[0])|\(.[1])|\(.[2])|\(.[3])"' |
            awk -F'|' '{ printf "%-8s | %-30s | %-18s | %s\n", $1, $2, $3, $4 }'
    done
fi
errors=$(cat "$WORK"/results/*.json | jq -s '[.[].errors.total] | add')
echo
echo "errors (all points): $errors; ringzero node CPU is user+sys of each authority process (from /proc) over the window"
