"""rr: request/response on persistent connections (few state changes, many packets).

`connections` connections are opened before the measured loop; `transactions` round trips are
spread over them, one outstanding per connection; then the client closes each one first. State
changes: one orderly connection's worth per connection. Packets: at least a request and a
response per transaction, so tcp:tcp_probe (which fires for every segment an established socket
receives, in tcp_rcv_established) fires at least `transactions` times on each side.
"""

from __future__ import annotations

from typing import Any

from netns import Topology

from ..params import Param
from ..tcp import LISTENER
from .base import (
    AgentPair,
    GroundTruth,
    Workload,
    WorkloadError,
    add_counts,
    connection_transitions,
    latency_summary,
    opens_nstat,
    scaled,
    side_expectation,
)
from .churn import NO_LOSS_RETRANSMITS, delivery

PORT = 7001

PROBE_INEXACT = (
    "tcp_probe fires per received segment in tcp_rcv_established: pure ACKs, delayed-ACK "
    "coalescing and segmentation of large messages make the exact number timing-dependent"
)


def expected_events(connections: int, transactions: int) -> dict[str, Any]:
    """Per side: `connections` connections with `transactions` transactions: probes at least `transactions`."""
    per_connection = connection_transitions("client")
    expected = {}
    for side in ("client", "server"):
        transitions = scaled(per_connection[side], connections)
        if side == "server":
            transitions = add_counts(transitions, LISTENER)
        expected[side] = side_expectation(
            transitions,
            events={"sock_destroy": connections + (side == "server"), "reset_sent": 0, "reset_received": 0},
            nstat=opens_nstat(
                active_opens=connections if side == "client" else 0,
                passive_opens=connections if side == "server" else 0,
            ),
            at_least={"probe": transactions},
            inexact={"probe": PROBE_INEXACT, "retransmit": NO_LOSS_RETRANSMITS,
                     "TcpRetransSegs": NO_LOSS_RETRANSMITS},
        )
    return expected


class RequestResponse(Workload):
    name = "rr"
    description = "request/response transactions on persistent connections (few state changes, many packets)"
    operation = "transaction"
    params = (
        Param("transactions", int, 20000, "round trips in total", minimum=1, maximum=100_000_000),
        Param("connections", int, 4, "persistent connections sharing them", minimum=1, maximum=10_000),
        Param("request", int, 64, "request size in bytes", minimum=1, maximum=16 << 20),
        Param("response", int, 1024, "response size in bytes", minimum=1, maximum=16 << 20),
    )

    def run(self, topology: Topology, params: dict[str, Any]) -> GroundTruth:
        transactions, connections = params["transactions"], params["connections"]
        sizes = ["--request", str(params["request"]), "--response", str(params["response"])]
        common = ["--address", topology.server.address, "--port", str(PORT), "--connections", str(connections)]
        # Generous: ~20k transactions/s here for small messages; big messages add copy time.
        timeout_s = 30 + transactions / 2000 + transactions * (params["request"] + params["response"]) / 50e6
        with AgentPair(topology, "rr", ["server", *common, *sizes],
                       ["client", *common, *sizes, "--transactions", str(transactions)], "connected") as pair:
            client_result, server_result = pair.wait(timeout_s)
        opened = client_result["connections"]
        done = client_result["transactions"]
        if client_result["failures"] or done != transactions or opened != connections:
            # the generator under-delivered: the trial fails loudly rather than report a short run
            raise WorkloadError(
                f"rr made {done} of {transactions} transactions on {opened} of {connections} connections "
                f"(failures: {client_result['failures']}, server errors: {server_result['errors']})"
            )
        duration_s = client_result["duration_ns"] / 1e9
        return GroundTruth(
            generator={
                "transactions": done,
                "connections": opened,
                "answered": server_result["answered"],
                "server_errors": server_result["errors"],
                "request_bytes": params["request"],
                "response_bytes": params["response"],
                "delivery": delivery(transactions, done, 0, None),
            },
            operations=done,
            duration_s=duration_s,
            expected=expected_events(opened, done),
            pids={"client": [pair.client_ready["pid"]], "server": [server_result["pid"]]},
            latency=latency_summary({int(k): v for k, v in client_result["latency_log2_ns"].items()}),
            cpu_ticks=client_result["cpu_ticks"],
        )
