"""What a workload is, and the one way to run an agent inside a namespace.

A workload makes real TCP traffic between a topology's two hosts and returns its GroundTruth:
what the generator itself did (its own counts), how long its measured loop ran, the processes it
used (so observers' pid attribution can be scored), and the events it must cause per side.
The runner adds the kernel's own counters (nstat) around it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from netns import Host, Topology

from ..params import Param


class WorkloadError(RuntimeError):
    """The generator failed (an agent crashed, timed out, or did not do what it was asked)."""


@dataclass
class GroundTruth:
    generator: dict[str, Any]  # the generator's own counts, e.g. {"connections": 1000}
    operations: int  # units of work done in the measured loop (connections, transactions ...)
    duration_s: float  # the measured loop's wall time, from the agents' own clocks
    expected: dict[str, Any]  # per side: {"transitions": {"OLD->NEW": n}, "events": {kind: n}}
    pids: dict[str, list[int]] = field(default_factory=dict)  # role -> pids that made the traffic
    latency: dict[str, Any] | None = None  # per-operation latency summary
    cpu_ticks: dict[str, dict[str, int]] | None = None  # /proc/stat around the loop: before, after

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Workload(Protocol):
    name: str
    description: str
    operation: str  # what one operation is, for rates: "connection", "transaction", "byte"
    params: tuple[Param, ...]

    def run(self, topology: Topology, params: dict[str, Any]) -> GroundTruth: ...


class Agent:
    """A `harness.agents.<module>` process inside a host's namespace, speaking JSON lines."""

    def __init__(self, host: Host, module: str, args: list[str]):
        self.host = host
        self.argv = [sys.executable, "-m", f"harness.agents.{module}", *args]
        self.process = host.popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def read_message(self, what: str) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=5)
            error = self.process.stderr.read().strip().splitlines()
            raise WorkloadError(
                f"{self.host.role} agent exited ({self.process.returncode}) before {what}: "
                f"{error[-1] if error else 'no output'}"
            )
        return json.loads(line)

    def finish(self, timeout_s: float) -> dict[str, Any]:
        """Close stdin (the agent's signal to stop), read its result, reap it."""
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        try:
            result = self.read_message("its result")
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise WorkloadError(f"{self.host.role} agent did not exit within {timeout_s:.0f} s") from None
        return result

    def wait_result(self, timeout_s: float) -> dict[str, Any]:
        """Wait for the agent to finish its work by itself, then read its result."""
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise WorkloadError(f"{self.host.role} agent did not finish within {timeout_s:.0f} s") from None
        return self.finish(5)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream and not stream.closed:
                stream.close()


def latency_summary(log2_histogram: dict[int, int]) -> dict[str, Any]:
    """p50/p90/p99/max from a log2 histogram (bucket b = [2^(b-1), 2^b) ns), as upper bounds."""
    total = sum(log2_histogram.values())
    if not total:
        return {"count": 0}
    summary: dict[str, Any] = {"count": total, "unit": "ns", "resolution": "log2 bucket upper bound"}
    ordered = sorted(log2_histogram.items())
    for label, quantile in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        rank, seen = quantile * total, 0
        for bucket, count in ordered:
            seen += count
            if seen >= rank:
                summary[label] = 1 << bucket
                break
    summary["max"] = 1 << ordered[-1][0]
    summary["histogram_log2_ns"] = {str(k): v for k, v in ordered}
    return summary
