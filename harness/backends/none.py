"""`none`: no observer. The baseline every overhead is measured against, run like any backend."""

from __future__ import annotations

from typing import Any

from netns import Topology

from ..kernel import KernelProbe
from ..record import BASELINE
from .base import Availability, Backend, Observation


class _Nothing:
    def loop_ended(self) -> None:
        pass

    def detach(self) -> Observation:
        return Observation()

    def close(self) -> None:
        pass


class _NothingSwitched:
    def on(self) -> None:
        pass

    def off(self) -> dict[str, Any]:
        return {"events": 0, "lost": 0}

    def tasks(self) -> list[int]:
        return []

    def close(self) -> dict[str, Any]:
        return {}


class NoneBackend(Backend):
    name = BASELINE
    description = "no observer: the baseline every overhead is measured against"
    hooks: tuple[str, ...] = ()
    params = ()

    def availability(self, probe: KernelProbe, params: dict[str, Any] | None = None) -> Availability:
        return Availability(True, "nothing to attach")

    def attach(self, topology: Topology, params: dict[str, Any]) -> _Nothing:
        return _Nothing()

    def prepare(self, topology: Topology, params: dict[str, Any]) -> _NothingSwitched:
        return _NothingSwitched()
