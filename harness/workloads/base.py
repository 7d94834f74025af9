"""What a workload is, and the one way to run an agent inside a namespace.

A workload makes real TCP traffic between a topology's two hosts and returns its GroundTruth:
what the generator itself did (its own counts), how long its measured loop ran, the processes it
used (so observers' pid attribution can be scored), and the events it must cause per side.
The runner adds the kernel's own counters (nstat) around it.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from netns import Host, Topology

from ..params import Param
from ..tcp import ACTIVE_CLOSE, OPEN, PASSIVE_CLOSE, SIDES
from ..system import die_with_runner


# Per-side expectation keys (GroundTruth.expected[side]):
#   transitions   "OLD->NEW" -> exact count (sock:inet_sock_set_state)
#   events        event kind (backends/base.py EVENT_KINDS) -> exact count; state_change is the
#                 sum of transitions
#   nstat         nstat counter name -> exact delta in this side's namespace
#   at_least      event kind or nstat name -> a lower bound (where the exact count depends on timing)
#   equals_nstat  event kind -> nstat name whose delta it must equal (both are counted by the same
#                 kernel function, e.g. tcp_rtx_synack: trace_tcp_retransmit_synack + TCPSynRetrans)
#   inexact       event kind or nstat name -> why no exact count is declared for it
EXPECTATION_KEYS = ("transitions", "events", "nstat", "at_least", "equals_nstat", "inexact")



def connection_transitions(closer: str) -> dict[str, dict[str, int]]:
    """One orderly connection's transitions per side; `closer` ("client"|"server") closes first."""
    return {
        side: {**OPEN[side], **(ACTIVE_CLOSE if side == closer else PASSIVE_CLOSE)} for side in SIDES
    }


def scaled(per_unit: dict[str, int], n: int) -> dict[str, int]:
    """Each count times `n`, zeros dropped."""
    return {name: count * n for name, count in per_unit.items() if count * n}


def add_counts(*parts: dict[str, int]) -> dict[str, int]:
    """Counts summed by name, zeros dropped."""
    total: dict[str, int] = {}
    for part in parts:
        for name, count in part.items():
            total[name] = total.get(name, 0) + count
    return {name: count for name, count in total.items() if count}


def side_expectation(
    transitions: dict[str, int],
    events: dict[str, int] | None = None,
    nstat: dict[str, int] | None = None,
    at_least: dict[str, int] | None = None,
    equals_nstat: dict[str, str] | None = None,
    inexact: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One side's declaration; state_change is derived from the transitions, never typed twice."""
    return {
        "transitions": dict(sorted(transitions.items())),
        "events": {"state_change": sum(transitions.values()), **(events or {})},
        "nstat": dict(nstat or {}),
        "at_least": dict(at_least or {}),
        "equals_nstat": dict(equals_nstat or {}),
        "inexact": dict(inexact or {}),
    }


def opens_nstat(
    active_opens: int = 0,
    passive_opens: int = 0,
    attempt_fails: int = 0,
    out_rsts: int = 0,
    estab_resets: int = 0,
) -> dict[str, int]:
    """The counters a workload must move exactly (RFC 4022 names, as nstat prints them)."""
    return {
        "TcpActiveOpens": active_opens,
        "TcpPassiveOpens": passive_opens,
        "TcpAttemptFails": attempt_fails,
        "TcpOutRsts": out_rsts,
        "TcpEstabResets": estab_resets,
    }


class WorkloadError(RuntimeError):
    """The generator failed (an agent crashed, timed out, or did not do what it was asked)."""


@dataclass
class GroundTruth:
    generator: dict[str, Any]  # the generator's own counts, e.g. {"connections": 1000}
    operations: int  # units of work done in the measured loop (connections, transactions ...)
    duration_s: float  # the measured loop's wall time, from the agents' own clocks
    expected: dict[str, Any]  # per side: see EXPECTATION_KEYS ({"transitions": ..., "events": ...})
    pids: dict[str, list[int]] = field(default_factory=dict)  # role -> pids that made the traffic
    latency: dict[str, Any] | None = None  # per-operation latency summary
    cpu_ticks: dict[str, dict[str, int]] | None = None  # /proc/stat around the loop: before, after
    flows: dict[str, Any] | None = None  # sampled per-flow ground truth (harness/flows.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Workload(Protocol):
    name: str
    description: str
    operation: str  # what one operation is, for rates: "connection", "transaction", "byte"
    params: tuple[Param, ...]

    def run(self, topology: Topology, params: dict[str, Any]) -> GroundTruth: ...

    def check_params(self, params: dict[str, Any]) -> None:
        """Constraints between parameters (each alone is checked by its Param): raise UsageError.
        None by default; a workload subclasses this protocol to inherit that."""
        return None


class Agent:
    """A traffic agent, `harness.agents.traffic.<module>` (or a native one), inside a host's namespace,
    speaking JSON lines."""

    def __init__(self, host: Host, module: str, args: list[str], executable: Path | None = None):
        """executable: a native agent (harness/agents/traffic/c/) speaking the same JSON lines."""
        self.host = host
        if executable is not None:
            self.argv = [str(executable), *args]
        else:
            self.argv = [sys.executable, "-m", f"harness.agents.traffic.{module}", *args]
        # stderr goes to an unlinked file, never to a pipe nobody reads while the agent runs:
        # an agent with more to say than a pipe holds (64 KiB) would block in write() for good
        self.stderr = tempfile.TemporaryFile(mode="w+", prefix="tpbench-agent-")
        self.process = host.popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            preexec_fn=die_with_runner,
        )

    def stderr_tail(self) -> str:
        """The last line the agent wrote on stderr, or 'no output'."""
        self.stderr.seek(0)
        lines = self.stderr.read().strip().splitlines()
        return lines[-1] if lines else "no output"

    def read_message(self, what: str) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=5)
            raise WorkloadError(
                f"{self.host.role} agent exited ({self.process.returncode}) before {what}: {self.stderr_tail()}"
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
        """Wait for the agent to finish its work by itself, then read its result.

        The result is read as the agent writes it, never after it exits: a result larger than a
        pipe holds (churn's per-flow sample at 400,000 connections) would block the agent in
        write() while we waited for its exit, and neither would ever finish."""
        readable, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        if not readable:
            raise WorkloadError(f"{self.host.role} agent did not finish within {timeout_s:.0f} s")
        return self.finish(30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.stderr):
            if stream and not stream.closed:
                stream.close()


class AgentPair:
    """The traffic agents' one lifecycle: the server first, up once it says it listens, then the
    client, up once it says `client_ready` ("starting", "connected"); both killed on leaving the
    block whatever happened (a finished agent is only reaped).

        with AgentPair(topology, "rr", server_args, client_args, "connected") as pair:
            client_result, server_result = pair.wait(timeout_s)
    """

    def __init__(self, topology: Topology, module: str, server_args: list[str], client_args: list[str],
                 client_ready: str, executable: Path | None = None):
        self.topology, self.module, self.executable = topology, module, executable
        self.server_args, self.client_args, self.client_ready_message = server_args, client_args, client_ready
        self.server: Agent | None = None
        self.client: Agent | None = None

    def __enter__(self) -> "AgentPair":
        try:
            self.server = Agent(self.topology.server, self.module, self.server_args, self.executable)
            self.server_ready = self.server.read_message("listening")
            self.client = Agent(self.topology.client, self.module, self.client_args, self.executable)
            self.client_ready = self.client.read_message(self.client_ready_message)
        except BaseException:
            self.kill()
            raise
        return self

    def wait(self, timeout_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """The client finishing its work by itself within timeout_s, then the server told to stop:
        (client result, server result)."""
        client_result = self.client.wait_result(timeout_s)
        return client_result, self.server.finish(10)

    def stop(self, timeout_s: float = 60) -> tuple[dict[str, Any], dict[str, Any]]:
        """Both told to stop now (an open-ended client first): (client result, server result)."""
        client_result = self.client.finish(timeout_s)
        return client_result, self.server.finish(10)

    def alive(self) -> bool:
        return all(agent is not None and agent.process.poll() is None for agent in (self.client, self.server))

    def kill(self) -> None:
        for agent in (self.client, self.server):
            if agent is not None:
                agent.kill()

    def __exit__(self, *exc: Any) -> None:
        self.kill()


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
