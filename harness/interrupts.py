"""SIGINT and SIGTERM, turned into one exception raised only where it is safe to unwind.

Raising from a signal handler at an arbitrary point is not safe: pyroute2's netlink code, for one,
catches the exception, returns an empty answer and carries on, so an interrupt became a bogus
"failed trial". Inside `critical()` (building or removing namespaces, loading or detaching BPF
programs, writing the record) a signal is remembered and raised when the section ends; anywhere
else it is raised at once, so a long workload stops promptly.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any, Iterator

from .errors import Interrupted

_depth = 0
_pending: str | None = None


def _handler(signum: int, frame: Any) -> None:
    global _pending
    name = signal.Signals(signum).name
    if _depth:
        _pending = _pending or name
        return
    raise Interrupted(name)


def install() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _handler)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending:
            name, _pending = _pending, None
            raise Interrupted(name)
