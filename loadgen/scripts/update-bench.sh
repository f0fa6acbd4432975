#!/usr/bin/env bash
# Rolling-update benchmarks (BENCHMARKS.md, "Rolling updates (issue 9)"): runs
# scripts/bench.sh once per line of a plan, each after waiting for a quiet window, and appends
# one tab-separated line per run to OUT/runs.tsv (the run's JSON stays in OUT/).
#
#   loadgen/scripts/update-bench.sh OUT PLAN
#
# PLAN is a file of lines `NAME ARGS...` (ARGS: borealis-loadgen flags, e.g.
# `during-max --agents 10000 --duration 20 --rate 0 --update during --update-agents 800`);
# `#` lines are skipped. Each run first waits (at most $QUIET_MAX_SECS, default 300) for a 5 s
# window in which the machine was under $QUIET_BUSY (default 0.2) of one core busy, then
# records `others`: the CPU other processes used during the run (/proc/stat busy time minus the
# run's own, from /usr/bin/time) as a share of all cores x wall time.
#
# Environment: as scripts/bench.sh (SHARDS, BENCH_NO_BUILD, CARGO_TARGET_DIR, ...).
set -euo pipefail
cd "$(dirname "$0")/../.."

out=${1:?usage: update-bench.sh OUT PLAN}
plan=${2:?usage: update-bench.sh OUT PLAN}
quiet_max=${QUIET_MAX_SECS:-300}
quiet_busy=${QUIET_BUSY:-0.2}
cores=$(nproc)
mkdir -p "$out"
[[ -f $out/runs.tsv ]] || printf 'name\trc\tverified\tplaced_per_s\tp50_ms\tp99_ms\tmax_ms\tsched_cpu_s\tothers\tload_before\twaited_s\tupdates\tupdate_median_s\tcoverage\tjson\n' >"$out/runs.tsv"

busy_jiffies() {
    # user nice system irq softirq steal of the "cpu" line.
    awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat
}

wait_quiet() {
    local waited=0 hz a b
    hz=$(getconf CLK_TCK)
    while ((waited < quiet_max)); do
        a=$(busy_jiffies)
        sleep 5
        b=$(busy_jiffies)
        waited=$((waited + 5))
        if awk -v d=$((b - a)) -v hz="$hz" -v lim="$quiet_busy" 'BEGIN{exit !(d / hz / 5 < lim)}'; then
            break
        fi
    done
    echo "$waited"
}

n=0
while read -r name args; do
    [[ -z $name || $name == \#* ]] && continue
    n=$((n + 1))
    waited=$(wait_quiet)
    load=$(cut -d' ' -f1 /proc/loadavg)
    json=$out/$(printf '%02d' "$n")-$name.json
    hz=$(getconf CLK_TCK)
    before=$(busy_jiffies)
    rc=0
    # shellcheck disable=SC2086 # ARGS are words
    /usr/bin/time -f '%e %U %S' -o "$out/time.txt" \
        scripts/bench.sh $args --quiet --json "$json" </dev/null >"$out/$(printf '%02d' "$n")-$name.out" 2>&1 || rc=$?
    after=$(busy_jiffies)
    # (With a failed command, time's first line says so: the figures are the last line.)
    read -r wall user sys < <(tail -n 1 "$out/time.txt") || true
    others=$(awk -v d=$((after - before)) -v hz="$hz" -v own="$user+$sys" -v wall="$wall" -v c="$cores" \
        'BEGIN{split(own, o, "+"); x = (d / hz - o[1] - o[2]) / (c * wall); if (x < 0) x = 0; printf "%.2f", x}')
    summary=$(python3 - "$json" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception:
    print(" ".join(["-"] * 9)); sys.exit()
l = r.get("latency_submit_to_assigned_ms", {})
u = r.get("update") or {}
f = lambda x, fmt: "-" if x is None else fmt % x
print(" ".join([
    "yes" if r.get("verified") else "NO",
    f(r.get("tasks_per_sec_placed"), "%.0f"),
    f(l.get("p50"), "%.1f"), f(l.get("p99"), "%.1f"), f(l.get("max"), "%.1f"),
    f(r.get("scheduler_cpu_secs"), "%.1f"),
    str(len(u.get("runs", []))) if u else "-",
    f(u.get("median_secs"), "%.3f"),
    f(u.get("window_coverage"), "%.3f"),
]))
EOF
)
    read -r ver placed p50 p99 max cpu updates umed cov <<<"$summary"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$ver" "$placed" "$p50" "$p99" "$max" \
        "$cpu" "$others" "$load" "$waited" "$updates" "$umed" "$cov" "$json" >>"$out/runs.tsv"
    tail -n 1 "$out/runs.tsv"
done <"$plan"
