#!/usr/bin/env bash
# Macro-benchmark: builds release binaries, starts `borealis scheduler` on a free loopback port,
# runs `borealis-loadgen` against it for $DURATION seconds (default 60) with its RSS watched,
# prints the loadgen's table, stops the scheduler and exits with the loadgen's status (0: the
# run verified; 1: it did not, and its figures are not valid; 2: it could not run).
#
#   scripts/bench.sh --agents 10000 --duration 20 [--json out.json] [any borealis-loadgen flag]
#
# Environment: SHARDS (scheduler shards, default 2), DURATION (default 60; a --duration flag
# wins), BOREALIS_LOG (the scheduler's log filter, default warn: info logs every job and agent),
# BENCH_NO_BUILD=1 (use the binaries already built), SCHEDULER_FLAGS (extra scheduler flags,
# e.g. --in-memory to measure without the write-ahead log).
set -euo pipefail
cd "$(dirname "$0")/.."

SHARDS=${SHARDS:-2}
DURATION=${DURATION:-60}
export BOREALIS_LOG=${BOREALIS_LOG:-warn}

if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    cargo build --release -p borealis -p borealis-loadgen
fi
target_dir=${CARGO_TARGET_DIR:-target}
scheduler_bin=$target_dir/release/borealis
loadgen_bin=$target_dir/release/borealis-loadgen

# Thousands of agent sockets on each side of loopback.
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d "${TMPDIR:-/tmp}/borealis-bench.XXXXXX")
log=$work/scheduler.log
scheduler_pid=

stop_scheduler() {
    if [[ -n $scheduler_pid ]] && kill -0 "$scheduler_pid" 2>/dev/null; then
        kill "$scheduler_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$scheduler_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$scheduler_pid" 2>/dev/null || true
        wait "$scheduler_pid" 2>/dev/null || true
    fi
    scheduler_pid=
}
trap stop_scheduler EXIT

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A port can be taken between the check and the bind: try a few.
for attempt in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 20000))
    port_in_use "$port" && continue
    "$scheduler_bin" scheduler --ip 127.0.0.1 --port "$port" --http-port 0 \
        --shards "$SHARDS" --data-dir "$work/data" ${SCHEDULER_FLAGS:-} >"$log" 2>&1 &
    scheduler_pid=$!
    for _ in $(seq 300); do
        kill -0 "$scheduler_pid" 2>/dev/null || break
        port_in_use "$port" && break
        sleep 0.1
    done
    if kill -0 "$scheduler_pid" 2>/dev/null && port_in_use "$port"; then
        break
    fi
    echo "bench: the scheduler did not start on port $port (attempt $attempt):" >&2
    tail -n 20 "$log" >&2 || true
    stop_scheduler
done
if [[ -z $scheduler_pid ]]; then
    echo "bench: could not start the scheduler" >&2
    exit 2
fi
echo "bench: scheduler pid $scheduler_pid on 127.0.0.1:$port, $SHARDS shards, log $log" >&2

extra=()
has_duration=
for arg in "$@"; do
    case $arg in
        --duration | --duration=*) has_duration=1 ;;
    esac
done
[[ -n $has_duration ]] || extra+=(--duration "$DURATION")

status=0
"$loadgen_bin" --scheduler "127.0.0.1:$port" --scheduler-pid "$scheduler_pid" \
    --scheduler-log "$log" "${extra[@]}" "$@" || status=$?

if ! kill -0 "$scheduler_pid" 2>/dev/null; then
    echo "bench: the scheduler DIED during the run; the end of its log:" >&2
    tail -n 40 "$log" >&2 || true
    [[ $status -ne 0 ]] || status=1
fi
stop_scheduler
exit "$status"
