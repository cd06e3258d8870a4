#!/usr/bin/env bash
# What per-query tracing costs: pgbench -S through three pgsidecar instances in front of one
# PostgreSQL — tracing off, 1% sampling, 100% sampling — alternating, spans exported over
# OTLP/HTTP to a local sink. Run by hand (not in CI): bench/tracing.sh [seconds] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${1:-20}
ROUNDS=${2:-3}
CLIENTS=${CLIENTS:-16}
POOL=20
BIN=/usr/lib/postgresql/15/bin
work=$(mktemp -d /tmp/pgsidecar-trace-bench.XXXX)
chmod 755 "$work"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cargo build --release --quiet
PGPORT=$(free_port); SINK_PORT=$(free_port)
[ "$(id -u)" = 0 ] && chown postgres "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  as_pg "$BIN/pg_ctl" -D "$work/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

as_pg "$BIN/initdb" -D "$work/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
as_pg "$BIN/pg_ctl" -D "$work/data" -l "$work/pg.log" -w \
  -o "-p $PGPORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work -c max_connections=200 -c shared_buffers=256MB -c fsync=off -c synchronous_commit=off" \
  start >/dev/null
"$BIN/pgbench" -i -q -s 10 -h 127.0.0.1 -p "$PGPORT" -U postgres postgres >/dev/null 2>&1

python3 bench/otlp_sink.py "$SINK_PORT" >"$work/sink.log" 2>&1 &
pids+=($!)

declare -A port admin
start_sidecar() { # name, extra args...
  local name=$1; shift
  port[$name]=$(free_port); admin[$name]=$(free_port)
  ./target/release/pgsidecar proxy --listen "127.0.0.1:${port[$name]}" \
    --admin-listen "127.0.0.1:${admin[$name]}" \
    --upstream "postgres://postgres@127.0.0.1:$PGPORT" --auth trust --pool-mode transaction \
    --pool-size "$POOL" "$@" 2>"$work/$name.log" &
  pids+=($!)
}
start_sidecar off
start_sidecar sampled_1pct --otlp-endpoint "http://127.0.0.1:$SINK_PORT" --otlp-protocol http/protobuf \
  --traces-sampler traceidratio --traces-sampler-arg 0.01
start_sidecar sampled_100pct --otlp-endpoint "http://127.0.0.1:$SINK_PORT" --otlp-protocol http/protobuf \
  --traces-sampler always_on
sleep 1

run_pgbench() { # name -> tps
  "$BIN/pgbench" -n -S -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -h 127.0.0.1 -p "${port[$1]}" \
    -U postgres postgres 2>&1 | sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p'
}

declare -A results
for round in $(seq "$ROUNDS"); do
  for name in off sampled_1pct sampled_100pct; do
    tps=$(run_pgbench "$name")
    results[$name]+="$tps "
    echo "round $round  $name: tps $tps" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
off=$(median <<<"${results[off]}")
echo
echo "| tracing | median TPS | vs off | spans exported | spans dropped |"
echo "|---|---|---|---|---|"
for name in off sampled_1pct sampled_100pct; do
  tps=$(median <<<"${results[$name]}")
  scrape=$(curl -s "http://127.0.0.1:${admin[$name]}/metrics")
  exported=$(awk '/^pgsidecar_spans_exported_total / {print $2}' <<<"$scrape")
  dropped=$(awk '/^pgsidecar_spans_dropped_total/ {s += $2} END {print s + 0}' <<<"$scrape")
  awk -v n="$name" -v t="$tps" -v o="$off" -v e="${exported:-0}" -v d="$dropped" \
    'BEGIN { printf "| %s | %.0f | %.3f | %s | %s |\n", n, t, t / o, e, d }'
done
