"""The peers' fidelity under their own declarations (harness.backends.peers.TOOLS, imported, never
copied): a kind a tool declares it cannot see covers every name of that kind (tcplife's and
tcpretrans's `state_change` covers FIN_WAIT2->CLOSE), so neither the rows nor the kernel-counter
checks charge it as missing or as lost uncounted; a transition a tool claims to see and misses is
still charged. Issue 30: on churn (10,000 connections) tcplife was reported "at least 29,978 lost
uncounted" and "missing 99,780", tcpretrans "at least 30,000 lost uncounted": the checks are keyed
by transition names, the declarations by kind, and the skip compared the two as strings.

The trials are synthetic, with the workloads' own declarations (harness.workloads churn, resets)
and the kernel counting exactly what was declared."""

import pytest

from harness.analysis.fidelity import (cell_fidelity, declared_invisible, invisible_names, partly_invisible,
                                       row_status)
from harness.analysis.visibility import visibility
from harness.backends.bpf_session import SOCKETLESS_RESET_REASON
from harness.backends.pcap import INVISIBLE, INVISIBLE_STATE_FILTER
from harness.backends.peers import TOOLS
from harness.report_format import fidelity_summary
from harness.tcp import CLOSE, FIN_WAIT2, LAST_ACK, SIDES, arrow
from harness.workloads import churn, resets

CONNECTIONS = 10_000
BLIND_TO_STATES = ("bcc-tcplife", "bcc-tcpretrans")  # they declare the kind state_change invisible
SEE_STATES = ("bcc-tcpstates", "bpftrace")


def _trial(expected: dict, sides: dict, details: dict, lost: int | None = 0, tw: int = 0) -> dict:
    """One ok trial: the kernel counted what the workload declared (and `tw` server TIME_WAITs)."""
    nstat = {side: {**expected[side]["nstat"], "TcpRetransSegs": 0} for side in SIDES}
    nstat["server"]["TcpExtTW"] = tw
    return {"index": 0, "status": "ok",
            "ground_truth": {"generator": {}, "expected": expected, "nstat": nstat},
            "observed": {"events": {}, "transitions": {}, "sides": sides, "lost": lost, "details": details}}


def _churn(sides: dict, details: dict, lost: int | None = 0) -> dict:
    return _trial(churn.expected_events(CONNECTIONS), sides, details, lost, tw=CONNECTIONS)  # the server closes


def _cell(backend: str, trial: dict, workload: str = "churn") -> dict:
    return {"label": f"{workload}/{backend}", "workload": workload, "backend": backend, "operation": "connection",
            "params": {"workload": {}, "backend": {}}, "available": True, "trials": [trial]}


def _peer(tool: str) -> dict:
    return {"invisible": TOOLS[tool].invisible}


def _state_reason(tool: str) -> str:
    """The tool's reason for not seeing state changes (its keys may list several kinds)."""
    return invisible_names(_peer(tool))["state_change"]


def _perfect_transitions(expected: dict) -> dict:
    """Every declared transition and state change, as a tool that sees them all reports them."""
    return {side: {"events": {"state_change": expected[side]["events"]["state_change"]},
                   "transitions": dict(expected[side]["transitions"])} for side in SIDES}


# What each tool reports on churn: tcplife one session per connection, tcpretrans nothing (no loss)
PEER_SIDES = {
    "bcc-tcplife": {side: {"events": {"session": CONNECTIONS}, "transitions": {}} for side in SIDES},
    "bcc-tcpretrans": {side: {"events": {}, "transitions": {}} for side in SIDES},
}


def test_a_kind_declared_invisible_covers_its_transitions_and_a_name_only_itself():
    for tool in BLIND_TO_STATES:
        invisible = invisible_names(_peer(tool))
        assert declared_invisible(arrow(FIN_WAIT2, CLOSE), invisible) == _state_reason(tool)
        assert declared_invisible("state_change", invisible) is not None
    for tool in SEE_STATES:  # they claim every transition: none is covered, their other kinds are
        invisible = invisible_names(_peer(tool))
        assert declared_invisible(arrow(FIN_WAIT2, CLOSE), invisible) is None
        assert declared_invisible("reset_sent", invisible) is not None
    assert declared_invisible("retransmit", invisible_names(_peer("bcc-tcpretrans"))) is None
    # pcap's declarations by transition name cover that transition only; a qualified key covers nothing
    pcap = invisible_names({"invisible": {**INVISIBLE, **INVISIBLE_STATE_FILTER}})
    assert declared_invisible(arrow(LAST_ACK, CLOSE), pcap) is not None
    assert declared_invisible(arrow(FIN_WAIT2, CLOSE), pcap) is None
    assert declared_invisible("retransmit", pcap) is None and partly_invisible("retransmit", pcap)
    socketless = invisible_names({"invisible": {"reset_sent (socketless)": SOCKETLESS_RESET_REASON}})
    assert declared_invisible("reset_sent", socketless) is None and partly_invisible("reset_sent", socketless)


@pytest.mark.parametrize("tool", BLIND_TO_STATES)
def test_on_churn_a_peer_blind_to_state_changes_is_charged_no_loss_and_nothing_missing(tool):
    result = cell_fidelity(_cell(tool, _churn(PEER_SIDES[tool], _peer(tool), lost=22)))
    assert result["lost_reported"] == 22
    # before the fix, both: "missing 99,780; ... at least 29,978 lost uncounted", the tcplife line
    assert result["uncounted_shortfall"] == 0
    assert result["probable_silent_loss"] is None
    assert sum(r["missing"] or 0 for r in result["rows"]) == 0
    assert not [c for c in result["kernel_checks"] if c["shortfall"]]
    transitions = [r for r in result["rows"] if r["category"] == "transition"]
    assert transitions and all(row_status(r) == "invisible" for r in transitions)
    assert {r["invisible"] for r in transitions} == {_state_reason(tool)}
    summary = fidelity_summary(result)
    assert "missing" not in summary and "uncounted" not in summary, summary
    # and the visibility matrix gives the tool's own reason for every transition it does not see
    cells = {r["name"]: r["cells"][tool] for r in visibility({"cells": [_cell(tool, _churn(
        PEER_SIDES[tool], _peer(tool)))]})["rows"] if r["category"] == "transition"}
    assert cells[arrow(FIN_WAIT2, CLOSE)]["reason"] == _state_reason(tool)


@pytest.mark.parametrize("tool", BLIND_TO_STATES)
def test_on_resets_the_aborts_estab_resets_are_not_charged_to_a_peer_blind_to_state_changes(tool):
    expected = resets.expected_events(aborts=7_500, refused=7_500)
    sides = {side: {"events": {}, "transitions": {}} for side in SIDES}
    result = cell_fidelity(_cell(tool, _trial(expected, sides, _peer(tool)), "resets"))
    # before the fix 37,500: opens, and both sides' TcpEstabResets against ESTABLISHED->CLOSE
    assert result["uncounted_shortfall"] == 0
    assert sum(r["missing"] or 0 for r in result["rows"]) == 0


@pytest.mark.parametrize("tool", SEE_STATES)
def test_a_peer_that_claims_state_changes_and_misses_some_is_still_charged(tool):
    expected = churn.expected_events(CONNECTIONS)
    sides = _perfect_transitions(expected)
    sides["server"]["transitions"][arrow(FIN_WAIT2, CLOSE)] -= 100  # TcpExtTW counted them all
    result = cell_fidelity(_cell(tool, _churn(sides, _peer(tool), lost=30)))
    assert result["uncounted_shortfall"] == 70  # 100 short of TcpExtTW, 30 of them counted lost
    row = next(r for r in result["rows"] if (r["side"], r["name"]) == ("server", arrow(FIN_WAIT2, CLOSE)))
    assert (row["lost"], row["missing"], row_status(row)) == (30, 70, "missing")
    tw = next(c for c in result["kernel_checks"] if c["counter"] == "TcpExtTW")
    assert (tw["seen"], tw["counted"], tw["shortfall"], tw["partly_invisible"]) == (
        CONNECTIONS - 100, CONNECTIONS, 100, False)
    assert "at least 70 lost uncounted" in fidelity_summary(result)
    # the kinds it declares invisible are still not charged: no reset or destroy row is missing
    assert all(row_status(r) == "invisible" for r in result["rows"] if r["name"] in ("sock_destroy", "reset_sent"))


def test_a_name_declared_invisible_but_reported_is_compared():
    # a declaration yields to evidence: a backend reporting a transition is held to its count
    sides = {side: {"events": {}, "transitions": {}} for side in SIDES}
    sides["server"]["transitions"][arrow(FIN_WAIT2, CLOSE)] = CONNECTIONS - 5
    result = cell_fidelity(_cell("bcc-tcplife", _churn(sides, _peer("bcc-tcplife"))))
    row = next(r for r in result["rows"] if (r["side"], r["name"]) == ("server", arrow(FIN_WAIT2, CLOSE)))
    assert (row["missing"], row_status(row)) == (5, "missing")
    assert result["uncounted_shortfall"] == 5
