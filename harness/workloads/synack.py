"""synack: handshakes whose SYN-ACKs are dropped, so the server retransmits them.

Churn (the server closing first) with an iptables rule in the *client's* namespace dropping every
Nth SYN-ACK from the server. A handshake whose SYN-ACK was dropped waits for a timer: the server's
request-sock timer (initial 1 s) resends the SYN-ACK, or the client's SYN retransmit (also 1 s)
reaches the server first and makes it resend the SYN-ACK at once. Both paths go through
tcp_rtx_synack, which fires tcp:tcp_retransmit_synack and counts TcpExtTCPSynRetrans and
TcpRetransSegs in the same breath, so the event count equals the server's TCPSynRetrans delta
exactly, while which timer wins (one or two resends per drop) is timing. Each resend passes the
nth rule too and may be dropped again. Many handshakes run concurrently, since each drop waits ~1 s.
"""

from __future__ import annotations

from typing import Any

from netns import Topology

from ..params import Param
from .base import GroundTruth, Workload, latency_summary
from .churn import PORT, delivery, expected_events as churn_expected, run_churn
from .netfilter import DropRule

SYNACK_INEXACT = (
    "each dropped SYN-ACK is resent at least once; the server's request timer and the client's "
    "SYN retransmit race (both 1 s), so one drop causes one or two resends"
)
SYN_INEXACT = "the client retransmits its SYN when its 1 s timer beats the server's resent SYN-ACK"
# Seen under load (2 CPUs, load 4.5): TcpOutRsts 1 on the client. Both resends of one dropped
# SYN-ACK can reach the client; the second is only a duplicate while the socket lives, but if the
# connection has already completed and closed (the client closes second: no TIME_WAIT), it finds
# no socket and the client's stack answers with a RST.
LATE_SYNACK_RST = ("a duplicate SYN-ACK arriving after the client's connection has closed finds no "
                   "socket and is answered with a RST")


def expected_events(connections: int, dropped: int) -> dict[str, Any]:
    """Churn's expectation (the server closing first) with `dropped` SYN-ACKs dropped: their resends as lower
    bounds, and why the counts they touch are inexact."""
    expected = churn_expected(connections, "server")
    server, client = expected["server"], expected["client"]
    server["at_least"].update({"synack_retransmit": dropped, "TcpExtTCPSynRetrans": dropped})
    server["equals_nstat"]["synack_retransmit"] = "TcpExtTCPSynRetrans"
    server["inexact"].update({"synack_retransmit": SYNACK_INEXACT, "TcpExtTCPSynRetrans": SYNACK_INEXACT,
                              "TcpRetransSegs": SYNACK_INEXACT})
    # the client's SYN retransmits go through tcp_retransmit_skb: event count == RetransSegs
    client["equals_nstat"]["retransmit"] = "TcpRetransSegs"
    client["inexact"].update({"retransmit": SYN_INEXACT, "TcpRetransSegs": SYN_INEXACT,
                              "TcpExtTCPSynRetrans": SYN_INEXACT, "TcpOutRsts": LATE_SYNACK_RST,
                              "reset_sent": LATE_SYNACK_RST})
    client["nstat"].pop("TcpOutRsts", None)  # a count is exact or explained, never both
    client["events"].pop("reset_sent", None)
    return expected


class SynAck(Workload):
    name = "synack"
    description = "handshakes with every Nth SYN-ACK dropped in the client's namespace (tcp_retransmit_synack)"
    operation = "connection"
    params = (
        Param("connections", int, 400, "handshakes (connections) to make", minimum=1, maximum=1_000_000),
        Param("concurrency", int, 100, "client worker processes: handshakes waiting on a resend at once",
              minimum=1, maximum=256),
        Param("every", int, 4, "drop every Nth SYN-ACK arriving at the client", minimum=2, maximum=1_000_000_000),
    )

    def run(self, topology: Topology, params: dict[str, Any]) -> GroundTruth:
        connections, concurrency, every = params["connections"], params["concurrency"], params["every"]
        rule = DropRule(
            topology.client, "INPUT",
            ["-p", "tcp", "-s", topology.server.address, "-d", topology.client.address, "--sport", str(PORT),
             "--tcp-flags", "SYN,ACK", "SYN,ACK"],
            every, f"tpbench-synack-{topology.id}",
        )
        # each drop stalls one worker ~1 s (more if the resend is dropped too)
        extra_timeout_s = 3.0 * (connections / every) / concurrency + 10
        with rule:
            client_result, server_result = run_churn(topology, connections, concurrency,
                                                     extra_timeout_s=extra_timeout_s)
        dropped = rule.final_dropped
        made = client_result["connections"]
        duration_s = client_result["duration_ns"] / 1e9
        return GroundTruth(
            generator={
                "connections": made,
                "failures": client_result["failures"],
                "accepted": server_result["accepted"],
                "requested": connections,
                "concurrency": concurrency,
                "dropped_synacks": dropped,
                "drop_every": every,
                "drop_rule": rule.describe(),
                "drop_namespace": "client",
                "delivery": delivery(connections, made, 0, None),
            },
            operations=made,
            duration_s=duration_s,
            expected=expected_events(made, dropped),
            pids={"client": [client_result["ready_pid"], *client_result["pids"]],
                  "server": [server_result["pid"]]},
            latency=latency_summary({int(k): v for k, v in client_result["latency_log2_ns"].items()}),
            cpu_ticks=client_result["cpu_ticks"],
        )
