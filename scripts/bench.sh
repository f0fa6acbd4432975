#!/usr/bin/env bash
# Macro-benchmark: builds release binaries, starts `borealis scheduler` on a free loopback port,
# runs `borealis-loadgen` against it for $DURATION seconds (default 60) with its RSS watched,
# prints the loadgen's table, stops the scheduler and exits with the loadgen's status (0: the
# run verified; 1: it did not, and its figures are not valid; 2: it could not run).
#
#   scripts/bench.sh [--tls] --agents 10000 --duration 20 [--json out.json] [any borealis-loadgen flag]
#
# --tls: the scheduler runs secured, as in production: openssl makes a throwaway CA, a scheduler
# certificate (SAN 127.0.0.1) and one agent certificate all simulated agents present, in the
# run's temp dir, with a random client token, its --auth-file and an --audit-log there; the
# scheduler gets --tls-cert/--tls-key/--tls-ca/--auth-file/--audit-log, the loadgen
# --tls-ca/--tls-cert/--tls-key and the token (agents over TLS with the certificate, clients
# over TLS authenticating with the token).
#
# Environment: SHARDS (scheduler shards, default 2), DURATION (default 60; a --duration flag
# wins), BOREALIS_LOG (the scheduler's log filter, default warn: info logs every job and agent),
# BENCH_NO_BUILD=1 (use the binaries already built), LOADGEN_BIN (another loadgen binary, e.g. an
# older build to compare with; plain runs only), SCHEDULER_FLAGS (extra scheduler flags,
# e.g. --in-memory to measure without the write-ahead log).
set -euo pipefail
cd "$(dirname "$0")/.."

tls=
args=()
for arg in "$@"; do
    case $arg in
        --tls) tls=1 ;;
        *) args+=("$arg") ;;
    esac
done
set -- ${args[@]+"${args[@]}"}

SHARDS=${SHARDS:-2}
DURATION=${DURATION:-60}
export BOREALIS_LOG=${BOREALIS_LOG:-warn}

if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    cargo build --release -p borealis -p borealis-loadgen
fi
target_dir=${CARGO_TARGET_DIR:-target}
scheduler_bin=$target_dir/release/borealis
loadgen_bin=${LOADGEN_BIN:-$target_dir/release/borealis-loadgen}

# Thousands of agent sockets on each side of loopback.
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d "${TMPDIR:-/tmp}/borealis-bench.XXXXXX")
log=$work/scheduler.log
scheduler_pid=

security_flags=()
loadgen_security=()
if [[ -n $tls ]]; then
    command -v openssl >/dev/null || { echo "bench: --tls needs openssl" >&2; exit 2; }
    pki=$work/pki
    mkdir -p "$pki"
    (
        set -e
        cd "$pki"
        key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
        key ca.key
        openssl req -x509 -new -key ca.key -sha256 -days 2 -subj /CN=borealis-bench-ca \
            -addext basicConstraints=critical,CA:TRUE \
            -addext keyUsage=critical,keyCertSign,cRLSign -out ca.pem 2>/dev/null
        leaf() { # name, extensions
            key "$1.key"
            openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr" 2>/dev/null
            printf '%b' "$2" >"$1.ext"
            openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
                -sha256 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
        }
        leaf scheduler 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n'
        leaf agent 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=DNS:loadgen-agent\n'
    ) || { echo "bench: openssl could not make the certificates" >&2; exit 2; }
    token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    token_sha256=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)
    printf '[[principal]]\nname = "bench"\ntoken_sha256 = "%s"\npermissions = ["*"]\n' \
        "$token_sha256" >"$work/auth.toml"
    security_flags=(--tls-cert "$pki/scheduler.pem" --tls-key "$pki/scheduler.key"
        --tls-ca "$pki/ca.pem" --auth-file "$work/auth.toml" --audit-log "$work/audit.log")
    loadgen_security=(--tls-ca "$pki/ca.pem" --tls-cert "$pki/agent.pem" --tls-key "$pki/agent.key")
    # The token goes by the environment, not the command line (ps shows that).
    export BOREALIS_LOADGEN_TOKEN=$token
fi

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
        --shards "$SHARDS" --data-dir "$work/data" \
        ${security_flags[@]+"${security_flags[@]}"} ${SCHEDULER_FLAGS:-} >"$log" 2>&1 &
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
echo "bench: scheduler pid $scheduler_pid on 127.0.0.1:$port, $SHARDS shards, log $log${tls:+, TLS + token auth (certificates in $work/pki, audit log $work/audit.log)}" >&2

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
    --scheduler-log "$log" \
    ${loadgen_security[@]+"${loadgen_security[@]}"} ${extra[@]+"${extra[@]}"} "$@" || status=$?

if ! kill -0 "$scheduler_pid" 2>/dev/null; then
    echo "bench: the scheduler DIED during the run; the end of its log:" >&2
    tail -n 40 "$log" >&2 || true
    [[ $status -ne 0 ]] || status=1
fi
stop_scheduler
exit "$status"
