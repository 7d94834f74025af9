"""The tracefs backend (ftrace ring buffer, no BPF) against the workload's declaration and the
tracepoint backend on the same traffic; its private instance never outlives a run."""

import json
import secrets
from types import SimpleNamespace

import pytest

from harness.backends import get_backend
from harness.params import resolve
from harness.system import tracefs_mounted, tracefs_path
from tests.helpers import tpbench
from tests.host import HiddenTails, assert_short_at_most

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True, scope="module")
def tracefs():
    """These tests look into tracefs themselves (instances, and one attaches outside a run): mount
    it as the runner does when the machine has not (a fresh CI machine), and restore it after."""
    with tracefs_mounted() as path:
        yield path


def _our_instances() -> set:
    return {p.name for p in (tracefs_path() / "instances").glob("tpb-tracefs-*")}


def test_tracefs_sees_exactly_what_the_tracepoint_backend_and_the_declaration_say(tmp_path):
    before = _our_instances()
    result = tpbench("run", "-b", "tracepoint,tracefs", "-w", "churn", "-p", "connections=3000",
                     "--json", "-q", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    cells = {c["backend"]: c for c in json.loads(result.stdout)["cells"]}
    [tracepoint] = cells["tracepoint"]["trials"]
    [tracefs] = cells["tracefs"]["trials"]
    assert tracefs["status"] == tracepoint["status"] == "ok", tracefs.get("traceback")
    observed, details = tracefs["observed"], tracefs["observed"]["details"]
    assert observed["lost"] == details["lost_ring"] == 0  # 32 MiB per CPU: nothing dropped here
    assert details["buffer_kib_per_cpu"] >= 32768 and details["consumer"] == "record"
    expected = tracefs["ground_truth"]["expected"]
    for side in ("client", "server"):
        # every declared transition, no more, no fewer (the ring reported no loss)
        assert observed["sides"][side]["transitions"] == expected[side]["transitions"], side
        assert observed["sides"][side]["events"]["sock_destroy"] == expected[side]["events"]["sock_destroy"]
    assert "other" not in observed["sides"]
    # the same tracepoints through BPF saw the same per-side counts (unless the kernel says BPF
    # skipped some: bpf_prog_active recursion, which ftrace's probe is not subject to)
    # Rare events (a client port reused against the server's TIME_WAIT: one RST, one SYN
    # retransmit) differ from trial to trial, so they are held to each trial's own kernel counters.
    # BPF is also blind to the few tails this host hides from it (tests/host.py), ftrace is not.
    if tracepoint["observed"]["lost"] == 0:
        tails = HiddenTails()
        for side in ("client", "server"):
            ours, theirs = observed["sides"][side], tracepoint["observed"]["sides"][side]
            assert_short_at_most(theirs["transitions"], ours["transitions"], what=side)
            for kind, per_tail in (("state_change", 2), ("sock_destroy", 1), ("probe", 1)):
                tails.check(theirs["events"].get(kind, 0), ours["events"].get(kind, 0), 0, (side, kind), per_tail)
    for side in ("client", "server"):
        nstat = tracefs["ground_truth"]["nstat"][side]
        assert observed["sides"][side]["events"].get("reset_sent", 0) == nstat["TcpOutRsts"], side
        assert observed["sides"][side]["events"].get("retransmit", 0) == nstat["TcpRetransSegs"], side
    # the kernel filter kept only this topology's pair: inet_sock_set_state filtered on addresses
    assert "saddr ==" in details["kernel_filters"]["sock:inet_sock_set_state"]
    assert details["events_read"] == sum(observed["events"].values()) + sum(details["filtered_user_space"].values())
    assert details["consumer_cpu_s"]["total"] > 0
    assert _our_instances() == before  # the instance was removed


def test_an_instance_name_in_use_is_refused_in_one_line_and_left_alone(tmp_path):
    name = f"tpbtest-{secrets.token_hex(3)}"
    existing = tracefs_path() / "instances" / name
    existing.mkdir()
    try:
        result = tpbench("run", "-b", "tracefs", "-w", "churn", "-p", f"connections=10,instance={name}",
                         "-o", str(tmp_path))
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"tpbench: error: tracefs: instance {name!r} is already in use ({existing} exists); "
            "choose another -p tracefs.instance=, or leave it empty"]
        assert existing.is_dir()  # someone else's: never removed
    finally:
        existing.rmdir()


def test_a_failure_during_attach_still_removes_the_instance():
    backend = get_backend("tracefs")
    name = f"tpb-tracefs-test-{secrets.token_hex(3)}"
    params = resolve("tracefs", backend.params, {"instance": name})
    host = SimpleNamespace(address="not-an-address")  # native_u32 fails after the mkdir
    with pytest.raises(OSError):
        backend.attach(SimpleNamespace(client=host, server=host), params)
    assert not (tracefs_path() / "instances" / name).exists()
