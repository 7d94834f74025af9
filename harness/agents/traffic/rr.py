"""Request/response agent: transactions on persistent connections.

server: listen on ADDRESS:PORT; on every connection, answer each REQUEST-byte request with a
        RESPONSE-byte response; close a connection after the client's FIN (the client closes first).
        Stops when CONNECTIONS connections have closed, or early when its stdin closes.
client: open CONNECTIONS connections, then run TRANSACTIONS request/response round trips spread
        over them, one outstanding transaction per connection (epoll, non-blocking sockets, one
        process). After its last response a connection is closed (nothing unread: a FIN).
        Reports transactions done, the loop's wall time (first request to last response), a log2
        histogram of transaction latency, and /proc/stat CPU ticks around the loop.
        Live mode (--transactions 0): transactions go on until the harness closes stdin; each one
        done is published in --counter (harness/workloads/live.py).
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import sys
import time
from collections import Counter

from harness.counters import read_cpu_ticks
from harness.agents.common import emit, open_counter, traffic_parser


class _Conn:
    """One non-blocking connection: bytes still to send, bytes still expected."""

    __slots__ = ("sock", "outbox", "expecting", "started_ns")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.outbox = memoryview(b"")
        self.expecting = 0
        self.started_ns = 0


def _flush(selector: selectors.BaseSelector, conn: _Conn) -> None:
    """Send what the socket takes now; wait for EPOLLOUT only when it takes less than all."""
    while conn.outbox:
        try:
            sent = conn.sock.send(conn.outbox)
        except BlockingIOError:
            break
        conn.outbox = conn.outbox[sent:]
    selector.modify(conn.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbox else 0), conn)


def serve(address: str, port: int, connections: int, request: int, response: int) -> None:
    """Server side: answer each `request`-byte request with `response` bytes until `connections` connections
    have closed (or stdin closes); reports accepted, closed, answered and errors."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(1024)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "listener")
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")
    answer = b"s" * response
    emit({"ready": True, "pid": os.getpid()})
    accepted = closed = answered = 0
    errors: Counter = Counter()
    stop = False
    while closed < connections and not stop:
        for key, events in selector.select():
            if key.data == "stdin":
                stop = not os.read(key.fd, 4096)
                continue
            if key.data == "listener":
                while True:
                    try:
                        sock, _ = listener.accept()
                    except BlockingIOError:
                        break
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conn = _Conn(sock)
                    conn.expecting = request
                    selector.register(sock, selectors.EVENT_READ, conn)
                    accepted += 1
                continue
            conn = key.data
            if events & selectors.EVENT_WRITE:
                _flush(selector, conn)
            if not events & selectors.EVENT_READ:
                continue
            try:
                data = conn.sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError as exc:
                errors[errno.errorcode.get(exc.errno, str(exc.errno))] += 1
                data = b""
            if not data:  # the client's FIN after its last transaction
                if conn.expecting != request:
                    errors["eof_mid_request"] += 1
                selector.unregister(conn.sock)
                conn.sock.close()
                closed += 1
                continue
            conn.expecting -= len(data)
            if conn.expecting < 0:
                errors["request_overrun"] += 1
            if conn.expecting <= 0:
                conn.expecting = request
                answered += 1
                conn.outbox = memoryview(answer)
                _flush(selector, conn)
    selector.close()
    listener.close()
    emit({"accepted": accepted, "closed": closed, "answered": answered, "errors": dict(errors),
          "pid": os.getpid(), "stopped_early": closed < connections})


def client(address: str, port: int, connections: int, transactions: int, request: int, response: int,
           counter_path: str | None = None) -> None:
    """Client side: `transactions` round trips over `connections` connections, one outstanding per connection
    (0: until stdin closes, the count published in `counter_path`); reports transactions, failures, the loop's
    wall time, the latency histogram and CPU ticks."""
    selector = selectors.DefaultSelector()
    counter = open_counter(counter_path)
    live = transactions == 0
    conns = []
    failures: Counter = Counter()
    for _ in range(connections):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.connect((address, port))  # blocking: set-up is not part of the measured loop
        except OSError as exc:
            failures[errno.errorcode.get(exc.errno, str(exc.errno))] += 1
            sock.close()
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conns.append(_Conn(sock))
    ask = b"c" * request
    histogram: Counter = Counter()
    emit({"ready": True, "pid": os.getpid(), "connections": len(conns)})
    cpu_before = read_cpu_ticks()
    begin = time.monotonic_ns()
    to_start, done, open_conns = (-1 if live else transactions), 0, len(conns)
    if live:  # the stop signal: stdin closes
        selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")

    def start(conn: _Conn) -> None:
        nonlocal to_start
        to_start -= 1
        conn.expecting = response
        conn.started_ns = time.monotonic_ns()
        conn.outbox = memoryview(ask)
        _flush(selector, conn)

    def close(conn: _Conn) -> None:
        nonlocal open_conns
        selector.unregister(conn.sock)
        conn.sock.close()
        open_conns -= 1

    for conn in conns:
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    for conn in conns:
        if to_start:
            start(conn)
        else:
            close(conn)
    while open_conns:
        for key, events in selector.select():
            conn = key.data
            if conn == "stdin":
                if not os.read(key.fd, 4096):
                    selector.unregister(key.fd)
                    to_start = 0  # finish the transactions under way, then close
                continue
            if events & selectors.EVENT_WRITE:
                _flush(selector, conn)
            if not events & selectors.EVENT_READ:
                continue
            try:
                data = conn.sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError as exc:
                failures[errno.errorcode.get(exc.errno, str(exc.errno))] += 1
                data = b""
            if not data:
                failures["server_closed"] += 1
                close(conn)
                continue
            conn.expecting -= len(data)
            if conn.expecting > 0:
                continue
            done += 1
            if counter is not None:
                counter[0] = done
            histogram[(time.monotonic_ns() - conn.started_ns).bit_length()] += 1
            if to_start:
                start(conn)
            else:
                close(conn)  # nothing unread: close() sends a FIN, the client closes first
    end = time.monotonic_ns()
    cpu_after = read_cpu_ticks()
    selector.close()
    emit({
        "transactions": done,
        "connections": len(conns),
        "failures": dict(failures),
        "duration_ns": end - begin,
        "latency_log2_ns": dict(sorted(histogram.items())),
        "cpu_ticks": {"before": cpu_before, "after": cpu_after},
    })


def main() -> None:
    """Command line: role, address and port, then --connections, --transactions, --request, --response, --counter."""
    parser = traffic_parser(__doc__)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--transactions", type=int, default=0)
    parser.add_argument("--request", type=int, required=True)
    parser.add_argument("--response", type=int, required=True)
    parser.add_argument("--counter", help="live operation counter file (harness/workloads/live.py)")
    args = parser.parse_args()
    if args.role == "server":
        serve(args.address, args.port, args.connections, args.request, args.response)
    else:
        client(args.address, args.port, args.connections, args.transactions, args.request, args.response,
               args.counter)


if __name__ == "__main__":
    main()
