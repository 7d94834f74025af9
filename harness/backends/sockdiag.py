"""`sockdiag` backend: polling socket state over netlink, as `ss` and many monitoring agents do.

No hook at all: a poller process in each of the topology's namespaces (harness/agents/
sockdiag_poller.py) dumps the namespace's IPv4 TCP sockets through NETLINK_SOCK_DIAG (inet_diag,
pyroute2's DiagSocket) every `interval_ms`, and infers transitions between successive snapshots
(sockdiag_infer.py). The kernel does nothing per event for it; the cost is one dump per poll, and
the price is what falls between two polls.

What it reports, per side (the namespace a socket lives in):
  transitions    state changes seen between two polls ("SYN_SENT->ESTABLISHED"; intermediate
                 states a socket went through between polls are not seen, so a pair may skip some)
  lost           connections the kernel opened (ActiveOpens on the client, PassiveOpens on the
                 server, read by the poller in its namespace) that no poll ever saw: measured misses
  details        the interval, polls made and achieved rate, poll duration, sockets first seen and
                 vanished per state, connections seen, miss rate per side, the poller's CPU time
What it cannot see: retransmits, resets, sock_destroy, tcp_probe (no per-event data), and any
TIME_WAIT entry (not listed, see the poller).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from typing import Any

from netns import Topology

from ..kernel import KernelProbe
from ..params import Param
from ..system import die_with_runner
from .base import Availability, Backend, Observation
from .processes import DeferredCpu, kill, read_line, reap
from ..decoders.sockdiag_infer import misses

START_TIMEOUT_S = 15.0
RESULT_TIMEOUT_S = 60.0
OPENS = {"client": "ActiveOpens", "server": "PassiveOpens"}
INVISIBLE = {
    "retransmit": "no per-event data: a retransmission changes no socket state",
    "synack_retransmit": "request sockets' retransmits are not in the socket list",
    "reset_sent": "a reset is seen only as a socket that vanished",
    "reset_received": "a reset is seen only as a socket that vanished",
    "sock_destroy": "a vanished socket may be in TIME_WAIT (not listed), not destroyed",
    "probe": "no per-segment data",
    "short_connections": "a connection that opens and closes between two polls leaves no trace (lost)",
}


def _check_interval(value: float) -> str | None:
    return None if value > 0 else "must be > 0 (a poll interval of 0 is a busy loop, not a poll)"


class _Pollers:
    def __init__(self, topology: Topology, params: dict[str, Any]):
        self.interval_ms = params["interval_ms"]
        self.processes: dict[str, subprocess.Popen] = {}
        self.closed = False
        self.deferred = DeferredCpu()
        keep = [arg for host in topology.hosts for arg in ("--keep", host.address)]
        try:
            for host in topology.hosts:
                argv = [sys.executable, "-m", "harness.agents.observers.sockdiag_poller",
                        "--interval-ms", repr(self.interval_ms), *keep]
                self.processes[host.role] = host.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                       stderr=subprocess.PIPE, start_new_session=True,
                                                       preexec_fn=die_with_runner)
            self.ready = {role: self._message(role, START_TIMEOUT_S, "ready") for role in self.processes}
        except BaseException:
            self.close()
            raise

    def _message(self, role: str, timeout_s: float, what: str) -> dict[str, Any]:
        process = self.processes[role]
        line = read_line(process.stdout, timeout_s, f"{what} from the {role} sock_diag poller")
        if not line.strip():
            reap(process, 5)
            stderr = process.stderr.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"{role} sock_diag poller exited ({process.returncode}): "
                               f"{stderr[-1] if stderr else 'no output'}")
        message = json.loads(line)
        if "error" in message:
            raise RuntimeError(f"{role} sock_diag poller: {message['error']}")
        return message

    def loop_ended(self) -> None:
        for role, process in self.processes.items():
            self.deferred.mark(role, process.pid)

    def detach(self) -> Observation:
        try:
            for process in self.processes.values():
                process.stdin.close()  # each poller polls once more and reports
            results = {role: self._message(role, RESULT_TIMEOUT_S, "result")["result"] for role in self.processes}
            cpu = {role: reap(process, 10) for role, process in self.processes.items()}
        finally:
            self.close()
        observation = Observation()
        per_side: dict[str, Any] = {}
        lost = 0
        for role, result in results.items():
            transitions = dict(sorted(result["transitions"].items()))
            changes = sum(transitions.values())
            observation.sides[role] = {"events": {"state_change": changes}, "transitions": transitions}
            observation.events["state_change"] = observation.events.get("state_change", 0) + changes
            for name, n in transitions.items():
                observation.transitions[name] = observation.transitions.get(name, 0) + n
            missed = misses(result["snmp_delta"][OPENS[role]], result["connections_seen"])
            lost += missed["missed"]
            per_side[role] = {
                "connections": missed,
                "first_seen": result["first_seen"],
                "disappeared": result["disappeared"],
                "listeners_seen": result["listeners_seen"],
                "polls": result["polls"],
                "polls_late": result["polls_late"],
                "achieved_polls_per_s": result["achieved_polls_per_s"],
                "poll_duration_us": result["poll_duration_us"],
                "max_sockets_per_snapshot": result["max_sockets_per_snapshot"],
                "snmp_delta": result["snmp_delta"],
                "poller_cpu_s": {**(cpu[role] or {}), "polling": result["cpu_s_polling"]},
            }
        opened = sum(s["connections"]["opened"] for s in per_side.values())
        observation.lost = lost
        observation.details = {
            "interval_ms": self.interval_ms,
            "lost_unit": "connections (opened per the namespace's own counters, never seen by a poll)",
            "miss_rate": round(lost / opened, 4) if opened else None,
            "sides": per_side,
            "invisible": INVISIBLE,
            # the last poll and report after the loop
            "deferred_cpu_s": round(sum(self.deferred.since(role, (cpu[role] or {}).get("total")) or 0.0
                                        for role in cpu), 6),
        }
        return observation

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for process in self.processes.values():
            kill(process)


class SockdiagBackend(Backend):
    name = "sockdiag"
    description = "polls TCP sockets over netlink sock_diag (what ss does) in each namespace; no hook"
    hooks = ("netlink NETLINK_SOCK_DIAG: SOCK_DIAG_BY_FAMILY dumps (inet_diag)",)
    params = (
        Param("interval_ms", float, 10.0, "time between two socket dumps, per namespace (> 0)",
              maximum=60_000, check=_check_interval),
    )

    def availability(self, probe: KernelProbe, params: dict[str, Any] | None = None) -> Availability:
        if importlib.util.find_spec("pyroute2") is None:
            return Availability(False, "Python module pyroute2 not installed (make setup)", ("pyroute2",))
        return Availability(True, "pyroute2 DiagSocket (inet_diag), one poller per namespace")

    def attach(self, topology: Topology, params: dict[str, Any]) -> _Pollers:
        return _Pollers(topology, params)
