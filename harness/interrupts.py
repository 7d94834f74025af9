"""SIGINT and SIGTERM, turned into one exception raised only where it is safe to unwind.

Raising from a signal handler at an arbitrary point is not safe: pyroute2's netlink code, for one,
catches the exception, returns an empty answer and carries on, so an interrupt became a bogus
"failed trial". Inside `critical()` (building or removing namespaces, loading or detaching BPF
programs, writing the record) a signal is remembered and raised when the section ends; anywhere
else it is raised at once, so a long workload stops promptly.

A signal stays pending until the process is down, not until it was raised once: Python drops an
exception raised where it cannot propagate ("Exception ignored in ...": logging's at-fork hook,
finalizers), and the run went on measuring as if nothing had been asked. Every later `critical()`
end and every `check()` (the runner's loops call it between trials and windows) raises it again,
unless an Interrupted is already unwinding through them.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Any, Iterator

from .errors import Interrupted

_depth = 0
_pending: str | None = None


def _handler(signum: int, frame: Any) -> None:
    global _pending
    _pending = _pending or signal.Signals(signum).name
    if not _depth:
        raise Interrupted(_pending)


def install() -> None:
    """SIGINT and SIGTERM raise Interrupted; an Interrupted Python drops is kept off the terminal (unraisablehook)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _handler)
    if sys.unraisablehook is not _unraisable:
        global _default_unraisable
        _default_unraisable = sys.unraisablehook
        sys.unraisablehook = _unraisable


_default_unraisable = sys.unraisablehook


def _unraisable(unraisable: Any) -> None:
    """An Interrupted Python had to drop stays pending and is raised at the next check: no
    "Exception ignored ... Traceback" on the user's terminal for it. Anything else as before."""
    if isinstance(unraisable.exc_value, Interrupted):
        return
    _default_unraisable(unraisable)


def pending() -> str | None:
    """The first signal received (it stays pending: the process is on its way out), or None."""
    return _pending


def reset() -> None:
    """Forget a received signal (for tests, which go on in the same process)."""
    global _pending, _depth
    _pending, _depth = None, 0


def _unwinding() -> bool:
    return isinstance(sys.exc_info()[1], Interrupted)


def check() -> None:
    """Raise the pending signal, if any: between steps of a loop that must not outlive one."""
    if _pending and not _depth and not _unwinding():
        raise Interrupted(_pending)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A section a signal must not cut: one received inside is raised when the outermost section ends."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        check()
