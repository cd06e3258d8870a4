"""psycopg 3 through pgsidecar in transaction mode: server-side prepared statements (explicit and
by threshold), pipeline mode and concurrent clients. Exits non-zero with a message on the first
wrong result. Usage: psycopg_transaction_mode.py DSN
"""
import sys
import threading

import psycopg


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def explicit_prepare(dsn: str, client: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in range(100):
            if n % 10 == 0:
                with conn.transaction():
                    row = conn.execute("SELECT %s::int + %s::int", (client, n), prepare=True).fetchone()
            else:
                row = conn.execute("SELECT %s::int + %s::int", (client, n), prepare=True).fetchone()
            check(row == (client + n,), f"client {client} round {n}: {row}")


def threshold_prepare(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.prepare_threshold = 2
        conn.prepared_max = 3
        for n in range(60):
            query = f"SELECT %s::int * {n % 6 + 1}"
            row = conn.execute(query, (n,)).fetchone()
            check(row == (n * (n % 6 + 1),), f"threshold round {n}: {row}")


def pipeline(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pipe (id int PRIMARY KEY, v text)")
        with conn.pipeline():
            cursors = []
            for n in range(50):
                conn.execute("INSERT INTO pipe VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
                             (n, f"v{n}"), prepare=True)
                cursors.append(conn.execute("SELECT v FROM pipe WHERE id = %s", (n,), prepare=True))
        values = [c.fetchone()[0] for c in cursors]
        check(values == [f"v{n}" for n in range(50)], f"pipeline results {values[:5]}...")
        try:
            with conn.pipeline():
                conn.execute("SELECT 1 / %s::int", (0,), prepare=True)
                conn.execute("SELECT 2", prepare=True)
            check(False, "division by zero did not fail")
        except psycopg.errors.DivisionByZero:
            pass
        row = conn.execute("SELECT count(*) FROM pipe", prepare=True).fetchone()
        check(row == (50,), f"after the failed pipeline: {row}")


def stale_plan(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn, autocommit=True) as ddl:
        ddl.execute("CREATE TABLE stale (a int)")
        ddl.execute("INSERT INTO stale VALUES (1)")
        for _ in range(3):
            check(conn.execute("SELECT * FROM stale", prepare=True).fetchall() == [(1,)], "before ALTER")
        ddl.execute("ALTER TABLE stale ADD COLUMN b int DEFAULT 7")
        rows = conn.execute("SELECT * FROM stale", prepare=True).fetchall()
        check(rows == [(1, 7)], f"after ALTER: {rows}")


def main() -> None:
    dsn = sys.argv[1]
    errors = []

    def run(target, *args) -> None:
        try:
            target(*args)
        except Exception as e:  # reported below, the test fails on any of them
            errors.append(f"{target.__name__}{args[1:]}: {e!r}")

    threads = [threading.Thread(target=run, args=(explicit_prepare, dsn, c)) for c in range(18)]
    threads.append(threading.Thread(target=run, args=(threshold_prepare, dsn)))
    threads.append(threading.Thread(target=run, args=(pipeline, dsn)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run(stale_plan, dsn)
    if errors:
        print("\n".join(errors))
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
