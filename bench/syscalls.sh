#!/usr/bin/env bash
# System calls per transaction of each proxy (strace -c on the proxy process, all threads), and
# the split of its CPU time between user and kernel: on two cores shared with PostgreSQL and the
# clients, most of a pooler's cost is the kernel's, and the count of calls does not move with the
# machine's noise. Run by hand (not in CI): bench/syscalls.sh [transactions per client] [clients]
set -euo pipefail
cd "$(dirname "$0")/.."

PER_CLIENT=${1:-2000}
CLIENTS=${2:-16}
MODE=${MODE:-simple}
POOL=20
source bench/common.sh
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release --quiet
PGPORT=$(free_port); SIDECAR_PORT=$(free_port); BOUNCER_PORT=$(free_port)
start_postgres "$PGPORT" 200

./target/release/pgsidecar proxy --listen "127.0.0.1:$SIDECAR_PORT" \
  --upstream "postgres://postgres@127.0.0.1:$PGPORT" --auth trust --pool-mode transaction \
  --pool-size "$POOL" 2>"$work/sidecar.log" &
SIDECAR_PID=$!
bench_pids+=("$SIDECAR_PID")
start_pgbouncer "$BOUNCER_PORT" "$PGPORT" "$POOL" </dev/null
sleep 1
BOUNCER_PID=$(cat "$work/pgbouncer.pid")

utime() { awk '{print $14}' "/proc/$1/stat"; }
stime() { awk '{print $15}' "/proc/$1/stat"; }
faults() { awk '{print $10}' "/proc/$1/stat"; }
# Context switches of all the process's threads (each one is a sleep in the kernel and a wake-up).
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {n += $2} END {print n}'; }

measure() { # name pid port
  local pid=$2 port=$3 txns=$((PER_CLIENT * CLIENTS))
  # Warm the pool so that logins are not counted.
  "$BIN/pgbench" -n -S -M "$MODE" -c "$CLIENTS" -j 2 -t 200 -h 127.0.0.1 -p "$port" -U postgres postgres >/dev/null 2>&1
  local u0 s0 f0 c0
  u0=$(utime "$pid"); s0=$(stime "$pid"); f0=$(faults "$pid"); c0=$(switches "$pid")
  "$BIN/pgbench" -n -S -M "$MODE" -c "$CLIENTS" -j 2 -t "$PER_CLIENT" -h 127.0.0.1 -p "$port" -U postgres postgres >/dev/null 2>&1
  awk -v u=$(( $(utime "$pid") - u0 )) -v s=$(( $(stime "$pid") - s0 )) -v k="$TICK" -v n="$txns" -v name="$1" \
    -v f=$(( $(faults "$pid") - f0 )) -v c=$(( $(switches "$pid") - c0 )) \
    'BEGIN { printf "%s: CPU per transaction %.1f µs user + %.1f µs kernel, %.3f page faults, %.2f context switches (untraced run)\n", name, u / k * 1e6 / n, s / k * 1e6 / n, f / n, c / n }'
  strace -f -c -o "$work/$1.strace" -p "$pid" &
  local tracer=$!
  sleep 1
  "$BIN/pgbench" -n -S -M "$MODE" -c "$CLIENTS" -j 2 -t "$PER_CLIENT" -h 127.0.0.1 -p "$port" -U postgres postgres >/dev/null 2>&1
  kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
  echo "$1: system calls per transaction ($txns transactions, -M $MODE, $CLIENTS clients)"
  awk -v n="$txns" '$1 ~ /^[0-9.]+$/ && NF >= 5 { calls = $4; name = $NF; if (name != "total") printf "  %-16s %6.2f\n", name, calls / n } $NF == "total" { printf "  %-16s %6.2f\n", "total", $3 / n }' "$work/$1.strace"
}

measure pgsidecar "$SIDECAR_PID" "$SIDECAR_PORT"
measure pgbouncer "$BOUNCER_PID" "$BOUNCER_PORT"
