#!/usr/bin/env bash
# Instructions per transaction of one or more pgsidecar binaries under callgrind: a count that
# does not move with the machine's load. pgbench -S (4 clients, transaction mode) runs N1 and
# then N2 transactions per client against a fresh proxy each time; the difference in the
# proxy's total instruction count, divided by the extra transactions, leaves start-up out.
# Run by hand: bench/instructions.sh BINARY [BINARY ...] (N1, N2: default 250, 1250).
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-250}
N2=${N2:-1250}
CLIENTS=4
source bench/common.sh
PGPORT=$(free_port)
start_postgres "$PGPORT" 100

instructions() { # binary transactions-per-client -> total instructions of the proxy process
  local port vpid out
  port=$(free_port)
  valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" "$1" proxy \
    --listen "127.0.0.1:$port" --upstream "postgres://postgres@127.0.0.1:$PGPORT" --auth trust \
    --pool-mode transaction --pool-size 20 2>"$work/valgrind.log" &
  vpid=$!
  for _ in $(seq 150); do "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.2; done
  "$BIN/pgbench" -n -S -c "$CLIENTS" -j 2 -t "$2" -h 127.0.0.1 -p "$port" -U postgres postgres \
    >/dev/null 2>&1
  kill -INT "$vpid"
  wait "$vpid" 2>/dev/null || true
  out=$(awk '/^summary:/ {print $2}' "$work/callgrind.out")
  rm -f "$work/callgrind.out"
  echo "$out"
}

echo "| binary | instructions per transaction |"
echo "|---|---|"
for binary in "$@"; do
  low=$(instructions "$binary" "$N1")
  high=$(instructions "$binary" "$N2")
  echo "| $binary | $(( (high - low) / ((N2 - N1) * CLIENTS) )) |"
done
