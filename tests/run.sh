#!/usr/bin/env bash
# The test command of the README: installs what the tests need that cargo does not (Debian's
# chromium for the browser test, playwright-core, cargo-nextest, Debian's clickhouse-server
# and the tansu Kafka broker for the production-backend tests) and runs every test of the
# workspace. Reuses $CARGO_TARGET_DIR (default ~/.cache/mailpipe-target) and the tansu build
# in ~/.cache/tansu across runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mailpipe-target}"
export RUST_BACKTRACE=0

need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
command -v node >/dev/null || need_apt+=(nodejs npm)
command -v clickhouse-server >/dev/null || [ -x /usr/sbin/clickhouse-server ] || need_apt+=(clickhouse-server)
command -v curl >/dev/null || need_apt+=(curl)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
command -v cc >/dev/null && command -v make >/dev/null || need_apt+=(build-essential)
pkg-config --exists openssl 2>/dev/null || need_apt+=(libssl-dev pkg-config)
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
# The Kafka-protocol broker of the integration tests (about 20 minutes to build the first time).
export TANSU_BIN="${TANSU_BIN:-$HOME/.cache/tansu/bin/tansu}"
if [ ! -x "$TANSU_BIN" ]; then
  echo "building the tansu broker (once; cached in ~/.cache/tansu)"
  cargo install tansu --version 0.6.0 --locked --features libsql,dynostore --root "$HOME/.cache/tansu"
fi

# The end-to-end tests run the real binary (kill -9, `mailpipe inbound`): build it first.
cargo build --release -p mailpipe
cargo nextest run --workspace --release --no-fail-fast "$@"
