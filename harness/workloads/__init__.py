"""The workload registry: the CLI, the runner and the benchmark suite discover workloads here."""

from __future__ import annotations

from ..errors import UsageError
from .base import GroundTruth, Workload, WorkloadError
from .churn import Churn
from .resets import Resets
from .rr import RequestResponse
from .stream import Loss, Stream
from .synack import SynAck

WORKLOADS: dict[str, Workload] = {
    workload.name: workload
    for workload in (Churn(), RequestResponse(), Stream(), Resets(), Loss(), SynAck())
}


def get_workload(name: str) -> Workload:
    """The registered workload `name` (UsageError naming the valid ones otherwise)."""
    try:
        return WORKLOADS[name]
    except KeyError:
        raise UsageError(f"unknown workload {name!r} (valid: {', '.join(WORKLOADS)})") from None


__all__ = ["GroundTruth", "WORKLOADS", "Workload", "WorkloadError", "get_workload"]
