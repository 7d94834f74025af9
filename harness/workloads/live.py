"""Live traffic for the toggled measurement: one workload that runs until told to stop, with an
operation counter that costs nothing to read.

A trial (harness/runner.py) runs a workload to completion in fresh namespaces; the toggled
measurement (harness/toggle.py) instead keeps one workload running for the whole comparison and
switches observers on and off under it. For that the agents run in live mode (no count of their
own: they stop when the harness closes their stdin) and publish their progress in a shared file,
one 64-bit slot per writer on its own cache line (agents/common.py, agents/traffic/c/churn.c): reading the
count is a memory load here, no syscall in the measured processes, no process spawned per sample.

Supported: churn (the C generator), rr and stream (the Python agents), with the same parameters
as their trials; a parameter that bounds a trial (connections, transactions, bytes, duration) is
ignored here.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from pathlib import Path
from typing import Any

from netns import Topology

from ..system import STATE_DIR
from .base import AgentPair, WorkloadError
from .native import agent_binary

COUNTER_STRIDE_BYTES = 64  # one cache line per writer (agents/common.py COUNTER_STRIDE * 8)
LIVE_WORKLOADS = ("churn", "rr", "stream")


class LiveCounter:
    """The shared counter file under /run/tpbench (tmpfs; `tpbench cleanup` removes leftovers)."""

    def __init__(self, name: str, slots: int):
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self.path = STATE_DIR / f"counter-{name}"
        self.slots = slots
        size = slots * COUNTER_STRIDE_BYTES
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._offsets = [slot * COUNTER_STRIDE_BYTES for slot in range(slots)]

    def read(self) -> int:
        """The sum of every writer's slot: operations done so far."""
        return sum(struct.unpack_from("<Q", self.map, offset)[0] for offset in self._offsets)

    def close(self) -> None:
        with contextlib.suppress(ValueError, BufferError):
            self.map.close()
        self.path.unlink(missing_ok=True)


def _agents(workload: str, params: dict[str, Any], topology: Topology, counter: Path) -> tuple[Any, ...]:
    """(module, executable or None, server args, client args, writers) for one live workload."""
    from . import churn, rr, stream

    address = topology.server.address
    if workload == "churn":
        common = ["--address", address, "--port", str(churn.PORT), "--count", "0", "--closer", params["closer"],
                  "--bytes", str(params["bytes"])]
        executable = agent_binary("churn") if params["generator"] == "c" else None
        if executable is None:
            raise WorkloadError("live churn needs the C generator (generator=c)")
        client = [*common, "--concurrency", str(params["concurrency"]), "--rate", str(params["rate"]),
                  "--counter", str(counter)]
        return "churn", executable, ["server", *common], ["client", *client], params["concurrency"]
    if workload == "rr":
        common = ["--address", address, "--port", str(rr.PORT), "--connections", str(params["connections"]),
                  "--request", str(params["request"]), "--response", str(params["response"])]
        return "rr", None, ["server", *common], ["client", *common, "--transactions", "0", "--counter",
                                                 str(counter)], 1
    if workload == "stream":
        common = ["--address", address, "--port", str(stream.PORT)]
        client = [*common, "--message", str(params["message"]), "--live", "--counter", str(counter)]
        return "stream", None, ["server", *common], ["client", *client], 1
    raise WorkloadError(f"{workload} has no live mode (toggled measurement: {', '.join(LIVE_WORKLOADS)})")


def _write(path: str, value: str) -> None:
    Path(path).write_text(value)


class LiveTraffic:
    """`with LiveTraffic(topology, "churn", params, name) as live:` traffic runs inside the block;
    `live.operations()` is the running count; leaving the block stops the agents and keeps
    their final reports in `live.result`."""

    def __init__(self, topology: Topology, workload: str, params: dict[str, Any], name: str):
        self.topology, self.workload, self.params, self.name = topology, workload, params, name
        self.result: dict[str, Any] = {}
        self.pids: dict[str, list[int]] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "LiveTraffic":
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _start(self) -> None:
        from .netfilter import Offloads

        if self.workload == "stream":  # the trials' offload setting, as their ethtool step applies it
            self._stack.enter_context(Offloads(self.topology.hosts, self.params["offloads"]))
        if self.workload == "churn":
            # A continuous churn reuses every client port within ~1.5 s, and a SYN that meets the
            # server's TIME_WAIT for the same 4-tuple can be answered with an ACK the client resets,
            # then retransmitted 1 s later: a worker stalls for a second, 1-2 times a second
            # (measured: 59 RSTs and 38 SYN retransmits in 20 s; 0.5 s windows fell from 20k to
            # 3k connections/s), the largest noise in the windows. Without TIME_WAIT on the server
            # (its namespace only; it goes with the namespace) every SYN meets the listener. The
            # sockets' transitions are the same: FIN_WAIT2->CLOSE is still the full socket's last.
            self.topology.server.run(_write, "/proc/sys/net/ipv4/tcp_max_tw_buckets", "0")
        module, executable, server_args, client_args, writers = _agents(
            self.workload, self.params, self.topology, STATE_DIR / f"counter-{self.name}")
        self.counter = LiveCounter(self.name, writers)
        self._stack.callback(self.counter.close)
        self.agents = self._stack.enter_context(
            AgentPair(self.topology, module, server_args, client_args, "starting", executable))
        started = self.agents.client_ready
        self.pids = {"client": [started["pid"], *started.get("workers", [])], "server": [self.agents.server_ready["pid"]]}

    def operations(self) -> int:
        return self.counter.read()

    def alive(self) -> bool:
        return self.agents.alive()

    def __exit__(self, *exc: Any) -> None:
        try:
            if exc[0] is None:
                client_result, server_result = self.agents.stop(60)
                self.result = {"client": client_result, "server": server_result}
                self.result["client"].pop("flows", None)  # trials match flows; here only the count matters
        finally:
            self._stack.close()
