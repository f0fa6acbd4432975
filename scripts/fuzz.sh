#!/usr/bin/env bash
# Bounded fuzzing of Borealis (cargo-fuzz / libFuzzer, on nightly with AddressSanitizer): the
# targets of fuzz/fuzz_targets, each for FUZZ_SECONDS, one after the other.
#
#   frame               the wire's framing and codec on arbitrary bytes and chunkings
#   scheduler_messages  every message the scheduler accepts from a peer, through the real shards
#   agent_messages      what the agent accepts from the scheduler, through the real agent
#   jobfile             the job file parser and the config validator on arbitrary text
#
# Short form (every target 60 s; what scripts/test.sh runs):
#   ./scripts/fuzz.sh
# Long form (every target 10 minutes; BENCHMARKS.md "Fuzzing (issue 12)"):
#   FUZZ_SECONDS=600 ./scripts/fuzz.sh
# One target, longer, with extra libFuzzer flags:
#   FUZZ_TARGETS=scheduler_messages FUZZ_SECONDS=3600 FUZZ_ARGS="-fork=1 -ignore_crashes=1" \
#       ./scripts/fuzz.sh
# Reproduce a crash (the run prints its artifact's path):
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/crash-...
#
# Every run is bounded: -max_total_time=FUZZ_SECONDS, -timeout=FUZZ_TIMEOUT (10 s) per input,
# -rss_limit_mb=FUZZ_RSS_MB (2048). The corpora live in fuzz/corpus/<target> (kept between runs,
# not in git; merged down when over FUZZ_CORPUS_MAX inputs): an empty one is seeded first from real traffic (fuzz/src/bin/seeds.rs: the
# example job files and the requests the CLI builds from them), and fuzz/regressions/<target>
# (reproducers of crashes found before) is run through its target first. Artifacts (crash-,
# timeout-, oom-...) go to fuzz/artifacts/<target>/, with the run's whole output (log-*.txt) when
# it failed. Each run has its own scratch directory (the targets' logs and agent work dirs), so
# two runs at once leave each other alone. Exits non-zero when any target crashed, timed out or
# ran out of memory, after running them all and printing a summary table.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
FUZZ_TIMEOUT="${FUZZ_TIMEOUT:-10}"
FUZZ_RSS_MB="${FUZZ_RSS_MB:-2048}"
FUZZ_TARGETS="${FUZZ_TARGETS:-frame scheduler_messages agent_messages jobfile}"
FUZZ_ARGS="${FUZZ_ARGS:-}"
FUZZ_CORPUS_MAX="${FUZZ_CORPUS_MAX:-4000}"
TRIPLE="$(rustc +nightly -vV | sed -n 's/^host: //p')"
BIN_DIR="fuzz/target/$TRIPLE/release"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# Every target and the seed generator (cargo fuzz builds all of the fuzz crate's binaries).
cargo +nightly fuzz build

seeds_dir=""
for target in $FUZZ_TARGETS; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    if [ -z "$(ls -A "$corpus")" ]; then
        if [ -z "$seeds_dir" ]; then
            seeds_dir="$(mktemp -d)"
            "$BIN_DIR/seeds" "$seeds_dir"
        fi
        if [ -d "$seeds_dir/$target" ]; then
            cp "$seeds_dir/$target"/* "$corpus"/
        fi
    fi
done
[ -n "$seeds_dir" ] && rm -rf "$seeds_dir"

failed=0
summary=()
for target in $FUZZ_TARGETS; do
    corpus="fuzz/corpus/$target"
    artifacts="fuzz/artifacts/$target"
    mkdir -p "$artifacts"
    log="$(mktemp)"
    dirs=("$corpus")
    if [ -d "fuzz/regressions/$target" ] && [ -n "$(ls -A "fuzz/regressions/$target")" ]; then
        dirs+=("fuzz/regressions/$target")
    fi
    # agent_messages keeps one agent across inputs (it is started once per process), whose
    # memory grows and shrinks over many inputs: libFuzzer's per-input leak check would scan the
    # heap after most inputs (three quarters of the time) and can tell it nothing.
    target_args=()
    case "$target" in
        agent_messages) target_args=(-detect_leaks=0) ;;
    esac
    # The run's own scratch directory (the targets' logs and work dirs), removed after it: never
    # another run's, should two run at once.
    scratch="$(mktemp -d /dev/shm/borealis-fuzz-run.XXXXXX 2>/dev/null || mktemp -d)"
    # libFuzzer only adds to a corpus, and every run first replays all of it (untimed): past
    # FUZZ_CORPUS_MAX inputs it is merged down to the inputs that still add coverage.
    if [ "$(ls "$corpus" | wc -l)" -gt "$FUZZ_CORPUS_MAX" ]; then
        merged="fuzz/corpus/.$target.merged"
        rm -rf "$merged" && mkdir -p "$merged"
        echo "== $target: merging its corpus ($(ls "$corpus" | wc -l) inputs)"
        if BOREALIS_FUZZ_SCRATCH="$scratch" "$BIN_DIR/$target" -merge=1 "$merged" "$corpus" \
            -timeout="$FUZZ_TIMEOUT" -rss_limit_mb="$FUZZ_RSS_MB" \
            ${target_args[@]+"${target_args[@]}"} >/dev/null 2>&1; then
            rm -rf "$corpus" && mv "$merged" "$corpus"
        else
            rm -rf "$merged"
        fi
    fi
    echo "== $target: ${FUZZ_SECONDS}s (corpus $corpus: $(ls "$corpus" | wc -l) inputs)"
    start=$(date +%s)
    set +e
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    BOREALIS_FUZZ_SCRATCH="$scratch" "$BIN_DIR/$target" "${dirs[@]}" \
        -max_total_time="$FUZZ_SECONDS" \
        -timeout="$FUZZ_TIMEOUT" \
        -rss_limit_mb="$FUZZ_RSS_MB" \
        -artifact_prefix="$artifacts/" \
        -print_final_stats=1 \
        ${target_args[@]+"${target_args[@]}"} \
        $FUZZ_ARGS 2>&1 | tee "$log" | grep --line-buffered -E '^(#[0-9]+\s+(INITED|DONE|pulse)|==[0-9]+== ERROR|SUMMARY|thread .* panicked|artifact_prefix|Test unit written|stat::)'
    rc=${PIPESTATUS[0]}
    set -e
    elapsed=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if [ "$rc" -eq 0 ]; then
        result="ok"
    elif grep -q 'libFuzzer: timeout' "$log"; then
        result="TIMEOUT"
    elif grep -q 'out-of-memory' "$log"; then
        result="OUT OF MEMORY"
    else
        result="CRASH (exit $rc)"
    fi
    if [ "$rc" -ne 0 ]; then
        failed=1
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
        [ -n "$artifact" ] && result="$result: $artifact"
        # The whole output (the panic, libFuzzer's stack trace) beside the artifact.
        cp "$log" "$artifacts/log-$(date -u +%Y%m%dT%H%M%SZ).txt"
    fi
    summary+=("$(printf '%-20s %8s %14s %10s %8s  %s' "$target" "$elapsed" "${execs:-?}" "${rate:-?}" "$(ls "$corpus" | wc -l)" "$result")")
    rm -f "$log"
    rm -rf "$scratch"
done

echo
printf '%-20s %8s %14s %10s %8s  %s\n' target seconds executions exec/s corpus result
for line in "${summary[@]}"; do
    echo "$line"
done
exit "$failed"
