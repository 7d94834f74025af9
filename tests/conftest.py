import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TPBENCH = [sys.executable, "-m", "harness.cli"]


def pytest_sessionstart(session):
    """The suite starts on a host without tpbench's leftovers: a crashed earlier run (a SIGKILLed
    runner, a killed CI job) would otherwise fail every run-based test with "run `tpbench cleanup`
    first". What is removed is printed; leaks of the suite's own runs still fail the tests that made them."""
    if os.geteuid() != 0:
        return
    result = subprocess.run([*TPBENCH, "cleanup"], capture_output=True, text=True, cwd=REPO, timeout=120)
    removed = [line for line in result.stdout.splitlines() if line and line != "nothing of tpbench's found"]
    if result.returncode != 0 or removed:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"before the suite, tpbench cleanup (exit {result.returncode}):", *removed,
                 *result.stderr.strip().splitlines()]
        for line in lines:
            (reporter.write_line if reporter else print)(line)


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: network namespaces and BPF (CI runs as root)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def tpbench(*args: str, check: bool = False, user: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (its exit status and stderr are part of the contract)."""
    argv = [*TPBENCH, *args]
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
