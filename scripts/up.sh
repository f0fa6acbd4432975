#!/usr/bin/env bash
# From a fresh machine to a running Borealis (embedded storage, no etcd) with one local agent,
# running and finishing the sample job examples/hello.toml. Ctrl-C stops it.
#
# It installs the `borealis` binary with `cargo install --path cli --locked` into cargo's bin
# directory (~/.cargo/bin, on the PATH of a rustup install), so the README's `borealis ...`
# commands work from any shell; the build is the workspace's own release build (target/).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo install --quiet --path cli --locked --target-dir target --force
bin_dir="${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin"
if [ "$(command -v borealis || true)" != "$bin_dir/borealis" ]; then
  echo "up: installed $bin_dir/borealis, but a shell does not find it there first;" \
       "add it to your PATH: export PATH=\"$bin_dir:\$PATH\"" >&2
fi
exec "$bin_dir/borealis" up --submit examples/hello.toml --data-dir "${BOREALIS_DATA_DIR:-borealis-data}" "$@"
