#!/usr/bin/env bash
# The test command of the README: installs what the tests need that cargo does not (Debian's
# chromium for the browser test, Debian's postfix for the mail-server-in-the-loop test, Debian's
# faketime for the fault suite's clock step,
# playwright-core, cargo-nextest, Debian's clickhouse-server
# and the tansu Kafka broker for the production-backend tests, Schemathesis from PyPI for the
# API contract test) and runs every test of the workspace. Reuses the build of
# `cargo run --release -- serve --demo` (./target, see below), the tansu build in
# ~/.cache/tansu and the Schemathesis install in ~/.cache/mailpipe-venv across runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# One build for the demo and the tests: ./target is where `cargo run` builds. If it is a
# directory of its own (the demo was built first), the tests use it; otherwise it becomes a
# link to the shared cache ($CARGO_TARGET_DIR, default ~/.cache/mailpipe-target), which fresh
# clones of the repository (CI) reuse, and where `cargo run` then builds too.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  if [ -d target ] && [ ! -L target ]; then
    CARGO_TARGET_DIR="$PWD/target"
  else
    CARGO_TARGET_DIR="$HOME/.cache/mailpipe-target"
    mkdir -p "$CARGO_TARGET_DIR"
    ln -sfn "$CARGO_TARGET_DIR" target
  fi
fi
export CARGO_TARGET_DIR
export RUST_BACKTRACE=0

need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
command -v node >/dev/null || need_apt+=(nodejs npm)
command -v clickhouse-server >/dev/null || [ -x /usr/sbin/clickhouse-server ] || need_apt+=(clickhouse-server)
command -v curl >/dev/null || need_apt+=(curl)
[ -x /usr/sbin/postfix ] || need_apt+=(postfix)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || need_apt+=(faketime)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
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

# The API contract test runs Schemathesis against a live server.
export SCHEMATHESIS="${SCHEMATHESIS:-$HOME/.cache/mailpipe-venv/bin/schemathesis}"
if [ ! -x "$SCHEMATHESIS" ] || ! "$SCHEMATHESIS" --version | grep -q "4.32.5"; then
  echo "installing Schemathesis (once; cached in ~/.cache/mailpipe-venv)"
  python3 -m venv "$HOME/.cache/mailpipe-venv"
  "$HOME/.cache/mailpipe-venv/bin/pip" install --quiet "schemathesis==4.32.5"
fi

# The end-to-end tests run the real binary (kill -9, `mailpipe inbound`): build it first.
cargo build --release -p mailpipe
cargo nextest run --workspace --release --no-fail-fast "$@"
