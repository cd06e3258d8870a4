#!/usr/bin/env bash
# pgbench -S (and TPC-B at 16 clients) through nothing, pgsidecar and PgBouncer, alternating, and
# both proxies' memory per idle client and behaviour under many clients.
# Run by hand (not in CI): bench/pgbench.sh [seconds] [rounds]
# Prints a markdown table of median TPS per target and client count, the ratios, and the
# proxies' CPU time per transaction (user + system of the proxy process / transactions): the
# figure that does not move with the machine's noise.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${1:-20}
ROUNDS=${2:-3}
CLIENT_COUNTS=${CLIENT_COUNTS:-"1 16 1000"}
QUERY_MODES=${QUERY_MODES:-"simple extended prepared"}
MANY_CLIENTS=${MANY_CLIENTS:-10000}
TPCB_CLIENTS=${TPCB_CLIENTS:-16}
POOL=20
source bench/common.sh
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release --quiet
PGPORT=$(free_port); SIDECAR_PORT=$(free_port); BOUNCER_PORT=$(free_port)
start_postgres "$PGPORT" 1100

${SIDECAR_PREFIX:-} ./target/release/pgsidecar proxy --listen "127.0.0.1:$SIDECAR_PORT" \
  --upstream "postgres://postgres@127.0.0.1:$PGPORT" --auth trust --pool-mode transaction \
  --pool-size "$POOL" --max-client-conn 20000 --acquire-timeout 30s 2>"$work/sidecar.log" &
SIDECAR_PID=$!
bench_pids+=("$SIDECAR_PID")

start_pgbouncer "$BOUNCER_PORT" "$PGPORT" "$POOL" <<INI
max_client_conn = 20000
query_wait_timeout = 30
INI
sleep 1
BOUNCER_PID=$(cat "$work/pgbouncer.pid")
declare -A proxy_pid=([pgsidecar]=$SIDECAR_PID [pgbouncer]=$BOUNCER_PID)

# Memory first, on the fresh proxies: a warm-up batch of idle clients, then a measured one.
echo "pgsidecar: $(.venv/bin/python bench/idle_clients.py "$SIDECAR_PORT" 1000 "$SIDECAR_PID")"
echo "PgBouncer: $(.venv/bin/python bench/idle_clients.py "$BOUNCER_PORT" 1000 "$BOUNCER_PID")"

port_of() { case $1 in direct) echo "$PGPORT";; pgsidecar) echo "$SIDECAR_PORT";; pgbouncer) echo "$BOUNCER_PORT";; esac; }
run_pgbench() { # target clients seconds [query mode] [builtin script] -> "tps failed cpu-µs-per-transaction"
  local out before=0 spent=0
  [ -n "${proxy_pid[$1]:-}" ] && before=$(cpu_ticks "${proxy_pid[$1]}")
  out=$("$BIN/pgbench" -n -b "${5:-select-only}" -M "${4:-simple}" -c "$2" -j 2 -T "$3" -h 127.0.0.1 -p "$(port_of "$1")" -U postgres postgres 2>&1) || true
  [ -n "${proxy_pid[$1]:-}" ] && spent=$(( $(cpu_ticks "${proxy_pid[$1]}") - before ))
  local tps failed aborted txns cpu
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' <<<"$out")
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
  # Aborted clients (e.g. "prepared statement does not exist") are not failed transactions.
  aborted=$(grep -c 'aborted in command' <<<"$out" || true)
  txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
  cpu=$(awk -v t="$spent" -v k="$TICK" -v n="${txns:-0}" 'BEGIN { printf "%.1f", n ? t / k * 1e6 / n : 0 }')
  echo "${tps:-0} ${failed:-?}+${aborted}aborted $cpu"
}

declare -A results cpu_per_txn
for round in $(seq "$ROUNDS"); do
  for mode in $QUERY_MODES; do
    for clients in $CLIENT_COUNTS; do
      for target in direct pgsidecar pgbouncer; do
        read -r tps failed cpu < <(run_pgbench "$target" "$clients" "$SECONDS_PER_RUN" "$mode")
        results[$mode,$target,$clients]+="$tps "
        cpu_per_txn[$mode,$target,$clients]+="$cpu "
        echo "round $round  -M $mode  clients $clients  $target: tps $tps, failed $failed, proxy CPU/txn ${cpu} µs" >&2
      done
    done
  done
  for target in direct pgsidecar pgbouncer; do
    read -r tps failed cpu < <(run_pgbench "$target" "$TPCB_CLIENTS" "$SECONDS_PER_RUN" simple tpcb-like)
    results[tpcb,$target,$TPCB_CLIENTS]+="$tps "
    cpu_per_txn[tpcb,$target,$TPCB_CLIENTS]+="$cpu "
    echo "round $round  TPC-B  clients $TPCB_CLIENTS  $target: tps $tps, failed $failed, proxy CPU/txn ${cpu} µs" >&2
  done
done
rows() { for mode in $QUERY_MODES; do for clients in $CLIENT_COUNTS; do echo "$mode $clients"; done; done; echo "tpcb $TPCB_CLIENTS"; }

echo
echo "| -M | clients | direct | pgsidecar | PgBouncer | pgsidecar/PgBouncer | pgsidecar/direct |"
echo "|---|---|---|---|---|---|---|"
rows | while read -r mode clients; do
  d=$(median <<<"${results[$mode,direct,$clients]}")
  s=$(median <<<"${results[$mode,pgsidecar,$clients]}")
  b=$(median <<<"${results[$mode,pgbouncer,$clients]}")
  awk -v m="$mode" -v c="$clients" -v d="$d" -v s="$s" -v b="$b" \
    'BEGIN { printf "| %s | %s | %.0f | %.0f | %.0f | %.2f | %.2f |\n", m, c, d, s, b, (b ? s / b : 0), (d ? s / d : 0) }'
done

echo
echo "| -M | clients | pgsidecar CPU µs/txn | PgBouncer CPU µs/txn | pgsidecar/PgBouncer |"
echo "|---|---|---|---|---|"
rows | while read -r mode clients; do
  s=$(median <<<"${cpu_per_txn[$mode,pgsidecar,$clients]}")
  b=$(median <<<"${cpu_per_txn[$mode,pgbouncer,$clients]}")
  awk -v m="$mode" -v c="$clients" -v s="$s" -v b="$b" \
    'BEGIN { printf "| %s | %s | %.1f | %.1f | %.2f |\n", m, c, s, b, (b ? s / b : 0) }'
done

echo
for target in pgsidecar pgbouncer; do
  read -r tps failed cpu < <(run_pgbench "$target" "$MANY_CLIENTS" "$SECONDS_PER_RUN")
  echo "$MANY_CLIENTS clients on pool $POOL through $target: tps $tps, failed transactions $failed, CPU ${cpu} µs/txn, peak RSS $(awk '/VmHWM/ {print $2}' "/proc/${proxy_pid[$target]}/status") KiB"
done
