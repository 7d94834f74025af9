"""stream and loss: one bulk transfer, client to server; loss drops every Nth data packet.

stream: almost no state changes (one connection) and very many packets: the case where packet
        capture should pay and tracepoints should not. The operation is the byte, so the operation
        rate is the goodput in bytes/s (generator.gbit_per_s says it in Gbit/s).
loss:   the same stream with an iptables rule in the server's namespace dropping every Nth data
        packet (netfilter's statistic match, nth mode: deterministic, and its packet counter is
        ground truth). With TSO/GSO on, one skb carries up to 64 KiB through the veth and the rule
        drops whole skbs; nstat's RetransSegs counts segments and tcp:tcp_retransmit_skb counts
        skbs, so they differ. `offloads=false` turns TSO/GSO/GRO off on both veth ends (ethtool)
        so one skb is one segment; the setting is recorded in the trial.
"""

from __future__ import annotations

import contextlib
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
    side_expectation,
)
from .churn import NO_LOSS_RETRANSMITS, delivery
from .netfilter import DropRule, Offloads
from .rr import PROBE_INEXACT

PORT = 7002

LOSS_RETRANSMITS = (
    "every dropped data segment must be retransmitted at least once, so TcpRetransSegs (segments) "
    ">= dropped; SACK recovery, tail-loss probes and RTOs may send more. The tracepoint counts skbs, "
    "and TCP always builds GSO skbs (the kernel forces NETIF_F_GSO on every TCP socket: ethtool's "
    "gso off only moves segmentation to the device), so after an RTO marks the window lost one "
    "retransmitted skb may carry several dropped segments: the skb count is bounded below only by 1; "
    "attempts that fail (err != 0) also fire the tracepoint"
)


def expected_events(dropped: int | None = None) -> dict[str, Any]:
    """One connection, the client closing first; with a drop rule, retransmits as lower bounds."""
    per_connection = connection_transitions("client")
    expected = {}
    for side in ("client", "server"):
        transitions = dict(per_connection[side])
        if side == "server":
            transitions = add_counts(transitions, LISTENER)
        at_least: dict[str, int] = {"probe": 1}
        inexact = {"probe": PROBE_INEXACT, "retransmit": NO_LOSS_RETRANSMITS, "TcpRetransSegs": NO_LOSS_RETRANSMITS}
        if dropped is not None and side == "client":  # only client-to-server data is dropped
            at_least.update({"retransmit": min(dropped, 1), "TcpRetransSegs": dropped})
            inexact.update({"retransmit": LOSS_RETRANSMITS, "TcpRetransSegs": LOSS_RETRANSMITS})
        expected[side] = side_expectation(
            transitions,
            events={"sock_destroy": 1 + (side == "server"), "reset_sent": 0, "reset_received": 0},
            nstat=opens_nstat(active_opens=int(side == "client"), passive_opens=int(side == "server")),
            at_least=at_least,
            inexact=inexact,
        )
    return expected


def run_stream(topology: Topology, params: dict[str, Any], drop_every: int | None) -> GroundTruth:
    """One stream trial (loss: a rule dropping every `drop_every`th data packet); its ground truth.

    WorkloadError if the server received other than the client sent, or a byte-count run sent short.
    """
    total, duration_s, message = params["bytes"], params["duration"], params["message"]
    common = ["--address", topology.server.address, "--port", str(PORT)]
    # Generous: a drop costs at most an RTO (>= 200 ms) per round of recovery.
    timeout_s = 60 + (duration_s * 2 if duration_s else total / 20e6)
    drop: DropRule | None = None
    with contextlib.ExitStack() as stack:
        offloads = stack.enter_context(Offloads(topology.hosts, params["offloads"]))
        if drop_every is not None:
            # Data-bearing packets only (IP length > 52: 20 IP + 32 TCP with timestamps), never a
            # SYN, FIN or RST: a dropped SYN would cost a 1 s timeout and a dropped FIN an RTO.
            drop = stack.enter_context(DropRule(
                topology.server, "INPUT",
                ["-p", "tcp", "-s", topology.client.address, "-d", topology.server.address,
                 "--dport", str(PORT), "--tcp-flags", "SYN,FIN,RST", "NONE", "-m", "length", "--length", "53:65535"],
                drop_every, f"tpbench-loss-{topology.id}",
            ))
        client_args = ["client", *common, "--bytes", str(total), "--duration", str(duration_s),
                       "--message", str(message)]
        with AgentPair(topology, "stream", ["server", *common], client_args, "connected") as pair:
            client_result, server_result = pair.wait(timeout_s)
    # leaving the stack read the drop rule's counter, then removed the rule and restored offloads
    sent, received = client_result["sent"], server_result["received"]
    if received != sent:
        raise WorkloadError(f"stream: client sent {sent} bytes, server received {received}")
    if not duration_s and sent != total:
        raise WorkloadError(f"stream: sent {sent} of {total} bytes")
    duration = client_result["duration_ns"] / 1e9
    generator: dict[str, Any] = {
        "bytes": sent,
        "messages": client_result["messages"],
        "message_bytes": message,
        "gbit_per_s": round(sent * 8 / duration / 1e9, 3) if duration else None,
        "server_receive_s": server_result["receive_ns"] / 1e9,
        "offloads": offloads.settings,
        "delivery": delivery(total if not duration_s else sent, sent, 0, None),
    }
    if duration_s:
        generator["requested_duration_s"] = duration_s
    dropped = None
    if drop is not None:
        dropped = drop.final_dropped
        generator.update({"dropped": dropped, "drop_every": drop_every, "drop_rule": drop.describe(),
                          "drop_namespace": "server"})
    return GroundTruth(
        generator=generator,
        operations=sent,
        duration_s=duration,
        expected=expected_events(dropped),
        pids={"client": [pair.client_ready["pid"]], "server": [server_result["pid"]]},
        latency=latency_summary({int(k): v for k, v in client_result["latency_log2_ns"].items()}),
        cpu_ticks=client_result["cpu_ticks"],
    )


_SIZE_PARAMS = (
    Param("message", int, 131072, "bytes per send() call", minimum=1, maximum=64 << 20),
    Param("offloads", bool, True, "TSO/GSO/GRO on the veth ends (false: ethtool -K ... off)"),
)


class Stream(Workload):
    name = "stream"
    description = "one bulk transfer for a byte count or a duration (almost no state changes, very many packets)"
    operation = "byte"
    params = (
        Param("bytes", int, 1 << 30, "bytes to send (unless duration is set)", minimum=1, maximum=1 << 50),
        Param("duration", float, 0.0, "seconds to stream instead of a byte count (0: use bytes)",
              minimum=0, maximum=3600),
        *_SIZE_PARAMS,
    )

    def run(self, topology: Topology, params: dict[str, Any]) -> GroundTruth:
        return run_stream(topology, params, None)


class Loss(Workload):
    name = "loss"
    description = "a stream with every Nth data packet dropped in the server's namespace (iptables nth)"
    operation = "byte"
    params = (
        Param("bytes", int, 256 << 20, "bytes to send (unless duration is set)", minimum=1, maximum=1 << 50),
        Param("duration", float, 0.0, "seconds to stream instead of a byte count (0: use bytes)",
              minimum=0, maximum=3600),
        Param("every", int, 100, "drop every Nth data packet arriving at the server", minimum=2, maximum=1_000_000_000),
        *_SIZE_PARAMS,
    )

    def run(self, topology: Topology, params: dict[str, Any]) -> GroundTruth:
        return run_stream(topology, params, params["every"])
