"""resets: abortive closes (SO_LINGER {1, 0}) and connections to a closed port.

(a) abort: the client connects, the server accepts, the client closes with SO_LINGER {1, 0}.
    __tcp_close sees zero linger and calls tcp_disconnect: the client sends an RST
    (tcp:tcp_send_reset, OutRsts+1, TCPAbortOnData+1) and goes ESTABLISHED->CLOSE (EstabResets+1);
    the server's socket receives it (tcp:tcp_receive_reset) and goes ESTABLISHED->CLOSE too
    (EstabResets+1). No FIN, no TIME_WAIT on either side.
(b) refused: the client connects to a port nothing listens on. The server's stack answers the SYN
    with an RST from no socket at all (tcp:tcp_send_reset with a NULL socket, reason NO_SOCKET;
    OutRsts+1, no state change); the client receives it in SYN_SENT (tcp:tcp_receive_reset),
    goes SYN_SENT->CLOSE and counts AttemptFails+1; connect fails with ECONNREFUSED.
"""

from __future__ import annotations

from typing import Any

from netns import Topology

from ..errors import UsageError
from ..params import Param
from ..tcp import ABORT, LISTENER, OPEN, REFUSED
from .base import (
    AgentPair,
    GroundTruth,
    Workload,
    WorkloadError,
    add_counts,
    latency_summary,
    opens_nstat,
    scaled,
    side_expectation,
)
from .churn import NO_LOSS_RETRANSMITS, delivery

PORT = 7003
CLOSED_PORT = 7004  # nothing ever listens here


def expected_events(aborts: int, refused: int) -> dict[str, Any]:
    """Per side: what `aborts` abortive closes and `refused` refused connects cause (transitions, events, nstat)."""
    client_transitions = add_counts(scaled({**OPEN["client"], **ABORT}, aborts), scaled(REFUSED, refused))
    server_transitions = add_counts(scaled({**OPEN["server"], **ABORT}, aborts), LISTENER)
    inexact = {"retransmit": NO_LOSS_RETRANSMITS, "TcpRetransSegs": NO_LOSS_RETRANSMITS}
    return {
        "client": side_expectation(
            client_transitions,
            events={"reset_sent": aborts, "reset_received": refused, "sock_destroy": aborts + refused},
            nstat={
                **opens_nstat(active_opens=aborts + refused, attempt_fails=refused, out_rsts=aborts,
                              estab_resets=aborts),
                "TcpExtTCPAbortOnData": aborts,  # zero linger is checked after unread data: none here
            },
            inexact=inexact,
        ),
        "server": side_expectation(
            server_transitions,
            # the refused RSTs come from no socket: the tracepoint's addresses are the reversed
            # 4-tuple of the SYN, so the local address is the server's
            events={"reset_sent": refused, "reset_received": aborts, "sock_destroy": aborts + 1},
            nstat=opens_nstat(passive_opens=aborts, out_rsts=refused, estab_resets=aborts),
            inexact=inexact,
        ),
    }


class Resets(Workload):
    name = "resets"
    description = "abortive closes (SO_LINGER {1,0}) and connects to a closed port (RST both ways)"
    operation = "reset"
    params = (
        Param("aborts", int, 500, "connections closed with SO_LINGER {1, 0} by the client", minimum=0,
              maximum=1_000_000),
        Param("refused", int, 500, "connects to a closed port on the server", minimum=0, maximum=1_000_000),
    )

    def check_params(self, params: dict[str, Any]) -> None:
        if params["aborts"] + params["refused"] == 0:
            raise UsageError("resets needs aborts or refused >= 1 (both are 0)")

    def run(self, topology: Topology, params: dict[str, Any]) -> GroundTruth:
        aborts, refused = params["aborts"], params["refused"]
        common = ["--address", topology.server.address, "--port", str(PORT)]
        client_args = ["client", *common, "--closed-port", str(CLOSED_PORT), "--aborts", str(aborts),
                       "--refused", str(refused)]
        with AgentPair(topology, "resets", ["server", *common, "--aborts", str(aborts)], client_args,
                       "starting") as pair:
            client_result, server_result = pair.wait(30 + (aborts + refused) / 500)
        outcomes = client_result["outcomes"]
        done_aborts = outcomes["abort"].get("aborted", 0)
        done_refused = outcomes["refused"].get("ECONNREFUSED", 0)
        if outcomes["abort"] != ({"aborted": aborts} if aborts else {}) or \
                outcomes["refused"] != ({"ECONNREFUSED": refused} if refused else {}):
            raise WorkloadError(f"resets: unexpected client outcomes {outcomes}")
        if server_result["accepted"] != aborts or server_result["outcomes"] != ({"ECONNRESET": aborts} if aborts else {}):
            raise WorkloadError(
                f"resets: server accepted {server_result['accepted']} of {aborts}, saw {server_result['outcomes']}"
            )
        done = done_aborts + done_refused
        return GroundTruth(
            generator={
                "aborts": done_aborts,
                "refused": done_refused,
                "client_outcomes": outcomes,
                "server_accepted": server_result["accepted"],
                "server_outcomes": server_result["outcomes"],
                "delivery": delivery(aborts + refused, done, 0, None),
            },
            operations=done,
            duration_s=client_result["duration_ns"] / 1e9,
            expected=expected_events(done_aborts, done_refused),
            pids={"client": [pair.client_ready["pid"]], "server": [server_result["pid"]]},
            latency=latency_summary({int(k): v for k, v in client_result["latency_log2_ns"].items()}),
            cpu_ticks=client_result["cpu_ticks"],
        )
