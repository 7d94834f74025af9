"""What a backend (an observer) is: a small object with hooks; the runner owns the measurement.

    availability(probe) -> Availability   asks the capability probe, never the kernel directly
    attach(topology, params) -> Attachment   load programs / open captures (timed apart)
    Attachment.detach() -> Observation    stop observing, return what was seen and what it cost
    Attachment.close()                    release everything without results (error paths)

The baseline ("no observer") is a backend like the others, measured the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from netns import Topology

from ..kernel import KernelProbe
from ..params import Param

# The common event schema's kinds (see DESIGN.md); every backend maps what it sees into these.
EVENT_KINDS = (
    "state_change",
    "retransmit",
    "synack_retransmit",
    "reset_sent",
    "reset_received",
    "sock_destroy",
    "probe",
)


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str
    missing_hooks: tuple[str, ...] = ()


@dataclass
class Observation:
    events: dict[str, int] = field(default_factory=dict)  # event kind -> count
    transitions: dict[str, int] = field(default_factory=dict)  # "OLD->NEW" -> count
    lost: int = 0  # events the observer itself reports it lost (kernel-side drops included)
    details: dict[str, Any] = field(default_factory=dict)  # backend-specific raw numbers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Attachment(Protocol):
    def detach(self) -> Observation: ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str
    description: str
    hooks: tuple[str, ...]
    params: tuple[Param, ...]

    def availability(self, probe: KernelProbe) -> Availability: ...

    def attach(self, topology: Topology, params: dict[str, Any]) -> Attachment: ...
