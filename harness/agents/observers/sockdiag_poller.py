"""sock_diag poller: snapshots of a namespace's TCP sockets at a fixed interval, diffed as it goes.

    python -m harness.agents.observers.sockdiag_poller --interval-ms 10 --keep 198.18.7.1 --keep 198.18.7.2

Run inside one host's namespace (nsenter) by harness/backends/sockdiag.py: pyroute2's DiagSocket
takes no netns argument, and a NETLINK_SOCK_DIAG socket lists the sockets of the namespace it was
created in, so it is created here, after the namespace was entered. This is what `ss` and the
monitoring agents that poll socket state do: one SOCK_DIAG_BY_FAMILY dump (inet_diag, Linux 2.6.14+;
the sock_diag family since 3.3) per poll.

Every `interval_ms` (a fixed schedule: a poll that runs late does not shift the next ones) a dump
of the IPv4 TCP sockets in every state but TIME_WAIT (a TIME_WAIT entry is a timewait sock, no
longer the full socket the tracepoint follows; under churn there are 60 s worth of them, which
would make each poll cost grow with history) is reduced to {cookie: state} for the sockets to or
from the `--keep` addresses, and compared with the previous one (snapshot_diff in
harness/decoders/sockdiag_infer.py). The kernel's own counters (/proc/net/snmp, this namespace's)
are read at the start and the end, so the connections the polls never saw are measured, not guessed.

Protocol (JSON lines on stdout): {"ready": true, ...}; stdin closed -> one last poll ->
{"result": {...}}. On a failure: {"error": "one line"}, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys
import time

from harness.decoders.sockdiag_infer import SnapshotDiff, read_tcp_snmp
from harness.agents.common import cpu_seconds, emit

EXIT_FAILED = 2
TCP_TIME_WAIT = 6
ALL_BUT_TIME_WAIT = 0xFFF & ~(1 << TCP_TIME_WAIT)  # bit n: TCP state n (include/net/tcp_states.h)


def run(args: argparse.Namespace) -> int:
    """Poll every interval until stdin closes, then once more and one result line; EXIT_FAILED without sock_diag."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the harness stops us through stdin
    from pyroute2 import DiagSocket

    keep = set(args.keep)
    try:
        diag = DiagSocket()
        diag.bind()
    except Exception as exc:  # NetlinkError, OSError: one line
        emit({"error": f"cannot open a sock_diag socket: {exc}"})
        return EXIT_FAILED

    def snapshot() -> dict[int, int]:
        sockets = {}
        for msg in diag.get_sock_stats(family=socket.AF_INET, states=ALL_BUT_TIME_WAIT, extensions=0):
            if msg["idiag_src"] in keep or msg["idiag_dst"] in keep:
                sockets[msg["idiag_cookie"]] = msg["idiag_state"]
        return sockets

    snmp_before = read_tcp_snmp()
    diff = SnapshotDiff()
    interval_s = args.interval_ms / 1000
    durations = []
    stdin = sys.stdin.fileno()
    started_cpu = cpu_seconds()
    diff.feed(snapshot())  # the state before the workload: listeners, nothing else
    emit({"ready": True, "pid": os.getpid(), "cpu_s": started_cpu})
    started = time.monotonic()
    next_poll = started + interval_s
    late = 0
    try:
        while True:
            readable, _, _ = select.select([stdin], [], [], max(0.0, next_poll - time.monotonic()))
            if readable and not os.read(stdin, 4096):
                break
            now = time.monotonic()
            if now < next_poll:
                continue
            begin = time.perf_counter()
            diff.feed(snapshot())
            durations.append(time.perf_counter() - begin)
            next_poll += interval_s
            if next_poll < time.monotonic():  # the poll took longer than the interval: skip ahead
                late += 1
                next_poll = time.monotonic() + interval_s
        diff.feed(snapshot())  # the state after the workload
    finally:
        diag.close()
    elapsed = time.monotonic() - started
    snmp_after = read_tcp_snmp()
    durations.sort()
    emit({"result": {
        **diff.result(),
        "snmp_delta": {k: snmp_after[k] - snmp_before[k] for k in snmp_before},
        "polls": len(durations),
        "polls_late": late,
        "elapsed_s": round(elapsed, 4),
        "achieved_polls_per_s": round(len(durations) / elapsed, 2) if elapsed else None,
        "poll_duration_us": {
            "p50": round(durations[len(durations) // 2] * 1e6, 1) if durations else None,
            "max": round(durations[-1] * 1e6, 1) if durations else None,
        },
        "cpu_s_polling": round(cpu_seconds() - started_cpu, 4),
    }})
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line: --interval-ms (> 0, else an error line and EXIT_FAILED) and the --keep addresses."""
    parser = argparse.ArgumentParser(prog="sockdiag_poller", description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval-ms", type=float, required=True)
    parser.add_argument("--keep", action="append", default=[], metavar="ADDRESS",
                        help="count only sockets to or from this address (repeatable)")
    args = parser.parse_args(argv)
    if not args.interval_ms > 0:
        emit({"error": f"--interval-ms must be > 0, not {args.interval_ms}"})
        return EXIT_FAILED
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
