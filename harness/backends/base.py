"""What a backend (an observer) is: a small object with hooks; the runner owns the measurement.

    availability(probe, params) -> Availability   asks the capability probe, never the kernel directly
    check_params(params)                  optional: refuse combinations of parameters (UsageError)
    attach(topology, params) -> Attachment   load programs / open captures (timed apart)
    Attachment.loop_ended()               the measured loop is over: mark the observer's CPU so far
    Attachment.detach() -> Observation    stop observing, return what was seen and what it cost
    Attachment.close()                    release everything without results (error paths)
    prepare(topology, params) -> Switch   optional: prepared once, switched on and off under one
                                          running workload (the toggled measurement, harness/toggle.py)

The baseline ("no observer") is a backend like the others, measured the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from netns import Topology

from ..kernel import KernelProbe
from ..params import Param

@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str
    missing_hooks: tuple[str, ...] = ()


@dataclass
class Observation:
    """What one observer saw in one trial, as counts in the common schema.

    `sides` splits the same counts by the host whose socket the event belongs to (the local
    address of the event: 198.18.0.1 is the client, 198.18.0.2 the server), which is how the
    workloads declare what they must cause. `lost` is what the observer itself knows it missed
    (ring-buffer reserve failures, perf-buffer lost callbacks, pcap drops); `details` holds the
    backend's raw numbers (in-kernel cost, consumer CPU, events filtered out as foreign ...).
    """

    events: dict[str, int] = field(default_factory=dict)  # event kind -> count
    transitions: dict[str, int] = field(default_factory=dict)  # "OLD->NEW" -> count
    sides: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # side -> events/transitions
    lost: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, side: str, table: str, name: str, n: int) -> None:
        """Count n of `name` in `table` ("events" or "transitions"), in the total and for `side`."""
        total = self.events if table == "events" else self.transitions
        total[name] = total.get(name, 0) + n
        per_side = self.sides.setdefault(side, {"events": {}, "transitions": {}})[table]
        per_side[name] = per_side.get(name, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Attachment(Protocol):
    def loop_ended(self) -> None:
        """The workload's measured loop has ended: mark what the observer's own processes have
        used so far. What they spend afterwards turning raw data into events (a drain, a decode, a
        file parse) is reported as details["deferred_cpu_s"] and added to the trial's cost."""
        ...

    def detach(self) -> Observation: ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str
    description: str
    hooks: tuple[str, ...]
    params: tuple[Param, ...]

    def availability(self, probe: KernelProbe, params: dict[str, Any] | None = None) -> Availability:
        """Can this backend run here (with these parameters, where they matter)?"""
        ...

    def attach(self, topology: Topology, params: dict[str, Any]) -> Attachment: ...

    def check_params(self, params: dict[str, Any]) -> None:
        """Constraints between parameters (each alone is checked by its Param): raise UsageError.
        None by default; a backend subclasses this protocol to inherit that."""
        return None


class Switch(Protocol):
    """An observer prepared once (compiled, loaded, consumer running) and switched on and off.

    "Off" must cost what no observer costs: BPF links detached (programs stay loaded), a capture's
    packet socket closed, so nothing of the observer runs per packet or per event while off.
    """

    def on(self) -> None: ...

    def off(self) -> dict[str, Any]:
        """Switch off, after the consumer has what the on-period produced; returns that period's
        counts: {"events": n, "lost": n or None, ...} (raw, backend-specific extras allowed)."""
        ...

    def tasks(self) -> list[int]:
        """Processes whose CPU is this observer's own (its consumers), to attribute by process."""
        ...

    def close(self) -> dict[str, Any]:
        """Release everything; returns the observer's final details for the record."""
        ...
