"""LISTEN through pgsidecar in transaction mode with psycopg's own notifies() API.

Usage: psycopg_notifies.py DSN COUNT. A listener subscribes; a second connection (from the same
pool, which a pinned listener would exhaust at pool_size 1) sends COUNT notifications, each
reporting the server pid that sent it. Prints "ok" when every one arrived once, in order, with
its channel, payload and sender pid.
"""

import sys

import psycopg

dsn, count = sys.argv[1], int(sys.argv[2])

listener = psycopg.connect(dsn, autocommit=True)
listener.execute("LISTEN psycopg_channel")

sender = psycopg.connect(dsn, autocommit=True)
sent = []
for n in range(count):
    pid = sender.execute(
        "SELECT pg_backend_pid() FROM (SELECT pg_notify('psycopg_channel', %s)) AS sent",
        (f"payload-{n}",),
    ).fetchone()[0]
    sent.append((f"payload-{n}", pid))

received = [
    (note.payload, note.pid)
    for note in listener.notifies(timeout=20, stop_after=count)
    if note.channel == "psycopg_channel"
]
if received != sent:
    print(f"sent {sent}\nreceived {received}")
    sys.exit(1)

# After UNLISTEN nothing of the channel arrives: a marker sent after it comes first.
listener.execute("UNLISTEN psycopg_channel")
listener.execute("LISTEN marker")
sender.execute("SELECT pg_notify('psycopg_channel', 'after unlisten')")
sender.execute("NOTIFY marker, 'marker'")
first = next(listener.notifies(timeout=20, stop_after=1))
if first.channel != "marker":
    print(f"notified after UNLISTEN: {first}")
    sys.exit(1)
print("ok")
