"""What the tests share: the CLI as a subprocess, polling, independent looks at the system (leftover
namespaces and links), and an independent tracer (FtraceCount). Fixtures and hooks stay in conftest.py."""

import contextlib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TPBENCH = [sys.executable, "-m", "harness.cli"]


def headers_kind() -> str:
    """The kernel headers bcc must use here, by an independent look: "exact" where the running
    release's own build tree is installed (Debian's linux-headers for it), else "fallback" (the
    6.1 headers merged, on the 6.18 host), so a test can demand the one it should get."""
    import os

    build = Path("/lib/modules") / os.uname().release / "build"
    return "exact" if (build / "include").exists() or (build / "Makefile").exists() else "fallback"


# The subcommands that run the preflight before measuring. A test that measures is about what it
# measures, not about the host it runs on: it passes --measure-anyway (the record is marked), so a
# neighbour using some CPU fails no test. Only the preflight's own tests ask for its refusal.
MEASURING = ("run", "bench", "toggle")


def measuring(*args: str, measure_anyway: bool = True) -> list[str]:
    """tpbench's argv for `args`, with --measure-anyway after a measuring subcommand (unless asked not to)."""
    if measure_anyway and args and args[0] in MEASURING and "--measure-anyway" not in args:
        args = (args[0], "--measure-anyway", *args[1:])
    return [*TPBENCH, *args]


def tpbench(*args: str, check: bool = False, user: str | None = None, timeout: float = 300,
            measure_anyway: bool = True) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (its exit status and stderr are part of the contract);
    a measuring subcommand gets --measure-anyway unless measure_anyway=False (see MEASURING)."""
    argv = measuring(*args, measure_anyway=measure_anyway)
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"tpbench {' '.join(args)} -> {result.returncode}\n{result.stderr}")
    return result


def wait_for(condition, timeout_s: float = 60.0, what: str = "condition"):
    """Poll `condition` until it returns something true (returned), or fail after timeout_s."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def leftovers() -> dict:
    """Everything of ours an independent look at the system finds (iproute2, not our own code)."""
    spaces = [line.split()[0] for line in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines() if line.strip()]
    links = [line.split(": ")[1].split("@")[0] for line in subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True).stdout.splitlines()]
    return {
        "namespaces": [s for s in spaces if s.startswith("tpb-")],
        "links": [name for name in links if name.startswith("tpb")],
    }


def leftovers_of_runs(out_dir: Path) -> list[str]:
    """Namespaces still present from the runs whose folders are in out_dir (other runs ignored)."""
    prefixes = tuple(f"tpb-{run.name}-" for run in out_dir.iterdir() if run.is_dir())
    return [name for name in leftovers()["namespaces"] if prefixes and name.startswith(prefixes)]


class FtraceCount:
    """An independent tracer: one tracepoint enabled in a private ftrace instance, with a kernel
    filter. ftrace's probe (trace_event_raw_event_*) is a different path from the perf/BPF one, so
    it is not subject to BPF's recursion guard nor to anything a BPF observer does."""

    def __init__(self, event: str, filter_expr: str, buffer_kb: int = 16384):
        import secrets

        from harness.system import tracefs_mounted

        self.event = event.replace(":", "/")
        self.filter_expr = filter_expr
        self.buffer_kb = buffer_kb
        self.mount = tracefs_mounted()
        # not tpb*: tpbench's own instances are leftovers to its preflight; this one is foreign
        # (an enabled event on a measured hook), so runs beside it pass --measure-anyway
        self.name = f"indep-{secrets.token_hex(3)}"
        self.count: int | None = None
        self.overrun: int | None = None

    def __enter__(self) -> "FtraceCount":
        tracefs = self.mount.__enter__()
        self.path = tracefs / "instances" / self.name
        self.path.mkdir()
        (self.path / "buffer_size_kb").write_text(str(self.buffer_kb))
        event = self.path / "events" / self.event
        (event / "filter").write_text(self.filter_expr)
        (event / "enable").write_text("1")
        return self

    def __exit__(self, *exc) -> None:
        try:
            (self.path / "events" / self.event / "enable").write_text("0")
            entries = overrun = 0
            for stats in (self.path / "per_cpu").glob("cpu*/stats"):
                fields = dict(line.split(":", 1) for line in stats.read_text().splitlines() if ":" in line)
                entries += int(fields["entries"])
                overrun += int(fields["overrun"])
            self.count, self.overrun = entries + overrun, overrun
        finally:
            self.path.rmdir()
            self.mount.__exit__(*exc)


_LOOPBACK_CHURN = """
import socket, sys, time
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(128)
deadline, pause = time.monotonic() + float(sys.argv[1]), float(sys.argv[2])
ready = False
while time.monotonic() < deadline:
    c = socket.create_connection(listener.getsockname()); a, _ = listener.accept(); a.close(); c.close()
    if not ready:
        print("ready", flush=True); ready = True
    time.sleep(pause)
"""


@contextlib.contextmanager
def foreign_loopback_churn(seconds: float = 60, pause_s: float = 0.0):
    """Unrelated TCP traffic on the host's loopback (connect, accept, close in a loop, pause_s
    between connections) for the block's duration: returns once its first connection is made, so
    it is churning before the block starts (a readiness line, not a sleep)."""
    foreign = subprocess.Popen([sys.executable, "-c", _LOOPBACK_CHURN, str(seconds), str(pause_s)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert foreign.stdout.readline() == "ready\n", "the loopback churn did not start"
        yield foreign
    finally:
        foreign.kill()
        foreign.wait()
        foreign.stdout.close()
