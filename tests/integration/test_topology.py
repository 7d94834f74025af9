import errno
import socket
import subprocess

import pytest

from netns import Topology
from tests.helpers import leftovers

pytestmark = pytest.mark.root


def _connect(address: str, port: int) -> str:
    sock = socket.socket()
    sock.settimeout(2)
    try:
        sock.connect((address, port))
        return "connected"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc))
    finally:
        sock.close()


def _routes() -> str:
    return subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout


def test_topology_up_and_down_leaves_nothing():
    before = leftovers()
    with Topology("test") as topo:
        during = leftovers()
        assert set(during["namespaces"]) - set(before["namespaces"]) == {topo.client.netns, topo.server.netns}
        assert during["links"] == before["links"]  # both veth ends live inside the namespaces
    assert leftovers() == before


def test_hosts_reach_each_other_and_nothing_else():
    with Topology("test") as topo:
        server = topo.server.address
        assert topo.client.address.rsplit(".", 1)[0] == server.rsplit(".", 1)[0]  # one /24
        assert server.startswith(("198.18.", "198.19.")) and server.endswith(".2")
        listener = topo.server.popen(
            ["python3", "-c", "import socket,sys;s=socket.socket();s.bind(('%s',9));s.listen();"
             "print(1,flush=True);s.accept()" % server],
            stdout=subprocess.PIPE, text=True,
        )
        assert listener.stdout.readline().strip() == "1"
        assert topo.client.run(_connect, server, 9) == "connected"
        listener.wait(timeout=5)
        assert topo.client.run(_connect, server, 10) == "ECONNREFUSED"
        # no default route: any address outside the pair is unreachable, not merely filtered
        assert topo.client.run(_connect, "192.0.2.1", 80) == "ENETUNREACH"
        routes = topo.client.run(_routes)
        assert "default" not in routes and f"src {topo.client.address}" in routes


def test_teardown_survives_an_exception_and_kills_what_runs_inside():
    before = leftovers()
    with pytest.raises(RuntimeError, match="boom"):
        with Topology("test") as topo:
            sleeper = topo.server.popen(["sleep", "600"])
            raise RuntimeError("boom")
    assert sleeper.wait(timeout=5) != 0  # killed by the teardown
    assert leftovers() == before


class _Alarm(Exception):
    pass


def _raise_alarm(signum, frame):
    raise _Alarm()


def _interrupt_parent_then_wait(pid_file, go_file):
    """In the child: say who it is, interrupt the waiting parent, return once the parent is past it."""
    import os
    import signal
    import time

    pid_file.write_text(str(os.getpid()))
    os.kill(os.getppid(), signal.SIGALRM)
    deadline = time.monotonic() + 30
    while not go_file.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "late result"


def test_a_host_run_child_never_returns_into_the_callers_stack(tmp_path):
    """The parent interrupted while it waits: the child's result then meets a closed pipe. The child
    must exit there; before, it unwound into the caller and a copy of the runner went on running
    trials (and overwrote run.json) after the interrupted run had exited."""
    import os
    import signal

    parent, marker = os.getpid(), tmp_path / "escaped"
    pid_file, go_file = tmp_path / "child", tmp_path / "go"
    previous = signal.signal(signal.SIGALRM, _raise_alarm)
    try:
        with Topology("test") as topo:
            try:
                topo.client.run(_interrupt_parent_then_wait, pid_file, go_file)
                pytest.fail("the child's SIGALRM did not interrupt the parent")
            except _Alarm:
                pass
            finally:
                if os.getpid() != parent:  # an escaped child: say so and never run the rest of pytest
                    marker.write_text(str(os.getpid()))
                    os._exit(0)
            go_file.touch()  # the parent has closed its end: the child now writes into a broken pipe
            child = int(pid_file.read_text())
            _, status = os.waitpid(child, 0)  # the child is ours: reaped once it has exited
            assert not marker.exists(), f"child {child} returned into the caller"
            assert os.waitstatus_to_exitcode(status) == 1, status  # the write failed, and it exited there
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_a_host_run_result_that_cannot_be_shipped_is_an_error_not_a_hang():
    def unpicklable():
        exc = ValueError("carries a lambda")
        exc.hook = lambda: None
        raise exc

    with Topology("test") as topo:
        with pytest.raises(RuntimeError, match="died without a result"):
            topo.client.run(unpicklable)
