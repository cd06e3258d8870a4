#!/usr/bin/env bash
# The cost of TLS through pgsidecar: pgbench -S with steady connections and with a new
# connection per transaction (-C, where the handshakes dominate), against two release sidecars
# in front of one PostgreSQL with TLS on: one plaintext on both sides, one with TLS on both
# sides (clients sslmode=require, upstream server_tls_mode=require), and PgBouncer with TLS on
# both sides for comparison. Rounds alternate.
# Run by hand (not in CI): bench/tls.sh [seconds] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${1:-15}
ROUNDS=${2:-3}
CLIENTS=${CLIENTS:-16}
source bench/common.sh

cargo build --release --quiet
PGPORT=$(free_port); PLAIN_PORT=$(free_port); TLS_PORT=$(free_port); BOUNCER_PORT=$(free_port)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$work/tls.key" -out "$work/tls.crt" >/dev/null 2>&1
chmod 600 "$work/tls.key"
[ "$(id -u)" = 0 ] && chown postgres "$work/tls.key" "$work/tls.crt"
PG_EXTRA="-c ssl=on -c ssl_cert_file=$work/tls.crt -c ssl_key_file=$work/tls.key" \
  start_postgres "$PGPORT" 200

sidecar() { # port extra-args...
  local port=$1; shift
  ./target/release/pgsidecar proxy --listen "127.0.0.1:$port" \
    --upstream "postgres://postgres@127.0.0.1:$PGPORT" --auth trust --pool-mode transaction \
    --pool-size 20 "$@" 2>>"$work/sidecar.log" &
  bench_pids+=($!)
}
sidecar "$PLAIN_PORT" --client-tls disable --server-tls-mode disable
sidecar "$TLS_PORT" --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" --client-tls require \
  --server-tls-mode require
start_pgbouncer "$BOUNCER_PORT" "$PGPORT" 20 <<INI
client_tls_sslmode = require
client_tls_cert_file = $work/tls.crt
client_tls_key_file = $work/tls.key
server_tls_sslmode = require
INI
sleep 1

run() { # port sslmode extra -> tps
  PGSSLMODE=$2 "$BIN/pgbench" -n -S $3 -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -h 127.0.0.1 \
    -p "$1" -U postgres postgres 2>&1 | sed -n 's/^tps = \([0-9.]*\) (.*/\1/p'
}

declare -A results
for round in $(seq "$ROUNDS"); do
  for mode in steady reconnect; do
    flag=""; [ "$mode" = reconnect ] && flag="-C"
    results[plain-$mode]+=" $(run "$PLAIN_PORT" disable "$flag")"
    results[tls-$mode]+=" $(run "$TLS_PORT" require "$flag")"
    results[bouncer-$mode]+=" $(run "$BOUNCER_PORT" require "$flag")"
  done
  echo "round $round done" >&2
done

echo "| connections | pgsidecar plaintext | pgsidecar TLS both sides | ratio | PgBouncer TLS both sides |"
echo "|---|---|---|---|---|"
for mode in steady reconnect; do
  plain=$(echo "${results[plain-$mode]}" | median)
  tls=$(echo "${results[tls-$mode]}" | median)
  ratio=$(awk -v a="$tls" -v b="$plain" 'BEGIN { printf "%.2f", a / b }')
  bouncer=$(echo "${results[bouncer-$mode]}" | median)
  echo "| $mode ($CLIENTS clients) | $plain | $tls | $ratio | $bouncer |"
done
