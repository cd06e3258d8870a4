#!/usr/bin/env bash
# Retrieval over the document schema at 3072 dimensions: load N synthetic chunks (default
# 100,000), build the halfvec HNSW index through `pgsidecar migrate` (0003) and the
# binary-quantized one beside it (binary_index.sql), run the canonical queries and
# retrieval.search with each metadata filter through pgsidecar with 1 and 8 clients, measure
# recall@10 against exact answers, and time a verified backup. Run by hand (not in CI): bench/retrieval/run.sh [chunks] [seconds per run]
#
# Environment:
#   PG_MWM                  maintenance_work_mem for the index builds (default 2GB; an HNSW
#                           build is fast only while the graph fits: ~9GB for halfvec at 1M)
#   PG_PARALLEL_MAINTENANCE max_parallel_maintenance_workers (default 1: two cores)
#   PG_SHARED_BUFFERS       shared_buffers (default 2GB)
#   BQ_CANDIDATES           candidates taken from the binary index and re-ranked (default 200)
#   RECALL_QUERIES          query vectors per recall figure (default 50)
#   SCRIPTS                 the canonical query scripts to run (default: all; retrieval.search
#                           with each filter always runs)
#   RETRIEVAL_DIR           keep the cluster in this directory and reuse it when it already
#                           holds N chunks (load and builds are then skipped)
#   BACKUP                  1 to time `backup create` + `backup verify` (default 1 below 1M chunks)
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${1:-100000}
SECONDS_PER_RUN=${2:-20}
BQ_CANDIDATES=${BQ_CANDIDATES:-200}
RECALL_QUERIES=${RECALL_QUERIES:-50}
BACKUP=${BACKUP:-$(( N < 1000000 ? 1 : 0 ))}
export PG_SHARED_BUFFERS=${PG_SHARED_BUFFERS:-2GB}
export PG_EXTRA="-c maintenance_work_mem=${PG_MWM:-2GB} -c work_mem=64MB \
  -c max_parallel_maintenance_workers=${PG_PARALLEL_MAINTENANCE:-1} -c max_wal_size=8GB"
source bench/common.sh

cargo build --release --quiet
PGPORT=$(free_port); SIDECAR_PORT=$(free_port)
URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
psql_() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres "$@"; }
migrate() { ./target/release/pgsidecar migrate apply --dir migrations --database-url "$URL" --no-backup --reason benchmark "$@" >/dev/null 2>>"$work/migrate.log"; }
elapsed() { python3 -c "import time,sys; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$1"; }

if [ -n "${RETRIEVAL_DIR:-}" ]; then
  # A kept cluster, linked as the scratch one: common.sh's cleanup stops it and removes the link.
  mkdir -p "$RETRIEVAL_DIR" && chmod 700 "$RETRIEVAL_DIR"
  [ "$(id -u)" = 0 ] && chown postgres "$RETRIEVAL_DIR"
  ln -s "$RETRIEVAL_DIR" "$work/data"
fi
if [ -f "$work/data/PG_VERSION" ]; then
  as_pg "$BIN/pg_ctl" -D "$work/data" -l "$work/pg.log" -w -o "-p $PGPORT -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories=$work -c max_connections=100 -c shared_buffers=$PG_SHARED_BUFFERS -c fsync=off \
    -c synchronous_commit=off $PG_EXTRA" start >/dev/null
else
  start_postgres "$PGPORT" 100
fi

if [ "$(psql_ -A -t -c "SELECT count(*) FROM chunks" 2>/dev/null)" != "$N" ]; then
  migrate --to 2
  started=$(date +%s.%N)
  psql_ -v n="$N" -f bench/retrieval/load.sql
  echo "loaded $N chunks in $(elapsed "$started") s"
  started=$(date +%s.%N)
  migrate --to 3
  echo "halfvec HNSW index (0003, m=16, ef_construction=64) built in $(elapsed "$started") s"
  started=$(date +%s.%N)
  psql_ -f bench/retrieval/binary_index.sql
  echo "binary-quantized HNSW index (binary_index.sql, m=16, ef_construction=64) built in $(elapsed "$started") s"
fi
migrate
psql_ -A -t -c "
  SELECT 'halfvec index ' || pg_size_pretty(pg_relation_size('chunks_embedding_hnsw'))
      || ', binary index ' || pg_size_pretty(pg_relation_size('chunks_embedding_binary_hnsw'))
      || ', chunks heap ' || pg_size_pretty(pg_relation_size('chunks'))
      || ', TOAST ' || pg_size_pretty(pg_total_relation_size(reltoastrelid))
      || ', database ' || pg_size_pretty(pg_database_size('postgres'))
    FROM pg_class WHERE relname = 'chunks'"
echo "memory: $(free -g | awk '/Mem:/ {print $3 " GiB used, " $6 " GiB cache of " $2 " GiB"}')"

./target/release/pgsidecar proxy --listen "127.0.0.1:$SIDECAR_PORT" --upstream "$URL" --auth trust \
  --pool-mode transaction --pool-size 10 2>"$work/sidecar.log" &
bench_pids+=($!)
until "$BIN/pg_isready" -q -h 127.0.0.1 -p "$SIDECAR_PORT"; do sleep 0.2; done

percentiles() { # log files -> "p50 p95 p99" in ms
  cat "$@" | python3 -c '
import sys
lat = sorted(int(l.split()[2]) for l in sys.stdin if l.strip())
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000
print(f"{len(lat)} queries: p50 {pick(0.5):.1f} ms, p95 {pick(0.95):.1f} ms, p99 {pick(0.99):.1f} ms")'
}
bench() { # clients label script [pgbench -D definitions...]
  local clients=$1 label=$2 script=$3; shift 3
  local defs=(-D n="$N" -D cand="$BQ_CANDIDATES")
  for d in "$@"; do defs+=(-D "$d"); done
  rm -f "$work"/log.*
  "$BIN/pgbench" -n -f "bench/retrieval/$script.sql" "${defs[@]}" -c "$clients" -j $(( clients < 2 ? clients : 2 )) \
    -T "$SECONDS_PER_RUN" -l --log-prefix="$work/log" -h 127.0.0.1 -p "$SIDECAR_PORT" -U postgres postgres \
    >"$work/out" 2>&1 || { cat "$work/out"; exit 1; }
  echo "$clients client(s), $label: $(percentiles "$work"/log.*)"
}

for clients in 1 8; do
  for script in ${SCRIPTS-ann ann_bq ann_metadata ann_unfiltered ann_unfiltered_bq hybrid exact_small exact_big chunks_of_a_document}; do
    bench "$clients" "$script" "$script"
  done
  bench "$clients" "retrieval.search, large tenant" search filter=NULL
  bench "$clients" "retrieval.search, public (50 %)" search "filter='{\"public\": true}'"
  bench "$clients" "retrieval.search, year (10 %)" search "filter='{\"year\": 2015}'"
  bench "$clients" "retrieval.search, lang (5 %)" search "filter='{\"lang\": \"de\"}'"
  bench "$clients" "retrieval.search, lang+year (0.5 %)" search "filter='{\"lang\": \"de\", \"year\": 2015}'"
done

echo "recall@10 against exact answers, $RECALL_QUERIES query vectors each:"
started=$(date +%s.%N)
psql_ -v queries="$RECALL_QUERIES" -v cand="$BQ_CANDIDATES" -f bench/retrieval/recall.sql
echo "(recall measured in $(elapsed "$started") s)"

if [ "$BACKUP" = 1 ]; then
  started=$(date +%s.%N)
  psql_ -A -t -c "SELECT count(*), md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))) FROM ONLY chunks t" >/dev/null
  echo "content hash of chunks ($(psql_ -A -t -c "SELECT pg_size_pretty(pg_total_relation_size('chunks') - pg_indexes_size('chunks'))")) in $(elapsed "$started") s"
  started=$(date +%s.%N)
  ./target/release/pgsidecar backup create --database-url "$URL" --output "$work/retrieval.dump" >/dev/null
  echo "backup create in $(elapsed "$started") s, dump $(du -h "$work/retrieval.dump" | cut -f1)"
  started=$(date +%s.%N)
  ./target/release/pgsidecar backup verify --scratch-url "$URL" --database-url "$URL" "$work/retrieval.dump" \
    >"$work/verify.out" 2>&1 \
    || { cat "$work/verify.out"; exit 1; }
  echo "backup verify (restore into a scratch database, hashes compared) in $(elapsed "$started") s"
fi
