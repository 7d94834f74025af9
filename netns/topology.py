"""Two namespaces and a veth pair; always torn down, and findable by prefix after a crash.

Names: namespaces are `tpb-<run-id>-<topology-id>-client|server`; veth ends are
`tpb<topology-id>c|s` (an interface name has at most 15 characters). Everything tpbench creates
starts with `tpb`, which is how `tpbench cleanup` finds a crashed run's leftovers, and only those.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from pyroute2 import IPRoute, config as pyroute2_config, netns

# pyroute2 forks helpers for namespace work and stops them with SIGTERM. Forked, they inherit the
# caller's signal handlers: a harness that turns SIGTERM into an exception would have the helper
# unwind the caller's code instead of dying, and the caller wait for it. Default handlers in them.
pyroute2_config.disable_mp_signal = True

NAME_PREFIX = "tpb"
SUBNET = "198.18.0.0/15"
PREFIX_LENGTH = 24
NETNS_DIR = Path("/run/netns")


def pair_addresses(topology_id: str) -> tuple[str, str]:
    """(client, server) for a topology: .1 and .2 of its own /24 inside 198.18.0.0/15.

    Each topology gets one of the 512 /24s, chosen by its random id, so an observer that keeps
    only its topology's two addresses never counts another topology's traffic (another tpbench
    run, or a test running beside one).
    """
    index = int(topology_id, 16) % 512
    prefix = f"198.{18 + index // 256}.{index % 256}"
    return f"{prefix}.1", f"{prefix}.2"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name: str) -> None:
    """Move the calling thread into namespace `name` (Python 3.11 has no os.setns)."""
    fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _child(name: str, read_fd: int, write_fd: int, fn: Callable[..., Any], args: tuple, mask: Any) -> None:
    """Host.run's forked child: enter, compute, report and exit, whatever happens.

    It must never return into the caller's stack: a copy of the runner that unwound from here
    (its parent interrupted mid-read, so the pipe broke under its write) went on running trials
    and overwrote run.json. SIGINT and SIGTERM are the default ones: the harness's handlers turn
    them into an exception, which is the parent's business, not this copy's."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(read_fd)
        try:
            enter_netns(name)
            payload = pickle.dumps((True, fn(*args)))
        except BaseException as exc:  # noqa: BLE001  (shipped to the parent, re-raised there)
            payload = pickle.dumps((False, exc))
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(payload)
        status = 0
    finally:
        os._exit(status)  # also after a broken pipe or an unpicklable exception


@dataclass(frozen=True)
class Host:
    role: str  # "client" | "server"
    netns: str
    ifname: str
    address: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """argv wrapped to run inside this host's namespace (nsenter: no /sys remount, cheap)."""
        return ["nsenter", f"--net={NETNS_DIR / self.netns}", "--", *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        return subprocess.Popen(self.command(argv), **kwargs)

    def run(self, fn: Callable[..., Any], *args: Any, timeout_s: float = 60.0) -> Any:
        """fn(*args) in a forked child inside this namespace; its result (or exception) comes back."""
        read_fd, write_fd = os.pipe()
        # SIGINT/SIGTERM wait until fork() is over: a Python handler that raises inside the at-fork
        # hooks (logging has one) is dropped by Python with a traceback on stderr
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                _child(self.netns, read_fd, write_fd, fn, args, blocked)  # never returns
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a signal that came is handled here
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
        if not data:
            raise RuntimeError(f"child in {self.netns} died without a result (status {status})")
        ok, value = pickle.loads(data)
        if not ok:
            raise value
        return value

    def read_file(self, path: str) -> str:
        """A /proc/net file as this namespace sees it."""
        return self.run(Path(path).read_text)


def _netns_inode(name: str) -> int | None:
    try:
        return os.stat(NETNS_DIR / name).st_ino
    except FileNotFoundError:
        return None


def pids_in_netns(name: str) -> list[int]:
    """Processes whose network namespace is `name` (what would keep it alive after removal)."""
    inode = _netns_inode(name)
    if inode is None:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino == inode:
                pids.append(int(entry.name))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return pids


def _kill_and_remove(name: str) -> list[int]:
    killed = pids_in_netns(name)
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        netns.remove(name)
    except FileNotFoundError:
        pass
    return killed


class Topology:
    """`with Topology(run_id) as topo:` builds the pair; leaving the block always removes it."""

    def __init__(self, run_id: str, guard: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        """guard: a context manager around build and teardown, during which the caller must not
        be interrupted (the harness defers SIGINT/SIGTERM there: netlink code swallows exceptions)."""
        self.guard = guard
        self.id = secrets.token_hex(3)
        base = f"{NAME_PREFIX}-{run_id}-{self.id}"
        client_address, server_address = pair_addresses(self.id)
        self.client = Host("client", f"{base}-client", f"{NAME_PREFIX}{self.id}c", client_address)
        self.server = Host("server", f"{base}-server", f"{NAME_PREFIX}{self.id}s", server_address)
        self.setup_s: float | None = None

    @property
    def hosts(self) -> tuple[Host, Host]:
        return (self.client, self.server)

    def __enter__(self) -> "Topology":
        started = time.perf_counter()
        try:
            with self.guard():
                self._build()
        except BaseException:
            # also when the build succeeded and the guard's end raises a signal deferred during it:
            # __exit__ never runs for a failed __enter__, so nothing else would remove the pair
            self.teardown()
            raise
        self.setup_s = time.perf_counter() - started
        return self

    def __exit__(self, *exc: Any) -> None:
        self.teardown()

    def _build(self) -> None:
        for host in self.hosts:
            netns.create(host.netns)
        with IPRoute() as ipr:
            ipr.link("add", ifname=self.client.ifname, kind="veth", peer=self.server.ifname)
            for host in self.hosts:
                index = ipr.link_lookup(ifname=host.ifname)[0]
                ipr.link("set", index=index, net_ns_fd=host.netns)
        for host in self.hosts:
            with IPRoute(netns=host.netns) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                index = ipr.link_lookup(ifname=host.ifname)[0]
                ipr.addr("add", index=index, address=host.address, prefixlen=PREFIX_LENGTH)
                ipr.link("set", index=index, state="up")
        self._wait_until_reachable()

    def _wait_until_reachable(self, timeout_s: float = 5.0) -> None:
        """The veth carrier comes up asynchronously: wait until each end reports it."""
        deadline = time.monotonic() + timeout_s
        for host in self.hosts:
            while True:
                state = host.run(_read_operstate, host.ifname)
                if state == "up":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{host.ifname} in {host.netns} not up after {timeout_s} s ({state})")
                time.sleep(0.01)

    def teardown(self) -> None:
        """Kill what still runs inside, remove both namespaces (and with them the veth pair)."""
        with self.guard():
            for host in self.hosts:
                _kill_and_remove(host.netns)
            with IPRoute() as ipr:  # a half-built topology may have left a veth in the root namespace
                for host in self.hosts:
                    for index in ipr.link_lookup(ifname=host.ifname):
                        ipr.link("del", index=index)


def _read_operstate(ifname: str) -> str:
    # /sys/class/net reflects the namespace sysfs was mounted in, so ask netlink instead
    with IPRoute() as ipr:
        links = ipr.get_links(ifname=ifname)
        return links[0].get("operstate", "unknown").lower() if links else "missing"


def find_leftovers(run_id: str | None = None) -> dict[str, list[str]]:
    """Namespaces and root-namespace links that tpbench made (by prefix) and that still exist.

    With run_id, only that run's namespaces; root-namespace veth ends carry no run id (they live
    there only while a topology is being built), so they are listed only without one.
    """
    prefix = f"{NAME_PREFIX}-{run_id}-" if run_id else f"{NAME_PREFIX}-"
    spaces = sorted(name for name in netns.listnetns() if name.startswith(prefix))
    links: list[str] = []
    if run_id is None:
        with IPRoute() as ipr:
            links = sorted(
                link.get("ifname")
                for link in ipr.get_links()
                if (link.get("ifname") or "").startswith(NAME_PREFIX)
            )
    return {"namespaces": spaces, "links": links}


def remove_leftovers(run_id: str | None = None) -> list[str]:
    """Remove tpbench's namespaces (with what runs inside) and links; one line per thing done."""
    done = []
    found = find_leftovers(run_id)
    for name in found["namespaces"]:
        killed = _kill_and_remove(name)
        extra = f" (killed pids {', '.join(map(str, killed))})" if killed else ""
        done.append(f"removed namespace {name}{extra}")
    with IPRoute() as ipr:
        for name in found["links"]:
            for index in ipr.link_lookup(ifname=name):
                ipr.link("del", index=index)
                done.append(f"removed link {name}")
    return done
