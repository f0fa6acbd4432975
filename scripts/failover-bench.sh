#!/usr/bin/env bash
# Failover benchmark: etcd + 3 schedulers (--etcd-lease-ttl ${TTL:-2}s) + 1 agent on loopback.
# Each trial kill -9s the leader and measures (a) until another scheduler's /leaderhealth says
# 200 and (b) until a job created right after reaches RUNNING on the new leader (new leader
# placing tasks). Prints every trial, then the median and max of each.
#   scripts/failover-bench.sh [TRIALS]    (default 10; needs /usr/bin/etcd: scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-10}
ttl=${TTL:-2}
bin=${BOREALIS_BIN:-target/release/borealis}
[[ -x $bin ]] || cargo build --release -p borealis
work=$(mktemp -d "${TMPDIR:-/tmp}/borealis-failover.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
base=$((30000 + RANDOM % 20000))
etcd_port=$base
/usr/bin/etcd --name bench --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$((base + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((base + 1))" \
    --initial-cluster "bench=http://127.0.0.1:$((base + 1))" >"$work/etcd.log" 2>&1 &
pids+=($!)
sleep 1.5
declare -A sched_pid
start_scheduler() { # index
    local i=$1
    BOREALIS_LOG=warn "$bin" scheduler --ip 127.0.0.1 --port $((base + 10 + i)) --http-port $((base + 20 + i)) \
        --shards 2 --etcd-endpoints "http://127.0.0.1:$etcd_port" --etcd-lease-ttl "${ttl}s" \
        --reconciliation-grace 2s >>"$work/s$i.log" 2>&1 &
    sched_pid[$i]=$!
    pids+=($!)
}
for i in 1 2 3; do start_scheduler $i; done
schedulers="127.0.0.1:$((base + 11)),127.0.0.1:$((base + 12)),127.0.0.1:$((base + 13))"
"$bin" agent --scheduler "$schedulers" --agent-id a1 --hostname h1 --cpus 64 --ram 64GiB --disk 64GiB \
    --work-dir "$work/agent" >"$work/agent.log" 2>&1 &
pids+=($!)
cat >"$work/job.toml" <<'TOML'
instances = 1
command = "sleep 3600"
[resources]
cpu = 0.01
ram = "1MiB"
disk = "1MiB"
TOML
leader() { for i in 1 2 3; do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$((base + 20 + i))/leaderhealth") == 200 ]] && { echo $i; return; }
done; echo 0; }
now() { date +%s.%N; }
elect=(); place=()
for ((t = 1; t <= trials; t++)); do
    for _ in $(seq 100); do l=$(leader); [[ $l != 0 ]] && break; sleep 0.1; done
    [[ $l == 0 ]] && { echo "no leader before trial $t" >&2; exit 1; }
    sleep 3 # let the agent settle on the leader
    kill -9 "${sched_pid[$l]}"
    t0=$(now)
    wait "${sched_pid[$l]}" 2>/dev/null || true
    new=0
    for _ in $(seq 400); do
        for i in 1 2 3; do
            [[ $i == "$l" ]] && continue
            [[ $(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$((base + 20 + i))/leaderhealth") == 200 ]] && new=$i
        done
        [[ $new != 0 ]] && break
        sleep 0.02
    done
    t1=$(now)
    [[ $new == 0 ]] && { echo "no new leader in trial $t" >&2; exit 1; }
    job="bench/prod/failover$t"
    for _ in $(seq 200); do
        "$bin" job create "$job" "$work/job.toml" --scheduler "127.0.0.1:$((base + 10 + new))" >/dev/null 2>&1 && break
        sleep 0.05
    done
    for _ in $(seq 400); do
        "$bin" job status "$job" --json --scheduler "127.0.0.1:$((base + 10 + new))" 2>/dev/null | grep -q '"RUNNING"' && break
        sleep 0.05
    done
    t2=$(now)
    e=$(echo "$t1 - $t0" | bc); p=$(echo "$t2 - $t0" | bc)
    elect+=("$e"); place+=("$p")
    echo "trial $t: leader $l killed; new leader $new elected after ${e}s, placing tasks after ${p}s"
    start_scheduler "$l"
done
stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "median %.2fs max %.2fs", m, a[NR]}'; }
echo "elected:        $(stats "${elect[@]}")"
echo "placing tasks:  $(stats "${place[@]}")"
