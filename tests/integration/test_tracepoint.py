"""The tracepoint backend against the workload's declaration, the kernel's counters and an
independent tracer (a private ftrace instance) on the same traffic."""

import json
import subprocess

import pytest

from harness.analysis import flowmatch
from harness.system import read_sysctl
from tests.helpers import FtraceCount, foreign_loopback_churn, tpbench
from tests.host import HiddenTails

pytestmark = pytest.mark.root

CHURN_PORT_FILTER = "sport == 7000 || dport == 7000"  # churn's server port: every socket of the run


def _run(*params: str, backend: str = "tracepoint", tmp_path, anyway: bool = False) -> dict:
    """anyway: an independent tracer on the hook, or foreign traffic keeping a CPU busy, which the
    preflight refuses without --measure-anyway (and then records)."""
    anyway = ["--measure-anyway"] if anyway else []
    # the classic tracepoint programs (flavour=tp): raw_tp and tp_btf are test_flavours.py's
    params = (*params, "flavour=tp")
    result = tpbench("run", "-b", backend, "-w", "churn", "-p", ",".join(params), "--json", "-o", str(tmp_path),
                     *anyway)
    assert result.returncode == 0, result.stderr
    [cell] = json.loads(result.stdout)["cells"]
    [trial] = cell["trials"]
    assert trial["status"] == "ok", trial.get("traceback")
    return trial


def _program(trial: dict, event: str) -> dict:
    return trial["observed"]["details"]["bpf_stats"]["programs"][f"tracepoint__{event.replace(':', '__')}"]


def _check_churn_accounting(trial: dict, connections: int, ftrace_states: int | None = None) -> None:
    observed, expected = trial["observed"], trial["ground_truth"]["expected"]
    assert trial["ground_truth"]["generator"]["connections"] == connections
    assert observed["details"]["lost_output"] == 0  # the buffer never filled at this size
    state_misses = _program(trial, "sock:inet_sock_set_state")["recursion_misses"]
    destroy_misses = _program(trial, "tcp:tcp_destroy_sock")["recursion_misses"]
    expected_states = sum(expected[side]["events"]["state_change"] for side in ("client", "server"))
    assert expected_states == 10 * connections + 2  # 5 per side per connection, + the listener
    # every expected transition was seen, or the kernel says it skipped it, or it was one of the
    # few tails this host hides from every BPF program (tests/host.py): never more, never extra.
    # Each program's misses are one count for the run, spent once whichever counts they fall in.
    tails = HiddenTails(counted={"state": state_misses, "destroy": destroy_misses})
    tails.check(observed["events"]["state_change"], expected_states, what="state changes", per_tail=2, pool="state")
    expected_destroys = sum(expected[side]["events"]["sock_destroy"] for side in ("client", "server"))
    tails.check(observed["events"]["sock_destroy"], expected_destroys, what="destroys", pool="destroy")
    # the same state changes transition by transition, on both sides: the state program's misses
    # once across every row (not once per row), the host's few tails at most one per row
    rows = HiddenTails(counted=state_misses)
    for side in ("client", "server"):
        seen = observed["sides"][side]["transitions"]
        assert set(seen) <= set(expected[side]["transitions"]), side
        for transition, count in expected[side]["transitions"].items():
            rows.check(seen.get(transition, 0), count, what=(side, transition))
    assert "other" not in observed["sides"]
    # what the kernel's own counters say happened is what the observer saw
    nstat = trial["ground_truth"]["nstat"]
    for side in ("client", "server"):
        events = observed["sides"][side]["events"]
        assert events.get("reset_sent", 0) <= nstat[side]["TcpOutRsts"]
        assert events.get("retransmit", 0) <= nstat[side]["TcpRetransSegs"]
    if ftrace_states is not None:
        assert ftrace_states == expected_states
        assert _program(trial, "sock:inet_sock_set_state")["run_cnt"] + state_misses + tails.hidden >= expected_states
    # flow by flow, on the sampled flows: each side of each one whole and in order, except where
    # the kernel skipped an event or the host hid one (one such event spoils at most one flow's
    # side: the misses are spent once over both sides, not once per side)
    if observed["details"].get("consumer") != "c":  # only the C consumer keeps sampled flows
        assert "flow_sample" not in trial
        return
    flows = flowmatch.trial_flows(trial)  # matched from the raw sample the record keeps
    assert flows["flows"] > 0 and flows["truth_overflow"] == flows["events_overflow"] == flows["sk_overflow"] == 0
    assert flows["scored"] == ["sock_destroy", "transitions"] and not flows["unmatched_events"]
    spoiled = sum(flows["flows"] - flows["sides"][side]["exact"] for side in ("client", "server"))
    assert spoiled <= state_misses + destroy_misses + tails.hidden, flows


def test_stream_mode_sees_every_churn_transition_that_an_independent_tracer_sees(tmp_path):
    with FtraceCount("sock:inet_sock_set_state", CHURN_PORT_FILTER) as ftrace:
        trial = _run("connections=2000", "mode=stream", tmp_path=tmp_path, anyway=True)
    assert ftrace.overrun == 0
    _check_churn_accounting(trial, 2000, ftrace.count)
    details = trial["observed"]["details"]
    assert (details["transport"], details["mode"], details["consumer"]) == ("ringbuf", "stream", "c")
    assert details["consumer_cpu_s"] > 0
    assert 0 < details["consumer_max_rss_kib"] < 64 * 1024  # fixed arrays + the mapped ring
    assert details["bpf_stats"]["ns_per_event"] > 0
    # pid attribution: the client's active-side events carry the workload's own processes
    client_pids = set(trial["ground_truth"]["pids"]["client"])
    syn_sent = [a for a in details["attribution"] if a["side"] == "client" and a["kind"] == "state_change"]
    assert {a["pid"] for a in syn_sent} & client_pids


def test_aggregate_mode_counts_in_the_kernel_with_the_same_accounting(tmp_path):
    with FtraceCount("sock:inet_sock_set_state", CHURN_PORT_FILTER) as ftrace:
        trial = _run("connections=2000", "mode=aggregate", tmp_path=tmp_path, anyway=True)
    _check_churn_accounting(trial, 2000, ftrace.count)
    assert trial["observed"]["details"]["mode"] == "aggregate"
    assert "consumer_cpu_s" not in trial["observed"]["details"]


def test_unbatched_ring_buffer_keeps_the_same_accounting(tmp_path):
    trial = _run("connections=1000", "batch=1", tmp_path=tmp_path)
    _check_churn_accounting(trial, 1000)
    assert trial["observed"]["details"]["batch"] == 1


def test_python_consumer_keeps_the_same_accounting(tmp_path):
    trial = _run("connections=1000", "consumer=python", tmp_path=tmp_path)
    _check_churn_accounting(trial, 1000)
    assert trial["observed"]["details"]["consumer"] == "python"


def test_perf_buffer_transport_keeps_the_same_accounting(tmp_path):
    trial = _run("connections=1000", "transport=perf", tmp_path=tmp_path)
    _check_churn_accounting(trial, 1000)
    details = trial["observed"]["details"]
    assert (details["transport"], details["consumer"]) == ("perf", "python")


def test_empty_programs_measure_the_in_kernel_floor(tmp_path):
    trial = _run("connections=1000", backend="tracepoint-empty", tmp_path=tmp_path)
    stats = trial["observed"]["details"]["bpf_stats"]
    program = _program(trial, "sock:inet_sock_set_state")
    assert program["run_cnt"] + program["recursion_misses"] >= 10 * 1000  # it ran for every event
    assert stats["ns_per_event"] > 0
    assert trial["observed"]["events"] == {}  # it counts nothing: only its own cost is measured


def test_hook_selection_attaches_only_the_chosen_tracepoints(tmp_path):
    trial = _run("connections=300", "hooks=state+destroy", tmp_path=tmp_path)
    details = trial["observed"]["details"]
    assert details["hooks_attached"] == ["sock:inet_sock_set_state", "tcp:tcp_destroy_sock"]
    assert set(details["bpf_stats"]["programs"]) == {
        "tracepoint__sock__inet_sock_set_state", "tracepoint__tcp__tcp_destroy_sock"}
    assert set(trial["observed"]["events"]) == {"state_change", "sock_destroy"}




def test_the_hosts_other_tcp_traffic_is_filtered_out_in_the_kernel(tmp_path):
    with foreign_loopback_churn(30):
        trial = _run("connections=2000", tmp_path=tmp_path, anyway=True)
    filtered = trial["observed"]["details"]["filtered_out"]
    assert filtered.get("state_change", 0) > 0  # loopback connections were running meanwhile ...
    _check_churn_accounting(trial, 2000)  # ... and none of them reached the results


def test_a_run_leaves_no_program_attached_and_restores_bpf_stats(tmp_path):
    def programs() -> set:
        out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True)
        return {p["id"] for p in json.loads(out.stdout) if p.get("name", "").startswith(("tracepoint__", "rawtp", "tpbtf"))}

    before_programs, before_stats = programs(), read_sysctl("kernel.bpf_stats_enabled")
    _run("connections=200", tmp_path=tmp_path)
    assert programs() == before_programs
    assert read_sysctl("kernel.bpf_stats_enabled") == before_stats


def test_resets_every_rst_and_every_destroy_is_attributed_to_its_side(tmp_path):
    """SO_LINGER {1,0} aborts and refused connects: tcp_disconnect() clears the local address before
    tcp_destroy_sock fires, so the destroy is attributed by socket identity (or its peer)."""
    result = tpbench("run", "-b", "tracepoint", "-w", "resets", "-p", "aborts=300,refused=300", "--json",
                     "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    [trial] = json.loads(result.stdout)["cells"][0]["trials"]
    observed, expected, nstat = trial["observed"], trial["ground_truth"]["expected"], trial["ground_truth"]["nstat"]
    assert set(observed["sides"]) == {"client", "server"}
    # the 600 client sockets' destroys carry saddr 0.0.0.0 and are still the client's: checked below
    assert expected["client"]["events"]["sock_destroy"] == 300 + 300
    # observed["lost"] is the run's one count of what the programs skipped (all kinds, both sides):
    # spent once over every count below; reset_sent against the declaration and against TcpOutRsts
    # is one count, charged once
    tails = HiddenTails(counted=observed["lost"])
    for side in ("client", "server"):
        events = observed["sides"][side]["events"]
        for kind, count in expected[side]["events"].items():
            # seen, or skipped and counted by the kernel (recursion misses), or hidden by this
            # host (tests/host.py): never more than a few tails short, never extra
            tails.check(events.get(kind, 0), count, what=(side, kind), key=(side, kind))
        tails.check(events["reset_sent"], nstat[side]["TcpOutRsts"], what=(side, "TcpOutRsts"), key=(side, "reset_sent"))
