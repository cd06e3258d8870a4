"""A stand-in application for the container test: WRITERS threads, each a client of DATABASE_URL
(its pod's sidecar), running one-row write transactions until /tmp/stop exists, then printing a
JSON report. BEGIN, INSERT and COMMIT are sent one by one, so that every error is known to have
happened before the transaction began (safe to retry), inside it (a failed transaction), or at
COMMIT with the connection lost (outcome unknown)."""

import json
import os
import threading
import time

import psycopg

URL = os.environ["DATABASE_URL"]
POD = os.environ["POD"]
WRITERS = int(os.environ.get("WRITERS", "4"))

lock = threading.Lock()
report = {"committed": 0, "unknown": 0, "failed": [], "before_begin": {}, "connect_errors": 0,
          "dirty": 0}


def count(key, code=None):
    with lock:
        if code is None:
            report[key] += 1
        else:
            report[key][code] = report[key].get(code, 0) + 1


def on_notice(diag):
    # 25001: BEGIN inside a transaction, i.e. a server connection handed on mid-transaction.
    if diag.sqlstate == "25001":
        count("dirty")


def fatal_code(message):
    """libpq reports a FATAL error followed by the connection's close without its SQLSTATE, so
    the two the sidecar sends between transactions are told apart by their text."""
    if "no server connection became free" in message:
        return "53300"
    if "terminating connection due to administrator command" in message:
        return "57P01"
    return "connection_lost"


def writer(n):
    seq, conn = 0, None
    while not os.path.exists("/tmp/stop"):
        if conn is None:
            try:
                conn = psycopg.connect(URL, autocommit=True, connect_timeout=5)
                conn.add_notice_handler(on_notice)
            except psycopg.Error:
                count("connect_errors")  # the sidecar is restarting: not a transaction
                conn = None
                time.sleep(0.05)
                continue
        stage = "begin"
        try:
            conn.execute("BEGIN")
            stage = "insert"
            seq += 1
            conn.execute("INSERT INTO ledger (pod, writer, seq) VALUES (%s, %s, %s)", (POD, n, seq))
            stage = "commit"
            conn.execute("COMMIT")
            count("committed")
        except psycopg.Error as e:
            code = e.sqlstate or fatal_code(str(e))
            if stage == "begin":
                count("before_begin", code)
            elif stage == "commit" and code == "connection_lost":
                count("unknown")
            else:
                with lock:
                    report["failed"].append(f"{stage}: {code}: {str(e).strip()}")
            try:
                conn.close()
            finally:
                conn = None


threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(report), flush=True)
