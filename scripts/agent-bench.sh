#!/usr/bin/env bash
# Real tasks through one agent: how fast one real `borealis agent` starts, runs and reports
# tiny tasks, against how fast this machine can start processes at all.
#
# Builds release binaries (`borealis` and the `spawn_limit` bench), then for each run starts a
# fresh `borealis scheduler` (loopback, a free port, a temp data dir) and ONE real agent offering
# enough for every instance at once (or for --concurrency K of them), waits until a 1-instance warm-up job has FINISHED (the agent
# is registered and runs tasks), submits one job of N instances of `true` and measures the wall
# time from `job create` to the last FINISHED (polling `job list --json`, one line of counts,
# every 0.5 s until all N are FINISHED; the end is then read from the tasks' own FINISHED times
# in `job status --json`, so the polling neither sets the precision nor, being rare, takes
# much of the machine the agent runs on; a scheduler without task events in `job status
# --json`, an older build, is timed by the poll, up to 0.5 s late).
# The scheduler retries unplaced tasks after 10ms, backing off to at most 100ms (not Aurora's
# 1s to 1min: with --concurrency below N, that backoff, not the agent, would set the pace).
# After each run it runs `spawn_limit` (N posix_spawns of /bin/true, one thread per core) and
# prints the agent's tasks/s as a fraction of the machine's processes/s.
#
#   scripts/agent-bench.sh [--instances N] [--runs R] [--isolation MODE] [--agent-bin PATH]
#                          [--scheduler-bin PATH] [--concurrency K] [--task-cpu C]
#                          [--task-ram MiB] [--timeout SECS] [--no-build]
#
# --instances N     instances of the job (default 10000)
# --runs R          runs, each with a fresh scheduler and agent (default 3)
# --isolation MODE  passed to the agent as `--isolation MODE` (cgroups|none|auto); without it
#                   the agent gets no isolation flag (its default; agents from before issue 11
#                   have no such flag)
# --agent-bin PATH  the `borealis` binary that runs the agent (e.g. an older build, for
#                   before/after); default: this tree's release build
# --scheduler-bin PATH  the `borealis` binary of the scheduler and the client commands
#                   (default: this tree's release build)
# --concurrency K   the agent offers room for K tasks at once (default: N, every instance at
#                   once); the scheduler places more as tasks finish
# --task-cpu C      cpu of each task (default 0.1: a cgroup cpu quota far below a process
#                   start's cost would measure throttling, not the agent)
# --task-ram MiB    ram of each task in MiB (default 16)
# --timeout SECS    longest a run may take to finish its job (default 600)
# --no-build        use the binaries already built
#
# The job's role is `nobody`: a root agent with its default `--executor-user root` runs each
# task as the role's user (issue 11), and `nobody` exists everywhere; older agents run tasks as
# themselves. Environment: BOREALIS_LOG (log filter of the scheduler and the agent, default
# warn), CARGO_TARGET_DIR. Exits 0 when every run finished its job, 1 when one did not, 2 when
# the bench could not run.
set -euo pipefail
cd "$(dirname "$0")/.."

instances=10000
runs=3
isolation=
agent_bin=
scheduler_bin=
task_cpu=0.1
task_ram_mib=16
timeout_secs=600
build=1
concurrency=

die() { echo "agent-bench: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --instances) instances=${2:?}; shift 2 ;;
        --runs) runs=${2:?}; shift 2 ;;
        --isolation) isolation=${2:?}; shift 2 ;;
        --agent-bin) agent_bin=${2:?}; shift 2 ;;
        --scheduler-bin) scheduler_bin=${2:?}; shift 2 ;;
        --concurrency) concurrency=${2:?}; shift 2 ;;
        --task-cpu) task_cpu=${2:?}; shift 2 ;;
        --task-ram) task_ram_mib=${2:?}; shift 2 ;;
        --timeout) timeout_secs=${2:?}; shift 2 ;;
        --no-build) build=; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $instances =~ ^[1-9][0-9]*$ ]] || die "--instances must be a positive integer"
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
[[ $timeout_secs =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive integer"
[[ $task_ram_mib =~ ^[1-9][0-9]*$ ]] || die "--task-ram must be a positive integer (MiB)"
concurrency=${concurrency:-$instances}
[[ $concurrency =~ ^[1-9][0-9]*$ ]] || die "--concurrency must be a positive integer"

export BOREALIS_LOG=${BOREALIS_LOG:-warn}
export NO_COLOR=1

if [[ -n $build ]]; then
    cargo build --release -p borealis -p borealis-bench --bin borealis --bin spawn_limit
fi
target_dir=${CARGO_TARGET_DIR:-target}
release_bin=$target_dir/release/borealis
scheduler_bin=${scheduler_bin:-$release_bin}
agent_bin=${agent_bin:-$release_bin}
spawn_limit_bin=$target_dir/release/spawn_limit
for bin in "$scheduler_bin" "$agent_bin" "$spawn_limit_bin"; do
    [[ -x $bin ]] || die "$bin is missing: build it (or drop --no-build)"
done
cores=$(nproc)

# What the agent offers: room for `concurrency` tasks at once (default: every instance), plus
# the executor's reservation (`--thermos-executor-cpu/-ram`, 0.25 cpu and 128MB by default).
offer_cpus=$(awk -v n="$concurrency" -v c="$task_cpu" 'BEGIN { printf "%d", n * c + 2 }')
offer_ram_mib=$((concurrency * task_ram_mib + 2048))
offer_disk_mib=$((concurrency * 1 + 2048))

# A task holds a few descriptors in the agent (its pipes, its pidfd, its guard's).
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d "${TMPDIR:-/tmp}/borealis-agent-bench.XXXXXX")
# Task users (the role `nobody`) must reach their sandboxes: the agent refuses a work dir
# others cannot search.
chmod 0755 "$work"
scheduler_pid=
agent_pid=

stop() { # pid: SIGTERM, up to 5 s, then SIGKILL; reaps it
    local pid=$1
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
stop_cluster() {
    stop "$agent_pid"
    agent_pid=
    stop "$scheduler_pid"
    scheduler_pid=
}
cleanup() {
    stop_cluster
    if [[ -n ${keep_work:-} ]]; then
        echo "agent-bench: logs kept in $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
now_ns() { date +%s%N; }

# `job list --json` of the scheduler: one line.
job_list() { "$scheduler_bin" job list --json --scheduler "$addr" 2>/dev/null; }
# The count of STATE in job KEY's state_counts in a `job list --json` line ("" when none).
count_of() { # json key state
    local job
    job=$(printf '%s' "$1" | grep -o "{\"job_key\":\"$2\"[^}]*}" | head -n1) || true
    printf '%s' "$job" | grep -o "\"$3\":[0-9]*" | cut -d: -f2 || true
}

# Waits until every instance of `job` is FINISHED: 0 when it is, 1 on a failed task or after
# `limit` seconds (with what it saw last).
wait_finished() { # job count limit_secs
    local job=$1 count=$2 limit=$3 deadline list finished failed
    deadline=$(($(date +%s) + limit))
    while :; do
        list=$(job_list) || list=
        finished=$(count_of "$list" "$job" FINISHED)
        failed=$(count_of "$list" "$job" FAILED)
        if [[ ${finished:-0} -eq $count ]]; then
            return 0
        fi
        if [[ ${failed:-0} -gt 0 ]]; then
            echo "agent-bench: $job has FAILED tasks: $list" >&2
            "$scheduler_bin" job status "$job" --scheduler "$addr" 2>&1 | grep FAILED | head -n3 >&2 || true
            return 1
        fi
        if [[ $(date +%s) -ge $deadline ]]; then
            echo "agent-bench: $job not all FINISHED within ${limit}s: $list" >&2
            return 1
        fi
        kill -0 "$agent_pid" 2>/dev/null || { echo "agent-bench: the agent exited" >&2; return 1; }
        kill -0 "$scheduler_pid" 2>/dev/null || { echo "agent-bench: the scheduler exited" >&2; return 1; }
        sleep "${poll:-0.1}"
    done
}

# The latest FINISHED time (unix ms) of job KEY's tasks, from their events.
last_finished_ms() { # job
    "$scheduler_bin" job status "$1" --json --scheduler "$addr" | python3 -c '
import json, sys
status = json.load(sys.stdin)
times = [e["unix_ms"] for t in status["tasks"] for e in t.get("events", []) if e.get("state") == "FINISHED"]
print(max(times) if len(times) == len(status["tasks"]) else "")
'
}

job_file() { # instances
    printf 'instances = %s\ncommand = "true"\nmax_task_failures = 1\n\n[resources]\ncpu = %s\nram = "%sMiB"\ndisk = "1MiB"\n' \
        "$1" "$task_cpu" "$task_ram_mib"
}

echo "agent-bench: $instances instances of \`true\` (cpu $task_cpu, ram ${task_ram_mib}MiB, disk 1MiB) through one agent, $runs run(s); $cores cores"
echo "agent-bench: scheduler $scheduler_bin, agent $agent_bin${isolation:+ --isolation $isolation}; room for $concurrency tasks at once (--cpus $offer_cpus --ram ${offer_ram_mib}MiB); ulimit -n $(ulimit -n)"
failed_runs=0
results=()
for run in $(seq "$runs"); do
    dir=$work/run-$run
    mkdir -p "$dir/agent"
    chmod 0755 "$dir" "$dir/agent"
    port=$(free_port)
    addr=127.0.0.1:$port
    "$scheduler_bin" scheduler --ip 127.0.0.1 --port "$port" --http-port 0 --shards 2 --no-pin \
        --data-dir "$dir/scheduler-data" --cluster-name agent-bench \
        --max-tasks-per-job "$instances" --history-max-per-job-threshold "$instances" \
        --initial-schedule-penalty 10ms --max-schedule-penalty 100ms \
        >"$dir/scheduler.log" 2>&1 &
    scheduler_pid=$!
    deadline=$(($(date +%s) + 30))
    until job_list >/dev/null; do
        kill -0 "$scheduler_pid" 2>/dev/null || { keep_work=1; die "the scheduler exited: see $dir/scheduler.log"; }
        [[ $(date +%s) -lt $deadline ]] || { keep_work=1; die "the scheduler did not answer within 30s"; }
        sleep 0.1
    done
    agent_flags=(--scheduler "$addr" --agent-id bench-agent --hostname bench-agent
        --cpus "$offer_cpus" --ram "${offer_ram_mib}MiB" --disk "${offer_disk_mib}MiB"
        --ports 31000-31999 --work-dir "$dir/agent" --http-ip 127.0.0.1)
    [[ -n $isolation ]] && agent_flags+=(--isolation "$isolation")
    "$agent_bin" agent "${agent_flags[@]}" >"$dir/agent.log" 2>&1 &
    agent_pid=$!

    # Warm-up: the agent registered and runs tasks.
    job_file 1 >"$dir/warmup.toml"
    "$scheduler_bin" job create nobody/devel/warmup "$dir/warmup.toml" --scheduler "$addr" >/dev/null
    if ! wait_finished nobody/devel/warmup 1 60; then
        keep_work=1
        echo "agent-bench: the warm-up task did not finish: see $dir/agent.log" >&2
        exit 1
    fi

    job_file "$instances" >"$dir/job.toml"
    start=$(now_ns)
    "$scheduler_bin" job create nobody/devel/bench "$dir/job.toml" --scheduler "$addr" >/dev/null
    if poll=0.5 wait_finished nobody/devel/bench "$instances" "$timeout_secs"; then
        end_ms=$(last_finished_ms nobody/devel/bench 2>/dev/null) || end_ms=
        if [[ -n $end_ms ]]; then
            end=$((end_ms * 1000000))
        else
            # A scheduler from before `job status --json` had events (the baseline build):
            # the poll that saw the last FINISHED (up to 0.5 s late).
            end=$(now_ns)
            echo "agent-bench: no task events in job status: the end is the poll's (up to 0.5 s late)" >&2
        fi
        secs=$(awk -v ns=$((end - start)) 'BEGIN { printf "%.3f", ns / 1e9 }')
        tasks_per_s=$(awk -v n="$instances" -v ns=$((end - start)) 'BEGIN { printf "%.0f", n / (ns / 1e9) }')
    else
        failed_runs=$((failed_runs + 1))
        keep_work=1
        secs=
        tasks_per_s=0
    fi
    agent_rss_kib=$(awk '/^VmHWM/ { print $2 }' "/proc/$agent_pid/status" 2>/dev/null || echo "?")
    stop_cluster

    # The machine's spawn limit, beside it: the same count, one thread per core.
    spawn_line=$("$spawn_limit_bin" --count "$instances" --threads "$cores")
    spawns_per_s=$(printf '%s' "$spawn_line" | awk '{ for (i = 2; i <= NF; i++) if ($i == "processes/s") print $(i - 1) }')
    ratio=$(awk -v t="$tasks_per_s" -v s="$spawns_per_s" 'BEGIN { if (s > 0) printf "%.3f", t / s; else print "-" }')
    if [[ -n $secs ]]; then
        outcome="$instances tasks FINISHED in ${secs}s: $tasks_per_s tasks/s"
    else
        outcome="NOT all $instances FINISHED within ${timeout_secs}s (see above)"
    fi
    line="run $run: $outcome; spawn_limit $spawns_per_s processes/s; ratio $ratio; agent peak RSS ${agent_rss_kib} KiB"
    echo "agent-bench: $line"
    results+=("$line")
done

echo "agent-bench: summary ($instances instances, room for $concurrency at once, $cores cores${isolation:+, --isolation $isolation}):"
printf '  %s\n' "${results[@]}"
[[ $failed_runs -eq 0 ]] || exit 1
