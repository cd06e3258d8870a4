#!/usr/bin/env bash
# Retrieval over the document schema at 3072 dimensions: load N synthetic chunks (default
# 100,000), build the HNSW index through `pgsidecar migrate`, run the canonical queries through
# pgsidecar with 1 and 8 clients, and measure recall@10 of the ANN path against exact answers.
# Run by hand (not in CI): bench/retrieval/run.sh [chunks] [seconds per run]
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${1:-100000}
SECONDS_PER_RUN=${2:-20}
export PG_SHARED_BUFFERS=${PG_SHARED_BUFFERS:-2GB}
export PG_EXTRA="-c maintenance_work_mem=2GB -c work_mem=64MB -c max_parallel_maintenance_workers=1"
source bench/common.sh

cargo build --release --quiet
PGPORT=$(free_port); SIDECAR_PORT=$(free_port)
start_postgres "$PGPORT" 100
URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
migrate() { ./target/release/pgsidecar migrate apply --dir migrations --database-url "$URL" --no-backup --reason benchmark "$@" >/dev/null; }
elapsed() { python3 -c "import time,sys; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$1"; }

migrate --to 2
started=$(date +%s.%N)
"$BIN/psql" -q -X -v ON_ERROR_STOP=1 -v n="$N" -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -f bench/retrieval/load.sql
echo "loaded $N chunks in $(elapsed "$started") s"
started=$(date +%s.%N)
migrate
echo "HNSW index (m=16, ef_construction=64) built in $(elapsed "$started") s"
"$BIN/psql" -X -A -t -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -c \
  "SELECT 'index ' || pg_size_pretty(pg_relation_size('chunks_embedding_hnsw')) || ', chunks table with TOAST '
          || pg_size_pretty(pg_total_relation_size('chunks') - pg_indexes_size('chunks'))"

./target/release/pgsidecar proxy --listen "127.0.0.1:$SIDECAR_PORT" --upstream "$URL" --auth trust \
  --pool-mode transaction --pool-size 10 2>"$work/sidecar.log" &
bench_pids+=($!)
sleep 1

percentiles() { # log files -> "p50 p95 p99" in ms
  cat "$@" | python3 -c '
import sys
lat = sorted(int(l.split()[2]) for l in sys.stdin if l.strip())
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000
print(f"{len(lat)} queries: p50 {pick(0.5):.1f} ms, p95 {pick(0.95):.1f} ms, p99 {pick(0.99):.1f} ms")'
}

for clients in 1 8; do
  for script in ann ann_metadata ann_unfiltered hybrid exact_small exact_big chunks_of_a_document; do
    jobs=$(( clients < 2 ? clients : 2 ))
    rm -f "$work"/log-*
    "$BIN/pgbench" -n -f "bench/retrieval/$script.sql" -D n="$N" -c "$clients" -j "$jobs" -T "$SECONDS_PER_RUN" \
      -l --log-prefix="$work/log-$script" -h 127.0.0.1 -p "$SIDECAR_PORT" -U postgres postgres >"$work/out" 2>&1 \
      || { cat "$work/out"; exit 1; }
    echo "$clients client(s), $script: $(percentiles "$work"/log-"$script"*)"
  done
done

echo "recall@10 of the ANN path (ef_search 200, 80 candidates re-ranked), 50 queries each:"
"$BIN/psql" -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -f bench/retrieval/recall.sql
