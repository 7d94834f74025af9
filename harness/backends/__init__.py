"""The backend registry: the CLI, the runner and the benchmark suite discover observers here."""

from __future__ import annotations

from ..errors import UsageError
from .base import Attachment, Availability, Backend, Observation
from .kprobe import KprobeBackend
from .none import NoneBackend
from .pcap import PcapBackend
from .peers import TOOLS, PeerBackend
from .sockdiag import SockdiagBackend
from .tracefs import TracefsBackend
from .tracepoint import TracepointBackend

BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (
    NoneBackend(),
    TracepointBackend(),
    TracepointBackend(empty=True),
    PcapBackend(),
    KprobeBackend(),
    KprobeBackend(fentry=True),
    TracefsBackend(),
    SockdiagBackend(),
    *(PeerBackend(tool) for tool in TOOLS),
)}


def get_backend(name: str) -> Backend:
    """The registered backend `name` (UsageError naming the valid ones otherwise)."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise UsageError(f"unknown backend {name!r} (valid: {', '.join(BACKENDS)})") from None


__all__ = ["Attachment", "Availability", "BACKENDS", "Backend", "Observation", "get_backend"]
