"""Resets agent: abortive closes and connections refused.

server: listen on ADDRESS:PORT and accept ABORTS connections, keeping each open; when its stdin
        closes (the client is done) it drains the accept queue, checks every accepted socket for
        the peer's reset (recv fails with ECONNRESET), closes them all and reports.
client: ABORTS times: connect to PORT, set SO_LINGER {on, 0 s}, close: tcp_disconnect sends an RST
        instead of a FIN. Then REFUSED times: connect to CLOSED_PORT, where nothing listens: the
        server's stack answers the SYN with an RST and connect fails with ECONNREFUSED. Reports
        outcomes by errno, the loop's wall time, a log2 latency histogram (connect to close, or
        connect to refusal) and /proc/stat CPU ticks around the loop.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import sys
import time
from collections import Counter

from harness.counters import read_cpu_ticks
from harness.agents.common import emit, traffic_parser

LINGER_ABORT = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}


def serve(address: str, port: int, count: int) -> None:
    """Server side: accept up to `count` connections and keep them open; once stdin closes, drain the queue,
    read each socket's outcome (eof, data, still open or an errno), close them and report."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(4096)
    listener.setblocking(False)
    emit({"ready": True, "pid": os.getpid()})
    accepted: list[socket.socket] = []
    stdin = sys.stdin.fileno()
    stop = False
    while not stop:
        readable, _, _ = select.select([listener, stdin], [], [])
        if stdin in readable and not os.read(stdin, 4096):
            stop = True
        while len(accepted) < count:  # also drains the queue once the client is done
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                break
            accepted.append(sock)
    outcomes: Counter = Counter()
    for sock in accepted:
        sock.setblocking(False)
        try:
            data = sock.recv(1)
            outcomes["eof" if not data else "data"] += 1
        except BlockingIOError:
            outcomes["still_open"] += 1
        except OSError as exc:
            outcomes[errno.errorcode.get(exc.errno, str(exc.errno))] += 1
        sock.close()
    listener.close()
    emit({"accepted": len(accepted), "outcomes": dict(outcomes), "pid": os.getpid()})


def client(address: str, port: int, closed_port: int, aborts: int, refused: int) -> None:
    """Client side: `aborts` connections closed with a zero linger (an RST), then `refused` connects to
    `closed_port`; reports outcomes by errno, the loop's wall time, the latency histogram and CPU ticks."""
    histogram: Counter = Counter()
    outcomes: dict[str, Counter] = {"abort": Counter(), "refused": Counter()}
    emit({"ready": True, "pid": os.getpid()})
    cpu_before = read_cpu_ticks()
    begin = time.monotonic_ns()
    for kind, target, count in (("abort", port, aborts), ("refused", closed_port, refused)):
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t0 = time.monotonic_ns()
            try:
                sock.connect((address, target))
                if kind == "abort":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
                    sock.close()
                    outcomes[kind]["aborted"] += 1
                else:
                    outcomes[kind]["connected"] += 1  # something listens there: not what was asked
            except OSError as exc:
                outcomes[kind][errno.errorcode.get(exc.errno, str(exc.errno))] += 1
            finally:
                sock.close()
            histogram[(time.monotonic_ns() - t0).bit_length()] += 1
    end = time.monotonic_ns()
    cpu_after = read_cpu_ticks()
    emit({
        "outcomes": {k: dict(v) for k, v in outcomes.items()},
        "duration_ns": end - begin,
        "latency_log2_ns": dict(sorted(histogram.items())),
        "cpu_ticks": {"before": cpu_before, "after": cpu_after},
    })


def main() -> None:
    """Command line: role, address and port, then --closed-port, --aborts, --refused."""
    parser = traffic_parser(__doc__)
    parser.add_argument("--closed-port", type=int, default=0)
    parser.add_argument("--aborts", type=int, default=0)
    parser.add_argument("--refused", type=int, default=0)
    args = parser.parse_args()
    if args.role == "server":
        serve(args.address, args.port, args.aborts)
    else:
        client(args.address, args.port, args.closed_port, args.aborts, args.refused)


if __name__ == "__main__":
    main()
