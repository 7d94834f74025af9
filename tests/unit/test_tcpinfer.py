"""The pcap backend's inference: TCP socket transitions and events from packet headers alone.

Each test feeds a synthetic segment sequence (what a capture on the server's veth sees) and
asserts the per-side transitions and events, named as sock:inet_sock_set_state names them.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from harness.decoders.pcap_infer import (
    ACK, FIN, MIN_SNAPLEN, PSH, RST, SYN, FlowTracker, Segment, decode_ethernet,
)

C, S = "198.18.0.1", "198.18.0.2"
SIDES = {C: "client", S: "server"}
CPORT, SPORT = 40000, 7000

# What one orderly connection makes the tracepoint report (harness/workloads: OPEN + closes).
OPEN = {"client": {"CLOSE->SYN_SENT": 1, "SYN_SENT->ESTABLISHED": 1},
        "server": {"LISTEN->SYN_RECV": 1, "SYN_RECV->ESTABLISHED": 1}}
ACTIVE_CLOSE = {"ESTABLISHED->FIN_WAIT1": 1, "FIN_WAIT1->FIN_WAIT2": 1, "FIN_WAIT2->CLOSE": 1}
PASSIVE_CLOSE = {"ESTABLISHED->CLOSE_WAIT": 1, "CLOSE_WAIT->LAST_ACK": 1, "LAST_ACK->CLOSE": 1}


class Conn:
    """Builds one connection's segments with consistent sequence numbers."""

    def __init__(self, cport: int = CPORT, client_isn: int = 1000, server_isn: int = 5000):
        self.cport = cport
        self.nxt = {"client": client_isn, "server": server_isn}
        self.segments: list[Segment] = []

    def send(self, who: str, flags: int, payload: int = 0, seq: int | None = None) -> Segment:
        peer = "server" if who == "client" else "client"
        src, sport, dst, dport = (C, self.cport, S, SPORT) if who == "client" else (S, SPORT, C, self.cport)
        seq = self.nxt[who] if seq is None else seq
        seg = Segment(src, sport, dst, dport, seq % 2**32, self.nxt[peer] % 2**32 if flags & ACK else 0,
                      flags, payload)
        end = seq + payload + (1 if flags & (SYN | FIN) else 0)
        if end > self.nxt[who]:
            self.nxt[who] = end
        self.segments.append(seg)
        return seg

    def handshake(self) -> "Conn":
        self.send("client", SYN)
        self.send("server", SYN | ACK)
        self.send("client", ACK)
        return self

    def close(self, first: str) -> "Conn":
        second = "server" if first == "client" else "client"
        self.send(first, FIN | ACK)
        self.send(second, ACK)
        self.send(second, FIN | ACK)
        self.send(first, ACK)
        return self


def run(segments, keep=lambda s: True) -> dict:
    tracker = FlowTracker(SIDES)
    for seg in segments:
        if keep(seg):
            tracker.feed(seg)
    return tracker.result()


def state_filter(seg: Segment) -> bool:
    """What `tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0` passes."""
    return bool(seg.flags & (SYN | FIN | RST))


def transitions(result, side):
    return result["sides"].get(side, {}).get("transitions", {})


def events(result, side):
    return result["sides"].get(side, {}).get("events", {})


def test_server_first_close_gives_every_transition_the_tracepoint_reports():
    result = run(Conn().handshake().close("server").segments)
    assert transitions(result, "client") == {**OPEN["client"], **PASSIVE_CLOSE}
    assert transitions(result, "server") == {**OPEN["server"], **ACTIVE_CLOSE}
    assert events(result, "client") == {"state_change": 5}
    assert events(result, "server") == {"state_change": 5}
    assert result["sides"]["client"]["opens"] == {"active": 1}
    assert result["sides"]["server"]["opens"] == {"passive": 1}
    assert result["flows"]["live_at_end"] == 0


def test_client_first_close_mirrors_the_roles():
    result = run(Conn().handshake().close("client").segments)
    assert transitions(result, "client") == {**OPEN["client"], **ACTIVE_CLOSE}
    assert transitions(result, "server") == {**OPEN["server"], **PASSIVE_CLOSE}


def test_churn_with_data_and_piggybacked_fin_ack():
    conn = Conn().handshake()
    conn.send("client", PSH | ACK, payload=100)
    conn.send("server", PSH | ACK, payload=300)
    conn.send("server", FIN | ACK)
    conn.send("client", FIN | ACK)  # acks the server's FIN and carries its own
    conn.send("server", ACK)
    result = run(conn.segments)
    assert transitions(result, "client") == {**OPEN["client"], **PASSIVE_CLOSE}
    assert transitions(result, "server") == {**OPEN["server"], **ACTIVE_CLOSE}
    assert "retransmit" not in events(result, "client") and "retransmit" not in events(result, "server")


def test_state_filter_implies_opens_from_fins_but_cannot_see_the_last_ack():
    """SYN, SYN-ACK, FIN, FIN only (4 packets per churn connection): the handshake ACK is implied by
    the FINs that follow; LAST_ACK->CLOSE needs the server's pure ACK, which the filter drops."""
    conn = Conn().handshake()
    conn.send("server", FIN | ACK)
    conn.send("client", FIN | ACK)
    conn.send("server", ACK)
    result = run(conn.segments, keep=state_filter)
    assert result["packets"]["tcp"] == 4
    assert transitions(result, "server") == {**OPEN["server"], **ACTIVE_CLOSE}
    expected_client = {**OPEN["client"], **PASSIVE_CLOSE}
    del expected_client["LAST_ACK->CLOSE"]
    assert transitions(result, "client") == expected_client
    assert result["flows"]["live_at_end"] == 0  # finished flows leave the live table all the same


def test_reset_abort_closes_both_sides_and_counts_sent_and_received():
    conn = Conn().handshake()
    conn.send("client", RST | ACK)  # SO_LINGER {1,0} then close()
    result = run(conn.segments)
    assert transitions(result, "client") == {**OPEN["client"], "ESTABLISHED->CLOSE": 1}
    assert transitions(result, "server") == {**OPEN["server"], "ESTABLISHED->CLOSE": 1}
    assert events(result, "client") == {"state_change": 3, "reset_sent": 1}
    assert events(result, "server") == {"state_change": 3, "reset_received": 1}


def test_refused_connect_has_no_server_socket_and_closes_the_client():
    conn = Conn()
    conn.send("client", SYN)
    conn.send("server", RST | ACK)  # closed port: the stack answers without a socket
    result = run(conn.segments)
    assert transitions(result, "client") == {"CLOSE->SYN_SENT": 1, "SYN_SENT->CLOSE": 1}
    assert events(result, "client") == {"state_change": 2, "reset_received": 1}
    assert transitions(result, "server") == {}
    assert events(result, "server") == {"reset_sent": 1}


def test_rst_without_ack_is_not_accepted_in_syn_sent():
    conn = Conn()
    conn.send("client", SYN)
    conn.send("server", RST)
    result = run(conn.segments)
    assert transitions(result, "client") == {"CLOSE->SYN_SENT": 1}
    assert "reset_received" not in events(result, "client")


def test_syn_retransmit_counts_once_and_opens_once():
    conn = Conn()
    syn = conn.send("client", SYN)
    conn.segments.append(syn)  # the same SYN again after the 1 s timeout
    conn.send("server", SYN | ACK)
    conn.send("client", ACK)
    result = run(conn.segments)
    assert events(result, "client")["retransmit"] == 1
    assert transitions(result, "client") == OPEN["client"]
    assert result["sides"]["client"]["opens"] == {"active": 1}
    assert result["packets"]["syn"] == 2


def test_synack_retransmit_is_its_own_kind_on_the_server():
    conn = Conn()
    conn.send("client", SYN)
    synack = conn.send("server", SYN | ACK)
    conn.segments.append(synack)
    conn.send("client", ACK)
    result = run(conn.segments)
    assert events(result, "server")["synack_retransmit"] == 1
    assert "retransmit" not in events(result, "server")
    assert transitions(result, "server") == OPEN["server"]


def test_data_retransmit_is_a_repeated_sequence_range_and_new_data_is_not():
    conn = Conn().handshake()
    first = conn.send("client", PSH | ACK, payload=100)
    conn.send("client", PSH | ACK, payload=100)
    conn.segments.append(first)  # the first range again
    conn.send("client", PSH | ACK, payload=100)  # new data
    conn.send("server", ACK)  # a pure ACK is never a retransmission
    conn.send("server", ACK)
    result = run(conn.segments)
    assert events(result, "client")["retransmit"] == 1
    assert "retransmit" not in events(result, "server")


def test_fin_retransmit_is_counted_and_transitions_stay_once():
    conn = Conn().handshake()
    fin = conn.send("server", FIN | ACK)
    conn.segments.append(fin)
    conn.send("client", ACK)
    conn.send("client", FIN | ACK)
    conn.send("server", ACK)
    result = run(conn.segments)
    assert events(result, "server")["retransmit"] == 1
    assert transitions(result, "server") == {**OPEN["server"], **ACTIVE_CLOSE}
    assert transitions(result, "client") == {**OPEN["client"], **PASSIVE_CLOSE}


@pytest.mark.parametrize("first", ["client", "server"])
def test_simultaneous_close_goes_through_closing(first):
    """Both FINs cross: the second one seen does not acknowledge the first (its sender had not
    received it yet), whichever side's FIN the capture saw first."""
    conn = Conn().handshake()
    second = "server" if first == "client" else "client"
    conn.send(first, FIN | ACK)
    crossing = conn.send(second, FIN | ACK)
    conn.segments[-1] = crossing._replace(ack=conn.segments[-2].seq)  # not acking the first FIN
    conn.send(first, ACK)
    conn.send(second, ACK)
    result = run(conn.segments)
    closing = {"ESTABLISHED->FIN_WAIT1": 1, "FIN_WAIT1->CLOSING": 1, "CLOSING->CLOSE": 1}
    assert transitions(result, "client") == {**OPEN["client"], **closing}
    assert transitions(result, "server") == {**OPEN["server"], **closing}
    assert events(result, first)["state_change"] == 5 and events(result, second)["state_change"] == 5


def test_sequence_numbers_wrap_around():
    conn = Conn(client_isn=2**32 - 50, server_isn=2**32 - 1)
    conn.handshake()
    first = conn.send("client", PSH | ACK, payload=100)  # crosses 2^32
    conn.segments.append(first)
    conn.close("server")
    result = run(conn.segments)
    assert events(result, "client")["retransmit"] == 1
    assert transitions(result, "client") == {**OPEN["client"], **PASSIVE_CLOSE}
    assert transitions(result, "server") == {**OPEN["server"], **ACTIVE_CLOSE}


def test_port_reuse_after_time_wait_is_a_new_connection():
    segments = Conn(client_isn=1000).handshake().close("server").segments
    segments += Conn(client_isn=900_000).handshake().close("server").segments  # same 4-tuple
    result = run(segments)
    assert transitions(result, "client")["CLOSE->SYN_SENT"] == 2
    assert transitions(result, "server")["FIN_WAIT2->CLOSE"] == 2
    assert "retransmit" not in events(result, "client")


def test_segments_of_unknown_flows_are_counted_not_guessed():
    conn = Conn().handshake()
    stray = conn.segments[2:]  # the handshake's ACK without its SYN
    stray.append(Segment(S, SPORT, C, 1234, 1, 0, RST, 0))
    result = run(stray)
    assert result["packets"]["unmatched"] == 1 and result["packets"]["unmatched_rst"] == 1
    assert transitions(result, "client") == {} and transitions(result, "server") == {}
    assert events(result, "server") == {"reset_sent": 1}  # the RST was sent, whatever it answered


def test_addresses_outside_the_sides_are_other():
    tracker = FlowTracker(SIDES)
    tracker.feed(Segment("198.18.0.9", 1, S, SPORT, 1, 0, SYN, 0))
    assert tracker.result()["sides"]["other"]["transitions"] == {"CLOSE->SYN_SENT": 1}


def test_memory_is_bounded_by_finished_flows():
    tracker = FlowTracker(SIDES, max_finished_flows=100)
    for i in range(1000):
        for seg in Conn(cport=10000 + i).handshake().close("server").segments:
            tracker.feed(seg)
    result = tracker.result()
    assert transitions(result, "client")["LAST_ACK->CLOSE"] == 1000
    assert result["flows"] == {"opened": 1000, "live_at_end": 0, "finished_kept": 100}


# --- decoding captured frames (built with scapy: an independent encoder) --------------------------

def frame(packet) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / packet)


def test_decode_reads_headers_and_payload_length_from_a_truncated_frame():
    raw = frame(IP(src=C, dst=S) / TCP(sport=CPORT, dport=SPORT, seq=7, ack=9, flags="PA",
                                         options=[("Timestamp", (1, 2)), ("NOP", None), ("NOP", None)])
                / (b"x" * 1000))
    seg = decode_ethernet(raw[:MIN_SNAPLEN], len(raw))
    assert seg == Segment(C, CPORT, S, SPORT, 7, 9, PSH | ACK, 1000)


def test_decode_flags():
    raw = frame(IP(src=S, dst=C) / TCP(sport=SPORT, dport=CPORT, flags="SA"))
    assert decode_ethernet(raw, len(raw)).flags == SYN | ACK
    raw = frame(IP(src=S, dst=C) / TCP(sport=SPORT, dport=CPORT, flags="RA"))
    assert decode_ethernet(raw, len(raw)).flags == RST | ACK


@pytest.mark.parametrize("packet", [ARP(), IPv6() / TCP(), IP() / UDP(), IP(frag=3, proto=6) / (b"x" * 40)],
                         ids=["arp", "ipv6", "udp", "fragment"])
def test_decode_refuses_what_is_not_a_tcp_ipv4_header(packet):
    raw = frame(packet)
    assert decode_ethernet(raw, len(raw)) == "not_tcp"


def test_decode_reports_truncation_below_the_tcp_header():
    raw = frame(IP(src=C, dst=S) / TCP())
    assert decode_ethernet(raw[:40], len(raw)) == "truncated"


def test_a_connection_whose_syn_was_not_captured_is_not_pinned_on_the_previous_one():
    """Ring drops: the SYN of a newer connection on the same 4-tuple is missing. Its SYN-ACK acks
    a SYN this capture never saw, and its FINs sit elsewhere in sequence space: all unmatched."""
    old = Conn(client_isn=1000, server_isn=5000).handshake().close("server")
    new = Conn(client_isn=7_000_000, server_isn=9_000_000).handshake().close("server")
    result = run(old.segments + new.segments[1:], keep=state_filter)  # the new SYN dropped
    assert transitions(result, "client")["CLOSE->SYN_SENT"] == 1
    assert "LAST_ACK->CLOSE" not in transitions(result, "client")
    assert transitions(result, "server")["FIN_WAIT2->CLOSE"] == 1
    assert result["packets"]["unmatched"] == 3  # SYN-ACK and both FINs of the unseen connection
    # and when the SYN-ACK is lost too, the FINs alone still do not close the old flow again
    result = run(old.segments + new.segments[2:], keep=state_filter)
    assert "LAST_ACK->CLOSE" not in transitions(result, "client")
    assert result["packets"]["unmatched"] == 2


def test_an_rst_after_the_unseen_last_ack_closes_nothing():
    """Under the state filter the client stays LAST_ACK as far as packets show; an RST it sends
    later comes from the stack answering for a socket that is gone, not from an abort."""
    conn = Conn().handshake().close("server")
    conn.send("client", RST)
    result = run(conn.segments, keep=state_filter)
    assert "LAST_ACK->CLOSE" not in transitions(result, "client")
    assert events(result, "client")["reset_sent"] == 1


def test_a_segment_reordered_before_the_capture_is_not_a_retransmission():
    """Two CPUs feed the veth: segment 2 may be captured before segment 1. Segment 1 then fills a
    gap never seen (no retransmission); sending segment 1 again repeats seen space (one)."""
    conn = Conn().handshake()
    first = conn.send("client", PSH | ACK, payload=100)
    second = conn.send("client", PSH | ACK, payload=100)
    third = conn.send("client", PSH | ACK, payload=100)
    conn.segments[-3:] = [second, first, third]
    assert "retransmit" not in events(run(conn.segments), "client")
    conn.segments.append(first)
    assert events(run(conn.segments), "client")["retransmit"] == 1


def test_a_retransmission_overlapping_a_gap_and_seen_space_counts():
    conn = Conn().handshake()
    first = conn.send("client", PSH | ACK, payload=100)
    conn.send("client", PSH | ACK, payload=100)
    del conn.segments[-1]  # the second segment never captured: a hole after the first
    conn.send("client", PSH | ACK, payload=100)
    conn.segments.append(first._replace(payload_bytes=200))  # first and second resent in one skb
    assert events(run(conn.segments), "client")["retransmit"] == 1


def test_sampled_flows_keep_their_transitions_with_time_and_match_flow_by_flow():
    """Flows whose client port is a multiple of the sample keep each transition with its packet's
    time, as sides and state numbers the BPF record uses; flowmatch then scores them like BPF's."""
    from harness.analysis import flowmatch
    from harness.flows import truth_flows
    from harness.workloads.base import connection_transitions

    times = iter(range(1000, 100000, 10))
    tracker = FlowTracker(SIDES, flow_sample=64, timestamp=lambda when: when)
    sampled, other = Conn(cport=64 * 600), Conn(cport=64 * 600 + 2)
    for conn in (sampled, other):
        conn.handshake().close("server")
    for seg in sampled.segments + other.segments:
        tracker.feed(seg, next(times))
    flow_events = tracker.result()["flow_events"]
    assert flow_events["overflow"] == 0
    assert {e[5] for e in flow_events["events"]} == {64 * 600}  # the other flow is not kept
    assert [e[0] for e in flow_events["events"]] == sorted(e[0] for e in flow_events["events"])
    assert len(flow_events["events"]) == 10 and {e[1] for e in flow_events["events"]} == {0, 1}
    truth = truth_flows(64, [[64 * 600, 999]], 0, connection_transitions("server"))
    result = flowmatch.match(truth, flow_events["events"], scored=frozenset({"transitions"}))
    assert result["sides"]["client"]["exact"] == result["sides"]["server"]["exact"] == 1
    # under the state filter the client's LAST_ACK->CLOSE is invisible: unscored, not missing
    tracker = FlowTracker(SIDES, flow_sample=64, timestamp=lambda when: when)
    for seg in sampled.segments:
        if state_filter(seg):
            tracker.feed(seg, 2000)
    events_ = tracker.result()["flow_events"]["events"]
    assert flowmatch.match(truth, events_, scored=frozenset({"transitions"}))["sides"]["client"]["missing"] == 1
    result = flowmatch.match(truth, events_, scored=frozenset({"transitions"}), invisible=["LAST_ACK->CLOSE"])
    assert result["sides"]["client"]["exact"] == 1 and result["not_scored"] == ["LAST_ACK->CLOSE"]


def test_without_a_clock_nothing_is_sampled():
    tracker = FlowTracker(SIDES, flow_sample=64)
    for seg in Conn(cport=64 * 600).handshake().segments:
        tracker.feed(seg)
    assert "flow_events" not in tracker.result()
