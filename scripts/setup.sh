#!/usr/bin/env bash
# Installs the system tools the build and the tests need, from Debian's packages, when they are
# missing. Idempotent, and quick when everything is present.
# - cmake, g++, make: build flatc from source (net/build.rs, the `flatc` crate).
# - protobuf-compiler + libprotobuf-dev: build the `etcd-client` crate (protoc needs the
#   well-known google/protobuf/*.proto files, which protobuf-compiler only recommends).
# - etcd-server (/usr/bin/etcd), etcd-client (etcdctl): control/tests and tests/tests/ha.rs
#   start their own etcd on free loopback ports with temporary data dirs.
# - prometheus (with promtool): tests/tests/prometheus.rs runs a real server scraping /metrics.
# - chromium: scripts/ui-test.sh drives Debian's headless Chromium through the web UI (never
#   `playwright install`: the browser comes from Debian, not a download).
# - python3 and python3-venv (for ensurepip): the test venv below.
# The Python tools of the tests live in a venv at the repo root, .venv-test (git-ignored):
# Playwright for Python (tests/ui/, with the system Chromium) and schemathesis (the HTTP API's
# fuzzing against /api/v1/openapi.json), at pinned versions.
# The etcd and prometheus packages would start services on :2379 and :9090: the tests need
# neither, so recommends are left out and, unless the machine already has a policy, a temporary
# policy-rc.d forbids starting services during the install.
set -euo pipefail

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
updated=""

# Installs the named packages without recommends and without starting their services.
apt_install() {
  echo "setup: installing $* from Debian's packages" >&2
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# written by borealis scripts/setup.sh for one install\nexit 101\n' \
      | $sudo_cmd tee "$policy" >/dev/null
    $sudo_cmd chmod 755 "$policy"
    trap '$sudo_cmd rm -f "$policy"' EXIT
  fi
  [ -n "$updated" ] || { $sudo_cmd apt-get update -qq; updated=1; }
  $sudo_cmd apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" >/dev/null
}

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
[ -x /usr/bin/etcd ] || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || need+=(prometheus)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v python3 >/dev/null 2>&1 || need+=(python3)
{ command -v python3 >/dev/null 2>&1 && python3 -c 'import ensurepip, venv' >/dev/null 2>&1; } \
  || need+=(python3-venv)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo is required (rustup.rs)" >&2; exit 1; }

# The tests' Python tools, in .venv-test at the repo root.
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-test"
py_pins=(playwright==1.65.2 schemathesis==4.32.5)
if ! "$venv/bin/python" - "${py_pins[@]}" >/dev/null 2>&1 <<'EOF'
import sys
from importlib.metadata import version
sys.exit(any(version(n) != v for n, v in (p.split("==") for p in sys.argv[1:])))
EOF
then
  echo "setup: installing ${py_pins[*]} into $venv" >&2
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${py_pins[@]}"
fi
