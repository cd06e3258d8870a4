#!/usr/bin/env bash
# Instructions per transaction of one or more pgsidecar binaries under callgrind: a count that
# does not move with the machine's load. pgbench -S (4 clients, transaction mode) runs N1 and
# then N2 transactions per client against a fresh proxy each time; the difference in the
# proxy's total instruction count, divided by the extra transactions, leaves start-up out.
# Besides pgsidecar binaries, two reference points can be named: `pgbouncer` (PgBouncer 1.18
# from Debian, same pool) and `floor` (examples/relay_floor.rs: a tokio relay that copies bytes
# to one upstream connection per client and does nothing else).
# Run by hand: [QUERY_MODE=simple|extended|prepared] bench/instructions.sh BINARY|pgbouncer|floor ...
# (N1, N2: default 250, 1250).
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-250}
N2=${N2:-1250}
CLIENTS=4
source bench/common.sh
PGPORT=$(free_port)
start_postgres "$PGPORT" 100

if [[ " $* " == *" floor "* ]]; then cargo build --release --quiet --example relay_floor; fi

start_under_callgrind() { # what port: starts it under callgrind, listening on port
  local grind=(valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out")
  case $1 in
    pgbouncer)
      start_pgbouncer_config "$2" "$PGPORT" 20 </dev/null
      touch "$work/callgrind.out" && chmod 666 "$work/callgrind.out"
      as_pg "${grind[@]}" pgbouncer "$work/pgbouncer.ini" 2>"$work/valgrind.log" & ;;
    floor)
      "${grind[@]}" target/release/examples/relay_floor "127.0.0.1:$2" "127.0.0.1:$PGPORT" \
        2>"$work/valgrind.log" & ;;
    *)
      "${grind[@]}" "$1" proxy --listen "127.0.0.1:$2" \
        --upstream "postgres://postgres@127.0.0.1:$PGPORT" --auth trust \
        --pool-mode transaction --pool-size 20 2>"$work/valgrind.log" & ;;
  esac
}

instructions() { # binary|pgbouncer|floor transactions-per-client -> total instructions of the proxy
  local port vpid out
  port=$(free_port)
  start_under_callgrind "$1" "$port"
  vpid=$!
  for _ in $(seq 150); do "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.2; done
  "$BIN/pgbench" -n -S -M "${QUERY_MODE:-simple}" -c "$CLIENTS" -j 2 -t "$2" -h 127.0.0.1 -p "$port" -U postgres postgres \
    >/dev/null 2>&1
  # valgrind runs PgBouncer as a child of runuser: signal it by its output file.
  pkill -INT -f "callgrind-out-file=$work/callgrind.out" || true
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
