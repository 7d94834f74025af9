"""Per-flow matching on synthetic events: every outcome, port reuse split by time, what is scored; the flow
sample as the run keeps it (harness/flows.py) and as the analysis reads it back."""

import struct

from harness import flows
from harness.analysis import flowmatch
from harness.workloads.base import connection_transitions

CLOSE, SYN_SENT, ESTABLISHED, SYN_RECV = 7, 2, 1, 3
FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, LISTEN = 4, 5, 8, 9, 10
STATE, DESTROY, RETRANSMIT = 0, 5, 1
# server closes first: client CLOSE->SYN_SENT->ESTABLISHED->CLOSE_WAIT->LAST_ACK->CLOSE,
# server (a child cloned from the listener) LISTEN->SYN_RECV->ESTABLISHED->FIN_WAIT1->FIN_WAIT2->CLOSE
CLIENT = [(CLOSE, SYN_SENT), (SYN_SENT, ESTABLISHED), (ESTABLISHED, CLOSE_WAIT), (CLOSE_WAIT, LAST_ACK),
          (LAST_ACK, CLOSE)]
SERVER = [(LISTEN, SYN_RECV), (SYN_RECV, ESTABLISHED), (ESTABLISHED, FIN_WAIT1), (FIN_WAIT1, FIN_WAIT2), (FIN_WAIT2, CLOSE)]


def connection(port, start, skip=(), twice=()):
    """One connection's events as the C consumer keeps them, 10 ns apart from `start`."""
    events, t = [], start
    for side, chain in ((0, CLIENT), (1, SERVER)):
        for old, new in chain:
            for _ in range(1 + ((side, old, new) in twice)):
                if (side, old, new) not in skip:
                    t += 10
                    events.append([t, side, STATE, old, new, port])
        if (side, "destroy") not in skip:
            t += 10
            events.append([t, side, DESTROY, 0, 0, port])
    return events


def truth(*started):
    return flows.truth_flows(64, [list(f) for f in started], 0, connection_transitions("server"))


def test_whole_connections_are_exact_and_extra_kinds_are_not_scored():
    events = connection(64, 1000) + connection(128, 2000) + [[1055, 0, RETRANSMIT, 1, 1, 64]]
    result = flowmatch.match(truth((64, 1000), (128, 2000)), events)
    assert result["flows"] == 2
    assert result["sides"]["client"] == {"exact": 2, "missing": 0, "duplicated": 0, "unexpected": 0,
                                         "out_of_order": 0, "unseen": 0}
    assert result["sides"]["server"]["exact"] == 2 and not result["examples"]


def test_each_fault_is_named_on_its_side():
    events = (connection(64, 1000, skip={(0, CLOSE_WAIT, LAST_ACK)})
              + connection(128, 2000, twice={(1, ESTABLISHED, FIN_WAIT1)})
              + connection(192, 3000, skip={(1, "destroy")}))
    events.append([3500, 0, STATE, ESTABLISHED, FIN_WAIT1, 192])  # a transition one connection never makes
    result = flowmatch.match(truth((64, 1000), (128, 2000), (192, 3000), (256, 4000)), events)
    client, server = result["sides"]["client"], result["sides"]["server"]
    assert (client["missing"], client["unexpected"], client["unseen"], client["exact"]) == (1, 1, 1, 1)
    assert (server["duplicated"], server["missing"], server["unseen"], server["exact"]) == (1, 1, 1, 1)
    assert {e["port"] for e in result["examples"]} <= {64, 128, 192, 256} and len(result["examples"]) == 3


def test_a_reused_port_splits_by_connect_time_and_order_is_checked():
    first, second = connection(64, 1000), connection(64, 5000)
    swapped = [list(e) for e in second]
    swapped[1][0], swapped[2][0] = swapped[2][0], swapped[1][0]  # two client transitions' times swapped
    result = flowmatch.match(truth((64, 5000), (64, 1000)), first + swapped)
    assert result["flows"] == 2
    assert result["sides"]["client"]["exact"] == 1 and result["sides"]["client"]["out_of_order"] == 1
    assert result["sides"]["server"]["exact"] == 2


def test_events_before_any_flow_or_on_unknown_ports_are_unmatched():
    events = connection(64, 1000) + [[500, 0, STATE, CLOSE, SYN_SENT, 64], [1500, 1, DESTROY, 0, 0, 320]]
    result = flowmatch.match(truth((64, 1000)), events)
    assert result["unmatched_events"] == {"state_change": 1, "sock_destroy": 1}
    assert result["sides"]["client"]["exact"] == 1


def test_only_what_the_observer_hooked_is_scored():
    events = [e for e in connection(64, 1000) if e[2] != DESTROY]
    assert flowmatch.match(truth((64, 1000)), events)["sides"]["client"]["missing"] == 1
    assert flows.scored_from_hooks(["sock:inet_sock_set_state"]) == {"transitions"}
    assert flows.scored_from_hooks(["kprobe:tcp_set_state", "kprobe:tcp_v4_destroy_sock"]) == flows.SCORED
    result = flowmatch.match(truth((64, 1000)), events, scored=frozenset({"transitions"}))
    assert result["sides"]["client"]["exact"] == 1 and result["scored"] == ["transitions"]


def test_raw_records_are_sampled_by_client_port_like_the_c_consumer():
    def record(side, sport, dport):  # tcp_events.bpf.h's 56-byte struct event
        return struct.pack("<QQIBBBBIIHHI16s", 7, 0xffff0001, 1, STATE, side, ESTABLISHED, FIN_WAIT1,
                           0, 0, sport, dport, 0, b"x")
    assert flows.sample_record(record(0, 128, 7000)) == [7, 0, STATE, ESTABLISHED, FIN_WAIT1, 128]
    assert flows.sample_record(record(1, 7000, 128)) == [7, 1, STATE, ESTABLISHED, FIN_WAIT1, 128]
    assert flows.sample_record(record(0, 130, 7000)) is None  # not a sampled port
    assert flows.sample_record(record(1, 7000, 0)) is None  # the listener
    assert len(record(0, 1, 2)) == 56


def test_a_record_keeps_the_raw_sample_and_the_analysis_matches_it():
    import json

    events = connection(64, 1000, skip={(0, CLOSE_WAIT, LAST_ACK)}) + connection(128, 2000)
    observed = {"events": events, "overflow": 0, "scored": ["sock_destroy", "transitions"], "sk_overflow": 2,
                "unrelated": "not kept"}
    trial = json.loads(json.dumps({"status": "ok", "flow_sample": flows.flow_sample(truth((64, 1000), (128, 2000)),
                                                                                    observed)}))
    assert "unrelated" not in trial["flow_sample"]["observed"]
    result = flowmatch.trial_flows(trial)
    assert result == {**flowmatch.match(truth((64, 1000), (128, 2000)), events), "sk_overflow": 2}
    assert result["sides"]["client"]["missing"] == 1 and result["sides"]["server"]["exact"] == 2
    old = {"status": "ok", "flows": result}  # a record made before raw samples were kept
    run = {"cells": [{"label": "churn/tracepoint", "workload": "churn", "backend": "tracepoint",
                      "params": {"workload": {}, "backend": {}}, "trials": [trial, old]}]}
    [[label, total]] = flowmatch.aggregate(run)["churn()"].items()
    assert label == "churn/tracepoint" and total["trials"] == 2 and total["flows"] == 4
