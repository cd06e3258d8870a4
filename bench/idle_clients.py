"""Opens idle client connections through the proxy in two equal batches and reports the proxy's
resident memory per client from the second batch, so that allocator warm-up is not counted.

Usage: idle_clients.py PORT N PROXY_PID
"""
import sys
import time

import psycopg


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_batch(port: int, count: int) -> list:
    connections = []
    for _ in range(count):
        conn = psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True)
        conn.execute("SELECT 1")
        connections.append(conn)
    time.sleep(1)
    return connections


def main() -> None:
    port, count, pid = (int(a) for a in sys.argv[1:4])
    first = open_batch(port, count)
    middle = rss_kib(pid)
    second = open_batch(port, count)
    after = rss_kib(pid)
    per_client = (after - middle) / count
    print(f"{count} more idle clients (after {count} already open): proxy RSS {middle} KiB -> {after} KiB, "
          f"{per_client:.2f} KiB per idle client")
    for conn in first + second:
        conn.close()


if __name__ == "__main__":
    main()
