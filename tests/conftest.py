import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TPBENCH = [sys.executable, "-m", "harness.cli"]


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
