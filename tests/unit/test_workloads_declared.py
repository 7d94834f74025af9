"""Workload registration, parameter validation and the declared expectations (no root needed)."""

import pytest

from harness.tcp import EVENT_KINDS
from harness.errors import UsageError
from harness.runner import plan
from harness.workloads import WORKLOADS, get_workload
from harness.workloads import churn, resets, rr, stream, synack
from harness.workloads.base import EXPECTATION_KEYS
from harness.workloads.netfilter import DropRule

ALL = ("churn", "rr", "stream", "resets", "loss", "synack")


def test_every_workload_of_the_issue_is_registered_with_an_operation():
    assert set(ALL) <= set(WORKLOADS)
    for name in ALL:
        workload = get_workload(name)
        assert workload.operation and workload.description and workload.params


@pytest.mark.parametrize("workload, assignment, message", [
    ("churn", "connections=-1", "must be >= 1, not -1"),
    ("churn", "closer=both", "must be one of server, client"),
    ("churn", "generator=rust", "must be one of c, python"),
    ("churn", "bytes=-3", "must be >= 0, not -3"),
    ("rr", "request=0", "must be >= 1, not 0"),
    ("rr", "response=0", "must be >= 1, not 0"),
    ("rr", "transactions=0", "must be >= 1, not 0"),
    ("stream", "message=0", "must be >= 1, not 0"),
    ("stream", "bytes=0", "must be >= 1, not 0"),
    ("stream", "duration=-1", "must be >= 0, not -1"),
    ("loss", "every=0", "must be >= 2, not 0"),
    ("loss", "every=1", "must be >= 2, not 1"),
    ("loss", "offloads=maybe", "takes a boolean"),
    ("resets", "aborts=-1", "must be >= 0, not -1"),
    ("synack", "every=0", "must be >= 2, not 0"),
    ("synack", "concurrency=0", "must be >= 1, not 0"),
    ("synack", "synacks=3", "unknown parameter 'synacks'"),
])
def test_impossible_parameters_are_refused_before_anything_runs(workload, assignment, message):
    name, _, value = assignment.partition("=")
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        plan([workload], ["none"], {name: value})


def _check_shape(expected):
    assert set(expected) == {"client", "server"}
    for side in expected.values():
        assert set(side) == set(EXPECTATION_KEYS)
        assert set(side["events"]) <= set(EVENT_KINDS)
        assert side["events"]["state_change"] == sum(side["transitions"].values())
        for name in side["equals_nstat"]:
            assert name in EVENT_KINDS
        # a count is either declared exact or explained, never both
        assert not set(side["inexact"]) & (set(side["events"]) | set(side["nstat"]))


def test_churn_server_closing_first_declares_the_servers_active_close():
    expected = churn.expected_events(100, "server")
    _check_shape(expected)
    assert expected["server"]["transitions"] == {
        "CLOSE->LISTEN": 1, "LISTEN->CLOSE": 1, "LISTEN->SYN_RECV": 100, "SYN_RECV->ESTABLISHED": 100,
        "ESTABLISHED->FIN_WAIT1": 100, "FIN_WAIT1->FIN_WAIT2": 100, "FIN_WAIT2->CLOSE": 100,
    }
    assert expected["client"]["transitions"]["CLOSE_WAIT->LAST_ACK"] == 100
    assert expected["client"]["nstat"]["TcpActiveOpens"] == 100
    assert expected["server"]["nstat"]["TcpPassiveOpens"] == 100
    assert expected["client"]["events"]["reset_sent"] == 0


def test_churn_client_closing_first_swaps_the_active_close():
    expected = churn.expected_events(10, "client", size=100)
    _check_shape(expected)
    assert expected["client"]["transitions"]["ESTABLISHED->FIN_WAIT1"] == 10
    assert expected["server"]["transitions"]["CLOSE_WAIT->LAST_ACK"] == 10
    assert "ESTABLISHED->FIN_WAIT1" not in expected["server"]["transitions"]


def test_churn_beyond_half_the_port_range_does_not_claim_exact_resets():
    expected = churn.expected_events(40000, "server", port_reuse=True)
    _check_shape(expected)
    for side in expected.values():
        assert "TcpOutRsts" in side["inexact"] and "TcpOutRsts" not in side["nstat"]
        assert side["nstat"]["TcpActiveOpens"] + side["nstat"]["TcpPassiveOpens"] == 40000


def test_rr_declares_probes_as_a_lower_bound_only():
    expected = rr.expected_events(4, 1000)
    _check_shape(expected)
    assert expected["client"]["at_least"]["probe"] == 1000
    assert "probe" not in expected["client"]["events"]
    assert expected["client"]["transitions"]["CLOSE->SYN_SENT"] == 4


def test_resets_declare_who_sends_and_who_receives_each_rst():
    expected = resets.expected_events(aborts=7, refused=5)
    _check_shape(expected)
    client, server = expected["client"], expected["server"]
    assert client["events"]["reset_sent"] == 7 and server["events"]["reset_received"] == 7
    assert server["events"]["reset_sent"] == 5 and client["events"]["reset_received"] == 5
    assert client["nstat"] == {"TcpActiveOpens": 12, "TcpPassiveOpens": 0, "TcpAttemptFails": 5,
                               "TcpOutRsts": 7, "TcpEstabResets": 7, "TcpExtTCPAbortOnData": 7}
    assert server["nstat"] == {"TcpActiveOpens": 0, "TcpPassiveOpens": 7, "TcpAttemptFails": 0,
                               "TcpOutRsts": 5, "TcpEstabResets": 7}
    assert client["transitions"] == {"CLOSE->SYN_SENT": 12, "SYN_SENT->ESTABLISHED": 7,
                                     "ESTABLISHED->CLOSE": 7, "SYN_SENT->CLOSE": 5}
    assert server["transitions"]["ESTABLISHED->CLOSE"] == 7


def test_loss_declares_retransmitted_segments_as_at_least_the_drops_on_the_sender():
    expected = stream.expected_events(dropped=42)
    _check_shape(expected)
    # skbs, not segments: one retransmitted GSO skb may carry several dropped segments
    assert expected["client"]["at_least"]["retransmit"] == 1
    assert stream.expected_events(dropped=0)["client"]["at_least"]["retransmit"] == 0
    assert expected["client"]["at_least"]["TcpRetransSegs"] == 42
    assert "retransmit" not in expected["server"]["at_least"]
    assert "retransmit" in expected["client"]["inexact"]
    plain = stream.expected_events()
    assert "retransmit" not in plain["client"]["at_least"]


def test_synack_ties_the_event_to_the_counter_counted_beside_it():
    expected = synack.expected_events(100, 25)
    _check_shape(expected)
    assert expected["server"]["equals_nstat"]["synack_retransmit"] == "TcpExtTCPSynRetrans"
    assert expected["server"]["at_least"]["synack_retransmit"] == 25
    assert expected["client"]["equals_nstat"]["retransmit"] == "TcpRetransSegs"
    assert expected["client"]["transitions"]["CLOSE->SYN_SENT"] == 100


def test_a_drop_rule_never_drops_everything():
    with pytest.raises(ValueError):
        DropRule(None, "INPUT", [], 1, "x")


def test_one_backend_in_several_settings_is_one_cell_each_with_its_own_parameters_over_the_shared_ones():
    cells = plan(["churn"], ["tracepoint[flavour=tp]", "tracepoint", "tracepoint[flavour=tp_btf,mode=stream]"],
                 {"mode": "aggregate", "connections": "50"})
    assert [c.label for c in cells] == ["churn/tracepoint[mode=aggregate,flavour=tp]",
                                        "churn/tracepoint[mode=aggregate]", "churn/tracepoint[flavour=tp_btf]"]
    assert all(c.workload_params["connections"] == 50 for c in cells)
