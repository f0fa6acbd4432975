#!/usr/bin/env bash
# Installs the system tools the build and the tests need, from Debian's packages, when they are
# missing: cmake and g++ build flatc from source (net/build.rs, the `flatc` crate); prometheus
# and promtool run tests/tests/prometheus.rs (a real Prometheus server scraping /metrics).
# Idempotent and quick when everything is present.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]} from Debian's packages" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Prometheus (promtool is in the same package). The package would start a prometheus service
# on :9090 (and recommends node-exporter, another service): the tests start their own server on
# a free port and need neither, so recommends are left out and, unless the machine already has
# a policy, a temporary policy-rc.d forbids starting services during the install.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "setup: installing prometheus (and promtool) from Debian's packages" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# written by borealis scripts/setup.sh for one install\nexit 101\n' \
      | $sudo_cmd tee "$policy" >/dev/null
    $sudo_cmd chmod 755 "$policy"
    trap '$sudo_cmd rm -f "$policy"' EXIT
  fi
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold prometheus >/dev/null
fi
# etcd (Debian `etcd-server`: /usr/bin/etcd) runs control/tests (leadership and the desired-state
# store against a real etcd); protoc (Debian `protobuf-compiler`) builds the `etcd-client` crate,
# and needs the well-known .proto files (google/protobuf/*.proto) of `libprotobuf-dev`, which
# protobuf-compiler only recommends.
# The etcd package would start an etcd service on :2379: the tests start their own etcd on free
# loopback ports with temporary data dirs and need none, so, as for prometheus, a temporary
# policy-rc.d forbids starting services during the install unless the machine already has one.
if [ ! -x /usr/bin/etcd ] || ! command -v etcdctl >/dev/null 2>&1 || ! command -v protoc >/dev/null 2>&1 \
  || [ ! -e /usr/include/google/protobuf/descriptor.proto ]; then
  echo "setup: installing etcd-server, etcd-client, protobuf-compiler and libprotobuf-dev from Debian's packages" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# written by borealis scripts/setup.sh for one install\nexit 101\n' \
      | $sudo_cmd tee "$policy" >/dev/null
    $sudo_cmd chmod 755 "$policy"
    trap '$sudo_cmd rm -f "$policy"' EXIT
  fi
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    etcd-server etcd-client protobuf-compiler libprotobuf-dev >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo is required (rustup.rs)" >&2; exit 1; }
