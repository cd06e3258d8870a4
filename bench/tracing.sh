#!/usr/bin/env bash
# What per-query tracing costs: pgbench -S through three pgsidecar instances in front of one
# PostgreSQL — tracing off, 1% sampling, 100% sampling — alternating, spans exported over
# OTLP/HTTP to a local sink. Reports each instance's throughput, its CPU time (all threads) per
# transaction, the spans exported and dropped by reason, and where the 100 % instance's CPU went
# by thread. OTLP/gRPC to a local tonic sink with PROTOCOL=grpc (the proxy's default protocol),
# else OTLP/HTTP to a Python one.
# Run by hand (not in CI): [QUERY_MODE=simple|extended|prepared] [PROTOCOL=grpc|http/protobuf]
#   [SIDECAR=path/to/an/older/pgsidecar] bench/tracing.sh [seconds] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${1:-20}
ROUNDS=${2:-3}
CLIENTS=${CLIENTS:-16}
POOL=20
source bench/common.sh

PROTOCOL=${PROTOCOL:-http/protobuf}
cargo build --release --quiet
PGPORT=$(free_port); SINK_PORT=$(free_port)
start_postgres "$PGPORT" 200

if [ "$PROTOCOL" = grpc ]; then
  cargo build --release --quiet --example otlp_grpc_sink
  ./target/release/examples/otlp_grpc_sink "$SINK_PORT" >"$work/sink.log" 2>&1 &
else
  python3 bench/otlp_sink.py "$SINK_PORT" >"$work/sink.log" 2>&1 &
fi
bench_pids+=($!)

declare -A port admin pid
start_sidecar() { # name, extra args...
  local name=$1; shift
  port[$name]=$(free_port); admin[$name]=$(free_port)
  "${SIDECAR:-./target/release/pgsidecar}" proxy --listen "127.0.0.1:${port[$name]}" \
    --admin-listen "127.0.0.1:${admin[$name]}" \
    --upstream "postgres://postgres@127.0.0.1:$PGPORT" --auth trust --pool-mode transaction \
    --pool-size "$POOL" "$@" 2>"$work/$name.log" &
  pid[$name]=$!
  bench_pids+=($!)
}
start_sidecar off
start_sidecar sampled_1pct --otlp-endpoint "http://127.0.0.1:$SINK_PORT" --otlp-protocol "$PROTOCOL" \
  --traces-sampler traceidratio --traces-sampler-arg 0.01
start_sidecar sampled_100pct --otlp-endpoint "http://127.0.0.1:$SINK_PORT" --otlp-protocol "$PROTOCOL" \
  --traces-sampler always_on
sleep 1

run_pgbench() { # name -> "tps transactions"
  local out
  out=$("$BIN/pgbench" -n -S -M "${QUERY_MODE:-simple}" -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -h 127.0.0.1 -p "${port[$1]}" \
    -U postgres postgres 2>&1)
  echo "$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' <<<"$out")" \
    "$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")"
}

declare -A results ticks txns
for round in $(seq "$ROUNDS"); do
  for name in off sampled_1pct sampled_100pct; do
    before=$(cpu_ticks "${pid[$name]}")
    read -r tps n < <(run_pgbench "$name")
    spent=$(( $(cpu_ticks "${pid[$name]}") - before ))
    results[$name]+="$tps "
    ticks[$name]=$(( ${ticks[$name]:-0} + spent ))
    txns[$name]=$(( ${txns[$name]:-0} + n ))
    echo "round $round  $name: tps $tps, proxy CPU $(( spent * 1000000 / TICK / n )) µs/txn" >&2
  done
done

off=$(median <<<"${results[off]}")
echo
off_cpu=$(awk -v t="${ticks[off]}" -v n="${txns[off]}" -v k="$TICK" 'BEGIN { print t / k * 1e6 / n }')
echo "| tracing | median TPS | vs off | proxy CPU µs/txn | vs off | spans exported | dropped (queue_full / export_failed) |"
echo "|---|---|---|---|---|---|---|"
for name in off sampled_1pct sampled_100pct; do
  tps=$(median <<<"${results[$name]}")
  scrape=$(curl -s "http://127.0.0.1:${admin[$name]}/metrics")
  exported=$(awk '/^pgsidecar_spans_exported_total / {print $2}' <<<"$scrape")
  full=$(awk '/^pgsidecar_spans_dropped_total.*queue_full/ {s += $2} END {print s + 0}' <<<"$scrape")
  failed=$(awk '/^pgsidecar_spans_dropped_total.*export_failed/ {s += $2} END {print s + 0}' <<<"$scrape")
  awk -v n="$name" -v t="$tps" -v o="$off" -v e="${exported:-0}" -v f="$full" -v x="$failed" \
    -v ticks="${ticks[$name]}" -v txns="${txns[$name]}" -v k="$TICK" -v oc="$off_cpu" \
    'BEGIN { c = ticks / k * 1e6 / txns; printf "| %s | %.0f | %.3f | %.1f | %.2f | %s | %s / %s |\n", n, t, t / o, c, c / oc, e, f, x }'
done

# Where the traced instance's CPU went, by thread (since it started, over all its transactions):
# the query thread, the query spans' export thread, the HTTP client's own runtime.
echo
echo "| thread of sampled_100pct | CPU µs/txn |"
echo "|---|---|"
for task in /proc/"${pid[sampled_100pct]}"/task/*; do
  echo "$(cat "$task/comm") $(awk '{print $14 + $15}' "$task/stat")"
done | awk -v txns="${txns[sampled_100pct]}" -v k="$TICK" \
  '{ t[$1] += $2 } END { for (n in t) if (t[n] > 0) printf "| %s | %.2f |\n", n, t[n] / k * 1e6 / txns }'
