#!/usr/bin/env bash
# The scheduler benchmark of issue 14 (by hand, not in CI): a one-node authority, three agents
# (each its own data dir and Workload API socket) and `ringzero sched run` with a
# scheduler-role profile, all real processes on this machine, on loopback. Per repetition, on
# a fresh cluster:
#
#   1. svid     `job run` of a count-100 job at T0; each task loops on `ringzero agent fetch`
#               (SPIFFE_ENDPOINT_SOCKET set by its agent) until it gets the job's SPIFFE ID,
#               then prints `date +%s%N` and the ID to its stdout.log and sleeps. Per-task
#               latency = that timestamp - T0 (p50, p99, max); also when `job status --json`
#               first showed all 100 allocations placed, and all 100 running.
#   2. overhead the agents' VmRSS and CPU time (utime+stime) over OVERHEAD_SECS, idle (before
#               the job) and with the job's 100 tasks running (all sleeping by then).
#   3. place    a fresh cluster: 10 jobs x 100 submitted with the scheduler stopped, then
#               `sched run` started; time until its first pass has written 1,000 placements
#               (from its JSON log: lease acquired -> plan written, and process start ->
#               plan written); then checks that `job status` of the ten jobs shows 1,000.
#
#   sched/bench/run.sh [REPS]     (default 3; env: OVERHEAD_SECS (30), INTERVAL (1s, the
#                                  scheduler's pass interval), PORT_BASE, RINGZERO_BIN (skip
#                                  the build, use this binary), PERF=1 records
#                                  in rep 1 `perf record -a -g` of the machine over phase 1
#                                  and `perf record -g` of the authority over the daemon's
#                                  start and first pass in phase 3, to /tmp/sched-bench-*.data)
#
# Run as root (tasks run as uid 0). Prints the medians as a markdown table; raw numbers in
# $RESULTS (default: a file in the temp dir, printed; the temp dir is removed unless KEEP=1).
set -euo pipefail
cd "$(dirname "$0")/../.."

REPS=${1:-${REPS:-3}}
OVERHEAD_SECS=${OVERHEAD_SECS:-30}
INTERVAL=${INTERVAL:-1s}
PORT_BASE=${PORT_BASE:-23400}
COUNT=${COUNT:-100} # tasks of the phase-1 job
MARK=$((864000 + $$ % 1000)) # the tasks' final `sleep MARK`, to find them
TD=bench.ringzero.internal
AGENTS=(n1 n2 n3)

if [ -n "${RINGZERO_BIN:-}" ]; then # a binary built before (e.g. while the tree does not build)
    RINGZERO=$(realpath "$RINGZERO_BIN")
else
    cargo build --release -p ringzero-cli --bin ringzero
    RINGZERO=$(realpath "${CARGO_TARGET_DIR:-target}/release/ringzero")
fi
unset RINGZERO_PROFILE RINGZERO_AUTHORITY RINGZERO_TOKEN

WORK=$(mktemp -d /tmp/schedbench.XXXXXX)
chmod 700 "$WORK"
RESULTS=${RESULTS:-$WORK/results.txt}
BG=()
cleanup() {
    local p
    for p in "${BG[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    kill_tasks
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

now_ns() { date +%s%N; }
ms_since() { echo $((($(now_ns) - $1) / 1000000)); }
record() { # REP KEY VALUE
    echo "$1 $2 $3" | tee -a "$RESULTS"
}
stop() { # PID...
    kill "$@" 2>/dev/null || true
    for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

# ---- a cluster ----------------------------------------------------------------------------
# Sets DIR, PROFILE, SCHED_PROFILE, AUTH_PID, AGENT_PID[name], ADDR.
declare -A AGENT_PID
start_cluster() { # NAME PORT
    DIR=$WORK/$1
    mkdir -p "$DIR"
    ADDR=127.0.0.1:$2
    PROFILE=$("$RINGZERO" authority bootstrap --trust-domain $TD --data-dir "$DIR/auth" \
        --listen "$ADDR" 2>"$DIR/bootstrap.log" | tail -1)
    "$RINGZERO" authority run --data-dir "$DIR/auth" 2>"$DIR/auth.log" &
    AUTH_PID=$!
    BG+=("$AUTH_PID")
    for _ in $(seq 200); do
        "$RINGZERO" --profile "$PROFILE" authority status >/dev/null 2>&1 && break
        sleep 0.1
    done
    SCHED_PROFILE=$DIR/sched1.profile
    "$RINGZERO" --profile "$PROFILE" user add sched1 --role scheduler --out "$SCHED_PROFILE" \
        >/dev/null
    local n
    for n in "${AGENTS[@]}"; do
        "$RINGZERO" --profile "$PROFILE" node token --name "$n" --ttl 10m | tail -1 \
            >"$DIR/$n.token"
        "$RINGZERO" agent run --authority "$ADDR" --join-token "@$DIR/$n.token" \
            --data-dir "$DIR/agent-$n" --socket "$DIR/$n.sock" 2>"$DIR/agent-$n.log" &
        AGENT_PID[$n]=$!
        BG+=("$!")
    done
    for n in "${AGENTS[@]}"; do
        for _ in $(seq 300); do grep -q "agent ready" "$DIR/agent-$n.log" && break; sleep 0.1; done
        grep -q "agent ready" "$DIR/agent-$n.log" || {
            echo "agent $n not ready:" >&2
            cat "$DIR/agent-$n.log" >&2
            exit 1
        }
    done
}
# The tasks run in their own process groups and outlive their agent (a new agent re-adopts
# them): end them by pid — the agents' children, and any this run's marker names.
kill_tasks() {
    local p pids=()
    for p in "${AGENT_PID[@]}"; do pids+=($(pgrep -P "$p" || true)); done
    pids+=($(pgrep -fx "sleep $MARK" || true))
    [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null || true
}
stop_cluster() {
    local p tasks=()
    for p in "${AGENT_PID[@]}"; do tasks+=($(pgrep -P "$p" || true)); done
    stop "${AGENT_PID[@]}" "$AUTH_PID"
    [ ${#tasks[@]} -gt 0 ] && kill "${tasks[@]}" 2>/dev/null || true
    kill_tasks
    AGENT_PID=()
}
rz() { "$RINGZERO" --profile "$PROFILE" "$@"; }
start_sched() { # LOG
    "$RINGZERO" --profile "$SCHED_PROFILE" --log-json sched run --interval "$INTERVAL" \
        --name bench 2>"$1" &
    SCHED_PID=$!
    BG+=("$SCHED_PID")
}

# ---- /proc accounting ---------------------------------------------------------------------
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)
overhead() { # REP LABEL: mean RSS per agent (MB) and CPU per agent (ms per s) over OVERHEAD_SECS
    local n c0=0 c1=0 rss=0
    for n in "${AGENTS[@]}"; do c0=$((c0 + $(cpu_ticks "${AGENT_PID[$n]}"))); done
    sleep "$OVERHEAD_SECS"
    for n in "${AGENTS[@]}"; do
        c1=$((c1 + $(cpu_ticks "${AGENT_PID[$n]}")))
        rss=$((rss + $(rss_kb "${AGENT_PID[$n]}")))
    done
    record "$1" "agent_rss_mb_$2" "$(echo "scale=1; $rss / ${#AGENTS[@]} / 1024" | bc)"
    record "$1" "agent_cpu_ms_per_s_$2" \
        "$(echo "scale=2; ($c1 - $c0) * 1000 / $TCK / $OVERHEAD_SECS / ${#AGENTS[@]}" | bc)"
}

job_file() { # NAME COUNT SCRIPT
    local script=${3//\\/\\\\}
    script=${script//\"/\\\"}
    cat <<EOF
namespace = "bench"
name = "$1"
command = "/bin/sh"
args = ["-c", "$script"]
env = { PATH = "/usr/bin:/bin" }
uid = 0
gid = 0
count = $2
spiffe_id = "spiffe://$TD/ns/bench/$1"
EOF
}

pct() { # P (0-100) of the numbers on stdin, nearest rank
    sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int((p*NR+99)/100); if(i<1)i=1; print a[i]}'
}

# ---- phase 1 (+2): 100 tasks to their SVIDs ---------------------------------------------------
phase_svid() { # REP
    local rep=$1 id=spiffe://$TD/ns/bench/web
    start_cluster "svid-$rep" $((PORT_BASE + rep))
    start_sched "$DIR/sched.log"
    for _ in $(seq 200); do grep -q "lease acquired" "$DIR/sched.log" && break; sleep 0.1; done
    overhead "$rep" idle
    local script="until $RINGZERO agent fetch --timeout 2s 2>/dev/null | grep -q '$id\$'; do sleep 0.1; done; echo \$(date +%s%N) $id; exec sleep $MARK"
    job_file web $COUNT "$script" >"$DIR/web.toml"
    local t0 t0ms submitted placed=0 running=0 st p r
    # The daemon passes every INTERVAL: submit at a random point of its cycle (a fixed sleep
    # above would land every repetition at the same point).
    sleep "$(awk -v s="$RANDOM" 'BEGIN {print (s % 1000) / 1000}')"
    local perf_pid=
    if [ "${PERF:-0}" = 1 ] && [ "$rep" = 1 ]; then # the whole machine, until all are running
        perf record -a -g -F 999 -o "$WORK/perf-phase1.data" 2>"$WORK/perf1.log" &
        perf_pid=$!
        sleep 1
    fi
    t0=$(now_ns)
    t0ms=$((t0 / 1000000))
    rz job run "$DIR/web.toml" >/dev/null
    submitted=$(ms_since "$t0")
    while :; do
        st=$(rz job status bench/web --json)
        p=$(jq '[.allocs[] | select(.desired == "run")] | length' <<<"$st")
        r=$(jq '[.allocs[] | select(.state == "running")] | length' <<<"$st")
        [ "$placed" = 0 ] && [ "$p" -ge $COUNT ] && placed=$(ms_since "$t0")
        [ "$running" = 0 ] && [ "$r" -ge $COUNT ] && running=$(ms_since "$t0") && break
        [ $((($(now_ns) - t0) / 1000000000)) -gt 300 ] && { echo "not all running: $r" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$perf_pid" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
    # Every task's stdout.log: "<ns> <id>", against T0 and against its allocation's creation
    # (the authority's commit time, same clock).
    local lat=$DIR/latency.txt since=$DIR/since_placed.txt n f a created
    for _ in $(seq 600); do
        : >"$lat"
        : >"$since"
        for n in "${AGENTS[@]}"; do
            for f in "$DIR"/agent-"$n"/tasks/*/stdout.log; do
                [ -f "$f" ] || continue
                a=$(basename "$(dirname "$f")")
                created=$(jq --arg a "$a" '.allocs[] | select(.id == $a) | .created_ms' <<<"$st")
                awk -v t0="$t0" -v c="$created" -v id="$id" -v lat="$lat" -v since="$since" \
                    '$2 == id {print int(($1 - t0) / 1e6) >> lat; print int($1 / 1e6 - c) >> since; exit}' "$f"
            done
        done
        [ "$(wc -l <"$lat")" -ge $COUNT ] && break
        sleep 0.5
    done
    [ "$(wc -l <"$lat")" -ge $COUNT ] || { echo "only $(wc -l <"$lat") tasks got $id" >&2; exit 1; }
    record "$rep" submit_ms "$submitted"
    record "$rep" placed_first_ms $(($(jq '[.allocs[].created_ms] | min' <<<"$st") - t0ms))
    record "$rep" placed_last_ms $(($(jq '[.allocs[].created_ms] | max' <<<"$st") - t0ms))
    record "$rep" running_last_ms $(($(jq '[.allocs[] | select(.state == "running") | .updated_ms] | max' <<<"$st") - t0ms))
    record "$rep" all_placed_seen_ms "$placed"
    record "$rep" all_running_seen_ms "$running"
    record "$rep" svid_p50_ms "$(pct 50 <"$lat")"
    record "$rep" svid_p99_ms "$(pct 99 <"$lat")"
    record "$rep" svid_max_ms "$(pct 100 <"$lat")"
    record "$rep" placed_to_svid_p50_ms "$(pct 50 <"$since")"
    record "$rep" placed_to_svid_p99_ms "$(pct 99 <"$since")"
    for n in "${AGENTS[@]}"; do
        record "$rep" "tasks_on_$n" "$(ls "$DIR"/agent-"$n"/tasks/*/stdout.log | wc -l)"
    done
    overhead "$rep" 100tasks
    stop "$SCHED_PID"
    stop_cluster
}

# ---- phase 3: 1,000 queued placements ------------------------------------------------------
log_ms() { # LOG PATTERN: the timestamp (ms since the epoch) of the first JSON log line matching
    grep -m1 "$2" "$1" | jq -r '.timestamp' | xargs -I{} date -d {} +%s%3N
}
phase_place() { # REP
    local rep=$1 j t0 total st
    start_cluster "place-$rep" $((PORT_BASE + 50 + rep))
    for j in $(seq 10); do
        job_file "q$j" 100 "exec sleep $MARK" >"$DIR/q$j.toml"
        rz job run "$DIR/q$j.toml" >/dev/null
    done
    local perf_pid=
    if [ "${PERF:-0}" = 1 ] && [ "$rep" = 1 ]; then
        perf record -F 20000 -g -o "$WORK/perf-authority.data" -p "$AUTH_PID" 2>"$WORK/perf.log" &
        perf_pid=$!
        sleep 1
    fi
    t0=$(now_ns)
    start_sched "$DIR/sched.log"
    # The profile (if any) covers the daemon's start and its first pass only.
    for _ in $(seq 3000); do grep -q "plan written" "$DIR/sched.log" && break; sleep 0.01; done
    [ -n "$perf_pid" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
    while :; do
        total=0
        for j in $(seq 10); do
            st=$(rz job status "bench/q$j" --json)
            total=$((total + $(jq '[.allocs[] | select(.desired == "run")] | length' <<<"$st")))
        done
        [ "$total" -ge 1000 ] && break
        [ $((($(now_ns) - t0) / 1000000000)) -gt 300 ] && { echo "only $total placed" >&2; exit 1; }
        sleep 0.05
    done
    local acq wr
    acq=$(log_ms "$DIR/sched.log" "lease acquired")
    wr=$(log_ms "$DIR/sched.log" "plan written")
    record "$rep" place1000_start_to_written_ms $((wr - t0 / 1000000))
    record "$rep" place1000_pass_ms $((wr - acq))
    record "$rep" place1000_per_s $((1000 * 1000 / (wr - acq > 0 ? wr - acq : 1)))
    grep "plan written" "$DIR/sched.log" | jq -c '.fields' | head -3 >&2
    stop "$SCHED_PID"
    stop_cluster
}

median() { # KEY
    local v
    v=$(awk -v k="$1" '$2 == k {print $3}' "$RESULTS" | sort -n)
    [ -z "$v" ] && { echo "-"; return; }
    awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}' <<<"$v"
}
all() { awk -v k="$1" '$2 == k {printf "%s%s", sep, $3; sep=", "}' "$RESULTS"; }

echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/^Mem/ {print $2}') GB"
if [ -n "${RINGZERO_BIN:-}" ]; then
    echo "binary: $RINGZERO (given; built $(date -u -r "$RINGZERO" +%Y-%m-%dT%H:%MZ))"
else
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' + uncommitted changes in the working tree')"
fi
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "raw results: $RESULTS"
for rep in $(seq "$REPS"); do
    phase_svid "$rep"
    phase_place "$rep"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
for f in perf-authority perf-phase1; do
    [ -f "$WORK/$f.data" ] && cp "$WORK/$f.data" "/tmp/sched-bench-$f.data" \
        && echo "perf data: /tmp/sched-bench-$f.data"
done

echo
echo "Medians of $REPS repetitions (each value: all repetitions)."
echo
echo "| figure | median | repetitions |"
echo "|---|---|---|"
row() { echo "| $1 | $(median "$2") $3 | $(all "$2") |"; }
row "job run -> task holds its SVID, p50 (100 tasks, 3 agents)" svid_p50_ms ms
row "job run -> task holds its SVID, p99" svid_p99_ms ms
row "job run -> task holds its SVID, last task" svid_max_ms ms
row "allocation committed -> its task holds its SVID, p50" placed_to_svid_p50_ms ms
row "allocation committed -> its task holds its SVID, p99" placed_to_svid_p99_ms ms
row "job run CLI returns (submit committed)" submit_ms ms
row "job run -> first allocation committed (created_ms)" placed_first_ms ms
row "job run -> last allocation committed" placed_last_ms ms
row "job run -> last allocation reported running (updated_ms)" running_last_ms ms
row "job run -> all 100 placed, seen by polling job status" all_placed_seen_ms ms
row "job run -> all 100 running, seen by polling job status" all_running_seen_ms ms
row "1,000 queued placements: sched pass, lease acquired -> plan written" place1000_pass_ms ms
row "  = placements/s through the daemon" place1000_per_s /s
row "1,000 queued placements: sched process start -> plan written" place1000_start_to_written_ms ms
row "agent VmRSS, idle" agent_rss_mb_idle MB
row "agent VmRSS, ~33 running tasks each (100 on 3)" agent_rss_mb_100tasks MB
row "agent CPU, idle" agent_cpu_ms_per_s_idle "ms/s"
row "agent CPU, ~33 running tasks each" agent_cpu_ms_per_s_100tasks "ms/s"
