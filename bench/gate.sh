#!/usr/bin/env bash
# What a fleet pause costs: three pgsidecar processes (one fleet) in front of one PostgreSQL,
# pgbench -N (10 clients) through each, first without pauses, then with a 200 ms fleet pause
# every 2 s. Reports the time from the pause request to "every sidecar paused" and the client
# latency percentiles of both runs. Run by hand (not in CI): bench/gate.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${1:-20}
source bench/common.sh

cargo build --release --quiet
PGPORT=$(free_port)
start_postgres "$PGPORT" 200
URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"

ports=()
for i in 1 2 3; do
  port=$(free_port)
  ./target/release/pgsidecar proxy --listen "127.0.0.1:$port" --upstream "$URL" --auth trust \
    --pool-size 8 --fleet-url "$URL" --fleet-id "bench-$i" --fleet-heartbeat 1s \
    2>"$work/sidecar-$i.log" &
  bench_pids+=($!)
  ports+=("$port")
done
sleep 2

run_load() { # name -> per-transaction logs in $work/$name.*
  for port in "${ports[@]}"; do
    "$BIN/pgbench" -n -N -c 10 -j 1 -T "$SECONDS_PER_RUN" -h 127.0.0.1 -p "$port" -U postgres \
      -l --log-prefix="$work/$1-$port" postgres >"$work/$1-$port.out" 2>&1 &
  done
}

percentiles() { # name
  cat "$work/$1"-*.[0-9]* | python3 -c '
import sys
lat = sorted(int(line.split()[2]) for line in sys.stdin if line.strip())
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000
print(f"{len(lat)} transactions, latency ms: p50 {pick(0.5):.2f}, p99 {pick(0.99):.2f}, p99.9 {pick(0.999):.2f}, max {lat[-1] / 1000:.2f}")'
}

run_load baseline
wait_load() { while pgrep -f "log-prefix=$work/$1" >/dev/null; do sleep 0.5; done; }
wait_load baseline
echo "without pauses: $(percentiles baseline)"

run_load paused
sleep 1
pauses=()
deadline=$((SECONDS + SECONDS_PER_RUN - 2))
while [ "$SECONDS" -lt "$deadline" ]; do
  started=$(date +%s%N)
  report=$(./target/release/pgsidecar gate pause --database-url "$URL" --deadline 5s --max-hold 10s)
  wall=$(( ($(date +%s%N) - started) / 1000000 ))
  sleep 0.2
  ./target/release/pgsidecar gate resume --database-url "$URL" >/dev/null
  pauses+=("$(python3 -c '
import json, sys
r = json.loads(sys.argv[1])
acks = [a["took_ms"] for a in r["acks"].values()]
took = r["took_seconds"] * 1000
print(f"{took:.1f} {max(acks):.1f}")' "$report") $wall")
  sleep 1.8
done
wait_load paused
echo "with a 200 ms fleet pause every 2 s: $(percentiles paused)"
printf '%s\n' "${pauses[@]}" | python3 -c '
import sys
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
med = lambda xs: sorted(xs)[len(xs) // 2]
print(f"{len(rows)} fleet pauses: request to all paused (publish to last ack) median {med([r[0] for r in rows]):.1f} ms, max {max(r[0] for r in rows):.1f} ms;"
      f" slowest sidecar pause median {med([r[1] for r in rows]):.1f} ms;"
      f" whole CLI call (connect, register check, publish, acks) median {med([r[2] for r in rows]):.0f} ms")'
grep -h "failed transactions\|^tps" "$work"/paused-*.out | sort | uniq -c
