#!/usr/bin/env bash
# Two pgsidecar binaries side by side (a change against the commit before it): pgbench -S through
# each, alternating, and each process's CPU time per transaction, the figure that does not move
# with the machine's noise. Run by hand: bench/ab.sh OLD_BINARY NEW_BINARY [seconds] [rounds]
# (CLIENTS, default 16; MODE, default simple). Build the old one from a worktree of the earlier
# commit with the same CARGO_TARGET_DIR, so that only pgsidecar itself is compiled again.
set -euo pipefail
cd "$(dirname "$0")/.."

OLD=$1 NEW=$2
SECONDS_PER_RUN=${3:-10}
ROUNDS=${4:-3}
CLIENTS=${CLIENTS:-16}
MODE=${MODE:-simple}
POOL=20
source bench/common.sh

PGPORT=$(free_port)
start_postgres "$PGPORT" 200
declare -A port pid
for name in old new; do
  port[$name]=$(free_port)
  binary=$OLD; [ "$name" = new ] && binary=$NEW
  "$binary" proxy --listen "127.0.0.1:${port[$name]}" \
    --upstream "postgres://postgres@127.0.0.1:$PGPORT" --auth trust --pool-mode transaction \
    --pool-size "$POOL" 2>"$work/$name.log" &
  pid[$name]=$!
  bench_pids+=($!)
done
sleep 1

declare -A tps_of cpu_of
for round in $(seq "$ROUNDS"); do
  for name in old new; do
    before=$(cpu_ticks "${pid[$name]}")
    out=$("$BIN/pgbench" -n -S -M "$MODE" -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -h 127.0.0.1 \
      -p "${port[$name]}" -U postgres postgres 2>&1)
    spent=$(( $(cpu_ticks "${pid[$name]}") - before ))
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' <<<"$out")
    txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
    cpu=$(awk -v t="$spent" -v k="$TICK" -v n="$txns" 'BEGIN { printf "%.1f", t / k * 1e6 / n }')
    tps_of[$name]+="$tps "
    cpu_of[$name]+="$cpu "
    echo "round $round  $name: tps $tps, proxy CPU/txn $cpu µs" >&2
  done
done

echo "| binary | TPS (median) | proxy CPU µs/txn (median) |"
echo "|---|---|---|"
for name in old new; do
  printf '| %s | %.0f | %s |\n' "$name" "$(median <<<"${tps_of[$name]}")" "$(median <<<"${cpu_of[$name]}")"
done
