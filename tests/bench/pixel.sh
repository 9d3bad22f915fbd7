#!/usr/bin/env bash
# Durable pixel hits per second: mailpipe (every hit fsynced on the bus before the GIF is sent),
# as the ingest role alone and as `serve` (all roles in one process), next to nginx serving
# empty_gif with an access log, all loaded by wrk on this machine in the same run (wrk -t1 -c64;
# nginx with worker_processes 1). Prints requests/s for each.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mailpipe-target}"
DURATION="${DURATION:-15s}"
CONNECTIONS="${CONNECTIONS:-64}"

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# MAILPIPE_BIN=<another build> measures that one instead (a before/after comparison).
if [ -z "${MAILPIPE_BIN:-}" ]; then
  cargo build --release -q -p mailpipe
fi
BIN="${MAILPIPE_BIN:-$CARGO_TARGET_DIR/release/mailpipe}"
WORK=$(mktemp -d)
cleanup() { kill "${MP_PID:-}" "${NG_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

export MAILPIPE__HTTP__LISTEN=127.0.0.1:18080 MAILPIPE__HTTP__PUBLIC_URL=http://127.0.0.1:18080

mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log $WORK/nginx/access.log;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  server { listen 127.0.0.1:18081; location /o/ { empty_gif; } }
}
CONF
"$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" & NG_PID=$!
sleep 0.5

rate() { wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "$1" | awk '/Requests\/sec/ {print $2}'; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

# mailpipe as the ingest role (the role that answers tracking hits in production) and as `serve`
# (every role in one process: the processor stores the hits while they arrive), each on a fresh
# data directory, with as many worker threads as nginx has workers (MAILPIPE_THREADS, default 1;
# 0 = one per core). The load and the host are noisy, so nginx and the two take turns for
# ROUNDS rounds and the medians are compared.
ROUNDS="${ROUNDS:-3}"
export MAILPIPE__WORKER_THREADS="${MAILPIPE_THREADS:-1}"
declare -A RATES STORED
for role in ingest serve; do
  export MAILPIPE__DATA_DIR="$WORK/data-$role"
  "$BIN" tenants create bench >/dev/null
done
for round in $(seq "$ROUNDS"); do
  for role in nginx ingest serve; do
    if [ "$role" = nginx ]; then
      RATES[$role]+="$(rate "http://127.0.0.1:18081/o/$("$BIN" url open --tenant bench --campaign bench --message-id '<1@bench>' --recipient r@gmail.com | sed 's|.*/o/||')") "
      continue
    fi
    export MAILPIPE__DATA_DIR="$WORK/data-$role"
    URL=$("$BIN" url open --tenant bench --campaign bench --message-id '<1@bench>' --recipient r@gmail.com)
    RUST_LOG=warn "$BIN" "$role" & MP_PID=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/healthz >/dev/null && break; sleep 0.1; done
    wrk -t1 -c"$CONNECTIONS" -d2s "$URL" >/dev/null   # warm-up
    RATES[$role]+="$(rate "$URL") "
    STORED[$role]=$(curl -s http://127.0.0.1:18080/metrics | awk '/^mailpipe_ingest_events_received_total\{source="open"\}/ {print $2}')
    kill "$MP_PID"; wait "$MP_PID" 2>/dev/null || true; MP_PID=
  done
done

NG=$(median ${RATES[nginx]})
echo "pixel hits/s, wrk -t1 -c$CONNECTIONS -d$DURATION, median of $ROUNDS rounds (every mailpipe answer after fdatasync of the hit):"
echo "  nginx empty_gif + access log, worker_processes 1:   $NG   (${RATES[nginx]% })"
for role in ingest serve; do
  awk -v r="$role" -v a="$(median ${RATES[$role]})" -v b="$NG" -v all="${RATES[$role]% }" -v t="$MAILPIPE__WORKER_THREADS" \
    'BEGIN { printf "  mailpipe %-6s worker_threads %s:             %s   (%s)   ratio to nginx %.2f\n", r, t, a, all, a / b }'
done
echo "  hits published durably in the last round: ingest ${STORED[ingest]:-?}, serve ${STORED[serve]:-?}"
