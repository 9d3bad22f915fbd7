#!/usr/bin/env bash
# Kafka -> processor -> ClickHouse on this machine: starts a private ClickHouse (Debian's
# clickhouse-server) and a tansu broker on free ports, then runs `mailpipe bench production`,
# which prints rows/s into ClickHouse (next to the bare clickhouse crate with narrow rows, in
# the same run), processor events per CPU-second, and overview latency from the rollups.
# EVENTS=1000000 and BATCH=20000 (events per insert) by default.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mailpipe-target}"
TANSU="${TANSU_BIN:-$HOME/.cache/tansu/bin/tansu}"
[ -x "$TANSU" ] || { echo "tansu not found at $TANSU: run tests/run.sh first (it builds it)"; exit 1; }
command -v clickhouse-server >/dev/null || [ -x /usr/sbin/clickhouse-server ] || { echo "clickhouse-server missing: run tests/run.sh first"; exit 1; }
CH_SERVER=$(command -v clickhouse-server || echo /usr/sbin/clickhouse-server)

cargo build --release -q -p mailpipe
WORK=$(mktemp -d)
cleanup() { kill "${CH_PID:-}" "${K_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

CH_HTTP=18124; CH_TCP=19001; KAFKA=19093
cat > "$WORK/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$WORK/ch.log</log><errorlog>$WORK/ch.err.log</errorlog></logger>
  <http_port>$CH_HTTP</http_port><tcp_port>$CH_TCP</tcp_port><listen_host>127.0.0.1</listen_host>
  <path>$WORK/ch/</path><tmp_path>$WORK/ch/tmp/</tmp_path><user_files_path>$WORK/ch/user_files/</user_files_path>
  <format_schema_path>$WORK/ch/format_schemas/</format_schema_path>
  <users_config>$WORK/users.xml</users_config><default_profile>default</default_profile><default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size><max_concurrent_queries>100</max_concurrent_queries>
</yandex>
XML
cat > "$WORK/users.xml" <<XML
<?xml version="1.0"?>
<yandex><profiles><default></default></profiles>
<users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
<quotas><default></default></quotas></yandex>
XML
"$CH_SERVER" --config-file="$WORK/config.xml" >/dev/null 2>&1 & CH_PID=$!
"$TANSU" broker --listener-url tcp://127.0.0.1:$KAFKA --advertised-listener-url tcp://127.0.0.1:$KAFKA --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1 & K_PID=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:$CH_HTTP/ping >/dev/null && break; sleep 0.1; done
RUST_LOG=warn "$CARGO_TARGET_DIR/release/mailpipe" bench production \
  --clickhouse http://127.0.0.1:$CH_HTTP --brokers 127.0.0.1:$KAFKA --events "${EVENTS:-1000000}" --batch "${BATCH:-20000}"
