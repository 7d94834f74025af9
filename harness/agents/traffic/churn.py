"""Churn agent: connection churn between two namespaces.

server: listen on ADDRESS:PORT, accept COUNT connections. Per connection it reads BYTES (the
        request), writes BYTES back (the response), then closes at once (--closer server) or waits
        for the client's FIN and closes after it (--closer client). Then it closes the listener.
        Stops early when its stdin closes (the harness does once the client is done): connections
        it has not closed by then are closed as it exits.
client: CONCURRENCY forked workers share COUNT connections; each connects, sends BYTES, reads BYTES
        back, then closes first (--closer client) or reads until the server's FIN and then closes.
        With --rate, workers pace themselves to that many connections/s in total. Reports
        connections made, failures by errno, the loop's wall time (first worker start to last
        worker end, CLOCK_MONOTONIC), a log2 latency histogram, and the system-wide /proc/stat CPU
        ticks just before and after the loop.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import selectors
import socket
import sys
import time
from collections import Counter

from harness.counters import read_cpu_ticks
from harness.agents.common import emit, traffic_parser


class _ServerConnection:
    __slots__ = ("sock", "to_read", "waiting_for_eof")

    def __init__(self, sock: socket.socket, to_read: int):
        self.sock = sock
        self.to_read = to_read
        self.waiting_for_eof = False


def serve(address: str, port: int, count: int, closer: str, size: int) -> None:
    """Server side: accept `count` connections, read `size` bytes, answer as many and close as `closer` says;
    reports accepted, closed and errors. Stops early when stdin closes."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(4096)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")
    response = b"r" * size
    emit({"ready": True, "pid": os.getpid()})
    accepted = closed = 0
    errors: Counter = Counter()
    stop = False
    # The fast path (no bytes, server closes first) closes a connection the moment it is accepted,
    # draining the accept queue in one go per wake-up: one select() per batch, not per connection.
    fast = size == 0 and closer == "server"

    def finish(conn: _ServerConnection) -> None:
        nonlocal closed
        selector.unregister(conn.sock)
        conn.sock.close()
        closed += 1

    while closed < count and not stop:
        for key, _ in selector.select():
            if key.data == "stdin":
                if not os.read(key.fd, 4096):
                    stop = True  # the harness closed our stdin: the client is done (or gone)
                continue
            if key.data is None:  # the listener
                while accepted < count:
                    try:
                        sock, _ = listener.accept()
                    except BlockingIOError:
                        break
                    accepted += 1
                    if fast:
                        sock.close()
                        closed += 1
                        continue
                    conn = _ServerConnection(sock, size)
                    if size == 0:  # nothing to read: the client closes first, wait for its FIN
                        conn.waiting_for_eof = True
                    selector.register(sock, selectors.EVENT_READ, conn)
                continue
            conn = key.data
            try:
                data = conn.sock.recv(65536)
            except OSError as exc:
                errors[errno.errorcode.get(exc.errno, str(exc.errno))] += 1
                finish(conn)
                continue
            if not data:
                if not conn.waiting_for_eof or conn.to_read:
                    errors["early_eof"] += 1
                finish(conn)
                continue
            if conn.waiting_for_eof:
                errors["unexpected_data"] += 1
                continue
            conn.to_read -= len(data)
            if conn.to_read <= 0:
                # the whole request is in: answer (blocking: the client reads it all before closing)
                conn.sock.setblocking(True)
                conn.sock.sendall(response)
                if closer == "server":
                    finish(conn)
                else:
                    conn.waiting_for_eof = True
    selector.close()
    listener.close()
    emit({"accepted": accepted, "closed": closed, "errors": dict(errors), "pid": os.getpid(),
          "stopped_early": closed < count})


def _client_worker(address: str, port: int, count: int, closer: str, size: int,
                   interval_ns: int, start, results) -> None:
    histogram: Counter = Counter()  # bucket b holds latencies in [2^(b-1), 2^b) ns
    failures: Counter = Counter()
    request = b"q" * size
    start.wait()
    begin = time.monotonic_ns()
    made = 0
    for i in range(count):
        if interval_ns:
            delay = begin + i * interval_ns - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t0 = time.monotonic_ns()
        try:
            sock.connect((address, port))
            if size:
                sock.sendall(request)
                remaining = size
                while remaining > 0:
                    data = sock.recv(min(remaining, 65536))
                    if not data:
                        raise OSError(errno.ECONNRESET, "short response")
                    remaining -= len(data)
            if closer == "server":
                while sock.recv(65536):  # until the server's FIN
                    pass
            made += 1
            histogram[(time.monotonic_ns() - t0).bit_length()] += 1
        except OSError as exc:
            failures[errno.errorcode.get(exc.errno, str(exc.errno))] += 1
        finally:
            sock.close()  # --closer client: nothing unread, so this sends a FIN (not an RST)
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


def client(address: str, port: int, count: int, concurrency: int, closer: str, size: int,
           rate: float) -> None:
    """Client side: `count` connections over `concurrency` forked workers, paced to `rate` connections/s in
    total (0: unpaced); reports connections, failures, the loop's wall time, the latency histogram and CPU ticks."""
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    shares = [count // concurrency + (1 if i < count % concurrency else 0) for i in range(concurrency)]
    shares = [n for n in shares if n]
    interval_ns = int(len(shares) * 1e9 / rate) if rate else 0  # each worker's share of the rate
    workers = [
        ctx.Process(target=_client_worker, args=(address, port, n, closer, size, interval_ns, start, results))
        for n in shares
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
    """Command line: role, address and port, then --count, --concurrency, --closer, --bytes, --rate."""
    parser = traffic_parser(__doc__)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--closer", choices=("server", "client"), default="server")
    parser.add_argument("--bytes", type=int, default=0, help="request and response size")
    parser.add_argument("--rate", type=float, default=0, help="connections/s in total (0: as fast as possible)")
    args = parser.parse_args()
    if args.role == "server":
        serve(args.address, args.port, args.count, args.closer, args.bytes)
    else:
        client(args.address, args.port, args.count, args.concurrency, args.closer, args.bytes, args.rate)


if __name__ == "__main__":
    main()
