#!/usr/bin/env bash
# Logins: `pgbench -C -S` (a new connection for every transaction) through nothing, pgsidecar and
# PgBouncer in one alternating run, and the time a login takes while every server connection of
# the pool runs a long query. Run by hand (not in CI): bench/connect.sh [seconds] [rounds]
# BEFORE_BIN=path/to/an/older/pgsidecar adds that build to the same run, for before/after.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${1:-15}
ROUNDS=${2:-3}
CLIENTS=${CLIENTS:-16}
POOL=20
source bench/common.sh

cargo build --release --quiet
PGPORT=$(free_port); BOUNCER_PORT=$(free_port)
start_postgres "$PGPORT" 300

declare -A ports
start_sidecar() { # name binary pool-size
  local port; port=$(free_port)
  "$2" proxy --listen "127.0.0.1:$port" --upstream "postgres://postgres@127.0.0.1:$PGPORT" \
    --auth trust --pool-mode transaction --pool-size "$3" --acquire-timeout 30s \
    2>"$work/$1.log" &
  bench_pids+=("$!")
  ports[$1]=$port
}
targets="direct pgsidecar pgbouncer"
start_sidecar pgsidecar ./target/release/pgsidecar "$POOL"
if [ -n "${BEFORE_BIN:-}" ]; then
  start_sidecar before "$BEFORE_BIN" "$POOL"
  targets="$targets before"
fi
start_pgbouncer "$BOUNCER_PORT" "$PGPORT" "$POOL" <<INI
query_wait_timeout = 30
INI
ports[direct]=$PGPORT
ports[pgbouncer]=$BOUNCER_PORT
sleep 1

run_connect() { # target -> tps
  "$BIN/pgbench" -n -C -S -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -h 127.0.0.1 -p "${ports[$1]}" \
    -U postgres postgres 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1
}

declare -A results
for round in $(seq "$ROUNDS"); do
  for target in $targets; do
    tps=$(run_connect "$target")
    results[$target]+="$tps "
    echo "round $round  pgbench -C -S  $target: tps $tps" >&2
  done
done

echo
echo "| pgbench -C -S, $CLIENTS clients | TPS (median of $ROUNDS × ${SECONDS_PER_RUN}s) | ÷ PgBouncer |"
echo "|---|---|---|"
b=$(median <<<"${results[pgbouncer]}")
for target in $targets; do
  t=$(median <<<"${results[$target]}")
  awk -v n="$target" -v t="$t" -v b="$b" 'BEGIN { printf "| %s | %.0f | %.2f |\n", n, t, (b ? t / b : 0) }'
done

# A pool of 2 whose both connections run a 6-second query: how long does a third client's login
# take? (A fresh pool of 2 per target, so that the rest of the run does not interfere.)
echo
echo "| login while the pool of 2 runs two 6 s queries | login time |"
echo "|---|---|"
start_sidecar saturated ./target/release/pgsidecar 2
saturated_targets="saturated"
if [ -n "${BEFORE_BIN:-}" ]; then
  start_sidecar saturated_before "$BEFORE_BIN" 2
  saturated_targets="$saturated_targets saturated_before"
fi
BOUNCER2_PORT=$(free_port)
mkdir -p "$work/b2" && cp "$work/userlist.txt" "$work/b2/"
sed -e "s/listen_port = .*/listen_port = $BOUNCER2_PORT/" -e "s/default_pool_size = .*/default_pool_size = 2/" \
  -e "s#$work/pgbouncer#$work/b2/pgbouncer#g" "$work/pgbouncer.ini" >"$work/b2/pgbouncer.ini"
[ "$(id -u)" = 0 ] && chown -R postgres "$work/b2"
as_pg pgbouncer -d "$work/b2/pgbouncer.ini"
ports[saturated_pgbouncer]=$BOUNCER2_PORT
sleep 1
for target in $saturated_targets saturated_pgbouncer; do
  port=${ports[$target]}
  "$BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -qAtc 'SELECT 1' postgres >/dev/null
  sleepers=()
  for _ in 1 2; do
    "$BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -qAtc 'SELECT pg_sleep(6)' postgres >/dev/null &
    sleepers+=("$!")
  done
  sleep 1
  took=$(.venv/bin/python - "$port" <<'PY'
import sys, time, psycopg
started = time.monotonic()
conn = psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="postgres", dbname="postgres")
print(f"{(time.monotonic() - started) * 1000:.1f} ms")
conn.close()
PY
)
  echo "| $target | $took |"
  wait "${sleepers[@]}"
done
kill "$(cat "$work/b2/pgbouncer.pid")" 2>/dev/null || true
