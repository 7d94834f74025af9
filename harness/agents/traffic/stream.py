"""Stream agent: one bulk transfer, client to server.

server: accept one connection, read (recv_into a reused buffer) until the client's FIN, close.
        Reports bytes received and the time from the first byte to the FIN.
client: connect, send MESSAGE-byte messages until BYTES are sent or DURATION seconds have passed,
        shut down its sending side (FIN after the data), wait for the server's FIN (so the clock
        covers delivery, not just the copy into the send buffer), close. Reports bytes sent,
        messages, the loop's wall time, a log2 histogram of per-message send latency and
        /proc/stat CPU ticks around the loop.
        Live mode (--live): send until the harness closes stdin; bytes sent are published in
        --counter (harness/workloads/live.py).
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter

from harness.counters import read_cpu_ticks
from harness.agents.common import emit, open_counter, stdin_closed, traffic_parser


def serve(address: str, port: int) -> None:
    """Server side: accept one connection, read until the client's FIN, close; reports bytes received and the
    time from the first byte to the FIN."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(1)
    emit({"ready": True, "pid": os.getpid()})
    conn, _ = listener.accept()
    buffer = bytearray(1 << 20)
    received = 0
    first_ns = None
    while True:
        n = conn.recv_into(buffer)
        if not n:
            break
        if first_ns is None:
            first_ns = time.monotonic_ns()
        received += n
    end_ns = time.monotonic_ns()
    conn.close()  # after the client's FIN: the server closes second
    listener.close()
    emit({"received": received, "receive_ns": end_ns - (first_ns or end_ns), "pid": os.getpid()})


def client(address: str, port: int, total: int, duration_s: float, message: int, live: bool = False,
           counter_path: str | None = None) -> None:
    """Client side: send `message`-byte messages until `total` bytes are sent (for `duration_s` seconds when
    given; until stdin closes when `live`), then FIN and wait for the server's; reports bytes, messages, the
    loop's wall time, the send latency histogram and CPU ticks."""
    counter = open_counter(counter_path)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.connect((address, port))
    payload = memoryview(b"d" * message)
    histogram: Counter = Counter()
    emit({"ready": True, "pid": os.getpid()})
    cpu_before = read_cpu_ticks()
    begin = time.monotonic_ns()
    deadline = begin + int(duration_s * 1e9) if duration_s else None
    sent = messages = 0
    send = sock.sendall
    clock = time.monotonic_ns
    while True:
        if live:
            chunk = payload
            if messages % 16 == 0 and stdin_closed():  # one select() per 16 messages
                break
        elif deadline is None:
            left = total - sent
            if left <= 0:
                break
            chunk = payload if left >= message else payload[:left]
        else:
            chunk = payload
        t0 = clock()
        send(chunk)
        t1 = clock()
        histogram[(t1 - t0).bit_length()] += 1
        sent += len(chunk)
        messages += 1
        if counter is not None:
            counter[0] = sent
        if deadline is not None and t1 >= deadline:
            break
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):  # the server's FIN: everything sent has been read
        pass
    end = time.monotonic_ns()
    cpu_after = read_cpu_ticks()
    sock.close()
    emit({
        "sent": sent,
        "messages": messages,
        "duration_ns": end - begin,
        "latency_log2_ns": dict(sorted(histogram.items())),
        "cpu_ticks": {"before": cpu_before, "after": cpu_after},
    })


def main() -> None:
    """Command line: role, address and port, then --bytes, --duration, --message, --live, --counter."""
    parser = traffic_parser(__doc__)
    parser.add_argument("--bytes", type=int, default=0)
    parser.add_argument("--duration", type=float, default=0.0)
    parser.add_argument("--message", type=int, default=131072)
    parser.add_argument("--live", action="store_true", help="send until stdin closes")
    parser.add_argument("--counter", help="live operation counter file (harness/workloads/live.py)")
    args = parser.parse_args()
    if args.role == "server":
        serve(args.address, args.port)
    else:
        client(args.address, args.port, args.bytes, args.duration, args.message, args.live, args.counter)


if __name__ == "__main__":
    main()
