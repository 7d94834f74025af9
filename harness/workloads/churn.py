"""churn: N short connections, the server closing first.

Per connection the client connects, the server accepts and closes at once, the client reads the
FIN and closes. The server ends in TIME_WAIT (a timewait sock, which takes no tcp_set_state), so
the client keeps no TIME_WAIT and ~28k ephemeral ports are never exhausted.
"""

from __future__ import annotations

from typing import Any

from netns import Topology

from ..params import Param
from .base import Agent, GroundTruth, WorkloadError, latency_summary

PORT = 7000

# What each connection makes sock:inet_sock_set_state report, per side (server closes first).
# The server's child socket is cloned from the listener, hence LISTEN->SYN_RECV. After the last ACK
# the full socket becomes a timewait sock: FIN_WAIT2->CLOSE is the full socket's last transition.
TRANSITIONS_PER_CONNECTION = {
    "client": {
        "CLOSE->SYN_SENT": 1,
        "SYN_SENT->ESTABLISHED": 1,
        "ESTABLISHED->CLOSE_WAIT": 1,
        "CLOSE_WAIT->LAST_ACK": 1,
        "LAST_ACK->CLOSE": 1,
    },
    "server": {
        "LISTEN->SYN_RECV": 1,
        "SYN_RECV->ESTABLISHED": 1,
        "ESTABLISHED->FIN_WAIT1": 1,
        "FIN_WAIT1->FIN_WAIT2": 1,
        "FIN_WAIT2->CLOSE": 1,
    },
}
# The listening socket, once per trial.
LISTENER_TRANSITIONS = {"CLOSE->LISTEN": 1, "LISTEN->CLOSE": 1}


def expected_events(connections: int) -> dict[str, Any]:
    expected: dict[str, Any] = {}
    for side, per_connection in TRANSITIONS_PER_CONNECTION.items():
        transitions = {name: n * connections for name, n in per_connection.items()}
        if side == "server":
            transitions.update(LISTENER_TRANSITIONS)
        expected[side] = {
            "transitions": transitions,
            "events": {
                "state_change": sum(transitions.values()),
                # every full socket is destroyed once: the server's listener too
                "sock_destroy": connections + (1 if side == "server" else 0),
            },
        }
    return expected


class Churn:
    name = "churn"
    description = "N connect/accept/close cycles, server closes first (state changes at the highest rate)"
    operation = "connection"
    params = (
        Param("connections", int, 1000, "connections to make", minimum=1, maximum=10_000_000),
        Param("concurrency", int, 2, "client worker processes sharing the connections", minimum=1, maximum=256),
    )

    def run(self, topology: Topology, params: dict[str, Any]) -> GroundTruth:
        connections, concurrency = params["connections"], params["concurrency"]
        address = ["--address", topology.server.address, "--port", str(PORT), "--count", str(connections)]
        # Generous: the slowest rate seen here is ~5k/s; a dropped SYN costs 1 s more.
        timeout_s = 30 + connections / 500
        server = Agent(topology.server, "churn", ["server", *address])
        client = None
        try:
            server.read_message("listening")
            client = Agent(topology.client, "churn", ["client", *address, "--concurrency", str(concurrency)])
            client_ready = client.read_message("starting")
            client_result = client.wait_result(timeout_s)
            server_result = server.finish(10)
        finally:
            for agent in (client, server):
                if agent is not None:
                    agent.kill()
        made = client_result["connections"]
        if made + sum(client_result["failures"].values()) != connections:
            raise WorkloadError(f"client accounted for {made} of {connections} connections")
        return GroundTruth(
            generator={
                "connections": made,
                "failures": client_result["failures"],
                "accepted": server_result["accepted"],
                "requested": connections,
                "concurrency": concurrency,
            },
            operations=made,
            duration_s=client_result["duration_ns"] / 1e9,
            expected=expected_events(made),
            pids={
                "client": [client_ready["pid"], *client_result["pids"]],
                "server": [server_result["pid"]],
            },
            latency=latency_summary({int(k): v for k, v in client_result["latency_log2_ns"].items()}),
            cpu_ticks=client_result["cpu_ticks"],
        )
