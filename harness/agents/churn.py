"""Churn agent: connection churn between two namespaces.

server: listen on ADDRESS:PORT, accept COUNT connections, close each one at once (the server closes
        first, so the *server* holds TIME_WAIT and the client never runs out of ephemeral ports),
        then close the listener. Stops early when its stdin closes.
client: CONCURRENCY forked workers share COUNT connections; each connects, reads until the server's
        FIN (EOF), then closes. Reports connections made, failures by errno, the loop's wall time
        (first worker start to last worker end, CLOCK_MONOTONIC), a log2 latency histogram, and the
        system-wide /proc/stat CPU ticks just before and after the loop.
"""

from __future__ import annotations

import argparse
import errno
import json
import multiprocessing
import os
import select
import socket
import sys
import time
from collections import Counter

from harness.counters import read_cpu_ticks


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve(address: str, port: int, count: int) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(4096)
    emit({"ready": True, "pid": os.getpid()})
    accepted = 0
    stop = False
    stdin = sys.stdin.fileno()
    while accepted < count and not stop:
        readable, _, _ = select.select([listener, stdin], [], [])
        if listener in readable:
            conn, _ = listener.accept()
            conn.close()
            accepted += 1
        if stdin in readable and not os.read(stdin, 4096):
            stop = True  # the harness closed our stdin: the client is done (or gone)
    listener.close()
    emit({"accepted": accepted, "pid": os.getpid(), "stopped_early": accepted < count})


def _client_worker(address: str, port: int, count: int, start, results) -> None:
    histogram: Counter = Counter()  # bucket b holds latencies in [2^(b-1), 2^b) ns
    failures: Counter = Counter()
    start.wait()
    begin = time.monotonic_ns()
    made = 0
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t0 = time.monotonic_ns()
        try:
            sock.connect((address, port))
            while sock.recv(65536):
                pass
            made += 1
            histogram[(time.monotonic_ns() - t0).bit_length()] += 1
        except OSError as exc:
            failures[errno.errorcode.get(exc.errno, str(exc.errno))] += 1
        finally:
            sock.close()
    results.put(
        {
            "pid": os.getpid(),
            "connections": made,
            "failures": dict(failures),
            "begin_ns": begin,
            "end_ns": time.monotonic_ns(),
            "histogram": dict(histogram),
        }
    )


def client(address: str, port: int, count: int, concurrency: int) -> None:
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    shares = [count // concurrency + (1 if i < count % concurrency else 0) for i in range(concurrency)]
    workers = [
        ctx.Process(target=_client_worker, args=(address, port, n, start, results)) for n in shares if n
    ]
    for worker in workers:
        worker.start()
    emit({"ready": True, "pid": os.getpid(), "workers": [w.pid for w in workers]})
    cpu_before = read_cpu_ticks()  # system-wide: brackets the loop, not interpreter start-up
    start.set()
    reports = [results.get() for _ in workers]
    cpu_after = read_cpu_ticks()
    for worker in workers:
        worker.join()
    histogram: Counter = Counter()
    failures: Counter = Counter()
    for report in reports:
        histogram.update({int(k): v for k, v in report["histogram"].items()})
        failures.update(report["failures"])
    emit(
        {
            "connections": sum(r["connections"] for r in reports),
            "failures": dict(failures),
            "duration_ns": max(r["end_ns"] for r in reports) - min(r["begin_ns"] for r in reports),
            "pids": [r["pid"] for r in reports],
            "latency_log2_ns": dict(sorted(histogram.items())),
            "cpu_ticks": {"before": cpu_before, "after": cpu_after},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    if args.role == "server":
        serve(args.address, args.port, args.count)
    else:
        client(args.address, args.port, args.count, args.concurrency)


if __name__ == "__main__":
    main()
