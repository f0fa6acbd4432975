#!/usr/bin/env bash
# Every test Borealis has: formatting, lints, unit and property tests, the end-to-end tests of
# the real binaries (which need the binaries built first), schemathesis against the OpenAPI spec
# of a live scheduler, and the web UI in headless Chromium against a live cluster (screenshots
# under target/ui-screenshots/).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
cargo build --workspace --bins
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
./scripts/fuzz.sh
./scripts/schemathesis.sh
./scripts/ui-test.sh
