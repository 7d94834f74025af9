"""The pcap backend without root: its parameters, its file reader and its mapping to the schema."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from harness.decoders.pcap_infer import INVISIBLE_STATE_FILTER, MIN_SNAPLEN
from harness.backends import BACKENDS
from harness.tcp import EVENT_KINDS
from harness.backends.pcap import FILTERS, VISIBLE_KINDS, observation_from
from harness.decoders.pcap_file import PcapFileError, read_capture_file
from harness.errors import UsageError
from harness.params import resolve

C, S = "198.18.0.1", "198.18.0.2"
SIDES = {C: "client", S: "server"}
PCAP = BACKENDS["pcap"]


def test_defaults_are_the_cheap_capture_a_competent_engineer_deploys():
    values = resolve("pcap", PCAP.params, {})
    assert values == {"filter": "state", "consumer": "python", "snaplen": MIN_SNAPLEN, "buffer_mib": 64,
                      "timeout_ms": 100}
    assert MIN_SNAPLEN == 14 + 20 + 20  # headers only: not one payload byte
    assert FILTERS["state"] == "tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0"


@pytest.mark.parametrize("given, message", [
    ({"filter": "syn"}, "must be one of state, full"),
    ({"consumer": "rust"}, "must be one of python, tcpdump, c"),
    ({"snaplen": "53"}, "must be >= 54"),
    ({"buffer_mib": "0"}, "must be >= 1"),
    ({"timeout_ms": "5000"}, "must be <= 1000"),
    ({"promisc": "1"}, "pcap has no parameter 'promisc'"),
])
def test_bad_parameters_are_usage_errors(given, message):
    with pytest.raises(UsageError, match=message):
        resolve("pcap", PCAP.params, given)


def churn_frames(connections: int) -> list:
    """What the state filter passes for server-first closes, as frames with 200-byte payloads cut."""
    frames = []
    for i in range(connections):
        port, cs, ss = 40000 + i, 1000 + i, 90000 + i
        c2s = Ether() / IP(src=C, dst=S) / TCP(sport=port, dport=7000)
        s2c = Ether() / IP(src=S, dst=C) / TCP(sport=7000, dport=port)
        syn = c2s.copy()
        syn[TCP].flags, syn[TCP].seq = "S", cs
        synack = s2c.copy()
        synack[TCP].flags, synack[TCP].seq, synack[TCP].ack = "SA", ss, cs + 1
        sfin = s2c.copy()
        sfin[TCP].flags, sfin[TCP].seq, sfin[TCP].ack = "FA", ss + 1, cs + 1
        cfin = c2s.copy()
        cfin[TCP].flags, cfin[TCP].seq, cfin[TCP].ack = "FA", cs + 1, ss + 2
        frames += [syn, synack, sfin, cfin]
    return frames


def test_the_tcpdump_consumers_reader_infers_from_a_pcap_file(tmp_path):
    path = tmp_path / "capture.pcap"
    wrpcap(str(path), churn_frames(50))
    result = read_capture_file(path, SIDES)
    assert result["packets"]["captured"] == 200
    assert result["packets"]["syn"] == 50 and result["packets"]["fin"] == 100
    assert result["sides"]["client"]["transitions"] == {
        "CLOSE->SYN_SENT": 50, "SYN_SENT->ESTABLISHED": 50, "ESTABLISHED->CLOSE_WAIT": 50, "CLOSE_WAIT->LAST_ACK": 50}
    assert result["sides"]["server"]["transitions"]["FIN_WAIT2->CLOSE"] == 50


def test_a_file_that_is_not_pcap_is_refused(tmp_path):
    path = tmp_path / "capture.pcap"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(PcapFileError, match="not a pcap file"):
        read_capture_file(path, SIDES)


def test_observation_reports_zero_for_visible_kinds_and_lists_the_invisible(tmp_path):
    path = tmp_path / "capture.pcap"
    wrpcap(str(path), churn_frames(3))
    details = {"pcap_stats": {"received": 12, "dropped": 0, "if_dropped": 0}}
    observation = observation_from(read_capture_file(path, SIDES), details, "state")
    assert observation.events == {"state_change": 27, "retransmit": 0, "synack_retransmit": 0,
                                  "reset_sent": 0, "reset_received": 0}
    assert set(observation.events) == set(VISIBLE_KINDS) < set(EVENT_KINDS)
    for side in ("client", "server"):
        assert observation.sides[side]["events"]["reset_sent"] == 0
    assert observation.lost == 0
    assert {"sock_destroy", "probe", "pid, comm", "CLOSE->LISTEN, LISTEN->CLOSE"} <= set(observation.details["invisible"])
    assert set(INVISIBLE_STATE_FILTER) <= set(observation.details["invisible"])
    full = observation_from(read_capture_file(path, SIDES), details, "full")
    assert not set(INVISIBLE_STATE_FILTER) & set(full.details["invisible"])
