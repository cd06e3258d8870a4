"""psycopg's cancel_safe() over TLS through pgsidecar: libpq 17+ sends the CancelRequest over TLS
and treats a connection closed without close_notify as a failed cancel. Prints `ok` when the
running query was cancelled and cancel_safe() itself raised nothing."""

import sys
import threading
import time

import psycopg
from psycopg import errors


def wait_until_running(dsn: str) -> None:
    """Waits, on a second connection, until the server runs the query to cancel."""
    with psycopg.connect(dsn, autocommit=True) as watcher:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE query = 'SELECT pg_sleep(5)' AND state = 'active'"
            ).fetchone()
            if row[0] > 0:
                return
            time.sleep(0.02)
    raise AssertionError("the query never started")


def main(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        outcome = {}

        def run():
            started = time.monotonic()
            try:
                conn.execute("SELECT pg_sleep(5)")
                outcome["query"] = "finished"
            except errors.QueryCanceled:
                outcome["query"] = "cancelled"
            outcome["took"] = time.monotonic() - started

        worker = threading.Thread(target=run)
        worker.start()
        wait_until_running(dsn)
        conn.cancel_safe(timeout=5.0)
        worker.join()
        assert outcome["query"] == "cancelled", outcome
        assert outcome["took"] < 4.0, outcome
        # The session goes on after the cancel.
        assert conn.execute("SELECT 1").fetchone() == (1,)
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1])
