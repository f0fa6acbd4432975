#!/usr/bin/env bash
# Installs the system tools the build and the tests need, from Debian's packages, when they are
# missing. Idempotent, and quick when everything is present.
# - cmake, g++, make: build flatc from source (net/build.rs, the `flatc` crate).
# - protobuf-compiler + libprotobuf-dev: build the `etcd-client` crate (protoc needs the
#   well-known google/protobuf/*.proto files, which protobuf-compiler only recommends).
# - etcd-server (/usr/bin/etcd), etcd-client (etcdctl): control/tests and tests/tests/ha.rs
#   start their own etcd on free loopback ports with temporary data dirs.
# - prometheus (with promtool): tests/tests/prometheus.rs runs a real server scraping /metrics.
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
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo is required (rustup.rs)" >&2; exit 1; }
