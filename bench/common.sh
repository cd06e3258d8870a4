# Shared by the benchmark scripts (sourced, not run): a scratch directory, a throwaway PostgreSQL
# with a pgbench scale-10 database, and cleanup of everything started. Callers append the pids of
# processes they start to `bench_pids`.
BIN=/usr/lib/postgresql/15/bin
work=$(mktemp -d /tmp/pgsidecar-bench.XXXX)
chmod 755 "$work"
[ "$(id -u)" = 0 ] && chown postgres "$work"
bench_pids=()
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

bench_cleanup() {
  for pid in "${bench_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$work/pgbouncer.pid" ] && kill "$(cat "$work/pgbouncer.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  as_pg "$BIN/pg_ctl" -D "$work/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap bench_cleanup EXIT

start_postgres() { # port max_connections
  as_pg "$BIN/initdb" -D "$work/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
  as_pg "$BIN/pg_ctl" -D "$work/data" -l "$work/pg.log" -w \
    -o "-p $1 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work -c max_connections=$2 -c shared_buffers=${PG_SHARED_BUFFERS:-256MB} -c fsync=off -c synchronous_commit=off ${PG_EXTRA:-}" \
    start >/dev/null
  "$BIN/pgbench" -i -q -s 10 -h 127.0.0.1 -p "$1" -U postgres postgres >/dev/null 2>&1
}

start_pgbouncer_config() { # listen-port postgres-port pool-size [extra ini lines on stdin]
  {
    cat <<INI
[databases]
* = host=127.0.0.1 port=$2
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $1
unix_socket_dir =
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = $3
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
    cat
  } > "$work/pgbouncer.ini"
  echo '"postgres" ""' > "$work/userlist.txt"
  [ "$(id -u)" = 0 ] && chown postgres "$work"/pgbouncer.ini "$work"/userlist.txt
  return 0
}

start_pgbouncer() { # listen-port postgres-port pool-size [extra ini lines on stdin]
  start_pgbouncer_config "$@"
  # runuser starts PgBouncer with the soft descriptor limit of 1,024, which a thousand
  # clients exceed: raise it to the hard limit first.
  as_pg sh -c 'ulimit -n "$(ulimit -Hn)" && exec pgbouncer -d "$1"' sh "$work/pgbouncer.ini"
}

# CPU time a process has used (user + system), in clock ticks of TICK per second.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
