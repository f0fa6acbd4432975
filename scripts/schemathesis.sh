#!/usr/bin/env bash
# Fuzzes every route of the scheduler's HTTP API from its own OpenAPI document
# (/api/v1/openapi.json) with schemathesis, against a live scheduler and agent on loopback:
# once without auth, once with --auth-file and an admin token (how it runs in production).
# Before fuzzing it creates a job, a cron job and an update, so reads hit real data.
#
# Checks: no answer is a server error, and every answer's status, content type and body match
# what the document declares. Exits non-zero on any failure; kills what it started.
#
# Needs the binary built (cargo build -p borealis, or BOREALIS_BIN) and .venv-test with
# schemathesis (scripts/setup.sh makes it). SCHEMATHESIS_MAX_EXAMPLES (default 20) bounds the
# cases per operation.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
BIN=${BOREALIS_BIN:-$REPO/target/debug/borealis}
ST=$REPO/.venv-test/bin/schemathesis
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-20}
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
# How long the scheduler may take to lead and the agent to register.
STARTUP_SECS=30

if [[ ! -x "$BIN" ]]; then
    echo "schemathesis.sh: no borealis binary at $BIN: build it first: cargo build -p borealis" >&2
    exit 1
fi
if [[ ! -x "$ST" ]]; then
    echo "schemathesis.sh: no $ST: run scripts/setup.sh (it makes .venv-test with schemathesis)" >&2
    exit 1
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/borealis-schemathesis.XXXXXX")
PIDS=()
FAILED=1
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill -9 "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ $FAILED -ne 0 ]]; then
        echo "schemathesis.sh: failed; logs kept in $WORK" >&2
        for log in "$WORK"/*.log; do
            [[ -f "$log" ]] || continue
            echo "----- tail of $log" >&2
            tail -n 40 "$log" >&2 || true
        done
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# curl with the variant's token, failing on transport errors only; prints the status code.
api() {
    local method=$1 path=$2 body=${3:-}
    local args=(-sS -o "$WORK/last-answer.json" -w '%{http_code}' -X "$method"
        --max-time 30 "http://127.0.0.1:$HTTP_PORT$path")
    if [[ -n "$TOKEN" ]]; then
        args+=(-H "Authorization: Bearer $TOKEN")
    fi
    if [[ -n "$body" ]]; then
        args+=(-H 'Content-Type: application/json' --data-binary "$body")
    fi
    curl "${args[@]}"
}

# api, and fail unless the status is the one expected.
expect() {
    local want=$1
    shift
    local got
    got=$(api "$@")
    if [[ "$got" != "$want" ]]; then
        echo "schemathesis.sh: $1 $2 answered $got, expected $want: $(cat "$WORK/last-answer.json")" >&2
        exit 1
    fi
}

wait_for() {
    local what=$1
    shift
    local deadline=$((SECONDS + STARTUP_SECS))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            echo "schemathesis.sh: timed out after ${STARTUP_SECS}s waiting for $what" >&2
            exit 1
        fi
        sleep 0.2
    done
}

leads() {
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$HTTP_PORT/leaderhealth")" == 200 ]]
}

agent_registered() {
    [[ "$(api GET /api/v1/agents)" == 200 ]] && grep -q '"connected":true' "$WORK/last-answer.json"
}

JOB_FILE='instances = 2\ncommand = \"echo hello; sleep 600\"\n[resources]\ncpu = 0.25\nram = \"32MiB\"\ndisk = \"32MiB\"\n'
UPDATE_FILE='instances = 3\ncommand = \"echo v2; sleep 600\"\n[resources]\ncpu = 0.25\nram = \"32MiB\"\ndisk = \"32MiB\"\n[update]\nwatch_secs = 1\npulse_interval_secs = 3600\n'
CRON_FILE='instances = 1\ncommand = \"echo nightly\"\ncron_schedule = \"0 3 * * *\"\n[resources]\ncpu = 0.1\nram = \"16MiB\"\ndisk = \"16MiB\"\n'

# run_variant NAME [SCHEDULER FLAGS...]: a fresh scheduler and agent, some data, schemathesis.
run_variant() {
    local name=$1
    shift
    local port
    port=$(free_port)
    HTTP_PORT=$(free_port)
    local dir="$WORK/$name"
    mkdir -p "$dir"
    (cd "$dir" && exec "$BIN" scheduler --in-memory --ip 127.0.0.1 --port "$port" \
        --http-port "$HTTP_PORT" --shards 2 --no-pin "$@") >"$WORK/$name-scheduler.log" 2>&1 &
    PIDS+=($!)
    wait_for "the $name scheduler's /leaderhealth" leads
    (cd "$dir" && exec "$BIN" agent --scheduler "127.0.0.1:$port" --agent-id "st-$name" \
        --hostname "st-$name.local" --cpus 8 --ram 8GiB --disk 8GiB \
        --work-dir "$dir/agent") >"$WORK/$name-agent.log" 2>&1 &
    PIDS+=($!)
    wait_for "the $name agent to register" agent_registered

    expect 201 POST /api/v1/jobs/www/prod/web "{\"job_file\": \"$JOB_FILE\"}"
    expect 201 POST /api/v1/jobs/www/prod/api "{\"job_file\": \"$JOB_FILE\"}"
    expect 200 PUT /api/v1/jobs/www/prod/nightly/cron "{\"job_file\": \"$CRON_FILE\"}"
    # Awaits pulses (none come): it stays active while the fuzzer reads and commands it.
    expect 201 POST /api/v1/jobs/www/prod/api/updates "{\"job_file\": \"$UPDATE_FILE\"}"
    expect 200 PUT /api/v1/quotas/www '{"cpu": 4, "ram_mib": 4096, "disk_mib": 4096}'

    local args=(run "http://127.0.0.1:$HTTP_PORT/api/v1/openapi.json"
        --url "http://127.0.0.1:$HTTP_PORT"
        --checks "$CHECKS"
        --max-examples "$MAX_EXAMPLES"
        --workers 2
        --request-timeout 40
        --seed 7
        --suppress-health-check all
        --warnings off)
    if [[ -n "$TOKEN" ]]; then
        args+=(-H "Authorization: Bearer $TOKEN")
    fi
    echo "=== schemathesis ($name): $ST ${args[*]}"
    (cd "$dir" && "$ST" "${args[@]}")
    # The scheduler survived it.
    expect 200 GET /api/v1/cluster
}

TOKEN=""
run_variant open

# With --auth-file: an admin token (every request sends it).
TOKEN="st-$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
HASH=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
cat >"$WORK/auth.toml" <<EOF
[[principal]]
name = "admin"
token_sha256 = "$HASH"
permissions = ["*"]
EOF
run_variant auth --auth-file "$WORK/auth.toml"
# The HTTP side checks tokens too: none is 401.
saved=$TOKEN
TOKEN=""
expect 401 GET /api/v1/jobs
TOKEN=$saved

FAILED=0
echo "schemathesis.sh: every operation passed ($CHECKS), without and with auth"
