#!/usr/bin/env bash
# From a fresh machine to a running Borealis (embedded storage, no etcd) with one local agent,
# running and finishing the sample job examples/hello.toml. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p borealis
exec ./target/release/borealis up --submit examples/hello.toml --data-dir "${BOREALIS_DATA_DIR:-borealis-data}" "$@"
