"""What every agent shares: its JSON-lines protocol, its own CPU time, its command line's common part.

Agents import nothing heavy (no pyroute2, no bcc): they start in milliseconds inside a namespace.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys


def emit(obj: dict) -> None:
    """One JSON object per line on stdout, flushed: the harness reads ready/result messages."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    """This process's user + system CPU time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def traffic_parser(doc: str | None) -> argparse.ArgumentParser:
    """A traffic agent's command line: its role, and the server's address and port."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, required=True)
    return parser


COUNTER_STRIDE = 8  # 64-bit slots per writer: one 64-byte cache line each (as in agents/traffic/c/churn.c)


def open_counter(path: str | None, slot: int = 0):
    """A live operation counter in a shared file (harness/workloads/live.py reads it), or None.

    Returns a one-element memoryview of unsigned 64-bit integers: `counter[0] = done` publishes
    the count with one store, no syscall, so reading it costs the measured processes nothing."""
    if not path:
        return None
    import mmap
    import os

    fd = os.open(path, os.O_RDWR)
    try:
        size = (slot + 1) * COUNTER_STRIDE * 8
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
        mapped = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    start = slot * COUNTER_STRIDE
    return memoryview(mapped).cast("Q")[start:start + 1]


def stdin_closed() -> bool:
    """True once the harness has closed our stdin (its stop signal), without blocking."""
    import os
    import select

    readable, _, _ = select.select([0], [], [], 0)
    return bool(readable) and not os.read(0, 4096)
