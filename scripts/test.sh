#!/usr/bin/env bash
# Every test Borealis has: formatting, lints, unit and property tests, and the end-to-end
# tests of the real binaries (which need the binaries built first).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
cargo build --workspace --bins
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
