"""Each workload through the real CLI with the `none` backend: its declared expectations match
the kernel's own counters exactly where they must, and its drop rules leave nothing behind."""

import json
import subprocess

import pytest

from harness.workloads.netfilter import DropRule, Offloads
from netns import Topology
from tests.helpers import tpbench

pytestmark = pytest.mark.root

EXACT = ("TcpActiveOpens", "TcpPassiveOpens", "TcpAttemptFails", "TcpOutRsts", "TcpEstabResets")


def run_one(tmp_path, workload, params):
    result = tpbench("run", "-b", "none", "-w", workload, "-p", params, "--json", "-q", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    [cell] = json.loads(result.stdout)["cells"]
    [trial] = cell["trials"]
    assert trial["status"] == "ok", trial.get("error")
    return trial


def assert_declared_counters_hold(truth):
    for side in ("client", "server"):
        nstat, expected = truth["nstat"][side], truth["expected"][side]
        declared = {name: nstat.get(name, 0) for name in expected["nstat"]}
        assert declared == expected["nstat"], side
        for name in EXACT:  # each is declared exact or its inexactness explained
            assert name in expected["nstat"] or name in expected["inexact"], (side, name)
        for name, floor in expected["at_least"].items():
            if name.startswith("Tcp"):
                assert nstat.get(name, 0) >= floor, (side, name)


def assert_measured(trial, operations):
    assert trial["operations"] == operations
    assert trial["operation_rate"] == pytest.approx(operations / trial["duration_s"], rel=1e-3)
    assert trial["cpu_scope"] == "measured loop"
    for key in ("p50", "p90", "p99", "max"):
        assert trial["latency"][key] > 0
    assert trial["latency"]["p50"] <= trial["latency"]["p99"] <= trial["latency"]["max"]


@pytest.mark.parametrize("generator", ["c", "python"])
def test_churn_client_closing_first_with_bytes_holds_time_wait_on_the_client(tmp_path, generator):
    trial = run_one(tmp_path, "churn", f"connections=1500,closer=client,bytes=300,generator={generator}")
    truth = trial["ground_truth"]
    assert truth["generator"]["delivery"] == {"requested": 1500, "delivered": 1500, "complete": True}
    assert_declared_counters_hold(truth)
    assert truth["nstat"]["client"]["TcpExtTW"] == 1500  # the side closing first holds TIME_WAIT
    assert truth["nstat"]["server"]["TcpExtTW"] == 0
    assert truth["expected"]["client"]["transitions"]["ESTABLISHED->FIN_WAIT1"] == 1500
    assert_measured(trial, 1500)


def test_churn_paced_below_its_capacity_reaches_the_requested_rate(tmp_path):
    trial = run_one(tmp_path, "churn", "connections=600,rate=1000")
    delivery = trial["ground_truth"]["generator"]["delivery"]
    assert delivery["rate_reached"] is True, delivery
    assert trial["duration_s"] >= 0.59  # paced, not run flat out


def test_churn_asked_for_an_impossible_rate_says_so(tmp_path):
    trial = run_one(tmp_path, "churn", "connections=2000,concurrency=1,rate=5000000")
    delivery = trial["ground_truth"]["generator"]["delivery"]
    assert delivery["complete"] is True
    assert delivery["rate_reached"] is False and delivery["achieved_rate"] < 5e6


def test_rr_counts_transactions_and_only_its_connections_state_changes(tmp_path):
    trial = run_one(tmp_path, "rr", "transactions=5000,connections=5,request=100,response=2000")
    truth = trial["ground_truth"]
    assert truth["generator"]["transactions"] == truth["generator"]["answered"] == 5000
    assert_declared_counters_hold(truth)
    assert truth["nstat"]["client"]["TcpActiveOpens"] == 5
    # at least one request segment in and one response segment back per transaction
    assert truth["nstat"]["server"]["TcpInSegs"] >= 5000 and truth["nstat"]["client"]["TcpInSegs"] >= 5000
    assert_measured(trial, 5000)


def test_stream_without_offloads_records_the_setting_and_every_byte(tmp_path):
    trial = run_one(tmp_path, "stream", "bytes=50000000,message=65536,offloads=false")
    truth = trial["ground_truth"]
    generator = truth["generator"]
    assert generator["bytes"] == 50_000_000 and generator["delivery"]["complete"]
    assert generator["offloads"] == {side: {"tso": False, "gso": False, "gro": False} for side in ("client", "server")}
    assert_declared_counters_hold(truth)
    # one skb is one segment now: at least bytes/MSS data segments (MSS 1448 with timestamps)
    assert truth["nstat"]["client"]["TcpOutSegs"] >= 50_000_000 // 1448
    assert generator["gbit_per_s"] == pytest.approx(8 * 50_000_000 / trial["duration_s"] / 1e9, rel=1e-2)
    assert_measured(trial, 50_000_000)


def test_resets_match_the_kernels_reset_and_failure_counters(tmp_path):
    trial = run_one(tmp_path, "resets", "aborts=300,refused=200")
    truth = trial["ground_truth"]
    assert truth["generator"]["client_outcomes"] == {"abort": {"aborted": 300}, "refused": {"ECONNREFUSED": 200}}
    assert truth["generator"]["server_outcomes"] == {"ECONNRESET": 300}
    assert_declared_counters_hold(truth)
    client, server = truth["nstat"]["client"], truth["nstat"]["server"]
    assert (client["TcpOutRsts"], client["TcpAttemptFails"], client["TcpEstabResets"]) == (300, 200, 300)
    assert (server["TcpOutRsts"], server["TcpEstabResets"], server["TcpPassiveOpens"]) == (200, 300, 300)
    assert client["TcpExtTCPAbortOnData"] == 300
    assert_measured(trial, 500)


def softnet_drops() -> int:
    """Packets dropped at any CPU's input backlog (where veth delivers), system-wide."""
    with open("/proc/net/softnet_stat") as f:
        return sum(int(line.split()[1], 16) for line in f)


def test_loss_drop_count_is_the_rules_counter_and_agrees_with_both_ends(tmp_path):
    backlog_before = softnet_drops()
    trial = run_one(tmp_path, "loss", "bytes=20000000,every=50,offloads=false")
    backlog_dropped = softnet_drops() - backlog_before
    truth = trial["ground_truth"]
    dropped = truth["generator"]["dropped"]
    assert dropped > 0 and truth["generator"]["drop_every"] == 50
    assert_declared_counters_hold(truth)
    # every segment the client sent reached the server's TCP or was dropped by the rule (or, rarely,
    # by an input backlog, counted system-wide): the rule's counter is the missing segments
    client = truth["nstat"]["client"]
    sent = client["TcpOutSegs"] + client["TcpRetransSegs"]  # OutSegs leaves out retransmissions (RFC 4022)
    missing = sent - truth["nstat"]["server"]["TcpInSegs"]
    assert dropped <= missing <= dropped + backlog_dropped
    # the rule matches data segments only; every 50th of them is dropped (give or take the last few)
    data_segments = sent - 3  # minus SYN, handshake ACK, FIN or so
    assert abs(dropped - data_segments // 50) <= 1
    assert truth["nstat"]["client"]["TcpRetransSegs"] >= dropped
    assert truth["expected"]["client"]["at_least"] == {"probe": 1, "retransmit": 1, "TcpRetransSegs": dropped}


def test_synack_drops_make_the_server_retransmit_syn_acks(tmp_path):
    trial = run_one(tmp_path, "synack", "connections=150,concurrency=75,every=3")
    truth = trial["ground_truth"]
    assert truth["generator"]["connections"] == 150 and truth["generator"]["failures"] == {}
    assert_declared_counters_hold(truth)
    resent = truth["nstat"]["server"]["TcpExtTCPSynRetrans"]
    dropped = truth["generator"]["dropped_synacks"]
    # every SYN-ACK the server sent (one per connection plus each resend) passed the client's nth rule
    assert dropped == (150 + resent) // 3
    assert resent >= dropped
    assert truth["nstat"]["server"]["TcpRetransSegs"] == resent  # only SYN-ACKs were resent
    # the handshakes whose SYN-ACK was dropped waited for the 1 s timer
    assert trial["latency"]["max"] >= 1 << 29


def _filter_rules(host):
    out = subprocess.run(host.command(["iptables-save", "-c", "-t", "filter"]), capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines() if line.startswith("[") and "-A " in line]


def test_drop_rule_and_offload_settings_are_undone_when_the_trial_fails():
    with Topology("test") as topology:
        with pytest.raises(RuntimeError, match="boom"):
            with Offloads(topology.hosts, enabled=False), \
                    DropRule(topology.server, "INPUT", ["-p", "tcp"], 5, f"tpbench-test-{topology.id}") as rule:
                assert len(_filter_rules(topology.server)) == 1
                assert rule.dropped() == 0
                raise RuntimeError("boom")
        assert _filter_rules(topology.server) == []
        assert rule.final_dropped == 0
        from harness.workloads.netfilter import read_offloads
        assert read_offloads(topology.client)["tso"] is True
