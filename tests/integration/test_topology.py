import errno
import socket
import subprocess

import pytest

from netns import Topology
from tests.conftest import leftovers

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
