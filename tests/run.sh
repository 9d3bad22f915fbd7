#!/usr/bin/env bash
# The test command of the README: installs what the tests need that cargo does not (Debian's
# chromium for the browser test, playwright-core, cargo-nextest) and runs every test of the
# workspace. Reuses $CARGO_TARGET_DIR (default ~/.cache/mailpipe-target) across runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mailpipe-target}"
export RUST_BACKTRACE=0

need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
command -v node >/dev/null || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} (apt)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

# The end-to-end tests run the real binary (kill -9, `mailpipe inbound`): build it first.
cargo build --release -p mailpipe
cargo nextest run --workspace --release --no-fail-fast "$@"
